//! Golden translation cases (`tests/golden/<pair>/<case>/`, from TRANSLATION.md's
//! conformance corpus): the client request mapped upstream, the upstream answer (JSON or
//! SSE) mapped back. Ids and timestamps are not compared; JSON key order never is. Every
//! stream is also fed split at every byte boundary, which must not change a client byte.

mod support;

use std::path::{Path, PathBuf};

use keyway::config::ProviderKind;
use keyway::translate::caps::{CapabilityPatch, CapabilityTable};
use keyway::translate::{chat_messages, TargetInfo, TranslatedRequest, Translation};
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

/// Removes the values that legitimately differ run to run (ids, timestamps).
fn normalise(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
        o.remove("created");
        if let Some(m) = o.get_mut("message").and_then(Value::as_object_mut) {
            m.remove("id");
        }
    }
    v
}

/// The events of an SSE text: their `data:` payload (JSON, or the literal `[DONE]`), and
/// for named events the name, which must equal the payload's `type`.
fn sse_payloads(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e.lines().find_map(|l| l.strip_prefix("event: "));
            let data = e
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n");
            if data == "[DONE]" {
                return Value::from("[DONE]");
            }
            let v =
                normalise(serde_json::from_str(&data).unwrap_or_else(|e| panic!("{data}: {e}")));
            if let Some(name) = name {
                assert_eq!(v["type"], name, "event name and payload type differ: {e}");
            }
            v
        })
        .collect()
}

fn run_stream(tr: Translation, input: &[u8], req: &TranslatedRequest, cuts: &[usize]) -> Vec<u8> {
    let mut m = tr.stream(1_700_000_000, req, "claude-sonnet-4-5");
    let mut out = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        out.extend_from_slice(&m.push(&input[from..cut]));
        from = cut;
    }
    out.extend_from_slice(&m.finish());
    out
}

/// `KEYWAY_BLESS=1` writes an expected file a new case lacks (never overwrites one): the
/// output is then read and checked by hand against TRANSLATION.md before it is committed.
fn bless(path: &Path, make: impl FnOnce() -> String) {
    if std::env::var_os("KEYWAY_BLESS").is_some() && !path.exists() {
        std::fs::write(path, make()).unwrap();
    }
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

fn golden(pair: &str, tr: Translation) {
    for dir in cases(pair) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let meta = json(&dir.join("meta.json")).unwrap();
        let target = meta["target_model"].as_str().unwrap();
        let kind = match meta["kind"].as_str() {
            Some("openai") => ProviderKind::OpenAi,
            Some("openai-compatible") => ProviderKind::OpenAiCompatible,
            _ => ProviderKind::Anthropic,
        };
        // The built-in capability table, with the case's own entry over it.
        let mut caps = CapabilityTable::default()
            .resolve_for("p", kind, target)
            .caps;
        if let Some(patch) = meta.get("capabilities") {
            let patch: CapabilityPatch = serde_json::from_value(patch.clone())
                .unwrap_or_else(|e| panic!("{name}: capabilities: {e}"));
            caps = patch.over(caps);
        }
        let info = TargetInfo {
            model: target,
            kind,
            caps: &caps,
        };
        let request = std::fs::read(dir.join("request.json")).unwrap();
        let translated = tr.request(&request, &info);
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
        bless(&dir.join("upstream_request.json"), || pretty(&upstream));
        if let Some(want) = json(&dir.join("upstream_request.json")) {
            assert_eq!(upstream, want, "{name}: upstream request");
        }
        if let Some(reply) = json(&dir.join("upstream_response.json")) {
            let body = serde_json::to_vec(&reply).unwrap();
            let got: Value =
                serde_json::from_slice(&tr.response(&body, 1_700_000_000, &translated).unwrap())
                    .unwrap();
            bless(&dir.join("client_response.json"), || pretty(&got));
            let want = json(&dir.join("client_response.json")).unwrap();
            assert_eq!(normalise(got), normalise(want), "{name}: client response");
        }
        if let Ok(sse) = std::fs::read(dir.join("upstream_response.sse")) {
            let whole = run_stream(tr, &sse, &translated, &[]);
            bless(&dir.join("client_response.sse"), || {
                String::from_utf8(whole.clone()).unwrap()
            });
            let want = std::fs::read_to_string(dir.join("client_response.sse")).unwrap();
            assert_eq!(
                sse_payloads(&String::from_utf8(whole.clone()).unwrap()),
                sse_payloads(&want),
                "{name}: client stream"
            );
            for cut in 0..=sse.len() {
                let split = run_stream(tr, &sse, &translated, &[cut]);
                assert_eq!(
                    split, whole,
                    "{name}: split at byte {cut} changed the stream"
                );
            }
        }
    }
}

#[test]
fn chat_to_messages_golden_cases() {
    golden("chat_to_messages", Translation::ChatToMessages);
}

#[test]
fn messages_to_chat_golden_cases() {
    golden("messages_to_chat", Translation::MessagesToChat);
}

#[test]
fn responses_to_chat_golden_cases() {
    golden("responses_to_chat", Translation::ResponsesToChat);
}

#[test]
fn responses_to_messages_golden_cases() {
    golden("responses_to_messages", Translation::ResponsesToMessages);
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

async fn compatible_behind_keyway(mock: &MockUpstream) -> TestProxy {
    TestProxy::builder()
        .provider(
            "deepseek",
            "openai-compatible",
            &mock.base_url(),
            &["deepseek-chat"],
            &["sk-compat-key-translation"],
        )
        .start()
        .await
}

#[tokio::test]
async fn an_anthropic_client_reaches_an_openai_compatible_provider() {
    let mock = MockUpstream::start().await;
    let proxy = compatible_behind_keyway(&mock).await;
    let resp = proxy
        .post("/v1/messages?beta=true")
        .header("anthropic-version", "2023-06-01")
        .header("anthropic-beta", "claude-code-20250219")
        .json(&json!({"model": "deepseek-chat", "max_tokens": 50,
            "system": [{"type": "text", "text": "x-anthropic-billing-header: cc_version=1; cch=1;"},
                       {"type": "text", "text": "be brief", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-keyway-dropped"], "cache_control");
    let trace = resp.headers()["x-keyway-attempts"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(trace.contains("via messages-to-chat"), "{trace}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": "tok0 tok1 tok2 "}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(v["usage"]["input_tokens"], 5);
    assert_eq!(v["usage"]["output_tokens"], 3);
    let got = &mock.received()[0];
    assert_eq!(got.path, "/v1/chat/completions");
    assert_eq!(got.query.as_deref(), Some("beta=true"));
    assert_eq!(got.key.as_deref(), Some("sk-compat-key-translation"));
    assert!(!got.headers.contains_key("anthropic-version"));
    assert!(!got.headers.contains_key("anthropic-beta"));
    let sent = got.json();
    assert_eq!(
        sent["messages"],
        json!([{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}])
    );
    assert_eq!(sent["max_tokens"], 50);
}

#[tokio::test]
async fn an_anthropic_client_gets_a_well_formed_event_stream() {
    let mock = MockUpstream::start().await;
    let proxy = compatible_behind_keyway(&mock).await;
    let resp = proxy
        .post("/v1/messages")
        .json(
            &json!({"model": "deepseek-chat", "max_tokens": 50, "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let events = sse_payloads(&text);
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types.first(), Some(&"message_start"));
    assert_eq!(&types[types.len() - 2..], ["message_delta", "message_stop"]);
    let text: String = events
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "tok0 tok1 tok2 ");
    let delta = &events[events.len() - 2];
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert_eq!(
        delta["usage"]["output_tokens"], 3,
        "usage asked of the upstream: {delta}"
    );
    assert_eq!(
        mock.received()[0].json()["stream_options"]["include_usage"],
        true
    );
}

#[tokio::test]
async fn count_tokens_is_passed_to_anthropic_and_estimated_elsewhere() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .provider(
            "anthropic",
            "anthropic",
            &mock.base_url(),
            &["claude-sonnet-4-5"],
            &["sk-ant-ct"],
        )
        .provider(
            "deepseek",
            "openai-compatible",
            &mock.base_url(),
            &["deepseek-chat"],
            &["sk-ds-ct"],
        )
        .start()
        .await;
    let body = |model: &str| {
        json!({"model": model, "system": "s".repeat(40),
               "messages": [{"role": "user", "content": "x".repeat(400)}]})
    };
    let resp = proxy
        .post("/v1/messages/count_tokens")
        .json(&body("claude-sonnet-4-5"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-keyway-token-count").is_none());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["input_tokens"], 42, "the provider's own count");
    assert_eq!(mock.received()[0].path, "/v1/messages/count_tokens");
    let resp = proxy
        .post("/v1/messages/count_tokens")
        .json(&body("deepseek-chat"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-keyway-token-count"], "estimated");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["input_tokens"], 110, "(40 + 400) bytes / 4");
    assert_eq!(
        mock.received().len(),
        1,
        "an estimate never reaches an upstream"
    );
}

// === Choosing identity first; the capability table ===

#[tokio::test]
async fn a_provider_that_also_speaks_messages_gets_anthropic_clients_untouched() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .provider(
            "vllm",
            "openai-compatible",
            &mock.base_url(),
            &["qwen3-coder"],
            &["sk-vllm-key"],
        )
        .provider_setting("formats", r#"["chat", "messages"]"#)
        .start()
        .await;
    let body = r#"{"model":"qwen3-coder","max_tokens":20,"thinking":{"type":"enabled","budget_tokens":2000},"messages":[{"role":"user","content":"hi"}]}"#;
    let resp = proxy
        .post("/v1/messages")
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let trace = resp.headers()["x-keyway-attempts"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(!trace.contains("via"), "identity, not translated: {trace}");
    assert!(resp.headers().get("x-keyway-dropped").is_none());
    let got = &mock.received()[0];
    assert_eq!(got.path, "/v1/messages");
    assert_eq!(&got.body[..], body.as_bytes(), "byte for byte");
    assert_eq!(got.key.as_deref(), Some("sk-vllm-key"));
    // The same provider still takes OpenAI clients as they are.
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&json!({"model": "qwen3-coder", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.received()[1].path, "/v1/chat/completions");
}

#[tokio::test]
async fn a_provider_or_a_route_can_forbid_translation() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .provider(
            "strict",
            "openai-compatible",
            &mock.base_url(),
            &["m-strict"],
            &["sk-strict-key"],
        )
        .provider_setting("translate", "false")
        .provider(
            "open",
            "openai-compatible",
            &mock.base_url(),
            &[],
            &["sk-open-key"],
        )
        .policy(
            r#"
fn init() {
    #{ routes: [
        #{ model: "identity-only", targets: ["open/m-open"], translate: false },
        #{ model: "either", targets: ["open/m-open"] },
    ] }
}
fn route(req) {
    // A policy can see the request's format and how each candidate would be reached.
    let c = routes::resolve(req.model);
    if req.header("x-prefer-identity") == "1" {
        c.filter(|t| routes::translation(req, t) == "")
    } else {
        c
    }
}
fn select_key(req, conn) { keys::round_robin(conn) }
fn on_outcome(req, attempt, outcome) { if outcome.class == "ok" { "return" } else { "next" } }
"#,
        )
        .start()
        .await;
    let ask = |model: &str| {
        proxy
            .post("/v1/messages")
            .json(&json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}))
    };
    for (model, says) in [
        (
            "m-strict",
            "config forbids translating messages requests (`translate = false`)",
        ),
        (
            "identity-only",
            "the route forbids translating messages requests (`translate: false`)",
        ),
    ] {
        let resp = ask(model).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{model}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(v["type"], "error", "Anthropic's error shape");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(says), "{model}: {msg}");
    }
    // The route that allows it translates; a policy that prefers identity finds none.
    let resp = ask("either").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let resp = ask("either")
        .header("x-prefer-identity", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        mock.received().len(),
        1,
        "only the allowed translation went upstream"
    );
}

#[tokio::test]
async fn the_capability_table_shapes_translated_requests_and_is_visible() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .provider(
            "deepseek",
            "openai-compatible",
            &mock.base_url(),
            &["deepseek-reasoner"],
            &["sk-ds-key"],
        )
        .admin(None, true)
        .extra(
            r#"
[[capability]]
models = "deepseek-*"
max_output_tokens = 8192
thinking = "effort"
reasoning_replay = "reasoning_content"
"#,
        )
        .start()
        .await;
    let resp = proxy
        .post("/v1/messages")
        .json(&json!({"model": "deepseek-reasoner", "max_tokens": 32000,
            "thinking": {"type": "adaptive"}, "output_config": {"effort": "medium"},
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "earlier plan", "signature": "kw1:unsigned"},
                    {"type": "text", "text": "hello"}]},
                {"role": "user", "content": "go on"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-keyway-dropped").is_none());
    let sent = mock.received()[0].json();
    assert_eq!(sent["max_tokens"], 8192, "clamped to the table's cap");
    assert_eq!(sent["reasoning_effort"], "medium");
    assert_eq!(sent["messages"][1]["reasoning_content"], "earlier plan");
    // /admin/state lists the table (config entries first, with file:line) and each
    // configured model's resolved capabilities.
    let state: Value = proxy
        .http()
        .get(proxy.admin_url("/admin/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first = &state["capabilities"][0];
    assert_eq!(first["models"], "deepseek-*");
    assert!(
        first["source"].as_str().unwrap().contains("keyway.toml:"),
        "{first}"
    );
    assert!(state["capabilities"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["models"] == "claude-opus-4-7*" && e["source"] == "built-in"));
    let p = &state["providers"][0];
    assert_eq!(p["formats"], json!(["chat"]));
    assert_eq!(p["models"][0]["capabilities"]["max_output_tokens"], 8192);
    assert_eq!(p["models"][0]["capabilities"]["thinking"], "effort");
    // explain says how each candidate is reached and what it accepts.
    let ex: Value = proxy
        .http()
        .get(proxy.admin_url("/admin/explain?model=deepseek-reasoner&endpoint=messages"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let c = &ex["candidates"][0];
    assert_eq!(c["via"], "messages-to-chat");
    assert_eq!(c["capabilities"]["max_tokens_field"], "max_tokens");
    assert!(c["capabilities"]["from"][0]
        .as_str()
        .unwrap()
        .starts_with("deepseek-* ("));
}

#[tokio::test]
async fn thinking_keyway_made_up_never_reaches_anthropic() {
    let mock = MockUpstream::start().await;
    let proxy = anthropic_behind_keyway(&mock).await;
    // Claude Code replays a turn an OpenAI-compatible model answered (through Keyway),
    // now routed to Anthropic with manual thinking: the made-up block must go, and with
    // the tool turn left without signed thinking, thinking is off for this request.
    let resp = proxy
        .post("/v1/messages")
        .json(&json!({"model": "claude-sonnet-4-5", "max_tokens": 4000,
            "thinking": {"type": "enabled", "budget_tokens": 2000},
            "messages": [
                {"role": "user", "content": "read a.rs"},
                {"role": "assistant", "content": [
                    {"type": "thinking", "thinking": "plan", "signature": "kw1:unsigned"},
                    {"type": "tool_use", "id": "call_1", "name": "Read", "input": {"path": "a.rs"}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_1", "content": "fn main() {}"}]}],
            "tools": [{"name": "Read", "input_schema": {"type": "object"}}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sent = mock.received()[0].json();
    assert_eq!(
        sent["messages"][1]["content"],
        json!([{"type": "tool_use", "id": "call_1", "name": "Read", "input": {"path": "a.rs"}}])
    );
    assert!(sent.get("thinking").is_none(), "{sent}");
    assert_eq!(sent["max_tokens"], 4000, "everything else as sent");
}
