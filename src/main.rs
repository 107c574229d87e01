//! The `keyway` binary: install the crypto provider, parse the command line, run.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    keyway::install_crypto_provider();
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
