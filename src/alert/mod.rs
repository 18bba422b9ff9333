//! Debounced alerts: turns a stream of scored frames into `alert_start` / `alert_update` /
//! `alert_end` events with hysteresis and a minimum duration, plus `stream_down` / `stream_up`
//! events. Two policies ([`PolicyKind`]): `k_of_n` (raise at k of the last n frames over
//! threshold, clear at j or fewer) and `cusum` (a CUSUM of per-second p-values under the
//! stream's [`Baseline`], its threshold set by `false_alarms_per_day`; see [`cusum`]).
//!
//! Where things are: the [`AlertTracker`] here (what every policy shares: the stream and
//! sequence checks, the open alert, its minimum duration and updates, the events); each
//! policy's running state in `decider/` (one file per policy behind one trait); the CUSUM's
//! math in `cusum.rs`, the learned baseline in `baseline.rs`, the whole-frame image evidence
//! fused into the `cusum` alarm in `image.rs`, the policy keys in `policy.rs`,
//! the `[alert]` config in `config.rs`, the wire types in `event.rs`, and the open alerts kept
//! across a crash in `open.rs`.
//!
//! Times come from the frames, never from the wall clock, so recorded score sequences replay to
//! identical events. The JSON form of [`Event`] is the wire format of every sink and is
//! documented in `docs/guide/alerts.md`.

pub mod baseline;
mod config;
pub mod cusum;
mod decider;
pub mod event;
pub mod image;
pub mod open;
mod policy;
pub mod run_length;

use std::time::SystemTime;

use crate::base::time::{rfc3339_ms, unix_ms};

pub use baseline::{Baseline, BaselineConfig, Learner};
pub use config::AlertConfig;
pub use cusum::{Cusum, CusumParams};
pub use event::{Alert, EndReason, Event, ModelRef, PolicyDetail, Scored};
pub use image::{ImageBaseline, ImageEvidence};
pub use policy::{AlertPolicy, PolicyKind, ThresholdRule};

use decider::{Decider, Verdict};

/// Errors of the alert module.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The policy's numbers are inconsistent.
    #[error("invalid alert policy: {0} (fix the [alert] section of the config)")]
    InvalidPolicy(String),
}

/// Running statistics of an open alert (or of the alert a policy would raise).
#[derive(Clone, Debug)]
struct Open {
    id: String,
    first_seq: u64,
    first_time: SystemTime,
    raised_at: SystemTime,
    last_emit: SystemTime,
    last_seq: u64,
    last_time: SystemTime,
    frames: u64,
    frames_over: u64,
    score_sum: f64,
    scored: u64,
    peak: Option<Scored>,
}

impl Open {
    /// An empty alert whose first frame is `first`.
    fn starting_at(stream: &str, first: &Scored, now: SystemTime) -> Open {
        Open::at(stream, first.seq, first.time, now)
    }

    /// An empty alert whose first frame is frame `seq` at `time` (the image evidence's
    /// change point: a sample, not a scored frame).
    fn at(stream: &str, seq: u64, time: SystemTime, now: SystemTime) -> Open {
        Open {
            id: format!("{}-{}-{}", stream, seq, unix_ms(time)),
            first_seq: seq,
            first_time: time,
            raised_at: now,
            last_emit: now,
            last_seq: seq,
            last_time: time,
            frames: 0,
            frames_over: 0,
            score_sum: 0.0,
            scored: 0,
            peak: None,
        }
    }

    fn add(&mut self, s: &Scored) {
        self.frames += 1;
        self.last_seq = s.seq;
        self.last_time = s.time;
        if s.is_over() {
            self.frames_over += 1;
        }
        if !s.score.is_nan() {
            self.score_sum += f64::from(s.score);
            self.scored += 1;
            if self.peak.as_ref().is_none_or(|p| s.score > p.score) {
                self.peak = Some(s.clone());
            }
        }
    }
}

/// Debounced alert state machine for one stream: the stream and sequence checks, the open
/// alert, its minimum duration and periodic updates, and the events; the policy's own state
/// (a window of frames, or blocks and a CUSUM with a baseline) is its decider (`decider/`).
pub struct AlertTracker {
    stream: String,
    policy: AlertPolicy,
    model: ModelRef,
    decider: Box<dyn Decider>,
    last_seq: Option<u64>,
    open: Option<Open>,
    out_of_order: u64,
    /// The whole-frame image evidence fused into the `cusum` alarm, when the stream learns it.
    image: Option<ImageEvidence>,
    /// The open alert: which evidence raised it, and whether the model's and the image's
    /// evidence would each clear it (it clears when both would).
    raised_by: Option<&'static str>,
    clear_votes: [bool; 2],
}

impl AlertTracker {
    /// A tracker for `stream`; fails if the policy is inconsistent.
    pub fn new(stream: impl Into<String>, policy: AlertPolicy, model: ModelRef) -> Result<Self, AlertError> {
        policy.validate()?;
        let stream = stream.into();
        Ok(AlertTracker {
            decider: decider::for_policy(&stream, &policy, &model),
            stream,
            policy,
            model,
            last_seq: None,
            open: None,
            out_of_order: 0,
            image: None,
            raised_by: None,
            clear_votes: [false; 2],
        })
    }

    /// Uses `baseline` (a learned one, e.g. loaded from the state directory) as the clean
    /// distribution; ignored under `k_of_n` or when it was taken at another block length or
    /// for another model.
    pub fn set_baseline(&mut self, baseline: Baseline) -> Result<(), String> {
        self.decider.set_baseline(baseline)
    }

    /// Learns the stream's baseline from its clean blocks (and adapts it afterwards) under
    /// `config`; no-op under `k_of_n`. With `config.image` (under `cusum`) the stream also
    /// learns its picture ([`image`]) and its alarm fuses both: the model's CUSUM then runs at
    /// the rest of the stated rate (a baseline already set is kept).
    pub fn learn_baseline(&mut self, config: BaselineConfig) {
        if config.image && self.image.is_none() {
            let p = &self.policy;
            let rate = p.false_alarms_per_day;
            let e = ImageEvidence::new(&self.stream, config.learn_minutes, image::SETTING, rate, p.clear_evidence);
            self.use_image_evidence(e);
        }
        self.decider.learn_baseline(config);
    }

    /// Fuses `evidence` into the alarm (under `cusum`; no-op under `k_of_n`): the model's CUSUM
    /// is rebuilt at the rest of the stated rate, keeping a baseline already set (call
    /// [`learn_baseline`](Self::learn_baseline) afterwards to learn and adapt).
    pub fn use_image_evidence(&mut self, evidence: ImageEvidence) {
        if self.policy.policy != PolicyKind::Cusum {
            return;
        }
        let p = &self.policy;
        let rest =
            AlertPolicy { false_alarms_per_day: p.false_alarms_per_day * (1.0 - image::RATE_SHARE), ..p.clone() };
        let mut old = std::mem::replace(&mut self.decider, decider::for_policy(&self.stream, &rest, &self.model));
        if let Err(e) = self.decider.carry_baseline_from(old.as_mut()) {
            log::warn!("stream {}: baseline not kept: {e}", self.stream);
        }
        self.image = Some(evidence);
    }

    /// The stream's image evidence, when it learns its picture.
    pub fn image(&self) -> Option<&ImageEvidence> {
        self.image.as_ref()
    }

    /// Uses a saved image baseline; an error when the stream does not learn its picture or the
    /// file is not this stream's.
    pub fn set_image_baseline(&mut self, b: ImageBaseline) -> Result<(), String> {
        match self.image.as_mut() {
            Some(i) => i.set_learned(b),
            None => Err("this stream does not use image evidence (`baseline = { image = true }`)".into()),
        }
    }

    /// The image baseline when it was learned since the last call (to persist it).
    pub fn take_changed_image(&mut self) -> Option<ImageBaseline> {
        self.image.as_mut().and_then(ImageEvidence::take_changed)
    }

    /// One whole-frame sample of the frame `seq` at `time` (frame time): learning, or the
    /// image CUSUM, which may raise the stream's alert or vote to clear it.
    pub fn image_sample(&mut self, seq: u64, time: SystemTime, q: &image::Quality) -> Vec<Event> {
        let Some(img) = self.image.as_mut() else { return Vec::new() };
        let verdict = match img.sample(seq, time, q, self.open.is_some()) {
            image::ImageVerdict::Wait => return Vec::new(),
            image::ImageVerdict::Raise(first_seq, first_time) => {
                if self.open.is_some() {
                    return Vec::new();
                }
                // From the run's first sample to the one that raised it.
                let mut open = Open::at(&self.stream, first_seq, first_time, time);
                (open.last_seq, open.last_time) = (seq, time);
                self.open = Some(open);
                self.raised("image");
                return vec![Event::AlertStart { alert: self.snapshot(time) }];
            }
            image::ImageVerdict::Open(clear) => {
                self.clear_votes[1] = clear;
                self.fused_verdict()
            }
        };
        self.follow(verdict, time).into_iter().collect()
    }

    /// An alert was raised by `by`: the clear votes start over.
    fn raised(&mut self, by: &'static str) {
        self.raised_by = Some(by);
        self.clear_votes = [false; 2];
    }

    /// Whether the image evidence has learned its baseline (and so takes part).
    fn image_in_force(&self) -> bool {
        self.image.as_ref().is_some_and(|i| i.learned().is_some())
    }

    /// Clear when the model's evidence would and, once learned, the image's too.
    fn fused_verdict(&self) -> Verdict {
        if self.clear_votes[0] && (self.clear_votes[1] || !self.image_in_force()) {
            Verdict::Clear
        } else {
            Verdict::Stay
        }
    }

    /// Takes over `old`'s learned baseline and its learner (the blocks learned so far, the
    /// quarantine, the adaptation state) when a policy change replaces `old` by `self`, so that
    /// a reload neither drops a learned baseline nor starts learning again. Needs the same
    /// block length under both policies; otherwise nothing is taken (a learned baseline is
    /// refused with the reason, and learning starts over at the new block length).
    pub fn carry_baseline_from(&mut self, old: &mut AlertTracker) -> Result<(), String> {
        if let (Some(new), Some(prev)) = (self.image.as_mut(), old.image.as_mut()) {
            new.carry_from(prev);
        }
        self.decider.carry_baseline_from(old.decider.as_mut())
    }

    /// The clean distribution in force and whether it was learned on this stream (`None`
    /// under `k_of_n`, or before the first frame without a learned one).
    pub fn baseline(&self) -> Option<(&Baseline, bool)> {
        self.decider.baseline()
    }

    /// The learned baseline when it was completed or adapted since the last call (to persist
    /// it).
    pub fn take_changed_baseline(&mut self) -> Option<Baseline> {
        self.decider.take_changed_baseline()
    }

    /// Blocks learned so far and blocks needed, while a baseline is being learned.
    pub fn learning_progress(&self) -> Option<(usize, usize)> {
        self.decider.learning_progress()
    }

    /// The CUSUM statistic `S` (0 under `k_of_n`).
    pub fn statistic(&self) -> f64 {
        match self.policy.policy {
            PolicyKind::Cusum => self.decider.statistic(),
            PolicyKind::KOfN => 0.0,
        }
    }

    /// The last closed block's statistic (median score) and p-value, under `cusum`.
    pub fn last_block(&self) -> Option<(f32, f64)> {
        self.decider.last_block()
    }

    /// The policy's state as an alert event would carry it: under `cusum`, `statistic_threshold`
    /// is the `h` in force (the simulated one once a block has been scored under
    /// `threshold = "simulated"`).
    pub fn detail(&self) -> PolicyDetail {
        let mut d = self.decider.detail();
        if let Some(i) = self.image.as_ref() {
            // The model's CUSUM runs at its share; the stream's stated rate is the pair's.
            d.false_alarms_per_day = Some(self.policy.false_alarms_per_day);
            if i.learned().is_some() {
                let (s, h) = i.statistic();
                d.image_statistic = Some(s);
                d.image_statistic_threshold = Some(h);
            }
            d.evidence = self.open.as_ref().and(self.raised_by).map(str::to_string);
        }
        d
    }

    /// The policy in force.
    pub fn policy(&self) -> &AlertPolicy {
        &self.policy
    }

    /// SHA-256 of the model whose scores this tracker sees.
    pub fn model_sha256(&self) -> &str {
        &self.model.sha256
    }

    /// The stream name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Whether an alert is open.
    pub fn is_active(&self) -> bool {
        self.open.is_some()
    }

    /// Over-threshold frames among the last `window` frames (0 under `cusum`).
    pub fn over_in_window(&self) -> usize {
        match self.policy.policy {
            // The k-of-n statistic is that count.
            PolicyKind::KOfN => self.decider.statistic() as usize,
            PolicyKind::Cusum => 0,
        }
    }

    /// Frames ignored because their `seq` did not increase (duplicates, reordering).
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Feeds one frame; returns the events it causes (none or one with today's policies; a `Vec` so that
    /// a policy may cause more).
    ///
    /// Frames of another stream or with a non-increasing `seq` are ignored (counted in
    /// [`out_of_order`](Self::out_of_order)).
    pub fn push(&mut self, s: &Scored) -> Vec<Event> {
        if s.stream != self.stream || self.last_seq.is_some_and(|last| s.seq <= last) {
            self.out_of_order += 1;
            return Vec::new();
        }
        self.last_seq = Some(s.seq);
        let verdict = match self.decider.push(s, self.open.as_mut()) {
            v @ (Verdict::Stay | Verdict::Clear) if self.image.is_some() => {
                self.clear_votes[0] = matches!(v, Verdict::Clear);
                self.fused_verdict()
            }
            v => v,
        };
        self.follow(verdict, s.time).into_iter().collect()
    }

    /// Acts on the policy's verdict on the frame at `now`.
    fn follow(&mut self, verdict: Verdict, now: SystemTime) -> Option<Event> {
        let clear = match verdict {
            Verdict::Wait => return None,
            Verdict::Raise(mut open) => {
                open.raised_at = now;
                open.last_emit = now;
                self.open = Some(*open);
                self.raised("model");
                return Some(Event::AlertStart { alert: self.snapshot(now) });
            }
            Verdict::Stay => false,
            Verdict::Clear => true,
        };
        let open = self.open.as_mut()?;
        let held = ms_between(open.raised_at, now) >= self.policy.min_duration_ms;
        if clear && held {
            self.decider.cleared();
            if let Some(i) = self.image.as_mut() {
                i.reset();
            }
            Some(self.close(now, EndReason::Cleared))
        } else if self.policy.update_interval_ms > 0
            && ms_between(open.last_emit, now) >= self.policy.update_interval_ms
        {
            open.last_emit = now;
            Some(Event::AlertUpdate { alert: self.snapshot(now) })
        } else {
            None
        }
    }

    /// Closes an open alert with reason "shutdown" at `time`.
    pub fn shutdown(&mut self, time: SystemTime) -> Vec<Event> {
        if self.open.is_some() {
            vec![self.close(time, EndReason::Shutdown)]
        } else {
            Vec::new()
        }
    }

    /// The stream went down: ends an open alert (reason "stream_down"), then `stream_down`.
    /// The window is reset, since frames after a restart are a new sequence.
    pub fn stream_down(&mut self, time: SystemTime, reason: &str) -> Vec<Event> {
        let mut out = Vec::new();
        if self.open.is_some() {
            out.push(self.close(time, EndReason::StreamDown));
        }
        self.reset_window();
        out.push(Event::StreamDown { stream: self.stream.clone(), time: rfc3339_ms(time), reason: reason.to_string() });
        out
    }

    /// The stream (re)started; resets the window and the sequence check (a restarted source
    /// may count from 0 again).
    pub fn stream_up(&mut self, time: SystemTime) -> Event {
        self.reset_window();
        Event::StreamUp { stream: self.stream.clone(), time: rfc3339_ms(time) }
    }

    fn reset_window(&mut self) {
        self.last_seq = None;
        self.decider.reset();
        if let Some(i) = self.image.as_mut() {
            i.reset();
        }
    }

    fn close(&mut self, time: SystemTime, reason: EndReason) -> Event {
        let alert = self.snapshot(time);
        self.open = None;
        Event::AlertEnd { alert, reason }
    }

    /// The open alert's numbers as of `time`. Only called with an alert open.
    fn snapshot(&self, time: SystemTime) -> Alert {
        let Some(open) = self.open.as_ref() else {
            // Unreachable by construction; an empty alert is better than a panic.
            return self.empty_alert(time);
        };
        let peak = open.peak.as_ref();
        Alert {
            id: open.id.clone(),
            stream: self.stream.clone(),
            time: rfc3339_ms(time),
            first_seq: open.first_seq,
            last_seq: open.last_seq,
            first_time: rfc3339_ms(open.first_time),
            last_time: rfc3339_ms(open.last_time),
            duration_ms: ms_between(open.first_time, time),
            frames: open.frames,
            frames_over: open.frames_over,
            peak_score: peak.map_or(0.0, |p| p.score),
            mean_score: if open.scored > 0 { (open.score_sum / open.scored as f64) as f32 } else { 0.0 },
            threshold: peak.map_or(0.0, |p| p.threshold),
            top_class: peak.map_or(0, |p| p.top_class),
            top_class_name: peak.and_then(|p| p.top_class_name.clone()),
            confidence: peak.map_or(0.0, |p| p.confidence),
            model: self.model.name.clone(),
            model_sha256: self.model.sha256.clone(),
            tag: peak.and_then(|p| p.tag.clone()),
            snapshot: None,
            heatmap: None,
            detail: self.detail(),
        }
    }

    fn empty_alert(&self, time: SystemTime) -> Alert {
        Alert {
            id: String::new(),
            stream: self.stream.clone(),
            time: rfc3339_ms(time),
            first_seq: 0,
            last_seq: 0,
            first_time: rfc3339_ms(time),
            last_time: rfc3339_ms(time),
            duration_ms: 0,
            frames: 0,
            frames_over: 0,
            peak_score: 0.0,
            mean_score: 0.0,
            threshold: 0.0,
            top_class: 0,
            top_class_name: None,
            confidence: 0.0,
            model: self.model.name.clone(),
            model_sha256: self.model.sha256.clone(),
            tag: None,
            snapshot: None,
            heatmap: None,
            detail: self.detail(),
        }
    }
}

/// Milliseconds from `a` to `b`, 0 if `b` is earlier (clock steps must not underflow).
fn ms_between(a: SystemTime, b: SystemTime) -> u64 {
    b.duration_since(a).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_validation() {
        assert!(AlertPolicy::default().validate().is_ok());
        let bad = |w, r, c| AlertPolicy { window: w, raise: r, clear: c, ..AlertPolicy::default() }.validate().is_err();
        assert!(bad(0, 0, 0));
        assert!(bad(5, 6, 2));
        assert!(bad(10, 0, 0));
        assert!(bad(10, 3, 3));
        assert!(!bad(1, 1, 0));
    }

    #[test]
    fn policy_toml_defaults_and_unknown_fields() {
        let p: AlertPolicy = toml::from_str("raise = 4").unwrap();
        assert_eq!(p.raise, 4);
        assert_eq!(p.window, 10);
        assert_eq!(p.update_interval_ms, 5000);
        assert!(toml::from_str::<AlertPolicy>("rise = 4").is_err());
    }

    /// A noisy clean picture (measure `j` of sample `i` near 10) or a degraded one (all 0).
    fn picture(i: u64, degraded: bool) -> image::Quality {
        let mut q = [10.0; image::MEASURES];
        for (j, v) in q.iter_mut().enumerate() {
            *v += (((i * 7919 + j as u64 * 104_729) % 1000) as f32 / 1000.0) - 0.5;
        }
        if degraded {
            q = [0.0; image::MEASURES];
        }
        q
    }

    /// Frames `seq` in `range` at 10 a second scoring 0 (clean to the model), a whole-frame
    /// sample each second showing `degraded` or a clean picture; the events.
    fn feed(t: &mut AlertTracker, range: std::ops::Range<u64>, degraded: bool) -> Vec<Event> {
        let mut evs = Vec::new();
        for seq in range {
            let f = decider::test_frame(seq, 0.0, 2.0);
            if seq % 10 == 0 {
                evs.extend(t.image_sample(seq, f.time, &picture(seq / 10, degraded)));
            }
            evs.extend(t.push(&f));
        }
        evs
    }

    /// With image evidence the stream learns its picture in two periods, then alarms on
    /// whichever evidence fires first (here the picture, while the scores stay clean), says
    /// so, and clears only when both evidences would; each CUSUM runs at half the stated rate.
    #[test]
    fn image_evidence_raises_and_both_must_clear() {
        let policy = AlertPolicy { policy: PolicyKind::Cusum, false_alarms_per_day: 1.2, ..Default::default() };
        let model = ModelRef { name: "m".into(), sha256: "ab".into() };
        let mut t = AlertTracker::new("cam", policy, model).unwrap();
        t.learn_baseline(BaselineConfig { learn_minutes: 1.0, image: true, ..Default::default() });
        // Two learning periods of 60 samples, then ten clean minutes: no event.
        assert!(feed(&mut t, 0..1200, false).is_empty());
        assert!(t.take_changed_image().is_some());
        assert!(feed(&mut t, 1200..7200, false).is_empty());
        let d = t.detail();
        let half = CusumParams::threshold(0.6, 1000);
        assert_eq!(d.false_alarms_per_day, Some(1.2));
        assert_eq!((d.statistic_threshold, d.image_statistic_threshold), (Some(half), Some(half)));
        assert_eq!(d.evidence, None);
        // The picture degrades: raised by the image within 10 s, from the first degraded second.
        let evs = feed(&mut t, 7200..7300, true);
        let Some(Event::AlertStart { alert }) = evs.first() else { panic!("no alert: {evs:?}") };
        assert_eq!((alert.first_seq, alert.detail.evidence.as_deref()), (7200, Some("image")));
        // The scores alone would clear it at once; the degraded picture keeps it open.
        assert!(feed(&mut t, 7300..7900, true).iter().all(|e| !matches!(e, Event::AlertEnd { .. })));
        // The picture comes back: cleared within seconds.
        let evs = feed(&mut t, 7900..8200, false);
        let end = evs.iter().position(|e| matches!(e, Event::AlertEnd { reason: EndReason::Cleared, .. }));
        assert!(end.is_some(), "not cleared: {evs:?}");
    }

    #[test]
    fn event_ids_are_spliced_into_the_json() {
        let id = crate::base::time::new_event_id();
        let ev = Event::StreamUp { stream: "cam".into(), time: "2024-01-01T00:00:00.000Z".into() };
        let json = ev.to_json_with_id(&id);
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["event_id"], id.as_str());
        assert_eq!(v["event"], "stream_up");
        // Consumers that do not know the field still read the event.
        assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), ev);
    }
}
