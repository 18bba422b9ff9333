//! `Einsum` of two operands as attention code writes it (`"bhid,bhjd->bhij"`,
//! `"BGHIJ,BGHJD->BGHID"`: torchvision's MaxViT): indices shared by both operands and the output
//! (batch), exactly one index the product sums over, and one free index on each side (or, with
//! no shared index, several on the first operand against a 2-D second: `"bnc,dc->bnd"`). Such a
//! node becomes `Transpose`s to `[batch..., i, k]` and `[batch..., k, j]`, a `MatMul` and a
//! `Transpose` to the output's order, which the rules differentiate. Other equations are left
//! to be refused by name.

use crate::onnx::{self, attr, Attrs, ModelProto, NodeProto};

/// The model with every such Einsum rewritten, or `None` when it has none.
pub(super) fn as_matmul(model: &ModelProto) -> Option<ModelProto> {
    let graph = model.graph.as_ref()?;
    if !graph.node.iter().any(|n| n.op_type == "Einsum" && plan(n).is_some()) {
        return None;
    }
    let mut out = model.clone();
    let g = out.graph.as_mut()?;
    let mut nodes = Vec::with_capacity(g.node.len() + 8);
    for n in std::mem::take(&mut g.node) {
        match plan(&n) {
            Some(p) if n.op_type == "Einsum" => nodes.extend(rewrite(&n, &p)),
            _ => nodes.push(n),
        }
    }
    g.node = nodes;
    Some(out)
}

/// Permutations: operand A to `[batch..., i, k]`, B to `[batch..., k, j]`, and the MatMul's
/// `[batch..., i, j]` to the output's order.
struct Plan {
    perm_a: Vec<i64>,
    perm_b: Vec<i64>,
    perm_out: Vec<i64>,
}

fn plan(n: &NodeProto) -> Option<Plan> {
    if n.op_type != "Einsum" || n.input.len() != 2 {
        return None;
    }
    let eq: String = Attrs::of(n).string("equation", "").ok()?.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = eq.split_once("->")?;
    let (a, b) = lhs.split_once(',')?;
    let (a, b, o): (Vec<char>, Vec<char>, Vec<char>) =
        (a.chars().collect(), b.chars().collect(), rhs.chars().collect());
    let unique = |v: &[char]| v.iter().all(|c| c.is_alphabetic() && v.iter().filter(|d| *d == c).count() == 1);
    if !unique(&a) || !unique(&b) || !unique(&o) {
        return None;
    }
    let batch: Vec<char> = a.iter().copied().filter(|c| b.contains(c) && o.contains(c)).collect();
    let summed: Vec<char> = a.iter().copied().filter(|c| b.contains(c) && !o.contains(c)).collect();
    let free_a: Vec<char> = a.iter().copied().filter(|c| !b.contains(c)).collect();
    let free_b: Vec<char> = b.iter().copied().filter(|c| !a.contains(c)).collect();
    // Several free indices on A are MatMul's broadcast over a 2-D B (`"bnc,dc->bnd"`, a linear
    // layer), when no index is shared by all three.
    let free_ok = free_a.len() == 1 || (batch.is_empty() && !free_a.is_empty() && b.len() == 2);
    if summed.len() != 1 || !free_ok || free_b.len() != 1 || !free_a.iter().chain(&free_b).all(|c| o.contains(c)) {
        return None;
    }
    if o.len() != batch.len() + free_a.len() + 1 {
        return None;
    }
    let pos = |v: &[char], c: char| v.iter().position(|&d| d == c).map(|p| p as i64);
    let order_a: Vec<char> = batch.iter().chain(&free_a).copied().chain([summed[0]]).collect();
    let order_b: Vec<char> = batch.iter().copied().chain([summed[0], free_b[0]]).collect();
    let order_m: Vec<char> = batch.iter().chain(&free_a).copied().chain([free_b[0]]).collect();
    Some(Plan {
        perm_a: order_a.iter().map(|&c| pos(&a, c)).collect::<Option<_>>()?,
        perm_b: order_b.iter().map(|&c| pos(&b, c)).collect::<Option<_>>()?,
        perm_out: o.iter().map(|&c| pos(&order_m, c)).collect::<Option<_>>()?,
    })
}

fn rewrite(n: &NodeProto, p: &Plan) -> Vec<NodeProto> {
    let identity = |perm: &[i64]| perm.iter().enumerate().all(|(i, &v)| v == i as i64);
    let mut nodes = Vec::new();
    let mut operand = |idx: usize, perm: &[i64]| {
        let x = n.input[idx].clone();
        if identity(perm) {
            return x;
        }
        let y = format!("{}/gw_einsum_in{idx}", n.output[0]);
        nodes.push(onnx::make_node("Transpose", &format!("{y}/node"), &[&x], &[&y], vec![attr::ints("perm", perm)]));
        y
    };
    let (a, b) = (operand(0, &p.perm_a), operand(1, &p.perm_b));
    let out = n.output[0].clone();
    if identity(&p.perm_out) {
        nodes.push(onnx::make_node("MatMul", &n.name, &[&a, &b], &[&out], vec![]));
    } else {
        let m = format!("{out}/gw_einsum_mm");
        nodes.push(onnx::make_node("MatMul", &n.name, &[&a, &b], &[&m], vec![]));
        let t = attr::ints("perm", &p.perm_out);
        nodes.push(onnx::make_node("Transpose", &format!("{out}/gw_einsum_out"), &[&m], &[&out], vec![t]));
    }
    nodes
}
