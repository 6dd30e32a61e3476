#!/usr/bin/env bash
# Runs every cargo-fuzz target of firmware/fuzz and devproto/fuzz for a given time each.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# How it builds on a stable-only machine: cargo-fuzz passes unstable flags to rustc
# (`-Zsanitizer=address`, ...) and would need nightly; RUSTC_BOOTSTRAP=1 makes the stable
# compiler accept them. Checked with rustc 1.95.0 (stable) and cargo-fuzz 0.13.2 on x86_64
# Linux, AddressSanitizer on; no nightly toolchain is used. cargo-fuzz is installed with
# `cargo install cargo-fuzz --locked` when missing (about 2 minutes on 2 cores); libfuzzer-sys
# compiles libFuzzer, so a C++ compiler must be present. FUZZ_BUILD_FLAGS adds flags to
# `cargo fuzz build`/`run` (e.g. `--sanitizer none`, faster but blind to memory errors in
# dependencies' unsafe code).
#
# Both fuzz crates build into target/fuzz (one directory, so what they share builds once); each
# has its own Cargo.lock, seeded from the workspace's. Corpora grow in <crate>/fuzz/corpus/ and
# are kept between runs; a crashing input is saved in <crate>/fuzz/artifacts/<target>/ (both
# git-ignored). Every target runs even after one fails; the script then exits 1 and names the
# failures.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET="${1:-60}"
shift || true
ONLY=("$@")
CRATES=(firmware devproto)
TARGET_DIR="$PWD/target/fuzz"
read -r -a BUILD_FLAGS <<<"${FUZZ_BUILD_FLAGS:-}"

export RUSTC_BOOTSTRAP=1
export CARGO_INCREMENTAL=0

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

wanted() {
  [ ${#ONLY[@]} -eq 0 ] && return 0
  local t
  for t in "${ONLY[@]}"; do [ "$t" = "$1" ] && return 0; done
  return 1
}

failed=()
summary=()
for crate in "${CRATES[@]}"; do
  targets=()
  while read -r t; do wanted "$t" && targets+=("$t"); done < <(cd "$crate" && cargo fuzz list)
  [ ${#targets[@]} -eq 0 ] && continue
  start=$SECONDS
  (cd "$crate" && cargo fuzz build "${BUILD_FLAGS[@]}" --target-dir "$TARGET_DIR")
  echo "fuzz: built $crate/fuzz in $((SECONDS - start)) s"
  for t in "${targets[@]}"; do
    echo "fuzz: $crate/$t for ${SECONDS_PER_TARGET} s"
    log=$(mktemp)
    if (cd "$crate" && cargo fuzz run "${BUILD_FLAGS[@]}" --target-dir "$TARGET_DIR" "$t" -- \
        -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1) >"$log" 2>&1; then
      runs=$(grep -o 'Done [0-9]* runs' "$log" | tail -1 | tr -dc '0-9')
      summary+=("$crate/$t: ${runs:-?} runs, ok")
    else
      tail -n 40 "$log" >&2
      summary+=("$crate/$t: FAILED (input in $crate/fuzz/artifacts/$t/)")
      failed+=("$crate/$t")
    fi
    rm -f "$log"
  done
done

if [ ${#summary[@]} -eq 0 ]; then
  echo "fuzz: no target matched: ${ONLY[*]}" >&2
  exit 1
fi
printf 'fuzz: %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failed: ${failed[*]}" >&2
  exit 1
fi
