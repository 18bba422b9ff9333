//! The trainings: each job's ensemble trained on the pooled sets of one split and scored on
//! every set's held-out rows, on a few threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{anyhow, Result};
use ndarray::{concatenate, Array2, Axis};

use crate::detector::forward::{argmax, signals_batch, ForwardSignal};
use crate::detector::split::{rows, split_40_40_20};
use crate::detector::{mean_logit, train_members, LogStandardizer, MlpConfig, Origin, Standardizer};
use crate::lab::presets::plan::Source;
use crate::lab::presets::Cache;

use super::plan::{Columns, Inputs, Job, SIZES};

/// One cached set with its forward signals and per-row error flags.
pub struct Set {
    /// Every cached feature column.
    pub features: Array2<f32>,
    /// The forward-only signals of the logits.
    pub fwd: Array2<f32>,
    /// Familiar, corrupted or OOD.
    pub origin: Origin,
    /// Corruption type index.
    pub kind: Option<usize>,
    /// Whether the classifier's top-1 is wrong (`None` for OOD rows).
    pub wrong: Vec<Option<bool>>,
    /// The image-quality measures of each row's image, when measured
    /// ([`crate::lab::quality`]).
    pub quality: Option<Array2<f32>>,
}

/// Held-out scores: per set (cache order), per ensemble size ([`SIZES`]), per test row.
pub type Scores = Vec<Vec<Vec<f32>>>;

/// The cache's sets with their forward signals and error flags.
pub fn sets(c: &Cache) -> Vec<Set> {
    c.sets
        .iter()
        .map(|s| {
            let f = &s.features;
            let (origin, kind) = match s.spec.source {
                Source::Familiar => (Origin::Familiar, None),
                Source::Cifar10 => (Origin::Ood, None),
                Source::Corrupted { kind, .. } => (Origin::Corrupted, Some(kind)),
            };
            let wrong = (0..f.len())
                .map(|i| (origin != Origin::Ood).then(|| argmax(&f.logits.row(i).to_vec()) != c.labels.get(i).copied()))
                .collect();
            Set {
                features: f.features.clone(),
                fwd: signals_batch(&ForwardSignal::ALL, &f.logits),
                origin,
                kind,
                wrong,
                quality: None,
            }
        })
        .collect()
}

/// Runs every job on `threads` threads; results in job order. `mlp` is the members' network
/// (member `k` of a job is seeded `job.seed + k`).
pub fn run_all(sets: &[Set], names: &[String], jobs: &[Job], threads: usize, mlp: &MlpConfig) -> Result<Vec<Scores>> {
    let cols: Vec<(Columns, Vec<usize>)> = Columns::ALL.iter().map(|&c| (c, c.pick(names))).collect();
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Scores>>> = Mutex::new(vec![None; jobs.len()]);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..threads.max(1) {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                let picked = cols.iter().find(|c| c.0 == job.columns).map_or(&[][..], |c| &c.1[..]);
                match run(sets, picked, *job, mlp) {
                    Ok(r) => {
                        if let Ok(mut g) = results.lock() {
                            g[i] = Some(r);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut g) = failed.lock() {
                            g.get_or_insert(e);
                        }
                        break;
                    }
                }
                if (i + 1).is_multiple_of(10) {
                    log::info!("{} of {} trainings, {:.0} s", i + 1, jobs.len(), t0.elapsed().as_secs_f64());
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    let results = results.into_inner().map_err(|_| anyhow!("a training thread panicked"))?;
    results.into_iter().map(|r| r.ok_or_else(|| anyhow!("a training produced no result"))).collect()
}

/// Trains one job's ensemble and scores every set's held-out rows.
fn run(sets: &[Set], cols: &[usize], job: Job, mlp: &MlpConfig) -> Result<Scores> {
    let sp = split_40_40_20(sets[0].features.nrows(), job.seed);
    let grad = |s: &Set, idx: &[usize]| rows(&s.features, idx).select(Axis(1), cols);
    let grad_std = LogStandardizer::fit(&grad(&sets[0], &sp.train))?;
    let fwd_std = Standardizer::fit(&rows(&sets[0].fwd, &sp.train))?;
    let quality = |s: &Set, idx: &[usize]| {
        s.quality.as_ref().map(|q| rows(q, idx)).ok_or_else(|| anyhow!("the sets carry no image-quality measures"))
    };
    // Fitted on the familiar training rows, as the other inputs' standardisers.
    let q_std = if job.inputs.uses_quality() { Some(Standardizer::fit(&quality(&sets[0], &sp.train)?)?) } else { None };
    let design = |s: &Set, idx: &[usize]| -> Result<Array2<f32>> {
        let g = || grad_std.transform(&grad(s, idx));
        let f = || fwd_std.transform(&rows(&s.fwd, idx));
        let q = || -> Result<Array2<f32>> {
            let st = q_std.as_ref().ok_or_else(|| anyhow!("no quality standardiser"))?;
            Ok(st.transform(&quality(s, idx)?)?)
        };
        Ok(match job.inputs {
            Inputs::Gradients => g()?,
            Inputs::Forward => f()?,
            Inputs::Both => concatenate(Axis(1), &[g()?.view(), f()?.view()])?,
            Inputs::Quality => q()?,
            Inputs::BothQuality => concatenate(Axis(1), &[g()?.view(), f()?.view(), q()?.view()])?,
            Inputs::QualityAbs => q()?.mapv(f32::abs),
            Inputs::BothQualityAbs => concatenate(Axis(1), &[g()?.view(), f()?.view(), q()?.mapv(f32::abs).view()])?,
        })
    };
    let used: Vec<&Set> = sets.iter().filter(|s| s.kind.is_none() || s.kind != job.exclude).collect();
    let stack = |idx: &[usize]| -> Result<(Array2<f32>, Vec<u8>)> {
        let parts = used.iter().map(|s| design(s, idx)).collect::<Result<Vec<_>>>()?;
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let y = used.iter().flat_map(|s| idx.iter().map(|&i| job.target.label(s.origin, s.wrong[i]))).collect();
        Ok((concatenate(Axis(0), &views)?, y))
    };
    let (xt, yt) = stack(&sp.train)?;
    let (xv, yv) = stack(&sp.val)?;
    let cfg = MlpConfig { seed: job.seed, ..mlp.clone() };
    let (members, _) = train_members(&xt, &yt, &xv, &yv, &cfg, SIZES[SIZES.len() - 1])?;
    sets.iter()
        .map(|s| {
            let x = design(s, &sp.test)?;
            Ok(SIZES
                .iter()
                .map(|&k| x.rows().into_iter().map(|z| mean_logit(&members[..k], &z.to_vec())).collect())
                .collect())
        })
        .collect()
}
