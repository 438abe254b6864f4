//! `vm cp`: copy one file into or out of a sandbox, streamed both ways (constant
//! memory whatever the size), `-` standing for stdin or stdout.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use futures::Stream;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};

use crate::client::{Client, api_error, seg};

/// One side of a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `-`: stdin as a source, stdout as a destination.
    Std,
    Local(PathBuf),
    /// `<vm>:<absolute path>`.
    Remote {
        vm: String,
        path: String,
    },
}

/// `vm:/path` is remote when what comes before the first `:` is a plain VM id or name
/// (no `/`), as `docker cp` reads it; `./a:b` and `/tmp/a:b` stay local.
pub fn parse_location(arg: &str) -> Location {
    if arg == "-" {
        return Location::Std;
    }
    match arg.split_once(':') {
        Some((vm, path)) if !vm.is_empty() && !vm.contains('/') && !vm.starts_with('.') => {
            Location::Remote {
                vm: vm.to_string(),
                path: path.to_string(),
            }
        }
        _ => Location::Local(PathBuf::from(arg)),
    }
}

#[derive(Debug, Deserialize)]
struct Stat {
    #[serde(rename = "type")]
    file_type: String,
}

fn file_name(path: &str) -> Option<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty())
}

/// A reader as a stream of chunks, for a request body that is never whole in memory.
fn chunks<R: AsyncRead + Unpin + Send + 'static>(
    reader: R,
) -> impl Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    futures::stream::unfold(reader, |mut reader| async move {
        let mut buf = vec![0u8; 256 * 1024];
        match reader.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), reader))
            }
            Err(e) => Some((Err(e), reader)),
        }
    })
}

impl Client {
    /// The remote file's metadata; `None` when there is none (a missing VM shows up
    /// in the copy itself).
    async fn stat(&self, vm: &str, path: &str) -> anyhow::Result<Option<Stat>> {
        let response = self
            .request(
                reqwest::Method::GET,
                &format!("/vms/{}/files/stat?path={}", seg(vm), seg(path)),
            )
            .send()
            .await
            .map_err(|e| anyhow!("cannot reach aetherium at {}: {e}", self.base))?;
        let status = response.status();
        let body = response.bytes().await.context("reading the response")?;
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map(Some)
                .context("unexpected answer to stat");
        }
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Err(api_error(status, &body))
    }
}

pub async fn cp(client: &Client, src: &str, dst: &str) -> anyhow::Result<u8> {
    match (parse_location(src), parse_location(dst)) {
        (Location::Remote { .. }, Location::Remote { .. }) => {
            bail!("copy between two sandboxes is not supported: copy to a local file first")
        }
        (from @ (Location::Std | Location::Local(_)), Location::Remote { vm, path }) => {
            upload(client, from, &vm, &path).await?;
        }
        (Location::Remote { vm, path }, to @ (Location::Std | Location::Local(_))) => {
            download(client, &vm, &path, to).await?;
        }
        _ => bail!("one of source and destination must be <vm>:<path>"),
    }
    Ok(0)
}

async fn upload(client: &Client, from: Location, vm: &str, path: &str) -> anyhow::Result<()> {
    let mut path = path.to_string();
    let local_name = match &from {
        Location::Local(p) => p.file_name().map(|n| n.to_string_lossy().into_owned()),
        _ => None,
    };
    // Into a directory (`vm:/dir/` or an existing one): keep the file's name.
    let into_dir = path.ends_with('/')
        || client
            .stat(vm, &path)
            .await?
            .is_some_and(|s| s.file_type == "dir");
    if into_dir {
        let name = local_name
            .ok_or_else(|| anyhow!("{path} is a directory: name the file to write there"))?;
        path = format!("{}/{name}", path.trim_end_matches('/'));
    }
    let mut request = client.request(
        reqwest::Method::PUT,
        &format!("/vms/{}/files?path={}", seg(vm), seg(&path)),
    );
    request = match from {
        Location::Local(local) => {
            let file = tokio::fs::File::open(&local)
                .await
                .with_context(|| format!("cannot open {}", local.display()))?;
            let meta = file.metadata().await?;
            if meta.is_dir() {
                bail!(
                    "{} is a directory: vm cp copies single files",
                    local.display()
                );
            }
            request
                .header(reqwest::header::CONTENT_LENGTH, meta.len())
                .body(reqwest::Body::wrap_stream(chunks(file)))
        }
        _ => request.body(reqwest::Body::wrap_stream(chunks(tokio::io::stdin()))),
    };
    client
        .execute(request.header(reqwest::header::CONTENT_TYPE, "application/octet-stream"))
        .await?;
    Ok(())
}

async fn download(client: &Client, vm: &str, path: &str, to: Location) -> anyhow::Result<()> {
    let request = client.request(
        reqwest::Method::GET,
        &format!("/vms/{}/files?path={}", seg(vm), seg(path)),
    );
    let mut response = client.execute(request).await?;
    match to {
        Location::Std => {
            let mut stdout = tokio::io::stdout();
            while let Some(chunk) = response.chunk().await.context("reading the file")? {
                stdout.write_all(&chunk).await?;
            }
            stdout.flush().await?;
        }
        Location::Local(mut local) => {
            if local.is_dir() {
                let name =
                    file_name(path).ok_or_else(|| anyhow!("{path} has no file name to copy to"))?;
                local.push(name);
            }
            let result = write_file(&local, &mut response).await;
            if result.is_err() {
                // No half-written file looks like a copy.
                let _ = tokio::fs::remove_file(&local).await;
            }
            result?;
        }
        Location::Remote { .. } => bail!("unreachable: destination is remote"),
    }
    Ok(())
}

async fn write_file(local: &Path, response: &mut reqwest::Response) -> anyhow::Result<()> {
    let mut file = tokio::fs::File::create(local)
        .await
        .with_context(|| format!("cannot write {}", local.display()))?;
    while let Some(chunk) = response.chunk().await.context("reading the file")? {
        file.write_all(&chunk).await?;
    }
    file.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations() {
        assert_eq!(parse_location("-"), Location::Std);
        assert_eq!(
            parse_location("box:/etc/hosts"),
            Location::Remote {
                vm: "box".into(),
                path: "/etc/hosts".into()
            }
        );
        assert_eq!(
            parse_location("./a:b"),
            Location::Local(PathBuf::from("./a:b"))
        );
        assert_eq!(
            parse_location("/tmp/a:b"),
            Location::Local(PathBuf::from("/tmp/a:b"))
        );
        assert_eq!(
            parse_location("file"),
            Location::Local(PathBuf::from("file"))
        );
        assert_eq!(file_name("/a/b.txt"), Some("b.txt"));
        assert_eq!(file_name("/"), None);
    }
}
