//! Normalisation: `BatchNormalization` in inference form (scale and shift are parameters), and
//! `LRN`, the local response normalisation across channels of AlexNet, GoogLeNet v1 and the
//! Caffe-converted classifiers of the ONNX model zoo.

use super::{act_input, single, Grads, Params, Rule};
use crate::grad::{node_err, Ctx, GradError, ParamKind};
use crate::onnx::{attr, Attrs, NodeProto};

/// The normalisation rules.
pub(super) const RULES: &[Rule] = &[
    Rule {
        op: "BatchNormalization",
        params: Params::Inputs(&[(1, ParamKind::BnScale), (2, ParamKind::BnShift)]),
        shape: bn_shape,
        backward: bn_backward,
    },
    Rule { op: "LRN", params: Params::None, shape: lrn_shape, backward: lrn_backward },
];

fn lrn_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    if x.len() < 2 || Attrs::of(n).int("size", 0)? < 1 {
        return Err(node_err(n, "LRN needs a channel axis and spatial axes, and a size of at least 1"));
    }
    Ok(x)
}

/// The sum over each channel's window of `t` (`[N, C, ...]` of per-sample shape `shape`), the
/// window reaching `before` channels down and `after` up (zeros beyond the ends): a Conv of ones
/// over the channels laid out as the height of a one-channel image.
fn channel_window_sum(ctx: &mut Ctx, t: &str, shape: &[usize], before: usize, after: usize) -> String {
    let (c, l) = (shape[0] as i64, shape[1..].iter().product::<usize>() as i64);
    let tr = ctx.b.reshape_to(t, &[-1, 1, c, l]);
    let size = before + after + 1;
    let ones = ctx.b.const_f32("lrn_window", &[1, 1, size, 1], &vec![1.0; size]);
    let pads = attr::ints("pads", &[before as i64, 0, after as i64, 0]);
    let sum = ctx.b.op("Conv", &[&tr, &ones], vec![pads]);
    ctx.b.reshape_batch(&sum, shape)
}

/// `y = x s^-beta` with `s = bias + alpha / size * sum over the window of x^2` (the window: from
/// `(size - 1) / 2` channels below to the rest above): `dx = dy s^-beta - 2 alpha beta / size *
/// x * sum over the mirrored window of dy x s^(-beta - 1)`.
fn lrn_backward(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let a = Attrs::of(n);
    let (alpha, beta, bias) = (a.float("alpha", 1e-4)?, a.float("beta", 0.75)?, a.float("bias", 1.0)?);
    let size = a.int("size", 1)?.max(1) as usize;
    let x = n.input[0].clone();
    let shape = ctx.shape(n, &x)?;
    let (below, above) = ((size - 1) / 2, size / 2);
    let x2 = ctx.b.mul(&x, &x);
    let win = channel_window_sum(ctx, &x2, &shape, below, above);
    let scaled = ctx.b.scale(&win, alpha / size as f32);
    let bias_c = ctx.b.scalar(bias);
    let s = ctx.b.add(&scaled, &bias_c);
    let neg_beta = ctx.b.scalar(-beta);
    let t = ctx.b.op("Pow", &[&s, &neg_beta], vec![]);
    let direct = ctx.b.mul(dy, &t);
    let dyx = ctx.b.mul(dy, &x);
    let dyxt = ctx.b.mul(&dyx, &t);
    let u = ctx.b.op("Div", &[&dyxt, &s], vec![]);
    // Channel c's window holds j exactly when j's mirrored window holds c.
    let back = channel_window_sum(ctx, &u, &shape, above, below);
    let xb = ctx.b.mul(&x, &back);
    let cross = ctx.b.scale(&xb, 2.0 * alpha * beta / size as f32);
    Ok(single(n, ctx.b.sub(&direct, &cross)))
}

fn bn_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let x = ctx.shape(n, act_input(n, ctx, 0)?)?;
    if Attrs::of(n).int("training_mode", 0)? != 0 || n.output.len() > 1 {
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

/// Where a BatchNormalization's output can be read back from for `x_hat`, so the BN output
/// itself is never needed and ONNX Runtime can fuse Conv+BN+Relu (and the residual Add) as in
/// the plain forward. Returns `(value, subtract)`: `bn_out == value - subtract` wherever the
/// gradient at the BN output is non-zero.
fn bn_output_source(n: &NodeProto, ctx: &Ctx) -> (String, Option<String>) {
    let y = &n.output[0];
    let relu_out = |t: &str| ctx.sole_reader(t).filter(|r| r.op_type == "Relu").map(|r| r.output[0].clone());
    match ctx.sole_reader(y) {
        // The gradient at y is zero where the Relu (or a Clip, ReLU6) clipped; elsewhere y is
        // its output.
        Some(r) if r.op_type == "Relu" || r.op_type == "Clip" => (r.output[0].clone(), None),
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
    let var = ctx.const_f32(n, &n.input[4])?;
    let c = xs[0];
    let mut cdims = vec![c];
    cdims.extend(std::iter::repeat_n(1, xs.len() - 1));
    let inv: Vec<f32> = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
    let rank = xs.len() + 1;
    let spatial: Vec<i64> = (2..rank as i64).collect();

    let (with_scale, with_shift) = (ctx.is_param(&n.input[1]), ctx.is_param(&n.input[2]));
    if with_scale || with_shift {
        let gb = if spatial.is_empty() { dy.to_string() } else { ctx.b.reduce("ReduceSum", dy, &spatial, false) };
        if with_scale {
            let gs = scale_grad(n, dy, ctx, &gb, &spatial)?;
            let ns = ctx.b.reduce("ReduceSumSquare", &gs, &[1], false);
            ctx.add_norm(n, &n.input[1], ns)?;
        }
        if with_shift {
            let nb = ctx.b.reduce("ReduceSumSquare", &gb, &[1], false);
            ctx.add_norm(n, &n.input[2], nb)?;
        }
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

/// `dScale` per sample and channel, `[N, C]`, given `gb`, the output gradient summed over
/// the `spatial` axes.
fn scale_grad(n: &NodeProto, dy: &str, ctx: &mut Ctx, gb: &str, spatial: &[i64]) -> Result<String, GradError> {
    let x = n.input[0].clone();
    let xs = ctx.shape(n, &x)?;
    let eps = Attrs::of(n).float("epsilon", 1e-5)?;
    let scale = ctx.const_f32(n, &n.input[1])?;
    let bias = ctx.const_f32(n, &n.input[2])?;
    let mean = ctx.const_f32(n, &n.input[3])?;
    let var = ctx.const_f32(n, &n.input[4])?;
    let c = xs[0];
    let mut cdims = vec![c];
    cdims.extend(std::iter::repeat_n(1, xs.len() - 1));
    let inv: Vec<f32> = var.iter().map(|&v| 1.0 / (v + eps).sqrt()).collect();
    // dScale = sum(dy * x_hat). x_hat is read back from the output, x_hat = (y - B) / scale,
    // so that the BN input stays unused and ONNX Runtime folds BN into the Conv before it; the
    // shift and 1/scale are applied after the spatial sum, on [N, C]:
    // sum(dy * x_hat) = (sum(dy * y) - B * sum(dy)) / scale. From the input when a scale is
    // near zero (dividing by it would amplify rounding).
    Ok(if scale.iter().all(|s| s.abs() > 1e-3) && !spatial.is_empty() {
        let (src, minus) = bn_output_source(n, ctx);
        let src = match minus {
            Some(o) => ctx.b.sub(&src, &o),
            None => src,
        };
        let prod = ctx.b.mul(dy, &src);
        let raw = ctx.b.reduce("ReduceSum", &prod, spatial, false);
        let b_c = ctx.b.const_f32("bn_shift", &[c], &bias.iter().copied().collect::<Vec<_>>());
        let rs: Vec<f32> = scale.iter().map(|s| 1.0 / s).collect();
        let rs_c = ctx.b.const_f32("bn_inv_scale", &[c], &rs);
        let shifted = ctx.b.mul(gb, &b_c);
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
            ctx.b.reduce("ReduceSum", &gx, spatial, false)
        }
    })
}
