#!/usr/bin/env bash
# Fetch libonnxruntime.so out of the PyPI wheel (the only binary source reachable
# offline-from-CDNs): pip download --no-deps, then unzip the shared library.
#
#   scripts/fetch-onnxruntime.sh [PLATFORM] [VERSION]
#
# PLATFORM is a pip platform tag (default: this machine's, e.g.
# manylinux_2_27_x86_64; use manylinux_2_28_aarch64 for a Jetson / aarch64 build).
# The library lands in .ort/<platform>/ (git-ignored); gradwatch finds
# .ort/host/libonnxruntime.so by itself, or set ORT_DYLIB_PATH.
set -euo pipefail
cd "$(dirname "$0")/.."

platform="${1:-host}"
version="${2:-${ORT_VERSION:-1.31.1}}"
dest=".ort/${platform}"
if [ -f "$dest/libonnxruntime.so" ] && [ -f "$dest/VERSION" ] && [ "$(cat "$dest/VERSION")" = "$version" ]; then
  echo "onnxruntime $version already in $dest"
  exit 0
fi

PY="${PYTHON:-python3}"
if ! "$PY" -m pip --version >/dev/null 2>&1; then
  echo "error: pip for $PY is needed to fetch ONNX Runtime (apt-get install python3-pip)" >&2
  exit 1
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
args=(download --no-deps --only-binary=:all: -d "$tmp" "onnxruntime==${version}")
if [ "$platform" != "host" ]; then
  # Any CPython the wheel was built for will do: we only take the C library out.
  args+=(--platform "$platform" --python-version 3.11 --implementation cp)
fi
"$PY" -m pip "${args[@]}" -q
wheel="$(ls "$tmp"/onnxruntime-*.whl | head -1)"
mkdir -p "$dest"
"$PY" - "$wheel" "$dest" <<'PY'
import os, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    libs = [n for n in z.namelist() if os.path.basename(n).startswith("libonnxruntime.so")
            and "/capi/" in n and "providers" not in n]
    if not libs:
        sys.exit(f"no libonnxruntime.so in {wheel}")
    for n in libs:
        with z.open(n) as src, open(os.path.join(dest, os.path.basename(n)), "wb") as out:
            out.write(src.read())
names = [os.path.basename(n) for n in libs]
# The wheel ships libonnxruntime.so.<version>; give it the plain name too.
if "libonnxruntime.so" not in names:
    real = sorted(names)[-1]
    link = os.path.join(dest, "libonnxruntime.so")
    if os.path.lexists(link):
        os.remove(link)
    os.symlink(real, link)
print("fetched", ", ".join(names), "into", dest)
PY
echo "$version" > "$dest/VERSION"
