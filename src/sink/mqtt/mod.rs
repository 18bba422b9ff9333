//! MQTT sink (rumqttc, MQTT 3.1.1, QoS 1) with at-least-once delivery across broker outages,
//! reloads and restarts.
//!
//! Topics: events go to `<prefix>/<client_id>/events/<stream>`; `<prefix>/<client_id>/status`
//! holds a retained "online" published at every connect, and the last will (retained
//! "offline") the broker publishes if the connection dies uncleanly. A clean shutdown
//! publishes "offline" itself. With `dashboard = true` (or `discovery = true`) that topic is
//! `<prefix>/<client_id>/availability`, and retained per-stream state, attributes and
//! snapshot topics (and Home Assistant discovery) come on top: see [`discovery`].
//!
//! Delivery: every accepted event is first appended to the sink's on-disk spool and synced
//! ([`spool`]; `send` returns only then), and kept in an in-process queue until its
//! PUBACK arrives, when it is marked done in the spool. The sink assigns packet ids itself and
//! injects publishes into rumqttc's `pending` queue, so a PUBACK maps exactly to one event. On
//! any disconnect, everything not acknowledged is re-sent, in order, after the next CONNACK.
//! At start-up the spool's pending records are loaded first, so a restart re-sends them.
//!
//! Reload: the queue (with its spool) is shared by every sink of the process with the same
//! spool directory (or, without a spool, the same name, broker and client id). A new sink
//! built by a reload takes it over; the old one stops publishing, and its `flush` returns at
//! once since its events are now the new sink's. If the new sink goes away first (a reload
//! that failed later on), the queue reverts to the old one.

pub mod discovery;
pub mod spool;
mod sweep;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, Connection, Event as MqEvent, LastWill, MqttOptions, Packet, Publish, QoS, RecvTimeoutError, Request,
    TlsConfiguration, Transport,
};
use serde::{Deserialize, Serialize};

use super::{LogLimiter, Sink, SinkError};
use crate::alert::Event;
use crate::metrics::Metrics;
use discovery::Dashboard;
use spool::{Record, Spool};

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
/// Smallest non-zero `spool_max_bytes`.
const MIN_SPOOL_BYTES: u64 = 64 << 10;
/// Times the oldest unacknowledged event may be on a connection that died before its PUBACK
/// (the broker dropping the connection over that very publish) before it goes to the
/// dead-letter file instead of blocking the queue. After the first such death it is sent
/// alone, so a good event merely caught in an outage is not blamed twice.
pub const DEAD_LETTER_TRIES: u32 = 5;
/// The dead-letter file in the spool directory: one event per line, as the file sink writes
/// them.
pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";
/// The dead-letter file is not written beyond this size (events are still counted and logged).
const MAX_DEAD_LETTER_BYTES: u64 = 16 << 20;
/// The packet limit of the connection (topic and payload together must stay below it).
const MAX_PACKET: usize = 1 << 20;
/// Sequence numbers of events kept in memory only (the spool append failed: disk full) start
/// here, apart from the spool's own; such an event gets a spool number once it is written.
const MEM_SEQ_BASE: u64 = 1 << 62;
/// How often events kept in memory are tried on the spool again.
const RESPOOL_PERIOD: Duration = Duration::from_secs(1);
/// Largest `buffer` (events held in memory).
const MAX_BUFFER: usize = 1_000_000;
/// Largest `spool_max_bytes`.
const MAX_SPOOL_BYTES: u64 = 1 << 40;
/// Largest `spool_max_age_s`.
const MAX_AGE_S: u64 = 366 * 86_400;
/// Largest `snapshot_max_bytes` (the connection's packet limit is 1 MiB, topic included).
const MAX_SNAPSHOT_BYTES: u64 = 1_000_000;

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
/// password_file = "%d/mqtt-password"
/// tls = { ca_file = "/etc/gradwatch/ca.pem", client_cert = "/etc/gradwatch/c.pem", client_key = "%d/mqtt-client.key" }
/// buffer = 10000
/// keep_alive_s = 30
/// clean_session = true
/// spool_dir = "/var/lib/gradwatch/spool"
/// spool_max_bytes = 16777216
/// spool_max_age_s = 86400
/// dashboard = true
/// discovery = true
/// discovery_prefix = "homeassistant"
/// state_interval_ms = 1000
/// snapshot_max_bytes = 1000000
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
    /// MQTT client id, also the second topic level. Default: the unit id (`[service]
    /// unit_id`, the host name), filled in by the config loader, so units sharing a broker
    /// differ.
    #[serde(default)]
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
    /// Password (only with `username`). Default none. Prefer `password_file`.
    #[serde(default)]
    pub password: Option<String>,
    /// File holding the password (its first line; only with `username`, not with
    /// `password`). A path starting with `%d/` or `$CREDENTIALS_DIRECTORY/`, or a relative
    /// one, is looked up in systemd's credentials directory (`LoadCredential=`). Default none.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
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
    /// MQTT clean session. `false` asks the broker to keep the session (and whatever it
    /// queued for this client id) across reconnects. Unacknowledged events are re-sent after
    /// every reconnect either way. Default true.
    #[serde(default = "default_true")]
    pub clean_session: bool,
    /// Directory of the on-disk spool; the sink's spool is `<spool_dir>/<sink name>/`.
    /// Default `$STATE_DIRECTORY/spool` (systemd `StateDirectory=`); a relative path is
    /// relative to `$STATE_DIRECTORY`. Without either, events wait in memory only.
    #[serde(default)]
    pub spool_dir: Option<PathBuf>,
    /// Bound of the spool's files in bytes (at least 65536); when full, the oldest events are
    /// dropped (counted). 0 = no spool (memory only). Default 16 MiB.
    #[serde(default = "default_spool_bytes")]
    pub spool_max_bytes: u64,
    /// Events older than this (seconds since they were spooled) are dropped (counted)
    /// instead of sent. 0 = no age bound. Default 86400 (a day).
    #[serde(default = "default_spool_age")]
    pub spool_max_age_s: u64,
    /// Retained per-stream topics for dashboards: `<prefix>/<client_id>/<stream>/state`
    /// (`ok`/`degraded`/`down`), `.../attributes` (JSON: latest score, alert id),
    /// `.../snapshot` (the latest alert snapshot, JPEG), and the online/offline status with
    /// the last will on `<prefix>/<client_id>/availability` instead of `.../status`. Not
    /// spooled; re-published after every reconnect. Default false.
    #[serde(default)]
    pub dashboard: bool,
    /// Home Assistant MQTT discovery (retained config messages under `discovery_prefix`):
    /// per stream a `problem` binary sensor, a score sensor and a snapshot image. Turns
    /// `dashboard` on. Default false.
    #[serde(default)]
    pub discovery: bool,
    /// Home Assistant's discovery prefix. Default "homeassistant".
    #[serde(default = "default_discovery_prefix")]
    pub discovery_prefix: String,
    /// Score updates on a stream's attributes topic at most this often (state and alert
    /// changes go out at once). Default 1000.
    #[serde(default = "default_state_interval")]
    pub state_interval_ms: u64,
    /// Largest snapshot published on `.../snapshot` (at most 1000000; a larger file is
    /// skipped and logged); 0 = no snapshot topic and no image entity. Default 1000000.
    #[serde(default = "default_snapshot_max")]
    pub snapshot_max_bytes: u64,
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
fn default_true() -> bool {
    true
}
fn default_spool_bytes() -> u64 {
    16 << 20
}
fn default_spool_age() -> u64 {
    86_400
}
fn default_discovery_prefix() -> String {
    "homeassistant".into()
}
fn default_state_interval() -> u64 {
    1000
}
fn default_snapshot_max() -> u64 {
    MAX_SNAPSHOT_BYTES
}

/// The service's state directory: systemd's `STATE_DIRECTORY` (the first one if it lists
/// several), if set.
pub fn state_directory() -> Option<PathBuf> {
    let v = std::env::var_os("STATE_DIRECTORY")?;
    let first = v.to_str().map_or_else(|| PathBuf::from(&v), |s| PathBuf::from(s.split(':').next().unwrap_or(s)));
    (!first.as_os_str().is_empty()).then_some(first)
}

/// A sink name as one path component ([`crate::names::encode`]: injective, no `/`, no
/// leading `.`).
fn path_safe(name: &str) -> String {
    crate::names::encode(name)
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
            password_file: None,
            tls: None,
            buffer: default_buffer(),
            keep_alive_s: default_keep_alive(),
            clean_session: true,
            spool_dir: None,
            spool_max_bytes: default_spool_bytes(),
            spool_max_age_s: default_spool_age(),
            dashboard: false,
            discovery: false,
            discovery_prefix: default_discovery_prefix(),
            state_interval_ms: default_state_interval(),
            snapshot_max_bytes: default_snapshot_max(),
        }
    }

    /// Whether the retained dashboard topics are on (`dashboard` or `discovery`).
    pub fn dashboard_on(&self) -> bool {
        self.dashboard || self.discovery
    }

    /// The spool directory of the sink called `name`, or `None` for a memory-only sink
    /// (`spool_max_bytes = 0`, or no `spool_dir` and no `STATE_DIRECTORY`).
    pub fn spool_path(&self, name: &str) -> Result<Option<PathBuf>, SinkError> {
        if self.spool_max_bytes == 0 {
            return Ok(None);
        }
        let base = match (&self.spool_dir, state_directory()) {
            (Some(d), _) if d.is_absolute() => d.clone(),
            (Some(d), Some(state)) => state.join(d),
            (Some(d), None) => {
                return Err(SinkError::Config(format!(
                    "mqtt spool_dir = {:?} is relative and STATE_DIRECTORY is not set: give an \
                     absolute path",
                    d.display()
                )))
            }
            (None, Some(state)) => state.join("spool"),
            (None, None) => return Ok(None),
        };
        Ok(Some(base.join(path_safe(name))))
    }

    /// Topic of the retained status ("online" / "offline", the last will):
    /// `<prefix>/<client_id>/status`, or `.../availability` with the dashboard topics on.
    pub fn status_topic(&self) -> String {
        let leaf = if self.dashboard_on() { "availability" } else { "status" };
        format!("{}/{}/{leaf}", self.topic_prefix, self.client_id)
    }

    /// A dashboard topic of `stream`: `<prefix>/<client_id>/<stream>/<leaf>` (the stream name
    /// as in [`event_topic`](Self::event_topic)).
    pub fn stream_topic(&self, stream: &str, leaf: &str) -> String {
        format!("{}/{}/{}/{leaf}", self.topic_prefix, self.client_id, topic_level(stream))
    }

    /// Topic of the events of `stream` (the stream name as one topic level, see
    /// [`topic_level`]).
    pub fn event_topic(&self, stream: &str) -> String {
        format!("{}/{}/events/{}", self.topic_prefix, self.client_id, topic_level(stream))
    }

    /// Checks every key (names, ranges, combinations) without connecting or reading files.
    pub fn validate(&self) -> Result<(), SinkError> {
        let bad = |m: String| Err(SinkError::Config(m));
        if self.host.is_empty() {
            return bad("mqtt host is empty".into());
        }
        for (what, v) in [("client_id", &self.client_id), ("topic_prefix", &self.topic_prefix)] {
            if v.is_empty() || v.contains(['/', '+', '#', '\0']) || v.chars().any(char::is_control) {
                return bad(format!(
                    "mqtt {what} = {v:?} must be non-empty without '/', '+', '#' or control characters"
                ));
            }
        }
        if self.port == 0 {
            return bad("mqtt port = 0 is not a port; use the broker's port, 1..=65535 (1883, or 8883 with TLS)".into());
        }
        if self.qos > 1 {
            return bad(format!("mqtt qos = {} not supported; use 0 or 1", self.qos));
        }
        if !(1..=MAX_BUFFER).contains(&self.buffer) {
            return bad(format!("mqtt buffer = {} must be in 1..={MAX_BUFFER}", self.buffer));
        }
        if self.spool_max_bytes > MAX_SPOOL_BYTES {
            return bad(format!(
                "mqtt spool_max_bytes = {} is over {MAX_SPOOL_BYTES} (1 TiB); lower it",
                self.spool_max_bytes
            ));
        }
        if self.spool_max_age_s > MAX_AGE_S {
            return bad(format!(
                "mqtt spool_max_age_s = {} is over {MAX_AGE_S} (a year); lower it (0 = no age bound)",
                self.spool_max_age_s
            ));
        }
        if self.state_interval_ms > 86_400_000 {
            return bad(format!("mqtt state_interval_ms = {} must be in 0..=86400000", self.state_interval_ms));
        }
        if !(1..=65_535).contains(&self.keep_alive_s) {
            return bad(format!("mqtt keep_alive_s = {} must be in 1..=65535", self.keep_alive_s));
        }
        if (self.password.is_some() || self.password_file.is_some()) && self.username.is_none() {
            return bad("mqtt password given without username".into());
        }
        if self.password.is_some() && self.password_file.is_some() {
            return bad("mqtt password and password_file given: keep one (password_file)".into());
        }
        if self.discovery_prefix.is_empty()
            || self.discovery_prefix.contains(['+', '#', '\0'])
            || self.discovery_prefix.chars().any(char::is_control)
        {
            return bad(format!(
                "mqtt discovery_prefix = {:?} must be non-empty without '+', '#'",
                self.discovery_prefix
            ));
        }
        if self.snapshot_max_bytes > MAX_SNAPSHOT_BYTES {
            return bad(format!(
                "mqtt snapshot_max_bytes = {} is over {MAX_SNAPSHOT_BYTES} (the packet limit)",
                self.snapshot_max_bytes
            ));
        }
        if self.spool_max_bytes != 0 && self.spool_max_bytes < MIN_SPOOL_BYTES {
            return bad(format!(
                "mqtt spool_max_bytes = {} is below {MIN_SPOOL_BYTES}; raise it (or 0 for no spool)",
                self.spool_max_bytes
            ));
        }
        if let Some(t) = &self.tls {
            if t.client_cert.is_some() != t.client_key.is_some() {
                return bad("mqtt tls: client_cert and client_key go together".into());
            }
        }
        Ok(())
    }

    fn options(&self) -> Result<MqttOptions, SinkError> {
        let mut o = self.options_as(&self.client_id)?;
        o.set_clean_session(self.clean_session).set_last_will(LastWill::new(
            self.status_topic(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ));
        Ok(o)
    }

    /// Connection options with this sink's broker, credentials and TLS under `client_id`, a
    /// clean session and no last will.
    pub(super) fn options_as(&self, client_id: &str) -> Result<MqttOptions, SinkError> {
        let mut o = MqttOptions::new(client_id, self.host.clone(), self.port);
        o.set_keep_alive(Duration::from_secs(self.keep_alive_s))
            .set_inflight(MAX_INFLIGHT)
            .set_max_packet_size(1 << 20, 1 << 20);
        if let Some(u) = &self.username {
            let password = match &self.password_file {
                Some(f) => {
                    let path = crate::base::path::resolve_credential(f, false).map_err(SinkError::Config)?;
                    let text = std::fs::read_to_string(&path).map_err(|e| SinkError::Open { path, source: e })?;
                    text.lines().next().unwrap_or("").to_string()
                }
                None => self.password.clone().unwrap_or_default(),
            };
            o.set_credentials(u.clone(), password);
        }
        if let Some(t) = &self.tls {
            install_ring_provider();
            let read = |p: &PathBuf| {
                let path = crate::base::path::resolve_credential(p, true).map_err(SinkError::Config)?;
                std::fs::read(&path).map_err(|e| SinkError::Open { path, source: e })
            };
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

/// A connection error with the likely fix where the error alone does not say it: a connect
/// refused with EPERM comes from a firewall on this host, most often the unit's
/// `IPAddressDeny=any` (only localhost is allowed unless the broker is added).
fn describe(e: &rumqttc::ConnectionError) -> String {
    let mut msg = e.to_string();
    if let rumqttc::ConnectionError::Io(io) = e {
        if io.kind() == std::io::ErrorKind::PermissionDenied {
            msg += " (the connection was blocked on this host: under systemd, add the broker to \
                    IPAddressAllow= in gradwatch.service, which allows only localhost)";
        }
    }
    msg
}

/// Installs rustls's ring provider as the process default (once; an already installed
/// provider is kept).
pub fn install_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One MQTT topic level from a stream name: [`crate::names::encode`], injective (`a/b` and
/// `a_b` get different topics) and free of `/ + #`, NUL and control characters (mosquitto
/// drops the connection on a control character in a topic). The one place topics are made
/// from stream names.
pub(super) fn topic_level(stream: &str) -> String {
    crate::names::encode(stream)
}

/// An event accepted by the sink and not yet acknowledged.
struct Item {
    /// Sequence number in the spool (or in memory without one).
    seq: u64,
    /// When it was accepted (unix ms), for the age bound.
    written_ms: u64,
    /// Its stream; the topic is derived when publishing, from the publishing sink's config.
    stream: String,
    payload: Vec<u8>,
}

impl From<Record> for Item {
    fn from(r: Record) -> Self {
        Item { seq: r.seq, written_ms: r.written_ms, stream: r.stream, payload: r.payload }
    }
}

/// What a packet id in flight stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flight {
    Event(u64),
    Status,
    /// A retained dashboard or discovery message (not spooled; re-published on reconnect).
    Retained,
}

/// Events accepted and not yet acknowledged, with their spool: shared by the sinks that hand
/// it over to each other on reload.
struct Backlog {
    state: Mutex<BState>,
    /// Signalled when the queue shrinks (flush waits on it).
    changed: Condvar,
}

struct BState {
    queue: VecDeque<Item>,
    spool: Option<Spool>,
    /// Next sequence number of an event not in the spool (no spool: every event; with one:
    /// added to [`MEM_SEQ_BASE`]).
    mem_seq: u64,
    /// Generations of the attached sinks, oldest first; the last one publishes.
    attached: Vec<u64>,
    acked: u64,
}

impl Backlog {
    fn lock(&self) -> MutexGuard<'_, BState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl BState {
    /// Removes an item (acknowledged, or dropped) from the queue and the spool.
    fn finish(&mut self, seq: u64) -> bool {
        let found = match self.queue.iter().position(|it| it.seq == seq) {
            Some(pos) => {
                self.queue.remove(pos);
                true
            }
            None => false,
        };
        if let Some(sp) = self.spool.as_mut() {
            if seq < MEM_SEQ_BASE {
                sp.done(seq);
            }
        }
        found
    }

    /// Events waiting that are not on disk (the spool append failed), with a spool.
    fn memory_only(&self) -> usize {
        if self.spool.is_none() {
            return 0;
        }
        self.queue.iter().filter(|it| it.seq >= MEM_SEQ_BASE).count()
    }

    /// Drops every spooled item below `below` (the spool deleted their segment for room).
    fn drop_spooled_below(&mut self, below: u64) -> u64 {
        let before = self.queue.len();
        self.queue.retain(|it| it.seq >= MEM_SEQ_BASE || it.seq >= below);
        (before - self.queue.len()) as u64
    }

    /// Writes events kept in memory (a failed append) to the spool, oldest first, skipping
    /// those in `skip` (in flight: their packet ids name the old number). Stops at the first
    /// failure (the disk is still full). Returns how many went to disk, how many older
    /// records the spool deleted for room, and the error.
    fn respool(&mut self, skip: &HashSet<u64>) -> (u64, u64, Option<spool::SpoolError>) {
        let (mut written, mut dropped) = (0, 0);
        let Some(mut sp) = self.spool.take() else { return (0, 0, None) };
        let mut err = None;
        let mut below_max = 0;
        for it in self.queue.iter_mut().filter(|it| it.seq >= MEM_SEQ_BASE && !skip.contains(&it.seq)) {
            match sp.append(&it.stream, &it.payload, it.written_ms) {
                Ok((seq, below)) => {
                    it.seq = seq;
                    written += 1;
                    below_max = below_max.max(below);
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        self.spool = Some(sp);
        if below_max > 0 {
            dropped = self.drop_spooled_below(below_max);
        }
        (written, dropped, err)
    }

    /// Drops the oldest items while `pred` holds for the front one; returns how many.
    fn drop_front_while(&mut self, pred: impl Fn(&Item) -> bool) -> u64 {
        let mut n = 0;
        while let Some(front) = self.queue.front() {
            if !pred(front) {
                break;
            }
            let seq = front.seq;
            self.finish(seq);
            n += 1;
        }
        n
    }

    /// Applies the age bound; returns how many were dropped.
    fn expire(&mut self, max_age_s: u64) -> u64 {
        if max_age_s == 0 {
            return 0;
        }
        let limit = now_ms().saturating_sub(max_age_s.saturating_mul(1000));
        self.drop_front_while(|it| it.written_ms < limit)
    }
}

fn now_ms() -> u64 {
    crate::base::time::unix_ms(std::time::SystemTime::now())
}

/// Backlogs by key (spool directory, or name and broker without a spool), for the hand-over.
fn registry() -> MutexGuard<'static, HashMap<String, Weak<Backlog>>> {
    static R: OnceLock<Mutex<HashMap<String, Weak<Backlog>>>> = OnceLock::new();
    match R.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn next_generation() -> u64 {
    static G: AtomicU64 = AtomicU64::new(1);
    G.fetch_add(1, Ordering::Relaxed)
}

/// Attaches a new sink (generation `gen`) to the backlog under `key`, taking it over from a
/// sink already attached, or opening the spool.
fn attach(
    name: &str,
    key: String,
    spool_dir: Option<&Path>,
    max_bytes: u64,
    gen: u64,
) -> Result<Arc<Backlog>, SinkError> {
    let mut reg = registry();
    if let Some(b) = reg.get(&key).and_then(Weak::upgrade) {
        let mut st = b.lock();
        st.attached.push(gen);
        if let Some(sp) = st.spool.as_mut() {
            sp.set_max_bytes(max_bytes);
        }
        log::info!("sink {name}: took over {} unacknowledged event(s) from the sink it replaces", st.queue.len());
        drop(st);
        return Ok(b);
    }
    let (spool, queue) = match spool_dir {
        Some(dir) => {
            let (sp, records) = Spool::open(dir, max_bytes)?;
            if !records.is_empty() {
                log::info!(
                    "sink {name}: {} event(s) from the spool {} will be sent first",
                    records.len(),
                    dir.display()
                );
            }
            (Some(sp), records.into_iter().map(Item::from).collect())
        }
        None => (None, VecDeque::new()),
    };
    let b = Arc::new(Backlog {
        state: Mutex::new(BState { queue, spool, mem_seq: 0, attached: vec![gen], acked: 0 }),
        changed: Condvar::new(),
    });
    reg.retain(|_, w| w.strong_count() > 0);
    reg.insert(key, Arc::downgrade(&b));
    Ok(b)
}

/// State of one sink shared with its connection thread.
struct Shared {
    backlog: Arc<Backlog>,
    gen: u64,
    stop: AtomicBool,
    /// Deadline of the last `flush`, which also bounds the clean close that follows it.
    close_by: Mutex<Option<Instant>>,
    connected: AtomicBool,
    dropped: AtomicU64,
    /// Drops by reason (`super::reason`), cumulative.
    drops: Mutex<std::collections::BTreeMap<&'static str, u64>>,
    connects: AtomicU64,
    drop_log: LogLimiter,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, BState> {
        self.backlog.lock()
    }

    fn count_dropped(&self, name: &str, n: u64, reason: &'static str, why: &str) {
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
    name: String,
    cfg: MqttSinkConfig,
    spool_dir: Option<PathBuf>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The stream status the dashboard topics come from, when the sink keeps its own (no
    /// registry given): fed from the events it is sent.
    own_status: Option<Metrics>,
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
        shared.count_dropped(&name, corrupt, super::reason::SPOOL_CORRUPT, "corrupt records in the spool");
        let (client, connection) = Client::new(options, 16);
        let own_status = (cfg.dashboard_on() && metrics.is_none()).then(Metrics::new);
        if let (true, Some(m)) = (cfg.dashboard_on(), &metrics) {
            // Only with the daemon's registry: it knows every configured stream.
            let s = shared.clone();
            let sweep = sweep::spawn(name.clone(), cfg.clone(), m.clone(), move || s.stop.load(Ordering::SeqCst));
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
fn detach(shared: &Shared) {
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
        use super::reason;
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
                    self.shared.count_dropped(&self.name, dropped, super::reason::SPOOL_FULL, "spool full at shutdown");
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
                            super::reason::DISK_FULL,
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
                        self.shared.count_dropped(&self.name, lost as u64, super::reason::SHUTDOWN, "no spool");
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

/// State owned by the connection thread.
struct ConnThread {
    name: String,
    cfg: MqttSinkConfig,
    status_topic: String,
    qos: QoS,
    shared: Arc<Shared>,
    client: Client,
    connection: Connection,
    /// Packet id -> what it carries and when it was sent.
    inflight: HashMap<u16, (Flight, Instant)>,
    /// Sequence numbers published on the current connection (not yet acknowledged).
    sent: HashSet<u64>,
    next_pkid: u16,
    connected: bool,
    backoff: Duration,
    err_log: LogLimiter,
    /// The retained dashboard and discovery messages, when on.
    dash: Option<Dashboard>,
    /// The oldest unacknowledged event, when a connection died with it in flight, and how
    /// many connections died so: it is sent alone until acknowledged, and dead-lettered at
    /// [`DEAD_LETTER_TRIES`].
    suspect: Option<(u64, u32)>,
    /// Where dead letters go (`<spool dir>/dead-letter.jsonl`), if the sink has a spool.
    dead_letter: Option<PathBuf>,
    /// Last attempt to write events kept in memory to the spool.
    last_respool: Option<Instant>,
    respool_log: LogLimiter,
}

impl ConnThread {
    fn run(mut self) {
        let mut closing: Option<Instant> = None;
        loop {
            let (owner, last) = {
                let st = self.shared.lock();
                (st.attached.last() == Some(&self.shared.gen), st.attached.len() == 1)
            };
            if self.shared.stop.load(Ordering::SeqCst) && closing.is_none() {
                if !self.connected {
                    break;
                }
                if owner && last {
                    // Clean shutdown: say "offline" ourselves (the will only fires on unclean
                    // disconnects), then DISCONNECT once it is acknowledged or we run out of
                    // time.
                    self.publish(Flight::Status, self.status_topic.clone(), b"offline".to_vec());
                    closing = Some(Instant::now() + CLOSE_WAIT);
                } else {
                    // Another sink carries on with this client id: no "offline".
                    closing = Some(Instant::now());
                }
            }
            if let Some(until) = closing {
                let status_acked = !self.inflight.values().any(|(f, _)| *f == Flight::Status);
                if status_acked || Instant::now() >= until || !self.connected {
                    self.disconnect();
                    break;
                }
            } else if !owner {
                // Replaced by a reload: leave the connection (and the client id) to the new
                // sink, and wait in case it goes away again.
                if self.connected {
                    log::info!("sink {}: handed its events over; disconnecting", self.name);
                    self.disconnect();
                }
                std::thread::sleep(POLL);
                continue;
            }
            if closing.is_none() {
                self.respool();
            }
            if self.connected && closing.is_none() {
                self.fill();
                self.publish_dashboard();
                self.check_ack_timeout();
                let mut st = self.shared.lock();
                let old = st.expire(self.cfg.spool_max_age_s);
                if let Some(sp) = st.spool.as_mut() {
                    sp.persist_ack(false);
                }
                drop(st);
                self.shared.count_dropped(&self.name, old, super::reason::TOO_OLD, "older than spool_max_age_s");
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
                Ok(Err(e)) => self.on_error(describe(&e), closing.is_some()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.shared.connected.store(false, Ordering::Relaxed);
        self.shared.backlog.changed.notify_all();
    }

    /// Sends DISCONNECT (a clean close: no last will) and drops the network connection.
    fn disconnect(&mut self) {
        let _ = self.client.try_disconnect();
        if self.connected {
            // Drive the loop until the DISCONNECT is written (or it fails).
            for _ in 0..40 {
                match self.connection.recv_timeout(POLL) {
                    Ok(Ok(MqEvent::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
                    Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            }
        }
        self.connection.eventloop.clean();
        self.mark_disconnected();
    }

    fn on_event(&mut self, ev: MqEvent) {
        match ev {
            MqEvent::Incoming(Packet::ConnAck(_)) => {
                log::info!("sink {}: connected to the MQTT broker", self.name);
                self.connected = true;
                self.backoff = BACKOFF_MIN;
                self.shared.connects.fetch_add(1, Ordering::Relaxed);
                self.shared.connected.store(true, Ordering::Relaxed);
                // Whatever was in flight on the previous connection is re-sent from our queue,
                // in order, with our own packet ids.
                self.connection.eventloop.pending.clear();
                self.inflight.clear();
                self.sent.clear();
                self.publish(Flight::Status, self.status_topic.clone(), b"online".to_vec());
                if let Some(d) = self.dash.as_mut() {
                    // Retained values are not spooled: the broker gets them all again.
                    d.all_dirty();
                }
            }
            MqEvent::Incoming(Packet::PubAck(ack)) => {
                if let Some((Flight::Event(seq), _)) = self.inflight.remove(&ack.pkid) {
                    self.sent.remove(&seq);
                    if self.suspect.is_some_and(|(s, _)| s == seq) {
                        log::info!(
                            "sink {}: the event re-sent alone was acknowledged; the queue flows again",
                            self.name
                        );
                        self.suspect = None;
                    }
                    let mut st = self.shared.lock();
                    if st.finish(seq) {
                        st.acked += 1;
                    }
                    drop(st);
                    self.shared.backlog.changed.notify_all();
                }
            }
            _ => {}
        }
    }

    fn on_error(&mut self, msg: String, closing: bool) {
        if self.connected {
            log::warn!("sink {}: MQTT connection lost: {msg}; reconnecting, events are buffered", self.name);
            if !closing {
                self.blame_oldest_in_flight(&msg);
            }
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
        self.shared.connected.store(false, Ordering::Relaxed);
        // rumqttc moved unacked publishes into `pending`; we re-send from our own queue.
        self.connection.eventloop.pending.clear();
        self.inflight.clear();
        self.sent.clear();
    }

    /// Moves unsent events, in order, into rumqttc's pending queue, up to the in-flight limit.
    fn fill(&mut self) {
        let mut batch = Vec::new();
        let mut too_big = Vec::new();
        {
            let st = self.shared.lock();
            let mut free = usize::from(MAX_INFLIGHT).saturating_sub(self.inflight.len());
            let suspect = self.suspect.map(|(s, _)| s).filter(|s| st.queue.iter().any(|it| it.seq == *s));
            if suspect.is_some() {
                // Alone until acknowledged: nothing else in flight that the broker's reaction
                // could be blamed on.
                free = usize::from(self.sent.is_empty());
            }
            for it in st.queue.iter().filter(|it| !self.sent.contains(&it.seq)) {
                if batch.len() >= free {
                    break;
                }
                if suspect.is_some_and(|s| s != it.seq) {
                    continue;
                }
                let topic = self.cfg.event_topic(&it.stream);
                if topic.len() + it.payload.len() + 64 > MAX_PACKET {
                    too_big.push(it.seq);
                    continue;
                }
                batch.push((it.seq, topic, it.payload.clone()));
            }
        }
        for seq in too_big {
            self.dead_letter(seq, &format!("over the {MAX_PACKET}-byte MQTT packet limit"));
        }
        let mut written = Vec::new();
        for (seq, topic, payload) in batch {
            self.sent.insert(seq);
            if self.publish(Flight::Event(seq), topic, payload) == 0 {
                written.push(seq);
            }
        }
        if !written.is_empty() {
            // QoS 0: handed to the connection is as delivered as it gets.
            let mut st = self.shared.lock();
            for seq in written {
                self.sent.remove(&seq);
                if st.finish(seq) {
                    st.acked += 1;
                }
            }
            drop(st);
            self.shared.backlog.changed.notify_all();
        }
    }

    /// Publishes the dashboard messages that changed (or all, after a connect), leaving room
    /// in flight for the status.
    fn publish_dashboard(&mut self) {
        let Some(mut d) = self.dash.take() else { return };
        d.refresh(Instant::now());
        while self.inflight.len() + 2 < usize::from(MAX_INFLIGHT) {
            let Some((topic, payload)) = d.next() else { break };
            self.publish(Flight::Retained, topic, payload);
        }
        self.dash = Some(d);
    }

    /// Queues one publish on rumqttc with our own packet id; returns it (0 for QoS 0).
    fn publish(&mut self, what: Flight, topic: String, payload: Vec<u8>) -> u16 {
        let (qos, retain) = match what {
            Flight::Status | Flight::Retained => (QoS::AtLeastOnce, true),
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
            self.blame_oldest_in_flight("no PUBACK");
            self.connection.eventloop.clean();
            self.mark_disconnected();
        }
    }

    /// A live connection died with events in flight: the oldest of them (queue order) may be
    /// what the broker refused. It gets a try; the next connection sends it alone; at
    /// [`DEAD_LETTER_TRIES`] it goes to the dead-letter file.
    fn blame_oldest_in_flight(&mut self, why: &str) {
        let in_flight: HashSet<u64> = self
            .inflight
            .values()
            .filter_map(|(f, _)| match f {
                Flight::Event(seq) => Some(*seq),
                _ => None,
            })
            .collect();
        let oldest = {
            let st = self.shared.lock();
            st.queue.iter().find(|it| in_flight.contains(&it.seq)).map(|it| it.seq)
        };
        let Some(seq) = oldest else { return };
        let tries = match self.suspect {
            Some((s, n)) if s == seq => n + 1,
            _ => 1,
        };
        self.suspect = Some((seq, tries));
        if tries >= DEAD_LETTER_TRIES {
            self.dead_letter(seq, &format!("the connection died {tries} times with it in flight, alone ({why})"));
        }
    }

    /// Takes event `seq` out of the queue (and the spool) into the dead-letter file, counted
    /// and logged once.
    fn dead_letter(&mut self, seq: u64, why: &str) {
        let item = {
            let mut st = self.shared.lock();
            let item = st.queue.iter().find(|it| it.seq == seq).map(|it| (it.stream.clone(), it.payload.clone()));
            if item.is_some() {
                st.finish(seq);
            }
            item
        };
        self.shared.backlog.changed.notify_all();
        if self.suspect.is_some_and(|(s, _)| s == seq) {
            self.suspect = None;
        }
        let Some((stream, payload)) = item else { return };
        let written = match &self.dead_letter {
            Some(path) => match append_dead_letter(path, &payload) {
                Ok(()) => format!("written to {}", path.display()),
                Err(e) => format!("NOT written to {} ({e})", path.display()),
            },
            None => "not written anywhere (the sink has no spool directory)".into(),
        };
        let head: String = String::from_utf8_lossy(&payload).chars().take(300).collect();
        log::error!(
            "sink {}: event of stream {:?} dead-lettered: {why}; {written}; counted in \
             sink_dropped_total reason=\"dead_letter\"; the queue goes on. Event: {head}",
            self.name,
            stream
        );
        self.shared.count_dropped(&self.name, 1, super::reason::DEAD_LETTER, why);
    }

    /// Writes events kept in memory (the spool append failed) to the spool, about once a
    /// second while there are any.
    fn respool(&mut self) {
        if self.last_respool.is_some_and(|t| t.elapsed() < RESPOOL_PERIOD) {
            return;
        }
        self.last_respool = Some(Instant::now());
        let (written, dropped, err) = {
            let mut st = self.shared.lock();
            if st.memory_only() == 0 {
                return;
            }
            st.respool(&self.sent)
        };
        if written > 0 {
            log::info!("sink {}: {written} event(s) kept in memory are now in the spool", self.name);
        }
        self.shared.count_dropped(&self.name, dropped, super::reason::SPOOL_FULL, "spool full");
        if let Some(e) = err {
            let name = &self.name;
            self.respool_log.hit(|more| {
                log::warn!(
                    "sink {name}: events kept in memory still not spooled: {e} ({more} more since the last message)"
                )
            });
        }
    }
}

/// Appends one event line to the dead-letter file (created 0600), synced.
fn append_dead_letter(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    if f.metadata()?.len() + payload.len() as u64 > MAX_DEAD_LETTER_BYTES {
        return Err(std::io::Error::other(format!("it is full at {MAX_DEAD_LETTER_BYTES} bytes")));
    }
    let mut line = payload.to_vec();
    line.push(b'\n');
    f.write_all(&line)?;
    f.sync_data()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_blocked_on_this_host_names_the_units_ip_allow_list() {
        let e = rumqttc::ConnectionError::Io(std::io::Error::from_raw_os_error(1));
        assert!(describe(&e).contains("IPAddressAllow="), "{}", describe(&e));
        let e = rumqttc::ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!describe(&e).contains("IPAddressAllow"));
    }

    #[test]
    fn topics_are_sanitized() {
        let c = MqttSinkConfig::new("h", 1883, "box");
        assert_eq!(c.event_topic("cam0"), "gradwatch/box/events/cam0");
        assert_eq!(c.event_topic("a/b+#"), "gradwatch/box/events/a%2Fb%2B%23");
        assert_eq!(c.event_topic("bad\tname"), "gradwatch/box/events/bad%09name");
        assert_eq!(c.event_topic(""), "gradwatch/box/events/%");
        assert_eq!(c.status_topic(), "gradwatch/box/status");
        let mut d = c.clone();
        d.discovery = true;
        assert_eq!(d.status_topic(), "gradwatch/box/availability", "the will moves with the dashboard");
        assert_eq!(d.stream_topic("a/b", "state"), "gradwatch/box/a%2Fb/state");
        assert_ne!(d.stream_topic("a/b", "state"), d.stream_topic("a_b", "state"));
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
        c.snapshot_max_bytes = 2_000_000;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.discovery_prefix = "ha/#".into();
        assert!(c.validate().is_err());
        for bad in [
            |c: &mut MqttSinkConfig| c.port = 0,
            |c: &mut MqttSinkConfig| c.buffer = 0,
            |c: &mut MqttSinkConfig| c.buffer = usize::MAX,
            |c: &mut MqttSinkConfig| c.spool_max_bytes = u64::MAX,
            |c: &mut MqttSinkConfig| c.spool_max_age_s = u64::MAX,
            |c: &mut MqttSinkConfig| c.client_id = "a\tb".into(),
        ] {
            let mut c = ok.clone();
            bad(&mut c);
            assert!(c.validate().is_err(), "{c:?}");
        }
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
