//! The measurements, one function per section of the report, into [`Results`]. Each section
//! that draws random orders has its own seeded RNG ([`crate::lab::section_seed`]), so
//! reordering or adding sections changes no other section's numbers. Sections return what
//! later ones (the targets) need besides their part of [`Results`].

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::alert::{AlertPolicy, Baseline, ThresholdRule};
use crate::corrupt::{Corruption, Family};
use crate::detector::Calibration;
use crate::rng::SplitMix64;

use super::cache::*;
use super::plan::*;
use super::replay::*;
use super::results::*;
use super::*;

/// What every section reads: the configuration, the scored tracks and the calibration's gate.
struct Ctx<'a> {
    a: &'a Config,
    tracks: &'a [CachedTrack],
    real: &'a [CachedTrack],
    threshold: f32,
    tail: f32,
    /// The variant the targets are judged on (the shipped one, or `--policy`'s).
    shipped: Variant,
    /// Every variant compared ([`policies`]).
    variants: Vec<Variant>,
}

impl<'a> Ctx<'a> {
    fn gate(&self, v: &Variant) -> Gate {
        Gate { threshold: self.threshold, tail: if v.tail_floor { self.tail } else { 0.0 } }
    }

    fn group(&self, g: &str) -> Vec<&'a CachedTrack> {
        self.tracks.iter().filter(|t| t.group == g).collect()
    }

    /// A section's own RNG.
    fn rng(&self, section: &str) -> SplitMix64 {
        SplitMix64::new(crate::lab::section_seed(SEED, section))
    }
}

fn size(v: &[&CachedTrack]) -> SetSize {
    SetSize { tracks: v.len(), frames: v.iter().map(|t| t.frames.len()).sum::<usize>() }
}

/// Percent of the frames of `tracks` the classifier got right.
fn accuracy_pct<'a>(tracks: impl IntoIterator<Item = &'a &'a CachedTrack>) -> f64 {
    let (n, ok) = tracks
        .into_iter()
        .flat_map(|t| &t.frames)
        .fold((0usize, 0usize), |(n, ok), f| (n + 1, ok + usize::from(f.correct)));
    100.0 * ok as f64 / n.max(1) as f64
}

/// Every section of the report, measured.
pub(super) fn results(a: &Config, tracks: &[CachedTrack], real: &[CachedTrack]) -> Result<Results> {
    let t_start = Instant::now();
    let calib = Calibration::load(&a.calib)?;
    let variants = policies(a.policy.as_ref().map(|(_, p)| p));
    let target = if a.policy.is_some() { TRIED } else { SHIPPED };
    let shipped = variants.iter().find(|v| v.name == target).cloned().context("policies")?;
    let ctx = Ctx {
        a,
        tracks,
        real,
        threshold: calib.threshold,
        tail: calib.clean_tail_scale.unwrap_or(0.0) as f32,
        shipped,
        variants,
    };
    let (learned, streams) = streams(&ctx)?;
    let (fa_rate, clean) = clean_false_alarms(&ctx, &learned)?;
    let cam = real_camera(&ctx)?;
    let on = onset_delays(&ctx, &learned)?;
    let ron = real_onsets(&ctx, &cam, &on.cells)?;
    let bound = window_bound(&ctx.group("clean"), &on.cells);
    let error_oracle = error_oracle_bound(&ctx.group("clean"), &on.cells);
    let ramp = ramps(&ctx, &learned, &on.harmful_kinds)?;
    let rates = rates(&ctx, &learned, &cam)?;
    let breakdown = breakdown(&ctx, &cam, &on)?;
    let mut targets = targets(&ctx, &fa_rate, &cam, &on, &ron, &ramp);
    rate_targets(&mut targets, &ctx.shipped, &rates);
    let image = image_evidence(&ctx, [&learned, &cam.learned], &cam, &on.cells)?;
    Ok(Results {
        cache: a.cache.display().to_string(),
        model: a.model.display().to_string(),
        calib: a.calib.display().to_string(),
        threshold: ctx.threshold,
        hours: a.hours,
        replay_s: t_start.elapsed().as_secs_f64(),
        streams,
        clean,
        real: cam.out,
        onsets: on.out,
        real_onsets: ron.out,
        bound,
        error_oracle,
        ramps: ramp.out,
        rates,
        breakdown,
        targets,
        image,
    })
}

/// The whole-frame image evidence (`image.rs`), on both cameras.
fn image_evidence(
    ctx: &Ctx,
    learned: [&Baseline; 2],
    cam: &Camera,
    cells: &[OnsetCell],
) -> Result<Option<ImageEvidence>> {
    let real_acc = load_accuracy(&ctx.a.cache, REAL_ACCURACY_FILE, cam.out.tracks)?;
    let inputs = super::image::Inputs {
        tracks: ctx.tracks,
        real: ctx.real,
        cells,
        real_acc: &real_acc,
        policy: &ctx.shipped.policy,
        gate: ctx.gate(&ctx.shipped),
        learned,
        real_learn: cam.learn.clone(),
        real_clean: cam.clean.clone(),
    };
    super::image::section(&inputs, &mut ctx.rng("image"))
}

/// The streams table and the learned baseline. The baseline is learned first, from the RNG
/// the whole report used to share (its draws are unchanged).
fn streams(ctx: &Ctx) -> Result<(crate::alert::Baseline, Streams)> {
    let (learn, clean, real) = (ctx.group("learn"), ctx.group("clean"), ctx.real);
    let mut rng = SplitMix64::new(SEED ^ 0xBE7C);
    let (learned, learn_alerts) = learn_baseline(&learn, &ctx.shipped, ctx.gate(&ctx.shipped), &mut rng)?;
    let of = |g: &str| size(&real.iter().filter(|t| t.group == g).collect::<Vec<_>>());
    let clean = size(&clean);
    let s = Streams {
        learn: size(&learn),
        clean,
        clean_reuse: ctx.a.hours * 36_000.0 / clean.frames.max(1) as f64,
        onset: size(&ctx.group("onset")),
        ramp: size(&ctx.group("ramp")),
        real: of("real"),
        real_onset: of("real-onset"),
        learned: LearnedBaseline {
            blocks: learned.learned_blocks,
            median: learned.median(),
            p95: learned.quantile(0.95),
            theta: learned.theta,
            run_length: 1.0 / learned.theta,
            alerts: learn_alerts,
        },
    };
    Ok((learned, s))
}

/// False alarms per hour on the clean streams, per policy.
fn clean_false_alarms(
    ctx: &Ctx,
    learned: &crate::alert::Baseline,
) -> Result<(BTreeMap<&'static str, f64>, Vec<FalseAlarmRow>)> {
    let clean = ctx.group("clean");
    let mut rng = ctx.rng("clean");
    let clean_frames = (ctx.a.hours * 3_600_000.0 / FRAME_MS as f64) as usize;
    let mut clean_scores = Vec::new();
    fill(&mut clean_scores, &clean, clean_frames, &mut rng);
    false_alarm_table(&ctx.variants, &clean_scores, learned, &|v| ctx.gate(v))
}

/// The second camera: GTSRB's own held-out tracks, its learned baseline and clean hours.
struct Camera<'a> {
    learned: crate::alert::Baseline,
    /// The tracks its baseline was learned from.
    learn: Vec<&'a CachedTrack>,
    clean: Vec<&'a CachedTrack>,
    rate: BTreeMap<&'static str, f64>,
    out: RealCamera,
}

fn real_camera<'a>(ctx: &Ctx<'a>) -> Result<Camera<'a>> {
    let (real, shipped) = (ctx.real, &ctx.shipped);
    let mut rng = ctx.rng("real");
    let mut order: Vec<&CachedTrack> = real.iter().filter(|t| t.group == "real").collect();
    let real_count = order.len();
    SplitMix64::new(SEED ^ 0x4EA1).shuffle(&mut order);
    let (real_learn, real_clean) = order.split_at(REAL_LEARN_TRACKS.min(order.len()));
    let (real_learned, real_learn_alerts) = learn_baseline(real_learn, shipped, ctx.gate(shipped), &mut rng)?;
    let mut real_scores = Vec::new();
    fill(&mut real_scores, real_clean, (REAL_HOURS * 3_600_000.0 / FRAME_MS as f64) as usize, &mut rng);
    let (rate, false_alarms) = false_alarm_table(&ctx.variants, &real_scores, &real_learned, &|v| ctx.gate(v))?;
    let out = RealCamera {
        tracks: real_count,
        accuracy_pct: accuracy_pct(&order),
        // The classifier on the clean test tracks, for comparison (zoomed, with sensor noise).
        test_accuracy_pct: accuracy_pct(&ctx.group("clean")),
        learn_tracks: real_learn.len(),
        learn_alerts: real_learn_alerts,
        median: real_learned.median(),
        theta: real_learned.theta,
        clean_tracks: real_clean.len(),
        reuse: REAL_HOURS * 36_000.0 / real_clean.iter().map(|t| t.frames.len()).sum::<usize>().max(1) as f64,
        false_alarms,
    };
    Ok(Camera { learned: real_learned, learn: real_learn.to_vec(), clean: real_clean.to_vec(), rate, out })
}

/// Detection delays after onsets, per cell and pooled over the harmful ones.
struct OnsetDelays<'a> {
    cells: Vec<OnsetCell<'a>>,
    /// The shipped policy's delays, per cell of `cells`.
    shipped: Vec<Delays>,
    harmful_all: BTreeMap<&'static str, Delays>,
    harmful_kinds: BTreeSet<&'static str>,
    early_all: BTreeMap<&'static str, usize>,
    lead_frames: BTreeMap<&'static str, usize>,
    out: Onsets,
}

fn onset_delays<'a>(ctx: &Ctx<'a>, learned: &crate::alert::Baseline) -> Result<OnsetDelays<'a>> {
    let (onset, clean) = (ctx.group("onset"), ctx.group("clean"));
    let names: Vec<&str> = ctx.variants.iter().map(|v| v.name).collect();
    let mut harmful_all: BTreeMap<&str, Delays> = BTreeMap::new();
    // Corruptions the classifier fails on (harmful) at some onset level.
    let mut harmful_kinds: BTreeSet<&str> = BTreeSet::new();
    let mut early_all: BTreeMap<&str, usize> = BTreeMap::new();
    // Frames of clean lead-in replayed per policy (fresh trackers: the start of a stream).
    let mut lead_frames: BTreeMap<&str, usize> = BTreeMap::new();
    let cells = onset_cells(&onset, &load_accuracy(&ctx.a.cache, ACCURACY_FILE, ACCURACY_IMAGES)?)?;
    // The shipped policy's delays per cell, for the breakdown.
    let mut shipped = Vec::new();
    let mut rows = Vec::new();
    for cell in &cells {
        let (kind, level, pool) = (cell.kind, cell.level, &cell.pool);
        let harmful = cell.harmful();
        if harmful {
            harmful_kinds.insert(kind.name());
        }
        let mut delays = Vec::new();
        for v in &ctx.variants {
            let name = v.name;
            let (d, lead) = onsets(v, learned, ctx.gate(v), &clean, pool, cell.seed())?;
            if name == ctx.shipped.name {
                shipped.push(d.clone());
            }
            *lead_frames.entry(name).or_default() += lead;
            delays.push(d.summary());
            *early_all.entry(name).or_default() += d.early;
            if harmful {
                let e = harmful_all.entry(name).or_insert(Delays { delays: Vec::new(), missed: 0, early: 0 });
                e.delays.extend(d.delays.iter().copied());
                e.missed += d.missed;
            }
        }
        rows.push(OnsetRow {
            kind: kind.name().to_string(),
            level,
            acc_pct: 100.0 * cell.acc,
            pool_acc_pct: 100.0 * cell.pool_acc,
            harmful,
            delays,
        });
    }
    let mut harmful = Vec::new();
    for name in &names {
        if let Some(d) = harmful_all.get_mut(name) {
            d.delays.sort_by(f64::total_cmp);
            let early = early_all.get(name).copied().unwrap_or(0);
            harmful.push(HarmfulRow { policy: name.to_string(), delays: d.summary(), early });
        }
    }
    let out = Onsets {
        // The binomial standard error at p = 0.5, the largest.
        acc_se_pct: 100.0 * (0.25 / ACCURACY_IMAGES as f64).sqrt(),
        policies: names.iter().map(|n| n.to_string()).collect(),
        cells: rows,
        harmful,
    };
    Ok(OnsetDelays { cells, shipped, harmful_all, harmful_kinds, early_all, lead_frames, out })
}

/// The onsets on the real tracks: per policy, harmful on the camera's own signs and on the test signs.
struct RealOnsetDelays {
    harmful: BTreeMap<&'static str, (Delays, Delays)>,
    out: RealOnsets,
}

fn real_onsets(ctx: &Ctx, cam: &Camera, cells: &[OnsetCell]) -> Result<RealOnsetDelays> {
    let (real, real_count, real_learned, real_clean) = (ctx.real, cam.out.tracks, &cam.learned, cam.clean.as_slice());
    // The same onsets on the real tracks, with the second camera's baseline. Harm is judged
    // twice: on this camera's own signs (one frame of each of its 133 tracks) and on the test
    // signs as above.
    let real_acc = load_accuracy(&ctx.a.cache, REAL_ACCURACY_FILE, real_count)?;
    let own_harm =
        |c: &OnsetCell| real_acc.get(&(c.kind.name().to_string(), c.level)).is_some_and(|&x| crate::lab::harmful(x));
    let real_onset: Vec<&CachedTrack> = real.iter().filter(|t| t.group == "real-onset").collect();
    // Per policy: (harmful on its own signs, harmful on the test signs).
    let mut real_harmful: BTreeMap<&str, (Delays, Delays)> = BTreeMap::new();
    // The shipped policy's misses, with the accuracy on this camera's signs.
    let mut missed_cells: Vec<MissedCell> = Vec::new();
    let mut rows = Vec::new();
    let empty = || Delays { delays: Vec::new(), missed: 0, early: 0 };
    for v in &ctx.variants {
        let (mut own, mut test, mut early) = (empty(), empty(), 0);
        for cell in cells.iter().filter(|c| c.harmful() || own_harm(c)) {
            let pool = cell.real_pool(&real_onset);
            let (d, _) = onsets(v, real_learned, ctx.gate(v), real_clean, &pool, cell.real_seed())?;
            if d.missed > 0 && v.name == ctx.shipped.name {
                let acc = real_acc.get(&(cell.kind.name().to_string(), cell.level)).copied().unwrap_or(f64::NAN);
                missed_cells.push(MissedCell {
                    kind: cell.kind.name().to_string(),
                    level: cell.level,
                    missed: d.missed,
                    acc_pct: 100.0 * acc,
                });
            }
            early += d.early;
            for (agg, yes) in [(&mut own, own_harm(cell)), (&mut test, cell.harmful())] {
                if yes {
                    agg.delays.extend(d.delays.iter().copied());
                    agg.missed += d.missed;
                }
            }
        }
        own.delays.sort_by(f64::total_cmp);
        test.delays.sort_by(f64::total_cmp);
        rows.push(RealOnsetRow { policy: v.name.to_string(), own: own.summary(), test: test.summary(), early });
        real_harmful.insert(v.name, (own, test));
    }
    let out = RealOnsets {
        own_harmful_cells: cells.iter().filter(|c| own_harm(c)).count(),
        test_harmful_cells: cells.iter().filter(|c| c.harmful()).count(),
        rows,
        missed_cells,
    };
    Ok(RealOnsetDelays { harmful: real_harmful, out })
}

/// The worst level at `alert_start` over the ramps, per policy.
struct RampLevels {
    worst: BTreeMap<&'static str, f64>,
    worst_harmful: BTreeMap<&'static str, f64>,
    late: BTreeMap<&'static str, Vec<(&'static str, usize)>>,
    out: Ramps,
}

/// Per corruption, the scored levels of the ramp grid and their tracks (learn tracks left out).
pub(super) fn ramp_grid(tracks: &[CachedTrack], kind: Corruption) -> Vec<(f32, Vec<&CachedTrack>)> {
    let mut grid: Vec<(f32, Vec<&CachedTrack>)> = Vec::new();
    let mut levels: Vec<f32> = RAMP_LEVELS.to_vec();
    levels.extend([3.0, 4.0, 5.0]);
    levels.sort_by(f32::total_cmp);
    for l in levels {
        let pool: Vec<&CachedTrack> =
            tracks.iter().filter(|t| t.kind == kind.name() && t.level == l && t.group != "learn").collect();
        if !pool.is_empty() {
            grid.push((l, pool));
        }
    }
    grid
}

/// The level at `alert_start` of ramp `k` of corruption `ki` for policy `v` (5 when reached at
/// the end, 6 when not detected).
fn ramp_level(
    v: &Variant,
    learned: &crate::alert::Baseline,
    gate: Gate,
    clean: &[&CachedTrack],
    grid: &[(f32, Vec<&CachedTrack>)],
    ki: usize,
    k: usize,
) -> Result<f64> {
    let mut r = SplitMix64::new(SEED ^ ((ki * 7 + k) as u64) << 30);
    let frames = ramp_frames(clean, grid, 0, &mut r);
    let scores: Vec<f32> = frames.iter().map(|f| f.score).collect();
    let mut t = tracker(&v.policy, v.learns.then_some(learned))?;
    Ok(ramp_level_at(replay(&mut t, &scores, 0, gate).into_iter().find(|&i| i >= RAMP_ONSET)))
}

/// Where a ramp's frames ([`ramp_frames`]) leave the clean lead-in.
pub(super) const RAMP_ONSET: usize = (LEAD_S * 1000 / FRAME_MS) as usize;

/// A ramp's frames: [`LEAD_S`] of `clean` (after leaving out its first `skip` frames), then
/// [`RAMP_S`] rising from level 1 to 5, track by track: each track takes the grid level at or
/// below the ramp's level at its start.
pub(super) fn ramp_frames<'a>(
    clean: &[&'a CachedTrack],
    grid: &[(f32, Vec<&'a CachedTrack>)],
    skip: usize,
    r: &mut SplitMix64,
) -> Vec<&'a CachedFrame> {
    let mut frames = Vec::new();
    fill_with(&mut frames, clean, RAMP_ONSET + skip, r, |f| f);
    frames.drain(..skip.min(frames.len()));
    let ramp = (RAMP_S * 1000 / FRAME_MS) as usize;
    while frames.len() < RAMP_ONSET + ramp {
        let lvl = 1.0 + 4.0 * (frames.len() - RAMP_ONSET) as f32 / ramp as f32;
        let Some((_, pool)) = grid.iter().rev().find(|(l, _)| *l <= lvl + 1e-4).or(grid.first()) else {
            break;
        };
        frames.extend(&pool[r.below(pool.len())].frames);
    }
    frames
}

/// The ramp's level at the frame an alert started (5 when reached at the end, 6 when none).
pub(super) fn ramp_level_at(start: Option<usize>) -> f64 {
    let ramp = (RAMP_S * 1000 / FRAME_MS) as f64;
    match start {
        Some(i) => (1.0 + 4.0 * (i - RAMP_ONSET) as f64 / ramp).min(5.0),
        None => 6.0,
    }
}

fn ramps(ctx: &Ctx, learned: &crate::alert::Baseline, harmful_kinds: &BTreeSet<&'static str>) -> Result<RampLevels> {
    let clean = ctx.group("clean");
    let names: Vec<&str> = ctx.variants.iter().map(|v| v.name).collect();
    // Worst level at alert per policy: over every type, and over the harmful ones.
    let mut ramp_worst: BTreeMap<&str, f64> = BTreeMap::new();
    let mut ramp_worst_harmful: BTreeMap<&str, f64> = BTreeMap::new();
    // Per policy, the harmful types with a ramp that reached level 4: (type, ramps caught before it).
    let mut ramp_late: BTreeMap<&str, Vec<(&str, usize)>> = BTreeMap::new();
    let mut rows = Vec::new();
    for (ki, kind) in Corruption::ALL.into_iter().enumerate() {
        let grid = ramp_grid(ctx.tracks, kind);
        let mut cells = Vec::new();
        for v in &ctx.variants {
            let name = v.name;
            let mut at = (0..RAMPS)
                .map(|k| ramp_level(v, learned, ctx.gate(v), &clean, &grid, ki, k))
                .collect::<Result<Vec<_>>>()?;
            at.sort_by(f64::total_cmp);
            let worst = at.last().copied().unwrap_or(f64::NAN);
            let e = ramp_worst.entry(name).or_insert(0.0);
            *e = e.max(worst);
            if harmful_kinds.contains(kind.name()) {
                let e = ramp_worst_harmful.entry(name).or_insert(0.0);
                *e = e.max(worst);
                let before = at.iter().filter(|&&l| l < 4.0).count();
                if before < at.len() {
                    ramp_late.entry(name).or_default().push((kind.name(), before));
                }
            }
            cells.push(RampCell { median: percentile(&at, 0.5), worst });
        }
        rows.push(RampRow { kind: kind.name().to_string(), benign: !harmful_kinds.contains(kind.name()), cells });
    }
    let out = Ramps { policies: names.iter().map(|n| n.to_string()).collect(), rows };
    Ok(RampLevels { worst: ramp_worst, worst_harmful: ramp_worst_harmful, late: ramp_late, out })
}

/// The rule's name as the TOML spells it.
fn rule_name(rule: ThresholdRule) -> &'static str {
    match rule {
        ThresholdRule::Bound => "bound",
        ThresholdRule::Simulated => "simulated",
    }
}

/// Stated against measured false-alarm rates: the shipped policy at each of [`STATED_RATES`]
/// under both threshold rules, on `rate_hours` of each camera's clean tracks, with the
/// camera's learned baseline.
fn rates(ctx: &Ctx, learned: &Baseline, cam: &Camera) -> Result<Rates> {
    let mut rng = ctx.rng("rates");
    let frames = (ctx.a.rate_hours * 3_600_000.0 / FRAME_MS as f64) as usize;
    let test_clean = ctx.group("clean");
    let gate = ctx.gate(&ctx.shipped);
    let mut rows = Vec::new();
    for (camera, pool, baseline) in [("test tracks", &test_clean, learned), ("real tracks", &cam.clean, &cam.learned)] {
        let mut scores = Vec::new();
        fill(&mut scores, pool, frames, &mut rng);
        let hours = scores.len() as f64 * FRAME_MS as f64 / 3_600_000.0;
        for stated in STATED_RATES {
            for rule in [ThresholdRule::Bound, ThresholdRule::Simulated] {
                let policy =
                    AlertPolicy { false_alarms_per_day: stated, threshold: rule, ..ctx.shipped.policy.clone() };
                let mut t = tracker(&policy, Some(baseline))?;
                let alarms = replay(&mut t, &scores, 0, gate).len();
                let measured = 24.0 * alarms as f64 / hours;
                rows.push(RateRow {
                    camera: camera.to_string(),
                    stated_per_day: stated,
                    rule: rule_name(rule).to_string(),
                    h: t.detail().statistic_threshold.unwrap_or(f64::NAN),
                    hours,
                    alarms,
                    measured_per_day: measured,
                    ratio: stated / measured,
                });
            }
        }
    }
    Ok(Rates { rows })
}

/// The shipped rule's stated-over-measured ratios and whether those at 24 and 240 a day are
/// within 2x.
fn rate_targets(t: &mut Targets, shipped: &Variant, rates: &Rates) {
    let rule = rule_name(shipped.policy.threshold);
    let mine: Vec<&RateRow> = rates.rows.iter().filter(|r| r.rule == rule).collect();
    t.rate_ratios = mine.iter().map(|r| (r.camera.clone(), r.stated_per_day, r.ratio)).collect();
    t.rate_met = mine.iter().filter(|r| r.stated_per_day >= 24.0).all(|r| (0.5..=2.0).contains(&r.ratio));
}

/// The severity range of an accuracy: the index into [`SEVERITY_BINS`] (none for NaN).
pub(super) fn severity_bin(acc: f64) -> Option<usize> {
    SEVERITY_BINS.iter().rposition(|&lo| acc >= lo)
}

/// The name of severity range `i` (`40-60 %`).
pub(super) fn severity_name(i: usize) -> String {
    let lo = 100.0 * SEVERITY_BINS[i];
    match SEVERITY_BINS.get(i + 1) {
        Some(hi) => format!("{lo:.0}-{:.0} %", 100.0 * hi),
        None => format!(">= {lo:.0} %"),
    }
}

/// Pools the delays of several onset cells.
fn pool_delays(parts: impl IntoIterator<Item = Delays>) -> Delays {
    let mut all = Delays { delays: Vec::new(), missed: 0, early: 0 };
    for d in parts {
        all.delays.extend(d.delays);
        all.missed += d.missed;
        all.early += d.early;
    }
    all.delays.sort_by(f64::total_cmp);
    all
}

/// The shipped policy's delays grouped by severity (the classifier's accuracy at the onset,
/// each camera judged on its own signs) and, for harmful cells, by family. The test tracks'
/// delays are the delay section's; on the real tracks every cell is replayed (that section
/// replays only the harmful ones), with that section's seeds.
fn breakdown(ctx: &Ctx, cam: &Camera, on: &OnsetDelays) -> Result<Breakdown> {
    let (v, cells) = (&ctx.shipped, &on.cells);
    let real_acc = load_accuracy(&ctx.a.cache, REAL_ACCURACY_FILE, cam.out.tracks)?;
    let real_onset: Vec<&CachedTrack> = ctx.real.iter().filter(|t| t.group == "real-onset").collect();
    // Per cell: (accuracy, delays) on the test tracks and on the real tracks.
    let test: Vec<(f64, &Delays)> = cells.iter().map(|c| c.acc).zip(&on.shipped).collect();
    let mut real_delays = Vec::new();
    for cell in cells {
        let pool = cell.real_pool(&real_onset);
        let acc = real_acc.get(&(cell.kind.name().to_string(), cell.level)).copied().unwrap_or(f64::NAN);
        real_delays.push((acc, onsets(v, &cam.learned, ctx.gate(v), &cam.clean, &pool, cell.real_seed())?.0));
    }
    let real: Vec<(f64, &Delays)> = real_delays.iter().map(|(acc, d)| (*acc, d)).collect();
    let row = |group: String, harmful: bool, pick: &dyn Fn(usize, f64) -> bool| {
        let of = |cam: &[(f64, &Delays)]| {
            let chosen: Vec<Delays> =
                cam.iter().enumerate().filter(|(i, (acc, _))| pick(*i, *acc)).map(|(_, (_, d))| (*d).clone()).collect();
            (chosen.len(), pool_delays(chosen).summary())
        };
        let ((test_cells, t), (real_cells, r)) = (of(&test), of(&real));
        BreakdownRow { group, harmful, test_cells, test: t, real_cells, real: r }
    };
    let severity = (0..SEVERITY_BINS.len())
        .map(|b| {
            let harmful = crate::lab::harmful(SEVERITY_BINS[b]);
            row(severity_name(b), harmful, &|_, acc| severity_bin(acc) == Some(b))
        })
        .collect();
    let family = Family::ALL
        .into_iter()
        .map(|f| row(f.name().to_string(), true, &|i, acc| cells[i].kind.family() == f && crate::lab::harmful(acc)))
        .collect();
    Ok(Breakdown { severity, family })
}

/// The targets, from what the sections measured (the shipped policy's numbers).
fn targets(
    ctx: &Ctx,
    fa_rate: &BTreeMap<&'static str, f64>,
    cam: &Camera,
    on: &OnsetDelays,
    ron: &RealOnsetDelays,
    ramp: &RampLevels,
) -> Targets {
    let best = ctx.shipped.name;
    let fa = fa_rate.get(best).copied().unwrap_or(f64::NAN);
    let (med, max, missed) = on.harmful_all.get(best).map_or((f64::NAN, f64::NAN, 0), |d| {
        (percentile(&d.delays, 0.5), d.delays.last().copied().unwrap_or(f64::NAN), d.missed)
    });
    let ramp_all = ramp.worst.get(best).copied().unwrap_or(f64::NAN);
    let ramp_harmful = ramp.worst_harmful.get(best).copied().unwrap_or(f64::NAN);
    let lead_h = on.lead_frames.get(best).copied().unwrap_or(0) as f64 * FRAME_MS as f64 / 3.6e6;
    let lead_fa = on.early_all.get(best).copied().unwrap_or(0);
    let pooled = (fa * ctx.a.hours + lead_fa as f64) / (ctx.a.hours + lead_h);
    let real_fa = cam.rate.get(best).copied().unwrap_or(f64::NAN);
    let real = ron.harmful.get(best).map(|(own, test)| RealTarget {
        own: own.summary(),
        test: test.summary(),
        missed_cells: ron.out.missed_cells.clone(),
        met: own.missed == 0,
    });
    let late = ramp
        .late
        .get(best)
        .map(|v| v.iter().map(|&(k, before)| LateRamp { kind: k.to_string(), before }).collect())
        .unwrap_or_default();
    Targets {
        tried: ctx.a.policy.as_ref().map(|(file, p)| (file.clone(), p.policy.as_str().to_string())),
        false_alarms_per_day: ctx.shipped.policy.false_alarms_per_day,
        threshold: rule_name(ctx.shipped.policy.threshold).to_string(),
        fa,
        fa_met: fa <= 0.1,
        pooled_hours: ctx.a.hours + lead_h,
        pooled,
        pooled_met: pooled <= 0.1,
        real_fa,
        real_fa_met: real_fa <= 0.1,
        missed,
        missed_met: missed == 0,
        real,
        median: med,
        median_met: med <= 3.0,
        max,
        max_met: max <= 10.0 && missed == 0,
        ramp: ramp_all,
        ramp_met: ramp_all < 4.0,
        harmful_kinds: on.harmful_kinds.len(),
        ramp_harmful,
        ramp_harmful_met: ramp_harmful < 4.0,
        late,
        rate_ratios: Vec::new(),
        rate_met: false,
    }
}

#[cfg(test)]
mod tests {
    use super::{severity_bin, severity_name};

    #[test]
    fn severity_ranges_cover_every_accuracy_once() {
        assert_eq!(severity_bin(0.0), Some(0));
        assert_eq!(severity_bin(0.19), Some(0));
        assert_eq!(severity_bin(0.2), Some(1));
        assert_eq!(severity_bin(0.79), Some(3));
        assert_eq!(severity_bin(0.8), Some(4));
        assert_eq!(severity_bin(1.0), Some(5));
        assert_eq!(severity_bin(f64::NAN), None);
        assert_eq!(severity_name(0), "0-20 %");
        assert_eq!(severity_name(3), "60-80 %");
        assert_eq!(severity_name(5), ">= 90 %");
    }
}
