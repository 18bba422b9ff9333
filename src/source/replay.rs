//! Replay of an `.npy` image array with a corruption schedule: the daemon's end-to-end test
//! and demo input.
//!
//! ```toml
//! [[stream]]
//! name = "replay"
//! kind = "replay"
//! path = "data/sample.npy"   # required: uint8 array of shape (N, H, W, 3)
//! fps = 10                   # default 0 = as fast as possible (then use queue.policy = "block")
//! seed = 0                   # default 0; frame i is corrupted with seed + i
//! repeat = false             # default false: End after the schedule; true: start it again
//! realtime = true            # default true: sleep to `fps`; false: stamp frames at `fps` on the
//!                            # frame clock but deliver them as fast as they are taken
//! schedule = [
//!   { duration_s = 10.0 },                                   # clean
//!   { duration_s = 10.0, corruption = "haze", level = 3 },
//!   { frames = 50, corruption = "noise", level = 5 },
//!   { duration_s = 600.0, corruption = "dirty_lens", ramp = [1.0, 5.0] },  # level 1 -> 5 linearly
//! ]
//! ```
//!
//! `ramp = [from, to]` (levels 0 to 5, fractional; 0 = clean) replaces `level`: frame `j` of an
//! `n`-frame window is at level `from + (to - from) * j / (n - 1)`, rendered as the pixel blend
//! of the two neighbouring integer levels ([`corrupt_at`]). Its frames are tagged
//! `<corruption>:ramp<from>-<to>` (one window in the summary).
//!
//! With `realtime = false` (needs `fps > 0`) the replay does not sleep: frame `i` is stamped at
//! `start + i / fps` of *frame time* (see [`crate::frame::Frame`]'s `captured_at` as produced by
//! the capture thread through [`Source::frame_time`]), so hours of frame time are evaluated
//! as fast as inference runs. Use `queue.policy = "block"` with it.
//!
//! Frames are taken from the array in order, wrapping around, independent of the schedule:
//! frame `i` of the stream is image `i % N`. Window lengths are counted in *frames*, so they are
//! exact at any speed: `frames = n`, or `duration_s = d` meaning `round(d * fps)` frames (which
//! needs `fps > 0`). Giving both is allowed when they agree at a positive `fps` (at `fps = 0`
//! only `frames` counts), so one schedule serves the real-time demo and the full-speed test.
//! An empty schedule is one clean pass over the array.
//!
//! Each frame's tag is `clean` or `<corruption>:<level>` (e.g. `haze:3`), so alerts can be
//! checked against windows. Corruption is deterministic: frame `i` uses seed `seed + i`. A
//! corruption that fails is a [`SourceEvent::BadFrame`]; the frame still counts in its window.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{check_fps, Source, SourceError, SourceEvent};
use crate::base::clock::{Clock, Pacer};
use crate::corrupt::{self, Corruption};
use crate::frame::RgbImage;

/// Corruption levels the schedule accepts.
pub const LEVELS: std::ops::RangeInclusive<u8> = 1..=5;

/// One window of a replay schedule.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Window {
    /// Length in seconds (`round(duration_s * fps)` frames; needs `fps > 0`). Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_s: Option<f64>,
    /// Length in frames; wins at `fps = 0`. Default: unset. One of the two is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u64>,
    /// Corruption applied in this window. Default: none (clean frames).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub corruption: Option<Corruption>,
    /// Corruption severity, 1 to 5; with `corruption`, give `level` or `ramp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
    /// `[from, to]`: the level rises (or falls) linearly over the window, fractional levels in
    /// 0..=5 (0 = clean). Needs `corruption`; excludes `level`. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<[f32; 2]>,
}

impl Window {
    /// The tag of this window's frames: `clean` or e.g. `haze:3`.
    pub fn tag(&self) -> String {
        if let (Some(c), Some([a, b])) = (self.corruption, self.ramp) {
            return format!("{c}:ramp{a}-{b}");
        }
        match (self.corruption, self.level) {
            (Some(c), Some(l)) => format!("{c}:{l}"),
            (Some(c), None) => c.to_string(),
            (None, _) => "clean".to_string(),
        }
    }

    /// This window's length in frames at `fps`.
    pub fn frame_count(&self, fps: f64) -> Result<u64, String> {
        let from_duration = |d: f64| -> Result<u64, String> {
            if !(d.is_finite() && d > 0.0) {
                return Err(format!("`duration_s` is {d}; use a positive number of seconds"));
            }
            let n = (d * fps).round();
            if n < 1.0 || n > u64::MAX as f64 {
                return Err(format!("`duration_s` {d} at fps {fps} is {n} frames; a window needs at least 1"));
            }
            Ok(n as u64)
        };
        match (self.frames, self.duration_s) {
            (Some(0), _) => Err("`frames` is 0; a window needs at least 1 frame".into()),
            (Some(n), Some(d)) if fps > 0.0 => {
                let m = from_duration(d)?;
                if m == n {
                    Ok(n)
                } else {
                    Err(format!(
                        "`frames` = {n} disagrees with `duration_s` = {d} at fps {fps} \
                         ({m} frames); give one, or make them agree"
                    ))
                }
            }
            (Some(n), _) => Ok(n),
            (None, Some(d)) if fps > 0.0 => from_duration(d),
            (None, Some(_)) => Err("`duration_s` needs `fps` > 0; at fps = 0 give `frames` instead".into()),
            (None, None) => Err("set `frames` or `duration_s`".into()),
        }
    }

    fn validate(&self) -> Result<(), String> {
        if let Some([a, b]) = self.ramp {
            let ok = |x: f32| x.is_finite() && (0.0..=f32::from(*LEVELS.end())).contains(&x);
            return match (self.corruption, self.level) {
                (None, _) => Err("`ramp` without `corruption`; add `corruption`".into()),
                (Some(_), Some(_)) => Err("give `level` or `ramp`, not both".into()),
                (Some(_), None) if ok(a) && ok(b) => Ok(()),
                (Some(_), None) => Err(format!("`ramp` = [{a}, {b}]: levels must be in 0 to 5")),
            };
        }
        match (self.corruption, self.level) {
            (Some(_), Some(l)) if LEVELS.contains(&l) => Ok(()),
            (Some(_), Some(l)) => Err(format!("`level` is {l}; use 1 to 5")),
            (Some(c), None) => Err(format!("`corruption` = \"{c}\" needs a `level` (1 to 5) or a `ramp`")),
            (None, Some(_)) => Err("`level` without `corruption`; add `corruption`".into()),
            (None, None) => Ok(()),
        }
    }
}

/// Config of a `kind = "replay"` stream.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayConfig {
    /// An `.npy` file holding a uint8 array of shape (N, H, W, 3). Required.
    pub path: PathBuf,
    /// Frames a second; 0 plays as fast as the consumer takes them. Default 0.
    #[serde(default)]
    pub fps: f64,
    /// Base corruption seed; frame `i` uses `seed + i`. Default 0.
    #[serde(default)]
    pub seed: u64,
    /// Windows played in order. Default empty = one clean pass over the array.
    #[serde(default)]
    pub schedule: Vec<Window>,
    /// Play the schedule again after its end, forever. Default false (End after it).
    #[serde(default)]
    pub repeat: bool,
    /// `true`: sleep so frames come at `fps`. `false` (needs `fps > 0`): no sleeping; frames
    /// are stamped `i / fps` apart in frame time and delivered as fast as they are taken.
    /// Default true.
    #[serde(default = "default_true")]
    pub realtime: bool,
}

fn default_true() -> bool {
    true
}

impl ReplayConfig {
    /// Checks the config without reading the array. An empty schedule is fine here (its length
    /// depends on the array).
    pub fn validate(&self) -> Result<(), SourceError> {
        check_fps(self.fps)?;
        if !self.realtime && self.fps <= 0.0 {
            return Err(SourceError::Config("`realtime = false` needs `fps` > 0 (the frame-time spacing)".into()));
        }
        for (i, w) in self.schedule.iter().enumerate() {
            w.validate()
                .and_then(|_| w.frame_count(self.fps).map(|_| ()))
                .map_err(|e| SourceError::Config(format!("`schedule[{i}]`: {e}")))?;
        }
        Ok(())
    }

    /// Frames in each window of the schedule, in order (the tests' expected counts).
    pub fn window_frames(&self) -> Result<Vec<u64>, SourceError> {
        self.schedule
            .iter()
            .enumerate()
            .map(|(i, w)| w.frame_count(self.fps).map_err(|e| SourceError::Config(format!("`schedule[{i}]`: {e}"))))
            .collect()
    }
}

/// What a window does to its frames.
#[derive(Clone, Copy)]
enum Effect {
    Clean,
    Fixed(Corruption, u8),
    Ramp(Corruption, f32, f32),
}

struct Slot {
    frames: u64,
    effect: Effect,
    tag: String,
}

/// `kind` at a fractional `level` in 0..=5: the per-pixel blend of the two neighbouring integer
/// levels (level 0 is the image itself), so a ramp changes smoothly between the tables'
/// levels. Integer levels give exactly [`corrupt::apply`].
pub fn corrupt_at(img: &RgbImage, kind: Corruption, level: f32, seed: u64) -> Result<RgbImage, corrupt::CorruptError> {
    let level = if level.is_finite() { level.clamp(0.0, f32::from(*LEVELS.end())) } else { 0.0 };
    let lo = level.floor();
    let frac = level - lo;
    let at = |l: f32| -> Result<RgbImage, corrupt::CorruptError> {
        if l < 0.5 {
            Ok(img.clone())
        } else {
            corrupt::apply(img, kind, l as u8, seed)
        }
    };
    let a = at(lo)?;
    if frac < 1e-4 {
        return Ok(a);
    }
    let b = at(lo + 1.0)?;
    let data = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| (f32::from(x) * (1.0 - frac) + f32::from(y) * frac).round() as u8)
        .collect();
    Ok(RgbImage { width: a.width, height: a.height, data })
}

/// Plays an array through a corruption schedule (see the module doc).
pub struct ReplaySource {
    images: Vec<RgbImage>,
    slots: Vec<Slot>,
    repeat: bool,
    seed: u64,
    /// Current window and position in it.
    window: usize,
    in_window: u64,
    /// Frames emitted so far (the corruption seed offset and the array index).
    index: u64,
    ended: bool,
    pacer: Pacer,
    clock: Arc<dyn Clock>,
    /// `Some(fps)` when `realtime = false`: frames carry their own frame time.
    frame_fps: Option<f64>,
}

impl ReplaySource {
    /// Validates and loads the array.
    pub fn new(config: &ReplayConfig, clock: Arc<dyn Clock>) -> Result<Self, SourceError> {
        config.validate()?;
        // The project's one `.npy` reader: the header is checked against the file size before
        // anything is allocated, so a hostile header is an error, not an abort.
        let images = crate::data::load_npy_images(&config.path)?;
        if images.is_empty() || images[0].width == 0 || images[0].height == 0 {
            return Err(SourceError::Config(format!(
                "{}: the array holds no pixels; expected uint8 (N, H, W, 3) with N, H, W > 0",
                config.path.display()
            )));
        }
        let slots = if config.schedule.is_empty() {
            vec![Slot { frames: images.len() as u64, effect: Effect::Clean, tag: "clean".into() }]
        } else {
            config
                .schedule
                .iter()
                .zip(config.window_frames()?)
                .map(|(w, frames)| {
                    let effect = match (w.corruption, w.level, w.ramp) {
                        (Some(c), _, Some([a, b])) => Effect::Ramp(c, a, b),
                        (Some(c), Some(l), None) => Effect::Fixed(c, l),
                        _ => Effect::Clean,
                    };
                    Slot { frames, effect, tag: w.tag() }
                })
                .collect()
        };
        Ok(Self {
            images,
            slots,
            repeat: config.repeat,
            seed: config.seed,
            window: 0,
            in_window: 0,
            index: 0,
            ended: false,
            pacer: Pacer::new(if config.realtime { config.fps } else { 0.0 }),
            clock,
            frame_fps: (!config.realtime).then_some(config.fps),
        })
    }
}

impl Source for ReplaySource {
    fn poll(&mut self) -> SourceEvent {
        if self.ended {
            return SourceEvent::End;
        }
        // Windows have >= 1 frame (validated), so this advances at most one window.
        if self.in_window >= self.slots[self.window].frames {
            self.window += 1;
            self.in_window = 0;
            if self.window == self.slots.len() {
                if !self.repeat {
                    self.ended = true;
                    return SourceEvent::End;
                }
                self.window = 0;
            }
        }
        self.pacer.wait(self.clock.as_ref());
        let slot = &self.slots[self.window];
        let img = &self.images[(self.index % self.images.len() as u64) as usize];
        let seed = self.seed.wrapping_add(self.index);
        let made = match slot.effect {
            Effect::Clean => Ok(img.clone()),
            Effect::Fixed(kind, level) => corrupt::apply(img, kind, level, seed),
            Effect::Ramp(kind, from, to) => {
                let t = if slot.frames > 1 { self.in_window as f32 / (slot.frames - 1) as f32 } else { 1.0 };
                corrupt_at(img, kind, from + (to - from) * t, seed)
            }
        };
        let event = match made {
            Ok(image) => SourceEvent::Frame { image, tag: Some(slot.tag.clone()) },
            Err(e) => {
                SourceEvent::BadFrame { reason: format!("frame {} ({}): corruption failed: {e}", self.index, slot.tag) }
            }
        };
        self.index += 1;
        self.in_window += 1;
        event
    }

    fn frame_time(&self) -> Option<std::time::Duration> {
        // `index` already counts the frame just returned.
        let fps = self.frame_fps?;
        Some(std::time::Duration::from_secs_f64(self.index.saturating_sub(1) as f64 / fps))
    }
}
