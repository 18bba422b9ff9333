#!/usr/bin/env bash
# Build gradwatch for NVIDIA Jetson (aarch64) without Docker: `make aarch64`.
#
#   scripts/aarch64-build.sh [extra cargo args, e.g. --example ort_smoke]
#
# Uses cargo-zigbuild (zig as the C compiler and linker) against glibc 2.31, so one binary runs
# on JetPack 5 (Ubuntu 20.04, glibc 2.31) and JetPack 6 (Ubuntu 22.04, glibc 2.35).
# Installs what is missing, idempotently (a fresh Debian 12 machine is enough; no Docker):
#   - Debian packages: libclang (bindgen for the v4l2 feature), the aarch64 Linux/libc headers
#     bindgen reads, binutils-aarch64-linux-gnu (objdump for the glibc check), python3-venv;
#   - the Rust target aarch64-unknown-linux-gnu (rustup);
#   - cargo-zigbuild and ziglang from PyPI, in a venv under .cache/aarch64/ (git-ignored).
# The binary lands in target/aarch64-unknown-linux-gnu/release/gradwatch and is checked with
# scripts/check-glibc.sh. Nothing of ONNX Runtime is linked (`ort` uses load-dynamic).
#
# Environment: GLIBC_TARGET (default 2.31), AARCH64_TOOLS (default .cache/aarch64),
# CARGO_ZIGBUILD_VERSION / ZIGLANG_VERSION (pins, default below).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
GLIBC_TARGET="${GLIBC_TARGET:-2.31}"
TOOLS="${AARCH64_TOOLS:-$PWD/.cache/aarch64}"
VENV="$TOOLS/venv"
# Pinned: the versions this script was tested with (cargo-zigbuild pulls ziglang in).
CARGO_ZIGBUILD_VERSION="${CARGO_ZIGBUILD_VERSION:-0.24.1}"
ZIGLANG_VERSION="${ZIGLANG_VERSION:-0.17.1}"
CARGO="${CARGO:-cargo}"
SYSROOT=/usr/aarch64-linux-gnu

step() { echo "==> aarch64-build: $*"; }
fail() {
  echo "aarch64-build: FAILED: $*" >&2
  exit 1
}

# --- Debian packages -------------------------------------------------------------------------
# linux-libc-dev-arm64-cross + libc6-dev-arm64-cross put the aarch64 kernel and libc headers in
# /usr/aarch64-linux-gnu/include, which bindgen (v4l2-sys-mit) needs for linux/videodev2.h.
APT_PACKAGES=(libclang-dev pkg-config python3-venv python3-pip
  linux-libc-dev-arm64-cross libc6-dev-arm64-cross binutils-aarch64-linux-gnu)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q || fail "apt-get update (is a Debian mirror reachable?)"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}" ||
    fail "apt-get install ${missing[*]}"
fi

# --- Rust target -----------------------------------------------------------------------------
command -v "$CARGO" >/dev/null 2>&1 || fail "cargo not found (install Rust with rustup)"
if ! rustc --print sysroot >/dev/null 2>&1 ||
  [ ! -d "$(rustc --print sysroot)/lib/rustlib/$TARGET/lib" ]; then
  command -v rustup >/dev/null 2>&1 || fail "the Rust standard library for $TARGET is missing and rustup is not installed"
  step "rustup target add $TARGET"
  rustup target add "$TARGET" || fail "rustup target add $TARGET"
fi

# --- cargo-zigbuild + zig --------------------------------------------------------------------
# A venv because Debian 12's system pip refuses global/--user installs (PEP 668).
if [ ! -x "$VENV/bin/cargo-zigbuild" ] || ! "$VENV/bin/python" -m ziglang version >/dev/null 2>&1; then
  step "installing cargo-zigbuild $CARGO_ZIGBUILD_VERSION and ziglang $ZIGLANG_VERSION into $VENV"
  PY="${PYTHON:-python3}"
  rm -rf "$VENV"
  "$PY" -m venv "$VENV" || fail "$PY -m venv $VENV (apt-get install python3-venv)"
  "$VENV/bin/pip" install -q --disable-pip-version-check \
    "cargo-zigbuild==$CARGO_ZIGBUILD_VERSION" "ziglang==$ZIGLANG_VERSION" ||
    fail "pip install cargo-zigbuild ziglang (is PyPI reachable?)"
fi
# cargo-zigbuild finds zig as `python3 -m ziglang` through the venv's python3 on PATH.
export PATH="$VENV/bin:$PATH"

# --- bindgen (v4l2 feature) ------------------------------------------------------------------
# clang would otherwise take the host's x86-64 asm/ headers; point it at the aarch64 ones.
# Appended to, not replacing, what the caller set.
bindgen_var="BINDGEN_EXTRA_CLANG_ARGS_${TARGET//-/_}"
export "$bindgen_var=${!bindgen_var:-} --sysroot=$SYSROOT -I$SYSROOT/include"

# --- build -----------------------------------------------------------------------------------
step "cargo zigbuild --release --locked --target $TARGET.$GLIBC_TARGET $*"
start=$(date +%s)
"$CARGO" zigbuild --release --locked --target "$TARGET.$GLIBC_TARGET" "$@" ||
  fail "cargo zigbuild (see the compiler output above)"
step "built in $(($(date +%s) - start)) s"

bin="target/$TARGET/release/gradwatch"
[ -f "$bin" ] || fail "$bin was not produced"
step "$bin: $(du -h "$bin" | cut -f1) ($(file -b "$bin" 2>/dev/null | cut -d, -f1-2 || echo ELF))"
scripts/check-glibc.sh "$bin" "$GLIBC_TARGET" || fail "glibc check: the binary would not start on JetPack 5"
