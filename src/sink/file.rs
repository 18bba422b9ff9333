//! File sink: append-only JSON lines, each flushed and `fsync`ed (`sync_data`), reopened on
//! SIGHUP so logrotate can move the file away.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Sink, SinkError};
use crate::alert::Event;

/// Minimum pause between reopen attempts after a failure, so a removed directory does not
/// turn every event into a burst of syscalls and log lines.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Appends events to a file, one JSON object per line.
pub struct FileSink {
    name: String,
    path: PathBuf,
    fsync: bool,
    file: Option<File>,
    next_retry: Option<Instant>,
}

impl FileSink {
    /// Opens (creating if needed) `path` for appending. An open failure is returned so a bad
    /// path is reported at start-up rather than at the first alert.
    pub fn open(name: impl Into<String>, path: &Path, fsync: bool) -> Result<Self, SinkError> {
        let file = open_append(path)?;
        Ok(FileSink { name: name.into(), path: path.to_path_buf(), fsync, file: Some(file), next_retry: None })
    }

    /// The configured path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn ensure_open(&mut self) -> Result<&mut File, SinkError> {
        if self.file.is_none() {
            if self.next_retry.is_some_and(|t| Instant::now() < t) {
                return Err(SinkError::Unavailable(format!(
                    "{} could not be reopened; retrying in about a second",
                    self.path.display()
                )));
            }
            match open_append(&self.path) {
                Ok(f) => {
                    log::info!("sink {}: reopened {}", self.name, self.path.display());
                    self.file = Some(f);
                    self.next_retry = None;
                }
                Err(e) => {
                    self.next_retry = Some(Instant::now() + RETRY_PAUSE);
                    return Err(e);
                }
            }
        }
        self.file.as_mut().ok_or_else(|| SinkError::Unavailable(format!("{} is not open", self.path.display())))
    }
}

fn open_append(path: &Path) -> Result<File, SinkError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| SinkError::Open { path: path.to_path_buf(), source: e })
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn send(&mut self, ev: &Event) -> Result<(), SinkError> {
        let mut line = ev.to_json();
        line.push('\n');
        let fsync = self.fsync;
        let file = self.ensure_open()?;
        // A single write of the whole line (O_APPEND) keeps lines whole even if another
        // process appends to the same file.
        let res = file.write_all(line.as_bytes()).and_then(|()| file.flush()).and_then(|()| {
            if fsync {
                file.sync_data()
            } else {
                Ok(())
            }
        });
        if let Err(e) = res {
            // Drop the handle: the next event reopens (the directory may come back, the disk
            // may get space). A partial line may remain; readers skip unparsable lines.
            self.file = None;
            self.next_retry = Some(Instant::now() + RETRY_PAUSE);
            return Err(SinkError::Io(e));
        }
        Ok(())
    }

    fn reopen(&mut self) -> Result<(), SinkError> {
        if let Some(f) = self.file.take() {
            // Best effort: the data is already synced after each event when fsync is on.
            let _ = f.sync_all();
        }
        self.next_retry = None;
        self.ensure_open().map(|_| ())
    }

    fn flush(&mut self, _deadline: Instant) -> Result<(), SinkError> {
        match self.file.as_mut() {
            Some(f) => f.sync_all().map_err(SinkError::Io),
            None => Ok(()),
        }
    }
}
