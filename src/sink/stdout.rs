//! Stdout sink: one JSON object per line, flushed after every event.

use std::io::Write;
use std::time::Instant;

use super::{Sink, SinkError};
use crate::alert::event::Event;

/// Writes events as JSON lines to any writer (stdout in the daemon, a buffer in tests).
pub struct StdoutSink<W: Write + Send = std::io::Stdout> {
    name: String,
    out: W,
}

impl StdoutSink<std::io::Stdout> {
    /// A sink on the process's stdout.
    pub fn new(name: impl Into<String>) -> Self {
        StdoutSink { name: name.into(), out: std::io::stdout() }
    }
}

impl<W: Write + Send> StdoutSink<W> {
    /// A sink on an arbitrary writer.
    pub fn with_writer(name: impl Into<String>, out: W) -> Self {
        StdoutSink { name: name.into(), out }
    }

    /// The writer, e.g. to inspect a test buffer.
    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write + Send> Sink for StdoutSink<W> {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        self.send_with_id(&crate::base::time::new_event_id(), ev)
    }

    fn send_with_id(&mut self, event_id: &str, ev: &Event) -> Result<(), SinkError> {
        let mut line = ev.to_json_with_id(event_id);
        line.push('\n');
        // One write_all of the whole line, so concurrent writers (logs go to stderr) cannot
        // split an event.
        self.out.write_all(line.as_bytes()).map_err(SinkError::Io)?;
        self.out.flush().map_err(SinkError::Io)
    }

    fn flush(&mut self, _deadline: Instant) -> Result<(), SinkError> {
        self.out.flush().map_err(SinkError::Io)
    }
}
