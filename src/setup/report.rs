//! Steps 4 and 5 of `gradwatch init`: the held-out images measured against the calibration
//! (clean over-threshold rate, ROC, accuracy and detection per degradation type), and the
//! files written: `<model>.calib.toml`, `gradwatch.toml`, `report.md`, `roc.svg`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ndarray::Array2;

use super::inspect::SetupModel;
use super::recipe::{RecipePlan, RunOptions};
use super::SetupError;
use crate::corrupt::{round_robin_corruptions, Corruption};
use crate::detector::{roc, Calibration, DetectorKind};
use crate::frame::RgbImage;
use crate::grad::Preset;
use crate::model::{top_class, LoadedModel};
use crate::plot::{PlotSpec, Series};
use crate::runtime::extract::{self, FeatureSet};
use crate::runtime::GradSession;

/// Features of the held-out images.
pub struct HeldOut {
    /// The clean images'.
    pub clean: FeatureSet,
    /// One corrupted copy of each (none with `--corruptions none`).
    pub corrupted: Option<FeatureSet>,
    /// The corruption types.
    pub kinds: Vec<Corruption>,
    /// `(kind, level)` of each corrupted copy.
    pub combos: Vec<(Corruption, u8)>,
    /// Image-quality measures of the clean and the corrupted images, when the detector reads
    /// them.
    pub quality: (Option<Array2<f32>>, Option<Array2<f32>>),
}

/// The held-out images' features, clean and (with corruptions) one corrupted copy each,
/// cycling through every `(kind, level)` of the plan; `None` without held-out images.
pub fn measure_held_out(
    session: &mut GradSession,
    model: &LoadedModel,
    plan: &RecipePlan,
    run: &RunOptions,
    images: &[RgbImage],
) -> Result<Option<HeldOut>, SetupError> {
    if images.is_empty() {
        return Ok(None);
    }
    let (kinds, levels) = (&plan.kinds, &plan.levels);
    let clean = extract::extract_labelled(session, &model.info, images, run.batch, run.progress, "held out")?;
    let (w, h) = (model.info.width, model.info.height);
    let measure = |imgs: &[RgbImage]| plan.detector.quality.then(|| crate::quality::measure_batch(imgs, w, h));
    let mut quality = (measure(images), None);
    let (corrupted, combos) = if kinds.is_empty() {
        (None, Vec::new())
    } else {
        let imgs = round_robin_corruptions(images, kinds, levels, plan.recipe.seed + 1)?;
        let label = "held out, corrupted";
        let f = extract::extract_labelled(session, &model.info, &imgs, run.batch, run.progress, label)?;
        quality.1 = measure(&imgs);
        let all: Vec<(Corruption, u8)> = kinds.iter().flat_map(|&k| levels.iter().map(move |&l| (k, l))).collect();
        (Some(f), (0..imgs.len()).map(|i| all[i % all.len()]).collect())
    };
    Ok(Some(HeldOut { clean, corrupted, kinds: kinds.clone(), combos, quality }))
}

/// `report.md`'s parts.
#[derive(Default)]
pub struct Report {
    /// The images and the accuracy check, one sentence.
    pub images: String,
    /// The preprocessing check's table (with labels).
    pub check: String,
    /// Warnings about the images or the preprocessing.
    pub warnings: Vec<String>,
    /// The calibration and the held-out measurements.
    pub calibration: String,
    /// The held-out result in one line (for the terminal).
    pub headline: Option<String>,
    /// Held-out accuracy and detection per degradation type.
    pub per_type: String,
    /// The held-out ROC as SVG.
    pub roc_svg: Option<String>,
    /// What each preset's gradient graph costs ([`super::cost::Cost::markdown`]).
    pub cost: String,
}

fn pct(k: usize, n: usize) -> String {
    if n == 0 {
        "-".into()
    } else {
        format!("{:.1} %", 100.0 * k as f64 / n as f64)
    }
}

/// Whether the classifier's top class of row `i` of `fs` is label `l[i]`.
fn right(fs: &FeatureSet, i: usize, l: &[usize]) -> bool {
    top_class(&fs.logits.row(i).to_vec()).0 == l[i]
}

impl Report {
    /// Fills the calibration section (and, with held-out images, the held-out numbers, the ROC
    /// and the per-type table). `labels` are the held-out images' true classes.
    pub fn fill(
        &mut self,
        setup: &SetupModel,
        plan: &RecipePlan,
        calib: &Calibration,
        held: Option<&HeldOut>,
        labels: Option<&[usize]>,
    ) {
        let s = &calib.fitted_on;
        let _ = writeln!(
            self.calibration,
            "Fitted on {} images and one corrupted copy of each (`--corruptions {} --levels {}`), detector `{}`, \
             target {:.1} % false alarms per frame: **threshold {:.4}**. The fit's own held-out 20 %: {:.2} % false \
             alarms, {:.1} % of corrupted copies detected, AUROC {:.3}.\n\nPreprocessing: {} ({}).",
            s.familiar.count,
            plan.recipe.corruptions,
            plan.recipe.levels,
            match &calib.detector {
                DetectorKind::Ensemble(_) => "risk",
                DetectorKind::Mlp { .. } => "paper",
                DetectorKind::OneClass { .. } => "one-class",
            },
            100.0 * calib.target_false_alarm,
            calib.threshold,
            100.0 * s.validation_false_alarm_rate,
            100.0 * s.validation_true_positive_rate,
            s.validation_auroc,
            setup.model.info.preprocessing().summary(),
            setup.source,
        );
        let Some(h) = held else { return };
        let cs = calib.score(&h.clean.features, &h.clean.logits, h.quality.0.as_ref());
        let us =
            h.corrupted.as_ref().map(|c| calib.score(&c.features, &c.logits, h.quality.1.as_ref())).unwrap_or_default();
        self.held_out(calib, h, &cs, &us, labels);
        self.roc_svg = Some(roc_svg(&setup.model.info.name, calib, &cs, &us));
        self.per_type(calib, h, &us, labels);
    }

    /// The held-out table and headline, from the clean and corrupted scores.
    fn held_out(&mut self, calib: &Calibration, h: &HeldOut, cs: &[f32], us: &[f32], labels: Option<&[usize]>) {
        let over = cs.iter().filter(|&&v| calib.is_unfamiliar(v)).count();
        let det = us.iter().filter(|&&v| calib.is_unfamiliar(v)).count();
        let auroc = roc::auroc(cs, us);
        let clean_acc = labels.map(|l| (0..cs.len()).filter(|&i| right(&h.clean, i, l)).count());
        let line = format!(
            "held out {} clean images never used in the fit: {} over the threshold (target {:.1} %); corrupted copies: \
             {} detected, AUROC {:.3}",
            cs.len(),
            pct(over, cs.len()),
            100.0 * calib.target_false_alarm,
            pct(det, us.len()),
            auroc
        );
        let _ = writeln!(
            self.calibration,
            "\n**Held out** ({} of the images, never used in the fit; corrupted copies: one per image, the same types \
             and levels, round-robin):\n\n| | |\n|---|---:|\n| clean images | {} |\n| clean over the threshold \
             (expected false-alarm rate per frame) | **{}** ({over}) |\n| corrupted copies detected | {} ({det} of {}) \
             |\n| AUROC clean vs corrupted | {auroc:.3} |{}\n\n![held-out ROC](roc.svg)",
            cs.len(),
            cs.len(),
            pct(over, cs.len()),
            pct(det, us.len()),
            us.len(),
            clean_acc.map(|k| format!("\n| classifier accuracy, clean | {} |", pct(k, cs.len()))).unwrap_or_default(),
        );
        self.headline = Some(line);
    }

    /// Held-out accuracy and detection per degradation type (with corruptions).
    fn per_type(&mut self, calib: &Calibration, h: &HeldOut, us: &[f32], labels: Option<&[usize]>) {
        let Some(corrupted) = h.corrupted.as_ref().filter(|_| !h.combos.is_empty()) else { return };
        let _ = writeln!(
            self.per_type,
            "| degradation | family | held-out copies | classifier accuracy | detected |\n|---|---|---:|---:|---:|"
        );
        for &k in &h.kinds {
            let idx: Vec<usize> = (0..h.combos.len()).filter(|&i| h.combos[i].0 == k).collect();
            if idx.is_empty() {
                continue;
            }
            let d = idx.iter().filter(|&&i| calib.is_unfamiliar(us[i])).count();
            let acc = match labels {
                Some(l) => pct(idx.iter().filter(|&&i| right(corrupted, i, l)).count(), idx.len()),
                None => "- (no labels)".into(),
            };
            let _ = writeln!(
                self.per_type,
                "| {} | {} | {} | {acc} | {} |",
                k.name(),
                k.family().name(),
                idx.len(),
                pct(d, idx.len())
            );
        }
    }

    /// The whole report; `command` is the command line that made it.
    pub fn markdown(&self, command: &str, model_path: &Path, model: &LoadedModel, calib_name: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "# gradwatch init: {}\n", model.info.name);
        let _ = writeln!(
            md,
            "Written by `{command}`. Model `{}`, sha256 `{}`, {} classes, {} gradient features. Calibration: \
             `{calib_name}`; daemon config: `gradwatch.toml`.\n",
            model_path.display(),
            model.info.sha256,
            model.compiled.num_classes,
            model.compiled.features.len()
        );
        let _ = writeln!(md, "## Images\n\n{}.\n", self.images);
        if !self.check.is_empty() {
            let _ = writeln!(
                md,
                "Preprocessing check (the one in use and the three best alternatives tried):\n\n{}",
                self.check
            );
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(md, "## Warnings\n");
            for w in &self.warnings {
                let _ = writeln!(md, "- {w}");
            }
            md.push('\n');
        }
        if !self.cost.is_empty() {
            let _ = writeln!(md, "## Cost per frame\n\n{}", self.cost);
        }
        let _ = writeln!(md, "## Calibration\n\n{}", self.calibration);
        if !self.per_type.is_empty() {
            let _ = writeln!(md, "## Per degradation type (held-out corrupted copies)\n\n{}", self.per_type);
        }
        md
    }
}

/// The held-out ROC (clean vs corrupted scores) with the threshold's operating point.
fn roc_svg(name: &str, calib: &Calibration, cs: &[f32], us: &[f32]) -> String {
    let over = cs.iter().filter(|&&v| calib.is_unfamiliar(v)).count();
    let fpr = over as f64 / cs.len().max(1) as f64;
    let spec = PlotSpec {
        title: format!("{name}: held-out clean vs corrupted (AUROC {:.3})", roc::auroc(cs, us)),
        x_label: "clean frames over the threshold (false-alarm rate)".into(),
        y_label: "corrupted frames detected".into(),
        x_range: (0.0, 1.0),
        y_range: Some((0.0, 1.0)),
        log_y: false,
        diagonal: true,
    };
    let series = vec![
        Series { label: "ROC".into(), points: roc::roc_curve(cs, us) },
        Series {
            label: format!("threshold {:.3}: {:.1} % clean over it", calib.threshold, 100.0 * fpr),
            points: vec![(fpr, 0.0), (fpr, 1.0)],
        },
    ];
    crate::plot::line_plot(&spec, &series)
}

/// Where `init` writes: the output folder and the model's file stem.
pub struct Outputs {
    /// The output folder (created).
    pub dir: PathBuf,
    /// The model file's stem (`model` when it has none).
    pub stem: String,
}

impl Outputs {
    /// The outputs for `model` in `dir`.
    pub fn new(dir: &Path, model: &Path) -> Self {
        let stem = model.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
        Outputs { dir: dir.to_path_buf(), stem }
    }

    /// The calibration's file name, `<stem>.calib.toml`.
    pub fn calib_name(&self) -> String {
        format!("{}.calib.toml", self.stem)
    }

    /// Creates the folder and saves the calibration in it.
    pub fn save_calibration(&self, calib: &Calibration) -> Result<(), SetupError> {
        std::fs::create_dir_all(&self.dir).map_err(SetupError::io(format!("creating {}", self.dir.display())))?;
        Ok(calib.save(&self.dir.join(self.calib_name()))?)
    }

    /// Writes `roc.svg` (when the report has one), `report.md` and `gradwatch.toml` (pointing
    /// at `model`, made absolute where it exists).
    pub fn write(&self, report: &Report, markdown: &str, model: &Path, preset: Preset) -> Result<(), SetupError> {
        let dir = self.dir.display();
        if let Some(svg) = &report.roc_svg {
            std::fs::write(self.dir.join("roc.svg"), svg).map_err(SetupError::io(format!("writing {dir}")))?;
        }
        std::fs::write(self.dir.join("report.md"), markdown)
            .map_err(SetupError::io(format!("writing report.md in {dir}")))?;
        let model_abs = std::fs::canonicalize(model).unwrap_or_else(|_| model.to_path_buf());
        std::fs::write(self.dir.join("gradwatch.toml"), config_text(&model_abs, &self.calib_name(), &self.stem, preset))
            .map_err(SetupError::io(format!("writing gradwatch.toml in {dir}")))
    }
}
/// The shipped config's `[alert]` section (config/gradwatch.toml), with its `state_dir`
/// commented out (the path is the packaged unit's).
pub fn shipped_alert_section() -> String {
    const SHIPPED: &str = include_str!("../../config/gradwatch.toml");
    let mut out = String::new();
    let mut inside = false;
    for line in SHIPPED.lines() {
        let t = line.trim_start();
        if t.starts_with('[') && !t.starts_with("[[") {
            inside = t.starts_with("[alert]");
        } else if t.starts_with("[[") {
            inside = false;
        }
        if inside {
            if t.starts_with("state_dir") {
                out.push_str("# state_dir = \"/var/lib/gradwatch\"   # keep learned baselines across restarts\n");
            } else {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// A ready daemon config for the model: one stream to fill in, the shipped alert policy.
pub fn config_text(model: &Path, calib_name: &str, stem: &str, preset: Preset) -> String {
    let q = |p: &str| p.replace('\\', "\\\\").replace('"', "\\\"");
    format!(
        r#"# gradwatch daemon configuration for {stem}, written by `gradwatch init`.
# Fill in the [[stream]] (your camera), then:
#   gradwatch check-config gradwatch.toml && gradwatch run --config gradwatch.toml
# Every option with its default: config/gradwatch.toml in the gradwatch repository. Relative
# paths resolve against this file's directory.

[model]
path = "{}"
# Made by `gradwatch init` for exactly this model file (sha256-checked); it also holds the
# preprocessing when it was overridden.
calibration = "{}"
preset = "{}"

[runtime]
providers = ["cpu"]

{}
[metrics]
enabled = true
bind = "127.0.0.1:9464"

# One stream to fill in: a V4L2 camera here; pipe (RTSP via ffmpeg), directory and replay
# streams are documented in config/gradwatch.toml.
[[stream]]
name = "cam0"
baseline = {{ learn_minutes = 10 }}
kind = "v4l2"
device = "/dev/video0"
width = 640
height = 480
fps = 15

[[sink]]
kind = "stdout"
"#,
        q(&model.display().to_string()),
        q(calib_name),
        preset.name(),
        shipped_alert_section().trim_end().to_string() + "\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_alert_section_is_the_cusum_policy_without_state_dir() {
        let s = shipped_alert_section();
        assert!(s.starts_with("[alert]"), "{s}");
        assert!(s.contains("policy = \"cusum\""), "{s}");
        assert!(!s.contains("[metrics]"), "{s}");
        assert!(s.lines().all(|l| !l.trim_start().starts_with("state_dir")), "{s}");
        let text = config_text(Path::new("/m/my \"model\".onnx"), "m.calib.toml", "m", Preset::Fast);
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(v["alert"]["policy"].as_str(), Some("cusum"));
        assert_eq!(v["model"]["path"].as_str(), Some("/m/my \"model\".onnx"));
        assert_eq!(v["stream"].as_array().map(Vec::len), Some(1));
        assert_eq!(v["model"]["preset"].as_str(), Some("fast"));
    }
}
