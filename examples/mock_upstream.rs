//! The mock AI upstream as a standalone server, for the demo and the benchmarks.
//!
//! ```text
//! cargo run --example mock_upstream -- --listen 127.0.0.1:18080 --chunks 20 --pacing-ms 20
//! ```
//! It answers OpenAI chat/completions/embeddings/models and Anthropic messages (JSON and
//! SSE) for any key. It is the same mock the integration tests drive in-process.

#[path = "../tests/support/mock.rs"]
#[allow(dead_code)]
mod mock;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "Mock OpenAI/Anthropic upstream for Keyway demos and benchmarks")]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:18080")]
    listen: SocketAddr,
    /// Delay before response headers, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Content chunks per streamed response (and words per JSON response).
    #[arg(long, default_value_t = 8)]
    chunks: usize,
    /// Delay between streamed chunks, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pacing_ms: u64,
}

fn main() {
    let args = Args::parse();
    let threads = std::env::var("MOCK_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2usize);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let reply = mock::Reply::ok()
            .latency(Duration::from_millis(args.latency_ms))
            .chunks(args.chunks)
            .pacing(Duration::from_millis(args.pacing_ms));
        let server = mock::MockUpstream::start_on(args.listen, reply).await;
        server.disable_recording();
        println!("mock upstream listening on http://{}/v1", server.addr);
        let _ = tokio::signal::ctrl_c().await;
    });
}
