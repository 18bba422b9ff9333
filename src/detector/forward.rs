//! Forward-only signals: confidence statistics of a frame's logits. The gradient graph outputs
//! the logits anyway, so these cost nothing; the `risk` detector appends them (standardised,
//! without the log transform: they can be negative) to the gradient features.
//!
//! Every signal is oriented as "confidence" (higher = more confident), as in the literature;
//! the detector learns the sign. A logits row that is empty or holds a NaN yields NaN for
//! every signal (the calibration then scores the frame +inf, most unfamiliar).

use ndarray::Array2;

/// One forward-only signal of a logits row `z` (C classes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardSignal {
    /// `max_k z_k` (MaxLogit, Hendrycks et al. 2022).
    MaxLogit,
    /// `ln sum_k exp z_k`, the negative free energy (Liu et al. 2020).
    Logsumexp,
    /// Top-1 minus top-2 logit (0 with one class).
    Margin,
    /// Maximum softmax probability (Hendrycks & Gimpel 2017), in `(0, 1]`.
    Msp,
    /// `sum_k p_k ln p_k`, the negative entropy of the softmax, in `[-ln C, 0]`.
    NegEntropy,
    /// MaxLogit-pNorm with p = 2 (Gomes et al., UAI 2024): the top logit of the centred logits
    /// divided by their L2 norm, in `[0, 1]` (0 when every logit is equal).
    MaxLogitPnorm,
    /// DOCTOR's `sum_k p_k^2` (Granese et al., NeurIPS 2021: `1 - g(x)` of the alpha
    /// discriminator), in `[1/C, 1]`.
    Gini,
    /// `-ln(1 - MSP)`, the negative log of the probability mass off the top class, computed
    /// without cancellation: MSP itself saturates at 1 in f32 where the classifier is very
    /// confident, this keeps ranking those frames (capped at 100 for a lone class).
    NegLogResidual,
}

impl ForwardSignal {
    /// Every signal, in a fixed order.
    pub const ALL: [ForwardSignal; 5] = [
        ForwardSignal::MaxLogit,
        ForwardSignal::Logsumexp,
        ForwardSignal::Margin,
        ForwardSignal::Msp,
        ForwardSignal::NegEntropy,
    ];

    /// The inputs of the trust head ([`super::trust`]): every signal of [`ALL`](Self::ALL)
    /// plus the two confidence scores that rank errors better than MSP in the literature.
    pub const TRUST: [ForwardSignal; 8] = [
        ForwardSignal::MaxLogit,
        ForwardSignal::Logsumexp,
        ForwardSignal::Margin,
        ForwardSignal::Msp,
        ForwardSignal::NegEntropy,
        ForwardSignal::MaxLogitPnorm,
        ForwardSignal::Gini,
        ForwardSignal::NegLogResidual,
    ];

    /// The name used in calibration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ForwardSignal::MaxLogitPnorm => "max_logit_pnorm",
            ForwardSignal::Gini => "gini",
            ForwardSignal::NegLogResidual => "neg_log_residual",
            ForwardSignal::MaxLogit => "max_logit",
            ForwardSignal::Logsumexp => "logsumexp",
            ForwardSignal::Margin => "margin",
            ForwardSignal::Msp => "msp",
            ForwardSignal::NegEntropy => "neg_entropy",
        }
    }

    /// Parses a comma-separated list of names (`all` = [`ALL`](Self::ALL), `none` or empty = no
    /// signal).
    pub fn parse_list(s: &str) -> Result<Vec<ForwardSignal>, String> {
        match s.trim() {
            "" | "none" => Ok(Vec::new()),
            "all" => Ok(Self::ALL.to_vec()),
            list => list.split(',').map(|p| p.trim().parse()).collect(),
        }
    }
}

impl std::str::FromStr for ForwardSignal {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::TRUST.into_iter().find(|f| f.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Self::TRUST.iter().map(|f| f.name()).collect();
            format!("unknown forward signal '{s}' (expected one of {})", names.join(", "))
        })
    }
}

/// The statistics every signal is computed from, in f64.
struct Stats {
    top1: f64,
    top2: f64,
    lse: f64,
    neg_entropy: f64,
    /// `sum_k p_k^2`.
    gini: f64,
    /// Top centred logit over the centred logits' L2 norm.
    pnorm: f64,
    /// `ln(sum_{k != top} exp z_k) - lse`, i.e. `ln(1 - MSP)`.
    log_residual: f64,
}

fn stats(logits: &[f32]) -> Option<Stats> {
    if logits.is_empty() || logits.iter().any(|v| v.is_nan()) {
        return None;
    }
    let (mut top1, mut top2) = (f64::NEG_INFINITY, f64::NEG_INFINITY);
    for &v in logits {
        let v = f64::from(v);
        if v > top1 {
            top2 = top1;
            top1 = v;
        } else if v > top2 {
            top2 = v;
        }
    }
    if logits.len() == 1 {
        top2 = top1;
    }
    // Shifted by the maximum so exp never overflows; sum >= 1.
    let sum: f64 = logits.iter().map(|&v| (f64::from(v) - top1).exp()).sum();
    let lse = top1 + sum.ln();
    // sum p ln p with ln p = z - lse; terms with p = 0 contribute 0.
    let neg_entropy = logits
        .iter()
        .map(|&v| {
            let lp = f64::from(v) - lse;
            let p = lp.exp();
            if p > 0.0 {
                p * lp
            } else {
                0.0
            }
        })
        .sum();
    let gini = logits.iter().map(|&v| (f64::from(v) - lse).exp().powi(2)).sum();
    let mean = logits.iter().map(|&v| f64::from(v)).sum::<f64>() / logits.len() as f64;
    let norm = logits.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>().sqrt();
    let pnorm = if norm > 0.0 { (top1 - mean) / norm } else { 0.0 };
    // Every class but the (first) top one, shifted by the top logit.
    let top_at = logits.iter().position(|&v| f64::from(v) == top1).unwrap_or(0);
    let rest: f64 =
        logits.iter().enumerate().filter(|&(i, _)| i != top_at).map(|(_, &v)| (f64::from(v) - top1).exp()).sum();
    let log_residual = if rest > 0.0 { top1 + rest.ln() - lse } else { -100.0 };
    Some(Stats { top1, top2, lse, neg_entropy, gini, pnorm, log_residual })
}

/// The softmax's own log-odds that its top class is wrong, `ln(1 - MSP) - ln MSP`, computed
/// without cancellation (at least -100 - ln MSP for a lone class); NaN when the row is empty or
/// holds a NaN. The trust head's anchor ([`super::trust::Anchor`]).
pub fn wrong_log_odds(logits: &[f32]) -> f32 {
    match stats(logits) {
        Some(s) => (s.log_residual - (s.top1 - s.lse)) as f32,
        None => f32::NAN,
    }
}

/// The signals `names` of one logits row, in that order. NaN for every signal when the row is
/// empty or holds a NaN.
pub fn signals(names: &[ForwardSignal], logits: &[f32]) -> Vec<f32> {
    let Some(s) = stats(logits) else { return vec![f32::NAN; names.len()] };
    names
        .iter()
        .map(|n| {
            let v = match n {
                ForwardSignal::MaxLogit => s.top1,
                ForwardSignal::Logsumexp => s.lse,
                ForwardSignal::Margin => s.top1 - s.top2,
                ForwardSignal::Msp => (s.top1 - s.lse).exp(),
                ForwardSignal::NegEntropy => s.neg_entropy,
                ForwardSignal::MaxLogitPnorm => s.pnorm,
                ForwardSignal::Gini => s.gini,
                ForwardSignal::NegLogResidual => (-s.log_residual).min(100.0),
            };
            v as f32
        })
        .collect()
}

/// [`signals`] of every row of `logits` (`[N, C]` -> `[N, names.len()]`).
pub fn signals_batch(names: &[ForwardSignal], logits: &Array2<f32>) -> Array2<f32> {
    let mut out = Array2::zeros((logits.nrows(), names.len()));
    for (src, mut dst) in logits.rows().into_iter().zip(out.rows_mut()) {
        let v = signals(names, &src.to_vec());
        dst.iter_mut().zip(v).for_each(|(d, v)| *d = v);
    }
    out
}

/// Index of the largest logit (the top-1 prediction); `None` for an empty row or a NaN.
pub fn argmax(logits: &[f32]) -> Option<usize> {
    if logits.iter().any(|v| v.is_nan()) {
        return None;
    }
    logits
        .iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f32)>, (i, &v)| match best {
            Some((_, b)) if b >= v => best,
            _ => Some((i, v)),
        })
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(f: ForwardSignal, z: &[f32]) -> f32 {
        signals(&[f], z)[0]
    }

    #[test]
    fn hand_computed_values() {
        // z = [0, ln 2, ln 3]: exp z = [1, 2, 3], sum 6, p = [1/6, 1/3, 1/2].
        let z = [0.0, 2f32.ln(), 3f32.ln()];
        assert!((one(ForwardSignal::MaxLogit, &z) - 3f32.ln()).abs() < 1e-6);
        assert!((one(ForwardSignal::Logsumexp, &z) - 6f32.ln()).abs() < 1e-6);
        assert!((one(ForwardSignal::Margin, &z) - (3f32 / 2.0).ln()).abs() < 1e-6);
        assert!((one(ForwardSignal::Msp, &z) - 0.5).abs() < 1e-6);
        let ne = (1.0 / 6.0) * (1f64 / 6.0).ln() + (1.0 / 3.0) * (1f64 / 3.0).ln() + 0.5 * 0.5f64.ln();
        assert!((f64::from(one(ForwardSignal::NegEntropy, &z)) - ne).abs() < 1e-6);
        // Centred z - mean: ln 6 / 3 = m; (z - m) norm; gini = 1/36 + 1/9 + 1/4.
        let m = 6f64.ln() / 3.0;
        let c: Vec<f64> = z.iter().map(|&v| f64::from(v) - m).collect();
        let norm = c.iter().map(|v| v * v).sum::<f64>().sqrt();
        assert!((f64::from(one(ForwardSignal::MaxLogitPnorm, &z)) - c[2] / norm).abs() < 1e-6);
        assert!((f64::from(one(ForwardSignal::Gini, &z)) - (1.0 / 36.0 + 1.0 / 9.0 + 0.25)).abs() < 1e-6);
        // 1 - MSP = 1/2.
        assert!((one(ForwardSignal::NegLogResidual, &z) - 2f32.ln()).abs() < 1e-6);
        // Where MSP is 1.0 in f32, the residual still ranks: 1 - p = e^-30 / (1 + e^-30).
        assert_eq!(one(ForwardSignal::Msp, &[30.0, 0.0]), 1.0);
        assert!((one(ForwardSignal::NegLogResidual, &[30.0, 0.0]) - 30.0).abs() < 1e-4);
        assert_eq!(one(ForwardSignal::NegLogResidual, &[7.0]), 100.0);
        // Order follows `names`.
        let all = signals(&ForwardSignal::ALL, &z);
        assert_eq!(all.len(), 5);
        assert_eq!(all[3], one(ForwardSignal::Msp, &z));
    }

    #[test]
    fn uniform_ties_and_one_class() {
        // Four equal logits: margin 0, msp 1/4, entropy ln 4, lse = z + ln 4.
        let z = [2.0f32; 4];
        assert_eq!(one(ForwardSignal::Margin, &z), 0.0);
        assert!((one(ForwardSignal::Msp, &z) - 0.25).abs() < 1e-7);
        assert!((one(ForwardSignal::NegEntropy, &z) + 4f32.ln()).abs() < 1e-6);
        assert!((one(ForwardSignal::Logsumexp, &z) - (2.0 + 4f32.ln())).abs() < 1e-6);
        // One class: certain, margin 0.
        assert_eq!(signals(&ForwardSignal::ALL, &[7.0]), vec![7.0, 7.0, 0.0, 1.0, 0.0]);
        assert_eq!(signals(&[ForwardSignal::MaxLogitPnorm, ForwardSignal::Gini], &z), vec![0.0, 0.25]);
    }

    #[test]
    fn large_logits_stay_finite_and_garbage_is_nan() {
        let z = [1000.0f32, -1000.0];
        let s = signals(&ForwardSignal::ALL, &z);
        assert_eq!(s, vec![1000.0, 1000.0, 2000.0, 1.0, 0.0]);
        assert!(signals(&ForwardSignal::ALL, &[]).iter().all(|v| v.is_nan()));
        assert!(signals(&ForwardSignal::ALL, &[1.0, f32::NAN]).iter().all(|v| v.is_nan()));
        assert!(signals(&[], &[1.0]).is_empty());
    }

    #[test]
    fn names_parse_and_batch_matches_rows() {
        for f in ForwardSignal::TRUST {
            assert_eq!(f.name().parse::<ForwardSignal>().unwrap(), f);
        }
        assert_eq!(ForwardSignal::parse_list("all").unwrap(), ForwardSignal::ALL.to_vec());
        assert!(ForwardSignal::parse_list("none").unwrap().is_empty());
        assert_eq!(ForwardSignal::parse_list("msp, margin").unwrap(), vec![ForwardSignal::Msp, ForwardSignal::Margin]);
        assert!(ForwardSignal::parse_list("energy").unwrap_err().contains("logsumexp"));
        let z = ndarray::array![[0.0f32, 1.0], [3.0, -1.0]];
        let b = signals_batch(&ForwardSignal::ALL, &z);
        assert_eq!(b.row(1).to_vec(), signals(&ForwardSignal::ALL, &[3.0, -1.0]));
        assert_eq!(argmax(&[0.0, 3.0, 3.0, 1.0]), Some(1));
        assert_eq!(argmax(&[]), None);
        assert_eq!(argmax(&[f32::NAN, 1.0]), None);
    }
}
