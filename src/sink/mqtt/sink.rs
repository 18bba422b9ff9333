//! The [`MqttSink`] itself: accepts events into the spool and the shared backlog, and owns the
//! connection thread.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{Client, QoS};

use super::config::MqttSinkConfig;
use super::connection::ConnThread;
use super::discovery::Dashboard;
use super::registry::{attach, next_generation, now_ms, BState, Backlog, Item};
use super::{BACKOFF_MIN, DEAD_LETTER_FILE, MEM_SEQ_BASE};
use crate::alert::event::Event;
use crate::base::clock::{Clock, RealClock};
use crate::metrics::Metrics;
use crate::sink::{LogLimiter, Sink, SinkError};

/// State of one sink shared with its connection thread.
pub(super) struct Shared {
    pub(super) backlog: Arc<Backlog>,
    pub(super) gen: u64,
    pub(super) stop: AtomicBool,
    /// Deadline of the last `flush`, which also bounds the clean close that follows it.
    pub(super) close_by: Mutex<Option<Instant>>,
    pub(super) connected: AtomicBool,
    pub(super) dropped: AtomicU64,
    /// Drops by reason (`crate::sink::reason`), cumulative.
    pub(super) drops: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    pub(super) connects: AtomicU64,
    pub(super) drop_log: LogLimiter,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, BState> {
        self.backlog.lock()
    }

    pub(super) fn count_dropped(&self, name: &str, n: u64, reason: &'static str, why: &str) {
        if n == 0 {
            return;
        }
        self.dropped.fetch_add(n, Ordering::Relaxed);
        match self.drops.lock() {
            Ok(mut m) => *m.entry(reason).or_default() += n,
            Err(p) => *p.into_inner().entry(reason).or_default() += n,
        }
        self.drop_log.hit(|more| {
            log::warn!("sink {name}: dropped {n} of the oldest waiting events ({why}; {more} more drops since the last message)")
        });
    }
}

/// Counters of the MQTT sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MqttStats {
    /// Events acknowledged by the broker (PUBACK), or written for QoS 0.
    pub acked: u64,
    /// Events waiting (buffered or in flight).
    pub pending: usize,
    /// Events dropped because the buffer or spool was full or the events too old.
    pub dropped: u64,
    /// Successful connects (CONNACKs) so far.
    pub connects: u64,
    /// Whether the connection is up.
    pub connected: bool,
}

/// The MQTT sink. Its connection thread runs from [`MqttSink::start`] until drop.
pub struct MqttSink {
    pub(super) name: String,
    pub(super) cfg: MqttSinkConfig,
    pub(super) spool_dir: Option<PathBuf>,
    pub(super) shared: Arc<Shared>,
    pub(super) thread: Option<JoinHandle<()>>,
    /// The stream status the dashboard topics come from, when the sink keeps its own (no
    /// registry given): fed from the events it is sent.
    pub(super) own_status: Option<Metrics>,
}

impl MqttSink {
    /// Validates `cfg`, reads secrets and TLS files, opens (or takes over) the spool, and
    /// starts the connection thread (which connects and reconnects in the background; an
    /// unreachable broker is not an error here). The dashboard topics, if on, follow the
    /// events sent to this sink (no scores); [`start_with`](Self::start_with) gives them the
    /// daemon's metrics.
    pub fn start(name: impl Into<String>, cfg: &MqttSinkConfig) -> Result<Self, SinkError> {
        Self::start_with(name, cfg, None)
    }

    /// [`start`](Self::start), with the dashboard topics (`dashboard`/`discovery`) read from
    /// the per-stream status of `metrics` (which the alert stage keeps: scores included).
    pub fn start_with(
        name: impl Into<String>,
        cfg: &MqttSinkConfig,
        metrics: Option<Metrics>,
    ) -> Result<Self, SinkError> {
        Self::start_with_clock(name, cfg, metrics, Arc::new(RealClock))
    }

    /// [`start_with`](Self::start_with) on `clock`: the connection's ack timeout, close wait,
    /// reconnect back-off and re-spool period, and the sweeper's back-off, read it (a
    /// [`SimClock`](crate::base::clock::SimClock) runs them without waiting).
    pub fn start_with_clock(
        name: impl Into<String>,
        cfg: &MqttSinkConfig,
        metrics: Option<Metrics>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, SinkError> {
        cfg.validate()?;
        let options = cfg.options()?;
        let name = name.into();
        let spool_dir = cfg.spool_path(&name)?;
        let key = match &spool_dir {
            Some(d) => format!("spool:{}", d.display()),
            None => {
                if cfg.spool_max_bytes != 0 {
                    log::warn!(
                        "sink {name}: no spool (set spool_dir, or run under systemd with \
                         StateDirectory=): events waiting for the broker are kept in memory only \
                         and lost if the daemon stops"
                    );
                }
                format!("mem:{name}@{}:{}/{}", cfg.host, cfg.port, cfg.client_id)
            }
        };
        let gen = next_generation();
        let backlog = attach(&name, key, spool_dir.as_deref(), cfg.spool_max_bytes, gen)?;
        let shared = Arc::new(Shared {
            backlog,
            gen,
            stop: AtomicBool::new(false),
            close_by: Mutex::new(None),
            connected: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            drops: Mutex::new(Default::default()),
            connects: AtomicU64::new(0),
            drop_log: LogLimiter::new(Duration::from_secs(10)),
        });
        let corrupt = shared.lock().spool.as_mut().map_or(0, |sp| sp.take_corrupt());
        shared.count_dropped(&name, corrupt, crate::sink::reason::SPOOL_CORRUPT, "corrupt records in the spool");
        let (client, connection) = Client::new(options, 16);
        let own_status = (cfg.dashboard_on() && metrics.is_none()).then(Metrics::new);
        if let (true, Some(m)) = (cfg.dashboard_on(), &metrics) {
            // Only with the daemon's registry: it knows every configured stream.
            let s = shared.clone();
            let sweep = super::sweep::spawn(name.clone(), cfg.clone(), m.clone(), clock.clone(), move || {
                s.stop.load(Ordering::SeqCst)
            });
            if let Err(e) = sweep {
                detach(&shared);
                return Err(SinkError::Thread(e));
            }
        }
        let dash =
            cfg.dashboard_on().then(|| Dashboard::new(cfg, metrics.or_else(|| own_status.clone()).unwrap_or_default()));
        let conn = ConnThread {
            dash,
            name: name.clone(),
            cfg: cfg.clone(),
            status_topic: cfg.status_topic(),
            qos: if cfg.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce },
            shared: shared.clone(),
            client,
            connection,
            clock,
            inflight: HashMap::new(),
            sent: HashSet::new(),
            next_pkid: 0,
            connected: false,
            backoff: BACKOFF_MIN,
            err_log: LogLimiter::new(Duration::from_secs(30)),
            suspect: None,
            dead_letter: spool_dir.as_ref().map(|d| d.join(DEAD_LETTER_FILE)),
            last_respool: None,
            respool_log: LogLimiter::new(Duration::from_secs(30)),
        };
        let thread = match std::thread::Builder::new().name(format!("mqtt-{name}")).spawn(move || conn.run()) {
            Ok(t) => t,
            Err(e) => {
                detach(&shared);
                return Err(SinkError::Thread(e));
            }
        };
        Ok(MqttSink { name, cfg: cfg.clone(), spool_dir, shared, thread: Some(thread), own_status })
    }

    /// Current counters.
    pub fn stats(&self) -> MqttStats {
        let st = self.shared.lock();
        MqttStats {
            acked: st.acked,
            pending: st.queue.len(),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            connects: self.shared.connects.load(Ordering::Relaxed),
            connected: self.shared.connected.load(Ordering::Relaxed),
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &MqttSinkConfig {
        &self.cfg
    }

    /// The spool directory, if the sink has one.
    pub fn spool_dir(&self) -> Option<&Path> {
        self.spool_dir.as_deref()
    }
}

/// Removes a sink from its backlog's attached list (the previous sink, if any, publishes
/// again).
pub(super) fn detach(shared: &Shared) {
    let mut st = shared.lock();
    st.attached.retain(|g| *g != shared.gen);
    if let Some(sp) = st.spool.as_mut() {
        sp.persist_ack(true);
    }
}

impl Sink for MqttSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        self.send_with_id(&crate::base::time::new_event_id(), ev)
    }

    fn send_with_id(&mut self, event_id: &str, ev: &Event) -> Result<(), SinkError> {
        if let Some(m) = &self.own_status {
            m.stream(ev.stream()).status.event(ev);
        }
        let payload = ev.to_json_with_id(event_id).into_bytes();
        let stream = ev.stream().to_string();
        let written_ms = now_ms();
        let mut st = self.shared.lock();
        let buffer = self.cfg.buffer;
        let mut over = 0;
        while st.queue.len() >= buffer {
            let Some(seq) = st.queue.front().map(|it| it.seq) else { break };
            st.finish(seq);
            over += 1;
        }
        let old = st.expire(self.cfg.spool_max_age_s);
        let mut spool_full = 0;
        // Events kept in memory by an earlier failure go to disk first (order), if they can.
        let mut err = None;
        if st.memory_only() > 0 {
            let (written, dropped, e) = st.respool(&HashSet::new());
            spool_full += dropped;
            err = e;
            if written > 0 {
                log::info!("sink {}: {written} event(s) kept in memory are now in the spool", self.name);
            }
        }
        let append = match (st.spool.as_mut(), &err) {
            (Some(sp), None) => Some(sp.append(&stream, &payload, written_ms)),
            _ => None,
        };
        let seq = match append {
            Some(Ok((seq, below))) => {
                if below > 0 {
                    spool_full += st.drop_spooled_below(below);
                }
                seq
            }
            other => {
                if let Some(Err(e)) = other {
                    err = Some(e);
                }
                // No spool, or the append failed (disk full): memory only, written to the
                // spool later when it can be (see `respool`).
                let base = if st.spool.is_some() { MEM_SEQ_BASE } else { 0 };
                st.mem_seq += 1;
                base + st.mem_seq - 1
            }
        };
        st.queue.push_back(Item { seq, written_ms, stream, payload });
        drop(st);
        let name = &self.name;
        use crate::sink::reason;
        self.shared.count_dropped(
            name,
            over,
            reason::BUFFER_FULL,
            &format!("buffer of {buffer} events full; broker unreachable?"),
        );
        self.shared.count_dropped(
            name,
            old,
            reason::TOO_OLD,
            &format!("older than spool_max_age_s = {}", self.cfg.spool_max_age_s),
        );
        self.shared.count_dropped(
            name,
            spool_full,
            reason::SPOOL_FULL,
            &format!("spool full at spool_max_bytes = {}; broker unreachable?", self.cfg.spool_max_bytes),
        );
        match err {
            Some(e) => Err(SinkError::NotDurable(e)),
            None => Ok(()),
        }
    }

    fn flush(&mut self, deadline: Instant) -> Result<(), SinkError> {
        if let Ok(mut c) = self.shared.close_by.lock() {
            *c = Some(deadline);
        }
        let mut st = self.shared.lock();
        loop {
            if st.attached.last() != Some(&self.shared.gen) {
                // Handed over: the sink that replaced this one delivers these events.
                return Ok(());
            }
            if st.queue.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                // What is on disk is sent at the next start; what is not is lost: say which,
                // and count the lost ones.
                let mut respooled = 0;
                if st.memory_only() > 0 {
                    let (w, dropped, _) = st.respool(&HashSet::new());
                    respooled = w;
                    self.shared.count_dropped(
                        &self.name,
                        dropped,
                        crate::sink::reason::SPOOL_FULL,
                        "spool full at shutdown",
                    );
                }
                let lost: Vec<u64> = match &self.spool_dir {
                    Some(_) => st.queue.iter().filter(|it| it.seq >= MEM_SEQ_BASE).map(|it| it.seq).collect(),
                    None => st.queue.iter().map(|it| it.seq).collect(),
                };
                for seq in &lost {
                    st.finish(*seq);
                }
                let on_disk = st.queue.len();
                drop(st);
                let lost = lost.len();
                return Err(match &self.spool_dir {
                    Some(dir) => {
                        self.shared.count_dropped(
                            &self.name,
                            lost as u64,
                            crate::sink::reason::DISK_FULL,
                            "not written to the spool (disk full) by shutdown",
                        );
                        if respooled > 0 {
                            log::info!(
                                "sink {}: {respooled} event(s) kept in memory written to the spool at shutdown",
                                self.name
                            );
                        }
                        SinkError::Spooled { pending: on_disk, lost, dir: dir.clone() }
                    }
                    None => {
                        self.shared.count_dropped(&self.name, lost as u64, crate::sink::reason::SHUTDOWN, "no spool");
                        SinkError::Timeout { pending: lost }
                    }
                });
            }
            st = match self.shared.backlog.changed.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn drops(&self) -> Vec<(&'static str, u64)> {
        match self.shared.drops.lock() {
            Ok(m) => m.iter().map(|(k, v)| (*k, *v)).collect(),
            Err(p) => p.into_inner().iter().map(|(k, v)| (*k, *v)).collect(),
        }
    }

    fn backlog(&self) -> usize {
        let st = self.shared.lock();
        if st.attached.last() == Some(&self.shared.gen) {
            st.queue.len()
        } else {
            0
        }
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        detach(&self.shared);
    }
}
