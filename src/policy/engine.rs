//! The sandboxed Rhai engine and the native modules scripts call: `routes`, `keys`,
//! `quota`, `time`, `log`. Closures capture long-lived state (`QuotaState`) and this
//! snapshot's router, never per-request data.

use std::cell::Cell;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rhai::{Dynamic, Engine, EvalAltResult, ImmutableString, Module, Position, FLOAT, INT};

use super::views::{self, ConnRef, ConnView, RequestView};
use crate::keys::Rotation;
use crate::quota::{next_midnight_utc_ms, QuotaState};
use crate::routing::Router;

/// Sandbox limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_operations: u64,
    pub call_timeout: Duration,
}

thread_local! {
    /// The wall-clock deadline of the hook call running on this thread, if any.
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Sets this thread's call deadline until dropped. Hook calls are synchronous, so the
/// deadline applies to exactly one call.
pub struct DeadlineGuard;

impl DeadlineGuard {
    pub fn set(deadline: Instant) -> Self {
        DEADLINE.with(|d| d.set(Some(deadline)));
        DeadlineGuard
    }
}

impl Drop for DeadlineGuard {
    fn drop(&mut self) {
        DEADLINE.with(|d| d.set(None));
    }
}

/// The value `on_progress` terminates a script with when its deadline passes.
pub const DEADLINE_TOKEN: &str = "keyway: policy call deadline exceeded";

pub fn build(
    limits: Limits,
    quota: Arc<QuotaState>,
    router: Arc<OnceLock<Router>>,
    source: Arc<str>,
) -> Engine {
    let mut engine = Engine::new();
    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(32);
    engine.set_max_expr_depths(64, 32);
    engine.set_max_string_size(64 * 1024);
    engine.set_max_array_size(10_000);
    engine.set_max_map_size(10_000);
    engine.set_strict_variables(true);
    engine.disable_symbol("eval");
    engine.set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
    engine.on_progress(|ops| {
        if ops % 512 == 0 {
            let late = DEADLINE
                .with(|d| d.get())
                .is_some_and(|d| Instant::now() > d);
            if late {
                return Some(Dynamic::from(DEADLINE_TOKEN));
            }
        }
        None
    });
    let src = source.clone();
    engine.on_print(move |s| tracing::info!(target: "keyway::policy", script = %src, "{s}"));
    let src = source.clone();
    engine.on_debug(move |s, _, pos| {
        tracing::debug!(target: "keyway::policy", at = %format!("{src}:{}", line_col(pos)), "{s}")
    });
    views::register(&mut engine);
    engine.register_static_module("routes", routes_module(router).into());
    engine.register_static_module("keys", keys_module(quota.clone()).into());
    engine.register_static_module("quota", quota_module(quota.clone()).into());
    engine.register_static_module("state", state_module(quota.clone()).into());
    engine.register_static_module("time", time_module(quota).into());
    engine.register_static_module("log", log_module(source).into());
    engine
}

pub fn line_col(pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{l}:{c}"),
        (Some(l), None) => format!("{l}"),
        _ => "?".to_string(),
    }
}

fn routes_module(router: Arc<OnceLock<Router>>) -> Module {
    let mut m = Module::new();
    let r = router.clone();
    m.set_native_fn("resolve", move |model: &str| {
        let Some(router) = r.get() else {
            return Err("routes::resolve is not available inside init()".into());
        };
        Ok(router
            .resolve(model)
            .into_iter()
            .map(|s| {
                let target = format!("{}/{}", s.provider, s.model_for(model));
                if s.translate {
                    Dynamic::from(target)
                } else {
                    // A route that forbids translation says so to route().
                    let mut m = rhai::Map::new();
                    m.insert("target".into(), Dynamic::from(target));
                    m.insert("translate".into(), Dynamic::FALSE);
                    Dynamic::from_map(m)
                }
            })
            .collect::<rhai::Array>())
    });
    let r = router.clone();
    m.set_native_fn("formats", move |target: &str| {
        let Some(router) = r.get() else {
            return Err("routes::formats is not available inside init()".into());
        };
        let id = target.split_once('/').map_or(target, |(p, _)| p);
        Ok(router.provider(id).map_or_else(rhai::Array::new, |p| {
            p.formats
                .iter()
                .map(|f| Dynamic::from(f.as_str().to_string()))
                .collect()
        }))
    });
    let translation = move |req: &RequestView, target: &str| -> Dynamic {
        let Some(router) = router.get() else {
            return Dynamic::UNIT;
        };
        let id = target.split_once('/').map_or(target, |(p, _)| p);
        match router.provider(id) {
            None => Dynamic::UNIT,
            Some(p) => match crate::translate::Translation::route(req.0.format, p, true) {
                Ok(None) => Dynamic::from(String::new()),
                Ok(Some(t)) => Dynamic::from(t.label().to_string()),
                Err(_) => Dynamic::UNIT,
            },
        }
    };
    let t = translation.clone();
    m.set_native_fn("translation", move |req: RequestView, target: &str| {
        Ok(t(&req, target))
    });
    // A candidate map (`#{ target, connection, translate }`) works too.
    m.set_native_fn("translation", move |req: RequestView, c: rhai::Map| {
        let target = c
            .get("target")
            .and_then(|v| v.clone().into_immutable_string().ok())
            .unwrap_or_default();
        let allowed = c.get("translate").and_then(|v| v.as_bool().ok()) != Some(false);
        Ok(match translation(&req, &target) {
            t if !allowed
                && t.clone()
                    .into_immutable_string()
                    .is_ok_and(|s| !s.is_empty()) =>
            {
                Dynamic::UNIT
            }
            t => t,
        })
    });
    m
}

/// `true` if key `index` of `c` may be used now: not tried in this request, and neither
/// the key, the key for this model, nor the connection is locked.
pub fn key_usable(quota: &QuotaState, c: &ConnRef<'_>, index: usize) -> bool {
    if c.tried.contains(&index) {
        return false;
    }
    if quota.has_no_locks() {
        return true;
    }
    let key = &c.conn.keys[index];
    !quota.is_locked(key.scope())
        && !quota.is_locked(&crate::keys::Scopes::key_model(c.conn, key, c.model))
}

fn keys_module(quota: Arc<QuotaState>) -> Module {
    let mut m = Module::new();
    for rotation in Rotation::ALL {
        let q = quota.clone();
        m.set_native_fn(rotation.as_str(), move |c: &mut ConnView| {
            let picked = c
                .pool
                .select(rotation, &c.conn, |i, _| key_usable(&q, &c.as_ref(), i))
                .map(|i| c.conn.keys[i].id.clone());
            Ok(picked.map_or(Dynamic::UNIT, Dynamic::from))
        });
    }
    let q = quota;
    m.set_native_fn("healthy", move |c: &mut ConnView| {
        Ok((0..c.conn.keys.len())
            .filter(|&i| key_usable(&q, &c.as_ref(), i))
            .map(|i| Dynamic::from(c.conn.keys[i].id.clone()))
            .collect::<rhai::Array>())
    });
    m
}

fn secs_to_ms(secs: FLOAT) -> Result<u64, Box<EvalAltResult>> {
    if secs.is_finite() && secs >= 0.0 {
        Ok((secs * 1000.0).ceil() as u64)
    } else {
        Err(format!("lock duration must be a non-negative number of seconds, got {secs}").into())
    }
}

fn quota_module(quota: Arc<QuotaState>) -> Module {
    let mut m = Module::new();
    let q = quota.clone();
    let lock = move |scope: &str, secs: FLOAT, reason: &str| -> Result<INT, Box<EvalAltResult>> {
        Ok(q.lock_for(scope, secs_to_ms(secs)?, reason) as INT)
    };
    let l = lock.clone();
    m.set_native_fn("lock", move |scope: &str, secs: INT| {
        l(scope, secs as FLOAT, "policy")
    });
    let l = lock.clone();
    m.set_native_fn("lock", move |scope: &str, secs: FLOAT| {
        l(scope, secs, "policy")
    });
    let l = lock.clone();
    m.set_native_fn("lock", move |scope: &str, secs: INT, reason: &str| {
        l(scope, secs as FLOAT, reason)
    });
    m.set_native_fn("lock", move |scope: &str, secs: FLOAT, reason: &str| {
        lock(scope, secs, reason)
    });
    let q = quota.clone();
    m.set_native_fn(
        "lock_until",
        move |scope: &str, until_ms: INT, reason: &str| {
            Ok(q.lock_until(scope, until_ms.max(0) as u64, reason) as INT)
        },
    );
    let q = quota.clone();
    m.set_native_fn("unlock", move |scope: &str| Ok(q.unlock(scope)));
    let q = quota.clone();
    m.set_native_fn("locked", move |scope: &str| Ok(q.is_locked(scope)));
    let q = quota.clone();
    m.set_native_fn("until", move |scope: &str| {
        Ok(q.locked_until(scope).unwrap_or(0) as INT)
    });
    let window = |secs: INT| -> Result<u64, Box<EvalAltResult>> {
        if secs > 0 {
            Ok((secs as u64).saturating_mul(1000))
        } else {
            Err("window must be a positive number of seconds".into())
        }
    };
    let q = quota.clone();
    m.set_native_fn("hit", move |counter: &str, secs: INT| {
        Ok(q.hit(counter, window(secs)?) as INT)
    });
    let q = quota.clone();
    m.set_native_fn("count", move |counter: &str, secs: INT| {
        Ok(q.count(counter, window(secs)?) as INT)
    });
    let q = quota.clone();
    m.set_native_fn("fail", move |scope: &str| Ok(q.fail(scope) as INT));
    let q = quota.clone();
    m.set_native_fn("clear", move |scope: &str| {
        q.clear_streak(scope);
        Ok(())
    });
    let q = quota;
    m.set_native_fn("streak", move |scope: &str| Ok(q.streak(scope) as INT));
    m
}

/// Read-only facts about where quota state lives (`[state]`), for policies that want to
/// be stricter while shared state is unavailable.
fn state_module(quota: Arc<QuotaState>) -> Module {
    let mut m = Module::new();
    let q = quota.clone();
    m.set_native_fn("backend", move || {
        Ok(if q.shared().is_some() {
            "redis"
        } else {
            "memory"
        }
        .to_string())
    });
    let q = quota.clone();
    m.set_native_fn("healthy", move || {
        Ok(q.shared().is_none_or(|s| s.is_healthy()))
    });
    let q = quota;
    m.set_native_fn("replicas", move || {
        Ok(q.shared().map_or(1, |s| s.replicas()) as INT)
    });
    m
}

fn time_module(quota: Arc<QuotaState>) -> Module {
    let mut m = Module::new();
    let q = quota.clone();
    m.set_native_fn("now_ms", move || Ok(q.now_ms() as INT));
    let q = quota;
    m.set_native_fn("next_midnight_utc_ms", move || {
        Ok(next_midnight_utc_ms(q.now_ms()) as INT)
    });
    m
}

fn log_module(source: Arc<str>) -> Module {
    let mut m = Module::new();
    let s = source.clone();
    m.set_native_fn("info", move |msg: ImmutableString| {
        tracing::info!(target: "keyway::policy", script = %s, "{msg}");
        Ok(())
    });
    let s = source.clone();
    m.set_native_fn("warn", move |msg: ImmutableString| {
        tracing::warn!(target: "keyway::policy", script = %s, "{msg}");
        Ok(())
    });
    let s = source;
    m.set_native_fn("error", move |msg: ImmutableString| {
        tracing::error!(target: "keyway::policy", script = %s, "{msg}");
        Ok(())
    });
    m
}
