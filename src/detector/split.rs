//! Deterministic splits and subsamples of data sets (seeded, reproducible on every platform):
//! how calibration and evaluation divide images into training, validation and held-out parts.

use ndarray::{Array2, Axis};

use crate::rng::SplitMix64;

/// Index sets of a train/validation/test split.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Split {
    /// Training indices.
    pub train: Vec<usize>,
    /// Validation indices.
    pub val: Vec<usize>,
    /// Test (held-out) indices.
    pub test: Vec<usize>,
}

/// A seeded permutation of `0..n` (Fisher-Yates over the frozen SplitMix64).
pub fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64::new(seed ^ 0x005E_ED0F_5B11_7000);
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

/// Splits `0..n` at random (deterministic for `seed`) into `floor(train * n)` training,
/// `floor(val * n)` validation and the rest test indices, each part sorted ascending.
pub fn split(n: usize, train: f64, val: f64, seed: u64) -> Split {
    let p = permutation(n, seed);
    let nt = ((n as f64 * train) + 1e-9).floor() as usize;
    let nv = (((n as f64 * val) + 1e-9).floor() as usize).min(n - nt.min(n));
    let nt = nt.min(n);
    let sorted = |s: &[usize]| {
        let mut v = s.to_vec();
        v.sort_unstable();
        v
    };
    Split { train: sorted(&p[..nt]), val: sorted(&p[nt..nt + nv]), test: sorted(&p[nt + nv..]) }
}

/// The paper's 40/40/20 split.
pub fn split_40_40_20(n: usize, seed: u64) -> Split {
    split(n, 0.4, 0.4, seed)
}

/// `n` of `0..total` drawn without replacement (all of them when `n >= total`), ascending.
pub fn subsample(total: usize, n: usize, seed: u64) -> Vec<usize> {
    let mut v = permutation(total, seed);
    v.truncate(n.min(total));
    v.sort_unstable();
    v
}

/// Rows `idx` of a matrix.
pub fn rows(x: &Array2<f32>, idx: &[usize]) -> Array2<f32> {
    x.select(Axis(0), idx)
}

/// Elements `idx` of a vector.
pub fn pick(v: &[f32], idx: &[usize]) -> Vec<f32> {
    idx.iter().map(|&i| v[i]).collect()
}
