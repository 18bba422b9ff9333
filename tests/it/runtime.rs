//! Execution-provider selection against the real (CPU-only) ONNX Runtime of this machine: the
//! CUDA/TensorRT configurations a Jetson uses must load here and fall back to the CPU with a
//! warning, or fail with a clear error when `require = true`.

use crate::common::{ort, Net};
use gradwatch::grad::{self, CompileOptions};
use gradwatch::runtime::{GradSession, Provider, RuntimeError, RuntimeOptions, TensorRtOptions};

fn compiled() -> grad::Compiled {
    let mut net = Net::new(7);
    let c = net.conv("x", 2, 3, 3, true, vec![]);
    let r = net.op("Relu", &[&c], vec![]);
    let out = net.head(&r, 3 * 16, 4);
    grad::compile(&net.model(&[2, 6, 6], &out), &CompileOptions::default()).unwrap()
}

fn run(opts: &RuntimeOptions) -> Result<(Provider, Vec<f32>), RuntimeError> {
    let c = compiled();
    let mut s = GradSession::new(&c, opts)?;
    let x = ndarray::ArrayD::from_elem(ndarray::IxDyn(&[2, 2, 6, 6]), 0.5f32);
    let out = s.run(x.view())?;
    Ok((s.provider(), out.features.iter().copied().collect()))
}

#[test]
fn jetson_provider_lists_fall_back_to_the_cpu() {
    let base = ort();
    let (_, want) = run(&base).unwrap();
    let cache = tempfile::tempdir().unwrap();
    for (providers, fp16) in [
        (vec![Provider::Cuda, Provider::Cpu], false),
        (vec![Provider::Tensorrt, Provider::Cuda, Provider::Cpu], false),
        (vec![Provider::Tensorrt, Provider::Cpu], true),
    ] {
        let opts = RuntimeOptions {
            providers: providers.clone(),
            tensorrt: TensorRtOptions { engine_cache_dir: Some(cache.path().to_path_buf()), fp16, workspace_mb: 256 },
            ..base.clone()
        };
        let (provider, got) = run(&opts).unwrap_or_else(|e| panic!("{providers:?}: {e}"));
        // This ONNX Runtime has no GPU providers: the CPU runs, with the same numbers.
        assert_eq!(provider, Provider::Cpu, "{providers:?}");
        assert_eq!(got, want, "{providers:?}");
    }
}

#[test]
fn a_required_missing_provider_is_a_clear_error() {
    let opts = RuntimeOptions { providers: vec![Provider::Tensorrt, Provider::Cpu], require: true, ..ort() };
    let err = run(&opts).expect_err("tensorrt is not in the CPU build");
    let msg = err.to_string();
    assert!(matches!(err, RuntimeError::ProviderMissing(_)), "{msg}");
    assert!(
        msg.contains("'tensorrt'") && msg.contains("require = false") && msg.contains("docs/guide/jetson.md"),
        "{msg}"
    );
}

#[test]
fn only_unavailable_providers_still_runs_on_the_cpu() {
    // ONNX Runtime always has its CPU provider; a list with none available is not an outage.
    let opts = RuntimeOptions { providers: vec![Provider::Cuda], ..ort() };
    let (provider, feats) = run(&opts).unwrap();
    assert_eq!(provider, Provider::Cpu);
    assert!(feats.iter().all(|v| v.is_finite() && *v >= 0.0));
}
