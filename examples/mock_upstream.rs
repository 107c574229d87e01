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
    /// Tools to call in preference when a client offers them (comma-separated), e.g.
    /// `Read,exec_command` for coding clients; default: the first two offered.
    #[arg(long, value_delimiter = ',')]
    call_tools: Vec<String>,
    /// Append every request (method, path, query, headers, body) to this file as JSON lines.
    #[arg(long)]
    record: Option<std::path::PathBuf>,
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
        mock::turns::prefer_tools(args.call_tools.clone());
        let server = mock::MockUpstream::start_on(args.listen, reply).await;
        println!("mock upstream listening on http://{}/v1", server.addr);
        let Some(path) = args.record else {
            server.disable_recording();
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        // Requests are appended as they arrive, so the file is complete when the mock is
        // killed at any moment.
        let mut written = 0;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        loop {
            let got = server.received();
            if got.len() > written {
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .expect("record file");
                for r in &got[written..] {
                    let headers: serde_json::Map<String, serde_json::Value> = r
                        .headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").into()))
                        .collect();
                    let line = serde_json::json!({"method": r.method, "path": r.path,
                        "query": r.query, "headers": headers,
                        "body": serde_json::from_slice::<serde_json::Value>(&r.body)
                            .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into())});
                    writeln!(f, "{line}").expect("record write");
                }
                written = got.len();
            }
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    });
}
