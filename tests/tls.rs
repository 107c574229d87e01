//! TLS termination with a certificate generated at test time, over h2 and http/1.1 (ALPN).

mod support;

use serde_json::Value;
use support::{chat, chat_stream, MockUpstream, TestProxy};

const CLIENT_KEY: &str = "kw-client-key-tls-0001";

async fn tls_proxy(mock: &MockUpstream) -> TestProxy {
    TestProxy::builder()
        .tls()
        .client("dev", CLIENT_KEY)
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-a"])
        .start()
        .await
}

#[tokio::test]
async fn h2_via_alpn() {
    let mock = MockUpstream::start().await;
    let proxy = tls_proxy(&mock).await;
    let client = proxy.http_builder().build().unwrap();
    let resp = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    // A stream over the same h2 connection.
    let resp = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_stream("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn http1_via_alpn() {
    let mock = MockUpstream::start().await;
    let proxy = tls_proxy(&mock).await;
    let client = proxy.http_builder().http1_only().build().unwrap();
    let resp = client
        .post(proxy.url("/v1/chat/completions"))
        .bearer_auth(CLIENT_KEY)
        .json(&chat_stream("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.version(), reqwest::Version::HTTP_11);
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().ends_with("data: [DONE]\n\n"));
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_response() {
    let mock = MockUpstream::start().await;
    let proxy = tls_proxy(&mock).await;
    let plain = reqwest::Client::new()
        .post(format!(
            "http://127.0.0.1:{}/v1/chat/completions",
            proxy.addr.port()
        ))
        .json(&chat("gpt-4o"))
        .send()
        .await;
    assert!(plain.is_err());
    assert!(mock.received().is_empty());
}
