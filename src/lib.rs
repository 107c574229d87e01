//! Keyway: a TLS-terminating AI API router.
//!
//! A request flows through the modules in this order:
//! [`server`] accepts (TLS, HTTP/1.1 and HTTP/2) → [`proxy`] authenticates the client,
//! reads and parses the body (`model`, `stream`) → [`routing`] resolves the model to
//! provider/model targets → [`keys`] picks a key of the target's connection → [`upstream`]
//! forwards it (auth injected, bytes untouched but for `model`) → [`proxy`] relays the
//! response, streaming SSE frame by frame. [`config`] turns `keyway.toml` into the
//! validated [`config::Config`] everything else reads.

pub mod cli;
pub mod config;
pub mod format;
pub mod keys;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod upstream;

/// Installs the process-wide rustls crypto provider (ring). Call once, before any TLS use;
/// calling it again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
