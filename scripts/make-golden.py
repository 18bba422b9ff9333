#!/usr/bin/env python3
"""Write the PyTorch golden fixture for the gradient compiler.

    .venv/bin/python scripts/make-golden.py --model models/gtsrb-resnet18.onnx \
        --samples models/samples/gtsrb-test-sample.npy --out tests/fixtures/golden

Loads the ONNX model's weights into the CIFAR-style ResNet-18 of models/train/resnet.py,
computes per-sample gradients of the paper's loss (binary cross-entropy on the logits
against the all-ones label) with torch.func (vmap over grad) in float64, and writes:
  input.npy     float32 [N,3,32,32]  preprocessed input (as the model sees it)
  features.npy  float64 [N,62]       squared L2 norm of each parameter tensor's gradient
  logits.npy    float64 [N,43]
  names.json                         parameter names, in graph order
The Rust test (tests/it/golden.rs) reads these and needs no Python.
With --check FILE.onnx it also runs a compiled gradient graph through onnxruntime and
prints the worst relative error per feature.
"""

import argparse
import json
import os
import sys

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.func import functional_call, grad, vmap

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "models", "train"))
from resnet import ResNet18  # noqa: E402


def onnx_weights(model):
    """Initializers by name, following the Identity aliases PyTorch's exporter writes."""
    w = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Identity" and n.input[0] in w:
            w[n.output[0]] = w[n.input[0]]
    return w


def preprocess(images_u8, meta):
    mean = np.array([float(v) for v in meta["gradwatch.mean"].split(",")], dtype=np.float32)
    std = np.array([float(v) for v in meta["gradwatch.std"].split(",")], dtype=np.float32)
    x = images_u8.astype(np.float32) / 255.0
    x = (x - mean) / std
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="models/gtsrb-resnet18.onnx")
    ap.add_argument("--samples", default="models/samples/gtsrb-test-sample.npy")
    ap.add_argument("--count", type=int, default=8)
    ap.add_argument("--out", default="tests/fixtures/golden")
    ap.add_argument("--check", help="a compiled gradient graph to compare (onnxruntime)")
    a = ap.parse_args()

    m = onnx.load(a.model)
    meta = {p.key: p.value for p in m.metadata_props}
    w = onnx_weights(m)
    net = ResNet18(43).double().eval()
    state = net.state_dict()
    for k in state:
        if k.endswith("num_batches_tracked"):
            continue
        state[k] = torch.from_numpy(np.array(w[k])).double()
    net.load_state_dict(state)

    images = np.load(a.samples)
    idx = np.linspace(0, len(images) - 1, a.count).round().astype(int)
    x32 = preprocess(images[idx], meta)
    x = torch.from_numpy(x32).double()

    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}

    def loss(p, xi):
        z = functional_call(net, (p, buffers), (xi.unsqueeze(0),))
        y = torch.ones_like(z)
        return torch.nn.functional.binary_cross_entropy_with_logits(z, y, reduction="mean")

    g = vmap(grad(loss), in_dims=(None, 0))(params, x)
    names = list(params.keys())
    feats = torch.stack([g[k].reshape(len(x), -1).pow(2).sum(1) for k in names], 1).numpy()
    with torch.no_grad():
        logits = net(x).numpy()

    # The same computation in float32 (PyTorch's own kernels), to show how far any float32
    # formulation sits from the float64 truth on this model.
    net32 = ResNet18(43).eval()
    net32.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    p32 = {k: v.detach() for k, v in net32.named_parameters()}
    b32 = {k: v.detach() for k, v in net32.named_buffers()}

    def loss32(p, xi):
        z = functional_call(net32, (p, b32), (xi.unsqueeze(0),))
        return torch.nn.functional.binary_cross_entropy_with_logits(z, torch.ones_like(z), reduction="mean")

    g32 = vmap(grad(loss32), in_dims=(None, 0))(p32, x.float())
    f32 = torch.stack([g32[k].reshape(len(x), -1).double().pow(2).sum(1) for k in names], 1).numpy()
    rel32 = np.abs(f32 - feats) / np.maximum(np.abs(feats), 1e-30)
    print(f"PyTorch float32 vs float64: max relative error {rel32.max():.3e} "
          f"(worst {names[int(rel32.max(0).argmax())]})")

    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, "input.npy"), x32)
    np.save(os.path.join(a.out, "features.npy"), feats)
    np.save(os.path.join(a.out, "logits.npy"), logits)
    with open(os.path.join(a.out, "names.json"), "w") as f:
        json.dump(names, f, indent=0)
    print(f"wrote {a.out}: {len(x)} samples, {len(names)} features, "
          f"feature range {feats.min():.3e} .. {feats.max():.3e}")

    if a.check:
        import onnxruntime as ort
        s = ort.InferenceSession(a.check, providers=["CPUExecutionProvider"])
        out = dict(zip([o.name for o in s.get_outputs()], s.run(None, {"image": x32})))
        got = out["grad_features"].astype(np.float64)
        rel = np.abs(got - feats) / np.maximum(np.abs(feats), 1e-30)
        worst = rel.max(0)
        for i in np.argsort(-worst)[:8]:
            print(f"  {names[i]:40s} max rel err {worst[i]:.2e}")
        print(f"max relative error {rel.max():.3e}; logits max abs err "
              f"{np.abs(out['logits'] - logits).max():.3e}")


if __name__ == "__main__":
    main()
