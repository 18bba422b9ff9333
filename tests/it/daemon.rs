//! The daemon end to end: the real `gradwatch` binary on a tiny CNN built in code, a one-class
//! calibration fitted here on the fixture's clean frames, and replay / directory / pipe
//! streams. Covers alerts inside corrupted windows only, SIGTERM mid-stream (alerts end with
//! reason "shutdown", exit 0), SIGHUP with a broken then a good config, bad frames counted and
//! skipped, and bad configs (exit 2, key and line named).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use gradwatch::detector::Calibration;
use serde_json::Value;

use crate::common::daemon::{assets, bin, endless, events, file_events, head, images, kind, write, Daemon};

/// clean 40 / noise:5 40 / clean 40 at full speed: one alert, raised inside the noisy window
/// and cleared after it; none in the clean windows; the summary says so.
#[test]
fn replay_alerts_inside_the_corrupted_window_only() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = format!(
        r#"{}
[[stream]]
name = "replay"
kind = "replay"
path = "{}"
queue = {{ size = 8, policy = "block" }}
schedule = [
  {{ frames = 40 }},
  {{ frames = 40, corruption = "noise", level = 5 }},
  {{ frames = 40 }},
]
"#,
        head(""),
        assets().frames.display()
    );
    let path = write(dir.path(), "replay.toml", &cfg);
    let (code, out, err) = Daemon::run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "stderr:\n{err}");
    let ev = events(&out);
    let starts: Vec<&Value> = ev.iter().filter(|e| kind(e) == "alert_start").collect();
    let ends: Vec<&Value> = ev.iter().filter(|e| kind(e) == "alert_end").collect();
    assert_eq!(starts.len(), 1, "events:\n{out}\nstderr:\n{err}");
    // The stream's first event says it is up (as in docs/guide/alerts.md).
    assert_eq!(kind(&ev[0]), "stream_up", "{out}");
    assert_eq!(ends.len(), 1, "{out}");
    let s = starts[0];
    // Raised by a frame of the noisy window (seq 40..80), about the noisy frames.
    let raised_at = s["last_seq"].as_u64().unwrap();
    assert!((40..80).contains(&raised_at), "{s}");
    assert!(s["first_seq"].as_u64().unwrap() >= 40, "{s}");
    assert_eq!(s["tag"], "noise:5");
    let e = ends[0];
    assert_eq!(e["reason"], "cleared", "{e}");
    assert!(e["last_seq"].as_u64().unwrap() >= 80, "{e}");
    assert_eq!(e["id"], s["id"]);
    // The summary: counts and the verdict per window.
    assert!(err.contains("120 captured, 120 scored, 0 dropped, 0 bad"), "{err}");
    assert!(err.contains("1 alert(s), 0 false alarm(s)"), "{err}");
    let noise = err.lines().find(|l| l.trim_start().starts_with("noise:5")).expect("noise window line");
    assert!(noise.contains("alert after"), "{noise}");
}

/// A directory with PNG frames and a file that is not an image: the bad file is counted and
/// skipped, the good frames are scored, the daemon ends by itself.
#[test]
fn directory_source_skips_non_images() {
    let dir = tempfile::tempdir().unwrap();
    let frames = dir.path().join("frames");
    std::fs::create_dir(&frames).unwrap();
    for (i, img) in images().iter().take(10).enumerate() {
        gradwatch::data::save_png(&frames.join(format!("{i:03}.png")), img).unwrap();
    }
    std::fs::write(frames.join("005-notes.png"), b"this is not an image").unwrap();
    let cfg = format!(
        "{}\n[[stream]]\nname = \"folder\"\nkind = \"directory\"\npath = \"frames\"\nqueue = {{ policy = \"block\" }}\n",
        head("")
    );
    // A relative stream path resolves against the config's directory.
    let path = write(dir.path(), "dir.toml", &cfg);
    let (code, _out, err) = Daemon::run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("10 captured, 10 scored, 0 dropped, 1 bad"), "{err}");
    assert!(err.contains("005-notes.png"), "the bad file is named in the log:\n{err}");
    // File names are not corruption windows (they were listed as 10 MISSED windows), and the
    // rate is one the pipeline achieved (it was computed from capture times: 20,000+ fps).
    assert!(!err.contains("MISSED") && !err.contains("000.png"), "{err}");
    let fps: f64 = err
        .split(" fps;")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no fps in the summary:\n{err}"));
    // A tiny model on a fast machine does score thousands of frames a second, so only sanity
    // here; `summary::file_names_are_not_windows_and_fps_is_real` checks the rule itself.
    assert!(fps.is_finite() && fps > 0.0, "{fps} fps:\n{err}");
}

/// A pipe whose input ends in half a frame: 5 frames scored, the partial one counted bad.
#[test]
fn pipe_partial_frame_is_counted_and_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("frames.rgb");
    let mut f = std::fs::File::create(&raw).unwrap();
    for img in images().iter().take(5) {
        f.write_all(&img.data).unwrap();
    }
    f.write_all(&images()[5].data[..1000]).unwrap();
    drop(f);
    let cfg = format!(
        "{}\n[[stream]]\nname = \"pipe\"\nkind = \"pipe\"\npath = \"{}\"\nwidth = 32\nheight = 32\nqueue = {{ policy = \"block\" }}\n",
        head(""),
        raw.display()
    );
    let path = write(dir.path(), "pipe.toml", &cfg);
    let (code, _out, err) = Daemon::run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("5 captured, 5 scored, 0 dropped, 1 bad"), "{err}");
}

/// SIGTERM while an alert is open: exit 0, and every alert_start has its alert_end, the last
/// one with reason "shutdown".
#[test]
fn sigterm_mid_stream_closes_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let path = write(dir.path(), "term.toml", &endless(&sink, true, ""));
    let mut d = Daemon::start(&["run", "--config", path.to_str().unwrap()]);
    d.wait_for("an alert_start in the file sink", Duration::from_secs(30), |_| {
        file_events(&sink).iter().any(|e| kind(e) == "alert_start")
    });
    d.signal("TERM");
    let code = d.wait(Duration::from_secs(15));
    assert_eq!(code, 0, "{}", d.stderr());
    let ev = file_events(&sink);
    let starts: Vec<&Value> = ev.iter().filter(|e| kind(e) == "alert_start").collect();
    for s in &starts {
        let end = ev.iter().find(|e| kind(e) == "alert_end" && e["id"] == s["id"]);
        assert!(end.is_some(), "alert {} has no alert_end:\n{ev:?}", s["id"]);
    }
    let last = ev.iter().rev().find(|e| kind(e) == "alert_end").unwrap();
    assert_eq!(last["reason"], "shutdown", "{last}");
    assert!(!d.stderr().contains("gradwatch summary"), "no summary after a signal");
}

/// SIGHUP: a broken config is refused (the log says why) and the daemon keeps running on the
/// old one; a good one (threshold far below every score) is applied: alerts start.
#[test]
fn sighup_reload_refuses_broken_and_applies_good_config() {
    let dir = tempfile::tempdir().unwrap();
    let sink = dir.path().join("events.jsonl");
    let path = write(dir.path(), "hup.toml", &endless(&sink, false, ""));
    let mut d = Daemon::start(&["run", "--config", path.to_str().unwrap()]);
    d.wait_for("the first frames", Duration::from_secs(30), |d| d.stderr().contains("inference on"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(file_events(&sink).iter().all(|e| kind(e) != "alert_start"), "clean frames raised an alert");

    let good = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, good.replace("max_batch = 4", "max_batch = 4\nmax_bach = 5")).unwrap();
    d.signal("HUP");
    d.wait_for("the reload error", Duration::from_secs(10), |d| d.stderr().contains("reload failed"));
    let err = d.stderr();
    let line = err.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(line.contains("max_bach"), "the log names the key: {line}");
    assert!(d.running());

    std::fs::write(&path, endless(&sink, false, "threshold = -1e30\n")).unwrap();
    d.signal("HUP");
    d.wait_for("an alert after the good reload", Duration::from_secs(20), |_| {
        file_events(&sink).iter().any(|e| kind(e) == "alert_start")
    });
    // Logged before that alert, but stderr is read on another thread: wait, do not race it.
    d.wait_for("the reload's log line", Duration::from_secs(10), |d| {
        d.stderr().contains("threshold -1000000000000000000000000000000 in force")
    });
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
}

/// Bad configs: exit 2 with the key and line named, for `check-config` and `run`; a good one
/// passes `check-config`; a calibration of another model is refused.
#[test]
fn config_errors_exit_2_and_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let stream = format!("\n[[stream]]\nname = \"r\"\nkind = \"replay\"\npath = \"{}\"\n", assets().frames.display());
    let good = write(dir.path(), "good.toml", &format!("{}{stream}", head("")));
    let (code, out, err) = Daemon::run(&["check-config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "ok: 1 streams, 1 sinks");

    let text = format!("{}{stream}", head("")).replace("raise = 6", "raise = 6\nraize = 7");
    let bad = write(dir.path(), "bad.toml", &text);
    let line = text.lines().position(|l| l.starts_with("raize")).unwrap() + 1;
    for args in [vec!["check-config", bad.to_str().unwrap()], vec!["run", "--config", bad.to_str().unwrap()]] {
        let (code, _out, err) = Daemon::run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("raize"), "{err}");
        assert!(err.contains(&format!("line {line}")), "{err}");
        assert!(err.contains("bad.toml"), "{err}");
    }

    // A calibration fitted on another model file.
    let calib = std::fs::read_to_string(&assets().calibration).unwrap();
    let sha = Calibration::load(&assets().calibration).unwrap().model.sha256;
    let other = write(dir.path(), "other.calib.toml", &calib.replace(&sha, &"ab".repeat(32)));
    let text =
        format!("{}{stream}", head("")).replace(&assets().calibration.display().to_string(), other.to_str().unwrap());
    let mismatch = write(dir.path(), "mismatch.toml", &text);
    let (code, _out, err) = Daemon::run(&["check-config", mismatch.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("sha256"), "{err}");

    // A stream kind that does not exist.
    let text = format!("{}{}", head(""), stream.replace("kind = \"replay\"", "kind = \"rtmp\""));
    let bad_kind = write(dir.path(), "kind.toml", &text);
    let (code, _out, err) = Daemon::run(&["run", "--config", bad_kind.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("rtmp"), "{err}");
}

/// Under systemd: READY=1 once frames flow, STATUS= with the frame rate, WATCHDOG=1 at half of
/// WATCHDOG_USEC, STOPPING=1 on SIGTERM; and the metrics endpoint counts the stream's frames.
#[test]
fn sd_notify_and_metrics_endpoint() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let sink = dir.path().join("events.jsonl");
    let cfg = endless(&sink, false, "").replace("[metrics]\nenabled = false", "[metrics]\nbind = \"127.0.0.1:0\"");
    let path = write(dir.path(), "notify.toml", &cfg);
    let mut child = Command::new(bin())
        .args(["run", "--config", path.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("metrics on http://").nth(1) {
                let _ = addr_tx.send(rest.trim_end_matches("/metrics").to_string());
            }
        }
    });
    let mut d = Daemon { child, out: Default::default(), err: Default::default() };
    let mut msgs = String::new();
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    while !(msgs.contains("READY=1") && msgs.matches("WATCHDOG=1").count() >= 2 && msgs.contains(" fps")) {
        assert!(t0.elapsed() < Duration::from_secs(30), "notifications so far: {msgs:?}");
        if let Ok(n) = sock.recv(&mut buf) {
            msgs.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
    assert!(msgs.contains("STATUS=cam "), "{msgs:?}");

    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).expect("metrics address in the log");
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    std::io::Read::read_to_string(&mut s, &mut body).unwrap();
    let scored = body
        .lines()
        .find_map(|l| l.strip_prefix("gradwatch_frames_scored_total{stream=\"cam\"} "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no frames_scored_total for cam:\n{body}"));
    assert!(scored > 0);
    assert!(body.contains("gradwatch_build_info{"), "{body}");

    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0);
    while let Ok(n) = sock.recv(&mut buf) {
        msgs.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(msgs.contains("STOPPING=1"), "{msgs:?}");
}
