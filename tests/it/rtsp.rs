//! The `rtsp` source against a real RTSP server: GStreamer's gst-rtsp-server
//! (tests/fixtures/rtsp_server.py, Debian's gir1.2-gst-rtsp-server-1.0 and the x264/x265/jpeg
//! encoders, installed by `make deps`) serving a live test pattern, and the real daemon.
//! Frames arrive through digest auth and are scored across a resolution change; the server
//! stops and comes back (stream_down, then stream_up); a wrong password is a clear error
//! retried on the backoff schedule; H.265 and a server speaking garbage are refused by name;
//! bad configs exit 2 at check-config.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::daemon::{events, head, kind, write, Daemon};

const SERVER: &str = "tests/fixtures/rtsp_server.py";

/// A gst-rtsp-server process serving `rtsp://127.0.0.1:PORT/cam`; its stdout is collected.
struct Server {
    child: Child,
    out: Arc<Mutex<String>>,
}

impl Server {
    fn start(port: u16, args: &[&str]) -> Server {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(SERVER);
        let mut child = Command::new("/usr/bin/python3")
            .arg(script)
            .arg("--port")
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("/usr/bin/python3 (make deps installs python3-gi and gst-rtsp-server)");
        let out = Arc::new(Mutex::new(String::new()));
        let (o, stdout) = (out.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let mut g = o.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let t0 = Instant::now();
        while !out.lock().unwrap().contains("ready") {
            if let Some(s) = child.try_wait().unwrap() {
                panic!("the RTSP test server exited ({s}); is gir1.2-gst-rtsp-server-1.0 installed (make deps)?");
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "the RTSP test server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Server { child, out }
    }

    fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A config with the given `[[stream]]` tables and a metrics endpoint on a free port.
fn config(dir: &Path, streams: &str) -> PathBuf {
    let h = head("").replace("[metrics]\nenabled = false", "[metrics]\nbind = \"127.0.0.1:0\"");
    write(dir, "rtsp.toml", &format!("{h}\n{streams}"))
}

/// The daemon's metrics address (from its log).
/// The value of `gradwatch_<name>{...stream="<stream>"}` on the daemon's /metrics.
fn metric(addr: SocketAddr, name: &str, stream: &str) -> f64 {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let key = format!("stream=\"{stream}\"}} ");
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("gradwatch_{name}{{")) && l.contains(&key))
        .unwrap_or_else(|| panic!("no {name} for {stream} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

fn stream(name: &str, port: u16, extra: &str) -> String {
    format!(
        "[[stream]]\nname = \"{name}\"\nkind = \"rtsp\"\nurl = \"rtsp://127.0.0.1:{port}/cam\"\n\
         timeout_s = 1.5\nreconnect_initial_s = 0.25\nreconnect_max_s = 1.0\n{extra}\n"
    )
}

fn count(events: &[serde_json::Value], what: &str, stream: &str) -> usize {
    events.iter().filter(|e| kind(e) == what && e["stream"] == stream).count()
}

/// Digest auth with a password file, 640x480 H.264 at 30 fps, `score_fps = 5`: frames are
/// scored; the server switches to 320x240 and frames keep being scored at the new size.
#[test]
fn frames_arrive_through_digest_auth_and_survive_a_resolution_change() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "cam-password", "s3cret:with@odd/chars\n");
    let port = free_port();
    let server = Server::start(
        port,
        &["--user", "viewer", "--password", "s3cret:with@odd/chars", "--auth", "digest", "--resize-after", "2.5"],
    );
    let extra = format!("username = \"viewer\"\npassword_file = \"{}\"\nscore_fps = 5", pw.display());
    let cfg = config(dir.path(), &stream("gate", port, &extra));
    let mut d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = d.metrics_addr();
    d.wait_for("the resolution change", Duration::from_secs(30), |d| {
        d.stderr().contains("resolution changed from 640x480 to 320x240")
    });
    assert!(server.stdout().contains("resized to 320x240"));
    let scored_before = metric(addr, "frames_scored_total", "gate");
    // A second and a half of frames at the new size.
    std::thread::sleep(Duration::from_millis(1500));
    let (captured, scored) =
        (metric(addr, "frames_captured_total", "gate"), metric(addr, "frames_scored_total", "gate"));
    let (skipped, bad) = (metric(addr, "frames_skipped_total", "gate"), metric(addr, "frames_bad_total", "gate"));
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(20)), 0, "{}", d.stderr());
    let (out, err) = (d.stdout(), d.stderr());
    let ev = events(&out);
    assert_eq!(count(&ev, "stream_up", "gate"), 1, "{out}\n{err}");
    assert_eq!(count(&ev, "stream_down", "gate"), 0, "{out}\n{err}");
    // About 30 fps in, about 5 fps scored, the rest skipped; scoring goes on at 320x240.
    let counts = format!("captured {captured}, scored {scored}, skipped {skipped}, bad {bad}");
    assert!(scored >= 10.0 && scored > scored_before, "{counts}");
    assert!(captured >= 4.0 * scored && skipped >= 3.0 * scored, "score_fps = 5 of 30 fps: {counts}");
    assert_eq!(bad, 0.0, "{counts}\n{err}");
    assert!(!err.contains("s3cret"), "the password leaked into the log:\n{err}");
}

/// The server goes away: `stream_down` within the stall timeout (1.5 s); it comes back on
/// the same port: `stream_up` within 5 s. Basic auth this time.
#[test]
fn server_restart_gives_stream_down_then_stream_up() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", "open sesame\n");
    let port = free_port();
    let args = ["--user", "op", "--password", "open sesame", "--auth", "basic", "--width", "320", "--height", "240"];
    let mut server = Server::start(port, &args);
    let extra = format!("username = \"op\"\npassword_file = \"{}\"", pw.display());
    let cfg = config(dir.path(), &stream("door", port, &extra));
    let mut d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    d.wait_for("stream_up", Duration::from_secs(30), |d| d.stdout().contains("\"stream_up\""));
    let stopped = Instant::now();
    server.stop();
    d.wait_for("stream_down", Duration::from_secs(10), |d| d.stdout().contains("\"stream_down\""));
    let down_after = stopped.elapsed();
    // The stall timeout plus a poll's worth of slack (a closed connection is noticed at once).
    assert!(down_after < Duration::from_millis(3000), "stream_down after {down_after:?}");
    std::thread::sleep(Duration::from_secs(2));
    let back = Instant::now();
    let _server = Server::start(port, &args);
    d.wait_for("stream_up again", Duration::from_secs(15), |d| {
        events(&d.stdout()).iter().filter(|e| kind(e) == "stream_up").count() == 2
    });
    let up_after = back.elapsed();
    assert!(up_after < Duration::from_secs(5), "stream_up {up_after:?} after the server returned");
    let ev = events(&d.stdout());
    let kinds: Vec<&str> = ev.iter().map(kind).filter(|k| k.starts_with("stream_")).collect();
    assert_eq!(kinds, ["stream_up", "stream_down", "stream_up"], "{}", d.stdout());
    let down = ev.iter().find(|e| kind(e) == "stream_down").unwrap();
    assert!(down["reason"].as_str().unwrap().contains("rtsp://127.0.0.1"), "{down}");
}

/// A wrong password: the daemon keeps running, says the camera refused the login and what to
/// check, once; it tries again on the backoff schedule (0.25, 0.5, 1, 1 ... s), not in a
/// tight loop.
#[test]
fn a_wrong_password_is_a_clear_error_without_a_tight_retry_loop() {
    let dir = tempfile::tempdir().unwrap();
    let pw = write(dir.path(), "pw", "wrong\n");
    let port = free_port();
    let server = Server::start(port, &["--user", "viewer", "--password", "right", "--width", "160", "--height", "120"]);
    let extra = format!("username = \"viewer\"\npassword_file = \"{}\"", pw.display());
    let cfg = config(dir.path(), &stream("gate", port, &extra));
    let mut d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    d.wait_for("the refusal", Duration::from_secs(30), |d| d.stderr().contains("refused the user name or password"));
    let before = server.stdout().matches("client connected").count();
    std::thread::sleep(Duration::from_secs(4));
    let attempts = server.stdout().matches("client connected").count() - before;
    assert!(d.running());
    let err = d.stderr();
    assert!(err.contains("check `username` and `password_file`"), "{err}");
    // Logged when the cause changes, not at every attempt.
    assert_eq!(err.matches("refused the user name or password").count(), 2, "the warning and the stream_down:\n{err}");
    let ev = events(&d.stdout());
    assert_eq!(count(&ev, "stream_down", "gate"), 1, "{}", d.stdout());
    assert_eq!(count(&ev, "stream_up", "gate"), 0);
    // Attempts in those 4 s: one a second once the backoff reaches its 1 s cap, a few more
    // before (a tight loop would make hundreds).
    assert!((2..=7).contains(&attempts), "{attempts} connections in 4 s");
}

/// H.265 is refused with the pipe alternative named; a server that answers garbage is a
/// clear protocol error; the daemon runs on and both streams are down.
#[test]
fn h265_and_garbage_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = Server::start(port, &["--codec", "h265", "--width", "160", "--height", "120"]);
    let junk = TcpListener::bind("127.0.0.1:0").unwrap();
    let junk_port = junk.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in junk.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(b"HELLO this is not RTSP\r\n\r\n\x00\xff\xfe garbage\r\n\r\n").is_err() {
                        break;
                    }
                }
            });
        }
    });
    let streams = format!("{}\n{}", stream("hevc", port, ""), stream("junk", junk_port, ""));
    let cfg = config(dir.path(), &streams);
    let mut d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    d.wait_for("both refusals", Duration::from_secs(30), |d| {
        let out = d.stdout();
        out.contains("\"stream\":\"hevc\"") && out.contains("\"stream\":\"junk\"")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(d.running());
    let ev = events(&d.stdout());
    let reason = |s: &str| {
        ev.iter().find(|e| kind(e) == "stream_down" && e["stream"] == s).unwrap()["reason"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let hevc = reason("hevc");
    assert!(hevc.contains("H.265") && hevc.contains("kind = \"pipe\""), "{hevc}");
    let junk = reason("junk");
    assert!(junk.contains(&format!("127.0.0.1:{junk_port}")), "{junk}");
    assert!(junk.contains("does not speak RTSP"), "{junk}");
    assert_eq!(count(&ev, "stream_up", "hevc") + count(&ev, "stream_up", "junk"), 0);
}

/// MJPEG over RTSP is decoded (the `image` crate's JPEG decoder).
#[test]
fn mjpeg_frames_are_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = Server::start(port, &["--codec", "mjpeg", "--width", "320", "--height", "240", "--fps", "10"]);
    let cfg = config(dir.path(), &stream("jpeg", port, ""));
    let mut d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = d.metrics_addr();
    d.wait_for("stream_up", Duration::from_secs(30), |d| d.stdout().contains("\"stream_up\""));
    std::thread::sleep(Duration::from_secs(1));
    let (scored, bad) = (metric(addr, "frames_scored_total", "jpeg"), metric(addr, "frames_bad_total", "jpeg"));
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(20)), 0);
    assert!(scored >= 5.0 && bad == 0.0, "scored {scored}, bad {bad}\n{}", d.stderr());
}

/// `transport = "udp"`: RTP and RTCP on their own UDP ports (the server's default set allows
/// them), frames arrive and are scored.
#[test]
fn udp_transport_delivers_frames() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = Server::start(port, &["--width", "320", "--height", "240", "--fps", "10"]);
    let cfg = config(dir.path(), &stream("udp", port, "transport = \"udp\""));
    let mut d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = d.metrics_addr();
    d.wait_for("stream_up", Duration::from_secs(30), |d| d.stdout().contains("\"stream_up\""));
    let t0 = Instant::now();
    while metric(addr, "frames_scored_total", "udp") < 5.0 && t0.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let (scored, bad) = (metric(addr, "frames_scored_total", "udp"), metric(addr, "frames_bad_total", "udp"));
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(20)), 0);
    assert!(scored >= 5.0 && bad == 0.0, "scored {scored}, bad {bad}\n{}", d.stderr());
}

/// check-config exits 2 naming the problem: a URL without a host, a missing password file,
/// an unknown transport.
#[test]
fn check_config_refuses_bad_rtsp_streams() {
    let dir = tempfile::tempdir().unwrap();
    for (stream, want) in [
        ("url = \"rtsp:///cam\"", "names no host"),
        (
            "url = \"rtsp://cam.local/x\"\nusername = \"u\"\npassword_file = \"/nonexistent/gradwatch-pw\"",
            "/nonexistent/gradwatch-pw",
        ),
        ("url = \"rtsp://cam.local/x\"\ntransport = \"quic\"", "unknown variant `quic`"),
    ] {
        let cfg = write(
            dir.path(),
            "bad.toml",
            &format!("{}\n[[stream]]\nname = \"c\"\nkind = \"rtsp\"\n{stream}\n", head("")),
        );
        let (code, out, err) = Daemon::run(&["check-config", cfg.to_str().unwrap()]);
        assert_eq!(code, 2, "{stream}: {out}{err}");
        assert!(err.contains(want), "{stream}: {err}");
    }
}
