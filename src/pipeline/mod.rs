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
pub mod infer;
pub mod summary;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

use crate::alert::{AlertPolicy, ModelRef};
use crate::config::{AlertConfig, PipelineConfig};
use crate::detector::Calibration;
use crate::metrics::Metrics;
use crate::sink::{Fanout, Sink};
use crate::source::{Clock, QueueConfig, Roi, Source};

pub use infer::{Classifier, ClassifierOutput, GradClassifier};
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
}

impl Env {
    /// An environment on `clock`, whose present is now in wall time.
    pub fn new(clock: Arc<dyn Clock>, metrics: Metrics) -> Self {
        let epoch_instant = clock.now();
        Env { clock, metrics, epoch_instant, epoch_wall: SystemTime::now(), system_time: false }
    }

    /// The real clock; frame times are the system time.
    pub fn real(metrics: Metrics) -> Self {
        Env { system_time: true, ..Self::new(Arc::new(crate::source::RealClock), metrics) }
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
}

impl Heartbeat {
    fn new(name: impl Into<String>, essential: bool) -> Arc<Self> {
        Arc::new(Heartbeat {
            name: name.into(),
            last_ms: AtomicU64::new(monotonic_ms()),
            essential,
            done: AtomicBool::new(false),
        })
    }

    /// Records that the stage is alive.
    pub fn beat(&self) {
        self.last_ms.store(monotonic_ms(), Ordering::Relaxed);
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
            trackers.push(crate::alert::AlertTracker::new(n.clone(), p, model.clone())?);
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
                tx,
                rx,
                events: stream_tx.clone(),
                heartbeat: hb.clone(),
            };
            threads.push(spawn_stage(format!("capture:{}", s.name), hb, exit_tx.clone(), move || ctx.run())?);
        }
        drop(stream_tx);

        let hb = Heartbeat::new("inference", true);
        heartbeats.push(hb.clone());
        let inf = infer::Inference {
            env: env.clone(),
            shared: shared.clone(),
            queues,
            classifier,
            max_batch: config.max_batch.max(1),
            max_wait: Duration::from_millis(config.max_wait_ms),
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

/// Logs at most once per period, counting what it suppressed (bad frames can come at frame
/// rate; the log must not).
pub(crate) struct RateLimit {
    period: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl RateLimit {
    pub(crate) fn new(period: Duration) -> Self {
        RateLimit { period, last: None, suppressed: 0 }
    }

    /// Calls `f(suppressed_since_last)` when the period has passed.
    pub(crate) fn hit(&mut self, f: impl FnOnce(u64)) {
        let now = Instant::now();
        if self.last.is_none_or(|t| now.duration_since(t) >= self.period) {
            self.last = Some(now);
            f(std::mem::take(&mut self.suppressed));
        } else {
            self.suppressed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::{EndReason, Event};
    use crate::detector::calibration::{CalibModel, DataSummary, FitSummary, FORMAT};
    use crate::detector::{DetectorKind, Gaussian, LogStandardizer};
    use crate::frame::RgbImage;
    use crate::sink::SinkError;
    use crate::source::{DropPolicy, SimClock, SourceEvent};
    use ndarray::Array2;

    /// Frames of a constant grey level, 100 ms apart on the simulated clock: `plan` lists
    /// (count, level, tag); `forever` repeats the last entry without end.
    struct FakeSource {
        clock: Arc<SimClock>,
        plan: Vec<(usize, u8, &'static str)>,
        i: usize,
        k: usize,
        forever: bool,
    }

    impl Source for FakeSource {
        fn poll(&mut self) -> SourceEvent {
            while self.i < self.plan.len() && self.k >= self.plan[self.i].0 {
                if self.forever && self.i + 1 == self.plan.len() {
                    self.k = 0;
                    break;
                }
                self.i += 1;
                self.k = 0;
            }
            let Some(&(_, level, tag)) = self.plan.get(self.i) else { return SourceEvent::End };
            self.k += 1;
            self.clock.advance(Duration::from_millis(100));
            match level {
                1 => return SourceEvent::BadFrame { reason: "test".into() },
                2 => return SourceEvent::Down { reason: "unplugged".into() },
                3 => return SourceEvent::Up,
                _ => {}
            }
            SourceEvent::Frame { image: RgbImage::new(4, 4, vec![level; 48]).unwrap(), tag: Some(tag.into()) }
        }
    }

    /// Feature = mean brightness in (0, 1]; logits favour class 1 for bright frames.
    struct FakeClassifier {
        names: Vec<String>,
        panic_after: Option<usize>,
        delay: Duration,
    }

    impl Classifier for FakeClassifier {
        fn model_name(&self) -> &str {
            "fake"
        }
        fn model_sha256(&self) -> &str {
            "00"
        }
        fn class_names(&self) -> &[String] {
            &self.names
        }
        fn run(&mut self, images: &[&RgbImage]) -> Result<ClassifierOutput, String> {
            if let Some(n) = self.panic_after.as_mut() {
                if *n == 0 {
                    panic!("fake model exploded");
                }
                *n -= 1;
            }
            std::thread::sleep(self.delay);
            let n = images.len();
            let mut f = Array2::zeros((n, 1));
            let mut l = Array2::zeros((n, 2));
            for (i, img) in images.iter().enumerate() {
                let mean = img.data.iter().map(|&v| v as f32).sum::<f32>() / img.data.len() as f32 / 255.0;
                f[[i, 0]] = mean.max(1e-3);
                l[[i, 1]] = mean * 4.0;
            }
            Ok(ClassifierOutput { logits: l, features: f })
        }
    }

    /// Score = ((ln x - ln 0.5) / 0.1)^2: about 0 for grey 128, 48 for white.
    fn calibration() -> Calibration {
        Calibration {
            format: FORMAT,
            model: CalibModel {
                name: "fake".into(),
                sha256: "00".into(),
                loss: "bce-logits".into(),
                features: vec!["f".into()],
            },
            threshold: 9.0,
            target_false_alarm: 0.01,
            detector: DetectorKind::OneClass {
                normalize: LogStandardizer { eps: 1e-12, mean: vec![0.5f64.ln()], std: vec![0.1] },
                gaussian: Gaussian { means: vec![vec![0.0]], precision: vec![vec![1.0]] },
            },
            fitted_on: FitSummary {
                familiar: DataSummary { name: "grey".into(), count: 1 },
                unfamiliar: vec![],
                validation_false_alarm_rate: 0.0,
                validation_true_positive_rate: 1.0,
                validation_auroc: 1.0,
                command: "test".into(),
            },
        }
    }

    struct MemSink(Arc<Mutex<Vec<Event>>>);

    impl Sink for MemSink {
        fn name(&self) -> &str {
            "mem"
        }
        fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
            self.0.lock().unwrap().push(ev.clone());
            Ok(())
        }
        fn flush(&mut self, _deadline: Instant) -> Result<(), SinkError> {
            Ok(())
        }
    }

    struct Run {
        pipeline: Pipeline,
        events: Arc<Mutex<Vec<Event>>>,
        metrics: Metrics,
    }

    fn start(plan: Vec<(usize, u8, &'static str)>, forever: bool, panic_after: Option<usize>) -> Run {
        start_with(plan, forever, panic_after, DropPolicy::Block, Duration::ZERO, None)
    }

    fn start_with(
        plan: Vec<(usize, u8, &'static str)>,
        forever: bool,
        panic_after: Option<usize>,
        policy: DropPolicy,
        delay: Duration,
        roi: Option<Roi>,
    ) -> Run {
        let clock = Arc::new(SimClock::new());
        let metrics = Metrics::new();
        let env = Env::new(clock.clone(), metrics.clone());
        let src = FakeSource { clock, plan, i: 0, k: 0, forever };
        let streams =
            vec![StreamSpec { name: "s".into(), roi, queue: QueueConfig { size: 4, policy }, source: Box::new(src) }];
        let alert = AlertConfig {
            default: AlertPolicy { window: 4, raise: 3, clear: 1, min_duration_ms: 0, update_interval_ms: 0 },
            stream: BTreeMap::new(),
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let cls = FakeClassifier { names: vec!["a".into(), "b".into()], panic_after, delay };
        let scoring = Scoring { calibration: Arc::new(calibration()), threshold: 9.0 };
        let pipeline = Pipeline::start(
            &env,
            &PipelineConfig { max_batch: 3, max_wait_ms: 1, ..PipelineConfig::default() },
            &alert,
            streams,
            Box::new(cls),
            scoring,
            vec![Box::new(MemSink(events.clone()))],
        )
        .unwrap();
        Run { pipeline, events, metrics }
    }

    /// Exits until both inference and the alert stage have reported (in either order: a
    /// panicking inference drops its channel, ending the alert stage, before it reports).
    fn wait_for_alert_stage(p: &Pipeline) -> Vec<StageExit> {
        let mut exits: Vec<StageExit> = Vec::new();
        while !(exits.iter().any(|e| e.stage == "alert") && exits.iter().any(|e| e.stage == "inference")) {
            exits.push(p.exits().recv_timeout(Duration::from_secs(30)).expect("stages finish"));
        }
        exits
    }

    #[test]
    fn replay_alert_in_the_corrupted_window_only() {
        let r = start(vec![(12, 128, "clean"), (2, 1, "clean"), (10, 255, "noise:5"), (12, 128, "clean")], false, None);
        let exits = wait_for_alert_stage(&r.pipeline);
        assert!(exits.iter().all(|e| e.result.is_ok()), "{exits:?}");
        assert!(r.pipeline.all_streams_ended());
        let summary = r.pipeline.finish(Instant::now() + Duration::from_secs(5)).unwrap();
        let ev = r.events.lock().unwrap().clone();
        let kinds: Vec<&str> = ev.iter().map(Event::kind).collect();
        assert_eq!(kinds, ["alert_start", "alert_end"], "{ev:?}");
        // Frames 0..12 clean, 12..22 noise (bad frames take no seq), 22..34 clean.
        let a = ev[0].alert().unwrap();
        assert_eq!((a.first_seq, a.last_seq), (12, 14)); // raised at the 3rd bright frame
        assert_eq!(a.tag.as_deref(), Some("noise:5"));
        match &ev[1] {
            Event::AlertEnd { alert, reason } => {
                assert_eq!(*reason, EndReason::Cleared);
                // Cleared when at most 1 of the last 4 is over: 3 clean frames after seq 21.
                assert_eq!(alert.last_seq, 24);
            }
            other => panic!("{other:?}"),
        }
        let m = r.metrics.stream("s");
        assert_eq!((m.frames_captured.get(), m.frames_scored.get(), m.frames_bad.get()), (34, 34, 2));
        assert_eq!(m.alerts_raised.get(), 1);
        let st = &summary.streams["s"];
        assert_eq!(st.windows.len(), 3);
        assert_eq!(st.windows[1].detection_delay(), Some((3, Duration::from_millis(200))));
        assert_eq!(st.false_alarms(), 0);
    }

    #[test]
    fn stop_closes_open_alerts_with_reason_shutdown() {
        let r = start(vec![(5, 128, "clean"), (1, 255, "noise:5")], true, None);
        // Wait until the alert is open, then stop.
        let t0 = Instant::now();
        while !r.events.lock().unwrap().iter().any(|e| e.kind() == "alert_start") {
            assert!(t0.elapsed() < Duration::from_secs(30), "no alert");
            std::thread::sleep(Duration::from_millis(5));
        }
        r.pipeline.stop();
        let exits = wait_for_alert_stage(&r.pipeline);
        assert!(exits.iter().all(|e| e.result.is_ok()), "{exits:?}");
        assert!(!r.pipeline.all_streams_ended());
        r.pipeline.finish(Instant::now() + Duration::from_secs(5)).unwrap();
        let ev = r.events.lock().unwrap().clone();
        let last = ev.last().unwrap();
        assert!(matches!(last, Event::AlertEnd { reason: EndReason::Shutdown, .. }), "{last:?}");
        assert_eq!(ev.iter().filter(|e| e.kind() == "alert_start").count(), 1);
    }

    #[test]
    fn drop_oldest_never_blocks_capture_and_accounts_for_every_frame() {
        // 300 frames arrive at once; inference takes 5 ms a batch of at most 3: most are dropped.
        let r =
            start_with(vec![(300, 128, "clean")], false, None, DropPolicy::DropOldest, Duration::from_millis(5), None);
        let exits = wait_for_alert_stage(&r.pipeline);
        assert!(exits.iter().all(|e| e.result.is_ok()), "{exits:?}");
        let m = r.metrics.stream("s");
        assert_eq!(m.frames_captured.get(), 300);
        assert!(m.frames_dropped.get() > 0);
        assert_eq!(m.frames_scored.get() + m.frames_dropped.get(), 300);
        assert_eq!(r.metrics.batch_size().sum() as u64, m.frames_scored.get());
    }

    #[test]
    fn stream_down_up_transitions_and_roi() {
        // Repeated Downs are one transition; the ROI fits the 4x4 frames.
        let plan = vec![(3, 128, "clean"), (3, 2, "-"), (1, 3, "-"), (2, 128, "clean")];
        let roi = Some(Roi { x: 2, y: 2, width: 2, height: 2 });
        let r = start_with(plan, false, None, DropPolicy::Block, Duration::ZERO, roi);
        wait_for_alert_stage(&r.pipeline);
        let kinds: Vec<&str> = r.events.lock().unwrap().iter().map(Event::kind).collect();
        assert_eq!(kinds, ["stream_down", "stream_up"]);
        assert_eq!(r.metrics.stream("s").frames_scored.get(), 5);
        assert_eq!(r.metrics.stream("s").frames_bad.get(), 0);
        // A ROI outside the frame: every frame is bad, none scored, no crash.
        let roi = Some(Roi { x: 3, y: 0, width: 2, height: 2 });
        let r = start_with(vec![(4, 128, "clean")], false, None, DropPolicy::Block, Duration::ZERO, roi);
        let exits = wait_for_alert_stage(&r.pipeline);
        assert!(exits.iter().all(|e| e.result.is_ok()), "{exits:?}");
        assert_eq!(r.metrics.stream("s").frames_bad.get(), 4);
        assert_eq!(r.metrics.stream("s").frames_scored.get(), 0);
    }

    #[test]
    fn streams_share_batches_and_keep_their_own_alerts() {
        let clock = Arc::new(SimClock::new());
        let metrics = Metrics::new();
        let env = Env::new(clock.clone(), metrics.clone());
        let spec = |name: &str, plan| StreamSpec {
            name: name.into(),
            roi: None,
            queue: QueueConfig { size: 4, policy: DropPolicy::Block },
            source: Box::new(FakeSource { clock: clock.clone(), plan, i: 0, k: 0, forever: false }),
        };
        let streams = vec![spec("a", vec![(30, 128, "clean")]), spec("b", vec![(10, 128, "clean"), (20, 255, "x")])];
        let alert = AlertConfig {
            default: AlertPolicy { window: 4, raise: 3, clear: 1, min_duration_ms: 0, update_interval_ms: 0 },
            stream: BTreeMap::new(),
        };
        let events = Arc::new(Mutex::new(Vec::new()));
        let cls = FakeClassifier { names: vec!["a".into(), "b".into()], panic_after: None, delay: Duration::ZERO };
        let p = Pipeline::start(
            &env,
            &PipelineConfig { max_batch: 4, max_wait_ms: 2, ..PipelineConfig::default() },
            &alert,
            streams,
            Box::new(cls),
            Scoring { calibration: Arc::new(calibration()), threshold: 9.0 },
            vec![Box::new(MemSink(events.clone()))],
        )
        .unwrap();
        wait_for_alert_stage(&p);
        let summary = p.finish(Instant::now() + Duration::from_secs(5)).unwrap();
        assert_eq!(metrics.stream("a").frames_scored.get(), 30);
        assert_eq!(metrics.stream("b").frames_scored.get(), 30);
        assert_eq!(metrics.batch_size().sum() as u64, 60);
        assert!(metrics.batch_size().count() <= 60);
        let ev = events.lock().unwrap().clone();
        // Stream b's alert is open at its end: closed with reason shutdown; a has none.
        assert!(ev.iter().all(|e| e.stream() == "b"), "{ev:?}");
        assert_eq!(ev.iter().map(Event::kind).collect::<Vec<_>>(), ["alert_start", "alert_end"]);
        assert!(matches!(ev[1], Event::AlertEnd { reason: EndReason::Shutdown, .. }));
        assert_eq!(summary.streams["a"].alerts, 0);
        assert_eq!(summary.streams["b"].windows[1].detection_delay().map(|d| d.0), Some(3));
    }

    #[test]
    fn many_streams_ending_together_all_scored() {
        // Regression: streams finishing in the same gather pass (found by the daemon benchmark
        // with four replays) made the inference stage panic while removing their queues.
        for round in 0..5 {
            let clock = Arc::new(SimClock::new());
            let metrics = Metrics::new();
            let env = Env::new(clock.clone(), metrics.clone());
            let names: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
            let streams = names
                .iter()
                .map(|name| StreamSpec {
                    name: name.clone(),
                    roi: None,
                    queue: QueueConfig { size: 4, policy: DropPolicy::Block },
                    source: Box::new(FakeSource {
                        clock: clock.clone(),
                        plan: vec![(3 + round, 128, "clean")],
                        i: 0,
                        k: 0,
                        forever: false,
                    }),
                })
                .collect();
            let cls = FakeClassifier { names: vec!["a".into(), "b".into()], panic_after: None, delay: Duration::ZERO };
            let p = Pipeline::start(
                &env,
                &PipelineConfig { max_batch: 4, max_wait_ms: 1, ..PipelineConfig::default() },
                &AlertConfig::default(),
                streams,
                Box::new(cls),
                Scoring { calibration: Arc::new(calibration()), threshold: 9.0 },
                vec![],
            )
            .unwrap();
            let exits = wait_for_alert_stage(&p);
            assert!(exits.iter().all(|e| e.result.is_ok()), "{exits:?}");
            for n in &names {
                assert_eq!(metrics.stream(n).frames_scored.get(), 3 + round as u64, "{n}");
            }
        }
    }

    #[test]
    fn a_panicking_stage_is_reported() {
        let r = start(vec![(1, 128, "clean")], true, Some(2));
        let exits = wait_for_alert_stage(&r.pipeline);
        let inf = exits.iter().find(|e| e.stage == "inference").expect("inference exit reported");
        let err = inf.result.as_ref().unwrap_err();
        assert!(err.contains("fake model exploded"), "{err}");
        r.pipeline.stop();
    }
}
