#!/usr/bin/env bash
# Builds every fuzz target with cargo-fuzz (nightly) and runs each for N seconds,
# seeded with the known-answer vectors. Installs cargo-fuzz if missing.
# On any failure it prints the end of that step's full log, so a CI log says
# whether a target crashed (and on which input) or the build itself broke.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-15}"
if ! rustup toolchain list | grep -q nightly; then
  echo "fuzz: a nightly toolchain is needed: rustup toolchain install nightly" >&2; exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
python3 seed.py
targets=$(cargo +nightly fuzz list)
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
fail() { echo "fuzz: $1; the last lines of its log:" >&2; tail -n 100 "$2" >&2; exit 1; }
# `server` builds the grid server's MQTT-payload target too.
cargo +nightly fuzz build -O --features server >"$logs/build" 2>&1 || fail "the build failed" "$logs/build"
tail -n 1 "$logs/build"
for t in $targets; do
  cargo +nightly fuzz run -O --features server "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=4096 \
    >"$logs/$t" 2>&1 || fail "$t crashed or did not run (a crashing input is saved under fuzz/artifacts/$t)" "$logs/$t"
  grep -E "^(Done|#[0-9]+ +DONE)" "$logs/$t" | tail -n 1 || true
  echo "fuzz: $t ran ${secs}s without a crash"
done
