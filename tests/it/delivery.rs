//! Fault injection against the real daemon (`gradwatch run`), a real mosquitto, real signals
//! and real files: every event the daemon produces (its stdout sink is the reference, and
//! shares each event's `event_id` with the other sinks) must reach the sink under test at
//! least once, as `docs/guide/reliability.md` promises.
//!
//! * MQTT: broker down, events spooled, SIGHUP changing `keep_alive_s`, broker up: all
//!   delivered; broker down, SIGTERM, restart, broker up: all delivered, the final
//!   `alert_end` included.
//! * File: directory removed mid-run (failures counted, events retried into the recreated
//!   file); a file size limit (`RLIMIT_FSIZE`, EFBIG) hit mid-line (no glued lines, failures
//!   counted, events retried once the limit is lifted); a FIFO path (a clear error, no hang).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

// The same tiny CNN and one-class calibration as `daemon.rs` (a Laplacian filter bank, so
// noise shows), built once per test process.
use crate::common::daemon::{assets, Daemon};
use crate::mqtt::{Broker, Sub};
use serde_json::Value;

/// A config: the tiny model, metrics on a free port, a replay at 100 fps forever that
/// alternates 20 clean and 20 noisy frames (an alert starts and ends every 0.4 s) or, with
/// `noisy_only`, stays noisy (one alert, open until shutdown); a stdout sink plus `sink`.
fn config(sink: &str, noisy_only: bool) -> String {
    let a = assets();
    let schedule = if noisy_only {
        r#"[{ frames = 20, corruption = "noise", level = 5 }]"#
    } else {
        r#"[{ frames = 20 }, { frames = 20, corruption = "noise", level = 5 }]"#
    };
    format!(
        r#"[model]
path = "{}"
calibration = "{}"

[runtime]
threads = 1

[pipeline]
max_batch = 4
max_wait_ms = 5
shutdown_deadline_s = 2

[metrics]
bind = "127.0.0.1:0"

[alert]
window = 10
raise = 6
clear = 2
min_duration_ms = 0
update_interval_ms = 0

[[stream]]
name = "cam"
kind = "replay"
path = "{}"
fps = 100
repeat = true
schedule = {schedule}

[[sink]]
kind = "stdout"

{sink}
"#,
        a.model.display(),
        a.calibration.display(),
        a.frames.display()
    )
}

/// Starts `gradwatch run --config <config>` with the daemon tests' harness ([`Daemon`]).
fn start(config: &Path) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gradwatch"));
    cmd.args(["run", "--config"]).arg(config);
    spawn(cmd)
}

/// [`Daemon::spawn`] without the spool and credential directories of the calling environment,
/// so the config's paths are the only ones in play.
fn spawn(mut cmd: Command) -> Daemon {
    cmd.env_remove("STATE_DIRECTORY").env_remove("CREDENTIALS_DIRECTORY");
    Daemon::spawn(cmd)
}

/// What these tests read from a running daemon, beyond the shared harness.
pub(crate) trait Observe {
    /// The events on stdout so far (a glued or partial record fails the test).
    fn events(&self) -> Vec<Value>;
    /// A sample of the Prometheus endpoint (the address is in the log).
    fn metric(&self, series: &str) -> f64;
}

impl Observe for Daemon {
    fn events(&self) -> Vec<Value> {
        parse(&self.stdout())
    }

    fn metric(&self, series: &str) -> f64 {
        let err = self.stderr();
        let addr = err
            .lines()
            .find_map(|l| l.split("metrics on http://").nth(1))
            .map(|r| r.trim_end_matches("/metrics").to_string())
            .expect("metrics address in the log");
        // The endpoint is up before the pipeline (it binds first), so a sink's series appears a
        // moment after the address is logged: poll for it.
        let t0 = Instant::now();
        loop {
            let mut s = std::net::TcpStream::connect(&addr).unwrap();
            s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
            let mut body = String::new();
            s.read_to_string(&mut body).unwrap();
            if let Some(v) = body.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())) {
                return v;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "no {series} in:\n{body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// JSON-line events; panics on a line that is not one (a glued or partial record).
fn parse(text: &str) -> Vec<Value> {
    text.lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("unparsable event line ({e}): {l:?}")))
        .collect()
}

/// Every line of a sink file must be a whole event.
fn parse_file(text: &str) -> Vec<Value> {
    for l in text.lines() {
        assert!(l.starts_with('{') && l.ends_with('}'), "not a whole record: {l:?}");
    }
    assert!(text.is_empty() || text.ends_with('\n'), "partial last line: {:?}", text.lines().last());
    parse(text)
}

fn id(e: &Value) -> String {
    e["event_id"].as_str().unwrap_or_else(|| panic!("event without event_id: {e}")).to_string()
}

fn ids(evs: &[Value]) -> HashSet<String> {
    evs.iter().map(id).collect()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn mqtt_sink(port: u16, client: &str, spool: &Path, keep_alive: u64) -> String {
    format!(
        "[[sink]]\nkind = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"{client}\"\n\
         keep_alive_s = {keep_alive}\nspool_dir = \"{}\"\n",
        spool.display()
    )
}

/// Collects the events a subscriber receives until every id of `want` has arrived.
fn receive_all(sub: &Sub, want: &HashSet<String>, secs: u64) -> Vec<Value> {
    let mut got = Vec::new();
    let mut seen = HashSet::new();
    let end = Instant::now() + Duration::from_secs(secs);
    while !want.is_subset(&seen) {
        let left = end.saturating_duration_since(Instant::now());
        match sub.rx.recv_timeout(left) {
            Ok(g) => {
                let e: Value = serde_json::from_str(&g.payload).unwrap();
                seen.insert(id(&e));
                got.push(e);
            }
            Err(_) => {
                let missing: Vec<_> = want.difference(&seen).collect();
                panic!("{} of {} events never arrived over MQTT: {missing:?}", missing.len(), want.len());
            }
        }
    }
    got
}

/// Broker down, events spooled, a SIGHUP that changes `keep_alive_s` (the sink is rebuilt),
/// broker back: every event, from before and after the reload, arrives.
#[test]
fn mqtt_reload_during_outage_hands_the_backlog_over() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), true);
    // A persistent subscriber session keeps what arrives while the subscriber reconnects.
    let sub = Sub::connect(broker.port, "t-reload", "gradwatch/box-r/events/#", false);
    broker.stop();

    let spool = dir.path().join("spool");
    let cfg = write(dir.path(), "r.toml", &config(&mqtt_sink(broker.port, "box-r", &spool, 30), false));
    let mut d = start(&cfg);
    d.wait_for("6 events during the outage", Duration::from_secs(30), |d| d.events().len() >= 6);
    std::fs::write(&cfg, config(&mqtt_sink(broker.port, "box-r", &spool, 31), false)).unwrap();
    d.signal("HUP");
    d.wait_for("the reload", Duration::from_secs(10), |d| d.stderr().contains("reload: done"));
    let n = d.events().len();
    d.wait_for("events after the reload", Duration::from_secs(10), |d| d.events().len() >= n + 4);
    // The outage outlasts shutdown_deadline_s (2 s), after which the replaced sink used to be
    // abandoned with its backlog.
    std::thread::sleep(Duration::from_millis(2500));
    assert!(d.stderr().contains("took over"), "{}", d.stderr());

    broker.spawn();
    let want = ids(&d.events());
    let got = receive_all(&sub, &want, 30);
    assert!(got.len() >= want.len());
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
}

/// Broker down, an alert open, SIGTERM: the events (the final `alert_end`, reason
/// "shutdown", included) stay in the spool; the restarted daemon delivers them once the
/// broker is back.
#[test]
fn mqtt_sigterm_during_outage_then_restart_delivers_everything() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(dir.path(), true);
    let sub = Sub::connect(broker.port, "t-term", "gradwatch/box-t/events/#", false);
    broker.stop();

    let spool = dir.path().join("spool");
    let cfg = write(dir.path(), "t.toml", &config(&mqtt_sink(broker.port, "box-t", &spool, 30), true));
    let mut first = start(&cfg);
    first.wait_for("an alert_start", Duration::from_secs(30), |d| {
        d.events().iter().any(|e| e["event"] == "alert_start")
    });
    first.signal("TERM");
    assert_eq!(first.wait(Duration::from_secs(15)), 0, "{}", first.stderr());
    let produced = first.events();
    let end = produced.iter().find(|e| e["event"] == "alert_end").expect("an alert_end at shutdown");
    assert_eq!(end["reason"], "shutdown");
    assert!(first.stderr().contains("stay in the spool"), "{}", first.stderr());

    broker.spawn();
    let mut second = start(&cfg);
    let got = receive_all(&sub, &ids(&produced), 30);
    assert!(got.iter().any(|e| e["event"] == "alert_end" && e["event_id"] == end["event_id"]));
    second.signal("TERM");
    assert_eq!(second.wait(Duration::from_secs(15)), 0, "{}", second.stderr());
}

/// Starts the daemon with a file size limit (`RLIMIT_FSIZE`) of `bytes` and SIGXFSZ ignored,
/// so a write past it fails with EFBIG, as on a full disk.
fn start_with_fsize(config: &Path, bytes: u64) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gradwatch"));
    cmd.args(["run", "--config"]).arg(config);
    // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let lim = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    spawn(cmd)
}

fn file_sink(path: &Path) -> String {
    format!("[[sink]]\nkind = \"file\"\npath = \"{}\"\n", path.display())
}

/// The file sink's directory is removed mid-run: the failures are counted, the events are
/// kept and written to the file once the directory is back; nothing goes to the deleted file
/// unnoticed.
#[test]
fn file_sink_directory_removed_is_counted_and_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("events.jsonl");
    let cfg = write(dir.path(), "f.toml", &config(&file_sink(&path), false));
    let mut d = start(&cfg);
    d.wait_for("3 events in the file", Duration::from_secs(30), |_| {
        parse(&std::fs::read_to_string(&path).unwrap_or_default()).len() >= 3
    });
    // Whatever reaches the removed file is readable through this handle.
    let mut old = std::fs::File::open(&path).unwrap();
    std::fs::remove_dir_all(&sub).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let outage_start = d.events().len();
    std::thread::sleep(Duration::from_millis(1200));
    let outage: Vec<Value> = d.events()[outage_start..].to_vec();
    assert!(!outage.is_empty(), "no event during the outage");
    assert!(d.metric("gradwatch_sink_failed_total{sink=\"file\"}") >= 1.0, "failures not counted");
    std::fs::create_dir(&sub).unwrap();

    std::thread::sleep(Duration::from_millis(300));
    let want = ids(&d.events());
    let mut old_text = String::new();
    let t0 = Instant::now();
    loop {
        old.read_to_string(&mut old_text).unwrap();
        let new = parse_file(&std::fs::read_to_string(&path).unwrap_or_default());
        let mut have = ids(&parse_file(&old_text));
        let new_ids = ids(&new);
        have.extend(new_ids.iter().cloned());
        if want.is_subset(&have) {
            // Events produced while the directory was gone are in the new file, not lost in
            // the deleted one.
            for e in &outage {
                assert!(new_ids.contains(&id(e)), "outage event not in the recreated file: {e}");
            }
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "events missing: {:?}", want.difference(&have));
        std::thread::sleep(Duration::from_millis(100));
    }
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
}

/// A file size limit (`RLIMIT_FSIZE`, SIGXFSZ ignored: writes fail with EFBIG, as on a full
/// disk) hit in the middle of a line: the partial line is cut off (no glued records), the
/// failures are counted, and once the limit is lifted every event is written.
#[test]
fn file_sink_size_limit_no_glued_lines_failures_counted_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let cfg = write(dir.path(), "z.toml", &config(&file_sink(&path), false));
    let mut d = start_with_fsize(&cfg, 3000);
    d.wait_for("failed writes", Duration::from_secs(30), |d| {
        d.stderr().contains("metrics on") && d.metric("gradwatch_sink_failed_total{sink=\"file\"}") >= 2.0
    });
    assert!(std::fs::metadata(&path).unwrap().len() <= 3000);

    let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: prlimit on our own child with a valid struct.
    let rc = unsafe { libc::prlimit(d.child.id() as libc::pid_t, libc::RLIMIT_FSIZE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    std::thread::sleep(Duration::from_millis(200));
    let want = ids(&d.events());
    let t0 = Instant::now();
    loop {
        let have = ids(&parse_file(&std::fs::read_to_string(&path).unwrap()));
        if want.is_subset(&have) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "never written: {:?}", want.difference(&have));
        std::thread::sleep(Duration::from_millis(100));
    }
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
    parse_file(&std::fs::read_to_string(&path).unwrap());
}

/// A FIFO as the file sink's path: start-up fails at once with a message that says what is
/// wrong (it used to wait for a reader forever, deaf to SIGTERM).
#[test]
fn file_sink_fifo_path_is_refused_without_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("events.fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let cfg = write(dir.path(), "p.toml", &config(&file_sink(&fifo), false));
    let mut d = start(&cfg);
    let t0 = Instant::now();
    while d.child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if d.child.try_wait().unwrap().is_none() {
        // Still stuck: SIGTERM must at least end it.
        d.signal("TERM");
        let code = d.wait(Duration::from_secs(5));
        panic!("start-up hung on the FIFO (SIGTERM -> exit {code}); stderr:\n{}", d.stderr());
    }
    let code = d.wait(Duration::from_secs(1));
    assert_eq!(code, 2, "{}", d.stderr());
    let err = d.stderr();
    assert!(err.contains("FIFO") && err.contains("not a regular file"), "{err}");
}

/// Sets the file size limit of a running daemon (`RLIMIT_FSIZE`; its SIGXFSZ is ignored, so a
/// write past it fails with EFBIG, as on a full disk).
fn set_fsize(d: &Daemon, bytes: u64) {
    let lim = libc::rlimit { rlim_cur: bytes, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: prlimit on our own child with a valid struct.
    let rc = unsafe { libc::prlimit(d.child.id() as libc::pid_t, libc::RLIMIT_FSIZE, &lim, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
}

/// The event ids in a spool directory (read with the library, as the next start would).
fn spooled_ids(dir: &Path) -> HashSet<String> {
    let (_sp, pending) = gradwatch::sink::mqtt::spool::Spool::open(dir, 16 << 20).unwrap();
    pending.iter().map(|r| id(&serde_json::from_slice(&r.payload).unwrap())).collect()
}

/// The broker is down and the spool's disk is full (a file size limit: writes fail as with
/// ENOSPC). Events the spool could not take are kept in memory and written to it once there
/// is room again (they were never written: lost at the next stop). Filled again, SIGTERM:
/// the shutdown log says exactly how many events are on disk (the spool holds those, every
/// one of them) and how many are lost, and the two add up to every event produced. (It said
/// 85 stay in the spool when it held 28.)
#[test]
fn mqtt_spool_on_a_full_disk_retries_and_the_shutdown_log_is_true() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let spool = dir.path().join("spool");
    let cfg = write(dir.path(), "full.toml", &config(&mqtt_sink(port, "box-f", &spool, 30), false));
    let mut d = start_with_fsize(&cfg, 3000);
    let sdir = spool.join("mqtt");
    d.wait_for("events the spool could not take", Duration::from_secs(30), |d| {
        d.stderr().contains("not spooled, kept in memory") && d.events().len() >= 12
    });
    // Room again: the events kept in memory go to disk.
    set_fsize(&d, libc::RLIM_INFINITY);
    d.wait_for("the retry to disk", Duration::from_secs(15), |d| d.stderr().contains("are now in the spool"));
    let before = ids(&d.events());
    // Full again, at the size the segment has now.
    let seg_len = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    let biggest = std::fs::read_dir(&sdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .max_by_key(|p| seg_len(p))
        .unwrap();
    set_fsize(&d, seg_len(&biggest));
    let n = d.events().len();
    d.wait_for("events while full again", Duration::from_secs(15), |d| d.events().len() >= n + 6);
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
    let produced = ids(&d.events());
    let err = d.stderr();
    let line = err.lines().find(|l| l.contains("stay in the spool")).unwrap_or_else(|| panic!("{err}"));
    let num = |after: &str| -> usize {
        let head = line.split(after).next().unwrap();
        head.split_whitespace().last().unwrap().parse().unwrap_or_else(|_| panic!("{line}"))
    };
    let (on_disk, lost) = (num(" event(s) not yet acknowledged"), num(" more could not be written"));
    let spooled = spooled_ids(&sdir);
    assert_eq!(spooled.len(), on_disk, "the log says {on_disk} on disk, the spool holds {}: {line}", spooled.len());
    assert!(spooled.is_subset(&produced));
    assert_eq!(on_disk + lost, produced.len(), "{line}");
    assert!(lost > 0, "the second fill lost nothing? {line}");
    let missing: Vec<_> = before.difference(&spooled).collect();
    assert!(missing.is_empty(), "events produced before the retry are not on disk: {missing:?}");
}
