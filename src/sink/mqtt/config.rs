//! The MQTT sink's `[[sink]]` table: keys, defaults, validation and the connect options built
//! from it.

use std::path::PathBuf;
use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};

use super::{
    install_ring_provider, topic_level, MAX_AGE_S, MAX_BUFFER, MAX_INFLIGHT, MAX_SNAPSHOT_BYTES, MAX_SPOOL_BYTES,
    MIN_SPOOL_BYTES,
};
use crate::sink::SinkError;

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
pub(super) fn path_safe(name: &str) -> String {
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
    /// `topic_level`).
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

    pub(super) fn options(&self) -> Result<MqttOptions, SinkError> {
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
