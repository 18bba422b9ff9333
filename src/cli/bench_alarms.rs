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
    #[arg(long, default_value = crate::lab::alarms::DEFAULT_CALIB)]
    pub calib: PathBuf,
    /// The feature cache folder (`frames.csv`, `frames.features.npy`, `frames.logits.npy`,
    /// `frames.quality.npy`); built when missing. Features depend on the calibration's preset
    /// only: a new calibration of the same preset is benchmarked from the same cache in
    /// seconds, one of another preset needs a folder of its own.
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
    /// Judge the targets on this policy instead of the shipped one: a TOML file with an
    /// `[alert]` table (a `gradwatch.toml` will do; its per-stream overrides are ignored). It
    /// learns its baseline as the shipped policy does.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
}

/// The `[alert]` policy of the file `path` (without per-stream overrides), checked.
fn read_policy(path: &std::path::Path) -> Result<crate::alert::AlertPolicy> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading --policy {}", path.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| format!("--policy {}: not TOML", path.display()))?;
    let alert = doc.get("alert").cloned().with_context(|| format!("--policy {}: no [alert] table", path.display()))?;
    let cfg: crate::alert::AlertConfig =
        alert.try_into().with_context(|| format!("--policy {}: a bad [alert] table", path.display()))?;
    cfg.default.validate().with_context(|| format!("--policy {}", path.display()))?;
    Ok(cfg.default)
}

/// Builds the cache if needed, then writes the report.
pub fn run(a: BenchAlarmsArgs) -> Result<i32> {
    let model = super::score::default_model_path(&a.calib).context("--calib must end in .calib.toml")?;
    let policy = match &a.policy {
        Some(p) => Some((p.display().to_string(), read_policy(p)?)),
        None => None,
    };
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
        policy,
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

#[cfg(test)]
mod tests {
    use super::read_policy;
    use crate::alert::{PolicyKind, ThresholdRule};

    #[test]
    fn a_policy_file_gives_its_alert_table_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mine.toml");
        let text = "[model]\npath = \"x.onnx\"\n\n[alert]\npolicy = \"cusum\"\nfalse_alarms_per_day = 24\n\
                    threshold = \"bound\"\n\n[alert.stream.cam]\nkappa = 0.3\n";
        std::fs::write(&path, text).unwrap();
        let p = read_policy(&path).unwrap();
        assert_eq!((p.policy, p.false_alarms_per_day, p.threshold), (PolicyKind::Cusum, 24.0, ThresholdRule::Bound));
        assert_eq!(p.kappa, crate::alert::AlertPolicy::default().kappa, "per-stream overrides are ignored");
        for (text, says) in [
            ("[model]\npath = \"x\"\n", "no [alert] table"),
            ("[alert]\npolicy = \"cusum\"\nfalse_alarms_per_day = -1\n", "false_alarms_per_day"),
            ("[alert]\nplicy = \"cusum\"\n", "bad [alert] table"),
            ("[alert\n", "not TOML"),
        ] {
            std::fs::write(&path, text).unwrap();
            let e = format!("{:#}", read_policy(&path).unwrap_err());
            assert!(e.contains(says) && e.contains("mine.toml"), "{text:?}: {e}");
        }
    }
}
