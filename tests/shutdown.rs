//! Graceful shutdown: new connections are refused, in-flight streams finish.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use support::{chat_stream, MockUpstream, Reply, TestProxy};
use tokio::sync::Notify;

#[tokio::test]
async fn in_flight_streams_finish_after_shutdown_begins() {
    let mock = MockUpstream::start().await;
    let gate = Arc::new(Notify::new());
    mock.push(Reply::ok().chunks(3).hold_last(gate.clone()));
    let mut proxy = TestProxy::builder()
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-a"])
        .start()
        .await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat_stream("gpt-4o"))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));

    let url = proxy.url("/v1/models");
    let draining = proxy.begin_shutdown();
    // The listener closes: a new connection is refused.
    let mut refused = false;
    for _ in 0..50 {
        let fresh = reqwest::Client::builder()
            .resolve("localhost", proxy.addr)
            .build()
            .unwrap();
        if fresh.get(&url).send().await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused, "new connections must be refused while draining");
    assert!(!draining.is_finished());

    gate.notify_one();
    let mut rest = Vec::new();
    while let Some(chunk) = stream.next().await {
        rest.extend_from_slice(&chunk.unwrap());
    }
    assert!(rest.ends_with(b"data: [DONE]\n\n"));
    tokio::time::timeout(Duration::from_secs(5), draining)
        .await
        .unwrap()
        .unwrap();
}
