//! Heat maps of the input gradient: where in the frame the model's confusion comes from.
//!
//! `|d loss / d input|` summed over the colour channels gives one magnitude per model input
//! pixel. It is smoothed (a Gaussian of sigma = 1 pixel per 32 pixels of input, so single-pixel
//! speckle of the gradient does not dominate), divided by its 99th percentile (so one extreme
//! pixel does not turn the rest dark) and clamped to [0, 1], then drawn with the *inferno*
//! colour map (perceptually uniform, readable in grey and by most colour-blind people)
//! alpha-blended over the frame: the hotter, the more opaque.

use crate::frame::RgbImage;

/// How `input_grad` is laid out: the model's input size and channel order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GradLayout {
    /// Model input width.
    pub width: usize,
    /// Model input height.
    pub height: usize,
    /// `[H, W, C]` when true, `[C, H, W]` otherwise.
    pub nhwc: bool,
    /// Channels: 3, or 1 for a gray model.
    pub channels: usize,
}

impl GradLayout {
    /// The layout of a model's input (from its metadata and graph).
    pub fn of(info: &crate::model::ModelInfo) -> Self {
        GradLayout { width: info.width, height: info.height, nhwc: info.nhwc, channels: info.color_order.channels() }
    }

    /// Numbers in one frame's input gradient.
    pub fn len(&self) -> usize {
        self.width * self.height * self.channels
    }

    /// Whether the layout is empty (a zero-sized input).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A normalised heat map at the model's input resolution: values in [0, 1], row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct HeatMap {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `width * height` values in [0, 1].
    pub values: Vec<f32>,
}

/// Percentile the map is divided by.
const NORM_PERCENTILE: f64 = 0.99;

impl HeatMap {
    /// The heat map of one frame's input gradient; `None` when `grad` does not fit `layout`.
    pub fn from_input_grad(grad: &[f32], layout: &GradLayout) -> Option<HeatMap> {
        let (w, h) = (layout.width, layout.height);
        if layout.is_empty() || grad.len() != layout.len() {
            return None;
        }
        let mut m = vec![0f32; w * h];
        for (i, v) in m.iter_mut().enumerate() {
            let (y, x) = (i / w, i % w);
            let ch = layout.channels;
            for c in 0..ch {
                let g = if layout.nhwc { grad[(y * w + x) * ch + c] } else { grad[(c * h + y) * w + x] };
                // NaN says nothing about where; +-inf is as hot as it gets (capped below).
                if !g.is_nan() {
                    *v += g.abs();
                }
            }
        }
        let finite_max = m.iter().copied().filter(|v| v.is_finite()).fold(0f32, f32::max);
        for v in &mut m {
            if !v.is_finite() {
                *v = if finite_max > 0.0 { finite_max } else { 1.0 };
            }
        }
        let sigma = (w.max(h) as f32 / 32.0).max(1.0);
        let m = gaussian_blur(&m, w, h, sigma);
        Some(HeatMap { width: w, height: h, values: normalise(m) })
    }

    /// The value at fractional position (`fx`, `fy`) in map pixels (bilinear, edges clamped).
    pub fn sample(&self, fx: f32, fy: f32) -> f32 {
        let fx = fx.clamp(0.0, (self.width - 1) as f32);
        let fy = fy.clamp(0.0, (self.height - 1) as f32);
        let (x0, y0) = (fx as usize, fy as usize);
        let (x1, y1) = ((x0 + 1).min(self.width - 1), (y0 + 1).min(self.height - 1));
        let (wx, wy) = (fx - x0 as f32, fy - y0 as f32);
        let v = |x: usize, y: usize| self.values[y * self.width + x];
        let top = v(x0, y0) * (1.0 - wx) + v(x1, y0) * wx;
        let bot = v(x0, y1) * (1.0 - wx) + v(x1, y1) * wx;
        top * (1.0 - wy) + bot * wy
    }
}

/// Divides by the 99th percentile (the maximum when that is 0) and clamps to [0, 1]; an
/// all-zero map stays zero.
fn normalise(mut m: Vec<f32>) -> Vec<f32> {
    let mut sorted = m.clone();
    sorted.sort_by(f32::total_cmp);
    let idx = ((sorted.len().saturating_sub(1)) as f64 * NORM_PERCENTILE).round() as usize;
    let mut scale = sorted.get(idx).copied().unwrap_or(0.0);
    if scale <= 0.0 {
        scale = sorted.last().copied().unwrap_or(0.0);
    }
    for v in &mut m {
        *v = if scale > 0.0 { (*v / scale).clamp(0.0, 1.0) } else { 0.0 };
    }
    m
}

/// Separable Gaussian blur with clamped edges.
fn gaussian_blur(m: &[f32], w: usize, h: usize, sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as isize;
    let mut k: Vec<f32> = (-r..=r).map(|i| (-((i * i) as f32) / (2.0 * sigma * sigma)).exp()).collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    let mut tmp = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            tmp[y * w + x] = (-r..=r).zip(&k).map(|(d, kv)| kv * m[y * w + clamp(x as isize + d, w)]).sum();
        }
    }
    let mut out = vec![0f32; w * h];
    for y in 0..h {
        for x in 0..w {
            out[y * w + x] = (-r..=r).zip(&k).map(|(d, kv)| kv * tmp[clamp(y as isize + d, h) * w + x]).sum();
        }
    }
    out
}

/// Matplotlib's *inferno* at 0, 0.1, ..., 1 (linear in between is indistinguishable).
const INFERNO: [[u8; 3]; 11] = [
    [0, 0, 4],
    [22, 11, 57],
    [66, 10, 104],
    [106, 23, 110],
    [147, 38, 103],
    [188, 55, 84],
    [221, 81, 58],
    [243, 120, 25],
    [252, 165, 10],
    [246, 215, 70],
    [252, 255, 164],
];

/// The inferno colour of `v` in [0, 1] (clamped; NaN is 0).
pub fn inferno(v: f32) -> [u8; 3] {
    let v = if v.is_nan() { 0.0 } else { v.clamp(0.0, 1.0) };
    let f = v * (INFERNO.len() - 1) as f32;
    let i = (f as usize).min(INFERNO.len() - 2);
    let t = f - i as f32;
    let (a, b) = (INFERNO[i], INFERNO[i + 1]);
    std::array::from_fn(|c| (a[c] as f32 * (1.0 - t) + b[c] as f32 * t).round() as u8)
}

/// The size a frame is shown at: scaled up by an integer factor until its shorter side is at
/// least `min_side` (never past 4096 pixels a side); unchanged when already large enough.
pub fn display_size(width: usize, height: usize, min_side: usize) -> (usize, usize) {
    let short = width.min(height);
    if short == 0 || short >= min_side {
        return (width, height);
    }
    let want = min_side.div_ceil(short);
    let cap = (4096 / width.max(height)).max(1);
    let f = want.min(cap);
    (width * f, height * f)
}

/// Nearest-neighbour resize: upscaled frames keep their pixels sharp (what the camera gave,
/// not an interpolation of it).
pub fn resize_nearest(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    if (width, height) == (img.width, img.height) || img.width == 0 || img.height == 0 {
        return img.clone();
    }
    let mut out = RgbImage::zeros(width, height);
    for y in 0..height {
        let sy = (y * img.height / height).min(img.height - 1);
        for x in 0..width {
            let sx = (x * img.width / width).min(img.width - 1);
            out.set_pixel(x, y, img.pixel(sx, sy));
        }
    }
    out
}

/// Least opacity of the colour map (cold areas: the frame shows through, slightly darkened
/// so the hot areas stand out).
const ALPHA_MIN: f32 = 0.2;
/// Most opacity (the hottest areas still show a hint of the frame).
const ALPHA_MAX: f32 = 0.8;

/// The heat map drawn over `frame` at `frame`'s size: the map is stretched over the whole
/// frame (the model sees the whole frame resized to its input) and sampled bilinearly.
pub fn overlay(frame: &RgbImage, heat: &HeatMap) -> RgbImage {
    let (w, h) = (frame.width, frame.height);
    let mut out = frame.clone();
    if w == 0 || h == 0 || heat.width == 0 || heat.height == 0 {
        return out;
    }
    let sx = heat.width as f32 / w as f32;
    let sy = heat.height as f32 / h as f32;
    for y in 0..h {
        let fy = (y as f32 + 0.5) * sy - 0.5;
        for x in 0..w {
            let v = heat.sample((x as f32 + 0.5) * sx - 0.5, fy);
            let c = inferno(v);
            let a = ALPHA_MIN + (ALPHA_MAX - ALPHA_MIN) * v;
            let p = frame.pixel(x, y);
            out.set_pixel(x, y, std::array::from_fn(|k| (p[k] as f32 * (1.0 - a) + c[k] as f32 * a).round() as u8));
        }
    }
    out
}

/// A frame and its heat map as shown to a person: both at [`display_size`].
pub fn render(frame: &RgbImage, input_grad: Option<&[f32]>, layout: &GradLayout, min_side: usize) -> Rendered {
    let (w, h) = display_size(frame.width, frame.height, min_side);
    let shown = resize_nearest(frame, w, h);
    let heatmap = input_grad.and_then(|g| HeatMap::from_input_grad(g, layout)).map(|m| overlay(&shown, &m));
    Rendered { frame: shown, heatmap }
}

/// What [`render`] gives.
#[derive(Clone, Debug)]
pub struct Rendered {
    /// The frame at display size.
    pub frame: RgbImage,
    /// The heat map over it, when an input gradient was given and fits the layout.
    pub heatmap: Option<RgbImage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_map_ends_and_display_size() {
        assert_eq!(inferno(0.0), [0, 0, 4]);
        assert_eq!(inferno(1.0), [252, 255, 164]);
        assert_eq!(inferno(f32::NAN), [0, 0, 4]);
        assert_eq!(display_size(32, 32, 256), (256, 256));
        assert_eq!(display_size(40, 30, 256), (360, 270));
        assert_eq!(display_size(640, 480, 256), (640, 480));
        assert_eq!(display_size(32, 32, 0), (32, 32));
        assert_eq!(display_size(4000, 10, 256), (4000, 10));
    }

    #[test]
    fn flat_and_broken_gradients_do_not_panic() {
        let l = GradLayout { width: 4, height: 3, nhwc: false, channels: 3 };
        let zero = HeatMap::from_input_grad(&[0.0; 36], &l).unwrap();
        assert!(zero.values.iter().all(|&v| v == 0.0));
        let mut g = vec![0.0; 36];
        g[0] = f32::INFINITY;
        g[1] = f32::NAN;
        let m = HeatMap::from_input_grad(&g, &l).unwrap();
        assert!(m.values.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(HeatMap::from_input_grad(&[0.0; 35], &l).is_none());
    }
}
