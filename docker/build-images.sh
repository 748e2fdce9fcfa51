#!/usr/bin/env bash
# Builds the images of the stacks from local files only, so nothing is pulled:
# the project's static release binaries, and Debian's nats-server, PostgreSQL
# and haproxy with exactly the shared libraries ldd lists for them. Each image
# is built from a small staging folder, never from the repository.
#   docker/build-images.sh BIN_DIR [IMAGE_PREFIX [IMAGE...]]
# BIN_DIR holds static `cloud`, `bridge` and `worker` (built with
# RUSTFLAGS='-C target-feature=+crt-static' --target x86_64-unknown-linux-gnu),
# and for the example-worker image `examples/example_worker` (the same, with
# `-p worker --example example_worker`).
# IMAGE: cloud, bridge, worker, nats, postgres, haproxy, example-worker
# (default: all of them but example-worker;
# postgres and haproxy, for the scaled cloud stack, need Debian's postgresql
# and haproxy: scripts/apt-install.sh postgresql haproxy).
# Tags: IMAGE_PREFIX/IMAGE:latest (default prefix devbridge).
set -euo pipefail
cd "$(dirname "$0")/.."
bin_dir=${1:?usage: docker/build-images.sh BIN_DIR [IMAGE_PREFIX [IMAGE...]]}
prefix=${2:-devbridge}
shift $(($# < 2 ? $# : 2))
images=("$@")
[ ${#images[@]} -gt 0 ] || images=(cloud bridge worker nats postgres haproxy)

die() {
  echo "error: $*" >&2
  exit 1
}

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT

# A root filesystem with /tmp (1777), where the bridge writes its state file.
new_rootfs() {
  mkdir -p "$staging/$1/rootfs/tmp"
  chmod 1777 "$staging/$1/rootfs/tmp"
  echo "$staging/$1/rootfs"
}

# Copies the shared libraries ldd lists for each file into the root filesystem,
# at their paths. ldd lines: "libc.so.6 => /lib/.../libc.so.6 (0x..)",
# "/lib64/ld-linux-x86-64.so.2 (0x..)"; linux-vdso has no file; a static
# binary has none.
copy_libs() { # rootfs, files...
  local rootfs=$1 file lib
  shift
  for file in "$@"; do
    { ldd "$file" 2>/dev/null || true; } |
      awk '{ for (i = 1; i <= NF; i++) if ($i ~ /^\//) { print $i; break } }' |
      while read -r lib; do
        [ -e "$rootfs$lib" ] && continue
        mkdir -p "$rootfs$(dirname "$lib")"
        cp -L "$lib" "$rootfs$lib"
      done
  done
}

# Copies each file to the same path in the root filesystem, with its libraries.
copy_with_libs() { # rootfs, files...
  local rootfs=$1 file
  shift
  for file in "$@"; do
    mkdir -p "$rootfs$(dirname "$file")"
    cp -L "$file" "$rootfs$file"
  done
  copy_libs "$rootfs" "$@"
}

pg_build_args=()
for name in "${images[@]}"; do
  case $name in
    cloud | bridge | worker)
      rootfs=$(new_rootfs "$name")
      mkdir -p "$rootfs/usr/local/bin"
      cp "$bin_dir/$name" "$rootfs/usr/local/bin/$name"
      ;;
    example-worker)
      [ -f "$bin_dir/examples/example_worker" ] ||
        die "$bin_dir/examples/example_worker is missing: cargo build --release -p worker --example example_worker"
      rootfs=$(new_rootfs "$name")
      mkdir -p "$rootfs/usr/local/bin"
      cp "$bin_dir/examples/example_worker" "$rootfs/usr/local/bin/example-worker"
      ;;
    nats)
      nats_server=$(command -v nats-server || echo /usr/sbin/nats-server)
      [ -x "$nats_server" ] || die "nats-server is missing: apt-get install nats-server"
      rootfs=$(new_rootfs nats)
      mkdir -p "$rootfs/usr/sbin"
      cp "$nats_server" "$rootfs/usr/sbin/nats-server"
      copy_libs "$rootfs" "$nats_server"
      ;;
    postgres)
      # The newest PostgreSQL installed (Debian 12: 15); its major version
      # names the data folder, so another major never opens this one's files.
      pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
      [ -n "$pg_bin" ] && [ -x "$pg_bin/postgres" ] ||
        die "PostgreSQL is missing: scripts/apt-install.sh postgresql"
      pg_lib=${pg_bin%/bin}/lib
      pg_major=$(basename "${pg_bin%/bin}")
      pg_share=/usr/share/postgresql/$pg_major
      rootfs=$(new_rootfs postgres)
      # Debian's dash as /bin/sh: initdb runs the server through it, and the
      # entrypoint is a script.
      copy_with_libs "$rootfs" "$pg_bin/postgres" "$pg_bin/initdb" "$pg_bin/pg_isready"
      mkdir -p "$rootfs/bin"
      cp /usr/bin/dash "$rootfs/bin/sh"
      copy_libs "$rootfs" /usr/bin/dash
      # Modules the server loads: PL/pgSQL and the snowball dictionaries
      # (initdb installs both) and the encoding conversions; no contrib, no JIT.
      copy_with_libs "$rootfs" "$pg_lib/plpgsql.so" "$pg_lib/dict_snowball.so" "$pg_lib"/*_and_*.so
      mkdir -p "$rootfs$pg_share"
      (cd "$pg_share" && tar --exclude=./man -cf - .) | tar -xf - -C "$rootfs$pg_share"
      # Time zones (TZ=UTC, and any a client sets); localtime links to the host's.
      mkdir -p "$rootfs/usr/share/zoneinfo"
      (cd /usr/share/zoneinfo && tar --exclude=./localtime -cf - .) | tar -xf - -C "$rootfs/usr/share/zoneinfo"
      # /etc/passwd names the uid the container runs as: postgres-entrypoint
      # writes it in /tmp. Users and groups come from those files only.
      mkdir -p "$rootfs/etc" "$rootfs/usr/local/bin" "$rootfs/var/lib/postgresql"
      ln -s /tmp/passwd "$rootfs/etc/passwd"
      ln -s /tmp/group "$rootfs/etc/group"
      printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$rootfs/etc/nsswitch.conf"
      cp docker/postgres-entrypoint.sh "$rootfs/usr/local/bin/postgres-entrypoint"
      chmod 755 "$rootfs/usr/local/bin/postgres-entrypoint"
      pg_build_args=(--build-arg "PG_MAJOR=$pg_major")
      ;;
    haproxy)
      haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
      [ -x "$haproxy" ] || die "haproxy is missing: scripts/apt-install.sh haproxy"
      rootfs=$(new_rootfs haproxy)
      mkdir -p "$rootfs/usr/sbin"
      cp "$haproxy" "$rootfs/usr/sbin/haproxy"
      copy_libs "$rootfs" "$haproxy"
      # Its configuration, so that a change to it recreates the container.
      mkdir -p "$rootfs/usr/local/etc/haproxy"
      cp docker/haproxy.cfg "$rootfs/usr/local/etc/haproxy/haproxy.cfg"
      ;;
    *) die "unknown image $name (cloud, bridge, worker, nats, postgres, haproxy, example-worker)" ;;
  esac
done

for name in "${images[@]}"; do
  cp "docker/$name.Dockerfile" "$staging/$name/Dockerfile"
  args=()
  if [ "$name" = postgres ]; then args=("${pg_build_args[@]}"); fi
  echo "building $prefix/$name:latest"
  # Quiet unless it fails: the legacy builder's deprecation notice is noise here.
  if ! out=$(docker build --label devbridge-stack=1 ${args[@]+"${args[@]}"} --tag "$prefix/$name:latest" "$staging/$name" 2>&1); then
    echo "$out" >&2
    exit 1
  fi
done
# The images these replaced, once no container uses them; only ours (by label).
docker image prune --force --filter label=devbridge-stack=1 >/dev/null
docker images --filter "reference=$prefix/*:latest" --format '  {{.Repository}}:{{.Tag}}  {{.Size}}'
