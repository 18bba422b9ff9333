//! Detector tests: standardizer statistics, MLP training on a separable synthetic problem,
//! determinism, error handling, the Gaussian (Mahalanobis) model on hand-computed cases, and
//! serde round trips. Sizes are chosen to run in seconds in a debug build.

use gradwatch::detector::roc::auroc;
use gradwatch::detector::{DetectorError, Gaussian, LogStandardizer, Mlp, MlpConfig, DEFAULT_SHRINKAGE};
use ndarray::{array, Array2};

/// Small deterministic generator for test data (independent of the crate's own PRNG).
struct TestRng(u64);

impl TestRng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u1, u2) = (self.uniform(), self.uniform());
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
}

const P: usize = 62;

/// Gradient-norm-like features: log10 of feature j is centred at a per-feature level spread
/// over -9 .. +2 (the ResNet-18 range), with 0.5 decades of noise. Unfamiliar samples have
/// the first 12 features raised by one decade (2 noise standard deviations each).
fn synthetic(rng: &mut TestRng, n_fam: usize, n_unf: usize) -> (Array2<f32>, Vec<u8>) {
    let n = n_fam + n_unf;
    let mut x = Array2::<f32>::zeros((n, P));
    let mut y = vec![0u8; n];
    for i in 0..n {
        let unf = i >= n_fam;
        y[i] = u8::from(unf);
        for j in 0..P {
            let level = -9.0 + 11.0 * j as f64 / (P - 1) as f64;
            let shift = if unf && j < 12 { 1.0 } else { 0.0 };
            x[[i, j]] = 10f64.powf(level + shift + 0.5 * rng.normal()) as f32;
        }
    }
    (x, y)
}

fn small_cfg(seed: u64) -> MlpConfig {
    MlpConfig { hidden: 16, max_epochs: 30, patience: 8, seed, ..MlpConfig::default() }
}

fn split_scores(s: &[f32], y: &[u8]) -> (Vec<f32>, Vec<f32>) {
    let fam = s.iter().zip(y).filter(|p| *p.1 == 0).map(|p| *p.0).collect();
    let unf = s.iter().zip(y).filter(|p| *p.1 == 1).map(|p| *p.0).collect();
    (fam, unf)
}

#[test]
fn mlp_separates_synthetic_blobs_despite_imbalance() {
    let mut rng = TestRng(42);
    // 15:1 imbalance in training (many unfamiliar variants, few familiar), balanced validation.
    let (xt, yt) = synthetic(&mut rng, 100, 1500);
    let (xv, yv) = synthetic(&mut rng, 300, 300);
    let (xs, ys) = synthetic(&mut rng, 300, 300);
    let st = LogStandardizer::fit(&xt.select(ndarray::Axis(0), &(0..100).collect::<Vec<_>>())).unwrap();
    let (zt, zv, zs) = (st.transform(&xt).unwrap(), st.transform(&xv).unwrap(), st.transform(&xs).unwrap());
    let (mlp, report) = Mlp::train(&zt, &yt, &zv, &yv, &small_cfg(7)).unwrap();
    assert!(report.best_val_auroc > 0.99, "{report:?}");
    assert!(report.best_epoch >= 1 && report.best_epoch <= report.epochs_run);
    assert_eq!(report.val_loss_history.len(), report.epochs_run);
    assert_eq!(report.best_val_loss, report.val_loss_history[report.best_epoch - 1]);
    // Well below chance loss (ln 2 = 0.693).
    assert!(report.best_val_loss < 0.2, "{report:?}");
    assert_eq!(mlp.inputs(), P);
    mlp.validate().unwrap();

    // Held-out test set: ranking by logit and by probability agree and both separate.
    let logits = mlp.logits(&zs);
    let probs = mlp.score(&zs);
    let (lf, lu) = split_scores(&logits, &ys);
    let (pf, pu) = split_scores(&probs, &ys);
    let a = auroc(&lf, &lu);
    assert!(a > 0.99, "test AUROC {a}");
    assert!(auroc(&pf, &pu) > 0.99);
    assert!(probs.iter().all(|p| (0.0..=1.0).contains(p)));
    // Row and batch APIs agree bit for bit.
    for i in [0, 299, 300, 599] {
        let r = zs.row(i).to_vec();
        assert_eq!(mlp.logit_row(&r), logits[i]);
        assert_eq!(mlp.score_row(&r), probs[i]);
    }
    // Score is monotone in the logit.
    let mut pairs: Vec<(f32, f32)> = logits.iter().copied().zip(probs.iter().copied()).collect();
    pairs.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(pairs.windows(2).all(|w| w[0].1 <= w[1].1));
}

#[test]
fn mlp_training_is_deterministic_for_a_seed() {
    let mut rng = TestRng(5);
    let (xt, yt) = synthetic(&mut rng, 150, 150);
    let (xv, yv) = synthetic(&mut rng, 50, 50);
    let st = LogStandardizer::fit(&xt).unwrap();
    let (zt, zv) = (st.transform(&xt).unwrap(), st.transform(&xv).unwrap());
    let cfg = MlpConfig { max_epochs: 5, ..small_cfg(99) };
    let (a, ra) = Mlp::train(&zt, &yt, &zv, &yv, &cfg).unwrap();
    let (b, rb) = Mlp::train(&zt, &yt, &zv, &yv, &cfg).unwrap();
    assert_eq!(a, b);
    assert_eq!(ra, rb);
    let (c, _) = Mlp::train(&zt, &yt, &zv, &yv, &MlpConfig { seed: 100, ..cfg }).unwrap();
    assert_ne!(a, c);
}

#[test]
fn mlp_early_stopping_keeps_best_epoch() {
    // Pure-noise labels: validation loss cannot improve for long, so training must stop
    // early (patience 3) and keep the epoch with the lowest validation loss.
    let mut rng = TestRng(8);
    let (mut xt, _) = synthetic(&mut rng, 200, 0);
    let yt: Vec<u8> = (0..200).map(|i| (i % 2) as u8).collect();
    let (xv, _) = synthetic(&mut rng, 60, 0);
    let yv: Vec<u8> = (0..60).map(|i| (i % 2) as u8).collect();
    let st = LogStandardizer::fit(&xt).unwrap();
    xt = st.transform(&xt).unwrap();
    let zv = st.transform(&xv).unwrap();
    let cfg = MlpConfig { hidden: 8, max_epochs: 200, patience: 3, lr: 1e-2, seed: 1, ..MlpConfig::default() };
    let (_, r) = Mlp::train(&xt, &yt, &zv, &yv, &cfg).unwrap();
    assert!(r.epochs_run < 200, "{r:?}");
    assert_eq!(r.epochs_run, r.best_epoch + 3, "{r:?}");
    let min = r.val_loss_history.iter().copied().fold(f64::INFINITY, f64::min);
    assert_eq!(r.best_val_loss, min);
}

#[test]
fn mlp_rejects_bad_inputs() {
    let x = Array2::<f32>::zeros((4, 3));
    let y = [0u8, 1, 0, 1];
    let cfg = small_cfg(0);
    let xv_wrong = Array2::<f32>::zeros((2, 4));
    assert!(matches!(
        Mlp::train(&x, &y, &xv_wrong, &[0, 1], &cfg),
        Err(DetectorError::DimensionMismatch { expected: 3, got: 4, .. })
    ));
    assert!(matches!(Mlp::train(&x, &y[..3], &x, &y, &cfg), Err(DetectorError::LabelCount { .. })));
    assert!(matches!(Mlp::train(&x, &[0, 1, 2, 0], &x, &y, &cfg), Err(DetectorError::BadLabel { label: 2, .. })));
    assert!(matches!(Mlp::train(&x, &[0, 0, 0, 0], &x, &y, &cfg), Err(DetectorError::MissingClass { class: 1, .. })));
    let mut xn = x.clone();
    xn[[2, 1]] = f32::NAN;
    assert!(matches!(Mlp::train(&xn, &y, &x, &y, &cfg), Err(DetectorError::NonFinite { row: 2, col: 1, .. })));
    let bad = MlpConfig { batch: 0, ..cfg.clone() };
    assert!(matches!(Mlp::train(&x, &y, &x, &y, &bad), Err(DetectorError::Config(_))));
    let empty = Array2::<f32>::zeros((0, 3));
    assert!(matches!(Mlp::train(&x, &y, &empty, &[], &cfg), Err(DetectorError::Empty { .. })));
}

#[test]
fn mlp_hand_forward_pass_and_invalid_models() {
    // Two hidden units: h1 = relu(1*x0 - 1*x1 + 0), h2 = relu(0.5*x0 + 0.5*x1 - 1);
    // logit = 2*h1 - 1*h2 + 0.25.
    // x = [3, 1]: h1 = 2, h2 = relu(2 - 1) = 1 -> 4 - 1 + 0.25 = 3.25.
    // x = [0, 1]: h1 = relu(-1) = 0, h2 = relu(-0.5) = 0 -> 0.25.
    let m = Mlp { w1: vec![vec![1.0, -1.0], vec![0.5, 0.5]], b1: vec![0.0, -1.0], w2: vec![2.0, -1.0], b2: 0.25 };
    m.validate().unwrap();
    assert_eq!(m.logit_row(&[3.0, 1.0]), 3.25);
    assert_eq!(m.logit_row(&[0.0, 1.0]), 0.25);
    // sigmoid(0.25) = 1 / (1 + e^-0.25) = 0.562176.
    assert!((m.score_row(&[0.0, 1.0]) - 0.562_176_5).abs() < 1e-6);
    // Wrong length -> NaN, never a panic.
    assert!(m.logit_row(&[1.0]).is_nan());
    assert!(m.score(&Array2::zeros((2, 5))).iter().all(|s| s.is_nan()));
    // Logits do not saturate where the probability does.
    let big = Mlp { w1: vec![vec![1.0]], b1: vec![0.0], w2: vec![1.0], b2: 0.0 };
    assert_eq!(big.score_row(&[50.0]), big.score_row(&[60.0])); // both 1.0 in f32
    assert!(big.logit_row(&[50.0]) < big.logit_row(&[60.0]));
    // Corrupt models are reported by validate and score NaN instead of panicking.
    let ragged = Mlp { w1: vec![vec![1.0, 2.0], vec![1.0]], ..m.clone() };
    assert!(matches!(ragged.validate(), Err(DetectorError::InvalidModel(_))));
    assert!(ragged.logit_row(&[1.0, 1.0]).is_nan());
    let short_b1 = Mlp { b1: vec![0.0], ..m.clone() };
    assert!(short_b1.validate().is_err());
    assert!(short_b1.logit_row(&[1.0, 1.0]).is_nan());
}

#[test]
fn standardizer_statistics_and_hand_case() {
    // x = [1, e^2] -> logs [~0, 2] (ln(1 + 1e-12) = 1e-12) -> mean 1, population std 1
    // -> transformed [-1, 1].
    let e2 = std::f32::consts::E * std::f32::consts::E;
    let x = array![[1.0f32, 5.0], [e2, 5.0]];
    let st = LogStandardizer::fit(&x).unwrap();
    assert!((st.mean[0] - 1.0).abs() < 1e-6 && (st.std[0] - 1.0).abs() < 1e-6);
    let z = st.transform(&x).unwrap();
    assert!((z[[0, 0]] + 1.0).abs() < 1e-6 && (z[[1, 0]] - 1.0).abs() < 1e-6);
    // Constant feature: std floored, transformed value exactly 0 on training data.
    assert_eq!(st.std[1], gradwatch::detector::MIN_STD);
    assert_eq!(z[[0, 1]], 0.0);
    // Zeros and negative rounding noise map to ln(eps); +inf is clamped, not NaN.
    let r = st.transform_row(&[-1e-20, f32::INFINITY]).unwrap();
    let want0 = ((1e-12f64).ln() - 1.0) as f32;
    assert!((r[0] - want0).abs() < 1e-4, "{r:?}");
    assert!(r[1].is_finite() && r[1] > 0.0);

    // Realistic features: mean ~0 and std ~1 per column on the fitting data.
    let mut rng = TestRng(3);
    let (x, _) = synthetic(&mut rng, 500, 0);
    let st = LogStandardizer::fit(&x).unwrap();
    let z = st.transform(&x).unwrap();
    for col in z.columns() {
        let n = col.len() as f64;
        let m = col.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let s = (col.iter().map(|&v| (f64::from(v) - m).powi(2)).sum::<f64>() / n).sqrt();
        assert!(m.abs() < 1e-5, "mean {m}");
        assert!((s - 1.0).abs() < 1e-4, "std {s}");
    }
    // Row API equals the batch API.
    assert_eq!(st.transform_row(&x.row(7).to_vec()).unwrap(), z.row(7).to_vec());
}

#[test]
fn standardizer_errors() {
    let x = array![[1.0f32, 2.0], [3.0, 4.0]];
    let st = LogStandardizer::fit(&x).unwrap();
    assert!(matches!(
        st.transform(&array![[1.0f32, 2.0, 3.0]]),
        Err(DetectorError::DimensionMismatch { expected: 2, got: 3, .. })
    ));
    assert!(matches!(st.transform_row(&[1.0]), Err(DetectorError::DimensionMismatch { .. })));
    assert!(matches!(st.transform_row(&[1.0, f32::NAN]), Err(DetectorError::NonFinite { col: 1, .. })));
    assert!(matches!(LogStandardizer::fit(&array![[1.0f32, f32::INFINITY]]), Err(DetectorError::NonFinite { .. })));
    assert!(matches!(LogStandardizer::fit(&Array2::zeros((0, 4))), Err(DetectorError::Empty { .. })));
    let corrupt = LogStandardizer { std: vec![1.0], ..st };
    assert!(corrupt.validate().is_err());
    assert!(corrupt.transform_row(&[1.0, 2.0]).is_err());
}

/// One class: (2, 1), (-2, -1), (1, -1), (-1, 1); mean (0, 0);
/// S = 1/4 [[4+4+1+1, 2+2-1-1], [., 1+1+1+1]] = [[2.5, 0.5], [0.5, 1]], det = 2.25,
/// S^-1 = 1/2.25 [[1, -0.5], [-0.5, 2.5]].
fn hand_points() -> Array2<f32> {
    array![[2.0f32, 1.0], [-2.0, -1.0], [1.0, -1.0], [-1.0, 1.0]]
}

#[test]
fn gaussian_hand_computed_2d() {
    let g = Gaussian::fit(&hand_points(), &[0; 4], 1, 0.0).unwrap();
    g.validate().unwrap();
    let want = [[1.0 / 2.25, -0.5 / 2.25], [-0.5 / 2.25, 2.5 / 2.25]];
    for (got_row, want_row) in g.precision.iter().zip(want) {
        for (got, w) in got_row.iter().zip(want_row) {
            assert!((got - w).abs() < 1e-12, "{g:?}");
        }
    }
    // (1, 0): 1/2.25 = 0.4444; (1, 1): (1 - 2*0.5 + 2.5) / 2.25 = 2.5/2.25 = 1.1111;
    // the mean itself: 0.
    assert!((g.score_row(&[1.0, 0.0]) - 1.0 / 2.25).abs() < 1e-6);
    assert!((g.score_row(&[1.0, 1.0]) - 2.5 / 2.25).abs() < 1e-6);
    assert_eq!(g.score_row(&[0.0, 0.0]), 0.0);

    // Shrinkage 0.5: tr(S)/d = 3.5/2 = 1.75; 0.5 S + 0.875 I = [[2.125, 0.25], [0.25, 1.375]],
    // det = 2.921875 - 0.0625 = 2.859375; distance of (1, 0) = 1.375 / 2.859375.
    let gs = Gaussian::fit(&hand_points(), &[0; 4], 1, 0.5).unwrap();
    assert!((gs.score_row(&[1.0, 0.0]) - (1.375 / 2.859375) as f32).abs() < 1e-6);

    // Two classes, class 1 = the same points shifted by (10, 0): pooled covariance unchanged.
    // (10, 0): min(100/2.25, 0) = 0; (5, 0): both 25/2.25 = 11.111; (1, 1) as before.
    let mut x2 = Array2::<f32>::zeros((8, 2));
    x2.slice_mut(ndarray::s![..4, ..]).assign(&hand_points());
    let mut shifted = hand_points();
    shifted.column_mut(0).mapv_inplace(|v| v + 10.0);
    x2.slice_mut(ndarray::s![4.., ..]).assign(&shifted);
    let g2 = Gaussian::fit(&x2, &[0, 0, 0, 0, 1, 1, 1, 1], 2, 0.0).unwrap();
    let s = g2.score(&array![[10.0f32, 0.0], [5.0, 0.0], [1.0, 1.0]]);
    assert!(s[0].abs() < 1e-5, "{s:?}");
    assert!((s[1] - 25.0 / 2.25).abs() < 1e-4, "{s:?}");
    assert!((s[2] - 2.5 / 2.25).abs() < 1e-5, "{s:?}");
}

#[test]
fn gaussian_singular_and_bad_inputs() {
    // Collinear points: x1 = 2 x0 -> singular S. Fails without shrinkage, works with it.
    let x = array![[1.0f32, 2.0], [2.0, 4.0], [3.0, 6.0], [4.0, 8.0]];
    assert!(matches!(Gaussian::fit(&x, &[0; 4], 1, 0.0), Err(DetectorError::NotPositiveDefinite(_))));
    let g = Gaussian::fit(&x, &[0; 4], 1, DEFAULT_SHRINKAGE).unwrap();
    g.validate().unwrap();
    // Off the line is far more unfamiliar than on it at the same offset from the mean.
    assert!(g.score_row(&[3.5, 5.0]) > 1000.0 * g.score_row(&[3.5, 7.0]));
    assert!(matches!(Gaussian::fit(&x, &[0, 0, 0, 0], 2, 0.1), Err(DetectorError::MissingClass { class: 1, .. })));
    assert!(matches!(Gaussian::fit(&x, &[0, 3, 0, 0], 2, 0.1), Err(DetectorError::BadLabel { label: 3, .. })));
    assert!(matches!(Gaussian::fit(&x, &[0; 4], 1, 1.5), Err(DetectorError::Config(_))));
    assert!(matches!(
        Gaussian::fit(&array![[1.0f32, 1.0], [1.0, 1.0]], &[0, 0], 1, 0.5),
        Err(DetectorError::NotPositiveDefinite(_))
    ));
    assert!(g.score_row(&[1.0, 2.0, 3.0]).is_nan());
    let corrupt = Gaussian { precision: vec![vec![1.0, 0.0], vec![0.0]], ..g };
    assert!(corrupt.validate().is_err());
    assert!(corrupt.score_row(&[1.0, 2.0]).is_nan());
}

#[test]
fn gaussian_one_class_detects_synthetic_shift() {
    let mut rng = TestRng(11);
    let (xt, _) = synthetic(&mut rng, 400, 0);
    let (xs, ys) = synthetic(&mut rng, 200, 200);
    let st = LogStandardizer::fit(&xt).unwrap();
    let g = Gaussian::fit(&st.transform(&xt).unwrap(), &[0; 400], 1, DEFAULT_SHRINKAGE).unwrap();
    let s = g.score(&st.transform(&xs).unwrap());
    let (f, u) = split_scores(&s, &ys);
    // Unsupervised, so weaker than the MLP: familiar distances ~ chi2(62) (mean 62, sd 11),
    // unfamiliar ~ noncentral chi2(62, lambda = 12 * 2^2 = 48) (mean 110, sd 18):
    // ~2.3 pooled sd apart -> AUROC ~0.95..0.99.
    let a = auroc(&f, &u);
    assert!(a > 0.95, "one-class AUROC {a}");
}

#[test]
fn serde_toml_round_trip_preserves_scores() {
    let mut rng = TestRng(21);
    let (xt, yt) = synthetic(&mut rng, 60, 60);
    let st = LogStandardizer::fit(&xt).unwrap();
    let zt = st.transform(&xt).unwrap();
    let cfg = MlpConfig { max_epochs: 2, ..small_cfg(3) };
    let (mlp, _) = Mlp::train(&zt, &yt, &zt, &yt, &cfg).unwrap();
    let g = Gaussian::fit(&zt, &yt.iter().map(|&y| y as usize).collect::<Vec<_>>(), 2, 1e-3).unwrap();

    let st2: LogStandardizer = toml::from_str(&toml::to_string(&st).unwrap()).unwrap();
    let mlp2: Mlp = toml::from_str(&toml::to_string(&mlp).unwrap()).unwrap();
    let g2: Gaussian = toml::from_str(&toml::to_string(&g).unwrap()).unwrap();
    assert_eq!(mlp, mlp2);
    assert_eq!(g, g2);
    assert_eq!(st.mean, st2.mean);
    assert_eq!(st.std, st2.std);
    assert_eq!(st.eps, st2.eps);
    let z2 = st2.transform(&xt).unwrap();
    assert_eq!(zt, z2);
    assert_eq!(mlp.logits(&zt), mlp2.logits(&z2));
    assert_eq!(mlp.score(&zt), mlp2.score(&z2));
    assert_eq!(g.score(&zt), g2.score(&z2));

    // Config: missing fields take defaults, unknown fields are rejected.
    let c: MlpConfig = toml::from_str("hidden = 32\nseed = 5").unwrap();
    assert_eq!(c, MlpConfig { hidden: 32, seed: 5, ..MlpConfig::default() });
    assert!(toml::from_str::<MlpConfig>("hiden = 32").is_err());
}
