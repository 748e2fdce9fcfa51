#!/usr/bin/env bash
# Runs the standard benchmarks and draws their plots: builds the release
# `cloud`, `bridge` and `bench` once, runs `target/release/bench all` (arguments are
# passed on: `scripts/bench.sh --smoke` for a short run), and writes
# target/bench/report.json and the PNG plots beside it. On a fresh machine it
# first installs nats-server and python3-venv from Debian, and matplotlib from
# PyPI into target/bench-venv.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
scripts/apt-install.sh "${missing[@]}"
export PATH="$PATH:/usr/sbin"

# What scripts/bench_plots.py draws with, in a venv of its own.
venv=target/bench-venv
plotting=matplotlib==3.10.9
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$plotting" ]; then
  rm -rf "$venv"
  mkdir -p target
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$plotting"
  echo "$plotting" >"$venv/.installed"
fi

cargo build --release -p cloud -p bridge -p bench
# One socket per idle device in the bench and in the cloud: as many files as
# the hard limit allows (the bench raises its own limit too).
ulimit -n "$(ulimit -Hn)"
rm -f target/bench/*.json target/bench/*.png
target/release/bench all "$@"
"$venv/bin/python" scripts/bench_plots.py target/bench

echo
echo "report: target/bench/report.json"
echo "plots:  $(ls target/bench/*.png | tr '\n' ' ')"
