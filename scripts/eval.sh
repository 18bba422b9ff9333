#!/usr/bin/env bash
# Regenerates docs/results/results.md, docs/results/results.csv and docs/results/figures/*.svg: the paper's experiments
# (Lee & AlRegib, ICIP 2020) on GTSRB, CIFAR-10 and synthetic corruptions.
#
#   scripts/eval.sh                      # 1000 images per set (~52k images through the graph)
#   scripts/eval.sh --per-set 300        # quicker; any `gradwatch eval` option passes through
#   DATA=/path/to/data MODEL=models/x.onnx scripts/eval.sh
#   OUT=docs/results/results-1000 scripts/eval.sh --per-set 1000 --corruptions none   # CIFAR-10 pair only
#   scripts/eval.sh --corruptions legacy          # the ten CURE-TSR-style types of the first report
#   OUT=out/risk scripts/eval.sh --per-set 100 --corruptions geometric,colour,weather   # a few families
#   OUT=out/q scripts/eval.sh --quality   # the detector also reads the image-quality measures (calibrate --quality)
#
# --corruptions all (the default) is every type of docs/guide/degradations.md (35 types x 5 levels): the
# report then adds the risk tables (classifier accuracy next to every detector's AUROC, harmful
# cells, misclassification detection, risk-coverage) and leave-one-family-out generalisation.
# The classifier's accuracy per type and level alone (forward pass only, minutes):
#   gradwatch corrupt --accuracy --model "$MODEL" "$DATA/gtsrb/test_images.npy" --limit 500 -o acc.csv
#
# DATA holds gtsrb/test_images.npy (+ test_labels.npy) and cifar10/test_images.npy (see
# docs/results/results.md). Features are cached in out/eval-cache (keyed by model sha256, set size and
# seed), so a rerun after an interruption only computes what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=${MODEL:-models/gtsrb-resnet18.onnx}
DATA=${DATA:-../shared/data}
CACHE=${CACHE:-out/eval-cache}
OUT=${OUT:-docs/results}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.ort/host/libonnxruntime.so}

[ -f "$MODEL" ] || { echo "error: model $MODEL not found; set MODEL=path/to/model.onnx" >&2; exit 2; }
[ -f "$DATA/gtsrb/test_images.npy" ] || { echo "error: $DATA/gtsrb/test_images.npy not found; set DATA=path/to/data" >&2; exit 2; }
[ -e "$ORT_DYLIB_PATH" ] || scripts/fetch-onnxruntime.sh

cargo build --release --locked --bin gradwatch
exec ./target/release/gradwatch eval --model "$MODEL" --data "$DATA" --out "$OUT" --cache "$CACHE" "$@"
