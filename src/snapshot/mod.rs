//! Alert snapshots: the frame that raised an alert (and the alert's peak frame) as JPEG, with a
//! heat map of the input gradient over it as PNG, in the state directory; alert events carry
//! their paths (`snapshot`, `heatmap`; `docs/guide/alerts.md`).
//!
//! ```text
//!  inference ── over-threshold frame ──> FrameRing (per stream, last `ring_frames`, Arc'd)
//!  alert stage ── alert_start: triggering frame ─┐  (paths put into the event at once)
//!              └─ alert_end: peak frame ─────────┴> bounded job queue ──> snapshot thread:
//!                                                   input gradient, heat map, JPEG/PNG,
//!                                                   retention (max_files / max_bytes)
//! ```
//!
//! Nothing here slows the pipeline: inference only moves a frame it already owns into a ring
//! (and only frames over the threshold: only they can raise an alert or be its peak, so a
//! healthy camera costs no memory); the alert stage looks frames up by sequence number and
//! hands them over with `try_send` (a full queue skips the snapshot, never blocks). Input
//! gradients, encoding and file I/O run on the snapshot thread.
//!
//! The heat map's input gradient comes from a second, CPU-only, one-thread gradient session
//! compiled with `input_grad` ([`SessionGradient`]), run only on the frames that get a
//! snapshot. Adding `input_grad` to the daemon's own graph instead was measured side by side
//! (reference ResNet-18 at 32x32, one thread, alternating 1-s rounds, median of 21): +2 % per
//! frame at batch 1 but +22 % at batch 8 (the daemon's default `max_batch`; +7 % to +33 % over
//! four runs on a shared, busy 2-core machine), paid by every frame; a heat map is needed once
//! or twice per alert and costs one gradient-graph run (30-60 ms of one core here), plus 1 s to
//! compile its graph, at the first heat map ([`LazyGradient`]: until then the daemon holds no
//! second session).
//!
//! Files are named after the alert id (`<stream>-<first_seq>-<unix ms>`, characters other than
//! letters, digits, `-`, `_`, `.` replaced by `_`): `<id>-start.jpg`, `<id>-start-heatmap.png`,
//! and, when the peak is another frame, `<id>-peak.jpg`, `<id>-peak-heatmap.png`. They are
//! written to a hidden temporary and renamed, so a reader never sees half a file; the event
//! can arrive before the file does (by milliseconds).

mod config;
pub mod heatmap;
pub mod retention;
pub mod ring;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};

pub use config::SnapshotConfig;
pub use heatmap::{GradLayout, HeatMap};
pub use ring::{FrameRing, Kept};

use crate::alert::event::{Alert, Event, Scored};
use crate::frame::RgbImage;
use crate::ratelimit::LogLimiter;

/// Snapshot jobs waiting for the snapshot thread; more are skipped (logged).
const QUEUE: usize = 16;

/// Errors starting snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The directory cannot be created or written.
    #[error("snapshot directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The snapshot thread could not be spawned.
    #[error("cannot start the snapshot thread: {0}")]
    Thread(std::io::Error),
}

/// Computes a frame's input gradient (`d loss / d input`, laid out as [`GradLayout`]) on the
/// snapshot thread.
pub trait InputGradient: Send {
    /// The input gradient of one frame.
    fn input_grad(&mut self, image: &RgbImage) -> Result<Vec<f32>, String>;
}

/// [`InputGradient`] by a gradient session compiled with `input_grad`.
pub struct SessionGradient {
    /// Preprocessing.
    pub info: crate::model::ModelInfo,
    /// The session (its graph must have the `input_grad` output).
    pub session: crate::runtime::GradSession,
}

impl SessionGradient {
    /// Compiles `model` again with `input_grad` (same loss as the daemon's graph) and opens a
    /// session on the CPU with one thread: heat maps are rare, and a second TensorRT/CUDA
    /// engine would cost minutes of build and device memory for them.
    pub fn new(
        model: &crate::model::LoadedModel,
        loss: crate::grad::Loss,
        library: Option<&Path>,
    ) -> Result<Self, String> {
        let opts = crate::grad::CompileOptions { loss, input_grad: true, ..Default::default() };
        let compiled = crate::grad::compile(&model.model, &opts).map_err(|e| e.to_string())?;
        let rt = crate::runtime::RuntimeOptions {
            library: library.map(Path::to_path_buf),
            threads: 1,
            ..Default::default()
        };
        let session = crate::runtime::GradSession::new(&compiled, &rt).map_err(|e| e.to_string())?;
        Ok(SessionGradient { info: model.info.clone(), session })
    }
}

/// [`InputGradient`] that opens its [`SessionGradient`] on the first heat map, so a daemon
/// without alerts holds no second session (about 150 MB of RSS for the reference model,
/// `docs/results/memory.md`). It reads the model file again, which must still hash to the running
/// model's sha256 (else that heat map is skipped with the reason), and compiles it with
/// `input_grad`: about 1 s on the snapshot thread, once. A failure is retried on the next
/// heat map.
pub struct LazyGradient {
    path: PathBuf,
    sha256: String,
    loss: crate::grad::Loss,
    library: Option<PathBuf>,
    preprocessing: Option<crate::model::Preprocessing>,
    session: Option<SessionGradient>,
}

impl LazyGradient {
    /// For the model file `path` that hashed to `sha256` at start, compiled with `loss`.
    pub fn new(path: &Path, sha256: &str, loss: crate::grad::Loss, library: Option<&Path>) -> Self {
        LazyGradient {
            path: path.to_path_buf(),
            sha256: sha256.to_string(),
            loss,
            library: library.map(Path::to_path_buf),
            preprocessing: None,
            session: None,
        }
    }

    /// Preprocesses frames with `p` (the calibration's `[model.preprocessing]`) instead of the
    /// model's metadata, as the daemon's inference does.
    pub fn with_preprocessing(mut self, p: Option<crate::model::Preprocessing>) -> Self {
        self.preprocessing = p;
        self
    }

    fn open(&self) -> Result<SessionGradient, String> {
        let t0 = std::time::Instant::now();
        let opts = crate::grad::CompileOptions { loss: self.loss, input_grad: true, ..Default::default() };
        let mut m = crate::model::LoadedModel::load(&self.path, &opts).map_err(|e| e.to_string())?;
        m.use_preprocessing(self.preprocessing.as_ref()).map_err(|e| e.to_string())?;
        if m.info.sha256 != self.sha256 {
            return Err(format!(
                "{} changed since the start (sha256 {} instead of {}); restart the daemon for heat maps",
                self.path.display(),
                m.info.sha256,
                self.sha256
            ));
        }
        let rt = crate::runtime::RuntimeOptions { library: self.library.clone(), threads: 1, ..Default::default() };
        let bytes = crate::onnx::encode(&m.compiled.model);
        m.release_graphs();
        let session =
            crate::runtime::GradSession::from_bytes(&bytes, &m.compiled.input_name, &rt).map_err(|e| e.to_string())?;
        drop(bytes);
        crate::runtime::trim_heap();
        log::info!("snapshots: heat-map graph ready in {:.1} s", t0.elapsed().as_secs_f64());
        Ok(SessionGradient { info: m.info, session })
    }
}

impl InputGradient for LazyGradient {
    fn input_grad(&mut self, image: &RgbImage) -> Result<Vec<f32>, String> {
        if self.session.is_none() {
            self.session = Some(self.open()?);
        }
        match self.session.as_mut() {
            Some(s) => s.input_grad(image),
            None => Err("no heat-map session".into()),
        }
    }
}

impl InputGradient for SessionGradient {
    fn input_grad(&mut self, image: &RgbImage) -> Result<Vec<f32>, String> {
        let x = self.info.preprocess(std::iter::once(image));
        let out = self.session.run(x.view().into_dyn()).map_err(|e| e.to_string())?;
        let g = out.input_grad.ok_or("the graph has no input_grad output")?;
        Ok(g.iter().copied().collect())
    }
}

/// One snapshot to write.
struct Job {
    kept: Arc<Kept>,
    snapshot: PathBuf,
    heatmap: Option<PathBuf>,
}

/// The files of one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// The frame, JPEG.
    pub snapshot: PathBuf,
    /// The heat map over it, PNG (when an input gradient is available).
    pub heatmap: Option<PathBuf>,
}

/// The snapshot service: per-stream frame rings and the snapshot thread. Shared by inference
/// (which keeps frames) and the alert stage (which asks for snapshots).
pub struct Snapshots {
    dir: PathBuf,
    ring_frames: usize,
    ring_max_bytes: u64,
    max_side: usize,
    /// Whether heat maps are drawn (an input gradient source was given).
    heatmaps: bool,
    rings: Mutex<HashMap<String, FrameRing>>,
    jobs: Mutex<Option<Sender<Job>>>,
    worker: Mutex<Option<JoinHandle<()>>>,
    skipped: LogLimiter,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Snapshots {
    /// Snapshots as `cfg` says, or `None` (logged) when disabled, when there is no directory
    /// (no `dir`, no `STATE_DIRECTORY`) or when it is not writable: a daemon without
    /// snapshots is better than no daemon.
    pub fn from_config(
        cfg: &SnapshotConfig,
        layout: GradLayout,
        gradient: Option<Box<dyn InputGradient>>,
    ) -> Option<Arc<Snapshots>> {
        if !cfg.enabled {
            log::info!("snapshots: off ([snapshots] enabled = false)");
            return None;
        }
        let Some(dir) = cfg.directory() else {
            log::info!("snapshots: off (no [snapshots] dir and no STATE_DIRECTORY)");
            return None;
        };
        match Snapshots::start(dir, cfg, layout, gradient) {
            Ok(s) => {
                log::info!("snapshots: in {}", s.dir().display());
                Some(s)
            }
            Err(e) => {
                log::warn!("snapshots: off: {e}");
                None
            }
        }
    }

    /// Creates `dir` if needed, checks it is writable and starts the snapshot thread.
    pub fn start(
        dir: PathBuf,
        cfg: &SnapshotConfig,
        layout: GradLayout,
        gradient: Option<Box<dyn InputGradient>>,
    ) -> Result<Arc<Snapshots>, SnapshotError> {
        let dir_err = |source| SnapshotError::Dir { path: dir.clone(), source };
        std::fs::create_dir_all(&dir).map_err(dir_err)?;
        let probe = dir.join(format!(".gradwatch-write-test-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(dir_err)?;
        let _ = std::fs::remove_file(&probe);
        let (tx, rx) = bounded(QUEUE);
        let heatmaps = gradient.is_some();
        let w = Worker {
            dir: dir.clone(),
            max_files: cfg.max_files,
            max_bytes: cfg.max_bytes,
            jpeg_quality: cfg.jpeg_quality,
            min_side: cfg.min_side,
            min_free_bytes: cfg.min_free_bytes,
            layout,
            gradient,
        };
        let handle = std::thread::Builder::new()
            .name("snapshots".into())
            .spawn(move || w.run(rx))
            .map_err(SnapshotError::Thread)?;
        Ok(Arc::new(Snapshots {
            dir,
            ring_frames: cfg.ring_frames.max(1),
            ring_max_bytes: cfg.ring_max_bytes,
            max_side: cfg.max_side.max(1),
            heatmaps,
            rings: Mutex::new(HashMap::new()),
            jobs: Mutex::new(Some(tx)),
            worker: Mutex::new(Some(handle)),
            skipped: LogLimiter::new(Duration::from_secs(10)),
        }))
    }

    /// The directory the files go to.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps a frame of `stream` for a possible snapshot, scaled down to `max_side` (the
    /// oldest kept frame goes when the stream's ring is full, in frames or bytes). Called by
    /// inference for over-threshold frames.
    pub fn keep(&self, stream: &str, mut kept: Kept) {
        let (w, h) = (kept.image.width, kept.image.height);
        let long = w.max(h);
        if long > self.max_side {
            // Scaled before the lock: a huge frame costs the inference thread, not the ring.
            let scale = self.max_side as f64 / long as f64;
            let (nw, nh) = (((w as f64 * scale).round() as usize).max(1), ((h as f64 * scale).round() as usize).max(1));
            kept.image = kept.image.resize(nw, nh);
        }
        let mut rings = lock(&self.rings);
        match rings.get_mut(stream) {
            Some(r) => r.push(kept),
            None => {
                let mut r = FrameRing::bounded(self.ring_frames, self.ring_max_bytes);
                r.push(kept);
                rings.insert(stream.to_string(), r);
            }
        }
    }

    /// Bytes of pixels kept in `stream`'s ring.
    pub fn ring_bytes(&self, stream: &str) -> u64 {
        lock(&self.rings).get(stream).map_or(0, FrameRing::bytes)
    }

    /// The frame of `stream` with sequence number `seq`, if still kept.
    pub fn kept(&self, stream: &str, seq: u64) -> Option<Arc<Kept>> {
        self.get(stream, seq)
    }

    fn get(&self, stream: &str, seq: u64) -> Option<Arc<Kept>> {
        lock(&self.rings).get(stream).and_then(|r| r.get(seq))
    }

    fn peak(&self, stream: &str, first: u64, last: u64) -> Option<Arc<Kept>> {
        lock(&self.rings).get(stream).and_then(|r| r.peak(first, last))
    }

    /// The alert stage's view of one stream.
    pub fn stream(self: &Arc<Self>, name: &str) -> StreamSnaps {
        StreamSnaps { snaps: self.clone(), stream: name.to_string(), open: None }
    }

    /// Queues the files of `kept` as `<id>-<kind>.jpg` (and `<id>-<kind>-heatmap.png`);
    /// `None` when the queue is full or closed (the snapshot is skipped).
    fn submit(&self, id: &str, kind: &str, kept: Arc<Kept>) -> Option<Paths> {
        let base = format!("{}-{kind}", file_safe(id));
        let paths = Paths {
            snapshot: self.dir.join(format!("{base}.jpg")),
            heatmap: self.heatmaps.then(|| self.dir.join(format!("{base}-heatmap.png"))),
        };
        let job = Job { kept, snapshot: paths.snapshot.clone(), heatmap: paths.heatmap.clone() };
        let jobs = lock(&self.jobs);
        let tx = jobs.as_ref()?;
        match tx.try_send(job) {
            Ok(()) => Some(paths),
            Err(TrySendError::Full(_)) => {
                self.skipped.hit(|more| {
                    log::warn!("snapshots: queue full, snapshot {base} skipped ({more} more since the last message)")
                });
                None
            }
            Err(TrySendError::Disconnected(_)) => None,
        }
    }

    /// Stops taking snapshots; the thread writes what is queued and ends.
    pub fn close(&self) {
        lock(&self.jobs).take();
    }

    /// [`close`](Self::close)s and waits until `until` for the queued snapshots to be written;
    /// false when the thread did not finish in time (it is left behind).
    pub fn finish(&self, until: Instant) -> bool {
        self.close();
        let Some(h) = lock(&self.worker).take() else { return true };
        while !h.is_finished() {
            if Instant::now() >= until {
                log::warn!("snapshots: not every queued snapshot was written before the deadline");
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = h.join();
        true
    }
}

/// `id` with every character other than ASCII letters, digits, `-`, `_`, `.` replaced by `_`
/// (stream names are free text; file names must not climb directories).
pub fn file_safe(id: &str) -> String {
    let s: String =
        id.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    // A leading dot would hide the file (and `..` would be the parent directory).
    match s.strip_prefix('.') {
        Some(rest) => format!("_{rest}"),
        None => s,
    }
}

/// The alert being followed for its peak frame.
struct OpenAlert {
    id: String,
    /// The triggering frame's sequence number and files.
    start: Option<(u64, Paths)>,
    /// The highest-scoring frame so far, from the ring.
    peak: Option<Arc<Kept>>,
}

/// One stream's snapshots, as the alert stage drives them.
pub struct StreamSnaps {
    snaps: Arc<Snapshots>,
    stream: String,
    open: Option<OpenAlert>,
}

impl StreamSnaps {
    /// Every scored frame of the stream, before its events: follows the open alert's peak
    /// (the same frame the alert tracker reports: the first with the highest score).
    pub fn frame(&mut self, s: &Scored) {
        let Some(open) = self.open.as_mut() else { return };
        if s.score.is_nan() || open.peak.as_ref().is_some_and(|p| s.score <= p.score) {
            return;
        }
        if let Some(k) = self.snaps.get(&self.stream, s.seq) {
            open.peak = Some(k);
        }
    }

    /// Puts snapshot paths into this stream's alert events and queues their files:
    /// `alert_start` gets the triggering frame, `alert_end` the peak frame (the start's files
    /// when the peak is the triggering frame, or when the peak frame is no longer kept).
    pub fn events(&mut self, evs: &mut [Event]) {
        for ev in evs {
            match ev {
                Event::AlertStart { alert } => self.start(alert),
                Event::AlertEnd { alert, .. } => self.end(alert),
                _ => {}
            }
        }
    }

    fn start(&mut self, alert: &mut Alert) {
        let trigger = self.snaps.get(&self.stream, alert.last_seq);
        let peak = self.snaps.peak(&self.stream, alert.first_seq, alert.last_seq);
        let start = trigger.and_then(|k| {
            let seq = k.seq;
            self.snaps.submit(&alert.id, "start", k).map(|p| (seq, p))
        });
        if start.is_none() {
            log::debug!("snapshots: no snapshot for {} (frame {} not kept)", alert.id, alert.last_seq);
        }
        set_paths(alert, start.as_ref().map(|s| &s.1));
        self.open = Some(OpenAlert { id: alert.id.clone(), start, peak });
    }

    fn end(&mut self, alert: &mut Alert) {
        let Some(open) = self.open.take().filter(|o| o.id == alert.id) else { return };
        let paths = match (open.peak, open.start) {
            (Some(p), Some((seq, s))) if p.seq == seq => Some(s),
            (Some(p), start) => self.snaps.submit(&alert.id, "peak", p).or(start.map(|s| s.1)),
            (None, start) => start.map(|s| s.1),
        };
        set_paths(alert, paths.as_ref());
    }
}

fn set_paths(alert: &mut Alert, p: Option<&Paths>) {
    alert.snapshot = p.map(|p| p.snapshot.display().to_string());
    alert.heatmap = p.and_then(|p| p.heatmap.as_ref()).map(|h| h.display().to_string());
}

/// The snapshot thread.
struct Worker {
    dir: PathBuf,
    max_files: usize,
    max_bytes: u64,
    jpeg_quality: u8,
    min_side: usize,
    min_free_bytes: u64,
    layout: GradLayout,
    gradient: Option<Box<dyn InputGradient>>,
}

impl Worker {
    fn run(mut self, rx: Receiver<Job>) {
        let errors = LogLimiter::new(Duration::from_secs(10));
        let low = LogLimiter::new(Duration::from_secs(60));
        for job in rx {
            if self.min_free_bytes > 0 {
                if let Some(free) = crate::base::path::free_bytes(&self.dir).filter(|f| *f < self.min_free_bytes) {
                    let (name, floor) = (job.snapshot.display().to_string(), self.min_free_bytes);
                    low.hit(|more| {
                        log::warn!(
                            "snapshots: {name} not written: {free} bytes free, below min_free_bytes = {floor} \
                             (snapshots give way to the spool and the file sinks; {more} more skipped since)"
                        )
                    });
                    continue;
                }
            }
            // A bug in an encoder must not end snapshots for the rest of the daemon's life.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.write(&job)))
                .unwrap_or_else(|_| Err("panicked".into()));
            if let Err(e) = r {
                let name = job.snapshot.display().to_string();
                errors.hit(|more| log::warn!("snapshots: {name}: {e} ({more} more errors since)"));
            }
            match retention::enforce(&self.dir, self.max_files, self.max_bytes) {
                Ok((removed, _)) if !removed.is_empty() => {
                    log::debug!("snapshots: {} old file(s) deleted (max_files/max_bytes)", removed.len())
                }
                Ok(_) => {}
                Err(e) => errors.hit(|more| log::warn!("snapshots: retention: {e} ({more} more errors since)")),
            }
        }
    }

    fn write(&mut self, job: &Job) -> Result<(), String> {
        let k = &job.kept;
        let grad = match (self.gradient.as_mut(), &job.heatmap) {
            (Some(src), Some(_)) => match src.input_grad(&k.image) {
                Ok(g) => Some(g),
                Err(e) => {
                    log::warn!("snapshots: no heat map for {}: {e}", job.snapshot.display());
                    None
                }
            },
            _ => None,
        };
        let r = heatmap::render(&k.image, grad.as_deref(), &self.layout, self.min_side);
        write_atomic(&job.snapshot, |w| encode_jpeg(w, &r.frame, self.jpeg_quality))?;
        if let (Some(path), Some(img)) = (&job.heatmap, &r.heatmap) {
            write_atomic(path, |w| encode_png(w, img))?;
        }
        Ok(())
    }
}

/// Writes through a hidden temporary in the same directory and renames it into place.
pub fn write_atomic(
    path: &Path,
    f: impl FnOnce(&mut std::io::BufWriter<std::fs::File>) -> Result<(), String>,
) -> Result<(), String> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    let run = || -> Result<(), String> {
        let file = std::fs::File::create(&tmp).map_err(|e| e.to_string())?;
        let mut w = std::io::BufWriter::new(file);
        f(&mut w)?;
        let file = w.into_inner().map_err(|e| e.to_string())?;
        file.sync_data().map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, path).map_err(|e| e.to_string())
    };
    let r = run();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

fn dims(img: &RgbImage) -> Result<(u32, u32), String> {
    match (u32::try_from(img.width), u32::try_from(img.height)) {
        (Ok(w), Ok(h)) if img.data.len() == img.width * img.height * 3 => Ok((w, h)),
        _ => Err(format!("bad image {}x{} with {} bytes", img.width, img.height, img.data.len())),
    }
}

/// Encodes RGB8 as JPEG.
pub fn encode_jpeg(w: &mut impl std::io::Write, img: &RgbImage, quality: u8) -> Result<(), String> {
    let (width, height) = dims(img)?;
    image::codecs::jpeg::JpegEncoder::new_with_quality(w, quality.clamp(1, 100))
        .encode(&img.data, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| e.to_string())
}

/// Encodes RGB8 as PNG.
pub fn encode_png(w: &mut impl std::io::Write, img: &RgbImage) -> Result<(), String> {
    use image::ImageEncoder;
    let (width, height) = dims(img)?;
    image::codecs::png::PngEncoder::new(w)
        .write_image(&img.data, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::file_safe;

    #[test]
    fn file_names_are_safe() {
        assert_eq!(file_safe("cam0-12-1767225600500"), "cam0-12-1767225600500");
        assert_eq!(file_safe("../etc/pass wd-1-2"), "_._etc_pass_wd-1-2");
        assert_eq!(file_safe("gate/ä"), "gate__");
    }
}
