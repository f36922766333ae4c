#!/usr/bin/env bash
# Builds the gridpow meter and relay firmware for ESP32-C3 and ESP32-C6 in
# release, runs rustfmt and clippy (-D warnings) on them and on the QEMU check
# crate (firmware/qemu-check, run by scripts/qemu-check.sh), packages flashable
# app images with `espflash save-image`, prints their sizes and their static
# RAM, and fails if one exceeds its budget (image: meter 600 KiB, relay 1 MiB,
# espflash's app size; static RAM: 340 KiB on the C3, 468 KiB on the C6, see
# static_ram below).
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
# Needs the riscv32imc/riscv32imac targets (installed here if missing),
# crates.io, and binutils' readelf and nm (they read any ELF) for the RAM report. Classic ESP32 and ESP32-S3 (Xtensa) need Espressif's toolchain,
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
# Static RAM budgets per chip (see static_ram): the linker scripts give the
# app 377 KiB of SRAM on the C3 (313 KiB + 64 KiB reclaimed from the
# bootloader) and 505 KiB on the C6; the stack gets what static RAM leaves,
# and the budgets keep at least 37 KiB of it.
ram_budget_esp32c3=$((340 * 1024))
ram_budget_esp32c6=$((468 * 1024))

log() { printf '[firmware] %s\n' "$*"; }

# static_ram CHIP ELF: prints "STATIC HEAP STACK" in bytes. Static RAM is every
# allocated section placed in the chip's internal SRAM at link time: .data*,
# .bss* (with esp-alloc's heap arrays), .noinit, the heap reclaimed from the
# bootloader (.dram2_uninit) and, on the C3, the RAM its IRAM code occupies
# (.rwdata_dummy mirrors it on the data bus). The stack (.stack) is what is
# left and is reported apart; flash-mapped sections and debug info are not RAM.
static_ram() {
    local chip=$1 elf=$2 lo hi
    case "$chip" in
        esp32c3) lo=0x3FC80000 hi=0x3FCE0000 ;; # DRAM bus view of the SRAM
        esp32c6) lo=0x40800000 hi=0x40880000 ;; # HP SRAM
    esac
    # Portable hex (mawk has no strtonum).
    local hex='function hex(s,  i, n) { n = 0; s = tolower(s); for (i = 1; i <= length(s); i++) n = n * 16 + index("0123456789abcdef", substr(s, i, 1)) - 1; return n }'
    local heap
    # esp-alloc's heap_allocator! arrays are statics named HEAP in the caller.
    heap=$(nm -S --defined-only "$elf" | awk "$hex"' $4 ~ /4HEAP17h/ && $4 !~ /esp_alloc/ { s += hex($2) } END { print s + 0 }')
    readelf -S -W "$elf" | sed -n 's/^ *\[ *[0-9]*\] //p' | awk -v lo=$((lo)) -v hi=$((hi)) -v heap="$heap" "$hex"'
        {
            addr = hex($3); size = hex($5)
            if (addr < lo || addr >= hi || size == 0) next
            if ($1 == ".stack") { stack += size; next }
            static += size
        }
        END { printf "%d %d %d\n", static, heap, stack }'
}
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
        sizes+=("$(printf '%-6s %-8s image %9d B %7.1f KiB  budget %5d KiB  %s' \
            "$crate" "$chip" "$bytes" "$(awk "BEGIN{print $bytes/1024}")" $((budget / 1024)) "$verdict")")
        read -r ram heap stack < <(static_ram "$chip" "$elf")
        ram_budget_var=ram_budget_$chip
        ram_budget=${!ram_budget_var}
        verdict=ok
        if [ "$ram" -gt "$ram_budget" ]; then
            verdict="OVER BUDGET ($ram_budget)"
            status=1
        fi
        sizes+=("$(printf '%-6s %-8s RAM   %9d B %7.1f KiB  budget %5d KiB  %s (heap %d KiB; stack left %d KiB)' \
            "$crate" "$chip" "$ram" "$(awk "BEGIN{print $ram/1024}")" $((ram_budget / 1024)) "$verdict" \
            $((heap / 1024)) $((stack / 1024)))")
    done
done
unset CARGO_TARGET_DIR

log "images in $out (flash with: espflash flash --chip <chip> --partition-table firmware/partitions.csv <elf>)"
for s in "${sizes[@]}"; do
    log "$s"
done
exit "$status"
