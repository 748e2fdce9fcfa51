#!/usr/bin/env bash
# Creates the cloud's Ed25519 signing key when it is missing (mode 0600) and
# derives its public key. Safe to run again: an existing key is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${CLOUD_KEYS_DIR:-keys/cloud}
mkdir -p "$dir"
private="$dir/cloud_private.pem"
if [ ! -f "$private" ]; then
  (umask 077 && openssl genpkey -algorithm ed25519 -out "$private")
  echo "created $private"
fi
chmod 600 "$private"
openssl pkey -in "$private" -pubout -out "$dir/cloud_public.pem"
echo "cloud public key: $dir/cloud_public.pem"
