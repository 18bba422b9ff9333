//! Replay: streams built from the cached scores in seeded orders, run through the real
//! `AlertTracker` for every policy variant.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::corrupt::Corruption;
use crate::rng::SplitMix64;

use super::cache::*;
use super::plan::*;
use super::results::*;
use super::*;

/// Frame interval of every replayed stream (10 fps of frame time).
pub(super) const FRAME_MS: u64 = 100;
/// Minutes of clean frames the cusum policy learns its baseline from (the shipped default).
pub(super) const LEARN_MINUTES: f64 = 10.0;
/// Clean lead-in before each onset, seconds.
pub(super) const LEAD_S: u64 = 60;
/// An onset not detected within this many seconds counts as missed.
pub(super) const ONSET_WINDOW_S: u64 = 60;
/// Onsets per (corruption, level) and policy.
pub(super) const ONSETS: usize = 20;
/// Ramps per corruption and policy (each draws its own tracks: with 4, the worst of a type
/// hung on which tracks came up).
pub(super) const RAMPS: usize = 20;
/// Ramp length, seconds (level 1 to 5).
pub(super) const RAMP_S: u64 = 600;

/// Appends tracks drawn in a seeded random order from `pool` until `frames` frames.
pub(super) fn fill(out: &mut Vec<f32>, pool: &[&CachedTrack], frames: usize, rng: &mut SplitMix64) {
    fill_with(out, pool, frames, rng, |f| f.score);
}

/// [`fill`] with each frame's `evidence` instead of its score.
pub(super) fn fill_with<'a, T>(
    out: &mut Vec<T>,
    pool: &[&'a CachedTrack],
    frames: usize,
    rng: &mut SplitMix64,
    evidence: impl Fn(&'a CachedFrame) -> T,
) {
    if pool.is_empty() {
        return;
    }
    let end = out.len() + frames;
    let mut order: Vec<usize> = (0..pool.len()).collect();
    while out.len() < end {
        rng.shuffle(&mut order);
        for &i in &order {
            for f in &pool[i].frames {
                if out.len() >= end {
                    return;
                }
                out.push(evidence(f));
            }
        }
    }
}

pub(super) fn scored(seq: u64, t0: std::time::SystemTime, score: f32, gate: Gate) -> crate::alert::Scored {
    crate::alert::Scored {
        stream: "bench".into(),
        seq,
        time: t0 + std::time::Duration::from_millis(seq * FRAME_MS),
        score,
        threshold: gate.threshold,
        clean_tail_scale: gate.tail,
        top_class: 0,
        top_class_name: None,
        confidence: 1.0,
        tag: None,
    }
}

/// Frame time of every replayed stream's frame 0.
pub(super) fn epoch() -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_767_225_600)
}

/// What every replayed frame carries from the calibration.
#[derive(Clone, Copy)]
pub(super) struct Gate {
    pub(super) threshold: f32,
    /// The calibration's clean tail scale, or 0 for a variant without it.
    pub(super) tail: f32,
}

/// Runs `tracker` over `scores` from frame `seq0`; returns the frame indices (into `scores`)
/// at which alerts started.
pub(super) fn replay(tracker: &mut crate::alert::AlertTracker, scores: &[f32], seq0: u64, gate: Gate) -> Vec<usize> {
    let t0 = epoch();
    let mut starts = Vec::new();
    for (i, &sc) in scores.iter().enumerate() {
        for e in tracker.push(&scored(seq0 + i as u64, t0, sc, gate)) {
            if matches!(e, crate::alert::Event::AlertStart { .. }) {
                starts.push(i);
            }
        }
    }
    starts
}

/// One alert configuration the benchmark compares.
#[derive(Clone)]
pub(super) struct Variant {
    pub(super) name: &'static str,
    pub(super) policy: crate::alert::AlertPolicy,
    /// Learns its baseline first (else the calibration's fallback).
    pub(super) learns: bool,
    /// Frames carry the calibration's clean tail scale (else 0: the tail of the learned
    /// baseline alone, as before calibrations recorded it).
    pub(super) tail_floor: bool,
}

/// The variant `config/gradwatch.toml` ships.
pub(super) const SHIPPED: &str = "cusum 1.2/day, simulated h, learned baseline";
/// The variant of `--policy`, which takes the shipped one's place.
pub(super) const TRIED: &str = "--policy, learned baseline";

/// The configurations compared; with `tried` (`--policy`), it replaces the shipped variant.
pub(super) fn policies(tried: Option<&crate::alert::AlertPolicy>) -> Vec<Variant> {
    let mut all = builtin_policies();
    if let (Some(p), Some(v)) = (tried, all.iter_mut().find(|v| v.name == SHIPPED)) {
        *v = Variant { name: TRIED, policy: p.clone(), learns: true, tail_floor: true };
    }
    all
}

fn builtin_policies() -> Vec<Variant> {
    use crate::alert::{AlertPolicy, PolicyKind};
    let cusum = AlertPolicy { policy: PolicyKind::Cusum, ..AlertPolicy::default() };
    let rate = |r: f64| AlertPolicy { false_alarms_per_day: r, ..cusum.clone() };
    let simulated = |r: f64| AlertPolicy { threshold: crate::alert::ThresholdRule::Simulated, ..rate(r) };
    let v = |name, policy, learns, tail_floor| Variant { name, policy, learns, tail_floor };
    // Before clean_tail_scale and kappa = 0.4 (the shipped 0.24/day and the code default).
    let old = |r: f64| AlertPolicy { kappa: 0.2, ..rate(r) };
    vec![
        v("k-of-n (6 of 10)", AlertPolicy::default(), false, true),
        v("cusum 2.4/day, calibration fallback", cusum.clone(), false, true),
        v("cusum 2.4/day, kappa 0.2, learned tail only", old(2.4), true, false),
        v("cusum 0.24/day, kappa 0.2, learned tail only", old(0.24), true, false),
        v("cusum 2.4/day, kappa 0.2, learned baseline", old(2.4), true, true),
        // Lorden's bound: the stated rate an upper bound, about 10x loose (the rate table).
        v("cusum 2.4/day, learned baseline", cusum.clone(), true, true),
        v("cusum 24/day, learned baseline", rate(24.0), true, true),
        // The simulated threshold errs optimistic by up to 2x on these tracks (the rate table):
        // half the bound's 2.4 a day, so that the expected rate stays within 0.1 an hour.
        v(SHIPPED, simulated(1.2), true, true),
        v("cusum 1.2/day, simulated h, calibration fallback", simulated(1.2), false, true),
    ]
}

pub(super) fn model_ref() -> crate::alert::ModelRef {
    crate::alert::ModelRef { name: "gtsrb-resnet18".into(), sha256: "bench".into() }
}

/// A fresh tracker for `policy`; with `learn`, it first learns its baseline from `learn_pool`.
pub(super) fn tracker(
    policy: &crate::alert::AlertPolicy,
    learned: Option<&crate::alert::Baseline>,
) -> Result<crate::alert::AlertTracker> {
    let mut t = crate::alert::AlertTracker::new("bench", policy.clone(), model_ref())?;
    if let Some(b) = learned {
        t.set_baseline(b.clone()).map_err(anyhow::Error::msg)?;
    }
    t.learn_baseline(crate::alert::BaselineConfig::default());
    Ok(t)
}

/// Of the real held-out tracks, those a camera's baseline is learned from (the rest make its
/// clean stream).
pub(super) const REAL_LEARN_TRACKS: usize = 40;
/// Hours of clean frame time replayed from the other real tracks (one false alarm in them is
/// the 0.1-an-hour target).
pub(super) const REAL_HOURS: f64 = 10.0;

/// A baseline learned as the shipped policy learns one: [`LEARN_MINUTES`] of frames from
/// `pool` (reshuffled as needed). Returns it and the alerts raised while learning.
pub(super) fn learn_baseline(
    pool: &[&CachedTrack],
    shipped: &Variant,
    gate: Gate,
    rng: &mut SplitMix64,
) -> Result<(crate::alert::Baseline, usize)> {
    let mut scores = Vec::new();
    // Learning needs LEARN_MINUTES of released blocks: add the quarantine and a margin for
    // blocks dropped around suspicious periods.
    let frames = ((LEARN_MINUTES + 4.0) * 60_000.0 / FRAME_MS as f64) as usize;
    fill(&mut scores, pool, frames, rng);
    let mut learner = tracker(&shipped.policy, None)?;
    let alerts = replay(&mut learner, &scores, 0, gate);
    let learned = learner
        .baseline()
        .filter(|(_, l)| *l)
        .map(|(b, _)| b.clone())
        .context("the learning stream did not complete a baseline (too few clean blocks outside alerts)")?;
    Ok((learned, alerts.len()))
}

/// The false-alarm table of every policy over the clean `scores` (a variant that learns uses
/// `learned`): false alarms per hour by policy, and the table's rows.
pub(super) fn false_alarm_table(
    variants: &[Variant],
    scores: &[f32],
    learned: &crate::alert::Baseline,
    gate: &dyn Fn(&Variant) -> Gate,
) -> Result<(BTreeMap<&'static str, f64>, Vec<FalseAlarmRow>)> {
    let mut rate = BTreeMap::new();
    let mut rows = Vec::new();
    for v in variants {
        let g = gate(v);
        let over = scores.iter().filter(|&&s| s > g.threshold).count() as f64 / scores.len().max(1) as f64;
        let mut t = tracker(&v.policy, v.learns.then_some(learned))?;
        let starts = replay(&mut t, scores, 0, g);
        let hours = scores.len() as f64 * FRAME_MS as f64 / 3_600_000.0;
        rate.insert(v.name, starts.len() as f64 / hours);
        rows.push(FalseAlarmRow {
            policy: v.name.to_string(),
            hours,
            alerts: starts.len(),
            per_hour: starts.len() as f64 / hours,
            over_pct: 100.0 * over,
        });
    }
    Ok((rate, rows))
}

/// [`ONSETS`] onsets of `pool`, each after [`LEAD_S`] s (plus a random offset) of `clean`,
/// replayed with `v` on fresh trackers. `seed` is the cell's: every onset gets its own clean
/// stretch (seeding by a type name's length once repeated them across types). Returns the
/// delays (sorted) and the frames of clean lead-in replayed.
pub(super) fn onsets(
    v: &Variant,
    learned: &crate::alert::Baseline,
    gate: Gate,
    clean: &[&CachedTrack],
    pool: &[&CachedTrack],
    seed: u64,
) -> Result<(Delays, usize)> {
    let mut d = Delays { delays: Vec::new(), missed: 0, early: 0 };
    let mut lead = 0;
    for k in 0..ONSETS {
        let mut r = SplitMix64::new(SEED ^ (seed + k as u64) << 20);
        let mut scores = Vec::new();
        // Warm-up: the stream has been running (random offset into the clean tracks).
        fill(&mut scores, clean, (LEAD_S * 1000 / FRAME_MS) as usize + r.below(20), &mut r);
        let onset_at = scores.len();
        fill(&mut scores, pool, (ONSET_WINDOW_S * 1000 / FRAME_MS) as usize, &mut r);
        let mut t = tracker(&v.policy, v.learns.then_some(learned))?;
        let starts = replay(&mut t, &scores, 0, gate);
        d.early += starts.iter().filter(|&&i| i < onset_at).count();
        lead += onset_at;
        match starts.iter().find(|&&i| i >= onset_at) {
            Some(&i) => d.delays.push((i - onset_at) as f64 * FRAME_MS as f64 / 1000.0),
            None => d.missed += 1,
        }
    }
    d.delays.sort_by(f64::total_cmp);
    Ok((d, lead))
}

/// The onset tracks of one corruption and level, with the classifier's accuracy.
pub(super) struct OnsetCell<'a> {
    /// Index of `kind` in [`Corruption::ALL`] (seeds the cell's streams).
    pub(super) ki: usize,
    pub(super) kind: Corruption,
    pub(super) level: u8,
    pub(super) pool: Vec<&'a CachedTrack>,
    /// Over the [`ACCURACY_IMAGES`] signs of the accuracy table: what decides harm.
    pub(super) acc: f64,
    /// Over the frames of `pool` (a few signs: shown, not used).
    pub(super) pool_acc: f64,
}

impl OnsetCell<'_> {
    pub(super) fn harmful(&self) -> bool {
        crate::lab::harmful(self.acc)
    }

    /// The seed of the cell's onsets on the test tracks ([`onsets`]).
    pub(super) fn seed(&self) -> u64 {
        (self.ki * 131 + usize::from(self.level) * 17) as u64
    }

    /// The seed of the cell's onsets on the real tracks.
    pub(super) fn real_seed(&self) -> u64 {
        (1 << 40) | self.seed()
    }

    /// The cell's corrupted tracks among `tracks` (the real camera's onset tracks).
    pub(super) fn real_pool<'t>(&self, tracks: &[&'t CachedTrack]) -> Vec<&'t CachedTrack> {
        tracks.iter().copied().filter(|t| t.kind == self.kind.name() && t.level == f32::from(self.level)).collect()
    }
}

/// Every (corruption, level) cell of the onsets, in [`Corruption::ALL`] and level order.
pub(super) fn onset_cells<'a>(
    onset: &[&'a CachedTrack],
    accuracy: &BTreeMap<(String, u8), f64>,
) -> Result<Vec<OnsetCell<'a>>> {
    let mut cells = Vec::new();
    for (ki, kind) in Corruption::ALL.into_iter().enumerate() {
        for level in ONSET_LEVELS {
            let pool: Vec<&CachedTrack> =
                onset.iter().copied().filter(|t| t.kind == kind.name() && t.level == f32::from(level)).collect();
            let (n, ok) = pool
                .iter()
                .flat_map(|t| &t.frames)
                .fold((0usize, 0usize), |(n, ok), f| (n + 1, ok + usize::from(f.correct)));
            let acc = *accuracy
                .get(&(kind.name().to_string(), level))
                .with_context(|| format!("{ACCURACY_FILE} lacks {} {level}; delete it to rebuild it", kind.name()))?;
            cells.push(OnsetCell { ki, kind, level, pool, acc, pool_acc: ok as f64 / n.max(1) as f64 });
        }
    }
    Ok(cells)
}

/// Stated false-alarm rates (per day) the rate table measures.
pub(super) const STATED_RATES: [f64; 4] = [1.2, 2.4, 24.0, 240.0];
/// Accuracy ranges of the severity table (lower bounds, harshest first; the last is clean-like).
pub(super) const SEVERITY_BINS: [f64; 6] = [0.0, 0.2, 0.4, 0.6, 0.8, 0.9];

/// Hours of clean frames the window bound takes its threshold from.
pub(super) const BOUND_HOURS: f64 = 10.0;
/// Window lengths of the bound, seconds.
pub(super) const BOUND_WINDOWS_S: [u64; 7] = [1, 2, 3, 5, 10, 30, 60];

/// Mean of every window of `w` consecutive values.
pub(super) fn window_means(x: &[f32], w: usize) -> Vec<f64> {
    if x.len() < w || w == 0 {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(x.len() - w + 1);
    let mut sum: f64 = x[..w].iter().map(|&v| f64::from(v)).sum();
    out.push(sum / w as f64);
    for i in w..x.len() {
        sum += f64::from(x[i]) - f64::from(x[i - w]);
        out.push(sum / w as f64);
    }
    out
}

/// What any policy could do with this detector: for a window of `W` seconds, the threshold
/// that the mean score of no window of [`BOUND_HOURS`] clean hours reached (at most one
/// crossing in that time: about the 0.1-an-hour target), and the share of harmful onsets whose
/// first `W` seconds alone have a higher mean. A policy that decides within `W` s of an onset
/// at that false-alarm rate, from the mean score, cannot catch more.
pub(super) fn window_bound(clean: &[&CachedTrack], cells: &[OnsetCell]) -> Bound {
    bound_of(clean, cells, |f| f.score, SEED ^ 0x0B0D)
}

/// The [`window_bound`] of an oracle of the classifier's errors: evidence 1 on a frame whose
/// top class is wrong, 0 on one it gets right: what a perfect per-frame score of whether the
/// classification is wrong (the trust head's question) could do in the same window.
pub(super) fn error_oracle_bound(clean: &[&CachedTrack], cells: &[OnsetCell]) -> Bound {
    bound_of(clean, cells, |f| if f.correct { 0.0 } else { 1.0 }, SEED ^ 0x0B0E)
}

fn bound_of(clean: &[&CachedTrack], cells: &[OnsetCell], evidence: fn(&CachedFrame) -> f32, seed: u64) -> Bound {
    let mut rng = SplitMix64::new(seed);
    let mut clean_scores = Vec::new();
    let frames = (BOUND_HOURS * 3_600_000.0 / FRAME_MS as f64) as usize;
    fill_with(&mut clean_scores, clean, frames, &mut rng, evidence);
    let per_s = (1000 / FRAME_MS) as usize;
    let onset = |pool: &[&CachedTrack], n: usize| -> Result<Vec<f32>> {
        let mut s = Vec::new();
        fill_with(&mut s, pool, n, &mut rng, evidence);
        Ok(s)
    };
    // Drawing frames cannot fail.
    bound_from(&clean_scores, per_s, cells, onset).unwrap_or(Bound { harmful_onsets: 0, rows: Vec::new() })
}

/// The window bound of an evidence stream: `clean` ([`BOUND_HOURS`] of it, `per_s` values a
/// second) sets each window's threshold, and `onset(pool, n)` draws the first `n` values after
/// an onset of a harmful cell's `pool` ([`ONSETS`] per cell).
pub(super) fn bound_from(
    clean: &[f32],
    per_s: usize,
    cells: &[OnsetCell],
    mut onset: impl FnMut(&[&CachedTrack], usize) -> Result<Vec<f32>>,
) -> Result<Bound> {
    let pools: Vec<&[&CachedTrack]> = cells.iter().filter(|c| c.harmful()).map(|c| c.pool.as_slice()).collect();
    let mut rows = Vec::new();
    for wsec in BOUND_WINDOWS_S {
        let n = wsec as usize * per_s;
        let thr = window_means(clean, n).into_iter().fold(f64::NEG_INFINITY, f64::max);
        let (mut hits, mut total) = (0usize, 0usize);
        for &pool in &pools {
            for _ in 0..ONSETS {
                let s = onset(pool, n)?;
                total += 1;
                hits += usize::from(window_means(&s, n).first().is_some_and(|&m| m > thr));
            }
        }
        rows.push(BoundRow {
            window_s: wsec,
            threshold: thr,
            hits,
            total,
            pct: 100.0 * hits as f64 / total.max(1) as f64,
        });
    }
    Ok(Bound { harmful_onsets: pools.len() * ONSETS, rows })
}

pub(super) fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Delays in seconds (sorted) and the number missed.
#[derive(Clone)]
pub(super) struct Delays {
    pub(super) delays: Vec<f64>,
    pub(super) missed: usize,
    pub(super) early: usize,
}

impl Delays {
    /// Their summary (the delays sorted).
    pub(super) fn summary(&self) -> DelaySummary {
        DelaySummary {
            onsets: self.delays.len() + self.missed,
            detected: self.delays.len(),
            missed: self.missed,
            median: percentile(&self.delays, 0.5),
            p90: percentile(&self.delays, 0.9),
            max: self.delays.last().copied().unwrap_or(f64::NAN),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::render::delay_cell;
    use super::{error_oracle_bound, percentile, window_bound, CachedFrame, CachedTrack, Delays, OnsetCell, ONSETS};
    use crate::corrupt::Corruption;

    fn track(frames: usize, correct: bool, score: f32) -> CachedTrack {
        CachedTrack {
            group: "clean".into(),
            kind: "none".into(),
            level: 0.0,
            frames: vec![CachedFrame { score, correct, quality: None }; frames],
        }
    }

    /// Hand-computed: nine clean 1-s tracks the classifier gets right and one it gets wrong, so
    /// the clean stream's worst share of wrong frames is 1 in a 1-s window and 2/3 in a 3-s one
    /// (the wrong track twice in a row, where one reshuffled pass ends and the next begins: in
    /// 10 h of 10-s passes, certain); a harmful cell whose every frame is wrong is caught from
    /// its first 3 s, not from its first 1 s. The score's bound reads the scores instead (all
    /// clean 0, harmful 1).
    #[test]
    fn the_error_oracle_bound_reads_the_share_of_wrong_frames() {
        let mut clean: Vec<CachedTrack> = (0..9).map(|_| track(10, true, 0.0)).collect();
        clean.push(track(10, false, 0.0));
        let clean: Vec<&CachedTrack> = clean.iter().collect();
        let wrong = track(10, false, 1.0);
        let cell =
            |acc| OnsetCell { ki: 0, kind: Corruption::ALL[0], level: 5, pool: vec![&wrong], acc, pool_acc: 0.0 };
        let cells = [cell(0.1), cell(0.95)];
        let oracle = error_oracle_bound(&clean, &cells);
        assert_eq!(oracle.harmful_onsets, ONSETS, "the benign cell is left out");
        let row = |b: &super::Bound, w: u64| *b.rows.iter().find(|r| r.window_s == w).unwrap();
        assert_eq!((row(&oracle, 1).threshold, row(&oracle, 1).hits), (1.0, 0));
        let three = row(&oracle, 3);
        assert!((three.threshold - 2.0 / 3.0).abs() < 1e-9, "{}", three.threshold);
        assert_eq!((three.hits, three.total), (ONSETS, ONSETS));
        let scores = window_bound(&clean, &cells);
        assert_eq!((row(&scores, 1).threshold, row(&scores, 1).hits), (0.0, ONSETS));
    }

    #[test]
    fn percentile_is_the_nearest_rank() {
        let v = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        assert_eq!(percentile(&v, 0.5), 5.0);
        assert_eq!(percentile(&v, 0.9), 9.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
    }

    #[test]
    fn a_delay_cell_shows_median_p90_max_and_the_misses() {
        let d = Delays { delays: vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], missed: 0, early: 0 };
        assert_eq!(delay_cell(&d.summary()), "5.0 / 9.0 / 10.0");
        let d = Delays { delays: vec![2.5], missed: 2, early: 0 };
        assert_eq!(delay_cell(&d.summary()), "2.5 / 2.5 / 2.5, **2 missed**");
        let d = Delays { delays: Vec::new(), missed: 3, early: 0 };
        assert_eq!(delay_cell(&d.summary()), "missed 3/3");
    }
}
