//! `gradwatch bench-detectors`: the detector ablation (`docs/results/detector-ablation.md`,
//! `make bench-detectors`): which training target, which inputs (gradient norms, forward-only
//! logit signals, both), how many seed-ensemble members and which gradient columns the
//! calibration's detector should use.
//!
//! - [`plan`]: every training (split seed x target x inputs x left-out type, and the default
//!   variant on each preset's columns);
//! - cached extraction: the preset ablation's cache ([`crate::lab::presets::cache`]), built
//!   when missing; nothing else is extracted;
//! - [`train`] then [`results`]: held-out scores, averaged into AUROCs;
//! - [`render`]: the page and its CSV.

pub mod plan;
pub mod render;
pub mod results;
pub mod train;

use anyhow::Result;

use crate::detector::MlpConfig;
use crate::lab::presets::{self, Config};

pub use results::Results;

/// Loads (or builds) the cache, runs every training and averages.
pub fn run(cfg: &Config) -> Result<Results> {
    let cache = presets::load_or_extract(cfg)?;
    let protocol = presets::results::Protocol::of(cache.per_set(), cfg.seeds)?;
    let sets = train::sets(&cache);
    let jobs = plan::jobs(cfg.seeds, protocol.kinds.len());
    let t = std::time::Instant::now();
    let scores = train::run_all(&sets, &cache.names, &jobs, cfg.threads, &MlpConfig::default())?;
    log::info!("{} trainings in {:.0} s", jobs.len(), t.elapsed().as_secs_f64());
    let width = |c: plan::Columns, i: plan::Inputs| i.width(c.pick(&cache.names).len());
    results::compute(&sets, &jobs, &scores, protocol, width)
}

#[cfg(test)]
mod tests {
    use super::plan::{Columns, Inputs};
    use super::*;
    use crate::detector::Target;

    #[test]
    fn separable_sets_give_perfect_aurocs_and_the_error_counts() {
        let cache = crate::lab::presets::cache::fixture(20);
        let sets = train::sets(&cache);
        // The union target only (and the columns table), to keep the test short.
        let jobs: Vec<_> = plan::jobs(1, 8).into_iter().filter(|j| j.target == Target::Union).collect();
        let mlp = MlpConfig { max_epochs: 40, lr: 0.02, ..Default::default() };
        let scores = train::run_all(&sets, &cache.names, &jobs, 2, &mlp).unwrap();
        let protocol = presets::results::Protocol::of(20, 1).unwrap();
        let r = results::compute(&sets, &jobs, &scores, protocol, |c, i| c as usize * 10 + i as usize).unwrap();
        // 3 inputs on `full`, then the default on 2 more column sets; x 2 sizes.
        assert_eq!(r.rows.len(), (3 + 2) * 2);
        assert_eq!((r.familiar_errors, r.corrupted_wrong, r.trainings), (0, 1.0, jobs.len()));
        for row in &r.rows {
            let left = row.left_out.unwrap_or(1.0);
            assert_eq!([row.cifar, row.corruption, left, row.misclassification], [1.0; 4], "{row:?}");
            assert_eq!(row.left_out.is_some(), row.columns == Columns::Full, "{row:?}");
        }
        let fast = r.row(Columns::Fast, Target::Union, Inputs::Both, 5).unwrap();
        assert_eq!(fast.input_columns, 12);
    }
}
