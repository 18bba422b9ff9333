#!/usr/bin/env python3
"""Model files as users have them: the numbers of docs/results/compiler-zoo.md, "Model files as
users have them" (dev-time: torch, torchvision, onnx and onnxruntime from PyPI; the built
gradwatch binary).

  .venv/bin/python scripts/probe-file-forms.py [--out out/file-forms]

1. float16: torchvision ResNet-18 (43 classes, 32x32, random weights) exported at opset 17,
   converted to float16 as onnxconverter-common does with keep_io_types (half weights, a Cast
   after the input and before the logits); compiled by gradwatch; features and logits against
   the float32 original's compiled graph, and the half file's logits from ONNX Runtime.
2. QDQ int8: the user model fixture (tests/fixtures/user_model/user-cnn.onnx) quantized per
   channel by onnxruntime.quantization.quantize_static (QDQ, uint8 activations, int8 weights,
   calibrated on 64 of its held-out images); compiled by gradwatch; on all 256 held-out images:
   the compiled graph's logits against ONNX Runtime's int8 run, top-1 agreement, accuracy, and
   each feature's log correlated with the float model's.
3. External data: plain torch.onnx.export(model, (x,), path) of ResNet-18, the sizes of the
   .onnx and .onnx.data files, and whether gradwatch compiles it.
"""

import argparse
import os
import subprocess
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from onnx import TensorProto, helper, numpy_helper

warnings.filterwarnings("ignore")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
GW = os.path.join(ROOT, "target", "release", "gradwatch")
ENV = dict(os.environ)
ENV.setdefault("ORT_DYLIB_PATH", os.path.abspath(os.path.join(ROOT, ".ort", "host", "libonnxruntime.so")))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "user_model")


def compile_(path, out):
    subprocess.run([GW, "compile", path, "-o", out], check=True, capture_output=True, env=ENV)
    return out


def run(path, x):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})


def to_half(src, dst):
    m = onnx.load(src)
    g = m.graph
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name))
    inp, out = g.input[0].name, g.output[0].name
    for n in g.node:
        n.input[:] = [inp + "_h" if v == inp else v for v in n.input]
        n.output[:] = [out + "_h" if v == out else v for v in n.output]
    g.node.insert(0, helper.make_node("Cast", [inp], [inp + "_h"], to=TensorProto.FLOAT16))
    g.node.append(helper.make_node("Cast", [out + "_h"], [out], to=TensorProto.FLOAT))
    del g.value_info[:]
    onnx.save(m, dst)


def half(d):
    torch.manual_seed(0)
    m = torchvision.models.resnet18(num_classes=43).eval()
    f32 = os.path.join(d, "resnet18.onnx")
    torch.onnx.export(m, (torch.randn(1, 3, 32, 32),), f32, dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    f16 = os.path.join(d, "resnet18-fp16.onnx")
    to_half(f32, f16)
    x = np.random.RandomState(0).randn(4, 3, 32, 32).astype(np.float32)
    a = run(compile_(f32, f32[:-5] + ".grad.onnx"), x)
    b = run(compile_(f16, f16[:-5] + ".grad.onnx"), x)
    own = run(f16, x)[0]
    print(f"float16 ResNet-18: features vs float32 max rel {np.max(np.abs(a[1] - b[1]) / np.abs(a[1])):.1e}; "
          f"logits vs ONNX Runtime's run of the float16 file {np.abs(own - b[0]).max():.1e}")


def qdq(d):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType, quant_pre_process,
                                          quantize_static)
    imgs = np.load(os.path.join(FIXTURE, "heldout-images.npy")).astype(np.float32) / 255.0
    labels = np.load(os.path.join(FIXTURE, "heldout-labels.npy"))
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    x = ((imgs - mean) / std).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": x[k:k + 1]} for k in range(64)])

        def get_next(self):
            return next(self.it, None)

    src = os.path.join(FIXTURE, "user-cnn.onnx")
    pre, q = os.path.join(d, "user-pre.onnx"), os.path.join(d, "user-qdq.onnx")
    quant_pre_process(src, pre)
    quantize_static(pre, q, Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, per_channel=True)
    int8 = run(q, x)[0]
    cq = run(compile_(q, q[:-5] + ".grad.onnx"), x)
    cf = run(compile_(src, os.path.join(d, "user.grad.onnx")), x)
    corr = [np.corrcoef(np.log(cq[1][:, j]), np.log(cf[1][:, j]))[0, 1] for j in range(cf[1].shape[1])]
    rel = np.abs(cq[1] - cf[1]) / np.abs(cf[1])
    print(f"QDQ user model: logits vs ONNX Runtime int8 max abs {np.abs(int8 - cq[0]).max():.2f} "
          f"(largest {np.abs(int8).max():.1f}), top-1 agreement {np.mean(int8.argmax(1) == cq[0].argmax(1)):.3f}, "
          f"accuracy {np.mean(cq[0].argmax(1) == labels):.4f} (float {np.mean(cf[0].argmax(1) == labels):.4f}), "
          f"log-feature correlation {min(corr):.3f}-{max(corr):.3f}, median rel difference {np.median(rel):.3f}")


def external(d):
    m = torchvision.models.resnet18(num_classes=43).eval()
    p = os.path.join(d, "resnet18-default.onnx")
    torch.onnx.export(m, (torch.randn(1, 3, 32, 32),), p)
    data = p + ".data"
    sizes = f"{os.path.getsize(p) / 1e3:.0f} KB + {os.path.getsize(data) / 1e6:.1f} MB in .onnx.data" \
        if os.path.exists(data) else f"{os.path.getsize(p) / 1e6:.1f} MB, no data file"
    r = subprocess.run([GW, "compile", p, "-o", p[:-5] + ".grad.onnx"], capture_output=True, text=True, env=ENV)
    print(f"default torch.onnx.export ResNet-18: {sizes}; gradwatch compile exit {r.returncode}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/file-forms")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    half(a.out)
    qdq(a.out)
    external(a.out)


if __name__ == "__main__":
    main()
