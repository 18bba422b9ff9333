//! The streaming pipeline: capture threads -> inference -> alert stage -> sinks.
//!
//! ```text
//!  stream 1: source.poll() -> ROI -> [bounded queue] ─┐
//!  stream 2: source.poll() -> ROI -> [bounded queue] ─┼─> inference (batches across streams,
//!  ...                                                │    preprocess, GradSession, score)
//!                                                     └──────────────> alert stage (one
//!        stream_down / stream_up ───────────────────────────────────>  AlertTracker per
//!                                                                       stream) -> Fanout
//! ```
//!
//! One concern per module: [`capture`] (sources into queues, drop policy), [`infer`] (batching
//! and scoring), [`alerting`] (debounce and delivery), [`summary`] (per-window statistics for
//! the replay summary). Every stage thread has a [`Heartbeat`]; a stage that panics or fails
//! reports a [`StageExit`] to whoever supervises (the service), which exits non-zero instead of
//! hanging.
//!
//! Everything the pipeline needs from the outside comes in through [`Env`] (the clock that
//! paces sources and stamps frames, the metrics registry) and [`Pipeline::start`]'s arguments
//! (built sources, the classifier, built sinks), so tests run it on a `SimClock` with fake
//! sources and in-memory sinks.

pub mod alerting;
pub mod capture;
mod config;
pub mod infer;
pub mod rate;
pub mod summary;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::alert::{AlertConfig, AlertPolicy, ModelRef};
use crate::base::clock::Clock;
use crate::detector::Calibration;
use crate::metrics::Metrics;
use crate::sink::{Fanout, Sink};
use crate::source::{QueueConfig, Roi, Source};

pub use capture::FRAME_QUALITY_EVERY;
pub use config::PipelineConfig;
pub use infer::{BatchPolicy, Classifier, ClassifierOutput, GradClassifier};
pub use summary::{StreamSummary, Summary, WindowStats};

/// Errors starting the pipeline.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// A thread could not be spawned.
    #[error("cannot start the {stage} thread: {source}")]
    Thread {
        /// Which stage.
        stage: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The sinks could not be started.
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
    /// An alert policy is invalid.
    #[error(transparent)]
    Alert(#[from] crate::alert::AlertError),
    /// Two streams have the same name.
    #[error("stream `{0}` is given twice; stream names must be unique")]
    DuplicateStream(String),
}

/// What the pipeline takes from its surroundings (moonfire-nvr style): swapped for a
/// simulated clock and in-memory parts in tests.
#[derive(Clone)]
pub struct Env {
    /// Paces the sources (they got it when built) and stamps frames.
    pub clock: Arc<dyn Clock>,
    /// The metrics registry the stages update.
    pub metrics: Metrics,
    /// `clock`'s instant that corresponds to `epoch_wall`; frame times are
    /// `epoch_wall + (clock.now() - epoch_instant)`, so a simulated clock gives simulated,
    /// exactly spaced frame times.
    epoch_instant: Instant,
    epoch_wall: SystemTime,
    /// On the real clock frames carry the system time itself, so alert times stay in step
    /// with NTP over months of uptime.
    system_time: bool,
    /// Alert snapshots, when on: inference keeps over-threshold frames, the alert stage asks
    /// for snapshots of them.
    pub snapshots: Option<Arc<crate::snapshot::Snapshots>>,
    /// The `frames` sinks, when configured: inference offers them every scored frame.
    pub frames: Option<Arc<crate::sink::frames::Frames>>,
}

impl Env {
    /// An environment on `clock`, whose present is now in wall time.
    pub fn new(clock: Arc<dyn Clock>, metrics: Metrics) -> Self {
        let epoch_instant = clock.now();
        Env {
            clock,
            metrics,
            epoch_instant,
            epoch_wall: SystemTime::now(),
            system_time: false,
            snapshots: None,
            frames: None,
        }
    }

    /// This environment with alert snapshots.
    pub fn with_snapshots(self, snapshots: Option<Arc<crate::snapshot::Snapshots>>) -> Self {
        Env { snapshots, ..self }
    }

    /// This environment with `frames` sinks.
    pub fn with_frames(self, frames: Option<Arc<crate::sink::frames::Frames>>) -> Self {
        Env { frames, ..self }
    }

    /// The real clock; frame times are the system time.
    pub fn real(metrics: Metrics) -> Self {
        Env { system_time: true, ..Self::new(Arc::new(crate::base::clock::RealClock), metrics) }
    }

    /// The current time on the pipeline's clock, as wall time.
    pub fn now(&self) -> SystemTime {
        if self.system_time {
            return SystemTime::now();
        }
        let since = self.clock.now().saturating_duration_since(self.epoch_instant);
        self.epoch_wall + since
    }
}

/// Milliseconds since the first use of this process's monotonic epoch; heartbeats compare it.
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The last time a stage went round its loop (real monotonic time, not the pipeline clock:
/// it is about stalls of this process).
#[derive(Debug)]
pub struct Heartbeat {
    name: String,
    last_ms: AtomicU64,
    /// Capture threads may block in their source for long (a FIFO with no writer), which is
    /// not a fault; their heartbeats are reported but not part of health.
    essential: bool,
    done: AtomicBool,
    /// Beats so far: "has the stage gone round its loop since I looked" (capture waits on
    /// inference's before a `stream_down`, see `capture`).
    beats: AtomicU64,
}

impl Heartbeat {
    fn new(name: impl Into<String>, essential: bool) -> Arc<Self> {
        Arc::new(Heartbeat {
            name: name.into(),
            last_ms: AtomicU64::new(monotonic_ms()),
            essential,
            done: AtomicBool::new(false),
            beats: AtomicU64::new(0),
        })
    }

    /// Records that the stage is alive.
    pub fn beat(&self) {
        self.last_ms.store(monotonic_ms(), Ordering::Relaxed);
        self.beats.fetch_add(1, Ordering::SeqCst);
    }

    /// How many times the stage has beaten.
    pub fn beats(&self) -> u64 {
        self.beats.load(Ordering::SeqCst)
    }

    /// The stage's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        Duration::from_millis(monotonic_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }

    /// Whether the stage's thread has finished.
    pub fn is_done(&self) -> bool {
        self.done.load(Ordering::Relaxed)
    }
}

/// How a stage thread ended.
#[derive(Debug)]
pub struct StageExit {
    /// The stage (`capture:<stream>`, `inference`, `alert`).
    pub stage: String,
    /// `Ok` on a normal end; `Err` with the error or panic message otherwise.
    pub result: Result<(), String>,
}

/// The live scoring parameters, swapped as a whole on reload.
#[derive(Clone, Debug)]
pub struct Scoring {
    /// The calibration.
    pub calibration: Arc<Calibration>,
    /// Threshold in force (the config's override or the calibration's).
    pub threshold: f32,
}

/// A request to the alert stage (from the service, on reload).
pub enum AlertControl {
    /// New per-stream policies; each applies once the stream's open alert (if any) ends.
    Policies(AlertConfig),
    /// Ask every sink to reopen its resources (logrotate).
    ReopenSinks,
    /// Replace the sinks; the old fan-out is shut down in the background.
    ReplaceSinks(Fanout),
}

/// State shared between the stages and the supervisor.
pub struct Shared {
    /// Set to stop: sources stop, queued frames drain, alerts close.
    pub stop: AtomicBool,
    /// When stopping began; drain deadlines count from it.
    pub stop_at: Mutex<Option<Instant>>,
    /// The scoring parameters in force.
    pub scoring: RwLock<Arc<Scoring>>,
    /// Per stream: whether it delivered its first frame (READY=1 waits for all of them).
    pub first_frame: BTreeMap<String, AtomicBool>,
    /// Per stream: whether its source has ended (replay and directory without loop).
    pub ended: BTreeMap<String, AtomicBool>,
}

impl Shared {
    /// The scoring parameters in force.
    pub fn scoring(&self) -> Arc<Scoring> {
        match self.scoring.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Replaces the scoring parameters (reload).
    pub fn set_scoring(&self, s: Scoring) {
        match self.scoring.write() {
            Ok(mut g) => *g = Arc::new(s),
            Err(p) => *p.into_inner() = Arc::new(s),
        }
    }

    /// Whether stopping was requested.
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The instant stopping began, if it did.
    pub fn stop_instant(&self) -> Option<Instant> {
        match self.stop_at.lock() {
            Ok(g) => *g,
            Err(p) => *p.into_inner(),
        }
    }
}

/// One stream as the pipeline runs it.
pub struct StreamSpec {
    /// The stream's name.
    pub name: String,
    /// Crop applied to every frame.
    pub roi: Option<Roi>,
    /// The capture queue.
    pub queue: QueueConfig,
    /// The built source.
    pub source: Box<dyn Source>,
    /// Score at most this many frames per second (`[[stream]] score_fps`); `None`: every frame.
    pub score_fps: Option<f64>,
}

/// A running pipeline.
pub struct Pipeline {
    shared: Arc<Shared>,
    heartbeats: Vec<Arc<Heartbeat>>,
    exits: Receiver<StageExit>,
    control: Sender<AlertControl>,
    alert_result: Arc<Mutex<Option<Summary>>>,
    threads: Vec<JoinHandle<()>>,
    deadline: Duration,
}

impl Pipeline {
    /// Starts one capture thread per stream, the inference thread and the alert thread.
    pub fn start(
        env: &Env,
        config: &PipelineConfig,
        alert: &AlertConfig,
        streams: Vec<StreamSpec>,
        classifier: Box<dyn Classifier>,
        scoring: Scoring,
        sinks: Vec<Box<dyn Sink>>,
    ) -> Result<Pipeline, PipelineError> {
        let mut seen = std::collections::HashSet::new();
        for s in &streams {
            if !seen.insert(s.name.clone()) {
                return Err(PipelineError::DuplicateStream(s.name.clone()));
            }
        }
        let model =
            ModelRef { name: classifier.model_name().to_string(), sha256: classifier.model_sha256().to_string() };
        let names: Vec<String> = streams.iter().map(|s| s.name.clone()).collect();
        let mut trackers = Vec::new();
        for n in &names {
            let p: AlertPolicy = alert.policy_for(n).clone();
            let mut t = crate::alert::AlertTracker::new(n.clone(), p, model.clone())?;
            alerting::init_baseline(&mut t, alert, &env.metrics);
            trackers.push(t);
        }
        let fanout = Fanout::new(sinks, crate::sink::DEFAULT_QUEUE)?;
        env.metrics.set_sink_stats(fanout.stats_handle());

        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            stop_at: Mutex::new(None),
            scoring: RwLock::new(Arc::new(scoring)),
            first_frame: names.iter().map(|n| (n.clone(), AtomicBool::new(false))).collect(),
            ended: names.iter().map(|n| (n.clone(), AtomicBool::new(false))).collect(),
        });
        let (exit_tx, exits) = unbounded();
        let (scored_tx, scored_rx) = bounded(1024);
        let (stream_tx, stream_rx) = bounded(1024);
        let (control, control_rx) = unbounded();
        let deadline = Duration::from_secs(config.shutdown_deadline_s);
        let mut heartbeats = Vec::new();
        let mut threads = Vec::new();
        let mut queues = Vec::new();
        let inference_hb = Heartbeat::new("inference", true);

        for s in streams {
            let (tx, rx) = bounded(s.queue.size.max(1));
            queues.push(infer::StreamQueue { name: s.name.clone(), rx: rx.clone() });
            let hb = Heartbeat::new(format!("capture:{}", s.name), false);
            heartbeats.push(hb.clone());
            let ctx = capture::Capture {
                env: env.clone(),
                shared: shared.clone(),
                spec_name: s.name.clone(),
                roi: s.roi,
                policy: s.queue.policy,
                source: s.source,
                rate: rate::ScoreRate::new(s.score_fps),
                tx,
                rx,
                events: stream_tx.clone(),
                heartbeat: hb.clone(),
                inference: inference_hb.clone(),
            };
            threads.push(spawn_stage(format!("capture:{}", s.name), hb, exit_tx.clone(), move || ctx.run())?);
        }
        drop(stream_tx);

        let hb = inference_hb;
        heartbeats.push(hb.clone());
        let inf = infer::Inference {
            env: env.clone(),
            shared: shared.clone(),
            queues,
            classifier,
            max_batch: config.max_batch.max(1),
            max_wait: Duration::from_millis(config.max_wait_ms),
            policy: infer::BatchPolicy::new(config.max_batch, config.latency_target_ms),
            drain: deadline / 2,
            out: scored_tx,
            heartbeat: hb.clone(),
        };
        threads.push(spawn_stage("inference".into(), hb, exit_tx.clone(), move || inf.run())?);

        let hb = Heartbeat::new("alert", true);
        heartbeats.push(hb.clone());
        let alert_result = Arc::new(Mutex::new(None));
        let stage = alerting::AlertStage {
            env: env.clone(),
            shared: shared.clone(),
            trackers,
            fanout,
            scored: scored_rx,
            stream_events: stream_rx,
            control: control_rx,
            deadline,
            heartbeat: hb.clone(),
            result: alert_result.clone(),
            model,
            baselines: alert.baselines.clone(),
            state_dir: alert.state_dir.clone(),
        };
        threads.push(spawn_stage("alert".into(), hb, exit_tx, move || stage.run())?);

        Ok(Pipeline { shared, heartbeats, exits, control, alert_result, threads, deadline })
    }

    /// Shared state (scoring, stop flag, per-stream flags).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Every stage's heartbeat.
    pub fn heartbeats(&self) -> &[Arc<Heartbeat>] {
        &self.heartbeats
    }

    /// Stage exits, as they happen.
    pub fn exits(&self) -> &Receiver<StageExit> {
        &self.exits
    }

    /// Sends a request to the alert stage; false when it has already finished.
    pub fn control(&self, c: AlertControl) -> bool {
        self.control.send(c).is_ok()
    }

    /// `Err(reason)` when an essential stage's heartbeat is older than `timeout` (a stuck
    /// model run, a deadlock); finished stages do not count.
    pub fn health(&self, timeout: Duration) -> Result<(), String> {
        health_of(&self.heartbeats, timeout)
    }

    /// Whether every stream delivered its first frame.
    pub fn all_streams_started(&self) -> bool {
        self.shared.first_frame.values().all(|f| f.load(Ordering::Relaxed))
    }

    /// Whether every stream's source has ended by itself.
    pub fn all_streams_ended(&self) -> bool {
        self.shared.ended.values().all(|f| f.load(Ordering::Relaxed))
    }

    /// Starts stopping: sources stop, queued frames drain, alerts close with reason
    /// "shutdown", sinks flush, all within the shutdown deadline. Idempotent.
    pub fn stop(&self) {
        if !self.shared.stop.swap(true, Ordering::SeqCst) {
            let mut g = match self.shared.stop_at.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            *g = Some(Instant::now());
        }
    }

    /// The configured shutdown deadline.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Waits until `until` for the alert stage (the last one) to finish; returns the summary
    /// it collected, or `None` if it did not finish in time or failed. Threads still running
    /// then (a capture thread blocked in its source) are left behind.
    pub fn finish(mut self, until: Instant) -> Option<Summary> {
        let alert = self.threads.pop();
        if let Some(t) = alert {
            while !t.is_finished() {
                if Instant::now() >= until {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = t.join();
        }
        for t in self.threads.drain(..) {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        match self.alert_result.lock() {
            Ok(mut g) => g.take(),
            Err(p) => p.into_inner().take(),
        }
    }
}

/// `Err(reason)` when an essential, unfinished stage among `heartbeats` has not beaten for
/// longer than `timeout`.
pub fn health_of(heartbeats: &[Arc<Heartbeat>], timeout: Duration) -> Result<(), String> {
    for hb in heartbeats {
        if hb.essential && !hb.is_done() && hb.age() > timeout {
            return Err(format!("stage {} has not made progress for {:.1} s", hb.name, hb.age().as_secs_f64()));
        }
    }
    Ok(())
}

/// Spawns a stage thread that reports how it ended (error or panic included) on `exits`.
fn spawn_stage(
    name: String,
    hb: Arc<Heartbeat>,
    exits: Sender<StageExit>,
    f: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<JoinHandle<()>, PipelineError> {
    let thread_name: String = name.chars().take(15).collect();
    let stage = name.clone();
    std::thread::Builder::new()
        .name(thread_name)
        .spawn(move || {
            let result = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
                Ok(r) => r,
                Err(p) => Err(format!("panicked: {}", panic_message(&p))),
            };
            hb.done.store(true, Ordering::Relaxed);
            let _ = exits.send(StageExit { stage, result });
        })
        .map_err(|source| PipelineError::Thread { stage: name, source })
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic payload".into()
    }
}
