//! `gradwatch bench-detectors`: the detector ablation (`docs/results/detector-ablation.md`,
//! `make bench-detectors`) on the preset ablation's feature cache. The experiment lives in
//! [`crate::lab::detectors`]; this file parses the arguments and writes the page.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::bench_presets::{write_page, AblationArgs};
use crate::lab::detectors::{self, render};

/// Arguments of `gradwatch bench-detectors`.
#[derive(Args, Debug)]
pub struct BenchDetectorsArgs {
    #[command(flatten)]
    pub common: AblationArgs,
    /// The page to write; its table goes beside it as CSV (`detector-ablation.csv`).
    #[arg(long, default_value = "docs/results/detector-ablation.md")]
    pub out: PathBuf,
}

/// Builds the cache if needed, runs every training, writes the page.
pub fn run(a: BenchDetectorsArgs) -> Result<i32> {
    let mut cfg = a.common.config();
    if cfg.threads == 0 {
        // Trainings are single-threaded; two at once keep this 2-core machine busy.
        cfg.threads = 2;
    }
    let results = detectors::run(&cfg).with_context(|| format!("feature cache {}", cfg.cache.display()))?;
    write_page(&a.out, &render::markdown(&results)?, &render::csv(&results))?;
    Ok(0)
}
