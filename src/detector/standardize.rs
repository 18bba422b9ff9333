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
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
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
        let (n, p) = x.dim();
        if n == 0 || p == 0 {
            return Err(DetectorError::Empty { what: "standardizer fitting features" });
        }
        check_finite("standardizer fitting features", x, false)?;
        let mut mean = vec![0.0f64; p];
        let mut m2 = vec![0.0f64; p];
        // Two passes in f64: the log features are O(10), so this is exact enough and simple.
        for row in x.rows() {
            for (m, &v) in mean.iter_mut().zip(row.iter()) {
                *m += log_feature(v, eps);
            }
        }
        for m in &mut mean {
            *m /= n as f64;
        }
        for row in x.rows() {
            for ((s, &v), m) in m2.iter_mut().zip(row.iter()).zip(&mean) {
                let d = log_feature(v, eps) - m;
                *s += d * d;
            }
        }
        let std = m2.into_iter().map(|s| (s / n as f64).sqrt().max(MIN_STD)).collect();
        Ok(Self { eps, mean, std })
    }

    /// Number of features this standardizer expects.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Checks a (deserialised) standardizer: matching lengths, finite mean, positive std and eps.
    pub fn validate(&self) -> Result<(), DetectorError> {
        if self.mean.is_empty() {
            return Err(DetectorError::InvalidModel("standardizer has no features".into()));
        }
        if self.mean.len() != self.std.len() {
            return Err(DetectorError::InvalidModel(format!(
                "standardizer has {} means but {} standard deviations",
                self.mean.len(),
                self.std.len()
            )));
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(DetectorError::InvalidModel(format!("standardizer eps {} is not finite and > 0", self.eps)));
        }
        if self.mean.iter().any(|m| !m.is_finite()) || self.std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(DetectorError::InvalidModel(
                "standardizer mean/std contain non-finite or non-positive values".into(),
            ));
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
        if x.len() != self.dim() {
            return Err(DetectorError::DimensionMismatch {
                what: "standardizer input",
                expected: self.dim(),
                got: x.len(),
            });
        }
        if let Some(col) = x.iter().position(|v| v.is_nan()) {
            return Err(DetectorError::NonFinite { what: "standardizer input", row: 0, col, value: f64::NAN });
        }
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
