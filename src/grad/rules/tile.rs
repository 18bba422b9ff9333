//! `Tile`: repeats of an activation along its per-sample axes (GCViT's global query repeated
//! over windows), or of a constant along the batch (`pos.repeat(B, 1, 1, 1)`, XCiT's position
//! encoding), which starts a batch-carrying value as an `Expand` to the batch does; a tiled
//! parameter (more than one value) is a feature, as an expanded one is.

use super::{single, Grads, Params, Rule};
use crate::grad::fold::{is_batch_derived, BATCH};
use crate::grad::{node_err, Ctx, GradError};
use crate::onnx::NodeProto;

/// The tiling rule.
pub(super) const RULES: &[Rule] =
    &[Rule { op: "Tile", params: Params::Discover(super::shape::expand_params), shape: tile_shape, backward: tile }];

/// Whether `n` tiles a constant by the batch size (and so starts a batch-carrying value).
pub(super) fn tiles_to_batch(n: &NodeProto, ctx: &Ctx) -> bool {
    n.op_type == "Tile"
        && n.input.first().is_some_and(|d| ctx.consts.contains_key(d) && !ctx.is_act(d))
        && n.input
            .get(1)
            .is_some_and(|r| ctx.const_i64(n, r).is_ok_and(|r| r.first().is_some_and(|&v| is_batch_derived(v))))
}

/// The per-sample dims of the data (a constant's leading 1 stands for the batch) and the
/// per-sample repeats.
fn geometry(n: &NodeProto, ctx: &Ctx) -> Result<(Vec<usize>, Vec<usize>), GradError> {
    let reps = ctx.const_i64(n, n.input.get(1).map(String::as_str).unwrap_or(""))?;
    let data = &n.input[0];
    let dims = if ctx.is_act(data) {
        if reps.first() != Some(&1) {
            return Err(node_err(n, "Tile must not repeat the batch axis of an activation (it would mix samples)"));
        }
        ctx.shape(n, data)?
    } else {
        let d = ctx.const_dims(n, data)?;
        if reps.first() != Some(&BATCH) || d.first() != Some(&1) {
            return Err(node_err(n, "a Tile of a constant must repeat a leading 1 by the batch size"));
        }
        d[1..].to_vec()
    };
    if reps.len() != dims.len() + 1 || reps[1..].iter().any(|&r| r < 1 || is_batch_derived(r)) {
        return Err(node_err(n, format!("Tile repeats {reps:?} do not fit a per-sample shape {dims:?}")));
    }
    Ok((dims, reps[1..].iter().map(|&r| r as usize).collect()))
}

fn tile_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    let (dims, reps) = geometry(n, ctx)?;
    Ok(dims.iter().zip(&reps).map(|(d, r)| d * r).collect())
}

/// The adjoint: the output seen as `[N, r1, d1, r2, d2, ...]` (tile index outer), summed over
/// the repeats.
fn tile(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let (dims, reps) = geometry(n, ctx)?;
    let mut split = vec![-1i64];
    for (&d, &r) in dims.iter().zip(&reps) {
        split.extend([r as i64, d as i64]);
    }
    let axes: Vec<i64> = (0..dims.len()).map(|i| 1 + 2 * i as i64).collect();
    let g = ctx.b.reshape_to(dy, &split);
    let summed = ctx.b.reduce("ReduceSum", &g, &axes, false);
    let data = n.input[0].clone();
    if ctx.is_param(&data) {
        let norm = ctx.b.sample_sq_norm(&summed, dims.len() + 1);
        ctx.add_norm(n, &data, norm)?;
        return Ok(vec![]);
    }
    if !ctx.wants_grad(&data) {
        return Ok(vec![]);
    }
    Ok(single(n, summed))
}
