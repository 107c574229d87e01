//! Metric names in one place, their descriptions, and the Prometheus recorder. All names
//! are prefixed `keyway_`. Labels never carry secrets (keys appear as configured key ids)
//! or unbounded client input (model names outside the config are reported as `other`).
//! The metrics the request path updates are kept per serving thread ([`sharded`]) and
//! summed into the recorder by [`render`].

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub mod sharded;
pub use sharded::{claim_thread_slot, counter, gauge, histogram, ThreadSum};

/// Client requests, by `endpoint`, `model`, `status`.
pub const REQUESTS: &str = "keyway_requests_total";
/// Upstream attempts, by `provider`, `connection`, `outcome` (class).
pub const ATTEMPTS: &str = "keyway_attempts_total";
/// Attempts after which the loop moved on, by `provider`, `outcome`.
pub const FALLBACKS: &str = "keyway_fallbacks_total";
/// Whole request, until the last body byte, by `endpoint`.
pub const REQUEST_DURATION: &str = "keyway_request_duration_seconds";
/// Upstream time to first byte (send → first body byte), by `provider`.
pub const UPSTREAM_TTFB: &str = "keyway_upstream_ttfb_seconds";
/// Keyway's own time per request: until response headers, minus time waiting on upstreams.
pub const OVERHEAD: &str = "keyway_overhead_seconds";
/// Streamed responses, first byte to last, by `provider`.
pub const STREAM_DURATION: &str = "keyway_stream_duration_seconds";
pub const OPEN_STREAMS: &str = "keyway_open_streams";
pub const IN_FLIGHT: &str = "keyway_inflight_requests";
/// Tokens from `usage` (JSON and SSE), by `provider`, `model`, `kind` (prompt|completion).
pub const TOKENS: &str = "keyway_tokens_total";
/// Keys chosen for attempts, by `provider`, `connection`, `key` (configured id).
pub const KEY_SELECTIONS: &str = "keyway_key_selections_total";
/// Locks placed by policies, by `scope` (without the model part) and `reason`.
pub const LOCK_EVENTS: &str = "keyway_lock_events_total";
/// 1 if a key is usable now, 0 if locked, by `provider`, `connection`, `key`.
pub const KEY_HEALTH: &str = "keyway_key_healthy";
/// Policy hook calls, by `hook`.
pub const POLICY_EVALUATIONS: &str = "keyway_policy_evaluations_total";
/// Failed policy hook calls (errors, limits, deadlines; not `throw`), by `hook`.
pub const POLICY_ERRORS: &str = "keyway_policy_errors_total";
/// Time in one policy hook call, by `hook`.
pub const POLICY_EVAL_TIME: &str = "keyway_policy_evaluation_seconds";
/// Policy and config reloads, by `result` (`ok`, `error`, `unchanged`) and `trigger`.
pub const POLICY_RELOADS: &str = "keyway_policy_reloads_total";
/// Unix time (seconds) of the last successful reload.
pub const POLICY_LAST_RELOAD: &str = "keyway_policy_last_reload_timestamp_seconds";
/// TLS certificate reloads, by `result`.
pub const TLS_RELOADS: &str = "keyway_tls_reloads_total";
/// Open client connections, by `listener` (`proxy`, `admin`).
pub const CONNECTIONS: &str = "keyway_connections";
/// Client connections Keyway closed or refused, by `listener` and `reason` (`no_request`,
/// `idle`, `evicted`, `refused`, `shutdown`).
pub const CONNECTIONS_CLOSED: &str = "keyway_connections_closed_total";
/// Failed accepts (e.g. out of file descriptors), by `listener`.
pub const ACCEPT_ERRORS: &str = "keyway_accept_errors_total";
/// Requests whose client left before the response headers (logged with status 499).
pub const CLIENT_ABORTS: &str = "keyway_client_aborts_total";
/// Relayed streams Keyway ended itself, by `reason` (`idle`, `broken`, `event_too_large`).
/// New upstream connections (TCP, plus TLS where the base URL is https). In steady state
/// nearly every request reuses a pooled connection.
pub const UPSTREAM_CONNECTS: &str = "keyway_upstream_connects_total";
/// 1 while the shared-state backend (Redis) is connected and in sync.
pub const STATE_BACKEND_UP: &str = "keyway_state_backend_up";
/// Seconds since the last successful sync with the shared-state backend.
pub const STATE_SYNC_LAG: &str = "keyway_state_sync_lag_seconds";
/// Full resyncs of the local mirror, by cause (reconnect, gap, reseed).
pub const STATE_RESYNCS: &str = "keyway_state_resyncs_total";
/// Changes waiting to be written to the shared-state backend.
pub const STATE_OUTBOX: &str = "keyway_state_outbox_size";
/// Shared-state backend operations, by op and result.
pub const STATE_OPS: &str = "keyway_state_ops_total";
/// Changes received from other replicas, by kind.
pub const STATE_EVENTS_RECEIVED: &str = "keyway_state_events_received_total";
pub const STREAMS_CUT: &str = "keyway_streams_cut_total";

/// Buckets for fast paths: 10 µs to 1 s.
const FINE: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 1.0,
];
/// Buckets for upstream-bound times: 5 ms to 10 min.
const SLOW: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Handles for the per-request metrics that have no per-request labels, registered once
/// (the macros would look each up in the registry on every request).
pub struct RequestHandles {
    pub in_flight: metrics::Gauge,
    pub open_streams: metrics::Gauge,
    pub overhead: metrics::Histogram,
    /// Request duration by endpoint: chat.completions, completions, embeddings, messages, models, other.
    pub duration: [metrics::Histogram; 6],
}

pub const ENDPOINTS: [&str; 6] = [
    "chat.completions",
    "completions",
    "embeddings",
    "messages",
    "models",
    "other",
];

static REQUEST: OnceLock<RequestHandles> = OnceLock::new();

/// The per-request handles (per-thread slots: see [`sharded`]).
pub fn request() -> &'static RequestHandles {
    REQUEST.get_or_init(|| RequestHandles {
        in_flight: gauge(IN_FLIGHT, &[]),
        open_streams: gauge(OPEN_STREAMS, &[]),
        overhead: histogram(OVERHEAD, &[]),
        duration: ENDPOINTS.map(|e| histogram(REQUEST_DURATION, &[("endpoint", e)])),
    })
}

/// Installs the Prometheus recorder (once per process) and returns its handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(OVERHEAD.into()), FINE)
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(POLICY_EVAL_TIME.into()), FINE)
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), SLOW)
                })
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(UPSTREAM_TTFB.into()), SLOW))
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(STREAM_DURATION.into()), SLOW))
                .expect("bucket lists are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed; /metrics shows Keyway's own only"
                );
            }
            describe();
            // The per-request handles exist from the start (shown at zero).
            let _ = request();
            handle
        })
        .clone()
}

/// The Prometheus text of every metric, the per-thread ones summed first.
pub fn render(handle: &PrometheusHandle) -> String {
    sharded::sync();
    handle.render()
}

/// Runs the exporter's periodic upkeep (histogram compaction) until the process ends.
pub fn spawn_upkeep(handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            handle.run_upkeep();
        }
    })
}

fn describe() {
    describe_counter!(REQUESTS, "Client requests by endpoint, model and status");
    describe_counter!(
        ATTEMPTS,
        "Upstream attempts by provider, connection and outcome class"
    );
    describe_counter!(
        FALLBACKS,
        "Attempts after which Keyway moved on to another key or candidate"
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Request duration until the last body byte"
    );
    describe_histogram!(
        UPSTREAM_TTFB,
        Unit::Seconds,
        "Upstream time to first body byte"
    );
    describe_histogram!(
        OVERHEAD,
        Unit::Seconds,
        "Keyway's own time per request (total minus upstream wait)"
    );
    describe_histogram!(STREAM_DURATION, Unit::Seconds, "Streamed response duration");
    describe_counter!(
        UPSTREAM_CONNECTS,
        "New upstream connections opened (pooled connections are reused)"
    );
    describe_gauge!(
        STATE_BACKEND_UP,
        "1 while the shared-state backend is connected and in sync"
    );
    describe_gauge!(
        STATE_SYNC_LAG,
        Unit::Seconds,
        "Time since the last successful sync with the shared-state backend"
    );
    describe_counter!(STATE_RESYNCS, "Full resyncs of the local state mirror");
    describe_gauge!(STATE_OUTBOX, "Changes waiting for the shared-state backend");
    describe_counter!(
        STATE_OPS,
        "Shared-state backend operations by op and result"
    );
    describe_counter!(
        STATE_EVENTS_RECEIVED,
        "Lock, unlock and streak changes received from other replicas"
    );
    describe_gauge!(OPEN_STREAMS, "Streams being relayed now");
    describe_gauge!(IN_FLIGHT, "Requests in flight now");
    describe_counter!(
        TOKENS,
        "Tokens reported in upstream usage, by provider, model and kind"
    );
    describe_counter!(
        KEY_SELECTIONS,
        "Keys selected for attempts, by configured key id"
    );
    describe_counter!(LOCK_EVENTS, "Locks placed, by scope and reason");
    describe_gauge!(KEY_HEALTH, "1 if a key is usable now, 0 if locked");
    describe_counter!(POLICY_EVALUATIONS, "Policy hook calls");
    describe_counter!(
        POLICY_ERRORS,
        "Policy hook calls that failed (errors, limits, deadlines)"
    );
    describe_histogram!(
        POLICY_EVAL_TIME,
        Unit::Seconds,
        "Time in one policy hook call"
    );
    describe_counter!(
        POLICY_RELOADS,
        "Config and policy reloads by result and trigger"
    );
    describe_gauge!(
        POLICY_LAST_RELOAD,
        Unit::Seconds,
        "Unix time of the last successful reload"
    );
    describe_counter!(TLS_RELOADS, "TLS certificate reloads by result");
    describe_gauge!(CONNECTIONS, "Open client connections by listener");
    describe_counter!(
        CONNECTIONS_CLOSED,
        "Client connections closed or refused by Keyway, by listener and reason"
    );
    describe_counter!(ACCEPT_ERRORS, "Failed accepts by listener");
    describe_counter!(
        CLIENT_ABORTS,
        "Requests whose client left before the response headers"
    );
    describe_counter!(STREAMS_CUT, "Relayed streams ended by Keyway, by reason");
}
