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
