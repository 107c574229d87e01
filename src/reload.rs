//! Hot reload of config, policy and TLS certificate, under traffic.
//!
//! A reload re-reads everything, skips what is unchanged (content hashes), validates what
//! changed — config parse, fresh engine, compile, hook checks, `init()`, the policy's
//! fixtures — and only then swaps, atomically. A broken edit is rejected with
//! `file:line:col` in the log and `keyway_policy_reloads_total{result="error"}`; the last
//! good config and policy keep serving. In-flight requests finish on the snapshot they
//! started with. Triggers: file events (debounced, on directories, so editors'
//! rename-over saves and Kubernetes ConfigMap `..data` swaps are seen), SIGHUP, and
//! `POST /admin/reload`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::{EventKind, RecursiveMode, Watcher};
use serde::Serialize;
use tokio::sync::{broadcast, mpsc};

use crate::config::{self, Config};
use crate::metrics as m;
use crate::policy::{self, fixtures, Policy};
use crate::runtime::Runtime;
use crate::server::tls::CertStore;

/// Quiet time after the last file event before reloading: editors write in bursts.
pub const DEBOUNCE: Duration = Duration::from_millis(50);
/// A reload starts at most this long after the first event of a burst, however busy the
/// files stay.
pub const DEBOUNCE_MAX: Duration = Duration::from_millis(250);

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub trigger: String,
    /// `ok` (something changed and was applied), `unchanged`, or `error`.
    pub result: &'static str,
    /// What was applied: `config`, `policy`, `tls`.
    pub applied: Vec<&'static str>,
    pub errors: Vec<String>,
    /// Changed settings that take effect only after a restart.
    pub restart_required: Vec<String>,
    pub policy_hash: String,
    pub took_ms: f64,
}

#[derive(Debug, Default, Clone)]
struct Seen {
    config: String,
    policy: String,
    tls: Option<String>,
    /// The inputs (config, policy and TLS hashes) of the last rejected reload: file events
    /// that leave them unchanged are not validated or logged again.
    rejected: Option<String>,
}

pub struct Reloader {
    runtime: Arc<Runtime>,
    config_path: PathBuf,
    certs: Option<Arc<CertStore>>,
    seen: Mutex<Seen>,
    events: broadcast::Sender<ReloadReport>,
}

fn hash(bytes: &[u8]) -> String {
    crate::digest::short_hex(bytes, 12)
}

fn tls_hash(config: &Config) -> Option<String> {
    let files = config.server.tls.as_ref()?;
    let mut bytes = std::fs::read(&files.cert).unwrap_or_default();
    bytes.extend(std::fs::read(&files.key).unwrap_or_default());
    Some(hash(&bytes))
}

/// The policy text plus its fixtures: a fixture edit re-validates too.
fn policy_hash(config: &Config, text: &str) -> String {
    let mut bytes = text.as_bytes().to_vec();
    if let Some(dir) = &config.policy.dir {
        for f in fixtures::fixture_inputs(dir) {
            bytes.extend(std::fs::read(f).unwrap_or_default());
        }
    }
    hash(&bytes)
}

impl Reloader {
    /// `config_path` is the file the running config came from.
    pub fn new(runtime: Arc<Runtime>, config_path: PathBuf, certs: Option<Arc<CertStore>>) -> Self {
        let snap = runtime.snapshot();
        let seen = Seen {
            config: std::fs::read(&config_path)
                .map(|b| hash(&b))
                .unwrap_or_default(),
            policy: policy::read_source(&snap.config.policy)
                .map(|(_, t)| policy_hash(&snap.config, &t))
                .unwrap_or_default(),
            tls: tls_hash(&snap.config),
            rejected: None,
        };
        Self {
            runtime,
            config_path,
            certs,
            seen: Mutex::new(seen),
            events: broadcast::channel(64).0,
        }
    }

    /// Every reload's report, as it happens.
    pub fn subscribe(&self) -> broadcast::Receiver<ReloadReport> {
        self.events.subscribe()
    }

    /// Re-reads config, policy and TLS files and applies what changed and is valid.
    /// Blocking (file reads, script compilation): call from a blocking context.
    pub fn reload(&self, trigger: &str) -> ReloadReport {
        let started = Instant::now();
        // One reload at a time; the lock is never held across an await.
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.runtime.snapshot();
        let mut errors = Vec::new();
        let mut applied = Vec::new();
        let mut restart_required = Vec::new();

        let mut parsed = None;
        let mut config_hash = seen.config.clone();
        match std::fs::read(&self.config_path) {
            Err(e) => errors.push(format!("{}: cannot read: {e}", self.config_path.display())),
            Ok(bytes) => {
                config_hash = hash(&bytes);
                if config_hash != seen.config {
                    let text = String::from_utf8_lossy(&bytes);
                    parsed = Some(config::parse(&self.config_path, &text).map(Arc::new));
                }
            }
        }
        let new_config = parsed.as_ref().and_then(|p| p.as_ref().ok().cloned());
        let target_config = new_config.clone().unwrap_or_else(|| current.config.clone());
        let source = policy::read_source(&target_config.policy);
        let p_hash = match &source {
            Ok((_, text)) => policy_hash(&target_config, text),
            Err(_) => String::new(),
        };
        let tls_now = tls_hash(&target_config);
        let inputs = format!(
            "{config_hash}:{p_hash}:{}",
            tls_now.as_deref().unwrap_or("")
        );
        if trigger == "watch" && seen.rejected.as_deref() == Some(inputs.as_str()) {
            // Still the edit that was rejected (and logged) before: nothing new to say.
            let report = ReloadReport {
                trigger: trigger.to_string(),
                result: "unchanged",
                applied: Vec::new(),
                errors: Vec::new(),
                restart_required: Vec::new(),
                policy_hash: current.policy.hash.clone(),
                took_ms: started.elapsed().as_secs_f64() * 1000.0,
            };
            drop(seen);
            tracing::debug!("reload: the rejected edit is unchanged");
            let _ = self.events.send(report.clone());
            return report;
        }
        if let Some(Err(e)) = parsed {
            errors.push(e.to_string());
        }
        let mut new_policy = None;
        if errors.is_empty() {
            match source {
                Err(e) => errors.push(e.to_string()),
                Ok((source, text)) => {
                    if new_config.is_some() || p_hash != seen.policy {
                        match self.validate_policy(&target_config, source, &text) {
                            Ok(p) => new_policy = Some(Arc::new(p)),
                            Err(mut e) => errors.append(&mut e),
                        }
                    }
                }
            }
        }
        if errors.is_empty() {
            if let (Some(cfg), Some(p)) = (&new_config, &new_policy) {
                restart_required = restart_only_changes(&current.config, cfg);
                self.runtime.install_config(cfg.clone(), p.clone());
                prune_removed_scopes(&self.runtime, cfg);
                applied.extend(["config", "policy"]);
            } else if let Some(p) = &new_policy {
                self.runtime.install_policy(p.clone());
                applied.push("policy");
            }
            seen.config = config_hash;
            seen.policy = p_hash;
        }
        // TLS material reloads on its own: a bad certificate never blocks a policy fix.
        if let (Some(store), Some(files)) = (&self.certs, &target_config.server.tls) {
            let h = tls_now;
            if h != seen.tls {
                match store.reload(files) {
                    Ok(()) => {
                        seen.tls = h;
                        applied.push("tls");
                        metrics::counter!(m::TLS_RELOADS, "result" => "ok").increment(1);
                    }
                    Err(e) => {
                        errors.push(e.to_string());
                        metrics::counter!(m::TLS_RELOADS, "result" => "error").increment(1);
                    }
                }
            }
        }
        seen.rejected = (!errors.is_empty()).then_some(inputs);
        let result = if !errors.is_empty() {
            "error"
        } else if applied.is_empty() {
            "unchanged"
        } else {
            "ok"
        };
        let report = ReloadReport {
            trigger: trigger.to_string(),
            result,
            applied,
            errors,
            restart_required,
            policy_hash: self.runtime.snapshot().policy.hash.clone(),
            took_ms: started.elapsed().as_secs_f64() * 1000.0,
        };
        drop(seen);
        self.log(&report);
        let _ = self.events.send(report.clone());
        report
    }

    fn validate_policy(
        &self,
        config: &Config,
        source: Arc<str>,
        text: &str,
    ) -> Result<Policy, Vec<String>> {
        let policy = Policy::compile(source.clone(), text, config, self.runtime.quota.clone())
            .map_err(|e| vec![e.to_string()])?;
        if let Some(dir) = &config.policy.dir {
            let report = fixtures::run(config, &source, text, dir);
            if !report.failures.is_empty() {
                return Err(report
                    .failures
                    .into_iter()
                    .map(|f| format!("policy fixture failed: {f}"))
                    .collect());
            }
        }
        Ok(policy)
    }

    fn log(&self, r: &ReloadReport) {
        metrics::counter!(m::POLICY_RELOADS, "result" => r.result, "trigger" => r.trigger.clone())
            .increment(1);
        match r.result {
            "error" => {
                for e in &r.errors {
                    tracing::error!(trigger = %r.trigger, "reload rejected, the last good config and policy keep serving: {e}");
                }
            }
            "ok" => {
                metrics::gauge!(m::POLICY_LAST_RELOAD)
                    .set(self.runtime.quota.now_ms() as f64 / 1000.0);
                tracing::info!(trigger = %r.trigger, applied = ?r.applied, policy = %r.policy_hash, took_ms = r.took_ms, "reloaded");
            }
            _ => tracing::debug!(trigger = %r.trigger, "reload: nothing changed"),
        }
        for s in &r.restart_required {
            tracing::warn!("{s} changed in the config; this takes effect only after a restart");
        }
    }

    /// Directories to watch: the config file's, the policy dir, the TLS files'.
    fn watch_dirs(&self) -> HashSet<PathBuf> {
        let snap = self.runtime.snapshot();
        let parent = |p: &Path| {
            let d = p.parent().map(Path::to_path_buf).unwrap_or_default();
            if d.as_os_str().is_empty() {
                PathBuf::from(".")
            } else {
                d
            }
        };
        let mut dirs = HashSet::new();
        dirs.insert(parent(&self.config_path));
        if let Some(d) = &snap.config.policy.dir {
            dirs.insert(d.clone());
            let tests = d.join("tests");
            if tests.is_dir() {
                dirs.insert(tests);
            }
        }
        if let Some(t) = &snap.config.server.tls {
            dirs.insert(parent(&t.cert));
            dirs.insert(parent(&t.key));
        }
        dirs
    }

    /// The file names in the watched directories that Keyway reads.
    fn relevant_files(&self) -> RelevantFiles {
        let snap = self.runtime.snapshot();
        let mut names = HashSet::new();
        let mut add = |p: &Path| {
            if let Some(n) = p.file_name() {
                names.insert(n.to_os_string());
            }
        };
        add(&self.config_path);
        if let Some(t) = &snap.config.server.tls {
            add(&t.cert);
            add(&t.key);
        }
        RelevantFiles { names }
    }

    /// Watches the relevant directories and reloads after each burst of changes to the
    /// files Keyway reads (other files in those directories, such as a log, are ignored).
    /// The watch stops when the returned guard is dropped.
    pub fn watch(self: &Arc<Self>) -> Result<WatchGuard, notify::Error> {
        let (tx, mut rx) = mpsc::unbounded_channel::<()>();
        let relevant = Arc::new(Mutex::new(self.relevant_files()));
        let filter = relevant.clone();
        let mut watcher =
            notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                // Reads (including the reloader's own) are access events: not a change.
                let Ok(ev) = res else { return };
                if matches!(ev.kind, EventKind::Access(_)) {
                    return;
                }
                let files = filter.lock().unwrap_or_else(|p| p.into_inner());
                if ev.paths.iter().any(|p| files.matches(p)) {
                    let _ = tx.send(());
                }
            })?;
        let mut watched = HashSet::new();
        for dir in self.watch_dirs() {
            watcher.watch(&dir, RecursiveMode::NonRecursive)?;
            watched.insert(dir);
        }
        let this = self.clone();
        let task = tokio::spawn(async move {
            while rx.recv().await.is_some() {
                // Wait for a quiet spell, but never longer than DEBOUNCE_MAX in all.
                let latest = tokio::time::Instant::now() + DEBOUNCE_MAX;
                loop {
                    let quiet = (tokio::time::Instant::now() + DEBOUNCE).min(latest);
                    match tokio::time::timeout_at(quiet, rx.recv()).await {
                        Ok(Some(())) => continue,
                        Ok(None) => return,
                        Err(_) => break,
                    }
                }
                let r = this.clone();
                if tokio::task::spawn_blocking(move || r.reload("watch"))
                    .await
                    .is_err()
                {
                    tracing::error!("reload task panicked");
                }
                // A config change may name new files and directories (policy, certificates).
                *relevant.lock().unwrap_or_else(|p| p.into_inner()) = this.relevant_files();
                for dir in this.watch_dirs() {
                    if !watched.contains(&dir)
                        && watcher.watch(&dir, RecursiveMode::NonRecursive).is_ok()
                    {
                        watched.insert(dir);
                    }
                }
            }
        });
        Ok(WatchGuard { task })
    }
}

/// Which file events matter: the config file and TLS files by name, policy scripts
/// (`*.rhai`), fixtures (`*.toml` in a `tests` directory), and Kubernetes ConfigMap swaps
/// (`..data`, `..2030_01_01_…`), which replace files through a renamed symlink.
struct RelevantFiles {
    names: HashSet<std::ffi::OsString>,
}

impl RelevantFiles {
    fn matches(&self, path: &Path) -> bool {
        let Some(name) = path.file_name() else {
            return false;
        };
        if self.names.contains(name) || name.as_encoded_bytes().starts_with(b"..") {
            return true;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("rhai") => true,
            Some("toml") => path
                .parent()
                .and_then(Path::file_name)
                .is_some_and(|d| d == "tests"),
            _ => false,
        }
    }
}

/// Keeps a file watch alive; dropping it stops watching.
pub struct WatchGuard {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Settings that a running Keyway cannot change in place.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let mut check = |name: &str, changed: bool| {
        if changed {
            out.push(name.to_string());
        }
    };
    check("server.listen", old.server.listen != new.server.listen);
    check(
        "server.tls (enabling or disabling)",
        old.server.tls.is_some() != new.server.tls.is_some(),
    );
    check(
        "admin.listen",
        old.admin.as_ref().map(|a| a.listen) != new.admin.as_ref().map(|a| a.listen),
    );
    check(
        "server.max_connections",
        old.server.max_connections != new.server.max_connections,
    );
    check("server.workers", old.server.workers != new.server.workers);
    check(
        "server.max_header_bytes",
        old.server.max_header_bytes != new.server.max_header_bytes,
    );
    let (a, b) = (&old.timeouts, &new.timeouts);
    check("timeouts.idle", a.idle != b.idle);
    check("timeouts.tls_handshake", a.tls_handshake != b.tls_handshake);
    check(
        "timeouts.request_header",
        a.request_header != b.request_header,
    );
    check(
        "timeouts.upstream_connect",
        a.upstream_connect != b.upstream_connect,
    );
    check(
        "timeouts.shutdown_drain",
        a.shutdown_drain != b.shutdown_drain,
    );
    check("state", old.state.signature() != new.state.signature());
    out
}

/// Drops locks and streaks of keys, connections and providers that no longer exist, so a
/// key removed and later re-added starts clean. Scopes of a script's own stay.
fn prune_removed_scopes(runtime: &Runtime, config: &Config) {
    let mut keys = HashSet::new();
    let mut conns = HashSet::new();
    let mut providers = HashSet::new();
    for p in &config.providers {
        providers.insert(p.id.clone());
        for c in &p.connections {
            conns.insert(format!("{}/{}", p.id, c.id));
            for k in &c.keys {
                keys.insert(format!("{}/{}/{}", p.id, c.id, k.id));
            }
        }
    }
    runtime.quota.retain_scopes(|scope| {
        if let Some(rest) = scope.strip_prefix("key:") {
            keys.contains(rest.split('@').next().unwrap_or(rest))
        } else if let Some(rest) = scope.strip_prefix("conn:") {
            conns.contains(rest)
        } else if let Some(rest) = scope.strip_prefix("model:") {
            providers.contains(rest.split('/').next().unwrap_or(rest))
        } else {
            true
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_files_keyway_reads_are_relevant() {
        let files = RelevantFiles {
            names: ["keyway.toml", "cert.pem", "key.pem"]
                .into_iter()
                .map(Into::into)
                .collect(),
        };
        for yes in [
            "/etc/keyway/keyway.toml",
            "/etc/keyway/cert.pem",
            "/etc/keyway/policies/main.rhai",
            "/etc/keyway/policies/tests/default.toml",
            "/etc/keyway/..data",
            "/etc/keyway/..2030_01_01_00_00_00.000000001",
        ] {
            assert!(files.matches(Path::new(yes)), "{yes}");
        }
        for no in [
            "/etc/keyway/keyway.log",
            "/etc/keyway/notes.txt",
            "/etc/keyway/other.toml",
            "/etc/keyway/.keyway.toml.swp",
            "/etc/keyway/keyway.toml~",
        ] {
            assert!(!files.matches(Path::new(no)), "{no}");
        }
    }
}
