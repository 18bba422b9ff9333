//! The backward pass: the confounding label, the loss seed and every rule in reverse order.

use std::collections::HashMap;

use super::builder::Builder;
use super::forward::Forward;
use super::{loss, rules, Ctx, GradError, Loss};
use crate::onnx::NodeProto;

/// The confounding label: all ones by default, else 0/1 per class with not exactly one 1.
pub(super) fn confounding_label(label: Option<&Vec<f32>>, num_classes: usize) -> Result<Vec<f32>, GradError> {
    let Some(l) = label else { return Ok(vec![1.0f32; num_classes]) };
    if l.len() != num_classes {
        return Err(GradError::Model(format!("label has {} entries, the model has {num_classes} classes", l.len())));
    }
    if l.iter().any(|&v| v != 0.0 && v != 1.0) {
        return Err(GradError::Model("the confounding label must be 0/1 per class".into()));
    }
    if l.iter().filter(|&&v| v == 1.0).count() == 1 {
        return Err(GradError::Model(
            "a label with exactly one 1 is an ordinary class label, not a confounding label".into(),
        ));
    }
    Ok(l.clone())
}

/// The backward pass: records who reads each activation, seeds `dJ/dz` at the logits and runs
/// each node's rule in reverse graph order. Returns the gradient contributions that reached no
/// node (the input's, when it is wanted).
pub(super) fn backward(
    ctx: &mut Ctx,
    fwd: &Forward,
    logits: &str,
    label: &[f32],
    loss: Loss,
) -> Result<HashMap<String, Vec<String>>, GradError> {
    for n in &fwd.nodes {
        for i in &n.input {
            if ctx.is_act(i) {
                ctx.readers.entry(i.clone()).or_default().push(n.clone());
            }
        }
        for o in &n.output {
            ctx.producer.insert(o.clone(), n.op_type.clone());
        }
    }
    // Values the caller sees are read outside the graph: an empty op type marks that reader.
    let mut seen: Vec<String> = vec![logits.to_string()];
    seen.extend(fwd.last_linear.iter().map(|(name, _)| name.clone()));
    for name in seen {
        ctx.readers.entry(name).or_default().push(NodeProto::default());
    }
    let seed = loss::loss_seed(ctx, logits, label, loss)?;
    let mut contrib: HashMap<String, Vec<String>> = HashMap::from([(logits.to_string(), vec![seed])]);
    for n in fwd.nodes.iter().rev() {
        let dy = if rules::multi_output(n) {
            // The gradients of a Split's outputs, concatenated back (zeros where none came).
            let parts: Vec<Option<Vec<String>>> = n.output.iter().map(|o| contrib.remove(o)).collect();
            if parts.iter().all(Option::is_none) {
                continue;
            }
            let grads: Vec<String> = n
                .output
                .iter()
                .zip(parts)
                .map(|(o, p)| match p {
                    Some(p) => sum_parts(&mut ctx.b, p),
                    None => ctx.b.scale_zero(o),
                })
                .collect();
            rules::join_outputs(n, ctx, &grads)?
        } else {
            let out = &n.output[0];
            let Some(parts) = contrib.remove(out) else { continue };
            sum_parts(&mut ctx.b, parts)
        };
        for (x, dx) in rules::backward(n, &dy, ctx)? {
            contrib.entry(x).or_default().push(dx);
        }
    }
    Ok(contrib)
}

pub(super) fn sum_parts(b: &mut Builder, mut parts: Vec<String>) -> String {
    if parts.len() == 1 {
        return parts.remove(0);
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    b.op("Sum", &refs, vec![])
}
