//! The calibration file: everything needed to turn a model's gradient features into a verdict,
//! tied to one model file by its sha256. Stored as TOML next to the model
//! (e.g. `models/gtsrb-resnet18.calib.toml`).

use std::path::Path;

use ndarray::Array2;

use super::{DetectorError, Ensemble, FrameInputs, Gaussian, LogStandardizer, Mlp, TrustHead};

/// Current file format version.
pub const FORMAT: u32 = 1;

/// Errors reading or applying a calibration.
#[derive(Debug, thiserror::Error)]
pub enum CalibError {
    /// File I/O.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not a valid calibration file.
    #[error("{path}: not a valid calibration file: {why}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message.
        why: String,
    },
    /// The calibration was made for another model.
    #[error("calibration was fitted on model sha256 {expected} but the model is {actual}; recalibrate with `gradwatch calibrate` for this model, or point to the matching model file")]
    ModelMismatch {
        /// Hash recorded in the calibration.
        expected: String,
        /// Hash of the model in use.
        actual: String,
    },
    /// The calibration was fitted for another feature preset.
    #[error("calibration was fitted for the '{calibrated}' feature preset but the model is compiled with preset '{wanted}'; set `[model] preset = \"{calibrated}\"` (or `--preset {calibrated}`), or use a calibration made with `gradwatch calibrate --preset {wanted}`")]
    PresetMismatch {
        /// Preset recorded in the calibration.
        calibrated: String,
        /// Preset of the compiled model.
        wanted: String,
    },
    /// Different feature list.
    #[error("calibration features do not match the compiled model ({why}); recalibrate for this model and loss")]
    FeatureMismatch {
        /// What differs.
        why: String,
    },
    /// The detector inside is inconsistent.
    #[error(transparent)]
    Detector(#[from] DetectorError),
}

/// The model a calibration belongs to.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibModel {
    /// Model name.
    pub name: String,
    /// sha256 of the model file.
    pub sha256: String,
    /// Loss the features were compiled with (`bce-logits`, ...).
    pub loss: String,
    /// Feature (parameter tensor) names, in order.
    pub features: Vec<String>,
    /// The feature preset the features were compiled with (`full`, `fast`, `custom`).
    /// Files from before presets have none: `full`.
    #[serde(default = "default_preset")]
    pub preset: String,
    /// The preprocessing the features were extracted with (`[model.preprocessing]`), when it
    /// differs from the model's own metadata (`gradwatch init` / `calibrate` overrides): every
    /// command and the daemon that use this calibration preprocess frames this way. Absent in
    /// files written before it existed and where the model's metadata applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprocessing: Option<crate::model::Preprocessing>,
}

impl CalibModel {
    /// The `(width, height)` the stored preprocessing resizes frames to: the size a model of
    /// symbolic input size is compiled for ([`crate::grad::CompileOptions::input_size`]).
    pub fn input_size(&self) -> Option<(usize, usize)> {
        self.preprocessing.as_ref().map(|p| (p.width, p.height))
    }

    /// The options that compile the graph these features were taken from: the loss, the
    /// preset and the input size. Fails naming the field that does not parse.
    pub fn compile_options(&self) -> Result<crate::grad::CompileOptions, String> {
        let loss: crate::grad::Loss = self.loss.parse().map_err(|e| format!("loss: {e}"))?;
        let preset: crate::grad::Preset = self.preset.parse().map_err(|e| format!("preset: {e}"))?;
        Ok(crate::grad::CompileOptions {
            loss,
            input_size: self.input_size(),
            ..crate::grad::CompileOptions::preset(preset)
        })
    }
}

fn default_preset() -> String {
    crate::grad::Preset::Full.name().to_string()
}

/// The fitted detector (`[detector] kind = ...`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DetectorKind {
    /// The paper's binary detector; the score is its logit.
    Mlp {
        /// Log + standardisation.
        normalize: LogStandardizer,
        /// The network.
        mlp: Mlp,
    },
    /// Familiar data only: squared Mahalanobis distance of standardised log features.
    OneClass {
        /// Log + standardisation.
        normalize: LogStandardizer,
        /// The Gaussian.
        gaussian: Gaussian,
    },
    /// The `risk` detector: gradient (+ forward-signal) columns, a seed ensemble of MLPs
    /// trained for a [`Target`](super::Target); the score is the mean member logit.
    Ensemble(Ensemble),
}

impl DetectorKind {
    /// The log-standardiser of the gradient features every detector starts with.
    pub fn normalize(&self) -> &LogStandardizer {
        match self {
            DetectorKind::Mlp { normalize, .. } | DetectorKind::OneClass { normalize, .. } => normalize,
            DetectorKind::Ensemble(e) => &e.normalize,
        }
    }
}

/// The mean excess of `scores` over their 90th percentile (NaN ignored): the scale of an
/// exponential fitted to the top tenth (peaks over threshold). `None` with fewer than 20 finite
/// scores.
pub fn tail_scale(scores: &[f32]) -> Option<f64> {
    let mut v: Vec<f32> = scores.iter().copied().filter(|s| s.is_finite()).collect();
    if v.len() < 20 {
        return None;
    }
    v.sort_by(f32::total_cmp);
    Some(mean_excess(&v, v.len() / 10))
}

/// The mean excess of the top `k` of `sorted` (ascending, `0 < k < len`) over the value just
/// below them, `sorted[len - 1 - k]`: the scale of an exponential tail fitted there.
pub fn mean_excess(sorted: &[f32], k: usize) -> f64 {
    let u = f64::from(sorted[sorted.len() - 1 - k]);
    sorted[sorted.len() - k..].iter().map(|&s| f64::from(s) - u).sum::<f64>() / k as f64
}

/// One data set the calibration saw.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSummary {
    /// Name (path or corruption).
    pub name: String,
    /// Number of images.
    pub count: usize,
}

/// What the calibration was fitted on and how it did on held-out data.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FitSummary {
    /// Familiar images.
    pub familiar: DataSummary,
    /// Unfamiliar sets (real ones and synthetic corruptions).
    pub unfamiliar: Vec<DataSummary>,
    /// Held-out familiar false-alarm rate at the threshold.
    pub validation_false_alarm_rate: f64,
    /// Held-out unfamiliar detection rate at the threshold.
    pub validation_true_positive_rate: f64,
    /// Held-out AUROC.
    pub validation_auroc: f64,
    /// The command that produced this file.
    pub command: String,
}

/// A calibration file.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// File format version ([`FORMAT`]).
    pub format: u32,
    /// The model it belongs to.
    pub model: CalibModel,
    /// Alarm when `score > threshold`.
    pub threshold: f32,
    /// The false-alarm rate the threshold was chosen for.
    pub target_false_alarm: f64,
    /// Mean excess of held-out clean familiar scores over their 90th percentile
    /// ([`tail_scale`]): how fast the clean score distribution's upper tail decays. The `cusum`
    /// alert policy never assumes a stream's clean tail decays faster than this (a baseline
    /// learned from a few minutes of one camera sees too few signs to estimate its own tail).
    /// Absent in files written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_tail_scale: Option<f64>,
    /// The detector (the camera-health score).
    pub detector: DetectorKind,
    /// The trust head: the per-frame `risk` that the classification is wrong
    /// ([`super::trust`]). Absent in files written before it existed, and when the familiar
    /// images' true classes were not given; their frames have no `risk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trust: Option<TrustHead>,
    /// Provenance and validation numbers.
    pub fitted_on: FitSummary,
}

impl Calibration {
    /// Reads and validates a calibration file.
    pub fn load(path: &Path) -> Result<Self, CalibError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| CalibError::Io { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|e| match e {
            CalibError::Parse { why, .. } => CalibError::Parse { path: path.display().to_string(), why },
            other => other,
        })
    }

    /// Parses and validates calibration TOML.
    pub fn parse(text: &str) -> Result<Self, CalibError> {
        let c: Calibration =
            toml::from_str(text).map_err(|e| CalibError::Parse { path: String::new(), why: e.to_string() })?;
        if c.format != FORMAT {
            return Err(CalibError::Parse {
                path: String::new(),
                why: format!("format {} is not supported (expected {FORMAT})", c.format),
            });
        }
        c.validate()?;
        Ok(c)
    }

    /// Writes the calibration as TOML.
    pub fn save(&self, path: &Path) -> Result<(), CalibError> {
        let text = toml::to_string(self)
            .map_err(|e| CalibError::Parse { path: path.display().to_string(), why: e.to_string() })?;
        std::fs::write(path, text).map_err(|source| CalibError::Io { path: path.display().to_string(), source })
    }

    /// Checks the threshold (finite: a NaN threshold compares false with every score and
    /// +inf is never exceeded, so either would silently disable alerting) and the detector's
    /// internal consistency.
    pub fn validate(&self) -> Result<(), CalibError> {
        if !self.threshold.is_finite() {
            return Err(CalibError::Parse {
                path: String::new(),
                why: format!(
                    "threshold = {} must be a finite number (it would disable alerting); recalibrate with \
                     `gradwatch calibrate` or set [model] threshold in the config",
                    self.threshold
                ),
            });
        }
        let n = self.model.features.len();
        let dim = match &self.detector {
            DetectorKind::Mlp { normalize, mlp } => {
                normalize.validate()?;
                mlp.validate()?;
                if mlp.inputs() != normalize.dim() {
                    return Err(DetectorError::DimensionMismatch {
                        what: "mlp",
                        expected: normalize.dim(),
                        got: mlp.inputs(),
                    }
                    .into());
                }
                normalize.dim()
            }
            DetectorKind::OneClass { normalize, gaussian } => {
                normalize.validate()?;
                gaussian.validate()?;
                normalize.dim()
            }
            DetectorKind::Ensemble(e) => {
                e.validate()?;
                e.dim()
            }
        };
        if dim != n {
            return Err(DetectorError::DimensionMismatch { what: "calibration", expected: n, got: dim }.into());
        }
        if let Some(t) = &self.trust {
            t.validate()?;
            if t.ensemble.dim() != n {
                return Err(DetectorError::DimensionMismatch {
                    what: "trust head",
                    expected: n,
                    got: t.ensemble.dim(),
                }
                .into());
            }
        }
        Ok(())
    }

    /// Refuses a calibration made for another feature preset, model file or feature list.
    pub fn check_compiled(&self, sha256: &str, features: &[String], preset: &str) -> Result<(), CalibError> {
        self.check_preset(preset)?;
        self.check_model(sha256, features)
    }

    /// Refuses a calibration fitted for another feature preset than `preset`.
    pub fn check_preset(&self, preset: &str) -> Result<(), CalibError> {
        if self.model.preset != preset {
            return Err(CalibError::PresetMismatch {
                calibrated: self.model.preset.clone(),
                wanted: preset.to_string(),
            });
        }
        Ok(())
    }

    /// Refuses a calibration made for another model file or feature list.
    pub fn check_model(&self, sha256: &str, features: &[String]) -> Result<(), CalibError> {
        if !self.model.sha256.eq_ignore_ascii_case(sha256) {
            return Err(CalibError::ModelMismatch { expected: self.model.sha256.clone(), actual: sha256.to_string() });
        }
        if self.model.features != features {
            return Err(CalibError::FeatureMismatch {
                why: format!("{} calibrated vs {} compiled", self.model.features.len(), features.len()),
            });
        }
        Ok(())
    }

    /// Whether the detector or the trust head reads the image-quality measures
    /// ([`crate::quality::measure`] of the image as the model sees it): callers measure frames
    /// only then.
    pub fn uses_quality(&self) -> bool {
        matches!(&self.detector, DetectorKind::Ensemble(e) if e.uses_quality())
            || self.trust.as_ref().is_some_and(|t| t.ensemble.uses_quality())
    }

    /// Scores one frame from its gradient features, logits and (when the detector uses them)
    /// image-quality measures; higher is more unfamiliar. The `mlp` and `one_class` detectors
    /// read the features only. Wrong lengths, missing measures and non-finite inputs score
    /// +inf (most unfamiliar); never panics.
    pub fn score_row(&self, frame: FrameInputs<'_>) -> f32 {
        let s = match &self.detector {
            DetectorKind::Mlp { normalize, mlp } => normalize.transform_row(frame.features).map(|z| mlp.logit_row(&z)),
            DetectorKind::OneClass { normalize, gaussian } => {
                normalize.transform_row(frame.features).map(|z| gaussian.score_row(&z))
            }
            DetectorKind::Ensemble(e) => Ok(e.logit_row(frame)),
        };
        match s {
            Ok(v) if !v.is_nan() => v,
            _ => f32::INFINITY,
        }
    }

    /// Scores a batch: `features` `[N, P]`, `logits` `[N, C]` and `quality` `[N, Q]`,
    /// row-aligned (a frame without a logits or quality row gets an empty one, which scores
    /// +inf where they are used).
    pub fn score(&self, features: &Array2<f32>, logits: &Array2<f32>, quality: Option<&Array2<f32>>) -> Vec<f32> {
        features
            .outer_iter()
            .enumerate()
            .map(|(i, r)| {
                let z = if i < logits.nrows() { logits.row(i).to_vec() } else { Vec::new() };
                let q = quality.filter(|q| i < q.nrows()).map(|q| q.row(i).to_vec());
                self.score_row(FrameInputs::new(&r.to_vec(), &z).with_quality(q.as_deref()))
            })
            .collect()
    }

    /// The trust head's `risk` of one frame in `[0, 1]` (the probability that its
    /// classification is wrong); `None` without a trust head. Wrong lengths, missing measures
    /// and non-finite inputs give 1.0 (distrust what cannot be scored); never panics.
    pub fn risk_row(&self, frame: FrameInputs<'_>) -> Option<f32> {
        let t = self.trust.as_ref()?;
        let r = t.risk_row(frame);
        Some(if r.is_nan() { 1.0 } else { r })
    }

    /// Whether a score raises the alarm (NaN does).
    pub fn is_unfamiliar(&self, score: f32) -> bool {
        score.is_nan() || score > self.threshold
    }
}

#[cfg(test)]
mod tests {

    /// The shipped `fast` calibration compiles the `fast` graph at the model's size; a file
    /// naming a preset or loss that does not exist is refused naming the field.
    #[test]
    fn a_calibration_says_how_its_graph_is_compiled() {
        let c = super::Calibration::load(std::path::Path::new("models/gtsrb-resnet18.fast.calib.toml")).unwrap();
        let o = c.model.compile_options().unwrap();
        let fast = crate::grad::CompileOptions::preset(crate::grad::Preset::Fast);
        assert_eq!(format!("{o:?}"), format!("{fast:?}"));
        let mut m = c.model.clone();
        m.preset = "fastest".into();
        assert!(m.compile_options().unwrap_err().starts_with("preset: "));
        m.loss = "l2".into();
        assert!(m.compile_options().unwrap_err().starts_with("loss: "));
    }
    use super::tail_scale;

    #[test]
    fn tail_scale_is_the_mean_excess_of_the_top_tenth() {
        // 0..99 shuffled, plus NaN: u = 89, the top ten are 90..99, excesses 1..10, mean 5.5.
        let mut v: Vec<f32> = (0..100).map(|i| ((i * 37) % 100) as f32).collect();
        v.push(f32::NAN);
        assert!((tail_scale(&v).unwrap() - 5.5).abs() < 1e-9);
        assert!(tail_scale(&v[..19]).is_none());
    }
}
