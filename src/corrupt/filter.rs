//! Blurs on interleaved RGB `f32` buffers (`w * h * 3`), edges clamped.
//!
//! Large kernels are run on an area-downsampled copy and bilinearly upsampled: the result of a
//! wide blur has no fine detail left to lose, and it keeps a level-5 blur of a 640x480 frame
//! as cheap as one of a 32x32 sign.

/// Largest disc radius (pixels) convolved at full resolution.
const DISC_MAX_RADIUS: f32 = 6.0;
/// Largest Gaussian sigma (pixels) convolved at full resolution.
const GAUSS_MAX_SIGMA: f32 = 4.0;

/// An interleaved RGB float image.
pub(crate) struct Buf {
    pub w: usize,
    pub h: usize,
    pub d: Vec<f32>,
}

impl Buf {
    /// Float copy of 8-bit data.
    pub fn from_u8(w: usize, h: usize, data: &[u8]) -> Self {
        Self { w, h, d: data.iter().map(|&v| v as f32).collect() }
    }

    /// Rounds and clamps back to 8 bits.
    pub fn to_u8(&self) -> Vec<u8> {
        self.d.iter().map(|&v| to_u8(v)).collect()
    }
}

/// Round-to-nearest with saturation.
#[inline]
pub(crate) fn to_u8(v: f32) -> u8 {
    (v + 0.5).clamp(0.0, 255.0) as u8
}

/// Disc (pillbox, "lens") blur of `radius` pixels; the kernel is anti-aliased (each tap weighs
/// the disc's approximate coverage of that pixel) so radii below 2 px still differ smoothly.
pub(crate) fn disc_blur(src: &Buf, radius: f32) -> Buf {
    if radius <= 0.05 || src.w == 0 || src.h == 0 {
        return Buf { w: src.w, h: src.h, d: src.d.clone() };
    }
    let k = (radius / DISC_MAX_RADIUS).ceil().max(1.0) as usize;
    if k > 1 {
        let small = downsample(src, k);
        let blurred = disc_blur_direct(&small, radius / k as f32);
        return upsample(&blurred, src.w, src.h, k);
    }
    disc_blur_direct(src, radius)
}

fn disc_blur_direct(src: &Buf, radius: f32) -> Buf {
    let r = (radius + 0.5).ceil() as usize;
    let p = pad(src, r);
    let pw = src.w + 2 * r;
    // Taps as (row, column) offsets into the padded buffer from the output pixel's window corner.
    let mut taps: Vec<(usize, usize, f32)> = Vec::new();
    let mut total = 0.0;
    for ty in 0..=2 * r {
        for tx in 0..=2 * r {
            let (dx, dy) = (tx as f32 - r as f32, ty as f32 - r as f32);
            let wgt = (radius + 0.5 - (dx * dx + dy * dy).sqrt()).clamp(0.0, 1.0);
            if wgt > 0.0 {
                taps.push((ty, tx, wgt));
                total += wgt;
            }
        }
    }
    // Each tap adds a shifted padded row to the output row: contiguous slices that vectorise.
    let row_len = src.w * 3;
    let mut out = vec![0.0f32; src.d.len()];
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        for &(ty, tx, wgt) in &taps {
            let start = ((y + ty) * pw + tx) * 3;
            let wgt = wgt / total;
            for (o, &v) in out_row.iter_mut().zip(&p[start..start + row_len]) {
                *o += wgt * v;
            }
        }
    }
    Buf { w: src.w, h: src.h, d: out }
}

/// Copy of `src` with an `r`-pixel clamp-to-edge border, so kernels need no bounds checks.
fn pad(src: &Buf, r: usize) -> Vec<f32> {
    let (pw, ph) = (src.w + 2 * r, src.h + 2 * r);
    let mut p = Vec::with_capacity(pw * ph * 3);
    for py in 0..ph {
        let y = py.saturating_sub(r).min(src.h - 1);
        let row = &src.d[y * src.w * 3..(y + 1) * src.w * 3];
        for _ in 0..r {
            p.extend_from_slice(&row[..3]);
        }
        p.extend_from_slice(row);
        for _ in 0..r {
            p.extend_from_slice(&row[row.len() - 3..]);
        }
    }
    p
}

/// Separable Gaussian blur with standard deviation `sigma` pixels (kernel truncated at 3 sigma).
pub(crate) fn gaussian_blur(src: &Buf, sigma: f32) -> Buf {
    if sigma <= 0.05 || src.w == 0 || src.h == 0 {
        return Buf { w: src.w, h: src.h, d: src.d.clone() };
    }
    let k = (sigma / GAUSS_MAX_SIGMA).ceil().max(1.0) as usize;
    if k > 1 {
        let small = downsample(src, k);
        let blurred = gaussian_blur_direct(&small, sigma / k as f32);
        return upsample(&blurred, src.w, src.h, k);
    }
    gaussian_blur_direct(src, sigma)
}

fn gaussian_blur_direct(src: &Buf, sigma: f32) -> Buf {
    let r = (3.0 * sigma).ceil().max(1.0) as usize;
    let mut kern: Vec<f32> = (0..=2 * r)
        .map(|i| {
            let d = i as f32 - r as f32;
            (-(d * d) / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let total: f32 = kern.iter().sum();
    kern.iter_mut().for_each(|v| *v /= total);
    let p = pad(src, r);
    let (w, pw, ph) = (src.w, src.w + 2 * r, src.h + 2 * r);
    if w == 0 {
        return Buf { w: src.w, h: src.h, d: Vec::new() };
    }
    let row_len = w * 3;
    // Horizontal pass over every padded row (the vertical pass needs the border rows too), as
    // shifted-row accumulations that vectorise.
    let mut tmp = vec![0.0f32; w * ph * 3];
    for (y, tmp_row) in tmp.chunks_exact_mut(row_len).enumerate() {
        for (j, &kv) in kern.iter().enumerate() {
            let start = (y * pw + j) * 3;
            for (o, &v) in tmp_row.iter_mut().zip(&p[start..start + row_len]) {
                *o += kv * v;
            }
        }
    }
    // Vertical pass.
    let mut out = vec![0.0f32; src.d.len()];
    for (y, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        for (j, &kv) in kern.iter().enumerate() {
            let start = (y + j) * row_len;
            for (o, &v) in out_row.iter_mut().zip(&tmp[start..start + row_len]) {
                *o += kv * v;
            }
        }
    }
    Buf { w: src.w, h: src.h, d: out }
}

/// Area average over `k x k` blocks (partial blocks at the right/bottom edge average what they hold).
fn downsample(src: &Buf, k: usize) -> Buf {
    let sw = src.w.div_ceil(k);
    let sh = src.h.div_ceil(k);
    let mut d = vec![0.0f32; sw * sh * 3];
    // Block index of each column, so the per-pixel loop has no division.
    let bx: Vec<usize> = (0..src.w).map(|x| x / k).collect();
    for (y, row) in src.d.chunks_exact(src.w * 3).enumerate() {
        let out_row = &mut d[(y / k) * sw * 3..(y / k + 1) * sw * 3];
        for (px, &b) in row.chunks_exact(3).zip(&bx) {
            let o = &mut out_row[b * 3..b * 3 + 3];
            o[0] += px[0];
            o[1] += px[1];
            o[2] += px[2];
        }
    }
    for by in 0..sh {
        let rows = (src.h - by * k).min(k);
        for bxi in 0..sw {
            let cols = (src.w - bxi * k).min(k);
            let inv = 1.0 / (rows * cols) as f32;
            let o = (by * sw + bxi) * 3;
            d[o] *= inv;
            d[o + 1] *= inv;
            d[o + 2] *= inv;
        }
    }
    Buf { w: sw, h: sh, d }
}

/// Bilinear upsampling of a `downsample(_, k)` result back to `w x h` (block centres aligned).
fn upsample(src: &Buf, w: usize, h: usize, k: usize) -> Buf {
    let inv = 1.0 / k as f32;
    let coord = |o: usize, n: usize| -> (usize, usize, f32) {
        let f = ((o as f32 + 0.5) * inv - 0.5).clamp(0.0, (n - 1) as f32);
        let i0 = (f as usize).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        (i0, i1, f - i0 as f32)
    };
    let xs: Vec<(usize, usize, f32)> = (0..w).map(|x| coord(x, src.w)).collect();
    let mut d = vec![0.0f32; w * h * 3];
    // Vertical lerp into one small row, then horizontal lerp of that row into the output row.
    let mut mid = vec![0.0f32; src.w * 3];
    let srow = |y: usize| &src.d[y * src.w * 3..(y + 1) * src.w * 3];
    for (y, out_row) in d.chunks_exact_mut(w * 3).enumerate() {
        let (y0, y1, wy) = coord(y, src.h);
        for ((m, &a), &b) in mid.iter_mut().zip(srow(y0)).zip(srow(y1)) {
            *m = a + (b - a) * wy;
        }
        for (o, &(x0, x1, wx)) in out_row.chunks_exact_mut(3).zip(&xs) {
            let (a, b) = (&mid[x0 * 3..x0 * 3 + 3], &mid[x1 * 3..x1 * 3 + 3]);
            o[0] = a[0] + (b[0] - a[0]) * wx;
            o[1] = a[1] + (b[1] - a[1]) * wx;
            o[2] = a[2] + (b[2] - a[2]) * wx;
        }
    }
    Buf { w, h, d }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constant(w: usize, h: usize, v: f32) -> Buf {
        Buf { w, h, d: vec![v; w * h * 3] }
    }

    #[test]
    fn blurs_preserve_constant_images() {
        // Normalised kernels: a flat image must come back flat, at full and reduced resolution.
        for (w, h) in [(1, 1), (5, 3), (64, 48)] {
            let b = constant(w, h, 100.0);
            for out in [disc_blur(&b, 1.3), disc_blur(&b, 20.0), gaussian_blur(&b, 0.7), gaussian_blur(&b, 11.0)] {
                assert_eq!((out.w, out.h), (w, h));
                assert!(out.d.iter().all(|&v| (v - 100.0).abs() < 1e-3));
            }
        }
    }

    #[test]
    fn disc_blur_spreads_an_impulse_symmetrically() {
        let mut b = constant(9, 9, 0.0);
        let c = (4 * 9 + 4) * 3;
        b.d[c] = 900.0;
        let out = disc_blur(&b, 1.0);
        // radius 1: centre weight 1, 4-neighbours 0.5, diagonals 1.5 - sqrt(2) = 0.0858.
        let total = 1.0 + 4.0 * 0.5 + 4.0 * (1.5 - 2f32.sqrt());
        assert!((out.d[c] - 900.0 / total).abs() < 1e-3);
        assert!((out.d[c + 3] - 450.0 / total).abs() < 1e-3);
        assert!((out.d[c - 3] - out.d[c + 27]).abs() < 1e-4);
        let sum: f32 = out.d.iter().step_by(3).sum();
        assert!((sum - 900.0).abs() < 1e-2);
    }

    #[test]
    fn gaussian_blur_has_the_requested_variance() {
        let mut b = constant(41, 1, 0.0);
        b.d[20 * 3] = 1.0;
        let out = gaussian_blur(&b, 2.0);
        let var: f32 = (0..41).map(|x| out.d[x * 3] * ((x as f32 - 20.0).powi(2))).sum();
        assert!((var - 4.0).abs() < 0.05, "variance {var}");
    }

    #[test]
    fn downsample_then_upsample_round_trips_flat_blocks() {
        let b = constant(7, 5, 42.0);
        let s = downsample(&b, 3);
        assert_eq!((s.w, s.h), (3, 2));
        let u = upsample(&s, 7, 5, 3);
        assert!(u.d.iter().all(|&v| (v - 42.0).abs() < 1e-4));
    }
}
