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

mod extra;
mod filter;
pub mod mix;
mod overlay;
mod parse;

use crate::rng::SplitMix64;

use crate::frame::RgbImage;
use filter::{to_u8, Buf};
pub use parse::{parse_corruptions, parse_levels};

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
    // The broader family (`docs/guide/degradations.md`); appended so the older types keep their
    // index, hence their seeds and pixels.
    /// Keystone: the sign seen off-axis (one side shrunk, at a seeded angle).
    Perspective,
    /// Zoom in about a seeded point: a misframed, partly cut-off sign.
    Zoom,
    /// Horizontal shear.
    Shear,
    /// Rotation about the centre.
    Rotate,
    /// Pixelation: area average shown as blocks.
    Pixelate,
    /// Down-scaling and bilinear up-scaling: a far-away or low-resolution view.
    Downscale,
    /// Interlacing: odd rows from a horizontally displaced field.
    Interlace,
    /// Saturation boost (over-saturated colour).
    Saturate,
    /// Hue rotation.
    HueShift,
    /// White-balance error: warm or cool cast.
    WhiteBalance,
    /// Contrast loss towards the mean grey.
    Contrast,
    /// Stickers and graffiti: solid rectangles over the sign.
    Sticker,
    /// Partial cover: a dark band over one side of the frame.
    PartialCover,
    /// Raindrops on the lens: small inverted, magnified, softened views.
    Raindrops,
    /// Linear motion blur at a seeded angle.
    MotionBlur,
    /// Glare: a bright bloom, a veil and a ghost.
    Glare,
    /// Vignetting: darkened corners.
    Vignetting,
    /// Lateral chromatic aberration: red and blue magnified differently.
    ChromaticAberration,
    /// Impulse (salt-and-pepper) noise.
    Impulse,
    /// Speckle: multiplicative noise.
    Speckle,
    /// Banding: fixed-pattern row noise.
    Banding,
    /// JPEG at a quality drawn per image around the level's quality.
    JpegRandom,
    /// Blocking: 8x8 blocks pulled towards their mean.
    Blocking,
    /// Rain streaks over a dimmer, flatter scene.
    Rain,
    /// Low sun: warm light flooding in from one side.
    LowSun,
}

/// A family of degradations: what physical cause they model. Leave-one-family-out evaluation
/// holds out every type of a family at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// Viewpoint and framing: perspective, zoom, shear, rotation.
    Geometric,
    /// Resolution loss: pixelation, down/up-scaling, interlacing.
    Resampling,
    /// Colour rendering: saturation, hue, white balance, contrast, decolouring.
    Colour,
    /// Something between the sign and the sensor: dirt, stickers, cover, raindrops.
    Occlusion,
    /// The lens: blurs, glare, vignetting, chromatic aberration.
    Optics,
    /// The sensor: additive, impulse and multiplicative noise, banding.
    Sensor,
    /// Lossy coding: JPEG, blocking.
    Compression,
    /// Weather: snow, haze, rain, low sun.
    Weather,
    /// Exposure: over- and under-exposure.
    Illumination,
}

impl Family {
    /// Every family.
    pub const ALL: [Family; 9] = [
        Family::Geometric,
        Family::Resampling,
        Family::Colour,
        Family::Occlusion,
        Family::Optics,
        Family::Sensor,
        Family::Compression,
        Family::Weather,
        Family::Illumination,
    ];

    /// The snake_case name (`"geometric"`).
    pub fn name(self) -> &'static str {
        match self {
            Family::Geometric => "geometric",
            Family::Resampling => "resampling",
            Family::Colour => "colour",
            Family::Occlusion => "occlusion",
            Family::Optics => "optics",
            Family::Sensor => "sensor",
            Family::Compression => "compression",
            Family::Weather => "weather",
            Family::Illumination => "illumination",
        }
    }

    /// The types of this family, in [`Corruption::ALL`] order.
    pub fn members(self) -> Vec<Corruption> {
        Corruption::ALL.into_iter().filter(|k| k.family() == self).collect()
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Corruption {
    /// Every type this module implements: the ten CURE-TSR-style types ([`Corruption::LEGACY`])
    /// and the broader family after them.
    pub const ALL: [Corruption; 35] = [
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
        Corruption::Perspective,
        Corruption::Zoom,
        Corruption::Shear,
        Corruption::Rotate,
        Corruption::Pixelate,
        Corruption::Downscale,
        Corruption::Interlace,
        Corruption::Saturate,
        Corruption::HueShift,
        Corruption::WhiteBalance,
        Corruption::Contrast,
        Corruption::Sticker,
        Corruption::PartialCover,
        Corruption::Raindrops,
        Corruption::MotionBlur,
        Corruption::Glare,
        Corruption::Vignetting,
        Corruption::ChromaticAberration,
        Corruption::Impulse,
        Corruption::Speckle,
        Corruption::Banding,
        Corruption::JpegRandom,
        Corruption::Blocking,
        Corruption::Rain,
        Corruption::LowSun,
    ];

    /// The ten CURE-TSR-style types of the first evaluation (`docs/results/results.md`); their pixels
    /// are frozen.
    pub const LEGACY: [Corruption; 10] = [
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
            Corruption::Perspective => "perspective",
            Corruption::Zoom => "zoom",
            Corruption::Shear => "shear",
            Corruption::Rotate => "rotate",
            Corruption::Pixelate => "pixelate",
            Corruption::Downscale => "downscale",
            Corruption::Interlace => "interlace",
            Corruption::Saturate => "saturate",
            Corruption::HueShift => "hue_shift",
            Corruption::WhiteBalance => "white_balance",
            Corruption::Contrast => "contrast",
            Corruption::Sticker => "sticker",
            Corruption::PartialCover => "partial_cover",
            Corruption::Raindrops => "raindrops",
            Corruption::MotionBlur => "motion_blur",
            Corruption::Glare => "glare",
            Corruption::Vignetting => "vignetting",
            Corruption::ChromaticAberration => "chromatic_aberration",
            Corruption::Impulse => "impulse",
            Corruption::Speckle => "speckle",
            Corruption::Banding => "banding",
            Corruption::JpegRandom => "jpeg_random",
            Corruption::Blocking => "blocking",
            Corruption::Rain => "rain",
            Corruption::LowSun => "low_sun",
        }
    }

    /// The family this type belongs to.
    pub fn family(self) -> Family {
        use Corruption as C;
        match self {
            C::Perspective | C::Zoom | C::Shear | C::Rotate => Family::Geometric,
            C::Pixelate | C::Downscale | C::Interlace => Family::Resampling,
            C::Decolor | C::Saturate | C::HueShift | C::WhiteBalance | C::Contrast => Family::Colour,
            C::DirtyLens | C::Sticker | C::PartialCover | C::Raindrops => Family::Occlusion,
            C::LensBlur | C::GaussianBlur | C::MotionBlur | C::Glare | C::Vignetting | C::ChromaticAberration => {
                Family::Optics
            }
            C::Noise | C::Impulse | C::Speckle | C::Banding => Family::Sensor,
            C::CodecError | C::JpegRandom | C::Blocking => Family::Compression,
            C::Snow | C::Haze | C::Rain | C::LowSun => Family::Weather,
            C::Exposure | C::Darkening => Family::Illumination,
        }
    }

    /// The strengths behind levels 1-5 of the broader types (`None` for [`Corruption::LEGACY`],
    /// whose levels are several parameters each). What a strength is, per type: see
    /// [`apply_strength`]. Chosen so that level 5 roughly halves the reference classifier's
    /// accuracy and level 1 barely moves it (`docs/guide/degradations.md`).
    pub fn strengths(self) -> Option<[f32; 5]> {
        use Corruption as C;
        Some(match self {
            C::Perspective => [0.25, 0.6, 0.75, 0.88, 0.95],
            C::Zoom => [1.1, 1.33, 1.4, 1.5, 1.6],
            C::Shear => [0.15, 0.44, 0.62, 0.78, 0.99],
            C::Rotate => [8.0, 19.0, 23.5, 28.0, 32.5],
            C::Pixelate => [1.5, 1.95, 2.4, 3.05, 3.9],
            C::Downscale => [1.6, 1.9, 2.45, 3.05, 4.1],
            C::Interlace => [1.0, 3.0, 4.1, 5.5, 10.5],
            C::Saturate => [0.8, 2.1, 3.6, 5.7, 9.9],
            C::HueShift => [20.0, 58.0, 73.5, 89.0, 111.0],
            C::WhiteBalance => [0.1, 0.27, 0.41, 0.52, 0.645],
            C::Contrast => [0.4, 0.72, 0.82, 0.87, 0.908],
            C::Sticker => [0.25, 0.38, 0.68, 1.16, 1.6],
            C::PartialCover => [0.15, 0.3, 0.346, 0.404, 0.46],
            C::Raindrops => [1.0, 2.5, 6.5, 11.5, 21.5],
            C::MotionBlur => [1.5, 3.8, 4.75, 6.45, 8.6],
            C::Glare => [0.1, 0.22, 0.41, 0.645, 0.85],
            C::Vignetting => [0.5, 2.9, 4.0, 5.5, 7.5],
            C::ChromaticAberration => [0.08, 0.186, 0.24, 0.29, 0.36],
            C::Impulse => [0.003, 0.01, 0.029, 0.059, 0.123],
            C::Speckle => [0.08, 0.19, 0.33, 0.47, 0.68],
            C::Banding => [1.0, 3.0, 7.0, 13.5, 28.0],
            C::JpegRandom => [75.0, 36.0, 22.0, 12.0, 7.0],
            C::Blocking => [0.2, 0.43, 0.59, 0.71, 0.8],
            C::Rain => [1.5, 4.5, 11.0, 23.0, 57.0],
            C::LowSun => [0.3, 0.46, 0.69, 0.92, 1.14],
            _ => return None,
        })
    }

    /// Whether the output depends on the seed (the others are pure functions of image and level).
    pub fn uses_seed(self) -> bool {
        use Corruption as C;
        !matches!(
            self,
            C::LensBlur
                | C::GaussianBlur
                | C::Exposure
                | C::Decolor
                | C::Darkening
                | C::CodecError
                | C::Pixelate
                | C::Downscale
                | C::Saturate
                | C::Contrast
                | C::Vignetting
                | C::ChromaticAberration
                | C::Blocking
        )
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
    let li = usize::from(level - 1);
    if let Some(table) = kind.strengths() {
        return apply_strength(img, kind, table[li], seed);
    }
    let (w, h) = (img.width, img.height);
    check_image(img)?;
    if w == 0 || h == 0 {
        return Ok(img.clone());
    }
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
        // The broader types returned through `apply_strength` above.
        other => return Err(CorruptError::Invalid(format!("{other} has no level table"))),
    };
    Ok(RgbImage { width: w, height: h, data })
}

/// `sticker`: stickers per 32x32 area (their size is the strength).
const STICKERS: f32 = 3.0;

/// Applies a type of the broader family at the continuous strength `p` (its levels are the
/// entries of [`Corruption::strengths`]; this is the knob they were chosen on). What `p` is:
///
/// | type | `p` |
/// |---|---|
/// | perspective | fraction by which the far side shrinks |
/// | zoom | magnification (>= 1) |
/// | shear | horizontal shift per row (pixels per pixel) |
/// | rotate | angle, degrees |
/// | pixelate, downscale | reduction factor (image pixels per cell, at 32x32) |
/// | interlace | field displacement, pixels at 32x32 |
/// | saturate | extra saturation (`1 + p` times the chroma) |
/// | hue_shift | hue rotation, degrees |
/// | white_balance | red/blue gain offset |
/// | contrast | fraction of contrast removed |
/// | sticker | size factor of the three stickers per 32x32 area |
/// | raindrops, rain | elements per 32x32 area |
/// | partial_cover | covered fraction of the frame |
/// | motion_blur | streak length, pixels at 32x32 |
/// | glare, low_sun | peak blend weight of the light |
/// | vignetting | corner darkening |
/// | chromatic_aberration | relative magnification difference of red and blue |
/// | impulse | fraction of values hit |
/// | speckle | standard deviation of the multiplicative noise |
/// | banding | row-offset amplitude, 8-bit steps |
/// | jpeg_random | centre of the JPEG quality band (`0.6 p ..= 1.4 p`) |
/// | blocking | pull towards the 8x8 block mean |
///
/// Errors for the [`Corruption::LEGACY`] types (their levels are several parameters each).
pub fn apply_strength(img: &RgbImage, kind: Corruption, p: f32, seed: u64) -> Result<RgbImage, CorruptError> {
    use Corruption as C;
    if kind.strengths().is_none() {
        return Err(CorruptError::Invalid(format!(
            "{kind} has levels, not a continuous strength; use corrupt::apply with a level"
        )));
    }
    if !p.is_finite() {
        return Err(CorruptError::Invalid(format!("{kind}: strength {p} is not a finite number")));
    }
    let (w, h) = (img.width, img.height);
    check_image(img)?;
    if w == 0 || h == 0 {
        return Ok(img.clone());
    }
    let seed = seed ^ (kind.index() + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    let s = w.min(h) as f32 / 32.0;
    let area = (w * h) as f32 / (s * s * 1024.0);
    let count = |per: f32| (per * area).round().max(0.0) as usize;
    let buf = || Buf::from_u8(w, h, &img.data);
    let data = match kind {
        C::Perspective => extra::perspective(&buf(), p, seed).to_u8(),
        C::Zoom => extra::zoom(&buf(), p, seed).to_u8(),
        C::Shear => extra::shear(&buf(), p, seed).to_u8(),
        C::Rotate => extra::rotate(&buf(), p, seed).to_u8(),
        C::Pixelate => extra::pixelate(&buf(), p, s).to_u8(),
        C::Downscale => extra::downscale(&buf(), p * s).to_u8(),
        C::Interlace => extra::interlace(&buf(), p, s, seed).to_u8(),
        C::Saturate => extra::saturate(&img.data, p),
        C::HueShift => extra::hue_shift(&img.data, p, seed),
        C::WhiteBalance => extra::white_balance(&img.data, p, seed),
        C::Contrast => extra::contrast(&img.data, p.clamp(0.0, 1.0)),
        C::Sticker => {
            let mut b = buf();
            extra::stickers(&mut b, count(STICKERS), p, s, seed);
            b.to_u8()
        }
        C::PartialCover => {
            let mut b = buf();
            extra::partial_cover(&mut b, p, s, seed);
            b.to_u8()
        }
        C::Raindrops => {
            let mut b = buf();
            extra::raindrops(&mut b, count(p), s, seed);
            b.to_u8()
        }
        C::MotionBlur => extra::motion_blur(&buf(), p, s, seed).to_u8(),
        C::Glare => {
            let mut b = buf();
            extra::glare(&mut b, p, s, seed);
            b.to_u8()
        }
        C::Vignetting => {
            let mut b = buf();
            extra::vignetting(&mut b, p);
            b.to_u8()
        }
        C::ChromaticAberration => extra::chromatic_aberration(&buf(), p).to_u8(),
        C::Impulse => extra::impulse(&img.data, p, seed),
        C::Speckle => extra::speckle(&img.data, p, seed),
        C::Banding => {
            let mut b = buf();
            extra::banding(&mut b, p, s, seed);
            b.to_u8()
        }
        C::JpegRandom => jpeg_round_trip(img, extra::random_quality(p, seed))?,
        C::Blocking => extra::blocking(&buf(), p.clamp(0.0, 1.0), s).to_u8(),
        C::Rain => {
            let mut b = buf();
            extra::rain(&mut b, count(p), s, seed);
            b.to_u8()
        }
        C::LowSun => {
            let mut b = buf();
            extra::low_sun(&mut b, p, seed);
            b.to_u8()
        }
        _ => return Err(CorruptError::Invalid(format!("{kind} has no strength"))),
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
