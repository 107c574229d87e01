//! Metrics that the request path updates without cross-core traffic.
//!
//! The exporter's own handles make every update two atomic read-modify-writes (the value
//! and its generation) on a cache line that every serving thread writes, so on two cores
//! each of a request's ten or so updates moves a line between them. Here each serving
//! thread owns a slot of every metric (on cache lines of its own; one slot per CPU, plus
//! one shared by every other thread) and updates it with a plain load and store, and
//! [`sync`] sums the slots into the exporter's handle. `/metrics` calls it before it
//! renders, so a scrape never sees a stale value. Histogram samples are held per thread
//! and handed over in batches.
//!
//! Every update of a metric made here must go through its handle from [`counter`] or
//! [`gauge`] (one per metric key and process, whoever asks for it): the exporter's value is
//! overwritten with the slots' sum at each sync.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{CounterFn, GaugeFn, HistogramFn, Key, Label, Level, Metadata};

/// One slot, alone on its cache lines (x86 prefetches lines in pairs).
#[repr(align(128))]
#[derive(Default)]
struct Slot<T>(T);

/// Slots per metric: one per CPU for the serving threads, and the last for other threads.
fn slots() -> usize {
    static SLOTS: OnceLock<usize> = OnceLock::new();
    *SLOTS.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        cpus.min(64) + 1
    })
}

/// Slots not owned by a live thread.
fn free_slots() -> std::sync::MutexGuard<'static, Vec<usize>> {
    static FREE: OnceLock<Mutex<Vec<usize>>> = OnceLock::new();
    FREE.get_or_init(|| Mutex::new((0..slots() - 1).rev().collect()))
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

/// Gives a slot back when its thread ends.
struct Claim(usize);

impl Drop for Claim {
    fn drop(&mut self) {
        SLOT.set(SHARED);
        free_slots().push(self.0);
    }
}

/// Not a slot of the thread's own: the last, shared one.
const SHARED: usize = usize::MAX;

thread_local! {
    /// The slot this thread owns, or [`SHARED`].
    static SLOT: Cell<usize> = const { Cell::new(SHARED) };
    static CLAIM: RefCell<Option<Claim>> = const { RefCell::new(None) };
}

/// Gives the calling thread (a serving thread) a slot of its own while one is free; it is
/// freed when the thread ends. Only the owner writes a slot, so its updates need no atomic
/// read-modify-write.
pub fn claim_thread_slot() {
    if SLOT.get() != SHARED {
        return;
    }
    let Some(index) = free_slots().pop() else {
        return;
    };
    SLOT.set(index);
    CLAIM.set(Some(Claim(index)));
}

/// A count that every serving thread adds to in a slot of its own, summed when read.
pub struct ThreadSum {
    slots: Box<[Slot<AtomicU64>]>,
}

impl Default for ThreadSum {
    fn default() -> Self {
        Self {
            slots: (0..slots()).map(|_| Slot::default()).collect(),
        }
    }
}

impl ThreadSum {
    pub fn add(&self, value: u64) {
        let (own, shared) = (SLOT.get(), self.slots.len() - 1);
        if own < shared {
            // Only this thread writes its slot: no read-modify-write needed.
            let slot = &self.slots[own].0;
            slot.store(
                slot.load(Ordering::Relaxed).wrapping_add(value),
                Ordering::Relaxed,
            );
        } else {
            self.slots[shared].0.fetch_add(value, Ordering::Relaxed);
        }
    }

    pub fn sum(&self) -> u64 {
        self.slots
            .iter()
            .fold(0u64, |s, v| s.wrapping_add(v.0.load(Ordering::Relaxed)))
    }
}

/// A counter kept per thread and summed into the exporter's counter.
pub struct ShardedCounter {
    count: ThreadSum,
    key: Key,
}

impl ShardedCounter {
    fn new(key: Key) -> Self {
        Self {
            count: ThreadSum::default(),
            key,
        }
    }

    fn sum(&self) -> u64 {
        self.count.sum()
    }
}

impl CounterFn for ShardedCounter {
    fn increment(&self, value: u64) {
        self.count.add(value);
    }

    /// Raises the total to `value` if it is below (a counter never goes back).
    fn absolute(&self, value: u64) {
        let sum = self.sum();
        if value > sum {
            self.increment(value - sum);
        }
    }
}

/// A gauge kept as per-thread deltas and summed into the exporter's gauge.
pub struct ShardedGauge {
    /// Milli-units, so that fractional updates add exactly; signed deltas added in two's
    /// complement (the sum, read as `i64`, is the value).
    milli: ThreadSum,
    key: Key,
}

const GAUGE_SCALE: f64 = 1000.0;

impl ShardedGauge {
    fn new(key: Key) -> Self {
        Self {
            milli: ThreadSum::default(),
            key,
        }
    }

    fn add(&self, delta: f64) {
        self.milli.add((delta * GAUGE_SCALE).round() as i64 as u64);
    }

    fn value(&self) -> f64 {
        self.milli.sum() as i64 as f64 / GAUGE_SCALE
    }
}

impl GaugeFn for ShardedGauge {
    fn increment(&self, value: f64) {
        self.add(value);
    }

    fn decrement(&self, value: f64) {
        self.add(-value);
    }

    fn set(&self, value: f64) {
        self.add(value - self.value());
    }
}

/// Samples a thread holds before it hands them to the exporter, all at once.
const BATCH: usize = 64;

/// A histogram whose samples are batched per thread: the exporter's sample store is one
/// lock-free list that every serving thread appends to, and appending a batch from one
/// thread keeps its lines in that thread's cache.
pub struct ShardedHistogram {
    slots: Box<[Slot<Mutex<Vec<f64>>>]>,
    key: Key,
}

impl ShardedHistogram {
    fn new(key: Key) -> Self {
        Self {
            slots: (0..slots()).map(|_| Slot::default()).collect(),
            key,
        }
    }

    fn sink(&self) -> metrics::Histogram {
        metrics::with_recorder(|r| r.register_histogram(&self.key, &METADATA))
    }

    fn flush(sink: &metrics::Histogram, batch: &mut Vec<f64>) {
        for v in batch.drain(..) {
            sink.record(v);
        }
    }

    /// Hands every thread's held samples over (and names the histogram to the exporter,
    /// so that it is shown before its first sample).
    fn flush_all(&self) {
        let sink = self.sink();
        for slot in &self.slots {
            Self::flush(&sink, &mut slot.0.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

impl HistogramFn for ShardedHistogram {
    fn record(&self, value: f64) {
        let slot = &self.slots[SLOT.get().min(self.slots.len() - 1)];
        let mut batch = slot.0.lock().unwrap_or_else(|p| p.into_inner());
        if batch.capacity() == 0 {
            batch.reserve_exact(BATCH);
        }
        batch.push(value);
        if batch.len() >= BATCH {
            Self::flush(&self.sink(), &mut batch);
        }
    }
}

#[derive(Default)]
struct Registry {
    counters: HashMap<Key, Arc<ShardedCounter>>,
    gauges: HashMap<Key, Arc<ShardedGauge>>,
    histograms: HashMap<Key, Arc<ShardedHistogram>>,
}

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner())
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

/// The one metric for `key` in `map`, made by `make` the first time it is named.
fn one<T>(map: &mut HashMap<Key, Arc<T>>, key: Key, make: fn(Key) -> T) -> Arc<T> {
    map.entry(key)
        .or_insert_with_key(|key| Arc::new(make(key.clone())))
        .clone()
}

/// The counter `name{labels}`: the same one for every caller in this process.
pub fn counter(name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Counter {
    let c = one(
        &mut registry().counters,
        key(name, labels),
        ShardedCounter::new,
    );
    metrics::Counter::from_arc(c)
}

/// The gauge `name{labels}`: the same one for every caller in this process.
pub fn gauge(name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Gauge {
    let g = one(&mut registry().gauges, key(name, labels), ShardedGauge::new);
    metrics::Gauge::from_arc(g)
}

/// The histogram `name{labels}`: the same one for every caller in this process.
pub fn histogram(name: &'static str, labels: &[(&'static str, &str)]) -> metrics::Histogram {
    let h = one(
        &mut registry().histograms,
        key(name, labels),
        ShardedHistogram::new,
    );
    metrics::Histogram::from_arc(h)
}

/// Writes every sharded metric's total, and every held sample, into the exporter (before
/// a render).
pub fn sync() {
    let reg = registry();
    for h in reg.histograms.values() {
        h.flush_all();
    }
    // The exporter's handles are looked up here, not kept: a metric first named before
    // the recorder was installed (a registry built early, a test) still reaches it.
    metrics::with_recorder(|r| {
        for c in reg.counters.values() {
            r.register_counter(&c.key, &METADATA).absolute(c.sum());
        }
        for g in reg.gauges.values() {
            r.register_gauge(&g.key, &METADATA).set(g.value());
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_sum_across_threads_and_one_key_is_one_metric() {
        let a = counter("keyway_test_sharded_total", &[("k", "v")]);
        let b = counter("keyway_test_sharded_total", &[("k", "v")]);
        let other = counter("keyway_test_sharded_total", &[("k", "w")]);
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let a = a.clone();
                std::thread::spawn(move || {
                    if i < 3 {
                        claim_thread_slot();
                    }
                    for _ in 0..1000 {
                        a.increment(1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        b.increment(5);
        other.increment(1);
        let reg = registry();
        let key = key("keyway_test_sharded_total", &[("k", "v")]);
        assert_eq!(reg.counters[&key].sum(), 4005, "both handles, every thread");
        drop(reg);
        b.absolute(4000);
        b.absolute(4010);
        assert_eq!(
            registry().counters[&key].sum(),
            4010,
            "absolute only raises"
        );
    }

    #[test]
    fn a_metric_named_before_the_recorder_exists_still_reaches_it() {
        let early = counter("keyway_test_early_total", &[("k", "v")]);
        early.increment(3);
        let h = histogram("keyway_test_early_seconds", &[]);
        h.record(0.5);
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, sync);
        let text = handle.render();
        assert!(
            text.contains(r#"keyway_test_early_total{k="v"} 3"#),
            "{text}"
        );
        assert!(text.contains("keyway_test_early_seconds_count 1"), "{text}");
    }

    #[test]
    fn a_thread_owns_its_slot_until_it_ends() {
        let (index, freed) = std::thread::spawn(|| {
            claim_thread_slot();
            let index = SLOT.get();
            (index, free_slots().contains(&index))
        })
        .join()
        .unwrap();
        // Two CPUs here or more: one owned slot at least, unless other tests hold them all.
        if index != SHARED {
            assert!(index < slots() - 1);
            assert!(!freed, "an owned slot is not free while its thread lives");
            assert!(free_slots().contains(&index), "and is free once it ends");
        }
    }

    #[test]
    fn histogram_samples_are_held_per_thread_until_a_batch_fills_or_a_sync() {
        // A private instance: a sync from a test running alongside cannot touch it.
        let h = ShardedHistogram::new(key("keyway_test_private_seconds", &[]));
        let held = || {
            h.slots
                .iter()
                .map(|s| s.0.lock().unwrap().len())
                .sum::<usize>()
        };
        for _ in 0..BATCH - 1 {
            h.record(0.5);
        }
        assert_eq!(held(), BATCH - 1);
        h.record(0.5);
        assert_eq!(held(), 0, "a full batch goes to the exporter");
        h.record(0.25);
        assert_eq!(held(), 1);
        h.flush_all();
        assert_eq!(held(), 0, "a sync hands over what is held");
        // One key, one metric, whoever asks.
        let a = histogram("keyway_test_sharded_seconds", &[("k", "v")]);
        let b = histogram("keyway_test_sharded_seconds", &[("k", "v")]);
        a.record(1.0);
        b.record(1.0);
        let reg = registry();
        assert_eq!(
            reg.histograms
                .keys()
                .filter(|k| k.name() == "keyway_test_sharded_seconds")
                .count(),
            1
        );
    }

    #[test]
    fn gauges_add_fractions_exactly_and_set_overrides() {
        let g = gauge("keyway_test_sharded_gauge", &[]);
        let h = g.clone();
        std::thread::spawn(move || {
            claim_thread_slot();
            h.increment(2.5);
        })
        .join()
        .unwrap();
        g.increment(0.25);
        g.decrement(1.0);
        let value = || registry().gauges[&key("keyway_test_sharded_gauge", &[])].value();
        assert_eq!(value(), 1.75);
        g.set(7.0);
        assert_eq!(value(), 7.0);
    }
}
