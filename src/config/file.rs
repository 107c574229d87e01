//! The external TOML schema, exactly as users write it. Nothing outside `config` sees these
//! types: [`super::load`] validates them into the internal [`super::Config`].

use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
    pub server: ServerSection,
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    pub admin: Option<AdminSection>,
    pub auth: Spanned<AuthSection>,
    #[serde(default)]
    pub policy: PolicySection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default, rename = "provider")]
    pub providers: Vec<ProviderSection>,
    #[serde(default, rename = "capability")]
    pub capabilities: Vec<Spanned<CapabilitySection>>,
    pub state: Option<Spanned<StateSection>>,
}

/// `[state]`: where locks, windows and streaks live (this process, or shared on Redis).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct StateSection {
    pub backend: Spanned<String>,
    pub url: Option<Spanned<String>>,
    pub namespace: Option<Spanned<String>>,
    #[serde(default, with = "humantime_serde")]
    pub sync_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub required: bool,
}

/// One `[[capability]]` row: a model glob (optionally one provider's) and the fields it sets.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CapabilitySection {
    pub models: Spanned<String>,
    pub provider: Option<Spanned<String>>,
    pub max_output_tokens: Option<Spanned<u64>>,
    pub max_tokens_field: Option<crate::translate::caps::MaxTokensField>,
    pub thinking: Option<crate::translate::caps::ThinkingMode>,
    pub structured_output: Option<crate::translate::caps::StructuredOutput>,
    pub developer_role: Option<bool>,
    pub tool_ids: Option<crate::translate::caps::ToolIds>,
    pub reasoning_replay: Option<crate::translate::caps::ReasoningReplay>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct LogSection {
    pub format: Option<LogFormatName>,
    pub level: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum LogFormatName {
    Text,
    Json,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicySection {
    pub dir: Option<String>,
    pub on_error: Option<OnErrorName>,
    pub max_attempts: Option<Spanned<u32>>,
    #[serde(default, with = "humantime_serde")]
    pub call_timeout: Option<Duration>,
    pub max_operations: Option<Spanned<u64>>,
    #[serde(default, with = "humantime_serde")]
    pub max_retry_after: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub max_quota_wait: Option<Duration>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum OnErrorName {
    Default,
    Reject,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ServerSection {
    pub listen: Spanned<String>,
    pub tls: Option<TlsSection>,
    pub max_body_bytes: Option<Spanned<u64>>,
    pub max_connections: Option<Spanned<u64>>,
    pub max_header_bytes: Option<Spanned<u64>>,
    pub max_uri_bytes: Option<Spanned<u64>>,
    pub max_sse_event_bytes: Option<Spanned<u64>>,
    pub workers: Option<Spanned<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TlsSection {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct TimeoutsSection {
    #[serde(default, with = "humantime_serde")]
    pub tls_handshake: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub request_header: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub request_body: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub upstream_connect: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub upstream_headers: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub stream_idle: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub shutdown_drain: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub idle: Option<Duration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AdminSection {
    pub listen: Spanned<String>,
    pub token: Option<Spanned<String>>,
    #[serde(default)]
    pub allow_loopback_without_token: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AuthSection {
    #[serde(default)]
    pub clients: Vec<ClientEntry>,
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClientEntry {
    pub name: Spanned<String>,
    pub key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ProviderSection {
    pub id: Spanned<String>,
    pub kind: ProviderKindName,
    pub base_url: Spanned<String>,
    #[serde(default)]
    pub models: Vec<String>,
    pub anthropic_version: Option<String>,
    pub forward_query: Option<bool>,
    /// API formats served natively: `chat`, `messages`, `responses` (default by kind).
    pub formats: Option<Spanned<Vec<Spanned<String>>>>,
    /// Whether requests in other formats may be translated for this provider (default true).
    pub translate: Option<bool>,
    #[serde(default, rename = "connection")]
    pub connections: Vec<ConnectionSection>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(super) enum ProviderKindName {
    Openai,
    Anthropic,
    OpenaiCompatible,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConnectionSection {
    pub id: Spanned<String>,
    pub keys: Spanned<Vec<Spanned<KeyEntry>>>,
}

/// A key is either a bare secret reference (`"env:OPENAI_KEY"`) or a table that also names
/// the key and gives it a weight for weighted rotation.
#[derive(Debug)]
pub(super) enum KeyEntry {
    Ref(String),
    Table(KeyTable),
}

// By hand rather than `#[serde(untagged)]`: untagged buffers the input, which loses the
// spans that error messages point at, and words its errors poorly.
impl<'de> Deserialize<'de> for KeyEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = KeyEntry;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a secret reference (\"env:NAME\") or a table { id, key, weight }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<KeyEntry, E> {
                Ok(KeyEntry::Ref(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<KeyEntry, A::Error> {
                KeyTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(KeyEntry::Table)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeyTable {
    pub id: Option<Spanned<String>>,
    pub key: Spanned<String>,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}
