#!/usr/bin/env bash
# Builds the images of both stacks from local files only, so nothing is pulled:
# the project's static release binaries, and Debian's nats-server with exactly
# the shared libraries ldd lists for it. Each image is built from a small
# staging folder, never from the repository.
#   docker/build-images.sh BIN_DIR [IMAGE_PREFIX]
# BIN_DIR holds static `cloud`, `bridge` and `worker` (built with
# RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu).
# Tags: IMAGE_PREFIX/{cloud,bridge,worker,nats}:latest (default prefix devbridge).
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:?usage: docker/build-images.sh BIN_DIR [IMAGE_PREFIX]}
prefix=${2:-devbridge}
nats_server=$(command -v nats-server || echo /usr/sbin/nats-server)
[ -x "$nats_server" ] || { echo "error: nats-server is missing: apt-get install nats-server" >&2; exit 1; }

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT

# A root filesystem with /tmp (1777), where the bridge writes its state file.
new_rootfs() {
  mkdir -p "$staging/$1/rootfs/tmp"
  chmod 1777 "$staging/$1/rootfs/tmp"
  echo "$staging/$1/rootfs"
}

for name in cloud bridge worker; do
  rootfs=$(new_rootfs "$name")
  mkdir -p "$rootfs/usr/local/bin"
  cp "$bin_dir/$name" "$rootfs/usr/local/bin/$name"
done

rootfs=$(new_rootfs nats)
mkdir -p "$rootfs/usr/sbin"
cp "$nats_server" "$rootfs/usr/sbin/nats-server"
# ldd lines: "libc.so.6 => /lib/.../libc.so.6 (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)";
# linux-vdso has no file. A static nats-server needs none.
ldd "$nats_server" 2>/dev/null | awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) { print $i; break } }' |
  while read -r lib; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done

for name in cloud bridge worker nats; do
  cp "docker/$name.Dockerfile" "$staging/$name/Dockerfile"
  echo "building $prefix/$name:latest"
  # Quiet unless it fails: the legacy builder's deprecation notice is noise here.
  if ! out=$(docker build --label devbridge-stack=1 --tag "$prefix/$name:latest" "$staging/$name" 2>&1); then
    echo "$out" >&2
    exit 1
  fi
done
# The images these replaced, once no container uses them; only ours (by label).
docker image prune --force --filter label=devbridge-stack=1 >/dev/null
docker images --filter "reference=$prefix/*:latest" --format '  {{.Repository}}:{{.Tag}}  {{.Size}}'
