//! One float initializer read by several nodes, split into one copy per reader.
//!
//! Exporters merge initializers of equal value: the dynamo exporter's optimiser keeps one
//! tensor for every all-ones BatchNormalization scale and running variance of the same width
//! in an untrained model (torchvision's DenseNet-121: 62 tensors read by 2-4 nodes each), and
//! a model may also tie a weight between layers on purpose. Each reader's parameter then gets
//! its own copy and its own feature (`name`, `name/use2`, ...): the norm of that use's
//! gradient. For merged tensors that is exactly the gradient of the layer PyTorch had; for a
//! weight tied on purpose it is the per-use norm rather than the norm of the summed gradient.
//! A weight read through one view (a `Transpose` the exporter writes for a `linear`) that
//! several nodes read is split the same way, view and all.

use std::collections::{HashMap, HashSet};

use crate::onnx::{data_type, ModelProto};

/// The model with every float initializer of more than one element that several node inputs
/// (other than Identity aliases) read split into one copy per extra reading input (`None`
/// when no initializer is shared).
pub fn unshare_initializers(model: &ModelProto) -> Option<ModelProto> {
    let graph = model.graph.as_ref()?;
    let floats: HashMap<&str, usize> = graph
        .initializer
        .iter()
        .enumerate()
        .filter(|(_, t)| t.data_type == data_type::FLOAT && t.dims.iter().product::<i64>() > 1)
        .map(|(i, t)| (t.name.as_str(), i))
        .collect();
    let mut uses: HashMap<&str, usize> = HashMap::new();
    // An Identity's output is an alias the compiler reads as its own constant (the legacy
    // exporter's way of sharing equal tensors), so only other readers count.
    let reads = |op: &str| op != "Identity";
    for n in graph.node.iter().filter(|n| reads(&n.op_type)) {
        for i in n.input.iter().filter(|i| floats.contains_key(i.as_str())) {
            *uses.entry(i.as_str()).or_default() += 1;
        }
    }
    let shared_views = shared_views(graph, &floats);
    if uses.values().all(|&u| u < 2) && shared_views.is_empty() {
        return None;
    }
    let mut m = model.clone();
    let g = m.graph.as_mut()?;
    let mut taken: HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    taken.extend(g.node.iter().flat_map(|n| n.output.iter().cloned()));
    taken.extend(g.input.iter().map(|i| i.name.clone()));
    let mut fresh = |base: &str, from: usize| {
        let mut j = from;
        loop {
            let name = format!("{base}/use{j}");
            if taken.insert(name.clone()) {
                return name;
            }
            j += 1;
        }
    };
    // A weight read through one view (`Transpose(W)`, the dynamo exporter's `linear` of a module
    // applied in several places: CoaT's shared MLPs) whose output several nodes read: each extra
    // reader gets its own view of its own copy.
    let mut view_copies: Vec<(usize, crate::onnx::NodeProto)> = Vec::new();
    let mut init_copies = Vec::new();
    for (vi, readers) in &shared_views {
        let view = g.node[*vi].clone();
        for (k, (ri, slot)) in readers.iter().enumerate().skip(1) {
            let w = fresh(&view.input[0], k + 1);
            let out = fresh(&view.output[0], k + 1);
            let mut t = graph.initializer[floats[view.input[0].as_str()]].clone();
            t.name = w.clone();
            init_copies.push(t);
            let mut v = view.clone();
            v.name = format!("{}/use{}", view.name, k + 1);
            v.input[0] = w;
            v.output = vec![out.clone()];
            view_copies.push((*vi, v));
            g.node[*ri].input[*slot] = out;
        }
    }
    for (vi, v) in view_copies.into_iter().rev() {
        g.node.insert(vi + 1, v);
    }
    g.initializer.extend(init_copies);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut copies = Vec::new();
    for n in g.node.iter_mut().filter(|n| reads(&n.op_type)) {
        for input in &mut n.input {
            let Some(&idx) = floats.get(input.as_str()) else { continue };
            let k = seen.entry(input.clone()).or_default();
            *k += 1;
            if *k == 1 {
                continue;
            }
            let name = fresh(input, *k);
            let mut t = graph.initializer[idx].clone();
            t.name = name.clone();
            copies.push(t);
            *input = name;
        }
    }
    g.initializer.extend(copies);
    Some(m)
}

/// Views (`Transpose`, `Reshape`, `Squeeze`, `Unsqueeze`, `Flatten`) of a float initializer
/// read by nothing else, whose output several node inputs read: the view's index and those
/// readers (node index, input slot).
fn shared_views(graph: &crate::onnx::GraphProto, floats: &HashMap<&str, usize>) -> Vec<(usize, Vec<(usize, usize)>)> {
    const VIEWS: &[&str] = &["Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten"];
    let mut readers: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (ni, n) in graph.node.iter().enumerate() {
        for (slot, i) in n.input.iter().enumerate() {
            readers.entry(i.as_str()).or_default().push((ni, slot));
        }
    }
    graph
        .node
        .iter()
        .enumerate()
        .filter(|(_, n)| VIEWS.contains(&n.op_type.as_str()))
        .filter(|(_, n)| n.input.first().is_some_and(|w| floats.contains_key(w.as_str())))
        .filter(|(_, n)| readers.get(n.input[0].as_str()).is_some_and(|r| r.len() == 1))
        .filter_map(|(vi, n)| {
            let r = readers.get(n.output.first()?.as_str())?;
            (r.len() > 1).then(|| (vi, r.clone()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{self, make_node, make_tensor_f32, make_tensor_i64, make_value_info, GraphProto};

    #[test]
    fn each_extra_reader_gets_its_own_copy() {
        // `w` is read by two nodes and aliased by an Identity, `one` is a scalar and `shape` an
        // int64 constant: only `w` is split, and its copy skips the name `w/use2` that the model
        // already has.
        let graph = GraphProto {
            node: vec![
                make_node("Identity", "alias", &["w"], &["w_alias"], vec![]),
                make_node("Mul", "a", &["x", "w"], &["a"], vec![]),
                make_node("Add", "b", &["a", "w"], &["b"], vec![]),
                make_node("Mul", "c", &["b", "one"], &["c"], vec![]),
                make_node("Add", "d", &["c", "one"], &["d"], vec![]),
                make_node("Reshape", "e", &["d", "shape"], &["e"], vec![]),
                make_node("Reshape", "f", &["e", "shape"], &["f"], vec![]),
            ],
            initializer: vec![
                make_tensor_f32("w", &[2], &[1.0, 1.0]),
                make_tensor_f32("w/use2", &[1], &[7.0]),
                make_tensor_f32("one", &[], &[1.0]),
                make_tensor_i64("shape", &[1], &[-1]),
            ],
            input: vec![make_value_info("x", onnx::data_type::FLOAT, &[None, Some(2)])],
            output: vec![make_value_info("f", onnx::data_type::FLOAT, &[None])],
            ..Default::default()
        };
        let model = ModelProto { graph: Some(graph), ..Default::default() };
        let m = unshare_initializers(&model).unwrap();
        let g = m.graph.as_ref().unwrap();
        assert_eq!(g.node[0].input[0], "w");
        assert_eq!(g.node[1].input[1], "w");
        assert_eq!(g.node[2].input[1], "w/use3");
        assert_eq!(g.node[5].input[1], "shape");
        assert_eq!(g.node[6].input[1], "shape");
        assert_eq!(g.node[4].input[1], "one");
        let copy = g.initializer.iter().find(|t| t.name == "w/use3").unwrap();
        assert_eq!(onnx::tensor_f32(copy).unwrap().as_slice().unwrap(), [1.0, 1.0]);

        let single = ModelProto {
            graph: Some(GraphProto {
                node: g.node[..1].to_vec(),
                initializer: g.initializer.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(unshare_initializers(&single).is_none(), "nothing shared, nothing copied");
    }

    #[test]
    fn a_weight_shared_through_one_view_gets_a_view_per_reader() {
        // `linear(x, w)` of one module applied twice, as the dynamo exporter writes it:
        // `Transpose(w)` read by two MatMuls.
        let graph = GraphProto {
            node: vec![
                make_node("Transpose", "t", &["w"], &["wt"], vec![]),
                make_node("MatMul", "a", &["x", "wt"], &["a"], vec![]),
                make_node("MatMul", "b", &["a", "wt"], &["b"], vec![]),
            ],
            initializer: vec![make_tensor_f32("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0])],
            input: vec![make_value_info("x", onnx::data_type::FLOAT, &[None, Some(2)])],
            output: vec![make_value_info("b", onnx::data_type::FLOAT, &[None, Some(2)])],
            ..Default::default()
        };
        let m = unshare_initializers(&ModelProto { graph: Some(graph), ..Default::default() }).unwrap();
        let g = m.graph.as_ref().unwrap();
        let ops: Vec<(&str, &[String])> = g.node.iter().map(|n| (n.op_type.as_str(), n.input.as_slice())).collect();
        assert_eq!(ops[0], ("Transpose", &["w".to_string()][..]));
        assert_eq!(ops[1], ("Transpose", &["w/use2".to_string()][..]));
        assert_eq!(g.node[2].input[1], "wt");
        assert_eq!(g.node[3].input[1], g.node[1].output[0]);
        assert!(g.initializer.iter().any(|t| t.name == "w/use2"));
    }
}
