//! What a corruption does to the classifier: top-1 accuracy per (type, level) with the forward
//! pass only (`gradwatch corrupt --accuracy`). This is what the levels of the broader types
//! were chosen on (`docs/guide/degradations.md`), and what the risk-aware evaluation reports next to
//! every detector's AUROC.

use std::path::Path;

use super::baselines;
use super::EvalError;
use crate::corrupt::{self, image_seed, Corruption};
use crate::frame::RgbImage;
use crate::grad::CompileOptions;
use crate::model::{LoadedModel, ModelInfo};
use crate::runtime::RuntimeOptions;
use crate::setup::check::Forward;

/// The classifier's plain logits graph in a session ([`Forward`]), with its preprocessing.
pub struct Classifier {
    forward: Forward,
    /// Preprocessing, names and hash.
    pub info: ModelInfo,
}

impl Classifier {
    /// Loads an ONNX classifier (its forward graph up to the logits).
    pub fn load(path: &Path, rt: &RuntimeOptions) -> Result<Self, EvalError> {
        let model = LoadedModel::load(path, &CompileOptions::default())
            .map_err(|e| EvalError::Invalid(format!("{}: {e}", path.display())))?;
        let forward = Forward::new(&model, rt).map_err(|e| EvalError::Invalid(e.to_string()))?;
        Ok(Classifier { forward, info: model.info })
    }

    /// The top class of every image, in batches of `batch`.
    pub fn predict(&mut self, images: &[RgbImage], batch: usize) -> Result<Vec<usize>, EvalError> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch.max(1)) {
            let refs: Vec<&RgbImage> = chunk.iter().collect();
            let z = self.forward.logits(&self.info, &refs).map_err(|e| EvalError::Invalid(e.to_string()))?;
            out.extend(baselines::predicted(z.view()));
        }
        Ok(out)
    }
}

/// Fraction of `predicted` equal to `labels` (NaN when empty).
pub fn accuracy(predicted: &[usize], labels: &[usize]) -> f64 {
    if predicted.is_empty() {
        return f64::NAN;
    }
    predicted.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / predicted.len() as f64
}

/// Binomial standard error `sqrt(p (1 - p) / n)` of an accuracy `p` on `n` images.
pub fn accuracy_standard_error(p: f64, n: usize) -> f64 {
    if n == 0 || !(0.0..=1.0).contains(&p) {
        return f64::NAN;
    }
    (p * (1.0 - p) / n as f64).sqrt()
}

/// One measured cell.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct AccuracyCell {
    /// The type (`None`: the clean images).
    pub kind: Option<Corruption>,
    /// The level (0 for clean, or when a strength was given instead).
    pub level: u8,
    /// The strength, when measured at a strength rather than a level.
    pub strength: Option<f32>,
    /// Images.
    pub n: usize,
    /// Correctly classified images.
    pub correct: usize,
}

impl AccuracyCell {
    /// Top-1 accuracy.
    pub fn accuracy(&self) -> f64 {
        if self.n == 0 {
            f64::NAN
        } else {
            self.correct as f64 / self.n as f64
        }
    }

    /// Its binomial standard error.
    pub fn standard_error(&self) -> f64 {
        accuracy_standard_error(self.accuracy(), self.n)
    }
}

/// What to apply in [`measure`]: every level of `levels`, or every strength of `strengths`
/// (the broader types only) when that is not empty.
#[derive(Clone, Debug)]
pub struct AccuracyPlan {
    /// Types.
    pub kinds: Vec<Corruption>,
    /// Levels.
    pub levels: Vec<u8>,
    /// Strengths (overrides `levels`).
    pub strengths: Vec<f32>,
    /// Corruption seed; image `i` of the source set uses `image_seed(seed, index[i])`.
    pub seed: u64,
    /// Images per graph run.
    pub batch: usize,
}

/// Accuracy of `clf` on `images` (labelled `labels`, at original indices `index` for the
/// per-image seeds), clean first, then per type and level (or strength). `report` is called
/// after every cell (for progress output).
pub fn measure(
    clf: &mut Classifier,
    images: &[RgbImage],
    labels: &[usize],
    index: &[usize],
    plan: &AccuracyPlan,
    mut report: impl FnMut(&AccuracyCell),
) -> Result<Vec<AccuracyCell>, EvalError> {
    if images.len() != labels.len() || images.len() != index.len() {
        return Err(EvalError::Invalid(format!(
            "{} images, {} labels and {} indices must agree",
            images.len(),
            labels.len(),
            index.len()
        )));
    }
    let mut cells = Vec::new();
    let count = |p: &[usize]| p.iter().zip(labels).filter(|(a, b)| a == b).count();
    let clean = AccuracyCell {
        kind: None,
        level: 0,
        strength: None,
        n: images.len(),
        correct: count(&clf.predict(images, plan.batch)?),
    };
    report(&clean);
    cells.push(clean);
    for &kind in &plan.kinds {
        let settings: Vec<(u8, Option<f32>)> = if plan.strengths.is_empty() {
            plan.levels.iter().map(|&l| (l, None)).collect()
        } else {
            plan.strengths.iter().map(|&p| (0, Some(p))).collect()
        };
        for (level, strength) in settings {
            let corrupted = images
                .iter()
                .zip(index)
                .map(|(img, &i)| match strength {
                    Some(p) => corrupt::apply_strength(img, kind, p, image_seed(plan.seed, i)),
                    None => corrupt::apply(img, kind, level, image_seed(plan.seed, i)),
                })
                .collect::<Result<Vec<_>, _>>()?;
            let cell = AccuracyCell {
                kind: Some(kind),
                level,
                strength,
                n: images.len(),
                correct: count(&clf.predict(&corrupted, plan.batch)?),
            };
            report(&cell);
            cells.push(cell);
        }
    }
    Ok(cells)
}

/// The cells as a markdown table: one row per type, its family, and accuracy (%) per level
/// (or strength) column; the clean accuracy in the caption line.
pub fn markdown_table(cells: &[AccuracyCell]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    if let Some(c) = cells.iter().find(|c| c.kind.is_none()) {
        let _ =
            writeln!(o, "Clean: {:.1} % ± {:.1} ({} images).\n", 100.0 * c.accuracy(), 100.0 * c.standard_error(), c.n);
    }
    let col = |c: &AccuracyCell| c.strength.map_or(format!("L{}", c.level), |p| format!("p={p}"));
    let mut cols: Vec<String> = Vec::new();
    let mut kinds: Vec<Corruption> = Vec::new();
    for c in cells {
        if let Some(k) = c.kind {
            if !kinds.contains(&k) {
                kinds.push(k);
            }
            if !cols.contains(&col(c)) {
                cols.push(col(c));
            }
        }
    }
    let _ = writeln!(o, "| type | family | {} |", cols.join(" | "));
    let _ = writeln!(o, "|---|---|{}", "---|".repeat(cols.len()));
    for k in kinds {
        let row: Vec<String> = cols
            .iter()
            .map(|h| {
                cells
                    .iter()
                    .find(|c| c.kind == Some(k) && &col(c) == h)
                    .map_or("—".into(), |c| format!("{:.1}", 100.0 * c.accuracy()))
            })
            .collect();
        let _ = writeln!(o, "| {k} | {} | {} |", k.family(), row.join(" | "));
    }
    o
}

/// The cells as CSV: `kind,family,level,strength,n,correct,accuracy` (clean: kind `clean`).
pub fn csv(cells: &[AccuracyCell]) -> String {
    use std::fmt::Write as _;
    let mut o = String::from("kind,family,level,strength,n,correct,accuracy\n");
    for c in cells {
        let (k, f) = c.kind.map_or(("clean".to_string(), String::new()), |k| (k.to_string(), k.family().to_string()));
        let p = c.strength.map_or(String::new(), |p| p.to_string());
        let _ = writeln!(o, "{k},{f},{},{p},{},{},{}", c.level, c.n, c.correct, c.accuracy());
    }
    o
}
