//! Client-visible errors. Each variant's doc states its status; [`ProxyError::into_response`]
//! renders it in the caller's API dialect (OpenAI or Anthropic error shape).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use super::attempt::AttemptRecord;
use super::body::{self, ProxyBody};
use crate::format::Dialect;
use crate::routing::RouteError;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// 404
    #[error("unknown path `{0}`; Keyway serves /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/messages, /v1/responses and /v1/models")]
    NotFound(String),
    /// 404: a stored response Keyway cannot find the creator of.
    #[error("{0}")]
    StoredNotFound(String),
    /// 405 with `Allow`.
    #[error("method {method} is not allowed on {path}; use {allow}")]
    MethodNotAllowed {
        method: String,
        path: String,
        allow: &'static str,
    },
    /// 401
    #[error("missing or invalid API key; send `Authorization: Bearer <key>` or `x-api-key: <key>` with a key configured in [auth]")]
    Unauthorized,
    /// 414
    #[error("request target is longer than the {limit}-byte limit (server.max_uri_bytes)")]
    UriTooLong { limit: usize },
    /// 400, and the connection is closed: the request head is ambiguous (Host,
    /// Transfer-Encoding), so nothing after it on the connection can be trusted.
    #[error("{0}")]
    BadHead(&'static str),
    /// 413
    #[error("request body exceeds the {limit}-byte limit")]
    BodyTooLarge { limit: u64 },
    /// 408
    #[error("request body not received within {0:?}")]
    BodyTimeout(std::time::Duration),
    /// 400
    #[error("could not read request body: {0}")]
    BodyRead(String),
    /// 400
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    /// 400
    #[error(
        "request body has no `model` field; name a model such as \"gpt-4o\" or \"provider/model\""
    )]
    MissingModel,
    /// 400
    #[error("`model` must be a string")]
    ModelNotString,
    /// 400 with `param`: the request cannot be expressed in the chosen target's format.
    #[error(transparent)]
    Unsupported(crate::translate::Unsupported),
    /// 404 (unknown model) or 400 (format mismatch).
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The policy threw: its status (default 403) and message.
    #[error("{message}")]
    PolicyRejected { status: u16, message: String },
    /// 500: a policy call failed and `policy.on_error = "reject"`.
    #[error("{0}")]
    PolicyFailed(String),
    /// Every attempt failed: 429 (all rate limited, with `Retry-After`), 503 (nothing could
    /// be tried), 504 (all timed out) or 502; the body lists every attempt.
    #[error("{}", summarize(attempts))]
    AllAttemptsFailed {
        status: StatusCode,
        retry_after_secs: Option<u64>,
        attempts: Vec<AttemptRecord>,
    },
}

fn summarize(attempts: &[AttemptRecord]) -> String {
    let tried = attempts.iter().filter(|a| a.class.is_some()).count();
    let mut out = format!(
        "no upstream could serve this request ({tried} attempt{}): ",
        if tried == 1 { "" } else { "s" }
    );
    for (i, a) in attempts.iter().enumerate() {
        if i > 0 {
            out.push_str("; ");
        }
        out.push_str(&a.target);
        out.push(' ');
        out.push_str(&a.connection);
        if let Some(k) = &a.key_id {
            out.push('/');
            out.push_str(k);
        }
        match (&a.skipped, a.status, a.class) {
            (Some(why), _, _) => out.push_str(&format!(" skipped: {why}")),
            (None, Some(s), Some(c)) => out.push_str(&format!(" → {s} {c}")),
            (None, None, Some(c)) => out.push_str(&format!(" → {c}")),
            _ => {}
        }
        if !a.message.is_empty() {
            out.push_str(&format!(" ({})", a.message));
        }
    }
    out
}

fn attempts_json(attempts: &[AttemptRecord]) -> serde_json::Value {
    serde_json::Value::Array(
        attempts
            .iter()
            .map(|a| {
                json!({
                    "target": a.target,
                    "connection": a.connection,
                    "key": a.key_id,
                    "fingerprint": a.fingerprint,
                    "status": a.status,
                    "outcome": a.class.map(|c| c.as_str()),
                    "decision": a.decision.map(|d| d.as_str()),
                    "skipped": a.skipped,
                    "message": if a.message.is_empty() { None } else { Some(&a.message) },
                    "retry_after_ms": a.retry_after_ms,
                    "ms": a.millis,
                })
            })
            .collect(),
    )
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NotFound(_) | ProxyError::StoredNotFound(_) => StatusCode::NOT_FOUND,
            ProxyError::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Unauthorized => StatusCode::UNAUTHORIZED,
            ProxyError::UriTooLong { .. } => StatusCode::URI_TOO_LONG,
            ProxyError::BadHead(_) | ProxyError::Unsupported(_) => StatusCode::BAD_REQUEST,
            ProxyError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyRead(_)
            | ProxyError::InvalidJson(_)
            | ProxyError::MissingModel
            | ProxyError::ModelNotString => StatusCode::BAD_REQUEST,
            ProxyError::Route(RouteError::UnknownModel(_)) => StatusCode::NOT_FOUND,
            ProxyError::Route(RouteError::FormatMismatch { .. }) => StatusCode::BAD_REQUEST,
            ProxyError::PolicyRejected { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::FORBIDDEN)
            }
            ProxyError::PolicyFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::AllAttemptsFailed { status, .. } => *status,
        }
    }

    /// OpenAI's machine-readable `code`.
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::NotFound(_) => "unknown_url",
            ProxyError::StoredNotFound(_) => "response_not_found",
            ProxyError::MethodNotAllowed { .. } => "method_not_allowed",
            ProxyError::Unauthorized => "invalid_api_key",
            ProxyError::UriTooLong { .. } => "uri_too_long",
            ProxyError::BadHead(_) => "invalid_request_head",
            ProxyError::Unsupported(_) => "unsupported_parameter",
            ProxyError::BodyTooLarge { .. } => "request_too_large",
            ProxyError::BodyTimeout(_) => "request_timeout",
            ProxyError::BodyRead(_) => "invalid_body",
            ProxyError::InvalidJson(_) => "invalid_json",
            ProxyError::MissingModel => "missing_model",
            ProxyError::ModelNotString => "invalid_model",
            ProxyError::Route(RouteError::UnknownModel(_)) => "model_not_found",
            ProxyError::Route(RouteError::FormatMismatch { .. }) => "unsupported_format",
            ProxyError::PolicyRejected { .. } => "policy_rejected",
            ProxyError::PolicyFailed(_) => "policy_error",
            ProxyError::AllAttemptsFailed {
                status, attempts, ..
            } => {
                let classes: Vec<_> = attempts.iter().filter_map(|a| a.class).collect();
                match status.as_u16() {
                    429 => "rate_limited",
                    503 => "no_upstream_available",
                    504 => "upstream_timeout",
                    _ if !classes.is_empty()
                        && classes
                            .iter()
                            .all(|c| *c == crate::outcome::OutcomeClass::Network) =>
                    {
                        "upstream_unreachable"
                    }
                    _ => "all_attempts_failed",
                }
            }
        }
    }

    /// Errors answered before the request body was read, after which the unread body is
    /// drained for a bounded time so that clients that write it all first can read the
    /// answer (a lingering close).
    pub fn linger(&self) -> bool {
        matches!(
            self,
            ProxyError::NotFound(_)
                | ProxyError::MethodNotAllowed { .. }
                | ProxyError::Unauthorized
                | ProxyError::UriTooLong { .. }
                | ProxyError::BodyTooLarge { .. }
        )
    }

    pub fn into_response(self, dialect: Dialect) -> Response<ProxyBody> {
        let status = self.status();
        if let ProxyError::AllAttemptsFailed {
            retry_after_secs,
            attempts,
            ..
        } = &self
        {
            let mut body = error_json(dialect, status, self.code(), &self.to_string());
            body["error"]["attempts"] = attempts_json(attempts);
            let mut resp = json_response(status, body);
            if let Some(secs) =
                retry_after_secs.filter(|_| status.as_u16() == 429 || status.as_u16() == 503)
            {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            return resp;
        }
        if let ProxyError::Unsupported(u) = &self {
            let mut body = error_json(dialect, status, self.code(), &self.to_string());
            if dialect != Dialect::Anthropic && !u.param.is_empty() {
                body["error"]["param"] = serde_json::Value::from(u.param.as_str());
            }
            return json_response(status, body);
        }
        let mut resp = error_response(dialect, status, self.code(), &self.to_string());
        if let ProxyError::MethodNotAllowed { allow, .. } = self {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// The error `type` each dialect uses for a status.
fn error_type(dialect: Dialect, status: StatusCode) -> &'static str {
    let dialect = match dialect {
        Dialect::Responses => Dialect::OpenAi, // OpenAI's shape
        d => d,
    };
    match (dialect, status.as_u16()) {
        (Dialect::OpenAi | Dialect::Responses, 401) => "authentication_error",
        (Dialect::OpenAi | Dialect::Responses, 429) => "rate_limit_error",
        (Dialect::OpenAi | Dialect::Responses, 400..=499) => "invalid_request_error",
        (Dialect::OpenAi | Dialect::Responses, _) => "api_error",
        (Dialect::Anthropic, 401) => "authentication_error",
        (Dialect::Anthropic, 403) => "permission_error",
        (Dialect::Anthropic, 404) => "not_found_error",
        (Dialect::Anthropic, 413) => "request_too_large",
        (Dialect::Anthropic, 429) => "rate_limit_error",
        (Dialect::Anthropic, 400..=499) => "invalid_request_error",
        (Dialect::Anthropic, 529) => "overloaded_error",
        (Dialect::Anthropic, _) => "api_error",
    }
}

/// The JSON error body in the dialect's shape.
pub fn error_json(
    dialect: Dialect,
    status: StatusCode,
    code: &str,
    message: &str,
) -> serde_json::Value {
    let kind = error_type(dialect, status);
    match dialect {
        Dialect::OpenAi | Dialect::Responses => json!({
            "error": { "message": message, "type": kind, "param": null, "code": code }
        }),
        Dialect::Anthropic => json!({
            "type": "error",
            "error": { "type": kind, "message": message }
        }),
    }
}

/// A complete JSON error response in the dialect's shape.
pub fn error_response(
    dialect: Dialect,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<ProxyBody> {
    json_response(status, error_json(dialect, status, code, message))
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<ProxyBody> {
    let mut resp = Response::new(body::full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
