//! Hot reload under traffic: policies, config and certificates change on disk (in-place
//! writes, editor rename-over saves, ConfigMap symlink swaps); broken edits are rejected
//! and the last good version keeps serving; no request fails across reloads.

mod support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use support::certs::TestCert;
use support::{
    chat, chat_stream, configmap_swap, save_atomically, wait_reload, MockUpstream, TestProxy,
};

fn policy_to(model: &str) -> String {
    format!("fn route(req) {{ [\"openai/{model}\"] }}\n")
}

async fn served_model(proxy: &TestProxy) -> String {
    let resp = proxy
        .post("/v1/chat/completions")
        .json(&chat("anything"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["model"].as_str().unwrap().to_string()
}

async fn watched(mock: &MockUpstream, policy: &str) -> TestProxy {
    TestProxy::builder()
        .watch()
        .policy(policy)
        .provider("openai", "openai", &mock.base_url(), &[], &["sk-a"])
        .start()
        .await
}

#[tokio::test]
async fn an_in_place_write_is_picked_up() {
    let mock = MockUpstream::start().await;
    let proxy = watched(&mock, &policy_to("model-a")).await;
    assert_eq!(served_model(&proxy).await, "model-a");
    let mut rx = proxy.reloader.subscribe();
    std::fs::write(
        proxy.dir.path().join("policies/main.rhai"),
        policy_to("model-b"),
    )
    .unwrap();
    let r = wait_reload(&mut rx, |r| r.result == "ok").await;
    assert_eq!(r.applied, ["policy"]);
    assert_eq!(served_model(&proxy).await, "model-b");
}

#[tokio::test]
async fn an_editor_rename_over_save_is_picked_up() {
    let mock = MockUpstream::start().await;
    let proxy = watched(&mock, &policy_to("model-a")).await;
    let mut rx = proxy.reloader.subscribe();
    save_atomically(
        &proxy.dir.path().join("policies/main.rhai"),
        policy_to("model-b"),
    );
    wait_reload(&mut rx, |r| r.result == "ok").await;
    assert_eq!(served_model(&proxy).await, "model-b");
}

#[tokio::test]
async fn a_configmap_symlink_swap_is_picked_up() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .watch()
        .policy_configmap(&policy_to("model-a"))
        .provider("openai", "openai", &mock.base_url(), &[], &["sk-a"])
        .start()
        .await;
    assert_eq!(served_model(&proxy).await, "model-a");
    let mut rx = proxy.reloader.subscribe();
    configmap_swap(
        &proxy.dir.path().join("policies"),
        "..2030_01_02_00_00_00.000000002",
        &policy_to("model-b"),
    );
    wait_reload(&mut rx, |r| r.result == "ok").await;
    assert_eq!(served_model(&proxy).await, "model-b");
}

#[tokio::test]
async fn a_broken_edit_is_rejected_with_its_location_and_the_fix_applies() {
    let mock = MockUpstream::start().await;
    let proxy = watched(&mock, &policy_to("model-a")).await;
    let main = proxy.dir.path().join("policies/main.rhai");
    let mut rx = proxy.reloader.subscribe();
    save_atomically(&main, "fn route(req) {\n    [\"openai/model-b\"\n}\n");
    let r = wait_reload(&mut rx, |r| r.result == "error").await;
    assert!(
        r.errors[0].contains("policies/main.rhai:3:1"),
        "{:?}",
        r.errors
    );
    assert_eq!(
        served_model(&proxy).await,
        "model-a",
        "the last good policy keeps serving"
    );
    // A script that compiles but fails its own fixtures is rejected too.
    std::fs::create_dir_all(proxy.dir.path().join("policies/tests")).unwrap();
    std::fs::write(
        proxy.dir.path().join("policies/tests/t.toml"),
        "[[case]]\nname = \"goes to b\"\nmodel = \"x\"\nexpect_candidates = [\"openai/model-b\"]\n",
    )
    .unwrap();
    save_atomically(&main, policy_to("model-c"));
    let r = wait_reload(&mut rx, |r| r.result == "error").await;
    assert!(r.errors[0].contains("goes to b"), "{:?}", r.errors);
    assert_eq!(served_model(&proxy).await, "model-a");
    save_atomically(&main, policy_to("model-b"));
    wait_reload(&mut rx, |r| r.result == "ok").await;
    assert_eq!(served_model(&proxy).await, "model-b");
}

#[tokio::test]
async fn sighup_style_reload_reports_unchanged_when_nothing_changed() {
    let mock = MockUpstream::start().await;
    let proxy = watched(&mock, &policy_to("model-a")).await;
    let r = proxy.reloader.reload("test");
    assert_eq!((r.result, r.errors.len()), ("unchanged", 0));
}

#[tokio::test]
async fn keys_added_and_removed_take_effect_and_keep_their_state() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .watch()
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-4o"],
            &["sk-a", "sk-b"],
        )
        .start()
        .await;
    for _ in 0..4 {
        proxy
            .post("/v1/chat/completions")
            .json(&chat("gpt-4o"))
            .send()
            .await
            .unwrap();
    }
    assert_eq!(mock.keys_seen(), ["sk-a", "sk-b", "sk-a", "sk-b"]);
    let cfg = proxy.dir.path().join("keyway.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    // Remove k0, add k2.
    std::fs::write(proxy.dir.path().join("keys/new-key"), "sk-c").unwrap();
    let edited = text
        .replace("  { id = \"k0\", key = \"file:keys/openai-main-0\" },\n", "")
        .replace(
            "  { id = \"k1\", key = \"file:keys/openai-main-1\" },\n",
            "  { id = \"k1\", key = \"file:keys/openai-main-1\" },\n  { id = \"k2\", key = \"file:keys/new-key\" },\n",
        );
    assert_ne!(edited, text);
    let mut rx = proxy.reloader.subscribe();
    save_atomically(&cfg, edited);
    let r = wait_reload(&mut rx, |r| r.result == "ok").await;
    assert_eq!(r.applied, ["config", "policy"]);
    for _ in 0..4 {
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
    }
    let seen = mock.keys_seen();
    assert_eq!(
        &seen[4..],
        ["sk-b", "sk-c", "sk-b", "sk-c"].map(String::from),
        "rotation continued from its cursor"
    );
    // A config change that needs a restart is reported, not silently ignored.
    let text = std::fs::read_to_string(&cfg).unwrap();
    save_atomically(
        &cfg,
        text.replace("listen = \"127.0.0.1:0\"", "listen = \"127.0.0.1:1\""),
    );
    let r = wait_reload(&mut rx, |r| r.result == "ok").await;
    assert_eq!(r.restart_required, ["server.listen"]);
    // A broken config is rejected whole.
    save_atomically(&cfg, text.replace("[auth]", "[auth]\nbogus = 1"));
    let r = wait_reload(&mut rx, |r| r.result == "error").await;
    assert!(
        r.errors[0].contains("keyway.toml:") && r.errors[0].contains("bogus"),
        "{:?}",
        r.errors
    );
}

fn tls_client(proxy: &TestProxy, extra_root: Option<&TestCert>) -> reqwest::Client {
    let mut b = proxy.http_builder().tls_info(true);
    if let Some(c) = extra_root {
        b = b.add_root_certificate(reqwest::Certificate::from_pem(c.cert_pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

async fn served_cert(client: &reqwest::Client, proxy: &TestProxy) -> Vec<u8> {
    let resp = client.get(proxy.url("/v1/models")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let info = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    info.peer_certificate().unwrap().to_vec()
}

#[tokio::test]
async fn a_swapped_certificate_serves_new_handshakes_and_a_bad_pair_is_refused() {
    let mock = MockUpstream::start().await;
    let proxy = TestProxy::builder()
        .tls()
        .watch()
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-a"])
        .start()
        .await;
    let old = proxy.cert.as_ref().unwrap();
    let next = TestCert::generate(&proxy.dir.path().join("keys"), "next");
    let established = tls_client(&proxy, Some(&next));
    assert_eq!(served_cert(&established, &proxy).await, old.der);

    let mut rx = proxy.reloader.subscribe();
    save_atomically(&old.key_path, std::fs::read(&next.key_path).unwrap());
    save_atomically(&old.cert_path, std::fs::read(&next.cert_path).unwrap());
    let r = wait_reload(&mut rx, |r| r.applied.contains(&"tls")).await;
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    let fresh = tls_client(&proxy, Some(&next));
    assert_eq!(
        served_cert(&fresh, &proxy).await,
        next.der,
        "a new connection sees the new certificate"
    );
    assert_eq!(
        served_cert(&established, &proxy).await,
        old.der,
        "an established connection keeps its own"
    );

    // A key that does not match the certificate is refused; the current pair stays.
    let stray = TestCert::generate(&proxy.dir.path().join("keys"), "stray");
    save_atomically(&old.key_path, std::fs::read(&stray.key_path).unwrap());
    let r = wait_reload(&mut rx, |r| r.result == "error").await;
    assert!(
        r.errors[0].contains("do not form a usable pair"),
        "{:?}",
        r.errors
    );
    let again = tls_client(&proxy, Some(&next));
    assert_eq!(served_cert(&again, &proxy).await, next.der);
}

#[tokio::test]
async fn thousands_of_requests_across_reloads_all_succeed() {
    let mock = MockUpstream::start().await;
    mock.disable_recording();
    mock.set_default(support::Reply::ok().chunks(4));
    let proxy = Arc::new(watched(&mock, &policy_to("model-a")).await);
    let main = proxy.dir.path().join("policies/main.rhai");
    let mut rx = proxy.reloader.subscribe();
    let workers: Vec<_> = (0..16)
        .map(|w| {
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in 0..150 {
                    let stream = (w + i) % 2 == 0;
                    let body = if stream { chat_stream("m") } else { chat("m") };
                    match proxy.post("/v1/chat/completions").json(&body).send().await {
                        Ok(resp) if resp.status() == 200 => {
                            let mut s = resp.bytes_stream();
                            let mut text = Vec::new();
                            while let Some(chunk) = s.next().await {
                                match chunk {
                                    Ok(c) => text.extend_from_slice(&c),
                                    Err(e) => failures.push(format!("body: {e}")),
                                }
                            }
                            let ok = if stream {
                                text.ends_with(b"data: [DONE]\n\n")
                            } else {
                                text.ends_with(b"}")
                            };
                            if !ok {
                                failures.push(format!(
                                    "incomplete: {}",
                                    String::from_utf8_lossy(&text)
                                ));
                            }
                        }
                        Ok(resp) => failures.push(format!("status {}", resp.status())),
                        Err(e) => failures.push(e.to_string()),
                    }
                }
                failures
            })
        })
        .collect();
    // Five reloads while the traffic runs, one of them broken.
    for (i, model) in ["model-b", "model-c", "BROKEN", "model-d", "model-e"]
        .iter()
        .enumerate()
    {
        let text = if *model == "BROKEN" {
            "fn route(req) {".to_string()
        } else {
            policy_to(model)
        };
        save_atomically(&main, text);
        let want = if *model == "BROKEN" { "error" } else { "ok" };
        wait_reload(&mut rx, |r| r.result == want).await;
        tokio::time::sleep(Duration::from_millis(20 * i as u64)).await;
    }
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(served_model(&proxy).await, "model-e");
}

#[tokio::test]
async fn a_rejected_config_is_not_revalidated_or_relogged_on_later_events() {
    let mock = MockUpstream::start().await;
    let proxy = watched(&mock, &policy_to("model-a")).await;
    let config = proxy.dir.path().join("keyway.toml");
    let good = std::fs::read_to_string(&config).unwrap();
    let mut rx = proxy.reloader.subscribe();
    let broken = format!("{good}\nthis is = not toml [\n");
    std::fs::write(&config, &broken).unwrap();
    wait_reload(&mut rx, |r| r.result == "error").await;
    // The same broken text saved again: seen, but neither validated nor reported again.
    std::fs::write(&config, &broken).unwrap();
    let again = wait_reload(&mut rx, |_| true).await;
    assert_eq!(again.result, "unchanged", "{again:?}");
    assert!(again.errors.is_empty());
    // An explicit reload still says what is wrong.
    let explicit = proxy.reloader.reload("admin");
    assert_eq!(explicit.result, "error");
    std::fs::write(&config, format!("{good}\n# edited\n")).unwrap();
    wait_reload(&mut rx, |r| r.result == "ok").await;
    assert_eq!(served_model(&proxy).await, "model-a");
}

#[tokio::test]
async fn unrelated_files_in_the_config_directory_trigger_nothing() {
    let mock = MockUpstream::start().await;
    let proxy = watched(&mock, &policy_to("model-a")).await;
    let mut rx = proxy.reloader.subscribe();
    for i in 0..20 {
        std::fs::write(proxy.dir.path().join("keyway.log"), format!("line {i}\n")).unwrap();
        std::fs::write(proxy.dir.path().join("notes.txt"), format!("{i}")).unwrap();
    }
    // Long enough for a reload these writes caused (50 ms after the last) to be reported.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        rx.try_recv().is_err(),
        "an unrelated write triggered a reload"
    );
}

#[tokio::test]
async fn a_valid_edit_applies_while_watched_files_are_written_nonstop() {
    let mock = MockUpstream::start().await;
    let proxy = watched(&mock, &policy_to("model-a")).await;
    let mut rx = proxy.reloader.subscribe();
    // A script beside main.rhai rewritten every 10 ms, for at most 20 s: quiet never comes.
    let busy = proxy.dir.path().join("policies/helper.rhai");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            for _ in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let _ = std::fs::write(&busy, "");
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::fs::write(
        proxy.dir.path().join("policies/main.rhai"),
        policy_to("model-b"),
    )
    .unwrap();
    let applied = tokio::time::timeout(
        Duration::from_secs(10),
        wait_reload(&mut rx, |r| r.result == "ok"),
    )
    .await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(applied.is_ok(), "the edit was starved by a busy directory");
    assert_eq!(served_model(&proxy).await, "model-b");
}
