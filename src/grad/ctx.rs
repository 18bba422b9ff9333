//! The compiler's error type and the analysis context ([`Ctx`]) the rules read and write.

use std::collections::{HashMap, HashSet};

use super::builder::Builder;
use super::{affine, supported_ops, ConvNorm, ParamKind};
use crate::onnx::{self, NodeProto, OnnxError, TensorProto};

/// Why a model could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum GradError {
    /// The model itself is malformed.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// An operator the compiler cannot differentiate.
    #[error("unsupported operator '{op}' (node '{node}'); gradwatch compiles: {}", supported_ops())]
    Unsupported {
        /// Operator type.
        op: String,
        /// Node name.
        node: String,
    },
    /// A supported operator used in a way the compiler cannot handle.
    #[error("node '{node}' ({op}): {why}")]
    Node {
        /// Node name.
        node: String,
        /// Operator type.
        op: String,
        /// What is wrong.
        why: String,
    },
    /// The model as a whole does not fit (inputs, outputs, opset, options).
    #[error("{0}")]
    Model(String),
}

/// The error for a node whose operator has no rule; for the integer operators of quantized
/// models, the cause and the form that works.
pub(crate) fn unsupported(n: &NodeProto) -> GradError {
    match quantized_why(&n.op_type) {
        Some(why) => node_err(n, why),
        None => GradError::Unsupported { op: n.op_type.clone(), node: n.name.clone() },
    }
}

/// Why a quantized model's integer operator (standard or ONNX Runtime's `com.microsoft` ones)
/// cannot be compiled, and what to give instead; `None` for any other operator.
pub(crate) fn quantized_why(op: &str) -> Option<&'static str> {
    const DYNAMIC: &str = "dynamic quantization (onnxruntime's quantize_dynamic) scales each activation by the \
        range of the whole batch, so one frame's features would depend on the others in its batch; give the \
        float model, or quantize it statically in the QDQ form (quantize_static(..., \
        quant_format=QuantFormat.QDQ)), which gradwatch reads";
    const QOPERATOR: &str = "an integer-only quantized operator (the QOperator form); quantize the model in the \
        QDQ form instead (quantize_static(..., quant_format=QuantFormat.QDQ)), which gradwatch reads, or give \
        the float model";
    match op {
        "DynamicQuantizeLinear" | "MatMulInteger" | "DynamicQuantizeMatMul" | "MatMulIntegerToFloat" => Some(DYNAMIC),
        "ConvInteger" | "QGemm" | "QAttention" => Some(QOPERATOR),
        _ if op.starts_with("QLinear") => Some(QOPERATOR),
        _ => None,
    }
}

pub(crate) fn node_err(n: &NodeProto, why: impl Into<String>) -> GradError {
    GradError::Node { node: n.name.clone(), op: n.op_type.clone(), why: why.into() }
}

/// What the analysis knows while compiling.
pub(crate) struct Ctx {
    /// Constant tensors: initializers and Constant-node outputs.
    pub consts: HashMap<String, TensorProto>,
    /// Per-sample shapes of activations (tensors carrying the batch axis first).
    pub shapes: HashMap<String, Vec<usize>>,
    /// Values that depend on a parameter (their gradient is needed).
    pub param_dep: HashSet<String>,
    /// Parameter tensors -> per-sample squared norm tensor `[N]`.
    pub norms: HashMap<String, String>,
    /// Selected parameters (the features) in graph order.
    pub params: Vec<(String, ParamKind)>,
    /// The names in `params`.
    pub param_set: HashSet<String>,
    /// Conv plans chosen.
    pub conv_plans: Vec<(String, &'static str)>,
    /// Forward nodes that read each activation (graph outputs count as a reader too), so a
    /// node's backward can see the chain it sits in (Conv -> BatchNormalization -> Relu).
    pub readers: HashMap<String, Vec<NodeProto>>,
    /// Op type of the forward node that writes each activation.
    pub producer: HashMap<String, String>,
    /// Activations whose gradient was handed on without a per-channel factor it still owes:
    /// a BatchNormalization's gain folded into the Conv before it (one full-size Mul fewer).
    pub gain: HashMap<String, Vec<f32>>,
    /// Folded constants that are a bijective view (Transpose, Reshape...) of an initializer:
    /// the initializer's name, which the feature takes.
    pub origin: HashMap<String, String>,
    /// Batch-dependent integer tensors (see [`affine::Affine`]).
    pub affine: HashMap<String, affine::Affine>,
    /// Outputs of flattens of the whole batch (`Reshape(x, [-1])`) -> their input.
    pub merged: HashMap<String, String>,
    /// Nodes the analysis rewrote, by their first output: the compiled graph holds these.
    pub replaced: HashMap<String, Vec<NodeProto>>,
    /// Activations stored batch-first whose original shape holds the batch elsewhere.
    pub layouts: HashMap<String, super::layout::Layout>,
    /// The batch size of a fixed-batch export (its literal reshape targets are written for it).
    pub fixed_batch: Option<usize>,
    /// Reshape targets the batch rewrite made batch-first -> the export's literal targets.
    pub literal_targets: HashMap<String, Vec<i64>>,
    /// Whether a node was rewritten for a tensor that holds the batch elsewhere.
    pub moved: bool,
    /// Compute gradients for every activation (the input gradient is wanted).
    pub all_grads: bool,
    pub conv_norm: ConvNorm,
    /// Emit only what TensorRT's ONNX parser takes (see [`super::CompileOptions::tensorrt`]).
    pub tensorrt: bool,
    pub b: Builder,
}

impl Ctx {
    pub fn is_act(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    pub fn shape(&self, n: &NodeProto, name: &str) -> Result<Vec<usize>, GradError> {
        self.shapes.get(name).cloned().ok_or_else(|| node_err(n, format!("input '{name}' has no known shape")))
    }

    /// The one forward node that reads `name`, when exactly one does and it is no graph output.
    pub fn sole_reader(&self, name: &str) -> Option<&NodeProto> {
        match self.readers.get(name).map(Vec::as_slice) {
            Some([n]) if !n.op_type.is_empty() => Some(n),
            _ => None,
        }
    }

    /// The parameter tensor a constant input is: its own name, or the initializer it is a
    /// folded view of.
    pub fn param_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.origin.get(name).map(String::as_str).unwrap_or(name)
    }

    /// Whether `name` is a selected parameter: its rule must record its norm.
    pub fn is_param(&self, name: &str) -> bool {
        self.param_set.contains(self.param_name(name))
    }

    /// Whether the gradient of activation `name` must be formed.
    pub fn wants_grad(&self, name: &str) -> bool {
        self.is_act(name) && (self.all_grads || self.param_dep.contains(name))
    }

    pub fn const_f32(&self, n: &NodeProto, name: &str) -> Result<ndarray::ArrayD<f32>, GradError> {
        let t = self.consts.get(name).ok_or_else(|| node_err(n, format!("input '{name}' must be a constant")))?;
        Ok(onnx::tensor_f32(t)?)
    }

    pub fn const_i64(&self, n: &NodeProto, name: &str) -> Result<Vec<i64>, GradError> {
        let t = self.consts.get(name).ok_or_else(|| node_err(n, format!("input '{name}' must be a constant")))?;
        Ok(onnx::tensor_i64(t)?.iter().copied().collect())
    }

    pub fn const_dims(&self, n: &NodeProto, name: &str) -> Result<Vec<usize>, GradError> {
        let t = self.consts.get(name).ok_or_else(|| node_err(n, format!("input '{name}' must be a constant")))?;
        Ok(t.dims.iter().map(|&d| d.max(0) as usize).collect())
    }

    /// Records a parameter's per-sample squared norm.
    pub fn add_norm(&mut self, n: &NodeProto, param: &str, norm: String) -> Result<(), GradError> {
        let param = self.param_name(param).to_string();
        if self.norms.insert(param.clone(), norm).is_some() {
            return Err(node_err(
                n,
                format!("parameter '{param}' is used by more than one node; shared weights are not supported"),
            ));
        }
        Ok(())
    }
}
