//! Per-camera baselines in the real daemon (`gradwatch run`, the tiny CNN of `daemon.rs`,
//! `[alert] policy = "cusum"` with 0.5 s blocks, replays with `realtime = false` at 10 fps of
//! frame time): a stream learns its baseline, saves it in `state_dir` as
//! `baseline-<stream>-<model sha256>.toml` and shows it in the metrics; a restart loads it
//! instead of learning again; a SIGHUP that changes `[alert]` keeps the learned baseline and
//! the learning progress; an alarmed period is neither learned nor adapted from; a file of
//! another model is not used; with `image = true` the stream also learns its whole-frame
//! picture, saves it as `image-<stream>.toml`, and its alerts say which evidence raised them.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gradwatch::alert::Baseline;
use gradwatch::detector::Calibration;
use serde_json::Value;

use crate::common::daemon::{assets, events, head, kind, write, Daemon};
use crate::delivery::Observe;

/// Frames per block: `block_ms = 500` at 10 fps of frame time.
const FRAMES_PER_BLOCK: usize = 5;
/// `learn_minutes` of 48 blocks: the fixture's 48 images in 5-frame blocks repeat every 48
/// blocks, so a 48-block baseline of a clean replay holds every clean block statistic.
const LEARN_48: f64 = 0.4;
const LEARNED: &str = "gradwatch_baseline_learned{stream=\"cam\"} ";
const BLOCKS: &str = "gradwatch_baseline_blocks{stream=\"cam\"} ";
const SCORED: &str = "gradwatch_frames_scored_total{stream=\"cam\"} ";

fn model_sha() -> String {
    Calibration::load(&assets().calibration).unwrap().model.sha256
}

/// The stream's learning and replay, as the variable parts of a config.
struct Setup<'a> {
    /// `[[stream]] baseline = { learn_minutes, quarantine_s = 2, adapt_hours }`.
    learn_minutes: f64,
    adapt_hours: f64,
    /// The replay's schedule windows; `repeat` plays them forever.
    schedule: &'a str,
    repeat: bool,
    /// `[alert] false_alarms_per_day` (a change is what a SIGHUP applies).
    false_alarms_per_day: f64,
    /// The metrics endpoint on a free port.
    metrics: bool,
    /// `baseline = { image = true }`: fuse the whole-frame image evidence.
    image: bool,
}

impl Default for Setup<'_> {
    fn default() -> Self {
        Setup {
            learn_minutes: LEARN_48,
            adapt_hours: 0.0,
            schedule: "{ frames = 48 }",
            repeat: true,
            false_alarms_per_day: 2.4,
            metrics: true,
            image: false,
        }
    }
}

impl Setup<'_> {
    /// Writes the config into `dir` (the state directory is `dir/state`).
    fn write(&self, dir: &Path) -> PathBuf {
        let alert = format!(
            "policy = \"cusum\"\nblock_ms = 500\nfalse_alarms_per_day = {}\nstate_dir = \"{}\"\n",
            self.false_alarms_per_day,
            dir.join("state").display()
        );
        let mut h = head(&alert);
        if self.metrics {
            h = h.replace("[metrics]\nenabled = false", "[metrics]\nbind = \"127.0.0.1:0\"");
        }
        let cfg = format!(
            "{h}\n[[stream]]\nname = \"cam\"\nkind = \"replay\"\npath = \"{}\"\nfps = 10\nrealtime = false\nrepeat = {}\nqueue = {{ size = 8, policy = \"block\" }}\nbaseline = {{ learn_minutes = {}, quarantine_s = 2, adapt_hours = {}, image = {} }}\nschedule = [{}]\n",
            assets().frames.display(),
            self.repeat,
            self.learn_minutes,
            self.adapt_hours,
            self.image,
            self.schedule
        );
        write(dir, "baseline.toml", &cfg)
    }
}

/// The baseline file of stream `cam` for the test model.
fn baseline_file(dir: &Path) -> PathBuf {
    dir.join("state").join(format!("baseline-cam-{}.toml", model_sha()))
}

fn load(dir: &Path) -> Baseline {
    Baseline::load(&dir.join("state"), "cam", &model_sha()).unwrap().expect("a saved baseline")
}

/// Polls `series` until `ok` holds for its value (panics after 30 s); returns the value.
fn wait_metric(d: &Daemon, series: &str, ok: impl Fn(f64) -> bool) -> f64 {
    let t0 = Instant::now();
    loop {
        let v = d.metric(series);
        if ok(v) {
            return v;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{series}{v} never changed as expected:\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until at least `n` more frames were scored.
fn wait_frames(d: &Daemon, n: f64) {
    let from = d.metric(SCORED);
    wait_metric(d, SCORED, |v| v >= from + n);
}

/// A run of a replay that ends by itself: its stdout events and stderr.
fn run_to_end(cfg: &Path) -> (Vec<Value>, String) {
    let (code, out, err) = Daemon::run(&["run", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 0, "stderr:\n{err}");
    (events(&out), err)
}

/// Starts the daemon on `cfg` (a config with the metrics endpoint) and waits for its address.
fn start(cfg: &Path) -> Daemon {
    let mut d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    d.wait_for("the metrics address", Duration::from_secs(30), |d| d.stderr().contains("metrics on http://"));
    d
}

fn terminate(mut d: Daemon) -> String {
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(15)), 0, "{}", d.stderr());
    d.stderr()
}

/// Items 1-3 of a stream's baseline: learned from clean frames, saved under the stream's and
/// the model's name and shown in the metrics; after a restart loaded, not learned again; a
/// SIGHUP that changes the policy keeps it; the file is untouched (no adaptation configured).
#[test]
fn learned_baseline_is_saved_shown_and_reused_after_restart_and_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup::default();
    let cfg = setup.write(dir.path());
    let d = start(&cfg);
    wait_metric(&d, LEARNED, |v| v == 1.0);
    let path = baseline_file(dir.path());
    assert!(path.exists(), "{} missing; state dir has {:?}", path.display(), std::fs::read_dir(path.parent().unwrap()));
    let b = load(dir.path());
    assert_eq!((b.stream.as_str(), b.learned_blocks, b.adapted_blocks, b.block_ms), ("cam", 48, 0, 500));
    assert_eq!(b.sample.len(), 48);
    assert_eq!(d.metric(BLOCKS), 48.0);
    let median = d.metric("gradwatch_baseline_median_score{stream=\"cam\"} ");
    assert!((median - f64::from(b.median())).abs() < 1e-3, "{median} vs {}", b.median());
    let err = terminate(d);
    assert_eq!(err.matches("baseline saved to").count(), 1, "{err}");
    assert!(!err.contains("learned baseline loaded"), "{err}");
    let saved = std::fs::read(&path).unwrap();

    // Restart: loaded from the state directory, in force from the first frame.
    let mut d = start(&cfg);
    wait_metric(&d, LEARNED, |v| v == 1.0);
    assert_eq!(d.metric(BLOCKS), 48.0);
    // The line is logged before the first frame, but the test reads stderr on another thread:
    // wait for it rather than race the metric.
    d.wait_for("the loaded baseline's log line", Duration::from_secs(10), |d| {
        d.stderr().contains("stream cam: learned baseline loaded from")
    });
    // Far more frames than learning takes (52 blocks with the quarantine): nothing is learned
    // again (a new baseline would be saved at once).
    wait_frames(&d, 400.0);
    assert!(!d.stderr().contains("baseline saved to"), "{}", d.stderr());

    // SIGHUP with a changed policy: a new tracker, the same learned baseline.
    Setup { false_alarms_per_day: 1.0, ..Setup::default() }.write(dir.path());
    d.signal("HUP");
    d.wait_for("the new policy", Duration::from_secs(20), |d| d.stderr().contains("new alert policy in force"));
    let line = d.stderr().lines().find(|l| l.contains("new alert policy in force")).unwrap().to_string();
    assert!(line.contains("learned baseline kept"), "{line}");
    wait_frames(&d, 400.0);
    assert_eq!(d.metric(LEARNED), 1.0, "{}", d.stderr());
    assert_eq!(d.metric(BLOCKS), 48.0);
    let err = terminate(d);
    assert!(!err.contains("baseline saved to"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), saved, "the baseline file changed without adaptation");
}

/// A SIGHUP that changes the policy while the stream is still learning keeps what it has
/// learned (it used to start learning from nothing again: minutes of a camera's frames lost
/// with every policy reload).
#[test]
fn sighup_while_learning_keeps_the_learning_progress() {
    let dir = tempfile::tempdir().unwrap();
    // 7200 blocks to learn: far more than this test plays.
    let setup = Setup { learn_minutes: 60.0, ..Setup::default() };
    let cfg = setup.write(dir.path());
    let mut d = start(&cfg);
    let before = wait_metric(&d, BLOCKS, |v| v >= 500.0);
    Setup { false_alarms_per_day: 1.0, ..setup }.write(dir.path());
    d.signal("HUP");
    d.wait_for("the new policy", Duration::from_secs(20), |d| d.stderr().contains("new alert policy in force"));
    // A few blocks after the swap (a fresh learner would hold none yet: 4 wait in quarantine).
    wait_frames(&d, (3 * FRAMES_PER_BLOCK) as f64);
    let after = d.metric(BLOCKS);
    assert!(after >= before, "learning went from {before} blocks to {after} over the reload:\n{}", d.stderr());
    assert_eq!(d.metric(LEARNED), 0.0);
    let line = d.stderr().lines().find(|l| l.contains("new alert policy in force")).unwrap().to_string();
    assert!(line.contains("learning continues"), "{line}");
    terminate(d);
}

/// Item 4: a noisy period (an alert under the calibration's fallback) in the middle of the
/// learning is not learned: every block of the baseline is one of the clean replay's block
/// statistics (the 48 a clean run learns). After a restart with fast adaptation, a noisy run
/// (alert open) adapts nothing and leaves the file as it was, while a clean run does adapt.
#[test]
fn alarmed_periods_are_neither_learned_nor_adapted_from() {
    let clean_dir = tempfile::tempdir().unwrap();
    let clean = Setup { schedule: "{ frames = 270 }", repeat: false, metrics: false, ..Setup::default() };
    let (ev, err) = run_to_end(&clean.write(clean_dir.path()));
    assert!(ev.iter().all(|e| kind(e) != "alert_start"), "clean frames alarmed:\n{ev:?}\n{err}");
    let reference = load(clean_dir.path()).sample;

    let dir = tempfile::tempdir().unwrap();
    let noisy = Setup {
        schedule: "{ frames = 100 }, { frames = 50, corruption = \"noise\", level = 5 }, { frames = 300 }",
        ..clean
    };
    let (ev, err) = run_to_end(&noisy.write(dir.path()));
    let starts: Vec<&Value> = ev.iter().filter(|e| kind(e) == "alert_start").collect();
    assert_eq!(starts.len(), 1, "{ev:?}\n{err}");
    assert_eq!(starts[0]["tag"], "noise:5");
    assert_eq!(starts[0]["baseline"], "calibration", "{}", starts[0]);
    assert!(ev.iter().any(|e| kind(e) == "alert_end" && e["reason"] == "cleared"), "{ev:?}");
    let b = load(dir.path());
    assert_eq!(b.learned_blocks, 48);
    let clean_value = |v: f32| reference.iter().any(|r| (r - v).abs() <= 1e-4 * r.abs().max(1.0));
    let foreign: Vec<f32> = b.sample.iter().copied().filter(|&v| !clean_value(v)).collect();
    assert!(foreign.is_empty(), "learned from the alarmed period: {foreign:?}\nclean blocks: {reference:?}");
    let saved = std::fs::read(baseline_file(dir.path())).unwrap();

    // Adaptation as fast as it goes (every accepted block replaces a sample member).
    let noisy_only =
        Setup { schedule: "{ frames = 100, corruption = \"noise\", level = 5 }", adapt_hours: 0.001, ..noisy };
    let (ev, err) = run_to_end(&noisy_only.write(dir.path()));
    assert!(err.contains("learned baseline loaded"), "{err}");
    let start = ev.iter().find(|e| kind(e) == "alert_start").unwrap_or_else(|| panic!("no alert:\n{ev:?}"));
    assert_eq!(start["baseline"], "learned");
    assert_eq!(std::fs::read(baseline_file(dir.path())).unwrap(), saved, "adapted during the alert");
    let clean_again = Setup { schedule: "{ frames = 100 }", ..noisy_only };
    run_to_end(&clean_again.write(dir.path()));
    let adapted = load(dir.path());
    assert!(adapted.adapted_blocks > 0, "a clean run did not adapt: the check above proves nothing");
    assert_eq!(adapted.learned_blocks, 48);
}

/// Item 5: a baseline of another model is not used: neither one whose file is named for
/// another sha256 nor one that is named for this model but says another inside. The stream
/// learns its own and writes it under its own name; the other model's file stays as it was.
#[test]
fn baseline_of_another_model_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let other = "ab".repeat(32);
    let blocks: Vec<f32> = (0..48).map(|i| 1000.0 + i as f32).collect();
    let foreign = Baseline::from_blocks("cam", &other, 500, &blocks).unwrap();
    let foreign_path = foreign.save(&state).unwrap();
    assert_eq!(foreign_path.file_name().unwrap().to_str().unwrap(), format!("baseline-cam-{other}.toml"));
    let foreign_text = std::fs::read(&foreign_path).unwrap();
    // This model's name, the other model inside.
    std::fs::copy(&foreign_path, baseline_file(dir.path())).unwrap();

    let setup = Setup { schedule: "{ frames = 270 }", repeat: false, metrics: false, ..Setup::default() };
    let (_ev, err) = run_to_end(&setup.write(dir.path()));
    assert!(!err.contains("learned baseline loaded"), "{err}");
    let refused = err.lines().find(|l| l.contains("saved baseline not used")).unwrap_or_else(|| panic!("{err}"));
    assert!(refused.contains(&other), "{refused}");
    assert!(err.contains("baseline saved to"), "the stream did not learn its own:\n{err}");
    let own = load(dir.path());
    assert_eq!(own.model_sha256, model_sha());
    assert!(own.sample.iter().all(|&v| v < 1000.0), "{:?}", own.sample);
    assert_eq!(std::fs::read(&foreign_path).unwrap(), foreign_text);
}

/// A saved baseline whose `clamp` has min > max (adaptation's `f32::clamp` panicked on it,
/// taking the alert stage down at every start) and one of 17 MiB (read whole: 38 s and
/// 4 GB for 1 GiB, then logged whole) are refused with a short reason; the stream learns
/// its own and the daemon runs to the end.
#[test]
fn broken_saved_baselines_are_refused_without_a_panic() {
    let blocks: Vec<f32> = (0..48).map(|i| 0.001 * i as f32).collect();
    let mut bad = Baseline::from_blocks("cam", &model_sha(), 500, &blocks).unwrap();
    bad.clamp = [5.0, 1.0];
    let huge = "# padding\n".repeat((17 << 20) / 10) + &toml::to_string(&bad).unwrap();
    for (what, text) in [("clamp", toml::to_string(&bad).unwrap()), ("bytes", huge)] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(baseline_file(dir.path()), text).unwrap();
        let setup = Setup {
            schedule: "{ frames = 270 }",
            repeat: false,
            metrics: false,
            adapt_hours: 0.001,
            ..Setup::default()
        };
        let (_ev, err) = run_to_end(&setup.write(dir.path()));
        assert!(!err.contains("panicked"), "{err}");
        let refused = err.lines().find(|l| l.contains("saved baseline not used")).unwrap_or_else(|| panic!("{err}"));
        assert!(refused.contains(what) && refused.len() < 600, "{refused}");
        assert!(err.contains("baseline saved to"), "the stream did not learn its own:\n{err}");
    }
}

/// Streams whose names the old file naming merged (`前门`/`后门` both became
/// `baseline-__-<sha>.toml`, `cam.1`/`cam 1` both `cam_1`) keep files of their own, in a real
/// state directory.
#[test]
fn baselines_of_similar_names_do_not_collide() {
    let dir = tempfile::tempdir().unwrap();
    let sha = model_sha();
    let names = ["前门", "后门", "cam.1", "cam 1", "cam_1"];
    for (i, n) in names.iter().enumerate() {
        let blocks: Vec<f32> = (0..48).map(|j| (i * 100 + j) as f32).collect();
        Baseline::from_blocks(n, &sha, 500, &blocks).unwrap().save(dir.path()).unwrap();
    }
    for (i, n) in names.iter().enumerate() {
        let b = Baseline::load(dir.path(), n, &sha).unwrap().unwrap_or_else(|| panic!("{n}: no file"));
        assert_eq!((b.stream.as_str(), b.sample[0]), (*n, (i * 100) as f32));
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), names.len());
}

/// Whole-frame image evidence in the real process: with `baseline = { image = true }` the
/// stream learns its picture over two periods of `learn_minutes` (2 x 24 samples, one per
/// second of frame time), saves it as `image-cam.toml` and shows it in the metrics; its alerts
/// carry which evidence raised them, the image CUSUM's statistic and the stream's whole stated
/// rate; a restart loads the picture instead of learning it again.
#[test]
fn image_evidence_is_learned_saved_and_fused() {
    let dir = tempfile::tempdir().unwrap();
    let setup = Setup {
        image: true,
        repeat: false,
        schedule: "{ frames = 600 }, { frames = 300, corruption = \"noise\", level = 5 }, { frames = 300 }",
        ..Setup::default()
    };
    let cfg = setup.write(dir.path());
    let (evs, err) = run_to_end(&cfg);
    assert!(err.contains("image baseline saved"), "{err}");
    let saved = gradwatch::alert::ImageBaseline::load(&dir.path().join("state"), "cam").unwrap().expect("saved");
    assert_eq!(saved.baseline.learned_blocks, 24);
    let starts: Vec<&Value> = evs.iter().filter(|e| kind(e) == "alert_start").collect();
    assert!(!starts.is_empty(), "no alert on the noise: {evs:?}\n{err}");
    for s in &starts {
        let by = s["evidence"].as_str().unwrap_or_default();
        assert!(by == "model" || by == "image", "{s}");
        assert_eq!(s["false_alarms_per_day"].as_f64(), Some(2.4), "{s}");
    }
    // The noise begins at frame 600, after the picture was learned (frame 480).
    let noisy =
        starts.iter().find(|s| s["first_seq"].as_u64().is_some_and(|q| q >= 590)).expect("an alert on the noise");
    assert!(noisy["image_statistic_threshold"].as_f64().is_some(), "{noisy}");
    // The first noisy second's sample reached the image CUSUM before the model's alarm.
    assert!(noisy["image_statistic"].as_f64().is_some_and(|s| s > 0.0), "{noisy}");
    // A restart loads the picture: in force from the first second, nothing learned again.
    let (evs, err) = run_to_end(&cfg);
    assert!(err.contains("learned image baseline loaded") && !err.contains("image baseline saved"), "{err}");
    let first = evs.iter().find(|e| kind(e) == "alert_start").expect("an alert on the noise");
    assert!(first["image_statistic_threshold"].as_f64().is_some(), "{first}");
}
