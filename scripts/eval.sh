#!/usr/bin/env bash
# Regenerates docs/results.md, docs/results.csv and docs/figures/*.svg: the paper's experiments
# (Lee & AlRegib, ICIP 2020) on GTSRB, CIFAR-10 and synthetic corruptions.
#
#   scripts/eval.sh                      # 1000 images per set (~52k images through the graph)
#   scripts/eval.sh --per-set 300        # quicker; any `gradwatch eval` option passes through
#   DATA=/path/to/data MODEL=models/x.onnx scripts/eval.sh
#   OUT=docs/results-1000 scripts/eval.sh --per-set 1000 --corruptions none   # CIFAR-10 pair only
#
# DATA holds gtsrb/test_images.npy (+ test_labels.npy) and cifar10/test_images.npy (see
# docs/results.md). Features are cached in out/eval-cache (keyed by model sha256, set size and
# seed), so a rerun after an interruption only computes what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-models/gtsrb-resnet18.onnx}
DATA=${DATA:-../shared/data}
CACHE=${CACHE:-out/eval-cache}
OUT=${OUT:-docs}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.ort/host/libonnxruntime.so}

[ -f "$MODEL" ] || { echo "error: model $MODEL not found; set MODEL=path/to/model.onnx" >&2; exit 2; }
[ -f "$DATA/gtsrb/test_images.npy" ] || { echo "error: $DATA/gtsrb/test_images.npy not found; set DATA=path/to/data" >&2; exit 2; }
[ -e "$ORT_DYLIB_PATH" ] || scripts/fetch-onnxruntime.sh

cargo build --release --locked --bin gradwatch
exec ./target/release/gradwatch eval --model "$MODEL" --data "$DATA" --out "$OUT" --cache "$CACHE" "$@"
