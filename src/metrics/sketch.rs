//! Exact-enough latency quantiles for the end-of-run summary and the daemon benchmark: a
//! lock-free histogram with logarithmic buckets 1 % wide (an HDR-histogram in miniature), so
//! p50/p99 are within 1 % of the true order statistic whatever the distribution, in fixed
//! memory (about 13 KiB) however long the service runs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Smallest value resolved (shorter ones count in the first bucket): 10 µs.
const MIN_S: f64 = 1e-5;
/// Relative bucket width.
const GROWTH: f64 = 1.01;
/// Buckets from 10 µs to about 100 s; longer values count in the last one.
const BUCKETS: usize = 1620;

/// Quantiles of durations, lock-free, fixed size.
#[derive(Debug)]
pub struct Quantiles {
    counts: Box<[AtomicU64]>,
    max_ns: AtomicU64,
}

impl Default for Quantiles {
    fn default() -> Self {
        Quantiles { counts: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(), max_ns: AtomicU64::new(0) }
    }
}

impl Quantiles {
    /// Records one duration.
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let i = if s <= MIN_S { 0 } else { ((s / MIN_S).ln() / GROWTH.ln()).ceil() as usize };
        self.counts[i.min(BUCKETS - 1)].fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// The largest observation.
    pub fn max(&self) -> Duration {
        Duration::from_nanos(self.max_ns.load(Ordering::Relaxed))
    }

    /// The `q`-quantile (0..=1): the upper edge of the bucket holding the `ceil(q * count)`-th
    /// smallest observation, capped at the maximum; `None` before any observation.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = ((q.clamp(0.0, 1.0) * n as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c.load(Ordering::Relaxed);
            if seen >= rank {
                if i == BUCKETS - 1 {
                    // The overflow bucket has no upper edge.
                    return Some(self.max());
                }
                let upper = Duration::from_secs_f64(MIN_S * GROWTH.powi(i as i32));
                return Some(upper.min(self.max()));
            }
        }
        Some(self.max())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_one_percent() {
        let q = Quantiles::default();
        assert_eq!(q.quantile(0.5), None);
        // 1..=1000 ms: p50 is 500 ms, p99 990 ms, max 1000 ms.
        for ms in 1..=1000u64 {
            q.observe(Duration::from_millis(ms));
        }
        assert_eq!(q.count(), 1000);
        let p50 = q.quantile(0.5).unwrap().as_secs_f64();
        let p99 = q.quantile(0.99).unwrap().as_secs_f64();
        assert!((p50 / 0.5 - 1.0).abs() <= 0.01, "p50 {p50}");
        assert!((p99 / 0.99 - 1.0).abs() <= 0.01, "p99 {p99}");
        assert_eq!(q.quantile(1.0), Some(Duration::from_millis(1000)));
        assert_eq!(q.max(), Duration::from_millis(1000));
    }

    #[test]
    fn extremes_are_clamped() {
        let q = Quantiles::default();
        q.observe(Duration::ZERO);
        q.observe(Duration::from_secs(10_000));
        assert_eq!(q.quantile(0.0), Some(Duration::from_secs_f64(MIN_S)));
        assert_eq!(q.quantile(1.0), Some(Duration::from_secs(10_000)));
    }
}
