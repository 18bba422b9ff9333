//! The compiled graph's outputs (`logits`, `grad_features`, optional `penultimate` and
//! `input_grad`) and the assembled model with its metadata.

use std::collections::{HashMap, HashSet};

use super::backward::sum_parts;
use super::builder::Builder;
use super::{outputs, CompileOptions, Ctx, GradError, Loss, META_FEATURES, META_LABEL, META_LOSS, META_PRESET};
use crate::onnx::{self, attr, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

/// The outputs [`emit_outputs`] added.
pub(super) struct Emitted {
    /// Graph outputs, in order.
    pub(super) outputs: Vec<ValueInfoProto>,
    /// Width of `penultimate`, when requested.
    pub(super) penultimate_dim: Option<usize>,
}

/// Adds the output nodes: `logits`, `grad_features` (one column per selected parameter, then
/// one per activation statistic in `stats`: its per-sample mean square), and when asked `penultimate` and `input_grad` (from the gradient `input_grad` parts).
#[allow(clippy::too_many_arguments)]
pub(super) fn emit_outputs(
    ctx: &mut Ctx,
    opts: &CompileOptions,
    logits: &str,
    num_classes: usize,
    last_linear: Option<(String, usize)>,
    input_grad: Option<Vec<String>>,
    input_shape: &[usize],
    stats: &[(String, Vec<usize>)],
) -> Result<Emitted, GradError> {
    let b = &mut ctx.b;
    let mut outputs = Vec::new();
    let logits_out = if logits == outputs::LOGITS {
        logits.to_string()
    } else {
        if !b.reserve(outputs::LOGITS) {
            return Err(GradError::Model("the model already has a value named 'logits' that is not its output".into()));
        }
        b.op_to("Identity", &[logits], outputs::LOGITS, vec![]);
        outputs::LOGITS.to_string()
    };
    outputs.push(onnx::make_value_info(&logits_out, onnx::data_type::FLOAT, &[None, Some(num_classes as i64)]));

    let mut cols = Vec::new();
    for (p, _) in &ctx.params {
        let norm = ctx.norms.get(p).ok_or_else(|| {
            GradError::Model(format!(
                "parameter '{p}' gets no gradient from the logits (is it on a path to the output?)"
            ))
        })?;
        cols.push(b.reshape_to(norm, &[-1, 1]));
    }
    for (t, shape) in stats {
        let sq = b.sample_sq_norm(t, shape.len() + 1);
        let mean = b.scale(&sq, 1.0 / shape.iter().product::<usize>().max(1) as f32);
        cols.push(b.reshape_to(&mean, &[-1, 1]));
    }
    let col_refs: Vec<&str> = cols.iter().map(String::as_str).collect();
    if !b.reserve(outputs::FEATURES) {
        return Err(GradError::Model(format!("the model already has a value named '{}'", outputs::FEATURES)));
    }
    b.op_to("Concat", &col_refs, outputs::FEATURES, vec![attr::int("axis", 1)]);
    outputs.push(onnx::make_value_info(
        outputs::FEATURES,
        onnx::data_type::FLOAT,
        &[None, Some((ctx.params.len() + stats.len()) as i64)],
    ));

    let mut penultimate_dim = None;
    if opts.penultimate {
        let (name, dim) =
            last_linear.ok_or_else(|| GradError::Model("no Gemm/MatMul found for the penultimate output".into()))?;
        b.reserve(outputs::PENULTIMATE);
        let flat = b.reshape_batch(&name, &[dim]);
        b.op_to("Identity", &[&flat], outputs::PENULTIMATE, vec![]);
        outputs.push(onnx::make_value_info(outputs::PENULTIMATE, onnx::data_type::FLOAT, &[None, Some(dim as i64)]));
        penultimate_dim = Some(dim);
    }
    if let Some(parts) = input_grad {
        let g = sum_parts(b, parts);
        b.reserve(outputs::INPUT_GRAD);
        b.op_to("Identity", &[&g], outputs::INPUT_GRAD, vec![]);
        let mut d = vec![None];
        d.extend(input_shape.iter().map(|&v| Some(v as i64)));
        outputs.push(onnx::make_value_info(outputs::INPUT_GRAD, onnx::data_type::FLOAT, &d));
    }
    Ok(Emitted { outputs, penultimate_dim })
}

/// The inputs and outputs of the compiled graph.
pub(super) struct Layout<'a> {
    /// Name of the image input.
    pub(super) input_name: &'a str,
    /// Its per-sample shape.
    pub(super) input_shape: &'a [usize],
    /// The graph outputs.
    pub(super) outputs: Vec<ValueInfoProto>,
}

/// What [`assemble`] writes into the metadata.
pub(super) struct Meta<'a> {
    pub(super) loss: Loss,
    pub(super) label: &'a [f32],
    pub(super) features: &'a [String],
    pub(super) preset: &'a str,
}

/// The compiled model: the needed forward nodes, then the builder's; the initializers they
/// use; the image input (and `temperature` for ODIN); and the metadata (features, loss, label,
/// preset).
pub(super) fn assemble(
    model: &ModelProto,
    graph: &GraphProto,
    needed: &[bool],
    replaced: &HashMap<String, Vec<NodeProto>>,
    b: &mut Builder,
    layout: Layout,
    meta: Meta,
) -> ModelProto {
    let Meta { loss, label, features, preset } = meta;
    let Layout { input_name, input_shape, outputs } = layout;
    let mut new_nodes: Vec<NodeProto> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(i, _)| needed[*i])
        .flat_map(|(_, n)| match n.output.first().and_then(|o| replaced.get(o)) {
            Some(r) => r.clone(),
            None => vec![n.clone()],
        })
        .collect();
    new_nodes.append(&mut b.nodes);
    // Shape arithmetic whose reader was rewritten (a reshape target of a moved batch) is dead:
    // dropped, so that ONNX Runtime does not warn about its constants on every load.
    let keep = super::needed_nodes(&new_nodes, outputs.iter().map(|o| o.name.clone()));
    let new_nodes: Vec<NodeProto> = new_nodes.into_iter().zip(keep).filter(|(_, k)| *k).map(|(n, _)| n).collect();
    let used: HashSet<&str> = new_nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let mut initializer: Vec<TensorProto> =
        graph.initializer.iter().filter(|t| used.contains(t.name.as_str())).cloned().collect();
    // The builder's constants too: a rewritten reshape target's (above) would be left unread.
    initializer.extend(b.inits.drain(..).filter(|t| used.contains(t.name.as_str())));

    let mut in_dims = vec![None];
    in_dims.extend(input_shape.iter().map(|&v| Some(v as i64)));
    let mut graph_inputs = vec![onnx::make_value_info(input_name, onnx::data_type::FLOAT, &in_dims)];
    if loss == Loss::Odin {
        graph_inputs.push(onnx::make_value_info(outputs::TEMPERATURE, onnx::data_type::FLOAT, &[Some(1)]));
    }

    let mut out_model = model.clone();
    out_model.graph = Some(GraphProto {
        node: new_nodes,
        name: format!("{}_gradwatch", graph.name),
        initializer,
        doc_string: "gradient features compiled by gradwatch".into(),
        input: graph_inputs,
        output: outputs,
        value_info: vec![],
    });
    out_model.producer_name = "gradwatch".into();
    out_model.producer_version = env!("CARGO_PKG_VERSION").into();
    onnx::set_metadata(&mut out_model, META_FEATURES, &serde_json::to_string(features).unwrap_or_default());
    onnx::set_metadata(&mut out_model, META_LOSS, loss.name());
    onnx::set_metadata(&mut out_model, META_PRESET, preset);
    onnx::set_metadata(
        &mut out_model,
        META_LABEL,
        &label.iter().map(|v| if *v == 1.0 { "1" } else { "0" }).collect::<String>(),
    );
    out_model
}
