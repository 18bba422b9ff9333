//! `gradwatch bench`: time per frame of the plain forward pass and of the gradient graph; with
//! `--zoo DIR`, the architecture zoo's report (`docs/results/compiler-zoo.md`): per fixture of
//! `scripts/make-zoo.py`, the features' errors against the float64 PyTorch goldens and the
//! gradient graph's cost relative to the forward pass.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use ndarray::{ArrayD, IxDyn};

use crate::grad::{self, CompileOptions, ParamSelection, Preset};
use crate::lab::timing::{median, time_per_frame};
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
    /// Feature presets to time (comma list of full, fast), each against the forward pass.
    #[arg(long, value_delimiter = ',', default_value = "full,fast")]
    pub preset: Vec<Preset>,
    /// More graphs to time, for ablations: `LABEL=SELECTION` with a `--params` selection,
    /// optionally followed by `@N` (keep the last N stages) and/or `+act` (activation
    /// statistics), e.g. `layer4=layer4.*,linear.*+act` or `cut1=default@1`. Repeatable.
    #[arg(long = "graph", value_name = "LABEL=SELECTION")]
    pub graphs: Vec<String>,
    /// ONNX Runtime's CPU memory arena on (true, ONNX Runtime's default) or off.
    #[arg(long)]
    pub cpu_arena: Option<bool>,
    /// Instead of one model, every fixture of the architecture zoo under DIR
    /// (`tests/fixtures/zoo`): a markdown table of features, errors against the PyTorch
    /// float64 goldens and the gradient/forward time ratio at the first `--batch`.
    #[arg(long, value_name = "DIR")]
    pub zoo: Option<PathBuf>,
}

/// The export forms of the zoo (`scripts/make-zoo.py`): every architecture has the first two;
/// a subset also has the fixed-batch (`static`), opset-11 and plain `torch.onnx.export(model,
/// (x,), path)` (`default_static`: dynamo, batch fixed at 1) exports.
pub const ZOO_FORMS: [&str; 5] = ["bn", "default", "static", "opset11", "default_static"];

/// One zoo fixture compiled and run against its float64 goldens.
#[derive(Clone, Debug)]
pub struct ZooCheck {
    /// The compiled graph.
    pub compiled: grad::Compiled,
    /// Golden feature names (ONNX initializers) that the compiler did not produce.
    pub missing: Vec<String>,
    /// Compiled features with no golden.
    pub extra: Vec<String>,
    /// Relative error of every (sample, feature) pair, `|got - want| / |want|`.
    pub rel_errors: Vec<f64>,
    /// The worst relative error, its feature and sample.
    pub worst: (f64, String, usize),
    /// Largest logit error relative to `max(1, max |logit|)`.
    pub logit_err: f64,
}

impl ZooCheck {
    /// The median relative feature error.
    pub fn median(&self) -> f64 {
        if self.rel_errors.is_empty() {
            return f64::NAN;
        }
        median(self.rel_errors.clone())
    }
}

/// The architectures in a zoo directory (sub-directories with a `bn.onnx` or `default.onnx`).
pub fn zoo_archs(dir: &std::path::Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| ZOO_FORMS.iter().any(|f| e.path().join(format!("{f}.onnx")).exists()))
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    v.sort();
    Ok(v)
}

/// The zoo's shared input batch (NCHW), transposed to NHWC for a model whose per-sample input
/// is `[H, W, 3]`.
fn zoo_input(dir: &std::path::Path, input_shape: &[usize]) -> Result<ArrayD<f32>> {
    let x: ArrayD<f32> = ndarray_npy::read_npy(dir.join("input.npy")).context("reading the zoo's input.npy")?;
    let nhwc = input_shape.len() == 3 && input_shape[2] == 3 && input_shape[0] != 3;
    Ok(if nhwc { x.permuted_axes(IxDyn(&[0, 2, 3, 1])).as_standard_layout().to_owned() } else { x })
}

/// Compiles the fixture `dir/arch/form.onnx`, runs it through ONNX Runtime on the zoo's input
/// and compares features (by name) and logits with the goldens of `scripts/make-zoo.py`.
pub fn check_zoo_fixture(dir: &std::path::Path, arch: &str, form: &str, opts: &RuntimeOptions) -> Result<ZooCheck> {
    let base = dir.join(arch);
    let model = onnx::load(&base.join(format!("{form}.onnx")))?;
    let o = CompileOptions { tensorrt: opts.uses_tensorrt(), ..Default::default() };
    let compiled = grad::compile(&model, &o).with_context(|| format!("compiling {arch}/{form}"))?;
    let names: Vec<String> = serde_json::from_str(&std::fs::read_to_string(base.join(format!("{form}.names.json")))?)?;
    let want: ndarray::Array2<f64> = ndarray_npy::read_npy(base.join(format!("{form}.features.npy")))?;
    let want_logits: ndarray::Array2<f64> = ndarray_npy::read_npy(base.join(format!("{form}.logits.npy")))?;
    let x = zoo_input(dir, &compiled.input_shape)?;
    let got = crate::runtime::GradSession::new(&compiled, opts)?.run(x.view())?;
    let missing: Vec<String> = names.iter().filter(|n| !compiled.features.contains(n)).cloned().collect();
    let extra: Vec<String> = compiled.features.iter().filter(|n| !names.contains(n)).cloned().collect();
    let mut rel_errors = Vec::new();
    let mut worst = (0.0, String::new(), 0);
    for (j, name) in compiled.features.iter().enumerate() {
        let Some(i) = names.iter().position(|n| n == name) else { continue };
        for k in 0..want.nrows() {
            let (g, w) = (got.features[[k, j]] as f64, want[[k, i]]);
            let rel = (g - w).abs() / w.abs().max(1e-30);
            if rel > worst.0 || rel.is_nan() {
                worst = (rel, name.clone(), k);
            }
            rel_errors.push(rel);
        }
    }
    let scale = want_logits.iter().fold(1.0f64, |a, v| a.max(v.abs()));
    let logit_err =
        got.logits.iter().zip(want_logits.iter()).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max) / scale;
    Ok(ZooCheck { compiled, missing, extra, rel_errors, worst, logit_err })
}

/// `--zoo`: the report table, one row per architecture and export form.
fn run_zoo(a: &BenchArgs, dir: &std::path::Path, opts: &RuntimeOptions) -> Result<i32> {
    let batch = a.batch.first().copied().unwrap_or(16);
    println!("| architecture | export | features | max rel. error | median rel. error | logits rel. error | grad/forward at batch {batch} |");
    println!("|---|---|---|---|---|---|---|");
    let mut failed = 0;
    for arch in zoo_archs(dir)? {
        for form in ZOO_FORMS {
            let path = dir.join(&arch).join(format!("{form}.onnx"));
            if !path.exists() {
                continue;
            }
            let check = match check_zoo_fixture(dir, &arch, form, opts) {
                Ok(c) => c,
                Err(e) => {
                    failed += 1;
                    println!("| {arch} | {form} | refused: {} | | | | |", format!("{e:#}").replace('|', "/"));
                    continue;
                }
            };
            let model = onnx::load(&path)?;
            let mut fwd = ModelSession::new(&onnx::encode(&batch_dynamic(&model)?), opts)?;
            let mut g = ModelSession::new(&onnx::encode(&check.compiled.model), opts)?;
            let mut shape = vec![batch];
            shape.extend(&check.compiled.input_shape);
            let n: usize = shape.iter().product();
            let x = ArrayD::from_shape_vec(
                IxDyn(&shape),
                (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect(),
            )?;
            let name = check.compiled.input_name.clone();
            let mut ratios = Vec::new();
            for _ in 0..a.rounds.max(1) {
                let f = time_per_frame(&mut fwd, &name, &x, a.seconds)?;
                let t = time_per_frame(&mut g, &name, &x, a.seconds)?;
                ratios.push(t / f);
            }
            let note = if check.missing.is_empty() && check.extra.is_empty() {
                String::new()
            } else {
                format!(" (missing {:?}, extra {:?})", check.missing, check.extra)
            };
            println!(
                "| {arch} | {form} | {}{note} | {:.1e} | {:.1e} | {:.1e} | {:.2}x |",
                check.compiled.features.len(),
                check.worst.0,
                check.median(),
                check.logit_err,
                median(ratios)
            );
        }
    }
    Ok(if failed > 0 { 1 } else { 0 })
}

/// One graph to time.
struct Candidate {
    label: String,
    features: usize,
    session: ModelSession,
}

/// Parses `LABEL=SELECTION[@N][+act]`.
fn parse_graph(spec: &str) -> Result<(String, CompileOptions)> {
    let (label, rest) = spec.split_once('=').with_context(|| format!("--graph '{spec}': expected LABEL=SELECTION"))?;
    let (rest, act) = match rest.strip_suffix("+act") {
        Some(r) => (r, true),
        None => (rest, false),
    };
    let (sel, stages) = match rest.rsplit_once('@') {
        Some((sel, n)) => (sel, Some(n.parse::<usize>().with_context(|| format!("--graph '{spec}': '@{n}'"))?)),
        None => (rest, None),
    };
    let params: ParamSelection = sel.parse().map_err(|e: String| anyhow::anyhow!("--graph '{spec}': {e}"))?;
    Ok((label.to_string(), CompileOptions { params, stages, act_stats: act, ..Default::default() }))
}

/// The model as the compiled graph sees it: a fixed batch made symbolic, so that the forward
/// pass runs at the benchmark's batch like the gradient graph.
fn batch_dynamic(model: &onnx::ModelProto) -> Result<onnx::ModelProto> {
    Ok(grad::forward_model(model)?)
}

/// Runs `gradwatch bench` and prints a markdown table: per batch size, the forward pass and
/// every graph (each preset, then each `--graph`), timed in alternating rounds.
pub fn run(a: BenchArgs) -> Result<i32> {
    let mut opts = RuntimeOptions {
        threads: a.threads,
        library: a.ort_library.clone(),
        providers: a.providers.clone(),
        tensorrt: TensorRtOptions { engine_cache_dir: a.trt_cache.clone(), fp16: a.trt_fp16, ..Default::default() },
        ..Default::default()
    };
    if let Some(on) = a.cpu_arena {
        opts.cpu_arena = on;
    }
    if let Some(dir) = &a.zoo {
        return run_zoo(&a, dir, &opts);
    }
    let model = onnx::load(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let mut specs: Vec<(String, CompileOptions)> =
        a.preset.iter().map(|&p| (p.name().to_string(), CompileOptions::preset(p))).collect();
    for g in &a.graphs {
        specs.push(parse_graph(g)?);
    }
    if specs.is_empty() {
        anyhow::bail!("nothing to time: give --preset and/or --graph");
    }
    let mut fwd = ModelSession::new(&onnx::encode(&batch_dynamic(&model)?), &opts)?;
    let mut graphs = Vec::new();
    let mut input = None;
    for (label, o) in specs {
        // The graph the daemon would run with these providers.
        let o = CompileOptions { tensorrt: opts.uses_tensorrt(), ..o };
        let compiled = grad::compile(&model, &o).with_context(|| format!("compiling '{label}'"))?;
        input.get_or_insert_with(|| (compiled.input_name.clone(), compiled.input_shape.clone()));
        let session = ModelSession::new(&onnx::encode(&compiled.model), &opts)?;
        graphs.push(Candidate { label, features: compiled.features.len(), session });
    }
    let Some((input_name, input_shape)) = input else { anyhow::bail!("nothing to time") };
    println!("model {}, provider {}, arena {}", a.model.display(), fwd.provider().name(), opts.cpu_arena);
    println!();
    println!("| batch | graph | features | forward ms/frame | graph ms/frame | ratio |");
    println!("|---|---|---|---|---|---|");
    for &b in &a.batch {
        let mut shape = vec![b];
        shape.extend(&input_shape);
        let n: usize = shape.iter().product();
        let x =
            ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|i| ((i * 7919 % 1000) as f32 / 500.0) - 1.0).collect())?;
        let mut tf = Vec::new();
        let mut tg: Vec<Vec<f64>> = vec![Vec::new(); graphs.len()];
        for _ in 0..a.rounds.max(1) {
            tf.push(time_per_frame(&mut fwd, &input_name, &x, a.seconds)?);
            for (g, t) in graphs.iter_mut().zip(tg.iter_mut()) {
                t.push(time_per_frame(&mut g.session, &input_name, &x, a.seconds)?);
            }
        }
        // Each graph's ratio is the median of its per-round ratios to that round's forward.
        let f = median(tf.clone());
        for (g, t) in graphs.iter().zip(tg) {
            let ratio = median(t.iter().zip(&tf).map(|(g, f)| g / f).collect());
            println!("| {b} | {} | {} | {f:.2} | {:.2} | {ratio:.2}x |", g.label, g.features, median(t));
        }
    }
    Ok(0)
}
