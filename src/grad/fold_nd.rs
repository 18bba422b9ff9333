//! `GatherND` and `ScatterND` on folded constants (see `fold.rs`): the index tables exporters
//! build for Swin's shifted-window mask and for LeViT's and EfficientFormerV2's attention biases.

use ndarray::{ArrayD, IxDyn};

/// The flat offsets (in units of the trailing block) that `idx`'s last axis addresses in `shape`.
fn nd_offsets(shape: &[usize], idx: &ArrayD<i64>) -> Option<(Vec<usize>, usize)> {
    let k = *idx.shape().last()?;
    if k == 0 || k > shape.len() {
        return None;
    }
    let block: usize = shape[k..].iter().product();
    let flat: Vec<i64> = idx.iter().copied().collect();
    let mut offs = Vec::with_capacity(flat.len() / k);
    for tuple in flat.chunks(k) {
        let mut off = 0usize;
        for (j, &v) in tuple.iter().enumerate() {
            let dim = shape[j] as i64;
            let v = if v < 0 { v + dim } else { v };
            if !(0..dim).contains(&v) {
                return None;
            }
            off = off * shape[j] + v as usize;
        }
        offs.push(off);
    }
    Some((offs, block))
}

pub(super) fn gather_nd<T: Clone>(d: &ArrayD<T>, idx: &ArrayD<i64>) -> Option<ArrayD<T>> {
    let (offs, block) = nd_offsets(d.shape(), idx)?;
    let k = *idx.shape().last()?;
    let dv: Vec<T> = d.iter().cloned().collect();
    let mut out = Vec::with_capacity(offs.len() * block);
    for off in offs {
        out.extend_from_slice(&dv[off * block..(off + 1) * block]);
    }
    let mut shape = idx.shape()[..idx.ndim() - 1].to_vec();
    shape.extend_from_slice(&d.shape()[k..]);
    ArrayD::from_shape_vec(IxDyn(&shape), out).ok()
}

pub(super) fn scatter_nd<T: Clone>(d: &ArrayD<T>, idx: &ArrayD<i64>, u: &ArrayD<T>) -> Option<ArrayD<T>> {
    let (offs, block) = nd_offsets(d.shape(), idx)?;
    let mut dv: Vec<T> = d.iter().cloned().collect();
    let uv: Vec<T> = u.iter().cloned().collect();
    if uv.len() != offs.len() * block {
        return None;
    }
    for (j, off) in offs.into_iter().enumerate() {
        dv[off * block..(off + 1) * block].clone_from_slice(&uv[j * block..(j + 1) * block]);
    }
    ArrayD::from_shape_vec(IxDyn(d.shape()), dv).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gather_nd_and_scatter_nd_address_leading_axes() {
        let d = ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0i64, 1, 2, 3, 4, 5]).unwrap();
        // Rows [1] and [0]; then single elements (1, 2) and (0, 1).
        let rows = ArrayD::from_shape_vec(IxDyn(&[2, 1]), vec![1i64, 0]).unwrap();
        assert_eq!(gather_nd(&d, &rows).unwrap().iter().copied().collect::<Vec<_>>(), vec![3, 4, 5, 0, 1, 2]);
        let pts = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1i64, 2, 0, -2]).unwrap();
        let g = gather_nd(&d, &pts).unwrap();
        assert_eq!((g.shape().to_vec(), g.iter().copied().collect::<Vec<_>>()), (vec![2], vec![5, 1]));
        let u = ArrayD::from_shape_vec(IxDyn(&[2]), vec![9i64, 8]).unwrap();
        let s = scatter_nd(&d, &pts, &u).unwrap();
        assert_eq!(s.iter().copied().collect::<Vec<_>>(), vec![0, 8, 2, 3, 4, 9]);
        let out_of_range = ArrayD::from_shape_vec(IxDyn(&[1, 1]), vec![2i64]).unwrap();
        assert!(gather_nd(&d, &out_of_range).is_none());
    }
}
