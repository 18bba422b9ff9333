//! Helpers the subcommands share: reading an image input, runtime options, progress bars,
//! preprocessing overrides.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};

use crate::frame::RgbImage;
use crate::model::{parse_triple, ColorOrder, Layout, PreprocessOverrides, IMAGENET_MEAN, IMAGENET_STD};
use crate::runtime::RuntimeOptions;

/// Images of an input path with their names; `npy` says whether it was a `.npy` stack.
pub struct Input {
    /// File names (folders, files) or indices (`.npy`).
    pub names: Vec<String>,
    /// The images.
    pub images: Vec<RgbImage>,
    /// Whether the input was a `.npy` stack (names are indices).
    pub npy: bool,
}

/// Loads `path` (npy, folder or image), keeping the first `limit` images.
pub fn load_input(path: &Path, limit: Option<usize>) -> Result<Input> {
    let npy = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    let mut all = crate::data::load_images(path).with_context(|| format!("reading {}", path.display()))?;
    if let Some(l) = limit {
        all.truncate(l);
    }
    if all.is_empty() {
        anyhow::bail!("{}: no images found (expected a .npy stack, an image folder or an image file)", path.display());
    }
    let (names, images) = all.into_iter().unzip();
    Ok(Input { names, images, npy })
}

/// Runtime options with `threads`.
pub fn runtime(threads: usize) -> RuntimeOptions {
    RuntimeOptions { threads, ..Default::default() }
}

/// Whether to draw progress bars (stderr is a terminal).
pub fn show_progress() -> bool {
    std::io::stderr().is_terminal()
}

/// Preprocessing overrides (`calibrate`, `init`): how frames become the model's input when its
/// ONNX metadata does not say (or says wrong). The calibration stores the result, so every
/// command and the daemon use it.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PreprocessArgs {
    /// Input layout: nchw ([N,3,H,W]) or nhwc ([N,H,W,3]). Default: the model's metadata, else
    /// the input's shape.
    #[arg(long, value_parser = |s: &str| s.parse::<Layout>())]
    pub layout: Option<Layout>,
    /// Input size WIDTHxHEIGHT; must be the model's (frames are resized to it). Default: the
    /// model's input.
    #[arg(long, value_parser = crate::model::parse_size)]
    pub size: Option<(usize, usize)>,
    /// Channel order the model was trained on: rgb or bgr (OpenCV). Default: the metadata's, else rgb.
    #[arg(long, value_parser = |s: &str| s.parse::<ColorOrder>())]
    pub color_order: Option<ColorOrder>,
    /// Multiplier from 0-255 pixels to the model's numbers, e.g. 1/255 or 1. Default: the
    /// metadata's, else 1/255.
    #[arg(long, value_parser = crate::model::parse_scale)]
    pub scale: Option<f32>,
    /// Per-channel mean subtracted after scaling: imagenet, one number or R,G,B. Default: the
    /// metadata's, else 0.
    #[arg(long, value_parser = |s: &str| parse_triple(s, IMAGENET_MEAN))]
    pub mean: Option<[f32; 3]>,
    /// Per-channel std divided by after the mean: imagenet, one number or R,G,B. Default: the
    /// metadata's, else 1.
    #[arg(long, value_parser = |s: &str| parse_triple(s, IMAGENET_STD))]
    pub std: Option<[f32; 3]>,
}

impl PreprocessArgs {
    /// The overrides given.
    pub fn overrides(&self) -> PreprocessOverrides {
        PreprocessOverrides {
            layout: self.layout,
            size: self.size,
            color_order: self.color_order,
            scale: self.scale,
            mean: self.mean,
            std: self.std,
        }
    }
}
