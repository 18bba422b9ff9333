//! Batch-dependent integer tensors followed symbolically: the indices `torch.as_strided`
//! exports as `Range(0, N) * stride + offsets`, which no constant fold can evaluate (the batch
//! size is symbolic) but the analysis can rewrite per sample (see `forward::as_strided`).

use ndarray::{ArrayD, IxDyn};

use super::fold::{zip2, BATCH};
use crate::onnx::{self, Attrs, NodeProto, TensorProto};

/// An integer tensor that depends on the sample index `b`: `b * k + c[..]`, shaped
/// `[N] + c.shape` (the indices `torch.as_strided` exports as: `Range(0, N) * stride + offsets`).
#[derive(Clone, Debug)]
pub(crate) struct Affine {
    /// The factor of the sample index.
    pub k: i64,
    /// The per-sample part.
    pub c: ArrayD<i64>,
}

/// Folds `n` when one input is a batch-affine tensor (`affine`) or it starts one (a `Range`
/// from 0 to the batch size by 1); `None` when it neither is nor can be.
pub(crate) fn fold_affine(
    n: &NodeProto,
    consts: &std::collections::HashMap<String, TensorProto>,
    affine: &std::collections::HashMap<String, Affine>,
) -> Option<Affine> {
    let ints = |i: usize| -> Option<ArrayD<i64>> { onnx::tensor_i64(consts.get(n.input.get(i)?)?).ok() };
    let scalar = |a: &ArrayD<i64>| (a.len() == 1).then(|| a.iter().next().copied()).flatten();
    let aff = |i: usize| n.input.get(i).and_then(|s| affine.get(s));
    match n.op_type.as_str() {
        "Range" => {
            let (s, l, d) = (scalar(&ints(0)?)?, scalar(&ints(1)?)?, scalar(&ints(2)?)?);
            (s == 0 && l == BATCH && d == 1).then(|| Affine { k: 1, c: ArrayD::zeros(IxDyn(&[])) })
        }
        "Identity" | "Cast" => aff(0).cloned(),
        "Mul" | "Add" => {
            let (a, other) = match (aff(0), aff(1)) {
                (Some(a), None) => (a, ints(1)?),
                (None, Some(a)) => (a, ints(0)?),
                _ => return None,
            };
            // The constant's axis along the batch (if it has one) must be 1.
            let r = a.c.ndim() + 1;
            if other.ndim() > r || (other.ndim() == r && other.shape()[0] != 1) {
                return None;
            }
            let o = if other.ndim() == r {
                let s: Vec<usize> = other.shape()[1..].to_vec();
                other.into_shape_with_order(IxDyn(&s)).ok()?
            } else {
                other
            };
            if n.op_type == "Mul" {
                let v = scalar(&o)?;
                Some(Affine { k: a.k.wrapping_mul(v), c: a.c.mapv(|x| x.wrapping_mul(v)) })
            } else {
                Some(Affine { k: a.k, c: zip2(&a.c, &o, |x, y| x.wrapping_add(y))? })
            }
        }
        "Unsqueeze" => {
            let a = aff(0)?;
            let axes = match Attrs::of(n).ints("axes").ok().flatten() {
                Some(v) => v,
                None => ints(1)?.iter().copied().collect(),
            };
            let r = a.c.ndim() + 1 + axes.len();
            let mut ax: Vec<usize> =
                axes.iter().map(|&v| if v < 0 { v + r as i64 } else { v }).map(|v| v.max(0) as usize).collect();
            ax.sort_unstable();
            if ax.contains(&0) {
                return None;
            }
            let mut shape = a.c.shape().to_vec();
            for &i in &ax {
                if i - 1 > shape.len() {
                    return None;
                }
                shape.insert(i - 1, 1);
            }
            Some(Affine { k: a.k, c: a.c.clone().into_shape_with_order(IxDyn(&shape)).ok()? })
        }
        _ => None,
    }
}
