//! The gradient compiler: any ONNX classifier in, an ONNX graph that also outputs the
//! per-sample squared gradient norm of every parameter tensor out.
//!
//! This is the paper's "gradient generation framework" (Lee & AlRegib, ICIP 2020) done ahead
//! of time on the graph, so that a stock ONNX Runtime computes the gradients as an ordinary
//! inference graph with standard `ai.onnx` operators only (what TensorRT's parser accepts).
//!
//! For logits `z` (C classes) and a confounding label `y` (all ones by default) the loss is
//! `J = -(1/C) sum_i [y_i log s(z_i) + (1-y_i) log(1-s(z_i))]`, so `dJ/dz = (s(z) - y)/C`.
//! The backward pass is emitted op by op; each parameter tensor's per-sample squared norm is
//! computed without materialising per-sample gradients where a cheaper identity exists:
//! Gemm `||dW||^2 = ||delta||^2 ||x||^2`, Conv by im2col (`delta P^T`) or the "ghost norm"
//! `sum((delta^T delta) * (P^T P))` (with `P^T P` from patches or from the Gram matrix of the
//! input pixels), chosen per layer by cost, BatchNormalization scale/shift as spatial
//! reductions.

//! The operators live in a rule table (`rules/`, one file per family: conv, norm, layernorm,
//! activation, arith, pool, shape, linear, attention): each rule names an operator's parameter
//! inputs and their [`ParamKind`], its shape inference and its backward. Adding an operator
//! means adding one rule in one file; see "Adding an operator" in `rules/mod.rs`. Nodes that
//! compute on constants only (the `Shape` subgraphs exporters write) never reach the rules:
//! `fold.rs` evaluates them at compile time, with the batch size symbolic. A tensor whose batch
//! axis an attention or window layer moved or merged with another axis (`[L, N, E]`,
//! `[N*heads, L, d]`) is stored batch-first and the nodes around it rewritten (`layout/`),
//! so the rules always see the batch first and alone.
//!
//! Which parameter tensors become features is [`CompileOptions::params`]: by default every
//! trainable tensor (weights, biases, BatchNormalization scale and shift, and BatchNormalization
//! folded into per-channel constant `Mul`/`Add` pairs as Keras/TensorFlow exports write it).

mod affine;
mod backward;
mod batch;
mod builder;
mod conv1d;
mod ctx;
mod einsum;
mod emit;
mod fold;
mod fold_ext;
mod fold_math;
mod fold_nd;
mod forward;
mod layout;
mod loss;
mod opset;
mod options;
mod precision;
mod rules;
mod shared;

use std::collections::{HashMap, HashSet};

use crate::onnx::{self, GraphProto, ModelProto, NodeProto, OnnxError, TensorProto, ValueInfoProto};
use backward::{backward, confounding_label};
pub use batch::dynamic_batch;
use builder::Builder;
pub(crate) use ctx::Ctx;
pub use ctx::GradError;
pub(crate) use ctx::{node_err, unsupported};
use emit::{assemble, emit_outputs, Layout, Meta};
pub use fold_ext::{set_external_fold, ExternalFold};
use forward::{forward, last_stages};
pub use options::*;
pub use precision::{as_float32, byte_input, is_half_precision};

/// Operators the compiler differentiates through (the operators of its rule table).
pub const SUPPORTED_OPS: &[&str] = &rules::NAMES;

/// The operators the compiler differentiates through, as a list for messages.
pub fn supported_ops() -> String {
    SUPPORTED_OPS.join(", ")
}

/// Metadata key holding the JSON list of feature (parameter tensor) names.
pub const META_FEATURES: &str = "gradwatch.features";
/// Metadata key holding the loss the features were compiled with.
pub const META_LOSS: &str = "gradwatch.loss";
/// Metadata key holding the confounding label.
pub const META_LABEL: &str = "gradwatch.label";
/// Metadata key holding the feature preset (`full`, `fast`, or `custom` for a hand-made
/// parameter selection).
pub const META_PRESET: &str = "gradwatch.preset";

/// Prefix of the feature names of forward-only activation statistics
/// ([`CompileOptions::act_stats`]): `act:<tensor>` is the mean square of that activation.
pub const ACT_PREFIX: &str = "act:";

fn constant_node_value(n: &NodeProto) -> Result<TensorProto, GradError> {
    let a = onnx::Attrs::of(n);
    if let Some(t) = a.tensor("value")? {
        let mut t = t.clone();
        t.name = n.output[0].clone();
        return Ok(t);
    }
    for at in &n.attribute {
        let name = n.output[0].as_str();
        match at.name.as_str() {
            "value_float" => return Ok(onnx::make_tensor_f32(name, &[], &[at.f])),
            "value_floats" => return Ok(onnx::make_tensor_f32(name, &[at.floats.len()], &at.floats)),
            "value_int" => return Ok(onnx::make_tensor_i64(name, &[], &[at.i])),
            "value_ints" => return Ok(onnx::make_tensor_i64(name, &[at.ints.len()], &at.ints)),
            _ => {}
        }
    }
    Err(node_err(n, "Constant without a value gradwatch can read"))
}

/// Compiles a classifier into its gradient graph.
///
/// The phases, in order: `opset::upgrade` (opsets 7 to 10 read as 11), [`as_float32`] (a
/// half-precision model read as float32),
/// [`dynamic_batch`] (a fixed batch size made symbolic),
/// `shared::unshare_initializers` (one copy of a shared tensor per reader), `conv1d::as_2d`
/// (1-D Convs as 2-D ones), `einsum::as_matmul` (attention's Einsums as MatMuls), `check_model`,
/// `collect_constants`, `image_input`, `find_logits` and `needed_nodes` read the model;
/// `forward` folds constant nodes (`fold.rs`), stores a moved batch axis first (`layout/`),
/// infers shapes and finds the parameters through the rule table; `confounding_label` checks
/// the label; `backward` seeds the loss gradient and runs the rules in reverse; `emit_outputs`
/// adds the output nodes and `assemble` writes the new model.
pub fn compile(model: &ModelProto, opts: &CompileOptions) -> Result<Compiled, GradError> {
    let upgraded = opset::upgrade(model)?;
    let model = upgraded.as_ref().unwrap_or(model);
    let wide = as_float32(model)?;
    let model = wide.as_ref().unwrap_or(model);
    let sized = opts.input_size.and_then(|wh| sized_input(model, wh));
    let model = sized.as_ref().unwrap_or(model);
    let (dynamic, literal_targets, fixed_batch) = match batch::rewrite_batch(model)? {
        Some(r) => (Some(r.model), r.literals, usize::try_from(r.batch).ok().filter(|&b| b > 0)),
        None => (None, HashMap::new(), None),
    };
    let model = dynamic.as_ref().unwrap_or(model);
    let unshared = shared::unshare_initializers(model);
    let model = unshared.as_ref().unwrap_or(model);
    let two_d = conv1d::as_2d(model);
    let model = two_d.as_ref().unwrap_or(model);
    let matmuls = einsum::as_matmul(model);
    let model = matmuls.as_ref().unwrap_or(model);
    let (graph, opset) = check_model(model)?;
    let consts = collect_constants(graph)?;
    let (input, input_shape) = image_input(graph, &consts)?;
    let producers: HashMap<String, &NodeProto> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.clone(), n))).collect();
    let logits = find_logits(graph, &producers)?;
    let needed = needed_nodes(&graph.node, [logits.clone()]);

    // Names the compiled graph keeps: a node the logits do not need (a trailing Softmax whose
    // output is called `logits`, as Keras-style exports do) is dropped, and so is its name.
    let kept = || graph.node.iter().zip(&needed).filter(|(_, &k)| k).map(|(n, _)| n);
    let mut taken: HashSet<String> = consts.keys().cloned().collect();
    taken.extend(kept().flat_map(|n| n.output.iter().cloned()));
    taken.extend(graph.input.iter().map(|i| i.name.clone()));
    taken.extend(kept().map(|n| n.name.clone()));
    let new_ctx = |consts: HashMap<String, TensorProto>, taken: HashSet<String>| Ctx {
        consts,
        shapes: HashMap::from([(input.name.clone(), input_shape.clone())]),
        param_dep: HashSet::new(),
        norms: HashMap::new(),
        params: Vec::new(),
        param_set: HashSet::new(),
        conv_plans: Vec::new(),
        readers: HashMap::new(),
        producer: HashMap::new(),
        gain: HashMap::new(),
        origin: HashMap::new(),
        affine: HashMap::new(),
        merged: HashMap::new(),
        replaced: HashMap::new(),
        layouts: HashMap::new(),
        fixed_batch,
        literal_targets: literal_targets.clone(),
        moved: false,
        all_grads: opts.input_grad,
        conv_norm: opts.conv_norm,
        tensorrt: opts.tensorrt,
        b: Builder::new(opset, taken),
    };

    // The stage cut (the `fast` preset): a first forward analysis finds which selected
    // parameters lie in the last stages, and the real pass selects exactly those, so the
    // backward pass is pruned below them.
    let selection = match opts.stages.or(opts.preset.stages()) {
        None => opts.params.clone(),
        Some(k) => {
            let mut pre = new_ctx(consts.clone(), HashSet::new());
            let f = forward(graph, &needed, &producers, &opts.params, &mut pre)?;
            let keep = last_stages(&f, k);
            let names: Vec<String> =
                pre.params.iter().filter(|(p, _)| keep.contains(p)).map(|(p, _)| p.clone()).collect();
            if names.is_empty() {
                let which = if k == 0 { "the head".to_string() } else { format!("the last {k} stage(s) or the head") };
                return Err(GradError::Model(format!(
                    "--params {} selects no parameter tensor in {which}",
                    opts.params
                )));
            }
            ParamSelection::names(&names)
        }
    };
    let act_stats = opts.act_stats || opts.preset.act_stats();
    let mut ctx = new_ctx(consts, taken);

    let fwd = forward(graph, &needed, &producers, &selection, &mut ctx)?;
    let logits_shape =
        ctx.shapes.get(&logits).cloned().ok_or_else(|| {
            GradError::Model(format!("output '{logits}' does not depend on the input '{}'", input.name))
        })?;
    if ctx.layouts.contains_key(&logits) {
        return Err(GradError::Model(format!("logits '{logits}' hold the batch merged with another axis")));
    }
    let num_classes = match logits_shape.as_slice() {
        [c] => *c,
        other => return Err(GradError::Model(format!("logits must be [N, C]; '{logits}' is [N, {other:?}]"))),
    };
    let label = confounding_label(opts.label.as_ref(), num_classes)?;
    let mut contrib = backward(&mut ctx, &fwd, &logits, &label, opts.loss)?;

    let input_grad = if opts.input_grad {
        let parts = contrib.remove(&input.name).unwrap_or_default();
        if parts.is_empty() {
            return Err(GradError::Model("no gradient reaches the input".into()));
        }
        Some(parts)
    } else {
        None
    };
    let stats = if act_stats { fwd.activation_stats() } else { Vec::new() };
    let emitted =
        emit_outputs(&mut ctx, opts, &logits, num_classes, fwd.last_linear, input_grad, &input_shape, &stats)?;
    let act_names: Vec<String> = stats.iter().map(|(t, _)| format!("{ACT_PREFIX}{t}")).collect();
    let mut features: Vec<String> = ctx.params.iter().map(|(p, _)| p.clone()).collect();
    features.extend(act_names.iter().cloned());
    let feature_kinds = ctx.params.iter().map(|(_, k)| *k).collect();
    let layout = Layout { input_name: &input.name, input_shape: &input_shape, outputs: emitted.outputs };
    let preset = opts.preset_name();
    let meta = Meta { loss: opts.loss, label: &label, features: &features, preset: &preset };
    let batch_moved = ctx.moved;
    let out_model = assemble(model, graph, &needed, &ctx.replaced, &mut ctx.b, layout, meta);

    Ok(Compiled {
        model: out_model,
        features,
        feature_kinds,
        candidates: fwd.candidates,
        num_classes,
        input_name: input.name.clone(),
        input_shape,
        penultimate_dim: emitted.penultimate_dim,
        conv_plans: ctx.conv_plans,
        preset,
        act_stats: act_names,
        batch_moved,
    })
}

/// The classifier's forward graph with a symbolic batch, as the compiled graph runs it: for
/// the forward-only sessions of benchmarks and evaluations. A fixed-batch export is made
/// batch-dynamic ([`dynamic_batch`]); one whose reshapes merge the batch with other axes (a
/// transformer's heads or windows, written as literals for its one sample) runs the compiled
/// graph's rewritten forward nodes up to the logits, its only output.
pub fn forward_model(model: &ModelProto) -> Result<ModelProto, GradError> {
    let upgraded = opset::upgrade(model)?;
    let model = upgraded.as_ref().unwrap_or(model);
    let wide = as_float32(model)?;
    let model = wide.as_ref().unwrap_or(model);
    let Some(dynamic) = dynamic_batch(model)? else { return Ok(model.clone()) };
    let compiled = match compile(model, &CompileOptions::default()) {
        Ok(c) if c.batch_moved => c,
        _ => return Ok(dynamic),
    };
    let (graph, _) = check_model(&dynamic)?;
    let logits = logits_name(graph)?;
    let mut m = compiled.model;
    let g = m.graph.as_mut().ok_or(OnnxError::NoGraph)?;
    let keep = needed_nodes(&g.node, [logits.clone()]);
    let nodes = std::mem::take(&mut g.node);
    g.node = nodes.into_iter().zip(keep).filter(|(_, k)| *k).map(|(n, _)| n).collect();
    let used: HashSet<&str> = g.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let inits = std::mem::take(&mut g.initializer);
    g.initializer = inits.into_iter().filter(|t| used.contains(t.name.as_str())).collect();
    g.input.truncate(1);
    g.output = vec![onnx::make_value_info(&logits, onnx::data_type::FLOAT, &[None, None])];
    m.metadata_props.retain(|p| !p.key.starts_with("gradwatch."));
    Ok(m)
}

/// The oldest default-domain opset the compiler reads.
pub const MIN_OPSET: i64 = opset::OLDEST;

/// The graph and its default-domain opset, once the model is known to be a classifier this
/// compiler can read: not already compiled, opset [`MIN_OPSET`] or newer, standard operators only.
fn check_model(model: &ModelProto) -> Result<(&GraphProto, i64), GradError> {
    let graph = model.graph.as_ref().ok_or(OnnxError::NoGraph)?;
    if model.metadata_props.iter().any(|p| p.key == META_FEATURES) {
        return Err(GradError::Model(
            "this is already a gradwatch-compiled graph (it has gradwatch.features metadata); give the original \
             classifier: gradwatch compiles it in memory"
                .into(),
        ));
    }
    let opset =
        onnx::default_opset(model).ok_or_else(|| GradError::Model("the model imports no ai.onnx opset".into()))?;
    // Opsets 11 and 12 differ from 13 in attribute-versus-input forms the rules read either
    // way (axes, split) and in Softmax's axis, which its rule checks; opsets 7 to 10 were
    // rewritten to 11 (`opset::upgrade`).
    if opset < MIN_OPSET {
        return Err(GradError::Model(format!(
            "opset {opset} is too old (gradwatch reads opset {MIN_OPSET} or newer); convert it \
             (python -m onnx.version_converter, or onnx.version_converter.convert_version(model, 13)) or \
             re-export the model (e.g. torch.onnx.export(..., opset_version=17))"
        )));
    }
    for n in &graph.node {
        if !onnx::is_default_domain(&n.domain) {
            if let Some(why) = ctx::quantized_why(&n.op_type) {
                return Err(node_err(n, why));
            }
            return Err(GradError::Unsupported { op: format!("{}:{}", n.domain, n.op_type), node: n.name.clone() });
        }
    }
    Ok((graph, opset))
}

/// Constant tensors: initializers, Constant-node outputs and Identity aliases of either.
fn collect_constants(graph: &GraphProto) -> Result<HashMap<String, TensorProto>, GradError> {
    let mut consts: HashMap<String, TensorProto> =
        graph.initializer.iter().map(|t| (t.name.clone(), t.clone())).collect();
    for n in &graph.node {
        if n.op_type == "Constant" {
            if n.output.len() != 1 {
                return Err(node_err(n, "Constant must have one output"));
            }
            consts.insert(n.output[0].clone(), constant_node_value(n)?);
        } else if n.op_type == "Identity" && n.output.len() == 1 {
            // Exporters alias equal initializers through Identity (PyTorch does for equal BN biases).
            if let Some(t) = n.input.first().and_then(|i| consts.get(i)) {
                let mut t = t.clone();
                t.name = n.output[0].clone();
                consts.insert(n.output[0].clone(), t);
            }
        }
    }
    Ok(consts)
}

/// The one non-constant graph input (the image) and its per-sample shape.
fn image_input<'a>(
    graph: &'a GraphProto,
    consts: &HashMap<String, TensorProto>,
) -> Result<(&'a ValueInfoProto, Vec<usize>), GradError> {
    let inputs: Vec<_> = graph.input.iter().filter(|i| !consts.contains_key(&i.name)).collect();
    let input = match inputs.as_slice() {
        [one] => *one,
        _ => {
            return Err(GradError::Model(format!(
                "expected exactly one (image) input, found {}: {:?}",
                inputs.len(),
                inputs.iter().map(|i| &i.name).collect::<Vec<_>>()
            )))
        }
    };
    let (elem, dims) = onnx::value_info_shape(input)
        .ok_or_else(|| GradError::Model(format!("input '{}' has no tensor shape", input.name)))?;
    if elem != onnx::data_type::FLOAT {
        return Err(GradError::Model(format!("input '{}' must be float32 (found type {elem})", input.name)));
    }
    let input_shape: Vec<usize> =
        dims.iter().skip(1).map(|d| d.map(|v| v as usize)).collect::<Option<_>>().ok_or_else(|| {
            let show: Vec<String> = dims.iter().map(|d| d.map_or("?".into(), |v| v.to_string())).collect();
            GradError::Model(format!(
                "input '{}' [{}] has symbolic dims after the batch axis; gradwatch compiles for one image size: \
                 give it (`gradwatch init MODEL --size WxH`, which the calibration stores for every command \
                 and the daemon; `gradwatch compile --size WxH`) or export the model at a fixed size",
                input.name,
                show.join(",")
            ))
        })?;
    if dims.is_empty() {
        return Err(GradError::Model(format!("input '{}' must have a batch axis", input.name)));
    }
    Ok((input, input_shape))
}

/// The model with its image input's symbolic width and height set to `(w, h)`: an NCHW or
/// NHWC input of 1 or 3 channels whose two spatial dims are both symbolic; `None` otherwise.
fn sized_input(model: &ModelProto, (w, h): (usize, usize)) -> Option<ModelProto> {
    let (i, spatial) = symbolic_spatial(model)?;
    let mut out = model.clone();
    let v = &mut out.graph.as_mut()?.input[i];
    let shape = v.r#type.as_mut()?.tensor_type.as_mut()?.shape.as_mut()?;
    for (axis, size) in spatial.into_iter().zip([h, w]) {
        shape.dim[axis].value = Some(onnx::proto::DimensionValue::DimValue(size as i64));
    }
    Some(out)
}

/// Whether the model's image input has symbolic height and width (so the size to run it at
/// comes from [`CompileOptions::input_size`], and a calibration must store it).
pub fn has_symbolic_size(model: &ModelProto) -> bool {
    symbolic_spatial(model).is_some()
}

/// The image input's position in `graph.input` and its two spatial axes, when both are
/// symbolic (NCHW or NHWC, 1 or 3 channels).
fn symbolic_spatial(model: &ModelProto) -> Option<(usize, [usize; 2])> {
    let graph = model.graph.as_ref()?;
    let i = first_input(graph)?;
    let (_, dims) = onnx::value_info_shape(&graph.input[i])?;
    let channels = |d: Option<i64>| d == Some(1) || d == Some(3);
    match dims.as_slice() {
        [_, c, None, None] if channels(*c) => Some((i, [2, 3])),
        [_, None, None, c] if channels(*c) => Some((i, [1, 2])),
        _ => None,
    }
}

/// The position in `graph.input` of the first input that is not an initializer (the image, in
/// a model [`image_input`] accepts).
fn first_input(graph: &GraphProto) -> Option<usize> {
    let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    graph.input.iter().position(|v| !inits.contains(v.name.as_str()))
}

/// The name of the classifier's logits in `graph` (see `find_logits`): what the compiled graph
/// differentiates and outputs as `logits`.
pub fn logits_name(graph: &GraphProto) -> Result<String, GradError> {
    let producers: HashMap<String, &NodeProto> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.clone(), n))).collect();
    find_logits(graph, &producers)
}

/// The logits: the first output, or the input of a trailing Softmax, LogSoftmax or Sigmoid (a
/// multi-label or Keras `activation='sigmoid'` head: the loss applies the sigmoid itself, so
/// it must see the values before it), through any `Identity` that renames the output (as
/// tf2onnx writes Keras models' outputs).
fn find_logits(graph: &GraphProto, producers: &HashMap<String, &NodeProto>) -> Result<String, GradError> {
    let out0 = graph.output.first().ok_or_else(|| GradError::Model("the model has no outputs".into()))?;
    let mut logits = out0.name.clone();
    let identity = |name: &String| producers.get(name).filter(|p| p.op_type == "Identity" && !p.input.is_empty());
    while let Some(p) = identity(&logits) {
        logits = p.input[0].clone();
    }
    if let Some(p) = producers.get(&logits) {
        if matches!(p.op_type.as_str(), "Softmax" | "LogSoftmax" | "Sigmoid") && !p.input.is_empty() {
            logits = p.input[0].clone();
        }
    }
    Ok(logits)
}

/// Which of `nodes` the values `outputs` depend on.
fn needed_nodes(nodes: &[NodeProto], outputs: impl IntoIterator<Item = String>) -> Vec<bool> {
    let mut needed_vals: HashSet<String> = outputs.into_iter().collect();
    let mut needed = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed_vals.contains(o)) {
            needed[i] = true;
            needed_vals.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    needed
}

/// The preset recorded in a compiled model's metadata (`full` for graphs from before presets).
pub fn preset_name(model: &ModelProto) -> String {
    onnx::metadata(model).get(META_PRESET).cloned().unwrap_or_else(|| Preset::Full.name().to_string())
}

/// Feature names stored in a compiled model's metadata.
pub fn feature_names(model: &ModelProto) -> Option<Vec<String>> {
    onnx::metadata(model).get(META_FEATURES).and_then(|s| serde_json::from_str(s).ok())
}
