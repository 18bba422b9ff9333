//! The gradient compiler against finite differences through ONNX Runtime, one small model per
//! supported operator, plus the structural guarantees of the output graph.
//!
//! Every finite-difference case is a `case_*` function listed in [`FD_CASES`];
//! `fd_cases_cover_every_rule` fails when an operator of the compiler's rule table (or a
//! parameter kind) appears in none of them.
#![allow(clippy::needless_range_loop)] // index loops mirror the maths

use std::collections::HashSet;

use crate::common::{finite_differences, input, ort, Net};
use gradwatch::grad::{self, CompileOptions, ConvNorm, GradError, Loss, ParamKind, ParamSelection};
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

fn case_conv_padded_with_bias() -> Case {
    chain(1, |n, x| (n.op("Relu", &[x], vec![]), 3 * 36))
}

#[test]
fn conv_padded_with_bias() {
    check(case_conv_padded_with_bias());
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

fn case_conv_strided_dilated_asymmetric_pads() -> Case {
    chain(2, dilated_conv)
}

#[test]
fn conv_strided_dilated_asymmetric_pads() {
    check(case_conv_strided_dilated_asymmetric_pads());
}

fn case_conv_depthwise_and_grouped() -> Case {
    chain(3, |n, x| {
        let d = n.conv(x, 3, 3, 3, true, vec![attr::int("group", 3), attr::ints("pads", &[1, 1, 1, 1])]);
        let e = n.conv(&d, 3, 6, 1, false, vec![]);
        let g = n.conv(&e, 6, 4, 3, true, vec![attr::int("group", 2), attr::ints("strides", &[2, 2])]);
        (g, 4 * 2 * 2)
    })
}

#[test]
fn conv_depthwise_and_grouped() {
    check(case_conv_depthwise_and_grouped());
}

/// Depthwise Convs under `auto` (the depthwise plan): 3x3 stride 1 padded with a bias and a
/// BatchNormalization gain folded in; 3x3 stride 2, dilated along H, asymmetric pads; 5x5
/// padded on a 3x3 map (kernel wider than the map, as in MNASNet's last stages).
fn case_conv_depthwise_plan() -> Case {
    chain(31, |n, x| {
        let a = n.conv(x, 3, 3, 3, true, vec![attr::int("group", 3), attr::ints("pads", &[1, 1, 1, 1])]);
        let ab = batchnorm(n, &a, 3);
        let ar = n.op("Relu", &[&ab], vec![]);
        let b = n.conv(
            &ar,
            3,
            3,
            3,
            false,
            vec![
                attr::int("group", 3),
                attr::ints("strides", &[2, 2]),
                attr::ints("dilations", &[2, 1]),
                attr::ints("pads", &[1, 0, 2, 1]),
            ],
        );
        // H: (6+1+2-5)/2+1 = 3, W: (6+0+1-3)/2+1 = 3
        let c = n.conv(&b, 3, 3, 5, true, vec![attr::int("group", 3), attr::ints("pads", &[2, 2, 2, 2])]);
        (c, 3 * 3 * 3)
    })
}

#[test]
fn conv_depthwise_plan() {
    // `auto` takes the depthwise plan on the two 3x3 output maps, im2col on the 6x6 one; the
    // forced plan on all three.
    for (norm, want) in [(ConvNorm::Auto, 2), (ConvNorm::Depthwise, 3)] {
        let case = case_conv_depthwise_plan();
        let opts = CompileOptions { conv_norm: norm, ..Default::default() };
        let compiled = grad::compile(&case.net.model(&case.input, &case.out), &opts).unwrap();
        let plans: Vec<&str> = compiled.conv_plans.iter().map(|(_, p)| *p).collect();
        assert_eq!(plans.iter().filter(|p| **p == "depthwise").count(), want, "{norm:?}: {plans:?}");
        check_with(&case, &opts, &[1.0; CLASSES]);
    }
}

/// Kernels wider than the maps they run on, where some taps read only padding (their weight
/// gradient is zero, so the norms leave them out): a 5x5 depthwise Conv padded by 2 on a 2x2 map
/// (9 of its 25 taps read the map), a 3x3 stride-2 Conv onto 1x1 (4 of 9), a 7x7 depthwise Conv
/// padded by 3 on 1x1 (1 of 49) and an ungrouped 3x3 padded Conv on 1x1 (its centre only).
fn case_conv_taps_on_padding_only() -> Case {
    chain(33, |n, x| {
        let stride2 = || vec![attr::ints("strides", &[2, 2]), attr::ints("pads", &[1, 1, 1, 1])];
        let a = n.conv(x, 3, 3, 3, false, stride2()); // 6x6 -> 3x3
        let b = n.conv(&a, 3, 3, 3, false, stride2()); // 3x3 -> 2x2
        let c = n.conv(&b, 3, 3, 5, true, vec![attr::int("group", 3), attr::ints("pads", &[2, 2, 2, 2])]);
        let cr = n.op("Relu", &[&c], vec![]);
        let d = n.conv(&cr, 3, 4, 3, true, stride2()); // 2x2 -> 1x1
        let e = n.conv(&d, 4, 4, 7, true, vec![attr::int("group", 4), attr::ints("pads", &[3, 3, 3, 3])]);
        let f = n.conv(&e, 4, 4, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
        (f, 4)
    })
}

#[test]
fn conv_taps_on_padding_only() {
    for norm in [ConvNorm::Auto, ConvNorm::Im2col, ConvNorm::Ghost, ConvNorm::PixelGram, ConvNorm::Depthwise] {
        check_with(
            &case_conv_taps_on_padding_only(),
            &CompileOptions { conv_norm: norm, ..Default::default() },
            &[1.0; CLASSES],
        );
    }
    // The 7x7 depthwise Conv on its 1x1 map reads one window: its norm takes one patch, not 49.
    let case = case_conv_taps_on_padding_only();
    let opts = CompileOptions { conv_norm: ConvNorm::Depthwise, ..Default::default() };
    let compiled = grad::compile(&case.net.model(&case.input, &case.out), &opts).unwrap();
    let g = compiled.model.graph.as_ref().unwrap();
    let slices = g.node.iter().filter(|n| n.op_type == "Slice").count();
    // 9 windows of the 5x5 depthwise Conv and 1 of the 7x7 (the ungrouped Convs use no Slice).
    assert_eq!(slices, 9 + 1, "{slices} Slices");
}

fn case_conv_auto_pad_same_upper_and_lower() -> Case {
    chain(4, |n, x| {
        let a = n.conv(x, 3, 3, 3, false, vec![attr::string("auto_pad", "SAME_UPPER"), attr::ints("strides", &[2, 2])]);
        let b = n.conv(&a, 3, 2, 2, true, vec![attr::string("auto_pad", "SAME_LOWER")]);
        (b, 2 * 3 * 3)
    })
}

#[test]
fn conv_auto_pad_same_upper_and_lower() {
    check(case_conv_auto_pad_same_upper_and_lower());
}

fn case_conv_norm_formulations_agree() -> Case {
    chain(5, |n, x| {
        let y = n.conv(x, 3, 4, 3, true, vec![attr::ints("strides", &[2, 2]), attr::ints("pads", &[1, 1, 1, 1])]);
        (y, 4 * 3 * 3)
    })
}

#[test]
fn conv_norm_formulations_agree() {
    for norm in [ConvNorm::Im2col, ConvNorm::Ghost, ConvNorm::PixelGram] {
        let case = case_conv_norm_formulations_agree();
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

fn case_batchnorm_relu_global_average_pool() -> Case {
    chain(6, |n, x| {
        let b = batchnorm(n, x, 3);
        let r = n.op("Relu", &[&b], vec![]);
        (n.op("GlobalAveragePool", &[&r], vec![]), 3)
    })
}

#[test]
fn batchnorm_relu_global_average_pool() {
    check(case_batchnorm_relu_global_average_pool());
}

/// A ResNet basic block (Conv-BN-Relu, Conv-BN, residual Add, Relu) and a strided grouped
/// Conv-BN-Relu after it: every BN gain folds into the Conv before it and every `x_hat` is read
/// back from a Relu output (the chain that lets ONNX Runtime fuse Conv+BN+Relu), under each
/// weight-norm plan (im2col, ghost, pixel-Gram) and the ConvTranspose input gradient.
fn case_residual_block_batchnorm_folds_into_convs() -> Case {
    chain(21, |n, x| {
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
    })
}

#[test]
fn residual_block_batchnorm_folds_into_convs() {
    for norm in [ConvNorm::Auto, ConvNorm::Im2col, ConvNorm::Ghost, ConvNorm::PixelGram] {
        let case = case_residual_block_batchnorm_folds_into_convs();
        check_with(&case, &CompileOptions { conv_norm: norm, ..Default::default() }, &[1.0; CLASSES]);
    }
}

/// Where the BN output cannot be read back (a scale near zero; the Conv output also read
/// elsewhere; BN on a non-Conv input; BN feeding something other than Relu), the compiler
/// falls back to the input-side formulas.
fn case_batchnorm_fallbacks() -> Case {
    chain(22, |n, x| {
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
    })
}

#[test]
fn batchnorm_fallbacks() {
    check(case_batchnorm_fallbacks());
}

fn case_activations() -> Case {
    chain(7, |n, x| {
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
    })
}

#[test]
fn activations() {
    check(case_activations());
}

fn case_relu6_as_clip() -> Case {
    chain(8, |n, x| {
        let s = n.constant(&[], &[5.0]);
        let xs = n.op("Mul", &[x, &s], vec![]);
        let lo = n.constant(&[], &[0.0]);
        let hi = n.constant(&[], &[6.0]);
        let r = n.op("Clip", &[&xs, &lo, &hi], vec![]);
        // Conv -> BatchNormalization -> ReLU6: the BN output is read back from the Clip's.
        let c = n.conv(&r, 3, 3, 3, false, vec![attr::ints("pads", &[1, 1, 1, 1])]);
        let b = batchnorm(n, &c, 3);
        (n.op("Clip", &[&b, &lo, &hi], vec![]), 3 * 36)
    })
}

#[test]
fn relu6_as_clip() {
    check(case_relu6_as_clip());
}

fn case_elementwise_residual_and_broadcast() -> Case {
    chain(9, |n, x| {
        let a = n.conv(x, 3, 3, 3, false, vec![attr::ints("pads", &[1, 1, 1, 1])]);
        let sum = n.op("Add", &[x, &a], vec![]);
        let c = n.constant(&[3, 1, 1], &[0.5, -1.5, 2.0]);
        let d = n.op("Sub", &[&sum, &c], vec![]);
        let e = n.op("Mul", &[&d, &a], vec![]);
        let f = n.constant(&[1, 6], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let g = n.op("Div", &[&e, &f], vec![]);
        let h = n.op("Sub", &[&c, &g], vec![]);
        (h, 3 * 36)
    })
}

#[test]
fn elementwise_residual_and_broadcast() {
    check(case_elementwise_residual_and_broadcast());
}

fn case_max_pool_ceil_mode_padded() -> Case {
    chain(10, |n, x| {
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
    })
}

#[test]
fn max_pool_ceil_mode_padded() {
    check(case_max_pool_ceil_mode_padded());
}

fn case_max_pool_dilated() -> Case {
    chain(11, |n, x| {
        let p = n.op("MaxPool", &[x], vec![attr::ints("kernel_shape", &[2, 2]), attr::ints("dilations", &[2, 2])]);
        (p, 3 * 4 * 4)
    })
}

#[test]
fn max_pool_dilated() {
    check(case_max_pool_dilated());
}

fn case_average_pools() -> Case {
    chain(12, |n, x| {
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
    })
}

#[test]
fn average_pools() {
    check(case_average_pools());
}

fn case_reduce_mean_squeeze_unsqueeze_reshape_transpose() -> Case {
    chain(13, |n, x| {
        let t = n.op("Transpose", &[x], vec![attr::ints("perm", &[0, 2, 3, 1])]); // [6,6,3]
        let r = n.op("ReduceMean", &[&t], vec![attr::ints("axes", &[1]), attr::int("keepdims", 0)]); // [6,3]
        let ua = n.ints(&[1]);
        let u = n.op("Unsqueeze", &[&r, &ua], vec![]); // [1,6,3]
        let sa = n.ints(&[1]);
        let s = n.op("Squeeze", &[&u, &sa], vec![]); // [6,3]
        let shape = n.ints(&[0, 3, 6]);
        let rs = n.op("Reshape", &[&s, &shape], vec![]); // [3,6]
        (rs, 18)
    })
}

#[test]
fn reduce_mean_squeeze_unsqueeze_reshape_transpose() {
    check(case_reduce_mean_squeeze_unsqueeze_reshape_transpose());
}

fn case_nhwc_input_concat_pad_identity_dropout() -> Case {
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
    Case { net, input: vec![6, 6, 2], out }
}

#[test]
fn nhwc_input_concat_pad_identity_dropout() {
    check(case_nhwc_input_concat_pad_identity_dropout());
}

fn case_gemm_variants_and_matmul_bias() -> Case {
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
    Case { net, input: vec![3, 2, 2], out }
}

#[test]
fn gemm_variants_and_matmul_bias() {
    check(case_gemm_variants_and_matmul_bias());
}

fn case_matmul_on_sequences() -> Case {
    let mut net = Net::new(16);
    let w1 = net.param(&[3, 4], 0.5);
    let m = net.op("MatMul", &["x", &w1], vec![]); // [5,4]
    let s = net.op("Sigmoid", &[&m], vec![]);
    let out = net.head(&s, 20, CLASSES);
    Case { net, input: vec![5, 3], out }
}

#[test]
fn matmul_on_sequences() {
    check(case_matmul_on_sequences());
}

fn case_trailing_softmax() -> Case {
    let mut case = chain(17, |n, x| (n.op("Relu", &[x], vec![]), 3 * 36));
    let logits = case.out.clone();
    case.out = case.net.op("Softmax", &[&logits], vec![attr::int("axis", 1)]);
    case
}

#[test]
fn trailing_softmax_is_skipped_and_bce_softmax_loss() {
    let case = case_trailing_softmax();
    let logits = case.net.nodes.last().map(|n| n.input[0].clone()).unwrap();
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

#[test]
fn trailing_sigmoid_and_renaming_identity_are_skipped() {
    // A multi-label head (Sigmoid), and heads whose output an Identity renames (tf2onnx's Keras
    // outputs): the compiled graph's logits and features are those of the model without them
    // (the loss applies the sigmoid to the logits itself).
    let heads: [&[(&str, i64)]; 3] =
        [&[("Sigmoid", 0)], &[("Softmax", 1), ("Identity", 0)], &[("Sigmoid", 0), ("Identity", 0), ("Identity", 0)]];
    for head in heads {
        let mut case = chain(18, |n, x| (n.op("Relu", &[x], vec![]), 3 * 36));
        let logits = case.out.clone();
        let plain = grad::compile(&case.net.model(&case.input, &logits), &CompileOptions::default()).unwrap();
        for &(op, axis) in head {
            let attrs = if op == "Softmax" { vec![attr::int("axis", axis)] } else { vec![] };
            case.out = case.net.op(op, &[&case.out.clone()], attrs);
        }
        let with = grad::compile(&case.net.model(&case.input, &case.out), &CompileOptions::default()).unwrap();
        assert_eq!(with.features, plain.features, "{head:?}");
        let x = input(&mut crate::common::Rng::new(3), BATCH, &case.input);
        let (a, b) = (
            GradSession::new(&with, &ort()).unwrap().run(x.view()).unwrap(),
            GradSession::new(&plain, &ort()).unwrap().run(x.view()).unwrap(),
        );
        assert_eq!(a.logits, b.logits, "{head:?}");
        assert_eq!(a.features, b.features, "{head:?}");
        assert!(a.logits.iter().any(|&v| !(0.0..=1.0).contains(&v)), "{head:?}: logits, not probabilities");
    }
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
    // x [1, 5, 5] -> MaxPool -> Flatten -> Gemm; every window is all-equal, so PyTorch sends
    // each window's gradient to its top-left element (windows at 0 and 2 on both axes), for
    // disjoint (2x2) and overlapping (3x3) windows, in each backward form: scatter (with and
    // without a reduction), windows for TensorRT, and the opset-12 forms.
    for (k, opset, tensorrt) in
        [(2, 17, false), (3, 17, false), (2, 17, true), (3, 17, true), (2, 12, false), (3, 12, false)]
    {
        let mut net = Net::new(19);
        net.opset = opset;
        let p = net.op("MaxPool", &["x"], vec![attr::ints("kernel_shape", &[k, k]), attr::ints("strides", &[2, 2])]);
        let out = net.head(&p, 4, CLASSES);
        let model = net.model(&[1, 5, 5], &out);
        let opts = CompileOptions { input_grad: true, tensorrt, ..Default::default() };
        let compiled = grad::compile(&model, &opts).unwrap();
        let mut s = GradSession::new(&compiled, &ort()).unwrap();
        let x = ArrayD::from_elem(ndarray::IxDyn(&[2, 1, 5, 5]), 0.5f32);
        let g = s.run(x.view()).unwrap().input_grad.unwrap();
        for n in 0..2 {
            for y in 0..5 {
                for xx in 0..5 {
                    let v = g[[n, 0, y, xx]];
                    let case = format!("{k}x{k} opset {opset} tensorrt {tensorrt}: sample {n} ({y},{xx})");
                    if y % 2 == 0 && xx % 2 == 0 && y < 4 && xx < 4 {
                        assert!(v != 0.0, "{case}: the top-left of a window must get the gradient");
                    } else {
                        assert_eq!(v, 0.0, "{case}: not a window's first maximum");
                    }
                }
            }
        }
    }
}

fn case_max_pool_disjoint_windows() -> Case {
    chain(31, |n, x| {
        let p = n.op("MaxPool", &[x], vec![attr::ints("kernel_shape", &[2, 2]), attr::ints("strides", &[2, 2])]);
        (p, 3 * 3 * 3)
    })
}

#[test]
fn max_pool_disjoint_windows() {
    check(case_max_pool_disjoint_windows());
}

/// A pool on the chain's 6x6 map, then a Softmax over the last axis as opsets 11 and 12 write it
/// (`axis = 3`, whose meaning opset 13 changed): the model stays at its opset.
fn pool_then_softmax(seed: u64, pool: Vec<onnx::AttributeProto>, features: usize, opset: i64) -> Case {
    let mut case = chain(seed, |n, x| {
        let p = n.op("MaxPool", &[x], pool);
        (n.op("Softmax", &[&p], vec![attr::int("axis", 3)]), features)
    });
    case.net.opset = opset;
    case
}

/// MaxPool's other backward forms against finite differences: the windows form (for TensorRT,
/// and for overlapping windows in an opset 11 or 12 model that stays there) and the scatter
/// without a reduction (disjoint windows there).
#[test]
fn max_pool_for_tensorrt_and_opset_12() {
    let trt = CompileOptions { tensorrt: true, ..Default::default() };
    for make in [case_max_pool_ceil_mode_padded, case_max_pool_dilated, case_max_pool_disjoint_windows] {
        check_with(&make(), &trt, &[1.0; CLASSES]);
    }
    let overlapping =
        vec![attr::ints("kernel_shape", &[3, 3]), attr::ints("strides", &[2, 2]), attr::ints("pads", &[1, 1, 1, 1])];
    let disjoint = vec![attr::ints("kernel_shape", &[2, 2]), attr::ints("strides", &[2, 2])];
    for (pool, scatter) in [(overlapping, false), (disjoint, true)] {
        let case = pool_then_softmax(32, pool, 27, 12);
        let compiled = grad::compile(&case.net.model(&case.input, &case.out), &CompileOptions::default()).unwrap();
        let g = compiled.model.graph.as_ref().unwrap();
        let sc: Vec<_> = g.node.iter().filter(|n| n.op_type == "ScatterElements").collect();
        assert_eq!(sc.len(), usize::from(scatter));
        assert!(sc.iter().all(|n| n.attribute.iter().all(|a| a.name != "reduction")), "no reduction before 16");
        check(case);
    }
}

/// Models of opsets 10 to 15 are read as 16 (12 and older rewritten first), whose
/// `ScatterElements` adds up: MaxPool's backward by scatter.
#[test]
fn older_opsets_get_the_scatter_backward() {
    for opset in [10, 11, 12, 13, 15, 17] {
        let mut case = case_max_pool_ceil_mode_padded();
        case.net.opset = opset;
        let compiled = grad::compile(&case.net.model(&case.input, &case.out), &CompileOptions::default()).unwrap();
        let ops: Vec<&str> = compiled.model.graph.as_ref().unwrap().node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(ops.contains(&"ScatterElements"), "opset {opset}");
        check(case);
    }
}

/// Opset 11's attribute forms that opset 13 moved to inputs (`Split` sizes, `ReduceSum`,
/// `Squeeze` and `Unsqueeze` axes) and `Dropout`'s ratio, rewritten when the model is read as 16.
fn case_opset11_attribute_axes() -> Case {
    let mut c = chain(26, |n, x| {
        let (s0, s1) = (n.name_of("split"), n.name_of("split"));
        let split = vec![attr::int("axis", 2), attr::ints("split", &[2, 4])];
        n.nodes.push(onnx::make_node("Split", "n_split11", &[x], &[&s0, &s1], split));
        let r = n.op("ReduceSum", &[&s1], vec![attr::ints("axes", &[2]), attr::int("keepdims", 0)]); // [3, 6]
        let u = n.op("Unsqueeze", &[&r], vec![attr::ints("axes", &[2])]); // [3, 1, 6]
        let c = n.op("Concat", &[&s0, &u], vec![attr::int("axis", 2)]); // [3, 3, 6]
        let e = n.op("Unsqueeze", &[&c], vec![attr::ints("axes", &[4])]);
        let q = n.op("Squeeze", &[&e], vec![attr::ints("axes", &[4])]);
        (n.op("Dropout", &[&q], vec![attr::float("ratio", 0.3)]), 3 * 3 * 6)
    });
    c.net.opset = 11;
    c
}

#[test]
fn opset11_attribute_axes() {
    check(case_opset11_attribute_axes());
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
    let e = net.op("Einsum", &[&c], vec![attr::string("equation", "nchw->nchw")]);
    let out = net.head(&e, 3 * 16, CLASSES);
    let err = grad::compile(&net.model(&[2, 6, 6], &out), &CompileOptions::default()).unwrap_err();
    assert!(matches!(err, GradError::Unsupported { .. }));
    let msg = err.to_string();
    assert!(msg.contains("'Einsum'") && msg.contains("n_einsum") && msg.contains("Conv, BatchNormalization"), "{msg}");
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
    // What TensorRT's ONNX parser accepts (`CompileOptions::tensorrt`): ai.onnx ops, no MaxPool
    // Indices, no ScatterElements, every Conv/ConvTranspose weight an initializer.
    let case = chain(22, |n, x| {
        let b = batchnorm(n, x, 3);
        let r = n.op("Relu", &[&b], vec![]);
        let p = n.op("MaxPool", &[&r], vec![attr::ints("kernel_shape", &[2, 2]), attr::ints("strides", &[2, 2])]);
        let c = n.conv(&p, 3, 4, 3, true, vec![attr::ints("strides", &[2, 2]), attr::ints("pads", &[1, 1, 1, 1])]);
        (n.op("GlobalAveragePool", &[&c], vec![]), 4)
    });
    let compiled = grad::compile(
        &case.net.model(&case.input, &case.out),
        &CompileOptions { input_grad: true, penultimate: true, tensorrt: true, ..Default::default() },
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

/// A Keras/TensorFlow-style CNN: BatchNormalization folded into per-channel constant Mul/Add
/// pairs (after the Conv, after the Relu, after a dense layer; constants first or second and
/// shaped `[1,C,1,1]`, `[C,1,1]`, `[C]`, `[1,C]`), a bias-less Conv with a separate bias Add,
/// a MatMul + Add dense layer, and a scalar Constant-node rescaling of the input (no parameter).
/// HardSwish rather than Relu keeps finite differences off kinks (`tests/it/golden.rs` checks the
/// Relu version against float64).
fn case_folded_batchnorm() -> Case {
    let mut n = Net::new(31);
    let k = n.op("Constant", &[], vec![attr::tensor("value", onnx::make_tensor_f32("k", &[], &[2.0]))]);
    let xs = n.op("Mul", &["x", &k], vec![]);
    let pad = || vec![attr::ints("pads", &[1, 1, 1, 1])];
    let c1 = n.conv(&xs, 2, 3, 3, false, pad());
    let s1 = n.param(&[1, 3, 1, 1], 1.0);
    let m1 = n.op("Mul", &[&c1, &s1], vec![]);
    let t1 = n.param(&[3, 1, 1], 0.5);
    let a1 = n.op("Add", &[&m1, &t1], vec![]);
    let r1 = n.op("HardSwish", &[&a1], vec![]);
    let c2 = n.conv(&r1, 3, 3, 3, false, pad());
    let r2 = n.op("HardSwish", &[&c2], vec![]);
    let s2 = n.param(&[3, 1, 1], 1.0);
    let m2 = n.op("Mul", &[&s2, &r2], vec![]);
    let t2 = n.param(&[1, 3, 1, 1], 0.5);
    let a2 = n.op("Add", &[&t2, &m2], vec![]);
    let c3 = n.conv(&a2, 3, 4, 3, false, vec![attr::ints("strides", &[2, 2]), attr::ints("pads", &[1, 1, 1, 1])]);
    let b3 = n.param(&[4, 1, 1], 0.2);
    let cb = n.op("Add", &[&c3, &b3], vec![]);
    let r3 = n.op("HardSwish", &[&cb], vec![]);
    let f = n.op("Flatten", &[&r3], vec![attr::int("axis", 1)]);
    let w = n.param(&[36, 5], 0.4);
    let d = n.op("MatMul", &[&f, &w], vec![]);
    let db = n.param(&[5], 0.2);
    let dd = n.op("Add", &[&d, &db], vec![]);
    let s3 = n.param(&[5], 1.0);
    let m3 = n.op("Mul", &[&dd, &s3], vec![]);
    let t3 = n.param(&[1, 5], 0.5);
    let a3 = n.op("Add", &[&m3, &t3], vec![]);
    let r4 = n.op("HardSwish", &[&a3], vec![]);
    let out = n.head(&r4, 5, CLASSES);
    Case { net: n, input: vec![2, 6, 6], out }
}

#[test]
fn folded_batchnorm_mul_add_and_bias_adds_count() {
    let case = case_folded_batchnorm();
    check(case_folded_batchnorm());
    let compiled = grad::compile(&case.net.model(&case.input, &case.out), &CompileOptions::default()).unwrap();
    use ParamKind::*;
    let kinds = [
        Weight,
        FoldedBnScale,
        FoldedBnShift,
        Weight,
        FoldedBnScale,
        FoldedBnShift,
        Weight,
        Bias,
        Weight,
        Bias,
        FoldedBnScale,
        FoldedBnShift,
        Weight,
        Bias,
    ];
    assert_eq!(compiled.feature_kinds, kinds);
}

/// A per-channel Mul/Add normalising the raw input: off by default, a first layer with
/// parameters under `--params all` (its norms come though nothing wants the image's gradient).
fn case_input_normalisation() -> Case {
    let mut n = Net::new(32);
    let s = n.param(&[1, 2, 1, 1], 1.0);
    let m = n.op("Mul", &["x", &s], vec![]);
    let t = n.param(&[2, 1, 1], 0.5);
    let a = n.op("Add", &[&m, &t], vec![]);
    let c = n.conv(&a, 2, 3, 3, false, vec![]);
    let r = n.op("Relu", &[&c], vec![]);
    let out = n.head(&r, 3 * 16, CLASSES);
    Case { net: n, input: vec![2, 6, 6], out }
}

#[test]
fn input_normalisation_counts_only_when_asked() {
    let case = case_input_normalisation();
    let all = CompileOptions { params: ParamSelection::all(), ..Default::default() };
    check_with(&case, &all, &[1.0; CLASSES]);
    let model = case.net.model(&case.input, &case.out);
    let compiled = grad::compile(&model, &all).unwrap();
    assert_eq!(compiled.feature_kinds[..2], [ParamKind::InputScale, ParamKind::InputShift]);
    // Without the input gradient the Mul/Add still get their norms (same values).
    let mut with_ig =
        GradSession::new(&grad::compile(&model, &CompileOptions { input_grad: true, ..all.clone() }).unwrap(), &ort())
            .unwrap();
    let mut plain = GradSession::new(&compiled, &ort()).unwrap();
    let x = input(&mut crate::common::Rng::new(3), BATCH, &case.input);
    let (a, b) = (with_ig.run(x.view()).unwrap().features, plain.run(x.view()).unwrap().features);
    assert_eq!(a, b);
    let default = grad::compile(&model, &CompileOptions::default()).unwrap();
    assert_eq!(default.features, case.net.params[2..]);
    assert_eq!(default.candidates.len(), case.net.params.len());
}

/// A Concat of the image and a Conv of it as the first layer: the Concat's first input wants no
/// gradient, and the Conv's weights must still get theirs (once dropped, "parameter gets no
/// gradient").
fn case_first_layer_concat() -> Case {
    let mut n = Net::new(33);
    let c = n.conv("x", 2, 2, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
    let cat = n.op("Concat", &["x", &c], vec![attr::int("axis", 1)]);
    let r = n.op("Sigmoid", &[&cat], vec![]);
    let out = n.head(&r, 4 * 36, CLASSES);
    Case { net: n, input: vec![2, 6, 6], out }
}

#[test]
fn first_layer_concat_without_input_gradient() {
    let case = case_first_layer_concat();
    check(case_first_layer_concat());
    let model = case.net.model(&case.input, &case.out);
    let plain = grad::compile(&model, &CompileOptions::default()).unwrap_or_else(|e| panic!("compile: {e}"));
    let full = grad::compile(&model, &CompileOptions { input_grad: true, ..Default::default() }).unwrap();
    let x = input(&mut crate::common::Rng::new(4), BATCH, &case.input);
    let a = GradSession::new(&plain, &ort()).unwrap().run(x.view()).unwrap().features;
    let b = GradSession::new(&full, &ort()).unwrap().run(x.view()).unwrap().features;
    assert_eq!(a, b);
}

#[test]
fn params_restrict_features_and_metadata() {
    let case = case_folded_batchnorm();
    let model = case.net.model(&case.input, &case.out);
    let full = grad::compile(&model, &CompileOptions::default()).unwrap();
    let x = input(&mut crate::common::Rng::new(5), BATCH, &case.input);
    let all_feats = GradSession::new(&full, &ort()).unwrap().run(x.view()).unwrap().features;
    for (spec, want) in [
        ("-folded_bn_*", vec![0, 3, 6, 7, 8, 9, 12, 13]),
        ("weight", vec![0, 3, 6, 8, 12]),
        ("folded_bn_scale,bias", vec![1, 4, 7, 9, 10, 13]),
        ("default,-bias", vec![0, 1, 2, 3, 4, 5, 6, 8, 10, 11, 12]),
        (&format!("{},{}", case.net.params[0], case.net.params[13]), vec![0, 13]),
        ("p?", (0..14).filter(|&i| full.features[i].len() == 2).collect()),
    ] {
        let sel: ParamSelection = spec.parse().unwrap();
        let c = grad::compile(&model, &CompileOptions { params: sel, ..Default::default() })
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        let names: Vec<String> = want.iter().map(|&i| full.features[i].clone()).collect();
        assert_eq!(c.features, names, "{spec}");
        assert_eq!(grad::feature_names(&c.model).unwrap(), names, "{spec}: metadata");
        let f = GradSession::new(&c, &ort()).unwrap().run(x.view()).unwrap().features;
        assert_eq!(f.shape(), [BATCH, want.len()], "{spec}");
        for (j, &i) in want.iter().enumerate() {
            for k in 0..BATCH {
                let (a, b) = (f[[k, j]], all_feats[[k, i]]);
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(b.abs()) + 1e-12,
                    "{spec}: {} sample {k}: {a} vs {b}",
                    names[j]
                );
            }
        }
    }
    for bad in ["nope", "-bn_scale,weigth"] {
        let sel: ParamSelection = bad.parse().unwrap();
        let e = grad::compile(&model, &CompileOptions { params: sel, ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("matches no parameter kind"), "{bad}: {e}");
    }
    let sel: ParamSelection = "bn_scale".parse().unwrap();
    let e = grad::compile(&model, &CompileOptions { params: sel, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("selects none"), "{e}");
    assert!("".parse::<ParamSelection>().is_err() && "weight,-".parse::<ParamSelection>().is_err());
}

/// LayerNormalization over the last axis (NHWC after a Transpose) and over the last two, then
/// Erf; the ConvNeXt-reference channel LayerNorm written out (ReduceMean, Sub, Pow, Sqrt, Div by
/// an activation) with a layer-scale Mul, then Tanh.
fn case_layernorm_erf_decomposed_norm_tanh() -> Case {
    chain(41, |n, x| {
        let t = n.op("Transpose", &[x], vec![attr::ints("perm", &[0, 2, 3, 1])]); // [6,6,3]
        let s = n.param(&[3], 1.0);
        let b = n.param(&[3], 0.5);
        let ln = n.op("LayerNormalization", &[&t, &s, &b], vec![attr::int("axis", -1), attr::float("epsilon", 1e-5)]);
        let s2 = n.param(&[6, 3], 1.0);
        let ln2 = n.op("LayerNormalization", &[&ln, &s2], vec![attr::int("axis", 2)]);
        let e = n.op("Erf", &[&ln2], vec![]);
        let back = n.op("Transpose", &[&e], vec![attr::ints("perm", &[0, 3, 1, 2])]); // [3,6,6]
        let u = n.op("ReduceMean", &[&back], vec![attr::ints("axes", &[1]), attr::int("keepdims", 1)]);
        let d = n.op("Sub", &[&back, &u], vec![]);
        let two = n.constant(&[], &[2.0]);
        let p = n.op("Pow", &[&d, &two], vec![]);
        let v = n.op("ReduceMean", &[&p], vec![attr::ints("axes", &[1]), attr::int("keepdims", 1)]);
        let eps = n.constant(&[], &[1e-3]);
        let ve = n.op("Add", &[&v, &eps], vec![]);
        let sd = n.op("Sqrt", &[&ve], vec![]);
        let y = n.op("Div", &[&d, &sd], vec![]);
        let g = n.param(&[3, 1, 1], 1.0);
        let m = n.op("Mul", &[&g, &y], vec![]);
        (n.op("Tanh", &[&m], vec![]), 3 * 36)
    })
}

#[test]
fn layernorm_erf_decomposed_norm_tanh() {
    check(case_layernorm_erf_decomposed_norm_tanh());
}

/// The opset-20 Gelu, exact and tanh-approximated, and Pow by a non-integer exponent.
fn case_gelu_both_forms_and_pow() -> Case {
    let mut case = chain(42, |n, x| {
        let a = n.op("Gelu", &[x], vec![]);
        let w = n.conv(&a, 3, 3, 1, true, vec![]);
        let b = n.op("Gelu", &[&w], vec![attr::string("approximate", "tanh")]);
        let s = n.op("Sigmoid", &[&b], vec![]);
        let e = n.constant(&[], &[1.5]);
        (n.op("Pow", &[&s, &e], vec![]), 3 * 36)
    });
    case.net.opset = 20;
    case
}

#[test]
fn gelu_both_forms_and_pow() {
    check(case_gelu_both_forms_and_pow());
}

/// The smooth units of other model families (Elu, Selu, Celu, Mish at opset 18, Softsign,
/// Softplus) and unary arithmetic (Log, Abs, Reciprocal, Neg, Exp), chained so that each one's
/// input gradient reaches the convs before it.
fn case_smooth_units_and_unary_arithmetic() -> Case {
    let mut case = chain(44, |n, x| {
        let a = n.op("Elu", &[x], vec![attr::float("alpha", 0.7)]);
        let w = n.conv(&a, 3, 3, 1, true, vec![]);
        let b = n.op("Selu", &[&w], vec![]);
        let c = n.op("Celu", &[&b], vec![attr::float("alpha", 0.8)]);
        let w2 = n.conv(&c, 3, 3, 1, true, vec![]);
        let d = n.op("Mish", &[&w2], vec![]);
        let e = n.op("Softsign", &[&d], vec![]);
        let sp = n.op("Softplus", &[&e], vec![]);
        let l = n.op("Log", &[&sp], vec![]);
        let w3 = n.conv(&l, 3, 3, 1, true, vec![]);
        let f = n.op("Abs", &[&w3], vec![]);
        let one = n.constant(&[], &[1.0]);
        let g = n.op("Add", &[&f, &one], vec![]);
        let r = n.op("Reciprocal", &[&g], vec![]);
        let ng = n.op("Neg", &[&r], vec![]);
        (n.op("Exp", &[&ng], vec![]), 3 * 36)
    });
    case.net.opset = 18;
    case
}

#[test]
fn smooth_units_and_unary_arithmetic() {
    check(case_smooth_units_and_unary_arithmetic());
}

/// The trigonometric functions and their inverses, each fed a range where it is smooth (Tanh
/// for the inverse sine and cosine), chained so that each one's input gradient reaches the
/// convs before it.
fn case_trigonometric() -> Case {
    chain(61, |n, x| {
        let a = n.op("Sin", &[x], vec![]);
        let b = n.op("Cos", &[&a], vec![]);
        let w = n.conv(&b, 3, 3, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
        let t = n.op("Tanh", &[&w], vec![]);
        let c = n.op("Tan", &[&t], vec![]);
        let d = n.op("Atan", &[&c], vec![]);
        let e = n.op("Asin", &[&d], vec![]);
        let t2 = n.op("Tanh", &[&e], vec![]);
        (n.op("Acos", &[&t2], vec![]), 3 * 36)
    })
}

#[test]
fn trigonometric() {
    check(case_trigonometric());
}

/// The hyperbolic functions and their inverses (1 + Softplus for the inverse cosh), and the
/// piecewise-constant Floor, Ceil, Round and Sign, each fed values kept away from its jumps
/// (so finite differences see the zero gradient their rule gives) and multiplied or added into
/// the chain.
fn case_hyperbolic_and_piecewise_constant() -> Case {
    chain(62, |n, x| {
        let t = n.op("Tanh", &[x], vec![]);
        let a = n.op("Sinh", &[&t], vec![]);
        let b = n.op("Cosh", &[&a], vec![]);
        let c = n.op("Asinh", &[&b], vec![]);
        let w = n.conv(&c, 3, 3, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
        let t2 = n.op("Tanh", &[&w], vec![]);
        let d = n.op("Atanh", &[&t2], vec![]);
        let sp = n.op("Softplus", &[&d], vec![]);
        let one = n.constant(&[], &[1.0]);
        let sp1 = n.op("Add", &[&sp, &one], vec![]);
        let k = n.op("Acosh", &[&sp1], vec![]);
        // q = sigmoid(k) / 2 + 1/4 lies in (0.25, 0.75), where Floor is 0, Ceil 1 and Sign 1;
        // Round's jump is at 0.5, so it gets q / 2, in (0.125, 0.375), where it is 0.
        let sg = n.op("Sigmoid", &[&k], vec![]);
        let half = n.constant(&[], &[0.5]);
        let quarter = n.constant(&[], &[0.25]);
        let hs = n.op("Mul", &[&sg, &half], vec![]);
        let q = n.op("Add", &[&hs, &quarter], vec![]);
        let q2 = n.op("Mul", &[&q, &half], vec![]);
        let fl = n.op("Floor", &[&q], vec![]);
        let ce = n.op("Ceil", &[&q], vec![]);
        let si = n.op("Sign", &[&q], vec![]);
        let ro = n.op("Round", &[&q2], vec![]);
        let m1 = n.op("Mul", &[&k, &ce], vec![]);
        let m2 = n.op("Mul", &[&m1, &si], vec![]);
        let a1 = n.op("Add", &[&m2, &fl], vec![]);
        (n.op("Add", &[&a1, &ro], vec![]), 3 * 36)
    })
}

#[test]
fn hyperbolic_and_piecewise_constant() {
    check(case_hyperbolic_and_piecewise_constant());
}

/// PRelu with a per-channel slope and with one shared slope: both are parameters (their
/// per-sample gradient norms are features). The first sees only negative inputs (-Softplus)
/// and the second only positive ones (Softplus), so finite differences never straddle the kink
/// at 0; each branch is exercised (the PyTorch check of both across 0: docs/results/compiler-zoo.md).
fn case_prelu_slopes() -> Case {
    chain(45, |n, x| {
        let sp = n.op("Softplus", &[x], vec![]);
        let neg = n.op("Neg", &[&sp], vec![]);
        let slope = n.param(&[3, 1, 1], 0.5);
        let a = n.op("PRelu", &[&neg, &slope], vec![]);
        let w = n.conv(&a, 3, 3, 1, true, vec![]);
        let pos = n.op("Softplus", &[&w], vec![]);
        let shared = n.param(&[1], 0.5);
        (n.op("PRelu", &[&pos, &shared], vec![]), 3 * 36)
    })
}

#[test]
fn prelu_slopes() {
    check(case_prelu_slopes());
}

/// Comparisons and Where. A mask mixed over the positions (a constant pattern) is combined with
/// comparisons of the input that hold everywhere, far from their thresholds (so finite
/// differences never flip one), through every comparison and logical operator; it selects
/// between two branches of the first conv, both of which reach the parameters. A mask that is
/// all false (the dynamo exporter's `softplus` threshold) passes everything to its second branch.
fn case_masks_and_where() -> Case {
    chain(46, |n, x| {
        let mean = n.op("ReduceMean", &["x"], vec![attr::ints("axes", &[1]), attr::int("keepdims", 1)]);
        let c = |n: &mut Net, v: f32| n.constant(&[], &[v]);
        let (zero, far, low) = (c(n, 0.0), c(n, 100.0), c(n, -100.0));
        let pattern: Vec<f32> = (0..36).map(|i| if (i * 7) % 5 < 2 { 1.0 } else { -1.0 }).collect();
        let pattern = n.constant(&[1, 6, 6], &pattern);
        let fixed = n.op("Greater", &[&pattern, &zero], vec![]);
        let lt = n.op("Less", &[&mean, &far], vec![]); // true
        let le = n.op("LessOrEqual", &[&mean, &far], vec![]); // true
        let gt = n.op("Greater", &[&mean, &far], vec![]); // false
        let ge = n.op("GreaterOrEqual", &[&mean, &low], vec![]); // true
        let eq = n.op("Equal", &[&mean, &far], vec![]); // false
        let m = n.op("And", &[&fixed, &lt], vec![]);
        let m = n.op("And", &[&m, &le], vec![]);
        let m = n.op("And", &[&m, &ge], vec![]);
        let none = n.op("Or", &[&gt, &eq], vec![]);
        let m = n.op("Or", &[&m, &none], vec![]);
        let not_none = n.op("Not", &[&none], vec![]);
        let m = n.op("And", &[&m, &not_none], vec![]);
        let a = n.op("Tanh", &[x], vec![]);
        let b = n.op("Sigmoid", &[x], vec![]);
        let w = n.op("Where", &[&m, &a, &b], vec![]);
        let c = n.conv(&w, 3, 3, 1, true, vec![]);
        let t = n.constant(&[], &[20.0]);
        let big = n.op("Greater", &[&c, &t], vec![]);
        let sp = n.op("Softplus", &[&c], vec![]);
        (n.op("Where", &[&big, &c, &sp], vec![]), 3 * 36)
    })
}

#[test]
fn masks_and_where() {
    check(case_masks_and_where());
}

/// InstanceNormalization with a learned scale and shift (parameters), and GroupNorm as both
/// PyTorch exporters write it (one group here, PoolFormer's norm): a Reshape to `[N, 1, -1]`,
/// an InstanceNormalization with unit scale and zero shift (constants, not features), a
/// Reshape back and the learned per-channel Mul and Add.
fn case_instance_and_group_norm() -> Case {
    chain(47, |n, x| {
        let scale = n.param(&[3], 0.5);
        let shift = n.param(&[3], 0.5);
        let a = n.op("InstanceNormalization", &[x, &scale, &shift], vec![attr::float("epsilon", 1e-3)]);
        let a = n.op("Tanh", &[&a], vec![]);
        let w = n.conv(&a, 3, 3, 1, true, vec![]);
        let groups = n.ints(&[0, 1, -1]);
        let r = n.op("Reshape", &[&w, &groups], vec![]);
        let (ones, zeros) = (n.constant(&[1], &[1.0]), n.constant(&[1], &[0.0]));
        let i = n.op("InstanceNormalization", &[&r, &ones, &zeros], vec![]);
        let back = n.ints(&[0, 3, 6, 6]);
        let g = n.op("Reshape", &[&i, &back], vec![]);
        let gamma = n.param(&[3, 1, 1], 0.5);
        let beta = n.param(&[3, 1, 1], 0.5);
        let m = n.op("Mul", &[&g, &gamma], vec![]);
        (n.op("Add", &[&m, &beta], vec![]), 3 * 36)
    })
}

#[test]
fn instance_and_group_norm() {
    check(case_instance_and_group_norm());
}

/// ReduceSum (axes as an input), ReduceMax (axes as an attribute, opset 17) and GlobalMaxPool
/// on activations, each broadcast back onto the map so that every input position matters.
fn case_sum_and_max_reductions() -> Case {
    chain(48, |n, x| {
        let axes = n.ints(&[3]);
        let s = n.op("ReduceSum", &[x, &axes], vec![attr::int("keepdims", 1)]);
        let t = n.op("Mul", &[x, &s], vec![]);
        let m = n.op("ReduceMax", &[&t], vec![attr::ints("axes", &[2]), attr::int("keepdims", 1)]);
        let g = n.op("GlobalMaxPool", &[&t], vec![]);
        let u = n.op("Add", &[&t, &m], vec![]);
        (n.op("Add", &[&u, &g], vec![]), 3 * 36)
    })
}

#[test]
fn sum_and_max_reductions() {
    check(case_sum_and_max_reductions());
}

/// Elementwise Max and Min of two activations, each winning at half the positions (a constant
/// offset of +-5 keeps every position's winner fixed under finite differences), and a variadic
/// Sum of activations and a constant.
fn case_max_min_and_sum() -> Case {
    chain(49, |n, x| {
        let offsets: Vec<f32> = (0..36).map(|i| if (i * 5) % 7 < 3 { 5.0 } else { -5.0 }).collect();
        let off = n.constant(&[1, 6, 6], &offsets);
        // Sub: an added learned-looking constant would count as a parameter (an embedding).
        let a = n.op("Sub", &[x, &off], vec![]);
        let t = n.op("Tanh", &[x], vec![]);
        let hi = n.op("Max", &[&a, &t], vec![]);
        let lo = n.op("Min", &[&a, &t], vec![]);
        let w = n.conv(&lo, 3, 3, 1, true, vec![]);
        let c = n.constant(&[3, 1, 1], &[0.1, 0.2, 0.3]);
        (n.op("Sum", &[&hi, &w, &c], vec![]), 3 * 36)
    })
}

#[test]
fn max_min_and_sum() {
    check(case_max_min_and_sum());
}

/// `Tile` of an activation along a per-sample axis (GCViT's query repeated over windows) and of
/// a parameter by the batch size read from the input's shape (`pos.repeat(B, 1, 1, 1)`, XCiT),
/// which makes the tiled parameter a feature.
fn case_tile_activation_and_parameter() -> Case {
    chain(51, |n, x| {
        let reps = n.ints(&[1, 1, 2, 1]);
        let t = n.op("Tile", &[x, &reps], vec![]); // [3,12,6]
        let sh = n.op("Shape", &[x], vec![]);
        let (st, en) = (n.ints(&[0]), n.ints(&[1]));
        let batch = n.op("Slice", &[&sh, &st, &en], vec![]);
        let ones = n.ints(&[1, 1, 1]);
        let preps = n.op("Concat", &[&batch, &ones], vec![attr::int("axis", 0)]);
        let pos = n.param(&[1, 3, 6, 6], 0.5);
        let tp = n.op("Tile", &[&pos, &preps], vec![]); // [N,3,6,6]
        let tp2 = n.op("Concat", &[&tp, &tp], vec![attr::int("axis", 2)]); // [3,12,6]
        (n.op("Mul", &[&t, &tp2], vec![]), 3 * 72)
    })
}

#[test]
fn tile_activation_and_parameter() {
    check(case_tile_activation_and_parameter());
}

/// A table computed from constants (`Sin` of a constant, folded) and read by two nodes, as EVA's
/// rotary sin/cos tables multiply both q and k: a buffer, not a parameter (no feature), where a
/// learned-looking constant read once would be a layer scale.
fn case_shared_computed_table_is_no_parameter() -> Case {
    chain(53, |n, x| {
        let angles: Vec<f32> = (0..36).map(|i| i as f32 * 0.21).collect();
        let a = n.constant(&[1, 6, 6], &angles);
        let table = n.op("Sin", &[&a], vec![]);
        let q = n.op("Mul", &[x, &table], vec![]);
        let t = n.op("Tanh", &[x], vec![]);
        let k = n.op("Mul", &[&t, &table], vec![]);
        (n.op("Add", &[&q, &k], vec![]), 3 * 36)
    })
}

#[test]
fn shared_computed_table_is_no_parameter() {
    check(case_shared_computed_table_is_no_parameter());
}

/// `Pad` in `reflect` mode (TResNet's anti-aliasing blur pads so), unequal on both sides of
/// both axes, then in `edge` mode: `[3,6,6] -> [3,9,9] -> [3,10,12]`.
fn case_pad_reflect_and_edge() -> Case {
    chain(54, |n, x| {
        let t = n.op("Tanh", &[x], vec![]);
        let p1 = n.ints(&[0, 0, 2, 1, 0, 0, 1, 2]);
        let r = n.op("Pad", &[&t, &p1], vec![attr::string("mode", "reflect")]);
        let p2 = n.ints(&[0, 0, 1, 0, 0, 0, 0, 3]);
        let e = n.op("Pad", &[&r, &p2], vec![attr::string("mode", "edge")]);
        (e, 3 * 120)
    })
}

#[test]
fn pad_reflect_and_edge() {
    check(case_pad_reflect_and_edge());
}

/// ECA's channel attention: the pooled channels `[N, 1, C]` convolved by a 1-D Conv (a 3-D
/// weight, padded, strided 1), a sigmoid gate back on the map.
fn case_conv1d_channel_attention() -> Case {
    chain(55, |n, x| {
        let m = n.op("ReduceMean", &[x], vec![attr::ints("axes", &[2, 3]), attr::int("keepdims", 0)]); // [3]
        let a1 = n.ints(&[1]);
        let u = n.op("Unsqueeze", &[&m, &a1], vec![]); // [1,3]
        let w = n.param(&[1, 1, 3], 0.8);
        let c = n.op("Conv", &[&u, &w], vec![attr::ints("pads", &[1, 1]), attr::ints("kernel_shape", &[3])]);
        let g = n.op("Sigmoid", &[&c], vec![]);
        let a23 = n.ints(&[3]);
        let g = n.op("Unsqueeze", &[&g, &a23], vec![]); // [1,3,1]
        let t = n.op("Transpose", &[&g], vec![attr::ints("perm", &[0, 2, 1, 3])]); // [3,1,1]
        (n.op("Mul", &[x, &t], vec![]), 3 * 36)
    })
}

#[test]
fn conv1d_channel_attention() {
    check(case_conv1d_channel_attention());
}

/// A node on constants only that the compiler has no folding rule for (a `Conv` of two
/// constants, as XCiT's position encoding is) is folded by ONNX Runtime once registered: the
/// model compiles, and its features equal those of the same model with that node's value
/// stored as an initializer (the derived tensor is the feature, as it then is).
#[test]
fn constant_only_nodes_fold_through_onnx_runtime() {
    gradwatch::runtime::register_constant_folding();
    let grid: Vec<f32> = (0..72).map(|i| (i as f32 * 0.37).sin()).collect();
    let w = [0.5f32, -0.25, 0.75, 0.1, -0.6, 0.3];
    // The 1x1 Conv's value by hand: pos[o, p] = sum_c w[o, c] * grid[c, p].
    let g = &grid;
    let pos: Vec<f32> = (0..3).flat_map(|o| (0..36).map(move |p| w[2 * o] * g[p] + w[2 * o + 1] * g[36 + p])).collect();
    let build = |folded: bool| {
        let mut n = Net::new(52);
        let c1 = n.conv("x", 2, 3, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
        let p = if folded {
            let g = n.constant(&[1, 2, 6, 6], &grid);
            let wc = n.constant(&[3, 2, 1, 1], &w);
            n.op("Conv", &[&g, &wc], vec![])
        } else {
            n.constant(&[1, 3, 6, 6], &pos)
        };
        let y = n.op("Add", &[&c1, &p], vec![]);
        let out = n.head(&y, 3 * 36, CLASSES);
        (n.model(&[2, 6, 6], &out), p)
    };
    let x = input(&mut crate::common::Rng::new(3), BATCH, &[2, 6, 6]);
    let mut runs = Vec::new();
    for folded in [true, false] {
        let (model, p) = build(folded);
        let c = grad::compile(&model, &CompileOptions::default()).unwrap_or_else(|e| panic!("folded {folded}: {e}"));
        assert_eq!(c.features.len(), 5, "{:?}", c.features);
        assert_eq!(c.features[2], p, "the derived tensor is the feature");
        runs.push(GradSession::new(&c, &ort()).unwrap().run(x.view()).unwrap());
    }
    for (a, b) in runs[0].features.iter().zip(runs[1].features.iter()) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-3), "{a} vs {b}");
    }
}

/// A vision-transformer block in miniature: the conv map to tokens by a Reshape whose target
/// comes from a Shape subgraph (folded at compile time), a class token expanded to the batch
/// and concatenated, a position embedding, one qkv MatMul split three ways, softmax(q k^T) v,
/// then the class token (Gather) and every second token (strided Slice) pooled.
fn case_attention_with_shape_subgraphs() -> Case {
    chain(43, |n, x| {
        let sh = n.op("Shape", &[x], vec![]);
        let i0 = n.ints(&[0]);
        let batch = n.op("Gather", &[&sh, &i0], vec![attr::int("axis", 0)]); // [N] as a 1-D tensor
        let rest = n.ints(&[3, 36]);
        let target = n.op("Concat", &[&batch, &rest], vec![attr::int("axis", 0)]);
        let r = n.op("Reshape", &[x, &target], vec![]); // [3,36]
        let tok = n.op("Transpose", &[&r], vec![attr::ints("perm", &[0, 2, 1])]); // [36,3]
        let cls = n.param(&[1, 1, 3], 1.0);
        let one3 = n.ints(&[1, 3]);
        let cshape = n.op("Concat", &[&batch, &one3], vec![attr::int("axis", 0)]);
        let ce = n.op("Expand", &[&cls, &cshape], vec![]); // [1,3]
        let cat = n.op("Concat", &[&ce, &tok], vec![attr::int("axis", 1)]); // [37,3]
        let pos = n.param(&[1, 37, 3], 0.5);
        let t = n.op("Add", &[&cat, &pos], vec![]);
        let w = n.param(&[3, 12], 0.6);
        let qkv = n.op("MatMul", &[&t, &w], vec![]); // [37,12]
        let split = n.ints(&[4, 4, 4]);
        let (q, k, v) = (n.name_of("q"), n.name_of("k"), n.name_of("v"));
        n.nodes.push(onnx::make_node("Split", "n_split", &[&qkv, &split], &[&q, &k, &v], vec![attr::int("axis", 2)]));
        let kt = n.op("Transpose", &[&k], vec![attr::ints("perm", &[0, 2, 1])]);
        let a = n.op("MatMul", &[&q, &kt], vec![]); // [37,37]
        let sc = n.constant(&[], &[0.5]);
        let a = n.op("Mul", &[&a, &sc], vec![]);
        let p = n.op("Softmax", &[&a], vec![attr::int("axis", -1)]);
        let o = n.op("MatMul", &[&p, &v], vec![]); // [37,4]
        let i0s = n.scalar_int(0);
        let c = n.op("Gather", &[&o, &i0s], vec![attr::int("axis", 1)]); // [4]
        let (st, en, ax, step) = (n.ints(&[1]), n.ints(&[37]), n.ints(&[1]), n.ints(&[2]));
        let sl = n.op("Slice", &[&o, &st, &en, &ax, &step], vec![]); // [18,4]
        let m = n.op("ReduceMean", &[&sl], vec![attr::ints("axes", &[1]), attr::int("keepdims", 0)]); // [4]
        (n.op("Concat", &[&c, &m], vec![attr::int("axis", 1)]), 8)
    })
}

#[test]
fn attention_with_shape_subgraphs() {
    check(case_attention_with_shape_subgraphs());
}

/// Builds a finite-difference case.
type MakeCase = fn() -> Case;

/// Every finite-difference case (each is checked by the test of the same name).
/// Adaptive average pooling as PyTorch's dynamo exporter writes it when the output is not a
/// divisor of the map (VGG and AlexNet on small inputs): the map moved in front of the batch
/// (`[H, W, N, C]`), a `GatherND` of every window's pixels by constant indices, moved back and
/// averaged. Here 6x6 to 4x4 (windows of 2 that overlap).
fn case_gather_nd_adaptive_pooling() -> Case {
    chain(57, |n, x| {
        let hwnc = n.op("Transpose", &[x], vec![attr::ints("perm", &[2, 3, 0, 1])]);
        let start = |i: i64| i * 6 / 4;
        let mut idx = Vec::new();
        for i in 0..4 {
            for j in 0..4 {
                for a in 0..2 {
                    for b in 0..2 {
                        idx.extend([start(i) + a, start(j) + b]);
                    }
                }
            }
        }
        let name = n.name_of("windows");
        n.inits.push(onnx::make_tensor_i64(&name, &[4, 4, 2, 2, 2], &idx));
        let g = n.op("GatherND", &[&hwnc, &name], vec![]); // [4,4,2,2,N,3]
        let back = n.op("Transpose", &[&g], vec![attr::ints("perm", &[4, 5, 0, 1, 2, 3])]);
        (n.op("ReduceMean", &[&back], vec![attr::ints("axes", &[4, 5]), attr::int("keepdims", 0)]), 3 * 16)
    })
}

#[test]
fn gather_nd_adaptive_pooling() {
    check(case_gather_nd_adaptive_pooling());
}

/// A model of opset 9 (as the ONNX model zoo's classic files and older exporters write them),
/// read as opset 11: `Pad`, `Clip` and `Slice` with their bounds as attributes, `Upsample`
/// (nearest, scales as an input), BatchNormalization and Dropout.
fn case_opset9_attribute_forms() -> Case {
    let mut c = chain(59, |n, x| {
        let p = n.op("Pad", &[x], vec![attr::ints("pads", &[0, 0, 1, 0, 0, 0, 0, 1])]); // [3,7,7]
        let cl = n.op("Clip", &[&p], vec![attr::float("min", -0.3), attr::float("max", 0.4)]);
        let sl = n.op(
            "Slice",
            &[&cl],
            vec![attr::ints("starts", &[1, 2]), attr::ints("ends", &[5, 7]), attr::ints("axes", &[2, 3])],
        ); // [3,4,5]
        let scales = n.constant(&[4], &[1.0, 1.0, 2.0, 1.0]);
        let up = n.op("Upsample", &[&sl, &scales], vec![attr::string("mode", "nearest")]); // [3,8,5]
        let b = batchnorm(n, &up, 3);
        (n.op("Dropout", &[&b], vec![attr::float("ratio", 0.5)]), 3 * 40)
    });
    c.net.opset = 9;
    c
}

#[test]
fn opset9_attribute_forms() {
    check(case_opset9_attribute_forms());
}

/// Local response normalisation across channels (AlexNet, GoogLeNet v1): a window of 3, then
/// one of 5 over 4 channels (wider than the map's channels: zeros beyond the ends), with an alpha
/// large enough that the cross-channel term matters. ONNX Runtime takes odd sizes only.
fn case_local_response_norm() -> Case {
    chain(63, |n, x| {
        let attrs = |size: i64, alpha: f32| {
            vec![
                attr::int("size", size),
                attr::float("alpha", alpha),
                attr::float("beta", 0.75),
                attr::float("bias", 1.5),
            ]
        };
        let a = n.op("LRN", &[x], attrs(3, 2.0));
        let c = n.conv(&a, 3, 4, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
        (n.op("LRN", &[&c], attrs(5, 1.0)), 4 * 36)
    })
}

#[test]
fn local_response_norm() {
    check(case_local_response_norm());
}

/// GroupNormalization as opset 21 writes it (a scale and shift per channel: 4 channels in 2
/// groups) and as opset 18 did (one per group), over a map.
fn case_group_norm(opset: i64, per: usize) -> Case {
    let mut c = chain(64, |n, x| {
        let a = n.conv(x, 3, 4, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
        let (scale, shift) = (n.param(&[per], 0.8), n.param(&[per], 0.3));
        (n.op("GroupNormalization", &[&a, &scale, &shift], vec![attr::int("num_groups", 2)]), 4 * 36)
    });
    c.net.opset = opset;
    c
}

fn case_group_norm_per_channel() -> Case {
    case_group_norm(21, 4)
}

#[test]
fn group_norm_per_channel() {
    check(case_group_norm_per_channel());
}

#[test]
fn group_norm_per_group() {
    check(case_group_norm(18, 2));
}

const FD_CASES: &[(&str, MakeCase)] = &[
    ("group_norm_per_channel", case_group_norm_per_channel),
    ("local_response_norm", case_local_response_norm),
    ("trigonometric", case_trigonometric),
    ("hyperbolic_and_piecewise_constant", case_hyperbolic_and_piecewise_constant),
    ("opset9_attribute_forms", case_opset9_attribute_forms),
    ("opset11_attribute_axes", case_opset11_attribute_axes),
    ("gather_nd_adaptive_pooling", case_gather_nd_adaptive_pooling),
    ("batch_merged_and_moved", case_batch_merged_and_moved),
    ("conv_padded_with_bias", case_conv_padded_with_bias),
    ("conv_strided_dilated_asymmetric_pads", case_conv_strided_dilated_asymmetric_pads),
    ("conv_depthwise_and_grouped", case_conv_depthwise_and_grouped),
    ("conv_auto_pad_same_upper_and_lower", case_conv_auto_pad_same_upper_and_lower),
    ("conv_depthwise_plan", case_conv_depthwise_plan),
    ("conv_taps_on_padding_only", case_conv_taps_on_padding_only),
    ("conv_norm_formulations_agree", case_conv_norm_formulations_agree),
    ("batchnorm_relu_global_average_pool", case_batchnorm_relu_global_average_pool),
    ("residual_block_batchnorm_folds_into_convs", case_residual_block_batchnorm_folds_into_convs),
    ("batchnorm_fallbacks", case_batchnorm_fallbacks),
    ("activations", case_activations),
    ("relu6_as_clip", case_relu6_as_clip),
    ("elementwise_residual_and_broadcast", case_elementwise_residual_and_broadcast),
    ("max_pool_ceil_mode_padded", case_max_pool_ceil_mode_padded),
    ("max_pool_dilated", case_max_pool_dilated),
    ("max_pool_disjoint_windows", case_max_pool_disjoint_windows),
    ("average_pools", case_average_pools),
    ("reduce_mean_squeeze_unsqueeze_reshape_transpose", case_reduce_mean_squeeze_unsqueeze_reshape_transpose),
    ("nhwc_input_concat_pad_identity_dropout", case_nhwc_input_concat_pad_identity_dropout),
    ("gemm_variants_and_matmul_bias", case_gemm_variants_and_matmul_bias),
    ("matmul_on_sequences", case_matmul_on_sequences),
    ("trailing_softmax_is_skipped_and_bce_softmax_loss", case_trailing_softmax),
    ("folded_batchnorm_mul_add_and_bias_adds_count", case_folded_batchnorm),
    ("input_normalisation_counts_only_when_asked", case_input_normalisation),
    ("first_layer_concat_without_input_gradient", case_first_layer_concat),
    ("layernorm_erf_decomposed_norm_tanh", case_layernorm_erf_decomposed_norm_tanh),
    ("gelu_both_forms_and_pow", case_gelu_both_forms_and_pow),
    ("attention_with_shape_subgraphs", case_attention_with_shape_subgraphs),
    ("smooth_units_and_unary_arithmetic", case_smooth_units_and_unary_arithmetic),
    ("prelu_slopes", case_prelu_slopes),
    ("masks_and_where", case_masks_and_where),
    ("instance_and_group_norm", case_instance_and_group_norm),
    ("sum_and_max_reductions", case_sum_and_max_reductions),
    ("max_min_and_sum", case_max_min_and_sum),
    ("tile_activation_and_parameter", case_tile_activation_and_parameter),
    ("pad_reflect_and_edge", case_pad_reflect_and_edge),
    ("conv1d_channel_attention", case_conv1d_channel_attention),
    ("pad_and_expand_on_merged_batch", case_pad_and_expand_on_merged_batch),
    ("einsum_attention", case_einsum_attention),
    ("pooling_over_merged_windows", case_pooling_over_merged_windows),
    ("shared_computed_table_is_no_parameter", case_shared_computed_table_is_no_parameter),
    ("casts", case_casts),
    ("matmul_broadcast_heads", case_matmul_broadcast_heads),
    ("resize_nearest_and_linear", case_resize_nearest_and_linear),
    ("global_response_norm", case_global_response_norm),
];

/// `Cast` to float32 of an activation (a no-op, as EfficientViT's `q.float()` exports), and a
/// ReLU mask written as casts (`x.bool().float()`): float to bool carries no gradient.
fn case_casts() -> Case {
    chain(47, |n, x| {
        let f = n.op("Cast", &[x], vec![attr::int("to", onnx::data_type::FLOAT as i64)]);
        let r = n.op("Relu", &[&f], vec![]);
        let b = n.op("Cast", &[&r], vec![attr::int("to", onnx::data_type::BOOL as i64)]);
        let m = n.op("Cast", &[&b], vec![attr::int("to", onnx::data_type::FLOAT as i64)]);
        let t = n.op("Tanh", &[&f], vec![]);
        (n.op("Mul", &[&t, &m], vec![]), 3 * 36)
    })
}

#[test]
fn casts() {
    check(case_casts());
}

/// Multi-query attention: three query heads against one shared key and value head (`[N, 3, 6, 6]
/// x [N, 1, 6, 6]`, MobileNetV4's hybrid blocks), and the shared head on the left.
fn case_matmul_broadcast_heads() -> Case {
    chain(48, |n, x| {
        let q = n.op("Tanh", &[x], vec![]);
        let k = n.op("ReduceMean", &[x], vec![attr::ints("axes", &[1]), attr::int("keepdims", 1)]);
        let kt = n.op("Transpose", &[&k], vec![attr::ints("perm", &[0, 1, 3, 2])]);
        let s = n.op("MatMul", &[&q, &kt], vec![]);
        let p = n.op("Softmax", &[&s], vec![attr::int("axis", -1)]);
        let v = n.op("Sigmoid", &[&k], vec![]);
        let o = n.op("MatMul", &[&p, &v], vec![]);
        let left = n.op("MatMul", &[&v, &q], vec![]);
        (n.op("Add", &[&o, &left], vec![]), 3 * 36)
    })
}

#[test]
fn matmul_broadcast_heads() {
    check(case_matmul_broadcast_heads());
}

/// The batch merged with the channels and moved behind another axis, as attention writes it:
/// `[N,3,6,6] -> [N*3,6,6]` (heads) -> `[6,N*3,6]` (sequence-first) -> a weight `MatMul`, a
/// Softmax over the last axis, `Gemm` on `[6*N*3, 6]` (torchvision's output projection with its
/// bias), LayerNormalization, then back to `[N, 108]`. Stored batch-first by `grad/layout/`; every
/// weight is a per-sample feature and no sample mixes with another.
fn case_batch_merged_and_moved() -> Case {
    chain(51, |n, x| {
        let heads = n.ints(&[-1, 6, 6]);
        let h = n.op("Reshape", &[x, &heads], vec![]);
        let seq = n.op("Transpose", &[&h], vec![attr::ints("perm", &[1, 0, 2])]);
        let w = n.param(&[6, 6], 0.4);
        let m = n.op("MatMul", &[&seq, &w], vec![]);
        let p = n.op("Softmax", &[&m], vec![attr::int("axis", -1)]);
        let rows = n.ints(&[-1, 6]);
        let r = n.op("Reshape", &[&p, &rows], vec![]);
        let (gw, gb) = (n.param(&[6, 6], 0.4), n.param(&[6], 0.1));
        let g = n.op("Gemm", &[&r, &gw, &gb], vec![attr::int("transB", 1)]);
        let back = n.ints(&[6, -1, 6]);
        let b = n.op("Reshape", &[&g, &back], vec![]);
        let (ls, lb) = (n.param(&[6], 0.3), n.param(&[6], 0.1));
        let ln = n.op("LayerNormalization", &[&b, &ls, &lb], vec![attr::int("axis", -1)]);
        let first = n.op("Transpose", &[&ln], vec![attr::ints("perm", &[1, 0, 2])]);
        let flat = n.ints(&[-1, 108]);
        (n.op("Reshape", &[&first, &flat], vec![]), 108)
    })
}

#[test]
fn batch_merged_and_moved() {
    check(case_batch_merged_and_moved());
}

/// `Pad` and `Expand` of a tensor whose batch is merged with another axis (BoTNet's relative
/// position logits `[N*heads, ...]` padded then expanded over a new axis): `[N*3, 6, 6]` padded
/// on its last axis, unsqueezed and expanded three times along the new axis.
fn case_pad_and_expand_on_merged_batch() -> Case {
    chain(56, |n, x| {
        let t = n.ints(&[-1, 6, 6]);
        let r = n.op("Reshape", &[x, &t], vec![]);
        let pads = n.ints(&[0, 0, 0, 0, 0, 2]);
        let p = n.op("Pad", &[&r, &pads], vec![]); // [N*3, 6, 8]
        let a2 = n.ints(&[2]);
        let u = n.op("Unsqueeze", &[&p, &a2], vec![]); // [N*3, 6, 1, 8]
        let shape = n.ints(&[1, 1, 3, 1]);
        let e = n.op("Expand", &[&u, &shape], vec![]); // [N*3, 6, 3, 8]
        let back = n.ints(&[-1, 432]);
        (n.op("Reshape", &[&e, &back], vec![]), 432)
    })
}

#[test]
fn pad_and_expand_on_merged_batch() {
    check(case_pad_and_expand_on_merged_batch());
}

/// Attention written with `Einsum` (torchvision's MaxViT): scores `"nhid,nhjd->nhij"` of the map
/// and its tanh, a softmax, then `"nhij,nhjd->nhid"` back onto the map, in another index order
/// (`"nhji,nhjd->nhdi"` would transpose; this one does), then a linear layer `"nhid,ed->nhie"`.
fn case_einsum_attention() -> Case {
    chain(57, |n, x| {
        let q = x.to_string(); // [N, h=3, 6, 6]
        let t = n.op("Tanh", &[&q], vec![]);
        let s = n.op("Einsum", &[&q, &t], vec![attr::string("equation", "nhid,nhjd->nhij")]);
        let p = n.op("Softmax", &[&s], vec![attr::int("axis", -1)]);
        let o = n.op("Einsum", &[&p, &q], vec![attr::string("equation", "nhij,nhjd->nhdi")]); // [3,6,6]
                                                                                              // A linear layer as einsum: the weight `[e, d]` against every (n, h, i).
        let w = n.param(&[4, 6], 0.5);
        let l = n.op("Einsum", &[&o, &w], vec![attr::string("equation", "nhid,ed->nhie")]); // [3,6,4]
        let back = n.ints(&[-1, 72]);
        (n.op("Reshape", &[&l, &back], vec![]), 72)
    })
}

#[test]
fn einsum_attention() {
    check(case_einsum_attention());
}

/// A Conv over `[N*3, 1, 6, 6]` (the batch merged with the channels, as EfficientViT-M's
/// local-window attention convolves windows) compiles as a grouped Conv with one copy of the
/// weight per window: its features equal those of that grouped Conv written out (`[N, 3, 6, 6]`,
/// group 3, the weight repeated three times), whose own are checked against finite differences.
/// The weight's feature is the copies' (`<weight>/per3`): the windows' squared norms summed.
#[test]
fn a_conv_over_the_merged_batch_runs_per_window() {
    let merged = chain(52, |n, x| {
        let t = n.ints(&[-1, 1, 6, 6]);
        let r = n.op("Reshape", &[x, &t], vec![]);
        let w = n.param(&[1, 1, 3, 3], 0.3);
        let c = n.op("Conv", &[&r, &w], vec![attr::ints("pads", &[1, 1, 1, 1])]);
        let back = n.ints(&[-1, 108]);
        (n.op("Reshape", &[&c, &back], vec![]), 108)
    });
    let mut grouped = chain(52, |n, x| {
        let w = n.param(&[3, 1, 3, 3], 0.3);
        let c = n.op("Conv", &[x, &w], vec![attr::ints("pads", &[1, 1, 1, 1]), attr::int("group", 3)]);
        let back = n.ints(&[-1, 108]);
        (n.op("Reshape", &[&c, &back], vec![]), 108)
    });
    // The same values: the window weight three times, and the merged model's head.
    let value = |net: &Net, name: &str| net.inits.iter().find(|t| t.name == name).unwrap().clone();
    let (pm, pg) = (merged.net.params.clone(), grouped.net.params.clone());
    let w = onnx::tensor_f32(&value(&merged.net, &pm[2])).unwrap().iter().copied().collect::<Vec<f32>>().repeat(3);
    let mut replace = |name: &str, t: onnx::TensorProto| {
        let slot = grouped.net.inits.iter_mut().find(|x| x.name == name).unwrap();
        *slot = onnx::TensorProto { name: name.to_string(), ..t };
    };
    replace(&pg[2], onnx::make_tensor_f32(&pg[2], &[3, 1, 3, 3], &w));
    for k in [3, 4] {
        replace(&pg[k], value(&merged.net, &pm[k]));
    }
    let x = input(&mut crate::common::Rng::new(5), BATCH, &[2, 6, 6]);
    let run = |case: &Case| {
        let c = grad::compile(&case.net.model(&case.input, &case.out), &CompileOptions::default()).unwrap();
        (c.features.clone(), GradSession::new(&c, &ort()).unwrap().run(x.view()).unwrap())
    };
    let ((fm, om), (_, og)) = (run(&merged), run(&grouped));
    assert_eq!(fm[2], format!("{}/per3", pm[2]), "{fm:?}");
    for (a, b) in om.features.iter().zip(og.features.iter()) {
        assert!((a - b).abs() <= 1e-5 * b.abs().max(1e-6), "{a} vs {b}");
    }
    for (a, b) in om.logits.iter().zip(og.logits.iter()) {
        assert!((a - b).abs() <= 1e-5, "logits {a} vs {b}");
    }
    check(grouped);
}

/// Pooling over windows merged with the batch (`[N*3, 1, 6, 6]`): max, then average, pooling per
/// window, then the windows back into the sample.
fn case_pooling_over_merged_windows() -> Case {
    chain(58, |n, x| {
        let t = n.ints(&[-1, 1, 6, 6]);
        let r = n.op("Reshape", &[x, &t], vec![]);
        let m = n.op("MaxPool", &[&r], vec![attr::ints("kernel_shape", &[2, 2]), attr::ints("strides", &[2, 2])]);
        let a =
            n.op("AveragePool", &[&m], vec![attr::ints("kernel_shape", &[3, 3]), attr::ints("pads", &[1, 1, 1, 1])]);
        let back = n.ints(&[-1, 27]);
        (n.op("Reshape", &[&a, &back], vec![]), 27)
    })
}

#[test]
fn pooling_over_merged_windows() {
    check(case_pooling_over_merged_windows());
}

/// `Resize` as PyTorch exports `upsample_nearest2d` (asymmetric, floor) and
/// `upsample_bilinear2d` (pytorch_half_pixel; align_corners), down and up, and nearest with
/// half_pixel and round_prefer_ceil, then bicubic (`upsample_bicubic2d`; and with
/// `exclude_outside`): `[3,6,6] -> [3,12,12] -> [3,6,9] -> [3,9,9] -> [3,4,4] -> [3,7,6] -> [3,3,3]`.
fn case_resize_nearest_and_linear() -> Case {
    chain(49, |n, x| {
        let s = |n: &mut Net, v: &[f32]| n.constant(&[4], v);
        let resize = |n: &mut Net, x: &str, scales: &[f32], mode: &str, ctm: &str, nearest: &str| {
            let sc = s(n, scales);
            let attrs = vec![
                attr::string("mode", mode),
                attr::string("coordinate_transformation_mode", ctm),
                attr::string("nearest_mode", nearest),
            ];
            n.op("Resize", &[x, "", &sc], attrs)
        };
        let t = n.op("Tanh", &[x], vec![]);
        let a = resize(n, &t, &[1.0, 1.0, 2.0, 2.0], "nearest", "asymmetric", "floor");
        let b = resize(n, &a, &[1.0, 1.0, 0.5, 0.75], "linear", "pytorch_half_pixel", "floor");
        let c = resize(n, &b, &[1.0, 1.0, 1.5, 1.0], "linear", "align_corners", "floor");
        let d = resize(n, &c, &[1.0, 1.0, 0.5, 0.5], "nearest", "half_pixel", "round_prefer_ceil");
        // Bicubic as PyTorch exports it (a = -0.75), up; then with taps outside dropped, down.
        let e = resize(n, &d, &[1.0, 1.0, 1.75, 1.5], "cubic", "pytorch_half_pixel", "floor");
        let sc = s(n, &[1.0, 1.0, 0.5, 0.5]);
        let attrs =
            vec![attr::string("mode", "cubic"), attr::float("cubic_coeff_a", -0.5), attr::int("exclude_outside", 1)];
        (n.op("Resize", &[&e, "", &sc], attrs), 3 * 9)
    })
}

#[test]
fn resize_nearest_and_linear() {
    check(case_resize_nearest_and_linear());
}

/// ConvNeXtV2's global response norm: `x * (g / (mean_c g + eps)) + x` with `g = ||x||_2` over
/// the spatial axes (`ReduceL2`).
fn case_global_response_norm() -> Case {
    chain(51, |n, x| {
        let g = n.op("ReduceL2", &[x], vec![attr::ints("axes", &[2, 3]), attr::int("keepdims", 1)]);
        let m = n.op("ReduceMean", &[&g], vec![attr::ints("axes", &[1]), attr::int("keepdims", 1)]);
        let eps = n.constant(&[], &[1e-6]);
        let d = n.op("Add", &[&m, &eps], vec![]);
        let nx = n.op("Div", &[&g, &d], vec![]);
        let xn = n.op("Mul", &[x, &nx], vec![]);
        (n.op("Add", &[&xn, x], vec![]), 3 * 36)
    })
}

#[test]
fn global_response_norm() {
    check(case_global_response_norm());
}

/// A Resize to literal sizes `[1, C, H, W]` would return one sample for any batch: refused.
#[test]
fn resize_to_a_literal_batch_is_refused() {
    let case = chain(50, |n, x| {
        let sizes = n.ints(&[1, 3, 12, 12]);
        (n.op("Resize", &[x, "", "", &sizes], vec![attr::string("mode", "nearest")]), 3 * 144)
    });
    let err = grad::compile(&case.net.model(&case.input, &case.out), &CompileOptions::default()).unwrap_err();
    assert!(err.to_string().contains("Resize changes the batch axis"), "{err}");
}

/// Operators whose gradient is by definition not the derivative of their forward (quantization
/// rounds: its finite differences are 0 or a jump), checked instead against the gradient of a
/// float network with the same forward values (`quantized_activations_pass_the_gradient_straight_through`).
const STRAIGHT_THROUGH: [&str; 2] = ["QuantizeLinear", "DequantizeLinear"];

/// Adding a rule to the compiler without a finite-difference case using its operator (or a
/// parameter kind no case produces) fails here.
#[test]
fn fd_cases_cover_every_rule() {
    let mut ops: HashSet<String> = HashSet::new();
    let mut kinds: HashSet<ParamKind> = HashSet::new();
    for (name, make) in FD_CASES {
        let case = make();
        ops.extend(case.net.nodes.iter().map(|n| n.op_type.clone()));
        let opts = CompileOptions { params: ParamSelection::all(), ..Default::default() };
        let c = grad::compile(&case.net.model(&case.input, &case.out), &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        kinds.extend(c.feature_kinds);
    }
    ops.extend(STRAIGHT_THROUGH.iter().map(|op| op.to_string()));
    let missing: Vec<&str> = grad::SUPPORTED_OPS.iter().filter(|op| !ops.contains(**op)).copied().collect();
    assert!(missing.is_empty(), "operators with no finite-difference case in FD_CASES: {missing:?}");
    let missing: Vec<&str> = ParamKind::ALL.iter().filter(|k| !kinds.contains(k)).map(|k| k.name()).collect();
    assert!(missing.is_empty(), "parameter kinds with no finite-difference case in FD_CASES: {missing:?}");
}

/// An activation written out in elementary operators (as opset 17 exports GELU, and as SiLU
/// is written `x * sigmoid(x)`) gives the same forward-only statistic as the operator would: its
/// output (after Erf-GELU's `* 0.5`), one per stage; tanh-GELU's `x + 0.044715 x^3` is no
/// residual join.
#[test]
fn written_out_activations_give_their_stage_statistic() {
    type Form = fn(&mut Net, &str) -> String;
    fn erf_gelu(n: &mut Net, x: &str) -> String {
        let r2 = n.constant(&[], &[std::f32::consts::SQRT_2]);
        let (one, half) = (n.constant(&[], &[1.0]), n.constant(&[], &[0.5]));
        let d = n.op("Div", &[x, &r2], vec![]);
        let e = n.op("Erf", &[&d], vec![]);
        let a = n.op("Add", &[&e, &one], vec![]);
        let m = n.op("Mul", &[x, &a], vec![]);
        n.op("Mul", &[&m, &half], vec![])
    }
    fn tanh_gelu(n: &mut Net, x: &str) -> String {
        let (three, c) = (n.constant(&[], &[3.0]), n.constant(&[], &[0.044715]));
        let (k, one, half) = (n.constant(&[], &[0.797_884_6]), n.constant(&[], &[1.0]), n.constant(&[], &[0.5]));
        let h = n.op("Mul", &[x, &half], vec![]);
        let cube = n.op("Pow", &[x, &three], vec![]);
        let inner = n.op("Mul", &[&cube, &c], vec![]);
        let sum = n.op("Add", &[x, &inner], vec![]);
        let t = n.op("Mul", &[&sum, &k], vec![]);
        let t = n.op("Tanh", &[&t], vec![]);
        let a = n.op("Add", &[&t, &one], vec![]);
        n.op("Mul", &[&h, &a], vec![])
    }
    fn silu(n: &mut Net, x: &str) -> String {
        let s = n.op("Sigmoid", &[x], vec![]);
        n.op("Mul", &[x, &s], vec![])
    }
    fn gelu_op(n: &mut Net, x: &str) -> String {
        n.op("Tanh", &[x], vec![])
    }
    let forms: [(&str, Form); 4] = [("erf", erf_gelu), ("tanh", tanh_gelu), ("silu", silu), ("operator", gelu_op)];
    for (name, act) in forms {
        let mut net = Net::new(7);
        let c1 = net.conv("x", 2, 3, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
        let a1 = act(&mut net, &c1);
        let c2 = net.conv(&a1, 3, 4, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1]), attr::ints("strides", &[2, 2])]);
        let a2 = act(&mut net, &c2);
        let out = net.head(&a2, 4 * 9, CLASSES);
        let model = net.model(&[2, 6, 6], &out);
        let opts = CompileOptions { act_stats: true, ..Default::default() };
        let c = grad::compile(&model, &opts).unwrap_or_else(|e| panic!("{name}: {e}"));
        let want: Vec<String> = [&a1, &a2].iter().map(|t| format!("{}{t}", grad::ACT_PREFIX)).collect();
        assert_eq!(c.act_stats, want, "{name}");
    }
}

/// The `fast` preset on a two-stage net (a residual block at 6x6, then a strided conv to 2x2):
/// only the last stage's and the head's norms, each equal to the finite differences of the
/// full model, then the mean squares of the residual block's output and of the 2x2 stage's
/// activation (checked against the forward).
#[test]
fn fast_preset_last_stage_matches_finite_differences() {
    let case = case_residual_block_batchnorm_folds_into_convs();
    let model = case.net.model(&case.input, &case.out);
    let fast = grad::compile(&model, &CompileOptions::preset(grad::Preset::Fast)).unwrap();
    assert_eq!(fast.preset, "fast");
    assert_eq!(grad::preset_name(&fast.model), "fast");
    let norms = &fast.features[..fast.features.len() - fast.act_stats.len()];
    // The strided conv, its BatchNormalization and the head; nothing of the 6x6 stage.
    let full = grad::compile(&model, &CompileOptions::default()).unwrap();
    assert!(norms.len() >= 3 && norms.len() < full.features.len(), "{norms:?}");
    let first_conv = &case.net.params[0];
    assert!(!norms.contains(first_conv), "{norms:?}");
    // The residual join's output, and the 2x2 stage's (no residual join there) last Conv
    // activation: the strided conv's BatchNormalization + Relu.
    assert_eq!(fast.act_stats.len(), 2, "{:?}", fast.act_stats);
    let last_relu = case.net.nodes.iter().rev().find(|n| n.op_type == "Relu").unwrap();
    assert_eq!(fast.act_stats[1], format!("{}{}", grad::ACT_PREFIX, last_relu.output[0]));
    let mut rng = crate::common::Rng::new(99);
    let x: ArrayD<f32> = input(&mut rng, BATCH, &case.input);
    let got = GradSession::new(&fast, &ort()).unwrap().run(x.view()).unwrap();
    let (fd, _) = finite_differences(&case.net, &model, &x, &case.out, &[1.0; CLASSES], false, 2e-3);
    for (j, p) in norms.iter().enumerate() {
        let i = case.net.params.iter().position(|q| q == p).unwrap();
        for k in 0..BATCH {
            let (g, e) = (got.features[[k, j]] as f64, fd[i][k]);
            assert!(
                (g - e).abs() <= 2e-2 * e.abs() + 1e-7,
                "param {p} sample {k}: fast {g:e}, finite differences {e:e}"
            );
        }
    }
    // Each statistic: the mean of the squared tensor, from a forward run that outputs it.
    for (j, stat) in fast.act_stats.iter().enumerate() {
        let act = stat.strip_prefix(grad::ACT_PREFIX).unwrap();
        let fwd = case.net.model(&case.input, act);
        let mut s = gradwatch::runtime::ModelSession::new(&gradwatch::onnx::encode(&fwd), &ort()).unwrap();
        let y = s.run(&[("x", x.view())]).unwrap().remove(act).unwrap();
        let per = y.len() / BATCH;
        for k in 0..BATCH {
            let want: f64 =
                y.as_slice().unwrap()[k * per..(k + 1) * per].iter().map(|&v| (v as f64).powi(2)).sum::<f64>()
                    / per as f64;
            let g = got.features[[k, norms.len() + j]] as f64;
            assert!((g - want).abs() <= 1e-5 * want.abs() + 1e-9, "{stat} sample {k}: {g} vs {want}");
        }
    }
    // The stage cut by itself (`--stages 2` keeps both stages: every norm of the full graph).
    let two = grad::compile(&model, &CompileOptions { stages: Some(2), ..Default::default() }).unwrap();
    assert_eq!(two.features, full.features);
    assert_eq!(two.preset, "custom");
}

/// Two BatchNormalizations of one width reading one scale, shift, mean and variance tensor (the
/// dynamo exporter merges equal initializers: an untrained torchvision DenseNet-121 shares 62)
/// compile to the features of the same model with a copy per layer: one feature per use.
#[test]
fn an_initializer_shared_by_two_layers_is_one_feature_per_layer() {
    let mut net = Net::new(31);
    let c1 = net.conv("x", 2, 3, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
    let (scale, shift) = (net.param(&[3], 1.0), net.param(&[3], 0.5));
    let (mean, var) = (net.constant(&[3], &[0.1, -0.2, 0.3]), net.constant(&[3], &[0.7, 1.1, 0.9]));
    let eps = || vec![attr::float("epsilon", 1e-3)];
    let b1 = net.op("BatchNormalization", &[&c1, &scale, &shift, &mean, &var], eps());
    let r = net.op("Relu", &[&b1], vec![]);
    let c2 = net.conv(&r, 3, 3, 3, false, vec![attr::ints("pads", &[1, 1, 1, 1])]);
    let b2 = net.op("BatchNormalization", &[&c2, &scale, &shift, &mean, &var], eps());
    let out = net.head(&b2, 3 * 36, CLASSES);
    let shared = net.model(&[2, 6, 6], &out);

    // The same model with the second layer's tensors copied under their own names.
    let mut copied = shared.clone();
    let g = copied.graph.as_mut().unwrap();
    let second = g.node.iter().rposition(|n| n.op_type == "BatchNormalization").unwrap();
    for i in 1..5 {
        let name = g.node[second].input[i].clone();
        let mut t = g.initializer.iter().find(|t| t.name == name).unwrap().clone();
        t.name = format!("{name}_copy");
        g.node[second].input[i] = t.name.clone();
        g.initializer.push(t);
    }

    let opts = CompileOptions::default();
    let a = grad::compile(&shared, &opts).unwrap();
    let b = grad::compile(&copied, &opts).unwrap();
    assert_eq!(a.features.len(), b.features.len());
    for (fa, fb) in a.features.iter().zip(&b.features) {
        let want = if fb.ends_with("_copy") { format!("{}/use2", fb.trim_end_matches("_copy")) } else { fb.clone() };
        assert_eq!(*fa, want);
    }
    let x: ArrayD<f32> = input(&mut crate::common::Rng::new(5), BATCH, &[2, 6, 6]);
    let fa = GradSession::new(&a, &ort()).unwrap().run(x.view()).unwrap().features;
    let fb = GradSession::new(&b, &ort()).unwrap().run(x.view()).unwrap().features;
    for (u, v) in fa.iter().zip(fb.iter()) {
        assert!((u - v).abs() <= 1e-5 * v.abs().max(1e-6), "{u} vs {v}");
    }
}

/// A quantize-dequantize (QDQ) network against a float one with the same forward values and
/// the gradient quantization-aware training defines (the straight-through estimator): every
/// value integral, so an int8 `QuantizeLinear -> DequantizeLinear` pair of scale 1 is exactly
/// `Clip(x, -128, 127)`, whose gradient is the pair's (values are even, so none sits on the
/// bound 127 where `Clip`'s strict mask and the pair's inclusive one differ). About half of
/// the first Conv's outputs exceed 127, so the clipped values' zero gradient is exercised. The
/// first Conv's weight is stored as int8 with per-channel scales of 2 and read through a
/// `DequantizeLinear` (folded: its feature is the dequantized weight's, under that node's output
/// name), or stored as float and quantized in the graph; a second pair (uint8, zero point 3,
/// scale 1) after the ReLU clips nothing.
#[test]
fn quantized_activations_pass_the_gradient_straight_through() {
    use onnx::data_type::{INT8, UINT8};
    let mut rng = crate::common::Rng::new(7);
    let mut draw = |k: usize, levels: f32| -> Vec<f32> {
        (0..k).map(|_| ((rng.uniform() + 1.0) * 0.5 * levels).floor().min(levels - 1.0)).collect()
    };
    let (cin, cout, k) = (3, 4, 3);
    let wq = draw(cout * cin * k * k, 4.0); // 0..=3, dequantized to 0, 2, 4, 6
    let w2 = draw(cout * cout, 3.0).iter().map(|v| v - 1.0).collect::<Vec<f32>>();
    let x = ArrayD::from_shape_vec(vec![BATCH, cin, 6, 6], draw(BATCH * cin * 36, 4.0)).unwrap();
    let int8 = |name: &str, t: i32, dims: &[i64], v: &[f32]| onnx::TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: t,
        raw_data: v.iter().map(|&x| x as i8 as u8).collect(),
        ..Default::default()
    };
    // kind 0: QDQ; 1: the float reference with Clip; 2: float without Clip (must differ); 3: QDQ
    // with the weight quantized in the graph.
    let build = |kind: usize| {
        let mut n = Net::new(1);
        let w1 = "w1_dequantized".to_string();
        if kind == 0 || kind == 3 {
            let s = n.constant(&[cout], &[2.0; 4]);
            n.inits.push(int8("w1_zp", INT8, &[cout as i64], &[0.0; 4]));
            let axis = || vec![attr::int("axis", 0)];
            if kind == 0 {
                n.inits.push(int8("w1_q", INT8, &[cout as i64, cin as i64, k as i64, k as i64], &wq));
            } else {
                // As quantization-aware training exports it: the float weight, quantized in the
                // graph (off the grid by less than half a step, so it rounds back to `wq`).
                let w: Vec<f32> = wq.iter().enumerate().map(|(i, v)| v * 2.0 + 0.9 * ((i % 3) as f32 - 1.0)).collect();
                n.inits.push(onnx::make_tensor_f32("w1_f", &[cout, cin, k, k], &w));
                n.nodes.push(onnx::make_node("QuantizeLinear", "q_w1", &["w1_f", &s, "w1_zp"], &["w1_q"], axis()));
            }
            n.nodes.push(onnx::make_node("DequantizeLinear", "dq_w1", &["w1_q", &s, "w1_zp"], &[&w1], axis()));
        } else {
            let w: Vec<f32> = wq.iter().map(|v| v * 2.0).collect();
            n.inits.push(onnx::make_tensor_f32(&w1, &[cout, cin, k, k], &w));
        }
        let c1 = n.op("Conv", &["x", &w1], vec![attr::ints("pads", &[1, 1, 1, 1])]);
        let one = n.constant(&[], &[1.0]);
        let pair = |n: &mut Net, x: &str, t: i32, zp: f32| {
            n.inits.push(int8(&format!("zp_{x}"), t, &[], &[zp]));
            let q = n.op("QuantizeLinear", &[x, &one, &format!("zp_{x}")], vec![]);
            n.op("DequantizeLinear", &[&q, &one, &format!("zp_{x}")], vec![])
        };
        let a = match kind {
            0 | 3 => pair(&mut n, &c1, INT8, 0.0),
            1 => {
                let (lo, hi) = (n.constant(&[], &[-128.0]), n.constant(&[], &[127.0]));
                n.op("Clip", &[&c1, &lo, &hi], vec![])
            }
            _ => c1,
        };
        let r = n.op("Relu", &[&a], vec![]);
        let r = if kind == 0 || kind == 3 { pair(&mut n, &r, UINT8, 3.0) } else { r };
        let w2 = n.constant(&[cout, cout, 1, 1], &w2);
        let c2 = n.op("Conv", &[&r, &w2], vec![]);
        let p = n.op("GlobalAveragePool", &[&c2], vec![]);
        // Logits of order 1 (the sigmoid not saturated).
        let small = n.constant(&[], &[0.02]);
        let p = n.op("Mul", &[&p, &small], vec![]);
        let out = n.head(&p, cout, CLASSES);
        n.model(&[cin, 6, 6], &out)
    };
    let run = |kind: usize| {
        let c = grad::compile(&build(kind), &CompileOptions::default()).unwrap_or_else(|e| panic!("{kind}: {e}"));
        let got = GradSession::new(&c, &ort()).unwrap().run(x.view()).unwrap();
        (c.features, got.features, got.logits)
    };
    let (qdq, clip, plain) = (run(0), run(1), run(2));
    // The same features (the other names are the builder's counters), the first Conv's weight
    // under its DequantizeLinear output name.
    assert_eq!((qdq.0.len(), &qdq.0[0]), (clip.0.len(), &clip.0[0]), "{:?} vs {:?}", qdq.0, clip.0);
    assert_eq!(qdq.0[0], "w1_dequantized");
    let close = |a: &ndarray::Array2<f32>, b: &ndarray::Array2<f32>| {
        a.iter().zip(b.iter()).all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs().max(1e-3))
    };
    assert!(close(&qdq.2, &clip.2), "forward: {:?} vs {:?}", qdq.2, clip.2);
    assert!(close(&qdq.1, &clip.1), "features: {:?} vs {:?}", qdq.1, clip.1);
    assert!(!close(&plain.1, &clip.1), "the first Conv's outputs must reach the clipped range");
    let qat = run(3);
    assert_eq!(qat.0, qdq.0);
    assert!(close(&qat.1, &qdq.1) && close(&qat.2, &qdq.2), "a weight quantized in the graph folds to the same");
}
