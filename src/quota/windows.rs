//! Sliding-window counters: each (counter, window) keeps a ring of 60 buckets, so a count
//! is exact to 1/60 of the window and memory stays constant however many events arrive.

use std::sync::Mutex;

use dashmap::DashMap;

const BUCKETS: u64 = 60;

#[derive(Debug)]
struct Ring {
    /// Bucket width in ms.
    width: u64,
    /// Absolute index (time / width) of each slot's current contents.
    slots: [(u64, u64); BUCKETS as usize],
}

impl Ring {
    fn new(window_ms: u64) -> Self {
        Self {
            width: window_ms.div_ceil(BUCKETS).max(1),
            slots: [(0, 0); BUCKETS as usize],
        }
    }

    fn add(&mut self, now_ms: u64) {
        let idx = now_ms / self.width;
        let slot = &mut self.slots[(idx % BUCKETS) as usize];
        if slot.0 != idx {
            *slot = (idx, 0);
        }
        slot.1 += 1;
    }

    fn total(&self, now_ms: u64) -> u64 {
        let idx = now_ms / self.width;
        let oldest = idx.saturating_sub(BUCKETS - 1);
        self.slots
            .iter()
            .filter(|(i, _)| *i >= oldest && *i <= idx)
            .map(|(_, n)| n)
            .sum()
    }
}

#[derive(Debug, Default)]
pub struct Windows {
    rings: DashMap<(String, u64), Mutex<Ring>>,
}

impl Windows {
    pub fn hit(&self, counter: &str, window_ms: u64, now_ms: u64) -> u64 {
        let ring = self
            .rings
            .entry((counter.to_string(), window_ms))
            .or_insert_with(|| Mutex::new(Ring::new(window_ms)));
        let mut r = ring.lock().unwrap_or_else(|p| p.into_inner());
        r.add(now_ms);
        r.total(now_ms)
    }

    pub fn list(&self, now_ms: u64) -> Vec<(String, u64, u64)> {
        let mut out: Vec<_> = self
            .rings
            .iter()
            .map(|e| {
                let (name, window) = e.key();
                let n = e
                    .value()
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .total(now_ms);
                (name.clone(), *window, n)
            })
            .collect();
        out.sort();
        out
    }

    pub fn count(&self, counter: &str, window_ms: u64, now_ms: u64) -> u64 {
        self.rings
            .get(&(counter.to_string(), window_ms))
            .map_or(0, |r| {
                r.lock().unwrap_or_else(|p| p.into_inner()).total(now_ms)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_leave_the_window_as_time_passes() {
        let w = Windows::default();
        let t0 = 10_000_000;
        for i in 0..10 {
            w.hit("c", 60_000, t0 + i * 1_000); // one event a second for 10 s
        }
        assert_eq!(w.count("c", 60_000, t0 + 9_000), 10);
        assert_eq!(w.count("c", 60_000, t0 + 59_999), 10);
        // After 60 s the first event's bucket has left the window, one bucket at a time.
        assert_eq!(w.count("c", 60_000, t0 + 60_000), 9);
        assert_eq!(w.count("c", 60_000, t0 + 65_000), 4);
        assert_eq!(w.count("c", 60_000, t0 + 70_000), 0);
        // Windows of another length are separate counters.
        assert_eq!(w.count("c", 1_000, t0 + 9_000), 0);
    }
}
