//! Captures this test's log output (text format, as `keyway run` writes it) in memory.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures on this thread (`#[tokio::test]` runs every task on it) until the guard drops.
    pub fn capture() -> (Self, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let writer = logs.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter("info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// The request log lines (target `keyway::request`).
    pub fn request_lines(&self) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.contains("keyway::request"))
            .map(str::to_string)
            .collect()
    }

    /// Waits (bounded) until `n` request lines were logged.
    pub async fn wait_requests(&self, n: usize) -> Vec<String> {
        for _ in 0..200 {
            let lines = self.request_lines();
            if lines.len() >= n {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("expected {n} request log lines, got:\n{}", self.text());
    }
}
