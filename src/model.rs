//! A classifier as gradwatch uses it: its bytes and sha256, the preprocessing and class names
//! read from its `metadata_props` (or overridden: [`Preprocessing`], stored in the
//! calibration file so every command and the daemon use it), and its compiled gradient graph.

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
    /// A preprocessing (override or stored in a calibration) that does not fit the model's input.
    #[error("preprocessing does not fit the model: {0}")]
    Preprocessing(String),
    /// The graph has no outputs, so no class scores.
    #[error("the model has no outputs")]
    NoOutputs,
}

/// Memory order of the model's image input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[N, 3, H, W]` (PyTorch's).
    Nchw,
    /// `[N, H, W, 3]` (TensorFlow/Keras's).
    Nhwc,
}

impl Layout {
    /// `NCHW` or `NHWC`.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "NCHW",
            Layout::Nhwc => "NHWC",
        }
    }
}

impl std::str::FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "nchw" => Ok(Layout::Nchw),
            "nhwc" => Ok(Layout::Nhwc),
            _ => Err(format!("layout '{s}': use nchw ([N,3,H,W]) or nhwc ([N,H,W,3])")),
        }
    }
}

/// Channel order the model expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    /// Red, green, blue (what gradwatch's frames are).
    Rgb,
    /// Blue, green, red (OpenCV-trained models).
    Bgr,
    /// One channel, the luma of the RGB frame (ITU-R BT.601, `0.299 R + 0.587 G + 0.114 B`, as
    /// OpenCV's `COLOR_RGB2GRAY` and PIL's `convert("L")`): for a model whose input has one
    /// channel, the only order it takes.
    Gray,
}

impl ColorOrder {
    /// `RGB` or `BGR`.
    pub fn name(self) -> &'static str {
        match self {
            ColorOrder::Rgb => "RGB",
            ColorOrder::Bgr => "BGR",
            ColorOrder::Gray => "GRAY",
        }
    }

    /// Channels of the model input: 1 for gray, else 3.
    pub fn channels(self) -> usize {
        if self == ColorOrder::Gray {
            1
        } else {
            3
        }
    }

    /// The model-input value of channel `c` of RGB pixel `p` (before scaling).
    pub fn channel(self, p: [u8; 3], c: usize) -> f32 {
        match self {
            ColorOrder::Rgb => f32::from(p[c]),
            ColorOrder::Bgr => f32::from(p[2 - c]),
            ColorOrder::Gray => 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]),
        }
    }
}

impl std::str::FromStr for ColorOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "rgb" => Ok(ColorOrder::Rgb),
            "bgr" => Ok(ColorOrder::Bgr),
            "gray" | "grey" => Ok(ColorOrder::Gray),
            _ => Err(format!("color order '{s}': use rgb, bgr or gray")),
        }
    }
}

/// ImageNet's per-channel mean (RGB, on [0, 1] pixels): `--mean imagenet`.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet's per-channel std (RGB, on [0, 1] pixels): `--std imagenet`.
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// How an RGB8 frame becomes the model's input: resized (bilinear) to `width` x `height`,
/// channels put in `color_order`, each value `(pixel * scale - mean[c]) / std[c]`, laid out as
/// `layout`. Stored in a calibration file as `[model.preprocessing]` when it differs from the
/// model's own metadata, so `run`, `score`, `explain`, `check-config` and heat maps use it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// Input layout.
    pub layout: Layout,
    /// Input width (must be the model's).
    pub width: usize,
    /// Input height (must be the model's).
    pub height: usize,
    /// Channel order.
    pub color_order: ColorOrder,
    /// Multiplier from u8 to float (1/255 maps pixels to [0, 1]).
    pub scale: f32,
    /// Per-channel mean subtracted after scaling, in the model's channel order's RGB terms
    /// (index 0 = red).
    pub mean: [f32; 3],
    /// Per-channel std divided by after subtracting the mean.
    pub std: [f32; 3],
}

impl Preprocessing {
    /// Checks that this fits a model whose per-sample input shape (without the batch axis) is
    /// `input_shape`, and that the numbers are usable; the error says what to change.
    pub fn check_fits(&self, input_shape: &[usize]) -> Result<(), ModelError> {
        let shown = format!("[N,{}]", input_shape.iter().map(usize::to_string).collect::<Vec<_>>().join(","));
        let err = |why: String| Err(ModelError::Preprocessing(why));
        let gray = self.color_order == ColorOrder::Gray;
        let (h, w) = match (self.layout, input_shape) {
            (Layout::Nchw, [1, h, w]) | (Layout::Nhwc, [h, w, 1]) if gray => (*h, *w),
            (Layout::Nchw, [1, _, _]) | (Layout::Nhwc, [_, _, 1]) => {
                return err(format!(
                    "the model's input {shown} has one channel: use color order gray (frames become their luma)"
                ))
            }
            (Layout::Nchw, [3, _, _]) | (Layout::Nhwc, [_, _, 3]) if gray => {
                return err(format!(
                    "color order gray needs a one-channel input, the model's is {shown}: use rgb or bgr"
                ))
            }
            (Layout::Nchw, [3, h, w]) => (*h, *w),
            (Layout::Nhwc, [h, w, 3]) => (*h, *w),
            (Layout::Nchw, [_, _, 3]) => {
                return err(format!(
                    "layout NCHW needs an input [N,3,H,W] but the model's is {shown} (channels last): use layout nhwc"
                ))
            }
            (Layout::Nhwc, [3, _, _]) => {
                return err(format!(
                    "layout NHWC needs an input [N,H,W,3] but the model's is {shown} (channels first): use layout nchw"
                ))
            }
            (l, _) => {
                return err(format!(
                    "layout {} needs a 3-channel (or, gray, 1-channel) image input, the model's is {shown}; \
                     gradwatch needs an image classifier ([N,3,H,W], [N,H,W,3], [N,1,H,W] or [N,H,W,1])",
                    l.name()
                ))
            }
        };
        if (self.width, self.height) != (w, h) {
            return err(format!(
                "size {}x{} does not match the model's input {shown} ({w}x{h}, fixed in the model); give size \
                 {w}x{h} or leave it out (frames are resized to the model's input size)",
                self.width, self.height
            ));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return err(format!("scale {} must be a positive number (1/255 maps pixels to [0, 1])", self.scale));
        }
        if self.mean.iter().any(|m| !m.is_finite()) {
            return err(format!("mean {:?} must be finite numbers", self.mean));
        }
        if self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return err(format!("std {:?} must be positive numbers", self.std));
        }
        Ok(())
    }

    /// One line for people: `NHWC 32x32 RGB, x*0.003922, mean [..], std [..]`.
    pub fn summary(&self) -> String {
        format!(
            "{} {}x{} {}, pixel*{} then (x - mean {:?}) / std {:?}",
            self.layout.name(),
            self.width,
            self.height,
            self.color_order.name(),
            fmt_scale(self.scale),
            self.mean,
            self.std
        )
    }
}

/// `1/255` for 1/255 (as people write it), else the number.
pub fn fmt_scale(scale: f32) -> String {
    if (scale - 1.0 / 255.0).abs() < 1e-9 {
        "1/255".into()
    } else {
        format!("{scale}")
    }
}

/// Preprocessing overrides (`--layout`, `--size`, `--color-order`, `--scale`, `--mean`,
/// `--std`); `None` keeps what the model (or a calibration) says.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PreprocessOverrides {
    /// Input layout.
    pub layout: Option<Layout>,
    /// Input (width, height).
    pub size: Option<(usize, usize)>,
    /// Channel order.
    pub color_order: Option<ColorOrder>,
    /// u8-to-float multiplier.
    pub scale: Option<f32>,
    /// Per-channel mean.
    pub mean: Option<[f32; 3]>,
    /// Per-channel std.
    pub std: Option<[f32; 3]>,
}

impl PreprocessOverrides {
    /// Whether nothing is overridden.
    pub fn is_empty(&self) -> bool {
        *self == PreprocessOverrides::default()
    }

    /// `base` with the overridden fields replaced.
    pub fn apply(&self, base: &Preprocessing) -> Preprocessing {
        let (width, height) = self.size.unwrap_or((base.width, base.height));
        Preprocessing {
            layout: self.layout.unwrap_or(base.layout),
            width,
            height,
            color_order: self.color_order.unwrap_or(base.color_order),
            scale: self.scale.unwrap_or(base.scale),
            mean: self.mean.unwrap_or(base.mean),
            std: self.std.unwrap_or(base.std),
        }
    }
}

/// Parses `WxH` or `S` (square), e.g. `224x224`.
pub fn parse_size(s: &str) -> Result<(usize, usize), String> {
    let bad = || format!("size '{s}': use WIDTHxHEIGHT (e.g. 224x224) or one number for a square");
    let (w, h) = match s.split_once(['x', 'X']) {
        Some((w, h)) => (w.trim().parse().map_err(|_| bad())?, h.trim().parse().map_err(|_| bad())?),
        None => {
            let v: usize = s.trim().parse().map_err(|_| bad())?;
            (v, v)
        }
    };
    if w == 0 || h == 0 {
        return Err(bad());
    }
    Ok((w, h))
}

/// Parses a scale: a number (`0.00392`, `1`) or a fraction (`1/255`).
pub fn parse_scale(s: &str) -> Result<f32, String> {
    let bad = || format!("scale '{s}': use a positive number or fraction, e.g. 1/255 or 1");
    let v = match s.split_once('/') {
        Some((a, b)) => {
            let (a, b): (f64, f64) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
            a / b
        }
        None => s.trim().parse::<f64>().map_err(|_| bad())?,
    };
    if !(v.is_finite() && v > 0.0) {
        return Err(bad());
    }
    Ok(v as f32)
}

/// Parses a per-channel triple: `imagenet` (with `imagenet` giving `named`), one number for
/// all channels, or three comma-separated numbers (R,G,B).
pub fn parse_triple(s: &str, named: [f32; 3]) -> Result<[f32; 3], String> {
    if s.trim().eq_ignore_ascii_case("imagenet") {
        return Ok(named);
    }
    let parts: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>())
        .collect::<Result<_, _>>()
        .map_err(|_| format!("'{s}': use imagenet, one number, or three comma-separated numbers (R,G,B)"))?;
    match parts.as_slice() {
        [a] if a.is_finite() => Ok([*a; 3]),
        [a, b, c] if [a, b, c].iter().all(|v| v.is_finite()) => Ok([*a, *b, *c]),
        _ => Err(format!("'{s}': use imagenet, one number, or three comma-separated numbers (R,G,B)")),
    }
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
    /// Channel order the model expects (gray for a one-channel input).
    pub color_order: ColorOrder,
    /// Whether the model takes NHWC input.
    pub nhwc: bool,
    /// Class names, one per logit.
    pub class_names: Vec<String>,
}

/// Hex sha256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
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

/// The channel order of `gradwatch.color_order`, else RGB; gray for a one-channel input.
fn color_order(
    meta: &std::collections::HashMap<String, String>,
    input_shape: &[usize],
    nhwc: bool,
) -> Result<ColorOrder, ModelError> {
    let one_channel = if nhwc { input_shape.last() == Some(&1) } else { input_shape.first() == Some(&1) };
    if one_channel {
        return Ok(ColorOrder::Gray);
    }
    match meta.get("gradwatch.color_order") {
        Some(v) => v.parse().map_err(|why| ModelError::Metadata { key: "gradwatch.color_order".into(), why }),
        None => Ok(ColorOrder::Rgb),
    }
}

impl ModelInfo {
    /// Reads the metadata of `model` (whose file bytes hash to `sha256`), with the input shape
    /// of its compiled graph.
    pub fn new(model: &ModelProto, sha256: &str, compiled: &Compiled, fallback_name: &str) -> Result<Self, ModelError> {
        let meta = onnx::metadata(model);
        let nhwc = match meta.get("gradwatch.input_layout") {
            Some(l) => {
                l.parse::<Layout>().map_err(|why| ModelError::Metadata { key: "gradwatch.input_layout".into(), why })?
                    == Layout::Nhwc
            }
            None => {
                matches!(compiled.input_shape.as_slice(), [c, _, 3 | 1] if *c != 3 && *c != 1)
            }
        };
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
            Some(s) => parse_scale(s).map_err(|why| ModelError::Metadata { key: "gradwatch.scale".into(), why })?,
            // A model with a byte input takes the pixel values as they are.
            None if grad::byte_input(model) => 1.0,
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
            color_order: color_order(&meta, &compiled.input_shape, nhwc)?,
            nhwc,
            class_names,
        })
    }

    /// The preprocessing in use.
    pub fn preprocessing(&self) -> Preprocessing {
        Preprocessing {
            layout: if self.nhwc { Layout::Nhwc } else { Layout::Nchw },
            width: self.width,
            height: self.height,
            color_order: self.color_order,
            scale: self.scale,
            mean: self.mean,
            std: self.std,
        }
    }

    /// Uses `p` from now on, after checking it fits the per-sample `input_shape`.
    pub fn set_preprocessing(&mut self, p: &Preprocessing, input_shape: &[usize]) -> Result<(), ModelError> {
        p.check_fits(input_shape)?;
        self.nhwc = p.layout == Layout::Nhwc;
        (self.width, self.height) = (p.width, p.height);
        self.color_order = p.color_order;
        (self.scale, self.mean, self.std) = (p.scale, p.mean, p.std);
        Ok(())
    }

    /// Resizes (bilinear) and normalises images into the model's input tensor.
    pub fn preprocess<'a>(&self, images: impl ExactSizeIterator<Item = &'a RgbImage>) -> Array4<f32> {
        let n = images.len();
        let (h, w) = (self.height, self.width);
        let ch = self.color_order.channels();
        let mut out = if self.nhwc { Array4::zeros((n, h, w, ch)) } else { Array4::zeros((n, ch, h, w)) };
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
                    for c in 0..ch {
                        let v = (self.color_order.channel(p, c) * self.scale - self.mean[c]) / self.std[c];
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
        Self::from_file(path, onnx::read(path)?, opts)
    }

    /// Hashes and compiles a model file already read from `path` ([`onnx::read`]).
    pub fn from_file(path: &Path, file: onnx::ModelFile, opts: &CompileOptions) -> Result<Self, ModelError> {
        let sha256 = model_sha256(&file)?;
        let model = file.model;
        let compiled = grad::compile(&model, opts)?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
        let info = ModelInfo::new(&model, &sha256, &compiled, &stem)?;
        Ok(LoadedModel { path: path.to_path_buf(), model, compiled, info })
    }
}

impl LoadedModel {
    /// Compiles the gradient graph again with other options (another preset, as `init
    /// --preset auto` chooses after timing them). The preprocessing already set stays: it
    /// reads only the input shape and class count, which no option changes.
    pub fn recompile(&mut self, opts: &CompileOptions) -> Result<(), ModelError> {
        self.compiled = grad::compile(&self.model, opts)?;
        Ok(())
    }

    /// Uses the preprocessing a calibration stored (`[model.preprocessing]`), if any, instead
    /// of the model's metadata; an error when it does not fit the model's input.
    pub fn use_preprocessing(&mut self, p: Option<&Preprocessing>) -> Result<(), ModelError> {
        match p {
            Some(p) => self.info.set_preprocessing(p, &self.compiled.input_shape),
            None => Ok(()),
        }
    }

    /// Applies command-line overrides on top of the model's metadata; returns the resulting
    /// preprocessing when it differs from the metadata's or the model's input size is symbolic
    /// (what a calibration must store), `None` when the metadata's stands. An error when the result does not fit the model's input.
    pub fn override_preprocessing(&mut self, ov: &PreprocessOverrides) -> Result<Option<Preprocessing>, ModelError> {
        let base = self.info.preprocessing();
        let p = ov.apply(&base);
        self.info.set_preprocessing(&p, &self.compiled.input_shape)?;
        // A model of symbolic size runs at the size given: every later load needs it stored.
        Ok((p != base || grad::has_symbolic_size(&self.model)).then_some(p))
    }

    /// Drops the model's graph ([`LoadedModel::model`], its weights) and the gradient graph
    /// ([`Compiled::model`], the weights and their flipped copies): about 45 and 90 MB for the
    /// reference ResNet-18. A session holds its own copy; the daemon keeps only the names,
    /// preprocessing and hash once its sessions are built. Both are empty afterwards.
    pub fn release_graphs(&mut self) {
        self.model = ModelProto::default();
        self.compiled.model = ModelProto::default();
    }
}

/// The model's identity: sha256 of the `.onnx` file's bytes, followed (for a model whose
/// weights are in external data files) by those files' bytes, so a changed weight file changes
/// it too.
fn model_sha256(file: &onnx::ModelFile) -> Result<String, ModelError> {
    let mut h = Sha256::new();
    h.update(&file.bytes);
    for p in &file.data_files {
        let io = |source| OnnxError::Io { path: p.display().to_string(), source };
        let mut f = std::fs::File::open(p).map_err(io)?;
        std::io::copy(&mut f, &mut h).map_err(io)?;
    }
    Ok(hex(&h.finalize()))
}

/// The model's logits-only forward graph: the logits [`crate::grad::compile`] differentiates
/// ([`grad::logits_name`]: the first output, or the input of a trailing Softmax, LogSoftmax or
/// Sigmoid).
pub fn forward_logits_model(model: &ModelProto) -> Result<(ModelProto, String), ModelError> {
    // Batch-dynamic like the compiled graph, so it takes the same batches.
    let mut m = grad::forward_model(model)?;
    let g = m.graph.as_mut().ok_or(OnnxError::NoGraph)?;
    if g.output.is_empty() {
        return Err(ModelError::NoOutputs);
    }
    let logits = grad::logits_name(g)?;
    g.output = vec![onnx::make_value_info(&logits, onnx::data_type::FLOAT, &[None, None])];
    Ok((m, logits))
}

/// Index and value of the largest softmax probability of a logits row.
pub fn top_class(logits: &[f32]) -> (usize, f32) {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|&z| (z - m).exp()).sum();
    let (i, z) = logits.iter().enumerate().fold((0, f32::NEG_INFINITY), |a, (i, &z)| if z > a.1 { (i, z) } else { a });
    (i, ((z - m).exp() / sum).clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(color_order: ColorOrder, nhwc: bool) -> ModelInfo {
        ModelInfo {
            name: "m".into(),
            sha256: String::new(),
            width: 2,
            height: 1,
            scale: 1.0 / 255.0,
            mean: [0.5, 0.0, 0.0],
            std: [0.5, 1.0, 1.0],
            color_order,
            nhwc,
            class_names: vec![],
        }
    }

    #[test]
    fn gray_frames_are_their_luma_in_one_channel() {
        // Red and white pixels: luma 0.299 and 1.0, then (v - 0.5) / 0.5.
        let img = RgbImage::new(2, 1, vec![255, 0, 0, 255, 255, 255]).unwrap();
        for nhwc in [false, true] {
            let x = info(ColorOrder::Gray, nhwc).preprocess([&img].into_iter());
            assert_eq!(x.shape(), if nhwc { [1, 1, 2, 1] } else { [1, 1, 1, 2] });
            let v: Vec<f32> = x.iter().copied().collect();
            assert!((v[0] - (0.299 - 0.5) / 0.5).abs() < 1e-5 && (v[1] - 1.0).abs() < 1e-5, "{v:?}");
        }
        // BGR swaps the first and last channels.
        let x = info(ColorOrder::Bgr, false).preprocess([&img].into_iter());
        assert_eq!(x.shape(), [1, 3, 1, 2]);
        assert!((x[[0, 0, 0, 0]] + 1.0).abs() < 1e-6 && (x[[0, 2, 0, 0]] - 1.0).abs() < 1e-6);
        // A one-channel input takes gray and nothing else; gray takes nothing else.
        let p = |c, l| Preprocessing { color_order: c, ..info(ColorOrder::Rgb, l == Layout::Nhwc).preprocessing() };
        assert!(p(ColorOrder::Gray, Layout::Nchw).check_fits(&[1, 1, 2]).is_ok());
        assert!(p(ColorOrder::Gray, Layout::Nhwc).check_fits(&[1, 2, 1]).is_ok());
        assert!(p(ColorOrder::Rgb, Layout::Nchw).check_fits(&[1, 1, 2]).unwrap_err().to_string().contains("gray"));
        assert!(p(ColorOrder::Gray, Layout::Nchw).check_fits(&[3, 1, 2]).is_err());
        assert_eq!("grey".parse::<ColorOrder>(), Ok(ColorOrder::Gray));
    }
}
