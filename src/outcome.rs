//! What an upstream attempt came to: its class (DESIGN §5's table), status, and the wait
//! the upstream asked for. Classification reads status first, then the error text.

use std::fmt;

use http::{HeaderMap, StatusCode};

use crate::quota::retry_after;

/// The remaining-quota headers: requests (OpenAI's, then Anthropic's), then tokens.
const REMAINING: [&str; 4] = [
    "x-ratelimit-remaining-requests",
    "anthropic-ratelimit-requests-remaining",
    "x-ratelimit-remaining-tokens",
    "anthropic-ratelimit-tokens-remaining",
];

/// The remaining requests and tokens an upstream reported, OpenAI's header first, then
/// Anthropic's; a value that is not an integer counts as absent. One pass over the names
/// present (a handful) instead of four hashed lookups of names mostly absent.
fn remaining(headers: &HeaderMap) -> (Option<u64>, Option<u64>) {
    // The first value of each name, parsed.
    let mut first: [Option<Option<u64>>; 4] = [None; 4];
    for (name, value) in headers {
        if let Some(i) = REMAINING.iter().position(|n| *n == name.as_str()) {
            first[i].get_or_insert_with(|| value.to_str().ok()?.trim().parse::<u64>().ok());
        }
    }
    let [req_openai, req_anthropic, tok_openai, tok_anthropic] = first.map(Option::flatten);
    (req_openai.or(req_anthropic), tok_openai.or(tok_anthropic))
}

/// The outcome classes policies switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutcomeClass {
    Ok,
    RateLimited,
    QuotaExhausted,
    Auth,
    ContextLength,
    BadRequest,
    Server,
    Timeout,
    Network,
}

impl OutcomeClass {
    pub const ALL: [OutcomeClass; 9] = [
        OutcomeClass::Ok,
        OutcomeClass::RateLimited,
        OutcomeClass::QuotaExhausted,
        OutcomeClass::Auth,
        OutcomeClass::ContextLength,
        OutcomeClass::BadRequest,
        OutcomeClass::Server,
        OutcomeClass::Timeout,
        OutcomeClass::Network,
    ];

    /// Position in [`ALL`](Self::ALL).
    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeClass::Ok => "ok",
            OutcomeClass::RateLimited => "rate_limited",
            OutcomeClass::QuotaExhausted => "quota_exhausted",
            OutcomeClass::Auth => "auth",
            OutcomeClass::ContextLength => "context_length",
            OutcomeClass::BadRequest => "bad_request",
            OutcomeClass::Server => "server",
            OutcomeClass::Timeout => "timeout",
            OutcomeClass::Network => "network",
        }
    }

    /// Rate limit or quota: the key is fine, it just has to wait.
    pub fn is_limit(self) -> bool {
        matches!(
            self,
            OutcomeClass::RateLimited | OutcomeClass::QuotaExhausted
        )
    }
}

impl fmt::Display for OutcomeClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One attempt's outcome, as policies see it.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub class: OutcomeClass,
    /// Upstream status; `None` when no response arrived (timeout, network).
    pub status: Option<u16>,
    /// The wait the upstream asked for, if it said.
    pub retry_after_ms: Option<u64>,
    /// The error text mentions a daily limit (resets at midnight UTC).
    pub daily: bool,
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// A short error description (upstream message or failure cause); never a secret.
    pub message: String,
    pub headers: HeaderMap,
}

impl Outcome {
    /// The outcome of a response with these headers and (for errors) this body text.
    pub fn from_response(status: StatusCode, headers: &HeaderMap, body: &str, now_ms: u64) -> Self {
        Self::from_response_with(status, headers, body, now_ms, true)
    }

    /// [`from_response`](Self::from_response); `keep_headers` false when no script will
    /// read `outcome.header(…)` (the headers are then not copied).
    pub fn from_response_with(
        status: StatusCode,
        headers: &HeaderMap,
        body: &str,
        now_ms: u64,
        keep_headers: bool,
    ) -> Self {
        let class = classify(status, body);
        let (remaining_requests, remaining_tokens) = remaining(headers);
        let daily = !body.is_empty() && {
            let lower = body.to_ascii_lowercase();
            ["daily", "per day", "requests per day", "rpd"]
                .iter()
                .any(|w| lower.contains(w))
        };
        Self {
            class,
            status: Some(status.as_u16()),
            retry_after_ms: if class == OutcomeClass::Ok {
                None
            } else {
                retry_after::retry_after_ms(headers, body, now_ms)
            },
            daily,
            remaining_requests,
            remaining_tokens,
            message: if body.is_empty() {
                String::new()
            } else {
                error_message(body)
            },
            headers: if keep_headers {
                headers.clone()
            } else {
                HeaderMap::new()
            },
        }
    }

    /// Caps the upstream's wait hint: `max_retry_after` for rate limits, `max_quota_wait`
    /// for quota exhaustion (and any other class), so a hostile or broken `Retry-After`
    /// cannot lock a key for years.
    pub fn cap_wait(&mut self, policy: &crate::config::PolicyConfig) {
        let cap = match self.class {
            OutcomeClass::RateLimited => policy.max_retry_after,
            _ => policy.max_quota_wait,
        };
        let cap = u64::try_from(cap.as_millis()).unwrap_or(u64::MAX);
        self.retry_after_ms = self.retry_after_ms.map(|ms| ms.min(cap));
    }

    /// The outcome of an attempt that got no response.
    pub fn failure(class: OutcomeClass, message: String) -> Self {
        Self {
            class,
            status: None,
            retry_after_ms: None,
            daily: false,
            remaining_requests: None,
            remaining_tokens: None,
            message,
            headers: HeaderMap::new(),
        }
    }
}

/// DESIGN §5: status first, then what the error text says.
pub fn classify(status: StatusCode, body: &str) -> OutcomeClass {
    let code = status.as_u16();
    if status.is_success() {
        return OutcomeClass::Ok;
    }
    let lower = body.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| lower.contains(w));
    let quota = has(&[
        "insufficient_quota",
        "exceeded your current quota",
        "quota exceeded",
        "quota_exceeded",
        "resource_exhausted",
        "daily limit",
        "credit balance",
        "billing",
        "out of credits",
    ]);
    let rate = has(&["rate limit", "rate_limit", "ratelimit", "too many requests"]);
    match code {
        402 => OutcomeClass::QuotaExhausted,
        429 if quota => OutcomeClass::QuotaExhausted,
        429 => OutcomeClass::RateLimited,
        403 if quota => OutcomeClass::QuotaExhausted,
        401 | 403 => OutcomeClass::Auth,
        408 => OutcomeClass::Timeout,
        400 | 413 | 422
            if has(&[
                "context_length_exceeded",
                "maximum context length",
                "context length",
                "context window",
                "prompt is too long",
                "too many tokens",
                "reduce the length",
            ]) =>
        {
            OutcomeClass::ContextLength
        }
        400..=499 if rate => OutcomeClass::RateLimited,
        400..=499 => OutcomeClass::BadRequest,
        503 if rate => OutcomeClass::RateLimited,
        _ => OutcomeClass::Server,
    }
}

/// The `message` of an OpenAI- or Anthropic-shaped error body, else the body's start.
fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let msg = parsed
        .as_ref()
        .and_then(|v| {
            v["error"]["message"]
                .as_str()
                .or(v["message"].as_str())
                .map(str::to_string)
        })
        .unwrap_or_else(|| body.trim().to_string());
    let mut out: String = msg.chars().take(300).collect();
    if out.len() < msg.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(status: u16, body: &str) -> OutcomeClass {
        classify(StatusCode::from_u16(status).unwrap(), body)
    }

    #[test]
    fn classification_table() {
        use OutcomeClass::*;
        let cases = [
            (200, "", Ok),
            (
                429,
                r#"{"error":{"code":"rate_limit_exceeded"}}"#,
                RateLimited,
            ),
            (
                429,
                r#"{"error":{"code":"insufficient_quota","message":"You exceeded your current quota"}}"#,
                QuotaExhausted,
            ),
            (429, "RESOURCE_EXHAUSTED: daily limit", QuotaExhausted),
            (402, "", QuotaExhausted),
            (403, "quota exceeded for this project", QuotaExhausted),
            (401, "invalid api key", Auth),
            (403, "forbidden", Auth),
            (
                400,
                r#"{"error":{"code":"context_length_exceeded"}}"#,
                ContextLength,
            ),
            (
                400,
                "prompt is too long: 210000 tokens > 200000 maximum",
                ContextLength,
            ),
            (400, "rate limit exceeded, slow down", RateLimited),
            (400, "invalid temperature", BadRequest),
            (404, "model not found", BadRequest),
            (408, "", Timeout),
            (500, "", Server),
            (529, "overloaded", Server),
            (503, "rate limited upstream", RateLimited),
        ];
        for (status, body, want) in cases {
            assert_eq!(c(status, body), want, "{status} {body}");
        }
    }

    #[test]
    fn outcome_reads_hints_and_remaining_headers() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "12".parse().unwrap());
        h.insert("x-ratelimit-remaining-tokens", "0".parse().unwrap());
        let o = Outcome::from_response(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            r#"{"error":{"message":"Rate limit reached for requests per day (RPD)"}}"#,
            0,
        );
        assert_eq!(o.class, OutcomeClass::RateLimited);
        assert_eq!(o.retry_after_ms, Some(12_000));
        assert!(o.daily);
        assert_eq!(o.remaining_tokens, Some(0));
        assert_eq!(o.message, "Rate limit reached for requests per day (RPD)");
    }

    #[test]
    fn remaining_prefers_openai_then_anthropic_and_skips_non_integers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("anthropic-ratelimit-requests-remaining", "40"),
            ("x-ratelimit-remaining-requests", " 7 "),
            ("x-ratelimit-remaining-requests", "8"),
            ("x-ratelimit-remaining-tokens", "lots"),
            ("anthropic-ratelimit-tokens-remaining", "900"),
        ] {
            h.append(k, v.parse().unwrap());
        }
        assert_eq!(remaining(&h), (Some(7), Some(900)));
        assert_eq!(remaining(&HeaderMap::new()), (None, None));
    }
}
