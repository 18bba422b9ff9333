//! Fitting a calibration file (`gradwatch calibrate`): the detector, its alarm threshold for a
//! tolerated false-alarm rate, and held-out numbers that say how well it separates.

use ndarray::{Array2, Axis};

use super::protocol::{rows, split};
use super::{metrics, EvalError};
use crate::corrupt::{self, Corruption};
use crate::detector::calibration::{CalibModel, DataSummary, FitSummary, FORMAT};
use crate::detector::{
    Calibration, DetectorError, DetectorKind, Gaussian, LogStandardizer, MlpConfig, DEFAULT_SHRINKAGE,
};
use crate::frame::RgbImage;

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

/// One corrupted copy per image, cycling through every `(kind, level)` combination so that
/// each appears equally often; image `i` gets combination `i mod (kinds x levels)` and seed
/// `image_seed(seed, i)`.
pub fn round_robin_corruptions(
    images: &[RgbImage],
    kinds: &[Corruption],
    levels: &[u8],
    seed: u64,
) -> Result<Vec<RgbImage>, EvalError> {
    let combos: Vec<(Corruption, u8)> = kinds.iter().flat_map(|&k| levels.iter().map(move |&l| (k, l))).collect();
    if combos.is_empty() {
        return Err(EvalError::Invalid("no corruption kinds or levels to draw from".into()));
    }
    images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let (k, l) = combos[i % combos.len()];
            corrupt::apply(img, k, l, super::protocol::image_seed(seed, i)).map_err(EvalError::from)
        })
        .collect()
}

fn concat(parts: &[Array2<f32>]) -> Result<Array2<f32>, EvalError> {
    let views: Vec<_> = parts.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| EvalError::Invalid(format!("feature sets differ in width: {e}")))
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
) -> Result<Calibration, EvalError> {
    if !(0.0..1.0).contains(&opts.target_fpr) {
        return Err(EvalError::Invalid(format!(
            "target false-alarm rate {} must be in [0, 1) (e.g. 0.01)",
            opts.target_fpr
        )));
    }
    let n = familiar.nrows();
    if n < 5 {
        return Err(EvalError::Invalid(format!(
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
            return Err(EvalError::Invalid(format!(
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
            return Err(EvalError::Invalid(
                "the MLP detector needs unfamiliar training data: give --unfamiliar sets, keep the synthetic \
                 corruptions on, or use --one-class"
                    .into(),
            ));
        }
        let d = super::protocol::GradDetector::train(&fam_train, &unf_train, &fam_val, &unf_val, &opts.mlp)?;
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
    c.threshold = metrics::threshold_for_false_alarm(&f, opts.target_fpr);
    let (fpr, tpr) = metrics::rates_at(&f, &u, c.threshold);
    c.fitted_on.validation_false_alarm_rate = fpr;
    c.fitted_on.validation_true_positive_rate = tpr;
    c.fitted_on.validation_auroc = metrics::auroc(&f, &u);
    c.validate()?;
    Ok(c)
}
