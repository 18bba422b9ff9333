//! Fake parts for pipeline tests on the simulated clock: a classifier whose one feature is the
//! frame's brightness, the calibration that scores it, and a quick k-of-n policy.

use std::collections::BTreeMap;
use std::time::Duration;

use gradwatch::alert::{AlertConfig, AlertPolicy};
use gradwatch::detector::calibration::{CalibModel, DataSummary, FitSummary, FORMAT};
use gradwatch::detector::{Calibration, DetectorKind, Gaussian, LogStandardizer};
use gradwatch::frame::RgbImage;
use gradwatch::pipeline::{Classifier, ClassifierOutput};
use ndarray::Array2;

/// Feature = mean brightness in (0, 1]; logits favour class 1 for bright frames. Sleeps
/// `delay` per batch; panics once `panic_after` batches ran.
pub struct Brightness {
    pub panic_after: Option<usize>,
    pub delay: Duration,
    pub names: Vec<String>,
}

impl Brightness {
    pub fn new() -> Self {
        Brightness { panic_after: None, delay: Duration::ZERO, names: vec!["a".into(), "b".into()] }
    }
}

impl Classifier for Brightness {
    fn model_name(&self) -> &str {
        "fake"
    }
    fn model_sha256(&self) -> &str {
        "00"
    }
    fn class_names(&self) -> &[String] {
        &self.names
    }
    fn run(&mut self, images: &[&RgbImage]) -> Result<ClassifierOutput, String> {
        if let Some(n) = self.panic_after.as_mut() {
            if *n == 0 {
                panic!("fake model exploded");
            }
            *n -= 1;
        }
        std::thread::sleep(self.delay);
        let n = images.len();
        let mut f = Array2::zeros((n, 1));
        let mut l = Array2::zeros((n, 2));
        for (i, img) in images.iter().enumerate() {
            let mean = img.data.iter().map(|&v| v as f32).sum::<f32>() / img.data.len() as f32 / 255.0;
            f[[i, 0]] = mean.max(1e-3);
            l[[i, 1]] = mean * 4.0;
        }
        Ok(ClassifierOutput { logits: l, features: f })
    }
}

/// Scores [`Brightness`] for `preset`: ((ln x - ln 0.5) / 0.1)^2, about 0 for grey 128 and 48
/// for white; threshold 9.
pub fn calibration(preset: &str) -> Calibration {
    Calibration {
        format: FORMAT,
        model: CalibModel {
            name: "fake".into(),
            sha256: "00".into(),
            loss: "bce-logits".into(),
            features: vec!["f".into()],
            preset: preset.into(),
            preprocessing: None,
        },
        threshold: 9.0,
        target_false_alarm: 0.01,
        clean_tail_scale: None,
        detector: DetectorKind::OneClass {
            normalize: LogStandardizer { eps: 1e-12, mean: vec![0.5f64.ln()], std: vec![0.1] },
            gaussian: Gaussian { means: vec![vec![0.0]], precision: vec![vec![1.0]] },
        },
        trust: None,
        fitted_on: FitSummary {
            familiar: DataSummary { name: "grey".into(), count: 1 },
            unfamiliar: vec![],
            validation_false_alarm_rate: 0.0,
            validation_true_positive_rate: 1.0,
            validation_auroc: 1.0,
            command: "test".into(),
        },
    }
}

/// k-of-n, 3 of the last 4 frames, no minimum duration, no updates.
pub fn quick_alerts() -> AlertConfig {
    AlertConfig {
        default: AlertPolicy {
            window: 4,
            raise: 3,
            clear: 1,
            min_duration_ms: 0,
            update_interval_ms: 0,
            ..AlertPolicy::default()
        },
        stream: BTreeMap::new(),
        ..AlertConfig::default()
    }
}
