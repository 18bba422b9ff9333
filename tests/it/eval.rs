//! Evaluation: splits, baselines on hand-computed logits, ODIN's perturbation direction on a
//! tiny model, feature extraction, and the report writer on a fake result set.

// The shared helpers trip a newer clippy lint; they are not this file's to change.

use crate::common::{ort, tiny_model, Rng};
use gradwatch::corrupt::{parse_corruptions, parse_levels};
use gradwatch::detector::roc::{self as metrics, RocSummary};
use gradwatch::detector::split::{self, split_40_40_20};
use gradwatch::frame::RgbImage;
use gradwatch::grad::{self, CompileOptions, Loss};
use gradwatch::lab::eval::accuracy::{self, AccuracyPlan, Classifier};
use gradwatch::lab::eval::baselines::{self, MahalanobisScorer, OdinGraph};
use gradwatch::lab::eval::feature_baselines::{self as fb, Fdbd, Knn, Vim};
use gradwatch::lab::eval::report;
use gradwatch::lab::eval::results::{self, FamilyRow, GenRow, MisclassRow, OdinChoice, Results, RiskCell, Row};
use gradwatch::model::ModelInfo;
use gradwatch::runtime::extract::{self as features, FeatureSet};

use gradwatch::runtime::{GradSession, ModelSession};
use ndarray::{array, Array2};

fn images(n: usize, seed: u64) -> Vec<RgbImage> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| {
            let data = (0..16 * 16 * 3).map(|_| ((rng.uniform() + 1.0) * 127.5) as u8).collect();
            RgbImage::new(16, 16, data).unwrap()
        })
        .collect()
}

#[test]
fn split_is_deterministic_disjoint_and_40_40_20() {
    let a = split_40_40_20(100, 7);
    assert_eq!(a, split_40_40_20(100, 7));
    assert_eq!((a.train.len(), a.val.len(), a.test.len()), (40, 40, 20));
    let mut all: Vec<usize> = a.train.iter().chain(&a.val).chain(&a.test).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..100).collect::<Vec<_>>());
    assert_ne!(a, split_40_40_20(100, 8));
    // The test part takes the remainder.
    let b = split_40_40_20(7, 0);
    assert_eq!((b.train.len(), b.val.len(), b.test.len()), (2, 2, 3));
    let s = split::subsample(50, 10, 3);
    assert_eq!(s, split::subsample(50, 10, 3));
    assert_eq!(s.len(), 10);
    assert!(s.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(split::subsample(5, 10, 3), vec![0, 1, 2, 3, 4]);
}

#[test]
fn levels_and_corruption_lists_parse() {
    assert_eq!(parse_levels("1-5").unwrap(), vec![1, 2, 3, 4, 5]);
    assert_eq!(parse_levels("3,1").unwrap(), vec![1, 3]);
    assert!(parse_levels("0-2").is_err());
    assert!(parse_levels("4-6").is_err());
    assert_eq!(parse_corruptions("all").unwrap().len(), 35);
    assert_eq!(parse_corruptions("legacy").unwrap().len(), 10);
    assert_eq!(parse_corruptions("broad").unwrap().len(), 25);
    assert_eq!(parse_corruptions("paper").unwrap().len(), 8);
    // Families expand to their members, duplicates dropped, order kept.
    let g = parse_corruptions("haze,weather").unwrap();
    assert_eq!(g.iter().map(|k| k.name()).collect::<Vec<_>>(), ["haze", "snow", "rain", "low_sun"]);
    assert_eq!(parse_corruptions("color").unwrap().len(), 5);
    assert!(parse_corruptions("none").unwrap().is_empty());
    assert!(parse_corruptions("haze,fog").is_err());
}

#[test]
fn msp_energy_gradnorm_on_hand_computed_logits() {
    // z = [0, ln 3]: softmax = [1/4, 3/4], logsumexp = ln 4.
    let z = array![[0.0f32, 3f32.ln()]];
    let h = array![[1.0f32, -2.0]];
    assert!((baselines::msp(z.view())[0] + 0.75).abs() < 1e-6);
    assert!((baselines::energy(z.view(), 1.0)[0] + 4f32.ln()).abs() < 1e-6);
    // T = 2: -2 ln(1 + sqrt 3).
    let want = -2.0 * (1.0 + 3f32.sqrt()).ln();
    assert!((baselines::energy(z.view(), 2.0)[0] - want).abs() < 1e-5);
    // GradNorm: (|1/4 - 1/2| + |3/4 - 1/2|) * (|1| + |-2| + 1 for the bias) = 0.5 * 4.
    assert!((baselines::gradnorm(z.view(), h.view())[0] + 2.0).abs() < 1e-6);
    // Uniform logits: the KL gradient vanishes, GradNorm is 0 (most unfamiliar possible).
    let u = array![[2.0f32, 2.0, 2.0]];
    assert_eq!(baselines::gradnorm(u.view(), array![[5.0f32]].view())[0], 0.0);
    // A confident prediction scores lower (more familiar) than an unsure one, on every baseline.
    let two = array![[10.0f32, 0.0], [0.1, 0.0]];
    let hh = array![[1.0f32], [1.0]];
    for s in
        [baselines::msp(two.view()), baselines::energy(two.view(), 1.0), baselines::gradnorm(two.view(), hh.view())]
    {
        assert!(s[0] < s[1], "{s:?}");
    }
}

#[test]
fn fast_mahalanobis_matches_the_gaussian() {
    let mut rng = Rng::new(3);
    let x = Array2::from_shape_fn((60, 5), |_| rng.uniform());
    let labels: Vec<usize> = (0..60).map(|i| [0, 3, 7][i % 3]).collect();
    let g = baselines::fit_mahalanobis(&x, &labels).unwrap();
    assert_eq!(g.means.len(), 3, "absent classes are left out");
    let fast = MahalanobisScorer::new(&g).unwrap().score(x.view());
    let slow = g.score(&x);
    for (a, b) in fast.iter().zip(&slow) {
        assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
    }
}

#[test]
fn odin_perturbation_raises_the_max_softmax() {
    let rt = ort();
    let model = tiny_model(11);
    let compiled =
        grad::compile(&model, &CompileOptions { loss: Loss::Odin, input_grad: true, ..Default::default() }).unwrap();
    let mut odin = OdinGraph::new(&compiled, &rt).unwrap();
    let (fwd, out) = gradwatch::model::forward_logits_model(&model).unwrap();
    let mut forward = ModelSession::new(&gradwatch::onnx::encode(&fwd), &rt).unwrap();
    let mut rng = Rng::new(5);
    let x = crate::common::input(&mut rng, 6, &[3, 16, 16]);
    for t in [1.0f32, 1000.0] {
        let (z, g) = odin.run(&x, t).unwrap();
        let xp = baselines::odin_perturb(&x, &g, 0.01, [1.0; 3], false).unwrap();
        let zp = forward.run(&[("x", xp.view())]).unwrap().remove(&out).unwrap();
        let zp = zp.into_dimensionality::<ndarray::Ix2>().unwrap();
        let before = baselines::msp_t(z.view(), t);
        let after = baselines::msp_t(zp.view(), t);
        for (b, a) in before.iter().zip(&after) {
            // Scores are -max softmax: lower after the step = the loss went down.
            assert!(a < b, "T={t}: {a} !< {b}");
        }
        // eps = 0 leaves the input alone.
        assert_eq!(baselines::odin_perturb(&x, &g, 0.0, [1.0; 3], false).unwrap(), x);
    }
}

#[test]
fn odin_perturb_steps_against_the_gradient_sign_per_channel_std() {
    // [N=1, C=2, 1, 2] channels first; std 0.5 for channel 1 doubles its step.
    let x = ndarray::ArrayD::from_shape_vec(vec![1, 2, 1, 2], vec![0.0f32, 0.0, 0.0, 0.0]).unwrap();
    let g = ndarray::ArrayD::from_shape_vec(vec![1, 2, 1, 2], vec![3.0f32, -1.0, 0.0, 2.0]).unwrap();
    let p = baselines::odin_perturb(&x, &g, 0.1, [1.0, 0.5, 1.0], false).unwrap();
    assert_eq!(p.iter().copied().collect::<Vec<_>>(), vec![-0.1, 0.1, 0.0, -0.2]);
    // Channels last: the same numbers laid out [N, H, W, C] with C = 2.
    let p = baselines::odin_perturb(&x, &g, 0.1, [1.0, 0.5, 1.0], true).unwrap();
    assert_eq!(p.iter().copied().collect::<Vec<_>>(), vec![-0.1, 0.2, 0.0, -0.2]);
}

#[test]
fn pruned_odin_graph_drops_the_parameter_norms() {
    let compiled =
        grad::compile(&tiny_model(1), &CompileOptions { loss: Loss::Odin, input_grad: true, ..Default::default() })
            .unwrap();
    let full = compiled.model.graph.as_ref().unwrap().node.len();
    let pruned = baselines::prune_to_outputs(&compiled.model, &["logits", "input_grad"]).unwrap();
    let g = pruned.graph.as_ref().unwrap();
    assert!(g.node.len() < full);
    assert_eq!(g.output.len(), 2);
    assert!(baselines::prune_to_outputs(&compiled.model, &["nope"]).is_err());
}

#[test]
fn extraction_is_batch_invariant_and_caches_round_trip() {
    let rt = ort();
    let model = tiny_model(2);
    let compiled = grad::compile(&model, &CompileOptions { penultimate: true, ..Default::default() }).unwrap();
    let info = ModelInfo::new(&model, "00", &compiled, "tiny").unwrap();
    let mut s = GradSession::new(&compiled, &rt).unwrap();
    let imgs = images(7, 9);
    let a = features::extract(&mut s, &info, &imgs, 3, false).unwrap();
    let b = features::extract(&mut s, &info, &imgs, 7, false).unwrap();
    assert_eq!(a.features.dim(), (7, compiled.features.len()));
    assert_eq!(a.logits.dim(), (7, 5));
    assert_eq!(a.penultimate.as_ref().unwrap().dim(), (7, 4));
    for (x, y) in a.features.iter().zip(b.features.iter()) {
        assert!((x - y).abs() <= 1e-5 * y.abs().max(1e-6), "{x} vs {y}");
    }
    let dir = tempfile::tempdir().unwrap();
    a.save(dir.path(), "set.").unwrap();
    let back = FeatureSet::load(dir.path(), "set.").unwrap().unwrap();
    assert_eq!(back, a);
    assert!(FeatureSet::load(dir.path(), "other.").unwrap().is_none());
    let sel = a.select(&[6, 0]);
    assert_eq!(sel.features.row(0), a.features.row(6));
    assert_eq!(FeatureSet::concat(&[&a, &sel]).unwrap().len(), 9);
}

fn fake_metrics(auroc: f64) -> RocSummary {
    RocSummary { detection_accuracy: 0.9, auroc, aupr_in: 0.8, aupr_out: 0.7, fpr_at_95_tpr: 0.25 }
}

fn fake_results() -> Results {
    let mut rows = Vec::new();
    for pair in ["cifar10", "all", "haze", "haze/1", "haze/2", "haze/3", "haze/4", "haze/5", "darkening/5"] {
        for (i, (m, _)) in results::METHODS.iter().enumerate() {
            let auroc = if *m == "gradients" { 0.9995 } else { 0.5 + 0.05 * i as f64 };
            rows.push(Row {
                pair: pair.into(),
                method: m.to_string(),
                metrics: fake_metrics(auroc),
                n_familiar: 20,
                n_unfamiliar: 20,
            });
        }
    }
    Results {
        model_name: "fake".into(),
        model_sha256: "abc123".into(),
        command: "gradwatch eval --per-set 100".into(),
        per_set: 100,
        augment: "none".into(),
        one_copy: false,
        seed: 0,
        familiar_accuracy: Some(0.97),
        mahalanobis_labels: "true labels".into(),
        sets: vec![("familiar".into(), 100), ("cifar10".into(), 100)],
        rows,
        generalisation: vec![GenRow { held_out: "haze".into(), level: 3, auroc: 0.8, specific_auroc: 0.99 }],
        family_out: vec![FamilyRow {
            family: "weather".into(),
            kind: "haze".into(),
            level: 3,
            auroc: 0.7,
            risk_auroc: 0.75,
            specific_auroc: 0.9,
            pooled_auroc: 0.85,
        }],
        risk_cells: vec![
            // Harmful (60 %): MSP 0.75, ours 0.95; benign (90 %): MSP 0.55, ours 0.65.
            RiskCell {
                kind: "haze".into(),
                family: "weather".into(),
                level: 5,
                n: 100,
                correct: 60,
                auroc: [("msp".to_string(), (0.75, 0.05)), ("gradients".to_string(), (0.95, 0.03))].into(),
            },
            RiskCell {
                kind: "haze".into(),
                family: "weather".into(),
                level: 1,
                n: 100,
                correct: 90,
                auroc: [("msp".to_string(), (0.55, 0.05)), ("gradients".to_string(), (0.65, 0.04))].into(),
            },
            RiskCell {
                kind: "darkening".into(),
                family: "illumination".into(),
                level: 5,
                n: 100,
                correct: 50,
                auroc: [("msp".to_string(), (0.85, 0.04)), ("gradients".to_string(), (0.91, 0.04))].into(),
            },
        ],
        misclassification: vec![MisclassRow {
            method: "msp".into(),
            auroc: 0.8,
            auroc_se: 0.02,
            aurc: 0.1,
            aurc_se: 0.01,
            excess_aurc: 0.04,
            n: 300,
            n_wrong: 60,
        }],
        risk_curves: vec![("msp".into(), vec![(0.5, 0.05), (1.0, 0.2)]), ("oracle".into(), vec![(1.0, 0.2)])],
        knn_k: 8,
        vim_dim: Some(40),
        odin: vec![OdinChoice { pair: "cifar10".into(), temperature: 1000.0, epsilon: 0.001, val_auroc: 0.9 }],
        timings: vec![("total".into(), 12.5)],
        features_per_sec: 30.0,
        roc: vec![("msp".into(), vec![(0.0, 0.0), (0.5, 0.7), (1.0, 1.0)])],
        grad_profile: vec![("familiar".into(), vec![1e-3, 1e-5, 0.1]), ("cifar10".into(), vec![1e-2, 1e-4, 1.0])],
        feature_names: vec!["a".into(), "b".into(), "c".into()],
        odin_temperatures: vec![1.0, 1000.0],
        odin_corruption_temperatures: vec![1000.0],
        odin_epsilons: vec![0.0, 0.001],
        trust: None,
    }
}

#[test]
fn report_writes_the_three_tables_csv_and_figures() {
    let r = fake_results();
    let md = report::markdown(&r);
    assert!(md.contains("## Table 1"));
    // Method order MSP / ODIN / Mahalanobis / Energy / GradNorm / KNN / ViM / fDBD / ours (gradients)
    // / ours (risk): AUROC 50, 55, ..., 85, 99.95, 95.
    assert!(md.contains("| GTSRB vs CIFAR-10 | 20/20 | 90.00 / 90.00 / 90.00 / 90.00 / 90.00 / 90.00 / 90.00 / 90.00 / 90.00 / 90.00 | 50.00 / 55.00 / 60.00 / 65.00 / 70.00 / 75.00 / 80.00 / 85.00 / 99.95 / 95.00 |"), "{md}");
    assert!(md.contains("| GTSRB vs every corruption (pooled, evaluated levels) |"), "{md}");
    assert!(md.contains("| GTSRB vs haze (evaluated levels pooled) |"));
    assert!(!md.contains("| GTSRB vs haze/3 |"), "levels belong to Table 2 only");
    // Table 2: ours 99.95 vs the paper's CURE-TSR haze L3 (100.0 / 99.95): >= paper, >= Mahalanobis 60.
    assert!(md.contains("| haze | 3 | 60.00 / 99.95 | 100.00 / 99.95 | yes | yes |"), "{md}");
    // Haze L4 in the paper: 99.87 -> yes; L1: 95.83 -> yes. Darkening is not in the paper.
    assert!(md.contains("| darkening | 5 | 60.00 / 99.95 | — (not in the paper) | — | yes |"));
    assert!(md.contains("Ours >= the paper's gradient AUROC in 5 of 5 cells; ours >= Mahalanobis in 6 of 6."));
    assert!(md.contains("## Table 3"));
    assert!(md.contains("| haze | 80.00 (99.00) |"));
    // Targets: ours 99.95 on 20/20 (SE 0.36 by Hanley-McNeil) beats GradNorm's 70.00.
    assert!(md.contains("| GTSRB vs CIFAR-10: AUROC >= 99.5 % | ours 99.95 ± 0.36 (test split 20/20) | yes |"), "{md}");
    assert!(md.contains("| GTSRB vs CIFAR-10: ours better than every baseline | best baseline fDBD 85.00 ±"), "{md}");
    assert!(md.contains("| 5 of 5 cells (Table 2) | yes |") && md.contains("| 6 of 6 cells (Table 2) | yes |"), "{md}");
    assert!(
        md.contains("| unseen corruption type, levels 3-5: AUROC >= 90 % | 0 of 1 cells (Table 3) | **no** |"),
        "{md}"
    );
    assert!(md.contains("abc123") && md.contains("gradwatch eval --per-set 100"));
    // Table 4: paper held out / risk held out / per cell / pooled.
    assert!(md.contains("| weather | haze | — | — | 70.00 / 75.00 / 90.00 / 85.00 | — | — |"), "{md}");
    assert!(md.contains("- weather: 70.00 / 75.00 / 90.00 / 85.00 (1 cells)"), "{md}");
    // Table 5: the harmful cell's accuracy in bold with its binomial SE sqrt(0.6 * 0.4 / 100) = 4.90 %.
    assert!(md.contains("| haze | weather | 5 | **60.00 ± 4.90** | 75.00 | 95.00 |"), "{md}");
    assert!(md.contains("| haze | weather | 1 | 90.00 ± 3.00 | 55.00 | 65.00 |"), "{md}");
    // Table 6: 2 harmful cells; ours min 91, mean 93 ± sqrt(0.03^2 + 0.04^2) / 2 = 2.50, both >= 90;
    // MSP min 75, mean 80 ± sqrt(0.05^2 + 0.04^2) / 2 = 3.20; benign means 55 and 65.
    assert!(md.contains("2 of 3 cells are harmful"), "{md}");
    assert!(md.contains("| paper, per cell | 91.00 | 93.00 ± 2.50 | 2 of 2 | 65.00 |"), "{md}");
    assert!(md.contains("| MSP | 75.00 | 80.00 ± 3.20 | 0 of 2 | 55.00 |"), "{md}");
    // Table 7.
    assert!(md.contains("300 images, 60"), "{md}");
    assert!(md.contains("| MSP | 80.00 ± 2.00 | 10.00 ± 1.00 | 4.00 |"), "{md}");
    assert!(md.contains("k = 8") && md.contains("top-40"), "{md}");
    let csv = report::csv(&r);
    assert!(csv.starts_with("pair,method,metric,value\n"));
    assert!(csv.contains("\ncifar10,gradients,auroc,0.9995\n"));
    assert!(csv.contains("\nholdout:haze/3,gradients,auroc,0.8\n"));
    assert!(csv.contains("\nhaze/5,classifier,accuracy,0.6\n"));
    assert!(csv.contains("\nmisclassification,msp,aurc,0.1\n"));
    // rows + holdout + family-out (paper, risk) + 2 per risk cell + 3 misclassification + 2 ODIN.
    assert_eq!(csv.lines().count(), 1 + 9 * results::METHODS.len() * 7 + 1 + 2 + 3 * 2 + 3 + 2);
    let dir = tempfile::tempdir().unwrap();
    report::write(&r, dir.path()).unwrap();
    let rc = report::risk_coverage_svg(&r);
    assert_eq!(rc.matches("<polyline").count(), 2);
    assert!(rc.contains("MSP (AURC 10.00)"), "{rc}");
    for f in [
        "results.md",
        "results.csv",
        "figures/roc-cifar10.svg",
        "figures/gradient-profile.svg",
        "figures/risk-coverage.svg",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let svg = report::profile_svg(&r);
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<polyline").count(), 2);
    assert!(svg.contains(">1e-5<"), "log-scale ticks");
}

#[test]
fn paper_table_is_the_papers() {
    assert_eq!(results::paper_cure_tsr("noise", 1), Some((25.46, 50.20)));
    assert_eq!(results::paper_cure_tsr("decolor", 5), Some((89.68, 96.91)));
    assert_eq!(results::paper_cure_tsr("codec_error", 1), None);
    assert_eq!(results::paper_cure_tsr("noise", 6), None);
    // A sanity check of the metrics the report uses, on a hand case: perfect separation.
    assert_eq!(metrics::auroc(&[0.0, 1.0], &[2.0, 3.0]), 1.0);
}

#[test]
fn knn_distance_to_the_kth_neighbour_by_hand() {
    // Bank (1,0), (0,1), (-1,0) (already unit length), k = 2.
    let bank = array![[1.0f32, 0.0], [0.0, 1.0], [-1.0, 0.0]];
    let knn = Knn::fit(bank.view(), 2).unwrap();
    // (2,0) -> (1,0): distances 0, sqrt 2, 2 -> 2nd = sqrt 2.
    // (0,-3) -> (0,-1): sqrt 2, 2, sqrt 2 -> 2nd = sqrt 2.
    // (1,1) -> (1,1)/sqrt 2: sqrt(2 - sqrt 2) twice, then sqrt(2 + sqrt 2) -> sqrt(2 - sqrt 2).
    let q = array![[2.0f32, 0.0], [0.0, -3.0], [1.0, 1.0]];
    let s = knn.score(q.view());
    let r2 = 2f32.sqrt();
    let want = [r2, r2, (2.0 - r2).sqrt()];
    for (g, w) in s.iter().zip(want) {
        assert!((g - w).abs() < 1e-6, "{s:?}");
    }
    // k is clamped to the bank; the paper's 50 needs 500 images, else a tenth.
    assert_eq!(Knn::fit(bank.view(), 10).unwrap().k(), 3);
    assert_eq!((Knn::auto_k(80), Knn::auto_k(400), Knn::auto_k(5000), Knn::auto_k(3)), (1, 4, 50, 1));
    assert!(Knn::fit(Array2::<f32>::zeros((0, 2)).view(), 1).is_err());
    assert!(knn.score(array![[1.0f32, 2.0, 3.0]].view())[0].is_nan());
}

#[test]
fn vim_on_a_hand_computed_case() {
    // W = I, b = (-1, 0): origin u = -W^+ b = (1, 0). Training features (3,+-1), (-1,+-1) are
    // (2,+-1), (-2,+-1) around u: second moment diag(16, 4), principal axis x, residual |y| = 1
    // each (sum 4). Logits z = h + b: (2,1), (2,-1), (-2,1), (-2,-1); max logits 2, 2, 1, -1
    // (sum 4) -> alpha = 1.
    let w = array![[1.0f32, 0.0], [0.0, 1.0]];
    let b = [-1.0f32, 0.0];
    let h = array![[3.0f32, 1.0], [3.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]];
    let z = array![[2.0f32, 1.0], [2.0, -1.0], [-2.0, 1.0], [-2.0, -1.0]];
    let vim = Vim::fit(h.view(), z.view(), &w, &b, 1).unwrap();
    assert!((vim.alpha() - 1.0).abs() < 1e-9, "{}", vim.alpha());
    // h = (1,3): residual 3, z = (0,3): score 3 - ln(1 + e^3) = -0.048587.
    // h = (3,0): residual 0, z = (2,0): score -ln(e^2 + 1) = -2.126928.
    let s = vim.score(array![[1.0f32, 3.0], [3.0, 0.0]].view(), array![[0.0f32, 3.0], [2.0, 0.0]].view());
    assert!((s[0] + 0.048587).abs() < 1e-5 && (s[1] + 2.126928).abs() < 1e-5, "{s:?}");
    // A subspace that holds every training feature leaves no residual to scale by.
    assert!(Vim::fit(h.view(), z.view(), &w, &b, 2).is_err());
    assert_eq!((Vim::auto_dim(512, 80), Vim::auto_dim(512, 4000), Vim::auto_dim(4, 1)), (40, 256, 1));
}

#[test]
fn symmetric_eigen_by_hand() {
    // [[2, 1], [1, 2]]: eigenvalues 3 and 1, vectors (1, 1) and (1, -1) over sqrt 2.
    let (l, v) = fb::symmetric_eigen(&[2.0, 1.0, 1.0, 2.0], 2);
    assert!((l[0] - 3.0).abs() < 1e-12 && (l[1] - 1.0).abs() < 1e-12, "{l:?}");
    let r = 0.5f64.sqrt();
    assert!((v[0][0].abs() - r).abs() < 1e-12 && (v[0][0] - v[0][1]).abs() < 1e-12);
    assert!((v[1][0] + v[1][1]).abs() < 1e-12);
}

#[test]
fn last_layer_reproduces_the_logits() {
    // The tiny model ends in Gemm(4 -> 5): W h + b must equal the logits the graph computes.
    let rt = ort();
    let model = tiny_model(4);
    let (fwd, out) = gradwatch::model::forward_logits_model(&model).unwrap();
    let (w, b) = fb::last_layer(&fwd, &out).unwrap();
    assert_eq!((w.dim(), b.len()), ((5, 4), 5));
    let compiled = grad::compile(&model, &CompileOptions { penultimate: true, ..Default::default() }).unwrap();
    let info = ModelInfo::new(&model, "00", &compiled, "tiny").unwrap();
    let mut s = GradSession::new(&compiled, &rt).unwrap();
    let f = features::extract(&mut s, &info, &images(3, 1), 3, false).unwrap();
    let pen = f.penultimate.unwrap();
    for (h, z) in pen.outer_iter().zip(f.logits.outer_iter()) {
        for c in 0..5 {
            let want: f32 = (0..4).map(|k| w[[c, k]] * h[k]).sum::<f32>() + b[c];
            assert!((want - z[c]).abs() < 1e-4, "{want} vs {}", z[c]);
        }
    }
}

#[test]
fn accuracy_measurement_on_the_tiny_model() {
    assert_eq!(accuracy::accuracy(&[1, 2, 3, 4], &[1, 2, 0, 0]), 0.5);
    assert!((accuracy::accuracy_standard_error(0.5, 100) - 0.05).abs() < 1e-12);
    assert!(accuracy::accuracy(&[], &[]).is_nan());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny.onnx");
    gradwatch::onnx::save(&tiny_model(3), &path).unwrap();
    let mut clf = Classifier::load(&path, &ort()).unwrap();
    let imgs = images(6, 2);
    let pred = clf.predict(&imgs, 4).unwrap();
    assert_eq!(pred.len(), 6);
    // Labelled by the clean predictions: clean accuracy is 1 by construction.
    let plan = AccuracyPlan {
        kinds: parse_corruptions("haze,zoom").unwrap(),
        levels: vec![1, 5],
        strengths: vec![],
        seed: 0,
        batch: 4,
    };
    let index: Vec<usize> = (0..6).collect();
    let mut seen = 0;
    let cells = accuracy::measure(&mut clf, &imgs, &pred, &index, &plan, |_| seen += 1).unwrap();
    assert_eq!((cells.len(), seen), (5, 5));
    assert_eq!(cells[0].accuracy(), 1.0);
    assert!(cells.iter().all(|c| c.n == 6));
    let md = accuracy::markdown_table(&cells);
    assert!(md.contains("| type | family | L1 | L5 |") && md.contains("| zoom | geometric |"), "{md}");
    assert_eq!(accuracy::csv(&cells).lines().count(), 6);
    // Strengths instead of levels: the legacy types have none.
    let plan = AccuracyPlan { strengths: vec![1.2], ..plan };
    assert!(accuracy::measure(&mut clf, &imgs, &pred, &index, &plan, |_| ()).is_err());
    let plan = AccuracyPlan { kinds: parse_corruptions("zoom").unwrap(), ..plan };
    let cells = accuracy::measure(&mut clf, &imgs, &pred, &index, &plan, |_| ()).unwrap();
    assert_eq!(cells[1].strength, Some(1.2));
    assert!(accuracy::measure(&mut clf, &imgs, &pred[..2], &index, &plan, |_| ()).is_err());
}

/// fDBD on a hand-computed case: two classes with unit weights, a familiar mean at the origin.
#[test]
fn fdbd_matches_a_hand_computed_case() {
    let train = ndarray::array![[1.0f32, 1.0], [-1.0, -1.0]];
    let w = ndarray::array![[1.0f32, 0.0], [0.0, 1.0]];
    let f = Fdbd::fit(train.view(), &w, &[0.0, 0.0]).unwrap();
    // h = (3, 1): predicted class 0; boundary distance |3 - 1| / sqrt(2); ||h - 0|| = sqrt(10).
    let s = f.score(ndarray::array![[3.0f32, 1.0], [3.0, 2.9]].view());
    assert!((s[0] + (2.0f32.sqrt() / 10.0f32.sqrt())).abs() < 1e-6, "{s:?}");
    // Closer to the boundary at a similar distance from the mean: more unfamiliar.
    assert!(s[1] > s[0]);
    assert!(f.score(ndarray::array![[1.0f32, 2.0, 3.0]].view())[0].is_nan());
    assert!(Fdbd::fit(train.view(), &w, &[0.0]).is_err());
}
