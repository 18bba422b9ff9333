//! Frame sources: where the daemon's frames come from.
//!
//! A [`Source`] is a blocking iterator of [`SourceEvent`]s: frames, bad frames (skipped and
//! counted), connection changes and the end of the stream. The pipeline runs one capture thread
//! per stream calling [`Source::poll`] in a loop, crops to the stream's [`Roi`] and pushes into
//! a bounded queue configured by [`QueueConfig`]. Sources pace themselves through an injected
//! [`Clock`], so tests run on a [`SimClock`](crate::base::clock::SimClock) without sleeping.
//!
//! Five kinds, one config struct each, chosen by `kind` in the stream's TOML table:
//!
//! | kind        | reads                                        | module        |
//! |-------------|----------------------------------------------|---------------|
//! | `v4l2`      | a V4L2 camera (mmap streaming), reconnecting | [`v4l2`]      |
//! | `directory` | PNG/JPEG/PPM files in name order             | [`directory`] |
//! | `pipe`      | raw RGB24/GRAY8 frames from stdin or a FIFO  | [`pipe`]      |
//! | `replay`    | an `.npy` image array with corruption windows| [`replay`]    |
//! | `rtsp`      | an IP camera (H.264, MJPEG), reconnecting    | [`rtsp`]      |
//!
//! ```toml
//! [[stream]]
//! name = "cam0"                 # required, unique
//! enabled = true                # default true
//! roi = { x = 80, y = 0, width = 480, height = 480 }   # default: the whole frame
//! queue = { size = 8, policy = "drop_oldest" }          # defaults shown
//! kind = "v4l2"                 # then the kind's own keys, in the same table
//! device = "/dev/video0"
//! ```
//!
//! The common keys and the kind's keys share one flat table. serde's `flatten` cannot be
//! combined with `deny_unknown_fields`, so [`StreamConfig`] deserializes by hand: it splits the
//! common keys off and hands the rest to the internally tagged [`SourceConfig`], both strict.

pub(crate) mod blocking;
pub mod convert;
pub mod directory;
pub mod h264;
pub mod pipe;
pub mod replay;
pub mod rtsp;
pub mod v4l2;

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::base::clock::Clock;
use crate::frame::RgbImage;

pub use convert::{ConvertError, PixelFormat};
pub use directory::{list_files, DirectoryConfig};
pub use pipe::{PipeConfig, RawFormat};
pub use replay::{ReplayConfig, Window};
pub use rtsp::{RtspConfig, RtspTransport};
pub use v4l2::V4l2Config;

/// What one [`Source::poll`] returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceEvent {
    /// A frame.
    Frame {
        /// The pixels (full frame; the pipeline applies the ROI).
        image: RgbImage,
        /// What the source knows about the frame: `clean` / `haze:3` for replay windows, the
        /// file name for a directory, `None` for live sources.
        tag: Option<String>,
    },
    /// A frame that could not be read or decoded; it is skipped and counted, the stream goes on.
    BadFrame {
        /// Why (names the file or the decoding problem).
        reason: String,
    },
    /// The source lost its input (camera unplugged, FIFO writer gone). It keeps retrying; each
    /// failed retry returns another `Down`, so `poll` returns at least once per backoff step and
    /// the caller can check for shutdown. Only the first `Down` after an `Up` is a transition.
    Down {
        /// Why.
        reason: String,
    },
    /// The source (re)connected. A live source's first event is `Up` (or `Down`).
    Up,
    /// No more frames, ever; every later `poll` returns `End` again.
    End,
}

/// A stream of frames. `poll` blocks until the next event, pacing itself with its clock.
pub trait Source: Send {
    /// The next event.
    fn poll(&mut self) -> SourceEvent;

    /// The frame time of the frame the last `poll` returned, from the stream's first frame,
    /// when the source keeps its own frame clock (a replay with `realtime = false`); `None`
    /// (the default): the pipeline stamps frames with its clock.
    fn frame_time(&self) -> Option<std::time::Duration> {
        None
    }

    /// Frames received and released without decoding since the last call, because the
    /// stream's `score_fps` would not have scored them (an RTSP stream's disposable frames).
    /// The capture thread counts them as captured and skipped. Default 0.
    fn take_skipped(&mut self) -> u64 {
        0
    }
}

/// Errors building a source from its config.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The config is inconsistent; the message names the key.
    #[error("invalid stream config: {0}")]
    Config(String),
    /// A file or directory the config names cannot be read.
    #[error("cannot read {path}: {source}; check the `path` in the stream config")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A directory source found no files to play.
    #[error("directory {0} holds no image files (.png, .jpg, .jpeg, .ppm, .pnm); put frames there or fix `path`")]
    EmptyDirectory(PathBuf),
    /// A replay array or a directory is unreadable, or an array has the wrong shape or type.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// The binary was built without the cargo feature this kind needs.
    #[error("stream kind `{0}` is not compiled in; rebuild with `--features {0}`")]
    FeatureDisabled(&'static str),
}

/// A rectangle of interest in frame pixels; the pipeline crops every frame to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Roi {
    /// Left edge, pixels from the left. Required.
    pub x: usize,
    /// Top edge, pixels from the top. Required.
    pub y: usize,
    /// Width in pixels, > 0. Required.
    pub width: usize,
    /// Height in pixels, > 0. Required.
    pub height: usize,
}

impl Roi {
    /// Crops `img` to this rectangle, or `None` when the rectangle does not lie wholly inside
    /// the image (a config that does not match the camera's resolution).
    pub fn crop(&self, img: &RgbImage) -> Option<RgbImage> {
        let fits_x = self.x.checked_add(self.width).is_some_and(|r| r <= img.width);
        let fits_y = self.y.checked_add(self.height).is_some_and(|b| b <= img.height);
        (fits_x && fits_y).then(|| img.crop(self.x, self.y, self.width, self.height))
    }
}

/// What the capture thread does when the stream's queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DropPolicy {
    /// Drop the oldest queued frame (live cameras: latency matters more than completeness).
    #[default]
    DropOldest,
    /// Block the capture thread until there is room (replays: every frame is scored).
    Block,
}

/// The bounded queue between a stream's capture thread and inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Frames the queue holds. Default 8.
    #[serde(default = "default_queue_size")]
    pub size: usize,
    /// `drop_oldest` (default) or `block`.
    #[serde(default)]
    pub policy: DropPolicy,
}

fn default_queue_size() -> usize {
    8
}

fn default_true() -> bool {
    true
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self { size: default_queue_size(), policy: DropPolicy::default() }
    }
}

/// The kind-specific part of a stream, selected by its `kind` key.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    /// `kind = "v4l2"`: a V4L2 camera.
    V4l2(V4l2Config),
    /// `kind = "directory"`: image files in name order.
    Directory(DirectoryConfig),
    /// `kind = "pipe"`: raw frames from stdin or a FIFO.
    Pipe(PipeConfig),
    /// `kind = "replay"`: an `.npy` array with a corruption schedule.
    Replay(ReplayConfig),
    /// `kind = "rtsp"`: an IP camera.
    Rtsp(RtspConfig),
}

impl SourceConfig {
    /// Makes the source's relative paths absolute against `base` (the config's directory).
    pub fn resolve_paths(&mut self, base: &std::path::Path) {
        match self {
            SourceConfig::V4l2(_) => {}
            SourceConfig::Directory(c) => crate::base::path::resolve_path(&mut c.path, base),
            SourceConfig::Pipe(c) => crate::base::path::resolve_path(&mut c.path, base),
            SourceConfig::Replay(c) => crate::base::path::resolve_path(&mut c.path, base),
            // `password_file` is looked up as the MQTT sink's is (systemd credentials).
            SourceConfig::Rtsp(_) => {}
        }
    }

    /// The `kind` name.
    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::V4l2(_) => "v4l2",
            SourceConfig::Directory(_) => "directory",
            SourceConfig::Pipe(_) => "pipe",
            SourceConfig::Replay(_) => "replay",
            SourceConfig::Rtsp(_) => "rtsp",
        }
    }

    /// Checks the config without touching files or devices.
    pub fn validate(&self) -> Result<(), SourceError> {
        match self {
            SourceConfig::V4l2(c) => c.validate(),
            SourceConfig::Directory(c) => c.validate(),
            SourceConfig::Pipe(c) => c.validate(),
            SourceConfig::Replay(c) => c.validate(),
            SourceConfig::Rtsp(c) => c.validate(),
        }
    }

    /// Validates, then builds the source. Directory listings and replay arrays are read here;
    /// cameras and FIFOs are opened on the first `poll` (so the daemon starts while a camera
    /// is unplugged, and does not block on a FIFO with no writer).
    pub fn build(&self, clock: Arc<dyn Clock>) -> Result<Box<dyn Source>, SourceError> {
        self.validate()?;
        Ok(match self {
            SourceConfig::V4l2(c) => c.build(clock)?,
            SourceConfig::Directory(c) => Box::new(directory::DirectorySource::new(c, clock)?),
            SourceConfig::Pipe(c) => Box::new(pipe::PipeSource::new(c, clock)?),
            SourceConfig::Replay(c) => Box::new(replay::ReplaySource::new(c, clock)?),
            SourceConfig::Rtsp(c) => c.build(clock, None)?,
        })
    }
}

/// One `[[stream]]` table: the common keys plus the kind's keys, flat.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StreamConfig {
    /// Stream name, used in frames, alerts and metrics. Required, non-empty.
    pub name: String,
    /// Whether the daemon runs this stream. Default `true`.
    pub enabled: bool,
    /// Crop applied to every frame before inference. Default: none (the whole frame).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roi: Option<Roi>,
    /// The capture queue. Default `{ size = 8, policy = "drop_oldest" }`.
    pub queue: QueueConfig,
    /// Score at most this many frames per second, evenly spaced in frame time; the others are
    /// captured and released unscored (metric `frames_skipped_total`, not drops). Default:
    /// unset, every frame.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score_fps: Option<f64>,
    /// `baseline = { learn_minutes = 10 }`: learn this stream's own clean score distribution
    /// for the `cusum` alert policy (see `crate::alert::baseline`). Default unset: the
    /// calibration's fallback.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline: Option<crate::alert::BaselineConfig>,
    /// `kind` and the kind's keys.
    #[serde(flatten)]
    pub source: SourceConfig,
}

/// The common keys, strict.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CommonKeys {
    name: String,
    #[serde(default = "default_true")]
    enabled: bool,
    #[serde(default)]
    roi: Option<Roi>,
    #[serde(default)]
    queue: QueueConfig,
    #[serde(default)]
    score_fps: Option<f64>,
    #[serde(default)]
    baseline: Option<crate::alert::BaselineConfig>,
}

const COMMON_KEYS: [&str; 6] = ["name", "enabled", "roi", "queue", "score_fps", "baseline"];

impl<'de> Deserialize<'de> for StreamConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut rest = toml::Table::deserialize(d)?;
        let mut common = toml::Table::new();
        for key in COMMON_KEYS {
            if let Some(v) = rest.remove(key) {
                common.insert(key.to_string(), v);
            }
        }
        let who = match common.get("name").and_then(|v| v.as_str()) {
            Some(n) => format!("stream `{n}`"),
            None => "stream".to_string(),
        };
        let c = CommonKeys::deserialize(toml::Value::Table(common))
            .map_err(|e| D::Error::custom(format!("{who}: {}", e.message())))?;
        let source = SourceConfig::deserialize(toml::Value::Table(rest)).map_err(|e| {
            let mut msg = format!("{who}: {}", e.message());
            if msg.contains("unknown field") {
                msg.push_str(" (or one of the common keys `name`, `enabled`, `roi`, `queue`, `score_fps`, `baseline`)");
            }
            D::Error::custom(msg)
        })?;
        Ok(StreamConfig {
            name: c.name,
            enabled: c.enabled,
            roi: c.roi,
            queue: c.queue,
            score_fps: c.score_fps,
            baseline: c.baseline,
            source,
        })
    }
}

impl StreamConfig {
    /// Checks the common keys and the kind's keys without touching files or devices.
    pub fn validate(&self) -> Result<(), SourceError> {
        if self.name.trim().is_empty() {
            return Err(SourceError::Config("`name` is empty; give every stream a unique name".into()));
        }
        let who = &self.name;
        if let Some(r) = self.roi {
            if r.width == 0 || r.height == 0 {
                return Err(SourceError::Config(format!(
                    "stream `{who}`: `roi` is {}x{}; width and height must be > 0",
                    r.width, r.height
                )));
            }
        }
        if let Some(b) = &self.baseline {
            b.validate().map_err(|e| SourceError::Config(format!("stream `{who}`: {e}")))?;
        }
        if !(1..=MAX_QUEUE).contains(&self.queue.size) {
            return Err(SourceError::Config(format!(
                "stream `{who}`: `queue.size` = {} must be in 1..={MAX_QUEUE}",
                self.queue.size
            )));
        }
        if let Some(f) = self.score_fps {
            if !(f.is_finite() && (MIN_FPS..=MAX_FPS).contains(&f)) {
                return Err(SourceError::Config(format!(
                    "stream `{who}`: `score_fps` = {f} must be in {MIN_FPS}..={MAX_FPS} (leave it out to score \
                     every frame)"
                )));
            }
        }
        self.source.validate().map_err(|e| match e {
            SourceError::Config(m) => SourceError::Config(format!("stream `{who}`: {m}")),
            other => other,
        })
    }

    /// Validates, then builds the stream's source (see [`SourceConfig::build`]).
    pub fn build(&self, clock: Arc<dyn Clock>) -> Result<Box<dyn Source>, SourceError> {
        self.validate()?;
        match &self.source {
            // The RTSP source skips decoding frames `score_fps` would not score.
            SourceConfig::Rtsp(c) => c.build(clock, self.score_fps),
            other => other.build(clock),
        }
    }
}

/// Largest `queue.size` of a stream (frames held in memory).
pub const MAX_QUEUE: usize = 100_000;
/// Smallest non-zero frame rate (`fps`, `score_fps`): one frame in about 17 minutes.
pub const MIN_FPS: f64 = 0.001;
/// Largest frame rate.
pub const MAX_FPS: f64 = 10_000.0;

/// Checks a frame rate: 0 (as fast as possible) or in [`MIN_FPS`]`..=`[`MAX_FPS`] (a rate
/// like 1e-300 made the frame interval overflow a `Duration`).
pub(crate) fn check_fps(fps: f64) -> Result<(), SourceError> {
    if fps == 0.0 || (fps.is_finite() && (MIN_FPS..=MAX_FPS).contains(&fps)) {
        Ok(())
    } else {
        Err(SourceError::Config(format!(
            "`fps` is {fps}; use 0 (as fast as possible) or a frame rate in {MIN_FPS}..={MAX_FPS}"
        )))
    }
}
