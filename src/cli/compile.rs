//! `gradwatch compile`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::grad::{self, CompileOptions, ConvNorm, Loss, ParamSelection, Preset};
use crate::onnx;

/// Arguments of `gradwatch compile`.
#[derive(Args, Debug)]
pub struct CompileArgs {
    /// The classifier (.onnx).
    pub model: PathBuf,
    /// Where to write the gradient graph.
    #[arg(short, long, required_unless_present = "list")]
    pub output: Option<PathBuf>,
    /// Print the features, in order, and exit: one tab-separated line each with the column
    /// index, the parameter tensor's name, its kind (weight, bias, bn_scale, bn_shift,
    /// folded_bn_scale, folded_bn_shift, input_scale, input_shift) and, for Conv weights, the
    /// norm formulation chosen (im2col, ghost, pixel-gram). `--params all --list` shows every
    /// parameter tensor found.
    #[arg(long)]
    pub list: bool,
    /// Which parameter tensors count as features: `default` (every trainable tensor: weights,
    /// biases, BatchNormalization scale/shift, folded BatchNormalization Mul/Add), `all` (also a
    /// per-channel Mul/Add normalising the raw input), or a comma list applied in order of
    /// kinds and name globs (`*`, `?`) to add, and with a leading `-` to remove (a list starting
    /// with a removal starts from `default`). E.g. `weight`, `-folded_bn_*`, `layer4.*,fc.*`.
    #[arg(long, default_value = "default", allow_hyphen_values = true)]
    pub params: ParamSelection,
    /// Feature preset: `full` (every selected parameter tensor, the paper's features), `fast`
    /// (the last stage and the head only, plus forward-only activation statistics;
    /// `docs/results/presets.md`) or `head` (the head only, plus the same statistics). The preset
    /// is recorded in the graph's metadata.
    #[arg(long, default_value = "full")]
    pub preset: Preset,
    /// Keep only the parameters of the last N stages (spatial resolutions) and the head; 0: the
    /// head alone (overrides the preset's cut; for ablations).
    #[arg(long)]
    pub stages: Option<usize>,
    /// Append the forward-only activation statistics (mean square of every residual block's
    /// output, and of the last Conv activation of each stage without one) to the features
    /// (`fast` does this by itself).
    #[arg(long)]
    pub act_stats: bool,
    /// Loss: bce-logits (the paper), bce-softmax, odin.
    #[arg(long, default_value = "bce-logits")]
    pub loss: Loss,
    /// Confounding label as a 0/1 string, one digit per class (default: all ones).
    #[arg(long)]
    pub label: Option<String>,
    /// Also output `penultimate` (input of the last Gemm/MatMul).
    #[arg(long)]
    pub penultimate: bool,
    /// Also output `input_grad`.
    #[arg(long)]
    pub input_grad: bool,
    /// Conv norm formulation: auto (the cheapest per layer), im2col, ghost, pixel-gram.
    #[arg(long, default_value = "auto", value_parser = parse_conv_norm)]
    pub conv_norm: ConvNorm,
    /// For a model whose input height and width are symbolic: the image size to compile it
    /// for, WIDTHxHEIGHT (e.g. 224x224) or one number for a square.
    #[arg(long, value_parser = crate::model::parse_size)]
    pub size: Option<(usize, usize)>,
    /// Write the graph for TensorRT's ONNX parser (no MaxPool `Indices`, no `ScatterElements`):
    /// what `run` does when `[runtime] providers` includes tensorrt.
    #[arg(long)]
    pub tensorrt: bool,
}

fn parse_conv_norm(s: &str) -> Result<ConvNorm, String> {
    match s {
        "auto" => Ok(ConvNorm::Auto),
        "im2col" => Ok(ConvNorm::Im2col),
        "ghost" => Ok(ConvNorm::Ghost),
        "pixel-gram" => Ok(ConvNorm::PixelGram),
        _ => Err(format!("'{s}': expected auto, im2col, ghost or pixel-gram")),
    }
}

/// Parses a 0/1 label string.
pub fn parse_label(s: &str) -> Result<Vec<f32>> {
    s.chars()
        .filter(|c| !c.is_whitespace() && *c != ',')
        .map(|c| match c {
            '0' => Ok(0.0),
            '1' => Ok(1.0),
            _ => anyhow::bail!("label must be a string of 0 and 1, found '{c}'"),
        })
        .collect()
}

/// Runs `gradwatch compile`.
pub fn run(a: CompileArgs) -> Result<i32> {
    let model = onnx::load(&a.model).with_context(|| format!("reading {}", a.model.display()))?;
    let opts = CompileOptions {
        loss: a.loss,
        label: a.label.as_deref().map(parse_label).transpose()?,
        penultimate: a.penultimate,
        input_grad: a.input_grad,
        conv_norm: a.conv_norm,
        params: a.params,
        preset: a.preset,
        act_stats: a.act_stats,
        stages: a.stages,
        input_size: a.size,
        tensorrt: a.tensorrt,
    };
    let compiled = grad::compile(&model, &opts).with_context(|| format!("compiling {}", a.model.display()))?;
    if a.list {
        // Feature index, parameter tensor, its kind, and for Conv weights the norm formulation.
        let plans: std::collections::HashMap<&str, &str> =
            compiled.conv_plans.iter().map(|(w, p)| (w.as_str(), *p)).collect();
        for (i, (f, k)) in compiled.features.iter().zip(&compiled.feature_kinds).enumerate() {
            match plans.get(f.as_str()) {
                Some(p) => println!("{i}\t{f}\t{}\t{p}", k.name()),
                None => println!("{i}\t{f}\t{}", k.name()),
            }
        }
        let first = compiled.feature_kinds.len();
        for (i, f) in compiled.act_stats.iter().enumerate() {
            println!("{}\t{f}\tactivation_mean_square", first + i);
        }
        return Ok(0);
    }
    if let Some(out) = &a.output {
        onnx::save(&compiled.model, out).with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "compiled {} -> {}: preset {}, {} classes, {} features, {} nodes",
            a.model.display(),
            out.display(),
            compiled.preset,
            compiled.num_classes,
            compiled.features.len(),
            compiled.model.graph.as_ref().map(|g| g.node.len()).unwrap_or(0)
        );
    }
    Ok(0)
}
