//! `[snapshots]`: where alert snapshots go and how much of them is kept.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// `[snapshots]` of the daemon's config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Save snapshots at all. Default true (they still need a directory, see `dir`).
    pub enabled: bool,
    /// Where the files go. Default: `$STATE_DIRECTORY/snapshots` (systemd's `StateDirectory=`,
    /// `/var/lib/gradwatch` with the shipped unit); without either, snapshots are off.
    pub dir: Option<PathBuf>,
    /// Keep at most this many files (a snapshot and its heat map are two); the oldest are
    /// deleted first. Default 1000.
    pub max_files: usize,
    /// Keep at most this many bytes of files; the oldest are deleted first. Default 256 MiB.
    pub max_bytes: u64,
    /// Per stream, the last this many over-threshold frames kept in memory for snapshots;
    /// should be at least the alert `window`. Default 16.
    pub ring_frames: usize,
    /// Per stream, at most this many bytes of frames in that ring (the oldest go first).
    /// Default 32 MiB.
    pub ring_max_bytes: u64,
    /// Frames are kept, and snapshots written, at most this many pixels on their longer side
    /// (larger frames are scaled down when kept: a 6000x6000 camera costs 1024x1024 in the
    /// ring, not 108 MB a frame). Default 1024.
    pub max_side: usize,
    /// Snapshots are not written while the file system of `dir` has less than this many bytes
    /// free, so they give way before the spool or a file sink on the same disk lose a byte
    /// (the shipped unit keeps all three in one state directory). 0 = no floor. Default 64 MiB.
    pub min_free_bytes: u64,
    /// JPEG quality of the snapshots, 1..=100. Default 90.
    pub jpeg_quality: u8,
    /// Frames whose shorter side is below this many pixels are upscaled (integer factor) so a
    /// person can see them: a 32x32 frame becomes 256x256. 0 = never. Default 256.
    pub min_side: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            enabled: true,
            dir: None,
            max_files: 1000,
            max_bytes: 256 << 20,
            ring_frames: 16,
            ring_max_bytes: 32 << 20,
            max_side: 1024,
            min_free_bytes: 64 << 20,
            jpeg_quality: 90,
            min_side: 256,
        }
    }
}

impl SnapshotConfig {
    /// Makes a relative `dir` absolute against `base` (the config file's directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        if let Some(d) = self.dir.as_mut() {
            crate::base::path::resolve_path(d, base);
        }
    }

    /// Checks the numbers; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_files == 0 {
            return Err("[snapshots] max_files must be at least 1 (or set enabled = false)".into());
        }
        if self.max_bytes == 0 {
            return Err("[snapshots] max_bytes must be at least 1 (or set enabled = false)".into());
        }
        if !(1..=1000).contains(&self.ring_frames) {
            return Err(format!("[snapshots] ring_frames = {} must be in 1..=1000", self.ring_frames));
        }
        if !(1 << 20..=1 << 30).contains(&self.ring_max_bytes) {
            return Err(format!(
                "[snapshots] ring_max_bytes = {} must be in 1048576..=1073741824",
                self.ring_max_bytes
            ));
        }
        if !(64..=8192).contains(&self.max_side) {
            return Err(format!("[snapshots] max_side = {} must be in 64..=8192", self.max_side));
        }
        if self.min_free_bytes > 1 << 40 {
            return Err(format!(
                "[snapshots] min_free_bytes = {} must be at most 1 TiB (0 = no floor)",
                self.min_free_bytes
            ));
        }
        if self.max_files > 10_000_000 {
            return Err(format!("[snapshots] max_files = {} must be at most 10000000", self.max_files));
        }
        if !(1..=100).contains(&self.jpeg_quality) {
            return Err(format!("[snapshots] jpeg_quality = {} must be in 1..=100", self.jpeg_quality));
        }
        if self.min_side > 4096 {
            return Err(format!("[snapshots] min_side = {} must be at most 4096", self.min_side));
        }
        if self.dir.as_ref().is_some_and(|d| d.as_os_str().is_empty()) {
            return Err("[snapshots] dir is empty; remove it to use $STATE_DIRECTORY/snapshots".into());
        }
        Ok(())
    }

    /// The directory snapshots go to: `dir`, else `$STATE_DIRECTORY/snapshots`; `None` when
    /// disabled or neither is set.
    pub fn directory(&self) -> Option<PathBuf> {
        self.directory_with(std::env::var_os("STATE_DIRECTORY"))
    }

    /// [`directory`](Self::directory) with the value of `STATE_DIRECTORY` given (systemd sets
    /// a colon-separated list when the unit names several; the first is ours).
    pub fn directory_with(&self, state_directory: Option<OsString>) -> Option<PathBuf> {
        if !self.enabled {
            return None;
        }
        if let Some(d) = &self.dir {
            return Some(d.clone());
        }
        let state = state_directory?;
        let first = state.to_string_lossy().split(':').next().unwrap_or("").to_string();
        (!first.is_empty()).then(|| Path::new(&first).join("snapshots"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directory_defaults_to_the_state_directory() {
        let c = SnapshotConfig::default();
        assert_eq!(c.directory_with(None), None);
        assert_eq!(
            c.directory_with(Some("/var/lib/gradwatch:/var/lib/other".into())),
            Some(PathBuf::from("/var/lib/gradwatch/snapshots"))
        );
        let d = SnapshotConfig { dir: Some("/srv/snaps".into()), ..SnapshotConfig::default() };
        assert_eq!(d.directory_with(Some("/var/lib/gradwatch".into())), Some(PathBuf::from("/srv/snaps")));
        let off = SnapshotConfig { enabled: false, ..d };
        assert_eq!(off.directory_with(None), None);
    }

    #[test]
    fn toml_and_validation() {
        let c: SnapshotConfig = toml::from_str("max_files = 10\ndir = \"snaps\"").unwrap();
        assert_eq!((c.max_files, c.ring_frames), (10, 16));
        assert!(toml::from_str::<SnapshotConfig>("max_file = 10").is_err());
        assert!(SnapshotConfig { max_files: 0, ..c.clone() }.validate().is_err());
        assert!(SnapshotConfig { jpeg_quality: 0, ..c.clone() }.validate().is_err());
        assert!(SnapshotConfig { ring_max_bytes: 0, ..c.clone() }.validate().is_err());
        assert!(SnapshotConfig { max_side: 1 << 20, ..c.clone() }.validate().is_err());
        assert!(SnapshotConfig { min_free_bytes: u64::MAX, ..c.clone() }.validate().is_err());
        assert!(c.validate().is_ok());
    }
}
