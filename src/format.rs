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
    /// `POST /v1/responses` (OpenAI Responses)
    OpenAiResponses,
    /// `POST /v1/responses/compact` (OpenAI remote compaction)
    OpenAiResponsesCompact,
}

impl ApiFormat {
    pub const ALL: [ApiFormat; 7] = [
        ApiFormat::OpenAiChat,
        ApiFormat::OpenAiCompletions,
        ApiFormat::OpenAiEmbeddings,
        ApiFormat::AnthropicMessages,
        ApiFormat::AnthropicCountTokens,
        ApiFormat::OpenAiResponses,
        ApiFormat::OpenAiResponsesCompact,
    ];

    /// The format an endpoint name (`chat.completions`, `messages`, `responses` …) names.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// Every endpoint name, for error messages.
    pub fn names() -> String {
        Self::ALL.map(|f| f.as_str()).join(", ")
    }

    /// The path appended to a provider's `base_url`.
    pub fn upstream_path(self) -> &'static str {
        match self {
            ApiFormat::OpenAiChat => "/chat/completions",
            ApiFormat::OpenAiCompletions => "/completions",
            ApiFormat::OpenAiEmbeddings => "/embeddings",
            ApiFormat::AnthropicMessages => "/messages",
            ApiFormat::AnthropicCountTokens => "/messages/count_tokens",
            ApiFormat::OpenAiResponses => "/responses",
            ApiFormat::OpenAiResponsesCompact => "/responses/compact",
        }
    }

    /// The API family a provider must speak to take this request without translation.
    pub fn family(self) -> Family {
        match self {
            ApiFormat::AnthropicMessages | ApiFormat::AnthropicCountTokens => Family::Messages,
            ApiFormat::OpenAiChat | ApiFormat::OpenAiCompletions | ApiFormat::OpenAiEmbeddings => {
                Family::Chat
            }
            ApiFormat::OpenAiResponses | ApiFormat::OpenAiResponsesCompact => Family::Responses,
        }
    }

    /// The error and stream-terminator dialect clients of this format expect.
    pub fn dialect(self) -> Dialect {
        match self {
            ApiFormat::AnthropicMessages | ApiFormat::AnthropicCountTokens => Dialect::Anthropic,
            ApiFormat::OpenAiResponses | ApiFormat::OpenAiResponsesCompact => Dialect::Responses,
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
            ApiFormat::OpenAiResponses => "responses",
            ApiFormat::OpenAiResponsesCompact => "responses.compact",
        }
    }
}

impl fmt::Display for ApiFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API family, as a provider's `formats` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// OpenAI's classic API: `/chat/completions`, `/completions`, `/embeddings`.
    Chat,
    /// Anthropic Messages: `/messages`, `/messages/count_tokens`.
    Messages,
    /// OpenAI Responses: `/responses`.
    Responses,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Chat, Family::Messages, Family::Responses];

    pub fn as_str(self) -> &'static str {
        match self {
            Family::Chat => "chat",
            Family::Messages => "messages",
            Family::Responses => "responses",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Family::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The API families a provider serves natively.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Formats(u8);

impl Formats {
    /// What a provider of `kind` speaks unless its config says otherwise: OpenAI serves
    /// Chat and Responses, Anthropic Messages, OpenAI-compatible servers Chat.
    pub fn for_kind(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::OpenAi => Formats::of(&[Family::Chat, Family::Responses]),
            ProviderKind::Anthropic => Formats::of(&[Family::Messages]),
            ProviderKind::OpenAiCompatible => Formats::of(&[Family::Chat]),
        }
    }

    pub fn of(families: &[Family]) -> Self {
        Formats(families.iter().fold(0, |acc, f| acc | 1 << *f as u8))
    }

    pub fn speaks(self, family: Family) -> bool {
        self.0 & (1 << family as u8) != 0
    }

    /// Families in a fixed order.
    pub fn iter(self) -> impl Iterator<Item = Family> {
        Family::ALL.into_iter().filter(move |f| self.speaks(*f))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// How errors and stream terminators are shaped for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    /// OpenAI's error shape; streams end with `response.failed`.
    Responses,
}
