//! What streamed and interactive exec share on the wire: output chunks as JSON.
//!
//! These commands run directly on the VM's agent ([`aetherium_core::Platform::open_sandbox`]),
//! not through the queue, and are recorded by the core's execution engine like queued
//! ones (`begin_direct_execution`, then `finish_execution` with the engine's
//! `Capture` and `Outcome`), so they appear in `GET /vms/{id}/executions` with
//! `metadata.mode` = `stream` or `interactive`.

use aetherium_core::Platform;
use aetherium_core::services::engine::{Capture, Outcome};
use aetherium_types::Execution;
use base64::Engine as _;
use serde::Serialize;

/// One chunk of output as JSON: exactly one of `data` (the bytes are UTF-8 text) or
/// `data_b64` (they are not; standard base64). Decoding and concatenating the chunks
/// of a stream gives its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Chunk {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_b64: Option<String>,
}

impl Chunk {
    fn text(s: String) -> Chunk {
        Chunk {
            data: Some(s),
            data_b64: None,
        }
    }

    fn binary(bytes: &[u8]) -> Chunk {
        Chunk {
            data: None,
            data_b64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        }
    }
}

/// Splits one output stream into [`Chunk`]s without cutting a UTF-8 character in
/// two: an incomplete character at the end of a read waits for the next read, so
/// text stays text however the process's writes were split.
#[derive(Debug, Default)]
pub struct Utf8Chunker {
    pending: Vec<u8>,
}

impl Utf8Chunker {
    /// The chunk for `bytes` (with whatever was held back before), or `None` when
    /// everything is held back.
    pub fn push(&mut self, bytes: &[u8]) -> Option<Chunk> {
        self.pending.extend_from_slice(bytes);
        match std::str::from_utf8(&self.pending) {
            Ok(text) => {
                let chunk = (!text.is_empty()).then(|| Chunk::text(text.to_string()));
                self.pending.clear();
                chunk
            }
            // An incomplete character at the very end (at most 3 bytes): hold it.
            Err(e) if e.error_len().is_none() && self.pending.len() - e.valid_up_to() < 4 => {
                let valid = e.valid_up_to();
                if valid == 0 {
                    return None;
                }
                let rest = self.pending.split_off(valid);
                let text = String::from_utf8(std::mem::replace(&mut self.pending, rest)).ok()?;
                Some(Chunk::text(text))
            }
            // Not text: send the bytes as they are.
            Err(_) => {
                let chunk = Chunk::binary(&self.pending);
                self.pending.clear();
                Some(chunk)
            }
        }
    }

    /// Whatever is still held back, at the end of the stream.
    pub fn flush(&mut self) -> Option<Chunk> {
        if self.pending.is_empty() {
            return None;
        }
        let chunk = Chunk::binary(&self.pending);
        self.pending.clear();
        Some(chunk)
    }
}

/// Records a direct run through the engine. A failure to store is logged: the client
/// has had its answer by then.
pub async fn record(
    platform: &Platform,
    execution: &mut Execution,
    capture: &Capture,
    outcome: &Outcome,
) {
    if let Err(e) = platform.finish_execution(execution, capture, outcome).await {
        tracing::error!(execution = %execution.id, error = %e, "could not record a direct execution");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(c: Option<Chunk>) -> Option<String> {
        c.and_then(|c| c.data)
    }

    #[test]
    fn utf8_split_across_reads_stays_text() {
        let mut chunker = Utf8Chunker::default();
        let euro = "€".as_bytes(); // 3 bytes
        assert_eq!(text(chunker.push(b"a")), Some("a".into()));
        let mut first = b"b".to_vec();
        first.extend_from_slice(&euro[..2]);
        assert_eq!(text(chunker.push(&first)), Some("b".into()));
        assert_eq!(chunker.push(&[]), None);
        assert_eq!(text(chunker.push(&euro[2..])), Some("€".into()));
        assert_eq!(chunker.flush(), None);
    }

    #[test]
    fn invalid_bytes_go_as_base64() {
        let mut chunker = Utf8Chunker::default();
        let chunk = chunker.push(&[0xff, 0x00, b'a']).expect("chunk");
        assert_eq!(chunk.data, None);
        assert_eq!(chunk.data_b64.as_deref(), Some("/wBh"));
        // A dangling lead byte at the end of the stream is flushed as base64.
        assert_eq!(chunker.push(&[0xe2]), None);
        assert_eq!(
            chunker.flush().and_then(|c| c.data_b64).as_deref(),
            Some("4g==")
        );
    }
}
