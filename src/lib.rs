//! gradwatch: gradient-based uncertainty monitoring for camera classifiers.
//!
//! Data flows one way: [`source`] -> [`pipeline`] -> [`runtime`] -> [`detector`] -> [`alert`] -> [`sink`].
//! The gradient compiler ([`grad`]) turns any ONNX classifier into a graph that also outputs the
//! per-sample squared gradient norms of every parameter tensor (Lee & AlRegib, ICIP 2020).

pub mod frame;
pub mod source;
