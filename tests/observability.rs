//! Operators' view: Prometheus metrics move as traffic flows, the admin API shows and
//! changes live key state, and admin endpoints refuse callers without the token.

mod support;

use std::collections::HashMap;

use serde_json::{json, Value};
use support::{chat, MockUpstream, Reply, TestProxy};

const ADMIN_TOKEN: &str = "admin-token-observability-0001";

async fn admin_proxy(mock: &MockUpstream, keys: &[&str]) -> TestProxy {
    TestProxy::builder()
        .admin(Some(ADMIN_TOKEN), false)
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-4o", "gpt-4o-mini"],
            keys,
        )
        .start()
        .await
}

fn delta(before: &HashMap<String, f64>, after: &HashMap<String, f64>, key: &str) -> f64 {
    after.get(key).copied().unwrap_or(0.0) - before.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_follow_success_fallback_and_streams() {
    let mock = MockUpstream::start().await;
    let proxy = admin_proxy(&mock, &["sk-a", "sk-b"]).await;
    let before = proxy.metrics().await;

    // One success; one 429 that falls back to the other key; one stream with usage.
    assert_eq!(
        proxy
            .post("/v1/chat/completions")
            .json(&chat("gpt-4o"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    mock.push(Reply::status(429).retry_after(30));
    assert_eq!(
        proxy
            .post("/v1/chat/completions")
            .json(&chat("gpt-4o"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let mut body = chat("gpt-4o-mini");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let text = proxy
        .post("/v1/chat/completions")
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"));
    // An unknown model name is reported as `other`, never as the client's string.
    proxy
        .post("/v1/chat/completions")
        .json(&chat("openai/made-up-model-123"))
        .send()
        .await
        .unwrap();

    let after = proxy.metrics().await;
    let d = |k: &str| delta(&before, &after, k);
    assert_eq!(
        d(r#"keyway_requests_total{endpoint="chat.completions",model="gpt-4o",status="200"}"#),
        2.0
    );
    assert_eq!(
        d(r#"keyway_requests_total{endpoint="chat.completions",model="gpt-4o-mini",status="200"}"#),
        1.0
    );
    assert_eq!(
        d(r#"keyway_requests_total{endpoint="chat.completions",model="other",status="200"}"#),
        1.0
    );
    assert!(
        !after.keys().any(|k| k.contains("made-up-model")),
        "unbounded label leaked"
    );
    assert_eq!(
        d(r#"keyway_attempts_total{provider="openai",connection="main",outcome="rate_limited"}"#),
        1.0
    );
    assert_eq!(
        d(r#"keyway_attempts_total{provider="openai",connection="main",outcome="ok"}"#),
        4.0
    );
    assert_eq!(
        d(r#"keyway_fallbacks_total{provider="openai",outcome="rate_limited"}"#),
        1.0
    );
    assert_eq!(
        d(r#"keyway_lock_events_total{scope="key:openai/main/k0",reason="rate_limited"}"#)
            + d(r#"keyway_lock_events_total{scope="key:openai/main/k1",reason="rate_limited"}"#),
        1.0
    );
    // Tokens: JSON usage (5 prompt + 3 completion per call) and the stream's usage chunk.
    assert_eq!(
        d(r#"keyway_tokens_total{provider="openai",model="gpt-4o",kind="prompt"}"#),
        10.0
    );
    assert_eq!(
        d(r#"keyway_tokens_total{provider="openai",model="gpt-4o",kind="completion"}"#),
        6.0
    );
    assert_eq!(
        d(r#"keyway_tokens_total{provider="openai",model="gpt-4o-mini",kind="completion"}"#),
        3.0
    );
    assert_eq!(d("keyway_overhead_seconds_count"), 4.0);
    assert!(
        after.contains_key(r#"keyway_overhead_seconds_bucket{le="0.00001"}"#),
        "fine buckets"
    );
    assert_eq!(
        d(r#"keyway_stream_duration_seconds_count{provider="openai"}"#),
        1.0
    );
    assert_eq!(after["keyway_open_streams"], 0.0);
    assert_eq!(after["keyway_inflight_requests"], 0.0);
    // The shipped policy's hooks only delegate: bound to natives at load, no script calls.
    assert_eq!(
        d(r#"keyway_policy_evaluations_total{hook="route",mode="native"}"#),
        4.0
    );
    assert_eq!(
        d(r#"keyway_policy_evaluations_total{hook="on_outcome",mode="script"}"#),
        0.0
    );
    assert_eq!(
        d(r#"keyway_key_selections_total{provider="openai",connection="main",key="k0"}"#)
            + d(r#"keyway_key_selections_total{provider="openai",connection="main",key="k1"}"#),
        5.0
    );
    // The rate-limited key shows as unhealthy... for gpt-4o only, so the key itself is healthy.
    assert_eq!(
        after[r#"keyway_key_healthy{provider="openai",connection="main",key="k0"}"#],
        1.0
    );
}

#[tokio::test]
async fn admin_endpoints_need_the_token_but_probes_do_not() {
    let mock = MockUpstream::start().await;
    let proxy = admin_proxy(&mock, &["sk-a"]).await;
    let c = reqwest::Client::new();
    for path in ["/metrics", "/admin/state", "/admin/explain?model=gpt-4o"] {
        assert_eq!(
            c.get(proxy.admin_url(path)).send().await.unwrap().status(),
            401,
            "{path}"
        );
        let wrong = c
            .get(proxy.admin_url(path))
            .bearer_auth("nope")
            .send()
            .await
            .unwrap();
        assert_eq!(wrong.status(), 401, "{path}");
        let right = c
            .get(proxy.admin_url(path))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    for path in ["/admin/reload", "/admin/unlock"] {
        assert_eq!(
            c.post(proxy.admin_url(path)).send().await.unwrap().status(),
            401,
            "{path}"
        );
    }
    assert_eq!(
        c.get(proxy.admin_url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ready: Value = c
        .get(proxy.admin_url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true);
}

#[tokio::test]
async fn loopback_without_a_token_only_when_the_config_says_so() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .admin(None, true)
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-a"])
        .start()
        .await;
    let resp = reqwest::Client::new()
        .get(proxy.admin_url("/admin/state"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn state_shows_locks_and_unlock_clears_them() {
    let mock = MockUpstream::start().await;
    mock.push_for_key("sk-a", Reply::status(429).retry_after(120));
    let proxy = admin_proxy(&mock, &["sk-a", "sk-b"]).await;
    proxy
        .post("/v1/chat/completions")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    let c = reqwest::Client::new();
    let state: Value = c
        .get(proxy.admin_url("/admin/state"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let keys = &state["providers"][0]["connections"][0]["keys"];
    assert_eq!(keys[0]["id"], "k0");
    assert_eq!(keys[0]["healthy"], false);
    let lock = &keys[0]["locks"][0];
    assert_eq!(lock["scope"], "key:openai/main/k0@gpt-4o");
    assert_eq!(lock["reason"], "rate_limited");
    assert!(lock["remaining_s"].as_f64().unwrap() > 100.0);
    assert!(keys[0]["fingerprint"].as_str().unwrap().starts_with('…'));
    assert!(
        !state.to_string().contains("sk-a"),
        "no secret in the state"
    );
    assert_eq!(
        state["providers"][0]["connections"][0]["rotation_position"],
        2
    );
    assert!(state["policy"]["hash"].as_str().unwrap().len() == 16);

    // Explain sees the lock and moves no cursor.
    let ex: Value = c
        .get(proxy.admin_url("/admin/explain?model=gpt-4o"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ex["candidates"][0]["keys"][0], "main/k1");
    let unlock = c
        .post(proxy.admin_url("/admin/unlock"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"scope": "key:openai/main/k0@gpt-4o"}))
        .send()
        .await
        .unwrap();
    let v: Value = unlock.json().await.unwrap();
    assert_eq!(v["unlocked"], true);
    for _ in 0..2 {
        proxy
            .post("/v1/chat/completions")
            .json(&chat("gpt-4o"))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(mock.keys_seen(), ["sk-a", "sk-b", "sk-a", "sk-b"]);
    let bad = c
        .post(proxy.admin_url("/admin/unlock"))
        .bearer_auth(ADMIN_TOKEN)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
}

#[tokio::test]
async fn admin_reload_reports_its_result() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .admin(Some(ADMIN_TOKEN), false)
        .policy("fn route(req) { routes::resolve(req.model) }")
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-a"])
        .start()
        .await;
    let c = reqwest::Client::new();
    let reload = || {
        c.post(proxy.admin_url("/admin/reload"))
            .bearer_auth(ADMIN_TOKEN)
            .send()
    };
    let v: Value = reload().await.unwrap().json().await.unwrap();
    assert_eq!(v["result"], "unchanged");
    std::fs::write(
        proxy.dir.path().join("policies/main.rhai"),
        "fn route(req) {",
    )
    .unwrap();
    let resp = reload().await.unwrap();
    assert_eq!(resp.status(), 422);
    let v: Value = resp.json().await.unwrap();
    assert!(
        v["errors"][0].as_str().unwrap().contains("main.rhai:1:"),
        "{v}"
    );
    std::fs::write(
        proxy.dir.path().join("policies/main.rhai"),
        "fn route(req) { [\"openai/gpt-4o\"] }",
    )
    .unwrap();
    let v: Value = reload().await.unwrap().json().await.unwrap();
    assert_eq!(v["result"], "ok");
    assert_eq!(v["applied"], json!(["policy"]));
}

/// A budget that cannot flake: script calls per request on the success path, counted, not
/// timed. The shipped policy's hooks only delegate, so they run natively (0 calls); a
/// policy whose hooks do their own thing makes exactly one call per hook (3).
#[tokio::test]
async fn script_calls_per_request_stay_within_budget() {
    let hooks = ["route", "select_key", "on_outcome"];
    for (policy, per_request) in [(None, 0.0), (Some(support::CUSTOM_POLICY), 1.0)] {
        let mock = MockUpstream::start().await;
        let mut builder = TestProxy::builder()
            .admin(Some(ADMIN_TOKEN), false)
            .provider(
                "openai",
                "openai",
                &mock.base_url(),
                &["gpt-4o", "gpt-4o-mini"],
                &["sk-a", "sk-b"],
            );
        if let Some(p) = policy {
            builder = builder.policy(p);
        }
        let proxy = builder.start().await;
        let before = proxy.metrics().await;
        const N: u32 = 20;
        for _ in 0..N {
            let resp = proxy
                .post("/v1/chat/completions")
                .json(&chat("gpt-4o"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            resp.bytes().await.unwrap();
        }
        let after = proxy.metrics().await;
        for hook in hooks {
            let script = delta(
                &before,
                &after,
                &format!(r#"keyway_policy_evaluations_total{{hook="{hook}",mode="script"}}"#),
            );
            let native = delta(
                &before,
                &after,
                &format!(r#"keyway_policy_evaluations_total{{hook="{hook}",mode="native"}}"#),
            );
            assert_eq!(
                script,
                per_request * N as f64,
                "{hook}: script calls ({policy:?})"
            );
            assert_eq!(
                script + native,
                N as f64,
                "{hook}: one decision per request"
            );
        }
    }
}
