//! `LayerNormalization` over any trailing axes (`axis` onwards, never the batch): scale and
//! shift are parameters ([`ParamKind::LnScale`], [`ParamKind::LnShift`]).
//!
//! With `xhat = (x - mean) / sqrt(var + eps)` over the normalised axes (`D` values) and
//! `g = dy * scale`: `dx = (g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps)`; per sample,
//! `dScale = sum(dy * xhat)` and `dShift = sum(dy)` over the axes before `axis`.

use super::{act_input, norm_axis, Grads, Params, Rule};
use crate::grad::{node_err, Ctx, GradError, ParamKind};
use crate::onnx::{Attrs, NodeProto};

/// The layer-normalisation rules.
pub(super) const RULES: &[Rule] = &[Rule {
    op: "LayerNormalization",
    params: Params::Inputs(&[(1, ParamKind::LnScale), (2, ParamKind::LnShift)]),
    shape: ln_shape,
    backward: ln_backward,
}];

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
    let b = &mut ctx.b;
    let mu = b.reduce("ReduceMean", &x, &norm_axes, true);
    let xc = b.sub(&x, &mu);
    let sq = b.mul(&xc, &xc);
    let var = b.reduce("ReduceMean", &sq, &norm_axes, true);
    let e = b.scalar(eps);
    let ve = b.add(&var, &e);
    let sd = b.op("Sqrt", &[&ve], vec![]);
    let rstd = b.op("Reciprocal", &[&sd], vec![]);
    let xhat = b.mul(&xc, &rstd);

    let scale = n.input[1].clone();
    let shift = n.input.get(2).filter(|s| !s.is_empty()).cloned();
    let sum_outer = |ctx: &mut Ctx, t: &str| -> String {
        if outer.is_empty() {
            t.to_string()
        } else {
            ctx.b.reduce("ReduceSum", t, &outer, false)
        }
    };
    if ctx.is_param(&scale) {
        let p = ctx.b.mul(dy, &xhat);
        let s = sum_outer(ctx, &p);
        let norm = ctx.b.sample_sq_norm(&s, rank + 1 - ax);
        ctx.add_norm(n, &scale, norm)?;
    }
    if let Some(sh) = shift.filter(|s| ctx.is_param(s)) {
        let s = sum_outer(ctx, dy);
        let norm = ctx.b.sample_sq_norm(&s, rank + 1 - ax);
        ctx.add_norm(n, &sh, norm)?;
    }
    if !ctx.wants_grad(&x) {
        return Ok(vec![]);
    }
    let b = &mut ctx.b;
    let g = b.mul(dy, &scale);
    let mg = b.reduce("ReduceMean", &g, &norm_axes, true);
    let gx = b.mul(&g, &xhat);
    let mgx = b.reduce("ReduceMean", &gx, &norm_axes, true);
    let t = b.mul(&xhat, &mgx);
    let c = b.sub(&g, &mg);
    let c = b.sub(&c, &t);
    Ok(vec![(x, b.mul(&c, &rstd))])
}
