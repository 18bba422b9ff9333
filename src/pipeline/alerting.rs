//! The alert stage: one [`AlertTracker`] per stream turns scored frames and stream up/down
//! transitions into events, which go to the sinks' [`Fanout`]. On shutdown open alerts end
//! with reason "shutdown" and the sinks drain until the deadline.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{never, Receiver};

use super::summary::Summary;
use super::{AlertControl, Env, Heartbeat, Shared};
use crate::alert::open::OpenAlerts;
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
    /// The sequence number of the stream's next frame: the transition happened after every
    /// frame before it and before this one, and the alert stage orders it so among the
    /// verdicts (channels alone cannot: verdicts take longer to arrive than transitions).
    pub before_seq: u64,
}

/// Up or down.
#[derive(Debug)]
pub enum StreamEventKind {
    /// The source lost its input.
    Down(String),
    /// The source (re)connected.
    Up,
    /// The whole frame's image-quality measures (once a second of frame time; `time` is the
    /// frame's capture time, `before_seq` its sequence number).
    Quality(crate::alert::image::Quality),
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
                Ok(()) if t.policy().policy == crate::alert::PolicyKind::Cusum => {
                    log::info!("stream {name}: learned baseline loaded from {}", dir.display())
                }
                // Kept (a reload may switch to cusum) but not in use: say so.
                Ok(()) => log::info!(
                    "stream {name}: learned baseline in {} kept; unused by policy k_of_n (only cusum uses it)",
                    dir.display()
                ),
                Err(e) => log::warn!("stream {name}: saved baseline not used: {e}"),
            },
            Ok(None) => {}
            Err(e) => log::warn!("stream {name}: saved baseline not used: {e}"),
        }
    }
    if let (Some(dir), true) = (&alert.state_dir, t.image().is_some()) {
        match crate::alert::ImageBaseline::load(dir, &name).and_then(|b| b.map(|b| t.set_image_baseline(b)).transpose())
        {
            Ok(Some(())) => log::info!("stream {name}: learned image baseline loaded from {}", dir.display()),
            Ok(None) => {}
            Err(e) => log::warn!("stream {name}: saved image baseline not used (learning it again): {e}"),
        }
    }
    publish_baseline(t, metrics);
    publish_image(t, metrics);
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
    /// The stream's alert snapshots, when on.
    snap: Option<crate::snapshot::StreamSnaps>,
    /// Where open alerts are persisted (a state directory is known).
    open: Option<OpenAlerts>,
}

impl Slot {
    /// Persists the stream's open alert as its events go out (see [`OpenAlerts`]).
    fn persist(&self, evs: &[Event]) {
        if let Some(o) = &self.open {
            for ev in evs {
                o.record(ev);
            }
        }
    }

    /// Gives the stream's snapshots the frame (if any) and its events, which get their paths.
    fn snapshots(&mut self, frame: Option<&Scored>, evs: &mut [Event]) {
        if let Some(sn) = self.snap.as_mut() {
            if let Some(s) = frame {
                sn.frame(s);
            }
            sn.events(evs);
        }
    }
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
        let fixed =
            Fixed { model, learn: AlertConfig { baselines, state_dir: state_dir.clone(), ..AlertConfig::default() } };
        // Alerts the previous run left open (it died) end first, with reason "restart".
        let open = state_dir.clone().or_else(crate::sink::mqtt::state_directory).map(|d| OpenAlerts::new(&d));
        if let Some(o) = &open {
            for ev in o.close_left_open(env.now()) {
                fanout.send(&ev);
            }
        }
        let mut slots: BTreeMap<String, Slot> = trackers
            .into_iter()
            .map(|t| {
                let snap = env.snapshots.as_ref().map(|s| s.stream(t.stream()));
                let slot = Slot { tracker: t, pending: None, snap, unsaved: None, saved_at: None, open: open.clone() };
                (slot.tracker.stream().to_string(), slot)
            })
            .collect();
        let mut summary = Summary::default();
        let mut stream_events = stream_events;
        let mut control = control;
        let mut retired: Vec<std::thread::JoinHandle<()>> = Vec::new();
        // Transitions received but not yet due: each waits for the verdicts of the frames
        // captured before it (`before_seq`), so `stream_up` precedes the first frame's alert
        // and `stream_down` follows the last one's.
        let mut held: VecDeque<StreamEvent> = VecDeque::new();
        loop {
            heartbeat.beat();
            env.metrics.tick();
            crossbeam_channel::select! {
                recv(scored) -> m => match m {
                    Ok(s) => {
                        held.extend(stream_events.try_iter());
                        release_held(&mut held, Some(&s), &mut slots, &mut summary, &fanout, &env, &fixed);
                        on_scored(s, &mut slots, &mut summary, &fanout, &env, &fixed);
                        if scored.is_empty() {
                            // Every verdict delivered so far is handled: the rest are due.
                            release_held(&mut held, None, &mut slots, &mut summary, &fanout, &env, &fixed);
                        }
                    }
                    // Inference finished (stop, every stream ended, or it failed).
                    Err(_) => break,
                },
                recv(stream_events) -> m => match m {
                    Ok(e) => {
                        held.push_back(e);
                        // Verdicts already delivered go first: `select!` picks among ready
                        // channels at random, and capture sends a `stream_down` only after
                        // its queued frames were handed on (see `capture`).
                        while let Ok(s) = scored.try_recv() {
                            held.extend(stream_events.try_iter());
                            release_held(&mut held, Some(&s), &mut slots, &mut summary, &fanout, &env, &fixed);
                            on_scored(s, &mut slots, &mut summary, &fanout, &env, &fixed);
                        }
                        release_held(&mut held, None, &mut slots, &mut summary, &fanout, &env, &fixed);
                    }
                    Err(_) => stream_events = never(),
                },
                recv(control) -> m => match m {
                    Ok(AlertControl::Policies(cfg)) => {
                        for (name, slot) in slots.iter_mut() {
                            let p = cfg.policy_for(name).clone();
                            slot.pending = Some(p);
                            apply_pending(slot, &fixed);
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
        held.extend(stream_events.try_iter());
        while let Some(e) = held.pop_front() {
            if let Some(slot) = slots.get_mut(&e.stream) {
                handle_stream_event(slot, e, &mut summary, &fanout, &env, &fixed.learn);
            }
        }
        let now = env.now();
        for slot in slots.values_mut() {
            let mut evs = slot.tracker.shutdown(now);
            slot.snapshots(None, &mut evs);
            slot.persist(&evs);
            for ev in &evs {
                status_event(&env, ev);
                fanout.send(ev);
            }
            if let Some(b) = slot.unsaved.take() {
                save_baseline(state_dir.as_deref(), &b);
            }
        }
        if let Some(s) = &env.snapshots {
            // No more snapshots; the queued ones are written while the sinks drain.
            s.close();
        }
        let until = shared.stop_instant().map_or_else(|| Instant::now() + deadline, |t| t + deadline);
        let report = fanout.shutdown(until.max(Instant::now() + Duration::from_millis(100)));
        if let Some(s) = &env.snapshots {
            s.finish(until.max(Instant::now() + Duration::from_millis(100)));
        }
        for h in retired {
            let _ = h.join();
        }
        if let Ok(mut g) = result.lock() {
            *g = Some(summary);
        }
        if !report.clean() {
            warn_undelivered(&report);
        }
        Ok(())
    }
}

/// Undelivered events at shutdown are worth a warning, not a failure: the daemon did what it
/// could within the deadline.
fn warn_undelivered(report: &crate::sink::ShutdownReport) {
    for sink in &report.sinks {
        match &sink.error {
            Some(e) => log::warn!("shutdown: sink {}: {e}", sink.name),
            None if !sink.finished || sink.undelivered > 0 => log::warn!(
                "shutdown: sink {}: {} event(s) undelivered{}",
                sink.name,
                sink.undelivered,
                if sink.finished { "" } else { " (it did not finish by the deadline)" }
            ),
            None => {}
        }
    }
}

/// What the alert stage's handlers share for its whole run: the model, the streams that learn
/// baselines and where baselines are saved.
struct Fixed {
    model: ModelRef,
    learn: AlertConfig,
}

/// One verdict: the summary, the stream's tracker, its events out.
fn on_scored(
    s: Scored,
    slots: &mut BTreeMap<String, Slot>,
    summary: &mut Summary,
    fanout: &Fanout,
    env: &Env,
    fixed: &Fixed,
) {
    summary.frame(&s, env.now());
    let Some(slot) = slots.get_mut(&s.stream) else { return };
    env.metrics.stream(&s.stream).status.frame(s.time, s.score, s.threshold);
    let mut evs = slot.tracker.push(&s);
    slot.snapshots(Some(&s), &mut evs);
    emit(slot, &evs, (s.seq, s.time), summary, fanout, env);
    if let Some(b) = slot.tracker.take_changed_baseline() {
        // A freshly learned baseline is saved at once; adaptation at most every SAVE_EVERY.
        let first = slot.saved_at.is_none();
        slot.unsaved = Some(b);
        if first || slot.saved_at.is_some_and(|t| t.elapsed() >= SAVE_EVERY) {
            if let Some(b) = slot.unsaved.take() {
                save_baseline(fixed.learn.state_dir.as_deref(), &b);
            }
            slot.saved_at = Some(Instant::now());
        }
    }
    publish_baseline(&slot.tracker, &env.metrics);
    apply_pending(slot, fixed);
}

/// Sends a tracker's events (raised at frame `at`) out: persisted, counted, summarised, to the
/// status and the sinks.
fn emit(slot: &Slot, evs: &[Event], at: (u64, SystemTime), summary: &mut Summary, fanout: &Fanout, env: &Env) {
    slot.persist(evs);
    for ev in evs {
        if matches!(ev, Event::AlertStart { .. }) {
            env.metrics.stream(ev.stream()).alerts_raised.inc();
        }
        summary.event(ev.stream(), at.0, at.1, ev);
        status_event(env, ev);
        fanout.send(ev);
    }
}

/// Handles the held transitions that are due before verdict `next` (those of its stream with
/// `before_seq <= next.seq`), or all of them when `next` is `None` (every delivered verdict
/// was handled), in the order they were sent.
fn release_held(
    held: &mut VecDeque<StreamEvent>,
    next: Option<&Scored>,
    slots: &mut BTreeMap<String, Slot>,
    summary: &mut Summary,
    fanout: &Fanout,
    env: &Env,
    fixed: &Fixed,
) {
    let due = |e: &StreamEvent| next.is_none_or(|s| e.stream == s.stream && e.before_seq <= s.seq);
    let mut keep = VecDeque::with_capacity(held.len());
    while let Some(e) = held.pop_front() {
        if !due(&e) {
            keep.push_back(e);
            continue;
        }
        if let Some(slot) = slots.get_mut(&e.stream) {
            handle_stream_event(slot, e, summary, fanout, env, &fixed.learn);
            apply_pending(slot, fixed);
        }
    }
    *held = keep;
}

fn handle_stream_event(
    slot: &mut Slot,
    e: StreamEvent,
    summary: &mut Summary,
    fanout: &Fanout,
    env: &Env,
    learn: &AlertConfig,
) {
    let mut evs = match e.kind {
        StreamEventKind::Down(reason) => slot.tracker.stream_down(e.time, &reason),
        StreamEventKind::Up => vec![slot.tracker.stream_up(e.time)],
        StreamEventKind::Quality(q) => {
            let evs = slot.tracker.image_sample(e.before_seq, e.time, &q);
            if let (Some(b), Some(dir)) = (slot.tracker.take_changed_image(), learn.state_dir.as_deref()) {
                match b.save(dir) {
                    Ok(p) => log::info!("stream {}: image baseline saved to {}", b.stream, p.display()),
                    Err(err) => log::warn!("stream {}: image baseline not saved: {err}", b.stream),
                }
            }
            publish_image(&slot.tracker, &env.metrics);
            evs
        }
    };
    slot.snapshots(None, &mut evs);
    emit(slot, &evs, (e.before_seq, e.time), summary, fanout, env);
}

/// Image-evidence gauges of one stream.
fn publish_image(t: &AlertTracker, metrics: &Metrics) {
    let Some(i) = t.image() else { return };
    let m = metrics.stream(t.stream());
    m.image_learned.set(i64::from(i.learned().is_some()));
    m.image_statistic_milli.set((i.statistic().0 * 1000.0).round() as i64);
}

/// The stream's status (the status page, the MQTT dashboard topics) learns of an event as it
/// goes to the sinks.
fn status_event(env: &Env, ev: &Event) {
    env.metrics.stream(ev.stream()).status.event(ev);
}

/// Swaps in a pending policy once no alert is open (a policy change never cuts an alert short).
/// A learned baseline carries over to the new tracker.
fn apply_pending(slot: &mut Slot, fixed: &Fixed) {
    let (model, learn) = (&fixed.model, &fixed.learn);
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
            if let Err(e) = t.carry_baseline_from(&mut slot.tracker) {
                log::info!("stream {name}: learned baseline not carried over: {e}");
            }
            slot.tracker = t;
            let baseline = match (slot.tracker.baseline(), slot.tracker.learning_progress()) {
                (Some((_, true)), _) => "; learned baseline kept".to_string(),
                (_, Some((n, of))) => format!("; learning continues ({n} of {of} blocks)"),
                _ => String::new(),
            };
            log::info!("stream {name}: new alert policy in force{baseline}");
        }
        Err(e) => log::error!("stream {name}: new alert policy refused: {e}"),
    }
}
