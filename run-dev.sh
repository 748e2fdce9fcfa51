#!/usr/bin/env bash
# Runs the cloud stack and one or more device stacks with Docker Compose on
# this machine (docker-compose.cloud.yml, docker-compose.device.yml).
#   ./run-dev.sh              build, start (or update) everything, wait until healthy
#   ./run-dev.sh down         stop and remove every stack (keys and data stay)
#   ./run-dev.sh status       what runs, and the devices the cloud knows
#   ./run-dev.sh logs [ARGS]  the logs of every stack (default: follow; ARGS go to `compose logs`)
#   ./run-dev.sh cloud ARGS   the operator CLI inside the cloud container
# Environment:
#   DEVICES=N          device stacks to run (device-001 ... device-00N; default 1)
#   CLOUD_PORT=8080    host port of the dashboard and API; CLOUD_BIND=127.0.0.1 its address
#   DEVBRIDGE_PREFIX   prefix of project, network and image names (default devbridge),
#                      so a second, isolated copy can run beside the first
#   COMPOSE            the compose command (default: `docker compose`, else `docker-compose`)
#   HEALTH_TIMEOUT     seconds to wait for the stacks to become healthy (default 180)
# Keys (keys/) and data (data/cloud/, data/dev/) are kept between runs.
set -euo pipefail
cd "$(dirname "$0")"
root=$PWD

die() {
  echo "error: $*" >&2
  exit 1
}

prefix=${DEVBRIDGE_PREFIX:-devbridge}
[[ $prefix =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "DEVBRIDGE_PREFIX must be lowercase letters, digits and dashes"
devices=${DEVICES:-1}
[[ $devices =~ ^[0-9]+$ ]] && [ "$devices" -ge 1 ] && [ "$devices" -le 999 ] || die "DEVICES must be a number from 1 to 999"

# Read by the compose files.
export CLOUD_PORT=${CLOUD_PORT:-8080}
export CLOUD_BIND=${CLOUD_BIND:-127.0.0.1}
export DEVBRIDGE_IMAGE_PREFIX=$prefix
export DEVBRIDGE_CLOUD_NETWORK=$prefix-cloud
DEVBRIDGE_UID=$(id -u)
DEVBRIDGE_GID=$(id -g)
export DEVBRIDGE_UID DEVBRIDGE_GID
# The worker joins the Docker socket's group instead of running as root.
DOCKER_SOCKET_GID=$(stat -c %g "${DOCKER_SOCKET:-/var/run/docker.sock}" 2>/dev/null || echo 0)
export DOCKER_SOCKET_GID
export CLOUD_KEYS_DIR=$root/keys/cloud
export CLOUD_DATA_DIR=$root/data/cloud

cloud_project=$prefix-cloud
password_file=data/dev/admin.password

if [ -n "${COMPOSE:-}" ]; then
  read -ra compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  die "neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed"
fi

cloud_compose() {
  "${compose[@]}" -p "$cloud_project" -f "$root/docker-compose.cloud.yml" "$@"
}

device_id() { printf 'device-%03d' "$1"; }

# device-001 keeps the layout fixed by the design (keys/device); others get keys/devices/ID.
device_keys_dir() {
  if [ "$1" = device-001 ]; then echo "$root/keys/device"; else echo "$root/keys/devices/$1"; fi
}

device_compose() { # device id, compose arguments...
  local id=$1
  shift
  DEVICE_ID=$id DEVICE_KEYS_DIR=$(device_keys_dir "$id") DEVICE_STACK_PROJECT=$prefix-$id \
    "${compose[@]}" -p "$prefix-$id" -f "$root/docker-compose.device.yml" "$@"
}

# Device stacks that exist now (containers or networks), whatever DEVICES says.
existing_devices() {
  {
    docker ps -a --filter label=com.docker.compose.project --format '{{.Label "com.docker.compose.project"}}'
    docker network ls --filter label=com.docker.compose.project --format '{{.Label "com.docker.compose.project"}}'
  } | sed -n "s/^$prefix-\(device-[0-9][0-9]*\)\$/\1/p" | sort -u
}

cloud_container() { cloud_compose ps -q cloud 2>/dev/null; }

# Waits until every container of a stack is healthy (or running, without a check).
wait_healthy() { # label, compose function and its leading arguments...
  local label=$1
  shift
  local deadline=$((SECONDS + ${HEALTH_TIMEOUT:-180}))
  local ids
  ids=$("$@" ps -q)
  [ -n "$ids" ] || die "$label has no containers"
  for id in $ids; do
    while :; do
      local state
      state=$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id")
      case $state in healthy | running) break ;; esac
      if [ "$SECONDS" -ge "$deadline" ]; then
        local name
        name=$(docker inspect -f '{{.Name}}' "$id")
        echo "error: $label: ${name#/} is $state after ${HEALTH_TIMEOUT:-180}s; its last log lines and checks:" >&2
        docker logs --tail 30 "$id" >&2 || true
        docker inspect -f '{{if .State.Health}}{{range .State.Health.Log}}{{.Output}}{{end}}{{end}}' "$id" >&2 || true
        exit 1
      fi
      sleep 1
    done
  done
  echo "$label: healthy"
}

down() {
  for id in $(existing_devices); do
    device_compose "$id" down --remove-orphans --timeout 10
  done
  cloud_compose down --remove-orphans --timeout 10
}

status() {
  echo "== $cloud_project"
  cloud_compose ps
  for id in $(existing_devices); do
    echo "== $prefix-$id"
    device_compose "$id" ps
  done
  if [ -n "$(cloud_container)" ]; then
    echo "== devices"
    docker exec "$(cloud_container)" cloud devices list || true
  fi
}

logs() {
  local args=("$@")
  [ ${#args[@]} -gt 0 ] || args=(--follow --tail=100)
  local follow=0
  for arg in "${args[@]}"; do
    case $arg in -f | --follow) follow=1 ;; esac
  done
  if [ "$follow" -eq 0 ]; then
    cloud_compose logs "${args[@]}"
    for id in $(existing_devices); do device_compose "$id" logs "${args[@]}"; done
    return
  fi
  trap 'kill $(jobs -p) 2>/dev/null' EXIT
  cloud_compose logs "${args[@]}" &
  for id in $(existing_devices); do device_compose "$id" logs "${args[@]}" & done
  wait
}

cloud_cli() {
  local container
  container=$(cloud_container)
  [ -n "$container" ] || die "the cloud stack is not running; start it with ./run-dev.sh"
  local tty=()
  [ -t 0 ] && [ -t 1 ] && tty=(-t)
  exec docker exec -i ${tty[@]+"${tty[@]}"} "$container" cloud "$@"
}

# Creates the dev admin (an operator account) once, with a random password kept
# in data/dev/admin.password, and prints how to log in.
ensure_admin() {
  local fresh=0
  if [ ! -s "$password_file" ]; then
    (umask 077 && openssl rand -hex 12 | tr -d '\n' >"$password_file")
    fresh=1
  fi
  chmod 600 "$password_file"
  local out
  if out=$(docker exec -i "$(cloud_container)" cloud operators add admin --password-stdin <"$password_file" 2>&1); then
    admin_login="admin / $(cat "$password_file")"
  elif grep -q "already exists" <<<"$out"; then
    admin_login="admin / $(cat "$password_file")"
    if [ "$fresh" -eq 1 ]; then
      admin_login="admin (created before $password_file; its password is not that file's: remove data/cloud/ to start afresh)"
    fi
  else
    echo "$out" >&2
    die "creating the dev admin failed"
  fi
}

up() {
  docker info >/dev/null 2>&1 || die "Docker is not running (or this user may not use it)"
  # Its binary goes into the nats image.
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] ||
    scripts/apt-install.sh nats-server

  scripts/ensure-cloud-keys.sh
  for n in $(seq 1 "$devices"); do
    scripts/ensure-device-keys.sh "$(device_keys_dir "$(device_id "$n")")"
    scripts/ensure-device-nats.sh "$(device_keys_dir "$(device_id "$n")")/nats"
  done
  mkdir -p data/cloud data/dev # made here, so they belong to this user, not to Docker

  # Static binaries run in FROM scratch images; host build scripts stay dynamic.
  local triple
  triple=$(rustc -vV | sed -n 's/^host: //p')
  RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --target "$triple" -p cloud -p bridge -p worker
  docker/build-images.sh "${CARGO_TARGET_DIR:-$root/target}/$triple/release" "$prefix"

  cloud_compose up -d --remove-orphans
  wait_healthy "$cloud_project" cloud_compose
  ensure_admin

  # DEVICES says how many run: stacks beyond it stop.
  for id in $(existing_devices); do
    if [ "$((10#${id#device-}))" -gt "$devices" ]; then
      echo "stopping $prefix-$id (DEVICES=$devices)"
      device_compose "$id" down --remove-orphans --timeout 10
    fi
  done
  for n in $(seq 1 "$devices"); do
    device_compose "$(device_id "$n")" up -d --remove-orphans
  done
  for n in $(seq 1 "$devices"); do
    wait_healthy "$prefix-$(device_id "$n")" device_compose "$(device_id "$n")"
  done

  local host=$CLOUD_BIND
  [ "$host" != 0.0.0.0 ] || host=127.0.0.1
  local url="http://$host:$CLOUD_PORT"
  docker exec "$(cloud_container)" cloud devices list
  cat <<MSG

Running. Dashboard: $url/
  log in as: $admin_login
  (log in and accept the device on the dashboard's device list)
Or with the operator CLI (inside the cloud container; admin token in data/cloud/admin.token):
  ./run-dev.sh cloud devices list
  ./run-dev.sh cloud devices accept device-001
  ./run-dev.sh cloud rpc device-001 containers.list '{"all":true}'
  ./run-dev.sh cloud rpc device-001 containers.logs '{"container":"NAME","tail":50}'
Or over HTTP:
  curl -H "Authorization: Bearer \$(cat data/cloud/admin.token)" $url/api/v1/devices
./run-dev.sh status | logs | down
MSG
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  status) status ;;
  logs) shift && logs "$@" ;;
  cloud) shift && cloud_cli "$@" ;;
  *) die "usage: $0 [up|down|status|logs [ARGS]|cloud ARGS]" ;;
esac
