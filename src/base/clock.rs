//! Time, injected: sources pace themselves and back off through a [`Clock`], so tests can run
//! a minute of 10 fps replay (or an hour of reconnect backoff) instantly with a [`SimClock`].

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A monotonic clock that can also sleep.
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> Instant;
    /// Blocks until `t` (returns at once when `t` is past).
    fn sleep_until(&self, t: Instant);
}

/// The real monotonic clock ([`Instant::now`], [`std::thread::sleep`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct RealClock;

impl Clock for RealClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, t: Instant) {
        let now = Instant::now();
        if t > now {
            std::thread::sleep(t - now);
        }
    }
}

/// A simulated clock for tests: `sleep_until(t)` returns at once and moves the time to `t`.
///
/// Time never goes backwards: sleeping until a past instant leaves it where it is.
#[derive(Debug)]
pub struct SimClock {
    start: Instant,
    now: Mutex<Instant>,
}

impl SimClock {
    /// A clock standing at an arbitrary (real) instant, which [`SimClock::start`] returns.
    pub fn new() -> Self {
        let start = Instant::now();
        Self { start, now: Mutex::new(start) }
    }

    /// The instant the clock was created at.
    pub fn start(&self) -> Instant {
        self.start
    }

    /// Simulated time since creation.
    pub fn elapsed(&self) -> Duration {
        self.now() - self.start
    }

    /// Moves the time forward by `d` (as if the caller had been busy that long).
    pub fn advance(&self, d: Duration) {
        let mut now = self.lock();
        *now += d;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Instant> {
        // A poisoned lock only means another test thread panicked; the instant is still valid.
        self.now.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for SimClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        *self.lock()
    }

    fn sleep_until(&self, t: Instant) {
        let mut now = self.lock();
        if t > *now {
            *now = t;
        }
    }
}

/// Paces a stream at a fixed frame rate: frame `k` is due at `start + k / fps`.
///
/// Due times are computed from the start, not by adding a rounded interval per frame, so 30 fps
/// does not drift. When the consumer falls more than one frame behind, the schedule re-anchors
/// at the present instead of bursting to catch up (a live camera would have dropped those
/// frames too).
#[derive(Clone, Debug)]
pub struct Pacer {
    fps: f64,
    start: Option<Instant>,
    k: u64,
}

impl Pacer {
    /// A pacer at `fps` frames a second; `fps <= 0` (or not finite) means no pacing at all.
    pub fn new(fps: f64) -> Self {
        Self { fps, start: None, k: 0 }
    }

    /// Whether this pacer ever sleeps.
    pub fn is_paced(&self) -> bool {
        self.fps.is_finite() && self.fps > 0.0
    }

    /// Sleeps (on `clock`) until the next frame is due. The first call returns at once.
    pub fn wait(&mut self, clock: &dyn Clock) {
        if !self.is_paced() {
            return;
        }
        let now = clock.now();
        let start = *self.start.get_or_insert(now);
        let mut due = start + Duration::from_secs_f64(self.k as f64 / self.fps);
        let interval = Duration::from_secs_f64(1.0 / self.fps);
        if now > due + interval {
            self.start = Some(now);
            self.k = 0;
            due = now;
        }
        clock.sleep_until(due);
        self.k += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_clock_sleep_moves_time_forward_only() {
        let c = SimClock::new();
        let t0 = c.now();
        c.sleep_until(t0 + Duration::from_millis(250));
        assert_eq!(c.elapsed(), Duration::from_millis(250));
        c.sleep_until(t0);
        assert_eq!(c.elapsed(), Duration::from_millis(250));
        c.advance(Duration::from_secs(1));
        assert_eq!(c.elapsed(), Duration::from_millis(1250));
    }

    #[test]
    fn pacer_schedule_is_start_plus_k_over_fps() {
        let c = SimClock::new();
        let mut p = Pacer::new(4.0);
        for k in 0..9u64 {
            p.wait(&c);
            assert_eq!(c.elapsed(), Duration::from_millis(250 * k));
        }
    }

    #[test]
    fn pacer_reanchors_when_far_behind() {
        let c = SimClock::new();
        let mut p = Pacer::new(10.0);
        p.wait(&c); // frame 0 at 0 ms
        c.advance(Duration::from_millis(550)); // consumer stalls for 5.5 frames
        p.wait(&c); // re-anchored: due now, no sleep
        assert_eq!(c.elapsed(), Duration::from_millis(550));
        p.wait(&c);
        assert_eq!(c.elapsed(), Duration::from_millis(650));
    }

    #[test]
    fn unpaced_never_sleeps() {
        let c = SimClock::new();
        let mut p = Pacer::new(0.0);
        for _ in 0..5 {
            p.wait(&c);
        }
        assert_eq!(c.elapsed(), Duration::ZERO);
    }
}
