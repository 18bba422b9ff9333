//! The floor every other module stands on: an injected clock ([`clock`]), wall-clock time and
//! event ids ([`time`]), path resolution and small state files ([`path`]), and the statistics
//! handles sinks fill and the metrics read ([`stats`]). Nothing here imports another gradwatch
//! module, so anything may import it without making a cycle (`tests/it/shape.rs` checks the
//! layering).

pub mod clock;
pub mod path;
pub mod stats;
pub mod time;
