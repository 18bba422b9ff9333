//! `gradwatch eval`: the paper's experiments on GTSRB, CIFAR-10 and synthetic corruptions.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use super::common::command_line;
use super::common::{runtime, show_progress};
use crate::detector::MlpConfig;
use crate::lab::eval::{protocol, report, results};

/// Arguments of `gradwatch eval`.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// The classifier (.onnx).
    #[arg(long)]
    pub model: PathBuf,
    /// Data folder with gtsrb/test_images.npy (and test_labels.npy) and cifar10/test_images.npy.
    #[arg(long)]
    pub data: PathBuf,
    /// Images per set (familiar, CIFAR-10, each corruption level).
    #[arg(long, default_value_t = 1000)]
    pub per_set: usize,
    /// Folder with CIFAR-10's test_images.npy (default DATA/cifar10).
    #[arg(long)]
    pub cifar: Option<PathBuf>,
    /// Output folder: results.md, results.csv, figures/.
    #[arg(long, default_value = "docs")]
    pub out: PathBuf,
    /// Feature cache folder (default OUT/cache); reruns reuse what it holds.
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Seed of subsamples, splits, corruptions and detector training.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Corruption types: all, legacy (the first ten), broad, paper, or a comma list of types
    /// and families.
    #[arg(long, default_value = "all")]
    pub corruptions: String,
    /// Levels of the corrupted sets: a range like 1-5 or a list like 3,4,5 (fewer levels, a
    /// quicker run; the per-type rows of Table 1 then pool these levels only).
    #[arg(long, default_value = "1-5")]
    pub levels: String,
    /// ODIN temperatures (comma list).
    #[arg(long, default_value = "1,10,100,1000", value_delimiter = ',')]
    pub odin_temperatures: Vec<f32>,
    /// ODIN temperatures for the corrupted sets (a subset of --odin-temperatures; each one
    /// costs a backward pass per image).
    #[arg(long, default_value = "1000", value_delimiter = ',')]
    pub odin_corruption_temperatures: Vec<f32>,
    /// ODIN perturbation sizes in image units (comma list).
    #[arg(long, default_value = "0,0.0005,0.001,0.002,0.005", value_delimiter = ',')]
    pub odin_epsilons: Vec<f32>,
    /// Hidden units of our detector.
    #[arg(long, default_value_t = 64)]
    pub hidden: usize,
    /// KNN baseline's k (0: 1 % of the familiar training split, 1 to 50).
    #[arg(long, default_value_t = 0)]
    pub knn_k: usize,
    /// ViM baseline's principal dimension (0: half the feature width, at most half the
    /// familiar training split).
    #[arg(long, default_value_t = 0)]
    pub vim_dim: usize,
    /// The risk detector's training target (default: the calibration's, union): novelty, harm
    /// (classifier wrong or OOD = 1) or union (novelty or wrong).
    #[arg(long)]
    pub risk_target: Option<crate::detector::Target>,
    /// Rows of `gtsrb/test_images.npy` the familiar images are drawn from, `A..B` or `A..`
    /// (default: all). `6315..` is the half the shipped calibrations were not fitted on.
    #[arg(long)]
    pub familiar_rows: Option<String>,
    /// Training seeds of the trust head for the spread of its misclassification AUROC.
    #[arg(long, default_value_t = 3)]
    pub trust_seeds: usize,
    /// Let the risk detector (the camera-health score) read the image-quality measures of each
    /// image, as `calibrate --quality` does (cached next to the features).
    #[arg(long)]
    pub quality: bool,
    /// Train the camera-health detectors that stand for the shipped one (pooled, leave one
    /// family out) on the generalising data too, as `calibrate --augment SETS` does (`mixed`,
    /// `lighting` or `mixed,lighting`; alone: `mixed`; issue #25).
    #[arg(long, value_name = "SETS", num_args = 0..=1, default_value = "none", default_missing_value = "mixed")]
    pub augment: crate::corrupt::mix::AugmentSets,
    /// Copies of each familiar image in `--augment mixed`'s set, each drawn anew (one copy is
    /// about 1 % of a detector's training rows here, against half in a calibration).
    #[arg(long, default_value_t = 10)]
    pub augment_copies: usize,
    /// Train the detectors that stand for the shipped one (pooled, leave one family out, one
    /// type held out) as `calibrate` does: one corrupted copy of each familiar image, type and
    /// level round-robin, instead of every type at every level of each.
    #[arg(long)]
    pub one_copy: bool,
    /// Run only the trust analysis (issue #24: the trust head against the failure-detection
    /// baselines, leave one family out) and write OUT/trust.md: for iterating on the trust head
    /// once the features are cached.
    #[arg(long)]
    pub trust_only: bool,
    /// Images per graph run.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs `gradwatch eval`.
pub fn run(a: EvalArgs) -> Result<i32> {
    let cfg = protocol::EvalConfig {
        data: a.data.clone(),
        cifar: a.cifar.clone(),
        per_set: a.per_set,
        familiar_rows: a.familiar_rows.clone(),
        seed: a.seed,
        out: a.out.clone(),
        cache: a.cache.clone(),
        batch: a.batch,
        corruptions: crate::corrupt::parse_corruptions(&a.corruptions).map_err(anyhow::Error::msg)?,
        levels: crate::corrupt::parse_levels(&a.levels).map_err(anyhow::Error::msg)?,
        odin_temperatures: a.odin_temperatures.clone(),
        odin_epsilons: a.odin_epsilons.clone(),
        odin_corruption_temperatures: a.odin_corruption_temperatures.clone(),
        mlp: MlpConfig { hidden: a.hidden, seed: a.seed, ..Default::default() },
        knn_k: a.knn_k,
        vim_dim: a.vim_dim,
        risk_target: a.risk_target,
        trust_seeds: a.trust_seeds,
        quality: a.quality,
        augment: a.augment,
        augment_copies: a.augment_copies,
        one_copy: a.one_copy,
        trust_only: a.trust_only,
        progress: show_progress(),
        command: command_line(),
    };
    let r = protocol::run(&a.model, &cfg, &runtime(a.threads)).with_context(|| "evaluation failed")?;
    if a.trust_only {
        let path = a.out.join("trust.md");
        std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
        std::fs::write(&path, report::trust_markdown(&r)).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
        return Ok(0);
    }
    report::write(&r, &a.out)?;
    eprintln!("wrote {}/results.md, results.csv and figures/", a.out.display());
    for p in ["cifar10"] {
        for (k, name) in results::METHODS {
            if let Some(m) = r.get(p, k) {
                eprintln!("  GTSRB vs CIFAR-10  {name:<18} AUROC {:.4}", m.auroc);
            }
        }
    }
    Ok(0)
}
