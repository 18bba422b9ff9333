//! `gradwatch calibrate` / `gradwatch score` on a tiny model built here: round trip, JSON lines,
//! refusal of a calibration made for another model file (library and CLI exit code 2).

// The shared helpers trip a newer clippy lint; they are not this file's to change.

use std::path::Path;
use std::process::Command;

use crate::common::{ort, tiny_model, Rng};
use gradwatch::corrupt::round_robin_corruptions;
use gradwatch::detector::calibration::CalibModel;
use gradwatch::detector::fit::{self, CalibrateOptions, DetectorChoice, DetectorOptions, FamiliarSet, UnfamiliarSet};
use gradwatch::detector::{CalibError, Calibration, DetectorKind, FrameInputs, MlpConfig, Target};
use gradwatch::frame::RgbImage;
use gradwatch::grad::CompileOptions;
use gradwatch::model::LoadedModel;
use gradwatch::onnx;
use gradwatch::runtime::extract as features;
use gradwatch::runtime::GradSession;
use ndarray::Array2;

/// Smooth gradients with a little noise: corruptions change them visibly.
fn images(n: usize, seed: u64) -> Vec<RgbImage> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|i| {
            let mut img = RgbImage::zeros(16, 16);
            let (a, b) = (rng.uniform(), rng.uniform());
            for y in 0..16 {
                for x in 0..16 {
                    let v = |k: f32| (127.0 + 100.0 * (k * (x as f32 / 8.0) + b * y as f32 / 8.0).sin()) as u8;
                    img.set_pixel(x, y, [v(a), v(1.0 + a), (i * 5 % 255) as u8]);
                }
            }
            img
        })
        .collect()
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gradwatch"))
}

/// `gradwatch calibrate` on `fam.npy` with the tests' quick recipe (two corruptions, levels
/// 4-5, 10 % false alarms, 8 hidden units) and `extra`, into `calib`.
fn calibrate(d: &Path, model: &Path, calib: &Path, extra: &[&str]) -> std::process::Output {
    calibrate_kinds(d, model, calib, "noise,haze", extra)
}

/// [`calibrate`] with the corruption types `kinds`.
fn calibrate_kinds(d: &Path, model: &Path, calib: &Path, kinds: &str, extra: &[&str]) -> std::process::Output {
    bin()
        .args(["calibrate", "--model"])
        .arg(model)
        .arg("--familiar")
        .arg(d.join("fam.npy"))
        .args(["--corruptions", kinds, "--levels", "4-5", "--target-fpr", "0.1", "--hidden", "8"])
        .args(extra)
        .arg("-o")
        .arg(calib)
        .output()
        .unwrap()
}

/// True classes of `fam.npy`'s 40 images (`i % 5`), as `labels.npy`.
fn write_labels(d: &Path) -> std::path::PathBuf {
    let labels = d.join("labels.npy");
    ndarray_npy::write_npy(&labels, &ndarray::Array1::from_iter((0..40i64).map(|i| i % 5))).unwrap();
    labels
}

fn setup(dir: &Path) -> std::path::PathBuf {
    ort();
    let m = dir.join("tiny.onnx");
    onnx::save(&tiny_model(4), &m).unwrap();
    gradwatch::data::save_npy_images(&dir.join("fam.npy"), &images(40, 1)).unwrap();
    m
}

/// [`setup`] plus `labels.npy`: the model, where its calibration goes, and the labels.
fn labelled_setup(d: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let model = setup(d);
    (model, d.join("tiny.calib.toml"), write_labels(d))
}

#[test]
fn calibrate_then_score_round_trip_and_json_lines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = setup(d);
    let calib = d.join("tiny.calib.toml");
    let out = calibrate(d, &model, &calib, &["--detector", "paper"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let c = Calibration::load(&calib).unwrap();
    let lm = LoadedModel::load(&model, &CompileOptions::default()).unwrap();
    c.check_model(&lm.info.sha256, &lm.compiled.features).unwrap();
    assert!(matches!(c.detector, DetectorKind::Mlp { .. }));
    assert_eq!(c.fitted_on.familiar.count, 40);
    assert_eq!(c.fitted_on.unfamiliar.len(), 1);
    assert_eq!(c.fitted_on.unfamiliar[0].count, 40, "one corrupted copy per familiar image");
    assert!(c.fitted_on.command.contains("calibrate") && c.fitted_on.command.contains("--target-fpr 0.1"));
    assert!(c.threshold.is_finite());

    // Score without --model: tiny.calib.toml -> tiny.onnx.
    let out = bin().args(["score", "--calib"]).arg(&calib).arg(d.join("fam.npy")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 40);

    // The same scores through the library.
    let mut s = GradSession::new(&lm.compiled, &Default::default()).unwrap();
    let fs = features::extract(&mut s, &lm.info, &images(40, 1), 32, false).unwrap();
    let want = c.score(&fs.features, &fs.logits, None);
    for (i, (l, w)) in lines.iter().zip(&want).enumerate() {
        let o = l.as_object().unwrap();
        let mut keys: Vec<&str> = o.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["class_name", "confidence", "index", "risk", "score", "top_class", "verdict"]);
        // No true classes at calibration: no trust head, risk is null.
        assert!(o["risk"].is_null() && c.trust.is_none());
        assert_eq!(o["index"], i);
        let got = o["score"].as_f64().unwrap() as f32;
        assert!((got - w).abs() <= 1e-4 * w.abs().max(1.0), "{got} vs {w}");
        let verdict = if c.is_unfamiliar(*w) { "unfamiliar" } else { "familiar" };
        assert_eq!(o["verdict"], verdict);
        let top = o["top_class"].as_u64().unwrap() as usize;
        assert!(top < 5);
        assert_eq!(o["class_name"], format!("class {top}"));
        let conf = o["confidence"].as_f64().unwrap();
        assert!((0.2..=1.0).contains(&conf), "max softmax of 5 classes is >= 1/5");
    }

    // A folder of images: lines carry the file name.
    let imgdir = d.join("imgs");
    std::fs::create_dir(&imgdir).unwrap();
    gradwatch::data::save_png(&imgdir.join("a.png"), &images(1, 1)[0]).unwrap();
    let out = bin().args(["score", "--calib"]).arg(&calib).arg(&imgdir).output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_str(String::from_utf8(out.stdout).unwrap().trim()).unwrap();
    assert_eq!(v["file"], "a.png");
    assert!((v["score"].as_f64().unwrap() as f32 - want[0]).abs() <= 1e-4 * want[0].abs().max(1.0));
}

#[test]
fn calibrate_risk_with_labels_and_familiar_rows() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, calib, labels) = labelled_setup(d);
    let run = |extra: &[&str]| calibrate(d, &model, &calib, extra);
    let labels_arg = labels.to_str().unwrap();
    let out = run(&["--familiar-labels", labels_arg, "--familiar-rows", "4..36", "--members", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let calib_log = String::from_utf8_lossy(&out.stderr).to_string();
    let c = Calibration::load(&calib).unwrap();
    let DetectorKind::Ensemble(e) = &c.detector else { panic!("risk is the default and fits an ensemble") };
    assert_eq!((e.target, e.members.len(), e.forward.len(), e.classes), (Target::Union, 2, 5, 5));
    assert_eq!(c.fitted_on.familiar.count, 32);
    assert!(c.fitted_on.command.contains("--familiar-rows 4..36"));
    let text = std::fs::read_to_string(&calib).unwrap();
    assert!(text.contains("kind = \"ensemble\"") && text.contains("target = \"union\""), "{text}");

    // `score` agrees with the library, which uses the logits.
    let out = bin().args(["score", "--calib"]).arg(&calib).arg(d.join("fam.npy")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lm = LoadedModel::load(&model, &CompileOptions::default()).unwrap();
    let mut s = GradSession::new(&lm.compiled, &Default::default()).unwrap();
    let fs = features::extract(&mut s, &lm.info, &images(40, 1), 32, false).unwrap();
    let want = c.score(&fs.features, &fs.logits, None);
    assert!(c.trust.is_some(), "true classes given: the calibration has a trust head\n{calib_log}");
    for (i, (l, w)) in String::from_utf8(out.stdout).unwrap().lines().zip(&want).enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let got = v["score"].as_f64().unwrap() as f32;
        assert!((got - w).abs() <= 1e-4 * w.abs().max(1.0), "{got} vs {w}");
        // ... and on the trust head's risk, a probability.
        let risk = v["risk"].as_f64().unwrap() as f32;
        let want_risk = c.risk_row(FrameInputs::new(&fs.features.row(i).to_vec(), &fs.logits.row(i).to_vec())).unwrap();
        assert!((0.0..=1.0).contains(&risk) && (risk - want_risk).abs() <= 1e-4, "{risk} vs {want_risk}");
    }

    // Without labels: a warning, and novelty labels.
    let out = run(&["--target", "harm", "--members", "1", "--forward", "msp,margin"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--familiar-labels"));
    let c = Calibration::load(&calib).unwrap();
    let DetectorKind::Ensemble(e) = &c.detector else { panic!("not the paper's detector") };
    assert_eq!((e.target, e.members.len(), e.forward.len()), (Target::Novelty, 1, 2));

    // Bad ranges and label counts are refused with a message.
    let out = run(&["--familiar-rows", "30..41"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("beyond the 40 rows"));
    let out = run(&["--familiar-rows", "5..5"]);
    assert!(!out.status.success());
    let out = run(&["--familiar-labels", labels_arg, "--limit", "30", "--familiar-rows", "0..40"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(Calibration::load(&calib).unwrap().fitted_on.familiar.count, 30);
}

/// `--quality`: the detector reads the image-quality measures of each image (at the model's
/// input size); `score` measures the images it scores and agrees with the library.
#[test]
fn calibrate_with_quality_measures_and_score_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, calib, labels) = labelled_setup(d);
    let labels_arg = labels.to_str().unwrap();
    let out = calibrate(d, &model, &calib, &["--familiar-labels", labels_arg, "--members", "2", "--quality"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = Calibration::load(&calib).unwrap();
    let DetectorKind::Ensemble(e) = &c.detector else { panic!("risk fits an ensemble") };
    let t = c.trust.as_ref().expect("labels given: a trust head");
    // The camera-health detector reads them; the trust head does not (it ranked held-out
    // families' errors worse with them).
    assert!(e.uses_quality() && !t.ensemble.uses_quality() && c.uses_quality());
    assert_eq!(e.members[0].inputs(), e.dim() + e.forward.len() + gradwatch::quality::Measure::ALL.len());

    let out = bin().args(["score", "--calib"]).arg(&calib).arg(d.join("fam.npy")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lm = LoadedModel::load(&model, &CompileOptions::default()).unwrap();
    let mut s = GradSession::new(&lm.compiled, &Default::default()).unwrap();
    let imgs = images(40, 1);
    let fs = features::extract(&mut s, &lm.info, &imgs, 32, false).unwrap();
    let q = gradwatch::quality::measure_batch(&imgs, lm.info.width, lm.info.height);
    let want = c.score(&fs.features, &fs.logits, Some(&q));
    assert!(want.iter().all(|w| w.is_finite()), "{want:?}");
    // Without the measures the detector cannot score: +inf, never a guess.
    assert!(c.score(&fs.features, &fs.logits, None).iter().all(|w| *w == f32::INFINITY));
    for (i, (l, w)) in String::from_utf8(out.stdout).unwrap().lines().zip(&want).enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        let got = v["score"].as_f64().unwrap() as f32;
        assert!((got - w).abs() <= 1e-4 * w.abs().max(1.0), "{got} vs {w}");
        let (f, z, qr) = (fs.features.row(i).to_vec(), fs.logits.row(i).to_vec(), q.row(i).to_vec());
        let want_risk = c.risk_row(FrameInputs::new(&f, &z).with_quality(Some(&qr))).unwrap();
        let risk = v["risk"].as_f64().unwrap() as f32;
        assert!((risk - want_risk).abs() <= 1e-4, "{risk} vs {want_risk}");
    }
}

/// `--augment` (issue #25, item 2): a mixed copy of each image and lighting changes judged by
/// the classifier; the lighting types leave the round-robin copy, whose rows would call every
/// lighting change unfamiliar.
#[test]
fn calibrate_with_generalising_data() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, calib, labels) = labelled_setup(d);
    let labels_arg = labels.to_str().unwrap();
    let run = |extra: &[&str]| {
        let args = [&["--augment", "mixed,lighting", "--members", "1"][..], extra].concat();
        calibrate_kinds(d, &model, &calib, "noise,haze,exposure,darkening", &args)
    };
    let out = run(&["--familiar-labels", labels_arg]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = Calibration::load(&calib).unwrap();
    let names: Vec<(&str, usize)> = c.fitted_on.unfamiliar.iter().map(|u| (u.name.as_str(), u.count)).collect();
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names[0].0.contains("(noise,haze; levels 4-5)"), "{names:?}");
    assert!(names[1].0.starts_with("mixed corruptions") && names[2].0.starts_with("lighting changes"), "{names:?}");
    assert!(names.iter().all(|&(_, n)| n == 40), "{names:?}");
    assert!(c.fitted_on.validation_auroc.is_finite() && c.threshold.is_finite());
    // The paper's detector has no use for rows labelled by the classifier: it leaves them out.
    let out = run(&["--detector", "paper"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(matches!(Calibration::load(&calib).unwrap().detector, DetectorKind::Mlp { .. }));
}

#[test]
fn calibration_for_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = setup(d);
    let calib = d.join("tiny.calib.toml");
    let out = bin()
        .args(["calibrate", "--one-class", "--corruptions", "none", "--model"])
        .arg(&model)
        .arg("--familiar")
        .arg(d.join("fam.npy"))
        .arg("-o")
        .arg(&calib)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let c = Calibration::load(&calib).unwrap();
    assert!(matches!(c.detector, DetectorKind::OneClass { .. }));

    // Same architecture, other weights: same feature names, different file hash.
    let other = d.join("other.onnx");
    onnx::save(&tiny_model(5), &other).unwrap();
    let lo = LoadedModel::load(&other, &CompileOptions::default()).unwrap();
    let e = c.check_model(&lo.info.sha256, &lo.compiled.features).unwrap_err();
    assert!(matches!(e, CalibError::ModelMismatch { .. }));
    assert!(e.to_string().contains("recalibrate with `gradwatch calibrate`"), "{e}");

    let out = bin()
        .args(["score", "--calib"])
        .arg(&calib)
        .arg("--model")
        .arg(&other)
        .arg(d.join("fam.npy"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("calibration was fitted on model sha256") && err.contains("recalibrate"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn library_fit_threshold_meets_the_target_on_held_out_familiar() {
    // Synthetic features: familiar ~ 1, unfamiliar ~ 100 (log-separable), 3 features.
    let mut rng = Rng::new(9);
    let fam = Array2::from_shape_fn((200, 3), |_| 1.0 + 0.5 * rng.uniform());
    let unf = Array2::from_shape_fn((100, 3), |_| 100.0 + 50.0 * rng.uniform());
    let model = CalibModel {
        name: "m".into(),
        sha256: "00".into(),
        loss: "bce-logits".into(),
        features: vec!["a".into(), "b".into(), "c".into()],
        preset: "full".into(),
        preprocessing: None,
    };
    let opts =
        CalibrateOptions { target_fpr: 0.05, mlp: MlpConfig { hidden: 8, ..Default::default() }, ..Default::default() };
    // Logits: familiar confident in class 0, unfamiliar flat.
    let fam_logits = Array2::from_shape_fn((200, 3), |(_, j)| if j == 0 { 5.0 } else { 0.0 });
    let unf_logits = Array2::from_shape_fn((100, 3), |(i, j)| (i + j) as f32 * 0.01);
    let familiar = FamiliarSet {
        name: "fam".into(),
        features: fam.clone(),
        logits: fam_logits.clone(),
        labels: None,
        quality: None,
    };
    let sets = [UnfamiliarSet {
        name: "u".into(),
        features: unf.clone(),
        logits: unf_logits.clone(),
        quality: None,
        paired: false,
        benign: false,
    }];
    let paper = CalibrateOptions { detector: DetectorChoice::Paper.options(), ..opts.clone() };
    let c = fit::fit(model.clone(), &familiar, &sets, &paper, "test").unwrap();
    assert!(matches!(c.detector, DetectorKind::Mlp { .. }));
    assert!(c.fitted_on.validation_false_alarm_rate <= 0.05);
    assert_eq!(c.fitted_on.validation_true_positive_rate, 1.0);
    assert_eq!(c.fitted_on.validation_auroc, 1.0);
    // It survives a TOML round trip with identical scores.
    let back = Calibration::parse(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back.score(&unf, &unf_logits, None), c.score(&unf, &unf_logits, None));
    // The paper's detector ignores the logits.
    assert_eq!(c.score(&unf, &Array2::zeros((0, 0)), None), c.score(&unf, &unf_logits, None));
    // The default (risk) detector: an ensemble on gradients + forward signals; without true
    // classes it learns novelty labels.
    let r = fit::fit(model.clone(), &familiar, &sets, &opts, "test").unwrap();
    let DetectorKind::Ensemble(e) = &r.detector else { panic!("risk fits an ensemble") };
    assert_eq!((e.target, e.members.len(), e.forward.len(), e.classes), (Target::Novelty, 5, 5, 3));
    assert!(r.fitted_on.validation_false_alarm_rate <= 0.05);
    assert_eq!(r.fitted_on.validation_auroc, 1.0);
    let back = Calibration::parse(&toml::to_string(&r).unwrap()).unwrap();
    assert_eq!(back.score(&unf, &unf_logits, None), r.score(&unf, &unf_logits, None));
    // Logits of the wrong width score +inf.
    assert!(r.score(&unf, &Array2::zeros((100, 2)), None).iter().all(|s| *s == f32::INFINITY));
    // With true classes the union target marks the misclassified familiar images too.
    let labelled =
        FamiliarSet { labels: Some((0..200).map(|i| usize::from(i % 10 == 0)).collect()), ..familiar.clone() };
    let u = fit::fit(model.clone(), &labelled, &sets, &opts, "test").unwrap();
    let DetectorKind::Ensemble(e) = &u.detector else { panic!("risk fits an ensemble") };
    assert_eq!(e.target, Target::Union);
    // ... and a trust head (wrong or OOD = 1) whose risk is a probability; none without classes.
    assert!(r.trust.is_none() && score_ignores_trust_head(&u));
    let t = u.trust.as_ref().expect("a trust head with true classes");
    assert_eq!(t.ensemble.target, Target::Harm);
    // The softmax anchor joins new heads; the one-frame and batch paths agree on it.
    assert!(t.anchor.is_some_and(|a| a.weight == gradwatch::detector::trust::ANCHOR_WEIGHT));
    let risk = u.risk_row(FrameInputs::new(&unf.row(0).to_vec(), &unf_logits.row(0).to_vec())).unwrap();
    assert_eq!(t.risk(&unf, &unf_logits, None)[0], risk);
    assert!(
        (0.0..=1.0).contains(&risk)
            && risk > u.risk_row(FrameInputs::new(&fam.row(1).to_vec(), &fam_logits.row(1).to_vec())).unwrap()
    );
    let back = Calibration::parse(&toml::to_string(&u).unwrap()).unwrap();
    assert_eq!(back.risk_row(FrameInputs::new(&unf.row(0).to_vec(), &unf_logits.row(0).to_vec())), Some(risk));
    // Quality inputs need every set's measures: refused with the fix named when missing.
    let with_q =
        CalibrateOptions { detector: DetectorOptions { quality: true, ..opts.detector.clone() }, ..opts.clone() };
    let e = fit::fit(model.clone(), &labelled, &sets, &with_q, "test").unwrap_err().to_string();
    assert!(e.contains("image-quality") && e.contains("fam"), "{e}");
    let short = FamiliarSet { labels: Some(vec![0; 3]), ..familiar.clone() };
    assert!(fit::fit(model.clone(), &short, &sets, &opts, "test").unwrap_err().to_string().contains("labels"));
    // One-class: no unfamiliar data needed for training; it still flags the far-away set.
    let oc = CalibrateOptions { one_class: true, ..opts.clone() };
    let c1 = fit::fit(model.clone(), &familiar, &[], &oc, "test").unwrap();
    assert!(c1.score(&unf, &unf_logits, None).iter().all(|&s| c1.is_unfamiliar(s)));
    // The MLP without unfamiliar data is an error that names the fixes.
    let e = fit::fit(model, &familiar, &[], &opts, "test").unwrap_err().to_string();
    assert!(e.contains("--one-class"), "{e}");
}

/// The camera-health detector of a calibration with a trust head is the one it would be
/// without: the head is a second, independent model.
fn score_ignores_trust_head(c: &Calibration) -> bool {
    let mut no_trust = c.clone();
    no_trust.trust = None;
    let z = Array2::from_shape_fn((4, 3), |(i, j)| 1.0 + (i + j) as f32);
    let l = Array2::from_shape_fn((4, 3), |(i, j)| (i * j) as f32);
    no_trust.score(&z, &l, None) == c.score(&z, &l, None)
        && no_trust.risk_row(FrameInputs::new(&[1.0; 3], &[0.0; 3])).is_none()
}

#[test]
fn round_robin_corruptions_keep_the_count() {
    let imgs = images(7, 3);
    let out = round_robin_corruptions(&imgs, &gradwatch::corrupt::Corruption::PAPER, &[1, 5], 0).unwrap();
    assert_eq!(out.len(), 7);
    assert!(out.iter().zip(&imgs).any(|(a, b)| a.data != b.data));
    assert!(round_robin_corruptions(&imgs, &[], &[1], 0).is_err());
}
