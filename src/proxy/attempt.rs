//! The attempt loop (DESIGN §1): for each candidate target, each of its connections, and
//! each key the policy selects, forward the request, classify the outcome, and let
//! `on_outcome` decide: return it, or move on. Bounded by `policy.max_attempts`; every
//! attempt (and every candidate skipped for a lock) is recorded for the client's trace.

use std::time::{Duration, Instant};

use crate::upstream::UpstreamBody;
use bytes::Bytes;
use http::{HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;

use super::body::{self, ProxyBody, RelayBody};
use super::error::ProxyError;
use super::request::ParsedBody;
use crate::config::{ApiKey, Connection};
use crate::format::{ApiFormat, Dialect};
use crate::keys::Scopes;
use crate::outcome::{Outcome, OutcomeClass};
use crate::policy::{defaults, AttemptRef, ConnRef, Decision, PolicyError, RequestSource};
use crate::quota::{Lock, QuotaState};
use crate::routing::Target;
use crate::runtime::{Runtime, Snapshot};
use crate::translate::{TranslatedRequest, Translation, DROPPED_HEADER};
use crate::upstream::{self, UpstreamError};

/// Largest upstream error body read for classification (the rest is not needed).
const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// One attempt, or one candidate/connection skipped without an attempt.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub target: String,
    pub provider: String,
    pub model: String,
    /// Time spent waiting on the upstream (send → first body byte or failure).
    pub upstream: Duration,
    pub connection: String,
    pub key_id: Option<String>,
    pub fingerprint: Option<String>,
    pub status: Option<u16>,
    pub class: Option<OutcomeClass>,
    /// Why no attempt was made (a lock), for skipped entries.
    pub skipped: Option<String>,
    /// The skip was caused by a rate-limit or quota lock.
    pub skipped_for_limit: bool,
    pub decision: Option<Decision>,
    pub message: String,
    pub retry_after_ms: Option<u64>,
    pub millis: u64,
    /// The format translation this attempt went through, if any.
    pub translation: Option<&'static str>,
}

impl AttemptRecord {
    /// A record of `target` on `connection` with nothing yet known about the attempt.
    pub fn new(target: String, provider: String, model: String, connection: String) -> Self {
        Self {
            target,
            provider,
            model,
            upstream: Duration::ZERO,
            connection,
            key_id: None,
            fingerprint: None,
            status: None,
            class: None,
            skipped: None,
            skipped_for_limit: false,
            decision: None,
            message: String::new(),
            retry_after_ms: None,
            millis: 0,
            translation: None,
        }
    }
}

/// What the loop needs from the request.
pub struct AttemptContext<'a> {
    pub snap: &'a Snapshot,
    pub runtime: &'a Runtime,
    pub format: ApiFormat,
    pub headers: &'a HeaderMap,
    /// The client's query string, forwarded unless the provider says otherwise.
    pub query: Option<&'a str>,
    pub parsed: &'a ParsedBody,
    pub req: &'a RequestSource<'a>,
}

/// The loop's result when nothing was returned: every record, and the earliest unlock.
pub struct Exhausted {
    pub earliest_unlock_ms: Option<u64>,
}

impl AttemptContext<'_> {
    fn quota(&self) -> &QuotaState {
        &self.runtime.quota
    }

    /// Handles a policy failure: a throw is the client's answer; anything else follows
    /// `policy.on_error`, using `fallback` for `default`.
    pub fn on_policy_error<T>(
        &self,
        e: PolicyError,
        fallback: impl FnOnce() -> T,
    ) -> Result<T, ProxyError> {
        match e {
            PolicyError::Thrown { status, message } => {
                Err(ProxyError::PolicyRejected { status, message })
            }
            PolicyError::Failed { .. } => {
                tracing::warn!(error = %e, "policy call failed");
                match self.snap.policy.on_error() {
                    crate::config::OnError::Default => Ok(fallback()),
                    crate::config::OnError::Reject => Err(ProxyError::PolicyFailed(e.to_string())),
                }
            }
        }
    }

    pub async fn run(
        &self,
        targets: &[Target],
        records: &mut Vec<AttemptRecord>,
    ) -> Result<Response<ProxyBody>, Result<Exhausted, ProxyError>> {
        let mut budget = self.snap.policy.settings.max_attempts;
        let mut earliest: Option<u64> = None;
        let mut note = |until: u64| earliest = Some(earliest.map_or(until, |e: u64| e.min(until)));
        let mut number = 0u32;
        'targets: for target in targets {
            let provider = &target.provider;
            // Scope names are built only when some lock exists (the common case has none).
            let model_lock = if self.quota().has_no_locks() {
                None
            } else {
                self.active_lock(&Scopes::model(&provider.id, &target.model))
            };
            if let Some(lock) = model_lock {
                note(lock.until_ms);
                records.push(skip(target, "-", &lock, "model locked"));
                continue;
            }
            // A request the target's format cannot express is the client's 400, whatever
            // the key: translated once per target, before any attempt.
            let translated = match target.translation {
                None => None,
                Some(t) => {
                    let caps = self
                        .snap
                        .config
                        .capabilities
                        .resolve(provider, &target.model);
                    let info = crate::translate::TargetInfo {
                        model: &target.model,
                        kind: provider.kind,
                        caps: &caps.caps,
                    };
                    Some(
                        t.request(self.parsed.raw(), &info)
                            .map_err(|e| Err(ProxyError::Unsupported(e)))?,
                    )
                }
            };
            let conns = provider
                .connections
                .iter()
                .filter(|c| target.connection.as_ref().is_none_or(|id| &c.id == id));
            for conn in conns {
                let conn_lock = if self.quota().has_no_locks() {
                    None
                } else {
                    self.active_lock(conn.scope())
                };
                if let Some(lock) = conn_lock {
                    note(lock.until_ms);
                    records.push(skip(target, &conn.id, &lock, "connection cooling down"));
                    continue;
                }
                let registered = crate::keys::pool_in(&self.snap.pools, conn);
                let fresh;
                let pool = match registered {
                    Some(pool) => pool,
                    None => {
                        fresh = crate::keys::KeyRegistry::unregistered(conn);
                        &fresh
                    }
                };
                let mut tried: Vec<usize> = Vec::new();
                loop {
                    if budget == 0 {
                        break 'targets;
                    }
                    let view = ConnRef {
                        conn,
                        pool,
                        model: &target.model,
                        tried: &tried,
                    };
                    let selected = match self.snap.policy.select_key(self.req, &view) {
                        Ok(k) => k,
                        Err(e) => self
                            .on_policy_error(e, || defaults::select_key(self.quota(), &view))
                            .map_err(Err)?,
                    };
                    let Some(index) = selected else {
                        if tried.is_empty() {
                            if let Some(lock) = self.earliest_key_unlock(conn, &target.model) {
                                note(lock.until_ms);
                                records.push(skip(target, &conn.id, &lock, "every key locked"));
                            }
                        }
                        break;
                    };
                    budget -= 1;
                    number += 1;
                    tried.push(index);
                    let key = &conn.keys[index];
                    if let Some(c) = pool.metrics.selections.get(index) {
                        c.increment(1);
                    }
                    let started = Instant::now();
                    let (mut outcome, response) =
                        self.try_once(target, conn, key, translated.as_ref()).await;
                    let upstream_wait = started.elapsed();
                    let attempt = AttemptRef::new(number, conn, index, &target.model);
                    let decision =
                        match self
                            .snap
                            .policy
                            .on_outcome(self.req, &attempt, &mut outcome)
                        {
                            Ok(d) => d,
                            Err(e) => self
                                .on_policy_error(e, || {
                                    defaults::on_outcome(self.quota(), &attempt, &outcome)
                                })
                                .map_err(Err)?,
                        };
                    let o = &outcome;
                    if o.class.is_limit() {
                        if let Some(until) = self.key_block_until(conn, key, &target.model) {
                            note(until);
                        }
                    }
                    pool.metrics.attempts[o.class.index()].increment(1);
                    if o.status.is_some() {
                        pool.metrics.ttfb.record(upstream_wait.as_secs_f64());
                    }
                    if decision != Decision::Return {
                        pool.metrics.fallbacks[o.class.index()].increment(1);
                    }
                    // Most requests make one attempt, and the records live as long as the
                    // response (a stream's whole life): room for one, not the default four.
                    if records.capacity() == 0 {
                        records.reserve_exact(1);
                    }
                    records.push(AttemptRecord {
                        target: target.label(),
                        provider: provider.id.clone(),
                        model: target.model.clone(),
                        upstream: upstream_wait,
                        connection: conn.id.clone(),
                        key_id: Some(key.id.clone()),
                        fingerprint: Some(key.secret.fingerprint().to_string()),
                        status: o.status,
                        class: Some(o.class),
                        skipped: None,
                        skipped_for_limit: false,
                        decision: Some(decision),
                        message: o.message.clone(),
                        retry_after_ms: o.retry_after_ms,
                        millis: upstream_wait.as_millis() as u64,
                        translation: target.translation.map(Translation::label),
                    });
                    match (decision, response) {
                        (Decision::Return, Some(resp)) => return Ok(resp),
                        // Nothing to return (no response arrived): keep going.
                        (Decision::Return, None) | (Decision::Next, _) => continue,
                        (Decision::NextConnection, _) => break,
                        (Decision::NextTarget, _) => continue 'targets,
                    }
                }
            }
        }
        Err(Ok(Exhausted {
            earliest_unlock_ms: earliest,
        }))
    }

    fn active_lock(&self, scope: &str) -> Option<Lock> {
        self.quota().lock(scope)
    }

    /// When `key` becomes usable for `model` again, if it is locked now.
    fn key_block(&self, conn: &Connection, key: &ApiKey, model: &str) -> Option<Lock> {
        let a = self.active_lock(key.scope());
        let b = self.active_lock(&Scopes::key_model(conn, key, model));
        match (a, b) {
            (Some(a), Some(b)) => Some(if a.until_ms >= b.until_ms { a } else { b }),
            (a, b) => a.or(b),
        }
    }

    fn key_block_until(&self, conn: &Connection, key: &ApiKey, model: &str) -> Option<u64> {
        self.key_block(conn, key, model).map(|l| l.until_ms)
    }

    /// The lock that ends first among a connection's keys (all of which are locked).
    fn earliest_key_unlock(&self, conn: &Connection, model: &str) -> Option<Lock> {
        conn.keys
            .iter()
            .filter_map(|k| self.key_block(conn, k, model))
            .min_by_key(|l| l.until_ms)
    }

    /// One upstream attempt: the outcome, and the response to give the client if the
    /// policy says "return". A 2xx is committed only once its first body byte arrived.
    async fn try_once(
        &self,
        target: &Target,
        conn: &Connection,
        key: &ApiKey,
        translated: Option<&TranslatedRequest>,
    ) -> (Outcome, Option<Response<ProxyBody>>) {
        let provider = &target.provider;
        let t = &self.snap.config.timeouts;
        let redactor = &self.snap.redactor;
        let scrub = |s: String| redactor.redact_string(s);
        let (upstream_format, body) = match (target.translation, translated) {
            (Some(tr), Some(req)) => (tr.upstream_format(), req.body.clone()),
            _ => {
                let body = self.parsed.body_for(&target.model);
                let body = match self.format {
                    ApiFormat::AnthropicMessages => {
                        crate::translate::strip_synthetic_thinking(&body).unwrap_or(body)
                    }
                    // The upstream sees its own id, without Keyway's routing tag.
                    ApiFormat::OpenAiResponses => match self
                        .parsed
                        .previous_response_id
                        .as_deref()
                        .and_then(super::stored::split)
                    {
                        Some((own, _)) => {
                            let tagged = self.parsed.previous_response_id.as_deref().unwrap_or("");
                            super::stored::untag_body(&body, tagged, own)
                        }
                        None => body,
                    },
                    _ => body,
                };
                (self.format, body)
            }
        };
        let req = match upstream::build_request(
            provider,
            upstream_format,
            key,
            self.headers,
            self.query,
            body,
        ) {
            Ok(mut r) => {
                if target.translation == Some(Translation::MessagesToChat) {
                    // The client's Anthropic protocol headers mean nothing upstream.
                    r.headers_mut().remove("anthropic-version");
                    r.headers_mut().remove("anthropic-beta");
                }
                r
            }
            Err(e) => return (Outcome::failure(OutcomeClass::Network, e.to_string()), None),
        };
        let resp = match self.runtime.upstream.send(req, t.upstream_headers).await {
            Ok(r) => r,
            Err(e @ UpstreamError::HeadersTimeout(_)) => {
                return (Outcome::failure(OutcomeClass::Timeout, e.to_string()), None)
            }
            Err(e) => {
                return (
                    Outcome::failure(OutcomeClass::Network, scrub(e.to_string())),
                    None,
                )
            }
        };
        let status = resp.status();
        let (mut parts, mut body) = resp.into_parts();
        let dialect = self.format.dialect();
        if status.is_success() {
            let first = match super::within(t.stream_idle, body.frame()).await {
                None => {
                    let msg = format!("no response body within {:?}", t.stream_idle);
                    return (Outcome::failure(OutcomeClass::Timeout, msg), None);
                }
                Some(Some(Err(e))) => {
                    let msg = scrub(format!("response broke before its first byte: {e}"));
                    return (Outcome::failure(OutcomeClass::Network, msg), None);
                }
                Some(Some(Ok(frame))) => frame.into_data().ok(),
                Some(None) => None,
            };
            let outcome = Outcome::from_response_with(
                status,
                &parts.headers,
                "",
                // A 2xx is class `ok`, which has no wait to compute: no clock read.
                0,
                self.snap.policy.scripts_on_outcome(),
            );
            redactor.redact_headers(&mut parts.headers);
            if let (Some(tr), Some(req)) = (target.translation, translated) {
                return match self
                    .translated_success(tr, parts, body, first, provider, req)
                    .await
                {
                    Ok(resp) => (outcome, Some(resp)),
                    Err(failure) => (failure, None),
                };
            }
            // Response ids name the connection that created them (see `stored`).
            let tagger = (self.format == ApiFormat::OpenAiResponses).then(|| {
                Box::new(super::stored::IdTagger::new(super::stored::tag(
                    &provider.id,
                    &conn.id,
                ))) as Box<dyn crate::translate::StreamTranslator>
            });
            let resp = relay(
                parts,
                body,
                first,
                provider.id.clone(),
                RelayLimits {
                    dialect,
                    idle: t.stream_idle,
                    max_event: self.snap.config.server.max_sse_event_bytes,
                },
                tagger,
            );
            return (outcome, Some(resp));
        }
        let text = read_error_body(&mut body, t.stream_idle).await;
        // The body as the client will see it, should the policy return it: secrets out.
        let text = match redactor.redact(&text) {
            Some(clean) => Bytes::from(clean),
            None => text,
        };
        let mut outcome = Outcome::from_response_with(
            status,
            &parts.headers,
            &String::from_utf8_lossy(&text),
            self.quota().now_ms(),
            self.snap.policy.scripts_on_outcome(),
        );
        outcome.cap_wait(&self.snap.config.policy);
        upstream::filter_response_headers(&mut parts.headers);
        redactor.redact_headers(&mut parts.headers);
        let resp = match (target.translation, translated) {
            // The upstream's error, in the client's shape (same class of status).
            (Some(tr), Some(req)) => {
                let (status, text) = tr.error(&text, status.as_u16());
                parts.status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
                parts.headers.insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                with_dropped(Response::from_parts(parts, body::full(text)), req)
            }
            _ => Response::from_parts(parts, body::full(text)),
        };
        (outcome, Some(resp))
    }

    /// A 2xx from a translated route, in the client's format: streams through the
    /// target's state machine, JSON bodies read whole (bounded) and mapped. A body that
    /// breaks before it is whole is a network failure, so another attempt may serve.
    async fn translated_success(
        &self,
        tr: Translation,
        mut parts: http::response::Parts,
        mut body: UpstreamBody,
        first: Option<Bytes>,
        provider: &crate::config::Provider,
        req: &TranslatedRequest,
    ) -> Result<Response<ProxyBody>, Outcome> {
        let t = &self.snap.config.timeouts;
        let created = self.quota().now_ms() / 1000;
        let is_sse = parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
        upstream::filter_response_headers(&mut parts.headers);
        if is_sse {
            let framing = body::SseFraming::new(
                tr.upstream_dialect(),
                self.snap.config.server.max_sse_event_bytes,
            );
            let relay = RelayBody::with_first(
                body,
                first,
                provider.id.clone(),
                t.stream_idle,
                Some(framing),
            );
            let machine = tr.stream(created, req, &self.parsed.model);
            let out = body::TranslatedBody::new(relay, machine).boxed_unsync();
            return Ok(with_dropped(Response::from_parts(parts, out), req));
        }
        let mut whole = first.map(|b| b.to_vec()).unwrap_or_default();
        loop {
            match tokio::time::timeout(t.stream_idle, body.frame()).await {
                Ok(None) => break,
                Ok(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        whole.extend_from_slice(&data);
                    }
                    if whole.len() > TRANSLATED_BODY_LIMIT {
                        let msg = format!("response larger than {TRANSLATED_BODY_LIMIT} bytes");
                        return Err(Outcome::failure(OutcomeClass::Network, msg));
                    }
                }
                Ok(Some(Err(e))) => {
                    let msg = format!("response body broke: {e}");
                    return Err(Outcome::failure(OutcomeClass::Network, msg));
                }
                Err(_) => {
                    let msg = format!("response body stalled for {:?}", t.stream_idle);
                    return Err(Outcome::failure(OutcomeClass::Timeout, msg));
                }
            }
        }
        let mapped = tr.response(&whole, created, req).map_err(|e| {
            Outcome::failure(
                OutcomeClass::Network,
                format!("upstream sent an answer that could not be translated: {e}"),
            )
        })?;
        parts.headers.insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(with_dropped(
            Response::from_parts(parts, body::full(mapped)),
            req,
        ))
    }
}

/// Largest JSON body read whole for translation.
const TRANSLATED_BODY_LIMIT: usize = 64 * 1024 * 1024;

/// Lists the client fields a translated route dropped.
fn with_dropped(mut resp: Response<ProxyBody>, req: &TranslatedRequest) -> Response<ProxyBody> {
    if !req.dropped.is_empty() {
        if let Ok(v) = http::HeaderValue::try_from(req.dropped.join(",")) {
            resp.headers_mut().insert(DROPPED_HEADER, v);
        }
    }
    resp
}

fn skip(target: &Target, connection: &str, lock: &Lock, why: &str) -> AttemptRecord {
    AttemptRecord {
        skipped: Some(format!("{why} ({})", lock.reason)),
        skipped_for_limit: matches!(lock.reason.as_str(), "rate_limited" | "quota_exhausted"),
        translation: target.translation.map(Translation::label),
        ..AttemptRecord::new(
            target.label(),
            target.provider.id.clone(),
            target.model.clone(),
            connection.to_string(),
        )
    }
}

/// Reads at most [`ERROR_BODY_LIMIT`] bytes of an error body, bounded in time.
async fn read_error_body(body: &mut UpstreamBody, idle: Duration) -> Bytes {
    let mut out = Vec::new();
    while out.len() < ERROR_BODY_LIMIT {
        match tokio::time::timeout(idle, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    out.extend_from_slice(&data);
                }
            }
            _ => break,
        }
    }
    out.truncate(ERROR_BODY_LIMIT);
    Bytes::from(out)
}

/// The client's response for a committed 2xx: status and filtered headers, the first
/// frame, then the rest relayed frame by frame.
/// How a relayed stream is framed and cut: its dialect, idle limit and largest event.
struct RelayLimits {
    dialect: Dialect,
    idle: Duration,
    max_event: usize,
}

fn relay(
    mut parts: http::response::Parts,
    body: UpstreamBody,
    first: Option<Bytes>,
    provider: String,
    RelayLimits {
        dialect,
        idle,
        max_event,
    }: RelayLimits,
    rewrite: Option<Box<dyn crate::translate::StreamTranslator>>,
) -> Response<ProxyBody> {
    let is_sse = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let sse = is_sse.then(|| body::SseFraming::new(dialect, max_event));
    upstream::filter_response_headers(&mut parts.headers);
    let relay = RelayBody::with_first(body, first, provider, idle, sse);
    let body = match rewrite {
        Some(machine) => body::TranslatedBody::new(relay, machine).boxed_unsync(),
        None => relay.boxed_unsync(),
    };
    Response::from_parts(parts, body)
}

/// The status for a request whose every attempt failed.
pub fn exhausted_status(records: &[AttemptRecord]) -> StatusCode {
    let real: Vec<_> = records.iter().filter_map(|r| r.class).collect();
    let all_limited = !records.is_empty()
        && records
            .iter()
            .all(|r| r.class.map_or(r.skipped_for_limit, OutcomeClass::is_limit));
    if all_limited {
        StatusCode::TOO_MANY_REQUESTS
    } else if real.is_empty() {
        StatusCode::SERVICE_UNAVAILABLE
    } else if real.iter().all(|c| *c == OutcomeClass::Timeout) {
        StatusCode::GATEWAY_TIMEOUT
    } else {
        StatusCode::BAD_GATEWAY
    }
}
