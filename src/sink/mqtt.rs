//! MQTT sink (rumqttc, MQTT 3.1.1, QoS 1) with at-least-once delivery across broker restarts.
//!
//! Topics: events go to `<prefix>/<client_id>/events/<stream>`; `<prefix>/<client_id>/status`
//! holds a retained "online" published at every connect, and the last will (retained
//! "offline") the broker publishes if the connection dies uncleanly. A clean shutdown
//! publishes "offline" itself.
//!
//! Delivery: every accepted event waits in a bounded in-process buffer until its PUBACK
//! arrives. The sink assigns packet ids itself and injects publishes into rumqttc's
//! `pending` queue, so a PUBACK maps exactly to one event. On any disconnect, everything not
//! acknowledged is re-sent, in order, after the next CONNACK (clean session: rumqttc would
//! otherwise drop its unacked publishes). A full buffer drops the oldest event (counted,
//! logged). Duplicates are possible when a PUBACK is lost with the connection.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, Connection, Event as MqEvent, LastWill, MqttOptions, Packet, Publish, QoS, RecvTimeoutError, Request,
    TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};

use super::{LogLimiter, Sink, SinkError};
use crate::alert::Event;

/// Publishes in flight at once (also rumqttc's `inflight`, which bounds valid packet ids).
const MAX_INFLIGHT: u16 = 100;
/// How long the connection thread waits for network activity before looking for new events.
const POLL: Duration = Duration::from_millis(25);
/// A publish unacknowledged this long on a live connection forces a reconnect (a stuck
/// packet id would otherwise block the queue forever).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnect back-off bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a clean shutdown waits for the "offline" status to be acknowledged.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// `kind = "mqtt"`.
///
/// ```toml
/// [[sink]]
/// kind = "mqtt"
/// host = "broker.local"
/// port = 8883
/// client_id = "cam-box-1"
/// topic_prefix = "gradwatch"
/// qos = 1
/// username = "gradwatch"
/// password = "secret"
/// tls = { ca_file = "/etc/gradwatch/ca.pem", client_cert = "/etc/gradwatch/c.pem", client_key = "/etc/gradwatch/c.key" }
/// buffer = 10000
/// keep_alive_s = 30
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSinkConfig {
    /// Name in logs/metrics. Default "mqtt".
    #[serde(default)]
    pub name: Option<String>,
    /// Broker host name or address (required).
    pub host: String,
    /// Broker port. Default 1883.
    #[serde(default = "default_port")]
    pub port: u16,
    /// MQTT client id, also the second topic level. Default "gradwatch".
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// First topic level. Default "gradwatch".
    #[serde(default = "default_prefix")]
    pub topic_prefix: String,
    /// QoS of event publishes: 1 (at least once, default) or 0 (at most once, no buffering
    /// beyond the socket).
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// User name. Default none.
    #[serde(default)]
    pub username: Option<String>,
    /// Password (only with `username`). Default none.
    #[serde(default)]
    pub password: Option<String>,
    /// TLS settings; absent = plain TCP.
    #[serde(default)]
    pub tls: Option<MqttTlsConfig>,
    /// Events kept while the broker is unreachable; the oldest is dropped beyond this.
    /// Default 10000.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// MQTT keep-alive in seconds (1..=65535). Default 30.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_s: u64,
}

/// TLS for the MQTT connection (rustls, ring provider).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTlsConfig {
    /// PEM file with the CA certificate(s) that signed the broker's certificate (required).
    pub ca_file: PathBuf,
    /// PEM client certificate chain for mutual TLS. Default none.
    #[serde(default)]
    pub client_cert: Option<PathBuf>,
    /// PEM private key of `client_cert`. Default none.
    #[serde(default)]
    pub client_key: Option<PathBuf>,
}

fn default_port() -> u16 {
    1883
}
fn default_client_id() -> String {
    "gradwatch".into()
}
fn default_prefix() -> String {
    "gradwatch".into()
}
fn default_qos() -> u8 {
    1
}
fn default_buffer() -> usize {
    10_000
}
fn default_keep_alive() -> u64 {
    30
}

impl MqttSinkConfig {
    /// A config with defaults for everything but the broker address.
    pub fn new(host: impl Into<String>, port: u16, client_id: impl Into<String>) -> Self {
        MqttSinkConfig {
            name: None,
            host: host.into(),
            port,
            client_id: client_id.into(),
            topic_prefix: default_prefix(),
            qos: default_qos(),
            username: None,
            password: None,
            tls: None,
            buffer: default_buffer(),
            keep_alive_s: default_keep_alive(),
        }
    }

    /// Topic of the retained status ("online" / "offline").
    pub fn status_topic(&self) -> String {
        format!("{}/{}/status", self.topic_prefix, self.client_id)
    }

    /// Topic of the events of `stream` (the stream name with `/ + #` and NUL replaced by `_`).
    pub fn event_topic(&self, stream: &str) -> String {
        format!("{}/{}/events/{}", self.topic_prefix, self.client_id, topic_level(stream))
    }

    fn validate(&self) -> Result<(), SinkError> {
        let bad = |m: String| Err(SinkError::Config(m));
        if self.host.is_empty() {
            return bad("mqtt host is empty".into());
        }
        for (what, v) in [("client_id", &self.client_id), ("topic_prefix", &self.topic_prefix)] {
            if v.is_empty() || v.contains(['/', '+', '#', '\0']) {
                return bad(format!("mqtt {what} = {v:?} must be non-empty without '/', '+', '#'"));
            }
        }
        if self.qos > 1 {
            return bad(format!("mqtt qos = {} not supported; use 0 or 1", self.qos));
        }
        if self.buffer == 0 {
            return bad("mqtt buffer must be at least 1".into());
        }
        if !(1..=65_535).contains(&self.keep_alive_s) {
            return bad(format!("mqtt keep_alive_s = {} must be in 1..=65535", self.keep_alive_s));
        }
        if self.password.is_some() && self.username.is_none() {
            return bad("mqtt password given without username".into());
        }
        if let Some(t) = &self.tls {
            if t.client_cert.is_some() != t.client_key.is_some() {
                return bad("mqtt tls: client_cert and client_key go together".into());
            }
        }
        Ok(())
    }

    fn options(&self) -> Result<MqttOptions, SinkError> {
        let mut o = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive_s))
            .set_clean_session(true)
            .set_inflight(MAX_INFLIGHT)
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_last_will(LastWill::new(self.status_topic(), "offline", QoS::AtLeastOnce, true));
        if let Some(u) = &self.username {
            o.set_credentials(u.clone(), self.password.clone().unwrap_or_default());
        }
        if let Some(t) = &self.tls {
            install_ring_provider();
            let read = |p: &PathBuf| std::fs::read(p).map_err(|e| SinkError::Open { path: p.clone(), source: e });
            let ca = read(&t.ca_file)?;
            let client_auth = match (&t.client_cert, &t.client_key) {
                (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
                _ => None,
            };
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple { ca, alpn: None, client_auth }));
        }
        Ok(o)
    }
}

/// Installs rustls's ring provider as the process default (once; an already installed
/// provider is kept).
pub fn install_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One MQTT topic level from a stream name.
fn topic_level(stream: &str) -> String {
    if stream.is_empty() {
        return "_".into();
    }
    stream
        .chars()
        .map(|c| match c {
            '/' | '+' | '#' | '\0' => '_',
            c => c,
        })
        .collect()
}

/// An event accepted by the sink and not yet acknowledged.
struct Item {
    id: u64,
    topic: String,
    payload: Vec<u8>,
    /// Packet id while published on the current connection.
    pkid: Option<u16>,
}

/// What a packet id in flight stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flight {
    Event(u64),
    Status,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Item>,
    next_id: u64,
    connected: bool,
    acked: u64,
}

struct Shared {
    state: Mutex<State>,
    /// Signalled when the queue shrinks (flush waits on it).
    changed: Condvar,
    stop: AtomicBool,
    /// Deadline of the last `flush`, which also bounds the clean close that follows it.
    close_by: Mutex<Option<Instant>>,
    dropped: AtomicU64,
    connects: AtomicU64,
    drop_log: LogLimiter,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// Counters of the MQTT sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MqttStats {
    /// Events acknowledged by the broker (PUBACK), or written for QoS 0.
    pub acked: u64,
    /// Events waiting (buffered or in flight).
    pub pending: usize,
    /// Events dropped because the buffer was full.
    pub dropped: u64,
    /// Successful connects (CONNACKs) so far.
    pub connects: u64,
    /// Whether the connection is up.
    pub connected: bool,
}

/// The MQTT sink. Its connection thread runs from [`MqttSink::start`] until drop.
pub struct MqttSink {
    name: String,
    cfg: MqttSinkConfig,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl MqttSink {
    /// Validates `cfg`, reads TLS files, and starts the connection thread (which connects
    /// and reconnects in the background; an unreachable broker is not an error here).
    pub fn start(name: impl Into<String>, cfg: &MqttSinkConfig) -> Result<Self, SinkError> {
        cfg.validate()?;
        let options = cfg.options()?;
        let name = name.into();
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            stop: AtomicBool::new(false),
            close_by: Mutex::new(None),
            dropped: AtomicU64::new(0),
            connects: AtomicU64::new(0),
            drop_log: LogLimiter::new(Duration::from_secs(10)),
        });
        let (client, connection) = Client::new(options, 16);
        let conn = ConnThread {
            name: name.clone(),
            status_topic: cfg.status_topic(),
            qos: if cfg.qos == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce },
            shared: shared.clone(),
            client,
            connection,
            inflight: HashMap::new(),
            next_pkid: 0,
            connected: false,
            backoff: BACKOFF_MIN,
            err_log: LogLimiter::new(Duration::from_secs(30)),
        };
        let thread = std::thread::Builder::new()
            .name(format!("mqtt-{name}"))
            .spawn(move || conn.run())
            .map_err(SinkError::Thread)?;
        Ok(MqttSink { name, cfg: cfg.clone(), shared, thread: Some(thread) })
    }

    /// Current counters.
    pub fn stats(&self) -> MqttStats {
        let st = self.shared.lock();
        MqttStats {
            acked: st.acked,
            pending: st.queue.len(),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            connects: self.shared.connects.load(Ordering::Relaxed),
            connected: st.connected,
        }
    }

    /// The configuration in use.
    pub fn config(&self) -> &MqttSinkConfig {
        &self.cfg
    }
}

impl Sink for MqttSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        let topic = self.cfg.event_topic(ev.stream());
        let payload = ev.to_json().into_bytes();
        let mut st = self.shared.lock();
        while st.queue.len() >= self.cfg.buffer {
            st.queue.pop_front();
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            let name = &self.name;
            self.shared.drop_log.hit(|more| {
                log::warn!(
                    "sink {name}: buffer of {} events full (broker unreachable?), dropping the \
                     oldest ({more} more since the last message)",
                    self.cfg.buffer
                )
            });
        }
        let id = st.next_id;
        st.next_id += 1;
        st.queue.push_back(Item { id, topic, payload, pkid: None });
        Ok(())
    }

    fn flush(&mut self, deadline: Instant) -> Result<(), SinkError> {
        if let Ok(mut c) = self.shared.close_by.lock() {
            *c = Some(deadline);
        }
        let mut st = self.shared.lock();
        loop {
            if st.queue.is_empty() {
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(SinkError::Timeout { pending: st.queue.len() });
            }
            st = match self.shared.changed.wait_timeout(st, deadline - now) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    fn backlog(&self) -> usize {
        self.shared.lock().queue.len()
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// State owned by the connection thread.
struct ConnThread {
    name: String,
    status_topic: String,
    qos: QoS,
    shared: Arc<Shared>,
    client: Client,
    connection: Connection,
    /// Packet id -> what it carries and when it was sent.
    inflight: HashMap<u16, (Flight, Instant)>,
    next_pkid: u16,
    connected: bool,
    backoff: Duration,
    err_log: LogLimiter,
}

impl ConnThread {
    fn run(mut self) {
        let mut closing: Option<Instant> = None;
        loop {
            if self.shared.stop.load(Ordering::SeqCst) && closing.is_none() {
                if !self.connected {
                    break;
                }
                // Clean shutdown: say "offline" ourselves (the will only fires on unclean
                // disconnects), then DISCONNECT once it is acknowledged or we run out of time.
                self.publish(Flight::Status, self.status_topic.clone(), b"offline".to_vec());
                closing = Some(Instant::now() + CLOSE_WAIT);
            }
            if let Some(until) = closing {
                let status_acked = !self.inflight.values().any(|(f, _)| *f == Flight::Status);
                if status_acked || Instant::now() >= until || !self.connected {
                    let _ = self.client.try_disconnect();
                    // Drive the loop until the DISCONNECT is written (or it fails).
                    for _ in 0..40 {
                        match self.connection.recv_timeout(POLL) {
                            Ok(Ok(MqEvent::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
                            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                            _ => break,
                        }
                    }
                    break;
                }
            }
            if self.connected && closing.is_none() {
                self.fill();
                self.check_ack_timeout();
            }
            let res = if !self.connected || !self.connection.eventloop.pending.is_empty() {
                // Connecting, or rumqttc has our publishes to write: block (never cancel a
                // half-written publish).
                self.connection.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                self.connection.recv_timeout(POLL)
            };
            match res {
                Ok(Ok(ev)) => self.on_event(ev),
                Ok(Err(e)) => self.on_error(e.to_string(), closing.is_some()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        let mut st = self.shared.lock();
        st.connected = false;
        drop(st);
        self.shared.changed.notify_all();
    }

    fn on_event(&mut self, ev: MqEvent) {
        match ev {
            MqEvent::Incoming(Packet::ConnAck(_)) => {
                log::info!("sink {}: connected to the MQTT broker", self.name);
                self.connected = true;
                self.backoff = BACKOFF_MIN;
                self.shared.connects.fetch_add(1, Ordering::Relaxed);
                // Clean session: nothing of the previous connection survives; start over.
                self.connection.eventloop.pending.clear();
                self.inflight.clear();
                {
                    let mut st = self.shared.lock();
                    st.connected = true;
                    for it in st.queue.iter_mut() {
                        it.pkid = None;
                    }
                }
                self.publish(Flight::Status, self.status_topic.clone(), b"online".to_vec());
            }
            MqEvent::Incoming(Packet::PubAck(ack)) => {
                if let Some((Flight::Event(id), _)) = self.inflight.remove(&ack.pkid) {
                    let mut st = self.shared.lock();
                    if let Some(pos) = st.queue.iter().position(|it| it.id == id) {
                        st.queue.remove(pos);
                    }
                    st.acked += 1;
                    drop(st);
                    self.shared.changed.notify_all();
                }
            }
            _ => {}
        }
    }

    fn on_error(&mut self, msg: String, closing: bool) {
        if self.connected {
            log::warn!("sink {}: MQTT connection lost: {msg}; reconnecting, events are buffered", self.name);
        } else {
            let name = &self.name;
            self.err_log.hit(|more| {
                log::warn!(
                    "sink {name}: cannot connect to the MQTT broker: {msg} ({more} more \
                     failures since the last message); retrying with back-off"
                )
            });
        }
        self.mark_disconnected();
        if closing {
            return;
        }
        // Back-off, interruptible by shutdown.
        let until = Instant::now() + self.backoff;
        while Instant::now() < until && !self.shared.stop.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn mark_disconnected(&mut self) {
        self.connected = false;
        // rumqttc moved unacked publishes into `pending`; we re-send from our own queue.
        self.connection.eventloop.pending.clear();
        self.inflight.clear();
        let mut st = self.shared.lock();
        st.connected = false;
        for it in st.queue.iter_mut() {
            it.pkid = None;
        }
    }

    /// Moves unsent events, in order, into rumqttc's pending queue, up to the in-flight limit.
    fn fill(&mut self) {
        let mut batch = Vec::new();
        {
            let mut st = self.shared.lock();
            let free = usize::from(MAX_INFLIGHT).saturating_sub(self.inflight.len());
            for it in st.queue.iter_mut().filter(|it| it.pkid.is_none()) {
                if batch.len() >= free {
                    break;
                }
                // Mark now (0 = QoS 0, never acked); the real id is assigned below.
                it.pkid = Some(0);
                batch.push((it.id, it.topic.clone(), it.payload.clone()));
            }
        }
        let mut written = Vec::new();
        for (id, topic, payload) in batch {
            let pkid = self.publish(Flight::Event(id), topic, payload);
            if pkid == 0 {
                written.push(id);
            } else {
                let mut st = self.shared.lock();
                if let Some(it) = st.queue.iter_mut().find(|it| it.id == id) {
                    it.pkid = Some(pkid);
                }
            }
        }
        if !written.is_empty() {
            // QoS 0: handed to the connection is as delivered as it gets.
            let mut st = self.shared.lock();
            st.queue.retain(|it| !written.contains(&it.id));
            st.acked += written.len() as u64;
            drop(st);
            self.shared.changed.notify_all();
        }
    }

    /// Queues one publish on rumqttc with our own packet id; returns it (0 for QoS 0).
    fn publish(&mut self, what: Flight, topic: String, payload: Vec<u8>) -> u16 {
        let (qos, retain) = match what {
            Flight::Status => (QoS::AtLeastOnce, true),
            Flight::Event(_) => (self.qos, false),
        };
        let mut p = Publish::new(topic, qos, payload);
        p.retain = retain;
        if qos != QoS::AtMostOnce {
            let pkid = self.alloc_pkid();
            p.pkid = pkid;
            self.inflight.insert(pkid, (what, Instant::now()));
        }
        let pkid = p.pkid;
        self.connection.eventloop.pending.push_back(Request::Publish(p));
        pkid
    }

    fn alloc_pkid(&mut self) -> u16 {
        // Callers keep inflight.len() < MAX_INFLIGHT, so a free id exists; the status
        // publish may exceed by one, hence the bounded search.
        for _ in 0..MAX_INFLIGHT {
            self.next_pkid = self.next_pkid % MAX_INFLIGHT + 1;
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
        self.next_pkid
    }

    fn check_ack_timeout(&mut self) {
        let stuck = self.inflight.values().any(|(_, sent)| sent.elapsed() > ACK_TIMEOUT);
        if stuck {
            log::warn!(
                "sink {}: no PUBACK for {}s; dropping the connection to re-send",
                self.name,
                ACK_TIMEOUT.as_secs()
            );
            self.connection.eventloop.clean();
            self.mark_disconnected();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_sanitized() {
        let c = MqttSinkConfig::new("h", 1883, "box");
        assert_eq!(c.event_topic("cam0"), "gradwatch/box/events/cam0");
        assert_eq!(c.event_topic("a/b+#"), "gradwatch/box/events/a_b__");
        assert_eq!(c.event_topic(""), "gradwatch/box/events/_");
        assert_eq!(c.status_topic(), "gradwatch/box/status");
    }

    #[test]
    fn validation_rejects_bad_values() {
        let ok = MqttSinkConfig::new("h", 1883, "box");
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.qos = 2;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.client_id = "a/b".into();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.keep_alive_s = 0;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.password = Some("x".into());
        assert!(c.validate().is_err());
        let mut c = ok;
        c.tls = Some(MqttTlsConfig { ca_file: "/nonexistent/ca.pem".into(), client_cert: None, client_key: None });
        match MqttSink::start("m", &c) {
            Err(SinkError::Open { path, .. }) => {
                assert_eq!(path, PathBuf::from("/nonexistent/ca.pem"))
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("missing CA file accepted"),
        }
    }
}
