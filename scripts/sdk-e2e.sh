#!/usr/bin/env bash
# Runs tests/sdk/e2e.py: the official OpenAI and Anthropic Python SDKs against Keyway over
# TLS. Installs the SDKs into target/sdk-venv on first use (PyPI).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${CARGO_TARGET_DIR:-target}/sdk-venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check openai anthropic httpx httpx2 trustme
cargo build --quiet --bin keyway --example mock_upstream
bin="${CARGO_TARGET_DIR:-target}/debug"
"$venv/bin/python" tests/sdk/e2e.py "$bin/keyway" "$bin/examples/mock_upstream"
