//! One-dimensional convolutions as two-dimensional ones: a `Conv` whose weight is a 3-D
//! initializer `[out, in/group, k]` over a `[N, C, L]` input (ECA's channel attention convolves
//! the pooled channels this way) becomes `Unsqueeze(x, 2) -> Conv` with the weight stored as
//! `[out, in/group, 1, k]` (same name, same values, so the same feature) `-> Squeeze(2)`, which
//! every Conv rule and plan already handles.

use std::collections::HashSet;

use crate::onnx::{self, attr, Attrs, ModelProto, NodeProto};

/// The model with its 1-D Convs rewritten, or `None` when it has none (or a 3-D weight is also
/// read by another kind of node, which is then left for the rules to refuse).
pub(super) fn as_2d(model: &ModelProto) -> Option<ModelProto> {
    let graph = model.graph.as_ref()?;
    let w3: HashSet<&str> = graph.initializer.iter().filter(|t| t.dims.len() == 3).map(|t| t.name.as_str()).collect();
    let is_1d = |n: &NodeProto| n.op_type == "Conv" && n.input.get(1).is_some_and(|w| w3.contains(w.as_str()));
    let convs: Vec<&NodeProto> = graph.node.iter().filter(|n| is_1d(n)).collect();
    if convs.is_empty() {
        return None;
    }
    let weights: HashSet<&str> = convs.iter().map(|n| n.input[1].as_str()).collect();
    let other_reader = graph.node.iter().any(|n| !is_1d(n) && n.input.iter().any(|i| weights.contains(i.as_str())));
    if other_reader {
        return None;
    }
    let opset = onnx::default_opset(model).unwrap_or(13);
    let mut out = model.clone();
    let g = out.graph.as_mut()?;
    let mut axis_const = None;
    let mut nodes = Vec::with_capacity(g.node.len() + 2 * convs.len());
    for n in std::mem::take(&mut g.node) {
        if !is_1d(&n) {
            nodes.push(n);
            continue;
        }
        let (x, y) = (n.input[0].clone(), n.output.first().cloned().unwrap_or_default());
        let (x4, y4) = (format!("{x}/gw_2d/{y}"), format!("{y}/gw_2d"));
        // Axes as an input from opset 13, as an attribute before.
        let (axes_in, axes_attr) = if opset >= 13 {
            let name = axis_const.get_or_insert_with(|| format!("{y}/gw_axis2")).clone();
            (Some(name), vec![])
        } else {
            (None, vec![attr::ints("axes", &[2])])
        };
        let with_axes = |v: &str| -> Vec<String> { std::iter::once(v.to_string()).chain(axes_in.clone()).collect() };
        let ins = with_axes(&x);
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        nodes.push(onnx::make_node("Unsqueeze", &format!("{}/gw_unsqueeze", n.name), &ins, &[&x4], axes_attr.clone()));
        let mut conv = n.clone();
        conv.input[0] = x4;
        conv.output = vec![y4.clone()];
        conv.attribute = two_d_attrs(&n);
        nodes.push(conv);
        let ins = with_axes(&y4);
        let ins: Vec<&str> = ins.iter().map(String::as_str).collect();
        nodes.push(onnx::make_node("Squeeze", &format!("{}/gw_squeeze", n.name), &ins, &[&y], axes_attr));
    }
    g.node = nodes;
    if let Some(name) = axis_const {
        g.initializer.push(onnx::make_tensor_i64(&name, &[1], &[2]));
    }
    for t in g.initializer.iter_mut().filter(|t| weights.contains(t.name.as_str())) {
        t.dims.insert(2, 1);
    }
    Some(out)
}

/// The Conv's attributes for a height of 1: kernel, strides and dilations gain a leading 1,
/// pads a leading 0 on each side.
fn two_d_attrs(n: &NodeProto) -> Vec<onnx::AttributeProto> {
    let a = Attrs::of(n);
    let mut out = Vec::new();
    for p in &n.attribute {
        let ints = || a.ints(&p.name).ok().flatten().unwrap_or_default();
        out.push(match p.name.as_str() {
            "kernel_shape" | "strides" | "dilations" => attr::ints(&p.name, &[&[1], ints().as_slice()].concat()),
            "pads" => {
                let v = ints();
                let half = v.len() / 2;
                attr::ints("pads", &[&[0], &v[..half], &[0], &v[half..]].concat())
            }
            _ => p.clone(),
        });
    }
    out
}
