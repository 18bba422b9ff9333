#!/usr/bin/env python3
"""Export full-size classifiers the way users do, compile them with gradwatch and check the
features against PyTorch float64 per-sample gradients (the zoo's goldens, on models too large to
commit as fixtures). A dev-time probe: torch, torchvision and timm from PyPI.

    .venv/bin/python scripts/probe-models.py --out out/probe --forms legacy,dstatic \
        [--bench] tv:resnet18@32 timm:mobilevitv2_050@64 ...

Each model is `tv:NAME` (torchvision) or `timm:NAME`, optionally `@SIZE` (input side; timm
models with a fixed position grid are built for it), 43 classes, random weights with
BatchNorm statistics measured on random images (as training leaves them: no exploding
activations). Forms:

  legacy   torch.onnx.export(..., dynamo=False, opset_version=17) with a dynamic batch axis;
  dstatic  torch.onnx.export(model, (x,), path): the dynamo exporter, batch fixed at 1.
  opsetN   legacy at opset N (7 to 10: older tools' and the ONNX model zoo's opsets).

One line per model and form: compiled or the compiler's refusal, features, matched PyTorch
parameter tensors, worst and median relative feature error, logits error (over 1e-3: how many
ReLU inputs ONNX Runtime's float32 forward puts on the other side of zero than float64 does, the
usual cause; features whose true gradient is zero are counted apart); with --bench also
`gradwatch bench --batch 16` for the full and fast presets (gradient graph / forward time).
Parameters that re-parameterisable models fold at export (MobileOne, FastViT) have no initializer
to match and are counted as unmapped.
"""

import argparse
import copy
import importlib.util
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch

warnings.filterwarnings("ignore")
HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("make_zoo", os.path.join(HERE, "make-zoo.py"))
mz = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(mz)
GW = os.path.join(HERE, "..", "target", "release", "gradwatch")
ENV = dict(os.environ)
ENV.setdefault("ORT_DYLIB_PATH", os.path.abspath(os.path.join(HERE, "..", ".ort", "host", "libonnxruntime.so")))


def build(spec):
    lib, rest = spec.split(":", 1)
    name, size = (rest.split("@") + [None])[:2]
    size = int(size) if size else 224
    if lib == "tv":
        import torchvision.models as tvm
        m = getattr(tvm, name)(num_classes=43)
    else:
        import timm
        try:
            m = timm.create_model(name, pretrained=False, num_classes=43, img_size=size)
        except TypeError:
            m = timm.create_model(name, pretrained=False, num_classes=43)
    torch.manual_seed(0)
    mz.randomize(m)
    settle(m, size)
    return name, m, size


def settle(m, size):
    """BatchNorm running statistics measured on random images, then eval mode."""
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(8, 3, size, size))
    m.eval()


def export(m, x, path, form):
    if form == "dstatic":
        mz.export(m, x, path, "default_static")
    else:
        # `legacy` at opset 17; `opsetN` the same exporter at an older opset (as the ONNX model
        # zoo's and older tools' files are).
        opset = int(form[5:]) if form.startswith("opset") else 17
        torch.onnx.export(m, (x,), path, dynamo=False, opset_version=opset, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})


def check(m, x, path, gpath):
    om = onnx.load(path)
    gm = mz.golden_model(m, om)
    mapping, missing = mz.map_initializers(gm, om)
    names, want, logits = mz.goldens(gm, x, mapping)
    g = onnx.load(gpath)
    feats = json.loads({p.key: p.value for p in g.metadata_props}["gradwatch.features"])
    s = ort.InferenceSession(gpath, providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in s.get_outputs()], s.run(None, {s.get_inputs()[0].name: x})))
    col = {f: i for i, f in enumerate(feats)}
    # A feature whose true value is zero (a bias a following LayerNorm or softmax cancels: MLP-
    # Mixer's token-mixing fc2, attention key biases) is float32 noise in both: compared to the
    # sample's largest feature instead, and counted apart.
    scale = np.abs(want).max(axis=1)
    zero = {n for j, n in enumerate(names) if np.all(np.abs(want[:, j]) <= 1e-12 * scale)}
    errs = sorted(((float(np.max(np.abs(out["grad_features"][:, col[n]] - want[:, j]) / np.abs(want[:, j]))), n)
                   for j, n in enumerate(names) if n in col and n not in zero), reverse=True)
    zerr = max([float(np.max(np.abs(out["grad_features"][:, col[n]]) / scale)) for n in zero if n in col] or [0.0])
    lerr = float(np.abs(out["logits"] - logits).max() / max(1.0, np.abs(logits).max()))
    worst = f"{errs[0][0]:.1e} ({errs[0][1]})" if errs else "-"
    median = f"{np.median([e for e, _ in errs]):.1e}" if errs else "-"
    zeros = f", {len(zero)} true zeros (largest {zerr:.0e} of the sample's largest feature)" if zero else ""
    return (f"{len(feats)} features, {len(errs) + len(zero & set(col))} matched, {len(missing)} unmapped; max rel {worst}, "
            f"median {median}, logits {lerr:.1e}{zeros}")


def relu_flips(m, x, path):
    """ReLU inputs that ONNX Runtime's float32 forward puts on the other side of zero than
    PyTorch's float64 one (a mask flip moves every gradient feature upstream of it): the count and
    the smallest such input relative to that ReLU's largest. Pairs the graph's Relu nodes with the
    model's nn.ReLU modules in execution order; `None` when they do not pair up."""
    om = onnx.load(path)
    relus = [n for n in om.graph.node if n.op_type == "Relu"]
    for n in relus:
        om.graph.output.append(onnx.helper.make_tensor_value_info(n.input[0], onnx.TensorProto.FLOAT, None))
    s = ort.InferenceSession(om.SerializeToString(), providers=["CPUExecutionProvider"])
    got = s.run([n.input[0] for n in relus], {s.get_inputs()[0].name: x})
    want = []
    hooks = [mod.register_forward_pre_hook(lambda _m, inp: want.append(inp[0].detach().clone()))
             for mod in m.modules() if isinstance(mod, torch.nn.ReLU)]
    with torch.no_grad():
        copy.deepcopy(m).double()(torch.from_numpy(x).double())
    for h in hooks:
        h.remove()
    want = want[len(want) - len(relus):] if len(want) >= len(relus) else want
    if len(want) != len(relus) or any(g.shape != w.shape for g, w in zip(got, want)):
        return None
    flips, closest = 0, float("inf")
    for g, w in zip(got, want):
        w = w.numpy()
        bad = (np.sign(g) != np.sign(w)) & ~((g == 0) & (w == 0))
        if bad.any():
            flips += int(bad.sum())
            closest = min(closest, float(np.abs(w[bad]).min() / np.abs(w).max()))
    return flips, closest


def self_check(path, gpath):
    """Without a float64 golden: each sample's features in a batch of 3 against the same sample
    alone (a compiled graph that mixed samples would differ), and the logits against the export."""
    s = ort.InferenceSession(gpath, providers=["CPUExecutionProvider"])
    o = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    shape = [d if isinstance(d, int) else 1 for d in s.get_inputs()[0].shape]
    x = np.random.default_rng(3).standard_normal([3] + shape[1:]).astype(np.float32)
    names = [q.name for q in s.get_outputs()]
    full = dict(zip(names, s.run(None, {s.get_inputs()[0].name: x})))
    rel = lerr = 0.0
    for i in range(3):
        one = dict(zip(names, s.run(None, {s.get_inputs()[0].name: x[i:i + 1]})))
        f1, fb = one["grad_features"][0], full["grad_features"][i]
        rel = max(rel, float(np.max(np.abs(f1 - fb) / (np.abs(f1) + 1e-30))))
        ref = o.run(None, {o.get_inputs()[0].name: x[i:i + 1]})[0][0]
        lerr = max(lerr, float(np.max(np.abs(full["logits"][i] - ref)) / max(1.0, np.abs(ref).max())))
    return (f"{full['grad_features'].shape[1]} features; no golden; batch of 3 vs each sample alone: max rel "
            f"{rel:.1e}; logits vs export {lerr:.1e}")


def bench(path):
    r = subprocess.run([GW, "bench", "--model", path, "--batch", "16", "--seconds", "1.5", "--rounds", "3"],
                       capture_output=True, text=True, env=ENV)
    rows = {line.split("|")[2].strip(): line.split("|")[6].strip() for line in r.stdout.splitlines()
            if line.startswith("| 16 |")}
    return f"grad/forward at batch 16: full {rows.get('full', '?')}, fast {rows.get('fast', '?')}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="out/probe")
    ap.add_argument("--forms", default="legacy,dstatic")
    ap.add_argument("--bench", action="store_true")
    ap.add_argument("models", nargs="+")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    for spec in a.models:
        try:
            name, m, size = build(spec)
        except Exception as e:  # noqa: BLE001 - report and go on
            print(f"{spec}: not built: {e!r}"[:300], flush=True)
            continue
        x = np.random.default_rng(7).standard_normal((2, 3, size, size)).astype(np.float32)
        for form in a.forms.split(","):
            path = os.path.join(a.out, f"{name}-{size}.{form}.onnx")
            gpath = path[:-5] + ".grad.onnx"
            try:
                export(m, torch.from_numpy(x), path, form)
            except Exception as e:  # noqa: BLE001
                print(f"{spec} {form}: export failed: {e!r}"[:300], flush=True)
                continue
            r = subprocess.run([GW, "compile", path, "-o", gpath], capture_output=True, text=True, env=ENV)
            if r.returncode != 0:
                err = [line for line in r.stderr.splitlines() if "error" in line.lower()] or [r.stderr[-300:]]
                print(f"{spec} {form}: refused: {err[0][:400]}", flush=True)
                continue
            try:
                line = check(m, x, path, gpath)
                # Over the 1e-3 bar: is it float32 (a ReLU mask that flipped) or the compiler?
                worst = line.split("max rel ")[1].split(" ")[0] if "max rel " in line else "-"
                if worst != "-" and float(worst) > 1e-3:
                    f = relu_flips(m, x, path)
                    line += ("; ReLU masks not compared (modules and nodes do not pair)" if f is None else
                             f"; ReLU inputs on the other side of zero than in float64: {f[0]}"
                             + (f" (the nearest {f[1]:.0e} of its ReLU's largest)" if f[0] else ""))
            except Exception as e:  # noqa: BLE001 - the golden side (torch.fx fusion, vmap) failed
                line = f"golden failed ({e!r:.80}); " + self_check(path, gpath)
            if a.bench:
                line += "; " + bench(path)
            print(f"{spec} {form}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
