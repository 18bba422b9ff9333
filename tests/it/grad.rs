//! The gradient compiler against finite differences through ONNX Runtime, one small model per
//! supported operator, plus the structural guarantees of the output graph.
#![allow(clippy::needless_range_loop)] // index loops mirror the maths

use crate::common::{finite_differences, input, ort, Net};
use gradwatch::grad::{self, CompileOptions, ConvNorm, GradError, Loss};
use gradwatch::onnx::{self, attr};
use gradwatch::runtime::GradSession;
use ndarray::ArrayD;

const CLASSES: usize = 3;
const BATCH: usize = 3;

struct Case {
    net: Net,
    input: Vec<usize>,
    out: String,
}

/// Compiles, runs, and compares every feature (and the input gradient) with finite differences.
fn check_with(case: &Case, opts: &CompileOptions, label: &[f32]) {
    let model = case.net.model(&case.input, &case.out);
    let mut rng = crate::common::Rng::new(99);
    let x: ArrayD<f32> = input(&mut rng, BATCH, &case.input);
    let opts = CompileOptions { input_grad: true, ..opts.clone() };
    let compiled = grad::compile(&model, &opts).unwrap_or_else(|e| panic!("compile: {e}"));
    assert_eq!(compiled.features, case.net.params, "feature names in graph order");
    let mut s = GradSession::new(&compiled, &ort()).unwrap();
    let got = s.run(x.view()).unwrap();
    let softmax = opts.loss == Loss::BceSoftmax;
    let (fd, fd_in) = finite_differences(&case.net, &model, &x, &case.out, label, softmax, 2e-3);
    for (j, p) in case.net.params.iter().enumerate() {
        for k in 0..BATCH {
            let g = got.features[[k, j]] as f64;
            let e = fd[j][k];
            let tol = 2e-2 * e.abs() + 1e-7;
            assert!((g - e).abs() <= tol, "param {p} sample {k}: compiled {g:e}, finite differences {e:e}");
        }
    }
    let ig = got.input_grad.expect("input_grad");
    let per = ig.len() / BATCH;
    let flat = ig.as_slice().unwrap();
    for k in 0..BATCH {
        let scale = fd_in[k].iter().fold(0.0f64, |a, v| a.max(v.abs()));
        for i in 0..per {
            let g = flat[k * per + i] as f64;
            let e = fd_in[k][i];
            assert!((g - e).abs() <= 2e-2 * scale + 1e-6, "input grad sample {k} elem {i}: {g:e} vs {e:e}");
        }
    }
}

fn check(case: Case) {
    check_with(&case, &CompileOptions::default(), &[1.0; CLASSES]);
}

fn ints(v: &[i64]) -> Vec<i64> {
    v.to_vec()
}

/// x [2,6,6] -> first conv (so every later op's input gradient is exercised) -> `body` -> head.
fn chain(seed: u64, body: impl FnOnce(&mut Net, &str) -> (String, usize)) -> Case {
    let mut net = Net::new(seed);
    let c1 = net.conv("x", 2, 3, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
    let (y, features) = body(&mut net, &c1);
    let out = net.head(&y, features, CLASSES);
    Case { net, input: vec![2, 6, 6], out }
}

#[test]
fn conv_padded_with_bias() {
    check(chain(1, |n, x| (n.op("Relu", &[x], vec![]), 3 * 36)));
}

/// A strided, dilated, asymmetrically padded 3x3 conv (3 -> 4 channels) on the chain's 6x6 map.
fn dilated_conv(n: &mut Net, x: &str) -> (String, usize) {
    let y = n.conv(
        x,
        3,
        4,
        3,
        false,
        vec![
            attr::ints("strides", &ints(&[2, 2])),
            attr::ints("dilations", &[2, 1]),
            attr::ints("pads", &[1, 0, 2, 1]),
        ],
    );
    // H: (6+1+2-5)/2+1 = 3, W: (6+0+1-3)/2+1 = 3
    (y, 4 * 3 * 3)
}

#[test]
fn conv_strided_dilated_asymmetric_pads() {
    check(chain(2, dilated_conv));
}

#[test]
fn conv_depthwise_and_grouped() {
    check(chain(3, |n, x| {
        let d = n.conv(x, 3, 3, 3, true, vec![attr::int("group", 3), attr::ints("pads", &[1, 1, 1, 1])]);
        let e = n.conv(&d, 3, 6, 1, false, vec![]);
        let g = n.conv(&e, 6, 4, 3, true, vec![attr::int("group", 2), attr::ints("strides", &[2, 2])]);
        (g, 4 * 2 * 2)
    }));
}

#[test]
fn conv_auto_pad_same_upper_and_lower() {
    check(chain(4, |n, x| {
        let a = n.conv(x, 3, 3, 3, false, vec![attr::string("auto_pad", "SAME_UPPER"), attr::ints("strides", &[2, 2])]);
        let b = n.conv(&a, 3, 2, 2, true, vec![attr::string("auto_pad", "SAME_LOWER")]);
        (b, 2 * 3 * 3)
    }));
}

#[test]
fn conv_norm_formulations_agree() {
    for norm in [ConvNorm::Im2col, ConvNorm::Ghost, ConvNorm::PixelGram] {
        let case = chain(5, |n, x| {
            let y = n.conv(x, 3, 4, 3, true, vec![attr::ints("strides", &[2, 2]), attr::ints("pads", &[1, 1, 1, 1])]);
            (y, 4 * 3 * 3)
        });
        check_with(&case, &CompileOptions { conv_norm: norm, ..Default::default() }, &[1.0; CLASSES]);
        // Dilated, strided, asymmetric pads. (The stride-2 case before it has windows that end
        // one row short of the padded map, so the pixel-Gram path crops.)
        check_with(&chain(2, dilated_conv), &CompileOptions { conv_norm: norm, ..Default::default() }, &[1.0; CLASSES]);
    }
}

fn batchnorm(n: &mut Net, x: &str, c: usize) -> String {
    let scale = n.param(&[c], 1.0);
    let shift = n.param(&[c], 0.5);
    let mean = n.constant(&[c], &vec![0.1; c]);
    let var = n.constant(&[c], &vec![0.7; c]);
    n.op("BatchNormalization", &[x, &scale, &shift, &mean, &var], vec![attr::float("epsilon", 1e-3)])
}

#[test]
fn batchnorm_relu_global_average_pool() {
    check(chain(6, |n, x| {
        let b = batchnorm(n, x, 3);
        let r = n.op("Relu", &[&b], vec![]);
        (n.op("GlobalAveragePool", &[&r], vec![]), 3)
    }));
}

/// A ResNet basic block (Conv-BN-Relu, Conv-BN, residual Add, Relu) and a strided grouped
/// Conv-BN-Relu after it: every BN gain folds into the Conv before it and every `x_hat` is read
/// back from a Relu output (the chain that lets ONNX Runtime fuse Conv+BN+Relu), under each
/// weight-norm plan (im2col, ghost, pixel-Gram) and the ConvTranspose input gradient.
#[test]
fn residual_block_batchnorm_folds_into_convs() {
    for norm in [ConvNorm::Auto, ConvNorm::Im2col, ConvNorm::Ghost, ConvNorm::PixelGram] {
        let case = chain(21, |n, x| {
            let pad = || vec![attr::ints("pads", &[1, 1, 1, 1])];
            let a = n.conv(x, 3, 3, 3, false, pad());
            let ab = batchnorm(n, &a, 3);
            let ar = n.op("Relu", &[&ab], vec![]);
            let b = n.conv(&ar, 3, 3, 3, true, pad());
            let bb = batchnorm(n, &b, 3);
            let sum = n.op("Add", &[x, &bb], vec![]);
            let r = n.op("Relu", &[&sum], vec![]);
            let s = n.conv(&r, 3, 6, 3, false, vec![attr::int("group", 3), attr::ints("strides", &[2, 2])]);
            let sb = batchnorm(n, &s, 6);
            (n.op("Relu", &[&sb], vec![]), 6 * 2 * 2)
        });
        check_with(&case, &CompileOptions { conv_norm: norm, ..Default::default() }, &[1.0; CLASSES]);
    }
}

/// Where the BN output cannot be read back (a scale near zero; the Conv output also read
/// elsewhere; BN on a non-Conv input; BN feeding something other than Relu), the compiler
/// falls back to the input-side formulas.
#[test]
fn batchnorm_fallbacks() {
    check(chain(22, |n, x| {
        let a = n.conv(x, 3, 3, 3, false, vec![attr::ints("pads", &[1, 1, 1, 1])]);
        let ab = batchnorm(n, &a, 3);
        let scale = n.nodes.last().map(|nd| nd.input[1].clone()).unwrap_or_default();
        if let Some(t) = n.inits.iter_mut().find(|t| t.name == scale) {
            *t = onnx::make_tensor_f32(&scale, &[3], &[0.8, 1e-5, -0.6]);
        }
        let ar = n.op("Relu", &[&ab], vec![]);
        let tap = n.op("Add", &[&a, &ar], vec![]);
        let c = batchnorm(n, &tap, 3);
        let cs = n.op("Sigmoid", &[&c], vec![]);
        (cs, 3 * 36)
    }));
}

#[test]
fn activations() {
    check(chain(7, |n, x| {
        let a = n.op("LeakyRelu", &[x], vec![attr::float("alpha", 0.1)]);
        let lo = n.constant(&[], &[-0.5]);
        let hi = n.constant(&[], &[0.6]);
        let b = n.op("Clip", &[&a, &lo, &hi], vec![]);
        let c = n.op("Sigmoid", &[&b], vec![]);
        let w = n.conv(&c, 3, 3, 1, true, vec![]);
        let d = n.op("HardSigmoid", &[&w], vec![attr::float("alpha", 0.3), attr::float("beta", 0.4)]);
        let w2 = n.conv(&d, 3, 3, 1, true, vec![]);
        let s = n.constant(&[], &[4.0]);
        let w2s = n.op("Mul", &[&w2, &s], vec![]);
        (n.op("HardSwish", &[&w2s], vec![]), 3 * 36)
    }));
}

#[test]
fn relu6_as_clip() {
    check(chain(8, |n, x| {
        let s = n.constant(&[], &[5.0]);
        let xs = n.op("Mul", &[x, &s], vec![]);
        let lo = n.constant(&[], &[0.0]);
        let hi = n.constant(&[], &[6.0]);
        (n.op("Clip", &[&xs, &lo, &hi], vec![]), 3 * 36)
    }));
}

#[test]
fn elementwise_residual_and_broadcast() {
    check(chain(9, |n, x| {
        let a = n.conv(x, 3, 3, 3, false, vec![attr::ints("pads", &[1, 1, 1, 1])]);
        let sum = n.op("Add", &[x, &a], vec![]);
        let c = n.constant(&[3, 1, 1], &[0.5, -1.5, 2.0]);
        let d = n.op("Sub", &[&sum, &c], vec![]);
        let e = n.op("Mul", &[&d, &a], vec![]);
        let f = n.constant(&[1, 6], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let g = n.op("Div", &[&e, &f], vec![]);
        let h = n.op("Sub", &[&c, &g], vec![]);
        (h, 3 * 36)
    }));
}

#[test]
fn max_pool_ceil_mode_padded() {
    check(chain(10, |n, x| {
        let p = n.op(
            "MaxPool",
            &[x],
            vec![
                attr::ints("kernel_shape", &[3, 3]),
                attr::ints("strides", &[2, 2]),
                attr::ints("pads", &[1, 1, 0, 0]),
                attr::int("ceil_mode", 1),
            ],
        );
        // (6+1-3)/2 ceil +1 = 3
        (p, 3 * 3 * 3)
    }));
}

#[test]
fn max_pool_dilated() {
    check(chain(11, |n, x| {
        let p = n.op("MaxPool", &[x], vec![attr::ints("kernel_shape", &[2, 2]), attr::ints("dilations", &[2, 2])]);
        (p, 3 * 4 * 4)
    }));
}

#[test]
fn average_pools() {
    check(chain(12, |n, x| {
        let a = n.op(
            "AveragePool",
            &[x],
            vec![
                attr::ints("kernel_shape", &[3, 3]),
                attr::ints("strides", &[2, 2]),
                attr::ints("pads", &[1, 1, 1, 1]),
            ],
        );
        let b = n.op(
            "AveragePool",
            &[x],
            vec![
                attr::ints("kernel_shape", &[3, 3]),
                attr::ints("strides", &[2, 2]),
                attr::ints("pads", &[1, 1, 1, 1]),
                attr::int("count_include_pad", 1),
            ],
        );
        let c = n.op("Concat", &[&a, &b], vec![attr::int("axis", 1)]);
        (c, 6 * 3 * 3)
    }));
}

#[test]
fn reduce_mean_squeeze_unsqueeze_reshape_transpose() {
    check(chain(13, |n, x| {
        let t = n.op("Transpose", &[x], vec![attr::ints("perm", &[0, 2, 3, 1])]); // [6,6,3]
        let r = n.op("ReduceMean", &[&t], vec![attr::ints("axes", &[1]), attr::int("keepdims", 0)]); // [6,3]
        let ua = n.ints(&[1]);
        let u = n.op("Unsqueeze", &[&r, &ua], vec![]); // [1,6,3]
        let sa = n.ints(&[1]);
        let s = n.op("Squeeze", &[&u, &sa], vec![]); // [6,3]
        let shape = n.ints(&[0, 3, 6]);
        let rs = n.op("Reshape", &[&s, &shape], vec![]); // [3,6]
        (rs, 18)
    }));
}

#[test]
fn nhwc_input_concat_pad_identity_dropout() {
    let mut net = Net::new(14);
    let t = net.op("Transpose", &["x"], vec![attr::ints("perm", &[0, 3, 1, 2])]);
    let a = net.conv(&t, 2, 3, 3, true, vec![]);
    let b = net.conv(&t, 2, 2, 3, false, vec![]);
    let c = net.op("Concat", &[&a, &b], vec![attr::int("axis", -3)]);
    let pads = net.ints(&[0, 0, 1, 0, 0, 0, 0, 2]);
    let zero = net.constant(&[], &[0.0]);
    let p = net.op("Pad", &[&c, &pads, &zero], vec![]);
    let i = net.op("Identity", &[&p], vec![]);
    let d = net.op("Dropout", &[&i], vec![]);
    let out = net.head(&d, 5 * 5 * 6, CLASSES);
    check(Case { net, input: vec![6, 6, 2], out });
}

#[test]
fn gemm_variants_and_matmul_bias() {
    let mut net = Net::new(15);
    let f = net.op("Flatten", &["x"], vec![]);
    let w1 = net.param(&[12, 5], 0.4);
    let b1 = net.param(&[5], 0.2);
    let g1 = net.op("Gemm", &[&f, &w1, &b1], vec![attr::float("alpha", 0.7), attr::float("beta", 1.3)]);
    let r = net.op("Relu", &[&g1], vec![]);
    let w2 = net.param(&[5, 4], 0.4);
    let m = net.op("MatMul", &[&r, &w2], vec![]);
    let b2 = net.param(&[4], 0.2);
    let a = net.op("Add", &[&m, &b2], vec![]);
    let w3 = net.param(&[CLASSES, 4], 0.5);
    let b3 = net.param(&[1], 0.2);
    let out = net.op("Gemm", &[&a, &w3, &b3], vec![attr::int("transB", 1)]);
    check(Case { net, input: vec![3, 2, 2], out });
}

#[test]
fn matmul_on_sequences() {
    let mut net = Net::new(16);
    let w1 = net.param(&[3, 4], 0.5);
    let m = net.op("MatMul", &["x", &w1], vec![]); // [5,4]
    let s = net.op("Sigmoid", &[&m], vec![]);
    let out = net.head(&s, 20, CLASSES);
    check(Case { net, input: vec![5, 3], out });
}

#[test]
fn trailing_softmax_is_skipped_and_bce_softmax_loss() {
    let mut case = chain(17, |n, x| (n.op("Relu", &[x], vec![]), 3 * 36));
    let logits = case.out.clone();
    case.out = case.net.op("Softmax", &[&logits], vec![attr::int("axis", 1)]);
    // The compiled graph differentiates the Softmax's input; finite differences use the logits.
    let mut fd_net = clone_net(&case.net);
    fd_net.nodes.pop();
    let fd_case = Case { net: fd_net, input: case.input.clone(), out: logits.clone() };
    let compiled = grad::compile(&case.net.model(&case.input, &case.out), &CompileOptions::default()).unwrap();
    let plain = grad::compile(&fd_case.net.model(&fd_case.input, &fd_case.out), &CompileOptions::default()).unwrap();
    assert_eq!(compiled.features, plain.features);
    let label = [1.0, 0.0, 1.0];
    check_with(
        &fd_case,
        &CompileOptions { loss: Loss::BceSoftmax, label: Some(label.to_vec()), ..Default::default() },
        &label,
    );
}

fn clone_net(n: &Net) -> Net {
    let mut m = Net::new(0);
    m.nodes = n.nodes.clone();
    m.inits = n.inits.clone();
    m.params = n.params.clone();
    m
}

#[test]
fn custom_confounding_label() {
    let case = chain(1, |n, x| (n.op("Relu", &[x], vec![]), 3 * 36));
    let label = [0.0, 1.0, 1.0];
    check_with(&case, &CompileOptions { label: Some(label.to_vec()), ..Default::default() }, &label);
}

#[test]
fn label_with_one_positive_is_refused() {
    let case = chain(18, |n, x| (n.op("Relu", &[x], vec![]), 3 * 36));
    let e = grad::compile(
        &case.net.model(&case.input, &case.out),
        &CompileOptions { label: Some(vec![0.0, 1.0, 0.0]), ..Default::default() },
    )
    .unwrap_err();
    assert!(e.to_string().contains("exactly one"), "{e}");
}

#[test]
fn max_pool_ties_go_to_the_first_maximum() {
    // x -> MaxPool 2x2 -> Flatten -> Gemm; every window is all-equal, so PyTorch sends each
    // window's gradient to its top-left element.
    let mut net = Net::new(19);
    let p = net.op("MaxPool", &["x"], vec![attr::ints("kernel_shape", &[2, 2]), attr::ints("strides", &[2, 2])]);
    let out = net.head(&p, 4, CLASSES);
    let model = net.model(&[1, 4, 4], &out);
    let compiled = grad::compile(&model, &CompileOptions { input_grad: true, ..Default::default() }).unwrap();
    let mut s = GradSession::new(&compiled, &ort()).unwrap();
    let x = ArrayD::from_elem(ndarray::IxDyn(&[1, 1, 4, 4]), 0.5f32);
    let g = s.run(x.view()).unwrap().input_grad.unwrap();
    for y in 0..4 {
        for xx in 0..4 {
            let v = g[[0, 0, y, xx]];
            if y % 2 == 0 && xx % 2 == 0 {
                assert!(v != 0.0, "top-left of window ({y},{xx}) must get the gradient");
            } else {
                assert_eq!(v, 0.0, "({y},{xx}) is not the first maximum");
            }
        }
    }
}

#[test]
fn samples_are_independent() {
    let case = chain(20, |n, x| {
        let b = batchnorm(n, x, 3);
        (n.op("Relu", &[&b], vec![]), 3 * 36)
    });
    let compiled = grad::compile(&case.net.model(&case.input, &case.out), &CompileOptions::default()).unwrap();
    let mut s = GradSession::new(&compiled, &ort()).unwrap();
    let mut rng = crate::common::Rng::new(5);
    let x = input(&mut rng, 4, &case.input);
    let all = s.run(x.view()).unwrap().features;
    for k in 0..4 {
        let one = x.index_axis(ndarray::Axis(0), k).insert_axis(ndarray::Axis(0)).to_owned();
        let f = s.run(one.view()).unwrap().features;
        for j in 0..all.shape()[1] {
            let (a, b) = (all[[k, j]], f[[0, j]]);
            assert!((a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 1e-12, "sample {k} feature {j}: {a} vs {b}");
        }
    }
}

#[test]
fn unsupported_operator_is_named() {
    let mut net = Net::new(21);
    let c = net.conv("x", 2, 3, 3, true, vec![]);
    let e = net.op("Erf", &[&c], vec![]);
    let out = net.head(&e, 3 * 16, CLASSES);
    let err = grad::compile(&net.model(&[2, 6, 6], &out), &CompileOptions::default()).unwrap_err();
    assert!(matches!(err, GradError::Unsupported { .. }));
    let msg = err.to_string();
    assert!(msg.contains("'Erf'") && msg.contains("n_erf") && msg.contains("Conv, BatchNormalization"), "{msg}");
}

#[test]
fn compiling_a_compiled_graph_is_refused() {
    let case = chain(23, |n, x| (n.op("Relu", &[x], vec![]), 3 * 36));
    let compiled = grad::compile(&case.net.model(&case.input, &case.out), &CompileOptions::default()).unwrap();
    let err = grad::compile(&compiled.model, &CompileOptions::default()).unwrap_err();
    assert!(err.to_string().contains("already a gradwatch-compiled graph"), "{err}");
}

#[test]
fn output_uses_standard_ops_only() {
    // What TensorRT's ONNX parser accepts: ai.onnx ops, no MaxPool Indices, no ScatterElements,
    // every Conv/ConvTranspose weight an initializer.
    let case = chain(22, |n, x| {
        let b = batchnorm(n, x, 3);
        let r = n.op("Relu", &[&b], vec![]);
        let p = n.op("MaxPool", &[&r], vec![attr::ints("kernel_shape", &[2, 2]), attr::ints("strides", &[2, 2])]);
        let c = n.conv(&p, 3, 4, 3, true, vec![attr::ints("strides", &[2, 2]), attr::ints("pads", &[1, 1, 1, 1])]);
        (n.op("GlobalAveragePool", &[&c], vec![]), 4)
    });
    let compiled = grad::compile(
        &case.net.model(&case.input, &case.out),
        &CompileOptions { input_grad: true, penultimate: true, ..Default::default() },
    )
    .unwrap();
    let g = compiled.model.graph.as_ref().unwrap();
    let inits: std::collections::HashSet<&str> = g.initializer.iter().map(|t| t.name.as_str()).collect();
    const ALLOWED: &[&str] = &[
        "Conv",
        "ConvTranspose",
        "BatchNormalization",
        "Relu",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Neg",
        "Max",
        "MaxPool",
        "GlobalAveragePool",
        "Flatten",
        "Gemm",
        "MatMul",
        "Reshape",
        "Transpose",
        "ReduceSum",
        "ReduceSumSquare",
        "Sigmoid",
        "Softmax",
        "Greater",
        "Less",
        "And",
        "Where",
        "Equal",
        "Cast",
        "ArgMax",
        "Concat",
        "Split",
        "Slice",
        "Pad",
        "Identity",
        "Sum",
    ];
    for n in &g.node {
        assert!(n.domain.is_empty(), "{} has domain {}", n.name, n.domain);
        assert!(ALLOWED.contains(&n.op_type.as_str()), "unexpected op {}", n.op_type);
        assert!(n.op_type != "ScatterElements");
        if n.op_type == "MaxPool" {
            assert_eq!(n.output.len(), 1, "MaxPool must not output Indices");
        }
        if n.op_type == "Conv" || n.op_type == "ConvTranspose" {
            assert!(inits.contains(n.input[1].as_str()), "{} weight {} is not an initializer", n.name, n.input[1]);
        }
    }
    let names = grad::feature_names(&compiled.model).unwrap();
    assert_eq!(names, compiled.features);
    let outs: Vec<&str> = g.output.iter().map(|o| o.name.as_str()).collect();
    assert_eq!(outs, ["logits", "grad_features", "penultimate", "input_grad"]);
}

#[test]
fn malformed_model_is_an_error() {
    assert!(onnx::decode(b"\x08\x07\x12\x03abc garbage \xff\xff").is_err());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("trunc.onnx");
    let case = chain(23, |n, x| (n.op("Relu", &[x], vec![]), 3 * 36));
    let bytes = onnx::encode(&case.net.model(&case.input, &case.out));
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    assert!(onnx::load(&p).is_err());
}
