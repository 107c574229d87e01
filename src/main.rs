//! The `keyway` binary: install the crypto provider, parse the command line, run.

use clap::Parser;

// glibc's allocator showed up as the largest single cost under load (~17% of samples);
// mimalloc is built for many small, short-lived allocations across threads.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    keyway::install_crypto_provider();
    // Every proxied stream holds two sockets: raise the soft descriptor limit to the hard one.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let cli = keyway::cli::Cli::parse();
    if !matches!(cli.command, keyway::cli::Command::Run { .. }) {
        // `run` sets logging up from its config; the other commands print to stdout.
        keyway::cli::init_logging(
            cli.log_format.unwrap_or(keyway::cli::LogFormat::Text),
            "warn",
        );
    }
    match keyway::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
