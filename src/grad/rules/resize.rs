//! Interpolation: `Resize` in `nearest`, `linear` and `cubic` modes (PyTorch's
//! `upsample_nearest2d`, `upsample_bilinear2d` and `upsample_bicubic2d`: GhostNetV2's and
//! EfficientFormerV2's up-sampling, CrossViT's second-branch input), any scale and every
//! coordinate transformation an exporter writes but `tf_crop_and_resize`.
//!
//! Every mode is a separable linear map: along each resized axis the output is `A x` for a
//! constant `[out, in]` matrix built here from the ONNX formulas (one 1 per row for nearest, two
//! interpolation weights for linear, four cubic-convolution weights for cubic), so the backward is
//! `A^T dy` per axis: a MatMul by a constant, exact for any scale.

use super::{act_input, single, Grads, Params, Rule};
use crate::grad::{node_err, Ctx, GradError};
use crate::onnx::{Attrs, NodeProto};

/// The interpolation rules.
pub(super) const RULES: &[Rule] = &[Rule { op: "Resize", params: Params::None, shape: resize_shape, backward: resize }];

/// What one Resize does along each per-sample axis: `(input length, output length, scale)`.
struct Plan {
    axes: Vec<(usize, usize, f32)>,
    mode: Mode,
    ctm: String,
    nearest: String,
}

/// Where a Resize's output lengths come from, one entry per axis (the batch first).
/// The interpolation.
enum Mode {
    Nearest,
    Linear,
    /// Keys' cubic convolution with coefficient `a`; taps outside the axis dropped and the rest
    /// renormalised (`exclude_outside`), else the edge value repeated.
    Cubic {
        a: f32,
        exclude_outside: bool,
    },
}

enum By {
    Sizes(Vec<i64>),
    Scales(Vec<f32>),
}

fn plan(n: &NodeProto, ctx: &Ctx) -> Result<Plan, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let a = Attrs::of(n);
    let mode = a.string("mode", "nearest")?;
    let mode = match mode.as_str() {
        "nearest" => Mode::Nearest,
        "linear" => Mode::Linear,
        "cubic" => {
            Mode::Cubic { a: a.float("cubic_coeff_a", -0.75)?, exclude_outside: a.int("exclude_outside", 0)? != 0 }
        }
        m => return Err(node_err(n, format!("Resize mode '{m}' is not supported (nearest, linear and cubic are)"))),
    };
    let ctm = a.string("coordinate_transformation_mode", "half_pixel")?;
    if !["half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn"]
        .contains(&ctm.as_str())
    {
        return Err(node_err(n, format!("Resize coordinate_transformation_mode '{ctm}' is not supported")));
    }
    if a.int("antialias", 0)? != 0 || a.ints("axes")?.is_some() {
        return Err(node_err(n, "Resize with antialias or axes is not supported; export with antialias=False"));
    }
    let arg = |i: usize| n.input.get(i).filter(|s| !s.is_empty());
    let rank = x.len() + 1;
    // Scales and sizes cover every axis, the batch first (its size may be the symbolic batch).
    let sizes: Option<Vec<i64>> = arg(3).map(|s| ctx.const_i64(n, s)).transpose()?;
    let scales: Option<Vec<f32>> = match arg(2) {
        Some(s) => Some(ctx.const_f32(n, s)?.iter().copied().collect()).filter(|v: &Vec<f32>| !v.is_empty()),
        None => None,
    };
    let by = match (sizes, scales) {
        (Some(s), _) if s.len() == rank => By::Sizes(s),
        (_, Some(s)) if s.len() == rank => By::Scales(s),
        _ => return Err(node_err(n, "Resize needs constant scales or sizes for every axis")),
    };
    // The batch must stay whole: sizes read it from the input (the symbolic batch after
    // folding), scales keep it at 1. A literal would resize every batch to that many samples.
    let whole = match &by {
        By::Sizes(s) => s[0] == crate::grad::fold::BATCH,
        By::Scales(s) => s[0] == 1.0,
    };
    if !whole {
        return Err(node_err(
            n,
            "Resize changes the batch axis (sizes or scales with a literal batch); re-export with a dynamic batch \
             axis",
        ));
    }
    let mut axes = Vec::with_capacity(x.len());
    for (i, &len) in x.iter().enumerate() {
        let (out, scale) = match &by {
            By::Sizes(s) => {
                let out = usize::try_from(s[i + 1]).map_err(|_| node_err(n, "negative Resize size"))?;
                (out, out as f32 / len as f32)
            }
            By::Scales(s) => ((len as f32 * s[i + 1]) as usize, s[i + 1]),
        };
        if out == 0 || !(scale.is_finite() && scale > 0.0) {
            return Err(node_err(n, format!("Resize to {out} along an axis of {len}")));
        }
        axes.push((len, out, scale));
    }
    Ok(Plan { axes, mode, ctm, nearest: a.string("nearest_mode", "round_prefer_floor")? })
}

fn resize_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    Ok(plan(n, ctx)?.axes.iter().map(|&(_, out, _)| out).collect())
}

/// The `[out, in]` matrix of one axis (ONNX `Resize`, as ONNX Runtime computes it in float32).
fn axis_matrix(p: &Plan, len: usize, out: usize, scale: f32) -> Vec<f32> {
    let mut m = vec![0.0f32; out * len];
    let last = (len - 1) as f32;
    for o in 0..out {
        let of = o as f32;
        let x = match p.ctm.as_str() {
            "pytorch_half_pixel" if out == 1 => 0.0,
            "half_pixel" | "pytorch_half_pixel" => (of + 0.5) / scale - 0.5,
            "align_corners" if out == 1 => 0.0,
            "align_corners" => of * last / (out - 1) as f32,
            "tf_half_pixel_for_nn" => (of + 0.5) / scale,
            _ => of / scale,
        };
        let row = &mut m[o * len..(o + 1) * len];
        if let Mode::Cubic { a, exclude_outside } = p.mode {
            cubic_row(row, x, a, exclude_outside);
        } else if matches!(p.mode, Mode::Linear) {
            let x = x.clamp(0.0, last);
            let x0 = x.floor();
            let x1 = (x0 + 1.0).min(last);
            let w = x - x0;
            row[x0 as usize] += 1.0 - w;
            row[x1 as usize] += w;
        } else {
            let tie = x.fract() == 0.5;
            let i = match p.nearest.as_str() {
                "floor" => x.floor(),
                "ceil" => x.ceil(),
                "round_prefer_ceil" if tie => x.ceil(),
                "round_prefer_ceil" => x.round(),
                _ if tie => x.floor(),
                _ => x.round(),
            };
            row[i.clamp(0.0, last) as usize] = 1.0;
        }
    }
    m
}

/// One output's cubic weights at source coordinate `x` (not clamped, as in ONNX Runtime and
/// PyTorch): taps `floor(x) - 1 ..= floor(x) + 2`, an out-of-range tap reading the edge value.
fn cubic_row(row: &mut [f32], x: f32, a: f32, exclude_outside: bool) {
    let len = row.len() as i64;
    let x0 = x.floor();
    let t = x - x0;
    // Keys' kernel at distances 1 + t, t, 1 - t, 2 - t.
    let near = |d: f32| ((a + 2.0) * d - (a + 3.0)) * d * d + 1.0;
    let far = |d: f32| ((a * d - 5.0 * a) * d + 8.0 * a) * d - 4.0 * a;
    let w = [far(1.0 + t), near(t), near(1.0 - t), far(2.0 - t)];
    let taps: Vec<(i64, f32)> = (0..4).map(|k| (x0 as i64 - 1 + k as i64, w[k])).collect();
    let inside: f32 = taps.iter().filter(|(i, _)| (0..len).contains(i)).map(|(_, w)| w).sum();
    for (i, wk) in taps {
        if exclude_outside {
            if (0..len).contains(&i) && inside != 0.0 {
                row[i as usize] += wk / inside;
            }
        } else {
            row[i.clamp(0, len - 1) as usize] += wk;
        }
    }
}

/// Per resized axis `dx = A^T dy`: the axis moved last, a MatMul by `A` (`[.., out] x [out, in]`),
/// moved back.
fn resize(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let p = plan(n, ctx)?;
    let rank = p.axes.len() + 1;
    let mut g = dy.to_string();
    for (i, &(len, out, scale)) in p.axes.iter().enumerate() {
        let a = axis_matrix(&p, len, out, scale);
        // Every row sums to one, so a diagonal of ones is the identity: nothing to do.
        if len == out && (0..out).all(|o| a[o * len + o] == 1.0) {
            continue;
        }
        let am = ctx.b.const_f32("resize_matrix", &[out, len], &a);
        let ax = i + 1;
        if ax == rank - 1 {
            g = ctx.b.op("MatMul", &[&g, &am], vec![]);
        } else {
            let mut perm: Vec<i64> = (0..rank as i64).collect();
            perm.swap(ax, rank - 1);
            let moved = ctx.b.transpose(&g, &perm);
            let m = ctx.b.op("MatMul", &[&moved, &am], vec![]);
            g = ctx.b.transpose(&m, &perm);
        }
    }
    Ok(single(n, g))
}
