//! Retention: at most `max_files` files and `max_bytes` bytes in the snapshot directory, the
//! oldest deleted first.
//!
//! The directory is listed again each time (after every snapshot, which is rare: once or twice
//! per alert), so files removed or added by hand are counted as they are, not as remembered.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// What the directory holds after [`enforce`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Snapshot files.
    pub files: usize,
    /// Their total size.
    pub bytes: u64,
}

/// Whether `path` is one of ours: a visible `.jpg` or `.png` file (temporaries are hidden:
/// `.NAME.tmp`).
fn is_snapshot_file(path: &Path) -> bool {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    !name.starts_with('.') && (name.ends_with(".jpg") || name.ends_with(".png"))
}

/// The snapshot files of `dir`, oldest first (modification time, then name, so files written
/// within one timestamp tick still go in a fixed order), with their sizes.
pub fn list(dir: &Path) -> io::Result<Vec<(PathBuf, SystemTime, u64)>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if !is_snapshot_file(&path) {
            continue;
        }
        // Files can vanish between listing and stat (another process, a manual clean-up).
        let Ok(meta) = entry.metadata() else { continue };
        if meta.is_file() {
            files.push((path, meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()));
        }
    }
    files.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.file_name().cmp(&b.0.file_name())));
    Ok(files)
}

/// Deletes the oldest snapshot files of `dir` until at most `max_files` files of at most
/// `max_bytes` bytes in all remain. Returns the deleted paths and what remains.
pub fn enforce(dir: &Path, max_files: usize, max_bytes: u64) -> io::Result<(Vec<PathBuf>, Usage)> {
    let files = list(dir)?;
    let mut usage = Usage { files: files.len(), bytes: files.iter().map(|f| f.2).sum() };
    let mut removed = Vec::new();
    for (path, _, len) in files {
        if usage.files <= max_files && usage.bytes <= max_bytes {
            break;
        }
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(path),
            // Already gone: it no longer counts either way.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        usage.files -= 1;
        usage.bytes = usage.bytes.saturating_sub(len);
    }
    Ok((removed, usage))
}
