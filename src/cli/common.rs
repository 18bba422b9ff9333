//! Helpers the subcommands share: reading an image input, runtime options, progress bars,
//! the command line, preprocessing overrides and the calibration recipe's flags.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};

use crate::detector::fit::DetectorChoice;
use crate::detector::Target;
use crate::frame::RgbImage;
use crate::model::{parse_triple, ColorOrder, Layout, PreprocessOverrides, IMAGENET_MEAN, IMAGENET_STD};
use crate::runtime::RuntimeOptions;
use crate::setup::{Recipe, RunOptions};

/// Images of an input path with their names; `npy` says whether it was a `.npy` stack.
pub struct Input {
    /// File names (folders, files) or indices (`.npy`).
    pub names: Vec<String>,
    /// The images.
    pub images: Vec<RgbImage>,
    /// Whether the input was a `.npy` stack (names are indices).
    pub npy: bool,
}

/// Loads `path` (npy, folder or image), keeping the first `limit` images.
pub fn load_input(path: &Path, limit: Option<usize>) -> Result<Input> {
    let npy = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let mut all = crate::data::load_images(path).with_context(|| format!("reading {}", path.display()))?;
    if let Some(l) = limit {
        all.truncate(l);
    }
    if all.is_empty() {
        anyhow::bail!("{}: no images found (expected a .npy stack, an image folder or an image file)", path.display());
    }
    let (names, images) = all.into_iter().unzip();
    Ok(Input { names, images, npy })
}

/// Runtime options with `threads`.
pub fn runtime(threads: usize) -> RuntimeOptions {
    RuntimeOptions { threads, ..Default::default() }
}

/// Whether to draw progress bars (stderr is a terminal).
pub fn show_progress() -> bool {
    std::io::stderr().is_terminal()
}

/// The process's command line, shell-quoted where needed, for provenance.
pub fn command_line() -> String {
    std::env::args()
        .map(|a| {
            if a.is_empty() || a.chars().any(|c| c.is_whitespace() || "'\"$`\\".contains(c)) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// How graphs run: `batch` images at a time, progress bars on a terminal, this command line
/// recorded in what they fit.
pub fn run_options(batch: usize) -> RunOptions {
    RunOptions { batch, progress: show_progress(), command: command_line() }
}

/// Preprocessing overrides (`calibrate`, `init`): how frames become the model's input when its
/// ONNX metadata does not say (or says wrong). The calibration stores the result, so every
/// command and the daemon use it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PreprocessArgs {
    /// Input layout: nchw ([N,3,H,W]) or nhwc ([N,H,W,3]). Default: the model's metadata, else
    /// the input's shape.
    #[arg(long, value_parser = |s: &str| s.parse::<Layout>())]
    pub layout: Option<Layout>,
    /// Input size WIDTHxHEIGHT; must be the model's (frames are resized to it). Default: the
    /// model's input.
    #[arg(long, value_parser = crate::model::parse_size)]
    pub size: Option<(usize, usize)>,
    /// Channel order the model was trained on: rgb, bgr (OpenCV) or gray (one channel, the luma). Default: gray for a one-channel input, else the metadata's, else rgb.
    #[arg(long, value_parser = |s: &str| s.parse::<ColorOrder>())]
    pub color_order: Option<ColorOrder>,
    /// Multiplier from 0-255 pixels to the model's numbers, e.g. 1/255 or 1. Default: the
    /// metadata's, else 1/255.
    #[arg(long, value_parser = crate::model::parse_scale)]
    pub scale: Option<f32>,
    /// Per-channel mean subtracted after scaling: imagenet, one number or R,G,B. Default: the
    /// metadata's, else 0.
    #[arg(long, value_parser = |s: &str| parse_triple(s, IMAGENET_MEAN))]
    pub mean: Option<[f32; 3]>,
    /// Per-channel std divided by after the mean: imagenet, one number or R,G,B. Default: the
    /// metadata's, else 1.
    #[arg(long, value_parser = |s: &str| parse_triple(s, IMAGENET_STD))]
    pub std: Option<[f32; 3]>,
}

impl PreprocessArgs {
    /// The overrides given.
    pub fn overrides(&self) -> PreprocessOverrides {
        PreprocessOverrides {
            layout: self.layout,
            size: self.size,
            color_order: self.color_order,
            scale: self.scale,
            mean: self.mean,
            std: self.std,
        }
    }
}

/// How the detector and its threshold are fitted; the defaults are the project's recipe (the
/// one `models/gtsrb-resnet18.calib.toml` records): every degradation type at levels 2-5, the
/// risk detector, 1 % false alarms. `calibrate` and `init` share them
/// ([`Recipe`]).
#[derive(clap::Args, Debug, Clone)]
pub struct RecipeArgs {
    /// Synthetic corruptions of the familiar images used as unfamiliar data: all (every type
    /// of docs/guide/degradations.md, the recipe), legacy (the ten CURE-TSR-style types of the
    /// earliest calibrations), paper, a family name, none, or a comma list. One corrupted copy
    /// per familiar image, type and level round-robin.
    #[arg(long, default_value = "all")]
    pub corruptions: String,
    /// Corruption levels, e.g. 2-5 (the recipe: level 1 is mostly harmless) or 3,4,5.
    #[arg(long, default_value = "2-5")]
    pub levels: String,
    /// One-class detector on familiar images only (ignores unfamiliar data for training).
    #[arg(long)]
    pub one_class: bool,
    /// Detector: risk (gradient + forward-only logit signals, a seed ensemble, trained to flag
    /// the classifier's errors as well as unfamiliar images; see docs/results/detector-ablation.md)
    /// or paper (the paper's single MLP on gradient features, novelty labels).
    #[arg(long, default_value = "risk")]
    pub detector: DetectorChoice,
    /// Override the detector's training target: novelty (unfamiliar = 1), harm (classifier
    /// wrong or OOD = 1) or union (novelty or wrong). harm and union need labels.
    #[arg(long)]
    pub target: Option<Target>,
    /// Override the detector's forward signals: all, none, or a comma list of max_logit,
    /// logsumexp, margin, msp, neg_entropy.
    #[arg(long)]
    pub forward: Option<String>,
    /// Override the detector's seed-ensemble size.
    #[arg(long)]
    pub members: Option<usize>,
    /// Tolerated false-alarm rate on familiar images.
    #[arg(long, default_value_t = 0.01)]
    pub target_fpr: f64,
    /// Hidden units of the MLP detector.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Seed of splits, corruptions and training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Add no-reference image-quality measures of each frame (sharpness, noise, exposure,
    /// colour, haze...; measured at the model's input size) to the camera-health detector's
    /// inputs (docs/guide/detectors.md; the trust head does not use them). ~50 us a 32x32 frame.
    #[arg(long)]
    pub quality: bool,
    /// Generalising training data (docs/guide/detectors.md): `mixed` adds a copy of each image
    /// with one or two degradation types of different families at levels in between;
    /// `lighting` adds exposure changes that count as unfamiliar only where the classifier gets
    /// them wrong; `mixed,lighting` both. `--augment` alone is `mixed`.
    #[arg(long, value_name = "SETS", num_args = 0..=1, default_value = "none", default_missing_value = "mixed")]
    pub augment: crate::corrupt::mix::AugmentSets,
}

impl RecipeArgs {
    /// The recipe these flags select.
    pub fn recipe(&self) -> Recipe {
        Recipe {
            corruptions: self.corruptions.clone(),
            levels: self.levels.clone(),
            one_class: self.one_class,
            detector: self.detector,
            target: self.target,
            forward: self.forward.clone(),
            members: self.members,
            target_fpr: self.target_fpr,
            hidden: self.hidden,
            seed: self.seed,
            quality: self.quality,
            augment: self.augment,
        }
    }
}
