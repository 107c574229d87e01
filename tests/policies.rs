//! The shipped and example policies compile against their configs and do what their
//! comments say; `keyway check` and `keyway explain` work as a user runs them.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use keyway::config::Config;
use keyway::format::ApiFormat;
use keyway::keys::KeyRegistry;
use keyway::policy::explain::{explain, ExplainRequest};
use keyway::policy::{Policy, PolicyError};
use keyway::quota::{ManualClock, QuotaState};

fn example_config() -> Config {
    for var in [
        "TEAM_A_KEY",
        "TEAM_B_KEY",
        "OPENAI_KEY",
        "OPENAI_KEY_2",
        "GROQ_KEY",
        "OPENROUTER_KEY",
        "ANTHROPIC_KEY",
    ] {
        std::env::set_var(var, format!("test-{var}"));
    }
    keyway::config::load(Path::new("examples/policies/keyway.toml")).unwrap()
}

fn load_example(name: &str) -> (Config, Policy) {
    let cfg = example_config();
    let text = std::fs::read_to_string(format!("examples/policies/{name}")).unwrap();
    let quota = Arc::new(QuotaState::new(Arc::new(ManualClock::new(
        1_900_000_000_000,
    ))));
    let p = Policy::compile(Arc::from(name), &text, &cfg, quota).unwrap_or_else(|e| panic!("{e}"));
    (cfg, p)
}

fn first_targets(
    cfg: &Config,
    p: &Policy,
    model: &str,
    client: &str,
) -> Result<Vec<String>, PolicyError> {
    let req = ExplainRequest {
        model: model.into(),
        client: client.into(),
        format: ApiFormat::OpenAiChat,
        stream: false,
        headers: http::HeaderMap::new(),
    };
    let keys = KeyRegistry::new(cfg);
    explain(p, cfg, &keys, &req).map(|e| e.candidates.into_iter().map(|c| c.target).collect())
}

#[test]
fn every_example_policy_compiles() {
    let mut n = 0;
    for entry in std::fs::read_dir("examples/policies").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "rhai") {
            load_example(path.file_name().unwrap().to_str().unwrap());
            n += 1;
        }
    }
    assert!(n >= 5, "expected at least 5 example policies, found {n}");
}

#[test]
fn weighted_split_sends_one_in_five_to_groq_first() {
    let (cfg, p) = load_example("weighted_split.rhai");
    let groq_first = (0..100)
        .filter(|_| first_targets(&cfg, &p, "chat", "team-a").unwrap()[0].starts_with("groq/"))
        .count();
    assert_eq!(groq_first, 20);
}

#[test]
fn cheapest_first_orders_by_price_and_skips_small_contexts_for_long_prompts() {
    let (cfg, p) = load_example("cheapest_first.rhai");
    assert_eq!(
        first_targets(&cfg, &p, "auto", "x").unwrap(),
        [
            "groq/llama-3.1-8b-instant",
            "openai/gpt-4o-mini",
            "openai/gpt-4o"
        ]
    );
    assert_eq!(
        first_targets(&cfg, &p, "gpt-4-turbo", "x").unwrap(),
        ["openai/gpt-4o-mini", "openai/gpt-4-turbo"]
    );
}

#[test]
fn per_client_routing_pins_teams_and_refuses_others() {
    let (cfg, p) = load_example("per_client.rhai");
    assert_eq!(
        first_targets(&cfg, &p, "anything", "team-a").unwrap()[0],
        "openrouter/anthropic/claude-3.5-sonnet"
    );
    assert_eq!(
        first_targets(&cfg, &p, "gpt-4o", "team-b").unwrap(),
        ["openai/gpt-4o"]
    );
    match first_targets(&cfg, &p, "gpt-4o", "intern") {
        Err(PolicyError::Thrown {
            status: 403,
            message,
        }) => assert!(message.contains("intern")),
        other => panic!("expected a 403 throw, got {other:?}"),
    }
}

fn keyway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_keyway"))
}

fn write_setup(policy: &str, fixture: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("policies/tests")).unwrap();
    std::fs::write(dir.path().join("policies/main.rhai"), policy).unwrap();
    std::fs::write(dir.path().join("policies/tests/cases.toml"), fixture).unwrap();
    std::fs::write(dir.path().join("key"), "sk-test").unwrap();
    std::fs::write(
        dir.path().join("keyway.toml"),
        r#"
[server]
listen = "127.0.0.1:0"
[auth]
allow_unauthenticated = true
[policy]
dir = "policies"
[[provider]]
id = "openai"
kind = "openai"
base_url = "https://api.openai.com/v1"
models = ["gpt-4o"]
[[provider.connection]]
id = "main"
keys = [{ id = "k0", key = "file:key" }]
"#,
    )
    .unwrap();
    dir
}

#[test]
fn check_runs_fixtures_and_fails_on_a_mismatch() {
    let ok = write_setup(
        "fn route(req) { routes::resolve(req.model) }",
        "[[case]]\nname = \"routes\"\nmodel = \"gpt-4o\"\nexpect_candidates = [\"openai/gpt-4o\"]\nexpect_keys = [\"main/k0\"]\n",
    );
    let out = keyway()
        .args(["check", "--config"])
        .arg(ok.path().join("keyway.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("policy fixtures: 1 passed, 0 failed"),
        "{stdout}"
    );

    let bad = write_setup(
        "fn route(req) { routes::resolve(req.model) }",
        "[[case]]\nname = \"wrong expectation\"\nmodel = \"gpt-4o\"\nexpect_candidates = [\"groq/x\"]\n",
    );
    let out = keyway()
        .args(["check", "--config"])
        .arg(bad.path().join("keyway.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains("FAIL")
            && stdout.contains("wrong expectation")
            && stdout.contains("groq/x"),
        "{stdout}"
    );
}

#[test]
fn check_reports_a_broken_script_with_file_line_and_column() {
    let dir = write_setup("fn route(req) {\n    let x = 1 +;\n}\n", "");
    let out = keyway()
        .args(["check", "--config"])
        .arg(dir.path().join("keyway.toml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("policies/main.rhai:2:16"), "{stderr}");
}

#[test]
fn explain_prints_candidates_and_keys() {
    let dir = write_setup("fn route(req) { routes::resolve(req.model) }", "");
    let out = keyway()
        .args(["explain", "--model", "gpt-4o", "--json", "--config"])
        .arg(dir.path().join("keyway.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["candidates"][0]["target"], "openai/gpt-4o");
    assert_eq!(v["candidates"][0]["keys"][0], "main/k0");
}

/// The README's flow: copy `policies/` next to a config of your own and point
/// `[policy] dir` at it. The shipped fixtures carry the config they were written for.
#[test]
fn the_shipped_policy_and_fixtures_hold_next_to_any_config() {
    let dir = tempfile::tempdir().unwrap();
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let copy = dir.path().join("policies");
    std::fs::create_dir_all(copy.join("tests")).unwrap();
    for rel in [
        "main.rhai",
        "tests/default.toml",
        "tests/default.config.toml",
    ] {
        std::fs::copy(shipped.join(rel), copy.join(rel)).unwrap();
    }
    std::fs::write(dir.path().join("client"), "kw-client").unwrap();
    std::fs::write(dir.path().join("groq"), "gsk-upstream").unwrap();
    let config = r#"
[server]
listen = "127.0.0.1:0"
[auth]
clients = [{ name = "me", key = "file:client" }]
[policy]
dir = "policies"
[[provider]]
id = "groq"
kind = "openai-compatible"
base_url = "https://api.groq.com/openai/v1"
models = ["llama-3.1-8b-instant"]
[[provider.connection]]
id = "main"
keys = ["file:groq"]
"#;
    std::fs::write(dir.path().join("keyway.toml"), config).unwrap();
    let out = keyway()
        .args(["check", "--config"])
        .arg(dir.path().join("keyway.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("13 passed, 0 failed"), "{stdout}");

    // A fixture of the user's own, written for another config, fails with what to do.
    std::fs::write(
        copy.join("tests/mine.toml"),
        "[[case]]\nname = \"mine\"\nmodel = \"gpt-4o\"\nexpect_candidates = [\"openai/gpt-4o\"]\n",
    )
    .unwrap();
    let out = keyway()
        .args(["check", "--config"])
        .arg(dir.path().join("keyway.toml"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        stdout.contains(r#"config = "<name>.config.toml""#),
        "{stdout}"
    );
}
