//! Comparisons and `Where`: a mask computed from activations carries no gradient, and `Where`
//! passes the gradient to the branch it selected. Exporters write these for thresholded
//! activations (the dynamo exporter's `softplus`: `Where(x > 20, x, Softplus(x))`) and for
//! masks in attention.

use super::arith::{broadcast_of, unbroadcast};
use super::{Grads, Params, Rule};
use crate::grad::{node_err, Ctx, GradError};
use crate::onnx::NodeProto;

/// The selection rules.
pub(super) const RULES: &[Rule] = &[
    Rule { op: "Greater", params: Params::None, shape: binary, backward: no_gradient },
    Rule { op: "Less", params: Params::None, shape: binary, backward: no_gradient },
    Rule { op: "GreaterOrEqual", params: Params::None, shape: binary, backward: no_gradient },
    Rule { op: "LessOrEqual", params: Params::None, shape: binary, backward: no_gradient },
    Rule { op: "Equal", params: Params::None, shape: binary, backward: no_gradient },
    Rule { op: "And", params: Params::None, shape: binary, backward: no_gradient },
    Rule { op: "Or", params: Params::None, shape: binary, backward: no_gradient },
    Rule { op: "Not", params: Params::None, shape: super::same_shape, backward: no_gradient },
    Rule { op: "Where", params: Params::None, shape: ternary, backward: select },
];

fn binary(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    broadcast_of(n, ctx, 2)
}

fn ternary(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    broadcast_of(n, ctx, 3)
}

/// A boolean has no derivative: nothing flows back through a comparison.
fn no_gradient(_: &NodeProto, _: &str, _: &mut Ctx) -> Result<Grads, GradError> {
    Ok(Vec::new())
}

/// `Where(c, a, b)`: `da = Where(c, dy, 0)`, `db = Where(c, 0, dy)`, each summed over the axes
/// its operand was broadcast along.
fn select(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let out = ctx.shape(n, &n.output[0])?;
    let zero = ctx.b.scalar(0.0);
    let mut grads = Vec::new();
    for i in [1, 2] {
        let name = n.input.get(i).cloned().ok_or_else(|| node_err(n, "Where needs three inputs"))?;
        if !ctx.wants_grad(&name) {
            continue;
        }
        let (a, b) = if i == 1 { (dy, zero.as_str()) } else { (zero.as_str(), dy) };
        let g = ctx.b.op("Where", &[&n.input[0], a, b], vec![]);
        let inp = ctx.shape(n, &name)?;
        grads.push((name, unbroadcast(n, ctx, &g, &out, &inp)?));
    }
    Ok(grads)
}
