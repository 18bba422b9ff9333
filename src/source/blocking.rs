//! Blocking I/O with a time limit: a source's reads (a FIFO whose writer hangs, a file on a
//! stalled network mount) run on a helper thread, and the source waits for each answer at most
//! `timeout_s`. A read that takes longer leaves the source free to report
//! [`SourceEvent::Down`](super::SourceEvent::Down) and to be polled again (so its capture
//! thread can notice shutdown); the read goes on, and its answer is taken by a later wait.
//!
//! One job at a time, no read-ahead: each job starts only when the source asks for it, so the
//! source's behaviour is the same as reading inline, only time-limited.

use std::time::Duration;

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};

type Job<S, R> = Box<dyn FnOnce(&mut S) -> R + Send>;

/// The outcome of [`Blocking::run`].
#[derive(Debug)]
pub(crate) enum Wait<R> {
    /// The job finished.
    Done(R),
    /// The job is still running after the timeout; call [`Blocking::run`] again to keep
    /// waiting for it (the new job is then ignored).
    TimedOut,
    /// The helper thread is gone (it panicked) or could not be started; the message says why.
    Failed(String),
}

/// A helper thread owning state `S` (an open reader), running one job on it at a time.
pub(crate) struct Blocking<S: Send + 'static, R: Send + 'static> {
    name: String,
    state: Option<S>,
    jobs: Option<Sender<Job<S, R>>>,
    replies: Option<Receiver<R>>,
    pending: bool,
}

impl<S: Send + 'static, R: Send + 'static> Blocking<S, R> {
    /// A worker for `state`; its thread (named `name`) starts on the first job, so building a
    /// source that is never polled (`check-config`) starts no thread.
    pub(crate) fn new(name: impl Into<String>, state: S) -> Self {
        Blocking { name: name.into(), state: Some(state), jobs: None, replies: None, pending: false }
    }

    fn start(&mut self) -> Result<(), String> {
        if self.jobs.is_some() {
            return Ok(());
        }
        let Some(mut state) = self.state.take() else { return Err("the reader thread has ended".into()) };
        let (job_tx, job_rx) = bounded::<Job<S, R>>(1);
        let (reply_tx, reply_rx) = bounded::<R>(1);
        let name: String = self.name.chars().take(15).collect();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                // Ends when the source is dropped (its sender goes) or the source stops waiting.
                while let Ok(job) = job_rx.recv() {
                    if reply_tx.send(job(&mut state)).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| format!("cannot start the reader thread: {e}"))?;
        self.jobs = Some(job_tx);
        self.replies = Some(reply_rx);
        Ok(())
    }

    /// Starts `job` (unless an earlier one is still running: then `job` is dropped and that one
    /// is waited for) and waits at most `timeout` for its answer.
    pub(crate) fn run(&mut self, job: impl FnOnce(&mut S) -> R + Send + 'static, timeout: Duration) -> Wait<R> {
        if let Err(e) = self.start() {
            return Wait::Failed(e);
        }
        let (Some(jobs), Some(replies)) = (&self.jobs, &self.replies) else {
            return Wait::Failed("the reader thread is not running".into());
        };
        if !self.pending {
            if jobs.send(Box::new(job)).is_err() {
                return Wait::Failed("the reader thread has ended (it panicked)".into());
            }
            self.pending = true;
        }
        match replies.recv_timeout(timeout) {
            Ok(r) => {
                self.pending = false;
                Wait::Done(r)
            }
            Err(RecvTimeoutError::Timeout) => Wait::TimedOut,
            Err(RecvTimeoutError::Disconnected) => {
                self.pending = false;
                Wait::Failed("the reader thread has ended (it panicked)".into())
            }
        }
    }
}

/// Checks a `timeout_s`: finite and > 0.
pub(crate) fn check_timeout(timeout_s: f64) -> Result<Duration, super::SourceError> {
    if timeout_s.is_finite() && timeout_s > 0.0 && timeout_s <= 86_400.0 {
        Ok(Duration::from_secs_f64(timeout_s))
    } else {
        Err(super::SourceError::Config(format!(
            "`timeout_s` is {timeout_s}; use seconds > 0 (at most 86400) after which a silent input counts as down"
        )))
    }
}

/// Whether the process may access `path` with `mode` (`libc::R_OK`, `W_OK`, `X_OK`), without
/// opening it (opening a FIFO would block or wake its writer).
pub(crate) fn may_access(path: &std::path::Path, mode: libc::c_int) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; access(2) only reads it.
    if unsafe { libc::access(c.as_ptr(), mode) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
