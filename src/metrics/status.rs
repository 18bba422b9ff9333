//! Per-stream status for people and dashboards: the state (`ok` / `degraded` / `down`), the
//! latest score, a bounded score history (one point per second, the second's highest score,
//! the last [`HISTORY_SECONDS`]), frame rates, and the open or last alert with its snapshot
//! and heat map paths.
//!
//! The alert stage feeds it ([`StreamStatus::frame`] per scored frame, [`StreamStatus::event`]
//! per event, [`super::Metrics::tick`] on every loop); the status page (`/` of the metrics
//! server) and the MQTT sink's retained dashboard topics read it. One mutex per stream, held
//! for a few field updates: the alert stage never waits on a reader for long.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use serde_json::Value;

use crate::alert::event::Event;

/// Seconds of score history kept per stream (one point per second).
pub const HISTORY_SECONDS: usize = 600;
/// Alerts remembered per stream (the open one and the last few ended ones): the snapshot
/// route serves only their files.
pub const ALERTS_KEPT: usize = 8;
/// Seconds over which frame rates are measured.
const RATE_WINDOW_S: f64 = 10.0;
/// Seconds of frame time over which the trust rate (share of frames with `risk` over the
/// chosen level) is measured.
pub const TRUST_WINDOW_S: u64 = 60;

/// What a stream is doing, as the dashboard topics and the status page say it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamState {
    /// Frames arrive and no alert is open.
    Ok,
    /// An alert is open: the classifier does not understand what this camera sees.
    Degraded,
    /// The stream delivers no frames (camera unplugged, pipe without writer, ...).
    Down,
}

impl StreamState {
    /// `ok`, `degraded` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamState::Ok => "ok",
            StreamState::Degraded => "degraded",
            StreamState::Down => "down",
        }
    }
}

/// One alert as the status page and the dashboard topics show it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AlertInfo {
    /// Alert id (`<stream>-<first_seq>-<unix ms>`).
    pub id: String,
    /// `first_time` of the alert (RFC 3339).
    pub first_time: String,
    /// Time of its latest event (RFC 3339).
    pub time: String,
    /// `alert_end`'s reason; `None` while open.
    pub end_reason: Option<String>,
    /// Highest score so far.
    pub peak_score: f64,
    /// Threshold at the peak.
    pub threshold: f64,
    /// Duration so far, ms.
    pub duration_ms: u64,
    /// Tag of the peak frame.
    pub tag: Option<String>,
    /// What raised it, under `cusum` with image evidence: `model` or `image`.
    pub evidence: Option<String>,
    /// JPEG snapshot path (`snapshot` of the latest `alert_start`/`alert_end` that had one).
    pub snapshot: Option<String>,
    /// PNG heat map path, likewise.
    pub heatmap: Option<String>,
}

impl AlertInfo {
    /// Whether the alert is still open.
    pub fn is_open(&self) -> bool {
        self.end_reason.is_none()
    }
}

/// A copy of one stream's status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusView {
    /// `None` until the stream's first event or frame.
    pub state: Option<StreamState>,
    /// Why the stream is down, when it is.
    pub down_reason: Option<String>,
    /// Latest score and its frame time (unix ms).
    pub score: Option<(f64, u64)>,
    /// Threshold in force at the latest frame.
    pub threshold: Option<f64>,
    /// `(unix second, highest score in it)`, oldest first, at most [`HISTORY_SECONDS`];
    /// empty unless asked for.
    pub history: Vec<(u64, f32)>,
    /// Frames scored per second over the last ~10 s (`None` before two samples).
    pub fps_scored: Option<f64>,
    /// Frames dropped per second, likewise.
    pub fps_dropped: Option<f64>,
    /// The open alert, else the last one; `None` before the first.
    pub alert: Option<AlertInfo>,
    /// Increases whenever `state`, `down_reason` or `alert` change (not on scores).
    pub version: u64,
    /// Frames with a `risk` and those with `risk` over the level, over the last
    /// [`TRUST_WINDOW_S`] seconds of frame time; `None` before the first frame with a `risk`.
    pub trust: Option<(u64, u64)>,
}

#[derive(Debug, Default)]
struct Inner {
    state: Option<StreamState>,
    down_reason: Option<String>,
    score: Option<(f64, u64)>,
    threshold: Option<f64>,
    history: VecDeque<(u64, f32)>,
    /// Newest last; the last one is the open alert when it has no end reason.
    alerts: VecDeque<AlertInfo>,
    /// `(when, frames scored, frames dropped)`, one per second or so, oldest first.
    rates: VecDeque<(Instant, u64, u64)>,
    version: u64,
    /// `(unix second, frames with risk, of which over the level)`, oldest first.
    trust: VecDeque<(u64, u64, u64)>,
}

/// One stream's status (inside [`super::StreamMetrics`]).
#[derive(Debug, Default)]
pub struct StreamStatus {
    inner: Mutex<Inner>,
    /// Scored frames whose score was over the threshold (the untrusted ones).
    over_threshold: std::sync::atomic::AtomicU64,
}

impl StreamStatus {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// One scored frame: the latest score and the history (NaN scores are not plotted).
    pub fn frame(&self, time: SystemTime, score: f32, threshold: f32) {
        let ms = crate::base::time::unix_ms(time);
        let mut g = self.lock();
        if g.state.is_none() {
            g.state = Some(StreamState::Ok);
            g.version += 1;
        }
        g.threshold = Some(f64::from(threshold));
        if score.is_nan() {
            return;
        }
        if score > threshold {
            self.over_threshold.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        g.score = Some((f64::from(score), ms));
        let sec = ms / 1000;
        match g.history.back_mut() {
            Some((s, max)) if *s == sec => *max = max.max(score),
            // Frame times go backwards only across a clock step: start the history afresh
            // rather than keep points out of order.
            Some((s, _)) if *s > sec => {
                g.history.clear();
                g.history.push_back((sec, score));
            }
            _ => g.history.push_back((sec, score)),
        }
        while g.history.len() > HISTORY_SECONDS
            || g.history.front().is_some_and(|(s, _)| *s + (HISTORY_SECONDS as u64) <= sec)
        {
            g.history.pop_front();
        }
    }

    /// Scored frames so far whose score was over the threshold.
    pub fn over_threshold(&self) -> u64 {
        self.over_threshold.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// One frame's `risk`: counts it for the trust rate (`over`: its risk is over the level).
    pub fn risk(&self, time: SystemTime, over: bool) {
        let sec = crate::base::time::unix_ms(time) / 1000;
        let mut g = self.lock();
        match g.trust.back_mut() {
            Some((s, n, o)) if *s == sec => {
                *n += 1;
                *o += u64::from(over);
            }
            Some((s, _, _)) if *s > sec => {
                g.trust.clear();
                g.trust.push_back((sec, 1, u64::from(over)));
            }
            _ => g.trust.push_back((sec, 1, u64::from(over))),
        }
        while g.trust.front().is_some_and(|(s, _, _)| s + TRUST_WINDOW_S <= sec) {
            g.trust.pop_front();
        }
    }

    /// Whether an alert is open on this stream (its state is `degraded`).
    pub fn alarm(&self) -> bool {
        self.lock().state == Some(StreamState::Degraded)
    }

    /// One event of this stream, as it goes to the sinks.
    pub fn event(&self, ev: &Event) {
        // Through JSON, so fields added to events later (snapshot and heat map paths) are
        // seen without this code knowing the struct's shape.
        match serde_json::to_value(ev) {
            Ok(v) => self.event_json(&v),
            Err(e) => log::debug!("status: event not serializable: {e}"),
        }
    }

    /// One event in its JSON form (`docs/guide/alerts.md`); unknown events are ignored.
    pub fn event_json(&self, v: &Value) {
        let s = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
        let f = |k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let mut g = self.lock();
        match v.get("event").and_then(Value::as_str) {
            Some("stream_up") => {
                g.state = Some(if g.alerts.back().is_some_and(AlertInfo::is_open) {
                    StreamState::Degraded
                } else {
                    StreamState::Ok
                });
                g.down_reason = None;
            }
            Some("stream_down") => {
                g.state = Some(StreamState::Down);
                g.down_reason = s("reason");
            }
            Some(kind @ ("alert_start" | "alert_update" | "alert_end")) => {
                let Some(id) = s("id") else { return };
                let end_reason = if kind == "alert_end" { Some(s("reason").unwrap_or_default()) } else { None };
                let info = AlertInfo {
                    id: id.clone(),
                    first_time: s("first_time").unwrap_or_default(),
                    time: s("time").unwrap_or_default(),
                    end_reason: end_reason.clone(),
                    peak_score: f("peak_score"),
                    threshold: f("threshold"),
                    duration_ms: v.get("duration_ms").and_then(Value::as_u64).unwrap_or(0),
                    tag: s("tag"),
                    evidence: s("evidence"),
                    snapshot: s("snapshot"),
                    heatmap: s("heatmap"),
                };
                match g.alerts.iter_mut().rev().find(|a| a.id == id) {
                    Some(a) => {
                        // An update or end without pictures keeps the start's.
                        let (snapshot, heatmap, evidence) = (a.snapshot.take(), a.heatmap.take(), a.evidence.take());
                        *a = AlertInfo {
                            snapshot: info.snapshot.or(snapshot),
                            heatmap: info.heatmap.or(heatmap),
                            evidence: info.evidence.or(evidence),
                            ..info
                        };
                    }
                    None => {
                        g.alerts.push_back(info);
                        while g.alerts.len() > ALERTS_KEPT {
                            g.alerts.pop_front();
                        }
                    }
                }
                match (kind, g.state) {
                    // An alert ending because the stream went down: `stream_down` follows.
                    ("alert_end", Some(StreamState::Down)) => {}
                    ("alert_end", _) => g.state = Some(StreamState::Ok),
                    _ => g.state = Some(StreamState::Degraded),
                }
            }
            _ => return,
        }
        g.version += 1;
    }

    /// Records the frame counters for the rates (at most one sample per second is kept).
    pub(crate) fn sample(&self, now: Instant, scored: u64, dropped: u64) {
        let mut g = self.lock();
        if g.rates.back().is_some_and(|(t, _, _)| now.duration_since(*t).as_secs_f64() < 1.0) {
            return;
        }
        g.rates.push_back((now, scored, dropped));
        while g.rates.len() > 2
            && g.rates.get(1).is_some_and(|(t, _, _)| now.duration_since(*t).as_secs_f64() >= RATE_WINDOW_S)
        {
            g.rates.pop_front();
        }
    }

    /// A copy of the status; `history` only when `with_history`.
    pub fn view(&self, with_history: bool) -> StatusView {
        let g = self.lock();
        let ends = g.rates.front().copied().zip(g.rates.back().copied());
        let rate = |pick: fn(&(Instant, u64, u64)) -> u64| {
            let (a, b) = ends?;
            let dt = b.0.duration_since(a.0).as_secs_f64();
            (dt >= 0.5).then(|| pick(&b).saturating_sub(pick(&a)) as f64 / dt)
        };
        StatusView {
            state: g.state,
            down_reason: g.down_reason.clone(),
            score: g.score,
            threshold: g.threshold,
            history: if with_history { g.history.iter().copied().collect() } else { Vec::new() },
            fps_scored: rate(|r| r.1),
            fps_dropped: rate(|r| r.2),
            alert: g.alerts.back().cloned(),
            version: g.version,
            trust: (!g.trust.is_empty()).then(|| g.trust.iter().fold((0, 0), |(n, o), &(_, a, b)| (n + a, o + b))),
        }
    }

    /// The snapshot or heat map path called `file_name` of the remembered alert `alert_id`,
    /// if there is one: the only files the status page serves.
    pub fn alert_file(&self, alert_id: &str, file_name: &str) -> Option<String> {
        let g = self.lock();
        let a = g.alerts.iter().find(|a| a.id == alert_id)?;
        let found = [a.snapshot.as_ref(), a.heatmap.as_ref()]
            .into_iter()
            .flatten()
            .find(|p| std::path::Path::new(p).file_name().and_then(|n| n.to_str()) == Some(file_name))
            .cloned();
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn history_keeps_the_max_per_second_and_600_seconds() {
        let s = StreamStatus::default();
        s.frame(at(1_000), 1.0, 2.0);
        s.frame(at(1_500), 3.0, 2.0);
        s.frame(at(1_900), 2.0, 2.0);
        s.frame(at(2_100), f32::NAN, 2.0);
        let v = s.view(true);
        assert_eq!(v.history, vec![(1, 3.0)]);
        assert_eq!(v.state, Some(StreamState::Ok));
        assert_eq!(v.score, Some((2.0, 1_900)));
        for i in 0..1000u64 {
            s.frame(at(10_000 + i * 1000), i as f32, 2.0);
        }
        let v = s.view(true);
        assert_eq!(v.history.len(), HISTORY_SECONDS);
        assert_eq!(v.history.last(), Some(&(1009, 999.0)));
        assert_eq!(v.history.first(), Some(&(410, 400.0)));
    }

    #[test]
    fn events_drive_the_state_and_remember_files() {
        let s = StreamStatus::default();
        s.event_json(&json!({"event": "stream_up", "stream": "a", "time": "t"}));
        assert_eq!(s.view(false).state, Some(StreamState::Ok));
        s.event_json(&json!({"event": "alert_start", "id": "a-1-2", "stream": "a", "peak_score": 3.0,
            "snapshot": "/snaps/a-1-2-start.jpg", "heatmap": "/snaps/a-1-2-start-heatmap.png", "evidence": "image"}));
        let v = s.view(false);
        assert_eq!(v.state, Some(StreamState::Degraded));
        assert_eq!(v.alert.as_ref().map(|a| a.id.as_str()), Some("a-1-2"));
        s.event_json(&json!({"event": "alert_end", "id": "a-1-2", "stream": "a", "reason": "cleared"}));
        let v = s.view(false);
        assert_eq!(v.state, Some(StreamState::Ok));
        let a = v.alert.unwrap();
        assert_eq!(a.end_reason.as_deref(), Some("cleared"));
        assert_eq!(a.evidence.as_deref(), Some("image"));
        assert_eq!(a.snapshot.as_deref(), Some("/snaps/a-1-2-start.jpg"), "the end keeps the start's pictures");
        assert_eq!(s.alert_file("a-1-2", "a-1-2-start.jpg").as_deref(), Some("/snaps/a-1-2-start.jpg"));
        assert_eq!(s.alert_file("a-1-2", "../a-1-2-start.jpg"), None);
        assert_eq!(s.alert_file("a-1-3", "a-1-2-start.jpg"), None);
        s.event_json(&json!({"event": "alert_start", "id": "a-9-9", "stream": "a"}));
        s.event_json(&json!({"event": "alert_end", "id": "a-9-9", "stream": "a", "reason": "stream_down"}));
        s.event_json(&json!({"event": "stream_down", "stream": "a", "reason": "gone"}));
        let v = s.view(false);
        assert_eq!((v.state, v.down_reason.as_deref()), (Some(StreamState::Down), Some("gone")));
    }

    #[test]
    fn trust_rate_counts_the_last_minute_of_frames() {
        let s = StreamStatus::default();
        assert_eq!(s.view(false).trust, None);
        s.risk(at(1_000), true);
        s.risk(at(1_500), false);
        s.risk(at(30_000), false);
        assert_eq!(s.view(false).trust, Some((3, 1)));
        // 61 s later the first second has left the window.
        s.risk(at(61_000), false);
        assert_eq!(s.view(false).trust, Some((2, 0)));
        assert!(!s.alarm());
    }

    #[test]
    fn rates_come_from_counter_samples() {
        let s = StreamStatus::default();
        let t0 = Instant::now();
        s.sample(t0, 0, 0);
        assert_eq!(s.view(false).fps_scored, None);
        s.sample(t0 + Duration::from_millis(300), 9, 9);
        s.sample(t0 + Duration::from_secs(2), 60, 4);
        let v = s.view(false);
        assert_eq!(v.fps_scored, Some(30.0));
        assert_eq!(v.fps_dropped, Some(2.0));
    }
}
