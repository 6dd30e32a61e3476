#!/usr/bin/env bash
# Tier 2: conformance against real outside peers.
#
# Installs Debian's mosquitto, prometheus, strace and postgresql and, in a Python >= 3.12 virtualenv,
# ESPHome's own uploader (the `esphome` package) and `esptool`; then runs the tests of the
# `ota-conformance` crate, which exist only with `--features conformance`. Every test there fails
# (never skips) when its peer is missing. Then it runs every fuzz target briefly (scripts/fuzz.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

ESPHOME_VERSION="${ESPHOME_VERSION:-2026.10.0}"
ESPTOOL_VERSION="${ESPTOOL_VERSION:-5.6.0}"
VENV="${OTA_CONFORMANCE_VENV:-$PWD/target/conformance-venv}"

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# 1. Debian peers. The packages' own services are not used: each test starts its own instance
#    on a free loopback port with a throwaway config.
need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v prometheus >/dev/null 2>&1 || need_apt+=(prometheus)
# durability.rs runs otad and ota-agent under strace to see their fsyncs.
command -v strace >/dev/null 2>&1 || need_apt+=(strace)
# postgres_store.rs starts a throwaway PostgreSQL cluster (initdb, pgbench for the store bench).
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
command -v initdb >/dev/null 2>&1 || [ -n "$(pg_bin)" ] || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
export PATH="$PATH:/usr/sbin"
# Debian keeps initdb and pg_ctl out of the PATH, in /usr/lib/postgresql/<version>/bin.
if ! command -v initdb >/dev/null 2>&1; then
  [ -n "$(pg_bin)" ] || { echo "conformance: PostgreSQL installed but no /usr/lib/postgresql/*/bin" >&2; exit 1; }
  export PATH="$(pg_bin):$PATH"
fi

# 2. Python peers. ESPHome releases from 2026.7 need Python >= 3.12.
find_python312() {
  # Real interpreters first (pyenv shims may exist without a usable version behind them); each
  # candidate must actually run and be >= 3.12.
  local candidates=()
  for p in "$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 /usr/bin/python3.1[2-9] /usr/local/bin/python3.1[2-9]; do
    [ -x "$p" ] && candidates+=("$p")
  done
  for p in python3.13 python3.12 python3; do
    command -v "$p" >/dev/null 2>&1 && candidates+=("$(command -v "$p")")
  done
  for p in "${candidates[@]}"; do
    if "$p" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; then
      echo "$p"
      return 0
    fi
  done
  return 1
}
if [ ! -x "$VENV/bin/python" ]; then
  PY=$(find_python312) || { echo "conformance: no Python >= 3.12 found (needed by esphome >= 2026.7)" >&2; exit 1; }
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check "esphome==${ESPHOME_VERSION}"
# esptool gets a virtualenv of its own: esphome pins the esptool it was released with (2026.10.0
# pins 5.4.0), which pip cannot install next to esptool==${ESPTOOL_VERSION}.
ESPTOOL_VENV="${OTA_CONFORMANCE_ESPTOOL_VENV:-$PWD/target/conformance-esptool-venv}"
[ -x "$ESPTOOL_VENV/bin/python" ] || "$VENV/bin/python" -m venv "$ESPTOOL_VENV"
"$ESPTOOL_VENV/bin/pip" install -q --disable-pip-version-check "esptool==${ESPTOOL_VERSION}"
export OTA_CONFORMANCE_ESPTOOL="$ESPTOOL_VENV/bin/esptool"
export OTA_CONFORMANCE_PYTHON="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"

# 3. The tests.
cargo test --locked -p ota-conformance --features conformance -- --test-threads 2 "$@"

# 4. Every fuzz target for a short while (OTA_FUZZ_SECONDS each, 20 by default), so the fuzz
#    crates keep building and the parsers keep surviving arbitrary input. Longer runs:
#    `scripts/fuzz.sh 600`. OTA_FUZZ_SECONDS=0 leaves this step out, and says so.
if [ "${OTA_FUZZ_SECONDS:-20}" = 0 ]; then
  echo "conformance: fuzz targets NOT run (OTA_FUZZ_SECONDS=0)"
else
  scripts/fuzz.sh "${OTA_FUZZ_SECONDS:-20}"
fi
