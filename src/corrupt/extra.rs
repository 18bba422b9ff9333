//! The broader degradation family: geometric, resampling, colour, occlusion, optics, sensor,
//! compression and weather types beyond CURE-TSR's. Each is driven by one continuous strength
//! `p` (see [`super::Corruption::strengths`]); a level is an entry of a five-value table chosen
//! by what it does to the reference classifier (`docs/guide/degradations.md`).
//!
//! Spatial values are in pixels of a 32x32 image and scale with `s = min(w, h) / 32`. Seeded
//! types draw a fixed number of values from the frozen SplitMix64 per element, so a level only
//! changes how many of the seed's elements are drawn or how strong they are.

use super::filter::{to_u8, Buf};
use crate::rng::SplitMix64;

/// Bilinear sample of `b` at pixel-centre coordinates (`x = 0.5` is the centre of column 0),
/// clamped to the edge.
#[inline]
pub(crate) fn sample(b: &Buf, x: f32, y: f32) -> [f32; 3] {
    let fx = (x - 0.5).clamp(0.0, (b.w - 1) as f32);
    let fy = (y - 0.5).clamp(0.0, (b.h - 1) as f32);
    let (x0, y0) = (fx as usize, fy as usize);
    let (x1, y1) = ((x0 + 1).min(b.w - 1), (y0 + 1).min(b.h - 1));
    let (wx, wy) = (fx - x0 as f32, fy - y0 as f32);
    let at = |x: usize, y: usize, c: usize| b.d[(y * b.w + x) * 3 + c];
    let mut o = [0.0; 3];
    for (c, v) in o.iter_mut().enumerate() {
        let top = at(x0, y0, c) + (at(x1, y0, c) - at(x0, y0, c)) * wx;
        let bot = at(x0, y1, c) + (at(x1, y1, c) - at(x0, y1, c)) * wx;
        *v = top + (bot - top) * wy;
    }
    o
}

/// Inverse warp: output pixel centre `(x, y)` takes the source at `f(x, y)` (bilinear, clamped).
pub(crate) fn warp(src: &Buf, f: impl Fn(f32, f32) -> (f32, f32)) -> Buf {
    let mut d = vec![0.0f32; src.d.len()];
    for (i, o) in d.chunks_exact_mut(3).enumerate() {
        let (x, y) = ((i % src.w) as f32 + 0.5, (i / src.w) as f32 + 0.5);
        let (sx, sy) = f(x, y);
        o.copy_from_slice(&sample(src, sx, sy));
    }
    Buf { w: src.w, h: src.h, d }
}

/// A random sign, +1 or -1.
fn sign(rng: &mut SplitMix64) -> f32 {
    if rng.uniform() < 0.5 {
        -1.0
    } else {
        1.0
    }
}

/// Keystone: the image as seen from off-axis. One side (at a seeded angle) is shrunk by the
/// fraction `p` about the centre line, the opposite side stays; outside the quad, the edge.
pub(crate) fn perspective(src: &Buf, p: f32, seed: u64) -> Buf {
    let mut rng = SplitMix64::new(seed);
    let ang = rng.range(0.0, std::f32::consts::TAU);
    let p = p * rng.range(0.85, 1.0);
    let (dx, dy) = (ang.cos(), ang.sin());
    let (cx, cy) = (src.w as f32 / 2.0, src.h as f32 / 2.0);
    let half = src.w.min(src.h) as f32 / 2.0;
    warp(src, |x, y| {
        let (u, v) = (x - cx, y - cy);
        // t in [-1, 1] along the tilt axis; the perpendicular coordinate is squeezed at t = 1.
        let t = ((u * dx + v * dy) / half).clamp(-1.5, 1.5);
        let k = 1.0 - p * (t + 1.0) / 2.0;
        let (a, b) = (u * dx + v * dy, -u * dy + v * dx);
        let b = b / k.max(0.05);
        (cx + a * dx - b * dy, cy + a * dy + b * dx)
    })
}

/// Zoom in by the factor `p` (>= 1) about a seeded point near the centre: the sign fills more
/// of the frame and is partly cut off, as a misframed crop.
pub(crate) fn zoom(src: &Buf, p: f32, seed: u64) -> Buf {
    let mut rng = SplitMix64::new(seed);
    let z = p.max(1.0);
    let slack = 0.5 * (1.0 - 1.0 / z);
    let (ox, oy) = (rng.range(-slack, slack) * src.w as f32, rng.range(-slack, slack) * src.h as f32);
    let (cx, cy) = (src.w as f32 / 2.0 + ox, src.h as f32 / 2.0 + oy);
    let (mx, my) = (src.w as f32 / 2.0, src.h as f32 / 2.0);
    warp(src, |x, y| (cx + (x - mx) / z, cy + (y - my) / z))
}

/// Horizontal shear `x' = x + p (y - h/2)` (seeded sign and a little jitter of `p`).
pub(crate) fn shear(src: &Buf, p: f32, seed: u64) -> Buf {
    let mut rng = SplitMix64::new(seed);
    let p = p * sign(&mut rng) * rng.range(0.85, 1.0);
    let cy = src.h as f32 / 2.0;
    warp(src, |x, y| (x + p * (y - cy), y))
}

/// Rotation by `p` degrees about the centre (seeded sign, a little jitter).
pub(crate) fn rotate(src: &Buf, p: f32, seed: u64) -> Buf {
    let mut rng = SplitMix64::new(seed);
    let a = (p * sign(&mut rng) * rng.range(0.85, 1.0)).to_radians();
    let (sa, ca) = a.sin_cos();
    let (cx, cy) = (src.w as f32 / 2.0, src.h as f32 / 2.0);
    warp(src, |x, y| {
        let (u, v) = (x - cx, y - cy);
        (cx + ca * u + sa * v, cy - sa * u + ca * v)
    })
}

/// Area average into a `sw x sh` grid of bins (`sw <= w`, `sh <= h`), each source pixel in the
/// bin `floor(x sw / w)`.
fn bin_average(src: &Buf, sw: usize, sh: usize) -> Buf {
    let mut d = vec![0.0f32; sw * sh * 3];
    let mut n = vec![0u32; sw * sh];
    for y in 0..src.h {
        let by = y * sh / src.h;
        for x in 0..src.w {
            let b = by * sw + x * sw / src.w;
            n[b] += 1;
            for c in 0..3 {
                d[b * 3 + c] += src.d[(y * src.w + x) * 3 + c];
            }
        }
    }
    for (px, &k) in d.chunks_exact_mut(3).zip(&n) {
        let inv = 1.0 / k.max(1) as f32;
        px.iter_mut().for_each(|v| *v *= inv);
    }
    Buf { w: sw, h: sh, d }
}

/// Size of the reduced grid for a reduction by `p` (image pixels per grid cell).
fn reduced(n: usize, p: f32) -> usize {
    ((n as f32 / p.max(1.0)).round() as usize).clamp(1, n)
}

/// Pixelation: area average over cells of `p` pixels (at 32x32; scaled), shown as blocks.
pub(crate) fn pixelate(src: &Buf, p: f32, s: f32) -> Buf {
    let (sw, sh) = (reduced(src.w, p * s), reduced(src.h, p * s));
    let small = bin_average(src, sw, sh);
    let mut d = vec![0.0f32; src.d.len()];
    for y in 0..src.h {
        let by = y * sh / src.h;
        for x in 0..src.w {
            let b = (by * sw + x * sw / src.w) * 3;
            d[(y * src.w + x) * 3..(y * src.w + x) * 3 + 3].copy_from_slice(&small.d[b..b + 3]);
        }
    }
    Buf { w: src.w, h: src.h, d }
}

/// Down-scaling by the factor `p` (area average) and bilinear up-scaling back: a far-away or
/// low-resolution camera's view.
pub(crate) fn downscale(src: &Buf, p: f32) -> Buf {
    let small = bin_average(src, reduced(src.w, p), reduced(src.h, p));
    let (sx, sy) = (small.w as f32 / src.w as f32, small.h as f32 / src.h as f32);
    let mut d = vec![0.0f32; src.d.len()];
    for (i, o) in d.chunks_exact_mut(3).enumerate() {
        let (x, y) = ((i % src.w) as f32 + 0.5, (i / src.w) as f32 + 0.5);
        o.copy_from_slice(&sample(&small, x * sx, y * sy));
    }
    Buf { w: src.w, h: src.h, d }
}

/// Interlacing (combing): every odd row comes from a field displaced by `p` pixels
/// horizontally (seeded direction), as an interlaced camera on a moving vehicle.
pub(crate) fn interlace(src: &Buf, p: f32, s: f32, seed: u64) -> Buf {
    let mut rng = SplitMix64::new(seed);
    let shift = p * s * sign(&mut rng) * rng.range(0.85, 1.0);
    let mut out = Buf { w: src.w, h: src.h, d: src.d.clone() };
    for y in (1..src.h).step_by(2) {
        for x in 0..src.w {
            let v = sample(src, x as f32 + 0.5 + shift, y as f32 + 0.5);
            out.d[(y * src.w + x) * 3..(y * src.w + x) * 3 + 3].copy_from_slice(&v);
        }
    }
    out
}

/// BT.601 luma.
#[inline]
fn luma(px: &[f32]) -> f32 {
    0.299 * px[0] + 0.587 * px[1] + 0.114 * px[2]
}

/// Saturation boost: each pixel moves away from its luma by the factor `1 + p`.
pub(crate) fn saturate(data: &[u8], p: f32) -> Vec<u8> {
    let mut out = vec![0u8; data.len()];
    for (o, px) in out.chunks_exact_mut(3).zip(data.chunks_exact(3)) {
        let f = [px[0] as f32, px[1] as f32, px[2] as f32];
        let y = luma(&f);
        for c in 0..3 {
            o[c] = to_u8(y + (f[c] - y) * (1.0 + p));
        }
    }
    out
}

/// Hue rotation by `p` degrees in the YIQ chroma plane (seeded sign and a little jitter).
pub(crate) fn hue_shift(data: &[u8], p: f32, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let a = (p * sign(&mut rng) * rng.range(0.85, 1.0)).to_radians();
    let (sa, ca) = a.sin_cos();
    let mut out = vec![0u8; data.len()];
    for (o, px) in out.chunks_exact_mut(3).zip(data.chunks_exact(3)) {
        let (r, g, b) = (px[0] as f32, px[1] as f32, px[2] as f32);
        let y = 0.299 * r + 0.587 * g + 0.114 * b;
        let i = 0.596 * r - 0.274 * g - 0.322 * b;
        let q = 0.211 * r - 0.523 * g + 0.312 * b;
        let (i, q) = (ca * i - sa * q, sa * i + ca * q);
        o[0] = to_u8(y + 0.956 * i + 0.621 * q);
        o[1] = to_u8(y - 0.272 * i - 0.647 * q);
        o[2] = to_u8(y - 1.106 * i + 1.703 * q);
    }
    out
}

/// White-balance error: red gain `1 + p` and blue gain `1 - p` (warm, as tungsten/sodium light
/// under a daylight setting) or the reverse (cool), seeded, with a little jitter.
pub(crate) fn white_balance(data: &[u8], p: f32, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    let p = p * sign(&mut rng) * rng.range(0.85, 1.0);
    let gains = [1.0 + p, 1.0, 1.0 - p];
    data.chunks_exact(3).flat_map(|px| [0, 1, 2].map(|c| to_u8(px[c] as f32 * gains[c]))).collect()
}

/// Contrast loss: every value pulled towards the image's mean grey by the fraction `p`.
pub(crate) fn contrast(data: &[u8], p: f32) -> Vec<u8> {
    let n = (data.len() / 3).max(1) as f32;
    let m = data.chunks_exact(3).map(|px| luma(&[px[0] as f32, px[1] as f32, px[2] as f32])).sum::<f32>() / n;
    data.iter().map(|&v| to_u8(m + (v as f32 - m) * (1.0 - p))).collect()
}

/// Stickers and graffiti: `count` of the seed's solid rectangles (3-9 by 2-6 px at 32x32
/// times `size`, saturated or black/white colours).
pub(crate) fn stickers(b: &mut Buf, count: usize, size: f32, s: f32, seed: u64) {
    const COLORS: [[f32; 3]; 6] = [
        [245.0, 245.0, 240.0],
        [20.0, 20.0, 25.0],
        [230.0, 200.0, 30.0],
        [40.0, 160.0, 60.0],
        [220.0, 90.0, 160.0],
        [60.0, 180.0, 230.0],
    ];
    let mut rng = SplitMix64::new(seed);
    for _ in 0..count {
        let (cx, cy) = (rng.range(0.15, 0.85) * b.w as f32, rng.range(0.15, 0.85) * b.h as f32);
        let (hw, hh) = (rng.range(1.5, 4.5) * s * size, rng.range(1.0, 3.0) * s * size);
        let color = COLORS[rng.below(COLORS.len())];
        for y in 0..b.h {
            for x in 0..b.w {
                if ((x as f32 + 0.5) - cx).abs() < hw && ((y as f32 + 0.5) - cy).abs() < hh {
                    b.d[(y * b.w + x) * 3..(y * b.w + x) * 3 + 3].copy_from_slice(&color);
                }
            }
        }
    }
}

/// Partial cover: a dark foliage band over the fraction `p` of the frame from a seeded side,
/// with a wavy, soft edge (a branch, a pole, another vehicle).
pub(crate) fn partial_cover(b: &mut Buf, p: f32, s: f32, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let side = rng.below(4);
    let phase = rng.range(0.0, std::f32::consts::TAU);
    let wobble = rng.range(0.5, 1.5) * s;
    const LEAF: [f32; 3] = [38.0, 62.0, 30.0];
    let (w, h) = (b.w as f32, b.h as f32);
    for y in 0..b.h {
        for x in 0..b.w {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            // Depth into the frame from the covered side, in [0, 1], and the along-edge coordinate.
            let (depth, along) = match side {
                0 => (fx / w, fy / s),
                1 => (1.0 - fx / w, fy / s),
                2 => (fy / h, fx / s),
                _ => (1.0 - fy / h, fx / s),
            };
            let edge = p + wobble * (0.7 * along + phase).sin() / (w.min(h));
            let a = 1.0 - super::overlay::smoothstep(edge - 0.6 / w.min(h) * s, edge + 0.6 / w.min(h) * s, depth);
            if a > 0.0 {
                let i = (y * b.w + x) * 3;
                for (d, l) in b.d[i..i + 3].iter_mut().zip(LEAF) {
                    *d += (l - *d) * a;
                }
            }
        }
    }
}

/// Raindrops on the lens: the first `count` of the seed's drops (radius 1.5-4 px at 32x32),
/// each showing a flipped, magnified and softened view of what lies behind it, slightly
/// brightened, with a dark rim.
pub(crate) fn raindrops(b: &mut Buf, count: usize, s: f32, seed: u64) {
    let src = Buf { w: b.w, h: b.h, d: b.d.clone() };
    let soft = super::filter::gaussian_blur(&src, 1.0 * s);
    let mut rng = SplitMix64::new(seed);
    for _ in 0..count {
        let (cx, cy) = (rng.uniform() * b.w as f32, rng.uniform() * b.h as f32);
        let r = rng.range(1.5, 4.0) * s;
        let mag = rng.range(1.5, 2.5);
        for y in 0..b.h {
            for x in 0..b.w {
                let (dx, dy) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
                let d = (dx * dx + dy * dy).sqrt() / r;
                if d >= 1.0 {
                    continue;
                }
                // A drop acts as a small fish-eye lens: inverted, magnified view of the scene.
                let v = sample(&soft, cx - dx / mag, cy - dy / mag);
                let rim = super::overlay::smoothstep(0.75, 1.0, d);
                let i = (y * b.w + x) * 3;
                for (d, vc) in b.d[i..i + 3].iter_mut().zip(v) {
                    *d = (vc * 1.08 + 6.0) * (1.0 - 0.45 * rim);
                }
            }
        }
    }
}

/// Motion blur: the average of samples along a line of `p` pixels (at 32x32) at a seeded angle.
pub(crate) fn motion_blur(src: &Buf, p: f32, s: f32, seed: u64) -> Buf {
    let mut rng = SplitMix64::new(seed);
    let ang = rng.range(0.0, std::f32::consts::PI);
    let len = p * s;
    let taps = (len.ceil() as usize * 2 + 1).max(3);
    let (dx, dy) = (ang.cos() * len, ang.sin() * len);
    let mut d = vec![0.0f32; src.d.len()];
    for (i, o) in d.chunks_exact_mut(3).enumerate() {
        let (x, y) = ((i % src.w) as f32 + 0.5, (i / src.w) as f32 + 0.5);
        for t in 0..taps {
            let f = t as f32 / (taps - 1) as f32 - 0.5;
            let v = sample(src, x + f * dx, y + f * dy);
            for c in 0..3 {
                o[c] += v[c];
            }
        }
        o.iter_mut().for_each(|v| *v /= taps as f32);
    }
    Buf { w: src.w, h: src.h, d }
}

/// Glare: a bright bloom of peak weight `p` around a seeded point (a headlight or the sun's
/// reflection), a veil of `p / 4` over the whole frame, and a faint ghost opposite.
pub(crate) fn glare(b: &mut Buf, p: f32, s: f32, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let (w, h) = (b.w as f32, b.h as f32);
    let (cx, cy) = (rng.range(0.1, 0.9) * w, rng.range(0.05, 0.6) * h);
    let sigma = rng.range(6.0, 11.0) * s;
    let (gx, gy) = (w - cx, h - cy);
    const LIGHT: [f32; 3] = [255.0, 250.0, 235.0];
    for y in 0..b.h {
        for x in 0..b.w {
            let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
            let r2 = (fx - cx).powi(2) + (fy - cy).powi(2);
            let g2 = (fx - gx).powi(2) + (fy - gy).powi(2);
            let a = (p * (-r2 / (2.0 * sigma * sigma)).exp()
                + 0.25 * p
                + 0.3 * p * (-g2 / (2.0 * (0.3 * sigma).powi(2))).exp())
            .min(0.97);
            let i = (y * b.w + x) * 3;
            for (d, l) in b.d[i..i + 3].iter_mut().zip(LIGHT) {
                *d += (l - *d) * a;
            }
        }
    }
}

/// Vignetting: gain `1 - p (r / r_corner)^2` about the centre.
pub(crate) fn vignetting(b: &mut Buf, p: f32) {
    let (cx, cy) = (b.w as f32 / 2.0, b.h as f32 / 2.0);
    let r2max = cx * cx + cy * cy;
    for y in 0..b.h {
        for x in 0..b.w {
            let r2 = ((x as f32 + 0.5 - cx).powi(2) + (y as f32 + 0.5 - cy).powi(2)) / r2max;
            let g = (1.0 - p * r2).max(0.0);
            let i = (y * b.w + x) * 3;
            b.d[i..i + 3].iter_mut().for_each(|v| *v *= g);
        }
    }
}

/// Lateral chromatic aberration: red magnified by `1 + p`, blue by `1 - p` about the centre,
/// so colour fringes grow towards the edges.
pub(crate) fn chromatic_aberration(src: &Buf, p: f32) -> Buf {
    let (cx, cy) = (src.w as f32 / 2.0, src.h as f32 / 2.0);
    let mut d = src.d.clone();
    for y in 0..src.h {
        for x in 0..src.w {
            let (u, v) = (x as f32 + 0.5 - cx, y as f32 + 0.5 - cy);
            let i = (y * src.w + x) * 3;
            d[i] = sample(src, cx + u / (1.0 + p), cy + v / (1.0 + p))[0];
            d[i + 2] = sample(src, cx + u / (1.0 - p).max(0.1), cy + v / (1.0 - p).max(0.1))[2];
        }
    }
    Buf { w: src.w, h: src.h, d }
}

/// Impulse (salt-and-pepper) noise: each channel value independently becomes 0 or 255 with
/// probability `p` (dead and hot photosites, transmission bit errors).
pub(crate) fn impulse(data: &[u8], p: f32, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    data.iter()
        .map(|&v| {
            let u = rng.uniform();
            if u < p * 0.5 {
                0
            } else if u < p {
                255
            } else {
                v
            }
        })
        .collect()
}

/// Speckle: multiplicative noise `x (1 + p n)`, `n` approximately standard normal per value.
pub(crate) fn speckle(data: &[u8], p: f32, seed: u64) -> Vec<u8> {
    let mut rng = SplitMix64::new(seed);
    data.iter().map(|&v| to_u8(v as f32 * (1.0 + p * rng.normalish()))).collect()
}

/// Banding: fixed-pattern row noise of a sensor read-out, a sinusoid of period 3-7 px (at
/// 32x32) plus per-row random offsets, of amplitude `p` (8-bit steps), with a colour tint.
pub(crate) fn banding(b: &mut Buf, p: f32, s: f32, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let period = rng.range(3.0, 7.0) * s;
    let phase = rng.range(0.0, std::f32::consts::TAU);
    let tint = [rng.range(0.6, 1.0), rng.range(0.6, 1.0), rng.range(0.6, 1.0)];
    for y in 0..b.h {
        let off = p * (0.7 * (std::f32::consts::TAU * y as f32 / period + phase).sin() + 0.5 * rng.normalish());
        for px in b.d[y * b.w * 3..(y + 1) * b.w * 3].chunks_exact_mut(3) {
            for c in 0..3 {
                px[c] += off * tint[c];
            }
        }
    }
}

/// JPEG quality of `jpeg_random` at strength `p` (the band's centre) for a seed: uniform in
/// `[0.6 p, 1.4 p]`, at least 1.
pub(crate) fn random_quality(p: f32, seed: u64) -> u8 {
    let mut rng = SplitMix64::new(seed);
    (p * rng.range(0.6, 1.4)).round().clamp(1.0, 100.0) as u8
}

/// Blocking: every `8 x 8` block (at 32x32 scaled; 4 px at 32x32 would be a different thing)
/// pulled towards its mean by `p`, the DC-only limit of a block codec, plus a faint step at
/// block edges.
pub(crate) fn blocking(src: &Buf, p: f32, s: f32) -> Buf {
    let k = ((8.0 * s).round() as usize).max(2);
    let (bw, bh) = (src.w.div_ceil(k), src.h.div_ceil(k));
    let means = bin_average_blocks(src, k, bw, bh);
    let mut d = src.d.clone();
    for y in 0..src.h {
        for x in 0..src.w {
            let b = ((y / k) * bw + x / k) * 3;
            let i = (y * src.w + x) * 3;
            for c in 0..3 {
                d[i + c] += (means[b + c] - d[i + c]) * p;
            }
        }
    }
    Buf { w: src.w, h: src.h, d }
}

fn bin_average_blocks(src: &Buf, k: usize, bw: usize, bh: usize) -> Vec<f32> {
    let mut d = vec![0.0f32; bw * bh * 3];
    let mut n = vec![0u32; bw * bh];
    for y in 0..src.h {
        for x in 0..src.w {
            let b = (y / k) * bw + x / k;
            n[b] += 1;
            for c in 0..3 {
                d[b * 3 + c] += src.d[(y * src.w + x) * 3 + c];
            }
        }
    }
    for (px, &m) in d.chunks_exact_mut(3).zip(&n) {
        px.iter_mut().for_each(|v| *v /= m.max(1) as f32);
    }
    d
}

/// Rain: the first `count` of the seed's streaks (thin, 4-12 px long at 32x32, all at one
/// wind angle, light blue-grey, semi-transparent) over a scene darkened and flattened by
/// `count / 600` (overcast).
pub(crate) fn rain(b: &mut Buf, count: usize, s: f32, seed: u64) {
    let dim = (count as f32 / 600.0).min(0.35);
    let m = b.d.iter().sum::<f32>() / b.d.len().max(1) as f32;
    for v in b.d.iter_mut() {
        *v = (m + (*v - m) * (1.0 - dim)) * (1.0 - 0.5 * dim);
    }
    let mut rng = SplitMix64::new(seed);
    let ang = std::f32::consts::FRAC_PI_2 + rng.range(-0.35, 0.35);
    let (dy, dx) = ang.sin_cos();
    let mut alpha = vec![0.0f32; b.w * b.h];
    for _ in 0..count {
        let (px, py) = (rng.range(-0.1, 1.1) * b.w as f32, rng.range(-0.2, 1.0) * b.h as f32);
        let len = rng.range(4.0, 12.0) * s;
        let op = rng.range(0.25, 0.6);
        let steps = (len * 2.0).ceil() as usize;
        for t in 0..=steps {
            let f = t as f32 / steps as f32 * len;
            let (x, y) = (px + dx * f, py + dy * f);
            if x < 0.0 || y < 0.0 {
                continue;
            }
            let (xi, yi) = (x as usize, y as usize);
            if xi < b.w && yi < b.h {
                let a = &mut alpha[yi * b.w + xi];
                *a = a.max(op);
            }
        }
    }
    const STREAK: [f32; 3] = [200.0, 208.0, 220.0];
    for (px, &a) in b.d.chunks_exact_mut(3).zip(&alpha) {
        for c in 0..3 {
            px[c] += (STREAK[c] - px[c]) * a;
        }
    }
}

/// Low sun: warm light flooding in from a seeded side, weight `p` at that edge falling off
/// quadratically across the frame, over a warm cast and a contrast loss of `p / 3`.
pub(crate) fn low_sun(b: &mut Buf, p: f32, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    let ang = rng.range(0.0, std::f32::consts::TAU);
    let (ux, uy) = (ang.cos(), ang.sin());
    const SUN: [f32; 3] = [255.0, 232.0, 180.0];
    let (cx, cy) = (b.w as f32 / 2.0, b.h as f32 / 2.0);
    let half = (cx * cx + cy * cy).sqrt().max(1.0);
    let m = b.d.iter().sum::<f32>() / b.d.len().max(1) as f32;
    for y in 0..b.h {
        for x in 0..b.w {
            let t = (((x as f32 + 0.5 - cx) * ux + (y as f32 + 0.5 - cy) * uy) / half + 1.0) / 2.0;
            let a = (p * t * t).min(0.97);
            let i = (y * b.w + x) * 3;
            for c in 0..3 {
                let v = m + (b.d[i + c] - m) * (1.0 - p / 3.0);
                let v = v * [1.0 + 0.15 * p, 1.0, 1.0 - 0.2 * p][c];
                b.d[i + c] = v + (SUN[c] - v) * a;
            }
        }
    }
}
