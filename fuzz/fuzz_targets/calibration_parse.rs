//! Calibration file text -> `detector::Calibration::parse` (which validates), then scoring a
//! feature row of the declared width (and a logits row of the declared class count): a
//! calibration that passes `validate` must score without panicking.
#![no_main]

use gradwatch::detector::Calibration;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(calib) = Calibration::parse(text) else { return };
    calib.validate().expect("parse validates");
    let row = vec![1.0f32; calib.model.features.len()];
    let logits = match &calib.detector {
        gradwatch::detector::DetectorKind::Ensemble(e) => vec![0.5f32; e.classes],
        _ => Vec::new(),
    };
    let score = calib.score_row(&row, &logits);
    let _ = calib.is_unfamiliar(score);
});
