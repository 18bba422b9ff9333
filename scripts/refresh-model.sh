#!/usr/bin/env bash
# Regenerates what depends on the reference model's weights, after a retrain
# (models/train/train.sh) has replaced models/gtsrb-resnet18.onnx:
#   1. tests/fixtures/golden/        PyTorch float64 per-sample gradient features (make-golden.py)
#   2. models/gtsrb-resnet18.calib.toml and models/gtsrb-resnet18.fast.calib.toml, each with the
#      command recorded in the old file
#   3. models/samples/gtsrb-test-sample.expected.jsonl   the x86-64 scores docs/guide/jetson.md compares
# and prints the new sha256 and what is left to do by hand (docs/results/results.md via scripts/eval.sh,
# the numbers in models/README.md and README.md).
#
#   scripts/refresh-model.sh            # needs .venv (torch, onnx) and out/calib/*.npy
#
# The calibrations are fitted on rows 0..6315 of GTSRB test (../shared/data/gtsrb, with its
# labels; the other half is what evaluations and `make bench-alarms` use) and on
# out/calib/cifar10-1000.npy, the first 1,000 images of ../shared/data/cifar10/test_images.npy
# (made below when missing); neither is committed.
set -euo pipefail
cd "$(dirname "$0")/.."

MODEL=models/gtsrb-resnet18.onnx
CALIB=models/gtsrb-resnet18.calib.toml
PY=${PYTHON:-.venv/bin/python}
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.ort/host/libonnxruntime.so}
[ -e "$ORT_DYLIB_PATH" ] || scripts/fetch-onnxruntime.sh

cargo build --release --locked --bin gradwatch
bin=./target/release/gradwatch

echo "== golden fixture"
"$PY" scripts/make-golden.py --model "$MODEL" --samples models/samples/gtsrb-test-sample.npy \
  --out tests/fixtures/golden

mkdir -p out/calib
[ -f out/calib/cifar10-1000.npy ] || python3 - <<'PY'
import struct
b = open("../shared/data/cifar10/test_images.npy", "rb").read()
hl = struct.unpack("<H", b[8:10])[0]
h = b[10:10 + hl].decode().replace("(10000,", "(1000,").rstrip()
h += " " * ((64 - (10 + len(h) + 1) % 64) % 64) + "\n"
open("out/calib/cifar10-1000.npy", "wb").write(b[:8] + struct.pack("<H", len(h)) + h.encode() + b[10 + hl:10 + hl + 1000 * 3072])
PY
for c in "$CALIB" models/gtsrb-resnet18.fast.calib.toml; do
  echo "== calibration $c"
  cmd=$(sed -n 's/^command = "\(.*\)"$/\1/p' "$c")
  [ -n "$cmd" ] || { echo "error: no command recorded in $c" >&2; exit 2; }
  for f in $(grep -o '[^ ]*\.npy' <<<"$cmd"); do
    [ -f "$f" ] || { echo "error: calibration input $f is missing (see the comment at the top of this script)" >&2; exit 2; }
  done
  echo "$cmd"
  eval "$cmd"
done

echo "== expected scores of the committed sample"
"$bin" score --calib "$CALIB" models/samples/gtsrb-test-sample.npy \
  >models/samples/gtsrb-test-sample.expected.jsonl
flagged=$(grep -c '"verdict":"unfamiliar"' models/samples/gtsrb-test-sample.expected.jsonl || true)
echo "sample: $flagged of $(wc -l <models/samples/gtsrb-test-sample.expected.jsonl) flagged unfamiliar"

echo "== done; sha256 $(sha256sum "$MODEL" | cut -d' ' -f1)"
echo "left by hand: scripts/eval.sh --per-set 200 --corruptions legacy (docs/results/results.md), the numbers in models/README.md,"
echo "README.md and docs/guide/evaluation.md, then make test"
