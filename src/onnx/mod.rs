//! ONNX model I/O: decode, build and encode `ModelProto` with prost, plus tensor helpers.
//!
//! Malformed files are errors, never panics: every accessor checks what it reads.

pub mod external;
pub mod proto;

use std::collections::HashMap;
use std::path::Path;

use ndarray::{ArrayD, IxDyn};
use prost::Message;

pub use proto::{
    data_type, AttributeProto, AttributeType, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    ValueInfoProto,
};

/// Errors reading, interpreting or writing an ONNX model.
#[derive(Debug, thiserror::Error)]
pub enum OnnxError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX ModelProto.
    #[error("not a valid ONNX model ({0}); is the file complete and really .onnx?")]
    Decode(#[from] prost::DecodeError),
    /// The model has no graph.
    #[error("the ONNX model has no graph")]
    NoGraph,
    /// A tensor's data cannot be read.
    #[error("tensor '{name}': {why}")]
    Tensor {
        /// Tensor name.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// An attribute has the wrong type or is missing.
    #[error("node '{node}' ({op}): attribute '{attr}' {why}")]
    Attribute {
        /// Node name.
        node: String,
        /// Operator type.
        op: String,
        /// Attribute name.
        attr: String,
        /// What is wrong.
        why: String,
    },
}

/// Reads and decodes an ONNX model file, with the tensors it stores in external data files
/// read in ([`external::inline`]).
pub fn load(path: &Path) -> Result<ModelProto, OnnxError> {
    Ok(read(path)?.model)
}

/// A model file as read by [`read`].
pub struct ModelFile {
    /// The model, every tensor inside it.
    pub model: ModelProto,
    /// The `.onnx` file's bytes.
    pub bytes: Vec<u8>,
    /// The external data files its tensors were read from, each once (none for most models).
    pub data_files: Vec<std::path::PathBuf>,
}

/// Reads an ONNX model file and the external data files it names (relative to its folder).
pub fn read(path: &Path) -> Result<ModelFile, OnnxError> {
    let bytes = std::fs::read(path).map_err(|source| OnnxError::Io { path: path.display().to_string(), source })?;
    let mut model = decode(&bytes)?;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let data_files = external::inline(&mut model, dir)?;
    Ok(ModelFile { model, bytes, data_files })
}

/// Decodes an ONNX model from bytes and checks it has a graph.
pub fn decode(bytes: &[u8]) -> Result<ModelProto, OnnxError> {
    let model = ModelProto::decode(bytes)?;
    if model.graph.is_none() {
        return Err(OnnxError::NoGraph);
    }
    Ok(model)
}

/// Encodes a model to bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// Writes a model to a file.
pub fn save(model: &ModelProto, path: &Path) -> Result<(), OnnxError> {
    std::fs::write(path, encode(model)).map_err(|source| OnnxError::Io { path: path.display().to_string(), source })
}

/// The model's `metadata_props` as a map.
pub fn metadata(model: &ModelProto) -> HashMap<String, String> {
    model.metadata_props.iter().map(|p| (p.key.clone(), p.value.clone())).collect()
}

/// Sets (or replaces) one `metadata_props` entry.
pub fn set_metadata(model: &mut ModelProto, key: &str, value: &str) {
    if let Some(p) = model.metadata_props.iter_mut().find(|p| p.key == key) {
        p.value = value.to_string();
    } else {
        model.metadata_props.push(proto::StringStringEntryProto { key: key.into(), value: value.into() });
    }
}

/// The opset version the model imports for the default (`ai.onnx`) domain.
pub fn default_opset(model: &ModelProto) -> Option<i64> {
    model.opset_import.iter().find(|o| is_default_domain(&o.domain)).map(|o| o.version)
}

/// Whether `domain` names ONNX's default operator set (empty or `ai.onnx`).
pub fn is_default_domain(domain: &str) -> bool {
    domain.is_empty() || domain == "ai.onnx"
}

fn tensor_err(t: &TensorProto, why: impl Into<String>) -> OnnxError {
    OnnxError::Tensor { name: t.name.clone(), why: why.into() }
}

fn element_count(t: &TensorProto) -> Result<usize, OnnxError> {
    t.dims.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d)
            .ok()
            .and_then(|d| acc.checked_mul(d))
            .ok_or_else(|| tensor_err(t, format!("bad dims {:?}", t.dims)))
    })
}

fn shape_of(t: &TensorProto) -> Vec<usize> {
    t.dims.iter().map(|&d| d.max(0) as usize).collect()
}

fn from_raw<T, const N: usize>(t: &TensorProto, n: usize, conv: fn([u8; N]) -> T) -> Result<Vec<T>, OnnxError> {
    if t.raw_data.len() != n * N {
        return Err(tensor_err(t, format!("raw_data has {} bytes, expected {}", t.raw_data.len(), n * N)));
    }
    Ok(t.raw_data
        .chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            conv(b)
        })
        .collect())
}

fn check_external(t: &TensorProto) -> Result<(), OnnxError> {
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(tensor_err(
            t,
            "uses external data that was not read in; load the model from its file, next to its data file",
        ));
    }
    Ok(())
}

/// A float tensor's values (FLOAT, DOUBLE, FLOAT16 or BFLOAT16 storage), as f32.
pub fn tensor_f32(t: &TensorProto) -> Result<ArrayD<f32>, OnnxError> {
    check_external(t)?;
    let n = element_count(t)?;
    let data: Vec<f32> = match t.data_type {
        data_type::FLOAT if !t.raw_data.is_empty() => from_raw(t, n, f32::from_le_bytes)?,
        data_type::FLOAT => t.float_data.clone(),
        data_type::DOUBLE if !t.raw_data.is_empty() => {
            from_raw(t, n, f64::from_le_bytes)?.into_iter().map(|v| v as f32).collect()
        }
        data_type::DOUBLE => t.double_data.iter().map(|&v| v as f32).collect(),
        // Half types hold their bits in raw_data, or one per int32_data entry.
        data_type::FLOAT16 if !t.raw_data.is_empty() => from_raw(t, n, |b| half::f16::from_le_bytes(b).to_f32())?,
        data_type::FLOAT16 => t.int32_data.iter().map(|&v| half::f16::from_bits(v as u16).to_f32()).collect(),
        data_type::BFLOAT16 if !t.raw_data.is_empty() => from_raw(t, n, |b| half::bf16::from_le_bytes(b).to_f32())?,
        data_type::BFLOAT16 => t.int32_data.iter().map(|&v| half::bf16::from_bits(v as u16).to_f32()).collect(),
        other => return Err(tensor_err(t, format!("data type {other} is not a float type gradwatch reads"))),
    };
    if data.len() != n {
        return Err(tensor_err(t, format!("holds {} values, dims {:?} need {n}", data.len(), t.dims)));
    }
    ArrayD::from_shape_vec(IxDyn(&shape_of(t)), data).map_err(|e| tensor_err(t, e.to_string()))
}

/// An integer tensor's values (INT64, INT32, INT8, UINT8 or BOOL storage), as i64.
pub fn tensor_i64(t: &TensorProto) -> Result<ArrayD<i64>, OnnxError> {
    check_external(t)?;
    let n = element_count(t)?;
    let data: Vec<i64> = match t.data_type {
        data_type::INT64 if !t.raw_data.is_empty() => from_raw(t, n, i64::from_le_bytes)?,
        data_type::INT64 => t.int64_data.clone(),
        data_type::INT32 if !t.raw_data.is_empty() => {
            from_raw(t, n, i32::from_le_bytes)?.into_iter().map(i64::from).collect()
        }
        data_type::INT32 | data_type::INT8 | data_type::UINT8 | data_type::BOOL if t.raw_data.is_empty() => {
            t.int32_data.iter().map(|&v| i64::from(v)).collect()
        }
        data_type::INT8 => t.raw_data.iter().map(|&b| i64::from(b as i8)).collect(),
        data_type::UINT8 | data_type::BOOL => t.raw_data.iter().map(|&b| i64::from(b)).collect(),
        other => return Err(tensor_err(t, format!("data type {other} is not an integer type gradwatch reads"))),
    };
    if data.len() != n {
        return Err(tensor_err(t, format!("holds {} values, dims {:?} need {n}", data.len(), t.dims)));
    }
    ArrayD::from_shape_vec(IxDyn(&shape_of(t)), data).map_err(|e| tensor_err(t, e.to_string()))
}

/// A FLOAT tensor with the values in `raw_data` (the compact form exporters write).
pub fn make_tensor_f32(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type::FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An INT64 tensor with the values in `raw_data`.
pub fn make_tensor_i64(name: &str, dims: &[usize], values: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type::INT64,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// A graph input/output description of a float tensor; `None` dims are symbolic (named `N`).
pub fn make_value_info(name: &str, elem_type: i32, dims: &[Option<i64>]) -> ValueInfoProto {
    use proto::{Dimension, DimensionValue, TensorShapeProto, TypeProto, TypeProtoTensor};
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Some(v) => DimensionValue::DimValue(*v),
                None => DimensionValue::DimParam("N".into()),
            }),
            denotation: String::new(),
        })
        .collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor { elem_type, shape: Some(TensorShapeProto { dim }) }),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    }
}

/// The element type and dims of a value info (`None` for symbolic or unknown dims).
pub fn value_info_shape(v: &ValueInfoProto) -> Option<(i32, Vec<Option<i64>>)> {
    let t = v.r#type.as_ref()?.tensor_type.as_ref()?;
    let dims = t
        .shape
        .as_ref()?
        .dim
        .iter()
        .map(|d| match d.value {
            Some(proto::DimensionValue::DimValue(v)) if v > 0 => Some(v),
            _ => None,
        })
        .collect();
    Some((t.elem_type, dims))
}

/// Typed access to a node's attributes, with errors that name the node.
pub struct Attrs<'a> {
    node: &'a NodeProto,
}

impl<'a> Attrs<'a> {
    /// Wraps a node.
    pub fn of(node: &'a NodeProto) -> Self {
        Self { node }
    }

    fn find(&self, name: &str) -> Option<&'a AttributeProto> {
        self.node.attribute.iter().find(|a| a.name == name)
    }

    fn err(&self, attr: &str, why: &str) -> OnnxError {
        OnnxError::Attribute {
            node: self.node.name.clone(),
            op: self.node.op_type.clone(),
            attr: attr.into(),
            why: why.into(),
        }
    }

    /// An INT attribute, or `default`.
    pub fn int(&self, name: &str, default: i64) -> Result<i64, OnnxError> {
        match self.find(name) {
            None => Ok(default),
            Some(a) if a.r#type == AttributeType::Int as i32 || a.r#type == 0 => Ok(a.i),
            Some(_) => Err(self.err(name, "is not an INT")),
        }
    }

    /// A FLOAT attribute, or `default`.
    pub fn float(&self, name: &str, default: f32) -> Result<f32, OnnxError> {
        match self.find(name) {
            None => Ok(default),
            Some(a) if a.r#type == AttributeType::Float as i32 || a.r#type == 0 => Ok(a.f),
            Some(_) => Err(self.err(name, "is not a FLOAT")),
        }
    }

    /// An INTS attribute, or `None` when absent.
    pub fn ints(&self, name: &str) -> Result<Option<Vec<i64>>, OnnxError> {
        match self.find(name) {
            None => Ok(None),
            Some(a) if a.r#type == AttributeType::Ints as i32 || a.r#type == 0 => Ok(Some(a.ints.clone())),
            Some(_) => Err(self.err(name, "is not INTS")),
        }
    }

    /// A FLOATS attribute, or `None` when absent.
    pub fn floats(&self, name: &str) -> Result<Option<Vec<f32>>, OnnxError> {
        match self.find(name) {
            None => Ok(None),
            Some(a) if a.r#type == AttributeType::Floats as i32 || a.r#type == 0 => Ok(Some(a.floats.clone())),
            Some(_) => Err(self.err(name, "is not FLOATS")),
        }
    }

    /// A STRING attribute, or `default`.
    pub fn string(&self, name: &str, default: &str) -> Result<String, OnnxError> {
        match self.find(name) {
            None => Ok(default.to_string()),
            Some(a) if a.r#type == AttributeType::String as i32 || a.r#type == 0 => {
                String::from_utf8(a.s.clone()).map_err(|_| self.err(name, "is not UTF-8"))
            }
            Some(_) => Err(self.err(name, "is not a STRING")),
        }
    }

    /// A TENSOR attribute (the `value` of a Constant node).
    pub fn tensor(&self, name: &str) -> Result<Option<&'a TensorProto>, OnnxError> {
        match self.find(name) {
            None => Ok(None),
            Some(a) if a.t.is_some() => Ok(a.t.as_ref()),
            Some(_) => Err(self.err(name, "is not a TENSOR")),
        }
    }
}

/// Attribute constructors for building nodes.
pub mod attr {
    use super::{AttributeProto, AttributeType, TensorProto};

    /// An INT attribute.
    pub fn int(name: &str, v: i64) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: AttributeType::Int as i32, i: v, ..Default::default() }
    }
    /// A FLOAT attribute.
    pub fn float(name: &str, v: f32) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: AttributeType::Float as i32, f: v, ..Default::default() }
    }
    /// An INTS attribute.
    pub fn ints(name: &str, v: &[i64]) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: AttributeType::Ints as i32, ints: v.to_vec(), ..Default::default() }
    }
    /// A STRING attribute.
    pub fn string(name: &str, v: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: AttributeType::String as i32,
            s: v.as_bytes().to_vec(),
            ..Default::default()
        }
    }
    /// A TENSOR attribute.
    pub fn tensor(name: &str, t: TensorProto) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: AttributeType::Tensor as i32, t: Some(t), ..Default::default() }
    }
}

/// A node with the given op, inputs, outputs and attributes in the default domain.
pub fn make_node(op: &str, name: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        op_type: op.into(),
        name: name.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"\xff\xff\xff\xff not onnx").is_err());
        assert!(matches!(decode(&[]), Err(OnnxError::NoGraph)));
    }

    #[test]
    fn tensor_roundtrip_raw_and_typed() {
        let t = make_tensor_f32("w", &[2, 2], &[1.0, -2.0, 3.5, 0.25]);
        assert_eq!(tensor_f32(&t).unwrap().into_raw_vec_and_offset().0, vec![1.0, -2.0, 3.5, 0.25]);
        let t = TensorProto {
            name: "x".into(),
            dims: vec![3],
            data_type: data_type::INT64,
            int64_data: vec![1, -1, 7],
            ..Default::default()
        };
        assert_eq!(tensor_i64(&t).unwrap().into_raw_vec_and_offset().0, vec![1, -1, 7]);
        let mut bad = make_tensor_f32("w", &[3], &[1.0, 2.0]);
        bad.dims = vec![3];
        assert!(tensor_f32(&bad).is_err());
    }
}
