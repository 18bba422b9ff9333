//! Window geometry shared by the convolution and pooling rules: strides, dilations and pads,
//! patch extraction by a one-hot convolution and its adjoint (col2im by ConvTranspose).

use super::super::{node_err, Ctx, GradError};
use crate::onnx::{attr, Attrs, NodeProto};

/// 2-D convolution / pooling geometry.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geom {
    /// Kernel size.
    pub k: [usize; 2],
    /// Strides.
    pub s: [usize; 2],
    /// Dilations.
    pub d: [usize; 2],
    /// top, left, bottom, right
    pub pads: [usize; 4],
    /// Input size.
    pub inp: [usize; 2],
    /// Output size.
    pub out: [usize; 2],
}

impl Geom {
    /// Effective (dilated) kernel extent along spatial axis `i`.
    pub(super) fn keff(&self, i: usize) -> usize {
        (self.k[i] - 1) * self.d[i] + 1
    }
}

/// The window geometry of node `n` (Conv or pooling) on an input of `in_hw`.
pub(super) fn geom(n: &NodeProto, in_hw: [usize; 2], kernel: [usize; 2], ceil: bool) -> Result<Geom, GradError> {
    let a = Attrs::of(n);
    let two = |name: &str, def: usize| -> Result<[usize; 2], GradError> {
        match a.ints(name)? {
            None => Ok([def, def]),
            Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 1) => Ok([v[0] as usize, v[1] as usize]),
            Some(v) => Err(node_err(n, format!("{name} {v:?} must be two positive numbers"))),
        }
    };
    let s = two("strides", 1)?;
    let d = two("dilations", 1)?;
    let auto_pad = a.string("auto_pad", "NOTSET")?;
    let mut g = Geom { k: kernel, s, d, pads: [0; 4], inp: in_hw, out: [0; 2] };
    match auto_pad.as_str() {
        "NOTSET" => {
            if let Some(p) = a.ints("pads")? {
                if p.len() != 4 || p.iter().any(|&v| v < 0) {
                    return Err(node_err(n, format!("pads {p:?} must be four non-negative numbers")));
                }
                g.pads = [p[0] as usize, p[1] as usize, p[2] as usize, p[3] as usize];
            }
        }
        "VALID" => {}
        "SAME_UPPER" | "SAME_LOWER" => {
            for i in 0..2 {
                let out = in_hw[i].div_ceil(s[i]);
                let total = ((out - 1) * s[i] + g.keff(i)).saturating_sub(in_hw[i]);
                let (lo, hi) = if auto_pad == "SAME_UPPER" {
                    (total / 2, total - total / 2)
                } else {
                    (total - total / 2, total / 2)
                };
                g.pads[i] = lo;
                g.pads[i + 2] = hi;
            }
        }
        other => return Err(node_err(n, format!("auto_pad '{other}' is not supported"))),
    }
    for i in 0..2 {
        let span = in_hw[i] + g.pads[i] + g.pads[i + 2];
        if span < g.keff(i) {
            return Err(node_err(n, "kernel larger than the padded input"));
        }
        let num = span - g.keff(i);
        let mut o = if ceil { num.div_ceil(s[i]) + 1 } else { num / s[i] + 1 };
        // ONNX Runtime (like PyTorch) drops a last window that would start in the end padding.
        if ceil && (o - 1) * s[i] >= in_hw[i] + g.pads[i] {
            o -= 1;
        }
        g.out[i] = o;
    }
    Ok(g)
}

/// The kernel taps `(row, column)` whose windows read at least one input value, not only
/// padding: a tap that reads only padding has a zero weight gradient, so a norm can skip it (a
/// 5x5 kernel padded by 2 on a 2x2 map reads the map with 9 of its 25 taps; on a 1x1 map, 1).
/// All taps when none reads the input (a Conv of padding alone).
pub(super) fn live_taps(g: &Geom) -> Vec<(usize, usize)> {
    let live = |axis: usize| -> Vec<usize> {
        let (lo, hi) = (g.pads[axis], g.pads[axis] + g.inp[axis]);
        (0..g.k[axis])
            .filter(|&a| (0..g.out[axis]).any(|i| (lo..hi).contains(&(a * g.d[axis] + i * g.s[axis]))))
            .collect()
    };
    let (rows, cols) = (live(0), live(1));
    let taps: Vec<(usize, usize)> = rows.iter().flat_map(|&a| cols.iter().map(move |&b| (a, b))).collect();
    if taps.is_empty() {
        all_taps(g.k[0], g.k[1])
    } else {
        taps
    }
}

/// Every tap of a `kh x kw` kernel, in row-major order.
fn all_taps(kh: usize, kw: usize) -> Vec<(usize, usize)> {
    (0..kh).flat_map(|a| (0..kw).map(move |b| (a, b))).collect()
}

/// Weights `[channels * taps, 1, kh, kw]` of the grouped convolution that copies each of `taps`
/// to its own channel: output channel `c * taps.len() + t` is input channel `c` at `taps[t]`.
pub(super) fn one_hot_taps(channels: usize, kh: usize, kw: usize, taps: &[(usize, usize)]) -> Vec<f32> {
    let t = taps.len();
    let mut e = vec![0.0f32; channels * t * kh * kw];
    for c in 0..channels {
        for (i, &(a, b)) in taps.iter().enumerate() {
            e[((c * t + i) * kh + a) * kw + b] = 1.0;
        }
    }
    e
}

/// Weights of the depthwise convolution that copies each window position to its own channel
/// ([`one_hot_taps`] with every tap, in row-major order).
pub(super) fn one_hot_kernel(channels: usize, kh: usize, kw: usize) -> Vec<f32> {
    one_hot_taps(channels, kh, kw, &all_taps(kh, kw))
}

/// Scatters per-window values back to the input grid (the adjoint of a strided window read).
/// The ConvTranspose writes the input's extent itself: its `pads` crop the windows' full span
/// to the input and `output_padding` adds the rows and columns no window reads (fewer than a
/// stride), where a Slice and a Pad after it cost ONNX Runtime up to as much as the ConvTranspose.
pub(super) fn col2im(ctx: &mut Ctx, x: &str, w: &str, group: usize, g: &Geom) -> String {
    let mut pads = [0i64; 4];
    let mut extra = [0i64; 2];
    for i in 0..2 {
        let full = ((g.out[i] - 1) * g.s[i] + g.keff(i)) as i64;
        let (start, size) = (g.pads[i] as i64, g.inp[i] as i64);
        pads[i] = start;
        let end = full - start - size;
        if end >= 0 {
            pads[i + 2] = end;
        } else {
            extra[i] = -end;
        }
    }
    let mut attrs = vec![
        attr::int("group", group as i64),
        attr::ints("strides", &[g.s[0] as i64, g.s[1] as i64]),
        attr::ints("dilations", &[g.d[0] as i64, g.d[1] as i64]),
        attr::ints("kernel_shape", &[g.k[0] as i64, g.k[1] as i64]),
        attr::ints("pads", &pads),
    ];
    if extra != [0, 0] {
        attrs.push(attr::ints("output_padding", &extra));
    }
    ctx.b.op("ConvTranspose", &[x, w], attrs)
}

/// Conv attributes for geometry `g` with explicit `pads`.
pub(super) fn conv_attrs(g: &Geom, group: usize, pads: [usize; 4]) -> Vec<crate::onnx::AttributeProto> {
    vec![
        attr::int("group", group as i64),
        attr::ints("strides", &[g.s[0] as i64, g.s[1] as i64]),
        attr::ints("dilations", &[g.d[0] as i64, g.d[1] as i64]),
        attr::ints("kernel_shape", &[g.k[0] as i64, g.k[1] as i64]),
        attr::ints("pads", &pads.map(|p| p as i64)),
    ]
}
