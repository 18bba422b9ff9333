//! What `gradwatch bench-alarms` measured: plain data, built section by section by
//! `super::sections` from the cached tracks and rendered by [`super::markdown`] (markdown) or
//! written as JSON beside it, so that later reports and the docs read numbers instead of
//! retyping them. Rates are per hour of frame time, delays in seconds, accuracies in percent.

use serde::Serialize;

/// Everything the report prints.
#[derive(Clone, Debug, Serialize)]
pub struct Results {
    /// The score cache folder the tracks came from.
    pub cache: String,
    /// The model file scored with.
    pub model: String,
    /// The calibration file.
    pub calib: String,
    /// The calibration's threshold.
    pub threshold: f32,
    /// Hours of clean frame time replayed per policy.
    pub hours: f64,
    /// Seconds the replay took (the one number that differs between runs).
    pub replay_s: f64,
    /// The sets of tracks and the learned baseline.
    pub streams: Streams,
    /// False alarms on the clean test tracks, per policy.
    pub clean: Vec<FalseAlarmRow>,
    /// The second camera: GTSRB's held-out tracks.
    pub real: RealCamera,
    /// Detection delays after onsets on the test tracks.
    pub onsets: Onsets,
    /// The same onsets on the real tracks.
    pub real_onsets: RealOnsets,
    /// What any policy could do with these scores.
    pub bound: Bound,
    /// What any policy could do with an oracle of the classifier's errors instead.
    pub error_oracle: Bound,
    /// Ramps from level 1 to 5.
    pub ramps: Ramps,
    /// Stated against measured false-alarm rates, per threshold rule.
    pub rates: Rates,
    /// The shipped policy's delays by severity and by family, on both cameras.
    pub breakdown: Breakdown,
    /// The shipped policy against its targets.
    pub targets: Targets,
    /// Whole-frame image evidence beside the model's (absent when the cache has no
    /// image-quality measures).
    pub image: Option<ImageEvidence>,
}

/// One camera, one stated rate, one threshold rule, over long clean streams.
#[derive(Clone, Debug, Serialize)]
pub struct RateRow {
    /// `test tracks` or `real tracks`.
    pub camera: String,
    /// The `false_alarms_per_day` set.
    pub stated_per_day: f64,
    /// `bound` or `simulated`.
    pub rule: String,
    /// The CUSUM threshold `h` the rule set on the camera's learned baseline.
    pub h: f64,
    /// Hours of clean frame time replayed.
    pub hours: f64,
    /// Alarms raised.
    pub alarms: usize,
    /// Alarms per day of frame time.
    pub measured_per_day: f64,
    /// `stated / measured` (infinite when none was measured).
    pub ratio: f64,
}

/// Stated against measured false-alarm rates.
#[derive(Clone, Debug, Serialize)]
pub struct Rates {
    /// Per camera, rate and rule.
    pub rows: Vec<RateRow>,
}

/// The shipped policy's onsets of a group of cells.
#[derive(Clone, Debug, Serialize)]
pub struct BreakdownRow {
    /// The group: an accuracy range (`60-80 %`) or a family name.
    pub group: String,
    /// Whether the group's cells are harmful (accuracy below the bar).
    pub harmful: bool,
    /// Test tracks: cells in the group.
    pub test_cells: usize,
    /// Test tracks: their delays.
    pub test: DelaySummary,
    /// Real tracks (judged on that camera's own signs): cells in the group.
    pub real_cells: usize,
    /// Real tracks: their delays.
    pub real: DelaySummary,
}

/// The shipped policy's delays by severity (the classifier's accuracy at the onset) and by
/// family, on both cameras.
#[derive(Clone, Debug, Serialize)]
pub struct Breakdown {
    /// By accuracy range, harshest first.
    pub severity: Vec<BreakdownRow>,
    /// By family, harmful cells only.
    pub family: Vec<BreakdownRow>,
}

/// Tracks and distinct frames of one set.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct SetSize {
    /// Tracks (distinct images).
    pub tracks: usize,
    /// Distinct frames.
    pub frames: usize,
}

/// The streams table and the learned baseline.
#[derive(Clone, Debug, Serialize)]
pub struct Streams {
    /// The baseline-learning tracks.
    pub learn: SetSize,
    /// The clean evaluation tracks.
    pub clean: SetSize,
    /// How often the clean tracks are reused to fill the clean hours.
    pub clean_reuse: f64,
    /// The onset tracks.
    pub onset: SetSize,
    /// The ramp tracks.
    pub ramp: SetSize,
    /// GTSRB's own held-out tracks.
    pub real: SetSize,
    /// Those tracks corrupted.
    pub real_onset: SetSize,
    /// The shipped policy's baseline learned from the learn tracks.
    pub learned: LearnedBaseline,
}

/// A learned baseline.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct LearnedBaseline {
    /// Blocks of 1 s it was learned from.
    pub blocks: u64,
    /// Median block score.
    pub median: f32,
    /// 95th percentile block score.
    pub p95: f32,
    /// Extremal index.
    pub theta: f64,
    /// Mean run of tail blocks (1 / theta).
    pub run_length: f64,
    /// Alerts raised while learning.
    pub alerts: usize,
}

/// One policy over clean frames.
#[derive(Clone, Debug, Serialize)]
pub struct FalseAlarmRow {
    /// Policy name.
    pub policy: String,
    /// Hours of clean frame time.
    pub hours: f64,
    /// Alerts raised.
    pub alerts: usize,
    /// Alerts per hour.
    pub per_hour: f64,
    /// Frames over the threshold, percent.
    pub over_pct: f64,
}

/// The second camera.
#[derive(Clone, Debug, Serialize)]
pub struct RealCamera {
    /// Its held-out tracks.
    pub tracks: usize,
    /// The classifier's accuracy on their frames, percent.
    pub accuracy_pct: f64,
    /// Its accuracy on the clean test tracks, percent.
    pub test_accuracy_pct: f64,
    /// Tracks its baseline is learned from.
    pub learn_tracks: usize,
    /// Alerts while learning.
    pub learn_alerts: usize,
    /// Median block score of the learned baseline.
    pub median: f32,
    /// Extremal index of the learned baseline.
    pub theta: f64,
    /// Tracks of its clean hours.
    pub clean_tracks: usize,
    /// How often they are reused.
    pub reuse: f64,
    /// False alarms per policy over its clean hours.
    pub false_alarms: Vec<FalseAlarmRow>,
}

/// Delays of a set of onsets (seconds of frame time).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct DelaySummary {
    /// Onsets, detected or not.
    pub onsets: usize,
    /// Detected ones.
    pub detected: usize,
    /// Not detected within the onset window.
    pub missed: usize,
    /// Median delay of the detected ones (NaN/null when none).
    pub median: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Longest.
    pub max: f64,
}

/// One (corruption, level) row of the onsets table.
#[derive(Clone, Debug, Serialize)]
pub struct OnsetRow {
    /// Corruption name.
    pub kind: String,
    /// Level.
    pub level: u8,
    /// The classifier's accuracy on the accuracy table's signs, percent.
    pub acc_pct: f64,
    /// Its accuracy on the cell's onset tracks, percent.
    pub pool_acc_pct: f64,
    /// Accuracy below [`crate::lab::HARMFUL_ACCURACY`].
    pub harmful: bool,
    /// Per policy, in [`Onsets::policies`] order.
    pub delays: Vec<DelaySummary>,
}

/// All harmful onsets of one policy.
#[derive(Clone, Debug, Serialize)]
pub struct HarmfulRow {
    /// Policy name.
    pub policy: String,
    /// Their delays.
    pub delays: DelaySummary,
    /// Alerts during every onset's clean lead-in.
    pub early: usize,
}

/// Detection delays after onsets.
#[derive(Clone, Debug, Serialize)]
pub struct Onsets {
    /// Standard error of an accuracy at most, percentage points.
    pub acc_se_pct: f64,
    /// Policy names, column order.
    pub policies: Vec<String>,
    /// Every cell.
    pub cells: Vec<OnsetRow>,
    /// The harmful cells pooled, per policy.
    pub harmful: Vec<HarmfulRow>,
}

/// One policy's onsets on the real tracks.
#[derive(Clone, Debug, Serialize)]
pub struct RealOnsetRow {
    /// Policy name.
    pub policy: String,
    /// Cells harmful on the camera's own signs.
    pub own: DelaySummary,
    /// Cells harmful on the test signs.
    pub test: DelaySummary,
    /// Alerts during the clean lead-ins.
    pub early: usize,
}

/// A cell where the shipped policy missed real onsets.
#[derive(Clone, Debug, Serialize)]
pub struct MissedCell {
    /// Corruption name.
    pub kind: String,
    /// Level.
    pub level: u8,
    /// Onsets missed.
    pub missed: usize,
    /// The classifier's accuracy on the camera's signs, percent.
    pub acc_pct: f64,
}

/// The onsets on the real tracks.
#[derive(Clone, Debug, Serialize)]
pub struct RealOnsets {
    /// Cells harmful on the camera's own signs.
    pub own_harmful_cells: usize,
    /// Cells harmful on the test signs.
    pub test_harmful_cells: usize,
    /// Per policy.
    pub rows: Vec<RealOnsetRow>,
    /// The shipped policy's misses.
    pub missed_cells: Vec<MissedCell>,
}

/// One window length of the bound.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct BoundRow {
    /// Window, seconds.
    pub window_s: u64,
    /// Highest mean score of any such window of the clean hours.
    pub threshold: f64,
    /// Harmful onsets whose first window has a higher mean.
    pub hits: usize,
    /// Harmful onsets drawn.
    pub total: usize,
    /// `hits` of `total`, percent.
    pub pct: f64,
}

/// What any policy could do with these scores.
#[derive(Clone, Debug, Serialize)]
pub struct Bound {
    /// Harmful onsets per window.
    pub harmful_onsets: usize,
    /// Per window length.
    pub rows: Vec<BoundRow>,
}

/// Level at `alert_start` over one corruption's ramps, for one policy (above 5: not detected).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RampCell {
    /// Median over the ramps.
    pub median: f64,
    /// Highest.
    pub worst: f64,
}

/// One corruption's ramps.
#[derive(Clone, Debug, Serialize)]
pub struct RampRow {
    /// Corruption name.
    pub kind: String,
    /// The classifier stays accurate at levels 3-5.
    pub benign: bool,
    /// Per policy, in [`Ramps::policies`] order.
    pub cells: Vec<RampCell>,
}

/// Ramps from level 1 to 5.
#[derive(Clone, Debug, Serialize)]
pub struct Ramps {
    /// Policy names, column order.
    pub policies: Vec<String>,
    /// Per corruption.
    pub rows: Vec<RampRow>,
}

/// The shipped policy's real-track onsets, for the targets.
#[derive(Clone, Debug, Serialize)]
pub struct RealTarget {
    /// Harmful on the camera's own signs.
    pub own: DelaySummary,
    /// Harmful on the test signs.
    pub test: DelaySummary,
    /// Cells with misses.
    pub missed_cells: Vec<MissedCell>,
    /// None missed on the camera's own harmful cells.
    pub met: bool,
}

/// A harmful type whose ramps were not all caught before level 4.
#[derive(Clone, Debug, Serialize)]
pub struct LateRamp {
    /// Corruption name.
    pub kind: String,
    /// Ramps caught before level 4.
    pub before: usize,
}

/// The shipped policy against the targets; each `*_met` says whether one is met.
#[derive(Clone, Debug, Serialize)]
pub struct Targets {
    /// With `--policy`: its file and `policy` kind (the targets are judged on it, not on the
    /// shipped policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tried: Option<(String, String)>,
    /// The shipped `false_alarms_per_day`.
    pub false_alarms_per_day: f64,
    /// The shipped `threshold` rule (`bound` or `simulated`).
    pub threshold: String,
    /// False alarms per hour on the clean hours.
    pub fa: f64,
    /// Target <= 0.1.
    pub fa_met: bool,
    /// Hours of clean time and onset lead-ins.
    pub pooled_hours: f64,
    /// False alarms per hour over them.
    pub pooled: f64,
    /// Target <= 0.1.
    pub pooled_met: bool,
    /// False alarms per hour on the real tracks.
    pub real_fa: f64,
    /// Target <= 0.1.
    pub real_fa_met: bool,
    /// Harmful onsets missed.
    pub missed: usize,
    /// Target 0.
    pub missed_met: bool,
    /// The real tracks' onsets (absent without the shipped policy).
    pub real: Option<RealTarget>,
    /// Median delay of the harmful onsets.
    pub median: f64,
    /// Target <= 3 s.
    pub median_met: bool,
    /// Longest delay.
    pub max: f64,
    /// Target <= 10 s and none missed.
    pub max_met: bool,
    /// Worst ramp level at alert, every type.
    pub ramp: f64,
    /// Target below 4.
    pub ramp_met: bool,
    /// Types harmful at some onset level.
    pub harmful_kinds: usize,
    /// Worst ramp level at alert, harmful types.
    pub ramp_harmful: f64,
    /// Target below 4.
    pub ramp_harmful_met: bool,
    /// Harmful types with a ramp caught at level 4 or later.
    pub late: Vec<LateRamp>,
    /// Stated over measured false alarms at each stated rate, shipped rule, per camera
    /// (`(camera, stated, ratio)`).
    pub rate_ratios: Vec<(String, f64, f64)>,
    /// Every ratio at 24 and 240 a day within 2x (between 0.5 and 2).
    pub rate_met: bool,
}

/// The window bound of the image evidence for scenes of `tiles` sign-sized regions.
#[derive(Clone, Debug, Serialize)]
pub struct TileBound {
    /// Regions of the proxy scene (1: the classifier's crop alone).
    pub tiles: usize,
    /// The bound.
    pub bound: Bound,
}

/// One camera and arm (model, image, both) of the image-evidence section.
#[derive(Clone, Debug, Serialize)]
pub struct ImageArmRow {
    /// `test tracks` or `real tracks`.
    pub camera: String,
    /// `model alone`, `image alone` or `model + image (shipped)`.
    pub arm: String,
    /// Hours of clean scenes replayed.
    pub clean_hours: f64,
    /// Alarms raised in them.
    pub false_alarms: usize,
    /// Delays after the onsets harmful on this camera.
    pub harmful: DelaySummary,
    /// Alarms raised during those onsets' clean lead-ins.
    pub lead_in_alarms: usize,
    /// Onsets of the cells that are not harmful raised within the onset window.
    pub benign_alarmed: usize,
    /// Onsets of those cells.
    pub benign_onsets: usize,
}

/// One family on the test camera: harmful-onset delays and benign onsets alarmed, the model
/// alone and fused.
#[derive(Clone, Debug, Serialize)]
pub struct ImageFamilyRow {
    /// Family name.
    pub family: String,
    /// The model's CUSUM alone (the shipped alarm).
    pub model: DelaySummary,
    /// The model's and the image's CUSUMs at half the rate each.
    pub fused: DelaySummary,
    /// Onsets of the family's benign cells (the classifier at 80 % or more) the model's CUSUM
    /// raised within the onset window.
    pub benign_model: usize,
    /// The same for the fused alarm.
    pub benign_fused: usize,
    /// Onsets of the family's benign cells.
    pub benign_onsets: usize,
}

/// One camera and severity range: the model alone and fused.
#[derive(Clone, Debug, Serialize)]
pub struct ImageSeverityRow {
    /// `test tracks` or `real tracks`.
    pub camera: String,
    /// The classifier's accuracy range on the camera's signs (`40-60 %`).
    pub accuracy: String,
    /// Whether the range is below the harmful accuracy.
    pub harmful: bool,
    /// Cells in it.
    pub cells: usize,
    /// The model's CUSUM alone.
    pub model: DelaySummary,
    /// The fused alarm.
    pub fused: DelaySummary,
}

/// One arm's ramps (types the classifier fails on, test camera).
#[derive(Clone, Debug, Serialize)]
pub struct ImageRampRow {
    /// The arm.
    pub arm: String,
    /// Ramps replayed.
    pub ramps: usize,
    /// Ramps that reached level 4 before an alarm.
    pub late: usize,
    /// Highest level at `alert_start` (6: not detected).
    pub worst: f64,
}

/// How the image CUSUM turns the image deviation into evidence (the rest is the shipped
/// policy's).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ImageCusum {
    /// The CUSUM's `kappa`.
    pub kappa: f64,
    /// Floor of the learned baseline's tail scale, in deviation units.
    pub tail_floor: f32,
    /// Lorden's bound for `h` (else the threshold simulated on the learned baseline).
    pub bound: bool,
}

/// The fused alarm under one setting of the image CUSUM.
#[derive(Clone, Debug, Serialize)]
pub struct ImageSettingRow {
    /// The setting.
    pub cusum: ImageCusum,
    /// The fused arm on the test camera.
    pub test: ImageArmRow,
    /// The fused arm on the real camera.
    pub real: ImageArmRow,
    /// The fused arm's ramps (test camera).
    pub ramp: ImageRampRow,
}

/// Whole-frame image evidence in a proxy scene, beside the model's (`image.rs`).
#[derive(Clone, Debug, Serialize)]
pub struct ImageEvidence {
    /// Sign-sized regions of the proxy scene.
    pub tiles: usize,
    /// The measures read.
    pub measures: Vec<String>,
    /// The image CUSUM's setting of the tables.
    pub cusum: ImageCusum,
    /// The fused alarm under other settings (the first: `cusum`).
    pub settings: Vec<ImageSettingRow>,
    /// The image evidence's window bound per scene size.
    pub bounds: Vec<TileBound>,
    /// The arms compared.
    pub arms: Vec<String>,
    /// Per camera and arm.
    pub rows: Vec<ImageArmRow>,
    /// Per family, test camera.
    pub families: Vec<ImageFamilyRow>,
    /// Per severity range, both cameras.
    pub severity: Vec<ImageSeverityRow>,
    /// Ramps, test camera.
    pub ramps: Vec<ImageRampRow>,
}
