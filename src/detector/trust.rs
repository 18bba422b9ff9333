//! The trust head: a calibrated probability `risk` in `[0, 1]` that *this frame's
//! classification is wrong* (the classifier's top class misses, or the frame is not a
//! familiar class at all), next to the camera-health score of the main detector.
//!
//! One detector cannot serve both questions: the camera-health score is trained to flag a
//! dirty lens before the classifier fails (the union target), so it ranks the classifier's own
//! errors worse than the softmax does. The trust head is a second [`Ensemble`] on the same
//! inputs (the log-standardised gradient norms) plus the forward signals that rank errors best
//! in the literature ([`ForwardSignal::TRUST`]: MSP, max logit, margin, entropy,
//! MaxLogit-pNorm, DOCTOR's `sum p^2`), trained with the [`Target::Harm`] labels (wrong or
//! OOD = 1), and then Platt-scaled on held-out rows so that `risk` is a probability: of the
//! frames with `risk` near 0.3, about 30 % are misclassified (on data like the calibration's).
//!
//! It costs a few hundred multiply-adds per member per frame on features the gradient graph
//! computes anyway.

use ndarray::Array2;

use super::forward::{wrong_log_odds, ForwardSignal};
use super::{
    DetectorError, Ensemble, EnsembleConfig, FrameInputs, LabelledRows, MlpConfig, Reference, Target, TrainReport,
};

/// Platt scaling `p = sigmoid(a s + b)` of a score `s`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Platt {
    /// Slope.
    pub a: f64,
    /// Intercept.
    pub b: f64,
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

impl Platt {
    /// Fits `a, b` by maximum likelihood (Newton's method on the binary cross-entropy) on
    /// `scores` with 0/1 `labels`, using Platt's smoothed targets (`(n1 + 1) / (n1 + 2)` and
    /// `1 / (n0 + 2)`) so that separable data do not drive the slope to infinity. Non-finite
    /// scores are skipped. Errors when a class is missing.
    pub fn fit(scores: &[f32], labels: &[u8]) -> Result<Platt, DetectorError> {
        if scores.len() != labels.len() {
            return Err(DetectorError::LabelCount { what: "platt", samples: scores.len(), labels: labels.len() });
        }
        let pts: Vec<(f64, u8)> =
            scores.iter().zip(labels).filter(|(s, _)| s.is_finite()).map(|(&s, &y)| (f64::from(s), y)).collect();
        let n1 = pts.iter().filter(|p| p.1 == 1).count();
        let n0 = pts.len() - n1;
        if n1 == 0 || n0 == 0 {
            return Err(DetectorError::MissingClass { what: "platt", class: usize::from(n1 == 0) });
        }
        let hi = (n1 as f64 + 1.0) / (n1 as f64 + 2.0);
        let lo = 1.0 / (n0 as f64 + 2.0);
        let (mut a, mut b) = (1.0f64, 0.0f64);
        let loss = |a: f64, b: f64| -> f64 {
            pts.iter()
                .map(|&(s, y)| {
                    let z = a * s + b;
                    let t = if y == 1 { hi } else { lo };
                    // softplus(z) - t z
                    (if z > 0.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() }) - t * z
                })
                .sum()
        };
        let mut cur = loss(a, b);
        for _ in 0..100 {
            let (mut ga, mut gb, mut haa, mut hab, mut hbb) = (0.0, 0.0, 0.0, 0.0, 0.0);
            for &(s, y) in &pts {
                let p = sigmoid(a * s + b);
                let t = if y == 1 { hi } else { lo };
                let w = (p * (1.0 - p)).max(1e-12);
                ga += (p - t) * s;
                gb += p - t;
                haa += w * s * s;
                hab += w * s;
                hbb += w;
            }
            let det = haa * hbb - hab * hab;
            if det.abs() < 1e-300 {
                break;
            }
            let (da, db) = ((hbb * ga - hab * gb) / det, (haa * gb - hab * ga) / det);
            // Backtracking: Newton can overshoot where the sigmoid saturates.
            let mut step = 1.0;
            let mut improved = false;
            while step > 1e-6 {
                let (na, nb) = (a - step * da, b - step * db);
                let l = loss(na, nb);
                if l <= cur {
                    improved = cur - l > 1e-12 * cur.abs().max(1.0);
                    (a, b, cur) = (na, nb, l);
                    break;
                }
                step *= 0.5;
            }
            if !improved {
                break;
            }
        }
        if !(a.is_finite() && b.is_finite()) {
            return Err(DetectorError::Config(format!("Platt scaling diverged (a = {a}, b = {b})")));
        }
        Ok(Platt { a, b })
    }

    /// The probability of score `s` (NaN stays NaN).
    pub fn apply(&self, s: f32) -> f32 {
        sigmoid(self.a * f64::from(s) + self.b) as f32
    }
}

/// Held-out numbers of a fitted trust head (on rows neither training nor Platt scaling saw).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustSummary {
    /// Frames.
    pub n: usize,
    /// Of which wrong (label 1).
    pub n_wrong: usize,
    /// AUROC of `risk` for "wrong".
    pub auroc: f64,
    /// Expected calibration error of `risk` ([`ece`], 15 bins).
    pub ece: f64,
}

/// The softmax anchor of a trust head: the classifier's own log-odds that its top class is
/// wrong ([`super::forward::wrong_log_odds`]) at the temperature that fits its true classes
/// best (Guo et al. 2017), Platt-scaled on held-out rows into a calibrated log-odds and added,
/// times `weight`, to the ensemble's logit.
///
/// Why: the ensemble ranks errors better than the softmax on the degradations it was trained
/// on, but on a family it never saw its gradient inputs move in ways it did not learn, and it
/// fell behind MSP on two of nine held-out families. Adding the softmax's own evidence (a
/// product of the two experts' odds) keeps the head close to MSP where the ensemble is unsure
/// and lets it lead where it is not; `weight` was chosen on the validation rows of held-out
/// families (`docs/guide/detectors.md`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Anchor {
    /// The softmax temperature ([`fit_temperature`] on the validation rows' true classes).
    pub temperature: f32,
    /// The softmax log-odds -> calibrated log-odds.
    pub platt: Platt,
    /// Its weight next to the ensemble's logit.
    pub weight: f64,
}

impl Anchor {
    /// Fits the Platt scaling of the softmax log-odds at `temperature` of the rows of `logits`
    /// (one or more matrices, in order) to the 0/1 `labels`.
    pub fn fit(logits: &[&Array2<f32>], labels: &[u8], temperature: f32, weight: f64) -> Result<Anchor, DetectorError> {
        let m: Vec<f32> =
            logits.iter().flat_map(|l| l.outer_iter()).map(|z| log_odds_at(&z.to_vec(), temperature)).collect();
        Ok(Anchor { temperature, platt: Platt::fit(&m, labels)?, weight })
    }

    /// The weighted calibrated log-odds of one logits row (NaN on a bad row).
    pub fn term(&self, logits: &[f32]) -> f32 {
        let m = f64::from(log_odds_at(logits, self.temperature));
        (self.weight * (self.platt.a * m + self.platt.b)) as f32
    }
}

fn log_odds_at(logits: &[f32], t: f32) -> f32 {
    let z: Vec<f32> = logits.iter().map(|&v| v / t).collect();
    wrong_log_odds(&z)
}

/// Negative log-likelihood of the true classes (rows with `None` or an out-of-range class
/// skipped) under `softmax(z / t)`.
fn nll(logits: &Array2<f32>, classes: &[Option<usize>], t: f64) -> f64 {
    let mut s = 0.0;
    for (z, y) in logits.outer_iter().zip(classes) {
        let Some(zy) = y.and_then(|y| z.get(y)) else { continue };
        let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v) / t));
        let lse = m + z.iter().map(|&v| (f64::from(v) / t - m).exp()).sum::<f64>().ln();
        s += lse - f64::from(*zy) / t;
    }
    s
}

/// Temperature scaling (Guo et al. 2017): the `T` in `[0.05, 50]` minimising the negative
/// log-likelihood of the true classes (`None`: a row of no class, skipped) under
/// `softmax(z / T)`, by golden-section search over `ln T`. 1 when no row has a class.
pub fn fit_temperature(logits: &Array2<f32>, classes: &[Option<usize>]) -> f32 {
    if !classes.iter().any(Option::is_some) {
        return 1.0;
    }
    let f = |lt: f64| nll(logits, classes, lt.exp());
    let (mut a, mut b) = (0.05f64.ln(), 50f64.ln());
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    for _ in 0..60 {
        if fc < fd {
            (b, d, fd) = (d, c, fc);
            c = b - g * (b - a);
            fc = f(c);
        } else {
            (a, c, fc) = (c, d, fd);
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp() as f32
}

/// The weight of the softmax anchor in a new trust head ([`Anchor`]), chosen on the
/// validation rows of held-out degradation families (`docs/guide/evaluation.md`).
pub const ANCHOR_WEIGHT: f64 = 0.7;

/// The trust head of a calibration (`[trust]`): an [`Ensemble`] trained for "the classification
/// is wrong", the softmax [`Anchor`] added to its mean logit, and the Platt scaling that turns
/// the sum into `risk`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustHead {
    /// The ranking model (target `harm`).
    pub ensemble: Ensemble,
    /// The softmax anchor (absent in files written before it existed: the score is then the
    /// ensemble's logit alone, as it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Anchor>,
    /// Its score (mean logit + anchor) -> probability.
    pub platt: Platt,
    /// How it did on held-out rows, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out: Option<TrustSummary>,
}

/// Members of the trust head's ensemble.
pub const TRUST_MEMBERS: usize = 5;

impl TrustHead {
    /// The ensemble configuration of the trust head for MLP settings `mlp`. It does not read
    /// the image-quality measures: with them it ranked the errors of held-out degradation
    /// families worse (beat MSP in 5 of 9 families against 7 of 9 without, docs/guide/detectors.md).
    pub fn config(mlp: &MlpConfig) -> EnsembleConfig {
        EnsembleConfig {
            target: Target::Harm,
            forward: ForwardSignal::TRUST.to_vec(),
            members: TRUST_MEMBERS,
            // Its own seeds: the camera-health ensemble uses seed, seed + 1, ...
            mlp: MlpConfig { seed: mlp.seed.wrapping_add(1000), ..mlp.clone() },
            quality: false,
        }
    }

    /// Trains the ensemble on `train` (labels: [`Target::Harm`]), early-stopping on `val`, the
    /// standardisers fitted on the reference rows (familiar training images); then fits the
    /// Platt scaling on `val` (on `val` and `train` together when `val` lacks a class).
    ///
    /// With `anchor_weight > 0` the softmax [`Anchor`] joins the score before the Platt
    /// scaling: its temperature fitted on `val_classes` (the true class of each validation
    /// row, `None` for frames of no class), its scaling on the same rows as the head's.
    pub fn train(
        reference: Reference<'_>,
        train: &LabelledRows,
        val: &LabelledRows,
        cfg: &EnsembleConfig,
        (anchor_weight, val_classes): (f64, &[Option<usize>]),
    ) -> Result<(TrustHead, Vec<TrainReport>), DetectorError> {
        let (ensemble, reports) = Ensemble::train(reference, train, val, cfg)?;
        let mut head = TrustHead { ensemble, anchor: None, platt: Platt { a: 1.0, b: 0.0 }, held_out: None };
        // A small validation set may hold only wrong (or only right) frames: then the
        // training rows join it (a slightly optimistic scaling beats none).
        let fit_rows = if val.labels.contains(&0) && val.labels.contains(&1) { vec![val] } else { vec![val, train] };
        let logits: Vec<&Array2<f32>> = fit_rows.iter().map(|r| &r.logits).collect();
        let labels: Vec<u8> = fit_rows.iter().flat_map(|r| r.labels.iter().copied()).collect();
        if anchor_weight > 0.0 {
            let t = fit_temperature(&val.logits, val_classes);
            head.anchor = Some(Anchor::fit(&logits, &labels, t, anchor_weight)?);
        }
        let mut s = Vec::with_capacity(labels.len());
        for r in &fit_rows {
            s.extend(head.scores(&r.features, &r.logits, r.quality.as_ref())?);
        }
        head.platt = Platt::fit(&s, &labels)?;
        Ok((head, reports))
    }

    /// The score before the Platt scaling: the ensemble's mean logit plus the anchor's term.
    fn scores(
        &self,
        features: &Array2<f32>,
        logits: &Array2<f32>,
        quality: Option<&Array2<f32>>,
    ) -> Result<Vec<f32>, DetectorError> {
        let mut s = self.ensemble.members_logits(features, logits, quality)?;
        if let Some(a) = &self.anchor {
            for (v, z) in s.iter_mut().zip(logits.outer_iter()) {
                *v += a.term(&z.to_vec());
            }
        }
        Ok(s)
    }

    /// Checks a deserialised head.
    pub fn validate(&self) -> Result<(), DetectorError> {
        self.ensemble.validate()?;
        if let Some(a) = &self.anchor {
            let finite = [a.platt.a, a.platt.b, a.weight, f64::from(a.temperature)].iter().all(|v| v.is_finite());
            if !(finite && a.temperature > 0.0) {
                return Err(DetectorError::InvalidModel(format!(
                    "trust head anchor a = {}, b = {}, weight = {} must be finite and its temperature {} positive",
                    a.platt.a, a.platt.b, a.weight, a.temperature
                )));
            }
        }
        if !(self.platt.a.is_finite() && self.platt.b.is_finite()) {
            return Err(DetectorError::InvalidModel(format!(
                "trust head Platt scaling a = {}, b = {} must be finite",
                self.platt.a, self.platt.b
            )));
        }
        Ok(())
    }

    /// `risk` of one frame, in `[0, 1]`; NaN on wrong lengths or non-finite inputs (never
    /// panics).
    pub fn risk_row(&self, frame: FrameInputs<'_>) -> f32 {
        let anchor = self.anchor.map_or(0.0, |a| a.term(frame.logits));
        self.platt.apply(self.ensemble.logit_row(frame) + anchor)
    }

    /// `risk` of every row (`features` `[N, P]`, `logits` `[N, C]`, `quality` `[N, Q]`,
    /// row-aligned); NaN everywhere on an input error.
    pub fn risk(&self, features: &Array2<f32>, logits: &Array2<f32>, quality: Option<&Array2<f32>>) -> Vec<f32> {
        match self.scores(features, logits, quality) {
            Ok(s) => s.into_iter().map(|v| self.platt.apply(v)).collect(),
            Err(_) => vec![f32::NAN; features.nrows()],
        }
    }
}

/// One bin of a reliability diagram.
#[derive(Clone, Debug, PartialEq)]
pub struct ReliabilityBin {
    /// Lower edge of the bin (`[lo, lo + 1/bins)`, the last bin closed).
    pub lo: f64,
    /// Frames in the bin.
    pub n: usize,
    /// Their mean predicted risk.
    pub mean_risk: f64,
    /// The share of them that is wrong.
    pub error_rate: f64,
}

/// The reliability diagram of `risk` against `wrong` in `bins` equal-width bins over `[0, 1]`
/// (non-finite risks skipped; empty bins have `n = 0` and NaN means).
pub fn reliability(risk: &[f32], wrong: &[bool], bins: usize) -> Vec<ReliabilityBin> {
    let bins = bins.max(1);
    let mut acc = vec![(0usize, 0.0f64, 0usize); bins];
    for (&r, &w) in risk.iter().zip(wrong) {
        if !r.is_finite() {
            continue;
        }
        let r = f64::from(r).clamp(0.0, 1.0);
        let i = ((r * bins as f64) as usize).min(bins - 1);
        acc[i].0 += 1;
        acc[i].1 += r;
        acc[i].2 += usize::from(w);
    }
    acc.iter()
        .enumerate()
        .map(|(i, &(n, s, e))| ReliabilityBin {
            lo: i as f64 / bins as f64,
            n,
            mean_risk: if n > 0 { s / n as f64 } else { f64::NAN },
            error_rate: if n > 0 { e as f64 / n as f64 } else { f64::NAN },
        })
        .collect()
}

/// Expected calibration error (Naeini et al. 2015; Guo et al. 2017) of `risk` as a probability
/// of `wrong`: `sum_b n_b / n |mean risk_b - error rate_b|` over `bins` equal-width bins. NaN
/// for no finite risk.
pub fn ece(risk: &[f32], wrong: &[bool], bins: usize) -> f64 {
    let r = reliability(risk, wrong, bins);
    let n: usize = r.iter().map(|b| b.n).sum();
    if n == 0 {
        return f64::NAN;
    }
    r.iter().filter(|b| b.n > 0).map(|b| b.n as f64 / n as f64 * (b.mean_risk - b.error_rate).abs()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platt_recovers_a_known_logistic() {
        // Labels drawn from sigmoid(2 s - 1): the fit comes back near (2, -1).
        let mut r = crate::rng::SplitMix64::new(7);
        let mut s = Vec::new();
        let mut y = Vec::new();
        for _ in 0..20000 {
            let x = (r.normal() * 1.5) as f32;
            let p = sigmoid(2.0 * f64::from(x) - 1.0);
            s.push(x);
            y.push(u8::from(r.next_f64() < p));
        }
        let p = Platt::fit(&s, &y).unwrap();
        assert!((p.a - 2.0).abs() < 0.1 && (p.b + 1.0).abs() < 0.1, "{p:?}");
        // Separable data stay finite (smoothed targets); a missing class is an error.
        let q = Platt::fit(&[-1.0, -2.0, 1.0, 2.0], &[0, 0, 1, 1]).unwrap();
        assert!(q.a.is_finite() && q.a > 0.0 && q.apply(5.0) > 0.5 && q.apply(-5.0) < 0.5);
        assert!(Platt::fit(&[1.0, 2.0], &[1, 1]).is_err());
        assert!(Platt::fit(&[1.0], &[1, 0]).is_err());
        assert!(q.apply(f32::NAN).is_nan());
    }

    #[test]
    fn the_anchor_is_the_softmax_log_odds_platt_scaled_and_weighted() {
        // z = [0, ln 3]: MSP 3/4, log-odds of wrong ln(1/3).
        let z = [0.0, 3f32.ln()];
        assert!((wrong_log_odds(&z) + 3f32.ln()).abs() < 1e-6);
        let a = Anchor { temperature: 1.0, platt: Platt { a: 2.0, b: 1.0 }, weight: 0.5 };
        assert!((a.term(&z) - 0.5 * (1.0 - 2.0 * 3f32.ln())).abs() < 1e-6);
        // At T = 2 the logits halve: z / 2 = [0, ln sqrt 3].
        let a2 = Anchor { temperature: 2.0, ..a };
        assert!((a2.term(&z) - 0.5 * (1.0 - 3f32.ln())).abs() < 1e-6);
        assert!(a.term(&[f32::NAN, 1.0]).is_nan() && a.term(&[]).is_nan());
        // Far beyond f32's MSP resolution the log-odds keep ranking; a lone class stays finite.
        assert!(wrong_log_odds(&[0.0, 30.0]) < wrong_log_odds(&[0.0, 20.0]));
        assert!(wrong_log_odds(&[5.0]).is_finite());
        // Fitted: the Platt slope is positive where a flat softmax means wrong.
        let l = ndarray::array![[0.0f32, 4.0], [0.0, 5.0], [0.0, 0.5], [0.0, 0.2], [0.0, 3.0], [0.0, 1.0]];
        let f = Anchor::fit(&[&l], &[0, 0, 1, 1, 0, 1], 1.0, 1.0).unwrap();
        assert!(f.platt.a > 0.0 && f.term(&[0.0, 0.1]) > f.term(&[0.0, 6.0]), "{f:?}");
    }

    #[test]
    fn temperature_scaling_recovers_the_generating_temperature() {
        // Classes drawn from softmax(z / 2): the NLL is lowest near T = 2.
        let mut r = crate::rng::SplitMix64::new(3);
        let n = 4000;
        let mut l = Array2::zeros((n, 4));
        let mut classes = Vec::new();
        for i in 0..n {
            let z: Vec<f64> = (0..4).map(|_| 3.0 * r.normal()).collect();
            let e: Vec<f64> = z.iter().map(|v| (v / 2.0).exp()).collect();
            let u = r.next_f64() * e.iter().sum::<f64>();
            let mut acc = 0.0;
            let y = e.iter().position(|v| {
                acc += v;
                acc >= u
            });
            for (j, v) in z.iter().enumerate() {
                l[[i, j]] = *v as f32;
            }
            classes.push(if i % 10 == 0 { None } else { y });
        }
        let t = fit_temperature(&l, &classes);
        assert!((t - 2.0).abs() < 0.15, "{t}");
        assert_eq!(fit_temperature(&l, &vec![None; n]), 1.0);
    }

    #[test]
    fn ece_and_reliability_hand_computed() {
        // Bin [0, 0.5): risks 0.1, 0.3 (mean 0.2), one wrong of two (0.5): gap 0.3.
        // Bin [0.5, 1]: risks 0.9, 1.0 (mean 0.95), both wrong (1.0): gap 0.05.
        let risk = [0.1, 0.3, 0.9, 1.0, f32::NAN];
        let wrong = [false, true, true, true, true];
        let r = reliability(&risk, &wrong, 2);
        assert_eq!((r[0].n, r[1].n), (2, 2));
        assert!((r[0].mean_risk - 0.2).abs() < 1e-7 && (r[0].error_rate - 0.5).abs() < 1e-12);
        assert!((ece(&risk, &wrong, 2) - (0.5 * 0.3 + 0.5 * 0.05)).abs() < 1e-7);
        // Perfect calibration: risk 0.25 with a quarter wrong.
        let w = [true, false, false, false];
        assert!(ece(&[0.25; 4], &w, 10).abs() < 1e-7);
        assert!(ece(&[], &[], 10).is_nan());
        assert!(reliability(&[0.5], &[true], 4)[3].mean_risk.is_nan());
    }
}
