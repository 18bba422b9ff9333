//! The alert policies behind one trait: a [`Decider`] sees each scored frame and says what the
//! tracker should do ([`Verdict`]); the [`AlertTracker`](super::AlertTracker) keeps what every
//! policy shares (the stream and sequence checks, the open alert, the minimum duration, the
//! periodic updates, the events).
//!
//! One file per policy: `kofn.rs` (k of the last n frames over threshold) and `cusum.rs` (the
//! CUSUM of per-block p-values, with the stream's baseline; its statistic's math is in
//! [`super::cusum`]). A new policy is a file here implementing [`Decider`], a [`PolicyKind`]
//! variant with its keys in `policy.rs`, and an arm in [`for_policy`].

mod cusum;
mod kofn;

use std::any::Any;

use super::{AlertPolicy, Baseline, BaselineConfig, ModelRef, Open, PolicyDetail, PolicyKind, Scored};

/// What a [`Decider`] makes of one frame.
pub(super) enum Verdict {
    /// Nothing to decide on this frame (no alert open and none raised, or a frame inside a
    /// block that has not ended).
    Wait,
    /// Raise this alert (only when none is open): its first frame and the frames since, as the
    /// policy accounts them; the tracker sets its raise time. (Boxed: raises are rare and the
    /// other verdicts small.)
    Raise(Box<Open>),
    /// The open alert stays; the tracker may send its periodic update.
    Stay,
    /// The policy's clearing condition holds: the tracker clears the open alert once it has
    /// lasted `min_duration_ms`, and otherwise treats the frame as [`Verdict::Stay`].
    Clear,
}

/// One alert policy's running state for one stream.
///
/// The tracker hands it every frame that passed the stream and sequence checks; the policy adds
/// the frames it accounts for to the open alert itself (`k_of_n` each frame, `cusum` a whole
/// block at once). The baseline hooks default to doing nothing: only `cusum` has a baseline.
pub(super) trait Decider: Send + Any {
    /// Sees one frame; `open` is the open alert, if any.
    fn push(&mut self, s: &Scored, open: Option<&mut Open>) -> Verdict;

    /// The tracker is about to close the open alert as cleared (after [`Verdict::Clear`]).
    fn cleared(&mut self) {}

    /// Forgets the frames seen: the stream restarted (frames after it are a new sequence).
    fn reset(&mut self);

    /// The policy's running statistic: frames over threshold in the window (`k_of_n`), the
    /// CUSUM `S` (`cusum`).
    fn statistic(&self) -> f64;

    /// The policy's side of an event, as of now.
    fn detail(&self) -> PolicyDetail;

    /// The last closed block's statistic and p-value (block policies only).
    fn last_block(&self) -> Option<(f32, f64)> {
        None
    }

    /// Uses `baseline` as the clean distribution (see `AlertTracker::set_baseline`).
    fn set_baseline(&mut self, _baseline: Baseline) -> Result<(), String> {
        Ok(())
    }

    /// Learns the stream's baseline under `config` (see `AlertTracker::learn_baseline`).
    fn learn_baseline(&mut self, _config: BaselineConfig) {}

    /// Takes over `old`'s learned baseline and learner (see
    /// `AlertTracker::carry_baseline_from`).
    fn carry_baseline_from(&mut self, _old: &mut dyn Decider) -> Result<(), String> {
        Ok(())
    }

    /// The clean distribution in force and whether it was learned on this stream.
    fn baseline(&self) -> Option<(&Baseline, bool)> {
        None
    }

    /// The learned baseline when it was completed or adapted since the last call.
    fn take_changed_baseline(&mut self) -> Option<Baseline> {
        None
    }

    /// Blocks learned so far and blocks needed, while a baseline is being learned.
    fn learning_progress(&self) -> Option<(usize, usize)> {
        None
    }

    /// Itself, for a policy that takes state over from another of its kind.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The decider of `policy` for `stream` (whose scores come from `model`).
pub(super) fn for_policy(stream: &str, policy: &AlertPolicy, model: &ModelRef) -> Box<dyn Decider> {
    match policy.policy {
        PolicyKind::KOfN => Box::new(kofn::KOfN::new(stream, policy)),
        PolicyKind::Cusum => Box::new(cusum::CusumDecider::new(stream, policy, &model.sha256)),
    }
}

/// A frame of stream `cam` at `seq * 100` ms of frame time, for the policies' unit tests.
#[cfg(test)]
pub(super) fn test_frame(seq: u64, score: f32, threshold: f32) -> Scored {
    Scored {
        stream: "cam".into(),
        seq,
        time: std::time::UNIX_EPOCH + std::time::Duration::from_millis(seq * 100),
        score,
        threshold,
        clean_tail_scale: 0.0,
        top_class: 0,
        top_class_name: None,
        confidence: 1.0,
        tag: None,
    }
}
