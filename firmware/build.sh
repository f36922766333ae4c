#!/usr/bin/env bash
# Builds the gridpow meter and relay firmware for ESP32-C3 and ESP32-C6 in
# release, runs rustfmt and clippy (-D warnings) on them and on the QEMU check
# crate (firmware/qemu-check, run by scripts/qemu-check.sh), packages flashable
# app images with `espflash save-image`, prints their sizes and fails if one
# exceeds its budget (meter 600 KiB, relay 1 MiB).
#
# Environment (all optional):
#   GRIDPOW_FW_TARGET_PREFIX  target dir prefix; each chip gets "<prefix>-<chip>"
#                             (default: <repo>/target/fw)
#   GRIDPOW_FW_OUT            where images go (default: <repo>/target/firmware)
#   GRIDPOW_QEMU_TARGET_DIR   target dir of firmware/qemu-check (default: "qemu-target"
#                             beside the prefix, the one scripts/qemu-check.sh uses in CI)
#   GRIDPOW_FW_JOBS           cargo -j (default: 2)
#   GRIDPOW_FW_CHIPS          chips to build (default: "esp32c3 esp32c6")
#   ESPFLASH_ROOT             cargo install root caching espflash
#                             (default: ~/.cache/gridpow/espflash)
#
# Needs the riscv32imc/riscv32imac targets (installed here if missing) and
# crates.io. Classic ESP32 and ESP32-S3 (Xtensa) need Espressif's toolchain,
# which cannot be installed on this machine, so they are not built.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)
prefix=${GRIDPOW_FW_TARGET_PREFIX:-$repo/target/fw}
out=${GRIDPOW_FW_OUT:-$repo/target/firmware}
jobs=${GRIDPOW_FW_JOBS:-2}
chips=${GRIDPOW_FW_CHIPS:-esp32c3 esp32c6}
espflash_root=${ESPFLASH_ROOT:-$HOME/.cache/gridpow/espflash}
espflash_version=4.7.0
meter_budget=$((600 * 1024))
relay_budget=$((1024 * 1024))

log() { printf '[firmware] %s\n' "$*"; }
elapsed() { echo $(($(date +%s) - $1))s; }

for t in riscv32imc-unknown-none-elf riscv32imac-unknown-none-elf; do
    if ! rustup target list --installed | grep -qx "$t"; then
        log "installing target $t"
        rustup target add "$t"
    fi
done

export PATH="$espflash_root/bin:$PATH"
if ! espflash --version 2>/dev/null | grep -q "$espflash_version"; then
    log "installing espflash $espflash_version into $espflash_root (takes minutes, cached afterwards)"
    t0=$(date +%s)
    CARGO_TARGET_DIR="$prefix-espflash-build" \
        cargo install espflash --locked --version "$espflash_version" --root "$espflash_root" -j "$jobs"
    log "espflash installed in $(elapsed "$t0")"
fi

mkdir -p "$out"
sizes=()
status=0
for crate in meter relay qemu-check; do
    log "rustfmt --check firmware/$crate"
    (cd "$here/$crate" && cargo fmt --check)
done

t0=$(date +%s)
(cd "$here/qemu-check" && CARGO_TARGET_DIR="${GRIDPOW_QEMU_TARGET_DIR:-$(dirname "$prefix")/qemu-target}" \
    cargo clippy --release --locked -j "$jobs" --target riscv32imc-unknown-none-elf -- -D warnings)
log "clippy qemu-check for riscv32imc clean in $(elapsed "$t0")"

for chip in $chips; do
    case "$chip" in
        esp32c3) target=riscv32imc-unknown-none-elf ;;
        esp32c6) target=riscv32imac-unknown-none-elf ;;
        *) echo "unknown chip $chip" >&2; exit 2 ;;
    esac
    for crate in meter relay; do
        dir="$here/$crate"
        flags=(--release --locked -j "$jobs" --target "$target" --no-default-features --features "$chip")
        export CARGO_TARGET_DIR="$prefix-$chip"
        t0=$(date +%s)
        log "build $crate for $chip"
        (cd "$dir" && cargo build "${flags[@]}")
        log "built $crate for $chip in $(elapsed "$t0")"
        t0=$(date +%s)
        (cd "$dir" && cargo clippy "${flags[@]}" -- -D warnings)
        log "clippy $crate for $chip clean in $(elapsed "$t0")"
        elf="$CARGO_TARGET_DIR/$target/release/gridpow-$crate"
        img="$out/gridpow-$crate-$chip.bin"
        espflash save-image --chip "$chip" --partition-table "$here/partitions.csv" "$elf" "$img" >/dev/null
        bytes=$(stat -c %s "$img")
        budget=$meter_budget
        [ "$crate" = relay ] && budget=$relay_budget
        verdict=ok
        if [ "$bytes" -gt "$budget" ]; then
            verdict="OVER BUDGET ($budget)"
            status=1
        fi
        sizes+=("$(printf '%-6s %-8s %9d bytes %7.1f KiB  budget %5d KiB  %s' \
            "$crate" "$chip" "$bytes" "$(awk "BEGIN{print $bytes/1024}")" $((budget / 1024)) "$verdict")")
    done
done
unset CARGO_TARGET_DIR

log "images in $out (flash with: espflash flash --chip <chip> --partition-table firmware/partitions.csv <elf>)"
for s in "${sizes[@]}"; do
    log "$s"
done
exit "$status"
