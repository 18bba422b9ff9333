//! `gradwatch bench-alarms`: false alarms per hour and detection delays of the alert policies
//! (`docs/results/alarms.md`, `make bench-alarms`). The experiment lives in
//! [`crate::lab::alarms`]; this file parses the arguments and writes the report and its
//! numbers (JSON beside it).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::lab::alarms::{self, Config};

/// Arguments of `gradwatch bench-alarms`.
#[derive(Args, Debug)]
pub struct BenchAlarmsArgs {
    /// GTSRB folder holding `test_images.npy` and `test_labels.npy` (only needed to score).
    #[arg(long, default_value = "../shared/data/gtsrb")]
    pub data: PathBuf,
    /// The calibration file.
    #[arg(long, default_value = "models/gtsrb-resnet18.calib.toml")]
    pub calib: PathBuf,
    /// The feature cache folder (`frames.csv`, `frames.features.npy`, `frames.logits.npy`,
    /// `frames.quality.npy`); built when missing. Features do not depend on the calibration: a
    /// new calibration is benchmarked from the same cache in seconds.
    #[arg(long, default_value = "out/bench-alarms")]
    pub cache: PathBuf,
    /// Rows of `test_images.npy` the tracks are drawn from, `A..B` or `A..` (default: the half
    /// of GTSRB test that `models/*.calib.toml` were not fitted on).
    #[arg(long, default_value = crate::data::GTSRB_TEST_EVAL_ROWS)]
    pub rows: String,
    /// GTSRB training tracks the model never trained on (`class,track,first_row,rows`; made by
    /// `scripts/heldout-tracks.py`): replayed as real camera tracks.
    #[arg(long, default_value = "models/train/heldout-tracks.csv")]
    pub heldout: PathBuf,
    /// The report to write; its numbers go beside it as JSON (`alarms.md` -> `alarms.json`).
    #[arg(long, default_value = "docs/results/alarms.md")]
    pub out: PathBuf,
    /// Hours of clean frame time to replay per policy.
    #[arg(long, default_value_t = 2.0)]
    pub hours: f64,
    /// Hours of clean frame time per camera, stated rate and threshold rule of the table of
    /// stated against measured false-alarm rates.
    #[arg(long, default_value_t = 100.0)]
    pub rate_hours: f64,
    /// Images per graph run.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Only build the feature cache.
    #[arg(long)]
    pub score_only: bool,
}

/// Builds the cache if needed, then writes the report.
pub fn run(a: BenchAlarmsArgs) -> Result<i32> {
    let model = super::score::default_model_path(&a.calib).context("--calib must end in .calib.toml")?;
    let cfg = Config {
        data: a.data,
        calib: a.calib,
        model,
        cache: a.cache,
        rows: a.rows,
        heldout: a.heldout,
        hours: a.hours,
        rate_hours: a.rate_hours,
        batch: a.batch,
        threads: a.threads,
    };
    alarms::extract(&cfg)?;
    if a.score_only {
        return Ok(0);
    }
    let results = alarms::report_from_cache(&cfg)?;
    if let Some(dir) = a.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&a.out, alarms::markdown(&results)).with_context(|| format!("writing {}", a.out.display()))?;
    let json = a.out.with_extension("json");
    let text = serde_json::to_string_pretty(&results).context("encoding the results as JSON")?;
    std::fs::write(&json, text + "\n").with_context(|| format!("writing {}", json.display()))?;
    eprintln!("bench-alarms: wrote {} and {}", a.out.display(), json.display());
    Ok(0)
}
