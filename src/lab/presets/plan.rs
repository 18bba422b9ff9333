//! The plan: which image sets are extracted (fixed subsample seeds, the paper's corruption types
//! at levels 3-5) and which feature subsets (candidate presets) are compared.

use anyhow::Result;

use crate::corrupt::{parse_corruptions, Corruption};

/// Corruption levels of the corrupted sets.
pub const LEVELS: [u8; 3] = [3, 4, 5];
/// The corruption types (the paper's eight).
pub const CORRUPTIONS: &str = "paper";
/// Subsample seed of the familiar (GTSRB test) images; the corruptions are of the same images.
pub const FAMILIAR_SEED: u64 = 0;
/// Subsample seed of the CIFAR-10 images.
pub const CIFAR_SEED: u64 = 1;

/// Where a set's images come from.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Source {
    /// GTSRB test images, clean.
    Familiar,
    /// CIFAR-10 test images (out of distribution).
    Cifar10,
    /// The familiar images under corruption type `kind` (index into [`kinds`]) at `level`.
    Corrupted {
        /// The type's index in [`kinds`].
        kind: usize,
        /// Its level.
        level: u8,
    },
}

/// One image set of the plan: its cache name (`<name>.features.npy`, `<name>.logits.npy`) and
/// its source.
#[derive(Clone, Debug, PartialEq)]
pub struct SetSpec {
    /// Cache name: `familiar`, `cifar10`, `<type>-<level>`.
    pub name: String,
    /// Where its images come from.
    pub source: Source,
}

/// The corruption types of the plan, in order.
pub fn kinds() -> Result<Vec<Corruption>> {
    parse_corruptions(CORRUPTIONS).map_err(anyhow::Error::msg)
}

/// Every set, in cache order: familiar, CIFAR-10, then each type x level.
pub fn sets() -> Result<Vec<SetSpec>> {
    let mut v = vec![
        SetSpec { name: "familiar".into(), source: Source::Familiar },
        SetSpec { name: "cifar10".into(), source: Source::Cifar10 },
    ];
    for (kind, k) in kinds()?.into_iter().enumerate() {
        for level in LEVELS {
            v.push(SetSpec { name: format!("{}-{level}", k.name()), source: Source::Corrupted { kind, level } });
        }
    }
    Ok(v)
}

/// A predicate on a feature name (`layer4.0.conv1.weight`, `act:<tensor>`).
pub type Pick = fn(&str) -> bool;

fn is_act(n: &str) -> bool {
    n.starts_with("act:")
}
fn head(n: &str) -> bool {
    n.starts_with("linear.")
}
fn l4b1(n: &str) -> bool {
    n.starts_with("layer4.1.")
}
fn l4(n: &str) -> bool {
    n.starts_with("layer4.")
}
fn l3b1(n: &str) -> bool {
    n.starts_with("layer3.1.")
}
fn l3(n: &str) -> bool {
    n.starts_with("layer3.")
}

/// The candidate feature subsets, in table order: label and predicate.
pub const CANDIDATES: &[(&str, Pick)] = &[
    ("full (62 norms)", |n| !is_act(n)),
    ("full + act", |_| true),
    ("head (linear.*)", head),
    ("head + act", |n| head(n) || is_act(n)),
    ("layer4.1 + head", |n| l4b1(n) || head(n)),
    ("layer4.1 + head + act", |n| l4b1(n) || head(n) || is_act(n)),
    ("layer4 + head (last stage)", |n| l4(n) || head(n)),
    ("layer4 + head + act (fast)", |n| l4(n) || head(n) || is_act(n)),
    ("layer3.1 + layer4 + head + act", |n| l3b1(n) || l4(n) || head(n) || is_act(n)),
    ("layer3 + layer4 + head (2 stages)", |n| l3(n) || l4(n) || head(n)),
    ("layer3 + layer4 + head + act", |n| l3(n) || l4(n) || head(n) || is_act(n)),
    ("act only", is_act),
];

/// The rows of [`CANDIDATES`] that the comparison section sets against each other: the
/// `full` preset's columns and the `fast` preset's.
pub const FULL: &str = "full (62 norms)";
/// See [`FULL`].
pub const FAST: &str = "layer4 + head + act (fast)";

/// The columns of `names` a predicate keeps.
pub fn columns(names: &[String], pick: Pick) -> Vec<usize> {
    names.iter().enumerate().filter(|(_, n)| pick(n)).map(|(i, _)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_has_familiar_cifar_and_every_type_at_three_levels() {
        let s = sets().unwrap();
        assert_eq!(s.len(), 2 + 8 * 3);
        assert_eq!(s[0].source, Source::Familiar);
        assert_eq!(s[2].source, Source::Corrupted { kind: 0, level: 3 });
        assert!(s[2].name.ends_with("-3"));
    }

    #[test]
    fn candidates_pick_the_named_columns() {
        let names: Vec<String> =
            ["layer3.1.conv1.weight", "layer4.0.conv1.weight", "linear.weight", "act:x"].map(String::from).into();
        let pick = |label: &str| CANDIDATES.iter().find(|c| c.0 == label).map(|c| columns(&names, c.1)).unwrap();
        assert_eq!(pick(FULL), [0, 1, 2]);
        assert_eq!(pick(FAST), [1, 2, 3]);
        assert_eq!(pick("head (linear.*)"), [2]);
        assert_eq!(pick("act only"), [3]);
    }
}
