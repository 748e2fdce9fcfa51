#!/usr/bin/env bash
# Runs the cloud stack and one or more device stacks with Docker Compose on
# this machine (docker-compose.cloud.yml, docker-compose.device.yml).
#   ./run-dev.sh              build, start (or update) everything, wait until healthy
#   ./run-dev.sh down         stop and remove every stack (keys and data stay)
#   ./run-dev.sh status       what runs, and the devices the cloud knows
#   ./run-dev.sh logs [ARGS]  the logs of every stack (default: follow; ARGS go to `compose logs`)
#   ./run-dev.sh cloud ARGS   the operator CLI inside the cloud container (scaled: cloud-1)
# Environment:
#   DEVICES=N          device stacks to run (device-001 ... device-00N; default 1)
#   CLOUDS=N           cloud instances: unset or 1, the single cloud
#                      (docker-compose.cloud.yml); 2 to 9, the scaled cloud stack
#                      (docker-compose.scale.yml): cloud-1 ... cloud-N behind a
#                      load balancer, with PostgreSQL and a NATS cluster. The two
#                      are different fleets: the single cloud's registry is
#                      data/cloud/cloud.db, the scaled one's is in PostgreSQL
#                      (data/postgres/); switching replaces one stack with the
#                      other, each keeping its data. down, status, logs and
#                      cloud act on whichever runs.
#   CLOUD_PORT=8080    host port of the dashboard and API; CLOUD_BIND=127.0.0.1 its address
#   DEVBRIDGE_PREFIX   prefix of project, network and image names (default devbridge),
#                      so a second, isolated copy can run beside the first
#   COMPOSE            the compose command (default: `docker compose`, else `docker-compose`)
#   HEALTH_TIMEOUT     seconds to wait for the stacks to become healthy (default 180)
#   EXAMPLE_WORKER=1   also build the example second worker and run it in every
#                      device stack (compose profile "example"; README, "Adding
#                      a worker method")
# Keys (keys/) and data (data/cloud/, data/dev/; scaled: data/postgres/,
# data/cloud-scaled/) are kept between runs.
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
clouds=${CLOUDS:-1}
[[ $clouds =~ ^[1-9]$ ]] || die "CLOUDS must be a number from 1 to 9"

example_worker=${EXAMPLE_WORKER:-0}
[[ $example_worker =~ ^[01]$ ]] || die "EXAMPLE_WORKER must be 0 or 1"
if [ "$example_worker" -eq 1 ]; then
  export COMPOSE_PROFILES=example
fi

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
# The scaled stack's (docker-compose.scale.yml).
export CLOUD_SCALED_DATA_DIR=$root/data/cloud-scaled
export POSTGRES_DATA_DIR=$root/data/postgres
# PostgreSQL refuses to run as root: a root caller's database belongs to uid 999.
POSTGRES_UID=$DEVBRIDGE_UID
POSTGRES_GID=$DEVBRIDGE_GID
if [ "$POSTGRES_UID" -eq 0 ]; then POSTGRES_UID=999 POSTGRES_GID=999; fi
export POSTGRES_UID POSTGRES_GID

cloud_project=$prefix-cloud
backend_network=$prefix-cloud-backend
password_file=data/dev/admin.password
postgres_password_file=data/postgres/devbridge.password

if [ -n "${COMPOSE:-}" ]; then
  read -ra compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
  compose=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  compose=(docker-compose)
else
  die "neither 'docker compose' (v2) nor 'docker-compose' (v1) is installed"
fi

# Which cloud stack: `up` runs the one CLOUDS says, the other commands act on
# the one that exists (the scaled one has a postgres service).
scaled=0
if [ "${1:-up}" = up ]; then
  [ "$clouds" -eq 1 ] || scaled=1
elif [ -n "$(docker ps -aq --filter "label=com.docker.compose.project=$cloud_project" \
  --filter label=com.docker.compose.service=postgres 2>/dev/null)" ]; then
  scaled=1
fi

# docker-compose.scale.yml needs these for every command (compose reads the
# whole file); `up` sets them before it starts instances.
scaled_environment() {
  DEVBRIDGE_POSTGRES_PASSWORD=$(cat "$postgres_password_file" 2>/dev/null || true)
  # The backend network's subnets: whose X-Forwarded-For the instances believe.
  CLOUD_TRUSTED_PROXIES=$(docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}},{{end}}' \
    "$backend_network" 2>/dev/null || true)
  CLOUD_TRUSTED_PROXIES=${CLOUD_TRUSTED_PROXIES%,}
  export DEVBRIDGE_POSTGRES_PASSWORD=${DEVBRIDGE_POSTGRES_PASSWORD:-unknown}
  export CLOUD_TRUSTED_PROXIES=${CLOUD_TRUSTED_PROXIES:-unknown}
}
[ "$scaled" -eq 0 ] || scaled_environment

cloud_compose() {
  local file=docker-compose.cloud.yml
  [ "$scaled" -eq 0 ] || file=docker-compose.scale.yml
  "${compose[@]}" -p "$cloud_project" -f "$root/$file" "$@"
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

# The cloud, or the scaled stack's first instance (the CLI runs there).
cloud_container() {
  if [ "$scaled" -eq 1 ]; then cloud_compose ps -q cloud-1 2>/dev/null; else cloud_compose ps -q cloud 2>/dev/null; fi
}

# The scaled stack's backend network, left behind when the single cloud
# replaced the scaled one (compose removes only the networks its file names).
remove_backend_network() {
  if docker network inspect "$backend_network" >/dev/null 2>&1; then
    docker network rm "$backend_network" >/dev/null
  fi
}

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
  [ "$scaled" -eq 1 ] || remove_backend_network
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
      local registry=data/cloud/
      [ "$scaled" -eq 0 ] || registry=data/postgres/
      admin_login="admin (created before $password_file; its password is not that file's: remove $registry to start afresh)"
    fi
  else
    echo "$out" >&2
    die "creating the dev admin failed"
  fi
}

# Starts the scaled cloud stack: PostgreSQL and NATS first, which makes the
# backend network whose subnet the instances trust, then the instances
# (cloud-1, then the others once it is healthy) and the load balancer.
up_scaled_cloud() {
  mkdir -p data/postgres data/cloud-scaled
  if [ ! -s "$postgres_password_file" ]; then
    (umask 077 && openssl rand -hex 16 | tr -d '\n' >"$postgres_password_file")
  fi
  chmod 700 data/postgres
  chmod 600 "$postgres_password_file"
  # The database's user owns its folder (a root caller's: uid 999).
  if [ "$DEVBRIDGE_UID" -eq 0 ]; then
    chown "$POSTGRES_UID:$POSTGRES_GID" data/postgres "$postgres_password_file"
  fi
  local scale=()
  for n in $(seq $((clouds + 1)) 9); do scale+=(--scale "cloud-$n=0"); done
  scaled_environment
  cloud_compose up -d --remove-orphans postgres nats-1 nats-2 nats-3
  scaled_environment
  [ "$CLOUD_TRUSTED_PROXIES" != unknown ] || die "network $backend_network has no subnet"
  # Compose gives up when cloud-1 (which the others wait for) never gets healthy.
  if ! cloud_compose up -d --remove-orphans "${scale[@]}"; then
    cloud_compose logs --tail=30 postgres cloud-1 >&2 || true
    die "the scaled cloud stack did not start; the last log lines of postgres and cloud-1 are above"
  fi
}

up() {
  docker info >/dev/null 2>&1 || die "Docker is not running (or this user may not use it)"
  # Its binary goes into the nats image.
  command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] ||
    scripts/apt-install.sh nats-server
  local images=(cloud bridge worker nats)
  [ "$example_worker" -eq 0 ] || images+=(example-worker)
  if [ "$scaled" -eq 1 ]; then
    # Theirs go into the postgres and haproxy images.
    compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || scripts/apt-install.sh postgresql
    command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || scripts/apt-install.sh haproxy
    images+=(postgres haproxy)
  fi

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
  if [ "$example_worker" -eq 1 ]; then
    RUSTFLAGS='-C target-feature=+crt-static' \
      cargo build --release --target "$triple" -p worker --example example_worker
  fi
  docker/build-images.sh "${CARGO_TARGET_DIR:-$root/target}/$triple/release" "$prefix" "${images[@]}"

  if [ "$scaled" -eq 1 ]; then
    up_scaled_cloud
  else
    cloud_compose up -d --remove-orphans
    remove_backend_network
  fi
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
  local token_file=data/cloud/admin.token running=""
  if [ "$scaled" -eq 1 ]; then
    token_file=data/cloud-scaled/admin.token
    running=" ($clouds cloud instances behind a load balancer; the CLI runs in cloud-1)"
  fi
  docker exec "$(cloud_container)" cloud devices list
  cat <<MSG

Running$running. Dashboard: $url/
  log in as: $admin_login
  (log in and accept the device on the dashboard's device list)
Or with the operator CLI (inside the cloud container; admin token in $token_file):
  ./run-dev.sh cloud devices list
  ./run-dev.sh cloud devices accept device-001
  ./run-dev.sh cloud rpc device-001 containers.list '{"all":true}'
  ./run-dev.sh cloud rpc device-001 containers.logs '{"container":"NAME","tail":50}'
Or over HTTP:
  curl -H "Authorization: Bearer \$(cat $token_file)" $url/api/v1/devices
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
