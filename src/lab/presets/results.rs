//! What the preset ablation measured: plain data ([`Results`]), computed from the cache by
//! [`compute`] and rendered by [`super::render`].

use anyhow::Result;
use ndarray::{concatenate, Array2, Axis};

use crate::detector::forward::argmax;
use crate::detector::roc::auroc;
use crate::detector::split::{rows, split_40_40_20};
use crate::detector::{GradDetector, MlpConfig};
use crate::runtime::extract::FeatureSet;

use super::cache::Cache;
use super::plan::{self, Source};

/// One candidate feature subset: AUROCs (fractions, 0..1) as means over the split seeds.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Row {
    /// The candidate's label ([`plan::CANDIDATES`]).
    pub label: String,
    /// Feature columns it keeps.
    pub columns: usize,
    /// Familiar vs CIFAR-10.
    pub cifar: f64,
    /// One detector per corruption type (levels pooled); mean over the types.
    pub corruption: f64,
    /// One detector for every type and level at once.
    pub pooled: f64,
    /// Wrong vs right top-1 over the familiar and corrupted test rows, pooled detector's score.
    pub misclassification: f64,
}

/// What both ablations (this and `bench-detectors`) ran on.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Protocol {
    /// Images per set.
    pub per_set: usize,
    /// Split (and training) seeds `0..seeds`.
    pub seeds: u64,
    /// Corruption type names.
    pub kinds: Vec<String>,
    /// Corruption levels.
    pub levels: Vec<u8>,
}

impl Protocol {
    /// The plan's types and levels with these images per set and seeds.
    pub fn of(per_set: usize, seeds: u64) -> Result<Protocol> {
        let kinds = plan::kinds()?.iter().map(|k| k.name().to_string()).collect();
        Ok(Protocol { per_set, seeds, kinds, levels: plan::LEVELS.to_vec() })
    }

    /// The levels as `3, 4, 5`.
    pub fn levels_list(&self) -> String {
        self.levels.iter().map(u8::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// The whole ablation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Results {
    /// Images, seeds, types and levels.
    pub protocol: Protocol,
    /// Rows in [`plan::CANDIDATES`] order.
    pub rows: Vec<Row>,
}

impl Results {
    /// The row of a candidate label.
    pub fn row(&self, label: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.label == label)
    }
}

/// Fits the paper's detector on each candidate's columns for every split seed and averages.
/// Each (candidate, seed) is seeded by the split seed alone, so no row depends on another.
/// `mlp` is the detector's network (its seed is replaced by the split seed).
pub fn compute(c: &Cache, seeds: u64, mlp: &MlpConfig) -> Result<Results> {
    let kinds = plan::kinds()?;
    let mut out = Vec::new();
    for (label, pick) in plan::CANDIDATES {
        let cols = plan::columns(&c.names, *pick);
        let mut sum = [0.0; 4];
        for seed in 0..seeds {
            let a = one_seed(c, &cols, kinds.len(), seed, mlp)?;
            for (s, v) in sum.iter_mut().zip(a) {
                *s += v;
            }
        }
        let k = seeds.max(1) as f64;
        out.push(Row {
            label: (*label).into(),
            columns: cols.len(),
            cifar: sum[0] / k,
            corruption: sum[1] / k,
            pooled: sum[2] / k,
            misclassification: sum[3] / k,
        });
    }
    Ok(Results { protocol: Protocol::of(c.per_set(), seeds)?, rows: out })
}

/// CIFAR-10, per-type corruption (mean), pooled and misclassification AUROC of one seed.
fn one_seed(c: &Cache, cols: &[usize], n_kinds: usize, seed: u64, mlp: &MlpConfig) -> Result<[f64; 4]> {
    let sp = split_40_40_20(c.per_set(), seed);
    let cfg = MlpConfig { seed, ..mlp.clone() };
    let fam = &c.sets[0].features;
    let take = |f: &FeatureSet, idx: &[usize]| rows(&f.features, idx).select(Axis(1), cols);
    // Trains familiar vs `unf` and scores both sides' test rows.
    let pair = |unf: &[&FeatureSet]| -> Result<(Vec<f32>, Vec<f32>)> {
        let cat = |idx: &[usize]| -> Result<Array2<f32>> {
            let parts: Vec<Array2<f32>> = unf.iter().map(|u| take(u, idx)).collect();
            let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
            Ok(concatenate(Axis(0), &views)?)
        };
        let det =
            GradDetector::train(&take(fam, &sp.train), &cat(&sp.train)?, &take(fam, &sp.val), &cat(&sp.val)?, &cfg)?;
        Ok((det.score(&take(fam, &sp.test))?, det.score(&cat(&sp.test)?)?))
    };
    let of = |want: &dyn Fn(Source) -> bool| -> Vec<&FeatureSet> {
        c.sets.iter().filter(|s| want(s.spec.source)).map(|s| &s.features).collect()
    };
    let (f, u) = pair(&of(&|s| s == Source::Cifar10))?;
    let cifar = auroc(&f, &u);
    let mut corr = 0.0;
    for k in 0..n_kinds {
        let (f, u) = pair(&of(&|s| matches!(s, Source::Corrupted { kind, .. } if kind == k)))?;
        corr += auroc(&f, &u);
    }
    let corrupted = of(&|s| matches!(s, Source::Corrupted { .. }));
    let (f, u) = pair(&corrupted)?;
    let pooled = auroc(&f, &u);
    // Misclassification: the pooled detector's test scores, familiar then each corrupted set,
    // split by whether the classifier's top-1 is right.
    let (mut right, mut wrong) = (Vec::new(), Vec::new());
    let mut scores = f.iter().chain(&u).copied();
    for s in std::iter::once(fam).chain(corrupted) {
        for &i in &sp.test {
            let Some(score) = scores.next() else { break };
            if argmax(&s.logits.row(i).to_vec()) == c.labels.get(i).copied() {
                right.push(score);
            } else {
                wrong.push(score);
            }
        }
    }
    Ok([cifar, corr / n_kinds.max(1) as f64, pooled, auroc(&right, &wrong)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_sets_give_perfect_aurocs_in_every_column() {
        let c = crate::lab::presets::cache::fixture(20);
        // A few epochs are enough to separate them (and keep the test short).
        let r = compute(&c, 1, &MlpConfig { max_epochs: 40, lr: 0.02, ..Default::default() }).unwrap();
        assert_eq!(r.rows.len(), plan::CANDIDATES.len());
        let p = &r.protocol;
        assert_eq!((p.per_set, p.seeds, p.kinds.len(), p.levels.len()), (20, 1, 8, 3));
        let full = r.row(plan::FULL).unwrap();
        assert_eq!(full.columns, 3);
        assert_eq!(r.row(plan::FAST).unwrap().columns, 3);
        assert_eq!(r.row("act only").unwrap().columns, 1);
        // Every unfamiliar set is far from the familiar one, and exactly the corrupted rows are
        // misclassified: every AUROC is 1.
        for row in &r.rows {
            assert_eq!([row.cifar, row.corruption, row.pooled, row.misclassification], [1.0; 4], "{row:?}");
        }
    }
}
