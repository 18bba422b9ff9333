//! Elementwise math functions on activations: the trigonometric and hyperbolic functions and
//! their inverses (Fourier-feature and periodic layers), and the piecewise-constant `Floor`,
//! `Ceil`, `Round` and `Sign` (hand-written quantization and binarisation), whose gradient is
//! zero wherever it exists, as PyTorch's autograd takes it. On constants these fold instead
//! (`fold_math.rs`).

use super::{same_shape, single, Grads, Params, Rule};
use crate::grad::{Ctx, GradError};
use crate::onnx::NodeProto;

/// The math-function rules.
pub(super) const RULES: &[Rule] = &[
    Rule { op: "Sin", params: Params::None, shape: same_shape, backward: sin },
    Rule { op: "Cos", params: Params::None, shape: same_shape, backward: cos },
    Rule { op: "Tan", params: Params::None, shape: same_shape, backward: tan },
    Rule { op: "Asin", params: Params::None, shape: same_shape, backward: asin },
    Rule { op: "Acos", params: Params::None, shape: same_shape, backward: acos },
    Rule { op: "Atan", params: Params::None, shape: same_shape, backward: atan },
    Rule { op: "Sinh", params: Params::None, shape: same_shape, backward: sinh },
    Rule { op: "Cosh", params: Params::None, shape: same_shape, backward: cosh },
    Rule { op: "Asinh", params: Params::None, shape: same_shape, backward: asinh },
    Rule { op: "Acosh", params: Params::None, shape: same_shape, backward: acosh },
    Rule { op: "Atanh", params: Params::None, shape: same_shape, backward: atanh },
    Rule { op: "Floor", params: Params::None, shape: same_shape, backward: piecewise_constant },
    Rule { op: "Ceil", params: Params::None, shape: same_shape, backward: piecewise_constant },
    Rule { op: "Round", params: Params::None, shape: same_shape, backward: piecewise_constant },
    Rule { op: "Sign", params: Params::None, shape: same_shape, backward: piecewise_constant },
];

/// `dx = dy * f(x)` for the unary function `op` of the input.
fn times_fn_of_x(n: &NodeProto, dy: &str, op: &str, ctx: &mut Ctx) -> Grads {
    let d = ctx.b.op(op, &[&n.input[0]], vec![]);
    single(n, ctx.b.mul(dy, &d))
}

/// `c - x^2` (`minus`) or `x^2 + c`: the inverse functions' denominators.
fn quadratic(n: &NodeProto, minus: bool, c: f32, ctx: &mut Ctx) -> String {
    let x = n.input[0].clone();
    let x2 = ctx.b.mul(&x, &x);
    let cc = ctx.b.scalar(c);
    if minus {
        ctx.b.sub(&cc, &x2)
    } else {
        ctx.b.add(&x2, &cc)
    }
}

/// `dx = dy / d`, negated when `negate`.
fn over(n: &NodeProto, dy: &str, d: &str, negate: bool, ctx: &mut Ctx) -> Grads {
    let g = ctx.b.op("Div", &[dy, d], vec![]);
    single(n, if negate { ctx.b.op("Neg", &[&g], vec![]) } else { g })
}

/// `dx = dy / sqrt(c - x^2)` or `dy / sqrt(x^2 + c)` (the inverse sine, cosine and hyperbolic
/// functions), negated when `negate`.
fn over_sqrt(n: &NodeProto, dy: &str, minus: bool, c: f32, negate: bool, ctx: &mut Ctx) -> Grads {
    let q = quadratic(n, minus, c, ctx);
    let root = ctx.b.op("Sqrt", &[&q], vec![]);
    over(n, dy, &root, negate, ctx)
}

/// `dy/dx = cos x`.
fn sin(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    Ok(times_fn_of_x(n, dy, "Cos", ctx))
}

/// `dy/dx = -sin x`.
fn cos(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let s = ctx.b.op("Sin", &[&n.input[0]], vec![]);
    let g = ctx.b.mul(dy, &s);
    Ok(single(n, ctx.b.op("Neg", &[&g], vec![])))
}

/// `dy/dx = 1 + y^2`, from the output.
fn tan(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let y = n.output[0].clone();
    let y2 = ctx.b.mul(&y, &y);
    let one = ctx.b.scalar(1.0);
    let d = ctx.b.add(&y2, &one);
    Ok(single(n, ctx.b.mul(dy, &d)))
}

/// `dy/dx = 1 / sqrt(1 - x^2)`.
fn asin(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    Ok(over_sqrt(n, dy, true, 1.0, false, ctx))
}

/// `dy/dx = -1 / sqrt(1 - x^2)`.
fn acos(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    Ok(over_sqrt(n, dy, true, 1.0, true, ctx))
}

/// `dy/dx = 1 / (1 + x^2)`.
fn atan(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let d = quadratic(n, false, 1.0, ctx);
    Ok(over(n, dy, &d, false, ctx))
}

/// `dy/dx = cosh x`.
fn sinh(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    Ok(times_fn_of_x(n, dy, "Cosh", ctx))
}

/// `dy/dx = sinh x`.
fn cosh(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    Ok(times_fn_of_x(n, dy, "Sinh", ctx))
}

/// `dy/dx = 1 / sqrt(x^2 + 1)`.
fn asinh(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    Ok(over_sqrt(n, dy, false, 1.0, false, ctx))
}

/// `dy/dx = 1 / sqrt(x^2 - 1)`.
fn acosh(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    Ok(over_sqrt(n, dy, false, -1.0, false, ctx))
}

/// `dy/dx = 1 / (1 - x^2)`.
fn atanh(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let d = quadratic(n, true, 1.0, ctx);
    Ok(over(n, dy, &d, false, ctx))
}

/// `Floor`, `Ceil`, `Round`, `Sign`: no gradient reaches the input (zero almost everywhere,
/// as PyTorch's autograd gives it; a straight-through estimator is a training-time choice the
/// exported graph does not record).
fn piecewise_constant(_: &NodeProto, _: &str, _: &mut Ctx) -> Result<Grads, GradError> {
    Ok(Vec::new())
}
