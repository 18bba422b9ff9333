//! The per-stream ring of recent over-threshold frames a snapshot can be taken from.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::frame::RgbImage;

/// One frame kept for a possible snapshot.
#[derive(Debug)]
pub struct Kept {
    /// Sequence number within its stream.
    pub seq: u64,
    /// Its score.
    pub score: f32,
    /// The frame as captured (after the ROI crop).
    pub image: RgbImage,
}

/// The last `capacity` frames pushed, at most `max_bytes` of pixels together, oldest dropped
/// first. Frames are shared (`Arc`): a snapshot job holds its frame while the ring moves on.
#[derive(Debug)]
pub struct FrameRing {
    capacity: usize,
    max_bytes: u64,
    bytes: u64,
    frames: VecDeque<Arc<Kept>>,
}

impl FrameRing {
    /// An empty ring of at most `capacity` (at least 1) frames, without a byte bound.
    pub fn new(capacity: usize) -> Self {
        Self::bounded(capacity, u64::MAX)
    }

    /// An empty ring of at most `capacity` (at least 1) frames and `max_bytes` of pixels (the
    /// newest frame is always kept, even alone over the bound).
    pub fn bounded(capacity: usize, max_bytes: u64) -> Self {
        let capacity = capacity.max(1);
        FrameRing { capacity, max_bytes, bytes: 0, frames: VecDeque::with_capacity(capacity.min(64)) }
    }

    /// Adds a frame, dropping the oldest while the ring is over either bound.
    pub fn push(&mut self, k: Kept) {
        let size = k.image.data.len() as u64;
        while !self.frames.is_empty()
            && (self.frames.len() >= self.capacity || self.bytes.saturating_add(size) > self.max_bytes)
        {
            if let Some(old) = self.frames.pop_front() {
                self.bytes -= old.image.data.len() as u64;
            }
        }
        self.bytes += size;
        self.frames.push_back(Arc::new(k));
    }

    /// Bytes of pixels held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Frames held.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// Whether no frame is held.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// The frame with sequence number `seq`, if still held.
    pub fn get(&self, seq: u64) -> Option<Arc<Kept>> {
        self.frames.iter().rev().find(|k| k.seq == seq).cloned()
    }

    /// The highest-scoring frame with `first <= seq <= last` (the earliest on ties, as the
    /// alert tracker picks its peak; NaN scores never win).
    pub fn peak(&self, first: u64, last: u64) -> Option<Arc<Kept>> {
        let mut best: Option<&Arc<Kept>> = None;
        for k in self.frames.iter().filter(|k| (first..=last).contains(&k.seq) && !k.score.is_nan()) {
            if best.is_none_or(|b| k.score > b.score) {
                best = Some(k);
            }
        }
        best.cloned()
    }

    /// Sequence numbers held, oldest first.
    pub fn seqs(&self) -> Vec<u64> {
        self.frames.iter().map(|k| k.seq).collect()
    }
}
