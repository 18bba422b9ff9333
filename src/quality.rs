//! No-reference image-quality measures of a whole frame: evidence about the picture itself
//! (sharpness, noise, contrast, exposure, colour, blocking, haze, flat areas) that sits beside
//! the model's evidence (the gradient features). A dirty lens, fog or a failing sensor shows in
//! these before the classifier is confused by them, and they cost a few passes over the
//! pixels.
//!
//! Every measure is a plain function of the 8-bit RGB frame and is oriented so that a
//! detector can learn its sign; none is normalised by a learned statistic (that is the
//! detector's standardiser's job). Frames larger than [`MAX_SIDE`] are box-downscaled first,
//! so the cost is bounded whatever the camera's resolution; noise is measured before that
//! (averaging hides it).

use crate::frame::RgbImage;

/// Longest side the structural measures see; larger frames are box-downscaled by an integer
/// factor first.
pub const MAX_SIDE: usize = 256;

/// One measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Measure {
    /// `ln(1 + variance of the 4-neighbour Laplacian of luma)`: falls with blur.
    Sharpness,
    /// Immerkær's fast noise sigma of luma (8-bit steps), on the full-resolution frame.
    Noise,
    /// RMS contrast: standard deviation of luma over 255.
    Contrast,
    /// Mean luma over 255.
    Brightness,
    /// Share of pixels with luma at most [`CLIP_LOW`] (crushed blacks).
    ClipLow,
    /// Share of pixels with luma at least [`CLIP_HIGH`] (blown highlights).
    ClipHigh,
    /// Hasler and Süsstrunk's colourfulness (2003), over 255.
    Colourfulness,
    /// Mean HSV saturation.
    Saturation,
    /// Mean absolute luma step across 8-pixel block edges over the mean step elsewhere (about
    /// 1 for natural pictures; above for block coding artefacts).
    Blockiness,
    /// Mean dark channel (minimum over colours and a small patch) over 255: rises with haze,
    /// glare and fog (He et al. 2009).
    DarkChannel,
    /// Share of 4x4 tiles whose luma varies by less than [`FLAT_VARIANCE`]: covered, smeared
    /// or saturated areas.
    FlatShare,
    /// Mean luma gradient magnitude over (contrast + 1): edges per unit of contrast, which blur
    /// lowers whatever the exposure.
    EdgeDensity,
}

/// Luma at or below which a pixel counts as clipped black.
pub const CLIP_LOW: f32 = 8.0;
/// Luma at or above which a pixel counts as clipped white.
pub const CLIP_HIGH: f32 = 247.0;
/// Luma variance (8-bit steps squared) below which a 4x4 tile is flat.
pub const FLAT_VARIANCE: f32 = 4.0;

impl Measure {
    /// Every measure, in the order of [`measure`]'s output.
    pub const ALL: [Measure; 12] = [
        Measure::Sharpness,
        Measure::Noise,
        Measure::Contrast,
        Measure::Brightness,
        Measure::ClipLow,
        Measure::ClipHigh,
        Measure::Colourfulness,
        Measure::Saturation,
        Measure::Blockiness,
        Measure::DarkChannel,
        Measure::FlatShare,
        Measure::EdgeDensity,
    ];

    /// Its name in reports and files (`quality:sharpness`).
    pub fn name(self) -> &'static str {
        match self {
            Measure::Sharpness => "quality:sharpness",
            Measure::Noise => "quality:noise",
            Measure::Contrast => "quality:contrast",
            Measure::Brightness => "quality:brightness",
            Measure::ClipLow => "quality:clip_low",
            Measure::ClipHigh => "quality:clip_high",
            Measure::Colourfulness => "quality:colourfulness",
            Measure::Saturation => "quality:saturation",
            Measure::Blockiness => "quality:blockiness",
            Measure::DarkChannel => "quality:dark_channel",
            Measure::FlatShare => "quality:flat_share",
            Measure::EdgeDensity => "quality:edge_density",
        }
    }
}

/// A luma plane (BT.601 weights), row-major.
struct Luma {
    w: usize,
    h: usize,
    y: Vec<f32>,
}

impl Luma {
    fn of(img: &RgbImage) -> Luma {
        let y = img
            .data
            .chunks_exact(3)
            .map(|p| 0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2]))
            .collect();
        Luma { w: img.width, h: img.height, y }
    }

    fn at(&self, x: usize, y: usize) -> f32 {
        self.y[y * self.w + x]
    }
}

/// Mean and population variance.
fn mean_var(v: impl Iterator<Item = f32>) -> (f64, f64) {
    let (mut n, mut s, mut s2) = (0usize, 0.0f64, 0.0f64);
    for x in v {
        n += 1;
        s += f64::from(x);
        s2 += f64::from(x) * f64::from(x);
    }
    if n == 0 {
        return (0.0, 0.0);
    }
    let m = s / n as f64;
    (m, (s2 / n as f64 - m * m).max(0.0))
}

/// `img` box-downscaled by the smallest integer factor that brings its longest side to at most
/// `max_side` (itself when already small enough).
pub fn downscale(img: &RgbImage, max_side: usize) -> RgbImage {
    let f = img.width.max(img.height).div_ceil(max_side.max(1)).max(1);
    if f == 1 {
        return img.clone();
    }
    let (w, h) = (img.width / f, img.height / f);
    // Row sums of each output row's band first: one pass over the input, in memory order.
    let mut out = RgbImage::zeros(w, h);
    let mut acc = vec![0u32; w * 3];
    let n = (f * f) as u32;
    for oy in 0..h {
        acc.iter_mut().for_each(|a| *a = 0);
        for y in oy * f..(oy + 1) * f {
            let row = &img.data[y * img.width * 3..(y * img.width + w * f) * 3];
            // Output pixel by output pixel: no division per input pixel.
            for (a, block) in acc.chunks_exact_mut(3).zip(row.chunks_exact(3 * f)) {
                for px in block.chunks_exact(3) {
                    a[0] += u32::from(px[0]);
                    a[1] += u32::from(px[1]);
                    a[2] += u32::from(px[2]);
                }
            }
        }
        let dst = &mut out.data[oy * w * 3..(oy + 1) * w * 3];
        for (d, a) in dst.iter_mut().zip(&acc) {
            *d = ((a + n / 2) / n) as u8;
        }
    }
    out
}

/// Most mask positions the noise estimate evaluates: larger frames are sampled on a regular
/// grid of centres (each still with its full-resolution neighbourhood), which keeps the
/// estimate unbiased and its cost bounded.
pub const NOISE_SAMPLES: usize = 16_384;

/// Immerkær's (1996) noise sigma of luma: the mean absolute response to a mask that cancels
/// planes and edges to first order, scaled to the sigma of Gaussian noise. Evaluated at full
/// resolution on a grid of at most [`NOISE_SAMPLES`] centres. 0 for frames under 3x3.
fn noise_sigma(img: &RgbImage) -> f64 {
    let (w, h) = (img.width, img.height);
    if w < 3 || h < 3 {
        return 0.0;
    }
    let interior = (w - 2) * (h - 2);
    let step = ((interior as f64 / NOISE_SAMPLES as f64).sqrt().ceil() as usize).max(1);
    let luma = |x: usize, y: usize| {
        let i = (y * w + x) * 3;
        let p = &img.data[i..i + 3];
        0.299 * f32::from(p[0]) + 0.587 * f32::from(p[1]) + 0.114 * f32::from(p[2])
    };
    let (mut sum, mut n) = (0.0f64, 0usize);
    for y in (1..h - 1).step_by(step) {
        for x in (1..w - 1).step_by(step) {
            let v = luma(x - 1, y - 1) - 2.0 * luma(x, y - 1) + luma(x + 1, y - 1) - 2.0 * luma(x - 1, y)
                + 4.0 * luma(x, y)
                - 2.0 * luma(x + 1, y)
                + luma(x - 1, y + 1)
                - 2.0 * luma(x, y + 1)
                + luma(x + 1, y + 1);
            sum += f64::from(v.abs());
            n += 1;
        }
    }
    (std::f64::consts::PI / 2.0).sqrt() * sum / (6.0 * n.max(1) as f64)
}

/// Variance of the 4-neighbour Laplacian over the interior (0 under 3x3).
fn laplacian_var(l: &Luma) -> f64 {
    if l.w < 3 || l.h < 3 {
        return 0.0;
    }
    let it = (1..l.h - 1).flat_map(|y| {
        (1..l.w - 1).map(move |x| l.at(x - 1, y) + l.at(x + 1, y) + l.at(x, y - 1) + l.at(x, y + 1) - 4.0 * l.at(x, y))
    });
    mean_var(it).1
}

/// Mean central-difference gradient magnitude over the interior.
fn gradient_mean(l: &Luma) -> f64 {
    if l.w < 3 || l.h < 3 {
        return 0.0;
    }
    let mut sum = 0.0f64;
    for y in 1..l.h - 1 {
        for x in 1..l.w - 1 {
            let gx = 0.5 * (l.at(x + 1, y) - l.at(x - 1, y));
            let gy = 0.5 * (l.at(x, y + 1) - l.at(x, y - 1));
            sum += f64::from((gx * gx + gy * gy).sqrt());
        }
    }
    sum / ((l.w - 2) * (l.h - 2)) as f64
}

/// Steps across 8-pixel block edges over steps elsewhere (1 when there are no block edges
/// or no steps).
fn blockiness(l: &Luma) -> f64 {
    // (sum, count) of the steps on block edges and elsewhere.
    let (mut edge, mut inner) = ((0.0f64, 0usize), (0.0f64, 0usize));
    let mut add = |d: f32, on_edge: bool| {
        let s = if on_edge { &mut edge } else { &mut inner };
        s.0 += f64::from(d.abs());
        s.1 += 1;
    };
    for y in 0..l.h {
        for x in 1..l.w {
            add(l.at(x, y) - l.at(x - 1, y), x % 8 == 0);
        }
    }
    for y in 1..l.h {
        for x in 0..l.w {
            add(l.at(x, y) - l.at(x, y - 1), y % 8 == 0);
        }
    }
    let ((edge, ne), (inner, ni)) = (edge, inner);
    if ne == 0 || ni == 0 {
        return 1.0;
    }
    let (e, i) = (edge / ne as f64, inner / ni as f64);
    if i <= 0.0 {
        return if e <= 0.0 { 1.0 } else { e + 1.0 };
    }
    e / i
}

/// Mean over pixels of the minimum channel over a 3x3 patch (clipped at the border), over 255.
fn dark_channel(img: &RgbImage) -> f64 {
    let (w, h) = (img.width, img.height);
    if w == 0 || h == 0 {
        return 0.0;
    }
    let mins: Vec<u8> = img.data.chunks_exact(3).map(|p| p[0].min(p[1]).min(p[2])).collect();
    let mut sum = 0.0f64;
    for y in 0..h {
        for x in 0..w {
            let mut m = u8::MAX;
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    m = m.min(mins[yy * w + xx]);
                }
            }
            sum += f64::from(m);
        }
    }
    sum / (w * h) as f64 / 255.0
}

/// Share of whole 4x4 tiles whose luma variance is under [`FLAT_VARIANCE`] (0 when the frame
/// has no whole tile).
fn flat_share(l: &Luma) -> f64 {
    let (tw, th) = (l.w / 4, l.h / 4);
    if tw == 0 || th == 0 {
        return 0.0;
    }
    let mut flat = 0usize;
    for ty in 0..th {
        for tx in 0..tw {
            let it = (0..16).map(|k| l.at(tx * 4 + k % 4, ty * 4 + k / 4));
            if mean_var(it).1 < f64::from(FLAT_VARIANCE) {
                flat += 1;
            }
        }
    }
    flat as f64 / (tw * th) as f64
}

/// Hasler and Süsstrunk's colourfulness and the mean HSV saturation.
fn colour(img: &RgbImage) -> (f64, f64) {
    let px = img.data.chunks_exact(3).map(|p| [f32::from(p[0]), f32::from(p[1]), f32::from(p[2])]);
    let (mrg, vrg) = mean_var(px.clone().map(|p| p[0] - p[1]));
    let (myb, vyb) = mean_var(px.clone().map(|p| 0.5 * (p[0] + p[1]) - p[2]));
    let m = (vrg + vyb).sqrt() + 0.3 * (mrg * mrg + myb * myb).sqrt();
    let (sat, _) = mean_var(px.map(|p| {
        let (hi, lo) = (p[0].max(p[1]).max(p[2]), p[0].min(p[1]).min(p[2]));
        if hi > 0.0 {
            (hi - lo) / hi
        } else {
            0.0
        }
    }));
    (m / 255.0, sat)
}

/// Every [`Measure`] of `img`, in [`Measure::ALL`] order. An empty frame gives zeros.
pub fn measure(img: &RgbImage) -> [f32; 12] {
    if img.width == 0 || img.height == 0 {
        return [0.0; 12];
    }
    let noise = noise_sigma(img);
    let small = downscale(img, MAX_SIDE);
    let l = Luma::of(&small);
    let n = l.y.len() as f64;
    let (mean, var) = mean_var(l.y.iter().copied());
    let contrast = var.sqrt();
    let (colourfulness, saturation) = colour(&small);
    [
        laplacian_var(&l).ln_1p(),
        noise,
        contrast / 255.0,
        mean / 255.0,
        l.y.iter().filter(|&&v| v <= CLIP_LOW).count() as f64 / n,
        l.y.iter().filter(|&&v| v >= CLIP_HIGH).count() as f64 / n,
        colourfulness,
        saturation,
        blockiness(&l),
        dark_channel(&small),
        flat_share(&l),
        gradient_mean(&l) / (contrast + 1.0),
    ]
    .map(|v| v as f32)
}

/// Every [`Measure`] of `img` as the classifier sees it: resized (bilinear, as the model's
/// preprocessing resizes) to `width` x `height` first, so that a calibration's images and a
/// camera's frames are measured at the same scale whatever the camera's resolution.
pub fn measure_as_input(img: &RgbImage, width: usize, height: usize) -> [f32; 12] {
    if img.width == width && img.height == height {
        measure(img)
    } else {
        measure(&img.resize(width, height))
    }
}

/// [`measure_as_input`] of every image, one row each (`[N, 12]`).
pub fn measure_batch(images: &[RgbImage], width: usize, height: usize) -> ndarray::Array2<f32> {
    let mut out = ndarray::Array2::zeros((images.len(), Measure::ALL.len()));
    for (mut row, img) in out.outer_iter_mut().zip(images) {
        row.assign(&ndarray::ArrayView1::from(&measure_as_input(img, width, height)[..]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img(w: usize, h: usize, f: impl Fn(usize, usize) -> [u8; 3]) -> RgbImage {
        let mut m = RgbImage::zeros(w, h);
        for y in 0..h {
            for x in 0..w {
                m.set_pixel(x, y, f(x, y));
            }
        }
        m
    }

    fn get(v: &[f32; 12], m: Measure) -> f32 {
        v[Measure::ALL.iter().position(|&x| x == m).unwrap()]
    }

    #[test]
    fn a_flat_grey_frame_has_no_structure_and_no_colour() {
        let v = measure(&img(16, 16, |_, _| [100, 100, 100]));
        assert_eq!(get(&v, Measure::Sharpness), 0.0);
        assert_eq!(get(&v, Measure::Noise), 0.0);
        assert_eq!(get(&v, Measure::Contrast), 0.0);
        assert!((get(&v, Measure::Brightness) - 100.0 / 255.0).abs() < 1e-4);
        assert_eq!(get(&v, Measure::ClipLow), 0.0);
        assert_eq!(get(&v, Measure::ClipHigh), 0.0);
        assert_eq!(get(&v, Measure::Colourfulness), 0.0);
        assert_eq!(get(&v, Measure::Saturation), 0.0);
        assert_eq!(get(&v, Measure::Blockiness), 1.0);
        assert!((get(&v, Measure::DarkChannel) - 100.0 / 255.0).abs() < 1e-6);
        assert_eq!(get(&v, Measure::FlatShare), 1.0);
        assert_eq!(get(&v, Measure::EdgeDensity), 0.0);
    }

    #[test]
    fn a_checkerboard_is_hand_computed() {
        // 0/255 checkerboard, 8x8: luma alternates 0 and 255 (BT.601 weights sum to 1).
        let v = measure(&img(8, 8, |x, y| if (x + y) % 2 == 0 { [255; 3] } else { [0; 3] }));
        // Laplacian at an interior pixel: 4 neighbours of the other colour minus 4x itself:
        // +-1020, half each sign: variance 1020^2.
        assert!((get(&v, Measure::Sharpness) - (1.0f32 + 1020.0 * 1020.0).ln()).abs() < 1e-3);
        // Immerkaer's mask on a checkerboard: corners (+1 each, same colour) 4c, edges (-2 each,
        // other colour) -8o, centre 4c: |8c - 8o| = 2040 everywhere.
        let want = (std::f32::consts::PI / 2.0).sqrt() * 2040.0 / 6.0;
        assert!((get(&v, Measure::Noise) - want).abs() < 1e-2, "{}", get(&v, Measure::Noise));
        assert!((get(&v, Measure::Contrast) - 0.5).abs() < 1e-4);
        assert!((get(&v, Measure::Brightness) - 0.5).abs() < 1e-4);
        assert_eq!(get(&v, Measure::ClipLow), 0.5);
        assert_eq!(get(&v, Measure::ClipHigh), 0.5);
        // Every 3x3 patch holds a black pixel.
        assert_eq!(get(&v, Measure::DarkChannel), 0.0);
        assert_eq!(get(&v, Measure::FlatShare), 0.0);
        // No 8-pixel block edge inside an 8x8 frame.
        assert_eq!(get(&v, Measure::Blockiness), 1.0);
        // Central differences cancel on a checkerboard.
        assert_eq!(get(&v, Measure::EdgeDensity), 0.0);
    }

    #[test]
    fn colour_measures_follow_their_definitions() {
        // Pure red: rg = 255, yb = 127.5, no variance; saturation 1.
        let v = measure(&img(4, 4, |_, _| [255, 0, 0]));
        let want = 0.3 * (255.0f32 * 255.0 + 127.5 * 127.5).sqrt() / 255.0;
        assert!((get(&v, Measure::Colourfulness) - want).abs() < 1e-4);
        assert_eq!(get(&v, Measure::Saturation), 1.0);
        assert_eq!(get(&v, Measure::DarkChannel), 0.0);
    }

    #[test]
    fn blocks_of_eight_raise_blockiness_and_a_ramp_does_not() {
        // Constant 8x8 blocks of different grey: every step is on a block edge.
        let blocks = measure(&img(32, 32, |x, y| [((x / 8 + y / 8) * 40) as u8; 3]));
        assert!(get(&blocks, Measure::Blockiness) > 10.0);
        // A smooth horizontal ramp: steps everywhere, equal.
        let ramp = measure(&img(32, 32, |x, _| [(x * 8) as u8; 3]));
        assert!((get(&ramp, Measure::Blockiness) - 1.0).abs() < 0.05, "{}", get(&ramp, Measure::Blockiness));
        assert!(get(&ramp, Measure::EdgeDensity) > 0.0);
    }

    #[test]
    fn noise_is_measured_at_full_resolution_and_grows_with_the_noise() {
        let mut rng = crate::rng::SplitMix64::new(7);
        let noisy = |sigma: f32, rng: &mut crate::rng::SplitMix64| {
            let mut m = img(600, 300, |_, _| [128; 3]);
            for v in m.data.iter_mut() {
                *v = (f32::from(*v) + sigma * rng.normalish()).round().clamp(0.0, 255.0) as u8;
            }
            m
        };
        let (a, b) = (measure(&noisy(2.0, &mut rng)), measure(&noisy(10.0, &mut rng)));
        // Luma averages the 3 channels' independent noise: sigma / sqrt(~2.2).
        assert!(get(&a, Measure::Noise) > 0.5 && get(&a, Measure::Noise) < 2.5, "{}", get(&a, Measure::Noise));
        assert!(get(&b, Measure::Noise) > 3.0 * get(&a, Measure::Noise));
    }

    #[test]
    fn large_frames_are_downscaled_by_an_integer_factor() {
        let big = img(1000, 500, |x, y| [(x % 256) as u8, (y % 256) as u8, 0]);
        let s = downscale(&big, MAX_SIDE);
        assert_eq!((s.width, s.height), (250, 125));
        assert_eq!(s.pixel(0, 0), [2, 2, 0]);
        let small = img(10, 10, |_, _| [1, 2, 3]);
        assert_eq!(downscale(&small, MAX_SIDE), small);
        assert_eq!(measure(&RgbImage::zeros(0, 0)), [0.0; 12]);
    }
}
