#!/usr/bin/env python3
"""Train the reference traffic-sign model (ResNet-18, CIFAR style) on GTSRB.

    python models/train/train.py --data ../shared/data/gtsrb --out models/gtsrb-resnet18.onnx

Validation is split by physical-sign track (images of one track are
near-duplicates). Seeds are fixed; on a CPU the run is deterministic for a
given thread count. The script writes the ONNX model with its preprocessing in
metadata_props, a JSON report (test accuracy, per-class accuracy) and the small
class-balanced sample of the test set used by gradwatch's demo and tests.
"""

import argparse
import json
import math
import os
import random
import struct
import sys
import time
import zlib

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet import ResNet18  # noqa: E402

CLASS_NAMES = [
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)",
    "Speed limit (60km/h)", "Speed limit (70km/h)", "Speed limit (80km/h)",
    "End of speed limit (80km/h)", "Speed limit (100km/h)", "Speed limit (120km/h)",
    "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop",
    "No vehicles", "Vehicles over 3.5 metric tons prohibited", "No entry",
    "General caution", "Dangerous curve to the left", "Dangerous curve to the right",
    "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right",
    "Road work", "Traffic signals", "Pedestrians", "Children crossing",
    "Bicycles crossing", "Beware of ice/snow", "Wild animals crossing",
    "End of all speed and passing limits", "Turn right ahead", "Turn left ahead",
    "Ahead only", "Go straight or right", "Go straight or left", "Keep right",
    "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
]


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def split_by_track(labels, tracks, val_fraction, seed):
    """Hold out whole tracks, stratified by class, so validation is honest."""
    rng = np.random.default_rng(seed)
    val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        ts = np.unique(tracks[labels == c])
        rng.shuffle(ts)
        n_val = max(1, int(round(len(ts) * val_fraction)))
        val |= np.isin(tracks, ts[:n_val]) & (labels == c)
    return ~val, val


def affine(x, gen, rotate_deg, zoom):
    """Random rotation (+-rotate_deg) and scale (1 +- zoom) about the centre, border-padded."""
    n = x.shape[0]
    a = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(rotate_deg)
    z = 1.0 + (torch.rand(n, generator=gen) * 2 - 1) * zoom
    cos, sin = torch.cos(a) / z, torch.sin(a) / z
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(n)], 1),
                         torch.stack([sin, cos, torch.zeros(n)], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def augment(x, gen, rotate_deg=0.0, zoom=0.0, jitter=0.2):
    """Random crop (pad 4) and colour jitter (+-jitter) on a float batch in [0,1]. No flips.

    With rotate_deg or zoom (the fourth stage), a random rotation and scale come first:
    the GTSRB test set's signs are seen at more angles and sizes than one track shows.
    """
    n = x.shape[0]
    if rotate_deg or zoom:
        x = affine(x, gen, rotate_deg, zoom)
    padded = F.pad(x, (4, 4, 4, 4), mode="replicate")
    ox = torch.randint(0, 9, (n,), generator=gen)
    oy = torch.randint(0, 9, (n,), generator=gen)
    out = torch.stack([padded[i, :, oy[i]:oy[i] + 32, ox[i]:ox[i] + 32] for i in range(n)])
    b = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * (2 * jitter)  # brightness
    c = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * (2 * jitter)  # contrast
    s = 1.0 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * (2 * jitter)  # saturation
    mean = out.mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * c + mean
    gray = out.mean(dim=1, keepdim=True)
    out = (out - gray) * s + gray
    return (out * b).clamp(0.0, 1.0)


def to_float(images_u8):
    return torch.from_numpy(images_u8).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def predict(model, images_u8, mean, std, device, batch=500):
    model.eval()
    preds = []
    for i in range(0, len(images_u8), batch):
        x = (to_float(images_u8[i:i + batch]).to(device) - mean) / std
        preds.append(model(x).argmax(1).cpu())
    return torch.cat(preds).numpy()


def write_png(path, rgb):
    """Minimal RGB8 PNG writer (no imaging library needed)."""
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[y].tobytes() for y in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)))
        f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
        f.write(chunk(b"IEND", b""))


def write_samples(test_x, test_y, out_dir, per_class_total, n_png, seed):
    """A fixed, class-balanced subset of the GTSRB test set for demo and tests."""
    os.makedirs(os.path.join(out_dir, "frames"), exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = np.unique(test_y)
    per = per_class_total // len(classes)
    extra = per_class_total - per * len(classes)
    picks = []
    for i, c in enumerate(classes):
        idx = np.flatnonzero(test_y == c)
        k = per + (1 if i < extra else 0)
        picks.extend(rng.choice(idx, size=min(k, len(idx)), replace=False).tolist())
    picks = np.array(sorted(picks))
    np.save(os.path.join(out_dir, "gtsrb-test-sample.npy"), test_x[picks])
    np.save(os.path.join(out_dir, "gtsrb-test-sample-labels.npy"), test_y[picks])
    np.save(os.path.join(out_dir, "gtsrb-test-sample-indices.npy"), picks.astype(np.int64))
    # One PNG frame per class for the first n_png classes, named so that name
    # order is a stable replay order.
    for j, c in enumerate(classes[:n_png]):
        i = picks[test_y[picks] == c][0]
        write_png(os.path.join(out_dir, "frames", f"frame-{j:03d}-class{c:02d}.png"), test_x[i])
    return picks


def export_onnx(model, path, mean, std):
    import onnx
    from torch.onnx import TrainingMode

    model.eval().cpu()
    dummy = torch.zeros(1, 3, 32, 32)
    tmp = path + ".tmp"
    # PRESERVE (with the model in eval mode) keeps BatchNormalization as its own
    # node: the default EVAL export folds it into Conv and changes the
    # gradient features (the BN scale/shift parameter sets would vanish).
    torch.onnx.export(
        model, dummy, tmp, opset_version=17, input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, do_constant_folding=False,
        training=TrainingMode.PRESERVE, dynamo=False,
    )
    m = onnx.load(tmp)
    bn = sum(1 for n in m.graph.node if n.op_type == "BatchNormalization")
    assert bn == 20, f"expected 20 BatchNormalization nodes, found {bn}"
    meta = {
        "gradwatch.model_name": "gtsrb-resnet18",
        "gradwatch.input_layout": "NCHW",
        "gradwatch.input_size": "32x32",
        "gradwatch.color_order": "RGB",
        "gradwatch.scale": str(1.0 / 255.0),
        "gradwatch.mean": ",".join(f"{v:.6f}" for v in mean),
        "gradwatch.std": ",".join(f"{v:.6f}" for v in std),
        "gradwatch.class_names": json.dumps(CLASS_NAMES),
    }
    del m.metadata_props[:]
    for k, v in meta.items():
        p = m.metadata_props.add()
        p.key, p.value = k, v
    m.producer_name = "gradwatch models/train/train.py"
    onnx.checker.check_model(m)
    onnx.save(m, path)
    os.remove(tmp)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with GTSRB .npy arrays (see ../shared/data/README.md)")
    ap.add_argument("--out", default="models/gtsrb-resnet18.onnx")
    ap.add_argument("--samples-dir", default="models/samples")
    ap.add_argument("--report", default="models/train/report.json")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--samples-per-epoch", type=int, default=12800,
                    help="images drawn (without replacement) per epoch; GTSRB tracks are 30 near-duplicates, "
                         "so a fraction of the set per epoch converges as well and fits a 2-core CPU")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=20200)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    ap.add_argument("--checkpoint", default="out/train/checkpoint.pt")
    ap.add_argument("--smoke", action="store_true", help="tiny run to check the script end to end")
    ap.add_argument("--stage", type=int, default=1, help="stage number; seeds the sample order of a staged run")
    ap.add_argument("--stop-after", type=int, default=0, help="stop (checkpoint only, no export) after this many epochs")
    ap.add_argument("--rotate", type=float, default=0.0, help="random rotation augmentation, +- degrees")
    ap.add_argument("--zoom", type=float, default=0.0, help="random scale augmentation, 1 +- this")
    ap.add_argument("--balance", type=float, default=0.0,
                    help="draw training images with weight n_class^-BALANCE (0: uniform; 0.5: square-root "
                         "balancing, so rare classes such as Pedestrians are seen more often)")
    ap.add_argument("--warmup", type=float, default=0.0,
                    help="with --init: fraction of the steps spent ramping the lr up linearly before the decay")
    ap.add_argument("--jitter", type=float, default=0.2, help="brightness/contrast/saturation jitter, 1 +- this")
    ap.add_argument("--init", help="start from this checkpoint's weights, with a linearly decaying learning "
                                   "rate (after the --warmup ramp, if any): a later stage of a staged run")
    args = ap.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    d = args.data
    tr_x = np.load(os.path.join(d, "train_images.npy"))
    tr_y = np.load(os.path.join(d, "train_labels.npy")).astype(np.int64)
    tr_t = np.load(os.path.join(d, "train_tracks.npy"))
    te_x = np.load(os.path.join(d, "test_images.npy"))
    te_y = np.load(os.path.join(d, "test_labels.npy")).astype(np.int64)
    if args.smoke:
        te_x, te_y = te_x[::20], te_y[::20]
    train_m, val_m = split_by_track(tr_y, tr_t, 0.1, args.seed)
    if args.smoke:
        val_m &= np.arange(len(val_m)) % 10 == 0
    print(f"train {train_m.sum()} val {val_m.sum()} (split by track) test {len(te_y)} device {device}", flush=True)

    xtr, ytr = tr_x[train_m], tr_y[train_m]
    mean = xtr.reshape(-1, 3).mean(0) / 255.0
    std = xtr.reshape(-1, 3).std(0) / 255.0
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device)

    model = ResNet18(43).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps_per_epoch = math.ceil(min(args.samples_per_epoch, len(ytr)) / args.batch)
    total_steps = args.epochs * steps_per_epoch
    if args.init:
        ck = torch.load(args.init, map_location=device, weights_only=False)  # our own checkpoint
        model.load_state_dict(ck["model"])
        # Keep the first stage's normalisation so the weights see the inputs they learnt on.
        mean, std = ck["mean"], ck["std"]
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1).to(device)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1).to(device)
        warm = int(args.warmup * total_steps)

        def lr_at(s):
            if s < warm:
                return (s + 1) / warm
            return max(0.0, 1.0 - (s - warm) / max(1, total_steps - warm))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        gen_seed = args.seed + args.stage - 1
    else:
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total_steps, pct_start=0.25)
        gen_seed = args.seed
    gen = torch.Generator().manual_seed(gen_seed)
    xtr_t = to_float(xtr)
    ytr_t = torch.from_numpy(ytr)
    t0 = time.time()
    if args.balance:
        counts = np.bincount(ytr)
        draw_w = torch.from_numpy(counts[ytr].astype(np.float64) ** -args.balance)
    for epoch in range(args.epochs):
        model.train()
        if args.balance:
            perm = torch.multinomial(draw_w, steps_per_epoch * args.batch, replacement=False, generator=gen)
        else:
            perm = torch.randperm(len(ytr), generator=gen)[: steps_per_epoch * args.batch]
        tot, correct, loss_sum = 0, 0, 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * args.batch:(s + 1) * args.batch]
            x = augment(xtr_t[idx], gen, args.rotate, args.zoom, args.jitter).to(device)
            x = ((x - mean_t) / std_t).contiguous(memory_format=torch.channels_last)
            y = ytr_t[idx].to(device)
            logits = model(x)
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
            if s % 20 == 0:
                print(f"  epoch {epoch + 1} step {s}/{steps_per_epoch} loss {loss.item():.4f} "
                      f"{time.time() - t0:.0f}s", flush=True)
        val_acc = (predict(model, tr_x[val_m], mean_t, std_t, device) == tr_y[val_m]).mean()
        print(f"epoch {epoch + 1}: train loss {loss_sum / tot:.4f} acc {correct / tot:.4f} "
              f"val acc {val_acc:.4f} ({time.time() - t0:.0f}s)", flush=True)
        os.makedirs(os.path.dirname(args.checkpoint), exist_ok=True)
        torch.save({"model": model.state_dict(), "mean": mean, "std": std, "epoch": epoch + 1}, args.checkpoint)
        if args.stop_after and epoch + 1 >= args.stop_after:
            print(f"stopping after epoch {epoch + 1} (--stop-after); checkpoint {args.checkpoint}", flush=True)
            return

    model = model.to(memory_format=torch.contiguous_format)
    pred = predict(model, te_x, mean_t, std_t, device)
    test_acc = float((pred == te_y).mean())
    per_class = {int(c): float((pred[te_y == c] == c).mean()) for c in np.unique(te_y)}
    print(f"test accuracy {test_acc:.4f} on {len(te_y)} images", flush=True)
    export_onnx(model, args.out, mean, std)
    picks = write_samples(te_x, te_y, args.samples_dir, 512, 43, args.seed)
    report = {
        "test_accuracy": test_acc,
        "test_images": int(len(te_y)),
        "val_accuracy": float(val_acc),
        "per_class_accuracy": per_class,
        "sample_accuracy": float((pred[picks] == te_y[picks]).mean()),
        "epochs": args.epochs,
        "samples_per_epoch": args.samples_per_epoch,
        "seed": args.seed,
        "train_seconds": round(time.time() - t0),
        "device": str(device),
        "torch": torch.__version__,
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    with open(args.report, "w") as f:
        json.dump(report, f, indent=1)
    print(json.dumps({k: v for k, v in report.items() if k != "per_class_accuracy"}), flush=True)


if __name__ == "__main__":
    main()
