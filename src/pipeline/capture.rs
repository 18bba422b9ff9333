//! Capture: one thread per stream polls its source, measures the whole frame's image quality
//! once a second of frame time (for the gauges and the alert stage's image evidence), crops to
//! the ROI, stamps the frame and pushes it into the stream's bounded queue under the stream's
//! drop policy.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TrySendError};

use super::alerting::{StreamEvent, StreamEventKind};
use super::{Env, Heartbeat, Shared};
use crate::frame::Frame;
use crate::ratelimit::LogLimiter;
use crate::source::{DropPolicy, Roi, Source, SourceEvent};

/// A frame in a capture queue, with the real instant it was captured (for the
/// capture-to-verdict latency, which is about this process, not the pipeline clock).
pub struct Queued {
    /// The frame.
    pub frame: Frame,
    /// When the capture thread queued it.
    pub captured: Instant,
    /// The same moment on the pipeline's clock (the batching's view of the frame's age, so
    /// tests can run it on a simulated clock).
    pub queued_at: Instant,
}

/// How often (frame time) the whole captured frame's image-quality measures are taken (for
/// `gradwatch_frame_quality` and the image evidence, one sample a second): a camera's
/// condition changes over seconds, and a 1280x720 frame costs about 3 ms to measure.
pub const FRAME_QUALITY_EVERY: Duration = Duration::from_millis(crate::alert::image::SAMPLE_MS);

/// How often a blocked `block`-policy push checks for shutdown.
const PUSH_POLL: Duration = Duration::from_millis(100);

/// Longest wait for queued frames to clear inference before a `stream_down` is sent anyway.
const DOWN_WAIT_MAX: Duration = Duration::from_secs(10);
/// How often that wait looks.
const DOWN_WAIT_POLL: Duration = Duration::from_millis(2);

/// One stream's capture thread.
pub(crate) struct Capture {
    pub env: Env,
    pub shared: Arc<Shared>,
    pub spec_name: String,
    pub roi: Option<Roi>,
    pub policy: DropPolicy,
    pub source: Box<dyn Source>,
    /// Which frames are scored (`score_fps`); the others are counted as skipped.
    pub rate: super::rate::ScoreRate,
    pub tx: Sender<Queued>,
    /// The queue's receiving end, to pop the oldest frame under `drop_oldest`.
    pub rx: Receiver<Queued>,
    pub events: Sender<StreamEvent>,
    pub heartbeat: Arc<Heartbeat>,
    /// Inference's heartbeat: a `stream_down` waits until the frames queued before it have
    /// gone through inference (see [`Capture::wait_for_queued_frames`]).
    pub inference: Arc<Heartbeat>,
}

#[derive(PartialEq)]
enum Link {
    Unknown,
    Up,
    Down,
}

impl Capture {
    pub(crate) fn run(mut self) -> Result<(), String> {
        let m = self.env.metrics.stream(&self.spec_name);
        let bad_log = LogLimiter::new(Duration::from_secs(10));
        let mut link = Link::Unknown;
        let mut seq = 0u64;
        let mut quality_at: Option<std::time::SystemTime> = None;
        // Sources with their own frame clock (replay, realtime = false) are stamped from here.
        let epoch = self.env.now();
        loop {
            self.heartbeat.beat();
            if self.shared.stopping() {
                return Ok(());
            }
            match self.source.poll() {
                SourceEvent::Frame { image, tag } => {
                    let captured_at = self.source.frame_time().map_or_else(|| self.env.now(), |d| epoch + d);
                    // The whole frame, before the crop: a dirty lens covers all of it. A clock
                    // that went back (a source restarted) measures at once.
                    let due = quality_at
                        .is_none_or(|t| captured_at.duration_since(t).map_or(true, |d| d >= FRAME_QUALITY_EVERY));
                    let quality = due.then(|| {
                        quality_at = Some(captured_at);
                        let q = crate::quality::measure(&image);
                        m.set_frame_quality(q);
                        q
                    });
                    let image = match self.roi {
                        None => image,
                        Some(r) => match r.crop(&image) {
                            Some(c) => c,
                            None => {
                                m.frames_bad.inc();
                                let (name, (w, h)) = (&self.spec_name, (image.width, image.height));
                                bad_log.hit(|more| {
                                    log::warn!(
                                        "stream {name}: roi {r:?} does not fit the {w}x{h} frame; frame skipped \
                                         ({more} more bad frames since the last message); fix `roi`"
                                    )
                                });
                                continue;
                            }
                        },
                    };
                    if link != Link::Up {
                        // Also at the first frame: consumers see `stream_up` when a stream
                        // starts, not only when it comes back.
                        self.send_event(StreamEventKind::Up, self.env.now(), seq);
                        link = Link::Up;
                        m.up.set(1);
                    }
                    if let Some(q) = quality {
                        // Ordered before this frame's verdict by the alert stage.
                        self.send_event(StreamEventKind::Quality(q), captured_at, seq);
                    }
                    // Frames the source did not even decode under `score_fps` (rtsp).
                    let undecoded = self.source.take_skipped();
                    m.frames_captured.add(undecoded + 1);
                    m.frames_skipped.add(undecoded);
                    if let Some(f) = self.shared.first_frame.get(&self.spec_name) {
                        f.store(true, Ordering::Relaxed);
                    }
                    let frame = Frame { stream: self.spec_name.clone(), seq, captured_at, image, tag };
                    seq += 1;
                    if !self.rate.admit(self.env.clock.now()) {
                        m.frames_skipped.inc();
                        continue;
                    }
                    let queued_at = self.env.clock.now();
                    if !self.push(Queued { frame, captured: Instant::now(), queued_at }) {
                        return Ok(());
                    }
                }
                SourceEvent::BadFrame { reason } => {
                    m.frames_bad.inc();
                    let name = &self.spec_name;
                    bad_log.hit(|more| {
                        log::warn!("stream {name}: bad frame skipped: {reason} ({more} more since the last message)")
                    });
                }
                SourceEvent::Down { reason } => {
                    m.up.set(0);
                    bad_log.flush(|n| log::warn!("stream {}: {n} more bad frames skipped", self.spec_name));
                    if link != Link::Down {
                        log::warn!("stream {}: down: {reason}", self.spec_name);
                        link = Link::Down;
                        let time = self.env.now();
                        self.wait_for_queued_frames();
                        self.send_event(StreamEventKind::Down(reason), time, seq);
                    }
                }
                SourceEvent::Up => {
                    m.up.set(1);
                    if link != Link::Up {
                        log::info!("stream {}: up", self.spec_name);
                        link = Link::Up;
                        self.send_event(StreamEventKind::Up, self.env.now(), seq);
                    }
                }
                SourceEvent::End => {
                    m.up.set(0);
                    bad_log.flush(|n| log::warn!("stream {}: {n} more bad frames skipped", self.spec_name));
                    log::info!("stream {}: source ended after {seq} frames", self.spec_name);
                    if let Some(f) = self.shared.ended.get(&self.spec_name) {
                        f.store(true, Ordering::Relaxed);
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Waits until every frame this thread queued has been through inference (scored and
    /// handed to the alert stage, or dropped there), so that the `stream_down` sent next
    /// cannot overtake their verdicts and alerts (the alert stage drains scored frames before
    /// each stream event). Nothing is queued meanwhile: this thread is the only producer.
    ///
    /// Inference beats its heartbeat at the top of its loop, after handing the previous batch
    /// on; so once the queue is empty, one more beat means any batch holding our frames has
    /// been delivered. Bounded by [`DOWN_WAIT_MAX`] and by shutdown, so a stuck inference
    /// only delays the event.
    fn wait_for_queued_frames(&self) {
        let give_up = Instant::now() + DOWN_WAIT_MAX;
        let over = || self.shared.stopping() || self.inference.is_done() || Instant::now() >= give_up;
        while !self.rx.is_empty() {
            if over() {
                return;
            }
            self.heartbeat.beat();
            std::thread::sleep(DOWN_WAIT_POLL);
        }
        let mark = self.inference.beats();
        while self.inference.beats() == mark {
            if over() {
                return;
            }
            self.heartbeat.beat();
            std::thread::sleep(DOWN_WAIT_POLL);
        }
    }

    /// Sends an up/down transition that happened before frame `before_seq` was captured.
    fn send_event(&self, kind: StreamEventKind, time: std::time::SystemTime, before_seq: u64) {
        let ev = StreamEvent { stream: self.spec_name.clone(), time, kind, before_seq };
        // Never block capture on the alert stage: a full event queue loses a transition,
        // which the next one corrects.
        if self.events.try_send(ev).is_err() {
            log::warn!("stream {}: stream event not delivered (alert stage busy)", self.spec_name);
        }
    }

    /// Queues a frame; false when the pipeline is shutting down (stop or inference gone).
    fn push(&self, q: Queued) -> bool {
        let m = self.env.metrics.stream(&self.spec_name);
        match self.policy {
            DropPolicy::DropOldest => match self.tx.try_send(q) {
                Ok(()) => true,
                Err(TrySendError::Full(q)) => {
                    // Pop the oldest (inference may have taken one meanwhile: then nothing is
                    // dropped) and retry once; capture never blocks.
                    if self.rx.try_recv().is_ok() {
                        m.frames_dropped.inc();
                    }
                    match self.tx.try_send(q) {
                        Ok(()) => true,
                        Err(TrySendError::Full(_)) => {
                            m.frames_dropped.inc();
                            true
                        }
                        Err(TrySendError::Disconnected(_)) => false,
                    }
                }
                Err(TrySendError::Disconnected(_)) => false,
            },
            DropPolicy::Block => {
                let mut q = q;
                loop {
                    match self.tx.send_timeout(q, PUSH_POLL) {
                        Ok(()) => return true,
                        Err(SendTimeoutError::Timeout(back)) => {
                            self.heartbeat.beat();
                            if self.shared.stopping() {
                                return false;
                            }
                            q = back;
                        }
                        Err(SendTimeoutError::Disconnected(_)) => return false,
                    }
                }
            }
        }
    }
}
