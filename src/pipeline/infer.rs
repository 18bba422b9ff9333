//! Inference: gathers frames across streams into batches, runs the gradient graph, scores the
//! features with the calibration and hands [`Scored`] frames to the alert stage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Select, Sender, TryRecvError};
use ndarray::Array2;

use super::capture::Queued;
use super::{Env, Heartbeat, Shared};
use crate::alert::Scored;
use crate::detector::FrameInputs;
use crate::frame::RgbImage;
use crate::model::{top_class, ModelInfo};
use crate::ratelimit::LogLimiter;
use crate::runtime::GradSession;

/// How long the idle loop waits for a frame before beating its heartbeat again.
const IDLE_TICK: Duration = Duration::from_millis(200);

/// Consecutive failed batches after which inference gives up (and the service exits non-zero,
/// so systemd restarts it): a transient error skips a batch, a broken session must not spin.
const MAX_CONSECUTIVE_FAILURES: u32 = 20;

/// What a classifier gives for a batch.
#[derive(Clone, Debug)]
pub struct ClassifierOutput {
    /// `[N, C]` logits.
    pub logits: Array2<f32>,
    /// `[N, P]` gradient features.
    pub features: Array2<f32>,
}

/// A model that turns images into logits and gradient features (the real one is
/// [`GradClassifier`]; tests use cheap stand-ins).
pub trait Classifier: Send {
    /// Model name (carried in alerts).
    fn model_name(&self) -> &str;
    /// Model file sha256 (carried in alerts).
    fn model_sha256(&self) -> &str;
    /// Class names, one per logit.
    fn class_names(&self) -> &[String];
    /// Runs a batch.
    fn run(&mut self, images: &[&RgbImage]) -> Result<ClassifierOutput, String>;
    /// The model's input width and height, at which frames are measured for the detectors
    /// that read image-quality measures (`None`: measured as they come).
    fn input_size(&self) -> Option<(usize, usize)> {
        None
    }
}

/// The real classifier: the model's preprocessing and an ONNX Runtime session over its
/// compiled gradient graph.
pub struct GradClassifier {
    /// Preprocessing, names, hash.
    pub info: ModelInfo,
    /// The session.
    pub session: GradSession,
}

impl Classifier for GradClassifier {
    fn model_name(&self) -> &str {
        &self.info.name
    }

    fn model_sha256(&self) -> &str {
        &self.info.sha256
    }

    fn class_names(&self) -> &[String] {
        &self.info.class_names
    }

    fn input_size(&self) -> Option<(usize, usize)> {
        Some((self.info.width, self.info.height))
    }

    fn run(&mut self, images: &[&RgbImage]) -> Result<ClassifierOutput, String> {
        let input = self.info.preprocess(images.iter().copied());
        let out = self.session.run(input.view().into_dyn()).map_err(|e| e.to_string())?;
        Ok(ClassifierOutput { logits: out.logits, features: out.features })
    }
}

/// One stream's queue as inference sees it.
pub(crate) struct StreamQueue {
    pub name: String,
    pub rx: Receiver<Queued>,
}

pub(crate) struct Inference {
    pub env: Env,
    pub shared: Arc<Shared>,
    pub queues: Vec<StreamQueue>,
    pub classifier: Box<dyn Classifier>,
    pub max_batch: usize,
    pub max_wait: Duration,
    /// The latency-aware batch cap (when `latency_target_ms` is set).
    pub policy: BatchPolicy,
    /// After stop, queued frames are still scored for at most this long.
    pub drain: Duration,
    pub out: Sender<Scored>,
    pub heartbeat: Arc<Heartbeat>,
}

impl Inference {
    pub(crate) fn run(mut self) -> Result<(), String> {
        let mut failures = 0u32;
        let err_log = LogLimiter::new(Duration::from_secs(10));
        // Round-robin start, so a busy stream cannot starve the others of batch slots.
        let mut rr = 0usize;
        loop {
            self.heartbeat.beat();
            if self.queues.is_empty() {
                return Ok(());
            }
            let draining = self.shared.stopping();
            if draining {
                let past = self.shared.stop_instant().is_some_and(|t| t.elapsed() >= self.drain);
                if past {
                    let left: usize = self.queues.iter().map(|q| q.rx.len()).sum();
                    if left > 0 {
                        log::warn!("shutdown: {left} queued frame(s) not scored (drain deadline passed)");
                    }
                    return Ok(());
                }
            }
            let batch = self.gather(&mut rr, draining);
            if batch.is_empty() {
                if draining && self.queues.iter().all(|q| q.rx.is_empty()) {
                    return Ok(());
                }
                continue;
            }
            match self.score(batch) {
                Ok(()) => failures = 0,
                Err(e) => {
                    failures += 1;
                    if failures >= MAX_CONSECUTIVE_FAILURES {
                        return Err(format!("{failures} batches in a row failed; last error: {e}"));
                    }
                    err_log.hit(|more| log::error!("inference failed, batch skipped: {e} ({more} more since)"));
                }
            }
        }
    }

    /// Takes up to `max_batch` frames, waiting at most `max_wait` after the first (at most
    /// `IDLE_TICK` for the first). Drops queues whose streams have ended and drained.
    fn gather(&mut self, rr: &mut usize, draining: bool) -> Vec<Queued> {
        let mut batch: Vec<Queued> = Vec::with_capacity(self.max_batch);
        let mut deadline: Option<Instant> = None;
        let adaptive = self.policy.target().is_some();
        let mut cap = self.max_batch;
        loop {
            if adaptive {
                if let Some(first) = batch.iter().map(|q| q.queued_at).min() {
                    cap = self.policy.cap(self.env.clock.now().saturating_duration_since(first));
                }
            }
            let mut pulled = false;
            let n = self.queues.len();
            let mut gone = Vec::new();
            for k in 0..n {
                if batch.len() >= cap {
                    break;
                }
                let i = (*rr + k) % n;
                match self.queues[i].rx.try_recv() {
                    Ok(q) => {
                        batch.push(q);
                        pulled = true;
                    }
                    Err(TryRecvError::Empty) => {}
                    Err(TryRecvError::Disconnected) => gone.push(i),
                }
            }
            if n > 0 {
                *rr = (*rr + 1) % n;
            }
            for q in remove_indices(&mut self.queues, gone) {
                log::debug!("inference: stream {} finished", q.name);
            }
            if batch.len() >= cap || self.queues.is_empty() {
                return batch;
            }
            if pulled && adaptive {
                // Take what is queued (the next round of the loop) but never wait for more.
                deadline = Some(Instant::now());
                continue;
            }
            if pulled {
                deadline.get_or_insert_with(|| Instant::now() + self.max_wait);
                continue;
            }
            if draining && batch.is_empty() {
                return batch;
            }
            let wait_until = match deadline {
                Some(d) => d,
                None if batch.is_empty() => Instant::now() + IDLE_TICK,
                None => return batch,
            };
            let mut sel = Select::new();
            for q in &self.queues {
                sel.recv(&q.rx);
            }
            let now = Instant::now();
            if now >= wait_until || sel.ready_timeout(wait_until - now).is_err() {
                return batch;
            }
        }
    }

    fn score(&mut self, batch: Vec<Queued>) -> Result<(), String> {
        let m = &self.env.metrics;
        m.batch_size().observe(batch.len() as f64);
        let images: Vec<&RgbImage> = batch.iter().map(|q| &q.frame.image).collect();
        let t0 = Instant::now();
        let c0 = self.env.clock.now();
        let out = self.classifier.run(&images);
        m.inference_latency().observe(t0.elapsed().as_secs_f64());
        self.policy.observe(images.len(), self.env.clock.now().saturating_duration_since(c0));
        let out = match out {
            Ok(o) => o,
            Err(e) => {
                for q in &batch {
                    m.stream(&q.frame.stream).frames_bad.inc();
                }
                return Err(e);
            }
        };
        if out.logits.nrows() != batch.len() || out.features.nrows() != batch.len() {
            return Err(format!(
                "model returned {} logits rows and {} feature rows for {} frames",
                out.logits.nrows(),
                out.features.nrows(),
                batch.len()
            ));
        }
        let scoring = self.shared.scoring();
        let measure_quality = scoring.calibration.uses_quality();
        let size = self.classifier.input_size();
        for (i, q) in batch.into_iter().enumerate() {
            let feats = out.features.row(i).to_vec();
            let logits = out.logits.row(i).to_vec();
            // The image-quality measures of the frame as the model sees it, when read.
            let quality = measure_quality.then(|| match size {
                Some((w, h)) => crate::quality::measure_as_input(&q.frame.image, w, h),
                None => crate::quality::measure(&q.frame.image),
            });
            let frame = FrameInputs::new(&feats, &logits).with_quality(quality.as_ref().map(|v| &v[..]));
            let score = scoring.calibration.score_row(frame);
            // The trust head (a second head on the same features): None without one.
            let risk = scoring.calibration.risk_row(frame);
            let (top, confidence) = top_class(&logits);
            let sm = m.stream(&q.frame.stream);
            sm.frames_scored.inc();
            sm.score.observe(f64::from(score));
            if let Some(r) = risk {
                m.observe_risk(&sm, q.frame.captured_at, r);
            }
            let latency = q.captured.elapsed();
            m.capture_to_verdict().observe(latency.as_secs_f64());
            sm.latency.observe(latency);
            let s = Scored {
                stream: q.frame.stream,
                seq: q.frame.seq,
                time: q.frame.captured_at,
                score,
                threshold: scoring.threshold,
                clean_tail_scale: scoring.calibration.clean_tail_scale.unwrap_or(0.0) as f32,
                top_class: top,
                top_class_name: self.classifier.class_names().get(top).cloned(),
                confidence,
                tag: q.frame.tag,
            };
            if let Some(frames) = &self.env.frames {
                frames.publish(&frame_record(&s, risk, sm.status.alarm()));
            }
            if let Some(snaps) = self.env.snapshots.as_ref().filter(|_| s.is_over()) {
                // Only over-threshold frames can raise an alert or be its peak; the image is
                // moved, not copied.
                snaps.keep(&s.stream, crate::snapshot::Kept { seq: s.seq, score: s.score, image: q.frame.image });
            }
            if self.out.send(s).is_err() {
                return Err("the alert stage is gone".into());
            }
        }
        Ok(())
    }
}

/// What the `frames` sinks publish of a scored frame.
fn frame_record(s: &Scored, risk: Option<f32>, alarm: bool) -> crate::sink::frames::FrameRecord {
    crate::sink::frames::FrameRecord {
        stream: s.stream.clone(),
        seq: s.seq,
        time_ms: crate::base::time::unix_ms(s.time),
        top_class: s.top_class,
        class_name: s.top_class_name.clone(),
        confidence: s.confidence,
        risk,
        score: s.score.is_finite().then_some(s.score),
        threshold: s.threshold,
        verdict: if s.is_over() || s.score.is_nan() { "unfamiliar" } else { "familiar" },
        alarm,
    }
}

/// The latency-aware batch size (`[pipeline] latency_target_ms`): a cost model of the
/// classifier (an exponentially weighted average of the run time per frame, learnt from the
/// batches run so far) and the target.
///
/// The batch is capped at the largest size whose estimated run time still lets the oldest
/// queued frame finish within the target; when the oldest frame is already past the target,
/// the cap is `max_batch` (throughput first). Inference does not wait for frames to arrive, so
/// under light load batches are what is queued (usually one frame) and answers are immediate;
/// under load, frames queue while a batch runs and the next batch takes them together.
#[derive(Clone, Debug)]
pub struct BatchPolicy {
    target: Option<Duration>,
    max_batch: usize,
    /// Estimated seconds per frame; `None` before the first batch.
    per_frame: Option<f64>,
}

/// Weight of the newest batch in the per-frame cost average.
const COST_EWMA: f64 = 0.2;

impl BatchPolicy {
    /// A policy for `latency_target_ms` (0: no target) with batches of at most `max_batch`.
    pub fn new(max_batch: usize, latency_target_ms: u64) -> Self {
        let target = (latency_target_ms > 0).then(|| Duration::from_millis(latency_target_ms));
        BatchPolicy { target, max_batch: max_batch.max(1), per_frame: None }
    }

    /// The latency target, when set.
    pub fn target(&self) -> Option<Duration> {
        self.target
    }

    /// The current estimate of a batch of `n` frames' run time.
    pub fn estimate(&self, n: usize) -> Option<Duration> {
        self.per_frame.map(|p| Duration::from_secs_f64(p * n as f64))
    }

    /// The largest batch to run now, given the age of the oldest frame it would hold.
    pub fn cap(&self, oldest_age: Duration) -> usize {
        let (Some(target), Some(per_frame)) = (self.target, self.per_frame) else { return self.max_batch };
        if oldest_age >= target {
            return self.max_batch;
        }
        let left = (target - oldest_age).as_secs_f64();
        ((left / per_frame.max(1e-6)).floor() as usize).clamp(1, self.max_batch)
    }

    /// Records that a batch of `n` frames took `took`.
    pub fn observe(&mut self, n: usize, took: Duration) {
        if n == 0 {
            return;
        }
        let x = took.as_secs_f64() / n as f64;
        self.per_frame = Some(match self.per_frame {
            None => x,
            Some(p) => p + COST_EWMA * (x - p),
        });
    }
}

/// Removes the elements at `indices` (any order; the round-robin start makes them wrap around,
/// e.g. `[2, 3, 0]`) and returns them. Out-of-range and repeated indices are ignored.
fn remove_indices<T>(v: &mut Vec<T>, mut indices: Vec<usize>) -> Vec<T> {
    indices.sort_unstable();
    indices.dedup();
    let len = v.len();
    indices.into_iter().rev().filter(|&i| i < len).map(|i| v.remove(i)).collect()
}

#[cfg(test)]
mod tests {
    use super::remove_indices;

    #[test]
    fn removes_wrapped_indices() {
        // Regression: with four streams ending together and the round robin at 2, the finished
        // queues were [2, 3, 0]; removing them in reverse list order panicked out of bounds.
        let mut v = vec!['a', 'b', 'c', 'd'];
        let mut gone = remove_indices(&mut v, vec![2, 3, 0]);
        gone.sort_unstable();
        assert_eq!(gone, ['a', 'c', 'd']);
        assert_eq!(v, ['b']);
        assert!(remove_indices(&mut v, vec![5, 0, 0]).len() == 1 && v.is_empty());
    }
}
