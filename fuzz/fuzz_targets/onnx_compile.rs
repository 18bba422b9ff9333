//! ONNX bytes -> `onnx::decode` -> the tensor readers -> `grad::compile` (default options and,
//! when that succeeds, with every optional output) -> `onnx::encode` of the result.
//! Malformed models must be errors, never panics or huge allocations.
#![no_main]

use gradwatch::grad::{compile, CompileOptions};
use gradwatch::onnx;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(model) = onnx::decode(data) else { return };
    if let Some(g) = &model.graph {
        for t in &g.initializer {
            let _ = onnx::tensor_f32(t);
            let _ = onnx::tensor_i64(t);
        }
    }
    let Ok(compiled) = compile(&model, &CompileOptions::default()) else { return };
    let bytes = onnx::encode(&compiled.model);
    assert!(onnx::decode(&bytes).is_ok(), "a compiled model must decode");
    let all = CompileOptions { penultimate: true, input_grad: true, ..CompileOptions::default() };
    let _ = compile(&model, &all);
});
