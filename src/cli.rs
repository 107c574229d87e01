//! Command line: `keyway run`, `keyway check`, `keyway explain`, `keyway version`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config;
use crate::format::ApiFormat;
use crate::keys::KeyRegistry;
use crate::policy::explain::ExplainRequest;
use crate::policy::{self, fixtures, Policy};
use crate::quota::{QuotaState, SystemClock};
use crate::server::Server;

#[derive(Debug, Parser)]
#[command(
    name = "keyway",
    version,
    about = "AI API router: OpenAI/Anthropic-compatible proxy with policy-driven routing"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format (overrides the config's `[log] format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the proxy.
    Run {
        /// Config file.
        #[arg(short, long, default_value = "keyway.toml")]
        config: PathBuf,
    },
    /// Validate the config (resolving its secrets) and the policy, and run the policy's
    /// fixtures (`<policy dir>/tests/*.toml`), without serving.
    Check {
        #[arg(short, long, default_value = "keyway.toml")]
        config: PathBuf,
    },
    /// Show what the policy would do for a request: candidates in order, the key each
    /// would get, and active locks. Sends nothing.
    Explain {
        #[arg(short, long, default_value = "keyway.toml")]
        config: PathBuf,
        /// The requested model name.
        #[arg(long)]
        model: String,
        /// The client name the request comes from.
        #[arg(long, default_value = "cli")]
        client: String,
        /// chat.completions, completions, embeddings, messages, messages.count_tokens, responses or responses.compact.
        #[arg(long, default_value = "chat.completions")]
        endpoint: String,
        /// Output JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print the version.
    Version,
}

/// Sets up logging: `RUST_LOG` filters (else `level`), text or JSON lines on stderr.
pub fn init_logging(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // rustls warns once per handshake about client quirks (e.g. an IP address sent as
        // SNI): noise that any client could flood the log with.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("{level},rustls=error")));
    // Colour codes only for a terminal: in a log file they are noise (and escape sequences).
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("keyway {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Check { config } => check(&config),
        Command::Explain {
            config,
            model,
            client,
            endpoint,
            json,
        } => explain(&config, model, client, &endpoint, json),
        Command::Run { config } => {
            let cfg = Arc::new(config::load(&config)?);
            let format = cli.log_format.unwrap_or(if cfg.log.json {
                LogFormat::Json
            } else {
                LogFormat::Text
            });
            init_logging(format, &cfg.log.level);
            let prometheus = crate::metrics::install();
            crate::metrics::spawn_upkeep(prometheus.clone());
            let server = Server::bind(cfg.clone()).await?;
            let scheme = if cfg.server.tls.is_some() {
                "https"
            } else {
                "http"
            };
            tracing::info!(
                addr = %server.local_addr()?,
                "keyway {} listening ({scheme}); providers: {}",
                env!("CARGO_PKG_VERSION"),
                cfg.providers.iter().map(|p| p.id.as_str()).collect::<Vec<_>>().join(", ")
            );
            let reloader = Arc::new(server.reloader(&config));
            let _watch = match reloader.watch() {
                Ok(w) => Some(w),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch files for changes; reload with SIGHUP instead");
                    None
                }
            };
            tokio::spawn(reload_on_sighup(reloader.clone()));
            let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
            if let Some(admin) = &cfg.admin {
                let admin_server = crate::admin::AdminServer::bind(
                    admin.listen,
                    server.runtime().clone(),
                    reloader.clone(),
                    prometheus,
                )
                .await
                .map_err(|e| anyhow::anyhow!("cannot listen on {} (admin): {e}", admin.listen))?;
                tracing::info!(addr = %admin_server.local_addr()?, "admin listening (/metrics, /healthz, /readyz, /admin/*)");
                tokio::spawn(admin_server.run(async {
                    let _ = admin_stopped.await;
                }));
            }
            server.run(shutdown_signal()).await;
            let _ = stop_admin.send(());
            Ok(())
        }
    }
}

fn check(path: &Path) -> anyhow::Result<()> {
    let cfg = config::load(path)?;
    let keys: usize = cfg
        .providers
        .iter()
        .flat_map(|p| p.connections.iter())
        .map(|c| c.keys.len())
        .sum();
    println!(
        "{}: ok ({} providers, {} keys, {} clients)",
        path.display(),
        cfg.providers.len(),
        keys,
        cfg.auth.clients.len()
    );
    let (source, text) = policy::read_source(&cfg.policy)?;
    let quota = Arc::new(QuotaState::new(Arc::new(SystemClock)));
    let loaded = Policy::compile(source.clone(), &text, &cfg, quota)?;
    println!(
        "{}: ok ({} routes, hash {})",
        loaded.source,
        loaded.router().table().len(),
        loaded.hash
    );
    let Some(dir) = &cfg.policy.dir else {
        return Ok(());
    };
    let report = fixtures::run(&cfg, &source, &text, dir);
    for f in &report.failures {
        println!("FAIL {f}");
    }
    println!(
        "policy fixtures: {} passed, {} failed ({} files)",
        report.passed,
        report.failures.len(),
        report.files
    );
    if report.failures.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} policy fixture(s) failed", report.failures.len())
    }
}

fn explain(
    path: &Path,
    model: String,
    client: String,
    endpoint: &str,
    json: bool,
) -> anyhow::Result<()> {
    let cfg = config::load(path)?;
    let quota = Arc::new(QuotaState::new(Arc::new(SystemClock)));
    let loaded = Policy::load(&cfg, quota)?;
    let format = ApiFormat::parse(endpoint).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown endpoint `{endpoint}`; use one of {}",
            ApiFormat::names()
        )
    })?;
    let req = ExplainRequest {
        model,
        client,
        format,
        stream: false,
        headers: http::HeaderMap::new(),
    };
    let keys = KeyRegistry::new(&cfg);
    let ex = policy::explain::explain(&loaded, &cfg, &keys, &req)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&ex)?);
        return Ok(());
    }
    println!(
        "model `{}` with policy {} ({})",
        ex.model, ex.policy, ex.policy_hash
    );
    if !ex.native_hooks.is_empty() {
        let hooks: Vec<String> = ex
            .native_hooks
            .iter()
            .map(|(hook, native)| format!("{hook} ({native})"))
            .collect();
        println!(
            "  hooks run natively, without a script call: {}",
            hooks.join(", ")
        );
    }
    if ex.candidates.is_empty() {
        println!("  no candidates: the request would get 404 model_not_found");
    }
    for (i, c) in ex.candidates.iter().enumerate() {
        match &c.skipped {
            Some(why) => println!("  {}. {}  skipped: {why}", i + 1, c.target),
            None => println!("  {}. {}  key: {}", i + 1, c.target, c.keys.join(", then ")),
        }
        if let Some(via) = c.via.filter(|v| *v != "identity") {
            println!("     translated: {via}");
        }
        if let Some(r) = &c.capabilities {
            let fields = serde_json::to_value(&r.caps).unwrap_or_default();
            let fields: Vec<String> = fields
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, v)| format!("{k}={}", v.as_str().map_or(v.to_string(), str::to_string)))
                .collect();
            println!("     capabilities: {}", fields.join(" "));
            println!("     from: {}", r.from.join("; "));
        }
    }
    if ex.locks.is_empty() {
        println!("  no active locks (this process's state; a running Keyway shows its own at /admin/state)");
    }
    for (scope, secs, reason) in &ex.locks {
        println!("  lock {scope}: {secs:.0}s left ({reason})");
    }
    Ok(())
}

/// Reloads config, policy and certificate on each SIGHUP.
async fn reload_on_sighup(reloader: Arc<crate::reload::Reloader>) {
    #[cfg(unix)]
    {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        else {
            return;
        };
        while hup.recv().await.is_some() {
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload("sighup")).await;
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
