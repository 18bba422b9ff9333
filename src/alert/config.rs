//! `[alert]`: the debounce policy of every stream and its per-stream overrides.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{AlertPolicy, BaselineConfig};

/// `[alert]`: the debounce policy of every stream, with optional per-stream overrides in
/// `[alert.stream.<name>]` tables (keys not given there come from `[alert]`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AlertConfig {
    /// The policy of streams without an override.
    #[serde(flatten)]
    pub default: AlertPolicy,
    /// Per-stream overrides, by stream name, already merged with the defaults.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub stream: BTreeMap<String, AlertPolicy>,
    /// `state_dir`: where learned baselines are kept (`baseline-<stream>-<model sha256>.toml`),
    /// reloaded at start. Default unset: baselines live in memory only and are learned again
    /// after a restart.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The streams that learn a baseline (from their `[[stream]] baseline = { ... }`), filled
    /// in by the daemon; not a key of `[alert]`.
    #[serde(skip)]
    pub baselines: BTreeMap<String, BaselineConfig>,
}

impl AlertConfig {
    /// The policy in force for `stream`.
    pub fn policy_for(&self, stream: &str) -> &AlertPolicy {
        self.stream.get(stream).unwrap_or(&self.default)
    }

    /// Checks every policy and that each override names one of `streams`.
    pub fn validate(&self, streams: &HashSet<&str>) -> Result<(), String> {
        self.default.validate().map_err(|e| format!("[alert]: {e}"))?;
        for (name, p) in &self.stream {
            if !streams.contains(name.as_str()) {
                return Err(format!(
                    "[alert.stream.{name}]: there is no stream named `{name}`; fix the name or remove the table"
                ));
            }
            p.validate().map_err(|e| format!("[alert.stream.{name}]: {e}"))?;
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for AlertConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // `flatten` cannot be combined with `deny_unknown_fields`, so split by hand (as
        // `StreamConfig` does): both halves stay strict.
        let mut table = toml::Table::deserialize(d)?;
        let state_dir = match table.remove("state_dir") {
            None => None,
            Some(toml::Value::String(s)) => Some(PathBuf::from(s)),
            Some(_) => return Err(D::Error::custom("[alert] `state_dir` must be a path string")),
        };
        let overrides = match table.remove("stream") {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(D::Error::custom("[alert] `stream` must be a table of per-stream tables")),
        };
        let default = AlertPolicy::deserialize(toml::Value::Table(table.clone()))
            .map_err(|e| D::Error::custom(format!("[alert]: {}", e.message())))?;
        let mut stream = BTreeMap::new();
        for (name, v) in overrides {
            let toml::Value::Table(o) = v else {
                return Err(D::Error::custom(format!("[alert.stream.{name}] must be a table of policy keys")));
            };
            let mut merged = table.clone();
            merged.extend(o);
            let p = AlertPolicy::deserialize(toml::Value::Table(merged))
                .map_err(|e| D::Error::custom(format!("[alert.stream.{name}]: {}", e.message())))?;
            stream.insert(name, p);
        }
        Ok(AlertConfig { default, stream, state_dir, baselines: BTreeMap::new() })
    }
}
