//! Running a compiled gradient graph over an image set, batch by batch, and keeping what it
//! outputs: gradient features, logits and (when compiled with it) penultimate activations.

use std::path::Path;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ndarray::{s, Array2};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use super::{GradSession, RuntimeError};
use crate::frame::RgbImage;
use crate::model::ModelInfo;

/// Errors of feature extraction and of the feature files.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// ONNX Runtime failed on a batch.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A feature file could not be read or written.
    #[error(
        "{path}: {why}; check that the folder exists and is writable (delete a damaged cache folder to rebuild it)"
    )]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        why: String,
    },
    /// The graph or the arrays are not shaped as expected.
    #[error("{0}")]
    Invalid(String),
}

impl ExtractError {
    fn file(path: &Path, why: impl std::fmt::Display) -> Self {
        ExtractError::File { path: path.display().to_string(), why: why.to_string() }
    }
}

/// What the gradient graph produced for an image set, one row per image.
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureSet {
    /// `[N, P]` squared gradient norms.
    pub features: Array2<f32>,
    /// `[N, C]` logits.
    pub logits: Array2<f32>,
    /// `[N, D]` penultimate activations, when the graph outputs them.
    pub penultimate: Option<Array2<f32>>,
}

impl FeatureSet {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.features.nrows()
    }

    /// Whether the set holds no image.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The rows `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> FeatureSet {
        FeatureSet {
            features: self.features.select(ndarray::Axis(0), idx),
            logits: self.logits.select(ndarray::Axis(0), idx),
            penultimate: self.penultimate.as_ref().map(|p| p.select(ndarray::Axis(0), idx)),
        }
    }

    /// Stacks sets row-wise (penultimate only when every set has it).
    pub fn concat(sets: &[&FeatureSet]) -> Result<FeatureSet, ExtractError> {
        let cat = |parts: Vec<ndarray::ArrayView2<f32>>| {
            ndarray::concatenate(ndarray::Axis(0), &parts)
                .map_err(|e| ExtractError::Invalid(format!("feature sets of different widths: {e}")))
        };
        let features = cat(sets.iter().map(|s| s.features.view()).collect())?;
        let logits = cat(sets.iter().map(|s| s.logits.view()).collect())?;
        let penultimate = if sets.iter().all(|s| s.penultimate.is_some()) {
            Some(cat(sets.iter().filter_map(|s| s.penultimate.as_ref().map(|p| p.view())).collect())?)
        } else {
            None
        };
        Ok(FeatureSet { features, logits, penultimate })
    }

    /// Writes `features.npy`, `logits.npy` and (when present) `penultimate.npy` into `dir`,
    /// each name prefixed by `prefix` (e.g. `"cifar10."`; empty for the plain names).
    pub fn save(&self, dir: &Path, prefix: &str) -> Result<(), ExtractError> {
        std::fs::create_dir_all(dir).map_err(|e| ExtractError::file(dir, e))?;
        write_npy(&dir.join(format!("{prefix}features.npy")), &self.features)?;
        write_npy(&dir.join(format!("{prefix}logits.npy")), &self.logits)?;
        if let Some(p) = &self.penultimate {
            write_npy(&dir.join(format!("{prefix}penultimate.npy")), p)?;
        }
        Ok(())
    }

    /// Reads what [`save`](Self::save) wrote; `None` when the features or logits are missing.
    pub fn load(dir: &Path, prefix: &str) -> Result<Option<FeatureSet>, ExtractError> {
        let f = dir.join(format!("{prefix}features.npy"));
        let l = dir.join(format!("{prefix}logits.npy"));
        if !f.exists() || !l.exists() {
            return Ok(None);
        }
        let p = dir.join(format!("{prefix}penultimate.npy"));
        let set = FeatureSet {
            features: read_npy(&f)?,
            logits: read_npy(&l)?,
            penultimate: if p.exists() { Some(read_npy(&p)?) } else { None },
        };
        let n = set.features.nrows();
        if set.logits.nrows() != n || set.penultimate.as_ref().is_some_and(|p| p.nrows() != n) {
            return Err(ExtractError::file(&f, "cached arrays disagree in row count"));
        }
        Ok(Some(set))
    }
}

/// Writes a float32 matrix as `.npy`.
pub fn write_npy(path: &Path, a: &Array2<f32>) -> Result<(), ExtractError> {
    let file = std::fs::File::create(path).map_err(|e| ExtractError::file(path, e))?;
    let mut w = std::io::BufWriter::new(file);
    a.write_npy(&mut w).map_err(|e| ExtractError::file(path, e))?;
    std::io::Write::flush(&mut w).map_err(|e| ExtractError::file(path, e))
}

/// Reads a float32 matrix from `.npy`.
pub fn read_npy(path: &Path) -> Result<Array2<f32>, ExtractError> {
    let file = std::fs::File::open(path).map_err(|e| ExtractError::file(path, e))?;
    Array2::<f32>::read_npy(std::io::BufReader::new(file)).map_err(|e| ExtractError::file(path, e))
}

/// A progress bar on stderr for `len` images, drawn only when stderr is a terminal (indicatif
/// hides it otherwise) and `show` is set.
pub fn progress_bar(len: usize, label: &str, show: bool) -> ProgressBar {
    let target = if show { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() };
    let pb = ProgressBar::with_draw_target(Some(len as u64), target);
    if let Ok(style) = ProgressStyle::with_template("{msg:>24} [{bar:30}] {pos}/{len} {per_sec} eta {eta}") {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(label.to_string());
    pb
}

/// Runs the graph over `images` in batches of `batch` (preprocessed with `info`), returning
/// one row per image. `progress` draws a bar on a terminal.
pub fn extract(
    session: &mut GradSession,
    info: &ModelInfo,
    images: &[RgbImage],
    batch: usize,
    progress: bool,
) -> Result<FeatureSet, ExtractError> {
    extract_labelled(session, info, images, batch, progress, "features")
}

/// [`extract`] with a label for the progress bar.
pub fn extract_labelled(
    session: &mut GradSession,
    info: &ModelInfo,
    images: &[RgbImage],
    batch: usize,
    progress: bool,
    label: &str,
) -> Result<FeatureSet, ExtractError> {
    let batch = batch.max(1);
    let pb = progress_bar(images.len(), label, progress);
    let mut feats: Option<Array2<f32>> = None;
    let mut logits: Option<Array2<f32>> = None;
    let mut pen: Option<Array2<f32>> = None;
    let n = images.len();
    for (b, chunk) in images.chunks(batch).enumerate() {
        let x = info.preprocess(chunk.iter());
        let out = session.run(x.view().into_dyn())?;
        let rows = chunk.len();
        if out.features.nrows() != rows || out.logits.nrows() != rows {
            return Err(ExtractError::Invalid(format!(
                "the graph returned {} rows for a batch of {rows}; it must keep the batch axis",
                out.features.nrows()
            )));
        }
        let start = b * batch;
        let put = |dst: &mut Option<Array2<f32>>, src: &Array2<f32>| {
            let d = dst.get_or_insert_with(|| Array2::zeros((n, src.ncols())));
            d.slice_mut(s![start..start + rows, ..]).assign(src);
        };
        put(&mut feats, &out.features);
        put(&mut logits, &out.logits);
        if let Some(p) = &out.penultimate {
            put(&mut pen, p);
        }
        pb.inc(rows as u64);
    }
    pb.finish_and_clear();
    Ok(FeatureSet {
        features: feats.unwrap_or_else(|| Array2::zeros((0, 0))),
        logits: logits.unwrap_or_else(|| Array2::zeros((0, 0))),
        penultimate: pen,
    })
}
