//! `gradwatch calibrate`: fit the detector and its alarm threshold for one model file.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::common::{load_input, runtime, show_progress};
use crate::corrupt::{parse_corruptions, parse_levels, round_robin_corruptions};
use crate::detector::calibration::CalibModel;
use crate::detector::fit::{self, CalibrateOptions, DetectorChoice, FamiliarSet, UnfamiliarSet};
use crate::detector::forward::ForwardSignal;
use crate::detector::{MlpConfig, Target};
use crate::frame::RgbImage;
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
    /// Detector: risk (gradient + forward-only logit signals, a seed ensemble, trained to flag
    /// the classifier's errors as well as unfamiliar images; see docs/detector-ablation.md)
    /// or paper (the paper's single MLP on gradient features, novelty labels).
    #[arg(long, default_value = "risk")]
    pub detector: DetectorChoice,
    /// Override the detector's training target: novelty (unfamiliar = 1), harm (classifier
    /// wrong or OOD = 1) or union (novelty or wrong). harm and union need --familiar-labels.
    #[arg(long)]
    pub target: Option<Target>,
    /// Override the detector's forward signals: all, none, or a comma list of max_logit,
    /// logsumexp, margin, msp, neg_entropy.
    #[arg(long)]
    pub forward: Option<String>,
    /// Override the detector's seed-ensemble size.
    #[arg(long)]
    pub members: Option<usize>,
    /// True classes of the familiar images (.npy of integers, one per image of --familiar;
    /// corrupted copies inherit them). Lets the risk detector learn the classifier's errors.
    #[arg(long)]
    pub familiar_labels: Option<PathBuf>,
    /// Use only rows A..B (0-based, B exclusive) of the familiar .npy and its labels, e.g.
    /// 0..6315 to calibrate on one half of a test set and evaluate on the other.
    #[arg(long)]
    pub familiar_rows: Option<String>,
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

/// Rows `range` of `v` (all of it without a range), then the first `limit` of those; an
/// error when the range runs past the end.
fn take_rows<T>(mut v: Vec<T>, range: Option<&str>, limit: Option<usize>, what: &str) -> Result<Vec<T>> {
    if let Some(r) = range {
        let r = crate::data::parse_rows(r, v.len()).map_err(|e| anyhow::anyhow!("--familiar-rows: {what}: {e}"))?;
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
    let images =
        take_rows(load_input(&a.familiar, read_limit)?.images, a.familiar_rows.as_deref(), a.limit, "--familiar")?;
    let labels = match &a.familiar_labels {
        None => None,
        Some(p) => {
            let raw = crate::data::load_npy_labels(p).with_context(|| format!("reading {}", p.display()))?;
            let raw = take_rows(raw, a.familiar_rows.as_deref(), a.limit, "--familiar-labels")?;
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
    let (fam_images, fam_labels) = familiar_images(&a)?;
    let fam_feats = features::extract_labelled(&mut session, &model.info, &fam_images, a.batch, progress, "familiar")?;
    let mut unfamiliar = Vec::new();
    for p in &a.unfamiliar {
        let u = load_input(p, a.limit)?;
        let f = features::extract_labelled(&mut session, &model.info, &u.images, a.batch, progress, "unfamiliar")?;
        let name = p.display().to_string();
        unfamiliar.push(UnfamiliarSet { name, features: f.features, logits: f.logits, paired: false });
    }
    if !kinds.is_empty() {
        let imgs = round_robin_corruptions(&fam_images, &kinds, &levels, a.seed)?;
        let f = features::extract_labelled(&mut session, &model.info, &imgs, a.batch, progress, "corruptions")?;
        let name = format!(
            "synthetic corruptions of the familiar images ({}; levels {})",
            kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
            a.levels
        );
        unfamiliar.push(UnfamiliarSet { name, features: f.features, logits: f.logits, paired: true });
    }
    let mut detector = a.detector.options();
    if let Some(t) = a.target {
        detector.target = t;
    }
    if let Some(f) = &a.forward {
        detector.forward = ForwardSignal::parse_list(f).map_err(anyhow::Error::msg)?;
    }
    if let Some(k) = a.members {
        detector.members = k;
    }
    if fam_labels.is_none() && detector.target.needs_labels() && !a.one_class {
        eprintln!(
            "warning: the {} target needs the familiar images' true classes; without --familiar-labels the \
             detector learns novelty labels only (unfamiliar = 1)",
            detector.target.name()
        );
    }
    let opts = CalibrateOptions {
        one_class: a.one_class,
        target_fpr: a.target_fpr,
        mlp: MlpConfig { hidden: a.hidden, seed: a.seed, ..Default::default() },
        detector,
    };
    let cm = CalibModel {
        name: model.info.name.clone(),
        sha256: model.info.sha256.clone(),
        loss: a.loss.name().to_string(),
        features: model.compiled.features.clone(),
        preset: model.compiled.preset.clone(),
    };
    let familiar = FamiliarSet {
        name: a.familiar.display().to_string(),
        features: fam_feats.features,
        logits: fam_feats.logits,
        labels: fam_labels,
    };
    let c = fit::fit(cm, &familiar, &unfamiliar, &opts, &command_line())?;
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
