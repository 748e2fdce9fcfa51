#!/usr/bin/env bash
# Installs the given Debian packages (nothing when none are given), as root
# or through sudo: what the test and bench scripts need on a fresh machine.
set -euo pipefail
[ $# -gt 0 ] || exit 0
echo "installing: $*"
sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
$sudo_cmd apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$@" >/dev/null
