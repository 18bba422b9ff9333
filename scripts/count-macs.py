#!/usr/bin/env python3
"""Multiply-adds per frame of a classifier and of its compiled gradient graph, by kind.

    .venv/bin/python scripts/count-macs.py models/gtsrb-resnet18.onnx COMPILED.onnx

Counts Conv, ConvTranspose, MatMul and Gemm multiply-adds at batch 1 (shapes from ONNX shape
inference) and sorts the gradient graph's into what they are for: the forward pass, input
gradients (the backward pass proper), per-sample weight-norm products (im2col MatMuls, Gram
matrices), and im2col patch extraction (one-hot Convs). The ratio of multiply-adds is the
floor of the gradient graph's time ratio if every kernel ran as fast as the forward's.
"""
import sys

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference


def batch1(model):
    for vi in list(model.graph.input) + list(model.graph.output):
        d = vi.type.tensor_type.shape.dim
        if len(d) and not d[0].dim_value:
            d[0].ClearField("dim_param")
            d[0].dim_value = 1
    return shape_inference.infer_shapes(model)


def shapes(model):
    out = {}
    for vi in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        out[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for t in model.graph.initializer:
        out[t.name] = list(t.dims)
    return out


def macs(model):
    m = batch1(model)
    sh = shapes(m)
    inits = {t.name: t for t in m.graph.initializer}
    rows = []
    for n in m.graph.node:
        if n.op_type in ("Conv", "ConvTranspose"):
            w = sh[n.input[1]]
            if n.op_type == "Conv":
                y = sh[n.output[0]]
                k = int(np.prod(w[1:]))  # Cin/g * kh * kw
                c = int(np.prod(y)) * k
            else:
                x = sh[n.input[0]]
                c = int(np.prod(x)) * int(np.prod(w[1:]))
            kind = "forward"
            if n.name.startswith("gw/") or n.output[0].startswith("gw/"):
                kind = "input gradient"
                t = inits.get(n.input[1])
                if t is not None and t.name.startswith("gw/im2col_kernel"):
                    kind = "patches"
            rows.append((kind, n.op_type, c))
        elif n.op_type in ("MatMul", "Gemm"):
            a, b = sh.get(n.input[0]), sh.get(n.input[1])
            y = sh.get(n.output[0])
            if not (a and b and y):
                raise SystemExit(f"no shape for {n.name}")
            kdim = a[-1] if n.op_type == "MatMul" else (a[0] if any(x.name == "transA" and x.i for x in n.attribute) else a[-1])
            c = int(np.prod(y)) * kdim
            kind = "forward"
            if n.output[0].startswith("gw/"):
                kind = "weight norms" if n.input[1] not in inits else "input gradient"
            rows.append((kind, n.op_type, c))
    return rows


def main():
    fwd = sum(c for _, _, c in macs(onnx.load(sys.argv[1])))
    rows = macs(onnx.load(sys.argv[2]))
    kinds = {}
    for k, _, c in rows:
        kinds[k] = kinds.get(k, 0) + c
    total = sum(kinds.values())
    print(f"| multiply-adds per frame | M | x forward |\n|---|---:|---:|")
    print(f"| classifier forward | {fwd / 1e6:.1f} | 1.00 |")
    for k in ("forward", "input gradient", "weight norms", "patches"):
        print(f"| gradient graph: {k} | {kinds.get(k, 0) / 1e6:.1f} | {kinds.get(k, 0) / fwd:.2f} |")
    print(f"| gradient graph: total | {total / 1e6:.1f} | {total / fwd:.2f} |")


if __name__ == "__main__":
    main()
