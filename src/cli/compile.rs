//! `gradwatch compile`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::grad::{self, CompileOptions, ConvNorm, Loss};
use crate::onnx;

/// Arguments of `gradwatch compile`.
#[derive(Args, Debug)]
pub struct CompileArgs {
    /// The classifier (.onnx).
    pub model: PathBuf,
    /// Where to write the gradient graph.
    #[arg(short, long, required_unless_present = "list")]
    pub output: Option<PathBuf>,
    /// Print the feature (parameter tensor) names, in order, and exit.
    #[arg(long)]
    pub list: bool,
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
    };
    let compiled = grad::compile(&model, &opts).with_context(|| format!("compiling {}", a.model.display()))?;
    if a.list {
        // Feature index, parameter tensor, and for Conv weights the norm formulation chosen.
        let plans: std::collections::HashMap<&str, &str> =
            compiled.conv_plans.iter().map(|(w, p)| (w.as_str(), *p)).collect();
        for (i, f) in compiled.features.iter().enumerate() {
            match plans.get(f.as_str()) {
                Some(p) => println!("{i}\t{f}\t{p}"),
                None => println!("{i}\t{f}"),
            }
        }
        return Ok(0);
    }
    if let Some(out) = &a.output {
        onnx::save(&compiled.model, out).with_context(|| format!("writing {}", out.display()))?;
        eprintln!(
            "compiled {} -> {}: {} classes, {} gradient features, {} nodes",
            a.model.display(),
            out.display(),
            compiled.num_classes,
            compiled.features.len(),
            compiled.model.graph.as_ref().map(|g| g.node.len()).unwrap_or(0)
        );
    }
    Ok(0)
}
