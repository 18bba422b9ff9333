//! The plan: every (split seed, target, inputs, gradient columns, left-out type) training, and
//! the ensemble sizes scored.

use crate::detector::Target;
use crate::lab::presets::plan::{CANDIDATES, FAST, FULL};

/// Ensemble sizes compared; the members of the smaller are the first of the larger.
pub const SIZES: [usize; 2] = [1, 5];

/// The variant `gradwatch calibrate --detector risk` trains: target, inputs, members.
pub const DEFAULT: (Target, Inputs, usize) = (Target::Union, Inputs::Both, 5);

/// What the detector sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Inputs {
    /// The log-standardised gradient columns.
    Gradients,
    /// The 5 forward-only signals of the logits, standardised.
    Forward,
    /// Both, side by side.
    Both,
    /// The image-quality measures of the frame ([`crate::quality`]), standardised (only in
    /// `gradwatch bench-quality`).
    Quality,
    /// Gradients, forward signals and image-quality measures (only in `gradwatch bench-quality`).
    BothQuality,
    /// The image-quality measures as two-sided deviations from the familiar images (`|z|`):
    /// any departure looks unusual, in either direction (only in `gradwatch bench-quality`).
    QualityAbs,
    /// Gradients, forward signals and the two-sided quality deviations (only in `gradwatch
    /// bench-quality`).
    BothQualityAbs,
}

impl Inputs {
    /// Every kind of inputs, in table order.
    pub const ALL: [Inputs; 3] = [Inputs::Gradients, Inputs::Forward, Inputs::Both];

    /// Whether the detector sees the image-quality measures.
    pub fn uses_quality(self) -> bool {
        matches!(self, Inputs::Quality | Inputs::BothQuality | Inputs::QualityAbs | Inputs::BothQualityAbs)
    }

    /// The detector's input columns with `grad` gradient columns.
    pub fn width(self, grad: usize) -> usize {
        let (fwd, q) = (crate::detector::forward::ForwardSignal::ALL.len(), crate::quality::Measure::ALL.len());
        match self {
            Inputs::Gradients => grad,
            Inputs::Forward => fwd,
            Inputs::Both => grad + fwd,
            Inputs::Quality | Inputs::QualityAbs => q,
            Inputs::BothQuality | Inputs::BothQualityAbs => grad + fwd + q,
        }
    }

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Inputs::Gradients => "gradients",
            Inputs::Forward => "forward",
            Inputs::Both => "both",
            Inputs::Quality => "quality",
            Inputs::BothQuality => "both + quality",
            Inputs::QualityAbs => "quality, two-sided",
            Inputs::BothQualityAbs => "both + quality, two-sided",
        }
    }
}

/// Which cached feature columns are the "gradient" inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Columns {
    /// The `full` preset: every parameter tensor's norm.
    Full,
    /// What the `fast` preset outputs: the last stage's and the head's norms and the
    /// activation statistics.
    Fast,
    /// Every norm and the activation statistics.
    FullAct,
}

impl Columns {
    /// Every column set, in table order.
    pub const ALL: [Columns; 3] = [Columns::Full, Columns::Fast, Columns::FullAct];

    /// The table's name.
    pub fn name(self) -> &'static str {
        match self {
            Columns::Full => "full",
            Columns::Fast => "fast",
            Columns::FullAct => "full + act",
        }
    }

    /// The preset ablation's candidate these columns are.
    fn candidate(self) -> &'static str {
        match self {
            Columns::Full => FULL,
            Columns::Fast => FAST,
            Columns::FullAct => "full + act",
        }
    }

    /// The column indices into the cache's feature names.
    pub fn pick(self, names: &[String]) -> Vec<usize> {
        let label = self.candidate();
        CANDIDATES
            .iter()
            .find(|c| c.0 == label)
            .map_or_else(Vec::new, |c| crate::lab::presets::plan::columns(names, c.1))
    }
}

/// One training: a split seed, a target, inputs, gradient columns and the excluded type.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Job {
    /// Split seed (the MLP's member `k` is seeded `seed + k`).
    pub seed: u64,
    /// Training target.
    pub target: Target,
    /// Inputs.
    pub inputs: Inputs,
    /// Gradient columns.
    pub columns: Columns,
    /// Corruption type (index) left out of training: scored as an unseen type.
    pub exclude: Option<usize>,
}

/// Every training: the main table (every target and inputs on the `full` columns, each also
/// once per left-out type) and the columns table (the default variant on the other columns).
pub fn jobs(seeds: u64, kinds: usize) -> Vec<Job> {
    let mut v = Vec::new();
    for seed in 0..seeds {
        for target in Target::ALL {
            for inputs in Inputs::ALL {
                let job = Job { seed, target, inputs, columns: Columns::Full, exclude: None };
                v.push(job);
                v.extend((0..kinds).map(|k| Job { exclude: Some(k), ..job }));
            }
        }
        for columns in [Columns::Fast, Columns::FullAct] {
            v.push(Job { seed, target: DEFAULT.0, inputs: DEFAULT.1, columns, exclude: None });
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_cover_the_main_table_left_out_types_and_the_columns_table() {
        let j = jobs(2, 3);
        // Per seed: 3 targets x 3 inputs x (1 + 3 left out) + 2 column sets.
        assert_eq!(j.len(), 2 * (9 * 4 + 2));
        assert_eq!(j.iter().filter(|j| j.columns == Columns::Fast).count(), 2);
        assert_eq!(j.iter().filter(|j| j.exclude == Some(2)).count(), 2 * 9);
    }

    #[test]
    fn columns_pick_by_name() {
        let names: Vec<String> =
            ["layer1.0.conv1.weight", "layer4.0.conv1.weight", "linear.bias", "act:y"].map(String::from).into();
        assert_eq!(Columns::Full.pick(&names), [0, 1, 2]);
        assert_eq!(Columns::Fast.pick(&names), [1, 2, 3]);
        assert_eq!(Columns::FullAct.pick(&names), [0, 1, 2, 3]);
    }
}
