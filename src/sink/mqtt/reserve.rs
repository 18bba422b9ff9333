//! A disk reserve: a file of allocated blocks that a writer gives back to the file system when
//! the disk is full, so the records that matter (the spool's events) still reach disk.
//!
//! Without it, an event produced while the disk is full can only wait in memory, and a crash
//! (SIGKILL, OOM, power loss) in that window loses it with nothing left to count the loss. With
//! it, an append that fails with `ENOSPC` releases part of the reserve and is tried once more;
//! the reserve is allocated again (`posix_fallocate`, real blocks, not a sparse file) once the
//! disk has room for it twice over, so it is not taken back from a disk that is still nearly
//! full. Everything here is best effort: a reserve that cannot be created or refilled is logged
//! and the writer behaves as without one.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::base::path::free_bytes;

/// Smallest reserve.
const MIN_RESERVE: u64 = 64 << 10;
/// Largest reserve.
const MAX_RESERVE: u64 = 1 << 20;
/// Released at least this much at a time (a file system allocates whole blocks).
const MIN_RELEASE: u64 = 16 << 10;

/// The reserve size for a store bounded to `max_bytes`: an eighth of it, 64 KiB to 1 MiB.
pub fn size_for(max_bytes: u64) -> u64 {
    (max_bytes / 8).clamp(MIN_RESERVE, MAX_RESERVE)
}

/// Whether an I/O error means the disk (or the user's quota) is full.
pub fn is_disk_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

/// A reserve file and its current allocated length.
#[derive(Debug)]
pub struct Reserve {
    path: PathBuf,
    file: Option<File>,
    len: u64,
    target: u64,
}

impl Reserve {
    /// Opens (creating) the reserve file at `path` and allocates it to `target` bytes. Never
    /// fails: a reserve that cannot be made is logged and stays empty.
    pub fn open(path: &Path, target: u64) -> Reserve {
        let file = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(path);
        let mut r = Reserve { path: path.to_path_buf(), file: None, len: 0, target };
        match file {
            Ok(f) => {
                r.len = f.metadata().map(|m| m.len()).unwrap_or(0);
                r.file = Some(f);
                r.allocate();
                if r.len < target {
                    log::warn!(
                        "disk reserve {}: only {} of {target} bytes could be allocated (is the disk \
                         full?); it is topped up when there is room",
                        path.display(),
                        r.len
                    );
                }
            }
            Err(e) => log::warn!(
                "disk reserve {}: cannot create it ({e}); on a full disk events will wait in memory",
                path.display()
            ),
        }
        r
    }

    /// Bytes allocated now.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing is allocated.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The size it is kept at when the disk has room.
    pub fn target(&self) -> u64 {
        self.target
    }

    /// Gives back at least `need` bytes (rounded up, at least a quarter of the target) to the
    /// file system. Returns whether anything was released.
    pub fn release(&mut self, need: u64) -> bool {
        let Some(f) = &self.file else { return false };
        if self.len == 0 {
            return false;
        }
        let chunk = need.saturating_add(MIN_RELEASE).max(self.target / 4);
        let new_len = self.len.saturating_sub(chunk);
        match f.set_len(new_len) {
            Ok(()) => {
                log::warn!(
                    "disk full: released {} bytes of the disk reserve {} ({new_len} left) to write events",
                    self.len - new_len,
                    self.path.display()
                );
                self.len = new_len;
                true
            }
            Err(e) => {
                log::warn!("disk reserve {}: cannot shrink it ({e})", self.path.display());
                false
            }
        }
    }

    /// Allocates the reserve back to its target when the disk has room for twice what is missing.
    pub fn refill(&mut self) {
        if self.len < self.target && self.allocate() {
            log::info!("disk reserve {} allocated again ({} bytes)", self.path.display(), self.target);
        }
    }

    /// Allocates the file to its target if the disk has room for twice what is missing; returns
    /// whether it allocated anything.
    fn allocate(&mut self) -> bool {
        let Some(f) = &self.file else { return false };
        let missing = self.target.saturating_sub(self.len);
        if missing == 0 {
            return false;
        }
        let Some(free) = self.path.parent().and_then(free_bytes) else { return false };
        if free < missing.saturating_mul(2) {
            return false;
        }
        // SAFETY: posix_fallocate on a descriptor we own; no memory is involved.
        let rc = unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, self.target as libc::off_t) };
        if rc != 0 {
            // A partial allocation would be space the reserve does not know it holds.
            let _ = f.set_len(self.len);
            return false;
        }
        self.len = self.target;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_an_eighth_within_bounds() {
        assert_eq!(size_for(0), MIN_RESERVE);
        assert_eq!(size_for(16 << 20), MAX_RESERVE);
        assert_eq!(size_for(1 << 40), MAX_RESERVE);
        assert_eq!(size_for(1 << 20), 128 << 10);
    }

    #[test]
    fn release_and_refill_on_a_disk_with_room() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("reserve");
        let mut r = Reserve::open(&p, 128 << 10);
        assert_eq!(r.len(), 128 << 10);
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 128 << 10);
        assert!(r.release(100));
        assert_eq!(r.len(), 96 << 10, "a quarter of the target at least");
        assert!(r.release(200 << 10));
        assert!(r.is_empty());
        assert!(!r.release(1), "nothing left to give");
        r.refill();
        assert_eq!(r.len(), r.target());
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 128 << 10);
    }

    #[test]
    fn an_unwritable_place_gives_an_empty_reserve() {
        let mut r = Reserve::open(Path::new("/proc/gradwatch-no-such-dir/reserve"), 64 << 10);
        assert!(r.is_empty());
        assert!(!r.release(1));
        r.refill();
        assert!(r.is_empty());
    }

    /// A real full disk: a 320 KiB tmpfs (needs root to mount; skipped otherwise) filled to its
    /// last byte around an open spool. Every append still reaches disk, through the reserve,
    /// and is read back after a reopen.
    #[test]
    fn a_spool_on_a_full_tmpfs_writes_through_its_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=320k", "tmpfs"])
            .arg(mnt)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: mounting a tmpfs needs root");
            return;
        }
        struct Unmount<'a>(&'a Path);
        impl Drop for Unmount<'_> {
            fn drop(&mut self) {
                let _ = std::process::Command::new("umount").arg(self.0).status();
            }
        }
        let _guard = Unmount(mnt);
        let spool_dir = mnt.join("spool");
        let (mut sp, pending) = crate::sink::mqtt::spool::Spool::open(&spool_dir, 1 << 20).unwrap();
        assert!(pending.is_empty());
        assert_eq!(std::fs::metadata(spool_dir.join("reserve")).unwrap().len(), 128 << 10);
        // Fill the disk: one big file, then small ones until not even a block is left.
        let fill = |name: &str, len: u64| {
            let f = File::create(mnt.join(name)).unwrap();
            // SAFETY: posix_fallocate on a descriptor we own.
            unsafe { libc::posix_fallocate(f.as_raw_fd(), 0, len as libc::off_t) }
        };
        let free = free_bytes(&spool_dir).unwrap();
        fill("filler", free.saturating_sub(8192));
        for i in 0..64 {
            if fill(&format!("filler{i}"), 4096) != 0 {
                break;
            }
        }
        assert!(free_bytes(&spool_dir).unwrap() < 4096, "the disk is not full");
        let payload = vec![b'x'; 1000];
        for i in 0..40 {
            sp.append("cam", &payload, i).unwrap_or_else(|e| panic!("append {i} on a full disk: {e}"));
        }
        let left = std::fs::metadata(spool_dir.join("reserve")).unwrap().len();
        assert!(left < 128 << 10, "the reserve was not used ({left} bytes)");
        drop(sp);
        let (sp, pending) = crate::sink::mqtt::spool::Spool::open(&spool_dir, 1 << 20).unwrap();
        assert_eq!(pending.len(), 40, "every event written on the full disk is read back");
        drop(sp);
        // Room again: the reserve is allocated back to its size at the next append.
        std::fs::remove_file(mnt.join("filler")).unwrap();
        let (mut sp, _) = crate::sink::mqtt::spool::Spool::open(&spool_dir, 1 << 20).unwrap();
        sp.append("cam", &payload, 99).unwrap();
        assert_eq!(std::fs::metadata(spool_dir.join("reserve")).unwrap().len(), 128 << 10);
    }
}
