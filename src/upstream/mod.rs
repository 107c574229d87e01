//! The outbound side: the connection pool (HTTP/1.1 keep-alive, rustls; see `pool`) and
//! the request builder
//! that injects a provider's auth, strips hop-by-hop and client-credential headers, and
//! rewrites nothing else. The outbound host always comes from config.

mod headers;
mod pool;
pub mod redact;

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Request, Response};
use http_body_util::Full;
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::config::{ApiKey, Provider, ProviderKind, Timeouts};
use crate::format::ApiFormat;

pub use headers::filter_response_headers;
pub use pool::PooledBody as UpstreamBody;

/// Why an upstream call produced no response headers. Never carries a key.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// 504: no response headers within `timeouts.upstream_headers`.
    #[error("no response headers within {0:?}")]
    HeadersTimeout(Duration),
    /// 502: connect failed, TLS failed, or the connection was reset.
    #[error("{0}")]
    Network(String),
    /// 500: the request could not be built (should not happen with a validated config).
    #[error("cannot build upstream request: {0}")]
    Build(String),
}

/// The shared outbound client.
#[derive(Clone)]
pub struct Upstream {
    pool: std::sync::Arc<pool::Pool>,
}

impl Upstream {
    pub fn new(timeouts: &Timeouts) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeouts.upstream_connect));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Self {
            pool: pool::Pool::new(connector),
        }
    }

    /// Idle upstream connections kept for reuse.
    pub fn idle_connections(&self) -> usize {
        self.pool.idle()
    }

    /// Sends the request and waits at most `headers_timeout` for response headers.
    /// Dropping the returned future drops the upstream request and its connection.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        headers_timeout: Duration,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        match self.pool.send(req, headers_timeout).await {
            Ok(resp) => Ok(resp),
            Err(pool::SendError::TimedOut) => Err(UpstreamError::HeadersTimeout(headers_timeout)),
            Err(e) => Err(UpstreamError::Network(describe(&e))),
        }
    }
}

/// A readable cause chain for a send error ("connection refused", "tls handshake eof").
fn describe(e: &pool::SendError) -> String {
    let (mut msg, first): (String, Option<&dyn std::error::Error>) = match e {
        pool::SendError::Connect(e) => ("connect failed: ".into(), Some(e.as_ref())),
        pool::SendError::Request(e) => ("request failed: ".into(), Some(e)),
        pool::SendError::NoOrigin => ("request has no upstream origin".into(), None),
        pool::SendError::TimedOut => ("no response head in time".into(), None),
    };
    if let Some(first) = first {
        msg.push_str(&first.to_string());
    }
    let mut src = first.and_then(std::error::Error::source);
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    msg
}

/// Builds the outbound request for `provider`: URL from config, the provider's auth for
/// `key`, the client's headers minus hop-by-hop and credential headers, and `body` as is.
/// The client's query string is appended unless the provider sets `forward_query = false`.
pub fn build_request(
    provider: &Provider,
    format: ApiFormat,
    key: &ApiKey,
    client_headers: &HeaderMap,
    query: Option<&str>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    build(
        provider,
        http::Method::POST,
        format.upstream_path(),
        key,
        client_headers,
        query,
        body,
    )
}

/// A request for `method` and an API path under the provider's base URL.
pub fn build(
    provider: &Provider,
    method: http::Method,
    api_path: &str,
    key: &ApiKey,
    client_headers: &HeaderMap,
    query: Option<&str>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let query = query.filter(|q| provider.forward_query && !q.is_empty());
    let uri = provider
        .base_url
        .join(api_path, query)
        .map_err(|e| UpstreamError::Build(e.to_string()))?;
    let has_body = !body.is_empty();
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(Full::new(body))
        .map_err(|e| UpstreamError::Build(e.to_string()))?;
    let headers = req.headers_mut();
    // Room for the client's headers and the few added here: no growth while filling.
    headers.reserve(client_headers.len() + 4);
    headers::copy_request_headers(client_headers, headers);
    match provider.kind {
        ProviderKind::Anthropic => {
            headers.insert("x-api-key", key.auth.clone());
            if !headers.contains_key("anthropic-version") {
                let v = HeaderValue::try_from(provider.anthropic_version.as_str())
                    .map_err(|e| UpstreamError::Build(e.to_string()))?;
                headers.insert("anthropic-version", v);
            }
        }
        ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
            headers.insert(header::AUTHORIZATION, key.auth.clone());
        }
    }
    headers.insert(header::HOST, provider.base_url.host.clone());
    if has_body {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    } else {
        headers.remove(header::CONTENT_TYPE);
    }
    Ok(req)
}
