#!/usr/bin/env bash
# Builds the release binary with profile-guided optimisation: an instrumented build serves
# a training mix (scripts/pgo/train.py: the demo config's APIs and translations, the
# translation corpus's real client bodies, the example policies) and the profile steers the
# final build's inlining and code layout. About 1.1x the throughput of a plain
# `cargo build --release` at 0.88x its CPU per request (BENCHMARKS.md, step 12); behaviour is
# the same, only the machine code differs.
#   scripts/build-release.sh     writes target/pgo/keyway (and prints its path)
# Needs the llvm-tools rustup component (installed here if missing) for llvm-profdata.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out="$root/target/pgo"

host=$(rustc -vV | sed -n 's/^host: //p')
profdata="$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"
if [[ ! -x "$profdata" ]]; then
  echo "installing the llvm-tools rustup component (llvm-profdata)" >&2
  rustup component add llvm-tools >&2
fi

rm -rf "$out/profiles"
mkdir -p "$out/profiles"
# The profile flags go with any flags in RUSTFLAGS, passed as CARGO_ENCODED_RUSTFLAGS
# (one flag per 0x1f-separated field) so that a path with spaces stays one argument. Like
# RUSTFLAGS, this overrides `build.rustflags` from cargo config files.
read -ra user_flags <<<"${RUSTFLAGS:-}"
encoded() {
  local IFS=$'\x1f'
  printf '%s' "${user_flags[*]+${user_flags[*]}${IFS}}$*"
}

echo "pgo: building the instrumented binary..." >&2
CARGO_ENCODED_RUSTFLAGS=$(encoded "-Cprofile-generate=$out/profiles") \
  cargo build --release --quiet --target-dir "$out/instrumented" --bin keyway
cargo build --release --quiet --example mock_upstream

echo "pgo: training..." >&2
python3 scripts/pgo/train.py --keyway "$out/instrumented/release/keyway" \
  --mock "${CARGO_TARGET_DIR:-$root/target}/release/examples/mock_upstream" >&2
"$profdata" merge -o "$out/keyway.profdata" "$out/profiles"

echo "pgo: building the optimised binary..." >&2
CARGO_ENCODED_RUSTFLAGS=$(encoded "-Cprofile-use=$out/keyway.profdata" "-Cllvm-args=-pgo-warn-missing-function=false") \
  cargo build --release --quiet --target-dir "$out/optimised" --bin keyway
cp "$out/optimised/release/keyway" "$out/keyway"
echo "$out/keyway"
