//! Statistics handles: what the sinks count and the metrics endpoint reads. They live below
//! both so that `metrics` never imports `sink` (the MQTT sink reads the metrics' status).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A snapshot of one sink's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkStats {
    /// Sink name.
    pub name: String,
    /// Events waiting in the fan-out queue.
    pub queue_depth: usize,
    /// Events the sink accepted without error.
    pub sent: u64,
    /// Events whose `send` failed.
    pub failed: u64,
    /// Events dropped: fan-out queue overflow plus the sink's own drops.
    pub dropped: u64,
    /// `dropped` by reason: every one of `sink::reason::ALL`, in that order.
    pub dropped_by: Vec<(&'static str, u64)>,
    /// Events accepted by the sink but not yet confirmed (MQTT awaiting PUBACK), or kept
    /// for a retry (file sink).
    pub backlog: usize,
    /// Times the sink reopened a destination found removed or replaced (file sink).
    pub reopened: u64,
}

/// Cheap cloneable handle to read sink statistics (for the metrics endpoint) without
/// holding the sink fan-out.
#[derive(Clone)]
pub struct StatsHandle {
    read: Arc<dyn Fn() -> Vec<SinkStats> + Send + Sync>,
}

impl std::fmt::Debug for StatsHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.snapshot()).finish()
    }
}

impl StatsHandle {
    /// A handle whose [`StatsHandle::snapshot`] calls `read`.
    pub fn new(read: impl Fn() -> Vec<SinkStats> + Send + Sync + 'static) -> Self {
        StatsHandle { read: Arc::new(read) }
    }

    /// Current counters of every sink, in configuration order.
    pub fn snapshot(&self) -> Vec<SinkStats> {
        (self.read)()
    }
}

/// Counters of one frames sink.
#[derive(Debug, Default)]
pub struct FramesStats {
    /// Sink name.
    pub name: String,
    /// Lines delivered to the destination (the socket or file accepted them).
    pub sent: AtomicU64,
    /// Lines not sent by `max_rate` (not a loss: the rate asked for).
    pub rate_limited: AtomicU64,
    /// Dropped because the writer's queue was full.
    pub dropped_queue: AtomicU64,
    /// Dropped because the consumer did not read (its socket buffer full).
    pub dropped_slow: AtomicU64,
    /// Dropped because no consumer was there (socket missing, connection refused or lost)
    /// or the write failed.
    pub dropped_unavailable: AtomicU64,
}
