#!/usr/bin/env bash
# Runs gridpow's no_std code on a real RV32IMC CPU (the ESP32-C3's instruction
# set) under QEMU: builds firmware/qemu-check for riscv32imc-unknown-none-elf
# in release and boots it on QEMU's generic `virt` machine; the test output
# and exit code come back through semihosting. Exits non-zero when a test
# fails, panics, traps or times out.
#
# Environment (all optional):
#   GRIDPOW_QEMU_TARGET_DIR  cargo target dir (default: "$CARGO_TARGET_DIR/../qemu-target"
#                            when CARGO_TARGET_DIR is set, else /var/tmp/gridpow-ci/qemu-target)
#   GRIDPOW_QEMU_TIMEOUT     seconds before the run is killed (default: 600; a run takes seconds, a loaded machine more)
#
# Needs qemu-system-riscv32 (Debian: qemu-system-misc; scripts/deps.sh installs it)
# and the riscv32imc target (installed here if missing).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
crate="$repo/firmware/qemu-check"
target=riscv32imc-unknown-none-elf
if [ -n "${GRIDPOW_QEMU_TARGET_DIR:-}" ]; then
    target_dir=$GRIDPOW_QEMU_TARGET_DIR
elif [ -n "${CARGO_TARGET_DIR:-}" ]; then
    target_dir="$(dirname "$CARGO_TARGET_DIR")/qemu-target"
else
    target_dir=/var/tmp/gridpow-ci/qemu-target
fi
timeout_s=${GRIDPOW_QEMU_TIMEOUT:-600}

log() { printf '[qemu-check] %s\n' "$*" >&2; }

if ! command -v qemu-system-riscv32 >/dev/null 2>&1; then
    log "qemu-system-riscv32 not found; install it with: sudo apt-get install qemu-system-misc (or run scripts/deps.sh as root)"
    exit 1
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$target"; then
    rustup target add "$target" >/dev/null
fi

t0=$(date +%s)
(cd "$crate" && CARGO_TARGET_DIR="$target_dir" cargo build -q --release --locked --target "$target")
elf="$target_dir/$target/release/gridpow-qemu-check"
log "built $elf in $(($(date +%s) - t0)) s ($(stat -c %s "$elf") bytes with debug info)"

# An RV32IMC CPU: the generic rv32 without atomics (A) and floating point (F, D).
# QEMU 8.0 and later also enable Zawrs (needs A) and Zfa (needs F) by default and
# refuse to start unless they are switched off too (8.0/8.1 spell them Zawrs, Zfa);
# QEMU 7.2 (Debian 12) does not know them and refuses the switches.
cpu=rv32,a=false,f=false,d=false
read -r qemu_major qemu_minor < <(qemu-system-riscv32 --version |
    sed -n '1s/.*version \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p') || true
if [ "${qemu_major:-0}" -gt 8 ] || { [ "${qemu_major:-0}" -eq 8 ] && [ "${qemu_minor:-0}" -ge 2 ]; }; then
    cpu+=",zawrs=false,zfa=false"
elif [ "${qemu_major:-0}" -eq 8 ]; then
    cpu+=",Zawrs=false,Zfa=false"
fi
log "QEMU ${qemu_major:-?}.${qemu_minor:-?}, -cpu $cpu"

t0=$(date +%s%N)
status=0
timeout "$timeout_s" qemu-system-riscv32 \
    -machine virt -cpu "$cpu" -m 16M -bios none -nographic \
    -semihosting-config enable=on,target=native -kernel "$elf" </dev/null || status=$?
ms=$((($(date +%s%N) - t0) / 1000000))
case "$status" in
    0) log "all checks passed on riscv32imc in $ms ms" ;;
    124) log "QEMU timed out after $timeout_s s (a hang, or an endless loop)" ;;
    *) log "FAILED with exit code $status after $ms ms (1: a check failed, 101: panic, 2: CPU trap)" ;;
esac
exit "$status"
