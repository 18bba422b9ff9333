//! Tensors stored outside the `.onnx` file. PyTorch's exporter writes every weight to
//! `model.onnx.data` by default (`torch.onnx.export(..., external_data=True)` since the dynamo
//! exporter became the default), and `onnx.save(..., save_as_external_data=True)` does the same
//! for models over protobuf's 2 GB. Each such tensor names its file (`location`, relative to the
//! model's folder), `offset` and `length`; gradwatch reads them into the model when it loads it,
//! so everything after sees an ordinary model.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use super::{GraphProto, ModelProto, OnnxError, TensorProto};

/// Reads every external tensor of `model` (initializers and attribute tensors) from its file
/// under `dir` into the tensor itself. Returns the files read, each once, in the order first
/// read (what a digest of the model must cover besides the `.onnx` bytes).
pub fn inline(model: &mut ModelProto, dir: &Path) -> Result<Vec<PathBuf>, OnnxError> {
    let mut r = Reader { dir, files: Vec::new(), open: HashMap::new() };
    if let Some(g) = model.graph.as_mut() {
        r.graph(g)?;
    }
    Ok(r.files)
}

/// The data files of one model, each opened once.
struct Reader<'a> {
    dir: &'a Path,
    files: Vec<PathBuf>,
    open: HashMap<PathBuf, File>,
}

impl Reader<'_> {
    fn graph(&mut self, g: &mut GraphProto) -> Result<(), OnnxError> {
        for t in g.initializer.iter_mut() {
            self.tensor(t)?;
        }
        for a in g.node.iter_mut().flat_map(|n| n.attribute.iter_mut()) {
            for t in a.t.iter_mut().chain(a.tensors.iter_mut()) {
                self.tensor(t)?;
            }
            for sub in a.g.iter_mut().chain(a.graphs.iter_mut()) {
                self.graph(sub)?;
            }
        }
        Ok(())
    }

    fn tensor(&mut self, t: &mut TensorProto) -> Result<(), OnnxError> {
        if !is_external(t) {
            return Ok(());
        }
        let (path, offset, length) = location(t, self.dir)?;
        let err = |why: String| OnnxError::Tensor { name: t.name.clone(), why };
        if !self.open.contains_key(&path) {
            let f = File::open(&path).map_err(|e| {
                err(format!(
                    "its weights are in '{}', which cannot be read ({e}); keep the .onnx file and its data file together",
                    path.display()
                ))
            })?;
            self.files.push(path.clone());
            self.open.insert(path.clone(), f);
        }
        let f = self.open.get_mut(&path).ok_or_else(|| err("file handle lost".into()))?;
        let io = |source: std::io::Error| OnnxError::Io { path: path.display().to_string(), source };
        let size = f.metadata().map_err(io)?.len();
        let length = length.unwrap_or(size.saturating_sub(offset));
        if offset.checked_add(length).is_none_or(|end| end > size) {
            return Err(err(format!(
                "external data at offset {offset}, length {length} lies beyond the end of '{}' ({size} bytes)",
                path.display()
            )));
        }
        let mut raw = vec![0u8; usize::try_from(length).map_err(|_| err("external data too large".into()))?];
        f.seek(SeekFrom::Start(offset)).map_err(io)?;
        f.read_exact(&mut raw).map_err(io)?;
        t.raw_data = raw;
        t.external_data.clear();
        t.data_location = 0;
        Ok(())
    }
}

/// A tensor's data file (under `dir`), offset and length (`None`: to the end of the file).
fn location(t: &TensorProto, dir: &Path) -> Result<(PathBuf, u64, Option<u64>), OnnxError> {
    let err = |why: String| OnnxError::Tensor { name: t.name.clone(), why };
    let key = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
    let location = key("location").ok_or_else(|| err("stored externally without a 'location'".into()))?;
    // The spec's locations are relative to the model's folder; one that leaves it is refused.
    let rel = Path::new(location);
    if location.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)) {
        return Err(err(format!(
            "external data location '{location}' must be a file name relative to the model's folder"
        )));
    }
    let number = |k: &str| -> Result<Option<u64>, OnnxError> {
        key(k)
            .map(|v| v.parse::<u64>().map_err(|_| err(format!("external data {k} '{v}' is not a number"))))
            .transpose()
    };
    Ok((dir.join(rel), number("offset")?.unwrap_or(0), number("length")?))
}

fn is_external(t: &TensorProto) -> bool {
    t.data_location == 1 || !t.external_data.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::{make_tensor_f32, proto::StringStringEntryProto, tensor_f32};

    fn external(name: &str, location: &str, offset: usize, length: usize) -> TensorProto {
        let kv = |k: &str, v: String| StringStringEntryProto { key: k.into(), value: v };
        TensorProto {
            name: name.into(),
            dims: vec![2],
            data_type: crate::onnx::data_type::FLOAT,
            data_location: 1,
            external_data: vec![
                kv("location", location.into()),
                kv("offset", offset.to_string()),
                kv("length", length.to_string()),
            ],
            ..Default::default()
        }
    }

    fn model(tensors: Vec<TensorProto>) -> ModelProto {
        ModelProto { graph: Some(GraphProto { initializer: tensors, ..Default::default() }), ..Default::default() }
    }

    #[test]
    fn external_tensors_are_read_in_and_bad_locations_refused() {
        let dir = tempfile::tempdir().unwrap();
        let values: Vec<u8> = [9.0f32, 1.5, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(dir.path().join("m.onnx.data"), &values).unwrap();
        let mut m = model(vec![external("w", "m.onnx.data", 4, 8), make_tensor_f32("b", &[1], &[3.0])]);
        let files = inline(&mut m, dir.path()).unwrap();
        assert_eq!(files, vec![dir.path().join("m.onnx.data")]);
        let w = &m.graph.as_ref().unwrap().initializer[0];
        assert_eq!(tensor_f32(w).unwrap().iter().copied().collect::<Vec<_>>(), vec![1.5, -2.0]);

        let refused = |t: TensorProto, want: &str| {
            let e = inline(&mut model(vec![t]), dir.path()).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        };
        refused(external("w", "../m.onnx.data", 0, 8), "relative to the model's folder");
        refused(external("w", "/etc/passwd", 0, 8), "relative to the model's folder");
        refused(external("w", "missing.data", 0, 8), "keep the .onnx file and its data file together");
        refused(external("w", "m.onnx.data", 8, 8), "beyond the end");
    }
}
