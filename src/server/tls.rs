//! TLS termination: certificate chain and key from PEM files, ALPN `h2` then `http/1.1`.
//! The certificate lives in a [`CertStore`] that a reload swaps atomically: new handshakes
//! get the new certificate, established connections keep theirs.

use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsFiles;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain `{path}`: {reason}")]
    Cert { path: String, reason: String },
    #[error("certificate file `{0}` holds no certificate")]
    NoCert(String),
    #[error("cannot read private key `{path}`: {reason}")]
    Key { path: String, reason: String },
    #[error("certificate `{cert}` and key `{key}` do not form a usable pair: {reason}")]
    Pair {
        cert: String,
        key: String,
        reason: String,
    },
}

/// Reads and checks a certificate chain and its private key.
pub fn load_certified_key(files: &TlsFiles) -> Result<CertifiedKey, TlsError> {
    let shown = |p: &Path| p.display().to_string();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError::Cert {
            path: shown(&files.cert),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCert(shown(&files.cert)));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| TlsError::Key {
        path: shown(&files.key),
        reason: e.to_string(),
    })?;
    // Checks that the key belongs to the certificate.
    CertifiedKey::from_der(certs, key, &rustls::crypto::ring::default_provider()).map_err(|e| {
        TlsError::Pair {
            cert: shown(&files.cert),
            key: shown(&files.key),
            reason: e.to_string(),
        }
    })
}

/// The certificate served to new handshakes, swappable at run time.
#[derive(Debug)]
pub struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl CertStore {
    pub fn load(files: &TlsFiles) -> Result<Self, TlsError> {
        Ok(Self {
            current: ArcSwap::from_pointee(load_certified_key(files)?),
        })
    }

    /// Loads `files` and, if they form a usable pair, serves them to new handshakes.
    /// On error the current certificate stays.
    pub fn reload(&self, files: &TlsFiles) -> Result<(), TlsError> {
        let ck = load_certified_key(files)?;
        self.current.store(Arc::new(ck));
        Ok(())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The rustls server config serving `store`'s certificate.
pub fn server_config(store: Arc<CertStore>) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(config)
}
