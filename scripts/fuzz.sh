#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ one after the other, each for FUZZ_SECONDS (docs/guide/fuzzing.md).
#
#   scripts/fuzz.sh                      # every target, 600 s each
#   FUZZ_SECONDS=60 scripts/fuzz.sh npy  # chosen targets, 60 s each
#   FUZZ_SANITIZER=none scripts/fuzz.sh  # without AddressSanitizer (default: address)
#
# Works on stable Rust: cargo-fuzz needs nightly-only flags (-Zsanitizer, sancov passes), which
# RUSTC_BOOTSTRAP=1 unlocks. Installs what it needs: a C++ compiler (libFuzzer is built from
# source by libfuzzer-sys) and cargo-fuzz (from crates.io). The seed corpus fuzz/corpus/<target>
# is only read; what the fuzzer finds goes to fuzz/work/corpus/<target> (kept between runs,
# ignored by git), crashes to fuzz/artifacts/<target>/, a log per target to fuzz/work/<target>.log.
# Exit status 1 when any target crashed.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${FUZZ_SECONDS:-600}
SANITIZER=${FUZZ_SANITIZER:-address}
# Huge allocations and memory growth count as crashes (an input must not make us allocate GBs).
LIBFUZZER_OPTS=(-max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -malloc_limit_mb=1024 -timeout=30
  -print_final_stats=1)

scripts/apt-install.sh g++ make
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
# cargo-fuzz cross-compiles for the host triple: host tools go in target/release, the fuzz
# builds in target/<triple>/release, so a shared CARGO_TARGET_DIR is fine; default fuzz/target.
mapfile -t all < <(cd fuzz && cargo fuzz list)
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=("${all[@]}")

mkdir -p fuzz/work
failed=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/work/corpus/$t"
  log="fuzz/work/$t.log"
  echo "== $t: ${SECONDS_EACH}s, sanitizer $SANITIZER, log $log"
  (cd fuzz && cargo fuzz build --sanitizer "$SANITIZER" "$t")
  start=$(date +%s)
  if (cd fuzz && cargo fuzz run --sanitizer "$SANITIZER" "$t" "work/corpus/$t" "corpus/$t" -- "${LIBFUZZER_OPTS[@]}") \
    >"$log" 2>&1; then
    status=ok
  else
    status=CRASH
    failed+=("$t")
  fi
  end=$(date +%s)
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  corpus=$(find "fuzz/work/corpus/$t" -type f | wc -l)
  echo "   $t: $status after $((end - start))s, $execs executions, $corpus inputs in fuzz/work/corpus/$t"
  # The panic or sanitizer report and the artifact, not the Debug dump of the input.
  [ "$status" = ok ] || grep -E -A1 "panicked at|ERROR: |Test unit written to" "$log" | cut -c1-300 | head -n 12
done

if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]} (inputs in fuzz/artifacts/<target>/; see docs/guide/fuzzing.md)" >&2
  exit 1
fi
echo "no crashes"
