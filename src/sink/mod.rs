//! Event sinks (stdout, file, MQTT) and the [`Fanout`] that feeds them.
//!
//! Each sink runs on its own thread behind a bounded queue, so a slow or failing sink never
//! blocks the pipeline or the other sinks: when a sink's queue is full the event is dropped
//! *for that sink*, counted and logged (rate-limited).

pub mod file;
pub mod frames;
pub mod memory;
pub mod mqtt;
pub mod stdout;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use serde::{Deserialize, Serialize};

use crate::alert::event::Event;
pub use crate::base::stats::{SinkStats, StatsHandle};
pub(crate) use crate::ratelimit::LogLimiter;

pub use file::FileSink;
pub use memory::{EventLog, MemorySink};
pub use mqtt::{MqttSink, MqttSinkConfig, MqttTlsConfig};
pub use stdout::StdoutSink;

/// Why an event was dropped: the `reason` label of `gradwatch_sink_dropped_total`. Every
/// sink reports every reason (0 where it never happens), so the series are stable.
pub mod reason {
    /// The sink's queue in the fan-out was full (the sink is slow or stuck).
    pub const QUEUE_FULL: &str = "queue_full";
    /// MQTT: more than `buffer` events waited for the broker.
    pub const BUFFER_FULL: &str = "buffer_full";
    /// MQTT: the spool reached `spool_max_bytes`; its oldest segment was deleted.
    pub const SPOOL_FULL: &str = "spool_full";
    /// MQTT: older than `spool_max_age_s`.
    pub const TOO_OLD: &str = "too_old";
    /// MQTT: refused by the broker (or too big for a packet)
    /// [`mqtt::DEAD_LETTER_TRIES`](super::mqtt::DEAD_LETTER_TRIES) times; written to the
    /// dead-letter file.
    pub const DEAD_LETTER: &str = "dead_letter";
    /// MQTT: a spool record found corrupt at start-up.
    pub const SPOOL_CORRUPT: &str = "spool_corrupt";
    /// MQTT: kept in memory because the spool could not be written (disk full) and still
    /// not on disk at shutdown.
    pub const DISK_FULL: &str = "disk_full";
    /// File sink: more than `MAX_RETRY_EVENTS` waited for a retry of a failed write.
    pub const RETRY_FULL: &str = "retry_full";
    /// Undelivered at the shutdown deadline by a sink that keeps nothing on disk.
    pub const SHUTDOWN: &str = "shutdown";
    /// Every reason, in the order the metrics list them.
    pub const ALL: [&str; 9] =
        [QUEUE_FULL, BUFFER_FULL, SPOOL_FULL, TOO_OLD, DEAD_LETTER, SPOOL_CORRUPT, DISK_FULL, RETRY_FULL, SHUTDOWN];
}

/// Default capacity of each sink's queue in the [`Fanout`].
pub const DEFAULT_QUEUE: usize = 1024;

/// Errors of the sink module.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Writing failed (disk full, broken pipe, ...).
    #[error("write failed: {0}")]
    Io(#[source] std::io::Error),
    /// A file could not be opened.
    #[error("cannot open {path}: {source} (check the path exists and is writable)")]
    Open {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file sink's path is not a regular file.
    #[error(
        "{path} is a {what}, not a regular file: the file sink only appends to regular files \
         (point `path` at a file, or use the stdout sink and a pipe)"
    )]
    NotRegular {
        /// The path.
        path: PathBuf,
        /// What it is instead ("FIFO", "socket", "device").
        what: &'static str,
    },
    /// The on-disk spool of a network sink failed.
    #[error(transparent)]
    Spool(#[from] mqtt::spool::SpoolError),
    /// The event could not be written to the spool; it is kept in memory only.
    #[error("event not spooled, kept in memory only (lost if the daemon stops before it is delivered): {0}")]
    NotDurable(#[source] mqtt::spool::SpoolError),
    /// Shutdown came with events still unacknowledged; those on disk stay in the spool, those
    /// the spool could not take (disk full) are lost and counted.
    #[error(
        "{pending} event(s) not yet acknowledged stay in the spool {dir} and are sent when the \
         daemon runs again; {lost} more could not be written to it (disk full) and are lost \
         (counted in sink_dropped_total reason=\"disk_full\")"
    )]
    Spooled {
        /// Events waiting on disk.
        pending: usize,
        /// Events lost: kept in memory only, since the spool could not be written.
        lost: usize,
        /// The spool directory.
        dir: PathBuf,
    },
    /// The sink is temporarily unusable; the event was not delivered.
    #[error("sink unavailable: {0}")]
    Unavailable(String),
    /// The configuration is unusable.
    #[error("invalid sink config: {0}")]
    Config(String),
    /// `flush` ran out of time with events still undelivered.
    #[error("flush deadline passed with {pending} event(s) undelivered")]
    Timeout {
        /// Events still waiting.
        pending: usize,
    },
    /// Could not start the sink's thread.
    #[error("cannot start sink thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// A destination for events. Implementations may block in `send`; the [`Fanout`] isolates
/// them on their own threads.
pub trait Sink: Send {
    /// Name used in logs and metric labels.
    fn name(&self) -> &str;
    /// Delivers (or durably queues) one event, under a fresh `event_id`.
    fn send(&mut self, ev: &Event) -> Result<(), SinkError>;
    /// Delivers (or durably queues) one event under the given `event_id` (the [`Fanout`]
    /// assigns one id per event, shared by every sink, so a consumer reading two sinks or a
    /// redelivery sees the same id). The default ignores the id and calls `send`.
    fn send_with_id(&mut self, event_id: &str, ev: &Event) -> Result<(), SinkError> {
        let _ = event_id;
        self.send(ev)
    }
    /// Called when the sink's queue is idle (about every half second): a sink that kept
    /// failed events for a retry (the file sink after a full disk) tries them again here.
    fn poll(&mut self) {}
    /// Events that an earlier `send` reported as failed but that have been delivered since
    /// (by a retry), since the last call. The [`Fanout`] adds them to `sent`. Default 0.
    fn take_late_deliveries(&mut self) -> u64 {
        0
    }
    /// Reopens underlying resources (SIGHUP; the file sink reopens its path for logrotate).
    fn reopen(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// Pushes out whatever is buffered, giving up at `deadline`.
    fn flush(&mut self, deadline: Instant) -> Result<(), SinkError>;
    /// Events the sink itself has dropped so far (e.g. MQTT buffer overflow while the broker
    /// is down), cumulative. Default 0.
    fn dropped(&self) -> u64 {
        0
    }
    /// [`dropped`](Self::dropped) by reason ([`reason`]), cumulative; the reasons must add up
    /// to `dropped`. Default: none.
    fn drops(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    /// Events accepted by `send` but not yet confirmed delivered (e.g. awaiting PUBACK), or
    /// kept for a retry (the file sink after a failed write).
    fn backlog(&self) -> usize {
        0
    }
    /// Times the sink found its destination removed or replaced and opened it again
    /// (the file sink), cumulative. Default 0.
    fn reopened(&self) -> u64 {
        0
    }
}

/// Sink section of the config: `[[sink]]` tables selected by `kind`.
///
/// ```toml
/// [[sink]]
/// kind = "stdout"
///
/// [[sink]]
/// kind = "file"
/// path = "/var/lib/gradwatch/events.jsonl"
/// fsync = true
///
/// [[sink]]
/// kind = "mqtt"
/// host = "broker.local"
/// client_id = "cam-box-1"
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
// A handful of these exist, built once per (re)load: boxing the MQTT one would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum SinkConfig {
    /// JSON lines on stdout.
    Stdout(StdoutSinkConfig),
    /// JSON lines appended to a file.
    File(FileSinkConfig),
    /// MQTT publisher.
    Mqtt(MqttSinkConfig),
    /// One JSON line per scored frame to a socket or file ([`frames`]); not an event sink:
    /// the pipeline feeds it, [`build_all`] leaves it out.
    Frames(frames::FramesSinkConfig),
}

impl SinkConfig {
    /// Makes the sink's relative paths absolute against `base` (the config's directory).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        use crate::base::path::resolve_path;
        match self {
            SinkConfig::File(f) => resolve_path(&mut f.path, base),
            SinkConfig::Mqtt(m) => {
                if let Some(t) = m.tls.as_mut() {
                    resolve_path(&mut t.ca_file, base);
                    for p in [t.client_cert.as_mut(), t.client_key.as_mut()].into_iter().flatten() {
                        resolve_path(p, base);
                    }
                }
            }
            SinkConfig::Frames(f) => {
                if let Some(p) = f.path.as_mut() {
                    resolve_path(p, base);
                }
            }
            SinkConfig::Stdout(_) => {}
        }
    }
}

/// `kind = "stdout"`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StdoutSinkConfig {
    /// Name in logs/metrics. Default "stdout".
    #[serde(default)]
    pub name: Option<String>,
}

/// `kind = "file"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSinkConfig {
    /// Name in logs/metrics. Default "file".
    #[serde(default)]
    pub name: Option<String>,
    /// File to append to (required).
    pub path: PathBuf,
    /// `fsync` (`sync_data`) after every event. Default true.
    #[serde(default = "default_true")]
    pub fsync: bool,
}

fn default_true() -> bool {
    true
}

impl SinkConfig {
    /// The name the sink will have (the configured `name`, else the kind).
    pub fn name(&self) -> String {
        match self {
            SinkConfig::Stdout(c) => c.name.clone().unwrap_or_else(|| "stdout".into()),
            SinkConfig::File(c) => c.name.clone().unwrap_or_else(|| "file".into()),
            SinkConfig::Mqtt(c) => c.name.clone().unwrap_or_else(|| "mqtt".into()),
            SinkConfig::Frames(c) => c.name(),
        }
    }

    /// Checks the sink's own keys without opening anything: its name against
    /// [`crate::names::validate`] and every number in range (`check-config` and reloads run
    /// it, so `run` never starts with a value it would fail on).
    pub fn validate(&self) -> Result<(), SinkError> {
        let name = self.name();
        crate::names::validate(&name).map_err(|e| SinkError::Config(format!("sink name {name:?}: {e}")))?;
        match self {
            SinkConfig::Stdout(_) => Ok(()),
            SinkConfig::File(c) => {
                if c.path.as_os_str().is_empty() {
                    return Err(SinkError::Config("file sink `path` is empty".into()));
                }
                Ok(())
            }
            SinkConfig::Mqtt(c) => c.validate(),
            SinkConfig::Frames(c) => c.validate(),
        }
    }

    /// Builds the sink (opens the file, starts the MQTT connection thread).
    pub fn build(&self) -> Result<Box<dyn Sink>, SinkError> {
        self.build_with(None)
    }

    /// [`build`](Self::build), with the daemon's metrics for the sinks that publish the
    /// streams' status (the MQTT sink's dashboard topics).
    pub fn build_with(&self, metrics: Option<&crate::metrics::Metrics>) -> Result<Box<dyn Sink>, SinkError> {
        let name = self.name();
        Ok(match self {
            SinkConfig::Stdout(_) => Box::new(StdoutSink::new(name)),
            SinkConfig::File(c) => Box::new(FileSink::open(name, &c.path, c.fsync)?),
            SinkConfig::Mqtt(c) => Box::new(MqttSink::start_with(name, c, metrics.cloned())?),
            SinkConfig::Frames(_) => {
                return Err(SinkError::Config(
                    "a frames sink is fed by the pipeline (sink::frames::Frames), not built as an event sink".into(),
                ))
            }
        })
    }
}

/// Builds all configured sinks, making duplicate names unique ("file", "file-2", ...) so
/// metric labels do not collide.
pub fn build_all(configs: &[SinkConfig]) -> Result<Vec<Box<dyn Sink>>, SinkError> {
    build_all_with(configs, None)
}

/// [`build_all`] with the daemon's metrics (see [`SinkConfig::build_with`]).
pub fn build_all_with(
    configs: &[SinkConfig],
    metrics: Option<&crate::metrics::Metrics>,
) -> Result<Vec<Box<dyn Sink>>, SinkError> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(configs.len());
    for c in configs.iter().filter(|c| !matches!(c, SinkConfig::Frames(_))) {
        let mut cfg = c.clone();
        let base = cfg.name();
        let mut name = base.clone();
        let mut i = 2;
        while !seen.insert(name.clone()) {
            name = format!("{base}-{i}");
            i += 1;
        }
        match &mut cfg {
            SinkConfig::Stdout(c) => c.name = Some(name),
            SinkConfig::File(c) => c.name = Some(name),
            SinkConfig::Mqtt(c) => c.name = Some(name),
            SinkConfig::Frames(c) => c.name = Some(name),
        }
        out.push(cfg.build_with(metrics)?);
    }
    Ok(out)
}

/// The `frames` sinks among `configs`, in order.
pub fn frames_configs(configs: &[SinkConfig]) -> Vec<frames::FramesSinkConfig> {
    configs
        .iter()
        .filter_map(|c| match c {
            SinkConfig::Frames(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

/// Counters of one sink, shared between the fan-out, its worker and the metrics.
struct Counters {
    name: String,
    sent: AtomicU64,
    failed: AtomicU64,
    /// Dropped because the fan-out queue was full.
    overflow: AtomicU64,
    /// Dropped inside the sink (last value of `Sink::dropped`).
    internal_dropped: AtomicU64,
    /// The sink's drops by reason (last value of `Sink::drops`).
    internal_drops: std::sync::Mutex<Vec<(&'static str, u64)>>,
    backlog: AtomicU64,
    reopened: AtomicU64,
    drop_log: LogLimiter,
    fail_log: LogLimiter,
}

/// The [`StatsHandle`] reading `entries` (each sink's counters and fan-out queue).
fn stats_handle(entries: Arc<Vec<(Arc<Counters>, Receiver<Msg>)>>) -> StatsHandle {
    StatsHandle::new(move || {
        entries
            .iter()
            .map(|(c, rx)| SinkStats {
                name: c.name.clone(),
                queue_depth: rx.len(),
                sent: c.sent.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                dropped: c.overflow.load(Ordering::Relaxed) + c.internal_dropped.load(Ordering::Relaxed),
                dropped_by: {
                    let inner = match c.internal_drops.lock() {
                        Ok(g) => g.clone(),
                        Err(p) => p.into_inner().clone(),
                    };
                    reason::ALL
                        .iter()
                        .map(|r| {
                            let own: u64 = inner.iter().filter(|(k, _)| k == r).map(|(_, v)| v).sum();
                            let fanout = if *r == reason::QUEUE_FULL { c.overflow.load(Ordering::Relaxed) } else { 0 };
                            (*r, own + fanout)
                        })
                        .collect()
                },
                backlog: c.backlog.load(Ordering::Relaxed) as usize,
                reopened: c.reopened.load(Ordering::Relaxed),
            })
            .collect()
    })
}

/// An event with the id the fan-out gave it, shared by every sink's queue.
struct Stamped {
    id: String,
    event: Event,
}

enum Msg {
    Event(Arc<Stamped>),
}

enum Ctrl {
    Reopen,
    Shutdown(Instant),
}

/// What happened to one sink at shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkShutdown {
    /// Sink name.
    pub name: String,
    /// The worker finished (drained its queue and flushed) before the deadline.
    pub finished: bool,
    /// Events left undelivered in the queue (or the sink's backlog) at the end.
    pub undelivered: usize,
    /// The final flush error, if any.
    pub error: Option<String>,
}

/// Result of [`Fanout::shutdown`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    /// One entry per sink, in configuration order.
    pub sinks: Vec<SinkShutdown>,
}

impl ShutdownReport {
    /// True when every sink finished with nothing undelivered.
    pub fn clean(&self) -> bool {
        self.sinks.iter().all(|s| s.finished && s.undelivered == 0 && s.error.is_none())
    }
}

struct Worker {
    counters: Arc<Counters>,
    tx: Sender<Msg>,
    ctrl: Sender<Ctrl>,
    done: Receiver<SinkShutdown>,
    thread: Option<JoinHandle<()>>,
}

/// Owns the sinks, each on its own thread behind a bounded queue.
pub struct Fanout {
    workers: Vec<Worker>,
    stats: StatsHandle,
    shut: bool,
}

impl Fanout {
    /// Starts one thread per sink, each with a queue of `queue_size` events (at least 1).
    pub fn new(sinks: Vec<Box<dyn Sink>>, queue_size: usize) -> Result<Fanout, SinkError> {
        let mut workers = Vec::with_capacity(sinks.len());
        let mut entries = Vec::with_capacity(sinks.len());
        for sink in sinks {
            let counters = Arc::new(Counters {
                name: sink.name().to_string(),
                sent: AtomicU64::new(0),
                failed: AtomicU64::new(0),
                overflow: AtomicU64::new(0),
                internal_dropped: AtomicU64::new(0),
                internal_drops: std::sync::Mutex::new(Vec::new()),
                backlog: AtomicU64::new(0),
                reopened: AtomicU64::new(0),
                drop_log: LogLimiter::new(Duration::from_secs(10)),
                fail_log: LogLimiter::new(Duration::from_secs(10)),
            });
            let (tx, rx) = bounded(queue_size.max(1));
            let (ctrl_tx, ctrl_rx) = bounded(16);
            let (done_tx, done_rx) = bounded(1);
            entries.push((counters.clone(), rx.clone()));
            let c = counters.clone();
            let thread = std::thread::Builder::new()
                .name(format!("sink-{}", counters.name))
                .spawn(move || run_worker(sink, rx, ctrl_rx, done_tx, c))
                .map_err(SinkError::Thread)?;
            workers.push(Worker { counters, tx, ctrl: ctrl_tx, done: done_rx, thread: Some(thread) });
        }
        Ok(Fanout { workers, stats: stats_handle(Arc::new(entries)), shut: false })
    }

    /// Queues `ev` for every sink; never blocks. A full queue drops the event for that sink
    /// (counted in `dropped`, logged at most every 10 s per sink).
    pub fn send(&self, ev: &Event) {
        let ev = Arc::new(Stamped { id: crate::base::time::new_event_id(), event: ev.clone() });
        for w in &self.workers {
            match w.tx.try_send(Msg::Event(ev.clone())) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    w.counters.overflow.fetch_add(1, Ordering::Relaxed);
                    let name = &w.counters.name;
                    w.counters.drop_log.hit(|more| {
                        log::warn!(
                            "sink {name}: queue full, dropping event ({more} more dropped since \
                             the last message); the sink is slow or stuck"
                        )
                    });
                }
            }
        }
    }

    /// Asks every sink to reopen (SIGHUP). Returns immediately; the reopen happens on each
    /// sink's thread before its next event.
    pub fn reopen(&self) {
        for w in &self.workers {
            if w.ctrl.try_send(Ctrl::Reopen).is_err() {
                log::warn!("sink {}: reopen request not queued", w.counters.name);
            }
        }
    }

    /// Names of the sinks, in order.
    pub fn names(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.counters.name.clone()).collect()
    }

    /// Current statistics.
    pub fn stats(&self) -> Vec<SinkStats> {
        self.stats.snapshot()
    }

    /// A handle for reading statistics from another thread (the metrics server).
    pub fn stats_handle(&self) -> StatsHandle {
        self.stats.clone()
    }

    /// Lets each sink drain its queue and flush until `deadline`. Sinks still busy at the
    /// deadline are abandoned (their threads detached) and reported as not finished.
    pub fn shutdown(mut self, deadline: Instant) -> ShutdownReport {
        self.shut = true;
        for w in &self.workers {
            let _ = w.ctrl.try_send(Ctrl::Shutdown(deadline));
        }
        let mut report = ShutdownReport::default();
        for w in &mut self.workers {
            // A little grace past the deadline for the worker to report back.
            let wait_until = deadline + Duration::from_millis(200);
            match w.done.recv_deadline(wait_until) {
                Ok(r) => {
                    if let Some(t) = w.thread.take() {
                        let _ = t.join();
                    }
                    report.sinks.push(r);
                }
                Err(_) => {
                    log::warn!("sink {}: did not finish by the shutdown deadline; abandoning it", w.counters.name);
                    report.sinks.push(SinkShutdown {
                        name: w.counters.name.clone(),
                        finished: false,
                        undelivered: w.tx.len() + 1,
                        error: Some("deadline passed while the sink was busy".into()),
                    });
                }
            }
        }
        report
    }
}

impl Drop for Fanout {
    fn drop(&mut self) {
        if !self.shut {
            let deadline = Instant::now() + Duration::from_secs(1);
            for w in &self.workers {
                let _ = w.ctrl.try_send(Ctrl::Shutdown(deadline));
            }
        }
    }
}

fn run_worker(
    mut sink: Box<dyn Sink>,
    rx: Receiver<Msg>,
    ctrl: Receiver<Ctrl>,
    done: Sender<SinkShutdown>,
    c: Arc<Counters>,
) {
    let refresh = |sink: &mut Box<dyn Sink>| {
        let late = sink.take_late_deliveries();
        if late > 0 {
            c.sent.fetch_add(late, Ordering::Relaxed);
        }
        c.internal_dropped.store(sink.dropped(), Ordering::Relaxed);
        let drops = sink.drops();
        if !drops.is_empty() {
            match c.internal_drops.lock() {
                Ok(mut g) => *g = drops,
                Err(p) => *p.into_inner() = drops,
            }
        }
        c.backlog.store(sink.backlog() as u64, Ordering::Relaxed);
        c.reopened.store(sink.reopened(), Ordering::Relaxed);
    };
    let deliver = |sink: &mut Box<dyn Sink>, ev: &Stamped| {
        match sink.send_with_id(&ev.id, &ev.event) {
            Ok(()) => {
                c.sent.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                c.failed.fetch_add(1, Ordering::Relaxed);
                c.fail_log.hit(|more| log::warn!("sink {}: {e} ({more} more failures since the last message)", c.name));
            }
        }
        refresh(sink);
    };
    let c_name = c.name.clone();
    let reopen = |sink: &mut Box<dyn Sink>, name: &str| {
        if let Err(e) = sink.reopen() {
            log::warn!("sink {name}: reopen failed: {e}; will retry on the next event");
        }
    };
    let deadline = loop {
        crossbeam_channel::select! {
            recv(ctrl) -> m => match m {
                Ok(Ctrl::Reopen) => reopen(&mut sink, &c_name),
                Ok(Ctrl::Shutdown(d)) => break d,
                Err(_) => break Instant::now(),
            },
            recv(rx) -> m => match m {
                Ok(Msg::Event(ev)) => {
                    // Control messages sent before this event take effect first, so events
                    // sent after `Fanout::reopen` land in the reopened file.
                    let mut stop = None;
                    while let Ok(c) = ctrl.try_recv() {
                        match c {
                            Ctrl::Reopen => reopen(&mut sink, &c_name),
                            Ctrl::Shutdown(d) => stop = Some(d),
                        }
                    }
                    deliver(&mut sink, &ev);
                    if let Some(d) = stop {
                        break d;
                    }
                }
                Err(_) => break Instant::now(),
            },
            default(Duration::from_millis(500)) => {
                // Retries of kept events, and counters that change without sends (MQTT acks).
                sink.poll();
                refresh(&mut sink);
            }
        }
    };
    while Instant::now() < deadline {
        match rx.try_recv() {
            Ok(Msg::Event(ev)) => deliver(&mut sink, &ev),
            Err(_) => break,
        }
    }
    let error = sink.flush(deadline).err().map(|e| e.to_string());
    refresh(&mut sink);
    let undelivered = rx.len() + sink.backlog();
    let name = c.name.clone();
    // Dropping the sink closes it (the MQTT sink disconnects) before we report.
    drop(sink);
    let _ = done.send(SinkShutdown { name, finished: true, undelivered, error });
}

#[cfg(test)]
mod tests;
