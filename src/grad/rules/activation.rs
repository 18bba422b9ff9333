//! Activations: elementwise non-linearities (`Relu`, `LeakyRelu`, `Clip`, `Sigmoid`,
//! `HardSigmoid`, `HardSwish`, `Tanh`, `Sqrt`, `Pow` by a constant exponent) and GELU in every
//! exported form: the opset-20 `Gelu` (exact or tanh), and its decompositions `x * 0.5 * (1 +
//! Erf(x / sqrt 2))` and `0.5 x (1 + Tanh(sqrt(2/pi) (x + 0.044715 x^3)))` through `Erf`, `Tanh`
//! and `Pow`; the smooth units of other model families (`Elu`, `Selu`, `Celu`, `Softplus`,
//! `Softsign`, `Mish` and its opset-17 decomposition `x * Tanh(Softplus(x))`) and the unary
//! arithmetic of hand-written layers (`Exp`, `Log`, `Neg`, `Abs`, `Reciprocal`).

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
    Rule { op: "Erf", params: Params::None, shape: same_shape, backward: erf },
    Rule { op: "Gelu", params: Params::None, shape: same_shape, backward: gelu },
    Rule { op: "Tanh", params: Params::None, shape: same_shape, backward: tanh },
    Rule { op: "Pow", params: Params::None, shape: pow_shape, backward: pow },
    Rule { op: "Sqrt", params: Params::None, shape: same_shape, backward: sqrt },
    Rule { op: "Elu", params: Params::None, shape: same_shape, backward: elu },
    Rule { op: "Selu", params: Params::None, shape: same_shape, backward: selu },
    Rule { op: "Celu", params: Params::None, shape: same_shape, backward: celu },
    Rule { op: "Softplus", params: Params::None, shape: same_shape, backward: softplus },
    Rule { op: "Softsign", params: Params::None, shape: same_shape, backward: softsign },
    Rule { op: "Mish", params: Params::None, shape: same_shape, backward: mish },
    Rule { op: "Exp", params: Params::None, shape: same_shape, backward: exp },
    Rule { op: "Log", params: Params::None, shape: same_shape, backward: log },
    Rule { op: "Neg", params: Params::None, shape: same_shape, backward: neg },
    Rule { op: "Abs", params: Params::None, shape: same_shape, backward: abs },
    Rule { op: "Reciprocal", params: Params::None, shape: same_shape, backward: reciprocal },
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
    // PyTorch's hardtanh/relu6 backward: gradient only strictly inside (min, max), which is
    // where the output is strictly inside too. Reading the output (as for Relu) leaves the
    // input unused, so ONNX Runtime fuses Conv(+BN)+Clip as in the plain forward.
    let x = &n.output[0];
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

/// `dx = dy * 2/sqrt(pi) * exp(-x^2)`.
fn erf(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = &n.input[0];
    let x2 = ctx.b.mul(x, x);
    let nx2 = ctx.b.op("Neg", &[&x2], vec![]);
    let e = ctx.b.op("Exp", &[&nx2], vec![]);
    let d = ctx.b.scale(&e, std::f32::consts::FRAC_2_SQRT_PI);
    Ok(single(n, ctx.b.mul(dy, &d)))
}

/// `Gelu` (opset 20): exact, `d = Phi(x) + x phi(x)`; `approximate="tanh"`, the derivative of
/// `0.5 x (1 + tanh(u))`, `u = sqrt(2/pi) (x + 0.044715 x^3)`.
fn gelu(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let approx = Attrs::of(n).string("approximate", "none")?;
    let half = ctx.b.scalar(0.5);
    let one = ctx.b.scalar(1.0);
    let d = match approx.as_str() {
        "none" => {
            let xs = ctx.b.scale(&x, std::f32::consts::FRAC_1_SQRT_2);
            let e = ctx.b.op("Erf", &[&xs], vec![]);
            let e1 = ctx.b.add(&e, &one);
            let cdf = ctx.b.mul(&e1, &half);
            let x2 = ctx.b.mul(&x, &x);
            let h = ctx.b.scale(&x2, -0.5);
            let ex = ctx.b.op("Exp", &[&h], vec![]);
            let pdf = ctx.b.scale(&ex, 1.0 / (2.0 * std::f32::consts::PI).sqrt());
            let xpdf = ctx.b.mul(&x, &pdf);
            ctx.b.add(&cdf, &xpdf)
        }
        "tanh" => {
            let k = (2.0 / std::f32::consts::PI).sqrt();
            let x2 = ctx.b.mul(&x, &x);
            let x3 = ctx.b.mul(&x2, &x);
            let c3 = ctx.b.scale(&x3, 0.044715);
            let inner = ctx.b.add(&x, &c3);
            let u = ctx.b.scale(&inner, k);
            let t = ctx.b.op("Tanh", &[&u], vec![]);
            let t1 = ctx.b.add(&t, &one);
            let left = ctx.b.mul(&t1, &half);
            let t2 = ctx.b.mul(&t, &t);
            let sech2 = ctx.b.sub(&one, &t2);
            let dx2 = ctx.b.scale(&x2, 3.0 * 0.044715);
            let du = ctx.b.add(&dx2, &one);
            let du = ctx.b.scale(&du, k);
            let r = ctx.b.mul(&sech2, &du);
            let r = ctx.b.mul(&r, &x);
            let right = ctx.b.mul(&r, &half);
            ctx.b.add(&left, &right)
        }
        other => return Err(node_err(n, format!("Gelu approximate='{other}' is not supported (none or tanh)"))),
    };
    Ok(single(n, ctx.b.mul(dy, &d)))
}

/// `dx = dy * (1 - y^2)`, from the output.
fn tanh(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let y = n.output[0].clone();
    let one = ctx.b.scalar(1.0);
    let y2 = ctx.b.mul(&y, &y);
    let d = ctx.b.sub(&one, &y2);
    Ok(single(n, ctx.b.mul(dy, &d)))
}

/// The constant exponent of a Pow on an activation.
fn exponent(n: &NodeProto, ctx: &Ctx) -> Result<f32, GradError> {
    let name = n.input.get(1).map(String::as_str).unwrap_or("");
    if ctx.is_act(name) {
        return Err(node_err(n, "Pow with a computed exponent is not supported (the exponent must be a constant)"));
    }
    let e = ctx.const_f32(n, name).or_else(|_| {
        ctx.const_i64(n, name).map(|v| {
            ndarray::ArrayD::from_shape_vec(ndarray::IxDyn(&[v.len()]), v.iter().map(|&x| x as f32).collect())
                .unwrap_or_else(|_| ndarray::ArrayD::zeros(ndarray::IxDyn(&[0])))
        })
    })?;
    match e.iter().collect::<Vec<_>>().as_slice() {
        [v] => Ok(**v),
        _ => Err(node_err(n, "Pow's exponent must be one value")),
    }
}

fn pow_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    exponent(n, ctx)?;
    same_shape(n, ctx)
}

/// `dx = dy * p x^(p-1)`.
fn pow(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let p = exponent(n, ctx)?;
    let x = n.input[0].clone();
    let d = if p == 2.0 {
        ctx.b.scale(&x, 2.0)
    } else if p == 1.0 {
        return Ok(single(n, dy.to_string()));
    } else {
        let e = ctx.b.scalar(p - 1.0);
        let xp = ctx.b.op("Pow", &[&x, &e], vec![]);
        ctx.b.scale(&xp, p)
    };
    Ok(single(n, ctx.b.mul(dy, &d)))
}

/// `dx = dy / (2 y)`, from the output.
fn sqrt(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let y2 = ctx.b.scale(&n.output[0], 2.0);
    Ok(single(n, ctx.b.op("Div", &[dy, &y2], vec![])))
}

/// `dy` where `x > 0`, `dy * neg` elsewhere (the negative branch of the ELU family, whose
/// derivative there is read from the output).
fn by_sign(n: &NodeProto, dy: &str, neg: &str, ctx: &mut Ctx) -> Grads {
    let zero = ctx.b.scalar(0.0);
    let m = ctx.b.op("Greater", &[&n.input[0], &zero], vec![]);
    let g = ctx.b.mul(dy, neg);
    single(n, ctx.b.op("Where", &[&m, dy, &g], vec![]))
}

/// `y = alpha (e^x - 1)` for `x <= 0`: `dy/dx = y + alpha` there, 1 above.
fn elu(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let alpha = Attrs::of(n).float("alpha", 1.0)?;
    let a = ctx.b.scalar(alpha);
    let d = ctx.b.add(&n.output[0], &a);
    Ok(by_sign(n, dy, &d, ctx))
}

/// `y = gamma x` above 0, `gamma alpha (e^x - 1)` below: `dy/dx = gamma` and `y + gamma alpha`.
fn selu(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let a = Attrs::of(n);
    let alpha = a.float("alpha", 1.673_263_2)?;
    let gamma = a.float("gamma", 1.050_701)?;
    let ga = ctx.b.scalar(gamma * alpha);
    let d = ctx.b.add(&n.output[0], &ga);
    let zero = ctx.b.scalar(0.0);
    let m = ctx.b.op("Greater", &[&n.input[0], &zero], vec![]);
    let pos = ctx.b.scale(dy, gamma);
    let neg = ctx.b.mul(dy, &d);
    Ok(single(n, ctx.b.op("Where", &[&m, &pos, &neg], vec![])))
}

/// `y = alpha (e^(x/alpha) - 1)` for `x <= 0`: `dy/dx = e^(x/alpha) = y / alpha + 1` there.
fn celu(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let alpha = Attrs::of(n).float("alpha", 1.0)?;
    if alpha == 0.0 {
        return Err(node_err(n, "Celu with alpha = 0"));
    }
    let one = ctx.b.scalar(1.0);
    let r = ctx.b.scale(&n.output[0], 1.0 / alpha);
    let d = ctx.b.add(&r, &one);
    Ok(by_sign(n, dy, &d, ctx))
}

/// `dy/dx = sigmoid(x)`.
fn softplus(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let s = ctx.b.op("Sigmoid", &[&n.input[0]], vec![]);
    Ok(single(n, ctx.b.mul(dy, &s)))
}

/// `y = x / (1 + |x|)`: `dy/dx = 1 / (1 + |x|)^2`.
fn softsign(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let one = ctx.b.scalar(1.0);
    let a = ctx.b.op("Abs", &[&n.input[0]], vec![]);
    let d = ctx.b.add(&a, &one);
    let d2 = ctx.b.mul(&d, &d);
    Ok(single(n, ctx.b.op("Div", &[dy, &d2], vec![])))
}

/// `y = x tanh(softplus(x))`: `dy/dx = t + x sigmoid(x) (1 - t^2)`, `t = tanh(softplus(x))`.
fn mish(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let sp = ctx.b.op("Softplus", &[&x], vec![]);
    let t = ctx.b.op("Tanh", &[&sp], vec![]);
    let s = ctx.b.op("Sigmoid", &[&x], vec![]);
    let one = ctx.b.scalar(1.0);
    let t2 = ctx.b.mul(&t, &t);
    let sech2 = ctx.b.sub(&one, &t2);
    let xs = ctx.b.mul(&x, &s);
    let r = ctx.b.mul(&xs, &sech2);
    let d = ctx.b.add(&t, &r);
    Ok(single(n, ctx.b.mul(dy, &d)))
}

/// `dy/dx = e^x`, the output.
fn exp(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    Ok(single(n, ctx.b.mul(dy, &n.output[0])))
}

/// `dy/dx = 1 / x`.
fn log(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    Ok(single(n, ctx.b.op("Div", &[dy, &n.input[0]], vec![])))
}

fn neg(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    Ok(single(n, ctx.b.op("Neg", &[dy], vec![])))
}

/// `dy/dx = sign(x)` (0 at 0, as in PyTorch).
fn abs(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let s = ctx.b.op("Sign", &[&n.input[0]], vec![]);
    Ok(single(n, ctx.b.mul(dy, &s)))
}

/// `y = 1 / x`: `dy/dx = -y^2`.
fn reciprocal(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let y = n.output[0].clone();
    let y2 = ctx.b.mul(&y, &y);
    let g = ctx.b.mul(dy, &y2);
    Ok(single(n, ctx.b.op("Neg", &[&g], vec![])))
}
