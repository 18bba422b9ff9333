//! `gradwatch score`: one JSON line per image with its unfamiliarity score, verdict and (with a
//! trust head in the calibration) the `risk` that its classification is wrong.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::common::{load_input, runtime, show_progress};
use super::EXIT_CONFIG;
use crate::detector::{CalibError, Calibration, FrameInputs};
use crate::grad::{CompileOptions, Loss};
use crate::model::{top_class, LoadedModel};
use crate::runtime::extract as features;
use crate::runtime::GradSession;

/// Arguments of `gradwatch score`.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// The calibration file (from `gradwatch calibrate`).
    #[arg(long)]
    pub calib: PathBuf,
    /// The classifier (default: the calibration's path with `.calib.toml` replaced by `.onnx`).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Images: a .npy stack, an image folder or one image file.
    pub input: PathBuf,
    /// Images per graph run.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// The model file that belongs to a calibration file: `X.calib.toml` (or `X.<preset>.calib.toml`) -> `X.onnx`.
pub fn default_model_path(calib: &Path) -> Option<PathBuf> {
    let name = calib.file_name()?.to_str()?;
    let stem = name.strip_suffix(".calib.toml")?;
    // A preset's calibration sits beside the full one: `X.fast.calib.toml` -> `X.onnx`.
    let stem =
        crate::grad::Preset::ALL.iter().find_map(|p| stem.strip_suffix(&format!(".{}", p.name()))).unwrap_or(stem);
    Some(calib.with_file_name(format!("{stem}.onnx")))
}

/// The compile options `calib` was fitted with (its loss, feature preset and input size), as
/// the daemon compiles the model; `None` when the preset is unknown (said on stderr: exit 2).
pub fn calib_compile_options(calib: &Calibration, calib_path: &Path) -> Result<Option<CompileOptions>> {
    // A bad loss is an error; a bad preset a bad calibration file (exit 2).
    let _: Loss = calib.model.loss.parse().map_err(anyhow::Error::msg)?;
    match calib.model.compile_options() {
        Ok(o) => Ok(Some(o)),
        Err(e) => {
            eprintln!("error: {}: {e}", calib_path.display());
            Ok(None)
        }
    }
}

/// Runs `gradwatch score`.
pub fn run(a: ScoreArgs) -> Result<i32> {
    let calib = Calibration::load(&a.calib)?;
    let model_path = match a.model.clone().or_else(|| default_model_path(&a.calib)) {
        Some(p) => p,
        None => {
            eprintln!(
                "error: cannot tell the model of {} (its name does not end in .calib.toml); pass --model",
                a.calib.display()
            );
            return Ok(EXIT_CONFIG);
        }
    };
    let Some(opts) = calib_compile_options(&calib, &a.calib)? else { return Ok(EXIT_CONFIG) };
    let mut model =
        LoadedModel::load(&model_path, &opts).with_context(|| format!("loading {}", model_path.display()))?;
    if let Err(e) = calib.check_compiled(&model.info.sha256, &model.compiled.features, &model.compiled.preset) {
        eprintln!("error: {} vs {}: {e}", a.calib.display(), model_path.display());
        return Ok(match e {
            CalibError::ModelMismatch { .. }
            | CalibError::FeatureMismatch { .. }
            | CalibError::PresetMismatch { .. } => EXIT_CONFIG,
            _ => 1,
        });
    }
    if let Err(e) = model.use_preprocessing(calib.model.preprocessing.as_ref()) {
        eprintln!("error: {}: {e}", a.calib.display());
        return Ok(EXIT_CONFIG);
    }
    let input = load_input(&a.input, None)?;
    let mut session = GradSession::new(&model.compiled, &runtime(a.threads))?;
    let fs = features::extract(&mut session, &model.info, &input.images, a.batch, show_progress())?;
    let quality =
        calib.uses_quality().then(|| crate::quality::measure_batch(&input.images, model.info.width, model.info.height));
    let scores = calib.score(&fs.features, &fs.logits, quality.as_ref());
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for (i, ((name, score), z)) in input.names.iter().zip(&scores).zip(fs.logits.outer_iter()).enumerate() {
        let (cls, conf) = top_class(&z.to_vec());
        let mut line = serde_json::Map::new();
        if input.npy {
            line.insert("index".into(), i.into());
        } else {
            line.insert("file".into(), name.clone().into());
        }
        // JSON has no infinity: a non-finite score (broken features) is written as null.
        line.insert(
            "score".into(),
            serde_json::Number::from_f64(f64::from(*score)).map_or(serde_json::Value::Null, Into::into),
        );
        // The trust head's probability that this classification is wrong (null without one).
        let (q, f, l) = (quality.as_ref().map(|q| q.row(i).to_vec()), fs.features.row(i).to_vec(), z.to_vec());
        let frame = FrameInputs::new(&f, &l).with_quality(q.as_deref());
        let risk = calib.risk_row(frame);
        line.insert(
            "risk".into(),
            risk.and_then(|r| serde_json::Number::from_f64(f64::from(r))).map_or(serde_json::Value::Null, Into::into),
        );
        line.insert("verdict".into(), if calib.is_unfamiliar(*score) { "unfamiliar" } else { "familiar" }.into());
        line.insert("top_class".into(), cls.into());
        line.insert("class_name".into(), model.info.class_names.get(cls).cloned().unwrap_or_default().into());
        line.insert(
            "confidence".into(),
            serde_json::Number::from_f64(f64::from(conf)).map_or(serde_json::Value::Null, Into::into),
        );
        writeln!(out, "{}", serde_json::Value::Object(line))?;
    }
    Ok(0)
}
