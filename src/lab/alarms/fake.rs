//! A tiny synthetic cache for the report's tests: every group of the plan with as many tracks
//! as [`super::check_plan`] expects (a few frames each), the real camera's tracks, and the two
//! accuracy tables, with scores drawn around the shipped calibration's threshold so that the
//! policies alarm, miss and catch.

use std::path::Path;

use crate::corrupt::Corruption;
use crate::rng::SplitMix64;

use super::cache::*;
use super::plan::{CachedFrame, CachedTrack};
use super::*;

/// Real held-out tracks of the fake camera.
pub(super) const REAL_COUNT: usize = 60;

/// The calibration the fake scores are drawn around.
pub(super) const CALIB: &str = DEFAULT_CALIB;

/// Corruption types with tracks (the first of [`Corruption::ALL`]); the others' cells have
/// none, as a cut-short cache would, which keeps the test's replay short.
const KINDS: usize = 8;

/// How a type's scores rise with the level: most rise steadily (faster for some), `snow` (5)
/// only from level 4.5 (late ramps, missed onsets).
fn lift(ki: usize, level: f32) -> f32 {
    match ki {
        5 if level < 4.5 => 0.0,
        5 => 1.2,
        _ => level * (0.05 + 0.12 * (ki % 5) as f32),
    }
}

fn track(rng: &mut SplitMix64, group: &str, ki: Option<usize>, level: f32) -> CachedTrack {
    let len = 2 + rng.below(3);
    // Clean frames sit below the threshold (2.66) with a tail above it, and one clean track in 40
    // is a hard sign far above it (false alarms); corrupted ones rise with the level.
    let lift = match ki {
        None if group == "clean" && rng.below(40) == 0 => 1.6,
        None => 0.0,
        Some(ki) => lift(ki, level),
    };
    let frames = (0..len)
        .map(|_| CachedFrame {
            score: 1.6 + lift + 0.45 * rng.normalish(),
            correct: rng.uniform() > 0.1 + 0.04 * lift,
            quality: None,
        })
        .collect();
    let kind = ki.map_or("none", |k| Corruption::ALL[k].name());
    CachedTrack { group: group.into(), kind: kind.into(), level, frames }
}

/// The synthetic test-image tracks (as many per group as the plan draws) and real tracks.
pub(super) fn tracks() -> (Vec<CachedTrack>, Vec<CachedTrack>) {
    let mut rng = SplitMix64::new(7);
    let mut t = Vec::new();
    for (g, n) in [("learn", LEARN_TRACKS), ("clean", CLEAN_TRACKS)] {
        t.extend((0..n).map(|_| track(&mut rng, g, None, 0.0)));
    }
    let cells = |levels: &[f32], n: usize| -> Vec<(usize, f32)> {
        (0..n).map(|i| (i % KINDS, levels[(i / KINDS) % levels.len()])).collect()
    };
    let onset_levels = ONSET_LEVELS.map(f32::from);
    let onsets = Corruption::ALL.len() * ONSET_LEVELS.len() * ONSET_TRACKS;
    for (ki, level) in cells(&onset_levels, onsets) {
        t.push(track(&mut rng, "onset", Some(ki), level));
    }
    for (ki, level) in cells(&RAMP_LEVELS, Corruption::ALL.len() * RAMP_LEVELS.len() * RAMP_TRACKS) {
        t.push(track(&mut rng, "ramp", Some(ki), level));
    }
    let mut real: Vec<CachedTrack> = (0..REAL_COUNT).map(|_| track(&mut rng, "real", None, 0.0)).collect();
    for (ki, level) in cells(&onset_levels, onsets) {
        real.push(track(&mut rng, "real-onset", Some(ki), level));
    }
    (t, real)
}

/// Writes the two accuracy tables into `dir`: every type and level, some types benign, some
/// cells harmful on the test signs, some on the camera's own, some on both.
pub(super) fn write_accuracy(dir: &Path) {
    let table = |images: usize, shift: usize| {
        let mut s = String::from("kind,level,images,correct\n");
        for (ki, kind) in Corruption::ALL.into_iter().enumerate() {
            for level in ONSET_LEVELS {
                let pct = match ki {
                    _ if ki % 4 == 1 => 95,
                    5 if level < 5 => 90,
                    _ => [95, 85, 70, 50][(ki + usize::from(level) + shift) % 4],
                };
                s += &format!("{},{level},{images},{}\n", kind.name(), images * pct / 100);
            }
        }
        s
    };
    std::fs::write(dir.join(ACCURACY_FILE), table(ACCURACY_IMAGES, 0)).unwrap();
    std::fs::write(dir.join(REAL_ACCURACY_FILE), table(REAL_COUNT, 1)).unwrap();
}

/// A configuration reading the fake cache at `dir`.
pub(super) fn config(dir: &Path) -> Config {
    Config {
        data: "data".into(),
        calib: CALIB.into(),
        model: "models/gtsrb-resnet18.onnx".into(),
        cache: dir.into(),
        rows: "0..".into(),
        heldout: "heldout.csv".into(),
        hours: 0.5,
        rate_hours: 2.0,
        batch: 1,
        threads: 1,
        policy: None,
    }
}
