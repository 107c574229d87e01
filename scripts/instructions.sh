#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: deterministic where timings on
# this shared machine are not, so it can tell a 3 % change from noise. Keyway (profiling
# build: release with line tables) runs under callgrind in front of the bundled mock
# upstream; after a warm-up the counters are zeroed, N chat requests are sent (4 at a
# time), and the counters are dumped. Prints Ir per request and the functions that cost
# the most themselves. Installs valgrind and hey from Debian if missing.
#   scripts/instructions.sh [N]          shipped policy (default N = 2000)
#   POLICY_DIR=dir scripts/instructions.sh [N]   another policy directory
# Note: valgrind's CPU model lacks SHA-NI and some SIMD paths, so hashing and memchr
# count higher than they cost on real hardware.
set -euo pipefail
cd "$(dirname "$0")/.."
n="${1:-2000}"

missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v hey >/dev/null || missing+=(hey)
if ((${#missing[@]})); then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --profile profiling --quiet --bin keyway --example mock_upstream
bin="${CARGO_TARGET_DIR:-target}/profiling"
work=target/instructions
rm -rf "$work" && mkdir -p "$work"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up=$(port) kw=$(port)
policy=""
[[ -n "${POLICY_DIR:-}" ]] && policy="[policy]
dir = \"$(realpath "$POLICY_DIR")\""
cat > "$work/keyway.toml" <<EOF
[server]
listen = "127.0.0.1:$kw"
[log]
level = "warn"
[auth]
clients = [{ name = "ipr", key = "env:IPR_CLIENT_KEY" }]
$policy
[[provider]]
id = "openai"
kind = "openai"
base_url = "http://127.0.0.1:$up/v1"
models = ["gpt-4o"]
[[provider.connection]]
id = "main"
keys = [{ id = "k0", key = "env:IPR_UPSTREAM_KEY" }, { id = "k1", key = "env:IPR_UPSTREAM_KEY" }]
EOF
export IPR_CLIENT_KEY=ipr-client-key IPR_UPSTREAM_KEY=sk-ipr-upstream-key

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM
MOCK_THREADS=1 "$bin/examples/mock_upstream" --listen "127.0.0.1:$up" > "$work/mock.log" 2>&1 &
pids+=($!)
valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.%p" \
  "$bin/keyway" run --config "$work/keyway.toml" > "$work/keyway.log" 2>&1 &
vg=$!
pids+=($vg)
url="http://127.0.0.1:$kw/v1/chat/completions"
for _ in $(seq 600); do
  curl -s -o /dev/null "http://127.0.0.1:$kw/v1/models" -H "Authorization: Bearer $IPR_CLIENT_KEY" && break
  sleep 0.1
done
body='{"model":"gpt-4o","messages":[{"role":"user","content":"Say hello"}]}'
load() {
  hey -n "$1" -c 4 -m POST -T application/json -H "Authorization: Bearer $IPR_CLIENT_KEY" -d "$body" "$url"
}
load 300 > /dev/null
callgrind_control -z "$vg" > /dev/null 2>&1
out=$(load "$n")
grep -q "\[200\]	$n responses" <<< "$out" || { echo "not every request succeeded:"; echo "$out"; exit 1; }
callgrind_control -d "$vg" > /dev/null 2>&1
dump=$(ls "$work"/callgrind.*.1 | head -1)
total=$(awk '/^(summary|totals):/ {print $2; exit}' "$dump")
python3 -c "print(f'{$total / $n:,.0f} instructions per request ($n requests, $total in all)')"
echo "functions by their own cost (inlined callees included):"
python3 scripts/bench/callgrind_self.py "$dump" 25 "$n"
