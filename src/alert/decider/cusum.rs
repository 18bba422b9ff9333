//! The `cusum` policy's running state: frames grouped into blocks of `block_ms`, each closed
//! block's p-value under the stream's [`Baseline`] fed to the CUSUM, and the baseline itself
//! (the calibration fallback, a loaded one, or one being learned). The statistic's math is in
//! [`crate::alert::cusum`].

use std::any::Any;
use std::time::SystemTime;

use super::{Decider, Verdict};
use crate::alert::cusum::{block_statistic, fallback_baseline};
use crate::alert::run_length::simulated_threshold_cached;
use crate::alert::{ms_between, AlertPolicy, Baseline, BaselineConfig, Cusum, CusumParams, Learner, Open};
use crate::alert::{PolicyDetail, PolicyKind, Scored, ThresholdRule};
use crate::base::time::unix_ms;

/// Frames kept per block at most (a block of a very fast stream keeps its first ones).
const MAX_BLOCK_FRAMES: usize = 10_000;

/// The cusum policy's running state for one stream.
pub(super) struct CusumDecider {
    stream: String,
    model_sha256: String,
    policy: AlertPolicy,
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
    /// Under [`ThresholdRule::Simulated`]: the tail floor and the `h` simulated for the
    /// baseline in force (cleared whenever the baseline is replaced; adaptation, slow and
    /// bounded, keeps it).
    simulated_h: Option<(f64, f64)>,
}

/// Seed of the threshold simulation (one fixed seed: the same baseline gives the same `h`).
const SIMULATION_SEED: u64 = 0x25_c05a;

impl CusumDecider {
    /// The state of `policy` for `stream`, whose scores come from the model `model_sha256`.
    pub(super) fn new(stream: &str, policy: &AlertPolicy, model_sha256: &str) -> CusumDecider {
        CusumDecider {
            stream: stream.to_string(),
            model_sha256: model_sha256.to_string(),
            policy: policy.clone(),
            stat: Cusum::default(),
            block: Vec::new(),
            block_start: None,
            baseline: None,
            learned: false,
            learner: None,
            candidate: None,
            last_block: None,
            blocks: 0,
            simulated_h: None,
        }
    }

    /// The threshold in force: the simulated one once simulated on a learned baseline, else
    /// Lorden's bound. The calibration's fallback keeps the bound: simulated on the calibration's
    /// held-out scores, `h` comes out above the bound and misses more onsets while a camera
    /// learns (docs/results/alarms.md).
    fn h(&self) -> f64 {
        match (self.policy.threshold, self.simulated_h) {
            (ThresholdRule::Simulated, Some((_, h))) if self.learned => h,
            _ => CusumParams::threshold(self.policy.false_alarms_per_day, self.policy.block_ms),
        }
    }

    /// Scores the finished block, updates the CUSUM and the learner, and judges the open
    /// alert (or the candidate when none is open).
    fn close_block(&mut self, now: SystemTime, open: Option<&mut Open>) -> Verdict {
        let frames = std::mem::take(&mut self.block);
        self.block_start = None;
        let mut scores: Vec<f32> = frames.iter().map(|f| f.score).collect();
        let x = block_statistic(&mut scores);
        let Some(baseline) = self.baseline.as_ref() else { return Verdict::Wait };
        // The calibration's tail scale bounds a *learned* baseline's; the fallback has its own.
        let floor = match (self.learned, frames.last()) {
            (true, Some(f)) => f64::from(f.clean_tail_scale),
            _ => 0.0,
        };
        let stale = self.simulated_h.is_none_or(|(f, _)| f != floor);
        if self.policy.threshold == ThresholdRule::Simulated && self.learned && stale {
            let p = &self.policy;
            let sim = simulated_threshold_cached(
                baseline,
                floor,
                p.kappa,
                p.false_alarms_per_day,
                p.block_ms,
                SIMULATION_SEED,
            );
            self.simulated_h = Some((floor, sim.h));
        }
        let params = CusumParams { h: self.h(), ..self.policy.cusum_params(baseline) };
        let p = baseline.p_value(x, floor);
        self.stat.update(&params, p, open.is_some());
        self.last_block = Some((x, p));
        self.blocks += 1;
        let suspicious = open.is_some() || self.stat.s >= params.h / 2.0;
        if let (Some(learner), false) = (self.learner.as_mut(), x.is_nan()) {
            let current = if self.learned { self.baseline.as_mut() } else { None };
            if let Some(b) = learner.block(unix_ms(now), x, suspicious, current) {
                self.baseline = Some(b);
                self.learned = true;
                self.simulated_h = None;
            }
        }
        if let Some(o) = open {
            for f in &frames {
                o.add(f);
            }
            return if self.stat.t >= params.clear { Verdict::Clear } else { Verdict::Stay };
        }
        if self.stat.s <= 0.0 {
            self.candidate = None;
            return Verdict::Wait;
        }
        if self.candidate.is_none() {
            if let Some(first) = frames.first() {
                self.candidate = Some(Open::starting_at(&self.stream, first, now));
            }
        }
        if let Some(cand) = self.candidate.as_mut() {
            for f in &frames {
                cand.add(f);
            }
        }
        if self.stat.s >= params.h {
            self.stat.t = 0.0;
            if let Some(o) = self.candidate.take() {
                return Verdict::Raise(Box::new(o));
            }
        }
        Verdict::Wait
    }
}

impl Decider for CusumDecider {
    /// Adds the frame to its block; the first frame past a block's end closes it first.
    fn push(&mut self, s: &Scored, open: Option<&mut Open>) -> Verdict {
        let block_ms = self.policy.block_ms;
        if self.baseline.is_none() {
            self.baseline = Some(fallback_baseline(&self.stream, &self.model_sha256, block_ms, s.threshold));
        }
        let mut verdict = Verdict::Wait;
        if self.block_start.is_some_and(|t| ms_between(t, s.time) >= block_ms) {
            verdict = self.close_block(s.time, open);
        }
        if self.block_start.is_none() {
            self.block_start = Some(s.time);
        }
        if self.block.len() < MAX_BLOCK_FRAMES {
            self.block.push(s.clone());
        }
        verdict
    }

    fn cleared(&mut self) {
        self.stat.reset();
        self.candidate = None;
    }

    fn reset(&mut self) {
        self.stat.reset();
        self.block.clear();
        self.block_start = None;
        self.candidate = None;
    }

    fn statistic(&self) -> f64 {
        self.stat.s
    }

    fn detail(&self) -> PolicyDetail {
        PolicyDetail {
            policy: Some(PolicyKind::Cusum.as_str().into()),
            statistic: Some(self.stat.s),
            statistic_threshold: Some(self.h()),
            false_alarms_per_day: Some(self.policy.false_alarms_per_day),
            baseline: Some(if self.learned { "learned" } else { "calibration" }.into()),
            ..PolicyDetail::default()
        }
    }

    fn last_block(&self) -> Option<(f32, f64)> {
        self.last_block
    }

    fn set_baseline(&mut self, baseline: Baseline) -> Result<(), String> {
        baseline.validate()?;
        if baseline.block_ms != self.policy.block_ms {
            return Err(format!("baseline block_ms {} != policy block_ms {}", baseline.block_ms, self.policy.block_ms));
        }
        if baseline.model_sha256 != self.model_sha256 {
            return Err("baseline belongs to another model (sha256 differs)".into());
        }
        self.baseline = Some(baseline);
        self.learned = true;
        self.simulated_h = None;
        Ok(())
    }

    fn learn_baseline(&mut self, config: BaselineConfig) {
        self.learner = Some(Learner::new(config, &self.stream, &self.model_sha256, self.policy.block_ms));
    }

    fn carry_baseline_from(&mut self, old: &mut dyn Decider) -> Result<(), String> {
        let block_ms = self.policy.block_ms;
        let Some(prev) = old.as_any_mut().downcast_mut::<CusumDecider>() else { return Ok(()) };
        if prev.policy.block_ms != block_ms {
            if prev.learned {
                return Err(format!("baseline block_ms {} != policy block_ms {block_ms}", prev.policy.block_ms));
            }
            return Ok(());
        }
        if self.learner.is_some() {
            if let Some(l) = prev.learner.take() {
                self.learner = Some(l);
            }
        }
        if prev.learned {
            self.baseline = prev.baseline.take();
            self.learned = self.baseline.is_some();
            self.simulated_h = None;
        }
        Ok(())
    }

    fn baseline(&self) -> Option<(&Baseline, bool)> {
        self.baseline.as_ref().map(|b| (b, self.learned))
    }

    fn take_changed_baseline(&mut self) -> Option<Baseline> {
        let changed = self.learner.as_mut().is_some_and(Learner::take_changed);
        if changed && self.learned {
            self.baseline.clone()
        } else {
            None
        }
    }

    fn learning_progress(&self) -> Option<(usize, usize)> {
        if self.learned {
            return None;
        }
        self.learner.as_ref().map(|l| (l.learning_blocks(), l.blocks_needed()))
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: u64, score: f32) -> Scored {
        super::super::test_frame(seq, score, 2.0)
    }

    /// Without a tracker: only the first frame past a block's end decides, and the raised alert
    /// starts at the first block of the run of `S > 0` and holds every frame of the closed
    /// blocks.
    #[test]
    fn decides_at_block_ends_and_raises_from_the_change_point() {
        let policy = AlertPolicy { policy: PolicyKind::Cusum, ..AlertPolicy::default() };
        let mut d = CusumDecider::new("cam", &policy, "ab");
        let mut seq = 0;
        let open = loop {
            assert!(seq < 1000, "no raise");
            let verdict = d.push(&frame(seq, 10.0), None);
            if seq % 10 != 0 || seq == 0 {
                assert!(matches!(verdict, Verdict::Wait), "a verdict inside a block at {seq}");
            }
            if let Verdict::Raise(open) = verdict {
                break open;
            }
            seq += 1;
        };
        assert_eq!((open.first_seq, open.last_seq, open.frames), (0, seq - 1, seq));
        assert!(d.statistic() >= CusumParams::threshold(policy.false_alarms_per_day, policy.block_ms));
        assert_eq!(d.baseline().map(|(_, learned)| learned), Some(false));
        d.reset();
        assert_eq!(d.statistic(), 0.0);
    }

    /// Blocks until the first raise, on frames of 10 per 1 s block scoring `score`, with a
    /// learned baseline of independent unit-exponential block statistics (theta 1).
    fn blocks_to_raise(policy: &AlertPolicy, score: f32) -> (u64, f64) {
        let mut d = CusumDecider::new("cam", policy, "ab");
        let n = 5000;
        let blocks: Vec<f32> = (0..n).map(|i| (-(1.0 - (i as f64 + 0.5) / n as f64).ln()) as f32).collect();
        let mut baseline = Baseline::from_blocks("cam", "ab", 1000, &blocks).unwrap();
        baseline.theta = 1.0;
        d.set_baseline(baseline).unwrap();
        for seq in 0..100_000 {
            if let Verdict::Raise(_) = d.push(&frame(seq, score), None) {
                return (seq / 10, d.detail().statistic_threshold.unwrap_or(f64::NAN));
            }
        }
        panic!("no raise");
    }

    /// With independent blocks the simulated threshold is lower than the bound (the bound is
    /// loose), so the same evidence raises sooner, and events report the `h` in force.
    #[test]
    fn a_simulated_threshold_raises_sooner_than_the_bound() {
        let bound = AlertPolicy { policy: PolicyKind::Cusum, ..AlertPolicy::default() };
        let simulated = AlertPolicy { threshold: ThresholdRule::Simulated, ..bound.clone() };
        // A block median at the baseline's 95th percentile: moderate evidence per block.
        let (b_blocks, b_h) = blocks_to_raise(&bound, 3.0);
        let (s_blocks, s_h) = blocks_to_raise(&simulated, 3.0);
        assert_eq!(b_h, CusumParams::threshold(bound.false_alarms_per_day, bound.block_ms));
        assert!(s_h < b_h - 1.0, "simulated h {s_h}, bound {b_h}");
        assert!(s_blocks < b_blocks, "{s_blocks} blocks with the simulated h, {b_blocks} with the bound");
    }

    /// Until a baseline is learned (the calibration's fallback) the simulated rule uses the bound.
    #[test]
    fn the_calibration_fallback_keeps_the_bound() {
        let policy =
            AlertPolicy { policy: PolicyKind::Cusum, threshold: ThresholdRule::Simulated, ..Default::default() };
        let mut d = CusumDecider::new("cam", &policy, "ab");
        for seq in 0..50 {
            let _ = d.push(&frame(seq, 0.0), None);
        }
        assert_eq!(d.baseline().map(|(_, learned)| learned), Some(false));
        let bound = CusumParams::threshold(policy.false_alarms_per_day, policy.block_ms);
        assert_eq!(d.detail().statistic_threshold, Some(bound));
    }
}
