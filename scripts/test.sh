#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit and integration tests over
# real sockets, the README demo, and the official SDKs end to end.
set -euo pipefail
cd "$(dirname "$0")/.."

need() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
missing=()
need curl || missing+=(curl)                   # the demo smoke test
need redis-server || missing+=(redis-server)   # the shared-state tests start real ones
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian's packages" >&2
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The tests start their own redis-server on free ports; a packaged service is not used.
export KEYWAY_REDIS_SERVER="$(command -v redis-server)"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --all-targets --quiet -- -D warnings
echo "== tests"
if need cargo-nextest; then
  cargo nextest run --no-fail-fast
else
  cargo test --no-fail-fast
fi
echo "== keyway check on the demo config (config, policy, policies/tests fixtures)"
cargo build --quiet --bin keyway
KEYWAY_DEMO_CLIENT_KEY=c KEYWAY_DEMO_OPENAI_KEY_1=k1 KEYWAY_DEMO_OPENAI_KEY_2=k2 KEYWAY_DEMO_ANTHROPIC_KEY=k3 KEYWAY_DEMO_DEEPSEEK_KEY=k4 \
  "${CARGO_TARGET_DIR:-target}/debug/keyway" check --config examples/demo/keyway.toml
echo "== demo smoke (README command 1)"
scripts/demo.sh --smoke
echo "== official SDKs end to end"
scripts/sdk-e2e.sh
echo "== real coding clients end to end (Claude Code, Codex CLI)"
scripts/clients-e2e.sh
