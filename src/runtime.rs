//! The long-lived core: registries that outlive any snapshot (quota locks and windows, key
//! rotation state, the outbound client) and the current [`Snapshot`] (config, client auth,
//! policy), swapped whole and atomically. A request loads the snapshot once and finishes on
//! it, whatever reloads happen meanwhile.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
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
    /// The key pools of the config's connections (the registry's, as of this snapshot).
    pub pools: Arc<crate::keys::PoolMap>,
}

pub struct Runtime {
    snapshot: ArcSwap<Snapshot>,
    /// Which snapshot is current: unique across every runtime of the process, so that a
    /// thread's cached [`Held`] can never be taken for another runtime's.
    generation: AtomicU64,
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
        let keys = KeyRegistry::new(&config);
        Ok(Self {
            ready: std::sync::atomic::AtomicBool::new(false),
            upstream: Upstream::new(&config.timeouts),
            serving: std::sync::Mutex::new(std::sync::Weak::new()),
            generation: AtomicU64::new(next_generation()),
            snapshot: ArcSwap::from_pointee(Snapshot {
                auth: Arc::new(ClientAuth::new(&config.auth)),
                redactor: Arc::new(Redactor::new(&config)),
                pools: keys.pools(),
                config,
                policy,
            }),
            keys,
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

    /// The current snapshot as a request holds it. Every request on every serving thread
    /// would otherwise write the snapshot's one reference count (twice): the thread keeps
    /// its own reference to the current snapshot, and requests count theirs on it.
    pub fn held_snapshot(&self) -> Held {
        thread_local! {
            static HELD: RefCell<Option<(u64, Arc<ThreadRef>)>> = const { RefCell::new(None) };
        }
        // A generation read before the load: if a reload lands in between, the cached copy
        // is newer than its tag says, and the next request loads again.
        let generation = self.generation.load(Ordering::Acquire);
        HELD.with_borrow_mut(|held| match held {
            Some((g, snap)) if *g == generation => Held(snap.clone()),
            _ => {
                let snap = Arc::new(ThreadRef(self.snapshot.load_full()));
                *held = Some((generation, snap.clone()));
                Held(snap)
            }
        })
    }

    fn store(&self, snapshot: Snapshot) {
        self.snapshot.store(Arc::new(snapshot));
        self.generation.store(next_generation(), Ordering::Release);
    }

    /// Installs a new policy for the current config.
    pub fn install_policy(&self, policy: Arc<Policy>) {
        let current = self.snapshot.load_full();
        self.store(Snapshot {
            config: current.config.clone(),
            // Same config: the client keys' digests and the secrets are still valid.
            auth: current.auth.clone(),
            redactor: current.redactor.clone(),
            pools: current.pools.clone(),
            policy,
        });
    }

    /// Installs a new config with its policy; key state carries over by key id.
    pub fn install_config(&self, config: Arc<Config>, policy: Arc<Policy>) {
        let previous = self.snapshot.load_full();
        self.keys.rebuild(Some(&previous.config), &config);
        self.store(Snapshot {
            auth: Arc::new(ClientAuth::new(&config.auth)),
            redactor: Arc::new(Redactor::new(&config)),
            pools: self.keys.pools(),
            config,
            policy,
        });
    }
}

/// A fresh snapshot generation, never handed out before in this process.
fn next_generation() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A thread's own reference to a snapshot, counted by the requests that hold it.
struct ThreadRef(Arc<Snapshot>);

/// A request's snapshot (see [`Runtime::held_snapshot`]).
#[derive(Clone)]
pub struct Held(Arc<ThreadRef>);

impl std::ops::Deref for Held {
    type Target = Snapshot;

    fn deref(&self) -> &Snapshot {
        &self.0 .0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> Runtime {
        Runtime::new(
            Arc::new(crate::policy::tests::config()),
            Arc::new(crate::quota::ManualClock::new(0)),
        )
        .unwrap()
    }

    fn same(held: &Held, snap: &Arc<Snapshot>) -> bool {
        Arc::ptr_eq(&held.0 .0, snap)
    }

    #[test]
    fn a_thread_shares_one_reference_to_the_current_snapshot_until_a_reload() {
        let (a, b) = (runtime(), runtime());
        let first = a.held_snapshot();
        assert!(same(&first, &a.snapshot()));
        assert!(
            Arc::ptr_eq(&first.0, &a.held_snapshot().0),
            "requests on one thread count on the thread's reference"
        );
        // Another runtime used on the same thread never gets the first one's snapshot.
        assert!(same(&b.held_snapshot(), &b.snapshot()));
        assert!(same(&a.held_snapshot(), &a.snapshot()));

        a.install_policy(a.snapshot().policy.clone());
        let after = a.held_snapshot();
        assert!(same(&after, &a.snapshot()), "a reload is seen at once");
        assert!(!Arc::ptr_eq(&after.0 .0, &first.0 .0));
        // A request that started before the reload finishes on its snapshot.
        assert!(!same(&first, &a.snapshot()));
    }
}
