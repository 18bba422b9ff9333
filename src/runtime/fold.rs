//! ONNX Runtime as the gradient compiler's evaluator of constant-only nodes it has no folding
//! rule for (`grad::set_external_fold`): the node alone in a graph whose initializers are its
//! inputs, run once on the CPU.

use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;

use crate::onnx::{
    self, data_type, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto,
};

/// Makes `grad::compile` fold any constant-only node through ONNX Runtime (the library is
/// loaded on first use, from where [`super::init`] finds it). The `gradwatch` binary calls this
/// at start; a library user calls it to compile models such nodes appear in.
pub fn register_constant_folding() {
    crate::grad::set_external_fold(evaluate);
}

fn evaluate(node: &NodeProto, inputs: &[Option<&TensorProto>], opset: i64) -> Result<Vec<TensorProto>, String> {
    let (_, env) = super::environment(None).map_err(|e| e.to_string())?;
    let outputs: Vec<&String> = node.output.iter().filter(|o| !o.is_empty()).collect();
    let graph = GraphProto {
        name: "gradwatch-fold".into(),
        node: vec![node.clone()],
        initializer: inputs.iter().flatten().map(|t| (*t).clone()).collect(),
        output: outputs.iter().map(|o| ValueInfoProto { name: (*o).clone(), ..Default::default() }).collect(),
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: opset }],
        graph: Some(graph),
        ..Default::default()
    };
    let bytes = onnx::encode(&model);
    let mut session = Session::builder(&env)
        .map_err(msg)?
        .with_optimization_level(GraphOptimizationLevel::Disable)
        .map_err(msg)?
        .with_intra_threads(1)
        .map_err(msg)?
        .commit_from_memory(&bytes)
        .map_err(msg)?;
    let feed: Vec<(std::borrow::Cow<'_, str>, ort::session::SessionInputValue<'_>)> = Vec::new();
    let values = session.run(feed).map_err(msg)?;
    outputs
        .iter()
        .map(|name| {
            let v = values.get(name.as_str()).ok_or_else(|| format!("no value for output '{name}'"))?;
            to_tensor(name, v)
        })
        .collect()
}

/// An output as a tensor of the kinds the compiler's folder reads (float, integer, boolean).
fn to_tensor(name: &str, v: &ort::value::DynValue) -> Result<TensorProto, String> {
    let dims = |s: &[usize]| s.to_vec();
    if let Ok(a) = v.try_extract_array::<f32>() {
        return Ok(onnx::make_tensor_f32(name, &dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()));
    }
    if let Ok(a) = v.try_extract_array::<f64>() {
        return Ok(onnx::make_tensor_f32(name, &dims(a.shape()), &a.iter().map(|&x| x as f32).collect::<Vec<_>>()));
    }
    if let Ok(a) = v.try_extract_array::<i64>() {
        return Ok(onnx::make_tensor_i64(name, &dims(a.shape()), &a.iter().copied().collect::<Vec<_>>()));
    }
    if let Ok(a) = v.try_extract_array::<i32>() {
        return Ok(onnx::make_tensor_i64(name, &dims(a.shape()), &a.iter().map(|&x| i64::from(x)).collect::<Vec<_>>()));
    }
    if let Ok(a) = v.try_extract_array::<bool>() {
        let ints: Vec<i64> = a.iter().map(|&b| i64::from(b)).collect();
        let mut t = onnx::make_tensor_i64(name, &dims(a.shape()), &ints);
        t.data_type = data_type::BOOL;
        t.raw_data = a.iter().map(|&b| u8::from(b)).collect();
        return Ok(t);
    }
    Err(format!("output '{name}' is of a type the compiler does not fold ({:?})", v.dtype()))
}

fn msg(e: impl std::fmt::Display) -> String {
    e.to_string()
}
