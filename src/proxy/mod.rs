//! The request path: authenticate → parse → route → attempt → respond.
//!
//! [`Proxy::handle`] never fails: every error becomes a response in the caller's dialect,
//! and every response carries `x-keyway-request-id` and an `x-keyway-attempts` trace.

mod auth;
pub mod body;
pub mod error;
mod models;
pub mod request;

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use crate::config::{ApiKey, Config, Connection};
use crate::format::{ApiFormat, Dialect};
use crate::keys::KeyRegistry;
use crate::routing::{self, Target};
use crate::upstream::{self, Upstream};

pub use auth::ANONYMOUS;
use body::{ProxyBody, RelayBody};
use error::ProxyError;
use request::{Endpoint, ParsedBody};

/// Header carrying the request's id on every response.
pub const REQUEST_ID_HEADER: &str = "x-keyway-request-id";
/// Header carrying the compact trace of upstream attempts.
pub const ATTEMPTS_HEADER: &str = "x-keyway-attempts";

/// The proxy: config snapshot, outbound client, key state and client auth.
pub struct Proxy {
    config: Arc<Config>,
    upstream: Upstream,
    keys: KeyRegistry,
    auth: auth::ClientAuth,
}

/// One upstream attempt, as recorded for the trace header and the request log.
#[derive(Debug, Clone)]
struct Attempt {
    target: String,
    connection: String,
    key_id: String,
    key_fingerprint: String,
    /// Upstream status code, or the failure kind when there was none.
    outcome: String,
    millis: u128,
}

/// What is known about a request as it moves through the path; logged once at the end.
struct RequestLog {
    id: String,
    client: Option<String>,
    model: Option<String>,
    attempts: Vec<Attempt>,
}

impl Proxy {
    pub fn new(config: Arc<Config>) -> Self {
        Self {
            upstream: Upstream::new(&config.timeouts),
            keys: KeyRegistry::new(&config),
            auth: auth::ClientAuth::new(&config.auth),
            config,
        }
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
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
            attempts: Vec::new(),
        };
        let method = req.method().clone();
        let path = req.uri().path().to_string();
        let mut resp = match self.serve(req, &mut log).await {
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
        tracing::info!(
            target: "keyway::request",
            request_id = %log.id,
            method = %method,
            path = %path,
            client = log.client.as_deref().unwrap_or("-"),
            model = log.model.as_deref().unwrap_or("-"),
            status = resp.status().as_u16(),
            attempts = %trace_header(&log.attempts),
            keys = %log.attempts.iter().map(|a| a.key_fingerprint.as_str()).collect::<Vec<_>>().join(","),
            headers_ms = started.elapsed().as_millis() as u64,
            "request"
        );
        resp
    }

    async fn serve(
        &self,
        req: Request<Incoming>,
        log: &mut RequestLog,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let endpoint = request::endpoint(req.method(), req.uri().path())?;
        let client = self
            .auth
            .authenticate(req.headers())
            .ok_or(ProxyError::Unauthorized)?;
        log.client = Some(client.to_string());
        let format = match endpoint {
            Endpoint::Models => return Ok(models::list(&self.config, req.headers())),
            Endpoint::Api(format) => format,
        };
        let (parts, body) = req.into_parts();
        let t = &self.config.timeouts;
        let raw = request::read_body(
            &parts.headers,
            body,
            self.config.server.max_body_bytes,
            t.request_body,
        )
        .await?;
        let parsed = ParsedBody::parse(raw)?;
        log.model = Some(parsed.model.clone());
        let targets = routing::resolve(&self.config.providers, format, &parsed.model)?;
        // Until the policy engine drives fallback, the first target is the only attempt.
        let target = &targets[0];
        let connection = &target.provider.connections[0];
        let key = self.keys.pool(connection).round_robin(connection);
        self.attempt(
            format,
            &parts.headers,
            &parsed,
            target,
            connection,
            key,
            log,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        format: ApiFormat,
        headers: &http::HeaderMap,
        parsed: &ParsedBody,
        target: &Target,
        connection: &Connection,
        key: &ApiKey,
        log: &mut RequestLog,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let started = Instant::now();
        let provider = &target.provider;
        let record = |outcome: String| Attempt {
            target: target.label(),
            connection: connection.id.clone(),
            key_id: key.id.clone(),
            key_fingerprint: key.secret.fingerprint().to_string(),
            outcome,
            millis: started.elapsed().as_millis(),
        };
        let upstream_err = |source| ProxyError::Upstream {
            provider: provider.id.clone(),
            source,
        };
        let req = upstream::build_request(
            provider,
            format,
            key,
            headers,
            parsed.body_for(&target.model),
        )
        .map_err(upstream_err)?;
        let resp = match self.upstream.send(req).await {
            Ok(resp) => resp,
            Err(e) => {
                let kind = match e {
                    upstream::UpstreamError::HeadersTimeout(_) => "timeout",
                    _ => "network",
                };
                log.attempts.push(record(kind.to_string()));
                return Err(upstream_err(e));
            }
        };
        log.attempts
            .push(record(resp.status().as_u16().to_string()));
        Ok(relay(
            resp,
            provider.id.clone(),
            format.dialect(),
            self.config.timeouts.stream_idle,
        ))
    }
}

/// Turns the upstream response into the client's: same status and headers (filtered), the
/// body relayed frame by frame.
fn relay(
    resp: Response<Incoming>,
    provider: String,
    dialect: Dialect,
    idle: std::time::Duration,
) -> Response<ProxyBody> {
    use http_body_util::BodyExt;
    let (mut parts, body) = resp.into_parts();
    let is_sse = parts
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let sse = (is_sse && parts.status.is_success()).then_some(dialect);
    upstream::filter_response_headers(&mut parts.headers, sse.is_none());
    let body = RelayBody::new(body, provider, idle, sse).boxed_unsync();
    Response::from_parts(parts, body)
}

/// `target conn/key outcome ms` per attempt, comma-separated. Key ids are config names, not secrets.
fn trace_header(attempts: &[Attempt]) -> String {
    let mut out = String::new();
    for (i, a) in attempts.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        let _ = write!(
            out,
            "{} {}/{} {} {}ms",
            a.target, a.connection, a.key_id, a.outcome, a.millis
        );
    }
    out
}
