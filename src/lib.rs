//! Keyway: a TLS-terminating AI API router.
//!
//! A request flows through the modules in this order:
//! [`server`] accepts (TLS, HTTP/1.1 and HTTP/2) → [`proxy`] authenticates the client,
//! reads and parses the body (`model`, `stream`) → the [`policy`]'s `route` hook orders
//! candidate targets ([`routing`]: aliases, wildcards by specificity) → the attempt loop
//! asks `select_key` for a key ([`keys`] rotators skip keys [`quota`] has locked) →
//! [`upstream`] forwards (auth injected, bytes untouched but for `model`) → the response
//! is classified ([`outcome`]) and `on_outcome` returns it or moves on → [`proxy`] relays
//! it, streaming SSE event by event. [`config`] turns `keyway.toml` into the validated
//! [`config::Config`]; [`runtime`] holds the long-lived state and the current snapshot.

pub mod admin;
pub mod allocator;
pub mod cli;
pub mod config;
pub mod deadline;
pub mod digest;
pub mod format;
pub mod keys;
pub mod logfmt;
pub mod metrics;
pub mod outcome;
pub mod policy;
pub mod proxy;
pub mod quota;
pub mod reload;
pub mod routing;
pub mod runtime;
pub mod server;
pub mod state;
pub mod translate;
pub mod upstream;

/// A hash map for lookups on the request path whose keys come from config (provider ids,
/// model labels), not from clients: foldhash instead of SipHash, several times cheaper on
/// short strings. Maps keyed by client input keep the standard hasher.
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
/// The set counterpart of [`FastMap`].
pub type FastSet<T> = std::collections::HashSet<T, foldhash::fast::RandomState>;

/// Installs the process-wide rustls crypto provider (ring). Call once, before any TLS use;
/// calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
