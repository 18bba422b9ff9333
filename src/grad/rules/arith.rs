//! Elementwise arithmetic: `Add`, `Sub`, `Mul`, `Div` with broadcasting.
//!
//! Their constant operands are parameters in three patterns, found by looking at the
//! neighbouring nodes (what exporters write for layers ONNX has no operator for):
//! - `Add` of a constant right after a `Conv` (per-channel), `Gemm` or `MatMul`: the layer's
//!   bias ([`ParamKind::Bias`]);
//! - a per-channel constant `Mul` whose output only a per-channel constant `Add` reads: a
//!   BatchNormalization folded into scale and shift (Keras/TensorFlow exports, optimisers),
//!   before or after the activation ([`ParamKind::FoldedBnScale`], [`ParamKind::FoldedBnShift`]);
//! - the same pair on the image before any parameter is a preprocessing normalisation
//!   ([`ParamKind::InputScale`], [`ParamKind::InputShift`], not counted by default);
//! - downstream of a parameter, any other constant with more than one value: a `Mul` is a
//!   layer scale ([`ParamKind::LayerScale`]), an `Add` a bias when per-channel, else a position
//!   embedding ([`ParamKind::Embedding`]).
//!
//! Per-channel: the constant has more than one element along the channel axis (axis 1, or the
//! last axis for channels-last tensors), as many as the activation, and size 1 on every other
//! axis. Scalars (a `Mul` by 1/255) and full-size constants never count.

use super::{same_shape, single, Grads, Params, Rule, Scope};
use crate::grad::{node_err, Ctx, GradError, ParamKind};
use crate::onnx::NodeProto;

/// The arithmetic rules.
pub(super) const RULES: &[Rule] = &[
    Rule { op: "Add", params: Params::Discover(add_params), shape: broadcast, backward: elementwise },
    Rule { op: "Sub", params: Params::None, shape: broadcast, backward: elementwise },
    Rule { op: "Mul", params: Params::Discover(mul_params), shape: broadcast, backward: elementwise },
    Rule { op: "Div", params: Params::None, shape: div_shape, backward: elementwise },
    Rule { op: "PRelu", params: Params::Inputs(&[(1, ParamKind::Weight)]), shape: same_shape, backward: prelu },
    Rule { op: "Sum", params: Params::None, shape: sum_shape, backward: sum },
];

/// The activation operand and the position of the constant one, when `n` has one of each.
fn act_and_const(n: &NodeProto, s: &Scope) -> Option<(String, usize)> {
    let is_const = |i: usize| s.ctx.consts.contains_key(&n.input[i]);
    match n.input.as_slice() {
        [a, _] if s.ctx.is_act(a) && is_const(1) => Some((a.clone(), 1)),
        [_, b] if s.ctx.is_act(b) && is_const(0) => Some((b.clone(), 0)),
        _ => None,
    }
}

/// The channel axis (of the full shape, batch first) along which constant `c` is per-channel
/// for activation `x`, if it is.
fn channel_axis(s: &Scope, x: &str, c: &str) -> Option<usize> {
    let xs = s.ctx.shapes.get(x)?;
    let cd: Vec<i64> = s.ctx.consts.get(c)?.dims.clone();
    let rank = xs.len() + 1;
    if cd.len() > rank || rank < 2 {
        return None;
    }
    let off = rank - cd.len();
    let varying: Vec<usize> = (0..cd.len()).filter(|&i| cd[i] != 1).map(|i| i + off).collect();
    match varying.as_slice() {
        [ax] if (*ax == 1 || *ax == rank - 1) && cd[ax - off] > 1 && cd[ax - off] as usize == xs[ax - 1] => Some(*ax),
        _ => None,
    }
}

/// The kind of a `Mul`'s constant when it is the scale of a folded BatchNormalization.
fn folded_scale(n: &NodeProto, s: &Scope) -> Option<(usize, ParamKind)> {
    let (x, ci) = act_and_const(n, s)?;
    let ax = channel_axis(s, &x, &n.input[ci])?;
    let add = s.sole_reader(n.output.first()?).filter(|r| r.op_type == "Add")?;
    let shift = add.input.iter().find(|i| s.ctx.consts.contains_key(*i))?;
    // The Add's output has the Mul's shape (a per-channel constant does not expand it).
    if channel_axis(s, &x, shift) != Some(ax) {
        return None;
    }
    let kind = if s.after_param.contains(&x) { ParamKind::FoldedBnScale } else { ParamKind::InputScale };
    Some((ci, kind))
}

/// Whether the constant operand `c` holds more than one value (a learned tensor, not a scalar
/// factor such as 1/255 or an attention's 1/sqrt(d)).
fn learned(s: &Scope, c: &str) -> bool {
    s.ctx.consts.get(c).is_some_and(|t| {
        t.dims.iter().product::<i64>() > 1
            && matches!(t.data_type, crate::onnx::data_type::FLOAT | crate::onnx::data_type::DOUBLE)
    })
}

fn mul_params(n: &NodeProto, s: &Scope) -> Vec<(usize, ParamKind)> {
    if let Some(p) = folded_scale(n, s) {
        return vec![p];
    }
    // A constant scale no shift follows, after a parameter: a layer scale (ConvNeXt).
    match act_and_const(n, s) {
        Some((x, ci)) if learned(s, &n.input[ci]) && s.after_param.contains(&x) => vec![(ci, ParamKind::LayerScale)],
        _ => vec![],
    }
}

fn add_params(n: &NodeProto, s: &Scope) -> Vec<(usize, ParamKind)> {
    let Some((x, ci)) = act_and_const(n, s) else { return vec![] };
    // A node the analysis added (a Gemm written as MatMul + Add) has no producer in the model.
    let kind = s.producers.get(&x).and_then(|p| match p.op_type.as_str() {
        // MatMul + Add is how some exporters write a Gemm: the Add's constant is its bias.
        "MatMul" | "Gemm" => Some(ParamKind::Bias),
        "Conv" if channel_axis(s, &x, &n.input[ci]) == Some(1) => Some(ParamKind::Bias),
        "Mul" => folded_scale(p, s).map(|(_, k)| match k {
            ParamKind::InputScale => ParamKind::InputShift,
            _ => ParamKind::FoldedBnShift,
        }),
        _ => None,
    });
    // Any other learned constant added to an activation downstream of a parameter: a position
    // embedding (or a bias the exporter moved away from its layer).
    let kind = kind.or_else(|| {
        (learned(s, &n.input[ci]) && s.after_param.contains(&x)).then(|| {
            if channel_axis(s, &x, &n.input[ci]).is_some() {
                ParamKind::Bias
            } else {
                ParamKind::Embedding
            }
        })
    });
    kind.map(|k| vec![(ci, k)]).unwrap_or_default()
}

fn div_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    if !ctx.is_act(&n.input[0]) && n.input.get(1).is_some_and(|d| ctx.is_act(d)) {
        return Err(node_err(n, "a constant divided by an activation is not supported"));
    }
    broadcast(n, ctx)
}

/// Per-sample shape of a broadcasting binary operator.
fn broadcast(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    broadcast_of(n, ctx, 2)
}

/// Per-sample shape of a broadcasting operator of `arity` operands.
pub(super) fn broadcast_of(n: &NodeProto, ctx: &Ctx, arity: usize) -> Result<Vec<usize>, GradError> {
    // The backward reads every operand (found by fuzzing: a one-input Mul panicked there).
    if n.input.len() != arity {
        return Err(node_err(n, format!("has {} inputs; the operator takes {arity}", n.input.len())));
    }
    // Full shapes with the batch as 0 (a placeholder that broadcasts with nothing but itself).
    let mut full: Vec<Vec<usize>> = Vec::new();
    let mut act_rank = 0;
    for name in &n.input {
        if let Some(s) = ctx.shapes.get(name) {
            let mut f = vec![0];
            f.extend(s);
            act_rank = act_rank.max(f.len());
            full.push(f);
        } else {
            full.push(ctx.const_dims(n, name)?);
        }
    }
    let rank = full.iter().map(Vec::len).max().unwrap_or(0);
    if rank != act_rank {
        return Err(node_err(n, "a constant operand has more axes than the activation; the batch axis would move"));
    }
    let mut out = vec![1usize; rank];
    for f in &full {
        let off = rank - f.len();
        for (i, &d) in f.iter().enumerate() {
            let o = &mut out[off + i];
            if i + off == 0 && d != 0 && d != 1 {
                return Err(node_err(n, "a constant operand spans the batch axis"));
            }
            if d == 0 || *o == 0 {
                *o = 0;
            } else if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(node_err(n, format!("shapes do not broadcast: {full:?}")));
            }
        }
    }
    Ok(out[1..].to_vec())
}

/// Sums `g` (shaped like the node output, per sample `out`) down to an input of per-sample shape `inp`.
pub(super) fn unbroadcast(
    n: &NodeProto,
    ctx: &mut Ctx,
    g: &str,
    out: &[usize],
    inp: &[usize],
) -> Result<String, GradError> {
    if out == inp {
        return Ok(g.to_string());
    }
    if out.len() != inp.len() {
        return Err(node_err(n, "activation operands of different rank are not supported"));
    }
    let axes: Vec<i64> = (0..out.len()).filter(|&i| inp[i] == 1 && out[i] != 1).map(|i| i as i64 + 1).collect();
    Ok(ctx.b.reduce("ReduceSum", g, &axes, true))
}

/// Per-sample squared norm of a bias-like parameter's gradient `g` (shaped like the output).
fn param_norm(n: &NodeProto, ctx: &mut Ctx, g: &str, out: &[usize], param: &str) -> Result<(), GradError> {
    let pd = ctx.const_dims(n, param)?;
    let rank = out.len() + 1;
    // Axes (of the output) along which the parameter is broadcast: its gradient sums over them.
    let axes: Vec<i64> = (1..rank)
        .filter(|&ax| {
            let off = rank as i64 - pd.len() as i64;
            let pi = ax as i64 - off;
            pi < 0 || pd[pi as usize] == 1
        })
        .map(|a| a as i64)
        .collect();
    let reduced = if axes.is_empty() { g.to_string() } else { ctx.b.reduce("ReduceSum", g, &axes, true) };
    let norm = ctx.b.sample_sq_norm(&reduced, rank);
    ctx.add_norm(n, param, norm)
}

/// The backward of Add/Sub/Mul/Div: gradients to activation operands (summed over their
/// broadcast axes) and norms of parameter operands.
fn elementwise(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let out = ctx.shapes.get(&n.output[0]).cloned().unwrap_or_default();
    let op = n.op_type.clone();
    let mut grads = Vec::new();
    for i in 0..2 {
        let name = n.input[i].clone();
        let other = n.input[1 - i].clone();
        let is_param = ctx.is_param(&name);
        if !ctx.wants_grad(&name) && !is_param {
            continue;
        }
        let local = match (op.as_str(), i) {
            ("Add", _) | ("Sub", 0) => dy.to_string(),
            ("Sub", _) => ctx.b.op("Neg", &[dy], vec![]),
            ("Mul", _) => ctx.b.mul(dy, &other),
            ("Div", 0) => ctx.b.op("Div", &[dy, &other], vec![]),
            // d(a/b)/db = -(a/b)/b, from the output.
            ("Div", _) if ctx.is_act(&name) => {
                let q = ctx.b.mul(dy, &n.output[0]);
                let q = ctx.b.op("Div", &[&q, &name], vec![]);
                ctx.b.op("Neg", &[&q], vec![])
            }
            _ => return Err(node_err(n, "gradient through a constant divisor is not supported")),
        };
        if is_param {
            param_norm(n, ctx, &local, &out, &name)?;
        } else {
            let inp = ctx.shape(n, &name)?;
            grads.push((name, unbroadcast(n, ctx, &local, &out, &inp)?));
        }
    }
    Ok(grads)
}

/// `PRelu(x, slope)`: `x` above 0, `slope * x` below, the slope learned (per channel, or one
/// value). `dx = dy` or `dy * slope`; the slope's gradient is `dy * x` where `x < 0`, summed
/// over the axes it is broadcast along.
fn prelu(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let (x, slope) = (n.input[0].clone(), n.input.get(1).cloned().unwrap_or_default());
    if ctx.is_act(&slope) {
        return Err(node_err(n, "PRelu with a computed slope is not supported (the slope must be a constant)"));
    }
    let zero = ctx.b.scalar(0.0);
    let pos = ctx.b.op("Greater", &[&x, &zero], vec![]);
    if ctx.is_param(&slope) {
        let dyx = ctx.b.mul(dy, &x);
        let local = ctx.b.op("Where", &[&pos, &zero, &dyx], vec![]);
        let out = ctx.shape(n, &x)?;
        param_norm(n, ctx, &local, &out, &slope)?;
    }
    if !ctx.wants_grad(&x) {
        return Ok(Vec::new());
    }
    let neg = ctx.b.mul(dy, &slope);
    Ok(single(n, ctx.b.op("Where", &[&pos, dy, &neg], vec![])))
}

/// `Sum` of any number of broadcasting operands (TensorFlow's `AddN`).
fn sum_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    broadcast_of(n, ctx, n.input.len())
}

/// Every activation operand gets `dy`, summed over the axes it was broadcast along.
fn sum(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let out = ctx.shape(n, &n.output[0])?;
    let mut grads = Vec::new();
    for name in n.input.clone() {
        if ctx.wants_grad(&name) {
            let inp = ctx.shape(n, &name)?;
            grads.push((name, unbroadcast(n, ctx, dy, &out, &inp)?));
        }
    }
    Ok(grads)
}
