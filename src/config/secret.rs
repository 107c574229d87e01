//! Secrets: references (`env:NAME`, `file:PATH`) resolved at load time into [`Secret`]s that
//! print only as fingerprints, so a key can never leak through `Debug`, a log line or a panic.

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};

/// A resolved secret. `Debug` and `Display` show only its fingerprint.
#[derive(Clone)]
pub struct Secret {
    value: Box<str>,
    fingerprint: Box<str>,
}

impl Secret {
    pub fn new(value: impl Into<Box<str>>) -> Self {
        let value = value.into();
        let fingerprint = fingerprint(&value).into();
        Self { value, fingerprint }
    }

    /// The secret itself. Only the upstream auth header and client-key comparison use this.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// A stable, non-reversible label such as `sk-proj-…3fa9c2d1`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.fingerprint)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.fingerprint)
    }
}

/// `sk-proj-…3fa9c2d1`: the key's vendor prefix (only for keys long enough that the prefix
/// gives nothing away), then the first 8 hex digits of its SHA-256. Never any of the key's
/// random part, so a fingerprint is safe in logs, metric labels and error bodies.
pub fn fingerprint(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let hash: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    let prefix = vendor_prefix(secret);
    format!("{prefix}…{hash}")
}

fn vendor_prefix(secret: &str) -> &str {
    if secret.len() < 20 {
        return "";
    }
    // Leading alphabetic segments each ended by '-' or '_' ("sk-", "sk-ant-", "gsk_"), at most 8 bytes.
    let bytes = secret.as_bytes();
    let mut end = 0;
    let mut i = 0;
    while i < bytes.len() && i < 8 {
        let seg_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        if i == seg_start || i >= bytes.len() || !(bytes[i] == b'-' || bytes[i] == b'_') {
            break;
        }
        i += 1;
        if i <= 8 {
            end = i;
        }
    }
    &secret[..end]
}

/// Why a secret reference could not be resolved. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretRefError {
    #[error("secrets must be references, not literals: write \"env:NAME\" or \"file:PATH\"")]
    Literal,
    #[error("environment variable `{0}` is not set (or not valid UTF-8)")]
    MissingEnv(String),
    #[error("cannot read secret file `{path}`: {reason}")]
    File { path: String, reason: String },
    #[error("secret from `{0}` is empty")]
    Empty(String),
}

/// Resolves `env:NAME` or `file:PATH` (relative to `base_dir`).
pub fn resolve(reference: &str, base_dir: &Path) -> Result<Secret, SecretRefError> {
    let value = if let Some(name) = reference.strip_prefix("env:") {
        std::env::var(name).map_err(|_| SecretRefError::MissingEnv(name.to_string()))?
    } else if let Some(path) = reference.strip_prefix("file:") {
        let full = base_dir.join(path);
        std::fs::read_to_string(&full).map_err(|e| SecretRefError::File {
            path: full.display().to_string(),
            reason: e.kind().to_string(),
        })?
    } else {
        return Err(SecretRefError::Literal);
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(SecretRefError::Empty(reference.to_string()));
    }
    Ok(Secret::new(value))
}

/// A stand-in for a well-formed reference, without reading it: `placeholder:<reference>`.
pub fn placeholder(reference: &str) -> Result<Secret, SecretRefError> {
    let name = reference
        .strip_prefix("env:")
        .or_else(|| reference.strip_prefix("file:"))
        .ok_or(SecretRefError::Literal)?;
    if name.is_empty() {
        return Err(SecretRefError::Empty(reference.to_string()));
    }
    Ok(Secret::new(format!("placeholder:{reference}")))
}

/// A human-readable default id for a key: the env var or file name it came from.
pub fn reference_name(reference: &str) -> &str {
    if let Some(name) = reference.strip_prefix("env:") {
        name
    } else if let Some(path) = reference.strip_prefix("file:") {
        path.rsplit(['/', '\\']).next().unwrap_or(path)
    } else {
        "key"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_keeps_vendor_prefix_and_hides_the_rest() {
        let fp = fingerprint("sk-proj-abcdefghijklmnopqrstuvwxyz0123");
        assert!(fp.starts_with("sk-proj-…"), "{fp}");
        assert!(!fp.contains("abcdef"));
        assert_eq!(fp.len(), "sk-proj-…".len() + 8);
        assert!(fingerprint("sk-ant-api03-zzzzzzzzzzzzzzzzzzzz").starts_with("sk-ant-…"));
        assert!(fingerprint("gsk_1234567890123456789012").starts_with("gsk_…"));
    }

    #[test]
    fn short_secrets_get_no_prefix() {
        assert!(fingerprint("sk-short").starts_with('…'));
        assert_ne!(fingerprint("a"), fingerprint("b"));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let s = Secret::new("sk-supersecretvalue-0000000000");
        assert!(!format!("{s:?} {s}").contains("supersecret"));
    }

    #[test]
    fn literals_are_rejected() {
        assert!(matches!(
            resolve("sk-abc", Path::new(".")),
            Err(SecretRefError::Literal)
        ));
    }
}
