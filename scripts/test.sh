#!/usr/bin/env bash
# Runs every test of gridpow: the Rust workspace (unit, integration, property,
# simulator, real Mosquitto/PostgreSQL/Chromium tests), the no_std builds of the
# core for ESP32-C3/C6, the no_std core's checks on an RV32IMC CPU under QEMU,
# and the independent Python check of the test vectors.
# Installs missing system packages when run as root on Debian, else says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh

echo "== cargo test (workspace)" >&2
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --cargo-profile ci "$@"
  cargo test --workspace --doc --profile ci
else
  cargo test --workspace --no-fail-fast --profile ci "$@"
fi

echo "== no_std core for ESP32-C3 (riscv32imc) and ESP32-C6 (riscv32imac)" >&2
for t in riscv32imc-unknown-none-elf riscv32imac-unknown-none-elf; do
  cargo build -q -p gridpow-proto -p gridpow-metering --no-default-features --target "$t"
  cargo build -q -p gridpow-proto -p gridpow-metering --target "$t"
  # The standalone relay application the firmware runs (no host adapters).
  cargo build -q -p gridpow-relay-app --no-default-features --target "$t"
done
# The standalone relay's TLS + MQTT transport (no atomics needed on the C3).
cargo build -q -p gridpow-relay-net --target riscv32imc-unknown-none-elf

echo "== no_std core on a real RV32IMC CPU (QEMU virt): vectors, metering, state log" >&2
scripts/qemu-check.sh

echo "== test vectors, independent Python implementation" >&2
python3 test-vectors/verify.py | tail -1
# The transparency log's checkpoints, cosignatures, tiles and proofs
# (log.json), by an implementation written from the C2SP texts alone.
python3 test-vectors/c2sp.py --self-test | tail -1
python3 test-vectors/c2sp.py | tail -1
