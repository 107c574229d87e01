//! Test support: the mock upstream, generated certificates, and an in-process Keyway.
#![allow(dead_code, unused_imports)]

pub mod certs;
pub mod logs;
pub mod mock;
pub mod net;
pub mod proxy;
pub mod redis;

pub use mock::{MockUpstream, Reply};
pub use proxy::{configmap_swap, save_atomically, wait_reload, TestProxy};

/// A policy none of whose hooks can be bound to a native: `route` reads a header,
/// `select_key` checks the client, `on_outcome` counts successes in a window.
pub const CUSTOM_POLICY: &str = r#"
fn route(req) {
    if req.header("x-tier") == "batch" { ["openai/gpt-4o-mini"] } else { routes::resolve(req.model) }
}
fn select_key(req, conn) {
    if req.client == "nobody" { keys::fill_first(conn) } else { keys::round_robin(conn) }
}
fn on_outcome(req, attempt, outcome) {
    if outcome.class == "ok" { quota::hit("ok:" + attempt.provider, 60); "return" } else { "next" }
}
"#;

/// A small chat request body.
pub fn chat(model: &str) -> serde_json::Value {
    serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// A small streamed chat request body.
pub fn chat_stream(model: &str) -> serde_json::Value {
    let mut v = chat(model);
    v["stream"] = serde_json::Value::Bool(true);
    v
}
