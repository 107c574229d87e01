//! `GET /v1/models`: the models the config serves, in OpenAI's list shape, or Anthropic's
//! when the client sends `anthropic-version`.

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response};
use serde_json::json;

use super::body::{self, ProxyBody};
use crate::config::Config;

pub(super) fn list(config: &Config, headers: &HeaderMap) -> Response<ProxyBody> {
    let mut seen = std::collections::HashSet::new();
    let models: Vec<(&str, &str)> = config
        .providers
        .iter()
        .flat_map(|p| p.models.iter().map(move |m| (m.as_str(), p.id.as_str())))
        .filter(|(m, _)| seen.insert(*m))
        .collect();
    let body = if headers.contains_key("anthropic-version") {
        json!({
            "data": models.iter().map(|(id, _)| json!({
                "type": "model", "id": id, "display_name": id, "created_at": "1970-01-01T00:00:00Z"
            })).collect::<Vec<_>>(),
            "has_more": false,
            "first_id": models.first().map(|m| m.0),
            "last_id": models.last().map(|m| m.0),
        })
    } else {
        json!({
            "object": "list",
            "data": models.iter().map(|(id, owner)| json!({
                "id": id, "object": "model", "created": 0, "owned_by": owner
            })).collect::<Vec<_>>(),
        })
    };
    let mut resp = Response::new(body::full(Bytes::from(body.to_string())));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An estimate for `POST /v1/messages/count_tokens` when no target can count: about four
/// bytes of text per token over the system prompt, the messages and the tool definitions,
/// marked `x-keyway-token-count: estimated`.
pub fn count_tokens_estimate(raw: &[u8]) -> Response<ProxyBody> {
    fn text_len(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::String(s) => s.len(),
            serde_json::Value::Array(a) => a.iter().map(text_len).sum(),
            serde_json::Value::Object(o) => o
                .iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "type" | "id" | "role" | "tool_use_id" | "cache_control"
                    )
                })
                .map(|(_, v)| text_len(v))
                .sum(),
            _ => 0,
        }
    }
    let body: serde_json::Value = serde_json::from_slice(raw).unwrap_or_default();
    let chars = ["system", "messages", "tools"]
        .iter()
        .map(|k| text_len(&body[*k]))
        .sum::<usize>();
    let tokens = chars.div_ceil(4).max(1);
    let mut resp = Response::new(super::body::full(bytes::Bytes::from(
        serde_json::json!({"input_tokens": tokens}).to_string(),
    )));
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    h.insert(
        "x-keyway-token-count",
        http::HeaderValue::from_static("estimated"),
    );
    resp
}
