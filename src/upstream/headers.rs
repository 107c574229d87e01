//! Header filtering in both directions.

use http::header::GetAll;
use http::{header, HeaderMap, HeaderName, HeaderValue};

/// RFC 9110 §7.6.1 connection-specific headers, never forwarded. (A `match`, here and
/// below: it compiles to a switch on the length and one comparison, where a list scan
/// compared every entry for every header of every message.)
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// [`is_hop_by_hop`] for a `Connection` token, whose case is the sender's.
fn is_hop_by_hop_token(token: &str) -> bool {
    // Lowercased on the stack (the longest such name is 19 bytes): one list, no allocation.
    let mut buf = [0u8; 19];
    let Some(lower) = buf.get_mut(..token.len()) else {
        return false;
    };
    lower.copy_from_slice(token.as_bytes());
    lower.make_ascii_lowercase();
    std::str::from_utf8(lower).is_ok_and(is_hop_by_hop)
}

/// Client headers Keyway owns or that would steer credentials, caching or body framing:
/// the client's Keyway key, account selectors, host, length and content coding; and
/// forwarding headers, which a client could forge and which would tell a provider where
/// Keyway's users are (Keyway adds none of its own).
fn is_client_only(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "x-api-key"
            | "api-key"
            | "openai-organization"
            | "openai-project"
            | "host"
            | "content-length"
            | "accept-encoding"
            | "cookie"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-host"
            | "x-forwarded-proto"
            | "x-forwarded-port"
            | "x-real-ip"
            | "proxy-connection"
    ) || name.starts_with("x-keyway-")
}

/// Whether a `Connection` value names only headers that are hop-by-hop anyway (a value
/// that is not text names nothing Keyway can match).
fn lists_only_hop_by_hop(value: &HeaderValue) -> bool {
    // Nearly every message says just this: no splitting, no copy.
    if value.as_bytes().eq_ignore_ascii_case(b"keep-alive") {
        return true;
    }
    value.to_str().map_or(true, |v| {
        v.split(',').map(str::trim).all(is_hop_by_hop_token)
    })
}

/// The names a message's `Connection` header lists, which are hop-by-hop too. Looked up
/// once per message; most messages list nothing or only names that are hop-by-hop anyway
/// (`keep-alive`), and then no header needs checking against the list.
struct Listed<'a>(Option<GetAll<'a, HeaderValue>>);

impl<'a> Listed<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let all = headers.get_all(header::CONNECTION);
        let extra = all.iter().any(|v| !lists_only_hop_by_hop(v));
        Self(extra.then_some(all))
    }

    fn contains(&self, name: &HeaderName) -> bool {
        self.0.as_ref().is_some_and(|all| {
            all.iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .any(|t| t.trim().eq_ignore_ascii_case(name.as_str()))
        })
    }
}

pub(super) fn copy_request_headers(from: &HeaderMap, to: &mut HeaderMap) {
    let listed = Listed::of(from);
    for (name, value) in from {
        let n = name.as_str();
        if is_hop_by_hop(n) || is_client_only(n) || listed.contains(name) {
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
    headers.remove(header::CONTENT_LENGTH);
    // Passes over the names present (a handful) rather than a lookup per name that might
    // be; nothing is allocated unless the `Connection` header lists extra names.
    let is_doomed = |n: &HeaderName| is_hop_by_hop(n.as_str()) || *n == header::SET_COOKIE;
    let listed = Listed::of(headers);
    if listed.0.is_some() {
        // Rare: the upstream names further hop-by-hop headers.
        let doomed: Vec<HeaderName> = headers
            .keys()
            .filter(|n| is_doomed(n) || listed.contains(n))
            .cloned()
            .collect();
        for name in doomed {
            headers.remove(name);
        }
        return;
    }
    // Most responses carry one such header (`Connection: keep-alive`): removed without
    // collecting anything.
    while let Some(name) = headers.keys().find(|n| is_doomed(n)).cloned() {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn response_filter_drops_hop_by_hop_listed_cookies_and_length() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("content-type", "application/json"),
            ("connection", "keep-alive, X-Trace"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("content-length", "12"),
            ("transfer-encoding", "chunked"),
            ("x-request-id", "req_1"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        filter_response_headers(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, vec!["content-type", "x-request-id"]);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn response_filter_without_listed_names_drops_every_hop_by_hop_header() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "Keep-Alive"),
            ("content-type", "text/event-stream"),
            ("keep-alive", "timeout=5"),
            ("set-cookie", "a=1"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("set-cookie", "b=2"),
            ("x-request-id", "req_1"),
        ] {
            h.append(k, HeaderValue::from_static(v));
        }
        assert!(
            Listed::of(&h).0.is_none(),
            "a mixed-case hop-by-hop token lists nothing"
        );
        filter_response_headers(&mut h);
        // (Removal may reorder names; order between different names carries no meaning.)
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort_unstable();
        assert_eq!(names, vec!["content-type", "x-request-id"]);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn connection_tokens_are_matched_without_regard_to_case() {
        for t in ["keep-alive", "Keep-Alive", "TE", "Transfer-Encoding"] {
            assert!(is_hop_by_hop_token(t), "{t}");
        }
        for t in ["close", "X-Trace", "keep-alive2"] {
            assert!(!is_hop_by_hop_token(t), "{t}");
        }
    }
}
