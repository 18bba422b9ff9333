//! `gradwatch bench`: time per frame of the plain forward pass and of the gradient graph; with
//! `--zoo DIR`, the architecture zoo's report ([`crate::lab::zoo`], `docs/results/compiler-zoo.md`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::grad::{self, CompileOptions, ParamSelection, Preset};
use crate::lab::zoo;
use crate::onnx;
use crate::runtime::timing::{alternate, pattern_batch, Rounds};
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
    /// Feature presets to time (comma list of full, fast, head), each against the forward pass.
    #[arg(long, value_delimiter = ',', default_value = "full,fast,head")]
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
    /// float64 goldens and, per `--preset`, the gradient/forward time ratio at the first `--batch`.
    #[arg(long, value_name = "DIR")]
    pub zoo: Option<PathBuf>,
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
        let batch = a.batch.first().copied().unwrap_or(16);
        let t = zoo::Timing { batch, seconds: a.seconds, rounds: a.rounds, presets: a.preset.clone() };
        return zoo::report(dir, &t, &opts, &mut std::io::stdout().lock());
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
    let plan = Rounds { rounds: a.rounds, seconds: a.seconds, min_runs: 3, one_round_over_ms: f64::INFINITY };
    for &b in &a.batch {
        let x = pattern_batch(b, &input_shape);
        let mut sessions: Vec<&mut ModelSession> = graphs.iter_mut().map(|g| &mut g.session).collect();
        let timed = alternate(&mut fwd, &mut sessions, &input_name, &x, plan)?;
        let f = timed.forward_ms();
        for (i, g) in graphs.iter().enumerate() {
            let (ms, ratio) = (timed.graph_ms(i), timed.ratio(i));
            println!("| {b} | {} | {} | {f:.2} | {ms:.2} | {ratio:.2}x |", g.label, g.features);
        }
    }
    Ok(0)
}
