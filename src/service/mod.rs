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
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, tick, Receiver};

use crate::config::{Config, ConfigError};
use crate::detector::{CalibError, Calibration};
use crate::grad::{CompileOptions, Loss};
use crate::metrics::{Metrics, MetricsServer};
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
            | ServiceError::Loss(_) => EXIT_CONFIG,
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
    let calibration = Calibration::load(&config.model.calibration)?;
    let loss: Loss = calibration.model.loss.parse().map_err(ServiceError::Loss)?;
    let model = LoadedModel::load(&config.model.path, &CompileOptions { loss, ..Default::default() })?;
    calibration.check_model(&model.info.sha256, &model.compiled.features)?;
    Ok(ModelAndCalibration { model, calibration })
}

/// `gradwatch check-config`: loads and validates the config, loads the model and calibration
/// and checks they match. Returns the one-line verdict.
pub fn check_config(path: &Path) -> Result<String, ServiceError> {
    let config = Config::load(path)?;
    let _ = load_model(&config)?;
    let streams = config.enabled_streams().count();
    Ok(format!("ok: {streams} streams, {} sinks", config.sink.len()))
}

fn scoring_of(config: &Config, calibration: Calibration) -> Scoring {
    let threshold = config.model.threshold.unwrap_or(calibration.threshold);
    Scoring { calibration: Arc::new(calibration), threshold }
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
    let t_load = Instant::now();
    let loaded = load_model(&config)?;
    log::info!(
        "model {} ({}) compiled in {:.1} s: {} classes, {} gradient features; calibration threshold {}",
        loaded.model.info.name,
        &loaded.model.info.sha256[..12.min(loaded.model.info.sha256.len())],
        t_load.elapsed().as_secs_f64(),
        loaded.model.compiled.num_classes,
        loaded.model.compiled.features.len(),
        loaded.calibration.threshold,
    );

    let metrics = Metrics::new();
    let env = Env::real(metrics.clone());
    let mut streams = Vec::new();
    for s in config.enabled_streams() {
        let source =
            s.build(env.clock.clone()).map_err(|e| ServiceError::Source { stream: s.name.clone(), source: e })?;
        streams.push(StreamSpec { name: s.name.clone(), roi: s.roi, queue: s.queue, source });
    }
    let stream_names: Vec<String> = streams.iter().map(|s| s.name.clone()).collect();
    let sinks = crate::sink::build_all(&config.sink)?;

    crate::runtime::init(config.runtime.library.as_deref())?;
    let trt = config.runtime.providers.contains(&Provider::Tensorrt);
    let session = notify::extend_timeout_while(trt, || GradSession::new(&loaded.model.compiled, &config.runtime))?;
    log::info!("inference on {}", session.provider().name());
    metrics.set_execution_provider(session.provider().name());
    metrics.set_build_label("model", &loaded.model.info.name);
    metrics.set_build_label("model_sha256", &loaded.model.info.sha256);
    let model_sha = loaded.model.info.sha256.clone();
    let features = loaded.model.compiled.features.clone();
    let classifier = Box::new(GradClassifier { info: loaded.model.info.clone(), session });
    let scoring = scoring_of(&config, loaded.calibration);

    let mut alert = config.alert.clone();
    for s in config.stream.iter().filter(|s| s.enabled) {
        if let Some(b) = &s.baseline {
            alert.baselines.insert(s.name.clone(), b.clone());
        }
    }
    let pipeline = Pipeline::start(&env, &config.pipeline, &alert, streams, classifier, scoring, sinks)?;
    let hb_timeout = Duration::from_secs(config.pipeline.heartbeat_timeout_s);
    let _server = if config.metrics.enabled {
        let hbs: Vec<Arc<Heartbeat>> = pipeline.heartbeats().to_vec();
        let health = Arc::new(move || crate::pipeline::health_of(&hbs, hb_timeout));
        let s = MetricsServer::start(&config.metrics.bind, metrics.clone(), health)?;
        log::info!("metrics on http://{}/metrics", s.local_addr());
        Some(s)
    } else {
        None
    };

    let mut sup = Supervisor {
        config,
        config_path: config_path.to_path_buf(),
        model_sha,
        features,
        metrics,
        stream_names,
        started: Instant::now(),
    };
    let code = sup.supervise(pipeline, &signals);
    signal_handle.close();
    Ok(code)
}

struct Supervisor {
    config: Config,
    config_path: std::path::PathBuf,
    model_sha: String,
    features: Vec<String>,
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
            .and_then(|c| c.check_model(&self.model_sha, &self.features).map(|()| c))
        {
            Ok(c) => c,
            Err(e) => {
                log::error!("reload failed, keeping the running configuration: calibration: {e}");
                return;
            }
        };
        let sinks_changed = new.sink != self.config.sink;
        let new_fanout = if sinks_changed {
            match crate::sink::build_all(&new.sink)
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
