//! Short content digests: the first bytes of a SHA-256, as lowercase hex. Used where a
//! stable, opaque name is derived from text (policy and config hashes, tool-id and tool-name
//! suffixes, stored-response routing tags); never for secrets (see `config::secret`).

use std::fmt::Write as _;

use sha2::{Digest, Sha256};

/// The first `bytes` bytes (at most 32) of SHA-256 over `data`, as `2 × bytes` hex digits.
pub fn short_hex(data: &[u8], bytes: usize) -> String {
    let digest = Sha256::digest(data);
    let mut out = String::with_capacity(bytes * 2);
    for b in &digest[..bytes.min(32)] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_sha256_prefix_hex() {
        assert_eq!(super::short_hex(b"abc", 4), "ba7816bf");
        assert_eq!(super::short_hex(b"", 2), "e3b0");
    }
}
