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
        Self {
            w,
            h,
            d: data.iter().map(|&v| v as f32).collect(),
        }
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
        return Buf {
            w: src.w,
            h: src.h,
            d: src.d.clone(),
        };
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
    let r = (radius + 0.5).ceil() as isize;
    let mut taps: Vec<(isize, isize, f32)> = Vec::new();
    let mut total = 0.0;
    for dy in -r..=r {
        for dx in -r..=r {
            let dist = ((dx * dx + dy * dy) as f32).sqrt();
            let wgt = (radius + 0.5 - dist).clamp(0.0, 1.0);
            if wgt > 0.0 {
                taps.push((dx, dy, wgt));
                total += wgt;
            }
        }
    }
    for t in &mut taps {
        t.2 /= total;
    }
    let (w, h) = (src.w as isize, src.h as isize);
    let mut out = vec![0.0f32; src.d.len()];
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0.0f32; 3];
            for &(dx, dy, wgt) in &taps {
                let sx = (x + dx).clamp(0, w - 1);
                let sy = (y + dy).clamp(0, h - 1);
                let i = ((sy * w + sx) * 3) as usize;
                acc[0] += wgt * src.d[i];
                acc[1] += wgt * src.d[i + 1];
                acc[2] += wgt * src.d[i + 2];
            }
            let o = ((y * w + x) * 3) as usize;
            out[o..o + 3].copy_from_slice(&acc);
        }
    }
    Buf {
        w: src.w,
        h: src.h,
        d: out,
    }
}

/// Separable Gaussian blur with standard deviation `sigma` pixels (kernel truncated at 3 sigma).
pub(crate) fn gaussian_blur(src: &Buf, sigma: f32) -> Buf {
    if sigma <= 0.05 || src.w == 0 || src.h == 0 {
        return Buf {
            w: src.w,
            h: src.h,
            d: src.d.clone(),
        };
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
    let r = (3.0 * sigma).ceil().max(1.0) as isize;
    let mut kern: Vec<f32> = (-r..=r)
        .map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kern.iter().sum();
    kern.iter_mut().for_each(|v| *v /= total);
    let (w, h) = (src.w as isize, src.h as isize);
    let mut tmp = vec![0.0f32; src.d.len()];
    // Horizontal pass.
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0.0f32; 3];
            for (j, &kv) in kern.iter().enumerate() {
                let sx = (x + j as isize - r).clamp(0, w - 1);
                let i = ((y * w + sx) * 3) as usize;
                acc[0] += kv * src.d[i];
                acc[1] += kv * src.d[i + 1];
                acc[2] += kv * src.d[i + 2];
            }
            let o = ((y * w + x) * 3) as usize;
            tmp[o..o + 3].copy_from_slice(&acc);
        }
    }
    // Vertical pass.
    let mut out = vec![0.0f32; src.d.len()];
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0.0f32; 3];
            for (j, &kv) in kern.iter().enumerate() {
                let sy = (y + j as isize - r).clamp(0, h - 1);
                let i = ((sy * w + x) * 3) as usize;
                acc[0] += kv * tmp[i];
                acc[1] += kv * tmp[i + 1];
                acc[2] += kv * tmp[i + 2];
            }
            let o = ((y * w + x) * 3) as usize;
            out[o..o + 3].copy_from_slice(&acc);
        }
    }
    Buf {
        w: src.w,
        h: src.h,
        d: out,
    }
}

/// Area average over `k x k` blocks (partial blocks at the right/bottom edge average what they hold).
fn downsample(src: &Buf, k: usize) -> Buf {
    let sw = src.w.div_ceil(k);
    let sh = src.h.div_ceil(k);
    let mut d = vec![0.0f32; sw * sh * 3];
    let mut cnt = vec![0u32; sw * sh];
    for y in 0..src.h {
        let row = (y / k) * sw;
        for x in 0..src.w {
            let o = row + x / k;
            let i = (y * src.w + x) * 3;
            d[o * 3] += src.d[i];
            d[o * 3 + 1] += src.d[i + 1];
            d[o * 3 + 2] += src.d[i + 2];
            cnt[o] += 1;
        }
    }
    for (o, &c) in cnt.iter().enumerate() {
        let inv = 1.0 / c.max(1) as f32;
        d[o * 3] *= inv;
        d[o * 3 + 1] *= inv;
        d[o * 3 + 2] *= inv;
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
    for y in 0..h {
        let (y0, y1, wy) = coord(y, src.h);
        for (x, &(x0, x1, wx)) in xs.iter().enumerate() {
            let a = (y0 * src.w + x0) * 3;
            let b = (y0 * src.w + x1) * 3;
            let c = (y1 * src.w + x0) * 3;
            let e = (y1 * src.w + x1) * 3;
            let o = (y * w + x) * 3;
            for ch in 0..3 {
                let top = src.d[a + ch] * (1.0 - wx) + src.d[b + ch] * wx;
                let bot = src.d[c + ch] * (1.0 - wx) + src.d[e + ch] * wx;
                d[o + ch] = top * (1.0 - wy) + bot * wy;
            }
        }
    }
    Buf { w, h, d }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constant(w: usize, h: usize, v: f32) -> Buf {
        Buf {
            w,
            h,
            d: vec![v; w * h * 3],
        }
    }

    #[test]
    fn blurs_preserve_constant_images() {
        // Normalised kernels: a flat image must come back flat, at full and reduced resolution.
        for (w, h) in [(1, 1), (5, 3), (64, 48)] {
            let b = constant(w, h, 100.0);
            for out in [
                disc_blur(&b, 1.3),
                disc_blur(&b, 20.0),
                gaussian_blur(&b, 0.7),
                gaussian_blur(&b, 11.0),
            ] {
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
        let var: f32 = (0..41)
            .map(|x| out.d[x * 3] * ((x as f32 - 20.0).powi(2)))
            .sum();
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
