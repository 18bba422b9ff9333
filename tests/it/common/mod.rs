//! Small ONNX models built in code, and finite-difference gradients through ONNX Runtime.
#![allow(dead_code, clippy::needless_range_loop)] // index loops mirror the maths

pub mod daemon;
pub mod http;

use std::collections::HashMap;

use gradwatch::onnx::{self, attr, AttributeProto, GraphProto, ModelProto, OperatorSetIdProto, TensorProto};
use gradwatch::rng::SplitMix64;
use gradwatch::runtime::{ModelSession, RuntimeOptions};
use ndarray::{ArrayD, IxDyn};

/// The library's generator ([`SplitMix64`]) for weights and inputs, drawing uniform in
/// [-1, 1) as these tests' models and goldens expect.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::new(seed))
    }
    /// Uniform in [-1, 1).
    pub fn uniform(&mut self) -> f32 {
        self.0.range(-1.0, 1.0)
    }
}

/// Builds a small model: parameters are initializers that are also graph inputs, so the
/// finite-difference runs can override them through the feed.
pub struct Net {
    pub nodes: Vec<onnx::NodeProto>,
    pub inits: Vec<TensorProto>,
    pub params: Vec<String>,
    pub rng: Rng,
    n: usize,
    pub opset: i64,
}

impl Net {
    pub fn new(seed: u64) -> Self {
        Net { nodes: vec![], inits: vec![], params: vec![], rng: Rng::new(seed), n: 0, opset: 17 }
    }

    fn name(&mut self, hint: &str) -> String {
        self.n += 1;
        format!("{hint}{}", self.n)
    }

    /// A trainable tensor with values uniform in [-scale, scale).
    pub fn param(&mut self, dims: &[usize], scale: f32) -> String {
        let name = self.name("p");
        let n: usize = dims.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.rng.uniform() * scale).collect();
        self.inits.push(onnx::make_tensor_f32(&name, dims, &v));
        self.params.push(name.clone());
        name
    }

    /// A fixed float constant.
    pub fn constant(&mut self, dims: &[usize], values: &[f32]) -> String {
        let name = self.name("c");
        self.inits.push(onnx::make_tensor_f32(&name, dims, values));
        name
    }

    /// A fixed int64 constant.
    pub fn ints(&mut self, values: &[i64]) -> String {
        let name = self.name("i");
        self.inits.push(onnx::make_tensor_i64(&name, &[values.len()], values));
        name
    }

    /// A fresh value name (for nodes with several outputs).
    pub fn name_of(&mut self, hint: &str) -> String {
        self.name(hint)
    }

    /// An int64 scalar constant (shape `[]`).
    pub fn scalar_int(&mut self, v: i64) -> String {
        let name = self.name("s");
        self.inits.push(onnx::make_tensor_i64(&name, &[], &[v]));
        name
    }

    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.name(&op.to_lowercase());
        let nn = format!("n_{out}");
        self.nodes.push(onnx::make_node(op, &nn, inputs, &[&out], attrs));
        out
    }

    /// Conv with a fresh weight (and bias when `bias`).
    pub fn conv(
        &mut self,
        x: &str,
        cin: usize,
        cout: usize,
        k: usize,
        bias: bool,
        attrs: Vec<AttributeProto>,
    ) -> String {
        let group = attrs.iter().find(|a| a.name == "group").map(|a| a.i as usize).unwrap_or(1);
        let w = self.param(&[cout, cin / group, k, k], 0.5);
        if bias {
            let b = self.param(&[cout], 0.2);
            self.op("Conv", &[x, &w, &b], attrs)
        } else {
            self.op("Conv", &[x, &w], attrs)
        }
    }

    /// Flatten then Gemm to `classes` logits.
    pub fn head(&mut self, x: &str, features: usize, classes: usize) -> String {
        let f = self.op("Flatten", &[x], vec![attr::int("axis", 1)]);
        let w = self.param(&[classes, features], 0.4);
        let b = self.param(&[classes], 0.2);
        self.op("Gemm", &[&f, &w, &b], vec![attr::int("transB", 1)])
    }

    /// The model with input `x` of per-sample dims `input` and output `out`.
    pub fn model(&self, input: &[usize], out: &str) -> ModelProto {
        let mut in_dims = vec![None];
        in_dims.extend(input.iter().map(|&d| Some(d as i64)));
        let mut inputs = vec![onnx::make_value_info("x", onnx::data_type::FLOAT, &in_dims)];
        for t in &self.inits {
            if self.params.contains(&t.name) {
                let d: Vec<Option<i64>> = t.dims.iter().map(|&v| Some(v)).collect();
                inputs.push(onnx::make_value_info(&t.name, onnx::data_type::FLOAT, &d));
            }
        }
        ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: self.opset }],
            producer_name: "gradwatch tests".into(),
            graph: Some(GraphProto {
                node: self.nodes.clone(),
                name: "test".into(),
                initializer: self.inits.clone(),
                input: inputs,
                output: vec![onnx::make_value_info(out, onnx::data_type::FLOAT, &[None, None])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}

/// Loads ONNX Runtime (fetched by `make ort` into .ort/host, or ORT_DYLIB_PATH).
pub fn ort() -> RuntimeOptions {
    gradwatch::runtime::init(None).expect("ONNX Runtime: run `make ort` or set ORT_DYLIB_PATH");
    RuntimeOptions { threads: 1, ..Default::default() }
}

/// Random input batch.
pub fn input(rng: &mut Rng, n: usize, dims: &[usize]) -> ArrayD<f32> {
    let mut d = vec![n];
    d.extend(dims);
    let count: usize = d.iter().product();
    ArrayD::from_shape_vec(IxDyn(&d), (0..count).map(|_| rng.uniform()).collect()).unwrap()
}

fn softplus(v: f64) -> f64 {
    if v > 30.0 {
        v
    } else {
        v.exp().ln_1p()
    }
}

/// Per-sample loss of a logits row: binary cross-entropy against `label` on the logits, or on
/// the softmax probabilities when `softmax`.
pub fn loss(z: &[f32], label: &[f32], softmax: bool) -> f64 {
    let c = z.len() as f64;
    if softmax {
        let m = z.iter().fold(f64::MIN, |a, &b| a.max(b as f64));
        let e: Vec<f64> = z.iter().map(|&v| (v as f64 - m).exp()).collect();
        let s: f64 = e.iter().sum();
        -e.iter()
            .zip(label)
            .map(|(&ei, &y)| {
                let p = ei / s;
                y as f64 * p.ln() + (1.0 - y as f64) * (1.0 - p).ln()
            })
            .sum::<f64>()
            / c
    } else {
        z.iter()
            .zip(label)
            .map(|(&v, &y)| y as f64 * softplus(-v as f64) + (1.0 - y as f64) * softplus(v as f64))
            .sum::<f64>()
            / c
    }
}

/// Per-sample losses of the forward model with some tensors overridden.
fn losses(
    s: &mut ModelSession,
    x: &ArrayD<f32>,
    over: &HashMap<String, ArrayD<f32>>,
    out: &str,
    label: &[f32],
    softmax: bool,
) -> Vec<f64> {
    let mut feed: Vec<(&str, ndarray::ArrayViewD<f32>)> = vec![("x", x.view())];
    for (k, v) in over {
        feed.push((k.as_str(), v.view()));
    }
    let r = s.run(&feed).unwrap();
    let z = &r[out];
    z.outer_iter().map(|row| loss(row.as_slice().unwrap(), label, softmax)).collect()
}

/// Finite-difference per-sample squared gradient norms of every parameter, `[param][sample]`,
/// and the input gradient `[sample][element]`.
pub fn finite_differences(
    net: &Net,
    model: &ModelProto,
    x: &ArrayD<f32>,
    out: &str,
    label: &[f32],
    softmax: bool,
    eps: f32,
) -> (Vec<Vec<f64>>, Vec<Vec<f64>>) {
    let opts = ort();
    let bytes = onnx::encode(model);
    let mut s = ModelSession::new(&bytes, &opts).unwrap();
    let n = x.shape()[0];
    let mut norms = Vec::new();
    for p in &net.params {
        let t = net.inits.iter().find(|t| &t.name == p).unwrap();
        let base = onnx::tensor_f32(t).unwrap();
        let mut acc = vec![0.0f64; n];
        for i in 0..base.len() {
            let mut plus = base.clone();
            plus.as_slice_mut().unwrap()[i] += eps;
            let mut minus = base.clone();
            minus.as_slice_mut().unwrap()[i] -= eps;
            let lp = losses(&mut s, x, &HashMap::from([(p.clone(), plus)]), out, label, softmax);
            let lm = losses(&mut s, x, &HashMap::from([(p.clone(), minus)]), out, label, softmax);
            for k in 0..n {
                let g = (lp[k] - lm[k]) / (2.0 * eps as f64);
                acc[k] += g * g;
            }
        }
        norms.push(acc);
    }
    let per = x.len() / n;
    let mut input_grad = vec![vec![0.0; per]; n];
    for i in 0..per {
        let mut xp = x.clone();
        let mut xm = x.clone();
        for k in 0..n {
            xp.as_slice_mut().unwrap()[k * per + i] += eps;
            xm.as_slice_mut().unwrap()[k * per + i] -= eps;
        }
        let lp = losses(&mut s, &xp, &HashMap::new(), out, label, softmax);
        let lm = losses(&mut s, &xm, &HashMap::new(), out, label, softmax);
        for k in 0..n {
            input_grad[k][i] = (lp[k] - lm[k]) / (2.0 * eps as f64);
        }
    }
    (norms, input_grad)
}

/// Conv(3->4, 3x3) -> Relu -> GlobalAveragePool -> Gemm(4 -> 5 classes) on 16x16 RGB: the
/// smallest image classifier the offline commands accept.
#[allow(dead_code)] // not every test binary uses it
pub fn tiny_model(seed: u64) -> ModelProto {
    let mut n = Net::new(seed);
    let c = n.conv("x", 3, 4, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
    let r = n.op("Relu", &[&c], vec![]);
    let p = n.op("GlobalAveragePool", &[&r], vec![]);
    let z = n.head(&p, 4, 5);
    n.model(&[3, 16, 16], &z)
}

/// How [`half_model`] writes a float32 model in half precision.
#[derive(Clone, Copy, Debug)]
pub enum Half {
    /// Still float32, every float tensor rounded to the nearest float16 (the reference).
    Rounded,
    /// Float16 weights and constants, a Cast to float16 after the input and back to float32
    /// before the first output (`onnxconverter-common` with `keep_io_types`).
    Io32,
    /// As `Io32`, with the graph's input and first output declared float16 instead.
    Io16,
}

/// `model` in half precision, as `form` says (every float initializer and Constant-node tensor).
pub fn half_model(model: &ModelProto, form: Half) -> ModelProto {
    use onnx::data_type;
    let half = |t: &mut TensorProto| {
        if t.data_type != data_type::FLOAT {
            return;
        }
        let v = onnx::tensor_f32(t).unwrap();
        let h: Vec<half::f16> = v.iter().map(|&x| half::f16::from_f32(x)).collect();
        *t = match form {
            Half::Rounded => {
                let dims: Vec<usize> = v.shape().to_vec();
                onnx::make_tensor_f32(&t.name, &dims, &h.iter().map(|x| x.to_f32()).collect::<Vec<_>>())
            }
            Half::Io32 | Half::Io16 => {
                let raw = h.iter().flat_map(|x| x.to_le_bytes()).collect();
                TensorProto {
                    name: t.name.clone(),
                    dims: t.dims.clone(),
                    data_type: data_type::FLOAT16,
                    raw_data: raw,
                    ..Default::default()
                }
            }
        };
    };
    let mut m = model.clone();
    let g = m.graph.as_mut().unwrap();
    g.initializer.iter_mut().for_each(half);
    g.node.iter_mut().flat_map(|n| n.attribute.iter_mut()).filter_map(|a| a.t.as_mut()).for_each(half);
    if let Half::Rounded = form {
        return m;
    }
    let (input, out) = (g.input[0].name.clone(), g.output[0].name.clone());
    let (input_h, out_h) = (format!("{input}_h"), format!("{out}_h"));
    for n in g.node.iter_mut() {
        n.input.iter_mut().filter(|i| **i == input).for_each(|i| *i = input_h.clone());
        n.output.iter_mut().filter(|o| **o == out).for_each(|o| *o = out_h.clone());
    }
    let to = |t: i32| vec![attr::int("to", i64::from(t))];
    g.node.insert(0, onnx::make_node("Cast", "in_cast", &[&input], &[&input_h], to(data_type::FLOAT16)));
    g.node.push(onnx::make_node("Cast", "out_cast", &[&out_h], &[&out], to(data_type::FLOAT)));
    g.value_info.clear();
    if let Half::Io16 = form {
        for v in [&mut g.input[0], &mut g.output[0]] {
            if let Some(t) = v.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()) {
                t.elem_type = data_type::FLOAT16;
            }
        }
    }
    m
}
