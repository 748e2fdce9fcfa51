#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS each (default 60) with cargo
# fuzz (libFuzzer, AddressSanitizer), starting from the committed seeds in
# fuzz/corpus/TARGET; what a run learns goes to target/fuzz-corpus/TARGET,
# kept between runs, never into the repository. Prints one line per target
# (runs, speed, coverage) and exits non-zero on the first crash, whose input
# libFuzzer saves under fuzz/artifacts/TARGET/.
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
# Installs cargo-fuzz from crates.io when missing. libFuzzer needs nightly
# compiler flags: the nightly toolchain when rustup has one, else the stable
# one with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}
shift || true
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2; }

cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi

cd fuzz
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <("${fuzz[@]}" list)
"${fuzz[@]}" build -O
for target in "${targets[@]}"; do
  learned=../target/fuzz-corpus/$target
  mkdir -p "$learned" "corpus/$target"
  log=$(mktemp)
  if ! "${fuzz[@]}" run -O "$target" "$learned" "corpus/$target" -- \
    -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 40 "$log"
    echo "fuzz: $target: CRASH (input saved under fuzz/artifacts/$target/)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log")
  coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  echo "fuzz: $target: ${runs:-?} runs in ${seconds} s (${speed:-?}/s), ${coverage:-cov: ?}, no crash"
  rm -f "$log"
done
