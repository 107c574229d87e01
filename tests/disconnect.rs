//! A client that goes away takes its upstream request with it: before the first byte,
//! mid-stream, and while a non-streaming request waits.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use support::{chat, chat_stream, MockUpstream, Reply, TestProxy};

const LIMIT: Duration = Duration::from_secs(5);

async fn proxy_for(mock: &MockUpstream) -> TestProxy {
    TestProxy::builder()
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-a"])
        .start()
        .await
}

#[tokio::test]
async fn disconnect_mid_stream_drops_the_upstream_stream() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::ok().chunks(200).pacing(Duration::from_millis(20)));
    let proxy = proxy_for(&mock).await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat_stream("gpt-4o"))
        .send()
        .await
        .unwrap();
    let mut stream = resp.bytes_stream();
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(mock.aborted(), 0);
    drop(stream);
    assert!(
        mock.wait_aborted(1, LIMIT).await,
        "upstream stream was not dropped"
    );
}

#[tokio::test]
async fn disconnect_before_the_first_byte_drops_the_upstream_request() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::hang());
    let proxy = proxy_for(&mock).await;
    let req = proxy
        .post("/v1/chat/completions")
        .json(&chat_stream("gpt-4o"))
        .send();
    let pending = tokio::spawn(req);
    assert!(mock.wait_received(1, LIMIT).await);
    pending.abort();
    assert!(
        mock.wait_aborted(1, LIMIT).await,
        "upstream request was not dropped"
    );
}

#[tokio::test]
async fn disconnect_while_a_non_streaming_request_waits_drops_it() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::ok().latency(Duration::from_secs(30)));
    let proxy = proxy_for(&mock).await;
    let pending = tokio::spawn(
        proxy
            .post("/v1/chat/completions")
            .json(&chat("gpt-4o"))
            .send(),
    );
    assert!(mock.wait_received(1, LIMIT).await);
    pending.abort();
    assert!(
        mock.wait_aborted(1, LIMIT).await,
        "upstream request was not dropped"
    );
}

#[tokio::test]
async fn a_cut_upstream_stream_ends_with_an_error_event_and_done() {
    let mock = MockUpstream::start().await;
    mock.push(Reply::ok().chunks(10).cut_after(3));
    let proxy = proxy_for(&mock).await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat_stream("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp
        .text()
        .await
        .expect("the client stream must end cleanly");
    let events: Vec<&str> = text.split_terminator("\n\n").collect();
    assert_eq!(events.len(), 5, "{text}");
    assert!(events[2].contains("tok2 "));
    assert!(events[3].starts_with("data: {\"error\":"), "{text}");
    assert!(events[3].contains("stream_interrupted") && events[3].contains("openai"));
    assert_eq!(events[4], "data: [DONE]");
}

#[tokio::test]
async fn an_idle_upstream_stream_is_ended_by_the_idle_timeout() {
    let mock = MockUpstream::start().await;
    let never = std::sync::Arc::new(tokio::sync::Notify::new());
    mock.push(Reply::ok().chunks(2).hold_last(never));
    let proxy = TestProxy::builder()
        .timeout("stream_idle", "300ms")
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-a"])
        .start()
        .await;
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat_stream("gpt-4o"))
        .send()
        .await
        .unwrap();
    let text = tokio::time::timeout(LIMIT, resp.text())
        .await
        .unwrap()
        .unwrap();
    assert!(text.contains("sent nothing for 300ms"), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert!(mock.wait_aborted(1, LIMIT).await);
}
