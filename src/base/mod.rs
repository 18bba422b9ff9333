//! The floor every other module stands on: an injected clock ([`clock`]), wall-clock time and event
//! ids ([`time`]), and (added below) path resolution and stats handles. Nothing here imports another
//! gradwatch module, so anything may import it without making a cycle
//! (`tests/it/shape.rs` checks the layering).

pub mod clock;
pub mod path;
pub mod time;
