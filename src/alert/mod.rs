//! Debounced alerts: turns a stream of scored frames into `alert_start` / `alert_update` /
//! `alert_end` events with hysteresis and a minimum duration, plus `stream_down` / `stream_up`
//! events. Two policies ([`PolicyKind`]): `k_of_n` (raise at k of the last n frames over
//! threshold, clear at j or fewer) and `cusum` (a CUSUM of per-second p-values under the
//! stream's [`Baseline`], its threshold set by `false_alarms_per_day`; see [`cusum`]).
//!
//! Times come from the frames, never from the wall clock, so recorded score sequences replay to
//! identical events. The JSON form of [`Event`] is the wire format of every sink and is
//! documented in `docs/guide/alerts.md`.

pub mod baseline;
mod config;
pub mod cusum;
pub mod event;
pub mod open;
mod policy;
pub mod run_length;

use std::collections::VecDeque;
use std::time::SystemTime;

use crate::base::time::{rfc3339_ms, unix_ms};

pub use baseline::{Baseline, BaselineConfig, Learner};
pub use config::AlertConfig;
pub use cusum::{Cusum, CusumParams};
pub use event::{Alert, EndReason, Event, ModelRef, PolicyDetail, Scored};
pub use policy::{AlertPolicy, PolicyKind};

/// Errors of the alert module.
#[derive(Debug, thiserror::Error)]
pub enum AlertError {
    /// The policy's numbers are inconsistent.
    #[error("invalid alert policy: {0} (fix the [alert] section of the config)")]
    InvalidPolicy(String),
}

/// Running statistics of an open alert.
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
        Open {
            id: format!("{}-{}-{}", stream, first.seq, unix_ms(first.time)),
            first_seq: first.seq,
            first_time: first.time,
            raised_at: now,
            last_emit: now,
            last_seq: first.seq,
            last_time: first.time,
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

/// Debounced alert state machine for one stream.
pub struct AlertTracker {
    stream: String,
    policy: AlertPolicy,
    model: ModelRef,
    /// The last `window` frames, kept in full so a raise can account for the frames since
    /// the first over-threshold one.
    recent: VecDeque<Scored>,
    over_in_window: usize,
    last_seq: Option<u64>,
    open: Option<Open>,
    out_of_order: u64,
    /// The cusum policy's state (`None` under `k_of_n`).
    cusum: Option<CusumState>,
}

/// Frames kept per block at most (a block of a very fast stream keeps its first ones).
const MAX_BLOCK_FRAMES: usize = 10_000;

/// The cusum policy's running state.
struct CusumState {
    stat: Cusum,
    /// Frames of the current block.
    block: Vec<Scored>,
    block_start: Option<SystemTime>,
    /// The clean distribution in force; `None` until the first frame brings the threshold
    /// the calibration fallback is derived from.
    baseline: Option<Baseline>,
    /// Whether `baseline` was learned on this stream (else the calibration fallback).
    learned: bool,
    learner: Option<Learner>,
    /// The alert that would open if `S` reached `h`: from the first block of the current
    /// run of `S > 0` (the CUSUM's change-point estimate).
    candidate: Option<Open>,
    /// The last block's statistic and p-value (for metrics and tests).
    last_block: Option<(f32, f64)>,
    /// Blocks closed.
    blocks: u64,
}

impl AlertTracker {
    /// A tracker for `stream`; fails if the policy is inconsistent.
    pub fn new(stream: impl Into<String>, policy: AlertPolicy, model: ModelRef) -> Result<Self, AlertError> {
        policy.validate()?;
        let policy_kind = policy.policy;
        Ok(AlertTracker {
            stream: stream.into(),
            recent: VecDeque::with_capacity(policy.window),
            policy,
            model,
            over_in_window: 0,
            last_seq: None,
            open: None,
            out_of_order: 0,
            cusum: (policy_kind == PolicyKind::Cusum).then(|| CusumState {
                stat: Cusum::default(),
                block: Vec::new(),
                block_start: None,
                baseline: None,
                learned: false,
                learner: None,
                candidate: None,
                last_block: None,
                blocks: 0,
            }),
        })
    }

    /// Uses `baseline` (a learned one, e.g. loaded from the state directory) as the clean
    /// distribution; ignored under `k_of_n` or when it was taken at another block length or
    /// for another model.
    pub fn set_baseline(&mut self, baseline: Baseline) -> Result<(), String> {
        let Some(c) = self.cusum.as_mut() else { return Ok(()) };
        baseline.validate()?;
        if baseline.block_ms != self.policy.block_ms {
            return Err(format!("baseline block_ms {} != policy block_ms {}", baseline.block_ms, self.policy.block_ms));
        }
        if baseline.model_sha256 != self.model.sha256 {
            return Err("baseline belongs to another model (sha256 differs)".into());
        }
        c.baseline = Some(baseline);
        c.learned = true;
        Ok(())
    }

    /// Learns the stream's baseline from its clean blocks (and adapts it afterwards) under
    /// `config`; no-op under `k_of_n`.
    pub fn learn_baseline(&mut self, config: BaselineConfig) {
        if let Some(c) = self.cusum.as_mut() {
            c.learner = Some(Learner::new(config, &self.stream, &self.model.sha256, self.policy.block_ms));
        }
    }

    /// Takes over `old`'s learned baseline and its learner (the blocks learned so far, the
    /// quarantine, the adaptation state) when a policy change replaces `old` by `self`, so that
    /// a reload neither drops a learned baseline nor starts learning again. Needs the same
    /// block length under both policies; otherwise nothing is taken (a learned baseline is
    /// refused with the reason, and learning starts over at the new block length).
    pub fn carry_baseline_from(&mut self, old: &mut AlertTracker) -> Result<(), String> {
        let block_ms = self.policy.block_ms;
        let (Some(new), Some(prev)) = (self.cusum.as_mut(), old.cusum.as_mut()) else { return Ok(()) };
        if old.policy.block_ms != block_ms {
            if prev.learned {
                return Err(format!("baseline block_ms {} != policy block_ms {block_ms}", old.policy.block_ms));
            }
            return Ok(());
        }
        if new.learner.is_some() {
            if let Some(l) = prev.learner.take() {
                new.learner = Some(l);
            }
        }
        if prev.learned {
            new.baseline = prev.baseline.take();
            new.learned = new.baseline.is_some();
        }
        Ok(())
    }

    /// The clean distribution in force and whether it was learned on this stream (`None`
    /// under `k_of_n`, or before the first frame without a learned one).
    pub fn baseline(&self) -> Option<(&Baseline, bool)> {
        let c = self.cusum.as_ref()?;
        c.baseline.as_ref().map(|b| (b, c.learned))
    }

    /// The learned baseline when it was completed or adapted since the last call (to persist
    /// it).
    pub fn take_changed_baseline(&mut self) -> Option<Baseline> {
        let c = self.cusum.as_mut()?;
        let changed = c.learner.as_mut().is_some_and(Learner::take_changed);
        if changed && c.learned {
            c.baseline.clone()
        } else {
            None
        }
    }

    /// Blocks learned so far and blocks needed, while a baseline is being learned.
    pub fn learning_progress(&self) -> Option<(usize, usize)> {
        let c = self.cusum.as_ref()?;
        if c.learned {
            return None;
        }
        c.learner.as_ref().map(|l| (l.learning_blocks(), l.blocks_needed()))
    }

    /// The CUSUM statistic `S` (0 under `k_of_n`).
    pub fn statistic(&self) -> f64 {
        self.cusum.as_ref().map_or(0.0, |c| c.stat.s)
    }

    /// The last closed block's statistic (median score) and p-value, under `cusum`.
    pub fn last_block(&self) -> Option<(f32, f64)> {
        self.cusum.as_ref().and_then(|c| c.last_block)
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

    /// Over-threshold frames among the last `window` frames.
    pub fn over_in_window(&self) -> usize {
        self.over_in_window
    }

    /// Frames ignored because their `seq` did not increase (duplicates, reordering).
    pub fn out_of_order(&self) -> u64 {
        self.out_of_order
    }

    /// Feeds one frame; returns the events it causes (none, one, or rarely two).
    ///
    /// Frames of another stream or with a non-increasing `seq` are ignored (counted in
    /// [`out_of_order`](Self::out_of_order)).
    pub fn push(&mut self, s: &Scored) -> Vec<Event> {
        if s.stream != self.stream || self.last_seq.is_some_and(|last| s.seq <= last) {
            self.out_of_order += 1;
            return Vec::new();
        }
        self.last_seq = Some(s.seq);
        if self.cusum.is_some() {
            return self.push_cusum(s);
        }
        self.recent.push_back(s.clone());
        if s.is_over() {
            self.over_in_window += 1;
        }
        if self.recent.len() > self.policy.window {
            if let Some(old) = self.recent.pop_front() {
                if old.is_over() {
                    self.over_in_window -= 1;
                }
            }
        }

        let mut out = Vec::new();
        match self.open.as_mut() {
            None => {
                if self.over_in_window >= self.policy.raise {
                    out.push(self.raise(s.time));
                }
            }
            Some(open) => {
                open.add(s);
                let held = ms_between(open.raised_at, s.time) >= self.policy.min_duration_ms;
                if self.over_in_window <= self.policy.clear && held {
                    out.push(self.close(s.time, EndReason::Cleared));
                } else if self.policy.update_interval_ms > 0
                    && ms_between(open.last_emit, s.time) >= self.policy.update_interval_ms
                {
                    open.last_emit = s.time;
                    let alert = self.snapshot(s.time);
                    out.push(Event::AlertUpdate { alert });
                }
            }
        }
        out
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
        self.recent.clear();
        self.over_in_window = 0;
        self.last_seq = None;
        if let Some(c) = self.cusum.as_mut() {
            c.stat.reset();
            c.block.clear();
            c.block_start = None;
            c.candidate = None;
        }
    }

    /// `cusum`: adds the frame to its block; the first frame past a block's end closes it.
    fn push_cusum(&mut self, s: &Scored) -> Vec<Event> {
        let mut out = Vec::new();
        let block_ms = self.policy.block_ms;
        let Some(c) = self.cusum.as_mut() else { return out };
        if c.baseline.is_none() {
            c.baseline = Some(cusum::fallback_baseline(&self.stream, &self.model.sha256, block_ms, s.threshold));
        }
        if c.block_start.is_some_and(|t| ms_between(t, s.time) >= block_ms) {
            out.extend(self.close_block(s.time));
        }
        let Some(c) = self.cusum.as_mut() else { return out };
        if c.block_start.is_none() {
            c.block_start = Some(s.time);
        }
        if c.block.len() < MAX_BLOCK_FRAMES {
            c.block.push(s.clone());
        }
        out
    }

    /// `cusum`: scores the finished block, updates the CUSUM, raises / clears / updates.
    fn close_block(&mut self, now: SystemTime) -> Vec<Event> {
        let mut out = Vec::new();
        let Some(c) = self.cusum.as_mut() else { return out };
        let frames = std::mem::take(&mut c.block);
        c.block_start = None;
        let mut scores: Vec<f32> = frames.iter().map(|f| f.score).collect();
        let x = cusum::block_statistic(&mut scores);
        let Some(baseline) = c.baseline.as_ref() else { return out };
        let params = self.policy.cusum_params(baseline);
        // The calibration's tail scale bounds a *learned* baseline's; the fallback has its own.
        let floor = match (c.learned, frames.last()) {
            (true, Some(f)) => f64::from(f.clean_tail_scale),
            _ => 0.0,
        };
        let p = baseline.p_value(x, floor);
        let open = self.open.is_some();
        c.stat.update(&params, p, open);
        c.last_block = Some((x, p));
        c.blocks += 1;
        let suspicious = open || c.stat.s >= params.h / 2.0;
        if let (Some(learner), false) = (c.learner.as_mut(), x.is_nan()) {
            let end_ms = unix_ms(now);
            let current = if c.learned { c.baseline.as_mut() } else { None };
            if let Some(b) = learner.block(end_ms, x, suspicious, current) {
                c.baseline = Some(b);
                c.learned = true;
            }
        }
        if let Some(o) = self.open.as_mut() {
            for f in &frames {
                o.add(f);
            }
            let held = ms_between(o.raised_at, now) >= self.policy.min_duration_ms;
            if c.stat.t >= params.clear && held {
                c.stat.reset();
                c.candidate = None;
                out.push(self.close(now, EndReason::Cleared));
            } else if self.policy.update_interval_ms > 0
                && ms_between(o.last_emit, now) >= self.policy.update_interval_ms
            {
                o.last_emit = now;
                out.push(Event::AlertUpdate { alert: self.snapshot(now) });
            }
            return out;
        }
        if c.stat.s <= 0.0 {
            c.candidate = None;
            return out;
        }
        if c.candidate.is_none() {
            if let Some(first) = frames.first() {
                c.candidate = Some(Open::starting_at(&self.stream, first, now));
            }
        }
        if let Some(cand) = c.candidate.as_mut() {
            for f in &frames {
                cand.add(f);
            }
        }
        if c.stat.s >= params.h {
            c.stat.t = 0.0;
            if let Some(mut o) = c.candidate.take() {
                o.raised_at = now;
                o.last_emit = now;
                self.open = Some(o);
                out.push(Event::AlertStart { alert: self.snapshot(now) });
            }
        }
        out
    }

    /// Opens an alert covering the window from its first over-threshold frame.
    fn raise(&mut self, now: SystemTime) -> Event {
        let start = self.recent.iter().position(Scored::is_over).unwrap_or(0);
        let first = &self.recent[start];
        let mut open = Open::starting_at(&self.stream, first, now);
        for s in self.recent.iter().skip(start) {
            open.add(s);
        }
        self.open = Some(open);
        let alert = self.snapshot(now);
        Event::AlertStart { alert }
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

    /// The policy's side of an event, as of now.
    fn detail(&self) -> PolicyDetail {
        match (self.policy.policy, self.cusum.as_ref()) {
            (PolicyKind::Cusum, Some(c)) => PolicyDetail {
                policy: Some(PolicyKind::Cusum.as_str().into()),
                statistic: Some(c.stat.s),
                statistic_threshold: Some(CusumParams::threshold(
                    self.policy.false_alarms_per_day,
                    self.policy.block_ms,
                )),
                false_alarms_per_day: Some(self.policy.false_alarms_per_day),
                baseline: Some(if c.learned { "learned" } else { "calibration" }.into()),
            },
            _ => PolicyDetail {
                policy: Some(PolicyKind::KOfN.as_str().into()),
                statistic: Some(self.over_in_window as f64),
                statistic_threshold: Some(self.policy.raise as f64),
                false_alarms_per_day: None,
                baseline: None,
            },
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
