//! The `keyway` binary: install the crypto provider, parse the command line, run.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    keyway::install_crypto_provider();
    let cli = keyway::cli::Cli::parse();
    keyway::cli::init_logging(cli.log_format);
    match keyway::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
