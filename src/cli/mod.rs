//! The `gradwatch` command line: one subcommand per capability.

mod baseline;
pub mod bench;
mod bench_alarms;
mod bench_detectors;
mod bench_presets;
mod bench_quality;
mod calibrate;
mod check_config;
mod common;
mod compile;
mod corrupt;
mod eval;
mod explain;
mod features;
mod init;
mod run;
mod score;

use clap::{Parser, Subcommand};

pub use crate::service::EXIT_CONFIG;

/// gradwatch: tells when a camera classifier looks at input it does not understand.
#[derive(Parser, Debug)]
#[command(name = "gradwatch", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Compile an ONNX classifier into its gradient-feature graph.
    Compile(compile::CompileArgs),
    /// Learn a stream's clean baseline offline from a recording (for the cusum policy).
    Baseline(baseline::BaselineArgs),
    /// Time the forward pass and the gradient graph on this machine.
    Bench(bench::BenchArgs),
    /// False alarms per hour and detection delays of the alert policies (docs/results/alarms.md).
    BenchAlarms(bench_alarms::BenchAlarmsArgs),
    /// AUROC of the feature subsets the presets choose from (docs/results/presets.md).
    BenchPresets(bench_presets::BenchPresetsArgs),
    /// Targets, inputs and ensemble sizes of the calibration's detector
    /// (docs/results/detector-ablation.md).
    BenchDetectors(bench_detectors::BenchDetectorsArgs),
    /// What the image-quality measures add to the camera-health detector
    /// (docs/results/quality.md).
    BenchQuality(bench_quality::BenchQualityArgs),
    /// Run the streaming daemon.
    Run(run::RunArgs),
    /// Check a daemon config, its model and calibration; exit 2 when something is wrong.
    CheckConfig(check_config::CheckConfigArgs),
    /// Apply a synthetic corruption to images, or render a types x levels preview montage.
    Corrupt(corrupt::CorruptArgs),
    /// Write the gradient features (and logits, penultimate activations) of images as .npy.
    Features(features::FeaturesArgs),
    /// Fit the unfamiliarity detector and its alarm threshold for a model file.
    Calibrate(calibrate::CalibrateArgs),
    /// Set up your own classifier: inspect, check preprocessing and accuracy, calibrate, write
    /// a calibration, a daemon config and a report (docs/guide/your-model.md).
    Init(init::InitArgs),
    /// Score images with a calibration: one JSON line per image.
    Score(score::ScoreArgs),
    /// Explain an image's score: heat map of the input gradient, per-layer chart vs familiar.
    Explain(explain::ExplainArgs),
    /// Run the paper's experiments and write the report (results.md, results.csv, figures).
    Eval(eval::EvalArgs),
}

/// Parses arguments, runs the subcommand, returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    // Every command logs through `log`; RUST_LOG overrides the default level.
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).try_init();
    // Constant-only nodes the compiler has no rule for are folded by ONNX Runtime.
    crate::runtime::register_constant_folding();
    let r = match cli.command {
        Command::Compile(a) => compile::run(a),
        Command::Baseline(a) => baseline::run(a),
        Command::Bench(a) => bench::run(a),
        Command::BenchAlarms(a) => bench_alarms::run(a),
        Command::BenchPresets(a) => bench_presets::run(a),
        Command::BenchDetectors(a) => bench_detectors::run(a),
        Command::BenchQuality(a) => bench_quality::run(a),
        Command::Run(a) => run::run(a),
        Command::CheckConfig(a) => check_config::run(a),
        Command::Corrupt(a) => corrupt::run(a),
        Command::Features(a) => features::run(a),
        Command::Calibrate(a) => calibrate::run(a),
        Command::Init(a) => init::run(a),
        Command::Score(a) => score::run(a),
        Command::Eval(a) => eval::run(a),
        Command::Explain(a) => explain::run(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
