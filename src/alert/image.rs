//! Whole-frame image evidence: a second CUSUM per stream, fed once a second by the image-quality
//! measures of the *whole* captured frame (`crate::quality`), beside the model's.
//!
//! A dirty lens, fog or a failing sensor covers the whole picture, not only the region the
//! classifier sees; the whole frame shows it seconds before the classifier's scores on one sign
//! do (`docs/results/alarms.md`, "Whole-frame image evidence": fused, the median harmful delay
//! of the proxy scene fell from 8.8 s to 4.1 s at no false alarm).
//!
//! What the stream learns ([`ImageBaseline`]), in two periods of `learn_minutes` of samples:
//! - the **norm** ([`ImageNorm`]): per measure, the median and the distances of the 1st and
//!   99th percentiles from it;
//! - then the **baseline** of the evidence: the clean distribution of the per-second deviation
//!   from the norm ([`ImageNorm::deviation`]), learned from the *next* period: a camera's next
//!   ten minutes show other scenes than its first ten, and a baseline of the same samples would
//!   not know how far new scenes stray from the norm (the lab's real camera alarmed in nearly
//!   every onset's lead-in when both were learned from the same tracks).
//!
//! Then each sample's deviation becomes a p-value under the baseline and feeds a CUSUM with the
//! setting of [`SETTING`] at half the stream's stated rate (the model's CUSUM gets the other
//! half, so the camera's stated rate holds for the pair). Samples taken while an alert is open
//! are not learned. The learned baseline is fixed (no adaptation): delete its file from the
//! state directory to learn the camera's picture again.

use serde::{Deserialize, Serialize};

use super::{Baseline, Cusum, CusumParams};
use crate::quality::Measure;

/// Measures per sample.
pub const MEASURES: usize = Measure::ALL.len();
/// One sample: the whole frame's measures, in the order of [`Measure::ALL`].
pub type Quality = [f32; MEASURES];

/// The measures the evidence leaves out: the exposure level (brightness and the clipped
/// shares). Ten minutes of a camera rarely show its darkest scenes (on the lab's test tracks
/// the learned 99th percentile of the crushed-black share was 0.003, ten clean hours' 0.035),
/// and a change of light alone is often harmless to the classifier; where it is not, the
/// model's evidence says so.
pub const IGNORED_MEASURES: [Measure; 3] = [Measure::Brightness, Measure::ClipLow, Measure::ClipHigh];

/// The measures read, with their index into a [`Quality`].
pub fn measures_read() -> impl Iterator<Item = (usize, Measure)> {
    Measure::ALL.into_iter().enumerate().filter(|(_, m)| !IGNORED_MEASURES.contains(m))
}

/// Smallest spread a measure is scaled by (a measure constant while learning).
const SPREAD_FLOOR: f32 = 1e-6;

/// How the image CUSUM turns deviations into evidence.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageSetting {
    /// Calibrator exponent (see [`super::cusum`]).
    pub kappa: f64,
    /// Least tail scale of the p-values, in deviation units.
    pub tail_floor: f32,
    /// Lorden's bound for `h` (else the run length simulated on the learned baseline).
    pub bound: bool,
}

/// The shipped setting: `kappa` 0.1 (evidence only from seconds well beyond the learned
/// picture), a tail floor of 0.5 (an excursion past the learned sample is scored as if the tail
/// fell by e per half a learned 1 %-distance, however light the learned tail) and Lorden's
/// bound (ten minutes of a camera's picture understate its spread, and a threshold simulated on
/// them gave the lab's real camera 11 to 209 false alarms in 10 h). Chosen from the settings
/// table of `docs/results/alarms.md`: the lightest floor at which neither camera raised a false
/// alarm.
pub const SETTING: ImageSetting = ImageSetting { kappa: 0.1, tail_floor: 0.5, bound: true };

/// The share of the stream's stated false-alarm rate given to the image CUSUM (the model's
/// gets the rest).
pub const RATE_SHARE: f64 = 0.5;

/// Seed of the threshold simulation under a simulated setting.
const SIMULATION_SEED: u64 = 0x1_3a6e;

/// Seconds between samples: the capture thread measures the whole frame once per second of
/// frame time, and each sample is one block of the CUSUM.
pub const SAMPLE_MS: u64 = 1000;

/// A camera's learned image-quality measures: per measure, the median and the distances of the
/// 99th and 1st percentiles from it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageNorm {
    /// Median per measure.
    pub centre: Vec<f32>,
    /// 99th percentile minus the median (at least a small floor).
    pub upper: Vec<f32>,
    /// Median minus the 1st percentile (at least a small floor).
    pub lower: Vec<f32>,
}

impl ImageNorm {
    /// Learned from a camera's samples; `None` when a measure has no finite sample.
    pub fn learn(samples: &[Quality]) -> Option<ImageNorm> {
        let mut n = ImageNorm { centre: vec![0.0; MEASURES], upper: vec![0.0; MEASURES], lower: vec![0.0; MEASURES] };
        for j in 0..MEASURES {
            let mut v: Vec<f32> = samples.iter().map(|s| s[j]).filter(|x| x.is_finite()).collect();
            if v.is_empty() {
                return None;
            }
            v.sort_by(f32::total_cmp);
            let at = |q: f64| v[(q * (v.len() - 1) as f64).round() as usize];
            let c = at(0.5);
            n.centre[j] = c;
            n.upper[j] = (at(0.99) - c).max(SPREAD_FLOOR);
            n.lower[j] = (c - at(0.01)).max(SPREAD_FLOOR);
        }
        Some(n)
    }

    /// The largest scaled deviation of `q` over the measures read (all but
    /// [`IGNORED_MEASURES`]): 0 at the medians, 1 as unusual as the learned 1 %; a non-finite
    /// measure counts for nothing.
    pub fn deviation(&self, q: &Quality) -> f32 {
        let mut worst = 0.0f32;
        for (j, _) in measures_read() {
            let (Some(&c), Some(&up), Some(&lo)) = (self.centre.get(j), self.upper.get(j), self.lower.get(j)) else {
                continue;
            };
            let d = q[j] - c;
            let z = if d > 0.0 { d / up } else { -d / lo };
            if z.is_finite() {
                worst = worst.max(z);
            }
        }
        worst
    }

    /// Checks what a loaded file must meet.
    fn validate(&self) -> Result<(), String> {
        let ok = |v: &Vec<f32>, spread: bool| {
            v.len() == MEASURES && v.iter().all(|x| x.is_finite() && (!spread || *x >= SPREAD_FLOOR))
        };
        if !(ok(&self.centre, false) && ok(&self.upper, true) && ok(&self.lower, true)) {
            return Err(format!("image norm needs {MEASURES} finite medians and positive spreads"));
        }
        Ok(())
    }
}

/// File format version of a saved [`ImageBaseline`].
pub const FORMAT: u32 = 1;

/// What a stream learned of its own picture: the norm and the clean distribution of the
/// deviation from it. Saved in the state directory as `image-<stream>.toml` (the camera's
/// picture, whatever the model).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageBaseline {
    /// File format version ([`FORMAT`]).
    pub format: u32,
    /// Stream it was learned on.
    pub stream: String,
    /// The measures, by name, in the order of the norm's vectors.
    pub measures: Vec<String>,
    /// The learned norm.
    pub norm: ImageNorm,
    /// The clean distribution of the per-second deviation.
    pub baseline: Baseline,
}

/// The model hash an image baseline's [`Baseline`] carries (it describes no model).
const NO_MODEL: &str = "image";

impl ImageBaseline {
    /// A baseline of `stream` from its norm and the deviation's clean distribution.
    pub fn new(stream: &str, norm: ImageNorm, baseline: Baseline) -> ImageBaseline {
        ImageBaseline { format: FORMAT, stream: stream.to_string(), measures: Self::names(), norm, baseline }
    }

    /// Learned offline from a clean recording's samples in time order (one a second): the norm
    /// from the first half, the deviation's distribution from the second, as the daemon learns
    /// them over two periods. `None` with fewer than 20 finite samples in either half.
    pub fn from_samples(stream: &str, samples: &[Quality]) -> Option<ImageBaseline> {
        let (first, second) = samples.split_at(samples.len() / 2);
        let norm = ImageNorm::learn(first).filter(|_| first.len() >= 20)?;
        let deviations: Vec<f32> = second.iter().map(|q| norm.deviation(q)).collect();
        Self::from_deviations(stream, norm, &deviations)
    }

    /// The baseline of `norm` and the clean `deviations` from it (one a second); `None` with
    /// fewer than 20 finite ones.
    fn from_deviations(stream: &str, norm: ImageNorm, deviations: &[f32]) -> Option<ImageBaseline> {
        let baseline = Baseline::from_blocks(stream, NO_MODEL, SAMPLE_MS, deviations)?;
        Some(ImageBaseline::new(stream, norm, baseline))
    }

    fn names() -> Vec<String> {
        Measure::ALL.iter().map(|m| m.name().to_string()).collect()
    }

    /// Checks what a loaded file must meet.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("image baseline format {} (this build reads {FORMAT})", self.format));
        }
        if self.measures != Self::names() {
            return Err("image baseline measures differ from this build's (learn it again)".into());
        }
        self.norm.validate()?;
        self.baseline.validate()
    }

    /// The file of `stream`'s image baseline inside a state directory.
    pub fn file_name(stream: &str) -> String {
        format!("image-{}.toml", crate::names::encode(stream))
    }

    /// Writes it into `dir` (created if missing), atomically.
    pub fn save(&self, dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
        let text = toml::to_string(self).map_err(|e| format!("cannot serialize the image baseline: {e}"))?;
        crate::base::path::write_state_file(dir, &Self::file_name(&self.stream), &text)
    }

    /// Reads `stream`'s image baseline from `dir`: `Ok(None)` when there is none; an error when
    /// the file is unreadable, invalid or names another stream.
    pub fn load(dir: &std::path::Path, stream: &str) -> Result<Option<ImageBaseline>, String> {
        let path = dir.join(Self::file_name(stream));
        let Some(text) = crate::base::path::read_state_file(&path, super::baseline::MAX_FILE_BYTES)? else {
            return Ok(None);
        };
        let b: ImageBaseline = toml::from_str(&text)
            .map_err(|e| format!("{}: {}", path.display(), e.message().chars().take(200).collect::<String>()))?;
        b.validate().map_err(|e| format!("{}: {e}", path.display()))?;
        if b.stream != stream {
            return Err(format!("{}: belongs to stream `{}`", path.display(), b.stream));
        }
        Ok(Some(b))
    }
}

/// What one sample makes of the image evidence.
#[derive(Clone, Debug, PartialEq)]
pub enum ImageVerdict {
    /// Nothing to act on (learning, or no alert and none raised).
    Wait,
    /// Raise an alert (only when none is open) whose first sample is the first of the current
    /// run of `S > 0` (the change-point estimate): its sequence number and time.
    Raise(u64, std::time::SystemTime),
    /// An alert is open: whether this evidence would clear it (`T >= clear_evidence`).
    Open(bool),
}

/// One stream's image evidence: learning, then its CUSUM (see the module doc).
#[derive(Clone, Debug)]
pub struct ImageEvidence {
    stream: String,
    /// Samples per learning period.
    period: usize,
    norm_samples: Vec<Quality>,
    deviations: Vec<f32>,
    /// The norm of the first period, while the second is learned.
    norm: Option<ImageNorm>,
    learned: Option<ImageBaseline>,
    changed: bool,
    stat: Cusum,
    setting: ImageSetting,
    /// The image's share of the stated rate.
    rate: f64,
    /// `h` in force, and the clearing evidence.
    h: f64,
    clear: f64,
    run_start: Option<(u64, std::time::SystemTime)>,
}

impl ImageEvidence {
    /// Evidence for `stream` learning over two periods of `learn_minutes` of samples, its
    /// CUSUM set as `setting` at [`RATE_SHARE`] of `false_alarms_per_day`, clearing at
    /// `clear_evidence`. The daemon uses [`SETTING`]; the lab compares others.
    pub fn new(
        stream: &str,
        learn_minutes: f64,
        setting: ImageSetting,
        false_alarms_per_day: f64,
        clear_evidence: f64,
    ) -> ImageEvidence {
        let period = ((learn_minutes * 60_000.0 / SAMPLE_MS as f64).ceil() as usize).max(20);
        let rate = false_alarms_per_day * RATE_SHARE;
        ImageEvidence {
            stream: stream.to_string(),
            period,
            norm_samples: Vec::new(),
            deviations: Vec::new(),
            norm: None,
            learned: None,
            changed: false,
            stat: Cusum::default(),
            setting,
            rate,
            h: CusumParams::threshold(rate, SAMPLE_MS),
            clear: clear_evidence,
            run_start: None,
        }
    }

    /// Uses a saved baseline (learned earlier on this stream).
    pub fn set_learned(&mut self, b: ImageBaseline) -> Result<(), String> {
        b.validate()?;
        if b.stream != self.stream {
            return Err(format!("image baseline of stream `{}`", b.stream));
        }
        self.h = self.threshold(Some(&b.baseline));
        self.learned = Some(b);
        Ok(())
    }

    /// `h` for the learned `baseline`: Lorden's bound, or under a simulated setting the level
    /// whose simulated mean run length gives the rate (see [`super::run_length`]).
    fn threshold(&self, baseline: Option<&Baseline>) -> f64 {
        match baseline {
            Some(b) if !self.setting.bound => {
                let s = &self.setting;
                let floor = f64::from(s.tail_floor);
                super::run_length::simulated_threshold_cached(b, floor, s.kappa, self.rate, SAMPLE_MS, SIMULATION_SEED)
                    .h
            }
            _ => CusumParams::threshold(self.rate, SAMPLE_MS),
        }
    }

    /// The learned baseline, if any.
    pub fn learned(&self) -> Option<&ImageBaseline> {
        self.learned.as_ref()
    }

    /// The baseline when it was learned since the last call (to save it).
    pub fn take_changed(&mut self) -> Option<ImageBaseline> {
        if std::mem::take(&mut self.changed) {
            self.learned.clone()
        } else {
            None
        }
    }

    /// Samples learned so far and samples needed (two periods), while learning.
    pub fn learning_progress(&self) -> Option<(usize, usize)> {
        self.learned.is_none().then(|| (self.norm_samples.len() + self.deviations.len(), 2 * self.period))
    }

    /// The CUSUM's `S` and `h`.
    pub fn statistic(&self) -> (f64, f64) {
        (self.stat.s, self.h)
    }

    /// One sample, of the frame `seq` at `time`; `open` when an alert is open.
    pub fn sample(&mut self, seq: u64, time: std::time::SystemTime, q: &Quality, open: bool) -> ImageVerdict {
        let Some(b) = self.learned.as_ref() else {
            if !open {
                self.learn(q);
            }
            return ImageVerdict::Wait;
        };
        let x = b.norm.deviation(q);
        let p = b.baseline.p_value(x, f64::from(self.setting.tail_floor));
        let params = CusumParams { h: self.h, clear: self.clear, kappa: self.setting.kappa, theta: b.baseline.theta };
        self.stat.update(&params, p, open);
        if open {
            return ImageVerdict::Open(self.stat.t >= self.clear);
        }
        if self.stat.s <= 0.0 {
            self.run_start = None;
            return ImageVerdict::Wait;
        }
        let (first_seq, first_time) = *self.run_start.get_or_insert((seq, time));
        if self.stat.s >= self.h {
            self.stat.t = 0.0;
            self.run_start = None;
            return ImageVerdict::Raise(first_seq, first_time);
        }
        ImageVerdict::Wait
    }

    fn learn(&mut self, q: &Quality) {
        match &self.norm {
            None => {
                self.norm_samples.push(*q);
                if self.norm_samples.len() >= self.period {
                    self.norm = ImageNorm::learn(&self.norm_samples);
                    // A measure never finite (a broken frame source): start over.
                    self.norm_samples.clear();
                }
            }
            Some(norm) => {
                self.deviations.push(norm.deviation(q));
                if self.deviations.len() >= self.period {
                    let learned = ImageBaseline::from_deviations(&self.stream, norm.clone(), &self.deviations);
                    self.deviations.clear();
                    match learned {
                        Some(b) => {
                            self.h = self.threshold(Some(&b.baseline));
                            self.learned = Some(b);
                            self.changed = true;
                        }
                        None => self.norm = None,
                    }
                }
            }
        }
    }

    /// Takes over what `old` learned (samples, norm, baseline) when a reload replaces the
    /// tracker; the CUSUM starts from 0 under the new policy's rate.
    pub fn carry_from(&mut self, old: &mut ImageEvidence) {
        self.norm_samples = std::mem::take(&mut old.norm_samples);
        self.deviations = std::mem::take(&mut old.deviations);
        self.norm = old.norm.take();
        self.learned = old.learned.take();
        self.changed = std::mem::take(&mut old.changed);
        self.h = self.threshold(self.learned.as_ref().map(|b| &b.baseline));
    }

    /// The open alert ended (or the stream restarted): both statistics back to 0.
    pub fn reset(&mut self) {
        self.stat.reset();
        self.run_start = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn sample(v: f32) -> Quality {
        [v; MEASURES]
    }

    /// Hand-computed: samples 0..=100 give median 50 and 1st/99th percentiles 1 and 99, so a
    /// measure at 99 or 1 deviates by 1, at 148 by 2; left-out measures move nothing; NaN
    /// counts for nothing; a constant measure is scaled by the floor.
    #[test]
    fn the_deviation_is_scaled_by_the_learned_percentiles() {
        let samples: Vec<Quality> = (0..=100).map(|i| sample(i as f32)).collect();
        let n = ImageNorm::learn(&samples).unwrap();
        assert_eq!((n.centre[0], n.upper[0], n.lower[0]), (50.0, 49.0, 49.0));
        assert_eq!(n.deviation(&sample(50.0)), 0.0);
        assert!((n.deviation(&sample(99.0)) - 1.0).abs() < 1e-6);
        assert!((n.deviation(&sample(1.0)) - 1.0).abs() < 1e-6);
        assert!((n.deviation(&sample(148.0)) - 2.0).abs() < 1e-6);
        let mut q = sample(50.0);
        for m in IGNORED_MEASURES {
            q[Measure::ALL.iter().position(|x| *x == m).unwrap()] = 1e6;
        }
        assert_eq!(n.deviation(&q), 0.0);
        let (j, _) = measures_read().next().unwrap();
        q[j] = f32::NAN;
        assert_eq!(n.deviation(&q), 0.0);
        let flat = ImageNorm::learn(&[sample(0.0); 10]).unwrap();
        assert!((flat.deviation(&sample(2e-6)) - 2.0).abs() < 1e-3);
        assert!(ImageNorm::learn(&[sample(f32::NAN)]).is_none());
    }

    fn at(i: u64) -> std::time::SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_767_225_600 + i)
    }

    /// A noisy clean picture: measure `j` of sample `i` varies around 10.
    fn clean(i: u64) -> Quality {
        let mut q = [10.0; MEASURES];
        for (j, v) in q.iter_mut().enumerate() {
            *v += (((i * 7919 + j as u64 * 104_729) % 1000) as f32 / 1000.0) - 0.5;
        }
        q
    }

    /// Learns over two periods (one minute each: 60 samples), then raises on a picture far
    /// from the norm from the first sample of the run, within a few samples, and the clean
    /// picture clears it.
    #[test]
    fn learns_in_two_periods_then_raises_and_clears() {
        let mut e = ImageEvidence::new("cam", 1.0, SETTING, 1.2, 3.0);
        for i in 0..119 {
            assert_eq!(e.sample(i, at(i), &clean(i), false), ImageVerdict::Wait);
        }
        assert_eq!(e.learning_progress(), Some((59, 120)));
        assert_eq!(e.sample(119, at(119), &clean(119), false), ImageVerdict::Wait);
        let b = e.take_changed().expect("learned");
        assert_eq!(b.baseline.learned_blocks, 60);
        assert!(e.take_changed().is_none() && e.learning_progress().is_none());
        // An hour of clean picture raises nothing.
        for i in 120..3720 {
            assert_eq!(e.sample(i, at(i), &clean(i), false), ImageVerdict::Wait, "false alarm at {i}");
        }
        // A blurred picture: every measure read far below the norm.
        let mut raised = None;
        for i in 3720..3760 {
            if let ImageVerdict::Raise(seq, t) = e.sample(i, at(i), &[0.0; MEASURES], false) {
                raised = Some((i, seq, t));
                break;
            }
        }
        let (i, seq, t) = raised.expect("no raise");
        assert!(i - 3720 < 10, "raised after {} samples", i - 3720);
        assert_eq!((seq, t), (3720, at(3720)));
        let (s, h) = e.statistic();
        assert!(s >= h && (h - (86_400.0f64 / 0.6).ln()).abs() < 1e-9);
        let mut cleared = false;
        for i in i + 1..i + 30 {
            if e.sample(i, at(i), &clean(i), true) == ImageVerdict::Open(true) {
                cleared = true;
                break;
            }
        }
        assert!(cleared, "the clean picture never cleared the alert");
    }

    /// Samples during an open alert are not learned.
    #[test]
    fn open_alerts_are_not_learned() {
        let mut e = ImageEvidence::new("cam", 1.0, SETTING, 1.2, 3.0);
        for i in 0..200 {
            let _ = e.sample(i, at(i), &clean(i), true);
        }
        assert_eq!(e.learning_progress(), Some((0, 120)));
    }

    /// A saved baseline round-trips through its file; another stream's or a damaged one is
    /// refused with the path.
    #[test]
    fn saves_and_loads() {
        let mut e = ImageEvidence::new("cam 1", 1.0, SETTING, 1.2, 3.0);
        for i in 0..120 {
            let _ = e.sample(i, at(i), &clean(i), false);
        }
        let b = e.take_changed().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = b.save(dir.path()).unwrap();
        assert_eq!(ImageBaseline::load(dir.path(), "cam 1").unwrap(), Some(b.clone()));
        assert_eq!(ImageBaseline::load(dir.path(), "cam 2").unwrap(), None);
        std::fs::write(&path, "format = 1").unwrap();
        assert!(ImageBaseline::load(dir.path(), "cam 1").unwrap_err().contains("image-"));
        let mut other = b.clone();
        other.norm.upper[0] = 0.0;
        assert!(other.validate().is_err());
        // Offline from the same samples: the same baseline.
        let samples: Vec<Quality> = (0..120).map(clean).collect();
        assert_eq!(ImageBaseline::from_samples("cam 1", &samples).as_ref(), Some(&b));
        assert!(ImageBaseline::from_samples("cam 1", &samples[..39]).is_none());
        let mut fresh = ImageEvidence::new("cam 1", 1.0, SETTING, 1.2, 3.0);
        fresh.set_learned(b.clone()).unwrap();
        assert!(fresh.learning_progress().is_none());
        assert!(ImageEvidence::new("cam 2", 1.0, SETTING, 1.2, 3.0).set_learned(b).is_err());
    }
}
