#!/usr/bin/env bash
# Creates a device's Ed25519 key when it is missing (mode 0600), derives its
# public key, and copies the cloud's PUBLIC key beside it (a device never holds
# the cloud's private key). Usage: ensure-device-keys.sh [DIR] (default keys/device).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-keys/device}
cloud_public=${CLOUD_PUBLIC_KEY:-keys/cloud/cloud_public.pem}
mkdir -p "$dir"
private="$dir/device_private.pem"
if [ ! -f "$private" ]; then
  (umask 077 && openssl genpkey -algorithm ed25519 -out "$private")
  echo "created $private"
fi
chmod 600 "$private"
openssl pkey -in "$private" -pubout -out "$dir/device_public.pem"
if [ ! -f "$cloud_public" ]; then
  echo "error: the cloud's public key $cloud_public is missing; run scripts/ensure-cloud-keys.sh on the cloud and copy its cloud_public.pem here" >&2
  exit 1
fi
cp "$cloud_public" "$dir/cloud_public.pem"
echo "device key fingerprint: SHA256:$(openssl pkey -pubin -in "$dir/device_public.pem" -outform DER | tail -c 32 | openssl dgst -sha256 -binary | openssl base64 -A | tr -d '=')"
