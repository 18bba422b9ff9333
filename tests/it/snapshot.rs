//! Alert snapshots and `gradwatch explain`: the frame ring, retention (oldest deleted first,
//! bounds hold), the heat map of a known input gradient, the daemon (every alert event carries
//! `snapshot` and `heatmap` paths that exist; no usable directory turns snapshots off without
//! failing) and `explain` on a committed sample image (a PNG, and an SVG with one bar per
//! feature).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use gradwatch::frame::RgbImage;
use gradwatch::snapshot::heatmap::{self, GradLayout, HeatMap};
use gradwatch::snapshot::{retention, FrameRing, Kept};
use serde_json::Value;

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn kept(seq: u64, score: f32) -> Kept {
    Kept { seq, score, image: RgbImage::zeros(2, 2) }
}

#[test]
fn ring_keeps_the_last_frames_and_finds_the_peak() {
    let mut r = FrameRing::new(4);
    assert!(r.is_empty());
    for (seq, score) in [(1, 0.5), (2, 3.0), (3, 1.0), (5, 3.0), (6, 2.0), (7, f32::NAN)] {
        r.push(kept(seq, score));
        assert!(r.len() <= 4);
    }
    assert_eq!(r.seqs(), [3, 5, 6, 7], "the oldest go first");
    assert!(r.get(2).is_none() && r.get(4).is_none());
    assert_eq!(r.get(6).map(|k| k.seq), Some(6));
    // The highest score, the earliest on ties, NaN never: as the alert tracker picks its peak.
    assert_eq!(r.peak(0, 100).map(|k| k.seq), Some(5));
    assert_eq!(r.peak(6, 7).map(|k| k.seq), Some(6));
    assert!(r.peak(7, 7).is_none());
    assert!(r.peak(8, 9).is_none());
}

#[test]
fn retention_deletes_oldest_first_and_bounds_hold() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    // Names in the opposite order of age, so the order can only come from the times.
    for i in 0..10u64 {
        let p = dir.path().join(format!("z{}-start.jpg", 9 - i));
        std::fs::write(&p, vec![0u8; 100]).unwrap();
        let f = std::fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(t0 + Duration::from_secs(i)).unwrap();
    }
    // Not ours: a temporary being written and another file; never counted or deleted.
    std::fs::write(dir.path().join(".z-new.jpg.tmp"), vec![0u8; 5000]).unwrap();
    std::fs::write(dir.path().join("notes.txt"), vec![0u8; 5000]).unwrap();

    let (removed, usage) = retention::enforce(dir.path(), 7, u64::MAX).unwrap();
    let names: Vec<String> = removed.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["z9-start.jpg", "z8-start.jpg", "z7-start.jpg"]);
    assert_eq!(usage, retention::Usage { files: 7, bytes: 700 });

    let (removed, usage) = retention::enforce(dir.path(), 100, 450).unwrap();
    assert_eq!(removed.len(), 3);
    assert_eq!(usage, retention::Usage { files: 4, bytes: 400 });
    let left: Vec<String> = retention::list(dir.path())
        .unwrap()
        .iter()
        .map(|f| f.0.file_name().unwrap().to_string_lossy().into())
        .collect();
    assert_eq!(left, ["z3-start.jpg", "z2-start.jpg", "z1-start.jpg", "z0-start.jpg"], "the newest stay");
    assert!(dir.path().join(".z-new.jpg.tmp").exists() && dir.path().join("notes.txt").exists());

    // Within bounds: nothing happens.
    let (removed, _) = retention::enforce(dir.path(), 4, 400).unwrap();
    assert!(removed.is_empty());
}

/// Mean brightness (R+G+B) of a square of the image.
fn brightness(img: &RgbImage, x0: usize, y0: usize, n: usize) -> f32 {
    let mut s = 0.0;
    for y in y0..y0 + n {
        for x in x0..x0 + n {
            s += img.pixel(x, y).iter().map(|&v| f32::from(v)).sum::<f32>();
        }
    }
    s / (n * n) as f32
}

#[test]
fn heat_map_lights_the_corner_the_gradient_is_in() {
    for nhwc in [false, true] {
        let layout = GradLayout { width: 32, height: 32, nhwc, channels: 3 };
        // Gradient only in the top-left 4x4 pixels, one channel; everything else 0.
        let mut g = vec![0f32; layout.len()];
        for y in 0..4 {
            for x in 0..4 {
                let i = if nhwc { (y * 32 + x) * 3 + 1 } else { (32 + y) * 32 + x };
                g[i] = if (x + y) % 2 == 0 { -0.3 } else { 0.2 };
            }
        }
        let m = HeatMap::from_input_grad(&g, &layout).unwrap();
        assert!(m.values.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(m.values[32 + 1] > 0.9, "the corner is hot: {}", m.values[33]);
        assert_eq!(m.values[31 * 32 + 31], 0.0, "the far corner is cold");

        let grey = RgbImage::new(32, 32, vec![128; 32 * 32 * 3]).unwrap();
        let r = heatmap::render(&grey, Some(&g), &layout, 256);
        assert_eq!((r.frame.width, r.frame.height), (256, 256), "small frames are upscaled");
        let h = r.heatmap.unwrap();
        assert_eq!((h.width, h.height), (256, 256));
        let (hot, cold) = (brightness(&h, 8, 8, 16), brightness(&h, 224, 224, 16));
        assert!(hot > 500.0, "the corner is bright (inferno's yellow end): {hot}");
        assert!(cold < 3.0 * 128.0, "the rest is the frame, dimmed: {cold}");
        // Hot means the colour map's warm end: red and green well above blue.
        let p = h.pixel(12, 12);
        assert!(p[0] > 200 && p[1] > 150 && p[2] < p[1], "{p:?}");
    }
}

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gradwatch")
}

/// Runs the daemon on the reference model and calibration over the sample replay, clean /
/// noise level 5 / clean; returns (exit code, events, stderr).
fn run_daemon(dir: &Path, snapshots: &str, state_directory: Option<&Path>) -> (i32, Vec<Value>, String) {
    let cfg = format!(
        r#"[model]
path = "{model}"
calibration = "{calib}"

[runtime]
threads = 1

[pipeline]
max_batch = 4
max_wait_ms = 5
shutdown_deadline_s = 10

[metrics]
enabled = false

[alert]
window = 10
raise = 6
clear = 2
min_duration_ms = 0
update_interval_ms = 0

{snapshots}

[[stream]]
name = "cam/1"
kind = "replay"
path = "{frames}"
queue = {{ size = 8, policy = "block" }}
schedule = [
  {{ frames = 12 }},
  {{ frames = 30, corruption = "noise", level = 5 }},
  {{ frames = 12 }},
]
"#,
        model = repo("models/gtsrb-resnet18.onnx").display(),
        calib = repo("models/gtsrb-resnet18.calib.toml").display(),
        frames = repo("models/samples/gtsrb-test-sample.npy").display(),
    );
    let path = dir.join("snap.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["run", "--config", path.to_str().unwrap()]).env("RUST_LOG", "info").env_remove("NOTIFY_SOCKET");
    match state_directory {
        Some(s) => cmd.env("STATE_DIRECTORY", s),
        None => cmd.env_remove("STATE_DIRECTORY"),
    };
    let out = cmd.output().unwrap();
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code().unwrap_or(-1), events, String::from_utf8_lossy(&out.stderr).into_owned())
}

fn decoded_size(p: &Path) -> (u32, u32) {
    let img = image::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (img.width(), img.height())
}

#[test]
fn daemon_alert_events_carry_snapshot_and_heatmap_files() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // No [snapshots] dir: the default is $STATE_DIRECTORY/snapshots (systemd's StateDirectory=).
    let (code, events, err) = run_daemon(dir.path(), "", Some(&state));
    assert_eq!(code, 0, "{err}");
    let snaps = state.join("snapshots");
    assert!(err.contains(&format!("snapshots: in {}", snaps.display())), "{err}");
    let alerts: Vec<&Value> =
        events.iter().filter(|e| matches!(e["event"].as_str(), Some("alert_start" | "alert_end"))).collect();
    assert!(alerts.iter().any(|e| e["event"] == "alert_start"), "the noisy window raises an alert:\n{events:?}\n{err}");
    for e in &alerts {
        let id = e["id"].as_str().unwrap();
        assert!(id.starts_with("cam/1-"), "{e}");
        let (snap, heat) = (e["snapshot"].as_str(), e["heatmap"].as_str());
        let (Some(snap), Some(heat)) = (snap, heat) else { panic!("no snapshot/heatmap in {e}\n{err}") };
        let (snap, heat) = (Path::new(snap), Path::new(heat));
        assert!(snap.starts_with(&snaps) && heat.starts_with(&snaps), "{e}");
        // The stream name's `/` does not make a subdirectory.
        let safe = id.replace('/', "_");
        let name = snap.file_name().unwrap().to_str().unwrap();
        if e["event"] == "alert_start" {
            assert_eq!(name, format!("{safe}-start.jpg"));
        } else {
            assert!(name == format!("{safe}-start.jpg") || name == format!("{safe}-peak.jpg"), "{name}");
        }
        assert_eq!(heat.file_name().unwrap().to_str().unwrap(), name.replace(".jpg", "-heatmap.png"));
        assert_eq!(decoded_size(snap), (256, 256), "32x32 frames are shown at 256x256");
        assert_eq!(decoded_size(heat), (256, 256));
    }
    // Nothing half-written is left behind.
    let hidden = std::fs::read_dir(&snaps)
        .unwrap()
        .filter(|f| f.as_ref().unwrap().file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(hidden, 0);
}

#[test]
fn daemon_without_a_writable_directory_runs_without_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    let cfg = format!("[snapshots]\ndir = \"{}\"\nmax_files = 10\n", file.join("snaps").display());
    let (code, events, err) = run_daemon(dir.path(), &cfg, None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("snapshots: off"), "{err}");
    assert!(events.iter().any(|e| e["event"] == "alert_start"), "{events:?}");
    assert!(events.iter().all(|e| e.get("snapshot").is_none() && e.get("heatmap").is_none()), "{events:?}");
}

/// A small XML well-formedness check: every tag closed in order, attributes quoted, only the
/// five predefined entities and character references.
fn check_xml(s: &str) -> Result<(), String> {
    let mut stack: Vec<String> = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('<') {
            let end = r.find('>').ok_or("unterminated tag")?;
            let tag = &r[..end];
            rest = &r[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or(format!("</{name}> closes nothing"))?;
                if open != name.trim() {
                    return Err(format!("<{open}> closed by </{name}>"));
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().ok_or("empty tag")?.to_string();
            if body.matches('"').count() % 2 != 0 || body.contains('<') {
                return Err(format!("bad attributes in <{body}>"));
            }
            if !self_closing {
                stack.push(name);
            }
        } else {
            let end = rest.find('<').unwrap_or(rest.len());
            let text = &rest[..end];
            for (i, _) in text.match_indices('&') {
                let ent = &text[i..text[i..].find(';').map_or(text.len(), |j| i + j + 1)];
                let ok = ["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&ent) || ent.starts_with("&#");
                if !ok {
                    return Err(format!("bad entity {ent}"));
                }
            }
            if stack.is_empty() && !text.trim().is_empty() {
                return Err(format!("text outside the root: {text}"));
            }
            rest = &rest[end..];
        }
    }
    if stack.is_empty() {
        Ok(())
    } else {
        Err(format!("unclosed {stack:?}"))
    }
}

#[test]
fn explain_writes_a_heat_map_and_a_chart_with_one_bar_per_feature() {
    let out = tempfile::tempdir().unwrap();
    let calib = repo("models/gtsrb-resnet18.calib.toml");
    let image = repo("models/samples/frames/frame-003-class03.png");
    let r = Command::new(bin())
        .args(["explain", image.to_str().unwrap(), "--calib", calib.to_str().unwrap(), "--threads", "1", "-o"])
        .arg(out.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "{stderr}");
    let line: Value = serde_json::from_str(String::from_utf8_lossy(&r.stdout).trim()).unwrap();
    assert_eq!(line["file"], "frame-003-class03.png");
    assert!(line["score"].is_number(), "{line}");
    assert!(matches!(line["verdict"].as_str(), Some("familiar" | "unfamiliar")), "{line}");
    assert_eq!(line["top_layers"].as_array().unwrap().len(), 5);

    let heat = out.path().join("frame-003-class03-heatmap.png");
    assert_eq!(line["heatmap"].as_str(), heat.to_str());
    assert_eq!(decoded_size(&heat), (256, 256));

    let svg_path = out.path().join("frame-003-class03-layers.svg");
    assert_eq!(line["layers"].as_str(), svg_path.to_str());
    let svg = std::fs::read_to_string(&svg_path).unwrap();
    assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""), "{}", &svg[..80.min(svg.len())]);
    check_xml(&svg).unwrap();
    let features = gradwatch::detector::Calibration::load(&calib).unwrap().model.features;
    assert_eq!(features.len(), 62);
    assert_eq!(svg.matches("<rect class=\"bar\"").count(), features.len());
    assert_eq!(svg.matches("<rect class=\"familiar\"").count(), features.len());
    for f in &features {
        assert!(svg.contains(&format!(">{f}</text>")), "{f} is labelled");
    }
}

/// `explain` compiles the model as the calibration was fitted (here the shipped `fast` one: its
/// 25 features, not the 62 of `full`), gives `score`'s score, and its heat map's input gradient
/// is `full`'s: the stage cut prunes only the weight norms' backward, not the input's.
#[test]
fn explain_takes_the_calibrations_preset() {
    use gradwatch::grad::{self, CompileOptions, Preset};
    let out = tempfile::tempdir().unwrap();
    let calib = repo("models/gtsrb-resnet18.fast.calib.toml");
    let image = repo("models/samples/frames/frame-003-class03.png");
    let run = |cmd: &str, extra: &[&std::ffi::OsStr]| {
        let r = Command::new(bin())
            .args([cmd, image.to_str().unwrap(), "--calib", calib.to_str().unwrap(), "--threads", "1"])
            .args(extra)
            .output()
            .unwrap();
        assert!(r.status.success(), "{cmd}: {}", String::from_utf8_lossy(&r.stderr));
        serde_json::from_str::<Value>(String::from_utf8_lossy(&r.stdout).trim()).unwrap()
    };
    let explained = run("explain", &["-o".as_ref(), out.path().as_os_str()]);
    let scored = run("score", &[]);
    let (e, s) = (explained["score"].as_f64().unwrap(), scored["score"].as_f64().unwrap());
    assert!((e - s).abs() <= 1e-4 * s.abs().max(1.0), "explain {e} vs score {s}");
    let svg = std::fs::read_to_string(out.path().join("frame-003-class03-layers.svg")).unwrap();
    assert_eq!(svg.matches("<rect class=\"bar\"").count(), 25);

    let model = gradwatch::onnx::load(&repo("models/gtsrb-resnet18.onnx")).unwrap();
    let x = ndarray::ArrayD::<f32>::from_shape_fn(vec![2, 3, 32, 32], |d| {
        ((d[1] * 7 + d[2] * 3 + d[3] + d[0]) % 11) as f32 / 11.0
    });
    let grads: Vec<Vec<f32>> = [Preset::Full, Preset::Fast, Preset::Head]
        .into_iter()
        .map(|p| {
            let c = grad::compile(&model, &CompileOptions { input_grad: true, ..CompileOptions::preset(p) }).unwrap();
            let mut s = gradwatch::runtime::GradSession::new(&c, &crate::common::ort()).unwrap();
            s.run(x.view()).unwrap().input_grad.unwrap().iter().copied().collect()
        })
        .collect();
    let scale = grads[0].iter().fold(0f32, |a, v| a.max(v.abs()));
    assert!(scale > 0.0);
    for g in &grads[1..] {
        let worst = g.iter().zip(&grads[0]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst <= 1e-5 * scale, "input gradient differs from full's by {worst:e} (max |g| {scale:e})");
    }
}

/// The heat-map session is opened on the first heat map (`LazyGradient`): from the model file,
/// which must still be the one the daemon started with.
#[test]
fn lazy_gradient_opens_on_first_use_and_checks_the_model_hash() {
    use gradwatch::snapshot::{InputGradient, LazyGradient};
    let opts = crate::common::ort();
    let path = repo("models/gtsrb-resnet18.onnx");
    let bytes = std::fs::read(&path).unwrap();
    let sha = gradwatch::model::sha256_hex(&bytes);
    let loss = gradwatch::grad::Loss::BceLogits;
    let image = RgbImage::zeros(32, 32);
    let mut g = LazyGradient::new(&path, &sha, loss, opts.library.as_deref());
    let first = g.input_grad(&image).unwrap();
    assert_eq!(first.len(), 3 * 32 * 32);
    assert!(first.iter().all(|v| v.is_finite()) && first.iter().any(|&v| v != 0.0));
    assert_eq!(g.input_grad(&image).unwrap(), first, "the same session, the same gradient");
    let mut stale = LazyGradient::new(&path, "0000", loss, opts.library.as_deref());
    let e = stale.input_grad(&image).unwrap_err();
    assert!(e.contains("changed since the start"), "{e}");
}

/// Frames kept for snapshots are scaled to `max_side` and a stream's ring holds at most
/// `ring_max_bytes` of them: 16 frames of 3000x2000 (18 MB each as RGB) take 8 MiB at most,
/// not 288 MB. (16 full-resolution 6000x6000 frames held 2.1 GB.)
#[test]
fn ring_is_bounded_in_bytes_and_frames_are_kept_small() {
    use gradwatch::snapshot::{SnapshotConfig, Snapshots};
    let dir = tempfile::tempdir().unwrap();
    let cfg = SnapshotConfig { ring_max_bytes: 8 << 20, max_side: 1024, ..SnapshotConfig::default() };
    let layout = GradLayout { width: 32, height: 32, nhwc: false, channels: 3 };
    let snaps = Snapshots::start(dir.path().to_path_buf(), &cfg, layout, None).unwrap();
    for seq in 0..16 {
        snaps.keep("cam", Kept { seq, score: 1.0, image: RgbImage::zeros(3000, 2000) });
        assert!(snaps.ring_bytes("cam") <= 8 << 20, "{} bytes after frame {seq}", snaps.ring_bytes("cam"));
    }
    let last = snaps.kept("cam", 15).expect("the newest frame is kept");
    assert_eq!((last.image.width, last.image.height), (1024, 683));
    assert!(snaps.kept("cam", 0).is_none(), "the oldest went first");
    assert!(snaps.kept("cam", 14).is_some());
    // The frame bound still holds with small frames.
    let mut r = FrameRing::bounded(4, u64::MAX);
    for seq in 0..10 {
        r.push(kept(seq, 1.0));
    }
    assert_eq!(r.seqs(), [6, 7, 8, 9]);
}
