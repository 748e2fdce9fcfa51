#!/usr/bin/env bash
# Runs the whole system on this machine as local processes: a cloud, and one
# device (nats-server, bridge, worker) connected to it.
#   ./run-dev.sh          build, start everything, print how to use it
#   ./run-dev.sh down     stop everything
#   ./run-dev.sh status   show what runs
#   ./run-dev.sh logs     follow the logs
# Keys and data are kept between runs (keys/, data/).
set -euo pipefail
cd "$(dirname "$0")"
run=data/dev
mkdir -p "$run"
export PATH="$PATH:/usr/sbin"
CLOUD_PORT=${CLOUD_PORT:-8080}
NATS_PORT=${NATS_PORT:-4222}
DEVICE_ID=${DEVICE_ID:-device-001}

components=(nats cloud worker bridge)

stop_all() {
  for name in bridge worker cloud nats; do
    pidfile="$run/$name.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      kill "$(cat "$pidfile")" && echo "stopped $name"
    fi
    rm -f "$pidfile"
  done
}

status() {
  for name in "${components[@]}"; do
    pidfile="$run/$name.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      echo "$name: running (pid $(cat "$pidfile"), log $run/$name.log)"
    else
      echo "$name: stopped"
    fi
  done
}

start() { # name, command...
  local name=$1; shift
  "$@" >"$run/$name.log" 2>&1 &
  echo $! >"$run/$name.pid"
}

wait_for_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "error: nothing listens on port $1; see $run/*.log" >&2
  exit 1
}

case "${1:-up}" in
  down) stop_all; exit 0 ;;
  status) status; exit 0 ;;
  logs) exec tail -F "$run"/*.log ;;
  up) ;;
  *) echo "usage: $0 [up|down|status|logs]" >&2; exit 2 ;;
esac

command -v nats-server >/dev/null || { echo "installing nats-server"; apt-get update -qq && apt-get install -y -qq nats-server >/dev/null; }
scripts/ensure-cloud-keys.sh
scripts/ensure-device-keys.sh
cargo build --release -p cloud -p bridge -p worker
stop_all
bin=target/release

start nats nats-server -a 127.0.0.1 -p "$NATS_PORT"
wait_for_port "$NATS_PORT"
start cloud "$bin/cloud" serve --listen "127.0.0.1:$CLOUD_PORT"
wait_for_port "$CLOUD_PORT"
export NATS_URL="nats://127.0.0.1:$NATS_PORT"
start worker "$bin/worker"
start bridge "$bin/bridge" --device-id "$DEVICE_ID" --cloud-url "ws://127.0.0.1:$CLOUD_PORT/ws/device"

export CLOUD_URL="http://127.0.0.1:$CLOUD_PORT"
for _ in $(seq 1 100); do
  "$bin/cloud" devices list 2>/dev/null | grep -q "$DEVICE_ID" && break
  sleep 0.1
done
"$bin/cloud" devices list
cat <<MSG

Running. Cloud API: $CLOUD_URL (admin token in data/admin.token); logs: $run/*.log
The device '$DEVICE_ID' waits for approval. Try:
  $bin/cloud devices accept $DEVICE_ID
  $bin/cloud rpc $DEVICE_ID containers.list '{"all":true}'
  $bin/cloud rpc $DEVICE_ID system.health
Stop with: ./run-dev.sh down
MSG
