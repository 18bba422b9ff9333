#!/usr/bin/env bash
# Instructions per run of ONNX graphs (one ONNX Runtime thread, batch 16 unless given), counted
# by callgrind: repeatable whatever else the machine is doing, where wall-clock ratios on a
# shared 2-core machine move by 10-30 % between runs. A graph's run is the count of 102 runs
# minus that of 2, over 100: session creation is not repeatable (its count moves by about 30M
# instructions between processes), so the runs must outweigh it; at batch 16 a small zoo
# fixture's gradient graph takes 10-30M a run, so the count is good to about 1 %.
#   scripts/instructions.sh GRAPH.onnx [GRAPH.onnx ...]     (BATCH=16, needs valgrind and .venv)
# Compare a gradient graph with its forward model for a ratio in work rather than in time.
set -euo pipefail
py=${PY:-.venv/bin/python}
runner=$(mktemp --suffix .py)
trap 'rm -f "$runner"' EXIT
cat > "$runner" <<'PY'
import sys, numpy as np, onnxruntime as ort
path, runs, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
so = ort.SessionOptions(); so.intra_op_num_threads = 1; so.inter_op_num_threads = 1
so.add_session_config_entry("session.intra_op.allow_spinning", "0")
s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
shape = [batch if not isinstance(d, int) else d for d in i.shape]
feed = {i.name: np.random.default_rng(1).random(shape).astype(np.float32)}
for _ in range(runs):
    s.run(None, feed)
PY
count() {
  PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$py" "$runner" "$1" "$2" "${BATCH:-16}" 2>&1 |
    grep -o "Collected : [0-9]*" | awk '{print $3}'
}
for g in "$@"; do
  a=$(count "$g" 2)
  b=$(count "$g" 102)
  echo "$g $(((b - a) / 100))"
done
