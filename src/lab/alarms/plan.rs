//! The plan: which tracks (image, length, corruption, level) the benchmark draws, and how a
//! track's frames are rendered (slow zoom, sensor noise, the corruption).

use anyhow::{Context, Result};

use crate::corrupt::Corruption;
use crate::frame::RgbImage;
use crate::rng::SplitMix64;
use crate::source::replay::corrupt_at;

use super::*;

/// One scored frame of the cache (in track order).
#[derive(Clone, Debug)]
pub struct CachedFrame {
    /// Score.
    pub(super) score: f32,
    /// Whether the classifier's top class was the label.
    pub(super) correct: bool,
    /// Its image-quality measures ([`crate::quality::measure`] of the frame the classifier
    /// saw), when the cache holds them.
    pub(super) quality: Option<[f32; crate::quality::Measure::ALL.len()]>,
}

/// A track of the cache: one sign, under one condition.
#[derive(Clone, Debug)]
pub struct CachedTrack {
    /// `learn`, `clean`, `onset` or `ramp`.
    pub(super) group: String,
    /// Corruption name, `none` for clean.
    pub(super) kind: String,
    /// Level (0 clean).
    pub(super) level: f32,
    /// Frames in order.
    pub(super) frames: Vec<CachedFrame>,
}

/// What to render: one track.
#[derive(Debug)]
pub(super) struct TrackSpec {
    pub(super) group: &'static str,
    pub(super) kind: Option<Corruption>,
    pub(super) level: f32,
    pub(super) image: usize,
    pub(super) len: usize,
}

/// What [`plan`] draws: the tracks to score, then the images of the accuracy table.
pub(super) struct Plan {
    pub(super) tracks: Vec<TrackSpec>,
    /// Images the classifier's accuracy per (corruption, level) is measured on (one frame
    /// each), drawn after every track's so that the tracks stay the images they were.
    pub(super) accuracy: Vec<usize>,
}

pub(super) fn len_of(image: usize) -> usize {
    10 + SplitMix64::new(SEED ^ (image as u64).wrapping_mul(0x9E37_79B9)).below(21)
}

pub(super) fn plan(rows: std::ops::Range<usize>) -> Result<Plan> {
    let mut perm: Vec<usize> = rows.collect();
    SplitMix64::new(SEED).shuffle(&mut perm);
    let mut next = perm.into_iter();
    let mut take = || next.next().context("not enough test images for the benchmark");
    let mut out = Vec::new();
    for (group, n) in [("learn", LEARN_TRACKS), ("clean", CLEAN_TRACKS)] {
        for _ in 0..n {
            let image = take()?;
            out.push(TrackSpec { group, kind: None, level: 0.0, image, len: len_of(image) });
        }
    }
    for kind in Corruption::ALL {
        for level in ONSET_LEVELS {
            for _ in 0..ONSET_TRACKS_FIRST {
                let image = take()?;
                out.push(TrackSpec {
                    group: "onset",
                    kind: Some(kind),
                    level: f32::from(level),
                    image,
                    len: len_of(image),
                });
            }
        }
        for level in RAMP_LEVELS {
            for _ in 0..RAMP_TRACKS_FIRST {
                let image = take()?;
                out.push(TrackSpec { group: "ramp", kind: Some(kind), level, image, len: len_of(image) });
            }
        }
    }
    for kind in Corruption::ALL {
        for level in RAMP_LEVELS {
            for _ in RAMP_TRACKS_FIRST..RAMP_TRACKS {
                let image = take()?;
                out.push(TrackSpec { group: "ramp", kind: Some(kind), level, image, len: len_of(image) });
            }
        }
    }
    let accuracy = (0..ACCURACY_IMAGES).map(|_| take()).collect::<Result<_>>()?;
    for kind in Corruption::ALL {
        for level in ONSET_LEVELS {
            for _ in ONSET_TRACKS_FIRST..ONSET_TRACKS {
                let image = take()?;
                let level = f32::from(level);
                out.push(TrackSpec { group: "onset", kind: Some(kind), level, image, len: len_of(image) });
            }
        }
    }
    Ok(Plan { tracks: out, accuracy })
}

/// Frame `j` of a track of `len` over `img`: a centred crop shrinking to 1/(1+ZOOM), resampled
/// bilinearly to the image size.
pub(super) fn zoom_frame(img: &RgbImage, j: usize, len: usize) -> RgbImage {
    let z = 1.0 + ZOOM * j as f32 / (len.max(2) - 1) as f32;
    let (w, h) = (img.width, img.height);
    let mut out = RgbImage::zeros(w, h);
    let (cx, cy) = (w as f32 / 2.0, h as f32 / 2.0);
    for y in 0..h {
        for x in 0..w {
            let sx = (cx + (x as f32 + 0.5 - cx) / z - 0.5).clamp(0.0, (w - 1) as f32);
            let sy = (cy + (y as f32 + 0.5 - cy) / z - 0.5).clamp(0.0, (h - 1) as f32);
            let (x0, y0) = (sx.floor() as usize, sy.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(w - 1), (y0 + 1).min(h - 1));
            let (fx, fy) = (sx - x0 as f32, sy - y0 as f32);
            let (a, b, c, d) = (img.pixel(x0, y0), img.pixel(x1, y0), img.pixel(x0, y1), img.pixel(x1, y1));
            let mut p = [0u8; 3];
            for k in 0..3 {
                let top = f32::from(a[k]) * (1.0 - fx) + f32::from(b[k]) * fx;
                let bot = f32::from(c[k]) * (1.0 - fx) + f32::from(d[k]) * fx;
                p[k] = (top * (1.0 - fy) + bot * fy).round().clamp(0.0, 255.0) as u8;
            }
            out.set_pixel(x, y, p);
        }
    }
    out
}

pub(super) fn sensor_noise(img: &mut RgbImage, seed: u64) {
    let mut rng = SplitMix64::new(seed);
    for v in img.data.iter_mut() {
        *v = (f32::from(*v) + SENSOR_SIGMA * rng.normalish()).round().clamp(0.0, 255.0) as u8;
    }
}

/// Frame `j` of one track: zoom, then the lens/scene corruption (one pattern seed for the
/// whole track), then per-frame sensor noise.
pub(super) fn render_frame(spec: &TrackSpec, img: &RgbImage, j: usize) -> Result<RgbImage> {
    let lens_seed = SEED ^ (spec.image as u64) << 8 ^ spec.kind.map_or(0, |k| k.name().len() as u64);
    let z = zoom_frame(img, j, spec.len);
    let mut f = match spec.kind {
        None => z,
        Some(k) => corrupt_at(&z, k, spec.level, lens_seed)?,
    };
    sensor_noise(&mut f, SEED.wrapping_mul(31) ^ ((spec.image as u64) << 16) ^ j as u64);
    Ok(f)
}

/// Renders the frames of one track.
pub(super) fn render(spec: &TrackSpec, img: &RgbImage) -> Result<Vec<RgbImage>> {
    (0..spec.len).map(|j| render_frame(spec, img, j)).collect()
}
