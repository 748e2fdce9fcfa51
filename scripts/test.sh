#!/usr/bin/env bash
# Runs every test of the workspace. On a fresh machine it first installs what
# the tests need: nats-server (a real broker, also the nats image's payload),
# busybox-static (the payload of the tiny test images), postgresql (each
# store test runs on SQLite and on a real PostgreSQL server), openssl (key scripts,
# interop check), chromium with chromium-driver (the dashboard's browser
# tests), python3 with venv, git and Docker Compose (the dev stack tests), from
# Debian; then the Python checkers the cloud's tests run (the OpenAPI
# validator), from PyPI into target/python-tools.
# cargo-fuzz comes from crates.io for the fuzzing smoke at the end.
# Docker must be running: the worker tests talk to the real engine, and the dev
# stack tests run ./run-dev.sh (Docker Compose) from a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v nats-server >/dev/null || [ -x /usr/sbin/nats-server ] || missing+=(nats-server)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null || missing+=(postgresql)
command -v openssl >/dev/null || missing+=(openssl)
python3 -c 'import venv, ensurepip' 2>/dev/null || missing+=(python3-venv)
# The dashboard's browser tests drive a real headless Chromium.
[ -x /usr/bin/chromium ] || missing+=(chromium)
[ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
command -v git >/dev/null || missing+=(git)
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null || missing+=(docker-compose)
scripts/apt-install.sh "${missing[@]}"
export PATH="$PATH:/usr/sbin"
scripts/ensure-python-tools.sh
docker info >/dev/null 2>&1 || { echo "error: Docker is not running; the worker tests need the real engine" >&2; exit 1; }
# The dev stack tests run ./run-dev.sh, which needs Compose (v2 plugin or v1) and git.
docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null ||
  { echo "error: neither 'docker compose' nor 'docker-compose' is installed; the dev stack tests run ./run-dev.sh with it" >&2; exit 1; }

# A short smoke of every fuzz target first (scripts/fuzz.sh runs them
# longer), so that the test runner's summary closes the output.
fuzz_seconds=${FUZZ_SECONDS:-10}
if [ "$fuzz_seconds" -gt 0 ]; then
  scripts/fuzz.sh "$fuzz_seconds"
fi

# The benchmarks with tiny sizes (debug build, beside the cloud and bridge
# binaries it runs), and one job over 1,000 simulated devices: fails when a
# call is lost or answered wrongly, a device's outcome is missing or a process
# dies, never on speed.
cargo build -p cloud --bin cloud -p bridge --bin bridge && cargo run -p bench -- all --smoke
# The same calls through 2 cloud instances sharing the fleet (a PostgreSQL
# and a nats-server between them): most cross from one instance to the other.
cargo run -p bench -- rpc --smoke --instances 2

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  cargo test --workspace --no-fail-fast "$@"
fi
