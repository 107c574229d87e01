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
pub mod chat_messages;
pub mod messages_chat;
pub mod openai_stream;
mod sse;

use crate::config::ProviderKind;
use crate::format::ApiFormat;

/// A translation between a client format and an upstream dialect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Translation {
    /// OpenAI Chat Completions client, Anthropic Messages upstream.
    ChatToMessages,
    /// Anthropic Messages client, OpenAI Chat Completions upstream.
    MessagesToChat,
}

impl Translation {
    /// The translation a client format needs to reach a provider of `kind`; `None` when
    /// the provider speaks the format (identity) or no translator exists for the pair.
    pub fn plan(client: ApiFormat, kind: ProviderKind) -> Option<Self> {
        match (client, kind) {
            (ApiFormat::OpenAiChat, ProviderKind::Anthropic) => Some(Translation::ChatToMessages),
            (
                ApiFormat::AnthropicMessages,
                ProviderKind::OpenAi | ProviderKind::OpenAiCompatible,
            ) => Some(Translation::MessagesToChat),
            _ => None,
        }
    }

    /// The format sent upstream.
    pub fn upstream_format(self) -> ApiFormat {
        match self {
            Translation::ChatToMessages => ApiFormat::AnthropicMessages,
            Translation::MessagesToChat => ApiFormat::OpenAiChat,
        }
    }

    /// The client body in the upstream's format, for `model` on a provider of `kind`.
    pub fn request(
        self,
        raw: &[u8],
        model: &str,
        kind: ProviderKind,
    ) -> Result<TranslatedRequest, Unsupported> {
        match self {
            Translation::ChatToMessages => chat_messages::request(raw, model),
            Translation::MessagesToChat => messages_chat::request(raw, model, kind),
        }
    }

    /// An upstream JSON answer in the client's format.
    pub fn response(self, raw: &[u8], created: u64) -> Result<bytes::Bytes, serde_json::Error> {
        match self {
            Translation::ChatToMessages => chat_messages::response(raw, created),
            Translation::MessagesToChat => messages_chat::response(raw),
        }
    }

    /// An upstream error body in the client's shape, and the status to send.
    pub fn error(self, raw: &[u8], status: u16) -> (u16, bytes::Bytes) {
        match self {
            Translation::ChatToMessages => chat_messages::error(raw, status),
            Translation::MessagesToChat => messages_chat::error(raw, status),
        }
    }

    /// The state machine for a streamed answer; `client_model` is the name the client
    /// asked for.
    pub fn stream(
        self,
        created: u64,
        include_usage: bool,
        client_model: &str,
    ) -> Box<dyn StreamTranslator> {
        match self {
            Translation::ChatToMessages => Box::new(anthropic_stream::AnthropicToChat::new(
                created,
                include_usage,
            )),
            Translation::MessagesToChat => {
                Box::new(openai_stream::OpenAiToAnthropic::new(client_model))
            }
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
