//! Header filtering in both directions.

use http::{header, HeaderMap, HeaderName};

/// RFC 9110 §7.6.1 connection-specific headers, never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Client headers Keyway owns or that would steer credentials, caching or body framing:
/// the client's Keyway key, account selectors, host, length and content coding; and
/// forwarding headers, which a client could forge and which would tell a provider where
/// Keyway's users are (Keyway adds none of its own).
const CLIENT_ONLY: [&str; 16] = [
    "authorization",
    "x-api-key",
    "api-key",
    "openai-organization",
    "openai-project",
    "host",
    "content-length",
    "accept-encoding",
    "cookie",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "proxy-connection",
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(&name.as_str())
}

/// Names listed in the `Connection` header are hop-by-hop too.
fn connection_listed(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()))
}

pub(super) fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        let n = name.as_str();
        if is_hop_by_hop(name)
            || CLIENT_ONLY.contains(&n)
            || n.starts_with("x-keyway-")
            || connection_listed(from, name)
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// Upstream response headers as the client should see them: hop-by-hop, cookies and
/// `content-length` removed. The length is never relayed: hyper derives it from the body
/// Keyway actually sends (an upstream that sent both `Content-Length` and chunked framing
/// must not truncate the client's copy; RFC 9112 §6.3).
pub fn filter_response_headers(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(["set-cookie"].iter()) {
        headers.remove(*name);
    }
    for name in listed {
        headers.remove(name);
    }
    headers.remove(header::CONTENT_LENGTH);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn request_filter_drops_credentials_and_hop_by_hop() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer client"),
            ("x-api-key", "client"),
            ("connection", "x-trace"),
            ("x-trace", "1"),
            ("te", "trailers"),
            ("user-agent", "OpenAI/Python"),
            ("anthropic-beta", "prompt-caching-2024-07-31"),
            ("x-keyway-debug", "1"),
        ] {
            from.append(k, HeaderValue::from_static(v));
        }
        let mut to = HeaderMap::new();
        copy_request_headers(&from, &mut to);
        let names: Vec<_> = to.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["user-agent", "anthropic-beta"]);
    }
}
