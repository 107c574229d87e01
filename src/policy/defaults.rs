//! The native default decisions (DESIGN §5). They run when a policy lacks a hook, returns
//! `()`, or fails with `on_error = "default"`; `policies/main.rhai` does the same in script
//! (a test keeps the two in step).

use crate::keys::Rotation;
use crate::outcome::{Outcome, OutcomeClass};
use crate::quota::{next_midnight_utc_ms, QuotaState};

use super::engine::key_usable;
use super::views::{AttemptRef, ConnRef};
use super::Decision;

/// Default wait after a 429 that gave no hint.
pub const RATE_LIMIT_LOCK_MS: u64 = 60_000;
/// Default wait after quota exhaustion with no hint and no mention of a daily limit.
pub const QUOTA_LOCK_MS: u64 = 3_600_000;
/// Cool-down of a key after an auth failure; a second in a row marks it invalid for a day.
pub const AUTH_COOL_MS: u64 = 600_000;
pub const AUTH_INVALID_MS: u64 = 86_400_000;
/// Connection cool-down after consecutive server/timeout/network failures: 5 s, doubling, at most 5 min.
pub const SERVER_COOL_BASE_MS: u64 = 5_000;
pub const SERVER_COOL_MAX_MS: u64 = 300_000;

/// Strict round-robin over usable keys.
pub fn select_key(quota: &QuotaState, conn: &ConnRef<'_>) -> Option<usize> {
    conn.pool.select(Rotation::RoundRobin, conn.conn, |i, _| {
        key_usable(quota, conn, i)
    })
}

/// The connection cool-down for the `streak`-th consecutive failure (none for the first:
/// one blip should not take a whole account out of rotation).
pub fn server_cool_ms(streak: u32) -> Option<u64> {
    (streak >= 2).then(|| {
        let doublings = (streak - 2).min(16);
        (SERVER_COOL_BASE_MS << doublings).min(SERVER_COOL_MAX_MS)
    })
}

pub fn on_outcome(quota: &QuotaState, a: &AttemptRef<'_>, o: &Outcome) -> Decision {
    let class = o.class.as_str();
    match o.class {
        OutcomeClass::Ok => {
            // Scope names are formatted only when there may be a streak to clear.
            if quota.any_streak() {
                quota.clear_streak(a.key_scope());
                quota.clear_streak(a.conn_scope());
            }
            Decision::Return
        }
        OutcomeClass::RateLimited => {
            quota.lock_for(
                a.key_model_scope(),
                o.retry_after_ms.unwrap_or(RATE_LIMIT_LOCK_MS),
                class,
            );
            Decision::Next
        }
        OutcomeClass::QuotaExhausted => {
            let now = quota.now_ms();
            let until = match o.retry_after_ms {
                Some(ms) => now.saturating_add(ms),
                None if o.daily => next_midnight_utc_ms(now),
                None => now.saturating_add(QUOTA_LOCK_MS),
            };
            quota.lock_until(a.key_model_scope(), until, class);
            Decision::Next
        }
        OutcomeClass::Auth => {
            if quota.fail(a.key_scope()) >= 2 {
                quota.lock_for(a.key_scope(), AUTH_INVALID_MS, "invalid");
            } else {
                quota.lock_for(a.key_scope(), AUTH_COOL_MS, class);
            }
            Decision::Next
        }
        OutcomeClass::ContextLength => Decision::NextTarget,
        OutcomeClass::BadRequest => Decision::Return,
        OutcomeClass::Server | OutcomeClass::Timeout | OutcomeClass::Network => {
            if let Some(ms) = server_cool_ms(quota.fail(a.conn_scope())) {
                quota.lock_for(a.conn_scope(), ms, class);
            }
            Decision::NextConnection
        }
    }
}
