//! Half-precision classifiers widened to float32. Edge deployments often ship a model
//! converted to float16 (`onnxconverter-common`'s `convert_float_to_float16`, with or without
//! `keep_io_types`, or a bfloat16 export) and no float32 original. The gradient graph is
//! computed in float32 anyway (float16 squared norms overflow at 65504), so the model is read
//! as the float32 model with the same weights: every half tensor widened exactly, every
//! `Cast` to a half type made a `Cast` to float32, and half graph inputs and outputs made
//! float32. The logits then differ from the half model's own by its rounding of activations
//! (about 1e-3 relative), which is what a float16 engine differs from any float32 one by.
//!
//! A model whose image input is 8-bit (`uint8` pixels, read only through a `Cast` to a float
//! type, as exports with the preprocessing inside the graph write it) gets a float32 input
//! the same way: the Casts become float-to-float, and the pixel values are fed unscaled
//! ([`byte_input`]: the default preprocessing scale is then 1).

use crate::onnx::{self, data_type, AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto, ValueInfoProto};

use super::GradError;

/// The model with its float16 and bfloat16 tensors, casts and graph values widened to
/// float32, or `None` when it holds none (the usual case: no copy is made).
pub fn as_float32(model: &ModelProto) -> Result<Option<ModelProto>, GradError> {
    if !is_half_precision(model) && !byte_input(model) {
        return Ok(None);
    }
    let mut out = model.clone();
    if let Some(g) = out.graph.as_mut() {
        widen_graph(g)?;
    }
    Ok(Some(out))
}

/// Whether the model holds float16 or bfloat16 tensors, casts or graph values (what
/// [`as_float32`] widens).
pub fn is_half_precision(model: &ModelProto) -> bool {
    model.graph.as_ref().is_some_and(has_half)
}

/// Whether the model's image input holds 8-bit pixels (`uint8` or `int8`) that every reader
/// casts to a float type first (what [`as_float32`] declares float32).
pub fn byte_input(model: &ModelProto) -> bool {
    model.graph.as_ref().is_some_and(|g| byte_input_index(g).is_some())
}

/// The position in `g.input` of an 8-bit image input read only through Casts to a float type.
fn byte_input_index(g: &GraphProto) -> Option<usize> {
    let i = super::first_input(g)?;
    let v = &g.input[i];
    let (elem, _) = onnx::value_info_shape(v)?;
    if elem != data_type::UINT8 && elem != data_type::INT8 {
        return None;
    }
    let to_float = |n: &NodeProto| {
        n.op_type == "Cast"
            && n.attribute.iter().any(|a| a.name == "to" && (a.i as i32 == data_type::FLOAT || is_half(a.i as i32)))
    };
    let mut readers = g.node.iter().filter(|n| n.input.contains(&v.name)).peekable();
    readers.peek()?;
    readers.all(to_float).then_some(i)
}

fn is_half(t: i32) -> bool {
    t == data_type::FLOAT16 || t == data_type::BFLOAT16
}

fn value_is_half(v: &ValueInfoProto) -> bool {
    onnx::value_info_shape(v).is_some_and(|(t, _)| is_half(t))
}

/// The attributes that name an element type (`Cast`'s `to`, `EyeLike`'s and the random
/// generators' `dtype`).
fn is_type_attr(a: &AttributeProto) -> bool {
    a.name == "to" || a.name == "dtype"
}

fn has_half(g: &GraphProto) -> bool {
    let node_half = |n: &NodeProto| {
        n.attribute.iter().any(|a| {
            (is_type_attr(a) && is_half(a.i as i32))
                || a.t.as_ref().is_some_and(|t| is_half(t.data_type))
                || a.tensors.iter().any(|t| is_half(t.data_type))
        })
    };
    g.initializer.iter().any(|t| is_half(t.data_type))
        || g.node.iter().any(node_half)
        || g.input.iter().chain(&g.output).chain(&g.value_info).any(value_is_half)
}

fn widen_graph(g: &mut GraphProto) -> Result<(), GradError> {
    if let Some(i) = byte_input_index(g) {
        if let Some(tt) = g.input[i].r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
            tt.elem_type = data_type::FLOAT;
        }
    }
    for t in g.initializer.iter_mut() {
        widen_tensor(t)?;
    }
    for n in g.node.iter_mut() {
        for a in n.attribute.iter_mut() {
            if is_type_attr(a) && is_half(a.i as i32) {
                a.i = i64::from(data_type::FLOAT);
            }
            if let Some(t) = a.t.as_mut() {
                widen_tensor(t)?;
            }
            for t in a.tensors.iter_mut() {
                widen_tensor(t)?;
            }
        }
    }
    for v in g.input.iter_mut().chain(g.output.iter_mut()).chain(g.value_info.iter_mut()) {
        if let Some(tt) = v.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
            if is_half(tt.elem_type) {
                tt.elem_type = data_type::FLOAT;
            }
        }
    }
    Ok(())
}

/// A half tensor stored again as float32 (every half value is exactly a float32 one).
fn widen_tensor(t: &mut TensorProto) -> Result<(), GradError> {
    if !is_half(t.data_type) {
        return Ok(());
    }
    let values = onnx::tensor_f32(t)?;
    let dims: Vec<usize> = values.shape().to_vec();
    let flat: Vec<f32> = values.iter().copied().collect();
    let mut wide = onnx::make_tensor_f32(&t.name, &dims, &flat);
    wide.doc_string = std::mem::take(&mut t.doc_string);
    *t = wide;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{make_node, make_value_info, GraphProto};

    fn half_tensor(name: &str, v: &[f32]) -> TensorProto {
        let raw = v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        TensorProto {
            name: name.into(),
            dims: vec![v.len() as i64],
            data_type: data_type::FLOAT16,
            raw_data: raw,
            ..Default::default()
        }
    }

    #[test]
    fn half_weights_casts_and_values_become_float32() {
        let cast = make_node("Cast", "c", &["x"], &["xh"], vec![onnx::attr::int("to", i64::from(data_type::FLOAT16))]);
        let add = make_node("Add", "a", &["xh", "b"], &["y"], vec![]);
        let g = GraphProto {
            node: vec![cast, add],
            initializer: vec![half_tensor("b", &[0.5, -1.25, 65504.0])],
            input: vec![make_value_info("x", data_type::FLOAT, &[None, Some(3)])],
            output: vec![make_value_info("y", data_type::FLOAT16, &[None, Some(3)])],
            ..Default::default()
        };
        let m = ModelProto { graph: Some(g), ..Default::default() };
        let wide = as_float32(&m).unwrap().unwrap();
        let g = wide.graph.unwrap();
        assert_eq!(g.initializer[0].data_type, data_type::FLOAT);
        assert_eq!(onnx::tensor_f32(&g.initializer[0]).unwrap().as_slice().unwrap(), &[0.5, -1.25, 65504.0]);
        assert_eq!(g.node[0].attribute[0].i, i64::from(data_type::FLOAT));
        assert_eq!(onnx::value_info_shape(&g.output[0]).unwrap().0, data_type::FLOAT);
        // A byte input read through a Cast becomes float32.
        let cast = make_node("Cast", "c", &["x"], &["xf"], vec![onnx::attr::int("to", i64::from(data_type::FLOAT))]);
        let g = GraphProto {
            node: vec![cast],
            input: vec![make_value_info("x", data_type::UINT8, &[None, Some(3)])],
            output: vec![make_value_info("xf", data_type::FLOAT, &[None, Some(3)])],
            ..Default::default()
        };
        let m = ModelProto { graph: Some(g), ..Default::default() };
        assert!(byte_input(&m));
        let g = as_float32(&m).unwrap().unwrap().graph.unwrap();
        assert_eq!(onnx::value_info_shape(&g.input[0]).unwrap().0, data_type::FLOAT);
        // A float32 model is left alone.
        assert!(as_float32(&ModelProto { graph: Some(GraphProto::default()), ..Default::default() })
            .unwrap()
            .is_none());
    }
}
