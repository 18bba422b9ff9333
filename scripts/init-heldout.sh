#!/usr/bin/env bash
# The numbers of docs/your-model.md: `gradwatch init` on held-out labelled GTSRB test rows, then the clean over-threshold rate on the other half (scripts/init-heldout.sh [DATA] [OUT]).
#
# Three setups: the reference ResNet-18 (rows 0..6315 of GTSRB test), the user-model fixture
# (tests/fixtures/user_model, NHWC, ImageNet mean/std outside the graph; same rows), and the
# reference model calibrated the way the issue's newcomer did (the first 2,000 GTSRB *training*
# images, sorted by class: 2 classes), which must warn. Each calibration then scores rows
# 6315..12630 of GTSRB test, which none of them saw. Needs numpy (for the row slice) and a
# release build. On a 2-core machine: about 30 minutes.
set -euo pipefail
DATA=${1:-../shared/data/gtsrb}
OUT=${2:-out/init-heldout}
GW=${GW:-./target/release/gradwatch}
PY=${PY:-python3}
mkdir -p "$OUT"
EVAL="$OUT/test-6315-12630.npy"
[ -f "$EVAL" ] || "$PY" -c "import numpy as np, sys; np.save(sys.argv[2], np.load(sys.argv[1])[6315:])" \
    "$DATA/test_images.npy" "$EVAL"

over() { # calibration model -> "k of n over the threshold"
    local json="$OUT/$(basename "$1" .calib.toml).score.jsonl"
    "$GW" score --calib "$1" --model "$2" "$EVAL" > "$json"
    local k n
    k=$(grep -c '"verdict":"unfamiliar"' "$json" || true)
    n=$(wc -l < "$json")
    awk -v k="$k" -v n="$n" 'BEGIN { printf "%d of %d clean held-out images over the threshold: %.2f %%\n", k, n, 100 * k / n }'
}

run() { # name model args...
    local name=$1 model=$2
    shift 2
    echo "== $name: $GW init $model $*"
    "$GW" init "$model" "$@" -o "$OUT/$name" 2>&1 | grep -v '^\s*$' | tee "$OUT/$name.log"
    echo "== $name, GTSRB test rows 6315..12630: $(over "$OUT/$name/$(basename "$model" .onnx).calib.toml" "$model")"
}

run reference models/gtsrb-resnet18.onnx --images "$DATA/test_images.npy" --labels "$DATA/test_labels.npy" \
    --rows 0..6315
run user-model tests/fixtures/user_model/user-cnn.onnx --images "$DATA/test_images.npy" \
    --labels "$DATA/test_labels.npy" --rows 0..6315 --layout nhwc --mean imagenet --std imagenet
run training-images models/gtsrb-resnet18.onnx --images "$DATA/train_images.npy" \
    --labels "$DATA/train_labels.npy" --rows 0..2000
