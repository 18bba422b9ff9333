//! Capture: one thread per stream polls its source, crops to the ROI, stamps the frame and
//! pushes it into the stream's bounded queue under the stream's drop policy.

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
}

/// How often a blocked `block`-policy push checks for shutdown.
const PUSH_POLL: Duration = Duration::from_millis(100);

/// One stream's capture thread.
pub(crate) struct Capture {
    pub env: Env,
    pub shared: Arc<Shared>,
    pub spec_name: String,
    pub roi: Option<Roi>,
    pub policy: DropPolicy,
    pub source: Box<dyn Source>,
    pub tx: Sender<Queued>,
    /// The queue's receiving end, to pop the oldest frame under `drop_oldest`.
    pub rx: Receiver<Queued>,
    pub events: Sender<StreamEvent>,
    pub heartbeat: Arc<Heartbeat>,
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
        // Sources with their own frame clock (replay, realtime = false) are stamped from here.
        let epoch = self.env.now();
        loop {
            self.heartbeat.beat();
            if self.shared.stopping() {
                return Ok(());
            }
            match self.source.poll() {
                SourceEvent::Frame { image, tag } => {
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
                        if link == Link::Down {
                            self.send_event(StreamEventKind::Up);
                        }
                        link = Link::Up;
                        m.up.set(1);
                    }
                    m.frames_captured.inc();
                    if let Some(f) = self.shared.first_frame.get(&self.spec_name) {
                        f.store(true, Ordering::Relaxed);
                    }
                    let captured_at = self.source.frame_time().map_or_else(|| self.env.now(), |d| epoch + d);
                    let frame = Frame { stream: self.spec_name.clone(), seq, captured_at, image, tag };
                    seq += 1;
                    if !self.push(Queued { frame, captured: Instant::now() }) {
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
                        self.send_event(StreamEventKind::Down(reason));
                    }
                }
                SourceEvent::Up => {
                    m.up.set(1);
                    if link != Link::Up {
                        log::info!("stream {}: up", self.spec_name);
                        link = Link::Up;
                        self.send_event(StreamEventKind::Up);
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

    fn send_event(&self, kind: StreamEventKind) {
        let ev = StreamEvent { stream: self.spec_name.clone(), time: self.env.now(), kind };
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
