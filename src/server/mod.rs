//! Listeners: accept under a connection cap, optional TLS handshake (bounded), HTTP/1.1 +
//! HTTP/2 on one port via hyper-util's auto builder, a deadline for every idle phase
//! ([`conn`]), and graceful shutdown that drains in-flight requests and streams up to a
//! deadline.

pub mod conn;
pub mod tls;
pub mod workers;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ServerConfig, Timeouts};
use crate::policy::PolicyLoadError;
use crate::proxy::Proxy;
use crate::quota::{Clock, SystemClock};
use crate::runtime::Runtime;
use conn::{ConnSettings, Connections};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("policy: {0}")]
    Policy(#[from] PolicyLoadError),
}

/// A bound proxy listener, ready to [`run`](Server::run).
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    certs: Option<Arc<tls::CertStore>>,
    proxy: Arc<Proxy>,
    timeouts: Timeouts,
}

impl Server {
    /// Binds the configured address, loads TLS material and the policy; nothing is served yet.
    pub async fn bind(config: Arc<Config>) -> Result<Self, ServerError> {
        Self::bind_with_clock(config, Arc::new(SystemClock)).await
    }

    /// [`bind`](Self::bind) with a given clock (tests drive lock windows with a manual one).
    pub async fn bind_with_clock(
        config: Arc<Config>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ServerError> {
        let runtime = Arc::new(Runtime::new(config.clone(), clock)?);
        if let crate::config::StateConfig::Redis(state) = &config.state {
            crate::state::redis::start(&runtime.quota, state);
        }
        let addr = config.server.listen;
        let listener = conn::bind(addr).map_err(|source| ServerError::Bind { addr, source })?;
        let certs = match &config.server.tls {
            Some(files) => Some(Arc::new(tls::CertStore::load(files)?)),
            None => None,
        };
        Ok(Self {
            listener,
            tls: certs
                .clone()
                .map(|c| TlsAcceptor::from(tls::server_config(c))),
            certs,
            timeouts: config.timeouts,
            proxy: Arc::new(Proxy::new(runtime)),
        })
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        self.proxy.runtime()
    }

    /// The reloader for this server's config file, runtime and certificate.
    pub fn reloader(&self, config_path: &std::path::Path) -> crate::reload::Reloader {
        crate::reload::Reloader::new(
            self.runtime().clone(),
            config_path.to_path_buf(),
            self.certs.clone(),
        )
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting and drains open connections
    /// for up to `timeouts.shutdown_drain`.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let config = self.runtime().snapshot().config.clone();
        let conns = Connections::new("proxy", settings(&config.server, &self.timeouts));
        let stop = CancellationToken::new();
        let workers = match workers::Workers::start(config.server.workers) {
            Ok(w) => {
                let w = Arc::new(w);
                self.runtime().set_serving_threads(&w);
                Some(w)
            }
            Err(e) => {
                // Serving on the main runtime is slower, never wrong.
                tracing::error!(error = %e, "cannot start the serving threads; serving on the main runtime");
                None
            }
        };
        let serving = tokio::spawn(conns.serve(
            self.listener,
            self.tls,
            self.proxy.clone(),
            stop.clone(),
            self.timeouts.shutdown_drain,
            workers,
        ));
        self.proxy.runtime().set_ready(true);
        shutdown.await;
        self.proxy.runtime().set_ready(false);
        tracing::info!("shutting down");
        stop.cancel();
        let _ = serving.await;
    }
}

/// Connection limits and deadlines for the proxy listener.
pub fn settings(server: &ServerConfig, t: &Timeouts) -> ConnSettings {
    ConnSettings {
        max_connections: server.max_connections,
        tls_handshake: t.tls_handshake,
        first_request: t.request_header,
        idle: t.idle,
        max_header_bytes: server.max_header_bytes,
    }
}

impl conn::Handler for Proxy {
    type Body = crate::proxy::body::ProxyBody;
    type Error = crate::proxy::body::BoxError;

    fn handle(
        &self,
        req: http::Request<hyper::body::Incoming>,
        _peer: SocketAddr,
    ) -> impl Future<Output = http::Response<Self::Body>> + Send {
        Proxy::handle(self, req)
    }
}
