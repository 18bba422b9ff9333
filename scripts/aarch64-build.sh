#!/usr/bin/env bash
# Build gradwatch for NVIDIA Jetson (aarch64) without Docker: `make aarch64`.
#
#   scripts/aarch64-build.sh [extra cargo args, e.g. --example ort_smoke]
#
# OpenH264 is compiled in (`--features h264-source`; its aarch64 assembly goes through the C
# compiler, nasm is for x86 only), so the Jetson binary carries its own decoder instead of depending
# on which libopenh264 JetPack's Ubuntu packages.
# Uses cargo-zigbuild (zig as the C compiler and linker) against glibc 2.31, so one binary runs
# on JetPack 5 (Ubuntu 20.04, glibc 2.31) and JetPack 6 (Ubuntu 22.04, glibc 2.35).
# Installs what is missing, idempotently (a fresh Debian 12 machine is enough; no Docker):
#   - Debian packages: libclang (bindgen for the v4l2 feature), binutils-aarch64-linux-gnu
#     (objdump for the glibc check), python3-venv;
#   - the Rust target aarch64-unknown-linux-gnu (rustup);
#   - cargo-zigbuild and ziglang from PyPI, in a venv under ~/.cache/gradwatch/aarch64-tools.
# bindgen reads the aarch64 Linux headers (linux/videodev2.h, asm/*) that zig ships:
# cargo-zigbuild points BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu at them.
# The binary lands in target/aarch64-unknown-linux-gnu/release/gradwatch and is checked with
# scripts/check-glibc.sh. Nothing of ONNX Runtime is linked (`ort` uses load-dynamic).
#
# Environment: GLIBC_TARGET (default 2.31), AARCH64_TOOLS (default ~/.cache/gradwatch/aarch64-tools),
# CARGO_ZIGBUILD_VERSION / ZIGLANG_VERSION (pins, default below).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=aarch64-unknown-linux-gnu
GLIBC_TARGET="${GLIBC_TARGET:-2.31}"
# Outside the repository on purpose: zig reports its lib dir relative to the working directory
# when it lies below it, and cargo-zigbuild then hands bindgen include paths that do not resolve
# from the crate's build directory ("'linux/videodev2.h' file not found").
TOOLS="${AARCH64_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/gradwatch/aarch64-tools}"
VENV="$TOOLS/venv"
# Pinned: the versions this script was tested with (cargo-zigbuild pulls ziglang in).
CARGO_ZIGBUILD_VERSION="${CARGO_ZIGBUILD_VERSION:-0.24.1}"
ZIGLANG_VERSION="${ZIGLANG_VERSION:-0.17.1}"
CARGO="${CARGO:-cargo}"

step() { echo "==> aarch64-build: $*"; }
fail() {
  echo "aarch64-build: FAILED: $*" >&2
  exit 1
}

# --- Debian packages -------------------------------------------------------------------------
NO_RECOMMENDS=1 scripts/apt-install.sh libclang-dev python3-venv binutils-aarch64-linux-gnu file ||
  fail "installing the Debian packages (see above)"

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
case "$(cd "$TOOLS" 2>/dev/null && pwd)/" in
"$PWD"/*) fail "AARCH64_TOOLS=$TOOLS lies inside the repository; zig's relative paths break bindgen there" ;;
esac
# cargo-zigbuild finds zig as `python3 -m ziglang` through the venv's python3 on PATH.
export PATH="$VENV/bin:$PATH"

# --- build -----------------------------------------------------------------------------------
step "cargo zigbuild --release --locked --target $TARGET.$GLIBC_TARGET --features h264-source $*"
start=$(date +%s)
"$CARGO" zigbuild --release --locked --target "$TARGET.$GLIBC_TARGET" --features h264-source "$@" ||
  fail "cargo zigbuild (see the compiler output above)"
step "built in $(($(date +%s) - start)) s"

bin="target/$TARGET/release/gradwatch"
[ -f "$bin" ] || fail "$bin was not produced"
step "$bin: $(du -h "$bin" | cut -f1) ($(file -b "$bin" | cut -d, -f1-2))"
scripts/check-glibc.sh "$bin" "$GLIBC_TARGET" || fail "glibc check: the binary would not start on JetPack 5"
