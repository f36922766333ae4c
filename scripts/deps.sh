#!/usr/bin/env bash
# Installs (as root, with apt) or explains what gridpow's tests need beyond Rust:
# Mosquitto (private broker instances), PostgreSQL server binaries (private
# instances), Chromium and ChromeDriver (dashboard tests), Python's `cryptography` (independent
# vector check), QEMU for riscv32 (the no_std core on an RV32IMC CPU,
# scripts/qemu-check.sh) and the riscv32 targets (no_std builds of the core).
set -euo pipefail

missing_pkgs=()
need() { command -v "$1" >/dev/null 2>&1 || [ -x "$2" ] || missing_pkgs+=("$3"); }
need mosquitto /usr/sbin/mosquitto mosquitto
need chromium /usr/bin/chromium chromium
# The fleet dashboard test drives Chromium over WebDriver.
need chromedriver /usr/bin/chromedriver chromium-driver
need qemu-system-riscv32 /usr/bin/qemu-system-riscv32 qemu-system-misc
# firmware/build.sh reads section and symbol sizes of the firmware ELFs.
need readelf /usr/bin/readelf binutils
if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  missing_pkgs+=(postgresql)
fi

if [ ${#missing_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "deps: installing ${missing_pkgs[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_pkgs[@]}" >/dev/null
  else
    echo "deps: missing ${missing_pkgs[*]}; install them with: sudo apt-get install ${missing_pkgs[*]}" >&2
    exit 1
  fi
fi

if ! python3 -c 'import cryptography' 2>/dev/null; then
  echo "deps: installing the Python package cryptography" >&2
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && [ "$(command -v python3)" = /usr/bin/python3 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-cryptography >/dev/null
  else
    python3 -m pip install --quiet cryptography 2>/dev/null \
      || python3 -m pip install --quiet --user --break-system-packages cryptography 2>/dev/null \
      || { echo "deps: could not install Python's cryptography; run: python3 -m pip install cryptography (or apt-get install python3-cryptography)" >&2; exit 1; }
  fi
fi

for t in riscv32imc-unknown-none-elf riscv32imac-unknown-none-elf; do
  rustup target list --installed 2>/dev/null | grep -qx "$t" || rustup target add "$t" >/dev/null
done
