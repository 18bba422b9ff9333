#!/usr/bin/env python3
"""Trains tests/fixtures/user_model/ (a small NHWC, mean/std-normalised GTSRB CNN standing in for a user's model): scripts/train-user-model.py ../shared/data/gtsrb [--gray]

The model is deliberately unlike the reference ResNet-18: its ONNX input is NHWC [N,32,32,3]
(it transposes internally), it expects ImageNet mean/std normalisation done *outside* the graph
and carries no gradwatch metadata, so `gradwatch init` must be told `--mean/--std` (docs/guide/your-model.md).
Training images are split by physical-sign track (10 % of the tracks held out for validation).
Writes user-cnn.onnx, heldout-images.npy / heldout-labels.npy (256 random GTSRB *test* rows,
which the model never saw) and prints the accuracies. CPU, a few minutes; seeds fixed.

--gray writes gray-cnn.onnx instead: the same CNN on one channel, the frame's luma (ITU-R BT.601,
0.299 R + 0.587 G + 0.114 B, as PIL's convert("L")), pixels scaled to [0, 1] and nothing else,
NCHW [1, 1, 32, 32] with the batch fixed at 1, opset 12, and the softmax probabilities as its
output: a model as older tutorials and tools write them, which `gradwatch init` must set up
with no flags at all. It reuses the held-out images of the default run.
"""

import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "user_model")


class UserCnn(nn.Module):
    """Three conv/BN/ReLU blocks with max pooling to 4x4, flatten, one linear layer; NHWC in."""

    def __init__(self, classes=43, gray=False):
        super().__init__()
        self.gray = gray

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

        self.b1, self.b2, self.b3 = block(1 if gray else 3, 16), block(16, 32), block(32, 32)
        self.head = nn.Linear(32 * 4 * 4, classes)
        self.probs = False

    def forward(self, x):
        if not self.gray:
            x = x.permute(0, 3, 1, 2)  # the user's model takes NHWC
        x = F.max_pool2d(self.b1(x), 2)
        x = F.max_pool2d(self.b2(x), 2)
        x = F.max_pool2d(self.b3(x), 2)
        # The gray model flattens as older code does (a Shape/Gather/Reshape chain in ONNX).
        z = self.head(x.reshape(x.size(0), -1) if self.gray else x.flatten(1))
        return F.softmax(z, dim=1) if self.probs else z


LUMA = (0.299, 0.587, 0.114)


def split_by_track(labels, tracks, val_fraction, seed):
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        ts = np.unique(tracks[labels == c])
        rng.shuffle(ts)
        val |= np.isin(tracks, ts[: max(1, int(round(len(ts) * val_fraction)))]) & (labels == c)
    return ~val, val


GRAY = "--gray" in sys.argv


def normalise(u8):
    x = torch.from_numpy(u8).float().div_(255.0)
    return to_input(x)


def to_input(x):
    """NHWC [0, 1] RGB -> the model's input: NCHW luma (gray), else NHWC mean/std-normalised."""
    if GRAY:
        return (x * torch.tensor(LUMA)).sum(3, keepdim=True).permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN)) / torch.tensor(STD)


def augment(x, gen):
    """Random shift (up to 3 px, one per batch, replicate-padded) and per-image brightness and
    contrast jitter, on NHWC in [0,1]."""
    n = x.shape[0]
    p = F.pad(x.permute(0, 3, 1, 2), (3, 3, 3, 3), mode="replicate")
    ox, oy = (int(v) for v in torch.randint(0, 7, (2,), generator=gen))
    out = p[:, :, oy : oy + 32, ox : ox + 32].permute(0, 2, 3, 1)
    b = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.6
    c = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.6
    m = out.mean(dim=(1, 2, 3), keepdim=True)
    return (((out - m) * c + m) * b).clamp(0.0, 1.0)


@torch.no_grad()
def accuracy(model, u8, labels):
    model.eval()
    pred = torch.cat([model(normalise(u8[i : i + 1000])).argmax(1) for i in range(0, len(u8), 1000)])
    return float((pred.numpy() == labels).mean())


def main():
    args = [a for a in sys.argv[1:] if a != "--gray"]
    data = args[0] if args else "../shared/data/gtsrb"
    torch.manual_seed(0)
    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    x = np.load(os.path.join(data, "train_images.npy"))
    y = np.load(os.path.join(data, "train_labels.npy")).astype(np.int64)
    tracks = np.load(os.path.join(data, "train_tracks.npy"))
    tr, va = split_by_track(y, tracks, 0.1, seed=23)
    model = UserCnn(gray=GRAY)
    epochs, batch = 4, 128
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * ((tr.sum() + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=int(steps))
    xt, yt = x[tr], torch.from_numpy(y[tr])
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen).numpy()
        for i in range(0, len(perm), batch):
            idx = perm[i : i + batch]
            xb = augment(torch.from_numpy(xt[idx]).float().div_(255.0), gen)
            xb = to_input(xb)
            loss = F.cross_entropy(model(xb), yt[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        print(f"epoch {ep + 1}: val (held-out tracks) {accuracy(model, x[va], y[va]):.4f}, {time.time() - t0:.0f} s", flush=True)
    tx = np.load(os.path.join(data, "test_images.npy"))
    ty = np.load(os.path.join(data, "test_labels.npy")).astype(np.int64)
    print(f"GTSRB test accuracy {accuracy(model, tx, ty):.4f} ({len(ty)} images)")

    os.makedirs(OUT, exist_ok=True)
    model.eval()
    rows = np.sort(np.random.default_rng(23).choice(len(ty), 256, replace=False))
    if GRAY:
        model.probs = True
        path = os.path.join(OUT, "gray-cnn.onnx")
        torch.onnx.export(model, torch.zeros(1, 1, 32, 32), path, opset_version=12, input_names=["image"],
                          output_names=["probs"], dynamo=False)
        model.probs = False
        print(f"fixture rows accuracy {accuracy(model, tx[rows], ty[rows]):.4f}; wrote {path}")
        return
    path = os.path.join(OUT, "user-cnn.onnx")
    torch.onnx.export(
        model, torch.zeros(1, 32, 32, 3), path, opset_version=17, input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, dynamo=False,
    )
    np.save(os.path.join(OUT, "heldout-images.npy"), tx[rows])
    np.save(os.path.join(OUT, "heldout-labels.npy"), ty[rows].astype(np.uint8))
    print(f"fixture rows accuracy {accuracy(model, tx[rows], ty[rows]):.4f}; wrote {OUT}")


if __name__ == "__main__":
    main()
