//! No secret (client key, provider key) appears in any log line or error body, whatever
//! the traffic. Logs are captured from the real subscriber at debug level.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use support::{chat, chat_stream, MockUpstream, Reply, TestProxy};

const CLIENT_KEY: &str = "kw-client-SECRET-c1c1c1c1c1";
const PROVIDER_KEYS: [&str; 2] = ["sk-SECRET-provider-aaaaaaaa", "sk-SECRET-provider-bbbbbbbb"];
const ADMIN_TOKEN: &str = "admin-SECRET-token-0000";

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn secrets_never_reach_logs_or_error_bodies() {
    let capture = Capture::default();
    let writer = capture.clone();
    tracing_subscriber::fmt()
        .with_env_filter("debug")
        .with_writer(move || writer.clone())
        .init();

    let mock = MockUpstream::start().await;
    mock.push(Reply::status(401));
    mock.push(Reply::ok().chunks(4).cut_after(2));
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = TestProxy::builder()
        .client("dev", CLIENT_KEY)
        .admin(Some(ADMIN_TOKEN), false)
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-4o"],
            &PROVIDER_KEYS,
        )
        .provider(
            "dead",
            "openai",
            &format!("http://127.0.0.1:{dead_port}/v1"),
            &["dead-model"],
            &PROVIDER_KEYS,
        )
        .start()
        .await;
    let mut bodies = Vec::new();
    let url = proxy.url("/v1/chat/completions");
    let c = proxy.http();
    let requests = [
        proxy.post("/v1/chat/completions").json(&chat("gpt-4o")),
        proxy
            .post("/v1/chat/completions")
            .json(&chat_stream("gpt-4o")),
        proxy.post("/v1/chat/completions").json(&chat("gpt-4o")),
        proxy
            .post("/v1/chat/completions")
            .json(&chat("missing-model")),
        proxy.post("/v1/chat/completions").body("{bad json"),
        c.post(&url)
            .bearer_auth("kw-client-SECRET-wrong")
            .json(&chat("gpt-4o")),
        c.post(&url)
            .header("x-api-key", CLIENT_KEY.to_string() + "x")
            .json(&chat("gpt-4o")),
    ];
    for r in requests {
        let resp = r.send().await.unwrap();
        let head = format!("{:?}", resp.headers());
        bodies.push(head + resp.text().await.unwrap_or_default().as_str());
    }
    // Upstream unreachable: the connect error is logged and answered.
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat("dead-model"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 502);
    bodies.push(resp.text().await.unwrap());

    // Everything an operator can read: metrics, state, explain.
    for path in ["/metrics", "/admin/state", "/admin/explain?model=gpt-4o"] {
        let resp = reqwest::Client::new()
            .get(proxy.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        bodies.push(resp.text().await.unwrap());
    }
    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains("ttfb_ms") && logs.contains("total_ms"),
        "one structured line per request: {logs}"
    );
    assert!(
        logs.contains("keyway::request"),
        "request log lines are captured"
    );
    assert!(logs.contains("sk-…"), "keys show as fingerprints: {logs}");
    for secret in PROVIDER_KEYS
        .iter()
        .chain([&CLIENT_KEY, &"kw-client-SECRET-wrong", &ADMIN_TOKEN])
    {
        assert!(!logs.contains(secret), "secret {secret} in logs");
        for b in &bodies {
            assert!(!b.contains(secret), "secret {secret} in a response: {b}");
        }
    }
    assert!(!logs.contains("SECRET"), "no part of any secret is logged");
}
