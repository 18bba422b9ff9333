//! Evaluation of unfamiliarity detectors (`gradwatch eval`): the baselines the paper compares
//! against, the paper's protocol, the report and its figures. Only the CLI's `eval` command
//! uses this module; what the product needs (ROC maths, splits, fitting, feature extraction)
//! lives in [`crate::detector`] and [`crate::runtime`].

pub mod accuracy;
pub mod baselines;
pub mod feature_baselines;
pub mod protocol;
pub mod report;
pub mod results;
pub mod trust;
pub mod trust_report;

/// Errors of feature extraction, caching and the evaluation protocol.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// ONNX Runtime failed on a batch.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// A detector could not be fitted.
    #[error(transparent)]
    Detector(#[from] crate::detector::DetectorError),
    /// Data could not be read or written.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// A calibration is inconsistent or could not be read or written.
    #[error(transparent)]
    Calib(#[from] crate::detector::CalibError),
    /// A detector could not be fitted.
    #[error(transparent)]
    Fit(#[from] crate::detector::FitError),
    /// Features could not be extracted, read or written.
    #[error(transparent)]
    Extract(#[from] crate::runtime::ExtractError),
    /// The model could not be loaded or cut to its logits.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// A corruption could not be applied.
    #[error(transparent)]
    Corrupt(#[from] crate::corrupt::CorruptError),
    /// A file (cache, report, figure) could not be read or written.
    #[error(
        "{path}: {why}; check that the folder exists and is writable (delete a damaged cache folder to rebuild it)"
    )]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The graph lacks an output the evaluation needs.
    #[error("the compiled graph has no '{0}' output; compile it with that output enabled")]
    MissingOutput(&'static str),
    /// Arguments that cannot work together.
    #[error("{0}")]
    Invalid(String),
}

impl EvalError {
    pub(crate) fn file(path: &std::path::Path, why: impl std::fmt::Display) -> Self {
        EvalError::File { path: path.display().to_string(), why: why.to_string() }
    }
}
