//! Key pools: per-connection rotation state that outlives any one config or policy snapshot.
//! Rotation is lock-free: one atomic cursor per connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::{ApiKey, Config, Connection};

/// Rotation state for one connection's keys.
#[derive(Debug, Default)]
pub struct KeyPool {
    cursor: AtomicU64,
}

impl KeyPool {
    /// Strict round-robin: the n-th call returns key `n mod len`.
    pub fn round_robin<'a>(&self, conn: &'a Connection) -> &'a ApiKey {
        let n = self.cursor.fetch_add(1, Ordering::Relaxed);
        // `keys` is never empty: config validation guarantees it.
        &conn.keys[(n % conn.keys.len() as u64) as usize]
    }
}

/// Every connection's [`KeyPool`], by `provider/connection` name.
#[derive(Debug, Default)]
pub struct KeyRegistry {
    pools: HashMap<String, Arc<KeyPool>>,
}

impl KeyRegistry {
    pub fn new(config: &Config) -> Self {
        let pools = config
            .providers
            .iter()
            .flat_map(|p| p.connections.iter())
            .map(|c| (c.name(), Arc::new(KeyPool::default())))
            .collect();
        Self { pools }
    }

    /// The pool for a connection of the current config.
    pub fn pool(&self, conn: &Connection) -> Arc<KeyPool> {
        self.pools
            .get(&conn.name())
            .cloned()
            .unwrap_or_else(|| Arc::new(KeyPool::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    #[test]
    fn round_robin_is_exact() {
        let conn = Connection {
            provider: "p".into(),
            id: "c".into(),
            keys: (0..3)
                .map(|i| ApiKey {
                    id: format!("k{i}"),
                    secret: Secret::new(format!("secret-{i}")),
                    weight: 1,
                })
                .collect(),
        };
        let pool = KeyPool::default();
        let mut counts = HashMap::new();
        for _ in 0..300 {
            *counts
                .entry(pool.round_robin(&conn).id.clone())
                .or_insert(0) += 1;
        }
        assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![100; 3]);
    }
}
