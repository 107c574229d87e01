//! Client authentication: `Authorization: Bearer <key>` or `x-api-key: <key>`, compared as
//! SHA-256 digests in constant time against every configured client key.

use http::{header, HeaderMap};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

/// The clients allowed to use the proxy.
#[derive(Debug)]
pub struct ClientAuth {
    clients: Vec<(String, [u8; 32])>,
    open: bool,
}

/// The name used for requests when client auth is explicitly off.
pub const ANONYMOUS: &str = "anonymous";

impl ClientAuth {
    pub fn new(config: &AuthConfig) -> Self {
        Self {
            clients: config
                .clients
                .iter()
                .map(|c| (c.name.clone(), digest(c.key.expose().as_bytes())))
                .collect(),
            open: config.allow_unauthenticated,
        }
    }

    /// The authenticated client's name, or `None` if the request must be refused.
    pub fn authenticate(&self, headers: &HeaderMap) -> Option<&str> {
        if self.open {
            return Some(ANONYMOUS);
        }
        let presented = presented_key(headers)?;
        let d = digest(presented);
        // Compare against every client without an early exit.
        let mut found = None;
        for (name, expected) in &self.clients {
            if bool::from(expected.ct_eq(&d)) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        let scheme = v.get(..7)?;
        return scheme
            .eq_ignore_ascii_case(b"bearer ")
            .then(|| v[7..].trim_ascii());
    }
    headers.get("x-api-key").map(|v| v.as_bytes().trim_ascii())
}

fn digest(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ClientKey, Secret};
    use http::HeaderValue;

    fn auth() -> ClientAuth {
        ClientAuth::new(&AuthConfig {
            clients: vec![
                ClientKey {
                    name: "a".into(),
                    key: Secret::new("key-a"),
                },
                ClientKey {
                    name: "b".into(),
                    key: Secret::new("key-b"),
                },
            ],
            allow_unauthenticated: false,
        })
    }

    fn headers(name: &'static str, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn accepts_bearer_and_x_api_key() {
        let a = auth();
        assert_eq!(
            a.authenticate(&headers("authorization", "Bearer key-b")),
            Some("b")
        );
        assert_eq!(
            a.authenticate(&headers("authorization", "bearer key-a")),
            Some("a")
        );
        assert_eq!(a.authenticate(&headers("x-api-key", "key-a")), Some("a"));
    }

    #[test]
    fn refuses_wrong_missing_or_malformed() {
        let a = auth();
        assert_eq!(
            a.authenticate(&headers("authorization", "Bearer key-c")),
            None
        );
        assert_eq!(
            a.authenticate(&headers("authorization", "Basic key-a")),
            None
        );
        assert_eq!(a.authenticate(&HeaderMap::new()), None);
    }
}
