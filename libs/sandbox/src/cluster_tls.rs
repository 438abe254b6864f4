//! TLS for the cluster's tunnel, with both ends authenticated by a cluster CA.
//!
//! - Every worker's certificate names it: `<worker id>.worker.aetherium` (a DNS
//!   subject alternative name), so a gateway that reaches the VM of worker `w1`
//!   accepts only `w1`'s certificate — a worker holding another id's certificate is
//!   refused by the standard name check, whatever address it answers on.
//! - Every client (gateway) presents a certificate of the same CA; a worker refuses
//!   connections without one. The tunnel's HMAC handshake still runs inside.
//! - The files are read again when they change (checked at each connection), so
//!   certificates are rotated by replacing them, without a restart.
//!
//! `aetherium cluster init` makes the CA ([`new_ca`]), `aetherium cluster issue` its
//! certificates ([`issue`]); operators may bring their own PEM files instead.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpStream;

use crate::error::{CoreError, CoreResult};

/// The DNS name suffix of worker certificates.
pub const WORKER_NAME_SUFFIX: &str = "worker.aetherium";
/// The DNS name of gateway certificates.
pub const GATEWAY_NAME: &str = "gateway.aetherium";
const CA_NAME: &str = "Aetherium cluster CA";

/// The name a worker's certificate carries: `<id>.worker.aetherium`. Worker ids
/// that are not a DNS label (1-63 of `a-z0-9-`, no dash at either end) cannot.
pub fn worker_dns_name(worker_id: &str) -> Result<String, String> {
    let label_ok = !worker_id.is_empty()
        && worker_id.len() <= 63
        && worker_id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !worker_id.starts_with('-')
        && !worker_id.ends_with('-');
    if label_ok {
        Ok(format!("{worker_id}.{WORKER_NAME_SUFFIX}"))
    } else {
        Err(format!(
            "worker id {worker_id:?} cannot be named in a certificate: with TLS, worker ids are 1-63 lowercase letters, digits and '-'"
        ))
    }
}

/// Where a process's TLS material is (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate(s): what peers must chain to.
    pub ca: PathBuf,
    /// This process's certificate chain.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

struct Loaded {
    stamps: Vec<Option<SystemTime>>,
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
}

/// A process's TLS configuration for the tunnel, reloaded when its files change.
/// Cheap to clone.
#[derive(Clone)]
pub struct ClusterTls {
    files: TlsFiles,
    loaded: Arc<Mutex<Arc<Loaded>>>,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTls")
            .field("files", &self.files)
            .finish()
    }
}

impl PartialEq for ClusterTls {
    fn eq(&self, other: &Self) -> bool {
        self.files == other.files
    }
}

impl Eq for ClusterTls {}

fn stamps(files: &TlsFiles) -> Vec<Option<SystemTime>> {
    [&files.ca, &files.cert, &files.key]
        .iter()
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

fn build(files: &TlsFiles) -> Result<Loaded, String> {
    let stamps = stamps(files);
    let read_certs = |path: &Path, what: &str| -> Result<Vec<CertificateDer<'static>>, String> {
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("the {what} {} is not PEM: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "the {what} {} holds no certificate",
                path.display()
            ));
        }
        Ok(certs)
    };
    let mut roots = RootCertStore::empty();
    for ca in read_certs(&files.ca, "cluster CA")? {
        roots
            .add(ca)
            .map_err(|e| format!("the cluster CA {} is not usable: {e}", files.ca.display()))?;
    }
    let roots = Arc::new(roots);
    let chain = read_certs(&files.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read the private key {}: {e}", files.key.display()))?;
    // ring: builds with cc alone (aws-lc-rs would need cmake on every builder); its
    // key exchanges are the classic ones, no post-quantum hybrid yet.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| format!("cannot verify clients with the cluster CA: {e}"))?;
    let server = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(clients)
        .with_single_cert(chain.clone(), key.clone_key())
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    Ok(Loaded {
        stamps,
        server: Arc::new(server),
        client: Arc::new(client),
    })
}

impl ClusterTls {
    /// Loads the files once (a bad file is an error now, not at the first call).
    pub fn load(files: TlsFiles) -> CoreResult<ClusterTls> {
        let loaded = build(&files).map_err(CoreError::InvalidInput)?;
        Ok(ClusterTls {
            files,
            loaded: Arc::new(Mutex::new(Arc::new(loaded))),
        })
    }

    /// The configuration, read again if a file changed since. A replacement that
    /// does not load keeps the last good one (and says so).
    fn current(&self) -> Arc<Loaded> {
        let mut slot = self.loaded.lock().unwrap_or_else(|e| e.into_inner());
        if stamps(&self.files) != slot.stamps {
            match build(&self.files) {
                Ok(fresh) => {
                    tracing::info!(cert = %self.files.cert.display(), "tunnel TLS files changed: reloaded");
                    *slot = Arc::new(fresh);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "tunnel TLS files changed but do not load: keeping the previous ones");
                }
            }
        }
        slot.clone()
    }

    /// The server side of a connection: the peer must present a certificate of the
    /// cluster CA.
    pub async fn accept(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current().server.clone());
        acceptor.accept(tcp).await
    }

    /// The client side of a connection to worker `worker_id`'s endpoint: its
    /// certificate must chain to the cluster CA and name that worker.
    pub async fn connect(
        &self,
        worker_id: &str,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let name = worker_dns_name(worker_id)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let name = ServerName::try_from(name)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let connector = tokio_rustls::TlsConnector::from(self.current().client.clone());
        connector.connect(name, tcp).await
    }
}

// ---- issuing ----------------------------------------------------------------------

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Who a certificate is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// A worker: named `<id>.worker.aetherium`; also a client of other endpoints.
    Worker(String),
    /// A gateway: named `gateway.aetherium`, with `name` as its common name.
    Gateway(String),
}

/// The CA's parameters: the same every time, so that an issuer can be rebuilt from
/// the CA's key alone (its name and key identifier follow from them).
fn ca_params(years: i32) -> CoreResult<rcgen::CertificateParams> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, CA_NAME);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    set_validity(&mut params, years);
    Ok(params)
}

fn set_validity(params: &mut rcgen::CertificateParams, years: i32) {
    use chrono::Datelike as _;
    let now = chrono::Utc::now();
    let start = now - chrono::Duration::days(1);
    params.not_before = rcgen::date_time_ymd(start.year(), start.month() as u8, start.day() as u8);
    params.not_after = rcgen::date_time_ymd(
        now.year() + years,
        now.month() as u8,
        now.day().min(28) as u8,
    );
}

fn rcgen_error(e: rcgen::Error) -> CoreError {
    CoreError::Internal(anyhow::anyhow!("certificate generation failed: {e}"))
}

/// A new cluster CA, valid for ten years.
pub fn new_ca() -> CoreResult<Issued> {
    let key = rcgen::KeyPair::generate().map_err(rcgen_error)?;
    let cert = ca_params(10)?.self_signed(&key).map_err(rcgen_error)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `holder`, signed by the CA [`new_ca`] made (given its key),
/// valid for a year: for serving a tunnel endpoint and for calling one.
pub fn issue(ca_key_pem: &str, holder: &Holder) -> CoreResult<Issued> {
    let ca_key = rcgen::KeyPair::from_pem(ca_key_pem)
        .map_err(|e| CoreError::InvalidInput(format!("the CA key is not usable: {e}")))?;
    let issuer = rcgen::Issuer::new(ca_params(10)?, ca_key);
    let (dns, common_name) = match holder {
        Holder::Worker(id) => (
            worker_dns_name(id).map_err(CoreError::InvalidInput)?,
            id.clone(),
        ),
        Holder::Gateway(name) => (GATEWAY_NAME.to_string(), name.clone()),
    };
    let mut params = rcgen::CertificateParams::new(vec![dns]).map_err(rcgen_error)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::DigitalSignature,
        rcgen::KeyUsagePurpose::KeyEncipherment,
    ];
    set_validity(&mut params, 1);
    let key = rcgen::KeyPair::generate().map_err(rcgen_error)?;
    let cert = params.signed_by(&key, &issuer).map_err(rcgen_error)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_names_are_dns_labels() {
        assert_eq!(
            worker_dns_name("local-worker-1").as_deref(),
            Ok("local-worker-1.worker.aetherium")
        );
        for bad in ["", "Upper", "a_b", "-x", "x-", "a.b", &"a".repeat(64)] {
            assert!(worker_dns_name(bad).is_err(), "{bad:?}");
        }
    }
}
