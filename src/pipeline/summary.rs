//! Per-window statistics of a run: consecutive frames with the same tag (a replay schedule's
//! windows, `clean` / `haze:3`) form a window; each alert is attributed to a window, which
//! gives detection delays for corrupted windows and false alarms for clean ones.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::alert::{Event, Scored};

/// One run of consecutive scored frames with the same tag.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowStats {
    /// The tag (`clean`, `haze:3`, a file name, or `-` for untagged frames).
    pub tag: String,
    /// Sequence number of the first frame.
    pub first_seq: u64,
    /// Sequence number of the last frame.
    pub last_seq: u64,
    /// Time of the first frame.
    pub first_time: SystemTime,
    /// Time of the last frame.
    pub last_time: SystemTime,
    /// Frames scored.
    pub frames: u64,
    /// Of those, over threshold.
    pub over: u64,
    /// Alerts raised in this window: (sequence number of the raising frame, its time).
    pub alerts: Vec<(u64, SystemTime)>,
}

impl WindowStats {
    /// Whether the tag is a clean one (`clean` from replay; untagged frames count as clean).
    pub fn is_clean(&self) -> bool {
        self.tag == "clean" || self.tag == "-"
    }

    /// Frames from the window's first frame to the first alert's raising frame, inclusive, and
    /// the time between them; `None` without an alert.
    pub fn detection_delay(&self) -> Option<(u64, Duration)> {
        let &(seq, t) = self.alerts.first()?;
        Some((seq.saturating_sub(self.first_seq) + 1, t.duration_since(self.first_time).unwrap_or_default()))
    }
}

/// What one stream did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StreamSummary {
    /// Windows in order.
    pub windows: Vec<WindowStats>,
    /// Alerts raised.
    pub alerts: u64,
}

impl StreamSummary {
    /// Alerts raised in clean windows.
    pub fn false_alarms(&self) -> usize {
        self.windows.iter().filter(|w| w.is_clean()).map(|w| w.alerts.len()).sum()
    }

    /// Time from the first to the last scored frame.
    pub fn span(&self) -> Duration {
        match (self.windows.first(), self.windows.last()) {
            (Some(a), Some(b)) => b.last_time.duration_since(a.first_time).unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }
}

/// Every stream's summary, by stream name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// By stream name.
    pub streams: BTreeMap<String, StreamSummary>,
}

/// Windows are only tracked up to this many per stream: a live camera with changing tags
/// (a directory's file names) must not grow memory without bound.
const MAX_WINDOWS: usize = 10_000;

impl Summary {
    /// Records a scored frame.
    pub fn frame(&mut self, s: &Scored) {
        let st = self.streams.entry(s.stream.clone()).or_default();
        let tag = s.tag.as_deref().unwrap_or("-");
        let over = u64::from(s.is_over());
        match st.windows.last_mut() {
            Some(w) if w.tag == tag => {
                w.last_seq = s.seq;
                w.last_time = s.time;
                w.frames += 1;
                w.over += over;
            }
            _ => {
                if st.windows.len() >= MAX_WINDOWS {
                    return;
                }
                st.windows.push(WindowStats {
                    tag: tag.to_string(),
                    first_seq: s.seq,
                    last_seq: s.seq,
                    first_time: s.time,
                    last_time: s.time,
                    frames: 1,
                    over,
                    alerts: Vec::new(),
                })
            }
        }
    }

    /// Records an event produced by the frame `s`.
    ///
    /// An `alert_start` belongs to the window of its raising frame, except when that window
    /// is clean and the alert's first over-threshold frame lies in an earlier, corrupted
    /// window: then it is a late detection of that window, not a false alarm.
    pub fn event(&mut self, s: &Scored, ev: &Event) {
        let Event::AlertStart { alert } = ev else { return };
        let st = self.streams.entry(s.stream.clone()).or_default();
        st.alerts += 1;
        let Some(last) = st.windows.len().checked_sub(1) else { return };
        let mut idx = last;
        if st.windows[last].is_clean() {
            if let Some(j) = st.windows.iter().rposition(|w| w.first_seq <= alert.first_seq) {
                if !st.windows[j].is_clean() {
                    idx = j;
                }
            }
        }
        st.windows[idx].alerts.push((s.seq, s.time));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{AlertPolicy, AlertTracker, ModelRef};

    fn frame(seq: u64, tag: &str, score: f32) -> Scored {
        Scored {
            stream: "s".into(),
            seq,
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(100 * seq),
            score,
            threshold: 1.0,
            top_class: 0,
            top_class_name: None,
            confidence: 1.0,
            tag: Some(tag.into()),
        }
    }

    #[test]
    fn windows_delays_and_false_alarms() {
        // 10 clean frames, 10 noisy ones (all over), 10 clean; raise at 3 of 4.
        let policy = AlertPolicy {
            window: 4,
            raise: 3,
            clear: 1,
            min_duration_ms: 0,
            update_interval_ms: 0,
            ..AlertPolicy::default()
        };
        let mut t = AlertTracker::new("s", policy, ModelRef { name: "m".into(), sha256: "x".into() }).unwrap();
        let mut sum = Summary::default();
        for seq in 0..30u64 {
            let (tag, score) = if (10..20).contains(&seq) { ("noise:5", 5.0) } else { ("clean", 0.0) };
            let s = frame(seq, tag, score);
            sum.frame(&s);
            for ev in t.push(&s) {
                sum.event(&s, &ev);
            }
        }
        let st = &sum.streams["s"];
        assert_eq!(st.windows.len(), 3);
        assert_eq!(st.windows[1].frames, 10);
        assert_eq!(st.windows[1].over, 10);
        // Raised at the third over-threshold frame, seq 12: 3 frames, 200 ms after seq 10.
        assert_eq!(st.windows[1].detection_delay(), Some((3, Duration::from_millis(200))));
        assert_eq!(st.false_alarms(), 0);
        assert_eq!(st.alerts, 1);
        assert_eq!(st.span(), Duration::from_millis(2900));
    }
}
