//! The compiled ResNet-18 (CIFAR style, BatchNormalization kept) against PyTorch per-sample
//! gradients computed with torch.func in float64 (`scripts/make-golden.py` writes the fixture).

use std::path::Path;

use gradwatch::grad::{self, CompileOptions};
use gradwatch::onnx;
use gradwatch::runtime::GradSession;
use ndarray::{Array2, ArrayD};
use ndarray_npy::read_npy;

const FIXTURE: &str = "tests/fixtures/golden";
const MODEL: &str = "models/gtsrb-resnet18.onnx";

#[test]
fn resnet18_matches_pytorch_float64() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = onnx::load(&dir.join(MODEL)).unwrap();
    let compiled = grad::compile(&model, &CompileOptions::default()).unwrap();
    let names: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join(FIXTURE).join("names.json")).unwrap()).unwrap();
    assert_eq!(compiled.features, names, "feature order must follow the graph (= PyTorch's parameter order)");
    assert_eq!(names.len(), 62);

    let x: ArrayD<f32> = read_npy(dir.join(FIXTURE).join("input.npy")).unwrap();
    let want: Array2<f64> = read_npy(dir.join(FIXTURE).join("features.npy")).unwrap();
    let want_logits: Array2<f64> = read_npy(dir.join(FIXTURE).join("logits.npy")).unwrap();
    let mut s = GradSession::new(&compiled, &crate::common::ort()).unwrap();
    let got = s.run(x.view()).unwrap();

    let mut worst = (0.0f64, 0usize, 0usize);
    for ((k, j), &w) in want.indexed_iter() {
        let g = got.features[[k, j]] as f64;
        let rel = (g - w).abs() / w.abs().max(1e-30);
        if rel > worst.0 {
            worst = (rel, k, j);
        }
    }
    let logit_err = got.logits.iter().zip(want_logits.iter()).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
    eprintln!(
        "worst relative feature error {:.2e} ({} of sample {}), logits max abs error {logit_err:.2e}",
        worst.0, names[worst.2], worst.1
    );
    assert!(logit_err < 1e-4, "logits differ from PyTorch by {logit_err}");
    assert!(worst.0 < 1e-4, "feature {} of sample {} differs by {:.2e} relative", names[worst.2], worst.1, worst.0);
}

/// The `fast` preset against the same PyTorch float64 features: its 17 norms (layer4 and the
/// head) are the full graph's columns of the same names; the head's weight norm is also its
/// closed form from the forward pass, `||s(z) - 1||^2 / C^2 * ||h||^2`.
#[test]
fn resnet18_fast_preset_matches_pytorch_float64() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let model = onnx::load(&dir.join(MODEL)).unwrap();
    let opts = CompileOptions { penultimate: true, ..CompileOptions::preset(grad::Preset::Fast) };
    let fast = grad::compile(&model, &opts).unwrap();
    let names: Vec<String> =
        serde_json::from_str(&std::fs::read_to_string(dir.join(FIXTURE).join("names.json")).unwrap()).unwrap();
    let x: ArrayD<f32> = read_npy(dir.join(FIXTURE).join("input.npy")).unwrap();
    let want: Array2<f64> = read_npy(dir.join(FIXTURE).join("features.npy")).unwrap();
    let got = GradSession::new(&fast, &crate::common::ort()).unwrap().run(x.view()).unwrap();
    let norms = fast.features.len() - fast.act_stats.len();
    assert_eq!(norms, 17);
    for (j, name) in fast.features[..norms].iter().enumerate() {
        let i = names.iter().position(|n| n == name).unwrap_or_else(|| panic!("{name} is no full feature"));
        for k in 0..x.shape()[0] {
            let (g, w) = (got.features[[k, j]] as f64, want[[k, i]]);
            assert!((g - w).abs() / w.abs().max(1e-30) < 1e-4, "{name} of sample {k}: fast {g:e}, PyTorch {w:e}");
        }
    }
    let h = got.penultimate.expect("penultimate");
    let c = got.logits.ncols() as f64;
    let wcol = fast.features.iter().position(|n| n == "linear.weight").unwrap();
    for k in 0..x.shape()[0] {
        let d2: f64 = got.logits.row(k).iter().map(|&z| (1.0 / (1.0 + (-(z as f64)).exp()) - 1.0).powi(2)).sum::<f64>();
        let h2: f64 = h.row(k).iter().map(|&v| (v as f64).powi(2)).sum();
        let closed = d2 / (c * c) * h2;
        let g = got.features[[k, wcol]] as f64;
        assert!((g - closed).abs() / closed < 1e-4, "head closed form of sample {k}: {g:e} vs {closed:e}");
    }
    // The statistics are finite and positive (block outputs after Relu).
    for k in 0..x.shape()[0] {
        assert!(got.features.row(k).iter().skip(norms).all(|v| v.is_finite() && *v > 0.0));
    }
}

const FOLDED: &str = "tests/fixtures/folded_bn";

/// A Keras/TensorFlow-style CNN whose BatchNormalization layers are folded into per-channel
/// constant Mul/Add pairs, with bias Adds after a bias-less Conv and a MatMul, against a float64
/// numpy forward and per-sample backward (`scripts/make-folded-bn-fixture.py` writes the
/// fixture). All 14 trainable tensors count; before the compiler found folded BatchNormalization
/// and Conv bias Adds, 7 did.
#[test]
fn folded_batchnorm_cnn_matches_numpy_float64() {
    use gradwatch::grad::{ParamKind, ParamSelection};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(FOLDED);
    let model = onnx::load(&dir.join("model.onnx")).unwrap();
    let compiled = grad::compile(&model, &CompileOptions::default()).unwrap();
    let names: Vec<String> = serde_json::from_str(&std::fs::read_to_string(dir.join("names.json")).unwrap()).unwrap();
    assert_eq!(compiled.features, names);
    assert_eq!(names.len(), 14);
    let count = |k: ParamKind| compiled.feature_kinds.iter().filter(|&&f| f == k).count();
    assert_eq!(
        [ParamKind::Weight, ParamKind::Bias, ParamKind::FoldedBnScale, ParamKind::FoldedBnShift].map(count),
        [5, 3, 3, 3]
    );

    let x: ArrayD<f32> = read_npy(dir.join("input.npy")).unwrap();
    let want: Array2<f64> = read_npy(dir.join("features.npy")).unwrap();
    let want_logits: Array2<f64> = read_npy(dir.join("logits.npy")).unwrap();
    let got = GradSession::new(&compiled, &crate::common::ort()).unwrap().run(x.view()).unwrap();
    let logit_err = got.logits.iter().zip(want_logits.iter()).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max);
    assert!(logit_err < 1e-5, "logits differ from numpy by {logit_err}");
    for ((k, j), &w) in want.indexed_iter() {
        let g = got.features[[k, j]] as f64;
        let rel = (g - w).abs() / w.abs().max(1e-30);
        assert!(rel < 1e-4, "{} of sample {k}: compiled {g:e}, numpy {w:e} ({rel:.1e} relative)", names[j]);
    }

    // Leaving the folded BatchNormalization out keeps the other columns as they were.
    let sel: ParamSelection = "-folded_bn_*".parse().unwrap();
    let part = grad::compile(&model, &CompileOptions { params: sel, ..Default::default() }).unwrap();
    assert_eq!(part.features.len(), 8);
    let f = GradSession::new(&part, &crate::common::ort()).unwrap().run(x.view()).unwrap().features;
    for (j, name) in part.features.iter().enumerate() {
        let i = names.iter().position(|n| n == name).unwrap();
        for k in 0..x.shape()[0] {
            let (a, b) = (f[[k, j]] as f64, want[[k, i]]);
            assert!((a - b).abs() / b.abs().max(1e-30) < 1e-4, "{name} of sample {k}: {a:e} vs {b:e}");
        }
    }
}
