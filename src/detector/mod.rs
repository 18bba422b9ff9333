//! Detectors: gradient features (or penultimate activations) -> unfamiliarity score.
//!
//! Higher score = more unfamiliar, the convention of [`roc`].
//!
//! * [`LogStandardizer`]: the fixed preprocessing of gradient features. Squared gradient
//!   norms span ~11 decades (1e-9 .. 1e+2 for ResNet-18), so they are log-transformed and
//!   then standardised with statistics of the familiar training features.
//! * [`Mlp`]: the paper's binary detector (two fully-connected layers) trained on
//!   familiar (label 0) vs unfamiliar (label 1) standardised features.
//! * [`Ensemble`]: the `risk` detector: gradient features plus [`forward`] signals of the
//!   logits, a seed ensemble of MLPs trained for a [`Target`] (novelty, harm or their union).
//! * [`Gaussian`]: class-conditional Gaussians with a tied covariance, scored by the minimum
//!   squared Mahalanobis distance. With one class it is a one-class detector that needs no
//!   unfamiliar training data; with C classes on penultimate features it is the Mahalanobis
//!   OOD baseline (Lee et al. 2018, "vanilla": no input preprocessing, no feature ensemble).
//!
//! * [`fit`]: fitting them, and a whole calibration with its alarm threshold; [`roc`]: the ROC
//!   maths behind thresholds and reports; [`split`]: the seeded data splits both use.
//!
//! Fitted models are plain serde structs (they round-trip through TOML/JSON). Models read
//! from files should be checked with their `validate` method before scoring: scoring a row
//! of the wrong length, or with an inconsistent model, yields NaN (most unfamiliar) instead
//! of panicking.

pub mod calibration;
mod ensemble;
pub mod fit;
pub mod forward;
mod gaussian;
mod linalg;
mod mlp;
pub mod roc;
pub mod split;
mod standardize;
pub mod trust;

pub use calibration::{CalibError, Calibration, DetectorKind};
pub use ensemble::{
    mean_logit, train_members, Ensemble, EnsembleConfig, FrameInputs, LabelledRows, Origin, Reference, Target,
};
pub use fit::{FitError, GradDetector};
pub use gaussian::{Gaussian, DEFAULT_SHRINKAGE};
pub use mlp::{Mlp, MlpConfig, TrainReport};
pub use standardize::{LogStandardizer, Standardizer, DEFAULT_EPS, MIN_STD};
pub use trust::{Platt, TrustHead, TrustSummary};

/// Errors from fitting, transforming or validating detectors.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum DetectorError {
    /// No samples or no features where some are required.
    #[error("{what} is empty; provide at least one sample with at least one feature")]
    Empty {
        /// Which input was empty.
        what: &'static str,
    },
    /// The number of features does not match what the model was fitted on.
    #[error("{what}: expected {expected} features per sample, got {got}; use features from the same model/graph the detector was fitted on")]
    DimensionMismatch {
        /// Which input or model part mismatched.
        what: &'static str,
        /// Expected feature count.
        expected: usize,
        /// Actual feature count.
        got: usize,
    },
    /// A NaN (or, when fitting, an infinite) feature value.
    #[error("{what}: non-finite value {value} at sample {row}, feature {col}; the feature extractor produced garbage for this sample, drop it")]
    NonFinite {
        /// Which input.
        what: &'static str,
        /// Sample index.
        row: usize,
        /// Feature index.
        col: usize,
        /// The offending value.
        value: f64,
    },
    /// Labels and samples disagree in count.
    #[error("{what}: {samples} samples but {labels} labels; pass exactly one label per sample")]
    LabelCount {
        /// Which input.
        what: &'static str,
        /// Number of samples.
        samples: usize,
        /// Number of labels.
        labels: usize,
    },
    /// A label outside the allowed range.
    #[error("{what}: label {label} at sample {row} is out of range (allowed 0..{allowed}); binary labels are 0 = familiar, 1 = unfamiliar")]
    BadLabel {
        /// Which input.
        what: &'static str,
        /// Sample index.
        row: usize,
        /// The label.
        label: usize,
        /// Exclusive upper bound.
        allowed: usize,
    },
    /// A class that must be present has no sample.
    #[error("{what}: class {class} has no samples; every class needs at least one training sample")]
    MissingClass {
        /// Which input.
        what: &'static str,
        /// The missing class.
        class: usize,
    },
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The (shrunk) covariance could not be inverted.
    #[error(
        "covariance is not positive definite ({0}); increase the shrinkage (e.g. 1e-3) or remove constant features"
    )]
    NotPositiveDefinite(String),
    /// A deserialised model is internally inconsistent.
    #[error("invalid model: {0}; the model file is corrupt or from an incompatible version, refit it")]
    InvalidModel(String),
}

/// Checks that every value of `x` is finite (`allow_inf`: only NaN is rejected).
pub(crate) fn check_finite(what: &'static str, x: &ndarray::Array2<f32>, allow_inf: bool) -> Result<(), DetectorError> {
    for ((row, col), &v) in x.indexed_iter() {
        if v.is_nan() || (!allow_inf && v.is_infinite()) {
            return Err(DetectorError::NonFinite { what, row, col, value: v as f64 });
        }
    }
    Ok(())
}
