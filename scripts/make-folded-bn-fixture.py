#!/usr/bin/env python3
"""Write the folded-BatchNormalization fixture for the gradient compiler.

    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install onnx numpy
    /tmp/venv/bin/python scripts/make-folded-bn-fixture.py --out tests/fixtures/folded_bn

Builds a small Keras/TensorFlow-style CNN whose BatchNormalization layers are folded into
per-channel constant Mul/Add pairs (as tf2onnx and some optimisers write them), with
separate bias Adds after a bias-less Conv and after a MatMul:

    x [N,3,16,16] -> Mul(1/255, a scalar: preprocessing, no parameter)
      -> Conv(3->8, 3x3, pad 1, no bias) -> Mul(bn1 scale) -> Add(bn1 shift) -> Relu -> MaxPool 2x2
      -> Conv(8->8, 3x3, pad 1, no bias) -> Relu -> Mul(bn2 scale) -> Add(bn2 shift)
      -> Conv(8->16, 3x3, stride 2, pad 1, no bias) -> Add(bias) -> Relu
      -> Flatten -> MatMul(256->16) -> Add(bias) -> Mul(bn3 scale) -> Add(bn3 shift) -> Relu
      -> Gemm(16->5, with C) -> logits

and a float64 numpy reference of the forward pass and of each sample's backward pass for
the paper's loss (binary cross-entropy on the logits against the all-ones label). Writes:
  model.onnx    the classifier (opset 17, input `x`)
  input.npy     float32 [4,3,16,16]  input pixels (0..255)
  features.npy  float64 [4,14]       squared L2 norm of each parameter tensor's gradient
  logits.npy    float64 [4,5]
  names.json                         the 14 parameter names, in graph order
The Rust test (tests/it/golden.rs) reads these and needs no Python.
"""

import argparse
import json
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CLASSES = 5
SAMPLES = 4


def make_params(rng):
    """Trainable tensors (name -> float32 array), in graph order."""

    def u(shape, lo, hi):
        return rng.uniform(lo, hi, size=shape).astype(np.float32)

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "conv1/kernel": he((8, 3, 3, 3), 27),
        "bn1/scale": u((1, 8, 1, 1), 0.5, 1.5),
        "bn1/shift": u((1, 8, 1, 1), -0.2, 0.2),
        "conv2/kernel": he((8, 8, 3, 3), 72),
        "bn2/scale": u((8, 1, 1), 0.5, 1.5),
        "bn2/shift": u((8, 1, 1), -0.2, 0.2),
        "conv3/kernel": he((16, 8, 3, 3), 72),
        "conv3/bias": u((1, 16, 1, 1), -0.2, 0.2),
        "dense/kernel": he((256, 16), 256),
        "dense/bias": u((16,), -0.2, 0.2),
        "bn3/scale": u((16,), 0.5, 1.5),
        "bn3/shift": u((1, 16), -0.2, 0.2),
        "logits/kernel": he((CLASSES, 16), 16),
        "logits/bias": u((CLASSES,), -0.2, 0.2),
    }


def build_model(p):
    """The ONNX graph (NCHW, opset 17)."""
    n = []
    n.append(helper.make_node("Mul", ["x", "rescale"], ["x01"], name="rescaling"))
    n.append(helper.make_node("Conv", ["x01", "conv1/kernel"], ["c1"], name="conv1", pads=[1, 1, 1, 1]))
    n.append(helper.make_node("Mul", ["c1", "bn1/scale"], ["b1m"], name="bn1/mul"))
    n.append(helper.make_node("Add", ["b1m", "bn1/shift"], ["b1"], name="bn1/add"))
    n.append(helper.make_node("Relu", ["b1"], ["r1"], name="relu1"))
    n.append(helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]))
    n.append(helper.make_node("Conv", ["p1", "conv2/kernel"], ["c2"], name="conv2", pads=[1, 1, 1, 1]))
    n.append(helper.make_node("Relu", ["c2"], ["r2"], name="relu2"))
    n.append(helper.make_node("Mul", ["r2", "bn2/scale"], ["b2m"], name="bn2/mul"))
    n.append(helper.make_node("Add", ["b2m", "bn2/shift"], ["b2"], name="bn2/add"))
    n.append(
        helper.make_node("Conv", ["b2", "conv3/kernel"], ["c3"], name="conv3", pads=[1, 1, 1, 1], strides=[2, 2])
    )
    n.append(helper.make_node("Add", ["c3", "conv3/bias"], ["c3b"], name="conv3/bias_add"))
    n.append(helper.make_node("Relu", ["c3b"], ["r3"], name="relu3"))
    n.append(helper.make_node("Flatten", ["r3"], ["f"], name="flatten", axis=1))
    n.append(helper.make_node("MatMul", ["f", "dense/kernel"], ["d"], name="dense/matmul"))
    n.append(helper.make_node("Add", ["d", "dense/bias"], ["db"], name="dense/bias_add"))
    n.append(helper.make_node("Mul", ["db", "bn3/scale"], ["b3m"], name="bn3/mul"))
    n.append(helper.make_node("Add", ["b3m", "bn3/shift"], ["b3"], name="bn3/add"))
    n.append(helper.make_node("Relu", ["b3"], ["r4"], name="relu4"))
    n.append(helper.make_node("Gemm", ["r4", "logits/kernel", "logits/bias"], ["logits"], name="logits", transB=1))
    inits = [numpy_helper.from_array(v, k) for k, v in p.items()]
    inits.append(numpy_helper.from_array(np.array(1.0 / 255.0, dtype=np.float32), "rescale"))
    g = helper.make_graph(
        n,
        "folded_bn_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], producer_name="make-folded-bn-fixture")
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def im2col(x, k, stride, pad):
    """x [C,H,W] -> patches [C*k*k, Ho*Wo] (channel-major, as the weight's flattening)."""
    c, h, w = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    ho = (h + 2 * pad - k) // stride + 1
    wo = (w + 2 * pad - k) // stride + 1
    cols = np.empty((c, k, k, ho, wo))
    for a in range(k):
        for b in range(k):
            cols[:, a, b] = xp[:, a : a + stride * ho : stride, b : b + stride * wo : stride]
    return cols.reshape(c * k * k, ho * wo), (ho, wo)


def col2im(cols, shape, k, stride, pad, out_hw):
    c, h, w = shape
    ho, wo = out_hw
    cols = cols.reshape(c, k, k, ho, wo)
    xp = np.zeros((c, h + 2 * pad, w + 2 * pad))
    for a in range(k):
        for b in range(k):
            xp[:, a : a + stride * ho : stride, b : b + stride * wo : stride] += cols[:, a, b]
    return xp[:, pad : pad + h, pad : pad + w]


class Conv:
    def __init__(self, w, stride, pad):
        self.w, self.stride, self.pad = w, stride, pad

    def fwd(self, x):
        self.shape = x.shape
        self.cols, self.hw = im2col(x, self.w.shape[2], self.stride, self.pad)
        y = self.w.reshape(self.w.shape[0], -1) @ self.cols
        return y.reshape(self.w.shape[0], *self.hw)

    def bwd(self, dy):
        d = dy.reshape(dy.shape[0], -1)
        dw = (d @ self.cols.T).reshape(self.w.shape)
        dcols = self.w.reshape(self.w.shape[0], -1).T @ d
        return col2im(dcols, self.shape, self.w.shape[2], self.stride, self.pad, self.hw), dw


def sample_grads(p, x):
    """Forward and backward of one sample [3,16,16] in float64: (logits, {name: gradient})."""
    q = {k: v.astype(np.float64) for k, v in p.items()}
    sq = lambda v: v.reshape(-1)  # noqa: E731 (per-channel constants as flat [C])
    g = {}
    x01 = x.astype(np.float64) * np.float64(np.float32(1.0 / 255.0))
    conv1 = Conv(q["conv1/kernel"], 1, 1)
    c1 = conv1.fwd(x01)
    s1, t1 = sq(q["bn1/scale"])[:, None, None], sq(q["bn1/shift"])[:, None, None]
    b1 = c1 * s1 + t1
    r1 = np.maximum(b1, 0)
    # MaxPool 2x2 stride 2 (first maximum of each window).
    c, h, w = r1.shape
    win = r1.reshape(c, h // 2, 2, w // 2, 2).transpose(0, 1, 3, 2, 4).reshape(c, h // 2, w // 2, 4)
    am = win.argmax(axis=-1)
    p1 = win.max(axis=-1)
    conv2 = Conv(q["conv2/kernel"], 1, 1)
    c2 = conv2.fwd(p1)
    r2 = np.maximum(c2, 0)
    s2, t2 = sq(q["bn2/scale"])[:, None, None], sq(q["bn2/shift"])[:, None, None]
    b2 = r2 * s2 + t2
    conv3 = Conv(q["conv3/kernel"], 2, 1)
    c3 = conv3.fwd(b2) + sq(q["conv3/bias"])[:, None, None]
    r3 = np.maximum(c3, 0)
    f = r3.reshape(-1)
    db = f @ q["dense/kernel"] + q["dense/bias"]
    s3, t3 = sq(q["bn3/scale"]), sq(q["bn3/shift"])
    b3 = db * s3 + t3
    r4 = np.maximum(b3, 0)
    z = q["logits/kernel"] @ r4 + q["logits/bias"]

    dz = (1.0 / (1.0 + np.exp(-z)) - 1.0) / CLASSES
    g["logits/kernel"] = np.outer(dz, r4)
    g["logits/bias"] = dz
    dr4 = q["logits/kernel"].T @ dz
    db3 = dr4 * (b3 > 0)
    g["bn3/scale"] = db3 * db
    g["bn3/shift"] = db3
    ddb = db3 * s3
    g["dense/kernel"] = np.outer(f, ddb)
    g["dense/bias"] = ddb
    df = q["dense/kernel"] @ ddb
    dc3 = df.reshape(r3.shape) * (c3 > 0)
    g["conv3/bias"] = dc3.sum(axis=(1, 2))
    db2, g["conv3/kernel"] = conv3.bwd(dc3)
    g["bn2/scale"] = (db2 * r2).sum(axis=(1, 2))
    g["bn2/shift"] = db2.sum(axis=(1, 2))
    dc2 = db2 * s2 * (c2 > 0)
    dp1, g["conv2/kernel"] = conv2.bwd(dc2)
    dwin = np.zeros(win.shape)
    np.put_along_axis(dwin, am[..., None], dp1[..., None], axis=-1)
    dr1 = dwin.reshape(c, h // 2, w // 2, 2, 2).transpose(0, 1, 3, 2, 4).reshape(c, h, w)
    db1 = dr1 * (b1 > 0)
    g["bn1/scale"] = (db1 * c1).sum(axis=(1, 2))
    g["bn1/shift"] = db1.sum(axis=(1, 2))
    _, g["conv1/kernel"] = conv1.bwd(db1 * s1)
    return z, g


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="tests/fixtures/folded_bn")
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    p = make_params(rng)
    model = build_model(p)
    x = rng.uniform(0, 255, size=(SAMPLES, 3, 16, 16)).astype(np.float32)
    names = list(p)
    feats = np.zeros((SAMPLES, len(names)))
    logits = np.zeros((SAMPLES, CLASSES))
    for k in range(SAMPLES):
        z, g = sample_grads(p, x[k])
        logits[k] = z
        feats[k] = [np.sum(g[nm] ** 2) for nm in names]
    os.makedirs(a.out, exist_ok=True)
    onnx.save(model, os.path.join(a.out, "model.onnx"))
    np.save(os.path.join(a.out, "input.npy"), x)
    np.save(os.path.join(a.out, "features.npy"), feats)
    np.save(os.path.join(a.out, "logits.npy"), logits)
    with open(os.path.join(a.out, "names.json"), "w") as fh:
        json.dump(names, fh, indent=1)
        fh.write("\n")
    print(f"wrote {a.out}: {len(names)} parameter tensors, logits {logits[0].round(4)}")


if __name__ == "__main__":
    main()
