//! Activations: elementwise non-linearities (`Relu`, `LeakyRelu`, `Clip`, `Sigmoid`,
//! `HardSigmoid`, `HardSwish`) and the trailing `Softmax`.

use super::{same_shape, single, Grads, Params, Rule};
use crate::grad::{node_err, Ctx, GradError};
use crate::onnx::{Attrs, NodeProto};

/// The activation rules.
pub(super) const RULES: &[Rule] = &[
    Rule { op: "Relu", params: Params::None, shape: same_shape, backward: relu },
    Rule { op: "LeakyRelu", params: Params::None, shape: same_shape, backward: leaky_relu },
    Rule { op: "Clip", params: Params::None, shape: same_shape, backward: clip },
    Rule { op: "Sigmoid", params: Params::None, shape: same_shape, backward: sigmoid },
    Rule { op: "HardSigmoid", params: Params::None, shape: same_shape, backward: hard_sigmoid },
    Rule { op: "HardSwish", params: Params::None, shape: same_shape, backward: hard_swish },
    Rule { op: "Softmax", params: Params::None, shape: softmax_shape, backward: softmax },
];

fn relu(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    // y > 0 exactly when x > 0; using the output lets ONNX Runtime fuse Conv+BN+Relu.
    let zero = ctx.b.scalar(0.0);
    let m = ctx.b.op("Greater", &[&n.output[0], &zero], vec![]);
    Ok(single(n, ctx.b.op("Where", &[&m, dy, &zero], vec![])))
}

fn leaky_relu(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let alpha = Attrs::of(n).float("alpha", 0.01)?;
    let zero = ctx.b.scalar(0.0);
    let src = if alpha > 0.0 { n.output[0].clone() } else { n.input[0].clone() };
    let m = ctx.b.op("Greater", &[&src, &zero], vec![]);
    let neg = ctx.b.scale(dy, alpha);
    Ok(single(n, ctx.b.op("Where", &[&m, dy, &neg], vec![])))
}

fn clip_bounds(n: &NodeProto, ctx: &Ctx) -> Result<(f32, f32), GradError> {
    let a = Attrs::of(n);
    let mut lo = a.float("min", f32::MIN)?;
    let mut hi = a.float("max", f32::MAX)?;
    if let Some(name) = n.input.get(1).filter(|s| !s.is_empty()) {
        lo = *ctx.const_f32(n, name)?.iter().next().ok_or_else(|| node_err(n, "empty min"))?;
    }
    if let Some(name) = n.input.get(2).filter(|s| !s.is_empty()) {
        hi = *ctx.const_f32(n, name)?.iter().next().ok_or_else(|| node_err(n, "empty max"))?;
    }
    Ok((lo, hi))
}

fn clip(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    // PyTorch's hardtanh/relu6 backward: gradient only strictly inside (min, max).
    let x = &n.input[0];
    let (lo, hi) = clip_bounds(n, ctx)?;
    let lo_c = ctx.b.scalar(lo);
    let hi_c = ctx.b.scalar(hi);
    let zero = ctx.b.scalar(0.0);
    let a = ctx.b.op("Greater", &[x, &lo_c], vec![]);
    let bnd = ctx.b.op("Less", &[x, &hi_c], vec![]);
    let m = ctx.b.op("And", &[&a, &bnd], vec![]);
    Ok(single(n, ctx.b.op("Where", &[&m, dy, &zero], vec![])))
}

fn sigmoid(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let y = n.output[0].clone();
    let one = ctx.b.scalar(1.0);
    let om = ctx.b.sub(&one, &y);
    let t = ctx.b.mul(dy, &y);
    Ok(single(n, ctx.b.mul(&t, &om)))
}

fn hard_sigmoid(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let a = Attrs::of(n);
    let alpha = a.float("alpha", 0.2)?;
    let beta = a.float("beta", 0.5)?;
    let v = ctx.b.scale(&n.input[0], alpha);
    let bc = ctx.b.scalar(beta);
    let v = ctx.b.add(&v, &bc);
    let zero = ctx.b.scalar(0.0);
    let one = ctx.b.scalar(1.0);
    let a1 = ctx.b.op("Greater", &[&v, &zero], vec![]);
    let a2 = ctx.b.op("Less", &[&v, &one], vec![]);
    let m = ctx.b.op("And", &[&a1, &a2], vec![]);
    let g = ctx.b.scale(dy, alpha);
    Ok(single(n, ctx.b.op("Where", &[&m, &g, &zero], vec![])))
}

fn hard_swish(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    // PyTorch: 0 for x < -3, dy*(x/3 + 1/2) for -3 <= x <= 3, dy for x > 3.
    let x = &n.input[0];
    let lo = ctx.b.scalar(-3.0);
    let hi = ctx.b.scalar(3.0);
    let zero = ctx.b.scalar(0.0);
    let half = ctx.b.scalar(0.5);
    let t = ctx.b.scale(x, 1.0 / 3.0);
    let t = ctx.b.add(&t, &half);
    let mid = ctx.b.mul(dy, &t);
    let above = ctx.b.op("Greater", &[x, &hi], vec![]);
    let upper = ctx.b.op("Where", &[&above, dy, &mid], vec![]);
    let below = ctx.b.op("Less", &[x, &lo], vec![]);
    Ok(single(n, ctx.b.op("Where", &[&below, &zero, &upper], vec![])))
}

/// A Softmax (or LogSoftmax) that writes the model's output is skipped: the compiler
/// differentiates its input, the logits. Anywhere else it is refused.
fn softmax_shape(n: &NodeProto, _: &Ctx) -> Result<Vec<usize>, GradError> {
    Err(node_err(n, "Softmax is supported only as the model's final node"))
}

fn softmax(n: &NodeProto, _: &str, _: &mut Ctx) -> Result<Grads, GradError> {
    Err(node_err(n, "Softmax is supported only as the model's final node"))
}
