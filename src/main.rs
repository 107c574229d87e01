//! The `keyway` binary: install the crypto provider, parse the command line, run.

use clap::Parser;

// glibc's allocator showed up as the largest single cost under load (~17% of samples);
// mimalloc is built for many small, short-lived allocations across threads.
#[global_allocator]
static GLOBAL: keyway::allocator::Mimalloc = keyway::allocator::Mimalloc;

fn main() -> std::process::ExitCode {
    keyway::server::workers::set_thread_hooks(keyway::server::workers::ThreadHooks {
        on_start: None,
        on_park: Some(return_freed_memory),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(return_freed_memory)
        .build();
    match runtime {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// mimalloc keeps the pages a burst freed until the thread that owns them allocates again,
/// so an idle proxy would hold a burst's peak for good. Each runtime thread (serving or
/// not), when it goes idle and at most once a second, asks mimalloc to return what that
/// thread has free.
fn return_freed_memory() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    const EVERY: Duration = Duration::from_secs(1);
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    let now = Instant::now();
    if LAST.get().is_some_and(|t| now.duration_since(t) < EVERY) {
        return;
    }
    LAST.set(Some(now));
    // SAFETY: mi_collect takes no pointers and may be called from any thread at any time.
    unsafe { libmimalloc_sys::mi_collect(true) };
}

async fn run() -> std::process::ExitCode {
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
