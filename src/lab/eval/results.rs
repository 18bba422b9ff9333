//! What an evaluation run measured: plain data ([`Results`] and its rows), produced by
//! [`super::protocol::run`] and rendered by [`super::report`]; neither of those imports the other.

use crate::detector::roc::RocSummary;

/// The pooled pair: the familiar images against every corrupted set at once.
pub const POOLED: &str = "all";

/// Methods in table order: (key, display name).
pub const METHODS: [(&str, &str); 10] = [
    ("msp", "MSP"),
    ("odin", "ODIN"),
    ("mahalanobis", "Mahalanobis"),
    ("energy", "Energy"),
    ("gradnorm", "GradNorm"),
    ("knn", "KNN"),
    ("vim", "ViM"),
    ("fdbd", "fDBD"),
    ("gradients", "ours (gradients)"),
    ("risk", "ours (risk)"),
];

/// Methods of the risk tables: [`METHODS`] and our one detector trained on every corruption
/// type at once (the pooled pair's, as the committed calibration is trained).
pub const RISK_METHODS: [(&str, &str); 14] = [
    ("msp", "MSP"),
    ("odin", "ODIN"),
    ("mahalanobis", "Mahalanobis"),
    ("energy", "Energy"),
    ("gradnorm", "GradNorm"),
    ("knn", "KNN"),
    ("vim", "ViM"),
    ("fdbd", "fDBD"),
    ("gradients", "paper, per cell"),
    ("gradients_pooled", "paper, one detector"),
    ("gradients_lofo", "paper, family unseen"),
    ("risk", "risk, per cell"),
    ("risk_pooled", "risk, one detector"),
    ("risk_lofo", "risk, family unseen"),
];

/// One (type, level) cell of the risk analysis.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct RiskCell {
    /// Corruption type.
    pub kind: String,
    /// Its family.
    pub family: String,
    /// Level.
    pub level: u8,
    /// Images of the set (the whole set, not only its test split).
    pub n: usize,
    /// Of which the classifier gets right.
    pub correct: usize,
    /// Per method key ([`RISK_METHODS`]): test-split AUROC against the familiar images and its
    /// standard error.
    pub auroc: std::collections::BTreeMap<String, (f64, f64)>,
}

impl RiskCell {
    /// The classifier's accuracy on the set.
    pub fn accuracy(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.correct as f64 / self.n as f64
        }
    }

    /// Whether the classifier's accuracy is below [`crate::lab::HARMFUL_ACCURACY`].
    pub fn harmful(&self) -> bool {
        crate::lab::harmful(self.accuracy())
    }
}

/// Misclassification detection by one score, pooled over the familiar and corrupted test images.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MisclassRow {
    /// Method key.
    pub method: String,
    /// AUROC of the score for "the top class is wrong".
    pub auroc: f64,
    /// Its standard error (Hanley & McNeil).
    pub auroc_se: f64,
    /// Area under the risk-coverage curve (lower is better).
    pub aurc: f64,
    /// Its bootstrap standard error (200 resamples).
    pub aurc_se: f64,
    /// AURC minus the oracle's.
    pub excess_aurc: f64,
    /// Images pooled.
    pub n: usize,
    /// Of which misclassified.
    pub n_wrong: usize,
}

/// One cell of the leave-one-family-out experiment.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FamilyRow {
    /// The family left out of training.
    pub family: String,
    /// A type of that family.
    pub kind: String,
    /// Its level.
    pub level: u8,
    /// AUROC of the paper's detector trained on the other families only.
    pub auroc: f64,
    /// AUROC of the risk detector (the calibration's default) trained on the other families only.
    pub risk_auroc: f64,
    /// AUROC of the detector trained on this very type and level.
    pub specific_auroc: f64,
    /// AUROC of the detector trained on every type (this family included).
    pub pooled_auroc: f64,
}

/// The paper's Table 2, CURE-TSR rows: AUROC (%) "Mahalanobis / gradients" at levels 1-5
/// (Lee & AlRegib, ICIP 2020), keyed by our corruption names.
pub const PAPER_CURE_TSR: [(&str, [(f64, f64); 5]); 8] = [
    ("noise", [(25.46, 50.20), (47.54, 63.87), (47.32, 81.20), (66.19, 91.16), (83.14, 94.81)]),
    ("lens_blur", [(48.06, 72.63), (71.61, 87.58), (86.59, 92.56), (92.19, 93.90), (94.90, 95.65)]),
    ("gaussian_blur", [(66.44, 83.07), (77.67, 86.94), (93.15, 94.35), (80.78, 94.51), (97.36, 96.53)]),
    ("dirty_lens", [(29.78, 51.21), (29.28, 59.10), (46.60, 82.10), (73.36, 91.87), (98.50, 98.70)]),
    ("exposure", [(74.90, 88.13), (99.96, 96.78), (99.99, 99.26), (100.0, 99.80), (100.0, 99.90)]),
    ("snow", [(28.11, 61.34), (61.28, 80.52), (89.89, 91.30), (99.34, 96.13), (99.98, 97.66)]),
    ("haze", [(66.51, 95.83), (97.86, 99.50), (100.0, 99.95), (100.0, 99.87), (100.0, 99.88)]),
    ("decolor", [(48.37, 62.36), (60.55, 81.30), (71.73, 89.93), (87.29, 95.42), (89.68, 96.91)]),
];

/// The paper's CURE-TSR AUROC (%) `(Mahalanobis, gradients)` for a corruption and level.
pub fn paper_cure_tsr(kind: &str, level: u8) -> Option<(f64, f64)> {
    let (_, v) = PAPER_CURE_TSR.iter().find(|(k, _)| *k == kind)?;
    v.get(usize::from(level).checked_sub(1)?).copied()
}

/// One (pair, method) result on the test split.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Row {
    /// `cifar10`, a corruption pooled over levels (`haze`), or one level (`haze/3`).
    pub pair: String,
    /// Method key (see [`METHODS`]).
    pub method: String,
    /// The five metrics (fractions).
    pub metrics: RocSummary,
    /// Familiar test images.
    pub n_familiar: usize,
    /// Unfamiliar test images.
    pub n_unfamiliar: usize,
}

/// One cell of the generalisation experiment.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GenRow {
    /// The corruption left out of training.
    pub held_out: String,
    /// Its level tested.
    pub level: u8,
    /// AUROC of the detector trained on the other types.
    pub auroc: f64,
    /// AUROC of the detector trained on this very type and level (for reference).
    pub specific_auroc: f64,
}

/// ODIN's hyper-parameters chosen on validation data for a pair.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct OdinChoice {
    /// The pair.
    pub pair: String,
    /// Temperature.
    pub temperature: f32,
    /// Perturbation (image units).
    pub epsilon: f32,
    /// Validation AUROC at that choice.
    pub val_auroc: f64,
}

/// Everything an evaluation run measured.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Results {
    /// Model name.
    pub model_name: String,
    /// sha256 of the model file.
    pub model_sha256: String,
    /// The command line.
    pub command: String,
    /// Images per set.
    pub per_set: usize,
    /// The generalising sets the pooled and held-out-family risk detectors also trained on
    /// (`--augment`: `mixed`, `lighting`, `mixed,lighting`; `none` or empty: none).
    pub augment: String,
    /// Whether the pooled and held-out detectors trained on one corrupted copy per image,
    /// round-robin as a calibration draws them (`--one-copy`), not every type at every level.
    pub one_copy: bool,
    /// Seed.
    pub seed: u64,
    /// The classifier's accuracy on the familiar images, when labels are known.
    pub familiar_accuracy: Option<f64>,
    /// What labelled the Mahalanobis class means.
    pub mahalanobis_labels: String,
    /// Every set and its size.
    pub sets: Vec<(String, usize)>,
    /// Every (pair, method) result.
    pub rows: Vec<Row>,
    /// The held-out-type experiment.
    pub generalisation: Vec<GenRow>,
    /// The held-out-family experiment.
    pub family_out: Vec<FamilyRow>,
    /// Classifier accuracy and detection AUROC per (type, level).
    pub risk_cells: Vec<RiskCell>,
    /// Misclassification detection per score.
    pub misclassification: Vec<MisclassRow>,
    /// Risk-coverage curves per score (and `oracle`).
    pub risk_curves: Vec<(String, Vec<(f64, f64)>)>,
    /// KNN's k.
    pub knn_k: usize,
    /// ViM's principal dimension (`None`: ViM left out).
    pub vim_dim: Option<usize>,
    /// ODIN choices.
    pub odin: Vec<OdinChoice>,
    /// Wall-clock seconds per stage.
    pub timings: Vec<(String, f64)>,
    /// Gradient-feature throughput, images per second (NaN when everything was cached).
    pub features_per_sec: f64,
    /// ROC curves of GTSRB vs CIFAR-10 per method.
    pub roc: Vec<(String, Vec<(f64, f64)>)>,
    /// Mean squared gradient norm per parameter tensor, per set (the paper's Fig. 3).
    pub grad_profile: Vec<(String, Vec<f64>)>,
    /// Parameter tensor names.
    pub feature_names: Vec<String>,
    /// ODIN temperature grid (familiar set and CIFAR-10).
    pub odin_temperatures: Vec<f32>,
    /// ODIN temperatures computed for the corrupted sets.
    pub odin_corruption_temperatures: Vec<f32>,
    /// ODIN perturbation grid.
    pub odin_epsilons: Vec<f32>,
    /// The trust question (issue #24), when the familiar images have true classes.
    #[serde(skip)]
    pub trust: Option<super::trust::TrustResults>,
}

impl Results {
    /// The result of `method` on `pair`.
    pub fn get(&self, pair: &str, method: &str) -> Option<&RocSummary> {
        self.rows.iter().find(|r| r.pair == pair && r.method == method).map(|r| &r.metrics)
    }

    /// Pairs in first-seen order.
    pub fn pairs(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for r in &self.rows {
            if !v.contains(&r.pair) {
                v.push(r.pair.clone());
            }
        }
        v
    }
}
