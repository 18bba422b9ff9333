//! ONNX Runtime: finding and loading `libonnxruntime.so`, execution providers, sessions, and
//! running a compiled graph over an image set ([`extract`]).
//!
//! `ort` is used with `load-dynamic`: nothing native is linked, the library is opened at start
//! with `ort::init_from`, so a missing or too-old library is an error that says how to fix it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ndarray::{ArrayD, ArrayViewD, Ix2};
use ort::session::builder::GraphOptimizationLevel;
use ort::session::Session;
use ort::value::TensorRef;

use crate::grad;

pub mod extract;
mod fold;
pub mod timing;

pub use extract::{ExtractError, FeatureSet};
pub use fold::register_constant_folding;

/// The library file name.
pub const LIB_NAME: &str = "libonnxruntime.so";

/// Errors loading ONNX Runtime or running a model.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No library was found anywhere.
    #[error("ONNX Runtime ({LIB_NAME}) not found; looked in: {searched}. Fix: run `scripts/fetch-onnxruntime.sh` (or `make ort`), set ORT_DYLIB_PATH, or set [runtime] library in the config")]
    NotFound {
        /// Where it looked.
        searched: String,
    },
    /// The library could not be loaded or is too old.
    #[error("cannot load ONNX Runtime from {path}: {why}. Fix: use ONNX Runtime 1.17 or newer for this CPU architecture (scripts/fetch-onnxruntime.sh fetches 1.31.1)")]
    Load {
        /// The library.
        path: String,
        /// The loader's message.
        why: String,
    },
    /// ONNX Runtime reported an error.
    #[error("ONNX Runtime: {0}")]
    Ort(String),
    /// A required execution provider is not available.
    #[error("execution provider '{0}' is required but not available in this ONNX Runtime build; install a build with it (see docs/guide/jetson.md) or set require = false")]
    ProviderMissing(String),
    /// The model's inputs/outputs are not what was expected.
    #[error("model: {0}")]
    Model(String),
}

impl From<ort::Error> for RuntimeError {
    fn from(e: ort::Error) -> Self {
        RuntimeError::Ort(e.to_string())
    }
}

/// An execution provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// The default CPU provider.
    Cpu,
    /// NVIDIA CUDA.
    Cuda,
    /// NVIDIA TensorRT (through ONNX Runtime).
    Tensorrt,
}

impl Provider {
    /// Name as used in configs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Cpu => "cpu",
            Provider::Cuda => "cuda",
            Provider::Tensorrt => "tensorrt",
        }
    }
}

impl std::str::FromStr for Provider {
    type Err = String;
    /// Parses the config / command-line name (`cpu`, `cuda`, `tensorrt`).
    fn from_str(s: &str) -> Result<Self, String> {
        [Provider::Cpu, Provider::Cuda, Provider::Tensorrt]
            .into_iter()
            .find(|p| p.name() == s.trim())
            .ok_or_else(|| format!("'{}': expected cpu, cuda or tensorrt", s.trim()))
    }
}

/// TensorRT options.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TensorRtOptions {
    /// Engine cache directory (engines take minutes to build; cache them). Default: none.
    pub engine_cache_dir: Option<PathBuf>,
    /// Build FP16 engines. Default false: the gradient norms go down to ~1e-7, below FP16's range.
    pub fp16: bool,
    /// Builder workspace in MiB. Default 1024.
    pub workspace_mb: usize,
}

impl Default for TensorRtOptions {
    fn default() -> Self {
        Self { engine_cache_dir: None, fp16: false, workspace_mb: 1024 }
    }
}

impl RuntimeOptions {
    /// Makes the library and engine-cache paths absolute against `base` (the config's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [self.library.as_mut(), self.tensorrt.engine_cache_dir.as_mut()].into_iter().flatten() {
            crate::base::path::resolve_path(p, base);
        }
    }

    /// Whether TensorRT is among the providers: graphs are then compiled in the form its ONNX
    /// parser takes whole ([`crate::grad::CompileOptions::tensorrt`]).
    pub fn uses_tensorrt(&self) -> bool {
        self.providers.contains(&Provider::Tensorrt)
    }
}

/// How sessions are created.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeOptions {
    /// Explicit path of `libonnxruntime.so` (first in the lookup order). Default: none.
    pub library: Option<PathBuf>,
    /// Providers in order of preference. Default `["cpu"]`.
    pub providers: Vec<Provider>,
    /// Fail when the first preferred provider is unavailable. Default false (fall back with a warning).
    pub require: bool,
    /// Intra-op threads (0 = ONNX Runtime's default: one per core). Default 0.
    pub threads: usize,
    /// CUDA device.
    pub cuda_device: i32,
    /// TensorRT options.
    pub tensorrt: TensorRtOptions,
    /// ONNX Runtime's CPU memory arena. On (ONNX Runtime's default), freed intermediates stay
    /// in the arena and it grows to the largest batch seen; off, they go back to the system
    /// allocator after each run (`docs/results/daemon-bench.md` measures both). Default true.
    pub cpu_arena: bool,
    /// ONNX Runtime's memory pattern planning (pre-allocates each run's intermediates as one
    /// block per input shape; with the latency-aware batching the batch size, hence the shape,
    /// varies, and each block stays in the arena). Default false: about 40 MiB less RSS at the
    /// same throughput (`docs/results/memory.md`); true restores ONNX Runtime's default.
    pub memory_pattern: bool,
    /// Let idle intra-op threads spin-wait for the next parallel section (ONNX Runtime's
    /// default). Spinning buys a little latency per operator at the price of CPU time burnt
    /// between frames: a daemon scoring a few frames a second spent most of its CPU spinning
    /// (`docs/results/rtsp-bench.md`). Default false: threads sleep; true restores ONNX Runtime's default.
    pub spin: bool,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            library: None,
            providers: vec![Provider::Cpu],
            require: false,
            threads: 0,
            cuda_device: 0,
            tensorrt: TensorRtOptions::default(),
            cpu_arena: true,
            memory_pattern: false,
            spin: false,
        }
    }
}

/// Returns the heap's free memory at its top and in free chunks to the system (glibc's
/// `malloc_trim`): after large model buffers are dropped, glibc keeps much of them mapped
/// otherwise. Nothing elsewhere.
pub fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator; no pointer is involved.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Candidate library paths in lookup order: explicit path, `ORT_DYLIB_PATH`, next to the
/// executable, the repository's fetched folder (`.ort/host`).
pub fn library_candidates(explicit: Option<&Path>) -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(p) = explicit {
        c.push(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|v| !v.is_empty()) {
        c.push(PathBuf::from(p));
    }
    if let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(Path::to_path_buf)) {
        c.push(dir.join(LIB_NAME));
    }
    c.push(Path::new(env!("CARGO_MANIFEST_DIR")).join(".ort/host").join(LIB_NAME));
    c
}

/// Finds the library: the first candidate that exists.
pub fn find_library(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    let c = library_candidates(explicit);
    // An explicit path that does not exist is an error of its own, not a reason to look elsewhere.
    if let Some(p) = explicit {
        if !p.exists() {
            return Err(RuntimeError::NotFound { searched: format!("{} (configured; does not exist)", p.display()) });
        }
    }
    c.iter().find(|p| p.exists()).cloned().ok_or_else(|| RuntimeError::NotFound {
        searched: c.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

static INIT: OnceLock<Result<(PathBuf, ort::environment::Environment), RuntimeError>> = OnceLock::new();

/// Loads ONNX Runtime once per process; later calls return the first result (the library
/// cannot be swapped inside a running process).
pub fn init(explicit: Option<&Path>) -> Result<PathBuf, RuntimeError> {
    environment(explicit).map(|(p, _)| p)
}

fn environment(explicit: Option<&Path>) -> Result<(PathBuf, ort::environment::Environment), RuntimeError> {
    let r = INIT.get_or_init(|| {
        let path = find_library(explicit)?;
        let load_err = |why: String| RuntimeError::Load { path: path.display().to_string(), why };
        let env = ort::init_from(&path)
            .map_err(|e| load_err(e.to_string()))?
            .with_name("gradwatch")
            .build()
            .map_err(|e| load_err(e.to_string()))?;
        log::info!("ONNX Runtime loaded from {}", path.display());
        Ok((path, env))
    });
    match r {
        Ok((p, e)) => Ok((p.clone(), e.clone())),
        Err(e) => Err(match e {
            RuntimeError::NotFound { searched } => RuntimeError::NotFound { searched: searched.clone() },
            RuntimeError::Load { path, why } => RuntimeError::Load { path: path.clone(), why: why.clone() },
            other => RuntimeError::Ort(other.to_string()),
        }),
    }
}

fn build_session(bytes: &[u8], opts: &RuntimeOptions) -> Result<(Session, Provider), RuntimeError> {
    use ort::ep::{self, ExecutionProvider};
    let (_, env) = environment(opts.library.as_deref())?;
    let mut b = Session::builder(&env)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| RuntimeError::Ort(e.to_string()))?;
    if opts.threads > 0 {
        b = b.with_intra_threads(opts.threads).map_err(|e| RuntimeError::Ort(e.to_string()))?;
    }
    b = b.with_memory_pattern(opts.memory_pattern).map_err(|e| RuntimeError::Ort(e.to_string()))?;
    b = b.with_intra_op_spinning(opts.spin).map_err(|e| RuntimeError::Ort(e.to_string()))?;
    let mut chosen = Provider::Cpu;
    let mut eps = Vec::new();
    for (i, p) in opts.providers.iter().enumerate() {
        let available = match p {
            Provider::Cpu => true,
            Provider::Cuda => ep::CUDA::is_available().unwrap_or(false),
            Provider::Tensorrt => ep::TensorRT::is_available().unwrap_or(false),
        };
        if !available {
            if i == 0 && opts.require {
                return Err(RuntimeError::ProviderMissing(p.name().into()));
            }
            log::warn!("execution provider '{}' is not available in this ONNX Runtime build; falling back", p.name());
            continue;
        }
        if eps.is_empty() {
            chosen = *p;
        }
        match p {
            Provider::Cpu => eps.push(ep::CPU::default().with_arena_allocator(opts.cpu_arena).build()),
            Provider::Cuda => eps.push(ep::CUDA::default().with_device_id(opts.cuda_device).build().error_on_failure()),
            Provider::Tensorrt => {
                let t = &opts.tensorrt;
                let mut trt = ep::TensorRT::default()
                    .with_device_id(opts.cuda_device)
                    .with_fp16(t.fp16)
                    .with_max_workspace_size(t.workspace_mb * 1024 * 1024);
                if let Some(dir) = &t.engine_cache_dir {
                    trt = trt.with_engine_cache(true).with_engine_cache_path(dir.display()).with_timing_cache(true);
                }
                eps.push(trt.build().error_on_failure());
            }
        }
    }
    if !eps.is_empty() {
        b = b.with_execution_providers(eps).map_err(|e| RuntimeError::Ort(e.to_string()))?;
    }
    let s = b.commit_from_memory(bytes).map_err(|e| RuntimeError::Ort(e.to_string()))?;
    Ok((s, chosen))
}

/// A session over any ONNX model, with named float inputs and outputs.
pub struct ModelSession {
    session: Session,
    provider: Provider,
}

impl ModelSession {
    /// Creates a session from serialized model bytes.
    pub fn new(bytes: &[u8], opts: &RuntimeOptions) -> Result<Self, RuntimeError> {
        let (session, provider) = build_session(bytes, opts)?;
        Ok(Self { session, provider })
    }

    /// The execution provider that was registered first (the one that runs what it supports).
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Names of the model's outputs.
    pub fn output_names(&self) -> Vec<String> {
        self.session.outputs().iter().map(|o| o.name().to_string()).collect()
    }

    /// Runs with float inputs; returns every float output by name.
    pub fn run(
        &mut self,
        inputs: &[(&str, ArrayViewD<'_, f32>)],
    ) -> Result<HashMap<String, ArrayD<f32>>, RuntimeError> {
        let mut feed = Vec::with_capacity(inputs.len());
        for (name, arr) in inputs {
            let t = TensorRef::from_array_view(arr.view())?;
            feed.push((std::borrow::Cow::<str>::Owned(name.to_string()), ort::session::SessionInputValue::from(t)));
        }
        let outputs = self.session.run(feed)?;
        let mut out = HashMap::new();
        for (name, v) in outputs.iter() {
            let a = v.try_extract_array::<f32>()?;
            out.insert(name.to_string(), a.to_owned());
        }
        Ok(out)
    }
}

/// What the gradient graph gives for a batch.
#[derive(Clone, Debug)]
pub struct GradOutputs {
    /// `[N, C]`.
    pub logits: ndarray::Array2<f32>,
    /// `[N, P]` squared gradient norms.
    pub features: ndarray::Array2<f32>,
    /// `[N, D]`, when compiled with it.
    pub penultimate: Option<ndarray::Array2<f32>>,
    /// Shaped like the input, when compiled with it.
    pub input_grad: Option<ArrayD<f32>>,
}

/// A session over a compiled gradient graph.
pub struct GradSession {
    inner: ModelSession,
    input_name: String,
    temperature: Option<f32>,
}

impl GradSession {
    /// Creates a session from a compiled model.
    pub fn new(compiled: &grad::Compiled, opts: &RuntimeOptions) -> Result<Self, RuntimeError> {
        Self::from_bytes(&crate::onnx::encode(&compiled.model), &compiled.input_name, opts)
    }

    /// Creates a session from a compiled model's serialized bytes (`input_name`: the model's
    /// image input), so that a caller can drop the [`grad::Compiled::model`] first.
    pub fn from_bytes(bytes: &[u8], input_name: &str, opts: &RuntimeOptions) -> Result<Self, RuntimeError> {
        let inner = ModelSession::new(bytes, opts)?;
        Ok(Self { inner, input_name: input_name.to_string(), temperature: None })
    }

    /// The temperature fed to an ODIN-compiled graph (default 1).
    pub fn set_temperature(&mut self, t: f32) {
        self.temperature = Some(t);
    }

    /// The provider in use.
    pub fn provider(&self) -> Provider {
        self.inner.provider()
    }

    /// Runs a preprocessed batch `[N, ...input shape]`.
    pub fn run(&mut self, batch: ArrayViewD<'_, f32>) -> Result<GradOutputs, RuntimeError> {
        let temp = ndarray::arr1(&[self.temperature.unwrap_or(1.0)]).into_dyn();
        let wants_t = self.inner.session.inputs().iter().any(|i| i.name() == grad::outputs::TEMPERATURE);
        let name = self.input_name.clone();
        let mut feed = vec![(name.as_str(), batch)];
        if wants_t {
            feed.push((grad::outputs::TEMPERATURE, temp.view()));
        }
        let mut out = self.inner.run(&feed)?;
        let two = |a: ArrayD<f32>, what: &str| {
            a.into_dimensionality::<Ix2>().map_err(|_| RuntimeError::Model(format!("output '{what}' is not 2-D")))
        };
        let logits =
            out.remove(grad::outputs::LOGITS).ok_or_else(|| RuntimeError::Model("no 'logits' output".into()))?;
        let features = out
            .remove(grad::outputs::FEATURES)
            .ok_or_else(|| RuntimeError::Model("no 'grad_features' output".into()))?;
        Ok(GradOutputs {
            logits: two(logits, grad::outputs::LOGITS)?,
            features: two(features, grad::outputs::FEATURES)?,
            penultimate: out
                .remove(grad::outputs::PENULTIMATE)
                .map(|a| two(a, grad::outputs::PENULTIMATE))
                .transpose()?,
            input_grad: out.remove(grad::outputs::INPUT_GRAD),
        })
    }
}
