//! Certificates for test servers that speak TLS: a CA of its own per call, a server
//! certificate for `localhost` and `127.0.0.1`, and a client certificate, written
//! as PEM files into a directory.
//!
//! ```no_run
//! let dir = tempfile::tempdir().unwrap();
//! let pki = aetherium_testkit::tls::TestPki::make(dir.path()).unwrap();
//! // pki.ca, pki.server_cert, pki.server_key, pki.client_cert, pki.client_key
//! ```

use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

/// The PEM files [`TestPki::make`] wrote.
#[derive(Debug, Clone)]
pub struct TestPki {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TestPki {
    /// A new CA and the certificates it signs, as `ca.pem`, `server.pem`,
    /// `server.key`, `client.pem`, `client.key` in `dir` (keys 0600).
    pub fn make(dir: &Path) -> io::Result<TestPki> {
        std::fs::create_dir_all(dir)?;
        let ca_key = rcgen::KeyPair::generate().map_err(other)?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(other)?;
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "aetherium test CA");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca.self_signed(&ca_key).map_err(other)?;
        let issuer = rcgen::Issuer::new(ca, ca_key);

        let leaf = |common_name: &str, usage: rcgen::ExtendedKeyUsagePurpose| {
            let mut params =
                rcgen::CertificateParams::new(vec!["localhost".to_string()]).map_err(other)?;
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, common_name);
            params.extended_key_usages = vec![usage];
            let key = rcgen::KeyPair::generate().map_err(other)?;
            let cert = params.signed_by(&key, &issuer).map_err(other)?;
            Ok::<_, io::Error>((cert.pem(), key.serialize_pem()))
        };
        let (server_pem, server_key) =
            leaf("localhost", rcgen::ExtendedKeyUsagePurpose::ServerAuth)?;
        let (client_pem, client_key) = leaf(
            "aetherium test client",
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        )?;

        let pki = TestPki {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.pem"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&pki.ca, ca_cert.pem())?;
        std::fs::write(&pki.server_cert, server_pem)?;
        write_private(&pki.server_key, &server_key)?;
        std::fs::write(&pki.client_cert, client_pem)?;
        write_private(&pki.client_key, &client_key)?;
        Ok(pki)
    }
}

fn write_private(path: &Path, pem: &str) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, pem)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

fn other(e: rcgen::Error) -> io::Error {
    io::Error::other(format!("certificate generation failed: {e}"))
}
