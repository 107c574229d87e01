//! Golden translation cases (`tests/golden/<pair>/<case>/`, from TRANSLATION.md's
//! conformance corpus): the client request mapped upstream, the upstream answer (JSON or
//! SSE) mapped back. Ids and timestamps are not compared; JSON key order never is. Every
//! stream is also fed split at every byte boundary, which must not change a client byte.

mod support;

use std::path::{Path, PathBuf};

use keyway::translate::anthropic_stream::AnthropicToChat;
use keyway::translate::chat_messages;
use serde_json::{json, Value};
use support::{MockUpstream, Reply, TestProxy};

fn cases(pair: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(pair);
    let mut out: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no cases in {}", dir.display());
    out
}

fn json(path: &Path) -> Option<Value> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

/// Removes the values that legitimately differ run to run.
fn normalise(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        o.remove("created");
    }
    v
}

/// The `data:` payloads of an SSE text: JSON values, or the literal `[DONE]`.
fn sse_payloads(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let data = e
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n");
            if data == "[DONE]" {
                Value::from("[DONE]")
            } else {
                normalise(serde_json::from_str(&data).unwrap_or_else(|e| panic!("{data}: {e}")))
            }
        })
        .collect()
}

fn run_stream(input: &[u8], include_usage: bool, cuts: &[usize]) -> Vec<u8> {
    let mut m = AnthropicToChat::new(1_700_000_000, include_usage);
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        out.extend_from_slice(&m.push(&input[from..cut]));
        from = cut;
    }
    out.extend_from_slice(&m.finish());
    out
}

#[test]
fn chat_to_messages_golden_cases() {
    for dir in cases("chat_to_messages") {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let meta = json(&dir.join("meta.json")).unwrap();
        let target = meta["target_model"].as_str().unwrap();
        let request = std::fs::read(dir.join("request.json")).unwrap();
        let translated = chat_messages::request(&request, target);
        if let Some(param) = meta["error_param"].as_str() {
            let err = translated.expect_err(&name);
            assert_eq!(err.param, param, "{name}");
            continue;
        }
        let translated = translated.unwrap_or_else(|e| panic!("{name}: {e}"));
        let dropped: Vec<String> = meta["dropped"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert_eq!(translated.dropped, dropped, "{name}: dropped fields");
        let upstream: Value = serde_json::from_slice(&translated.body).unwrap();
        if let Some(want) = json(&dir.join("upstream_request.json")) {
            assert_eq!(upstream, want, "{name}: upstream request");
        }
        if let Some(reply) = json(&dir.join("upstream_response.json")) {
            let body = serde_json::to_vec(&reply).unwrap();
            let got: Value =
                serde_json::from_slice(&chat_messages::response(&body, 1_700_000_000).unwrap())
                    .unwrap();
            let want = json(&dir.join("client_response.json")).unwrap();
            assert_eq!(normalise(got), normalise(want), "{name}: client response");
        }
        if let Ok(sse) = std::fs::read(dir.join("upstream_response.sse")) {
            let whole = run_stream(&sse, translated.include_usage, &[]);
            let want = std::fs::read_to_string(dir.join("client_response.sse")).unwrap();
            assert_eq!(
                sse_payloads(&String::from_utf8(whole.clone()).unwrap()),
                sse_payloads(&want),
                "{name}: client stream"
            );
            for cut in 0..=sse.len() {
                let split = run_stream(&sse, translated.include_usage, &[cut]);
                assert_eq!(
                    split, whole,
                    "{name}: split at byte {cut} changed the stream"
                );
            }
        }
    }
}

#[test]
fn anthropic_errors_reach_openai_clients_in_their_shape() {
    let (status, body) = chat_messages::error(
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        529,
    );
    assert_eq!(status, 503);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["message"], "Overloaded");
    assert_eq!(v["error"]["type"], "server_error");
    let (status, body) = chat_messages::error(
        br#"{"type":"error","error":{"type":"invalid_request_error","message":"max_tokens: too large"}}"#,
        400,
    );
    assert_eq!(status, 400);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["message"], "max_tokens: too large");
    // A body that is not JSON (a CDN's HTML page) keeps its status and a bounded excerpt.
    let (status, body) = chat_messages::error(b"<html>bad gateway</html>", 502);
    assert_eq!(status, 502);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["message"], "<html>bad gateway</html>");
}

// === Over real sockets: an OpenAI-format client, Keyway, the mock as an Anthropic API ===

async fn anthropic_behind_keyway(mock: &MockUpstream) -> TestProxy {
    TestProxy::builder()
        .provider(
            "anthropic",
            "anthropic",
            &mock.base_url(),
            &["claude-sonnet-4-5"],
            &["sk-ant-key-translation"],
        )
        .start()
        .await
}

#[tokio::test]
async fn an_openai_chat_client_reaches_an_anthropic_provider() {
    let mock = MockUpstream::start().await;
    let proxy = anthropic_behind_keyway(&mock).await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&json!({"model": "claude-sonnet-4-5", "seed": 7,
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-keyway-dropped"], "seed");
    let trace = resp.headers()["x-keyway-attempts"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(trace.contains("via chat-to-messages"), "{trace}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "tok0 tok1 tok2 ");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // What went upstream: the Messages API, Anthropic auth, a Messages body.
    let got = &mock.received()[0];
    assert_eq!(got.path, "/v1/messages");
    assert_eq!(got.key.as_deref(), Some("sk-ant-key-translation"));
    assert!(got.headers.contains_key("anthropic-version"));
    let sent = got.json();
    assert_eq!(
        sent["system"],
        json!([{"type": "text", "text": "be brief"}])
    );
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])
    );
    assert_eq!(sent["max_tokens"], 64000);
    assert!(sent.get("seed").is_none());
}

#[tokio::test]
async fn a_streamed_answer_arrives_as_chat_chunks_with_usage() {
    let mock = MockUpstream::start().await;
    let proxy = anthropic_behind_keyway(&mock).await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&json!({"model": "claude-sonnet-4-5", "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = resp.text().await.unwrap();
    let payloads = sse_payloads(&text);
    let content: String = payloads
        .iter()
        .filter_map(|p| p["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, "tok0 tok1 tok2 ");
    let n = payloads.len();
    assert_eq!(payloads[n - 1], "[DONE]");
    assert_eq!(payloads[n - 2]["choices"], json!([]));
    assert_eq!(payloads[n - 2]["usage"]["completion_tokens"], 3);
    assert_eq!(payloads[n - 3]["choices"][0]["finish_reason"], "stop");
}

#[tokio::test]
async fn unsupported_fields_are_refused_before_any_upstream_call() {
    let mock = MockUpstream::start().await;
    let proxy = anthropic_behind_keyway(&mock).await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&json!({"model": "claude-sonnet-4-5", "n": 3, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["param"], "n");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(mock.received().is_empty());
}

#[tokio::test]
async fn an_upstream_error_comes_back_in_the_clients_shape() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::status(400).body(
        r#"{"type":"error","error":{"type":"invalid_request_error","message":"messages: roles must alternate"}}"#,
    ));
    let proxy = anthropic_behind_keyway(&mock).await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(
            &json!({"model": "claude-sonnet-4-5", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["message"], "messages: roles must alternate");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v.get("type").is_none(), "not Anthropic's shape: {v}");
}

#[tokio::test]
async fn anthropic_clients_still_reach_anthropic_untouched() {
    let mock = MockUpstream::start().await;
    let proxy = anthropic_behind_keyway(&mock).await;
    let body = r#"{"model":"claude-sonnet-4-5",  "max_tokens":5,"messages":[{"role":"user","content":"hi"}], "x":1}"#;
    let resp = proxy
        .post("/v1/messages")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-keyway-dropped").is_none());
    let trace = resp.headers()["x-keyway-attempts"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!trace.contains("via"), "{trace}");
    assert_eq!(
        &mock.received()[0].body[..],
        body.as_bytes(),
        "identity is byte for byte"
    );
}
