//! One HTTP `GET` for the tests that read the daemon's metrics, status page and dashboard.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// An answer: the status code, the head (lower-cased) and the body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Response {
    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One `GET` with `Connection: close` (connect within 2 s, read within 10 s); the I/O error
/// when the server is not (yet) there.
pub fn get(addr: impl ToSocketAddrs, path: &str) -> std::io::Result<Response> {
    let addr: SocketAddr = addr
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").map_or(raw.len(), |p| p + 4);
    let head = String::from_utf8_lossy(&raw[..split]).to_lowercase();
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok(Response { status, head, body: raw[split..].to_vec() })
}

/// The body of one `GET` that must succeed (panics naming the path otherwise).
pub fn get_text(addr: impl ToSocketAddrs, path: &str) -> String {
    get(addr, path).unwrap_or_else(|e| panic!("GET {path}: {e}")).text()
}
