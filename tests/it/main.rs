//! The integration tests, one binary (each `tests/*.rs` used to link ONNX Runtime's loader and
//! rustls again): a module per area, against the public API and the real `gradwatch` binary.

mod alarms;
mod alert;
mod baseline;
mod budget;
mod calibrate;
mod common;
mod corrupt;
mod daemon;
mod dashboard;
mod data;
mod delivery;
mod detector;
mod eval;
mod fakes;
mod faults;
mod fleet;
mod frames;
mod fuzz_regressions;
mod golden;
mod grad;
mod init;
mod model;
mod mqtt;
mod pipeline;
mod roc;
mod rtsp;
mod runtime;
mod shape;
mod sink;
mod snapshot;
mod source;
mod zoo;
