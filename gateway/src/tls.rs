//! TLS for client connections (rustls): a certificate chain and key from PEM files, offered with
//! ALPN `h2` and `http/1.1`, and read again when the files change, so a renewed certificate (a
//! cert-manager Secret mounted in the pod, whose files the kubelet swaps) is served without a
//! restart.
//!
//! rustls asks a [`ResolvesServerCert`] for the certificate of each handshake; the one here
//! answers with the last good pair, which a task replaces when the files' bytes change. A pair
//! that does not load (a half-written file, a key that does not match) is logged and the
//! previous one stays.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// How often the certificate and key files are read to see whether they changed.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(10);

/// Why the certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("{path}: invalid PEM certificate: {reason}")]
    InvalidCertificate { path: PathBuf, reason: String },
    #[error("{path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {reason}")]
    InvalidKey { path: PathBuf, reason: String },
    #[error("cannot build the TLS configuration: {0}")]
    Config(String),
    #[error("the key in {key} does not fit the certificate in {cert}: {reason}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// The certificate and key files.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// What was loaded, and the bytes it was loaded from (to see a change).
struct Loaded {
    key: Arc<CertifiedKey>,
    bytes: (Vec<u8>, Vec<u8>),
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Build a certified key from PEM bytes.
fn certified_key(files: &TlsFiles, cert: &[u8], key: &[u8]) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::InvalidCertificate {
            path: files.cert.clone(),
            reason: error.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|error| TlsError::InvalidKey {
        path: files.key.clone(),
        reason: error.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|error| TlsError::Mismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
            reason: error.to_string(),
        })?;
    Ok(certified)
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let bytes = (read(&files.cert)?, read(&files.key)?);
    let key = certified_key(files, &bytes.0, &bytes.1)?;
    Ok(Loaded {
        key: Arc::new(key),
        bytes,
    })
}

/// The certificate every handshake gets: the last pair that loaded.
#[derive(Debug)]
struct Reloading {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// Accepts TLS connections with the current certificate. Cheap to clone.
#[derive(Clone)]
pub struct TlsAcceptor {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsAcceptor {
    /// Load the files (an error stops the start) and keep them current with a task that reads
    /// them every `interval`.
    pub fn start(files: TlsFiles, interval: Duration) -> Result<Self, TlsError> {
        let loaded = load(&files)?;
        let resolver = Arc::new(Reloading {
            current: ArcSwap::new(loaded.key.clone()),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Config(error.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        tokio::spawn(watch(files, interval, resolver, loaded.bytes));
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// The TLS handshake on an accepted connection.
    pub async fn accept<IO>(
        &self,
        stream: IO,
    ) -> std::io::Result<tokio_rustls::server::TlsStream<IO>>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        self.acceptor.accept(stream).await
    }
}

/// Read the files every `interval`; load them again when their bytes changed.
async fn watch(
    files: TlsFiles,
    interval: Duration,
    resolver: Arc<Reloading>,
    mut last: (Vec<u8>, Vec<u8>),
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let bytes = match (read(&files.cert), read(&files.key)) {
            (Ok(cert), Ok(key)) => (cert, key),
            (Err(error), _) | (_, Err(error)) => {
                tracing::warn!(%error, "cannot read the TLS files; serving the last certificate");
                continue;
            }
        };
        if bytes == last {
            continue;
        }
        match certified_key(&files, &bytes.0, &bytes.1) {
            Ok(key) => {
                resolver.current.store(Arc::new(key));
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                last = bytes;
            }
            // Often a pair caught between the two files' updates: tried again next time.
            Err(error) => {
                tracing::warn!(%error, "new TLS files do not load; serving the last certificate");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsFiles {
        let certified = rcgen::generate_simple_self_signed(vec![name.to_string()])
            .expect("a self-signed certificate");
        let files = TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.cert, certified.cert.pem()).expect("write cert");
        std::fs::write(&files.key, certified.signing_key.serialize_pem()).expect("write key");
        files
    }

    #[test]
    fn loads_a_pair_and_refuses_a_mismatch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = write_pair(dir.path(), "a.test");
        let loaded = load(&files).expect("a valid pair");
        assert_eq!(loaded.key.cert.len(), 1);
        // Another key for the same certificate.
        let other = rcgen::KeyPair::generate().expect("a key");
        std::fs::write(&files.key, other.serialize_pem()).expect("write key");
        let error = load(&files).err().expect("a mismatch");
        assert!(error.to_string().contains("does not fit"), "{error}");
        std::fs::write(&files.cert, "not pem").expect("write");
        let error = load(&files).err().expect("no certificate");
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
    }
}
