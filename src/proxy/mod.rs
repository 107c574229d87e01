//! The request path: authenticate → parse → route (policy) → attempt loop → respond.
//!
//! [`Proxy::handle`] never fails: every error becomes a response in the caller's dialect,
//! and every response carries `x-keyway-request-id` and an `x-keyway-attempts` trace.

mod attempt;
mod auth;
pub mod body;
pub mod error;
pub(crate) mod metered;
mod models;
pub mod request;
pub mod stored;

use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::logfmt::Escaped;
use crate::policy::{RequestInfo, RequestSource};
use crate::runtime::{Runtime, Snapshot};

pub use attempt::AttemptRecord;
pub use auth::{ClientAuth, ANONYMOUS};
use body::ProxyBody;
use error::ProxyError;
use request::{Endpoint, ParsedBody};

/// Header carrying the request's id on every response. (Statics: inserting by `&str` would
/// parse the name and allocate it on every response.)
pub static REQUEST_ID_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-keyway-request-id");
/// Header carrying the compact trace of upstream attempts.
pub static ATTEMPTS_HEADER: http::HeaderName = http::HeaderName::from_static("x-keyway-attempts");

/// The proxy's request handler.
pub struct Proxy {
    runtime: Arc<Runtime>,
}

/// What is known about a request as it moves through the path; logged once at the end.
struct RequestLog {
    id: RequestId,
    client: Option<String>,
    model: Option<String>,
    endpoint: &'static str,
    attempts: Vec<AttemptRecord>,
}

/// A request whose response headers have not been handed over yet. If its future is
/// dropped first (the client left), it is still logged and counted, as status 499.
struct Unanswered<'a> {
    log: RequestLog,
    method: &'a http::Method,
    uri: &'a http::Uri,
    started: Instant,
    answered: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        metrics::counter!(crate::metrics::CLIENT_ABORTS).increment(1);
        let log = &mut self.log;
        let completion = metered::Completion {
            client: log.client.take().unwrap_or_else(|| "-".into()),
            model_label: "-".into(),
            model: log.model.take().unwrap_or_else(|| "-".into()),
            endpoint: log.endpoint,
            method: self.method.clone(),
            uri: self.uri.clone(),
            status: metered::CLIENT_CLOSED,
            started: self.started,
            headers_after: self.started.elapsed(),
            served: None,
            stream: false,
            attempts: std::mem::take(&mut log.attempts),
            id: log.id,
        };
        let total = self.started.elapsed();
        metered::record(completion, false, total, None, None);
    }
}

/// Bounds of the drain after an early answer (nginx's lingering close does the same): 10 s,
/// and at most 4 × `max_body_bytes` but never less than 64 MiB.
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(10);
const LINGER_MIN_BYTES: u64 = 64 << 20;

/// Reads and discards an unread request body in the background, for at most
/// [`LINGER_TIME`] and `max_bytes`, so the connection is not reset under a client that is
/// still writing it: such a client would see a broken pipe instead of Keyway's answer.
fn linger(mut body: Incoming, max_bytes: u64) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let drain = async {
            let mut seen = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if seen > max_bytes {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(LINGER_TIME, drain).await;
    });
}

impl Proxy {
    pub fn new(runtime: Arc<Runtime>) -> Self {
        Self { runtime }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Serves one client request. Dropping the returned future (client gone) drops any
    /// upstream request in flight.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        let started = Instant::now();
        let (parts, body) = req.into_parts();
        let dialect = request::dialect_for_path(parts.uri.path());
        let mut pending = Unanswered {
            log: RequestLog {
                id: RequestId::new(),
                client: None,
                model: None,
                endpoint: "other",
                attempts: Vec::new(),
            },
            method: &parts.method,
            uri: &parts.uri,
            started,
            answered: false,
        };
        // One snapshot for the whole request, whatever reloads happen meanwhile.
        let snap = self.runtime.held_snapshot();
        let mut body = Some(body);
        let mut resp = match self.serve(&snap, &parts, &mut body, &mut pending.log).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(request_id = %pending.log.id, error = %Escaped(&e), "request refused");
                if let (true, Some(unread)) = (e.linger(), body.take()) {
                    let cap = snap.config.server.max_body_bytes.saturating_mul(4);
                    linger(unread, cap.max(LINGER_MIN_BYTES));
                }
                let close = matches!(e, ProxyError::BadHead(_));
                let mut resp = e.into_response(dialect);
                if close && parts.version <= http::Version::HTTP_11 {
                    resp.headers_mut()
                        .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
                }
                resp
            }
        };
        pending.answered = true;
        let log = &mut pending.log;
        let headers = resp.headers_mut();
        headers.reserve(2); // the two below, in one growth
        if let Ok(v) = HeaderValue::from_bytes(log.id.as_str().as_bytes()) {
            headers.insert(&REQUEST_ID_HEADER, v);
        }
        if !log.attempts.is_empty() {
            if let Ok(v) = HeaderValue::try_from(trace_header(&log.attempts)) {
                headers.insert(&ATTEMPTS_HEADER, v);
            }
        }
        let headers_after = started.elapsed();
        let upstream_wait: std::time::Duration = log.attempts.iter().map(|a| a.upstream).sum();
        crate::metrics::request()
            .overhead
            .record(headers_after.saturating_sub(upstream_wait).as_secs_f64());
        let status = resp.status();
        let served = log
            .attempts
            .iter()
            .rev()
            .find(|a| a.decision == Some(crate::policy::Decision::Return))
            .map(|a| (a.provider.clone(), a.model.clone()));
        let is_sse = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        let scan = match (&served, status.is_success(), is_sse) {
            (Some(_), true, true) => metered::UsageScan::Sse,
            (Some(_), true, false) => metered::UsageScan::Json(Default::default()),
            _ => metered::UsageScan::None,
        };
        let router = snap.policy.router();
        let completion = metered::Completion {
            client: log.client.take().unwrap_or_else(|| "-".into()),
            model_label: log
                .model
                .as_deref()
                .map_or("-", |m| router.model_label(m))
                .to_string(),
            model: log.model.take().unwrap_or_else(|| "-".into()),
            endpoint: log.endpoint,
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            status: status.as_u16(),
            started,
            headers_after,
            served: served.map(|(p, m)| {
                let label = router.model_label(&m).to_string();
                (p, label)
            }),
            stream: is_sse,
            attempts: std::mem::take(&mut log.attempts),
            id: log.id,
        };
        resp.map(|body| metered::MeteredBody::new(body, completion, scan).boxed_unsync())
    }

    async fn serve(
        &self,
        snap: &Snapshot,
        parts: &http::request::Parts,
        body: &mut Option<Incoming>,
        log: &mut RequestLog,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        request::check_head(parts, snap.config.server.max_uri_bytes)?;
        let endpoint = request::endpoint(&parts.method, parts.uri.path())?;
        log.endpoint = match endpoint {
            Endpoint::Models => "models",
            Endpoint::Stored => "responses.stored",
            Endpoint::Api(f) => f.as_str(),
        };
        let client = snap
            .auth
            .authenticate(&parts.headers)
            .ok_or(ProxyError::Unauthorized)?;
        log.client = Some(client.to_string());
        let format = match endpoint {
            Endpoint::Models => return Ok(models::list(&snap.config, &parts.headers)),
            Endpoint::Stored => {
                return stored::forward(snap, &self.runtime, parts, &mut log.attempts).await
            }
            Endpoint::Api(format) => format,
        };
        let t = &snap.config.timeouts;
        let raw = request::read_body(
            &parts.headers,
            body,
            snap.config.server.max_body_bytes,
            t.request_body,
        )
        .await?;
        let parsed = ParsedBody::parse(raw)?;
        log.model = Some(parsed.model.clone());
        // Built only if a script asks for it (the shipped policy's hooks are native).
        let make_info = || RequestInfo {
            model: parsed.model.clone(),
            format,
            stream: parsed.stream,
            client: client.to_string(),
            headers: parts.headers.clone(),
            max_tokens: parsed.max_tokens,
            input_tokens: parsed.len() as u64 / 4,
        };
        let req = RequestSource::lazy(&parsed.model, &make_info);
        let ctx = attempt::AttemptContext {
            snap,
            runtime: &self.runtime,
            format,
            headers: &parts.headers,
            query: parts.uri.query(),
            parsed: &parsed,
            req: &req,
        };
        let policy = &snap.policy;
        let candidates = match policy.route(ctx.req) {
            Ok(c) => c,
            Err(e) => ctx.on_policy_error(e, || policy.default_route(&parsed.model))?,
        };
        let targets = match policy.router().targets(&candidates, format, &parsed.model) {
            // Token counting exists only at Anthropic; for a model served elsewhere Keyway
            // answers an estimate rather than a 404 (clients retry those in a loop).
            Err(crate::routing::RouteError::FormatMismatch { .. })
                if format == crate::format::ApiFormat::AnthropicCountTokens =>
            {
                return Ok(models::count_tokens_estimate(parsed.raw()));
            }
            r => r?,
        };
        let targets = match parsed.previous_response_id.as_deref() {
            Some(prev) if format == crate::format::ApiFormat::OpenAiResponses => {
                pin_to_creator(snap, targets, prev, &parsed.model)?
            }
            _ => targets,
        };
        match ctx.run(&targets, &mut log.attempts).await {
            Ok(resp) => Ok(resp),
            Err(Err(e)) => Err(e),
            Err(Ok(exhausted)) => {
                let now = self.runtime.quota.now_ms();
                Err(ProxyError::AllAttemptsFailed {
                    status: attempt::exhausted_status(&log.attempts),
                    retry_after_secs: exhausted.earliest_unlock_ms.map(|u| {
                        u.saturating_sub(now)
                            .div_ceil(1000)
                            .clamp(1, max_wait_secs(snap))
                    }),
                    attempts: log.attempts.clone(),
                })
            }
        }
    }
}

/// A request continuing a stored response goes to the connection that created it (the
/// id's tag says which); an untagged id was made elsewhere and routes as usual.
fn pin_to_creator(
    snap: &Snapshot,
    targets: Vec<crate::routing::Target>,
    prev: &str,
    model: &str,
) -> Result<Vec<crate::routing::Target>, ProxyError> {
    let Some((_, tag)) = stored::split(prev) else {
        return Ok(targets);
    };
    let unsupported = |message: String| {
        ProxyError::Unsupported(crate::translate::Unsupported::new(
            "previous_response_id",
            message,
        ))
    };
    let Some((provider, conn)) = stored::owner(&snap.config, tag) else {
        return Err(unsupported(format!(
            "the connection that created `{prev}` is no longer configured; send the whole conversation in `input`"
        )));
    };
    let pinned: Vec<_> = targets
        .into_iter()
        .filter(|t| t.provider.id == provider.id && t.translation.is_none())
        .map(|mut t| {
            t.connection = Some(conn.id.clone());
            t
        })
        .collect();
    if pinned.is_empty() {
        return Err(unsupported(format!(
            "`{prev}` was created by provider `{}`, which is not a candidate for model `{model}` here",
            provider.id
        )));
    }
    Ok(pinned)
}

/// A request's id: a UUIDv7 (time-ordered) in its 32-digit simple form, kept inline (it
/// is copied into the response header and the log line, and needs no allocation of its own).
#[derive(Clone, Copy)]
pub struct RequestId([u8; uuid::fmt::Simple::LENGTH]);

impl RequestId {
    /// A new id from a per-thread context, so ids cost no lock shared between worker
    /// threads (`Uuid::now_v7` takes a global mutex).
    fn new() -> Self {
        use uuid::timestamp::context::{ContextV7, ThreadLocalContext};
        thread_local! {
            static CONTEXT: ContextV7 = const { ContextV7::new() };
        }
        static IDS: ThreadLocalContext<ContextV7> = ThreadLocalContext::new(&CONTEXT);
        let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
        uuid::Uuid::new_v7(uuid::Timestamp::now(&IDS))
            .simple()
            .encode_lower(&mut buf);
        Self(buf)
    }

    pub fn as_str(&self) -> &str {
        // Lowercase hex digits only, as `encode_lower` wrote them.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `fut`'s output, or `None` if it is still pending after `limit`. A future that is ready
/// at once (a request body that came with its head, a response's first bytes that came
/// with its headers: the common case) costs no timer: the clock is read and the deadline
/// armed only once it is seen pending, so `limit` runs from then.
pub(crate) async fn within<F: std::future::Future>(
    limit: std::time::Duration,
    fut: F,
) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(fut.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => tokio::time::timeout(limit, fut).await.ok(),
    }
}

/// The longest `Retry-After` Keyway tells a client: its longest wait cap.
fn max_wait_secs(snap: &Snapshot) -> u64 {
    let p = &snap.config.policy;
    p.max_retry_after.max(p.max_quota_wait).as_secs().max(1)
}

/// `target conn/key outcome ms` per attempt, `target conn skipped` per skip, each with
/// `via from-to-to` when translated; comma-separated. Key ids are config names, not secrets.
fn trace_header(attempts: &[AttemptRecord]) -> String {
    // One attempt reads like `openai/gpt-4o main/k0 200 12ms`: sized for that, no regrowth.
    // Built with `push_str` and `itoa`: this runs on every response, and the formatting
    // machinery cost several times the copying.
    let mut out = String::with_capacity(64 * attempts.len());
    let (mut num, mut status_num) = (itoa::Buffer::new(), itoa::Buffer::new());
    for (i, a) in attempts.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&a.target);
        out.push(' ');
        out.push_str(&a.connection);
        let outcome = match (&a.key_id, a.status, a.class) {
            (Some(key), Some(status), _) => Some((key, status_num.format(status))),
            (Some(key), None, Some(class)) => Some((key, class.as_str())),
            _ => None,
        };
        match outcome {
            Some((key, what)) => {
                out.push('/');
                out.push_str(key);
                out.push(' ');
                out.push_str(what);
                out.push(' ');
                out.push_str(num.format(a.millis));
                out.push_str("ms");
            }
            None => out.push_str(" skipped"),
        }
        if let Some(t) = a.translation {
            out.push_str(" via ");
            out.push_str(t);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcome::OutcomeClass;

    fn record(target: &str, conn: &str) -> AttemptRecord {
        AttemptRecord::new(target.into(), "p".into(), "m".into(), conn.into())
    }

    #[tokio::test(start_paused = true)]
    async fn within_answers_ready_futures_and_bounds_pending_ones() {
        let limit = std::time::Duration::from_secs(5);
        let start = tokio::time::Instant::now();
        assert_eq!(within(limit, async { 7 }).await, Some(7));
        assert_eq!(start.elapsed(), std::time::Duration::ZERO);
        assert_eq!(within(limit, std::future::pending::<()>()).await, None);
        assert_eq!(start.elapsed(), limit);
        // Pending at first, done before the limit: its output, after its own wait.
        let start = tokio::time::Instant::now();
        let slow = async {
            tokio::time::sleep(std::time::Duration::from_secs(3)).await;
            "late"
        };
        assert_eq!(within(limit, slow).await, Some("late"));
        assert_eq!(start.elapsed(), std::time::Duration::from_secs(3));
    }

    #[test]
    fn request_ids_are_time_ordered_uuid_v7_in_simple_form() {
        let ids: Vec<RequestId> = (0..64).map(|_| RequestId::new()).collect();
        for pair in ids.windows(2) {
            assert!(
                pair[0].as_str() < pair[1].as_str(),
                "{} then {}",
                pair[0],
                pair[1]
            );
        }
        let id = ids[0].as_str();
        assert_eq!(id.len(), 32);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        let parsed = uuid::Uuid::parse_str(id).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
        assert_eq!(ids[0].to_string(), id);
    }

    #[test]
    fn trace_header_lists_attempts_skips_and_translations() {
        let skipped = record("openai/gpt-4o", "main");
        let mut limited = record("openai/gpt-4o", "backup");
        limited.key_id = Some("k1".into());
        limited.status = Some(429);
        limited.class = Some(OutcomeClass::RateLimited);
        limited.millis = 7;
        let mut timed_out = record("groq/llama", "main");
        timed_out.key_id = Some("k0".into());
        timed_out.class = Some(OutcomeClass::Timeout);
        timed_out.millis = 30000;
        let mut served = record("anthropic/claude", "main");
        served.key_id = Some("k2".into());
        served.status = Some(200);
        served.class = Some(OutcomeClass::Ok);
        served.millis = 12;
        served.translation = Some("chat-to-messages");
        assert_eq!(
            trace_header(&[skipped, limited, timed_out, served]),
            "openai/gpt-4o main skipped, openai/gpt-4o backup/k1 429 7ms, \
             groq/llama main/k0 timeout 30000ms, \
             anthropic/claude main/k2 200 12ms via chat-to-messages"
        );
    }
}
