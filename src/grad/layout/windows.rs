//! Spatial operators over a tensor whose batch is merged with windows or heads
//! (`[N*k, C, h, w]`): the stored `[N, k.., C, h, w]` is read as `[N, k*C, h, w]`, the operator
//! applied, its output stored back.
//!
//! - **Pooling** (`MaxPool`, `AveragePool`, global pools) works channel by channel, so `k*C`
//!   channels are the windows' channels side by side.
//! - **`Conv`** (EfficientViT-M's local-window attention convolves each window) becomes a grouped
//!   Conv with `k` copies of the weight side by side (group `k * group`). Each window's weight
//!   gradient lands on its own copy, so the feature is the windows' squared gradient norms summed
//!   (of the copies' tensor, `<weight>/per<k>`) where the weight's own would be the norm of their
//!   sum, as for a weight tied on purpose (`shared.rs`).

use super::{ints, Layout};
use crate::grad::{node_err, Ctx, GradError};
use crate::onnx::{self, attr, Attrs, NodeProto, TensorProto};

/// The nodes computing `n` on the stored tensor, and the output's layout (the input's).
pub(super) fn conv(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<(Vec<NodeProto>, Option<Layout>), GradError> {
    let input @ [k, _, h, w] = merged(n, ctx, l, "a Conv")?;
    let a = Attrs::of(n);
    let group = a.int("group", 1)?.max(1) as usize;
    let weight =
        ctx.consts.get(&n.input[1]).cloned().ok_or_else(|| node_err(n, "the Conv weight must be a constant"))?;
    let wd: Vec<usize> = weight.dims.iter().map(|&d| d as usize).collect();
    if wd.len() != 4 {
        return Err(node_err(n, "only 2-D convolutions are supported over a merged batch"));
    }
    let tiled = |ctx: &mut Ctx, t: &TensorProto| -> Result<String, GradError> {
        let v: Vec<f32> = onnx::tensor_f32(t)?.iter().copied().collect();
        let mut dims: Vec<usize> = t.dims.iter().map(|&d| d as usize).collect();
        dims[0] *= k;
        let name = format!("{}/per{k}", t.name);
        let rep = onnx::make_tensor_f32(&name, &dims, &v.repeat(k));
        ctx.b.inits.push(rep.clone());
        ctx.consts.insert(name.clone(), rep);
        Ok(name)
    };
    let mut m = n.clone();
    m.input = vec![String::new(), tiled(ctx, &weight)?];
    if let Some(b) = n.input.get(2).filter(|s| !s.is_empty()) {
        let bias = ctx.consts.get(b).cloned().ok_or_else(|| node_err(n, "the Conv bias must be a constant"))?;
        m.input.push(tiled(ctx, &bias)?);
    }
    m.attribute.retain(|p| p.name != "group");
    m.attribute.push(attr::int("group", (k * group) as i64));
    let (ho, wo) = (out_len(n, &a, h, wd[2], 0)?, out_len(n, &a, w, wd[3], 1)?);
    Ok((around(n, ctx, l, m, input, [k, wd[0], ho, wo]), Some(l)))
}

/// A pooling node on the stored tensor (its attributes unchanged: pooling is per channel).
pub(super) fn pool(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<(Vec<NodeProto>, Option<Layout>), GradError> {
    let input @ [k, c, h, w] = merged(n, ctx, l, "pooling")?;
    let a = Attrs::of(n);
    let (ho, wo) = if n.op_type.starts_with("Global") {
        (1, 1)
    } else {
        let kernel = a.ints("kernel_shape")?.unwrap_or_default();
        let (kh, kw) = match kernel.as_slice() {
            [kh, kw] => (*kh as usize, *kw as usize),
            _ => return Err(node_err(n, "only 2-D pooling is supported over a merged batch")),
        };
        if a.int("ceil_mode", 0)? != 0 {
            return Err(node_err(n, "ceil_mode pooling over a merged batch is not supported"));
        }
        (out_len(n, &a, h, kh, 0)?, out_len(n, &a, w, kw, 1)?)
    };
    Ok((around(n, ctx, l, n.clone(), input, [k, c, ho, wo]), Some(l)))
}

/// The merged input's `[k, C, h, w]` (windows per sample, channels, map), refusing a batch
/// merged into another axis than the first.
fn merged(n: &NodeProto, ctx: &Ctx, l: Layout, what: &str) -> Result<[usize; 4], GradError> {
    let din = l.orig(&ctx.shape(n, &n.input[0])?);
    match din.as_slice() {
        &[_, c, h, w] if l.axis == 0 => Ok([l.outer * l.inner, c, h, w]),
        _ => Err(node_err(n, format!("{what} over a batch merged into an axis other than the first is not supported"))),
    }
}

/// `m` (the node, its other inputs and attributes already set) applied to the stored input
/// (per-sample `[k, C, h, w]`) read as `[N, k*C, h, w]`, and its output stored back from
/// per-sample `out` = `[k, C', h', w']` under the node's output name.
fn around(
    n: &NodeProto,
    ctx: &mut Ctx,
    l: Layout,
    mut m: NodeProto,
    input: [usize; 4],
    out: [usize; 4],
) -> Vec<NodeProto> {
    let x = n.input[0].clone();
    let [k, c, h, w] = input;
    let target = ints(ctx, "layout_windows_in", &[0, (k * c) as i64, h as i64, w as i64]);
    let x4 = ctx.b.fresh("layout_windows_in");
    let y4 = ctx.b.fresh("layout_windows_out");
    m.input[0] = x4.clone();
    m.output = vec![y4.clone()];
    let mut back = vec![0i64];
    back.extend(l.store(&out).iter().map(|&d| d as i64));
    let back = ints(ctx, "layout_windows_back", &back);
    vec![
        onnx::make_node("Reshape", &format!("{x4}/node"), &[&x, &target], &[&x4], vec![]),
        m,
        onnx::make_node("Reshape", &format!("{y4}/back"), &[&y4, &back], &[&n.output[0]], vec![]),
    ]
}

/// A Conv's or pool's output length along spatial axis `i` (0: height, 1: width) for input
/// length `len`.
fn out_len(n: &NodeProto, a: &Attrs, len: usize, kernel: usize, i: usize) -> Result<usize, GradError> {
    let get = |name: &str, default: i64, at: usize| -> Result<i64, GradError> {
        Ok(a.ints(name)?.and_then(|v| v.get(at).copied()).unwrap_or(default))
    };
    let (s, d) = (get("strides", 1, i)?.max(1), get("dilations", 1, i)?.max(1));
    let keff = (kernel as i64 - 1) * d + 1;
    let len = len as i64;
    let out = match a.string("auto_pad", "NOTSET")?.as_str() {
        "SAME_UPPER" | "SAME_LOWER" => (len + s - 1) / s,
        "VALID" => (len - keff) / s + 1,
        _ => (len + get("pads", 0, i)? + get("pads", 0, i + 2)? - keff) / s + 1,
    };
    usize::try_from(out).ok().filter(|&o| o > 0).ok_or_else(|| node_err(n, "the Conv's output would be empty"))
}
