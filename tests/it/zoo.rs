//! The architecture zoo: small torchvision and transformer models (`scripts/make-zoo.py`), each
//! exported with BatchNormalization kept and as `torch.onnx.export` writes by default (a subset
//! also with a fixed batch size of 1 and at opset 11, as older tools write models, and as
//! `torch.onnx.export(model, (x,), path)` writes it with no other argument), compiled
//! and run through ONNX Runtime against float64 PyTorch per-sample gradients. The report with
//! timings is `gradwatch bench --zoo tests/fixtures/zoo` (`docs/results/compiler-zoo.md`).

use std::path::Path;

use gradwatch::lab::zoo::{check_zoo_fixture, zoo_archs, ZOO_FORMS};

const DIR: &str = "tests/fixtures/zoo";

/// The bar: median relative error <= 1e-5 and max <= 1e-3 over every feature and
/// sample of a model; every PyTorch parameter tensor a feature and no other; logits equal.
#[test]
fn every_zoo_architecture_matches_pytorch_float64() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
    let archs = zoo_archs(&dir).unwrap();
    assert!(archs.len() >= 16, "{archs:?}");
    let mut failures = Vec::new();
    let mut checked = 0;
    let mut per_form = [0usize; ZOO_FORMS.len()];
    for arch in &archs {
        for (k, form) in ZOO_FORMS.iter().enumerate() {
            // Every architecture has the first two forms; the others a subset.
            if k >= 2 && !dir.join(arch).join(format!("{form}.onnx")).exists() {
                continue;
            }
            per_form[k] += 1;
            let c = match check_zoo_fixture(&dir, arch, form, &crate::common::ort()) {
                Ok(c) => c,
                Err(e) => {
                    failures.push(format!("{arch}/{form}: {e:#}"));
                    continue;
                }
            };
            checked += 1;
            let (max, median) = (c.worst.0, c.median());
            eprintln!(
                "{arch}/{form}: {} features, max rel err {max:.1e} ({} sample {}), median {median:.1e}, logits {:.1e}",
                c.compiled.features.len(),
                c.worst.1,
                c.worst.2,
                c.logit_err
            );
            // A fixture's no-golden.txt names (by substring) the tensors PyTorch and the
            // compiled graph cannot both have, with the reason.
            let waived = std::fs::read_to_string(dir.join(arch).join("no-golden.txt")).unwrap_or_default();
            let allowed = |kind: &str, name: &str| {
                waived.lines().filter_map(|l| l.strip_prefix(kind)).any(|p| name.to_lowercase().contains(p.trim()))
            };
            let missing: Vec<&String> = c.missing.iter().filter(|n| !allowed("missing:", n)).collect();
            let extra: Vec<&String> = c.extra.iter().filter(|n| !allowed("extra:", n)).collect();
            if !missing.is_empty() || !extra.is_empty() {
                failures.push(format!("{arch}/{form}: features missing {missing:?}, extra {extra:?}"));
            }
            // NaN fails too.
            if max.is_nan() || median.is_nan() || max > 1e-3 || median > 1e-5 {
                failures.push(format!("{arch}/{form}: max rel err {max:.1e} ({}), median {median:.1e}", c.worst.1));
            }
            if c.logit_err.is_nan() || c.logit_err > 1e-5 {
                failures.push(format!("{arch}/{form}: logits differ by {:.1e} (relative)", c.logit_err));
            }
        }
    }
    // Fixed-batch and opset-11 exports of attention, shuffle, inception, NHWC and
    // Softmax-output models, and the dynamo exporter's fixed-batch form (make-zoo.py's
    // EXTRA_FORMS).
    assert!(per_form[2] >= 7 && per_form[3] >= 7 && per_form[4] >= 12, "extra forms missing: {per_form:?}");
    assert!(failures.is_empty(), "{} of {checked} compiled fixtures fail:\n{}", failures.len(), failures.join("\n"));
}

/// A model exported with its batch fixed at 1 runs a batch of 4 through its plain forward graph
/// (the one `init` checks accuracy with) and gives the PyTorch logits; the Softmax-output
/// model's forward graph ends at the logits, not the probabilities. Transformers whose literal
/// reshapes merge the one sample with heads, windows or patches run their batch-first forward.
#[test]
fn fixed_batch_and_softmax_models_forward_any_batch() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
    let x: ndarray::ArrayD<f32> = ndarray_npy::read_npy(dir.join("input.npy")).unwrap();
    let cases = [
        ("softmax_head", "static"),
        ("googlenet", "static"),
        ("token_mixer", "default_static"),
        ("tv_vit", "default_static"),
        ("tv_swin", "default_static"),
    ];
    for (arch, form) in cases {
        let model = gradwatch::onnx::load(&dir.join(arch).join(format!("{form}.onnx"))).unwrap();
        let (fwd, out) = gradwatch::model::forward_logits_model(&model).unwrap();
        let mut s =
            gradwatch::runtime::ModelSession::new(&gradwatch::onnx::encode(&fwd), &crate::common::ort()).unwrap();
        let got = s.run(&[("input", x.view())]).unwrap().remove(&out).unwrap();
        let want: ndarray::Array2<f64> =
            ndarray_npy::read_npy(dir.join(arch).join(format!("{form}.logits.npy"))).unwrap();
        assert_eq!(got.shape(), want.shape(), "{arch}");
        let err = got.iter().zip(want.iter()).map(|(&g, &w)| (f64::from(g) - w).abs()).fold(0.0, f64::max);
        assert!(err < 1e-4, "{arch}: logits differ by {err}");
    }
}

/// A model converted to float16 (as `onnxconverter-common` writes it: half weights and
/// constants, a Cast to half after the input and back before the logits, or half inputs and
/// outputs throughout) compiles to the same gradient graph as its float32 original with the
/// weights rounded to half: same features, same values. Its forward graph takes float32.
#[test]
fn a_half_precision_model_compiles_as_its_float32_weights() {
    use crate::common::{half_model, Half};
    use gradwatch::onnx;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
    let x: ndarray::ArrayD<f32> = ndarray_npy::read_npy(dir.join("input.npy")).unwrap();
    let features = |m: &onnx::ModelProto| {
        let c = gradwatch::grad::compile(m, &Default::default()).unwrap();
        let mut s = gradwatch::runtime::ModelSession::new(&onnx::encode(&c.model), &crate::common::ort()).unwrap();
        let mut out = s.run(&[(c.input_name.as_str(), x.view())]).unwrap();
        (c.features, out.remove("grad_features").unwrap(), out.remove("logits").unwrap())
    };
    for arch in ["resnet18", "hybrid"] {
        let model = onnx::load(&dir.join(arch).join("bn.onnx")).unwrap();
        let want = features(&half_model(&model, Half::Rounded));
        let input = model.graph.as_ref().unwrap().input[0].name.clone();
        for form in [Half::Io32, Half::Io16] {
            let m = half_model(&model, form);
            let got = features(&m);
            assert_eq!(got.0, want.0, "{arch}/{form:?}: feature names");
            for (g, w) in [(&got.1, &want.1), (&got.2, &want.2)] {
                let err = g.iter().zip(w.iter()).map(|(a, b)| ((a - b) / b.abs().max(1e-6)).abs()).fold(0.0, f32::max);
                assert!(err < 1e-5, "{arch}/{form:?}: relative difference {err}");
            }
            let (fwd, out) = gradwatch::model::forward_logits_model(&m).unwrap();
            let mut s = gradwatch::runtime::ModelSession::new(&onnx::encode(&fwd), &crate::common::ort()).unwrap();
            let l = s.run(&[(input.as_str(), x.view())]).unwrap().remove(&out).unwrap();
            let err = l.iter().zip(want.2.iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
            assert!(err < 1e-4, "{arch}/{form:?}: forward logits differ by {err}");
        }
    }
}

/// `gradwatch bench --zoo`'s report: one ratio column per preset, a row per export form, and a
/// refused fixture reported in its row (exit code 1) rather than ending the report.
#[test]
fn zoo_report_times_each_preset_and_reports_refusals() {
    use gradwatch::grad::Preset;
    use gradwatch::lab::zoo::{report, Timing};
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("input.npy"), tmp.path().join("input.npy")).unwrap();
    let arch = tmp.path().join("smooth_cnn");
    std::fs::create_dir(&arch).unwrap();
    for f in std::fs::read_dir(src.join("smooth_cnn")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), arch.join(f.file_name())).unwrap();
    }
    let t = Timing { batch: 2, seconds: 0.01, rounds: 1, presets: Preset::ALL.to_vec() };
    let mut out = Vec::new();
    assert_eq!(report(tmp.path(), &t, &crate::common::ort(), &mut out).unwrap(), 0);
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines[0].ends_with(
            "| grad/forward at batch 2, `full` | grad/forward at batch 2, `fast` | grad/forward at batch 2, `head` \
             | `init --preset auto` |"
        ),
        "{text}"
    );
    let rows: Vec<&str> = lines.iter().skip(2).take_while(|l| l.starts_with('|')).copied().collect();
    assert_eq!(rows.len(), 2, "{text}");
    let mut within = [0, 0, 0, 0];
    for row in &rows {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | arch | form | features | max | median | logits | full | fast | head | auto |
        assert_eq!(cells.len(), 12, "{row}");
        let r: Vec<f64> = cells[7..10].iter().map(|c| c.strip_suffix('x').unwrap().parse().unwrap()).collect();
        assert!(r.iter().all(|r| r.is_finite() && *r > 0.0), "{row}");
        // auto: the first preset that fits the budget, else the cheapest.
        let names = ["full", "fast", "head"];
        let k =
            r.iter().position(|&x| x <= 6.0).unwrap_or_else(|| (0..3).min_by(|&a, &b| r[a].total_cmp(&r[b])).unwrap());
        let (name, pick) = (names[k], r[k]);
        assert_eq!(cells[10], format!("`{name}` {pick:.2}x"), "{row}");
        for (i, x) in [r[0], r[1], r[2], pick].into_iter().enumerate() {
            within[i] += usize::from(x <= 6.0);
        }
    }
    let summary = format!(
        "At or under 6x the forward pass: `full` {} of 2, `fast` {} of 2, `head` {} of 2, `auto` {} of 2.",
        within[0], within[1], within[2], within[3]
    );
    assert!(text.contains(&summary), "{summary}\n{text}");
    // A fixture that does not load is a row saying so, and the report still ends.
    std::fs::write(arch.join("bn.onnx"), b"not onnx").unwrap();
    let mut out = Vec::new();
    assert_eq!(report(tmp.path(), &t, &crate::common::ort(), &mut out).unwrap(), 1);
    let text = String::from_utf8(out).unwrap();
    let refused = text.lines().find(|l| l.starts_with("| smooth_cnn | bn | refused: ")).expect(&text);
    // As many cells as the header: | arch | form | refused: why | | | | full | fast | head | auto |
    assert_eq!(refused.split('|').count(), text.lines().next().unwrap().split('|').count(), "{text}");
    assert!(text.contains("| smooth_cnn | default | "), "{text}");
}

/// The `head` preset (the budget's last resort: no backward through the network) keeps the
/// classifier head's norms exactly as `full` computes them, plus `fast`'s statistics: a Gemm
/// head (GoogLeNet), a two-Gemm head (MobileNetV3), and a fully convolutional classifier whose
/// last layer is a Conv before the pooling (SqueezeNet: that Conv's weight and bias).
#[test]
fn head_preset_keeps_the_heads_norms_as_full_computes_them() {
    use gradwatch::grad::{self, CompileOptions, Preset};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(DIR);
    let x: ndarray::ArrayD<f32> = ndarray_npy::read_npy(dir.join("input.npy")).unwrap();
    for (arch, heads) in [("googlenet", 2), ("mobilenet_v3", 4), ("squeezenet", 2)] {
        let model = gradwatch::onnx::load(&dir.join(arch).join("bn.onnx")).unwrap();
        let head = grad::compile(&model, &CompileOptions::preset(Preset::Head)).unwrap();
        let fast = grad::compile(&model, &CompileOptions::preset(Preset::Fast)).unwrap();
        let full = grad::compile(&model, &CompileOptions::default()).unwrap();
        assert_eq!(head.preset, "head");
        assert_eq!(head.act_stats, fast.act_stats, "{arch}: fast's statistics");
        let norms = &head.features[..head.features.len() - head.act_stats.len()];
        assert_eq!(norms.len(), heads, "{arch}: {norms:?}");
        // The last parameter tensors of the network, in graph order.
        assert_eq!(norms, &full.features[full.features.len() - heads..], "{arch}");
        let got = gradwatch::runtime::GradSession::new(&head, &crate::common::ort()).unwrap().run(x.view()).unwrap();
        let want = gradwatch::runtime::GradSession::new(&full, &crate::common::ort()).unwrap().run(x.view()).unwrap();
        for (j, name) in norms.iter().enumerate() {
            let i = full.features.iter().position(|f| f == name).unwrap();
            for k in 0..x.shape()[0] {
                let (g, w) = (got.features[[k, j]], want.features[[k, i]]);
                assert!((g - w).abs() <= 1e-5 * w.abs() + 1e-12, "{arch} {name} sample {k}: head {g:e}, full {w:e}");
            }
        }
    }
}
