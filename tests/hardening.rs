//! The probe's findings (PROBE-2026-11-27), each kept closed over real sockets: upstream
//! secret echo (G2), header and URI limits (G3), SSE event cap (G4), Retry-After bounds
//! (G5), readable early rejections (G7), log correctness (G8–G10), upstream framing (G11),
//! admin deadlines (G12), strict Host / Transfer-Encoding (G13), query and forwarding
//! headers (G14).

mod support;

use std::time::Duration;

use serde_json::Value;
use support::logs::Logs;
use support::net::{assert_closed_by_server, write_all_then_read, BOUND};
use support::proxy::TestProxyBuilder;
use support::{chat, chat_stream, MockUpstream, Reply, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CLIENT_KEY: &str = "kw-client-hardening-0001";
const UPSTREAM_KEY: &str = "sk-upstream-CANARY-AAAA1111bbbb2222cccc";

/// A client key and one OpenAI provider (key [`UPSTREAM_KEY`]) on `mock`; tests add the
/// setting they are about.
fn builder_for(mock: &MockUpstream) -> TestProxyBuilder {
    TestProxy::builder().client("dev", CLIENT_KEY).provider(
        "openai",
        "openai",
        &mock.base_url(),
        &["gpt-4o"],
        &[UPSTREAM_KEY],
    )
}

async fn proxy_for(mock: &MockUpstream) -> TestProxy {
    builder_for(mock).start().await
}

/// Sends raw bytes and reads the whole answer (the request should ask to close).
async fn raw(addr: std::net::SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(BOUND, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn post_head(extra: &str, body: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\n{extra}Authorization: Bearer {CLIENT_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn status_line(resp: &str) -> &str {
    resp.lines().next().unwrap_or("")
}

// === G2: upstream secret echo ===

#[tokio::test]
async fn an_upstream_that_echoes_the_key_never_hands_it_to_the_client() {
    let mock = MockUpstream::start().await;
    let echo = format!(
        r#"{{"error":{{"message":"bad header: authorization=Bearer {UPSTREAM_KEY}","type":"invalid_request_error"}}}}"#
    );
    mock.push(Reply::status(400).body(echo));
    mock.push(Reply::ok().header("x-debug-auth", &format!("Bearer {UPSTREAM_KEY}")));
    let proxy = proxy_for(&mock).await;

    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = resp.text().await.unwrap();
    assert!(!body.contains(UPSTREAM_KEY), "{body}");
    assert!(
        body.contains("bad header: authorization=Bearer sk-"),
        "{body}"
    );
    assert!(
        body.contains('…'),
        "the key shows as its fingerprint: {body}"
    );

    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.headers()["x-debug-auth"].to_str().unwrap().to_string();
    assert!(!echoed.contains(UPSTREAM_KEY), "{echoed}");
    assert!(echoed.starts_with("Bearer sk-"), "{echoed}");
}

// === G3: header and URI limits ===

#[tokio::test]
async fn an_oversized_request_head_gets_431_on_h1() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_for(&mock).await;
    let big = format!("X-Pad: {}\r\n", "p".repeat(40 * 1024));
    let resp = raw(
        proxy.addr,
        post_head(&format!("Host: a\r\n{big}"), "{}").as_bytes(),
    )
    .await;
    assert!(status_line(&resp).contains(" 431 "), "{resp}");
    // Just under the 32 KiB default passes.
    let fits = format!("X-Pad: {}\r\n", "p".repeat(28 * 1024));
    let body = chat("gpt-4o").to_string();
    let resp = raw(
        proxy.addr,
        post_head(&format!("Host: a\r\n{fits}"), &body).as_bytes(),
    )
    .await;
    assert!(status_line(&resp).contains(" 200 "), "{resp}");
    assert_eq!(mock.received().len(), 1);
}

#[tokio::test]
async fn an_oversized_header_list_gets_431_on_h2() {
    let mock = MockUpstream::start().await;
    let proxy = builder_for(&mock).tls().start().await;
    let resp = proxy
        .http()
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .header("x-pad", "p".repeat(40 * 1024))
        .json(&chat("gpt-4o"))
        .send()
        .await;
    match resp {
        Ok(r) => {
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
            assert_eq!(r.status(), 431);
        }
        // h2 may refuse the stream instead of answering it; either way nothing went upstream.
        Err(e) => assert!(e.to_string().contains("error"), "{e}"),
    }
    assert!(mock.received().is_empty());
}

#[tokio::test]
async fn a_long_request_target_gets_414_in_the_api_error_shape() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_for(&mock).await;
    let path = format!("/v1/chat/completions?pad={}", "q".repeat(10 * 1024));
    let resp = proxy
        .http()
        .post(proxy.url(&path))
        .bearer_auth(CLIENT_KEY)
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 414);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "uri_too_long");
    assert!(mock.received().is_empty());
}

// === G4: SSE event cap ===

#[tokio::test]
async fn an_sse_event_past_the_limit_ends_the_stream_with_an_error_event() {
    let mock = MockUpstream::start().await;
    let first = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n".to_string();
    // 64 KiB frames of one event that never ends, far past the 16 KiB limit below.
    let mut frames = vec![first, "data: ".to_string()];
    frames.extend(std::iter::repeat_n("x".repeat(64 * 1024), 8));
    frames.push("\n\ndata: [DONE]\n\n".to_string());
    mock.push(Reply::ok().frames(frames));
    let proxy = builder_for(&mock)
        .server("max_sse_event_bytes", "16384")
        .start()
        .await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat_stream("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.unwrap();
    let events: Vec<&str> = body.split("\n\n").filter(|e| !e.is_empty()).collect();
    assert!(events[0].contains("\"content\":\"a\""), "{body:.200}");
    assert!(
        events[1].contains("stream_interrupted") && events[1].contains("16384"),
        "{:.300}",
        events[1]
    );
    assert_eq!(events[2], "data: [DONE]");
    assert_eq!(
        events.len(),
        3,
        "nothing of the oversized event reached the client"
    );
}

// === G5: Retry-After bounds ===

#[tokio::test]
async fn an_absurd_retry_after_is_capped_for_locks_and_for_clients() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::status(429).header("retry-after", "99999999999"));
    let proxy = builder_for(&mock)
        .admin(Some("admin-token-hardening"), false)
        .start()
        .await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let secs: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&secs), "Retry-After {secs}");
    assert!(
        secs <= 3600,
        "a rate limit waits at most max_retry_after (1h): {secs}"
    );
    let state: Value = proxy
        .http()
        .get(proxy.admin_url("/admin/state"))
        .bearer_auth("admin-token-hardening")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let locks = state["locks"].as_array().unwrap();
    assert_eq!(locks.len(), 1, "{state}");
    let remaining = locks[0]["remaining_s"].as_f64().unwrap();
    assert!(remaining > 0.0 && remaining <= 3600.0, "{remaining}");
}

#[tokio::test]
async fn a_quota_reset_hint_is_capped_at_max_quota_wait() {
    let mock = MockUpstream::start().await;
    let body =
        r#"{"error":{"message":"You exceeded your current quota","code":"insufficient_quota"}}"#;
    mock.push(Reply::status(429).body(body).header("retry-after", "1e300"));
    let proxy = builder_for(&mock)
        .policy_setting("max_quota_wait", "\"2h\"")
        .start()
        .await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429);
    let secs: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(secs > 3600 && secs <= 7200, "Retry-After {secs}");
}

// === G7: early rejections readable ===

#[tokio::test]
async fn an_early_401_is_readable_by_a_client_that_writes_the_whole_body_first() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_for(&mock).await;
    // As Python's urllib does: write all 8 MiB, only then read.
    let body = vec![b'a'; 8 << 20];
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer wrong\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let resp = write_all_then_read(proxy.addr, &head, &body).await;
    assert!(status_line(&resp).contains(" 401 "), "{resp}");
    assert!(resp.contains("invalid_api_key"), "{resp}");
}

#[tokio::test]
async fn an_early_413_is_readable_by_a_client_that_writes_the_whole_body_first() {
    let mock = MockUpstream::start().await;
    let proxy = builder_for(&mock).max_body(1 << 20).start().await;
    let body = vec![b'a'; 16 << 20];
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_KEY}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let resp = write_all_then_read(proxy.addr, &head, &body).await;
    assert!(status_line(&resp).contains(" 413 "), "{resp}");
}

#[tokio::test]
async fn an_early_401_over_h2_is_readable_by_curl() {
    let mock = MockUpstream::start().await;
    let proxy = builder_for(&mock).tls().start().await;
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("body");
    std::fs::write(&body, vec![b'a'; 5 << 20]).unwrap();
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg("--cacert")
        .arg(&proxy.cert.as_ref().unwrap().cert_path)
        .args([
            "--resolve",
            &format!("localhost:{}:127.0.0.1", proxy.addr.port()),
        ])
        .args(["-H", "Authorization: Bearer wrong", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(proxy.url("/v1/chat/completions"))
        .output()
        .await
        .expect("curl is installed by scripts/test.sh");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        shown,
        "401 2",
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// === G8, G9, G10: the request log line ===

#[tokio::test]
async fn request_log_lines_are_complete_escaped_and_name_the_path() {
    let (logs, _guard) = Logs::capture();
    let mock = MockUpstream::start().await;
    let proxy = proxy_for(&mock).await;
    // A fully read HTTP/1.1 JSON 2xx is a completed request.
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    resp.bytes().await.unwrap();
    // A model name built to forge a log line and colour the terminal.
    let forged =
        "x\n2026-11-27T00:00:00.000000Z  INFO keyway::request: forged status=200 \u{1b}[31mRED";
    let resp = proxy
        .post("/v1/chat/completions?api-version=1&key=SECRETQ")
        .json(&chat(forged))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    resp.bytes().await.unwrap();
    let lines = logs.wait_requests(2).await;
    assert!(lines[0].contains("completed=true"), "{}", lines[0]);
    assert!(
        lines[0].contains("method=POST") && lines[0].contains("path=/v1/chat/completions"),
        "{}",
        lines[0]
    );
    let text = logs.text();
    assert!(!text.contains('\u{1b}'), "raw escape byte in the log");
    assert!(
        !text.lines().any(|l| l.starts_with("2026-11-27T00:00:00")),
        "forged line:\n{text}"
    );
    assert!(
        lines[1].contains(r"model=x\n2026-11-27") && lines[1].contains(r"\u{1b}[31mRED"),
        "{}",
        lines[1]
    );
    assert!(
        !text.contains("SECRETQ"),
        "the query string is never logged"
    );
}

#[tokio::test]
async fn a_client_that_leaves_before_the_headers_is_logged_as_499() {
    let (logs, _guard) = Logs::capture();
    let mock = MockUpstream::start().await;
    mock.push(Reply::ok().latency(Duration::from_secs(30)));
    let proxy = proxy_for(&mock).await;
    let client = proxy
        .http_builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let lines = logs.wait_requests(1).await;
    assert!(
        lines[0].contains("status=499") && lines[0].contains("completed=false"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("model=gpt-4o"), "{}", lines[0]);
}

// === G11: upstream framing ===

/// An upstream answering every request with `Content-Length: 3` and a chunked `{"ok":1}`.
async fn clte_upstream() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = s.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                }
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\
                          Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n8\r\n{\"ok\":1}\r\n0\r\n\r\n",
                    )
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_with_content_length_and_chunked_is_relayed_whole() {
    let upstream = clte_upstream().await;
    let proxy = TestProxy::builder()
        .client("dev", CLIENT_KEY)
        .provider(
            "odd",
            "openai-compatible",
            &format!("http://{upstream}/v1"),
            &["m"],
            &[UPSTREAM_KEY],
        )
        .start()
        .await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat("m"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(
        resp.headers().get("content-length").map(|v| v.as_bytes()),
        Some(&b"3"[..])
    );
    assert_eq!(resp.text().await.unwrap(), r#"{"ok":1}"#);
}

// === G12: admin deadlines ===

#[tokio::test]
async fn the_admin_listener_closes_slow_and_silent_connections() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .admin(Some("admin-token-hardening"), false)
        .timeout("request_header", "300ms")
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-4o"],
            &[UPSTREAM_KEY],
        )
        .start()
        .await;
    let admin = proxy.admin_addr.unwrap();
    let mut trickle = TcpStream::connect(admin).await.unwrap();
    trickle
        .write_all(b"GET /admin/state HTTP/1.1\r\nHost: a\r\n")
        .await
        .unwrap();
    let silent = TcpStream::connect(admin).await.unwrap();
    assert_closed_by_server(trickle, "admin, trickled headers").await;
    assert_closed_by_server(silent, "admin, silent").await;
}

// === G13: strict Host and Transfer-Encoding ===

#[tokio::test]
async fn ambiguous_request_heads_get_400_and_a_close() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_for(&mock).await;
    let body = chat("gpt-4o").to_string();
    for (case, head) in [
        ("no Host", ""),
        ("two Hosts", "Host: a\r\nHost: b\r\n"),
        ("invalid Host", "Host: a b c\r\n"),
    ] {
        let resp = raw(proxy.addr, post_head(head, &body).as_bytes()).await;
        assert!(status_line(&resp).contains(" 400 "), "{case}: {resp}");
        assert!(
            resp.to_ascii_lowercase().contains("connection: close"),
            "{case}: {resp}"
        );
    }
    for te in [
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
    ] {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_KEY}\r\n{te}\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        let resp = raw(proxy.addr, req.as_bytes()).await;
        assert!(status_line(&resp).contains(" 400 "), "{te:?}: {resp}");
    }
    assert!(
        mock.received().is_empty(),
        "nothing ambiguous went upstream"
    );
    // The plain cases still pass: one Host, a single chunked coding, HTTP/1.0 without Host.
    let resp = raw(proxy.addr, post_head("Host: a\r\n", &body).as_bytes()).await;
    assert!(status_line(&resp).contains(" 200 "), "{resp}");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nAuthorization: Bearer {CLIENT_KEY}\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = raw(proxy.addr, req.as_bytes()).await;
    assert!(status_line(&resp).contains(" 200 "), "{resp}");
}

// === G14: query strings and forwarding headers ===

#[tokio::test]
async fn the_query_string_is_forwarded_and_forwarding_headers_are_not() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_for(&mock).await;
    let resp = proxy
        .post("/v1/chat/completions?api-version=2024-10-21&beta=true")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-host", "evil.example")
        .header("forwarded", "for=6.6.6.6")
        .header("x-real-ip", "6.6.6.6")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = &mock.received()[0];
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(
        got.query.as_deref(),
        Some("api-version=2024-10-21&beta=true")
    );
    for h in [
        "x-forwarded-for",
        "x-forwarded-host",
        "forwarded",
        "x-real-ip",
    ] {
        assert!(!got.headers.contains_key(h), "{h} was forwarded");
    }
}

#[tokio::test]
async fn a_provider_can_refuse_client_query_strings() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .client("dev", CLIENT_KEY)
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-4o"],
            &[UPSTREAM_KEY],
        )
        .provider_setting("forward_query", "false")
        .start()
        .await;
    let resp = proxy
        .post("/v1/chat/completions?api-version=1")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.received()[0].query, None);
}

// === G9: the real binary's text log, written to a pipe ===

#[tokio::test]
async fn keyway_run_logs_without_colour_codes_or_forged_lines_to_a_pipe() {
    use tokio::io::AsyncBufReadExt;
    let mock = MockUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), UPSTREAM_KEY).unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n[auth]\nallow_unauthenticated = true\n\
         [[provider]]\nid = \"openai\"\nkind = \"openai\"\nbase_url = \"{}\"\nmodels = [\"gpt-4o\"]\n\
         [[provider.connection]]\nid = \"main\"\nkeys = [\"file:key\"]\n",
        mock.base_url()
    );
    std::fs::write(dir.path().join("keyway.toml"), config).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyway"))
        .args(["run", "--config"])
        .arg(dir.path().join("keyway.toml"))
        .env_remove("RUST_LOG")
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = String::new();
    let addr = tokio::time::timeout(BOUND, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if let Some(rest) = line.split("addr=").nth(1) {
                if line.contains("listening (http)") {
                    return rest.split_whitespace().next().unwrap().to_string();
                }
            }
        }
        panic!("keyway exited:\n{seen}");
    })
    .await
    .expect("keyway did not start");
    let forged = "x\n2026-11-27T00:00:00.000000Z  INFO keyway::request: forged \u{1b}[31mRED";
    let resp = reqwest::Client::new()
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&chat(forged))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    tokio::time::timeout(BOUND, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("keyway::request") {
                return;
            }
        }
    })
    .await
    .expect("no request log line");
    let _ = child.kill().await;
    assert!(
        !seen.contains('\u{1b}'),
        "escape codes in a piped log:\n{seen:?}"
    );
    assert!(
        !seen.lines().any(|l| l.starts_with("2026-11-27T00:00:00")),
        "{seen}"
    );
    assert!(seen.contains(r"model=x\n2026"), "{seen}");
}
