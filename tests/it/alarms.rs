//! The `cusum` policy and per-stream baselines on synthetic score streams in frame time (the
//! tracker only sees frame times, so an hour of 10 fps runs in milliseconds): the stated
//! false-alarm rate holds on i.i.d. and on track-correlated streams, delays are as documented,
//! baselines are saved, reloaded and not polluted by alarms; replay `realtime = false` and
//! `ramp` on the simulated clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gradwatch::alert::{AlertPolicy, AlertTracker, Baseline, BaselineConfig, Event, ModelRef, PolicyKind, Scored};
use gradwatch::rng::SplitMix64;

const SHA: &str = "cd";
const FRAME_MS: u64 = 100;

fn model() -> ModelRef {
    ModelRef { name: "m".into(), sha256: SHA.repeat(32) }
}

fn t(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_704_067_200_000 + ms)
}

fn frame(seq: u64, score: f32) -> Scored {
    Scored {
        stream: "cam0".into(),
        seq,
        time: t(seq * FRAME_MS),
        score,
        threshold: 2.0,
        clean_tail_scale: 0.0,
        top_class: 0,
        top_class_name: None,
        confidence: 1.0,
        tag: None,
    }
}

fn cusum(false_alarms_per_day: f64) -> AlertPolicy {
    AlertPolicy { policy: PolicyKind::Cusum, false_alarms_per_day, update_interval_ms: 0, ..AlertPolicy::default() }
}

/// Synthetic camera: tracks of 10-30 frames; each track has its own difficulty (a normal
/// offset with sd `track_sd`), every frame adds normal noise with sd `frame_sd`. `track_sd = 0`
/// gives i.i.d. frames.
struct Camera {
    rng: SplitMix64,
    track_sd: f64,
    frame_sd: f64,
    left: usize,
    offset: f64,
    shift: f64,
    /// Track offsets above this are clipped (a stretch without really hard signs).
    cap: f64,
}

impl Camera {
    fn new(seed: u64, track_sd: f64, frame_sd: f64) -> Self {
        Camera { rng: SplitMix64::new(seed), track_sd, frame_sd, left: 0, offset: 0.0, shift: 0.0, cap: f64::INFINITY }
    }

    fn next(&mut self) -> f32 {
        if self.left == 0 {
            self.left = 10 + self.rng.below(21);
            self.offset = (self.track_sd * self.rng.normal()).min(self.cap);
        }
        self.left -= 1;
        (self.offset + self.frame_sd * self.rng.normal() + self.shift) as f32
    }
}

/// Block medians of `blocks` seconds of `cam` (the baseline's input), in time order.
fn learn(cam: &mut Camera, blocks: usize) -> Baseline {
    let per = (1000 / FRAME_MS) as usize;
    let medians: Vec<f32> = (0..blocks)
        .map(|_| {
            let mut v: Vec<f32> = (0..per).map(|_| cam.next()).collect();
            gradwatch::alert::cusum::block_statistic(&mut v)
        })
        .collect();
    Baseline::from_blocks("cam0", &SHA.repeat(32), 1000, &medians).unwrap()
}

/// Alert starts over `hours` of frame time; the tracker uses `baseline`, no adaptation.
fn false_alarms(cam: &mut Camera, baseline: &Baseline, policy: AlertPolicy, hours: f64) -> usize {
    false_alarms_with_tail(cam, baseline, policy, hours, 0.0)
}

/// [`false_alarms`] with frames carrying the calibration's clean tail scale `tail`.
fn false_alarms_with_tail(cam: &mut Camera, baseline: &Baseline, policy: AlertPolicy, hours: f64, tail: f32) -> usize {
    let mut tr = AlertTracker::new("cam0", policy, model()).unwrap();
    tr.set_baseline(baseline.clone()).unwrap();
    let frames = (hours * 3_600_000.0 / FRAME_MS as f64) as u64;
    let mut n = 0;
    for seq in 0..frames {
        let f = Scored { clean_tail_scale: tail, ..frame(seq, cam.next()) };
        for e in tr.push(&f) {
            n += usize::from(matches!(e, Event::AlertStart { .. }));
        }
    }
    n
}

/// The stated rate is an upper bound (Lorden: mean time to a false alarm >= exp(h) blocks for
/// independent blocks). Over 200 h at a stated 2 per hour (400 expected at most), a Poisson
/// count exceeds 400 + 3 * sqrt(400) = 460 with probability ~0.1 %: that is the tolerance. The
/// bound is loose (the exponential tail fitted to the top tenth of the baseline is heavier than
/// a normal's), so the mapping is also checked where alarms are frequent enough to count: at a
/// stated 200 an hour over 20 h, between a hundredth of the bound and the bound.
#[test]
fn stated_rate_holds_on_iid_frames() {
    let mut cam = Camera::new(1, 0.0, 1.0);
    let b = learn(&mut cam, 3600);
    for (per_day, hours, lower) in [(48.0, 200.0, 0.0), (4800.0, 20.0, 0.01)] {
        let n = false_alarms(&mut cam, &b, cusum(per_day), hours);
        let stated = per_day / 24.0 * hours;
        assert!((n as f64) <= stated + 3.0 * stated.sqrt(), "{n} false alarms, stated at most {stated}");
        assert!((n as f64) >= lower * stated, "{n} false alarms: the bound {stated} is vacuous");
    }
}

/// Hard signs: a track's difficulty lasts its 1-3 s, so block medians come in correlated runs.
/// The baseline's extremal index (theta < 1) scales the increments so that a run counts once;
/// the same tolerance as for i.i.d. frames holds.
#[test]
fn stated_rate_holds_on_track_correlated_frames() {
    let mut cam = Camera::new(2, 1.0, 0.3);
    let b = learn(&mut cam, 3600);
    assert!(b.theta < 0.8, "theta {} should see the runs", b.theta);
    let per_day = 48.0;
    let hours = 200.0;
    let n = false_alarms(&mut cam, &b, cusum(per_day), hours);
    let stated = per_day / 24.0 * hours;
    assert!((n as f64) <= stated + 3.0 * stated.sqrt(), "{n} false alarms, stated at most {stated}");
    // Without the dependence factor the same stream alarms far more often.
    let mut naive = b.clone();
    naive.theta = 1.0;
    let m = false_alarms(&mut Camera::new(3, 1.0, 0.3), &naive, cusum(per_day), hours);
    assert!(m > n, "theta = 1: {m} alarms vs {n}");
}

/// Ten minutes of one camera show a few hundred signs; the signs that come later reach further
/// into the tail than those (docs/results/alarms.md measured 5-10x the stated rate on GTSRB tracks).
/// Here the learning stretch saw no sign harder than 1.5 sd (its 90th percentile, where the
/// tail fit starts, is the stream's, but the tail above it is cut short): the learned tail
/// alone gives far more alarms than stated, and the calibration's clean tail scale (the
/// stream's own, as a calibration on thousands of signs measures it) restores the bound.
#[test]
fn calibration_tail_scale_bounds_a_light_learned_tail() {
    let b = learn(&mut Camera { cap: 1.5, ..Camera::new(6, 1.0, 0.3) }, 600);
    let mut long = Camera::new(7, 1.0, 0.3);
    let medians: Vec<f32> = (0..20_000)
        .map(|_| {
            let mut v: Vec<f32> = (0..10).map(|_| long.next()).collect();
            gradwatch::alert::cusum::block_statistic(&mut v)
        })
        .collect();
    let tail = gradwatch::detector::calibration::tail_scale(&medians).unwrap() as f32;
    let learned_tail = gradwatch::detector::calibration::tail_scale(&b.sample).unwrap() as f32;
    assert!(learned_tail < 0.8 * tail, "learned {learned_tail} vs true {tail}");
    let (per_day, hours) = (48.0, 100.0);
    let stated = per_day / 24.0 * hours;
    let without = false_alarms(&mut Camera::new(8, 1.0, 0.3), &b, cusum(per_day), hours);
    assert!(without as f64 > 2.0 * stated, "{without} false alarms without the floor, stated {stated}");
    let with = false_alarms_with_tail(&mut Camera::new(8, 1.0, 0.3), &b, cusum(per_day), hours, tail);
    assert!((with as f64) <= stated + 3.0 * stated.sqrt(), "{with} false alarms with the floor, stated {stated}");
}

/// A shift far beyond the baseline gives the largest increment per block, `theta * (ln kappa -
/// (1 - kappa) ln p)`; the alert starts at the first frame after the block whose increment
/// crosses h (docs/guide/alerts.md: about `ceil(h / increment)` blocks after the onset, plus the
/// frame that closes the block).
#[test]
fn delay_after_a_clear_shift_is_as_documented() {
    let mut cam = Camera::new(4, 0.0, 1.0);
    let b = learn(&mut cam, 1200);
    let policy = cusum(1.0);
    let params = policy.cusum_params(&b);
    let mut tr = AlertTracker::new("cam0", policy, model()).unwrap();
    tr.set_baseline(b.clone()).unwrap();
    let onset = 600u64; // 60 s clean
    let mut start = None;
    for seq in 0..onset + 300 {
        let s = if seq < onset { cam.next() } else { 50.0 };
        for e in tr.push(&frame(seq, s)) {
            if let Event::AlertStart { alert } = &e {
                start.get_or_insert((seq, alert.clone()));
            }
        }
    }
    let (seq, alert) = start.expect("an alert");
    let g = gradwatch::alert::Cusum::increment(&params, b.p_value(50.0, 0.0));
    let blocks = (params.h / g).ceil() as u64;
    assert!(seq >= onset, "alert before the onset");
    // Blocks start at frame 0, so the onset falls on a block boundary: the alert comes with
    // the first frame after `blocks` corrupted blocks.
    assert_eq!(seq, onset + blocks * 10, "h {} g {g}", params.h);
    assert_eq!(alert.detail.policy.as_deref(), Some("cusum"));
    assert!(alert.detail.statistic.unwrap() >= params.h);
    assert_eq!(alert.detail.false_alarms_per_day, Some(1.0));
    assert_eq!(alert.detail.baseline.as_deref(), Some("learned"));
    // Without image evidence the events do not name one.
    assert_eq!((alert.detail.evidence.as_ref(), alert.detail.image_statistic), (None, None));
    // first_seq is the CUSUM's change-point estimate: the first frame of the run of S > 0 that
    // crossed h, a block boundary at or a few clean blocks before the onset.
    assert!(alert.first_seq <= onset && alert.first_seq + 100 >= onset, "first_seq {}", alert.first_seq);
    assert_eq!(alert.first_seq % 10, 0);
}

/// Hysteresis: after the shift ends, the alert clears once `clear_evidence` for the clean
/// distribution has accumulated (and min_duration_ms passed), not at the first clean block.
#[test]
fn cusum_alert_clears_with_hysteresis() {
    let mut cam = Camera::new(5, 0.0, 1.0);
    let b = learn(&mut cam, 1200);
    let mut tr = AlertTracker::new("cam0", cusum(1.0), model()).unwrap();
    tr.set_baseline(b).unwrap();
    let mut events = Vec::new();
    for seq in 0..1200u64 {
        let s = if (300..400).contains(&seq) { 50.0 } else { cam.next() };
        for e in tr.push(&frame(seq, s)) {
            events.push((seq, e.kind()));
        }
    }
    let start = events.iter().find(|e| e.1 == "alert_start").expect("start").0;
    let end = events.iter().find(|e| e.1 == "alert_end").expect("end").0;
    assert!(start > 300 && start < 400);
    assert!(end > 410, "cleared at {end}: too early (hysteresis)");
    assert!(end < 400 + 150, "cleared at {end}: too late");
    assert_eq!(events.iter().filter(|e| e.1 == "alert_start").count(), 1);
}

/// A stream learns its baseline from clean blocks only: an alarmed period in the middle of the
/// learning (a dirty lens at install time) is not learned. The baseline round-trips through
/// the state directory.
#[test]
fn baseline_is_learned_saved_reloaded_and_not_polluted() {
    let mut tr = AlertTracker::new("cam0", cusum(1.0), model()).unwrap();
    let cfg = BaselineConfig { learn_minutes: 10.0, quarantine_s: 30.0, adapt_hours: 1.0, image: false };
    tr.learn_baseline(cfg);
    let mut cam = Camera::new(6, 0.3, 1.0);
    let mut seq = 0u64;
    let mut alarms = 0;
    // 5 min clean, 2 min corrupted (alerts under the calibration fallback), then clean until learned.
    while tr.take_changed_baseline().is_none() {
        let min = seq as f64 * FRAME_MS as f64 / 60_000.0;
        let s = if (5.0..7.0).contains(&min) { 30.0 + cam.next() } else { cam.next() };
        for e in tr.push(&frame(seq, s)) {
            alarms += usize::from(matches!(e, Event::AlertStart { .. }));
        }
        seq += 1;
        assert!(seq < 40 * 600, "never learned");
    }
    assert!(alarms >= 1, "the corrupted period should alarm under the fallback");
    let (b, learned) = tr.baseline().unwrap();
    assert!(learned);
    assert_eq!(b.learned_blocks, 600);
    assert!(b.quantile(1.0) < 10.0, "max learned block {} comes from the alarmed period", b.quantile(1.0));

    let dir = tempfile::tempdir().unwrap();
    let path = b.save(dir.path()).unwrap();
    assert!(path.file_name().unwrap().to_str().unwrap().contains("cam0"));
    let back = Baseline::load(dir.path(), "cam0", &SHA.repeat(32)).unwrap().unwrap();
    assert_eq!(&back, b);
    assert!(Baseline::load(dir.path(), "cam1", &SHA.repeat(32)).unwrap().is_none());
    let mut tr2 = AlertTracker::new("cam0", cusum(1.0), model()).unwrap();
    tr2.set_baseline(back).unwrap();
    assert!(tr2.baseline().unwrap().1);

    // Adaptation (fast here: adapt_hours = 1) during a long alarm changes nothing.
    let before = tr.baseline().unwrap().0.clone();
    for _ in 0..600 {
        tr.push(&frame(seq, 30.0));
        seq += 1;
    }
    assert!(tr.is_active());
    assert_eq!(tr.baseline().unwrap().0.sample, before.sample);
}

/// A lens that dirties slowly: the score's mean rises linearly by 3 (clean sd units) over 10
/// minutes of frame time while the baseline adapts (here 100x faster than the default). The
/// bounded adaptation (clamped to the learned 5-95 % range, quarantined, never during
/// suspicion) cannot follow: the ramp is caught before it reaches two thirds of its height.
#[test]
fn slow_ramp_is_caught_despite_adaptation() {
    let mut cam = Camera::new(7, 0.3, 1.0);
    let b = learn(&mut cam, 600);
    let mut tr = AlertTracker::new("cam0", cusum(1.0), model()).unwrap();
    tr.set_baseline(b).unwrap();
    tr.learn_baseline(BaselineConfig { learn_minutes: 10.0, quarantine_s: 30.0, adapt_hours: 1.68, image: false });
    let lead = 6000u64; // 10 min clean
    let ramp = 6000u64;
    let mut at = None;
    for seq in 0..lead + ramp {
        cam.shift = if seq < lead { 0.0 } else { 3.0 * (seq - lead) as f64 / ramp as f64 };
        let s = cam.next();
        for e in tr.push(&frame(seq, s)) {
            if matches!(e, Event::AlertStart { .. }) && at.is_none() {
                at = Some(seq);
            }
        }
    }
    let at = at.expect("the ramp was never detected");
    assert!(at > lead, "false alarm before the ramp at {at}");
    let frac = (at - lead) as f64 / ramp as f64;
    assert!(frac < 2.0 / 3.0, "detected at {:.0} % of the ramp", 100.0 * frac);
}

/// A tracker under k_of_n reports its policy and statistic in alert_start.
#[test]
fn k_of_n_alert_names_its_policy() {
    let mut tr = AlertTracker::new("cam0", AlertPolicy::default(), model()).unwrap();
    let mut start = None;
    for seq in 0..20u64 {
        for e in tr.push(&frame(seq, 5.0)) {
            if let Event::AlertStart { alert } = e {
                start = Some(alert);
            }
        }
    }
    let a = start.unwrap();
    assert_eq!(a.detail.policy.as_deref(), Some("k_of_n"));
    assert_eq!(a.detail.statistic, Some(6.0));
    assert_eq!(a.detail.statistic_threshold, Some(6.0));
    let json = Event::AlertStart { alert: a }.to_json();
    assert!(json.contains("\"policy\":\"k_of_n\""), "{json}");
}

/// `realtime = false`: frames are stamped 1/fps apart in frame time while the clock does not
/// move; a ramp goes from clean to its top level.
#[test]
fn replay_without_realtime_stamps_frame_time_and_ramps() {
    use gradwatch::base::clock::SimClock;
    use gradwatch::corrupt::{self, Corruption};
    use gradwatch::source::replay::{corrupt_at, ReplayConfig, ReplaySource};
    use gradwatch::source::{Source, SourceEvent};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.npy");
    let imgs: Vec<_> = (0..4u8)
        .map(|k| {
            gradwatch::frame::RgbImage::new(
                8,
                8,
                (0..192).map(|i| (i as u8).wrapping_mul(7).wrapping_add(k * 40)).collect(),
            )
            .unwrap()
        })
        .collect();
    gradwatch::data::save_npy_images(&path, &imgs).unwrap();
    let cfg: ReplayConfig = toml::from_str(&format!(
        "path = {:?}\nfps = 10\nrealtime = false\nschedule = [{{ frames = 5, corruption = \"haze\", ramp = [0.0, 4.0] }}]",
        path
    ))
    .unwrap();
    let clock = Arc::new(SimClock::new());
    let mut src = ReplaySource::new(&cfg, clock.clone()).unwrap();
    let mut got = Vec::new();
    for _ in 0..5 {
        match src.poll() {
            SourceEvent::Frame { image, tag } => {
                assert_eq!(tag.as_deref(), Some("haze:ramp0-4"));
                got.push((image, src.frame_time().unwrap()));
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(src.poll(), SourceEvent::End);
    assert_eq!(clock.elapsed(), Duration::ZERO, "no sleeping");
    assert_eq!(got[3].1, Duration::from_millis(300));
    assert_eq!(got[0].0, imgs[0], "level 0 is the clean frame");
    assert_eq!(got[4].0, corrupt::apply(&imgs[0], Corruption::Haze, 4, 4).unwrap(), "the last frame is level 4");
    // Fractional levels blend the neighbouring integer levels.
    let mid = corrupt_at(&imgs[1], Corruption::Haze, 1.5, 9).unwrap();
    let (a, b) = (
        corrupt::apply(&imgs[1], Corruption::Haze, 1, 9).unwrap(),
        corrupt::apply(&imgs[1], Corruption::Haze, 2, 9).unwrap(),
    );
    for ((m, x), y) in mid.data.iter().zip(&a.data).zip(&b.data) {
        assert!((*m as i32 - ((*x as i32 + *y as i32 + 1) / 2)).abs() <= 1);
    }
    // realtime = false needs a frame rate; ramp excludes level.
    let bad: ReplayConfig = toml::from_str(&format!("path = {path:?}\nrealtime = false")).unwrap();
    assert!(bad.validate().is_err());
    let bad: ReplayConfig = toml::from_str(&format!(
        "path = {path:?}\nschedule = [{{ frames = 5, corruption = \"haze\", level = 2, ramp = [0.0, 4.0] }}]"
    ))
    .unwrap();
    assert!(bad.validate().is_err());
}
