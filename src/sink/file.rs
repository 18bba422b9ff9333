//! File sink: append-only JSON lines, each flushed and `fsync`ed (`sync_data`), reopened on
//! SIGHUP so logrotate can move the file away.
//!
//! What it promises (`docs/guide/reliability.md`):
//! * an event counts as sent only once its whole line is written (and, with `fsync`, synced)
//!   to the file that the configured path names *after* the write; a file removed or replaced
//!   under the sink (its directory deleted, a rename without SIGHUP) is noticed before and
//!   after every write, and the event goes to a reopened file instead (counted in `reopened`);
//! * a failed write (disk full, file size limit, directory gone) keeps the event for a retry
//!   (counted once in `failed_total`; later delivered in order, counted in `sent_total` then)
//!   and cuts any partial line off again, so no record is ever glued to the next one;
//! * the path must be a regular file: a FIFO, socket or device is refused at open with a
//!   message, never waited on (the open is non-blocking).

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use super::{Sink, SinkError};
use crate::alert::event::Event;

/// Minimum pause between reopen attempts after a failure, so a removed directory does not
/// turn every event into a burst of syscalls and log lines.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Events kept for a retry after failed writes; beyond this the oldest is dropped (counted).
pub const MAX_RETRY_EVENTS: usize = 10_000;

/// Appends events to a file, one JSON object per line.
pub struct FileSink {
    name: String,
    path: PathBuf,
    fsync: bool,
    file: Option<Open>,
    next_retry: Option<Instant>,
    /// Lines (with their newline) not yet written, oldest first. Every line but the one a
    /// `send` is working on has already been reported as failed.
    pending: VecDeque<String>,
    /// A partial line could not be cut off: the next write starts with a newline so the
    /// partial stays a line of its own instead of gluing onto a record.
    needs_newline: bool,
    late: u64,
    dropped: u64,
    /// Events still waiting for a retry when `flush` (shutdown) gave up: lost.
    lost_at_shutdown: u64,
    reopened: u64,
}

/// An open file and the identity (device, inode) it had when opened.
struct Open {
    file: File,
    dev: u64,
    ino: u64,
}

/// Counters of the file sink.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileStats {
    /// Events waiting for a retry.
    pub pending: usize,
    /// Times the file was found removed or replaced and opened again.
    pub reopened: u64,
    /// Events dropped because more than [`MAX_RETRY_EVENTS`] were waiting.
    pub dropped: u64,
}

impl FileSink {
    /// Opens (creating if needed) `path` for appending. An open failure is returned so a bad
    /// path is reported at start-up rather than at the first alert.
    pub fn open(name: impl Into<String>, path: &Path, fsync: bool) -> Result<Self, SinkError> {
        survive_file_size_limit();
        let file = open_append(path)?;
        Ok(FileSink {
            name: name.into(),
            path: path.to_path_buf(),
            fsync,
            file: Some(file),
            next_retry: None,
            pending: VecDeque::new(),
            needs_newline: false,
            late: 0,
            dropped: 0,
            lost_at_shutdown: 0,
            reopened: 0,
        })
    }

    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Current counters.
    pub fn stats(&self) -> FileStats {
        FileStats { pending: self.pending.len(), reopened: self.reopened, dropped: self.dropped }
    }

    /// Whether the path still names the open file (false when it was removed, or renamed and
    /// replaced). A `stat` error other than "not found" (e.g. permissions) says nothing, so
    /// the file is kept.
    fn still_named(&self, open: &Open) -> bool {
        names(&self.path, open)
    }

    fn ensure_open(&mut self) -> Result<(), SinkError> {
        if let Some(open) = &self.file {
            if self.still_named(open) {
                return Ok(());
            }
            self.reopened += 1;
            log::warn!(
                "sink {}: {} was removed or replaced under the sink; opening it again",
                self.name,
                self.path.display()
            );
            self.file = None;
            self.next_retry = None;
        }
        if self.next_retry.is_some_and(|t| Instant::now() < t) {
            return Err(SinkError::Unavailable(format!(
                "{} could not be reopened; retrying in about a second",
                self.path.display()
            )));
        }
        match open_append(&self.path) {
            Ok(f) => {
                log::info!("sink {}: opened {}", self.name, self.path.display());
                self.file = Some(f);
                self.next_retry = None;
                Ok(())
            }
            Err(e) => {
                self.next_retry = Some(Instant::now() + RETRY_PAUSE);
                Err(e)
            }
        }
    }

    /// Writes the pending lines in order until one fails. Returns how many were written and
    /// the error that stopped it, if any.
    fn drain(&mut self) -> (usize, Option<SinkError>) {
        let mut written = 0;
        while let Some(line) = self.pending.front() {
            let line = line.clone();
            if let Err(e) = self.ensure_open().and_then(|()| self.write_line(&line)) {
                return (written, Some(e));
            }
            self.pending.pop_front();
            written += 1;
        }
        (written, None)
    }

    /// Writes one whole line and syncs it; on any failure cuts the file back to where it was,
    /// drops the handle (the next attempt reopens: the directory may come back, the disk may
    /// get space) and returns the error.
    fn write_line(&mut self, line: &str) -> Result<(), SinkError> {
        let fsync = self.fsync;
        let Some(open) = self.file.as_mut() else {
            return Err(SinkError::Unavailable(format!("{} is not open", self.path.display())));
        };
        let mut buf = Vec::with_capacity(line.len() + 1);
        if self.needs_newline {
            buf.push(b'\n');
        }
        buf.extend_from_slice(line.as_bytes());
        let start = open.file.metadata().map(|m| m.len()).ok();
        // One write of the whole line (O_APPEND) normally; a short write is continued, and
        // its byte count kept so a failure can be undone exactly.
        let mut done = 0usize;
        let mut res = Ok(());
        while done < buf.len() {
            match open.file.write(&buf[done..]) {
                Ok(0) => {
                    res = Err(std::io::Error::new(std::io::ErrorKind::WriteZero, "write returned 0"));
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    res = Err(e);
                    break;
                }
            }
        }
        let res = res.and_then(|()| if fsync { open.file.sync_data() } else { Ok(()) });
        if let Err(e) = res {
            if done > 0 {
                self.needs_newline = !cut_back(&open.file, start, done as u64);
            }
            self.file = None;
            self.next_retry = Some(Instant::now() + RETRY_PAUSE);
            return Err(SinkError::Io(e));
        }
        self.needs_newline = false;
        // The path was checked before the write; if the file went away meanwhile, the line
        // went with it: write it again to the new file (a duplicate at worst, never a loss).
        if !names(&self.path, open) {
            return Err(SinkError::Unavailable(format!(
                "{} was removed or replaced during the write; the event is written again",
                self.path.display()
            )));
        }
        Ok(())
    }

    fn keep(&mut self, line: String) {
        while self.pending.len() >= MAX_RETRY_EVENTS {
            self.pending.pop_front();
            self.dropped += 1;
            if self.dropped.is_power_of_two() {
                log::warn!(
                    "sink {}: more than {MAX_RETRY_EVENTS} events wait for a retry of {}; dropped the \
                     oldest ({} so far)",
                    self.name,
                    self.path.display(),
                    self.dropped
                );
            }
        }
        self.pending.push_back(line);
    }
}

/// Whether `path` names the open file (see [`FileSink::still_named`]).
fn names(path: &Path, open: &Open) -> bool {
    match std::fs::metadata(path) {
        Ok(m) => m.dev() == open.dev && m.ino() == open.ino,
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

/// Truncates `file` back to `start` after a failed write of `written` bytes, if nobody else
/// appended meanwhile. True when the file ends with a complete record again.
fn cut_back(file: &File, start: Option<u64>, written: u64) -> bool {
    let Some(start) = start else { return false };
    match file.metadata() {
        Ok(m) if m.len() == start + written => file.set_len(start).is_ok(),
        _ => false,
    }
}

/// A file size limit (`RLIMIT_FSIZE`, `LimitFSIZE=`) makes the kernel send SIGXFSZ, whose
/// default action kills the process; with a handler installed the write fails with EFBIG
/// instead, which the sink handles like a full disk. Installed once per process.
pub(super) fn survive_file_size_limit() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        if let Err(e) = signal_hook::flag::register(signal_hook::consts::SIGXFSZ, Arc::new(AtomicBool::new(false))) {
            log::warn!("cannot handle SIGXFSZ ({e}); hitting a file size limit will kill the process");
        }
    });
}

fn open_append(path: &Path) -> Result<Open, SinkError> {
    // Say what is wrong with a FIFO, socket or device up front (opening a FIFO without a
    // reader fails with the unhelpful ENXIO below).
    if let Ok(m) = std::fs::metadata(path) {
        check_regular(path, &m)?;
    }
    // O_NONBLOCK: should a FIFO appear at the path after the check, opening it for writing
    // must not wait for a reader forever (and start-up with it); regular files ignore it.
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| SinkError::Open { path: path.to_path_buf(), source: e })?;
    let m = file.metadata().map_err(|e| SinkError::Open { path: path.to_path_buf(), source: e })?;
    check_regular(path, &m)?;
    Ok(Open { dev: m.dev(), ino: m.ino(), file })
}

fn check_regular(path: &Path, m: &std::fs::Metadata) -> Result<(), SinkError> {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_file() {
        return Ok(());
    }
    let what = if t.is_fifo() {
        "FIFO"
    } else if t.is_socket() {
        "socket"
    } else if t.is_char_device() || t.is_block_device() {
        "device"
    } else if t.is_dir() {
        "directory"
    } else {
        "non-regular file"
    };
    Err(SinkError::NotRegular { path: path.to_path_buf(), what })
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        self.send_with_id(&crate::base::time::new_event_id(), ev)
    }

    fn send_with_id(&mut self, event_id: &str, ev: &Event) -> Result<(), SinkError> {
        let mut line = ev.to_json_with_id(event_id);
        line.push('\n');
        // Behind earlier failed events, so the file keeps the order of events.
        let earlier = self.pending.len();
        self.keep(line);
        let (written, err) = self.drain();
        match err {
            None => {
                self.late += (written - 1) as u64;
                Ok(())
            }
            Some(e) => {
                self.late += written.min(earlier) as u64;
                Err(e)
            }
        }
    }

    fn poll(&mut self) {
        if !self.pending.is_empty() {
            let (written, _) = self.drain();
            self.late += written as u64;
        }
    }

    fn take_late_deliveries(&mut self) -> u64 {
        std::mem::take(&mut self.late)
    }

    fn reopen(&mut self) -> Result<(), SinkError> {
        if let Some(f) = self.file.take() {
            // Best effort: the data is already synced after each event when fsync is on.
            let _ = f.file.sync_all();
        }
        self.next_retry = None;
        self.ensure_open()?;
        self.poll();
        Ok(())
    }

    fn flush(&mut self, _deadline: Instant) -> Result<(), SinkError> {
        // A last try for kept events, whatever the back-off says.
        self.next_retry = None;
        self.poll();
        if !self.pending.is_empty() {
            // Not written anywhere: lost when the process ends, so counted.
            self.lost_at_shutdown = self.pending.len() as u64;
            return Err(SinkError::Timeout { pending: self.pending.len() });
        }
        match self.file.as_mut() {
            Some(f) => f.file.sync_all().map_err(SinkError::Io),
            None => Ok(()),
        }
    }

    fn dropped(&self) -> u64 {
        self.dropped + self.lost_at_shutdown
    }

    fn drops(&self) -> Vec<(&'static str, u64)> {
        vec![(super::reason::RETRY_FULL, self.dropped), (super::reason::SHUTDOWN, self.lost_at_shutdown)]
    }

    fn backlog(&self) -> usize {
        self.pending.len()
    }

    fn reopened(&self) -> u64 {
        self.reopened
    }
}
