//! Serving threads: one single-threaded tokio runtime per thread, and every accepted
//! connection pinned to one of them for its whole life, as nginx pins a connection to a
//! worker process.
//!
//! Why not the work-stealing runtime: a proxied request is a chain of wake-ups (client
//! socket → handler → upstream connection task → handler → client socket). On the
//! multi-threaded scheduler those wake-ups cross threads, and each crossing parks and
//! unparks a worker through the kernel: measured at ~0.6 context switches and ~8 µs of
//! CPU per request on two cores (BENCHMARKS.md, "Measurements by change"). Pinned, the
//! whole chain — including the upstream connection, which the pool keeps per thread —
//! runs on one thread, and a worker sleeps only when it has nothing at all to do.
//!
//! The cost is no stealing: a thread busy with one heavy connection does not hand its
//! other connections to an idle sibling. New connections go to the thread with the fewest
//! open ones, which keeps long-lived streams spread out.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use tokio_util::sync::CancellationToken;

/// Functions run on every serving thread: once when it starts, and each time its runtime
/// goes idle. Set once per process, before the first server starts (the binary uses the
/// park hook to return freed memory; tests count allocations from the start hook).
#[derive(Clone, Copy, Default)]
pub struct ThreadHooks {
    pub on_start: Option<fn()>,
    pub on_park: Option<fn()>,
}

static HOOKS: OnceLock<ThreadHooks> = OnceLock::new();

/// Installs the serving threads' hooks; false if they were already set.
pub fn set_thread_hooks(hooks: ThreadHooks) -> bool {
    HOOKS.set(hooks).is_ok()
}

struct Worker {
    handle: tokio::runtime::Handle,
    /// Connections open on this thread.
    open: Arc<AtomicUsize>,
}

/// The serving threads of one listener. Dropping it stops them; tasks still on them are
/// dropped, which closes their sockets.
pub struct Workers {
    workers: Box<[Worker]>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    /// Starts `n` (at least one) serving threads named `keyway-worker-<i>`. They log to
    /// the subscriber current on the calling thread (the global one, unless a test scoped
    /// its own).
    pub fn start(n: usize) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let hooks = HOOKS.get().copied().unwrap_or_default();
        let mut workers = Vec::with_capacity(n.max(1));
        for i in 0..n.max(1) {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let stop = stop.clone();
            let dispatch = dispatch.clone();
            std::thread::Builder::new()
                .name(format!("keyway-worker-{i}"))
                .spawn(move || {
                    let _logs = tracing::dispatcher::set_default(&dispatch);
                    crate::metrics::claim_thread_slot();
                    if let Some(f) = hooks.on_start {
                        f();
                    }
                    let mut builder = tokio::runtime::Builder::new_current_thread();
                    builder.enable_all();
                    // A finished request's metrics and log line wait until the thread is
                    // about to go idle: after its response has been flushed.
                    crate::proxy::metered::defer_on_this_thread();
                    let on_park = hooks.on_park;
                    builder.on_thread_park(move || {
                        crate::proxy::metered::run_deferred();
                        if let Some(f) = on_park {
                            f();
                        }
                    });
                    match builder.build() {
                        Ok(rt) => {
                            let _ = tx.send(Ok(rt.handle().clone()));
                            rt.block_on(stop.cancelled());
                            // Requests dropped with the runtime finish into the queue too.
                            drop(rt);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                    crate::proxy::metered::stop_deferring();
                })?;
            let handle = rx.recv().map_err(|_| {
                std::io::Error::other("a serving thread ended before its runtime started")
            })??;
            workers.push(Worker {
                handle,
                open: Arc::default(),
            });
        }
        Ok(Self {
            workers: workers.into_boxed_slice(),
            next: AtomicUsize::new(0),
            stop,
        })
    }

    /// Runs a connection's future on the thread with the fewest open connections (ties
    /// taken in turn). The future is first polled on that thread, so sockets it registers
    /// there belong to that thread's reactor.
    pub fn spawn(&self, conn: impl Future<Output = ()> + Send + 'static) {
        let n = self.workers.len();
        let first = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let worker = (0..n)
            .map(|k| &self.workers[(first + k) % n])
            .min_by_key(|w| w.open.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.handle.spawn(Counted {
            conn,
            _open: OpenGuard::new(worker.open.clone()),
        });
    }

    /// Open connections per serving thread, in thread order.
    pub fn open(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.open.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pin_project_lite::pin_project! {
    /// A connection's future with its count in its thread's open connections. A struct,
    /// not an `async` block: a block that awaits a captured future stores it twice (the
    /// capture and the awaited copy), which doubled every connection task's size.
    struct Counted<F> {
        #[pin]
        conn: F,
        _open: OpenGuard,
    }
}

impl<F: Future<Output = ()>> Future for Counted<F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        self.project().conn.poll(cx)
    }
}

struct OpenGuard(Arc<AtomicUsize>);

impl OpenGuard {
    fn new(open: Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        Self(open)
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spawns a task that reports its thread's name and then waits for `hold`.
    fn held(workers: &Workers) -> (String, tokio::sync::oneshot::Sender<()>) {
        let (hold_tx, hold_rx) = tokio::sync::oneshot::channel::<()>();
        let (tx, rx) = std::sync::mpsc::channel();
        workers.spawn(async move {
            tx.send(std::thread::current().name().map(str::to_string))
                .unwrap();
            let _ = hold_rx.await;
        });
        (rx.recv().unwrap().unwrap(), hold_tx)
    }

    fn wait_for(workers: &Workers, open: &[usize]) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while workers.open() != open {
            assert!(std::time::Instant::now() < deadline, "{:?}", workers.open());
            std::thread::yield_now();
        }
    }

    #[test]
    fn connections_go_to_the_least_loaded_thread() {
        let workers = Workers::start(2).unwrap();
        let (a, hold_a) = held(&workers);
        let (b, hold_b) = held(&workers);
        assert_eq!(
            (a.as_str(), b.as_str()),
            ("keyway-worker-0", "keyway-worker-1")
        );
        assert_eq!(workers.open(), [1, 1]);
        drop(hold_b);
        wait_for(&workers, &[1, 0]);
        // Taking turns would pick thread 0 now; it has the open connection, so thread 1.
        let (c, hold_c) = held(&workers);
        assert_eq!(c, "keyway-worker-1");
        assert_eq!(workers.open(), [1, 1]);
        drop((hold_a, hold_c));
        wait_for(&workers, &[0, 0]);
    }

    #[test]
    fn dropping_the_workers_drops_their_tasks() {
        let workers = Workers::start(1).unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        workers.spawn(async move {
            let _tx = tx;
            std::future::pending::<()>().await;
        });
        drop(workers);
        // The sender is dropped with the task when the thread's runtime goes.
        assert_eq!(
            rx.recv_timeout(std::time::Duration::from_secs(5)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        );
    }
}
