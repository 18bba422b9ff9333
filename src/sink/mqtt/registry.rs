//! The queue of unacknowledged events, shared across reloads: every MQTT sink of the process
//! with the same spool directory (or name, broker and client id) attaches to one [`Backlog`]
//! in a process-wide registry, so a reload hands its events to the new sink.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, Weak};

use super::spool::{Record, Spool};
use super::MEM_SEQ_BASE;
use crate::sink::SinkError;

/// An event accepted by the sink and not yet acknowledged.
pub(super) struct Item {
    /// Sequence number in the spool (or in memory without one).
    pub(super) seq: u64,
    /// When it was accepted (unix ms), for the age bound.
    pub(super) written_ms: u64,
    /// Its stream; the topic is derived when publishing, from the publishing sink's config.
    pub(super) stream: String,
    pub(super) payload: Vec<u8>,
}

impl From<Record> for Item {
    fn from(r: Record) -> Self {
        Item { seq: r.seq, written_ms: r.written_ms, stream: r.stream, payload: r.payload }
    }
}

/// What a packet id in flight stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Flight {
    Event(u64),
    Status,
    /// A retained dashboard or discovery message (not spooled; re-published on reconnect).
    Retained,
}

/// Events accepted and not yet acknowledged, with their spool: shared by the sinks that hand
/// it over to each other on reload.
pub(super) struct Backlog {
    pub(super) state: Mutex<BState>,
    /// Signalled when the queue shrinks (flush waits on it).
    pub(super) changed: Condvar,
}

pub(super) struct BState {
    pub(super) queue: VecDeque<Item>,
    pub(super) spool: Option<Spool>,
    /// Next sequence number of an event not in the spool (no spool: every event; with one:
    /// added to [`MEM_SEQ_BASE`]).
    pub(super) mem_seq: u64,
    /// Generations of the attached sinks, oldest first; the last one publishes.
    pub(super) attached: Vec<u64>,
    pub(super) acked: u64,
}

impl Backlog {
    pub(super) fn lock(&self) -> MutexGuard<'_, BState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

impl BState {
    /// Removes an item (acknowledged, or dropped) from the queue and the spool.
    pub(super) fn finish(&mut self, seq: u64) -> bool {
        let found = match self.queue.iter().position(|it| it.seq == seq) {
            Some(pos) => {
                self.queue.remove(pos);
                true
            }
            None => false,
        };
        if let Some(sp) = self.spool.as_mut() {
            if seq < MEM_SEQ_BASE {
                sp.done(seq);
            }
        }
        found
    }

    /// Events waiting that are not on disk (the spool append failed), with a spool.
    pub(super) fn memory_only(&self) -> usize {
        if self.spool.is_none() {
            return 0;
        }
        self.queue.iter().filter(|it| it.seq >= MEM_SEQ_BASE).count()
    }

    /// Drops every spooled item below `below` (the spool deleted their segment for room).
    pub(super) fn drop_spooled_below(&mut self, below: u64) -> u64 {
        let before = self.queue.len();
        self.queue.retain(|it| it.seq >= MEM_SEQ_BASE || it.seq >= below);
        (before - self.queue.len()) as u64
    }

    /// Writes events kept in memory (a failed append) to the spool, oldest first, skipping
    /// those in `skip` (in flight: their packet ids name the old number). Stops at the first
    /// failure (the disk is still full). Returns how many went to disk, how many older
    /// records the spool deleted for room, and the error.
    pub(super) fn respool(&mut self, skip: &HashSet<u64>) -> (u64, u64, Option<super::spool::SpoolError>) {
        let (mut written, mut dropped) = (0, 0);
        let Some(mut sp) = self.spool.take() else { return (0, 0, None) };
        let mut err = None;
        let mut below_max = 0;
        for it in self.queue.iter_mut().filter(|it| it.seq >= MEM_SEQ_BASE && !skip.contains(&it.seq)) {
            match sp.append(&it.stream, &it.payload, it.written_ms) {
                Ok((seq, below)) => {
                    it.seq = seq;
                    written += 1;
                    below_max = below_max.max(below);
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        self.spool = Some(sp);
        if below_max > 0 {
            dropped = self.drop_spooled_below(below_max);
        }
        (written, dropped, err)
    }

    /// Drops the oldest items while `pred` holds for the front one; returns how many.
    pub(super) fn drop_front_while(&mut self, pred: impl Fn(&Item) -> bool) -> u64 {
        let mut n = 0;
        while let Some(front) = self.queue.front() {
            if !pred(front) {
                break;
            }
            let seq = front.seq;
            self.finish(seq);
            n += 1;
        }
        n
    }

    /// Applies the age bound; returns how many were dropped.
    pub(super) fn expire(&mut self, max_age_s: u64) -> u64 {
        if max_age_s == 0 {
            return 0;
        }
        let limit = now_ms().saturating_sub(max_age_s.saturating_mul(1000));
        self.drop_front_while(|it| it.written_ms < limit)
    }
}

pub(super) fn now_ms() -> u64 {
    crate::base::time::unix_ms(std::time::SystemTime::now())
}

/// Backlogs by key (spool directory, or name and broker without a spool), for the hand-over.
pub(super) fn registry() -> MutexGuard<'static, HashMap<String, Weak<Backlog>>> {
    static R: OnceLock<Mutex<HashMap<String, Weak<Backlog>>>> = OnceLock::new();
    match R.get_or_init(Default::default).lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

pub(super) fn next_generation() -> u64 {
    static G: AtomicU64 = AtomicU64::new(1);
    G.fetch_add(1, Ordering::Relaxed)
}

/// Attaches a new sink (generation `gen`) to the backlog under `key`, taking it over from a
/// sink already attached, or opening the spool.
pub(super) fn attach(
    name: &str,
    key: String,
    spool_dir: Option<&Path>,
    max_bytes: u64,
    gen: u64,
) -> Result<Arc<Backlog>, SinkError> {
    let mut reg = registry();
    if let Some(b) = reg.get(&key).and_then(Weak::upgrade) {
        let mut st = b.lock();
        st.attached.push(gen);
        if let Some(sp) = st.spool.as_mut() {
            sp.set_max_bytes(max_bytes);
        }
        log::info!("sink {name}: took over {} unacknowledged event(s) from the sink it replaces", st.queue.len());
        drop(st);
        return Ok(b);
    }
    let (spool, queue) = match spool_dir {
        Some(dir) => {
            let (sp, records) = Spool::open(dir, max_bytes)?;
            if !records.is_empty() {
                log::info!(
                    "sink {name}: {} event(s) from the spool {} will be sent first",
                    records.len(),
                    dir.display()
                );
            }
            (Some(sp), records.into_iter().map(Item::from).collect())
        }
        None => (None, VecDeque::new()),
    };
    let b = Arc::new(Backlog {
        state: Mutex::new(BState { queue, spool, mem_seq: 0, attached: vec![gen], acked: 0 }),
        changed: Condvar::new(),
    });
    reg.retain(|_, w| w.strong_count() > 0);
    reg.insert(key, Arc::downgrade(&b));
    Ok(b)
}
