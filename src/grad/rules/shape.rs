//! Data movement: `Flatten`, `Reshape`, `Squeeze`, `Unsqueeze`, `Transpose`, `Concat`, `Pad`,
//! `Identity`, `Dropout` (inference: identity) and `Constant` (folded before the analysis).

use super::{act_input, norm_axis, same_shape, single, Grads, Params, Rule};
use crate::grad::{node_err, Ctx, GradError};
use crate::onnx::{attr, Attrs, NodeProto};

/// The data-movement rules.
pub(super) const RULES: &[Rule] = &[
    Rule { op: "Flatten", params: Params::None, shape: flatten_shape, backward: reshape_back },
    Rule { op: "Reshape", params: Params::None, shape: reshape_shape, backward: reshape_back },
    Rule { op: "Squeeze", params: Params::None, shape: squeeze_shape, backward: reshape_back },
    Rule { op: "Unsqueeze", params: Params::None, shape: unsqueeze_shape, backward: reshape_back },
    Rule { op: "Transpose", params: Params::None, shape: transpose_shape, backward: transpose },
    Rule { op: "Concat", params: Params::None, shape: concat_shape, backward: concat },
    Rule { op: "Pad", params: Params::None, shape: pad_shape, backward: pad },
    Rule { op: "Identity", params: Params::None, shape: same_shape, backward: identity },
    Rule { op: "Dropout", params: Params::None, shape: dropout_shape, backward: identity },
    Rule { op: "Constant", params: Params::None, shape: constant_shape, backward: constant },
];

fn squeeze_axes(n: &NodeProto, ctx: &Ctx) -> Result<Option<Vec<i64>>, GradError> {
    if let Some(v) = Attrs::of(n).ints("axes")? {
        return Ok(Some(v));
    }
    match n.input.get(1).filter(|s| !s.is_empty()) {
        Some(name) => Ok(Some(ctx.const_i64(n, name)?)),
        None => Ok(None),
    }
}

fn reshape_target(n: &NodeProto, ctx: &Ctx, x: &[usize]) -> Result<Vec<usize>, GradError> {
    let shape = ctx.const_i64(n, n.input.get(1).map(String::as_str).unwrap_or(""))?;
    let allowzero = Attrs::of(n).int("allowzero", 0)? != 0;
    if shape.is_empty() || !(shape[0] == -1 || (shape[0] == 0 && !allowzero)) {
        return Err(node_err(n, format!("target shape {shape:?} must keep the batch axis first (0 or -1)")));
    }
    let total: usize = x.iter().product();
    let mut out = Vec::new();
    let mut infer = None;
    for (i, &d) in shape.iter().enumerate().skip(1) {
        match d {
            0 if !allowzero => out.push(*x.get(i - 1).ok_or_else(|| node_err(n, "0 in shape beyond input rank"))?),
            -1 => {
                if infer.is_some() || shape[0] == -1 {
                    return Err(node_err(n, format!("shape {shape:?} leaves the batch size ambiguous")));
                }
                infer = Some(out.len());
                out.push(1);
            }
            d if d > 0 => out.push(d as usize),
            _ => return Err(node_err(n, format!("bad target shape {shape:?}"))),
        }
    }
    let known: usize = out.iter().product();
    if let Some(i) = infer {
        if known == 0 || !total.is_multiple_of(known) {
            return Err(node_err(n, format!("cannot reshape {x:?} to {shape:?}")));
        }
        out[i] = total / known;
    } else if known != total {
        return Err(node_err(n, format!("cannot reshape per-sample {x:?} to {shape:?}")));
    }
    Ok(out)
}

fn pads_of(n: &NodeProto, ctx: &Ctx, rank: usize) -> Result<Vec<i64>, GradError> {
    let a = Attrs::of(n);
    if a.string("mode", "constant")? != "constant" {
        return Err(node_err(n, "only constant padding is supported"));
    }
    let raw = ctx.const_i64(n, n.input.get(1).map(String::as_str).unwrap_or(""))?;
    let axes: Vec<usize> = match n.input.get(3).filter(|s| !s.is_empty()) {
        Some(name) => ctx.const_i64(n, name)?.iter().map(|&x| norm_axis(n, x, rank)).collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    if raw.len() != 2 * axes.len() {
        return Err(node_err(n, "pads length does not match the axes"));
    }
    let mut pads = vec![0i64; 2 * rank];
    for (j, &ax) in axes.iter().enumerate() {
        pads[ax] = raw[j];
        pads[rank + ax] = raw[axes.len() + j];
    }
    if pads.iter().any(|&p| p < 0) || pads[0] != 0 || pads[rank] != 0 {
        return Err(node_err(n, format!("pads {pads:?} must be non-negative and leave the batch axis alone")));
    }
    Ok(pads)
}

fn flatten_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let a = Attrs::of(n);
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    if a.int("axis", 1)? != 1 {
        return Err(node_err(n, "Flatten must use axis=1 (the batch stays separate)"));
    }
    Ok(vec![x.iter().product()])
}

fn reshape_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    reshape_target(n, ctx, &x)
}

fn squeeze_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let rank = x.len() + 1;
    let axes: Vec<usize> = match squeeze_axes(n, ctx)? {
        Some(v) => v.iter().map(|&v| norm_axis(n, v, rank)).collect::<Result<_, _>>()?,
        None => (1..rank).filter(|&i| x[i - 1] == 1).collect(),
    };
    if axes.contains(&0) || axes.iter().any(|&i| x[i - 1] != 1) {
        return Err(node_err(n, "Squeeze must remove size-1 axes other than the batch"));
    }
    Ok(x.iter().enumerate().filter(|(i, _)| !axes.contains(&(i + 1))).map(|(_, &d)| d).collect())
}

fn unsqueeze_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let axes = squeeze_axes(n, ctx)?.ok_or_else(|| node_err(n, "Unsqueeze needs axes"))?;
    let rank = x.len() + 1 + axes.len();
    let mut ax: Vec<usize> = axes.iter().map(|&v| norm_axis(n, v, rank)).collect::<Result<_, _>>()?;
    ax.sort_unstable();
    if ax.contains(&0) {
        return Err(node_err(n, "Unsqueeze at axis 0 would move the batch axis"));
    }
    let mut full = vec![0usize];
    full.extend(&x);
    for &i in &ax {
        full.insert(i, 1);
    }
    Ok(full[1..].to_vec())
}

fn transpose_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let a = Attrs::of(n);
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let rank = x.len() + 1;
    let perm = a.ints("perm")?.unwrap_or_else(|| (0..rank as i64).rev().collect());
    let ok = perm.len() == rank && perm[0] == 0 && {
        let mut p = perm.clone();
        p.sort_unstable();
        p == (0..rank as i64).collect::<Vec<_>>()
    };
    if !ok {
        return Err(node_err(n, format!("perm {perm:?} must be a permutation keeping the batch axis first")));
    }
    Ok(perm[1..].iter().map(|&p| x[p as usize - 1]).collect())
}

fn concat_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let a = Attrs::of(n);
    let shapes: Vec<Vec<usize>> =
        (0..n.input.len()).map(|i| ctx.shape(n, act_input(n, ctx, i)?)).collect::<Result<_, _>>()?;
    let rank = shapes[0].len() + 1;
    let ax = norm_axis(n, a.int("axis", 0)?, rank)?;
    if ax == 0 {
        return Err(node_err(n, "Concat along the batch axis mixes samples"));
    }
    let mut o = shapes[0].clone();
    o[ax - 1] = shapes.iter().map(|s| s[ax - 1]).sum();
    Ok(o)
}

fn pad_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let rank = x.len() + 1;
    let pads = pads_of(n, ctx, rank)?;
    Ok((1..rank).map(|i| x[i - 1] + (pads[i] + pads[rank + i]) as usize).collect())
}

fn dropout_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    if n.output.len() > 1 && n.output[1..].iter().any(|o| !o.is_empty()) {
        return Err(node_err(n, "Dropout's mask output is not supported (inference models do not use it)"));
    }
    ctx.shape(n, act_input(n, ctx, 0)?)
}

fn reshape_back(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let xs = ctx.shape(n, &x)?;
    Ok(single(n, ctx.b.reshape_batch(dy, &xs)))
}

fn transpose(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let xs = ctx.shape(n, &x)?;
    let rank = xs.len() + 1;
    let perm = Attrs::of(n).ints("perm")?.unwrap_or_else(|| (0..rank as i64).rev().collect());
    let mut inv = vec![0i64; rank];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    Ok(single(n, ctx.b.transpose(dy, &inv)))
}

fn pad(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let xs = ctx.shape(n, &x)?;
    let rank = xs.len() + 1;
    let pads = pads_of(n, ctx, rank)?;
    let starts: Vec<i64> = (1..rank).map(|i| pads[i]).collect();
    let ends: Vec<i64> = (1..rank).map(|i| pads[i] + xs[i - 1] as i64).collect();
    let axes: Vec<i64> = (1..rank as i64).collect();
    Ok(single(n, ctx.b.slice(dy, &starts, &ends, &axes)))
}

fn concat(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let rank = ctx.shape(n, &x)?.len() + 1;
    let ax = norm_axis(n, Attrs::of(n).int("axis", 0)?, rank)?;
    let sizes: Vec<i64> =
        n.input.iter().map(|i| ctx.shape(n, i).map(|s| s[ax - 1] as i64)).collect::<Result<_, _>>()?;
    let split = ctx.b.const_i64("split", &sizes);
    let outs: Vec<String> = n.input.iter().map(|_| ctx.b.fresh("split")).collect();
    let out_refs: Vec<&str> = outs.iter().map(String::as_str).collect();
    let name = format!("{}/node", outs[0]);
    ctx.b.nodes.push(crate::onnx::make_node(
        "Split",
        &name,
        &[dy, &split],
        &out_refs,
        vec![attr::int("axis", ax as i64)],
    ));
    Ok(n.input.iter().cloned().zip(outs).filter(|(i, _)| ctx.wants_grad(i)).collect())
}

fn identity(n: &NodeProto, dy: &str, _: &mut Ctx) -> Result<Grads, GradError> {
    Ok(single(n, dy.to_string()))
}

/// Constant nodes never reach the rules: the compiler reads their values up front.
fn constant_shape(n: &NodeProto, _: &Ctx) -> Result<Vec<usize>, GradError> {
    Err(node_err(n, "internal: a Constant node is folded before the analysis"))
}

fn constant(n: &NodeProto, _: &str, _: &mut Ctx) -> Result<Grads, GradError> {
    Err(node_err(n, "internal: a Constant node is folded before the analysis"))
}
