#!/usr/bin/env bash
# Benchmarks Keyway against two baselines measured in the same run on 127.0.0.1: direct
# to the upstream, and nginx as a plain keep-alive reverse proxy. Idempotent: installs what
# it needs (wrk, nginx, hey, openssl, redis-server from Debian; for full runs oha from crates.io, which
# measures fixed-rate latency with coordinated-omission correction; smoke runs use hey).
# Keyway is measured as scripts/build-release.sh builds it (profile-guided), next to the plain
# `cargo build --release` binary.
#   scripts/bench.sh           full run (about 25 minutes with the builds); updates BENCHMARKS.md
#   scripts/bench.sh --smoke   a few seconds per case, to keep the harness working (CI)
#   scripts/bench.sh --streams [N]   N concurrent SSE streams through Keyway, once: lost
#                              chunks, peak RSS per stream, CPU per stream (default 10,000
#                              or as many as the descriptor limit allows)
set -euo pipefail
cd "$(dirname "$0")/.."

mode=full
[[ "${1:-}" == "--smoke" ]] && mode=smoke
[[ "${1:-}" == "--streams" ]] && mode=streams

need() { command -v "$1" >/dev/null 2>&1; }
missing=()
need wrk || missing+=(wrk)
need nginx || missing+=(nginx-light)
need openssl || missing+=(openssl)
need hey || missing+=(hey)
need redis-server || missing+=(redis-server)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if [[ "$mode" == full ]] && ! need oha; then
  echo "installing oha (fixed-rate load generator) from crates.io" >&2
  cargo install oha --locked --version 1.16.0 --quiet
fi
export PATH="$HOME/.cargo/bin:$PATH"

echo "building release binaries..." >&2
cargo build --release --quiet --bin keyway --example mock_upstream --example sse_load --example hyper_floor
# Keyway as it is released: the profile-guided build (the plain one above is measured too).
KEYWAY_BIN=$(scripts/build-release.sh)
export KEYWAY_BIN
echo "builds done in ${SECONDS} s" >&2

# 1,000 streams need ~4,000 sockets across the processes.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

if [[ "$mode" == streams ]]; then
  python3 scripts/bench/many_streams.py --streams "${2:-0}"
  exit
fi
python3 scripts/bench/run.py --mode "$mode"
if [[ "$mode" == full ]]; then
  python3 scripts/bench/report.py target/bench/results.json BENCHMARKS.md --keep-previous
else
  python3 scripts/bench/report.py target/bench/results.json target/bench/BENCHMARKS.smoke.md
fi
