#!/usr/bin/env python3
"""Write the architecture-zoo fixtures for the gradient compiler (tests/it/zoo.rs).

    .venv/bin/python scripts/make-zoo.py --out tests/fixtures/zoo [--only NAME,...]

Builds small variants (32x32 RGB input, 43 classes, random weights, reduced width so each .onnx
stays around 100 KB) of torchvision architectures and of small transformer / hybrid models
written here, and exports each in two forms:

  bn       the legacy TorchScript exporter, BatchNormalization kept as nodes
           (dynamo=False, training=TrainingMode.PRESERVE, do_constant_folding=False);
  default  what torch.onnx.export writes by default (the dynamo exporter and its optimiser,
           which folds BatchNormalization into the Conv before it).

Both with a dynamic batch axis. A subset (EXTRA_FORMS) is also exported as older or
fixed-shape tools write models:

  static   the legacy exporter without dynamic_axes: the batch size 1 is a literal in the input
           and in every shape the model reads (flatten targets, class-token Expand);
  opset11  the legacy exporter at opset 11 (axes and split sizes as attributes, LayerNorm and
           GELU decomposed), with a dynamic batch axis;
  default_static  torch.onnx.export(model, (x,), path) and nothing more: the dynamo exporter
           with the example's batch size (1) fixed, its reshapes `allowzero` views of literal
           shapes, a view it cannot express as a reshape written as a Gather of constant
           indices from the flattened batch (`as_strided`).
 For each form the float64 goldens come from PyTorch: per-sample
gradients (torch.func vmap over grad) of the paper's loss, binary cross-entropy on the logits
against the all-ones label (mean over classes), and the squared L2 norm of each parameter
tensor's gradient. The goldens are keyed by the ONNX initializer a parameter became (found by
value: equal, transposed, or a block of rows of it, as exporters split attention projections);
for the `default` form the PyTorch model is the one with BatchNormalization folded into its
Conv (torch.fx fusion), which is what the exported graph computes.

Writes, per architecture and form:
  <arch>/<form>.onnx           the model
  <arch>/<form>.features.npy   float64 [4, P] squared gradient norms
  <arch>/<form>.logits.npy     float64 [4, 43]
  <arch>/<form>.names.json     the P initializer names (the compiler's feature names)
and input.npy (float32 [4, 3, 32, 32], shared; the NHWC model takes it transposed).
"""

import argparse
import copy
import json
import math
import os
import sys
import warnings

import numpy as np
import onnx
import torch
import torch.nn as nn
import torch.nn.functional as F
from onnx import numpy_helper
from torch.func import functional_call, grad, vmap

warnings.filterwarnings("ignore")
CLASSES = 43


# ---------------------------------------------------------------- torchvision, narrowed

def resnet18():
    from torchvision.models.resnet import BasicBlock, ResNet
    m = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=CLASSES)
    return narrow_resnet(m, BasicBlock, [8, 16, 24, 32])


def resnet50():
    from torchvision.models.resnet import Bottleneck, ResNet
    m = ResNet(Bottleneck, [1, 1, 1, 1], num_classes=CLASSES)
    return narrow_resnet(m, Bottleneck, [4, 8, 12, 16])


def narrow_resnet(m, block, widths):
    m.inplanes = 8
    m.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
    m.bn1 = nn.BatchNorm2d(8)
    m.layer1 = m._make_layer(block, widths[0], 1)
    m.layer2 = m._make_layer(block, widths[1], 1, stride=2)
    m.layer3 = m._make_layer(block, widths[2], 1, stride=2)
    m.layer4 = m._make_layer(block, widths[3], 1, stride=2)
    m.fc = nn.Linear(widths[3] * block.expansion, CLASSES)
    return m


def mobilenet_v2():
    from torchvision.models.mobilenetv2 import MobileNetV2
    from torchvision.ops.misc import Conv2dNormActivation
    m = MobileNetV2(num_classes=CLASSES, inverted_residual_setting=[[1, 8, 1, 1], [6, 12, 2, 2], [6, 16, 1, 2]])
    m.features[-1] = Conv2dNormActivation(16, 48, kernel_size=1, activation_layer=nn.ReLU6)
    m.classifier[1] = nn.Linear(48, CLASSES)
    return m


def mobilenet_v3():
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf
    setting, _ = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return MobileNetV3(setting[:6], last_channel=48, num_classes=CLASSES)


def efficientnet():
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf
    setting, _ = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.3)
    return EfficientNet(setting[:5], dropout=0.2, num_classes=CLASSES, last_channel=48)


def regnet():
    from torchvision.models.regnet import BlockParams, RegNet
    bp = BlockParams.from_init_params(depth=3, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return RegNet(bp, num_classes=CLASSES, stem_width=8)


def shufflenet():
    from torchvision.models import ShuffleNetV2
    return ShuffleNetV2([1, 1, 1], [8, 16, 24, 32, 48], num_classes=CLASSES)


def squeezenet():
    from torchvision.models.squeezenet import Fire, SqueezeNet
    m = SqueezeNet(version="1_1", num_classes=CLASSES)
    m.features = nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, ceil_mode=True),
        Fire(16, 4, 8, 8), Fire(16, 4, 8, 8), nn.MaxPool2d(3, 2, ceil_mode=True), Fire(16, 6, 12, 12))
    m.classifier = nn.Sequential(nn.Dropout(0.5), nn.Conv2d(24, CLASSES, 1), nn.ReLU(inplace=True),
                                 nn.AdaptiveAvgPool2d((1, 1)))
    return m


def densenet():
    from torchvision.models.densenet import DenseNet
    return DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8, bn_size=2, num_classes=CLASSES)


class SmallGoogLeNet(nn.Module):
    """GoogLeNet's stem and Inception blocks (torchvision's modules), narrowed."""

    def __init__(self):
        super().__init__()
        from torchvision.models.googlenet import BasicConv2d, Inception
        self.conv1 = BasicConv2d(3, 16, kernel_size=3, stride=1, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(16, 8, 8, 12, 4, 4, 4)
        self.inception3b = Inception(28, 8, 8, 12, 4, 8, 4)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.inception3b(self.inception3a(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def googlenet():
    return SmallGoogLeNet()


def mnasnet():
    from torchvision.models.mnasnet import MNASNet
    m = MNASNet(alpha=0.25, num_classes=CLASSES)
    # Keep the stem and the first three stacks, then a narrow 1x1 conv head.
    layers = list(m.layers.children())[:11]
    c = layers[-1][-1].layers[-1].num_features
    m.layers = nn.Sequential(*layers, nn.Conv2d(c, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU(inplace=True))
    m.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(48, CLASSES))
    return m


def convnext():
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, 24, 1), CNBlockConfig(24, None, 1)],
                    num_classes=CLASSES)


# ---------------------------------------------------------------- transformer and hybrid code

class Attention(nn.Module):
    """Multi-head self-attention over [B, L, D] with the batch kept first: one qkv projection,
    heads split by reshape/permute, softmax(q k^T / sqrt(d)) v."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(0, 2, 3, 1, 4)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        a = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        y = (a.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, n, d)
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp, approximate="none"):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp), nn.GELU(approximate=approximate), nn.Linear(mlp, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """A small vision transformer: 8x8 patches, class token, learned position embedding."""

    def __init__(self, dim=24, depth=2, heads=2):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 8, 8)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.zeros(1, 17, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, 2 * dim) for _ in range(depth)])
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.ln(self.blocks(x))
        return self.head(x[:, 0])


class WindowAttention(nn.Module):
    """Swin-style attention inside non-overlapping windows (batch kept first: windows are an
    axis of their own), with a learned relative-position bias per head."""

    def __init__(self, dim, heads, window):
        super().__init__()
        self.heads, self.window = heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias = nn.Parameter(torch.zeros(heads, window * window, window * window))

    def forward(self, x):
        b, h, w, c = x.shape
        s = self.window
        x = x.reshape(b, h // s, s, w // s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, (h // s) * (w // s), s * s, c)
        nw, hd = x.shape[1], c // self.heads
        qkv = self.qkv(x).reshape(b, nw, s * s, 3, self.heads, hd).permute(0, 3, 1, 4, 2, 5)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        a = (q @ k.transpose(-2, -1)) * hd ** -0.5 + self.bias
        y = (a.softmax(dim=-1) @ v).permute(0, 1, 3, 2, 4).reshape(b, nw, s * s, c)
        y = self.proj(y)
        return y.reshape(b, h // s, w // s, s, s, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


class SwinBlock(nn.Module):
    def __init__(self, dim, heads, window):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, window)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Swin(nn.Module):
    """Patch embedding (4x4), two windowed-attention blocks at 8x8 tokens (4x4 windows), patch
    merging (2x2 concat + LayerNorm + Linear), one block at 4x4, mean pool, head."""

    def __init__(self, dim=16):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.ln0 = nn.LayerNorm(dim)
        self.stage1 = nn.Sequential(SwinBlock(dim, 2, 4), SwinBlock(dim, 2, 4))
        self.merge_ln = nn.LayerNorm(4 * dim)
        self.merge = nn.Linear(4 * dim, 2 * dim, bias=False)
        self.stage2 = SwinBlock(2 * dim, 2, 4)
        self.ln = nn.LayerNorm(2 * dim)
        self.head = nn.Linear(2 * dim, CLASSES)

    def forward(self, x):
        x = self.ln0(self.patch(x).permute(0, 2, 3, 1))
        x = self.stage1(x)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        x = self.stage2(self.merge(self.merge_ln(x)))
        return self.head(self.ln(x).mean(dim=(1, 2)))


class Hybrid(nn.Module):
    """Convolution + attention (MobileViT-like): a conv stem with BatchNorm, the feature map
    as tokens through a transformer block, back to a map, a conv, global pooling."""

    def __init__(self, dim=16):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, dim, 3, 2, 1, bias=False), nn.BatchNorm2d(dim), nn.SiLU(),
                                  nn.Conv2d(dim, dim, 3, 2, 1, groups=dim, bias=False), nn.BatchNorm2d(dim), nn.SiLU())
        self.block = Block(dim, 2, 2 * dim, approximate="tanh")
        self.fuse = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.SiLU())
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x):
        y = self.stem(x)
        b, c, h, w = y.shape
        t = self.block(y.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        y = self.fuse(torch.cat([y, t], dim=1))
        return self.head(y.mean(dim=(2, 3)))


class ChannelLayerNorm(nn.Module):
    """LayerNorm over channels of an NCHW map, written out as ConvNeXt's reference code does
    (mean, variance, sqrt, divide: no LayerNormalization operator)."""

    def __init__(self, c, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class GeluLnCnn(nn.Module):
    """A CNN with channel LayerNorm (decomposed), tanh-approximated GELU and layer scale."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 12, 3, 2, 1)
        self.ln1 = ChannelLayerNorm(12)
        self.dw = nn.Conv2d(12, 12, 5, 1, 2, groups=12)
        self.pw1 = nn.Conv2d(12, 24, 1)
        self.pw2 = nn.Conv2d(24, 12, 1)
        self.gamma = nn.Parameter(torch.ones(12, 1, 1))
        self.down = nn.Conv2d(12, 24, 2, 2)
        self.ln2 = nn.LayerNorm(24)
        self.head = nn.Linear(24, CLASSES)

    def forward(self, x):
        x = self.ln1(self.stem(x))
        x = x + self.gamma * self.pw2(F.gelu(self.pw1(self.dw(x)), approximate="tanh"))
        x = F.gelu(self.down(x))
        return self.head(self.ln2(x.mean(dim=(2, 3))))


class FoldedCnn(nn.Module):
    """A VGG-style CNN whose BatchNormalization is folded into its convolutions before export
    (torch.ao's fusion), as deployment tool chains hand models over."""

    def __init__(self):
        super().__init__()
        layers, c = [], 3
        for w in (8, 16, 24):
            layers += [nn.Conv2d(c, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(24 * 16, CLASSES)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


def folded_cnn():
    m = FoldedCnn()
    randomize(m)
    m.eval()
    from torch.fx.experimental.optimization import fuse
    return fuse(m)


class NhwcNet(nn.Module):
    """Channels-last input [N, 32, 32, 3] with the mean/std normalisation inside the graph
    (Sub and Div by constants), then a depthwise-separable CNN."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.body = nn.Sequential(
            nn.Conv2d(3, 12, 3, 2, 1, bias=False), nn.BatchNorm2d(12), nn.Hardswish(),
            nn.Conv2d(12, 12, 3, 1, 1, groups=12, bias=False), nn.BatchNorm2d(12), nn.ReLU(),
            nn.Conv2d(12, 24, 1, bias=False), nn.BatchNorm2d(24), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(24, CLASSES)

    def forward(self, x):
        x = (x.permute(0, 3, 1, 2) - self.mean) / self.std
        return self.head(self.body(x).flatten(1))


class SmoothCnn(nn.Module):
    """The activations of other model families: per-channel PReLU (a learned slope, a
    parameter), ELU, SELU, CELU, Mish (an ONNX op from opset 18; the legacy exporter writes
    Softplus, Tanh and Mul), Softplus and Softsign."""

    def __init__(self):
        super().__init__()
        self.c1, self.b1, self.a1 = nn.Conv2d(3, 12, 3, padding=1), nn.BatchNorm2d(12), nn.PReLU(12)
        self.c2, self.a2 = nn.Conv2d(12, 16, 3, stride=2, padding=1), nn.ELU(0.7)
        self.c3, self.a3 = nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.SELU()
        self.c4, self.a4 = nn.Conv2d(16, 24, 1), nn.Mish()
        self.fc = nn.Linear(24, CLASSES)

    def forward(self, x):
        x = self.a1(self.b1(self.c1(x)))
        x = self.a2(self.c2(x))
        x = F.celu(self.a3(self.c3(x)), 0.8)
        x = F.softsign(F.softplus(self.a4(self.c4(x))))
        return self.fc(x.mean((2, 3)))


class NormsCnn(nn.Module):
    """Normalisations other than BatchNorm, as both exporters write them: InstanceNorm2d with a
    learned affine (InstanceNormalization), GroupNorm with 4 groups and with one group
    (PoolFormer's norm; a Reshape, an InstanceNormalization with constant unit scale, a Reshape
    back, then the learned Mul and Add); pooled by a maximum and a sum (ReduceMax, ReduceSum)."""

    def __init__(self):
        super().__init__()
        # No bias before InstanceNorm: its gradient is exactly 0 (the mean removes it).
        self.c1, self.n1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.InstanceNorm2d(16, affine=True)
        self.c2, self.n2 = nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16)
        self.c3, self.n3 = nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.GroupNorm(1, 24)
        self.fc = nn.Linear(24, CLASSES)

    def forward(self, x):
        x = F.relu(self.n1(self.c1(x)))
        x = F.silu(self.n2(self.c2(x)))
        x = F.gelu(self.n3(self.c3(x)))
        return self.fc(torch.amax(x, (2, 3)) + 0.05 * x.sum((2, 3)))


class SoftmaxHead(nn.Module):
    """A Keras-style classifier: its output is the softmax probabilities (the graph's last node
    is a Softmax named like the output) and it flattens with `x.view(x.size(0), -1)`. The
    compiler differentiates the Softmax's input; the goldens are taken on those logits
    (`probs = False`)."""

    def __init__(self):
        super().__init__()
        self.probs = True
        self.conv1 = nn.Conv2d(3, 12, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(12)
        self.conv2 = nn.Conv2d(12, 16, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16 * 4 * 4, 32)
        self.out = nn.Linear(32, CLASSES)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.bn2(self.conv2(x))), 2)
        z = self.out(F.relu(self.fc(x.view(x.size(0), -1))))
        return F.softmax(z, dim=1) if self.probs else z


class TokenMixer(nn.Module):
    """The batch merged with other axes, as hybrid models write it: MobileViT's unfolding of an
    image into `[B*patch_area, patches, C]`, timm's fused qkv permuted to `[3, B, heads, L, d]`
    and unbound, LeViT's BatchNorm over `[B*tokens, C]`, then folded back into an image."""

    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.stem = nn.Conv2d(3, dim, 3, 2, 1)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.BatchNorm1d(dim)
        self.mlp = nn.Linear(dim, dim)
        self.conv = nn.Conv2d(dim, dim, 3, 2, 1)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, x):
        x = F.relu(self.stem(x))
        b, c, h, w = x.shape
        nh, nw = h // 2, w // 2
        t = x.reshape(b * c * nh, 2, nw, 2).transpose(1, 2)
        t = t.reshape(b, c, nh * nw, 4).transpose(1, 3).reshape(b * 4, nh * nw, c)
        bb, n, d = t.shape
        qkv = self.qkv(t).reshape(bb, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        a = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        t = t + self.proj((a.softmax(-1) @ v).transpose(1, 2).reshape(bb, n, d))
        t = t + F.gelu(self.mlp(self.norm(t.flatten(0, 1)).reshape_as(t)))
        x = t.reshape(b, 4, nh * nw, c).transpose(1, 3).reshape(b * c * nh, nw, 2, 2)
        x = x.transpose(1, 2).reshape(b, c, h, w)
        return self.head(F.relu(self.conv(x)).mean((2, 3)))


def tv_vit():
    """torchvision's VisionTransformer (its nn.MultiheadAttention moves the batch behind the
    tokens and merges it with the heads), narrowed."""
    import torchvision.models as tvm
    return tvm.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=24,
                                 mlp_dim=48, num_classes=CLASSES)


def tv_swin():
    """torchvision's SwinTransformer (shifted windows: the batch merged with the windows),
    narrowed to two stages."""
    import torchvision.models as tvm
    return tvm.SwinTransformer(patch_size=[2, 2], embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                               window_size=[4, 4], num_classes=CLASSES)


ARCHS = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3": mobilenet_v3,
    "efficientnet": efficientnet,
    "regnet": regnet,
    "shufflenet_v2": shufflenet,
    "squeezenet": squeezenet,
    "densenet": densenet,
    "googlenet": googlenet,
    "mnasnet": mnasnet,
    "convnext": convnext,
    "vit": ViT,
    "swin": Swin,
    "hybrid": Hybrid,
    "gelu_ln_cnn": GeluLnCnn,
    "folded_bn_cnn": folded_cnn,
    "nhwc": NhwcNet,
    "softmax_head": SoftmaxHead,
    "smooth_cnn": SmoothCnn,
    "norms_cnn": NormsCnn,
    "token_mixer": TokenMixer,
    "tv_vit": tv_vit,
    "tv_swin": tv_swin,
}

# The forms every architecture is exported in, and the extra forms of an old or fixed-shape
# export, each on a subset that covers its rewrites (class tokens, attention, channel shuffle,
# Concat/Split, pooling, NHWC, a Softmax output) while keeping the fixtures small.
FORMS = ["bn", "default"]
EXTRA_FORMS = {
    "static": ["vit", "swin", "shufflenet_v2", "googlenet", "hybrid", "nhwc", "softmax_head"],
    "opset11": ["vit", "hybrid", "densenet", "squeezenet", "gelu_ln_cnn", "googlenet", "softmax_head"],
    "default_static": ["resnet18", "mobilenet_v2", "shufflenet_v2", "convnext", "vit", "swin", "hybrid", "nhwc",
                       "softmax_head", "token_mixer", "tv_vit", "tv_swin"],
}


# ---------------------------------------------------------------- export and goldens

def randomize(m, seed=0):
    """Random values for every parameter and BatchNorm statistic, each tensor distinct (equal
    initial values would let an exporter share one initializer between layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.dim() >= 2 and not name.endswith(("cls", "pos", "bias", "gamma")):
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) * (1.5 / math.sqrt(fan_in)))
            elif name.endswith(("weight", "gamma", "layer_scale")) or "scale" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        for name, b in m.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(1.0 + 0.3 * torch.rand(b.shape, generator=g))


def export(m, x, path, form):
    kw = dict(input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    if form == "bn":
        torch.onnx.export(m, (x,), path, dynamo=False, opset_version=17, training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False, **kw)
    elif form == "static":
        # No dynamic axes: the batch size (1) is written into every shape the model reads.
        torch.onnx.export(m, (x[:1],), path, dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"])
    elif form == "opset11":
        torch.onnx.export(m, (x,), path, dynamo=False, opset_version=11, **kw)
    else:
        if form == "default_static":
            torch.onnx.export(m, (x[:1],), path, input_names=["input"], output_names=["logits"])
        else:
            torch.onnx.export(m, (x,), path, **kw)
        # The dynamo exporter writes large tensors to PATH.data; keep one self-contained file,
        # without the per-node stack traces it records (half the file).
        om = onnx.load(path)
        strip(om)
        onnx.save(om, path)
        if os.path.exists(path + ".data"):
            os.remove(path + ".data")


def strip(om):
    """Drops debugging metadata (per-node stack traces, value_info); the graph is unchanged."""
    for n in om.graph.node:
        del n.metadata_props[:]
        n.doc_string = ""
    del om.graph.value_info[:]
    for v in list(om.graph.input) + list(om.graph.output) + list(om.graph.initializer):
        del v.metadata_props[:]


def golden_model(m, onnx_model):
    """The PyTorch model the exported graph computes: BatchNorm folded into Conv when the
    exporter folded it."""
    bn_nodes = sum(n.op_type == "BatchNormalization" for n in onnx_model.graph.node)
    bn_modules = sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    if bn_nodes < bn_modules:
        from torch.fx.experimental.optimization import fuse
        return fuse(copy.deepcopy(m))
    return m


def map_initializers(model, onnx_model):
    """ONNX initializer name -> (parameter name, how: 'id' | 'T' | ('rows', a, b) | ('cols', a, b))."""
    params = {k: v.detach().double().numpy() for k, v in model.named_parameters()}
    inits = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in onnx_model.graph.initializer
             if t.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE)}
    close = lambda a, b: a.shape == b.shape and np.allclose(a, b, rtol=1e-5, atol=1e-7)
    mapping = {}
    for iname, v in inits.items():
        if v.size <= 1:
            continue
        found = None
        if iname in params and close(v, params[iname]):
            found = (iname, "id")
        for pname, p in params.items():
            if found:
                break
            if p.size == v.size and close(v.reshape(p.shape), p):
                found = (pname, "id")
            elif p.ndim == 2 and v.ndim == 2 and close(v, p.T):
                found = (pname, "T")
            elif p.ndim == 2 and v.ndim == 2 and v.shape[1] == p.shape[1] and v.shape[0] < p.shape[0]:
                for a in range(0, p.shape[0] - v.shape[0] + 1):
                    if close(v, p[a:a + v.shape[0]]):
                        found = (pname, ("rows", a, a + v.shape[0]))
                        break
            elif p.ndim == 2 and v.ndim == 2 and v.shape[0] == p.shape[1] and v.shape[1] < p.shape[0]:
                for a in range(0, p.shape[0] - v.shape[1] + 1):
                    if close(v.T, p[a:a + v.shape[1]]):
                        found = (pname, ("rows", a, a + v.shape[1]))
                        break
        if found:
            mapping[iname] = found
    covered = {p for p, _ in mapping.values()}
    missing = [p for p in params if p not in covered]
    return mapping, missing


def goldens(model, x, mapping):
    net = copy.deepcopy(model).double().eval()
    params = {k: v.detach() for k, v in net.named_parameters()}
    buffers = {k: v.detach() for k, v in net.named_buffers()}

    def loss(p, xi):
        z = functional_call(net, (p, buffers), (xi.unsqueeze(0),))
        return F.binary_cross_entropy_with_logits(z, torch.ones_like(z), reduction="mean")

    xd = torch.from_numpy(x).double()
    g = vmap(grad(loss), in_dims=(None, 0))(params, xd)
    names, cols = [], []
    for iname, (pname, how) in mapping.items():
        gp = g[pname]
        if isinstance(how, tuple):
            gp = gp[:, how[1]:how[2]]
        names.append(iname)
        cols.append(gp.reshape(len(x), -1).pow(2).sum(1))
    with torch.no_grad():
        logits = net(xd).numpy()
    return names, torch.stack(cols, 1).numpy(), logits


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/fixtures/zoo")
    ap.add_argument("--only", default="")
    ap.add_argument("--forms", default=",".join(FORMS + list(EXTRA_FORMS)))
    a = ap.parse_args()
    only = [s for s in a.only.split(",") if s]
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.save(os.path.join(a.out, "input.npy"), x)
    import onnxruntime as ort
    failures = []
    for arch, build in ARCHS.items():
        if only and arch not in only:
            continue
        torch.manual_seed(0)
        m = build()
        if arch != "folded_bn_cnn":
            randomize(m)
        m.eval()
        xin = x.transpose(0, 2, 3, 1).copy() if arch == "nhwc" else x
        os.makedirs(os.path.join(a.out, arch), exist_ok=True)
        for form in a.forms.split(","):
            if form in EXTRA_FORMS and arch not in EXTRA_FORMS[form]:
                continue
            path = os.path.join(a.out, arch, f"{form}.onnx")
            if hasattr(m, "probs"):
                m.probs = True
            try:
                export(m, torch.from_numpy(xin[:2]), path, form)
            except Exception as e:  # noqa: BLE001 - report and go on with the next
                failures.append(f"{arch}/{form}: export failed: {e!r}"[:300])
                continue
            if hasattr(m, "probs"):
                m.probs = False
            om = onnx.load(path)
            gm = golden_model(m, om)
            mapping, missing = map_initializers(gm, om)
            # Swin's relative-position table is gathered by constant indices: the dynamo
            # exporter folds it into the bias it yields, so no initializer (and no feature) is left.
            missing = [p for p in missing if not (form.startswith("default") and "relative_position_bias_table" in p)]
            if missing:
                failures.append(f"{arch}/{form}: parameters with no initializer: {missing}")
            names, feats, logits = goldens(gm, xin, mapping)
            s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            # A fixed-batch model takes one image at a time.
            step = 1 if form in ("static", "default_static") else len(xin)
            got = np.concatenate([s.run(None, {"input": xin[i:i + step]})[0] for i in range(0, len(xin), step)])
            want = logits
            if hasattr(m, "probs"):
                e = np.exp(logits - logits.max(1, keepdims=True))
                want = e / e.sum(1, keepdims=True)
            err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
            if err > 1e-5:
                failures.append(f"{arch}/{form}: onnxruntime logits differ from PyTorch by {err:.2e} (relative)")
            stem = os.path.join(a.out, arch, form)
            np.save(stem + ".features.npy", feats)
            np.save(stem + ".logits.npy", logits)
            with open(stem + ".names.json", "w") as f:
                json.dump(names, f, indent=0)
            ops = sorted({n.op_type for n in om.graph.node})
            print(f"{arch:14s} {form:8s} {os.path.getsize(path) / 1024:6.0f} KB  {len(names):3d} features  "
                  f"opset {om.opset_import[0].version}  ops {' '.join(ops)}")
    for f in failures:
        print("FAILED", f, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
