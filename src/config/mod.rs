//! Configuration: the external TOML schema ([`file`]) is parsed and validated into the
//! internal [`Config`] that the rest of Keyway sees. Every error names file:line:col and
//! says what to fix; secrets are resolved here and only ever leave as fingerprints.

mod file;
pub mod secret;

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::Uri;

pub use secret::Secret;

use file::{FileConfig, KeyEntry, OnErrorName, ProviderKindName};

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file this was loaded from.
    pub path: PathBuf,
    pub server: ServerConfig,
    pub timeouts: Timeouts,
    pub admin: Option<AdminConfig>,
    pub auth: AuthConfig,
    pub policy: PolicyConfig,
    pub log: LogConfig,
    pub providers: Vec<Arc<Provider>>,
    /// The model capability table consulted by translated routes.
    pub capabilities: Arc<crate::translate::caps::CapabilityTable>,
    /// Where quota state lives: this process, or shared with other replicas on Redis.
    pub state: StateConfig,
}

/// `[state]`.
#[derive(Debug, Clone, Default)]
pub enum StateConfig {
    /// Locks, windows and streaks in this process only (the default).
    #[default]
    Memory,
    /// Shared with every replica on the same Redis / Valkey and namespace.
    Redis(RedisState),
}

impl StateConfig {
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Redis(_) => "redis",
        }
    }

    /// Compares settings without exposing secrets (the URL by its fingerprint).
    pub fn signature(&self) -> String {
        match self {
            Self::Memory => "memory".into(),
            Self::Redis(r) => format!(
                "redis {} {} {:?} {:?} {}",
                r.url.fingerprint(),
                r.namespace,
                r.sync_interval,
                r.timeout,
                r.required
            ),
        }
    }
}

#[derive(Debug, Clone)]
pub struct RedisState {
    /// `redis://` or `rediss://` URL; a secret (it may hold a password).
    pub url: Secret,
    pub namespace: String,
    /// How often window counters are pushed and fleet totals pulled.
    pub sync_interval: Duration,
    /// Limit for each Redis command (and 4× this for connecting).
    pub timeout: Duration,
    /// `/readyz` stays false until the first successful sync (afterwards an outage does
    /// not take the replica out of a load balancer: it keeps serving on local state).
    pub required: bool,
}

impl RedisState {
    /// The URL without its password, for logs and `/admin/state`.
    pub fn display_url(&self) -> String {
        redacted_url(self.url.expose(), self.url.fingerprint())
    }
}

/// `scheme://host:port/db` with any user info replaced by the secret's fingerprint.
fn redacted_url(url: &str, fingerprint: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return format!("(unparsable URL, fp {fingerprint})");
    };
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let path = path.split('?').next().unwrap_or("");
    match authority.rsplit_once('@') {
        Some((_, host)) => format!("{scheme}://{host}{path} (credentials fp {fingerprint})"),
        None => format!("{scheme}://{authority}{path}"),
    }
}

/// Logging: one structured line per request, plus events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub json: bool,
    /// A `RUST_LOG`-style filter; `RUST_LOG` itself wins when set.
    pub level: String,
}

/// How policy scripts are loaded and run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// Directory holding `main.rhai`; `None` runs the built-in default policy.
    pub dir: Option<PathBuf>,
    pub on_error: OnError,
    /// Upstream attempts per request, across all candidates and keys.
    pub max_attempts: u32,
    /// Wall-clock limit of one hook call.
    pub call_timeout: Duration,
    /// Rhai operation limit of one hook call.
    pub max_operations: u64,
    /// Longest wait taken from an upstream's rate-limit hint (`Retry-After` and the like).
    pub max_retry_after: Duration,
    /// Longest wait taken from a quota-exhaustion hint.
    pub max_quota_wait: Duration,
}

/// What a failing policy call (script error, limit, deadline) leads to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Use the native default decision for that step.
    Default,
    /// Answer 500 with a clear message.
    Reject,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub tls: Option<TlsFiles>,
    /// Request bodies larger than this are answered 413.
    pub max_body_bytes: u64,
    /// Open client connections at once; at the cap the longest-idle one is closed to make
    /// room, and a new connection is refused only when every open one is busy.
    pub max_connections: usize,
    /// Request line and headers (HTTP/1.1) or header list (HTTP/2): 431 beyond.
    pub max_header_bytes: usize,
    /// Request target (path and query): 414 beyond.
    pub max_uri_bytes: usize,
    /// Largest SSE event held back while relaying a stream; beyond it the stream ends with
    /// the client's terminal error event.
    pub max_sse_event_bytes: usize,
    /// Serving threads: each runs its own single-threaded runtime, and a connection stays
    /// on the thread it was given (fewest open connections first).
    pub workers: usize,
}

/// Defaults and bounds of the `[server]` limits (README documents the same numbers).
pub mod limits {
    pub const MAX_BODY_BYTES: u64 = 32 * 1024 * 1024;
    /// Default `workers`: one serving thread per CPU the process may use.
    pub fn default_workers() -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
    /// Upper default for `max_connections`; lowered to fit the descriptor limit.
    pub const MAX_CONNECTIONS: usize = 10_000;
    pub const MAX_HEADER_BYTES: usize = 32 * 1024;
    /// hyper's smallest read buffer.
    pub const MIN_HEADER_BYTES: usize = 8 * 1024;
    pub const MAX_URI_BYTES: usize = 8 * 1024;
    pub const MAX_SSE_EVENT_BYTES: usize = 8 * 1024 * 1024;
    /// Descriptors kept for upstream connections, listeners, config and log files.
    pub const RESERVED_DESCRIPTORS: u64 = 64;

    /// The default connection cap for a process allowed `nofile` descriptors: every proxied
    /// request holds two (client and upstream), so at most half of what is left.
    pub fn default_max_connections(nofile: u64) -> usize {
        let fit = nofile.saturating_sub(RESERVED_DESCRIPTORS) / 2;
        usize::try_from(fit)
            .unwrap_or(usize::MAX)
            .clamp(16, MAX_CONNECTIONS)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Per-phase timeouts. There is deliberately no total stream timeout: long generations are
/// legitimate, so streams are bounded by `stream_idle` between chunks instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tls_handshake: Duration,
    pub request_header: Duration,
    pub request_body: Duration,
    pub upstream_connect: Duration,
    pub upstream_headers: Duration,
    pub stream_idle: Duration,
    pub shutdown_drain: Duration,
    /// A client connection with no request in flight (HTTP/2, and HTTP/1.1 beyond
    /// `request_header`) is closed this long after its last request ended.
    pub idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            tls_handshake: Duration::from_secs(10),
            request_header: Duration::from_secs(30),
            request_body: Duration::from_secs(60),
            upstream_connect: Duration::from_secs(10),
            upstream_headers: Duration::from_secs(300),
            stream_idle: Duration::from_secs(120),
            shutdown_drain: Duration::from_secs(30),
            idle: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Option<Secret>,
    pub allow_loopback_without_token: bool,
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub clients: Vec<ClientKey>,
    /// Set only when the config says `allow_unauthenticated = true` and lists no clients.
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone)]
pub struct ClientKey {
    pub name: String,
    pub key: Secret,
}

/// Which wire protocol a provider speaks; decides auth headers and which API formats it serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    OpenAi,
    Anthropic,
    OpenAiCompatible,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenAiCompatible => "openai-compatible",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug)]
pub struct Provider {
    pub id: String,
    pub kind: ProviderKind,
    pub base_url: BaseUrl,
    /// Bare model names this provider may serve.
    pub models: Vec<String>,
    pub anthropic_version: String,
    /// Pass the client's query string on to this provider (default true).
    pub forward_query: bool,
    /// API families served natively (by kind unless the config lists them).
    pub formats: crate::format::Formats,
    /// Requests in other families may be translated for this provider (default true).
    pub translate: bool,
    pub connections: Vec<Arc<Connection>>,
}

impl Provider {
    /// Whether this provider takes `format` without translation.
    pub fn speaks(&self, format: crate::format::ApiFormat) -> bool {
        self.formats.speaks(format.family())
    }

    /// A provider with one connection of one key, for unit tests.
    #[cfg(test)]
    pub fn for_tests(id: &str, kind: ProviderKind) -> Self {
        Provider {
            id: id.to_string(),
            kind,
            base_url: BaseUrl::new(
                Scheme::HTTP,
                Authority::from_static("127.0.0.1:9"),
                String::new(),
                http::HeaderValue::from_static("127.0.0.1:9"),
            ),
            models: Vec::new(),
            anthropic_version: "2023-06-01".into(),
            forward_query: true,
            formats: crate::format::Formats::for_kind(kind),
            translate: true,
            connections: Vec::new(),
        }
    }
}

/// An upstream base URL split for cheap request building: `https://api.openai.com/v1`.
#[derive(Debug, Clone)]
pub struct BaseUrl {
    // Private: `api_paths` is derived from them.
    scheme: Scheme,
    authority: Authority,
    /// Path prefix without a trailing slash (`/v1`), possibly empty.
    path: String,
    /// The `Host` header for this authority, built once.
    pub host: http::HeaderValue,
    /// Path and query of each API format's endpoint without a query, built once: the
    /// common request reuses one instead of formatting and parsing it.
    api_paths: Vec<(&'static str, http::uri::PathAndQuery)>,
}

impl BaseUrl {
    /// A base URL from its validated parts; each API format's endpoint path is parsed here,
    /// once (a path that would not parse is left to [`BaseUrl::join`] to build and report).
    pub fn new(
        scheme: Scheme,
        authority: Authority,
        path: String,
        host: http::HeaderValue,
    ) -> Self {
        let api_paths = crate::format::ApiFormat::ALL
            .iter()
            .filter_map(|f| {
                let api_path = f.upstream_path();
                let pq = http::uri::PathAndQuery::try_from(format!("{path}{api_path}")).ok()?;
                Some((api_path, pq))
            })
            .collect();
        Self {
            scheme,
            authority,
            path,
            host,
            api_paths,
        }
    }

    /// The path prefix without a trailing slash (`/v1`), possibly empty.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The full upstream URI for an API path such as `/chat/completions`, with a query.
    pub fn join(&self, api_path: &str, query: Option<&str>) -> Result<Uri, http::Error> {
        if query.is_none() {
            if let Some((_, pq)) = self.api_paths.iter().find(|(p, _)| *p == api_path) {
                let mut parts = http::uri::Parts::default();
                parts.scheme = Some(self.scheme.clone());
                parts.authority = Some(self.authority.clone());
                parts.path_and_query = Some(pq.clone());
                return Ok(Uri::from_parts(parts)?);
            }
        }
        // Sized once: `format!` would guess low and grow.
        let len = self.path.len() + api_path.len() + query.map_or(0, |q| q.len() + 1);
        let mut path_and_query = String::with_capacity(len);
        path_and_query.push_str(&self.path);
        path_and_query.push_str(api_path);
        if let Some(q) = query {
            path_and_query.push('?');
            path_and_query.push_str(q);
        }
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
    }
}

impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.path)
    }
}

/// A set of keys for one provider account: a primary key plus extra keys.
#[derive(Debug)]
pub struct Connection {
    pub provider: String,
    pub id: String,
    pub keys: Vec<ApiKey>,
    /// This connection's lock scope (`conn:provider/id`), named once.
    scope: String,
}

impl Connection {
    /// A connection of `keys`; names its lock scope and each key's once, here, so the
    /// request path never formats them.
    pub fn new(provider: String, id: String, mut keys: Vec<ApiKey>) -> Self {
        let mut conn = Connection {
            provider,
            id,
            keys: Vec::new(),
            scope: String::new(),
        };
        conn.scope = crate::keys::Scopes::connection(&conn);
        for k in &mut keys {
            k.scope = crate::keys::Scopes::key(&conn, k);
        }
        conn.keys = keys;
        conn
    }

    /// This connection's lock scope, `conn:<provider>/<connection>`.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// `provider/connection`, the name used in logs, traces and policy scopes.
    pub fn name(&self) -> String {
        format!("{}/{}", self.provider, self.id)
    }
}

#[derive(Debug, Clone)]
pub struct ApiKey {
    /// Configured id, or the env var / file name the key came from. Not secret.
    pub id: String,
    pub secret: Secret,
    pub weight: u32,
    /// The credential header's value as the provider's kind sends it (`Bearer …` or the
    /// bare key), built once at load and marked sensitive (never printed by `Debug`).
    pub auth: http::HeaderValue,
    /// The key's lock scope (`key:provider/connection/id`), named by [`Connection::new`].
    scope: String,
}

impl ApiKey {
    /// The key's lock scope, `key:<provider>/<connection>/<key>`.
    pub fn scope(&self) -> &str {
        debug_assert!(
            !self.scope.is_empty(),
            "a key's scope is named when its Connection is built (Connection::new)"
        );
        &self.scope
    }

    /// A key for a provider of `kind`; `None` when the secret cannot be an HTTP header value.
    pub fn new(id: String, secret: Secret, weight: u32, kind: ProviderKind) -> Option<Self> {
        let text = match kind {
            ProviderKind::Anthropic => secret.expose().to_string(),
            ProviderKind::OpenAi | ProviderKind::OpenAiCompatible => {
                format!("Bearer {}", secret.expose())
            }
        };
        let mut auth = http::HeaderValue::try_from(text).ok()?;
        auth.set_sensitive(true);
        Some(Self {
            id,
            secret,
            weight,
            auth,
            scope: String::new(),
        })
    }
}

/// A configuration error, already located and worded for the user.
#[derive(Debug, thiserror::Error)]
#[error("{location}: {message}")]
pub struct ConfigError {
    pub location: String,
    pub message: String,
}

/// The soft limit on open descriptors (Keyway raises it to the hard limit at start).
fn descriptor_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(1024, |(soft, _)| soft)
}

/// Reads and validates the config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        location: path.display().to_string(),
        message: format!("cannot read config file: {e}"),
    })?;
    parse(path, &text)
}

/// Validates config text; `path` is used for error locations and relative file references.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    parse_with(path, text, Secrets::Resolve)
}

/// How secret references are treated while validating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    /// Read each `env:` / `file:` reference (a running or checked config).
    Resolve,
    /// Check each reference's form only, and stand a placeholder in for its value: for the
    /// configs policy fixtures carry, which must load anywhere, without their secrets.
    Placeholder,
}

/// [`parse`] with a choice of how secrets are treated.
pub fn parse_with(path: &Path, text: &str, secrets: Secrets) -> Result<Config, ConfigError> {
    let src = Source { path, text };
    let raw: FileConfig = toml::from_str(text).map_err(|e| ConfigError {
        location: src.locate(e.span().unwrap_or(0..0)),
        message: e.message().to_string(),
    })?;
    Validator { src: &src, secrets }.config(raw)
}

struct Source<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    fn locate(&self, span: Range<usize>) -> String {
        let upto = &self.text[..span.start.min(self.text.len())];
        let line = upto.matches('\n').count() + 1;
        let col = upto.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("{}:{line}:{col}", self.path.display())
    }

    fn base_dir(&self) -> &Path {
        self.path.parent().unwrap_or(Path::new("."))
    }
}

struct Validator<'a> {
    src: &'a Source<'a>,
    secrets: Secrets,
}

type Spanned<T> = toml::Spanned<T>;

impl Validator<'_> {
    fn err<T>(&self, span: Range<usize>, message: impl Into<String>) -> Result<T, ConfigError> {
        Err(ConfigError {
            location: self.src.locate(span),
            message: message.into(),
        })
    }

    fn config(&self, raw: FileConfig) -> Result<Config, ConfigError> {
        let server = ServerConfig {
            listen: self.addr(&raw.server.listen)?,
            tls: raw.server.tls.as_ref().map(|t| TlsFiles {
                cert: self.src.base_dir().join(t.cert.get_ref()),
                key: self.src.base_dir().join(t.key.get_ref()),
            }),
            max_body_bytes: self.bounded(
                &raw.server.max_body_bytes,
                "max_body_bytes",
                1..=u64::MAX,
                limits::MAX_BODY_BYTES,
            )?,
            max_connections: match &raw.server.max_connections {
                Some(_) => self.bounded(
                    &raw.server.max_connections,
                    "max_connections",
                    1..=1_000_000,
                    0,
                )? as usize,
                None => limits::default_max_connections(descriptor_limit()),
            },
            max_header_bytes: self.bounded(
                &raw.server.max_header_bytes,
                "max_header_bytes",
                limits::MIN_HEADER_BYTES as u64..=1024 * 1024,
                limits::MAX_HEADER_BYTES as u64,
            )? as usize,
            max_uri_bytes: self.bounded(
                &raw.server.max_uri_bytes,
                "max_uri_bytes",
                256..=1024 * 1024,
                limits::MAX_URI_BYTES as u64,
            )? as usize,
            max_sse_event_bytes: self.bounded(
                &raw.server.max_sse_event_bytes,
                "max_sse_event_bytes",
                1024..=1024 * 1024 * 1024,
                limits::MAX_SSE_EVENT_BYTES as u64,
            )? as usize,
            workers: self.bounded(
                &raw.server.workers,
                "workers",
                1..=1024,
                limits::default_workers() as u64,
            )? as usize,
        };
        let t = &raw.timeouts;
        let d = Timeouts::default();
        let timeouts = Timeouts {
            tls_handshake: t.tls_handshake.unwrap_or(d.tls_handshake),
            request_header: t.request_header.unwrap_or(d.request_header),
            request_body: t.request_body.unwrap_or(d.request_body),
            upstream_connect: t.upstream_connect.unwrap_or(d.upstream_connect),
            upstream_headers: t.upstream_headers.unwrap_or(d.upstream_headers),
            stream_idle: t.stream_idle.unwrap_or(d.stream_idle),
            shutdown_drain: t.shutdown_drain.unwrap_or(d.shutdown_drain),
            idle: t.idle.unwrap_or(d.idle),
        };
        let admin = match raw.admin {
            None => None,
            Some(a) => {
                let listen = self.addr(&a.listen)?;
                let token = a.token.as_ref().map(|t| self.secret(t)).transpose()?;
                if token.is_none() && !a.allow_loopback_without_token {
                    return self.err(
                        a.listen.span(),
                        "the admin listener needs `token = \"env:NAME\"`, or \
                         `allow_loopback_without_token = true` to serve loopback clients without one",
                    );
                }
                if token.is_none() && !listen.ip().is_loopback() {
                    return self.err(
                        a.listen.span(),
                        "an admin listener without a token must listen on a loopback address",
                    );
                }
                Some(AdminConfig {
                    listen,
                    token,
                    allow_loopback_without_token: a.allow_loopback_without_token,
                })
            }
        };
        let auth = self.auth(raw.auth)?;
        let policy = self.policy(raw.policy)?;
        let mut providers = Vec::with_capacity(raw.providers.len());
        let mut ids = HashSet::new();
        for p in raw.providers {
            if !ids.insert(p.id.get_ref().clone()) {
                return self.err(
                    p.id.span(),
                    format!("duplicate provider id `{}`", p.id.get_ref()),
                );
            }
            providers.push(Arc::new(self.provider(p)?));
        }
        let capabilities = Arc::new(self.capabilities(raw.capabilities, &ids)?);
        Ok(Config {
            path: self.src.path.to_path_buf(),
            server,
            timeouts,
            admin,
            auth,
            policy,
            log: LogConfig {
                json: matches!(raw.log.format, Some(file::LogFormatName::Json)),
                level: raw.log.level.clone().unwrap_or_else(|| "info".into()),
            },
            providers,
            capabilities,
            state: self.state(raw.state)?,
        })
    }

    fn state(&self, raw: Option<Spanned<file::StateSection>>) -> Result<StateConfig, ConfigError> {
        let Some(raw) = raw else {
            return Ok(StateConfig::Memory);
        };
        let span = raw.span();
        let raw = raw.into_inner();
        let redis_only = [
            raw.url.as_ref().map(|u| ("url", u.span())),
            raw.namespace.as_ref().map(|n| ("namespace", n.span())),
            raw.required.then(|| ("required", raw.backend.span())),
        ];
        match raw.backend.get_ref().as_str() {
            "memory" => {
                if let Some((name, span)) = redis_only.into_iter().flatten().next() {
                    return self.err(
                        span,
                        format!("`{name}` applies to `backend = \"redis\"` only"),
                    );
                }
                Ok(StateConfig::Memory)
            }
            "redis" => {
                let Some(url_ref) = raw.url.as_ref() else {
                    return self.err(
                        span,
                        "`backend = \"redis\"` needs `url = \"env:REDIS_URL\"` (a secret \
                         reference to a redis:// or rediss:// URL)",
                    );
                };
                let url = self.secret(url_ref)?;
                if self.secrets == Secrets::Resolve {
                    // Parsed, never connected: `keyway check` works without Redis up. The
                    // message never repeats the URL (it may hold a password).
                    if let Err(e) = redis::Client::open(url.expose()) {
                        return self.err(
                            url_ref.span(),
                            format!(
                                "the Redis URL is not usable ({}); write \
                                 redis://[:password@]host:port[/db] or rediss://… for TLS",
                                e.category()
                            ),
                        );
                    }
                }
                let namespace = match &raw.namespace {
                    Some(n) => self.id(n, "namespace")?,
                    None => "keyway".to_string(),
                };
                let sync_interval = raw.sync_interval.unwrap_or(Duration::from_millis(100));
                if !(Duration::from_millis(10)..=Duration::from_secs(5)).contains(&sync_interval) {
                    return self.err(span, "[state] sync_interval must be between 10ms and 5s");
                }
                let timeout = raw.timeout.unwrap_or(Duration::from_millis(250));
                if !(Duration::from_millis(10)..=Duration::from_secs(10)).contains(&timeout) {
                    return self.err(span, "[state] timeout must be between 10ms and 10s");
                }
                Ok(StateConfig::Redis(RedisState {
                    url,
                    namespace,
                    sync_interval,
                    timeout,
                    required: raw.required,
                }))
            }
            other => self.err(
                raw.backend.span(),
                format!("unknown state backend `{other}`; use \"memory\" or \"redis\""),
            ),
        }
    }

    fn capabilities(
        &self,
        raw: Vec<Spanned<file::CapabilitySection>>,
        providers: &HashSet<String>,
    ) -> Result<crate::translate::caps::CapabilityTable, ConfigError> {
        use crate::translate::caps::{CapabilityPatch, Entry, Source};
        let mut entries = Vec::with_capacity(raw.len());
        for c in raw {
            let c = c.into_inner();
            // The `models` line locates the entry (a table's own span is not reliable).
            let span = c.models.span();
            if c.models.get_ref().trim().is_empty() {
                return self.err(c.models.span(), "`models` must be a model name or glob");
            }
            if let Some(p) = &c.provider {
                if !providers.contains(p.get_ref()) {
                    return self.err(
                        p.span(),
                        format!("no provider `{}` is configured", p.get_ref()),
                    );
                }
            }
            if let Some(n) = &c.max_output_tokens {
                if *n.get_ref() == 0 {
                    return self.err(n.span(), "max_output_tokens must be at least 1");
                }
            }
            let patch = CapabilityPatch {
                max_output_tokens: c.max_output_tokens.map(Spanned::into_inner),
                max_tokens_field: c.max_tokens_field,
                thinking: c.thinking,
                structured_output: c.structured_output,
                developer_role: c.developer_role,
                tool_ids: c.tool_ids,
                reasoning_replay: c.reasoning_replay,
            };
            if patch == CapabilityPatch::default() {
                return self.err(
                    span,
                    "this [[capability]] sets nothing: add a field such as `max_output_tokens`",
                );
            }
            let at = self.src.locate(span);
            let at = at
                .rsplit_once(':')
                .map_or(at.clone(), |(l, _)| l.to_string());
            entries.push(Entry::new(
                c.models.get_ref(),
                c.provider.map(Spanned::into_inner),
                patch,
                Source::Config(at),
            ));
        }
        Ok(crate::translate::caps::CapabilityTable::new(entries))
    }

    fn policy(&self, raw: file::PolicySection) -> Result<PolicyConfig, ConfigError> {
        let max_attempts = match raw.max_attempts {
            Some(n) if *n.get_ref() == 0 || *n.get_ref() > 50 => {
                return self.err(n.span(), "max_attempts must be between 1 and 50")
            }
            Some(n) => n.into_inner(),
            None => 5,
        };
        let max_operations = match raw.max_operations {
            Some(n) if *n.get_ref() < 1_000 => {
                return self.err(n.span(), "max_operations must be at least 1000")
            }
            Some(n) => n.into_inner(),
            None => 200_000,
        };
        Ok(PolicyConfig {
            dir: raw.dir.map(|d| self.src.base_dir().join(d)),
            on_error: match raw.on_error {
                Some(OnErrorName::Reject) => OnError::Reject,
                Some(OnErrorName::Default) | None => OnError::Default,
            },
            max_attempts,
            call_timeout: raw.call_timeout.unwrap_or(Duration::from_millis(50)),
            max_operations,
            max_retry_after: raw.max_retry_after.unwrap_or(Duration::from_secs(3600)),
            max_quota_wait: raw.max_quota_wait.unwrap_or(Duration::from_secs(86_400)),
        })
    }

    /// An optional integer setting within `range`, or `default` when absent.
    fn bounded(
        &self,
        v: &Option<Spanned<u64>>,
        name: &str,
        range: std::ops::RangeInclusive<u64>,
        default: u64,
    ) -> Result<u64, ConfigError> {
        match v {
            None => Ok(default),
            Some(v) if range.contains(v.get_ref()) => Ok(*v.get_ref()),
            Some(v) => self.err(
                v.span(),
                format!(
                    "{name} must be between {} and {}",
                    range.start(),
                    range.end()
                ),
            ),
        }
    }

    fn addr(&self, s: &Spanned<String>) -> Result<SocketAddr, ConfigError> {
        match s.get_ref().parse() {
            Ok(a) => Ok(a),
            Err(_) => self.err(
                s.span(),
                format!(
                    "`{}` is not a socket address; write IP:PORT, e.g. \"127.0.0.1:8787\"",
                    s.get_ref()
                ),
            ),
        }
    }

    fn secret(&self, s: &Spanned<String>) -> Result<Secret, ConfigError> {
        let resolved = match self.secrets {
            Secrets::Resolve => secret::resolve(s.get_ref(), self.src.base_dir()),
            Secrets::Placeholder => secret::placeholder(s.get_ref()),
        };
        resolved.or_else(|e| self.err(s.span(), e.to_string()))
    }

    fn id(&self, s: &Spanned<String>, what: &str) -> Result<String, ConfigError> {
        let v = s.get_ref();
        let ok = !v.is_empty()
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if ok {
            Ok(v.clone())
        } else {
            self.err(
                s.span(),
                format!(
                    "{what} `{v}` must be non-empty and use only letters, digits, '-', '_' or '.'"
                ),
            )
        }
    }

    fn auth(&self, raw: Spanned<file::AuthSection>) -> Result<AuthConfig, ConfigError> {
        let span = raw.span();
        let raw = raw.into_inner();
        let allow = raw.allow_unauthenticated;
        if raw.clients.is_empty() && !allow {
            return self.err(
                span.clone(),
                "[auth] lists no clients: add `clients = [{ name = \"me\", key = \"env:KEYWAY_CLIENT_KEY\" }]`, \
                 or set `allow_unauthenticated = true` to run without client auth",
            );
        }
        if !raw.clients.is_empty() && allow {
            return self.err(
                span,
                "`allow_unauthenticated = true` conflicts with the listed clients; remove one",
            );
        }
        let mut names = HashSet::new();
        let mut clients = Vec::with_capacity(raw.clients.len());
        for c in raw.clients {
            let name = self.id(&c.name, "client name")?;
            if !names.insert(name.clone()) {
                return self.err(c.name.span(), format!("duplicate client name `{name}`"));
            }
            clients.push(ClientKey {
                name,
                key: self.secret(&c.key)?,
            });
        }
        Ok(AuthConfig {
            clients,
            allow_unauthenticated: allow,
        })
    }

    fn provider(&self, p: file::ProviderSection) -> Result<Provider, ConfigError> {
        let id = self.id(&p.id, "provider id")?;
        let kind = match p.kind {
            ProviderKindName::Openai => ProviderKind::OpenAi,
            ProviderKindName::Anthropic => ProviderKind::Anthropic,
            ProviderKindName::OpenaiCompatible => ProviderKind::OpenAiCompatible,
        };
        let base_url = self.base_url(&p.base_url)?;
        let formats = match &p.formats {
            None => crate::format::Formats::for_kind(kind),
            Some(list) => {
                let mut families = Vec::new();
                for f in list.get_ref() {
                    match crate::format::Family::parse(f.get_ref()) {
                        Some(family) => families.push(family),
                        None => {
                            return self.err(
                                f.span(),
                                format!(
                                "unknown format `{}`; use \"chat\", \"messages\" or \"responses\"",
                                f.get_ref()
                            ),
                            )
                        }
                    }
                }
                if families.is_empty() {
                    return self.err(list.span(), "`formats` must name at least one format");
                }
                crate::format::Formats::of(&families)
            }
        };
        if p.connections.is_empty() {
            return self.err(
                p.id.span(),
                format!("provider `{id}` has no [[provider.connection]] with keys"),
            );
        }
        let mut conn_ids = HashSet::new();
        let mut connections = Vec::with_capacity(p.connections.len());
        for c in p.connections {
            let cid = self.id(&c.id, "connection id")?;
            if !conn_ids.insert(cid.clone()) {
                return self.err(
                    c.id.span(),
                    format!("duplicate connection id `{cid}` in provider `{id}`"),
                );
            }
            if c.keys.get_ref().is_empty() {
                return self.err(
                    c.keys.span(),
                    format!("connection `{id}/{cid}` needs at least one key"),
                );
            }
            let mut key_ids = HashSet::new();
            let mut keys = Vec::with_capacity(c.keys.get_ref().len());
            for entry in c.keys.into_inner() {
                let entry_span = entry.span();
                let (key_id, reference, weight) = match entry.into_inner() {
                    KeyEntry::Ref(r) => (None, Spanned::new(entry_span, r), 1),
                    KeyEntry::Table(t) => (t.id, t.key, t.weight),
                };
                let key_id = match &key_id {
                    Some(k) => self.id(k, "key id")?,
                    None => secret::reference_name(reference.get_ref()).to_string(),
                };
                let span = reference.span();
                if !key_ids.insert(key_id.clone()) {
                    return self.err(
                        span,
                        format!(
                            "duplicate key id `{key_id}` in connection `{id}/{cid}`; give keys distinct ids"
                        ),
                    );
                }
                if weight == 0 {
                    return self.err(span, "key weight must be at least 1");
                }
                let secret = self.secret(&reference)?;
                match ApiKey::new(key_id, secret, weight, kind) {
                    Some(k) => keys.push(k),
                    None => {
                        return self.err(
                            span,
                            "this key has characters an HTTP header cannot carry (a line break?); check the value it refers to",
                        )
                    }
                }
            }
            connections.push(Arc::new(Connection::new(id.clone(), cid, keys)));
        }
        Ok(Provider {
            anthropic_version: p
                .anthropic_version
                .unwrap_or_else(|| "2023-06-01".to_string()),
            id,
            kind,
            base_url,
            forward_query: p.forward_query.unwrap_or(true),
            formats,
            translate: p.translate.unwrap_or(true),
            models: p.models,
            connections,
        })
    }

    fn base_url(&self, s: &Spanned<String>) -> Result<BaseUrl, ConfigError> {
        let fail = |why: &str| {
            self.err(
                s.span(),
                format!(
                    "base_url `{}` {why}; write e.g. \"https://api.openai.com/v1\"",
                    s.get_ref()
                ),
            )
        };
        let uri: Uri = match s.get_ref().parse() {
            Ok(u) => u,
            Err(_) => return fail("is not a valid URL"),
        };
        let scheme = match uri.scheme() {
            Some(s) if *s == Scheme::HTTP || *s == Scheme::HTTPS => s.clone(),
            _ => return fail("must start with http:// or https://"),
        };
        let Some(authority) = uri.authority().cloned() else {
            return fail("has no host");
        };
        if authority.as_str().contains('@') {
            return fail("must not carry credentials");
        }
        if uri.query().is_some() {
            return fail("must not have a query string");
        }
        let Ok(host) = http::HeaderValue::try_from(authority.as_str()) else {
            return fail("has a host that cannot be a Host header");
        };
        Ok(BaseUrl::new(
            scheme,
            authority,
            uri.path().trim_end_matches('/').to_string(),
            host,
        ))
    }
}

#[cfg(test)]
mod tests;
