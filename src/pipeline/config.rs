//! `[pipeline]`: batching, supervision and shutdown.

use serde::{Deserialize, Serialize};

/// `[pipeline]`: batching, supervision and shutdown.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Inference batches at most this many frames across streams (also bounds the memory the
    /// batch's intermediates take). Default 8.
    pub max_batch: usize,
    /// Without a latency target: after the first frame of a batch, wait at most this long for
    /// more. Ignored when `latency_target_ms` is set. Default 20.
    pub max_wait_ms: u64,
    /// Capture-to-verdict latency the batching aims for, in ms: inference never waits for more
    /// frames (a lightly loaded daemon answers at once), takes what is queued, and caps the
    /// batch so that the oldest frame's age plus the batch's estimated run time (learnt from
    /// the last batches) stays within the target; a frame already later than the target gets
    /// a full `max_batch` (throughput first, to catch up). 0 turns it off (fixed `max_batch` /
    /// `max_wait_ms`). Default 150.
    pub latency_target_ms: u64,
    /// A stage whose heartbeat is older than this is stuck: the systemd watchdog is no longer
    /// fed and `/healthz` says why. Default 10.
    pub heartbeat_timeout_s: u64,
    /// On SIGTERM, queued frames and events are drained for at most this long. Default 5.
    pub shutdown_deadline_s: u64,
    /// READY=1 is sent when every enabled stream delivered its first frame, or after this
    /// long at the latest (a camera that is unplugged at boot must not fail the unit). Default 10.
    pub start_timeout_s: u64,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_batch: 8,
            max_wait_ms: 20,
            latency_target_ms: 150,
            heartbeat_timeout_s: 10,
            shutdown_deadline_s: 5,
            start_timeout_s: 10,
        }
    }
}

impl PipelineConfig {
    /// Checks the numbers are in range; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch == 0 || self.max_batch > 4096 {
            return Err(format!("max_batch = {} must be in 1..=4096", self.max_batch));
        }
        if self.max_wait_ms > 10_000 {
            return Err(format!("max_wait_ms = {} must be at most 10000", self.max_wait_ms));
        }
        if self.latency_target_ms > 60_000 {
            return Err(format!("latency_target_ms = {} must be at most 60000 (0 = off)", self.latency_target_ms));
        }
        if !(1..=3600).contains(&self.heartbeat_timeout_s) {
            return Err(format!("heartbeat_timeout_s = {} must be in 1..=3600", self.heartbeat_timeout_s));
        }
        // Larger values overflowed the deadline's `Instant` at SIGTERM.
        if self.shutdown_deadline_s > 3600 {
            return Err(format!("shutdown_deadline_s = {} must be in 0..=3600", self.shutdown_deadline_s));
        }
        if self.start_timeout_s > 3600 {
            return Err(format!("start_timeout_s = {} must be in 0..=3600", self.start_timeout_s));
        }
        Ok(())
    }
}
