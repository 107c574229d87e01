//! Key pools: per-connection rotation state that outlives config and policy snapshots
//! (cursors and use counts are carried across reloads by key id). Every rotator skips keys
//! that are not healthy (locked or cooled) and is lock-free: atomics only.

mod scopes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use metrics::{Counter, Histogram};

use crate::config::{ApiKey, Config, Connection};
use crate::metrics as m;
use crate::outcome::OutcomeClass;
use crate::FastMap;

pub use scopes::Scopes;

/// How to pick a key among a connection's healthy keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Strict round-robin (the default).
    RoundRobin,
    /// Round-robin in proportion to key weights.
    Weighted,
    /// The key selected least often so far.
    LeastUsed,
    /// The first healthy key in config order: use one key until it is locked.
    FillFirst,
    /// Uniformly at random.
    Random,
}

impl Rotation {
    pub fn as_str(self) -> &'static str {
        match self {
            Rotation::RoundRobin => "round_robin",
            Rotation::Weighted => "weighted",
            Rotation::LeastUsed => "least_used",
            Rotation::FillFirst => "fill_first",
            Rotation::Random => "random",
        }
    }

    pub const ALL: [Rotation; 5] = [
        Rotation::RoundRobin,
        Rotation::Weighted,
        Rotation::LeastUsed,
        Rotation::FillFirst,
        Rotation::Random,
    ];

    /// The rotation a `keys::` function name stands for.
    pub fn from_native_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }
}

/// Per-key counters.
#[derive(Debug, Default)]
pub struct KeyStats {
    /// Times this key was selected.
    pub selected: AtomicU64,
}

/// Rotation state for one connection, and its metric handles (registered once here rather
/// than on every attempt, which would rebuild label sets per request).
#[derive(Debug)]
pub struct KeyPool {
    cursor: AtomicU64,
    /// Aligned with the connection's `keys` in the config this pool was built for.
    stats: Vec<Arc<KeyStats>>,
    pub metrics: ConnMetrics,
}

/// Per-connection metric handles.
#[derive(Debug)]
pub struct ConnMetrics {
    /// By [`OutcomeClass::index`].
    pub attempts: Vec<Counter>,
    pub fallbacks: Vec<Counter>,
    pub ttfb: Histogram,
    /// Aligned with the connection's keys.
    pub selections: Vec<Counter>,
}

impl ConnMetrics {
    fn new(conn: &Connection) -> Self {
        let (p, c) = (conn.provider.as_str(), conn.id.as_str());
        let by_class = |name: &'static str, with_conn: bool| {
            OutcomeClass::ALL
                .iter()
                .map(|o| {
                    if with_conn {
                        m::counter(
                            name,
                            &[("provider", p), ("connection", c), ("outcome", o.as_str())],
                        )
                    } else {
                        m::counter(name, &[("provider", p), ("outcome", o.as_str())])
                    }
                })
                .collect()
        };
        Self {
            attempts: by_class(m::ATTEMPTS, true),
            fallbacks: by_class(m::FALLBACKS, false),
            ttfb: m::histogram(m::UPSTREAM_TTFB, &[("provider", p)]),
            selections: conn
                .keys
                .iter()
                .map(|k| {
                    m::counter(
                        m::KEY_SELECTIONS,
                        &[("provider", p), ("connection", c), ("key", &k.id)],
                    )
                })
                .collect(),
        }
    }
}

impl KeyPool {
    fn new(
        conn: &Connection,
        previous: Option<&KeyPool>,
        prev_conn: Option<&Connection>,
        random_start: bool,
    ) -> Self {
        let stats = conn
            .keys
            .iter()
            .map(|k| {
                previous
                    .zip(prev_conn)
                    .and_then(|(p, pc)| {
                        pc.keys
                            .iter()
                            .position(|o| o.id == k.id)
                            .and_then(|i| p.stats.get(i))
                    })
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        Self {
            cursor: AtomicU64::new(match previous {
                Some(p) => p.cursor.load(Ordering::Relaxed),
                // Replicas sharing state start at a random key, so a fleet does not send
                // its first requests all to the same one.
                None if random_start => fastrand::u64(0..conn.keys.len().max(1) as u64),
                None => 0,
            }),
            stats,
            metrics: ConnMetrics::new(conn),
        }
    }

    /// The rotation position (for `/admin/state`).
    pub fn position(&self) -> u64 {
        self.cursor.load(Ordering::Relaxed)
    }

    pub fn selected(&self, index: usize) -> u64 {
        self.stats
            .get(index)
            .map_or(0, |s| s.selected.load(Ordering::Relaxed))
    }

    /// Picks a key of `conn` with `rotation` among those for which `healthy` holds, and
    /// returns its index in `conn.keys`.
    pub fn select(
        &self,
        rotation: Rotation,
        conn: &Connection,
        healthy: impl Fn(usize, &ApiKey) -> bool,
    ) -> Option<usize> {
        let ok = |i: &usize| healthy(*i, &conn.keys[*i]);
        let n = conn.keys.len();
        let index = match rotation {
            Rotation::RoundRobin => {
                let count = (0..n).filter(ok).count();
                if count == 0 {
                    return None;
                }
                let turn = self.cursor.fetch_add(1, Ordering::Relaxed) % count as u64;
                (0..n).filter(ok).nth(turn as usize)
            }
            Rotation::Weighted => {
                let total: u64 = (0..n)
                    .filter(ok)
                    .map(|i| u64::from(conn.keys[i].weight))
                    .sum();
                if total == 0 {
                    return None;
                }
                let mut turn = self.cursor.fetch_add(1, Ordering::Relaxed) % total;
                (0..n).filter(ok).find(|&i| {
                    let w = u64::from(conn.keys[i].weight);
                    if turn < w {
                        true
                    } else {
                        turn -= w;
                        false
                    }
                })
            }
            Rotation::LeastUsed => (0..n).filter(ok).min_by_key(|&i| self.selected(i)),
            Rotation::FillFirst => (0..n).find(ok),
            Rotation::Random => {
                let count = (0..n).filter(ok).count();
                if count == 0 {
                    return None;
                }
                (0..n).filter(ok).nth(fastrand::usize(..count))
            }
        }?;
        if let Some(s) = self.stats.get(index) {
            s.selected.fetch_add(1, Ordering::Relaxed);
        }
        Some(index)
    }
}

/// provider id → connection id → pool.
pub type PoolMap = FastMap<String, FastMap<String, Arc<KeyPool>>>;

/// The pool for `conn` in `pools`, borrowed (a request borrows it from its snapshot, so
/// no reference count that every serving thread shares is written).
pub fn pool_in<'a>(pools: &'a PoolMap, conn: &Connection) -> Option<&'a Arc<KeyPool>> {
    pools
        .get(conn.provider.as_str())
        .and_then(|conns| conns.get(conn.id.as_str()))
}

/// Every connection's [`KeyPool`], by `provider/connection` name.
#[derive(Debug, Default)]
pub struct KeyRegistry {
    pools: ArcSwap<PoolMap>,
}

impl KeyRegistry {
    pub fn new(config: &Config) -> Self {
        let r = Self::default();
        r.rebuild(None, config);
        r
    }

    /// Builds pools for `config`, carrying cursors and counters over from `previous` for
    /// connections and keys (by id) that still exist. Removed keys leave rotation at once.
    pub fn rebuild(&self, previous: Option<&Config>, config: &Config) {
        let old = self.pools.load();
        let prev_conns: HashMap<String, &Arc<Connection>> = previous
            .iter()
            .flat_map(|c| c.providers.iter())
            .flat_map(|p| p.connections.iter())
            .map(|c| (c.name(), c))
            .collect();
        let mut pools = PoolMap::default();
        for c in config.providers.iter().flat_map(|p| p.connections.iter()) {
            let previous_pool = old
                .get(&c.provider)
                .and_then(|m| m.get(&c.id))
                .map(|p| p.as_ref());
            let pool = KeyPool::new(
                c,
                previous_pool,
                prev_conns.get(&c.name()).map(|c| c.as_ref()),
                matches!(config.state, crate::config::StateConfig::Redis(_)),
            );
            pools
                .entry(c.provider.clone())
                .or_default()
                .insert(c.id.clone(), Arc::new(pool));
        }
        self.pools.store(Arc::new(pools));
    }

    /// A copy of the current rotation state that shares nothing with this registry: for
    /// answering "what would happen" without moving live cursors.
    pub fn detached(&self) -> KeyRegistry {
        let pools = self
            .pools
            .load()
            .iter()
            .flat_map(|(provider, conns)| conns.iter().map(move |(id, p)| (provider, id, p)))
            .map(|(provider, id, p)| {
                let copy = KeyPool {
                    metrics: ConnMetrics {
                        attempts: Vec::new(),
                        fallbacks: Vec::new(),
                        ttfb: Histogram::noop(),
                        selections: Vec::new(),
                    },
                    cursor: AtomicU64::new(p.position()),
                    stats: p
                        .stats
                        .iter()
                        .map(|s| {
                            Arc::new(KeyStats {
                                selected: AtomicU64::new(s.selected.load(Ordering::Relaxed)),
                            })
                        })
                        .collect(),
                };
                (provider.clone(), id.clone(), Arc::new(copy))
            })
            .fold(PoolMap::default(), |mut acc, (p, id, pool)| {
                acc.entry(p).or_default().insert(id, pool);
                acc
            });
        KeyRegistry {
            pools: ArcSwap::from_pointee(pools),
        }
    }

    /// The pool for a connection of the current config.
    pub fn pool(&self, conn: &Connection) -> Arc<KeyPool> {
        // Keyed by provider, then connection: no name is formatted per lookup.
        pool_in(&self.pools.load(), conn)
            .cloned()
            .unwrap_or_else(|| Self::unregistered(conn))
    }

    /// The current pools, as a snapshot holds them.
    pub fn pools(&self) -> Arc<PoolMap> {
        self.pools.load_full()
    }

    /// A pool for a connection that has none (not of the current config): fresh state.
    pub fn unregistered(conn: &Connection) -> Arc<KeyPool> {
        Arc::new(KeyPool::new(conn, None, None, false))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn conn(weights: &[u32]) -> Connection {
        Connection::new(
            "p".into(),
            "c".into(),
            weights
                .iter()
                .enumerate()
                .map(|(i, w)| {
                    ApiKey::new(
                        format!("k{i}"),
                        Secret::new(format!("secret-{i}")),
                        *w,
                        crate::config::ProviderKind::OpenAi,
                    )
                    .unwrap()
                })
                .collect(),
        )
    }

    fn counts(
        rotation: Rotation,
        c: &Connection,
        n: usize,
        healthy: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let pool = KeyPool::new(c, None, None, false);
        let mut out = vec![0; c.keys.len()];
        for _ in 0..n {
            if let Some(i) = pool.select(rotation, c, |i, _| healthy(i)) {
                out[i] += 1;
            }
        }
        out
    }

    #[test]
    fn replicas_sharing_state_start_at_a_random_key() {
        let c = conn(&[1, 1, 1, 1]);
        let starts: std::collections::HashSet<u64> = (0..64)
            .map(|_| KeyPool::new(&c, None, None, true).position())
            .collect();
        assert!(starts.len() > 1, "random starts: {starts:?}");
        assert!(starts.iter().all(|s| *s < 4));
        assert_eq!(KeyPool::new(&c, None, None, false).position(), 0);
    }

    #[test]
    fn round_robin_is_exact_and_skips_unhealthy_keys() {
        let c = conn(&[1, 1, 1]);
        assert_eq!(
            counts(Rotation::RoundRobin, &c, 300, |_| true),
            [100, 100, 100]
        );
        assert_eq!(
            counts(Rotation::RoundRobin, &c, 300, |i| i != 1),
            [150, 0, 150]
        );
        assert_eq!(counts(Rotation::RoundRobin, &c, 10, |_| false), [0, 0, 0]);
        let pool = KeyPool::new(&c, None, None, false);
        let order: Vec<_> = (0..6)
            .map(|_| {
                c.keys[pool.select(Rotation::RoundRobin, &c, |_, _| true).unwrap()]
                    .id
                    .clone()
            })
            .collect();
        assert_eq!(order, ["k0", "k1", "k2", "k0", "k1", "k2"]);
    }

    #[test]
    fn weighted_follows_weights_exactly() {
        let c = conn(&[3, 1, 2]);
        assert_eq!(
            counts(Rotation::Weighted, &c, 600, |_| true),
            [300, 100, 200]
        );
        assert_eq!(
            counts(Rotation::Weighted, &c, 600, |i| i != 0),
            [0, 200, 400]
        );
    }

    #[test]
    fn least_used_evens_out_and_fill_first_sticks() {
        let c = conn(&[1, 1, 1]);
        assert_eq!(
            counts(Rotation::LeastUsed, &c, 300, |_| true),
            [100, 100, 100]
        );
        assert_eq!(counts(Rotation::FillFirst, &c, 300, |_| true), [300, 0, 0]);
        assert_eq!(
            counts(Rotation::FillFirst, &c, 300, |i| i != 0),
            [0, 300, 0]
        );
    }

    #[test]
    fn random_uses_every_healthy_key() {
        let c = conn(&[1, 1, 1]);
        let got = counts(Rotation::Random, &c, 3000, |i| i != 2);
        assert_eq!(got[2], 0);
        assert!(got[0] > 1200 && got[1] > 1200, "{got:?}");
    }

    #[test]
    fn state_survives_a_rebuild_by_key_id() {
        let a = conn(&[1, 1, 1]);
        let pool = KeyPool::new(&a, None, None, false);
        for _ in 0..4 {
            pool.select(Rotation::RoundRobin, &a, |_, _| true);
        }
        let mut b = conn(&[1, 1]);
        b.keys[0].id = "k2".into(); // k2 kept (moved to the front), k0 removed, k1 kept
        let next = KeyPool::new(&b, Some(&pool), Some(&a), false);
        assert_eq!(next.position(), 4);
        assert_eq!(
            (next.selected(0), next.selected(1)),
            (pool.selected(2), pool.selected(1))
        );
    }
}
