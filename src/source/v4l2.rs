//! V4L2 cameras: format negotiation, mmap streaming, reconnection with exponential backoff.
//!
//! ```toml
//! [[stream]]
//! name = "cam0"
//! kind = "v4l2"
//! device = "/dev/video0"          # default "/dev/video0"
//! width = 640                     # default 640 (the driver may pick the nearest size)
//! height = 480                    # default 480
//! fps = 15                        # default 15; 0 = leave the driver's rate
//! formats = ["yuyv", "mjpeg"]     # preference order; default ["yuyv", "mjpeg", "rgb24", "grey"]
//! buffers = 4                     # mmap buffers; default 4
//! timeout_s = 5.0                 # no frame for this long = device down; default 5.0
//! reconnect_initial_s = 0.5       # first wait after a failure; default 0.5
//! reconnect_max_s = 30.0          # backoff doubles up to this; default 30.0
//! ```
//!
//! The device-independent logic (format choice [`negotiate`], the [`Backoff`] schedule, the
//! connect/capture/reconnect state machine in [`V4l2Source`], conversion in
//! [`super::convert`]) is separate from the ioctl code: [`V4l2Source`] drives any
//! [`DeviceOpener`], and only the real opener needs the `v4l2` cargo feature and a camera.
//!
//! YUYV is the default first choice: MJPEG saves USB bandwidth but adds compression
//! artefacts, which an uncertainty detector may well notice.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::convert::{self, PixelFormat};
use super::{Source, SourceError, SourceEvent};
use crate::base::clock::Clock;

/// Config of a `kind = "v4l2"` stream.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct V4l2Config {
    /// Device node. Default `/dev/video0`.
    #[serde(default = "default_device")]
    pub device: PathBuf,
    /// Requested width in pixels; the driver may choose the nearest it supports. Default 640.
    #[serde(default = "default_width")]
    pub width: u32,
    /// Requested height in pixels. Default 480.
    #[serde(default = "default_height")]
    pub height: u32,
    /// Requested frame rate; 0 leaves the driver's default. Default 15.
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// Pixel formats in order of preference; the first the device offers is used.
    /// Default `["yuyv", "mjpeg", "rgb24", "grey"]`.
    #[serde(default = "default_formats")]
    pub formats: Vec<PixelFormat>,
    /// Number of mmap buffers. Default 4.
    #[serde(default = "default_buffers")]
    pub buffers: u32,
    /// Seconds without a frame after which the device counts as down. Default 5.0.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Seconds to wait before the first reconnection attempt. Default 0.5.
    #[serde(default = "default_reconnect_initial_s")]
    pub reconnect_initial_s: f64,
    /// The wait doubles after each failed attempt, up to this many seconds. Default 30.0.
    #[serde(default = "default_reconnect_max_s")]
    pub reconnect_max_s: f64,
}

fn default_device() -> PathBuf {
    PathBuf::from("/dev/video0")
}
fn default_width() -> u32 {
    640
}
fn default_height() -> u32 {
    480
}
fn default_fps() -> u32 {
    15
}
fn default_formats() -> Vec<PixelFormat> {
    vec![PixelFormat::Yuyv, PixelFormat::Mjpeg, PixelFormat::Rgb24, PixelFormat::Grey]
}
fn default_buffers() -> u32 {
    4
}
pub(super) fn default_timeout_s() -> f64 {
    5.0
}
pub(super) fn default_reconnect_initial_s() -> f64 {
    0.5
}
pub(super) fn default_reconnect_max_s() -> f64 {
    30.0
}

impl Default for V4l2Config {
    fn default() -> Self {
        Self {
            device: default_device(),
            width: default_width(),
            height: default_height(),
            fps: default_fps(),
            formats: default_formats(),
            buffers: default_buffers(),
            timeout_s: default_timeout_s(),
            reconnect_initial_s: default_reconnect_initial_s(),
            reconnect_max_s: default_reconnect_max_s(),
        }
    }
}

/// Checks `reconnect_initial_s` and `reconnect_max_s` (the v4l2 and rtsp keys) and makes
/// their schedule.
pub(super) fn checked_backoff(initial_s: f64, max_s: f64) -> Result<Backoff, SourceError> {
    let initial = positive_secs("reconnect_initial_s", initial_s)?;
    let max = positive_secs("reconnect_max_s", max_s)?;
    if max < initial {
        return Err(SourceError::Config(format!(
            "`reconnect_max_s` ({max_s}) is less than `reconnect_initial_s` ({initial_s})"
        )));
    }
    Ok(Backoff::new(initial, max))
}

pub(super) fn positive_secs(key: &str, v: f64) -> Result<Duration, SourceError> {
    if v.is_finite() && v > 0.0 && v < 1e9 {
        Ok(Duration::from_secs_f64(v))
    } else {
        Err(SourceError::Config(format!("`{key}` is {v}; use a number of seconds > 0")))
    }
}

impl V4l2Config {
    /// Checks the config without opening the device.
    pub fn validate(&self) -> Result<(), SourceError> {
        if self.width == 0 || self.height == 0 {
            return Err(SourceError::Config(format!(
                "`width`/`height` are {}x{}; both must be > 0",
                self.width, self.height
            )));
        }
        if self.formats.is_empty() {
            return Err(SourceError::Config(
                "`formats` is empty; list at least one of yuyv, mjpeg, rgb24, grey".into(),
            ));
        }
        if !(1..=32).contains(&self.buffers) {
            return Err(SourceError::Config(format!("`buffers` is {}; use 1 to 32 (4 is typical)", self.buffers)));
        }
        positive_secs("timeout_s", self.timeout_s)?;
        checked_backoff(self.reconnect_initial_s, self.reconnect_max_s).map(|_| ())
    }

    /// The reconnection schedule this config asks for (call after [`Self::validate`]).
    pub fn backoff(&self) -> Backoff {
        Backoff::new(
            Duration::from_secs_f64(self.reconnect_initial_s.max(0.0)),
            Duration::from_secs_f64(self.reconnect_max_s.max(0.0)),
        )
    }

    /// Builds the camera source; the device is opened on the first `poll`.
    pub fn build(&self, clock: Arc<dyn Clock>) -> Result<Box<dyn Source>, SourceError> {
        self.validate()?;
        #[cfg(feature = "v4l2")]
        {
            let opener = Box::new(real::V4lOpener::new(self.clone()));
            Ok(Box::new(V4l2Source::new(opener, self.backoff(), clock)))
        }
        #[cfg(not(feature = "v4l2"))]
        {
            let _ = clock;
            Err(SourceError::FeatureDisabled("v4l2"))
        }
    }
}

/// Picks the first preferred format the device offers; returns it and the FourCC to request.
pub fn negotiate(preferences: &[PixelFormat], offered: &[[u8; 4]]) -> Result<(PixelFormat, [u8; 4]), String> {
    for &pf in preferences {
        if let Some(fcc) = pf.fourccs().iter().find(|f| offered.contains(f)) {
            return Ok((pf, *fcc));
        }
    }
    let names: Vec<String> = offered.iter().map(|f| String::from_utf8_lossy(f).into_owned()).collect();
    let wanted: Vec<&str> = preferences.iter().map(|p| p.name()).collect();
    Err(format!(
        "the device offers formats [{}], none of the configured [{}]; add one it offers to \
         `formats` (yuyv, mjpeg, rgb24, grey are supported)",
        names.join(", "),
        wanted.join(", ")
    ))
}

/// Exponential backoff without jitter: `initial`, `2 initial`, `4 initial`, ... capped at `max`.
///
/// No jitter: it spreads out many clients hitting one server, while here each camera is its
/// own local device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A schedule starting at `initial`, capped at `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, next: initial.min(max) }
    }

    /// The wait before the next attempt; doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        d
    }

    /// Back to `initial`, after a successful connection.
    pub fn reset(&mut self) {
        self.next = self.initial.min(self.max);
    }
}

/// The format a device agreed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NegotiatedFormat {
    /// Pixel format.
    pub pixel_format: PixelFormat,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bytes per line (0 = packed).
    pub stride: u32,
}

/// Why a capture failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CaptureError {
    /// This frame is unusable (the driver flagged it), the device is fine.
    #[error("bad frame: {0}")]
    BadFrame(String),
    /// The device is gone or stalled; close it and reconnect.
    #[error("device down: {0}")]
    Down(String),
}

/// An open, streaming capture device.
pub trait CaptureDevice: Send {
    /// The negotiated format of the frames `next_frame` returns.
    fn format(&self) -> NegotiatedFormat;
    /// Blocks until the next frame and copies its bytes into `buf` (cleared first).
    fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<(), CaptureError>;
}

/// Opens (and configures) a capture device; tests supply fakes.
pub trait DeviceOpener: Send {
    /// Opens the device, negotiates the format and starts streaming, or says why not.
    fn open(&mut self) -> Result<Box<dyn CaptureDevice>, String>;
}

enum State {
    /// Not connected; the next attempt is due at `retry_at`.
    Disconnected {
        retry_at: Instant,
    },
    Connected(Box<dyn CaptureDevice>),
}

/// The camera source state machine: connect, capture and convert, on failure `Down` and
/// reconnect after [`Backoff`] delays (one `Down` per failed attempt), on success `Up`.
pub struct V4l2Source {
    opener: Box<dyn DeviceOpener>,
    backoff: Backoff,
    clock: Arc<dyn Clock>,
    state: State,
    buf: Vec<u8>,
}

impl V4l2Source {
    /// A source that will connect through `opener` on its first poll.
    pub fn new(opener: Box<dyn DeviceOpener>, backoff: Backoff, clock: Arc<dyn Clock>) -> Self {
        let retry_at = clock.now();
        Self { opener, backoff, clock, state: State::Disconnected { retry_at }, buf: Vec::new() }
    }

    fn schedule_retry(&mut self) -> Duration {
        let d = self.backoff.next_delay();
        self.state = State::Disconnected { retry_at: self.clock.now() + d };
        d
    }
}

impl Source for V4l2Source {
    fn poll(&mut self) -> SourceEvent {
        match &mut self.state {
            State::Disconnected { retry_at } => {
                let at = *retry_at;
                self.clock.sleep_until(at);
                match self.opener.open() {
                    Ok(dev) => {
                        let f = dev.format();
                        log::info!(
                            "camera streaming {} {}x{} (stride {})",
                            f.pixel_format,
                            f.width,
                            f.height,
                            f.stride
                        );
                        self.backoff.reset();
                        self.state = State::Connected(dev);
                        SourceEvent::Up
                    }
                    Err(reason) => {
                        let d = self.schedule_retry();
                        SourceEvent::Down { reason: format!("{reason}; retrying in {:.1} s", d.as_secs_f64()) }
                    }
                }
            }
            State::Connected(dev) => match dev.next_frame(&mut self.buf) {
                Ok(()) => {
                    let f = dev.format();
                    match convert::to_rgb(
                        f.pixel_format,
                        &self.buf,
                        f.width as usize,
                        f.height as usize,
                        f.stride as usize,
                    ) {
                        Ok(image) => SourceEvent::Frame { image, tag: None },
                        Err(e) => SourceEvent::BadFrame { reason: e.to_string() },
                    }
                }
                Err(CaptureError::BadFrame(reason)) => SourceEvent::BadFrame { reason },
                Err(CaptureError::Down(reason)) => {
                    // Dropping the device closes it before the next attempt.
                    let d = self.schedule_retry();
                    SourceEvent::Down { reason: format!("{reason}; reconnecting in {:.1} s", d.as_secs_f64()) }
                }
            },
        }
    }
}

#[cfg(feature = "v4l2")]
mod real {
    //! The ioctl side, through the `v4l` crate.

    use std::panic::{catch_unwind, AssertUnwindSafe};
    use std::time::Duration;

    use v4l::buffer::Type;
    use v4l::capability::Flags as CapFlags;
    use v4l::io::traits::CaptureStream;
    use v4l::prelude::*;
    use v4l::video::capture::Parameters;
    use v4l::video::Capture;
    use v4l::{Format, FourCC};

    use super::{negotiate, CaptureDevice, CaptureError, DeviceOpener, NegotiatedFormat, V4l2Config};
    use crate::source::convert::PixelFormat;

    /// ENODEV: the device was unplugged.
    const ENODEV: i32 = 19;

    pub(super) struct V4lOpener {
        config: V4l2Config,
    }

    impl V4lOpener {
        pub(super) fn new(config: V4l2Config) -> Self {
            Self { config }
        }
    }

    impl DeviceOpener for V4lOpener {
        fn open(&mut self) -> Result<Box<dyn CaptureDevice>, String> {
            // The v4l crate `expect`s on enum values it does not know; a driver quirk must not
            // take the daemon down, so a panic here is just a failed attempt.
            let config = &self.config;
            match catch_unwind(AssertUnwindSafe(|| open_device(config))) {
                Ok(Ok(dev)) => Ok(Box::new(dev)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(format!("{}: the v4l crate panicked while opening the device", config.device.display())),
            }
        }
    }

    struct V4lDevice {
        // Declared before `_dev` so the stream (and its mappings) drops first.
        stream: Option<MmapStream<'static>>,
        _dev: Device,
        format: NegotiatedFormat,
    }

    fn open_device(cfg: &V4l2Config) -> Result<V4lDevice, String> {
        let name = cfg.device.display().to_string();
        let dev = Device::with_path(&cfg.device).map_err(|e| format!("cannot open {name}: {e}"))?;
        let caps = dev.query_caps().map_err(|e| format!("{name}: VIDIOC_QUERYCAP failed: {e}"))?;
        if !caps.capabilities.contains(CapFlags::VIDEO_CAPTURE | CapFlags::STREAMING) {
            return Err(format!(
                "{name} ({}) cannot stream video capture; is it the camera's metadata node? \
                 try the other /dev/video*",
                caps.card
            ));
        }
        let offered: Vec<[u8; 4]> = dev
            .enum_formats()
            .map_err(|e| format!("{name}: cannot list formats: {e}"))?
            .iter()
            .map(|d| d.fourcc.repr)
            .collect();
        let (_, fourcc) = negotiate(&cfg.formats, &offered).map_err(|e| format!("{name}: {e}"))?;
        let got = dev
            .set_format(&Format::new(cfg.width, cfg.height, FourCC::new(&fourcc)))
            .map_err(|e| format!("{name}: cannot set format: {e}"))?;
        let pixel_format = PixelFormat::from_fourcc(got.fourcc.repr).ok_or_else(|| {
            format!(
                "{name}: the driver switched to format {} which cannot be converted",
                String::from_utf8_lossy(&got.fourcc.repr)
            )
        })?;
        if got.width != cfg.width || got.height != cfg.height {
            log::warn!("{name}: asked for {}x{}, the driver gives {}x{}", cfg.width, cfg.height, got.width, got.height);
        }
        if cfg.fps > 0 {
            if let Err(e) = dev.set_params(&Parameters::with_fps(cfg.fps)) {
                log::warn!("{name}: cannot set {} fps ({e}); using the driver's rate", cfg.fps);
            }
        }
        let mut stream = MmapStream::with_buffers(&dev, Type::VideoCapture, cfg.buffers)
            .map_err(|e| format!("{name}: cannot map buffers: {e}"))?;
        stream.set_timeout(Duration::from_secs_f64(cfg.timeout_s.clamp(0.001, 3600.0)));
        Ok(V4lDevice {
            stream: Some(stream),
            _dev: dev,
            format: NegotiatedFormat { pixel_format, width: got.width, height: got.height, stride: got.stride },
        })
    }

    impl CaptureDevice for V4lDevice {
        fn format(&self) -> NegotiatedFormat {
            self.format
        }

        fn next_frame(&mut self, buf: &mut Vec<u8>) -> Result<(), CaptureError> {
            let stream = self.stream.as_mut().ok_or_else(|| CaptureError::Down("stream already closed".into()))?;
            let (data, meta) = match CaptureStream::next(stream) {
                Ok(x) => x,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err(CaptureError::Down("no frame before `timeout_s`".into()))
                }
                Err(e) if e.raw_os_error() == Some(ENODEV) => {
                    return Err(CaptureError::Down("device unplugged (ENODEV)".into()))
                }
                Err(e) => return Err(CaptureError::Down(format!("capture failed: {e}"))),
            };
            if meta.flags.contains(v4l::buffer::Flags::ERROR) {
                return Err(CaptureError::BadFrame("the driver flagged the buffer as corrupt".into()));
            }
            let used = match meta.bytesused as usize {
                0 => data.len(),
                n => n.min(data.len()),
            };
            buf.clear();
            buf.extend_from_slice(&data[..used]);
            Ok(())
        }
    }

    impl Drop for V4lDevice {
        fn drop(&mut self) {
            // The v4l stream panics in Drop when STREAMOFF fails with anything but ENODEV;
            // a dying camera must not kill the capture thread.
            if let Some(stream) = self.stream.take() {
                if catch_unwind(AssertUnwindSafe(move || drop(stream))).is_err() {
                    log::warn!("closing the camera stream failed; the device may be in a bad state");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(3));
        let got: Vec<u128> = (0..6).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, vec![500, 1000, 2000, 3000, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(500));
    }

    #[test]
    fn negotiate_takes_first_offered_preference() {
        let offered = [*b"MJPG", *b"YUYV"];
        let (pf, fcc) = negotiate(&[PixelFormat::Yuyv, PixelFormat::Mjpeg], &offered).unwrap();
        assert_eq!((pf, &fcc), (PixelFormat::Yuyv, b"YUYV"));
        let (pf, fcc) = negotiate(&[PixelFormat::Grey, PixelFormat::Mjpeg], &offered).unwrap();
        assert_eq!((pf, &fcc), (PixelFormat::Mjpeg, b"MJPG"));
        let (pf, fcc) = negotiate(&[PixelFormat::Mjpeg], &[*b"JPEG"]).unwrap();
        assert_eq!((pf, &fcc), (PixelFormat::Mjpeg, b"JPEG"));
        let err = negotiate(&[PixelFormat::Rgb24], &offered).unwrap_err();
        assert!(err.contains("MJPG, YUYV"), "{err}");
    }

    #[test]
    fn validate_names_the_key() {
        let c = V4l2Config { reconnect_max_s: 0.1, ..V4l2Config::default() };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("reconnect_max_s"), "{e}");
        let c = V4l2Config { formats: vec![], ..V4l2Config::default() };
        assert!(c.validate().unwrap_err().to_string().contains("formats"));
    }
}
