//! What the detector ablation measured: plain data ([`Results`]), from the trainings' held-out
//! scores; rendered by [`super::render`].

use anyhow::Result;

use crate::detector::roc::auroc;
use crate::detector::split::split_40_40_20;
use crate::detector::{Origin, Target};

use super::plan::{Columns, Inputs, Job, SIZES};
use super::train::{Scores, Set};
use crate::lab::presets::results::Protocol;

/// One variant's AUROCs (fractions, 0..1), means over the split seeds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Row {
    /// Training target.
    pub target: Target,
    /// Inputs.
    pub inputs: Inputs,
    /// Gradient columns.
    pub columns: Columns,
    /// Input columns of the detector (gradient columns and/or forward signals).
    pub input_columns: usize,
    /// Ensemble members.
    pub members: usize,
    /// Familiar vs CIFAR-10.
    pub cifar: f64,
    /// Per type, familiar vs its corrupted rows (levels pooled); mean over the types.
    pub corruption: f64,
    /// The same, each type scored by a detector trained without it (`None`: not trained).
    pub left_out: Option<f64>,
    /// Wrong vs right top-1 over the held-out clean and corrupted rows.
    pub misclassification: f64,
}

/// The whole ablation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Results {
    /// Images, seeds, types and levels.
    pub protocol: Protocol,
    /// Clean familiar images the classifier gets wrong.
    pub familiar_errors: usize,
    /// Fraction of corrupted rows the classifier gets wrong.
    pub corrupted_wrong: f64,
    /// Trainings run (each of the largest ensemble).
    pub trainings: usize,
    /// Every (columns, target, inputs, members) trained, main table (`full` columns) first.
    pub rows: Vec<Row>,
}

impl Results {
    /// The row of a variant.
    pub fn row(&self, columns: Columns, target: Target, inputs: Inputs, members: usize) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.columns == columns && r.target == target && r.inputs == inputs && r.members == members)
    }
}

/// The held-out scores of corruption type `k`'s sets (all levels), ensemble size index `si`.
pub fn of_kind(sets: &[Set], r: &Scores, si: usize, k: usize) -> Vec<f32> {
    sets.iter().zip(r).filter(|(s, _)| s.kind == Some(k)).flat_map(|(_, v)| v[si].iter().copied()).collect()
}

/// Misclassification AUROC over the held-out clean and corrupted rows.
pub fn misclassification(sets: &[Set], r: &Scores, si: usize, seed: u64) -> f64 {
    let test = split_40_40_20(sets[0].features.nrows(), seed).test;
    let (mut right, mut wrong) = (Vec::new(), Vec::new());
    for (s, v) in sets.iter().zip(r).filter(|(s, _)| s.origin != Origin::Ood) {
        for (&i, &score) in test.iter().zip(&v[si]) {
            if s.wrong[i] == Some(true) {
                wrong.push(score);
            } else {
                right.push(score);
            }
        }
    }
    auroc(&right, &wrong)
}

/// Averages the jobs' AUROCs per variant. `input_columns` gives each job's detector width.
pub fn compute(
    sets: &[Set],
    jobs: &[Job],
    scores: &[Scores],
    protocol: Protocol,
    width: impl Fn(Columns, Inputs) -> usize,
) -> Result<Results> {
    let (nk, seeds) = (protocol.kinds.len(), protocol.seeds);
    let mut rows: Vec<Row> = Vec::new();
    let mut variants: Vec<(Columns, Target, Inputs)> = Vec::new();
    for j in jobs {
        if !variants.contains(&(j.columns, j.target, j.inputs)) {
            variants.push((j.columns, j.target, j.inputs));
        }
    }
    for (columns, target, inputs) in variants {
        for (si, &members) in SIZES.iter().enumerate() {
            let (mut cifar, mut corr, mut mis, mut left, mut any_left) = (0.0, 0.0, 0.0, 0.0, false);
            for (job, r) in jobs.iter().zip(scores) {
                if (job.columns, job.target, job.inputs) != (columns, target, inputs) {
                    continue;
                }
                let fam = &r[0][si];
                match job.exclude {
                    None => {
                        cifar += auroc(fam, &r[1][si]);
                        corr += (0..nk).map(|k| auroc(fam, &of_kind(sets, r, si, k))).sum::<f64>() / nk.max(1) as f64;
                        mis += misclassification(sets, r, si, job.seed);
                    }
                    Some(k) => {
                        left += auroc(fam, &of_kind(sets, r, si, k)) / nk.max(1) as f64;
                        any_left = true;
                    }
                }
            }
            let s = seeds.max(1) as f64;
            rows.push(Row {
                target,
                inputs,
                columns,
                input_columns: width(columns, inputs),
                members,
                cifar: cifar / s,
                corruption: corr / s,
                left_out: any_left.then_some(left / s),
                misclassification: mis / s,
            });
        }
    }
    let wrong = |s: &Set| s.wrong.iter().filter(|w| **w == Some(true)).count();
    let corrupted: Vec<&Set> = sets.iter().filter(|s| s.origin == Origin::Corrupted).collect();
    let corrupted_rows: usize = corrupted.iter().map(|s| s.wrong.len()).sum();
    Ok(Results {
        protocol,
        familiar_errors: sets.first().map_or(0, wrong),
        corrupted_wrong: corrupted.iter().map(|s| wrong(s)).sum::<usize>() as f64 / corrupted_rows.max(1) as f64,
        trainings: jobs.len(),
        rows,
    })
}
