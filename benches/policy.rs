//! One request's policy work with the shipped default policy: `route` + `select_key` +
//! `on_outcome` (ok), against the native equivalents, and with a large route table
//! (30 wildcard routes, 10 keys per connection) to show the cost does not grow with it.

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, StatusCode};
use keyway::config::Config;
use keyway::format::ApiFormat;
use keyway::keys::KeyRegistry;
use keyway::outcome::Outcome;
use keyway::policy::{
    defaults, AttemptRef, ConnView, Policy, RequestInfo, RequestSource, RequestView, BUILTIN_POLICY,
};
use keyway::quota::{QuotaState, SystemClock};

fn config(keys: usize) -> Config {
    std::env::set_var("KEYWAY_BENCH_KEY", "sk-bench-0000000000000000000000");
    let keys: Vec<String> = (0..keys)
        .map(|i| format!("{{ id = \"k{i}\", key = \"env:KEYWAY_BENCH_KEY\" }}"))
        .collect();
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
[auth]
allow_unauthenticated = true
[[provider]]
id = "openai"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
models = ["gpt-4o"]
[[provider.connection]]
id = "main"
keys = [{}]
"#,
        keys.join(", ")
    );
    keyway::config::parse(Path::new("bench.toml"), &text).unwrap()
}

fn big_policy() -> String {
    let mut routes = String::new();
    for i in 0..30 {
        let _ = writeln!(
            routes,
            "#{{ model: \"family{i}-*\", targets: [\"openai/*\"] }},"
        );
    }
    let _ = writeln!(
        routes,
        "#{{ model: \"gpt-4o*\", targets: [\"openai/*\"] }},"
    );
    BUILTIN_POLICY.replace(
        "        routes: [\n",
        &format!("        routes: [\n{routes}"),
    )
}

struct Setup {
    policy: Policy,
    req: RequestSource<'static>,
    conn: ConnView,
    quota: Arc<QuotaState>,
    outcome: Outcome,
}

fn setup(text: &str, keys: usize) -> Setup {
    let cfg = config(keys);
    let quota = Arc::new(QuotaState::new(Arc::new(SystemClock)));
    let policy = Policy::compile(Arc::from("main.rhai"), text, &cfg, quota.clone()).unwrap();
    let registry = KeyRegistry::new(&cfg);
    let c = cfg.providers[0].connections[0].clone();
    Setup {
        req: RequestView(Arc::new(RequestInfo {
            model: "gpt-4o".into(),
            format: ApiFormat::OpenAiChat,
            stream: true,
            client: "bench".into(),
            headers: HeaderMap::new(),
            max_tokens: Some(256),
            input_tokens: 100,
        }))
        .into(),
        conn: ConnView {
            pool: registry.pool(&c),
            conn: c,
            model: Arc::from("gpt-4o"),
            tried: Arc::from(Vec::new()),
        },
        outcome: Outcome::from_response(StatusCode::OK, &HeaderMap::new(), "", 0),
        quota,
        policy,
    }
}

fn request_policy_work(c: &mut Criterion) {
    let mut g = c.benchmark_group("policy_per_request");
    for (name, text, keys) in [
        ("default", BUILTIN_POLICY.to_string(), 3),
        ("30_routes_10_keys", big_policy(), 10),
    ] {
        let s = setup(&text, keys);
        g.bench_function(format!("script/{name}"), |b| {
            b.iter(|| {
                let cands = s.policy.route(&s.req).unwrap();
                let key = s.policy.select_key(&s.req, &s.conn.as_ref()).unwrap();
                let attempt = AttemptRef::new(1, &s.conn.conn, 0, "gpt-4o");
                let d = s
                    .policy
                    .on_outcome(&s.req, &attempt, &mut s.outcome.clone())
                    .unwrap();
                (cands, key, d)
            })
        });
        g.bench_function(format!("native/{name}"), |b| {
            b.iter(|| {
                let cands = s.policy.default_route("gpt-4o");
                let key = defaults::select_key(&s.quota, &s.conn.as_ref());
                let attempt = AttemptRef::new(1, &s.conn.conn, 0, "gpt-4o");
                let d = defaults::on_outcome(&s.quota, &attempt, &s.outcome);
                (cands, key, d)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, request_policy_work);
criterion_main!(benches);
