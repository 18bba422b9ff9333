//! The daemon test harness, used by every test that starts the daemon: the real `gradwatch`
//! binary ([`Daemon`]) on a tiny CNN built in code with a one-class calibration fitted on the
//! fixture's clean frames ([`assets`]), config snippets ([`head`], [`endless`]) and event
//! readers.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use super::Net;
use gradwatch::detector::calibration::{CalibModel, DataSummary, FitSummary, FORMAT};
use gradwatch::detector::{Calibration, DetectorKind, Gaussian, LogStandardizer};
use gradwatch::frame::RgbImage;
use gradwatch::model::LoadedModel;
use gradwatch::onnx::attr;
use gradwatch::runtime::{GradSession, RuntimeOptions};
use serde_json::Value;

const FIXTURE: &str = "tests/fixtures/daemon/frames-48x32x32.npy";

/// A model + calibration written once per test process into a temp dir.
pub(crate) struct Assets {
    _dir: tempfile::TempDir,
    pub(crate) model: PathBuf,
    pub(crate) calibration: PathBuf,
    pub(crate) frames: PathBuf,
}

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE)
}

pub(crate) fn images() -> Vec<RgbImage> {
    gradwatch::data::load_npy_images(&fixture()).expect("fixture")
}

/// A fixed Laplacian filter bank (so noise shows), a trained-looking strided convolution,
/// global average pooling, a linear head: 4 gradient features.
fn tiny_cnn() -> gradwatch::onnx::ModelProto {
    let mut n = Net::new(7);
    let pads = || vec![attr::ints("pads", &[1, 1, 1, 1]), attr::ints("strides", &[2, 2])];
    // Output channel c: +-Laplacian of input channel c % 3 (both signs survive the ReLU).
    let mut lap = vec![0f32; 6 * 3 * 9];
    for c in 0..6 {
        let sign = if c < 3 { 1.0 } else { -1.0 };
        let base = (c * 3 + c % 3) * 9;
        for (k, w) in [(1, -1.0), (3, -1.0), (4, 4.0), (5, -1.0), (7, -1.0)] {
            lap[base + k] = sign * w;
        }
    }
    let w1 = n.constant(&[6, 3, 3, 3], &lap);
    let c1 = n.op("Conv", &["x", &w1], vec![attr::ints("pads", &[1, 1, 1, 1])]);
    let r1 = n.op("Relu", &[&c1], vec![]);
    let c2 = n.conv(&r1, 6, 8, 3, true, pads());
    let r2 = n.op("Relu", &[&c2], vec![]);
    let g = n.op("GlobalAveragePool", &[&r2], vec![]);
    let out = n.head(&g, 8, 5);
    n.model(&[3, 32, 32], &out)
}

pub(crate) fn assets() -> &'static Assets {
    static A: OnceLock<Assets> = OnceLock::new();
    A.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("tiny.onnx");
        gradwatch::onnx::save(&tiny_cnn(), &model).unwrap();
        let loaded = LoadedModel::load(&model, &Default::default()).unwrap();
        gradwatch::runtime::init(None).expect("ONNX Runtime: run `make ort` or set ORT_DYLIB_PATH");
        let mut s = GradSession::new(&loaded.compiled, &RuntimeOptions { threads: 1, ..Default::default() }).unwrap();
        let imgs = images();
        let x = loaded.info.preprocess(imgs.iter());
        let feats = s.run(x.view().into_dyn()).unwrap().features;
        let normalize = LogStandardizer::fit(&feats).unwrap();
        let z = normalize.transform(&feats).unwrap();
        let gaussian = Gaussian::fit(&z, &vec![0; z.nrows()], 1, 1e-3).unwrap();
        let mut scores = gaussian.score(&z);
        scores.sort_by(f32::total_cmp);
        // The 99th percentile of 48 in-sample scores is their maximum.
        let threshold = scores[((scores.len() as f64 * 0.99).ceil() as usize - 1).min(scores.len() - 1)];
        let calib = Calibration {
            format: FORMAT,
            model: CalibModel {
                name: loaded.info.name.clone(),
                sha256: loaded.info.sha256.clone(),
                loss: "bce-logits".into(),
                features: loaded.compiled.features.clone(),
                preset: "full".into(),
                preprocessing: None,
            },
            threshold,
            target_false_alarm: 0.01,
            clean_tail_scale: None,
            detector: DetectorKind::OneClass { normalize, gaussian },
            trust: None,
            fitted_on: FitSummary {
                familiar: DataSummary { name: FIXTURE.into(), count: imgs.len() },
                unfamiliar: vec![],
                validation_false_alarm_rate: 0.0,
                validation_true_positive_rate: 0.0,
                validation_auroc: 0.0,
                command: "tests/it/common/daemon.rs".into(),
            },
        };
        let calibration = dir.path().join("tiny.calib.toml");
        calib.save(&calibration).unwrap();
        Assets { model, calibration, frames: fixture(), _dir: dir }
    })
}

pub(crate) fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_gradwatch")
}

/// The common head of a test config: model, calibration, one-thread CPU runtime, no metrics
/// endpoint, a quick debounce policy.
pub(crate) fn head(extra_alert: &str) -> String {
    let a = assets();
    format!(
        r#"[model]
path = "{}"
calibration = "{}"

[runtime]
threads = 1

[pipeline]
max_batch = 4
max_wait_ms = 5
shutdown_deadline_s = 3

[metrics]
enabled = false

[alert]
window = 10
raise = 6
clear = 2
min_duration_ms = 0
update_interval_ms = 0
{extra_alert}
"#,
        a.model.display(),
        a.calibration.display()
    )
}

pub(crate) fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// A running daemon whose stdout and stderr are collected.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) out: Arc<Mutex<String>>,
    pub(crate) err: Arc<Mutex<String>>,
}

impl Daemon {
    pub(crate) fn start(args: &[&str]) -> Daemon {
        let mut cmd = Command::new(bin());
        cmd.args(args);
        Daemon::spawn(cmd)
    }

    /// Starts `cmd` (the binary and its arguments, perhaps with a `pre_exec`) the way
    /// [`Daemon::start`] does.
    pub(crate) fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |r: Box<dyn std::io::Read + Send>| {
            let buf = Arc::new(Mutex::new(String::new()));
            let b = buf.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(r).lines().map_while(Result::ok) {
                    let mut g = b.lock().unwrap();
                    g.push_str(&line);
                    g.push('\n');
                }
            });
            buf
        };
        let out = collect(Box::new(child.stdout.take().unwrap()));
        let err = collect(Box::new(child.stderr.take().unwrap()));
        Daemon { child, out, err }
    }

    pub(crate) fn run(args: &[&str]) -> (i32, String, String) {
        let mut d = Daemon::start(args);
        let code = d.wait(Duration::from_secs(60));
        (code, d.stdout(), d.stderr())
    }

    pub(crate) fn stdout(&self) -> String {
        self.out.lock().unwrap().clone()
    }

    pub(crate) fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    pub(crate) fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success(), "kill -{sig}");
    }

    pub(crate) fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Waits for the exit code (killing the daemon after `limit`).
    pub(crate) fn wait(&mut self, limit: Duration) -> i32 {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                // Let the reader threads take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                return s.code().unwrap_or(-1);
            }
            if t0.elapsed() > limit {
                let _ = self.child.kill();
                panic!("daemon did not exit within {limit:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `cond` holds (panics after `limit`).
    /// The metrics endpoint's address, from the daemon's "metrics on http://ADDR/" log line
    /// (waits up to 30 s for it).
    pub(crate) fn metrics_addr(&mut self) -> std::net::SocketAddr {
        self.wait_for("the metrics address", Duration::from_secs(30), |d| d.stderr().contains("metrics on http://"));
        let err = self.stderr();
        err.split("metrics on http://").nth(1).unwrap().split('/').next().unwrap().parse().unwrap()
    }

    pub(crate) fn wait_for(&mut self, what: &str, limit: Duration, mut cond: impl FnMut(&Daemon) -> bool) {
        let t0 = Instant::now();
        while !cond(self) {
            if t0.elapsed() > limit || !self.running() {
                let _ = self.child.kill();
                panic!("waiting for {what}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn events(text: &str) -> Vec<Value> {
    text.lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).unwrap()).collect()
}

pub(crate) fn kind(e: &Value) -> &str {
    e["event"].as_str().unwrap()
}

/// A replay config that plays noisy frames forever at 50 fps into a file sink.
pub(crate) fn endless(sink: &Path, tag_noise: bool, extra_model: &str) -> String {
    let window = if tag_noise { r#"{ frames = 20, corruption = "noise", level = 5 }"# } else { "{ frames = 20 }" };
    let h = head("").replacen("[model]\n", &format!("[model]\n{extra_model}"), 1);
    format!(
        "{h}\n[[stream]]\nname = \"cam\"\nkind = \"replay\"\npath = \"{}\"\nfps = 50\nrepeat = true\nschedule = [{window}]\n\n[[sink]]\nkind = \"file\"\npath = \"{}\"\nfsync = false\n",
        assets().frames.display(),
        sink.display()
    )
}

pub(crate) fn file_events(p: &Path) -> Vec<Value> {
    events(&std::fs::read_to_string(p).unwrap_or_default())
}
