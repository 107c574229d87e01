//! API formats: which wire format a client request uses and which provider kinds speak it.
//! A provider that does not speak the client's format is reached through [`crate::translate`].

use std::fmt;

use crate::config::ProviderKind;

/// The API format of a client request, fixed by the endpoint it called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiFormat {
    /// `POST /v1/chat/completions`
    OpenAiChat,
    /// `POST /v1/completions`
    OpenAiCompletions,
    /// `POST /v1/embeddings`
    OpenAiEmbeddings,
    /// `POST /v1/messages` (Anthropic Messages)
    AnthropicMessages,
    /// `POST /v1/messages/count_tokens` (Anthropic token counting)
    AnthropicCountTokens,
}

impl ApiFormat {
    /// The path appended to a provider's `base_url`.
    pub fn upstream_path(self) -> &'static str {
        match self {
            ApiFormat::OpenAiChat => "/chat/completions",
            ApiFormat::OpenAiCompletions => "/completions",
            ApiFormat::OpenAiEmbeddings => "/embeddings",
            ApiFormat::AnthropicMessages => "/messages",
            ApiFormat::AnthropicCountTokens => "/messages/count_tokens",
        }
    }

    /// Whether a provider of `kind` accepts this format without translation.
    pub fn spoken_by(self, kind: ProviderKind) -> bool {
        match self {
            ApiFormat::AnthropicMessages | ApiFormat::AnthropicCountTokens => {
                kind == ProviderKind::Anthropic
            }
            _ => kind != ProviderKind::Anthropic,
        }
    }

    /// The error and stream-terminator dialect clients of this format expect.
    pub fn dialect(self) -> Dialect {
        match self {
            ApiFormat::AnthropicMessages | ApiFormat::AnthropicCountTokens => Dialect::Anthropic,
            _ => Dialect::OpenAi,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ApiFormat::OpenAiChat => "chat.completions",
            ApiFormat::OpenAiCompletions => "completions",
            ApiFormat::OpenAiEmbeddings => "embeddings",
            ApiFormat::AnthropicMessages => "messages",
            ApiFormat::AnthropicCountTokens => "messages.count_tokens",
        }
    }
}

impl fmt::Display for ApiFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How errors and stream terminators are shaped for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
}
