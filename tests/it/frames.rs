//! The `frames` sink against the real binary and a real Unix datagram socket (issue #24): a
//! consumer that stops reading for 10 s and comes back costs counted drops, not latency or
//! alarms; `risk` reaches the frames, the Prometheus histogram and the status page; a missing
//! socket is an error at `check-config` (exit 2).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

use gradwatch::detector::forward::ForwardSignal;
use gradwatch::detector::{Calibration, DetectorKind, Ensemble, Mlp, Platt, Standardizer, Target, TrustHead};
use serde_json::Value;

use crate::common::daemon::{assets, events, head, kind, write, Daemon};
use crate::common::http::get_text;

/// The daemon tests' calibration with a hand-made trust head: one member over the gradient
/// columns, MSP and, with `quality`, the image-quality measures (standardised with mean 0 and
/// std 1, so their `|z|` is their absolute value). `member` builds the member for its input
/// width.
fn with_trust_head(quality: bool, member: impl FnOnce(usize) -> Mlp, platt: Platt) -> Calibration {
    let mut c = Calibration::load(&assets().calibration).unwrap();
    let normalize = match &c.detector {
        DetectorKind::OneClass { normalize, .. } => normalize.clone(),
        other => panic!("unexpected detector {other:?}"),
    };
    let q = gradwatch::quality::Measure::ALL.len();
    let inputs = normalize.dim() + 1 + if quality { q } else { 0 };
    c.trust = Some(TrustHead {
        ensemble: Ensemble {
            target: Target::Harm,
            forward: vec![ForwardSignal::Msp],
            classes: 5,
            normalize,
            forward_normalize: Some(Standardizer { mean: vec![0.0], std: vec![1.0] }),
            quality_normalize: quality.then(|| Standardizer { mean: vec![0.0; q], std: vec![1.0; q] }),
            members: vec![member(inputs)],
        },
        anchor: None,
        platt,
        held_out: None,
    });
    c
}

/// The daemon tests' calibration plus a trust head whose risk is `sigmoid(0 - 1) = 0.2689` for
/// every frame (zero weights): the plumbing, not the model.
fn calibration_with_trust(dir: &Path) -> std::path::PathBuf {
    let zero = |p: usize| Mlp { w1: vec![vec![0.0; p]], b1: vec![0.0], w2: vec![0.0], b2: 0.0 };
    let c = with_trust_head(false, zero, Platt { a: 1.0, b: -1.0 });
    let out = dir.join("trust.calib.toml");
    c.save(&out).unwrap();
    // An old file (no [trust]) still loads and has no risk.
    assert!(Calibration::load(&assets().calibration).unwrap().trust.is_none());
    out
}

fn metric(body: &str, prefix: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {prefix} in:\n{body}"))
}

/// 14 s of a 25 fps replay (noise at 2-4 s and 6-8 s); the consumer reads the first second,
/// stops for 10 s (both noisy windows fall in the pause), then reads again.
#[test]
fn consumer_that_stops_reading_costs_counted_drops_not_latency_or_alarms() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("frames.sock");
    let consumer = UnixDatagram::bind(&sock_path).unwrap();
    consumer.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let calib = calibration_with_trust(dir.path());
    let cfg = format!(
        r#"{}
[[stream]]
name = "cam"
kind = "replay"
path = "{}"
fps = 25
schedule = [
  {{ frames = 50 }},
  {{ frames = 50, corruption = "noise", level = 5 }},
  {{ frames = 50 }},
  {{ frames = 50, corruption = "noise", level = 5 }},
  {{ frames = 150 }},
]

[[sink]]
kind = "stdout"

[[sink]]
kind = "frames"
transport = "unix_datagram"
path = "{}"
"#,
        head("").replace(&assets().calibration.display().to_string(), &calib.display().to_string()).replace(
            "[metrics]\nenabled = false",
            &format!("[metrics]\nbind = \"127.0.0.1:{port}\"\nrisk_level = 0.25")
        ),
        assets().frames.display(),
        sock_path.display()
    );
    let path = write(dir.path(), "frames.toml", &cfg);
    let (code, out, err) = Daemon::run(&["check-config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");

    let mut d = Daemon::start(&["run", "--config", path.to_str().unwrap()]);
    let mut buf = vec![0u8; 65536];
    let mut got: Vec<Value> = Vec::new();
    // Read until the first frame, then one more second.
    let t0 = Instant::now();
    let mut first: Option<Instant> = None;
    while first.is_none_or(|f| f.elapsed() < Duration::from_secs(1)) {
        assert!(t0.elapsed() < Duration::from_secs(60) && d.running(), "no frames; stderr:\n{}", d.stderr());
        if let Ok(n) = consumer.recv(&mut buf) {
            got.push(serde_json::from_slice(&buf[..n]).unwrap());
            first.get_or_insert_with(Instant::now);
        }
    }
    let before = got.len();
    // Stop reading for 10 s; the daemon goes on (and its endpoint answers) meanwhile.
    std::thread::sleep(Duration::from_secs(9));
    let metrics = get_text(("127.0.0.1", port), "/metrics");
    let page = get_text(("127.0.0.1", port), "/");
    std::thread::sleep(Duration::from_secs(1));
    // Come back: frames flow again.
    let resumed = Instant::now();
    while d.running() || resumed.elapsed() < Duration::from_millis(500) {
        if let Ok(n) = consumer.recv(&mut buf) {
            got.push(serde_json::from_slice(&buf[..n]).unwrap());
        }
        if resumed.elapsed() > Duration::from_secs(60) {
            panic!("daemon did not finish; stderr:\n{}", d.stderr());
        }
    }
    let code = d.wait(Duration::from_secs(10));
    let (out, err) = (d.stdout(), d.stderr());
    assert_eq!(code, 0, "stderr:\n{err}");

    // Alarms: one per noisy window, both raised while the consumer was not reading.
    let ev = events(&out);
    let starts: Vec<&Value> = ev.iter().filter(|e| kind(e) == "alert_start").collect();
    assert_eq!(starts.len(), 2, "{out}\n{err}");
    assert!((50..100).contains(&starts[0]["last_seq"].as_u64().unwrap()), "{}", starts[0]);
    assert!((150..200).contains(&starts[1]["last_seq"].as_u64().unwrap()), "{}", starts[1]);
    // No frame lost in the pipeline, latency of a healthy daemon.
    assert!(err.contains("350 captured, 350 scored, 0 dropped, 0 bad"), "{err}");
    let p99: f64 = err
        .lines()
        .find_map(|l| l.split("p99 ").nth(1))
        .and_then(|v| v.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no latency line:\n{err}"));
    assert!(p99 < 1000.0, "p99 capture-to-verdict {p99} ms\n{err}");

    // The consumer: the frames before the pause, then later ones; the rest dropped and counted.
    assert!(before > 0 && got.len() > before, "{before} then {}", got.len());
    let last_seq = got.last().unwrap()["seq"].as_u64().unwrap();
    assert!(last_seq > 300, "frames after the pause reach the consumer (last seq {last_seq})");
    assert!(got.len() < 350, "nothing dropped while the consumer slept ({})", got.len());
    let f = &got[0];
    assert_eq!(f["stream"], "cam");
    assert!((f["risk"].as_f64().unwrap() - 0.2689).abs() < 1e-3, "{f}");
    assert!(f["time_ms"].as_u64().unwrap() > 0 && f["confidence"].as_f64().is_some(), "{f}");
    assert!(matches!(f["verdict"].as_str(), Some("familiar" | "unfamiliar")), "{f}");
    assert!(f.get("alarm").is_some_and(Value::is_boolean), "{f}");
    let noisy_alarmed = got.iter().any(|g| g["alarm"] == true);
    let _ = noisy_alarmed; // frames in the alarms were mostly dropped (the consumer slept)

    // Metrics mid-pause: drops counted as "slow" (the socket's queue full), risk observed.
    let slow = metric(&metrics, "gradwatch_frames_sink_dropped_total{sink=\"frames\",reason=\"slow\"} ");
    assert!(slow > 0, "{metrics}");
    assert!(metric(&metrics, "gradwatch_risk_count{stream=\"cam\"} ") > 0, "{metrics}");
    assert!(metrics.contains("gradwatch_risk_bucket{stream=\"cam\",le=\"0.3\"}"), "{metrics}");
    // Every risk is 0.2689 > 0.25: the trust rate is 100 %.
    assert!(page.contains("trust: <b>100.0 %</b>"), "{page}");
}

/// `check-config` refuses a frames sink whose socket is missing or is not a socket (exit 2,
/// the path and the fix named).
#[test]
fn check_config_refuses_a_missing_socket() {
    let dir = tempfile::tempdir().unwrap();
    let not_sock = write(dir.path(), "plain-file", "");
    for (target, want) in [(dir.path().join("absent.sock"), "start the consumer"), (not_sock, "is not a socket")] {
        let cfg = format!(
            "{}\n[[stream]]\nname = \"cam\"\nkind = \"replay\"\npath = \"{}\"\n\n[[sink]]\nkind = \"frames\"\n\
             transport = \"unix_stream\"\npath = \"{}\"\n",
            head(""),
            assets().frames.display(),
            target.display()
        );
        let path = write(dir.path(), "bad.toml", &cfg);
        let (code, _out, err) = Daemon::run(&["check-config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains(&target.display().to_string()) && err.contains(want), "{err}");
    }
}

/// A trust head that reads one image-quality measure: the noise sigma (`Measure::Noise`) of
/// the frame as the model sees it, `risk = sigmoid(0.1 |sigma| - 2)` (standardiser mean 0,
/// std 1; zero weights elsewhere). The daemon measures every frame for it, so each clean
/// frame's risk is that function of the fixture image, and noisy frames' risk is higher.
#[test]
fn risk_reads_the_image_quality_measures_of_each_frame() {
    use gradwatch::quality::{measure_as_input, Measure};
    let dir = tempfile::tempdir().unwrap();
    let q = Measure::ALL.len();
    let noise = Measure::ALL.iter().position(|m| *m == Measure::Noise).unwrap();
    // One weight of 1 on the noise column (the quality columns come last).
    let on_noise = |p: usize| {
        let mut w1 = vec![0.0; p];
        w1[p - q + noise] = 1.0;
        Mlp { w1: vec![w1], b1: vec![0.0], w2: vec![1.0], b2: 0.0 }
    };
    let c = with_trust_head(true, on_noise, Platt { a: 0.1, b: -2.0 });
    assert!(c.uses_quality());
    let calib = dir.path().join("quality.calib.toml");
    c.save(&calib).unwrap();
    let frames = dir.path().join("frames.jsonl");
    let cfg = format!(
        "{}\n[[stream]]\nname = \"cam\"\nkind = \"replay\"\npath = \"{}\"\nfps = 0\nqueue = {{ policy = \"block\" }}\nschedule = [\n  {{ frames = 40 }},\n  \
         {{ frames = 40, corruption = \"noise\", level = 5 }},\n]\n\n[[sink]]\nkind = \"frames\"\ntransport = \"file\"\n\
         path = \"{}\"\n",
        head("").replace(&assets().calibration.display().to_string(), &calib.display().to_string()),
        assets().frames.display(),
        frames.display()
    );
    let path = write(dir.path(), "quality.toml", &cfg);
    let (code, out, err) = Daemon::run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<Value> =
        std::fs::read_to_string(&frames).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 80, "{err}");
    let risk = |v: &Value| v["risk"].as_f64().unwrap() as f32;
    let imgs = crate::common::daemon::images();
    for v in &lines[..40] {
        let seq = v["seq"].as_u64().unwrap() as usize;
        let sigma = measure_as_input(&imgs[seq % imgs.len()], 32, 32)[noise];
        let want = 1.0 / (1.0 + (-(0.1 * sigma.abs() - 2.0)).exp());
        assert!((risk(v) - want).abs() < 1e-4, "seq {seq}: risk {} vs {want} (sigma {sigma})", risk(v));
    }
    let mean = |v: &[Value]| v.iter().map(risk).sum::<f32>() / v.len() as f32;
    let (clean, noisy) = (mean(&lines[..40]), mean(&lines[40..]));
    assert!(noisy > clean + 0.2, "noisy frames' risk {noisy} vs clean {clean}");
}
