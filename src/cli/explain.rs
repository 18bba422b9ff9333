//! `gradwatch explain`: why an image scores as it does. Per image: the score and verdict (one
//! JSON line on stdout, like `gradwatch score`, plus the files written and the layers that
//! stray most), a heat map of the input gradient over the image (PNG), and a bar chart (SVG)
//! of every parameter tensor's log squared gradient norm against the familiar mean +- std
//! the calibration was fitted on, so an operator sees which layers react.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use super::common::{load_input, runtime};
use super::score::{calib_compile_options, default_model_path};
use super::EXIT_CONFIG;
use crate::detector::{Calibration, FrameInputs, LogStandardizer};
use crate::grad::CompileOptions;
use crate::model::{top_class, LoadedModel};
use crate::runtime::GradSession;
use crate::snapshot::{file_safe, heatmap, write_atomic, GradLayout};

/// Arguments of `gradwatch explain`.
#[derive(Args, Debug)]
pub struct ExplainArgs {
    /// The image (PNG, JPEG, PPM); a folder or a .npy stack explains each image in it.
    pub image: PathBuf,
    /// The calibration file (from `gradwatch calibrate`).
    #[arg(long)]
    pub calib: PathBuf,
    /// The classifier (default: the calibration's path with `.calib.toml` replaced by
    /// `.onnx`, else the reference model).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Output folder for `<image>-heatmap.png` and `<image>-layers.svg` (created if missing).
    #[arg(short, long)]
    pub output: PathBuf,
    /// Images with a shorter side below this many pixels are shown upscaled.
    #[arg(long, default_value_t = 256)]
    pub min_side: usize,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

/// How many of the most deviating layers the JSON line names.
const TOP_LAYERS: usize = 5;

/// Runs `gradwatch explain`.
pub fn run(a: ExplainArgs) -> Result<i32> {
    let calib = Calibration::load(&a.calib)?;
    let model_path = a
        .model
        .clone()
        .or_else(|| default_model_path(&a.calib).filter(|p| p.is_file()))
        .unwrap_or_else(|| PathBuf::from(crate::model::DEFAULT_MODEL));
    // As `score` and the daemon compile it: the input gradient is the same whatever norms the
    // preset's graph computes.
    let Some(opts) = calib_compile_options(&calib, &a.calib)? else { return Ok(EXIT_CONFIG) };
    let mut model = LoadedModel::load(&model_path, &CompileOptions { input_grad: true, ..opts })
        .with_context(|| format!("loading {} (with its input gradient)", model_path.display()))?;
    if let Err(e) = calib.check_model(&model.info.sha256, &model.compiled.features) {
        eprintln!("error: {} vs {}: {e}", a.calib.display(), model_path.display());
        return Ok(EXIT_CONFIG);
    }
    if let Err(e) = model.use_preprocessing(calib.model.preprocessing.as_ref()) {
        eprintln!("error: {}: {e}", a.calib.display());
        return Ok(EXIT_CONFIG);
    }
    let input = load_input(&a.image, None)?;
    std::fs::create_dir_all(&a.output).with_context(|| format!("creating {}", a.output.display()))?;
    let mut session = GradSession::new(&model.compiled, &runtime(a.threads))?;
    let layout = GradLayout::of(&model.info);
    let familiar = standardizer(&calib);
    for (name, img) in input.names.iter().zip(&input.images) {
        let x = model.info.preprocess(std::iter::once(img));
        let out = session.run(x.view().into_dyn())?;
        let feats = out.features.row(0).to_vec();
        let logits = out.logits.row(0).to_vec();
        let quality =
            calib.uses_quality().then(|| crate::quality::measure_as_input(img, model.info.width, model.info.height));
        let score = calib.score_row(FrameInputs::new(&feats, &logits).with_quality(quality.as_ref().map(|q| &q[..])));
        let (cls, conf) = top_class(&logits);
        let grad: Option<Vec<f32>> = out.input_grad.map(|g| g.iter().copied().collect());
        let stem =
            file_safe(Path::new(name).file_stem().map_or(name.clone(), |s| s.to_string_lossy().into_owned()).as_str());

        let shown = heatmap::render(img, grad.as_deref(), &layout, a.min_side);
        let heat_img = shown.heatmap.context("the model's input gradient does not fit its input shape")?;
        let heat_path = a.output.join(format!("{stem}-heatmap.png"));
        write_atomic(&heat_path, |w| crate::snapshot::encode_png(w, &heat_img))
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("writing {}", heat_path.display()))?;

        let layers = layer_stats(&calib.model.features, &feats, familiar);
        let svg_path = a.output.join(format!("{stem}-layers.svg"));
        let title = format!(
            "{name}: score {score:.3} (threshold {:.3}, {}), model {}",
            calib.threshold,
            verdict(&calib, score),
            model.info.name
        );
        std::fs::write(&svg_path, layers_svg(&title, &layers))
            .with_context(|| format!("writing {}", svg_path.display()))?;

        let mut top: Vec<&Layer> = layers.iter().filter(|l| l.z.is_finite()).collect();
        top.sort_by(|a, b| b.z.abs().total_cmp(&a.z.abs()));
        let line = serde_json::json!({
            "file": name,
            "score": json_num(score),
            "threshold": json_num(calib.threshold),
            "verdict": verdict(&calib, score),
            "top_class": cls,
            "class_name": model.info.class_names.get(cls).cloned().unwrap_or_default(),
            "confidence": json_num(conf),
            "heatmap": heat_path.display().to_string(),
            "layers": svg_path.display().to_string(),
            "top_layers": top.iter().take(TOP_LAYERS).map(|l| serde_json::json!({
                "name": l.name, "z": json_num(l.z as f32),
            })).collect::<Vec<_>>(),
        });
        println!("{line}");
    }
    Ok(0)
}

fn verdict(calib: &Calibration, score: f32) -> &'static str {
    if calib.is_unfamiliar(score) {
        "unfamiliar"
    } else {
        "familiar"
    }
}

/// JSON has no NaN or infinity: those are written as null.
fn json_num(v: f32) -> serde_json::Value {
    serde_json::Number::from_f64(f64::from(v)).map_or(serde_json::Value::Null, Into::into)
}

/// The familiar statistics: the log-standardiser every detector starts with.
fn standardizer(calib: &Calibration) -> &LogStandardizer {
    calib.detector.normalize()
}

/// One parameter tensor in the chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Layer {
    /// Parameter tensor name.
    pub name: String,
    /// `ln(max(norm, 0) + eps)` of this image (NaN when the norm is NaN).
    pub value: f64,
    /// Familiar mean of the same.
    pub mean: f64,
    /// Familiar standard deviation.
    pub std: f64,
    /// `(value - mean) / std`.
    pub z: f64,
}

/// Each feature's log value next to the familiar statistics, exactly as the standardiser
/// transforms it (`+inf` clamped to `f32::MAX`, negatives to 0).
pub fn layer_stats(names: &[String], features: &[f32], s: &LogStandardizer) -> Vec<Layer> {
    names
        .iter()
        .zip(features)
        .zip(s.mean.iter().zip(&s.std))
        .map(|((name, &v), (&mean, &std))| {
            let value = if v.is_nan() {
                f64::NAN
            } else {
                let v = if v == f32::INFINITY { f32::MAX } else { v };
                (f64::from(v).max(0.0) + s.eps).ln()
            };
            Layer { name: name.clone(), value, mean, std, z: (value - mean) / std }
        })
        .collect()
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A horizontal bar chart, one row per parameter tensor (graph order, first layer on top):
/// the bar is this image's log squared gradient norm, the grey band the familiar mean +- std
/// with the mean as a dark tick. Bars are blue within 1 std, orange within 3, red beyond.
/// Every bar is a `<rect class="bar">` with a `<title>` giving the numbers.
pub fn layers_svg(title: &str, layers: &[Layer]) -> String {
    const ROW: f64 = 16.0;
    const LEFT: f64 = 260.0;
    const PLOT: f64 = 560.0;
    const TOP: f64 = 58.0;
    let finite = |v: f64| v.is_finite().then_some(v);
    let lo_hi = layers.iter().flat_map(|l| [finite(l.value), finite(l.mean - l.std), finite(l.mean + l.std)]).flatten();
    let (mut lo, mut hi) = lo_hi.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(v), b.max(v)));
    if !(lo.is_finite() && hi.is_finite()) {
        (lo, hi) = (-1.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(0.5);
    let (lo, hi) = ((lo - pad).floor(), (hi + pad).ceil());
    let x = |v: f64| LEFT + (v.clamp(lo, hi) - lo) / (hi - lo) * PLOT;
    let height = TOP + ROW * layers.len() as f64 + 40.0;
    let width = LEFT + PLOT + 30.0;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{width}" height="{height}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="10" y="18" font-size="13" font-weight="bold">{}</text>"#, xml_escape(title));
    let _ = writeln!(
        s,
        r#"<text x="10" y="36">log squared gradient norm per parameter tensor; grey: familiar mean &#177; std; bar colour: |z| &lt; 1, &lt; 3, &#8805; 3</text>"#
    );
    // Vertical grid lines at whole log units (at most ~12 of them).
    let step = ((hi - lo) / 10.0).ceil().max(1.0);
    let mut t = lo;
    while t <= hi + 1e-9 {
        let gx = x(t);
        let _ = writeln!(
            s,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{t}</text>"##,
            TOP + ROW * layers.len() as f64,
            TOP + ROW * layers.len() as f64 + 14.0
        );
        t += step;
    }
    for (i, l) in layers.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let name = xml_escape(&l.name);
        let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{name}</text>"#, LEFT - 6.0, y + ROW * 0.75);
        let (b0, b1) = (x(l.mean - l.std), x(l.mean + l.std));
        let _ = writeln!(
            s,
            r##"<rect class="familiar" x="{b0:.1}" y="{y:.1}" width="{:.1}" height="{ROW}" fill="#d0d0d0"/>"##,
            (b1 - b0).max(1.0)
        );
        let colour = match l.z.abs() {
            z if z < 1.0 => "#4a78b5",
            z if z < 3.0 => "#e8912d",
            z if z.is_finite() => "#c8312d",
            _ => "#999999",
        };
        let w = if l.value.is_finite() { x(l.value) - LEFT } else { 0.0 };
        let _ = writeln!(
            s,
            r#"<rect class="bar" x="{LEFT}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{colour}"><title>{name}: {:.3} (familiar {:.3} &#177; {:.3}, z = {:.2})</title></rect>"#,
            y + ROW * 0.25,
            ROW * 0.5,
            l.value,
            l.mean,
            l.std,
            l.z
        );
        let mx = x(l.mean);
        let _ = writeln!(
            s,
            r##"<line class="mean" x1="{mx:.1}" y1="{y:.1}" x2="{mx:.1}" y2="{:.1}" stroke="#333333" stroke-width="1.5"/>"##,
            y + ROW
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_has_one_bar_per_layer_and_escapes_names() {
        let s = LogStandardizer { eps: 1e-12, mean: vec![-10.0, -5.0, -3.0], std: vec![1.0, 2.0, 0.5] };
        let names = vec!["a".to_string(), "b<&>".to_string(), "c".to_string()];
        let layers = layer_stats(&names, &[(-10f64).exp() as f32, f32::NAN, 1.0], &s);
        assert!((layers[0].z).abs() < 1e-3, "{layers:?}");
        assert!(layers[1].value.is_nan());
        assert!((layers[2].z - 6.0).abs() < 1e-3, "{layers:?}");
        let svg = layers_svg("t", &layers);
        assert_eq!(svg.matches(r#"class="bar""#).count(), 3);
        assert!(svg.contains("b&lt;&amp;&gt;") && !svg.contains("b<&>"));
    }
}
