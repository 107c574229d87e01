use std::path::Path;
use std::time::Instant;

use http::{HeaderMap, StatusCode};

use super::*;
use crate::config;
use crate::format::ApiFormat;
use crate::keys::{KeyRegistry, Scopes};
use crate::outcome::Outcome;
use crate::quota::ManualClock;

const CONFIG: &str = r#"
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
keys = [{ id = "k0", key = "env:KEYWAY_POLICY_TEST_KEY" }, { id = "k1", key = "env:KEYWAY_POLICY_TEST_KEY" }]
[[provider]]
id = "anthropic"
kind = "anthropic"
base_url = "http://127.0.0.1:9/v1"
[[provider.connection]]
id = "main"
keys = ["env:KEYWAY_POLICY_TEST_KEY"]
"#;

/// A two-provider config for unit tests (also the runtime's).
pub(crate) fn config() -> Config {
    std::env::set_var("KEYWAY_POLICY_TEST_KEY", "sk-policy-test");
    config::parse(Path::new("keyway.toml"), CONFIG).unwrap()
}

fn quota() -> (Arc<ManualClock>, Arc<QuotaState>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    (clock.clone(), Arc::new(QuotaState::new(clock)))
}

fn compile(text: &str) -> Result<Policy, PolicyLoadError> {
    Policy::compile(Arc::from("policies/main.rhai"), text, &config(), quota().1)
}

fn req(model: &str) -> RequestSource<'static> {
    view(model).into()
}

fn view(model: &str) -> RequestView {
    RequestView(Arc::new(RequestInfo {
        model: model.into(),
        format: ApiFormat::OpenAiChat,
        stream: false,
        client: "dev".into(),
        headers: HeaderMap::new(),
        max_tokens: None,
        input_tokens: 10,
    }))
}

fn targets(p: &Policy, model: &str) -> Vec<String> {
    p.route(&req(model))
        .unwrap()
        .iter()
        .map(|c| format!("{}/{}", c.spec.provider, c.spec.model_for(model)))
        .collect()
}

#[test]
fn builtin_policy_routes_through_config_models_and_passthrough() {
    let p = compile(BUILTIN_POLICY).unwrap();
    assert_eq!(targets(&p, "gpt-4o"), ["openai/gpt-4o"]);
    assert_eq!(
        targets(&p, "anthropic/claude-3-5-haiku"),
        ["anthropic/claude-3-5-haiku"]
    );
    assert!(targets(&p, "nope").is_empty());
}

#[test]
fn init_routes_rank_by_specificity_with_aliases_first() {
    let p = compile(
        r#"
        fn init() { #{ routes: [
            #{ model: "gpt-4?",  targets: ["anthropic/claude-3-haiku"] },
            #{ model: "gpt-4o*", targets: ["openai/*", "anthropic/claude-3-5-sonnet"] },
            #{ model: "smart",   targets: ["anthropic/claude-3-opus", "openai/gpt-4o"] },
        ] } }
        fn route(req) { routes::resolve(req.model) }
        "#,
    )
    .unwrap();
    assert_eq!(
        targets(&p, "gpt-4o"),
        ["openai/gpt-4o", "anthropic/claude-3-5-sonnet"]
    );
    assert_eq!(targets(&p, "gpt-4x"), ["anthropic/claude-3-haiku"]);
    assert_eq!(
        targets(&p, "SMART"),
        ["anthropic/claude-3-opus", "openai/gpt-4o"]
    );
}

#[test]
fn load_errors_carry_file_line_and_column() {
    let e = compile("fn route(req) {\n  let x = ;\n}").unwrap_err();
    assert_eq!(e.location, "policies/main.rhai:2:11", "{e}");
    let e = compile("fn route(req) { [] }\nlet top = 1;").unwrap_err();
    assert_eq!(e.location, "policies/main.rhai:2:1");
    assert!(e.message.contains("top-level"), "{e}");
    let e = compile("fn select_key(req, conn) { () }").unwrap_err();
    assert!(e.message.contains("must define `fn route(req)`"), "{e}");
    let e = compile("fn route(req) { [] }\nfn on_outcome(req, outcome) { \"next\" }").unwrap_err();
    assert!(
        e.message.contains("on_outcome(req, attempt, outcome)"),
        "{e}"
    );
    let e = compile(r#"fn init() { #{ routes: [#{ model: "x*", targets: ["azure/gpt"] }] } } fn route(req) { [] }"#)
        .unwrap_err();
    assert!(
        e.message.contains("unknown provider `azure`") && e.message.contains("openai, anthropic"),
        "{e}"
    );
}

#[test]
fn the_sandbox_has_no_eval_or_imports() {
    let e = compile(r#"fn route(req) { eval("1") }"#).unwrap_err();
    assert!(e.to_string().contains("eval"), "{e}");
    let p = compile(r#"fn route(req) { import "x" as x; [] }"#);
    if let Ok(p) = p {
        assert!(matches!(
            p.route(&req("m")),
            Err(PolicyError::Failed { .. })
        ));
    }
}

#[test]
fn an_endless_loop_is_stopped() {
    let p = compile("fn route(req) { loop { } }").unwrap();
    let started = Instant::now();
    let e = p.route(&req("gpt-4o")).unwrap_err();
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    let PolicyError::Failed {
        hook,
        location,
        message,
    } = e
    else {
        panic!("expected a failure")
    };
    assert_eq!(hook, "route");
    // Rhai reports no position for limit hits: the location names the hook instead.
    assert_eq!(location, "policies/main.rhai (in `route`)");
    assert!(
        message.contains("operation limit") || message.contains("deadline"),
        "{message}"
    );
}

#[test]
fn a_slow_call_hits_the_wall_clock_deadline() {
    let mut cfg = config();
    cfg.policy.max_operations = u64::MAX / 2;
    cfg.policy.call_timeout = std::time::Duration::from_millis(20);
    let p = Policy::compile(
        Arc::from("p.rhai"),
        "fn route(req) { loop { } }",
        &cfg,
        quota().1,
    )
    .unwrap();
    let e = p.route(&req("gpt-4o")).unwrap_err();
    assert!(e.to_string().contains("deadline"), "{e}");
}

#[test]
fn throw_reaches_the_client_with_its_status() {
    let p = compile(r#"fn route(req) { throw "model not allowed for this team"; }"#).unwrap();
    let PolicyError::Thrown { status, message } = p.route(&req("m")).unwrap_err() else {
        panic!()
    };
    assert_eq!(
        (status, message.as_str()),
        (403, "model not allowed for this team")
    );
    let p = compile(r#"fn route(req) { throw #{ status: 429, message: "team budget spent" }; }"#)
        .unwrap();
    let PolicyError::Thrown { status, .. } = p.route(&req("m")).unwrap_err() else {
        panic!()
    };
    assert_eq!(status, 429);
}

#[test]
fn request_credentials_are_invisible_to_scripts() {
    let p = compile(r#"fn route(req) { if req.header("authorization") == () { ["openai/a"] } else { ["openai/b"] } }"#).unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", "Bearer client-secret".parse().unwrap());
    let r = RequestView(Arc::new(RequestInfo {
        headers,
        ..Arc::try_unwrap(view("m").0).unwrap()
    }));
    assert_eq!(
        p.route(&r.into()).unwrap()[0].spec.model.as_deref(),
        Some("a")
    );
}

/// The shipped main.rhai run as a script, the same policy with its hooks bound to natives
/// at load, and the native defaults make the same decision and set the same locks for
/// every outcome class.
#[test]
fn main_rhai_matches_the_native_defaults() {
    let cfg = config();
    let conn = cfg.providers[0].connections[0].clone();
    let attempt = AttemptRef::new(1, &conn, 0, "gpt-4o");
    let outcomes = [
        (200, "", None),
        (429, "rate limit", Some("7")),
        (429, "rate limit", None),
        (429, "insufficient_quota", Some("30")),
        (429, "daily limit: quota exceeded", None),
        (402, "", None),
        (401, "bad key", None),
        (400, "context_length_exceeded", None),
        (400, "bad temperature", None),
        (500, "", None),
        (503, "", None),
    ];
    for (status, body, retry) in outcomes {
        let mut headers = HeaderMap::new();
        if let Some(r) = retry {
            headers.insert("retry-after", r.parse().unwrap());
        }
        let run = |mode: u8| {
            let scripted = mode < 2;
            let (clock, q) = quota();
            let p =
                Policy::compile(Arc::from("main.rhai"), BUILTIN_POLICY, &cfg, q.clone()).unwrap();
            let p = if mode == 0 { p.scripted() } else { p };
            let calls_before = p.script_calls();
            let mut decisions = Vec::new();
            // Three in a row, so streak-based rules (auth invalid, server cool-down) show.
            for _ in 0..3 {
                let mut o = Outcome::from_response(
                    StatusCode::from_u16(status).unwrap(),
                    &headers,
                    body,
                    q.now_ms(),
                );
                let d = if scripted {
                    p.on_outcome(&req("gpt-4o"), &attempt, &mut o).unwrap()
                } else {
                    defaults::on_outcome(&q, &attempt, &o)
                };
                decisions.push(d);
                clock.advance_ms(1);
            }
            let script_calls = p.script_calls() - calls_before;
            assert_eq!(script_calls, if mode == 0 { 3 } else { 0 }, "mode {mode}");
            (decisions, q.active_locks())
        };
        assert_eq!(run(0), run(2), "{status} {body}: script vs native defaults");
        assert_eq!(run(1), run(2), "{status} {body}: elided vs native defaults");
    }
}

#[test]
fn select_key_rotators_skip_locked_and_tried_keys() {
    let cfg = config();
    let (_, q) = quota();
    let p = Policy::compile(Arc::from("p.rhai"), BUILTIN_POLICY, &cfg, q.clone()).unwrap();
    let conn = cfg.providers[0].connections[0].clone();
    let registry = KeyRegistry::new(&cfg);
    let conn_view = |tried: &[usize]| ConnView {
        conn: conn.clone(),
        pool: registry.pool(&conn),
        model: Arc::from("gpt-4o"),
        tried: Arc::from(tried),
    };
    let picks: Vec<_> = (0..4)
        .map(|_| {
            p.select_key(&req("gpt-4o"), &conn_view(&[]).as_ref())
                .unwrap()
        })
        .collect();
    assert_eq!(picks, [Some(0), Some(1), Some(0), Some(1)]);
    q.lock_for(
        &Scopes::key_model(&conn, &conn.keys[0], "gpt-4o"),
        1000,
        "rate_limited",
    );
    assert_eq!(
        p.select_key(&req("gpt-4o"), &conn_view(&[]).as_ref())
            .unwrap(),
        Some(1)
    );
    assert_eq!(
        p.select_key(&req("gpt-4o"), &conn_view(&[1]).as_ref())
            .unwrap(),
        None
    );
    // The lock is per model: another model may still use k0.
    let other = ConnView {
        model: Arc::from("gpt-4o-mini"),
        ..conn_view(&[1])
    };
    assert_eq!(
        p.select_key(&req("gpt-4o-mini"), &other.as_ref()).unwrap(),
        Some(0)
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// `route` and `select_key` bound to natives pick exactly what the script picks, for any
    /// sequence of selections under any locks and tried keys.
    #[test]
    fn elided_hooks_decide_like_the_script(
        steps in proptest::collection::vec((0usize..4, proptest::bits::u8::between(0, 3), 0u8..3), 1..24),
    ) {
        let cfg = config();
        let conn = cfg.providers[0].connections[0].clone();
        let run = |scripted: bool| {
            let (_, q) = quota();
            let p = Policy::compile(Arc::from("main.rhai"), BUILTIN_POLICY, &cfg, q.clone()).unwrap();
            let p = if scripted { p.scripted() } else { p };
            let registry = KeyRegistry::new(&cfg);
            let mut out = Vec::new();
            for (lock, tried, model) in &steps {
                let model = ["gpt-4o", "gpt-4o-mini", "openai/gpt-4o"][*model as usize];
                if *lock < conn.keys.len() {
                    q.lock_for(&Scopes::key_model(&conn, &conn.keys[*lock], model), 5, "rate_limited");
                }
                let tried: Vec<usize> = (0..conn.keys.len()).filter(|i| tried & (1 << i) != 0).collect();
                let view = ConnView {
                    conn: conn.clone(),
                    pool: registry.pool(&conn),
                    model: Arc::from(model),
                    tried: Arc::from(tried.as_slice()),
                };
                let r = req(model);
                let routed: Vec<_> = p.route(&r).unwrap().into_iter().map(|c| (c.spec, c.connection)).collect();
                out.push((routed, p.select_key(&r, &view.as_ref()).unwrap()));
            }
            out
        };
        proptest::prop_assert_eq!(run(true), run(false));
    }
}

/// The request view is built only for a script, and once per request however many hooks
/// read it; the natives read the model alone.
#[test]
fn request_view_is_built_only_for_scripts_and_only_once() {
    let cfg = config();
    let conn = cfg.providers[0].connections[0].clone();
    let registry = KeyRegistry::new(&cfg);
    let pool = registry.pool(&conn);
    for (scripted, want) in [(false, 0), (true, 1)] {
        let (_, q) = quota();
        let p = Policy::compile(Arc::from("main.rhai"), BUILTIN_POLICY, &cfg, q).unwrap();
        let p = if scripted { p.scripted() } else { p };
        let built = std::sync::atomic::AtomicUsize::new(0);
        let make = || {
            built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Arc::try_unwrap(view("gpt-4o").0).unwrap()
        };
        let source = RequestSource::lazy("gpt-4o", &make);
        let routed = p.route(&source).unwrap();
        assert_eq!(routed[0].spec.model.as_deref(), Some("gpt-4o"));
        let c = ConnRef {
            conn: &conn,
            pool: &pool,
            model: "gpt-4o",
            tried: &[],
        };
        assert_eq!(p.select_key(&source, &c).unwrap(), Some(0));
        assert_eq!(p.select_key(&source, &c).unwrap(), Some(1));
        assert_eq!(built.into_inner(), want, "scripted: {scripted}");
    }
}
