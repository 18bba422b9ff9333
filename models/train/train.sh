#!/usr/bin/env bash
# The reference model's whole training run, as it was done on a 2-core CPU (about 1.5 h
# when the machine is otherwise idle):
#   stage 1: the first epoch of a 6-epoch one-cycle schedule (lr 0.1), then stopped;
#   stage 2: 3 epochs from it, lr 0.05 decaying linearly to 0;
#   stage 3: 2 epochs from that, lr 0.02 decaying linearly to 0; exports the ONNX model,
#            the report and the samples.
# The staging reflects the compute available when the model was made (the run was cut
# short to fit the machine), and is kept so the shipped weights can be reproduced.
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
  --samples-per-epoch 10240 --lr 0.02 --checkpoint out/train/stage3.pt --out models/gtsrb-resnet18.onnx
