//! The request path: authenticate → parse → route (policy) → attempt loop → respond.
//!
//! [`Proxy::handle`] never fails: every error becomes a response in the caller's dialect,
//! and every response carries `x-keyway-request-id` and an `x-keyway-attempts` trace.

mod attempt;
mod auth;
pub mod body;
pub mod error;
mod metered;
mod models;
pub mod request;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::policy::{RequestInfo, RequestView};
use crate::runtime::{Runtime, Snapshot};

pub use attempt::AttemptRecord;
pub use auth::{ClientAuth, ANONYMOUS};
use body::ProxyBody;
use error::ProxyError;
use request::{Endpoint, ParsedBody};

/// Header carrying the request's id on every response.
pub const REQUEST_ID_HEADER: &str = "x-keyway-request-id";
/// Header carrying the compact trace of upstream attempts.
pub const ATTEMPTS_HEADER: &str = "x-keyway-attempts";

/// The proxy's request handler.
pub struct Proxy {
    runtime: Arc<Runtime>,
}

/// What is known about a request as it moves through the path; logged once at the end.
struct RequestLog {
    id: String,
    client: Option<String>,
    model: Option<String>,
    endpoint: &'static str,
    attempts: Vec<AttemptRecord>,
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
        let dialect = request::dialect_for_path(req.uri().path());
        let mut log = RequestLog {
            id: uuid::Uuid::now_v7().simple().to_string(),
            client: None,
            model: None,
            endpoint: "other",
            attempts: Vec::new(),
        };
        // One snapshot for the whole request, whatever reloads happen meanwhile.
        let snap = self.runtime.snapshot();
        let mut resp = match self.serve(&snap, req, &mut log).await {
            Ok(resp) => resp,
            Err(e) => {
                tracing::debug!(request_id = %log.id, error = %e, "request refused");
                e.into_response(dialect)
            }
        };
        let headers = resp.headers_mut();
        if let Ok(v) = HeaderValue::try_from(log.id.as_str()) {
            headers.insert(REQUEST_ID_HEADER, v);
        }
        if !log.attempts.is_empty() {
            if let Ok(v) = HeaderValue::try_from(trace_header(&log.attempts)) {
                headers.insert(ATTEMPTS_HEADER, v);
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
            (Some(_), true, false) => metered::UsageScan::Json(Vec::new()),
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
            status: status.as_u16(),
            started,
            headers_after,
            served: served.map(|(p, m)| {
                let label = router.model_label(&m).to_string();
                (p, label)
            }),
            stream: is_sse,
            attempts: std::mem::take(&mut log.attempts),
            id: std::mem::take(&mut log.id),
        };
        resp.map(|body| metered::MeteredBody::new(body, completion, scan).boxed_unsync())
    }

    async fn serve(
        &self,
        snap: &Snapshot,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let endpoint = request::endpoint(req.method(), req.uri().path())?;
        log.endpoint = match endpoint {
            Endpoint::Models => "models",
            Endpoint::Api(f) => f.as_str(),
        };
        let client = snap
            .auth
            .authenticate(req.headers())
            .ok_or(ProxyError::Unauthorized)?;
        log.client = Some(client.to_string());
        let format = match endpoint {
            Endpoint::Models => return Ok(models::list(&snap.config, req.headers())),
            Endpoint::Api(format) => format,
        };
        let (parts, body) = req.into_parts();
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
        let info = RequestView(Arc::new(RequestInfo {
            model: parsed.model.clone(),
            format,
            stream: parsed.stream,
            client: client.to_string(),
            headers: parts.headers.clone(),
            max_tokens: parsed.max_tokens,
            input_tokens: parsed.len() as u64 / 4,
        }));
        let ctx = attempt::AttemptContext {
            snap,
            runtime: &self.runtime,
            format,
            headers: &parts.headers,
            parsed: &parsed,
            req: info,
        };
        let policy = &snap.policy;
        let candidates = match policy.route(&ctx.req) {
            Ok(c) => c,
            Err(e) => ctx.on_policy_error(e, || policy.default_route(&parsed.model))?,
        };
        let targets = policy
            .router()
            .targets(&candidates, format, &parsed.model)?;
        match ctx.run(&targets, &mut log.attempts).await {
            Ok(resp) => Ok(resp),
            Err(Err(e)) => Err(e),
            Err(Ok(exhausted)) => {
                let now = self.runtime.quota.now_ms();
                Err(ProxyError::AllAttemptsFailed {
                    status: attempt::exhausted_status(&log.attempts),
                    retry_after_secs: exhausted
                        .earliest_unlock_ms
                        .map(|u| u.saturating_sub(now).div_ceil(1000).max(1)),
                    attempts: log.attempts.clone(),
                })
            }
        }
    }
}

/// `target conn/key outcome ms` per attempt, `target conn skipped` per skip;
/// comma-separated. Key ids are config names, not secrets.
fn trace_header(attempts: &[AttemptRecord]) -> String {
    let mut out = String::new();
    for (i, a) in attempts.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        match (&a.key_id, a.status, a.class) {
            (Some(key), Some(status), _) => {
                let _ = write!(
                    out,
                    "{} {}/{} {} {}ms",
                    a.target, a.connection, key, status, a.millis
                );
            }
            (Some(key), None, Some(class)) => {
                let _ = write!(
                    out,
                    "{} {}/{} {} {}ms",
                    a.target, a.connection, key, class, a.millis
                );
            }
            _ => {
                let _ = write!(out, "{} {} skipped", a.target, a.connection);
            }
        }
    }
    out
}
