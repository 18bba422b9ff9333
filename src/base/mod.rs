//! The floor every other module stands on: an injected clock ([`clock`]), and (added below)
//! time and id helpers, path resolution and stats handles. Nothing here imports another
//! gradwatch module, so anything may import it without making a cycle
//! (`tests/it/shape.rs` checks the layering).

pub mod clock;
