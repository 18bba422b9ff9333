//! The alert stage: one [`AlertTracker`] per stream turns scored frames and stream up/down
//! transitions into events, which go to the sinks' [`Fanout`]. On shutdown open alerts end
//! with reason "shutdown" and the sinks drain until the deadline.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{never, Receiver};

use super::summary::Summary;
use super::{AlertControl, Env, Heartbeat, Shared};
use crate::alert::{AlertConfig, AlertPolicy, AlertTracker, Baseline, BaselineConfig, Event, ModelRef, Scored};
use crate::metrics::Metrics;
use crate::sink::Fanout;

/// A stream's connection changed (from its capture thread).
#[derive(Debug)]
pub struct StreamEvent {
    /// Stream name.
    pub stream: String,
    /// When (pipeline clock).
    pub time: SystemTime,
    /// What happened.
    pub kind: StreamEventKind,
}

/// Up or down.
#[derive(Debug)]
pub enum StreamEventKind {
    /// The source lost its input.
    Down(String),
    /// The source (re)connected.
    Up,
}

const IDLE_TICK: Duration = Duration::from_millis(200);

pub(crate) struct AlertStage {
    pub env: Env,
    pub shared: Arc<Shared>,
    pub trackers: Vec<AlertTracker>,
    pub fanout: Fanout,
    pub scored: Receiver<Scored>,
    pub stream_events: Receiver<StreamEvent>,
    pub control: Receiver<AlertControl>,
    pub deadline: Duration,
    pub heartbeat: Arc<Heartbeat>,
    pub result: Arc<Mutex<Option<Summary>>>,
    pub model: ModelRef,
    /// Streams that learn their baseline.
    pub baselines: BTreeMap<String, BaselineConfig>,
    /// Where learned baselines are saved.
    pub state_dir: Option<std::path::PathBuf>,
}

/// Adaptation changes a baseline a little at a time: save it at most this often.
const SAVE_EVERY: Duration = Duration::from_secs(600);

/// Sets a new tracker up for its stream's baseline: learning (when the stream has
/// `baseline = { ... }`) and the saved baseline from the state directory, if any.
pub(crate) fn init_baseline(t: &mut AlertTracker, alert: &AlertConfig, metrics: &Metrics) {
    let name = t.stream().to_string();
    if let Some(cfg) = alert.baselines.get(&name) {
        t.learn_baseline(cfg.clone());
    }
    if let Some(dir) = &alert.state_dir {
        let sha = t.model_sha256().to_string();
        match Baseline::load(dir, &name, &sha) {
            Ok(Some(b)) => match t.set_baseline(b) {
                Ok(()) => log::info!("stream {name}: learned baseline loaded from {}", dir.display()),
                Err(e) => log::warn!("stream {name}: saved baseline not used: {e}"),
            },
            Ok(None) => {}
            Err(e) => log::warn!("stream {name}: saved baseline not used: {e}"),
        }
    }
    publish_baseline(t, metrics);
}

/// Baseline and CUSUM gauges of one stream.
fn publish_baseline(t: &AlertTracker, metrics: &Metrics) {
    let m = metrics.stream(t.stream());
    m.cusum_statistic_milli.set((t.statistic() * 1000.0).round() as i64);
    match t.baseline() {
        Some((b, true)) => {
            m.baseline_learned.set(1);
            m.baseline_blocks.set(b.sample.len() as i64);
            m.baseline_median_milli.set((f64::from(b.median()) * 1000.0).round() as i64);
        }
        _ => {
            m.baseline_learned.set(0);
            m.baseline_blocks.set(t.learning_progress().map_or(0, |(n, _)| n as i64));
        }
    }
}

/// Saves `b` into the state directory (if configured), logging failures.
fn save_baseline(dir: Option<&std::path::Path>, b: &Baseline) {
    let Some(dir) = dir else { return };
    match b.save(dir) {
        Ok(p) => log::info!("stream {}: baseline saved to {}", b.stream, p.display()),
        Err(e) => log::warn!("stream {}: baseline not saved: {e}", b.stream),
    }
}

struct Slot {
    tracker: AlertTracker,
    /// A new policy waiting for the open alert to end.
    pending: Option<AlertPolicy>,
    /// A changed baseline not yet saved, and when the last save was.
    unsaved: Option<Baseline>,
    saved_at: Option<Instant>,
}

impl AlertStage {
    pub(crate) fn run(self) -> Result<(), String> {
        let AlertStage {
            env,
            shared,
            trackers,
            mut fanout,
            scored,
            stream_events,
            control,
            deadline,
            heartbeat,
            result,
            model,
            baselines,
            state_dir,
        } = self;
        let learn_cfg = AlertConfig { baselines, state_dir: state_dir.clone(), ..AlertConfig::default() };
        let mut slots: BTreeMap<String, Slot> = trackers
            .into_iter()
            .map(|t| (t.stream().to_string(), Slot { tracker: t, pending: None, unsaved: None, saved_at: None }))
            .collect();
        let mut summary = Summary::default();
        let mut stream_events = stream_events;
        let mut control = control;
        let mut retired: Vec<std::thread::JoinHandle<()>> = Vec::new();
        loop {
            heartbeat.beat();
            crossbeam_channel::select! {
                recv(scored) -> m => match m {
                    Ok(s) => {
                        summary.frame(&s);
                        let Some(slot) = slots.get_mut(&s.stream) else { continue };
                        let evs = slot.tracker.push(&s);
                        for ev in &evs {
                            if matches!(ev, Event::AlertStart { .. }) {
                                env.metrics.stream(&s.stream).alerts_raised.inc();
                            }
                            summary.event(&s, ev);
                            fanout.send(ev);
                        }
                        if let Some(b) = slot.tracker.take_changed_baseline() {
                            // A freshly learned baseline is saved at once; adaptation at most every SAVE_EVERY.
                            let first = slot.saved_at.is_none();
                            slot.unsaved = Some(b);
                            if first || slot.saved_at.is_some_and(|t| t.elapsed() >= SAVE_EVERY) {
                                if let Some(b) = slot.unsaved.take() {
                                    save_baseline(state_dir.as_deref(), &b);
                                }
                                slot.saved_at = Some(Instant::now());
                            }
                        }
                        publish_baseline(&slot.tracker, &env.metrics);
                        apply_pending(slot, &model, &learn_cfg);
                    }
                    // Inference finished (stop, every stream ended, or it failed).
                    Err(_) => break,
                },
                recv(stream_events) -> m => match m {
                    Ok(e) => {
                        if let Some(slot) = slots.get_mut(&e.stream) {
                            handle_stream_event(slot, e, &fanout);
                            apply_pending(slot, &model, &learn_cfg);
                        }
                    }
                    Err(_) => stream_events = never(),
                },
                recv(control) -> m => match m {
                    Ok(AlertControl::Policies(cfg)) => {
                        for (name, slot) in slots.iter_mut() {
                            let p = cfg.policy_for(name).clone();
                            slot.pending = Some(p);
                            apply_pending(slot, &model, &learn_cfg);
                        }
                    }
                    Ok(AlertControl::ReopenSinks) => fanout.reopen(),
                    Ok(AlertControl::ReplaceSinks(new)) => {
                        env.metrics.set_sink_stats(new.stats_handle());
                        let old = std::mem::replace(&mut fanout, new);
                        let d = Instant::now() + deadline;
                        // The old sinks drain in the background so alerts are not delayed.
                        if let Ok(h) = std::thread::Builder::new().name("sink-retire".into()).spawn(move || {
                            let r = old.shutdown(d);
                            if !r.clean() {
                                log::warn!("reload: old sinks did not shut down cleanly: {:?}", r.sinks);
                            }
                        }) {
                            retired.push(h);
                        }
                    }
                    Err(_) => control = never(),
                },
                default(IDLE_TICK) => {}
            }
        }
        // Late stream events first (a stream that went down just before the end).
        while let Ok(e) = stream_events.try_recv() {
            if let Some(slot) = slots.get_mut(&e.stream) {
                handle_stream_event(slot, e, &fanout);
            }
        }
        let now = env.now();
        for slot in slots.values_mut() {
            for ev in slot.tracker.shutdown(now) {
                fanout.send(&ev);
            }
            if let Some(b) = slot.unsaved.take() {
                save_baseline(state_dir.as_deref(), &b);
            }
        }
        let until = shared.stop_instant().map_or_else(|| Instant::now() + deadline, |t| t + deadline);
        let report = fanout.shutdown(until.max(Instant::now() + Duration::from_millis(100)));
        for h in retired {
            let _ = h.join();
        }
        if let Ok(mut g) = result.lock() {
            *g = Some(summary);
        }
        if report.clean() {
            Ok(())
        } else {
            // Undelivered events at shutdown are worth a warning, not a failure: the daemon
            // did what it could within the deadline.
            log::warn!("shutdown: not every sink finished cleanly: {:?}", report.sinks);
            Ok(())
        }
    }
}

fn handle_stream_event(slot: &mut Slot, e: StreamEvent, fanout: &Fanout) {
    let evs = match e.kind {
        StreamEventKind::Down(reason) => slot.tracker.stream_down(e.time, &reason),
        StreamEventKind::Up => vec![slot.tracker.stream_up(e.time)],
    };
    for ev in &evs {
        fanout.send(ev);
    }
}

/// Swaps in a pending policy once no alert is open (a policy change never cuts an alert short).
/// A learned baseline carries over to the new tracker.
fn apply_pending(slot: &mut Slot, model: &ModelRef, learn: &AlertConfig) {
    if slot.tracker.is_active() {
        return;
    }
    let Some(p) = slot.pending.take() else { return };
    let name = slot.tracker.stream().to_string();
    match AlertTracker::new(name.clone(), p, model.clone()) {
        Ok(mut t) => {
            if let Some(cfg) = learn.baselines.get(&name) {
                t.learn_baseline(cfg.clone());
            }
            if let Some((b, true)) = slot.tracker.baseline() {
                if let Err(e) = t.set_baseline(b.clone()) {
                    log::info!("stream {name}: learned baseline not carried over: {e}");
                }
            }
            slot.tracker = t;
            log::info!("stream {name}: new alert policy in force");
        }
        Err(e) => log::error!("stream {name}: new alert policy refused: {e}"),
    }
}
