//! Paths and small files: config-relative paths, systemd credentials, bounded reads of the
//! state files the daemon keeps between runs, free space on a file system.

use std::path::{Path, PathBuf};

/// Makes a relative path absolute against `base` (the config file's directory); `-` (stdin)
/// and empty paths are left as they are. Every component's `resolve_paths` uses it.
pub fn resolve_path(p: &mut PathBuf, base: &Path) {
    if p.is_relative() && p.as_os_str() != "-" && !p.as_os_str().is_empty() {
        *p = base.join(&*p);
    }
}

/// Bytes available to this process on the file system holding `dir` (`statvfs`), if known.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is plain old data; all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    // The field types are narrower on 32-bit targets.
    #[allow(clippy::unnecessary_cast)]
    let (bavail, frsize) = (st.f_bavail as u64, st.f_frsize as u64);
    Some(bavail.saturating_mul(frsize))
}

/// Resolves a secret's path: `%d/...` or `$CREDENTIALS_DIRECTORY/...` (anywhere in the path,
/// since the config loader may already have put the config's directory in front) and
/// relative paths are looked up in systemd's credentials directory (`LoadCredential=`).
/// `relative_ok`: a relative path without a credentials directory is kept as it is.
pub fn resolve_credential(path: &Path, relative_ok: bool) -> Result<PathBuf, String> {
    let comps: Vec<_> = path.components().collect();
    let marker = comps.iter().rposition(|c| {
        matches!(c.as_os_str().to_str(), Some("%d" | "$CREDENTIALS_DIRECTORY" | "${CREDENTIALS_DIRECTORY}"))
    });
    let creds = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|v| !v.is_empty()).map(PathBuf::from);
    match (marker, creds) {
        (Some(i), Some(dir)) => Ok(comps[i + 1..].iter().fold(dir, |p, c| p.join(c))),
        (Some(_), None) => Err(format!(
            "{} names the credentials directory, but CREDENTIALS_DIRECTORY is not set: under \
             systemd add LoadCredential=NAME:/path/to/secret to the unit, otherwise give an \
             absolute path",
            path.display()
        )),
        (None, Some(dir)) if path.is_relative() => Ok(dir.join(path)),
        (None, None) if path.is_relative() && !relative_ok => Err(format!(
            "{} is relative and CREDENTIALS_DIRECTORY is not set: give an absolute path (or \
             `%d/NAME` with LoadCredential=NAME:... in the unit)",
            path.display()
        )),
        _ => Ok(path.to_path_buf()),
    }
}

/// Writes `text` as `name` (a `.toml` file) into the state directory `dir` (created if
/// missing), atomically: a temporary file renamed over the old one. Returns the path.
pub fn write_state_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let path = dir.join(name);
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(|e| format!("cannot rename to {}: {e}", path.display()))?;
    Ok(path)
}

/// Reads a state file of at most `max` bytes as UTF-8 text: `Ok(None)` when it does not
/// exist; an error naming the size for a larger file (read no further, so a huge file neither
/// stalls the start nor ends up in a log line).
pub fn read_state_file(path: &Path, max: u64) -> Result<Option<String>, String> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut buf = Vec::new();
    f.take(max + 1).read_to_end(&mut buf).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if buf.len() as u64 > max {
        return Err(format!(
            "{} is over {max} bytes, more than this file ever holds; ignored (move it away to silence this)",
            path.display()
        ));
    }
    String::from_utf8(buf).map(Some).map_err(|_| format!("{} is not UTF-8 text; ignored", path.display()))
}
