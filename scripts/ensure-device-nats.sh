#!/usr/bin/env bash
# Creates a device stack's NATS users when missing: a random password for the
# bridge and one for the worker (mode 0600), and the nats-server
# configuration that gives each only the subjects it needs (0600). A client
# without a user is refused. Usage: ensure-device-nats.sh [DIR] (default
# keys/device/nats).
#
# What each may do:
#   bridge  publish rpc.> (cloud requests to workers) and bridge.status;
#           subscribe cloud.call.> and cloud.notify.> (what workers send the
#           cloud) and its own inbox; answer the requests it receives.
#           Publish and subscribe bridge.rotate_key: the running bridge
#           serves it, and `bridge rotate-key` (run as the bridge's user)
#           asks it; no worker may.
#   worker  subscribe to each method it serves, only in the queue group
#           "workers", to bridge.status and to its own inbox; publish
#           cloud.call.> and cloud.notify.>, and rpc.rpc.discover (its health
#           check); answer the requests it receives.
#   example the example second worker (worker/examples/example_worker.rs, the
#           compose profile "example"; README, "Adding a worker method"):
#           subscribe to its methods in the queue group "workers", to the
#           cloud event it listens to outside any group (every worker hears
#           every event) and to its own inbox; publish rpc.example.echo (its
#           health check); answer the requests it receives.
# Each client's inbox is _INBOX_<user>, so neither can read the other's answers.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-keys/device/nats}
mkdir -p "$dir"

# The methods the worker serves (worker/src/methods); a test starts the worker
# with this configuration and calls each of them, so the lists cannot drift.
worker_methods=(containers.list containers.inspect containers.logs containers.start
  containers.stop containers.restart system.health system.info rpc.discover)

# The example worker's methods, and the cloud events it listens to.
example_methods=(example.echo example.events)
example_events=(example.notice)

for user in bridge worker example; do
  file="$dir/$user.password"
  if [ ! -f "$file" ]; then
    (umask 077 && openssl rand -hex 32 >"$file")
    echo "created $file"
  fi
  chmod 600 "$file"
done

subscriptions=""
for method in "${worker_methods[@]}"; do
  subscriptions+="\"rpc.$method workers\", "
done

example_subscriptions=""
for method in "${example_methods[@]}"; do
  example_subscriptions+="\"rpc.$method workers\", "
done
for event in "${example_events[@]}"; do
  example_subscriptions+="\"rpc.$event\", "
done

conf="$dir/nats.conf"
(umask 077 && cat >"$conf.new" <<EOF
# Made by scripts/ensure-device-nats.sh from the passwords beside it.
port: 4222
authorization {
  users: [
    {
      user: bridge
      password: "$(cat "$dir/bridge.password")"
      permissions: {
        publish: { allow: ["rpc.>", "bridge.status", "bridge.rotate_key"] }
        subscribe: { allow: ["cloud.call.>", "cloud.notify.>", "bridge.rotate_key", "_INBOX_bridge.>"] }
        allow_responses: true
      }
    }
    {
      user: worker
      password: "$(cat "$dir/worker.password")"
      permissions: {
        publish: { allow: ["cloud.call.>", "cloud.notify.>", "rpc.rpc.discover"] }
        subscribe: { allow: [${subscriptions}"bridge.status", "_INBOX_worker.>"] }
        allow_responses: true
      }
    }
    {
      user: example
      password: "$(cat "$dir/example.password")"
      permissions: {
        publish: { allow: ["rpc.example.echo"] }
        subscribe: { allow: [${example_subscriptions}"_INBOX_example.>"] }
        allow_responses: true
      }
    }
  ]
}
EOF
)
mv "$conf.new" "$conf"
chmod 600 "$conf"
