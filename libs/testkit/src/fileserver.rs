//! A static HTTP/1.0 file server for fixtures (tool tarballs, git's dumb HTTP
//! protocol; everything under `/private/` answers 401), counting requests per path, and the address sandboxes reach the host
//! at. Its threads end with the test process.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The docker0 bridge address: where Docker sandboxes reach the host.
pub fn docker_gateway() -> IpAddr {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "docker0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|cidr| cidr.split('/').next())
        .and_then(|ip| ip.parse().ok())
        .unwrap_or_else(|| "172.17.0.1".parse().unwrap())
}

pub struct FileServer {
    addr: SocketAddr,
    hits: Arc<Mutex<BTreeMap<String, usize>>>,
}

impl FileServer {
    /// Serves the files under `root` on `ip` (a free port).
    pub fn start(root: PathBuf, ip: IpAddr) -> FileServer {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(Mutex::new(BTreeMap::new()));
        let counted = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (root, hits) = (root.clone(), counted.clone());
                std::thread::spawn(move || serve(stream, &root, &hits));
            }
        });
        FileServer { addr, hits }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many requests asked for `path` (e.g. `/hello-1.0.0.tar.gz`).
    pub fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn serve(mut stream: TcpStream, root: &Path, hits: &Mutex<BTreeMap<String, usize>>) {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let target = request.split(' ').nth(1).unwrap_or("/").to_string();
    let path = target.split('?').next().unwrap_or("/").to_string();
    *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
    // A private repository or download: what a client without credentials meets.
    if path.starts_with("/private/") {
        let body = b"authentication required\n";
        let head = format!(
            "HTTP/1.0 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"private\"\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(head.as_bytes());
        let _ = stream.write_all(body);
        return;
    }
    let file = root.join(path.trim_start_matches('/'));
    let (status, body) = match std::fs::read(&file) {
        Ok(body) if !path.contains("..") => ("200 OK", body),
        _ => ("404 Not Found", b"not found\n".to_vec()),
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(&body);
}
