#!/usr/bin/env bash
# Builds every fuzz target with cargo-fuzz (nightly) and runs each for N seconds,
# seeded with the known-answer vectors. Installs cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-15}"
if ! rustup toolchain list | grep -q nightly; then
  echo "fuzz: a nightly toolchain is needed: rustup toolchain install nightly" >&2; exit 1
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
python3 seed.py
targets=$(cargo +nightly fuzz list)
# `server` builds the grid server's MQTT-payload target too.
cargo +nightly fuzz build -O --features server 2>&1 | tail -1
for t in $targets; do
  cargo +nightly fuzz run -O --features server "$t" "corpus/$t" -- -max_total_time="$secs" -max_len=4096 2>&1 | grep -E "^(Done|#[0-9]+ +DONE)|ERROR|panicked" | tail -1
  echo "fuzz: $t ran ${secs}s without a crash"
done
