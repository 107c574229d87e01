//! Quota state shared across replicas on a real `redis-server` (started here on a free
//! port; never mocked, never skipped): locks and unlocks reach every replica, a window
//! limit holds fleet-wide within its documented overshoot, and Redis going away, coming
//! back empty or freezing never fails a request.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::redis::RedisServer;
use support::{chat, MockUpstream, Reply, TestProxy};

const ADMIN_TOKEN: &str = "admin-token-shared-state-01";
const KEY0_SCOPE: &str = "key:openai/main/k0@gpt-4o";
const KEY1_SCOPE: &str = "key:openai/main/k1@gpt-4o";

async fn replica(
    mock: &MockUpstream,
    redis: &RedisServer,
    settings: &str,
    policy: Option<&str>,
) -> TestProxy {
    let mut b = TestProxy::builder()
        .admin(Some(ADMIN_TOKEN), false)
        .provider(
            "openai",
            "openai",
            &mock.base_url(),
            &["gpt-4o"],
            &["sk-0", "sk-1", "sk-2"],
        )
        .redis_state(&redis.url(), settings);
    if let Some(p) = policy {
        b = b.policy(p);
    }
    b.start().await
}

fn has_lock(state: &Value, scope: &str) -> bool {
    state["locks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|l| l["scope"] == scope)
}

/// Polls `cond` on `p`'s `/admin/state` until it holds or `limit` passes; the time taken.
async fn wait_state(
    p: &TestProxy,
    limit: Duration,
    cond: impl Fn(&Value) -> bool,
) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if cond(&p.admin_state().await) {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

async fn healthy(p: &TestProxy) {
    assert!(
        wait_state(p, Duration::from_secs(5), |s| s["state"]["healthy"] == true)
            .await
            .is_some(),
        "replica connects to Redis: {}",
        p.admin_state().await["state"]
    );
}

/// Waits until `p` has seen two replicas' heartbeats (its own and the other's).
async fn two_replicas(p: &TestProxy) {
    assert!(
        wait_state(p, Duration::from_secs(2), |s| s["state"]["replicas"] == 2)
            .await
            .is_some(),
        "each replica sees the other's heartbeat: {}",
        p.admin_state().await["state"]
    );
}

async fn post(p: &TestProxy) -> u16 {
    let resp = p
        .post("/v1/chat/completions")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    resp.bytes().await.unwrap();
    status
}

/// `/admin/unlock`; returns the answer's `fleet` field (`sent` or `queued`).
async fn unlock(p: &TestProxy, scope: &str) -> String {
    let resp = reqwest::Client::new()
        .post(p.admin_url("/admin/unlock"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "scope": scope }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    v["fleet"].as_str().unwrap_or_default().to_string()
}

fn count(keys: &[String], key: &str) -> usize {
    keys.iter().filter(|k| *k == key).count()
}

#[tokio::test]
async fn a_429_on_one_replica_is_honoured_by_the_other() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let a = replica(&mock, &redis, "namespace = \"t429\"", None).await;
    let b = replica(&mock, &redis, "namespace = \"t429\"", None).await;
    healthy(&a).await;
    healthy(&b).await;

    mock.push_for_key("sk-0", Reply::status(429).retry_after(30));
    // Replicas sharing state start their rotation at a random key: send until A tries k0.
    while count(&mock.keys_seen(), "sk-0") == 0 {
        assert_eq!(post(&a).await, 200, "A falls back past the limited key");
    }
    let seen = wait_state(&b, Duration::from_millis(100), |s| has_lock(s, KEY0_SCOPE)).await;
    assert!(
        seen.is_some(),
        "the lock reaches B's /admin/state within 100 ms: {}",
        b.admin_state().await
    );
    eprintln!("lock visible on B after {:?}", seen.unwrap());
    // B's rotation passes k0 within three requests: it skips it now.
    for _ in 0..4 {
        assert_eq!(post(&b).await, 200);
    }
    let keys = mock.keys_seen();
    assert_eq!(
        count(&keys, "sk-0"),
        1,
        "the limited key was tried once: {keys:?}"
    );
    two_replicas(&b).await;

    // An unlock on B reaches A.
    assert_eq!(unlock(&b, KEY0_SCOPE).await, "sent");
    assert!(
        wait_state(&a, Duration::from_secs(2), |s| !has_lock(s, KEY0_SCOPE))
            .await
            .is_some(),
        "B's unlock reaches A"
    );
}

const LIMIT_POLICY: &str = r#"
fn route(req) {
    if req.header("x-state") == "show" {
        throw #{ status: 418, message: `${state::backend()} ${state::healthy()} ${state::replicas()}` };
    }
    if quota::hit("fleet:chat", 60) > 100 {
        throw #{ status: 429, message: "fleet limit" };
    }
    routes::resolve(req.model)
}
"#;

/// Sends `n` requests alternating between the replicas, `gap` apart; statuses counted.
async fn alternate(replicas: &[&TestProxy], n: usize, gap: Duration) -> (usize, usize) {
    let (mut ok, mut limited) = (0, 0);
    for i in 0..n {
        match post(replicas[i % replicas.len()]).await {
            200 => ok += 1,
            429 => limited += 1,
            s => panic!("unexpected status {s}"),
        }
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
    }
    (ok, limited)
}

#[tokio::test]
async fn a_window_limit_holds_across_replicas() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.disable_recording();
    let settings = "namespace = \"twin\"\nsync_interval = \"20ms\"";
    let a = replica(&mock, &redis, settings, Some(LIMIT_POLICY)).await;
    let b = replica(&mock, &redis, settings, Some(LIMIT_POLICY)).await;
    healthy(&a).await;
    healthy(&b).await;
    two_replicas(&a).await;
    let shown = a
        .post("/v1/chat/completions")
        .header("x-state", "show")
        .json(&chat("gpt-4o"))
        .send()
        .await
        .unwrap();
    assert_eq!(shown.status(), 418);
    let body: Value = shown.json().await.unwrap();
    assert!(
        body.to_string().contains("redis true 2"),
        "state::backend/healthy/replicas: {body}"
    );

    // 300 requests in 4.5 s, alternating: a replica sees the other's hits within one
    // sync interval (20 ms), so the fleet admits at most a few over the limit.
    let (ok, limited) = alternate(&[&a, &b], 300, Duration::from_millis(15)).await;
    eprintln!("redis backend: {ok} admitted, {limited} limited");
    assert!(
        (100..=103).contains(&ok),
        "a 100-per-minute window across two replicas admitted {ok}"
    );
    assert_eq!(ok + limited, 300);
    // Both replicas' hits reach B's fleet count within a few syncs.
    let synced = wait_state(&b, Duration::from_secs(2), |s| {
        s["windows"][0]["counter"] == "fleet:chat" && s["windows"][0]["fleet_count"] == 300
    })
    .await;
    assert!(synced.is_some(), "{}", b.admin_state().await["windows"]);

    // The memory backend: each replica counts alone, so the fleet admits twice the limit.
    let mem_a = TestProxy::builder()
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-0"])
        .policy(LIMIT_POLICY)
        .start()
        .await;
    let mem_b = TestProxy::builder()
        .provider("openai", "openai", &mock.base_url(), &["gpt-4o"], &["sk-0"])
        .policy(LIMIT_POLICY)
        .start()
        .await;
    let (ok, _) = alternate(&[&mem_a, &mem_b], 300, Duration::ZERO).await;
    assert_eq!(ok, 200, "memory backend: 100 per replica");
}

/// `required = true`: `/readyz` waits for the first sync with Redis (here frozen at
/// start), then stays ready.
#[tokio::test]
async fn a_replica_that_requires_redis_is_not_ready_before_its_first_sync() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    redis.freeze();
    let a = replica(&mock, &redis, "namespace = \"treq\"\nrequired = true", None).await;
    let readyz = |p: &TestProxy| {
        let url = p.admin_url("/readyz");
        async move { reqwest::get(url).await.unwrap().status().as_u16() }
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        readyz(&a).await,
        503,
        "not ready while Redis cannot be reached"
    );
    // Requests are still served on local state meanwhile (readiness is for balancers).
    assert_eq!(post(&a).await, 200);
    redis.thaw();
    healthy(&a).await;
    assert_eq!(readyz(&a).await, 200);
    // Without `required`, a replica is ready at once, Redis or not.
    redis.freeze();
    let b = replica(&mock, &redis, "namespace = \"treq\"", None).await;
    assert_eq!(readyz(&b).await, 200);
    redis.thaw();
}

/// Round trips Redis has served from outside (`EVALSHA`/`EVAL` calls: every Keyway write
/// is one), from `INFO commandstats`.
fn script_calls(redis: &RedisServer) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut redis.conn())
        .unwrap();
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Counted, not assumed: requests — each one hitting a shared window — cause no Redis
/// round trip; the replicator's calls follow its clock, not the traffic.
#[tokio::test]
async fn requests_make_no_redis_round_trips() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    mock.disable_recording();
    let a = replica(
        &mock,
        &redis,
        "namespace = \"trt\"\nsync_interval = \"5s\"",
        Some(LIMIT_POLICY),
    )
    .await;
    healthy(&a).await;
    // The first hit on a new counter asks for one early sync.
    assert_eq!(post(&a).await, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = script_calls(&redis);
    let (ok, _) = alternate(&[&a], 99, Duration::ZERO).await;
    assert_eq!(ok, 99);
    let during = script_calls(&redis) - before;
    // A 5 s sync interval may tick once while the requests run; a round trip per
    // request would be 99.
    assert!(during <= 1, "{during} Redis round trips during 99 requests");
}

/// Requests alternating between replicas until stopped; counts every non-200.
struct Load {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(urls: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(AtomicUsize::new(0));
        let (s, n, f) = (stop.clone(), sent.clone(), failed.clone());
        let task = tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut i = 0;
            while !s.load(Ordering::SeqCst) {
                let url = &urls[i % urls.len()];
                i += 1;
                let ok = match http.post(url).json(&chat("gpt-4o")).send().await {
                    Ok(r) => r.status() == 200 && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                n.fetch_add(1, Ordering::SeqCst);
                if !ok {
                    f.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self {
            stop,
            sent,
            failed,
            task,
        }
    }

    async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        (
            self.sent.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}

fn url(p: &TestProxy) -> String {
    p.url("/v1/chat/completions")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_empty_fails_no_request_and_loses_no_change() {
    let mut redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let a = replica(&mock, &redis, "namespace = \"tkill\"", None).await;
    let b = replica(&mock, &redis, "namespace = \"tkill\"", None).await;
    healthy(&a).await;
    healthy(&b).await;
    let load = Load::start(vec![url(&a), url(&b)]);

    // Before the outage: k0 locked on A, seen by B.
    mock.push_for_key("sk-0", Reply::status(429).retry_after(120));
    assert!(
        wait_state(&b, Duration::from_secs(2), |s| has_lock(s, KEY0_SCOPE))
            .await
            .is_some(),
        "k0's lock reaches B"
    );

    redis.kill();
    assert!(
        wait_state(&a, Duration::from_secs(3), |s| s["state"]["healthy"]
            == false)
        .await
        .is_some(),
        "A notices Redis is gone"
    );
    // During the outage: B unlocks k0 (A cannot hear it yet), and whichever replica
    // next sends k1 gets a 429 and locks it locally.
    assert_eq!(unlock(&b, KEY0_SCOPE).await, "queued");
    mock.push_for_key("sk-1", Reply::status(429).retry_after(120));
    let deadline = Instant::now() + Duration::from_secs(2);
    while !has_lock(&a.admin_state().await, KEY1_SCOPE)
        && !has_lock(&b.admin_state().await, KEY1_SCOPE)
    {
        assert!(
            Instant::now() < deadline,
            "a replica locks k1 while Redis is down"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        has_lock(&a.admin_state().await, KEY0_SCOPE),
        "A still holds k0's lock"
    );
    assert!(
        !has_lock(&b.admin_state().await, KEY0_SCOPE),
        "B unlocked k0"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis.restart();
    let recovered = Instant::now();
    for (name, p) in [("A", &a), ("B", &b)] {
        let t = wait_state(p, Duration::from_secs(2), |s| {
            s["state"]["healthy"] == true && has_lock(s, KEY1_SCOPE) && !has_lock(s, KEY0_SCOPE)
        })
        .await;
        assert!(
            t.is_some(),
            "{name} within 2 s of Redis's restart: k1 locked (placed during the outage), \
             k0 unlocked (unlocked during the outage): {}",
            p.admin_state().await
        );
    }
    eprintln!("converged {:?} after the restart", recovered.elapsed());
    // A replica started after the restart learns the lock Redis got back from the others.
    let c = replica(&mock, &redis, "namespace = \"tkill\"", None).await;
    healthy(&c).await;
    assert!(has_lock(&c.admin_state().await, KEY1_SCOPE));

    tokio::time::sleep(Duration::from_millis(300)).await;
    let (sent, failed) = load.finish().await;
    eprintln!("{sent} requests during the outage test, {failed} failed");
    assert!(sent > 50, "the load ran ({sent})");
    assert_eq!(
        failed, 0,
        "no request failed while Redis was down or restarting"
    );
    let metrics = a.metrics_text().await;
    assert!(metrics.contains("keyway_state_backend_up 1"), "{metrics}");
    assert!(metrics.contains("keyway_state_resyncs_total"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_frozen_for_five_seconds_fails_no_request() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let a = replica(&mock, &redis, "namespace = \"tstop\"", None).await;
    let b = replica(&mock, &redis, "namespace = \"tstop\"", None).await;
    healthy(&a).await;
    healthy(&b).await;
    let load = Load::start(vec![url(&a), url(&b)]);
    tokio::time::sleep(Duration::from_millis(300)).await;

    redis.freeze();
    let frozen = Instant::now();
    // A lock placed while Redis hangs stays local until it answers again.
    mock.push_for_key("sk-0", Reply::status(429).retry_after(120));
    assert!(
        wait_state(&a, Duration::from_secs(2), |s| has_lock(s, KEY0_SCOPE))
            .await
            .is_some()
            || wait_state(&b, Duration::from_secs(2), |s| has_lock(s, KEY0_SCOPE))
                .await
                .is_some(),
        "a replica locks k0 while Redis is frozen"
    );
    let rest = Duration::from_secs(5).saturating_sub(frozen.elapsed());
    tokio::time::sleep(rest).await;
    redis.thaw();
    for (name, p) in [("A", &a), ("B", &b)] {
        assert!(
            wait_state(p, Duration::from_secs(2), |s| s["state"]["healthy"] == true
                && has_lock(s, KEY0_SCOPE))
            .await
            .is_some(),
            "{name}: healthy again and holding k0's lock within 2 s of the thaw: {}",
            p.admin_state().await
        );
    }
    let (sent, failed) = load.finish().await;
    eprintln!("{sent} requests across a 5 s freeze, {failed} failed");
    assert!(sent > 50, "the load ran ({sent})");
    assert_eq!(failed, 0, "no request failed while Redis was frozen");
}

/// Two real `keyway` processes on one Redis: a lock placed through one is honoured by the
/// other.
#[tokio::test]
async fn two_keyway_processes_share_a_lock() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let mut procs = Vec::new();
    let mut ports = Vec::new();
    let mut dirs = Vec::new();
    for _ in 0..2 {
        let (port, admin_port) = (free_port(), free_port());
        let builder = TestProxy::builder()
            .admin(Some(ADMIN_TOKEN), false)
            .provider(
                "openai",
                "openai",
                &mock.base_url(),
                &["gpt-4o"],
                &["sk-0", "sk-1"],
            )
            .redis_state(&redis.url(), "namespace = \"tproc\"");
        let (dir, path, _) = builder.write();
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{port}\""),
                1,
            )
            .replacen(
                "listen = \"127.0.0.1:0\"",
                &format!("listen = \"127.0.0.1:{admin_port}\""),
                1,
            );
        std::fs::write(&path, text).unwrap();
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_keyway"))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        procs.push(child);
        ports.push((port, admin_port));
        dirs.push(dir);
    }
    let http = reqwest::Client::new();
    let state = |admin_port: u16| {
        let http = http.clone();
        async move {
            http.get(format!("http://127.0.0.1:{admin_port}/admin/state"))
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .ok()?
                .json::<Value>()
                .await
                .ok()
        }
    };
    for &(_, admin_port) in &ports {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = state(admin_port).await {
                if s["state"]["healthy"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "keyway process connects to Redis"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    mock.push_for_key("sk-0", Reply::status(429).retry_after(60));
    let send = |port: u16| {
        let http = http.clone();
        async move {
            http.post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
                .json(&chat("gpt-4o"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    // Rotation starts at a random key with shared state: send until k0 has been tried.
    while count(&mock.keys_seen(), "sk-0") == 0 {
        assert_eq!(send(ports[0].0).await, 200);
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if state(ports[1].1)
            .await
            .is_some_and(|s| has_lock(&s, KEY0_SCOPE))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lock reaches the other process"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..3 {
        assert_eq!(send(ports[1].0).await, 200);
    }
    assert_eq!(
        count(&mock.keys_seen(), "sk-0"),
        1,
        "{:?}",
        mock.keys_seen()
    );
    drop(procs);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
