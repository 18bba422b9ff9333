#!/usr/bin/env bash
# Gradient/forward ratio of zoo fixtures under two gradwatch binaries, alternating, three runs
# each (the side-by-side tables of docs/results/compiler-zoo.md):
#   [PRESET=fast] scripts/bench-side-by-side.sh BEFORE_BINARY AFTER_BINARY [ARCH/FORM ...]
# Build BEFORE_BINARY from the commit before a change (git worktree add; cargo build --release).
# Prints "ARCH/FORM before|after RATIO" lines; take the median of the three per binary.
set -euo pipefail
before=$1 after=$2
shift 2
fixtures=("$@")
if [ ${#fixtures[@]} -eq 0 ]; then
  fixtures=(resnet18/bn resnet18/default resnet50/bn resnet50/default googlenet/bn googlenet/default
    squeezenet/bn squeezenet/default shufflenet_v2/bn shufflenet_v2/default densenet/bn densenet/default)
fi
export ORT_DYLIB_PATH=${ORT_DYLIB_PATH:-$PWD/.ort/host/libonnxruntime.so}
for f in "${fixtures[@]}"; do
  for _ in 1 2 3; do
    for side in before after; do
      bin=$before
      [ "$side" = after ] && bin=$after
      ratio=$("$bin" bench --model "tests/fixtures/zoo/$f.onnx" --batch 16 --preset "${PRESET:-full}" --seconds 0.6 --rounds 3 2>/dev/null |
        tail -1 | awk -F'|' '{print $(NF-1)}')
      echo "$f $side ${ratio:-failed}"
    done
  done
done
