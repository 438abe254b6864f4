//! What crosses the connection: request bodies, the process event stream and
//! downloads parsed as they arrive, and the agent's errors decoded.

use super::*;

/// Who drives a call's connection (see [`Connection`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Drive {
    Task,
    Inline,
}

pub(super) fn full(bytes: impl Into<Bytes>) -> RequestBody {
    Full::new(bytes.into())
        .map_err(|e: std::convert::Infallible| match e {})
        .boxed_unsync()
}

pub(super) fn empty() -> RequestBody {
    full(Bytes::new())
}

/// Percent-encodes a query value (everything but unreserved characters and `/`).
pub(super) fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// What [`AgentClient::run`] collected.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutput {
    pub pid: u32,
    /// The exit code; `None` when the process did not exit on its own (killed by a
    /// signal).
    pub exit_code: Option<i32>,
    pub exited: bool,
    /// envd's wording: `exit status 3`, `signal: killed`.
    pub status: String,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Whether output beyond the cap was discarded.
    pub truncated: bool,
    /// The end event's error (envd sets it for every non-zero exit).
    pub error: Option<String>,
}

#[derive(Debug)]
pub(super) enum Message {
    Event(ProcessEvent),
    End(EndStreamMessage),
}

/// The events of a started (or reattached) process, parsed from the stream as they
/// arrive. Ends after the end event; an error in the end-of-stream message becomes
/// [`AgentError::Connect`], a broken connection [`AgentError::Unavailable`].
pub struct ProcessStream {
    pub(super) body: Incoming,
    /// Received bytes not yet split into envelopes; bounded by the envelope size
    /// limit. Envelopes are split off it and their messages decoded from those
    /// slices: an output chunk is copied once, from the response body into `buf`.
    /// (Keeping hyper's frames instead would save that copy but pin hyper's read
    /// buffer, which then gets reallocated, and page-faulted, on every read.)
    pub(super) buf: BytesMut,
    /// The start event, read by `start` and yielded first.
    pub(super) pending: Option<ProcessEvent>,
    pub(super) pid: u32,
    pub(super) finished: bool,
    pub(super) connection: Connection,
}

impl fmt::Debug for ProcessStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessStream")
            .field("pid", &self.pid)
            .field("finished", &self.finished)
            .finish_non_exhaustive()
    }
}

impl ProcessStream {
    /// The pid the agent gave the process (also its process group).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The next envelope: flags and message.
    pub(super) fn poll_raw(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(u8, Bytes), AgentError>> {
        loop {
            match split_envelope(&mut self.buf) {
                Ok(Some(envelope)) => return Poll::Ready(Ok(envelope)),
                Ok(None) => {}
                Err(e) => return Poll::Ready(Err(AgentError::Protocol(e.to_string()))),
            }
            // Room for the whole envelope at once (its size is known from its
            // header, and bounded): one allocation, reused in place for the next
            // envelope once this one's event has been dropped.
            if let Ok(Some((_, len))) = envelope_header(&self.buf) {
                self.buf.reserve(5 + len - self.buf.len());
            }
            self.connection.drive(cx);
            match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    // Trailers carry nothing in the Connect streaming protocol.
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
                Some(Err(e)) => {
                    return Poll::Ready(Err(AgentError::Unavailable(format!(
                        "reading the stream: {e}"
                    ))));
                }
                None => {
                    return Poll::Ready(Err(AgentError::Unavailable(
                        "the stream was cut off before its end".into(),
                    )));
                }
            }
        }
    }

    pub(super) fn poll_message(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Message, AgentError>> {
        let (flags, message) = ready!(self.poll_raw(cx))?;
        Poll::Ready(decode_message(flags, message))
    }
}

impl Stream for ProcessStream {
    type Item = Result<ProcessEvent, AgentError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(event) = this.pending.take() {
            return Poll::Ready(Some(Ok(event)));
        }
        if this.finished {
            return Poll::Ready(None);
        }
        let message = ready!(this.poll_message(cx));
        Poll::Ready(match message {
            Ok(Message::Event(event)) => Some(Ok(event)),
            Ok(Message::End(end)) => {
                this.finished = true;
                end.error.map(|e| Err(AgentError::Connect(e)))
            }
            Err(e) => {
                this.finished = true;
                Some(Err(e))
            }
        })
    }
}

/// A file being downloaded: its bytes as they arrive.
pub struct Download {
    pub(super) body: Incoming,
    pub(super) connection: Connection,
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Download").finish_non_exhaustive()
    }
}

impl Stream for Download {
    type Item = Result<Bytes, AgentError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            self.connection.drive(cx);
            return match ready!(Pin::new(&mut self.body).poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => Poll::Ready(Some(Ok(data))),
                    Err(_trailers) => continue,
                },
                Some(Err(e)) => Poll::Ready(Some(Err(AgentError::Unavailable(format!(
                    "download cut off: {e}"
                ))))),
                None => Poll::Ready(None),
            };
        }
    }
}

pub(super) fn decode_message(flags: u8, mut message: impl Buf) -> Result<Message, AgentError> {
    if flags & COMPRESSED_FLAG != 0 {
        return Err(AgentError::Protocol(
            "compressed message, but no compression was negotiated".into(),
        ));
    }
    if flags & CONNECT_END_STREAM_FLAG != 0 {
        serde_json::from_slice(&message.copy_to_bytes(message.remaining()))
            .map(Message::End)
            .map_err(|e| AgentError::Protocol(format!("malformed end of stream: {e}")))
    } else {
        match CODEC.decode_buf::<StartResponse>(message) {
            Ok(StartResponse { event: Some(event) }) => Ok(Message::Event(event)),
            Ok(StartResponse { event: None }) => Err(AgentError::Protocol(
                "stream message without an event".into(),
            )),
            Err(e) => Err(AgentError::Protocol(format!(
                "malformed stream message: {e}"
            ))),
        }
    }
}

pub(super) async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, AgentError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(AgentError::Protocol(format!(
            "response body over {limit} bytes"
        ))),
        Err(e) => Err(AgentError::Unavailable(format!("reading response: {e}"))),
    }
}

/// A non-200 answer: a Connect error (`{"code": "not_found", ...}`), or envd's plain
/// HTTP error (`{"code": 404, "message": ...}`, mapped to the matching Connect code),
/// else a protocol error.
pub(super) async fn error_response(status: StatusCode, body: Incoming) -> AgentError {
    #[derive(serde::Deserialize)]
    struct PlainError {
        #[serde(default)]
        message: String,
    }
    let body = match read_body(body, MAX_UNARY_RESPONSE_BYTES).await {
        Ok(body) => body,
        Err(e) => return e,
    };
    if let Ok(error) = serde_json::from_slice::<ConnectError>(&body) {
        return AgentError::Connect(error);
    }
    match serde_json::from_slice::<PlainError>(&body) {
        Ok(plain) => {
            let code = match status.as_u16() {
                400 => code::INVALID_ARGUMENT,
                401 => code::UNAUTHENTICATED,
                403 => code::PERMISSION_DENIED,
                404 => code::NOT_FOUND,
                409 => code::ALREADY_EXISTS,
                415 | 501 => code::UNIMPLEMENTED,
                429 | 507 => code::RESOURCE_EXHAUSTED,
                500 => code::INTERNAL,
                _ => code::UNKNOWN,
            };
            AgentError::Connect(ConnectError::new(code, plain.message))
        }
        Err(_) => AgentError::Protocol(format!("agent answered HTTP {status}")),
    }
}

/// A response body relayed from an agent ([`AgentClient::forward`]): the agent's
/// body as it arrives, holding the connection open until it is dropped.
pub struct Forwarded {
    pub(super) body: Incoming,
    pub(super) _connection: Connection,
}

impl hyper::body::Body for Forwarded {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
