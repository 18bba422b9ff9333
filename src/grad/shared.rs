//! One float initializer read by several nodes, split into one copy per reader.
//!
//! Exporters merge initializers of equal value: the dynamo exporter's optimiser keeps one
//! tensor for every all-ones BatchNormalization scale and running variance of the same width
//! in an untrained model (torchvision's DenseNet-121: 62 tensors read by 2-4 nodes each), and
//! a model may also tie a weight between layers on purpose. Each reader's parameter then gets
//! its own copy and its own feature (`name`, `name/use2`, ...): the norm of that use's
//! gradient. For merged tensors that is exactly the gradient of the layer PyTorch had; for a
//! weight tied on purpose it is the per-use norm rather than the norm of the summed gradient.

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
    if uses.values().all(|&u| u < 2) {
        return None;
    }
    let mut m = model.clone();
    let g = m.graph.as_mut()?;
    let mut taken: HashSet<String> = g.initializer.iter().map(|t| t.name.clone()).collect();
    taken.extend(g.node.iter().flat_map(|n| n.output.iter().cloned()));
    taken.extend(g.input.iter().map(|i| i.name.clone()));
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
            let mut j = *k;
            let name = loop {
                let name = format!("{input}/use{j}");
                if taken.insert(name.clone()) {
                    break name;
                }
                j += 1;
            };
            let mut t = graph.initializer[idx].clone();
            t.name = name.clone();
            copies.push(t);
            *input = name;
        }
    }
    g.initializer.extend(copies);
    Some(m)
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
}
