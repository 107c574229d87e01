//! The policy-driven attempt loop over real sockets: rate limits lock keys for the window
//! the upstream asked for (a manual clock moves time), failures fall back to the next key
//! or candidate, and when nothing is left the client learns why, attempt by attempt.

mod support;

use std::sync::Arc;

use keyway::quota::ManualClock;
use serde_json::Value;
use support::{chat, chat_stream, MockUpstream, Reply, TestProxy};

const T0: u64 = 1_800_000_000_000;

fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(T0))
}

async fn send(proxy: &TestProxy, model: &str) -> reqwest::Response {
    proxy
        .post("/v1/chat/completions")
        .json(&chat(model))
        .send()
        .await
        .unwrap()
}

fn trace(resp: &reqwest::Response) -> String {
    resp.headers()["x-keyway-attempts"]
        .to_str()
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn a_429_locks_that_key_for_retry_after_and_the_next_request_uses_another() {
    let mock = MockUpstream::start().await;
    mock.push_for_key("sk-a", Reply::status(429).retry_after(30));
    let clock = clock();
    let proxy = TestProxy::builder()
        .clock(clock.clone())
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-4o"],
            &["sk-a", "sk-b"],
        )
        .start()
        .await;

    let resp = send(&proxy, "gpt-4o").await;
    assert_eq!(resp.status(), 200);
    let t = trace(&resp);
    assert!(
        t.starts_with("openai/gpt-4o main/k0 429") && t.contains(", openai/gpt-4o main/k1 200"),
        "{t}"
    );
    for _ in 0..3 {
        assert_eq!(send(&proxy, "gpt-4o").await.status(), 200);
    }
    assert_eq!(mock.keys_seen(), ["sk-a", "sk-b", "sk-b", "sk-b", "sk-b"]);

    // One millisecond before the window ends, k0 is still locked; at the end it is back.
    clock.advance_ms(29_999);
    send(&proxy, "gpt-4o").await;
    assert_eq!(mock.keys_seen().last().unwrap(), "sk-b");
    clock.advance_ms(1);
    for _ in 0..2 {
        send(&proxy, "gpt-4o").await;
    }
    let seen = mock.keys_seen();
    assert_eq!(&seen[seen.len() - 2..], ["sk-a", "sk-b"].map(String::from));
}

#[tokio::test]
async fn a_401_cools_the_key_and_a_second_marks_it_invalid() {
    let mock = MockUpstream::start().await;
    mock.default_for_key("sk-bad", Reply::status(401));
    let clock = clock();
    let proxy = TestProxy::builder()
        .clock(clock.clone())
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-4o"],
            &["sk-bad", "sk-good"],
        )
        .start()
        .await;
    assert_eq!(send(&proxy, "gpt-4o").await.status(), 200);
    for _ in 0..4 {
        assert_eq!(send(&proxy, "gpt-4o").await.status(), 200);
    }
    let bad = |m: &MockUpstream| m.keys_seen().iter().filter(|k| *k == "sk-bad").count();
    assert_eq!(bad(&mock), 1, "cooled for 10 minutes");
    clock.advance_ms(600_000);
    for _ in 0..2 {
        send(&proxy, "gpt-4o").await;
    }
    assert_eq!(bad(&mock), 2, "tried again after the cool-down");
    clock.advance_ms(600_000);
    for _ in 0..4 {
        send(&proxy, "gpt-4o").await;
    }
    assert_eq!(bad(&mock), 2, "two failures in a row: invalid for a day");
}

#[tokio::test]
async fn all_keys_rate_limited_answers_429_with_the_earliest_retry_after() {
    let mock = MockUpstream::start().await;
    mock.push_for_key("sk-a", Reply::status(429).retry_after(40));
    mock.push_for_key("sk-b", Reply::status(429).retry_after(20));
    let clock = clock();
    let proxy = TestProxy::builder()
        .clock(clock.clone())
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-4o"],
            &["sk-a", "sk-b"],
        )
        .start()
        .await;
    let resp = send(&proxy, "gpt-4o").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "20");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(v["error"]["type"], "rate_limit_error");
    let attempts = v["error"]["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[0]["outcome"], "rate_limited");
    assert_eq!(attempts[1]["retry_after_ms"], 20_000);
    assert!(attempts[0]["fingerprint"]
        .as_str()
        .unwrap()
        .starts_with('…'));
    assert!(!v.to_string().contains("sk-a"), "no secret in the body");

    // Now nothing is tried at all: the locks answer at once.
    clock.advance_ms(5_000);
    let resp = send(&proxy, "gpt-4o").await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "15");
    assert!(trace(&resp).contains("skipped"));
    assert_eq!(mock.received().len(), 2);

    clock.advance_ms(15_000);
    assert_eq!(send(&proxy, "gpt-4o").await.status(), 200);
    assert_eq!(mock.keys_seen().last().unwrap(), "sk-b");
}

const FALLBACK_POLICY: &str = r#"
fn init() { #{ routes: [ #{ model: "gpt-4o", targets: ["openai/gpt-4o", "backup/gpt-4o-mini"] } ] } }
fn route(req) { routes::resolve(req.model) }
"#;

async fn two_provider_proxy(mock: &MockUpstream, clock: Arc<ManualClock>) -> TestProxy {
    two_provider_proxy_with(mock, clock, FALLBACK_POLICY).await
}

async fn two_provider_proxy_with(
    mock: &MockUpstream,
    clock: Arc<ManualClock>,
    policy: &str,
) -> TestProxy {
    TestProxy::builder()
        .clock(clock)
        .policy(policy)
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-4o"],
            &["sk-primary"],
        )
        .provider(
            "backup",
            "openai-compatible",
            &mock.base_url(),
            &[],
            &["sk-backup"],
        )
        .start()
        .await
}

#[tokio::test]
async fn a_5xx_falls_back_to_the_next_candidate() {
    let mock = MockUpstream::start().await;
    mock.push_for_key("sk-primary", Reply::status(500));
    let proxy = two_provider_proxy(&mock, clock()).await;
    let resp = send(&proxy, "gpt-4o").await;
    assert_eq!(resp.status(), 200);
    assert!(
        trace(&resp).contains("openai/gpt-4o main/k0 500"),
        "{}",
        trace(&resp)
    );
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["model"], "gpt-4o-mini");
    let got = mock.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].key.as_deref(), Some("sk-backup"));
    assert_eq!(got[1].json()["model"], "gpt-4o-mini");
}

#[tokio::test]
async fn a_stream_that_fails_before_its_first_byte_falls_back() {
    let mock = MockUpstream::start().await;
    mock.push_for_key("sk-primary", Reply::ok().cut_after(0));
    let proxy = two_provider_proxy(&mock, clock()).await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat_stream("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        trace(&resp).contains("openai/gpt-4o main/k0 network"),
        "{}",
        trace(&resp)
    );
    let text = resp.text().await.unwrap();
    assert!(
        text.contains("\"model\":\"gpt-4o-mini\"") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert!(
        !text.contains("error"),
        "the client never sees the failed attempt: {text}"
    );
}

#[tokio::test]
async fn attempts_are_bounded_and_every_failure_is_listed() {
    let mock = MockUpstream::start().await;
    mock.set_default(Reply::status(503));
    let proxy = TestProxy::builder()
        .policy_setting("max_attempts", "2")
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-a"])
        .connection("second", &["sk-b"])
        .connection("third", &["sk-c"])
        .start()
        .await;
    let resp = send(&proxy, "gpt-4o").await;
    assert_eq!(resp.status(), 502);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "all_attempts_failed");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("main/k0 → 503 server") && msg.contains("second/k0 → 503 server"),
        "{msg}"
    );
    assert_eq!(mock.received().len(), 2);
}

#[tokio::test]
async fn context_overflow_moves_to_the_next_target() {
    let mock = MockUpstream::start().await;
    mock.default_for_key(
        "sk-primary",
        Reply::status(400).body(r#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#),
    );
    let proxy = two_provider_proxy(&mock, clock()).await;
    let resp = send(&proxy, "gpt-4o").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(mock.keys_seen(), ["sk-primary", "sk-backup"]);
}

#[tokio::test]
async fn an_endless_loop_in_a_hook_is_stopped_and_answered_per_on_error() {
    let mock = MockUpstream::start().await;
    let looping = "fn route(req) { loop { } }";
    let lenient = TestProxy::builder()
        .policy(looping)
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-a"])
        .start()
        .await;
    assert_eq!(
        send(&lenient, "gpt-4o").await.status(),
        200,
        "on_error = default: native routing"
    );

    let strict = TestProxy::builder()
        .policy(looping)
        .policy_setting("on_error", "\"reject\"")
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-a"])
        .start()
        .await;
    let resp = send(&strict, "gpt-4o").await;
    assert_eq!(resp.status(), 500);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "policy_error");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("route") && msg.contains("operation limit"),
        "{msg}"
    );
    assert_eq!(
        mock.received().len(),
        1,
        "only the lenient proxy reached the upstream"
    );
}

#[tokio::test]
async fn a_script_throw_reaches_the_client_as_a_clear_error() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .policy(r#"fn route(req) { if req.model.starts_with("gpt-4") { throw "gpt-4 models are not allowed for this team"; } routes::resolve(req.model) }"#)
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o", "gpt-3.5-turbo"], &["sk-a"])
        .start()
        .await;
    let resp = send(&proxy, "gpt-4o").await;
    assert_eq!(resp.status(), 403);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "policy_rejected");
    assert_eq!(
        v["error"]["message"],
        "gpt-4 models are not allowed for this team"
    );
    assert_eq!(send(&proxy, "gpt-3.5-turbo").await.status(), 200);
    assert_eq!(mock.received().len(), 1);
}

#[tokio::test]
async fn a_scripted_on_outcome_reads_response_headers_and_the_attempt() {
    // The upstream marks a 200 as degraded; the policy moves on from a degraded answer,
    // after checking it judges the attempt it thinks (a throw would fall back to the
    // native default, which returns the degraded answer).
    let mock = MockUpstream::start().await;
    mock.push_for_key("sk-primary", Reply::ok().header("x-degraded", "yes"));
    let proxy = two_provider_proxy_with(
        &mock,
        clock(),
        r#"
fn init() { #{ routes: [ #{ model: "gpt-4o", targets: ["openai/gpt-4o", "backup/gpt-4o-mini"] } ] } }
fn route(req) { routes::resolve(req.model) }
fn on_outcome(req, attempt, outcome) {
    if outcome.header("x-degraded") == "yes" {
        if attempt.number != 1 || attempt.key != "k0" || attempt.model_scope != "model:openai/gpt-4o" {
            throw "unexpected attempt " + attempt.number + " " + attempt.key + " " + attempt.model_scope;
        }
        "next"
    } else if outcome.class == "ok" {
        "return"
    } else {
        "next"
    }
}
"#,
    )
    .await;
    let resp = send(&proxy, "gpt-4o").await;
    assert_eq!(resp.status(), 200);
    let t = trace(&resp);
    assert!(t.contains("openai/gpt-4o main/k0 200"), "{t}");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["model"], "gpt-4o-mini",
        "the degraded answer was passed over"
    );
    let got = mock.received();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].key.as_deref(), Some("sk-backup"));
}
