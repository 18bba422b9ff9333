//! Linear layers: `Gemm` (weight B and bias C) and `MatMul` by a constant weight (its bias,
//! when the exporter writes one, is the `Add` after it: see `arith`). A `MatMul` of two
//! activations is attention's (`attention`).

use super::{act_input, single, Grads, Params, Rule};
use crate::grad::{node_err, Ctx, GradError, ParamKind};
use crate::onnx::{attr, Attrs, NodeProto};

/// The linear-layer rules.
pub(super) const RULES: &[Rule] = &[
    Rule {
        op: "Gemm",
        params: Params::Inputs(&[(1, ParamKind::Weight), (2, ParamKind::Bias)]),
        shape: gemm_shape,
        backward: gemm,
    },
    Rule { op: "MatMul", params: Params::Inputs(&[(1, ParamKind::Weight)]), shape: matmul_shape, backward: matmul },
];

fn gemm_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let a = Attrs::of(n);
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    gemm_shape_c(n, ctx)?;
    if a.int("transA", 0)? != 0 {
        return Err(node_err(n, "transA=1 puts the batch on the second axis of A; only transA=0 is supported"));
    }
    let w = ctx.const_dims(n, n.input.get(1).map(String::as_str).unwrap_or(""))?;
    let trans_b = a.int("transB", 0)? != 0;
    if x.len() != 1 || w.len() != 2 {
        return Err(node_err(n, "Gemm needs A [N, K] and a constant 2-D B"));
    }
    let (k, m) = if trans_b { (w[1], w[0]) } else { (w[0], w[1]) };
    if k != x[0] {
        return Err(node_err(n, format!("A has {} columns, B expects {k}", x[0])));
    }
    Ok(vec![m])
}

fn matmul_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    if ctx.is_act(&n.input[1]) {
        return super::attention::matmul2_shape(n, ctx);
    }
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let w = ctx.const_dims(n, &n.input[1])?;
    if w.len() != 2 || x.is_empty() || *x.last().unwrap_or(&0) != w[0] {
        return Err(node_err(n, format!("MatMul shapes [N, {x:?}] x {w:?} are not supported")));
    }
    let mut o = x.clone();
    let last = o.len() - 1;
    o[last] = w[1];
    Ok(o)
}

fn gemm_shape_c(n: &NodeProto, ctx: &Ctx) -> Result<(), GradError> {
    match n.input.get(2) {
        Some(c) if ctx.is_act(c) => Err(node_err(n, "Gemm's C must be a constant (a bias)")),
        _ => Ok(()),
    }
}

fn gemm(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let a = Attrs::of(n);
    let alpha = a.float("alpha", 1.0)?;
    let beta = a.float("beta", 1.0)?;
    let trans_b = a.int("transB", 0)? != 0;
    let wname = n.input[1].clone();
    // ||dW||^2 = alpha^2 ||x||^2 ||dy||^2 per sample.
    let mut ssd = None;
    if ctx.is_param(&wname) {
        let ssx = ctx.b.sample_sq_norm(&x, 2);
        let sd = ctx.b.sample_sq_norm(dy, 2);
        let prod = ctx.b.mul(&ssx, &sd);
        let wn = ctx.b.scale(&prod, alpha * alpha);
        ctx.add_norm(n, &wname, wn)?;
        ssd = Some(sd);
    }
    if let Some(c) = n.input.get(2).filter(|s| ctx.is_param(s)).cloned() {
        let numel: usize = ctx.const_dims(n, &c)?.iter().product();
        let m = ctx.shapes.get(&n.output[0]).map(|s| s[0]).unwrap_or(0);
        let cn = if numel == m {
            let ssd = match ssd {
                Some(s) => s,
                None => ctx.b.sample_sq_norm(dy, 2),
            };
            ctx.b.scale(&ssd, beta * beta)
        } else if numel == 1 {
            let s = ctx.b.reduce("ReduceSum", dy, &[1], false);
            let sq = ctx.b.mul(&s, &s);
            ctx.b.scale(&sq, beta * beta)
        } else {
            return Err(node_err(n, "Gemm bias C must have M values or one"));
        };
        ctx.add_norm(n, &c, cn)?;
    }
    if !ctx.wants_grad(&x) {
        return Ok(vec![]);
    }
    let g = ctx.b.op(
        "Gemm",
        &[dy, &wname],
        vec![attr::float("alpha", alpha), attr::int("transB", if trans_b { 0 } else { 1 })],
    );
    Ok(single(n, g))
}

fn matmul(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    if ctx.is_act(&n.input[1]) {
        return super::attention::matmul2(n, dy, ctx);
    }
    let x = n.input[0].clone();
    let xs = ctx.shape(n, &x)?;
    let wname = n.input[1].clone();
    let w = ctx.const_f32(n, &wname)?;
    let (k, m) = (w.shape()[0], w.shape()[1]);
    if ctx.is_param(&wname) {
        let wn = if xs.len() == 1 {
            let ssx = ctx.b.sample_sq_norm(&x, 2);
            let ssd = ctx.b.sample_sq_norm(dy, 2);
            ctx.b.mul(&ssx, &ssd)
        } else {
            // Per sample, dW = x^T dy over the sequence axes.
            let t: usize = xs[..xs.len() - 1].iter().product();
            let xr = ctx.b.reshape_to(&x, &[-1, t as i64, k as i64]);
            let dr = ctx.b.reshape_to(dy, &[-1, t as i64, m as i64]);
            let xt = ctx.b.transpose(&xr, &[0, 2, 1]);
            let gm = ctx.b.op("MatMul", &[&xt, &dr], vec![]);
            // Rows first: one float32 reduction over k*m terms (800,000 in EfficientFormer-L1's
            // MLP) loses ~1e-3 relative in ONNX Runtime.
            let rows = ctx.b.reduce("ReduceSumSquare", &gm, &[2], false);
            ctx.b.reduce("ReduceSum", &rows, &[1], false)
        };
        ctx.add_norm(n, &wname, wn)?;
    }
    if !ctx.wants_grad(&x) {
        return Ok(vec![]);
    }
    let wt: Vec<f32> = w.t().iter().copied().collect();
    let wt = ctx.b.const_f32("matmul_wt", &[m, k], &wt);
    Ok(single(n, ctx.b.op("MatMul", &[dy, &wt], vec![])))
}
