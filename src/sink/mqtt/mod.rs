//! MQTT sink (rumqttc, MQTT 3.1.1, QoS 1) with at-least-once delivery across broker outages,
//! reloads and restarts.
//!
//! Topics: events go to `<prefix>/<client_id>/events/<stream>`; `<prefix>/<client_id>/status`
//! holds a retained "online" published at every connect, and the last will (retained
//! "offline") the broker publishes if the connection dies uncleanly. A clean shutdown
//! publishes "offline" itself. With `dashboard = true` (or `discovery = true`) that topic is
//! `<prefix>/<client_id>/availability`, and retained per-stream state, attributes and
//! snapshot topics (and Home Assistant discovery) come on top: see [`discovery`].
//!
//! Delivery: every accepted event is first appended to the sink's on-disk spool and synced
//! ([`spool`]; `send` returns only then), and kept in an in-process queue until its
//! PUBACK arrives, when it is marked done in the spool. The sink assigns packet ids itself and
//! injects publishes into rumqttc's `pending` queue, so a PUBACK maps exactly to one event. On
//! any disconnect, everything not acknowledged is re-sent, in order, after the next CONNACK.
//! At start-up the spool's pending records are loaded first, so a restart re-sends them.
//!
//! Reload: the queue (with its spool) is shared by every sink of the process with the same
//! spool directory (or, without a spool, the same name, broker and client id). A new sink
//! built by a reload takes it over; the old one stops publishing, and its `flush` returns at
//! once since its events are now the new sink's. If the new sink goes away first (a reload
//! that failed later on), the queue reverts to the old one.

pub mod discovery;
pub mod reserve;
pub mod spool;
mod sweep;

mod config;
mod connection;
mod registry;
mod sink;

use std::time::Duration;

pub use config::{state_directory, MqttSinkConfig, MqttTlsConfig};
pub use sink::{MqttSink, MqttStats};

/// Publishes in flight at once (also rumqttc's `inflight`, which bounds valid packet ids).
const MAX_INFLIGHT: u16 = 100;
/// How long the connection thread waits for network activity before looking for new events.
const POLL: Duration = Duration::from_millis(25);
/// A publish unacknowledged this long on a live connection forces a reconnect (a stuck
/// packet id would otherwise block the queue forever).
const ACK_TIMEOUT: Duration = Duration::from_secs(30);
/// Reconnect back-off bounds.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a clean shutdown waits for the "offline" status to be acknowledged.
const CLOSE_WAIT: Duration = Duration::from_secs(2);
/// Smallest non-zero `spool_max_bytes`.
const MIN_SPOOL_BYTES: u64 = 64 << 10;
/// Times the oldest unacknowledged event may be on a connection that died before its PUBACK
/// (the broker dropping the connection over that very publish) before it goes to the
/// dead-letter file instead of blocking the queue. After the first such death it is sent
/// alone, so a good event merely caught in an outage is not blamed twice.
pub const DEAD_LETTER_TRIES: u32 = 5;
/// The dead-letter file in the spool directory: one event per line, as the file sink writes
/// them.
pub const DEAD_LETTER_FILE: &str = "dead-letter.jsonl";
/// The dead-letter file is not written beyond this size (events are still counted and logged).
const MAX_DEAD_LETTER_BYTES: u64 = 16 << 20;
/// The packet limit of the connection (topic and payload together must stay below it).
const MAX_PACKET: usize = 1 << 20;
/// Sequence numbers of events kept in memory only (the spool append failed: disk full) start
/// here, apart from the spool's own; such an event gets a spool number once it is written.
const MEM_SEQ_BASE: u64 = 1 << 62;
/// How often events kept in memory are tried on the spool again.
const RESPOOL_PERIOD: Duration = Duration::from_secs(1);
/// Largest `buffer` (events held in memory).
const MAX_BUFFER: usize = 1_000_000;
/// Largest `spool_max_bytes`.
const MAX_SPOOL_BYTES: u64 = 1 << 40;
/// Largest `spool_max_age_s`.
const MAX_AGE_S: u64 = 366 * 86_400;
/// Largest `snapshot_max_bytes` (the connection's packet limit is 1 MiB, topic included).
const MAX_SNAPSHOT_BYTES: u64 = 1_000_000;

/// A connection error with the likely fix where the error alone does not say it: a connect
/// refused with EPERM comes from a firewall on this host, most often the unit's
/// `IPAddressDeny=any` (only localhost is allowed unless the broker is added).
fn describe(e: &rumqttc::ConnectionError) -> String {
    let mut msg = e.to_string();
    if let rumqttc::ConnectionError::Io(io) = e {
        if io.kind() == std::io::ErrorKind::PermissionDenied {
            msg += " (the connection was blocked on this host: under systemd, add the broker to \
                    IPAddressAllow= in gradwatch.service, which allows only localhost)";
        }
    }
    msg
}

/// Installs rustls's ring provider as the process default (once; an already installed
/// provider is kept).
pub fn install_ring_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// One MQTT topic level from a stream name: [`crate::names::encode`], injective (`a/b` and
/// `a_b` get different topics) and free of `/ + #`, NUL and control characters (mosquitto
/// drops the connection on a control character in a topic). The one place topics are made
/// from stream names.
pub(super) fn topic_level(stream: &str) -> String {
    crate::names::encode(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::SinkError;
    use std::path::PathBuf;

    #[test]
    fn a_connect_blocked_on_this_host_names_the_units_ip_allow_list() {
        let e = rumqttc::ConnectionError::Io(std::io::Error::from_raw_os_error(1));
        assert!(describe(&e).contains("IPAddressAllow="), "{}", describe(&e));
        let e = rumqttc::ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(!describe(&e).contains("IPAddressAllow"));
    }

    /// The reconnect back-off reads the injected clock: against a port nobody listens on, a
    /// simulated clock runs through the back-off (100 ms doubling to 5 s) without waiting, so
    /// simulated time races far ahead of the real time the test takes.
    #[test]
    fn reconnect_backoff_runs_on_the_injected_clock() {
        // Bound, then closed: nobody listens there.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let cfg = MqttSinkConfig::new("127.0.0.1", port, "backoff-test");
        let sim = std::sync::Arc::new(crate::base::clock::SimClock::new());
        let sink = MqttSink::start_with_clock("backoff", &cfg, None, sim.clone()).unwrap();
        let t0 = std::time::Instant::now();
        while sim.elapsed() < Duration::from_secs(10) && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(sink);
        assert!(sim.elapsed() >= Duration::from_secs(10), "simulated {:?} in {:?}", sim.elapsed(), t0.elapsed());
        assert!(t0.elapsed() < Duration::from_secs(5), "the back-off waited in real time: {:?}", t0.elapsed());
    }

    #[test]
    fn topics_are_sanitized() {
        let c = MqttSinkConfig::new("h", 1883, "box");
        assert_eq!(c.event_topic("cam0"), "gradwatch/box/events/cam0");
        assert_eq!(c.event_topic("a/b+#"), "gradwatch/box/events/a%2Fb%2B%23");
        assert_eq!(c.event_topic("bad\tname"), "gradwatch/box/events/bad%09name");
        assert_eq!(c.event_topic(""), "gradwatch/box/events/%");
        assert_eq!(c.status_topic(), "gradwatch/box/status");
        let mut d = c.clone();
        d.discovery = true;
        assert_eq!(d.status_topic(), "gradwatch/box/availability", "the will moves with the dashboard");
        assert_eq!(d.stream_topic("a/b", "state"), "gradwatch/box/a%2Fb/state");
        assert_ne!(d.stream_topic("a/b", "state"), d.stream_topic("a_b", "state"));
    }

    #[test]
    fn validation_rejects_bad_values() {
        let ok = MqttSinkConfig::new("h", 1883, "box");
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.qos = 2;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.client_id = "a/b".into();
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.snapshot_max_bytes = 2_000_000;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.discovery_prefix = "ha/#".into();
        assert!(c.validate().is_err());
        for bad in [
            |c: &mut MqttSinkConfig| c.port = 0,
            |c: &mut MqttSinkConfig| c.buffer = 0,
            |c: &mut MqttSinkConfig| c.buffer = usize::MAX,
            |c: &mut MqttSinkConfig| c.spool_max_bytes = u64::MAX,
            |c: &mut MqttSinkConfig| c.spool_max_age_s = u64::MAX,
            |c: &mut MqttSinkConfig| c.client_id = "a\tb".into(),
        ] {
            let mut c = ok.clone();
            bad(&mut c);
            assert!(c.validate().is_err(), "{c:?}");
        }
        let mut c = ok.clone();
        c.keep_alive_s = 0;
        assert!(c.validate().is_err());
        let mut c = ok.clone();
        c.password = Some("x".into());
        assert!(c.validate().is_err());
        let mut c = ok;
        c.tls = Some(MqttTlsConfig { ca_file: "/nonexistent/ca.pem".into(), client_cert: None, client_key: None });
        match MqttSink::start("m", &c) {
            Err(SinkError::Open { path, .. }) => {
                assert_eq!(path, PathBuf::from("/nonexistent/ca.pem"))
            }
            Err(e) => panic!("unexpected error {e}"),
            Ok(_) => panic!("missing CA file accepted"),
        }
    }
}
