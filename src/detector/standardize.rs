//! Log transform + standardisation of gradient features.

use ndarray::Array2;

use super::{check_finite, DetectorError};

/// Default additive constant inside the log. Squared gradient norms of healthy tensors are
/// at least ~1e-9 in f32, so 1e-12 only matters for exact zeros (frozen or dead tensors),
/// which it maps to a finite value (ln 1e-12 = -27.6) instead of `-inf`.
pub const DEFAULT_EPS: f64 = 1e-12;

/// Floor on a fitted standard deviation: a feature that is constant on the training data
/// (e.g. an always-zero gradient) would otherwise divide by zero. With the floor such a
/// feature becomes `(v - mean) * 1e6`: zero on familiar data and loud if it ever changes.
pub const MIN_STD: f64 = 1e-6;

/// Log transform then standardisation; fitted on familiar training features.
///
/// `transform(x)[j] = (ln(max(x[j], 0) + eps) - mean[j]) / std[j]`, with `mean` and `std`
/// (population standard deviation, floored at [`MIN_STD`]) of the log features of the fitting
/// set. Negative inputs (rounding noise of a squared norm) are clamped to 0, `+inf` (an
/// overflowed norm: extremely unfamiliar, not garbage) to `f32::MAX`; NaN is an error.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LogStandardizer {
    /// Additive constant inside the log (default [`DEFAULT_EPS`]).
    pub eps: f64,
    /// Per-feature mean of the log features.
    pub mean: Vec<f64>,
    /// Per-feature standard deviation of the log features (already floored).
    pub std: Vec<f64>,
}

impl LogStandardizer {
    /// Fits on `x` (`n x P`, one row per sample, normally familiar training features) with
    /// `eps =` [`DEFAULT_EPS`]. Errors on an empty input or any non-finite value.
    pub fn fit(x: &Array2<f32>) -> Result<Self, DetectorError> {
        Self::fit_with_eps(x, DEFAULT_EPS)
    }

    /// [`fit`](Self::fit) with an explicit `eps` (must be finite and > 0).
    pub fn fit_with_eps(x: &Array2<f32>, eps: f64) -> Result<Self, DetectorError> {
        if !(eps.is_finite() && eps > 0.0) {
            return Err(DetectorError::Config(format!("eps must be finite and > 0, got {eps}")));
        }
        let (mean, std) = column_stats(x, |v| log_feature(v, eps))?;
        Ok(Self { eps, mean, std })
    }

    /// Number of features this standardizer expects.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Checks a (deserialised) standardizer: matching lengths, finite mean, positive std and eps.
    pub fn validate(&self) -> Result<(), DetectorError> {
        validate_stats(&self.mean, &self.std)?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(DetectorError::InvalidModel(format!("standardizer eps {} is not finite and > 0", self.eps)));
        }
        Ok(())
    }

    /// Transforms every row of `x`. Errors on a feature-count mismatch, a NaN, or an invalid
    /// (corrupt deserialised) standardizer.
    pub fn transform(&self, x: &Array2<f32>) -> Result<Array2<f32>, DetectorError> {
        // O(P); guards against a corrupt deserialised model indexing out of bounds.
        self.validate()?;
        let (n, p) = x.dim();
        if p != self.dim() {
            return Err(DetectorError::DimensionMismatch { what: "standardizer input", expected: self.dim(), got: p });
        }
        check_finite("standardizer input", x, true)?;
        let mut out = Array2::<f32>::zeros((n, p));
        for (src, mut dst) in x.rows().into_iter().zip(out.rows_mut()) {
            for (j, (d, &v)) in dst.iter_mut().zip(src.iter()).enumerate() {
                *d = self.one(j, v);
            }
        }
        Ok(out)
    }

    /// Transforms one sample. Errors on a length mismatch, a NaN, or an invalid standardizer.
    pub fn transform_row(&self, x: &[f32]) -> Result<Vec<f32>, DetectorError> {
        self.validate()?;
        check_row(x, self.dim(), |v| v.is_nan())?;
        Ok(x.iter().enumerate().map(|(j, &v)| self.one(j, v)).collect())
    }

    fn one(&self, j: usize, v: f32) -> f32 {
        ((log_feature(v, self.eps) - self.mean[j]) / self.std[j]) as f32
    }
}

/// `ln(max(v, 0) + eps)` with `+inf` clamped to `f32::MAX` (caller rejects NaN).
fn log_feature(v: f32, eps: f64) -> f64 {
    let v = if v == f32::INFINITY { f32::MAX } else { v };
    (f64::from(v).max(0.0) + eps).ln()
}

/// Per-column mean and population standard deviation (floored at [`MIN_STD`]) of `f(x)`,
/// in f64. Errors on an empty input or any non-finite value.
fn column_stats(x: &Array2<f32>, f: impl Fn(f32) -> f64) -> Result<(Vec<f64>, Vec<f64>), DetectorError> {
    let (n, p) = x.dim();
    if n == 0 || p == 0 {
        return Err(DetectorError::Empty { what: "standardizer fitting features" });
    }
    check_finite("standardizer fitting features", x, false)?;
    let mut mean = vec![0.0f64; p];
    let mut m2 = vec![0.0f64; p];
    // Two passes in f64: the (log) features are O(10), so this is exact enough and simple.
    for row in x.rows() {
        for (m, &v) in mean.iter_mut().zip(row.iter()) {
            *m += f(v);
        }
    }
    for m in &mut mean {
        *m /= n as f64;
    }
    for row in x.rows() {
        for ((s, &v), m) in m2.iter_mut().zip(row.iter()).zip(&mean) {
            let d = f(v) - m;
            *s += d * d;
        }
    }
    let std = m2.into_iter().map(|s| (s / n as f64).sqrt().max(MIN_STD)).collect();
    Ok((mean, std))
}

/// Checks one input row: `dim` values, none of them `bad` (reported as row 0).
fn check_row(x: &[f32], dim: usize, bad: impl Fn(f32) -> bool) -> Result<(), DetectorError> {
    if x.len() != dim {
        return Err(DetectorError::DimensionMismatch { what: "standardizer input", expected: dim, got: x.len() });
    }
    if let Some(col) = x.iter().position(|&v| bad(v)) {
        return Err(DetectorError::NonFinite { what: "standardizer input", row: 0, col, value: f64::from(x[col]) });
    }
    Ok(())
}

/// Checks fitted statistics: non-empty, matching lengths, finite means, positive finite stds.
fn validate_stats(mean: &[f64], std: &[f64]) -> Result<(), DetectorError> {
    if mean.is_empty() {
        return Err(DetectorError::InvalidModel("standardizer has no features".into()));
    }
    if mean.len() != std.len() {
        return Err(DetectorError::InvalidModel(format!(
            "standardizer has {} means but {} standard deviations",
            mean.len(),
            std.len()
        )));
    }
    if mean.iter().any(|m| !m.is_finite()) || std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
        return Err(DetectorError::InvalidModel(
            "standardizer mean/std contain non-finite or non-positive values".into(),
        ));
    }
    Ok(())
}

/// Plain standardisation `(x[j] - mean[j]) / std[j]`, no log: for forward signals (logit
/// statistics, which can be negative). Fitted on familiar training rows; the std is floored
/// at [`MIN_STD`] like [`LogStandardizer`]'s.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Standardizer {
    /// Per-column mean.
    pub mean: Vec<f64>,
    /// Per-column population standard deviation (already floored).
    pub std: Vec<f64>,
}

impl Standardizer {
    /// Fits on `x` (`n x P`). Errors on an empty input or any non-finite value.
    pub fn fit(x: &Array2<f32>) -> Result<Self, DetectorError> {
        let (mean, std) = column_stats(x, f64::from)?;
        Ok(Self { mean, std })
    }

    /// Number of columns this standardizer expects.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Checks a (deserialised) standardizer: matching lengths, finite mean, positive std.
    pub fn validate(&self) -> Result<(), DetectorError> {
        validate_stats(&self.mean, &self.std)
    }

    /// Transforms one sample. Errors on a length mismatch, a non-finite value, or an invalid
    /// standardizer.
    pub fn transform_row(&self, x: &[f32]) -> Result<Vec<f32>, DetectorError> {
        self.validate()?;
        check_row(x, self.dim(), |v| !v.is_finite())?;
        Ok(x.iter().zip(self.mean.iter().zip(&self.std)).map(|(&v, (m, s))| ((f64::from(v) - m) / s) as f32).collect())
    }

    /// Transforms every row of `x` (see [`transform_row`](Self::transform_row)).
    pub fn transform(&self, x: &Array2<f32>) -> Result<Array2<f32>, DetectorError> {
        let mut out = Array2::<f32>::zeros((x.nrows(), self.dim()));
        for (i, (src, mut dst)) in x.rows().into_iter().zip(out.rows_mut()).enumerate() {
            let z = self.transform_row(&src.to_vec()).map_err(|e| match e {
                DetectorError::NonFinite { what, col, value, .. } => {
                    DetectorError::NonFinite { what, row: i, col, value }
                }
                other => other,
            })?;
            dst.iter_mut().zip(z).for_each(|(d, v)| *d = v);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_standardizer_hand_values_and_errors() {
        // Column 0: [-1, 1] -> mean 0, std 1; column 1 constant 5 -> std floored.
        let x = ndarray::array![[-1.0f32, 5.0], [1.0, 5.0]];
        let s = Standardizer::fit(&x).unwrap();
        assert_eq!(s.mean, vec![0.0, 5.0]);
        assert_eq!(s.std, vec![1.0, MIN_STD]);
        assert_eq!(s.transform_row(&[-3.0, 5.0]).unwrap(), vec![-3.0, 0.0]);
        assert_eq!(s.transform(&x).unwrap().row(1).to_vec(), vec![1.0, 0.0]);
        assert!(s.transform_row(&[1.0]).is_err());
        assert!(s.transform_row(&[f32::NAN, 5.0]).is_err());
        assert!(s.transform_row(&[f32::INFINITY, 5.0]).is_err());
        assert!(Standardizer::fit(&Array2::zeros((0, 2))).is_err());
        let bad = Standardizer { mean: vec![0.0], std: vec![0.0] };
        assert!(bad.validate().is_err() && bad.transform_row(&[1.0]).is_err());
    }
}
