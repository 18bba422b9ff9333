//! The `gradwatch` command line: one subcommand per capability.

mod bench;
mod check_config;
mod compile;
mod run;

use clap::{Parser, Subcommand};

/// Exit code for a bad configuration or bad arguments (systemd treats it as a failure to start).
pub const EXIT_CONFIG: i32 = 2;

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
    /// Time the forward pass and the gradient graph on this machine.
    Bench(bench::BenchArgs),
    /// Run the streaming daemon.
    Run(run::RunArgs),
    /// Check a daemon config, its model and calibration; exit 2 when something is wrong.
    CheckConfig(check_config::CheckConfigArgs),
}

/// Parses arguments, runs the subcommand, returns the process exit code.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Compile(a) => compile::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Run(a) => run::run(a),
        Command::CheckConfig(a) => check_config::run(a),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}
