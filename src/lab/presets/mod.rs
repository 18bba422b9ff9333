//! `gradwatch bench-presets`: the feature-preset ablation (`docs/results/presets.md`, `make
//! bench-presets`): which parameter tensors' gradient norms the `fast` preset keeps.
//!
//! - [`plan`]: the image sets (GTSRB test images, CIFAR-10, the paper's corruption types at
//!   levels 3-5 of the same images; fixed subsample seeds) and the candidate feature subsets;
//! - [`cache`]: every set once through the full graph (62 gradient norms and 8 forward-only
//!   activation statistics) into a cache folder, which `gradwatch bench-detectors` reads too;
//! - [`results`]: the paper's detector fitted on each candidate's columns, per split seed;
//! - [`render`]: the page and its CSV.
//!
//! The speed of each candidate comes from `gradwatch bench --graph` (`docs/results/presets-speed.md`).

pub mod cache;
pub mod plan;
pub mod render;
pub mod results;

use std::path::PathBuf;

pub use cache::{load_or_extract, Cache};
pub use results::{compute, Results};

/// What the preset (and detector) ablations run with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Folder holding `gtsrb/test_images.npy`, `gtsrb/test_labels.npy`, `cifar10/test_images.npy`.
    pub data: PathBuf,
    /// The feature cache folder; built when missing.
    pub cache: PathBuf,
    /// Images per set.
    pub per_set: usize,
    /// Split seeds `0..seeds`.
    pub seeds: u64,
    /// Images per graph run.
    pub batch: usize,
    /// Threads: ONNX Runtime intra-op threads for extraction (0 = one per core), detector
    /// trainings run at once.
    pub threads: usize,
}
