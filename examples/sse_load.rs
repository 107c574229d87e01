//! Opens many concurrent SSE chat streams and checks every one: time to first byte, all
//! content chunks present and in order (`tok0` … `tokN-1`, as the mock sends them), and a
//! final `[DONE]`. Prints one JSON line of results. Used by `scripts/bench.sh`.
//!
//! ```text
//! cargo run --release --example sse_load -- --url http://127.0.0.1:8787/v1/chat/completions \
//!     --streams 1000 --chunks 100 --key KEY
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Content chunks each stream must carry.
    #[arg(long, default_value_t = 100)]
    chunks: usize,
    #[arg(long, default_value = "")]
    key: String,
    #[arg(long, default_value = "gpt-4o")]
    model: String,
    /// Give up on a stream after this long.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[derive(Default)]
struct StreamResult {
    ttfb: Option<Duration>,
    lost: usize,
    reordered: usize,
    done: bool,
    error: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let args = Arc::new(Args::parse());
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_nodelay(true);
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(args.streams)
        .build(http);
    let body = serde_json::json!({"model": args.model, "stream": true, "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.streams)
        .map(|_| {
            let client = client.clone();
            let args = args.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut r = StreamResult::default();
                let req = hyper::Request::post(args.url.as_str())
                    .header("content-type", "application/json")
                    .header("authorization", format!("Bearer {}", args.key))
                    .body(Full::new(Bytes::from(body)))
                    .expect("request");
                let t0 = Instant::now();
                let run = async {
                    let resp = client.request(req).await.map_err(|e| e.to_string())?;
                    if !resp.status().is_success() {
                        return Err(format!("status {}", resp.status()));
                    }
                    let mut body = resp.into_body();
                    let mut text = String::new();
                    while let Some(frame) = body.frame().await {
                        let frame = frame.map_err(|e| e.to_string())?;
                        if let Ok(data) = frame.into_data() {
                            if r.ttfb.is_none() {
                                r.ttfb = Some(t0.elapsed());
                            }
                            text.push_str(&String::from_utf8_lossy(&data));
                        }
                    }
                    Ok(text)
                };
                match tokio::time::timeout(Duration::from_secs(args.timeout_secs), run).await {
                    Err(_) => r.error = Some("timeout".into()),
                    Ok(Err(e)) => r.error = Some(e),
                    Ok(Ok(text)) => {
                        let mut expected = 0usize;
                        for event in text.split("\n\n") {
                            if event.trim() == "data: [DONE]" {
                                r.done = true;
                            }
                            if let Some(i) = event.find("\"content\":\"tok") {
                                let digits: String = event[i + 14..]
                                    .chars()
                                    .take_while(|c| c.is_ascii_digit())
                                    .collect();
                                if let Ok(n) = digits.parse::<usize>() {
                                    if n != expected {
                                        r.reordered += 1;
                                    }
                                    expected = n + 1;
                                }
                            }
                        }
                        r.lost = args.chunks.saturating_sub(expected);
                    }
                }
                r
            })
        })
        .collect();
    let mut results = Vec::with_capacity(tasks.len());
    for t in tasks {
        results.push(t.await.unwrap_or_else(|e| StreamResult {
            error: Some(e.to_string()),
            ..Default::default()
        }));
    }
    let wall = started.elapsed();
    let mut ttfb: Vec<f64> = results
        .iter()
        .filter_map(|r| r.ttfb)
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    ttfb.sort_by(|a, b| a.total_cmp(b));
    let failed = results
        .iter()
        .filter(|r| r.error.is_some() || !r.done)
        .count();
    let first_error = results.iter().find_map(|r| r.error.clone());
    println!(
        "{}",
        serde_json::json!({
            "streams": args.streams,
            "ok": args.streams - failed,
            "failed": failed,
            "first_error": first_error,
            "lost_chunks": results.iter().map(|r| r.lost).sum::<usize>(),
            "reordered_chunks": results.iter().map(|r| r.reordered).sum::<usize>(),
            "ttfb_p50_ms": percentile(&ttfb, 50.0),
            "ttfb_p99_ms": percentile(&ttfb, 99.0),
            "wall_s": wall.as_secs_f64(),
        })
    );
}
