//! The upstream connection pool: HTTP/1.1 keep-alive connections on `hyper::client::conn`,
//! kept in per-thread shards.
//!
//! What the legacy hyper-util client cost per request, and this pool does not: a spawned
//! task to watch each connection go idle again, a shared pool mutex taken twice, a boxed
//! request future and a `Uri`/`PoolKey` clone per checkout. Here a checkout pops a ready
//! sender from the calling thread's shard (an uncontended lock), and the response body
//! hands the sender back when it has been read to its end ([`PooledBody`]); a body dropped
//! early drops the sender, so hyper closes that connection (it cannot be reused safely).
//! What it keeps from the legacy client: TLS via rustls (the same `hyper-rustls`
//! connector, so the same roots and connect timeout), origin-form request targets, idle
//! eviction (a sweep every few seconds from a task that ends with the pool), a cap on idle
//! connections per origin, and one retry on a fresh connection when a reused one turns out
//! dead before the request was written. The deadline for a response head is kept on a
//! timer per connection that stays armed between its requests ([`crate::deadline`]), not
//! armed and disarmed per request.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::{Authority, Scheme};
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service;

use crate::deadline::LazyTimer;

type Sender = SendRequest<Full<Bytes>>;
type Origin = (Scheme, Authority);

/// Idle connections older than this are closed by the sweep.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the sweep runs.
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// Idle connections kept per origin and shard; more are closed when they come back.
const MAX_IDLE_PER_ORIGIN: usize = 256;

/// Why a pooled send failed.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made (DNS, TCP, TLS).
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed while sending or before the response head arrived.
    Request(hyper::Error),
    /// The request has no scheme or authority (a bug: requests are built from config).
    NoOrigin,
    /// No response head by the deadline.
    TimedOut,
}

/// An upstream connection: its sender and the timer that bounds each wait for a response
/// head on it, kept armed between requests (see [`crate::deadline`]).
struct Conn {
    sender: Sender,
    timer: LazyTimer,
}

impl Conn {
    /// Back to the pool: the timer keeps no waker of the request's task (it may end while
    /// the connection waits here, and a waker keeps its memory).
    fn park(&mut self) {
        if let Some(sleep) = self.timer.as_mut() {
            let _ = sleep.as_mut().poll(&mut Context::from_waker(Waker::noop()));
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// A thread's idle connections by origin. A shard holds the origins its thread talks to,
/// which are the config's providers (a handful, a few dozen at most), so a scan comparing
/// origins beats a hash map: `Authority` hashes byte by byte, lowercasing each.
///
/// Each shard is alone on its cache lines and has its own reference count: a request locks
/// its thread's shard twice and a response body holds a reference to it, and neither may
/// write a line that another serving thread writes too.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<Vec<(Origin, Vec<Idle>)>>);

impl Shard {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(Origin, Vec<Idle>)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn checkin(&self, origin: Origin, mut conn: Conn) {
        if conn.sender.is_closed() {
            return;
        }
        conn.park();
        let mut shard = self.lock();
        let at = match shard.iter().position(|(o, _)| *o == origin) {
            Some(at) => at,
            None => {
                shard.push((origin, Vec::new()));
                shard.len() - 1
            }
        };
        let idle = &mut shard[at].1;
        if idle.len() < MAX_IDLE_PER_ORIGIN {
            idle.push(Idle {
                conn,
                since: Instant::now(),
            });
        }
    }
}

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    shards: Box<[Arc<Shard>]>,
    sweeper: OnceLock<()>,
}

thread_local! {
    /// This thread's shard index (assigned on first use, round-robin over threads).
    static SHARD: Cell<usize> = const { Cell::new(usize::MAX) };
}
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

impl Pool {
    pub fn new(connector: HttpsConnector<HttpConnector>) -> Arc<Self> {
        let n = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 64)
            * 2;
        Arc::new(Self {
            connector,
            shards: (0..n).map(|_| Arc::default()).collect(),
            sweeper: OnceLock::new(),
        })
    }

    fn shard(&self) -> &Arc<Shard> {
        let i = SHARD.with(|s| {
            let mut i = s.get();
            if i == usize::MAX {
                i = NEXT_SHARD.fetch_add(1, Ordering::Relaxed);
                s.set(i);
            }
            i
        });
        &self.shards[i % self.shards.len()]
    }

    /// Sends `req` (absolute URI) on a pooled connection to its origin, or a new one, and
    /// waits at most `limit` for the response head (connecting included).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<Full<Bytes>>,
        limit: Duration,
    ) -> Result<Response<PooledBody>, SendError> {
        let deadline = tokio::time::Instant::now() + limit;
        let (mut parts, body) = req.into_parts();
        let mut uri = std::mem::take(&mut parts.uri).into_parts();
        let origin = match (uri.scheme.take(), uri.authority.take()) {
            (Some(s), Some(a)) => (s, a),
            _ => return Err(SendError::NoOrigin),
        };
        parts.uri = Uri::from_parts(uri).map_err(|_| SendError::NoOrigin)?;
        let mut req = Request::from_parts(parts, body);
        self.start_sweeper();
        // A pooled connection may have been closed by the upstream while idle; if it fails
        // before the request was written, the request comes back and goes out on a fresh
        // connection. A fresh connection's failure is final.
        loop {
            let shard = self.shard();
            let (mut conn, reused) = match self.checkout(shard, &origin) {
                Some(c) => (c, true),
                // Boxed: connecting is rare, and its state would otherwise size (and be
                // copied with) every request's future.
                None => {
                    let connecting = Box::pin(self.connect(&origin));
                    match tokio::time::timeout_at(deadline, connecting).await {
                        Ok(sender) => (
                            Conn {
                                sender: sender?,
                                timer: None,
                            },
                            false,
                        ),
                        Err(_) => return Err(SendError::TimedOut),
                    }
                }
            };
            let sent = {
                let mut sending = std::pin::pin!(conn.sender.try_send_request(req));
                let timer = &mut conn.timer;
                std::future::poll_fn(|cx| match sending.as_mut().poll(cx) {
                    Poll::Ready(r) => Poll::Ready(Some(r)),
                    Poll::Pending if crate::deadline::passed(timer, deadline, cx) => {
                        Poll::Ready(None)
                    }
                    Poll::Pending => Poll::Pending,
                })
                .await
            };
            // Timed out: the connection goes with the request (it cannot be reused).
            let Some(sent) = sent else {
                return Err(SendError::TimedOut);
            };
            match sent {
                Ok(resp) => {
                    if resp.body().is_end_stream() {
                        // Nothing to read (204, `content-length: 0`): idle already.
                        shard.checkin(origin, conn);
                        return Ok(resp.map(|inner| PooledBody {
                            inner,
                            checkin: None,
                        }));
                    }
                    let checkin = Checkin {
                        shard: Arc::downgrade(shard),
                        origin,
                        conn,
                    };
                    return Ok(resp.map(|inner| PooledBody {
                        inner,
                        checkin: Some(checkin),
                    }));
                }
                Err(mut e) => match e.take_message() {
                    Some(back) if reused => req = back,
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    /// The most recently used ready connection to `origin` in this thread's shard.
    /// Closed ones are dropped; ones still finishing their last response stay.
    fn checkout(&self, shard: &Shard, origin: &Origin) -> Option<Conn> {
        let mut shard = shard.lock();
        let idle = &mut shard.iter_mut().find(|(o, _)| o == origin)?.1;
        let mut i = idle.len();
        while i > 0 {
            i -= 1;
            if idle[i].conn.sender.is_closed() {
                idle.swap_remove(i);
            } else if idle[i].conn.sender.is_ready() {
                return Some(idle.swap_remove(i).conn);
            }
        }
        None
    }

    async fn connect(&self, origin: &Origin) -> Result<Sender, SendError> {
        let target = Uri::builder()
            .scheme(origin.0.clone())
            .authority(origin.1.clone())
            .path_and_query("/")
            .build()
            .map_err(|_| SendError::NoOrigin)?;
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(SendError::Connect)?;
        let io = connector.call(target).await.map_err(SendError::Connect)?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(SendError::Request)?;
        // Ends when the connection closes: the upstream hung up, the sender was dropped
        // (evicted, or its response abandoned), or an I/O error. Spawned as is: an async
        // block awaiting it would store the connection twice.
        tokio::spawn(conn);
        metrics::counter!(crate::metrics::UPSTREAM_CONNECTS).increment(1);
        Ok(sender)
    }

    /// One task per pool closes connections idle longer than [`IDLE_TIMEOUT`]; it ends
    /// when the pool is dropped.
    fn start_sweeper(self: &Arc<Self>) {
        self.sweeper.get_or_init(|| {
            let weak = Arc::downgrade(self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(SWEEP_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(pool) = weak.upgrade() else { return };
                    pool.sweep(Instant::now());
                }
            });
        });
    }

    fn sweep(&self, now: Instant) {
        for shard in self.shards.iter() {
            let mut shard = shard.lock();
            shard.retain_mut(|(_, idle)| {
                idle.retain(|c| !c.conn.sender.is_closed() && now - c.since < IDLE_TIMEOUT);
                !idle.is_empty()
            });
        }
    }

    /// Idle connections across all shards (for tests and `/admin/state`).
    pub fn idle(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.iter().map(|(_, idle)| idle.len()).sum::<usize>()
            })
            .sum()
    }
}

struct Checkin {
    /// The shard of the thread that checked the connection out (the same thread reads the
    /// body to its end); gone with the pool.
    shard: Weak<Shard>,
    origin: Origin,
    conn: Conn,
}

pin_project_lite::pin_project! {
    /// An upstream response body that returns its connection to the pool once read to
    /// the end. Dropped before that, it takes the connection down with it.
    pub struct PooledBody {
        #[pin]
        inner: Incoming,
        checkin: Option<Checkin>,
    }
}

impl PooledBody {
    fn done(self: Pin<&mut Self>) {
        if let Some(c) = self.project().checkin.take() {
            if let Some(shard) = c.shard.upgrade() {
                shard.checkin(c.origin, c.conn);
            }
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = self.as_mut().project().inner.poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.done(),
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.done(),
            Poll::Ready(Some(Err(_))) => {
                // A broken body means a connection not worth keeping.
                self.project().checkin.take();
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
