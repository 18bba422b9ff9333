//! The evaluation report: `results.md` (the paper's tables next to ours), `results.csv`
//! (every number) and SVG figures.

use std::fmt::Write as _;
use std::path::Path;

use super::plot::{self, PlotSpec, Series};
use super::EvalError;
use crate::corrupt::MAX_LEVEL;
use crate::detector::roc::{auroc_standard_error, RocSummary};

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

/// Classifier accuracy below which a (type, level) cell is *harmful*: there the detector must
/// fire.
pub const HARMFUL_ACCURACY: f64 = 0.8;

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

    /// Whether the classifier's accuracy is below [`HARMFUL_ACCURACY`].
    pub fn harmful(&self) -> bool {
        self.accuracy() < HARMFUL_ACCURACY
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

fn pct(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{:.2}", 100.0 * v)
    }
}

fn pair_title(p: &str) -> String {
    if p == "cifar10" {
        "GTSRB vs CIFAR-10".into()
    } else if p == super::protocol::POOLED {
        "GTSRB vs every corruption (pooled, evaluated levels)".into()
    } else if p.contains('/') {
        format!("GTSRB vs {p}")
    } else {
        format!("GTSRB vs {p} (evaluated levels pooled)")
    }
}

/// `results.md`.
pub fn markdown(r: &Results) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "# Evaluation results\n");
    let _ = writeln!(
        o,
        "Generated by `scripts/eval.sh` (do not edit by hand). Protocol of Lee & AlRegib, \"Gradients as a measure \
         of uncertainty in neural networks\" (ICIP 2020), on GTSRB with CURE-TSR-style synthetic corruptions; see \
         the notes at the end for how it differs from the paper.\n"
    );
    let _ = writeln!(o, "- command: `{}`", r.command);
    let _ = writeln!(o, "- model: {} (sha256 `{}`)", r.model_name, r.model_sha256);
    if let Some(a) = r.familiar_accuracy {
        let _ = writeln!(o, "- classifier accuracy on the familiar images: {:.2}%", 100.0 * a);
    }
    let _ = writeln!(
        o,
        "- images per set: {} ({} sets, {} images in all); seed {}; 40/40/20 train/validation/test split per set",
        r.per_set,
        r.sets.len(),
        r.sets.iter().map(|s| s.1).sum::<usize>(),
        r.seed
    );
    if r.features_per_sec.is_finite() {
        let _ = writeln!(o, "- gradient-feature throughput: {:.1} images/s", r.features_per_sec);
    }
    let _ = writeln!(
        o,
        "- timings: {}",
        r.timings.iter().map(|(k, v)| format!("{k} {v:.1} s")).collect::<Vec<_>>().join(", ")
    );

    // Table 1.
    let _ = writeln!(o, "\n## Table 1: detection of unfamiliar inputs (test split, %)\n");
    let names: Vec<&str> = METHODS.iter().map(|m| m.1).collect();
    let _ = writeln!(
        o,
        "Each cell: {}. Detection accuracy, AUROC, AUPR-in and AUPR-out: higher is better; FPR at 95% TPR: lower \
         is better. Corruption rows pool the evaluated levels (one detector per row).\n",
        names.join(" / ")
    );
    let _ = writeln!(
        o,
        "| familiar vs unfamiliar | n (fam/unf) | detection acc. | AUROC | AUPR-in | AUPR-out | FPR at 95% TPR |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|");
    for p in r.pairs().iter().filter(|p| !p.contains('/')) {
        let cell = |f: fn(&RocSummary) -> f64| {
            METHODS.iter().map(|(k, _)| r.get(p, k).map_or("—".into(), |m| pct(f(m)))).collect::<Vec<_>>().join(" / ")
        };
        let n = r.rows.iter().find(|x| &x.pair == p).map_or((0, 0), |x| (x.n_familiar, x.n_unfamiliar));
        let _ = writeln!(
            o,
            "| {} | {}/{} | {} | {} | {} | {} | {} |",
            pair_title(p),
            n.0,
            n.1,
            cell(|m| m.detection_accuracy),
            cell(|m| m.auroc),
            cell(|m| m.aupr_in),
            cell(|m| m.aupr_out),
            cell(|m| m.fpr_at_95_tpr)
        );
    }
    // Best method per pair, by AUROC: the quick read of Table 1.
    let _ = writeln!(o, "\nBest AUROC per row:\n");
    for p in r.pairs().iter().filter(|p| !p.contains('/')) {
        let best = METHODS
            .iter()
            .filter_map(|(k, n)| r.get(p, k).map(|m| (n, m.auroc)))
            .filter(|(_, a)| !a.is_nan())
            .max_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((n, a)) = best {
            let _ = writeln!(o, "- {}: {n} ({})", pair_title(p), pct(a));
        }
    }

    // Table 2.
    // Only with corruption pairs (`--corruptions none` evaluates CIFAR-10 alone).
    let mut t2 = String::new();
    let _ = writeln!(t2, "\n## Table 2: corrupted-input detection by type and level, AUROC (%)\n");
    let _ = writeln!(
        t2,
        "Ours: GTSRB with our CURE-TSR-style corruptions, one detector per (type, level). Paper: its CURE-TSR \
         rows (real CURE-TSR data, which we do not have), \"Mahalanobis / gradients\". The last two columns \
         compare our gradient detector with the paper's gradient number and with our Mahalanobis number.\n"
    );
    let _ = writeln!(t2, "| corruption | level | ours: Mahalanobis / gradients | paper: Mahalanobis / gradients | ours >= paper | ours >= Mahalanobis |");
    let _ = writeln!(t2, "|---|---|---|---|---|---|");
    let mut kinds: Vec<String> = Vec::new();
    for p in r.pairs() {
        if let Some((k, _)) = p.split_once('/') {
            if !kinds.iter().any(|x| x == k) {
                kinds.push(k.to_string());
            }
        }
    }
    let (mut ge_paper, mut n_paper, mut ge_maha, mut n_maha) = (0, 0, 0, 0);
    for k in &kinds {
        for level in 1..=MAX_LEVEL {
            let p = format!("{k}/{level}");
            let (Some(m), Some(g)) = (r.get(&p, "mahalanobis"), r.get(&p, "gradients")) else { continue };
            let paper = paper_cure_tsr(k, level);
            let vs_paper = match paper {
                Some((_, pg)) => {
                    n_paper += 1;
                    let ok = 100.0 * g.auroc >= pg - 1e-9;
                    ge_paper += usize::from(ok);
                    if ok {
                        "yes"
                    } else {
                        "no"
                    }
                }
                None => "—",
            };
            n_maha += 1;
            let ok_m = g.auroc >= m.auroc;
            ge_maha += usize::from(ok_m);
            let _ = writeln!(
                t2,
                "| {k} | {level} | {} / {} | {} | {vs_paper} | {} |",
                pct(m.auroc),
                pct(g.auroc),
                paper.map_or("— (not in the paper)".into(), |(a, b)| format!("{a:.2} / {b:.2}")),
                if ok_m { "yes" } else { "no" }
            );
        }
    }
    let _ = writeln!(
        t2,
        "\nOurs >= the paper's gradient AUROC in {ge_paper} of {n_paper} cells; ours >= Mahalanobis in {ge_maha} of {n_maha}."
    );
    if n_maha > 0 {
        o.push_str(&t2);
    }

    // Table 3.
    if !r.generalisation.is_empty() {
        let _ = writeln!(o, "\n## Table 3: generalisation to an unseen corruption type, AUROC (%)\n");
        let _ = writeln!(
            o,
            "One detector per row, trained on every other corruption type (its levels pooled) and tested on the \
             held-out type; in brackets the detector trained on that very type and level (Table 2).\n"
        );
        let levels: Vec<u8> = {
            let mut l: Vec<u8> = r.generalisation.iter().map(|g| g.level).collect();
            l.sort_unstable();
            l.dedup();
            l
        };
        let _ = writeln!(
            o,
            "| held-out type | {} |",
            levels.iter().map(|l| format!("L{l}")).collect::<Vec<_>>().join(" | ")
        );
        let _ = writeln!(o, "|---|{}", "---|".repeat(levels.len()));
        let mut held: Vec<&str> = Vec::new();
        for g in &r.generalisation {
            if !held.contains(&g.held_out.as_str()) {
                held.push(&g.held_out);
            }
        }
        for h in held {
            let cells: Vec<String> = levels
                .iter()
                .map(|l| {
                    r.generalisation
                        .iter()
                        .find(|g| g.held_out == h && g.level == *l)
                        .map_or("—".into(), |g| format!("{} ({})", pct(g.auroc), pct(g.specific_auroc)))
                })
                .collect();
            let _ = writeln!(o, "| {h} | {} |", cells.join(" | "));
        }
    }

    family_out_section(&mut o, r);
    risk_sections(&mut o, r);
    if let Some(t) = &r.trust {
        super::trust_report::section(&mut o, t);
    }

    targets(&mut o, r, (ge_paper, n_paper), (ge_maha, n_maha));

    // ODIN choices.
    if !r.odin.is_empty() {
        let _ = writeln!(o, "\n## ODIN hyper-parameters chosen on the validation split\n");
        let _ = writeln!(
            o,
            "Grid: T in {:?} (corruption pairs: T in {:?}, to bound the cost), eps in {:?} (image units). \
             Pooled rows and CIFAR-10:\n",
            r.odin_temperatures, r.odin_corruption_temperatures, r.odin_epsilons
        );
        let _ = writeln!(o, "| pair | T | eps | validation AUROC |");
        let _ = writeln!(o, "|---|---|---|---|");
        for c in r.odin.iter().filter(|c| !c.pair.contains('/')) {
            let _ = writeln!(o, "| {} | {} | {} | {} |", c.pair, c.temperature, c.epsilon, pct(c.val_auroc));
        }
    }

    let _ = writeln!(o, "\n## Figures\n");
    let _ = writeln!(o, "![ROC curves, GTSRB vs CIFAR-10](figures/roc-cifar10.svg)\n");
    let _ = writeln!(o, "![Mean squared gradient norm per parameter tensor](figures/gradient-profile.svg)\n");
    if !r.risk_curves.is_empty() {
        let _ = writeln!(o, "![Risk-coverage curves](figures/risk-coverage.svg)\n");
    }
    if r.trust.is_some() {
        let _ = writeln!(o, "![Accuracy of the frames kept](figures/trust-coverage.svg)\n");
        let _ = writeln!(o, "![Reliability of risk](figures/trust-reliability.svg)\n");
    }

    let _ = writeln!(o, "## Notes\n");
    let _ = writeln!(
        o,
        "- Familiar images: GTSRB test images (subsampled); unfamiliar: CIFAR-10 test images and synthetic \
         corruptions of the same familiar images (per-image seeds). The paper's corrupted-input experiments use \
         CURE-TSR, whose challenge images we do not have; its numbers are quoted, not reproduced.\n\
         - Splits: one seeded 40/40/20 split of the familiar images, shared by their corrupted copies (the clean \
         and corrupted versions of an image always fall in the same part); CIFAR-10 has its own split.\n\
         - Ours: log-standardised squared gradient norms of every parameter tensor (BCE on the logits against the \
         all-ones confounding label), two-layer MLP (familiar 0 / unfamiliar 1), early-stopped on the validation \
         split; scores are the MLP logits.\n\
         - Baselines use the same test split and need no unfamiliar training data except ODIN's (T, eps), chosen \
         by validation AUROC per pair. Mahalanobis: class means and tied covariance of the penultimate \
         activations of the familiar training split, labelled by {}, shrinkage 1e-3, no input pre-processing \
         or feature ensemble (\"vanilla\"). Energy: T = 1. GradNorm: L1 norm of the last layer's weight and bias \
         gradient of KL(uniform || softmax). KNN (Sun et al. 2022): distance to the k-th nearest L2-normalised \
         penultimate vector of the familiar training split, k = {}. ViM (Wang et al. 2022): residual of the \
         penultimate features (shifted by -W^+ b) outside their top-{} principal subspace on the familiar \
         training split, scaled by alpha = sum of max logits / sum of residuals, minus the energy.\n\
         - Metrics: detection accuracy, AUROC, AUPR-in (familiar positive), AUPR-out (unfamiliar positive), FPR \
         at 95% TPR (familiar positive), computed exactly over all thresholds (src/eval/metrics.rs).",
        r.mahalanobis_labels,
        r.knn_k,
        r.vim_dim.map_or("(left out)".to_string(), |d| d.to_string())
    );
    o
}

fn method_name(key: &str) -> &str {
    RISK_METHODS.iter().find(|(k, _)| *k == key).map_or(key, |(_, n)| n)
}

/// Table 4: leave one family out.
fn family_out_section(o: &mut String, r: &Results) {
    if r.family_out.is_empty() {
        return;
    }
    let _ = writeln!(o, "\n## Table 4: generalisation to an unseen family of degradations, AUROC (%)\n");
    let _ = writeln!(
        o,
        "One detector per family, trained on every type of the *other* families (it never \
         sees any type of the held-out family; levels pooled) and tested on each type of the held-out family. Each cell: \
         the paper's detector held out / the risk detector (the calibration's default) held out / the paper's detector \
         trained on that very type and level / the paper's detector trained on every type.\n"
    );
    let _ = writeln!(
        o,
        "| held-out family | type | {} |",
        (1..=MAX_LEVEL).map(|l| format!("L{l}")).collect::<Vec<_>>().join(" | ")
    );
    let _ = writeln!(o, "|---|---|{}", "---|".repeat(usize::from(MAX_LEVEL)));
    let mut kinds: Vec<(&str, &str)> = Vec::new();
    for f in &r.family_out {
        if !kinds.contains(&(f.family.as_str(), f.kind.as_str())) {
            kinds.push((&f.family, &f.kind));
        }
    }
    for (fam, kind) in &kinds {
        let cells: Vec<String> = (1..=MAX_LEVEL)
            .map(|l| {
                r.family_out.iter().find(|f| f.kind == *kind && f.level == l).map_or("—".into(), |f| {
                    format!(
                        "{} / {} / {} / {}",
                        pct(f.auroc),
                        pct(f.risk_auroc),
                        pct(f.specific_auroc),
                        pct(f.pooled_auroc)
                    )
                })
            })
            .collect();
        let _ = writeln!(o, "| {fam} | {kind} | {} |", cells.join(" | "));
    }
    let _ = writeln!(
        o,
        "\nMean over levels 3-5 per held-out family (paper held out / risk held out / per cell / one detector):\n"
    );
    let mut fams: Vec<&str> = kinds.iter().map(|k| k.0).collect();
    fams.dedup();
    for fam in fams {
        let v: Vec<&FamilyRow> = r.family_out.iter().filter(|f| f.family == fam && f.level >= 3).collect();
        let mean = |g: fn(&FamilyRow) -> f64| v.iter().map(|f| g(f)).sum::<f64>() / v.len().max(1) as f64;
        let _ = writeln!(
            o,
            "- {fam}: {} / {} / {} / {} ({} cells)",
            pct(mean(|f| f.auroc)),
            pct(mean(|f| f.risk_auroc)),
            pct(mean(|f| f.specific_auroc)),
            pct(mean(|f| f.pooled_auroc)),
            v.len()
        );
    }
}

/// Tables 5-7: accuracy next to detection per cell, harmful cells, misclassification detection.
fn risk_sections(o: &mut String, r: &Results) {
    if !r.risk_cells.is_empty() {
        let present: Vec<(&str, &str)> = RISK_METHODS
            .iter()
            .copied()
            .filter(|(k, _)| r.risk_cells.iter().any(|c| c.auroc.contains_key(*k)))
            .collect();
        let _ = writeln!(o, "\n## Table 5: where the classifier breaks, and who notices (%)\n");
        let _ = writeln!(
            o,
            "Per (type, level): the classifier's top-1 accuracy on the whole set (± binomial standard error) and \
             each detector's AUROC against the familiar test images (test split). **Harmful** cells (accuracy \
             below {:.0} %) are marked; there a detector should fire. \"ours, one detector\" is the single detector \
             trained on every type at once (the pooled pair).\n",
            100.0 * HARMFUL_ACCURACY
        );
        let _ = writeln!(
            o,
            "| type | family | level | accuracy | {} |",
            present.iter().map(|p| p.1).collect::<Vec<_>>().join(" | ")
        );
        let _ = writeln!(o, "|---|---|---|---|{}", "---|".repeat(present.len()));
        for c in &r.risk_cells {
            let acc =
                format!("{} ± {}", pct(c.accuracy()), pct(super::accuracy::accuracy_standard_error(c.accuracy(), c.n)));
            let acc = if c.harmful() { format!("**{acc}**") } else { acc };
            let cells: Vec<String> =
                present.iter().map(|(k, _)| c.auroc.get(*k).map_or("—".into(), |a| pct(a.0))).collect();
            let _ = writeln!(o, "| {} | {} | {} | {acc} | {} |", c.kind, c.family, c.level, cells.join(" | "));
        }
        let harmful: Vec<&RiskCell> = r.risk_cells.iter().filter(|c| c.harmful()).collect();
        let benign: Vec<&RiskCell> = r.risk_cells.iter().filter(|c| !c.harmful()).collect();
        let _ = writeln!(
            o,
            "\n## Table 6: harmful cells (classifier accuracy < {:.0} %), AUROC (%)\n",
            100.0 * HARMFUL_ACCURACY
        );
        let _ = writeln!(
            o,
            "{} of {} cells are harmful. Per detector over the harmful cells: the minimum, the mean ± its standard \
             error (independent cells), and how many reach 90 %. Last column: mean AUROC over the *benign* cells \
             ({}), where firing is a false alarm in all but name.\n",
            harmful.len(),
            r.risk_cells.len(),
            benign.len()
        );
        let _ = writeln!(o, "| detector | min | mean ± se | cells >= 90 % | benign mean |");
        let _ = writeln!(o, "|---|---|---|---|---|");
        for (k, name) in &present {
            let h = CellSummary::of(&harmful, k);
            let ben = CellSummary::of(&benign, k);
            let _ = writeln!(
                o,
                "| {name} | {} | {} ± {} | {} of {} | {} |",
                pct(h.min),
                pct(h.mean),
                pct(h.mean_se),
                h.at_least_90,
                h.n,
                pct(ben.mean)
            );
        }
    }
    if !r.misclassification.is_empty() {
        let m0 = &r.misclassification[0];
        let _ = writeln!(o, "\n## Table 7: misclassification detection and selective classification\n");
        let _ = writeln!(
            o,
            "Pooled over the test split of the familiar images and of every corrupted set ({} images, {} \
             misclassified, error rate {}). AUROC: the score ranks misclassified images above correct ones \
             (± Hanley-McNeil standard error). AURC: area under the risk-coverage curve, keeping the \
             lowest-scoring images first (lower is better; ± bootstrap standard error, 200 resamples); E-AURC: \
             AURC minus the oracle's ({}). ODIN and ours use the pooled pair's choice and detector.\n",
            m0.n,
            m0.n_wrong,
            pct(m0.n_wrong as f64 / m0.n.max(1) as f64),
            pct(m0.aurc - m0.excess_aurc)
        );
        let _ = writeln!(o, "| score | misclassification AUROC | AURC | E-AURC |");
        let _ = writeln!(o, "|---|---|---|---|");
        for m in &r.misclassification {
            let _ = writeln!(
                o,
                "| {} | {} ± {} | {} ± {} | {} |",
                method_name(&m.method),
                pct(m.auroc),
                pct(m.auroc_se),
                pct(m.aurc),
                pct(m.aurc_se),
                pct(m.excess_aurc)
            );
        }
    }
}

/// The targets, each with what was measured and whether it is met; AUROCs of the
/// CIFAR-10 row with their standard error, since a small test split cannot resolve 99.5 %.
fn targets(o: &mut String, r: &Results, vs_paper: (usize, usize), vs_maha: (usize, usize)) {
    let yes_no = |ok: bool| if ok { "yes" } else { "**no**" };
    let _ = writeln!(o, "\n## Targets\n");
    let _ = writeln!(o, "| target | measured | met |");
    let _ = writeln!(o, "|---|---|---|");
    let with_se = |x: &Row| {
        let se = auroc_standard_error(x.metrics.auroc, x.n_familiar, x.n_unfamiliar);
        format!("{} ± {} (test split {}/{})", pct(x.metrics.auroc), pct(se), x.n_familiar, x.n_unfamiliar)
    };
    let find = |pair: &str, m: &str| r.rows.iter().find(|x| x.pair == pair && x.method == m);
    if let Some(ours) = find("cifar10", "gradients") {
        let a = ours.metrics.auroc;
        let _ = writeln!(o, "| GTSRB vs CIFAR-10: AUROC >= 99.5 % | ours {} | {} |", with_se(ours), yes_no(a >= 0.995));
        if let Some((name, b)) = best_baseline(r, "cifar10") {
            let _ = writeln!(
                o,
                "| GTSRB vs CIFAR-10: ours better than every baseline | best baseline {name} {} | {} |",
                with_se(b),
                yes_no(a > b.metrics.auroc)
            );
        }
    }
    risk_targets(o, r);
    if let Some(t) = &r.trust {
        super::trust_report::targets(o, t);
    }
    for (what, (ok, n)) in [("the paper's CURE-TSR gradients AUROC", vs_paper), ("our Mahalanobis", vs_maha)] {
        if n > 0 {
            let _ = writeln!(
                o,
                "| every corruption type and level: ours >= {what} | {ok} of {n} cells (Table 2) | {} |",
                yes_no(ok == n)
            );
        }
    }
    let held: Vec<&GenRow> = r.generalisation.iter().filter(|g| g.level >= 3).collect();
    if !held.is_empty() {
        let ok = held.iter().filter(|g| g.auroc >= 0.9).count();
        let _ = writeln!(
            o,
            "| unseen corruption type, levels 3-5: AUROC >= 90 % | {ok} of {} cells (Table 3) | {} |",
            held.len(),
            yes_no(ok == held.len())
        );
    }
}

/// `results.csv`: `pair,method,metric,value` for every number (fractions), plus the
/// generalisation cells as `holdout:<type>/<level>,gradients,auroc,<v>`.
pub fn csv(r: &Results) -> String {
    let mut o = String::from("pair,method,metric,value\n");
    for row in &r.rows {
        let m = &row.metrics;
        for (k, v) in [
            ("detection_accuracy", m.detection_accuracy),
            ("auroc", m.auroc),
            ("aupr_in", m.aupr_in),
            ("aupr_out", m.aupr_out),
            ("fpr_at_95_tpr", m.fpr_at_95_tpr),
            ("n_familiar", row.n_familiar as f64),
            ("n_unfamiliar", row.n_unfamiliar as f64),
        ] {
            let _ = writeln!(o, "{},{},{k},{v}", row.pair, row.method);
        }
    }
    for g in &r.generalisation {
        let _ = writeln!(o, "holdout:{}/{},gradients,auroc,{}", g.held_out, g.level, g.auroc);
    }
    for f in &r.family_out {
        let _ = writeln!(o, "familyout:{}:{}/{},gradients,auroc,{}", f.family, f.kind, f.level, f.auroc);
        let _ = writeln!(o, "familyout:{}:{}/{},risk,auroc,{}", f.family, f.kind, f.level, f.risk_auroc);
    }
    for c in &r.risk_cells {
        let _ = writeln!(o, "{}/{},classifier,accuracy,{}", c.kind, c.level, c.accuracy());
        let _ = writeln!(
            o,
            "{}/{},gradients_pooled,auroc,{}",
            c.kind,
            c.level,
            c.auroc.get("gradients_pooled").map_or(f64::NAN, |a| a.0)
        );
    }
    for m in &r.misclassification {
        for (k, v) in [("auroc", m.auroc), ("aurc", m.aurc), ("excess_aurc", m.excess_aurc)] {
            let _ = writeln!(o, "misclassification,{},{k},{v}", m.method);
        }
    }
    for c in &r.odin {
        let _ = writeln!(o, "{},odin,temperature,{}", c.pair, c.temperature);
        let _ = writeln!(o, "{},odin,epsilon,{}", c.pair, c.epsilon);
    }
    o
}

/// The ROC figure.
pub fn roc_svg(r: &Results) -> String {
    let series: Vec<Series> = METHODS
        .iter()
        .filter_map(|(k, name)| {
            let (_, pts) = r.roc.iter().find(|(m, _)| m == k)?;
            let auc = r.get("cifar10", k).map_or(f64::NAN, |m| m.auroc);
            Some(Series { label: format!("{name} ({})", pct(auc)), points: thin(pts, 600) })
        })
        .collect();
    plot::line_plot(
        &PlotSpec {
            title: "GTSRB (familiar) vs CIFAR-10 (unfamiliar), test split".into(),
            x_label: "false-positive rate (familiar flagged)".into(),
            y_label: "true-positive rate (unfamiliar flagged)".into(),
            x_range: (0.0, 1.0),
            y_range: Some((0.0, 1.0)),
            log_y: false,
            diagonal: true,
        },
        &series,
    )
}

/// The paper's Fig. 3: mean squared gradient norm per parameter tensor (log scale).
pub fn profile_svg(r: &Results) -> String {
    let series: Vec<Series> = r
        .grad_profile
        .iter()
        .map(|(name, v)| Series {
            label: if name == "familiar" { "GTSRB (familiar)".into() } else { name.clone() },
            points: v.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect(),
        })
        .collect();
    let p = r.grad_profile.first().map_or(1, |s| s.1.len().max(2));
    plot::line_plot(
        &PlotSpec {
            title: "Average squared gradient norm per parameter set".into(),
            x_label: format!("parameter set index (0..{})", p - 1),
            y_label: "mean squared gradient norm (log10)".into(),
            x_range: (0.0, (p - 1) as f64),
            y_range: None,
            log_y: true,
            diagonal: false,
        },
        &series,
    )
}

/// Risk-coverage curves: the error rate of the images kept against the fraction kept.
pub fn risk_coverage_svg(r: &Results) -> String {
    let series: Vec<Series> = r
        .risk_curves
        .iter()
        .map(|(k, pts)| {
            let aurc = r.misclassification.iter().find(|m| &m.method == k).map(|m| m.aurc);
            let label = match aurc {
                Some(a) => format!("{} (AURC {})", method_name(k), pct(a)),
                None => method_name(k).to_string(),
            };
            Series { label, points: thin(pts, 400) }
        })
        .collect();
    let top = r.risk_curves.iter().flat_map(|(_, p)| p.last().map(|x| x.1)).fold(0.0f64, f64::max);
    plot::line_plot(
        &PlotSpec {
            title: "Selective classification: familiar + corrupted test images".into(),
            x_label: "coverage (fraction of images kept, lowest score first)".into(),
            y_label: "risk (error rate of the kept images)".into(),
            x_range: (0.0, 1.0),
            y_range: Some((0.0, (top * 1.2).max(0.01))),
            log_y: false,
            diagonal: false,
        },
        &series,
    )
}

/// Keeps at most `max` points (evenly spaced, always the last).
fn thin(pts: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if pts.len() <= max {
        return pts.to_vec();
    }
    let step = pts.len() as f64 / max as f64;
    let mut v: Vec<(f64, f64)> = (0..max).map(|i| pts[(i as f64 * step) as usize]).collect();
    if let Some(&l) = pts.last() {
        v.push(l);
    }
    v
}

/// Writes `results.md`, `results.csv` and `figures/*.svg` into `out`.
pub fn write(r: &Results, out: &Path) -> Result<(), EvalError> {
    let figs = out.join("figures");
    std::fs::create_dir_all(&figs).map_err(|e| EvalError::file(&figs, e))?;
    let put = |p: &Path, s: String| std::fs::write(p, s).map_err(|e| EvalError::file(p, e));
    put(&out.join("results.md"), markdown(r))?;
    put(&out.join("results.csv"), csv(r))?;
    put(&figs.join("roc-cifar10.svg"), roc_svg(r))?;
    put(&figs.join("gradient-profile.svg"), profile_svg(r))?;
    if !r.risk_curves.is_empty() {
        put(&figs.join("risk-coverage.svg"), risk_coverage_svg(r))?;
    }
    if let Some(t) = &r.trust {
        put(&figs.join("trust-coverage.svg"), super::trust_report::coverage_svg(t))?;
        put(&figs.join("trust-reliability.svg"), super::trust_report::reliability_svg(t))?;
    }
    Ok(())
}

/// The targets of the risk-aware detector (the calibration's default): harmful cells detected
/// by a detector that never saw the cell's family, errors ranked, CIFAR-10 separated.
fn risk_targets(o: &mut String, r: &Results) {
    let yes_no = |ok: bool| if ok { "yes" } else { "**no**" };
    let harmful: Vec<&RiskCell> = r.risk_cells.iter().filter(|c| c.harmful()).collect();
    let h = CellSummary::of(&harmful, "risk_lofo");
    if h.n > 0 {
        let _ = writeln!(
            o,
            "| harmful cells, family unseen (risk): min AUROC >= 90 % | {} over {} cells | {} |",
            pct(h.min),
            h.n,
            yes_no(h.min >= 0.9)
        );
        let _ = writeln!(
            o,
            "| harmful cells, family unseen (risk): mean AUROC >= 95 % | {} ± {} | {} |",
            pct(h.mean),
            pct(h.mean_se),
            yes_no(h.mean >= 0.95)
        );
    }
    if let Some(m) = r.misclassification.iter().find(|m| m.method == "risk_pooled") {
        let _ = writeln!(
            o,
            "| misclassification AUROC (risk, clean + levels {}) >= 90 % | {} ± {} | {} |",
            level_span(r),
            pct(m.auroc),
            pct(m.auroc_se),
            yes_no(m.auroc >= 0.9)
        );
    }
    let find = |m: &str| r.rows.iter().find(|x| x.pair == "cifar10" && x.method == m);
    if let Some(ours) = find("risk") {
        let a = ours.metrics.auroc;
        let best = best_baseline(r, "cifar10").map(|(n, x)| (n, x.metrics.auroc));
        let se = auroc_standard_error(a, ours.n_familiar, ours.n_unfamiliar);
        let _ = writeln!(
            o,
            "| GTSRB vs CIFAR-10 (risk): AUROC >= 99.5 % and >= every baseline | {} ± {}{} | {} |",
            pct(a),
            pct(se),
            best.map_or(String::new(), |(n, b)| format!("; best baseline {n} {}", pct(b))),
            yes_no(a >= 0.995 && best.is_none_or(|(_, b)| a >= b))
        );
    }
}

/// The baseline (every method but ours) with the best AUROC on `pair`.
fn best_baseline<'a>(r: &'a Results, pair: &str) -> Option<(&'static str, &'a Row)> {
    METHODS
        .iter()
        .filter(|(k, _)| *k != "gradients" && *k != "risk")
        .filter_map(|(k, n)| r.rows.iter().find(|x| x.pair == pair && x.method == *k).map(|x| (*n, x)))
        .max_by(|a, b| a.1.metrics.auroc.total_cmp(&b.1.metrics.auroc))
}

/// One detector's AUROC over a group of risk cells.
struct CellSummary {
    /// Cells with a value for the detector.
    n: usize,
    min: f64,
    mean: f64,
    /// Standard error of the mean (independent cells).
    mean_se: f64,
    at_least_90: usize,
}

impl CellSummary {
    fn of(cells: &[&RiskCell], key: &str) -> Self {
        let vals: Vec<(f64, f64)> = cells.iter().filter_map(|c| c.auroc.get(key).copied()).collect();
        let a: Vec<f64> = vals.iter().map(|v| v.0).collect();
        let se: Vec<f64> = vals.iter().map(|v| v.1).collect();
        CellSummary {
            n: a.len(),
            min: a.iter().copied().fold(f64::NAN, f64::min),
            mean: if a.is_empty() { f64::NAN } else { a.iter().sum::<f64>() / a.len() as f64 },
            mean_se: crate::detector::roc::mean_standard_error(&se),
            at_least_90: a.iter().filter(|&&v| v >= 0.9).count(),
        }
    }
}

/// The corruption levels of the report, e.g. "3-5".
fn level_span(r: &Results) -> String {
    let levels: Vec<u8> = r.risk_cells.iter().map(|c| c.level).collect();
    match (levels.iter().min(), levels.iter().max()) {
        (Some(a), Some(b)) if a != b => format!("{a}-{b}"),
        (Some(a), _) => a.to_string(),
        _ => "-".into(),
    }
}
