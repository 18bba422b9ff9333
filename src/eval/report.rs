//! The evaluation report: `results.md` (the paper's tables next to ours), `results.csv`
//! (every number) and SVG figures.

use std::fmt::Write as _;
use std::path::Path;

use super::plot::{self, PlotSpec, Series};
use super::EvalError;
use crate::corrupt::MAX_LEVEL;
use crate::detector::roc::{auroc_standard_error, RocSummary};

/// Methods in table order: (key, display name).
pub const METHODS: [(&str, &str); 6] = [
    ("msp", "MSP"),
    ("odin", "ODIN"),
    ("mahalanobis", "Mahalanobis"),
    ("energy", "Energy"),
    ("gradnorm", "GradNorm"),
    ("gradients", "ours (gradients)"),
];

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
    } else if p.contains('/') {
        format!("GTSRB vs {p}")
    } else {
        format!("GTSRB vs {p} (L1-5)")
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
         is better. Corruption rows pool levels 1-5 (one detector per row).\n",
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
            "One detector per row, trained on every other corruption type (levels 1-5 pooled) and tested on the \
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
         gradient of KL(uniform || softmax).\n\
         - Metrics: detection accuracy, AUROC, AUPR-in (familiar positive), AUPR-out (unfamiliar positive), FPR \
         at 95% TPR (familiar positive), computed exactly over all thresholds (src/eval/metrics.rs).",
        r.mahalanobis_labels
    );
    o
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
        let best = METHODS
            .iter()
            .filter(|(k, _)| *k != "gradients")
            .filter_map(|(k, n)| find("cifar10", k).map(|x| (n, x)))
            .max_by(|a, b| a.1.metrics.auroc.total_cmp(&b.1.metrics.auroc));
        if let Some((name, b)) = best {
            let _ = writeln!(
                o,
                "| GTSRB vs CIFAR-10: ours better than every baseline | best baseline {name} {} | {} |",
                with_se(b),
                yes_no(a > b.metrics.auroc)
            );
        }
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
    Ok(())
}
