//! `gradwatch bench-quality`: what the image-quality measures add to the camera-health detector
//! (`docs/results/quality.md`, `make bench-quality`), on the preset ablation's feature cache.
//! The experiment lives in [`crate::lab::quality`]; this file parses the arguments and writes
//! the page and its JSON.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::bench_presets::AblationArgs;
use crate::lab::quality::{self, render};

/// Arguments of `gradwatch bench-quality`.
#[derive(Args, Debug)]
pub struct BenchQualityArgs {
    #[command(flatten)]
    pub common: AblationArgs,
    /// The page to write; its numbers go beside it as JSON (`quality.json`).
    #[arg(long, default_value = "docs/results/quality.md")]
    pub out: PathBuf,
}

/// Builds the cache if needed, measures the images, runs every training, writes the page.
pub fn run(a: BenchQualityArgs) -> Result<i32> {
    let mut cfg = a.common.config();
    if cfg.threads == 0 {
        // Trainings are single-threaded; two at once keep this 2-core machine busy.
        cfg.threads = 2;
    }
    let results = quality::run(&cfg).with_context(|| format!("feature cache {}", cfg.cache.display()))?;
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&a.out, render::markdown(&results)?).with_context(|| format!("writing {}", a.out.display()))?;
    let json = a.out.with_extension("json");
    std::fs::write(&json, serde_json::to_string_pretty(&results)?)
        .with_context(|| format!("writing {}", json.display()))?;
    eprintln!("wrote {} and {}", a.out.display(), json.display());
    Ok(0)
}
