#!/usr/bin/env bash
# Fail if an ELF binary needs a glibc symbol version newer than the one given.
#
#   scripts/check-glibc.sh BINARY MAX_GLIBC      e.g. scripts/check-glibc.sh target/.../gradwatch 2.31
#
# Why: a binary linked against a newer glibc than the Jetson's refuses to start with
# "version `GLIBC_2.3x' not found". JetPack 5 is Ubuntu 20.04 (glibc 2.31), JetPack 6 is
# Ubuntu 22.04 (glibc 2.35), so `make aarch64` targets 2.31 and checks it here.
# Reads the dynamic symbol table with objdump -T (the aarch64 binutils, llvm-objdump or the
# host objdump, whichever is found first and understands the file).
set -euo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 BINARY MAX_GLIBC_VERSION (e.g. 2.31)" >&2
  exit 2
fi
bin="$1"
max="$2"
if [ ! -f "$bin" ]; then
  echo "check-glibc: $bin does not exist (build it first: make aarch64)" >&2
  exit 1
fi

syms=""
for tool in aarch64-linux-gnu-objdump llvm-objdump objdump; do
  command -v "$tool" >/dev/null 2>&1 || continue
  if out="$("$tool" -T "$bin" 2>/dev/null)" && [ -n "$out" ]; then
    syms="$out"
    used="$tool"
    break
  fi
done
if [ -z "$syms" ]; then
  echo "check-glibc: no objdump could read $bin; install binutils-aarch64-linux-gnu or llvm" >&2
  exit 1
fi

# Symbol versions look like GLIBC_2.17; GLIBC_PRIVATE is not a release and is ignored.
versions="$(grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' <<<"$syms" | sed 's/^GLIBC_//' | sort -u -V || true)"
if [ -z "$versions" ]; then
  echo "check-glibc: $bin has no GLIBC symbol versions (static or not a glibc binary): OK"
  exit 0
fi
found="$(tail -1 <<<"$versions")"
newest="$(printf '%s\n%s\n' "$found" "$max" | sort -V | tail -1)"
echo "check-glibc: $bin needs glibc $found at most (versions: $(tr '\n' ' ' <<<"$versions"); read with $used)"
if [ "$newest" != "$max" ]; then
  echo "check-glibc: FAIL: $found is newer than the allowed $max; symbols that need more:" >&2
  while read -r v; do
    if [ "$(printf '%s\n%s\n' "$v" "$max" | sort -V | tail -1)" != "$max" ]; then
      grep -E "GLIBC_${v//./\\.}([^0-9.]|$)" <<<"$syms" | awk '{print "  " $NF " (GLIBC_'"$v"')"}' >&2
    fi
  done <<<"$versions"
  exit 1
fi
echo "check-glibc: OK (<= $max)"
