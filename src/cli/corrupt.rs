//! `gradwatch corrupt`: apply a synthetic corruption to images, or render a preview montage.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::corrupt::{self, Corruption};
use crate::corrupt::{image_seed, parse_corruptions};
use crate::data;

/// Arguments of `gradwatch corrupt`.
#[derive(Args, Debug)]
pub struct CorruptArgs {
    /// Images: a .npy stack, an image folder or one image file (with --preview: one image).
    pub input: PathBuf,
    /// Output: a .npy file for .npy input, a folder for a folder, an image file for a file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Corruption type (noise, lens_blur, gaussian_blur, dirty_lens, exposure, snow, haze,
    /// decolor, darkening, codec_error).
    #[arg(long, required_unless_present = "preview")]
    pub kind: Option<Corruption>,
    /// Level 1 (barely visible) to 5 (severe).
    #[arg(long, default_value_t = 3)]
    pub level: u8,
    /// Seed of the random patterns; image i uses a seed derived from it and i.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write a montage of types x levels (clean + 1..5) of one image instead.
    #[arg(long)]
    pub preview: bool,
    /// Types in the montage: all, paper or a comma list.
    #[arg(long, default_value = "all")]
    pub kinds: String,
    /// Montage cell upscaling factor.
    #[arg(long, default_value_t = 4)]
    pub scale: usize,
}

fn is_npy(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

/// Runs `gradwatch corrupt`.
pub fn run(a: CorruptArgs) -> Result<i32> {
    if a.preview {
        let img = data::load_image(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
        let kinds = parse_corruptions(&a.kinds).map_err(anyhow::Error::msg)?;
        let m = corrupt::montage(&img, &kinds, a.seed, a.scale)?;
        data::save_png(&a.output, &m)?;
        eprintln!("montage of {} types x (clean + 5 levels) -> {}", kinds.len(), a.output.display());
        return Ok(0);
    }
    let kind = a.kind.ok_or_else(|| anyhow::anyhow!("--kind is required (or use --preview)"))?;
    let apply = |i: usize, img: &crate::frame::RgbImage| corrupt::apply(img, kind, a.level, image_seed(a.seed, i));
    if is_npy(&a.input) {
        let images = data::load_npy_images(&a.input)?;
        let out = images.iter().enumerate().map(|(i, img)| apply(i, img)).collect::<Result<Vec<_>, _>>()?;
        data::save_npy_images(&a.output, &out)?;
        eprintln!("{} images, {kind} level {} -> {}", out.len(), a.level, a.output.display());
    } else if a.input.is_dir() {
        std::fs::create_dir_all(&a.output).with_context(|| format!("creating {}", a.output.display()))?;
        let images = data::load_images(&a.input)?;
        for (i, (name, img)) in images.iter().enumerate() {
            // PNG out whatever came in: a lossy re-encode would add its own corruption.
            let stem = Path::new(name).file_stem().map_or_else(|| name.clone(), |s| s.to_string_lossy().into_owned());
            data::save_png(&a.output.join(format!("{stem}.png")), &apply(i, img)?)?;
        }
        eprintln!("{} images, {kind} level {} -> {}/", images.len(), a.level, a.output.display());
    } else {
        let img = data::load_image(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
        data::save_png(&a.output, &apply(0, &img)?)?;
    }
    Ok(0)
}
