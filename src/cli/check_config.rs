//! `gradwatch check-config`: validates a config file, its model and calibration (systemd's
//! ExecStartPre), without opening cameras or sinks.

use std::path::PathBuf;

use clap::Args;

/// Arguments of `gradwatch check-config`.
#[derive(Args, Debug)]
pub struct CheckConfigArgs {
    /// The config file.
    pub config: PathBuf,
}

/// Prints "ok: N streams, M sinks" and returns 0, or prints the error and returns 2.
pub fn run(a: CheckConfigArgs) -> anyhow::Result<i32> {
    super::run::init_logging();
    match crate::service::check_config(&a.config) {
        Ok(msg) => {
            println!("{msg}");
            Ok(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(super::EXIT_CONFIG)
        }
    }
}
