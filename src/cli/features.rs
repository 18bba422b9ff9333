//! `gradwatch features`: gradient features (and logits, penultimate activations) of an image
//! set, written as `.npy`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use super::common::{load_input, runtime, show_progress};
use crate::grad::{CompileOptions, Loss};
use crate::model::LoadedModel;
use crate::runtime::extract as features;
use crate::runtime::GradSession;

/// Arguments of `gradwatch features`.
#[derive(Args, Debug)]
pub struct FeaturesArgs {
    /// The classifier (.onnx).
    #[arg(long)]
    pub model: PathBuf,
    /// Images: a .npy stack (N,H,W,3 uint8), an image folder or one image file.
    pub input: PathBuf,
    /// Output folder (features.npy, logits.npy, penultimate.npy, names.json).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Images per graph run.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// Also write the penultimate activations.
    #[arg(long)]
    pub penultimate: bool,
    /// Loss: bce-logits (the paper), bce-softmax.
    #[arg(long, default_value = "bce-logits")]
    pub loss: Loss,
    /// Use only the first N images.
    #[arg(long)]
    pub limit: Option<usize>,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs `gradwatch features`.
pub fn run(a: FeaturesArgs) -> Result<i32> {
    if a.loss == Loss::Odin {
        anyhow::bail!("--loss odin needs a temperature input; use bce-logits or bce-softmax here");
    }
    let model =
        LoadedModel::load(&a.model, &CompileOptions { loss: a.loss, penultimate: a.penultimate, ..Default::default() })
            .with_context(|| format!("loading {}", a.model.display()))?;
    let input = load_input(&a.input, a.limit)?;
    let mut session = GradSession::new(&model.compiled, &runtime(a.threads))?;
    let t = Instant::now();
    let fs = features::extract(&mut session, &model.info, &input.images, a.batch, show_progress())?;
    let secs = t.elapsed().as_secs_f64();
    fs.save(&a.output, "")?;
    let names = serde_json::json!({
        "model": model.info.name,
        "sha256": model.info.sha256,
        "loss": a.loss.name(),
        "features": model.compiled.features,
        "images": input.names,
    });
    let p = a.output.join("names.json");
    std::fs::write(&p, serde_json::to_string_pretty(&names)?).with_context(|| format!("writing {}", p.display()))?;
    eprintln!(
        "{} images -> {}: {} features each, {:.1} s ({:.1} images/s)",
        fs.len(),
        a.output.display(),
        fs.features.ncols(),
        secs,
        fs.len() as f64 / secs.max(1e-9)
    );
    Ok(0)
}
