//! Requests and responses pass through Keyway intact: JSON, SSE, Anthropic, key rotation,
//! and the outbound host and credentials come only from config.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use support::{chat, chat_stream, MockUpstream, Reply, TestProxy};
use tokio::sync::Notify;

const CLIENT_KEY: &str = "kw-client-key-passthrough-0001";

async fn openai_proxy(mock: &MockUpstream, keys: &[&str]) -> TestProxy {
    TestProxy::builder()
        .client("dev", CLIENT_KEY)
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-4o", "text-embedding-3-small"],
            keys,
        )
        .start()
        .await
}

#[tokio::test]
async fn json_round_trip_forwards_bytes_and_injects_the_provider_key() {
    let mock = MockUpstream::start().await;
    let proxy = openai_proxy(&mock, &["sk-upstream-aaaa"]).await;
    // Odd spacing and key order: these exact bytes must reach the upstream.
    let body =
        r#"{"messages":[{"role":"user","content":"hi"}],  "model":"gpt-4o","temperature":0.5}"#;
    let resp = proxy
        .post("/v1/chat/completions")
        .header("content-type", "application/json")
        .header("user-agent", "test-agent/1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("x-keyway-request-id"));
    let trace = resp.headers()["x-keyway-attempts"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(trace.starts_with("openai/gpt-4o main/k0 200"), "{trace}");
    let json: Value = resp.json().await.unwrap();
    assert_eq!(json["object"], "chat.completion");
    assert_eq!(json["model"], "gpt-4o");

    let got = &mock.received()[0];
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(&got.body[..], body.as_bytes());
    assert_eq!(got.key.as_deref(), Some("sk-upstream-aaaa"));
    assert_eq!(got.headers["user-agent"], "test-agent/1");
    assert_eq!(got.headers["host"], mock.addr.to_string().as_str());
}

#[tokio::test]
async fn provider_prefixed_model_rewrites_only_the_model_field() {
    let mock = MockUpstream::start().await;
    let proxy = openai_proxy(&mock, &["sk-upstream-aaaa"]).await;
    let body = r#"{"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"openai/gpt-4o-mini"}]}"#;
    let resp = proxy
        .post("/v1/chat/completions")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = std::str::from_utf8(&mock.received()[0].body)
        .unwrap()
        .to_string();
    assert_eq!(
        sent,
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"openai/gpt-4o-mini"}]}"#
    );
}

#[tokio::test]
async fn completions_embeddings_and_models() {
    let mock = MockUpstream::start().await;
    let proxy = openai_proxy(&mock, &["sk-upstream-aaaa"]).await;
    let r: Value = proxy
        .post("/v1/completions")
        .json(&json!({"model": "gpt-4o", "prompt": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["object"], "text_completion");
    let r: Value = proxy
        .post("/v1/embeddings")
        .json(&json!({"model": "text-embedding-3-small", "input": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(r["data"][0]["embedding"][1], 0.2);
    let paths: Vec<_> = mock.received().iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, ["/v1/completions", "/v1/embeddings"]);

    let models: Value = proxy
        .http()
        .get(proxy.url("/v1/models"))
        .bearer_auth(CLIENT_KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids: Vec<_> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].clone())
        .collect();
    assert_eq!(ids, [json!("gpt-4o"), json!("text-embedding-3-small")]);
    assert_eq!(models["data"][0]["owned_by"], "openai");
    assert_eq!(
        mock.received().len(),
        2,
        "/v1/models is answered from config"
    );
}

#[tokio::test]
async fn sse_chunks_arrive_before_the_upstream_finishes() {
    let mock = MockUpstream::start().await;
    let gate = Arc::new(Notify::new());
    mock.push(Reply::ok().chunks(5).hold_last(gate.clone()));
    let proxy = openai_proxy(&mock, &["sk-upstream-aaaa"]).await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat_stream("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut stream = resp.bytes_stream();
    let mut seen = String::new();
    // 5 content chunks + the finish chunk are sent; `[DONE]` is held upstream.
    while seen.matches("\n\n").count() < 6 {
        let chunk = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("chunks must arrive while the upstream still holds the last one")
            .unwrap()
            .unwrap();
        seen.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(seen.contains("tok4 ") && !seen.contains("[DONE]"), "{seen}");
    gate.notify_one();
    while let Some(chunk) = stream.next().await {
        seen.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(seen.ends_with("data: [DONE]\n\n"), "{seen}");
    // Every event is valid and in order.
    let contents: Vec<String> = seen
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(String::from)
        })
        .collect();
    assert_eq!(contents, ["tok0 ", "tok1 ", "tok2 ", "tok3 ", "tok4 "]);
}

#[tokio::test]
async fn anthropic_messages_get_anthropic_auth_and_stream_through() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .client("dev", CLIENT_KEY)
        .provider(
            "anthropic",
            "anthropic",
            &mock.base_url(),
            &["claude-3-5-sonnet"],
            &["sk-ant-upstream"],
        )
        .start()
        .await;
    let body = json!({"model": "claude-3-5-sonnet", "max_tokens": 64, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    let resp = proxy
        .http()
        .post(proxy.url("/v1/messages"))
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-beta", "prompt-caching-2024-07-31")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.starts_with("event: message_start\n"), "{text}");
    assert!(
        text.ends_with("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"),
        "{text}"
    );
    let got = &mock.received()[0];
    assert_eq!(got.path, "/v1/messages");
    assert_eq!(got.headers["x-api-key"], "sk-ant-upstream");
    assert_eq!(got.headers["anthropic-version"], "2023-06-01");
    assert_eq!(got.headers["anthropic-beta"], "prompt-caching-2024-07-31");
    assert!(!got.headers.contains_key("authorization"));
}

#[tokio::test]
async fn keys_rotate_round_robin_across_a_connection() {
    let mock = MockUpstream::start().await;
    let proxy = openai_proxy(&mock, &["sk-a", "sk-b", "sk-c"]).await;
    for _ in 0..6 {
        let resp = proxy
            .post("/v1/chat/completions")
            .json(&chat("gpt-4o"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(
        mock.keys_seen(),
        ["sk-a", "sk-b", "sk-c", "sk-a", "sk-b", "sk-c"]
    );
}

#[tokio::test]
async fn request_fields_and_headers_never_steer_the_outbound_call() {
    let mock = MockUpstream::start().await;
    let proxy = openai_proxy(&mock, &["sk-configured"]).await;
    let mut body = chat("gpt-4o");
    body["api_base"] = json!("http://169.254.169.254/latest");
    body["base_url"] = json!("http://evil.example");
    body["api_key"] = json!("sk-attacker");
    let resp = proxy
        .post("/v1/chat/completions")
        .header("x-api-key", "sk-attacker-header")
        .header("openai-organization", "org-attacker")
        .header("x-forwarded-host", "evil.example")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let got = &mock.received()[0];
    assert_eq!(got.key.as_deref(), Some("sk-configured"));
    assert!(!got.headers.contains_key("x-api-key"));
    assert!(!got.headers.contains_key("openai-organization"));
    assert_eq!(got.headers["host"], mock.addr.to_string().as_str());
    // The client's own Keyway key never goes upstream.
    assert!(got.headers.iter().all(|(_, v)| !v
        .as_bytes()
        .windows(CLIENT_KEY.len())
        .any(|w| w == CLIENT_KEY.as_bytes())));
}

#[tokio::test]
async fn client_errors_from_the_upstream_pass_through_unchanged() {
    let mock = MockUpstream::start().await;
    let body = r#"{"error":{"message":"temperature must be <= 2","type":"invalid_request_error","code":"bad_temperature"}}"#;
    mock.push(
        Reply::status(400)
            .header("x-request-id", "req_123")
            .body(body),
    );
    let proxy = openai_proxy(&mock, &["sk-a", "sk-b"]).await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["x-request-id"], "req_123");
    assert_eq!(resp.text().await.unwrap(), body);
    assert_eq!(
        mock.received().len(),
        1,
        "a client error is not retried on another key"
    );
}
