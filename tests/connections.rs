//! Connections that send nothing are closed in every phase, and a connection cap keeps
//! silent sockets from starving real clients (probe G1).

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use support::net::{assert_closed_by_server, BOUND};
use support::{chat, chat_stream, MockUpstream, Reply, TestProxy};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn proxy(
    mock: &MockUpstream,
    configure: impl FnOnce(support::proxy::TestProxyBuilder) -> support::proxy::TestProxyBuilder,
) -> TestProxy {
    configure(TestProxy::builder().provider(
        "openai",
        "openai",
        &mock.base_url(),
        &["gpt-4o"],
        &["sk-a"],
    ))
    .start()
    .await
}

#[tokio::test]
async fn a_socket_that_never_sends_a_byte_is_closed() {
    let mock = MockUpstream::start().await;
    let proxy = proxy(&mock, |b| b.timeout("request_header", "300ms")).await;
    let s = TcpStream::connect(proxy.addr).await.unwrap();
    assert_closed_by_server(s, "silent TCP").await;
}

#[tokio::test]
async fn a_partial_h2_preface_is_closed() {
    let mock = MockUpstream::start().await;
    let proxy = proxy(&mock, |b| b.timeout("request_header", "300ms")).await;
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    // 16 of the 24 preface bytes: hyper-util is still deciding between h1 and h2.
    s.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert_closed_by_server(s, "partial preface").await;
}

#[tokio::test]
async fn a_silent_connection_after_the_tls_handshake_is_closed() {
    let mock = MockUpstream::start().await;
    let proxy = proxy(&mock, |b| b.tls().timeout("request_header", "300ms")).await;
    let cert = proxy.cert.as_ref().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls_pki_types::CertificateDer::from(cert.der.clone()))
        .unwrap();
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.expect("handshake");
    assert_closed_by_server(tls, "silent after TLS").await;
}

/// One request over a raw HTTP/1.1 keep-alive connection; its answer read to the end.
async fn served_keep_alive(addr: std::net::SocketAddr) -> TcpStream {
    use tokio::io::AsyncReadExt;
    let body = chat("gpt-4o").to_string();
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: keyway\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The mock's answer is small JSON: read until its closing brace.
    while !got.ends_with(b"}") {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf))
            .await
            .expect("no answer")
            .unwrap();
        assert!(n > 0, "closed before the answer ended");
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    s
}

/// `idle` far beyond [`BOUND`]: only `request_header` can close its connections.
async fn head_bound_proxy(mock: &MockUpstream) -> TestProxy {
    proxy(mock, |b| {
        b.timeout("request_header", "300ms").timeout("idle", "600s")
    })
    .await
}

#[tokio::test]
async fn a_kept_alive_h1_connection_that_goes_silent_is_closed_at_request_header() {
    let mock = MockUpstream::start().await;
    let proxy = head_bound_proxy(&mock).await;
    let s = served_keep_alive(proxy.addr).await;
    assert_closed_by_server(s, "silent after a served request").await;
}

#[tokio::test]
async fn a_kept_alive_h1_connection_that_trickles_its_next_head_is_closed() {
    let mock = MockUpstream::start().await;
    let proxy = head_bound_proxy(&mock).await;
    let mut s = served_keep_alive(proxy.addr).await;
    s.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: keyway\r\n")
        .await
        .unwrap();
    // A header line now and then, never the blank line that ends the head.
    let trickle = async {
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if s.write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
        }
    };
    assert!(
        tokio::time::timeout(BOUND, trickle).await.is_ok(),
        "a trickled head kept the connection open for {BOUND:?}"
    );
}

#[tokio::test]
async fn an_idle_h2_connection_that_answers_pings_is_closed() {
    let mock = MockUpstream::start().await;
    let proxy = proxy(&mock, |b| b.timeout("idle", "300ms")).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    // The client side answers PINGs and SETTINGS for as long as it runs.
    let driver = tokio::spawn(conn);
    let req = http::Request::post("http://localhost/v1/chat/completions")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(chat("gpt-4o").to_string())))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    let ended = tokio::time::timeout(BOUND, driver).await;
    assert!(
        ended.is_ok(),
        "idle h2 connection still open after {BOUND:?}"
    );
}

#[tokio::test]
async fn a_connection_busy_with_a_slow_stream_is_not_idle() {
    let mock = MockUpstream::start().await;
    // Six paced chunks take well over the idle and first-request deadlines.
    mock.push(Reply::ok().chunks(6).pacing(Duration::from_millis(150)));
    let proxy = proxy(&mock, |b| {
        b.timeout("idle", "200ms")
            .timeout("request_header", "200ms")
    })
    .await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat_stream("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.expect("stream cut short");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
}

#[tokio::test]
async fn at_the_cap_silent_sockets_make_room_for_real_requests() {
    let mock = MockUpstream::start().await;
    // Deadlines far away: only the cap's eviction can make room.
    let proxy = proxy(&mock, |b| {
        b.server("max_connections", "8")
            .timeout("request_header", "60s")
            .timeout("idle", "60s")
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..40 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    // A fresh connection per request, as a new client would open.
    let client = proxy
        .http_builder()
        .pool_max_idle_per_host(0)
        .timeout(BOUND)
        .build()
        .unwrap();
    for i in 0..20 {
        let resp = client
            .post(proxy.url("/v1/chat/completions"))
            .json(&chat("gpt-4o"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {i} failed at the cap: {e}"));
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test]
async fn at_the_cap_a_request_in_flight_is_never_evicted() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::ok().chunks(8).pacing(Duration::from_millis(100)));
    let proxy = proxy(&mock, |b| {
        b.server("max_connections", "2")
            .timeout("request_header", "60s")
    })
    .await;
    let stream = proxy
        .post("/v1/chat/completions")
        .json(&chat_stream("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    // Fill and overflow the cap while the stream runs.
    let mut silent = Vec::new();
    for _ in 0..10 {
        silent.push(TcpStream::connect(proxy.addr).await.unwrap());
    }
    let body = stream.text().await.expect("the busy stream was cut");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
}

#[tokio::test]
async fn connections_are_spread_over_the_serving_threads() {
    let mock = MockUpstream::start().await;
    let proxy = proxy(&mock, |b| b.server("workers", "2").admin(None, true)).await;
    let workers = || async { proxy.admin_state().await["workers"].clone() };
    assert_eq!(workers().await, serde_json::json!([0, 0]));
    // Four clients, one kept-alive connection each: two per thread, whatever the order.
    let clients: Vec<reqwest::Client> = (0..4)
        .map(|_| {
            proxy
                .http_builder()
                .pool_max_idle_per_host(1)
                .timeout(BOUND)
                .build()
                .unwrap()
        })
        .collect();
    for round in 0..3 {
        for client in &clients {
            let resp = client
                .post(proxy.url("/v1/chat/completions"))
                .json(&chat("gpt-4o"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "round {round}");
            resp.bytes().await.unwrap();
        }
        assert_eq!(workers().await, serde_json::json!([2, 2]), "round {round}");
    }
    drop(clients);
    for _ in 0..200 {
        if workers().await == serde_json::json!([0, 0]) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("connections still counted open: {}", workers().await);
}
