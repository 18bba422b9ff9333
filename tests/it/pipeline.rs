//! The pipeline on the simulated clock: fake sources of grey and white frames, the
//! [`Brightness`] classifier, events collected in memory.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fakes::{self, calibration, Brightness};
use gradwatch::alert::{AlertConfig, EndReason, Event};
use gradwatch::base::clock::SimClock;
use gradwatch::frame::RgbImage;
use gradwatch::metrics::Metrics;
use gradwatch::pipeline::{Env, Pipeline, PipelineConfig, Scoring, StageExit, StreamSpec};
use gradwatch::sink::MemorySink;
use gradwatch::source::{DropPolicy, QueueConfig, Roi, Source, SourceEvent};

/// Frames of a constant grey level, 100 ms apart on the simulated clock: `plan` lists
/// (count, level, tag); `forever` repeats the last entry without end.
struct FakeSource {
    clock: Arc<SimClock>,
    plan: Vec<(usize, u8, &'static str)>,
    i: usize,
    k: usize,
    forever: bool,
}

impl Source for FakeSource {
    fn poll(&mut self) -> SourceEvent {
        while self.i < self.plan.len() && self.k >= self.plan[self.i].0 {
            if self.forever && self.i + 1 == self.plan.len() {
                self.k = 0;
                break;
            }
            self.i += 1;
            self.k = 0;
        }
        let Some(&(_, level, tag)) = self.plan.get(self.i) else { return SourceEvent::End };
        self.k += 1;
        self.clock.advance(Duration::from_millis(100));
        match level {
            1 => return SourceEvent::BadFrame { reason: "test".into() },
            2 => return SourceEvent::Down { reason: "unplugged".into() },
            3 => return SourceEvent::Up,
            _ => {}
        }
        SourceEvent::Frame { image: RgbImage::new(4, 4, vec![level; 48]).unwrap(), tag: Some(tag.into()) }
    }
}

struct Run {
    pipeline: Pipeline,
    events: Arc<Mutex<Vec<Event>>>,
    metrics: Metrics,
}

fn start(plan: Vec<(usize, u8, &'static str)>, forever: bool, panic_after: Option<usize>) -> Run {
    start_with(plan, forever, panic_after, DropPolicy::Block, Duration::ZERO, None)
}

fn start_with(
    plan: Vec<(usize, u8, &'static str)>,
    forever: bool,
    panic_after: Option<usize>,
    policy: DropPolicy,
    delay: Duration,
    roi: Option<Roi>,
) -> Run {
    let clock = Arc::new(SimClock::new());
    let metrics = Metrics::new();
    let env = Env::new(clock.clone(), metrics.clone());
    let src = FakeSource { clock, plan, i: 0, k: 0, forever };
    let streams = vec![StreamSpec {
        name: "s".into(),
        roi,
        queue: QueueConfig { size: 4, policy },
        source: Box::new(src),
        score_fps: None,
    }];
    let alert = fakes::quick_alerts();
    let events = Arc::new(Mutex::new(Vec::new()));
    let cls = Brightness { panic_after, delay, ..Brightness::new() };
    let scoring = Scoring { calibration: Arc::new(calibration("full")), threshold: 9.0 };
    let pipeline = Pipeline::start(
        &env,
        &PipelineConfig { max_batch: 3, max_wait_ms: 1, ..PipelineConfig::default() },
        &alert,
        streams,
        Box::new(cls),
        scoring,
        vec![Box::new(MemorySink::new(events.clone()))],
    )
    .unwrap();
    Run { pipeline, events, metrics }
}

/// Exits until both inference and the alert stage have reported (in either order: a
/// panicking inference drops its channel, ending the alert stage, before it reports).
fn wait_for_alert_stage(p: &Pipeline) -> Vec<StageExit> {
    let mut exits: Vec<StageExit> = Vec::new();
    while !(exits.iter().any(|e| e.stage == "alert") && exits.iter().any(|e| e.stage == "inference")) {
        exits.push(p.exits().recv_timeout(Duration::from_secs(30)).expect("stages finish"));
    }
    exits
}

#[test]
fn replay_alert_in_the_corrupted_window_only() {
    let r = start(vec![(12, 128, "clean"), (2, 1, "clean"), (10, 255, "noise:5"), (12, 128, "clean")], false, None);
    let exits = wait_for_alert_stage(&r.pipeline);
    assert!(exits.iter().all(|e| e.result.is_ok()), "{exits:?}");
    assert!(r.pipeline.all_streams_ended());
    let summary = r.pipeline.finish(Instant::now() + Duration::from_secs(5)).unwrap();
    let ev = r.events.lock().unwrap().clone();
    let kinds: Vec<&str> = ev.iter().map(Event::kind).collect();
    // The stream says it is up at its first frame.
    assert_eq!(kinds, ["stream_up", "alert_start", "alert_end"], "{ev:?}");
    let ev = &ev[1..];
    // Frames 0..12 clean, 12..22 noise (bad frames take no seq), 22..34 clean.
    let a = ev[0].alert().unwrap();
    assert_eq!((a.first_seq, a.last_seq), (12, 14)); // raised at the 3rd bright frame
    assert_eq!(a.tag.as_deref(), Some("noise:5"));
    match &ev[1] {
        Event::AlertEnd { alert, reason } => {
            assert_eq!(*reason, EndReason::Cleared);
            // Cleared when at most 1 of the last 4 is over: 3 clean frames after seq 21.
            assert_eq!(alert.last_seq, 24);
        }
        other => panic!("{other:?}"),
    }
    let m = r.metrics.stream("s");
    assert_eq!((m.frames_captured.get(), m.frames_scored.get(), m.frames_bad.get()), (34, 34, 2));
    assert_eq!(m.alerts_raised.get(), 1);
    let st = &summary.streams["s"];
    assert_eq!(st.windows.len(), 3);
    assert_eq!(st.windows[1].detection_delay(), Some((3, Duration::from_millis(200))));
    assert_eq!(st.false_alarms(), 0);
}

#[test]
fn stop_closes_open_alerts_with_reason_shutdown() {
    let r = start(vec![(5, 128, "clean"), (1, 255, "noise:5")], true, None);
    // Wait until the alert is open, then stop.
    let t0 = Instant::now();
    while !r.events.lock().unwrap().iter().any(|e| e.kind() == "alert_start") {
        assert!(t0.elapsed() < Duration::from_secs(30), "no alert");
        std::thread::sleep(Duration::from_millis(5));
    }
    r.pipeline.stop();
    let exits = wait_for_alert_stage(&r.pipeline);
    assert!(exits.iter().all(|e| e.result.is_ok()), "{exits:?}");
    assert!(!r.pipeline.all_streams_ended());
    r.pipeline.finish(Instant::now() + Duration::from_secs(5)).unwrap();
    let ev = r.events.lock().unwrap().clone();
    let last = ev.last().unwrap();
    assert!(matches!(last, Event::AlertEnd { reason: EndReason::Shutdown, .. }), "{last:?}");
    assert_eq!(ev.iter().filter(|e| e.kind() == "alert_start").count(), 1);
}

#[test]
fn drop_oldest_never_blocks_capture_and_accounts_for_every_frame() {
    // 300 frames arrive at once; inference takes 5 ms a batch of at most 3: most are dropped.
    let r = start_with(vec![(300, 128, "clean")], false, None, DropPolicy::DropOldest, Duration::from_millis(5), None);
    let exits = wait_for_alert_stage(&r.pipeline);
    assert!(exits.iter().all(|e| e.result.is_ok()), "{exits:?}");
    let m = r.metrics.stream("s");
    assert_eq!(m.frames_captured.get(), 300);
    assert!(m.frames_dropped.get() > 0);
    assert_eq!(m.frames_scored.get() + m.frames_dropped.get(), 300);
    assert_eq!(r.metrics.batch_size().sum() as u64, m.frames_scored.get());
}

#[test]
fn stream_down_up_transitions_and_roi() {
    // Repeated Downs are one transition; the ROI fits the 4x4 frames.
    let plan = vec![(3, 128, "clean"), (3, 2, "-"), (1, 3, "-"), (2, 128, "clean")];
    let roi = Some(Roi { x: 2, y: 2, width: 2, height: 2 });
    let r = start_with(plan, false, None, DropPolicy::Block, Duration::ZERO, roi);
    wait_for_alert_stage(&r.pipeline);
    let kinds: Vec<&str> = r.events.lock().unwrap().iter().map(Event::kind).collect();
    assert_eq!(kinds, ["stream_up", "stream_down", "stream_up"]);
    assert_eq!(r.metrics.stream("s").frames_scored.get(), 5);
    assert_eq!(r.metrics.stream("s").frames_bad.get(), 0);
    // The image-quality measures are of the whole 4x4 frame, not the 2x2 crop the model saw.
    let whole = gradwatch::quality::measure(&RgbImage::new(4, 4, vec![128; 48]).unwrap());
    assert_eq!(*r.metrics.stream("s").frame_quality.read().unwrap(), Some(whole));
    // A ROI outside the frame: every frame is bad, none scored, no crash.
    let roi = Some(Roi { x: 3, y: 0, width: 2, height: 2 });
    let r = start_with(vec![(4, 128, "clean")], false, None, DropPolicy::Block, Duration::ZERO, roi);
    let exits = wait_for_alert_stage(&r.pipeline);
    assert!(exits.iter().all(|e| e.result.is_ok()), "{exits:?}");
    assert_eq!(r.metrics.stream("s").frames_bad.get(), 4);
    assert_eq!(r.metrics.stream("s").frames_scored.get(), 0);
}

#[test]
fn streams_share_batches_and_keep_their_own_alerts() {
    let clock = Arc::new(SimClock::new());
    let metrics = Metrics::new();
    let env = Env::new(clock.clone(), metrics.clone());
    let spec = |name: &str, plan| StreamSpec {
        name: name.into(),
        roi: None,
        queue: QueueConfig { size: 4, policy: DropPolicy::Block },
        score_fps: None,
        source: Box::new(FakeSource { clock: clock.clone(), plan, i: 0, k: 0, forever: false }),
    };
    let streams = vec![spec("a", vec![(30, 128, "clean")]), spec("b", vec![(10, 128, "clean"), (20, 255, "x")])];
    let alert = fakes::quick_alerts();
    let events = Arc::new(Mutex::new(Vec::new()));
    let cls = Brightness::new();
    let p = Pipeline::start(
        &env,
        &PipelineConfig { max_batch: 4, max_wait_ms: 2, ..PipelineConfig::default() },
        &alert,
        streams,
        Box::new(cls),
        Scoring { calibration: Arc::new(calibration("full")), threshold: 9.0 },
        vec![Box::new(MemorySink::new(events.clone()))],
    )
    .unwrap();
    wait_for_alert_stage(&p);
    let summary = p.finish(Instant::now() + Duration::from_secs(5)).unwrap();
    assert_eq!(metrics.stream("a").frames_scored.get(), 30);
    assert_eq!(metrics.stream("b").frames_scored.get(), 30);
    assert_eq!(metrics.batch_size().sum() as u64, 60);
    assert!(metrics.batch_size().count() <= 60);
    let ev = events.lock().unwrap().clone();
    // Each stream's first event is its stream_up.
    for name in ["a", "b"] {
        assert_eq!(ev.iter().find(|e| e.stream() == name).map(Event::kind), Some("stream_up"), "{ev:?}");
    }
    let ev: Vec<Event> = ev.into_iter().filter(|e| e.kind() != "stream_up").collect();
    // Stream b's alert is open at its end: closed with reason shutdown; a has none.
    assert!(ev.iter().all(|e| e.stream() == "b"), "{ev:?}");
    assert_eq!(ev.iter().map(Event::kind).collect::<Vec<_>>(), ["alert_start", "alert_end"]);
    assert!(matches!(ev[1], Event::AlertEnd { reason: EndReason::Shutdown, .. }));
    assert_eq!(summary.streams["a"].alerts, 0);
    assert_eq!(summary.streams["b"].windows[1].detection_delay().map(|d| d.0), Some(3));
}

#[test]
fn many_streams_ending_together_all_scored() {
    // Regression: streams finishing in the same gather pass (found by the daemon benchmark
    // with four replays) made the inference stage panic while removing their queues.
    for round in 0..5 {
        let clock = Arc::new(SimClock::new());
        let metrics = Metrics::new();
        let env = Env::new(clock.clone(), metrics.clone());
        let names: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
        let streams = names
            .iter()
            .map(|name| StreamSpec {
                name: name.clone(),
                roi: None,
                queue: QueueConfig { size: 4, policy: DropPolicy::Block },
                score_fps: None,
                source: Box::new(FakeSource {
                    clock: clock.clone(),
                    plan: vec![(3 + round, 128, "clean")],
                    i: 0,
                    k: 0,
                    forever: false,
                }),
            })
            .collect();
        let cls = Brightness::new();
        let p = Pipeline::start(
            &env,
            &PipelineConfig { max_batch: 4, max_wait_ms: 1, ..PipelineConfig::default() },
            &AlertConfig::default(),
            streams,
            Box::new(cls),
            Scoring { calibration: Arc::new(calibration("full")), threshold: 9.0 },
            vec![],
        )
        .unwrap();
        let exits = wait_for_alert_stage(&p);
        assert!(exits.iter().all(|e| e.result.is_ok()), "{exits:?}");
        for n in &names {
            assert_eq!(metrics.stream(n).frames_scored.get(), 3 + round as u64, "{n}");
        }
    }
}

#[test]
fn a_panicking_stage_is_reported() {
    let r = start(vec![(1, 128, "clean")], true, Some(2));
    let exits = wait_for_alert_stage(&r.pipeline);
    let inf = exits.iter().find(|e| e.stage == "inference").expect("inference exit reported");
    let err = inf.result.as_ref().unwrap_err();
    assert!(err.contains("fake model exploded"), "{err}");
    r.pipeline.stop();
}
