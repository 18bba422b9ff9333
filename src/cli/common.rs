//! Helpers the subcommands share: reading an image input, runtime options, progress bars.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};

use crate::frame::RgbImage;
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
