//! gradwatch: gradient-based uncertainty monitoring for camera classifiers.
//!
//! Data flows one way: [`source`] -> [`pipeline`] -> [`runtime`] -> [`detector`] -> [`alert`] -> [`sink`].
//! The gradient compiler ([`grad`]) turns any ONNX classifier into a graph that also outputs the
//! per-sample squared gradient norms of every parameter tensor (Lee & AlRegib, ICIP 2020).

pub mod alert;
pub mod base;
pub mod cli;
pub mod config;
pub mod corrupt;
pub mod data;
pub mod detector;
pub mod fleet;
pub mod frame;
pub mod grad;
pub mod lab;
pub mod metrics;
pub mod model;
pub mod names;
pub mod onnx;
pub mod pipeline;
pub mod plot;
pub mod quality;
pub mod ratelimit;
pub mod rng;
pub mod runtime;
pub mod service;
pub mod setup;
pub mod sink;
pub mod snapshot;
pub mod source;
