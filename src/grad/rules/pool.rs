//! Pooling and reductions: `MaxPool`, `AveragePool`, `GlobalAveragePool`, `GlobalMaxPool`,
//! `ReduceMean`, `ReduceSum`, `ReduceMax`, `ReduceL2` (ConvNeXtV2's global response norm). The
//! global and reduced maxima pass the gradient to the maximum, split evenly among ties (as
//! `torch.amax` and TensorFlow's `reduce_max`, which Keras's `GlobalMaxPooling2D` exports to).

use super::window::{col2im, conv_attrs, geom, one_hot_kernel, Geom};
use super::{act_input, norm_axis, single, Grads, Params, Rule};
use crate::grad::{node_err, Ctx, GradError};
use crate::onnx::{attr, Attrs, NodeProto};

/// The pooling rules.
pub(super) const RULES: &[Rule] = &[
    Rule { op: "MaxPool", params: Params::None, shape: max_pool_shape, backward: max_pool },
    Rule { op: "AveragePool", params: Params::None, shape: average_pool_shape, backward: average_pool },
    Rule {
        op: "GlobalAveragePool",
        params: Params::None,
        shape: global_average_pool_shape,
        backward: global_average_pool,
    },
    Rule { op: "ReduceMean", params: Params::None, shape: reduce_mean_shape, backward: reduce_mean },
    Rule { op: "ReduceSum", params: Params::None, shape: reduce_mean_shape, backward: reduce_sum },
    Rule { op: "ReduceMax", params: Params::None, shape: reduce_mean_shape, backward: reduce_max },
    Rule { op: "ReduceL2", params: Params::None, shape: reduce_mean_shape, backward: reduce_l2 },
    Rule { op: "GlobalMaxPool", params: Params::None, shape: global_average_pool_shape, backward: global_max_pool },
];

/// Geometry and channels of a 2-D pooling node.
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

fn reduce_axes(n: &NodeProto, ctx: &Ctx, rank: usize) -> Result<Vec<usize>, GradError> {
    let a = Attrs::of(n);
    let raw = super::axes(n, ctx)?;
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
fn max_pool_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    if n.output.len() > 1 && n.output[1..].iter().any(|o| !o.is_empty()) {
        return Err(node_err(n, "MaxPool's Indices output is not supported"));
    }
    let (g, c) = pool_geom(n, ctx)?;
    Ok(vec![c, g.out[0], g.out[1]])
}

fn average_pool_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let (g, c) = pool_geom(n, ctx)?;
    if g.d != [1, 1] {
        return Err(node_err(n, "dilated AveragePool is not supported"));
    }
    Ok(vec![c, g.out[0], g.out[1]])
}

fn global_average_pool_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    let mut o = vec![x[0]];
    o.extend(std::iter::repeat_n(1, x.len() - 1));
    Ok(o)
}

fn reduce_mean_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let a = Attrs::of(n);
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

/// MaxPool's backward: by scatter where it can, else by windows (TensorRT, or overlapping
/// windows at opsets 11 and 12; 13 to 15 are read as 16, `opset.rs`).
fn max_pool(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let (g, c) = pool_geom(n, ctx)?;
    let overlap = (0..2).any(|i| g.s[i] < g.keff(i));
    let dx = if ctx.tensorrt || (overlap && ctx.b.opset < 16) {
        max_pool_windows(n, dy, ctx, &g, c)
    } else {
        max_pool_scatter(n, dy, ctx, &g, c, overlap)
    };
    Ok(single(n, dx))
}

/// MaxPool's backward from its own argmax: the pool run again with its `Indices` output (the
/// flat position, batch and channel included, of each window's first maximum in scan order,
/// PyTorch's tie rule) and `dy` put there by `ScatterElements`, adding up where overlapping
/// windows pick the same input (reduction `add`, opset 16). One pass over the input, where
/// [`max_pool_windows`] reads every window's patch, its mask and a ConvTranspose: GoogLeNet's
/// gradient graph 1.3x faster, ResNet-18's 1.15x (the zoo fixtures, batch 16, CPU).
fn max_pool_scatter(n: &NodeProto, dy: &str, ctx: &mut Ctx, g: &Geom, c: usize, overlap: bool) -> String {
    let x = n.input[0].clone();
    // Row-major indices whatever the forward asked for (`storage_order` changes only them).
    let attrs: Vec<_> = n.attribute.iter().filter(|a| a.name != "storage_order").cloned().collect();
    let (vals, idx) = (ctx.b.fresh("maxpool_values"), ctx.b.fresh("maxpool_indices"));
    let name = format!("{idx}/node");
    ctx.b.nodes.push(crate::onnx::make_node("MaxPool", &name, &[&x], &[&vals, &idx], attrs));
    let shape = ctx.b.op("Shape", &[&x], vec![]);
    let zeros = ctx.b.op("ConstantOfShape", &[&shape], vec![]);
    let flat = [-1i64];
    let (zeros, idx, dyf) =
        (ctx.b.reshape_to(&zeros, &flat), ctx.b.reshape_to(&idx, &flat), ctx.b.reshape_to(dy, &flat));
    let mut attrs = vec![attr::int("axis", 0)];
    if overlap {
        attrs.push(attr::string("reduction", "add"));
    }
    let dx = ctx.b.op("ScatterElements", &[&zeros, &idx, &dyf], attrs);
    ctx.b.reshape_to(&dx, &[-1, c as i64, g.inp[0] as i64, g.inp[1] as i64])
}

/// MaxPool's backward for TensorRT, and for overlapping windows where `ScatterElements` has no
/// reduction (opsets 11 and 12): each window's patch (a one-hot Conv), its first maximum by
/// `ArgMax`, and `dy` put back by ConvTranspose.
fn max_pool_windows(n: &NodeProto, dy: &str, ctx: &mut Ctx, g: &Geom, c: usize) -> String {
    let x = n.input[0].clone();
    let kk = g.k[0] * g.k[1];
    let l = g.out[0] * g.out[1];
    let eh = ((g.out[0] - 1) * g.s[0] + g.keff(0)).saturating_sub(g.inp[0] + g.pads[0] + g.pads[2]);
    let ew = ((g.out[1] - 1) * g.s[1] + g.keff(1)).saturating_sub(g.inp[1] + g.pads[1] + g.pads[3]);
    let pads = [0, 0, g.pads[0], g.pads[1], 0, 0, g.pads[2] + eh, g.pads[3] + ew].map(|p| p as i64);
    // Padding never wins a max (as in PyTorch): pad with the lowest finite float.
    let xp = if pads.iter().any(|&p| p != 0) { ctx.b.pad(&x, &pads, f32::MIN) } else { x.clone() };
    let e = one_hot_kernel(c, g.k[0], g.k[1]);
    let e = ctx.b.const_f32("window_kernel", &[c * kk, 1, g.k[0], g.k[1]], &e);
    let p = ctx.b.op("Conv", &[&xp, &e], conv_attrs(g, c, [0; 4]));
    let pr = ctx.b.reshape_to(&p, &[-1, c as i64, kk as i64, l as i64]);
    // First maximum in scan order gets the gradient (PyTorch's tie rule).
    let am = ctx.b.op(
        "ArgMax",
        &[&pr],
        // select_last_index defaults to 0 (and does not exist before opset 12).
        vec![attr::int("axis", 2), attr::int("keepdims", 1)],
    );
    let range: Vec<i64> = (0..kk as i64).collect();
    let r = ctx.b.fresh("window_index");
    ctx.b.inits.push(crate::onnx::make_tensor_i64(&r, &[1, 1, kk, 1], &range));
    let mask = ctx.b.equal_mask(&am, &r);
    let dyr = ctx.b.reshape_to(dy, &[-1, c as i64, 1, l as i64]);
    let dp = ctx.b.mul(&mask, &dyr);
    let dp = ctx.b.reshape_to(&dp, &[-1, (c * kk) as i64, g.out[0] as i64, g.out[1] as i64]);
    // The same windows read back onto the unpadded input (col2im crops the padding).
    col2im(ctx, &dp, &e, c, g)
}

fn average_pool(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
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
    Ok(single(n, col2im(ctx, &scaled, &w, c, &g)))
}

fn global_average_pool(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let x = n.input[0].clone();
    let xs = ctx.shape(n, &x)?;
    let hw: usize = xs[1..].iter().product();
    let mut dims = vec![1, 1];
    dims.extend(&xs[1..]);
    let c = ctx.b.const_f32("gap_spread", &dims, &vec![1.0 / hw as f32; hw]);
    Ok(single(n, ctx.b.mul(dy, &c)))
}

fn reduce_mean(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    spread(n, dy, ctx, true)
}

fn reduce_sum(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    spread(n, dy, ctx, false)
}

/// A reduction's axes, its input's per-sample shape and that shape with the reduced axes kept
/// (size 1).
type Reduced = (Vec<usize>, Vec<usize>, Vec<usize>);

fn reduced(n: &NodeProto, ctx: &Ctx) -> Result<Reduced, GradError> {
    let xs = ctx.shape(n, &n.input[0])?;
    let axes = reduce_axes(n, ctx, xs.len() + 1)?;
    let kept: Vec<usize> = xs.iter().enumerate().map(|(i, &d)| if axes.contains(&(i + 1)) { 1 } else { d }).collect();
    Ok((axes, xs, kept))
}

/// `dy` spread back over the reduced axes: each input gets it (a sum), or a share (a mean).
fn spread(n: &NodeProto, dy: &str, ctx: &mut Ctx, mean: bool) -> Result<Grads, GradError> {
    let (axes, xs, kept) = reduced(n, ctx)?;
    let dyk = ctx.b.reshape_batch(dy, &kept);
    let count: usize = axes.iter().map(|&a| xs[a - 1]).product();
    let mut dims = vec![1];
    dims.extend(xs.iter().enumerate().map(|(i, &d)| if axes.contains(&(i + 1)) { d } else { 1 }));
    let numel: usize = dims.iter().product();
    let v = if mean { 1.0 / count.max(1) as f32 } else { 1.0 };
    let c = ctx.b.const_f32("mean_spread", &dims, &vec![v; numel]);
    Ok(single(n, ctx.b.mul(&dyk, &c)))
}

/// `dy` to where `x` equals the maximum `y` (kept axes, broadcast), split among ties.
fn to_maxima(n: &NodeProto, ctx: &mut Ctx, dyk: &str, y: &str, axes: &[i64]) -> Grads {
    let x = n.input[0].clone();
    let mask = ctx.b.equal_mask(&x, y);
    let ties = ctx.b.reduce("ReduceSum", &mask, axes, true);
    let share = ctx.b.op("Div", &[dyk, &ties], vec![]);
    single(n, ctx.b.mul(&mask, &share))
}

/// A reduction's axes, and `dy` and the output `y` with the reduced axes kept (size 1), so that
/// they broadcast against the input.
fn kept_dy_y(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<(Vec<i64>, String, String), GradError> {
    let (axes, _, kept) = reduced(n, ctx)?;
    let dyk = ctx.b.reshape_batch(dy, &kept);
    let y = ctx.b.reshape_batch(&n.output[0], &kept);
    Ok((axes.iter().map(|&a| a as i64).collect(), dyk, y))
}

fn reduce_max(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let (axes, dyk, y) = kept_dy_y(n, dy, ctx)?;
    Ok(to_maxima(n, ctx, &dyk, &y, &axes))
}

/// `y = ||x||` over the axes: `dx = dy * x / y`, and 0 where `y` is 0 (then every `x` there is
/// 0, and dividing by the smallest normal float keeps it 0).
fn reduce_l2(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let (_, dyk, y) = kept_dy_y(n, dy, ctx)?;
    let tiny = ctx.b.scalar(f32::MIN_POSITIVE);
    let safe = ctx.b.op("Max", &[&y, &tiny], vec![]);
    let ratio = ctx.b.op("Div", &[&n.input[0], &safe], vec![]);
    Ok(single(n, ctx.b.mul(&ratio, &dyk)))
}

fn global_max_pool(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let xs = ctx.shape(n, &n.input[0])?;
    let axes: Vec<i64> = (2..xs.len() as i64 + 1).collect();
    let y = n.output[0].clone();
    Ok(to_maxima(n, ctx, dy, &y, &axes))
}
