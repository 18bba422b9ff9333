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
//! schedule = [
//!   { duration_s = 10.0 },                                   # clean
//!   { duration_s = 10.0, corruption = "haze", level = 3 },
//!   { frames = 50, corruption = "noise", level = 5 },
//! ]
//! ```
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

use super::clock::{Clock, Pacer};
use super::{check_fps, Source, SourceError, SourceEvent};
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
    /// Corruption severity, 1 to 5; required with `corruption`, not allowed without.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<u8>,
}

impl Window {
    /// The tag of this window's frames: `clean` or e.g. `haze:3`.
    pub fn tag(&self) -> String {
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
        match (self.corruption, self.level) {
            (Some(_), Some(l)) if LEVELS.contains(&l) => Ok(()),
            (Some(_), Some(l)) => Err(format!("`level` is {l}; use 1 to 5")),
            (Some(c), None) => Err(format!("`corruption` = \"{c}\" needs a `level` (1 to 5)")),
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
}

impl ReplayConfig {
    /// Checks the config without reading the array. An empty schedule is fine here (its length
    /// depends on the array).
    pub fn validate(&self) -> Result<(), SourceError> {
        check_fps(self.fps)?;
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

struct Slot {
    frames: u64,
    corruption: Option<(Corruption, u8)>,
    tag: String,
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
            vec![Slot { frames: images.len() as u64, corruption: None, tag: "clean".into() }]
        } else {
            config
                .schedule
                .iter()
                .zip(config.window_frames()?)
                .map(|(w, frames)| Slot { frames, corruption: w.corruption.zip(w.level), tag: w.tag() })
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
            pacer: Pacer::new(config.fps),
            clock,
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
        let event = match slot.corruption {
            None => SourceEvent::Frame { image: img.clone(), tag: Some(slot.tag.clone()) },
            Some((kind, level)) => match corrupt::apply(img, kind, level, self.seed.wrapping_add(self.index)) {
                Ok(image) => SourceEvent::Frame { image, tag: Some(slot.tag.clone()) },
                Err(e) => SourceEvent::BadFrame {
                    reason: format!("frame {} ({}): corruption failed: {e}", self.index, slot.tag),
                },
            },
        };
        self.index += 1;
        self.in_window += 1;
        event
    }
}
