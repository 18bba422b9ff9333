//! Overlays drawn from a seeded pattern: dirty-lens blotches, snow flakes, haze veil.
//!
//! Each pattern is generated in full from the seed, independent of the level; a level only
//! chooses how many of its elements are drawn and how opaque they are. So level `n + 1` is
//! level `n` plus more of the same dirt, which is what makes the deviation grow with level.

use super::filter::Buf;
use crate::rng::SplitMix64;

/// Sub-blobs per blotch, so blotches are irregular rather than round.
const BLOBS_PER_BLOTCH: usize = 3;

/// Moves `px` (one RGB pixel) towards `color` by weight `a`.
#[inline]
fn blend(px: &mut [f32], color: [f32; 3], a: f32) {
    for (p, c) in px.iter_mut().zip(color) {
        *p += (c - *p) * a;
    }
}

/// Hermite step from 0 at `e0` to 1 at `e1`.
#[inline]
pub(crate) fn smoothstep(e0: f32, e1: f32, x: f32) -> f32 {
    let t = ((x - e0) / (e1 - e0)).clamp(0.0, 1.0);
    t * t * (3.0 - 2.0 * t)
}

/// Inclusive pixel range covered by `[c - r, c + r]`, clipped to `[0, n)`; `None` when outside.
#[inline]
fn span(c: f32, r: f32, n: usize) -> Option<(usize, usize)> {
    let lo = (c - r).floor().max(0.0);
    let hi = (c + r).ceil().min(n as f32 - 1.0);
    (hi >= lo).then_some((lo as usize, hi as usize))
}

/// Dark brown soft blotches, as dried dirt and water spots on a lens. Draws the first `count`
/// blotches of the seed's pattern at `opacity` (0..1); `s` = image scale (1 at 32x32).
pub(crate) fn dirty_lens(buf: &mut Buf, count: usize, opacity: f32, s: f32, seed: u64) {
    let (w, h) = (buf.w, buf.h);
    let mut rng = SplitMix64::new(seed);
    for _ in 0..count {
        // Fixed number of draws per blotch, so the pattern does not depend on `count`.
        let cx = rng.uniform() * w as f32;
        let cy = rng.uniform() * h as f32;
        let rho = rng.range(3.5, 7.5) * s;
        let dark = rng.range(0.0, 1.0);
        let color = [70.0 - 35.0 * dark, 52.0 - 28.0 * dark, 30.0 - 18.0 * dark];
        let op = opacity * rng.range(0.75, 1.0);
        for _ in 0..BLOBS_PER_BLOTCH {
            let bx = cx + rng.range(-0.7, 0.7) * rho;
            let by = cy + rng.range(-0.7, 0.7) * rho;
            let ra = rho * rng.range(0.5, 1.0);
            let rb = ra * rng.range(0.5, 1.0);
            let ang = rng.range(0.0, std::f32::consts::PI);
            let (sin, cos) = ang.sin_cos();
            let (Some((x0, x1)), Some((y0, y1))) = (span(bx, ra + 1.0, w), span(by, ra + 1.0, h)) else {
                continue;
            };
            for y in y0..=y1 {
                for x in x0..=x1 {
                    let dx = x as f32 + 0.5 - bx;
                    let dy = y as f32 + 0.5 - by;
                    let u = (dx * cos + dy * sin) / ra;
                    let v = (-dx * sin + dy * cos) / rb;
                    let d = (u * u + v * v).sqrt();
                    let a = op * (1.0 - smoothstep(0.1, 1.0, d));
                    if a > 0.0 {
                        let i = (y * w + x) * 3;
                        blend(&mut buf.d[i..i + 3], color, a);
                    }
                }
            }
        }
    }
}

/// Falling snow: the first `count` flakes (soft dots, some smeared into short streaks by
/// motion) of the seed's pattern, over a light whitening `veil` (0..1) of the whole scene.
pub(crate) fn snow(buf: &mut Buf, count: usize, veil: f32, s: f32, seed: u64) {
    let (w, h) = (buf.w, buf.h);
    const SKY: [f32; 3] = [205.0, 210.0, 218.0];
    if veil > 0.0 {
        for px in buf.d.chunks_exact_mut(3) {
            blend(px, SKY, veil);
        }
    }
    let mut alpha = vec![0.0f32; w * h];
    let mut rng = SplitMix64::new(seed);
    // Wind: all flakes fall the same way, slightly off vertical.
    let ang = std::f32::consts::FRAC_PI_2 + rng.range(-0.5, 0.5);
    let (dir_y, dir_x) = ang.sin_cos();
    for _ in 0..count {
        let px = rng.range(-0.05, 1.05) * w as f32;
        let py = rng.range(-0.05, 1.05) * h as f32;
        let rad = rng.range(0.35, 0.85) * s;
        let len = if rng.uniform() < 0.7 { 0.0 } else { rng.range(0.5, 2.0) * s };
        let op = rng.range(0.6, 1.0);
        let (qx, qy) = (px + dir_x * len, py + dir_y * len);
        let (Some((x0, x1)), Some((y0, y1))) = (
            span((px + qx) * 0.5, (qx - px).abs() * 0.5 + rad + 1.0, w),
            span((py + qy) * 0.5, (qy - py).abs() * 0.5 + rad + 1.0, h),
        ) else {
            continue;
        };
        for y in y0..=y1 {
            for x in x0..=x1 {
                let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                // Distance from the pixel centre to the segment p..q.
                let t = if len > 0.0 { (((fx - px) * dir_x + (fy - py) * dir_y) / len).clamp(0.0, 1.0) } else { 0.0 };
                let (ex, ey) = (fx - (px + dir_x * len * t), fy - (py + dir_y * len * t));
                let d = (ex * ex + ey * ey).sqrt();
                let cov = op * (1.0 - smoothstep(0.3 * rad, rad + 0.5, d));
                let a = &mut alpha[y * w + x];
                *a = a.max(cov);
            }
        }
    }
    const FLAKE: [f32; 3] = [250.0, 251.0, 255.0];
    for (px, &a) in buf.d.chunks_exact_mut(3).zip(alpha.iter()) {
        if a > 0.0 {
            blend(px, FLAKE, a);
        }
    }
}

/// Haze: blends the scene with a bright veil whose thickness varies smoothly (value noise with
/// cells of about 10 px at 32x32) and thickens towards the top, as distance does in a street
/// scene. `strength` (0..1) is the mean blend weight.
pub(crate) fn haze(buf: &mut Buf, strength: f32, s: f32, seed: u64) {
    let (w, h) = (buf.w, buf.h);
    const VEIL: [f32; 3] = [222.0, 224.0, 228.0];
    let cell = (10.0 * s).max(1.0);
    let gw = (w as f32 / cell).ceil() as usize + 2;
    let gh = (h as f32 / cell).ceil() as usize + 2;
    let mut rng = SplitMix64::new(seed);
    let (ox, oy) = (rng.uniform() * cell, rng.uniform() * cell);
    let grid: Vec<f32> = (0..gw * gh).map(|_| rng.uniform()).collect();
    let inv = 1.0 / cell;
    for y in 0..h {
        let gy = (y as f32 + oy) * inv;
        let iy = (gy as usize).min(gh - 2);
        let ty = smoothstep(0.0, 1.0, gy - iy as f32);
        let depth = 1.15 - 0.3 * (y as f32 + 0.5) / h as f32;
        for x in 0..w {
            let gx = (x as f32 + ox) * inv;
            let ix = (gx as usize).min(gw - 2);
            let tx = smoothstep(0.0, 1.0, gx - ix as f32);
            let g = |a: usize, b: usize| grid[b * gw + a];
            let top = g(ix, iy) * (1.0 - tx) + g(ix + 1, iy) * tx;
            let bot = g(ix, iy + 1) * (1.0 - tx) + g(ix + 1, iy + 1) * tx;
            let n = top * (1.0 - ty) + bot * ty;
            let t = (strength * (0.7 + 0.6 * n) * depth).clamp(0.0, 0.97);
            let i = (y * w + x) * 3;
            blend(&mut buf.d[i..i + 3], VEIL, t);
        }
    }
}
