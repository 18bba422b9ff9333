//! Models of opsets 7 to 10 (the ONNX model zoo's classic vision models, older exporters) read
//! as opset 11, the oldest the rules and the emitted backward are written for. Between them only
//! a few operators changed how they take their arguments, and those are rewritten here to their
//! opset-11 form with the same meaning: `Pad` and `Clip` bounds and `Slice` ranges from
//! attributes to constant inputs, `Upsample` and opset-10 `Resize` to opset-11 `Resize` with the
//! `asymmetric` coordinates they used, and the attributes opset 11 dropped (`BatchNormalization`'s
//! `spatial`, `Dropout`'s `is_test`) removed. Any other operator has the same schema in both.
//! Opset 11 and 12 models are then rewritten to 13 (axes and split sizes as inputs), and every
//! model of opset 13 to 15 is declared 16 as it is (see [`SCATTER_ADD`]).

use crate::onnx::{self, attr, Attrs, GraphProto, ModelProto, NodeProto, TensorProto};

use super::{node_err, GradError};

/// The opset old models are read as.
const TARGET: i64 = 11;

/// The oldest opset read (older ones also changed broadcasting and `BatchNormalization`).
pub const OLDEST: i64 = 7;

/// Models of opset 11 or later are read as this one where they can be: from 13 on only operator
/// types, attributes whose default keeps the old meaning, and operators no classifier rule reads
/// (`RoiAlign`'s default coordinates, `GridSample`, control flow) changed, and 16 gives
/// `ScatterElements` the `add` reduction that MaxPool's backward uses (`rules/pool.rs`). Opsets
/// 11 and 12 are rewritten first ([`to_13`]).
const SCATTER_ADD: i64 = 16;

/// The model as the compiler reads it: opsets 7 to 10 rewritten to 11, 11 and 12 to 13 (unless a
/// Softmax inside the graph keeps them), then 13 to 15 declared 16. `None` when nothing changes.
pub(super) fn upgrade(model: &ModelProto) -> Result<Option<ModelProto>, GradError> {
    let Some(mut opset) = onnx::default_opset(model) else { return Ok(None) };
    if !(OLDEST..SCATTER_ADD).contains(&opset) {
        return Ok(None);
    }
    let mut out = model.clone();
    let Some(g) = out.graph.as_mut() else { return Ok(None) };
    if opset < TARGET {
        let mut consts: Vec<TensorProto> = Vec::new();
        for n in g.node.iter_mut().filter(|n| onnx::is_default_domain(&n.domain)) {
            rewrite(n, opset, &mut consts)?;
        }
        g.initializer.extend(consts);
        opset = TARGET;
    }
    if opset < 13 && to_13(g)? {
        opset = 13;
    }
    if opset >= 13 {
        opset = SCATTER_ADD;
    }
    for o in out.opset_import.iter_mut().filter(|o| onnx::is_default_domain(&o.domain)) {
        o.version = opset;
    }
    Ok(Some(out))
}

/// Opset 11 or 12 rewritten to 13, where 13 moved `Squeeze`/`Unsqueeze`/`ReduceSum` axes and
/// `Split` sizes from attributes to inputs and opset 12 `Dropout`'s ratio. False (the graph
/// untouched) when it holds a `Softmax`, `LogSoftmax` or `Hardmax` other than a trailing one on
/// the `[N, classes]` output or one over axis -1 (13 changed what a positive axis means for
/// inputs of rank 3 or more), or a `Resize` with the `tf_half_pixel_for_nn` coordinates, which
/// 13 dropped.
fn to_13(g: &mut GraphProto) -> Result<bool, GradError> {
    let first_out = g.output.first().map(|o| o.name.clone()).unwrap_or_default();
    let softmax = |n: &NodeProto| matches!(n.op_type.as_str(), "Softmax" | "LogSoftmax" | "Hardmax");
    let tf_nn = |n: &NodeProto| {
        n.op_type == "Resize"
            && n.attribute.iter().any(|a| a.name == "coordinate_transformation_mode" && a.s == b"tf_half_pixel_for_nn")
    };
    // Axis -1 means the last axis in both.
    let last = |n: &NodeProto| n.attribute.iter().any(|a| a.name == "axis" && a.i == -1);
    let kept = |n: &NodeProto| (softmax(n) && n.output.first() != Some(&first_out) && !last(n)) || tf_nn(n);
    if g.node.iter().any(|n| onnx::is_default_domain(&n.domain) && kept(n)) {
        return Ok(false);
    }
    let mut consts: Vec<TensorProto> = Vec::new();
    for n in g.node.iter_mut().filter(|n| onnx::is_default_domain(&n.domain)) {
        let (key, input) = match n.op_type.as_str() {
            "Squeeze" | "Unsqueeze" | "ReduceSum" => ("axes", 1),
            "Split" => ("split", 1),
            "Dropout" => {
                // Opset 12 moved the ratio to an input; in inference it does nothing.
                n.attribute.retain(|a| a.name != "ratio");
                continue;
            }
            _ => continue,
        };
        let Some(v) = Attrs::of(n).ints(key)? else { continue };
        let name = format!("{}/gw_opset13_{key}", n.output.first().map(String::as_str).unwrap_or(&n.name));
        consts.push(onnx::make_tensor_i64(&name, &[v.len()], &v));
        n.attribute.retain(|a| a.name != key);
        // The input slot after the data; an empty name would be a missing optional input.
        n.input.truncate(input);
        n.input.push(name);
    }
    g.initializer.extend(consts);
    Ok(true)
}

/// One node in its opset-11 form; new constant inputs go to `consts`.
fn rewrite(n: &mut NodeProto, opset: i64, consts: &mut Vec<TensorProto>) -> Result<(), GradError> {
    let a = Attrs::of(n);
    let mut konst = |suffix: &str, t: TensorProto| -> String {
        let name = format!("{}/gw_opset11_{suffix}", n.output.first().map(String::as_str).unwrap_or(&n.name));
        consts.push(TensorProto { name: name.clone(), ..t });
        name
    };
    match n.op_type.as_str() {
        "Pad" => {
            let pads = a.ints("pads")?.unwrap_or_default();
            let value = a.float("value", 0.0)?;
            let p = konst("pads", onnx::make_tensor_i64("", &[pads.len()], &pads));
            let v = konst("value", onnx::make_tensor_f32("", &[], &[value]));
            n.input.extend([p, v]);
            n.attribute.retain(|x| x.name == "mode");
        }
        "Clip" => {
            let (lo, hi) = (a.float("min", f32::MIN)?, a.float("max", f32::MAX)?);
            let lo = konst("min", onnx::make_tensor_f32("", &[], &[lo]));
            let hi = konst("max", onnx::make_tensor_f32("", &[], &[hi]));
            n.input.extend([lo, hi]);
            n.attribute.clear();
        }
        "Slice" if opset < 10 => {
            let starts = a.ints("starts")?.unwrap_or_default();
            let ends = a.ints("ends")?.unwrap_or_default();
            let axes = a.ints("axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
            let s = konst("starts", onnx::make_tensor_i64("", &[starts.len()], &starts));
            let e = konst("ends", onnx::make_tensor_i64("", &[ends.len()], &ends));
            let x = konst("axes", onnx::make_tensor_i64("", &[axes.len()], &axes));
            n.input.extend([s, e, x]);
            n.attribute.clear();
        }
        "Upsample" | "Resize" => {
            let mode = a.string("mode", "nearest")?;
            // Opset 7's Upsample holds its scales as an attribute; 9's and Resize-10 as input 1.
            let scales = match a.floats("scales")? {
                Some(s) => konst("scales", onnx::make_tensor_f32("", &[s.len()], &s)),
                None => n.input.get(1).cloned().ok_or_else(|| node_err(n, "Upsample without scales"))?,
            };
            let roi = konst("roi", onnx::make_tensor_f32("", &[0], &[]));
            let x = n.input.first().cloned().ok_or_else(|| node_err(n, "Upsample without an input"))?;
            n.op_type = "Resize".into();
            n.input = vec![x, roi, scales];
            let linear = mode == "linear" || mode == "bilinear";
            n.attribute = vec![
                attr::string("mode", if linear { "linear" } else { "nearest" }),
                attr::string("coordinate_transformation_mode", "asymmetric"),
                attr::string("nearest_mode", "floor"),
            ];
        }
        "BatchNormalization" => {
            if a.int("spatial", 1)? != 1 {
                return Err(node_err(
                    n,
                    "BatchNormalization with spatial = 0 (per-position statistics) is not supported",
                ));
            }
            n.attribute.retain(|x| x.name == "epsilon" || x.name == "momentum");
        }
        "Dropout" => n.attribute.retain(|x| x.name != "is_test"),
        _ => {}
    }
    Ok(())
}
