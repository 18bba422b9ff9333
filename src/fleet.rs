//! Fleet identity: which unit (roadside box, vehicle) a daemon is, so one broker and one
//! Prometheus can hold a fleet.
//!
//! ```toml
//! [service]
//! unit_id = "rsu-0042"                       # default: the host name
//! labels = { site = "A7-km12", road = "A7", direction = "north" }   # default none
//! ```
//!
//! Where the identity goes (see docs/guide/fleet.md):
//! - every event carries `"unit_id"` and, when there are any, `"labels"` (right after
//!   `event_id`, see [`crate::alert::Event::to_json_with_id`]);
//! - an MQTT sink without an explicit `client_id` uses the unit id as its client id, which is
//!   the second topic level (`gradwatch/<unit_id>/events/<stream>`) and the Home Assistant
//!   device (so discovery ids differ between units);
//! - every Prometheus series gets `unit_id="..."` and the labels as constant labels, when
//!   `[service]` sets `unit_id` or `labels` (without, series stay as they were).
//!
//! The identity is read at start; a SIGHUP reload does not change it (restart to rename a
//! unit: its topics and series are its name).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// `[service]`: this unit's identity.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    /// The unit's id: letters, digits, `.`, `_`, `-`, at most 64. Default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit_id: Option<String>,
    /// Free-form labels (site, road, direction): names `[a-zA-Z_][a-zA-Z0-9_]*`, values any
    /// text without control characters. Default none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Label names the metrics or events use themselves.
const RESERVED: [&str; 9] = ["unit_id", "stream", "sink", "le", "quantile", "provider", "version", "job", "instance"];

impl ServiceConfig {
    /// The unit id: `unit_id`, or the host name.
    pub fn unit_id(&self) -> String {
        self.unit_id.clone().unwrap_or_else(hostname)
    }

    /// Checks the id (also the host name it defaults to) and the labels.
    pub fn validate(&self) -> Result<(), String> {
        let id = self.unit_id();
        let from =
            if self.unit_id.is_some() { "[service] unit_id" } else { "the host name (the default [service] unit_id)" };
        if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err(format!(
                "{from} is {id:?}; a unit id is 1 to 64 letters, digits, '.', '_' or '-' (it becomes an \
                 MQTT topic level and a metric label); set [service] unit_id"
            ));
        }
        for (k, v) in &self.labels {
            let mut cs = k.chars();
            let name_ok = cs.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && cs.all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !k.starts_with("__");
            if !name_ok {
                return Err(format!(
                    "[service] labels: {k:?} is not a label name; use letters, digits and '_', not starting \
                     with a digit or '__'"
                ));
            }
            if RESERVED.contains(&k.as_str()) {
                return Err(format!(
                    "[service] labels: `{k}` is used by gradwatch itself; pick another name (e.g. `site_{k}`)"
                ));
            }
            if v.len() > 256 || v.chars().any(char::is_control) {
                return Err(format!(
                    "[service] labels: `{k}` must be at most 256 characters without control characters"
                ));
            }
        }
        Ok(())
    }

    /// The identity this config gives.
    pub fn identity(&self) -> Identity {
        Identity { unit_id: self.unit_id(), labels: self.labels.clone() }
    }
}

/// A unit's id and labels.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The unit id.
    pub unit_id: String,
    /// The free-form labels.
    pub labels: BTreeMap<String, String>,
}

impl Identity {
    /// The JSON members events carry, with a trailing comma: `"unit_id":"x","labels":{...},`.
    pub fn json_members(&self) -> String {
        let mut s = format!("\"unit_id\":{},", serde_json::Value::String(self.unit_id.clone()));
        if !self.labels.is_empty() {
            let labels = serde_json::to_string(&self.labels).unwrap_or_else(|_| "{}".into());
            s.push_str(&format!("\"labels\":{labels},"));
        }
        s
    }

    /// The Prometheus constant labels: `unit_id` then the labels, in name order.
    pub fn metric_labels(&self) -> Vec<(String, String)> {
        let mut v = vec![("unit_id".to_string(), self.unit_id.clone())];
        v.extend(self.labels.iter().map(|(k, v)| (k.clone(), v.clone())));
        v
    }
}

static CURRENT: RwLock<Option<Arc<Identity>>> = RwLock::new(None);

/// Makes `id` the identity events carry from now on (the daemon sets it once at start).
pub fn set_current(id: Identity) {
    let mut g = CURRENT.write().unwrap_or_else(|e| e.into_inner());
    *g = Some(Arc::new(id));
}

/// The identity events carry; `None` outside the daemon (library use, offline tools).
pub fn current() -> Option<Arc<Identity>> {
    CURRENT.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// This machine's host name (`gethostname(2)`), or `gradwatch` when it has none.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that many bytes.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = String::from_utf8_lossy(&buf[..end]).trim().to_string();
    if rc != 0 || name.is_empty() {
        "gradwatch".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> ServiceConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn unit_id_defaults_to_the_host_name() {
        assert_eq!(cfg("").unit_id(), hostname());
        assert_eq!(cfg("unit_id = \"rsu-1\"").unit_id(), "rsu-1");
    }

    #[test]
    fn bad_ids_and_labels_are_refused() {
        for (text, want) in [
            ("unit_id = \"\"", "1 to 64"),
            ("unit_id = \"a/b\"", "1 to 64"),
            ("unit_id = \"a#\"", "1 to 64"),
            ("labels = { \"1x\" = \"a\" }", "not a label name"),
            ("labels = { __x = \"a\" }", "not a label name"),
            ("labels = { stream = \"a\" }", "used by gradwatch itself"),
            ("labels = { site = \"a\\nb\" }", "control characters"),
        ] {
            let e = cfg(text).validate().unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        cfg("unit_id = \"rsu-0042.a_b\"\nlabels = { site = \"A7 km 12\", road = \"A7\" }").validate().unwrap();
    }

    #[test]
    fn identity_renders_for_events_and_metrics() {
        let id = cfg("unit_id = \"u1\"\nlabels = { site = \"s \\\"q\\\"\", road = \"A7\" }").identity();
        assert_eq!(id.json_members(), r#""unit_id":"u1","labels":{"road":"A7","site":"s \"q\""},"#);
        assert_eq!(id.metric_labels()[0], ("unit_id".into(), "u1".into()));
        assert_eq!(id.metric_labels()[1], ("road".into(), "A7".into()));
        let bare = cfg("unit_id = \"u2\"").identity();
        assert_eq!(bare.json_members(), r#""unit_id":"u2","#);
    }
}
