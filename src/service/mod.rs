//! The daemon around the pipeline: loading, systemd notifications, signals, supervision,
//! reload, shutdown and the end-of-replay summary.
//!
//! * `Type=notify`: READY=1 once the model is loaded and every enabled stream delivered its
//!   first frame (or `[pipeline] start_timeout_s` passed); WATCHDOG=1 at half of
//!   `WATCHDOG_USEC`, only while the inference and alert stages' heartbeats are fresh;
//!   STATUS= the frame rate per stream; EXTEND_TIMEOUT_USEC while a TensorRT engine builds.
//! * SIGHUP: reload the config and calibration. The new ones are loaded and validated first;
//!   on any error the running ones stay and the log says why. Live: calibration and
//!   threshold, alert policies (from the stream's next alert on), sinks (rebuilt when their
//!   config changed, else reopened for logrotate). Model, streams, pipeline, runtime and
//!   metrics changes need a restart (logged).
//! * SIGTERM / SIGINT: stop the sources, drain queued frames and events within
//!   `shutdown_deadline_s`, end open alerts with reason "shutdown", exit 0.
//! * When every stream has ended by itself the daemon drains, prints a summary to stderr and
//!   exits 0. A stage that panics or fails makes the daemon exit 1 (systemd restarts it).

pub mod notify;
pub mod report;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, tick, Receiver};

use crate::config::{Config, ConfigError};
use crate::detector::{CalibError, Calibration};
use crate::grad::{CompileOptions, Loss};
use crate::metrics::{HealthFn, Metrics, MetricsServer};
use crate::model::{LoadedModel, ModelError};
use crate::pipeline::{AlertControl, Env, GradClassifier, Heartbeat, Pipeline, PipelineError, Scoring, StreamSpec};
use crate::runtime::{GradSession, Provider, RuntimeError};
use crate::sink::SinkError;
use crate::source::SourceError;

/// Exit code: normal end.
pub const EXIT_OK: i32 = 0;
/// Exit code: a failure while running (stage crash, runtime error); systemd restarts.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code: bad configuration or bad arguments, for the daemon and every subcommand
/// (systemd treats it as a failure to start and does not restart).
pub const EXIT_CONFIG: i32 = 2;

/// Errors starting the daemon, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The config file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The calibration is unreadable or does not belong to the model.
    #[error("calibration: {0}")]
    Calibration(#[from] CalibError),
    /// The model is unreadable or cannot be compiled.
    #[error("model: {0}")]
    Model(#[from] ModelError),
    /// A stream cannot be built.
    #[error("stream `{stream}`: {source}")]
    Source {
        /// The stream.
        stream: String,
        /// The cause.
        source: SourceError,
    },
    /// A sink cannot be opened.
    #[error("sink: {0}")]
    Sink(#[from] SinkError),
    /// The metrics endpoint cannot be served.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// ONNX Runtime could not be loaded or the session not created.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The pipeline did not start.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    /// Signal handlers could not be installed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The calibration names a loss this build does not know.
    #[error("calibration: {0}")]
    Loss(String),
    /// A file or directory the config names cannot be used as `run` would use it (found by
    /// `check-config`); the message names the path and the fix.
    #[error("{0}")]
    Unusable(String),
}

impl ServiceError {
    /// The process exit code for this error: 2 for what the config can fix, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            ServiceError::Config(_)
            | ServiceError::Calibration(_)
            | ServiceError::Model(_)
            | ServiceError::Source { .. }
            | ServiceError::Sink(_)
            | ServiceError::Metrics(_)
            | ServiceError::Loss(_)
            | ServiceError::Unusable(_) => EXIT_CONFIG,
            ServiceError::Runtime(_) | ServiceError::Pipeline(_) | ServiceError::Signals(_) => EXIT_FAILURE,
        }
    }
}

/// A model with its matching calibration.
pub struct ModelAndCalibration {
    /// The model, compiled.
    pub model: LoadedModel,
    /// The calibration, checked against the model.
    pub calibration: Calibration,
}

/// Loads the calibration, compiles the model with the calibration's loss, and checks that
/// the calibration was fitted on this model file (sha256) and feature list.
pub fn load_model(config: &Config) -> Result<ModelAndCalibration, ServiceError> {
    // Compiling may fold constants through ONNX Runtime, which must then be the configured one.
    crate::runtime::init(config.runtime.library.as_deref())?;
    let calibration = Calibration::load(&config.model.calibration)?;
    let loss: Loss = calibration.model.loss.parse().map_err(ServiceError::Loss)?;
    calibration.check_preset(config.model.preset.name())?;
    let opts = CompileOptions {
        loss,
        input_size: calibration.model.input_size(),
        tensorrt: config.runtime.uses_tensorrt(),
        ..CompileOptions::preset(config.model.preset)
    };
    let mut model = LoadedModel::load(&config.model.path, &opts)?;
    calibration.check_compiled(&model.info.sha256, &model.compiled.features, &model.compiled.preset)?;
    model.use_preprocessing(calibration.model.preprocessing.as_ref())?;
    Ok(ModelAndCalibration { model, calibration })
}

/// `gradwatch check-config`: everything `run` checks or opens before its pipeline starts,
/// without starting inference or touching cameras: the config, the metrics address (bound
/// and released), every enabled stream built as `run` builds it (paths exist and are
/// readable, directories listed, replays loaded; FIFOs are not opened, which would disturb a
/// waiting writer), file sinks' directories writable, MQTT TLS files readable, the model and
/// calibration (matching, threshold finite), ONNX Runtime loadable and a required provider
/// available. Returns the one-line verdict.
pub fn check_config(path: &Path) -> Result<String, ServiceError> {
    let config = Config::load(path)?;
    if config.metrics.enabled {
        // Bind and release: SO_REUSEADDR (std's default on Unix) lets `run` bind it right after.
        std::net::TcpListener::bind(&config.metrics.bind).map_err(|e| crate::metrics::MetricsError::Bind {
            addr: config.metrics.bind.clone(),
            reason: e.to_string(),
        })?;
    }
    let clock: Arc<dyn crate::base::clock::Clock> = Arc::new(crate::base::clock::RealClock);
    for s in config.enabled_streams() {
        s.build(clock.clone()).map_err(|e| ServiceError::Source { stream: s.name.clone(), source: e })?;
    }
    for sink in &config.sink {
        check_sink_paths(sink)?;
    }
    let loaded = load_model(&config)?;
    drop(loaded);
    crate::runtime::init(config.runtime.library.as_deref())?;
    check_required_provider(&config.runtime)?;
    let streams = config.enabled_streams().count();
    Ok(format!("ok: {streams} streams, {} sinks", config.sink.len()))
}

/// With `require = true`, the first provider must be available, as session creation in `run`
/// demands (ONNX Runtime must be initialised).
fn check_required_provider(opts: &crate::runtime::RuntimeOptions) -> Result<(), ServiceError> {
    use ort::ep::{self, ExecutionProvider};
    let Some(first) = opts.providers.first().filter(|_| opts.require) else { return Ok(()) };
    let available = match first {
        Provider::Cpu => true,
        Provider::Cuda => ep::CUDA::is_available().unwrap_or(false),
        Provider::Tensorrt => ep::TensorRT::is_available().unwrap_or(false),
    };
    if available {
        Ok(())
    } else {
        Err(RuntimeError::ProviderMissing(first.name().into()).into())
    }
}

/// What `sink::build_all` would fail on, without creating files or connecting.
fn check_sink_paths(sink: &crate::sink::SinkConfig) -> Result<(), ServiceError> {
    use crate::sink::SinkConfig;
    match sink {
        SinkConfig::Stdout(_) => Ok(()),
        SinkConfig::Frames(c) => c.check().map_err(|e| ServiceError::Unusable(e.to_string())),
        SinkConfig::File(c) => {
            if c.path.is_dir() {
                return Err(ServiceError::Unusable(format!(
                    "[[sink]] file: {} is a directory; set `path` to a file in it",
                    c.path.display()
                )));
            }
            if c.path.exists() {
                return crate::source::blocking::may_access(&c.path, libc::W_OK).map_err(|e| {
                    ServiceError::Unusable(format!(
                        "[[sink]] file: cannot write {}: {e}; fix its permissions or `path`",
                        c.path.display()
                    ))
                });
            }
            let dir = match c.path.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !dir.is_dir() {
                return Err(ServiceError::Unusable(format!(
                    "[[sink]] file: directory {} does not exist; create it or fix `path`",
                    dir.display()
                )));
            }
            crate::source::blocking::may_access(dir, libc::W_OK | libc::X_OK).map_err(|e| {
                ServiceError::Unusable(format!(
                    "[[sink]] file: cannot create files in {}: {e}; fix its permissions or `path`",
                    dir.display()
                ))
            })
        }
        SinkConfig::Mqtt(c) => {
            let Some(tls) = &c.tls else { return Ok(()) };
            for f in std::iter::once(&tls.ca_file).chain(tls.client_cert.iter()).chain(tls.client_key.iter()) {
                crate::source::blocking::may_access(f, libc::R_OK).map_err(|e| {
                    ServiceError::Unusable(format!("[[sink]] mqtt tls: cannot read {}: {e}; fix the path", f.display()))
                })?;
            }
            Ok(())
        }
    }
}

fn scoring_of(config: &Config, calibration: Calibration) -> Scoring {
    let threshold = config.model.threshold.unwrap_or(calibration.threshold);
    Scoring { calibration: Arc::new(calibration), threshold }
}

/// Alert snapshots as `[snapshots]` says, or `None` (logged) when off or without a usable
/// directory. Their heat maps come from a second, CPU-only session over the model compiled
/// with `input_grad` (see `src/snapshot/`), opened on the first heat map; without it
/// snapshots go without heat maps.
fn start_snapshots(config: &Config, loaded: &ModelAndCalibration) -> Option<Arc<crate::snapshot::Snapshots>> {
    use crate::snapshot::{GradLayout, InputGradient, LazyGradient, Snapshots};
    // The heat-map graph is compiled and opened on the first heat map (`LazyGradient`), and
    // only when snapshots can be written at all.
    let gradient: Option<Box<dyn InputGradient>> = if config.snapshots.directory().is_some() {
        match loaded.calibration.model.loss.parse::<Loss>() {
            Ok(loss) => Some(Box::new(
                LazyGradient::new(
                    &loaded.model.path,
                    &loaded.model.info.sha256,
                    loss,
                    config.runtime.library.as_deref(),
                )
                .with_preprocessing(loaded.calibration.model.preprocessing.clone()),
            )),
            Err(e) => {
                log::warn!("snapshots: no heat maps: {e}");
                None
            }
        }
    } else {
        None
    };
    Snapshots::from_config(&config.snapshots, GradLayout::of(&loaded.model.info), gradient)
}

/// Signals the daemon acts on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sig {
    Reload,
    Stop,
}

fn install_signals() -> Result<(Receiver<Sig>, signal_hook::iterator::Handle), ServiceError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM]).map_err(ServiceError::Signals)?;
    let handle = signals.handle();
    let (tx, rx) = bounded(16);
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for s in signals.forever() {
                let sig = if s == SIGHUP { Sig::Reload } else { Sig::Stop };
                if tx.send(sig).is_err() {
                    break;
                }
            }
        })
        .map_err(ServiceError::Signals)?;
    Ok((rx, handle))
}

/// Runs the daemon until it stops; returns the process exit code. Errors before the pipeline
/// runs are printed to stderr (and logged) with their exit code.
pub fn run(config_path: &Path) -> i32 {
    match run_inner(config_path) {
        Ok(code) => code,
        Err(e) => {
            // stderr, not the log: it must show even with RUST_LOG=off (journald keeps it).
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}

fn run_inner(config_path: &Path) -> Result<i32, ServiceError> {
    // Signals first, so a SIGTERM during the (long) model load is not fatal-by-default.
    let (signals, signal_handle) = install_signals()?;
    let config = Config::load(config_path)?;
    // The endpoint is bound first: a taken address fails the start (exit 2) at once, not after
    // the model load and with the pipeline already running. Until the pipeline runs,
    // /healthz answers 503 "starting".
    let metrics = Metrics::new();
    // Fleet identity: on every event, and on every metric series once `[service]` names the
    // unit (a unit without it keeps its series as they were; Prometheus's `instance` label
    // tells such units apart).
    let identity = config.service.identity();
    if config.service.unit_id.is_some() || !config.service.labels.is_empty() {
        metrics.set_const_labels(identity.metric_labels());
    }
    log::info!("unit {}", identity.unit_id);
    crate::fleet::set_current(identity);
    let health_slot: Arc<OnceLock<HealthFn>> = Arc::new(OnceLock::new());
    let _server = if config.metrics.enabled {
        let slot = health_slot.clone();
        let health: HealthFn = Arc::new(move || match slot.get() {
            Some(f) => f(),
            None => Err("starting: loading the model, the pipeline is not running yet".into()),
        });
        let s = MetricsServer::start(&config.metrics.bind, metrics.clone(), health)?;
        log::info!("metrics on http://{}/metrics", s.local_addr());
        Some(s)
    } else {
        None
    };
    let t_load = Instant::now();
    let mut loaded = load_model(&config)?;
    log::info!(
        "model {} ({}) compiled in {:.1} s: {} classes, {} gradient features; calibration threshold {}",
        loaded.model.info.name,
        &loaded.model.info.sha256[..12.min(loaded.model.info.sha256.len())],
        t_load.elapsed().as_secs_f64(),
        loaded.model.compiled.num_classes,
        loaded.model.compiled.features.len(),
        loaded.calibration.threshold,
    );

    let env = Env::real(metrics.clone());
    let mut streams = Vec::new();
    for s in config.enabled_streams() {
        let source =
            s.build(env.clock.clone()).map_err(|e| ServiceError::Source { stream: s.name.clone(), source: e })?;
        streams.push(StreamSpec { name: s.name.clone(), roi: s.roi, queue: s.queue, source, score_fps: s.score_fps });
    }
    let stream_names: Vec<String> = streams.iter().map(|s| s.name.clone()).collect();
    // Every stream is in the registry before its first frame: the MQTT sinks clear the
    // retained topics of streams that are not.
    for n in &stream_names {
        metrics.stream(n);
    }
    let sinks = crate::sink::build_all_with(&config.sink, Some(&metrics))?;

    crate::runtime::init(config.runtime.library.as_deref())?;
    let trt = config.runtime.providers.contains(&Provider::Tensorrt);
    // The gradient graph (the weights and their flipped copies) is serialized, then it and the
    // model's own graph are dropped before the session parses its copy: the daemon keeps only
    // the model's names, preprocessing and hash (`docs/results/memory.md`: about 135 MB of RSS and of
    // the peak for the reference model; the heat-map graph is compiled from the file when needed).
    let bytes = crate::onnx::encode(&loaded.model.compiled.model);
    loaded.model.release_graphs();
    crate::runtime::trim_heap();
    let input_name = loaded.model.compiled.input_name.clone();
    let session = notify::extend_timeout_while(trt, || GradSession::from_bytes(&bytes, &input_name, &config.runtime))?;
    drop(bytes);
    crate::runtime::trim_heap();
    log::info!("inference on {}", session.provider().name());
    metrics.set_execution_provider(session.provider().name());
    metrics.set_build_label("model", &loaded.model.info.name);
    metrics.set_build_label("model_sha256", &loaded.model.info.sha256);
    let model_sha = loaded.model.info.sha256.clone();
    let features = loaded.model.compiled.features.clone();
    let preset = loaded.model.compiled.preset.clone();
    let preprocessing = loaded.calibration.model.preprocessing.clone();
    let classifier = Box::new(GradClassifier { info: loaded.model.info.clone(), session });
    let env = env.with_snapshots(start_snapshots(&config, &loaded));
    let frames = crate::sink::frames::Frames::start(&crate::sink::frames_configs(&config.sink))?;
    metrics.set_frames_stats(frames.stats());
    metrics.set_risk_level(config.metrics.risk_level);
    let frames = Arc::new(frames);
    let env = env.with_frames(Some(frames.clone()));
    let scoring = scoring_of(&config, loaded.calibration);

    let mut alert = config.alert.clone();
    for s in config.stream.iter().filter(|s| s.enabled) {
        if let Some(b) = &s.baseline {
            alert.baselines.insert(s.name.clone(), b.clone());
        }
    }
    let pipeline = Pipeline::start(&env, &config.pipeline, &alert, streams, classifier, scoring, sinks)?;
    let hb_timeout = Duration::from_secs(config.pipeline.heartbeat_timeout_s);
    {
        let hbs: Vec<Arc<Heartbeat>> = pipeline.heartbeats().to_vec();
        let shared = pipeline.shared().clone();
        let (m, names) = (metrics.clone(), stream_names.clone());
        let _ = health_slot.set(Arc::new(move || endpoint_health(&hbs, &shared, &m, &names, hb_timeout)));
    }

    let mut sup = Supervisor {
        config,
        config_path: config_path.to_path_buf(),
        model_sha,
        features,
        preset,
        preprocessing,
        metrics,
        stream_names,
        started: Instant::now(),
    };
    let code = sup.supervise(pipeline, &signals);
    // The last frames' lines go out before the process ends.
    frames.shutdown(Instant::now() + Duration::from_secs(1));
    signal_handle.close();
    Ok(code)
}

/// `/healthz`: the stages' heartbeats (as for the watchdog), then every stream that has not
/// ended must be up. A stream that is down (unplugged camera, FIFO without writer, a writer
/// silent for `timeout_s`) or has not delivered its first frame makes the endpoint unhealthy;
/// it does not starve the systemd watchdog, since a restart revives neither a camera nor a
/// writer and would stop the other streams.
fn endpoint_health(
    hbs: &[Arc<Heartbeat>],
    shared: &crate::pipeline::Shared,
    metrics: &Metrics,
    names: &[String],
    timeout: Duration,
) -> crate::metrics::Health {
    crate::pipeline::health_of(hbs, timeout)?;
    let ended = |n: &str| shared.ended.get(n).is_some_and(|f| f.load(std::sync::atomic::Ordering::Relaxed));
    let down: Vec<&str> =
        names.iter().map(String::as_str).filter(|n| !ended(n) && metrics.stream(n).up.get() == 0).collect();
    if down.is_empty() {
        Ok(())
    } else {
        Err(format!("stream(s) down or not started: {} (the log says why)", down.join(", ")))
    }
}

struct Supervisor {
    config: Config,
    config_path: std::path::PathBuf,
    model_sha: String,
    features: Vec<String>,
    /// The running model's feature preset (a reloaded calibration must match it).
    preset: String,
    /// The running calibration's `[model.preprocessing]` (a reloaded one must match it).
    preprocessing: Option<crate::model::Preprocessing>,
    metrics: Metrics,
    stream_names: Vec<String>,
    started: Instant,
}

impl Supervisor {
    fn supervise(&mut self, pipeline: Pipeline, signals: &Receiver<Sig>) -> i32 {
        let ticker = tick(Duration::from_millis(250));
        let hb_timeout = Duration::from_secs(self.config.pipeline.heartbeat_timeout_s);
        let start_timeout = Duration::from_secs(self.config.pipeline.start_timeout_s);
        let wd_period = notify::watchdog_period();
        let mut last_wd = Instant::now() - Duration::from_secs(3600);
        let mut ready = false;
        let mut failed = false;
        let mut stopped_by_signal = false;
        let mut fps = FpsMeter::new(&self.stream_names);
        let mut give_up_at: Option<Instant> = None;
        loop {
            crossbeam_channel::select! {
                recv(signals) -> s => match s {
                    Ok(Sig::Stop) => {
                        if !stopped_by_signal {
                            log::info!("stopping (signal): draining for at most {} s", pipeline.deadline().as_secs());
                            notify::stopping();
                        }
                        stopped_by_signal = true;
                        pipeline.stop();
                    }
                    Ok(Sig::Reload) => {
                        notify::reloading();
                        self.reload(&pipeline);
                        notify::ready(&fps.status());
                    }
                    Err(_) => {}
                },
                recv(pipeline.exits()) -> e => {
                    let Ok(e) = e else { break };
                    failed |= report_exit(&e, &pipeline);
                    if e.stage == "alert" {
                        // Inference has finished too (the alert stage ends when it does), but
                        // its report may still be on the way: a crash must not exit 0.
                        let until = Instant::now() + Duration::from_secs(2);
                        while let Ok(e) = pipeline.exits().recv_deadline(until) {
                            failed |= report_exit(&e, &pipeline);
                            if e.stage == "inference" {
                                break;
                            }
                        }
                        break;
                    }
                },
                recv(ticker) -> _ => {
                    let now = Instant::now();
                    fps.update(&self.metrics);
                    if !ready && (pipeline.all_streams_started() || now - self.started >= start_timeout) {
                        ready = true;
                        if !pipeline.all_streams_started() {
                            log::warn!("not every stream delivered a frame within {} s; ready anyway", start_timeout.as_secs());
                        }
                        notify::ready(&fps.status());
                    } else if ready {
                        notify::status(&fps.status());
                    }
                    if let Some(p) = wd_period {
                        if now - last_wd >= p {
                            match pipeline.health(hb_timeout) {
                                Ok(()) => {
                                    notify::watchdog();
                                    last_wd = now;
                                }
                                Err(why) => log::error!("watchdog not fed: {why}"),
                            }
                        }
                    }
                    if pipeline.shared().stopping() {
                        let until = *give_up_at.get_or_insert_with(|| now + pipeline.deadline() + Duration::from_secs(3));
                        if now >= until {
                            log::error!("shutdown did not finish within the deadline; exiting anyway");
                            return EXIT_FAILURE;
                        }
                    }
                }
            }
        }
        let natural = pipeline.all_streams_ended() && !stopped_by_signal && !failed;
        let until = Instant::now() + pipeline.deadline() + Duration::from_secs(1);
        let summary = pipeline.finish(until);
        if natural {
            if let Some(s) = &summary {
                eprint!("{}", report::format_summary(s, &self.metrics, &self.stream_names, self.started.elapsed()));
            }
            log::info!("every stream ended; exiting");
        }
        if failed {
            EXIT_FAILURE
        } else {
            EXIT_OK
        }
    }

    /// SIGHUP: load and check everything new first; apply only when all of it is good.
    fn reload(&mut self, pipeline: &Pipeline) {
        log::info!("reload: reading {}", self.config_path.display());
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload failed, keeping the running configuration: {e}");
                return;
            }
        };
        let calibration = match Calibration::load(&new.model.calibration)
            .and_then(|c| c.check_compiled(&self.model_sha, &self.features, &self.preset).map(|()| c))
        {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload failed, keeping the running configuration: calibration: {e}");
                return;
            }
        };
        // Frames are preprocessed by the running inference session's settings; a calibration
        // fitted with other preprocessing would be applied to the wrong inputs.
        if calibration.model.preprocessing != self.preprocessing {
            log::error!(
                "reload failed, keeping the running configuration: calibration: its [model.preprocessing] differs \
                 from the running one; restart the daemon to use it"
            );
            return;
        }
        if new.service != self.config.service {
            log::warn!("reload: [service] (unit_id, labels) changes apply at the next start, not now");
        }
        let sinks_changed = new.sink != self.config.sink;
        if crate::sink::frames_configs(&new.sink) != crate::sink::frames_configs(&self.config.sink) {
            log::warn!("reload: [[sink]] kind = \"frames\" changed; that takes effect only after a restart");
        }
        let new_fanout = if sinks_changed {
            match crate::sink::build_all_with(&new.sink, Some(&self.metrics))
                .and_then(|s| crate::sink::Fanout::new(s, crate::sink::DEFAULT_QUEUE))
            {
                Ok(f) => Some(f),
                Err(e) => {
                    log::error!("reload failed, keeping the running configuration: sink: {e}");
                    return;
                }
            }
        } else {
            None
        };
        // Everything loaded: apply.
        if new.model.path != self.config.model.path {
            log::warn!("reload: [model] path changed; the model is only loaded at start, restart to use it");
        }
        for (what, changed) in [
            ("[[stream]]", new.stream != self.config.stream),
            ("[pipeline]", new.pipeline != self.config.pipeline),
            ("[metrics]", new.metrics != self.config.metrics),
            ("[runtime]", format!("{:?}", new.runtime) != format!("{:?}", self.config.runtime)),
            ("[snapshots]", new.snapshots != self.config.snapshots),
        ] {
            if changed {
                log::warn!("reload: {what} changed; that takes effect only after a restart");
            }
        }
        let scoring = scoring_of(&new, calibration);
        log::info!("reload: threshold {} in force", scoring.threshold);
        pipeline.shared().set_scoring(scoring);
        if new.alert != self.config.alert {
            pipeline.control(AlertControl::Policies(new.alert.clone()));
        }
        match new_fanout {
            Some(f) => {
                log::info!("reload: sinks replaced ({})", f.names().join(", "));
                pipeline.control(AlertControl::ReplaceSinks(f));
            }
            None => {
                pipeline.control(AlertControl::ReopenSinks);
            }
        }
        // Remember what is actually running: the parts that need a restart stay as they were.
        let old = std::mem::replace(&mut self.config, new);
        self.config.model.path = old.model.path;
        self.config.runtime = old.runtime;
        self.config.pipeline = old.pipeline;
        self.config.metrics = old.metrics;
        self.config.stream = old.stream;
        self.config.snapshots = old.snapshots;
        log::info!("reload: done");
    }
}

/// Logs a stage's end; true when it failed (the pipeline is then stopped).
fn report_exit(e: &crate::pipeline::StageExit, pipeline: &Pipeline) -> bool {
    match &e.result {
        Ok(()) => {
            log::debug!("stage {} finished", e.stage);
            false
        }
        Err(why) => {
            log::error!("stage {} failed: {why}; shutting down", e.stage);
            pipeline.stop();
            true
        }
    }
}

/// Frames scored per second per stream, from counter deltas (for STATUS=).
struct FpsMeter {
    names: Vec<String>,
    last: Vec<u64>,
    at: Instant,
    fps: Vec<f64>,
}

impl FpsMeter {
    fn new(names: &[String]) -> Self {
        FpsMeter { names: names.to_vec(), last: vec![0; names.len()], at: Instant::now(), fps: vec![0.0; names.len()] }
    }

    fn update(&mut self, m: &Metrics) {
        let dt = self.at.elapsed().as_secs_f64();
        if dt < 1.0 {
            return;
        }
        for (i, n) in self.names.iter().enumerate() {
            let v = m.stream(n).frames_scored.get();
            self.fps[i] = (v - self.last[i].min(v)) as f64 / dt;
            self.last[i] = v;
        }
        self.at = Instant::now();
    }

    fn status(&self) -> String {
        let parts: Vec<String> = self.names.iter().zip(&self.fps).map(|(n, f)| format!("{n} {f:.1} fps")).collect();
        parts.join(", ")
    }
}
