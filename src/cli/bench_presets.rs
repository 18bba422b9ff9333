//! `gradwatch bench-presets`: the feature-preset ablation (`docs/results/presets.md`, `make
//! bench-presets`). The experiment lives in [`crate::lab::presets`]; this file parses the
//! arguments and writes the page.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::lab::presets::{self, render, Config};

/// Arguments shared by `gradwatch bench-presets` and `gradwatch bench-detectors`.
#[derive(Args, Debug)]
pub struct AblationArgs {
    /// Folder holding `gtsrb/test_images.npy`, `gtsrb/test_labels.npy` and
    /// `cifar10/test_images.npy` (only read while the cache is built, and for the labels).
    #[arg(long, default_value = "../shared/data")]
    pub data: PathBuf,
    /// The feature cache folder (`<set>.features.npy`, `<set>.logits.npy`, `plan.json`);
    /// built when missing, shared by both ablations.
    #[arg(long, default_value = "out/presets-cache")]
    pub cache: PathBuf,
    /// Images per set (familiar, CIFAR-10, each corruption type and level).
    #[arg(long, default_value_t = 300)]
    pub per_set: usize,
    /// Split seeds (`0..SEEDS`); every number is the mean over them.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Images per graph run.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Threads (ONNX Runtime intra-op threads while extracting, 0 = one per core; trainings
    /// at once for bench-detectors, 0 = 2).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

impl AblationArgs {
    /// The experiment's configuration.
    pub fn config(&self) -> Config {
        Config {
            data: self.data.clone(),
            cache: self.cache.clone(),
            per_set: self.per_set,
            seeds: self.seeds,
            batch: self.batch,
            threads: self.threads,
        }
    }
}

/// Arguments of `gradwatch bench-presets`.
#[derive(Args, Debug)]
pub struct BenchPresetsArgs {
    #[command(flatten)]
    pub common: AblationArgs,
    /// The page to write; its table goes beside it as CSV (`presets.csv`).
    #[arg(long, default_value = "docs/results/presets.md")]
    pub out: PathBuf,
    /// Only build the feature cache.
    #[arg(long)]
    pub extract_only: bool,
}

/// Writes `md` to `out` and `csv` beside it (same stem, `.csv`).
pub fn write_page(out: &Path, md: &str, csv: &str) -> Result<()> {
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(out, md).with_context(|| format!("writing {}", out.display()))?;
    let csv_path = out.with_extension("csv");
    std::fs::write(&csv_path, csv).with_context(|| format!("writing {}", csv_path.display()))?;
    eprintln!("wrote {} and {}", out.display(), csv_path.display());
    Ok(())
}

/// Builds the cache if needed, then writes the page.
pub fn run(a: BenchPresetsArgs) -> Result<i32> {
    let cfg = a.common.config();
    let cache = presets::load_or_extract(&cfg).with_context(|| format!("feature cache {}", cfg.cache.display()))?;
    if a.extract_only {
        return Ok(0);
    }
    let results = presets::compute(&cache, cfg.seeds, &crate::detector::MlpConfig::default())?;
    write_page(&a.out, &render::markdown(&results)?, &render::csv(&results))?;
    Ok(0)
}
