//! The `/metrics` + `/healthz` HTTP endpoint (tiny_http, one thread).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tiny_http::{Header, Response, Server};

use super::{Metrics, MetricsError};

/// Health verdict: `Ok(())` = healthy, `Err(reason)` = unhealthy (503 with the reason).
pub type Health = Result<(), String>;

/// The health callback the server asks on each `/healthz`.
pub type HealthFn = Arc<dyn Fn() -> Health + Send + Sync>;

/// A running metrics HTTP server; stops on [`stop`](Self::stop) or drop.
pub struct MetricsServer {
    server: Arc<Server>,
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsServer {
    /// Binds `bind` (e.g. "127.0.0.1:9464"; port 0 picks a free one) and serves on a thread.
    pub fn start(bind: &str, metrics: Metrics, health: HealthFn) -> Result<Self, MetricsError> {
        let server =
            Server::http(bind).map_err(|e| MetricsError::Bind { addr: bind.to_string(), reason: e.to_string() })?;
        let addr = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| MetricsError::Bind { addr: bind.to_string(), reason: "not an IP listener".into() })?;
        let server = Arc::new(server);
        let stop = Arc::new(AtomicBool::new(false));
        let (srv, stp) = (server.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || serve(&srv, &stp, &metrics, &health))
            .map_err(MetricsError::Thread)?;
        Ok(MetricsServer { server, addr, stop, thread: Some(thread) })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.server.unblock();
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

fn header(k: &str, v: &str) -> Option<Header> {
    Header::from_bytes(k.as_bytes(), v.as_bytes()).ok()
}

fn serve(server: &Server, stop: &AtomicBool, metrics: &Metrics, health: &HealthFn) {
    while !stop.load(Ordering::SeqCst) {
        let req = match server.recv_timeout(Duration::from_millis(500)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("metrics server: {e}");
                continue;
            }
        };
        let path = req.url().split('?').next().unwrap_or("").to_string();
        let resp = match (req.method(), path.as_str()) {
            (tiny_http::Method::Get, "/metrics") => {
                let mut r = Response::from_string(metrics.render());
                if let Some(h) = header("Content-Type", "text/plain; version=0.0.4; charset=utf-8") {
                    r = r.with_header(h);
                }
                r
            }
            (tiny_http::Method::Get, "/healthz") => match health() {
                Ok(()) => Response::from_string("ok\n"),
                Err(reason) => Response::from_string(format!("{reason}\n")).with_status_code(503),
            },
            (tiny_http::Method::Get, _) => Response::from_string("not found\n").with_status_code(404),
            _ => Response::from_string("method not allowed\n").with_status_code(405),
        };
        if let Err(e) = req.respond(resp) {
            log::debug!("metrics server: client went away: {e}");
        }
    }
}
