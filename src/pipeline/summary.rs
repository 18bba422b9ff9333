//! Per-window statistics of a run: consecutive frames with the same schedule tag (a replay
//! schedule's windows, `clean` / `haze:3`) form a window; each alert is attributed to a
//! window, which gives detection delays for corrupted windows and false alarms for clean ones.
//! Other tags (a directory's file names) say nothing about corruption: such frames, like
//! untagged ones, form `-` windows that are neither clean nor corrupted.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use crate::alert::{Event, Scored};

/// One run of consecutive scored frames with the same tag.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowStats {
    /// The tag (`clean`, `haze:3`, or `-` for frames without a schedule tag).
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
    /// Whether the window is a schedule's clean one (alerts in it are false alarms).
    pub fn is_clean(&self) -> bool {
        self.tag == "clean"
    }

    /// Whether the window comes from a schedule (`clean` or a corruption), i.e. whether its
    /// alerts can be judged at all.
    pub fn is_scheduled(&self) -> bool {
        self.tag != "-"
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
    /// Frames scored (all of them, also past the window limit).
    pub frames: u64,
    /// Capture time of the first scored frame.
    pub first_capture: Option<SystemTime>,
    /// When the last verdict was made (pipeline clock).
    pub last_verdict: Option<SystemTime>,
}

impl StreamSummary {
    /// Alerts raised in clean windows.
    pub fn false_alarms(&self) -> usize {
        self.windows.iter().filter(|w| w.is_clean()).map(|w| w.alerts.len()).sum()
    }

    /// Time from the first scored frame's capture to the last verdict: the time the stream's
    /// frames took to go through, so `frames / span` is a rate the pipeline really achieved
    /// (capture times alone can lie close together when a fast source fills its queue).
    pub fn span(&self) -> Duration {
        match (self.first_capture, self.last_verdict) {
            (Some(a), Some(b)) => b.duration_since(a).unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }

    /// Scored frames a second over [`span`](Self::span); `None` when the span is empty.
    pub fn fps(&self) -> Option<f64> {
        let s = self.span().as_secs_f64();
        (s > 0.0 && self.frames > 0).then(|| self.frames as f64 / s)
    }
}

/// Every stream's summary, by stream name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Summary {
    /// By stream name.
    pub streams: BTreeMap<String, StreamSummary>,
}

/// Whether `tag` is a replay schedule's (`clean`, `<corruption>:<level>`), not e.g. a file name.
fn is_schedule_tag(tag: &str) -> bool {
    if tag == "clean" {
        return true;
    }
    let Some((kind, level)) = tag.split_once(':') else { return false };
    kind.parse::<crate::corrupt::Corruption>().is_ok() && matches!(level, "1" | "2" | "3" | "4" | "5")
}

/// Windows are only tracked up to this many per stream: a live camera with changing tags
/// (a directory's file names) must not grow memory without bound.
const MAX_WINDOWS: usize = 10_000;

impl Summary {
    /// Records a scored frame, whose verdict was made at `verdict`.
    pub fn frame(&mut self, s: &Scored, verdict: SystemTime) {
        let st = self.streams.entry(s.stream.clone()).or_default();
        st.frames += 1;
        st.first_capture.get_or_insert(s.time);
        st.last_verdict = Some(verdict.max(s.time));
        let tag = match s.tag.as_deref() {
            Some(t) if is_schedule_tag(t) => t,
            _ => "-",
        };
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

    /// Records an event produced by frame `seq` of `stream` at `time` (a scored frame, or the
    /// frame whose image sample raised it).
    ///
    /// An `alert_start` belongs to the window of its raising frame, except when that window
    /// is clean and the alert's first over-threshold frame lies in an earlier, corrupted
    /// window: then it is a late detection of that window, not a false alarm.
    pub fn event(&mut self, stream: &str, seq: u64, time: SystemTime, ev: &Event) {
        let Event::AlertStart { alert } = ev else { return };
        let st = self.streams.entry(stream.to_string()).or_default();
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
        st.windows[idx].alerts.push((seq, time));
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
            clean_tail_scale: 0.0,
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
            sum.frame(&s, s.time + Duration::from_millis(50));
            for ev in t.push(&s) {
                sum.event(&s.stream, s.seq, s.time, &ev);
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
        // First capture (0 ms) to the last verdict (2900 + 50 ms).
        assert_eq!(st.span(), Duration::from_millis(2950));
        assert_eq!(st.frames, 30);
    }

    #[test]
    fn file_names_are_not_windows_and_fps_is_real() {
        // A directory's frames: tags are file names, captured 1 ms apart into a queue but
        // scored 100 ms apart. Regression: each name was a "corrupted" window (MISSED), and
        // the rate came from capture times (1000 fps instead of 10).
        let mut sum = Summary::default();
        for seq in 0..5u64 {
            let mut s = frame(seq, &format!("{seq:03}.png"), 0.0);
            s.time = SystemTime::UNIX_EPOCH + Duration::from_millis(seq);
            sum.frame(&s, SystemTime::UNIX_EPOCH + Duration::from_millis(100 * (seq + 1)));
        }
        let st = &sum.streams["s"];
        assert_eq!(st.windows.len(), 1);
        assert_eq!(st.windows[0].tag, "-");
        assert!(!st.windows[0].is_scheduled() && !st.windows[0].is_clean());
        assert_eq!(st.fps(), Some(10.0));
        assert!(is_schedule_tag("haze:3") && is_schedule_tag("clean") && !is_schedule_tag("a:b.png"));
    }
}
