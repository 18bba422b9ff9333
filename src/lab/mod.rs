//! The lab: gradwatch's research half, beside the daemon and never inside it. The product
//! modules (`source` ... `sink`, `detector`, `runtime`, `grad`) never import this module; the
//! lab imports them.
//!
//! Every experiment has the same shape:
//!
//! 1. **plan**: what to measure, from the arguments and fixed seeds;
//! 2. **cached extraction**: the expensive part (frames through the gradient graph), written to
//!    a cache folder keyed by the plan, so a rerun only renders;
//! 3. **`Results`**: plain data (serialisable), computed from the cache;
//! 4. **render**: markdown, CSV and SVG from `Results` alone.
//!
//! Experiments: [`eval`] (`gradwatch eval`: the paper's protocol and the risk tables),
//! [`alarms`] (`gradwatch bench-alarms`: false alarms per hour and detection delays of the alert
//! policies), [`presets`] (`gradwatch bench-presets`: AUROC of the feature subsets the presets
//! choose from) and [`detectors`] (`gradwatch bench-detectors`: targets, inputs and ensembles of
//! the calibration's detector, on the presets' cache), [`quality`] (`gradwatch bench-quality`:
//! what the image-quality measures add to that detector, on the same cache), and [`zoo`] (`gradwatch bench --zoo`: the
//! compiler zoo's errors and costs; timings with [`crate::runtime::timing`]). Definitions shared by
//! every experiment (what counts as *harmful*) live here, once.

pub mod alarms;
pub mod detectors;
pub mod eval;
pub mod presets;
pub mod quality;
pub mod zoo;

/// Classifier accuracy below which a (corruption, level) cell is *harmful*: there the detector
/// must fire. The one definition used by every experiment and report.
pub const HARMFUL_ACCURACY: f64 = 0.8;

/// Whether a cell with this classifier accuracy is harmful (below [`HARMFUL_ACCURACY`]).
pub fn harmful(accuracy: f64) -> bool {
    accuracy < HARMFUL_ACCURACY
}

/// A seed for one report section, derived from the experiment's seed and the section's name, so
/// that each section draws from its own RNG: reordering or adding sections leaves every other
/// section's numbers unchanged.
pub fn section_seed(seed: u64, section: &str) -> u64 {
    // FNV-1a over the name, mixed with the experiment seed; SplitMix64 scrambles it further.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in section.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    seed ^ h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn harmful_is_strictly_below_the_threshold() {
        assert!(harmful(0.79));
        assert!(!harmful(HARMFUL_ACCURACY));
        assert!(!harmful(0.95));
    }

    #[test]
    fn section_seeds_differ_by_name_and_are_stable() {
        assert_ne!(section_seed(1, "onsets"), section_seed(1, "ramps"));
        assert_eq!(section_seed(1, "onsets"), section_seed(1, "onsets"));
        assert_ne!(section_seed(1, "onsets"), section_seed(2, "onsets"));
    }
}
