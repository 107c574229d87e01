//! The model capability table: what a target model accepts, consulted only on translated
//! routes (identity routes never read it). Nearly every translation bug peers shipped is a
//! missing entry here — a `max_tokens` above the model's cap, budget thinking sent to an
//! adaptive-only model, `response_format` to a model without structured outputs — so the
//! table is explicit, shown by `keyway explain` and `/admin/state`, and overridable in
//! config with `[[capability]]` entries.
//!
//! Resolution, per field: the most specific matching config entry that sets the field
//! (an entry naming a `provider` beats one that does not, then model-glob specificity,
//! then declaration order); then the most specific built-in entry; then the default for
//! the provider's kind.

use serde::{Deserialize, Serialize};

use crate::config::{Provider, ProviderKind};
use crate::routing::Pattern;

/// Which request field carries the output-token limit on a Chat Completions target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MaxTokensField {
    MaxTokens,
    MaxCompletionTokens,
}

/// How a target takes reasoning settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThinkingMode {
    /// Anthropic `thinking: {type: adaptive}` + `output_config.effort` (budgets refused).
    Adaptive,
    /// Anthropic `thinking: {type: enabled, budget_tokens}`.
    Manual,
    /// OpenAI `reasoning_effort`.
    Effort,
    /// No reasoning control: the client's setting is dropped (and reported).
    None,
}

/// How structured output (`response_format`, `output_config.format`) reaches the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StructuredOutput {
    /// The target's own field (`output_config.format` / `response_format`).
    Native,
    /// Emulated with a forced tool whose input is the answer (Anthropic targets only).
    Tool,
    /// Not available: the client's request is dropped (and reported).
    None,
}

/// Which tool-call ids the target accepts in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ToolIds {
    /// Any string (OpenAI).
    Any,
    /// `^[A-Za-z0-9_-]{1,64}$`.
    Anthropic,
    /// Exactly nine ASCII letters or digits (Mistral).
    Mistral,
}

/// Whether the target needs its own earlier reasoning sent back in history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasoningReplay {
    None,
    /// Assistant turns carry `reasoning_content` (Kimi, DeepSeek thinking with tools).
    ReasoningContent,
}

/// What one target model accepts, fully resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    /// The model's output cap: client values above it are lowered to it, and Anthropic
    /// targets (which require the field) get it when the client named none. `None`: no
    /// cap known, the client's value passes as given.
    pub max_output_tokens: Option<u64>,
    pub max_tokens_field: MaxTokensField,
    pub thinking: ThinkingMode,
    pub structured_output: StructuredOutput,
    /// The `developer` role is accepted (else it is sent as `system`).
    pub developer_role: bool,
    pub tool_ids: ToolIds,
    pub reasoning_replay: ReasoningReplay,
}

impl Capabilities {
    /// Puts a client's output-token limit into a Chat Completions body: the field this
    /// target takes, lowered to its cap.
    pub fn insert_max_tokens(&self, out: &mut serde_json::Map<String, serde_json::Value>, n: u64) {
        let field = match self.max_tokens_field {
            MaxTokensField::MaxCompletionTokens => "max_completion_tokens",
            MaxTokensField::MaxTokens => "max_tokens",
        };
        let n = self.max_output_tokens.map_or(n, |cap| n.min(cap));
        out.insert(field.into(), serde_json::Value::from(n));
    }

    /// The defaults for a provider kind, used where no table entry says otherwise.
    pub fn for_kind(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::Anthropic => Self {
                max_output_tokens: Some(4_096),
                max_tokens_field: MaxTokensField::MaxTokens,
                thinking: ThinkingMode::None,
                structured_output: StructuredOutput::Tool,
                developer_role: false,
                tool_ids: ToolIds::Anthropic,
                reasoning_replay: ReasoningReplay::None,
            },
            ProviderKind::OpenAi => Self {
                max_output_tokens: None,
                max_tokens_field: MaxTokensField::MaxCompletionTokens,
                thinking: ThinkingMode::None,
                structured_output: StructuredOutput::Native,
                developer_role: true,
                tool_ids: ToolIds::Any,
                reasoning_replay: ReasoningReplay::None,
            },
            ProviderKind::OpenAiCompatible => Self {
                max_output_tokens: None,
                max_tokens_field: MaxTokensField::MaxTokens,
                thinking: ThinkingMode::None,
                structured_output: StructuredOutput::Native,
                developer_role: false,
                tool_ids: ToolIds::Any,
                reasoning_replay: ReasoningReplay::None,
            },
        }
    }
}

/// Some fields of [`Capabilities`]: one table entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityPatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_tokens_field: Option<MaxTokensField>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thinking: Option<ThinkingMode>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub structured_output: Option<StructuredOutput>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub developer_role: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_ids: Option<ToolIds>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reasoning_replay: Option<ReasoningReplay>,
}

impl CapabilityPatch {
    /// Fills the fields `self` has not set yet from `other`.
    fn fill_from(&mut self, other: &CapabilityPatch) {
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = other.$f; } )* };
        }
        fill!(
            max_output_tokens,
            max_tokens_field,
            thinking,
            structured_output,
            developer_role,
            tool_ids,
            reasoning_replay
        );
    }

    /// These fields over `base`.
    pub fn over(self, base: Capabilities) -> Capabilities {
        Capabilities {
            max_output_tokens: self.max_output_tokens.or(base.max_output_tokens),
            max_tokens_field: self.max_tokens_field.unwrap_or(base.max_tokens_field),
            thinking: self.thinking.unwrap_or(base.thinking),
            structured_output: self.structured_output.unwrap_or(base.structured_output),
            developer_role: self.developer_role.unwrap_or(base.developer_role),
            tool_ids: self.tool_ids.unwrap_or(base.tool_ids),
            reasoning_replay: self.reasoning_replay.unwrap_or(base.reasoning_replay),
        }
    }
}

/// Where an entry came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    BuiltIn,
    /// `file:line` of the `[[capability]]` entry.
    Config(String),
}

/// One row of the table: a model glob, optionally limited to one provider.
#[derive(Debug, Clone)]
pub struct Entry {
    models: Pattern,
    provider: Option<String>,
    pub patch: CapabilityPatch,
    pub source: Source,
}

impl Entry {
    pub fn new(
        models: &str,
        provider: Option<String>,
        patch: CapabilityPatch,
        source: Source,
    ) -> Self {
        Self {
            models: Pattern::new(models, 0),
            provider,
            patch,
            source,
        }
    }

    fn matches(&self, provider: &str, model: &str) -> bool {
        self.provider.as_deref().is_none_or(|p| p == provider) && self.models.matches(model)
    }
}

/// The resolved capabilities of a target and the entries that decided them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    #[serde(flatten)]
    pub caps: Capabilities,
    /// Entries that set at least one field, most precedent first (`models` glob and source).
    pub from: Vec<String>,
}

/// Built-in entries for current OpenAI and Anthropic models.
fn built_in() -> Vec<Entry> {
    use MaxTokensField::*;
    use StructuredOutput::{Native, Tool};
    use ThinkingMode::{Adaptive, Effort, Manual};
    let p = |max: Option<u64>,
             field: Option<MaxTokensField>,
             thinking: Option<ThinkingMode>,
             structured: Option<StructuredOutput>| CapabilityPatch {
        max_output_tokens: max,
        max_tokens_field: field,
        thinking,
        structured_output: structured,
        ..Default::default()
    };
    let rows: Vec<(&str, CapabilityPatch)> = vec![
        // Anthropic (platform.claude.com models overview, 2026).
        ("claude-3-5-*", p(Some(8_192), None, None, Some(Tool))),
        (
            "claude-3-7-sonnet*",
            p(Some(64_000), None, Some(Manual), Some(Tool)),
        ),
        (
            "claude-sonnet-4*",
            p(Some(64_000), None, Some(Manual), Some(Tool)),
        ),
        (
            "claude-haiku-4*",
            p(Some(64_000), None, Some(Manual), Some(Tool)),
        ),
        (
            "claude-opus-4*",
            p(Some(32_000), None, Some(Manual), Some(Tool)),
        ),
        (
            "claude-opus-4-1*",
            p(Some(32_000), None, Some(Manual), Some(Native)),
        ),
        ("claude-sonnet-4-5*", p(None, None, None, Some(Native))),
        ("claude-haiku-4-5*", p(None, None, None, Some(Native))),
        (
            "claude-opus-4-5*",
            p(Some(64_000), None, Some(Manual), Some(Native)),
        ),
        (
            "claude-opus-4-6*",
            p(Some(128_000), None, Some(Adaptive), Some(Native)),
        ),
        (
            "claude-sonnet-4-6*",
            p(Some(64_000), None, Some(Adaptive), Some(Native)),
        ),
        (
            "claude-opus-4-7*",
            p(Some(128_000), None, Some(Adaptive), Some(Native)),
        ),
        (
            "claude-opus-4-8*",
            p(Some(128_000), None, Some(Adaptive), Some(Native)),
        ),
        (
            "claude-opus-5*",
            p(Some(128_000), None, Some(Adaptive), Some(Native)),
        ),
        (
            "claude-sonnet-5*",
            p(Some(64_000), None, Some(Adaptive), Some(Native)),
        ),
        (
            "claude-fable-5*",
            p(Some(128_000), None, Some(Adaptive), Some(Native)),
        ),
        // OpenAI (platform.openai.com models, 2026).
        (
            "gpt-3.5-turbo*",
            p(
                Some(4_096),
                Some(MaxTokens),
                None,
                Some(StructuredOutput::None),
            ),
        ),
        ("gpt-4o*", p(Some(16_384), None, None, Some(Native))),
        ("gpt-4.1*", p(Some(32_768), None, None, Some(Native))),
        ("gpt-5*", p(Some(128_000), None, Some(Effort), Some(Native))),
        (
            "gpt-5*-chat*",
            p(Some(16_384), None, Some(ThinkingMode::None), None),
        ),
        ("o1*", p(Some(100_000), None, Some(Effort), Some(Native))),
        ("o3*", p(Some(100_000), None, Some(Effort), Some(Native))),
        (
            "o4-mini*",
            p(Some(100_000), None, Some(Effort), Some(Native)),
        ),
    ];
    rows.into_iter()
        .filter(|(_, patch)| patch != &CapabilityPatch::default())
        .map(|(m, patch)| Entry::new(m, None, patch, Source::BuiltIn))
        .collect()
}

/// The whole table: config entries over built-in ones.
#[derive(Debug, Clone)]
pub struct CapabilityTable {
    /// Most precedent first.
    entries: Vec<Entry>,
}

impl Default for CapabilityTable {
    fn default() -> Self {
        Self::new(Vec::new())
    }
}

impl CapabilityTable {
    /// The built-in table with `config` entries (in declaration order) over it.
    pub fn new(config: Vec<Entry>) -> Self {
        let rank = |mut v: Vec<Entry>| {
            for (i, e) in v.iter_mut().enumerate() {
                e.models = Pattern::new(e.models.as_str(), i);
            }
            v.sort_by(|a, b| {
                b.provider
                    .is_some()
                    .cmp(&a.provider.is_some())
                    .then(a.models.specificity_cmp(&b.models))
            });
            v
        };
        let mut entries = rank(config);
        entries.extend(rank(built_in()));
        Self { entries }
    }

    /// What `model` on `provider` accepts.
    pub fn resolve(&self, provider: &Provider, model: &str) -> Resolved {
        self.resolve_for(&provider.id, provider.kind, model)
    }

    /// What `model` on the provider `id` of `kind` accepts.
    pub fn resolve_for(&self, id: &str, kind: ProviderKind, model: &str) -> Resolved {
        let mut patch = CapabilityPatch::default();
        let mut from = Vec::new();
        for e in self.entries.iter().filter(|e| e.matches(id, model)) {
            let before = patch.clone();
            patch.fill_from(&e.patch);
            if patch != before {
                from.push(e.label());
            }
        }
        from.push(format!("defaults for {kind}"));
        Resolved {
            caps: patch.over(Capabilities::for_kind(kind)),
            from,
        }
    }

    /// Every entry, most precedent first (for `/admin/state`).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

impl Entry {
    /// `models` glob, provider and source, as shown to people.
    pub fn label(&self) -> String {
        let provider = self
            .provider
            .as_deref()
            .map(|p| format!(" on {p}"))
            .unwrap_or_default();
        match &self.source {
            Source::BuiltIn => format!("{}{provider} (built-in)", self.models.as_str()),
            Source::Config(at) => format!("{}{provider} ({at})", self.models.as_str()),
        }
    }

    /// The entry as JSON for `/admin/state`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.patch).unwrap_or_default();
        v["models"] = self.models.as_str().into();
        if let Some(p) = &self.provider {
            v["provider"] = p.as_str().into();
        }
        v["source"] = match &self.source {
            Source::BuiltIn => "built-in".into(),
            Source::Config(at) => at.as_str().into(),
        };
        v
    }
}

/// A tool-call id the target accepts, derived deterministically from `id` (so a
/// `tool_use` and the `tool_result` answering it map to the same string) and left alone
/// when already acceptable.
pub fn tool_id(id: &str, rule: ToolIds) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    match rule {
        ToolIds::Any => Cow::Borrowed(id),
        ToolIds::Anthropic => {
            let ok = !id.is_empty()
                && id.len() <= 64
                && id
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
            if ok {
                return Cow::Borrowed(id);
            }
            let clean: String = id
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                        c
                    } else {
                        '_'
                    }
                })
                .take(55)
                .collect();
            Cow::Owned(format!(
                "{clean}_{}",
                crate::digest::short_hex(id.as_bytes(), 4)
            ))
        }
        ToolIds::Mistral => {
            if id.len() == 9 && id.bytes().all(|c| c.is_ascii_alphanumeric()) {
                return Cow::Borrowed(id);
            }
            Cow::Owned(short_hash(id, 9))
        }
    }
}

/// `n` lowercase letters and digits from SHA-256 of `s`.
fn short_hash(s: &str, n: usize) -> String {
    use sha2::Digest;
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .take(n)
        .map(|b| ALPHABET[(*b as usize) % ALPHABET.len()] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(id: &str, kind: ProviderKind) -> Provider {
        Provider::for_tests(id, kind)
    }

    #[test]
    fn built_ins_resolve_by_specificity_and_kind_defaults_fill_the_rest() {
        let t = CapabilityTable::default();
        let a = provider("anthropic", ProviderKind::Anthropic);
        let opus47 = t.resolve(&a, "claude-opus-4-7").caps;
        assert_eq!(opus47.thinking, ThinkingMode::Adaptive);
        assert_eq!(opus47.max_output_tokens, Some(128_000));
        let opus41 = t.resolve(&a, "claude-opus-4-1-20250805").caps;
        assert_eq!(opus41.thinking, ThinkingMode::Manual);
        assert_eq!(opus41.structured_output, StructuredOutput::Native);
        assert_eq!(opus41.max_output_tokens, Some(32_000));
        let sonnet45 = t.resolve(&a, "claude-sonnet-4-5").caps;
        assert_eq!(sonnet45.max_output_tokens, Some(64_000));
        assert_eq!(sonnet45.structured_output, StructuredOutput::Native);
        assert_eq!(sonnet45.thinking, ThinkingMode::Manual);
        let haiku3 = t.resolve(&a, "claude-3-haiku-20240307").caps;
        assert_eq!(haiku3, Capabilities::for_kind(ProviderKind::Anthropic));
        let o = provider("openai", ProviderKind::OpenAi);
        let gpt5 = t.resolve(&o, "gpt-5.1").caps;
        assert_eq!(gpt5.thinking, ThinkingMode::Effort);
        assert_eq!(gpt5.max_tokens_field, MaxTokensField::MaxCompletionTokens);
        let chat = t.resolve(&o, "gpt-5-chat-latest").caps;
        assert_eq!(chat.thinking, ThinkingMode::None);
        let c = provider("vllm", ProviderKind::OpenAiCompatible);
        assert_eq!(
            t.resolve(&c, "qwen3").caps,
            Capabilities::for_kind(ProviderKind::OpenAiCompatible)
        );
    }

    #[test]
    fn config_entries_win_and_provider_specific_ones_first() {
        let patch = |max| CapabilityPatch {
            max_output_tokens: Some(max),
            ..Default::default()
        };
        let t = CapabilityTable::new(vec![
            Entry::new(
                "claude-*",
                None,
                patch(1_000),
                Source::Config("k.toml:3".into()),
            ),
            Entry::new(
                "*",
                Some("bedrock".into()),
                patch(2_000),
                Source::Config("k.toml:9".into()),
            ),
        ]);
        let a = provider("anthropic", ProviderKind::Anthropic);
        let r = t.resolve(&a, "claude-opus-4-7");
        assert_eq!(r.caps.max_output_tokens, Some(1_000));
        assert_eq!(
            r.caps.thinking,
            ThinkingMode::Adaptive,
            "built-in still fills the rest"
        );
        assert_eq!(r.from[0], "claude-* (k.toml:3)");
        let b = provider("bedrock", ProviderKind::Anthropic);
        assert_eq!(
            t.resolve(&b, "claude-opus-4-7").caps.max_output_tokens,
            Some(2_000)
        );
    }

    #[test]
    fn tool_ids_are_stable_and_valid() {
        assert_eq!(tool_id("toolu_01", ToolIds::Anthropic), "toolu_01");
        let a = tool_id("functions.Bash:0", ToolIds::Anthropic);
        assert!(a.starts_with("functions_Bash_0_"), "{a}");
        assert_eq!(a, tool_id("functions.Bash:0", ToolIds::Anthropic));
        assert_ne!(a, tool_id("functions.Bash_0", ToolIds::Anthropic));
        let m = tool_id("call_abcdefghijkl", ToolIds::Mistral);
        assert_eq!(m.len(), 9);
        assert!(m.bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(tool_id("abcDEF123", ToolIds::Mistral), "abcDEF123");
        assert_eq!(tool_id("a.b", ToolIds::Any), "a.b");
    }
}
