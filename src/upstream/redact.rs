//! Redaction of configured upstream secrets from what upstreams send back: error bodies
//! and every response header value. An upstream that echoes the credential it was sent
//! (a debug header, "invalid key Bearer sk-…" in a 400) must not hand it to the client, so
//! each occurrence is replaced by the key's fingerprint. 2xx bodies are relayed untouched
//! (never copied); only their headers are checked.

use aho_corasick::AhoCorasick;
use http::{HeaderMap, HeaderValue};

use crate::config::Config;

/// Every upstream secret of one config, found in one pass.
#[derive(Debug)]
pub struct Redactor {
    /// `None` when the config has no keys.
    finder: Option<AhoCorasick>,
    /// The shortest secret's length: a shorter text cannot hold one, and most response
    /// header values are shorter than any API key.
    shortest: usize,
    fingerprints: Vec<String>,
    /// The same in visible ASCII (`sk-...3fa9c2d1`), as header values should be.
    header_fingerprints: Vec<String>,
}

impl Redactor {
    pub fn new(config: &Config) -> Self {
        let mut secrets = Vec::new();
        let mut fingerprints = Vec::new();
        for key in config
            .providers
            .iter()
            .flat_map(|p| &p.connections)
            .flat_map(|c| &c.keys)
        {
            secrets.push(key.secret.expose().to_string());
            fingerprints.push(key.secret.fingerprint().to_string());
        }
        // Leftmost-longest: a key that contains another is replaced whole.
        let finder = aho_corasick::AhoCorasickBuilder::new()
            .match_kind(aho_corasick::MatchKind::LeftmostLongest)
            .build(&secrets)
            .ok()
            .filter(|_| !secrets.is_empty());
        Self {
            finder,
            shortest: secrets.iter().map(String::len).min().unwrap_or(0),
            header_fingerprints: fingerprints.iter().map(|f| f.replace('…', "...")).collect(),
            fingerprints,
        }
    }

    /// `text` with every configured secret replaced by its fingerprint; `None` if it has none.
    pub fn redact(&self, text: &[u8]) -> Option<Vec<u8>> {
        let finder = self.finder.as_ref()?;
        if text.len() < self.shortest {
            return None;
        }
        finder.find(text)?;
        Some(finder.replace_all_bytes(text, &self.fingerprints))
    }

    /// [`redact`](Self::redact) for text that may stay as it is.
    pub fn redact_string(&self, text: String) -> String {
        match self.redact(text.as_bytes()) {
            Some(clean) => String::from_utf8_lossy(&clean).into_owned(),
            None => text,
        }
    }

    /// Replaces every header value that carries a secret.
    pub fn redact_headers(&self, headers: &mut HeaderMap) {
        let Some(finder) = &self.finder else {
            return;
        };
        for value in headers.values_mut() {
            if value.len() >= self.shortest && finder.find(value.as_bytes()).is_some() {
                let clean = finder.replace_all_bytes(value.as_bytes(), &self.header_fingerprints);
                *value = HeaderValue::from_bytes(&clean)
                    .unwrap_or_else(|_| HeaderValue::from_static("[redacted]"));
            }
        }
    }
}
