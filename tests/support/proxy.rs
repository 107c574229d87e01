//! An in-process Keyway for tests: written as a real config file (secrets as `file:`
//! references in a temp dir), bound to 127.0.0.1:0, served over real sockets.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use tempfile::TempDir;
use tokio::sync::oneshot;

use super::certs::TestCert;

struct ProviderSpec {
    id: String,
    kind: String,
    base_url: String,
    models: Vec<String>,
    settings: Vec<(String, String)>,
    connections: Vec<(String, Vec<String>)>,
}

#[derive(Default)]
pub struct TestProxyBuilder {
    clock: Option<Arc<keyway::quota::ManualClock>>,
    policy: Option<String>,
    configmap: bool,
    watch: bool,
    admin: Option<(Option<String>, bool)>,
    policy_settings: Vec<(String, String)>,
    providers: Vec<ProviderSpec>,
    clients: Vec<(String, String)>,
    tls: bool,
    timeouts: Vec<(String, String)>,
    server: Vec<(String, String)>,
    max_body: Option<u64>,
    extra: String,
    state: Option<(String, String)>,
}

impl TestProxyBuilder {
    /// A provider with one connection `main` holding `keys` (secret values).
    pub fn provider(
        mut self,
        id: &str,
        kind: &str,
        base_url: &str,
        models: &[&str],
        keys: &[&str],
    ) -> Self {
        self.providers.push(ProviderSpec {
            id: id.into(),
            kind: kind.into(),
            base_url: base_url.into(),
            models: models.iter().map(|s| s.to_string()).collect(),
            settings: Vec::new(),
            connections: vec![("main".into(), keys.iter().map(|s| s.to_string()).collect())],
        });
        self
    }

    /// `[state] backend = "redis"` on `url` (written as a secret file), plus `settings`
    /// (TOML lines such as `namespace = "t1"`).
    pub fn redis_state(mut self, url: &str, settings: &str) -> Self {
        self.state = Some((url.to_string(), settings.to_string()));
        self
    }

    /// Sets `name = value` (value is TOML) on the provider added last.
    pub fn provider_setting(mut self, name: &str, value: &str) -> Self {
        let p = self.providers.last_mut().expect("add a provider first");
        p.settings.push((name.into(), value.into()));
        self
    }

    /// TOML appended to the config as written (e.g. `[[capability]]` tables).
    pub fn extra(mut self, toml: &str) -> Self {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// Adds a connection to the provider added last.
    pub fn connection(mut self, id: &str, keys: &[&str]) -> Self {
        let p = self.providers.last_mut().expect("add a provider first");
        p.connections
            .push((id.into(), keys.iter().map(|s| s.to_string()).collect()));
        self
    }

    /// Uses a manual clock for quota windows.
    pub fn clock(mut self, clock: Arc<keyway::quota::ManualClock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Writes `text` as `policies/main.rhai` and points the config at it.
    pub fn policy(mut self, text: &str) -> Self {
        self.policy = Some(text.to_string());
        self
    }

    /// Lays the policy out like a mounted Kubernetes ConfigMap: `policies/main.rhai` is a
    /// symlink to `..data/main.rhai`, and `..data` a symlink to a timestamped folder.
    pub fn policy_configmap(mut self, text: &str) -> Self {
        self.policy = Some(text.to_string());
        self.configmap = true;
        self
    }

    /// Serves the admin listener on 127.0.0.1:0 with this token (and optionally lets
    /// loopback clients in without one).
    pub fn admin(mut self, token: Option<&str>, allow_loopback_without_token: bool) -> Self {
        self.admin = Some((token.map(str::to_string), allow_loopback_without_token));
        self
    }

    /// Watches config, policy and certificate files and reloads on change.
    pub fn watch(mut self) -> Self {
        self.watch = true;
        self
    }

    /// Sets `[policy] name = value` (value is TOML).
    pub fn policy_setting(mut self, name: &str, value: &str) -> Self {
        self.policy_settings.push((name.into(), value.into()));
        self
    }

    pub fn client(mut self, name: &str, key: &str) -> Self {
        self.clients.push((name.into(), key.into()));
        self
    }

    pub fn tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Sets `[timeouts] name = "value"`.
    pub fn timeout(mut self, name: &str, value: &str) -> Self {
        self.timeouts.push((name.into(), value.into()));
        self
    }

    /// Sets `[server] name = value` (value is TOML).
    pub fn server(mut self, name: &str, value: &str) -> Self {
        self.server.push((name.into(), value.into()));
        self
    }

    pub fn max_body(mut self, bytes: u64) -> Self {
        self.max_body = Some(bytes);
        self
    }

    /// Writes the config and returns its text and the dir (for tests of `config` itself).
    pub fn write(&self) -> (TempDir, std::path::PathBuf, Option<TestCert>) {
        let dir = tempfile::tempdir().unwrap();
        let keydir = dir.path().join("keys");
        std::fs::create_dir_all(&keydir).unwrap();
        let mut toml = String::from("[server]\nlisten = \"127.0.0.1:0\"\n");
        if let Some(n) = self.max_body {
            writeln!(toml, "max_body_bytes = {n}").unwrap();
        }
        for (k, v) in &self.server {
            writeln!(toml, "{k} = {v}").unwrap();
        }
        let cert = self.tls.then(|| TestCert::generate(dir.path(), "server"));
        if let Some(c) = &cert {
            writeln!(
                toml,
                "tls = {{ cert = {:?}, key = {:?} }}",
                c.cert_path, c.key_path
            )
            .unwrap();
        }
        if !self.timeouts.is_empty() {
            toml.push_str("\n[timeouts]\n");
            for (k, v) in &self.timeouts {
                writeln!(toml, "{k} = {v:?}").unwrap();
            }
        }
        if self.policy.is_some() || !self.policy_settings.is_empty() {
            toml.push_str("\n[policy]\n");
            if let Some(text) = &self.policy {
                let pdir = dir.path().join("policies");
                std::fs::create_dir_all(&pdir).unwrap();
                if self.configmap {
                    configmap_swap(&pdir, "..2030_01_01_00_00_00.000000001", text);
                    std::os::unix::fs::symlink("..data/main.rhai", pdir.join("main.rhai")).unwrap();
                } else {
                    std::fs::write(pdir.join("main.rhai"), text).unwrap();
                }
                toml.push_str("dir = \"policies\"\n");
            }
            for (k, v) in &self.policy_settings {
                writeln!(toml, "{k} = {v}").unwrap();
            }
        }
        if let Some((token, loopback)) = &self.admin {
            toml.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
            if let Some(t) = token {
                std::fs::write(keydir.join("admin-token"), t).unwrap();
                toml.push_str("token = \"file:keys/admin-token\"\n");
            }
            writeln!(toml, "allow_loopback_without_token = {loopback}").unwrap();
        }
        toml.push_str("\n[auth]\n");
        if self.clients.is_empty() {
            toml.push_str("allow_unauthenticated = true\n");
        } else {
            toml.push_str("clients = [\n");
            for (name, key) in &self.clients {
                let file = format!("client-{name}");
                std::fs::write(keydir.join(&file), key).unwrap();
                writeln!(toml, "  {{ name = {name:?}, key = \"file:keys/{file}\" }},").unwrap();
            }
            toml.push_str("]\n");
        }
        for p in &self.providers {
            writeln!(
                toml,
                "\n[[provider]]\nid = {:?}\nkind = {:?}\nbase_url = {:?}\nmodels = {:?}",
                p.id, p.kind, p.base_url, p.models
            )
            .unwrap();
            for (k, v) in &p.settings {
                writeln!(toml, "{k} = {v}").unwrap();
            }
            for (cid, keys) in &p.connections {
                writeln!(toml, "\n[[provider.connection]]\nid = {cid:?}\nkeys = [").unwrap();
                for (i, key) in keys.iter().enumerate() {
                    let file = format!("{}-{cid}-{i}", p.id);
                    std::fs::write(keydir.join(&file), key).unwrap();
                    writeln!(toml, "  {{ id = \"k{i}\", key = \"file:keys/{file}\" }},").unwrap();
                }
                toml.push_str("]\n");
            }
        }
        if let Some((url, settings)) = &self.state {
            std::fs::write(keydir.join("redis-url"), url).unwrap();
            writeln!(
                toml,
                "\n[state]\nbackend = \"redis\"\nurl = \"file:keys/redis-url\"\n{settings}"
            )
            .unwrap();
        }
        toml.push('\n');
        toml.push_str(&self.extra);
        let path = dir.path().join("keyway.toml");
        std::fs::write(&path, toml).unwrap();
        (dir, path, cert)
    }

    pub async fn start(self) -> TestProxy {
        keyway::install_crypto_provider();
        let (dir, path, cert) = self.write();
        let config = Arc::new(keyway::config::load(&path).unwrap_or_else(|e| panic!("{e}")));
        // As `keyway run` does: the recorder first, so handles registered at load are live.
        let prometheus = self.admin.as_ref().map(|_| keyway::metrics::install());
        let server = match &self.clock {
            Some(c) => keyway::server::Server::bind_with_clock(config, c.clone()).await,
            None => keyway::server::Server::bind(config).await,
        }
        .unwrap_or_else(|e| panic!("{e}"));
        let addr = server.local_addr().unwrap();
        let reloader = Arc::new(server.reloader(&path));
        let watch = self.watch.then(|| reloader.watch().expect("watch files"));
        let admin_addr = match &self.admin {
            None => None,
            Some(_) => {
                let prometheus = prometheus.clone().expect("installed above");
                let admin = keyway::admin::AdminServer::bind(
                    "127.0.0.1:0".parse().unwrap(),
                    server.runtime().clone(),
                    reloader.clone(),
                    prometheus,
                )
                .await
                .unwrap();
                let addr = admin.local_addr().unwrap();
                tokio::spawn(admin.run(std::future::pending()));
                Some(addr)
            }
        };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        TestProxy {
            addr,
            admin_addr,
            reloader,
            _watch: watch,
            dir,
            cert,
            client_key: self.clients.first().map(|c| c.1.clone()),
            admin_token: self.admin.as_ref().and_then(|a| a.0.clone()),
            shutdown: Some(tx),
            task: Some(task),
        }
    }
}

/// A running Keyway.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub reloader: Arc<keyway::reload::Reloader>,
    _watch: Option<keyway::reload::WatchGuard>,
    pub dir: TempDir,
    pub cert: Option<TestCert>,
    pub client_key: Option<String>,
    /// The admin listener's bearer token, if it has one.
    pub admin_token: Option<String>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

impl TestProxy {
    pub fn builder() -> TestProxyBuilder {
        TestProxyBuilder::default()
    }

    pub fn url(&self, path: &str) -> String {
        let scheme = if self.cert.is_some() { "https" } else { "http" };
        format!("{scheme}://localhost:{}{path}", self.addr.port())
    }

    /// A client that trusts this proxy's certificate and resolves `localhost` to it.
    pub fn http_builder(&self) -> reqwest::ClientBuilder {
        let mut b = reqwest::Client::builder()
            .resolve("localhost", self.addr)
            .no_proxy();
        if let Some(c) = &self.cert {
            b = b
                .add_root_certificate(
                    reqwest::Certificate::from_pem(c.cert_pem.as_bytes()).unwrap(),
                )
                .tls_built_in_root_certs(false)
                .https_only(true);
        }
        b
    }

    pub fn http(&self) -> reqwest::Client {
        self.http_builder().build().unwrap()
    }

    /// `http://ADMIN/path`.
    pub fn admin_url(&self, path: &str) -> String {
        format!(
            "http://{}{path}",
            self.admin_addr.expect("started with .admin(..)")
        )
    }

    /// GET on the admin listener, with its token when it has one.
    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        let req = reqwest::Client::new().get(self.admin_url(path));
        match &self.admin_token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
        .send()
        .await
        .unwrap()
    }

    /// `/metrics` as Prometheus text.
    pub async fn metrics_text(&self) -> String {
        self.admin_get("/metrics").await.text().await.unwrap()
    }

    /// `/metrics` as `name{labels}` → value.
    pub async fn metrics(&self) -> std::collections::HashMap<String, f64> {
        self.metrics_text()
            .await
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// `/admin/state` as JSON.
    pub async fn admin_state(&self) -> serde_json::Value {
        self.admin_get("/admin/state").await.json().await.unwrap()
    }

    /// POST with the first configured client key.
    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        let req = self.http().post(self.url(path));
        match &self.client_key {
            Some(k) => req.bearer_auth(k),
            None => req,
        }
    }

    /// Signals shutdown and waits for the server to finish draining.
    pub async fn shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Signals shutdown without waiting.
    pub fn begin_shutdown(&mut self) -> tokio::task::JoinHandle<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.take().expect("already shut down")
    }
}

/// A Kubernetes-style atomic update of a ConfigMap mount at `dir`: write a new timestamped
/// folder, point `..data_tmp` at it, and rename that over `..data`.
pub fn configmap_swap(dir: &std::path::Path, stamp: &str, main_rhai: &str) {
    let data = dir.join(stamp);
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("main.rhai"), main_rhai).unwrap();
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

/// Waits (bounded) for a reload report that satisfies `want`.
pub async fn wait_reload(
    rx: &mut tokio::sync::broadcast::Receiver<keyway::reload::ReloadReport>,
    want: impl Fn(&keyway::reload::ReloadReport) -> bool,
) -> keyway::reload::ReloadReport {
    let wait = async {
        loop {
            match rx.recv().await {
                Ok(r) if want(&r) => return r,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => panic!("reload events closed: {e}"),
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), wait)
        .await
        .expect("no matching reload within 10 s")
}

/// Replaces a file atomically, as editors do (write a temp file, rename it over).
pub fn save_atomically(path: &std::path::Path, contents: impl AsRef<[u8]>) {
    let tmp = path.with_extension("swp-tmp");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
