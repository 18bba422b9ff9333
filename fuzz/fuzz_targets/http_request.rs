//! The metrics endpoint's request path: the real `metrics::MetricsServer`, started once on
//! 127.0.0.1:0, gets the fuzz bytes on a fresh TCP connection (written, then the write half
//! closed and the reply read until the server closes or 2 s pass); then `GET /healthz` on a
//! new connection must still be answered `200` within 10 s. A server thread that panics,
//! hangs or stops accepting fails the assertion.
#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gradwatch::metrics::{HealthFn, Metrics, MetricsServer};
use libfuzzer_sys::fuzz_target;

fn server() -> SocketAddr {
    static SERVER: OnceLock<(SocketAddr, MetricsServer)> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let metrics = Metrics::new();
            // A stream, so /metrics renders per-stream series too.
            let _ = metrics.stream("fuzz");
            let health: HealthFn = Arc::new(|| Ok(()));
            let server = MetricsServer::start("127.0.0.1:0", metrics, health).expect("start the metrics server");
            (server.local_addr(), server)
        })
        .0
}

fn connect(addr: SocketAddr, timeout: Duration) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, timeout).expect("the metrics server accepts connections");
    s.set_read_timeout(Some(timeout)).unwrap();
    s.set_write_timeout(Some(timeout)).unwrap();
    s
}

fuzz_target!(|data: &[u8]| {
    let addr = server();
    let mut s = connect(addr, Duration::from_secs(2));
    // The server may close early (a bad request line): write and read errors are fine here.
    if s.write_all(data).is_ok() {
        let _ = s.shutdown(Shutdown::Write);
    }
    let mut sink = Vec::new();
    let _ = s.take(1 << 20).read_to_end(&mut sink);

    let mut h = connect(addr, Duration::from_secs(10));
    h.write_all(b"GET /healthz HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n").expect("send /healthz");
    let mut reply = Vec::new();
    h.read_to_end(&mut reply).expect("read the /healthz reply");
    assert!(reply.starts_with(b"HTTP/1.1 200"), "/healthz after the input: {:?}", String::from_utf8_lossy(&reply));
});
