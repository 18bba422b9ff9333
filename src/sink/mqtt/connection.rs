//! The connection thread: connects (with back-off), publishes the backlog in order, maps
//! PUBACKs to events, re-sends after a reconnect, and dead-letters poison events. Timeouts and
//! back-off read the injected clock.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event as MqEvent, Packet, Publish, QoS, RecvTimeoutError, Request};

use super::config::MqttSinkConfig;
use super::discovery::Dashboard;
use super::registry::Flight;
use super::sink::Shared;
use super::{
    describe, ACK_TIMEOUT, BACKOFF_MAX, BACKOFF_MIN, CLOSE_WAIT, DEAD_LETTER_TRIES, MAX_DEAD_LETTER_BYTES,
    MAX_INFLIGHT, MAX_PACKET, POLL, RESPOOL_PERIOD,
};
use crate::base::clock::Clock;
use crate::sink::LogLimiter;

/// State owned by the connection thread.
pub(super) struct ConnThread {
    pub(super) name: String,
    pub(super) cfg: MqttSinkConfig,
    pub(super) status_topic: String,
    pub(super) qos: QoS,
    pub(super) shared: Arc<Shared>,
    pub(super) client: Client,
    pub(super) connection: Connection,
    /// Packet id -> what it carries and when it was sent.
    /// The injected clock: ack timeout, close wait, back-off, re-spool period.
    pub(super) clock: Arc<dyn Clock>,
    pub(super) inflight: HashMap<u16, (Flight, Instant)>,
    /// Sequence numbers published on the current connection (not yet acknowledged).
    pub(super) sent: HashSet<u64>,
    pub(super) next_pkid: u16,
    pub(super) connected: bool,
    pub(super) backoff: Duration,
    pub(super) err_log: LogLimiter,
    /// The retained dashboard and discovery messages, when on.
    pub(super) dash: Option<Dashboard>,
    /// The oldest unacknowledged event, when a connection died with it in flight, and how
    /// many connections died so: it is sent alone until acknowledged, and dead-lettered at
    /// [`DEAD_LETTER_TRIES`].
    pub(super) suspect: Option<(u64, u32)>,
    /// Where dead letters go (`<spool dir>/dead-letter.jsonl`), if the sink has a spool.
    pub(super) dead_letter: Option<PathBuf>,
    /// Last attempt to write events kept in memory to the spool.
    pub(super) last_respool: Option<Instant>,
    pub(super) respool_log: LogLimiter,
}

impl ConnThread {
    pub(super) fn run(mut self) {
        let mut closing: Option<Instant> = None;
        loop {
            let (owner, last) = {
                let st = self.shared.lock();
                (st.attached.last() == Some(&self.shared.gen), st.attached.len() == 1)
            };
            if self.shared.stop.load(Ordering::SeqCst) && closing.is_none() {
                if !self.connected {
                    break;
                }
                if owner && last {
                    // Clean shutdown: say "offline" ourselves (the will only fires on unclean
                    // disconnects), then DISCONNECT once it is acknowledged or we run out of
                    // time.
                    self.publish(Flight::Status, self.status_topic.clone(), b"offline".to_vec());
                    closing = Some(self.clock.now() + CLOSE_WAIT);
                } else {
                    // Another sink carries on with this client id: no "offline".
                    closing = Some(self.clock.now());
                }
            }
            if let Some(until) = closing {
                let status_acked = !self.inflight.values().any(|(f, _)| *f == Flight::Status);
                if status_acked || self.clock.now() >= until || !self.connected {
                    self.disconnect();
                    break;
                }
            } else if !owner {
                // Replaced by a reload: leave the connection (and the client id) to the new
                // sink, and wait in case it goes away again.
                if self.connected {
                    log::info!("sink {}: handed its events over; disconnecting", self.name);
                    self.disconnect();
                }
                std::thread::sleep(POLL);
                continue;
            }
            if closing.is_none() {
                self.respool();
            }
            if self.connected && closing.is_none() {
                self.fill();
                self.publish_dashboard();
                self.check_ack_timeout();
                let mut st = self.shared.lock();
                let old = st.expire(self.cfg.spool_max_age_s);
                if let Some(sp) = st.spool.as_mut() {
                    sp.persist_ack(false);
                }
                drop(st);
                self.shared.count_dropped(&self.name, old, crate::sink::reason::TOO_OLD, "older than spool_max_age_s");
            }
            let res = if !self.connected || !self.connection.eventloop.pending.is_empty() {
                // Connecting, or rumqttc has our publishes to write: block (never cancel a
                // half-written publish).
                self.connection.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                self.connection.recv_timeout(POLL)
            };
            match res {
                Ok(Ok(ev)) => self.on_event(ev),
                Ok(Err(e)) => self.on_error(describe(&e), closing.is_some()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.shared.connected.store(false, Ordering::Relaxed);
        self.shared.backlog.changed.notify_all();
    }

    /// Sends DISCONNECT (a clean close: no last will) and drops the network connection.
    pub(super) fn disconnect(&mut self) {
        let _ = self.client.try_disconnect();
        if self.connected {
            // Drive the loop until the DISCONNECT is written (or it fails).
            for _ in 0..40 {
                match self.connection.recv_timeout(POLL) {
                    Ok(Ok(MqEvent::Outgoing(rumqttc::Outgoing::Disconnect))) => break,
                    Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            }
        }
        self.connection.eventloop.clean();
        self.mark_disconnected();
    }

    pub(super) fn on_event(&mut self, ev: MqEvent) {
        match ev {
            MqEvent::Incoming(Packet::ConnAck(_)) => {
                log::info!("sink {}: connected to the MQTT broker", self.name);
                self.connected = true;
                self.backoff = BACKOFF_MIN;
                self.shared.connects.fetch_add(1, Ordering::Relaxed);
                self.shared.connected.store(true, Ordering::Relaxed);
                // Whatever was in flight on the previous connection is re-sent from our queue,
                // in order, with our own packet ids.
                self.connection.eventloop.pending.clear();
                self.inflight.clear();
                self.sent.clear();
                self.publish(Flight::Status, self.status_topic.clone(), b"online".to_vec());
                if let Some(d) = self.dash.as_mut() {
                    // Retained values are not spooled: the broker gets them all again.
                    d.all_dirty();
                }
            }
            MqEvent::Incoming(Packet::PubAck(ack)) => {
                if let Some((Flight::Event(seq), _)) = self.inflight.remove(&ack.pkid) {
                    self.sent.remove(&seq);
                    if self.suspect.is_some_and(|(s, _)| s == seq) {
                        log::info!(
                            "sink {}: the event re-sent alone was acknowledged; the queue flows again",
                            self.name
                        );
                        self.suspect = None;
                    }
                    let mut st = self.shared.lock();
                    if st.finish(seq) {
                        st.acked += 1;
                    }
                    drop(st);
                    self.shared.backlog.changed.notify_all();
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_error(&mut self, msg: String, closing: bool) {
        if self.connected {
            log::warn!("sink {}: MQTT connection lost: {msg}; reconnecting, events are buffered", self.name);
            if !closing {
                self.blame_oldest_in_flight(&msg);
            }
        } else {
            let name = &self.name;
            self.err_log.hit(|more| {
                log::warn!(
                    "sink {name}: cannot connect to the MQTT broker: {msg} ({more} more \
                     failures since the last message); retrying with back-off"
                )
            });
        }
        self.mark_disconnected();
        if closing {
            return;
        }
        // Back-off, interruptible by shutdown.
        let until = self.clock.now() + self.backoff;
        while self.clock.now() < until && !self.shared.stop.load(Ordering::SeqCst) {
            self.clock.sleep_until(until.min(self.clock.now() + Duration::from_millis(20)));
        }
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    pub(super) fn mark_disconnected(&mut self) {
        self.connected = false;
        self.shared.connected.store(false, Ordering::Relaxed);
        // rumqttc moved unacked publishes into `pending`; we re-send from our own queue.
        self.connection.eventloop.pending.clear();
        self.inflight.clear();
        self.sent.clear();
    }

    /// Moves unsent events, in order, into rumqttc's pending queue, up to the in-flight limit.
    pub(super) fn fill(&mut self) {
        let mut batch = Vec::new();
        let mut too_big = Vec::new();
        {
            let st = self.shared.lock();
            let mut free = usize::from(MAX_INFLIGHT).saturating_sub(self.inflight.len());
            let suspect = self.suspect.map(|(s, _)| s).filter(|s| st.queue.iter().any(|it| it.seq == *s));
            if suspect.is_some() {
                // Alone until acknowledged: nothing else in flight that the broker's reaction
                // could be blamed on.
                free = usize::from(self.sent.is_empty());
            }
            for it in st.queue.iter().filter(|it| !self.sent.contains(&it.seq)) {
                if batch.len() >= free {
                    break;
                }
                if suspect.is_some_and(|s| s != it.seq) {
                    continue;
                }
                let topic = self.cfg.event_topic(&it.stream);
                if topic.len() + it.payload.len() + 64 > MAX_PACKET {
                    too_big.push(it.seq);
                    continue;
                }
                batch.push((it.seq, topic, it.payload.clone()));
            }
        }
        for seq in too_big {
            self.dead_letter(seq, &format!("over the {MAX_PACKET}-byte MQTT packet limit"));
        }
        let mut written = Vec::new();
        for (seq, topic, payload) in batch {
            self.sent.insert(seq);
            if self.publish(Flight::Event(seq), topic, payload) == 0 {
                written.push(seq);
            }
        }
        if !written.is_empty() {
            // QoS 0: handed to the connection is as delivered as it gets.
            let mut st = self.shared.lock();
            for seq in written {
                self.sent.remove(&seq);
                if st.finish(seq) {
                    st.acked += 1;
                }
            }
            drop(st);
            self.shared.backlog.changed.notify_all();
        }
    }

    /// Publishes the dashboard messages that changed (or all, after a connect), leaving room
    /// in flight for the status.
    pub(super) fn publish_dashboard(&mut self) {
        let Some(mut d) = self.dash.take() else { return };
        d.refresh(self.clock.now());
        while self.inflight.len() + 2 < usize::from(MAX_INFLIGHT) {
            let Some((topic, payload)) = d.next() else { break };
            self.publish(Flight::Retained, topic, payload);
        }
        self.dash = Some(d);
    }

    /// Queues one publish on rumqttc with our own packet id; returns it (0 for QoS 0).
    pub(super) fn publish(&mut self, what: Flight, topic: String, payload: Vec<u8>) -> u16 {
        let (qos, retain) = match what {
            Flight::Status | Flight::Retained => (QoS::AtLeastOnce, true),
            Flight::Event(_) => (self.qos, false),
        };
        let mut p = Publish::new(topic, qos, payload);
        p.retain = retain;
        if qos != QoS::AtMostOnce {
            let pkid = self.alloc_pkid();
            p.pkid = pkid;
            self.inflight.insert(pkid, (what, self.clock.now()));
        }
        let pkid = p.pkid;
        self.connection.eventloop.pending.push_back(Request::Publish(p));
        pkid
    }

    pub(super) fn alloc_pkid(&mut self) -> u16 {
        // Callers keep inflight.len() < MAX_INFLIGHT, so a free id exists; the status
        // publish may exceed by one, hence the bounded search.
        for _ in 0..MAX_INFLIGHT {
            self.next_pkid = self.next_pkid % MAX_INFLIGHT + 1;
            if !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
        self.next_pkid
    }

    pub(super) fn check_ack_timeout(&mut self) {
        let now = self.clock.now();
        let stuck = self.inflight.values().any(|(_, sent)| now.saturating_duration_since(*sent) > ACK_TIMEOUT);
        if stuck {
            log::warn!(
                "sink {}: no PUBACK for {}s; dropping the connection to re-send",
                self.name,
                ACK_TIMEOUT.as_secs()
            );
            self.blame_oldest_in_flight("no PUBACK");
            self.connection.eventloop.clean();
            self.mark_disconnected();
        }
    }

    /// A live connection died with events in flight: the oldest of them (queue order) may be
    /// what the broker refused. It gets a try; the next connection sends it alone; at
    /// [`DEAD_LETTER_TRIES`] it goes to the dead-letter file.
    pub(super) fn blame_oldest_in_flight(&mut self, why: &str) {
        let in_flight: HashSet<u64> = self
            .inflight
            .values()
            .filter_map(|(f, _)| match f {
                Flight::Event(seq) => Some(*seq),
                _ => None,
            })
            .collect();
        let oldest = {
            let st = self.shared.lock();
            st.queue.iter().find(|it| in_flight.contains(&it.seq)).map(|it| it.seq)
        };
        let Some(seq) = oldest else { return };
        let tries = match self.suspect {
            Some((s, n)) if s == seq => n + 1,
            _ => 1,
        };
        self.suspect = Some((seq, tries));
        if tries >= DEAD_LETTER_TRIES {
            self.dead_letter(seq, &format!("the connection died {tries} times with it in flight, alone ({why})"));
        }
    }

    /// Takes event `seq` out of the queue (and the spool) into the dead-letter file, counted
    /// and logged once.
    pub(super) fn dead_letter(&mut self, seq: u64, why: &str) {
        let item = {
            let mut st = self.shared.lock();
            let item = st.queue.iter().find(|it| it.seq == seq).map(|it| (it.stream.clone(), it.payload.clone()));
            if item.is_some() {
                st.finish(seq);
            }
            item
        };
        self.shared.backlog.changed.notify_all();
        if self.suspect.is_some_and(|(s, _)| s == seq) {
            self.suspect = None;
        }
        let Some((stream, payload)) = item else { return };
        let written = match &self.dead_letter {
            Some(path) => match append_dead_letter(path, &payload) {
                Ok(()) => format!("written to {}", path.display()),
                Err(e) => format!("NOT written to {} ({e})", path.display()),
            },
            None => "not written anywhere (the sink has no spool directory)".into(),
        };
        let head: String = String::from_utf8_lossy(&payload).chars().take(300).collect();
        log::error!(
            "sink {}: event of stream {:?} dead-lettered: {why}; {written}; counted in \
             sink_dropped_total reason=\"dead_letter\"; the queue goes on. Event: {head}",
            self.name,
            stream
        );
        self.shared.count_dropped(&self.name, 1, crate::sink::reason::DEAD_LETTER, why);
    }

    /// Writes events kept in memory (the spool append failed) to the spool, about once a
    /// second while there are any.
    pub(super) fn respool(&mut self) {
        if self.last_respool.is_some_and(|t| self.clock.now().saturating_duration_since(t) < RESPOOL_PERIOD) {
            return;
        }
        self.last_respool = Some(self.clock.now());
        let (written, dropped, err) = {
            let mut st = self.shared.lock();
            if st.memory_only() == 0 {
                return;
            }
            st.respool(&self.sent)
        };
        if written > 0 {
            log::info!("sink {}: {written} event(s) kept in memory are now in the spool", self.name);
        }
        self.shared.count_dropped(&self.name, dropped, crate::sink::reason::SPOOL_FULL, "spool full");
        if let Some(e) = err {
            let name = &self.name;
            self.respool_log.hit(|more| {
                log::warn!(
                    "sink {name}: events kept in memory still not spooled: {e} ({more} more since the last message)"
                )
            });
        }
    }
}

/// Appends one event line to the dead-letter file (created 0600), synced.
pub(super) fn append_dead_letter(path: &Path, payload: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
    if f.metadata()?.len() + payload.len() as u64 > MAX_DEAD_LETTER_BYTES {
        return Err(std::io::Error::other(format!("it is full at {MAX_DEAD_LETTER_BYTES} bytes")));
    }
    let mut line = payload.to_vec();
    line.push(b'\n');
    f.write_all(&line)?;
    f.sync_data()
}
