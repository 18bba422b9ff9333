//! Inputs the fuzz targets (`fuzz/`, `make fuzz`, docs/fuzzing.md) once crashed on, kept as
//! tests (the inputs are in `tests/fixtures/fuzz/`), and the generator of the seed model.

use std::path::Path;

/// Writes the smallest classifier the compiler accepts (`common::tiny_model`) as the
/// `onnx_compile` target's seed: `cargo test --release --test it -- --ignored write_onnx_fuzz_seed`.
#[test]
#[ignore = "writes fuzz/corpus/onnx_compile/tiny.onnx; run by hand to refresh the seed"]
fn write_onnx_fuzz_seed() {
    let model = super::common::tiny_model(1);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/onnx_compile");
    std::fs::create_dir_all(&dir).unwrap();
    gradwatch::onnx::save(&model, &dir.join("tiny.onnx")).unwrap();
}
