//! The `frames` sink: one compact JSON line per scored frame for consumers that act on every
//! frame (a planner that must know whether *this* classification can be trusted), to a Unix
//! datagram or stream socket, UDP on localhost, or a file.
//!
//! ```toml
//! [[sink]]
//! kind = "frames"
//! transport = "unix_datagram"        # unix_datagram | unix_stream | udp | file
//! path = "/run/planner/frames.sock"  # the consumer's socket (unix_*) or the file
//! # address = "127.0.0.1:9777"       # udp: a loopback address
//! max_rate = 0                       # frames per second per stream (0: every frame)
//! ```
//!
//! It never blocks the pipeline: inference formats the line and offers it to a bounded queue
//! (`try_send`); a writer thread per sink does the I/O with non-blocking sockets. A consumer
//! that is slow, stopped or absent costs frames, each counted
//! (`gradwatch_frames_sink_dropped_total{reason}`), never latency. Lines are never split: a
//! line that does not fit the socket's buffer is dropped whole. The line's schema is in
//! `docs/guide/alerts.md` ("Per-frame output").

use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender, TrySendError};
use serde::{Deserialize, Serialize};

pub use crate::base::stats::FramesStats;

use super::{LogLimiter, SinkError};

/// How the lines travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// One datagram per line to the consumer's bound `SOCK_DGRAM` socket at `path`.
    UnixDatagram,
    /// A `SOCK_STREAM` connection to the consumer listening at `path`, newline-delimited;
    /// reconnects (at most once a second) when the consumer restarts.
    UnixStream,
    /// One datagram per line to `address` (a loopback address).
    Udp,
    /// Lines appended to the file `path`.
    File,
}

/// `kind = "frames"`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FramesSinkConfig {
    /// Name in logs and metrics. Default "frames".
    #[serde(default)]
    pub name: Option<String>,
    /// How the lines travel.
    pub transport: Transport,
    /// The consumer's socket (`unix_datagram`, `unix_stream`) or the file (`file`).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// `udp`: the consumer's address, e.g. "127.0.0.1:9777" (loopback only).
    #[serde(default)]
    pub address: Option<String>,
    /// At most this many lines per second per stream (0: every scored frame). Default 0.
    #[serde(default)]
    pub max_rate: f64,
    /// Lines waiting for the writer before new ones are dropped. Default 256.
    #[serde(default = "default_queue")]
    pub queue: usize,
}

fn default_queue() -> usize {
    256
}

/// Bytes of whole lines a `unix_stream` connection may hold back while the consumer does not
/// read (on top of the kernel's socket buffer); lines beyond it are dropped.
const STREAM_PENDING_MAX: usize = 64 * 1024;

impl FramesSinkConfig {
    /// The sink's name.
    pub fn name(&self) -> String {
        self.name.clone().unwrap_or_else(|| "frames".into())
    }

    /// Checks the fields without touching the destination.
    pub fn validate(&self) -> Result<(), SinkError> {
        let bad = |m: String| Err(SinkError::Config(format!("[[sink]] frames: {m}")));
        if !(self.max_rate.is_finite() && self.max_rate >= 0.0) {
            return bad(format!("max_rate = {} must be >= 0 (0: every frame)", self.max_rate));
        }
        if self.queue == 0 {
            return bad("queue must be >= 1".into());
        }
        match self.transport {
            Transport::Udp => {
                let Some(a) = &self.address else {
                    return bad("transport udp needs `address` (e.g. \"127.0.0.1:9777\")".into());
                };
                let addr: std::net::SocketAddr = a.parse().map_err(|e| {
                    SinkError::Config(format!("[[sink]] frames: address {a:?}: {e} (e.g. \"127.0.0.1:9777\")"))
                })?;
                if !addr.ip().is_loopback() {
                    return bad(format!(
                        "address {a} is not a loopback address; the frames sink only sends to localhost"
                    ));
                }
            }
            _ => {
                if self.path.is_none() {
                    return bad("this transport needs `path`".into());
                }
            }
        }
        Ok(())
    }

    /// What `check-config` verifies: the fields, and that the destination exists and is
    /// writable: the consumer's socket (so start the consumer first), or the file's directory.
    pub fn check(&self) -> Result<(), SinkError> {
        self.validate()?;
        let name = self.name();
        let err = |m: String| Err(SinkError::Config(format!("[[sink]] {name}: {m}")));
        match (self.transport, &self.path) {
            (Transport::UnixDatagram | Transport::UnixStream, Some(p)) => {
                use std::os::unix::fs::FileTypeExt;
                match std::fs::metadata(p) {
                    Err(e) => {
                        return err(format!(
                            "socket {}: {e}; start the consumer that listens there first, or fix `path`",
                            p.display()
                        ))
                    }
                    Ok(m) if !m.file_type().is_socket() => {
                        return err(format!("{} is not a socket; point `path` at the consumer's socket", p.display()))
                    }
                    Ok(_) => {}
                }
                if !writable(p) {
                    return err(format!(
                        "socket {} is not writable by this user; fix its permissions (or the unit's user)",
                        p.display()
                    ));
                }
            }
            (Transport::File, Some(p)) => {
                let dir = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
                if !dir.is_dir() {
                    return err(format!("directory {} does not exist; create it or fix `path`", dir.display()));
                }
                if !writable(if p.exists() { p } else { dir }) {
                    return err(format!("cannot write {}; fix its permissions or `path`", p.display()));
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// `access(W_OK)`: whether this process may write `p`.
fn writable(p: &Path) -> bool {
    crate::source::blocking::may_access(p, libc::W_OK).is_ok()
}

/// One scored frame as the frames sink publishes it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FrameRecord {
    /// Stream (camera) name.
    pub stream: String,
    /// Frame sequence number within the stream.
    pub seq: u64,
    /// Capture time, unix milliseconds.
    pub time_ms: u64,
    /// The classifier's top class.
    pub top_class: usize,
    /// Its name, when the model has class names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Softmax probability of the top class.
    pub confidence: f32,
    /// The trust head's probability that this classification is wrong (null without a trust
    /// head in the calibration).
    pub risk: Option<f32>,
    /// The camera-health score (null when not finite).
    pub score: Option<f32>,
    /// Its threshold in force.
    pub threshold: f32,
    /// `familiar` (score <= threshold) or `unfamiliar`: this frame's camera-health verdict.
    pub verdict: &'static str,
    /// Whether the stream's camera-health alert was open when the frame was scored.
    pub alarm: bool,
}

impl FrameRecord {
    /// The record's JSON line (with the trailing newline).
    pub fn line(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

struct One {
    stats: Arc<FramesStats>,
    /// `None` once shut down.
    tx: Mutex<Option<Sender<Vec<u8>>>>,
    min_interval: Option<Duration>,
    last_sent: Mutex<HashMap<String, Instant>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every configured frames sink; inference offers each scored frame to it.
pub struct Frames {
    sinks: Vec<One>,
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for Frames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.sinks.iter().map(|s| &s.stats.name)).finish()
    }
}

impl Frames {
    /// Starts a writer thread per config. A missing socket is not an error here (the consumer
    /// may start later; `check-config` insists on it): frames are counted as unavailable until
    /// it appears.
    pub fn start(configs: &[FramesSinkConfig]) -> Result<Frames, SinkError> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut sinks = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for c in configs {
            c.validate()?;
            let mut name = c.name();
            let mut i = 2;
            while !seen.insert(name.clone()) {
                name = format!("{}-{i}", c.name());
                i += 1;
            }
            let stats = Arc::new(FramesStats { name: name.clone(), ..Default::default() });
            let (tx, rx) = bounded::<Vec<u8>>(c.queue);
            let mut out = Output::open(c)?;
            let (st, sp) = (stats.clone(), stop.clone());
            let thread = std::thread::Builder::new()
                .name(format!("sink-{name}"))
                .spawn(move || writer(&mut out, &rx, &st, &sp))
                .map_err(SinkError::Thread)?;
            sinks.push(One {
                stats,
                tx: Mutex::new(Some(tx)),
                min_interval: (c.max_rate > 0.0).then(|| Duration::from_secs_f64(1.0 / c.max_rate)),
                last_sent: Mutex::new(HashMap::new()),
                thread: Mutex::new(Some(thread)),
            });
        }
        Ok(Frames { sinks, stop })
    }

    /// The sinks' counters.
    pub fn stats(&self) -> Vec<Arc<FramesStats>> {
        self.sinks.iter().map(|s| s.stats.clone()).collect()
    }

    /// Offers one frame to every sink; never blocks.
    pub fn publish(&self, r: &FrameRecord) {
        if self.sinks.is_empty() {
            return;
        }
        let line = r.line();
        let now = Instant::now();
        for s in &self.sinks {
            if let Some(iv) = s.min_interval {
                let mut last = lock(&s.last_sent);
                match last.get(&r.stream) {
                    Some(t) if now.saturating_duration_since(*t) < iv => {
                        s.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    _ => {
                        last.insert(r.stream.clone(), now);
                    }
                }
            }
            let tx = lock(&s.tx);
            let Some(tx) = tx.as_ref() else { continue };
            match tx.try_send(line.clone()) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                    s.stats.dropped_queue.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Stops the writers, giving each until `deadline` to write what is queued; later frames
    /// are not published. Idempotent.
    pub fn shutdown(&self, deadline: Instant) {
        for s in &self.sinks {
            *lock(&s.tx) = None;
        }
        for s in &self.sinks {
            let h = lock(&s.thread).take();
            if let Some(h) = h {
                while !h.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(10));
                }
                self.stop.store(true, Ordering::Relaxed);
                let _ = h.join();
            }
        }
    }
}

impl Drop for Frames {
    fn drop(&mut self) {
        self.shutdown(Instant::now() + Duration::from_millis(200));
    }
}

enum Output {
    Datagram { sock: UnixDatagram, path: PathBuf },
    Stream { path: PathBuf, conn: Option<UnixStream>, pending: Vec<u8>, last_try: Option<Instant> },
    Udp { sock: std::net::UdpSocket, addr: std::net::SocketAddr },
    File { path: PathBuf, file: std::fs::File },
}

impl Output {
    fn open(c: &FramesSinkConfig) -> Result<Output, SinkError> {
        let path = c.path.clone().unwrap_or_default();
        Ok(match c.transport {
            Transport::UnixDatagram => {
                let sock = UnixDatagram::unbound().map_err(SinkError::Io)?;
                sock.set_nonblocking(true).map_err(SinkError::Io)?;
                Output::Datagram { sock, path }
            }
            Transport::UnixStream => Output::Stream { path, conn: None, pending: Vec::new(), last_try: None },
            Transport::Udp => {
                let a = c.address.as_deref().unwrap_or_default();
                let addr: std::net::SocketAddr =
                    a.parse().map_err(|e| SinkError::Config(format!("[[sink]] frames: address {a:?}: {e}")))?;
                let bind = if addr.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" };
                let sock = std::net::UdpSocket::bind(bind).map_err(SinkError::Io)?;
                sock.set_nonblocking(true).map_err(SinkError::Io)?;
                Output::Udp { sock, addr }
            }
            Transport::File => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .map_err(|source| SinkError::Open { path: path.clone(), source })?;
                Output::File { path, file }
            }
        })
    }

    fn dest(&self) -> String {
        match self {
            Output::Datagram { path, .. } | Output::Stream { path, .. } | Output::File { path, .. } => {
                path.display().to_string()
            }
            Output::Udp { addr, .. } => addr.to_string(),
        }
    }

    /// Writes one line (or drops it, counted); never blocks.
    fn write(&mut self, line: &[u8], st: &FramesStats, log: &LogLimiter) {
        let would_block =
            |e: &std::io::Error| e.kind() == std::io::ErrorKind::WouldBlock || e.raw_os_error() == Some(libc::ENOBUFS);
        let dest = self.dest();
        let fail = |e: std::io::Error| {
            st.dropped_unavailable.fetch_add(1, Ordering::Relaxed);
            log.hit(|n| log::warn!("frames sink: {dest}: {e} ({n} more since the last message)"));
        };
        match self {
            Output::Datagram { sock, path } => match sock.send_to(line, &*path) {
                Ok(_) => {
                    st.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if would_block(&e) => {
                    st.dropped_slow.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => fail(e),
            },
            Output::Udp { sock, addr } => match sock.send_to(line, *addr) {
                Ok(_) => {
                    st.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) if would_block(&e) => {
                    st.dropped_slow.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => fail(e),
            },
            Output::File { file, .. } => match file.write_all(line) {
                Ok(()) => {
                    st.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => fail(e),
            },
            Output::Stream { path, conn, pending, last_try } => {
                if conn.is_none() {
                    if last_try.is_some_and(|t| t.elapsed() < Duration::from_secs(1)) {
                        st.dropped_unavailable.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    *last_try = Some(Instant::now());
                    match UnixStream::connect(&*path).and_then(|s| s.set_nonblocking(true).map(|()| s)) {
                        Ok(s) => {
                            log::info!("frames sink: connected to {}", path.display());
                            pending.clear();
                            *conn = Some(s);
                        }
                        Err(e) => {
                            fail(e);
                            return;
                        }
                    }
                }
                // Whole lines only: a line that does not fit what may be held back is dropped.
                if pending.len() + line.len() > STREAM_PENDING_MAX {
                    st.dropped_slow.fetch_add(1, Ordering::Relaxed);
                } else {
                    pending.extend_from_slice(line);
                    st.sent.fetch_add(1, Ordering::Relaxed);
                }
                self.flush_stream(log);
            }
        }
    }

    /// Pushes held-back bytes of a `unix_stream` connection as far as the socket takes them.
    fn flush_stream(&mut self, log: &LogLimiter) {
        let Output::Stream { path, conn, pending, .. } = self else { return };
        let Some(s) = conn.as_mut() else { return };
        while !pending.is_empty() {
            match s.write(pending) {
                Ok(0) => break,
                Ok(n) => {
                    pending.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log.hit(|n| {
                        log::warn!("frames sink: {}: {e}; reconnecting ({n} messages suppressed)", path.display())
                    });
                    *conn = None;
                    pending.clear();
                    break;
                }
            }
        }
    }
}

fn writer(out: &mut Output, rx: &Receiver<Vec<u8>>, st: &FramesStats, stop: &AtomicBool) {
    let log = LogLimiter::new(Duration::from_secs(30));
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => out.write(&line, st, &log),
            Err(RecvTimeoutError::Timeout) => out.flush_stream(&log),
            Err(RecvTimeoutError::Disconnected) => {
                // Give held-back stream bytes a last chance, then stop.
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    out.flush_stream(&log);
                    match out {
                        Output::Stream { pending, conn: Some(_), .. } if !pending.is_empty() => {
                            std::thread::sleep(Duration::from_millis(10))
                        }
                        _ => break,
                    }
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(stream: &str, seq: u64) -> FrameRecord {
        FrameRecord {
            stream: stream.into(),
            seq,
            time_ms: 1,
            top_class: 3,
            class_name: Some("stop".into()),
            confidence: 0.9,
            risk: Some(0.25),
            score: Some(-1.0),
            threshold: 2.5,
            verdict: "familiar",
            alarm: false,
        }
    }

    fn cfg(t: Transport, path: Option<PathBuf>) -> FramesSinkConfig {
        FramesSinkConfig { name: None, transport: t, path, address: None, max_rate: 0.0, queue: 16 }
    }

    #[test]
    fn config_is_validated_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert!(cfg(Transport::UnixDatagram, None).validate().is_err());
        let mut u = cfg(Transport::Udp, None);
        assert!(u.validate().is_err());
        u.address = Some("10.0.0.1:9".into());
        assert!(u.validate().unwrap_err().to_string().contains("loopback"));
        u.address = Some("127.0.0.1:9".into());
        u.validate().unwrap();
        u.max_rate = -1.0;
        assert!(u.validate().is_err());
        // A missing socket and a regular file in its place are errors that say what to do.
        let missing = cfg(Transport::UnixStream, Some(dir.path().join("nope.sock")));
        assert!(missing.check().unwrap_err().to_string().contains("start the consumer"));
        std::fs::write(dir.path().join("f"), "").unwrap();
        let notsock = cfg(Transport::UnixDatagram, Some(dir.path().join("f")));
        assert!(notsock.check().unwrap_err().to_string().contains("not a socket"));
        let _l = UnixDatagram::bind(dir.path().join("ok.sock")).unwrap();
        cfg(Transport::UnixDatagram, Some(dir.path().join("ok.sock"))).check().unwrap();
        let nodir = cfg(Transport::File, Some(dir.path().join("no/such/x.jsonl")));
        assert!(nodir.check().unwrap_err().to_string().contains("does not exist"));
    }

    #[test]
    fn datagrams_arrive_whole_and_a_full_socket_drops_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.sock");
        let rx = UnixDatagram::bind(&p).unwrap();
        let f = Frames::start(&[cfg(Transport::UnixDatagram, Some(p))]).unwrap();
        f.publish(&rec("a", 1));
        let mut buf = [0u8; 4096];
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let n = rx.recv(&mut buf).unwrap();
        let back: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
        assert_eq!(back["seq"], 1);
        assert_eq!(back["risk"], 0.25);
        assert_eq!(back["verdict"], "familiar");
        // Nobody reads: thousands of frames never block publish; the losses are counted.
        let t = Instant::now();
        for i in 0..5000 {
            f.publish(&rec("a", i));
        }
        assert!(t.elapsed() < Duration::from_secs(2));
        std::thread::sleep(Duration::from_millis(300));
        let s = &f.stats()[0];
        let dropped = s.dropped_queue.load(Ordering::Relaxed) + s.dropped_slow.load(Ordering::Relaxed);
        assert!(dropped > 0, "nothing counted as dropped");
        assert_eq!(s.sent.load(Ordering::Relaxed) + dropped, 5001);
        f.shutdown(Instant::now() + Duration::from_secs(1));
    }

    #[test]
    fn max_rate_limits_per_stream_and_file_appends() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("frames.jsonl");
        let mut c = cfg(Transport::File, Some(p.clone()));
        c.max_rate = 1.0;
        let f = Frames::start(&[c]).unwrap();
        for i in 0..10 {
            f.publish(&rec("a", i));
            f.publish(&rec("b", i));
        }
        f.shutdown(Instant::now() + Duration::from_secs(2));
        let text = std::fs::read_to_string(&p).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(f.stats()[0].rate_limited.load(Ordering::Relaxed), 18);
    }
}
