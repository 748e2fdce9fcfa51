#!/usr/bin/env bash
# Installs the Python tools the cloud's tests use as independent checkers
# (the OpenAPI validator) into a venv under target/, where the tests look for
# them. Does nothing if the same versions are already there.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=target/python-tools
requirements=scripts/python-tools.txt
stamp="$venv/.installed"

if [ -f "$stamp" ] && cmp -s "$stamp" "$requirements"; then
  exit 0
fi
command -v python3 >/dev/null || { echo "error: python3 is needed for the cloud's OpenAPI check" >&2; exit 1; }
rm -rf "$venv"
mkdir -p target
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
echo "python test tools installed in $venv"
