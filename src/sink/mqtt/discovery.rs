//! The MQTT sink's retained "dashboard" topics (`dashboard = true`) and Home Assistant MQTT
//! discovery (`discovery = true`).
//!
//! Topics (`P` = `topic_prefix`, `C` = `client_id`, `<s>` = the stream as one topic level):
//!
//! * `P/C/availability`: `online` / `offline` (the last will), instead of `P/C/status`;
//! * `P/C/<s>/state`: `ok` / `degraded` / `down`;
//! * `P/C/<s>/attributes`: JSON with the state, the latest score and its time, the threshold,
//!   the open alert's id and the last alert's id (score changes at most every
//!   `state_interval_ms`; state and alert changes at once);
//! * `P/C/<s>/snapshot`: the JPEG named by the latest `alert_start` / `alert_end` with a
//!   `snapshot` (at most `snapshot_max_bytes`);
//! * with discovery, `<discovery_prefix>/{binary_sensor,sensor,image}/<node>/<object>/config`:
//!   one device per client id, per stream a `problem` binary sensor, a score sensor and an
//!   image entity.
//!
//! All are retained, QoS 1, and **not spooled**: they are "latest value" messages. The
//! connection thread keeps the latest payload of each and publishes it again after every
//! (re)connect, so the broker holds the current values whatever was lost with a connection.
//! The values come from the metrics registry's per-stream status ([`crate::metrics::status`]),
//! which the alert stage updates before each event goes to the sinks.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::MqttSinkConfig;
use crate::metrics::{Metrics, StatusView, StreamState};
use crate::sink::LogLimiter;

/// How often the connection thread looks at the streams' status.
const SCAN: Duration = Duration::from_millis(100);
/// How long a snapshot file named by an event may take to appear (the event can go out a few
/// milliseconds before the file is written).
const SNAPSHOT_WAIT: Duration = Duration::from_secs(10);

/// Kinds of retained message, in the order they are (re)published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Discovery,
    State,
    Attributes,
    Snapshot,
}

/// Per-stream bookkeeping.
#[derive(Default)]
struct Stream {
    /// Status version last turned into messages.
    version: Option<u64>,
    /// When the attributes were last built from a new score.
    attrs_at: Option<Instant>,
    /// Score time in the last attributes.
    score_ms: Option<u64>,
    discovered: bool,
    /// The snapshot path published (or given up on), and one waiting to appear.
    snapshot_done: Option<String>,
    snapshot_wait: Option<(String, Instant)>,
}

/// Retained messages of one sink: their latest payloads and which still need publishing.
pub(super) struct Dashboard {
    cfg: MqttSinkConfig,
    metrics: Metrics,
    /// (kind, topic) -> (payload, needs publishing).
    msgs: BTreeMap<(Kind, String), (Vec<u8>, bool)>,
    streams: HashMap<String, Stream>,
    last_scan: Option<Instant>,
    log: LogLimiter,
}

impl Dashboard {
    /// The dashboard of a sink with `cfg` (which has `dashboard` or `discovery` on), reading
    /// `metrics`.
    pub(super) fn new(cfg: &MqttSinkConfig, metrics: Metrics) -> Self {
        Dashboard {
            cfg: cfg.clone(),
            metrics,
            msgs: BTreeMap::new(),
            streams: HashMap::new(),
            last_scan: None,
            log: LogLimiter::new(Duration::from_secs(10)),
        }
    }

    /// After a (re)connect: everything is published again.
    pub(super) fn all_dirty(&mut self) {
        for v in self.msgs.values_mut() {
            v.1 = true;
        }
    }

    /// The next message to publish (marked published), discovery first.
    pub(super) fn next(&mut self) -> Option<(String, Vec<u8>)> {
        let (key, v) = self.msgs.iter_mut().find(|(_, v)| v.1)?;
        v.1 = false;
        Some((key.1.clone(), v.0.clone()))
    }

    fn set(&mut self, kind: Kind, topic: String, payload: Vec<u8>) {
        match self.msgs.get_mut(&(kind, topic.clone())) {
            Some(v) if v.0 == payload => {}
            Some(v) => *v = (payload, true),
            None => {
                self.msgs.insert((kind, topic), (payload, true));
            }
        }
    }

    /// Brings the messages up to date with the streams' status (at most every 100 ms).
    pub(super) fn refresh(&mut self, now: Instant) {
        if self.last_scan.is_some_and(|t| now.duration_since(t) < SCAN) {
            return;
        }
        self.last_scan = Some(now);
        for (name, m) in self.metrics.streams() {
            let v = m.status.view(false);
            self.refresh_stream(&name, &v, now);
        }
    }

    fn refresh_stream(&mut self, name: &str, v: &StatusView, now: Instant) {
        let interval = Duration::from_millis(self.cfg.state_interval_ms);
        let mut st = self.streams.remove(name).unwrap_or_default();
        if self.cfg.discovery && !st.discovered {
            for (_, topic, payload) in discovery(&self.cfg, name) {
                self.set(Kind::Discovery, topic, payload.to_string().into_bytes());
            }
            st.discovered = true;
        }
        if let Some(state) = v.state {
            let changed = st.version != Some(v.version);
            let new_score = v.score.map(|s| s.1) != st.score_ms;
            let due = st.attrs_at.is_none_or(|t| now.duration_since(t) >= interval);
            if changed || (new_score && due) {
                self.set(Kind::State, self.cfg.stream_topic(name, "state"), state.as_str().as_bytes().to_vec());
                let attrs = attributes(name, state, v);
                self.set(Kind::Attributes, self.cfg.stream_topic(name, "attributes"), attrs.to_string().into_bytes());
                st.version = Some(v.version);
                st.score_ms = v.score.map(|s| s.1);
                if new_score {
                    st.attrs_at = Some(now);
                }
            }
        }
        if self.cfg.snapshot_max_bytes > 0 {
            self.snapshot(name, v, &mut st, now);
        }
        self.streams.insert(name.to_string(), st);
    }

    /// Reads the latest alert's snapshot (once it exists) into the retained snapshot topic.
    fn snapshot(&mut self, name: &str, v: &StatusView, st: &mut Stream, now: Instant) {
        let latest = v.alert.as_ref().and_then(|a| a.snapshot.clone());
        if let Some(path) = latest {
            if st.snapshot_done.as_ref() != Some(&path) && st.snapshot_wait.as_ref().is_none_or(|w| w.0 != path) {
                st.snapshot_wait = Some((path, now));
            }
        }
        let Some((path, since)) = st.snapshot_wait.clone() else { return };
        let max = self.cfg.snapshot_max_bytes;
        let read = std::fs::symlink_metadata(&path).and_then(|m| {
            if !m.file_type().is_file() {
                return Err(std::io::Error::other("not a regular file"));
            }
            if m.len() > max {
                return Err(std::io::Error::other(format!("{} bytes, over snapshot_max_bytes = {max}", m.len())));
            }
            std::fs::read(&path)
        });
        match read {
            Ok(bytes) if bytes.len() as u64 <= max => {
                self.set(Kind::Snapshot, self.cfg.stream_topic(name, "snapshot"), bytes);
                st.snapshot_done = Some(path);
                st.snapshot_wait = None;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && now.duration_since(since) < SNAPSHOT_WAIT => {}
            other => {
                let why = match other {
                    Err(e) => e.to_string(),
                    Ok(b) => format!("{} bytes, over snapshot_max_bytes = {max}", b.len()),
                };
                let p = PathBuf::from(&path);
                self.log.hit(|more| {
                    log::warn!(
                        "mqtt: snapshot {} not published: {why} ({more} more since the last message)",
                        p.display()
                    )
                });
                st.snapshot_done = Some(path);
                st.snapshot_wait = None;
            }
        }
    }
}

/// The JSON of `P/C/<s>/attributes`.
fn attributes(name: &str, state: StreamState, v: &StatusView) -> Value {
    let finite = |x: f64| if x.is_finite() { json!(x) } else { Value::Null };
    let open = v.alert.as_ref().filter(|a| a.is_open());
    json!({
        "stream": name,
        "state": state.as_str(),
        "score": v.score.map_or(Value::Null, |s| finite(s.0)),
        "score_time": v.score.map_or(Value::Null, |s| {
            json!(crate::base::time::rfc3339_ms(std::time::UNIX_EPOCH + Duration::from_millis(s.1)))
        }),
        "threshold": v.threshold.map_or(Value::Null, finite),
        "alert_id": open.map(|a| a.id.clone()),
        "last_alert_id": v.alert.as_ref().map(|a| a.id.clone()),
        "down_reason": if state == StreamState::Down { v.down_reason.clone() } else { None },
    })
}

/// `s` as a Home Assistant id (`[a-zA-Z0-9_-]`): other characters become `_`, and a name
/// that needed that gets a short hash so two names cannot end up with the same id.
pub fn ha_id(s: &str) -> String {
    let clean: String =
        s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '-' { c } else { '_' }).collect();
    if clean == s && !s.is_empty() {
        return clean;
    }
    // FNV-1a, stable across builds and platforms.
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("{clean}_{h:08x}")
}

/// The Home Assistant node id of a sink's client id (one device per client id).
pub(super) fn node_id(cfg: &MqttSinkConfig) -> String {
    ha_id(&format!("gradwatch_{}", cfg.client_id))
}

/// The discovery messages of one stream: `(component, topic, config)`.
pub fn discovery(cfg: &MqttSinkConfig, stream: &str) -> Vec<(&'static str, String, Value)> {
    let node = node_id(cfg);
    let sid = ha_id(stream);
    let device = json!({
        "identifiers": [node],
        "name": cfg.client_id,
        "manufacturer": "gradwatch",
        "model": "gradwatch camera trust monitor",
        "sw_version": env!("CARGO_PKG_VERSION"),
    });
    let origin = json!({ "name": "gradwatch", "sw_version": env!("CARGO_PKG_VERSION") });
    let base = |name: String, object: &str| {
        json!({
            "name": name,
            "unique_id": format!("{node}_{sid}_{object}"),
            "availability_topic": cfg.status_topic(),
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": device,
            "origin": origin,
        })
    };
    let topic =
        |component: &str, object: &str| format!("{}/{component}/{node}/{sid}_{object}/config", cfg.discovery_prefix);
    let merge = |mut a: Value, b: Value| {
        if let (Some(a), Value::Object(b)) = (a.as_object_mut(), b) {
            a.extend(b);
        }
        a
    };
    let mut out = vec![
        (
            "binary_sensor",
            topic("binary_sensor", "trust"),
            merge(
                base(format!("{stream} camera trust"), "trust"),
                json!({
                    "device_class": "problem",
                    "state_topic": cfg.stream_topic(stream, "state"),
                    "value_template": "{{ 'ON' if value in ('degraded', 'down') else 'OFF' }}",
                    "payload_on": "ON",
                    "payload_off": "OFF",
                    "json_attributes_topic": cfg.stream_topic(stream, "attributes"),
                }),
            ),
        ),
        (
            "sensor",
            topic("sensor", "score"),
            merge(
                base(format!("{stream} score"), "score"),
                json!({
                    "state_topic": cfg.stream_topic(stream, "attributes"),
                    "value_template": "{{ value_json.score }}",
                    "state_class": "measurement",
                    "suggested_display_precision": 2,
                    "json_attributes_topic": cfg.stream_topic(stream, "attributes"),
                    "json_attributes_template": "{{ {'threshold': value_json.threshold, 'alert_id': value_json.alert_id} | tojson }}",
                }),
            ),
        ),
    ];
    if cfg.snapshot_max_bytes > 0 {
        out.push((
            "image",
            topic("image", "snapshot"),
            merge(
                base(format!("{stream} snapshot"), "snapshot"),
                json!({
                    "image_topic": cfg.stream_topic(stream, "snapshot"),
                    "content_type": "image/jpeg",
                }),
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_safe_and_distinct() {
        assert_eq!(ha_id("cam0"), "cam0");
        assert_ne!(ha_id("a b"), ha_id("a_b"));
        assert!(ha_id("a/b+#é").chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'));
    }

    #[test]
    fn discovery_follows_home_assistants_schema() {
        let mut cfg = MqttSinkConfig::new("h", 1883, "box");
        cfg.discovery = true;
        let d = discovery(&cfg, "front door");
        let topics: Vec<&str> = d.iter().map(|x| x.1.as_str()).collect();
        let sid = ha_id("front door");
        assert_eq!(
            topics,
            [
                format!("homeassistant/binary_sensor/gradwatch_box/{sid}_trust/config"),
                format!("homeassistant/sensor/gradwatch_box/{sid}_score/config"),
                format!("homeassistant/image/gradwatch_box/{sid}_snapshot/config"),
            ]
        );
        let b = &d[0].2;
        assert_eq!(b["device_class"], "problem");
        assert_eq!(b["state_topic"], "gradwatch/box/front door/state");
        assert_eq!(b["availability_topic"], "gradwatch/box/availability");
        assert_eq!(b["device"]["identifiers"][0], "gradwatch_box");
        assert_eq!(d[2].2["image_topic"], "gradwatch/box/front door/snapshot");
    }
}
