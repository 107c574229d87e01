//! The long-lived core: registries that outlive any snapshot (quota locks and windows, key
//! rotation state, the outbound client) and the current [`Snapshot`] (config, client auth,
//! policy), swapped whole and atomically. A request loads the snapshot once and finishes on
//! it, whatever reloads happen meanwhile.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::Config;
use crate::keys::KeyRegistry;
use crate::policy::{Policy, PolicyLoadError};
use crate::proxy::ClientAuth;
use crate::quota::{Clock, QuotaState};
use crate::upstream::redact::Redactor;
use crate::upstream::Upstream;

/// What one request sees, consistently.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub auth: Arc<ClientAuth>,
    pub policy: Arc<Policy>,
    /// The config's upstream secrets, for scrubbing what upstreams send back.
    pub redactor: Arc<Redactor>,
}

pub struct Runtime {
    snapshot: ArcSwap<Snapshot>,
    /// Set while the proxy listener accepts connections (for `/readyz`).
    ready: std::sync::atomic::AtomicBool,
    pub quota: Arc<QuotaState>,
    pub keys: KeyRegistry,
    pub upstream: Upstream,
    /// The proxy listener's serving threads, while it serves.
    serving: std::sync::Mutex<std::sync::Weak<crate::server::workers::Workers>>,
}

impl Runtime {
    /// Loads the policy the config names and builds the registries.
    pub fn new(config: Arc<Config>, clock: Arc<dyn Clock>) -> Result<Self, PolicyLoadError> {
        let quota = Arc::new(QuotaState::new(clock));
        let policy = Arc::new(Policy::load(&config, quota.clone())?);
        Ok(Self {
            ready: std::sync::atomic::AtomicBool::new(false),
            keys: KeyRegistry::new(&config),
            upstream: Upstream::new(&config.timeouts),
            serving: std::sync::Mutex::new(std::sync::Weak::new()),
            snapshot: ArcSwap::from_pointee(Snapshot {
                auth: Arc::new(ClientAuth::new(&config.auth)),
                redactor: Arc::new(Redactor::new(&config)),
                config,
                policy,
            }),
            quota,
        })
    }

    /// Records the proxy listener's serving threads (for `/admin/state`).
    pub fn set_serving_threads(&self, workers: &Arc<crate::server::workers::Workers>) {
        *self.serving.lock().unwrap_or_else(|p| p.into_inner()) = Arc::downgrade(workers);
    }

    /// The proxy listener's serving threads, if it is serving.
    pub fn serving_threads(&self) -> Option<Arc<crate::server::workers::Workers>> {
        self.serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .upgrade()
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, std::sync::atomic::Ordering::SeqCst);
    }

    /// True once config and policy are loaded and the proxy listener is serving (and,
    /// with `[state] required = true`, once shared state has synced with Redis).
    pub fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::SeqCst)
            && self.quota.shared().is_none_or(|s| s.ready())
    }

    /// The current snapshot; hold it for the whole request.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// Installs a new policy for the current config.
    pub fn install_policy(&self, policy: Arc<Policy>) {
        let current = self.snapshot.load();
        self.snapshot.store(Arc::new(Snapshot {
            config: current.config.clone(),
            // Same config: the client keys' digests and the secrets are still valid.
            auth: current.auth.clone(),
            redactor: current.redactor.clone(),
            policy,
        }));
    }

    /// Installs a new config with its policy; key state carries over by key id.
    pub fn install_config(&self, config: Arc<Config>, policy: Arc<Policy>) {
        let previous = self.snapshot.load_full();
        self.keys.rebuild(Some(&previous.config), &config);
        self.snapshot.store(Arc::new(Snapshot {
            auth: Arc::new(ClientAuth::new(&config.auth)),
            redactor: Arc::new(Redactor::new(&config)),
            config,
            policy,
        }));
    }
}
