//! On-disk spool of a network sink: an append-only log of events not yet acknowledged by the
//! remote end, so a broker outage, a reload or a restart loses nothing.
//!
//! Layout of a spool directory (one per sink, `<spool_dir>/<sink name>/`):
//!
//! * `lock`: held with `flock(LOCK_EX)` while a process uses the spool, so two daemons never
//!   share one (the second refuses to start and says so);
//! * `<first seq, 20 digits>.seg`: segments, appended to and `fdatasync`ed record by record;
//!   a new one is started when the current one reaches `max_bytes / 8` (at most 4 MiB);
//! * `ack`: the *floor*, in decimal: every record with a lower sequence number is done
//!   (acknowledged or dropped). Replaced atomically (write, fsync, rename), a few times a
//!   second at most: a lost update only means duplicates after a crash, never a loss.
//!
//! A record is `len: u32 LE | crc32(body): u32 LE | body`, body = `seq: u64 LE |
//! written unix ms: u64 LE | stream length: u32 LE | stream (UTF-8) | payload`. Each record
//! carries its own checksum, so on open a corrupt record (a flipped byte, a bad length) is
//! skipped by finding the next record whose header, sequence number and checksum are valid,
//! and every intact record after it is kept; the records lost are counted (from the gap in
//! sequence numbers) and logged. A short record at the very end is a write torn by a crash
//! (never acknowledged to anyone) and is ignored. Segments are never appended to after a
//! restart (a new one is started), so nothing is cut off.
//!
//! An `ack` floor beyond the last record written is an error (a hand-edited or corrupted
//! file): it is logged and ignored, and every record is sent again (duplicates, not a loss).
//! State files are read with size limits: a segment over [`MAX_SEGMENT_FILE`] is set aside
//! (renamed `*.seg.too-big`, logged), an `ack` file over 64 bytes is ignored.
//!
//! Bounds: the segment files never hold more than `max_bytes` together: before an append that
//! would overflow, whole segments are deleted oldest first and the records in them that were
//! still pending are reported dropped (the caller counts them). The age bound is applied by
//! the caller (it knows each record's time) through [`Spool::done`].
//!
//! A full disk: the spool keeps a `reserve` file of allocated blocks (an eighth of `max_bytes`,
//! 64 KiB to 1 MiB; [`super::reserve`]). An append that fails with `ENOSPC` releases part of it
//! and is tried again, so events produced while the disk is full still reach disk (a crash then
//! loses nothing); the reserve is allocated again once the disk has room.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::reserve::{self, Reserve};

/// Largest segment file.
const MAX_SEGMENT: u64 = 4 << 20;
/// Smallest segment file (tiny `max_bytes` would otherwise roll on every record).
const MIN_SEGMENT: u64 = 4 << 10;
/// Bytes of a record before its body.
const HEADER: usize = 8;
/// Largest segment file read at start-up (a segment is at most 4 MiB, or one record).
pub const MAX_SEGMENT_FILE: u64 = 64 << 20;
/// Largest record body accepted when reading (an MQTT packet is at most 1 MiB).
const MAX_RECORD: usize = 2 << 20;
/// A record's sequence number is at most this far beyond its predecessor's when resyncing
/// after corruption (rules out most false candidates before a checksum is computed).
const MAX_SEQ_JUMP: u64 = 1 << 32;
/// How long opening waits for another holder of the lock before refusing.
const LOCK_WAIT: Duration = Duration::from_secs(1);
/// Minimum pause between two writes of the `ack` file.
const ACK_PERIOD: Duration = Duration::from_millis(200);

/// Errors of the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file or directory of the spool could not be created, read or written.
    #[error(
        "spool {path}: {source} (check that the directory is writable and the disk not full; \
         under systemd it lives in the StateDirectory=)"
    )]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another process holds the spool.
    #[error(
        "spool {dir} is in use by another process (another gradwatch with the same spool_dir \
         and sink name?); give each instance its own spool_dir"
    )]
    Locked {
        /// The spool directory.
        dir: PathBuf,
    },
    /// One event is larger than the whole spool.
    #[error("an event of {size} bytes does not fit in spool_max_bytes = {max}; raise spool_max_bytes")]
    TooBig {
        /// Record size.
        size: u64,
        /// The bound.
        max: u64,
    },
}

impl SpoolError {
    /// Whether the cause is a full disk (or quota).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, SpoolError::Io { source, .. } if reserve::is_disk_full(source))
    }
}

/// A record read back from the spool, or appended to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Sequence number, increasing in append order, unique within the spool.
    pub seq: u64,
    /// When it was appended (unix ms).
    pub written_ms: u64,
    /// The event's stream (the MQTT topic is derived from it when publishing).
    pub stream: String,
    /// The event (JSON).
    pub payload: Vec<u8>,
}

/// One segment file.
#[derive(Debug)]
struct Segment {
    first_seq: u64,
    /// Highest seq in it; `None` while empty.
    last_seq: Option<u64>,
    bytes: u64,
    path: PathBuf,
}

/// An open spool directory. Dropping it writes the `ack` file and releases the lock.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    _lock: File,
    /// Oldest first; the last one is appended to.
    segments: VecDeque<Segment>,
    active: Option<File>,
    next_seq: u64,
    floor: u64,
    /// Done sequence numbers at or above `floor` (acknowledged out of order).
    done_above: BTreeSet<u64>,
    persisted_floor: u64,
    last_ack_write: Option<Instant>,
    max_bytes: u64,
    total_bytes: u64,
    /// Records found corrupt and skipped at open, not yet taken by [`Spool::take_corrupt`].
    corrupt: u64,
    /// Blocks given back to the file system when the disk is full.
    reserve: Reserve,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io { path: path.to_path_buf(), source }
}

impl Spool {
    /// Opens (creating) the spool in `dir`, bounded to `max_bytes` of segment files. Returns
    /// it with the records still pending, in order.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<(Spool, Vec<Record>), SpoolError> {
        // A file size limit then fails a write (EFBIG, handled like a full disk) instead of
        // killing the process.
        crate::sink::file::survive_file_size_limit();
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
        let lock_path = dir.join("lock");
        let lock =
            OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
        lock_exclusive(&lock, &lock_path, dir)?;
        let mut floor = read_floor(&dir.join("ack"));
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else { continue };
            match stem.parse::<u64>() {
                // No spool gets near there; a number that high would overflow the sequence.
                Ok(first) if first > u64::MAX / 4 => {
                    log::error!("spool: {} is not a segment this spool wrote; ignored", entry.path().display())
                }
                Ok(first) => found.push((first, entry.path())),
                Err(_) => {}
            }
        }
        found.sort();
        let mut segs = Vec::new();
        let mut corrupt = 0;
        for (first, path) in found {
            let Some(read) = read_segment(&path, first)? else { continue };
            corrupt += read.corrupt;
            segs.push((first, path, read));
        }
        let last_written = segs.iter().filter_map(|(_, _, r)| r.records.last().map(|r| r.seq)).max();
        if let Some(last) = last_written {
            if floor > last.saturating_add(1) {
                log::error!(
                    "spool {}: the ack file says {floor}, beyond the last record written ({last}); it is \
                     wrong (edited or corrupted) and ignored: every record in the spool is sent again",
                    dir.display()
                );
                floor = 0;
            }
        } else if floor > u64::MAX / 2 {
            log::error!("spool {}: the ack file says {floor}, which no spool reaches; ignored", dir.display());
            floor = 0;
        }
        let mut sp = Spool {
            dir: dir.to_path_buf(),
            _lock: lock,
            segments: VecDeque::new(),
            active: None,
            next_seq: floor,
            floor,
            done_above: BTreeSet::new(),
            persisted_floor: floor,
            last_ack_write: None,
            max_bytes,
            total_bytes: 0,
            corrupt,
            reserve: Reserve::open(&dir.join("reserve"), reserve::size_for(max_bytes)),
        };
        let mut pending = Vec::new();
        for (first, path, read) in segs {
            let last = read.records.last().map(|r| r.seq);
            if let Some(l) = last {
                sp.next_seq = sp.next_seq.max(l + 1);
            }
            if last.is_none_or(|l| l < floor) {
                // Fully done (or empty): nothing to keep.
                std::fs::remove_file(&path).map_err(io(&path))?;
                continue;
            }
            pending.extend(read.records.into_iter().filter(|r| r.seq >= floor));
            sp.total_bytes += read.len;
            sp.segments.push_back(Segment { first_seq: first, last_seq: last, bytes: read.len, path });
        }
        if floor != read_floor(&dir.join("ack")) {
            sp.persisted_floor = u64::MAX;
            sp.persist_ack(true);
        }
        Ok((sp, pending))
    }

    /// Records found corrupt (and skipped) when the spool was opened, since the last call.
    pub fn take_corrupt(&mut self) -> u64 {
        std::mem::take(&mut self.corrupt)
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Changes the byte bound (a reload); takes effect at the next append.
    pub fn set_max_bytes(&mut self, max_bytes: u64) {
        self.max_bytes = max_bytes;
    }

    /// Bytes in segment files.
    pub fn bytes(&self) -> u64 {
        self.total_bytes
    }

    fn segment_limit(&self) -> u64 {
        (self.max_bytes / 8).clamp(MIN_SEGMENT, MAX_SEGMENT)
    }

    /// A sequence number without a record on disk, for an event kept in memory only because
    /// the append failed; [`Spool::done`] accepts it like any other.
    pub fn reserve_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Appends one record and syncs it to disk. Returns its sequence number and the *drop
    /// floor*: records with a lower sequence number were deleted to make room (0 when none
    /// were), and the caller must count those it still had pending as dropped.
    pub fn append(&mut self, stream: &str, payload: &[u8], written_ms: u64) -> Result<(u64, u64), SpoolError> {
        let seq = self.next_seq;
        let rec = encode(seq, written_ms, stream, payload);
        let size = rec.len() as u64;
        if size > self.max_bytes {
            return Err(SpoolError::TooBig { size, max: self.max_bytes });
        }
        let mut dropped_below = 0;
        while self.total_bytes + size > self.max_bytes {
            let Some(oldest) = self.segments.pop_front() else { break };
            if self.segments.is_empty() {
                // It was the one being appended to.
                self.active = None;
            }
            self.total_bytes -= oldest.bytes;
            let below = oldest.last_seq.map_or(oldest.first_seq, |l| l + 1);
            dropped_below = dropped_below.max(below);
            std::fs::remove_file(&oldest.path).map_err(io(&oldest.path))?;
            self.advance_floor_to(below);
        }
        if let Err(e) = self.write_record(seq, &rec) {
            // A full disk: give back part of the reserve and try once more.
            if !(e.is_disk_full() && self.reserve.release(size)) {
                return Err(e);
            }
            self.write_record(seq, &rec)?;
        }
        self.reserve.refill();
        let Some(seg) = self.segments.back_mut() else {
            return Err(SpoolError::Io { path: self.dir.clone(), source: std::io::Error::other("no segment") });
        };
        seg.bytes += size;
        seg.last_seq = Some(seq);
        self.total_bytes += size;
        self.next_seq = seq + 1;
        Ok((seq, dropped_below))
    }

    /// Writes one encoded record at the end of the active segment (starting one when needed)
    /// and syncs it; on failure the segment is left as it was.
    fn write_record(&mut self, seq: u64, rec: &[u8]) -> Result<(), SpoolError> {
        let roll = match self.segments.back() {
            Some(s) => self.active.is_none() || s.bytes + rec.len() as u64 > self.segment_limit(),
            None => true,
        };
        if roll {
            self.start_segment(seq)?;
        }
        let (Some(seg), Some(file)) = (self.segments.back_mut(), self.active.as_mut()) else {
            return Err(SpoolError::Io {
                path: self.dir.clone(),
                source: std::io::Error::other("no segment open after starting one"),
            });
        };
        if let Err(e) = file.write_all(rec).and_then(|()| file.sync_data()) {
            // Cut a partial record off so the segment stays readable to its end; if that
            // fails too, start a fresh segment next time (reading stops at the torn record).
            if file.set_len(seg.bytes).is_err() {
                self.active = None;
            }
            return Err(SpoolError::Io { path: seg.path.clone(), source: e });
        }
        Ok(())
    }

    fn start_segment(&mut self, first_seq: u64) -> Result<(), SpoolError> {
        let path = self.dir.join(format!("{first_seq:020}.seg"));
        let file = OpenOptions::new().create(true).append(true).mode(0o600).open(&path).map_err(io(&path))?;
        // The new name must survive a crash too: sync the directory entry.
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io(&self.dir))?;
        let bytes = file.metadata().map_err(io(&path))?.len();
        self.segments.push_back(Segment { first_seq, last_seq: None, bytes, path });
        self.total_bytes += bytes;
        self.active = Some(file);
        Ok(())
    }

    /// Marks a record done (acknowledged, or dropped by the caller). Fully done segments other
    /// than the one being appended to are deleted.
    pub fn done(&mut self, seq: u64) {
        if seq < self.floor {
            return;
        }
        self.done_above.insert(seq);
        while self.done_above.remove(&self.floor) {
            self.floor += 1;
        }
        self.delete_done_segments();
    }

    fn advance_floor_to(&mut self, below: u64) {
        if below > self.floor {
            self.floor = below;
            self.done_above = self.done_above.split_off(&below);
            while self.done_above.remove(&self.floor) {
                self.floor += 1;
            }
        }
    }

    fn delete_done_segments(&mut self) {
        while self.segments.len() > 1 {
            let Some(front) = self.segments.front() else { break };
            if front.last_seq.is_some_and(|l| l >= self.floor) {
                break;
            }
            let Some(seg) = self.segments.pop_front() else { break };
            self.total_bytes -= seg.bytes;
            if let Err(e) = std::fs::remove_file(&seg.path) {
                log::warn!(
                    "spool: cannot delete {}: {e}; it is read again (and skipped) at the next start",
                    seg.path.display()
                );
            }
        }
    }

    /// Writes the `ack` file if the floor moved, at most every 200 ms unless `force`.
    pub fn persist_ack(&mut self, force: bool) {
        if self.floor == self.persisted_floor {
            return;
        }
        if !force && self.last_ack_write.is_some_and(|t| t.elapsed() < ACK_PERIOD) {
            return;
        }
        self.last_ack_write = Some(Instant::now());
        let tmp = self.dir.join("ack.tmp");
        let res = File::create(&tmp)
            .and_then(|mut f| f.write_all(format!("{}\n", self.floor).as_bytes()).and_then(|()| f.sync_all()))
            .and_then(|()| std::fs::rename(&tmp, self.dir.join("ack")));
        match res {
            Ok(()) => self.persisted_floor = self.floor,
            Err(e) => log::warn!(
                "spool {}: cannot record acknowledgements ({e}); acknowledged events may be sent \
                 again after a restart",
                self.dir.display()
            ),
        }
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.persist_ack(true);
    }
}

/// Takes the spool's lock, waiting up to [`LOCK_WAIT`] for a holder to let go: a child process
/// forked (by this process, for a pipe source, or by a test) between another spool's close and
/// exec holds a copy of that descriptor, and with it the lock, for a moment.
fn lock_exclusive(lock: &File, lock_path: &Path, dir: &Path) -> Result<(), SpoolError> {
    let start = Instant::now();
    loop {
        // SAFETY: flock on a descriptor we own; no memory is involved.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(SpoolError::Io { path: lock_path.to_path_buf(), source: e });
        }
        if start.elapsed() >= LOCK_WAIT {
            return Err(SpoolError::Locked { dir: dir.to_path_buf() });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The floor from the `ack` file; 0 (everything re-sent: duplicates, no loss) when it is
/// missing or unreadable.
fn read_floor(path: &Path) -> u64 {
    match crate::base::path::read_state_file(path, 64) {
        Ok(Some(s)) => s.trim().parse().unwrap_or_else(|_| {
            log::warn!("spool: {} is not a number; re-sending everything spooled", path.display());
            0
        }),
        Ok(None) => 0,
        Err(e) => {
            log::warn!("spool: {e}; re-sending everything spooled");
            0
        }
    }
}

fn encode(seq: u64, written_ms: u64, stream: &str, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(20 + stream.len() + payload.len());
    body.extend_from_slice(&seq.to_le_bytes());
    body.extend_from_slice(&written_ms.to_le_bytes());
    body.extend_from_slice(&(stream.len() as u32).to_le_bytes());
    body.extend_from_slice(stream.as_bytes());
    body.extend_from_slice(payload);
    let mut rec = Vec::with_capacity(HEADER + body.len());
    rec.extend_from_slice(&(body.len() as u32).to_le_bytes());
    rec.extend_from_slice(&crc32(&body).to_le_bytes());
    rec.extend_from_slice(&body);
    rec
}

/// What reading one segment found.
#[derive(Debug, Default)]
pub struct SegmentRead {
    /// The intact records, in order.
    pub records: Vec<Record>,
    /// Records lost to corruption (counted from the gaps in sequence numbers; at least one
    /// per corrupt stretch).
    pub corrupt: u64,
    /// The file's length.
    pub len: u64,
}

/// Reads a segment (at most [`MAX_SEGMENT_FILE`] bytes; a larger file is renamed
/// `*.seg.too-big` and `None` returned), keeping every intact record (see the module doc).
fn read_segment(path: &Path, first_seq: u64) -> Result<Option<SegmentRead>, SpoolError> {
    let mut data = Vec::new();
    File::open(path).and_then(|f| f.take(MAX_SEGMENT_FILE + 1).read_to_end(&mut data)).map_err(io(path))?;
    if data.len() as u64 > MAX_SEGMENT_FILE {
        let aside = path.with_extension("seg.too-big");
        log::error!(
            "spool: {} is over {MAX_SEGMENT_FILE} bytes, larger than any segment the spool writes; \
             set aside as {} (its events are not sent)",
            path.display(),
            aside.display()
        );
        std::fs::rename(path, &aside).map_err(io(path))?;
        return Ok(None);
    }
    let read = parse_segment(&data, first_seq);
    if read.corrupt > 0 {
        log::error!(
            "spool: {} holds {} corrupt record(s); skipped (counted in sink_dropped_total \
             reason=\"spool_corrupt\"), the {} intact one(s) kept",
            path.display(),
            read.corrupt,
            read.records.len()
        );
    }
    Ok(Some(read))
}

/// Parses a segment's bytes: every record that decodes with a valid checksum and a sequence
/// number above the previous one, resynchronising after a corrupt stretch. A trailing short
/// record (a torn write) is not counted.
pub fn parse_segment(data: &[u8], first_seq: u64) -> SegmentRead {
    let mut out = SegmentRead { len: data.len() as u64, ..SegmentRead::default() };
    let mut pos = 0usize;
    let mut prev: Option<u64> = None;
    while pos < data.len() {
        let min_seq = prev.map_or(first_seq, |p| p.saturating_add(1));
        if let Some((rec, len)) = decode(&data[pos..], min_seq) {
            pos += HEADER + len;
            prev = Some(rec.seq);
            out.records.push(rec);
            continue;
        }
        if is_torn_tail(&data[pos..]) {
            log::warn!(
                "spool: a segment ends in {} bytes of a torn write (a crash mid-write?); ignored",
                data.len() - pos
            );
            break;
        }
        // Corrupt: find the next valid record.
        let next = (pos + 1..data.len()).find_map(|q| decode(&data[q..], min_seq).map(|r| (q, r.0.seq)));
        match next {
            Some((q, seq)) => {
                out.corrupt += prev.map_or(1, |p| seq.saturating_sub(p + 1).max(1));
                pos = q;
            }
            None => {
                out.corrupt += 1;
                break;
            }
        }
    }
    out
}

/// Whether `buf` (not a valid record) is the start of a record cut short: a header, or a
/// plausible length whose body runs past the end.
fn is_torn_tail(buf: &[u8]) -> bool {
    match buf.get(0..4) {
        None => true,
        Some(l) => {
            let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
            (20..=MAX_RECORD).contains(&len) && buf.len() < HEADER + len
        }
    }
}

/// One record and its body length, or `None` if `buf` does not start with a whole valid one
/// whose sequence number is at least `min_seq` (and not absurdly far beyond it).
fn decode(buf: &[u8], min_seq: u64) -> Option<(Record, usize)> {
    let len = u32::from_le_bytes(buf.get(0..4)?.try_into().ok()?) as usize;
    if !(20..=MAX_RECORD).contains(&len) {
        return None;
    }
    let crc = u32::from_le_bytes(buf.get(4..8)?.try_into().ok()?);
    let body = buf.get(HEADER..HEADER.checked_add(len)?)?;
    let seq = u64::from_le_bytes(body[0..8].try_into().ok()?);
    // Cheap checks first: resynchronising tries every offset.
    if seq < min_seq || seq - min_seq > MAX_SEQ_JUMP || crc32(body) != crc {
        return None;
    }
    let written_ms = u64::from_le_bytes(body[8..16].try_into().ok()?);
    let slen = u32::from_le_bytes(body[16..20].try_into().ok()?) as usize;
    let stream = std::str::from_utf8(body.get(20..20usize.checked_add(slen)?)?).ok()?.to_string();
    let payload = body[20 + slen..].to_vec();
    Some((Record { seq, written_ms, stream, payload }, len))
}

/// CRC-32 (IEEE 802.3, reflected, as in zlib), table-driven.
fn crc32(data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    let mut c = !0u32;
    for &b in data {
        c = TABLE[((c ^ b as u32) & 0xFF) as usize] ^ (c >> 8);
    }
    !c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_zlib() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn records_survive_reopen_and_acks_persist() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let (mut sp, pending) = Spool::open(&d, 1 << 20).unwrap();
        assert!(pending.is_empty());
        for i in 0..5u64 {
            let (seq, dropped) = sp.append("cam", format!("{{\"i\":{i}}}").as_bytes(), 1000 + i).unwrap();
            assert_eq!((seq, dropped), (i, 0));
        }
        sp.done(0);
        sp.done(2);
        drop(sp);
        let (sp, pending) = Spool::open(&d, 1 << 20).unwrap();
        // 2 was acknowledged out of order: only the floor (1) is persisted, so it comes back.
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(pending[0].stream, "cam");
        assert_eq!(pending[0].payload, b"{\"i\":1}");
        assert_eq!(pending[0].written_ms, 1001);
        // A second opener is refused while the first holds it.
        assert!(matches!(Spool::open(&d, 1 << 20), Err(SpoolError::Locked { .. })));
        drop(sp);
    }

    #[test]
    fn torn_tail_is_cut_and_new_records_follow() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sp, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        sp.append("a", b"one", 1).unwrap();
        sp.append("a", b"two", 2).unwrap();
        let seg = sp.segments[0].path.clone();
        drop(sp);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&encode(2, 3, "a", b"three")[..10]).unwrap();
        drop(f);
        let (mut sp, pending) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(sp.append("a", b"four", 4).unwrap().0, 2);
        drop(sp);
        let (_sp, pending) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(
            pending.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(),
            [b"one".to_vec(), b"two".to_vec(), b"four".to_vec()]
        );
    }

    /// Ten records in one segment; returns the segment's path.
    fn ten(dir: &Path) -> PathBuf {
        let (mut sp, _) = Spool::open(dir, 1 << 20).unwrap();
        for i in 0..10u64 {
            sp.append("cam", format!("{{\"i\":{i}}}").as_bytes(), i).unwrap();
        }
        let seg = sp.segments[0].path.clone();
        drop(sp);
        seg
    }

    fn offset_of_record(data: &[u8], n: usize) -> usize {
        let mut pos = 0;
        for _ in 0..n {
            pos += HEADER + u32::from_le_bytes(data[pos..pos + 4].try_into().unwrap()) as usize;
        }
        pos
    }

    /// One flipped byte in record 3 of 10 loses record 3 only (counted); the old reader
    /// dropped records 3-9 as a "torn tail".
    #[test]
    fn a_corrupt_record_is_skipped_and_counted_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        let seg = ten(dir.path());
        let mut data = std::fs::read(&seg).unwrap();
        let at = offset_of_record(&data, 3) + HEADER + 25;
        data[at] ^= 0x40;
        std::fs::write(&seg, &data).unwrap();
        let (mut sp, pending) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(sp.take_corrupt(), 1);
        assert_eq!(sp.take_corrupt(), 0, "counted once");
        // The segment was not cut: a new one takes the next record.
        assert_eq!(sp.append("cam", b"x", 10).unwrap().0, 10);
    }

    /// A bad length in the first header loses the first record only (it emptied the segment).
    #[test]
    fn a_bad_length_is_resynchronised() {
        let dir = tempfile::tempdir().unwrap();
        let seg = ten(dir.path());
        let mut data = std::fs::read(&seg).unwrap();
        data[0..4].copy_from_slice(&0xFFFF_FFF0u32.to_le_bytes());
        std::fs::write(&seg, &data).unwrap();
        let (mut sp, pending) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), (1..10).collect::<Vec<_>>());
        assert_eq!(sp.take_corrupt(), 1);
        // Two records wiped out in the middle: counted as two from the gap in sequence numbers.
        drop(sp);
        let dir = tempfile::tempdir().unwrap();
        let seg = ten(dir.path());
        let mut data = std::fs::read(&seg).unwrap();
        let (a, b) = (offset_of_record(&data, 4), offset_of_record(&data, 6));
        data[a..b].fill(0xAB);
        std::fs::write(&seg, &data).unwrap();
        let (mut sp, pending) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(pending.iter().map(|r| r.seq).collect::<Vec<_>>(), [0, 1, 2, 3, 6, 7, 8, 9]);
        assert_eq!(sp.take_corrupt(), 2);
    }

    /// An `ack` beyond the last record written keeps every record (it dropped them all, and
    /// u64::MAX wrapped the sequence).
    #[test]
    fn an_ack_beyond_the_written_records_keeps_them() {
        for bad in ["999999\n", "18446744073709551615\n"] {
            let dir = tempfile::tempdir().unwrap();
            ten(dir.path());
            std::fs::write(dir.path().join("ack"), bad).unwrap();
            let (mut sp, pending) = Spool::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(pending.len(), 10, "ack {bad}");
            assert_eq!(sp.append("cam", b"x", 10).unwrap().0, 10);
            drop(sp);
            assert_eq!(std::fs::read_to_string(dir.path().join("ack")).unwrap().trim(), "0");
        }
        // Without any segment, a huge floor cannot wrap the sequence either.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ack"), "18446744073709551615").unwrap();
        let (mut sp, _) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(sp.append("cam", b"x", 1).unwrap().0, 0);
        // A huge ack file is not read.
        drop(sp);
        std::fs::write(dir.path().join("ack"), "7".repeat(1000)).unwrap();
        let (_sp, pending) = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(pending.len(), 1);
    }

    /// Arbitrary bytes never panic the reader, and every record it returns is intact.
    #[test]
    fn parse_never_panics_on_garbage() {
        let mut rng = crate::rng::SplitMix64::new(7);
        let mut good = Vec::new();
        for i in 0..20u64 {
            good.extend(encode(i, i, "s", b"payload"));
        }
        for _ in 0..300 {
            let mut d = good.clone();
            for _ in 0..(rng.next_u64() % 8) {
                let i = (rng.next_u64() as usize) % d.len();
                d[i] = rng.next_u64() as u8;
            }
            d.truncate((rng.next_u64() as usize) % (d.len() + 1));
            let r = parse_segment(&d, 0);
            assert!(r.records.windows(2).all(|w| w[0].seq < w[1].seq));
            assert!(r.records.iter().all(|x| x.payload == b"payload"));
        }
    }

    #[test]
    fn full_spool_drops_oldest_segments_and_stays_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let max = 64 << 10;
        let (mut sp, _) = Spool::open(dir.path(), max).unwrap();
        let payload = vec![b'x'; 1000];
        let mut floor = 0;
        for i in 0..200u64 {
            let (seq, dropped) = sp.append("s", &payload, i).unwrap();
            assert_eq!(seq, i);
            floor = floor.max(dropped);
            assert!(sp.bytes() <= max, "{} > {max}", sp.bytes());
        }
        assert!(floor > 100, "oldest dropped: floor {floor}");
        drop(sp);
        let (_sp, pending) = Spool::open(dir.path(), max).unwrap();
        assert_eq!(pending.first().map(|r| r.seq), Some(floor));
        assert_eq!(pending.last().map(|r| r.seq), Some(199));
    }

    #[test]
    fn acked_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut sp, _) = Spool::open(dir.path(), 64 << 10).unwrap();
        let payload = vec![b'x'; 1000];
        for i in 0..40u64 {
            sp.append("s", &payload, i).unwrap();
        }
        assert!(sp.segments.len() > 2);
        for i in 0..40u64 {
            sp.done(i);
        }
        assert_eq!(sp.segments.len(), 1);
        drop(sp);
        let (_sp, pending) = Spool::open(dir.path(), 64 << 10).unwrap();
        assert!(pending.is_empty());
    }
}
