//! A stream's own clean score distribution, at the granularity the CUSUM policy uses: one
//! *block statistic* (the median score of the frames of one block of frame time, default 1 s)
//! per block.
//!
//! A [`Baseline`] holds a bounded sample of clean block statistics, the block length they were
//! taken at, and the *extremal index* `theta` of the sequence they came from (the reciprocal
//! of the mean length of a run of tail blocks: a hard sign seen for 3 s gives a run of 3). It
//! answers one question: the p-value of a new block statistic under the clean distribution,
//! empirically in the bulk and by an exponential (peaks-over-threshold) tail fitted to the top
//! tenth beyond it.
//!
//! Learning and adaptation ([`Learner`]) never take blocks from an alarmed period: blocks wait
//! in a quarantine for `quarantine_s` and are dropped if an alert opens (or the CUSUM statistic
//! rises above half its threshold) meanwhile. After the initial learning, adaptation is slow and
//! bounded: an accepted block replaces a random sample member with probability
//! `sample / (adapt_hours * blocks per hour)` (the sample turns over in about `adapt_hours`),
//! and its value is clamped to the range between the learned 5th and 95th percentiles, so the
//! upper tail can never move past where the learned 95th percentile was: a lens that dirties
//! slowly keeps pushing the statistic up until it is caught.

use serde::{Deserialize, Serialize};

use crate::rng::SplitMix64;

/// File format version of a saved baseline.
pub const FORMAT: u32 = 1;

/// A learned clean distribution of block statistics (see the module doc).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// File format version ([`FORMAT`]).
    pub format: u32,
    /// Stream it was learned on.
    pub stream: String,
    /// SHA-256 of the model whose scores it describes.
    pub model_sha256: String,
    /// Block length in ms of frame time.
    pub block_ms: u64,
    /// Extremal index of the learning sequence, in `[0.1, 1]`.
    pub theta: f64,
    /// Blocks the initial learning used.
    pub learned_blocks: u64,
    /// Blocks accepted by adaptation since.
    pub adapted_blocks: u64,
    /// Clamp range of adapted blocks: the learned 5th and 95th percentiles.
    pub clamp: [f32; 2],
    /// The sample of block statistics (sorted ascending).
    pub sample: Vec<f32>,
}

/// Most values a baseline's sample may hold (learning keeps one per block: a week of 1 s
/// blocks is 604,800).
pub const MAX_SAMPLE: usize = 1_000_000;
/// Largest baseline file read (a full sample in TOML is about 12 bytes a value).
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Smallest p-value reported (keeps increments finite).
const P_FLOOR: f64 = 1e-12;

impl Baseline {
    /// A baseline from block statistics in time order (`theta` is estimated from that order).
    /// `None` with fewer than 20 finite values.
    pub fn from_blocks(stream: &str, model_sha256: &str, block_ms: u64, blocks: &[f32]) -> Option<Baseline> {
        let finite: Vec<f32> = blocks.iter().copied().filter(|v| v.is_finite()).collect();
        if finite.len() < 20 {
            return None;
        }
        let mut sample = finite.clone();
        sample.sort_by(f32::total_cmp);
        let clamp = [quantile(&sample, 0.05), quantile(&sample, 0.95)];
        Some(Baseline {
            format: FORMAT,
            stream: stream.to_string(),
            model_sha256: model_sha256.to_string(),
            block_ms,
            theta: extremal_index(&finite, quantile(&sample, 0.9)),
            learned_blocks: finite.len() as u64,
            adapted_blocks: 0,
            clamp,
            sample,
        })
    }

    /// Checks the invariants a loaded file must meet.
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT {
            return Err(format!("baseline format {} (this build reads {FORMAT})", self.format));
        }
        if self.sample.len() < 20 || self.sample.iter().any(|v| !v.is_finite()) {
            return Err("baseline sample needs at least 20 finite values".into());
        }
        if !(self.theta.is_finite() && (0.05..=1.0).contains(&self.theta)) {
            return Err(format!("baseline theta {} outside 0.05..=1", self.theta));
        }
        if self.block_ms == 0 || self.block_ms > 3_600_000 {
            return Err(format!("baseline block_ms = {} outside 1..=3600000", self.block_ms));
        }
        if self.sample.len() > MAX_SAMPLE {
            return Err(format!("baseline sample of {} values is over {MAX_SAMPLE}", self.sample.len()));
        }
        if self.sample.windows(2).any(|w| w[0] > w[1]) {
            return Err("baseline sample is not sorted ascending".into());
        }
        // `adapt` clamps with it: `f32::clamp` panics when min > max (or either is NaN).
        let [lo, hi] = self.clamp;
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return Err(format!("baseline clamp = [{lo}, {hi}] must be two finite numbers, the first <= the second"));
        }
        Ok(())
    }

    /// `P(X >= x)` for a clean block statistic `X`: `(1 + #{sample >= x}) / (n + 1)` in the
    /// bulk; above the 90th percentile `u`, `(k / (n + 1)) * exp(-(x - u) / beta)` with `k` the
    /// sample points above `u` and `beta` their mean excess, but at least `min_scale` (the
    /// calibration's clean tail scale: a few minutes of one camera show too few distinct signs
    /// to estimate how far the clean tail reaches, and an underestimate multiplies false
    /// alarms). NaN gives 1.
    pub fn p_value(&self, x: f32, min_scale: f64) -> f64 {
        let n = self.sample.len();
        if n == 0 || x.is_nan() {
            return 1.0;
        }
        let k = (n / 10).max(5).min(n - 1);
        let u = self.sample[n - 1 - k];
        if x > u {
            let beta = crate::detector::calibration::mean_excess(&self.sample, k).max(min_scale).max(1e-3);
            let p = (k as f64 / (n + 1) as f64) * (-(f64::from(x - u)) / beta).exp();
            return p.max(P_FLOOR);
        }
        let at_or_above = n - self.sample.partition_point(|&v| v < x);
        (1 + at_or_above) as f64 / (n + 1) as f64
    }

    /// Median of the sample.
    pub fn median(&self) -> f32 {
        quantile(&self.sample, 0.5)
    }

    /// The `q` quantile of the sample.
    pub fn quantile(&self, q: f64) -> f32 {
        quantile(&self.sample, q)
    }

    /// Parses a baseline file's text and checks it ([`validate`](Self::validate)); the error
    /// is short (the parser's message without the offending line, which may be huge).
    pub fn parse(text: &str) -> Result<Baseline, String> {
        let b: Baseline = toml::from_str(text).map_err(|e| e.message().chars().take(200).collect::<String>())?;
        b.validate()?;
        Ok(b)
    }

    /// Adapts with one accepted clean block (see the module doc); `turnover` is the
    /// replacement probability.
    pub fn adapt(&mut self, x: f32, turnover: f64, rng: &mut SplitMix64) {
        if !x.is_finite() || rng.next_f64() >= turnover || self.sample.is_empty() {
            return;
        }
        // `validate` guarantees lo <= hi; min/max instead of `clamp` cannot panic regardless.
        let v = x.max(self.clamp[0]).min(self.clamp[1]);
        let i = rng.below(self.sample.len());
        self.sample.remove(i);
        let at = self.sample.partition_point(|&s| s < v);
        self.sample.insert(at, v);
        self.adapted_blocks += 1;
    }
}

/// The file a baseline of `stream` for the model `model_sha256` lives in, inside a state
/// directory: `baseline-<stream>-<sha256>.toml`, the stream name through
/// [`crate::names::encode`] (injective: `前门` and `后门`, `cam.1` and `cam 1` get files of
/// their own).
pub fn file_name(stream: &str, model_sha256: &str) -> String {
    format!("baseline-{}-{model_sha256}.toml", crate::names::encode(stream))
}

/// The name earlier versions used (characters other than ASCII letters, digits, `-` and `_`
/// replaced by `_`, which merged names): read when the new file is missing, if it belongs to
/// the stream.
fn legacy_file_name(stream: &str, model_sha256: &str) -> String {
    let safe: String =
        stream.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    format!("baseline-{safe}-{model_sha256}.toml")
}

impl Baseline {
    /// Writes the baseline into `dir` (created if missing) under [`file_name`], atomically
    /// (a temporary file renamed over the old one).
    pub fn save(&self, dir: &std::path::Path) -> Result<std::path::PathBuf, String> {
        let text = toml::to_string(self).map_err(|e| format!("cannot serialize the baseline: {e}"))?;
        crate::base::path::write_state_file(dir, &file_name(&self.stream, &self.model_sha256), &text)
    }

    /// Reads the baseline of `stream` for `model_sha256` from `dir`: `Ok(None)` when there is
    /// none; an error when the file is unreadable, invalid, or names another stream or model.
    pub fn load(dir: &std::path::Path, stream: &str, model_sha256: &str) -> Result<Option<Baseline>, String> {
        let path = dir.join(file_name(stream, model_sha256));
        let (path, text, legacy) = match crate::base::path::read_state_file(&path, MAX_FILE_BYTES)? {
            Some(t) => (path, t, false),
            None => {
                let old = dir.join(legacy_file_name(stream, model_sha256));
                if old == path {
                    return Ok(None);
                }
                match crate::base::path::read_state_file(&old, MAX_FILE_BYTES)? {
                    Some(t) => (old, t, true),
                    None => return Ok(None),
                }
            }
        };
        let b = Baseline::parse(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if b.stream != stream || b.model_sha256 != model_sha256 {
            if legacy {
                // Another stream's file under the old, merging name: not ours.
                return Ok(None);
            }
            return Err(format!("{}: belongs to stream `{}` / model {}", path.display(), b.stream, b.model_sha256));
        }
        Ok(Some(b))
    }
}

/// Linear-interpolated quantile of a sorted slice (`NaN` when empty).
fn quantile(sorted: &[f32], q: f64) -> f32 {
    if sorted.is_empty() {
        return f32::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (i, f) = (pos.floor() as usize, pos - pos.floor());
    let j = (i + 1).min(sorted.len() - 1);
    (f64::from(sorted[i]) * (1.0 - f) + f64::from(sorted[j]) * f) as f32
}

/// Runs estimator of the extremal index: exceedances of `level` grouped into runs (a run ends
/// at the first block not over `level`); `theta = runs / exceedances`, in `[0.1, 1]`.
pub fn extremal_index(seq: &[f32], level: f32) -> f64 {
    let mut exceed = 0usize;
    let mut runs = 0usize;
    let mut prev = false;
    for &v in seq {
        let over = v > level;
        if over {
            exceed += 1;
            if !prev {
                runs += 1;
            }
        }
        prev = over;
    }
    if exceed == 0 {
        return 1.0;
    }
    (runs as f64 / exceed as f64).clamp(0.1, 1.0)
}

/// `[[stream]] baseline = { ... }`: how a stream learns its own baseline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BaselineConfig {
    /// Minutes of clean frame time learned before the baseline replaces the fallback. Default
    /// 10.
    pub learn_minutes: f64,
    /// Blocks wait this long (frame time) before learning or adaptation takes them; an alert
    /// (or the statistic above half its threshold) meanwhile drops them. Default 120.
    pub quarantine_s: f64,
    /// After learning, the sample turns over in about this many hours of clean frame time;
    /// 0 = never adapt. Default 168 (a week).
    pub adapt_hours: f64,
    /// Also learn the camera's whole-frame picture and fuse its image evidence into the
    /// `cusum` alarm ([`crate::alert::image`]): the picture's norm over `learn_minutes`, its
    /// evidence's baseline over the next `learn_minutes`; each CUSUM then gets half the stated
    /// rate. Default false.
    pub image: bool,
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig { learn_minutes: 10.0, quarantine_s: 120.0, adapt_hours: 168.0, image: false }
    }
}

impl BaselineConfig {
    /// Checks the numbers.
    pub fn validate(&self) -> Result<(), String> {
        let ok = |v: f64| v.is_finite() && v >= 0.0;
        if !(ok(self.learn_minutes) && self.learn_minutes > 0.0 && self.learn_minutes <= 10_080.0) {
            return Err(format!("baseline.learn_minutes = {} must be in (0, 10080] (a week)", self.learn_minutes));
        }
        if !(ok(self.quarantine_s) && self.quarantine_s <= 86_400.0) {
            return Err(format!("baseline.quarantine_s = {} must be in 0..=86400", self.quarantine_s));
        }
        if !(ok(self.adapt_hours) && self.adapt_hours <= 87_600.0) {
            return Err(format!("baseline.adapt_hours = {} must be in 0..=87600 (ten years)", self.adapt_hours));
        }
        Ok(())
    }
}

/// Learns a baseline from a stream's blocks and adapts it afterwards (see the module doc).
#[derive(Clone, Debug)]
pub struct Learner {
    config: BaselineConfig,
    stream: String,
    model_sha256: String,
    block_ms: u64,
    /// Blocks waiting out the quarantine, with their end time (ms of frame time).
    quarantine: std::collections::VecDeque<(u64, f32)>,
    /// Accepted blocks of the initial learning, in time order.
    learning: Vec<f32>,
    rng: SplitMix64,
    /// Set when a baseline was completed or changed since the last [`Learner::take_changed`].
    changed: bool,
}

impl Learner {
    /// A learner for `stream`'s blocks of `block_ms`.
    pub fn new(config: BaselineConfig, stream: &str, model_sha256: &str, block_ms: u64) -> Learner {
        Learner {
            config,
            stream: stream.to_string(),
            model_sha256: model_sha256.to_string(),
            block_ms,
            quarantine: std::collections::VecDeque::new(),
            learning: Vec::new(),
            rng: SplitMix64::new(0x5EED ^ stream.len() as u64),
            changed: false,
        }
    }

    /// Blocks the initial learning has taken so far.
    pub fn learning_blocks(&self) -> usize {
        self.learning.len()
    }

    /// Blocks the initial learning needs.
    pub fn blocks_needed(&self) -> usize {
        ((self.config.learn_minutes * 60_000.0 / self.block_ms.max(1) as f64).ceil() as usize).max(20)
    }

    /// Feeds one block ending at `end_ms` with statistic `x`; `suspicious` when an alert is
    /// open or the statistic is above half its threshold (drops the quarantine). Returns a newly
    /// completed baseline, or adapts `current`.
    pub fn block(&mut self, end_ms: u64, x: f32, suspicious: bool, current: Option<&mut Baseline>) -> Option<Baseline> {
        if suspicious {
            self.quarantine.clear();
            return None;
        }
        self.quarantine.push_back((end_ms, x));
        let wait = (self.config.quarantine_s * 1000.0) as u64;
        let mut released = Vec::new();
        while let Some(&(t, v)) = self.quarantine.front() {
            if end_ms.saturating_sub(t) < wait {
                break;
            }
            released.push(v);
            self.quarantine.pop_front();
        }
        match current {
            Some(b) => {
                if self.config.adapt_hours > 0.0 {
                    let per_hour = 3_600_000.0 / self.block_ms.max(1) as f64;
                    let turnover = (b.sample.len() as f64 / (self.config.adapt_hours * per_hour)).min(1.0);
                    for v in released {
                        b.adapt(v, turnover, &mut self.rng);
                        self.changed = true;
                    }
                }
                None
            }
            None => {
                self.learning.extend(released);
                if self.learning.len() >= self.blocks_needed() {
                    let b = Baseline::from_blocks(&self.stream, &self.model_sha256, self.block_ms, &self.learning);
                    self.learning.clear();
                    self.changed = b.is_some();
                    return b;
                }
                None
            }
        }
    }

    /// Whether the baseline changed (learned or adapted) since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p_value_is_empirical_then_exponential() {
        let blocks: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let b = Baseline::from_blocks("s", "x", 1000, &blocks).unwrap();
        assert!((b.p_value(-1.0, 0.0) - 1.0).abs() < 1e-9);
        assert!((b.p_value(50.0, 0.0) - 51.0 / 101.0).abs() < 1e-9);
        let p1 = b.p_value(120.0, 0.0);
        let p2 = b.p_value(140.0, 0.0);
        assert!(p1 < 10.0 / 101.0 && p2 < p1);
        // The calibration's tail scale only ever widens the tail: the fitted scale (the top ten
        // 90..99 over u = 89: 5.5) is kept when larger, replaced when smaller.
        assert_eq!(b.p_value(120.0, 1.0), p1);
        let wide = b.p_value(120.0, 11.0);
        assert!((wide - (10.0 / 101.0) * (-31.0f64 / 11.0).exp()).abs() < 1e-12 && wide > p1);
        assert_eq!(b.p_value(50.0, 11.0), b.p_value(50.0, 0.0));
        // An increasing sequence: its top tenth is one run of 10 blocks.
        assert!((b.theta - 0.1).abs() < 1e-9);
    }

    #[test]
    fn extremal_index_counts_runs() {
        let s = [0.0, 5.0, 5.0, 5.0, 0.0, 5.0, 0.0];
        assert!((extremal_index(&s, 1.0) - 0.5).abs() < 1e-9);
    }
}
