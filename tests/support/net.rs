//! Raw-socket helpers for tests of connection handling.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Far beyond any deadline under test: a connection still open then was never closed.
pub const BOUND: Duration = Duration::from_secs(10);

/// Reads until the peer closes; panics if it is still open after [`BOUND`].
pub async fn assert_closed_by_server<S: AsyncRead + Unpin>(mut s: S, what: &str) {
    let mut buf = vec![0u8; 4096];
    let closed = tokio::time::timeout(BOUND, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: connection still open after {BOUND:?}"
    );
}

/// Writes `head` and all of `body` before reading anything, as Python's `urllib` does,
/// then returns the start of the answer. Panics if the connection is reset mid-body.
pub async fn write_all_then_read(addr: SocketAddr, head: &str, body: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body)
        .await
        .expect("Keyway reset the connection while the body was sent");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(BOUND, s.read(&mut buf))
        .await
        .expect("no answer")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}
