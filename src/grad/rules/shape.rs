//! Data movement: `Flatten`, `Reshape` (channel shuffle included), `Squeeze`, `Unsqueeze`,
//! `Transpose`, `Concat`, `Pad`, `Identity`, `Dropout` (inference: identity), `Constant` (folded
//! before the analysis), `Gather` and `Slice` by constant indices, `Split`, and `Expand` (of an
//! activation, or of a constant to the batch size: a class token, [`ParamKind::Embedding`]).

use super::{act_input, axes, norm_axis, same_shape, single, Grads, Params, Rule, Scope};
use crate::grad::fold::{is_batch_derived, slice_range, BATCH};
use crate::grad::{node_err, Ctx, GradError, ParamKind};
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
    Rule { op: "Cast", params: Params::None, shape: cast_shape, backward: cast },
    Rule { op: "Constant", params: Params::None, shape: constant_shape, backward: constant },
    Rule { op: "Gather", params: Params::None, shape: gather_shape, backward: gather },
    Rule { op: "Slice", params: Params::None, shape: slice_shape, backward: slice },
    Rule { op: "Split", params: Params::None, shape: split_shape, backward: split },
    Rule { op: "Expand", params: Params::Discover(expand_params), shape: expand_shape, backward: expand },
];

fn reshape_target(n: &NodeProto, ctx: &Ctx, x: &[usize]) -> Result<Vec<usize>, GradError> {
    let mut shape = ctx.const_i64(n, n.input.get(1).map(String::as_str).unwrap_or(""))?;
    let allowzero = Attrs::of(n).int("allowzero", 0)? != 0;
    // The batch size read from the input's shape (folded to the symbolic batch) keeps the
    // axis, as a 0 that copies it (whatever allowzero says: the real value is never 0).
    let batch_read = shape.first() == Some(&BATCH);
    if batch_read {
        shape[0] = 0;
    }
    if shape.iter().any(|&d| is_batch_derived(d)) {
        return Err(node_err(
            n,
            "the target shape merges the batch into another axis (e.g. batch x heads); gradwatch needs the batch \
             axis kept first and alone: reshape to [N, ...] and move axes with Transpose after the batch",
        ));
    }
    if shape.is_empty() || !(shape[0] == -1 || (shape[0] == 0 && (!allowzero || batch_read))) {
        return Err(node_err(
            n,
            format!(
                "target shape {shape:?} must keep the batch axis first (0 or -1); a fixed batch size is read \
                 from the input's first axis, so this size does not match it: re-export with a dynamic batch \
                 axis (torch.onnx.export(..., dynamic_axes={{'input': {{0: 'N'}}}}))"
            ),
        ));
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

/// How a `Pad` fills: with a constant, by mirroring the values next to the edge (`reflect`:
/// TResNet's anti-aliasing blur), or by repeating the edge value (`edge`).
#[derive(Clone, Copy, PartialEq)]
enum PadMode {
    Constant,
    Reflect,
    Edge,
}

fn pad_mode(n: &NodeProto) -> Result<PadMode, GradError> {
    match Attrs::of(n).string("mode", "constant")?.as_str() {
        "constant" => Ok(PadMode::Constant),
        "reflect" => Ok(PadMode::Reflect),
        "edge" => Ok(PadMode::Edge),
        m => Err(node_err(n, format!("Pad mode '{m}' is not supported (constant, reflect and edge are)"))),
    }
}

fn pads_of(n: &NodeProto, ctx: &Ctx, rank: usize) -> Result<Vec<i64>, GradError> {
    pad_mode(n)?;
    let pads = super::pads(n, ctx, rank)?;
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
    let axes: Vec<usize> = match axes(n, ctx)? {
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
    let axes = axes(n, ctx)?.ok_or_else(|| node_err(n, "Unsqueeze needs axes"))?;
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
    if pad_mode(n)? == PadMode::Reflect && (1..rank).any(|i| pads[i].max(pads[rank + i]) >= x[i - 1] as i64) {
        return Err(node_err(n, "reflect padding must be shorter than the axis it pads"));
    }
    Ok((1..rank).map(|i| x[i - 1] + (pads[i] + pads[rank + i]) as usize).collect())
}

fn dropout_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    if n.output.len() > 1 && n.output[1..].iter().any(|o| !o.is_empty()) {
        return Err(node_err(n, "Dropout's mask output is not supported (inference models do not use it)"));
    }
    ctx.shape(n, act_input(n, ctx, 0)?)
}

/// The `to` type of a Cast on an activation: float32 (a no-op in a float32 model: EfficientViT's
/// `q.float()`), or a bool or integer (a mask, no gradient). Other floats would need the
/// backward pass in that type.
fn cast_to(n: &NodeProto) -> Result<i32, GradError> {
    use crate::onnx::data_type as t;
    let to = Attrs::of(n).int("to", 0)? as i32;
    match to {
        t::FLOAT | t::BOOL | t::INT8 | t::UINT8 | t::INT32 | t::INT64 => Ok(to),
        _ => Err(node_err(
            n,
            format!("Cast of an activation to type {to}: gradwatch differentiates float32 models; export the model in float32"),
        )),
    }
}

fn cast_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    cast_to(n)?;
    ctx.shape(n, act_input(n, ctx, 0)?)
}

/// To float32: the gradient passes unchanged (a bool cast to float passes it to the comparison,
/// which drops it). To a bool or an integer: nothing flows back.
fn cast(n: &NodeProto, dy: &str, _: &mut Ctx) -> Result<Grads, GradError> {
    Ok(if cast_to(n)? == crate::onnx::data_type::FLOAT { single(n, dy.to_string()) } else { Vec::new() })
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

/// The adjoint of Pad: the gradient of the copied region; with `reflect` or `edge`, the padded
/// strips added back onto the values they copy, one axis at a time (the modes are separable).
fn pad(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let xs = ctx.shape(n, &x)?;
    let rank = xs.len() + 1;
    let pads = pads_of(n, ctx, rank)?;
    let mode = pad_mode(n)?;
    if mode == PadMode::Constant {
        let starts: Vec<i64> = (1..rank).map(|i| pads[i]).collect();
        let ends: Vec<i64> = (1..rank).map(|i| pads[i] + xs[i - 1] as i64).collect();
        let axes: Vec<i64> = (1..rank as i64).collect();
        return Ok(single(n, ctx.b.slice(dy, &starts, &ends, &axes)));
    }
    let mut g = dy.to_string();
    for ax in 1..rank {
        let (b, e, l) = (pads[ax], pads[rank + ax], xs[ax - 1] as i64);
        if b == 0 && e == 0 {
            continue;
        }
        let axis = [ax as i64];
        // Zero-pads a strip along `ax` to the axis's length.
        let place = |ctx: &mut Ctx, v: &str, before: i64, after: i64| {
            let mut p = vec![0i64; 2 * rank];
            (p[ax], p[rank + ax]) = (before, after);
            ctx.b.pad(v, &p, 0.0)
        };
        let mut acc = ctx.b.slice(&g, &[b], &[b + l], &axis);
        if b > 0 {
            let strip = if mode == PadMode::Reflect {
                // y[j] = x[b - j]: the strip reversed lands on x[1..=b].
                let r = ctx.b.slice_steps(&g, &[b - 1], &[i64::MIN], &axis, &[-1]);
                place(ctx, &r, 1, l - 1 - b)
            } else {
                let s = ctx.b.slice(&g, &[0], &[b], &axis);
                let s = ctx.b.reduce("ReduceSum", &s, &axis, true);
                place(ctx, &s, 0, l - 1)
            };
            acc = ctx.b.add(&acc, &strip);
        }
        if e > 0 {
            let strip = if mode == PadMode::Reflect {
                // y[b + l - 1 + t] = x[l - 1 - t], t = 1..=e: reversed, it lands on x[l-1-e..l-1].
                let r = ctx.b.slice_steps(&g, &[b + l + e - 1], &[b + l - 1], &axis, &[-1]);
                place(ctx, &r, l - 1 - e, 1)
            } else {
                let s = ctx.b.slice(&g, &[b + l], &[b + l + e], &axis);
                let s = ctx.b.reduce("ReduceSum", &s, &axis, true);
                place(ctx, &s, l - 1, 0)
            };
            acc = ctx.b.add(&acc, &strip);
        }
        g = acc;
    }
    Ok(single(n, g))
}

fn concat(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let rank = ctx.shape(n, &x)?.len() + 1;
    let ax = norm_axis(n, Attrs::of(n).int("axis", 0)?, rank)?;
    let sizes: Vec<i64> =
        n.input.iter().map(|i| ctx.shape(n, i).map(|s| s[ax - 1] as i64)).collect::<Result<_, _>>()?;
    let outs: Vec<String> = n.input.iter().map(|_| ctx.b.fresh("split")).collect();
    let out_refs: Vec<&str> = outs.iter().map(String::as_str).collect();
    let name = format!("{}/node", outs[0]);
    // The sizes became an input in opset 13.
    let node = if ctx.b.opset >= 13 {
        let split = ctx.b.const_i64("split", &sizes);
        crate::onnx::make_node("Split", &name, &[dy, &split], &out_refs, vec![attr::int("axis", ax as i64)])
    } else {
        let attrs = vec![attr::int("axis", ax as i64), attr::ints("split", &sizes)];
        crate::onnx::make_node("Split", &name, &[dy], &out_refs, attrs)
    };
    ctx.b.nodes.push(node);
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

/// A Gather on an activation: the axis (batch first), the constant indices, their shape and
/// the data's per-sample shape.
type GatherArgs = (usize, Vec<usize>, Vec<usize>, Vec<usize>);

/// A Slice on an activation: the data's per-sample shape and per sliced axis
/// `(axis, start, end, step)`.
type SliceArgs = (Vec<usize>, Vec<(usize, isize, isize, isize)>);

/// Constant indices of a Gather as `(axis, indices, indices shape)`, the data being an activation.
fn gather_args(n: &NodeProto, ctx: &Ctx) -> Result<GatherArgs, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let name = n.input.get(1).map(String::as_str).unwrap_or("");
    if ctx.is_act(name) {
        return Err(node_err(n, "Gather by computed indices (an embedding lookup) is not supported"));
    }
    let ids = ctx.const_i64(n, name)?;
    let ishape = ctx.const_dims(n, name)?;
    let rank = x.len() + 1;
    let ax = norm_axis(n, Attrs::of(n).int("axis", 0)?, rank)?;
    if ax == 0 {
        return Err(node_err(n, "Gather along the batch axis mixes samples"));
    }
    let len = x[ax - 1] as i64;
    let ids: Vec<usize> =
        ids.iter()
            .map(|&i| if i < 0 { i + len } else { i })
            .map(|i| {
                if (0..len).contains(&i) {
                    Ok(i as usize)
                } else {
                    Err(node_err(n, format!("index {i} out of range")))
                }
            })
            .collect::<Result<_, _>>()?;
    Ok((ax, ids, ishape, x))
}

fn gather_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let (ax, _, ishape, x) = gather_args(n, ctx)?;
    let mut o: Vec<usize> = x[..ax - 1].to_vec();
    o.extend(&ishape);
    o.extend(&x[ax..]);
    Ok(o)
}

/// The adjoint of a Gather: each gathered slice back to its index (summed where one repeats),
/// as a MatMul by the one-hot matrix of the indices along the gathered axis (moved last).
fn gather(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let (ax, ids, ishape, x) = gather_args(n, ctx)?;
    let len = x[ax - 1];
    let k = ids.len();
    if k == len && ids.iter().enumerate().all(|(j, &i)| i == j) {
        // Every index once, in order: a view (PyTorch's `as_strided` as exporters write it).
        return Ok(single(n, ctx.b.reshape_batch(dy, &x)));
    }
    // dy as [N, x[..ax-1], k, x[ax..]].
    let mut mid: Vec<usize> = x[..ax - 1].to_vec();
    mid.push(k);
    mid.extend(&x[ax..]);
    let d = if ishape.len() == 1 { dy.to_string() } else { ctx.b.reshape_batch(dy, &mid) };
    if k == 1 {
        let before = ids[0] as i64;
        let after = (len - 1 - ids[0]) as i64;
        let rank = x.len() + 1;
        let mut pads = vec![0i64; 2 * rank];
        pads[ax] = before;
        pads[rank + ax] = after;
        return Ok(single(n, ctx.b.pad(&d, &pads, 0.0)));
    }
    let rank = x.len() + 1;
    let mut perm: Vec<i64> = (0..rank as i64).filter(|&a| a != ax as i64).collect();
    perm.push(ax as i64);
    let mut inv = vec![0i64; rank];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    let moved = ctx.b.transpose(&d, &perm);
    let mut onehot = vec![0.0f32; k * len];
    for (j, &i) in ids.iter().enumerate() {
        onehot[j * len + i] = 1.0;
    }
    let e = ctx.b.const_f32("gather_onehot", &[k, len], &onehot);
    let scattered = ctx.b.op("MatMul", &[&moved, &e], vec![]);
    Ok(single(n, ctx.b.transpose(&scattered, &inv)))
}

/// Per axis of a Slice on an activation: `(axis, start, end, step)`, clamped as ONNX does.
fn slice_args(n: &NodeProto, ctx: &Ctx) -> Result<SliceArgs, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let rank = x.len() + 1;
    let arg = |i: usize| -> Result<Option<Vec<i64>>, GradError> {
        match n.input.get(i).filter(|s| !s.is_empty()) {
            Some(name) => Ok(Some(ctx.const_i64(n, name)?)),
            None => Ok(None),
        }
    };
    let starts = arg(1)?.ok_or_else(|| node_err(n, "Slice needs starts"))?;
    let ends = arg(2)?.ok_or_else(|| node_err(n, "Slice needs ends"))?;
    let axes: Vec<usize> = match arg(3)? {
        Some(v) => v.iter().map(|&a| norm_axis(n, a, rank)).collect::<Result<_, _>>()?,
        None => (0..starts.len()).collect(),
    };
    let steps = arg(4)?.unwrap_or_else(|| vec![1; starts.len()]);
    if starts.len() != axes.len() || ends.len() != axes.len() || steps.len() != axes.len() {
        return Err(node_err(n, "starts, ends, axes and steps differ in length"));
    }
    let mut out = Vec::new();
    for (j, &ax) in axes.iter().enumerate() {
        if ax == 0 {
            // A full slice of the batch axis (what exporters write for x[:, ...]) is no slice.
            if starts[j] == 0 && steps[j] == 1 && (ends[j] >= i64::MAX / 2 || is_batch_derived(ends[j])) {
                continue;
            }
            return Err(node_err(n, "Slice along the batch axis mixes samples"));
        }
        let len = x[ax - 1] as i64;
        let (s, e, st) = slice_range(len, starts[j], ends[j], steps[j]).ok_or_else(|| node_err(n, "Slice step 0"))?;
        if st < 0 {
            return Err(node_err(n, "Slice with a negative step (a flip) is not supported"));
        }
        out.push((ax, s, e, st));
    }
    Ok((x, out))
}

fn slice_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let (mut x, axes) = slice_args(n, ctx)?;
    for (ax, s, e, st) in axes {
        x[ax - 1] = ((e - s).max(0) as usize).div_ceil(st as usize);
    }
    Ok(x)
}

/// The adjoint of a Slice: the gradient padded with zeros back to the input (strided slices
/// are first spread by a Reshape + Pad that interleaves zeros).
fn slice(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let (x, axes) = slice_args(n, ctx)?;
    let rank = x.len() + 1;
    let mut cur: Vec<usize> = ctx.shape(n, &n.output[0])?;
    let mut g = dy.to_string();
    for (ax, s, _, st) in axes {
        let len = x[ax - 1];
        let k = cur[ax - 1];
        if st > 1 && k > 0 {
            // [.., k, ..] -> [.., k, 1, ..] -> pad to [.., k, st, ..] -> [.., k*st, ..], then crop.
            let mut split: Vec<usize> = cur.clone();
            split.insert(ax, 1);
            let r = ctx.b.reshape_batch(&g, &split);
            let mut pads = vec![0i64; 2 * (rank + 1)];
            pads[rank + 1 + ax + 1] = st as i64 - 1;
            let p = ctx.b.pad(&r, &pads, 0.0);
            cur[ax - 1] = k * st as usize;
            g = ctx.b.reshape_batch(&p, &cur);
        }
        let span = cur[ax - 1] as isize;
        let before = s as i64;
        let after = len as i64 - s as i64 - span as i64;
        let mut pads = vec![0i64; 2 * rank];
        pads[ax] = before;
        if after >= 0 {
            pads[rank + ax] = after;
            g = ctx.b.pad(&g, &pads, 0.0);
        } else {
            if before > 0 {
                g = ctx.b.pad(&g, &pads, 0.0);
            }
            g = ctx.b.slice(&g, &[0], &[len as i64], &[ax as i64]);
        }
        cur[ax - 1] = len;
    }
    Ok(single(n, g))
}

/// Axis and sizes of a Split on an activation.
fn split_args(n: &NodeProto, ctx: &Ctx) -> Result<(Vec<usize>, usize, Vec<usize>), GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let rank = x.len() + 1;
    let ax = norm_axis(n, Attrs::of(n).int("axis", 0)?, rank)?;
    if ax == 0 {
        return Err(node_err(n, "Split along the batch axis mixes samples"));
    }
    let len = x[ax - 1];
    let sizes: Vec<usize> = match n.input.get(1).filter(|s| !s.is_empty()) {
        Some(name) => ctx.const_i64(n, name)?.iter().map(|&v| v.max(0) as usize).collect(),
        None => match Attrs::of(n).ints("split")? {
            Some(v) => v.iter().map(|&v| v.max(0) as usize).collect(),
            None => {
                let k = n.output.len().max(1);
                let part = len.div_ceil(k);
                (0..k).map(|i| part.min(len.saturating_sub(i * part))).collect()
            }
        },
    };
    if sizes.len() != n.output.len() || sizes.iter().sum::<usize>() != len {
        return Err(node_err(n, format!("split sizes {sizes:?} do not cover {len} along axis {ax}")));
    }
    Ok((x, ax, sizes))
}

/// Every output's per-sample shape.
pub(super) fn split_shapes(n: &NodeProto, ctx: &Ctx) -> Result<Vec<(String, Vec<usize>)>, GradError> {
    let (x, ax, sizes) = split_args(n, ctx)?;
    Ok(n.output
        .iter()
        .zip(sizes)
        .map(|(o, s)| {
            let mut v = x.clone();
            v[ax - 1] = s;
            (o.clone(), v)
        })
        .collect())
}

fn split_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let mut all = split_shapes(n, ctx)?;
    Ok(all.remove(0).1)
}

/// The outputs' gradients concatenated along the split axis: the Split's input gradient.
pub(super) fn split_join(n: &NodeProto, ctx: &mut Ctx, grads: &[String]) -> Result<String, GradError> {
    let (_, ax, _) = split_args(n, ctx)?;
    let refs: Vec<&str> = grads.iter().map(String::as_str).collect();
    Ok(ctx.b.op("Concat", &refs, vec![attr::int("axis", ax as i64)]))
}

fn split(n: &NodeProto, dy: &str, _: &mut Ctx) -> Result<Grads, GradError> {
    Ok(single(n, dy.to_string()))
}

/// The target shape of an Expand (the batch size read from a `Shape` is [`BATCH`]).
fn expand_target(n: &NodeProto, ctx: &Ctx) -> Result<Vec<i64>, GradError> {
    ctx.const_i64(n, n.input.get(1).map(String::as_str).unwrap_or(""))
}

pub(super) fn expands_to_batch(n: &NodeProto, ctx: &Ctx) -> bool {
    n.op_type == "Expand"
        && n.input.first().is_some_and(|d| ctx.consts.contains_key(d))
        && n.input
            .get(1)
            .and_then(|t| ctx.consts.get(t))
            .is_some_and(|_| expand_target(n, ctx).is_ok_and(|t| t.iter().any(|&d| is_batch_derived(d))))
}

fn expand_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let target = expand_target(n, ctx)?;
    let data_const = !ctx.is_act(&n.input[0]);
    let mut full: Vec<i64> = if data_const {
        ctx.const_dims(n, &n.input[0])?.iter().map(|&d| d as i64).collect()
    } else {
        let mut f = vec![BATCH];
        f.extend(ctx.shape(n, &n.input[0])?.iter().map(|&d| d as i64));
        f
    };
    let r = full.len().max(target.len());
    while full.len() < r {
        full.insert(0, 1);
    }
    let off = r - target.len();
    for (i, &t) in target.iter().enumerate() {
        let d = &mut full[i + off];
        if is_batch_derived(t) || is_batch_derived(*d) {
            if i + off != 0 || (t != BATCH && is_batch_derived(t)) {
                return Err(node_err(n, "Expand must keep the batch axis first"));
            }
            *d = BATCH;
        } else if *d == 1 {
            *d = t.max(1);
        } else if t != 1 && t != *d {
            return Err(node_err(n, format!("cannot expand {full:?} to {target:?}")));
        }
    }
    if full[0] != BATCH {
        return Err(node_err(n, "Expand's output must carry the batch axis first"));
    }
    Ok(full[1..].iter().map(|&d| d as usize).collect())
}

/// The expanded (or tiled) constant of a class token (more than one value) is a parameter.
pub(super) fn expand_params(n: &NodeProto, s: &Scope) -> Vec<(usize, ParamKind)> {
    let data = &n.input[0];
    match s.ctx.consts.get(data) {
        Some(t) if t.dims.iter().product::<i64>() > 1 && !s.ctx.is_act(data) => vec![(0, ParamKind::Embedding)],
        _ => vec![],
    }
}

/// The adjoint of Expand: the gradient summed over the expanded axes; for an expanded
/// parameter, its per-sample squared norm.
fn expand(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let out = ctx.shape(n, &n.output[0])?;
    let data = n.input[0].clone();
    let rank = out.len() + 1;
    let in_dims: Vec<usize> = if ctx.is_act(&data) {
        let mut d = vec![1];
        d.extend(ctx.shape(n, &data)?);
        d
    } else {
        ctx.const_dims(n, &data)?
    };
    let off = rank - in_dims.len();
    let axes: Vec<i64> =
        (1..rank).filter(|&a| a < off || (in_dims[a - off] == 1 && out[a - 1] != 1)).map(|a| a as i64).collect();
    let summed = if axes.is_empty() { dy.to_string() } else { ctx.b.reduce("ReduceSum", dy, &axes, true) };
    if ctx.is_param(&data) {
        let norm = ctx.b.sample_sq_norm(&summed, rank);
        ctx.add_norm(n, &data, norm)?;
        return Ok(vec![]);
    }
    if !ctx.wants_grad(&data) {
        return Ok(vec![]);
    }
    let xs = ctx.shape(n, &data)?;
    Ok(single(n, ctx.b.reshape_batch(&summed, &xs)))
}
