//! `gradwatch baseline`: learns a stream's clean baseline offline from a recording and saves it
//! where the daemon looks for it (`[alert] state_dir`, keyed by stream name and model sha256).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::common::{load_input, runtime, show_progress};
use crate::alert::cusum::block_statistic;
use crate::alert::Baseline;
use crate::config::Config;
use crate::runtime::{extract, GradSession};
use crate::source::SourceConfig;

/// Arguments of `gradwatch baseline`.
#[derive(Args, Debug)]
pub struct BaselineArgs {
    /// The daemon's config (model, calibration, `[alert]` block length and state directory).
    #[arg(long)]
    pub config: PathBuf,
    /// The stream the baseline is for.
    #[arg(long)]
    pub stream: String,
    /// A clean recording of that camera: a `.npy` stack or an image folder, in time order.
    pub recording: PathBuf,
    /// Frame rate of the recording (default: the stream's `fps` when it has one, else 10).
    #[arg(long)]
    pub fps: Option<f64>,
    /// Where to write the baseline (default: `[alert] state_dir`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Images per graph run.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// Runs `gradwatch baseline`.
pub fn run(a: BaselineArgs) -> Result<i32> {
    let config = match Config::load(&a.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(super::EXIT_CONFIG);
        }
    };
    let Some(stream) = config.stream.iter().find(|s| s.name == a.stream) else {
        eprintln!("error: {} has no stream named `{}`", a.config.display(), a.stream);
        return Ok(super::EXIT_CONFIG);
    };
    let stream_fps = match &stream.source {
        SourceConfig::Replay(r) => r.fps,
        SourceConfig::Directory(d) => d.fps,
        SourceConfig::V4l2(v) => f64::from(v.fps),
        SourceConfig::Pipe(p) => p.fps,
        // The camera sets the rate; pass --fps.
        SourceConfig::Rtsp(_) => 0.0,
    };
    let fps = a.fps.unwrap_or(if stream_fps > 0.0 { stream_fps } else { 10.0 });
    if !(fps.is_finite() && fps > 0.0) {
        bail!("--fps must be > 0");
    }
    let policy = config.alert.policy_for(&a.stream).clone();
    let Some(dir) = a.out.clone().or_else(|| config.alert.state_dir.clone()) else {
        eprintln!("error: no [alert] state_dir in {}; pass --out DIR", a.config.display());
        return Ok(super::EXIT_CONFIG);
    };
    let loaded = crate::service::load_model(&config)?;
    let input = load_input(&a.recording, None)?;
    let mut session = GradSession::new(&loaded.model.compiled, &runtime(a.threads))?;
    let fs = extract::extract(&mut session, &loaded.model.info, &input.images, a.batch, show_progress())?;
    let info = &loaded.model.info;
    let quality = loaded
        .calibration
        .uses_quality()
        .then(|| crate::quality::measure_batch(&input.images, info.width, info.height));
    let scores = loaded.calibration.score(&fs.features, &fs.logits, quality.as_ref());
    // Blocks of block_ms of frame time at the recording's frame rate.
    let per_block = ((policy.block_ms as f64 / 1000.0) * fps).round().max(1.0) as usize;
    let blocks: Vec<f32> = scores.chunks(per_block).map(|c| block_statistic(&mut c.to_vec())).collect();
    let b = Baseline::from_blocks(&a.stream, &loaded.model.info.sha256, policy.block_ms, &blocks)
        .context("the recording is too short: a baseline needs at least 20 blocks")?;
    let path = b.save(&dir).map_err(anyhow::Error::msg)?;
    if stream.baseline.as_ref().is_some_and(|c| c.image) {
        // One whole-frame sample a second of the recording's frame time, as the daemon takes them.
        let every = fps.round().max(1.0) as usize;
        let samples: Vec<_> = input.images.iter().step_by(every).map(crate::quality::measure).collect();
        let ib = crate::alert::ImageBaseline::from_samples(&a.stream, &samples)
            .context("the recording is too short for the image baseline: it needs at least 40 s (20 samples a half)")?;
        let p = ib.save(&dir).map_err(anyhow::Error::msg)?;
        println!(
            "{}: image norm from {} s, deviation baseline from {} s",
            p.display(),
            samples.len() / 2,
            ib.baseline.sample.len()
        );
    }
    println!(
        "{}: {} blocks of {} ms ({} frames each), median {:.3}, 95th percentile {:.3}, theta {:.2}",
        path.display(),
        b.sample.len(),
        policy.block_ms,
        per_block,
        b.median(),
        b.quantile(0.95),
        b.theta
    );
    Ok(0)
}
