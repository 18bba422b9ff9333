//! Config file text -> `config::Config::parse`, then `resolve_paths` and `validate` (what
//! `gradwatch check-config` and the daemon's start and SIGHUP reload do).
#![no_main]

use std::path::Path;

use gradwatch::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(mut config) = Config::parse(text, Path::new("/nonexistent/fuzz.toml")) else { return };
    config.resolve_paths(Path::new("/nonexistent"));
    let _ = config.validate();
});
