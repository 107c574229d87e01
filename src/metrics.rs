//! Metric names, in one place. All are prefixed `keyway_`; labels never carry secrets
//! (keys appear as configured ids or fingerprints) or unbounded client input.

/// Policy and config reloads, by `result` (`ok`, `error`, `unchanged`) and `trigger`.
pub const POLICY_RELOADS: &str = "keyway_policy_reloads_total";
/// Unix time (seconds) of the last successful reload.
pub const POLICY_LAST_RELOAD: &str = "keyway_policy_last_reload_timestamp_seconds";
/// TLS certificate reloads, by `result`.
pub const TLS_RELOADS: &str = "keyway_tls_reloads_total";
