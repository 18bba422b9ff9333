//! `LayerNormalization` over any trailing axes (`axis` onwards, never the batch): scale and
//! shift are parameters ([`ParamKind::LnScale`], [`ParamKind::LnShift`]). And
//! `InstanceNormalization` (over the spatial axes, per channel), which is also how both PyTorch
//! exporters write `GroupNorm` (a reshape to `[N, groups, -1]`, an InstanceNormalization with
//! unit scale and zero shift, then the learned per-channel Mul and Add): its scale and shift
//! count as the same kinds unless they are those constant ones and zeros. And
//! `GroupNormalization` (opset 18 with a scale and shift per group, 21 with one per channel), as
//! a standardisation over each group's channels and positions.
//!
//! With `xhat = (x - mean) / sqrt(var + eps)` over the normalised axes (`D` values) and
//! `g = dy * scale`: `dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)`; per sample,
//! `dScale = sum(dy * xhat)` and `dShift = sum(dy)` over the axes before `axis`.

use super::{act_input, norm_axis, Grads, Params, Rule, Scope};
use crate::grad::{node_err, Ctx, GradError, ParamKind};
use crate::onnx::{Attrs, NodeProto};

/// The normalisation-over-axes rules.
pub(super) const RULES: &[Rule] = &[
    Rule {
        op: "LayerNormalization",
        params: Params::Inputs(&[(1, ParamKind::LnScale), (2, ParamKind::LnShift)]),
        shape: ln_shape,
        backward: ln_backward,
    },
    Rule {
        op: "InstanceNormalization",
        params: Params::Discover(instance_params),
        shape: instance_shape,
        backward: instance_backward,
    },
    Rule {
        op: "GroupNormalization",
        params: Params::Inputs(&[(1, ParamKind::LnScale), (2, ParamKind::LnShift)]),
        shape: group_shape,
        backward: group_backward,
    },
];

/// `xhat = (x - mean) / sqrt(var + eps)` over `axes`, and `1 / sqrt(var + eps)`.
fn standardise(ctx: &mut Ctx, x: &str, axes: &[i64], eps: f32) -> (String, String) {
    let b = &mut ctx.b;
    let mu = b.reduce("ReduceMean", x, axes, true);
    let xc = b.sub(x, &mu);
    let sq = b.mul(&xc, &xc);
    let var = b.reduce("ReduceMean", &sq, axes, true);
    let e = b.scalar(eps);
    let ve = b.add(&var, &e);
    let sd = b.op("Sqrt", &[&ve], vec![]);
    let rstd = b.op("Reciprocal", &[&sd], vec![]);
    let xhat = b.mul(&xc, &rstd);
    (xhat, rstd)
}

/// The input gradient of a standardisation over `axes` given `g = dy * scale`:
/// `(g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)`.
fn standardised_input_grad(ctx: &mut Ctx, g: &str, xhat: &str, rstd: &str, axes: &[i64]) -> String {
    let b = &mut ctx.b;
    let mg = b.reduce("ReduceMean", g, axes, true);
    let gx = b.mul(g, xhat);
    let mgx = b.reduce("ReduceMean", &gx, axes, true);
    let t = b.mul(xhat, &mgx);
    let c = b.sub(g, &mg);
    let c = b.sub(&c, &t);
    b.mul(&c, rstd)
}

/// The scale's and the shift's per-sample squared gradient norms, each where it is a parameter:
/// `dScale = sum(dy * xhat)` and `dShift = sum(dy)` over `axes` (none: as they are), leaving
/// tensors of rank `rank` (batch included).
fn scale_shift_norms(
    n: &NodeProto,
    ctx: &mut Ctx,
    dy: &str,
    xhat: &str,
    (scale, shift): (&str, Option<&str>),
    axes: &[i64],
    rank: usize,
) -> Result<(), GradError> {
    let sum = |ctx: &mut Ctx, t: &str| -> String {
        if axes.is_empty() {
            t.to_string()
        } else {
            ctx.b.reduce("ReduceSum", t, axes, false)
        }
    };
    if ctx.is_param(scale) {
        let p = ctx.b.mul(dy, xhat);
        let s = sum(ctx, &p);
        let norm = ctx.b.sample_sq_norm(&s, rank);
        ctx.add_norm(n, scale, norm)?;
    }
    if let Some(shift) = shift.filter(|s| ctx.is_param(s)) {
        let s = sum(ctx, dy);
        let norm = ctx.b.sample_sq_norm(&s, rank);
        ctx.add_norm(n, shift, norm)?;
    }
    Ok(())
}

/// The first normalised axis (of the full shape, batch first).
fn ln_axis(n: &NodeProto, ctx: &Ctx) -> Result<usize, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let ax = norm_axis(n, Attrs::of(n).int("axis", -1)?, x.len() + 1)?;
    if ax == 0 {
        return Err(node_err(n, "LayerNormalization over the batch axis mixes samples"));
    }
    Ok(ax)
}

fn ln_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let ax = ln_axis(n, ctx)?;
    if n.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err(node_err(n, "LayerNormalization's Mean and InvStdDev outputs are not supported (training graphs)"));
    }
    for i in 1..3 {
        if let Some(name) = n.input.get(i).filter(|s| !s.is_empty()) {
            if ctx.is_act(name) {
                return Err(node_err(n, "LayerNormalization's scale and bias must be constants"));
            }
            let d = ctx.const_dims(n, name)?;
            let norm: usize = x[ax - 1..].iter().product();
            if d.iter().product::<usize>() > norm || d.len() > x.len() + 1 - ax {
                return Err(node_err(n, "scale/bias must broadcast over the normalised axes only"));
            }
        }
    }
    Ok(x)
}

fn ln_backward(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let xs = ctx.shape(n, &x)?;
    let rank = xs.len() + 1;
    let ax = ln_axis(n, ctx)?;
    let eps = Attrs::of(n).float("epsilon", 1e-5)?;
    let norm_axes: Vec<i64> = (ax as i64..rank as i64).collect();
    let outer: Vec<i64> = (1..ax as i64).collect();
    let (xhat, rstd) = standardise(ctx, &x, &norm_axes, eps);

    let scale = n.input[1].clone();
    let shift = n.input.get(2).filter(|s| !s.is_empty()).cloned();
    scale_shift_norms(n, ctx, dy, &xhat, (&scale, shift.as_deref()), &outer, rank + 1 - ax)?;
    if !ctx.wants_grad(&x) {
        return Ok(vec![]);
    }
    let g = ctx.b.mul(dy, &scale);
    let dx = standardised_input_grad(ctx, &g, &xhat, &rstd, &norm_axes);
    Ok(vec![(x, dx)])
}

/// InstanceNormalization's scale and shift, unless they are all ones and all zeros (the
/// constants of an exported GroupNorm, whose learned affine follows as Mul and Add).
fn instance_params(n: &NodeProto, s: &Scope) -> Vec<(usize, ParamKind)> {
    let all = |i: usize, v: f32| {
        n.input
            .get(i)
            .and_then(|name| s.ctx.consts.get(name))
            .and_then(|t| crate::onnx::tensor_f32(t).ok())
            .is_some_and(|a| a.iter().all(|&x| x == v))
    };
    let mut p = Vec::new();
    if !all(1, 1.0) {
        p.push((1, ParamKind::LnScale));
    }
    if !all(2, 0.0) {
        p.push((2, ParamKind::LnShift));
    }
    p
}

fn instance_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    if x.len() < 2 {
        return Err(node_err(n, "InstanceNormalization needs [N, C, spatial...]"));
    }
    for i in 1..3 {
        let name = n.input.get(i).map(String::as_str).unwrap_or("");
        if ctx.is_act(name) {
            return Err(node_err(n, "InstanceNormalization's scale and bias must be constants"));
        }
        if ctx.const_dims(n, name)? != [x[0]] {
            return Err(node_err(n, format!("InstanceNormalization's scale and bias must be [{}]", x[0])));
        }
    }
    Ok(x)
}

/// As LayerNormalization over the spatial axes, with a per-channel scale and shift:
/// per sample `dScale[c] = sum(dy * xhat)` and `dShift[c] = sum(dy)` over the spatial axes.
fn instance_backward(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let xs = ctx.shape(n, &x)?;
    let rank = xs.len() + 1;
    let eps = Attrs::of(n).float("epsilon", 1e-5)?;
    let axes: Vec<i64> = (2..rank as i64).collect();
    let (xhat, rstd) = standardise(ctx, &x, &axes, eps);
    let (scale, shift) = (n.input[1].clone(), n.input[2].clone());
    scale_shift_norms(n, ctx, dy, &xhat, (&scale, Some(&shift)), &axes, 2)?;
    if !ctx.wants_grad(&x) {
        return Ok(vec![]);
    }
    let mut per_channel = vec![xs[0] as i64];
    per_channel.extend(std::iter::repeat_n(1, rank - 2));
    let sc = ctx.b.reshape_to(&scale, &per_channel);
    let g = ctx.b.mul(dy, &sc);
    let dx = standardised_input_grad(ctx, &g, &xhat, &rstd, &axes);
    Ok(vec![(x, dx)])
}

/// `(groups, per_channel)`: the group count, and whether scale and shift hold one value per
/// channel (opset 21) rather than one per group (opset 18; the same where they are equal).
fn group_geometry(n: &NodeProto, ctx: &Ctx) -> Result<(usize, bool), GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let groups = Attrs::of(n).int("num_groups", 0)?;
    if x.len() < 2 || groups < 1 || x[0] % groups as usize != 0 {
        return Err(node_err(n, format!("GroupNormalization's {groups} groups do not divide the channels of {x:?}")));
    }
    let groups = groups as usize;
    let mut per_channel = None;
    for i in 1..3 {
        let name = n.input.get(i).map(String::as_str).unwrap_or("");
        if ctx.is_act(name) {
            return Err(node_err(n, "GroupNormalization's scale and bias must be constants"));
        }
        let len: usize = ctx.const_dims(n, name)?.iter().product();
        if len != x[0] && len != groups {
            return Err(node_err(n, format!("GroupNormalization's scale and bias must be [{}] or [{groups}]", x[0])));
        }
        per_channel = Some(per_channel.unwrap_or(false) || len == x[0]);
    }
    Ok((groups, per_channel.unwrap_or(true)))
}

fn group_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    group_geometry(n, ctx)?;
    ctx.shape(n, &n.input[0])
}

/// In the layout `[N, groups, C / groups, positions]`: a standardisation over the last two
/// axes, then the scale and shift per channel (`[groups, C / groups, 1]`) or per group
/// (`[groups, 1, 1]`); per sample `dScale = sum(dy * xhat)` and `dShift = sum(dy)` over what
/// each value scales.
fn group_backward(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let (groups, per_channel) = group_geometry(n, ctx)?;
    let x = n.input[0].clone();
    let xs = ctx.shape(n, &x)?;
    let eps = Attrs::of(n).float("epsilon", 1e-5)?;
    let (g, cg, l) = (groups as i64, (xs[0] / groups) as i64, xs[1..].iter().product::<usize>() as i64);
    let grouped = [-1, g, cg, l];
    let xg = ctx.b.reshape_to(&x, &grouped);
    let dyg = ctx.b.reshape_to(dy, &grouped);
    let (xhat, rstd) = standardise(ctx, &xg, &[2, 3], eps);
    let over: &[i64] = if per_channel { &[3] } else { &[2, 3] };
    let (scale, shift) = (n.input[1].clone(), n.input[2].clone());
    scale_shift_norms(n, ctx, &dyg, &xhat, (&scale, Some(&shift)), over, 4 - over.len())?;
    if !ctx.wants_grad(&x) {
        return Ok(vec![]);
    }
    let sc = ctx.b.reshape_to(&scale, &[g, if per_channel { cg } else { 1 }, 1]);
    let gs = ctx.b.mul(&dyg, &sc);
    let dx = standardised_input_grad(ctx, &gs, &xhat, &rstd, &[2, 3]);
    Ok(vec![(x, ctx.b.reshape_batch(&dx, &xs))])
}
