//! ROC maths (`detector::roc`) against hand-computed cases and brute-force reference implementations.
//! Convention: higher score = more unfamiliar; alarm = `score > threshold`.

use gradwatch::detector::roc::{auroc, evaluate, rates_at, roc_curve, threshold_for_false_alarm, RocSummary};

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

fn assert_metrics(m: RocSummary, want: [f64; 5]) {
    let got = [m.detection_accuracy, m.auroc, m.aupr_in, m.aupr_out, m.fpr_at_95_tpr];
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(close(*g, w), "field {i} (det_acc, auroc, aupr_in, aupr_out, fpr95): got {g}, want {w}; {m:?}");
    }
}

#[test]
fn perfect_detector() {
    // Every unfamiliar score above every familiar one.
    // Det acc: cut between 0.3 and 0.7 accepts 3/3 familiar and flags 2/2 unfamiliar -> 1.
    // FPR95: 95% of 3 familiar needs 3 accepted -> t* = 0.3 -> 0/2 unfamiliar accepted.
    let m = evaluate(&[0.1, 0.2, 0.3], &[0.7, 0.8]);
    assert_metrics(m, [1.0, 1.0, 1.0, 1.0, 0.0]);
}

#[test]
fn reversed_detector() {
    // familiar [0.7, 0.8], unfamiliar [0.1, 0.2, 0.3]: every pair wrongly ordered.
    // AUROC = 0. Det acc: the best cut is an extreme (flag all / none) -> 0.5; e.g. the cut
    //   after 0.1 gives 0.5 * (0/2 + 2/3) = 1/3.
    // AUPR-out (unfamiliar positive, descending): 0.8 f, 0.7 f, then
    //   0.3: P = 1/3, dR = 1/3 -> 1/9; 0.2: P = 2/4 -> 1/6; 0.1: P = 3/5 -> 1/5;
    //   sum = 10/90 + 15/90 + 18/90 = 43/90.
    // AUPR-in (familiar positive, ascending): 0.1 u, 0.2 u, 0.3 u, then
    //   0.7: P = 1/4, dR = 1/2 -> 1/8; 0.8: P = 2/5, dR = 1/2 -> 1/5; sum = 0.325.
    // FPR95: 95% of 2 familiar needs both -> t* = 0.8 -> 3/3 unfamiliar accepted -> 1.
    let m = evaluate(&[0.7, 0.8], &[0.1, 0.2, 0.3]);
    assert_metrics(m, [0.5, 0.0, 0.325, 43.0 / 90.0, 1.0]);
}

#[test]
fn all_equal_scores() {
    // One tie group of 4 familiar + 3 unfamiliar.
    // AUROC: every pair tied -> 1/2. Det acc: only the two extreme cuts -> 0.5.
    // AP: a single threshold with recall 1: AUPR-out = precision = 3/7, AUPR-in = 4/7.
    // FPR95: accepting the group accepts every unfamiliar sample -> 1.
    let f = [0.5f32; 4];
    let u = [0.5f32; 3];
    assert_metrics(evaluate(&f, &u), [0.5, 0.5, 4.0 / 7.0, 3.0 / 7.0, 1.0]);
    assert_eq!(auroc(&f, &u), 0.5);
    assert_eq!(roc_curve(&f, &u), vec![(0.0, 0.0), (1.0, 1.0)]);
}

#[test]
fn ties_across_classes() {
    // familiar [0.1, 0.4, 0.4], unfamiliar [0.4, 0.8].
    // Groups ascending: 0.1 (1 f), 0.4 (2 f, 1 u), 0.8 (1 u).
    // AUROC: u=0.4 beats 1 f and ties 2 -> 1 + 2/2 = 2; u=0.8 beats 3 -> 3; 5 / (3*2) = 5/6.
    // Det acc over cuts: none accepted 0.5; after 0.1: 0.5 (1/3 + 2/2) = 2/3;
    //   after 0.4: 0.5 (3/3 + 1/2) = 3/4; all accepted 0.5 -> 3/4.
    // AUPR-out (descending): 0.8: tp 1, fp 0, P = 1, dR = 1/2 -> 1/2;
    //   0.4: tp 2, fp 2, P = 1/2, dR = 1/2 -> 1/4; total 3/4.
    // AUPR-in (ascending): 0.1: tp 1, fp 0, P = 1, dR = 1/3 -> 1/3;
    //   0.4: tp 3, fp 1, P = 3/4, dR = 2/3 -> 1/2; total 5/6.
    // FPR95: need >= 2.85 of 3 familiar accepted -> t* = 0.4, which also accepts the tied
    //   unfamiliar 0.4 -> 1/2.
    let f = [0.1f32, 0.4, 0.4];
    let u = [0.4f32, 0.8];
    assert_metrics(evaluate(&f, &u), [0.75, 5.0 / 6.0, 5.0 / 6.0, 0.75, 0.5]);
    // ROC (flag >= s, descending): start (0,0); 0.8 -> (0, 1/2); 0.4 -> (2/3, 1); 0.1 -> (1, 1).
    let roc = roc_curve(&f, &u);
    let want = [(0.0, 0.0), (0.0, 0.5), (2.0 / 3.0, 1.0), (1.0, 1.0)];
    assert_eq!(roc.len(), want.len());
    for (g, w) in roc.iter().zip(want) {
        assert!(close(g.0, w.0) && close(g.1, w.1), "{roc:?}");
    }
}

#[test]
fn aupr_five_samples() {
    // familiar [0.2, 0.6], unfamiliar [0.4, 0.8, 0.9].
    // AUPR-out (descending): 0.9 u: P 1/1, dR 1/3; 0.8 u: P 2/2, dR 1/3; 0.6 f;
    //   0.4 u: P 3/4, dR 1/3; 0.2 f.  AP = 1/3 + 1/3 + 1/4 = 11/12.
    // AUPR-in (ascending): 0.2 f: P 1/1, dR 1/2; 0.4 u; 0.6 f: P 2/3, dR 1/2; 0.8, 0.9 u.
    //   AP = 1/2 + 1/3 = 5/6.
    // AUROC: 0.4 beats 1 f, 0.8 and 0.9 beat 2 each -> 5/6.
    // Det acc: cut after 0.2: 0.5 (1/2 + 3/3) = 3/4; after 0.6: 0.5 (2/2 + 2/3) = 5/6 (best).
    // FPR95: needs both familiar -> t* = 0.6 -> unfamiliar 0.4 accepted -> 1/3.
    let m = evaluate(&[0.2, 0.6], &[0.4, 0.8, 0.9]);
    assert_metrics(m, [5.0 / 6.0, 5.0 / 6.0, 5.0 / 6.0, 11.0 / 12.0, 1.0 / 3.0]);
}

#[test]
fn fpr95_twenty_familiar() {
    // familiar 1..=20; 95% of 20 = 19 accepted -> t* = 19 (19th smallest).
    // unfamiliar: those <= 19 are 5, 15 and 19 (the tie with the familiar 19 is accepted too)
    // -> 3/10. (t* = 18 would give 2/10, t* = 20 would give 5/10.)
    let f: Vec<f32> = (1..=20).map(|i| i as f32).collect();
    let u = [5.0f32, 15.0, 19.0, 19.5, 20.0, 25.0, 30.0, 40.0, 50.0, 60.0];
    assert!(close(evaluate(&f, &u).fpr_at_95_tpr, 0.3));
    // familiar 1..=21: 95% of 21 = 19.95 -> 20 accepted -> t* = 20, which accepts
    // 5, 15, 19, 19.5, 20 -> 5/10.
    let f21: Vec<f32> = (1..=21).map(|i| i as f32).collect();
    assert!(close(evaluate(&f21, &u).fpr_at_95_tpr, 0.5));
}

#[test]
fn threshold_for_false_alarm_by_hand() {
    // 0.1 .. 1.0, rate 0.2: m = floor(0.2 * 10) = 2 -> t = 8th smallest = 0.8;
    // 0.9 and 1.0 exceed it (2/10 = 0.2); any t < 0.8 lets 3 exceed.
    let f: Vec<f32> = (1..=10).map(|i| i as f32 / 10.0).collect();
    assert_eq!(threshold_for_false_alarm(&f, 0.2), 0.8);
    assert_eq!(threshold_for_false_alarm(&f, 0.25), 0.8); // floor(2.5) = 2
    assert_eq!(threshold_for_false_alarm(&f, 0.0), 1.0); // maximum
    assert_eq!(threshold_for_false_alarm(&f, 1.0), f32::NEG_INFINITY);
    assert_eq!(rates_at(&f, &[], 0.8).0, 0.2);
    // Ties are never split: [1, 2, 2, 2, 3], rate 0.4 -> m = 2 -> t = 3rd smallest = 2, and
    // only 3 exceeds it (realised rate 0.2 <= 0.4).
    let t = [1.0f32, 2.0, 2.0, 2.0, 3.0];
    assert_eq!(threshold_for_false_alarm(&t, 0.4), 2.0);
    assert_eq!(threshold_for_false_alarm(&t, 0.2), 2.0); // m = 1 -> 4th smallest = 2
    assert_eq!(threshold_for_false_alarm(&t, 0.19), 3.0); // m = 0 -> maximum
                                                          // 0.05 * 20 must count as exactly one allowed alarm.
    let f20: Vec<f32> = (1..=20).map(|i| i as f32).collect();
    assert_eq!(threshold_for_false_alarm(&f20, 0.05), 19.0);
    // NaN counts as +inf: [NaN, 1, 2, 3], rate 0.25 -> m = 1 -> 3rd smallest = 3; the NaN
    // sample is the one allowed alarm.
    let n = [f32::NAN, 1.0, 2.0, 3.0];
    assert_eq!(threshold_for_false_alarm(&n, 0.25), 3.0);
    assert_eq!(rates_at(&n, &[], 3.0).0, 0.25);
    // Degenerate inputs.
    assert_eq!(threshold_for_false_alarm(&[], 0.1), f32::INFINITY);
    assert_eq!(threshold_for_false_alarm(&f, f64::NAN), 1.0);
    assert_eq!(threshold_for_false_alarm(&f, -3.0), 1.0);
}

#[test]
fn rates_at_by_hand() {
    // t = 0.5: familiar above = {0.9} -> 1/3; unfamiliar above = {0.95, NaN} -> 2/3
    // (0.5 itself is not above: the rule is strict).
    let (fa, tp) = rates_at(&[0.1, 0.5, 0.9], &[0.5, 0.95, f32::NAN], 0.5);
    assert!(close(fa, 1.0 / 3.0) && close(tp, 2.0 / 3.0));
    let (fa, tp) = rates_at(&[], &[1.0], 0.0);
    assert!(fa.is_nan() && tp == 1.0);
}

#[test]
fn nan_counts_as_most_unfamiliar_and_empty_is_nan() {
    // NaN unfamiliar -> +inf: still a perfect ordering.
    assert_eq!(auroc(&[0.1, 0.2], &[f32::NAN, 0.3]), 1.0);
    // NaN familiar ties with +inf unfamiliar: 1 f (0.1) below inf -> 1; tie with NaN -> 1/2;
    // 1.5 / 2.
    assert_eq!(auroc(&[0.1, f32::NAN], &[f32::INFINITY]), 0.75);
    let m = evaluate(&[], &[1.0]);
    assert!(m.auroc.is_nan() && m.fpr_at_95_tpr.is_nan() && m.detection_accuracy.is_nan());
    assert!(auroc(&[1.0], &[]).is_nan());
    assert!(roc_curve(&[1.0], &[]).is_empty());
    // -0.0 and 0.0 are the same score (a tie), not an ordering.
    assert_eq!(auroc(&[-0.0], &[0.0]), 0.5);
}

/// Deterministic pseudo-random scores quantised to 0.05 so ties are frequent.
fn lcg_scores(seed: u64, n: usize, shift: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            ((u + shift) * 20.0).round() / 20.0
        })
        .collect()
}

fn brute_auroc(f: &[f32], u: &[f32]) -> f64 {
    let mut s = 0.0;
    for &a in u {
        for &b in f {
            s += if a > b {
                1.0
            } else if a == b {
                0.5
            } else {
                0.0
            };
        }
    }
    s / (f.len() * u.len()) as f64
}

/// All distinct scores plus -inf as thresholds ("accept score <= t").
fn thresholds(f: &[f32], u: &[f32]) -> Vec<f32> {
    let mut t: Vec<f32> = f.iter().chain(u).copied().collect();
    t.push(f32::NEG_INFINITY);
    t.sort_by(|a, b| a.total_cmp(b));
    t.dedup();
    t
}

fn frac(v: &[f32], pred: impl Fn(f32) -> bool) -> f64 {
    v.iter().filter(|&&x| pred(x)).count() as f64 / v.len() as f64
}

fn brute_det_acc(f: &[f32], u: &[f32]) -> f64 {
    thresholds(f, u).into_iter().map(|t| 0.5 * frac(f, |x| x <= t) + 0.5 * frac(u, |x| x > t)).fold(0.0, f64::max)
}

/// sklearn-style AP of `pos` against `neg`, where "more positive" = larger `key`.
fn brute_ap(pos: &[f32], neg: &[f32]) -> f64 {
    let mut ts = thresholds(pos, neg);
    ts.retain(|t| t.is_finite());
    ts.reverse();
    let (mut ap, mut last_r) = (0.0, 0.0);
    for t in ts {
        let tp = pos.iter().filter(|&&x| x >= t).count() as f64;
        let fp = neg.iter().filter(|&&x| x >= t).count() as f64;
        let r = tp / pos.len() as f64;
        if tp > 0.0 {
            ap += (r - last_r) * tp / (tp + fp);
        }
        last_r = r;
    }
    ap
}

fn brute_fpr95(f: &[f32], u: &[f32]) -> f64 {
    let mut fs = f.to_vec();
    fs.sort_by(|a, b| a.total_cmp(b));
    let t = fs.iter().copied().find(|&t| frac(f, |x| x <= t) >= 0.95 - 1e-12).unwrap();
    frac(u, |x| x <= t)
}

#[test]
fn random_detector_matches_brute_force() {
    for (seed, nf, nu, shift) in [(1u64, 37, 23, 0.0f32), (2, 50, 8, 0.3), (3, 5, 60, -0.2)] {
        let f = lcg_scores(seed, nf, 0.0);
        let u = lcg_scores(seed + 100, nu, shift);
        let m = evaluate(&f, &u);
        let neg_f: Vec<f32> = f.iter().map(|x| -x).collect();
        let neg_u: Vec<f32> = u.iter().map(|x| -x).collect();
        let want = [
            brute_det_acc(&f, &u),
            brute_auroc(&f, &u),
            brute_ap(&neg_f, &neg_u),
            brute_ap(&u, &f),
            brute_fpr95(&f, &u),
        ];
        let got = [m.detection_accuracy, m.auroc, m.aupr_in, m.aupr_out, m.fpr_at_95_tpr];
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-12, "seed {seed} field {i}: {g} vs {w}");
        }
        assert_eq!(auroc(&f, &u), m.auroc);
        // Trapezoidal area under the tie-grouped ROC curve equals the Mann-Whitney AUROC.
        let roc = roc_curve(&f, &u);
        assert_eq!(roc.first(), Some(&(0.0, 0.0)));
        assert_eq!(roc.last(), Some(&(1.0, 1.0)));
        let area: f64 = roc.windows(2).map(|w| (w[1].0 - w[0].0) * (w[1].1 + w[0].1) / 2.0).sum();
        assert!((area - m.auroc).abs() < 1e-12, "{area} vs {}", m.auroc);
        // Thresholds honour their false-alarm bound and are the smallest that do.
        for rate in [0.0, 0.01, 0.05, 0.1, 0.5, 0.99] {
            let t = threshold_for_false_alarm(&f, rate);
            assert!(rates_at(&f, &u, t).0 <= rate + 1e-12);
            let below = f.iter().copied().filter(|&x| x < t).fold(f32::NAN, f32::max);
            if !below.is_nan() {
                assert!(rates_at(&f, &u, below).0 > rate, "rate {rate}: {t} not minimal");
            }
        }
    }
}

#[test]
fn metrics_serde_round_trip() {
    let m = evaluate(&[0.2, 0.6], &[0.4, 0.8, 0.9]);
    let s = toml::to_string(&m).unwrap();
    let back: RocSummary = toml::from_str(&s).unwrap();
    assert_eq!(m, back);
}

mod selective {
    //! Misclassification detection and selective classification, by hand.
    use gradwatch::detector::roc::{
        aurc, aurc_bootstrap_se, aurc_optimal, mean_standard_error, misclassification_auroc, risk_coverage,
    };

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn aurc_on_four_samples() {
        // Kept lowest score first: 0.1 right, 0.2 wrong, 0.3 right, 0.4 wrong.
        // Risks at coverage 1/4..4/4: 0/1, 1/2, 1/3, 2/4 -> AURC = (0 + 1/2 + 1/3 + 1/2) / 4 = 1/3.
        let s = [0.4f32, 0.1, 0.3, 0.2];
        let e = [true, false, false, true];
        assert!(close(aurc(&s, &e), 1.0 / 3.0), "{}", aurc(&s, &e));
        let rc = risk_coverage(&s, &e);
        let want = [(0.25, 0.0), (0.5, 0.5), (0.75, 1.0 / 3.0), (1.0, 0.5)];
        assert_eq!(rc.len(), 4);
        for (g, w) in rc.iter().zip(want) {
            assert!(close(g.0, w.0) && close(g.1, w.1), "{rc:?}");
        }
        // Oracle: both right ones first: 0, 0, 1/3, 1/2 -> 5/24.
        assert!(close(aurc_optimal(&e), 5.0 / 24.0));
        // Wrong {0.4, 0.2} vs right {0.1, 0.3}: 0.4 beats both, 0.2 beats 0.1 only -> 3/4.
        assert!(close(misclassification_auroc(&s, &e), 0.75));
    }

    #[test]
    fn aurc_ties_count_in_expectation_and_bad_scores_cost() {
        // Tie of a wrong and a right frame kept first: expected errors 1/2 at k = 1, 1 at k = 2.
        // Risks 1/2, 1/2, 1/3 -> AURC = 4/9.
        let e = [true, false, false];
        assert!(close(aurc(&[0.5, 0.5, 0.9], &e), 4.0 / 9.0));
        // A score that keeps the error first: risks 1, 1/2, 1/3 -> 11/18 (worse than random 1/3).
        assert!(close(aurc(&[0.0, 1.0, 2.0], &e), 11.0 / 18.0));
        // NaN counts as the least trusted: kept last, like +inf, so this is the oracle.
        assert!(close(aurc(&[f32::NAN, 0.0, 1.0], &e), aurc_optimal(&e)));
        // Constant score: every prefix has the base rate 1/3.
        assert!(close(aurc(&[1.0; 3], &e), 1.0 / 3.0));
        assert!(aurc(&[], &[]).is_nan() && aurc_optimal(&[]).is_nan());
        assert!(misclassification_auroc(&[1.0, 2.0], &[false, false]).is_nan());
    }

    #[test]
    fn standard_errors() {
        let s: Vec<f32> = (0..40).map(|i| i as f32).collect();
        let e: Vec<bool> = (0..40).map(|i| i % 3 == 0).collect();
        let a = aurc_bootstrap_se(&s, &e, 200, 7);
        assert!(a > 0.0 && a < 0.2, "{a}");
        assert_eq!(a, aurc_bootstrap_se(&s, &e, 200, 7), "seeded");
        // No error anywhere: every resample has AURC 0.
        assert_eq!(aurc_bootstrap_se(&s, &[false; 40], 50, 1), 0.0);
        // sqrt(0.03^2 + 0.04^2) / 2 = 0.025.
        assert!(close(mean_standard_error(&[0.03, 0.04]), 0.025));
        assert!(mean_standard_error(&[]).is_nan());
    }
}
