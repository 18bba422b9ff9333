//! `gradwatch bench`: time per frame of the plain forward pass and of the gradient graph.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use ndarray::{ArrayD, IxDyn};

use crate::grad::{self, CompileOptions};
use crate::onnx;
use crate::runtime::{ModelSession, Provider, RuntimeOptions, TensorRtOptions};

/// Arguments of `gradwatch bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// The classifier (.onnx).
    #[arg(long, default_value = crate::model::DEFAULT_MODEL)]
    pub model: PathBuf,
    /// Batch sizes to time.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    pub batch: Vec<usize>,
    /// Seconds of timed runs per measurement (after a warm-up).
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    /// Alternating rounds (forward, gradient, forward, ...); the median round is reported.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Path of libonnxruntime.so.
    #[arg(long)]
    pub ort_library: Option<PathBuf>,
    /// Execution providers in order of preference (comma list of cpu, cuda, tensorrt), as
    /// `[runtime] providers` in the config; unavailable ones fall back with a warning.
    #[arg(long, value_delimiter = ',', default_value = "cpu", value_parser = str::parse::<Provider>)]
    pub providers: Vec<Provider>,
    /// TensorRT: engine cache directory (the first run builds the engine: bench after it).
    #[arg(long)]
    pub trt_cache: Option<PathBuf>,
    /// TensorRT: build FP16 engines.
    #[arg(long)]
    pub trt_fp16: bool,
}

fn time_per_frame(s: &mut ModelSession, input: &str, x: &ArrayD<f32>, seconds: f64) -> Result<f64> {
    s.run(&[(input, x.view())])?;
    let start = Instant::now();
    let mut runs = 0usize;
    while start.elapsed() < Duration::from_secs_f64(seconds) || runs < 3 {
        s.run(&[(input, x.view())])?;
        runs += 1;
    }
    Ok(start.elapsed().as_secs_f64() * 1000.0 / (runs * x.shape()[0]) as f64)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Runs `gradwatch bench` and prints a markdown table.
pub fn run(a: BenchArgs) -> Result<i32> {
    let model = onnx::load(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let compiled = grad::compile(&model, &CompileOptions::default())?;
    let opts = RuntimeOptions {
        threads: a.threads,
        library: a.ort_library.clone(),
        providers: a.providers.clone(),
        tensorrt: TensorRtOptions { engine_cache_dir: a.trt_cache.clone(), fp16: a.trt_fp16, ..Default::default() },
        ..Default::default()
    };
    let mut fwd = ModelSession::new(&onnx::encode(&model), &opts)?;
    let mut grd = ModelSession::new(&onnx::encode(&compiled.model), &opts)?;
    println!(
        "model {} ({} gradient features), provider {}",
        a.model.display(),
        compiled.features.len(),
        fwd.provider().name()
    );
    println!();
    println!("| batch | forward ms/frame | gradient graph ms/frame | ratio |");
    println!("|---|---|---|---|");
    for &b in &a.batch {
        let mut shape = vec![b];
        shape.extend(&compiled.input_shape);
        let n: usize = shape.iter().product();
        let x =
            ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect())?;
        let (mut tf, mut tg) = (Vec::new(), Vec::new());
        for _ in 0..a.rounds.max(1) {
            tf.push(time_per_frame(&mut fwd, &compiled.input_name, &x, a.seconds)?);
            tg.push(time_per_frame(&mut grd, &compiled.input_name, &x, a.seconds)?);
        }
        let (f, g) = (median(tf), median(tg));
        println!("| {b} | {f:.2} | {g:.2} | {:.2}x |", g / f);
    }
    Ok(0)
}
