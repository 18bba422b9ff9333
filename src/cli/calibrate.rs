//! `gradwatch calibrate`: fit the detector and its alarm threshold for one model file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::common::{load_input, runtime, show_progress};
use crate::corrupt::{parse_corruptions, parse_levels, round_robin_corruptions};
use crate::detector::calibration::CalibModel;
use crate::detector::fit::{self, CalibrateOptions, UnfamiliarSet};
use crate::detector::MlpConfig;
use crate::grad::{CompileOptions, Loss};
use crate::model::LoadedModel;
use crate::runtime::extract as features;
use crate::runtime::GradSession;

/// Arguments of `gradwatch calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The classifier (.onnx).
    #[arg(long)]
    pub model: PathBuf,
    /// Feature preset: full (the paper's features) or fast (`docs/presets.md`). The
    /// calibration records it; the daemon's `[model] preset` must match.
    #[arg(long, default_value = "full")]
    pub preset: crate::grad::Preset,
    /// Familiar images (what the camera normally sees): .npy stack, folder or image.
    #[arg(long)]
    pub familiar: PathBuf,
    /// Unfamiliar image sets (repeatable).
    #[arg(long, num_args = 1..)]
    pub unfamiliar: Vec<PathBuf>,
    /// Synthetic corruptions of the familiar images used as unfamiliar data: legacy (the ten
    /// CURE-TSR-style types the shipped calibrations use), all (every type of
    /// docs/degradations.md), paper, a family name, none, or a comma list. One corrupted copy
    /// per familiar image, type and level round-robin.
    #[arg(long, default_value = "legacy")]
    pub corruptions: String,
    /// Corruption levels, e.g. 1-5 or 3,4,5.
    #[arg(long, default_value = "1-5")]
    pub levels: String,
    /// One-class detector on familiar images only (ignores unfamiliar data for training).
    #[arg(long)]
    pub one_class: bool,
    /// Tolerated false-alarm rate on familiar images.
    #[arg(long, default_value_t = 0.01)]
    pub target_fpr: f64,
    /// Hidden units of the MLP detector.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// Seed of splits, corruptions and training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
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

/// Runs `gradwatch calibrate`.
pub fn run(a: CalibrateArgs) -> Result<i32> {
    if a.loss == Loss::Odin {
        anyhow::bail!("--loss odin is for the ODIN baseline, not for calibration; use bce-logits");
    }
    let model = LoadedModel::load(&a.model, &CompileOptions { loss: a.loss, ..CompileOptions::preset(a.preset) })
        .with_context(|| format!("loading {}", a.model.display()))?;
    let kinds = parse_corruptions(&a.corruptions).map_err(anyhow::Error::msg)?;
    let levels = parse_levels(&a.levels).map_err(anyhow::Error::msg)?;
    let mut session = GradSession::new(&model.compiled, &runtime(a.threads))?;
    let progress = show_progress();
    let fam = load_input(&a.familiar, a.limit)?;
    let fam_feats = features::extract_labelled(&mut session, &model.info, &fam.images, a.batch, progress, "familiar")?;
    let mut unfamiliar = Vec::new();
    for p in &a.unfamiliar {
        let u = load_input(p, a.limit)?;
        let f = features::extract_labelled(&mut session, &model.info, &u.images, a.batch, progress, "unfamiliar")?;
        unfamiliar.push(UnfamiliarSet { name: p.display().to_string(), features: f.features, paired: false });
    }
    if !kinds.is_empty() {
        let imgs = round_robin_corruptions(&fam.images, &kinds, &levels, a.seed)?;
        let f = features::extract_labelled(&mut session, &model.info, &imgs, a.batch, progress, "corruptions")?;
        let name = format!(
            "synthetic corruptions of the familiar images ({}; levels {})",
            kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
            a.levels
        );
        unfamiliar.push(UnfamiliarSet { name, features: f.features, paired: true });
    }
    let opts = CalibrateOptions {
        one_class: a.one_class,
        target_fpr: a.target_fpr,
        mlp: MlpConfig { hidden: a.hidden, seed: a.seed, ..Default::default() },
    };
    let cm = CalibModel {
        name: model.info.name.clone(),
        sha256: model.info.sha256.clone(),
        loss: a.loss.name().to_string(),
        features: model.compiled.features.clone(),
        preset: model.compiled.preset.clone(),
    };
    let c = fit::fit(cm, &a.familiar.display().to_string(), &fam_feats.features, &unfamiliar, &opts, &command_line())?;
    c.save(&a.output)?;
    let s = &c.fitted_on;
    eprintln!(
        "calibration -> {}: threshold {:.4} for {:.2}% false alarms; held out: false alarms {:.2}%, detected {:.2}%, AUROC {:.4}",
        a.output.display(),
        c.threshold,
        100.0 * a.target_fpr,
        100.0 * s.validation_false_alarm_rate,
        100.0 * s.validation_true_positive_rate,
        s.validation_auroc
    );
    Ok(0)
}
