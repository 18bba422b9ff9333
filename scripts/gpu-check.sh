#!/usr/bin/env bash
# GPU check of the gradient graphs on a machine with an NVIDIA GPU (CUDA 12 driver), writing
# docs/gpu.md:
#   1. installs the GPU build of ONNX Runtime from PyPI (onnxruntime-gpu, with the CUDA, cuDNN
#      and TensorRT libraries as pip wheels) into a throw-away venv;
#   2. `gradwatch bench --providers cuda,cpu` and `--providers tensorrt,cuda,cpu` (both presets);
#   3. which nodes of each compiled graph TensorRT does not take (from ONNX Runtime's profile:
#      the provider each node ran on);
#   4. TensorRT FP16 vs FP32 features on the committed sample (relative error per feature).
#
#   scripts/gpu-check.sh [OUT.md]          # default docs/gpu.md; ~10 minutes incl. downloads
#
# Environment: ORT_GPU_VERSION (default 1.31.1, the CPU build's version), PYTHON (python3),
# VENV (/tmp/gradwatch-gpu-venv), SECONDS_PER (bench seconds, default 3).
# Without a GPU it stops at once with exit code 3 (nothing to check).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-docs/gpu.md}
VER=${ORT_GPU_VERSION:-1.31.1}
PY=${PYTHON:-python3}
VENV=${VENV:-/tmp/gradwatch-gpu-venv}
SECS=${SECONDS_PER:-3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "gpu-check: no NVIDIA GPU here (nvidia-smi missing or failing); nothing to check" >&2
  exit 3
fi
gpu=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)
echo "== GPU: $gpu"

echo "== ONNX Runtime GPU $VER from PyPI into $VENV"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q --upgrade pip
"$VENV/bin/pip" install -q "onnxruntime-gpu==$VER" numpy \
  nvidia-cuda-runtime-cu12 nvidia-cublas-cu12 nvidia-cudnn-cu12 nvidia-cufft-cu12 nvidia-curand-cu12 \
  nvidia-cuda-nvrtc-cu12 tensorrt-cu12-libs
site=$("$VENV/bin/python" -c 'import onnxruntime, os; print(os.path.dirname(os.path.dirname(onnxruntime.__file__)))')
lib=$(ls "$site"/onnxruntime/capi/libonnxruntime.so* | head -1)
# The CUDA/cuDNN/TensorRT shared libraries of the wheels, for both Rust (dlopen) and Python.
libdirs=$(find "$site/nvidia" "$site/tensorrt_libs" -maxdepth 2 -name lib -type d 2>/dev/null | tr '\n' ':')
libdirs="$libdirs$(find "$site" -maxdepth 1 -name 'tensorrt_libs' -type d | tr '\n' ':')"
export LD_LIBRARY_PATH="$libdirs$site/onnxruntime/capi:${LD_LIBRARY_PATH:-}"
export ORT_DYLIB_PATH=$lib
echo "   $lib"

echo "== build"
cargo build --release --locked --bin gradwatch
bin=./target/release/gradwatch
MODEL=models/gtsrb-resnet18.onnx
for p in full fast; do "$bin" compile "$MODEL" --preset "$p" -o "$WORK/$p.onnx"; done

echo "== bench: CUDA"
"$bin" bench --providers cuda,cpu --batch 1,16,64 --seconds "$SECS" --rounds 3 --preset full,fast \
  | tee "$WORK/bench-cuda.md"
echo "== bench: TensorRT (FP32; the engine is built on the first run, then cached)"
"$bin" bench --providers tensorrt,cuda,cpu --trt-cache "$WORK/trt" --batch 1,16,64 --seconds "$SECS" --rounds 3 \
  --preset full,fast | tee "$WORK/bench-trt.md"

echo "== TensorRT placement and FP16 vs FP32"
"$VENV/bin/python" - "$WORK" models/samples/gtsrb-test-sample.npy >"$WORK/trt.md" <<'PYEOF'
import glob, json, os, sys, collections
import numpy as np
import onnxruntime as ort

work, sample = sys.argv[1], sys.argv[2]
x = np.load(sample)[:64].astype(np.float32) / 255.0
# The reference model's preprocessing: NCHW, per-channel mean/std from its metadata.
meta = ort.InferenceSession(os.path.join(work, "full.onnx"), providers=["CPUExecutionProvider"]).get_modelmeta()
props = meta.custom_metadata_map
mean = np.array([float(v) for v in props.get("gradwatch.mean", "0,0,0").split(",")], np.float32)
std = np.array([float(v) for v in props.get("gradwatch.std", "1,1,1").split(",")], np.float32)
x = ((x - mean) / std).transpose(0, 3, 1, 2).copy()

def session(path, fp16, profile):
    so = ort.SessionOptions()
    so.enable_profiling = profile
    so.profile_file_prefix = os.path.join(work, "prof")
    trt = {"trt_fp16_enable": fp16, "trt_engine_cache_enable": True,
           "trt_engine_cache_path": os.path.join(work, "trt-py")}
    return ort.InferenceSession(path, so, providers=[("TensorrtExecutionProvider", trt), "CUDAExecutionProvider",
                                                     "CPUExecutionProvider"])

print("| preset | nodes | on TensorRT | on CUDA | on CPU | op types not on TensorRT |")
print("|---|---:|---:|---:|---:|---|")
feats = {}
for preset in ["full", "fast"]:
    path = os.path.join(work, f"{preset}.onnx")
    s = session(path, False, True)
    name = s.get_inputs()[0].name
    out = s.run(None, {name: x})
    prof = s.end_profiling()
    events = json.load(open(prof))
    placed = collections.defaultdict(set)
    ops = collections.defaultdict(collections.Counter)
    for e in events:
        a = e.get("args", {})
        if e.get("cat") == "Node" and "provider" in a:
            placed[a["provider"]].add(e["name"])
            ops[a["provider"]][a.get("op_name", "?")] += 1
    # TensorRT runs its subgraphs as fused nodes named TensorrtExecutionProvider_TRTKernel_*.
    n_trt = len(placed.get("TensorrtExecutionProvider", set()))
    n_cuda = len(placed.get("CUDAExecutionProvider", set()))
    n_cpu = len(placed.get("CPUExecutionProvider", set()))
    rejected = collections.Counter()
    for p in ("CUDAExecutionProvider", "CPUExecutionProvider"):
        rejected.update({k: v for k, v in ops[p].items()})
    # One profiled run: each node ran once, so the counts are node counts.
    total = n_trt + n_cuda + n_cpu
    rej = ", ".join(f"{k} x{v}" for k, v in rejected.most_common()) or "none"
    print(f"| {preset} | {total} | {n_trt} (fused subgraphs) | {n_cuda} | {n_cpu} | {rej} |")
    outs = [o.name for o in s.get_outputs()]
    f32 = out[outs.index("grad_features")]
    f16 = session(path, True, False).run(None, {name: x})[outs.index("grad_features")]
    feats[preset] = (f32, f16)

print()
print("FP16 vs FP32 TensorRT engines on 64 sample images (relative error |f16 - f32| / |f32| per value):")
print()
print("| preset | features | median | 99th percentile | max | values that are 0 or non-finite in FP16 |")
print("|---|---:|---:|---:|---:|---:|")
for preset, (a, b) in feats.items():
    rel = np.abs(b - a) / np.maximum(np.abs(a), 1e-30)
    bad = int((~np.isfinite(b) | (b == 0) & (a != 0)).sum())
    print(f"| {preset} | {a.shape[1]} | {np.median(rel):.2e} | {np.percentile(rel, 99):.2e} | {rel.max():.2e} | {bad} of {b.size} |")
PYEOF
cat "$WORK/trt.md"

{
  echo "# gradwatch on an NVIDIA GPU"
  echo
  echo "Written by \`scripts/gpu-check.sh\` on $(date -u +%Y-%m-%d): $gpu, onnxruntime-gpu $VER (PyPI wheels"
  echo "for CUDA 12, cuDNN and TensorRT). Regenerate with \`scripts/gpu-check.sh\`."
  echo
  echo "## CUDA (\`gradwatch bench --providers cuda,cpu --batch 1,16,64 --rounds 3\`)"
  echo
  cat "$WORK/bench-cuda.md"
  echo
  echo "## TensorRT FP32 (\`gradwatch bench --providers tensorrt,cuda,cpu\`)"
  echo
  cat "$WORK/bench-trt.md"
  echo
  echo "## TensorRT placement and FP16"
  echo
  cat "$WORK/trt.md"
} >"$OUT"
echo "== wrote $OUT"
