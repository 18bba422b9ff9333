//! What goes in and out of the alert stage: [`Scored`] frames in, [`Event`]s out. The JSON form
//! of [`Event`] is the wire format of every sink (documented in `docs/guide/alerts.md`); sinks,
//! metrics and snapshots import these types and nothing else of `alert`.

use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// One scored frame, as the detector hands it to the alert stage.
#[derive(Clone, Debug)]
pub struct Scored {
    /// Stream (camera) name.
    pub stream: String,
    /// Frame sequence number within the stream (increasing).
    pub seq: u64,
    /// Capture time of the frame; all alert times derive from it.
    pub time: SystemTime,
    /// Uncertainty score (higher = less familiar).
    pub score: f32,
    /// Threshold in force; the frame is "over" when `score > threshold`.
    pub threshold: f32,
    /// The calibration's clean tail scale in force (`Calibration::clean_tail_scale`; 0 when
    /// unknown): the `cusum` policy's p-values never assume a lighter clean tail than this.
    pub clean_tail_scale: f32,
    /// Index of the classifier's top class.
    pub top_class: usize,
    /// Name of the top class, when the model has labels.
    pub top_class_name: Option<String>,
    /// Softmax probability of the top class.
    pub confidence: f32,
    /// Free-form tag carried by the frame (e.g. the corruption applied in a demo).
    pub tag: Option<String>,
}

impl Scored {
    /// Whether the frame counts as over threshold. NaN scores never do (they are a bug
    /// upstream, and must not raise alerts on their own).
    pub fn is_over(&self) -> bool {
        self.score > self.threshold
    }
}

/// The model that produced the scores, carried in every alert.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    /// Model name.
    pub name: String,
    /// Hex SHA-256 of the model file.
    pub sha256: String,
}

/// Why an alert ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The over-threshold count fell to `clear` or below (after `min_duration_ms`).
    Cleared,
    /// The daemon shut down with the alert open.
    Shutdown,
    /// The stream went down with the alert open.
    StreamDown,
    /// The daemon stopped without closing the alert (killed, crashed, power lost) and closed
    /// it at its next start (`open::OpenAlerts`).
    Restart,
}

impl EndReason {
    /// The wire string ("cleared", "shutdown", "stream_down").
    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Cleared => "cleared",
            EndReason::Shutdown => "shutdown",
            EndReason::StreamDown => "stream_down",
            EndReason::Restart => "restart",
        }
    }
}

/// The state of one alert, as carried by `alert_start`, `alert_update` and `alert_end`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable id, `<stream>-<first_seq>-<first_time unix ms>`; same in all events of an alert.
    pub id: String,
    /// Stream name.
    pub stream: String,
    /// When this event happened (RFC 3339 UTC, ms): the triggering frame's time, or the
    /// time given to `shutdown` / `stream_down`.
    pub time: String,
    /// Sequence number of the first over-threshold frame of the alert.
    pub first_seq: u64,
    /// Sequence number of the most recent frame included.
    pub last_seq: u64,
    /// Time of the first frame (RFC 3339 UTC, ms).
    pub first_time: String,
    /// Time of the most recent frame included (RFC 3339 UTC, ms).
    pub last_time: String,
    /// `time` minus `first_time`, in milliseconds.
    pub duration_ms: u64,
    /// Frames from `first_seq` to `last_seq` seen by the tracker.
    pub frames: u64,
    /// Of those, frames over threshold.
    pub frames_over: u64,
    /// Highest score in the alert.
    pub peak_score: f32,
    /// Mean score over the alert's frames (NaN scores excluded).
    pub mean_score: f32,
    /// Threshold in force at the peak frame.
    pub threshold: f32,
    /// Top class of the peak frame.
    pub top_class: usize,
    /// Name of the top class of the peak frame, if known.
    pub top_class_name: Option<String>,
    /// Top-class probability of the peak frame.
    pub confidence: f32,
    /// Model name.
    pub model: String,
    /// Model SHA-256 (hex).
    pub model_sha256: String,
    /// Tag of the peak frame.
    pub tag: Option<String>,
    /// Path of the JPEG snapshot: the triggering frame in `alert_start`, the peak frame in
    /// `alert_end`; absent when snapshots are off or the frame was not kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// Path of the PNG heat map of the input gradient over that frame; absent likewise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heatmap: Option<String>,
    /// What the policy said (policy, statistic, threshold, expected false-alarm rate).
    #[serde(flatten)]
    pub detail: PolicyDetail,
}

/// The policy's side of an alert event; every field is optional on the wire.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyDetail {
    /// The policy that raised the alert: `k_of_n` or `cusum`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    /// The policy's statistic at this event: frames over threshold in the window (`k_of_n`),
    /// or the CUSUM `S` (`cusum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic: Option<f64>,
    /// The value of `statistic` that raises: `raise` (`k_of_n`) or `h` (`cusum`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistic_threshold: Option<f64>,
    /// `cusum`: the expected false alarms per day of clean stream in force (upper bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_alarms_per_day: Option<f64>,
    /// `cusum`: the clean distribution in force: `learned` (the stream's own) or
    /// `calibration` (the fallback derived from the calibration's threshold).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baseline: Option<String>,
    /// `cusum` with image evidence: which evidence raised the alert, `model` (the scores) or
    /// `image` (the whole frame's picture).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<String>,
    /// `cusum` with image evidence, once learned: the image CUSUM's `S`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_statistic: Option<f64>,
    /// `cusum` with image evidence, once learned: the image CUSUM's `h`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_statistic_threshold: Option<f64>,
}

/// An event emitted by the alert stage: the unit every sink delivers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An alert was raised.
    AlertStart {
        /// The alert.
        #[serde(flatten)]
        alert: Alert,
    },
    /// Periodic progress of an active alert.
    AlertUpdate {
        /// The alert.
        #[serde(flatten)]
        alert: Alert,
    },
    /// An alert ended.
    AlertEnd {
        /// The alert, final numbers.
        #[serde(flatten)]
        alert: Alert,
        /// Why it ended.
        reason: EndReason,
    },
    /// A stream stopped delivering frames.
    StreamDown {
        /// Stream name.
        stream: String,
        /// RFC 3339 UTC time.
        time: String,
        /// Human-readable cause.
        reason: String,
    },
    /// A stream (re)started delivering frames.
    StreamUp {
        /// Stream name.
        stream: String,
        /// RFC 3339 UTC time.
        time: String,
    },
}

impl Event {
    /// The stream this event concerns.
    pub fn stream(&self) -> &str {
        match self {
            Event::AlertStart { alert } | Event::AlertUpdate { alert } => &alert.stream,
            Event::AlertEnd { alert, .. } => &alert.stream,
            Event::StreamDown { stream, .. } | Event::StreamUp { stream, .. } => stream,
        }
    }

    /// The `event` tag of the JSON form ("alert_start", ...).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::AlertStart { .. } => "alert_start",
            Event::AlertUpdate { .. } => "alert_update",
            Event::AlertEnd { .. } => "alert_end",
            Event::StreamDown { .. } => "stream_down",
            Event::StreamUp { .. } => "stream_up",
        }
    }

    /// The alert carried, for alert events.
    pub fn alert(&self) -> Option<&Alert> {
        match self {
            Event::AlertStart { alert } | Event::AlertUpdate { alert } => Some(alert),
            Event::AlertEnd { alert, .. } => Some(alert),
            _ => None,
        }
    }

    /// One JSON object, no newline: the line format of the stdout and file sinks and the MQTT
    /// payload.
    pub fn to_json(&self) -> String {
        // Serializing these plain structs cannot fail (string keys, no maps with odd keys);
        // NaN floats become `null`, which the fallback keeps parseable anyway.
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"event\":\"serialization_error\",\"error\":{}}}", serde_json::Value::String(e.to_string()))
        })
    }

    /// The JSON object of [`Event::to_json`] with an `event_id` member first: the form every
    /// sink writes, so consumers can de-duplicate redelivered events (see [`new_event_id`](crate::base::time::new_event_id)).
    pub fn to_json_with_id(&self, event_id: &str) -> String {
        let body = self.to_json();
        // `to_json` always yields a non-empty object (`{"event":...}`), so splicing the id in
        // after the opening brace keeps it one valid object without a second serialization.
        // The daemon's fleet identity (`[service]`) follows the id: every sink's events say
        // which unit they come from.
        let unit = crate::fleet::current().map(|id| id.json_members()).unwrap_or_default();
        match body.strip_prefix('{') {
            Some(rest) => format!("{{\"event_id\":{},{unit}{rest}", serde_json::Value::String(event_id.to_string())),
            None => body,
        }
    }
}
