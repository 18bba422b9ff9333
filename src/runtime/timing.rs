//! How long a graph takes on this machine: the forward pass and graphs timed in alternating
//! rounds, and the medians over rounds (`gradwatch bench`, the compiler zoo's report, and `gradwatch init`'s cost
//! of each preset). Speed is measured here, never in unit tests.

use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};

use super::{ModelSession, RuntimeError};

/// Milliseconds per frame of `s` on the batch `x`: one warm-up run, then runs for at least
/// `seconds` and at least `min_runs` runs (one suits a graph whose batch takes seconds).
fn time_runs(
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

/// A batch of `batch` frames of per-sample shape `per_sample` in a fixed pattern of values in
/// `[-1, 1)`: any values time the same, and a fixed pattern keeps runs comparable.
pub fn pattern_batch(batch: usize, per_sample: &[usize]) -> ArrayD<f32> {
    let mut shape = vec![batch];
    shape.extend(per_sample);
    let n: usize = shape.iter().product();
    ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect())
        .unwrap_or_else(|_| unreachable!("the shape's product is the length"))
}

/// How [`alternate`] times: `rounds` rounds of the forward pass and then each graph, each
/// timed for `seconds` and at least `min_runs` runs.
#[derive(Clone, Copy, Debug)]
pub struct Rounds {
    /// Rounds at most.
    pub rounds: usize,
    /// Seconds of timed runs per graph and round.
    pub seconds: f64,
    /// Timed runs per graph and round at least.
    pub min_runs: usize,
    /// One round only when the first round's forward batch took longer than this (ms): a
    /// full-size model is measured well by one.
    pub one_round_over_ms: f64,
}

/// What [`alternate`] measured: milliseconds per frame of each round.
#[derive(Clone, Debug, Default)]
pub struct Alternated {
    /// The forward pass's, per round.
    pub forward: Vec<f64>,
    /// Each graph's, per round.
    pub graphs: Vec<Vec<f64>>,
}

impl Alternated {
    /// The forward pass's median milliseconds per frame.
    pub fn forward_ms(&self) -> f64 {
        median(self.forward.clone())
    }

    /// Graph `i`'s median milliseconds per frame.
    pub fn graph_ms(&self, i: usize) -> f64 {
        median(self.graphs[i].clone())
    }

    /// Appends another run's rounds (of the same graphs, in the same order).
    pub fn extend(&mut self, more: Alternated) {
        self.forward.extend(more.forward);
        for (g, m) in self.graphs.iter_mut().zip(more.graphs) {
            g.extend(m);
        }
    }

    /// Graph `i`'s cost: the median over rounds of its time over that round's forward time.
    pub fn ratio(&self, i: usize) -> f64 {
        median(self.graphs[i].iter().zip(&self.forward).map(|(g, f)| g / f).collect())
    }
}

/// Times the forward pass `fwd` and then every graph on the batch `x`, round after round, so
/// that a machine's changing load falls on all of them alike.
pub fn alternate(
    fwd: &mut ModelSession,
    graphs: &mut [&mut ModelSession],
    input: &str,
    x: &ArrayD<f32>,
    plan: Rounds,
) -> Result<Alternated, RuntimeError> {
    let mut out = Alternated { forward: Vec::new(), graphs: vec![Vec::new(); graphs.len()] };
    let mut rounds = plan.rounds.max(1);
    let mut round = 0;
    while round < rounds {
        round += 1;
        let f = time_runs(fwd, input, x, plan.seconds, plan.min_runs)?;
        if f * x.shape()[0] as f64 > plan.one_round_over_ms {
            rounds = 1;
        }
        out.forward.push(f);
        for (g, t) in graphs.iter_mut().zip(out.graphs.iter_mut()) {
            t.push(time_runs(g, input, x, plan.seconds, plan.min_runs)?);
        }
    }
    Ok(out)
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
    use super::{median, pattern_batch, Alternated};

    #[test]
    fn ratios_are_per_round_and_the_pattern_has_the_shape() {
        let a = Alternated { forward: vec![1.0, 2.0, 4.0], graphs: vec![vec![3.0, 10.0, 12.0]] };
        // Per round 3, 5, 3: the median ratio is 3, not median(g) / median(f) = 5.
        assert_eq!(a.ratio(0), 3.0);
        assert_eq!((a.forward_ms(), a.graph_ms(0)), (2.0, 10.0));
        let x = pattern_batch(2, &[3, 4]);
        assert_eq!(x.shape(), &[2, 3, 4]);
        assert!(x.iter().all(|v| (-1.0..1.0).contains(v)));
        // More rounds join the median: per round 3, 5, 3, 1, 1 -> 3; then 3, 5, 3, 1, 1, 1 -> 3
        // (the upper middle of six).
        let mut b = a.clone();
        b.extend(Alternated { forward: vec![2.0, 2.0], graphs: vec![vec![2.0, 2.0]] });
        assert_eq!((b.forward.len(), b.graphs[0].len(), b.ratio(0)), (5, 5, 3.0));
        b.extend(Alternated { forward: vec![1.0], graphs: vec![vec![1.0]] });
        assert_eq!(b.ratio(0), 3.0);
    }

    #[test]
    fn median_takes_the_middle_and_the_upper_of_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0]), 4.0);
        assert!(median(Vec::new()).is_nan());
    }
}
