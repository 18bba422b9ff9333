//! Per-operator shape rules and backward rules.
//!
//! Activations always carry the batch as their leading axis; shapes here are per sample
//! (without that axis). Every backward rule works on whole batches and never mixes samples,
//! so the norms it forms are per-sample.

use super::{node_err, ConvNorm, Ctx, GradError, Loss};
use crate::onnx::{attr, Attrs, NodeProto};

type Grads = Vec<(String, String)>;

fn act_input<'a>(n: &'a NodeProto, ctx: &Ctx, i: usize) -> Result<&'a str, GradError> {
    let s = n.input.get(i).map(String::as_str).unwrap_or("");
    if s.is_empty() || !ctx.is_act(s) {
        return Err(node_err(n, format!("input {i} must be an activation (a tensor computed from the image)")));
    }
    Ok(s)
}

fn norm_axis(n: &NodeProto, axis: i64, rank: usize) -> Result<usize, GradError> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(node_err(n, format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// 2-D convolution / pooling geometry.
#[derive(Clone, Copy, Debug)]
struct Geom {
    k: [usize; 2],
    s: [usize; 2],
    d: [usize; 2],
    /// top, left, bottom, right
    pads: [usize; 4],
    inp: [usize; 2],
    out: [usize; 2],
}

impl Geom {
    fn keff(&self, i: usize) -> usize {
        (self.k[i] - 1) * self.d[i] + 1
    }
}

fn geom(n: &NodeProto, in_hw: [usize; 2], kernel: [usize; 2], ceil: bool) -> Result<Geom, GradError> {
    let a = Attrs::of(n);
    let two = |name: &str, def: usize| -> Result<[usize; 2], GradError> {
        match a.ints(name)? {
            None => Ok([def, def]),
            Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 1) => Ok([v[0] as usize, v[1] as usize]),
            Some(v) => Err(node_err(n, format!("{name} {v:?} must be two positive numbers"))),
        }
    };
    let s = two("strides", 1)?;
    let d = two("dilations", 1)?;
    let auto_pad = a.string("auto_pad", "NOTSET")?;
    let mut g = Geom { k: kernel, s, d, pads: [0; 4], inp: in_hw, out: [0; 2] };
    match auto_pad.as_str() {
        "NOTSET" => {
            if let Some(p) = a.ints("pads")? {
                if p.len() != 4 || p.iter().any(|&v| v < 0) {
                    return Err(node_err(n, format!("pads {p:?} must be four non-negative numbers")));
                }
                g.pads = [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize];
            }
        }
        "VALID" => {}
        "SAME_UPPER" | "SAME_LOWER" => {
            for i in 0..2 {
                let out = in_hw[i].div_ceil(s[i]);
                let total = ((out - 1) * s[i] + g.keff(i)).saturating_sub(in_hw[i]);
                let (lo, hi) = if auto_pad == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                };
                g.pads[i] = lo;
                g.pads[i + 2] = hi;
            }
        }
        other => return Err(node_err(n, format!("auto_pad '{other}' is not supported"))),
    }
    for i in 0..2 {
        let span = in_hw[i] + g.pads[i] + g.pads[i + 2];
        if span < g.keff(i) {
            return Err(node_err(n, "kernel larger than the padded input"));
        }
        let num = span - g.keff(i);
        let mut o = if ceil { num.div_ceil(s[i]) + 1 } else { num / s[i] + 1 };
        // ONNX Runtime (like PyTorch) drops a last window that would start in the end padding.
        if ceil && (o - 1) * s[i] >= in_hw[i] + g.pads[i] {
            o -= 1;
        }
        g.out[i] = o;
    }
    Ok(g)
}

fn conv_geom(n: &NodeProto, ctx: &Ctx) -> Result<(Geom, usize, usize, usize), GradError> {
    let x = ctx.shape(n, &n.input[0])?;
    let w = ctx.const_dims(n, n.input.get(1).map(String::as_str).unwrap_or(""))?;
    if x.len() != 3 || w.len() != 4 {
        return Err(node_err(n, "only 2-D convolutions (NCHW input, 4-D weight) are supported"));
    }
    let group = Attrs::of(n).int("group", 1)?;
    if group < 1 || x[0] % group as usize != 0 || w[0] % group as usize != 0 || w[1] * group as usize != x[0] {
        return Err(node_err(n, format!("group {group} does not fit input channels {} and weight {w:?}", x[0])));
    }
    let g = geom(n, [x[1], x[2]], [w[2], w[3]], false)?;
    Ok((g, group as usize, x[0], w[0]))
}

fn pool_geom(n: &NodeProto, ctx: &Ctx) -> Result<(Geom, usize), GradError> {
    let x = ctx.shape(n, &n.input[0])?;
    let a = Attrs::of(n);
    let k = a.ints("kernel_shape")?.unwrap_or_default();
    if x.len() != 3 || k.len() != 2 || k.iter().any(|&v| v < 1) {
        return Err(node_err(n, "only 2-D pooling (NCHW input, two kernel dims) is supported"));
    }
    let ceil = a.int("ceil_mode", 0)? != 0;
    let g = geom(n, [x[1], x[2]], [k[0] as usize, k[1] as usize], ceil)?;
    Ok((g, x[0]))
}

fn broadcast(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    // Full shapes with the batch as 0 (a placeholder that broadcasts with nothing but itself).
    let mut full: Vec<Vec<usize>> = Vec::new();
    let mut act_rank = 0;
    for name in n.input.iter().take(2) {
        if let Some(s) = ctx.shapes.get(name) {
            let mut f = vec![0];
            f.extend(s);
            act_rank = act_rank.max(f.len());
            full.push(f);
        } else {
            full.push(ctx.const_dims(n, name)?);
        }
    }
    let rank = full.iter().map(Vec::len).max().unwrap_or(0);
    if rank != act_rank {
        return Err(node_err(n, "a constant operand has more axes than the activation; the batch axis would move"));
    }
    let mut out = vec![1usize; rank];
    for f in &full {
        let off = rank - f.len();
        for (i, &d) in f.iter().enumerate() {
            let o = &mut out[off + i];
            if i + off == 0 && d != 0 && d != 1 {
                return Err(node_err(n, "a constant operand spans the batch axis"));
            }
            if d == 0 || *o == 0 {
                *o = 0;
            } else if *o == 1 {
                *o = d;
            } else if d != 1 && d != *o {
                return Err(node_err(n, format!("shapes do not broadcast: {full:?}")));
            }
        }
    }
    Ok(out[1..].to_vec())
}

fn reduce_axes(n: &NodeProto, ctx: &Ctx, rank: usize) -> Result<Vec<usize>, GradError> {
    let a = Attrs::of(n);
    let raw = match a.ints("axes")? {
        Some(v) => Some(v),
        None => match n.input.get(1).filter(|s| !s.is_empty()) {
            Some(name) => Some(ctx.const_i64(n, name)?),
            None => None,
        },
    };
    let axes: Vec<usize> = match raw {
        Some(v) if !v.is_empty() => v.iter().map(|&x| norm_axis(n, x, rank)).collect::<Result<_, _>>()?,
        _ => {
            if a.int("noop_with_empty_axes", 0)? != 0 {
                vec![]
            } else {
                (0..rank).collect()
            }
        }
    };
    if axes.contains(&0) {
        return Err(node_err(n, "reducing over the batch axis mixes samples"));
    }
    Ok(axes)
}

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

/// Per-sample output shape of a node.
pub(super) fn forward_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let a = Attrs::of(n);
    let op = n.op_type.as_str();
    match op {
        "Conv" => {
            act_input(n, ctx, 0)?;
            let (g, _, _, cout) = conv_geom(n, ctx)?;
            Ok(vec![cout, g.out[0], g.out[1]])
        }
        "BatchNormalization" => {
            let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
            if a.int("training_mode", 0)? != 0 || n.output.len() > 1 {
                return Err(node_err(n, "BatchNormalization must be in inference form (training_mode=0, one output)"));
            }
            for i in 1..5 {
                let d = ctx.const_dims(n, n.input.get(i).map(String::as_str).unwrap_or(""))?;
                if d.iter().product::<usize>() != x[0] {
                    return Err(node_err(n, "scale/bias/mean/var must have one value per channel"));
                }
            }
            Ok(x)
        }
        "Relu" | "LeakyRelu" | "Sigmoid" | "HardSigmoid" | "HardSwish" | "Identity" | "Clip" => {
            Ok(ctx.shape(n, act_input(n, ctx, 0)?)?)
        }
        "Dropout" => {
            if n.output.len() > 1 && n.output[1..].iter().any(|o| !o.is_empty()) {
                return Err(node_err(n, "Dropout's mask output is not supported (inference models do not use it)"));
            }
            Ok(ctx.shape(n, act_input(n, ctx, 0)?)?)
        }
        "Add" | "Sub" | "Mul" => broadcast(n, ctx),
        "Div" => {
            act_input(n, ctx, 0)?;
            if ctx.is_act(&n.input[1]) {
                return Err(node_err(n, "Div is supported by a constant only"));
            }
            broadcast(n, ctx)
        }
        "MaxPool" => {
            if n.output.len() > 1 && n.output[1..].iter().any(|o| !o.is_empty()) {
                return Err(node_err(n, "MaxPool's Indices output is not supported"));
            }
            let (g, c) = pool_geom(n, ctx)?;
            Ok(vec![c, g.out[0], g.out[1]])
        }
        "AveragePool" => {
            let (g, c) = pool_geom(n, ctx)?;
            if g.d != [1, 1] {
                return Err(node_err(n, "dilated AveragePool is not supported"));
            }
            Ok(vec![c, g.out[0], g.out[1]])
        }
        "GlobalAveragePool" => {
            let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
            let mut o = vec![x[0]];
            o.extend(std::iter::repeat_n(1, x.len() - 1));
            Ok(o)
        }
        "ReduceMean" => {
            let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
            let axes = reduce_axes(n, ctx, x.len() + 1)?;
            let keep = a.int("keepdims", 1)? != 0;
            let mut o = Vec::new();
            for (i, &d) in x.iter().enumerate() {
                if axes.contains(&(i + 1)) {
                    if keep {
                        o.push(1);
                    }
                } else {
                    o.push(d);
                }
            }
            Ok(o)
        }
        "Flatten" => {
            let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
            if a.int("axis", 1)? != 1 {
                return Err(node_err(n, "Flatten must use axis=1 (the batch stays separate)"));
            }
            Ok(vec![x.iter().product()])
        }
        "Reshape" => {
            let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
            reshape_target(n, ctx, &x)
        }
        "Squeeze" => {
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
        "Unsqueeze" => {
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
        "Transpose" => {
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
        "Concat" => {
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
        "Gemm" => {
            let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
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
        "MatMul" => {
            let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
            if ctx.is_act(&n.input[1]) {
                return Err(node_err(
                    n,
                    "MatMul of two activations is not supported (the second operand must be a weight)",
                ));
            }
            let w = ctx.const_dims(n, &n.input[1])?;
            if w.len() != 2 || x.is_empty() || *x.last().unwrap_or(&0) != w[0] {
                return Err(node_err(n, format!("MatMul shapes [N, {x:?}] x {w:?} are not supported")));
            }
            let mut o = x.clone();
            let last = o.len() - 1;
            o[last] = w[1];
            Ok(o)
        }
        "Pad" => {
            let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
            let rank = x.len() + 1;
            let pads = pads_of(n, ctx, rank)?;
            Ok((1..rank).map(|i| x[i - 1] + (pads[i] + pads[rank + i]) as usize).collect())
        }
        _ => Err(GradError::Unsupported { op: n.op_type.clone(), node: n.name.clone() }),
    }
}

/// `dJ/dz` for the chosen loss, `[N, C]`.
pub(super) fn loss_seed(ctx: &mut Ctx, z: &str, label: &[f32], loss: Loss) -> Result<String, GradError> {
    let c = label.len();
    let b = &mut ctx.b;
    Ok(match loss {
        Loss::BceLogits => {
            let s = b.op("Sigmoid", &[z], vec![]);
            let y = b.const_f32("label", &[c], label);
            let d = b.sub(&s, &y);
            b.scale(&d, 1.0 / c as f32)
        }
        Loss::BceSoftmax => {
            let p = b.op("Softmax", &[z], vec![attr::int("axis", 1)]);
            let one = b.scalar(1.0);
            let om = b.sub(&one, &p);
            let eps = b.scalar(1e-12);
            let den = b.op("Max", &[&om, &eps], vec![]);
            let ratio = b.op("Div", &[&p, &den], vec![]);
            let not_y: Vec<f32> = label.iter().map(|v| 1.0 - v).collect();
            let ny = b.const_f32("not_label", &[c], &not_y);
            let y = b.const_f32("label", &[c], label);
            let t = b.mul(&ratio, &ny);
            let u = b.sub(&y, &t);
            // p_i * dJ/dp_i
            let pg = b.scale(&u, -1.0 / c as f32);
            let s = b.reduce("ReduceSum", &pg, &[1], true);
            let ps = b.mul(&p, &s);
            b.sub(&pg, &ps)
        }
        Loss::Odin => {
            let t = super::outputs::TEMPERATURE;
            let zt = b.op("Div", &[z, t], vec![]);
            let p = b.op("Softmax", &[&zt], vec![attr::int("axis", 1)]);
            let am = b.op("ArgMax", &[z], vec![attr::int("axis", 1), attr::int("keepdims", 1)]);
            let range = b.const_i64("classes", &(0..c as i64).collect::<Vec<_>>());
            let eq = b.op("Equal", &[&am, &range], vec![]);
            let oh = b.op("Cast", &[&eq], vec![attr::int("to", crate::onnx::data_type::FLOAT as i64)]);
            let d = b.sub(&p, &oh);
            b.op("Div", &[&d, t], vec![])
        }
    })
}

/// Sums `g` (shaped like the node output, per sample `out`) down to an input of per-sample shape `inp`.
fn unbroadcast(n: &NodeProto, ctx: &mut Ctx, g: &str, out: &[usize], inp: &[usize]) -> Result<String, GradError> {
    if out == inp {
        return Ok(g.to_string());
    }
    if out.len() != inp.len() {
        return Err(node_err(n, "activation operands of different rank are not supported"));
    }
    let axes: Vec<i64> = (0..out.len()).filter(|&i| inp[i] == 1 && out[i] != 1).map(|i| i as i64 + 1).collect();
    Ok(ctx.b.reduce("ReduceSum", g, &axes, true))
}

/// Per-sample squared norm of a bias-like parameter's gradient `g` (shaped like the output).
fn param_norm(n: &NodeProto, ctx: &mut Ctx, g: &str, out: &[usize], param: &str) -> Result<(), GradError> {
    let pd = ctx.const_dims(n, param)?;
    let rank = out.len() + 1;
    // Axes (of the output) along which the parameter is broadcast: its gradient sums over them.
    let axes: Vec<i64> = (1..rank)
        .filter(|&ax| {
            let off = rank as i64 - pd.len() as i64;
            let pi = ax as i64 - off;
            pi < 0 || pd[pi as usize] == 1
        })
        .map(|a| a as i64)
        .collect();
    let reduced = if axes.is_empty() { g.to_string() } else { ctx.b.reduce("ReduceSum", g, &axes, true) };
    let norm = ctx.b.sample_sq_norm(&reduced, rank);
    ctx.add_norm(n, param, norm)
}

fn one_hot_kernel(channels: usize, kh: usize, kw: usize) -> Vec<f32> {
    // [channels*kh*kw, 1, kh, kw]: output channel c*kk + a*kw + b copies input channel c at (a, b).
    let kk = kh * kw;
    let mut e = vec![0.0f32; channels * kk * kk];
    for c in 0..channels {
        for r in 0..kk {
            e[(c * kk + r) * kk + r] = 1.0;
        }
    }
    e
}

/// Pads/crops the two spatial axes of `x` (currently `cur`) to the window `[start, start+size)`.
fn crop_spatial(ctx: &mut Ctx, x: &str, cur: [usize; 2], start: [usize; 2], size: [usize; 2]) -> String {
    let mut x = x.to_string();
    let need = [start[0] + size[0], start[1] + size[1]];
    if need[0] > cur[0] || need[1] > cur[1] {
        let eh = need[0].saturating_sub(cur[0]) as i64;
        let ew = need[1].saturating_sub(cur[1]) as i64;
        x = ctx.b.pad(&x, &[0, 0, 0, 0, 0, 0, eh, ew], 0.0);
    }
    if start == [0, 0] && size == cur {
        return x;
    }
    ctx.b.slice(&x, &[start[0] as i64, start[1] as i64], &[need[0] as i64, need[1] as i64], &[2, 3])
}

/// Scatters per-window values back to the input grid (the adjoint of a strided window read).
fn col2im(ctx: &mut Ctx, x: &str, w: &str, group: usize, g: &Geom) -> String {
    let y = ctx.b.op(
        "ConvTranspose",
        &[x, w],
        vec![
            attr::int("group", group as i64),
            attr::ints("strides", &[g.s[0] as i64, g.s[1] as i64]),
            attr::ints("dilations", &[g.d[0] as i64, g.d[1] as i64]),
            attr::ints("kernel_shape", &[g.k[0] as i64, g.k[1] as i64]),
        ],
    );
    let full = [(g.out[0] - 1) * g.s[0] + g.keff(0), (g.out[1] - 1) * g.s[1] + g.keff(1)];
    crop_spatial(ctx, &y, full, [g.pads[0], g.pads[1]], g.inp)
}

fn conv_attrs(g: &Geom, group: usize, pads: [usize; 4]) -> Vec<crate::onnx::AttributeProto> {
    vec![
        attr::int("group", group as i64),
        attr::ints("strides", &[g.s[0] as i64, g.s[1] as i64]),
        attr::ints("dilations", &[g.d[0] as i64, g.d[1] as i64]),
        attr::ints("kernel_shape", &[g.k[0] as i64, g.k[1] as i64]),
        attr::ints("pads", &pads.map(|p| p as i64)),
    ]
}

/// Cost of writing one patch value, in multiply-adds (see `conv_backward`).
const PATCH_WEIGHT: usize = 20;
/// Cost of moving one Gram-window value, in multiply-adds.
const WINDOW_WEIGHT: usize = 40;

/// Rows (axis 0) or columns (axis 1) of the padded input that the conv windows read.
fn window_extent(g: &Geom, axis: usize) -> usize {
    (g.out[axis] - 1) * g.s[axis] + g.keff(axis)
}

/// `||dW||^2` of an ungrouped Conv as the ghost norm `sum((delta^T delta) * (P^T P))`, with
/// `(P^T P)[p, q] = sum_{a,b} G[p*s + (a,b)*d, q*s + (a,b)*d]` where `G` is the Gram matrix of the
/// padded input's pixels over channels: `k*k` strided windows of `G` instead of patches.
fn pixel_gram_norm(ctx: &mut Ctx, x: &str, dy: &str, g: &Geom, cin: usize, cout: usize) -> String {
    let [pt, pl, pb, pr] = g.pads.map(|p| p as i64);
    let mut xp = x.to_string();
    if g.pads != [0; 4] {
        xp = ctx.b.pad(&xp, &[0, 0, pt, pl, 0, 0, pb, pr], 0.0);
    }
    let need = [window_extent(g, 0), window_extent(g, 1)];
    let full = [g.inp[0] + g.pads[0] + g.pads[2], g.inp[1] + g.pads[1] + g.pads[3]];
    if need != full {
        xp = ctx.b.slice(&xp, &[0, 0], &[need[0] as i64, need[1] as i64], &[2, 3]);
    }
    let lp = (need[0] * need[1]) as i64;
    let xr = ctx.b.reshape_to(&xp, &[-1, cin as i64, lp]);
    let xt = ctx.b.transpose(&xr, &[0, 2, 1]);
    let gx = ctx.b.op("MatMul", &[&xt, &xr], vec![]);
    let (h, w) = (need[0] as i64, need[1] as i64);
    let gx = ctx.b.reshape_to(&gx, &[-1, h, w, h, w]);
    let (s, d) = (g.s.map(|v| v as i64), g.d.map(|v| v as i64));
    let span = [(g.out[0] as i64 - 1) * s[0] + 1, (g.out[1] as i64 - 1) * s[1] + 1];
    let mut windows = Vec::with_capacity(g.k[0] * g.k[1]);
    for a in 0..g.k[0] as i64 {
        for b in 0..g.k[1] as i64 {
            let st = [a * d[0], b * d[1], a * d[0], b * d[1]];
            let en = [st[0] + span[0], st[1] + span[1], st[2] + span[0], st[3] + span[1]];
            windows.push(ctx.b.slice_steps(&gx, &st, &en, &[1, 2, 3, 4], &[s[0], s[1], s[0], s[1]]));
        }
    }
    let gp = if windows.len() == 1 {
        windows.remove(0)
    } else {
        let refs: Vec<&str> = windows.iter().map(String::as_str).collect();
        ctx.b.op("Sum", &refs, vec![])
    };
    let l = (g.out[0] * g.out[1]) as i64;
    let gp = ctx.b.reshape_to(&gp, &[-1, 1, l, l]);
    let dr = ctx.b.reshape_to(dy, &[-1, 1, cout as i64, l]);
    ghost_norm(ctx, &dr, &gp)
}

/// The ghost norm `sum((delta^T delta) * G)` per sample, for `delta` `[N, groups, Cout_g, L]` and
/// the Gram matrix of the patches `G` `[N, groups, L, L]`.
fn ghost_norm(ctx: &mut Ctx, dr: &str, gp: &str) -> String {
    let dt = ctx.b.transpose(dr, &[0, 1, 3, 2]);
    let gd = ctx.b.op("MatMul", &[&dt, dr], vec![]);
    let prod = ctx.b.mul(&gd, gp);
    // Two stages: one float32 reduction over ~1e6 terms loses ~1e-3 relative in ORT.
    let rows = ctx.b.reduce("ReduceSum", &prod, &[3], false);
    ctx.b.reduce("ReduceSum", &rows, &[1, 2], false)
}

fn conv_backward(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let wname = n.input[1].clone();
    let (g, group, cin, cout) = conv_geom(n, ctx)?;
    let w = ctx.const_f32(n, &wname)?;
    let (kh, kw) = (g.k[0], g.k[1]);
    let (cin_g, cout_g) = (cin / group, cout / group);
    let l = g.out[0] * g.out[1];
    // The true output gradient is dy * gain[channel] when a BatchNormalization after this Conv
    // folded its gain in here (see `bn_backward`).
    let gain = ctx.gain.remove(&n.output[0]);
    if gain.as_ref().is_some_and(|k| k.len() != cout) {
        return Err(node_err(n, "internal: BatchNormalization gain does not match the Conv's channels"));
    }

    if let Some(bias) = n.input.get(2).filter(|s| !s.is_empty()) {
        if ctx.consts.contains_key(bias) {
            let mut s = ctx.b.reduce("ReduceSum", dy, &[2, 3], false);
            if let Some(k) = &gain {
                let kc = ctx.b.const_f32("conv_gain", &[cout], k);
                s = ctx.b.mul(&s, &kc);
            }
            let norm = ctx.b.reduce("ReduceSumSquare", &s, &[1], false);
            ctx.add_norm(n, bias, norm)?;
        }
    }

    // Weight norm. Costs per sample: multiply-adds, plus the memory traffic of forming patches
    // (kg*L values) or of summing Gram windows (k*k*L^2 values), weighted by what those cost
    // relative to a multiply-add in ONNX Runtime's CPU kernels (fitted on ResNet-18 layers).
    let kg = cin_g * kh * kw;
    let pointwise = kh == 1 && kw == 1 && g.s == [1, 1] && g.pads == [0; 4];
    let patch_cost = if pointwise { 0 } else { PATCH_WEIGHT * kg * l };
    let im2col_cost = cout_g * kg * l + patch_cost;
    let ghost_cost = l * l * (cout_g + kg) + patch_cost;
    let lp = window_extent(&g, 0) * window_extent(&g, 1);
    let pixel_cost = lp * lp * cin + l * l * cout + WINDOW_WEIGHT * kh * kw * l * l;
    let plan = match ctx.conv_norm {
        ConvNorm::Auto if group == 1 && pixel_cost < im2col_cost.min(ghost_cost) => ConvNorm::PixelGram,
        ConvNorm::Auto if ghost_cost < im2col_cost => ConvNorm::Ghost,
        ConvNorm::Auto => ConvNorm::Im2col,
        ConvNorm::PixelGram if group != 1 => ConvNorm::Ghost,
        other => other,
    };
    // The Gram-based plans need the scaled gradient (they square sums over channels); im2col
    // squares per output channel first, so it weights those squares by gain^2 instead.
    let dy_scaled = match (&gain, plan) {
        (Some(k), ConvNorm::PixelGram | ConvNorm::Ghost) => {
            let kc = ctx.b.const_f32("conv_gain", &[cout, 1, 1], k);
            ctx.b.mul(dy, &kc)
        }
        _ => dy.to_string(),
    };
    let norm = if plan == ConvNorm::PixelGram {
        pixel_gram_norm(ctx, &x, &dy_scaled, &g, cin, cout)
    } else {
        // Patches P [N, g, Cin_g*k*k, L] and delta [N, g, Cout_g, L].
        let patches = if pointwise {
            x.clone()
        } else {
            let e = one_hot_kernel(cin, kh, kw);
            let e = ctx.b.const_f32("im2col_kernel", &[cin * kh * kw, 1, kh, kw], &e);
            ctx.b.op("Conv", &[&x, &e], conv_attrs(&g, cin, g.pads))
        };
        let pr = ctx.b.reshape_to(&patches, &[-1, group as i64, kg as i64, l as i64]);
        let dr = ctx.b.reshape_to(&dy_scaled, &[-1, group as i64, cout_g as i64, l as i64]);
        if plan == ConvNorm::Ghost {
            let pt = ctx.b.transpose(&pr, &[0, 1, 3, 2]);
            let gp = ctx.b.op("MatMul", &[&pt, &pr], vec![]);
            ghost_norm(ctx, &dr, &gp)
        } else {
            // gm [N, g, Cout_g, Cin_g*k*k], squared and summed over its last axis (ONNX
            // Runtime reduces the innermost axis fastest; it folds the Transpose into the MatMul).
            let pt = ctx.b.transpose(&pr, &[0, 1, 3, 2]);
            let gm = ctx.b.op("MatMul", &[&dr, &pt], vec![]);
            let rows = ctx.b.reduce("ReduceSumSquare", &gm, &[3], false);
            let rows = match &gain {
                Some(k) => {
                    let k2: Vec<f32> = k.iter().map(|v| v * v).collect();
                    let kc = ctx.b.const_f32("conv_gain_sq", &[group, cout_g], &k2);
                    ctx.b.mul(&rows, &kc)
                }
                None => rows,
            };
            ctx.b.reduce("ReduceSum", &rows, &[1, 2], false)
        }
    };
    let plan_name = match plan {
        ConvNorm::PixelGram => "pixel-gram",
        ConvNorm::Ghost => "ghost",
        _ => "im2col",
    };
    ctx.conv_plans.push((wname.clone(), plan_name));
    ctx.add_norm(n, &wname, norm)?;

    let mut grads = Vec::new();
    if ctx.wants_grad(&x) {
        let p_flip = [
            g.keff(0) as i64 - 1 - g.pads[0] as i64,
            g.keff(1) as i64 - 1 - g.pads[1] as i64,
            g.keff(0) as i64 - 1 - g.pads[2] as i64,
            g.keff(1) as i64 - 1 - g.pads[3] as i64,
        ];
        // The input gradient runs through the weights times each output channel's folded gain.
        let mut w = w;
        if let Some(k) = &gain {
            for (o, mut wo) in w.outer_iter_mut().enumerate() {
                wo.mapv_inplace(|v| v * k[o]);
            }
        }
        let dx = if g.s == [1, 1] && p_flip.iter().all(|&p| p >= 0) {
            // Stride 1: a plain Conv with the flipped, transposed kernel (ORT's fastest path).
            let mut wf = vec![0.0f32; cin * cout_g * kh * kw];
            for gi in 0..group {
                for o in 0..cout_g {
                    for i in 0..cin_g {
                        for a in 0..kh {
                            for bb in 0..kw {
                                let src = w[[gi * cout_g + o, i, kh - 1 - a, kw - 1 - bb]];
                                wf[(((gi * cin_g + i) * cout_g + o) * kh + a) * kw + bb] = src;
                            }
                        }
                    }
                }
            }
            let wf = ctx.b.const_f32("conv_flipped", &[cin, cout_g, kh, kw], &wf);
            let pads = p_flip.map(|p| p as usize);
            ctx.b.op("Conv", &[dy, &wf], conv_attrs(&g, group, pads))
        } else {
            let wt = match gain {
                Some(_) => ctx.b.const_f32("conv_gained", w.shape(), &w.iter().copied().collect::<Vec<_>>()),
                None => wname.clone(),
            };
            col2im(ctx, dy, &wt, group, &g)
        };
        grads.push((x, dx));
    }
    Ok(grads)
}

/// Where a BatchNormalization's output can be read back from for `x_hat`, so the BN output
/// itself is never needed and ONNX Runtime can fuse Conv+BN+Relu (and the residual Add) as in
/// the plain forward. Returns `(value, subtract)`: `bn_out == value - subtract` wherever the
/// gradient at the BN output is non-zero.
fn bn_output_source(n: &NodeProto, ctx: &Ctx) -> (String, Option<String>) {
    let y = &n.output[0];
    let relu_out = |t: &str| ctx.sole_reader(t).filter(|r| r.op_type == "Relu").map(|r| r.output[0].clone());
    match ctx.sole_reader(y) {
        // The gradient at y is zero where the Relu clipped; elsewhere y is the Relu's output.
        Some(r) if r.op_type == "Relu" => (r.output[0].clone(), None),
        // y + other -> Relu (a residual block's second BN): y = relu_out - other where it passes.
        // When both addends are BN outputs (a downsampling block's shortcut), only the first
        // reads back: the second's output stays in use, the first's is read by the Add alone,
        // so ONNX Runtime can still fuse the Add into the first one's Conv.
        Some(a) if a.op_type == "Add" && a.input.len() == 2 => {
            let first = a.input[0] == *y;
            let other = if first { &a.input[1] } else { &a.input[0] };
            let other_bn = ctx.producer.get(other).is_some_and(|op| op == "BatchNormalization");
            let same =
                other != y && ctx.is_act(other) && ctx.shapes.get(other) == ctx.shapes.get(y) && (first || !other_bn);
            match relu_out(&a.output[0]) {
                Some(r) if same => (r, Some(other.clone())),
                _ => (y.clone(), None),
            }
        }
        _ => (y.clone(), None),
    }
}

fn bn_backward(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let xs = ctx.shape(n, &x)?;
    let eps = Attrs::of(n).float("epsilon", 1e-5)?;
    let scale = ctx.const_f32(n, &n.input[1])?;
    let mean = ctx.const_f32(n, &n.input[3])?;
    let var = ctx.const_f32(n, &n.input[4])?;
    let bias = ctx.const_f32(n, &n.input[2])?;
    let c = xs[0];
    let mut cdims = vec![c];
    cdims.extend(std::iter::repeat_n(1, xs.len() - 1));
    let inv: Vec<f32> = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
    let rank = xs.len() + 1;
    let spatial: Vec<i64> = (2..rank as i64).collect();

    let gb = if spatial.is_empty() { dy.to_string() } else { ctx.b.reduce("ReduceSum", dy, &spatial, false) };
    // dScale = sum(dy * x_hat). x_hat is read back from the output, x_hat = (y - B) / scale,
    // so that the BN input stays unused and ONNX Runtime folds BN into the Conv before it; the
    // shift and 1/scale are applied after the spatial sum, on [N, C]:
    // sum(dy * x_hat) = (sum(dy * y) - B * sum(dy)) / scale. From the input when a scale is
    // near zero (dividing by it would amplify rounding).
    let gs = if scale.iter().all(|s| s.abs() > 1e-3) && !spatial.is_empty() {
        let (src, minus) = bn_output_source(n, ctx);
        let src = match minus {
            Some(o) => ctx.b.sub(&src, &o),
            None => src,
        };
        let prod = ctx.b.mul(dy, &src);
        let raw = ctx.b.reduce("ReduceSum", &prod, &spatial, false);
        let b_c = ctx.b.const_f32("bn_shift", &[c], &bias.iter().copied().collect::<Vec<_>>());
        let rs: Vec<f32> = scale.iter().map(|s| 1.0 / s).collect();
        let rs_c = ctx.b.const_f32("bn_inv_scale", &[c], &rs);
        let shifted = ctx.b.mul(&gb, &b_c);
        let centred = ctx.b.sub(&raw, &shifted);
        ctx.b.mul(&centred, &rs_c)
    } else {
        let mean_c = ctx.b.const_f32("bn_mean", &cdims, &mean.iter().copied().collect::<Vec<_>>());
        let inv_c = ctx.b.const_f32("bn_inv_std", &cdims, &inv);
        let centred = ctx.b.sub(&x, &mean_c);
        let xhat = ctx.b.mul(&centred, &inv_c);
        let gx = ctx.b.mul(dy, &xhat);
        if spatial.is_empty() {
            gx
        } else {
            ctx.b.reduce("ReduceSum", &gx, &spatial, false)
        }
    };
    let ns = ctx.b.reduce("ReduceSumSquare", &gs, &[1], false);
    let nb = ctx.b.reduce("ReduceSumSquare", &gb, &[1], false);
    if ctx.consts.contains_key(&n.input[1]) {
        ctx.add_norm(n, &n.input[1], ns)?;
    }
    if ctx.consts.contains_key(&n.input[2]) {
        ctx.add_norm(n, &n.input[2], nb)?;
    }
    let mut grads = Vec::new();
    if ctx.wants_grad(&x) {
        let k: Vec<f32> = scale.iter().zip(&inv).map(|(s, i)| s * i).collect();
        // A Conv whose output only this BN reads takes the gain into its own weights and
        // norms (see `conv_backward`): dy goes on unscaled.
        let folds = ctx.producer.get(&x).is_some_and(|op| op == "Conv")
            && ctx.sole_reader(&x).is_some_and(|r| r.output.first() == n.output.first());
        if folds {
            ctx.gain.insert(x.clone(), k);
            grads.push((x, dy.to_string()));
        } else {
            let kc = ctx.b.const_f32("bn_gain", &cdims, &k);
            grads.push((x, ctx.b.mul(dy, &kc)));
        }
    }
    Ok(grads)
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

fn elementwise_backward(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let out = ctx.shapes.get(&n.output[0]).cloned().unwrap_or_default();
    let op = n.op_type.clone();
    let mut grads = Vec::new();
    for i in 0..2 {
        let name = n.input[i].clone();
        let other = n.input[1 - i].clone();
        let is_param = ctx.params.contains(&name) && op == "Add";
        if !ctx.wants_grad(&name) && !is_param {
            continue;
        }
        let local = match (op.as_str(), i) {
            ("Add", _) | ("Sub", 0) => dy.to_string(),
            ("Sub", _) => ctx.b.op("Neg", &[dy], vec![]),
            ("Mul", _) => ctx.b.mul(dy, &other),
            ("Div", 0) => ctx.b.op("Div", &[dy, &other], vec![]),
            _ => return Err(node_err(n, "gradient through the divisor is not supported")),
        };
        if is_param {
            param_norm(n, ctx, &local, &out, &name)?;
        } else {
            let inp = ctx.shape(n, &name)?;
            grads.push((name, unbroadcast(n, ctx, &local, &out, &inp)?));
        }
    }
    Ok(grads)
}

/// Emits the backward of one node given the gradient of its output; returns the gradient
/// contributions to its activation inputs and records parameter norms in `ctx`.
pub(super) fn backward(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let op = n.op_type.as_str();
    let x = n.input.first().cloned().unwrap_or_default();
    let want = ctx.wants_grad(&x);
    let single = |g: String| vec![(x.clone(), g)];
    Ok(match op {
        "Conv" => conv_backward(n, dy, ctx)?,
        "BatchNormalization" => bn_backward(n, dy, ctx)?,
        "Gemm" => {
            let a = Attrs::of(n);
            let alpha = a.float("alpha", 1.0)?;
            let beta = a.float("beta", 1.0)?;
            let trans_b = a.int("transB", 0)? != 0;
            let wname = n.input[1].clone();
            let ssx = ctx.b.sample_sq_norm(&x, 2);
            let ssd = ctx.b.sample_sq_norm(dy, 2);
            let prod = ctx.b.mul(&ssx, &ssd);
            let wn = ctx.b.scale(&prod, alpha * alpha);
            ctx.add_norm(n, &wname, wn)?;
            if let Some(c) = n.input.get(2).filter(|s| !s.is_empty()).cloned() {
                let numel: usize = ctx.const_dims(n, &c)?.iter().product();
                let m = ctx.shapes.get(&n.output[0]).map(|s| s[0]).unwrap_or(0);
                let cn = if numel == m {
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
            if want {
                let g = ctx.b.op(
                    "Gemm",
                    &[dy, &wname],
                    vec![attr::float("alpha", alpha), attr::int("transB", if trans_b { 0 } else { 1 })],
                );
                single(g)
            } else {
                vec![]
            }
        }
        "MatMul" => {
            let xs = ctx.shape(n, &x)?;
            let wname = n.input[1].clone();
            let w = ctx.const_f32(n, &wname)?;
            let (k, m) = (w.shape()[0], w.shape()[1]);
            let wn = if xs.len() == 1 {
                let ssx = ctx.b.sample_sq_norm(&x, 2);
                let ssd = ctx.b.sample_sq_norm(dy, 2);
                ctx.b.mul(&ssx, &ssd)
            } else {
                let t: usize = xs[..xs.len() - 1].iter().product();
                let xr = ctx.b.reshape_to(&x, &[-1, t as i64, k as i64]);
                let dr = ctx.b.reshape_to(dy, &[-1, t as i64, m as i64]);
                let xt = ctx.b.transpose(&xr, &[0, 2, 1]);
                let gm = ctx.b.op("MatMul", &[&xt, &dr], vec![]);
                ctx.b.reduce("ReduceSumSquare", &gm, &[1, 2], false)
            };
            ctx.add_norm(n, &wname, wn)?;
            if want {
                let wt: Vec<f32> = w.t().iter().copied().collect();
                let wt = ctx.b.const_f32("matmul_wt", &[m, k], &wt);
                single(ctx.b.op("MatMul", &[dy, &wt], vec![]))
            } else {
                vec![]
            }
        }
        "Add" | "Sub" | "Mul" | "Div" => elementwise_backward(n, dy, ctx)?,
        _ if !want => vec![],
        "Relu" => {
            // y > 0 exactly when x > 0; using the output lets ONNX Runtime fuse Conv+BN+Relu.
            let zero = ctx.b.scalar(0.0);
            let m = ctx.b.op("Greater", &[&n.output[0], &zero], vec![]);
            single(ctx.b.op("Where", &[&m, dy, &zero], vec![]))
        }
        "LeakyRelu" => {
            let alpha = Attrs::of(n).float("alpha", 0.01)?;
            let zero = ctx.b.scalar(0.0);
            let src = if alpha > 0.0 { n.output[0].clone() } else { x.clone() };
            let m = ctx.b.op("Greater", &[&src, &zero], vec![]);
            let neg = ctx.b.scale(dy, alpha);
            single(ctx.b.op("Where", &[&m, dy, &neg], vec![]))
        }
        "Clip" => {
            // PyTorch's hardtanh/relu6 backward: gradient only strictly inside (min, max).
            let (lo, hi) = clip_bounds(n, ctx)?;
            let lo_c = ctx.b.scalar(lo);
            let hi_c = ctx.b.scalar(hi);
            let zero = ctx.b.scalar(0.0);
            let a = ctx.b.op("Greater", &[&x, &lo_c], vec![]);
            let bnd = ctx.b.op("Less", &[&x, &hi_c], vec![]);
            let m = ctx.b.op("And", &[&a, &bnd], vec![]);
            single(ctx.b.op("Where", &[&m, dy, &zero], vec![]))
        }
        "Sigmoid" => {
            let y = n.output[0].clone();
            let one = ctx.b.scalar(1.0);
            let om = ctx.b.sub(&one, &y);
            let t = ctx.b.mul(dy, &y);
            single(ctx.b.mul(&t, &om))
        }
        "HardSigmoid" => {
            let a = Attrs::of(n);
            let alpha = a.float("alpha", 0.2)?;
            let beta = a.float("beta", 0.5)?;
            let v = ctx.b.scale(&x, alpha);
            let bc = ctx.b.scalar(beta);
            let v = ctx.b.add(&v, &bc);
            let zero = ctx.b.scalar(0.0);
            let one = ctx.b.scalar(1.0);
            let a1 = ctx.b.op("Greater", &[&v, &zero], vec![]);
            let a2 = ctx.b.op("Less", &[&v, &one], vec![]);
            let m = ctx.b.op("And", &[&a1, &a2], vec![]);
            let g = ctx.b.scale(dy, alpha);
            single(ctx.b.op("Where", &[&m, &g, &zero], vec![]))
        }
        "HardSwish" => {
            // PyTorch: 0 for x < -3, dy*(x/3 + 1/2) for -3 <= x <= 3, dy for x > 3.
            let lo = ctx.b.scalar(-3.0);
            let hi = ctx.b.scalar(3.0);
            let zero = ctx.b.scalar(0.0);
            let half = ctx.b.scalar(0.5);
            let t = ctx.b.scale(&x, 1.0 / 3.0);
            let t = ctx.b.add(&t, &half);
            let mid = ctx.b.mul(dy, &t);
            let above = ctx.b.op("Greater", &[&x, &hi], vec![]);
            let upper = ctx.b.op("Where", &[&above, dy, &mid], vec![]);
            let below = ctx.b.op("Less", &[&x, &lo], vec![]);
            single(ctx.b.op("Where", &[&below, &zero, &upper], vec![]))
        }
        "Identity" | "Dropout" => single(dy.to_string()),
        "MaxPool" => {
            let (g, c) = pool_geom(n, ctx)?;
            let kk = g.k[0] * g.k[1];
            let l = g.out[0] * g.out[1];
            let eh = ((g.out[0] - 1) * g.s[0] + g.keff(0)).saturating_sub(g.inp[0] + g.pads[0] + g.pads[2]);
            let ew = ((g.out[1] - 1) * g.s[1] + g.keff(1)).saturating_sub(g.inp[1] + g.pads[1] + g.pads[3]);
            let pads = [0, 0, g.pads[0], g.pads[1], 0, 0, g.pads[2] + eh, g.pads[3] + ew].map(|p| p as i64);
            // Padding never wins a max (as in PyTorch): pad with the lowest finite float.
            let xp = if pads.iter().any(|&p| p != 0) { ctx.b.pad(&x, &pads, f32::MIN) } else { x.clone() };
            let e = one_hot_kernel(c, g.k[0], g.k[1]);
            let e = ctx.b.const_f32("window_kernel", &[c * kk, 1, g.k[0], g.k[1]], &e);
            let p = ctx.b.op("Conv", &[&xp, &e], conv_attrs(&g, c, [0; 4]));
            let pr = ctx.b.reshape_to(&p, &[-1, c as i64, kk as i64, l as i64]);
            // First maximum in scan order gets the gradient (PyTorch's tie rule).
            let am = ctx.b.op(
                "ArgMax",
                &[&pr],
                vec![attr::int("axis", 2), attr::int("keepdims", 1), attr::int("select_last_index", 0)],
            );
            let range: Vec<i64> = (0..kk as i64).collect();
            let r = ctx.b.fresh("window_index");
            ctx.b.inits.push(crate::onnx::make_tensor_i64(&r, &[1, 1, kk, 1], &range));
            let eq = ctx.b.op("Equal", &[&am, &r], vec![]);
            let mask = ctx.b.op("Cast", &[&eq], vec![attr::int("to", crate::onnx::data_type::FLOAT as i64)]);
            let dyr = ctx.b.reshape_to(dy, &[-1, c as i64, 1, l as i64]);
            let dp = ctx.b.mul(&mask, &dyr);
            let dp = ctx.b.reshape_to(&dp, &[-1, (c * kk) as i64, g.out[0] as i64, g.out[1] as i64]);
            let gp = Geom {
                pads: [0, 0, 0, 0],
                inp: [g.inp[0] + g.pads[0] + g.pads[2] + eh, g.inp[1] + g.pads[1] + g.pads[3] + ew],
                ..g
            };
            let full = col2im(ctx, &dp, &e, c, &gp);
            let hp = [gp.inp[0], gp.inp[1]];
            single(crop_spatial(ctx, &full, hp, [g.pads[0], g.pads[1]], g.inp))
        }
        "AveragePool" => {
            let (g, c) = pool_geom(n, ctx)?;
            let include_pad = Attrs::of(n).int("count_include_pad", 0)? != 0;
            let mut inv = vec![0.0f32; g.out[0] * g.out[1]];
            for oy in 0..g.out[0] {
                for ox in 0..g.out[1] {
                    let mut size = 1usize;
                    for (i, o) in [(0, oy), (1, ox)] {
                        let start = (o * g.s[i]) as i64 - g.pads[i] as i64;
                        let end = (start + g.k[i] as i64).min((g.inp[i] + g.pads[i + 2]) as i64);
                        let len = if include_pad { end - start } else { end.min(g.inp[i] as i64) - start.max(0) };
                        size *= len.max(1) as usize;
                    }
                    inv[oy * g.out[1] + ox] = 1.0 / size as f32;
                }
            }
            let invc = ctx.b.const_f32("avgpool_inv_count", &[1, 1, g.out[0], g.out[1]], &inv);
            let scaled = ctx.b.mul(dy, &invc);
            let ones = vec![1.0f32; c * g.k[0] * g.k[1]];
            let w = ctx.b.const_f32("avgpool_ones", &[c, 1, g.k[0], g.k[1]], &ones);
            single(col2im(ctx, &scaled, &w, c, &g))
        }
        "GlobalAveragePool" => {
            let xs = ctx.shape(n, &x)?;
            let hw: usize = xs[1..].iter().product();
            let mut dims = vec![1, 1];
            dims.extend(&xs[1..]);
            let c = ctx.b.const_f32("gap_spread", &dims, &vec![1.0 / hw as f32; hw]);
            single(ctx.b.mul(dy, &c))
        }
        "ReduceMean" => {
            let xs = ctx.shape(n, &x)?;
            let axes = reduce_axes(n, ctx, xs.len() + 1)?;
            let kept: Vec<usize> =
                xs.iter().enumerate().map(|(i, &d)| if axes.contains(&(i + 1)) { 1 } else { d }).collect();
            let count: usize = axes.iter().map(|&a| xs[a - 1]).product();
            let dyk = ctx.b.reshape_batch(dy, &kept);
            let mut dims = vec![1];
            dims.extend(xs.iter().enumerate().map(|(i, &d)| if axes.contains(&(i + 1)) { d } else { 1 }));
            let numel: usize = dims.iter().product();
            let c = ctx.b.const_f32("mean_spread", &dims, &vec![1.0 / count.max(1) as f32; numel]);
            single(ctx.b.mul(&dyk, &c))
        }
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => {
            let xs = ctx.shape(n, &x)?;
            single(ctx.b.reshape_batch(dy, &xs))
        }
        "Transpose" => {
            let xs = ctx.shape(n, &x)?;
            let rank = xs.len() + 1;
            let perm = Attrs::of(n).ints("perm")?.unwrap_or_else(|| (0..rank as i64).rev().collect());
            let mut inv = vec![0i64; rank];
            for (i, &p) in perm.iter().enumerate() {
                inv[p as usize] = i as i64;
            }
            single(ctx.b.transpose(dy, &inv))
        }
        "Pad" => {
            let xs = ctx.shape(n, &x)?;
            let rank = xs.len() + 1;
            let pads = pads_of(n, ctx, rank)?;
            let starts: Vec<i64> = (1..rank).map(|i| pads[i]).collect();
            let ends: Vec<i64> = (1..rank).map(|i| pads[i] + xs[i - 1] as i64).collect();
            let axes: Vec<i64> = (1..rank as i64).collect();
            single(ctx.b.slice(dy, &starts, &ends, &axes))
        }
        "Concat" => {
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
            n.input.iter().cloned().zip(outs).filter(|(i, _)| ctx.wants_grad(i)).collect()
        }
        _ => return Err(GradError::Unsupported { op: n.op_type.clone(), node: n.name.clone() }),
    })
}
