//! The architecture zoo: small torchvision and transformer models (`scripts/make-zoo.py`), each
//! exported with BatchNormalization kept and as `torch.onnx.export` writes by default, compiled
//! and run through ONNX Runtime against float64 PyTorch per-sample gradients. The report with
//! timings is `gradwatch bench --zoo tests/fixtures/zoo` (`docs/results/compiler-zoo.md`).

use std::path::Path;

use gradwatch::cli::bench::{check_zoo_fixture, zoo_archs, ZOO_FORMS};

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
    for arch in &archs {
        for form in ZOO_FORMS {
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
            if !c.missing.is_empty() || !c.extra.is_empty() {
                failures.push(format!("{arch}/{form}: features missing {:?}, extra {:?}", c.missing, c.extra));
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
    assert!(failures.is_empty(), "{} of {checked} compiled fixtures fail:\n{}", failures.len(), failures.join("\n"));
}
