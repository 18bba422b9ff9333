//! Image files from a directory, in name order.
//!
//! ```toml
//! [[stream]]
//! name = "folder"
//! kind = "directory"
//! path = "frames/"     # required
//! fps = 2.0            # default 0 = as fast as possible (then use queue.policy = "block")
//! loop = false         # default false: End after the last file
//! timeout_s = 5.0      # a file that takes longer to read = down; default 5.0
//! ```
//!
//! The directory is listed once, when the source is built, by the same rule as
//! `gradwatch score DIR` ([`crate::data::list_image_files`]): regular files with an image
//! extension (`.png`, `.jpg`, `.jpeg`, `.ppm`, `.pnm`, any case), not starting with `.`, sorted
//! by file name byte-wise (so number frames with zero padding: `0001.png`). The format is
//! detected from the content; a file that does not decode is a [`SourceEvent::BadFrame`]
//! naming it, and the stream goes on. Each frame's tag is its file name.
//! Files are read on a helper thread: one that takes longer than `timeout_s` (a stalled
//! network mount) makes the stream [`SourceEvent::Down`] until it arrives.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::frame::RgbImage;

use super::blocking::{check_timeout, Blocking, Wait};
use super::{check_fps, Source, SourceError, SourceEvent};
use crate::base::clock::{Clock, Pacer};
use crate::data::{self, DataError};

/// Config of a `kind = "directory"` stream.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DirectoryConfig {
    /// The directory. Required.
    pub path: PathBuf,
    /// Frames a second; 0 plays as fast as the consumer takes them. Default 0.
    #[serde(default)]
    pub fps: f64,
    /// Start again from the first file after the last. Default false.
    #[serde(default, rename = "loop")]
    pub looping: bool,
    /// Seconds a file may take to read and decode before the stream counts as down. Default 5.0.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
}

fn default_timeout_s() -> f64 {
    5.0
}

impl DirectoryConfig {
    /// Checks the config without reading the directory.
    pub fn validate(&self) -> Result<(), SourceError> {
        if self.path.as_os_str().is_empty() {
            return Err(SourceError::Config("`path` is empty".into()));
        }
        check_timeout(self.timeout_s)?;
        check_fps(self.fps)
    }
}

/// Lists the files a directory source plays, in play order.
pub fn list_files(dir: &Path) -> Result<Vec<PathBuf>, SourceError> {
    let files = data::list_image_files(dir).map_err(|e| match e {
        DataError::Io { path, source } => SourceError::Io { path, source },
        e => SourceError::Data(e),
    })?;
    if files.is_empty() {
        return Err(SourceError::EmptyDirectory(dir.to_path_buf()));
    }
    Ok(files)
}

/// Plays a directory's files (see the module doc).
pub struct DirectorySource {
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
    ended: bool,
    /// A file read was started and not answered yet (the pacer already waited for it).
    reading: bool,
    timeout: std::time::Duration,
    worker: Blocking<(), Result<RgbImage, String>>,
    pacer: Pacer,
    clock: Arc<dyn Clock>,
}

impl DirectorySource {
    /// Lists the directory; an empty or unreadable one is an error.
    pub fn new(config: &DirectoryConfig, clock: Arc<dyn Clock>) -> Result<Self, SourceError> {
        config.validate()?;
        Ok(Self {
            files: list_files(&config.path)?,
            next: 0,
            looping: config.looping,
            ended: false,
            reading: false,
            timeout: check_timeout(config.timeout_s)?,
            worker: Blocking::new("directory", ()),
            pacer: Pacer::new(config.fps),
            clock,
        })
    }
}

impl Source for DirectorySource {
    fn poll(&mut self) -> SourceEvent {
        if self.ended {
            return SourceEvent::End;
        }
        if self.next >= self.files.len() {
            if !self.looping {
                self.ended = true;
                return SourceEvent::End;
            }
            self.next = 0;
        }
        if !self.reading {
            self.pacer.wait(self.clock.as_ref());
            self.reading = true;
        }
        let path = self.files[self.next].clone();
        let p = path.clone();
        let loaded =
            match self.worker.run(move |_: &mut ()| data::load_image(&p).map_err(|e| e.to_string()), self.timeout) {
                Wait::Done(r) => r,
                Wait::TimedOut => {
                    return SourceEvent::Down {
                        reason: format!(
                            "{}: not read after {:.1} s (`timeout_s`); still waiting",
                            path.display(),
                            self.timeout.as_secs_f64()
                        ),
                    }
                }
                Wait::Failed(why) => Err(why),
            };
        self.reading = false;
        self.next += 1;
        match loaded {
            Ok(image) => SourceEvent::Frame { image, tag: Some(data::file_name(&path)) },
            // The error names the file.
            Err(e) => SourceEvent::BadFrame { reason: e },
        }
    }
}
