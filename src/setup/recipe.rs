//! The project's calibration recipe, shared by `gradwatch calibrate` and `gradwatch init`:
//! the familiar images' features, one synthetically corrupted copy of each as unfamiliar data
//! (every degradation type at levels 2-5, round-robin), the risk detector, and its threshold
//! for 1 % false alarms (what `models/gtsrb-resnet18.calib.toml` records).

use crate::corrupt::mix;
use crate::corrupt::{parse_corruptions, parse_levels, round_robin_corruptions, Corruption, Family};
use crate::detector::calibration::CalibModel;
use crate::detector::fit::{self, CalibrateOptions, DetectorChoice, DetectorOptions, FamiliarSet, UnfamiliarSet};
use crate::detector::forward::ForwardSignal;
use crate::detector::{Calibration, MlpConfig, Target};
use crate::frame::RgbImage;
use crate::grad::Loss;
use crate::model::{LoadedModel, Preprocessing};
use crate::runtime::extract;
use crate::runtime::GradSession;

use super::SetupError;

/// How the detector and its threshold are fitted; [`Recipe::default`] is the project's recipe.
#[derive(Clone, Debug)]
pub struct Recipe {
    /// Synthetic corruptions of the familiar images used as unfamiliar data, as
    /// [`parse_corruptions`] reads them (`all`, `legacy`, `paper`, a family, `none`, a list).
    pub corruptions: String,
    /// Their levels, as [`parse_levels`] reads them (`2-5`, `3,4,5`).
    pub levels: String,
    /// One-class detector on familiar images only.
    pub one_class: bool,
    /// The detector: risk or paper.
    pub detector: DetectorChoice,
    /// Overrides the detector's training target.
    pub target: Option<Target>,
    /// Overrides the detector's forward signals (`all`, `none` or a comma list).
    pub forward: Option<String>,
    /// Overrides the detector's seed-ensemble size.
    pub members: Option<usize>,
    /// Tolerated false-alarm rate on familiar images.
    pub target_fpr: f64,
    /// Hidden units of the MLP detector.
    pub hidden: usize,
    /// Seed of splits, corruptions and training.
    pub seed: u64,
    /// Whether the image-quality measures join the (camera-health) detector's inputs.
    pub quality: bool,
    /// Generalising training data (issue #25): a second corrupted copy of each image with one
    /// or two types of different families at levels in between, and/or lighting changes judged
    /// by the classifier alone (they replace the illumination types' round-robin copies).
    pub augment: mix::AugmentSets,
}

impl Default for Recipe {
    fn default() -> Self {
        Recipe {
            corruptions: "all".into(),
            levels: "2-5".into(),
            one_class: false,
            detector: DetectorChoice::Risk,
            target: None,
            forward: None,
            members: None,
            target_fpr: 0.01,
            hidden: 64,
            seed: 0,
            quality: false,
            augment: mix::AugmentSets::default(),
        }
    }
}

/// A [`Recipe`] with its options parsed, and what to warn about before fitting.
#[derive(Clone, Debug)]
pub struct RecipePlan {
    /// The recipe as given.
    pub recipe: Recipe,
    /// The corruption types (empty with `none`).
    pub kinds: Vec<Corruption>,
    /// Their levels.
    pub levels: Vec<u8>,
    /// The detector's target, forward signals and ensemble size.
    pub detector: DetectorOptions,
    /// Things the user should know before the fit (a target that needs labels it lacks).
    pub warnings: Vec<String>,
}

impl Recipe {
    /// Parses the options; `labels` says whether the familiar images come with true classes.
    pub fn plan(&self, labels: bool) -> Result<RecipePlan, SetupError> {
        let kinds = parse_corruptions(&self.corruptions).map_err(SetupError::Recipe)?;
        let levels = parse_levels(&self.levels).map_err(SetupError::Recipe)?;
        let mut detector = self.detector.options();
        if let Some(t) = self.target {
            detector.target = t;
        }
        if let Some(f) = &self.forward {
            detector.forward = ForwardSignal::parse_list(f).map_err(SetupError::Recipe)?;
        }
        if let Some(k) = self.members {
            detector.members = k;
        }
        detector.quality = self.quality;
        let mut warnings = Vec::new();
        if !labels && detector.target.needs_labels() && !self.one_class {
            warnings.push(format!(
                "the {} target needs the familiar images' true classes; without --familiar-labels (init: --labels) \
                 the detector learns novelty labels only (unfamiliar = 1)",
                detector.target.name()
            ));
        }
        Ok(RecipePlan { recipe: self.clone(), kinds, levels, detector, warnings })
    }
}

/// How graphs run, and the command line a calibration records.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Images per graph run.
    pub batch: usize,
    /// Whether to draw progress bars.
    pub progress: bool,
    /// The command line, for provenance.
    pub command: String,
}

/// The familiar images of a calibration and what else it learns from.
pub struct FitInputs<'a> {
    /// Name recorded in the calibration (a path).
    pub familiar_name: String,
    /// The familiar (clean) images.
    pub images: &'a [RgbImage],
    /// Their true classes, when known.
    pub labels: Option<Vec<usize>>,
    /// Unfamiliar sets, already extracted.
    pub unfamiliar: Vec<UnfamiliarSet>,
}

/// Fits a calibration with the recipe: the familiar images' features, one corrupted copy of
/// each (the plan's types and levels, round-robin), the detector and its threshold.
/// `preprocessing` is what the calibration stores (`None`: the model's metadata).
pub fn fit_recipe(
    model: &LoadedModel,
    session: &mut GradSession,
    loss: Loss,
    inputs: FitInputs<'_>,
    plan: &RecipePlan,
    run: &RunOptions,
    preprocessing: Option<Preprocessing>,
) -> Result<Calibration, SetupError> {
    let r = &plan.recipe;
    let (batch, progress) = (run.batch, run.progress);
    let fam_feats = extract::extract_labelled(session, &model.info, inputs.images, batch, progress, "familiar")?;
    // The image-quality measures, only when the detector reads them (at the model's input size).
    let (w, h) = (model.info.width, model.info.height);
    let measure = |imgs: &[RgbImage]| plan.detector.quality.then(|| crate::quality::measure_batch(imgs, w, h));
    let mut unfamiliar = inputs.unfamiliar;
    // With `augment`, lighting is judged by the classifier (the lighting set below), not
    // labelled unfamiliar by where it came from.
    let kinds: Vec<Corruption> =
        plan.kinds.iter().copied().filter(|k| !r.augment.lighting || k.family() != Family::Illumination).collect();
    if !kinds.is_empty() {
        let imgs = round_robin_corruptions(inputs.images, &kinds, &plan.levels, r.seed)?;
        let f = extract::extract_labelled(session, &model.info, &imgs, batch, progress, "corruptions")?;
        let name = format!(
            "synthetic corruptions of the familiar images ({}; levels {})",
            kinds.iter().map(|k| k.name()).collect::<Vec<_>>().join(","),
            r.levels
        );
        let quality = measure(&imgs);
        let (features, logits) = (f.features, f.logits);
        unfamiliar.push(UnfamiliarSet { name, features, logits, quality, paired: true, benign: false });
    }
    let sets = [
        (r.augment.mixed, mix::generalising_plan(&plan.kinds, &plan.levels), false, "mixed"),
        (r.augment.lighting, mix::lighting_plan(&plan.kinds), true, "lighting"),
    ];
    for (_, mix_plan, benign, what) in sets.into_iter().filter(|(on, p, _, _)| *on && !p.kinds.is_empty()) {
        let (imgs, _) = mix::mixed_corruptions(inputs.images, &mix_plan, r.seed ^ mix::AUGMENT_SALT)?;
        let f = extract::extract_labelled(session, &model.info, &imgs, batch, progress, what)?;
        let name = match benign {
            true => "lighting changes of the familiar images (exposure, levels 1-5; judged by the classifier)".into(),
            false => format!(
                "mixed corruptions of the familiar images (one or two types, levels {:.0}-{:.0} continuous)",
                mix_plan.lowest, mix_plan.highest
            ),
        };
        let quality = measure(&imgs);
        let (features, logits) = (f.features, f.logits);
        unfamiliar.push(UnfamiliarSet { name, features, logits, quality, paired: true, benign });
    }
    let opts = CalibrateOptions {
        one_class: r.one_class,
        target_fpr: r.target_fpr,
        mlp: MlpConfig { hidden: r.hidden, seed: r.seed, ..Default::default() },
        detector: plan.detector.clone(),
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
        quality: measure(inputs.images),
    };
    Ok(fit::fit(cm, &familiar, &unfamiliar, &opts, &run.command)?)
}

/// Images split into the part a calibration is fitted on and the part kept to measure it.
pub struct Split {
    /// Fitted on.
    pub fit_images: Vec<RgbImage>,
    /// Their labels.
    pub fit_labels: Option<Vec<usize>>,
    /// Kept out of the fit.
    pub hold_images: Vec<RgbImage>,
    /// Their labels.
    pub hold_labels: Option<Vec<usize>>,
}

/// Keeps a seeded random `holdout` fraction of the images out of the fit
/// ([`SetupError::BadInput`] unless `holdout` is in `[0, 0.9)`).
pub fn split(images: Vec<RgbImage>, labels: Option<&[usize]>, holdout: f64, seed: u64) -> Result<Split, SetupError> {
    if !(0.0..0.9).contains(&holdout) {
        return Err(super::bad(format!("--holdout {holdout} must be in [0, 0.9) (0.25 keeps a quarter to measure)")));
    }
    let perm = crate::detector::split::permutation(images.len(), seed ^ 0x1417);
    let n_hold = (images.len() as f64 * holdout).round() as usize;
    let (hold_idx, fit_idx) = perm.split_at(n_hold);
    let pick = |idx: &[usize]| -> Vec<RgbImage> { idx.iter().map(|&i| images[i].clone()).collect() };
    let pick_labels = |idx: &[usize]| labels.map(|l| idx.iter().map(|&i| l[i]).collect::<Vec<usize>>());
    Ok(Split {
        fit_images: pick(fit_idx),
        fit_labels: pick_labels(fit_idx),
        hold_images: pick(hold_idx),
        hold_labels: pick_labels(hold_idx),
    })
}
