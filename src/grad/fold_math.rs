//! Constant folding of the numeric operators exporters leave on constants (see `fold.rs`):
//! elementwise math (`Neg`, `Sqrt`, `Abs`..., and Fourier position encodings' `Sin`, `Cos`, `Exp`), `Tile`, the reductions,
//! `CumSum`, `ArgMax`/`ArgMin`, `MatMul`, `Pad`, `Trilu`, variadic `Sum`/`Mean`,
//! inference-mode `Dropout`, and 8-bit `QuantizeLinear`/`DequantizeLinear` (a QDQ model's
//! weights). Batch-sized values never reach here as constants: a `Tile` by the
//! symbolic batch is refused with the reason.

use ndarray::{ArrayD, Axis, Dimension, IxDyn};

use super::fold::{as_f, axis, binary, is_batch_derived, Inputs, Val};
use super::GradError;
use crate::onnx::Attrs;

/// Operators [`fold`] evaluates.
pub(crate) const OPS: &[&str] = &[
    "Neg",
    "Sqrt",
    "Reciprocal",
    "Floor",
    "Ceil",
    "Abs",
    "Not",
    "Sin",
    "Cos",
    "Tan",
    "Atan",
    "Exp",
    "Log",
    "Tanh",
    "Sigmoid",
    "Erf",
    "Round",
    "Sign",
    "Relu",
    "Tile",
    "ReduceSum",
    "ReduceMean",
    "ReduceMax",
    "ReduceMin",
    "ReduceProd",
    "CumSum",
    "ArgMax",
    "ArgMin",
    "MatMul",
    "Pad",
    "Trilu",
    "Sum",
    "Mean",
    "Dropout",
    "QuantizeLinear",
    "DequantizeLinear",
];

/// Evaluates one of [`OPS`] on constant inputs.
pub(super) fn fold(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let n = f.n;
    let op = n.op_type.as_str();
    Ok(match op {
        "Tile" => vec![fold_tile(f)?],
        "ReduceSum" | "ReduceMean" | "ReduceMax" | "ReduceMin" | "ReduceProd" => vec![fold_reduce(f)?],
        "CumSum" => vec![fold_cumsum(f)?],
        "ArgMax" | "ArgMin" => vec![fold_arg(f)?],
        "MatMul" => vec![fold_matmul(f)?],
        "Pad" => vec![fold_pad(f)?],
        "Trilu" => vec![fold_trilu(f)?],
        "QuantizeLinear" | "DequantizeLinear" => vec![fold_quant(f)?],
        "Sum" | "Mean" => {
            let mut acc = f.need(0)?;
            let count = n.input.iter().filter(|s| !s.is_empty()).count();
            for i in 1..count {
                acc = binary("Add", &acc, &f.need(i)?).ok_or_else(|| f.fail("operands do not broadcast"))?;
            }
            if op == "Mean" {
                acc = Val::F(as_f(&acc) / count.max(1) as f32);
            }
            vec![acc]
        }
        // Inference: the data, and a mask of ones where asked for.
        "Dropout" => {
            let x = f.need(0)?;
            let mask = Val::I(ArrayD::from_elem(IxDyn(x.shape()), 1), true);
            vec![x, mask]
        }
        "Relu" => vec![match f.need(0)? {
            Val::F(x) => Val::F(x.mapv(|v| v.max(0.0))),
            Val::I(x, b) => Val::I(x.mapv(|v| v.max(0)), b),
        }],
        "Sign" => vec![match f.need(0)? {
            Val::F(x) => Val::F(x.mapv(|v| {
                if v > 0.0 {
                    1.0
                } else if v < 0.0 {
                    -1.0
                } else {
                    0.0
                }
            })),
            Val::I(x, b) => Val::I(x.mapv(i64::signum), b),
        }],
        "Neg" | "Abs" | "Not" | "Floor" | "Ceil" if matches!(f.need(0)?, Val::I(..)) => {
            let Val::I(x, b) = f.need(0)? else { return Err(f.fail("integer operand")) };
            vec![match op {
                "Neg" => Val::I(x.mapv(|v| -v), b),
                "Abs" => Val::I(x.mapv(i64::abs), b),
                "Not" => Val::I(x.mapv(|v| i64::from(v == 0)), true),
                _ => Val::I(x, b),
            }]
        }
        _ => vec![Val::F(as_f(&f.need(0)?).mapv(|v| unary(op, v)))],
    })
}

/// `DequantizeLinear`: `(x - zero_point) * scale`; `QuantizeLinear`: `x / scale` rounded (half
/// to even) plus the zero point, saturated to the 8-bit range of its output type.
/// Scales per tensor or per channel of `axis`; blocked quantization is left to the caller.
fn fold_quant(f: &Inputs) -> Result<Val, GradError> {
    let a = Attrs::of(f.n);
    if a.int("block_size", 0)? != 0 {
        return Err(f.fail("blocked quantization"));
    }
    let x = as_f(&f.need(0)?);
    let scale = as_f(&f.need(1)?);
    let zero = f.get(2)?.map(|z| as_f(&z)).unwrap_or_else(|| ArrayD::zeros(IxDyn(scale.shape())));
    // Per-channel values are shaped to broadcast along `axis`.
    let along = |v: ArrayD<f32>| -> Result<ArrayD<f32>, GradError> {
        if v.len() <= 1 {
            return Ok(v);
        }
        let ax = axis(f.n, a.int("axis", 1)?, x.ndim())?;
        let mut dims = vec![1; x.ndim()];
        dims[ax] = v.len();
        v.into_shape_with_order(IxDyn(&dims)).map_err(|_| f.fail("scale does not fit the axis"))
    };
    let (scale, zero) = (along(scale)?, along(zero)?);
    if f.n.op_type == "DequantizeLinear" {
        return Ok(Val::F((&x - &zero) * &scale));
    }
    let (lo, hi) = super::rules::quant_range(f.n, f.data_type(2))?;
    let q = (&x / &scale).mapv(f32::round_ties_even) + &zero;
    Ok(Val::I(q.mapv(|v| v.clamp(lo, hi) as i64), false))
}

/// A float function of one value.
fn unary(op: &str, v: f32) -> f32 {
    match op {
        "Neg" => -v,
        "Sqrt" => v.sqrt(),
        "Reciprocal" => 1.0 / v,
        "Floor" => v.floor(),
        "Ceil" => v.ceil(),
        "Abs" => v.abs(),
        "Not" => f32::from(u8::from(v == 0.0)),
        "Sin" => v.sin(),
        "Cos" => v.cos(),
        "Tan" => v.tan(),
        "Atan" => v.atan(),
        "Exp" => v.exp(),
        "Log" => v.ln(),
        "Tanh" => v.tanh(),
        "Sigmoid" => 1.0 / (1.0 + (-v).exp()),
        "Erf" => erf(f64::from(v)) as f32,
        _ => v.round_ties_even(),
    }
}

/// The error function, Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, under float
/// resolution near 1).
fn erf(x: f64) -> f64 {
    let t = 1.0 / (1.0 + 0.327_591_1 * x.abs());
    let poly =
        t * (0.254_829_592 + t * (-0.284_496_736 + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    (1.0 - poly * (-x * x).exp()).copysign(x)
}

/// Applies `f` to either element type (keeping integers integers).
fn either<F>(v: &Val, fl: impl Fn(&ArrayD<f32>) -> Option<ArrayD<f32>>, int: F) -> Option<Val>
where
    F: Fn(&ArrayD<i64>) -> Option<ArrayD<i64>>,
{
    Some(match v {
        Val::F(x) => Val::F(fl(x)?),
        Val::I(x, b) => Val::I(int(x)?, *b),
    })
}

fn fold_tile(f: &Inputs) -> Result<Val, GradError> {
    let x = f.need(0)?;
    let reps = f.need(1)?.ints();
    if reps.iter().any(|&r| is_batch_derived(r)) {
        return Err(f.fail("it repeats by the batch size: a batch-sized constant is not supported"));
    }
    if reps.len() != x.shape().len() || reps.iter().any(|&r| r < 0) {
        return Err(f.fail("repeats must be one non-negative count per axis"));
    }
    let reps: Vec<usize> = reps.iter().map(|&r| r as usize).collect();
    either(&x, |a| tile(a, &reps), |a| tile(a, &reps)).ok_or_else(|| f.fail("cannot tile"))
}

fn tile<T: Clone>(x: &ArrayD<T>, reps: &[usize]) -> Option<ArrayD<T>> {
    let mut out = x.clone();
    for (ax, &r) in reps.iter().enumerate() {
        if r != 1 {
            let views: Vec<_> = std::iter::repeat_n(out.view(), r).collect();
            out = ndarray::concatenate(Axis(ax), &views).ok()?;
        }
    }
    Some(out)
}

/// The axes a reduction or `ArgMax` reads: the `axes` input (opset 13 for `ReduceSum`, 18 for the
/// others) or attribute, else every axis (none with `noop_with_empty_axes`).
fn reduce_axes(f: &Inputs, rank: usize) -> Result<Vec<usize>, GradError> {
    let a = Attrs::of(f.n);
    let raw = match a.ints("axes")? {
        Some(v) => Some(v),
        None => f.get(1)?.map(|v| v.ints()),
    };
    let mut axes: Vec<usize> = match raw {
        Some(v) if !v.is_empty() => v.iter().map(|&x| axis(f.n, x, rank)).collect::<Result<_, _>>()?,
        _ if a.int("noop_with_empty_axes", 0)? != 0 => vec![],
        _ => (0..rank).collect(),
    };
    axes.sort_unstable();
    axes.dedup();
    if axes.iter().any(|&x| x >= rank) {
        return Err(f.fail("axis out of range"));
    }
    Ok(axes)
}

fn fold_reduce(f: &Inputs) -> Result<Val, GradError> {
    let x = f.need(0)?;
    let axes = reduce_axes(f, x.shape().len())?;
    let keep = Attrs::of(f.n).int("keepdims", 1)? != 0;
    let op = f.n.op_type.as_str();
    let mean = op == "ReduceMean";
    let count: usize = axes.iter().map(|&a| x.shape()[a]).product();
    let fl = |a: &ArrayD<f32>| {
        let r = reduce(a, &axes, keep, |l| match op {
            "ReduceMax" => l.fold(f32::NEG_INFINITY, |m, &v| m.max(v)),
            "ReduceMin" => l.fold(f32::INFINITY, |m, &v| m.min(v)),
            "ReduceProd" => l.product(),
            _ => l.sum(),
        })?;
        Some(if mean { r / count.max(1) as f32 } else { r })
    };
    let int = |a: &ArrayD<i64>| {
        let r = reduce(a, &axes, keep, |l| match op {
            "ReduceMax" => l.fold(i64::MIN, |m, &v| m.max(v)),
            "ReduceMin" => l.fold(i64::MAX, |m, &v| m.min(v)),
            "ReduceProd" => l.fold(1, |p, &v| p.wrapping_mul(v)),
            _ => l.fold(0, |s, &v| s.wrapping_add(v)),
        })?;
        Some(if mean { r / count.max(1) as i64 } else { r })
    };
    either(&x, fl, int).ok_or_else(|| f.fail("cannot reduce"))
}

/// Reduces `x` over `axes` (sorted) by `red` on each lane, keeping them as size 1 if `keep`.
fn reduce<T: Clone + Default>(
    x: &ArrayD<T>,
    axes: &[usize],
    keep: bool,
    red: impl Fn(ndarray::ArrayView1<T>) -> T,
) -> Option<ArrayD<T>> {
    let mut out = x.clone();
    for &ax in axes.iter().rev() {
        out = out.map_axis(Axis(ax), &red);
        if keep {
            out = out.insert_axis(Axis(ax));
        }
    }
    Some(out)
}

fn fold_cumsum(f: &Inputs) -> Result<Val, GradError> {
    let x = f.need(0)?;
    let ax = f.need(1)?.ints().first().copied().ok_or_else(|| f.fail("no axis"))?;
    let ax = axis(f.n, ax, x.shape().len())?;
    let a = Attrs::of(f.n);
    let (exclusive, reverse) = (a.int("exclusive", 0)? != 0, a.int("reverse", 0)? != 0);
    if ax >= x.shape().len() {
        return Err(f.fail("axis out of range"));
    }
    let run = |v: &mut ArrayD<f64>| {
        for mut lane in v.lanes_mut(Axis(ax)) {
            let len = lane.len();
            let mut acc = 0.0;
            for k in 0..len {
                let i = if reverse { len - 1 - k } else { k };
                let cur = lane[i];
                if exclusive {
                    lane[i] = acc;
                    acc += cur;
                } else {
                    acc += cur;
                    lane[i] = acc;
                }
            }
        }
    };
    Ok(match x {
        Val::F(v) => {
            let mut w = v.mapv(f64::from);
            run(&mut w);
            Val::F(w.mapv(|v| v as f32))
        }
        Val::I(v, _) => {
            let mut w = v.mapv(|v| v as f64);
            run(&mut w);
            Val::I(w.mapv(|v| v as i64), false)
        }
    })
}

fn fold_arg(f: &Inputs) -> Result<Val, GradError> {
    let x = as_f(&f.need(0)?);
    let a = Attrs::of(f.n);
    let ax = axis(f.n, a.int("axis", 0)?, x.ndim())?;
    if ax >= x.ndim() {
        return Err(f.fail("axis out of range"));
    }
    let (keep, last, max) = (a.int("keepdims", 1)? != 0, a.int("select_last_index", 0)? != 0, f.n.op_type == "ArgMax");
    let mut out = x.map_axis(Axis(ax), |l| {
        let mut best = 0usize;
        for (i, &v) in l.iter().enumerate().skip(1) {
            let b = l[best];
            let better = if max { v > b || (last && v == b) } else { v < b || (last && v == b) };
            if better {
                best = i;
            }
        }
        best as i64
    });
    if keep {
        out = out.insert_axis(Axis(ax));
    }
    Ok(Val::I(out, false))
}

/// `MatMul` with NumPy's rules (1-D operands promoted, leading axes broadcast), in float64.
fn fold_matmul(f: &Inputs) -> Result<Val, GradError> {
    let (x, y) = (f.need(0)?, f.need(1)?);
    let ints = matches!((&x, &y), (Val::I(..), Val::I(..)));
    let (a, b) = (as_f(&x).mapv(f64::from), as_f(&y).mapv(f64::from));
    let out = matmul(&a, &b).ok_or_else(|| f.fail("shapes do not multiply"))?;
    Ok(if ints { Val::I(out.mapv(|v| v as i64), false) } else { Val::F(out.mapv(|v| v as f32)) })
}

fn matmul(a: &ArrayD<f64>, b: &ArrayD<f64>) -> Option<ArrayD<f64>> {
    let (a1, b1) = (a.ndim() == 1, b.ndim() == 1);
    let a = if a1 { a.clone().insert_axis(Axis(0)) } else { a.clone() };
    let b = if b1 { b.clone().insert_axis(Axis(1)) } else { b.clone() };
    if a.ndim() < 2 || b.ndim() < 2 {
        return None;
    }
    let (ra, rb) = (a.ndim(), b.ndim());
    let (m, k, k2, nn) = (a.shape()[ra - 2], a.shape()[ra - 1], b.shape()[rb - 2], b.shape()[rb - 1]);
    if k != k2 {
        return None;
    }
    let batch_rank = (ra - 2).max(rb - 2);
    let mut batch = vec![1usize; batch_rank];
    for (i, d) in batch.iter_mut().enumerate() {
        let da = (i + ra - 2).checked_sub(batch_rank).map_or(1, |j| a.shape()[j]);
        let db = (i + rb - 2).checked_sub(batch_rank).map_or(1, |j| b.shape()[j]);
        if da != db && da != 1 && db != 1 {
            return None;
        }
        *d = da.max(db);
    }
    let a = a.broadcast(IxDyn(&[batch.clone(), vec![m, k]].concat()))?.to_owned();
    let b = b.broadcast(IxDyn(&[batch.clone(), vec![k, nn]].concat()))?.to_owned();
    let count: usize = batch.iter().product();
    let a3 = a.into_shape_with_order((count, m, k)).ok()?;
    let b3 = b.into_shape_with_order((count, k, nn)).ok()?;
    let mut out = ndarray::Array3::<f64>::zeros((count, m, nn));
    for i in 0..count {
        out.index_axis_mut(Axis(0), i).assign(&a3.index_axis(Axis(0), i).dot(&b3.index_axis(Axis(0), i)));
    }
    let mut shape = batch;
    if !a1 {
        shape.push(m);
    }
    if !b1 {
        shape.push(nn);
    }
    out.into_shape_with_order(IxDyn(&shape)).ok()
}

/// `Pad` in `constant` or `edge` mode (pads as the input of opset 11, or the attribute before;
/// `axes` of opset 18).
fn fold_pad(f: &Inputs) -> Result<Val, GradError> {
    let x = f.need(0)?;
    let rank = x.shape().len();
    let a = Attrs::of(f.n);
    let pads = match a.ints("pads")? {
        Some(p) => p,
        None => f.need(1)?.ints(),
    };
    let axes: Vec<usize> = match f.get(3)? {
        Some(v) => v.ints().iter().map(|&x| axis(f.n, x, rank)).collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    if pads.len() != 2 * axes.len() || pads.iter().any(|&p| p < 0) || axes.iter().any(|&x| x >= rank) {
        return Err(f.fail("pads must be non-negative, two per padded axis"));
    }
    let mode = a.string("mode", "constant")?;
    let edge = match mode.as_str() {
        "constant" => false,
        "edge" => true,
        other => return Err(f.fail(&format!("pad mode '{other}'"))),
    };
    let value = match f.get(2)? {
        Some(v) => as_f(&v).iter().next().copied().unwrap_or(0.0),
        None => a.float("value", 0.0)?,
    };
    let mut before = vec![0usize; rank];
    let mut after = vec![0usize; rank];
    for (j, &ax) in axes.iter().enumerate() {
        before[ax] = pads[j] as usize;
        after[ax] = pads[j + axes.len()] as usize;
    }
    let fl = |v: &ArrayD<f32>| Some(pad(v, &before, &after, value, edge));
    let int = |v: &ArrayD<i64>| Some(pad(v, &before, &after, value as i64, edge));
    either(&x, fl, int).ok_or_else(|| f.fail("cannot pad"))
}

fn pad<T: Clone>(x: &ArrayD<T>, before: &[usize], after: &[usize], value: T, edge: bool) -> ArrayD<T> {
    let shape: Vec<usize> = x.shape().iter().zip(before.iter().zip(after)).map(|(&d, (&b, &a))| d + b + a).collect();
    ArrayD::from_shape_fn(IxDyn(&shape), |idx| {
        let mut src = Vec::with_capacity(shape.len());
        for (ax, &i) in idx.as_array_view().iter().enumerate() {
            let d = x.shape()[ax];
            let j = i as i64 - before[ax] as i64;
            if j >= 0 && (j as usize) < d {
                src.push(j as usize);
            } else if edge && d > 0 {
                src.push(j.clamp(0, d as i64 - 1) as usize);
            } else {
                return value.clone();
            }
        }
        x[IxDyn(&src)].clone()
    })
}

fn fold_trilu(f: &Inputs) -> Result<Val, GradError> {
    let x = f.need(0)?;
    let k = f.get(1)?.and_then(|v| v.ints().first().copied()).unwrap_or(0);
    let upper = Attrs::of(f.n).int("upper", 1)? != 0;
    let r = x.shape().len();
    if r < 2 {
        return Err(f.fail("Trilu needs at least two axes"));
    }
    let keep = |idx: &IxDyn| {
        let (i, j) = (idx[r - 2] as i64, idx[r - 1] as i64);
        if upper {
            j - i >= k
        } else {
            j - i <= k
        }
    };
    let out = match x {
        Val::F(v) => Val::F(ArrayD::from_shape_fn(v.raw_dim(), |idx| if keep(&idx) { v[&idx] } else { 0.0 })),
        Val::I(v, b) => Val::I(ArrayD::from_shape_fn(v.raw_dim(), |idx| if keep(&idx) { v[&idx] } else { 0 }), b),
    };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn erf_matches_known_values() {
        for (x, want) in [(0.0, 0.0), (0.5, 0.520_499_877_8), (1.0, 0.842_700_792_9), (-2.0, -0.995_322_265)] {
            assert!((erf(x) - want).abs() < 2e-7, "erf({x}) = {}", erf(x));
        }
    }

    #[test]
    fn matmul_broadcasts_and_promotes() {
        let a = ArrayD::from_shape_vec(IxDyn(&[2, 1, 2]), vec![1.0, 2.0, 3.0, 4.0]).unwrap();
        let b = ArrayD::from_shape_vec(IxDyn(&[2]), vec![10.0, 1.0]).unwrap();
        let c = matmul(&a, &b).unwrap();
        assert_eq!(c.shape(), &[2, 1]);
        assert_eq!(c.iter().copied().collect::<Vec<_>>(), vec![12.0, 34.0]);
        let m = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0, 0.0, 0.0, 2.0]).unwrap();
        let d = matmul(&a, &m).unwrap();
        assert_eq!(d.shape(), &[2, 1, 2]);
        assert_eq!(d.iter().copied().collect::<Vec<_>>(), vec![1.0, 4.0, 3.0, 8.0]);
        assert!(matmul(&m, &ArrayD::zeros(IxDyn(&[3, 1]))).is_none());
    }

    #[test]
    fn tile_pad_and_reduce() {
        let x = ArrayD::from_shape_vec(IxDyn(&[1, 2]), vec![1, 2]).unwrap();
        assert_eq!(tile(&x, &[2, 2]).unwrap().iter().copied().collect::<Vec<_>>(), vec![1, 2, 1, 2, 1, 2, 1, 2]);
        let p = pad(&x, &[0, 1], &[1, 0], 9, false);
        assert_eq!(p.shape(), &[2, 3]);
        assert_eq!(p.iter().copied().collect::<Vec<_>>(), vec![9, 1, 2, 9, 9, 9]);
        let e = pad(&x, &[0, 1], &[0, 1], 0, true);
        assert_eq!(e.iter().copied().collect::<Vec<_>>(), vec![1, 1, 2, 2]);
        let y = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let s = reduce(&y, &[1], true, |l| l.sum()).unwrap();
        assert_eq!(s.shape(), &[2, 1]);
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), vec![6.0, 15.0]);
        let all = reduce(&y, &[0, 1], false, |l| l.sum()).unwrap();
        assert_eq!(all.shape(), &[] as &[usize]);
        assert_eq!(all.iter().copied().collect::<Vec<_>>(), vec![21.0]);
    }
}
