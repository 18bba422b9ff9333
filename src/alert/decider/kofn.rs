//! The `k_of_n` policy: raise when at least `raise` (k) of the last `window` (n) frames are over
//! threshold, clear when at most `clear` (j) are.

use std::any::Any;
use std::collections::VecDeque;

use super::{Decider, Verdict};
use crate::alert::{AlertPolicy, Open, PolicyDetail, PolicyKind, Scored};

/// The k-of-n window of one stream.
pub(super) struct KOfN {
    stream: String,
    window: usize,
    raise: usize,
    clear: usize,
    /// The last `window` frames, kept in full so a raise can account for the frames since
    /// the first over-threshold one.
    recent: VecDeque<Scored>,
    over_in_window: usize,
}

impl KOfN {
    /// The window of `policy` for `stream`.
    pub(super) fn new(stream: &str, policy: &AlertPolicy) -> KOfN {
        KOfN {
            stream: stream.to_string(),
            window: policy.window,
            raise: policy.raise,
            clear: policy.clear,
            recent: VecDeque::with_capacity(policy.window),
            over_in_window: 0,
        }
    }

    /// An alert covering the window from its first over-threshold frame.
    fn raised(&self, now: std::time::SystemTime) -> Option<Open> {
        let start = self.recent.iter().position(Scored::is_over).unwrap_or(0);
        let first = self.recent.get(start)?;
        let mut open = Open::starting_at(&self.stream, first, now);
        for s in self.recent.iter().skip(start) {
            open.add(s);
        }
        Some(open)
    }
}

impl Decider for KOfN {
    fn push(&mut self, s: &Scored, open: Option<&mut Open>) -> Verdict {
        self.recent.push_back(s.clone());
        if s.is_over() {
            self.over_in_window += 1;
        }
        if self.recent.len() > self.window {
            if let Some(old) = self.recent.pop_front() {
                if old.is_over() {
                    self.over_in_window -= 1;
                }
            }
        }
        match open {
            None if self.over_in_window >= self.raise => {
                self.raised(s.time).map_or(Verdict::Wait, |o| Verdict::Raise(Box::new(o)))
            }
            None => Verdict::Wait,
            Some(open) => {
                open.add(s);
                if self.over_in_window <= self.clear {
                    Verdict::Clear
                } else {
                    Verdict::Stay
                }
            }
        }
    }

    fn reset(&mut self) {
        self.recent.clear();
        self.over_in_window = 0;
    }

    fn statistic(&self) -> f64 {
        self.over_in_window as f64
    }

    fn detail(&self) -> PolicyDetail {
        PolicyDetail {
            policy: Some(PolicyKind::KOfN.as_str().into()),
            statistic: Some(self.over_in_window as f64),
            statistic_threshold: Some(self.raise as f64),
            false_alarms_per_day: None,
            baseline: None,
            ..PolicyDetail::default()
        }
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, score: f32) -> Scored {
        super::super::test_frame(seq, score, 1.0)
    }

    /// Without a tracker: 3 of 5 raise from the first over-threshold frame in the window; with
    /// the alert open, 1 or fewer over asks to clear.
    #[test]
    fn raises_at_k_and_asks_to_clear_at_j() {
        let policy = AlertPolicy { window: 5, raise: 3, clear: 1, ..AlertPolicy::default() };
        let mut d = KOfN::new("cam", &policy);
        assert!(matches!(d.push(&frame(0, 0.0), None), Verdict::Wait));
        assert!(matches!(d.push(&frame(1, 2.0), None), Verdict::Wait));
        assert!(matches!(d.push(&frame(2, 0.0), None), Verdict::Wait));
        assert!(matches!(d.push(&frame(3, 2.0), None), Verdict::Wait));
        let Verdict::Raise(open) = d.push(&frame(4, 2.0), None) else { panic!("no raise at 3 of 5") };
        let mut open = *open;
        assert_eq!((open.first_seq, open.last_seq, open.frames, open.frames_over), (1, 4, 4, 3));
        assert_eq!(d.statistic(), 3.0);
        // Frames 1 and 3 leave the window; 4 stays over.
        assert!(matches!(d.push(&frame(5, 0.0), Some(&mut open)), Verdict::Stay));
        assert!(matches!(d.push(&frame(6, 0.0), Some(&mut open)), Verdict::Stay));
        assert!(matches!(d.push(&frame(7, 0.0), Some(&mut open)), Verdict::Stay));
        assert!(matches!(d.push(&frame(8, 0.0), Some(&mut open)), Verdict::Clear));
        assert_eq!((open.last_seq, open.frames), (8, 8));
        d.reset();
        assert_eq!(d.statistic(), 0.0);
    }
}
