//! Policy scripts: `policies/main.rhai` decides routing, key selection and what each
//! upstream outcome leads to. A [`Policy`] is one immutable, compiled snapshot (engine +
//! AST + route table), shared by `Arc` and swapped whole on reload; every hook call gets a
//! fresh `Scope`, a wall-clock deadline and an operation limit, and holds no lock.
//!
//! | hook | when | returns |
//! |---|---|---|
//! | `init()` | once per load | `#{ routes: [#{ model, targets }] }` |
//! | `route(req)` | per request | candidates, in order |
//! | `select_key(req, conn)` | per attempt | a key id; `()` for the native default; `false` for none |
//! | `on_outcome(req, attempt, outcome)` | per attempt | `"return"`, `"next"`, `"next_connection"`, `"next_target"`; `()` for the native default |

pub mod defaults;
mod elide;
mod engine;
pub mod explain;
pub mod fixtures;
pub mod views;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rhai::{Dynamic, Engine, EvalAltResult, FuncArgs, Map, Scope, AST};

use crate::config::{Config, OnError, PolicyConfig};
use crate::outcome::Outcome;
use crate::quota::QuotaState;
use crate::routing::{Candidate, RouteTable, Router, TargetSpec};

pub use engine::{key_usable, Limits};
pub use views::{
    AttemptInfo, AttemptRef, AttemptView, ConnRef, ConnView, OutcomeView, RequestInfo,
    RequestSource, RequestView,
};

/// The policy that ships with Keyway; used when the config names no policy directory.
pub const BUILTIN_POLICY: &str = include_str!("../../policies/main.rhai");

/// What an outcome leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Answer the client with this attempt's response.
    Return,
    /// Try another key of this connection, else the next connection, else the next target.
    Next,
    /// Skip the rest of this connection's keys.
    NextConnection,
    /// Skip the rest of this target.
    NextTarget,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Return => "return",
            Decision::Next => "next",
            Decision::NextConnection => "next_connection",
            Decision::NextTarget => "next_target",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "return" => Decision::Return,
            "next" => Decision::Next,
            "next_connection" => Decision::NextConnection,
            "next_target" => Decision::NextTarget,
            _ => return None,
        })
    }
}

/// A script failed at load time. `location` is `file:line:col` where known.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{location}: {message}")]
pub struct PolicyLoadError {
    pub location: String,
    pub message: String,
}

/// A hook call failed at run time.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PolicyError {
    /// The script threw on purpose: `throw "why"` or `throw #{ status: 403, message: "why" }`.
    /// Always answered to the client with that status and message.
    #[error("{message}")]
    Thrown { status: u16, message: String },
    /// A script error, limit or deadline; handled per `policy.on_error`.
    #[error("policy hook `{hook}` failed at {location}: {message}")]
    Failed {
        hook: &'static str,
        location: String,
        message: String,
    },
}

/// Metric handles per hook, registered once per load.
struct HookMetrics {
    by_hook: [(metrics::Counter, metrics::Histogram, metrics::Counter); 4],
    /// Hook decisions made by an elided hook's native function, by hook.
    native: [metrics::Counter; 4],
    /// Script calls made, all hooks (a deterministic count for tests and budgets).
    script_calls: crate::metrics::ThreadSum,
}

const HOOK_NAMES: [&str; 4] = ["init", "route", "select_key", "on_outcome"];

impl HookMetrics {
    fn new() -> Self {
        let m = |hook: &'static str| {
            (
                crate::metrics::counter(
                    crate::metrics::POLICY_EVALUATIONS,
                    &[("hook", hook), ("mode", "script")],
                ),
                crate::metrics::histogram(crate::metrics::POLICY_EVAL_TIME, &[("hook", hook)]),
                crate::metrics::counter(crate::metrics::POLICY_ERRORS, &[("hook", hook)]),
            )
        };
        Self {
            by_hook: HOOK_NAMES.map(m),
            native: HOOK_NAMES.map(|hook| {
                crate::metrics::counter(
                    crate::metrics::POLICY_EVALUATIONS,
                    &[("hook", hook), ("mode", "native")],
                )
            }),
            script_calls: crate::metrics::ThreadSum::default(),
        }
    }

    fn native(&self, hook: &str) {
        let i = HOOK_NAMES.iter().position(|h| *h == hook).unwrap_or(0);
        self.native[i].increment(1);
    }

    fn get(&self, hook: &str) -> &(metrics::Counter, metrics::Histogram, metrics::Counter) {
        let i = HOOK_NAMES.iter().position(|h| *h == hook).unwrap_or(0);
        &self.by_hook[i]
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Hooks {
    init: bool,
    select_key: bool,
    on_outcome: bool,
}

/// One loaded policy snapshot.
pub struct Policy {
    hook_metrics: HookMetrics,
    /// Hooks that only delegate to a native, bound to it at load.
    elided: elide::Elided,
    engine: Engine,
    ast: AST,
    hooks: Hooks,
    router: Arc<OnceLock<Router>>,
    quota: Arc<QuotaState>,
    pub settings: PolicyConfig,
    /// SHA-256 (hex, 16 digits) of the script text.
    pub hash: String,
    pub loaded_at_ms: u64,
    /// Where the script came from (`policies/main.rhai` or `builtin`).
    pub source: Arc<str>,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policy")
            .field("source", &self.source)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

/// The entry-point file inside a policy directory.
pub const ENTRY_POINT: &str = "main.rhai";

/// Reads the policy text named by the config: `dir/main.rhai`, or the built-in policy.
pub fn read_source(settings: &PolicyConfig) -> Result<(Arc<str>, String), PolicyLoadError> {
    match &settings.dir {
        None => Ok((
            Arc::from("builtin:policies/main.rhai"),
            BUILTIN_POLICY.to_string(),
        )),
        Some(dir) => {
            let path: PathBuf = dir.join(ENTRY_POINT);
            let text = std::fs::read_to_string(&path).map_err(|e| PolicyLoadError {
                location: path.display().to_string(),
                message: format!("cannot read the policy entry point: {e}"),
            })?;
            Ok((Arc::from(path.display().to_string()), text))
        }
    }
}

/// Content hash used to skip reloads of unchanged text.
pub fn content_hash(text: &str) -> String {
    crate::digest::short_hex(text.as_bytes(), 8)
}

impl Policy {
    /// Reads, compiles and checks the policy the config names, and runs its `init()`.
    pub fn load(config: &Config, quota: Arc<QuotaState>) -> Result<Self, PolicyLoadError> {
        let (source, text) = read_source(&config.policy)?;
        Self::compile(source, &text, config, quota)
    }

    /// Compiles `text` (from `source`) against `config`.
    pub fn compile(
        source: Arc<str>,
        text: &str,
        config: &Config,
        quota: Arc<QuotaState>,
    ) -> Result<Self, PolicyLoadError> {
        let settings = config.policy.clone();
        let limits = Limits {
            max_operations: settings.max_operations,
            call_timeout: settings.call_timeout,
        };
        let router = Arc::new(OnceLock::new());
        let engine = engine::build(limits, quota.clone(), router.clone(), source.clone());
        let at = |pos: rhai::Position| format!("{source}:{}", engine::line_col(pos));
        let mut ast = engine.compile(text).map_err(|e| PolicyLoadError {
            location: at(e.position()),
            message: e.err_type().to_string(),
        })?;
        ast.set_source(source.to_string());
        if let Some(stmt) = ast.statements().first() {
            return Err(PolicyLoadError {
                location: at(stmt.position()),
                message: "top-level statements are not allowed (they would re-run on every call); \
                          put setup in `fn init()` and logic in hook functions"
                    .into(),
            });
        }
        let hooks = check_hooks(&ast).map_err(|message| PolicyLoadError {
            location: source.to_string(),
            message,
        })?;
        static BUILTIN_ON_OUTCOME: OnceLock<Option<String>> = OnceLock::new();
        let builtin = BUILTIN_ON_OUTCOME.get_or_init(|| elide::builtin_on_outcome(&engine));
        let elided = elide::Elided::find(&ast, text, builtin.as_deref());
        let mut policy = Self {
            hook_metrics: HookMetrics::new(),
            elided,
            engine,
            ast,
            hooks,
            router,
            quota,
            settings,
            hash: content_hash(text),
            loaded_at_ms: 0,
            source,
        };
        let table = if hooks.init {
            let value = policy.call("init", ()).map_err(|e| PolicyLoadError {
                location: policy.source.to_string(),
                message: e.to_string(),
            })?;
            route_table(value, config).map_err(|message| PolicyLoadError {
                location: policy.source.to_string(),
                message: format!("init(): {message}"),
            })?
        } else {
            RouteTable::default()
        };
        let _ = policy
            .router
            .set(Router::new(table, config.providers.clone()));
        policy.loaded_at_ms = policy.quota.now_ms();
        Ok(policy)
    }

    pub fn router(&self) -> &Router {
        // Always set by `compile` before the policy is returned.
        self.router.get().expect("router is set at load")
    }

    pub fn quota(&self) -> &Arc<QuotaState> {
        &self.quota
    }

    /// Hooks that run natively, and what runs instead (for explain and `/admin/state`).
    pub fn native_hooks(&self) -> Vec<(&'static str, String)> {
        self.elided.describe()
    }

    /// The same policy with every hook run as written (tests compare both ways).
    #[doc(hidden)]
    pub fn scripted(mut self) -> Self {
        self.elided = elide::Elided::default();
        self
    }

    /// Whether any per-request hook runs as a script (which may read the request).
    pub fn runs_scripts(&self) -> bool {
        !self.elided.route
            || (self.hooks.select_key && self.elided.select_key.is_none())
            || self.scripts_on_outcome()
    }

    /// Whether `on_outcome` runs as a script (which may read `outcome.header(…)`).
    pub fn scripts_on_outcome(&self) -> bool {
        self.hooks.on_outcome && !self.elided.on_outcome
    }

    /// Script calls made so far by this policy (every hook), for budgets in tests.
    pub fn script_calls(&self) -> u64 {
        self.hook_metrics.script_calls.sum()
    }

    fn call(&self, hook: &'static str, args: impl FuncArgs) -> Result<Dynamic, PolicyError> {
        self.hook_metrics.script_calls.add(1);
        let started = std::time::Instant::now();
        let _deadline = engine::DeadlineGuard::set(started + self.settings.call_timeout);
        let mut scope = Scope::new();
        let options = rhai::CallFnOptions::new()
            .eval_ast(false)
            .rewind_scope(false);
        let result = self
            .engine
            .call_fn_with_options::<Dynamic>(options, &mut scope, &self.ast, hook, args)
            .map_err(|e| self.runtime_error(hook, *e));
        let (evaluations, time, errors) = self.hook_metrics.get(hook);
        evaluations.increment(1);
        time.record(started.elapsed().as_secs_f64());
        if let Err(PolicyError::Failed { .. }) = &result {
            errors.increment(1);
        }
        result
    }

    fn runtime_error(&self, hook: &'static str, err: EvalAltResult) -> PolicyError {
        let inner = err.unwrap_inner();
        let pos = if inner.position().is_none() {
            err.position()
        } else {
            inner.position()
        };
        let location = if pos.is_none() {
            format!("{} (in `{hook}`)", self.source)
        } else {
            format!("{}:{}", self.source, engine::line_col(pos))
        };
        let message = match inner {
            EvalAltResult::ErrorRuntime(value, _) => return thrown(value),
            EvalAltResult::ErrorTerminated(token, _)
                if token.to_string() == engine::DEADLINE_TOKEN =>
            {
                format!(
                    "call exceeded its {:?} deadline",
                    self.settings.call_timeout
                )
            }
            EvalAltResult::ErrorTooManyOperations(_) => format!(
                "call exceeded its operation limit ({}); is there an endless loop?",
                self.settings.max_operations
            ),
            other => {
                let text = other.to_string();
                match text.rfind(" (line ") {
                    Some(i) => text[..i].to_string(),
                    None => text,
                }
            }
        };
        PolicyError::Failed {
            hook,
            location,
            message,
        }
    }

    fn failed(&self, hook: &'static str, message: String) -> PolicyError {
        PolicyError::Failed {
            hook,
            location: self.source.to_string(),
            message,
        }
    }

    /// `route(req)`: the candidates, in order.
    pub fn route(&self, req: &RequestSource<'_>) -> Result<Vec<Candidate>, PolicyError> {
        if self.elided.route {
            // Exactly what the script returns: `provider/model` with the model spelled out.
            self.hook_metrics.native("route");
            let model = req.model();
            let mut out = self.default_route(model);
            for c in &mut out {
                c.spec.model = Some(c.spec.model_for(model).to_string());
            }
            return Ok(out);
        }
        let value = self.call("route", (req.view().clone(),))?;
        candidates(value).map_err(|m| self.failed("route", m))
    }

    /// `select_key(req, conn)`: `Ok(Some(i))` a key index, `Ok(None)` no usable key.
    pub fn select_key(
        &self,
        req: &RequestSource<'_>,
        conn: &ConnRef<'_>,
    ) -> Result<Option<usize>, PolicyError> {
        if !self.hooks.select_key {
            return Ok(defaults::select_key(&self.quota, conn));
        }
        if let Some(rotation) = self.elided.select_key {
            // What `keys::<rotation>(conn)` returns, then the fallback a `()` gets.
            self.hook_metrics.native("select_key");
            let picked = conn.pool.select(rotation, conn.conn, |i, _| {
                engine::key_usable(&self.quota, conn, i)
            });
            return Ok(picked.or_else(|| defaults::select_key(&self.quota, conn)));
        }
        let value = self.call("select_key", (req.view().clone(), conn.to_view()))?;
        if value.is_unit() {
            return Ok(defaults::select_key(&self.quota, conn));
        }
        if value.as_bool() == Ok(false) {
            return Ok(None);
        }
        let Ok(id) = value.into_immutable_string() else {
            return Err(self.failed(
                "select_key",
                "select_key must return a key id string, () or false".into(),
            ));
        };
        match conn.conn.keys.iter().position(|k| k.id == id.as_str()) {
            Some(i) if conn.tried.contains(&i) => Ok(None),
            Some(i) => Ok(Some(i)),
            None => Err(self.failed(
                "select_key",
                format!(
                    "select_key returned `{id}`, which is not a key of `{}`",
                    conn.conn.name()
                ),
            )),
        }
    }

    /// `on_outcome(req, attempt, outcome)`: what to do next.
    pub fn on_outcome(
        &self,
        req: &RequestSource<'_>,
        attempt: &AttemptRef<'_>,
        outcome: &mut Outcome,
    ) -> Result<Decision, PolicyError> {
        if !self.hooks.on_outcome || self.elided.on_outcome {
            if self.elided.on_outcome {
                self.hook_metrics.native("on_outcome");
            }
            return Ok(defaults::on_outcome(&self.quota, attempt, outcome));
        }
        // Owned copies for the script (a native hook reads the borrowed ones); the
        // response headers, which only `outcome.header(…)` reads, move into its copy.
        let headers = std::mem::take(&mut outcome.headers);
        let view = OutcomeView(Arc::new(Outcome {
            headers,
            ..outcome.clone()
        }));
        let value = self.call("on_outcome", (req.view().clone(), attempt.view(), view))?;
        if value.is_unit() {
            return Ok(defaults::on_outcome(&self.quota, attempt, outcome));
        }
        let text = value.into_immutable_string().unwrap_or_default();
        Decision::parse(&text).ok_or_else(|| {
            self.failed(
                "on_outcome",
                format!("on_outcome returned `{text}`; expected \"return\", \"next\", \"next_connection\" or \"next_target\""),
            )
        })
    }

    /// The native default for `route`: the router's resolution.
    pub fn default_route(&self, model: &str) -> Vec<Candidate> {
        self.router()
            .resolve(model)
            .into_iter()
            .map(|spec| Candidate {
                spec,
                connection: None,
            })
            .collect()
    }

    pub fn on_error(&self) -> OnError {
        self.settings.on_error
    }
}

fn thrown(value: &Dynamic) -> PolicyError {
    if let Some(map) = value.read_lock::<Map>() {
        let status = map
            .get("status")
            .and_then(|v| v.as_int().ok())
            .filter(|s| (400..=599).contains(s))
            .unwrap_or(403) as u16;
        let message = map
            .get("message")
            .map(|m| m.to_string())
            .unwrap_or_else(|| "rejected by policy".into());
        return PolicyError::Thrown { status, message };
    }
    PolicyError::Thrown {
        status: 403,
        message: value.to_string(),
    }
}

fn check_hooks(ast: &AST) -> Result<Hooks, String> {
    let mut hooks = Hooks::default();
    let mut has_route = false;
    for f in ast.iter_functions() {
        let (want, flag): (usize, Option<&mut bool>) = match f.name {
            "route" => (1, None),
            "init" => (0, Some(&mut hooks.init)),
            "select_key" => (2, Some(&mut hooks.select_key)),
            "on_outcome" => (3, Some(&mut hooks.on_outcome)),
            _ => continue,
        };
        if f.params.len() != want {
            let expected = match f.name {
                "route" => "route(req)",
                "init" => "init()",
                "select_key" => "select_key(req, conn)",
                _ => "on_outcome(req, attempt, outcome)",
            };
            return Err(format!(
                "hook `{}` takes {} parameter(s), found {}; write `fn {expected}`",
                f.name,
                want,
                f.params.len()
            ));
        }
        match flag {
            Some(flag) => *flag = true,
            None => has_route = true,
        }
    }
    if !has_route {
        return Err("the policy must define `fn route(req)` (e.g. `fn route(req) { routes::resolve(req.model) }`)".into());
    }
    Ok(hooks)
}

/// Parses `init()`'s return value into a route table, checking every provider exists.
fn route_table(value: Dynamic, config: &Config) -> Result<RouteTable, String> {
    let mut table = RouteTable::default();
    if value.is_unit() {
        return Ok(table);
    }
    let Some(map) = value.try_cast::<Map>() else {
        return Err("must return a map such as #{ routes: [...] }".into());
    };
    for key in map.keys() {
        if key.as_str() != "routes" {
            return Err(format!(
                "unknown key `{key}`; init() returns #{{ routes: [...] }}"
            ));
        }
    }
    let Some(routes) = map.get("routes") else {
        return Ok(table);
    };
    let Some(routes) = routes.read_lock::<rhai::Array>() else {
        return Err("`routes` must be an array of #{ model: \"pattern\", targets: [...] }".into());
    };
    for (i, r) in routes.iter().enumerate() {
        let Some(r) = r.read_lock::<Map>() else {
            return Err(format!(
                "routes[{i}] must be a map #{{ model: \"pattern\", targets: [...] }}"
            ));
        };
        let pattern = r
            .get("model")
            .and_then(|v| v.clone().into_immutable_string().ok())
            .ok_or_else(|| format!("routes[{i}] needs `model: \"pattern\"`"))?;
        let targets = r
            .get("targets")
            .and_then(|v| v.read_lock::<rhai::Array>().map(|a| a.clone()))
            .ok_or_else(|| {
                format!("route `{pattern}` needs `targets: [\"provider/model\", ...]`")
            })?;
        let translate = match r.get("translate") {
            None => true,
            Some(v) => v
                .as_bool()
                .map_err(|_| format!("route `{pattern}`: `translate` must be true or false"))?,
        };
        let mut specs = Vec::with_capacity(targets.len());
        for t in targets {
            let t = t.into_immutable_string().map_err(|_| {
                format!("route `{pattern}`: targets must be \"provider/model\" strings")
            })?;
            let mut spec = TargetSpec::parse(&t).map_err(|e| format!("route `{pattern}`: {e}"))?;
            spec.translate = translate;
            if !config.providers.iter().any(|p| p.id == spec.provider) {
                let known: Vec<_> = config.providers.iter().map(|p| p.id.as_str()).collect();
                return Err(format!(
                    "route `{pattern}` → `{t}`: unknown provider `{}` (configured: {})",
                    spec.provider,
                    known.join(", ")
                ));
            }
            specs.push(spec);
        }
        if specs.is_empty() {
            return Err(format!("route `{pattern}` has no targets"));
        }
        table.add(&pattern, specs);
    }
    Ok(table)
}

/// Parses `route()`'s return value.
fn candidates(value: Dynamic) -> Result<Vec<Candidate>, String> {
    let items = if value.is_string() {
        vec![value]
    } else if let Some(a) = value.try_cast::<rhai::Array>() {
        a
    } else {
        return Err("route must return an array of \"provider/model\" strings or #{ target, connection } maps".into());
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            if item.is_string() {
                let s = item.into_immutable_string().unwrap_or_default();
                return Ok(Candidate {
                    spec: TargetSpec::parse(&s)?,
                    connection: None,
                });
            }
            let map = item.try_cast::<Map>().ok_or_else(|| {
                format!("route()[{i}] must be a \"provider/model\" string or a map")
            })?;
            let target = map
                .get("target")
                .and_then(|v| v.clone().into_immutable_string().ok())
                .ok_or_else(|| format!("route()[{i}] needs `target: \"provider/model\"`"))?;
            let connection = map
                .get("connection")
                .and_then(|v| v.clone().into_immutable_string().ok())
                .map(|s| s.to_string());
            let mut spec = TargetSpec::parse(&target)?;
            if let Some(v) = map.get("translate") {
                spec.translate = v
                    .as_bool()
                    .map_err(|_| format!("route()[{i}]: `translate` must be true or false"))?;
            }
            Ok(Candidate { spec, connection })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests;
