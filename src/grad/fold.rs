//! Compile-time constant folding: any node whose inputs are all constants (or a `Shape` of an
//! activation, whose per-sample shape the analysis knows) is evaluated here, so that the
//! shape subgraphs exporters write (`Shape` -> `Gather` -> `Unsqueeze` -> `Concat` -> `Reshape`,
//! `ConstantOfShape`, `Range`, `Equal`/`Where`...) become plain constants before the rules see
//! them. The node stays in the graph (ONNX Runtime computes it again at run time, for any
//! batch size); only the analysis reads the folded value.
//!
//! The batch size is symbolic: `Shape` writes [`BATCH`] for it. Arithmetic on it yields values
//! far from any real size ([`is_batch_derived`]), which the rules refuse where it matters
//! (a `Reshape` that would merge the batch into another axis).

use ndarray::{ArrayD, Axis, IxDyn, Slice};

use super::{fold_ext, fold_math, fold_nd as nd, node_err, GradError};
use crate::onnx::{self, data_type, Attrs, NodeProto, TensorProto};

/// The symbolic batch size inside folded integer tensors.
pub(crate) const BATCH: i64 = -(1 << 50);

/// Whether an integer came from arithmetic on the symbolic batch size.
pub(crate) fn is_batch_derived(v: i64) -> bool {
    v.unsigned_abs() >= 1 << 40
}

/// A folded value.
#[derive(Clone, Debug)]
pub(super) enum Val {
    F(ArrayD<f32>),
    /// Integers (and booleans, with `bool` set).
    I(ArrayD<i64>, bool),
}

impl Val {
    fn from_tensor(t: &TensorProto) -> Result<Val, onnx::OnnxError> {
        Ok(match t.data_type {
            data_type::FLOAT | data_type::DOUBLE | data_type::FLOAT16 => Val::F(onnx::tensor_f32(t)?),
            data_type::BOOL => Val::I(onnx::tensor_i64(t)?, true),
            _ => Val::I(onnx::tensor_i64(t)?, false),
        })
    }

    fn to_tensor(&self, name: &str) -> TensorProto {
        match self {
            Val::F(a) => {
                let v: Vec<f32> = a.iter().copied().collect();
                onnx::make_tensor_f32(name, a.shape(), &v)
            }
            Val::I(a, b) => {
                let v: Vec<i64> = a.iter().copied().collect();
                let mut t = onnx::make_tensor_i64(name, a.shape(), &v);
                if *b {
                    t.data_type = data_type::BOOL;
                    t.raw_data = v.iter().map(|&x| u8::from(x != 0)).collect();
                }
                t
            }
        }
    }

    pub(super) fn shape(&self) -> &[usize] {
        match self {
            Val::F(a) => a.shape(),
            Val::I(a, _) => a.shape(),
        }
    }

    pub(super) fn ints(&self) -> Vec<i64> {
        match self {
            Val::F(a) => a.iter().map(|&v| v as i64).collect(),
            Val::I(a, _) => a.iter().copied().collect(),
        }
    }

    /// Applies a shape-only transform to either kind.
    fn map(
        &self,
        f: impl Fn(&ArrayD<f32>) -> Option<ArrayD<f32>>,
        g: impl Fn(&ArrayD<i64>) -> Option<ArrayD<i64>>,
    ) -> Option<Val> {
        Some(match self {
            Val::F(a) => Val::F(f(a)?),
            Val::I(a, b) => Val::I(g(a)?, *b),
        })
    }
}

/// Folded operators whose output holds exactly the values of their first input, rearranged.
pub(crate) const VIEWS: &[&str] = &["Identity", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"];

/// Operators [`fold`] evaluates.
pub(crate) const FOLDABLE: &[&str] = &[
    "Identity",
    "Cast",
    "Shape",
    "Size",
    "Gather",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Slice",
    "Reshape",
    "Flatten",
    "Transpose",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Mod",
    "Pow",
    "Equal",
    "Less",
    "Greater",
    "LessOrEqual",
    "GreaterOrEqual",
    "And",
    "Or",
    "Where",
    "Min",
    "Max",
    "Clip",
    "ConstantOfShape",
    "Range",
    "Expand",
    "Split",
    "GatherND",
    "ScatterND",
];

/// Whether [`fold`] can evaluate `n` given which of its inputs are constants and which are
/// activations (a `Shape` of an activation folds: its per-sample shape is known).
pub(crate) fn can_fold(n: &NodeProto, is_const: impl Fn(&str) -> bool, is_act: impl Fn(&str) -> bool) -> bool {
    let inputs: Vec<&String> = n.input.iter().filter(|s| !s.is_empty()).collect();
    match n.op_type.as_str() {
        "Shape" | "Size" => inputs.first().is_some_and(|s| is_const(s) || (n.op_type == "Shape" && is_act(s))),
        "Constant" => false,
        _ => !inputs.is_empty() && inputs.iter().all(|s| is_const(s)),
    }
}

/// The node being folded and the constants its inputs may be.
pub(super) struct Inputs<'a> {
    pub(super) n: &'a NodeProto,
    consts: &'a std::collections::HashMap<String, TensorProto>,
}

impl Inputs<'_> {
    /// The error for a node that cannot be folded, with the fix.
    pub(super) fn fail(&self, why: &str) -> GradError {
        node_err(
            self.n,
            format!(
                "computes on constants only and gradwatch cannot fold it ({why}); fold constants first \
                 (e.g. `python -m onnxsim in.onnx out.onnx`) or re-export with do_constant_folding=True"
            ),
        )
    }

    /// Input `i`'s value, `None` when absent (or not a constant).
    pub(super) fn get(&self, i: usize) -> Result<Option<Val>, GradError> {
        match self.n.input.get(i).filter(|s| !s.is_empty()) {
            None => Ok(None),
            Some(name) => match self.consts.get(name) {
                Some(t) => Ok(Some(Val::from_tensor(t)?)),
                None => Ok(None),
            },
        }
    }

    /// Input `i`'s stored element type, `None` when absent (or not a constant).
    pub(super) fn data_type(&self, i: usize) -> Option<i32> {
        self.n.input.get(i).and_then(|name| self.consts.get(name)).map(|t| t.data_type)
    }

    /// Input `i`'s value, which must be there.
    pub(super) fn need(&self, i: usize) -> Result<Val, GradError> {
        self.get(i)?.ok_or_else(|| self.fail(&format!("input {i} missing")))
    }
}

/// Evaluates `n` on constant inputs; returns its outputs' values. `act_shape` gives the
/// per-sample shape of an activation (the batch is [`BATCH`]). An operator without a rule here
/// goes to the registered external evaluator when `external` holds the model's opset.
pub(crate) fn fold(
    n: &NodeProto,
    consts: &std::collections::HashMap<String, TensorProto>,
    act_shape: impl Fn(&str) -> Option<Vec<usize>>,
    external: Option<i64>,
) -> Result<Vec<TensorProto>, GradError> {
    let f = Inputs { n, consts };
    if !FOLDABLE.contains(&n.op_type.as_str()) && !fold_math::OPS.contains(&n.op_type.as_str()) {
        let why = match external {
            Some(opset) => fold_ext::fold(n, consts, opset),
            None => Err(format!("no folding rule for {}", n.op_type)),
        };
        return why.map_err(|w| f.fail(&w));
    }
    let out: Vec<Val> = match n.op_type.as_str() {
        "Identity" => vec![f.need(0)?],
        "Cast" => fold_cast(&f)?,
        "Shape" | "Size" => fold_shape(&f, act_shape)?,
        "Gather" => fold_gather(&f)?,
        "Unsqueeze" | "Squeeze" => fold_squeeze(&f)?,
        "Reshape" | "Flatten" => fold_reshape(&f)?,
        "Transpose" => fold_transpose(&f)?,
        "Concat" => fold_concat(&f)?,
        "Slice" => fold_slice(&f)?,
        "Split" => fold_split(&f)?,
        "Add" | "Sub" | "Mul" | "Div" | "Mod" | "Pow" | "Min" | "Max" => {
            let (x, y) = (f.need(0)?, f.need(1)?);
            vec![binary(&n.op_type, &x, &y).ok_or_else(|| f.fail("operands do not broadcast"))?]
        }
        // TensorFlow's "same" padding computed at run time: max(needed, 0) as a Clip.
        "Clip" => {
            let mut x = f.need(0)?;
            for (i, op) in [(1, "Max"), (2, "Min")] {
                if let Some(bound) = f.get(i)? {
                    x = binary(op, &x, &bound).ok_or_else(|| f.fail("bounds must be scalars"))?;
                }
            }
            vec![x]
        }
        "Equal" | "Less" | "Greater" | "LessOrEqual" | "GreaterOrEqual" | "And" | "Or" => {
            let (x, y) = (f.need(0)?, f.need(1)?);
            vec![compare(&n.op_type, &x, &y).ok_or_else(|| f.fail("operands do not broadcast"))?]
        }
        "Where" => fold_where(&f)?,
        "ConstantOfShape" => fold_constant_of_shape(&f)?,
        "Range" => fold_range(&f)?,
        "Expand" => fold_expand(&f)?,
        "GatherND" | "ScatterND" => fold_nd(&f)?,
        op if fold_math::OPS.contains(&op) => fold_math::fold(&f)?,
        other => return Err(f.fail(&format!("no folding rule for {other}"))),
    };
    if out.len() < n.output.iter().filter(|o| !o.is_empty()).count() {
        return Err(f.fail("fewer values than outputs"));
    }
    Ok(n.output.iter().zip(out).filter(|(o, _)| !o.is_empty()).map(|(o, v)| v.to_tensor(o)).collect())
}

/// `GatherND` and `ScatterND` (no batch dims, no reduction): index tables exporters build from
/// constants (Swin's shifted-window mask, LeViT's and EfficientFormerV2's attention biases).
fn fold_nd(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let a = Attrs::of(f.n);
    if a.int("batch_dims", 0)? != 0 || a.string("reduction", "none")? != "none" {
        return Err(f.fail("batch_dims or reduction"));
    }
    let (data, idx) = (f.need(0)?, as_i(&f.need(1)?));
    let out = if f.n.op_type == "GatherND" {
        data.map(|d| nd::gather_nd(d, &idx), |d| nd::gather_nd(d, &idx))
    } else {
        match (&data, &f.need(2)?) {
            (Val::F(d), Val::F(u)) => nd::scatter_nd(d, &idx, u).map(Val::F),
            (Val::I(d, b), Val::I(u, _)) => nd::scatter_nd(d, &idx, u).map(|v| Val::I(v, *b)),
            _ => None,
        }
    };
    Ok(vec![out.ok_or_else(|| f.fail("indices out of range or shapes that do not match"))?])
}

/// `Cast` between float, integer and bool values.
fn fold_cast(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let n = f.n;
    let a = Attrs::of(n);
    let out = {
        let to = a.int("to", data_type::FLOAT as i64)? as i32;
        let v = f.need(0)?;
        vec![match (to, v) {
            (data_type::FLOAT | data_type::DOUBLE | data_type::FLOAT16, Val::F(x)) => Val::F(x),
            (data_type::FLOAT | data_type::DOUBLE | data_type::FLOAT16, Val::I(x, _)) => Val::F(x.mapv(|v| v as f32)),
            (data_type::BOOL, Val::F(x)) => Val::I(x.mapv(|v| i64::from(v != 0.0)), true),
            (data_type::BOOL, Val::I(x, _)) => Val::I(x.mapv(|v| i64::from(v != 0)), true),
            (_, Val::F(x)) => Val::I(x.mapv(|v| v as i64), false),
            (_, Val::I(x, _)) => Val::I(x, false),
        }]
    };
    Ok(out)
}

/// `Shape` (with `start`/`end`) and `Size`, of a constant or of an activation (batch [`BATCH`]).
fn fold_shape(f: &Inputs, act_shape: impl Fn(&str) -> Option<Vec<usize>>) -> Result<Vec<Val>, GradError> {
    let n = f.n;
    let a = Attrs::of(n);
    let out = {
        let name = &n.input[0];
        let full: Vec<i64> = match f.consts.get(name) {
            Some(t) => t.dims.clone(),
            None => {
                let s = act_shape(name).ok_or_else(|| f.fail("input shape unknown"))?;
                std::iter::once(BATCH).chain(s.iter().map(|&d| d as i64)).collect()
            }
        };
        if n.op_type == "Size" {
            let p = full.iter().fold(1i64, |acc, &d| acc.wrapping_mul(d));
            vec![Val::I(ArrayD::from_elem(IxDyn(&[]), p), false)]
        } else {
            let r = full.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clamp(a.int("start", 0)?);
            let end = clamp(a.int("end", r)?);
            let v: Vec<i64> = full[start..end.max(start)].to_vec();
            vec![Val::I(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).map_err(|e| f.fail(&e.to_string()))?, false)]
        }
    };
    Ok(out)
}

/// `Gather` along one axis.
fn fold_gather(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let n = f.n;
    let a = Attrs::of(n);
    let out = {
        let data = f.need(0)?;
        let idx = f.need(1)?;
        let rank = data.shape().len();
        let ax = axis(n, a.int("axis", 0)?, rank)?;
        let len = data.shape()[ax] as i64;
        let ids: Vec<usize> = idx
            .ints()
            .iter()
            .map(|&i| if i < 0 { i + len } else { i })
            .map(|i| if (0..len).contains(&i) { Ok(i as usize) } else { Err(f.fail("index out of range")) })
            .collect::<Result<_, _>>()?;
        let ishape = idx.shape().to_vec();
        let gather_f = |x: &ArrayD<f32>| gather(x, ax, &ids, &ishape);
        let gather_i = |x: &ArrayD<i64>| gather(x, ax, &ids, &ishape);
        vec![data.map(gather_f, gather_i).ok_or_else(|| f.fail("bad gather"))?]
    };
    Ok(out)
}

/// `Unsqueeze` and `Squeeze` (axes as attribute or input).
fn fold_squeeze(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let n = f.n;
    let a = Attrs::of(n);
    let out = {
        let data = f.need(0)?;
        let axes = match a.ints("axes")? {
            Some(v) => Some(v),
            None => f.get(1)?.map(|v| v.ints()),
        };
        let shape = data.shape().to_vec();
        let new_shape = if n.op_type == "Unsqueeze" {
            let axes = axes.ok_or_else(|| f.fail("Unsqueeze needs axes"))?;
            let r = shape.len() + axes.len();
            let mut ax: Vec<usize> = axes.iter().map(|&v| axis(n, v, r)).collect::<Result<_, _>>()?;
            ax.sort_unstable();
            let mut s = shape.clone();
            for &i in &ax {
                if i > s.len() {
                    return Err(f.fail("axis out of range"));
                }
                s.insert(i, 1);
            }
            s
        } else {
            let r = shape.len();
            let ax: Vec<usize> = match axes {
                Some(v) => v.iter().map(|&v| axis(n, v, r)).collect::<Result<_, _>>()?,
                None => (0..r).filter(|&i| shape[i] == 1).collect(),
            };
            shape.iter().enumerate().filter(|(i, _)| !ax.contains(i)).map(|(_, &d)| d).collect()
        };
        vec![reshape(&data, &new_shape).ok_or_else(|| f.fail("bad axes"))?]
    };
    Ok(out)
}

/// `Reshape` (with `0` and `-1`) and `Flatten`.
fn fold_reshape(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let n = f.n;
    let a = Attrs::of(n);
    let out = {
        let data = f.need(0)?;
        let shape = data.shape().to_vec();
        let total: usize = shape.iter().product();
        let target: Vec<usize> = if n.op_type == "Flatten" {
            let ax = axis(n, a.int("axis", 1)?, shape.len() + 1)?;
            vec![shape[..ax].iter().product(), shape[ax..].iter().product()]
        } else {
            let t = f.need(1)?.ints();
            let allowzero = a.int("allowzero", 0)? != 0;
            let mut out = Vec::new();
            let mut infer = None;
            for (i, &d) in t.iter().enumerate() {
                match d {
                    0 if !allowzero => out.push(*shape.get(i).ok_or_else(|| f.fail("0 beyond rank"))?),
                    -1 => {
                        infer = Some(i);
                        out.push(1);
                    }
                    // A constant is the same for every sample: its batch axis is one copy.
                    BATCH if i == 0 => out.push(1),
                    d if d >= 0 => out.push(d as usize),
                    _ => return Err(f.fail("bad target shape")),
                }
            }
            if let Some(i) = infer {
                let known: usize = out.iter().product();
                if known == 0 {
                    return Err(f.fail("bad target shape"));
                }
                out[i] = total / known;
            }
            out
        };
        vec![reshape(&data, &target).ok_or_else(|| f.fail("element count changes"))?]
    };
    Ok(out)
}

/// `Transpose`.
fn fold_transpose(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let a = Attrs::of(f.n);
    let out = {
        let data = f.need(0)?;
        let r = data.shape().len();
        let perm: Vec<usize> =
            a.ints("perm")?.map(|p| p.iter().map(|&v| v as usize).collect()).unwrap_or_else(|| (0..r).rev().collect());
        if perm.len() != r || perm.iter().any(|&p| p >= r) {
            return Err(f.fail("bad perm"));
        }
        vec![data
            .map(
                |x| Some(x.clone().permuted_axes(IxDyn(&perm)).as_standard_layout().to_owned()),
                |x| Some(x.clone().permuted_axes(IxDyn(&perm)).as_standard_layout().to_owned()),
            )
            .ok_or_else(|| f.fail("bad perm"))?]
    };
    Ok(out)
}

/// `Concat`.
fn fold_concat(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let n = f.n;
    let a = Attrs::of(n);
    let out = {
        let vals: Vec<Val> = (0..n.input.len()).map(|i| f.need(i)).collect::<Result<_, _>>()?;
        let r = vals[0].shape().len();
        let ax = axis(n, a.int("axis", 0)?, r)?;
        vec![match &vals[0] {
            Val::F(_) => {
                let views: Vec<ArrayD<f32>> = vals.iter().map(as_f).collect();
                let v: Vec<_> = views.iter().map(|x| x.view()).collect();
                Val::F(ndarray::concatenate(Axis(ax), &v).map_err(|e| f.fail(&e.to_string()))?)
            }
            Val::I(_, b) => {
                let views: Vec<ArrayD<i64>> = vals.iter().map(as_i).collect();
                let v: Vec<_> = views.iter().map(|x| x.view()).collect();
                Val::I(ndarray::concatenate(Axis(ax), &v).map_err(|e| f.fail(&e.to_string()))?, *b)
            }
        }]
    };
    Ok(out)
}

/// `Slice` (optional axes and steps).
fn fold_slice(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let n = f.n;
    let out = {
        let data = f.need(0)?;
        let shape = data.shape().to_vec();
        let r = shape.len();
        let starts = f.need(1)?.ints();
        let ends = f.need(2)?.ints();
        let axes: Vec<usize> = match f.get(3)? {
            Some(v) => v.ints().iter().map(|&x| axis(n, x, r)).collect::<Result<_, _>>()?,
            None => (0..starts.len()).collect(),
        };
        let steps = f.get(4)?.map(|v| v.ints()).unwrap_or_else(|| vec![1; starts.len()]);
        let mut v = data;
        for (j, &ax) in axes.iter().enumerate() {
            let (s, e, st) =
                slice_range(shape[ax] as i64, starts[j], ends[j], steps[j]).ok_or_else(|| f.fail("bad slice"))?;
            let sl = Slice::new(s, Some(e), st);
            v = v
                .map(|x| Some(x.slice_axis(Axis(ax), sl).to_owned()), |x| Some(x.slice_axis(Axis(ax), sl).to_owned()))
                .ok_or_else(|| f.fail("bad slice"))?;
        }
        vec![v]
    };
    Ok(out)
}

/// `Split` (sizes as input, attribute, or equal parts).
fn fold_split(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let n = f.n;
    let a = Attrs::of(n);
    let out = {
        let data = f.need(0)?;
        let r = data.shape().len();
        let ax = axis(n, a.int("axis", 0)?, r)?;
        let len = data.shape()[ax];
        let sizes: Vec<usize> = match f.get(1)? {
            Some(v) => v.ints().iter().map(|&x| x.max(0) as usize).collect(),
            None => match a.ints("split")? {
                Some(v) => v.iter().map(|&x| x.max(0) as usize).collect(),
                None => {
                    let k = n.output.len().max(1);
                    let part = len.div_ceil(k);
                    (0..k).map(|i| part.min(len.saturating_sub(i * part))).collect()
                }
            },
        };
        let mut start = 0isize;
        let mut outs = Vec::new();
        for s in sizes {
            let sl = Slice::new(start, Some(start + s as isize), 1);
            outs.push(
                data.map(
                    |x| Some(x.slice_axis(Axis(ax), sl).to_owned()),
                    |x| Some(x.slice_axis(Axis(ax), sl).to_owned()),
                )
                .ok_or_else(|| f.fail("bad split"))?,
            );
            start += s as isize;
        }
        outs
    };
    Ok(out)
}

/// `Where`.
fn fold_where(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let out = {
        let (c, x, y) = (f.need(0)?, f.need(1)?, f.need(2)?);
        let c = as_i(&c);
        vec![match (&x, &y) {
            (Val::F(_), _) | (_, Val::F(_)) => {
                let (xf, yf) = (as_f(&x), as_f(&y));
                Val::F(where3(&c, &xf, &yf).ok_or_else(|| f.fail("operands do not broadcast"))?)
            }
            (Val::I(xi, b), Val::I(yi, _)) => {
                Val::I(where3(&c, xi, yi).ok_or_else(|| f.fail("operands do not broadcast"))?, *b)
            }
        }]
    };
    Ok(out)
}

/// `ConstantOfShape` (not of a batch-sized shape).
fn fold_constant_of_shape(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let n = f.n;
    let a = Attrs::of(n);
    let out = {
        let mut shape = f.need(0)?.ints();
        // A constant sized by the batch (EdgeNeXt's `zeros(B, H, W)` position grid) holds the
        // same values for every sample: folded with one copy, it broadcasts where it is used.
        if shape.first() == Some(&BATCH) {
            shape[0] = 1;
        }
        if shape.iter().any(|&d| d < 0) {
            return Err(f.fail("the shape holds the batch size: a batch-sized constant is not supported"));
        }
        let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
        let value = match a.tensor("value")? {
            Some(t) => Val::from_tensor(t)?,
            None => Val::F(ArrayD::zeros(IxDyn(&[1]))),
        };
        vec![match value {
            Val::F(v) => Val::F(ArrayD::from_elem(IxDyn(&dims), v.iter().next().copied().unwrap_or(0.0))),
            Val::I(v, b) => Val::I(ArrayD::from_elem(IxDyn(&dims), v.iter().next().copied().unwrap_or(0)), b),
        }]
    };
    Ok(out)
}

/// `Range` of integers or floats (not over the batch size).
fn fold_range(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let out = {
        let (s, l, d) = (f.need(0)?, f.need(1)?, f.need(2)?);
        match (&s, &l, &d) {
            (Val::I(..), Val::I(..), Val::I(..)) => {
                let (s, l, d) = (s.ints()[0], l.ints()[0], d.ints()[0]);
                if d == 0 || [s, l, d].iter().any(|&v| is_batch_derived(v)) {
                    return Err(f.fail("a Range over the batch size"));
                }
                let mut v = Vec::new();
                let mut x = s;
                while (d > 0 && x < l) || (d < 0 && x > l) {
                    v.push(x);
                    x += d;
                }
                vec![Val::I(ArrayD::from_shape_vec(IxDyn(&[v.len()]), v).map_err(|e| f.fail(&e.to_string()))?, false)]
            }
            _ => {
                let (s, l, d) = (as_f(&s)[[]], as_f(&l)[[]], as_f(&d)[[]]);
                let count = ((l - s) / d).ceil().max(0.0) as usize;
                let v: Vec<f32> = (0..count).map(|i| s + i as f32 * d).collect();
                vec![Val::F(ArrayD::from_shape_vec(IxDyn(&[count]), v).map_err(|e| f.fail(&e.to_string()))?)]
            }
        }
    };
    Ok(out)
}

/// `Expand` (not to the batch size).
fn fold_expand(f: &Inputs) -> Result<Vec<Val>, GradError> {
    let out = {
        let data = f.need(0)?;
        let shape = f.need(1)?.ints();
        if shape.iter().any(|&d| is_batch_derived(d)) {
            return Err(f.fail("internal: an Expand to the batch size is an activation"));
        }
        let ds = data.shape().to_vec();
        let r = ds.len().max(shape.len());
        let mut target = vec![1usize; r];
        for i in 0..r {
            let a_d = if i + ds.len() >= r { ds[i + ds.len() - r] } else { 1 };
            let b_d = if i + shape.len() >= r { shape[i + shape.len() - r].max(1) as usize } else { 1 };
            target[i] = a_d.max(b_d);
        }
        vec![data
            .map(
                |x| x.broadcast(IxDyn(&target)).map(|v| v.to_owned()),
                |x| x.broadcast(IxDyn(&target)).map(|v| v.to_owned()),
            )
            .ok_or_else(|| f.fail("shapes do not broadcast"))?]
    };
    Ok(out)
}

pub(super) fn axis(n: &NodeProto, ax: i64, rank: usize) -> Result<usize, GradError> {
    let a = if ax < 0 { ax + rank as i64 } else { ax };
    if a < 0 || a > rank as i64 || (a == rank as i64 && rank > 0 && n.op_type != "Unsqueeze") {
        return Err(node_err(n, format!("axis {ax} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Start, end and step of an ONNX Slice along an axis of length `len`, clamped as ONNX does.
pub(crate) fn slice_range(len: i64, start: i64, end: i64, step: i64) -> Option<(isize, isize, isize)> {
    if step == 0 {
        return None;
    }
    let norm = |v: i64| if v < 0 { v + len } else { v };
    let (s, e) = if step > 0 {
        (norm(start).clamp(0, len), norm(end).clamp(0, len))
    } else {
        (norm(start).clamp(-1, len - 1), norm(end).clamp(-1, len - 1))
    };
    if step > 0 {
        Some((s as isize, e.max(s) as isize, step as isize))
    } else {
        // ndarray slices backwards from the end of [e+1, s+1) with a negative step.
        Some(((e + 1) as isize, (s + 1).max(e + 1) as isize, step as isize))
    }
}

fn gather<T: Clone>(x: &ArrayD<T>, ax: usize, ids: &[usize], ishape: &[usize]) -> Option<ArrayD<T>> {
    let picked = x.select(Axis(ax), ids);
    let mut shape: Vec<usize> = x.shape()[..ax].to_vec();
    shape.extend_from_slice(ishape);
    shape.extend_from_slice(&x.shape()[ax + 1..]);
    // `select` keeps the input's memory order; reshaping needs the standard one.
    picked.as_standard_layout().to_owned().into_shape_with_order(IxDyn(&shape)).ok()
}

fn reshape(v: &Val, shape: &[usize]) -> Option<Val> {
    v.map(
        |x| x.as_standard_layout().to_owned().into_shape_with_order(IxDyn(shape)).ok(),
        |x| x.as_standard_layout().to_owned().into_shape_with_order(IxDyn(shape)).ok(),
    )
}

pub(super) fn as_f(v: &Val) -> ArrayD<f32> {
    match v {
        Val::F(x) => x.clone(),
        Val::I(x, _) => x.mapv(|v| v as f32),
    }
}

fn as_i(v: &Val) -> ArrayD<i64> {
    match v {
        Val::F(x) => x.mapv(|v| v as i64),
        Val::I(x, _) => x.clone(),
    }
}

fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    (0..r)
        .map(|i| {
            let x = if i + a.len() >= r { a[i + a.len() - r] } else { 1 };
            let y = if i + b.len() >= r { b[i + b.len() - r] } else { 1 };
            match (x, y) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

pub(super) fn zip2<T: Clone, U>(a: &ArrayD<T>, b: &ArrayD<T>, f: impl Fn(T, T) -> U) -> Option<ArrayD<U>> {
    let s = broadcast_shape(a.shape(), b.shape())?;
    let av = a.broadcast(IxDyn(&s))?;
    let bv = b.broadcast(IxDyn(&s))?;
    let v: Vec<U> = av.iter().zip(bv.iter()).map(|(x, y)| f(x.clone(), y.clone())).collect();
    ArrayD::from_shape_vec(IxDyn(&s), v).ok()
}

fn where3<T: Clone>(c: &ArrayD<i64>, x: &ArrayD<T>, y: &ArrayD<T>) -> Option<ArrayD<T>> {
    let s = broadcast_shape(&broadcast_shape(c.shape(), x.shape())?, y.shape())?;
    let (cv, xv, yv) = (c.broadcast(IxDyn(&s))?, x.broadcast(IxDyn(&s))?, y.broadcast(IxDyn(&s))?);
    let v: Vec<T> = cv
        .iter()
        .zip(xv.iter())
        .zip(yv.iter())
        .map(|((&c, x), y)| if c != 0 { x.clone() } else { y.clone() })
        .collect();
    ArrayD::from_shape_vec(IxDyn(&s), v).ok()
}

pub(super) fn binary(op: &str, x: &Val, y: &Val) -> Option<Val> {
    match (x, y) {
        (Val::I(a, _), Val::I(b, _)) => Some(Val::I(
            zip2(a, b, |p, q| match op {
                "Add" => p.wrapping_add(q),
                "Sub" => p.wrapping_sub(q),
                "Mul" => p.wrapping_mul(q),
                // ONNX integer Div truncates; the batch sentinel stays recognisable.
                "Div" => {
                    if q == 0 {
                        0
                    } else {
                        p / q
                    }
                }
                "Mod" => {
                    if q == 0 {
                        0
                    } else {
                        p.rem_euclid(q)
                    }
                }
                "Pow" => p.checked_pow(q.clamp(0, 62) as u32).unwrap_or(i64::MAX),
                "Min" => p.min(q),
                _ => p.max(q),
            })?,
            false,
        )),
        _ => Some(Val::F(zip2(&as_f(x), &as_f(y), |p, q| match op {
            "Add" => p + q,
            "Sub" => p - q,
            "Mul" => p * q,
            "Div" => p / q,
            "Mod" => p % q,
            "Pow" => p.powf(q),
            "Min" => p.min(q),
            _ => p.max(q),
        })?)),
    }
}

fn compare(op: &str, x: &Val, y: &Val) -> Option<Val> {
    let r = match (x, y) {
        (Val::I(a, _), Val::I(b, _)) => zip2(a, b, |p, q| cmp(op, p as f64, q as f64, p == q))?,
        _ => zip2(&as_f(x), &as_f(y), |p, q| cmp(op, p as f64, q as f64, p == q))?,
    };
    Some(Val::I(r, true))
}

fn cmp(op: &str, p: f64, q: f64, eq: bool) -> i64 {
    i64::from(match op {
        "Equal" => eq,
        "Less" => p < q,
        "Greater" => p > q,
        "LessOrEqual" => p <= q,
        "GreaterOrEqual" => p >= q,
        "And" => p != 0.0 && q != 0.0,
        _ => p != 0.0 || q != 0.0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_reads_a_transposed_constant_by_two_dimensional_indices() {
        // EfficientFormer's attention biases: `biases[:, idx]` with a [2, 2] index table, here on
        // a transposed constant (not in standard memory order).
        let x = ArrayD::from_shape_vec(IxDyn(&[2, 3]), (0..6i64).collect()).unwrap().reversed_axes();
        let g = gather(&x, 1, &[1, 0, 1, 1], &[2, 2]).unwrap();
        assert_eq!(g.shape(), [3, 2, 2]);
        // x = [[0, 3], [1, 4], [2, 5]]
        assert_eq!(g.iter().copied().collect::<Vec<_>>(), [3, 0, 3, 3, 4, 1, 4, 4, 5, 2, 5, 5]);
    }

    #[test]
    fn clip_folds_with_either_bound() {
        use crate::onnx::{make_node, make_tensor_i64};
        let consts: std::collections::HashMap<String, TensorProto> = [
            make_tensor_i64("pads", &[4], &[-1, 0, 2, 5]),
            make_tensor_i64("lo", &[], &[0]),
            make_tensor_i64("hi", &[], &[3]),
        ]
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
        let run = |inputs: &[&str]| {
            let n = make_node("Clip", "c", inputs, &["y"], vec![]);
            let t = fold(&n, &consts, |_| None, None).unwrap().remove(0);
            crate::onnx::tensor_i64(&t).unwrap().iter().copied().collect::<Vec<_>>()
        };
        assert_eq!(run(&["pads", "lo"]), [0, 0, 2, 5]);
        assert_eq!(run(&["pads", "", "hi"]), [-1, 0, 2, 3]);
        assert_eq!(run(&["pads", "lo", "hi"]), [0, 0, 2, 3]);
    }
}
