//! A per-process scratch file for the targets whose entry point takes a path.

use std::path::PathBuf;

/// Writes `data` to this process's scratch file (named `<target>-<pid>.<ext>` in the temp
/// directory) and returns its path. The file is rewritten for every input.
pub fn write(target: &str, ext: &str, data: &[u8]) -> PathBuf {
    let dir = if std::path::Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
    let path = dir.join(format!("gradwatch-fuzz-{target}-{}.{ext}", std::process::id()));
    std::fs::write(&path, data).expect("write the fuzz scratch file");
    path
}
