//! `gradwatch init`: sets a user's own classifier up in one command. It inspects the ONNX
//! file (one image input, a class axis, operators the compiler differentiates), applies
//! preprocessing overrides, checks the classifier's accuracy on labelled images (a wrong
//! preprocessing, or training images that would make the threshold optimistic), calibrates
//! with the project's recipe (`calibrate`'s code path) on part of the images and measures the
//! rest: `DIR/<model>.calib.toml`, `DIR/gradwatch.toml`, `DIR/report.md` + `DIR/roc.svg`.
//! Bad input exits 2 with the cause and the fix (docs/guide/your-model.md).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::calibrate::{fit_recipe, take_rows, FitInputs, RecipeArgs};
use super::common::{load_input, runtime, show_progress, PreprocessArgs};
use super::EXIT_CONFIG;
use crate::corrupt::{parse_corruptions, parse_levels, round_robin_corruptions, Corruption};
use crate::detector::{roc, Calibration};
use crate::frame::RgbImage;
use crate::grad::{CompileOptions, Loss};
use crate::model::{
    top_class, ColorOrder, Layout, LoadedModel, ModelError, ModelInfo, Preprocessing, IMAGENET_MEAN, IMAGENET_STD,
};
use crate::onnx::{self, ModelProto};
use crate::runtime::extract::{self, FeatureSet};
use crate::runtime::{GradSession, ModelSession, RuntimeOptions};

/// Arguments of `gradwatch init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// The classifier (.onnx): one image input, class scores as the first output.
    pub model: PathBuf,
    /// Images like the camera's, which the model never trained on (held-out or test images of
    /// every class): .npy stack (uint8 N x H x W x 3), image folder or one image.
    #[arg(long)]
    pub images: PathBuf,
    /// Their true classes (.npy of integers, one per image): checks the accuracy (a wrong
    /// preprocessing, training images) and lets the detector learn the classifier's errors.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Use only rows A..B (0-based, B exclusive) of the images and labels.
    #[arg(long)]
    pub rows: Option<String>,
    /// Output folder (created): <model>.calib.toml, gradwatch.toml, report.md, roc.svg.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Fraction of the images kept out of the fit to measure the threshold on (clean
    /// over-threshold rate, ROC, accuracy per degradation type).
    #[arg(long, default_value_t = 0.25)]
    pub holdout: f64,
    /// Calibrate even when the accuracy says the preprocessing is probably wrong.
    #[arg(long)]
    pub force: bool,
    /// Images per graph run.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

/// Input the user can fix: printed as `error: ...`, exit 2.
#[derive(Debug)]
struct BadInput(String);

impl std::fmt::Display for BadInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

fn bad(msg: impl Into<String>) -> anyhow::Error {
    BadInput(msg.into()).into()
}

/// Below this accuracy on labelled images the preprocessing is taken to be wrong.
pub const LOW_ACCURACY: f64 = 0.5;
/// An alternative preprocessing this much more accurate says the current one is wrong.
pub const BETTER_BY: f64 = 0.10;
/// Accuracy and mean top-class confidence at or above these look like training images.
pub const TRAINING_ACCURACY: f64 = 0.995;
/// See [`TRAINING_ACCURACY`].
pub const TRAINING_CONFIDENCE: f64 = 0.99;
/// Images per alternative preprocessing tried.
const ALTERNATIVE_IMAGES: usize = 256;
/// What to calibrate on instead, said with every warning about the images.
const USE_INSTEAD: &str = "calibrate on held-out images the model never trained on (its test split, or \
                           recordings from the target camera), covering every class, with their labels: a few \
                           hundred at least, thousands for a precise threshold";

/// Runs `gradwatch init`.
pub fn run(a: InitArgs) -> Result<i32> {
    match init(&a) {
        Ok(()) => Ok(0),
        Err(e) => match e.downcast_ref::<BadInput>() {
            Some(b) => {
                eprintln!("error: {b}");
                Ok(EXIT_CONFIG)
            }
            None => Err(e),
        },
    }
}

/// What the ONNX file says before compiling.
struct Inspection {
    input: String,
    dims: Vec<Option<i64>>,
    output: String,
    ops: BTreeMap<String, usize>,
    /// Operator types the compiler has no rule for (in any node, needed or not).
    unknown_ops: Vec<String>,
}

fn show_dims(dims: &[Option<i64>]) -> String {
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
/// class scores `[N, C]` as the first output.
fn inspect(model: &ModelProto) -> Result<Inspection> {
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
    let image = dims.len() == 4 && (dims[1] == Some(3) || dims[3] == Some(3));
    if elem != onnx::data_type::FLOAT || !image {
        let what = if elem == onnx::data_type::FLOAT { "float32".to_string() } else { format!("of type {elem}") };
        return Err(bad(format!(
            "not an image classifier: input '{}' is {what} {}; gradwatch needs one float32 image input [N,3,H,W] or \
             [N,H,W,3] (3 colour channels)",
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
    let mut ops = BTreeMap::new();
    let mut unknown = Vec::new();
    for n in &g.node {
        let std_domain = n.domain.is_empty() || n.domain == "ai.onnx";
        let name = if std_domain { n.op_type.clone() } else { format!("{}:{}", n.domain, n.op_type) };
        *ops.entry(name.clone()).or_insert(0) += 1;
        if (!std_domain || !crate::grad::SUPPORTED_OPS.contains(&n.op_type.as_str())) && !unknown.contains(&name) {
            unknown.push(name);
        }
    }
    Ok(Inspection { input: input.name.clone(), dims, output: out.name.clone(), ops, unknown_ops: unknown })
}

/// The classifier's plain forward graph (up to the logits), for accuracy checks.
struct Forward {
    session: ModelSession,
    input: String,
    output: String,
}

impl Forward {
    fn new(model: &LoadedModel, rt: &RuntimeOptions) -> Result<Self> {
        let (fwd, output) = crate::model::forward_logits_model(&model.model).map_err(|e| anyhow::anyhow!("{e}"))?;
        let session = ModelSession::new(&onnx::encode(&fwd), rt)?;
        Ok(Forward { session, input: model.compiled.input_name.clone(), output })
    }

    /// Top class and its softmax probability of every image.
    fn predict(&mut self, info: &ModelInfo, images: &[&RgbImage], batch: usize) -> Result<Vec<(usize, f32)>> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch.max(1)) {
            let x = info.preprocess(chunk.iter().copied()).into_dyn();
            let o = self.session.run(&[(self.input.as_str(), x.view())])?;
            let z = o.get(&self.output).context("the forward graph returned no logits")?;
            let flat: Vec<f32> = z.iter().copied().collect();
            let width = flat.len() / chunk.len().max(1);
            if width == 0 || width * chunk.len() != flat.len() {
                anyhow::bail!("the forward graph returned {} numbers for {} images", flat.len(), chunk.len());
            }
            out.extend(flat.chunks(width).map(top_class));
        }
        Ok(out)
    }
}

/// Accuracy of predictions against labels.
fn accuracy(pred: &[(usize, f32)], labels: &[usize]) -> f64 {
    let right = pred.iter().zip(labels).filter(|((p, _), l)| p == *l).count();
    right as f64 / pred.len().max(1) as f64
}

/// Warnings about the images a calibration is fitted on: training images (near-perfect
/// accuracy with near-certain confidence) or only a few classes make the threshold
/// optimistic. `accuracy` is `None` without labels; `classes_seen` counts the true classes
/// (predicted ones without labels).
pub fn image_warnings(accuracy: Option<f64>, mean_confidence: f64, classes_seen: usize, classes: usize) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(acc) = accuracy.filter(|&a| a >= TRAINING_ACCURACY && mean_confidence >= TRAINING_CONFIDENCE) {
        w.push(format!(
            "these look like training images: accuracy {:.1} % with mean confidence {:.3}. The model is more \
             certain on them than on what a camera will show, so the threshold will be optimistic (more clean frames \
             over it in service than the target); {USE_INSTEAD}",
            100.0 * acc,
            mean_confidence
        ));
    }
    if classes_seen * 2 < classes {
        let what = if accuracy.is_some() { "the labels cover" } else { "the model predicts" };
        w.push(format!(
            "the images cover only a few classes ({what} {classes_seen} of {classes}): the threshold learns what \
             those signs look like and will be optimistic for the others; {USE_INSTEAD}"
        ));
    }
    w
}

/// A preprocessing tried by the accuracy check, with the flags that select it.
struct Alternative {
    flags: String,
    p: Preprocessing,
    accuracy: f64,
}

/// The most likely preprocessing mistakes, as changes to `cur`: the other channel order,
/// pixels in [0, 1], [-1, 1], ImageNet mean/std or 0-255 (with and without ImageNet
/// normalisation), the other layout where the input's shape allows it.
fn alternatives(cur: &Preprocessing) -> Vec<(String, Preprocessing)> {
    let norms: [(&str, f32, [f32; 3], [f32; 3]); 5] = [
        ("--scale 1/255 --mean 0 --std 1", 1.0 / 255.0, [0.0; 3], [1.0; 3]),
        ("--scale 1/255 --mean imagenet --std imagenet", 1.0 / 255.0, IMAGENET_MEAN, IMAGENET_STD),
        ("--scale 1/255 --mean 0.5 --std 0.5", 1.0 / 255.0, [0.5; 3], [0.5; 3]),
        ("--scale 1 --mean 0 --std 1", 1.0, [0.0; 3], [1.0; 3]),
        (
            "--scale 1 --mean 123.675,116.28,103.53 --std 58.395,57.12,57.375",
            1.0,
            [123.675, 116.28, 103.53],
            [58.395, 57.12, 57.375],
        ),
    ];
    let other_color = match cur.color_order {
        ColorOrder::Rgb => ColorOrder::Bgr,
        ColorOrder::Bgr => ColorOrder::Rgb,
    };
    let other_layout = match cur.layout {
        Layout::Nchw => Layout::Nhwc,
        Layout::Nhwc => Layout::Nchw,
    };
    let mut out: Vec<(String, Preprocessing)> = Vec::new();
    let mut push = |flags: String, p: Preprocessing| {
        if !same_input(&p, cur) && !out.iter().any(|(_, q)| same_input(q, &p)) {
            out.push((flags, p));
        }
    };
    for color in [cur.color_order, other_color] {
        let cflag = if color == cur.color_order {
            String::new()
        } else {
            format!("--color-order {} ", color.name().to_ascii_lowercase())
        };
        push(
            format!("--color-order {}", color.name().to_ascii_lowercase()),
            Preprocessing { color_order: color, ..cur.clone() },
        );
        for (flags, scale, mean, std) in norms {
            push(format!("{cflag}{flags}"), Preprocessing { color_order: color, scale, mean, std, ..cur.clone() });
        }
    }
    push(
        format!("--layout {}", other_layout.name().to_ascii_lowercase()),
        Preprocessing { layout: other_layout, ..cur.clone() },
    );
    out
}

/// Whether `p` and `q` give the model the same input: the same layout, size and channel order
/// and, per channel, the same affine map `pixel * scale / std - mean / std` (0-255 with ImageNet
/// statistics times 255 is [0, 1] with ImageNet statistics).
fn same_input(p: &Preprocessing, q: &Preprocessing) -> bool {
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1e-6);
    (p.layout, p.width, p.height, p.color_order) == (q.layout, q.width, q.height, q.color_order)
        && (0..3)
            .all(|c| close(p.scale / p.std[c], q.scale / q.std[c]) && close(p.mean[c] / p.std[c], q.mean[c] / q.std[c]))
}

/// The accuracy check: current accuracy, then every alternative on up to
/// [`ALTERNATIVE_IMAGES`] images, best first.
fn try_alternatives(
    fwd: &mut Forward,
    model: &LoadedModel,
    images: &[&RgbImage],
    labels: &[usize],
    batch: usize,
) -> Result<(f64, Vec<Alternative>, usize)> {
    let step = images.len().div_ceil(ALTERNATIVE_IMAGES).max(1);
    let idx: Vec<usize> = (0..images.len()).step_by(step).collect();
    let sub: Vec<&RgbImage> = idx.iter().map(|&i| images[i]).collect();
    let sub_labels: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
    let cur_acc = accuracy(&fwd.predict(&model.info, &sub, batch)?, &sub_labels);
    let mut tried = Vec::new();
    for (flags, p) in alternatives(&model.info.preprocessing()) {
        let mut info = model.info.clone();
        if info.set_preprocessing(&p, &model.compiled.input_shape).is_err() {
            continue;
        }
        let acc = accuracy(&fwd.predict(&info, &sub, batch)?, &sub_labels);
        tried.push(Alternative { flags, p, accuracy: acc });
    }
    tried.sort_by(|a, b| b.accuracy.total_cmp(&a.accuracy));
    Ok((cur_acc, tried, sub.len()))
}

/// The images (rows `--rows`) and their labels, checked against each other and the classes.
fn load_images(a: &InitArgs, classes: usize) -> Result<(Vec<RgbImage>, Option<Vec<usize>>)> {
    let input = load_input(&a.images, None).map_err(|e| bad(format!("{e:#}")))?;
    let images =
        take_rows(input.images, a.rows.as_deref(), None, "--rows: --images").map_err(|e| bad(e.to_string()))?;
    let labels = match &a.labels {
        None => None,
        Some(p) => {
            let raw = crate::data::load_npy_labels(p).map_err(|e| bad(format!("reading {}: {e}", p.display())))?;
            let raw = take_rows(raw, a.rows.as_deref(), None, "--rows: --labels").map_err(|e| bad(e.to_string()))?;
            if raw.len() != images.len() {
                return Err(bad(format!(
                    "{}: {} labels for {} images{}; give one true class per image, in the same order",
                    p.display(),
                    raw.len(),
                    images.len(),
                    a.rows.as_deref().map(|r| format!(" (rows {r})")).unwrap_or_default()
                )));
            }
            let mut out = Vec::with_capacity(raw.len());
            for (i, &v) in raw.iter().enumerate() {
                match usize::try_from(v) {
                    Ok(c) if c < classes => out.push(c),
                    _ => {
                        return Err(bad(format!(
                            "{}: label {v} at row {i} is not a class of this model (0..{}); labels are class indices \
                             in the order of the model's outputs",
                            p.display(),
                            classes - 1
                        )))
                    }
                }
            }
            Some(out)
        }
    };
    if images.len() < 20 {
        return Err(bad(format!(
            "{}: {} images are too few to calibrate; give a few hundred at least",
            a.images.display(),
            images.len()
        )));
    }
    Ok((images, labels))
}

/// Scores and verdicts of a held-out set.
struct HeldOut {
    clean: FeatureSet,
    /// One corrupted copy of each (none with `--corruptions none`).
    corrupted: Option<FeatureSet>,
    kinds: Vec<Corruption>,
    /// `(kind, level)` of each corrupted copy.
    combos: Vec<(Corruption, u8)>,
}

/// Step 1 of [`init`]: what the file is. Loads and compiles the model with the preprocessing
/// overrides applied and prints what it found; returns the model, the overridden
/// preprocessing (stored in the calibration) and where the preprocessing came from.
fn load_model(a: &InitArgs) -> Result<(LoadedModel, Option<Preprocessing>, &'static str)> {
    // 1. What the file is.
    let proto = onnx::load(&a.model).map_err(|e| bad(format!("{}: {e}", a.model.display())))?;
    let ins = inspect(&proto).map_err(|e| bad(format!("{}: {e}", a.model.display())))?;
    drop(proto);
    let mut model = match LoadedModel::load(&a.model, &CompileOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            let mut msg = format!("{}: ", a.model.display());
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
    let stored = model
        .override_preprocessing(&a.preprocess.overrides())
        .map_err(|e| bad(format!("{}: {e}", a.model.display())))?;
    let classes = model.compiled.num_classes;
    let pre = model.info.preprocessing();
    let has_meta = onnx::metadata(&model.model).keys().any(|k| k.starts_with("gradwatch."));
    let source = match (&stored, has_meta) {
        (Some(_), _) => "overridden on the command line; stored in the calibration as [model.preprocessing]",
        (None, true) => "the model's gradwatch.* metadata",
        (None, false) => "defaults (the model has no gradwatch.* metadata): check them",
    };
    let ops: Vec<String> = ins.ops.iter().map(|(k, v)| format!("{k} x{v}")).collect();
    eprintln!("model {} (sha256 {}):", a.model.display(), &model.info.sha256[..12]);
    eprintln!("  input '{}' {}: {} {}x{}", ins.input, show_dims(&ins.dims), pre.layout.name(), pre.width, pre.height);
    eprintln!("  output '{}': {classes} classes", ins.output);
    eprintln!("  operators: {}", ops.join(", "));
    eprintln!("  gradient features: {} parameter tensors", model.compiled.features.len());
    eprintln!("  preprocessing: {} ({source})", pre.summary());
    Ok((model, stored, source))
}

fn init(a: &InitArgs) -> Result<()> {
    // 1. What the file is.
    let (model, stored, source) = load_model(a)?;
    let classes = model.compiled.num_classes;
    let pre = model.info.preprocessing();

    // 2. The images, and what the classifier makes of them.
    let (images, labels) = load_images(a, classes)?;
    let rt = runtime(a.threads);
    let mut fwd = Forward::new(&model, &rt)?;
    let refs: Vec<&RgbImage> = images.iter().collect();
    let pred = fwd.predict(&model.info, &refs, a.batch)?;
    let mean_conf = pred.iter().map(|&(_, c)| f64::from(c)).sum::<f64>() / pred.len() as f64;
    let mut report = Report::default();
    let (acc, seen) = match &labels {
        Some(l) => (Some(accuracy(&pred, l)), l.iter().collect::<HashSet<_>>().len()),
        None => (None, pred.iter().map(|p| p.0).collect::<HashSet<_>>().len()),
    };
    match acc {
        Some(acc) => eprintln!(
            "images: {} ({} of {classes} classes); accuracy {:.2} %, mean confidence {mean_conf:.3}",
            images.len(),
            seen,
            100.0 * acc
        ),
        None => eprintln!(
            "images: {} without labels (the model predicts {seen} of {classes} classes; mean confidence \
             {mean_conf:.3}); give --labels to check the preprocessing and learn the classifier's errors",
            images.len()
        ),
    }
    report.images = format!(
        "{} images from `{}`{}{}",
        images.len(),
        a.images.display(),
        a.rows.as_deref().map(|r| format!(" (rows {r})")).unwrap_or_default(),
        match (&a.labels, acc) {
            (Some(p), Some(acc)) => format!(
                ", labels `{}`: {seen} of {classes} classes; accuracy **{:.2} %**, mean confidence {mean_conf:.3}",
                p.display(),
                100.0 * acc
            ),
            _ => format!(", no labels: the model predicts {seen} of {classes} classes, mean confidence {mean_conf:.3}"),
        }
    );
    if let (Some(l), Some(acc)) = (&labels, acc) {
        let (cur, tried, n_sub) = try_alternatives(&mut fwd, &model, &refs, l, a.batch)?;
        let best = tried.first().map_or(0.0, |t| t.accuracy);
        let wrong = acc < LOW_ACCURACY || best >= cur + BETTER_BY;
        let _ = writeln!(
            report.check,
            "| preprocessing | accuracy on {n_sub} of the images |\n|---|---:|\n| in use: {} | {:.1} % |",
            pre.summary(),
            100.0 * cur
        );
        for t in tried.iter().take(3) {
            let _ = writeln!(report.check, "| `{}` | {:.1} % |", t.flags, 100.0 * t.accuracy);
        }
        if wrong {
            eprintln!(
                "the accuracy says the preprocessing is probably wrong: {:.1} % with {} on {} images; the \
                 three most accurate alternatives tried:",
                100.0 * cur,
                pre.summary(),
                n_sub
            );
            for t in tried.iter().take(3) {
                eprintln!("  {:>5.1} %  {}   ({})", 100.0 * t.accuracy, t.flags, t.p.summary());
            }
            if !a.force {
                return Err(bad(
                    "rerun with the flags of the best one (or the preprocessing the model was trained with), or \
                     pass --force to calibrate with this preprocessing anyway",
                ));
            }
            report.warnings.push(format!(
                "the accuracy says the preprocessing is probably wrong ({:.1} %; best alternative `{}` {:.1} %); \
                 calibrated anyway (--force)",
                100.0 * cur,
                tried.first().map_or("", |t| t.flags.as_str()),
                100.0 * best
            ));
        }
    }
    for w in image_warnings(acc, mean_conf, seen, classes) {
        eprintln!("warning: {w}");
        report.warnings.push(w);
    }

    // 3. Calibrate on part of the images (calibrate's code path), keep the rest to measure.
    if !(0.0..0.9).contains(&a.holdout) {
        return Err(bad(format!("--holdout {} must be in [0, 0.9) (0.25 keeps a quarter to measure)", a.holdout)));
    }
    let perm = crate::detector::split::permutation(images.len(), a.recipe.seed ^ 0x1417);
    let n_hold = (images.len() as f64 * a.holdout).round() as usize;
    let (hold_idx, fit_idx) = perm.split_at(n_hold);
    let pick = |idx: &[usize]| -> Vec<RgbImage> { idx.iter().map(|&i| images[i].clone()).collect() };
    let pick_labels = |idx: &[usize]| labels.as_ref().map(|l| idx.iter().map(|&i| l[i]).collect::<Vec<usize>>());
    let fit_images = pick(fit_idx);
    let hold_images = pick(hold_idx);
    let hold_labels = pick_labels(hold_idx);
    drop(images);
    let mut session = GradSession::new(&model.compiled, &rt)?;
    let inputs = FitInputs {
        familiar_name: format!("{} ({} of {} images; init)", a.images.display(), fit_images.len(), perm.len()),
        images: &fit_images,
        labels: pick_labels(fit_idx),
        unfamiliar: Vec::new(),
    };
    eprintln!(
        "calibrating on {} images (+ one corrupted copy each: {} levels {}), {} held out",
        fit_images.len(),
        a.recipe.corruptions,
        a.recipe.levels,
        hold_images.len()
    );
    let calib = fit_recipe(&model, &mut session, Loss::BceLogits, inputs, &a.recipe, a.batch, stored.clone())?;
    drop(fit_images);
    std::fs::create_dir_all(&a.output).with_context(|| format!("creating {}", a.output.display()))?;
    let stem = a.model.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
    let calib_name = format!("{stem}.calib.toml");
    calib.save(&a.output.join(&calib_name))?;

    // 4. Measure on the held-out images.
    let held = measure_held_out(a, &mut session, &model, &hold_images)?;
    report.fill(a, &model, &pre, source, &calib, held.as_ref(), hold_labels.as_deref());
    let svg = report.roc_svg.take();
    if let Some(svg) = svg {
        std::fs::write(a.output.join("roc.svg"), svg).with_context(|| format!("writing {}", a.output.display()))?;
    }
    std::fs::write(a.output.join("report.md"), report.markdown(a, &model, &calib_name))
        .with_context(|| format!("writing report.md in {}", a.output.display()))?;
    let model_abs = std::fs::canonicalize(&a.model).unwrap_or_else(|_| a.model.clone());
    std::fs::write(a.output.join("gradwatch.toml"), config_text(&model_abs, &calib_name, &stem))
        .with_context(|| format!("writing gradwatch.toml in {}", a.output.display()))?;
    print_written(a, &calib_name, &calib, report.headline.as_deref());
    Ok(())
}

/// What [`init`] wrote, its headline number, and the next two commands.
fn print_written(a: &InitArgs, calib_name: &str, calib: &Calibration, headline: Option<&str>) {
    eprintln!(
        "wrote {}: threshold {:.4} for {:.1} % false alarms",
        a.output.join(calib_name).display(),
        calib.threshold,
        100.0 * calib.target_false_alarm
    );
    if let Some(line) = headline {
        eprintln!("{line}");
    }
    let out = a.output.display();
    eprintln!(
        "wrote {out}/report.md, {out}/gradwatch.toml. Next: fill in the [[stream]] of {out}/gradwatch.toml, then"
    );
    eprintln!("  gradwatch check-config {out}/gradwatch.toml && gradwatch run --config {out}/gradwatch.toml");
}

/// Step 4 of [`init`]: the held-out images' features, clean and (with corruptions) one
/// corrupted copy each, cycling through every `(kind, level)`; `None` without held-out images.
fn measure_held_out(
    a: &InitArgs,
    session: &mut GradSession,
    model: &LoadedModel,
    hold_images: &[RgbImage],
) -> Result<Option<HeldOut>> {
    Ok(if hold_images.is_empty() {
        None
    } else {
        let kinds = parse_corruptions(&a.recipe.corruptions).map_err(anyhow::Error::msg)?;
        let levels = parse_levels(&a.recipe.levels).map_err(anyhow::Error::msg)?;
        let progress = show_progress();
        let clean = extract::extract_labelled(session, &model.info, hold_images, a.batch, progress, "held out")?;
        let (corrupted, combos) = if kinds.is_empty() {
            (None, Vec::new())
        } else {
            let imgs = round_robin_corruptions(hold_images, &kinds, &levels, a.recipe.seed + 1)?;
            let f = extract::extract_labelled(session, &model.info, &imgs, a.batch, progress, "held out, corrupted")?;
            let all: Vec<(Corruption, u8)> = kinds.iter().flat_map(|&k| levels.iter().map(move |&l| (k, l))).collect();
            (Some(f), (0..imgs.len()).map(|i| all[i % all.len()]).collect())
        };
        Some(HeldOut { clean, corrupted, kinds, combos })
    })
}

/// `report.md`'s parts.
#[derive(Default)]
struct Report {
    images: String,
    check: String,
    warnings: Vec<String>,
    calibration: String,
    headline: Option<String>,
    per_type: String,
    roc_svg: Option<String>,
}

fn pct(k: usize, n: usize) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{:.1} %", 100.0 * k as f64 / n as f64)
    }
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        a: &InitArgs,
        model: &LoadedModel,
        pre: &Preprocessing,
        source: &str,
        calib: &Calibration,
        held: Option<&HeldOut>,
        labels: Option<&[usize]>,
    ) {
        let s = &calib.fitted_on;
        let _ = writeln!(
            self.calibration,
            "Fitted on {} images and one corrupted copy of each (`--corruptions {} --levels {}`), detector `{}`, \
             target {:.1} % false alarms per frame: **threshold {:.4}**. The fit's own held-out 20 %: {:.2} % false \
             alarms, {:.1} % of corrupted copies detected, AUROC {:.3}.\n\nPreprocessing: {} ({source}).",
            s.familiar.count,
            a.recipe.corruptions,
            a.recipe.levels,
            match &calib.detector {
                crate::detector::DetectorKind::Ensemble(_) => "risk",
                crate::detector::DetectorKind::Mlp { .. } => "paper",
                crate::detector::DetectorKind::OneClass { .. } => "one-class",
            },
            100.0 * calib.target_false_alarm,
            calib.threshold,
            100.0 * s.validation_false_alarm_rate,
            100.0 * s.validation_true_positive_rate,
            s.validation_auroc,
            pre.summary(),
        );
        let Some(h) = held else { return };
        let cs = calib.score(&h.clean.features, &h.clean.logits);
        let us = h.corrupted.as_ref().map(|c| calib.score(&c.features, &c.logits)).unwrap_or_default();
        let over = cs.iter().filter(|&&v| calib.is_unfamiliar(v)).count();
        let det = us.iter().filter(|&&v| calib.is_unfamiliar(v)).count();
        let auroc = roc::auroc(&cs, &us);
        let right = |fs: &FeatureSet, i: usize, l: &[usize]| top_class(&fs.logits.row(i).to_vec()).0 == l[i];
        let clean_acc = labels.map(|l| (0..cs.len()).filter(|&i| right(&h.clean, i, l)).count());
        let line = format!(
            "held out {} clean images never used in the fit: {} over the threshold (target {:.1} %); corrupted copies: \
             {} detected, AUROC {:.3}",
            cs.len(),
            pct(over, cs.len()),
            100.0 * calib.target_false_alarm,
            pct(det, us.len()),
            auroc
        );
        let _ = writeln!(
            self.calibration,
            "\n**Held out** ({} of the images, never used in the fit; corrupted copies: one per image, the same types \
             and levels, round-robin):\n\n| | |\n|---|---:|\n| clean images | {} |\n| clean over the threshold \
             (expected false-alarm rate per frame) | **{}** ({over}) |\n| corrupted copies detected | {} ({det} of {}) \
             |\n| AUROC clean vs corrupted | {auroc:.3} |{}\n\n![held-out ROC](roc.svg)",
            cs.len(),
            cs.len(),
            pct(over, cs.len()),
            pct(det, us.len()),
            us.len(),
            clean_acc.map(|k| format!("\n| classifier accuracy, clean | {} |", pct(k, cs.len()))).unwrap_or_default(),
        );
        self.headline = Some(line);
        let fpr = over as f64 / cs.len().max(1) as f64;
        let spec = crate::plot::PlotSpec {
            title: format!("{}: held-out clean vs corrupted (AUROC {auroc:.3})", model.info.name),
            x_label: "clean frames over the threshold (false-alarm rate)".into(),
            y_label: "corrupted frames detected".into(),
            x_range: (0.0, 1.0),
            y_range: Some((0.0, 1.0)),
            log_y: false,
            diagonal: true,
        };
        let series = vec![
            crate::plot::Series { label: "ROC".into(), points: roc::roc_curve(&cs, &us) },
            crate::plot::Series {
                label: format!("threshold {:.3}: {:.1} % clean over it", calib.threshold, 100.0 * fpr),
                points: vec![(fpr, 0.0), (fpr, 1.0)],
            },
        ];
        self.roc_svg = Some(crate::plot::line_plot(&spec, &series));
        let Some(corrupted) = h.corrupted.as_ref().filter(|_| !h.combos.is_empty()) else { return };
        let _ = writeln!(
            self.per_type,
            "| degradation | family | held-out copies | classifier accuracy | detected |\n|---|---|---:|---:|---:|"
        );
        for &k in &h.kinds {
            let idx: Vec<usize> = (0..h.combos.len()).filter(|&i| h.combos[i].0 == k).collect();
            if idx.is_empty() {
                continue;
            }
            let d = idx.iter().filter(|&&i| calib.is_unfamiliar(us[i])).count();
            let acc = match labels {
                Some(l) => pct(idx.iter().filter(|&&i| right(corrupted, i, l)).count(), idx.len()),
                None => "- (no labels)".into(),
            };
            let _ = writeln!(
                self.per_type,
                "| {} | {} | {} | {acc} | {} |",
                k.name(),
                k.family().name(),
                idx.len(),
                pct(d, idx.len())
            );
        }
    }

    fn markdown(&self, a: &InitArgs, model: &LoadedModel, calib_name: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# gradwatch init: {}\n", model.info.name);
        let _ = writeln!(
            md,
            "Written by `{}`. Model `{}`, sha256 `{}`, {} classes, {} gradient features. Calibration: \
             `{calib_name}`; daemon config: `gradwatch.toml`.\n",
            super::calibrate::command_line(),
            a.model.display(),
            model.info.sha256,
            model.compiled.num_classes,
            model.compiled.features.len()
        );
        let _ = writeln!(md, "## Images\n\n{}.\n", self.images);
        if !self.check.is_empty() {
            let _ = writeln!(
                md,
                "Preprocessing check (the one in use and the three best alternatives tried):\n\n{}",
                self.check
            );
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(md, "## Warnings\n");
            for w in &self.warnings {
                let _ = writeln!(md, "- {w}");
            }
            md.push('\n');
        }
        let _ = writeln!(md, "## Calibration\n\n{}", self.calibration);
        if !self.per_type.is_empty() {
            let _ = writeln!(md, "## Per degradation type (held-out corrupted copies)\n\n{}", self.per_type);
        }
        md
    }
}

/// The shipped config's `[alert]` section (config/gradwatch.toml), with its `state_dir`
/// commented out (the path is the packaged unit's).
pub fn shipped_alert_section() -> String {
    const SHIPPED: &str = include_str!("../../config/gradwatch.toml");
    let mut out = String::new();
    let mut inside = false;
    for line in SHIPPED.lines() {
        let t = line.trim_start();
        if t.starts_with('[') && !t.starts_with("[[") {
            inside = t.starts_with("[alert]");
        } else if t.starts_with("[[") {
            inside = false;
        }
        if inside {
            if t.starts_with("state_dir") {
                out.push_str("# state_dir = \"/var/lib/gradwatch\"   # keep learned baselines across restarts\n");
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A ready daemon config for the model: one stream to fill in, the shipped alert policy.
pub fn config_text(model: &Path, calib_name: &str, stem: &str) -> String {
    let q = |p: &str| p.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"# gradwatch daemon configuration for {stem}, written by `gradwatch init`.
# Fill in the [[stream]] (your camera), then:
#   gradwatch check-config gradwatch.toml && gradwatch run --config gradwatch.toml
# Every option with its default: config/gradwatch.toml in the gradwatch repository. Relative
# paths resolve against this file's directory.

[model]
path = "{}"
# Made by `gradwatch init` for exactly this model file (sha256-checked); it also holds the
# preprocessing when it was overridden.
calibration = "{}"
preset = "full"

[runtime]
providers = ["cpu"]

{}
[metrics]
enabled = true
bind = "127.0.0.1:9464"

# One stream to fill in: a V4L2 camera here; pipe (RTSP via ffmpeg), directory and replay
# streams are documented in config/gradwatch.toml.
[[stream]]
name = "cam0"
baseline = {{ learn_minutes = 10 }}
kind = "v4l2"
device = "/dev/video0"
width = 640
height = 480
fps = 15

[[sink]]
kind = "stdout"
"#,
        q(&model.display().to_string()),
        q(calib_name),
        shipped_alert_section().trim_end().to_string() + "\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_images_and_few_classes_warn() {
        // The issue's case: GTSRB training images sorted by class, 2 of 43 classes.
        let w = image_warnings(Some(1.0), 0.998, 2, 43);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("training images") && w[0].contains("held-out"), "{w:?}");
        assert!(w[1].contains("2 of 43"), "{w:?}");
        // Held-out test images: 98 % accurate, 43 classes.
        assert!(image_warnings(Some(0.981), 0.97, 43, 43).is_empty());
        // Near-perfect but not certain: no training-image warning; 22 of 43 is half: none either.
        assert!(image_warnings(Some(0.996), 0.95, 22, 43).is_empty());
        assert_eq!(image_warnings(None, 0.999, 21, 43).len(), 1);
    }

    #[test]
    fn alternatives_change_one_thing_and_skip_the_current() {
        let cur = Preprocessing {
            layout: Layout::Nchw,
            width: 32,
            height: 32,
            color_order: ColorOrder::Rgb,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let alts = alternatives(&cur);
        assert!(alts.iter().all(|(_, p)| !same_input(p, &cur)));
        // 0-255 with ImageNet statistics x 255 is the [0, 1] ImageNet input: tried once.
        let imagenet_255 = Preprocessing {
            scale: 1.0,
            mean: IMAGENET_MEAN.map(|m| m * 255.0),
            std: IMAGENET_STD.map(|s| s * 255.0),
            ..cur.clone()
        };
        assert_eq!(alts.iter().filter(|(_, p)| same_input(p, &imagenet_255)).count(), 1);
        let flags: Vec<&str> = alts.iter().map(|(f, _)| f.as_str()).collect();
        assert!(flags.contains(&"--color-order bgr"), "{flags:?}");
        assert!(flags.contains(&"--scale 1/255 --mean imagenet --std imagenet"), "{flags:?}");
        assert!(flags.contains(&"--color-order bgr --scale 1/255 --mean imagenet --std imagenet"), "{flags:?}");
        assert!(flags.contains(&"--layout nhwc"), "{flags:?}");
        // The flags select what they say.
        for (f, p) in &alts {
            let args: Vec<&str> = f.split_whitespace().collect();
            let get = |k: &str| args.iter().position(|a| *a == k).map(|i| args[i + 1]);
            if let Some(m) = get("--mean") {
                assert_eq!(crate::model::parse_triple(m, IMAGENET_MEAN).unwrap(), p.mean, "{f}");
            }
            if let Some(s) = get("--scale") {
                assert_eq!(crate::model::parse_scale(s).unwrap(), p.scale, "{f}");
            }
        }
    }

    #[test]
    fn shipped_alert_section_is_the_cusum_policy_without_state_dir() {
        let s = shipped_alert_section();
        assert!(s.starts_with("[alert]"), "{s}");
        assert!(s.contains("policy = \"cusum\""), "{s}");
        assert!(!s.contains("[metrics]"), "{s}");
        assert!(s.lines().all(|l| !l.trim_start().starts_with("state_dir")), "{s}");
        let text = config_text(Path::new("/m/my \"model\".onnx"), "m.calib.toml", "m");
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["alert"]["policy"].as_str(), Some("cusum"));
        assert_eq!(v["model"]["path"].as_str(), Some("/m/my \"model\".onnx"));
        assert_eq!(v["stream"].as_array().map(Vec::len), Some(1));
    }
}
