//! Attention: `Softmax` inside the graph (over any axis) and the batched `MatMul` of two
//! activations (`q k^T`, `p v`), the `MatMul` rule of `linear` handing that case here.
//!
//! A Softmax that writes the model's output never reaches this rule: the compiler
//! differentiates its input, the logits (`find_logits`).

use super::arith::unbroadcast;
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

/// Per-sample shape of `a @ b` for two activations `[.., M, K] x [.., K, P]` whose leading
/// (per-sample) axes are equal or 1 (broadcast: multi-query attention shares one key and value
/// head among all query heads, MobileNetV4's hybrid blocks).
pub(super) fn matmul2_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let a = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let b = ctx.shape(n, act_input(n, ctx, 1)?)?;
    let r = a.len();
    let lead_ok = |i: usize| a[i] == b[i] || a[i] == 1 || b[i] == 1;
    if r < 2 || b.len() != r || !(0..r - 2).all(lead_ok) || a[r - 1] != b[r - 2] {
        return Err(node_err(
            n,
            format!(
                "MatMul of two activations needs [N, .., M, K] x [N, .., K, P] with leading axes equal or 1; got [N, \
                 {a:?}] x [N, {b:?}]"
            ),
        ));
    }
    let mut o: Vec<usize> = (0..r - 2).map(|i| a[i].max(b[i])).collect();
    o.extend([a[r - 2], b[r - 1]]);
    Ok(o)
}

/// `da = dy b^T`, `db = a^T dy` (transposes of the last two axes), each summed over the
/// leading axes it was broadcast along.
pub(super) fn matmul2(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let (a, b) = (n.input[0].clone(), n.input[1].clone());
    let (sa, sb, so) = (ctx.shape(n, &a)?, ctx.shape(n, &b)?, matmul2_shape(n, ctx)?);
    let rank = sa.len() + 1;
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 1, rank - 2);
    // An operand's gradient before summing over its broadcast axes: the output's leading axes
    // and the operand's own last two.
    let full = |s: &[usize]| -> Vec<usize> {
        let mut v = so[..so.len() - 2].to_vec();
        v.extend(&s[s.len() - 2..]);
        v
    };
    let mut grads = Vec::new();
    if ctx.wants_grad(&a) {
        let bt = ctx.b.transpose(&b, &perm);
        let da = ctx.b.op("MatMul", &[dy, &bt], vec![]);
        grads.push((a.clone(), unbroadcast(n, ctx, &da, &full(&sa), &sa)?));
    }
    if ctx.wants_grad(&b) {
        let at = ctx.b.transpose(&a, &perm);
        let db = ctx.b.op("MatMul", &[&at, dy], vec![]);
        grads.push((b, unbroadcast(n, ctx, &db, &full(&sb), &sb)?));
    }
    Ok(grads)
}
