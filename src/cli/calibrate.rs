//! `gradwatch calibrate`: fit the detector and its alarm threshold for one model file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::common::{load_input, runtime, show_progress, PreprocessArgs};
use super::EXIT_CONFIG;
use crate::corrupt::{parse_corruptions, parse_levels, round_robin_corruptions};
use crate::detector::calibration::CalibModel;
use crate::detector::fit::{self, CalibrateOptions, DetectorChoice, FamiliarSet, UnfamiliarSet};
use crate::detector::forward::ForwardSignal;
use crate::detector::Calibration;
use crate::detector::{MlpConfig, Target};
use crate::frame::RgbImage;
use crate::grad::{CompileOptions, Loss};
use crate::model::{LoadedModel, Preprocessing};
use crate::runtime::extract as features;
use crate::runtime::GradSession;

/// Arguments of `gradwatch calibrate`.
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    /// The classifier (.onnx).
    #[arg(long)]
    pub model: PathBuf,
    /// Feature preset: full (the paper's features) or fast (`docs/results/presets.md`). The
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

/// How the detector and its threshold are fitted; the defaults are the project's recipe (the
/// one `models/gtsrb-resnet18.calib.toml` records): every degradation type at levels 2-5, the
/// risk detector, 1 % false alarms. `calibrate` and `init` share them.
#[derive(Args, Debug, Clone)]
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
}

/// Rows `range` of `v` (all of it without a range), then the first `limit` of those; an
/// error when the range runs past the end.
pub(super) fn take_rows<T>(mut v: Vec<T>, range: Option<&str>, limit: Option<usize>, what: &str) -> Result<Vec<T>> {
    if let Some(r) = range {
        let r = crate::data::parse_rows(r, v.len()).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
        v.truncate(r.end);
        v.drain(..r.start);
    }
    if let Some(l) = limit {
        v.truncate(l);
    }
    Ok(v)
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

/// The familiar images (rows `--familiar-rows`, then the first `--limit`) and their true
/// classes when `--familiar-labels` is given.
fn familiar_images(a: &CalibrateArgs) -> Result<(Vec<RgbImage>, Option<Vec<usize>>)> {
    // --limit applies after --familiar-rows, so the whole stack is read when both are given.
    let read_limit = if a.familiar_rows.is_some() { None } else { a.limit };
    let images = take_rows(
        load_input(&a.familiar, read_limit)?.images,
        a.familiar_rows.as_deref(),
        a.limit,
        "--familiar-rows: --familiar",
    )?;
    let labels = match &a.familiar_labels {
        None => None,
        Some(p) => {
            let raw = crate::data::load_npy_labels(p).with_context(|| format!("reading {}", p.display()))?;
            let raw = take_rows(raw, a.familiar_rows.as_deref(), a.limit, "--familiar-rows: --familiar-labels")?;
            if raw.len() != images.len() {
                anyhow::bail!(
                    "{}: {} labels for {} familiar images; give one true class per image",
                    p.display(),
                    raw.len(),
                    images.len()
                );
            }
            let labels = raw
                .iter()
                .enumerate()
                .map(|(i, &v)| {
                    usize::try_from(v).map_err(|_| anyhow::anyhow!("{}: label {v} at row {i} is negative", p.display()))
                })
                .collect::<Result<Vec<usize>>>()?;
            Some(labels)
        }
    };
    Ok((images, labels))
}

/// The familiar images of a calibration and what else it learns from.
pub(super) struct FitInputs<'a> {
    /// Name recorded in the calibration (a path).
    pub familiar_name: String,
    /// The familiar (clean) images.
    pub images: &'a [RgbImage],
    /// Their true classes, when known.
    pub labels: Option<Vec<usize>>,
    /// Unfamiliar sets, already extracted.
    pub unfamiliar: Vec<UnfamiliarSet>,
}

/// Fits a calibration as `gradwatch calibrate` does: the familiar images' features, one
/// corrupted copy of each (the recipe's types and levels, round-robin), the detector and its
/// threshold. `preprocessing` is what the calibration stores (`None`: the model's metadata).
pub(super) fn fit_recipe(
    model: &LoadedModel,
    session: &mut GradSession,
    loss: Loss,
    inputs: FitInputs<'_>,
    r: &RecipeArgs,
    batch: usize,
    preprocessing: Option<Preprocessing>,
) -> Result<Calibration> {
    let kinds = parse_corruptions(&r.corruptions).map_err(anyhow::Error::msg)?;
    let levels = parse_levels(&r.levels).map_err(anyhow::Error::msg)?;
    let progress = show_progress();
    let fam_feats = features::extract_labelled(session, &model.info, inputs.images, batch, progress, "familiar")?;
    let mut unfamiliar = inputs.unfamiliar;
    if !kinds.is_empty() {
        let imgs = round_robin_corruptions(inputs.images, &kinds, &levels, r.seed)?;
        let f = features::extract_labelled(session, &model.info, &imgs, batch, progress, "corruptions")?;
        let name = format!(
            "synthetic corruptions of the familiar images ({}; levels {})",
            kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
            r.levels
        );
        unfamiliar.push(UnfamiliarSet { name, features: f.features, logits: f.logits, paired: true });
    }
    let mut detector = r.detector.options();
    if let Some(t) = r.target {
        detector.target = t;
    }
    if let Some(f) = &r.forward {
        detector.forward = ForwardSignal::parse_list(f).map_err(anyhow::Error::msg)?;
    }
    if let Some(k) = r.members {
        detector.members = k;
    }
    if inputs.labels.is_none() && detector.target.needs_labels() && !r.one_class {
        eprintln!(
            "warning: the {} target needs the familiar images' true classes; without --familiar-labels (init: \
             --labels) the detector learns novelty labels only (unfamiliar = 1)",
            detector.target.name()
        );
    }
    let opts = CalibrateOptions {
        one_class: r.one_class,
        target_fpr: r.target_fpr,
        mlp: MlpConfig { hidden: r.hidden, seed: r.seed, ..Default::default() },
        detector,
    };
    let cm = CalibModel {
        name: model.info.name.clone(),
        sha256: model.info.sha256.clone(),
        loss: loss.name().to_string(),
        features: model.compiled.features.clone(),
        preset: model.compiled.preset.clone(),
        preprocessing,
    };
    let familiar = FamiliarSet {
        name: inputs.familiar_name,
        features: fam_feats.features,
        logits: fam_feats.logits,
        labels: inputs.labels,
    };
    Ok(fit::fit(cm, &familiar, &unfamiliar, &opts, &command_line())?)
}

/// Runs `gradwatch calibrate`.
pub fn run(a: CalibrateArgs) -> Result<i32> {
    if a.loss == Loss::Odin {
        anyhow::bail!("--loss odin is for the ODIN baseline, not for calibration; use bce-logits");
    }
    let mut model = LoadedModel::load(&a.model, &CompileOptions { loss: a.loss, ..CompileOptions::preset(a.preset) })
        .with_context(|| format!("loading {}", a.model.display()))?;
    let preprocessing = match model.override_preprocessing(&a.preprocess.overrides()) {
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
        unfamiliar.push(UnfamiliarSet { name, features: f.features, logits: f.logits, paired: false });
    }
    let inputs = FitInputs {
        familiar_name: a.familiar.display().to_string(),
        images: &fam_images,
        labels: fam_labels,
        unfamiliar,
    };
    let c = fit_recipe(&model, &mut session, a.loss, inputs, &a.recipe, a.batch, preprocessing)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ranges_parse_and_cut() {
        let v: Vec<u32> = (0..10).collect();
        let r = Some("2..8");
        assert_eq!(take_rows(v.clone(), r, None, "x").unwrap(), vec![2, 3, 4, 5, 6, 7]);
        assert_eq!(take_rows(v.clone(), r, Some(2), "x").unwrap(), vec![2, 3]);
        assert_eq!(take_rows(v.clone(), None, Some(3), "x").unwrap(), vec![0, 1, 2]);
        let e = take_rows(v, Some("0..11"), None, "x").unwrap_err().to_string();
        assert!(e.contains("beyond the 10 rows"), "{e}");
    }
}
