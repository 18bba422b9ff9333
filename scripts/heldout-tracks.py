#!/usr/bin/env python3
"""Writes the GTSRB training tracks the reference model never trained on (its validation split,
models/README.md) as `class,track,first_row,rows` lines: `make bench-alarms` replays them as
real camera tracks. Usage: scripts/heldout-tracks.py ../shared/data/gtsrb > models/train/heldout-tracks.csv

The split is models/train/train.py's own `split_by_track(labels, tracks, 0.1, seed=20200)`, taken
out of that file (it imports torch, which this does not need); the row count is checked against
the 3,990 validation images the training recorded.
"""
import ast
import os
import sys

import numpy as np

TRAIN = os.path.join(os.path.dirname(__file__), "..", "models", "train", "train.py")


def split_by_track():
    """models/train/train.py's function of that name, compiled alone."""
    with open(TRAIN) as f:
        tree = ast.parse(f.read(), TRAIN)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "split_by_track")
    ns = {"np": np}
    exec(compile(ast.Module(body=[fn], type_ignores=[]), TRAIN, "exec"), ns)
    return ns["split_by_track"]


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "../shared/data/gtsrb"
    labels = np.load(f"{d}/train_labels.npy").astype(np.int64)
    tracks = np.load(f"{d}/train_tracks.npy")
    _, val = split_by_track()(labels, tracks, 0.1, 20200)
    if val.sum() != 3990:
        sys.exit(f"{val.sum()} held-out images, the training recorded 3990: another split")
    print("class,track,first_row,rows")
    rows = np.flatnonzero(val)
    # A track's images are contiguous rows (GTSRB numbers them as the sign grows nearer).
    starts = [i for i, r in enumerate(rows) if i == 0 or r != rows[i - 1] + 1 or tracks[r] != tracks[rows[i - 1]]]
    for k, s in enumerate(starts):
        e = starts[k + 1] if k + 1 < len(starts) else len(rows)
        r0 = int(rows[s])
        print(f"{labels[r0]},{tracks[r0]},{r0},{e - s}")


if __name__ == "__main__":
    main()
