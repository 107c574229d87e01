//! Client connections, for the proxy and the admin listener alike: admission under a cap
//! (at the cap the longest-idle connection is closed to make room; connections with a
//! request in flight are never chosen), a deadline for every phase a connection can sit
//! in without a request (protocol detection, after the TLS handshake, the h2 preface,
//! between requests on h1 and h2 alike), and a graceful close (h2 GOAWAY) when one passes.
//!
//! "Idle" means no request in flight: bytes alone (h2 PING acks, a trickled preface) never
//! keep a connection open. A request is in flight from the moment hyper hands it over until
//! its response body is finished or dropped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulConnection;
use pin_project_lite::pin_project;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics as m;

/// After an idle connection is told to close (h2: GOAWAY), how long it may take to go.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// At most one "accept failed" warning per this interval; the rest are counted into it.
const ACCEPT_WARN_EVERY: Duration = Duration::from_secs(5);
/// Pause after a failed accept (out of descriptors and the like), so the loop never spins.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);

/// Limits and deadlines of one listener's connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnSettings {
    /// Open connections allowed at once.
    pub max_connections: usize,
    /// TLS handshake deadline, from accept.
    pub tls_handshake: Duration,
    /// From accept to the first request's headers (covers h1/h2 detection and the preface);
    /// on HTTP/1.1 also from the end of one request to the next one's headers.
    pub first_request: Duration,
    /// With no request in flight, after the last one ended (HTTP/1.1: at most
    /// `first_request`).
    pub idle: Duration,
    /// Request line + headers (h1) or header list (h2), in bytes: 431 beyond.
    pub max_header_bytes: usize,
}

/// What a listener serves: one request to one response.
pub trait Handler: Send + Sync + 'static {
    type Body: Body<Data = Bytes, Error = Self::Error> + Send + 'static;
    type Error: Into<Box<dyn std::error::Error + Send + Sync>>;
    fn handle(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> impl Future<Output = Response<Self::Body>> + Send;
}

/// Pending connections the kernel may queue before Keyway accepts them (std's default,
/// 128, makes a burst of connects wait on SYN retries; nginx uses 511).
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listener with `LISTEN_BACKLOG` (clamped by the kernel's `somaxconn`).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The hyper builder for `settings`: h1 and h2 on one port, header limits and timers set.
///
/// hyper's own h1 header-read timeout is off: it arms a timer (an allocation and two
/// timer-wheel updates) for every request head. The connection's driver bounds the same
/// phase with its one lazy deadline instead (`ConnState::deadline`): `first_request` from
/// the accept, and on HTTP/1.1 `first_request` from the end of each request, whether the
/// next head has not started or is trickling in.
pub fn http_builder(settings: &ConnSettings) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        // hyper answers 431 when the request head does not fit the read buffer.
        .max_buf_size(settings.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// One connection's request bookkeeping, shared with the bodies of its responses.
struct ConnState {
    opened: Instant,
    in_flight: AtomicU32,
    /// Milliseconds after `opened` at which the last request ended.
    idle_since_ms: AtomicU64,
    served: AtomicBool,
    /// Chosen for eviction: close it as soon as possible.
    evicting: AtomicBool,
    /// Milliseconds after `opened` at which the driver's timer fires; [`DISARMED`] when it
    /// has none. The timer is lazy: a request ending moves the idle deadline later, which
    /// the driver notices when the timer fires, so only a deadline *earlier* than the
    /// armed one (or none armed) needs `became_idle`.
    armed_ms: AtomicU64,
    /// How long the connection may sit with no request in flight, in milliseconds:
    /// `settings.idle`, capped at `settings.first_request` once it is known to be HTTP/1
    /// (there it also bounds the wait for the next request's headers).
    idle_ms: AtomicU64,
    /// `idle_ms` for an HTTP/1 connection.
    h1_idle_ms: u64,
    became_idle: Notify,
    evict: Notify,
}

const DISARMED: u64 = u64::MAX;

impl ConnState {
    fn new(s: &ConnSettings) -> Self {
        Self {
            opened: Instant::now(),
            in_flight: AtomicU32::new(0),
            idle_since_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            evicting: AtomicBool::new(false),
            armed_ms: AtomicU64::new(DISARMED),
            idle_ms: AtomicU64::new(s.idle.as_millis() as u64),
            h1_idle_ms: s.idle.min(s.first_request).as_millis() as u64,
            became_idle: Notify::new(),
            evict: Notify::new(),
        }
    }

    fn ms_after_open(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.opened).as_millis() as u64
    }

    /// A request (of HTTP `version`) was handed over.
    fn begin(self: &Arc<Self>, version: http::Version) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
            if version < http::Version::HTTP_2 {
                self.idle_ms.store(self.h1_idle_ms, Ordering::Relaxed);
            }
        }
        InFlight(self.clone())
    }

    /// When the connection should close if nothing starts meanwhile; `None` while busy.
    fn deadline(&self, s: &ConnSettings) -> Option<Instant> {
        if self.in_flight.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(if self.served.load(Ordering::Relaxed) {
            let idle_ms = self.idle_ms.load(Ordering::Relaxed);
            self.opened
                + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire) + idle_ms)
        } else {
            self.opened + s.first_request
        })
    }

    /// Idle since (for eviction order): the instant the last request ended, or the open.
    fn idle_since(&self) -> Option<Instant> {
        (self.in_flight.load(Ordering::Acquire) == 0).then(|| {
            self.opened + Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire))
        })
    }
}

/// Held by a request from hyper's hand-over until its response body is gone.
struct InFlight(Arc<ConnState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let s = &self.0;
        let ms = s.opened.elapsed().as_millis() as u64;
        s.idle_since_ms.store(ms, Ordering::Release);
        // SeqCst with the driver's store of `armed_ms` and load of `in_flight`: either it
        // sees this request gone and arms for the new deadline, or this sees it disarmed.
        if s.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && s.armed_ms.load(Ordering::SeqCst)
                > ms.saturating_add(s.idle_ms.load(Ordering::Relaxed))
        {
            s.became_idle.notify_one();
        }
    }
}

pin_project! {
    /// A response body that keeps its request counted as in flight until it is dropped.
    pub struct TrackedBody<B> {
        #[pin]
        inner: B,
        _in_flight: InFlight,
    }
}

impl<B: Body> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why Keyway closed a connection.
#[derive(Debug, Clone, Copy)]
enum CloseReason {
    Shutdown,
    /// No request within `first_request` of the accept.
    FirstRequest,
    /// No request within `idle` of the last one.
    Idle,
    /// Closed to admit a new connection at the cap.
    Evicted,
}

impl CloseReason {
    fn label(self) -> &'static str {
        match self {
            CloseReason::Shutdown => "shutdown",
            CloseReason::FirstRequest => "no_request",
            CloseReason::Idle => "idle",
            CloseReason::Evicted => "evicted",
        }
    }
}

/// The open connections of one listener.
pub struct Connections {
    name: &'static str,
    settings: ConnSettings,
    next_id: AtomicU64,
    live: Mutex<HashMap<u64, Arc<ConnState>>>,
    tasks: TaskTracker,
}

/// A connection's place in [`Connections`]; dropping it frees the place.
struct Admitted {
    conns: Arc<Connections>,
    id: u64,
    state: Arc<ConnState>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut live = self.conns.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&self.id);
        metrics::gauge!(m::CONNECTIONS, "listener" => self.conns.name).set(live.len() as f64);
    }
}

impl Connections {
    /// `name` labels metrics and logs (`proxy`, `admin`).
    pub fn new(name: &'static str, settings: ConnSettings) -> Arc<Self> {
        Arc::new(Self {
            name,
            settings,
            next_id: AtomicU64::new(0),
            live: Mutex::new(HashMap::new()),
            tasks: TaskTracker::new(),
        })
    }

    /// Open connections now.
    pub fn len(&self) -> usize {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Makes room for, and registers, a new connection; `None` when every open connection
    /// has a request in flight.
    fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if live.len() >= self.settings.max_connections && !evict_idlest(&live) {
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let state = Arc::new(ConnState::new(&self.settings));
        live.insert(id, state.clone());
        metrics::gauge!(m::CONNECTIONS, "listener" => self.name).set(live.len() as f64);
        Some(Admitted {
            conns: self.clone(),
            id,
            state,
        })
    }

    /// Closes the longest-idle connection (out of descriptors); true if one was found.
    fn evict_one(&self) -> bool {
        evict_idlest(&self.live.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn closed(&self, reason: CloseReason) {
        metrics::counter!(m::CONNECTIONS_CLOSED, "listener" => self.name, "reason" => reason.label())
            .increment(1);
    }

    /// Accepts until `shutdown` is cancelled, then waits up to `drain` for open
    /// connections to finish (they are told to close gracefully at once).
    pub async fn serve<H: Handler>(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        handler: Arc<H>,
        shutdown: CancellationToken,
        drain: Duration,
        workers: Option<Arc<super::workers::Workers>>,
    ) {
        let builder = http_builder(&self.settings);
        let mut failures = AcceptFailures::default();
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of descriptors: an idle connection's descriptor is the one to free.
                        if is_descriptor_exhaustion(&e) {
                            self.evict_one();
                        }
                        failures.note(self.name, &e);
                        tokio::select! {
                            () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                            () = shutdown.cancelled() => break,
                        }
                    }
                },
                () = shutdown.cancelled() => break,
            };
            let Some(admitted) = self.admit() else {
                // Every connection is busy with a request: refuse this one outright.
                self.closed_refused();
                drop(stream);
                continue;
            };
            let _ = stream.set_nodelay(true);
            let conn = self.clone();
            let (builder, tls, handler, shutdown) = (
                builder.clone(),
                tls.clone(),
                handler.clone(),
                shutdown.clone(),
            );
            match &workers {
                None => {
                    self.tasks.spawn(async move {
                        conn.connection(stream, peer, admitted, builder, tls, handler, shutdown)
                            .await
                    });
                }
                Some(workers) => {
                    // Moved to a serving thread's reactor: deregistered here, registered
                    // there on the task's first poll.
                    let stream = match stream.into_std() {
                        Ok(s) => s,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot hand a connection over");
                            continue;
                        }
                    };
                    workers.spawn(self.tasks.track_future(async move {
                        match TcpStream::from_std(stream) {
                            Ok(stream) => {
                                conn.connection(
                                    stream, peer, admitted, builder, tls, handler, shutdown,
                                )
                                .await
                            }
                            Err(e) => tracing::debug!(error = %e, "cannot take a connection over"),
                        }
                    }));
                }
            }
        }
        drop(listener);
        self.tasks.close();
        tracing::info!(listener = self.name, open = self.len(), drain = ?drain, "draining open connections");
        tokio::select! {
            () = self.tasks.wait() => tracing::info!(listener = self.name, "all connections drained"),
            () = tokio::time::sleep(drain) => {
                tracing::warn!(listener = self.name, open = self.len(), "drain deadline passed; closing remaining connections");
            }
        }
    }

    fn closed_refused(&self) {
        metrics::counter!(m::CONNECTIONS_CLOSED, "listener" => self.name, "reason" => "refused")
            .increment(1);
    }

    #[allow(clippy::too_many_arguments)]
    async fn connection<H: Handler>(
        self: Arc<Self>,
        stream: TcpStream,
        peer: SocketAddr,
        admitted: Admitted,
        builder: auto::Builder<TokioExecutor>,
        tls: Option<TlsAcceptor>,
        handler: Arc<H>,
        shutdown: CancellationToken,
    ) {
        let state = admitted.state.clone();
        let svc_state = state.clone();
        let svc = service_fn(move |req| {
            let in_flight = svc_state.begin(req.version());
            let handler = handler.clone();
            async move {
                let resp = handler.handle(req, peer).await;
                Ok::<_, Infallible>(resp.map(|inner| TrackedBody {
                    inner,
                    _in_flight: in_flight,
                }))
            }
        });
        let s = &self.settings;
        let result = match tls {
            None => {
                let conn = builder.serve_connection(TokioIo::new(stream), svc);
                tokio::pin!(conn);
                self.drive(conn, &state, &shutdown).await
            }
            // TLS state is boxed: inline, every connection task (plain ones too) would be
            // sized for the handshake and the TLS stream.
            Some(acceptor) => {
                let mut accepting = Box::pin(tokio::time::timeout(
                    s.tls_handshake,
                    acceptor.accept(stream),
                ));
                let handshake = tokio::select! {
                    r = &mut accepting => r,
                    () = state.evict.notified() => {
                        self.closed(CloseReason::Evicted);
                        return;
                    }
                    () = shutdown.cancelled() => return,
                };
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                };
                drop(accepting);
                let mut conn = Box::pin(builder.serve_connection(TokioIo::new(tls), svc));
                self.drive(conn.as_mut(), &state, &shutdown).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        drop(admitted);
    }

    /// Runs a connection until it ends, closing it gracefully when a deadline passes, it is
    /// evicted, or the server shuts down. Takes the connection pinned by the caller: an
    /// `async fn` keeps its parameters for its whole life, so pinning a by-value parameter
    /// here would store the connection twice in every connection task.
    async fn drive<C>(
        &self,
        mut conn: Pin<&mut C>,
        state: &ConnState,
        shutdown: &CancellationToken,
    ) -> Result<(), C::Error>
    where
        C: GracefulConnection,
    {
        let s = &self.settings;
        let shutting_down = shutdown.cancelled();
        let evicted = state.evict.notified();
        let became_idle = state.became_idle.notified();
        // Armed lazily, far out until the first deadline is known.
        let timer = tokio::time::sleep_until(Instant::now() + Duration::from_secs(86_400 * 365));
        tokio::pin!(shutting_down, evicted, became_idle, timer);
        let mut armed: Option<Instant> = None;
        // The connection wakes this task a few times per request; the close signals almost
        // never do. They are polled with their own waker, and only after it fired, rather
        // than on every wake (the shutdown token's check takes a lock shared by all
        // connections).
        let control = Arc::new(ControlWake::new());
        let control_waker = std::task::Waker::from(Arc::clone(&control));
        let reason = std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = conn.as_mut().poll(cx) {
                return Poll::Ready(Err(r));
            }
            control.task.register(cx.waker());
            if !control.woken.swap(false, Ordering::AcqRel) {
                return Poll::Pending;
            }
            let mut ccx = Context::from_waker(&control_waker);
            loop {
                match state.deadline(s) {
                    Some(d) if armed.is_none_or(|a| d < a) => {
                        timer.as_mut().reset(d);
                        armed = Some(d);
                        state
                            .armed_ms
                            .store(state.ms_after_open(d), Ordering::SeqCst);
                    }
                    _ => {}
                }
                if shutting_down.as_mut().poll(&mut ccx).is_ready() {
                    return Poll::Ready(Ok(CloseReason::Shutdown));
                }
                if evicted.as_mut().poll(&mut ccx).is_ready() {
                    return Poll::Ready(Ok(CloseReason::Evicted));
                }
                // The deadline came sooner than the armed one, or there was none armed.
                if became_idle.as_mut().poll(&mut ccx).is_ready() {
                    became_idle.set(state.became_idle.notified());
                    continue;
                }
                if armed.is_some() && timer.as_mut().poll(&mut ccx).is_ready() {
                    armed = None;
                    state.armed_ms.store(DISARMED, Ordering::SeqCst);
                    match state.deadline(s) {
                        Some(d) if d <= Instant::now() => {
                            return Poll::Ready(Ok(if state.served.load(Ordering::Relaxed) {
                                CloseReason::Idle
                            } else {
                                CloseReason::FirstRequest
                            }));
                        }
                        // Busy (re-armed when it goes idle) or a later deadline (re-armed
                        // at the top).
                        _ => continue,
                    }
                }
                return Poll::Pending;
            }
        })
        .await;
        let reason = match reason {
            Ok(reason) => reason,
            Err(r) => return r,
        };
        self.closed(reason);
        conn.as_mut().graceful_shutdown();
        if let CloseReason::Shutdown = reason {
            // The listener's drain deadline bounds this.
            return conn.await;
        }
        // A request that slipped in before the close is let finish; an idle connection that
        // does not go within the grace period is dropped.
        loop {
            tokio::select! {
                r = conn.as_mut() => return r,
                () = tokio::time::sleep(CLOSE_GRACE) => {
                    if state.in_flight.load(Ordering::Acquire) == 0 {
                        return Ok(());
                    }
                }
            }
        }
    }
}

/// The waker a connection's close signals (shutdown, eviction, idleness, its deadline) are
/// polled with: it notes that one of them may be ready and wakes the connection's task.
struct ControlWake {
    woken: AtomicBool,
    task: futures_util::task::AtomicWaker,
}

impl ControlWake {
    fn new() -> Self {
        // Woken from the start, so the first poll arms the signals.
        Self {
            woken: AtomicBool::new(true),
            task: futures_util::task::AtomicWaker::new(),
        }
    }
}

impl std::task::Wake for ControlWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// Tells the connection idle the longest to close; false if every one is busy.
fn evict_idlest(live: &HashMap<u64, Arc<ConnState>>) -> bool {
    let victim = live
        .values()
        .filter(|s| !s.evicting.load(Ordering::Relaxed))
        .filter_map(|s| s.idle_since().map(|t| (t, s)))
        .min_by_key(|(t, _)| *t);
    match victim {
        Some((_, s)) => {
            s.evicting.store(true, Ordering::Relaxed);
            s.evict.notify_one();
            true
        }
        None => false,
    }
}

fn is_descriptor_exhaustion(e: &std::io::Error) -> bool {
    // EMFILE (process) and ENFILE (system): the only accept errors that persist.
    matches!(e.raw_os_error(), Some(24) | Some(23))
}

/// Rate-limited logging of accept failures: one line per interval, with a count.
#[derive(Default)]
struct AcceptFailures {
    last_warned: Option<Instant>,
    suppressed: u64,
}

impl AcceptFailures {
    fn note(&mut self, listener: &str, e: &std::io::Error) {
        metrics::counter!(m::ACCEPT_ERRORS, "listener" => listener.to_string()).increment(1);
        let now = Instant::now();
        if self
            .last_warned
            .is_some_and(|t| now.duration_since(t) < ACCEPT_WARN_EVERY)
        {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(
            listener,
            error = %e,
            repeated = self.suppressed,
            "accept failed; closing the longest-idle connection and retrying"
        );
        self.last_warned = Some(now);
        self.suppressed = 0;
    }
}
