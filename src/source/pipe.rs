//! Raw frames from stdin, a FIFO or a file: the way in for anything ffmpeg can read
//! (RTSP cameras, video files, cameras V4L2 cannot drive).
//!
//! ```toml
//! [[stream]]
//! name = "door"
//! kind = "pipe"
//! path = "/run/gradwatch/door.rgb"   # default "-" = stdin
//! width = 640                        # required
//! height = 480                       # required
//! pixel_format = "rgb24"             # rgb24 (default) or gray8
//! fps = 0                            # default 0 = as fast as frames arrive
//! reopen = true                      # default false; reopen the FIFO when its writer exits
//! timeout_s = 5.0                    # no data (or no writer) for this long = down; default 5.0
//! ```
//!
//! Each frame is exactly `width * height * 3` (rgb24) or `width * height` (gray8) bytes, rows
//! top to bottom, no padding: ffmpeg's `rawvideo`. Feeding it from an RTSP camera:
//!
//! ```text
//! ffmpeg -nostdin -loglevel error -rtsp_transport tcp -i rtsp://user:pass@camera/stream \
//!        -vf scale=640:480 -r 10 -pix_fmt rgb24 -f rawvideo - | gradwatch run ...   (path = "-")
//! ```
//!
//! from a V4L2 camera, or a video file, into a FIFO that the daemon reads with `reopen = true`
//! (so restarting ffmpeg does not end the stream):
//!
//! ```text
//! mkfifo /run/gradwatch/door.rgb
//! ffmpeg -nostdin -f v4l2 -i /dev/video0 -vf scale=640:480 -pix_fmt rgb24 -f rawvideo -y /run/gradwatch/door.rgb
//! ffmpeg -nostdin -re -i clip.mp4 -vf scale=640:480 -pix_fmt gray -f rawvideo -y /run/gradwatch/door.rgb
//! ```
//!
//! A short read at the end of the input is a [`SourceEvent::BadFrame`] for the partial frame,
//! then [`SourceEvent::End`] (or, with `reopen`, `Down` and a wait for the next writer). The
//! FIFO is opened on the first `poll`, not at build time, because opening a FIFO blocks until
//! a writer appears.
//!
//! Opening and reading run on a helper thread (`super::blocking`): when no frame arrives for
//! `timeout_s` (a hung ffmpeg, a FIFO nobody opened) the source returns
//! [`SourceEvent::Down`] (the stream's `stream_down`, `/healthz` unhealthy) and again after each
//! further `timeout_s`, while it keeps waiting; the next complete frame brings the stream up.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::blocking::{check_timeout, may_access, Blocking, Wait};
use super::convert;
use super::{check_fps, Source, SourceError, SourceEvent};
use crate::base::clock::{Clock, Pacer};

/// Pixel layout of a raw pipe frame.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RawFormat {
    /// 3 bytes a pixel, R G B (ffmpeg `-pix_fmt rgb24`).
    #[default]
    Rgb24,
    /// 1 byte a pixel, replicated to R = G = B (ffmpeg `-pix_fmt gray`).
    Gray8,
}

impl RawFormat {
    /// Bytes a pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            RawFormat::Rgb24 => 3,
            RawFormat::Gray8 => 1,
        }
    }
}

/// Config of a `kind = "pipe"` stream.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PipeConfig {
    /// `-` for stdin, or the path of a FIFO or file. Default `-`.
    #[serde(default = "default_path")]
    pub path: PathBuf,
    /// Frame width in pixels. Required.
    pub width: usize,
    /// Frame height in pixels. Required.
    pub height: usize,
    /// `rgb24` (default) or `gray8`.
    #[serde(default)]
    pub pixel_format: RawFormat,
    /// Frames a second; 0 takes frames as fast as they arrive (the writer paces). Default 0.
    #[serde(default)]
    pub fps: f64,
    /// At the end of the input, wait for a new writer instead of ending (FIFOs). Default false;
    /// not allowed with stdin.
    #[serde(default)]
    pub reopen: bool,
    /// Seconds without a complete frame (or without a writer) after which the stream counts as
    /// down. Default 5.0.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
}

fn default_timeout_s() -> f64 {
    5.0
}

fn default_path() -> PathBuf {
    PathBuf::from("-")
}

/// Frames larger than this are a config mistake, not a camera.
const MAX_FRAME_BYTES: usize = 1 << 30;

/// Wait between attempts to reopen a path that cannot be opened.
const REOPEN_DELAY: Duration = Duration::from_secs(1);

fn is_stdin(path: &Path) -> bool {
    path.as_os_str() == "-"
}

impl PipeConfig {
    /// Bytes in one frame.
    pub fn frame_bytes(&self) -> Option<usize> {
        self.width.checked_mul(self.height)?.checked_mul(self.pixel_format.bytes_per_pixel())
    }

    /// Checks the config without opening the path.
    pub fn validate(&self) -> Result<(), SourceError> {
        if self.width == 0 || self.height == 0 {
            return Err(SourceError::Config(format!(
                "`width`/`height` are {}x{}; both must be > 0 and match the writer's frames",
                self.width, self.height
            )));
        }
        match self.frame_bytes() {
            Some(n) if n <= MAX_FRAME_BYTES => {}
            _ => {
                return Err(SourceError::Config(format!(
                    "`width`/`height` {}x{} make frames over 1 GiB",
                    self.width, self.height
                )))
            }
        }
        if self.reopen && is_stdin(&self.path) {
            return Err(SourceError::Config("`reopen` needs a FIFO `path`; stdin cannot be reopened".into()));
        }
        check_timeout(self.timeout_s)?;
        check_fps(self.fps)
    }
}

enum State {
    /// Not open yet, or waiting to reopen.
    Closed {
        retry_at: Option<Instant>,
    },
    /// Waiting for the open (a FIFO's open blocks until a writer appears).
    Opening,
    Open,
    /// The input ended (or failed); what comes next depends on `reopen`.
    AtEnd,
    Ended,
}

/// The reader thread's state: the open input, if any.
type Input = Option<Box<dyn Read + Send>>;

/// What the reader thread answers.
enum Reply {
    Opened(std::io::Result<()>),
    /// The frame buffer back, and how many bytes of it were filled.
    Read(Vec<u8>, std::io::Result<usize>),
}

/// Reads raw frames (see the module doc).
pub struct PipeSource {
    path: PathBuf,
    width: usize,
    height: usize,
    format: RawFormat,
    reopen: bool,
    timeout: Duration,
    opened_before: bool,
    state: State,
    /// The frame buffer; `None` while the reader thread has it.
    buf: Option<Vec<u8>>,
    frame_bytes: usize,
    /// A read was started and not answered yet (the pacer already waited for it).
    reading: bool,
    worker: Blocking<Input, Reply>,
    pacer: Pacer,
    clock: Arc<dyn Clock>,
}

impl PipeSource {
    /// Checks that the path exists and is readable; it is opened on the first `poll`.
    pub fn new(config: &PipeConfig, clock: Arc<dyn Clock>) -> Result<Self, SourceError> {
        config.validate()?;
        if !is_stdin(&config.path) {
            let io = |source| SourceError::Io { path: config.path.clone(), source };
            std::fs::metadata(&config.path).map_err(io)?;
            // access(2), not open(2): opening a FIFO would block, or release a writer waiting
            // in its own open only to hit EPIPE when we close again.
            may_access(&config.path, libc::R_OK).map_err(io)?;
        }
        let frame_bytes = config.frame_bytes().unwrap_or(0);
        let name = config.path.file_name().map_or_else(|| "pipe".into(), |n| n.to_string_lossy().into_owned());
        Ok(Self {
            path: config.path.clone(),
            width: config.width,
            height: config.height,
            format: config.pixel_format,
            reopen: config.reopen,
            timeout: check_timeout(config.timeout_s)?,
            opened_before: false,
            state: State::Closed { retry_at: None },
            buf: Some(vec![0; frame_bytes]),
            frame_bytes,
            reading: false,
            worker: Blocking::new(format!("pipe:{name}"), None),
            pacer: Pacer::new(config.fps),
            clock,
        })
    }

    fn convert(&self, buf: &[u8]) -> SourceEvent {
        let (w, h) = (self.width, self.height);
        let res = match self.format {
            RawFormat::Rgb24 => convert::rgb24_to_rgb(buf, w, h, 0),
            RawFormat::Gray8 => convert::grey_to_rgb(buf, w, h, 0),
        };
        match res {
            Ok(image) => SourceEvent::Frame { image, tag: None },
            Err(e) => SourceEvent::BadFrame { reason: e.to_string() },
        }
    }

    /// The `Down` for a wait that timed out.
    fn stalled(&self, what: &str) -> SourceEvent {
        SourceEvent::Down {
            reason: format!(
                "{}: {what} for {:.1} s (`timeout_s`); still waiting",
                self.path.display(),
                self.timeout.as_secs_f64()
            ),
        }
    }
}

fn open_input(path: &Path) -> std::io::Result<Box<dyn Read + Send>> {
    if is_stdin(path) {
        Ok(Box::new(std::io::stdin()))
    } else {
        Ok(Box::new(File::open(path)?))
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

impl Source for PipeSource {
    fn poll(&mut self) -> SourceEvent {
        loop {
            match &mut self.state {
                State::Ended => return SourceEvent::End,
                State::AtEnd => {
                    if self.reopen {
                        self.state = State::Closed { retry_at: None };
                        return SourceEvent::Down {
                            reason: format!(
                                "{}: end of input (writer gone); waiting for a new writer",
                                self.path.display()
                            ),
                        };
                    }
                    self.state = State::Ended;
                    return SourceEvent::End;
                }
                State::Closed { retry_at } => {
                    if let Some(t) = *retry_at {
                        self.clock.sleep_until(t);
                    }
                    self.state = State::Opening;
                }
                State::Opening => {
                    let path = self.path.clone();
                    let job = move |input: &mut Input| {
                        // Close the previous writer's end first.
                        *input = None;
                        Reply::Opened(open_input(&path).map(|r| *input = Some(r)))
                    };
                    match self.worker.run(job, self.timeout) {
                        Wait::Done(Reply::Opened(Ok(()))) => {
                            self.state = State::Open;
                            if self.opened_before {
                                return SourceEvent::Up;
                            }
                            self.opened_before = true;
                        }
                        Wait::Done(Reply::Opened(Err(e))) => {
                            let reason = format!("cannot open {}: {e}", self.path.display());
                            self.state = if self.reopen {
                                State::Closed { retry_at: Some(self.clock.now() + REOPEN_DELAY) }
                            } else {
                                State::Ended
                            };
                            return SourceEvent::Down { reason };
                        }
                        Wait::Done(Reply::Read(..)) => {}
                        Wait::TimedOut => return self.stalled("no writer"),
                        Wait::Failed(reason) => {
                            self.state = State::Ended;
                            return SourceEvent::Down { reason: format!("{}: {reason}", self.path.display()) };
                        }
                    }
                }
                State::Open => {
                    if !self.reading {
                        self.pacer.wait(self.clock.as_ref());
                        self.reading = true;
                    }
                    let mut buf = self.buf.take().unwrap_or_default();
                    buf.resize(self.frame_bytes, 0);
                    let job = move |input: &mut Input| {
                        let res = match input.as_mut() {
                            Some(r) => read_full(r.as_mut(), &mut buf),
                            None => Err(std::io::Error::other("the input is not open")),
                        };
                        Reply::Read(buf, res)
                    };
                    let (buf, res) = match self.worker.run(job, self.timeout) {
                        Wait::Done(Reply::Read(buf, res)) => (buf, res),
                        Wait::Done(Reply::Opened(_)) => continue,
                        Wait::TimedOut => return self.stalled("no complete frame"),
                        Wait::Failed(reason) => {
                            self.reading = false;
                            self.state = State::Ended;
                            return SourceEvent::Down { reason: format!("{}: {reason}", self.path.display()) };
                        }
                    };
                    self.reading = false;
                    let want = self.frame_bytes;
                    let ev = match res {
                        Ok(n) if n == want => Some(self.convert(&buf)),
                        Ok(0) => {
                            self.state = State::AtEnd;
                            None
                        }
                        Ok(n) => {
                            self.state = State::AtEnd;
                            Some(SourceEvent::BadFrame {
                                reason: format!(
                                    "{}: input ended in the middle of a frame ({n} of {want} \
                                     bytes); check width/height/pixel_format against the writer",
                                    self.path.display()
                                ),
                            })
                        }
                        Err(e) => {
                            self.state = State::AtEnd;
                            Some(SourceEvent::BadFrame { reason: format!("{}: read failed: {e}", self.path.display()) })
                        }
                    };
                    self.buf = Some(buf);
                    if let Some(ev) = ev {
                        return ev;
                    }
                }
            }
        }
    }
}
