//! Whole-frame image evidence (issue #25, item 1): what the image-quality measures of the
//! *whole* captured frame add to the camera-health alarm, beside the model's score.
//!
//! The cache's frames are 32x32 sign crops: the classifier's view, not a camera's. A camera
//! frame holds far more picture than the sign, and a dirty lens, fog or a failing sensor covers
//! all of it. This section stands a **proxy scene** in for it: [`SCENE_TILES`] sign-sized
//! regions seen at once, the classifier's own crop and others playing independent tracks of the
//! same condition (the camera's clean tracks before an onset, the onset's corruption and level
//! after it). The scene's measures are the tiles' mean: exact for the measures that are pixel
//! means (saturation, dark channel, flat share, the clipped shares), close for the others. They
//! are taken once a second, as the daemon's capture thread takes them.
//!
//! The camera's image evidence is the daemon's ([`crate::alert::image`]): one number a second
//! ([`ImageNorm::deviation`]), the largest deviation of the scene's measures from what the
//! camera learned, each measure scaled by the distance of its learned 1st or 99th percentile
//! from its median (1: as unusual as the learned 1 %). It drives a second CUSUM: the shipped
//! policy with the `kappa`, tail floor and threshold rule of [`SHIPPED_IMAGE`], and a baseline
//! learned from other tracks than the norm. Fused,
//! the model's and the image's CUSUMs each get half the stated rate and the camera alarms at
//! the earlier of the two.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use crate::alert::image::{self, measures_read, ImageNorm, Quality};
use crate::alert::{AlertPolicy, Baseline, ThresholdRule};
use crate::corrupt::Corruption;
use crate::rng::SplitMix64;

use super::plan::{CachedFrame, CachedTrack};
use super::replay::*;
use super::results::*;

const Q: usize = image::MEASURES;

/// Sign-sized regions of the proxy scene.
pub(super) const SCENE_TILES: usize = 16;
/// Scene sizes of the window bound: the crop alone, 4 and [`SCENE_TILES`] regions.
pub(super) const BOUND_TILES: [usize; 3] = [1, 4, SCENE_TILES];

/// Frames per image sample (one a second).
const FRAMES_PER_SAMPLE: usize = (1000 / FRAME_MS) as usize;
/// The image CUSUM's setting in this report: the daemon's ([`crate::alert::image::SETTING`]).
pub(super) const SHIPPED_IMAGE: ImageCusum =
    ImageCusum { kappa: image::SETTING.kappa, tail_floor: image::SETTING.tail_floor, bound: image::SETTING.bound };

/// The other settings the report compares: lighter and heavier floors, larger `kappa`, and the
/// model CUSUM's own setting (`kappa` 0.4, no floor, simulated threshold).
const IMAGE_SETTINGS: [ImageCusum; 7] = [
    ImageCusum { kappa: 0.1, tail_floor: 0.0, bound: true },
    ImageCusum { kappa: 0.1, tail_floor: 0.25, bound: true },
    ImageCusum { kappa: 0.1, tail_floor: 1.0, bound: true },
    ImageCusum { kappa: 0.2, tail_floor: 0.5, bound: true },
    ImageCusum { kappa: 0.4, tail_floor: 0.5, bound: true },
    ImageCusum { kappa: 0.1, tail_floor: 0.5, bound: false },
    ImageCusum { kappa: 0.4, tail_floor: 0.0, bound: false },
];

/// Draws one tile's frames with its own RNG, the first `skip` frames of its clean lead-in left
/// out (so that it starts inside a track; the condition changes at the same frame for every
/// tile).
type Draw<'a, 'b> = &'b dyn Fn(&mut SplitMix64, usize) -> Vec<&'a CachedFrame>;

/// Most frames a tile's start is moved into its first track (the longest track).
const TILE_OFFSET_MAX: usize = 30;

/// One sample a second of a scene of `tiles` regions: the mean of their measures at the first
/// frame of each second. `roi` (the classifier's crop) is the first tile; `draw` draws each
/// other tile's frames.
fn scene_samples<'a>(
    roi: &[&'a CachedFrame],
    tiles: usize,
    draw: Draw<'a, '_>,
    rng: &mut SplitMix64,
) -> Result<Vec<Quality>> {
    // Each other tile starts at a random frame of its first track: scenes are not in step.
    let others: Vec<Vec<&CachedFrame>> = (1..tiles)
        .map(|_| {
            let mut r = SplitMix64::new(rng.next_u64());
            let skip = r.below(TILE_OFFSET_MAX);
            draw(&mut r, skip)
        })
        .collect();
    let mut out = Vec::with_capacity(roi.len() / FRAMES_PER_SAMPLE + 1);
    for i in (0..roi.len()).step_by(FRAMES_PER_SAMPLE) {
        let (mut sum, mut n) = ([0.0f64; Q], 0usize);
        for tile in std::iter::once(roi).chain(others.iter().map(Vec::as_slice)) {
            let Some(f) = tile.get(i) else { continue };
            let q = f.quality.context("the cache has no image-quality measures (frames.quality.npy)")?;
            sum.iter_mut().zip(q).for_each(|(s, v)| *s += f64::from(v));
            n += 1;
        }
        out.push(sum.map(|s| (s / n.max(1) as f64) as f32));
    }
    Ok(out)
}

/// The whole-frame samples of a stream of [`SCENE_TILES`] regions, one a second.
fn image_stream<'a>(roi: &[&'a CachedFrame], draw: Draw<'a, '_>, rng: &mut SplitMix64) -> Result<Vec<Quality>> {
    scene_samples(roi, SCENE_TILES, draw, rng)
}

/// `frames` frames of `pool` (reshuffled as needed), after leaving out its first `skip`.
fn drawn<'a>(pool: &[&'a CachedTrack], frames: usize, skip: usize, r: &mut SplitMix64) -> Vec<&'a CachedFrame> {
    let mut out = Vec::with_capacity(frames + skip);
    fill_with(&mut out, pool, frames + skip, r, |f| f);
    out.split_off(skip.min(out.len()))
}

/// One camera as the section sees it: the model's learned baseline, the image norm and
/// baseline learned from its learning tracks, and its clean tracks.
struct Camera<'a> {
    model: &'a Baseline,
    norm: ImageNorm,
    image: Baseline,
    clean: Vec<&'a CachedTrack>,
}

/// The image norm from [`LEARN_MINUTES`] of scenes of half of `learn`'s tracks, then the image
/// CUSUM's baseline (one block a second) from as many minutes of the other half's: a camera's
/// next ten minutes show other scenes than its first ten, and replaying the same tracks for
/// both would leave the baseline blind to how far new scenes stray from the norm.
fn learn_image(
    learn: &[&CachedTrack],
    tiles: usize,
    block_ms: u64,
    rng: &mut SplitMix64,
) -> Result<(ImageNorm, Baseline)> {
    let n = (LEARN_MINUTES * 60_000.0 / FRAME_MS as f64) as usize;
    let half = |odd: usize| -> Vec<&CachedTrack> { learn.iter().skip(odd).step_by(2).copied().collect() };
    let (first, second) = (half(0), half(1));
    let draw = |r: &mut SplitMix64, skip| drawn(&first, n, skip, r);
    let roi = draw(rng, 0);
    let norm = ImageNorm::learn(&scene_samples(&roi, tiles, &draw, rng)?).context("no image-quality samples")?;
    let draw = |r: &mut SplitMix64, skip| drawn(&second, n, skip, r);
    let roi = draw(rng, 0);
    let blocks: Vec<f32> = scene_samples(&roi, tiles, &draw, rng)?.iter().map(|q| norm.deviation(q)).collect();
    let m = model_ref();
    let image = Baseline::from_blocks("bench", &m.sha256, block_ms, &blocks).context("too few image samples")?;
    Ok((norm, image))
}

/// The arms compared: the model's CUSUM alone at the stated rate (the shipped policy without
/// image evidence), the image's alone at the same rate, and the shipped fused alarm (the
/// daemon's tracker with `baseline = { image = true }`: each CUSUM at half the rate, one
/// alert).
pub(super) const ARMS: [&str; 3] = ["model alone", "image alone", "model + image (shipped)"];

/// Alert starts (frame indices) of each of [`ARMS`] over one stream of model `scores` and
/// whole-frame `samples` (one a second).
fn arm_starts(
    cam: &Camera,
    inp: &Inputs,
    cusum: ImageCusum,
    scores: &[f32],
    samples: &[Quality],
) -> Result<[Vec<usize>; 3]> {
    let fused = fused_starts(cam, inp, cusum, scores, samples)?;
    // The arms alone are reported for the shipped setting only (the settings table reads the
    // fused arm): other settings skip their replays.
    if cusum != SHIPPED_IMAGE {
        return Ok([Vec::new(), Vec::new(), fused]);
    }
    let policy = inp.policy;
    let rule = if cusum.bound { ThresholdRule::Bound } else { ThresholdRule::Simulated };
    let image_policy = AlertPolicy { kappa: cusum.kappa, threshold: rule, ..policy.clone() };
    let image_gate = Gate { threshold: 1.0, tail: cusum.tail_floor };
    let deviations: Vec<f32> = (0..scores.len()).map(|i| cam.norm.deviation(&samples[i / FRAMES_PER_SAMPLE])).collect();
    Ok([
        replay(&mut tracker(policy, Some(cam.model))?, scores, 0, inp.gate),
        replay(&mut tracker(&image_policy, Some(&cam.image))?, &deviations, 0, image_gate),
        fused,
    ])
}

/// Alert starts of the daemon's fused tracker: the model's learned baseline, the camera's
/// learned picture under `cusum`'s setting, each second's sample before that second's first
/// frame (as the alert stage orders them).
fn fused_starts(
    cam: &Camera,
    inp: &Inputs,
    cusum: ImageCusum,
    scores: &[f32],
    samples: &[Quality],
) -> Result<Vec<usize>> {
    let policy = inp.policy;
    let mut t = crate::alert::AlertTracker::new("bench", policy.clone(), model_ref())?;
    t.set_baseline(cam.model.clone()).map_err(anyhow::Error::msg)?;
    let setting = image::ImageSetting { kappa: cusum.kappa, tail_floor: cusum.tail_floor, bound: cusum.bound };
    let mut e = crate::alert::ImageEvidence::new(
        "bench",
        LEARN_MINUTES,
        setting,
        policy.false_alarms_per_day,
        policy.clear_evidence,
    );
    e.set_learned(crate::alert::ImageBaseline::new("bench", cam.norm.clone(), cam.image.clone()))
        .map_err(anyhow::Error::msg)?;
    t.use_image_evidence(e);
    t.learn_baseline(crate::alert::BaselineConfig::default());
    let t0 = epoch();
    let mut starts = Vec::new();
    for (i, &sc) in scores.iter().enumerate() {
        let f = scored(i as u64, t0, sc, inp.gate);
        let mut evs = Vec::new();
        if i % FRAMES_PER_SAMPLE == 0 {
            evs.extend(t.image_sample(f.seq, f.time, &samples[i / FRAMES_PER_SAMPLE]));
        }
        evs.extend(t.push(&f));
        starts.extend(evs.iter().filter(|e| matches!(e, crate::alert::Event::AlertStart { .. })).map(|_| i));
    }
    Ok(starts)
}

/// The section's inputs from the rest of the report.
pub(super) struct Inputs<'a> {
    pub(super) tracks: &'a [CachedTrack],
    pub(super) real: &'a [CachedTrack],
    pub(super) cells: &'a [OnsetCell<'a>],
    /// The real camera's accuracy per cell (harm on its own signs).
    pub(super) real_acc: &'a BTreeMap<(String, u8), f64>,
    pub(super) policy: &'a AlertPolicy,
    pub(super) gate: Gate,
    /// The model's learned baselines: test camera, real camera.
    pub(super) learned: [&'a Baseline; 2],
    /// The real camera's learning and clean tracks.
    pub(super) real_learn: Vec<&'a CachedTrack>,
    pub(super) real_clean: Vec<&'a CachedTrack>,
}

/// The section, or `None` when the cache has no image-quality measures.
pub(super) fn section(inp: &Inputs, rng: &mut SplitMix64) -> Result<Option<ImageEvidence>> {
    if inp.tracks.iter().chain(inp.real).flat_map(|t| &t.frames).any(|f| f.quality.is_none()) {
        return Ok(None);
    }
    let group = |g: &str| -> Vec<&CachedTrack> { inp.tracks.iter().filter(|t| t.group == g).collect() };
    let (learn, clean) = (group("learn"), group("clean"));
    let mut bounds = Vec::new();
    for tiles in BOUND_TILES {
        let (norm, _) = learn_image(&learn, tiles, inp.policy.block_ms, rng)?;
        bounds.push(TileBound { tiles, bound: image_bound(&norm, tiles, &clean, inp.cells, rng)? });
    }
    let mut cams = Vec::new();
    for (name, learn, clean, model) in [
        ("test tracks", learn, clean, inp.learned[0]),
        ("real tracks", inp.real_learn.clone(), inp.real_clean.clone(), inp.learned[1]),
    ] {
        let (norm, image) = learn_image(&learn, SCENE_TILES, inp.policy.block_ms, rng)?;
        cams.push((name, Camera { model, norm, image, clean }));
    }
    // Every setting replays the same streams (one seed).
    let seed = rng.next_u64();
    let chosen = measure(&cams, inp, SHIPPED_IMAGE, seed)?;
    let mut settings = Vec::new();
    for cusum in std::iter::once(SHIPPED_IMAGE).chain(IMAGE_SETTINGS) {
        let m = if cusum == SHIPPED_IMAGE { chosen.clone() } else { measure(&cams, inp, cusum, seed)? };
        let fused = |camera: &str| m.rows.iter().find(|r| r.camera == camera && r.arm == ARMS[2]).cloned();
        let (Some(test), Some(real), Some(ramp)) = (fused("test tracks"), fused("real tracks"), m.ramps.get(2)) else {
            continue;
        };
        settings.push(ImageSettingRow { cusum, test, real, ramp: ramp.clone() });
    }
    Ok(Some(ImageEvidence {
        tiles: SCENE_TILES,
        measures: measures_read().map(|(_, m)| m.name().to_string()).collect(),
        cusum: SHIPPED_IMAGE,
        bounds,
        arms: ARMS.iter().map(|a| a.to_string()).collect(),
        rows: chosen.rows,
        families: chosen.families,
        severity: chosen.severity,
        ramps: chosen.ramps,
        settings,
    }))
}

/// What one setting of the image CUSUM measured.
#[derive(Clone)]
struct Measured {
    rows: Vec<ImageArmRow>,
    families: Vec<ImageFamilyRow>,
    severity: Vec<ImageSeverityRow>,
    ramps: Vec<ImageRampRow>,
}

/// Clean hours, onsets and ramps of both cameras with the image CUSUM set as `cusum`.
fn measure(cams: &[(&str, Camera)], inp: &Inputs, cusum: ImageCusum, seed: u64) -> Result<Measured> {
    let mut rng = SplitMix64::new(seed);
    let rng = &mut rng;
    let mut rows = Vec::new();
    let mut severity = Vec::new();
    // Per family of the test camera: harmful delays and benign onsets alarmed (model, fused),
    // and the benign onsets.
    let mut families: BTreeMap<&'static str, ([Delays; 2], [usize; 2], usize)> = BTreeMap::new();
    let real_onset: Vec<&CachedTrack> = inp.real.iter().filter(|t| t.group == "real-onset").collect();
    let empty = || Delays { delays: Vec::new(), missed: 0, early: 0 };
    for (ci, (name, cam)) in cams.iter().enumerate() {
        let clean_alarms = clean_alarms(cam, inp, cusum, rng)?;
        let mut harmful: [Delays; 3] = [empty(), empty(), empty()];
        let mut benign = ([0usize; 3], 0usize);
        // Per severity range (the classifier's accuracy on this camera's signs): cells, and the
        // model's and the fused delays.
        let mut by_severity: BTreeMap<usize, (usize, [Delays; 2])> = BTreeMap::new();
        for cell in inp.cells {
            let (pool, acc) = match ci {
                0 => (cell.pool.clone(), Some(cell.acc)),
                _ => (
                    cell.real_pool(&real_onset),
                    inp.real_acc.get(&(cell.kind.name().to_string(), cell.level)).copied(),
                ),
            };
            let hurts = acc.is_some_and(crate::lab::harmful);
            let d = cell_onsets(cam, inp, cusum, &pool, rng)?;
            if let Some(bin) = acc.and_then(super::sections::severity_bin) {
                let e = by_severity.entry(bin).or_insert_with(|| (0, [empty(), empty()]));
                e.0 += 1;
                for (agg, x) in e.1.iter_mut().zip([&d[0], &d[2]]) {
                    agg.delays.extend(&x.delays);
                    agg.missed += x.missed;
                }
            }
            let family = (ci == 0)
                .then(|| families.entry(cell.kind.family().name()).or_insert_with(|| ([empty(), empty()], [0, 0], 0)));
            if !hurts {
                benign.1 += ONSETS;
                benign.0.iter_mut().zip(&d).for_each(|(b, x)| *b += x.delays.len());
                if let Some(f) = family {
                    f.1[0] += d[0].delays.len();
                    f.1[1] += d[2].delays.len();
                    f.2 += ONSETS;
                }
                continue;
            }
            for (agg, x) in harmful.iter_mut().zip(&d) {
                agg.delays.extend(&x.delays);
                agg.missed += x.missed;
                agg.early += x.early;
            }
            if let Some(f) = family {
                for (agg, x) in f.0.iter_mut().zip([&d[0], &d[2]]) {
                    agg.delays.extend(&x.delays);
                    agg.missed += x.missed;
                }
            }
        }
        for (bin, (cells, mut d)) in by_severity {
            d.iter_mut().for_each(|x| x.delays.sort_by(f64::total_cmp));
            severity.push(ImageSeverityRow {
                camera: name.to_string(),
                accuracy: super::sections::severity_name(bin),
                harmful: crate::lab::harmful(super::replay::SEVERITY_BINS[bin]),
                cells,
                model: d[0].summary(),
                fused: d[1].summary(),
            });
        }
        for (a, arm) in ARMS.iter().enumerate() {
            harmful[a].delays.sort_by(f64::total_cmp);
            rows.push(ImageArmRow {
                camera: name.to_string(),
                arm: arm.to_string(),
                clean_hours: BOUND_HOURS,
                false_alarms: clean_alarms[a],
                harmful: harmful[a].summary(),
                lead_in_alarms: harmful[a].early,
                benign_alarmed: benign.0[a],
                benign_onsets: benign.1,
            });
        }
    }
    let families = families
        .into_iter()
        .map(|(family, (mut d, benign, benign_onsets))| {
            d.iter_mut().for_each(|x| x.delays.sort_by(f64::total_cmp));
            ImageFamilyRow {
                family: family.to_string(),
                model: d[0].summary(),
                fused: d[1].summary(),
                benign_model: benign[0],
                benign_fused: benign[1],
                benign_onsets,
            }
        })
        .collect();
    let ramps = ramps(&cams[0].1, inp, cusum, rng)?;
    Ok(Measured { rows, families, severity, ramps })
}

/// Alarms of each arm over [`BOUND_HOURS`] of the camera's clean scenes.
fn clean_alarms(cam: &Camera, inp: &Inputs, cusum: ImageCusum, rng: &mut SplitMix64) -> Result<[usize; 3]> {
    let frames = (BOUND_HOURS * 3_600_000.0 / FRAME_MS as f64) as usize;
    let draw = |r: &mut SplitMix64, skip| drawn(&cam.clean, frames, skip, r);
    let roi = draw(rng, 0);
    let image = image_stream(&roi, &draw, rng)?;
    let scores: Vec<f32> = roi.iter().map(|f| f.score).collect();
    Ok(arm_starts(cam, inp, cusum, &scores, &image)?.map(|s| s.len()))
}

/// [`ONSETS`] onsets of `pool` after [`LEAD_S`] s (plus a random offset) of the camera's
/// clean scenes, per arm.
fn cell_onsets(
    cam: &Camera,
    inp: &Inputs,
    cusum: ImageCusum,
    pool: &[&CachedTrack],
    rng: &mut SplitMix64,
) -> Result<[Delays; 3]> {
    let mut out: [Delays; 3] = std::array::from_fn(|_| Delays { delays: Vec::new(), missed: 0, early: 0 });
    for _ in 0..ONSETS {
        let lead = (LEAD_S * 1000 / FRAME_MS) as usize + rng.below(20);
        let after = (ONSET_WINDOW_S * 1000 / FRAME_MS) as usize;
        let draw = |r: &mut SplitMix64, skip| {
            let mut v = drawn(&cam.clean, lead, skip, r);
            fill_with(&mut v, pool, after, r, |f| f);
            v
        };
        let roi = draw(rng, 0);
        let image = image_stream(&roi, &draw, rng)?;
        let scores: Vec<f32> = roi.iter().map(|f| f.score).collect();
        for (d, starts) in out.iter_mut().zip(arm_starts(cam, inp, cusum, &scores, &image)?) {
            d.early += starts.iter().filter(|&&i| i < lead).count();
            match starts.iter().find(|&&i| i >= lead) {
                Some(&i) => d.delays.push((i - lead) as f64 * FRAME_MS as f64 / 1000.0),
                None => d.missed += 1,
            }
        }
    }
    Ok(out)
}

/// Per arm, the worst level at `alert_start` over the ramps of the types the classifier fails
/// on, and how many of those ramps reached level 4 first.
fn ramps(cam: &Camera, inp: &Inputs, cusum: ImageCusum, rng: &mut SplitMix64) -> Result<Vec<ImageRampRow>> {
    let harmful: std::collections::BTreeSet<&str> =
        inp.cells.iter().filter(|c| c.harmful()).map(|c| c.kind.name()).collect();
    let (mut worst, mut late, mut ramps) = ([0.0f64; 3], [0usize; 3], 0usize);
    for kind in Corruption::ALL.into_iter().filter(|k| harmful.contains(k.name())) {
        let grid = super::sections::ramp_grid(inp.tracks, kind);
        for _ in 0..RAMPS {
            let draw = |r: &mut SplitMix64, skip| super::sections::ramp_frames(&cam.clean, &grid, skip, r);
            let roi = draw(rng, 0);
            let image = image_stream(&roi, &draw, rng)?;
            let scores: Vec<f32> = roi.iter().map(|f| f.score).collect();
            ramps += 1;
            for (a, starts) in arm_starts(cam, inp, cusum, &scores, &image)?.iter().enumerate() {
                let level =
                    super::sections::ramp_level_at(starts.iter().copied().find(|&i| i >= super::sections::RAMP_ONSET));
                worst[a] = worst[a].max(level);
                late[a] += usize::from(level >= 4.0);
            }
        }
    }
    Ok(ARMS
        .iter()
        .enumerate()
        .map(|(a, arm)| ImageRampRow { arm: arm.to_string(), ramps, late: late[a], worst: worst[a] })
        .collect())
}

/// [`window_bound`] for the image deviation of scenes of `tiles` regions: the highest mean
/// deviation of any W-s window of [`BOUND_HOURS`] of clean scenes, and the share of harmful
/// onsets whose first W s have a higher mean.
fn image_bound(
    norm: &ImageNorm,
    tiles: usize,
    clean: &[&CachedTrack],
    cells: &[OnsetCell],
    rng: &mut SplitMix64,
) -> Result<Bound> {
    let deviations = |pool: &[&CachedTrack], frames: usize, rng: &mut SplitMix64| -> Result<Vec<f32>> {
        let draw = |r: &mut SplitMix64, skip| drawn(pool, frames, skip, r);
        let roi = draw(rng, 0);
        Ok(scene_samples(&roi, tiles, &draw, rng)?.iter().map(|q| norm.deviation(q)).collect())
    };
    let clean_dev = deviations(clean, (BOUND_HOURS * 3_600_000.0 / FRAME_MS as f64) as usize, rng)?;
    // One deviation a second: a window of W s is W of them.
    bound_from(&clean_dev, 1, cells, |pool, n| deviations(pool, n * FRAMES_PER_SAMPLE, rng))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(v: f32) -> Quality {
        [v; Q]
    }

    fn tracks(n: usize, score: f32, shift: f32, rng: &mut SplitMix64) -> Vec<CachedTrack> {
        (0..n)
            .map(|_| CachedTrack {
                group: "clean".into(),
                kind: "none".into(),
                level: 0.0,
                frames: (0..10 + rng.below(20))
                    .map(|_| {
                        let mut qv = q(1.0);
                        qv.iter_mut().for_each(|v| *v += 0.1 * rng.normalish());
                        qv[0] += shift;
                        CachedFrame { score: score + 0.3 * rng.normalish(), correct: true, quality: Some(qv) }
                    })
                    .collect(),
            })
            .collect()
    }

    /// A degradation the model's scores do not show (they stay clean) but that moves the
    /// picture's sharpness far out: the model's CUSUM misses every onset, the fused alarm
    /// raises each within a few seconds, and neither raises anything in 10 clean hours or in
    /// the lead-ins.
    #[test]
    fn the_fused_alarm_sees_what_only_the_picture_shows() {
        let mut rng = SplitMix64::new(5);
        let clean = tracks(60, -1.0, 0.0, &mut rng);
        let learn = tracks(40, -1.0, 0.0, &mut rng);
        let onset = tracks(10, -1.0, 2.0, &mut rng);
        let (clean, learn, onset): (Vec<&CachedTrack>, Vec<&CachedTrack>, Vec<&CachedTrack>) =
            (clean.iter().collect(), learn.iter().collect(), onset.iter().collect());
        let policy = crate::alert::AlertPolicy {
            policy: crate::alert::PolicyKind::Cusum,
            false_alarms_per_day: 1.2,
            threshold: ThresholdRule::Simulated,
            ..AlertPolicy::default()
        };
        let gate = Gate { threshold: 2.66, tail: 1.0 };
        let mut scores = Vec::new();
        fill(&mut scores, &learn, 12_000, &mut rng);
        let blocks: Vec<f32> = scores.chunks(10).map(|c| c[c.len() / 2]).collect();
        let model = Baseline::from_blocks("bench", "bench", policy.block_ms, &blocks).unwrap();
        let (norm, image) = learn_image(&learn, SCENE_TILES, policy.block_ms, &mut rng).unwrap();
        let cam = Camera { model: &model, norm, image, clean };
        let acc = BTreeMap::new();
        let inp = Inputs {
            tracks: &[],
            real: &[],
            cells: &[],
            real_acc: &acc,
            policy: &policy,
            gate,
            learned: [&model, &model],
            real_learn: Vec::new(),
            real_clean: Vec::new(),
        };
        let d = cell_onsets(&cam, &inp, SHIPPED_IMAGE, &onset, &mut rng).unwrap();
        assert_eq!((d[0].missed, d[0].early), (ONSETS, 0), "the model's scores show nothing");
        assert_eq!((d[2].missed, d[2].early, d[2].delays.len()), (0, 0, ONSETS));
        assert!(d[2].delays.iter().all(|&s| s <= 5.0), "{:?}", d[2].delays);
        assert_eq!(clean_alarms(&cam, &inp, SHIPPED_IMAGE, &mut rng).unwrap(), [0, 0, 0]);
    }

    /// A scene's sample is the mean of its tiles' measures at the first frame of each second.
    #[test]
    fn a_scene_sample_is_the_tiles_mean_once_a_second() {
        let frame = |v: f32| CachedFrame { score: 0.0, correct: true, quality: Some(q(v)) };
        let roi_frames: Vec<CachedFrame> = (0..25).map(|i| frame(i as f32)).collect();
        let other = frame(100.0);
        let roi: Vec<&CachedFrame> = roi_frames.iter().collect();
        let draw = |_: &mut SplitMix64, _| vec![&other; 25];
        let s = scene_samples(&roi, 4, &draw, &mut SplitMix64::new(1)).unwrap();
        // Frames 0, 10 and 20 of the crop, with three tiles at 100.
        assert_eq!(s.iter().map(|x| x[0]).collect::<Vec<_>>(), [75.0, 77.5, 80.0]);
        let bare = [CachedFrame { score: 0.0, correct: true, quality: None }];
        let e = scene_samples(&[&bare[0]], 1, &draw, &mut SplitMix64::new(1)).unwrap_err().to_string();
        assert!(e.contains("quality.npy"), "{e}");
    }
}
