//! envd's `/files`: download (`GET`) and upload (`POST`, `multipart/form-data` or
//! `application/octet-stream`), streamed both ways in constant memory.
//!
//! Uploads write the target in place, as envd does (so a directory watcher sees the
//! same events as with envd: create, write): an existing file is truncated and keeps
//! its inode, mode and links; a new one gets 0666 less the umask. Parent directories
//! are created; files and directories are owned by the request's user. A client that
//! disconnects mid-upload leaves no new file behind (a file the upload created is
//! removed); an existing file it was overwriting is left as far as it got, as with
//! envd.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::header::{CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt as _;
use hyper::body::{Body, Frame, Incoming};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWriteExt as _, ReadBuf};

use crate::connect::{self, ResponseBody, http_error};
use crate::filesystem::{chown_to, ensure_dirs};
use crate::multipart::{self, Multipart};
use crate::users::User;

/// Bytes per download chunk.
const READ_CHUNK: usize = 256 * 1024;

/// A failed `/files` call: envd's status and message.
pub struct Failure(pub StatusCode, pub String);

impl Failure {
    fn bad_request(message: impl Into<String>) -> Failure {
        Failure(StatusCode::BAD_REQUEST, message.into())
    }

    pub fn into_response(self) -> Response<ResponseBody> {
        http_error(self.0, self.1)
    }
}

fn io_failure(what: &str, path: &Path, e: &io::Error) -> Failure {
    let status = match e.kind() {
        io::ErrorKind::NotFound => StatusCode::NOT_FOUND,
        io::ErrorKind::PermissionDenied | io::ErrorKind::ReadOnlyFilesystem => {
            StatusCode::FORBIDDEN
        }
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => {
            StatusCode::INSUFFICIENT_STORAGE
        }
        io::ErrorKind::IsADirectory | io::ErrorKind::NotADirectory => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let message = if status == StatusCode::INSUFFICIENT_STORAGE {
        format!(
            "not enough disk space available: {what} '{}': {e}",
            path.display()
        )
    } else {
        format!("{what} '{}': {e}", path.display())
    };
    Failure(status, message)
}

/// `GET /files?path=`: the file's bytes, streamed.
pub async fn download(path: &Path) -> Result<Response<ResponseBody>, Failure> {
    let meta = match tokio::fs::metadata(path).await {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                format!("path '{}' does not exist", path.display()),
            ));
        }
        Err(e) => return Err(io_failure("checking", path, &e)),
    };
    if meta.is_dir() {
        return Err(Failure::bad_request(format!(
            "path '{}' is a directory",
            path.display()
        )));
    }
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| io_failure("opening", path, &e))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut response = connect::response(
        StatusCode::OK,
        Some("application/octet-stream"),
        FileBody {
            file,
            remaining: meta.len(),
        }
        .boxed_unsync(),
    );
    let headers = response.headers_mut();
    headers.insert(CONTENT_LENGTH, HeaderValue::from(meta.len()));
    if let Ok(value) = HeaderValue::from_str(&content_disposition(&name)) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    Ok(response)
}

/// `attachment; filename="a.txt"`, with an RFC 5987 `filename*` for names that are
/// not plain printable ASCII.
fn content_disposition(name: &str) -> String {
    let plain = name
        .chars()
        .all(|c| c.is_ascii_graphic() && c != '"' && c != '\\' || c == ' ');
    if plain {
        format!("attachment; filename=\"{name}\"")
    } else {
        let encoded: String = name
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        format!("attachment; filename*=UTF-8''{encoded}")
    }
}

/// A file as a response body, read a chunk at a time as hyper asks for more.
struct FileBody {
    file: tokio::fs::File,
    /// What the Content-Length promised; a file that shrank meanwhile is an error.
    remaining: u64,
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(this.remaining)
            .unwrap_or(READ_CHUNK)
            .min(READ_CHUNK);
        let mut chunk = BytesMut::zeroed(want);
        let mut buf = ReadBuf::new(&mut chunk);
        match Pin::new(&mut this.file).poll_read(cx, &mut buf) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Err(e)) => Poll::Ready(Some(Err(e))),
            Poll::Ready(Ok(())) => {
                let n = buf.filled().len();
                if n == 0 {
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the file shrank while being downloaded",
                    ))));
                }
                chunk.truncate(n);
                this.remaining -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(chunk.freeze()))))
            }
        }
    }
}

/// One written file, as envd lists them in the upload response.
#[derive(Debug, Serialize)]
pub struct Written {
    pub path: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: &'static str,
}

/// `POST /files`. `path` is the resolved `?path=` (if given); `resolve` turns a
/// multipart part's file name into a path.
pub async fn upload(
    headers: &HeaderMap,
    body: Incoming,
    path: Option<PathBuf>,
    user: &User,
    resolve: impl Fn(&str) -> Result<PathBuf, String>,
) -> Result<Vec<Written>, Failure> {
    let gzip = match headers
        .get("content-encoding")
        .map(|v| v.to_str().unwrap_or("?").trim())
    {
        None => false,
        Some(e) if e.is_empty() || e.eq_ignore_ascii_case("identity") => false,
        Some(e) if e.eq_ignore_ascii_case("gzip") => true,
        Some(e) => {
            return Err(Failure(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {e:?} is not supported; use gzip or identity"),
            ));
        }
    };
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let media = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if media == "application/octet-stream" {
        let Some(path) = path else {
            return Err(Failure::bad_request(
                "path query parameter is required for raw body upload",
            ));
        };
        let mut source = Source::Raw(body);
        write_file(&path, user, &mut source, gzip).await?;
        return Ok(vec![written(&path)]);
    }
    if gzip {
        return Err(Failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "gzip is supported for application/octet-stream uploads only".into(),
        ));
    }
    if !media.starts_with("multipart/") {
        return Err(Failure::bad_request(format!(
            "unsupported content type: {content_type}, expected multipart/form-data or application/octet-stream"
        )));
    }
    let boundary = multipart::boundary(content_type)
        .ok_or_else(|| Failure::bad_request("multipart content type without a boundary"))?;
    let mut parts = Multipart::new(body, &boundary);
    let mut uploaded: Vec<Written> = Vec::new();
    while let Some(part) = parts.next_part().await.map_err(Failure::bad_request)? {
        if part.name.as_deref() != Some("file") {
            continue;
        }
        let target = match (&path, part.filename.as_deref()) {
            (Some(path), _) => path.clone(),
            (None, Some(name)) if !name.is_empty() => {
                resolve(name).map_err(Failure::bad_request)?
            }
            (None, _) => {
                return Err(Failure::bad_request(
                    "a file part has no file name and no path was given",
                ));
            }
        };
        let shown = target.display().to_string();
        if uploaded.iter().any(|w| w.path == shown) {
            return Err(Failure::bad_request(format!(
                "you cannot upload multiple files to the same path '{shown}' in one upload request"
            )));
        }
        let mut source = Source::Part(&mut parts);
        write_file(&target, user, &mut source, false).await?;
        uploaded.push(written(&target));
    }
    Ok(uploaded)
}

fn written(path: &Path) -> Written {
    Written {
        path: path.display().to_string(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kind: "file",
    }
}

/// Where an upload's bytes come from.
enum Source<'a> {
    Raw(Incoming),
    Part(&'a mut Multipart<Incoming>),
}

impl Source<'_> {
    async fn next(&mut self) -> Result<Option<Bytes>, String> {
        match self {
            Source::Raw(body) => loop {
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            return Ok(Some(data));
                        }
                    }
                    Some(Err(e)) => return Err(format!("reading the upload: {e}")),
                    None => return Ok(None),
                }
            },
            Source::Part(parts) => parts.read_chunk().await,
        }
    }
}

/// A file an upload is creating; removed unless the upload completes, also when the
/// request is dropped halfway (client gone).
struct Created {
    path: PathBuf,
    keep: bool,
}

impl Drop for Created {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Compressed input is fed to the inflater this much at a time, which bounds what
/// one step can expand to (deflate's ratio is at most about 1:1032).
const GZIP_STEP: usize = 4096;

async fn write_file(
    target: &Path,
    user: &User,
    source: &mut Source<'_>,
    gzip: bool,
) -> Result<(), Failure> {
    let parent = target
        .parent()
        .ok_or_else(|| Failure::bad_request("cannot upload to /"))?;
    ensure_dirs(parent, user).map_err(|e| {
        let status = if e.code == aetherium_types::agent::code::INVALID_ARGUMENT {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        Failure(status, format!("error ensuring directories: {}", e.message))
    })?;
    let existed = match tokio::fs::metadata(target).await {
        Ok(meta) if meta.is_dir() => {
            return Err(Failure::bad_request(format!(
                "path is a directory: {}",
                target.display()
            )));
        }
        Ok(_) => true,
        Err(_) => false,
    };
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true).mode(0o666);
    let mut file = options
        .open(target)
        .await
        .map_err(|e| io_failure("opening", target, &e))?;
    let mut created = Created {
        path: target.to_path_buf(),
        keep: existed,
    };
    chown_to(target, user).map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.message))?;
    let mut gunzip = gzip.then(|| flate2::write::GzDecoder::new(Vec::new()));
    let corrupt =
        |e: io::Error| Failure::bad_request(format!("error decompressing request body: {e}"));
    while let Some(chunk) = source.next().await.map_err(Failure::bad_request)? {
        match &mut gunzip {
            None => file
                .write_all(&chunk)
                .await
                .map_err(|e| io_failure("writing", target, &e))?,
            Some(decoder) => {
                for step in chunk.chunks(GZIP_STEP) {
                    std::io::Write::write_all(decoder, step).map_err(corrupt)?;
                    let inflated = std::mem::take(decoder.get_mut());
                    file.write_all(&inflated)
                        .await
                        .map_err(|e| io_failure("writing", target, &e))?;
                }
            }
        }
    }
    if let Some(decoder) = gunzip {
        // Checks the trailer (CRC and length) too.
        let rest = decoder.finish().map_err(corrupt)?;
        file.write_all(&rest)
            .await
            .map_err(|e| io_failure("writing", target, &e))?;
    }
    file.flush()
        .await
        .map_err(|e| io_failure("writing", target, &e))?;
    created.keep = true;
    Ok(())
}

/// A query parameter, percent-decoded (`+` is a space, as in forms).
pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    query?.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(key) == name).then(|| percent_decode(value))
    })
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parameters_decode() {
        let q = Some("path=%2Ftmp%2Fa%20b.txt&username=user&x=1+2&bad=%zz&end=%4");
        assert_eq!(query_param(q, "path").as_deref(), Some("/tmp/a b.txt"));
        assert_eq!(query_param(q, "username").as_deref(), Some("user"));
        assert_eq!(query_param(q, "x").as_deref(), Some("1 2"));
        assert_eq!(query_param(q, "bad").as_deref(), Some("%zz"));
        assert_eq!(query_param(q, "end").as_deref(), Some("%4"));
        assert_eq!(query_param(q, "missing"), None);
        assert_eq!(query_param(None, "path"), None);
    }

    #[test]
    fn content_dispositions() {
        assert_eq!(
            content_disposition("a b.txt"),
            "attachment; filename=\"a b.txt\""
        );
        assert_eq!(
            content_disposition("é\"x"),
            "attachment; filename*=UTF-8''%C3%A9%22x"
        );
    }
}
