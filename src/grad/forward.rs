//! The forward analysis: folds constant nodes, infers per-sample shapes through the rule table
//! and finds the parameter tensors (and the `fast` preset's stage cut).

use std::collections::{HashMap, HashSet};

use super::{affine, fold, layout, node_err, rules, unsupported, Ctx, GradError, ParamKind, ParamSelection};
use crate::onnx::{self, attr, GraphProto, NodeProto};

/// What the forward analysis found.
pub(super) struct Forward {
    /// The nodes to differentiate, in graph order (as rewritten: see [`as_strided`]).
    pub(super) nodes: Vec<NodeProto>,
    /// Input of the last Gemm/MatMul and its per-sample size (the penultimate features).
    pub(super) last_linear: Option<(String, usize)>,
    /// Every parameter tensor found, selected or not.
    pub(super) candidates: Vec<(String, ParamKind)>,
    /// For each candidate, the per-sample shape of its node's output (which stage it is in).
    pub(super) candidate_shapes: Vec<Vec<usize>>,
    /// Candidates for [`CompileOptions::act_stats`], in graph order: residual block outputs
    /// and the outputs of activations applied to a Conv's (or its norm's) output, each with its
    /// per-sample shape ([`Forward::activation_stats`] chooses).
    pub(super) stat_candidates: Vec<StatCandidate>,
}

/// A tensor whose per-sample mean square may become a forward-only feature.
#[derive(Clone, Debug)]
pub(super) struct StatCandidate {
    /// The tensor.
    pub tensor: String,
    /// Its per-sample shape.
    pub shape: Vec<usize>,
    /// A residual block's output (the `Add` of two activations, or the activation after it),
    /// rather than an activation's output.
    pub block: bool,
}

/// Activations whose output stands for a stage that has no residual join.
const STAGE_ACTIVATIONS: &[&str] = &[
    "Relu",
    "LeakyRelu",
    "PRelu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Gelu",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Mish",
    "Tanh",
];

impl Forward {
    /// The tensors whose mean square [`CompileOptions::act_stats`] adds, in graph order: every
    /// residual block's output, and for each convolutional stage (spatial resolution, as
    /// [`last_stages`] counts them) without one, its last Conv activation's output, so that the
    /// early layers of a CNN without residual blocks are represented too.
    pub(super) fn activation_stats(&self) -> Vec<(String, Vec<usize>)> {
        let blocks: Vec<&StatCandidate> = self.stat_candidates.iter().filter(|c| c.block).collect();
        let with_blocks: HashSet<usize> = blocks.iter().filter_map(|c| resolution(&c.shape)).collect();
        let block_names: HashSet<&str> = blocks.iter().map(|c| c.tensor.as_str()).collect();
        let mut last: HashMap<usize, usize> = HashMap::new();
        for (i, c) in self.stat_candidates.iter().enumerate().filter(|(_, c)| !c.block) {
            if let Some(r) = resolution(&c.shape).filter(|r| !with_blocks.contains(r)) {
                last.insert(r, i);
            }
        }
        let stage_last: HashSet<usize> = last.into_values().collect();
        self.stat_candidates
            .iter()
            .enumerate()
            .filter(|(i, c)| c.block || (stage_last.contains(i) && !block_names.contains(c.tensor.as_str())))
            .map(|(_, c)| (c.tensor.clone(), c.shape.clone()))
            .collect()
    }
}

/// Forward analysis through the rule table: per-sample shapes, parameter candidates and the
/// selected ones (`ctx.params`), and which values depend on a selected parameter.
pub(super) fn forward(
    graph: &GraphProto,
    needed: &[bool],
    producers: &HashMap<String, &NodeProto>,
    selection: &ParamSelection,
    ctx: &mut Ctx,
) -> Result<Forward, GradError> {
    let mut readers: HashMap<String, Vec<&NodeProto>> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|s| !s.is_empty()) {
            readers.entry(i.clone()).or_default().push(n);
        }
    }
    let graph_output = NodeProto::default();
    for o in &graph.output {
        readers.entry(o.name.clone()).or_default().push(&graph_output);
    }
    let mut after_param: HashSet<String> = HashSet::new();
    let mut fwd = Forward {
        nodes: Vec::new(),
        last_linear: None,
        candidates: Vec::new(),
        candidate_shapes: Vec::new(),
        stat_candidates: Vec::new(),
    };
    for (i, n) in graph.node.iter().enumerate() {
        if !needed[i] || n.output.iter().all(|o| ctx.consts.contains_key(o)) {
            continue;
        }
        // Batch-dependent indices (`torch.as_strided`'s export) are followed symbolically.
        if n.input.iter().any(|s| ctx.affine.contains_key(s)) || (n.op_type == "Range" && !ctx.is_act(&n.input[0])) {
            if let Some(a) = affine::fold_affine(n, &ctx.consts, &ctx.affine) {
                ctx.affine.insert(n.output[0].clone(), a);
                continue;
            }
        }
        // A flatten of the whole batch read back by batch-affine indices: rewritten per sample.
        let todo: Vec<NodeProto> = if let Some(rewritten) = as_strided(n, ctx)? {
            rewritten
        } else if is_batch_flatten(n, ctx, &readers) {
            continue;
        } else if let Some(stored) = layout::rewrite(n, ctx)? {
            // A tensor whose batch is not first and alone is stored batch-first.
            stored
        } else {
            vec![n.clone()]
        };
        for n in &todo {
            if !n.input.iter().any(|s| ctx.is_act(s)) || n.op_type == "Shape" {
                // Constants only (or a Shape): folded here, unless it is an Expand of a constant to
                // the batch size (a class token), which starts a batch-carrying value.
                if !rules::expands_to_batch(n, ctx) {
                    if !fold::can_fold(n, |s| ctx.consts.contains_key(s), |s| ctx.is_act(s))
                        && rules::find(&n.op_type).is_none()
                    {
                        return Err(unsupported(n));
                    }
                    for t in fold::fold(n, &ctx.consts, |s| ctx.shapes.get(s).cloned(), Some(ctx.b.opset))? {
                        ctx.consts.insert(t.name.clone(), t);
                    }
                    // A weight the exporter transposes or reshapes in the graph (the legacy
                    // exporter's MatMul by Transpose(W) without constant folding) keeps its name.
                    if fold::VIEWS.contains(&n.op_type.as_str()) {
                        if let (Some(x), Some(o)) = (n.input.first(), n.output.first()) {
                            let src = ctx.origin.get(x).cloned().unwrap_or_else(|| x.clone());
                            if graph.initializer.iter().any(|t| t.name == src) {
                                ctx.origin.insert(o.clone(), src);
                            }
                        }
                    }
                    continue;
                }
            }
            let rule = rules::find(&n.op_type).ok_or_else(|| unsupported(n))?;
            let shape = (rule.shape)(n, ctx)?;
            let out = n.output.first().ok_or_else(|| node_err(n, "node has no output"))?;
            // Multi-output operators (Split): every output's shape.
            let outs: Vec<(String, Vec<usize>)> = match rules::output_shapes(n, ctx)? {
                Some(v) => v,
                None => vec![(out.clone(), shape)],
            };
            for (o, s) in &outs {
                ctx.shapes.insert(o.clone(), s.clone());
            }
            let scope = rules::Scope { ctx, producers, readers: &readers, after_param: &after_param };
            let found: Vec<(String, ParamKind)> = rule
                .candidates(n, &scope)
                .into_iter()
                .filter(|(idx, _)| !computed_and_shared(graph, &readers, ctx, &n.input[*idx]))
                .map(|(idx, kind)| (ctx.param_name(&n.input[idx]).to_string(), kind))
                .collect();
            if !found.is_empty() || n.input.iter().any(|s| after_param.contains(s)) {
                after_param.extend(outs.iter().map(|(o, _)| o.clone()));
            }
            let selected: Vec<(String, ParamKind)> =
                found.iter().filter(|(p, k)| selection.selects(p, *k)).cloned().collect();
            if !selected.is_empty() || n.input.iter().any(|s| ctx.param_dep.contains(s)) {
                ctx.param_dep.extend(outs.iter().map(|(o, _)| o.clone()));
            }
            if matches!(n.op_type.as_str(), "Gemm" | "MatMul") {
                let a = &n.input[0];
                if let Some(s) = ctx.shapes.get(a) {
                    fwd.last_linear = Some((a.clone(), s.iter().product()));
                }
            }
            if let Some(c) = stat_candidate(n, ctx, producers, &readers, &after_param) {
                fwd.stat_candidates.push(c);
            }
            ctx.param_set.extend(selected.iter().map(|(p, _)| p.clone()));
            ctx.params.extend(selected);
            if let Some(s) = ctx.shapes.get(out) {
                fwd.candidate_shapes.extend(std::iter::repeat_n(s.clone(), found.len()));
            }
            fwd.candidates.extend(found);
            fwd.nodes.push(n.clone());
        }
    }
    let typos = selection.unmatched(&fwd.candidates);
    if !typos.is_empty() {
        let kinds: Vec<&str> = ParamKind::ALL.iter().map(|k| k.name()).collect();
        return Err(GradError::Model(format!(
            "--params {selection}: {} matches no parameter kind ({}) and no parameter tensor of the model",
            typos.join(", "),
            kinds.join(", ")
        )));
    }
    if ctx.params.is_empty() {
        return Err(GradError::Model(if fwd.candidates.is_empty() {
            "the model has no parameters (Conv/Gemm/MatMul/BatchNormalization weights)".into()
        } else {
            format!("--params {selection} selects none of the model's {} parameter tensors", fwd.candidates.len())
        }));
    }
    Ok(fwd)
}

/// Whether `n` flattens a whole batch of activations into one axis (`Reshape(x, [-1])`) that
/// only a Gather reads: recorded in `ctx.merged` for [`as_strided`], not analysed itself.
pub(super) fn is_batch_flatten(n: &NodeProto, ctx: &mut Ctx, readers: &HashMap<String, Vec<&NodeProto>>) -> bool {
    let (Some(x), Some(t), Some(o)) = (n.input.first(), n.input.get(1), n.output.first()) else { return false };
    let flat = n.op_type == "Reshape"
        && ctx.is_act(x)
        && ctx.consts.get(t).is_some_and(|t| onnx::tensor_i64(t).is_ok_and(|v| v.iter().eq([-1i64].iter())))
        && readers.get(o).is_some_and(|r| r.iter().all(|r| r.op_type == "Gather"));
    if flat {
        ctx.merged.insert(o.clone(), x.clone());
    }
    flat
}

/// `torch.as_strided` as the dynamo exporter writes it: `Gather(Reshape(x, [-1]), b * S + c)`
/// with `S` the per-sample size of `x` and offsets `c` inside one sample. Rewritten per sample
/// as `Gather(Reshape(x, [0, -1]), c, axis=1)` (the compiled graph holds the rewrite).
pub(super) fn as_strided(n: &NodeProto, ctx: &mut Ctx) -> Result<Option<Vec<NodeProto>>, GradError> {
    let (Some(flat), Some(idx)) = (n.input.first(), n.input.get(1)) else { return Ok(None) };
    let Some(x) = ctx.merged.get(flat).cloned() else { return Ok(None) };
    let aff = ctx.affine.get(idx).cloned().ok_or_else(|| {
        node_err(n, "reads a flatten of the whole batch by indices gradwatch cannot follow; keep the batch axis first")
    })?;
    let size: usize = ctx.shape(n, &x)?.iter().product();
    let inside = aff.c.iter().all(|&v| v >= 0 && (v as usize) < size);
    if n.op_type != "Gather" || onnx::Attrs::of(n).int("axis", 0)? != 0 || aff.k != size as i64 || !inside {
        return Err(node_err(n, "reads a flatten of the whole batch across samples; keep the batch axis first"));
    }
    let shape = ctx.b.const_i64("per_sample_flat", &[0, -1]);
    let offsets = ctx.b.fresh("per_sample_offsets");
    let cv: Vec<i64> = aff.c.iter().copied().collect();
    ctx.b.inits.push(onnx::make_tensor_i64(&offsets, aff.c.shape(), &cv));
    ctx.consts.insert(shape.clone(), onnx::make_tensor_i64(&shape, &[2], &[0, -1]));
    ctx.consts.insert(offsets.clone(), onnx::make_tensor_i64(&offsets, aff.c.shape(), &cv));
    let r = onnx::make_node("Reshape", &format!("{flat}/per_sample"), &[&x, &shape], &[flat], vec![]);
    let g = onnx::make_node(
        "Gather",
        &n.name,
        &[flat, &offsets],
        &n.output.iter().map(String::as_str).collect::<Vec<_>>(),
        vec![attr::int("axis", 1)],
    );
    ctx.replaced.insert(flat.clone(), vec![r.clone()]);
    ctx.replaced.insert(n.output[0].clone(), vec![g.clone()]);
    Ok(Some(vec![r, g]))
}

/// A per-sample shape's stage key: the product of its spatial dims (`[C, spatial...]`), `None`
/// for a vector (the head).
fn resolution(s: &[usize]) -> Option<usize> {
    (s.len() >= 2).then(|| s[1..].iter().product())
}

/// The names of the candidates in the last `stages` stages and the head: a stage is a run of
/// layers at one spatial resolution (per-sample shapes `[C, spatial...]`, by the product of the
/// spatial dims); the head is what comes after the spatial axes are gone (`[C]` outputs, e.g.
/// the classifier's Gemm after global pooling). With no stage and no head (a fully
/// convolutional classifier, whose last layer is a Conv before the pooling), the last layer:
/// the trailing candidates whose node outputs the last candidate's shape (a Conv with its norm).
pub(super) fn last_stages(fwd: &Forward, stages: usize) -> HashSet<String> {
    let mut order: Vec<usize> = Vec::new();
    for s in &fwd.candidate_shapes {
        if let Some(r) = resolution(s) {
            if order.last() != Some(&r) {
                order.retain(|&o| o != r);
                order.push(r);
            }
        }
    }
    let keep: HashSet<usize> = order.iter().rev().take(stages).copied().collect();
    let kept: HashSet<String> = fwd
        .candidates
        .iter()
        .zip(&fwd.candidate_shapes)
        .filter(|(_, s)| resolution(s).is_none_or(|r| keep.contains(&r)))
        .map(|((name, _), _)| name.clone())
        .collect();
    match fwd.candidate_shapes.last() {
        Some(last) if kept.is_empty() => fwd
            .candidates
            .iter()
            .zip(&fwd.candidate_shapes)
            .rev()
            .take_while(|(_, s)| *s == last)
            .map(|((name, _), _)| name.clone())
            .collect(),
        _ => kept,
    }
}

/// Node `n`'s [`StatCandidate`], if it is one: an activation applied to a Conv's (or its
/// norm's) output, the operator or written out in elementary operators, or a residual join
/// (`Add` of two activations), whose statistic is taken after the activation that follows it.
fn stat_candidate(
    n: &NodeProto,
    ctx: &Ctx,
    producers: &HashMap<String, &NodeProto>,
    readers: &HashMap<String, Vec<&NodeProto>>,
    after_param: &HashSet<String>,
) -> Option<StatCandidate> {
    let out = n.output.first()?;
    let shape = ctx.shapes.get(out)?.clone();
    let of_conv = n.input.first().is_some_and(|x| of_norm_or_conv(x, producers));
    if STAGE_ACTIVATIONS.contains(&n.op_type.as_str()) && of_conv && after_param.contains(&n.input[0]) {
        return Some(StatCandidate { tensor: out.clone(), shape, block: false });
    }
    let two_acts = n.input.len() == 2 && n.input.iter().all(|s| ctx.is_act(s));
    // An activation written out as its input times a function of it (`x * sigmoid(x)`, Erf- or
    // tanh-GELU, Mish or HardSwish in elementary operators, as older opsets export them) stands
    // for its Conv as the operator would; Erf-GELU's trailing `* 0.5` is followed.
    let gated = n.op_type == "Mul" && two_acts && n.input[0] != n.input[1];
    // (`pointwise_root` is only ever a Conv's or norm's output.)
    if gated && pointwise_root(out, ctx, producers, GATED_DEPTH).is_some_and(|r| after_param.contains(r)) {
        let scaled = match readers.get(out).map(Vec::as_slice) {
            Some([r])
                if matches!(r.op_type.as_str(), "Mul" | "Div")
                    && r.input.iter().any(|s| ctx.consts.contains_key(s)) =>
            {
                r.output.first().cloned()
            }
            _ => None,
        };
        let tensor = scaled.unwrap_or_else(|| out.clone());
        return Some(StatCandidate { tensor, shape, block: false });
    }
    // Two values computed pointwise from one tensor (tanh-GELU's `x + 0.044715 x^3`) are no
    // residual join.
    if n.op_type == "Add" && two_acts && pointwise_root(out, ctx, producers, GATED_DEPTH).is_none() {
        let after = readers.get(out).and_then(|r| match r.as_slice() {
            [r] if matches!(r.op_type.as_str(), "Relu" | "LeakyRelu" | "Clip" | "Sigmoid" | "HardSwish") => {
                r.output.first().cloned()
            }
            _ => None,
        });
        return Some(StatCandidate { tensor: after.unwrap_or_else(|| out.clone()), shape, block: true });
    }
    None
}

/// How many pointwise steps [`pointwise_root`] follows back (tanh-GELU takes 7).
const GATED_DEPTH: usize = 10;

/// Elementwise operators an activation written out in elementary operators is made of.
const POINTWISE_STEPS: &[&str] = &[
    "Mul",
    "Div",
    "Add",
    "Sub",
    "Pow",
    "Erf",
    "Tanh",
    "Sigmoid",
    "HardSigmoid",
    "Softplus",
    "Exp",
    "Neg",
    "Relu",
    "Clip",
    "Min",
    "Max",
    "Sqrt",
    "Reciprocal",
];

/// Whether `t` is a Conv's output or its norm's.
fn of_norm_or_conv(t: &str, producers: &HashMap<String, &NodeProto>) -> bool {
    producers.get(t).is_some_and(|p| {
        matches!(p.op_type.as_str(), "Conv" | "BatchNormalization" | "InstanceNormalization" | "GroupNormalization")
    })
}

/// The one tensor that `t` is computed from by elementwise steps alone (constants and
/// parameters aside), stopping at a Conv's or norm's output: `Some(x)` for `x * sigmoid(x)`,
/// `None` for the sum of two layers' outputs.
fn pointwise_root<'a>(
    t: &'a str,
    ctx: &Ctx,
    producers: &'a HashMap<String, &NodeProto>,
    depth: usize,
) -> Option<&'a str> {
    let p = producers.get(t)?;
    if of_norm_or_conv(t, producers) {
        return Some(t);
    }
    if depth == 0 || !POINTWISE_STEPS.contains(&p.op_type.as_str()) {
        return None;
    }
    let mut root = None;
    for i in p.input.iter().filter(|s| ctx.is_act(s)) {
        let r = pointwise_root(i, ctx, producers, depth - 1)?;
        if root.is_some_and(|q| q != r) {
            return None;
        }
        root = Some(r);
    }
    root
}

/// Whether constant `c` was computed from constants and is read by several nodes (EVA's rotary
/// sin/cos tables, multiplied into both q and k): a buffer, not a parameter. A shared initializer
/// has one copy per reader by now (`shared.rs`); a computed tensor does not.
fn computed_and_shared(graph: &GraphProto, readers: &HashMap<String, Vec<&NodeProto>>, ctx: &Ctx, c: &str) -> bool {
    let src = ctx.param_name(c);
    !graph.initializer.iter().any(|t| t.name == src) && readers.get(c).is_some_and(|r| r.len() > 1)
}
