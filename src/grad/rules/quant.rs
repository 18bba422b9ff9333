//! Quantize-dequantize (QDQ) models, as ONNX Runtime's `quantize_static`, TensorRT's
//! quantization toolkits and PyTorch's quantization-aware training export them. A weight's
//! `DequantizeLinear(int8 W, scale, zero_point)` computes on constants only, so the fold
//! evaluates it and the feature is the gradient of the dequantized weight (named by that node's
//! output). An activation's `QuantizeLinear -> DequantizeLinear` pair runs as written in the
//! forward, and is differentiated as quantization-aware training does it (PyTorch's
//! `fake_quantize` backward, the straight-through estimator): the gradient passes where the
//! value lies inside the integer range, and is zero where it was clipped. Through the integer
//! tensor it is carried in integer units (`/ scale` out of `QuantizeLinear`, `* scale` out of
//! `DequantizeLinear`), so a pair with one scale passes it unchanged.

use super::{norm_axis, same_shape, single, Grads, Params, Rule};
use crate::grad::{node_err, Ctx, GradError};
use crate::onnx::{data_type, Attrs, NodeProto};

/// The quantization rules.
pub(super) const RULES: &[Rule] = &[
    Rule { op: "QuantizeLinear", params: Params::None, shape: same_shape, backward: quantize },
    Rule { op: "DequantizeLinear", params: Params::None, shape: same_shape, backward: dequantize },
];

/// A node's scales and zero points, one per channel of its axis (or one for the tensor),
/// with the dims that broadcast them against the full tensor (batch axis included).
struct Quant {
    scale: Vec<f32>,
    zero: Vec<f32>,
    dims: Vec<usize>,
}

fn quant(n: &NodeProto, ctx: &Ctx) -> Result<Quant, GradError> {
    let a = Attrs::of(n);
    if a.int("block_size", 0)? != 0 {
        return Err(node_err(n, "blocked quantization of an activation is not supported; quantize it per tensor"));
    }
    let scale: Vec<f32> = ctx.const_f32(n, n.input.get(1).map(String::as_str).unwrap_or(""))?.iter().copied().collect();
    let zero: Vec<f32> = match n.input.get(2).filter(|s| !s.is_empty()) {
        Some(z) => ctx.const_i64(n, z)?.iter().map(|&v| v as f32).collect(),
        None => vec![0.0; scale.len()],
    };
    if scale.is_empty() || zero.len() != scale.len() || scale.iter().any(|&s| !(s.is_finite() && s > 0.0)) {
        return Err(node_err(n, "its scale must be positive and finite, with one zero point per scale"));
    }
    let x = ctx.shape(n, super::act_input(n, ctx, 0)?)?;
    let rank = x.len() + 1;
    let mut dims = vec![1; rank];
    if scale.len() > 1 {
        let axis = norm_axis(n, a.int("axis", 1)?, rank)?;
        if axis == 0 || x[axis - 1] != scale.len() {
            return Err(node_err(n, format!("{} scales for axis {axis} of a [N, {x:?}] activation", scale.len())));
        }
        dims[axis] = scale.len();
    }
    Ok(Quant { scale, zero, dims })
}

/// The integer range of `QuantizeLinear` node `n`'s output type: its zero point's stored type
/// (`zp_type`), or its `output_dtype`, or uint8. The rule and the constant fold both use it.
pub(crate) fn int_range(n: &NodeProto, zp_type: Option<i32>) -> Result<(f32, f32), GradError> {
    let out_type = Attrs::of(n).int("output_dtype", 0)? as i32;
    match zp_type.unwrap_or(if out_type != 0 { out_type } else { data_type::UINT8 }) {
        data_type::UINT8 => Ok((0.0, 255.0)),
        data_type::INT8 => Ok((-128.0, 127.0)),
        other => Err(node_err(n, format!("quantization to type {other}: gradwatch reads 8-bit quantization"))),
    }
}

/// `dx = dy / scale` where `x` rounds into the integer range, 0 where it was clipped.
fn quantize(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let q = quant(n, ctx)?;
    let zp_type = n.input.get(2).filter(|s| !s.is_empty()).and_then(|z| ctx.consts.get(z)).map(|t| t.data_type);
    let (qmin, qmax) = int_range(n, zp_type)?;
    let per = |f: &dyn Fn(usize) -> f32| -> Vec<f32> { (0..q.scale.len()).map(f).collect() };
    let lo = per(&|c| (qmin - q.zero[c] - 0.5) * q.scale[c]);
    let hi = per(&|c| (qmax - q.zero[c] + 0.5) * q.scale[c]);
    let inv = per(&|c| 1.0 / q.scale[c]);
    let (lo, hi, inv) = (
        ctx.b.const_f32("q_lo", &q.dims, &lo),
        ctx.b.const_f32("q_hi", &q.dims, &hi),
        ctx.b.const_f32("q_inv", &q.dims, &inv),
    );
    let x = super::act_input(n, ctx, 0)?;
    let above = ctx.b.op("GreaterOrEqual", &[x, &lo], vec![]);
    let below = ctx.b.op("Less", &[x, &hi], vec![]);
    let inside = ctx.b.op("And", &[&above, &below], vec![]);
    let g = ctx.b.mul(dy, &inv);
    let zero = ctx.b.scalar(0.0);
    Ok(single(n, ctx.b.op("Where", &[&inside, &g, &zero], vec![])))
}

/// `dq = dy * scale` (the gradient in the integer tensor's units).
fn dequantize(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let q = quant(n, ctx)?;
    let s = ctx.b.const_f32("dq_scale", &q.dims, &q.scale);
    Ok(single(n, ctx.b.mul(dy, &s)))
}
