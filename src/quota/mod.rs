//! Quota state that outlives any policy or config snapshot: locks with expiry (a lock whose
//! window has passed is gone at the next look, no sweeper needed), sliding-window counters,
//! and failure streaks. Keys are scope strings such as `key:openai/main/k1@gpt-4o`.

mod clock;
pub mod retry_after;
mod windows;

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use dashmap::DashMap;

use crate::state::{Event, Shared};

pub use clock::{next_midnight_utc_ms, Clock, ManualClock, SystemClock};
pub use windows::Windows;

/// An active lock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub until_ms: u64,
    pub reason: String,
}

/// Locks, windows and streaks, shared by every request and every policy snapshot.
#[derive(Debug)]
pub struct QuotaState {
    clock: Arc<dyn Clock>,
    locks: DashMap<String, Lock>,
    /// The latest end of any lock ever placed: when it has passed, no lock is active and
    /// hot paths skip the map entirely.
    latest_until_ms: AtomicU64,
    streaks: DashMap<String, u32>,
    /// At least the number of entries in `streaks` (raised before an insert, lowered after
    /// a removal): while it is 0 there is no streak, and a success clears nothing without
    /// touching the map or naming a scope.
    live_streaks: AtomicUsize,
    windows: Windows,
    /// Set when state is shared with other replicas: every change is also queued there.
    shared: OnceLock<Arc<Shared>>,
}

impl QuotaState {
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            locks: DashMap::new(),
            latest_until_ms: AtomicU64::new(0),
            streaks: DashMap::new(),
            live_streaks: AtomicUsize::new(0),
            windows: Windows::default(),
            shared: OnceLock::new(),
        }
    }

    /// Shares this state with other replicas from now on (once, at startup).
    pub fn attach(&self, shared: Arc<Shared>) {
        let _ = self.shared.set(shared);
    }

    /// The replication handle when state is shared.
    pub fn shared(&self) -> Option<&Arc<Shared>> {
        self.shared.get()
    }

    /// Where a change to `scope` is replicated: nowhere for `local:` scopes.
    fn share(&self, scope: &str) -> Option<&Arc<Shared>> {
        self.shared.get().filter(|_| !scope.starts_with("local:"))
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Locks `scope` for `ms` from now. An existing longer lock is kept.
    pub fn lock_for(&self, scope: &str, ms: u64, reason: &str) -> u64 {
        let until_ms = self.now_ms().saturating_add(ms);
        self.lock_until(scope, until_ms, reason)
    }

    /// Locks `scope` until `until_ms`; returns the lock's effective end.
    pub fn lock_until(&self, scope: &str, until_ms: u64, reason: &str) -> u64 {
        let (end, placed) = self.merge_lock(scope, until_ms, reason);
        if placed {
            let label = scope.split('@').next().unwrap_or(scope).to_string();
            metrics::counter!(crate::metrics::LOCK_EVENTS, "scope" => label, "reason" => reason.to_string()).increment(1);
            if let Some(shared) = self.share(scope) {
                shared.push(Event::Lock {
                    scope: scope.to_string(),
                    ms: until_ms.saturating_sub(self.now_ms()),
                    reason: reason.to_string(),
                });
            }
        }
        end
    }

    /// Max-merges a lock into the map: (effective end, whether this call lengthened it).
    fn merge_lock(&self, scope: &str, until_ms: u64, reason: &str) -> (u64, bool) {
        let mut entry = self.locks.entry(scope.to_string()).or_insert(Lock {
            until_ms: 0,
            reason: String::new(),
        });
        if until_ms > entry.until_ms {
            self.latest_until_ms.fetch_max(until_ms, Ordering::Relaxed);
            entry.until_ms = until_ms;
            entry.reason = reason.to_string();
            (until_ms, true)
        } else {
            (entry.until_ms, false)
        }
    }

    /// Removes a lock; true if one was active here. With shared state the unlock reaches
    /// every replica (also those that placed the lock).
    pub fn unlock(&self, scope: &str) -> bool {
        let now = self.now_ms();
        if let Some(shared) = self.share(scope) {
            shared.push(Event::Unlock {
                scope: scope.to_string(),
            });
        }
        self.locks
            .remove(scope)
            .is_some_and(|(_, l)| l.until_ms > now)
    }

    /// Another replica's lock, `remaining_ms` from now: merged without being queued back.
    pub fn apply_remote_lock(&self, scope: &str, remaining_ms: u64, reason: &str) {
        let until = self.now_ms().saturating_add(remaining_ms);
        self.merge_lock(scope, until, reason);
    }

    /// Another replica's unlock.
    pub fn apply_remote_unlock(&self, scope: &str) {
        self.locks.remove(scope);
    }

    /// Another replica's streak change: the fleet's streak length (0 clears it).
    pub fn apply_remote_streak(&self, scope: &str, n: u32) {
        if n == 0 {
            self.remove_streak(scope);
        } else {
            self.live_streaks.fetch_add(1, Ordering::AcqRel);
            if self.streaks.insert(scope.to_string(), n).is_some() {
                // It existed: counted already.
                self.live_streaks.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    /// Removes a streak; whether there was one.
    fn remove_streak(&self, scope: &str) -> bool {
        let removed = self.streaks.remove(scope).is_some();
        if removed {
            self.live_streaks.fetch_sub(1, Ordering::AcqRel);
        }
        removed
    }

    /// Removes the streaks `keep` rejects, keeping the count.
    fn retain_streaks(&self, keep: impl Fn(&str) -> bool) {
        self.streaks.retain(|k, _| {
            let kept = keep(k);
            if !kept {
                self.live_streaks.fetch_sub(1, Ordering::AcqRel);
            }
            kept
        });
    }

    /// A resync: the fleet's locks and streaks replace this replica's mirror.
    pub fn replace_mirror(&self, locks: &[(String, u64, String)], streaks: &[(String, u32)]) {
        let now = self.now_ms();
        self.locks.clear();
        for (scope, remaining, reason) in locks {
            self.merge_lock(scope, now.saturating_add(*remaining), reason);
        }
        self.retain_streaks(|_| false);
        for (scope, n) in streaks {
            self.apply_remote_streak(scope, *n);
        }
    }

    /// The lock's end if `scope` is locked now. An expired lock is removed here.
    pub fn locked_until(&self, scope: &str) -> Option<u64> {
        let until = self.locks.get(scope)?.until_ms;
        if until > self.now_ms() {
            Some(until)
        } else {
            self.locks
                .remove_if(scope, |_, l| l.until_ms <= self.now_ms());
            None
        }
    }

    /// True when no lock exists at all (expired ones included): lets hot paths skip
    /// building scope names.
    pub fn has_no_locks(&self) -> bool {
        let latest = self.latest_until_ms.load(Ordering::Relaxed);
        latest == 0 || latest <= self.now_ms()
    }

    /// The active lock on `scope`, if any.
    pub fn lock(&self, scope: &str) -> Option<Lock> {
        if self.has_no_locks() {
            return None;
        }
        let lock = self.locks.get(scope)?.clone();
        if lock.until_ms > self.now_ms() {
            Some(lock)
        } else {
            self.locks
                .remove_if(scope, |_, l| l.until_ms <= self.now_ms());
            None
        }
    }

    pub fn is_locked(&self, scope: &str) -> bool {
        // Fast path: no active lock at all is the common case.
        !self.has_no_locks() && self.locked_until(scope).is_some()
    }

    /// Every active lock, for `/admin/state` and `keyway explain`.
    pub fn active_locks(&self) -> Vec<(String, Lock)> {
        let now = self.now_ms();
        let mut out: Vec<_> = self
            .locks
            .iter()
            .filter(|e| e.until_ms > now)
            .map(|e| (e.key().clone(), e.value().clone()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        self.locks.retain(|_, l| l.until_ms > now);
        out
    }

    /// Every failure streak.
    pub fn streaks(&self) -> Vec<(String, u32)> {
        let mut out: Vec<_> = self
            .streaks
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        out.sort();
        out
    }

    /// Every sliding-window counter: name, window (ms) and count now.
    pub fn windows(&self) -> Vec<(String, u64, u64)> {
        self.windows.list(self.now_ms())
    }

    /// Records a failure for `scope` and returns the streak length.
    pub fn fail(&self, scope: &str) -> u32 {
        let n = {
            let mut e = self.streaks.entry(scope.to_string()).or_insert_with(|| {
                // Under the entry's lock, so counted before anyone can see it.
                self.live_streaks.fetch_add(1, Ordering::AcqRel);
                0
            });
            *e = e.saturating_add(1);
            *e
        };
        if let Some(shared) = self.share(scope) {
            shared.push(Event::Fail {
                scope: scope.to_string(),
                n: 1,
            });
        }
        n
    }

    /// Whether any failure streak may exist: false when none does (a success then has
    /// nothing to clear).
    pub fn any_streak(&self) -> bool {
        self.live_streaks.load(Ordering::Acquire) > 0
    }

    /// Ends a failure streak (fleet-wide when shared; nothing is sent when there is none).
    pub fn clear_streak(&self, scope: &str) {
        if self.any_streak() && self.remove_streak(scope) {
            if let Some(shared) = self.share(scope) {
                shared.push(Event::Clear {
                    scope: scope.to_string(),
                });
            }
        }
    }

    pub fn streak(&self, scope: &str) -> u32 {
        self.streaks.get(scope).map_or(0, |v| *v)
    }

    /// Counts one event in `counter`'s sliding window and returns the window's count.
    /// With shared state: the fleet's count as last synced plus this replica's hits since.
    pub fn hit(&self, counter: &str, window_ms: u64) -> u64 {
        let now = self.now_ms();
        let local = self.windows.hit(counter, window_ms, now);
        match self.share(counter) {
            Some(shared) => shared.hit(counter, window_ms, local, now),
            None => local,
        }
    }

    /// Events in `counter`'s sliding window now.
    pub fn count(&self, counter: &str, window_ms: u64) -> u64 {
        let now = self.now_ms();
        let local = self.windows.count(counter, window_ms, now);
        match self.share(counter) {
            Some(shared) => shared.count(counter, window_ms, local, now),
            None => local,
        }
    }

    /// Live locks and streaks, for re-seeding a Redis that lost its data.
    pub fn seed_events(&self) -> Vec<Event> {
        let now = self.now_ms();
        let mut out: Vec<Event> = self
            .active_locks()
            .into_iter()
            .map(|(scope, l)| Event::Lock {
                scope,
                ms: l.until_ms.saturating_sub(now),
                reason: l.reason,
            })
            .collect();
        out.extend(
            self.streaks()
                .into_iter()
                .map(|(scope, n)| Event::Streak { scope, n }),
        );
        out
    }

    /// Drops state for scopes that no longer exist (after a config reload removed keys).
    pub fn retain_scopes(&self, keep: impl Fn(&str) -> bool) {
        self.locks.retain(|k, _| keep(k));
        self.retain_streaks(keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> (Arc<ManualClock>, QuotaState) {
        let clock = Arc::new(ManualClock::new(1_000_000));
        (clock.clone(), QuotaState::new(clock))
    }

    #[test]
    fn a_lock_is_gone_the_moment_its_window_passes() {
        let (clock, q) = state();
        q.lock_for("key:a", 30_000, "rate_limited");
        assert!(q.is_locked("key:a"));
        clock.advance_ms(29_999);
        assert_eq!(q.locked_until("key:a"), Some(1_030_000));
        clock.advance_ms(1);
        assert!(!q.is_locked("key:a"));
        assert!(q.active_locks().is_empty());
    }

    #[test]
    fn a_shorter_lock_never_shortens_a_longer_one() {
        let (_, q) = state();
        q.lock_for("s", 60_000, "quota");
        assert_eq!(q.lock_for("s", 1_000, "rate"), 1_060_000);
        assert_eq!(q.active_locks()[0].1.reason, "quota");
        assert!(q.unlock("s"));
        assert!(!q.is_locked("s"));
    }

    #[test]
    fn shared_state_queues_changes_except_for_local_scopes() {
        let (_, q) = state();
        let shared = Arc::new(Shared::new("r1".into(), "redis://x".into()));
        q.attach(shared.clone());
        q.lock_for("key:a", 1_000, "rate_limited");
        q.lock_for("key:a", 10, "rate_limited"); // shorter: nothing changes, nothing sent
        q.lock_for("local:probe", 1_000, "x");
        q.fail("local:s");
        assert_eq!(q.fail("key:a"), 1);
        q.clear_streak("key:a");
        q.clear_streak("key:b"); // no streak: nothing sent
        assert!(q.unlock("key:a"));
        assert_eq!(shared.outbox_len(), 4, "lock, fail, clear, unlock");
        // Another replica's changes are applied without being queued back.
        q.apply_remote_lock("key:b", 5_000, "quota_exhausted");
        assert!(q.is_locked("key:b"));
        q.apply_remote_streak("key:c", 3);
        assert_eq!(q.streak("key:c"), 3);
        q.apply_remote_unlock("key:b");
        assert!(!q.is_locked("key:b"));
        assert_eq!(shared.outbox_len(), 4);
        // `local:` counters never reach the shared view.
        q.hit("local:c", 60_000);
        assert!(shared.fleet_counts().is_empty());
        q.hit("c", 60_000);
        assert_eq!(shared.fleet_counts().len(), 1);
    }

    #[test]
    fn streaks_count_and_clear() {
        let (_, q) = state();
        assert_eq!(q.fail("k"), 1);
        assert_eq!(q.fail("k"), 2);
        q.clear_streak("k");
        assert_eq!(q.streak("k"), 0);
    }

    #[test]
    fn any_streak_is_true_exactly_while_a_streak_exists() {
        let (_, q) = state();
        assert!(!q.any_streak());
        q.fail("a");
        q.fail("a");
        q.fail("b");
        assert!(q.any_streak());
        q.clear_streak("a");
        assert!(q.any_streak(), "b still has one");
        q.clear_streak("a");
        q.clear_streak("b");
        assert!(
            !q.any_streak(),
            "every streak ended: successes skip the map again"
        );
        // Another replica's view: set, overwritten, cleared.
        q.apply_remote_streak("c", 3);
        q.apply_remote_streak("c", 4);
        assert_eq!(q.streak("c"), 4);
        q.apply_remote_streak("c", 0);
        assert!(!q.any_streak());
        // A resync replaces them; a reload drops the scopes that went away.
        q.fail("d");
        q.replace_mirror(&[], &[("e".into(), 2), ("f".into(), 1)]);
        assert_eq!((q.streak("d"), q.streak("e")), (0, 2));
        q.retain_scopes(|s| s != "e");
        assert!(q.any_streak(), "f is left");
        q.retain_scopes(|_| false);
        assert!(!q.any_streak());
    }

    #[test]
    fn the_streak_count_holds_under_concurrent_failures_and_clears() {
        let (_, q) = state();
        let q = Arc::new(q);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let q = q.clone();
                std::thread::spawn(move || {
                    for i in 0..2_000 {
                        let scope = format!("s{}", (i + t) % 7);
                        if i % 3 == 0 {
                            q.clear_streak(&scope);
                        } else {
                            q.fail(&scope);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(q.any_streak(), !q.streaks().is_empty());
        for i in 0..7 {
            q.clear_streak(&format!("s{i}"));
        }
        assert!(!q.any_streak());
        assert!(q.streaks().is_empty());
    }
}
