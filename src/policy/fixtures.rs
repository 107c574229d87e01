//! Table-driven policy fixtures: `policies/tests/*.toml`, each `[[case]]` a request and
//! what the policy must do with it, run with fresh state and a fixed clock. `keyway check`
//! runs them, and a reload runs them before swapping.
//!
//! A fixture file that names the config it was written against (`config = "x.config.toml"`,
//! beside it; secrets in it are never read) runs against that config, so it holds for any
//! deployment; one without runs against the config being checked. Files ending in
//! `.config.toml` are such configs, not fixtures.
//!
//! ```toml
//! config = "default.config.toml"               # optional
//! [[case]]
//! name = "429 locks the key for this model and moves on"
//! model = "gpt-4o"
//! locks = { "conn:openai/backup" = 60 }        # in force before the case (seconds)
//! expect_candidates = ["openai/gpt-4o", "anthropic/claude-3-5-sonnet"]
//! expect_keys = ["main/OPENAI_KEY", "main/ANTHROPIC_KEY"]   # first connection's pick per candidate
//! [case.outcome]                               # one attempt on the first candidate
//! status = 429
//! headers = { "retry-after" = "30" }
//! expect_decision = "next"
//! expect_locked = ["key:openai/main/OPENAI_KEY@gpt-4o"]
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use super::explain::{explain, ExplainRequest};
use super::{AttemptRef, Policy};
use crate::config::Config;
use crate::format::ApiFormat;
use crate::keys::KeyRegistry;
use crate::outcome::Outcome;
use crate::quota::{ManualClock, QuotaState};

/// Fixture clock: 2030-01-01T12:00:00Z.
pub const FIXTURE_NOW_MS: u64 = 1_893_499_200_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    /// The config these cases were written against, relative to the fixture file.
    config: Option<String>,
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

/// Configs that fixture files carry (`*.config.toml`) are not fixtures themselves.
const FIXTURE_CONFIG_SUFFIX: &str = ".config.toml";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    model: String,
    #[serde(default = "default_client")]
    client: String,
    #[serde(default)]
    endpoint: Option<String>,
    #[serde(default)]
    stream: bool,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    locks: BTreeMap<String, f64>,
    expect_candidates: Option<Vec<String>>,
    expect_keys: Option<Vec<String>>,
    outcome: Option<CaseOutcome>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseOutcome {
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
    expect_decision: Option<String>,
    #[serde(default)]
    expect_locked: Vec<String>,
}

fn default_client() -> String {
    "fixture".into()
}

/// The result of running every fixture file.
#[derive(Debug, Default)]
pub struct FixtureReport {
    pub files: usize,
    pub passed: usize,
    /// `file: case: what differed`.
    pub failures: Vec<String>,
}

/// Every TOML file of a policy directory's `tests/` (fixtures and the configs they carry),
/// sorted: what a reload hashes to notice a fixture edit.
pub fn fixture_inputs(policy_dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(policy_dir.join("tests")) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    files.sort();
    files
}

/// The fixture files of a policy directory (`<dir>/tests/*.toml` but `*.config.toml`).
pub fn fixture_files(policy_dir: &Path) -> Vec<PathBuf> {
    fixture_inputs(policy_dir)
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.ends_with(FIXTURE_CONFIG_SUFFIX))
        })
        .collect()
}

/// Loads the config a fixture file names, with placeholder secrets.
fn fixture_config(fixture: &Path, name: &str) -> Result<Config, String> {
    let path = fixture.parent().unwrap_or(Path::new(".")).join(name);
    let text =
        std::fs::read_to_string(&path).map_err(|e| format!("config `{}`: {e}", path.display()))?;
    crate::config::parse_with(&path, &text, crate::config::Secrets::Placeholder)
        .map_err(|e| e.to_string())
}

/// Runs the fixtures of `policy_dir` against `text` compiled for `config`.
pub fn run(config: &Config, source: &Arc<str>, text: &str, policy_dir: &Path) -> FixtureReport {
    let mut report = FixtureReport::default();
    for file in fixture_files(policy_dir) {
        report.files += 1;
        let shown = file.display().to_string();
        let parsed: Result<FixtureFile, String> = std::fs::read_to_string(&file)
            .map_err(|e| e.to_string())
            .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()));
        let fixtures = match parsed {
            Ok(f) => f,
            Err(e) => {
                report.failures.push(format!("{shown}: {e}"));
                continue;
            }
        };
        let own = match fixtures.config.as_deref().map(|c| fixture_config(&file, c)) {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                report.failures.push(format!("{shown}: {e}"));
                continue;
            }
        };
        let against = own.as_ref().unwrap_or(config);
        for case in fixtures.cases {
            match run_case(against, source, text, &case) {
                Ok(()) => report.passed += 1,
                Err(why) => {
                    let hint = if own.is_none() {
                        " (this file runs against the config being checked; if its cases \
                         were written for another config, name that one at the top: \
                         `config = \"<name>.config.toml\"` beside it; or adapt the cases)"
                    } else {
                        ""
                    };
                    report
                        .failures
                        .push(format!("{shown}: case `{}`: {why}{hint}", case.name));
                }
            }
        }
    }
    report
}

fn headers(map: &BTreeMap<String, String>) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    for (k, v) in map {
        let name = HeaderName::try_from(k.as_str()).map_err(|e| format!("header `{k}`: {e}"))?;
        let value = HeaderValue::try_from(v.as_str()).map_err(|e| format!("header `{k}`: {e}"))?;
        h.insert(name, value);
    }
    Ok(h)
}

fn run_case(config: &Config, source: &Arc<str>, text: &str, case: &Case) -> Result<(), String> {
    let clock = Arc::new(ManualClock::new(FIXTURE_NOW_MS));
    let quota = Arc::new(QuotaState::new(clock));
    let policy =
        Policy::compile(source.clone(), text, config, quota.clone()).map_err(|e| e.to_string())?;
    let keys = KeyRegistry::new(config);
    for (scope, secs) in &case.locks {
        quota.lock_for(scope, (secs * 1000.0) as u64, "fixture");
    }
    let format = match case.endpoint.as_deref() {
        None => ApiFormat::OpenAiChat,
        Some(name) => ApiFormat::parse(name).ok_or_else(|| {
            format!(
                "unknown endpoint `{name}`; use one of {}",
                ApiFormat::names()
            )
        })?,
    };
    let req = ExplainRequest {
        model: case.model.clone(),
        client: case.client.clone(),
        format,
        stream: case.stream,
        headers: headers(&case.headers)?,
    };
    let ex = explain(&policy, config, &keys, &req).map_err(|e| e.to_string())?;
    if let Some(want) = &case.expect_candidates {
        let got: Vec<_> = ex.candidates.iter().map(|c| c.target.clone()).collect();
        if &got != want {
            return Err(format!("candidates: expected {want:?}, got {got:?}"));
        }
    }
    if let Some(want) = &case.expect_keys {
        let got: Vec<_> = ex
            .candidates
            .iter()
            .map(|c| {
                c.skipped
                    .clone()
                    .or_else(|| c.keys.first().cloned())
                    .unwrap_or_default()
            })
            .collect();
        if &got != want {
            return Err(format!("keys: expected {want:?}, got {got:?}"));
        }
    }
    let Some(o) = &case.outcome else {
        return Ok(());
    };
    let first = ex
        .candidates
        .first()
        .ok_or("an outcome needs at least one candidate")?;
    let (provider_id, model) = first.target.split_once('/').ok_or("bad candidate")?;
    let provider = config
        .providers
        .iter()
        .find(|p| p.id == provider_id)
        .ok_or("unknown provider")?;
    let (conn_id, key_id) = first
        .keys
        .first()
        .and_then(|k| k.split_once('/'))
        .ok_or("the first candidate has no usable key for the outcome")?;
    let conn = provider
        .connections
        .iter()
        .find(|c| c.id == conn_id)
        .ok_or("unknown connection")?;
    let key = conn
        .keys
        .iter()
        .position(|k| k.id == key_id)
        .ok_or("unknown key")?;
    let status = StatusCode::from_u16(o.status).map_err(|e| e.to_string())?;
    let mut outcome =
        Outcome::from_response(status, &headers(&o.headers)?, &o.body, quota.now_ms());
    outcome.cap_wait(&config.policy);
    let attempt = AttemptRef::new(1, conn, key, model);
    let decision = policy
        .on_outcome(&req.view().into(), &attempt, &mut outcome)
        .map_err(|e| e.to_string())?;
    if let Some(want) = &o.expect_decision {
        if decision.as_str() != want {
            return Err(format!(
                "decision: expected \"{want}\", got \"{}\"",
                decision.as_str()
            ));
        }
    }
    for scope in &o.expect_locked {
        if !quota.is_locked(scope) {
            let active: Vec<_> = quota.active_locks().into_iter().map(|(s, _)| s).collect();
            return Err(format!(
                "expected `{scope}` to be locked; locked: {active:?}"
            ));
        }
    }
    Ok(())
}
