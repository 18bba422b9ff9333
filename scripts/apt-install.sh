#!/usr/bin/env bash
# Installs the Debian packages given as arguments that are not installed yet (idempotent; uses
# sudo when not root). Shared by the Makefile and the aarch64 scripts.
#
#   scripts/apt-install.sh PACKAGE...
#   NO_RECOMMENDS=1 scripts/apt-install.sh PACKAGE...   # apt-get --no-install-recommends
set -euo pipefail
missing=()
for p in "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${missing[*]}"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
$SUDO apt-get update -q || {
  echo "apt-install: apt-get update failed (is a Debian mirror reachable?)" >&2
  exit 1
}
opts=(-y -q)
[ "${NO_RECOMMENDS:-0}" = 1 ] && opts+=(--no-install-recommends)
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install "${opts[@]}" "${missing[@]}" || {
  echo "apt-install: apt-get install ${missing[*]} failed" >&2
  exit 1
}
