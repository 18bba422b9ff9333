//! The alert stage: one [`AlertTracker`] per stream turns scored frames and stream up/down
//! transitions into events, which go to the sinks' [`Fanout`]. On shutdown open alerts end
//! with reason "shutdown" and the sinks drain until the deadline.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{never, Receiver};

use super::summary::Summary;
use super::{AlertControl, Env, Heartbeat, Shared};
use crate::alert::{AlertPolicy, AlertTracker, Event, ModelRef, Scored};
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
}

struct Slot {
    tracker: AlertTracker,
    /// A new policy waiting for the open alert to end.
    pending: Option<AlertPolicy>,
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
        } = self;
        let mut slots: BTreeMap<String, Slot> =
            trackers.into_iter().map(|t| (t.stream().to_string(), Slot { tracker: t, pending: None })).collect();
        let mut summary = Summary::default();
        let mut stream_events = stream_events;
        let mut control = control;
        let mut retired: Vec<std::thread::JoinHandle<()>> = Vec::new();
        loop {
            heartbeat.beat();
            env.metrics.tick();
            crossbeam_channel::select! {
                recv(scored) -> m => match m {
                    Ok(s) => on_scored(s, &mut slots, &mut summary, &fanout, &env, &model),
                    // Inference finished (stop, every stream ended, or it failed).
                    Err(_) => break,
                },
                recv(stream_events) -> m => match m {
                    Ok(e) => {
                        // Verdicts already delivered go first: `select!` picks among ready
                        // channels at random, and capture sends a `stream_down` only after
                        // its queued frames were handed on (see `capture`).
                        while let Ok(s) = scored.try_recv() {
                            on_scored(s, &mut slots, &mut summary, &fanout, &env, &model);
                        }
                        if let Some(slot) = slots.get_mut(&e.stream) {
                            handle_stream_event(slot, e, &fanout, &env);
                            apply_pending(slot, &model);
                        }
                    }
                    Err(_) => stream_events = never(),
                },
                recv(control) -> m => match m {
                    Ok(AlertControl::Policies(cfg)) => {
                        for (name, slot) in slots.iter_mut() {
                            let p = cfg.policy_for(name).clone();
                            slot.pending = Some(p);
                            apply_pending(slot, &model);
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
                handle_stream_event(slot, e, &fanout, &env);
            }
        }
        let now = env.now();
        for slot in slots.values_mut() {
            for ev in slot.tracker.shutdown(now) {
                status_event(&env, &ev);
                fanout.send(&ev);
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

/// One verdict: the summary, the stream's tracker, its events out.
fn on_scored(
    s: Scored,
    slots: &mut BTreeMap<String, Slot>,
    summary: &mut Summary,
    fanout: &Fanout,
    env: &Env,
    model: &ModelRef,
) {
    summary.frame(&s, env.now());
    let Some(slot) = slots.get_mut(&s.stream) else { return };
    env.metrics.stream(&s.stream).status.frame(s.time, s.score, s.threshold);
    let evs = slot.tracker.push(&s);
    for ev in &evs {
        if matches!(ev, Event::AlertStart { .. }) {
            env.metrics.stream(&s.stream).alerts_raised.inc();
        }
        summary.event(&s, ev);
        status_event(env, ev);
        fanout.send(ev);
    }
    apply_pending(slot, model);
}

fn handle_stream_event(slot: &mut Slot, e: StreamEvent, fanout: &Fanout, env: &Env) {
    let evs = match e.kind {
        StreamEventKind::Down(reason) => slot.tracker.stream_down(e.time, &reason),
        StreamEventKind::Up => vec![slot.tracker.stream_up(e.time)],
    };
    for ev in &evs {
        status_event(env, ev);
        fanout.send(ev);
    }
}

/// The stream's status (the status page, the MQTT dashboard topics) learns of an event as it
/// goes to the sinks.
fn status_event(env: &Env, ev: &Event) {
    env.metrics.stream(ev.stream()).status.event(ev);
}

/// Swaps in a pending policy once no alert is open (a policy change never cuts an alert short).
fn apply_pending(slot: &mut Slot, model: &ModelRef) {
    if slot.tracker.is_active() {
        return;
    }
    let Some(p) = slot.pending.take() else { return };
    let name = slot.tracker.stream().to_string();
    match AlertTracker::new(name.clone(), p, model.clone()) {
        Ok(t) => {
            slot.tracker = t;
            log::info!("stream {name}: new alert policy in force");
        }
        Err(e) => log::error!("stream {name}: new alert policy refused: {e}"),
    }
}
