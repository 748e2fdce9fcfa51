#!/usr/bin/env bash
# The rpc and idle benches with 1, 2 and 3 cloud instances sharing one fleet
# (one PostgreSQL, a NATS between the instances; see BENCHMARKS.md, "Several
# instances"), one after another, each report kept:
#   target/bench/instances/{rpc,idle}-N.json and .txt
# then a table of the figures side by side. Arguments go to every run
# (`--smoke` for a short one). On a fresh machine it first installs
# nats-server and postgresql from Debian.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
scripts/apt-install.sh "${missing[@]}"
export PATH="$PATH:/usr/sbin"

cargo build --release -p cloud -p bridge -p bench
ulimit -n "$(ulimit -Hn)"
out=target/bench/instances
mkdir -p "$out"
for bench in rpc idle; do
  for n in 1 2 3; do
    # Each run merges into report.json: start each from nothing.
    rm -f target/bench/report.json
    target/release/bench "$bench" --instances "$n" "$@" | tee "$out/$bench-$n.txt"
    cp target/bench/report.json "$out/$bench-$n.json"
  done
done

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
rows = [
    ("rpc", "calls_per_s", "calls/s (32 in flight)"),
    ("rpc", "e2e_p50_us", "one call at a time, p50 µs"),
    ("rpc", "loaded_p99_us", "under load, p99 µs"),
    ("rpc", "rpc_cloud_cpu_us_per_call", "cloud CPU µs/call (all instances)"),
    ("rpc", "rpc_postgres_cpu_us_per_call", "PostgreSQL CPU µs/call"),
    ("rpc", "rpc_cloud_nats_cpu_us_per_call", "instances' NATS CPU µs/call"),
    ("idle", "idle_devices", "idle devices"),
    ("idle", "idle_kib_per_device", "cloud KiB per idle device (all instances)"),
    ("idle", "storm_secs", "connect storm, s until all live"),
]
reports = {(b, n): json.load(open(f"{out}/{b}-{n}.json")) for b in ("rpc", "idle") for n in (1, 2, 3)}
print(f"{'figure':45} {'1 instance':>12} {'2':>12} {'3':>12}")
for bench, key, label in rows:
    cells = []
    for n in (1, 2, 3):
        value = reports[(bench, n)].get(key)
        cells.append("-" if value is None else f"{value:,.1f}" if isinstance(value, float) else f"{value:,}")
    print(f"{label:45} {cells[0]:>12} {cells[1]:>12} {cells[2]:>12}")
PY
