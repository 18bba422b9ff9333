//! Fitting detectors: the paper's detector on gradient features ([`GradDetector`]) and a whole
//! calibration file (`gradwatch calibrate`): the detector, its alarm threshold for a tolerated
//! false-alarm rate, and held-out numbers that say how well it separates.

use ndarray::{Array2, Axis};

use super::calibration::{CalibModel, DataSummary, FitSummary, FORMAT};
use super::roc;
use super::split::{rows, split};
use super::{
    CalibError, Calibration, DetectorError, DetectorKind, Gaussian, LogStandardizer, Mlp, MlpConfig, TrainReport,
    DEFAULT_SHRINKAGE,
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

/// How to fit.
#[derive(Clone, Debug)]
pub struct CalibrateOptions {
    /// Fit the one-class Gaussian on familiar data only (no unfamiliar training data needed).
    pub one_class: bool,
    /// Tolerated false-alarm rate on familiar images (e.g. 0.01).
    pub target_fpr: f64,
    /// MLP training (its seed is also the split seed).
    pub mlp: MlpConfig,
}

impl Default for CalibrateOptions {
    fn default() -> Self {
        Self { one_class: false, target_fpr: 0.01, mlp: MlpConfig::default() }
    }
}

/// An unfamiliar feature set.
#[derive(Clone, Debug)]
pub struct UnfamiliarSet {
    /// Name (path or description).
    pub name: String,
    /// `[N, P]` gradient features.
    pub features: Array2<f32>,
    /// Row `i` is a corrupted copy of familiar image `i`: split it exactly like the familiar
    /// set, so that no image content is both trained on and held out.
    pub paired: bool,
}

fn concat(parts: &[Array2<f32>]) -> Result<Array2<f32>, FitError> {
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| FitError::Invalid(format!("feature sets differ in width: {e}")))
}

/// Fits a calibration for `model` from familiar features and (unless one-class) unfamiliar
/// sets. Every set is split 60/20/20 (seed `opts.mlp.seed`); the MLP trains on the 60% and
/// early-stops on the 20% validation part; the threshold is the held-out familiar quantile for
/// `opts.target_fpr`, and the summary reports the held-out false-alarm rate, detection rate and
/// AUROC at it.
pub fn fit(
    model: CalibModel,
    familiar_name: &str,
    familiar: &Array2<f32>,
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
    let n = familiar.nrows();
    if n < 5 {
        return Err(FitError::Invalid(format!(
            "{n} familiar images are too few; give at least 5 (hundreds for a useful threshold)"
        )));
    }
    if familiar.ncols() != model.features.len() {
        return Err(DetectorError::DimensionMismatch {
            what: "familiar features",
            expected: model.features.len(),
            got: familiar.ncols(),
        }
        .into());
    }
    let seed = opts.mlp.seed;
    let fs = split(n, CALIB_SPLIT.0, CALIB_SPLIT.1, seed);
    let mut unf_parts = (Vec::new(), Vec::new(), Vec::new());
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
        unf_parts.0.push(rows(&u.features, &s.train));
        unf_parts.1.push(rows(&u.features, &s.val));
        unf_parts.2.push(rows(&u.features, &s.test));
    }
    let width = familiar.ncols();
    let or_empty = |v: &[Array2<f32>]| if v.is_empty() { Ok(Array2::zeros((0, width))) } else { concat(v) };
    let (unf_train, unf_val, unf_test) = (or_empty(&unf_parts.0)?, or_empty(&unf_parts.1)?, or_empty(&unf_parts.2)?);
    let fam_train = rows(familiar, &fs.train);
    let fam_val = rows(familiar, &fs.val);
    let fam_test = rows(familiar, &fs.test);

    let detector = if opts.one_class {
        let normalize = LogStandardizer::fit(&fam_train)?;
        let z = normalize.transform(&fam_train)?;
        let zeros = vec![0usize; z.nrows()];
        // Fewer samples than features leave the covariance singular; shrink harder then.
        let gaussian = match Gaussian::fit(&z, &zeros, 1, DEFAULT_SHRINKAGE) {
            Err(DetectorError::NotPositiveDefinite(_)) => Gaussian::fit(&z, &zeros, 1, 1e-2)?,
            other => other?,
        };
        DetectorKind::OneClass { normalize, gaussian }
    } else {
        if unf_train.nrows() == 0 || unf_val.nrows() == 0 {
            return Err(FitError::Invalid(
                "the MLP detector needs unfamiliar training data: give --unfamiliar sets, keep the synthetic \
                 corruptions on, or use --one-class"
                    .into(),
            ));
        }
        let d = GradDetector::train(&fam_train, &unf_train, &fam_val, &unf_val, &opts.mlp)?;
        DetectorKind::Mlp { normalize: d.normalize, mlp: d.mlp }
    };
    let mut c = Calibration {
        format: FORMAT,
        model,
        threshold: f32::INFINITY,
        target_false_alarm: opts.target_fpr,
        detector,
        fitted_on: FitSummary {
            familiar: DataSummary { name: familiar_name.to_string(), count: n },
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
    let f = c.score(&fam_test);
    let u = c.score(&unf_test);
    c.threshold = roc::threshold_for_false_alarm(&f, opts.target_fpr);
    let (fpr, tpr) = roc::rates_at(&f, &u, c.threshold);
    c.fitted_on.validation_false_alarm_rate = fpr;
    c.fitted_on.validation_true_positive_rate = tpr;
    c.fitted_on.validation_auroc = roc::auroc(&f, &u);
    c.validate()?;
    Ok(c)
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
