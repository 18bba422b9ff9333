//! A classifier as gradwatch uses it: its bytes and sha256, the preprocessing and class names
//! read from its `metadata_props`, and its compiled gradient graph.

use std::path::{Path, PathBuf};

use ndarray::Array4;
use sha2::{Digest, Sha256};

use crate::frame::RgbImage;
use crate::grad::{self, CompileOptions, Compiled, GradError};
use crate::onnx::{self, ModelProto, OnnxError};

/// The reference model shipped in the repository.
pub const DEFAULT_MODEL: &str = "models/gtsrb-resnet18.onnx";

/// Errors loading a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file could not be read or decoded.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// The gradient graph could not be built.
    #[error(transparent)]
    Grad(#[from] GradError),
    /// The metadata is inconsistent.
    #[error("model metadata '{key}': {why}")]
    Metadata {
        /// The metadata key.
        key: String,
        /// What is wrong.
        why: String,
    },
}

/// Preprocessing and labels, from the model's metadata (keys `gradwatch.*`, written by
/// `models/train/train.py`); models without them get the input size from the graph, inputs
/// scaled to [0, 1] and class names `class N`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    /// Model name (`gradwatch.model_name`, else the file stem).
    pub name: String,
    /// sha256 of the model file, hex.
    pub sha256: String,
    /// Input width and height.
    pub width: usize,
    /// Input height.
    pub height: usize,
    /// Multiplier from u8 to float (`gradwatch.scale`, default 1/255).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling (RGB).
    pub mean: [f32; 3],
    /// Per-channel std divided by after subtracting the mean (RGB).
    pub std: [f32; 3],
    /// Channel order the model expects: true for BGR.
    pub bgr: bool,
    /// Whether the model takes NHWC input.
    pub nhwc: bool,
    /// Class names, one per logit.
    pub class_names: Vec<String>,
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn triple(meta: &std::collections::HashMap<String, String>, key: &str, default: f32) -> Result<[f32; 3], ModelError> {
    let Some(v) = meta.get(key) else { return Ok([default; 3]) };
    let parts: Vec<f32> = v
        .split(',')
        .map(|s| s.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|e| ModelError::Metadata { key: key.into(), why: format!("'{v}': {e}") })?;
    match parts.as_slice() {
        [a] => Ok([*a; 3]),
        [a, b, c] => Ok([*a, *b, *c]),
        _ => Err(ModelError::Metadata { key: key.into(), why: format!("'{v}' must hold 1 or 3 numbers") }),
    }
}

impl ModelInfo {
    /// Reads the metadata of `model` (whose file bytes hash to `sha256`), with the input shape
    /// of its compiled graph.
    pub fn new(model: &ModelProto, sha256: &str, compiled: &Compiled, fallback_name: &str) -> Result<Self, ModelError> {
        let meta = onnx::metadata(model);
        let nhwc = matches!(compiled.input_shape.as_slice(), [_, _, 3]) && compiled.input_shape[0] != 3;
        let (height, width) = match (nhwc, compiled.input_shape.as_slice()) {
            (false, [_, h, w]) | (true, [h, w, _]) => (*h, *w),
            (_, other) => {
                return Err(ModelError::Metadata {
                    key: "input".into(),
                    why: format!("expected an image input [N,3,H,W] or [N,H,W,3], found [N,{other:?}]"),
                })
            }
        };
        let scale = match meta.get("gradwatch.scale") {
            Some(s) => {
                s.parse().map_err(|e| ModelError::Metadata { key: "gradwatch.scale".into(), why: format!("{e}") })?
            }
            None => 1.0 / 255.0,
        };
        let std = triple(&meta, "gradwatch.std", 1.0)?;
        if std.contains(&0.0) {
            return Err(ModelError::Metadata { key: "gradwatch.std".into(), why: "must not be 0".into() });
        }
        let class_names = match meta.get("gradwatch.class_names") {
            Some(s) => serde_json::from_str::<Vec<String>>(s)
                .map_err(|e| ModelError::Metadata { key: "gradwatch.class_names".into(), why: e.to_string() })?,
            None => (0..compiled.num_classes).map(|i| format!("class {i}")).collect(),
        };
        if class_names.len() != compiled.num_classes {
            return Err(ModelError::Metadata {
                key: "gradwatch.class_names".into(),
                why: format!("{} names for {} classes", class_names.len(), compiled.num_classes),
            });
        }
        Ok(ModelInfo {
            name: meta.get("gradwatch.model_name").cloned().unwrap_or_else(|| fallback_name.to_string()),
            sha256: sha256.to_string(),
            width,
            height,
            scale,
            mean: triple(&meta, "gradwatch.mean", 0.0)?,
            std,
            bgr: meta.get("gradwatch.color_order").is_some_and(|v| v.eq_ignore_ascii_case("BGR")),
            nhwc,
            class_names,
        })
    }

    /// Resizes (bilinear) and normalises images into the model's input tensor.
    pub fn preprocess<'a>(&self, images: impl ExactSizeIterator<Item = &'a RgbImage>) -> Array4<f32> {
        let n = images.len();
        let (h, w) = (self.height, self.width);
        let mut out = if self.nhwc { Array4::zeros((n, h, w, 3)) } else { Array4::zeros((n, 3, h, w)) };
        for (i, img) in images.enumerate() {
            let resized;
            let img = if img.width == w && img.height == h {
                img
            } else {
                resized = img.resize(w, h);
                &resized
            };
            for y in 0..h {
                for x in 0..w {
                    let p = img.pixel(x, y);
                    for c in 0..3 {
                        let src = if self.bgr { p[2 - c] } else { p[c] };
                        let v = (src as f32 * self.scale - self.mean[c]) / self.std[c];
                        if self.nhwc {
                            out[[i, y, x, c]] = v;
                        } else {
                            out[[i, c, y, x]] = v;
                        }
                    }
                }
            }
        }
        out
    }
}

/// A model loaded from disk and compiled in memory.
#[derive(Clone, Debug)]
pub struct LoadedModel {
    /// Where it came from.
    pub path: PathBuf,
    /// The original model.
    pub model: ModelProto,
    /// Its compiled gradient graph.
    pub compiled: Compiled,
    /// Preprocessing, names and hash.
    pub info: ModelInfo,
}

impl LoadedModel {
    /// Reads, hashes and compiles a model file.
    pub fn load(path: &Path, opts: &CompileOptions) -> Result<Self, ModelError> {
        let bytes = std::fs::read(path).map_err(|source| OnnxError::Io { path: path.display().to_string(), source })?;
        let model = onnx::decode(&bytes)?;
        let compiled = grad::compile(&model, opts)?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        let info = ModelInfo::new(&model, &sha256_hex(&bytes), &compiled, &stem)?;
        Ok(LoadedModel { path: path.to_path_buf(), model, compiled, info })
    }
}

impl LoadedModel {
    /// Drops the model's graph ([`LoadedModel::model`], its weights) and the gradient graph
    /// ([`Compiled::model`], the weights and their flipped copies): about 45 and 90 MB for the
    /// reference ResNet-18. A session holds its own copy; the daemon keeps only the names,
    /// preprocessing and hash once its sessions are built. Both are empty afterwards.
    pub fn release_graphs(&mut self) {
        self.model = ModelProto::default();
        self.compiled.model = ModelProto::default();
    }
}

/// Index and value of the largest softmax probability of a logits row.
pub fn top_class(logits: &[f32]) -> (usize, f32) {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&z| (z - m).exp()).sum();
    let (i, z) = logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (i, &z)| if z > a.1 { (i, z) } else { a });
    (i, ((z - m).exp() / sum).clamp(0.0, 1.0))
}
