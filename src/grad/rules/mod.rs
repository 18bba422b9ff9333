//! The rule table: one [`Rule`] per operator the compiler differentiates through, grouped by
//! family, one file each (`conv`, `norm`, `layernorm`, `activation`, `math`, `arith`, `select`, `pool`,
//! `resize`, `shape`, `linear`, `attention`). Nodes on constants only never reach them: `fold` evaluates those.
//!
//! A rule says which inputs of a node are trainable parameters (and of which
//! [`ParamKind`]), the node's per-sample output shape, and how to emit its backward.
//! [`super::SUPPORTED_OPS`], the "unsupported operator" error and the forward and backward
//! passes of [`super::compile`] all read this table; nothing else lists operators.
//!
//! Activations always carry the batch as their leading axis; shapes here are per sample
//! (without that axis). Every backward rule works on whole batches and never mixes samples,
//! so the norms it forms are per-sample.
//!
//! # Adding an operator
//!
//! Add one [`Rule`] to the `RULES` slice of its family's file (or to a new family file listed
//! in `FAMILIES` below), e.g. `Tanh` in `activation.rs`:
//!
//! ```ignore
//! Rule { op: "Tanh", params: Params::None, shape: same_shape, backward: tanh },
//!
//! /// `dx = dy * (1 - y^2)`, from the output `y`.
//! fn tanh(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
//!     let y = n.output[0].clone();
//!     let one = ctx.b.scalar(1.0);
//!     let y2 = ctx.b.mul(&y, &y);
//!     let d = ctx.b.sub(&one, &y2);
//!     Ok(single(n, ctx.b.mul(dy, &d)))
//! }
//! ```
//!
//! An operator with weights names them in `params` (`Params::Inputs(&[(1, ParamKind::Weight)])`)
//! and records each selected one's per-sample squared norm with [`Ctx::add_norm`] when
//! [`Ctx::is_param`] says it counts; its backward runs whether or not the gradient of its
//! input is wanted (the first layer's is not). Then give the operator a finite-difference case
//! in `FD_CASES` of `tests/it/grad.rs`: `fd_cases_cover_every_rule` fails until one uses it.

mod activation;
mod arith;
mod attention;
mod conv;
mod layernorm;
mod linear;
mod math;
mod norm;
mod pool;
mod quant;
mod resize;
mod select;
mod shape;
mod tile;
mod window;

pub(crate) use quant::int_range as quant_range;

use std::collections::{HashMap, HashSet};

use super::{node_err, Ctx, GradError, ParamKind};
use crate::onnx::NodeProto;

/// Gradient contributions of a node's backward: `(activation input, its gradient)`.
pub(crate) type Grads = Vec<(String, String)>;

/// Per-sample output shape of a node, from its inputs' shapes and constants.
pub(crate) type ShapeFn = fn(&NodeProto, &Ctx) -> Result<Vec<usize>, GradError>;

/// Emits the backward of a node given the gradient `dy` of its (first) output: returns the
/// gradient contributions to its activation inputs and records its parameters' norms in `Ctx`.
pub(crate) type BackwardFn = fn(&NodeProto, &str, &mut Ctx) -> Result<Grads, GradError>;

/// Finds a node's parameter inputs from its neighbourhood in the graph.
pub(crate) type DiscoverFn = fn(&NodeProto, &Scope) -> Vec<(usize, ParamKind)>;

/// Which inputs of a node are trainable parameters.
pub(crate) enum Params {
    /// None: the operator has no weights.
    None,
    /// These input positions, when they are constants.
    Inputs(&'static [(usize, ParamKind)]),
    /// Decided by looking at the node's neighbours (bias Adds, folded BatchNormalization).
    Discover(DiscoverFn),
}

/// How the compiler handles one operator.
pub(crate) struct Rule {
    /// The ONNX operator type (`ai.onnx` domain).
    pub op: &'static str,
    /// Its parameter inputs.
    pub params: Params,
    /// Its per-sample output shape.
    pub shape: ShapeFn,
    /// Its backward.
    pub backward: BackwardFn,
}

/// The families, in the order the supported operators are listed.
const FAMILIES: &[&[Rule]] = &[
    conv::RULES,
    norm::RULES,
    layernorm::RULES,
    activation::RULES,
    math::RULES,
    arith::RULES,
    select::RULES,
    pool::RULES,
    resize::RULES,
    shape::RULES,
    tile::RULES,
    linear::RULES,
    attention::RULES,
    quant::RULES,
];

/// Number of rules in the table.
pub(crate) const COUNT: usize = {
    let mut n = 0;
    let mut f = 0;
    while f < FAMILIES.len() {
        n += FAMILIES[f].len();
        f += 1;
    }
    n
};

/// Operator names of the table, in order.
pub(crate) const NAMES: [&str; COUNT] = {
    let mut names = [""; COUNT];
    let mut i = 0;
    let mut f = 0;
    while f < FAMILIES.len() {
        let mut r = 0;
        while r < FAMILIES[f].len() {
            names[i] = FAMILIES[f][r].op;
            i += 1;
            r += 1;
        }
        f += 1;
    }
    names
};

/// The rule for an operator type.
pub(crate) fn find(op: &str) -> Option<&'static Rule> {
    FAMILIES.iter().flat_map(|f| f.iter()).find(|r| r.op == op)
}

/// The graph around a node, for parameter discovery.
pub(crate) struct Scope<'a> {
    /// Constants and the shapes known so far (the node's inputs and output included).
    pub ctx: &'a Ctx,
    /// The node writing each value.
    pub producers: &'a HashMap<String, &'a NodeProto>,
    /// How many nodes read each value (a graph output counts as one more).
    pub readers: &'a HashMap<String, Vec<&'a NodeProto>>,
    /// Values computed downstream of a parameter candidate (whether selected or not).
    pub after_param: &'a HashSet<String>,
}

impl Scope<'_> {
    /// The one node reading `name`, when exactly one does and it is no graph output.
    pub fn sole_reader(&self, name: &str) -> Option<&NodeProto> {
        match self.readers.get(name).map(Vec::as_slice) {
            Some([n]) if !n.op_type.is_empty() => Some(n),
            _ => None,
        }
    }
}

impl Rule {
    /// The parameter candidates of node `n`: `(input position, kind)`.
    pub fn candidates(&self, n: &NodeProto, scope: &Scope) -> Vec<(usize, ParamKind)> {
        match &self.params {
            Params::None => vec![],
            Params::Inputs(idx) => idx
                .iter()
                .filter(|(i, _)| n.input.get(*i).is_some_and(|s| !s.is_empty() && scope.ctx.consts.contains_key(s)))
                .copied()
                .collect(),
            Params::Discover(f) => f(n, scope),
        }
    }
}

/// Emits the backward of `n` through its rule. Skips nodes that neither pass a wanted gradient
/// on nor own a selected parameter; a node with a selected parameter always runs, so the first
/// layer's weights get their norms though nothing wants the image's gradient.
pub(crate) fn backward(n: &NodeProto, dy: &str, ctx: &mut Ctx) -> Result<Grads, GradError> {
    let rule = find(&n.op_type).ok_or_else(|| super::unsupported(n))?;
    if !n.input.iter().any(|i| ctx.wants_grad(i) || ctx.is_param(i)) {
        return Ok(vec![]);
    }
    (rule.backward)(n, dy, ctx)
}

/// Input `i` of `n`, which must be an activation (a tensor computed from the image).
fn act_input<'a>(n: &'a NodeProto, ctx: &Ctx, i: usize) -> Result<&'a str, GradError> {
    let s = n.input.get(i).map(String::as_str).unwrap_or("");
    if s.is_empty() || !ctx.is_act(s) {
        return Err(node_err(n, format!("input {i} must be an activation (a tensor computed from the image)")));
    }
    Ok(s)
}

/// A node's `axes`: its attribute (before opset 13, or 18 for most reductions) or its constant
/// input 1; `None` when it has neither.
pub(crate) fn axes(n: &NodeProto, ctx: &Ctx) -> Result<Option<Vec<i64>>, GradError> {
    if let Some(v) = crate::onnx::Attrs::of(n).ints("axes")? {
        return Ok(Some(v));
    }
    match n.input.get(1).filter(|s| !s.is_empty()) {
        Some(name) => Ok(Some(ctx.const_i64(n, name)?)),
        None => Ok(None),
    }
}

/// A `Pad` node's constant pads (input 1) for a tensor of `rank` (batch axis included), as
/// `[begin per axis..., end per axis...]`, those of the axes not in its `axes` input zero.
pub(crate) fn pads(n: &NodeProto, ctx: &Ctx, rank: usize) -> Result<Vec<i64>, GradError> {
    let raw = ctx.const_i64(n, n.input.get(1).map(String::as_str).unwrap_or(""))?;
    let axes: Vec<usize> = match n.input.get(3).filter(|s| !s.is_empty()) {
        Some(name) => ctx.const_i64(n, name)?.iter().map(|&x| norm_axis(n, x, rank)).collect::<Result<_, _>>()?,
        None => (0..rank).collect(),
    };
    if raw.len() != 2 * axes.len() {
        return Err(node_err(n, "pads length does not match the axes"));
    }
    let mut pads = vec![0i64; 2 * rank];
    for (j, &ax) in axes.iter().enumerate() {
        pads[ax] = raw[j];
        pads[rank + ax] = raw[axes.len() + j];
    }
    Ok(pads)
}

/// `axis` of a tensor of `rank` (batch axis included) as a non-negative index.
pub(crate) fn norm_axis(n: &NodeProto, axis: i64, rank: usize) -> Result<usize, GradError> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank as i64 {
        return Err(node_err(n, format!("axis {axis} out of range for rank {rank}")));
    }
    Ok(a as usize)
}

/// Shape rule of operators whose output is shaped like their first input.
fn same_shape(n: &NodeProto, ctx: &Ctx) -> Result<Vec<usize>, GradError> {
    ctx.shape(n, act_input(n, ctx, 0)?)
}

/// The gradient `g` of a node's first input, as its one contribution.
fn single(n: &NodeProto, g: String) -> Grads {
    vec![(n.input[0].clone(), g)]
}

/// Whether `n` is an `Expand` of a constant to a shape holding the batch size (a class token
/// made into one copy per sample), or a `Tile` of one by the batch size: a value that carries
/// the batch though no input does.
pub(crate) fn expands_to_batch(n: &NodeProto, ctx: &Ctx) -> bool {
    shape::expands_to_batch(n, ctx) || tile::tiles_to_batch(n, ctx)
}

/// A value's name and per-sample shape.
pub(crate) type NamedShape = (String, Vec<usize>);

/// Whether `n` has several outputs whose gradients its backward takes together (`Split`).
pub(crate) fn multi_output(n: &NodeProto) -> bool {
    n.op_type == "Split"
}

/// The per-sample shapes of every output of a multi-output node (`None` for one-output nodes).
pub(crate) fn output_shapes(n: &NodeProto, ctx: &Ctx) -> Result<Option<Vec<NamedShape>>, GradError> {
    if !multi_output(n) {
        return Ok(None);
    }
    shape::split_shapes(n, ctx).map(Some)
}

/// The gradient of a multi-output node's outputs joined into the one `dy` its backward takes.
pub(crate) fn join_outputs(n: &NodeProto, ctx: &mut Ctx, grads: &[String]) -> Result<String, GradError> {
    shape::split_join(n, ctx, grads)
}
