//! Constant folding of any other operator: a node whose inputs are all constants and for which
//! the compiler has no folding rule of its own (`fold.rs`, `fold_math.rs`) is handed to an
//! evaluator registered by the program, ONNX Runtime itself in the `gradwatch` binary
//! (`runtime::register_constant_folding`). The exporters leave such nodes where a model
//! computes a tensor from its parameters and constants only: XCiT's Fourier position encoding
//! through a `Conv`, NF-Nets' weight standardisation through `BatchNormalization`, GCViT's
//! `OneHot` index tables. As with every fold, the value only informs the analysis (shapes, which
//! constants feed the rules); the node stays in the compiled graph.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::fold::is_batch_derived;
use crate::onnx::{self, data_type, NodeProto, TensorProto};

/// Evaluates `node` on the given constant inputs (in the node's input order; `None` for an
/// absent optional input) under the default-domain `opset`; returns one tensor per output, named
/// as the outputs, or why it could not.
pub type ExternalFold =
    fn(node: &NodeProto, inputs: &[Option<&TensorProto>], opset: i64) -> Result<Vec<TensorProto>, String>;

static EXTERNAL: OnceLock<ExternalFold> = OnceLock::new();

/// Registers the evaluator for operators the compiler cannot fold itself (once per process; a
/// later call is ignored). Without one, such a node is refused with the fix.
pub fn set_external_fold(f: ExternalFold) {
    let _ = EXTERNAL.set(f);
}

/// Folds `n` through the registered evaluator; `Err` says why not (no evaluator, a value sized
/// by the symbolic batch, or the evaluator's own error).
pub(super) fn fold(
    n: &NodeProto,
    consts: &HashMap<String, TensorProto>,
    opset: i64,
) -> Result<Vec<TensorProto>, String> {
    let eval = EXTERNAL.get().ok_or_else(|| format!("no folding rule for {}", n.op_type))?;
    if !crate::onnx::is_default_domain(&n.domain) {
        return Err(format!("no folding rule for {}::{}", n.domain, n.op_type));
    }
    let inputs: Vec<Option<&TensorProto>> = n.input.iter().map(|s| consts.get(s)).collect();
    for (name, t) in n.input.iter().zip(&inputs) {
        match t {
            None if !name.is_empty() => return Err(format!("input '{name}' is not a constant")),
            Some(t) if is_int(t) && onnx::tensor_i64(t).is_ok_and(|a| a.iter().any(|&v| is_batch_derived(v))) => {
                return Err("it computes on the batch size: a batch-sized constant is not supported".into());
            }
            _ => {}
        }
    }
    let out =
        eval(n, &inputs, opset).map_err(|e| format!("no folding rule for {}, and ONNX Runtime: {e}", n.op_type))?;
    let wanted = n.output.iter().filter(|o| !o.is_empty()).count();
    if out.len() < wanted {
        return Err(format!("{} values for {wanted} outputs", out.len()));
    }
    Ok(out)
}

fn is_int(t: &TensorProto) -> bool {
    matches!(t.data_type, data_type::INT64 | data_type::INT32)
}
