//! Rate-limited logging: bad frames, failed batches and sink errors can come at frame rate;
//! the log must not. One message per period, and the count of what was held back is told in
//! the next message, or by [`LogLimiter::flush`] when the burst is over, so that nothing is
//! hidden without a number.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Logs at most once per period, counting what it suppressed. Shareable between threads.
#[derive(Debug)]
pub struct LogLimiter {
    period: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogLimiter {
    /// A limiter that lets one message through per `period`.
    pub fn new(period: Duration) -> Self {
        LogLimiter { period, last: Mutex::new(None), suppressed: AtomicU64::new(0) }
    }

    /// Calls `f(suppressed_since_last)` when the period has passed; otherwise counts the
    /// message as suppressed.
    pub fn hit(&self, f: impl FnOnce(u64)) {
        self.hit_at(Instant::now(), f)
    }

    /// [`hit`](Self::hit) at a given time (for tests on a simulated clock).
    pub fn hit_at(&self, now: Instant, f: impl FnOnce(u64)) {
        // A poisoned lock only means another logger panicked; the timestamp is still usable.
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if last.is_none_or(|t| now.duration_since(t) >= self.period) {
            *last = Some(now);
            drop(last);
            f(self.suppressed.swap(0, Ordering::Relaxed));
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Calls `f(n)` with the messages suppressed since the last one, if any (at the end of a
    /// stream or a burst, so the count is never lost).
    pub fn flush(&self, f: impl FnOnce(u64)) {
        let n = self.suppressed.swap(0, Ordering::Relaxed);
        if n > 0 {
            f(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_message_per_period_with_the_count_held_back() {
        let l = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let mut told = Vec::new();
        for s in [0, 1, 2, 3, 9, 10, 11] {
            l.hit_at(t0 + Duration::from_secs(s), |n| told.push((s, n)));
        }
        assert_eq!(told, vec![(0, 0), (10, 4)]);
        let mut flushed = None;
        l.flush(|n| flushed = Some(n));
        assert_eq!(flushed, Some(1), "the message at 11 s was held back and is told at the end");
        l.flush(|_| panic!("nothing left to tell"));
    }
}
