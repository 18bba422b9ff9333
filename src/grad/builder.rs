//! Emits ONNX nodes and constants for the backward graph, with fresh names and the
//! operator signatures of the model's opset.

use std::collections::HashSet;

use crate::onnx::{self, attr, AttributeProto, NodeProto, TensorProto};

/// Accumulates the nodes and initializers that the compiler adds.
pub(crate) struct Builder {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    taken: HashSet<String>,
    counter: usize,
    /// Default-domain opset of the model (>= 13).
    pub opset: i64,
}

impl Builder {
    pub fn new(opset: i64, taken: HashSet<String>) -> Self {
        Self { nodes: Vec::new(), inits: Vec::new(), taken, counter: 0, opset }
    }

    /// A name not used anywhere in the model, prefixed `gw/`.
    pub fn fresh(&mut self, hint: &str) -> String {
        loop {
            self.counter += 1;
            let name = format!("gw/{hint}/{}", self.counter);
            if self.taken.insert(name.clone()) {
                return name;
            }
        }
    }

    /// Reserves an exact name (a graph output); false when it is taken.
    pub fn reserve(&mut self, name: &str) -> bool {
        self.taken.insert(name.to_string())
    }

    /// Adds a node with one fresh output and returns the output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.op_to(op, inputs, &out, attrs);
        out
    }

    /// Adds a node writing to a given output name.
    pub fn op_to(&mut self, op: &str, inputs: &[&str], out: &str, attrs: Vec<AttributeProto>) {
        let name = format!("{out}/node");
        self.nodes.push(onnx::make_node(op, &name, inputs, &[out], attrs));
    }

    /// A float constant (as an initializer).
    pub fn const_f32(&mut self, hint: &str, dims: &[usize], values: &[f32]) -> String {
        let name = self.fresh(hint);
        self.inits.push(onnx::make_tensor_f32(&name, dims, values));
        name
    }

    /// `1.0` where `a == b` (broadcasting), `0.0` elsewhere: a one-hot or tie mask.
    pub fn equal_mask(&mut self, a: &str, b: &str) -> String {
        let eq = self.op("Equal", &[a, b], vec![]);
        self.op("Cast", &[&eq], vec![attr::int("to", onnx::data_type::FLOAT as i64)])
    }

    /// A float scalar constant of shape `[]`.
    pub fn scalar(&mut self, v: f32) -> String {
        self.const_f32("scalar", &[], &[v])
    }

    /// An int64 constant.
    pub fn const_i64(&mut self, hint: &str, values: &[i64]) -> String {
        let name = self.fresh(hint);
        self.inits.push(onnx::make_tensor_i64(&name, &[values.len()], values));
        name
    }

    /// `Reduce*` over `axes`, in the signature of the opset (axes became an input in 13 for
    /// ReduceSum and in 18 for the others).
    pub fn reduce(&mut self, op: &str, x: &str, axes: &[i64], keepdims: bool) -> String {
        let axes_as_input = if op == "ReduceSum" { self.opset >= 13 } else { self.opset >= 18 };
        let keep = attr::int("keepdims", keepdims as i64);
        if axes_as_input {
            let a = self.const_i64("axes", axes);
            self.op(op, &[x, &a], vec![keep])
        } else {
            self.op(op, &[x], vec![attr::ints("axes", axes), keep])
        }
    }

    /// Reshape to `[-1, per_sample...]` (the batch stays the leading axis).
    pub fn reshape_batch(&mut self, x: &str, per_sample: &[usize]) -> String {
        let mut shape = vec![-1i64];
        shape.extend(per_sample.iter().map(|&d| d as i64));
        let s = self.const_i64("shape", &shape);
        self.op("Reshape", &[x, &s], vec![])
    }

    /// Reshape to an exact shape given with the batch as `-1`.
    pub fn reshape_to(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.const_i64("shape", shape);
        self.op("Reshape", &[x, &s], vec![])
    }

    pub fn add(&mut self, a: &str, b: &str) -> String {
        self.op("Add", &[a, b], vec![])
    }

    pub fn sub(&mut self, a: &str, b: &str) -> String {
        self.op("Sub", &[a, b], vec![])
    }

    pub fn mul(&mut self, a: &str, b: &str) -> String {
        self.op("Mul", &[a, b], vec![])
    }

    /// `x * c` for a float scalar `c`.
    pub fn scale(&mut self, x: &str, c: f32) -> String {
        if c == 1.0 {
            return x.to_string();
        }
        let s = self.scalar(c);
        self.mul(x, &s)
    }

    /// Zeros shaped like `x` (`x * 0`; `x` is a finite activation).
    pub fn scale_zero(&mut self, x: &str) -> String {
        let z = self.scalar(0.0);
        self.mul(x, &z)
    }

    /// `Slice` with constant starts/ends on the given axes.
    pub fn slice(&mut self, x: &str, starts: &[i64], ends: &[i64], axes: &[i64]) -> String {
        let s = self.const_i64("starts", starts);
        let e = self.const_i64("ends", ends);
        let a = self.const_i64("axes", axes);
        self.op("Slice", &[x, &s, &e, &a], vec![])
    }

    /// `Slice` with constant starts/ends/steps on the given axes.
    pub fn slice_steps(&mut self, x: &str, starts: &[i64], ends: &[i64], axes: &[i64], steps: &[i64]) -> String {
        if steps.iter().all(|&s| s == 1) {
            return self.slice(x, starts, ends, axes);
        }
        let s = self.const_i64("starts", starts);
        let e = self.const_i64("ends", ends);
        let a = self.const_i64("axes", axes);
        let st = self.const_i64("steps", steps);
        self.op("Slice", &[x, &s, &e, &a, &st], vec![])
    }

    /// Constant zero-padding (`pads` in ONNX order: all begins, then all ends).
    pub fn pad(&mut self, x: &str, pads: &[i64], value: f32) -> String {
        let p = self.const_i64("pads", pads);
        let v = self.scalar(value);
        self.op("Pad", &[x, &p, &v], vec![attr::string("mode", "constant")])
    }

    /// Transpose with a permutation.
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], vec![attr::ints("perm", perm)])
    }

    /// Squared L2 norm of each sample: `ReduceSumSquare` over every axis but the batch, as `[N]`.
    pub fn sample_sq_norm(&mut self, x: &str, rank: usize) -> String {
        let axes: Vec<i64> = (1..rank as i64).collect();
        if axes.is_empty() {
            return self.op("Mul", &[x, x], vec![]);
        }
        self.reduce("ReduceSumSquare", x, &axes, false)
    }
}
