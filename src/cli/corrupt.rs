//! `gradwatch corrupt`: apply a synthetic corruption to images, render a preview montage, or
//! measure what the corruptions do to a classifier's accuracy (`--accuracy`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::corrupt::{self, Corruption};
use crate::corrupt::{image_seed, parse_corruptions};
use crate::data;

/// Arguments of `gradwatch corrupt`.
#[derive(Args, Debug)]
pub struct CorruptArgs {
    /// Images: a .npy stack, an image folder or one image file (with --preview: one image;
    /// with --accuracy: a labelled .npy stack such as gtsrb/test_images.npy).
    pub input: PathBuf,
    /// Output: a .npy file for .npy input, a folder for a folder, an image file for a file;
    /// with --accuracy: a CSV of every cell (optional; the markdown table goes to stdout).
    #[arg(short, long, required_unless_present = "accuracy")]
    pub output: Option<PathBuf>,
    /// Corruption type (`gradwatch corrupt --preview` shows them; docs/guide/degradations.md lists
    /// them with their families).
    #[arg(long, required_unless_present_any = ["preview", "accuracy"])]
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
    /// Types in the montage or the accuracy table: all, legacy, broad, paper, or a comma list
    /// of types and families.
    #[arg(long, default_value = "all")]
    pub kinds: String,
    /// Montage cell upscaling factor.
    #[arg(long, default_value_t = 4)]
    pub scale: usize,
    /// Measure the classifier's top-1 accuracy on INPUT, clean and under every type of --kinds
    /// at every level of --levels (forward pass only).
    #[arg(long, requires = "model")]
    pub accuracy: bool,
    /// The classifier (.onnx), for --accuracy.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Labels of INPUT (default: INPUT with `images` replaced by `labels` in its file name).
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Levels for --accuracy: a range like 1-5 or a list like 1,3,5.
    #[arg(long, default_value = "1-5")]
    pub levels: String,
    /// Strengths for --accuracy instead of levels (broader types only; the knob their levels
    /// were chosen on, see corrupt::apply_strength), comma list.
    #[arg(long, value_delimiter = ',')]
    pub strengths: Vec<f32>,
    /// Images for --accuracy: a seeded subsample of this many (0 = all).
    #[arg(long, default_value_t = 500)]
    pub limit: usize,
    /// Images per graph run (--accuracy).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
}

fn is_npy(p: &Path) -> bool {
    p.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("npy"))
}

/// `--accuracy`: the accuracy table on stdout, the CSV to `--output`.
fn run_accuracy(a: &CorruptArgs) -> Result<i32> {
    use crate::lab::eval::accuracy::{self, AccuracyPlan, Classifier};
    let model = a.model.as_ref().ok_or_else(|| anyhow::anyhow!("--accuracy needs --model"))?;
    let labels_path = match &a.labels {
        Some(p) => p.clone(),
        None => {
            let name = a.input.file_name().map(|n| n.to_string_lossy().replace("images", "labels")).unwrap_or_default();
            a.input.with_file_name(name)
        }
    };
    let all = data::load_npy_images(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
    let all_labels = data::load_npy_labels(&labels_path)
        .with_context(|| format!("reading labels {} (set --labels)", labels_path.display()))?;
    if all_labels.len() != all.len() {
        anyhow::bail!("{} images but {} labels in {}", all.len(), all_labels.len(), labels_path.display());
    }
    let index = if a.limit == 0 {
        (0..all.len()).collect()
    } else {
        crate::detector::split::subsample(all.len(), a.limit, a.seed)
    };
    let images: Vec<_> = index.iter().map(|&i| all[i].clone()).collect();
    drop(all);
    let labels: Vec<usize> = index.iter().map(|&i| all_labels[i].max(0) as usize).collect();
    let plan = AccuracyPlan {
        kinds: parse_corruptions(&a.kinds).map_err(anyhow::Error::msg)?,
        levels: corrupt::parse_levels(&a.levels).map_err(anyhow::Error::msg)?,
        strengths: a.strengths.clone(),
        seed: a.seed,
        batch: a.batch,
    };
    let mut clf = Classifier::load(model, &super::common::runtime(a.threads))?;
    let t0 = std::time::Instant::now();
    let cells = accuracy::measure(&mut clf, &images, &labels, &index, &plan, |c| {
        let what = c.kind.map_or("clean".to_string(), |k| match c.strength {
            Some(p) => format!("{k} p={p}"),
            None => format!("{k} L{}", c.level),
        });
        eprintln!("{what:<32} {:6.2} % ({}/{})", 100.0 * c.accuracy(), c.correct, c.n);
    })?;
    eprintln!("{} cells of {} images in {:.1} s", cells.len(), images.len(), t0.elapsed().as_secs_f64());
    print!("{}", accuracy::markdown_table(&cells));
    if let Some(out) = &a.output {
        std::fs::write(out, accuracy::csv(&cells)).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("-> {}", out.display());
    }
    Ok(0)
}

/// Runs `gradwatch corrupt`.
pub fn run(a: CorruptArgs) -> Result<i32> {
    if a.accuracy {
        return run_accuracy(&a);
    }
    let output = a.output.clone().ok_or_else(|| anyhow::anyhow!("--output is required"))?;
    if a.preview {
        let img = data::load_image(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
        let kinds = parse_corruptions(&a.kinds).map_err(anyhow::Error::msg)?;
        let m = corrupt::montage(&img, &kinds, a.seed, a.scale)?;
        data::save_png(&output, &m)?;
        eprintln!("montage of {} types x (clean + 5 levels) -> {}", kinds.len(), output.display());
        return Ok(0);
    }
    let kind = a.kind.ok_or_else(|| anyhow::anyhow!("--kind is required (or use --preview)"))?;
    let apply = |i: usize, img: &crate::frame::RgbImage| corrupt::apply(img, kind, a.level, image_seed(a.seed, i));
    if is_npy(&a.input) {
        let images = data::load_npy_images(&a.input)?;
        let out = images.iter().enumerate().map(|(i, img)| apply(i, img)).collect::<Result<Vec<_>, _>>()?;
        data::save_npy_images(&output, &out)?;
        eprintln!("{} images, {kind} level {} -> {}", out.len(), a.level, output.display());
    } else if a.input.is_dir() {
        std::fs::create_dir_all(&output).with_context(|| format!("creating {}", output.display()))?;
        let images = data::load_images(&a.input)?;
        for (i, (name, img)) in images.iter().enumerate() {
            // PNG out whatever came in: a lossy re-encode would add its own corruption.
            let stem = Path::new(name).file_stem().map_or_else(|| name.clone(), |s| s.to_string_lossy().into_owned());
            data::save_png(&output.join(format!("{stem}.png")), &apply(i, img)?)?;
        }
        eprintln!("{} images, {kind} level {} -> {}/", images.len(), a.level, output.display());
    } else {
        let img = data::load_image(&a.input).with_context(|| format!("reading {}", a.input.display()))?;
        data::save_png(&output, &apply(0, &img)?)?;
    }
    Ok(0)
}
