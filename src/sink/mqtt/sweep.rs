//! Clearing the retained dashboard and discovery messages of streams the daemon no longer
//! has. A stream removed from the config (or renamed) while the daemon was stopped would
//! otherwise keep its state, attributes, snapshot and Home Assistant entities on the broker
//! for ever: a ghost camera showing its last state.
//!
//! Once per sink start (and again after a reload that rebuilt the sink), a short-lived second
//! connection (client id `<client_id>-sweep`, clean session, no last will, the sink's broker,
//! credentials and TLS) subscribes to this client's retained topics
//! (`P/C/+/state|attributes|snapshot` and `<discovery_prefix>/+/<node>/+/config`), and
//! publishes an empty retained message, which deletes it, on every one that the daemon's
//! streams do not publish now. Topics of other client ids and of other programs are never
//! touched. A broker that cannot be reached is retried with back-off until the sink stops.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, Packet, QoS, RecvTimeoutError, SubscribeFilter};

use super::discovery::{discovery, node_id};
use super::MqttSinkConfig;
use crate::base::clock::Clock;
use crate::metrics::Metrics;

/// Leaves of the per-stream retained topics.
const LEAVES: [&str; 3] = ["state", "attributes", "snapshot"];
/// After the SUBACK, the retained messages are taken to be all in once none came for this long.
const QUIET: Duration = Duration::from_millis(500);
/// Longest a sweep may take once connected.
const SWEEP_LIMIT: Duration = Duration::from_secs(20);
/// Longest wait between attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// The retained topics the daemon publishes for `streams` with `cfg`.
pub(super) fn wanted(cfg: &MqttSinkConfig, streams: &[String]) -> HashSet<String> {
    let mut out = HashSet::new();
    for s in streams {
        out.extend(LEAVES.iter().map(|leaf| cfg.stream_topic(s, leaf)));
        if cfg.discovery {
            out.extend(discovery(cfg, s).into_iter().map(|(_, topic, _)| topic));
        }
    }
    out
}

/// The filters under which this client's retained dashboard and discovery messages live.
fn filters(cfg: &MqttSinkConfig) -> Vec<String> {
    let mut out: Vec<String> =
        LEAVES.iter().map(|leaf| format!("{}/{}/+/{leaf}", cfg.topic_prefix, cfg.client_id)).collect();
    out.push(format!("{}/+/{}/+/config", cfg.discovery_prefix, node_id(cfg)));
    out
}

/// Runs sweeps on a thread until one succeeds or `stopped` says the sink stopped. Waits for
/// the streams to appear in `metrics` first (the daemon registers them at start): with none
/// known, everything would look stale.
pub(super) fn spawn(
    name: String,
    cfg: MqttSinkConfig,
    metrics: Metrics,
    clock: Arc<dyn Clock>,
    stopped: impl Fn() -> bool + Send + 'static,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name(format!("mqtt-sweep-{name}")).spawn(move || {
        let mut backoff = Duration::from_secs(1);
        let mut failures = 0u32;
        while !stopped() {
            let streams: Vec<String> = metrics.streams().into_iter().map(|(n, _)| n).collect();
            if streams.is_empty() {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            }
            match sweep(&cfg, &streams, &*clock, &stopped) {
                Ok(cleared) => {
                    if !cleared.is_empty() {
                        log::info!(
                            "sink {name}: cleared {} retained message(s) of streams no longer configured: {}",
                            cleared.len(),
                            cleared.join(", ")
                        );
                    }
                    return;
                }
                Err(e) => {
                    failures += 1;
                    // The main connection reports an unreachable broker; say why only sometimes.
                    if failures == 1 || failures.is_multiple_of(10) {
                        log::warn!(
                            "sink {name}: cannot clear the retained topics of removed streams yet ({e}); \
                             retrying with back-off"
                        );
                    }
                    let until = clock.now() + backoff;
                    while clock.now() < until && !stopped() {
                        clock.sleep_until(until.min(clock.now() + Duration::from_millis(50)));
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    })
}

/// One sweep: connect, collect the retained messages, delete the stale ones, disconnect.
/// Returns the topics cleared.
fn sweep(
    cfg: &MqttSinkConfig,
    streams: &[String],
    clock: &dyn Clock,
    stopped: &dyn Fn() -> bool,
) -> Result<Vec<String>, String> {
    let options = cfg.options_as(&format!("{}-sweep", cfg.client_id)).map_err(|e| e.to_string())?;
    let (client, mut conn) = Client::new(options, 64);
    let wanted = wanted(cfg, streams);
    let subs = filters(cfg).into_iter().map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce));
    client.subscribe_many(subs).map_err(|e| e.to_string())?;
    let start = clock.now();
    let connect_limit = Duration::from_secs(cfg.keep_alive_s.max(5));
    let mut subacked: Option<Instant> = None;
    let mut last_msg = clock.now();
    let mut stale: Vec<String> = Vec::new();
    let mut seen: HashSet<String> = HashSet::new();
    // Deletions not yet handed to the client, and not yet acknowledged.
    let mut pending: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut to_ack = 0usize;
    let mut published = false;
    let result = loop {
        if stopped() {
            break Err("the sink stopped".to_string());
        }
        let now = clock.now();
        if subacked.is_none() && now.duration_since(start) > connect_limit {
            break Err("no SUBACK from the broker".to_string());
        }
        if now.duration_since(start) > connect_limit + SWEEP_LIMIT {
            break Err("the broker did not acknowledge the deletions in time".to_string());
        }
        if let Some(t) = subacked {
            if !published && now.duration_since(t.max(last_msg)) >= QUIET {
                pending.extend(stale.iter().cloned());
                to_ack = stale.len();
                published = true;
            }
            // As many as the client's request queue takes; the rest on a later turn.
            while let Some(topic) = pending.front() {
                if client.try_publish(topic.clone(), QoS::AtLeastOnce, true, Vec::new()).is_err() {
                    break;
                }
                pending.pop_front();
            }
            if published && pending.is_empty() && to_ack == 0 {
                break Ok(stale.clone());
            }
        }
        match conn.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => subacked = Some(clock.now()),
            Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                last_msg = clock.now();
                // Retained messages only (a live publish of the running sink is not stale);
                // empty ones are deletions already.
                if p.retain && !p.payload.is_empty() && !wanted.contains(&p.topic) && seen.insert(p.topic.clone()) {
                    stale.push(p.topic.clone());
                }
            }
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => to_ack = to_ack.saturating_sub(1),
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => break Err(e.to_string()),
            Err(RecvTimeoutError::Disconnected) => break Err("connection closed".to_string()),
        }
    };
    let _ = client.try_disconnect();
    for _ in 0..20 {
        match conn.recv_timeout(Duration::from_millis(50)) {
            Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect))) | Ok(Err(_)) => break,
            _ => {}
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_and_filters_cover_the_same_topics() {
        let mut cfg = MqttSinkConfig::new("localhost", 1883, "box1");
        cfg.discovery = true;
        let w = wanted(&cfg, &["cam0".to_string(), "a/b".to_string()]);
        assert!(w.contains("gradwatch/box1/cam0/state"));
        assert!(w.contains("gradwatch/box1/a%2Fb/snapshot"));
        assert!(w.contains("homeassistant/binary_sensor/gradwatch_box1/cam0_trust/config"));
        // Every wanted topic is under a filter (else a stale one could not be found either).
        let f = filters(&cfg);
        let matches = |filter: &str, topic: &str| {
            let (fl, tl): (Vec<&str>, Vec<&str>) = (filter.split('/').collect(), topic.split('/').collect());
            fl.len() == tl.len() && fl.iter().zip(&tl).all(|(a, b)| *a == "+" || a == b)
        };
        for t in &w {
            assert!(f.iter().any(|x| matches(x, t)), "{t} is under none of {f:?}");
        }
        cfg.discovery = false;
        assert_eq!(wanted(&cfg, &["cam0".to_string()]).len(), 3);
    }
}
