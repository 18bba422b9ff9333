//! A model exported with a fixed batch size (`torch.onnx.export` without `dynamic_axes`, many
//! model-zoo files: `[1, 3, H, W]`) made batch-dynamic, so that the compiled graph and the
//! plain forward graph take any batch the daemon sends.
//!
//! The exporter writes the batch size as a literal wherever the model read it: the leading `1`
//! of a flatten's `Reshape` target, the `Expand` of a class token to `[1, 1, D]`, a class token
//! folded to a `[1, 1, D]` constant and concatenated with the patch tokens. The rewrite makes
//! the input's first axis symbolic and replaces those literals with the batch read from the
//! input (`Shape(input)[0:1]`), which the compiler folds to its symbolic batch like any
//! dynamic export's. A view the exporter wrote as a `Gather` of constant indices from the
//! flattened batch (PyTorch's `as_strided` in torchvision's ConvNeXt head) becomes the same
//! `Gather` per sample, and a `Resize` to literal sizes resizes every sample. A model that
//! uses its batch size in another way (a `Reshape` that drops the batch axis) still compiles to
//! an error that names the node.

use std::collections::{HashMap, HashSet};

use super::{collect_constants, GradError};
use crate::onnx::{self, attr, ModelProto, NodeProto, TensorProto};

/// The model with its image input's fixed batch axis made symbolic (`None` when the input
/// already has a symbolic batch, or the model has no single image input, which the compiler
/// reports itself).
pub fn dynamic_batch(model: &ModelProto) -> Result<Option<ModelProto>, GradError> {
    Ok(rewrite_batch(model)?.map(|r| r.model))
}

/// [`dynamic_batch`], with the Reshape targets it rewrote and their literal values: where the
/// compiler finds that a reshape's input holds the batch merged with another axis, the
/// literal (written for the export's batch) says where it goes, not the rewrite.
pub(super) fn rewrite_batch(model: &ModelProto) -> Result<Option<Rewritten>, GradError> {
    let Some(graph) = model.graph.as_ref() else { return Ok(None) };
    let consts = collect_constants(graph)?;
    let inputs: Vec<_> = graph.input.iter().filter(|i| !consts.contains_key(&i.name)).collect();
    let [input] = inputs.as_slice() else { return Ok(None) };
    let batch = match onnx::value_info_shape(input).and_then(|(_, d)| d.first().copied()) {
        Some(Some(b)) => b,
        _ => return Ok(None),
    };
    let image = input.name.clone();
    let mut m = model.clone();
    let Some(g) = m.graph.as_mut() else { return Ok(None) };
    for v in g.input.iter_mut().filter(|v| v.name == image).chain(g.output.iter_mut()) {
        symbolic_batch(v, batch);
    }
    // Inferred shapes would contradict the new batch; ONNX Runtime infers them again.
    g.value_info.clear();

    let mut concat_readers: HashMap<String, (usize, usize)> = HashMap::new();
    for n in &g.node {
        let along = n.op_type == "Concat" && onnx::Attrs::of(n).int("axis", 0).is_ok_and(|a| a != 0);
        for i in &n.input {
            let e = concat_readers.entry(i.clone()).or_default();
            e.0 += 1;
            e.1 += usize::from(along);
        }
    }
    let mut rw = Rewriter {
        image,
        batch,
        consts,
        derived: HashSet::new(),
        concat_readers,
        nodes: Vec::new(),
        have_batch: false,
        inits: Vec::new(),
        flat_of: HashMap::new(),
        rewritten: HashSet::new(),
        literals: HashMap::new(),
    };
    let mut body = Vec::with_capacity(g.node.len());
    for n in std::mem::take(&mut g.node) {
        let n = rw.node(n)?;
        // The batch read and the targets built from it run right before their reader, after
        // any Constant node they use.
        body.append(&mut rw.nodes);
        body.push(n);
    }
    g.node = body;
    g.initializer.extend(rw.inits);
    Ok(Some(Rewritten { model: m, literals: rw.literals, batch }))
}

/// Rewritten Reshape target -> the export's literal target.
pub(super) type Literals = HashMap<String, Vec<i64>>;

/// What [`rewrite_batch`] made of a fixed-batch model.
pub(super) struct Rewritten {
    /// The model with a symbolic batch.
    pub model: ModelProto,
    /// The Reshape targets it rewrote, with their literal values.
    pub literals: Literals,
    /// The export's fixed batch size.
    pub batch: i64,
}

/// Sets a value's leading dim to the symbolic `N` when it is the fixed batch `batch`.
fn symbolic_batch(v: &mut onnx::ValueInfoProto, batch: i64) {
    use onnx::proto::DimensionValue;
    let dim = v.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()).and_then(|t| t.shape.as_mut());
    if let Some(d) = dim.and_then(|s| s.dim.first_mut()) {
        if d.value == Some(DimensionValue::DimValue(batch)) {
            d.value = Some(DimensionValue::DimParam("N".into()));
        }
    }
}

struct Rewriter {
    image: String,
    batch: i64,
    consts: HashMap<String, TensorProto>,
    /// Values computed from constants only (no path from the image).
    derived: HashSet<String>,
    /// Nodes to insert before the node being rewritten.
    nodes: Vec<NodeProto>,
    /// Per value: (readers, of which Concats along a non-batch axis).
    concat_readers: HashMap<String, (usize, usize)>,
    /// Whether `Shape(input)[0:1]` has been emitted.
    have_batch: bool,
    inits: Vec<TensorProto>,
    /// Outputs of `Reshape(x, [-1])` of an activation (the whole batch flattened): their `x`.
    flat_of: HashMap<String, String>,
    /// Reshape targets already rewritten (`<target>/gw_batch`).
    rewritten: HashSet<String>,
    /// Rewritten Reshape targets -> their literal values.
    literals: Literals,
}

impl Rewriter {
    fn is_const(&self, v: &str) -> bool {
        v.is_empty() || self.consts.contains_key(v) || self.derived.contains(v)
    }

    fn ints(&self, v: &str) -> Option<Vec<i64>> {
        self.consts.get(v).and_then(|t| onnx::tensor_i64(t).ok()).map(|a| a.iter().copied().collect())
    }

    /// An Expand of a constant whose every reader concatenates it with the image's tokens
    /// (`cls.expand(1, -1, -1)` then `cat([cls, x], 1)`): it must repeat over the real batch.
    /// Other expanded constants broadcast against activations and keep their leading 1.
    fn is_class_token(&self, n: &NodeProto) -> bool {
        let readers = n.output.first().and_then(|o| self.concat_readers.get(o));
        n.input.first().is_some_and(|d| self.is_const(d)) && readers.is_some_and(|r| r.0 > 0 && r.0 == r.1)
    }

    fn node(&mut self, mut n: NodeProto) -> Result<NodeProto, GradError> {
        if n.op_type == "Expand" && self.is_class_token(&n) {
            if let Some(t) = n.input.get(1).and_then(|s| self.ints(s)).filter(|t| t.first() == Some(&self.batch)) {
                n.input[1] = self.batch_led(&t[1..]);
                return Ok(n);
            }
        }
        if n.input.iter().all(|i| self.is_const(i)) {
            // Folded where the compiler's folding rules allow, so that a later rewrite sees
            // the value (an Expand target built from ConstantOfShape and Where).
            if n.op_type != "Constant" {
                if let Ok(vals) = super::fold::fold(&n, &self.consts, |_| None, None) {
                    self.consts.extend(vals.into_iter().map(|t| (t.name.clone(), t)));
                }
            }
            self.derived.extend(n.output.iter().cloned());
            return Ok(n);
        }
        match n.op_type.as_str() {
            "Reshape" => {
                if n.input.get(1).and_then(|s| self.ints(s)).as_deref() == Some(&[-1]) {
                    self.flat_of.insert(n.output[0].clone(), n.input[0].clone());
                }
                self.reshape(&mut n)?
            }
            "Gather" => self.gather(&mut n)?,
            // `Resize` to literal sizes `[1, C, H, W]` would shrink the batch to one.
            "Resize" => {
                let sizes = n.input.get(3).and_then(|s| self.ints(s)).filter(|t| t.first() == Some(&self.batch));
                if let Some(t) = sizes {
                    n.input[3] = self.batch_led(&t[1..]);
                }
            }
            "Concat" => {
                let axis = onnx::Attrs::of(&n).int("axis", 0)?;
                if axis != 0 {
                    for i in 0..n.input.len() {
                        let dims = self.consts.get(&n.input[i]).map(|t| t.dims.clone());
                        if let Some(d) = dims.filter(|d| d.len() >= 2 && d[0] == self.batch) {
                            let rest = d[1..].to_vec();
                            n.input[i] = self.expand(&n.input[i].clone(), &rest);
                        }
                    }
                }
            }
            _ => {}
        }
        Ok(n)
    }

    /// A leading fixed batch in a Reshape target of an activation becomes `0` (copy the
    /// input's first axis), or under `allowzero` (the dynamo exporter's `view`) `-1` when no
    /// other axis is inferred, else the batch read from the input.
    fn reshape(&mut self, n: &mut NodeProto) -> Result<(), GradError> {
        let Some(mut t) = n.input.get(1).and_then(|s| self.ints(s)) else { return Ok(()) };
        if t.first() != Some(&self.batch) {
            return Ok(());
        }
        let allowzero = onnx::Attrs::of(n).int("allowzero", 0)? != 0;
        let literal = t.clone();
        t[0] = if !allowzero {
            0
        } else if !t.contains(&-1) {
            -1
        } else {
            n.input[1] = self.batch_led(&t[1..]);
            self.literals.insert(n.input[1].clone(), literal);
            return Ok(());
        };
        // Exporters share one target between reshapes: one rewritten copy serves all that
        // rewrite it alike (a reader under `allowzero` gets the `-1` copy, one without the `0`).
        let name = format!("{}/gw_batch{}", n.input[1], if t[0] == 0 { "" } else { "_infer" });
        if self.rewritten.insert(name.clone()) {
            self.inits.push(onnx::make_tensor_i64(&name, &[t.len()], &t));
            self.literals.insert(name.clone(), literal);
        }
        n.input[1] = name;
        Ok(())
    }

    /// `Gather(Reshape(x, [-1]), idx, axis 0)` with constant indices `idx` `[1, rest...]`
    /// (`as_strided` of a batch-1 export) becomes `Gather(Reshape(x, [0, -1]), idx[0], axis 1)`:
    /// the same positions of every sample. With a fixed batch of 1 the flat positions are the
    /// sample's own.
    fn gather(&mut self, n: &mut NodeProto) -> Result<(), GradError> {
        let Some(src) = n.input.first().and_then(|d| self.flat_of.get(d)).cloned() else { return Ok(()) };
        if self.batch != 1 || onnx::Attrs::of(n).int("axis", 0)? != 0 {
            return Ok(());
        }
        let Some(t) = n.input.get(1).and_then(|i| self.consts.get(i)).filter(|t| t.dims.first() == Some(&1)) else {
            return Ok(());
        };
        let rest: Vec<usize> = t.dims[1..].iter().map(|&d| d.max(0) as usize).collect();
        let Some(idx) = self.ints(&t.name).filter(|v| v.iter().all(|&i| i >= 0)) else { return Ok(()) };
        let k = self.inits.len();
        let (rows, target, ids) =
            (format!("gw_batch/{k}/rows"), format!("gw_batch/{k}/rows_shape"), format!("gw_batch/{k}/ids"));
        self.inits.push(onnx::make_tensor_i64(&target, &[2], &[0, -1]));
        self.inits.push(onnx::make_tensor_i64(&ids, &rest, &idx));
        self.nodes.push(onnx::make_node("Reshape", &rows, &[&src, &target], &[&rows], vec![]));
        n.input[0] = rows;
        n.input[1] = ids;
        n.attribute.retain(|a| a.name != "axis");
        n.attribute.push(attr::int("axis", 1));
        Ok(())
    }

    /// `[batch, rest...]` as an int64 value, the batch read from the image input.
    fn batch_led(&mut self, rest: &[i64]) -> String {
        let k = self.inits.len();
        let p = |s: &str| format!("gw_batch/{k}/{s}");
        if !self.have_batch {
            self.have_batch = true;
            self.inits.push(onnx::make_tensor_i64("gw_batch/zero", &[1], &[0]));
            self.inits.push(onnx::make_tensor_i64("gw_batch/one", &[1], &[1]));
            let shape = onnx::make_node("Shape", "gw_batch/shape", &[&self.image], &["gw_batch/shape"], vec![]);
            let n = onnx::make_node(
                "Slice",
                "gw_batch/n",
                &["gw_batch/shape", "gw_batch/zero", "gw_batch/one", "gw_batch/zero"],
                &["gw_batch/n"],
                vec![],
            );
            self.nodes.extend([shape, n]);
        }
        self.inits.push(onnx::make_tensor_i64(&p("rest"), &[rest.len()], rest));
        let out = p("target");
        self.nodes.push(onnx::make_node(
            "Concat",
            &out,
            &["gw_batch/n", &p("rest")],
            &[&out],
            vec![attr::int("axis", 0)],
        ));
        out
    }

    /// A constant `[batch, rest...]` repeated over the real batch (a folded class token).
    fn expand(&mut self, value: &str, rest: &[i64]) -> String {
        let target = self.batch_led(rest);
        let out = format!("{target}/expanded");
        self.nodes.push(onnx::make_node("Expand", &out, &[value, &target], &[&out], vec![]));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{make_node, make_tensor_f32, make_tensor_i64, make_value_info, GraphProto};

    /// `x [B, 2, 2]` flattened by `Reshape(x, [B, 4])` and concatenated after a `[B, 1, 2]`
    /// class token along axis 1, with the batch `B` written as a literal.
    fn model(batch: Option<i64>) -> ModelProto {
        let b = batch.unwrap_or(1);
        let node = vec![
            make_node("Reshape", "flat", &["x", "target"], &["flat"], vec![]),
            make_node("Reshape", "flat2", &["x", "target"], &["flat2"], vec![]),
            make_node("Concat", "cat", &["cls", "x"], &["cat"], vec![attr::int("axis", 1)]),
        ];
        let graph = GraphProto {
            node,
            initializer: vec![
                make_tensor_i64("target", &[2], &[b, 4]),
                make_tensor_f32("cls", &[b as usize, 1, 2], &vec![0.5; 2 * b as usize]),
            ],
            input: vec![make_value_info("x", onnx::data_type::FLOAT, &[batch, Some(2), Some(2)])],
            output: vec![make_value_info("flat", onnx::data_type::FLOAT, &[batch, Some(4)])],
            ..Default::default()
        };
        ModelProto { graph: Some(graph), ..Default::default() }
    }

    #[test]
    fn a_fixed_batch_becomes_the_batch_read_from_the_input() {
        assert!(dynamic_batch(&model(None)).unwrap().is_none(), "a symbolic batch is left alone");
        let m = dynamic_batch(&model(Some(1))).unwrap().unwrap();
        let g = m.graph.as_ref().unwrap();
        for v in [&g.input[0], &g.output[0]] {
            assert_eq!(onnx::value_info_shape(v).unwrap().1[0], None, "{} keeps a fixed batch", v.name);
        }
        let find = |op: &str| g.node.iter().find(|n| n.op_type == op).unwrap();
        // The flatten copies the input's first axis.
        let target = g.initializer.iter().find(|t| t.name == find("Reshape").input[1]).unwrap();
        assert_eq!(onnx::tensor_i64(target).unwrap().iter().copied().collect::<Vec<_>>(), [0, 4]);
        // A target two reshapes share is rewritten once (a duplicate initializer would be a
        // graph input to ONNX Runtime).
        assert_eq!(g.initializer.iter().filter(|t| t.name == target.name).count(), 1);
        assert_eq!(g.node.iter().filter(|n| n.input.get(1) == Some(&target.name)).count(), 2);
        // The class token is repeated over the batch read from the input, before the Concat.
        let cat = g.node.iter().position(|n| n.name == "cat").unwrap();
        let expand = g.node.iter().position(|n| n.op_type == "Expand").unwrap();
        let shape = g.node.iter().position(|n| n.op_type == "Shape").unwrap();
        assert!(shape < expand && expand < cat);
        assert_eq!(g.node[cat].input[0], g.node[expand].output[0]);
        assert_eq!(g.node[shape].input[0], "x");
    }

    #[test]
    fn a_shared_target_is_rewritten_per_kind_of_reader() {
        // One literal `[1, 4]` read by a Reshape without `allowzero` (its copy leads with 0) and
        // by one with it (where 0 would mean an empty axis: its copy leads with -1). DaViT's and
        // GCViT's dynamo exports share targets so.
        let mut m = model(Some(1));
        let g = m.graph.as_mut().unwrap();
        g.node[1].attribute.push(attr::int("allowzero", 1));
        let m = dynamic_batch(&m).unwrap().unwrap();
        let g = m.graph.as_ref().unwrap();
        let value = |i: usize| {
            let t = g
                .initializer
                .iter()
                .find(|t| t.name == g.node.iter().filter(|n| n.op_type == "Reshape").nth(i).unwrap().input[1])
                .unwrap();
            onnx::tensor_i64(t).unwrap().iter().copied().collect::<Vec<_>>()
        };
        assert_eq!(value(0), [0, 4]);
        assert_eq!(value(1), [-1, 4]);
    }

    #[test]
    fn a_resize_to_literal_sizes_keeps_the_batch() {
        // GhostNetV2 exported at a fixed batch: `Resize(x, sizes=[1, 2, 4, 4])` would return one
        // sample for any batch.
        let graph = GraphProto {
            node: vec![make_node("Resize", "up", &["x", "", "", "sizes"], &["y"], vec![])],
            initializer: vec![make_tensor_i64("sizes", &[4], &[1, 2, 4, 4])],
            input: vec![make_value_info("x", onnx::data_type::FLOAT, &[Some(1), Some(2), Some(2), Some(2)])],
            output: vec![make_value_info("y", onnx::data_type::FLOAT, &[Some(1), Some(2), Some(4), Some(4)])],
            ..Default::default()
        };
        let m = dynamic_batch(&ModelProto { graph: Some(graph), ..Default::default() }).unwrap().unwrap();
        let g = m.graph.as_ref().unwrap();
        let resize = g.node.iter().find(|n| n.op_type == "Resize").unwrap();
        let concat = g.node.iter().find(|n| n.output[0] == resize.input[3]).unwrap();
        assert_eq!(concat.op_type, "Concat");
        assert_eq!(concat.input[0], "gw_batch/n");
        let rest = g.initializer.iter().find(|t| t.name == concat.input[1]).unwrap();
        assert_eq!(onnx::tensor_i64(rest).unwrap().iter().copied().collect::<Vec<_>>(), [2, 4, 4]);
    }
}
