//! What the classifier makes of the images `init` was given: its accuracy against the labels,
//! the likely preprocessing mistakes tried side by side (a wrong preprocessing makes every
//! later number meaningless), and warnings about images that would make the threshold
//! optimistic (training images, a few classes only).

use std::collections::HashSet;
use std::fmt::Write as _;

use ndarray::Array2;

use super::SetupError;
use crate::frame::RgbImage;
use crate::model::{top_class, ColorOrder, Layout, LoadedModel, ModelInfo, Preprocessing, IMAGENET_MEAN, IMAGENET_STD};
use crate::onnx;
use crate::runtime::{ModelSession, RuntimeOptions};

/// Below this accuracy on labelled images the preprocessing is taken to be wrong.
pub const LOW_ACCURACY: f64 = 0.5;
/// An alternative preprocessing this much more accurate says the current one is wrong.
pub const BETTER_BY: f64 = 0.10;
/// Accuracy and mean top-class confidence at or above these look like training images.
pub const TRAINING_ACCURACY: f64 = 0.995;
/// See [`TRAINING_ACCURACY`].
pub const TRAINING_CONFIDENCE: f64 = 0.99;
/// Images per alternative preprocessing tried.
const ALTERNATIVE_IMAGES: usize = 256;
/// What to calibrate on instead, said with every warning about the images.
const USE_INSTEAD: &str = "calibrate on held-out images the model never trained on (its test split, or \
                           recordings from the target camera), covering every class, with their labels: a few \
                           hundred at least, thousands for a precise threshold";

/// The classifier's plain forward graph (up to the logits), for accuracy checks.
pub struct Forward {
    session: ModelSession,
    input: String,
    output: String,
}

impl Forward {
    /// The forward graph of `model` in a session.
    pub fn new(model: &LoadedModel, rt: &RuntimeOptions) -> Result<Self, SetupError> {
        let (fwd, output) = crate::model::forward_logits_model(&model.model)?;
        let session = ModelSession::new(&onnx::encode(&fwd), rt)?;
        Ok(Forward { session, input: model.compiled.input_name.clone(), output })
    }

    /// The logits `[N, C]` of `images` in one run, preprocessed as `info` says (any output
    /// shape with `N x C` numbers, e.g. `[N, C, 1, 1]`).
    pub fn logits(&mut self, info: &ModelInfo, images: &[&RgbImage]) -> Result<Array2<f32>, SetupError> {
        if images.is_empty() {
            return Ok(Array2::zeros((0, 0)));
        }
        let x = info.preprocess(images.iter().copied()).into_dyn();
        let o = self.session.run(&[(self.input.as_str(), x.view())])?;
        let z =
            o.get(&self.output).ok_or_else(|| SetupError::Invalid("the forward graph returned no logits".into()))?;
        let flat: Vec<f32> = z.iter().copied().collect();
        let width = flat.len() / images.len();
        if width == 0 || width * images.len() != flat.len() {
            return Err(SetupError::Invalid(format!(
                "the forward graph returned {} numbers for {} images",
                flat.len(),
                images.len()
            )));
        }
        Array2::from_shape_vec((images.len(), width), flat).map_err(|e| SetupError::Invalid(e.to_string()))
    }

    /// Top class and its softmax probability of every image, preprocessed as `info` says.
    pub fn predict(
        &mut self,
        info: &ModelInfo,
        images: &[&RgbImage],
        batch: usize,
    ) -> Result<Vec<(usize, f32)>, SetupError> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(batch.max(1)) {
            out.extend(self.logits(info, chunk)?.rows().into_iter().map(|z| top_class(&z.to_vec())));
        }
        Ok(out)
    }
}

/// Accuracy of predictions against labels.
pub fn accuracy(pred: &[(usize, f32)], labels: &[usize]) -> f64 {
    let right = pred.iter().zip(labels).filter(|((p, _), l)| p == *l).count();
    right as f64 / pred.len().max(1) as f64
}

/// What the classifier makes of the images.
#[derive(Clone, Debug)]
pub struct ImageCheck {
    /// How many images.
    pub images: usize,
    /// The model's classes.
    pub classes: usize,
    /// Top-1 accuracy (with labels).
    pub accuracy: Option<f64>,
    /// Classes seen: the true ones with labels, else the predicted ones.
    pub seen: usize,
    /// Mean top-class softmax probability.
    pub mean_confidence: f64,
}

impl ImageCheck {
    /// Predicts every image with `fwd` and sums up.
    pub fn new(
        fwd: &mut Forward,
        model: &LoadedModel,
        images: &[&RgbImage],
        labels: Option<&[usize]>,
        batch: usize,
    ) -> Result<Self, SetupError> {
        let pred = fwd.predict(&model.info, images, batch)?;
        let mean_confidence = pred.iter().map(|&(_, c)| f64::from(c)).sum::<f64>() / pred.len() as f64;
        let (accuracy, seen) = match labels {
            Some(l) => (Some(self::accuracy(&pred, l)), l.iter().collect::<HashSet<_>>().len()),
            None => (None, pred.iter().map(|p| p.0).collect::<HashSet<_>>().len()),
        };
        Ok(ImageCheck { images: images.len(), classes: model.compiled.num_classes, accuracy, seen, mean_confidence })
    }

    /// One line for the terminal.
    pub fn summary(&self) -> String {
        let (n, seen, classes, conf) = (self.images, self.seen, self.classes, self.mean_confidence);
        match self.accuracy {
            Some(acc) => format!(
                "images: {n} ({seen} of {classes} classes); accuracy {:.2} %, mean confidence {conf:.3}",
                100.0 * acc
            ),
            None => format!(
                "images: {n} without labels (the model predicts {seen} of {classes} classes; mean confidence \
                 {conf:.3}); give --labels to check the preprocessing and learn the classifier's errors"
            ),
        }
    }

    /// The report's sentence on the images: where they came from, and this check.
    pub fn report_line(
        &self,
        images: &std::path::Path,
        rows: Option<&str>,
        labels: Option<&std::path::Path>,
    ) -> String {
        let (seen, classes, conf) = (self.seen, self.classes, self.mean_confidence);
        format!(
            "{} images from `{}`{}{}",
            self.images,
            images.display(),
            rows.map(|r| format!(" (rows {r})")).unwrap_or_default(),
            match (labels, self.accuracy) {
                (Some(p), Some(acc)) => format!(
                    ", labels `{}`: {seen} of {classes} classes; accuracy **{:.2} %**, mean confidence {conf:.3}",
                    p.display(),
                    100.0 * acc
                ),
                _ => format!(", no labels: the model predicts {seen} of {classes} classes, mean confidence {conf:.3}"),
            }
        )
    }

    /// [`image_warnings`] for these images.
    pub fn warnings(&self) -> Vec<String> {
        image_warnings(self.accuracy, self.mean_confidence, self.seen, self.classes)
    }
}

/// Warnings about the images a calibration is fitted on: training images (near-perfect
/// accuracy with near-certain confidence) or only a few classes make the threshold
/// optimistic. `accuracy` is `None` without labels; `classes_seen` counts the true classes
/// (predicted ones without labels).
pub fn image_warnings(accuracy: Option<f64>, mean_confidence: f64, classes_seen: usize, classes: usize) -> Vec<String> {
    let mut w = Vec::new();
    if let Some(acc) = accuracy.filter(|&a| a >= TRAINING_ACCURACY && mean_confidence >= TRAINING_CONFIDENCE) {
        w.push(format!(
            "these look like training images: accuracy {:.1} % with mean confidence {:.3}. The model is more \
             certain on them than on what a camera will show, so the threshold will be optimistic (more clean frames \
             over it in service than the target); {USE_INSTEAD}",
            100.0 * acc,
            mean_confidence
        ));
    }
    if classes_seen * 2 < classes {
        let what = if accuracy.is_some() { "the labels cover" } else { "the model predicts" };
        w.push(format!(
            "the images cover only a few classes ({what} {classes_seen} of {classes}): the threshold learns what \
             those signs look like and will be optimistic for the others; {USE_INSTEAD}"
        ));
    }
    w
}

/// A preprocessing tried by the accuracy check, with the flags that select it.
#[derive(Clone, Debug)]
pub struct Alternative {
    /// The command-line flags that select it.
    pub flags: String,
    /// The preprocessing.
    pub p: Preprocessing,
    /// Its accuracy on the checked images.
    pub accuracy: f64,
}

/// The preprocessing check: the one in use against the likely mistakes.
#[derive(Clone, Debug)]
pub struct PreprocessCheck {
    /// The preprocessing in use.
    pub in_use: Preprocessing,
    /// Its accuracy on the checked images.
    pub accuracy: f64,
    /// Every alternative tried, most accurate first.
    pub tried: Vec<Alternative>,
    /// How many images were checked (up to 256, spread over the set).
    pub images: usize,
    /// Whether the accuracy says the preprocessing in use is probably wrong: under
    /// [`LOW_ACCURACY`] on all images, or an alternative [`BETTER_BY`] more accurate.
    pub looks_wrong: bool,
}

impl PreprocessCheck {
    /// The check on up to `ALTERNATIVE_IMAGES` of `images`: the current preprocessing, then
    /// every [`alternatives`] one. `overall` is the accuracy on all images.
    pub fn run(
        fwd: &mut Forward,
        model: &LoadedModel,
        images: &[&RgbImage],
        labels: &[usize],
        overall: f64,
        batch: usize,
    ) -> Result<Self, SetupError> {
        let step = images.len().div_ceil(ALTERNATIVE_IMAGES).max(1);
        let idx: Vec<usize> = (0..images.len()).step_by(step).collect();
        let sub: Vec<&RgbImage> = idx.iter().map(|&i| images[i]).collect();
        let sub_labels: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
        let cur = accuracy(&fwd.predict(&model.info, &sub, batch)?, &sub_labels);
        let in_use = model.info.preprocessing();
        let mut tried = Vec::new();
        for (flags, p) in alternatives(&in_use) {
            let mut info = model.info.clone();
            if info.set_preprocessing(&p, &model.compiled.input_shape).is_err() {
                continue;
            }
            let acc = accuracy(&fwd.predict(&info, &sub, batch)?, &sub_labels);
            tried.push(Alternative { flags, p, accuracy: acc });
        }
        tried.sort_by(|a, b| b.accuracy.total_cmp(&a.accuracy));
        let best = tried.first().map_or(0.0, |t| t.accuracy);
        let looks_wrong = overall < LOW_ACCURACY || best >= cur + BETTER_BY;
        Ok(PreprocessCheck { in_use, accuracy: cur, tried, images: sub.len(), looks_wrong })
    }

    /// The report's table: the preprocessing in use and the three best alternatives.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let _ = writeln!(
            t,
            "| preprocessing | accuracy on {} of the images |\n|---|---:|\n| in use: {} | {:.1} % |",
            self.images,
            self.in_use.summary(),
            100.0 * self.accuracy
        );
        for a in self.tried.iter().take(3) {
            let _ = writeln!(t, "| `{}` | {:.1} % |", a.flags, 100.0 * a.accuracy);
        }
        t
    }

    /// Why the preprocessing looks wrong, and the three most accurate alternatives, one line
    /// each (for the terminal).
    pub fn explain(&self) -> Vec<String> {
        let mut out = vec![format!(
            "the accuracy says the preprocessing is probably wrong: {:.1} % with {} on {} images; the three most \
             accurate alternatives tried:",
            100.0 * self.accuracy,
            self.in_use.summary(),
            self.images
        )];
        for t in self.tried.iter().take(3) {
            out.push(format!("  {:>5.1} %  {}   ({})", 100.0 * t.accuracy, t.flags, t.p.summary()));
        }
        out
    }

    /// The report's warning when the user calibrated anyway (`--force`).
    pub fn forced_warning(&self) -> String {
        format!(
            "the accuracy says the preprocessing is probably wrong ({:.1} %; best alternative `{}` {:.1} %); \
             calibrated anyway (--force)",
            100.0 * self.accuracy,
            self.tried.first().map_or("", |t| t.flags.as_str()),
            100.0 * self.tried.first().map_or(0.0, |t| t.accuracy)
        )
    }
}

/// The most likely preprocessing mistakes, as changes to `cur`: the other channel order,
/// pixels in [0, 1], [-1, 1], ImageNet mean/std or 0-255 (with and without ImageNet
/// normalisation), the other layout where the input's shape allows it.
pub fn alternatives(cur: &Preprocessing) -> Vec<(String, Preprocessing)> {
    let norms: [(&str, f32, [f32; 3], [f32; 3]); 5] = [
        ("--scale 1/255 --mean 0 --std 1", 1.0 / 255.0, [0.0; 3], [1.0; 3]),
        ("--scale 1/255 --mean imagenet --std imagenet", 1.0 / 255.0, IMAGENET_MEAN, IMAGENET_STD),
        ("--scale 1/255 --mean 0.5 --std 0.5", 1.0 / 255.0, [0.5; 3], [0.5; 3]),
        ("--scale 1 --mean 0 --std 1", 1.0, [0.0; 3], [1.0; 3]),
        (
            "--scale 1 --mean 123.675,116.28,103.53 --std 58.395,57.12,57.375",
            1.0,
            [123.675, 116.28, 103.53],
            [58.395, 57.12, 57.375],
        ),
    ];
    let other_color = match cur.color_order {
        ColorOrder::Rgb => ColorOrder::Bgr,
        ColorOrder::Bgr => ColorOrder::Rgb,
        ColorOrder::Gray => ColorOrder::Gray,
    };
    let other_layout = match cur.layout {
        Layout::Nchw => Layout::Nhwc,
        Layout::Nhwc => Layout::Nchw,
    };
    let mut out: Vec<(String, Preprocessing)> = Vec::new();
    let mut push = |flags: String, p: Preprocessing| {
        if !same_input(&p, cur) && !out.iter().any(|(_, q)| same_input(q, &p)) {
            out.push((flags, p));
        }
    };
    for color in [cur.color_order, other_color] {
        let cflag = if color == cur.color_order {
            String::new()
        } else {
            format!("--color-order {} ", color.name().to_ascii_lowercase())
        };
        push(
            format!("--color-order {}", color.name().to_ascii_lowercase()),
            Preprocessing { color_order: color, ..cur.clone() },
        );
        for (flags, scale, mean, std) in norms {
            push(format!("{cflag}{flags}"), Preprocessing { color_order: color, scale, mean, std, ..cur.clone() });
        }
    }
    push(
        format!("--layout {}", other_layout.name().to_ascii_lowercase()),
        Preprocessing { layout: other_layout, ..cur.clone() },
    );
    out
}

/// Whether `p` and `q` give the model the same input: the same layout, size and channel order
/// and, per channel, the same affine map `pixel * scale / std - mean / std` (0-255 with ImageNet
/// statistics times 255 is [0, 1] with ImageNet statistics).
pub fn same_input(p: &Preprocessing, q: &Preprocessing) -> bool {
    let close = |a: f32, b: f32| (a - b).abs() <= 1e-4 * a.abs().max(b.abs()).max(1e-6);
    (p.layout, p.width, p.height, p.color_order) == (q.layout, q.width, q.height, q.color_order)
        && (0..3)
            .all(|c| close(p.scale / p.std[c], q.scale / q.std[c]) && close(p.mean[c] / p.std[c], q.mean[c] / q.std[c]))
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_images_and_few_classes_warn() {
        // The case: GTSRB training images sorted by class, 2 of 43 classes.
        let w = image_warnings(Some(1.0), 0.998, 2, 43);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("training images") && w[0].contains("held-out"), "{w:?}");
        assert!(w[1].contains("2 of 43"), "{w:?}");
        // Held-out test images: 98 % accurate, 43 classes.
        assert!(image_warnings(Some(0.981), 0.97, 43, 43).is_empty());
        // Near-perfect but not certain: no training-image warning; 22 of 43 is half: none either.
        assert!(image_warnings(Some(0.996), 0.95, 22, 43).is_empty());
        assert_eq!(image_warnings(None, 0.999, 21, 43).len(), 1);
    }

    #[test]
    fn alternatives_change_one_thing_and_skip_the_current() {
        let cur = Preprocessing {
            layout: Layout::Nchw,
            width: 32,
            height: 32,
            color_order: ColorOrder::Rgb,
            scale: 1.0 / 255.0,
            mean: [0.0; 3],
            std: [1.0; 3],
        };
        let alts = alternatives(&cur);
        assert!(alts.iter().all(|(_, p)| !same_input(p, &cur)));
        // 0-255 with ImageNet statistics x 255 is the [0, 1] ImageNet input: tried once.
        let imagenet_255 = Preprocessing {
            scale: 1.0,
            mean: IMAGENET_MEAN.map(|m| m * 255.0),
            std: IMAGENET_STD.map(|s| s * 255.0),
            ..cur.clone()
        };
        assert_eq!(alts.iter().filter(|(_, p)| same_input(p, &imagenet_255)).count(), 1);
        let flags: Vec<&str> = alts.iter().map(|(f, _)| f.as_str()).collect();
        assert!(flags.contains(&"--color-order bgr"), "{flags:?}");
        assert!(flags.contains(&"--scale 1/255 --mean imagenet --std imagenet"), "{flags:?}");
        assert!(flags.contains(&"--color-order bgr --scale 1/255 --mean imagenet --std imagenet"), "{flags:?}");
        assert!(flags.contains(&"--layout nhwc"), "{flags:?}");
        // The flags select what they say.
        for (f, p) in &alts {
            let args: Vec<&str> = f.split_whitespace().collect();
            let get = |k: &str| args.iter().position(|a| *a == k).map(|i| args[i + 1]);
            if let Some(m) = get("--mean") {
                assert_eq!(crate::model::parse_triple(m, IMAGENET_MEAN).unwrap(), p.mean, "{f}");
            }
            if let Some(s) = get("--scale") {
                assert_eq!(crate::model::parse_scale(s).unwrap(), p.scale, "{f}");
            }
        }
    }
}
