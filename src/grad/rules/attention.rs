//! Attention: `Softmax` inside the graph (over any axis) and the batched `MatMul` of two
//! activations (`q k^T`, `p v`), the `MatMul` rule of `linear` handing that case here.
//!
//! A Softmax that writes the model's output never reaches this rule: the compiler
//! differentiates its input, the logits (`find_logits`).

use super::{act_input, norm_axis, same_shape, single, Grads, Params, Rule};
use crate::grad::{node_err, Ctx, GradError};
use crate::onnx::{Attrs, NodeProto};

/// The attention rules.
pub(super) const RULES: &[Rule] =
    &[Rule { op: "Softmax", params: Params::None, shape: softmax_shape, backward: softmax }];

fn softmax_axis(n: &NodeProto, ctx: &Ctx) -> Result<usize, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let legacy = ctx.b.opset < 13;
    let ax = norm_axis(n, Attrs::of(n).int("axis", if legacy { 1 } else { -1 })?, x.len() + 1)?;
    if ax == 0 {
        return Err(node_err(n, "Softmax over the batch axis mixes samples"));
    }
    // Before opset 13 Softmax normalises over every axis from `axis` on (flattened): the same
    // as over `axis` alone when the axes after it have size 1.
    if legacy && x[ax..].iter().any(|&d| d != 1) {
        return Err(node_err(
            n,
            "Softmax before opset 13 normalises over the flattened axes after `axis`, not over the last axis \
             alone; convert the model to opset 13 (onnx.version_converter) or re-export it",
        ));
    }
    Ok(ax)
}

fn softmax_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    softmax_axis(n, ctx)?;
    same_shape(n, ctx)
}

/// `dx = y * (dy - sum(dy * y))` over the softmax axis, from the output `y`.
fn softmax(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let ax = softmax_axis(n, ctx)?;
    let y = n.output[0].clone();
    let dyy = ctx.b.mul(dy, &y);
    let s = ctx.b.reduce("ReduceSum", &dyy, &[ax as i64], true);
    let c = ctx.b.sub(dy, &s);
    Ok(single(n, ctx.b.mul(&y, &c)))
}

/// Per-sample shape of `a @ b` for two activations `[.., M, K] x [.., K, P]` with the same
/// leading (per-sample) axes.
pub(super) fn matmul2_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let a = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let b = ctx.shape(n, act_input(n, ctx, 1)?)?;
    if a.len() < 2 || b.len() != a.len() || a[..a.len() - 2] != b[..b.len() - 2] || a[a.len() - 1] != b[b.len() - 2] {
        return Err(node_err(
            n,
            format!("MatMul of two activations needs [N, .., M, K] x [N, .., K, P] with equal leading axes; got [N, {a:?}] x [N, {b:?}]"),
        ));
    }
    let mut o = a.clone();
    let last = o.len() - 1;
    o[last] = b[b.len() - 1];
    Ok(o)
}

/// `da = dy b^T`, `db = a^T dy` (transposes of the last two axes).
pub(super) fn matmul2(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let (a, b) = (n.input[0].clone(), n.input[1].clone());
    let rank = ctx.shape(n, &a)?.len() + 1;
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 1, rank - 2);
    let mut grads = Vec::new();
    if ctx.wants_grad(&a) {
        let bt = ctx.b.transpose(&b, &perm);
        grads.push((a.clone(), ctx.b.op("MatMul", &[dy, &bt], vec![])));
    }
    if ctx.wants_grad(&b) {
        let at = ctx.b.transpose(&a, &perm);
        grads.push((b, ctx.b.op("MatMul", &[&at, dy], vec![])));
    }
    Ok(grads)
}
