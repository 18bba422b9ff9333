//! `gradwatch bench-quality`: what the no-reference image-quality measures
//! ([`crate::quality`]) add to the camera-health detector (`docs/results/quality.md`, `make
//! bench-quality`), on the preset ablation's feature cache.
//!
//! - plan: the shipped detector's target (`union`) and ensemble, trained on today's inputs
//!   (gradients and forward signals), on the quality measures alone, and on all three, the
//!   measures signed or as two-sided deviations; each also once per left-out corruption type
//!   (generalisation to an unseen degradation);
//! - cached extraction: the presets cache ([`crate::lab::presets::cache`]); the quality
//!   measures are recomputed from the same images (they cost microseconds, not a graph run);
//! - `Results`: the detector ablation's rows for these variants, per type AUROCs, and each
//!   type's best single measure;
//! - [`render`]: the page.

pub mod render;

use std::time::Instant;

use anyhow::Result;
use ndarray::Array2;

use crate::detector::roc::auroc;
use crate::detector::{MlpConfig, Target};
use crate::lab::detectors::plan::{Columns, Inputs, Job, SIZES};
use crate::lab::detectors::{self, results::of_kind, train};
use crate::lab::presets::{self, cache::Images, Config};
use crate::quality::{measure, Measure};

/// The detector inputs compared: today's, the quality measures alone and with today's, each
/// as signed standardised values and as two-sided deviations.
pub const INPUTS: [Inputs; 5] =
    [Inputs::Both, Inputs::Quality, Inputs::BothQuality, Inputs::QualityAbs, Inputs::BothQualityAbs];

/// One corruption type: AUROC (familiar vs its corrupted rows, levels pooled) per input
/// variant in [`INPUTS`] order, with the largest ensemble, mean over seeds.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TypeRow {
    /// Corruption name.
    pub kind: String,
    /// Its family.
    pub family: String,
    /// Trained on every type.
    pub pooled: Vec<f64>,
    /// Trained without this type.
    pub left_out: Vec<f64>,
    /// The single measure that separates it best (oriented), on every row.
    pub best_measure: String,
    /// Its AUROC.
    pub best_measure_auroc: f64,
}

/// What the experiment measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Results {
    /// The detector ablation's rows for [`INPUTS`] (same protocol and columns).
    pub detectors: detectors::Results,
    /// Per corruption type.
    pub per_type: Vec<TypeRow>,
    /// Microseconds to measure one 32x32 image, and one 1280x720 frame (best of a few).
    pub micros_small: f64,
    /// See `micros_small`.
    pub micros_hd: f64,
}

/// Every training: per seed and input variant, the pooled detector and one per left-out type.
pub fn jobs(seeds: u64, kinds: usize) -> Vec<Job> {
    let mut v = Vec::new();
    for seed in 0..seeds {
        for inputs in INPUTS {
            let job = Job { seed, target: Target::Union, inputs, columns: Columns::Full, exclude: None };
            v.push(job);
            v.extend((0..kinds).map(|k| Job { exclude: Some(k), ..job }));
        }
    }
    v
}

/// The quality measures of every row of every set of the cache (plan order).
fn measure_sets(cfg: &Config, specs: &[presets::plan::SetSpec]) -> Result<Vec<Array2<f32>>> {
    let images = Images::load(cfg)?;
    specs
        .iter()
        .map(|spec| {
            let imgs = images.of(spec)?;
            let mut q = Array2::zeros((imgs.len(), Measure::ALL.len()));
            for (i, img) in imgs.iter().enumerate() {
                for (j, v) in measure(img).into_iter().enumerate() {
                    q[[i, j]] = v;
                }
            }
            Ok(q)
        })
        .collect()
}

/// Best of five: microseconds per [`measure`] of `img`.
fn time_measure(img: &crate::frame::RgbImage) -> f64 {
    (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(measure(std::hint::black_box(img)));
            t.elapsed().as_secs_f64() * 1e6
        })
        .fold(f64::INFINITY, f64::min)
}

/// Per type: the AUROCs of every variant and the best single measure.
fn per_type(sets: &[train::Set], jobs: &[Job], scores: &[train::Scores], seeds: u64) -> Result<Vec<TypeRow>> {
    let kinds = presets::plan::kinds()?;
    let si = SIZES.len() - 1;
    let fam = |r: &train::Scores| r[0][si].clone();
    let mut rows = Vec::new();
    for (k, kind) in kinds.iter().enumerate() {
        let mean = |exclude: Option<usize>, inputs: Inputs| {
            let a: f64 = jobs
                .iter()
                .zip(scores)
                .filter(|(j, _)| j.inputs == inputs && j.exclude == exclude)
                .map(|(_, r)| auroc(&fam(r), &of_kind(sets, r, si, k)))
                .sum();
            a / seeds.max(1) as f64
        };
        let familiar = sets[0].quality.as_ref();
        let corrupted: Vec<&Array2<f32>> =
            sets.iter().filter(|s| s.kind == Some(k)).filter_map(|s| s.quality.as_ref()).collect();
        let (mut best, mut best_a) = (String::new(), f64::NAN);
        if let Some(f) = familiar {
            for (j, m) in Measure::ALL.iter().enumerate() {
                let neg: Vec<f32> = f.column(j).to_vec();
                let pos: Vec<f32> = corrupted.iter().flat_map(|c| c.column(j).to_vec()).collect();
                let a = auroc(&neg, &pos);
                let a = a.max(1.0 - a);
                if best_a.is_nan() || a > best_a {
                    (best, best_a) = (m.name().trim_start_matches("quality:").to_string(), a);
                }
            }
        }
        rows.push(TypeRow {
            kind: kind.name().to_string(),
            family: kind.family().name().to_string(),
            pooled: INPUTS.iter().map(|&i| mean(None, i)).collect(),
            left_out: INPUTS.iter().map(|&i| mean(Some(k), i)).collect(),
            best_measure: best,
            best_measure_auroc: best_a,
        });
    }
    Ok(rows)
}

/// Loads (or builds) the cache, measures every image, runs every training.
pub fn run(cfg: &Config) -> Result<Results> {
    let cache = presets::load_or_extract(cfg)?;
    let protocol = presets::results::Protocol::of(cache.per_set(), cfg.seeds)?;
    let mut sets = train::sets(&cache);
    let specs: Vec<_> = cache.sets.iter().map(|s| s.spec.clone()).collect();
    for (s, q) in sets.iter_mut().zip(measure_sets(cfg, &specs)?) {
        s.quality = Some(q);
    }
    let jobs = jobs(cfg.seeds, protocol.kinds.len());
    let t = Instant::now();
    let scores = train::run_all(&sets, &cache.names, &jobs, cfg.threads, &MlpConfig::default())?;
    log::info!("{} trainings in {:.0} s", jobs.len(), t.elapsed().as_secs_f64());
    let per_type = per_type(&sets, &jobs, &scores, cfg.seeds)?;
    let width = |c: Columns, i: Inputs| i.width(c.pick(&cache.names).len());
    let detectors = detectors::results::compute(&sets, &jobs, &scores, protocol, width)?;
    let small = crate::frame::RgbImage::zeros(32, 32);
    let mut hd = crate::frame::RgbImage::zeros(1280, 720);
    let mut rng = crate::rng::SplitMix64::new(1);
    hd.data.iter_mut().for_each(|v| *v = rng.below(256) as u8);
    Ok(Results { detectors, per_type, micros_small: time_measure(&small), micros_hd: time_measure(&hd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_trained_pooled_and_once_per_left_out_type() {
        let j = jobs(2, 8);
        assert_eq!(j.len(), 2 * INPUTS.len() * 9);
        assert!(j.iter().all(|j| j.target == Target::Union && j.columns == Columns::Full));
        assert_eq!(j.iter().filter(|j| j.inputs == Inputs::Quality && j.exclude == Some(3)).count(), 2);
    }
}
