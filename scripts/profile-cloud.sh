#!/usr/bin/env bash
# Where the cloud's CPU goes under load: runs `bench rpc` (3 s one call at a
# time, then 25 s with 32 in flight), samples the cloud process with
# `perf record -e cpu-clock` for 15 s of the loaded phase, and prints the
# share of each kind of work (crypto, kernel, allocator, SQLite, HTTP, ...)
# and the top symbols. `PROFILED=bench scripts/profile-cloud.sh` samples the
# bench process instead (the simulated bridges, the worker, the callers).
#
# Builds release binaries with their symbols (the release profile strips
# them), so it rebuilds what `scripts/bench.sh` built. Needs perf (Debian's
# linux-perf) and nats-server; installs them if missing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v perf >/dev/null || missing+=(linux-perf)
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
scripts/apt-install.sh "${missing[@]}"
export PATH="$PATH:/usr/sbin"

profiled=${PROFILED:-cloud}
out=target/bench/profile-$profiled
mkdir -p target/bench
CARGO_PROFILE_RELEASE_STRIP=false cargo build --release -p cloud -p bridge -p bench
ulimit -n "$(ulimit -Hn)"

target/release/bench rpc --latency-secs 3 --secs 25 >"$out.log" 2>&1 &
bench=$!
for _ in $(seq 1 120); do
  grep -q "in flight (closed loop) for" "$out.log" && break
  sleep 1
done
sleep 3
pid=$(pgrep -x "$profiled" | head -1)
perf record -q -e cpu-clock -F 1999 -p "$pid" -o "$out.data" -- sleep 15
wait "$bench"

perf report -i "$out.data" --no-children --sort symbol --stdio 2>/dev/null |
  python3 -c '
import collections, re, sys
kinds = [
    ("crypto", r"curve25519|ed25519|sha2::|Sha512"),
    ("sqlite", r"^sqlite3|^wal|^pcache|[bB]tree|Vdbe|^unixShm|^pager"),
    ("allocator", r"malloc|free|realloc|^_?mi_|unlink_chunk|alloc::alloc"),
    ("memcpy/cmp", r"^__mem"),
    ("json", r"serde_json|canonical"),
    ("http", r"hyper|axum|tower|matchit|http::"),
    ("websocket", r"tungstenite"),
    ("sqlx", r"sqlx|flume"),
    ("tokio, threads", r"tokio|pthread|futex|park|syscall"),
]
shares, top = collections.Counter(), []
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+\[(.)\]\s+(.*?)\s*$", line)
    if not m:
        continue
    share, where, symbol = float(m.group(1)), m.group(2), m.group(3)
    kind = "kernel" if where == "k" else next(
        (name for name, pattern in kinds if re.search(pattern, symbol)), "other")
    shares[kind] += share
    top.append((share, symbol[:110]))
print("share of the samples by kind of work:")
for kind, share in shares.most_common():
    print(f"  {kind:16s}{share:6.1f} %")
print("top symbols:")
for share, symbol in top[:25]:
    print(f"  {share:5.2f} %  {symbol}")
'
grep -E "calls_per_s|cpu_us_per_call" "$out.log"
echo "samples: $out.data (perf report -i $out.data)"
