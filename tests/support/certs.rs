//! Test certificates, generated at test time.

use std::path::{Path, PathBuf};

/// A self-signed certificate for `localhost` and 127.0.0.1, written as PEM files.
pub struct TestCert {
    pub cert_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The certificate's DER bytes, to compare with what a client was served.
    pub der: Vec<u8>,
}

impl TestCert {
    pub fn generate(dir: &Path, name: &str) -> Self {
        let ck = rcgen::generate_simple_self_signed(vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ])
        .expect("generate test certificate");
        let cert_pem = ck.cert.pem();
        let cert_path = dir.join(format!("{name}.crt"));
        let key_path = dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, &cert_pem).unwrap();
        std::fs::write(&key_path, ck.key_pair.serialize_pem()).unwrap();
        Self {
            der: ck.cert.der().to_vec(),
            cert_pem,
            cert_path,
            key_path,
        }
    }
}
