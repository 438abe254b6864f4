//! A streaming `multipart/form-data` reader (RFC 7578) for `POST /files`: parts are
//! read chunk by chunk as the body arrives, so an upload of any size takes constant
//! memory (one body frame plus a delimiter's length).

use bytes::{Buf as _, Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::body::Body;

/// Headers of one part, and a preamble, are at most this big.
const MAX_HEADER_BYTES: usize = 16 * 1024;
/// Most bytes read after the closing delimiter before answering anyway.
const MAX_EPILOGUE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartHeaders {
    /// The form field's name (`file` for envd's uploads).
    pub name: Option<String>,
    /// The client's file name, which envd takes as a path (not only a base name).
    pub filename: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first delimiter.
    Preamble,
    /// Just after a delimiter: the end marker or a part's headers follow.
    Delimiter,
    Body,
    Done,
}

pub struct Multipart<B> {
    body: B,
    /// `\r\n--boundary`. The buffer starts with `\r\n`, so the first delimiter
    /// (which has no line break before it) looks like every other.
    delimiter: Vec<u8>,
    buf: BytesMut,
    state: State,
    eof: bool,
}

/// The boundary of a `multipart/...; boundary=...` content type.
pub fn boundary(content_type: &str) -> Option<String> {
    params(content_type)
        .into_iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v)
        .filter(|b| !b.is_empty() && b.len() <= 200)
}

/// `key=value` parameters after the first `;`, values unquoted.
fn params(header: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = match header.split_once(';') {
        Some((_, rest)) => rest,
        None => return out,
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        if rest.is_empty() {
            return out;
        }
        let (key, after) = match rest.split_once('=') {
            Some((key, after)) => (key.trim(), after.trim_start()),
            None => return out,
        };
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end.min(quoted.len())..])
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((key.to_ascii_lowercase(), value));
        rest = remaining;
    }
}

impl<B> Multipart<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    pub fn new(body: B, boundary: &str) -> Self {
        let mut delimiter = b"\r\n--".to_vec();
        delimiter.extend_from_slice(boundary.as_bytes());
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.extend_from_slice(b"\r\n");
        Multipart {
            body,
            delimiter,
            buf,
            state: State::Preamble,
            eof: false,
        }
    }

    /// Reads one more body frame; false at the end of the body.
    async fn fill(&mut self) -> Result<bool, String> {
        if self.eof {
            return Ok(false);
        }
        loop {
            match self.body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                        return Ok(true);
                    }
                }
                Some(Err(e)) => return Err(format!("reading the upload: {e}")),
                None => {
                    self.eof = true;
                    return Ok(false);
                }
            }
        }
    }

    /// Reads what follows the closing delimiter (a CRLF, an epilogue, the end of a
    /// chunked body) up to [`MAX_EPILOGUE_BYTES`]. A server that answers with body
    /// bytes still unread closes the connection on them, and the kernel then resets
    /// it: a client (or a relay such as the gateway's) still writing that tail gets
    /// an error in place of the answer.
    async fn drain_epilogue(&mut self) {
        let mut drained = 0;
        self.buf.clear();
        while drained <= MAX_EPILOGUE_BYTES {
            match self.fill().await {
                Ok(true) => {
                    drained += self.buf.len();
                    self.buf.clear();
                }
                Ok(false) | Err(_) => return,
            }
        }
    }

    fn find(&self, needle: &[u8]) -> Option<usize> {
        memchr::memmem::find(&self.buf, needle)
    }

    /// The next part's headers; `None` after the last part. Whatever is left of the
    /// current part is skipped.
    pub async fn next_part(&mut self) -> Result<Option<PartHeaders>, String> {
        loop {
            match self.state {
                State::Done => return Ok(None),
                State::Body => while self.read_chunk().await?.is_some() {},
                State::Preamble => match self.find(&self.delimiter) {
                    Some(at) => {
                        self.buf.advance(at + self.delimiter.len());
                        self.state = State::Delimiter;
                    }
                    None => {
                        if self.buf.len() > MAX_HEADER_BYTES {
                            return Err("no multipart boundary in the body".into());
                        }
                        if !self.fill().await? {
                            return Err("the body has no multipart parts".into());
                        }
                    }
                },
                State::Delimiter => {
                    // `--` ends the body; otherwise optional spaces, then CRLF, then
                    // the part's headers up to an empty line.
                    if self.buf.len() >= 2 && &self.buf[..2] == b"--" {
                        self.state = State::Done;
                        self.drain_epilogue().await;
                        return Ok(None);
                    }
                    let Some(end) = self.find(b"\r\n\r\n") else {
                        if self.buf.len() > MAX_HEADER_BYTES {
                            return Err("multipart part headers are too big".into());
                        }
                        if !self.fill().await? {
                            return Err("the upload ended inside a part's headers".into());
                        }
                        continue;
                    };
                    let block = self.buf.split_to(end + 4);
                    let text = String::from_utf8_lossy(&block);
                    let mut lines = text.split("\r\n");
                    if !lines.next().unwrap_or_default().trim().is_empty() {
                        return Err("malformed multipart delimiter line".into());
                    }
                    let mut headers = PartHeaders::default();
                    for line in lines {
                        let Some((name, value)) = line.split_once(':') else {
                            continue;
                        };
                        if name.trim().eq_ignore_ascii_case("content-disposition") {
                            for (key, value) in params(value) {
                                match key.as_str() {
                                    "name" => headers.name = Some(value),
                                    "filename" => headers.filename = Some(value),
                                    _ => {}
                                }
                            }
                        }
                    }
                    self.state = State::Body;
                    return Ok(Some(headers));
                }
            }
        }
    }

    /// The next chunk of the current part's content; `None` at its end.
    pub async fn read_chunk(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            if self.state != State::Body {
                return Ok(None);
            }
            match self.find(&self.delimiter) {
                Some(0) => {
                    self.buf.advance(self.delimiter.len());
                    self.state = State::Delimiter;
                    return Ok(None);
                }
                Some(at) => return Ok(Some(self.buf.split_to(at).freeze())),
                None => {
                    // Everything but a possible start of the delimiter is content.
                    let keep = self.delimiter.len() - 1;
                    if self.buf.len() > keep {
                        let take = self.buf.len() - keep;
                        return Ok(Some(self.buf.split_to(take).freeze()));
                    }
                    if !self.fill().await? {
                        return Err("the upload ended inside a part".into());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::body::Frame;
    use proptest::prelude::*;
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    /// A body delivered in the given chunks.
    struct Chunks(VecDeque<Bytes>);

    impl Body for Chunks {
        type Data = Bytes;
        type Error = std::convert::Infallible;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(self.0.pop_front().map(|b| Ok(Frame::data(b))))
        }
    }

    fn body(data: &[u8], split: usize) -> Chunks {
        Chunks(
            data.chunks(split.max(1))
                .map(Bytes::copy_from_slice)
                .collect(),
        )
    }

    async fn parse(data: &[u8], split: usize) -> Result<Vec<(PartHeaders, Vec<u8>)>, String> {
        let mut multipart = Multipart::new(body(data, split), "XyZ");
        let mut parts = Vec::new();
        while let Some(headers) = multipart.next_part().await? {
            let mut content = Vec::new();
            while let Some(chunk) = multipart.read_chunk().await? {
                content.extend_from_slice(&chunk);
            }
            parts.push((headers, content));
        }
        Ok(parts)
    }

    const FORM: &[u8] = b"preamble\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"dir/a \\\"q\\\".txt\"\r\nContent-Type: application/octet-stream\r\n\r\nhello\r\n--XyNot\r\n--XyZ  \r\ncontent-disposition: form-data; name=other\r\n\r\n\r\n--XyZ--\r\nepilogue";

    #[tokio::test]
    async fn reads_parts_whatever_the_framing() {
        for split in [1, 2, 3, 7, 16, FORM.len()] {
            let parts = parse(FORM, split).await.expect("parse");
            assert_eq!(parts.len(), 2, "split {split}");
            assert_eq!(parts[0].0.name.as_deref(), Some("file"));
            assert_eq!(parts[0].0.filename.as_deref(), Some("dir/a \"q\".txt"));
            assert_eq!(parts[0].1, b"hello\r\n--XyNot");
            assert_eq!(parts[1].0.name.as_deref(), Some("other"));
            assert_eq!(parts[1].1, b"");
        }
    }

    #[tokio::test]
    async fn truncated_or_boundaryless_bodies_are_errors() {
        assert!(parse(&FORM[..60], 5).await.is_err());
        assert!(parse(b"no boundary at all", 4).await.is_err());
        assert!(parse(b"", 1).await.is_err());
    }

    #[test]
    fn boundaries_from_content_types() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary("multipart/form-data; charset=x; Boundary=\"a b\"").as_deref(),
            Some("a b")
        );
        assert_eq!(boundary("multipart/form-data"), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Any content, any framing: what goes in comes out; garbage never panics.
        #[test]
        fn content_survives(content in proptest::collection::vec(any::<u8>(), 0..600), split in 1usize..50) {
            let mut form = b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n".to_vec();
            form.extend_from_slice(&content);
            form.extend_from_slice(b"\r\n--XyZ--\r\n");
            let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
            let parsed = runtime.block_on(parse(&form, split));
            // Content that contains the delimiter itself legitimately splits a part.
            if memchr::memmem::find(&content, b"\r\n--XyZ").is_none() {
                let parts = parsed.expect("parse");
                prop_assert_eq!(parts.len(), 1);
                prop_assert_eq!(&parts[0].1, &content);
            }
            let _ = runtime.block_on(parse(&content, split));
        }
    }
}
