//! Format translation between client formats and upstream dialects, used only when the
//! chosen target does not speak the client's format: identity routes never come here and
//! stay byte-for-byte. One module per format pair, each with its request mapper, response
//! mapper and stream state machine; shared tables (stop reasons, usage math) live here.
//!
//! Built so far: OpenAI Chat Completions clients → Anthropic Messages providers
//! ([`chat_messages`] for requests and JSON responses, [`anthropic_stream`] for SSE), and
//! Anthropic Messages clients → OpenAI-compatible providers ([`messages_chat`],
//! [`openai_stream`]).

pub mod anthropic_stream;
pub mod caps;
pub mod chat_messages;
pub mod messages_chat;
pub mod openai_stream;
pub mod responses;
mod sse;

use crate::config::Provider;
use crate::format::{ApiFormat, Family};

/// A translation between a client format and an upstream dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Translation {
    /// OpenAI Chat Completions client, Anthropic Messages upstream.
    ChatToMessages,
    /// Anthropic Messages client, OpenAI Chat Completions upstream.
    MessagesToChat,
    /// OpenAI Responses client, OpenAI Chat Completions upstream.
    ResponsesToChat,
    /// OpenAI Responses client, Anthropic Messages upstream.
    ResponsesToMessages,
}

impl Translation {
    /// A translator from `client` to a family `provider` speaks natively, if one exists.
    pub fn plan(client: ApiFormat, provider: &Provider) -> Option<Self> {
        let speaks = |f| provider.formats.speaks(f);
        match client {
            ApiFormat::OpenAiChat if speaks(Family::Messages) => Some(Translation::ChatToMessages),
            ApiFormat::AnthropicMessages if speaks(Family::Chat) => {
                Some(Translation::MessagesToChat)
            }
            ApiFormat::OpenAiResponses if speaks(Family::Chat) => {
                Some(Translation::ResponsesToChat)
            }
            ApiFormat::OpenAiResponses if speaks(Family::Messages) => {
                Some(Translation::ResponsesToMessages)
            }
            _ => None,
        }
    }

    /// How a `client` request reaches `provider`: `Ok(None)` is identity (the provider
    /// speaks the format, and translators never touch the request), `Ok(Some)` a
    /// translation, `Err` why neither is possible (for the client's error and explain).
    pub fn route(
        client: ApiFormat,
        provider: &Provider,
        allowed: bool,
    ) -> Result<Option<Self>, String> {
        if provider.speaks(client) {
            return Ok(None);
        }
        // Only the refusals below name the formats: built on those paths alone.
        let native = || {
            provider
                .formats
                .iter()
                .map(Family::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        };
        if client == ApiFormat::OpenAiResponsesCompact {
            return Err(format!(
                "speaks {}; remote compaction needs a provider that speaks responses \
                 (compact locally instead: Codex does when its provider is not named `openai`)",
                native()
            ));
        }
        let Some(t) = Self::plan(client, provider) else {
            return Err(format!(
                "speaks {} and cannot take {client} requests",
                native()
            ));
        };
        if !provider.translate {
            return Err(format!(
                "speaks {}, and its config forbids translating {client} requests (`translate = false`)",
                native()
            ));
        }
        if !allowed {
            return Err(format!(
                "speaks {}, and the route forbids translating {client} requests (`translate: false`)",
                native()
            ));
        }
        Ok(Some(t))
    }

    /// The format sent upstream.
    pub fn upstream_format(self) -> ApiFormat {
        match self {
            Translation::ChatToMessages | Translation::ResponsesToMessages => {
                ApiFormat::AnthropicMessages
            }
            Translation::MessagesToChat | Translation::ResponsesToChat => ApiFormat::OpenAiChat,
        }
    }

    /// The client body in the upstream's format, for `target`.
    pub fn request(
        self,
        raw: &[u8],
        target: &TargetInfo,
    ) -> Result<TranslatedRequest, Unsupported> {
        match self {
            Translation::ChatToMessages => chat_messages::request(raw, target),
            Translation::MessagesToChat => messages_chat::request(raw, target),
            Translation::ResponsesToChat => responses::request_chat(raw, target),
            Translation::ResponsesToMessages => responses::request_messages(raw, target),
        }
    }

    /// An upstream JSON answer to `req` in the client's format.
    pub fn response(
        self,
        raw: &[u8],
        created: u64,
        req: &TranslatedRequest,
    ) -> Result<bytes::Bytes, serde_json::Error> {
        match self {
            Translation::ChatToMessages => chat_messages::response(raw, created, req.json_tool),
            Translation::MessagesToChat => messages_chat::response(raw),
            Translation::ResponsesToChat => {
                responses::response_from_chat(raw, created, &req.responses_context())
            }
            Translation::ResponsesToMessages => {
                let chat = chat_messages::response(raw, created, req.json_tool)?;
                responses::response_from_chat(&chat, created, &req.responses_context())
            }
        }
    }

    /// An upstream error body in the client's shape, and the status to send.
    pub fn error(self, raw: &[u8], status: u16) -> (u16, bytes::Bytes) {
        match self {
            // OpenAI's shape for OpenAI clients (Chat upstreams' own bodies normalised).
            Translation::ChatToMessages
            | Translation::ResponsesToChat
            | Translation::ResponsesToMessages => chat_messages::error(raw, status),
            Translation::MessagesToChat => messages_chat::error(raw, status),
        }
    }

    /// The state machine for a streamed answer to `req`; `client_model` is the name the
    /// client asked for.
    pub fn stream(
        self,
        created: u64,
        req: &TranslatedRequest,
        client_model: &str,
    ) -> Box<dyn StreamTranslator> {
        match self {
            Translation::ChatToMessages => Box::new(anthropic_stream::AnthropicToChat::new(
                created,
                req.include_usage,
                req.json_tool,
            )),
            Translation::MessagesToChat => {
                Box::new(openai_stream::OpenAiToAnthropic::new(client_model))
            }
            Translation::ResponsesToChat => Box::new(responses::ChatToResponses::new(
                created,
                req.responses_context(),
                client_model,
            )),
            Translation::ResponsesToMessages => Box::new(responses::Chain {
                first: Box::new(anthropic_stream::AnthropicToChat::new(
                    created,
                    true,
                    req.json_tool,
                )),
                second: Box::new(responses::ChatToResponses::new(
                    created,
                    req.responses_context(),
                    client_model,
                )),
            }),
        }
    }

    /// The dialect of the upstream's streams (how the relay ends one it has to cut).
    pub fn upstream_dialect(self) -> crate::format::Dialect {
        self.upstream_format().dialect()
    }

    /// `from-to-to`, for traces, logs and metrics (ASCII: it goes into headers).
    pub fn label(self) -> &'static str {
        match self {
            Translation::ChatToMessages => "chat-to-messages",
            Translation::MessagesToChat => "messages-to-chat",
            Translation::ResponsesToChat => "responses-to-chat",
            Translation::ResponsesToMessages => "responses-to-messages",
        }
    }
}

/// A request that cannot be expressed in the target format without changing the shape of
/// the answer the client relies on: a 400 in the client's error shape, with `param` set.
/// It never counts against a provider key.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct Unsupported {
    /// The offending field, in the client's terms (`n`, `messages[0].content[3]`).
    pub param: String,
    pub message: String,
}

impl Unsupported {
    pub fn new(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// Where a translated request goes: the model asked for, the provider's kind, and what
/// the model accepts.
#[derive(Debug, Clone, Copy)]
pub struct TargetInfo<'a> {
    pub model: &'a str,
    pub kind: crate::config::ProviderKind,
    pub caps: &'a caps::Capabilities,
}

/// A translated request: the upstream body, the client fields that were dropped (reported
/// in `x-keyway-dropped`), and what the answer's translation needs to know.
#[derive(Debug, Clone, Default)]
pub struct TranslatedRequest {
    pub body: bytes::Bytes,
    pub dropped: Vec<String>,
    /// The client asked for a usage chunk at the end of its stream.
    pub include_usage: bool,
    /// Structured output is emulated with the [`JSON_TOOL`] tool: its input is the answer.
    pub json_tool: bool,
    /// For Responses clients: tool origins and what the response object echoes.
    pub responses: Option<std::sync::Arc<responses::ResponsesContext>>,
}

impl TranslatedRequest {
    /// The Responses context (an empty one for requests that had none).
    pub fn responses_context(&self) -> std::sync::Arc<responses::ResponsesContext> {
        self.responses.clone().unwrap_or_default()
    }
}

/// The tool that carries structured output on targets without a native mode.
pub const JSON_TOOL: &str = "json_tool_call";

/// A stream state machine: upstream bytes in (any chunking), client bytes out.
pub trait StreamTranslator: Send {
    /// Client bytes completed by `data` (possibly empty).
    fn push(&mut self, data: &[u8]) -> bytes::Bytes;
    /// The upstream body ended; the client's terminal bytes if it had none yet.
    fn finish(&mut self) -> bytes::Bytes;
    /// True once the client's stream has its terminal event.
    fn is_finished(&self) -> bool;
}

/// Header listing the client fields a translated route dropped.
pub const DROPPED_HEADER: &str = "x-keyway-dropped";

/// Anthropic `stop_reason` → OpenAI `finish_reason`.
pub fn finish_reason_from_anthropic(stop_reason: Option<&str>) -> &'static str {
    match stop_reason {
        Some("max_tokens") | Some("model_context_window_exceeded") => "length",
        Some("tool_use") => "tool_calls",
        Some("refusal") => "content_filter",
        _ => "stop",
    }
}

/// Anthropic usage (cache tokens reported apart) → OpenAI usage (`prompt_tokens` includes
/// cached tokens). Cache reads and writes are kept, in OpenAI's names and Anthropic's.
pub fn chat_usage_from_anthropic(
    input: u64,
    output: u64,
    cache_read: u64,
    cache_creation: u64,
) -> serde_json::Value {
    let prompt = input + cache_read + cache_creation;
    serde_json::json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt + output,
        "prompt_tokens_details": {"cached_tokens": cache_read, "cache_write_tokens": cache_creation},
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_creation,
    })
}

/// A JSON string value starting with [`openai_stream::SYNTHETIC_SIGNATURE_PREFIX`].
const SYNTHETIC_NEEDLE: &[u8] = b"\"kw1:";

/// For an Anthropic Messages body on its way to a provider that speaks Messages (an
/// identity route): thinking blocks whose signature Keyway made up (`kw1:…`, minted when
/// an OpenAI-compatible model's reasoning reached an Anthropic client) are removed, since
/// only the provider that signed a block accepts it back. `None` — the common case, found
/// by one substring search — means the body has none and passes byte for byte.
///
/// When such a block opened the last assistant tool turn and the request asks for manual
/// thinking (which needs that turn to open with signed thinking), thinking is turned off
/// for this request.
pub fn strip_synthetic_thinking(body: &[u8]) -> Option<bytes::Bytes> {
    use serde_json::Value;
    memchr::memmem::find(body, SYNTHETIC_NEEDLE)?;
    let mut v: Value = serde_json::from_slice(body).ok()?;
    let synthetic = |b: &Value| {
        b["type"] == "thinking"
            && b["signature"]
                .as_str()
                .is_some_and(|s| s.starts_with(openai_stream::SYNTHETIC_SIGNATURE_PREFIX))
    };
    let mut removed = false;
    let mut tool_turn_lost_thinking = false;
    for m in v["messages"].as_array_mut()?.iter_mut() {
        if m["role"] != "assistant" {
            continue;
        }
        let Some(blocks) = m["content"].as_array_mut() else {
            continue;
        };
        let before = blocks.len();
        let opened_with_synthetic = blocks.first().is_some_and(synthetic);
        blocks.retain(|b| !synthetic(b));
        if blocks.len() != before {
            removed = true;
        }
        if blocks.iter().any(|b| b["type"] == "tool_use") {
            // Only the last tool turn matters; later turns overwrite earlier ones.
            tool_turn_lost_thinking = opened_with_synthetic
                && !blocks
                    .first()
                    .is_some_and(|b| b["type"] == "thinking" || b["type"] == "redacted_thinking");
        }
        if blocks.is_empty() {
            blocks.push(serde_json::json!({"type": "text", "text": "(reasoning omitted)"}));
        }
    }
    if !removed {
        return None;
    }
    if tool_turn_lost_thinking && v["thinking"]["type"] == "enabled" {
        if let Some(o) = v.as_object_mut() {
            o.remove("thinking");
        }
    }
    serde_json::to_vec(&v).ok().map(bytes::Bytes::from)
}

/// Test helpers shared by the stream machines' property tests.
#[cfg(test)]
pub(crate) fn run_split(m: &mut dyn StreamTranslator, input: &[u8], cut: usize) -> Vec<u8> {
    let mut out = m.push(&input[..cut]).to_vec();
    out.extend_from_slice(&m.push(&input[cut..]));
    out.extend_from_slice(&m.finish());
    out
}

/// Up to 20 upstream events from `piece`, concatenated and cut at a random byte.
#[cfg(test)]
pub(crate) fn truncated_stream(
    piece: impl proptest::strategy::Strategy<Value = &'static [u8]>,
) -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
    use proptest::prelude::*;
    (
        prop::collection::vec(piece, 0..20),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(pieces, cut)| {
            let mut bytes = pieces.concat();
            bytes.truncate(cut.index(bytes.len() + 1));
            bytes
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_synthetic_needle_is_the_prefix_as_a_string_value() {
        let want = format!("\"{}", super::openai_stream::SYNTHETIC_SIGNATURE_PREFIX);
        assert_eq!(super::SYNTHETIC_NEEDLE, want.as_bytes());
    }
}
