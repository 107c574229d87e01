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
