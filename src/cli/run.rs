//! `gradwatch run`: the streaming daemon.

use std::path::PathBuf;

use clap::Args;

/// Arguments of `gradwatch run`.
#[derive(Args, Debug)]
pub struct RunArgs {
    /// The config file (see config/gradwatch.toml).
    #[arg(short, long)]
    pub config: PathBuf,
}

/// Sets up logging to stderr (level from RUST_LOG, default info).
pub(crate) fn init_logging() {
    let _ = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .try_init();
}

/// Runs the daemon; returns its exit code (0 ok, 1 failure, 2 bad config).
pub fn run(a: RunArgs) -> anyhow::Result<i32> {
    init_logging();
    Ok(crate::service::run(&a.config))
}
