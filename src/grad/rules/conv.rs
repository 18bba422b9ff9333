//! Convolution: `Conv` (2-D, grouped, strided, dilated, padded), with its weight-norm plans.

use super::window::{col2im, conv_attrs, geom, live_taps, one_hot_taps, Geom};
use super::{act_input, Grads, Params, Rule};
use crate::grad::{node_err, ConvNorm, Ctx, GradError, ParamKind};
use crate::onnx::{attr, Attrs, NodeProto};

/// The convolution rules.
pub(super) const RULES: &[Rule] = &[Rule {
    op: "Conv",
    params: Params::Inputs(&[(1, ParamKind::Weight), (2, ParamKind::Bias)]),
    shape: conv_shape,
    backward: conv_backward,
}];

fn conv_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    act_input(n, ctx, 0)?;
    let (g, _, _, cout) = conv_geom(n, ctx)?;
    Ok(vec![cout, g.out[0], g.out[1]])
}

/// Geometry, group count, input and output channels of a Conv.
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

/// Cost of writing one patch value, in multiply-adds (see `conv_backward`).
const PATCH_WEIGHT: usize = 20;
/// Cost of moving one Gram-window value, in multiply-adds.
const WINDOW_WEIGHT: usize = 40;

/// Largest output map (positions per channel) for which `auto` takes the depthwise plan. Above
/// it the im2col plan's per-sample-and-channel cost is the smaller one: measured on the zoo's
/// MobileNetV2 (16x16 and 8x8 maps: im2col faster) and MNASNet (4x4 and 2x2 maps with 5x5
/// kernels: the depthwise plan 2-5x faster per layer), ONNX Runtime CPU.
const DEPTHWISE_MAX_OUT: usize = 16;

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

/// `||dW||^2` of a depthwise Conv (one input and one output channel per group): the per-sample
/// gradient is `C x k x k` values, `dW[c, a, b] = sum_p x_pad[c, p*s + (a,b)*d] * delta[c, p]`.
/// Computed channels-last, so every op runs over whole rows of `C` values: the `k*k` strided
/// windows of the padded input (Slice; only those that read the map, [`live_taps`]),
/// concatenated `[N, taps, Ho, Wo, C]`, times `delta`,
/// summed over the window. ONNX Runtime's grouped Conv and batched MatMul (the im2col plan) pay
/// a fixed cost per sample and channel, which dominates on small feature maps.
fn depthwise_norm(ctx: &mut Ctx, x: &str, dy: &str, g: &Geom, c: usize, gain: Option<&[f32]>) -> String {
    let [pt, pl, pb, pr] = g.pads.map(|p| p as i64);
    let mut xt = ctx.b.transpose(x, &[0, 2, 3, 1]);
    if g.pads != [0; 4] {
        xt = ctx.b.pad(&xt, &[0, pt, pl, 0, 0, pb, pr, 0], 0.0);
    }
    let (hp, wp) = (g.inp[0] as i64 + pt + pb, g.inp[1] as i64 + pl + pr);
    let xu = ctx.b.reshape_to(&xt, &[-1, 1, hp, wp, c as i64]);
    let (s, d) = (g.s.map(|v| v as i64), g.d.map(|v| v as i64));
    let span = [(g.out[0] as i64 - 1) * s[0] + 1, (g.out[1] as i64 - 1) * s[1] + 1];
    // Only the taps that read the map: the others' gradients are zero.
    let mut windows = Vec::new();
    for (a, b) in live_taps(g) {
        let st = [a as i64 * d[0], b as i64 * d[1]];
        windows.push(ctx.b.slice_steps(&xu, &st, &[st[0] + span[0], st[1] + span[1]], &[2, 3], &s));
    }
    let patches = if windows.len() == 1 {
        windows.remove(0)
    } else {
        let refs: Vec<&str> = windows.iter().map(String::as_str).collect();
        ctx.b.op("Concat", &refs, vec![attr::int("axis", 1)])
    };
    let dt = ctx.b.transpose(dy, &[0, 2, 3, 1]);
    let du = ctx.b.reshape_to(&dt, &[-1, 1, g.out[0] as i64, g.out[1] as i64, c as i64]);
    let prod = ctx.b.mul(&patches, &du);
    let mut gw = ctx.b.reduce("ReduceSum", &prod, &[2, 3], false);
    if let Some(k) = gain {
        let kc = ctx.b.const_f32("conv_gain", &[c], k);
        gw = ctx.b.mul(&gw, &kc);
    }
    ctx.b.reduce("ReduceSumSquare", &gw, &[1, 2], false)
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
    // The true output gradient is dy * gain[channel] when a BatchNormalization after this Conv
    // folded its gain in here (see `bn_backward`).
    let gain = ctx.gain.remove(&n.output[0]);
    if gain.as_ref().is_some_and(|k| k.len() != cout) {
        return Err(node_err(n, "internal: BatchNormalization gain does not match the Conv's channels"));
    }

    if let Some(bias) = n.input.get(2).filter(|s| !s.is_empty()) {
        if ctx.is_param(bias) {
            let mut s = ctx.b.reduce("ReduceSum", dy, &[2, 3], false);
            if let Some(k) = &gain {
                let kc = ctx.b.const_f32("conv_gain", &[cout], k);
                s = ctx.b.mul(&s, &kc);
            }
            let norm = ctx.b.reduce("ReduceSumSquare", &s, &[1], false);
            ctx.add_norm(n, bias, norm)?;
        }
    }

    if ctx.is_param(&wname) {
        let (norm, plan_name) = weight_norm(ctx, &x, dy, &g, group, cin, cout, gain.as_deref());
        ctx.conv_plans.push((wname.clone(), plan_name));
        ctx.add_norm(n, &wname, norm)?;
    }

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

/// The per-sample squared norm of a Conv's weight gradient and the name of the plan chosen:
/// [`depthwise_norm`] for depthwise Convs, else the cheapest of im2col, ghost and pixel-Gram.
/// Costs per sample: multiply-adds, plus the memory traffic of forming patches (kg*L values) or
/// of summing Gram windows (k*k*L^2 values), weighted by what those cost relative to a
/// multiply-add in ONNX Runtime's CPU kernels (fitted on ResNet-18 layers).
#[allow(clippy::too_many_arguments)]
fn weight_norm(
    ctx: &mut Ctx,
    x: &str,
    dy: &str,
    g: &Geom,
    group: usize,
    cin: usize,
    cout: usize,
    gain: Option<&[f32]>,
) -> (String, &'static str) {
    let (kh, kw) = (g.k[0], g.k[1]);
    let (cin_g, cout_g) = (cin / group, cout / group);
    let l = g.out[0] * g.out[1];
    // Patches of the taps that read the map only (the others are zero: small maps under wide
    // padded kernels).
    let taps = live_taps(g);
    let kg = cin_g * taps.len();
    let pointwise = kh == 1 && kw == 1 && g.s == [1, 1] && g.pads == [0; 4];
    let patch_cost = if pointwise { 0 } else { PATCH_WEIGHT * kg * l };
    let im2col_cost = cout_g * kg * l + patch_cost;
    let ghost_cost = l * l * (cout_g + kg) + patch_cost;
    let lp = window_extent(g, 0) * window_extent(g, 1);
    let pixel_cost = lp * lp * cin + l * l * cout + WINDOW_WEIGHT * kh * kw * l * l;
    let depthwise = cin_g == 1 && cout_g == 1 && group > 1;
    if depthwise
        && (ctx.conv_norm == ConvNorm::Depthwise || (ctx.conv_norm == ConvNorm::Auto && l <= DEPTHWISE_MAX_OUT))
    {
        return (depthwise_norm(ctx, x, dy, g, cin, gain), "depthwise");
    }
    // Forcing the depthwise plan leaves the other Convs to the cost model.
    let mode = if ctx.conv_norm == ConvNorm::Depthwise { ConvNorm::Auto } else { ctx.conv_norm };
    let plan = match mode {
        ConvNorm::Auto if group == 1 && pixel_cost < im2col_cost.min(ghost_cost) => ConvNorm::PixelGram,
        ConvNorm::Auto if ghost_cost < im2col_cost => ConvNorm::Ghost,
        ConvNorm::Auto => ConvNorm::Im2col,
        ConvNorm::PixelGram if group != 1 => ConvNorm::Ghost,
        other => other,
    };
    // The Gram-based plans need the scaled gradient (they square sums over channels); im2col
    // squares per output channel first, so it weights those squares by gain^2 instead.
    let dy_scaled = match (gain, plan) {
        (Some(k), ConvNorm::PixelGram | ConvNorm::Ghost) => {
            let kc = ctx.b.const_f32("conv_gain", &[cout, 1, 1], k);
            ctx.b.mul(dy, &kc)
        }
        _ => dy.to_string(),
    };
    let norm = if plan == ConvNorm::PixelGram {
        pixel_gram_norm(ctx, x, &dy_scaled, g, cin, cout)
    } else {
        // Patches P [N, g, Cin_g*k*k, L] and delta [N, g, Cout_g, L].
        let patches = if pointwise {
            x.to_string()
        } else {
            let e = one_hot_taps(cin, kh, kw, &taps);
            let e = ctx.b.const_f32("im2col_kernel", &[cin * taps.len(), 1, kh, kw], &e);
            ctx.b.op("Conv", &[x, &e], conv_attrs(g, cin, g.pads))
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
            let rows = match gain {
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
    (norm, plan_name)
}
