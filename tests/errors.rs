//! Bad input and failed upstreams get the right status and the API's own error shape.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::{chat, MockUpstream, Reply, TestProxy};

const CLIENT_KEY: &str = "kw-client-key-errors-0001";

async fn proxy_with(mock_url: &str) -> TestProxy {
    TestProxy::builder()
        .client("dev", CLIENT_KEY)
        .max_body(4096)
        .timeout("upstream_headers", "500ms")
        .provider("openai", "openai", mock_url, &["gpt-4o"], &["sk-a"])
        .provider(
            "anthropic",
            "anthropic",
            mock_url,
            &["claude-3-5-sonnet"],
            &["sk-ant"],
        )
        .start()
        .await
}

/// Asserts an OpenAI-shaped error and returns its message.
async fn openai_error(resp: reqwest::Response, status: u16, code: &str) -> String {
    assert_eq!(resp.status(), status);
    assert!(resp.headers().contains_key("x-keyway-request-id"));
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    v["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn client_errors_in_openai_shape() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_with(&mock.base_url()).await;
    let post = |body: &'static str| proxy.post("/v1/chat/completions").body(body).send();

    let m = openai_error(post("{not json").await.unwrap(), 400, "invalid_json").await;
    assert!(m.contains("not valid JSON"), "{m}");
    openai_error(
        post(r#"{"messages":[]}"#).await.unwrap(),
        400,
        "missing_model",
    )
    .await;
    openai_error(post(r#"{"model":7}"#).await.unwrap(), 400, "invalid_model").await;
    let m = openai_error(
        post(r#"{"model":"nope-1"}"#).await.unwrap(),
        404,
        "model_not_found",
    )
    .await;
    assert!(m.contains("nope-1"));

    let big = json!({"model": "gpt-4o", "pad": "x".repeat(5000)});
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&big)
        .send()
        .await
        .unwrap();
    openai_error(resp, 413, "request_too_large").await;

    let resp = proxy
        .http()
        .get(proxy.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["allow"], "POST");
    openai_error(resp, 405, "method_not_allowed").await;

    let resp = proxy
        .post("/v1/unknown")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    openai_error(resp, 404, "unknown_url").await;

    // A model only an Anthropic provider serves, asked for in a format no translator
    // reaches it from (chat completions are translated; embeddings are not).
    let resp = proxy
        .post("/v1/embeddings")
        .json(&json!({"model": "claude-3-5-sonnet", "input": "hi"}))
        .send()
        .await
        .unwrap();
    let m = openai_error(resp, 400, "unsupported_format").await;
    assert!(m.contains("anthropic") && m.contains("embeddings"), "{m}");
    assert!(
        mock.received().is_empty(),
        "no bad request reached the upstream"
    );
}

#[tokio::test]
async fn unauthenticated_requests_are_refused() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_with(&mock.base_url()).await;
    let url = proxy.url("/v1/chat/completions");
    let none = proxy
        .http()
        .post(&url)
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    openai_error(none, 401, "invalid_api_key").await;
    let wrong = proxy
        .http()
        .post(&url)
        .bearer_auth("kw-wrong")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    openai_error(wrong, 401, "invalid_api_key").await;
    let models = proxy
        .http()
        .get(proxy.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 401);
    assert!(mock.received().is_empty());
}

#[tokio::test]
async fn anthropic_endpoint_errors_use_the_anthropic_shape() {
    let mock = MockUpstream::start().await;
    let proxy = proxy_with(&mock.base_url()).await;
    let resp = proxy
        .post("/v1/messages")
        .body("{oops")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    let resp = proxy
        .http()
        .post(proxy.url("/v1/messages"))
        .json(&chat("claude-3-5-sonnet"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "authentication_error");
    // A field the translation to an OpenAI provider cannot carry: Anthropic's shape.
    let resp = proxy
        .post("/v1/messages")
        .json(&json!({"model": "gpt-4o", "max_tokens": 5,
            "mcp_servers": [{"type": "url", "url": "https://mcp.example", "name": "m"}],
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("MCP"),
        "{v}"
    );
    assert!(mock.received().is_empty());
}

#[tokio::test]
async fn unreachable_upstream_is_502_naming_the_provider() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = proxy_with(&format!("http://127.0.0.1:{port}/v1")).await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    let trace = resp.headers()["x-keyway-attempts"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(trace.contains("network"), "{trace}");
    let m = openai_error(resp, 502, "upstream_unreachable").await;
    assert!(
        m.contains("openai/gpt-4o main/k0") && m.contains("Connection refused"),
        "{m}"
    );
}

/// An upstream connection keeps one head timer across its requests (armed by the first):
/// a later request on it that gets no head is still cut at its own deadline, and the next
/// request goes out on a fresh connection.
#[tokio::test]
async fn a_reused_upstream_connection_without_headers_in_time_is_504() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::ok()).push(Reply::hang()).push(Reply::ok());
    // One serving thread: one pool shard, whichever client connection a request comes on.
    let proxy = TestProxy::builder()
        .client("dev", CLIENT_KEY)
        .server("workers", "1")
        .timeout("upstream_headers", "500ms")
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-a"])
        .start()
        .await;
    let send = || {
        tokio::time::timeout(
            Duration::from_secs(10),
            proxy
                .post("/v1/chat/completions")
                .json(&chat("gpt-4o"))
                .send(),
        )
    };
    let first = send().await.unwrap().unwrap();
    assert_eq!(first.status(), 200);
    first.bytes().await.unwrap();
    let m = openai_error(send().await.unwrap().unwrap(), 504, "upstream_timeout").await;
    assert!(m.contains("500ms"), "{m}");
    assert_eq!(
        mock.connections(),
        1,
        "the second request was not on the first's connection"
    );
    let third = send().await.unwrap().unwrap();
    assert_eq!(third.status(), 200);
    assert_eq!(mock.connections(), 2);
}

#[tokio::test]
async fn upstream_without_headers_in_time_is_504() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::hang());
    let proxy = proxy_with(&mock.base_url()).await;
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        proxy
            .post("/v1/chat/completions")
            .json(&chat("gpt-4o"))
            .send(),
    )
    .await
    .unwrap()
    .unwrap();
    let m = openai_error(resp, 504, "upstream_timeout").await;
    assert!(
        m.contains("openai/gpt-4o main/k0") && m.contains("500ms"),
        "{m}"
    );
}
