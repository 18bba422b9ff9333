//! Setting a user's own classifier up (`gradwatch init`), and the calibration recipe it shares
//! with `gradwatch calibrate`. The steps, in the order `init` runs them:
//!
//! * [`inspect`]: what the ONNX file is (one float image input, a class axis, operators the
//!   compiler differentiates), loaded and compiled with the preprocessing overrides applied;
//! * [`images`]: the labelled images (rows, labels checked against the model's classes);
//! * [`check`]: what the classifier makes of them: accuracy, the likely preprocessing mistakes
//!   tried side by side, warnings about training images or too few classes;
//! * [`cost`]: what each feature preset's gradient graph costs on this machine against the
//!   classifier's forward pass, and the preset `--preset auto` takes (a warning when a named one
//!   is over budget and another fits);
//! * [`recipe`]: the project's calibration recipe (synthetic corruptions, the detector, its
//!   threshold) on part of the images;
//! * [`report`]: the rest measured, and `<model>.calib.toml`, `gradwatch.toml`, `report.md`
//!   and `roc.svg` written.
//!
//! The CLI parses arguments, calls these and prints; nothing here prints. Errors the user can
//! fix are [`SetupError::BadInput`] (the CLI exits 2 on them).

pub mod check;
pub mod cost;
pub mod images;
pub mod inspect;
pub mod recipe;
pub mod report;

pub use recipe::{fit_recipe, FitInputs, Recipe, RecipePlan, RunOptions};

/// Errors of setting a model up and of calibrating it.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Input the user can fix (a model gradwatch cannot use, images or labels that do not fit,
    /// a preprocessing the accuracy says is wrong); the message names the cause and the fix.
    #[error("{0}")]
    BadInput(String),
    /// A recipe option that does not parse (corruptions, levels, forward signals).
    #[error("{0}")]
    Recipe(String),
    /// A file or folder could not be written; `what` says which, the source why.
    #[error("{what}")]
    Io {
        /// What was being done (`writing report.md in DIR`).
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model could not be cut to its logits.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// ONNX Runtime failed.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// Features could not be extracted.
    #[error(transparent)]
    Extract(#[from] crate::runtime::ExtractError),
    /// Corrupted copies could not be made.
    #[error(transparent)]
    Corrupt(#[from] crate::corrupt::CorruptError),
    /// The detector or its threshold could not be fitted.
    #[error(transparent)]
    Fit(#[from] crate::detector::FitError),
    /// The calibration could not be written.
    #[error(transparent)]
    Calib(#[from] crate::detector::CalibError),
    /// A graph returned something other than what it should.
    #[error("{0}")]
    Invalid(String),
}

impl SetupError {
    /// Whether the user can fix it (the CLI exits 2 on these).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, SetupError::BadInput(_))
    }

    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SetupError {
        let what = what.into();
        move |source| SetupError::Io { what, source }
    }
}

fn bad(msg: impl Into<String>) -> SetupError {
    SetupError::BadInput(msg.into())
}

/// `e` and its causes joined by ": ", as the CLI prints an error.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_joined_as_the_cli_prints_them_and_only_bad_input_exits_2() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        let e = SetupError::io("writing report.md in out")(io);
        assert_eq!(with_causes(&e), "writing report.md in out: gone");
        assert_eq!(format!("{:#}", anyhow::Error::from(e)), "writing report.md in out: gone");
        assert!(bad("no").is_bad_input());
        assert!(!SetupError::Recipe("unknown corruption".into()).is_bad_input());
    }
}
