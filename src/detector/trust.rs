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

use super::forward::ForwardSignal;
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

/// The trust head of a calibration (`[trust]`): an [`Ensemble`] trained for "the classification
/// is wrong" and the Platt scaling that turns its mean logit into `risk`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustHead {
    /// The ranking model (target `harm`).
    pub ensemble: Ensemble,
    /// Its mean logit -> probability.
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
    pub fn train(
        reference: Reference<'_>,
        train: &LabelledRows,
        val: &LabelledRows,
        cfg: &EnsembleConfig,
    ) -> Result<(TrustHead, Vec<TrainReport>), DetectorError> {
        let (ensemble, reports) = Ensemble::train(reference, train, val, cfg)?;
        let s: Vec<f32> = ensemble.members_logits(&val.features, &val.logits, val.quality.as_ref())?;
        let platt = match Platt::fit(&s, &val.labels) {
            // A small validation set may hold only wrong (or only right) frames: then the
            // training rows join it (a slightly optimistic scaling beats none).
            Err(DetectorError::MissingClass { .. }) => {
                let mut s = s;
                s.extend(ensemble.members_logits(&train.features, &train.logits, train.quality.as_ref())?);
                let y: Vec<u8> = val.labels.iter().chain(&train.labels).copied().collect();
                Platt::fit(&s, &y)?
            }
            other => other?,
        };
        Ok((TrustHead { ensemble, platt, held_out: None }, reports))
    }

    /// Checks a deserialised head.
    pub fn validate(&self) -> Result<(), DetectorError> {
        self.ensemble.validate()?;
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
        self.platt.apply(self.ensemble.logit_row(frame))
    }

    /// `risk` of every row (`features` `[N, P]`, `logits` `[N, C]`, `quality` `[N, Q]`,
    /// row-aligned); NaN everywhere on an input error.
    pub fn risk(&self, features: &Array2<f32>, logits: &Array2<f32>, quality: Option<&Array2<f32>>) -> Vec<f32> {
        match self.ensemble.members_logits(features, logits, quality) {
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
