#!/usr/bin/env bash
# Builds every libFuzzer target in fuzz/ on the stable toolchain and runs each one for a fixed
# time, failing on the first crash or failed property. What CI runs (15 s a target) and the
# long-run command (FUZZ_SECONDS=3600, say).
#
#   FUZZ_SECONDS   seconds per target (default 15)
#   FUZZ_TARGETS   space-separated target names (default: all of fuzz/fuzz_targets)
#   extra arguments are passed to libFuzzer (e.g. -jobs=2 -workers=2)
#
# Instrumentation is libFuzzer's coverage (the flags cargo-fuzz passes with `--sanitizer none`,
# all stable). No AddressSanitizer: that needs nightly, and the crate forbids unsafe code.
# Inputs found go to fuzz/corpus/<target> (git-ignored); committed seeds are fuzz/seeds/<target>;
# a crash is written to fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${FUZZ_SECONDS:-15}"
triple="$(rustc -vV | sed -n 's/^host: //p')"
flags=(
  --cfg fuzzing
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  -Cllvm-args=-sanitizer-coverage-stack-depth
  -Cllvm-args=-simplifycfg-branch-fold-threshold=0
)
# With an explicit --target, RUSTFLAGS reach the targets' code but not build scripts or
# procedural macros.
RUSTFLAGS="${flags[*]}" cargo build --locked --release --target "$triple" --bins

targets="${FUZZ_TARGETS:-$(ls fuzz_targets | sed 's/\.rs$//')}"
summary=()
for t in $targets; do
  mkdir -p "corpus/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  echo "== $t (${seconds}s)"
  if ! "target/$triple/release/$t" -max_total_time="$seconds" -print_final_stats=1 \
      -artifact_prefix="artifacts/$t/" "corpus/$t" "seeds/$t" "$@" >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz target $t failed; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)"
  cov="$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)"
  summary+=("$t: ${runs:-?} runs in ${seconds}s, ${cov:-cov: ?}")
done
printf '%s\n' "${summary[@]}"
