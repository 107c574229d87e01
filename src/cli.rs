//! Command line: `keyway run`, `keyway check`, `keyway version`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config;
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
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
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
    /// Validate the config (and resolve its secrets) without serving.
    Check {
        #[arg(short, long, default_value = "keyway.toml")]
        config: PathBuf,
    },
    /// Print the version.
    Version,
}

/// Sets up logging: `RUST_LOG` filters (default `info`), text or JSON lines on stderr.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
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
        Command::Check { config } => {
            let cfg = config::load(&config)?;
            let keys: usize = cfg
                .providers
                .iter()
                .flat_map(|p| p.connections.iter())
                .map(|c| c.keys.len())
                .sum();
            println!(
                "{}: ok ({} providers, {} keys, {} clients)",
                config.display(),
                cfg.providers.len(),
                keys,
                cfg.auth.clients.len()
            );
            Ok(())
        }
        Command::Run { config } => {
            let cfg = Arc::new(config::load(&config)?);
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
            server.run(shutdown_signal()).await;
            Ok(())
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
