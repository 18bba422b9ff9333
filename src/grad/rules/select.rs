//! Comparisons and `Where`: a mask computed from activations carries no gradient, and `Where`
//! passes the gradient to the branch it selected; elementwise `Max` and `Min` of two operands
//! pass it to the one selected, split evenly on ties (as `torch.maximum`). Exporters write
//! these for thresholded activations (the dynamo exporter's `softplus`:
//! `Where(x > 20, x, Softplus(x))`) and for masks in attention.

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
    Rule { op: "Max", params: Params::None, shape: binary, backward: extremum },
    Rule { op: "Min", params: Params::None, shape: binary, backward: extremum },
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

/// `Max(a, b)` / `Min(a, b)`: `dy` to the operand equal to the output, halved where both are.
fn extremum(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let out = ctx.shape(n, &n.output[0])?;
    let y = n.output[0].clone();
    let masks: Vec<String> = n.input.iter().map(|i| ctx.b.equal_mask(i, &y)).collect();
    let ties = ctx.b.add(&masks[0], &masks[1]);
    let share = ctx.b.op("Div", &[dy, &ties], vec![]);
    let mut grads = Vec::new();
    for (name, m) in n.input.clone().into_iter().zip(&masks) {
        if !ctx.wants_grad(&name) {
            continue;
        }
        let g = ctx.b.mul(&share, m);
        let inp = ctx.shape(n, &name)?;
        grads.push((name, unbroadcast(n, ctx, &g, &out, &inp)?));
    }
    Ok(grads)
}
