//! Smoke test for an ONNX Runtime shared library: load it, print its build info, run a tiny
//! MatMul + Conv model and check the results against a hand computation.
//!
//! Used by `scripts/aarch64-check.sh` to prove that an aarch64 build of gradwatch can load the
//! aarch64 `libonnxruntime.so` (under qemu-user on an x86-64 host, or on a Jetson), before the
//! full CLI comparison runs. It builds its model in memory so it needs no files but the library.
//!
//! ```text
//! cargo run --example ort_smoke -- [path/to/libonnxruntime.so]   # default: $ORT_DYLIB_PATH
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context};
use ort::session::Session;
use ort::value::Tensor;

/// MatMul: input rows, input columns (= weight rows), weight columns.
const N: usize = 2;
const K: usize = 4;
const M: usize = 3;
/// Conv: input channels, image side, output channels, kernel side (no padding, stride 1).
const C: usize = 2;
const S: usize = 8;
const O: usize = 4;
const R: usize = 3;
/// Conv output side.
const T: usize = S - R + 1;

fn main() -> anyhow::Result<()> {
    let path: PathBuf = match std::env::args_os().nth(1) {
        Some(p) => p.into(),
        None => std::env::var_os("ORT_DYLIB_PATH")
            .context("give the path of libonnxruntime.so as the first argument or in ORT_DYLIB_PATH")?
            .into(),
    };
    let env = ort::init_from(&path)
        .with_context(|| format!("loading ONNX Runtime from {}", path.display()))?
        .with_name("ort_smoke")
        .build()
        .context("creating the ONNX Runtime environment")?;
    println!("library: {}", path.display());
    println!("{}", ort::info());

    let x: Vec<f32> = (0..N * K).map(|i| i as f32 * 0.5 - 1.0).collect();
    let w: Vec<f32> = (0..K * M).map(|i| (i as f32 - 5.0) * 0.25).collect();
    // Small multiples of 1/8 and 1/16: every product and partial sum is exact in f32.
    let img: Vec<f32> = (0..C * S * S).map(|i| ((i * 7) % 17) as f32 / 8.0 - 1.0).collect();
    let kernel: Vec<f32> = (0..O * C * R * R).map(|i| ((i * 5) % 11) as f32 / 16.0 - 0.25).collect();
    let model = smoke_model(&w, &kernel);
    let mut session = Session::builder(&env)?
        .commit_from_memory(&model)
        .context("creating a session for the in-memory MatMul + Conv model")?;
    let input = Tensor::from_array(([N, K], x.clone()))?;
    let image = Tensor::from_array(([1, C, S, S], img.clone()))?;
    let outputs = session.run(ort::inputs!["x" => input, "img" => image])?;
    let (shape, y) = outputs["y"].try_extract_tensor::<f32>()?;
    println!("y shape {shape:?} = {y:?}");
    let (zshape, z) = outputs["z"].try_extract_tensor::<f32>()?;
    println!("z shape {zshape:?}, z[0..4] = {:?}", &z[..4.min(z.len())]);

    // The same product by hand, in f64: the inputs are small multiples of 1/4, so f32 is exact.
    let mut max_err = 0.0f64;
    for r in 0..N {
        for c in 0..M {
            let want: f64 = (0..K).map(|k| f64::from(x[r * K + k]) * f64::from(w[k * M + c])).sum();
            max_err = max_err.max((f64::from(y[r * M + c]) - want).abs());
        }
    }
    if y.len() != N * M || max_err > 1e-5 {
        bail!("MatMul result is wrong: {} values, max error {max_err}", y.len());
    }
    let mut conv_err = 0.0f64;
    for o in 0..O {
        for i in 0..T {
            for j in 0..T {
                let mut want = 0.0f64;
                for c in 0..C {
                    for di in 0..R {
                        for dj in 0..R {
                            want += f64::from(img[(c * S + i + di) * S + j + dj])
                                * f64::from(kernel[((o * C + c) * R + di) * R + dj]);
                        }
                    }
                }
                if let Some(&got) = z.get((o * T + i) * T + j) {
                    conv_err = conv_err.max((f64::from(got) - want).abs());
                }
            }
        }
    }
    if z.len() != O * T * T || conv_err > 1e-5 {
        bail!("Conv result is wrong: {} values, max error {conv_err}", z.len());
    }
    max_err = max_err.max(conv_err);
    println!("ort_smoke: OK (max error {max_err:e})");
    Ok(())
}

/// A minimal ONNX model, protobuf-encoded by hand, opset 13:
/// `y[N,M] = MatMul(x[N,K], W)` and `z[1,O,T,T] = Conv(img[1,C,S,S], Kc)` with `W` and `Kc`
/// initializers. The Conv goes through ONNX Runtime's CPU-specific (MLAS) kernels, the part
/// that differs between x86-64 and aarch64. Encoding it here keeps the example free of an ONNX
/// dependency.
fn smoke_model(w: &[f32], kernel: &[f32]) -> Vec<u8> {
    let mut graph = Vec::new();
    bytes_field(&mut graph, 1, &node(&["x", "W"], "y", "MatMul"));
    bytes_field(&mut graph, 1, &node(&["img", "Kc"], "z", "Conv"));
    bytes_field(&mut graph, 2, b"ort_smoke");
    bytes_field(&mut graph, 5, &tensor("W", &[K, M], w));
    bytes_field(&mut graph, 5, &tensor("Kc", &[O, C, R, R], kernel));
    bytes_field(&mut graph, 11, &value_info("x", &[N, K]));
    bytes_field(&mut graph, 11, &value_info("img", &[1, C, S, S]));
    bytes_field(&mut graph, 12, &value_info("y", &[N, M]));
    bytes_field(&mut graph, 12, &value_info("z", &[1, O, T, T]));

    let mut opset = Vec::new();
    bytes_field(&mut opset, 1, b"");
    varint_field(&mut opset, 2, 13);

    let mut model = Vec::new();
    varint_field(&mut model, 1, 7); // ir_version
    bytes_field(&mut model, 2, b"gradwatch-ort-smoke");
    bytes_field(&mut model, 7, &graph);
    bytes_field(&mut model, 8, &opset);
    model
}

/// `NodeProto` with one output, named after it.
fn node(inputs: &[&str], output: &str, op: &str) -> Vec<u8> {
    let mut n = Vec::new();
    for i in inputs {
        bytes_field(&mut n, 1, i.as_bytes());
    }
    bytes_field(&mut n, 2, output.as_bytes());
    bytes_field(&mut n, 3, output.as_bytes());
    bytes_field(&mut n, 4, op.as_bytes());
    n
}

/// `TensorProto` (an initializer) holding `values` as raw little-endian f32.
fn tensor(name: &str, dims: &[usize], values: &[f32]) -> Vec<u8> {
    let mut t = Vec::new();
    for &d in dims {
        varint_field(&mut t, 1, d as u64); // dims
    }
    varint_field(&mut t, 2, 1); // data_type = FLOAT
    bytes_field(&mut t, 8, name.as_bytes());
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    bytes_field(&mut t, 9, &raw); // raw_data
    t
}

/// `ValueInfoProto` for a float tensor of a fixed shape.
fn value_info(name: &str, dims: &[usize]) -> Vec<u8> {
    let mut shape = Vec::new();
    for &d in dims {
        let mut dim = Vec::new();
        varint_field(&mut dim, 1, d as u64); // dim_value
        bytes_field(&mut shape, 1, &dim);
    }
    let mut tensor = Vec::new();
    varint_field(&mut tensor, 1, 1); // elem_type = FLOAT
    bytes_field(&mut tensor, 2, &shape);
    let mut ty = Vec::new();
    bytes_field(&mut ty, 1, &tensor);
    let mut vi = Vec::new();
    bytes_field(&mut vi, 1, name.as_bytes());
    bytes_field(&mut vi, 2, &ty);
    vi
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint_field(out: &mut Vec<u8>, field: u64, v: u64) {
    varint(out, field << 3);
    varint(out, v);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, (field << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}
