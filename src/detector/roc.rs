//! ROC maths for unfamiliarity scores: the ranking metrics of the paper (AUROC, AUPR,
//! detection accuracy, FPR at 95% TPR) and the threshold helpers that turn a tolerated
//! false-alarm rate into an alarm threshold (used by calibration and the evaluation alike).
//!
//! # Conventions
//!
//! * A **higher score means more unfamiliar**. *Familiar* = in-distribution (the training
//!   distribution of the classifier), *unfamiliar* = corrupted or out-of-distribution.
//! * An alarm is raised when `score > threshold` (strictly greater).
//! * **NaN scores count as the most unfamiliar value**: every NaN is replaced by `+inf`
//!   before anything is computed (so a NaN ties with `+inf`), and `-0.0` is treated as `0.0`.
//!   A detector that produces NaN on broken inputs should alarm on them, and the metrics
//!   must not silently drop such samples.
//! * Equal scores ("ties") are never split by an arbitrary order: every metric treats a group
//!   of equal scores as one threshold step, exactly like scikit-learn's `roc_curve` /
//!   `average_precision_score` do.
//! * Metrics that need both classes return `NaN` when either set is empty.
//!
//! The definitions follow the evaluation code of ODIN (Liang et al. 2018) and of the
//! Mahalanobis detector (Lee et al. 2018), which Lee & AlRegib (2020) used, with the
//! threshold sweeps done exactly over all distinct scores instead of over a fixed grid
//! (the reference code's grid only approximates these values). Everything is
//! `O(n log n)` in the total number of scores (one sort).

/// The five numbers reported per (detector, data set) pair in the paper's tables.
/// All are fractions in `[0, 1]` (not percentages).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RocSummary {
    /// `max over thresholds t of 0.5 * P_fam(score <= t) + 0.5 * P_unf(score > t)`, i.e.
    /// `1 - min_t [0.5 * P_fam(wrongly flagged) + 0.5 * P_unf(missed)]`. The sweep includes
    /// "flag everything" and "flag nothing", so the value is at least 0.5.
    pub detection_accuracy: f64,
    /// Area under the ROC curve with unfamiliar as the positive class; see [`auroc`].
    pub auroc: f64,
    /// Average precision with **familiar as the positive class**, ranked by `-score`
    /// (familiar samples should have the lowest scores). See [`evaluate`] for the sum.
    pub aupr_in: f64,
    /// Average precision with **unfamiliar as the positive class**, ranked by `score`.
    pub aupr_out: f64,
    /// False-positive rate at 95% true-positive rate, with **familiar as the positive class**
    /// (the Hendrycks / ODIN convention): let `t*` be the smallest familiar score such that
    /// at least 95% of familiar samples have `score <= t*` (are accepted as familiar); the
    /// value is the fraction of unfamiliar samples with `score <= t*` (wrongly accepted).
    /// Lower is better.
    pub fpr_at_95_tpr: f64,
}

/// NaN -> +inf (most unfamiliar), -0.0 -> 0.0, so that `total_cmp` is the numeric order and
/// equal numbers compare equal.
fn canon(x: f32) -> f32 {
    if x.is_nan() {
        f32::INFINITY
    } else {
        x + 0.0
    }
}

/// A group of equal (canonical) scores with its class counts.
#[derive(Clone, Copy, Debug)]
struct Group {
    fam: usize,
    unf: usize,
}

/// Sorts all scores ascending and collapses equal scores into groups.
fn groups(familiar: &[f32], unfamiliar: &[f32]) -> Vec<Group> {
    let mut all: Vec<(f32, bool)> =
        familiar.iter().map(|&s| (canon(s), false)).chain(unfamiliar.iter().map(|&s| (canon(s), true))).collect();
    all.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut out: Vec<Group> = Vec::new();
    let mut last: Option<f32> = None;
    for (s, is_unf) in all {
        if last != Some(s) {
            out.push(Group { fam: 0, unf: 0 });
            last = Some(s);
        }
        // `out` is non-empty: a group was pushed on the first iteration.
        if let Some(g) = out.last_mut() {
            if is_unf {
                g.unf += 1;
            } else {
                g.fam += 1;
            }
        }
    }
    out
}

/// Computes all five metrics at once (one sort).
///
/// Average precision (both AUPRs) is the step-wise sum of scikit-learn's
/// `average_precision_score`: walking the distinct scores from "most positive" to "least
/// positive", `AP = sum_k (R_k - R_{k-1}) * P_k`, where `P_k` and `R_k` are precision and
/// recall when everything at least as positive as the k-th distinct score is called positive.
///
/// Returns all-NaN metrics when either set is empty.
pub fn evaluate(familiar: &[f32], unfamiliar: &[f32]) -> RocSummary {
    let nf = familiar.len();
    let nu = unfamiliar.len();
    if nf == 0 || nu == 0 {
        return RocSummary {
            detection_accuracy: f64::NAN,
            auroc: f64::NAN,
            aupr_in: f64::NAN,
            aupr_out: f64::NAN,
            fpr_at_95_tpr: f64::NAN,
        };
    }
    let g = groups(familiar, unfamiliar);
    let (nf_f, nu_f) = (nf as f64, nu as f64);

    let auroc = auroc_from_groups(&g, nf, nu);

    // Detection accuracy: accept (call familiar) the groups below a cut, flag the rest.
    // Cut before group 0 = flag everything: 0.5 * (0 + 1).
    let mut best = 0.5;
    let (mut fam_acc, mut unf_acc) = (0usize, 0usize);
    for gr in &g {
        fam_acc += gr.fam;
        unf_acc += gr.unf;
        let acc = 0.5 * (fam_acc as f64 / nf_f + (nu - unf_acc) as f64 / nu_f);
        if acc > best {
            best = acc;
        }
    }

    // AUPR-out: unfamiliar positive, most positive = highest score, walk descending.
    let (mut tp, mut fp, mut ap_out) = (0usize, 0usize, 0.0f64);
    for gr in g.iter().rev() {
        tp += gr.unf;
        fp += gr.fam;
        if gr.unf > 0 {
            ap_out += (gr.unf as f64 / nu_f) * (tp as f64 / (tp + fp) as f64);
        }
    }

    // AUPR-in: familiar positive scored by -score, most positive = lowest score, ascending.
    let (mut tp, mut fp, mut ap_in) = (0usize, 0usize, 0.0f64);
    for gr in &g {
        tp += gr.fam;
        fp += gr.unf;
        if gr.fam > 0 {
            ap_in += (gr.fam as f64 / nf_f) * (tp as f64 / (tp + fp) as f64);
        }
    }

    // FPR at 95% TPR (familiar positive): first group (ascending) at which the accepted
    // familiar fraction reaches 95%; integer test `20 * accepted >= 19 * nf` avoids rounding.
    let (mut fam_acc, mut unf_acc) = (0usize, 0usize);
    let mut fpr95 = 1.0;
    for gr in &g {
        fam_acc += gr.fam;
        unf_acc += gr.unf;
        if 20 * fam_acc >= 19 * nf {
            fpr95 = unf_acc as f64 / nu_f;
            break;
        }
    }

    RocSummary { detection_accuracy: best, auroc, aupr_in: ap_in, aupr_out: ap_out, fpr_at_95_tpr: fpr95 }
}

fn auroc_from_groups(g: &[Group], nf: usize, nu: usize) -> f64 {
    // Mann-Whitney: sum over unfamiliar samples of #(familiar strictly below) + 0.5 #(tied).
    // Doubled to stay in integers (exact up to 2^64, i.e. ~4e9 samples per class).
    let mut fam_below: u128 = 0;
    let mut twice: u128 = 0;
    for gr in g {
        twice += gr.unf as u128 * (2 * fam_below + gr.fam as u128);
        fam_below += gr.fam as u128;
    }
    twice as f64 / (2.0 * nf as f64 * nu as f64)
}

/// Area under the ROC curve, unfamiliar = positive: the probability that a random
/// unfamiliar sample scores higher than a random familiar one, ties counting 1/2
/// (Mann-Whitney U / (n_fam * n_unf)). Equals the trapezoidal area under [`roc_curve`].
/// All-equal scores give exactly 0.5; an empty set gives NaN.
pub fn auroc(familiar: &[f32], unfamiliar: &[f32]) -> f64 {
    if familiar.is_empty() || unfamiliar.is_empty() {
        return f64::NAN;
    }
    auroc_from_groups(&groups(familiar, unfamiliar), familiar.len(), unfamiliar.len())
}

/// Standard error of an AUROC `a` measured on `n_fam` familiar and `n_unf` unfamiliar samples
/// (Hanley & McNeil 1982, exponential approximation): how finely a test split can resolve a
/// target such as 99.5 %. NaN when either count is 0 or `a` is not in `[0, 1]`.
pub fn auroc_standard_error(a: f64, n_fam: usize, n_unf: usize) -> f64 {
    if n_fam == 0 || n_unf == 0 || !(0.0..=1.0).contains(&a) {
        return f64::NAN;
    }
    let (q1, q2) = (a / (2.0 - a), 2.0 * a * a / (1.0 + a));
    let (nu, nf) = (n_unf as f64, n_fam as f64);
    ((a * (1.0 - a) + (nu - 1.0) * (q1 - a * a) + (nf - 1.0) * (q2 - a * a)) / (nu * nf)).sqrt()
}

/// ROC curve with unfamiliar as the positive class: points `(FPR, TPR)` obtained by lowering
/// the threshold through the distinct scores (flag `score >= s` for each distinct score `s`,
/// highest first). Starts at `(0, 0)`, ends at `(1, 1)`, one point per distinct score (a tie
/// group is one step, possibly diagonal). Empty if either set is empty.
pub fn roc_curve(familiar: &[f32], unfamiliar: &[f32]) -> Vec<(f64, f64)> {
    let (nf, nu) = (familiar.len(), unfamiliar.len());
    if nf == 0 || nu == 0 {
        return Vec::new();
    }
    let g = groups(familiar, unfamiliar);
    let mut pts = Vec::with_capacity(g.len() + 1);
    pts.push((0.0, 0.0));
    let (mut fp, mut tp) = (0usize, 0usize);
    for gr in g.iter().rev() {
        fp += gr.fam;
        tp += gr.unf;
        pts.push((fp as f64 / nf as f64, tp as f64 / nu as f64));
    }
    pts
}

/// The smallest threshold `t` such that the fraction of familiar scores with `score > t`
/// is at most `rate` (alarm rule: `score > t`).
///
/// With the familiar scores sorted ascending `s_1 <= ... <= s_n` and
/// `m = floor(rate * n)` (computed with a 1e-9 tolerance so that e.g. `0.05 * 20` is 1),
/// the answer is `s_{n-m}`: for any smaller `t` more than `m` scores exceed it.
/// Consequences: ties are never split (if the tie group at `s_{n-m}` is large, the realised
/// rate is below `rate`), `rate = 0` gives the maximum familiar score, and `rate >= 1`
/// (`m = n`) gives `-inf` (alarm on everything but `-inf`).
///
/// `rate` is clamped to `[0, 1]` (NaN counts as 0). NaN familiar scores count as `+inf`
/// (so the threshold may be `+inf`). An empty `familiar` set gives `+inf` (never alarm:
/// without calibration data there is no basis for any alarm).
pub fn threshold_for_false_alarm(familiar: &[f32], rate: f64) -> f32 {
    let n = familiar.len();
    if n == 0 {
        return f32::INFINITY;
    }
    let rate = if rate.is_nan() { 0.0 } else { rate.clamp(0.0, 1.0) };
    let m = ((rate * n as f64 + 1e-9).floor() as usize).min(n);
    if m == n {
        return f32::NEG_INFINITY;
    }
    let mut s: Vec<f32> = familiar.iter().map(|&x| canon(x)).collect();
    // The (n-m)-th smallest (1-based) = index n-m-1; selection is O(n).
    let k = n - m - 1;
    let (_, kth, _) = s.select_nth_unstable_by(k, |a, b| a.total_cmp(b));
    *kth
}

/// Rates of the alarm rule `score > threshold`: `(false-alarm rate, true-positive rate)` =
/// (fraction of familiar scores above the threshold, fraction of unfamiliar scores above it).
/// NaN scores count as `+inf` (they alarm unless the threshold is `+inf`); a NaN threshold
/// alarms on nothing. A component is NaN when its set is empty.
pub fn rates_at(familiar: &[f32], unfamiliar: &[f32], threshold: f32) -> (f64, f64) {
    let frac = |v: &[f32]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().filter(|&&s| canon(s) > threshold).count() as f64 / v.len() as f64
        }
    };
    (frac(familiar), frac(unfamiliar))
}

// ---------------------------------------------------------------------------------------------
// Selective classification: is the classifier's answer wrong, and what does rejecting the
// highest-scoring frames buy? Same convention: a higher score is less trusted, so frames are
// kept from the lowest score up.

/// Expected number of errors among the `k` kept frames, `k = 0..=n`, when frames are kept
/// from the lowest score up and ties are kept in random order (inside a tie group the expected
/// count grows linearly). NaN scores count as `+inf` (kept last).
fn expected_errors_kept(scores: &[f32], errors: &[bool]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..scores.len().min(errors.len())).collect();
    idx.sort_by(|&a, &b| canon(scores[a]).total_cmp(&canon(scores[b])));
    let mut out = Vec::with_capacity(idx.len() + 1);
    out.push(0.0);
    let mut i = 0;
    let mut before = 0.0;
    while i < idx.len() {
        let s = canon(scores[idx[i]]);
        let mut j = i;
        let mut e = 0usize;
        while j < idx.len() && canon(scores[idx[j]]) == s {
            e += usize::from(errors[idx[j]]);
            j += 1;
        }
        let g = (j - i) as f64;
        for t in 1..=(j - i) {
            out.push(before + e as f64 * t as f64 / g);
        }
        before += e as f64;
        i = j;
    }
    out
}

/// Risk-coverage curve of selective classification (Geifman & El-Yaniv 2017): keeping the
/// `k` lowest-scoring frames, `k = 1..=n`, the points `(coverage k / n, risk = errors kept /
/// k)`, ties in expectation over a random order. `errors[i]` says whether the classifier's
/// top class is wrong on frame `i`. Empty for no frames.
pub fn risk_coverage(scores: &[f32], errors: &[bool]) -> Vec<(f64, f64)> {
    let e = expected_errors_kept(scores, errors);
    let n = e.len() - 1;
    (1..=n).map(|k| (k as f64 / n as f64, e[k] / k as f64)).collect()
}

/// Area under the risk-coverage curve: the mean of the risk over the coverages `k / n`,
/// `k = 1..=n` (Geifman et al. 2019). Lower is better; a score that rejects every error first
/// reaches [`aurc_optimal`], a random one the error rate. NaN for no frames.
pub fn aurc(scores: &[f32], errors: &[bool]) -> f64 {
    let rc = risk_coverage(scores, errors);
    if rc.is_empty() {
        return f64::NAN;
    }
    rc.iter().map(|p| p.1).sum::<f64>() / rc.len() as f64
}

/// Area under the generalized risk-coverage curve (AUGRC, Traub et al., NeurIPS 2024): the
/// mean over the coverages `k / n` of the share of *all* frames that are kept and wrong,
/// `errors kept / n`; ties in expectation. It weighs every error by how often it is accepted
/// instead of dividing by the coverage, so the low-coverage end does not dominate. Lower is
/// better. NaN for no frames.
pub fn augrc(scores: &[f32], errors: &[bool]) -> f64 {
    let e = expected_errors_kept(scores, errors);
    let n = e.len() - 1;
    if n == 0 {
        return f64::NAN;
    }
    (1..=n).map(|k| e[k] / n as f64).sum::<f64>() / n as f64
}

/// The AURC of an oracle that keeps every correct frame before any wrong one: the floor set
/// by the classifier's error rate. `aurc - aurc_optimal` is the excess AURC (E-AURC).
pub fn aurc_optimal(errors: &[bool]) -> f64 {
    let n = errors.len();
    if n == 0 {
        return f64::NAN;
    }
    let wrong = errors.iter().filter(|&&e| e).count();
    let right = n - wrong;
    (1..=n).map(|k| k.saturating_sub(right) as f64 / k as f64).sum::<f64>() / n as f64
}

/// AUROC of a score for "the classifier's top class is wrong" (wrong = positive): the
/// probability that a random misclassified frame scores higher than a random correctly
/// classified one. NaN when either group is empty.
pub fn misclassification_auroc(scores: &[f32], errors: &[bool]) -> f64 {
    let (mut right, mut wrong) = (Vec::new(), Vec::new());
    for (&s, &e) in scores.iter().zip(errors) {
        if e {
            wrong.push(s);
        } else {
            right.push(s);
        }
    }
    auroc(&right, &wrong)
}

/// Bootstrap standard error of [`aurc`]: the standard deviation of the AURC over `rounds`
/// resamples (with replacement, seeded, reproducible) of the frames. 0 for fewer than two
/// frames or rounds.
pub fn aurc_bootstrap_se(scores: &[f32], errors: &[bool], rounds: usize, seed: u64) -> f64 {
    let n = scores.len().min(errors.len());
    if n < 2 || rounds < 2 {
        return 0.0;
    }
    let mut rng = crate::rng::SplitMix64::new(seed);
    let mut vals = Vec::with_capacity(rounds);
    let (mut s, mut e) = (vec![0.0f32; n], vec![false; n]);
    for _ in 0..rounds {
        for i in 0..n {
            let j = rng.below(n);
            s[i] = scores[j];
            e[i] = errors[j];
        }
        vals.push(aurc(&s, &e));
    }
    let m = vals.iter().sum::<f64>() / rounds as f64;
    (vals.iter().map(|v| (v - m) * (v - m)).sum::<f64>() / (rounds - 1) as f64).sqrt()
}

/// Standard error of a mean of independent estimates with standard errors `se`:
/// `sqrt(sum se_i^2) / k`. NaN for none.
pub fn mean_standard_error(se: &[f64]) -> f64 {
    if se.is_empty() {
        return f64::NAN;
    }
    se.iter().map(|s| s * s).sum::<f64>().sqrt() / se.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_standard_error_hand_computed() {
        // a = 0.9, 40 and 40: Q1 = 0.9/1.1, Q2 = 1.62/1.9;
        // SE^2 = (0.09 + 39 (0.818182 - 0.81) + 39 (0.852632 - 0.81)) / 1600.
        let q1 = 0.9 / 1.1 - 0.81;
        let q2 = 1.62 / 1.9 - 0.81;
        let want = ((0.09 + 39.0 * q1 + 39.0 * q2) / 1600.0f64).sqrt();
        assert!((auroc_standard_error(0.9, 40, 40) - want).abs() < 1e-12);
        assert!((want - 0.0360).abs() < 1e-4, "{want}");
        // A perfect detector has no spread; more samples, less error; nonsense in, NaN out.
        assert_eq!(auroc_standard_error(1.0, 10, 10), 0.0);
        assert!(auroc_standard_error(0.97, 200, 200) < auroc_standard_error(0.97, 40, 40));
        assert!(auroc_standard_error(0.9, 0, 5).is_nan() && auroc_standard_error(1.5, 5, 5).is_nan());
    }

    #[test]
    fn augrc_hand_computed() {
        // Scores 1, 2, 3 with the middle one wrong: kept errors 0, 1, 1 at k = 1, 2, 3;
        // AUGRC = (0 + 1/3 + 1/3) / 3 = 2/9. A tie between the wrong and a right frame
        // counts the error half at k = 1 when both tie for the first place.
        assert!((augrc(&[1.0, 2.0, 3.0], &[false, true, false]) - 2.0 / 9.0).abs() < 1e-12);
        assert!((augrc(&[1.0, 1.0], &[true, false]) - (0.5 / 2.0 + 1.0 / 2.0) / 2.0).abs() < 1e-12);
        assert!(augrc(&[], &[]).is_nan());
    }

    #[test]
    fn canon_maps_nan_and_negative_zero() {
        assert_eq!(canon(f32::NAN), f32::INFINITY);
        assert!(canon(-0.0).is_sign_positive());
    }

    #[test]
    fn groups_collapse_ties() {
        let g = groups(&[0.1, 0.4, 0.4], &[0.4, 0.8]);
        let v: Vec<(usize, usize)> = g.iter().map(|g| (g.fam, g.unf)).collect();
        assert_eq!(v, vec![(1, 0), (2, 1), (0, 1)]);
    }
}
