#!/usr/bin/env bash
# Real coding clients end to end: Claude Code and Codex CLI, installed from the npm
# registry at pinned versions, run non-interactively against Keyway on the demo config
# (examples/demo) in front of the bundled mock upstream, each in a scratch HOME so nothing
# touches a user's own config. Every run makes the client call a tool (the mock asks for
# `Read` / `exec_command`), send its result back through Keyway, and print the mock's
# answer, which is checked, along with the upstream API each run reached.
#
#   scripts/clients-e2e.sh            the five runs (and a resume turn), then the check
#                                     that the clients' requests still have the shape of
#                                     the golden cases the translators are tested with
#   scripts/clients-e2e.sh --capture  the same, then rewrite those golden cases
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_CODE_VERSION=2.1.332
CODEX_VERSION=0.171.0
mode=check
[[ "${1:-}" == "--capture" ]] && mode=capture

target="${CARGO_TARGET_DIR:-target}"
clients="$PWD/$target/clients"
installed() { node -e "process.exit(require('$clients/node_modules/$1/package.json').version === '$2' ? 0 : 1)" 2>/dev/null; }
if ! installed @anthropic-ai/claude-code "$CLAUDE_CODE_VERSION" || ! installed @openai/codex "$CODEX_VERSION"; then
  echo "installing Claude Code $CLAUDE_CODE_VERSION and Codex CLI $CODEX_VERSION into $clients (npm)" >&2
  mkdir -p "$clients"
  # Versions are explicit: on Node 20, npm would otherwise pick an old Claude Code.
  npm install --prefix "$clients" --no-audit --no-fund --loglevel=error \
    "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION" "@openai/codex@$CODEX_VERSION" >&2
fi
claude="$clients/node_modules/.bin/claude"
codex="$clients/node_modules/.bin/codex"

cargo build --quiet --bin keyway --example mock_upstream
bin="$target/debug"

work=$(mktemp -d "${TMPDIR:-/tmp}/keyway-clients.XXXXXX")
pids=()
cleanup() {
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

read -r mock_port proxy_port admin_port < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(3)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in ss])')

# The demo config as README's guides use it, on free ports.
sed -e "s/127.0.0.1:18080/127.0.0.1:$mock_port/; s/127.0.0.1:8787/127.0.0.1:$proxy_port/; s/127.0.0.1:9787/127.0.0.1:$admin_port/" \
    -e "s|^dir = \"policies\"|dir = \"$PWD/examples/demo/policies\"|" \
    examples/demo/keyway.toml > "$work/keyway.toml"
export KEYWAY_DEMO_CLIENT_KEY="demo-client-key" KEYWAY_DEMO_OPENAI_KEY_1="demo-openai-key-1" \
  KEYWAY_DEMO_OPENAI_KEY_2="demo-openai-key-2" KEYWAY_DEMO_ANTHROPIC_KEY="demo-anthropic-key" \
  KEYWAY_DEMO_DEEPSEEK_KEY="demo-deepseek-key"

record="$work/upstream.jsonl"
"$bin/examples/mock_upstream" --listen "127.0.0.1:$mock_port" --chunks 4 \
  --call-tools Read,exec_command --record "$record" >"$work/mock.log" 2>&1 &
pids+=($!)
RUST_LOG=info "$bin/keyway" run --config "$work/keyway.toml" >"$work/keyway.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$proxy_port/v1/models" && break
  sleep 0.1
done

mkdir -p "$work/home" "$work/codex" "$work/project"
cat >"$work/codex/config.toml" <<EOF
model_provider = "keyway"
model = "gpt-5"

[model_providers.keyway]
name = "Keyway"
base_url = "http://127.0.0.1:$proxy_port/v1"
env_key = "KEYWAY_API_KEY"
wire_api = "responses"
EOF

failed=0
run_failed=0
fail() { echo "clients e2e: FAIL $*" >&2; failed=1; run_failed=1; }
lines_before=0
log_before=0
# Which upstream paths the run's requests reached, and whether Keyway translated them.
reached() { tail -n +"$((lines_before + 1))" "$record" 2>/dev/null | python3 -c '
import json, sys
print(" ".join(sorted({json.loads(l)["path"] for l in sys.stdin if l.strip()})))'; }
check_run() {
  local name=$1 want_path=$2 want_via=$3 out=$4
  local got
  got=$(reached)
  [[ "$got" == "$want_path" ]] || fail "$name: reached '$got', expected '$want_path'"
  # This run's request log lines: each names the translation, or none.
  local logged
  logged=$(tail -n +"$((log_before + 1))" "$work/keyway.log" | grep "keyway::request" || true)
  if [[ -n "$want_via" ]]; then
    grep -q "via $want_via" <<<"$logged" || fail "$name: Keyway logged no '$want_via' translation"
  elif grep -q " via " <<<"$logged"; then
    fail "$name: translated, but the provider speaks the client's format"
  fi
  grep -q "Done: tok0 tok1 tok2 tok3" <<<"$out" || fail "$name: the client did not print the answer after its tool call: $out"
  ((run_failed)) || echo "clients e2e: $name ok ($got${want_via:+, via $want_via})"
  run_failed=0
  lines_before=$(cat "$record" 2>/dev/null | wc -l)
  log_before=$(wc -l <"$work/keyway.log")
}

claude_run() {
  local name=$1 model=$2 want_path=$3 want_via=$4
  local out
  out=$(cd "$work/project" && env HOME="$work/home" ANTHROPIC_BASE_URL="http://127.0.0.1:$proxy_port" \
    ANTHROPIC_API_KEY="$KEYWAY_DEMO_CLIENT_KEY" ${model:+ANTHROPIC_MODEL="$model"} \
    CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_AUTOUPDATER=1 \
    timeout 180 "$claude" -p "say hello" --output-format json </dev/null 2>"$work/$name.err") \
    || fail "$name: exit $? ($(tail -c 400 "$work/$name.err"))"
  out=$(python3 -c 'import json,sys; d=json.loads(sys.stdin.read() or "{}"); print(d.get("result"), "turns:", d.get("num_turns"), "error:", d.get("is_error"))' <<<"$out" 2>&1)
  grep -q "error: False" <<<"$out" || fail "$name: $out"
  check_run "$name" "$want_path" "$want_via" "$out"
}

codex_run() {
  local name=$1 model=$2 want_path=$3 want_via=$4
  shift 4
  local out
  out=$(cd "$work/project" && HOME="$work/home" CODEX_HOME="$work/codex" KEYWAY_API_KEY="$KEYWAY_DEMO_CLIENT_KEY" \
    timeout 180 "$codex" exec --skip-git-repo-check --color never -m "$model" "$@" </dev/null 2>"$work/$name.err") \
    || fail "$name: exit $? ($(tail -c 400 "$work/$name.err"))"
  check_run "$name" "$want_path" "$want_via" "$out"
}

claude_run claude-code-anthropic "" /v1/messages ""
claude_run claude-code-compatible deepseek-chat /v1/chat/completions messages-to-chat
codex_run codex-openai gpt-5 /v1/responses "" "say hello"
codex_run codex-anthropic claude-sonnet-4-5 /v1/messages responses-to-messages "say hello"
codex_run codex-compatible deepseek-chat /v1/chat/completions responses-to-chat "say hello"
# Resume: Codex resends the whole history, with the tool call and its output.
codex_run codex-resume-anthropic claude-sonnet-4-5 /v1/messages responses-to-messages resume --last "say hello again"
tail -n 1 "$record" | python3 -c '
import json, sys
body = json.loads(sys.stdin.read())["body"]
kinds = [b["type"] for m in body["messages"] if isinstance(m["content"], list) for b in m["content"]]
assert kinds.count("tool_use") >= 2 and kinds.count("tool_result") >= 2, kinds
' || fail "codex-resume-anthropic: the resumed history lacks the earlier tool calls"

cp "$record" "$target/clients-e2e-upstream.jsonl"
python3 tests/clients/traffic.py "$mode" "$record" tests/golden || failed=1
if ((failed)); then
  echo "--- keyway log (tail)" >&2
  tail -n 30 "$work/keyway.log" >&2
  exit 1
fi
echo "clients e2e: 6 passed, 0 failed"
