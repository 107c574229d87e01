#!/usr/bin/env bash
# Runs Keyway on the bundled demo config in front of the bundled mock upstream.
# No API keys needed. Ctrl-C stops both.
#   scripts/demo.sh            run until Ctrl-C
#   scripts/demo.sh --smoke    start, send one request of each kind, check, stop (used by CI)
set -euo pipefail
cd "$(dirname "$0")/.."

smoke=false
[[ "${1:-}" == "--smoke" ]] && smoke=true

echo "building keyway and the mock upstream..." >&2
cargo build --quiet --bin keyway --example mock_upstream
target="${CARGO_TARGET_DIR:-target}/debug"

export KEYWAY_DEMO_CLIENT_KEY="demo-client-key"
export KEYWAY_DEMO_OPENAI_KEY_1="demo-openai-key-1"
export KEYWAY_DEMO_OPENAI_KEY_2="demo-openai-key-2"
export KEYWAY_DEMO_ANTHROPIC_KEY="demo-anthropic-key"
export KEYWAY_DEMO_DEEPSEEK_KEY="demo-deepseek-key"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$target/examples/mock_upstream" --listen 127.0.0.1:18080 --chunks 8 --pacing-ms 40 >&2 &
pids+=($!)
"$target/keyway" run --config examples/demo/keyway.toml &
pids+=($!)

# Wait until Keyway answers.
for _ in $(seq 1 100); do
  if curl -s -o /dev/null -H "Authorization: Bearer $KEYWAY_DEMO_CLIENT_KEY" http://127.0.0.1:8787/v1/models; then break; fi
  sleep 0.1
done

if $smoke; then
  auth=(-H "Authorization: Bearer $KEYWAY_DEMO_CLIENT_KEY" -H "content-type: application/json")
  out=$(curl -sf "${auth[@]}" http://127.0.0.1:8787/v1/chat/completions \
        -d '{"model":"gpt-4o","messages":[{"role":"user","content":"hello"}]}')
  grep -q '"chat.completion"' <<<"$out" || { echo "demo smoke: chat failed: $out" >&2; exit 1; }
  out=$(curl -sfN "${auth[@]}" http://127.0.0.1:8787/v1/chat/completions \
        -d '{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"hello"}]}')
  grep -q 'data: \[DONE\]' <<<"$out" || { echo "demo smoke: stream failed: $out" >&2; exit 1; }
  out=$(curl -sf -H "x-api-key: $KEYWAY_DEMO_CLIENT_KEY" -H "content-type: application/json" \
        http://127.0.0.1:8787/v1/messages \
        -d '{"model":"claude-3-5-sonnet","max_tokens":64,"messages":[{"role":"user","content":"hello"}]}')
  grep -q '"type":"message"' <<<"$out" || { echo "demo smoke: messages failed: $out" >&2; exit 1; }
  # Translated routes: an OpenAI client asks for a Claude model, an Anthropic client for GPT.
  out=$(curl -sfN "${auth[@]}" http://127.0.0.1:8787/v1/chat/completions \
        -d '{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"hello"}]}')
  grep -q 'data: \[DONE\]' <<<"$out" || { echo "demo smoke: translated stream failed: $out" >&2; exit 1; }
  out=$(curl -sf -H "x-api-key: $KEYWAY_DEMO_CLIENT_KEY" -H "content-type: application/json" \
        http://127.0.0.1:8787/v1/messages \
        -d '{"model":"gpt-4o","max_tokens":64,"messages":[{"role":"user","content":"hello"}]}')
  grep -q '"type":"message"' <<<"$out" || { echo "demo smoke: translated messages failed: $out" >&2; exit 1; }
  # The Responses API (Codex, client.responses) on a Claude model: translated to Messages.
  out=$(curl -sfN "${auth[@]}" http://127.0.0.1:8787/v1/responses \
        -d '{"model":"claude-3-5-sonnet","stream":true,"input":"hello"}')
  grep -q 'event: response.completed' <<<"$out" || { echo "demo smoke: translated responses failed: $out" >&2; exit 1; }
  out=$(curl -sf "${auth[@]}" http://127.0.0.1:8787/v1/responses -d '{"model":"gpt-4o","input":"hello"}')
  grep -q '"object":"response"' <<<"$out" || { echo "demo smoke: responses failed: $out" >&2; exit 1; }
  echo "demo smoke: ok"
  exit 0
fi

cat <<MSG

Keyway is serving the demo config on http://127.0.0.1:8787 (mock upstream on :18080).
Try:

  curl -N http://127.0.0.1:8787/v1/chat/completions \\
    -H "Authorization: Bearer $KEYWAY_DEMO_CLIENT_KEY" -H "content-type: application/json" \\
    -d '{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"Hello!"}]}'

A Claude model through the same OpenAI endpoint (translated to Anthropic's Messages API):

  curl -N http://127.0.0.1:8787/v1/chat/completions \\
    -H "Authorization: Bearer $KEYWAY_DEMO_CLIENT_KEY" -H "content-type: application/json" \\
    -d '{"model":"claude-3-5-sonnet","stream":true,"messages":[{"role":"user","content":"Hello!"}]}'

The Responses API (what Codex speaks) on the same Claude model, as Responses events:

  curl -N http://127.0.0.1:8787/v1/responses \\
    -H "Authorization: Bearer $KEYWAY_DEMO_CLIENT_KEY" -H "content-type: application/json" \\
    -d '{"model":"claude-3-5-sonnet","stream":true,"input":"Hello!"}'

Press Ctrl-C to stop.
MSG
wait
