//! What one metric update costs when every serving thread updates the same metric: the
//! exporter's own counter handle (an atomic value and generation that all threads write)
//! against Keyway's per-thread slots (`keyway::metrics::counter`), with one thread and
//! with two, each thread making the same number of updates. `cargo bench --bench metrics`.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use metrics::{Key, Level, Metadata, Recorder};
use metrics_exporter_prometheus::PrometheusBuilder;

static META: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// `threads` threads each make `iters` updates at once; the time until all are done.
fn run(threads: usize, iters: u64, counter: &metrics::Counter) -> Duration {
    let start = Arc::new(Barrier::new(threads + 1));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (counter, start) = (counter.clone(), start.clone());
            std::thread::spawn(move || {
                keyway::metrics::claim_thread_slot();
                start.wait();
                for _ in 0..iters {
                    black_box(&counter).increment(1);
                }
            })
        })
        .collect();
    start.wait();
    let t = Instant::now();
    for h in handles {
        h.join().unwrap();
    }
    t.elapsed()
}

fn shared_counter_updates(c: &mut Criterion) {
    let recorder = PrometheusBuilder::new().build_recorder();
    let exporter = recorder.register_counter(&Key::from_name("bench_exporter_total"), &META);
    let sharded = keyway::metrics::counter("bench_sharded_total", &[]);
    let mut g = c.benchmark_group("counter_update");
    for threads in [1, 2] {
        for (name, counter) in [("exporter", &exporter), ("per_thread_slots", &sharded)] {
            g.bench_function(format!("{name}/{threads}_threads"), |b| {
                b.iter_custom(|iters| run(threads, iters, counter))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, shared_counter_updates);
criterion_main!(benches);
