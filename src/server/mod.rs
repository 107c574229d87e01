//! Listeners: accept, optional TLS handshake (bounded), HTTP/1.1 + HTTP/2 on one port via
//! hyper-util's auto builder, and graceful shutdown that drains in-flight requests and
//! streams up to a deadline.

pub mod tls;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, Timeouts};
use crate::policy::PolicyLoadError;
use crate::proxy::Proxy;
use crate::quota::{Clock, SystemClock};
use crate::runtime::Runtime;

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
        let addr = config.server.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
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
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.timeouts.request_header)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)));
        let graceful = GracefulShutdown::new();
        tokio::pin!(shutdown);
        self.runtime().set_ready(true);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let conn = Connection {
                builder: builder.clone(),
                proxy: self.proxy.clone(),
                tls: self.tls.clone(),
                handshake_timeout: self.timeouts.tls_handshake,
            };
            let watcher = graceful.watcher();
            tokio::spawn(async move { conn.serve(stream, peer, watcher).await });
        }
        self.runtime().set_ready(false);
        drop(self.listener);
        tracing::info!(drain = ?self.timeouts.shutdown_drain, "shutting down: draining open connections");
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections drained"),
            () = tokio::time::sleep(self.timeouts.shutdown_drain) => {
                tracing::warn!("drain deadline passed; closing remaining connections");
            }
        }
    }
}

/// One accepted client connection.
struct Connection {
    builder: auto::Builder<TokioExecutor>,
    proxy: Arc<Proxy>,
    tls: Option<TlsAcceptor>,
    handshake_timeout: Duration,
}

impl Connection {
    async fn serve(
        self,
        stream: TcpStream,
        peer: SocketAddr,
        watcher: hyper_util::server::graceful::Watcher,
    ) {
        let proxy = self.proxy;
        let svc = service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req).await) }
        });
        let result = match self.tls {
            None => {
                let conn = self.builder.serve_connection(TokioIo::new(stream), svc);
                watcher.watch(conn.into_owned()).await
            }
            Some(acceptor) => {
                let tls =
                    match tokio::time::timeout(self.handshake_timeout, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                let conn = self.builder.serve_connection(TokioIo::new(tls), svc);
                watcher.watch(conn.into_owned()).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}
