//! Format translation between client formats and upstream dialects, used only when the
//! chosen target does not speak the client's format: identity routes never come here and
//! stay byte-for-byte. One module per format pair, each with its request mapper, response
//! mapper and stream state machine; shared tables (stop reasons, usage math) live here.
//!
//! Built so far: OpenAI Chat Completions clients → Anthropic Messages providers
//! ([`chat_messages`] for requests and JSON responses, [`anthropic_stream`] for SSE).

pub mod anthropic_stream;
pub mod chat_messages;

use crate::config::ProviderKind;
use crate::format::ApiFormat;

/// A translation between a client format and an upstream dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Translation {
    /// OpenAI Chat Completions client, Anthropic Messages upstream.
    ChatToMessages,
}

impl Translation {
    /// The translation a client format needs to reach a provider of `kind`; `None` when
    /// the provider speaks the format (identity) or no translator exists for the pair.
    pub fn plan(client: ApiFormat, kind: ProviderKind) -> Option<Self> {
        match (client, kind) {
            (ApiFormat::OpenAiChat, ProviderKind::Anthropic) => Some(Translation::ChatToMessages),
            _ => None,
        }
    }

    /// The format sent upstream.
    pub fn upstream_format(self) -> ApiFormat {
        match self {
            Translation::ChatToMessages => ApiFormat::AnthropicMessages,
        }
    }

    /// `from-to-to`, for traces, logs and metrics (ASCII: it goes into headers).
    pub fn label(self) -> &'static str {
        match self {
            Translation::ChatToMessages => "chat-to-messages",
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

/// A translated request: the upstream body, and the client fields that were dropped
/// (reported in `x-keyway-dropped`).
#[derive(Debug, Clone)]
pub struct TranslatedRequest {
    pub body: bytes::Bytes,
    pub dropped: Vec<String>,
    /// The client asked for a usage chunk at the end of its stream.
    pub include_usage: bool,
}

/// A stream state machine: upstream bytes in (any chunking), client bytes out.
pub trait StreamTranslator: Send {
    /// Client bytes completed by `data` (possibly empty).
    fn push(&mut self, data: &[u8]) -> bytes::Bytes;
    /// The upstream body ended; the client's terminal bytes if it had none yet.
    fn finish(&mut self) -> bytes::Bytes;
    /// True once the client's stream has its terminal event.
    fn is_finished(&self) -> bool;
}

impl StreamTranslator for anthropic_stream::AnthropicToChat {
    fn push(&mut self, data: &[u8]) -> bytes::Bytes {
        anthropic_stream::AnthropicToChat::push(self, data)
    }
    fn finish(&mut self) -> bytes::Bytes {
        anthropic_stream::AnthropicToChat::finish(self)
    }
    fn is_finished(&self) -> bool {
        anthropic_stream::AnthropicToChat::is_finished(self)
    }
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
