//! Request parsing: endpoint from method and path, body read under limits, and the few
//! fields Keyway needs (`model`, `stream`) located without re-serialising the body, so the
//! bytes sent upstream are the client's own (provider prompt caches depend on that).

use std::ops::Range;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, Method};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::ProxyError;
use crate::format::{ApiFormat, Dialect};

/// What the client asked for, from method and path alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Api(ApiFormat),
    Models,
    /// A response stored at the provider: `GET`/`DELETE /v1/responses/{id}`,
    /// `POST …/cancel`, `GET …/input_items` (the id is read from the path again).
    Stored,
}

/// `(id, rest)` of a stored-response path: `/v1/responses/resp_x/cancel` → (`resp_x`, `/cancel`).
pub fn stored_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/v1/responses/")?;
    let (id, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let ok = !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && matches!(tail, "" | "/cancel" | "/input_items");
    ok.then_some((id, tail))
}

/// The error dialect for a path, known before the request is otherwise valid.
pub fn dialect_for_path(path: &str) -> Dialect {
    if path.starts_with("/v1/messages") {
        Dialect::Anthropic
    } else if path.starts_with("/v1/responses") {
        Dialect::Responses
    } else {
        Dialect::OpenAi
    }
}

pub fn endpoint(method: &Method, path: &str) -> Result<Endpoint, ProxyError> {
    let (endpoint, allowed) = match path.trim_end_matches('/') {
        "/v1/chat/completions" => (Endpoint::Api(ApiFormat::OpenAiChat), Method::POST),
        "/v1/completions" => (Endpoint::Api(ApiFormat::OpenAiCompletions), Method::POST),
        "/v1/embeddings" => (Endpoint::Api(ApiFormat::OpenAiEmbeddings), Method::POST),
        "/v1/messages" => (Endpoint::Api(ApiFormat::AnthropicMessages), Method::POST),
        "/v1/messages/count_tokens" => {
            (Endpoint::Api(ApiFormat::AnthropicCountTokens), Method::POST)
        }
        "/v1/models" => (Endpoint::Models, Method::GET),
        "/v1/responses" => (Endpoint::Api(ApiFormat::OpenAiResponses), Method::POST),
        "/v1/responses/compact" => (
            Endpoint::Api(ApiFormat::OpenAiResponsesCompact),
            Method::POST,
        ),
        p => match stored_path(p) {
            Some((_, tail)) => {
                let ok = match tail {
                    "/cancel" => *method == Method::POST,
                    "/input_items" => *method == Method::GET,
                    _ => *method == Method::GET || *method == Method::DELETE,
                };
                if ok {
                    return Ok(Endpoint::Stored);
                }
                return Err(ProxyError::MethodNotAllowed {
                    method: method.to_string(),
                    path: path.to_string(),
                    allow: match tail {
                        "/cancel" => "POST",
                        "/input_items" => "GET",
                        _ => "GET, DELETE",
                    },
                });
            }
            None => return Err(ProxyError::NotFound(path.to_string())),
        },
    };
    if *method == allowed || (allowed == Method::GET && *method == Method::HEAD) {
        Ok(endpoint)
    } else {
        Err(ProxyError::MethodNotAllowed {
            method: method.to_string(),
            path: path.to_string(),
            allow: if allowed == Method::GET {
                "GET"
            } else {
                "POST"
            },
        })
    }
}

/// Checks what hyper leaves to the application: the request target's length (414), and on
/// HTTP/1.x exactly one valid `Host` (HTTP/1.1 requires it) and no `Transfer-Encoding`
/// but a single `chunked` (400). Keyway rebuilds the outbound request, so nothing here
/// could be smuggled upstream; these keep the edge as strict as nginx.
pub fn check_head(parts: &http::request::Parts, max_uri_bytes: usize) -> Result<(), ProxyError> {
    let target = parts.uri.path_and_query().map_or(0, |p| p.as_str().len());
    if target > max_uri_bytes {
        return Err(ProxyError::UriTooLong {
            limit: max_uri_bytes,
        });
    }
    if parts.version > http::Version::HTTP_11 {
        return Ok(()); // h2/h3: `:authority`, and framing by the protocol
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(ProxyError::BadHead("more than one Host header")),
        (None, _) if parts.version == http::Version::HTTP_11 => {
            return Err(ProxyError::BadHead(
                "HTTP/1.1 request without a Host header",
            ))
        }
        (Some(h), None) => {
            if !valid_host(h.as_bytes()) {
                return Err(ProxyError::BadHead("invalid Host header"));
            }
        }
        (None, _) => {}
    }
    let mut codings = parts
        .headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|c| c.trim_ascii());
    match (codings.next(), codings.next()) {
        (None, _) => Ok(()),
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => Ok(()),
        _ => Err(ProxyError::BadHead(
            "Transfer-Encoding must be a single `chunked`",
        )),
    }
}

/// `host[:port]` as RFC 3986 allows it in `Host` (reg-name or IP literal, no userinfo),
/// checked without allocating.
fn valid_host(h: &[u8]) -> bool {
    let (host, port) = match h.iter().rposition(|b| *b == b':') {
        // A colon inside brackets belongs to an IPv6 literal.
        Some(i) if !h[i..].contains(&b']') => (&h[..i], &h[i + 1..]),
        _ => (h, &b""[..]),
    };
    let host_ok = match host {
        [b'[', inner @ .., b']'] => {
            !inner.is_empty()
                && inner
                    .iter()
                    .all(|b| b.is_ascii_hexdigit() || b":.".contains(b))
        }
        _ => {
            !host.is_empty()
                && host
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~%!$&'()*+,;=".contains(b))
        }
    };
    host_ok && port.iter().all(u8::is_ascii_digit) && port.len() <= 5
}

/// Reads the whole body, refusing more than `limit` bytes or a body slower than `timeout`.
/// The body is taken out of `slot` only when read whole or failed for good: a body refused
/// for its size is left there, so the caller can drain it after answering 413.
pub async fn read_body(
    headers: &HeaderMap,
    slot: &mut Option<Incoming>,
    limit: u64,
    timeout: Duration,
) -> Result<Bytes, ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let Some(body) = slot.as_mut() else {
        return Ok(Bytes::new());
    };
    let read = async {
        // One frame (the common case) is kept as is; more are gathered into one buffer.
        let mut first: Option<Bytes> = None;
        let mut gathered = BytesMut::new();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ProxyError::BodyRead(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers carry nothing Keyway forwards
            };
            total += data.len() as u64;
            if total > limit {
                return Err(ProxyError::BodyTooLarge { limit });
            }
            match first.take() {
                None if gathered.is_empty() => first = Some(data),
                prev => {
                    if let Some(p) = prev {
                        gathered.reserve(usize::try_from(declared.unwrap_or(0)).unwrap_or(0));
                        gathered.extend_from_slice(&p);
                    }
                    gathered.extend_from_slice(&data);
                }
            }
        }
        Ok(first.unwrap_or_else(|| gathered.freeze()))
    };
    let result = match super::within(timeout, read).await {
        None => Err(ProxyError::BodyTimeout(timeout)),
        Some(r) => r,
    };
    if !matches!(result, Err(ProxyError::BodyTooLarge { .. })) {
        *slot = None;
    }
    result
}

/// The client's body with the fields Keyway reads.
#[derive(Debug, Clone)]
pub struct ParsedBody {
    pub model: String,
    pub stream: bool,
    /// `max_tokens` or `max_completion_tokens`, if given.
    pub max_tokens: Option<u64>,
    /// `previous_response_id` (Responses API), if given.
    pub previous_response_id: Option<String>,
    /// Byte range of the `model` value (including its quotes) in `raw`.
    model_span: Range<usize>,
    raw: Bytes,
}

#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    previous_response_id: Option<&'a RawValue>,
}

impl ParsedBody {
    pub fn parse(raw: Bytes) -> Result<Self, ProxyError> {
        let text = std::str::from_utf8(&raw)
            .map_err(|e| ProxyError::InvalidJson(format!("not UTF-8: {e}")))?;
        let probe: Probe<'_> =
            serde_json::from_str(text).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
        let model_raw = probe.model.ok_or(ProxyError::MissingModel)?;
        let model: String =
            serde_json::from_str(model_raw.get()).map_err(|_| ProxyError::ModelNotString)?;
        if model.is_empty() {
            return Err(ProxyError::MissingModel);
        }
        // The RawValue borrows from `text`, so its position is its offset in the body.
        let start = model_raw.get().as_ptr() as usize - text.as_ptr() as usize;
        let model_span = start..start + model_raw.get().len();
        let stream = probe.stream.is_some_and(|v| v.get() == "true");
        let max_tokens = probe
            .max_tokens
            .or(probe.max_completion_tokens)
            .and_then(|v| v.get().parse::<u64>().ok());
        let previous_response_id = probe
            .previous_response_id
            .and_then(|v| serde_json::from_str::<String>(v.get()).ok())
            .filter(|s| !s.is_empty());
        Ok(Self {
            model,
            stream,
            max_tokens,
            previous_response_id,
            model_span,
            raw,
        })
    }

    /// The client's body as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Body length in bytes.
    pub fn len(&self) -> usize {
        self.raw.len()
    }

    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// The body to send for `target_model`: the client's exact bytes when the name is
    /// unchanged, otherwise the same bytes with only the `model` value replaced.
    pub fn body_for(&self, target_model: &str) -> Bytes {
        if target_model == self.model {
            return self.raw.clone();
        }
        let quoted = serde_json::Value::from(target_model).to_string();
        let mut out = BytesMut::with_capacity(self.raw.len() + quoted.len());
        out.extend_from_slice(&self.raw[..self.model_span.start]);
        out.extend_from_slice(quoted.as_bytes());
        out.extend_from_slice(&self.raw[self.model_span.end..]);
        out.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_rewrite_keeps_every_other_byte() {
        let raw = br#"{ "messages":[{"role":"user","content":"model"}],
            "model" :  "gpt-4o" , "stream":true ,"x":{"model":"inner"}}"#;
        let p = ParsedBody::parse(Bytes::from_static(raw)).unwrap();
        assert_eq!(p.model, "gpt-4o");
        assert!(p.stream);
        assert_eq!(p.body_for("gpt-4o"), Bytes::from_static(raw));
        let out = p.body_for("gpt-4o-2024-08-06");
        let expected =
            String::from_utf8_lossy(raw).replace(r#""gpt-4o""#, r#""gpt-4o-2024-08-06""#);
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
    }

    #[test]
    fn escaped_model_names_round_trip() {
        let p = ParsedBody::parse(Bytes::from_static(br#"{"model":"a\u002fb"}"#)).unwrap();
        assert_eq!(p.model, "a/b");
        assert_eq!(&p.body_for("c\"d")[..], br#"{"model":"c\"d"}"#);
    }

    #[test]
    fn bad_bodies_are_rejected() {
        let parse =
            |s: &'static str| ParsedBody::parse(Bytes::from_static(s.as_bytes())).unwrap_err();
        assert!(matches!(parse("{"), ProxyError::InvalidJson(_)));
        assert!(matches!(parse("[1]"), ProxyError::InvalidJson(_)));
        assert!(matches!(parse("{}"), ProxyError::MissingModel));
        assert!(matches!(
            parse(r#"{"model":3}"#),
            ProxyError::ModelNotString
        ));
        assert!(matches!(
            parse(r#"{"model":"a","model":"b"}"#),
            ProxyError::InvalidJson(_)
        ));
    }

    #[test]
    fn host_values() {
        for ok in [
            "a",
            "localhost:8787",
            "api.example.com",
            "127.0.0.1:1",
            "[::1]:8787",
            "[::1]",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            "a b c",
            "user@host",
            "a/b",
            "a:80x",
            "[::1",
            "a:123456",
            ":80",
            "a\tb",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad}");
        }
    }

    #[test]
    fn endpoints_and_methods() {
        assert_eq!(
            endpoint(&Method::POST, "/v1/chat/completions").unwrap(),
            Endpoint::Api(ApiFormat::OpenAiChat)
        );
        assert!(matches!(
            endpoint(&Method::GET, "/v1/chat/completions"),
            Err(ProxyError::MethodNotAllowed { .. })
        ));
        assert!(matches!(
            endpoint(&Method::GET, "/nope"),
            Err(ProxyError::NotFound(_))
        ));
    }
}
