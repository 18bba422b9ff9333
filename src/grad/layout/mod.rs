//! Activations whose batch axis is not first and alone, stored batch-first.
//!
//! Transformers move and merge the batch axis: torchvision's multi-head attention works on
//! `[L, N, E]` and `[N*heads, L, d]`, timm's fused projection permutes to `[3, N, heads, L, d]`,
//! Swin and TinyViT attend over `[N*windows, tokens, C]`, MobileViT over `[N*patch, tokens, C]`,
//! and LeViT normalises `[N*tokens, C]`. The rules need the batch first and alone (a per-sample
//! gradient norm sums over one sample's positions only), so each such tensor is *stored*
//! batch-first: the original axis that holds the batch, of size `outer * N * inner`, is split,
//! `N` moves to the front and `outer` and `inner` stay where the axis was (each dropped when 1).
//! The other axes keep their order, so a constant operand only needs a reshape.
//!
//! A node that reads or writes such a tensor is rewritten to the same computation on the
//! stored form: a `Transpose` gets the permutation of the stored axes, a reshape (`Reshape`,
//! `Flatten`, `Squeeze`, `Unsqueeze`) a per-sample target, an axis attribute the stored axis, a
//! `Gemm` on `[L*N, E]` becomes `MatMul` + `Add`, a `BatchNormalization` over `[N*L, C]` runs
//! between two transposes, and a `Shape` of the tensor still yields the original shape (for
//! the shape arithmetic exporters write). Samples never mix, and the rules differentiate the
//! rewritten nodes as any others. An operator whose meaning depends on the merged axis itself
//! (a `Conv` over windows) is refused by name.
//!
//! In a fixed-batch export the targets are literals: which axis the batch joins is read off
//! the element order, and where that leaves a choice (the batch at the boundary of two axes)
//! the batch goes alone if an axis is just the batch, then never into the last (feature) axis,
//! then to the start of the later axis (`[L, N*heads, d]`, as PyTorch code writes it).

mod target;
mod windows;

use super::fold::{is_batch_derived, BATCH};
use super::rules::{self, norm_axis};
use super::{node_err, Ctx, GradError};
use crate::onnx::{self, attr, Attrs, NodeProto, TensorProto};
use target::{product, reshape_layout};

/// Where the batch sits in an activation's original shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Layout {
    /// The original axis holding the batch.
    pub axis: usize,
    /// The slower-varying part of that axis outside the batch.
    pub outer: usize,
    /// The faster-varying part of that axis outside the batch.
    pub inner: usize,
}

impl Layout {
    /// The batch first and alone: the stored tensor is the original one.
    pub const STANDARD: Layout = Layout { axis: 0, outer: 1, inner: 1 };

    fn is_standard(&self) -> bool {
        *self == Self::STANDARD
    }

    /// Stored axes that stand for the batch axis (besides `N`).
    fn extra(&self) -> usize {
        usize::from(self.outer > 1) + usize::from(self.inner > 1)
    }

    /// Original rank (batch axis included) of a tensor stored with per-sample shape `stored`.
    fn rank(&self, stored: &[usize]) -> usize {
        stored.len() + 1 - self.extra()
    }

    /// The original shape, the batch axis given as its per-sample share `outer * inner`.
    fn orig(&self, stored: &[usize]) -> Vec<usize> {
        let mut v = stored[..self.axis].to_vec();
        v.push(self.outer * self.inner);
        v.extend_from_slice(&stored[self.axis + self.extra()..]);
        v
    }

    /// The stored per-sample shape of original dims `orig` (batch axis as its share).
    fn store(&self, orig: &[usize]) -> Vec<usize> {
        let mut v = orig[..self.axis].to_vec();
        v.extend([self.outer, self.inner].into_iter().filter(|&d| d > 1));
        v.extend_from_slice(&orig[self.axis + 1..]);
        v
    }

    /// The stored axis (batch at 0) of original axis `j`, which is not the batch axis.
    fn stored(&self, j: usize) -> usize {
        if j < self.axis {
            j + 1
        } else {
            j + self.extra()
        }
    }
}

/// The layout of activation `name` (standard unless a rewrite recorded another).
fn layout(ctx: &Ctx, name: &str) -> Layout {
    ctx.layouts.get(name).copied().unwrap_or(Layout::STANDARD)
}

/// Operators computed element by element (with broadcasting): they keep their input's layout.
const POINTWISE: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Erf",
    "Gelu",
    "Tanh",
    "Pow",
    "Sqrt",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Mish",
    "Exp",
    "Log",
    "Neg",
    "Abs",
    "Reciprocal",
    "Sin",
    "Cos",
    "Tan",
    "Asin",
    "Acos",
    "Atan",
    "Sinh",
    "Cosh",
    "Asinh",
    "Acosh",
    "Atanh",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Sum",
    "Identity",
    "Dropout",
    "Cast",
    "Where",
    "Max",
    "Min",
    "Greater",
    "Less",
    "GreaterOrEqual",
    "LessOrEqual",
    "Equal",
    "And",
    "Or",
    "Not",
];

/// The nodes that compute `n` on stored tensors, when `n` reads or writes an activation whose
/// batch is not first and alone (`None`: `n` needs no rewrite). Records the outputs' layouts
/// and the replacement nodes for the compiled graph.
pub(super) fn rewrite(n: &NodeProto, ctx: &mut Ctx) -> Result<Option<Vec<NodeProto>>, GradError> {
    let acts: Vec<&String> = n.input.iter().filter(|s| ctx.is_act(s)).collect();
    let Some(first) = acts.first() else { return Ok(None) };
    let odd = acts.iter().any(|s| !layout(ctx, s).is_standard());
    let l = layout(ctx, first);
    let op = n.op_type.as_str();
    let (nodes, out) = match op {
        "Transpose" => match transpose(n, ctx, l, odd)? {
            Some(r) => r,
            None => return Ok(None),
        },
        "Reshape" | "Flatten" | "Squeeze" | "Unsqueeze" => match reshape(n, ctx, l, odd)? {
            Some(r) => r,
            None => return Ok(None),
        },
        _ if !odd => return Ok(None),
        "Shape" | "Size" => (shape(n, ctx, l)?, None),
        "MatMul" => (matmul(n, ctx, l)?, Some(l)),
        "Gemm" => (gemm(n, ctx, l)?, Some(l)),
        "BatchNormalization" => (batchnorm(n, ctx, l)?, Some(l)),
        "Softmax" | "LogSoftmax" | "LayerNormalization" | "Concat" | "Split" => (along(n, ctx, l)?, Some(l)),
        "Gather" => gather(n, ctx, l)?,
        "GatherND" => gather_nd(n, ctx, l)?,
        "Slice" => (slice(n, ctx, l)?, Some(l)),
        "Pad" => (pad(n, ctx, l)?, Some(l)),
        "Expand" => (expand(n, ctx, l)?, Some(l)),
        "Conv" => windows::conv(n, ctx, l)?,
        "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" => windows::pool(n, ctx, l)?,
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "ReduceL2" => reduce(n, ctx, l)?,
        _ if POINTWISE.contains(&op) => (pointwise(n, ctx, l)?, Some(l)),
        _ => {
            return Err(node_err(
                n,
                format!(
                    "reads a tensor whose batch axis is merged with or moved behind another axis (axis {} of the \
                     original, {} x batch x {}: heads, windows or patches); gradwatch follows Transpose, reshapes, \
                     MatMul, Gemm, Softmax, LayerNormalization, BatchNormalization, Gather, GatherND, Slice, Pad, Expand, \
                     Conv, pooling, Split, Concat, reductions and elementwise operators there, not {op}: apply it with the batch axis first",
                    l.axis, l.outer, l.inner
                ),
            ))
        }
    };
    if let Some(out) = out {
        for o in n.output.iter().filter(|o| !o.is_empty()) {
            if out.is_standard() {
                ctx.layouts.remove(o);
            } else {
                ctx.layouts.insert(o.clone(), out);
            }
        }
    }
    if let Some(o) = n.output.first() {
        ctx.replaced.insert(o.clone(), nodes.clone());
    }
    ctx.moved = true;
    Ok(Some(nodes))
}

/// `n` with its inputs replaced (same name, outputs and attributes unless given).
fn with_inputs(n: &NodeProto, inputs: Vec<String>, attrs: Option<Vec<onnx::AttributeProto>>) -> NodeProto {
    let mut m = n.clone();
    m.input = inputs;
    if let Some(a) = attrs {
        m.attribute = a;
    }
    m
}

/// An `int64` constant for a rewritten node's input.
fn ints(ctx: &mut Ctx, hint: &str, v: &[i64]) -> String {
    let name = ctx.b.const_i64(hint, v);
    ctx.consts.insert(name.clone(), onnx::make_tensor_i64(&name, &[v.len()], v));
    name
}

/// The stored axis of original axis `axis`, refusing the batch axis.
fn map_axis(n: &NodeProto, l: Layout, axis: i64, rank: usize) -> Result<i64, GradError> {
    let j = norm_axis(n, axis, rank)?;
    if j == l.axis {
        return Err(node_err(n, format!("works along axis {j}, which holds the batch: it would mix samples")));
    }
    Ok(l.stored(j) as i64)
}

/// `n` with its axes (constant input 1 where it has one, else the attribute) replaced by `axes`.
fn set_axes(n: &NodeProto, ctx: &mut Ctx, axes: &[i64]) -> NodeProto {
    if n.input.get(1).is_some_and(|s| !s.is_empty()) {
        let name = ints(ctx, "axes", axes);
        let mut inputs = n.input.clone();
        inputs[1] = name;
        with_inputs(n, inputs, None)
    } else {
        let mut m = n.clone();
        m.attribute.retain(|a| a.name != "axes");
        m.attribute.push(attr::ints("axes", axes));
        m
    }
}

type Rewritten = (Vec<NodeProto>, Option<Layout>);

fn transpose(n: &NodeProto, ctx: &mut Ctx, l: Layout, odd: bool) -> Result<Option<Rewritten>, GradError> {
    let x = &n.input[0];
    let rank = l.rank(&ctx.shape(n, x)?);
    let perm = Attrs::of(n).ints("perm")?.unwrap_or_else(|| (0..rank as i64).rev().collect());
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..rank as i64).collect::<Vec<_>>() {
        return Err(node_err(n, format!("perm {perm:?} is not a permutation of rank {rank}")));
    }
    if !odd && perm[0] == 0 {
        return Ok(None);
    }
    let at = perm.iter().position(|&p| p as usize == l.axis).unwrap_or(0);
    let mut sp = vec![0i64];
    for (k, &p) in perm.iter().enumerate() {
        if k == at {
            sp.extend((0..l.extra()).map(|e| (l.axis + 1 + e) as i64));
        } else {
            sp.push(l.stored(p as usize) as i64);
        }
    }
    let out = Layout { axis: at, ..l };
    let m = with_inputs(n, n.input.clone(), Some(vec![attr::ints("perm", &sp)]));
    Ok(Some((vec![m], Some(out))))
}

fn reshape(n: &NodeProto, ctx: &mut Ctx, l: Layout, odd: bool) -> Result<Option<Rewritten>, GradError> {
    let x = n.input[0].clone();
    let stored = ctx.shape(n, &x)?;
    let din = l.orig(&stored);
    let rank = din.len();
    let share = |j: usize| if j == l.axis { l.outer * l.inner } else { din[j] };
    let batch_entry = |c: usize| -> Result<i64, GradError> {
        BATCH.checked_mul(c as i64).ok_or_else(|| node_err(n, "tensor too large to follow the batch through"))
    };
    let attrs = Attrs::of(n);
    let (t, allowzero) = match n.op_type.as_str() {
        "Reshape" => {
            let name = n.input.get(1).map(String::as_str).unwrap_or("");
            let Ok(mut t) = ctx.const_i64(n, name) else {
                if odd {
                    return Err(node_err(n, "the target shape must be a constant (or computed from shapes)"));
                }
                return Ok(None);
            };
            // A fixed-batch export's literal, which the batch rewrite read as batch-first.
            if let Some(lit) = ctx.literal_targets.get(name).filter(|_| odd) {
                t = lit.clone();
            }
            (t, attrs.int("allowzero", 0)? != 0)
        }
        "Flatten" => {
            let k = norm_axis(n, attrs.int("axis", 1)?, rank + 1)?;
            let (g0, g1) = (product(&din[..k]), product(&din[k..]));
            let t = if l.axis < k { vec![batch_entry(g0)?, g1 as i64] } else { vec![g0 as i64, batch_entry(g1)?] };
            (t, false)
        }
        "Squeeze" => {
            let axes = rules::axes(n, ctx)?;
            let axes: Vec<usize> = match axes {
                Some(v) => v.iter().map(|&a| norm_axis(n, a, rank)).collect::<Result<_, _>>()?,
                None => (0..rank).filter(|&j| j != l.axis && din[j] == 1).collect(),
            };
            if axes.contains(&l.axis) {
                if !odd {
                    return Ok(None);
                }
                return Err(node_err(n, "squeezes the axis that holds the batch"));
            }
            let t = (0..rank)
                .filter(|j| !axes.contains(j))
                .map(|j| if j == l.axis { batch_entry(share(j)) } else { Ok(din[j] as i64) })
                .collect::<Result<Vec<_>, _>>()?;
            (t, false)
        }
        _ => {
            let axes = rules::axes(n, ctx)?;
            let out_rank = rank + axes.as_ref().map_or(0, Vec::len);
            let axes: Vec<usize> =
                axes.unwrap_or_default().iter().map(|&a| norm_axis(n, a, out_rank)).collect::<Result<_, _>>()?;
            let mut src = 0..rank;
            let mut t = Vec::with_capacity(out_rank);
            for k in 0..out_rank {
                if axes.contains(&k) {
                    t.push(1);
                } else {
                    let j = src.next().ok_or_else(|| node_err(n, "bad Unsqueeze axes"))?;
                    t.push(if j == l.axis { batch_entry(share(j))? } else { din[j] as i64 });
                }
            }
            (t, false)
        }
    };
    let r = match reshape_layout(n, &din, l, &t, allowzero, ctx.fixed_batch) {
        Ok(r) => r,
        // The rule reports what it makes of a reshape of a batch-first tensor.
        Err(_) if !odd => return Ok(None),
        Err(e) => return Err(e),
    };
    if !odd && r.layout.is_standard() {
        return Ok(None);
    }
    let mut target = vec![0i64];
    target.extend(r.layout.store(&r.dims).iter().map(|&d| d as i64));
    let shape = ints(ctx, "layout_target", &target);
    let m = onnx::make_node("Reshape", &n.name, &[&x, &shape], &[&n.output[0]], vec![]);
    Ok(Some((vec![m], Some(r.layout))))
}

/// `Shape` (or `Size`) of a stored tensor: the original's, computed from the stored batch.
fn shape(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Vec<NodeProto>, GradError> {
    let x = n.input[0].clone();
    let din = l.orig(&ctx.shape(n, &x)?);
    let rank = din.len() as i64;
    let a = Attrs::of(n);
    let (start, end) = if n.op_type == "Size" {
        (0, rank)
    } else {
        let clamp = |v: i64| (if v < 0 { v + rank } else { v }).clamp(0, rank);
        (clamp(a.int("start", 0)?), clamp(a.int("end", rank)?))
    };
    let keep: Vec<usize> = (start.max(0) as usize..end.max(start) as usize).collect();
    let out = n.output[0].clone();
    let node = |op: &str, name: String, inputs: &[&str], output: &str, attrs| {
        onnx::make_node(op, &name, inputs, &[output], attrs)
    };
    let mut nodes = Vec::new();
    let n_of = ctx.b.fresh("layout_batch");
    let first = ints(ctx, "layout_first", &[0]);
    let sh = ctx.b.fresh("layout_shape");
    nodes.push(node("Shape", format!("{sh}/node"), &[&x], &sh, vec![]));
    nodes.push(node("Gather", format!("{n_of}/node"), &[&sh, &first], &n_of, vec![attr::int("axis", 0)]));
    let share = ints(ctx, "layout_share", &[(l.outer * l.inner) as i64]);
    let merged = ctx.b.fresh("layout_merged");
    nodes.push(node("Mul", format!("{merged}/node"), &[&n_of, &share], &merged, vec![]));
    if n.op_type == "Size" {
        let rest = ints(ctx, "layout_rest", &[(product(&din) / (l.outer * l.inner)) as i64]);
        let m = ctx.b.fresh("layout_size");
        nodes.push(node("Mul", format!("{m}/node"), &[&merged, &rest], &m, vec![]));
        let scalar = ints(ctx, "layout_scalar", &[]);
        nodes.push(node("Reshape", n.name.clone(), &[&m, &scalar], &out, vec![]));
        return Ok(nodes);
    }
    let mut parts: Vec<String> = Vec::new();
    let mut run: Vec<i64> = Vec::new();
    for &j in &keep {
        if j == l.axis {
            if !run.is_empty() {
                parts.push(ints(ctx, "layout_dims", &run));
                run.clear();
            }
            parts.push(merged.clone());
        } else {
            run.push(din[j] as i64);
        }
    }
    if !run.is_empty() || parts.is_empty() {
        parts.push(ints(ctx, "layout_dims", &run));
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    nodes.push(node("Concat", n.name.clone(), &refs, &out, vec![attr::int("axis", 0)]));
    Ok(nodes)
}

/// A constant operand reshaped to the stored layout of an activation of original rank `rank`
/// (unchanged when it does not reach the batch axis).
fn relayout_const(n: &NodeProto, ctx: &mut Ctx, name: &str, l: Layout, rank: usize) -> Result<String, GradError> {
    let t = ctx.consts.get(name).ok_or_else(|| node_err(n, format!("input '{name}' must be a constant")))?;
    let rc = t.dims.len();
    if rc + l.axis < rank {
        return Ok(name.to_string());
    }
    if rc > rank {
        return Err(node_err(n, format!("constant '{name}' has more axes than the activation")));
    }
    let mut aligned = vec![1i64; rank - rc];
    aligned.extend(&t.dims);
    if aligned[l.axis] != 1 {
        return Err(node_err(
            n,
            format!("constant '{name}' varies along the axis that holds the batch (size {})", aligned[l.axis]),
        ));
    }
    let mut dims = vec![1i64];
    dims.extend(&aligned[..l.axis]);
    dims.extend(std::iter::repeat_n(1, l.extra()));
    dims.extend(&aligned[l.axis + 1..]);
    let fresh = ctx.b.fresh("layout_const");
    let mut c: TensorProto = t.clone();
    c.name = fresh.clone();
    c.dims = dims;
    let origin = ctx.param_name(name).to_string();
    ctx.origin.insert(fresh.clone(), origin);
    ctx.b.inits.push(c.clone());
    ctx.consts.insert(fresh.clone(), c);
    Ok(fresh)
}

/// The original rank of every activation input, which must share layout `l`.
fn same_layout(n: &NodeProto, ctx: &Ctx, l: Layout) -> Result<usize, GradError> {
    let mut rank = None;
    for s in n.input.iter().filter(|s| ctx.is_act(s)) {
        let r = layout(ctx, s).rank(&ctx.shape(n, s)?);
        if layout(ctx, s) != l || rank.is_some_and(|q| q != r) {
            return Err(node_err(
                n,
                "combines activations that hold the batch in different axes (one merged with heads, windows or \
                 patches, one not); gradwatch cannot pair their samples",
            ));
        }
        rank = Some(r);
    }
    rank.ok_or_else(|| node_err(n, "no activation input"))
}

fn pointwise(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Vec<NodeProto>, GradError> {
    let rank = same_layout(n, ctx, l)?;
    let mut inputs = n.input.clone();
    for s in inputs.iter_mut().filter(|s| !s.is_empty()) {
        if !ctx.is_act(s) && ctx.consts.contains_key(s.as_str()) {
            *s = relayout_const(n, ctx, s, l, rank)?;
        }
    }
    Ok(vec![with_inputs(n, inputs, None)])
}

fn along(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Vec<NodeProto>, GradError> {
    let rank = same_layout(n, ctx, l)?;
    let op = n.op_type.as_str();
    if op == "Concat" && n.input.iter().any(|s| !ctx.is_act(s)) {
        return Err(node_err(n, "concatenates a constant to a tensor whose batch is merged with another axis"));
    }
    let default = match op {
        "Softmax" | "LogSoftmax" if ctx.b.opset < 13 => 1,
        "Softmax" | "LogSoftmax" | "LayerNormalization" => -1,
        _ => 0,
    };
    let axis = norm_axis(n, Attrs::of(n).int("axis", default)?, rank)?;
    if op == "LayerNormalization" && axis <= l.axis {
        return Err(node_err(n, "normalises over the axis that holds the batch: it would mix samples"));
    }
    if matches!(op, "Softmax" | "LogSoftmax") && ctx.b.opset < 13 && axis + 1 != rank {
        return Err(node_err(n, "Softmax before opset 13 over several axes; convert the model to opset 13"));
    }
    let stored = map_axis(n, l, axis as i64, rank)?;
    let mut m = n.clone();
    m.attribute.retain(|a| a.name != "axis");
    m.attribute.push(attr::int("axis", stored));
    Ok(vec![m])
}

fn gather(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Rewritten, GradError> {
    let x = n.input[0].clone();
    let idx = n.input.get(1).cloned().unwrap_or_default();
    if !ctx.is_act(&x) || ctx.is_act(&idx) {
        return Err(node_err(n, "gathers by computed indices from a tensor whose batch is merged with another axis"));
    }
    let rank = l.rank(&ctx.shape(n, &x)?);
    let axis = norm_axis(n, Attrs::of(n).int("axis", 0)?, rank)?;
    let stored = map_axis(n, l, axis as i64, rank)?;
    let q = ctx.const_dims(n, &idx)?.len();
    let out = if l.axis < axis { l } else { Layout { axis: l.axis + q - 1, ..l } };
    let mut m = n.clone();
    m.attribute.retain(|a| a.name != "axis");
    m.attribute.push(attr::int("axis", stored));
    Ok((vec![m], Some(out)))
}

/// `GatherND` by constant indices (`batch_dims` 0) into leading original axes that do not hold
/// the batch, as PyTorch's dynamo exporter writes an adaptive pooling that enlarges its map
/// (VGG and AlexNet on small inputs: the map moved behind the batch, then gathered window by
/// window): those axes, first in the stored tensor too, flattened into one and read by a Gather.
fn gather_nd(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Rewritten, GradError> {
    let x = n.input[0].clone();
    let idx = n.input.get(1).cloned().unwrap_or_default();
    if !ctx.is_act(&x) || ctx.is_act(&idx) || Attrs::of(n).int("batch_dims", 0)? != 0 {
        return Err(node_err(n, "GatherND by computed indices, or with batch_dims, is not supported"));
    }
    let stored = ctx.shape(n, &x)?;
    let ishape = ctx.const_dims(n, &idx)?;
    let q = ishape.last().copied().unwrap_or(0);
    if q == 0 || q > l.axis {
        return Err(node_err(n, "GatherND into the axis that holds the batch: it would mix samples"));
    }
    let dims = &stored[..q];
    let ids = ctx.const_i64(n, &idx)?;
    let mut flat = Vec::with_capacity(ids.len() / q);
    for tuple in ids.chunks(q) {
        let mut f = 0i64;
        for (&i, &d) in tuple.iter().zip(dims) {
            let i = if i < 0 { i + d as i64 } else { i };
            if !(0..d as i64).contains(&i) {
                return Err(node_err(n, format!("index {i} out of range for a dim of {d}")));
            }
            f = f * d as i64 + i;
        }
        flat.push(f);
    }
    let mut target = vec![0, dims.iter().product::<usize>() as i64];
    target.extend(stored[q..].iter().map(|&d| d as i64));
    let target = ints(ctx, "gathernd_flat", &target);
    let lead = &ishape[..ishape.len() - 1];
    let flat_idx = ctx.b.fresh("gathernd_index");
    let t = onnx::make_tensor_i64(&flat_idx, lead, &flat);
    ctx.b.inits.push(t.clone());
    ctx.consts.insert(flat_idx.clone(), t);
    let merged = ctx.b.fresh(&format!("{}/flat", n.output[0]));
    let r = onnx::make_node("Reshape", &format!("{}/flat", n.name), &[&x, &target], &[&merged], vec![]);
    let g = onnx::make_node("Gather", &n.name, &[&merged, &flat_idx], &[&n.output[0]], vec![attr::int("axis", 1)]);
    Ok((vec![r, g], Some(Layout { axis: l.axis - q + lead.len(), ..l })))
}

/// `Expand` of a stored tensor to a target of its own rank: each original axis's size on its
/// stored axis; the batch's axis is not expanded (its entry may only repeat its size).
fn expand(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Vec<NodeProto>, GradError> {
    let x = n.input[0].clone();
    let stored_dims = ctx.shape(n, &x)?;
    let din = l.orig(&stored_dims);
    let t = ctx.const_i64(n, n.input.get(1).map(String::as_str).unwrap_or(""))?;
    if t.len() != din.len() {
        return Err(node_err(n, "an Expand that adds axes to a tensor whose batch is merged is not supported"));
    }
    let mut target = vec![1i64; stored_dims.len() + 1];
    for (j, &v) in t.iter().enumerate() {
        if j == l.axis {
            if !(v == 1 || v == din[j] as i64 || (is_batch_derived(v) && v % BATCH == 0)) {
                return Err(node_err(n, "expands the axis that holds the batch: it would mix samples"));
            }
            continue;
        }
        if is_batch_derived(v) {
            return Err(node_err(n, "the batch size enters an Expand target in a way gradwatch cannot follow"));
        }
        target[l.stored(j)] = v;
    }
    let name = ints(ctx, "layout_expand", &target);
    Ok(vec![with_inputs(n, vec![x, name], None)])
}

/// `Pad` of a stored tensor: each original axis's pads on its stored axis (none on the batch's).
fn pad(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Vec<NodeProto>, GradError> {
    let x = n.input[0].clone();
    let stored_dims = ctx.shape(n, &x)?;
    let rank = l.rank(&stored_dims);
    let orig = rules::pads(n, ctx, rank)?;
    let full = stored_dims.len() + 1;
    let mut pads = vec![0i64; 2 * full];
    for j in 0..rank {
        let (b, e) = (orig[j], orig[rank + j]);
        if b == 0 && e == 0 {
            continue;
        }
        if j == l.axis {
            return Err(node_err(n, "pads the axis that holds the batch: it would mix samples"));
        }
        let st = l.stored(j);
        (pads[st], pads[full + st]) = (b, e);
    }
    let name = ints(ctx, "layout_pads", &pads);
    let mut inputs = vec![x, name];
    if let Some(v) = n.input.get(2) {
        inputs.push(v.clone());
    }
    Ok(vec![with_inputs(n, inputs, None)])
}

fn slice(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Vec<NodeProto>, GradError> {
    let x = n.input[0].clone();
    let rank = l.rank(&ctx.shape(n, &x)?);
    let get = |i: usize| -> Result<Option<Vec<i64>>, GradError> {
        match n.input.get(i).filter(|s| !s.is_empty()) {
            Some(s) => Ok(Some(ctx.const_i64(n, s)?)),
            None => Ok(None),
        }
    };
    let (starts, ends) = match (get(1)?, get(2)?) {
        (Some(s), Some(e)) => (s, e),
        _ => return Err(node_err(n, "Slice needs constant starts and ends (opset 10 or newer)")),
    };
    let axes = get(3)?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = get(4)?.unwrap_or_else(|| vec![1; starts.len()]);
    let (mut s2, mut e2, mut a2, mut st2) = (vec![], vec![], vec![], vec![]);
    for k in 0..starts.len() {
        let j = norm_axis(n, axes[k], rank)?;
        if j == l.axis {
            // A full slice of the batch axis (x[:, ...]) is no slice.
            if starts[k] == 0 && ends[k] >= i32::MAX as i64 && steps[k] == 1 {
                continue;
            }
            return Err(node_err(n, "slices the axis that holds the batch: it would mix samples"));
        }
        s2.push(starts[k]);
        e2.push(ends[k]);
        a2.push(l.stored(j) as i64);
        st2.push(steps[k]);
    }
    if a2.is_empty() {
        let m = onnx::make_node("Identity", &n.name, &[&x], &[&n.output[0]], vec![]);
        return Ok(vec![m]);
    }
    let inputs = vec![
        x,
        ints(ctx, "layout_starts", &s2),
        ints(ctx, "layout_ends", &e2),
        ints(ctx, "layout_axes", &a2),
        ints(ctx, "layout_steps", &st2),
    ];
    Ok(vec![with_inputs(n, inputs, Some(vec![]))])
}

fn reduce(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Rewritten, GradError> {
    let x = n.input[0].clone();
    let rank = l.rank(&ctx.shape(n, &x)?);
    let axes = rules::axes(n, ctx)?;
    let axes: Vec<usize> = axes
        .filter(|v| !v.is_empty())
        .ok_or_else(|| node_err(n, "reduces over every axis, the batch included: it would mix samples"))?
        .iter()
        .map(|&a| norm_axis(n, a, rank))
        .collect::<Result<_, _>>()?;
    let stored: Vec<i64> = axes.iter().map(|&j| map_axis(n, l, j as i64, rank)).collect::<Result<_, _>>()?;
    let keep = Attrs::of(n).int("keepdims", 1)? != 0;
    let out = if keep { l } else { Layout { axis: l.axis - axes.iter().filter(|&&j| j < l.axis).count(), ..l } };
    Ok((vec![set_axes(n, ctx, &stored)], Some(out)))
}

fn matmul(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Vec<NodeProto>, GradError> {
    let (a, b) = (&n.input[0], &n.input[1]);
    let rank_of = |ctx: &Ctx, s: &str| -> Result<usize, GradError> {
        if ctx.is_act(s) {
            Ok(layout(ctx, s).rank(&ctx.shape(n, s)?))
        } else {
            Ok(ctx.const_dims(n, s)?.len())
        }
    };
    let (ra, rb) = (rank_of(ctx, a)?, rank_of(ctx, b)?);
    let refuse = |why: &str| {
        Err(node_err(n, format!("MatMul on a tensor whose batch is merged with another axis (axis {}): {why}", l.axis)))
    };
    match (ctx.is_act(a), ctx.is_act(b)) {
        (true, true) => {
            if same_layout(n, ctx, l)? != ra || ra != rb || l.axis + 2 >= ra {
                return refuse("the batch must sit in the leading (batched) axes of both operands");
            }
        }
        (true, false) => {
            // Rows and leading axes of the activation may hold the batch, not the contracted one;
            // a batched constant must not reach the batch axis.
            if l.axis + 1 >= ra || (rb > 2 && rb + l.axis >= ra) {
                return refuse("the batch would be contracted or broadcast against a batched constant");
            }
        }
        (false, true) => {
            if l.axis + 2 >= rb || ra + l.axis >= rb {
                return refuse("the batch must sit in the leading (batched) axes");
            }
        }
        (false, false) => return refuse("no activation"),
    }
    Ok(vec![n.clone()])
}

/// `Gemm` on `[L*N, K]`: `MatMul` by the (transposed) weight, then the bias.
fn gemm(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Vec<NodeProto>, GradError> {
    let a = Attrs::of(n);
    let (x, w) = (n.input[0].clone(), n.input[1].clone());
    if !ctx.is_act(&x) || ctx.is_act(&w) || a.int("transA", 0)? != 0 {
        return Err(node_err(
            n,
            "Gemm on a tensor whose batch is merged with another axis needs A the activation, untransposed",
        ));
    }
    if a.float("alpha", 1.0)? != 1.0 || a.float("beta", 1.0)? != 1.0 {
        return Err(node_err(
            n,
            "Gemm with alpha or beta other than 1 on a tensor whose batch is merged with another axis",
        ));
    }
    if l.axis != 0 {
        return Err(node_err(n, "Gemm contracts the axis that holds the batch"));
    }
    let mut nodes = Vec::new();
    let weight = if a.int("transB", 0)? != 0 {
        let t = ctx.b.fresh("layout_weight_t");
        nodes.push(onnx::make_node("Transpose", &format!("{t}/node"), &[&w], &[&t], vec![attr::ints("perm", &[1, 0])]));
        t
    } else {
        w
    };
    let out = n.output[0].clone();
    match n.input.get(2).filter(|s| !s.is_empty()) {
        Some(c) => {
            let mm = ctx.b.fresh("layout_gemm");
            nodes.push(onnx::make_node("MatMul", &format!("{}/matmul", n.name), &[&x, &weight], &[&mm], vec![]));
            nodes.push(onnx::make_node("Add", &n.name, &[&mm, c], &[&out], vec![]));
        }
        None => nodes.push(onnx::make_node("MatMul", &n.name, &[&x, &weight], &[&out], vec![])),
    }
    Ok(nodes)
}

/// `BatchNormalization` over a stored tensor: its channel axis moved to axis 1 and back.
fn batchnorm(n: &NodeProto, ctx: &mut Ctx, l: Layout) -> Result<Vec<NodeProto>, GradError> {
    let x = n.input[0].clone();
    let rank = l.rank(&ctx.shape(n, &x)?);
    if n.output.iter().skip(1).any(|o| !o.is_empty()) {
        return Err(node_err(n, "BatchNormalization's running-statistics outputs are not supported"));
    }
    let c = map_axis(n, l, 1, rank)? as usize;
    let full = ctx.shape(n, &x)?.len() + 1;
    let mut perm: Vec<i64> = vec![0, c as i64];
    perm.extend((1..full).filter(|&k| k != c).map(|k| k as i64));
    let mut inv = vec![0i64; full];
    for (k, &p) in perm.iter().enumerate() {
        inv[p as usize] = k as i64;
    }
    let (t, y) = (ctx.b.fresh("layout_bn_in"), ctx.b.fresh("layout_bn_out"));
    let mut inputs = n.input.clone();
    inputs[0] = t.clone();
    let mut bn = with_inputs(n, inputs, None);
    bn.output = vec![y.clone()];
    Ok(vec![
        onnx::make_node("Transpose", &format!("{t}/node"), &[&x], &[&t], vec![attr::ints("perm", &perm)]),
        bn,
        onnx::make_node(
            "Transpose",
            &format!("{}/back", n.name),
            &[&y],
            &[&n.output[0]],
            vec![attr::ints("perm", &inv)],
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_form_splits_the_batch_axis() {
        // [L, N*H, d] stored as [N, L, H, d].
        let l = Layout { axis: 1, outer: 1, inner: 4 };
        assert_eq!(l.store(&[7, 4, 16]), vec![7, 4, 16]);
        assert_eq!(l.orig(&[7, 4, 16]), vec![7, 4, 16]);
        assert_eq!(l.stored(0), 1);
        assert_eq!(l.stored(2), 3);
        let both = Layout { axis: 0, outer: 3, inner: 5 };
        assert_eq!(both.store(&[15, 8]), vec![3, 5, 8]);
        assert_eq!(both.orig(&[3, 5, 8]), vec![15, 8]);
        assert_eq!(both.rank(&[3, 5, 8]), 2);
    }
}
