//! Where the batch lands in a reshape of a tensor whose batch sits in axis `l.axis` as
//! `outer x N x inner`: read off the target (batch-derived entries, 0 to copy, -1 to infer) or,
//! in a fixed-batch export, off the element order of a literal target.

use super::Layout;
use crate::grad::fold::{is_batch_derived, BATCH};
use crate::grad::{node_err, GradError};
use crate::onnx::NodeProto;

/// The original output dims (batch axis as its share) and layout of a reshape.
pub(super) struct Reshaped {
    pub dims: Vec<usize>,
    pub layout: Layout,
}

pub(super) fn product(v: &[usize]) -> usize {
    v.iter().product()
}

/// Where the batch lands when `din` (batch axis `l.axis`, as its share) is reshaped to target
/// `t` (entries may be batch-derived, 0 to copy, -1 to infer); `fixed` is the export's batch
/// size when the target is a literal written for it.
pub(super) fn reshape_layout(
    n: &NodeProto,
    din: &[usize],
    l: Layout,
    t: &[i64],
    allowzero: bool,
    fixed: Option<usize>,
) -> Result<Reshaped, GradError> {
    let a = l.axis;
    let p = product(&din[..a]) * l.outer;
    let q = l.inner * product(&din[a + 1..]);
    let total = p * q;
    let bad = |why: &str| node_err(n, format!("target shape {t:?} for input {din:?} (batch in axis {a}): {why}"));
    // A fixed-batch export's target is a literal written for its batch size: which axis holds
    // the batch is read off the element order.
    if let Some(fb) = fixed.filter(|_| !t.iter().any(|&v| is_batch_derived(v))) {
        let mut e = vec![1usize; t.len()];
        let mut infer = None;
        for (j, &v) in t.iter().enumerate() {
            e[j] = match v {
                0 if !allowzero => {
                    let d = *din.get(j).ok_or_else(|| bad("0 beyond the input's rank"))?;
                    if j == a {
                        d * fb
                    } else {
                        d
                    }
                }
                -1 if infer.is_none() => {
                    infer = Some(j);
                    1
                }
                v if v > 0 => v as usize,
                _ => return Err(bad("a bad entry")),
            };
        }
        let known = product(&e);
        if let Some(k) = infer {
            if known == 0 || !(total * fb).is_multiple_of(known) {
                return Err(bad("sizes do not divide"));
            }
            e[k] = total * fb / known;
        } else if known != total * fb {
            return Err(bad("sizes do not match"));
        }
        let b = literal_batch_axis(&e, p, q, fb).ok_or_else(|| bad("the batch would be split across axes"))?;
        e[b] /= fb;
        return finish(e, b, p, q).ok_or_else(|| bad("the batch would be split across axes"));
    }
    let mut e = vec![1usize; t.len()];
    let (mut at, mut infer) = (None, None);
    for (j, &v) in t.iter().enumerate() {
        if is_batch_derived(v) {
            if v % BATCH != 0 || v / BATCH < 1 || at.is_some() {
                return Err(bad("the batch size enters it in a way gradwatch cannot follow"));
            }
            at = Some(j);
            e[j] = (v / BATCH) as usize;
        } else if v == 0 && !allowzero {
            let d = *din.get(j).ok_or_else(|| bad("0 beyond the input's rank"))?;
            if j == a {
                if at.is_some() {
                    return Err(bad("two axes carry the batch"));
                }
                at = Some(j);
            }
            e[j] = d;
        } else if v == -1 {
            if infer.is_some() {
                return Err(bad("two -1 entries"));
            }
            infer = Some(j);
        } else if v > 0 {
            e[j] = v as usize;
        } else {
            return Err(bad("a bad entry"));
        }
    }
    let known: usize = e.iter().enumerate().filter(|(j, _)| Some(*j) != infer).map(|(_, &d)| d).product();
    let b = match (at, infer) {
        (at, Some(k)) => {
            if known == 0 || !total.is_multiple_of(known) {
                return Err(bad("sizes do not divide"));
            }
            e[k] = total / known;
            // Without a batch entry, the inferred axis holds the batch.
            at.unwrap_or(k)
        }
        (Some(b), None) => {
            if known != total {
                return Err(bad("sizes do not match"));
            }
            b
        }
        (None, None) => {
            return Err(bad("a literal that fixes the batch size; re-export with a dynamic batch axis \
                 (torch.onnx.export(..., dynamic_axes={'input': {0: 'N'}}))"))
        }
    };
    finish(e, b, p, q).ok_or_else(|| bad("the batch would be split across axes"))
}

/// The layout of output dims `e` with the batch in axis `b`, `p` elements per sample before
/// the batch index and `q` after it (`None` when the batch would straddle axes).
fn finish(e: Vec<usize>, b: usize, p: usize, q: usize) -> Option<Reshaped> {
    let (prefix, suffix) = (product(&e[..b]), product(&e[b + 1..]));
    if prefix == 0 || suffix == 0 || !p.is_multiple_of(prefix) || !q.is_multiple_of(suffix) {
        return None;
    }
    let layout = Layout { axis: b, outer: p / prefix, inner: q / suffix };
    (layout.outer * layout.inner == e[b]).then_some(Reshaped { dims: e, layout })
}

/// The axis of a literal target `e` (written for batch `fb`) that holds the batch, from the
/// element order: `p` elements per sample come before the batch index, `q` after it.
fn literal_batch_axis(e: &[usize], p: usize, q: usize, fb: usize) -> Option<usize> {
    let mut fits: Vec<(usize, usize)> = Vec::new();
    for b in 0..e.len() {
        let (prefix, suffix) = (product(&e[..b]), product(&e[b + 1..]));
        if prefix == 0 || suffix == 0 || !p.is_multiple_of(prefix) || !q.is_multiple_of(suffix) {
            continue;
        }
        let (o, i) = (p / prefix, q / suffix);
        if e[b] == o * fb * i {
            fits.push((b, o));
        }
    }
    let alone = fits.iter().find(|&&(b, o)| o == 1 && e[b] == fb);
    let inner: Vec<(usize, usize)> = match fits.iter().filter(|&&(b, _)| b + 1 < e.len()).copied().collect::<Vec<_>>() {
        v if v.is_empty() => fits.clone(),
        v => v,
    };
    alone.or_else(|| inner.iter().find(|&&(_, o)| o == 1)).or_else(|| inner.first()).map(|&(b, _)| b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx;

    fn node() -> NodeProto {
        onnx::make_node("Reshape", "r", &["x", "t"], &["y"], vec![])
    }

    #[test]
    fn a_reshape_follows_the_batch_into_the_merged_axis() {
        // [L, N, E] -> [L, N*H, d] (torchvision's heads): the batch starts axis 1, H inside it.
        let l = Layout { axis: 1, outer: 1, inner: 1 };
        let r = reshape_layout(&node(), &[7, 1, 8], l, &[7, BATCH * 2, 4], false, None).unwrap();
        assert_eq!(r.layout, Layout { axis: 1, outer: 1, inner: 2 });
        // [N, 196, 256] -> [-1, 256] (LeViT's flatten): N*196 in axis 0.
        let r = reshape_layout(&node(), &[1, 196, 256], Layout::STANDARD, &[-1, 256], false, None).unwrap();
        assert_eq!(r.layout, Layout { axis: 0, outer: 1, inner: 196 });
        // [L*N, E] from [L, N*H, d]: the batch after L, so outer = L.
        let r =
            reshape_layout(&node(), &[7, 2, 4], Layout { axis: 1, outer: 1, inner: 2 }, &[BATCH * 7, 8], false, None)
                .unwrap();
        assert_eq!(r.layout, Layout { axis: 0, outer: 7, inner: 1 });
        // Interleaving the batch with other axes is refused.
        assert!(reshape_layout(&node(), &[1, 6], Layout::STANDARD, &[2, BATCH * 3], false, None).is_err());
    }

    #[test]
    fn a_literal_target_of_a_fixed_batch_export_is_read_by_element_order() {
        // [1, 9*49, 96] windows -> [9, 49, 96]: batch starts axis 0, the windows inside it.
        let r = reshape_layout(&node(), &[1, 441, 96], Layout::STANDARD, &[9, 49, 96], false, Some(1)).unwrap();
        assert_eq!(r.layout, Layout { axis: 0, outer: 1, inner: 9 });
        // [197, 1*12, 64] heads -> [197, 768]: the batch goes after L, not into the features.
        let l = Layout { axis: 1, outer: 1, inner: 12 };
        let r = reshape_layout(&node(), &[197, 12, 64], l, &[197, 768], false, Some(1)).unwrap();
        assert_eq!(r.layout, Layout { axis: 0, outer: 197, inner: 1 });
        // [197, 1, 768] -> [197, 12, 64]: the batch starts the heads axis.
        let l = Layout { axis: 1, outer: 1, inner: 1 };
        let r = reshape_layout(&node(), &[197, 1, 768], l, &[197, 12, 64], false, Some(1)).unwrap();
        assert_eq!(r.layout, Layout { axis: 1, outer: 1, inner: 12 });
        // Windows back to one image: the batch alone in axis 0.
        let l = Layout { axis: 0, outer: 1, inner: 9 };
        let r = reshape_layout(&node(), &[9, 7, 7, 96], l, &[1, 3, 3, 7, 7, 96], false, Some(1)).unwrap();
        assert_eq!(r.layout, Layout::STANDARD);
        // Without a fixed batch a literal is refused.
        assert!(reshape_layout(&node(), &[1, 441, 96], Layout::STANDARD, &[9, 49, 96], false, None).is_err());
    }
}
