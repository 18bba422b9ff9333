#!/usr/bin/env bash
# Prove the aarch64 (Jetson) build computes what the x86-64 build computes: `make aarch64-check`.
#
# Runs the aarch64 gradwatch under qemu-user emulation on this (x86-64) machine and the host
# gradwatch natively, on the same job, and compares:
#   1. gradwatch compile  models/gtsrb-resnet18.onnx -o compiled.onnx
#   2. gradwatch features --model MODEL SAMPLES -o DIR   (compiles in memory; features.npy, logits.npy)
#   3. gradwatch score    --calib models/gtsrb-resnet18.calib.toml SAMPLES   (JSON lines)
#   4. same verdicts, same argmax of the logits, features within a relative tolerance.
# Before that it runs `gradwatch --version` and examples/ort_smoke.rs under qemu, which needs
# nothing but the aarch64 libonnxruntime.so.
#
# ONNX Runtime under qemu: ORT >= 1.31 reads /proc/cpuinfo while the library loads (its own
# cpuid_info and pytorch/cpuinfo); under qemu-user that file is the x86-64 host's and the
# library crashes with SIGSEGV inside dlopen. When `unshare -m` is allowed (root, or a user
# namespace) we bind-mount a fake aarch64 /proc/cpuinfo (Cortex-A78AE, as in Jetson Orin) in a
# private mount namespace for the emulated processes only, and use ORT 1.31.1, the host's
# version. Otherwise we fall back to ORT 1.23.2, which loads without it. See docs/guide/jetson.md.
#
# Environment:
#   CHECK_SAMPLES   samples scored (the first N of the sample file; default 10: under qemu one
#                   image takes ~7 s through the gradient graph, ~200x native; image 8 is flagged
#                   unfamiliar on x86-64, so both verdicts are compared)
#   CHECK_RTOL      relative feature tolerance (default 1e-3)
#   ORT_AARCH64_VERSION  force an ONNX Runtime version for the aarch64 side
#   FAKE_CPUINFO    1 = require the fake /proc/cpuinfo, 0 = never use it, auto (default)
#   SMOKE_ONLY=1    stop after --version and ort_smoke (no models or CLI subcommands needed)
#   KEEP=1          keep the work directory (printed at the end)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

TARGET=aarch64-unknown-linux-gnu
ARM_BIN="$ROOT/target/$TARGET/release/gradwatch"
ARM_SMOKE="$ROOT/target/$TARGET/release/examples/ort_smoke"
HOST_BIN="$ROOT/target/release/gradwatch"
HOST_ORT="$ROOT/.ort/host/libonnxruntime.so"
ARM_ORT_PLATFORM=manylinux_2_28_aarch64
ARM_ORT="$ROOT/.ort/$ARM_ORT_PLATFORM/libonnxruntime.so"
SYSROOT=/usr/aarch64-linux-gnu
MODEL="$ROOT/models/gtsrb-resnet18.onnx"
CALIB="$ROOT/models/gtsrb-resnet18.calib.toml"
SAMPLES="$ROOT/models/samples/gtsrb-test-sample.npy"
CHECK_SAMPLES="${CHECK_SAMPLES:-10}"
CHECK_RTOL="${CHECK_RTOL:-1e-3}"
FAKE_CPUINFO="${FAKE_CPUINFO:-auto}"
PY="${PYTHON:-python3}"

STEP="setup"
step() {
  STEP="$1"
  echo
  echo "==> aarch64-check [$STEP]"
}
REPORTED=0
fail() {
  echo "aarch64-check: FAILED at step [$STEP]: $*" >&2
  REPORTED=1
  exit 1
}
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gradwatch-aarch64-check.XXXXXX")"
cleanup() { [ "${KEEP:-0}" = 1 ] || rm -rf "$WORK"; }
trap 'rc=$?; cleanup; [ $rc -eq 0 ] || [ $REPORTED = 1 ] || echo "aarch64-check: FAILED at step [$STEP] (exit $rc)" >&2' EXIT

timed() {
  # timed LABEL CMD...: run, print wall time (to stderr: stdout may be redirected), keep the exit status.
  local label="$1" t0 ms rc
  shift
  t0=$(date +%s%N)
  set +e
  "$@"
  rc=$?
  set -e
  ms=$((($(date +%s%N) - t0) / 1000000))
  printf '    %s: %d.%01d s\n' "$label" $((ms / 1000)) $((ms % 1000 / 100)) >&2
  return $rc
}

# --- 1. build the aarch64 binaries -------------------------------------------------------------
step "build aarch64"
scripts/aarch64-build.sh --bins --example ort_smoke || fail "scripts/aarch64-build.sh"
[ -x "$ARM_SMOKE" ] || fail "$ARM_SMOKE was not built"

# --- 2. emulator and aarch64 runtime libraries -------------------------------------------------
step "install qemu-user and the aarch64 runtime libraries"
# libc6-arm64-cross gives /usr/aarch64-linux-gnu (the aarch64 loader and libc); the wheel's
# libonnxruntime.so also needs libstdc++ and libgcc_s for aarch64; pip fetches the wheels.
APT_PACKAGES=(libc6-arm64-cross libstdc++6-arm64-cross libgcc-s1-arm64-cross python3-pip)
# qemu-user-static provides qemu-aarch64-static instead; either will do.
command -v qemu-aarch64 >/dev/null 2>&1 || command -v qemu-aarch64-static >/dev/null 2>&1 ||
  APT_PACKAGES+=(qemu-user)
NO_RECOMMENDS=1 scripts/apt-install.sh "${APT_PACKAGES[@]}" || fail "installing the Debian packages (see above)"
QEMU="$(command -v qemu-aarch64 || command -v qemu-aarch64-static || true)"
[ -n "$QEMU" ] || fail "no qemu-aarch64 after installing qemu-user"
[ -e "$SYSROOT/lib/ld-linux-aarch64.so.1" ] || fail "$SYSROOT/lib/ld-linux-aarch64.so.1 missing (libc6-arm64-cross)"
echo "emulator: $QEMU ($("$QEMU" --version | head -1))"

# --- 3. fake /proc/cpuinfo: decide ------------------------------------------------------------
step "choose the aarch64 ONNX Runtime"
CPUINFO="$WORK/cpuinfo"
# One aarch64 block per possible CPU, so the count matches /sys/devices/system/cpu/possible.
ncpu=$(($(sed 's/.*-//' /sys/devices/system/cpu/possible 2>/dev/null || echo 0) + 1))
for ((i = 0; i < ncpu; i++)); do
  printf 'processor\t: %d\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd42\nCPU revision\t: 1\n\n' "$i"
done >"$CPUINFO"
use_fake=0
if [ "$FAKE_CPUINFO" != 0 ]; then
  if unshare -m sh -c 'mount --bind "$1" /proc/cpuinfo && grep -q "CPU implementer" /proc/cpuinfo' sh "$CPUINFO" 2>/dev/null; then
    use_fake=1
  elif [ "$FAKE_CPUINFO" = 1 ]; then
    fail "FAKE_CPUINFO=1 but 'unshare -m' + 'mount --bind' is not permitted here (needs root or CAP_SYS_ADMIN)"
  fi
fi
if [ -n "${ORT_AARCH64_VERSION:-}" ]; then
  ort_version="$ORT_AARCH64_VERSION"
elif [ $use_fake = 1 ]; then
  ort_version="$(cat "$ROOT/.ort/host/VERSION" 2>/dev/null || echo 1.31.1)"
else
  ort_version=1.23.2
fi
echo "fake aarch64 /proc/cpuinfo: $([ $use_fake = 1 ] && echo yes || echo 'no (unshare -m not permitted)'); ONNX Runtime for aarch64: $ort_version"
scripts/fetch-onnxruntime.sh "$ARM_ORT_PLATFORM" "$ort_version" || fail "fetching onnxruntime $ort_version for $ARM_ORT_PLATFORM"
[ -e "$ARM_ORT" ] || fail "$ARM_ORT missing after the fetch"

# arm CMD...: run an aarch64 program under qemu (with the fake cpuinfo when chosen).
arm() {
  if [ $use_fake = 1 ]; then
    unshare -m sh -c 'mount --bind "$1" /proc/cpuinfo && shift && exec "$@"' sh "$CPUINFO" \
      env ORT_DYLIB_PATH="$ARM_ORT" "$QEMU" -L "$SYSROOT" "$@"
  else
    ORT_DYLIB_PATH="$ARM_ORT" "$QEMU" -L "$SYSROOT" "$@"
  fi
}
host() { ORT_DYLIB_PATH="$HOST_ORT" "$@"; }

# --- 4. smoke tests under qemu ------------------------------------------------------------------
step "gradwatch --version under qemu"
timed "qemu gradwatch --version" arm "$ARM_BIN" --version || fail "the aarch64 binary does not start under qemu"
step "examples/ort_smoke under qemu (loads $ARM_ORT, runs a MatMul and a Conv)"
timed "qemu ort_smoke" arm "$ARM_SMOKE" "$ARM_ORT" || fail "ort_smoke: the aarch64 ONNX Runtime does not load or run"

if [ "${SMOKE_ONLY:-0}" = 1 ]; then
  echo
  echo "aarch64-check: smoke tests passed (SMOKE_ONLY=1: CLI comparison skipped)"
  exit 0
fi

# --- 5. host build and inputs -----------------------------------------------------------------
step "host build and inputs"
for f in "$MODEL" "$CALIB" "$SAMPLES"; do [ -f "$f" ] || fail "$f is missing (the reference model and sample: see models/)"; done
if [ ! -e "$HOST_ORT" ]; then scripts/fetch-onnxruntime.sh || fail "fetching the host ONNX Runtime"; fi
${CARGO:-cargo} build --release --locked --bin gradwatch || fail "cargo build --release (host)"
help="$("$HOST_BIN" --help 2>&1 || true)"
for sub in compile features score; do
  grep -qE "^\s+$sub\b" <<<"$help" || fail "gradwatch has no '$sub' subcommand yet (the CLI is needed for the comparison; SMOKE_ONLY=1 runs the rest)"
done

# The first CHECK_SAMPLES samples, as a .npy of the same dtype (qemu is ~200x slower here).
"$PY" - "$SAMPLES" "$WORK/samples.npy" "$CHECK_SAMPLES" <<'PY' || fail "slicing $SAMPLES"
import ast, struct, sys
src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(src, "rb") as f:
    data = f.read()
if data[:6] != b"\x93NUMPY":
    sys.exit(f"{src} is not a .npy file")
major = data[6]
hl_size = 2 if major == 1 else 4
(hlen,) = struct.unpack("<H" if major == 1 else "<I", data[8:8 + hl_size])
start = 8 + hl_size + hlen
header = ast.literal_eval(data[8 + hl_size:start].decode("latin1"))
if header["fortran_order"]:
    sys.exit("fortran-order .npy is not supported")
shape = tuple(header["shape"])
item = int(header["descr"][2:]) if header["descr"][1] in "fiub" else sys.exit("unsupported dtype")
row = item
for d in shape[1:]:
    row *= d
n = min(n, shape[0])
new = dict(header, shape=(n,) + shape[1:])
h = repr(new).encode("latin1")
pad = 64 - (10 + len(h) + 1) % 64
h = h + b" " * pad + b"\n"
with open(dst, "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + data[start:start + n * row])
print(f"samples: first {n} of {shape[0]} ({header['descr']}, {shape[1:]})")
PY

# --- 6. the same job on both -------------------------------------------------------------------
for side in host arm; do
  d="$WORK/$side"
  mkdir -p "$d/features"
  if [ $side = host ]; then bin="$HOST_BIN"; else bin="$ARM_BIN"; fi
  step "$side: gradwatch compile"
  timed "$side compile" $side "$bin" compile "$MODEL" -o "$d/compiled.onnx" ||
    fail "$side gradwatch compile $MODEL"
  step "$side: gradwatch features"
  # features compiles the classifier in memory, as the daemon does (a compiled graph is refused).
  timed "$side features" $side "$bin" features --model "$MODEL" "$WORK/samples.npy" -o "$d/features" ||
    fail "$side gradwatch features"
  for f in features.npy logits.npy; do [ -f "$d/features/$f" ] || fail "$side: features did not write $f"; done
  step "$side: gradwatch score"
  timed "$side score" $side "$bin" score --calib "$CALIB" "$WORK/samples.npy" >"$d/score.jsonl" ||
    fail "$side gradwatch score"
  echo "    $(wc -l <"$d/score.jsonl") score lines"
done

# --- 7. compare -----------------------------------------------------------------------------------
step "compare aarch64 (qemu) with x86-64"
"$PY" - "$WORK/arm" "$WORK/host" "$CHECK_RTOL" <<'PY' || fail "the aarch64 results differ from the x86-64 ones (see above)"
import ast, json, math, struct, sys
from array import array

arm, host, rtol = sys.argv[1], sys.argv[2], float(sys.argv[3])

def load_npy(path):
    """A float .npy as (shape, flat list); pure Python so no numpy is needed."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:6] != b"\x93NUMPY":
        raise SystemExit(f"{path} is not a .npy file")
    hl = 2 if data[6] == 1 else 4
    (hlen,) = struct.unpack("<H" if hl == 2 else "<I", data[8:8 + hl])
    start = 8 + hl + hlen
    header = ast.literal_eval(data[8 + hl:start].decode("latin1"))
    codes = {"<f4": "f", "<f8": "d"}
    if header["descr"] not in codes or header["fortran_order"]:
        raise SystemExit(f"{path}: unsupported {header}")
    a = array(codes[header["descr"]])
    a.frombytes(data[start:])
    if sys.byteorder != "little":
        a.byteswap()
    return tuple(header["shape"]), a

ok = True
def check(cond, msg):
    global ok
    print(("    ok   " if cond else "    FAIL ") + msg)
    ok = ok and cond

for name in ("features", "logits"):
    sa, a = load_npy(f"{arm}/features/{name}.npy")
    sb, b = load_npy(f"{host}/features/{name}.npy")
    check(sa == sb, f"{name}.npy shapes: aarch64 {sa}, x86-64 {sb}")
    if sa != sb:
        continue
    nonfinite = sum(1 for v in a if not math.isfinite(v)) + sum(1 for v in b if not math.isfinite(v))
    check(nonfinite == 0, f"{name}.npy: {nonfinite} non-finite values")
    worst, at = 0.0, 0
    for i, (x, y) in enumerate(zip(a, b)):
        r = abs(x - y) / max(abs(y), 1e-12)
        if r > worst:
            worst, at = r, i
    if name == "features":
        check(worst <= rtol, f"features: max |a-b|/max(|b|,1e-12) = {worst:.3e} (tolerance {rtol:g})"
              + (f", at flat index {at}: aarch64 {a[at]:.6e}, x86-64 {b[at]:.6e}" if worst > 0 else ""))
    else:
        print(f"    info logits: max relative difference {worst:.3e}")
        cols = sa[-1] if len(sa) > 1 else len(a)
        rows = len(a) // cols
        am = [max(range(cols), key=lambda j: a[r * cols + j]) for r in range(rows)]
        bm = [max(range(cols), key=lambda j: b[r * cols + j]) for r in range(rows)]
        diff = [r for r in range(rows) if am[r] != bm[r]]
        check(not diff, f"logits argmax: {rows - len(diff)}/{rows} rows agree" + (f" (differ at {diff[:10]})" if diff else ""))

def scores(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out

import hashlib
ha, hb = (hashlib.sha256(open(f"{d}/compiled.onnx", "rb").read()).hexdigest() for d in (arm, host))
# Informational: the compiler should be deterministic, but float constants folded on two
# architectures may legitimately differ in the last bit; the outputs below are what counts.
print(f"    info compiled.onnx: {'identical' if ha == hb else 'differ'} (sha256 aarch64 {ha[:16]}, x86-64 {hb[:16]})")

sa, sb = scores(f"{arm}/score.jsonl"), scores(f"{host}/score.jsonl")
check(len(sa) == len(sb) and len(sa) > 0, f"score lines: aarch64 {len(sa)}, x86-64 {len(sb)}")
if len(sa) == len(sb):
    vd = [i for i, (x, y) in enumerate(zip(sa, sb)) if x.get("verdict") != y.get("verdict")]
    check(not vd, f"verdicts: {len(sa) - len(vd)}/{len(sa)} agree" + (f" (differ at lines {vd[:10]})" if vd else ""))
    kinds = sorted({str(x.get("verdict")) for x in sb})
    print(f"    info verdicts seen on x86-64: {', '.join(kinds)}")
    ds = [abs(x["score"] - y["score"]) / max(abs(y["score"]), 1e-12) for x, y in zip(sa, sb)
          if isinstance(x.get("score"), (int, float)) and isinstance(y.get("score"), (int, float))]
    check(len(ds) == len(sa), f"score fields present on {len(ds)}/{len(sa)} lines")
    if ds:
        print(f"    info scores: max relative difference {max(ds):.3e}")
sys.exit(0 if ok else 1)
PY

echo
echo "aarch64-check: PASSED (aarch64 under qemu matches x86-64 on $CHECK_SAMPLES samples; ONNX Runtime $ort_version on aarch64)"
[ "${KEEP:-0}" = 1 ] && echo "work directory kept: $WORK"
exit 0
