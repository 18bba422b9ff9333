#!/usr/bin/env bash
# The reference model's whole training run, as it was done on a 2-core CPU (about 4 h of
# compute when the machine is otherwise idle; each "epoch" draws 10,240 training images):
#   stage 1: the first epoch of a 6-epoch one-cycle schedule (lr 0.1), then stopped;
#   stage 2: 3 epochs from it, lr 0.05 decaying linearly to 0;
#   stage 3: 2 epochs from that, lr 0.02 decaying linearly to 0;
#   stage 4: 8 epochs, lr 0.03 (5 % warm-up, then linear to 0), rotation +-10 degrees,
#            scale +-10 %, square-root class balancing;
#   stage 5: 4 epochs, lr 0.01 linear to 0, same augmentation;
#   stage 6: 7 epochs, lr 0.02 (5 % warm-up, then linear to 0), colour jitter +-30 %;
#            exports the ONNX model, the report and the samples.
# The staging reflects the compute available when the model was made (one session's time
# at a time), and is kept so the shipped weights can be reproduced.
#   models/train/train.sh ../shared/data/gtsrb
set -euo pipefail
cd "$(dirname "$0")/../.."
data="${1:?usage: models/train/train.sh GTSRB_DATA_DIR}"
py="${PYTHON:-.venv/bin/python}"
mkdir -p out/train
"$py" models/train/train.py --data "$data" --epochs 6 --samples-per-epoch 10240 --lr 0.1 \
  --stop-after 1 --checkpoint out/train/stage1.pt
"$py" models/train/train.py --data "$data" --init out/train/stage1.pt --stage 2 --epochs 3 \
  --samples-per-epoch 10240 --lr 0.05 --stop-after 3 --checkpoint out/train/stage2.pt
"$py" models/train/train.py --data "$data" --init out/train/stage2.pt --stage 3 --epochs 2 \
  --samples-per-epoch 10240 --lr 0.02 --stop-after 2 --checkpoint out/train/stage3.pt
aug=(--samples-per-epoch 10240 --balance 0.5 --rotate 10 --zoom 0.1)
"$py" models/train/train.py --data "$data" --init out/train/stage3.pt --stage 4 --epochs 8 "${aug[@]}" \
  --lr 0.03 --warmup 0.05 --stop-after 8 --checkpoint out/train/stage4.pt
"$py" models/train/train.py --data "$data" --init out/train/stage4.pt --stage 5 --epochs 4 "${aug[@]}" \
  --lr 0.01 --stop-after 4 --checkpoint out/train/stage5.pt
"$py" models/train/train.py --data "$data" --init out/train/stage5.pt --stage 6 --epochs 7 "${aug[@]}" \
  --lr 0.02 --warmup 0.05 --jitter 0.3 --checkpoint out/train/stage6.pt --out models/gtsrb-resnet18.onnx
