//! The floor of Keyway's stack: the least a reverse proxy built on the same building
//! blocks (tokio, hyper 1.x) does per request, used by `scripts/bench.sh` as a third
//! baseline beside "direct" and "nginx". It shows how much of Keyway's cost per request is
//! the HTTP/1 engine itself and how much is Keyway's own work.
//!
//! It is shaped like Keyway's serving path at its cheapest: one single-threaded runtime per
//! CPU, each accepting on its own `SO_REUSEPORT` listener; a per-thread pool of HTTP/1.1
//! keep-alive upstream connections (`hyper::client::conn`), a sender going back to the pool
//! when the response body has been read to its end; the request's path sent to one
//! configured upstream with a fixed `Authorization` header. No routing, no policy, no
//! authentication, no metrics, no timeouts, no header filtering, no request parsing. Not
//! for production: it exists to be measured against.
//!
//!   cargo run --release --example hyper_floor -- --listen 127.0.0.1:8081 \
//!       --upstream 127.0.0.1:8080 [--threads N]

use std::cell::RefCell;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::header::{HeaderValue, AUTHORIZATION, HOST};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

// The allocator Keyway uses, so the comparison is like for like.
#[global_allocator]
static GLOBAL: keyway::allocator::Mimalloc = keyway::allocator::Mimalloc;

thread_local! {
    /// This thread's idle upstream connections.
    static POOL: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

struct Args {
    listen: SocketAddr,
    upstream: SocketAddr,
    threads: usize,
}

fn args() -> Result<Args, String> {
    let mut listen = None;
    let mut upstream = None;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = Some(value.parse().map_err(|e| format!("--listen: {e}"))?),
            "--upstream" => upstream = Some(value.parse().map_err(|e| format!("--upstream: {e}"))?),
            "--threads" => threads = value.parse().map_err(|e| format!("--threads: {e}"))?,
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen ADDR is required")?,
        upstream: upstream.ok_or("--upstream ADDR is required")?,
        threads: threads.max(1),
    })
}

fn main() {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("hyper_floor: {e}");
            std::process::exit(2);
        }
    };
    let host = HeaderValue::from_str(&args.upstream.to_string())
        .expect("an address is a valid header value");
    let threads: Vec<_> = (0..args.threads)
        .map(|i| {
            let host = host.clone();
            let (listen, upstream) = (args.listen, args.upstream);
            std::thread::Builder::new()
                .name(format!("floor-{i}"))
                .spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    rt.block_on(serve(listen, upstream, host))
                })
                .expect("thread")
        })
        .collect();
    for t in threads {
        if let Err(e) = t.join().expect("serving thread panicked") {
            eprintln!("hyper_floor: {e}");
            std::process::exit(1);
        }
    }
}

async fn serve(listen: SocketAddr, upstream: SocketAddr, host: HeaderValue) -> std::io::Result<()> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseport(true)?;
    socket.set_reuseaddr(true)?;
    socket.bind(listen)?;
    let listener = socket.listen(1024)?;
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        let host = host.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |req| forward(req, upstream, host.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type Reply = http::Response<FloorBody>;

async fn forward(
    req: http::Request<Incoming>,
    upstream: SocketAddr,
    host: HeaderValue,
) -> Result<Reply, Infallible> {
    let (mut parts, body) = req.into_parts();
    parts.uri = match parts.uri.path_and_query() {
        Some(pq) => http::Uri::from(pq.clone()),
        None => http::Uri::from_static("/"),
    };
    parts.headers.insert(HOST, host);
    parts.headers.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Bearer sk-floor-upstream-key"),
    );
    let req = http::Request::from_parts(parts, body);
    let mut sender = match checkout(upstream).await {
        Ok(s) => s,
        Err(e) => return Ok(bad_gateway(&e.to_string())),
    };
    match sender.send_request(req).await {
        Ok(resp) => Ok(resp.map(|body| FloorBody::Upstream {
            body,
            sender: Some(sender),
        })),
        Err(e) => Ok(bad_gateway(&e.to_string())),
    }
}

async fn checkout(
    upstream: SocketAddr,
) -> Result<SendRequest<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
    while let Some(mut sender) = POOL.with_borrow_mut(Vec::pop) {
        if sender.ready().await.is_ok() {
            return Ok(sender);
        }
    }
    let stream = tokio::net::TcpStream::connect(upstream).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    Ok(sender)
}

fn bad_gateway(msg: &str) -> Reply {
    let mut resp = http::Response::new(FloorBody::Local(Some(Bytes::from(format!(
        "bad gateway: {msg}\n"
    )))));
    *resp.status_mut() = http::StatusCode::BAD_GATEWAY;
    resp
}

/// A response body: the upstream's, whose connection goes back to this thread's pool once
/// the body has been read to its end, or a locally made error message.
enum FloorBody {
    Upstream {
        body: Incoming,
        sender: Option<SendRequest<Incoming>>,
    },
    Local(Option<Bytes>),
}

impl Body for FloorBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            FloorBody::Local(msg) => Poll::Ready(msg.take().map(|b| Ok(Frame::data(b)))),
            FloorBody::Upstream { body, sender } => {
                let frame = std::task::ready!(Pin::new(&mut *body).poll_frame(cx));
                if (frame.is_none() || body.is_end_stream()) && sender.is_some() {
                    let s = sender.take();
                    POOL.with_borrow_mut(|pool| pool.extend(s));
                }
                Poll::Ready(frame)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            FloorBody::Local(msg) => msg.is_none(),
            FloorBody::Upstream { body, .. } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            FloorBody::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            FloorBody::Local(None) => SizeHint::with_exact(0),
            FloorBody::Upstream { body, .. } => body.size_hint(),
        }
    }
}
