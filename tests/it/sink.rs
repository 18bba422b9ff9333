//! Sinks, fan-out and the metrics endpoint, with real files, threads and sockets.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::http::get;
use crossbeam_channel::{bounded, Receiver, Sender};
use gradwatch::alert::{Alert, EndReason, Event};
use gradwatch::metrics::{HealthFn, Metrics, MetricsServer};
use gradwatch::sink::{Fanout, FileSink, MemorySink, Sink, SinkError, StdoutSink};

fn alert(i: u64) -> Alert {
    Alert {
        id: format!("cam0-{i}-1704067200000"),
        stream: "cam0".into(),
        time: "2024-01-01T00:00:01.000Z".into(),
        first_seq: i,
        last_seq: i + 9,
        first_time: "2024-01-01T00:00:00.000Z".into(),
        last_time: "2024-01-01T00:00:00.900Z".into(),
        duration_ms: 1000,
        frames: 10,
        frames_over: 7,
        peak_score: 3.25,
        mean_score: 1.7,
        threshold: 1.0,
        top_class: 3,
        top_class_name: Some("cat \"tabby\"".into()),
        confidence: 0.41,
        model: "resnet18".into(),
        model_sha256: "0f".repeat(32),
        tag: None,
        snapshot: None,
        heatmap: None,
        detail: Default::default(),
    }
}

/// A varied event `i` (cycles through every event type).
fn ev(i: u64) -> Event {
    match i % 5 {
        0 => Event::AlertStart { alert: alert(i) },
        1 => Event::AlertUpdate { alert: alert(i) },
        2 => Event::AlertEnd { alert: alert(i), reason: EndReason::Cleared },
        3 => Event::StreamDown {
            stream: "cam0".into(),
            time: "2024-01-01T00:00:02.000Z".into(),
            reason: format!("gone {i}"),
        },
        _ => Event::StreamUp { stream: "cam0".into(), time: format!("2024-01-01T00:00:{:02}.000Z", i % 60) },
    }
}

fn parse_lines(text: &str) -> Vec<Event> {
    text.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect()
}

/// Polls `cond` until true; panics after `secs`.
fn wait_for(what: &str, secs: u64, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn stdout_lines_parse_back() {
    let mut s = StdoutSink::with_writer("stdout", Vec::new());
    let evs: Vec<Event> = (0..10).map(ev).collect();
    for e in &evs {
        s.send(e).unwrap();
    }
    let text = String::from_utf8(s.into_inner()).unwrap();
    assert_eq!(text.lines().count(), 10);
    assert_eq!(parse_lines(&text), evs);
}

#[test]
fn file_lines_parse_back_and_append() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    std::fs::write(&path, "").unwrap();
    let evs: Vec<Event> = (0..10).map(ev).collect();
    {
        let mut s = FileSink::open("file", &path, true).unwrap();
        for e in &evs[..5] {
            s.send(e).unwrap();
        }
    }
    // A second open appends rather than truncating.
    let mut s = FileSink::open("file", &path, true).unwrap();
    for e in &evs[5..] {
        s.send(e).unwrap();
    }
    s.flush(Instant::now()).unwrap();
    assert_eq!(parse_lines(&std::fs::read_to_string(&path).unwrap()), evs);
}

#[test]
fn file_reopen_after_rename_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let rotated = dir.path().join("events.jsonl.1");
    let evs: Vec<Event> = (0..9).map(ev).collect();
    let mut s = FileSink::open("file", &path, true).unwrap();
    for e in &evs[..3] {
        s.send(e).unwrap();
    }
    // logrotate moves the file: the next event notices the path no longer names the open
    // file and goes to a new file at the path, SIGHUP or not.
    std::fs::rename(&path, &rotated).unwrap();
    for e in &evs[3..5] {
        s.send(e).unwrap();
    }
    assert_eq!(s.stats().reopened, 1);
    s.reopen().unwrap();
    for e in &evs[5..] {
        s.send(e).unwrap();
    }
    let old = parse_lines(&std::fs::read_to_string(&rotated).unwrap());
    let new = parse_lines(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(old, evs[..3]);
    assert_eq!(new, evs[3..]);
}

#[test]
fn file_sink_survives_removed_directory() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    let path = sub.join("events.jsonl");
    let mut s = FileSink::open("file", &path, true).unwrap();
    s.send(&ev(0)).unwrap();
    std::fs::remove_dir_all(&sub).unwrap();
    // The open handle would still take writes (an unlinked inode), but they would be lost:
    // the sink notices the path is gone, fails the event and keeps it for a retry.
    assert!(matches!(s.send(&ev(1)), Err(SinkError::Open { .. })));
    assert_eq!((s.backlog(), s.stats().reopened), (1, 1));
    assert!(matches!(s.reopen(), Err(SinkError::Open { .. })));
    std::fs::create_dir(&sub).unwrap();
    // The retry pause (1 s) applies; the idle poll retries once it is over.
    wait_for("file sink retry", 10, || {
        s.poll();
        s.backlog() == 0
    });
    assert_eq!(s.take_late_deliveries(), 1);
    s.send(&ev(2)).unwrap();
    let back = parse_lines(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(back, [ev(1), ev(2)]);
}

#[test]
fn fanout_reopen_applies_to_later_events() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let rotated = dir.path().join("events.jsonl.1");
    let sink = FileSink::open("file", &path, false).unwrap();
    let fan = Fanout::new(vec![Box::new(sink)], 16).unwrap();
    for i in 0..4 {
        fan.send(&ev(i));
    }
    wait_for("4 sent", 10, || fan.stats()[0].sent == 4);
    std::fs::rename(&path, &rotated).unwrap();
    fan.reopen();
    for i in 4..8 {
        fan.send(&ev(i));
    }
    let report = fan.shutdown(Instant::now() + Duration::from_secs(5));
    assert!(report.clean(), "{report:?}");
    let old = parse_lines(&std::fs::read_to_string(&rotated).unwrap());
    let new = parse_lines(&std::fs::read_to_string(&path).unwrap());
    assert_eq!(old, (0..4).map(ev).collect::<Vec<_>>());
    assert_eq!(new, (4..8).map(ev).collect::<Vec<_>>());
}

/// Blocks in `send` until the test drops `release`; announces entering `send`.
struct BlockingSink {
    entered: Sender<()>,
    release: Receiver<()>,
}

impl Sink for BlockingSink {
    fn name(&self) -> &str {
        "stuck"
    }
    fn send(&mut self, _: &Event) -> Result<(), SinkError> {
        let _ = self.entered.send(());
        let _ = self.release.recv();
        Ok(())
    }
    fn flush(&mut self, _: Instant) -> Result<(), SinkError> {
        Ok(())
    }
}

/// Always fails.
struct FailingSink;

impl Sink for FailingSink {
    fn name(&self) -> &str {
        "failing"
    }
    fn send(&mut self, _: &Event) -> Result<(), SinkError> {
        Err(SinkError::Unavailable("always".into()))
    }
    fn flush(&mut self, _: Instant) -> Result<(), SinkError> {
        Ok(())
    }
}

#[test]
fn blocked_sink_does_not_block_others_and_counts_overflow() {
    const Q: usize = 8;
    const N: u64 = 50;
    let got = Arc::new(Mutex::new(Vec::new()));
    let (entered_tx, entered_rx) = bounded(1);
    let (release_tx, release_rx) = bounded::<()>(0);
    let fan = Fanout::new(
        vec![
            Box::new(BlockingSink { entered: entered_tx, release: release_rx }),
            Box::new(MemorySink::new(got.clone())),
            Box::new(FailingSink),
        ],
        Q,
    )
    .unwrap();
    assert_eq!(fan.names(), ["stuck", "mem", "failing"]);
    fan.send(&ev(0));
    // The stuck sink holds event 0 inside `send` from here on.
    entered_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    for i in 1..N {
        fan.send(&ev(i));
        // Pace the sender by the healthy sink so its own queue never overflows.
        wait_for("mem sink", 10, || got.lock().unwrap().len() as u64 == i + 1);
    }
    assert_eq!(*got.lock().unwrap(), (0..N).map(ev).collect::<Vec<_>>());
    let stats = fan.stats();
    let (stuck, mem) = (&stats[0], &stats[1]);
    // 1 in send + Q queued; the other N - 1 - Q dropped.
    assert_eq!(stuck.queue_depth, Q);
    assert_eq!(stuck.dropped, N - 1 - Q as u64);
    assert_eq!(stuck.sent, 0);
    assert_eq!((mem.sent, mem.dropped, mem.failed), (N, 0, 0));
    // The failing sink is not paced: on a loaded machine its thread can fall Q events behind
    // and drop some. Every event is still accounted for, as failed or dropped.
    wait_for("failing sink", 10, || {
        let s = &fan.stats()[2];
        s.failed + s.dropped == N
    });
    assert_eq!(fan.stats()[2].sent, 0);

    let t = Instant::now();
    let report = fan.shutdown(Instant::now() + Duration::from_millis(300));
    // Shutdown is bounded by its deadline despite the stuck sink.
    assert!(t.elapsed() < Duration::from_secs(5));
    assert!(!report.sinks[0].finished);
    assert_eq!(report.sinks[0].undelivered, Q + 1);
    assert!(report.sinks[1].finished && report.sinks[1].undelivered == 0);
    assert!(report.sinks[2].finished);
    drop(release_tx);
}

/// Parses exposition text into (series with labels, value), checking the line syntax.
fn parse_exposition(text: &str) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            let mut parts = line.splitn(4, ' ');
            assert_eq!(parts.next(), Some("#"));
            assert!(matches!(parts.next(), Some("HELP") | Some("TYPE")), "{line}");
            assert!(parts.next().unwrap().starts_with("gradwatch_"), "{line}");
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let v = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
        };
        assert!(series.starts_with("gradwatch_"), "{line}");
        out.push((series.to_string(), v));
    }
    out
}

fn value(samples: &[(String, f64)], series: &str) -> f64 {
    samples.iter().find(|(s, _)| s == series).unwrap_or_else(|| panic!("no series {series}")).1
}

#[test]
fn metrics_over_http() {
    let m = Metrics::new();
    let cam = m.stream("cam0");
    cam.frames_captured.add(7);
    cam.frames_scored.add(5);
    cam.alerts_raised.inc();
    cam.up.set(1);
    for s in [0.2, 0.7, 1.2, 3.5, 40.0] {
        cam.score.observe(s);
    }
    m.inference_latency().observe(0.003);
    m.inference_latency().observe(0.2);
    m.batch_size().observe(4.0);

    let got = Arc::new(Mutex::new(Vec::new()));
    let fan = Fanout::new(vec![Box::new(MemorySink::new(got.clone()))], 4).unwrap();
    fan.send(&ev(0));
    fan.send(&ev(1));
    wait_for("sent", 10, || fan.stats()[0].sent == 2);
    m.set_sink_stats(fan.stats_handle());

    let healthy = Arc::new(AtomicBool::new(true));
    let h = healthy.clone();
    let health: HealthFn =
        Arc::new(move || if h.load(Ordering::SeqCst) { Ok(()) } else { Err("stream cam0 down for 30 s".into()) });
    let srv = MetricsServer::start("127.0.0.1:0", m.clone(), health).unwrap();
    let addr = srv.local_addr();
    assert_ne!(addr.port(), 0);

    let r = get(addr, "/metrics").unwrap();
    let (status, body) = (r.status, r.text());
    assert_eq!(status, 200);
    let samples = parse_exposition(&body);
    assert_eq!(value(&samples, "gradwatch_frames_captured_total{stream=\"cam0\"}"), 7.0);
    assert_eq!(value(&samples, "gradwatch_stream_up{stream=\"cam0\"}"), 1.0);
    // score buckets: le=0.5 -> {0.2}; le=1 -> +0.7; le=1.5 -> +1.2; le=4 -> +3.5; +Inf -> 5.
    assert_eq!(value(&samples, "gradwatch_score_bucket{stream=\"cam0\",le=\"0.5\"}"), 1.0);
    assert_eq!(value(&samples, "gradwatch_score_bucket{stream=\"cam0\",le=\"1.5\"}"), 3.0);
    assert_eq!(value(&samples, "gradwatch_score_bucket{stream=\"cam0\",le=\"+Inf\"}"), 5.0);
    assert_eq!(value(&samples, "gradwatch_score_count{stream=\"cam0\"}"), 5.0);
    assert!((value(&samples, "gradwatch_score_sum{stream=\"cam0\"}") - 45.6).abs() < 1e-9);
    assert_eq!(value(&samples, "gradwatch_inference_latency_seconds_bucket{le=\"0.005\"}"), 1.0);
    assert_eq!(value(&samples, "gradwatch_inference_latency_seconds_bucket{le=\"+Inf\"}"), 2.0);
    assert_eq!(value(&samples, "gradwatch_sink_sent_total{sink=\"mem\"}"), 2.0);
    assert_eq!(value(&samples, "gradwatch_sink_dropped_total{sink=\"mem\",reason=\"queue_full\"}"), 0.0);
    assert_eq!(value(&samples, "gradwatch_sink_dropped_total{sink=\"mem\",reason=\"dead_letter\"}"), 0.0);
    assert_eq!(value(&samples, "gradwatch_execution_provider{provider=\"cpu\"}"), 1.0);
    assert!(samples.iter().any(|(s, v)| s.starts_with("gradwatch_build_info{version=\"") && *v == 1.0));

    let r = get(addr, "/healthz").unwrap();
    assert_eq!((r.status, r.text()), (200, "ok\n".to_string()));
    healthy.store(false, Ordering::SeqCst);
    let r = get(addr, "/healthz").unwrap();
    assert_eq!((r.status, r.text()), (503, "stream cam0 down for 30 s\n".to_string()));
    assert_eq!(get(addr, "/nope").unwrap().status, 404);

    srv.stop();
    // Stopped: the port no longer serves.
    assert!(TcpStream::connect(addr)
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            write!(s, "GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut b = String::new();
            s.read_to_string(&mut b)?;
            if b.is_empty() {
                Err(std::io::Error::other("closed"))
            } else {
                Ok(())
            }
        })
        .is_err());
    let _ = fan.shutdown(Instant::now() + Duration::from_secs(1));
}
