//! The `[alert]` policy keys of one stream: which statistic ([`PolicyKind`]) and its numbers.

use serde::{Deserialize, Serialize};

use super::{AlertError, Baseline, CusumParams};

/// Which statistic raises and clears alerts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// k of the last n frames over threshold (`window`, `raise`, `clear`).
    #[default]
    KOfN,
    /// CUSUM of per-block p-values (`false_alarms_per_day`, `block_ms`, `kappa`,
    /// `clear_evidence`); see [`cusum`](super::cusum).
    Cusum,
}

impl PolicyKind {
    /// The config/wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::KOfN => "k_of_n",
            PolicyKind::Cusum => "cusum",
        }
    }
}

/// How the cusum policy turns `false_alarms_per_day` into its threshold `h`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ThresholdRule {
    /// `h = ln(blocks per day / false_alarms_per_day)`: Lorden's bound, so the stated rate is
    /// an upper bound (about 10x loose for independent blocks).
    #[default]
    Bound,
    /// `h` from the CUSUM's run length simulated on the stream's learned baseline, with its
    /// extremal index ([`crate::alert::run_length`]): the stated rate is the expected one.
    /// Simulated once per baseline (at most [`crate::alert::run_length::STEP_BUDGET`] steps);
    /// until a baseline is learned (the calibration's fallback) the bound applies.
    Simulated,
}

/// Debounce policy of the alert stage (TOML `[alert]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertPolicy {
    /// `k_of_n` (the default here) or `cusum`.
    pub policy: PolicyKind,
    /// cusum: expected false alarms per day of clean stream (an upper bound for independent
    /// blocks); sets the threshold `h = ln(blocks per day / false_alarms_per_day)`. Default
    /// 2.4 (0.1 an hour).
    pub false_alarms_per_day: f64,
    /// cusum: how `h` follows from `false_alarms_per_day` (`bound` or `simulated`). Default
    /// `bound`.
    pub threshold: ThresholdRule,
    /// cusum: block length in ms of frame time (one block statistic each). Default 1000.
    pub block_ms: u64,
    /// cusum: exponent of the p-value calibrator, in (0, 1); smaller reacts more to very small
    /// p-values and less to moderate ones; `-1 / ln p` is best against blocks of p-value `p`.
    /// Default 0.4 (best near p = 0.08: a run of moderately unusual blocks, as a dirtying lens
    /// gives; 0.2, best near p = 0.007, missed more harmful onsets in docs/results/alarms.md).
    pub kappa: f64,
    /// cusum: evidence for the clean distribution (natural log units) that clears an open
    /// alert. Default 3 (odds of 20 to 1).
    pub clear_evidence: f64,
    /// n: number of most recent frames considered. Default 10.
    pub window: usize,
    /// k: raise when at least k of the last n frames are over threshold. Default 6.
    pub raise: usize,
    /// j: clear when at most j of the last n frames are over threshold. Default 2.
    pub clear: usize,
    /// An alert lasts at least this long (frame time, from the raising frame) before it can
    /// clear. Default 1000.
    pub min_duration_ms: u64,
    /// Period of `alert_update` events while an alert is active (frame time); 0 = never.
    /// Default 5000.
    pub update_interval_ms: u64,
}

impl Default for AlertPolicy {
    fn default() -> Self {
        AlertPolicy {
            policy: PolicyKind::KOfN,
            false_alarms_per_day: 2.4,
            threshold: ThresholdRule::Bound,
            block_ms: 1000,
            kappa: 0.4,
            clear_evidence: 3.0,
            window: 10,
            raise: 6,
            clear: 2,
            min_duration_ms: 1000,
            update_interval_ms: 5000,
        }
    }
}

impl AlertPolicy {
    /// Checks `1 <= raise <= window <= 100000` and `clear < raise`.
    pub fn validate(&self) -> Result<(), AlertError> {
        if self.window == 0 || self.window > 100_000 {
            return Err(AlertError::InvalidPolicy(format!("window = {} must be in 1..=100000", self.window)));
        }
        if self.raise == 0 || self.raise > self.window {
            return Err(AlertError::InvalidPolicy(format!(
                "raise = {} must be in 1..=window ({})",
                self.raise, self.window
            )));
        }
        if self.clear >= self.raise {
            return Err(AlertError::InvalidPolicy(format!(
                "clear = {} must be below raise = {} (hysteresis)",
                self.clear, self.raise
            )));
        }
        let fa = self.false_alarms_per_day;
        if !(fa.is_finite() && fa > 0.0 && fa <= 86_400.0) {
            return Err(AlertError::InvalidPolicy(format!("false_alarms_per_day = {fa} must be in (0, 86400]")));
        }
        if self.block_ms == 0 || self.block_ms > 3_600_000 {
            return Err(AlertError::InvalidPolicy(format!("block_ms = {} must be in 1..=3600000", self.block_ms)));
        }
        if !(self.kappa > 0.0 && self.kappa < 1.0) {
            return Err(AlertError::InvalidPolicy(format!("kappa = {} must be in (0, 1)", self.kappa)));
        }
        if !(self.clear_evidence.is_finite() && self.clear_evidence > 0.0) {
            return Err(AlertError::InvalidPolicy(format!("clear_evidence = {} must be > 0", self.clear_evidence)));
        }
        Ok(())
    }

    /// The cusum parameters in force with `baseline`, `h` by Lorden's bound (the decider
    /// replaces it under [`ThresholdRule::Simulated`]).
    pub fn cusum_params(&self, baseline: &Baseline) -> CusumParams {
        CusumParams {
            h: CusumParams::threshold(self.false_alarms_per_day, self.block_ms),
            clear: self.clear_evidence,
            kappa: self.kappa,
            theta: baseline.theta,
        }
    }
}
