//! A sink that keeps the events in memory, for tests and for programs that embed the pipeline
//! and read its events themselves (Vector's model: a real component, not a mock per test file).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::{Sink, SinkError};
use crate::alert::event::Event;

/// The events a [`MemorySink`] received, in order, shared with whoever reads them.
pub type EventLog = Arc<Mutex<Vec<Event>>>;

/// Appends every event to an [`EventLog`]; never fails, never drops.
pub struct MemorySink {
    log: EventLog,
}

impl MemorySink {
    /// A sink named `mem` appending to `log`.
    pub fn new(log: EventLog) -> Self {
        MemorySink { log }
    }
}

impl Sink for MemorySink {
    fn name(&self) -> &str {
        "mem"
    }

    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        // A reader that panicked holding the lock leaves a usable log.
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push(ev.clone());
        Ok(())
    }

    fn flush(&mut self, _deadline: Instant) -> Result<(), SinkError> {
        Ok(())
    }
}
