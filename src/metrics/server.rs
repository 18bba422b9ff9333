//! The `/metrics` + `/healthz` HTTP endpoint (and the status page at `/`, its pictures under
//! `/snapshots/`; see [`super::status_page`]): hyper's HTTP/1 server on a one-thread tokio
//! runtime, with hard resource limits so that no client, local or remote, can take it down or
//! make the daemon grow.
//!
//! * **Bounded connections.** At most [`ServerLimits::max_connections`] are served at once,
//!   and at most [`ServerLimits::max_per_client`] from one client IP address. A connection
//!   that would exceed either limit makes room by closing the oldest connection (of that
//!   client, or of anyone) that has not yet sent its request head: idle and slowloris sockets
//!   give way to a client with a request, so forty slow sockets cannot hold `/metrics` at
//!   `503`. When every connection is busy with a request, the new one gets a canned `503`
//!   and is closed at once, so clients cost at most that many descriptors and tasks (one task
//!   each, no thread).
//! * **Bounded requests.** The request head (request line and headers) may be at most
//!   [`ServerLimits::max_request_bytes`]; hyper answers a larger one with `431` and closes.
//!   Request bodies are never read.
//! * **Timeouts.** The head must arrive within [`ServerLimits::header_timeout`]; a whole
//!   connection (read, render, write) lives at most [`ServerLimits::connection_timeout`].
//!   Keep-alive is off: one request per connection, so a connection's life is one request.
//! * **A listener that never dies.** `accept` errors (EMFILE/ENFILE when descriptors run out,
//!   ENOBUFS, ECONNABORTED) are logged at most every 10 s and retried with back-off
//!   (1 ms doubling to 1 s); the accept loop only ends on [`MetricsServer::stop`].
//!
//! The socket is bound in [`MetricsServer::start`], before anything is served, so a taken
//! address is an error for the caller (the daemon then exits 2 before starting its pipeline).
//! Routes are a plain `match` in [`route`]: another page is another arm.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::{oneshot, Semaphore};

use super::{Metrics, MetricsError};

/// Health verdict: `Ok(())` = healthy, `Err(reason)` = unhealthy (503 with the reason).
pub type Health = Result<(), String>;

/// The health callback the server asks on each `/healthz`.
pub type HealthFn = Arc<dyn Fn() -> Health + Send + Sync>;

/// The endpoint's resource limits (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerLimits {
    /// Connections served at once; more are answered `503` and closed. Default 32.
    pub max_connections: usize,
    /// Connections served at once from one IP address. Default 8.
    pub max_per_client: usize,
    /// Largest request head in bytes (hyper's minimum is 8192). Default 8192.
    pub max_request_bytes: usize,
    /// Time for the client to send the whole request head. Default 5 s.
    pub header_timeout: Duration,
    /// Longest life of one connection, response included. Default 10 s.
    pub connection_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 32,
            max_per_client: 8,
            max_request_bytes: 8192,
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters of what the server refused or survived, for tests and the log.
#[derive(Debug, Default)]
pub struct ServerStats {
    /// Connections accepted and served.
    pub served: AtomicU64,
    /// Connections closed at once because `max_connections` were busy.
    pub shed: AtomicU64,
    /// Connections still waiting for their request head closed to make room for a new one.
    pub evicted: AtomicU64,
    /// `accept` errors (each retried after a back-off).
    pub accept_errors: AtomicU64,
}

/// A running metrics HTTP server; stops on [`stop`](Self::stop) or drop.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    stats: Arc<ServerStats>,
}

/// What the request handlers see.
struct State {
    metrics: Metrics,
    health: HealthFn,
}

/// A `503` for connections over the limit, written without reading the request.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nContent-Type: text/plain\r\n\
Retry-After: 1\r\nContent-Length: 29\r\n\r\ntoo many connections; retry\r\n";

/// Back-off after a failed `accept`.
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(1);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// At most one log line per this period for accept errors and shed connections.
const LOG_PERIOD: Duration = Duration::from_secs(10);

impl MetricsServer {
    /// Binds `bind` (e.g. "127.0.0.1:9464"; port 0 picks a free one) with the default limits
    /// and serves on a thread.
    pub fn start(bind: &str, metrics: Metrics, health: HealthFn) -> Result<Self, MetricsError> {
        Self::start_with(bind, metrics, health, ServerLimits::default())
    }

    /// [`start`](Self::start) with explicit limits.
    pub fn start_with(
        bind: &str,
        metrics: Metrics,
        health: HealthFn,
        limits: ServerLimits,
    ) -> Result<Self, MetricsError> {
        let bind_err = |reason: String| MetricsError::Bind { addr: bind.to_string(), reason };
        let listener = std::net::TcpListener::bind(bind).map_err(|e| bind_err(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| bind_err(e.to_string()))?;
        listener.set_nonblocking(true).map_err(|e| bind_err(e.to_string()))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(MetricsError::Thread)?;
        let listener = {
            let _in_rt = rt.enter();
            tokio::net::TcpListener::from_std(listener).map_err(|e| bind_err(e.to_string()))?
        };
        let (stop_tx, stop_rx) = oneshot::channel();
        let stats = Arc::new(ServerStats::default());
        let state = Arc::new(State { metrics, health });
        let st = stats.clone();
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                rt.block_on(accept_loop(listener, state, limits, st, stop_rx));
                // Dropping the runtime cancels the connections still open.
            })
            .map_err(MetricsError::Thread)?;
        Ok(MetricsServer { addr, stop: Some(stop_tx), thread: Some(thread), stats })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// What the server served, shed and survived so far.
    pub fn stats(&self) -> &ServerStats {
        &self.stats
    }

    /// Stops serving and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Logs at most once per [`LOG_PERIOD`], counting what it held back.
struct Throttle {
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    fn hit(&mut self, f: impl FnOnce(u64)) {
        let now = Instant::now();
        if self.last.is_none_or(|t| now.duration_since(t) >= LOG_PERIOD) {
            self.last = Some(now);
            f(std::mem::take(&mut self.held));
        } else {
            self.held += 1;
        }
    }
}

/// A connection being served, as the accept loop sees it.
struct Live {
    id: u64,
    ip: std::net::IpAddr,
    /// Set once its request head arrived (the connection is then busy, not idle).
    head: Arc<std::sync::atomic::AtomicBool>,
    abort: tokio::task::AbortHandle,
}

/// The connections being served, oldest first.
type LiveSet = Arc<std::sync::Mutex<Vec<Live>>>;

fn lock(live: &LiveSet) -> std::sync::MutexGuard<'_, Vec<Live>> {
    match live.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Removes a connection from the set when its task ends (or is aborted).
struct Leave {
    id: u64,
    live: LiveSet,
}

impl Drop for Leave {
    fn drop(&mut self) {
        lock(&self.live).retain(|c| c.id != self.id);
    }
}

/// Closes the oldest connection that matches `which` and has not sent its request head;
/// whether there was one.
fn evict_idle(live: &LiveSet, which: impl Fn(&Live) -> bool) -> bool {
    let c = {
        let mut g = lock(live);
        let Some(i) = g.iter().position(|c| which(c) && !c.head.load(Ordering::SeqCst)) else { return false };
        g.remove(i)
    };
    // Outside the lock: the task's `Leave` takes it when the task is dropped.
    c.abort.abort();
    true
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    limits: ServerLimits,
    stats: Arc<ServerStats>,
    mut stop: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let live: LiveSet = Arc::default();
    let mut next_id = 0u64;
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut err_log = Throttle { last: None, held: 0 };
    let mut shed_log = Throttle { last: None, held: 0 };
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            r = listener.accept() => r,
        };
        let (stream, ip) = match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                (stream, peer.ip())
            }
            Err(e) => {
                // EMFILE and friends: the listener stays; wait for descriptors to free up.
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                err_log.hit(|more| {
                    log::warn!(
                        "metrics server: accept failed: {e} ({more} more since the last message); retrying in \
                         {} ms (if this is EMFILE, raise LimitNOFILE or find who holds the descriptors)",
                        backoff.as_millis()
                    )
                });
                tokio::select! {
                    _ = &mut stop => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        // Room for this client, then for anyone: idle connections give way.
        let from_ip = lock(&live).iter().filter(|c| c.ip == ip).count();
        let mut evicted = from_ip >= limits.max_per_client.max(1) && evict_idle(&live, |c| c.ip == ip);
        let full = lock(&live).iter().filter(|c| c.ip == ip).count() >= limits.max_per_client.max(1);
        if !full && slots.available_permits() == 0 {
            evicted |= evict_idle(&live, |_| true);
        }
        let permit = if full {
            None
        } else if evicted {
            stats.evicted.fetch_add(1, Ordering::Relaxed);
            // The aborted task releases its slot when the runtime drops it, at the next yield.
            tokio::time::timeout(Duration::from_millis(200), slots.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
        } else {
            slots.clone().try_acquire_owned().ok()
        };
        let Some(permit) = permit else {
            // Over the limit: answer without reading and close, so the descriptor is free again
            // at once (a full socket buffer just loses the answer; the client sees a close).
            stats.shed.fetch_add(1, Ordering::Relaxed);
            let _ = stream.try_write(BUSY);
            shed_log.hit(|more| {
                log::warn!(
                    "metrics server: {} connections ({} per client) busy with requests, one from {ip} refused \
                     ({more} more since the last message)",
                    limits.max_connections,
                    limits.max_per_client
                )
            });
            continue;
        };
        stats.served.fetch_add(1, Ordering::Relaxed);
        let state = state.clone();
        let head = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (id, h, l) = (next_id, head.clone(), live.clone());
        next_id += 1;
        // The set is locked while spawning, so the task's `Leave` cannot run before the entry
        // exists.
        let mut g = lock(&live);
        let task = tokio::spawn(async move {
            let _permit = permit;
            let _leave = Leave { id, live: l };
            serve_connection(stream, state, limits, h).await;
        });
        g.push(Live { id, ip, head, abort: task.abort_handle() });
        drop(g);
    }
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: Arc<State>,
    limits: ServerLimits,
    head: Arc<std::sync::atomic::AtomicBool>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_request_bytes.max(8192))
        .keep_alive(false);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        head.store(true, Ordering::SeqCst);
        let state = state.clone();
        async move {
            let path = req.uri().path();
            let is_picture = path.starts_with("/snapshots/");
            if is_picture && (req.method() == Method::GET || req.method() == Method::HEAD) {
                return Ok::<_, std::convert::Infallible>(picture(&state, path).await);
            }
            Ok::<_, std::convert::Infallible>(route(&state, req.method(), path))
        }
    });
    let conn = http.serve_connection(TokioIo::new(stream), service);
    match tokio::time::timeout(limits.connection_timeout, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::debug!("metrics server: connection ended: {e}"),
        Err(_) => log::debug!("metrics server: connection closed after {:?}", limits.connection_timeout),
    }
}

/// The routes. `GET` and `HEAD` only (hyper drops the body of a `HEAD` answer).
fn route(state: &State, method: &Method, path: &str) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; use GET or HEAD\n".into());
        // RFC 9110 15.5.6: a 405 lists the methods the resource supports.
        r.headers_mut().insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match path {
        "/" => {
            let mut r = text(StatusCode::OK, super::status_page::render(&state.metrics, std::time::SystemTime::now()));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
            r.headers_mut().insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            r
        }
        "/metrics" => {
            let mut r = text(StatusCode::OK, state.metrics.render());
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
            r
        }
        "/healthz" => match (state.health)() {
            Ok(()) => text(StatusCode::OK, "ok\n".into()),
            Err(reason) => text(StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")),
        },
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

/// `/snapshots/<alert id>/<file name>`: a snapshot or heat map that an event of a remembered
/// alert named (nothing else), read off the server's thread, at most
/// [`super::status_page::MAX_PICTURE_BYTES`].
async fn picture(state: &State, path: &str) -> Response<Full<Bytes>> {
    use super::status_page::{picture_path, picture_type, MAX_PICTURE_BYTES};
    let not_found = || text(StatusCode::NOT_FOUND, "not found\n".into());
    let Some(file) = path.strip_prefix("/snapshots/").and_then(|rest| picture_path(&state.metrics, rest)) else {
        return not_found();
    };
    let Some(kind) = picture_type(&file) else { return not_found() };
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<u8>>> {
        use std::io::Read as _;
        // The daemon wrote a regular file here; anything else (a link put in its place, a
        // directory, a device) is not served.
        let meta = std::fs::symlink_metadata(&file)?;
        if !meta.file_type().is_file() || meta.len() > MAX_PICTURE_BYTES {
            return Ok(None);
        }
        let mut buf = Vec::with_capacity(meta.len() as usize);
        std::fs::File::open(&file)?.take(MAX_PICTURE_BYTES + 1).read_to_end(&mut buf)?;
        Ok((buf.len() as u64 <= MAX_PICTURE_BYTES).then_some(buf))
    })
    .await;
    match read {
        Ok(Ok(Some(bytes))) => {
            let mut r = Response::new(Full::new(Bytes::from(bytes)));
            r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(kind));
            r.headers_mut().insert(hyper::header::CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
            r
        }
        _ => not_found(),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}
