//! Responses the provider stores: which provider and connection created a response, told
//! by its id alone, with no shared storage.
//!
//! On pass-through `/v1/responses` answers Keyway appends a routing tag to every response
//! id the upstream sends (`resp_abc` → `resp_abc_kw1a2b3c4d`): eight hex digits of
//! SHA-256 over `provider/connection`. Requests that name such an id —
//! `previous_response_id`, `GET`/`DELETE /v1/responses/{id}`, `/cancel`, `/input_items` —
//! go to that connection (whose keys share one account), with the tag removed, so the
//! upstream only ever sees its own ids. A connection renamed or removed from the config
//! loses its tag: its ids answer 404, never another account's data.

use bytes::{Bytes, BytesMut};

use crate::config::{Config, Connection, Provider};
use crate::translate::StreamTranslator;

/// `_kw` + 8 hex digits.
const TAG_LEN: usize = 11;

/// The tag for responses created through `conn` of `provider`.
pub fn tag(provider: &str, conn: &str) -> String {
    format!(
        "_kw{}",
        crate::digest::short_hex(format!("{provider}/{conn}").as_bytes(), 4)
    )
}

/// Splits a tagged id into the provider's own id and its tag.
pub fn split(id: &str) -> Option<(&str, &str)> {
    if id.len() <= TAG_LEN + 5 || !id.starts_with("resp_") {
        return None;
    }
    let (own, tag) = id.split_at(id.len() - TAG_LEN);
    (tag.starts_with("_kw") && tag[3..].bytes().all(|b| b.is_ascii_hexdigit()))
        .then_some((own, tag))
}

/// The provider and connection a tag names, among providers that speak Responses.
pub fn owner<'a>(
    config: &'a Config,
    tag: &str,
) -> Option<(&'a std::sync::Arc<Provider>, &'a std::sync::Arc<Connection>)> {
    config
        .providers
        .iter()
        .filter(|p| p.formats.speaks(crate::format::Family::Responses))
        .flat_map(|p| p.connections.iter().map(move |c| (p, c)))
        .find(|(p, c)| self::tag(&p.id, &c.id) == tag)
}

/// `body` with the string value `"tagged"` replaced by `"own"` (once: ids are unique).
pub fn untag_body(body: &Bytes, tagged: &str, own: &str) -> Bytes {
    let needle = format!("\"{tagged}\"");
    match memchr::memmem::find(body, needle.as_bytes()) {
        Some(at) => {
            let mut out = BytesMut::with_capacity(body.len());
            out.extend_from_slice(&body[..at + 1]);
            out.extend_from_slice(own.as_bytes());
            out.extend_from_slice(&body[at + 1 + tagged.len()..]);
            out.freeze()
        }
        None => body.clone(),
    }
}

/// Appends `tag` to every JSON string value that is a response id (`"resp_…"`), across
/// any chunking of the body. Escaped quotes inside strings never start a match.
pub struct IdTagger {
    tag: String,
    /// A possible id start held back until its closing quote arrives.
    held: BytesMut,
}

/// Longest id held back while waiting for its end.
const MAX_ID: usize = 256;

impl IdTagger {
    pub fn new(tag: String) -> Self {
        Self {
            tag,
            held: BytesMut::new(),
        }
    }

    fn rewrite(&mut self, data: &[u8], at_end: bool) -> Bytes {
        let mut buf = std::mem::take(&mut self.held);
        buf.extend_from_slice(data);
        let mut out = BytesMut::with_capacity(buf.len() + 32);
        let mut i = 0;
        while let Some(pos) = memchr::memmem::find(&buf[i..], b"\"resp_") {
            let start = i + pos;
            if start > 0 && buf[start - 1] == b'\\' {
                out.extend_from_slice(&buf[i..start + 1]);
                i = start + 1;
                continue;
            }
            let body = start + 1;
            let end = buf[body..]
                .iter()
                .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-'))
                .map(|p| body + p);
            match end {
                Some(e) if buf[e] == b'"' => {
                    out.extend_from_slice(&buf[i..e]);
                    out.extend_from_slice(self.tag.as_bytes());
                    i = e;
                }
                Some(e) => {
                    // Not a whole string value (`"resp_x y"`): leave it.
                    out.extend_from_slice(&buf[i..e]);
                    i = e;
                }
                None if !at_end && buf.len() - start <= MAX_ID => {
                    out.extend_from_slice(&buf[i..start]);
                    self.held.extend_from_slice(&buf[start..]);
                    return out.freeze();
                }
                None => {
                    out.extend_from_slice(&buf[i..]);
                    return out.freeze();
                }
            }
        }
        // A `"resp_` split at the end: hold the part that could start one.
        let tail_from = if at_end {
            buf.len()
        } else {
            (i..buf.len())
                .rev()
                .take(6)
                .filter(|&k| b"\"resp_".starts_with(&buf[k..]))
                .min()
                .unwrap_or(buf.len())
        };
        out.extend_from_slice(&buf[i..tail_from]);
        self.held.extend_from_slice(&buf[tail_from..]);
        out.freeze()
    }
}

impl StreamTranslator for IdTagger {
    fn push(&mut self, data: &[u8]) -> Bytes {
        self.rewrite(data, false)
    }
    fn finish(&mut self) -> Bytes {
        self.rewrite(&[], true)
    }
    fn is_finished(&self) -> bool {
        false
    }
}

/// Serves `GET`/`DELETE /v1/responses/{id}`, `POST …/cancel` and `GET …/input_items`: at
/// the connection the id's tag names, with one of its usable keys. The answer's ids are
/// tagged again; errors are relayed with configured keys redacted.
pub(super) async fn forward(
    snap: &crate::runtime::Snapshot,
    runtime: &crate::runtime::Runtime,
    parts: &http::request::Parts,
    attempts: &mut Vec<super::AttemptRecord>,
) -> Result<http::Response<super::body::ProxyBody>, super::error::ProxyError> {
    use super::error::ProxyError;
    use http_body_util::BodyExt;
    let path = parts.uri.path();
    let Some((id, tail)) = super::request::stored_path(path) else {
        return Err(ProxyError::NotFound(path.to_string()));
    };
    if id.starts_with(crate::translate::responses::MINTED_PREFIX) {
        return Err(ProxyError::StoredNotFound(format!(
            "response `{id}` was answered through a format translation and is not stored; \
             send the whole conversation in `input` instead"
        )));
    }
    let Some((own, tag)) = split(id) else {
        return Err(ProxyError::StoredNotFound(format!(
            "response `{id}` was not created through this Keyway"
        )));
    };
    let Some((provider, conn)) = owner(&snap.config, tag) else {
        return Err(ProxyError::StoredNotFound(format!(
            "the connection that created response `{id}` is no longer configured"
        )));
    };
    let pool = runtime.keys.pool(conn);
    let view = crate::policy::ConnRef {
        conn,
        pool: &pool,
        model: "",
        tried: &[],
    };
    let target = format!("{}/responses", provider.id);
    let mut record = super::AttemptRecord::new(
        target.clone(),
        provider.id.clone(),
        "-".into(),
        conn.id.clone(),
    );
    let Some(index) = crate::policy::defaults::select_key(&runtime.quota, &view) else {
        record.skipped = Some("every key locked".into());
        attempts.push(record);
        return Err(ProxyError::AllAttemptsFailed {
            status: http::StatusCode::SERVICE_UNAVAILABLE,
            retry_after_secs: None,
            attempts: attempts.clone(),
        });
    };
    let key = &conn.keys[index];
    record.key_id = Some(key.id.clone());
    record.fingerprint = Some(key.secret.fingerprint().to_string());
    let t = &snap.config.timeouts;
    let req = crate::upstream::build(
        provider,
        parts.method.clone(),
        &format!("/responses/{own}{tail}"),
        key,
        &parts.headers,
        parts.uri.query(),
        Bytes::new(),
    );
    let started = std::time::Instant::now();
    let sent = match req {
        Ok(req) => runtime.upstream.send(req, t.upstream_headers).await,
        Err(e) => Err(e),
    };
    record.upstream = started.elapsed();
    record.millis = started.elapsed().as_millis() as u64;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            record.class = Some(crate::outcome::OutcomeClass::Network);
            record.message = snap.redactor.redact_string(e.to_string());
            attempts.push(record);
            return Err(ProxyError::AllAttemptsFailed {
                status: http::StatusCode::BAD_GATEWAY,
                retry_after_secs: None,
                attempts: attempts.clone(),
            });
        }
    };
    let (mut head, body) = resp.into_parts();
    record.status = Some(head.status.as_u16());
    record.class =
        Some(crate::outcome::Outcome::from_response(head.status, &head.headers, "", 0).class);
    record.decision = Some(crate::policy::Decision::Return);
    attempts.push(record);
    crate::upstream::filter_response_headers(&mut head.headers);
    snap.redactor.redact_headers(&mut head.headers);
    if !head.status.is_success() {
        let text = body
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        let text = match snap.redactor.redact(&text) {
            Some(clean) => Bytes::from(clean),
            None => text,
        };
        return Ok(http::Response::from_parts(head, super::body::full(text)));
    }
    let is_sse = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let framing = is_sse.then(|| {
        super::body::SseFraming::new(
            crate::format::Dialect::Responses,
            snap.config.server.max_sse_event_bytes,
        )
    });
    let relay =
        super::body::RelayBody::with_first(body, None, provider.id.clone(), t.stream_idle, framing);
    let out = super::body::TranslatedBody::new(relay, Box::new(IdTagger::new(tag.to_string())));
    Ok(http::Response::from_parts(head, out.boxed_unsync()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut t = IdTagger::new("_kw0011aabb".into());
        let mut out = Vec::new();
        let mut from = 0;
        for &c in cuts.iter().chain(std::iter::once(&input.len())) {
            out.extend_from_slice(&t.push(&input[from..c]));
            from = c;
        }
        out.extend_from_slice(&t.finish());
        out
    }

    #[test]
    fn tags_response_ids_at_any_split_and_nothing_else() {
        let input = br#"event: response.created
data: {"type":"response.created","response":{"id":"resp_68af01","previous_response_id":"resp_1","text":"say \"resp_no\" and resp_no","x":"resp_ a"}}

"#;
        let want = br#"event: response.created
data: {"type":"response.created","response":{"id":"resp_68af01_kw0011aabb","previous_response_id":"resp_1_kw0011aabb","text":"say \"resp_no\" and resp_no","x":"resp_ a"}}

"#;
        assert_eq!(run(input, &[]), want.to_vec());
        for cut in 0..=input.len() {
            assert_eq!(run(input, &[cut]), want.to_vec(), "split at {cut}");
        }
        let (own, tag) = split("resp_68af01_kw0011aabb").unwrap();
        assert_eq!((own, tag), ("resp_68af01", "_kw0011aabb"));
        assert!(split("resp_68af01").is_none());
        assert_eq!(tag_of_len(), TAG_LEN);
    }

    fn tag_of_len() -> usize {
        tag("openai", "main").len()
    }
}
