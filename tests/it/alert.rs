//! Alert state machine on recorded score sequences (threshold 1.0, over = score > 1.0).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gradwatch::alert::{AlertPolicy, AlertTracker, EndReason, Event, ModelRef, Scored};
use gradwatch::base::time::parse_rfc3339;

/// 2024-01-01T00:00:00Z, so ids and times are predictable.
const T0_MS: u64 = 1_704_067_200_000;

fn t(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(T0_MS + ms)
}

fn model() -> ModelRef {
    ModelRef { name: "resnet18".into(), sha256: "ab".repeat(32) }
}

fn frame(seq: u64, score: f32, dt_ms: u64) -> Scored {
    Scored {
        stream: "cam0".into(),
        seq,
        time: t(seq * dt_ms),
        score,
        threshold: 1.0,
        clean_tail_scale: 0.0,
        top_class: seq as usize % 10,
        top_class_name: Some(format!("class{}", seq % 10)),
        confidence: 0.5,
        tag: Some(format!("tag{seq}")),
    }
}

fn policy(min_duration_ms: u64, update_interval_ms: u64) -> AlertPolicy {
    AlertPolicy { window: 10, raise: 6, clear: 2, min_duration_ms, update_interval_ms, ..AlertPolicy::default() }
}

/// Feeds `scores` as frames 0.. spaced `dt_ms`; returns (seq of the triggering frame, event).
fn run(p: AlertPolicy, scores: &[f32], dt_ms: u64) -> (AlertTracker, Vec<(u64, Event)>) {
    let mut tr = AlertTracker::new("cam0", p, model()).unwrap();
    let mut out = Vec::new();
    for (i, &s) in scores.iter().enumerate() {
        for e in tr.push(&frame(i as u64, s, dt_ms)) {
            out.push((i as u64, e));
        }
    }
    (tr, out)
}

fn kinds(evs: &[(u64, Event)]) -> Vec<(u64, &'static str)> {
    evs.iter().map(|(s, e)| (*s, e.kind())).collect()
}

#[test]
fn raises_exactly_at_kth_over_frame() {
    // Over at 0,1,2,3,4 (five), under at 5, over at 6: the 6th over-threshold frame.
    let scores = [1.5, 2.0, 3.0, 2.0, 1.5, 0.5, 2.5];
    let (tr, evs) = run(policy(0, 0), &scores, 100);
    assert_eq!(kinds(&evs), [(6, "alert_start")]);
    assert!(tr.is_active());
    let a = evs[0].1.alert().unwrap();
    // The alert starts at the first over-threshold frame of the window.
    assert_eq!(a.first_seq, 0);
    assert_eq!(a.last_seq, 6);
    assert_eq!(a.frames, 7);
    assert_eq!(a.frames_over, 6);
    assert_eq!(a.peak_score, 3.0);
    // (1.5+2+3+2+1.5+0.5+2.5)/7 = 13/7
    assert!((a.mean_score - 13.0 / 7.0).abs() < 1e-6, "{}", a.mean_score);
    // Peak frame is seq 2: its class, name and tag.
    assert_eq!(a.top_class, 2);
    assert_eq!(a.top_class_name.as_deref(), Some("class2"));
    assert_eq!(a.tag.as_deref(), Some("tag2"));
    assert_eq!(a.threshold, 1.0);
    assert_eq!(a.model, "resnet18");
    assert_eq!(a.model_sha256, "ab".repeat(32));
    assert_eq!(a.id, format!("cam0-0-{T0_MS}"));
    assert_eq!(a.first_time, "2024-01-01T00:00:00.000Z");
    assert_eq!(a.last_time, "2024-01-01T00:00:00.600Z");
    assert_eq!(a.time, "2024-01-01T00:00:00.600Z");
    assert_eq!(a.duration_ms, 600);
}

#[test]
fn no_alert_with_k_minus_1_over() {
    // Every window of 10 holds exactly 5 over-threshold frames, for 200 frames.
    let pattern = [2.0, 2.0, 2.0, 2.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0];
    let scores: Vec<f32> = pattern.iter().cycle().take(200).copied().collect();
    let (tr, evs) = run(policy(0, 0), &scores, 100);
    assert!(evs.is_empty(), "{:?}", kinds(&evs));
    assert_eq!(tr.over_in_window(), 5);
    // A score equal to the threshold is not over.
    let (_, evs) = run(policy(0, 0), &[1.0; 20], 100);
    assert!(evs.is_empty());
}

#[test]
fn clears_with_hysteresis() {
    // Over at 0..=5 (raise at 5), then under. Over count in the window at seq s >= 9 is the
    // number of seqs in s-9..=s that are <= 5: seq 10 -> 5, 11 -> 4, 12 -> 3, 13 -> 2.
    let mut scores = vec![2.0; 6];
    scores.extend([0.0; 20]);
    let (_, evs) = run(policy(0, 0), &scores, 100);
    assert_eq!(kinds(&evs), [(5, "alert_start"), (13, "alert_end")]);
    match &evs[1].1 {
        Event::AlertEnd { alert, reason } => {
            assert_eq!(*reason, EndReason::Cleared);
            assert_eq!(alert.frames, 14);
            assert_eq!(alert.frames_over, 6);
            assert_eq!(alert.last_seq, 13);
        }
        e => panic!("{e:?}"),
    }

    // Hovering between clear and raise (3 or 4 over in every window) never clears.
    let mut scores = vec![2.0; 6];
    scores.extend([2.0, 0.0, 0.0].iter().cycle().take(300));
    let (tr, evs) = run(policy(0, 0), &scores, 100);
    assert_eq!(kinds(&evs), [(5, "alert_start")]);
    assert!(tr.is_active());
}

#[test]
fn min_duration_respected() {
    // Same sequence as above, frames 100 ms apart, min_duration 1000 ms from the raise
    // (seq 5, t=500): the clear condition holds from seq 13 (t=1300, 800 ms) but the alert
    // may only end at seq 15 (t=1500, 1000 ms).
    let mut scores = vec![2.0; 6];
    scores.extend([0.0; 20]);
    let (_, evs) = run(policy(1000, 0), &scores, 100);
    assert_eq!(kinds(&evs), [(5, "alert_start"), (15, "alert_end")]);
    let a = evs[1].1.alert().unwrap();
    assert_eq!(a.time, "2024-01-01T00:00:01.500Z");
    assert_eq!(a.duration_ms, 1500);
}

#[test]
fn periodic_updates() {
    // Raise at seq 5 (t=500); updates every 5000 ms of frame time: seq 55, 105, 155.
    let (_, evs) = run(policy(1000, 5000), &[2.0; 160], 100);
    assert_eq!(kinds(&evs), [(5, "alert_start"), (55, "alert_update"), (105, "alert_update"), (155, "alert_update")]);
    let u = evs[1].1.alert().unwrap();
    assert_eq!(u.frames, 56);
    assert_eq!(u.frames_over, 56);
    assert_eq!(u.last_seq, 55);
    // update_interval_ms = 0: never.
    let (_, evs) = run(policy(1000, 0), &[2.0; 160], 100);
    assert_eq!(kinds(&evs), [(5, "alert_start")]);
}

#[test]
fn shutdown_closes_with_reason_shutdown() {
    let (mut tr, evs) = run(policy(60_000, 0), &[2.0; 8], 100);
    assert_eq!(kinds(&evs), [(5, "alert_start")]);
    // min_duration does not hold back a shutdown.
    let end = tr.shutdown(t(900));
    assert_eq!(end.len(), 1);
    match &end[0] {
        Event::AlertEnd { alert, reason } => {
            assert_eq!(*reason, EndReason::Shutdown);
            assert_eq!(alert.time, "2024-01-01T00:00:00.900Z");
            assert_eq!(alert.last_seq, 7);
            assert_eq!(alert.id, evs[0].1.alert().unwrap().id);
        }
        e => panic!("{e:?}"),
    }
    assert!(!tr.is_active());
    assert!(tr.shutdown(t(1000)).is_empty());
}

#[test]
fn stream_down_ends_alert_then_reports() {
    let (mut tr, _) = run(policy(60_000, 0), &[2.0; 8], 100);
    let evs = tr.stream_down(t(1000), "EOF");
    assert_eq!(evs.len(), 2);
    assert!(matches!(&evs[0], Event::AlertEnd { reason: EndReason::StreamDown, .. }));
    assert_eq!(
        evs[1],
        Event::StreamDown { stream: "cam0".into(), time: "2024-01-01T00:00:01.000Z".into(), reason: "EOF".into() }
    );
    // No alert open: only stream_down.
    assert_eq!(tr.stream_down(t(1100), "EOF").len(), 1);
    // After stream_up, sequence numbers may restart and the window is empty.
    let up = tr.stream_up(t(2000));
    assert_eq!(up.kind(), "stream_up");
    let mut evs = Vec::new();
    for i in 0..6 {
        let mut f = frame(i, 2.0, 100);
        f.time = t(3000 + i * 100);
        evs.extend(tr.push(&f));
    }
    assert_eq!(evs.len(), 1);
    assert_eq!(evs[0].alert().unwrap().id, format!("cam0-0-{}", T0_MS + 3000));
}

#[test]
fn ids_stable_within_and_unique_across_alerts() {
    // Two alerts: over 0..=5, under 6..=25, over 26..=31, under 32..=60.
    let mut scores = vec![2.0; 6];
    scores.extend([0.0; 20]);
    scores.extend([2.0; 6]);
    scores.extend([0.0; 29]);
    let (_, evs) = run(policy(0, 300), &scores, 100);
    let mut ids: Vec<(String, &'static str)> =
        evs.iter().map(|(_, e)| (e.alert().unwrap().id.clone(), e.kind())).collect();
    assert_eq!(ids.first().unwrap().1, "alert_start");
    let first = ids[0].0.clone();
    let second_start = ids.iter().rposition(|(_, k)| *k == "alert_start").unwrap();
    assert!(second_start > 0);
    let second = ids[second_start].0.clone();
    assert_ne!(first, second);
    assert_eq!(first, format!("cam0-0-{T0_MS}"));
    assert_eq!(second, format!("cam0-26-{}", T0_MS + 2600));
    // Every event before the second start belongs to the first alert, all after to the
    // second, and each alert ends exactly once.
    for (id, _) in &ids[..second_start] {
        assert_eq!(id, &first);
    }
    for (id, _) in &ids[second_start..] {
        assert_eq!(id, &second);
    }
    ids.retain(|(_, k)| *k == "alert_end");
    assert_eq!(ids.len(), 2);
}

#[test]
fn replay_is_deterministic() {
    let scores: Vec<f32> =
        (0..500).map(|i| if (i / 17) % 3 == 0 { 2.0 } else { 0.2 } + (i % 7) as f32 * 0.01).collect();
    let (_, a) = run(policy(500, 1000), &scores, 40);
    let (_, b) = run(policy(500, 1000), &scores, 40);
    assert!(!a.is_empty());
    assert_eq!(a, b);
}

#[test]
fn out_of_order_and_nan_frames() {
    let mut tr = AlertTracker::new("cam0", policy(0, 0), model()).unwrap();
    for i in 0..5 {
        assert!(tr.push(&frame(i, 2.0, 100)).is_empty());
    }
    // A repeated sequence number is ignored, even though it is over threshold.
    assert!(tr.push(&frame(4, 2.0, 100)).is_empty());
    assert_eq!(tr.out_of_order(), 1);
    // A NaN score is not over threshold.
    assert!(tr.push(&frame(5, f32::NAN, 100)).is_empty());
    assert_eq!(tr.over_in_window(), 5);
    let evs = tr.push(&frame(6, 2.0, 100));
    assert_eq!(evs.len(), 1);
    let a = evs[0].alert().unwrap();
    // NaN excluded from the mean, counted as a frame.
    assert_eq!(a.frames, 7);
    assert_eq!(a.mean_score, 2.0);
    // Frames of another stream are ignored.
    let mut other = frame(7, 2.0, 100);
    other.stream = "cam1".into();
    assert!(tr.push(&other).is_empty());
    assert_eq!(tr.out_of_order(), 2);
}

#[test]
fn invalid_policy_rejected() {
    let p = AlertPolicy { raise: 2, clear: 2, ..AlertPolicy::default() };
    assert!(AlertTracker::new("cam0", p, model()).is_err());
}

#[test]
fn events_round_trip_through_json() {
    let mut scores = vec![2.0; 60];
    scores.extend([0.0; 20]);
    let (mut tr, mut evs) = run(policy(0, 5000), &scores, 100);
    let raw: Vec<Event> = evs.drain(..).map(|(_, e)| e).collect();
    let mut all = raw.clone();
    all.extend(tr.stream_down(t(10_000), "camera unplugged"));
    all.push(tr.stream_up(t(11_000)));
    let mut seen = std::collections::BTreeSet::new();
    for e in &all {
        let line = e.to_json();
        assert!(!line.contains('\n'));
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(&back, e);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], e.kind());
        if let Some(a) = e.alert() {
            assert!(parse_rfc3339(&a.first_time).is_some());
            assert_eq!(v["id"], a.id.as_str());
        }
        if let Event::AlertEnd { .. } = e {
            assert_eq!(v["reason"], "cleared");
        }
        seen.insert(e.kind());
    }
    assert_eq!(
        seen.into_iter().collect::<Vec<_>>(),
        ["alert_end", "alert_start", "alert_update", "stream_down", "stream_up"]
    );
}
