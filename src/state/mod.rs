//! Quota state shared across replicas (`[state] backend = "redis"`).
//!
//! Local first: [`QuotaState`](crate::quota::QuotaState) stays the only thing a request
//! reads, and no request ever waits on Redis (policy hooks are synchronous). Changes a
//! replica makes are recorded here — lock, unlock and streak events in a bounded outbox,
//! window hits as pending deltas — and one background task per replica
//! (`redis::Replicator`) writes them to Redis and applies other replicas' changes to the
//! local mirror:
//!
//! - locks, unlocks and failure streaks travel as events: one Lua script applies a batch
//!   (max-merge for locks, Redis's clock) and publishes each change; every replica
//!   subscribes. Versions number the changes, so a lost message (or a reconnect) is noticed
//!   and answered with a full resync;
//! - window counters are synced as deltas every `sync_interval`: a replica's view of a
//!   counter is the fleet total at its last sync plus its own hits since, so the fleet can
//!   overshoot a limit by at most the other replicas' hits in one interval;
//! - key rotation cursors and least-used counts stay per replica.
//!
//! When Redis is slow or gone, requests keep flowing on local state: events queue in the
//! outbox (bounded), windows report the local count scaled by the replicas last seen, and
//! a reconnect replays the outbox and resyncs. One log line per change of health.

pub mod redis;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use dashmap::DashMap;
use tokio::sync::Notify;

/// Events kept while Redis cannot take them; older ones are dropped beyond this.
pub const OUTBOX_CAPACITY: usize = 10_000;
/// Window counters shared at most; more stay local to this replica.
pub const MAX_SHARED_COUNTERS: usize = 10_000;

/// One change to replicate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `scope` locked for `ms` from now (relative: clocks never cross processes).
    Lock {
        scope: String,
        ms: u64,
        reason: String,
    },
    Unlock {
        scope: String,
    },
    /// `n` more failures in `scope`'s streak.
    Fail {
        scope: String,
        n: u32,
    },
    /// A streak at least `n` long (re-seeding an emptied Redis; max-merge, idempotent).
    Streak {
        scope: String,
        n: u32,
    },
    Clear {
        scope: String,
    },
}

/// A window counter's replicated view.
#[derive(Debug, Default)]
struct Counter {
    /// The fleet total returned by the last sync (includes this replica's synced hits).
    fleet: u64,
    /// Own hits not yet sent.
    pending: u64,
    /// Own hits in the sync under way.
    inflight: u64,
    /// Local time (ms) of the last hit or read, for dropping idle counters.
    used_ms: u64,
}

/// The request-side half of replication: cheap, synchronous, never waits on Redis.
#[derive(Debug)]
pub struct Shared {
    pub replica_id: String,
    pub display_url: String,
    outbox: Mutex<VecDeque<Event>>,
    counters: DashMap<(String, u64), Counter>,
    wake: Notify,
    healthy: AtomicBool,
    replicas: AtomicU64,
    /// Local ms of the last successful sync with Redis (0: never).
    last_sync_ms: AtomicU64,
    lock_version: AtomicU64,
    resyncs: AtomicU64,
    dropped: AtomicU64,
    /// `[state] required`: not ready until the first successful sync.
    required: AtomicBool,
    /// Set by the first successful sync.
    synced: AtomicBool,
}

impl Shared {
    pub fn new(replica_id: String, display_url: String) -> Self {
        Self {
            replica_id,
            display_url,
            outbox: Mutex::new(VecDeque::new()),
            counters: DashMap::new(),
            wake: Notify::new(),
            healthy: AtomicBool::new(false),
            replicas: AtomicU64::new(1),
            last_sync_ms: AtomicU64::new(0),
            lock_version: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            required: AtomicBool::new(false),
            synced: AtomicBool::new(false),
        }
    }

    /// Queues a change for the replicator and wakes it.
    pub fn push(&self, event: Event) {
        {
            let mut q = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
            if q.len() >= OUTBOX_CAPACITY {
                q.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            q.push_back(event);
            metrics::gauge!(crate::metrics::STATE_OUTBOX).set(q.len() as f64);
        }
        self.wake.notify_one();
    }

    /// Up to `max` queued events, oldest first (they stay queued until [`Self::done`]).
    fn peek(&self, max: usize) -> Vec<Event> {
        let q = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        q.iter().take(max).cloned().collect()
    }

    /// Removes the first `n` events (written to Redis).
    fn done(&self, n: usize) {
        let mut q = self.outbox.lock().unwrap_or_else(|p| p.into_inner());
        let n = n.min(q.len());
        q.drain(..n);
        metrics::gauge!(crate::metrics::STATE_OUTBOX).set(q.len() as f64);
    }

    pub fn outbox_len(&self) -> usize {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// A hit on a window counter: the count this replica should act on. `local` is this
    /// replica's own sliding-window count (used when Redis is unavailable).
    pub fn hit(&self, counter: &str, window_ms: u64, local: u64, now_ms: u64) -> u64 {
        self.view(counter, window_ms, local, now_ms, 1)
    }

    /// The count of a window counter, without a hit.
    pub fn count(&self, counter: &str, window_ms: u64, local: u64, now_ms: u64) -> u64 {
        self.view(counter, window_ms, local, now_ms, 0)
    }

    fn view(&self, counter: &str, window_ms: u64, local: u64, now_ms: u64, hits: u64) -> u64 {
        let key = (counter.to_string(), window_ms);
        let fresh = !self.counters.contains_key(&key);
        if fresh && self.counters.len() >= MAX_SHARED_COUNTERS {
            // Past the cap: this counter stays local to this replica.
            return self.degraded_view(local);
        }
        let shared = {
            let mut c = self.counters.entry(key).or_default();
            c.pending += hits;
            c.used_ms = now_ms;
            c.fleet + c.pending + c.inflight
        };
        if fresh {
            // A new counter's fleet total should not wait a whole interval (a counter
            // only read here may be hit elsewhere: it is synced from now on).
            self.wake.notify_one();
            if hits == 0 {
                return self.degraded_view(local);
            }
        }
        if self.is_healthy() {
            shared
        } else {
            // Redis is away: our own count, scaled by the replicas last seen, keeps an
            // evenly balanced fleet near its limit (never below what we counted).
            shared.max(self.degraded_view(local))
        }
    }

    fn degraded_view(&self, local: u64) -> u64 {
        if self.is_healthy() {
            local
        } else {
            local.saturating_mul(self.replicas().max(1))
        }
    }

    /// Counters to sync now: `(counter, window_ms, delta)`; the deltas move to in-flight.
    /// Counters idle for longer than their window, with nothing pending, are dropped.
    fn take_deltas(&self, now_ms: u64, max: usize) -> Vec<(String, u64, u64)> {
        self.counters.retain(|(_, window), c| {
            c.pending > 0 || c.inflight > 0 || now_ms.saturating_sub(c.used_ms) <= *window
        });
        let mut out = Vec::new();
        for mut e in self.counters.iter_mut() {
            if out.len() >= max {
                break;
            }
            let (name, window) = e.key().clone();
            let c = e.value_mut();
            if c.inflight > 0 {
                continue;
            }
            c.inflight = std::mem::take(&mut c.pending);
            out.push((name, window, c.inflight));
        }
        out
    }

    /// A sync answered: `totals` are the fleet counts for the counters sent.
    fn deltas_synced(&self, sent: &[(String, u64, u64)], totals: &[u64]) {
        for ((name, window, _), total) in sent.iter().zip(totals) {
            if let Some(mut c) = self.counters.get_mut(&(name.clone(), *window)) {
                c.inflight = 0;
                c.fleet = *total;
            }
        }
    }

    /// A sync failed: its deltas go back to pending.
    fn deltas_failed(&self, sent: &[(String, u64, u64)]) {
        for (name, window, _) in sent {
            if let Some(mut c) = self.counters.get_mut(&(name.clone(), *window)) {
                c.pending += std::mem::take(&mut c.inflight);
            }
        }
    }

    /// Fleet totals per counter for `/admin/state`.
    pub fn fleet_counts(&self) -> Vec<(String, u64, u64)> {
        let mut out: Vec<_> = self
            .counters
            .iter()
            .map(|e| {
                let c = e.value();
                (
                    e.key().0.clone(),
                    e.key().1,
                    c.fleet + c.pending + c.inflight,
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Makes readiness wait for the first successful sync (`[state] required = true`).
    pub fn require_first_sync(&self) {
        self.required.store(true, Ordering::Relaxed);
    }

    /// False while readiness waits for the first sync with Redis.
    pub fn ready(&self) -> bool {
        !self.required.load(Ordering::Relaxed) || self.synced.load(Ordering::Relaxed)
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::STATE_BACKEND_UP).set(if healthy { 1.0 } else { 0.0 });
    }

    /// Replicas seen in the last heartbeat (at least this one).
    pub fn replicas(&self) -> u64 {
        self.replicas.load(Ordering::Relaxed).max(1)
    }

    /// A sync succeeded at local time `now_ms`.
    fn touch(&self, now_ms: u64) {
        self.last_sync_ms.store(now_ms, Ordering::Relaxed);
        self.synced.store(true, Ordering::Relaxed);
    }

    pub fn last_sync_ms(&self) -> u64 {
        self.last_sync_ms.load(Ordering::Relaxed)
    }

    pub fn lock_version(&self) -> u64 {
        self.lock_version.load(Ordering::Relaxed)
    }

    pub fn resyncs(&self) -> u64 {
        self.resyncs.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shared() -> Shared {
        let s = Shared::new("r1".into(), "redis://x".into());
        s.set_healthy(true);
        s
    }

    #[test]
    fn a_view_is_the_fleet_total_plus_own_unsynced_hits() {
        let s = shared();
        assert_eq!(s.hit("c", 60_000, 1, 0), 1);
        assert_eq!(s.hit("c", 60_000, 2, 0), 2);
        let sent = s.take_deltas(0, 100);
        assert_eq!(sent, vec![("c".to_string(), 60_000, 2)]);
        // While the sync is under way the in-flight hits still count, once.
        assert_eq!(s.hit("c", 60_000, 3, 0), 3);
        // The fleet total includes our two synced hits and another replica's five.
        s.deltas_synced(&sent, &[7]);
        assert_eq!(s.count("c", 60_000, 3, 0), 8);
        // A failed sync puts its deltas back.
        let sent = s.take_deltas(0, 100);
        assert_eq!(sent[0].2, 1);
        s.deltas_failed(&sent);
        assert_eq!(s.take_deltas(0, 100)[0].2, 1);
    }

    #[test]
    fn a_counter_only_read_here_is_synced_from_its_first_read() {
        let s = shared();
        // Hit only on other replicas: the first read knows nothing yet…
        assert_eq!(s.count("elsewhere", 60_000, 0, 0), 0);
        let sent = s.take_deltas(0, 100);
        assert_eq!(sent, vec![("elsewhere".to_string(), 60_000, 0)]);
        // …and once synced, reads return the fleet's count.
        s.deltas_synced(&sent, &[42]);
        assert_eq!(s.count("elsewhere", 60_000, 0, 0), 42);
    }

    #[test]
    fn without_redis_a_window_reports_the_local_count_scaled_by_replicas() {
        let s = shared();
        s.replicas.store(3, Ordering::Relaxed);
        s.set_healthy(false);
        assert_eq!(s.hit("c", 60_000, 4, 0), 12);
        // Never synced yet: local only, scaled.
        assert_eq!(s.count("other", 60_000, 2, 0), 6);
    }

    #[test]
    fn idle_counters_are_dropped_and_the_outbox_is_bounded() {
        let s = shared();
        s.hit("c", 1_000, 1, 0);
        s.take_deltas(0, 100);
        s.deltas_synced(&[("c".into(), 1_000, 1)], &[1]);
        assert_eq!(s.take_deltas(500, 100).len(), 1);
        s.deltas_synced(&[("c".into(), 1_000, 0)], &[1]);
        assert!(s.take_deltas(5_000, 100).is_empty());
        for i in 0..OUTBOX_CAPACITY + 5 {
            s.push(Event::Clear {
                scope: i.to_string(),
            });
        }
        assert_eq!(s.outbox_len(), OUTBOX_CAPACITY);
        assert_eq!(s.dropped(), 5);
        assert_eq!(
            s.peek(1),
            vec![Event::Clear {
                scope: "5".to_string()
            }]
        );
    }
}
