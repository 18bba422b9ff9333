//! The edge budget: the `fast` preset's metadata and calibration refusal, per-stream
//! `score_fps` and latency-aware batching on the simulated clock.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::fakes::{self, calibration, Brightness};
use gradwatch::alert::Event;
use gradwatch::base::clock::{Clock, SimClock};
use gradwatch::detector::{CalibError, Calibration};
use gradwatch::frame::RgbImage;
use gradwatch::grad::{self, CompileOptions, Preset};
use gradwatch::metrics::Metrics;
use gradwatch::pipeline::{BatchPolicy, Env, Pipeline, PipelineConfig, Scoring, StreamSpec};
use gradwatch::sink::MemorySink;
use gradwatch::source::{DropPolicy, QueueConfig, Source, SourceEvent};

/// 30 fps on the simulated clock: `dark` grey frames, then `bright` white ones, then `dark` again.
struct Camera {
    clock: Arc<SimClock>,
    k: usize,
    dark: usize,
    bright: usize,
}

impl Source for Camera {
    fn poll(&mut self) -> SourceEvent {
        if self.k >= 2 * self.dark + self.bright {
            return SourceEvent::End;
        }
        let level = if (self.dark..self.dark + self.bright).contains(&self.k) { 255 } else { 128 };
        self.k += 1;
        self.clock.advance(Duration::from_nanos(33_333_333));
        SourceEvent::Frame { image: RgbImage::new(4, 4, vec![level; 48]).unwrap(), tag: None }
    }
}

#[test]
fn score_fps_scores_evenly_spaced_frames_and_counts_the_rest_as_skipped() {
    let clock = Arc::new(SimClock::new());
    let metrics = Metrics::new();
    let env = Env::new(clock.clone(), metrics.clone());
    // 4 s at 30 fps: 1 s grey, 2 s white, 1 s grey; scored at 5 fps.
    let cam = Camera { clock: clock.clone(), k: 0, dark: 30, bright: 60 };
    let streams = vec![StreamSpec {
        name: "cam".into(),
        roi: None,
        queue: QueueConfig { size: 4, policy: DropPolicy::Block },
        source: Box::new(cam),
        score_fps: Some(5.0),
    }];
    let alert = fakes::quick_alerts();
    let events = Arc::new(Mutex::new(Vec::new()));
    let cls = Brightness::new();
    let scoring = Scoring { calibration: Arc::new(calibration("full")), threshold: 9.0 };
    let p = Pipeline::start(
        &env,
        &PipelineConfig::default(),
        &alert,
        streams,
        Box::new(cls),
        scoring,
        vec![Box::new(MemorySink::new(events.clone()))],
    )
    .unwrap();
    let until = Instant::now() + Duration::from_secs(30);
    while !p.all_streams_ended() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    p.stop();
    p.finish(Instant::now() + Duration::from_secs(10)).expect("pipeline finishes");
    let m = metrics.stream("cam");
    assert_eq!(m.frames_captured.get(), 120);
    assert_eq!(m.frames_scored.get(), 20, "5 of every 30 frames");
    assert_eq!(m.frames_skipped.get(), 100);
    assert_eq!(m.frames_dropped.get(), 0, "skipped frames are not drops");
    let ev = events.lock().unwrap().clone();
    let a = ev.iter().find_map(Event::alert).expect("the white window raises an alert");
    // Scored frames are seq 0, 6, 12, ...: the white window starts at seq 30 (scored), the
    // third scored white frame is seq 42, 400 ms of frame time later.
    assert_eq!((a.first_seq, a.last_seq), (30, 42), "{ev:?}");
    let text = metrics.render();
    assert!(text.contains("frames_skipped_total{stream=\"cam\"} 100"), "{text}");
}

#[test]
fn latency_batching_answers_at_once_when_idle_and_batches_under_load() {
    // The policy on the simulated clock: a 30 fps stream, a classifier taking 12 ms + 4 ms per
    // frame (light) or 40 ms per frame at batch 1 and 20 ms per frame batched (loaded).
    for (per_frame_ms, overhead_ms, expect_light) in [(4.0, 12.0, true), (20.0, 20.0, false)] {
        let clock = SimClock::new();
        let mut policy = BatchPolicy::new(16, 150);
        let mut queue: std::collections::VecDeque<Instant> = Default::default();
        let interval = Duration::from_nanos(33_333_333);
        let mut next_frame = clock.now();
        let (mut latencies, mut sizes) = (Vec::new(), Vec::new());
        let end = clock.now() + Duration::from_secs(20);
        while clock.now() < end {
            while next_frame <= clock.now() {
                queue.push_back(next_frame);
                next_frame += interval;
            }
            let Some(&oldest) = queue.front() else {
                clock.sleep_until(next_frame);
                continue;
            };
            let cap = policy.cap(clock.now() - oldest);
            let batch: Vec<Instant> = (0..cap.min(queue.len())).filter_map(|_| queue.pop_front()).collect();
            let took = Duration::from_secs_f64((overhead_ms + per_frame_ms * batch.len() as f64) / 1000.0);
            clock.advance(took);
            policy.observe(batch.len(), took);
            sizes.push(batch.len());
            latencies.extend(batch.iter().map(|&t| clock.now() - t));
        }
        latencies.sort();
        let p99 = latencies[latencies.len() * 99 / 100];
        let mean_batch = sizes.iter().sum::<usize>() as f64 / sizes.len() as f64;
        assert!(queue.len() < 16, "keeps up: {} queued", queue.len());
        if expect_light {
            assert!(sizes.iter().all(|&b| b == 1), "one frame at a time when idle: {sizes:?}");
            assert!(p99 <= Duration::from_millis(20), "answers at once: p99 {p99:?}");
        } else {
            assert!(mean_batch > 1.2, "batches for throughput: mean {mean_batch}");
            assert!(p99 <= Duration::from_millis(250), "p99 {p99:?}");
        }
    }
    // The cap: no estimate yet -> max_batch; past the target -> max_batch; else what fits.
    let mut p = BatchPolicy::new(8, 100);
    assert_eq!(p.cap(Duration::ZERO), 8);
    p.observe(2, Duration::from_millis(20));
    assert_eq!(p.cap(Duration::from_millis(50)), 5);
    assert_eq!(p.cap(Duration::from_millis(95)), 1);
    assert_eq!(p.cap(Duration::from_millis(150)), 8);
    assert_eq!(BatchPolicy::new(8, 0).target(), None);
}

#[test]
fn fast_preset_is_recorded_and_its_calibration_refused_for_full() {
    let model = gradwatch::onnx::load(std::path::Path::new(gradwatch::model::DEFAULT_MODEL)).unwrap();
    let fast = grad::compile(&model, &CompileOptions::preset(Preset::Fast)).unwrap();
    assert_eq!(fast.preset, "fast");
    assert_eq!(grad::preset_name(&fast.model), "fast");
    // The last stage (layer4, 4x4) and the head, then one statistic per residual block.
    let norms: Vec<&String> = fast.features.iter().filter(|f| !f.starts_with(grad::ACT_PREFIX)).collect();
    assert_eq!(norms.len(), 17, "{norms:?}");
    assert!(norms.iter().all(|f| f.starts_with("layer4.") || f.starts_with("linear.")), "{norms:?}");
    assert_eq!(fast.act_stats.len(), 8);
    let full = grad::compile(&model, &CompileOptions::default()).unwrap();
    assert_eq!((full.preset.as_str(), full.features.len()), ("full", 62));
    let sel = "layer4.*".parse().unwrap();
    assert_eq!(grad::compile(&model, &CompileOptions { params: sel, ..Default::default() }).unwrap().preset, "custom");
    // A calibration fitted for `fast` is refused for `full`, with a message that says what to do.
    let c = calibration("fast");
    let e = c.check_compiled("00", &["f".to_string()], "full").unwrap_err();
    assert!(matches!(e, CalibError::PresetMismatch { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("preset = \"fast\"") && msg.contains("--preset full"), "{msg}");
    c.check_compiled("00", &["f".to_string()], "fast").unwrap();
    // Files from before presets are `full`.
    let old = toml::to_string(&calibration("full")).unwrap().replace("preset = \"full\"\n", "");
    assert_eq!(Calibration::parse(&old).unwrap().model.preset, "full");
}
