//! `gradwatch calibrate`: fit the detector and its alarm threshold for one model file, with the
//! recipe of [`crate::setup::recipe`].

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::common::{load_input, run_options, runtime, show_progress, PreprocessArgs, RecipeArgs};
use super::EXIT_CONFIG;
use crate::detector::fit::UnfamiliarSet;
use crate::frame::RgbImage;
use crate::grad::{CompileOptions, Loss};
use crate::model::LoadedModel;
use crate::quality;
use crate::runtime::extract as features;
use crate::runtime::GradSession;
use crate::setup::images::{familiar_labels, take_rows};
use crate::setup::{fit_recipe, FitInputs};

/// Arguments of `gradwatch calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The classifier (.onnx).
    #[arg(long)]
    pub model: PathBuf,
    /// Feature preset: full (the paper's features), fast or head (`docs/guide/presets.md`). The
    /// calibration records it; the daemon's `[model] preset` must match.
    #[arg(long, default_value = "full")]
    pub preset: crate::grad::Preset,
    /// Familiar images (what the camera normally sees): .npy stack, folder or image.
    #[arg(long)]
    pub familiar: PathBuf,
    /// Unfamiliar image sets (repeatable).
    #[arg(long, num_args = 1..)]
    pub unfamiliar: Vec<PathBuf>,
    /// True classes of the familiar images (.npy of integers, one per image of --familiar;
    /// corrupted copies inherit them). Lets the risk detector learn the classifier's errors
    /// (the recipe: give them whenever you have them).
    #[arg(long)]
    pub familiar_labels: Option<PathBuf>,
    /// Use only rows A..B (0-based, B exclusive) of the familiar .npy and its labels, e.g.
    /// 0..6315 to calibrate on one half of a test set and evaluate on the other.
    #[arg(long)]
    pub familiar_rows: Option<String>,
    /// Use only the first N images of each set.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Loss the features are compiled with.
    #[arg(long, default_value = "bce-logits")]
    pub loss: Loss,
    /// Images per graph run.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Where to write the calibration (e.g. models/gtsrb-resnet18.calib.toml).
    #[arg(short, long)]
    pub output: PathBuf,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

/// The familiar images (rows `--familiar-rows`, then the first `--limit`) and their true
/// classes when `--familiar-labels` is given.
fn familiar_images(a: &CalibrateArgs) -> Result<(Vec<RgbImage>, Option<Vec<usize>>)> {
    // --limit applies after --familiar-rows, so the whole stack is read when both are given.
    let read_limit = if a.familiar_rows.is_some() { None } else { a.limit };
    let rows = a.familiar_rows.as_deref();
    let images = take_rows(load_input(&a.familiar, read_limit)?.images, rows, a.limit, "--familiar-rows: --familiar")?;
    let labels = match &a.familiar_labels {
        Some(p) => Some(familiar_labels(p, rows, a.limit, images.len())?),
        None => None,
    };
    Ok((images, labels))
}

/// Runs `gradwatch calibrate`.
pub fn run(a: CalibrateArgs) -> Result<i32> {
    if a.loss == Loss::Odin {
        anyhow::bail!("--loss odin is for the ODIN baseline, not for calibration; use bce-logits");
    }
    let overrides = a.preprocess.overrides();
    let mut model = LoadedModel::load(
        &a.model,
        &CompileOptions { loss: a.loss, input_size: overrides.size, ..CompileOptions::preset(a.preset) },
    )
    .with_context(|| format!("loading {}", a.model.display()))?;
    let preprocessing = match model.override_preprocessing(&overrides) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {}: {e}", a.model.display());
            return Ok(EXIT_CONFIG);
        }
    };
    let mut session = GradSession::new(&model.compiled, &runtime(a.threads))?;
    let (fam_images, fam_labels) = familiar_images(&a)?;
    let mut unfamiliar = Vec::new();
    for p in &a.unfamiliar {
        let u = load_input(p, a.limit)?;
        let f =
            features::extract_labelled(&mut session, &model.info, &u.images, a.batch, show_progress(), "unfamiliar")?;
        let name = p.display().to_string();
        let quality = a.recipe.quality.then(|| quality::measure_batch(&u.images, model.info.width, model.info.height));
        unfamiliar.push(UnfamiliarSet {
            name,
            features: f.features,
            logits: f.logits,
            quality,
            paired: false,
            benign: false,
        });
    }
    let inputs = FitInputs {
        familiar_name: a.familiar.display().to_string(),
        images: &fam_images,
        labels: fam_labels,
        unfamiliar,
    };
    let plan = a.recipe.recipe().plan(inputs.labels.is_some())?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let c = fit_recipe(&model, &mut session, a.loss, inputs, &plan, &run_options(a.batch), preprocessing)?;
    c.save(&a.output)?;
    let s = &c.fitted_on;
    eprintln!(
        "calibration -> {}: threshold {:.4} for {:.2}% false alarms; held out: false alarms {:.2}%, detected {:.2}%, AUROC {:.4}",
        a.output.display(),
        c.threshold,
        100.0 * a.recipe.target_fpr,
        100.0 * s.validation_false_alarm_rate,
        100.0 * s.validation_true_positive_rate,
        s.validation_auroc
    );
    Ok(0)
}
