//! Fitting detectors: the paper's detector on gradient features ([`GradDetector`]) and a whole
//! calibration file (`gradwatch calibrate`): the detector, its alarm threshold for a tolerated
//! false-alarm rate, and held-out numbers that say how well it separates.

use ndarray::{Array2, Axis};

use super::calibration::{CalibModel, DataSummary, FitSummary, FORMAT};
use super::forward::{argmax, ForwardSignal};
use super::roc;
use super::split::{rows, split};
use super::{
    CalibError, Calibration, DetectorError, DetectorKind, Ensemble, EnsembleConfig, Gaussian, LabelledRows,
    LogStandardizer, Mlp, MlpConfig, Origin, Reference, Target, TrainReport, DEFAULT_SHRINKAGE,
};

/// Errors of fitting a detector or a calibration.
#[derive(Debug, thiserror::Error)]
pub enum FitError {
    /// The detector could not be fitted.
    #[error(transparent)]
    Detector(#[from] DetectorError),
    /// The fitted calibration is inconsistent.
    #[error(transparent)]
    Calib(#[from] CalibError),
    /// Inputs that cannot work (too few images, wrong sizes, no unfamiliar data).
    #[error("{0}")]
    Invalid(String),
}

/// Fractions of each set used for training and validation; the rest is held out for the
/// threshold and the reported rates.
pub const CALIB_SPLIT: (f64, f64) = (0.6, 0.2);

/// Which detector `gradwatch calibrate --detector` fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectorChoice {
    /// The paper's: gradient columns only, novelty labels, one MLP (`kind = "mlp"`).
    Paper,
    /// Gradient + forward columns, a seed ensemble, labels that also mark the classifier's
    /// errors (`kind = "ensemble"`).
    Risk,
}

impl DetectorChoice {
    /// The default of `gradwatch calibrate` (see docs/results/detector-ablation.md).
    pub const DEFAULT: DetectorChoice = DetectorChoice::Risk;
    /// Ensemble size of the `risk` detector.
    pub const RISK_MEMBERS: usize = 5;
    /// Training target of the `risk` detector.
    pub const RISK_TARGET: Target = Target::Union;

    /// Its options.
    pub fn options(self) -> DetectorOptions {
        match self {
            DetectorChoice::Paper => {
                DetectorOptions { target: Target::Novelty, forward: Vec::new(), members: 1, quality: false }
            }
            DetectorChoice::Risk => DetectorOptions {
                target: Self::RISK_TARGET,
                forward: ForwardSignal::ALL.to_vec(),
                members: Self::RISK_MEMBERS,
                quality: false,
            },
        }
    }

    /// The name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DetectorChoice::Paper => "paper",
            DetectorChoice::Risk => "risk",
        }
    }
}

impl std::str::FromStr for DetectorChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "paper" => Ok(DetectorChoice::Paper),
            "risk" => Ok(DetectorChoice::Risk),
            _ => Err(format!("unknown detector '{s}' (expected paper or risk)")),
        }
    }
}

/// What the (non-one-class) detector is trained on and for.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorOptions {
    /// Training labels. Targets that need the classifier's errors fall back to
    /// [`Target::Novelty`] when the familiar set has no true classes.
    pub target: Target,
    /// Forward signals appended to the gradient columns.
    pub forward: Vec<ForwardSignal>,
    /// Seed-ensemble size (>= 1).
    pub members: usize,
    /// Whether the image-quality measures join the detector's inputs (the sets must then carry
    /// them; the trust head does not read them).
    pub quality: bool,
}

impl DetectorOptions {
    /// Whether this is exactly the paper's detector (fitted as `kind = "mlp"`).
    pub fn is_paper(&self) -> bool {
        self.target == Target::Novelty && self.forward.is_empty() && self.members == 1 && !self.quality
    }
}

/// How to fit.
#[derive(Clone, Debug)]
pub struct CalibrateOptions {
    /// Fit the one-class Gaussian on familiar data only (no unfamiliar training data needed).
    pub one_class: bool,
    /// Tolerated false-alarm rate on familiar images (e.g. 0.01).
    pub target_fpr: f64,
    /// MLP training (its seed is also the split seed).
    pub mlp: MlpConfig,
    /// Inputs, target and ensemble size (ignored with `one_class`).
    pub detector: DetectorOptions,
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        Self {
            one_class: false,
            target_fpr: 0.01,
            mlp: MlpConfig::default(),
            detector: DetectorChoice::DEFAULT.options(),
        }
    }
}

/// The familiar (in-distribution) images' outputs.
#[derive(Clone, Debug)]
pub struct FamiliarSet {
    /// Name (path).
    pub name: String,
    /// `[N, P]` gradient features.
    pub features: Array2<f32>,
    /// `[N, C]` logits (may have 0 columns when neither forward signals nor errors are used).
    pub logits: Array2<f32>,
    /// True class of every image, when known (needed by the `harm` and `union` targets).
    pub labels: Option<Vec<usize>>,
    /// `[N, Q]` image-quality measures of the images as the model saw them (needed with
    /// [`DetectorOptions::quality`]).
    pub quality: Option<Array2<f32>>,
}

/// An unfamiliar feature set.
#[derive(Clone, Debug)]
pub struct UnfamiliarSet {
    /// Name (path or description).
    pub name: String,
    /// `[N, P]` gradient features.
    pub features: Array2<f32>,
    /// `[N, C]` logits (row-aligned with `features`; may have 0 columns like the familiar's).
    pub logits: Array2<f32>,
    /// `[N, Q]` image-quality measures, row-aligned (needed with [`DetectorOptions::quality`]).
    pub quality: Option<Array2<f32>>,
    /// Row `i` is a corrupted copy of familiar image `i`: split it exactly like the familiar
    /// set, so that no image content is both trained on and held out; its true class is the
    /// familiar image's.
    pub paired: bool,
    /// Paired rows of a change the camera may see in normal service (lighting): labelled by
    /// the classifier's correctness alone ([`Origin::Benign`]), not counted as unfamiliar.
    pub benign: bool,
}

fn concat(parts: &[Array2<f32>]) -> Result<Array2<f32>, FitError> {
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| FitError::Invalid(format!("feature sets differ in width: {e}")))
}

/// One part (train, validation or test) of every set, in set order: familiar rows first.
#[derive(Default)]
struct Part {
    features: Vec<Array2<f32>>,
    logits: Vec<Array2<f32>>,
    /// Image-quality measures per set (`None` where a set has none).
    quality: Vec<Option<Array2<f32>>>,
    /// Per set: whether its rows are [`Origin::Benign`] (neither familiar nor unfamiliar).
    benign: Vec<bool>,
    origin: Vec<Origin>,
    /// True class per row (`None`: no labels, or a frame of no class).
    classes: Vec<Option<usize>>,
}

impl Part {
    fn push(
        &mut self,
        rows: (Array2<f32>, Array2<f32>, Option<Array2<f32>>),
        origin: Origin,
        classes: Vec<Option<usize>>,
    ) {
        let (f, l, q) = rows;
        self.origin.extend(std::iter::repeat_n(origin, f.nrows()));
        self.classes.extend(classes);
        self.benign.push(origin == Origin::Benign);
        self.features.push(f);
        self.logits.push(l);
        self.quality.push(q);
    }

    /// The familiar rows (set 0), the standardisers' reference.
    fn reference(&self) -> Reference<'_> {
        Reference { features: &self.features[0], logits: &self.logits[0], quality: self.quality[0].as_ref() }
    }

    /// Every set's quality rows stacked, or `None` when any set has none.
    fn quality_rows(&self, sets: &[usize]) -> Result<Option<Array2<f32>>, FitError> {
        let q: Option<Vec<Array2<f32>>> = sets.iter().map(|&j| self.quality[j].clone()).collect();
        q.filter(|v| !v.is_empty()).map(|v| concat(&v)).transpose()
    }

    /// The unfamiliar sets: every set after the familiar one but the benign ones.
    fn unfamiliar_sets(&self) -> Vec<usize> {
        (1..self.features.len()).filter(|&j| !self.benign[j]).collect()
    }

    /// The unfamiliar sets' rows ([`Self::unfamiliar_sets`]).
    fn unfamiliar(&self, width: usize, classes: usize) -> Result<(Array2<f32>, Array2<f32>), FitError> {
        let sets = self.unfamiliar_sets();
        let pick = |v: &[Array2<f32>], w: usize| {
            let v: Vec<Array2<f32>> = sets.iter().map(|&j| v[j].clone()).collect();
            if v.is_empty() {
                Ok(Array2::zeros((0, w)))
            } else {
                concat(&v)
            }
        };
        Ok((pick(&self.features, width)?, pick(&self.logits, classes)?))
    }

    fn labelled(&self, target: Target) -> Result<LabelledRows, FitError> {
        let logits = concat(&self.logits)?;
        // Whether the top-1 prediction misses the row's true class (`None`: no class known).
        let wrong =
            self.classes.iter().zip(logits.outer_iter()).map(|(y, z)| y.map(|y| argmax(&z.to_vec()) != Some(y)));
        let labels = self.origin.iter().zip(wrong).map(|(&o, w)| target.label(o, w)).collect();
        Ok(LabelledRows {
            features: concat(&self.features)?,
            logits,
            quality: self.quality_rows(&(0..self.quality.len()).collect::<Vec<_>>())?,
            labels,
        })
    }
}

/// The true class `labels[i]` of each row `i` of `idx` (`None` without labels).
fn true_classes(labels: Option<&[usize]>, idx: &[usize]) -> Vec<Option<usize>> {
    idx.iter().map(|&i| labels.and_then(|l| l.get(i).copied())).collect()
}

/// Fits a calibration for `model` from familiar outputs and (unless one-class) unfamiliar
/// sets. Every set is split 60/20/20 (seed `opts.mlp.seed`); the detector trains on the 60%
/// and early-stops on the 20% validation part; the threshold is the held-out familiar quantile
/// for `opts.target_fpr`, and the summary reports the held-out false-alarm rate, detection
/// rate (unfamiliar sets) and AUROC at it.
///
/// With [`DetectorOptions::is_paper`] the detector is the paper's single MLP on gradient
/// features (`kind = "mlp"`); otherwise an [`Ensemble`] trained for `opts.detector.target`,
/// which falls back to [`Target::Novelty`] when `familiar.labels` is `None` (the fitted
/// ensemble records the target it was trained for).
pub fn fit(
    model: CalibModel,
    familiar: &FamiliarSet,
    unfamiliar: &[UnfamiliarSet],
    opts: &CalibrateOptions,
    command: &str,
) -> Result<Calibration, FitError> {
    if !(0.0..1.0).contains(&opts.target_fpr) {
        return Err(FitError::Invalid(format!(
            "target false-alarm rate {} must be in [0, 1) (e.g. 0.01)",
            opts.target_fpr
        )));
    }
    let n = familiar.features.nrows();
    if n < 5 {
        return Err(FitError::Invalid(format!(
            "{n} familiar images are too few; give at least 5 (hundreds for a useful threshold)"
        )));
    }
    if familiar.features.ncols() != model.features.len() {
        return Err(DetectorError::DimensionMismatch {
            what: "familiar features",
            expected: model.features.len(),
            got: familiar.features.ncols(),
        }
        .into());
    }
    let classes = familiar.logits.ncols();
    if familiar.logits.nrows() != n || unfamiliar.iter().any(|u| u.logits.nrows() != u.features.nrows()) {
        return Err(FitError::Invalid("every set needs one logits row per feature row".into()));
    }
    if let Some(l) = familiar.labels.as_ref().filter(|l| l.len() != n) {
        return Err(FitError::Invalid(format!(
            "{} familiar labels for {n} familiar images; give one true class per image",
            l.len()
        )));
    }
    let labels = familiar.labels.as_deref();
    let seed = opts.mlp.seed;
    let fs = split(n, CALIB_SPLIT.0, CALIB_SPLIT.1, seed);
    let mut parts: [Part; 3] = Default::default();
    let d = &opts.detector;
    // `is_paper` is false whenever `quality` is set: only the one-class detector ignores it.
    let quality = d.quality && !opts.one_class;
    if quality {
        check_measured(familiar, unfamiliar)?;
    }
    let q_rows = |q: &Option<Array2<f32>>, idx: &[usize]| q.as_ref().filter(|_| quality).map(|q| rows(q, idx));
    for (part, idx) in parts.iter_mut().zip([&fs.train, &fs.val, &fs.test]) {
        let l = rows(&familiar.logits, idx);
        let y = true_classes(labels, idx);
        part.push((rows(&familiar.features, idx), l, q_rows(&familiar.quality, idx)), Origin::Familiar, y);
    }
    for (i, u) in unfamiliar.iter().enumerate() {
        if u.paired && u.features.nrows() != n {
            return Err(FitError::Invalid(format!(
                "'{}' is paired with the familiar set but has another size",
                u.name
            )));
        }
        let s = if u.paired {
            fs.clone()
        } else {
            split(u.features.nrows(), CALIB_SPLIT.0, CALIB_SPLIT.1, seed + 1 + i as u64)
        };
        for (part, idx) in parts.iter_mut().zip([&s.train, &s.val, &s.test]) {
            let l = rows(&u.logits, idx);
            let (origin, y) = if u.paired {
                let origin = if u.benign { Origin::Benign } else { Origin::Corrupted };
                (origin, true_classes(labels, idx))
            } else {
                (Origin::Ood, vec![None; idx.len()])
            };
            part.push((rows(&u.features, idx), l, q_rows(&u.quality, idx)), origin, y);
        }
    }
    let [train, val, test] = parts;
    let width = familiar.features.ncols();
    let (unf_train, _) = train.unfamiliar(width, classes)?;
    let (unf_val, _) = val.unfamiliar(width, classes)?;
    let (unf_test, unf_test_logits) = test.unfamiliar(width, classes)?;
    let (fam_train, fam_val) = (&train.features[0], &val.features[0]);
    let (fam_test, fam_test_logits) = (&test.features[0], &test.logits[0]);

    let detector = if opts.one_class {
        one_class(fam_train)?
    } else {
        if unf_train.nrows() == 0 || unf_val.nrows() == 0 {
            return Err(FitError::Invalid(
                "the MLP detector needs unfamiliar training data: give --unfamiliar sets, keep the synthetic \
                 corruptions on, or use --one-class"
                    .into(),
            ));
        }
        if d.is_paper() {
            let g = GradDetector::train(fam_train, &unf_train, fam_val, &unf_val, &opts.mlp)?;
            DetectorKind::Mlp { normalize: g.normalize, mlp: g.mlp }
        } else {
            let target = if labels.is_none() && d.target.needs_labels() { Target::Novelty } else { d.target };
            let cfg = EnsembleConfig {
                target,
                forward: d.forward.clone(),
                members: d.members,
                mlp: opts.mlp.clone(),
                quality,
            };
            let (e, _) = Ensemble::train(train.reference(), &train.labelled(target)?, &val.labelled(target)?, &cfg)?;
            DetectorKind::Ensemble(e)
        }
    };
    let trust = if opts.one_class || labels.is_none() || unf_train.nrows() == 0 {
        None
    } else {
        fit_trust(&train, &val, &test, &opts.mlp)
    };
    let mut c = Calibration {
        format: FORMAT,
        model,
        threshold: f32::INFINITY,
        target_false_alarm: opts.target_fpr,
        clean_tail_scale: None,
        detector,
        trust,
        fitted_on: FitSummary {
            familiar: DataSummary { name: familiar.name.clone(), count: n },
            unfamiliar: unfamiliar
                .iter()
                .map(|u| DataSummary { name: u.name.clone(), count: u.features.nrows() })
                .collect(),
            validation_false_alarm_rate: f64::NAN,
            validation_true_positive_rate: f64::NAN,
            validation_auroc: f64::NAN,
            command: command.to_string(),
        },
    };
    let f = c.score(fam_test, fam_test_logits, test.quality[0].as_ref());
    let u = c.score(&unf_test, &unf_test_logits, test.quality_rows(&test.unfamiliar_sets())?.as_ref());
    c.threshold = roc::threshold_for_false_alarm(&f, opts.target_fpr);
    c.clean_tail_scale = super::calibration::tail_scale(&f);
    let (fpr, tpr) = roc::rates_at(&f, &u, c.threshold);
    c.fitted_on.validation_false_alarm_rate = fpr;
    c.fitted_on.validation_true_positive_rate = tpr;
    c.fitted_on.validation_auroc = roc::auroc(&f, &u);
    c.validate()?;
    Ok(c)
}

/// The one-class detector: a single Gaussian on the familiar training rows' standardised logs.
fn one_class(fam_train: &Array2<f32>) -> Result<DetectorKind, FitError> {
    let normalize = LogStandardizer::fit(fam_train)?;
    let z = normalize.transform(fam_train)?;
    let zeros = vec![0usize; z.nrows()];
    // Fewer samples than features leave the covariance singular; shrink harder then.
    let gaussian = match Gaussian::fit(&z, &zeros, 1, DEFAULT_SHRINKAGE) {
        Err(DetectorError::NotPositiveDefinite(_)) => Gaussian::fit(&z, &zeros, 1, 1e-2)?,
        other => other?,
    };
    Ok(DetectorKind::OneClass { normalize, gaussian })
}

/// Checks that every set carries one image-quality row per image (the detector reads them).
fn check_measured(familiar: &FamiliarSet, unfamiliar: &[UnfamiliarSet]) -> Result<(), FitError> {
    let sets = std::iter::once((&familiar.quality, &familiar.name, familiar.features.nrows()))
        .chain(unfamiliar.iter().map(|u| (&u.quality, &u.name, u.features.nrows())));
    for (q, what, images) in sets {
        match q {
            Some(q) if q.nrows() == images => {}
            Some(q) => {
                return Err(FitError::Invalid(format!(
                    "{what}: {} image-quality rows for {images} images; measure every image once",
                    q.nrows()
                )))
            }
            None => {
                return Err(FitError::Invalid(format!(
                    "{what} carries no image-quality measures but the detector uses them; measure the images or \
                     leave the quality inputs off"
                )))
            }
        }
    }
    Ok(())
}

/// The trust head ([`super::trust`]) on the same parts as the detector: trained on `train`,
/// early-stopped and Platt-scaled on `val`, summarised on `test`, all with [`Target::Harm`]
/// labels. `None` (with a warning) when a part lacks wrong or right frames: the calibration is
/// still usable, its frames just carry no `risk`.
fn fit_trust(train: &Part, val: &Part, test: &Part, mlp: &MlpConfig) -> Option<super::TrustHead> {
    let go = || -> Result<super::TrustHead, FitError> {
        let cfg = super::TrustHead::config(mlp);
        let (mut head, _) = super::TrustHead::train(
            train.reference(),
            &train.labelled(Target::Harm)?,
            &val.labelled(Target::Harm)?,
            &cfg,
            (super::trust::ANCHOR_WEIGHT, &val.classes),
        )?;
        let t = test.labelled(Target::Harm)?;
        let risk = head.risk(&t.features, &t.logits, t.quality.as_ref());
        let wrong: Vec<bool> = t.labels.iter().map(|&y| y == 1).collect();
        head.held_out = Some(super::TrustSummary {
            n: wrong.len(),
            n_wrong: wrong.iter().filter(|&&w| w).count(),
            auroc: roc::misclassification_auroc(&risk, &wrong),
            ece: super::trust::ece(&risk, &wrong, 15),
        });
        Ok(head)
    };
    match go() {
        Ok(h) => Some(h),
        Err(e) => {
            log::warn!("no trust head (frames will carry no risk): {e}");
            None
        }
    }
}

/// The paper's detector on gradient features: log-standardisation fitted on familiar training
/// rows, then the two-layer MLP.
#[derive(Clone, Debug)]
pub struct GradDetector {
    /// Log + standardisation.
    pub normalize: LogStandardizer,
    /// The network; the score is its logit.
    pub mlp: Mlp,
    /// Training history.
    pub report: TrainReport,
}

impl GradDetector {
    /// Fits the standardiser on `fam_train`, then trains the MLP (familiar 0, unfamiliar 1)
    /// with early stopping on the validation rows.
    pub fn train(
        fam_train: &Array2<f32>,
        unf_train: &Array2<f32>,
        fam_val: &Array2<f32>,
        unf_val: &Array2<f32>,
        cfg: &MlpConfig,
    ) -> Result<Self, FitError> {
        let normalize = LogStandardizer::fit(fam_train)?;
        let (xt, yt) = stack(&normalize, fam_train, unf_train)?;
        let (xv, yv) = stack(&normalize, fam_val, unf_val)?;
        let (mlp, report) = Mlp::train(&xt, &yt, &xv, &yv, cfg)?;
        Ok(GradDetector { normalize, mlp, report })
    }

    /// Scores (MLP logits; higher = more unfamiliar).
    pub fn score(&self, x: &Array2<f32>) -> Result<Vec<f32>, FitError> {
        Ok(self.mlp.logits(&self.normalize.transform(x)?))
    }
}

fn stack(n: &LogStandardizer, fam: &Array2<f32>, unf: &Array2<f32>) -> Result<(Array2<f32>, Vec<u8>), FitError> {
    let f = n.transform(fam)?;
    let u = n.transform(unf)?;
    let x = ndarray::concatenate(Axis(0), &[f.view(), u.view()])
        .map_err(|e| FitError::Invalid(format!("familiar and unfamiliar features differ in width: {e}")))?;
    let mut y = vec![0u8; f.nrows()];
    y.extend(std::iter::repeat_n(1u8, u.nrows()));
    Ok((x, y))
}
