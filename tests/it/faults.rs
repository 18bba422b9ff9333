//! Fault injection against the real `gradwatch` binary: real sockets, signals, FIFOs and
//! descriptor limits. One test per reliability promise in docs/guide/reliability.md; each failed on
//! the code before its fix.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::daemon::{assets, bin, events, head, images, kind, write, Daemon};
use crate::common::http::get;

/// `head()` with the metrics endpoint on a free port.
fn head_with_metrics() -> String {
    head("").replace("[metrics]\nenabled = false", "[metrics]\nbind = \"127.0.0.1:0\"")
}

/// A replay stream that plays clean frames forever at 50 fps.
fn endless_stream() -> String {
    format!(
        "\n[[stream]]\nname = \"cam\"\nkind = \"replay\"\npath = \"{}\"\nfps = 50\nrepeat = true\n",
        assets().frames.display()
    )
}

/// `GET` until it answers `want` (panics after `limit`).
fn get_until(addr: SocketAddr, path: &str, want: u16, limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let r = get(addr, path);
        if let Ok(resp) = &r {
            if resp.status == want {
                return resp.text();
            }
        }
        assert!(t0.elapsed() < limit, "GET {path} never answered {want}; last: {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// The daemon with its descriptor limit lowered to `nofile` (util-linux `prlimit`).
fn start_with_nofile(config: &Path, nofile: u64) -> Daemon {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--nofile={nofile}:{nofile}")).arg("--").arg(bin());
    cmd.args(["run", "--config", config.to_str().unwrap()]);
    Daemon::spawn(cmd)
}

/// ~1,100 idle connections against a daemon limited to 256 descriptors: the endpoint sheds
/// what it cannot serve, never runs out of descriptors, and answers `/metrics` while they are
/// held and after they are gone. (tiny_http ran one thread per connection and its accept
/// thread exited on EMFILE: the endpoint was dead for good.)
#[test]
fn metrics_endpoint_survives_a_connection_flood() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "flood.toml", &format!("{}{}", head_with_metrics(), endless_stream()));
    let mut d = start_with_nofile(&path, 256);
    let addr = d.metrics_addr();
    get_until(addr, "/metrics", 200, Duration::from_secs(30));

    let mut idle = Vec::new();
    let mut failures = 0;
    while idle.len() < 1100 && failures < 50 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(s) => idle.push(s),
            Err(_) => failures += 1,
        }
    }
    assert!(d.running(), "the daemon died under the flood:\n{}", d.stderr());
    // While the flood is held: the connections over the limit were closed by the server, so
    // a scrape gets through within the header timeout of the ones it serves.
    let body = get_until(addr, "/metrics", 200, Duration::from_secs(15));
    assert!(body.contains("gradwatch_frames_scored_total{stream=\"cam\"}"), "{body}");
    drop(idle);
    get_until(addr, "/metrics", 200, Duration::from_secs(5));
    get_until(addr, "/healthz", 200, Duration::from_secs(5));
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
}

/// A 256 MiB request line is cut off after the 8 KiB head limit (431 or a close) and the
/// daemon's memory does not grow with it. (tiny_http buffered the whole line.)
#[test]
fn huge_request_line_is_refused_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "huge.toml", &format!("{}{}", head_with_metrics(), endless_stream()));
    let mut d = Daemon::start(&["run", "--config", path.to_str().unwrap()]);
    let addr = d.metrics_addr();
    get_until(addr, "/metrics", 200, Duration::from_secs(30));
    let before = rss_kib(d.child.id());

    let mut s = TcpStream::connect(addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /").unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    while sent < 256 << 20 {
        match s.write(&chunk) {
            Ok(n) => sent += n,
            Err(_) => break,
        }
    }
    let after = rss_kib(d.child.id());
    assert!(sent < 64 << 20, "the server kept reading: {sent} bytes accepted");
    assert!(after < before + 32 * 1024, "RSS grew from {before} KiB to {after} KiB");
    let mut answer = Vec::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 431"), "{answer}");
    get_until(addr, "/metrics", 200, Duration::from_secs(5));
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
}

/// `head()` with the calibration at `calibration`.
fn head_with_calibration(calibration: &Path) -> String {
    head("").replace(&assets().calibration.display().to_string(), &calibration.display().to_string())
}

fn nan_calibration(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(&assets().calibration).unwrap();
    let line = text.lines().find(|l| l.starts_with("threshold = ")).expect("threshold line").to_string();
    write(dir, "nan.calib.toml", &text.replace(&line, "threshold = nan"))
}

/// A NaN threshold is refused by check-config and run (exit 2) and by SIGHUP (the running
/// threshold stays). (It was accepted and silently disabled alerting.)
#[test]
fn nan_threshold_is_refused_by_check_config_run_and_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let nan = nan_calibration(dir.path());
    let cfg = write(dir.path(), "nan.toml", &format!("{}{}", head_with_calibration(&nan), endless_stream()));
    for args in [vec!["check-config", cfg.to_str().unwrap()], vec!["run", "--config", cfg.to_str().unwrap()]] {
        let (code, _out, err) = Daemon::run(&args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains("threshold") && err.contains("finite"), "{args:?}: {err}");
    }

    let live = dir.path().join("live.calib.toml");
    std::fs::copy(&assets().calibration, &live).unwrap();
    let cfg = write(dir.path(), "live.toml", &format!("{}{}", head_with_calibration(&live), endless_stream()));
    let mut d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    d.wait_for("inference", Duration::from_secs(30), |d| d.stderr().contains("inference on"));
    std::fs::copy(&nan, &live).unwrap();
    d.signal("HUP");
    d.wait_for("the reload to be refused", Duration::from_secs(10), |d| d.stderr().contains("reload failed"));
    let err = d.stderr();
    let line = err.lines().find(|l| l.contains("reload failed")).unwrap();
    assert!(line.contains("threshold"), "{line}");
    assert!(!err.contains("threshold NaN in force"), "{err}");
    assert!(d.running());
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
}

fn mkfifo(path: &Path) {
    let ok = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(ok.success(), "mkfifo {}", path.display());
}

/// Opens `fifo` for writing once the daemon opens it for reading; panics with the daemon's
/// stderr if it exits first (an open would otherwise wait forever).
fn open_writer(fifo: &Path, d: &mut Daemon) -> std::fs::File {
    let (tx, rx) = std::sync::mpsc::channel();
    let p = fifo.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::OpenOptions::new().write(true).open(&p));
    });
    let t0 = Instant::now();
    loop {
        if let Ok(w) = rx.recv_timeout(Duration::from_millis(50)) {
            return w.unwrap();
        }
        if !d.running() || t0.elapsed() > Duration::from_secs(30) {
            // Our own reader releases the writer thread.
            let _ = std::fs::File::open(fifo);
            panic!("the daemon never opened {}; stderr:\n{}", fifo.display(), d.stderr());
        }
    }
}

fn pipe_stream(fifo: &Path, extra: &str) -> String {
    format!(
        "\n[[stream]]\nname = \"door\"\nkind = \"pipe\"\npath = \"{}\"\nwidth = 32\nheight = 32\n{extra}\n",
        fifo.display()
    )
}

/// Noisy frames (level 5), which the tiny model's detector flags.
fn noisy_frames(n: usize) -> Vec<u8> {
    let imgs = images();
    let mut bytes = Vec::new();
    for i in 0..n {
        let noise: gradwatch::corrupt::Corruption = "noise".parse().unwrap();
        let img = gradwatch::corrupt::apply(&imgs[i % imgs.len()], noise, 5, i as u64).unwrap();
        bytes.extend_from_slice(&img.data);
    }
    bytes
}

/// A FIFO writer sends 48 noisy frames and exits while they are still queued: their alert
/// comes first, then its `alert_end` (reason `stream_down`) and the `stream_down`; nothing
/// about those frames after it. (The `stream_down` overtook the queue: an `alert_start` with
/// an earlier time followed it and stayed open through the outage.)
#[test]
fn stream_down_comes_after_the_queued_frames() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("door.rgb");
    mkfifo(&fifo);
    let cfg = head("").replace("max_batch = 4", "max_batch = 1")
        + &pipe_stream(&fifo, "reopen = true\nqueue = { size = 64, policy = \"block\" }");
    let path = write(dir.path(), "order.toml", &cfg);
    let mut d = Daemon::start(&["run", "--config", path.to_str().unwrap()]);
    let frames = noisy_frames(48);
    let mut w = open_writer(&fifo, &mut d);
    w.write_all(&frames).unwrap();
    drop(w);
    d.wait_for("stream_down", Duration::from_secs(30), |d| d.stdout().contains("\"stream_down\""));
    std::thread::sleep(Duration::from_millis(500));
    let out = d.stdout();
    let ev = events(&out);
    let down = ev.iter().position(|e| kind(e) == "stream_down").unwrap();
    let starts: Vec<usize> = (0..ev.len()).filter(|&i| kind(&ev[i]) == "alert_start").collect();
    assert!(!starts.is_empty(), "the noisy frames raised no alert:\n{out}\n{}", d.stderr());
    for (i, e) in ev.iter().enumerate().skip(down + 1) {
        assert!(!["alert_start", "alert_update"].contains(&kind(e)), "event {i} after stream_down:\n{out}");
    }
    let time = |e: &Value| e["time"].as_str().unwrap().to_string();
    for &i in &starts {
        assert!(time(&ev[i]) <= time(&ev[down]), "{out}");
        let id = &ev[i]["id"];
        let end = ev.iter().position(|e| kind(e) == "alert_end" && &e["id"] == id);
        assert!(end.is_some_and(|j| j < down || (j == down - 1)), "alert {id} not ended before stream_down:\n{out}");
    }
    let scored = d.stderr();
    assert!(!scored.contains("panicked"), "{scored}");
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
}

/// A FIFO writer that stalls (open, silent): `stream_down` within `timeout_s` and /healthz 503
/// naming the stream; the next frame brings it back (`stream_up`, /healthz 200). (A hung
/// writer was never noticed.)
#[test]
fn stalled_pipe_writer_goes_down_within_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("door.rgb");
    mkfifo(&fifo);
    let cfg = head_with_metrics() + &pipe_stream(&fifo, "timeout_s = 1");
    let path = write(dir.path(), "stall.toml", &cfg);
    let mut d = Daemon::start(&["run", "--config", path.to_str().unwrap()]);
    let addr = d.metrics_addr();
    let mut w = open_writer(&fifo, &mut d);
    let frame = images()[0].data.clone();
    for _ in 0..3 {
        w.write_all(&frame).unwrap();
    }
    d.wait_for("stream_up", Duration::from_secs(30), |d| d.stdout().contains("\"stream_up\""));
    get_until(addr, "/healthz", 200, Duration::from_secs(10));
    let stalled = Instant::now();
    d.wait_for("stream_down", Duration::from_secs(5), |d| d.stdout().contains("\"stream_down\""));
    let took = stalled.elapsed();
    assert!(took < Duration::from_secs(3), "stream_down after {took:?}");
    let body = get_until(addr, "/healthz", 503, Duration::from_secs(2));
    assert!(body.contains("door"), "{body}");
    assert!(d.running());

    w.write_all(&frame).unwrap();
    d.wait_for("stream_up again", Duration::from_secs(5), |d| d.stdout().matches("\"stream_up\"").count() >= 2);
    get_until(addr, "/healthz", 200, Duration::from_secs(5));
    drop(w);
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
}

/// `check-config` exits 2 on everything `run` fails on at start, naming it: missing stream
/// files and directories, a missing sink directory, a metrics address in use, a required
/// provider this ONNX Runtime lacks. `run` refuses a taken address before loading the model.
/// (check-config passed all of these.)
#[test]
fn check_config_catches_what_run_fails_on() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let check = |name: &str, text: &str, what: &str| {
        let p = write(d, name, text);
        let (code, out, err) = Daemon::run(&["check-config", p.to_str().unwrap()]);
        assert_eq!(code, 2, "{name}: check-config passed: {out}{err}");
        assert!(err.contains(what), "{name}: the error does not name `{what}`:\n{err}");
    };
    let replay = |path: &str| format!("\n[[stream]]\nname = \"r\"\nkind = \"replay\"\npath = \"{path}\"\n");
    let frames = assets().frames.display().to_string();
    let ok = format!("{}{}", head(""), replay(&frames));
    let (code, _, err) = Daemon::run(&["check-config", write(d, "ok.toml", &ok).to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");

    check("npy.toml", &format!("{}{}", head(""), replay("/nonexistent/frames.npy")), "/nonexistent/frames.npy");
    let dir_stream = "\n[[stream]]\nname = \"f\"\nkind = \"directory\"\npath = \"/nonexistent/frames\"\n";
    check("dir.toml", &format!("{}{dir_stream}", head("")), "/nonexistent/frames");
    check("pipe.toml", &format!("{}{}", head(""), pipe_stream(Path::new("/nonexistent/door.rgb"), "")), "door.rgb");
    let sink = "\n[[sink]]\nkind = \"file\"\npath = \"/nonexistent/dir/events.jsonl\"\n";
    check("sink.toml", &format!("{ok}{sink}"), "/nonexistent/dir");
    let provider =
        ok.replace("[runtime]\nthreads = 1", "[runtime]\nthreads = 1\nproviders = [\"cuda\"]\nrequire = true");
    check("provider.toml", &provider, "cuda");

    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let busy = ok.replace("[metrics]\nenabled = false", &format!("[metrics]\nbind = \"{addr}\""));
    check("busy.toml", &busy, &addr.to_string());
    let p = write(d, "busy-run.toml", &busy);
    let t0 = Instant::now();
    let (code, _, err) = Daemon::run(&["run", "--config", p.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&addr.to_string()), "{err}");
    assert!(!err.contains("inference on") && !err.contains("compiled in"), "bound only after the model load:\n{err}");
    assert!(t0.elapsed() < Duration::from_secs(10));
    drop(taken);
}

/// check-config (and therefore `run` and a reload, which validate the same way) refuses what
/// `run` crashed or hung on, naming the key: a control character in a stream name (shown),
/// `queue.size = 1e12` (SIGABRT), `score_fps` and replay `fps` of 1e-300 (panic),
/// `shutdown_deadline_s` near u64::MAX (overflow at SIGTERM), `threads = 100000` (hang), MQTT
/// `port = 0` (retried for ever), and two file sinks on one file (every line twice).
#[test]
fn check_config_refuses_bad_names_and_out_of_range_numbers() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let frames = assets().frames.display().to_string();
    let stream = |name: &str, extra: &str| {
        format!("\n[[stream]]\nname = \"{name}\"\nkind = \"replay\"\npath = \"{frames}\"\n{extra}\n")
    };
    let ok = format!("{}{}", head(""), stream("r", ""));
    let (code, _, err) = Daemon::run(&["check-config", write(d, "ok.toml", &ok).to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let events = d.join("events.jsonl");
    let cases = [
        ("name", format!("{}{}", head(""), stream("bad\\tname", "")), "U+0009"),
        ("queue", format!("{}{}", head(""), stream("r", "queue = { size = 1000000000000 }")), "queue.size"),
        ("score_fps", format!("{}{}", head(""), stream("r", "score_fps = 1e-300")), "score_fps"),
        ("fps", format!("{}{}", head(""), stream("r", "fps = 1e-300")), "fps"),
        ("deadline", ok.replace("shutdown_deadline_s = 3", "shutdown_deadline_s = 9223372036854775807"), "shutdown_deadline_s"),
        ("threads", ok.replace("threads = 1", "threads = 100000"), "threads"),
        ("port", format!("{ok}\n[[sink]]\nkind = \"mqtt\"\nhost = \"127.0.0.1\"\nport = 0\n"), "port"),
        (
            "two-files",
            format!(
                "{ok}\n[[sink]]\nkind = \"file\"\npath = \"{0}\"\n\n[[sink]]\nkind = \"file\"\nname = \"again\"\npath = \"{1}/./events.jsonl\"\n",
                events.display(),
                d.display()
            ),
            "both write",
        ),
    ];
    for (name, text, what) in cases {
        let p = write(d, &format!("{name}.toml"), &text);
        let (code, out, err) = Daemon::run(&["check-config", p.to_str().unwrap()]);
        assert_eq!(code, 2, "{name}: check-config passed: {out}{err}");
        assert!(err.contains(what), "{name}: the error does not name `{what}`:\n{err}");
    }
}

/// An alert open when the daemon is killed (-9) is closed at the next start: the first
/// events of the new run include its `alert_end`, same id, reason `restart`. (Nothing
/// closed it: consumers kept the camera in alarm for ever.)
#[test]
fn alert_open_at_kill_9_ends_with_reason_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let noisy = format!(
        "\n[[stream]]\nname = \"cam\"\nkind = \"replay\"\npath = \"{}\"\nfps = 50\nrepeat = true\nschedule = [{{ frames = 20, corruption = \"noise\", level = 5 }}]\n",
        assets().frames.display()
    );
    let alert = format!("state_dir = \"{}\"", state.display());
    let cfg = write(dir.path(), "k.toml", &format!("{}{noisy}", head(&alert)));
    let mut first = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    first.wait_for("an alert_start", Duration::from_secs(30), |d| {
        events(&d.stdout()).iter().any(|e| kind(e) == "alert_start")
    });
    let start = events(&first.stdout()).into_iter().find(|e| kind(e) == "alert_start").unwrap();
    first.signal("KILL");
    first.wait(Duration::from_secs(10));
    assert!(!events(&first.stdout()).iter().any(|e| kind(e) == "alert_end"));

    let clean = cfg.to_str().unwrap().to_string();
    std::fs::write(&cfg, format!("{}{}", head(&alert), endless_stream())).unwrap();
    let mut second = Daemon::start(&["run", "--config", &clean]);
    second.wait_for("the restart alert_end", Duration::from_secs(30), |d| {
        events(&d.stdout()).iter().any(|e| kind(e) == "alert_end")
    });
    let end = events(&second.stdout()).into_iter().find(|e| kind(e) == "alert_end").unwrap();
    assert_eq!((&end["id"], &end["reason"]), (&start["id"], &serde_json::json!("restart")), "{end}");
    assert!(second.stderr().contains("closing it now with reason \"restart\""), "{}", second.stderr());
    second.signal("TERM");
    assert_eq!(second.wait(Duration::from_secs(15)), 0, "{}", second.stderr());
    // Closed once: a third start has nothing to close.
    let (_, out, _) = {
        let mut third = Daemon::start(&["run", "--config", &clean]);
        third.wait_for("inference", Duration::from_secs(30), |d| d.stderr().contains("inference on"));
        std::thread::sleep(Duration::from_millis(500));
        third.signal("TERM");
        let code = third.wait(Duration::from_secs(15));
        (code, third.stdout(), third.stderr())
    };
    assert!(!events(&out).iter().any(|e| kind(e) == "alert_end" && e["reason"] == "restart"), "{out}");
}

/// Forty slowloris sockets from one client (connected, never finishing a request head) do
/// not hold `/metrics`, `/healthz` or `/` at 503: at most `max_per_client` connections of a
/// client are served at once, and connections still waiting for their head give way to a
/// new one. (All 32 slots were taken until the 5-s header timeout, and renewed.) A method
/// other than GET and HEAD gets 405 with `Allow: GET, HEAD`.
#[test]
fn slowloris_from_one_client_does_not_block_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(dir.path(), "slow.toml", &format!("{}{}", head_with_metrics(), endless_stream()));
    let mut d = Daemon::start(&["run", "--config", path.to_str().unwrap()]);
    let addr = d.metrics_addr();
    get_until(addr, "/metrics", 200, Duration::from_secs(30));
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n").unwrap();
        slow.push(s);
    }
    std::thread::sleep(Duration::from_millis(300));
    for path in ["/metrics", "/healthz", "/"] {
        let t0 = Instant::now();
        let code = get(addr, path).unwrap().status;
        assert_eq!(code, 200, "{path} while 40 slow sockets are open");
        assert!(t0.elapsed() < Duration::from_secs(2), "{path} took {:?}", t0.elapsed());
    }
    drop(slow);

    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    assert!(text.starts_with("HTTP/1.1 405"), "{text}");
    assert!(text.to_ascii_lowercase().contains("\r\nallow: get, head\r\n"), "{text}");
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
}
