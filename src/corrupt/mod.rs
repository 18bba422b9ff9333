//! Synthetic CURE-TSR-style challenge corruptions of RGB8 images, levels 1 (barely visible)
//! to 5 (severe), deterministic for a seed.
//!
//! CURE-TSR (Temel et al., 2017) renders 12 challenge types at 5 levels over 32x32-ish sign
//! crops; the gradwatch paper (Lee & AlRegib, ICIP 2020) reports on 8 of them
//! ([`Corruption::PAPER`]). These are re-creations from the dataset's description, not its
//! exact renderer: a model trained here sees similar, not identical, shifts.
//!
//! Spatial sizes (blur kernels, blotches, flakes, haze cells) are given for a 32x32 image and
//! scale with `min(width, height) / 32`, so a 640x480 frame at level 3 looks like a 32x32 sign at
//! level 3. The random pattern comes from a frozen SplitMix64 ([`crate::rng::SplitMix64`]) seeded with
//! `seed` and the kind, so results never change with a dependency's version.

mod filter;
mod overlay;

use crate::rng::SplitMix64;

use crate::frame::RgbImage;
use filter::{to_u8, Buf};

/// Highest severity level; levels are `1..=MAX_LEVEL`.
pub const MAX_LEVEL: u8 = 5;

/// A challenge type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Corruption {
    /// Additive, per-channel, approximately Gaussian sensor noise.
    Noise,
    /// Defocus: convolution with a disc (pillbox) kernel.
    LensBlur,
    /// Gaussian blur.
    GaussianBlur,
    /// Dark brown blotches, as dirt on the lens.
    DirtyLens,
    /// Over-exposure: brightened and washed out, highlights clipped.
    Exposure,
    /// White flakes and short motion streaks over a slightly whitened scene.
    Snow,
    /// Blend with a bright, smoothly varying haze veil.
    Haze,
    /// Loss of saturation towards grey.
    Decolor,
    /// Under-exposure: darker, shadows crushed.
    Darkening,
    /// JPEG blocking and ringing: encoded at a low quality and decoded back.
    CodecError,
}

impl Corruption {
    /// Every type this module implements.
    pub const ALL: [Corruption; 10] = [
        Corruption::Noise,
        Corruption::LensBlur,
        Corruption::GaussianBlur,
        Corruption::DirtyLens,
        Corruption::Exposure,
        Corruption::Snow,
        Corruption::Haze,
        Corruption::Decolor,
        Corruption::Darkening,
        Corruption::CodecError,
    ];

    /// The 8 CURE-TSR types the paper reports on, in its Table 2 order.
    pub const PAPER: [Corruption; 8] = [
        Corruption::Noise,
        Corruption::LensBlur,
        Corruption::GaussianBlur,
        Corruption::DirtyLens,
        Corruption::Exposure,
        Corruption::Snow,
        Corruption::Haze,
        Corruption::Decolor,
    ];

    /// The snake_case name used in configs, CLIs and tags (`"lens_blur"`).
    pub fn name(self) -> &'static str {
        match self {
            Corruption::Noise => "noise",
            Corruption::LensBlur => "lens_blur",
            Corruption::GaussianBlur => "gaussian_blur",
            Corruption::DirtyLens => "dirty_lens",
            Corruption::Exposure => "exposure",
            Corruption::Snow => "snow",
            Corruption::Haze => "haze",
            Corruption::Decolor => "decolor",
            Corruption::Darkening => "darkening",
            Corruption::CodecError => "codec_error",
        }
    }

    /// Whether the output depends on the seed (the others are pure functions of image and level).
    pub fn uses_seed(self) -> bool {
        matches!(self, Corruption::Noise | Corruption::DirtyLens | Corruption::Snow | Corruption::Haze)
    }

    fn index(self) -> u64 {
        Corruption::ALL.iter().position(|&k| k == self).unwrap_or(0) as u64
    }
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Corruption {
    type Err = CorruptError;

    /// Parses a name as [`Corruption::name`] writes it; case and `-` for `_` are forgiven.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        Corruption::ALL.into_iter().find(|k| k.name() == norm).ok_or_else(|| CorruptError::UnknownKind(s.to_string()))
    }
}

/// Comma-separated list of the valid names, for error messages.
fn valid_names() -> String {
    Corruption::ALL.map(Corruption::name).join(", ")
}

/// Why a corruption could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CorruptError {
    /// Level outside `1..=5`.
    #[error("corruption level {0} is out of range; use 1 (barely visible) to 5 (severe)")]
    BadLevel(u8),
    /// A name that is not a corruption type.
    #[error("unknown corruption `{0}`; valid names: {names}", names = valid_names())]
    UnknownKind(String),
    /// A montage with a zero scale.
    #[error("montage scale must be at least 1 (it is the upscaling factor of each cell)")]
    BadScale,
    /// A montage of no kinds.
    #[error("montage needs at least one corruption kind")]
    NoKinds,
    /// A round robin over no kinds or levels.
    #[error("{0}")]
    Invalid(String),
    /// The JPEG round trip of `codec_error` failed (e.g. an image over 65535 px a side).
    #[error("codec_error: JPEG round trip failed: {0}; use an image at most 65535 px a side")]
    Codec(String),
    /// An [`RgbImage`] whose buffer length is not `width * height * 3`.
    #[error("image claims {width}x{height} but holds {len} bytes (expected width*height*3); build images with RgbImage::new")]
    BadImage {
        /// Claimed width.
        width: usize,
        /// Claimed height.
        height: usize,
        /// Actual buffer length.
        len: usize,
    },
}

// Level tables, index = level - 1. Spatial values are in pixels of a 32x32 image.
/// `noise`: standard deviation of the additive noise, in 8-bit steps.
const NOISE_SIGMA: [f32; 5] = [5.0, 10.0, 17.0, 26.0, 38.0];
/// `lens_blur`: disc radius.
const LENS_RADIUS: [f32; 5] = [0.7, 1.2, 1.8, 2.6, 3.6];
/// `gaussian_blur`: sigma.
const GAUSS_SIGMA: [f32; 5] = [0.5, 0.85, 1.3, 1.9, 2.7];
/// `dirty_lens`: blotches per 32x32 area.
const DIRT_COUNT: [f32; 5] = [2.0, 3.0, 5.0, 7.0, 10.0];
/// `dirty_lens`: blotch opacity.
const DIRT_OPACITY: [f32; 5] = [0.3, 0.45, 0.6, 0.75, 0.88];
/// `exposure`: gain and offset, `y = gain * x + offset`, clipped.
const EXPOSURE: [(f32, f32); 5] = [(1.03, 6.0), (1.1, 20.0), (1.2, 40.0), (1.35, 65.0), (1.5, 95.0)];
/// `snow`: flakes per 32x32 area.
const SNOW_COUNT: [f32; 5] = [10.0, 25.0, 45.0, 75.0, 110.0];
/// `snow`: flake size factor.
const SNOW_SIZE: [f32; 5] = [0.8, 0.9, 1.0, 1.1, 1.25];
/// `snow`: whitening of the scene behind the flakes.
const SNOW_VEIL: [f32; 5] = [0.0, 0.06, 0.12, 0.2, 0.3];
/// `haze`: mean blend weight of the veil.
const HAZE: [f32; 5] = [0.08, 0.22, 0.38, 0.55, 0.72];
/// `decolor`: fraction of saturation removed.
const DECOLOR: [f32; 5] = [0.25, 0.45, 0.65, 0.85, 1.0];
/// `darkening`: gain and gamma, `y = 255 * gain * (x / 255) ^ gamma`.
const DARKEN: [(f32, f32); 5] = [(0.93, 1.02), (0.78, 1.1), (0.6, 1.2), (0.45, 1.35), (0.3, 1.5)];
/// `codec_error`: JPEG quality (1..=100).
const JPEG_QUALITY: [u8; 5] = [75, 40, 20, 10, 3];

/// Applies `kind` at `level` (1..=5) to `img`; `seed` fixes the random pattern of
/// noise, dirty lens, snow and haze (the others ignore it). Same inputs, same bytes.
pub fn apply(img: &RgbImage, kind: Corruption, level: u8, seed: u64) -> Result<RgbImage, CorruptError> {
    if !(1..=MAX_LEVEL).contains(&level) {
        return Err(CorruptError::BadLevel(level));
    }
    let (w, h) = (img.width, img.height);
    check_image(img)?;
    if w == 0 || h == 0 {
        return Ok(img.clone());
    }
    let li = usize::from(level - 1);
    // Decorrelate kinds sharing a seed (noise and snow of seed 7 should not share positions).
    let seed = seed ^ (kind.index() + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let s = w.min(h) as f32 / 32.0;
    // Pattern counts scale with area in 32x32 units, so density matches across sizes.
    let area = (w * h) as f32 / (s * s * 1024.0);
    let count = |per: f32| (per * area).round() as usize;
    let data = match kind {
        Corruption::Noise => {
            let sigma = NOISE_SIGMA[li];
            let mut rng = SplitMix64::new(seed);
            img.data.iter().map(|&v| to_u8(v as f32 + sigma * rng.normalish())).collect()
        }
        Corruption::LensBlur => filter::disc_blur(&Buf::from_u8(w, h, &img.data), LENS_RADIUS[li] * s).to_u8(),
        Corruption::GaussianBlur => filter::gaussian_blur(&Buf::from_u8(w, h, &img.data), GAUSS_SIGMA[li] * s).to_u8(),
        Corruption::DirtyLens => {
            let mut b = Buf::from_u8(w, h, &img.data);
            overlay::dirty_lens(&mut b, count(DIRT_COUNT[li]), DIRT_OPACITY[li], s, seed);
            b.to_u8()
        }
        Corruption::Exposure => {
            let (gain, off) = EXPOSURE[li];
            map_lut(&img.data, |x| gain * x + off)
        }
        Corruption::Snow => {
            let mut b = Buf::from_u8(w, h, &img.data);
            overlay::snow(&mut b, count(SNOW_COUNT[li]), SNOW_VEIL[li], SNOW_SIZE[li] * s, seed);
            b.to_u8()
        }
        Corruption::Haze => {
            let mut b = Buf::from_u8(w, h, &img.data);
            overlay::haze(&mut b, HAZE[li], s, seed);
            b.to_u8()
        }
        Corruption::Decolor => decolor(&img.data, DECOLOR[li]),
        Corruption::Darkening => {
            let (gain, gamma) = DARKEN[li];
            map_lut(&img.data, |x| 255.0 * gain * (x / 255.0).powf(gamma))
        }
        Corruption::CodecError => jpeg_round_trip(img, JPEG_QUALITY[li])?,
    };
    Ok(RgbImage { width: w, height: h, data })
}

/// Rejects images whose buffer does not match their size (the fields are public).
fn check_image(img: &RgbImage) -> Result<(), CorruptError> {
    let want = img.width.checked_mul(img.height).and_then(|n| n.checked_mul(3));
    if want != Some(img.data.len()) {
        return Err(CorruptError::BadImage { width: img.width, height: img.height, len: img.data.len() });
    }
    Ok(())
}

/// A per-value tone curve through a 256-entry table (the whole op costs one lookup a byte).
fn map_lut(data: &[u8], f: impl Fn(f32) -> f32) -> Vec<u8> {
    let mut lut = [0u8; 256];
    for (v, o) in lut.iter_mut().enumerate() {
        *o = to_u8(f(v as f32));
    }
    data.iter().map(|&v| lut[usize::from(v)]).collect()
}

/// Pulls each pixel towards its luma (BT.601) by `amount` (1 = grey).
fn decolor(data: &[u8], amount: f32) -> Vec<u8> {
    let mut out = vec![0u8; data.len()];
    for (o, px) in out.chunks_exact_mut(3).zip(data.chunks_exact(3)) {
        let (r, g, b) = (px[0] as f32, px[1] as f32, px[2] as f32);
        let y = 0.299 * r + 0.587 * g + 0.114 * b;
        o[0] = to_u8(r + (y - r) * amount);
        o[1] = to_u8(g + (y - g) * amount);
        o[2] = to_u8(b + (y - b) * amount);
    }
    out
}

/// Encodes as baseline JPEG at `quality` with the `image` crate and decodes it back.
fn jpeg_round_trip(img: &RgbImage, quality: u8) -> Result<Vec<u8>, CorruptError> {
    use image::codecs::jpeg::JpegEncoder;
    let codec = |e: image::ImageError| CorruptError::Codec(e.to_string());
    let (w, h) = (
        u32::try_from(img.width).map_err(|e| CorruptError::Codec(e.to_string()))?,
        u32::try_from(img.height).map_err(|e| CorruptError::Codec(e.to_string()))?,
    );
    let mut bytes = Vec::new();
    JpegEncoder::new_with_quality(&mut bytes, quality)
        .encode(&img.data, w, h, image::ExtendedColorType::Rgb8)
        .map_err(codec)?;
    let decoded = image::load_from_memory_with_format(&bytes, image::ImageFormat::Jpeg).map_err(codec)?.to_rgb8();
    if decoded.width() != w || decoded.height() != h {
        return Err(CorruptError::Codec(format!(
            "decoded {}x{} from a {}x{} image",
            decoded.width(),
            decoded.height(),
            w,
            h
        )));
    }
    Ok(decoded.into_raw())
}

/// Background of montage gaps: mid grey, neutral next to both bright and dark cells.
const MONTAGE_GAP_VALUE: u8 = 128;
/// Gap between montage cells, in pixels.
const MONTAGE_GAP: usize = 2;

/// A montage: one row per kind, columns = clean + levels 1..=5, each cell `scale`x upscaled
/// (nearest), 2 px mid-grey gaps between cells.
pub fn montage(img: &RgbImage, kinds: &[Corruption], seed: u64, scale: usize) -> Result<RgbImage, CorruptError> {
    if scale == 0 {
        return Err(CorruptError::BadScale);
    }
    if kinds.is_empty() {
        return Err(CorruptError::NoKinds);
    }
    check_image(img)?;
    let cols = 1 + usize::from(MAX_LEVEL);
    let (cw, ch) = (img.width * scale, img.height * scale);
    let width = cols * cw + (cols - 1) * MONTAGE_GAP;
    let height = kinds.len() * ch + (kinds.len() - 1) * MONTAGE_GAP;
    let mut out = RgbImage { width, height, data: vec![MONTAGE_GAP_VALUE; width * height * 3] };
    for (row, &kind) in kinds.iter().enumerate() {
        for col in 0..cols {
            let cell = if col == 0 { img.clone() } else { apply(img, kind, col as u8, seed)? };
            let (ox, oy) = (col * (cw + MONTAGE_GAP), row * (ch + MONTAGE_GAP));
            for y in 0..ch {
                for x in 0..cw {
                    out.set_pixel(ox + x, oy + y, cell.pixel(x / scale, y / scale));
                }
            }
        }
    }
    Ok(out)
}

/// The corruption seed of image `index` under run seed `seed`: distinct per image, so noise,
/// snow and dirt patterns differ between images but are reproducible.
pub fn image_seed(seed: u64, index: usize) -> u64 {
    SplitMix64::new(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64).next_u64()
}

/// Parses levels: `"1-5"`, `"3"`, `"1,3,5"`.
pub fn parse_levels(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("levels '{s}': use a range like 1-5 or a list like 1,3,5 (levels 1..={})", MAX_LEVEL);
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u8>().map_err(|_| bad())?, b.trim().parse::<u8>().map_err(|_| bad())?),
            None => {
                let v = part.parse::<u8>().map_err(|_| bad())?;
                (v, v)
            }
        };
        if a == 0 || b > MAX_LEVEL || a > b {
            return Err(bad());
        }
        out.extend(a..=b);
    }
    out.sort_unstable();
    out.dedup();
    if out.is_empty() {
        return Err(format!("levels '{s}' names no level"));
    }
    Ok(out)
}

/// Parses corruption kinds: `all`, `paper` (the paper's 8), `none`, or a comma list of names.
pub fn parse_corruptions(s: &str) -> Result<Vec<Corruption>, String> {
    match s.trim() {
        "all" => Ok(Corruption::ALL.to_vec()),
        "paper" => Ok(Corruption::PAPER.to_vec()),
        "none" | "" => Ok(Vec::new()),
        list => list.split(',').map(|k| k.parse::<Corruption>().map_err(|e| e.to_string())).collect(),
    }
}

/// One corrupted copy per image, cycling through every `(kind, level)` combination so that
/// each appears equally often; image `i` gets combination `i mod (kinds x levels)` and seed
/// `image_seed(seed, i)`.
pub fn round_robin_corruptions(
    images: &[RgbImage],
    kinds: &[Corruption],
    levels: &[u8],
    seed: u64,
) -> Result<Vec<RgbImage>, CorruptError> {
    let combos: Vec<(Corruption, u8)> = kinds.iter().flat_map(|&k| levels.iter().map(move |&l| (k, l))).collect();
    if combos.is_empty() {
        return Err(CorruptError::Invalid("no corruption kinds or levels to draw from".into()));
    }
    images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let (k, l) = combos[i % combos.len()];
            apply(img, k, l, image_seed(seed, i))
        })
        .collect()
}

#[cfg(test)]
mod tests;
