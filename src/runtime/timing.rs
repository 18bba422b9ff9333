//! How long a graph takes on this machine: a graph's milliseconds per frame, and the median of
//! alternating rounds (`gradwatch bench`, the compiler zoo's report, and `gradwatch init`'s cost
//! of each preset). Speed is measured here, never in unit tests.

use std::time::{Duration, Instant};

use ndarray::ArrayD;

use super::{ModelSession, RuntimeError};

/// Milliseconds per frame of `s` on the batch `x`: one warm-up run, then runs for at least
/// `seconds` (and at least three).
pub fn time_per_frame(s: &mut ModelSession, input: &str, x: &ArrayD<f32>, seconds: f64) -> Result<f64, RuntimeError> {
    time_runs(s, input, x, seconds, 3)
}

/// [`time_per_frame`] with at least `min_runs` timed runs (one suits a graph whose batch takes
/// seconds).
pub fn time_runs(
    s: &mut ModelSession,
    input: &str,
    x: &ArrayD<f32>,
    seconds: f64,
    min_runs: usize,
) -> Result<f64, RuntimeError> {
    s.run(&[(input, x.view())])?;
    let start = Instant::now();
    let mut runs = 0usize;
    while start.elapsed() < Duration::from_secs_f64(seconds) || runs < min_runs.max(1) {
        s.run(&[(input, x.view())])?;
        runs += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0 / (runs * x.shape()[0]) as f64)
}

/// The median of `v` (the upper one of an even count); NaN when empty.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::median;

    #[test]
    fn median_takes_the_middle_and_the_upper_of_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 4.0);
        assert!(median(Vec::new()).is_nan());
    }
}
