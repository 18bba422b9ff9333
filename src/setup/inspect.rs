//! Step 1 of `gradwatch init`: what the ONNX file is. Exactly one float image input, class
//! scores `[N, C]` as the first output, operators the gradient compiler differentiates; then
//! the model loaded and compiled with the preprocessing overrides applied.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use super::{bad, SetupError};
use crate::grad::{CompileOptions, Preset};
use crate::model::{LoadedModel, ModelError, PreprocessOverrides, Preprocessing};
use crate::onnx::{self, ModelProto};

/// What the ONNX file says before compiling.
#[derive(Clone, Debug)]
pub struct Inspection {
    /// The image input's name.
    pub input: String,
    /// Its dimensions (`None`: symbolic).
    pub dims: Vec<Option<i64>>,
    /// The first output's name (the class scores).
    pub output: String,
    /// Operator types with their node counts (`domain:op` outside the standard domain).
    pub ops: BTreeMap<String, usize>,
    /// Operator types the compiler has no rule for (in any node, needed or not).
    pub unknown_ops: Vec<String>,
    /// The model is float16 or bfloat16 (read as float32: [`crate::grad::as_float32`]).
    pub half: bool,
    /// The image input is 8-bit pixels the model casts to float ([`crate::grad::byte_input`]).
    pub bytes: bool,
}

/// `dims` as `[N,3,32,32]`: a symbolic batch axis is `N`, another symbolic axis `?`.
pub fn show_dims(dims: &[Option<i64>]) -> String {
    let d: Vec<String> = dims
        .iter()
        .enumerate()
        .map(|(i, d)| match d {
            Some(v) => v.to_string(),
            None if i == 0 => "N".into(),
            None => "?".into(),
        })
        .collect();
    format!("[{}]", d.join(","))
}

/// Checks that `model` is a classifier gradwatch can use: exactly one float image input,
/// class scores `[N, C]` as the first output. Every refusal is [`SetupError::BadInput`].
pub fn inspect(model: &ModelProto) -> Result<Inspection, SetupError> {
    let g = model.graph.as_ref().ok_or_else(|| bad("the ONNX file holds no graph"))?;
    let inits: HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<_> = g.input.iter().filter(|i| !inits.contains(i.name.as_str())).collect();
    let input = match inputs.as_slice() {
        [one] => *one,
        [] => return Err(bad("not a classifier gradwatch can use: the model has no input")),
        many => {
            let names: Vec<&str> = many.iter().map(|i| i.name.as_str()).collect();
            return Err(bad(format!(
                "not a classifier gradwatch can use: it has {} inputs ({}); gradwatch needs exactly one, the image \
                 ([N,3,H,W] or [N,H,W,3]). Re-export the model with the image as its only input (other inputs \
                 folded into constants)",
                many.len(),
                names.join(", ")
            )));
        }
    };
    let (elem, dims) = onnx::value_info_shape(input).ok_or_else(|| {
        bad(format!("input '{}' has no tensor shape; re-export it with an [N,3,H,W] or [N,H,W,3] input", input.name))
    })?;
    // Colour ([N,3,H,W], [N,H,W,3]) or gray ([N,1,H,W], [N,H,W,1]).
    let channels = |d: Option<i64>| d == Some(3) || d == Some(1);
    let image = dims.len() == 4 && (channels(dims[1]) || channels(dims[3]));
    // Half-precision inputs, and 8-bit ones the model casts to float first, are read as
    // float32 (`grad::as_float32`).
    use onnx::data_type::{BFLOAT16, FLOAT, FLOAT16};
    let bytes = crate::grad::byte_input(model);
    let float = matches!(elem, FLOAT | FLOAT16 | BFLOAT16) || bytes;
    if !float || !image {
        let what = match elem {
            FLOAT => "float32".to_string(),
            FLOAT16 => "float16".to_string(),
            BFLOAT16 => "bfloat16".to_string(),
            onnx::data_type::UINT8 | onnx::data_type::INT8 => {
                "8-bit, read other than through a Cast to float (gradwatch feeds float pixels)".to_string()
            }
            other => format!("of type {other}"),
        };
        return Err(bad(format!(
            "not an image classifier: input '{}' is {what} {}; gradwatch needs one float image input [N,3,H,W] or \
             [N,H,W,3] (3 colour channels; [N,1,H,W] or [N,H,W,1] for gray)",
            input.name,
            show_dims(&dims)
        )));
    }
    let out = g.output.first().ok_or_else(|| bad("not a classifier: the model has no outputs"))?;
    if let Some((_, od)) = onnx::value_info_shape(out) {
        if od.len() != 2 {
            return Err(bad(format!(
                "no class axis: the first output '{}' is {}; gradwatch needs the class scores (logits or \
                 probabilities) as the first output, shaped [N, classes]",
                out.name,
                show_dims(&od)
            )));
        }
        if let Some(c) = od[1].filter(|&c| c < 2) {
            return Err(bad(format!(
                "no class axis: the first output '{}' has {c} class; gradwatch needs the scores of 2 or more \
                 classes, shaped [N, classes]",
                out.name
            )));
        }
    }
    let (ops, unknown_ops) = operators(g);
    let half = crate::grad::is_half_precision(model);
    Ok(Inspection { input: input.name.clone(), dims, output: out.name.clone(), ops, unknown_ops, half, bytes })
}

/// Node counts per operator type, and the types without a gradient rule.
fn operators(g: &onnx::GraphProto) -> (BTreeMap<String, usize>, Vec<String>) {
    let mut ops = BTreeMap::new();
    let mut unknown = Vec::new();
    for n in &g.node {
        let std_domain = onnx::is_default_domain(&n.domain);
        let name = if std_domain { n.op_type.clone() } else { format!("{}:{}", n.domain, n.op_type) };
        *ops.entry(name.clone()).or_insert(0) += 1;
        if (!std_domain || !crate::grad::SUPPORTED_OPS.contains(&n.op_type.as_str())) && !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    (ops, unknown)
}

/// A model ready to set up: inspected, compiled, the preprocessing overrides applied.
pub struct SetupModel {
    /// The model and its gradient graph.
    pub model: LoadedModel,
    /// The overridden preprocessing (what the calibration stores), `None` when the model's
    /// metadata (or the defaults) stand.
    pub stored: Option<Preprocessing>,
    /// Where the preprocessing came from, in words.
    pub source: &'static str,
    /// What the file says.
    pub inspection: Inspection,
}

/// Loads, inspects and compiles the model at `path` (the `preset`'s gradient graph) and applies
/// `overrides`. A file that is
/// not a usable classifier, one the compiler cannot differentiate (the operators without a
/// rule named) or overrides that do not fit its input are [`SetupError::BadInput`].
pub fn load(path: &Path, overrides: &PreprocessOverrides, preset: Preset) -> Result<SetupModel, SetupError> {
    let file = onnx::read(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let ins = inspect(&file.model).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let opts = CompileOptions { input_size: overrides.size, ..CompileOptions::preset(preset) };
    let mut model = match LoadedModel::from_file(path, file, &opts) {
        Ok(m) => m,
        Err(e) => {
            let mut msg = format!("{}: ", path.display());
            match &e {
                ModelError::Grad(_) => {
                    let _ = write!(msg, "gradwatch cannot compile its gradient graph: {e}");
                    if !ins.unknown_ops.is_empty() {
                        let _ = write!(
                            msg,
                            "\noperators in this model without a gradient rule: {}. Re-export without them (e.g. \
                             another opset, or the operator replaced by supported ones), or add a rule \
                             (src/grad/rules/mod.rs, \"Adding an operator\")",
                            ins.unknown_ops.join(", ")
                        );
                    }
                }
                _ => {
                    let _ = write!(msg, "{e}");
                }
            }
            return Err(bad(msg));
        }
    };
    let stored = model.override_preprocessing(overrides).map_err(|e| bad(format!("{}: {e}", path.display())))?;
    let has_meta = onnx::metadata(&model.model).keys().any(|k| k.starts_with("gradwatch."));
    let source = match (&stored, has_meta) {
        (Some(_), _) => "overridden on the command line; stored in the calibration as [model.preprocessing]",
        (None, true) => "the model's gradwatch.* metadata",
        (None, false) => "defaults (the model has no gradwatch.* metadata): check them",
    };
    Ok(SetupModel { model, stored, source, inspection: ins })
}

impl SetupModel {
    /// What was found, one line each: the file and its hash, input, output, operators,
    /// gradient features, preprocessing and where it came from.
    pub fn summary(&self, path: &Path) -> Vec<String> {
        let (m, ins) = (&self.model, &self.inspection);
        let pre = m.info.preprocessing();
        let ops: Vec<String> = ins.ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
        let mut lines = vec![
            format!("model {} (sha256 {}):", path.display(), m.info.sha256.get(..12).unwrap_or(&m.info.sha256)),
            format!(
                "  input '{}' {}: {} {}x{}{}",
                ins.input,
                show_dims(&ins.dims),
                pre.layout.name(),
                pre.width,
                pre.height,
                match ins.dims.first() {
                    Some(Some(b)) => format!(" (batch fixed at {b} in the file: run with any batch)"),
                    _ => String::new(),
                }
            ),
            format!("  output '{}': {} classes", ins.output, m.compiled.num_classes),
            format!("  operators: {}", ops.join(", ")),
            format!("  gradient features: {} parameter tensors", m.compiled.features.len()),
            format!("  preprocessing: {} ({})", pre.summary(), self.source),
        ];
        if ins.bytes {
            lines.insert(
                2,
                "  input type: 8-bit pixels the model casts to float itself; fed as float32 pixel values (scale 1 \
                 unless overridden)"
                    .into(),
            );
        }
        if ins.half {
            lines.insert(
                4,
                "  precision: half (float16/bfloat16), read as float32 with the same weights: gradients need \
                 float32's range; the logits differ from a half-precision engine's by its rounding"
                    .into(),
            );
        }
        lines
    }
}
