//! Per-stream scoring rate (`[[stream]] score_fps`): a camera's health does not change within
//! a frame interval, so a stream may score only some of its frames. The others are captured
//! and released without inference, counted as `skipped` (not as drops, which stay an overload
//! signal).
//!
//! Frames are admitted evenly in frame time: time since the stream's first frame is cut into
//! slots of `1 / score_fps`, and the first frame of each slot is scored. A 30 fps camera with
//! `score_fps = 5` scores every sixth frame; a source slower than `score_fps` has every frame
//! scored; jitter never lets more than `score_fps` frames per second through (one per slot).

use std::time::{Duration, Instant};

/// Frame times within this much of a slot boundary count as on it (clock rounding).
const SLACK: Duration = Duration::from_micros(50);

/// Decides which frames of one stream are scored.
#[derive(Clone, Debug)]
pub struct ScoreRate {
    /// Slot length; `None` scores every frame.
    period: Option<Duration>,
    /// The first frame's time.
    start: Option<Instant>,
    /// The last slot a frame was admitted in.
    last_slot: Option<u64>,
}

impl ScoreRate {
    /// At most `fps` frames per second (`None`, zero, negative or non-finite: every frame).
    pub fn new(fps: Option<f64>) -> Self {
        let period = fps.filter(|f| f.is_finite() && *f > 0.0).map(|f| Duration::from_secs_f64(1.0 / f));
        ScoreRate { period, start: None, last_slot: None }
    }

    /// Whether the frame captured at `t` (the pipeline clock's instant) is scored.
    pub fn admit(&mut self, t: Instant) -> bool {
        let Some(period) = self.period else { return true };
        let start = *self.start.get_or_insert(t);
        let since = t.saturating_duration_since(start) + SLACK;
        let slot = (since.as_nanos() / period.as_nanos().max(1)) as u64;
        if self.last_slot.is_some_and(|l| slot <= l) {
            return false;
        }
        self.last_slot = Some(slot);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(source_fps: f64, score_fps: Option<f64>, seconds: f64) -> Vec<usize> {
        let t0 = Instant::now();
        let mut r = ScoreRate::new(score_fps);
        let n = (source_fps * seconds).round() as usize;
        (0..n).filter(|&k| r.admit(t0 + Duration::from_secs_f64(k as f64 / source_fps))).collect()
    }

    #[test]
    fn evenly_spaced_subsampling() {
        let got = run(30.0, Some(5.0), 2.0);
        assert_eq!(got, (0..60).step_by(6).collect::<Vec<_>>());
        assert_eq!(run(30.0, None, 1.0).len(), 30);
        assert_eq!(run(30.0, Some(0.0), 1.0).len(), 30);
        // A source slower than the rate: every frame.
        assert_eq!(run(4.0, Some(5.0), 3.0).len(), 12);
        // 25 fps at 10: at most 10 per second, spaced 2-3 frames apart.
        let got = run(25.0, Some(10.0), 4.0);
        assert_eq!(got.len(), 40);
        assert!(got.windows(2).all(|w| (2..=3).contains(&(w[1] - w[0]))), "{got:?}");
    }

    #[test]
    fn jitter_never_exceeds_the_rate() {
        let t0 = Instant::now();
        let mut r = ScoreRate::new(Some(5.0));
        let mut rng = 12345u64;
        let mut admitted = Vec::new();
        for k in 0..300u64 {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let jitter = (rng >> 40) % 20_000; // up to 20 ms
            let t = t0 + Duration::from_micros(k * 33_333 + jitter);
            if r.admit(t) {
                admitted.push(t);
            }
        }
        // 10 s of frames: 50 slots, every one hit.
        assert_eq!(admitted.len(), 50);
        for w in admitted.windows(6) {
            assert!(w[5] - w[0] >= Duration::from_millis(800), "more than 5 in a second");
        }
    }
}
