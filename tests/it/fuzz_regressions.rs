//! Inputs the fuzz targets (`fuzz/`, `make fuzz`, docs/guide/fuzzing.md) once crashed on, kept as
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

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz").join(name)
}

/// `npy`: a 42-byte format-3.0 file whose header length field says 1.98 GB. ndarray-npy's
/// header parser allocated that much before reading (an out-of-memory under the fuzzer's
/// 1 GiB malloc limit); the length is now checked against the file first.
#[test]
fn npy_header_length_past_the_end_is_an_error_before_any_allocation() {
    let path = fixture("npy_header_len_2gib.npy");
    for err in
        [gradwatch::data::load_npy_images(&path).unwrap_err(), gradwatch::data::load_npy_labels(&path).unwrap_err()]
    {
        let msg = err.to_string();
        assert!(msg.contains("header length 1986275195 is past the end of the file (42 bytes"), "{msg}");
    }
}

/// `onnx_compile`: the folded-BN fixture model mutated so that the `Mul` `bn2/mul` has one
/// input (libFuzzer could not shrink it below the 26 KB it started from). The backward of
/// Add/Sub/Mul/Div indexed `input[1]`; a binary operator without two inputs is now a compile
/// error.
#[test]
fn onnx_binary_operator_with_one_input_is_a_compile_error() {
    use gradwatch::grad::{compile, CompileOptions};
    let model = gradwatch::onnx::load(&fixture("onnx_mul_one_input.onnx")).unwrap();
    let err = compile(&model, &CompileOptions::default()).unwrap_err().to_string();
    assert!(err.contains("has 1 inputs; the operator takes 2"), "{err}");

    // The same on the smallest model: its last node (the Gemm) as a one-input Add or Div.
    for op in ["Add", "Div"] {
        let mut model = super::common::tiny_model(1);
        let graph = model.graph.as_mut().unwrap();
        let last = graph.node.len() - 1;
        let node = &mut graph.node[last];
        node.op_type = op.into();
        node.input.truncate(1);
        let err = compile(&model, &CompileOptions::default()).unwrap_err().to_string();
        assert!(err.contains("has 1 inputs; the operator takes 2"), "{op}: {err}");
    }
}

/// `frame_convert`: a 615-byte MJPEG frame whose SOF declares 26448x33032 pixels. The JPEG
/// decoder allocated the 2.6 GB RGB buffer before reading the scan (an out-of-memory under the
/// fuzzer's limit; a V4L2 camera or a pipe could send it). Frames over 512 MiB as RGB are now an
/// error before decoding; image files already had that limit from the `image` crate.
#[test]
fn mjpeg_frame_declaring_gigabytes_is_an_error_before_decoding() {
    use gradwatch::source::convert::{mjpeg_to_rgb, to_rgb, PixelFormat};
    let path = fixture("mjpeg_sof_26448x33032.jpg");
    let bytes = std::fs::read(&path).unwrap();
    let err = mjpeg_to_rgb(&bytes).unwrap_err().to_string();
    assert!(err.contains("declares 26448x33032 pixels, over 512 MiB"), "{err}");
    assert!(to_rgb(PixelFormat::Mjpeg, &bytes, 26448, 33032, 0).is_err());
    assert!(gradwatch::data::load_image(&path).is_err());
}
