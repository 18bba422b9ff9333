#!/usr/bin/env bash
# The numbers of docs/guide/your-model.md: `gradwatch init` on held-out labelled GTSRB test rows, then the clean over-threshold rate on other held-out rows (scripts/init-heldout.sh [DATA] [OUT] [SETUP...]).
#
# Setups: `user-model` (tests/fixtures/user_model: NHWC, ImageNet mean/std outside the graph),
# `reference` (the reference ResNet-18), both calibrated on GTSRB test rows $INIT_ROWS; and
# `training-images`, the reference model calibrated the way the issue's newcomer did (the first
# 2,000 GTSRB *training* images, sorted by class: 2 classes), which must warn. Each calibration
# then scores GTSRB test rows $EVAL_ROWS, which none of them saw. $INIT_ARGS go to every init
# (e.g. INIT_ARGS="--preset head"). Needs numpy (the row slice)
# and a release build. ResNet-18 setups take minutes each on a 2-core machine.
set -euo pipefail
DATA=${1:-../shared/data/gtsrb}
OUT=${2:-out/init-heldout}
shift $(( $# > 2 ? 2 : $# ))
SETUPS=${*:-user-model training-images reference}
INIT_ROWS=${INIT_ROWS:-0..6315}
EVAL_ROWS=${EVAL_ROWS:-6315..12630}
GW=${GW:-./target/release/gradwatch}
PY=${PY:-python3}
mkdir -p "$OUT"
EVAL="$OUT/test-${EVAL_ROWS/../-}.npy"
[ -f "$EVAL" ] || "$PY" -c "import numpy as np, sys; a, b = map(int, sys.argv[3].split('..')); \
np.save(sys.argv[2], np.load(sys.argv[1])[a:b])" "$DATA/test_images.npy" "$EVAL" "$EVAL_ROWS"

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
    echo "== $name: $GW init $model $* ${INIT_ARGS:-}"
    # shellcheck disable=SC2086 # INIT_ARGS is a word list
    "$GW" init "$model" "$@" ${INIT_ARGS:-} -o "$OUT/$name" > "$OUT/$name.log" 2>&1
    grep -v INFO "$OUT/$name.log"
    echo "== $name, GTSRB test rows $EVAL_ROWS: $(over "$OUT/$name/$(basename "$model" .onnx).calib.toml" "$model")"
}

for s in $SETUPS; do
    case $s in
        user-model) run user-model tests/fixtures/user_model/user-cnn.onnx --images "$DATA/test_images.npy" \
            --labels "$DATA/test_labels.npy" --rows "$INIT_ROWS" --layout nhwc --mean imagenet --std imagenet ;;
        reference) run reference models/gtsrb-resnet18.onnx --images "$DATA/test_images.npy" \
            --labels "$DATA/test_labels.npy" --rows "$INIT_ROWS" ;;
        training-images) run training-images models/gtsrb-resnet18.onnx --images "$DATA/train_images.npy" \
            --labels "$DATA/train_labels.npy" --rows 0..2000 ;;
        *) echo "unknown setup $s (user-model, reference, training-images)" >&2; exit 2 ;;
    esac
done
