//! The admin listener (separate from the proxy's): `/metrics` (Prometheus), `/healthz`,
//! `/readyz`, `GET /admin/state`, `POST /admin/reload`, `POST /admin/unlock`,
//! `GET /admin/explain`. Everything but the health probes needs `Authorization: Bearer
//! <admin token>`, unless the config allows loopback clients without one.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::format::ApiFormat;
use crate::keys::Scopes;
use crate::metrics as m;
use crate::policy::explain::{explain, ExplainRequest};
use crate::reload::Reloader;
use crate::runtime::Runtime;
use crate::server::conn::{ConnSettings, Connections, Handler};

type AdminBody = Full<Bytes>;

pub struct Admin {
    runtime: Arc<Runtime>,
    reloader: Arc<Reloader>,
    prometheus: PrometheusHandle,
}

/// A bound admin listener.
pub struct AdminServer {
    listener: TcpListener,
    admin: Arc<Admin>,
}

impl AdminServer {
    pub async fn bind(
        addr: SocketAddr,
        runtime: Arc<Runtime>,
        reloader: Arc<Reloader>,
        prometheus: PrometheusHandle,
    ) -> std::io::Result<Self> {
        Ok(Self {
            listener: crate::server::conn::bind(addr)?,
            admin: Arc::new(Admin {
                runtime,
                reloader,
                prometheus,
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves. The admin listener has the proxy's deadlines
    /// and header limit, and a small connection cap of its own.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let snap = self.admin.runtime.snapshot();
        let settings = ConnSettings {
            max_connections: ADMIN_MAX_CONNECTIONS,
            ..crate::server::settings(&snap.config.server, &snap.config.timeouts)
        };
        drop(snap);
        let stop = CancellationToken::new();
        let serving = tokio::spawn(Connections::new("admin", settings).serve(
            self.listener,
            None,
            self.admin,
            stop.clone(),
            std::time::Duration::from_secs(1),
            None,
        ));
        shutdown.await;
        stop.cancel();
        let _ = serving.await;
    }
}

/// Scrapers, probes and operators: a few connections at a time.
const ADMIN_MAX_CONNECTIONS: usize = 64;

impl Handler for Admin {
    type Body = AdminBody;
    type Error = Infallible;

    fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<AdminBody>> + Send {
        Admin::handle(self, req, peer)
    }
}

fn json_response(status: StatusCode, body: Value) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, message: &str) -> Response<AdminBody> {
    json_response(
        status,
        json!({ "error": { "message": message, "code": status.as_u16() } }),
    )
}

impl Admin {
    fn authorized(&self, req: &Request<Incoming>, peer: SocketAddr) -> bool {
        let snap = self.runtime.snapshot();
        let Some(admin) = &snap.config.admin else {
            return false;
        };
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            });
        if let (Some(token), Some(p)) = (&admin.token, presented) {
            let a: [u8; 32] = Sha256::digest(token.expose().as_bytes()).into();
            let b: [u8; 32] = Sha256::digest(p.trim().as_bytes()).into();
            if bool::from(a.ct_eq(&b)) {
                return true;
            }
        }
        admin.allow_loopback_without_token && peer.ip().is_loopback()
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<AdminBody> {
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => {
                return json_response(StatusCode::OK, json!({ "status": "ok" }))
            }
            (&Method::GET, "/readyz") => {
                let ready = self.runtime.is_ready();
                let status = if ready {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                return json_response(status, json!({ "ready": ready }));
            }
            _ => {}
        }
        if !self.authorized(&req, peer) {
            return error(
                StatusCode::UNAUTHORIZED,
                "send `Authorization: Bearer <admin token>`",
            );
        }
        match (req.method(), path.as_str()) {
            (&Method::GET, "/metrics") => {
                if let Some(shared) = self.runtime.quota.shared() {
                    let last = shared.last_sync_ms();
                    let lag = self.runtime.quota.now_ms().saturating_sub(last);
                    metrics::gauge!(crate::metrics::STATE_SYNC_LAG).set(lag as f64 / 1000.0);
                }
                self.metrics()
            }
            (&Method::GET, "/admin/state") => json_response(StatusCode::OK, self.state()),
            (&Method::POST, "/admin/reload") => self.reload().await,
            (&Method::POST, "/admin/unlock") => self.unlock(req).await,
            (&Method::GET, "/admin/explain") => self.explain(req.uri().query().unwrap_or("")),
            (_, "/metrics" | "/admin/state" | "/admin/explain") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "use GET")
            }
            (_, "/admin/reload" | "/admin/unlock") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "use POST")
            }
            _ => error(StatusCode::NOT_FOUND, "unknown admin path"),
        }
    }

    fn metrics(&self) -> Response<AdminBody> {
        // Key health is a point-in-time view: computed at scrape.
        let snap = self.runtime.snapshot();
        let quota = &self.runtime.quota;
        for p in &snap.config.providers {
            for c in &p.connections {
                for k in &c.keys {
                    let healthy = !quota.is_locked(k.scope()) && !quota.is_locked(c.scope());
                    metrics::gauge!(m::KEY_HEALTH, "provider" => p.id.clone(), "connection" => c.id.clone(), "key" => k.id.clone())
                        .set(if healthy { 1.0 } else { 0.0 });
                }
            }
        }
        // Requests whose metrics a serving thread has not recorded yet are recorded now.
        crate::proxy::metered::run_all_deferred();
        let mut r = Response::new(Full::new(Bytes::from(crate::metrics::render(
            &self.prometheus,
        ))));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    fn state(&self) -> Value {
        let snap = self.runtime.snapshot();
        let quota = &self.runtime.quota;
        let now = quota.now_ms();
        let lock_json = |scope: &str| {
            quota.lock(scope).map(|l| {
                json!({ "scope": scope, "remaining_s": (l.until_ms.saturating_sub(now)) as f64 / 1000.0, "reason": l.reason })
            })
        };
        let locks = quota.active_locks();
        let providers: Vec<Value> = snap
            .config
            .providers
            .iter()
            .map(|p| {
                let conns: Vec<Value> = p
                    .connections
                    .iter()
                    .map(|c| {
                        let pool = self.runtime.keys.pool(c);
                        let keys: Vec<Value> = c
                            .keys
                            .iter()
                            .enumerate()
                            .map(|(i, k)| {
                                let key_scope = Scopes::key(c, k);
                                let prefix = format!("{key_scope}@");
                                let key_locks: Vec<Value> = locks
                                    .iter()
                                    .filter(|(s, _)| *s == key_scope || s.starts_with(&prefix))
                                    .filter_map(|(s, _)| lock_json(s))
                                    .collect();
                                json!({
                                    "id": k.id,
                                    "fingerprint": k.secret.fingerprint(),
                                    "weight": k.weight,
                                    "selected": pool.selected(i),
                                    "healthy": key_locks.is_empty(),
                                    "failure_streak": quota.streak(&key_scope),
                                    "locks": key_locks,
                                })
                            })
                            .collect();
                        let conn_scope = Scopes::connection(c);
                        json!({
                            "id": c.id,
                            "rotation_position": pool.position(),
                            "cooling": lock_json(&conn_scope),
                            "failure_streak": quota.streak(&conn_scope),
                            "keys": keys,
                        })
                    })
                    .collect();
                let models: Vec<Value> = p
                    .models
                    .iter()
                    .map(|m| json!({ "name": m, "capabilities": snap.config.capabilities.resolve(p, m) }))
                    .collect();
                json!({
                    "id": p.id,
                    "kind": p.kind.as_str(),
                    "base_url": p.base_url.to_string(),
                    "formats": p.formats.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
                    "translate": p.translate,
                    "models": models,
                    "connections": conns,
                })
            })
            .collect();
        json!({
            "policy": {
                "source": snap.policy.source.to_string(),
                "hash": snap.policy.hash,
                "loaded_at_ms": snap.policy.loaded_at_ms,
                "routes": snap.policy.router().table().len(),
                // Hooks that only delegate to a native run it directly (no script call).
                "native_hooks": snap.policy.native_hooks().into_iter()
                    .map(|(hook, native)| (hook.to_string(), Value::from(native)))
                    .collect::<serde_json::Map<String, Value>>(),
            },
            "config": snap.config.path.display().to_string(),
            "ready": self.runtime.is_ready(),
            "providers": providers,
            // The model capability table translated routes consult, most precedent first.
            "capabilities": snap.config.capabilities.entries().iter().map(|e| e.to_json()).collect::<Vec<_>>(),
            "locks": locks.iter().map(|(s, l)| json!({
                "scope": s, "remaining_s": l.until_ms.saturating_sub(now) as f64 / 1000.0, "reason": l.reason
            })).collect::<Vec<_>>(),
            "streaks": quota.streaks().into_iter().map(|(s, n)| json!({ "scope": s, "count": n })).collect::<Vec<_>>(),
            "windows": quota.windows().into_iter().map(|(c, w, n)| {
                let fleet = quota.shared().map(|_| quota.count(&c, w));
                let mut v = json!({ "counter": c, "window_s": w / 1000, "count": n });
                if let Some(fleet) = fleet {
                    v["fleet_count"] = fleet.into();
                }
                v
            }).collect::<Vec<_>>(),
            "state": state_json(&snap.config.state, quota),
            // Keep-alive connections to upstreams waiting in the pool for the next request.
            "upstream_idle_connections": self.runtime.upstream.idle_connections(),
            // Client connections open on each serving thread.
            "workers": self.runtime.serving_threads().map(|w| w.open()),
        })
    }

    async fn reload(&self) -> Response<AdminBody> {
        let r = self.reloader.clone();
        match tokio::task::spawn_blocking(move || r.reload("admin")).await {
            Ok(report) => {
                let status = if report.result == "error" {
                    StatusCode::UNPROCESSABLE_ENTITY
                } else {
                    StatusCode::OK
                };
                json_response(status, serde_json::to_value(&report).unwrap_or(Value::Null))
            }
            Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the reload task failed"),
        }
    }

    async fn unlock(&self, req: Request<Incoming>) -> Response<AdminBody> {
        let body = match Limited::new(req.into_body(), 64 * 1024).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::BAD_REQUEST, "could not read the body"),
        };
        let scope = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["scope"].as_str().map(str::to_string));
        let Some(scope) = scope else {
            return error(
                StatusCode::BAD_REQUEST,
                "send {\"scope\": \"key:provider/connection/key\"} (see GET /admin/state)",
            );
        };
        let quota = &self.runtime.quota;
        let unlocked = quota.unlock(&scope);
        let streak = quota.streak(&scope);
        quota.clear_streak(&scope);
        tracing::info!(%scope, unlocked, "admin unlock");
        let mut answer = json!({ "scope": scope, "unlocked": unlocked, "cleared_streak": streak });
        if let Some(shared) = quota.shared() {
            // Every replica's copy goes too: now, or once Redis is back.
            answer["fleet"] = if shared.is_healthy() {
                "sent"
            } else {
                "queued"
            }
            .into();
        }
        json_response(StatusCode::OK, answer)
    }

    fn explain(&self, query: &str) -> Response<AdminBody> {
        let params: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
            .into_owned()
            .collect();
        let Some(model) = params.get("model") else {
            return error(
                StatusCode::BAD_REQUEST,
                "add ?model=NAME (and optionally &client=NAME&endpoint=messages)",
            );
        };
        let format = match params.get("endpoint").map(String::as_str) {
            None => ApiFormat::OpenAiChat,
            Some(name) => match ApiFormat::parse(name) {
                Some(f) => f,
                None => {
                    let msg = format!("endpoint is one of {}", ApiFormat::names());
                    return error(StatusCode::BAD_REQUEST, &msg);
                }
            },
        };
        let snap = self.runtime.snapshot();
        let req = ExplainRequest {
            model: model.clone(),
            client: params
                .get("client")
                .cloned()
                .unwrap_or_else(|| "admin".into()),
            format,
            stream: false,
            headers: http::HeaderMap::new(),
        };
        // Live locks, but a detached copy of the rotation state: explaining moves no cursor.
        let keys = self.runtime.keys.detached();
        match explain(&snap.policy, &snap.config, &keys, &req) {
            Ok(ex) => json_response(
                StatusCode::OK,
                serde_json::to_value(ex).unwrap_or(Value::Null),
            ),
            Err(e) => error(StatusCode::UNPROCESSABLE_ENTITY, &e.to_string()),
        }
    }
}

/// `/admin/state`'s `state` section: where locks, windows and streaks live, and how the
/// shared backend is doing.
fn state_json(config: &crate::config::StateConfig, quota: &crate::quota::QuotaState) -> Value {
    let Some(shared) = quota.shared() else {
        return json!({ "backend": config.backend(), "healthy": true, "replicas": 1 });
    };
    let last = shared.last_sync_ms();
    json!({
        "backend": "redis",
        "url": shared.display_url,
        "healthy": shared.is_healthy(),
        "replica_id": shared.replica_id,
        "replicas": shared.replicas(),
        "last_sync_age_ms": (last > 0).then(|| quota.now_ms().saturating_sub(last)),
        "outbox": shared.outbox_len(),
        "outbox_dropped": shared.dropped(),
        "lock_version": shared.lock_version(),
        "resyncs": shared.resyncs(),
    })
}
