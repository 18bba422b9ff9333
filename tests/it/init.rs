//! `gradwatch init` on a model that is not the reference one (`tests/fixtures/user_model/`: a
//! small NHWC CNN that expects ImageNet mean/std normalisation outside its graph and carries no
//! gradwatch metadata, trained by `scripts/train-user-model.py`; 256 GTSRB test images it
//! never saw). The docs/guide/your-model.md path end to end: `init` with preprocessing overrides,
//! `check-config` on the config it wrote, a replay run through that config that raises an
//! alert in the corrupted window and none in the clean ones. And bad input: exit 2 with the
//! cause (not a classifier, an override that does not fit, labels that do not match).

use std::path::{Path, PathBuf};

use crate::common::daemon::{events, kind, write, Daemon};
use crate::common::Net;
use gradwatch::detector::Calibration;
use gradwatch::model::{ColorOrder, Layout, Preprocessing, IMAGENET_MEAN, IMAGENET_STD};
use gradwatch::onnx::{self, attr, ModelProto};

const FIXTURE: &str = "tests/fixtures/user_model";
/// Rows of the fixture `init` calibrates on; the rest are replayed.
const INIT_ROWS: &str = "0..192";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(FIXTURE).join(name)
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `gradwatch init` on the fixture with `extra` arguments into `out`.
fn init(out: &Path, extra: &[&str]) -> (i32, String) {
    let (model, images, labels) =
        (fixture("user-cnn.onnx"), fixture("heldout-images.npy"), fixture("heldout-labels.npy"));
    let mut args = vec!["init", s(&model), "--images", s(&images), "--labels", s(&labels), "-o", s(out)];
    args.extend_from_slice(extra);
    let (code, _out, err) = Daemon::run(&args);
    (code, err)
}

/// The fixture as its user sets it up: NHWC, ImageNet mean/std.
const USER_FLAGS: [&str; 8] = ["--rows", INIT_ROWS, "--layout", "nhwc", "--mean", "imagenet", "--std", "imagenet"];

#[test]
fn init_then_check_config_then_a_replay_alerts_on_the_corrupted_window_only() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("setup");
    // The recipe's defaults (every degradation type, levels 2-5): about a second here.
    let mut flags = USER_FLAGS.to_vec();
    flags.extend_from_slice(&["--threads", "1"]);
    let (code, err) = init(&out, &flags);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("input 'input' [N,32,32,3]: NHWC 32x32"), "{err}");
    assert!(err.contains("43 classes"), "{err}");
    assert!(err.contains("overridden on the command line"), "{err}");
    // What each preset costs is measured on this machine: the only warning allowed (a model this
    // small is over 6x on a busy CI machine, where a frame's full graph still takes under 1 ms).
    let warnings: Vec<&str> = err.lines().filter(|l| l.starts_with("warning:")).collect();
    assert!(
        warnings.iter().all(|w| w.contains("gradient graph costs")),
        "held-out test images of most classes raise no warning:\n{err}"
    );
    // `--preset auto`: full where its graph costs at most 6x the forward pass here, else fast
    // (this 3-Conv model's full graph is near 9x on most machines).
    let ratio = |p: &str| -> f64 {
        let line = err.lines().find(|l| l.starts_with("gradient graph cost on this machine")).expect("a cost line");
        let at = line.find(&format!(" {p} ")).unwrap_or_else(|| panic!("no {p} in {line}")) + p.len() + 2;
        line[at..].split('x').next().and_then(|r| r.parse().ok()).unwrap_or_else(|| panic!("{line}"))
    };
    let preset = if ratio("full") <= 6.0 { "full" } else { "fast" };
    assert!(ratio("fast") < ratio("full"), "{err}");
    assert_eq!(err.contains("calibrating the `fast` preset (--preset auto)"), preset == "fast", "{err}");

    // The overrides live in the calibration, so every command and the daemon use them.
    let calib = Calibration::load(&out.join("user-cnn.calib.toml")).unwrap();
    let want = Preprocessing {
        layout: Layout::Nhwc,
        width: 32,
        height: 32,
        color_order: ColorOrder::Rgb,
        scale: 1.0 / 255.0,
        mean: IMAGENET_MEAN,
        std: IMAGENET_STD,
    };
    assert_eq!(calib.model.preprocessing.as_ref(), Some(&want));
    assert_eq!(calib.model.preset, preset);
    assert!(calib.fitted_on.command.contains("init"), "{}", calib.fitted_on.command);
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    let parts = ["clean over the threshold", "![held-out ROC](roc.svg)", "| haze |", "accuracy", "## Cost per frame"];
    // fast: the last stage's Conv and the head, and the mean square of each stage's activation.
    for part in parts.into_iter().chain(["| `full` | 8 |", "| calibrated |", "| `fast` | 7 |"]) {
        assert!(report.contains(part), "report.md lacks '{part}':\n{report}");
    }
    assert!(std::fs::read_to_string(out.join("roc.svg")).unwrap().starts_with("<svg"));

    // The config it wrote passes check-config as written (the metrics port aside: another
    // process on this machine may hold 9464).
    let config = std::fs::read_to_string(out.join("gradwatch.toml")).unwrap();
    assert!(config.contains("policy = \"cusum\""), "{config}");
    assert!(config.contains(&format!("preset = \"{preset}\"")), "{config}");
    let config = config.replace("127.0.0.1:9464", "127.0.0.1:0");
    let cfg_path = write(&out, "gradwatch.toml", &config);
    let (code, stdout, err) = Daemon::run(&["check-config", s(&cfg_path)]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("ok: 1 streams, 1 sinks"), "{stdout}");

    // The daemon compiles the form its providers run fastest: MaxPool's backward by scatter on
    // the CPU, and the form TensorRT's parser takes whole (no Indices, no ScatterElements) when
    // tensorrt is listed; the one calibration fits both.
    for (providers, scatter) in [("[\"cpu\"]", true), ("[\"tensorrt\", \"cuda\", \"cpu\"]", false)] {
        let text = config.replace("providers = [\"cpu\"]", &format!("providers = {providers}"));
        assert!(text.contains(providers), "{text}");
        let cfg = gradwatch::config::Config::load(&write(&out, "providers.toml", &text)).unwrap();
        let loaded = gradwatch::service::load_model(&cfg).unwrap();
        let g = loaded.model.compiled.model.graph.as_ref().unwrap();
        let found = g.node.iter().any(|n| n.op_type == "ScatterElements" || n.output.len() > 1);
        assert_eq!(found, scatter, "providers {providers}");
    }

    // `score` uses the stored preprocessing: the replayed images' top classes are mostly right.
    let replay = dir.path().join("replay.npy");
    let images = gradwatch::data::load_npy_images(&fixture("heldout-images.npy")).unwrap();
    let labels = gradwatch::data::load_npy_labels(&fixture("heldout-labels.npy")).unwrap();
    gradwatch::data::save_npy_images(&replay, &images[192..]).unwrap();
    let model = fixture("user-cnn.onnx");
    let calib_path = out.join("user-cnn.calib.toml");
    let (code, stdout, err) = Daemon::run(&["score", "--calib", s(&calib_path), "--model", s(&model), s(&replay)]);
    assert_eq!(code, 0, "{err}");
    let right = events(&stdout).iter().zip(&labels[192..]).filter(|(e, &l)| e["top_class"].as_i64() == Some(l)).count();
    assert!(right * 10 >= 64 * 8, "only {right} of 64 right: the stored mean/std were not used");

    // A replay of images init never saw, through the generated config's alert policy (cusum on
    // the calibration's fallback baseline, 2.4 false alarms a day): 60 s clean, 2 minutes of
    // noise, 60 s clean at 10 fps in frame time. The alert comes about 30 s into the noise.
    let stream = format!(
        "[[stream]]\nname = \"cam0\"\nkind = \"replay\"\npath = \"{}\"\nfps = 10\nrealtime = false\n\
         queue = {{ size = 8, policy = \"block\" }}\nschedule = [\n  {{ frames = 600 }},\n  \
         {{ frames = 1200, corruption = \"noise\", level = 5 }},\n  {{ frames = 600 }},\n]\n\n[[sink]]",
        s(&replay)
    );
    let start = config.find("\n[[stream]]\n").unwrap() + 1;
    let end = config.find("\n[[sink]]\n").unwrap() + "\n[[sink]]".len();
    let run_cfg = format!("{}{}{}", &config[..start], stream, &config[end..])
        .replace("[metrics]\nenabled = true", "[metrics]\nenabled = false");
    let run_path = write(&out, "replay.toml", &run_cfg);
    let (code, stdout, err) = Daemon::run(&["run", "--config", s(&run_path)]);
    assert_eq!(code, 0, "{err}");
    let ev = events(&stdout);
    let starts: Vec<_> = ev.iter().filter(|e| kind(e) == "alert_start").collect();
    assert!(!starts.is_empty(), "no alert in the noisy window:\n{stdout}\n{err}");
    for a in &starts {
        let at = a["last_seq"].as_u64().unwrap();
        assert!((600..1800).contains(&at), "an alert outside the noisy window (frames 600..1800): {a}\n{err}");
    }
}

/// A model as older tools write it (`scripts/train-user-model.py --gray`): one gray channel,
/// the batch fixed at 1 (`[1, 1, 32, 32]`), opset 12, softmax probabilities as its output. `init`
/// needs no flag: it reads the gray input, feeds the frames' luma, runs batches through it and
/// finds the accuracy PyTorch measured (94.9 % on these 256 images); `score` does the same.
#[test]
fn a_gray_fixed_batch_softmax_model_needs_no_flags() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("setup");
    let (model, images, labels) =
        (fixture("gray-cnn.onnx"), fixture("heldout-images.npy"), fixture("heldout-labels.npy"));
    let args = ["init", s(&model), "--images", s(&images), "--labels", s(&labels), "-o", s(&out)];
    let (code, _, err) =
        Daemon::run(&[&args[..], &["--rows", INIT_ROWS, "--threads", "1", "--corruptions", "legacy"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("input 'image' [1,1,32,32]: NCHW 32x32 (batch fixed at 1"), "{err}");
    assert!(err.contains("NCHW 32x32 GRAY"), "{err}");
    assert!(err.contains("gradient graph cost on this machine"), "a batch of 16 through the fixed-batch file:\n{err}");
    let acc: f64 = err
        .split("accuracy ")
        .nth(1)
        .and_then(|t| t.split(" %").next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy line:\n{err}"));
    assert!(acc >= 90.0, "accuracy {acc} %: the luma or the batch is wrong\n{err}");
    assert!(!err.contains("preprocessing is probably wrong"), "{err}");

    let calib = out.join("gray-cnn.calib.toml");
    let (code, stdout, err) = Daemon::run(&["score", "--calib", s(&calib), "--model", s(&model), s(&images)]);
    assert_eq!(code, 0, "{err}");
    let labels = gradwatch::data::load_npy_labels(&labels).unwrap();
    let ev = events(&stdout);
    assert_eq!(ev.len(), labels.len());
    let right = ev.iter().zip(&labels).filter(|(e, &l)| e["top_class"].as_i64() == Some(l)).count();
    assert!(right * 10 >= labels.len() * 9, "score: only {right} of {} right", labels.len());
}

/// `init` on a variant of the user model (`model`) into `out`, with the fixture's images and
/// labels, a quick calibration (one thread, the legacy corruptions) and `extra`.
fn init_variant(model: &Path, out: &Path, extra: &[&str]) -> (i32, String) {
    let (images, labels) = (fixture("heldout-images.npy"), fixture("heldout-labels.npy"));
    let args = ["init", s(model), "--images", s(&images), "--labels", s(&labels), "-o", s(out)];
    let quick = ["--threads", "1", "--corruptions", "legacy"];
    let (code, _, err) = Daemon::run(&[&args[..], &quick, extra].concat());
    (code, err)
}

/// `init --preset fast`: the calibration and the daemon config it writes are for the `fast`
/// graph, and the daemon loads that graph from them; the report marks `fast` as calibrated.
#[test]
fn init_with_the_fast_preset_configures_the_daemon_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("fast");
    let flags = [&USER_FLAGS[..], &["--preset", "fast"]].concat();
    let (code, err) = init_variant(&fixture("user-cnn.onnx"), &out, &flags);
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("--preset auto"), "a named preset is not auto's choice:\n{err}");
    let calib = Calibration::load(&out.join("user-cnn.calib.toml")).unwrap();
    assert_eq!(calib.model.preset, "fast");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| `fast` | 7 |") && report.contains("| calibrated |"), "{report}");
    let config = std::fs::read_to_string(out.join("gradwatch.toml")).unwrap();
    assert!(config.contains("preset = \"fast\""), "{config}");
    let cfg = gradwatch::config::Config::load(&out.join("gradwatch.toml")).unwrap();
    let loaded = gradwatch::service::load_model(&cfg).unwrap();
    assert_eq!(loaded.model.compiled.preset, "fast");
    assert_eq!(loaded.model.compiled.features.len(), calib.model.features.len());
}

/// The user's model converted to float16 with half inputs and outputs (as a Jetson user may
/// have only that file): `init` says it reads it as float32 and finds the float32 model's
/// accuracy (94.14 % on these images, to the rounding of its weights).
#[test]
fn a_half_precision_model_is_set_up_as_float32() {
    let dir = tempfile::tempdir().unwrap();
    let model = onnx::load(&fixture("user-cnn.onnx")).unwrap();
    let half = save(dir.path(), "user-half.onnx", &crate::common::half_model(&model, crate::common::Half::Io16));
    let out = dir.path().join("setup");
    let (code, err) = init_variant(&half, &out, &USER_FLAGS);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("precision: half (float16/bfloat16), read as float32"), "{err}");
    assert!(err.contains("gradient graph cost on this machine"), "the presets timed as float32 too:\n{err}");
    assert!(err.contains("accuracy 9"), "{err}");
    assert!(out.join("user-half.calib.toml").exists());
}

/// The user's model with its preprocessing inside the graph and a `uint8` NHWC input (pixels
/// cast to float, `/255`, ImageNet mean and std), as exports for edge runtimes write it: `init`
/// needs no preprocessing flag, feeds the pixel values unscaled and finds the accuracy the
/// float fixture has with its flags.
#[test]
fn a_byte_input_model_with_its_normalisation_inside_needs_no_flags() {
    use onnx::data_type;
    let dir = tempfile::tempdir().unwrap();
    let mut model = onnx::load(&fixture("user-cnn.onnx")).unwrap();
    let g = model.graph.as_mut().unwrap();
    let x = g.input[0].name.clone();
    let dims: Vec<Option<i64>> = onnx::value_info_shape(&g.input[0]).unwrap().1;
    g.input[0] = onnx::make_value_info("pixels", data_type::UINT8, &dims);
    let cast = onnx::make_node("Cast", "to_float", &["pixels"], &["px"], vec![attr::int("to", 1)]);
    let scale = onnx::make_node("Mul", "scale", &["px", "k255"], &["unit"], vec![]);
    let sub = onnx::make_node("Sub", "mean", &["unit", "mu"], &["centred"], vec![]);
    let div = onnx::make_node("Div", "std", &["centred", "sigma"], &[&x], vec![]);
    g.node.splice(0..0, [cast, scale, sub, div]);
    g.initializer.push(onnx::make_tensor_f32("k255", &[], &[1.0 / 255.0]));
    g.initializer.push(onnx::make_tensor_f32("mu", &[3], &[0.485, 0.456, 0.406]));
    g.initializer.push(onnx::make_tensor_f32("sigma", &[3], &[0.229, 0.224, 0.225]));
    let bytes = save(dir.path(), "user-bytes.onnx", &model);
    let (images, labels) = (fixture("heldout-images.npy"), fixture("heldout-labels.npy"));
    let out = dir.path().join("setup");
    let args = ["init", s(&bytes), "--images", s(&images), "--labels", s(&labels), "-o", s(&out)];
    let flags = ["--rows", INIT_ROWS, "--threads", "1", "--corruptions", "legacy"];
    let (code, _, err) = Daemon::run(&[&args[..], &flags].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("input type: 8-bit pixels"), "{err}");
    assert!(err.contains("gradient graph cost on this machine"), "the presets timed on 8-bit input too:\n{err}");
    assert!(err.contains("pixel*1 then"), "{err}");
    // The same accuracy as the float model given its preprocessing on the command line.
    let accuracy = |err: &str| err.lines().find(|l| l.contains("accuracy")).map(str::to_string);
    let (code, want) = init(&dir.path().join("float"), &[&USER_FLAGS[..], &flags[2..]].concat());
    assert_eq!(code, 0, "{want}");
    assert_eq!(accuracy(&err), accuracy(&want), "{err}\n{want}");
    assert!(accuracy(&err).is_some_and(|l| l.contains("accuracy 9")), "{err}");
}

/// The user's model exported with symbolic height and width (`[N, ?, ?, 3]`, as a fully
/// convolutional classifier may be): `init` without `--size` says to give it (exit 2); with
/// `--size 32x32` it sets the model up with the accuracy of the fixed-size file, stores the size
/// in the calibration, and `check-config` and `score` compile the model at that size from it.
#[test]
fn a_model_of_symbolic_size_runs_at_the_size_init_was_given() {
    use onnx::proto::{Dimension, DimensionValue};
    let dir = tempfile::tempdir().unwrap();
    let mut model = onnx::load(&fixture("user-cnn.onnx")).unwrap();
    let input = &mut model.graph.as_mut().unwrap().input[0];
    let shape = input.r#type.as_mut().unwrap().tensor_type.as_mut().unwrap().shape.as_mut().unwrap();
    for (i, d) in [(1, "height"), (2, "width")] {
        shape.dim[i] = Dimension { value: Some(DimensionValue::DimParam(d.into())), denotation: String::new() };
    }
    let path = save(dir.path(), "user-any-size.onnx", &model);
    let out = dir.path().join("setup");
    let (code, err) = init_variant(&path, &out, &USER_FLAGS);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("symbolic dims") && err.contains("--size"), "{err}");

    let (code, err) = init_variant(&path, &out, &[&USER_FLAGS[..], &["--size", "32x32"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("gradient graph cost on this machine"), "both presets compiled at 32x32:\n{err}");
    let accuracy = |err: &str| err.lines().find(|l| l.contains("accuracy")).map(str::to_string);
    let (code, want) = init_variant(&fixture("user-cnn.onnx"), &dir.path().join("fixed"), &USER_FLAGS);
    assert_eq!(code, 0, "{want}");
    assert_eq!(accuracy(&err), accuracy(&want), "{err}\n{want}");
    let calib = out.join("user-any-size.calib.toml");
    let stored = Calibration::load(&calib).unwrap().model.preprocessing.unwrap();
    assert_eq!((stored.width, stored.height), (32, 32));

    let config = std::fs::read_to_string(out.join("gradwatch.toml")).unwrap().replace("127.0.0.1:9464", "127.0.0.1:0");
    let (code, _, err) = Daemon::run(&["check-config", s(&write(&out, "gradwatch.toml", &config))]);
    assert_eq!(code, 0, "{err}");
    let images = fixture("heldout-images.npy");
    let (code, _, err) = Daemon::run(&["score", "--calib", s(&calib), "--model", s(&path), s(&images)]);
    assert_eq!(code, 0, "{err}");
}

/// A small valid CNN built in code, input `[N, 3, 32, 32]`, 5 classes.
fn small_cnn() -> (Net, String) {
    let mut n = Net::new(3);
    let c = n.conv("x", 3, 4, 3, true, vec![attr::ints("pads", &[1, 1, 1, 1])]);
    let r = n.op("Relu", &[&c], vec![]);
    let g = n.op("GlobalAveragePool", &[&r], vec![]);
    let out = n.head(&g, 4, 5);
    (n, out)
}

fn save(dir: &Path, name: &str, m: &ModelProto) -> PathBuf {
    let p = dir.join(name);
    onnx::save(m, &p).unwrap();
    p
}

/// `init MODEL` with the fixture's images: exit 2 and a message containing each of `want`.
fn refused(model: &Path, extra: &[&str], want: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let images = fixture("heldout-images.npy");
    let mut args = vec!["init", s(model), "--images", s(&images), "-o", s(dir.path())];
    args.extend_from_slice(extra);
    let (code, _out, err) = Daemon::run(&args);
    assert_eq!(code, 2, "{args:?}:\n{err}");
    for w in want {
        assert!(err.contains(w), "{args:?}: '{w}' not in:\n{err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert!(!dir.path().join("gradwatch.toml").exists(), "nothing is written on bad input");
}

#[test]
fn not_a_classifier_is_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (net, out) = small_cnn();

    // Two inputs.
    let mut two = net.model(&[3, 32, 32], &out);
    let g = two.graph.as_mut().unwrap();
    g.input.push(onnx::make_value_info("mask", onnx::data_type::FLOAT, &[None, Some(1)]));
    refused(&save(dir.path(), "two.onnx", &two), &[], &["2 inputs", "mask", "exactly one"]);

    // A non-image input: a feature vector.
    let mut v = Net::new(4);
    let head = v.head("x", 16, 5);
    refused(&save(dir.path(), "vector.onnx", &v.model(&[16], &head)), &[], &["not an image classifier", "[N,16]"]);

    // No class axis: the scores come out as [N, 5, 1].
    let mut n3 = net;
    let axes = n3.ints(&[2]);
    let y = n3.op("Unsqueeze", &[&out, &axes], vec![]);
    let mut m = n3.model(&[3, 32, 32], &y);
    m.graph.as_mut().unwrap().output =
        vec![onnx::make_value_info(&y, onnx::data_type::FLOAT, &[None, Some(5), Some(1)])];
    refused(&save(dir.path(), "noclass.onnx", &m), &[], &["no class axis", "[N,5,1]"]);
}

/// Quantized forms gradwatch cannot differentiate are refused with the cause and the form that
/// works: dynamic quantization (one scale for the whole batch) and ONNX Runtime's integer-only
/// operators (the QOperator form, here its `com.microsoft` QGemm).
#[test]
fn quantized_forms_that_cannot_be_read_are_refused_with_the_form_that_works() {
    let dir = tempfile::tempdir().unwrap();
    let (mut net, out) = small_cnn();
    let (q, s_, z) = (net.name_of("q"), net.name_of("s"), net.name_of("z"));
    let dql = onnx::make_node("DynamicQuantizeLinear", "dql", &["x"], &[&q, &s_, &z], vec![]);
    let xd = net.op("DequantizeLinear", &[&q, &s_, &z], vec![]);
    // Both before the first Conv, in graph order.
    let dq = net.nodes.pop().unwrap();
    net.nodes.splice(0..0, [dql, dq]);
    // The first Conv reads the dequantized input.
    let conv = net.nodes.iter_mut().find(|n| n.op_type == "Conv").unwrap();
    conv.input[0] = xd;
    let dynamic = save(dir.path(), "dynamic.onnx", &net.model(&[3, 32, 32], &out));
    refused(&dynamic, &[], &["DynamicQuantizeLinear", "whole batch", "QuantFormat.QDQ"]);

    let (net, out) = small_cnn();
    let mut m = net.model(&[3, 32, 32], &out);
    let mut qgemm = onnx::make_node("QGemm", "head_quant", &[&out], &["unused"], vec![]);
    qgemm.domain = "com.microsoft".into();
    m.graph.as_mut().unwrap().node.push(qgemm);
    refused(&save(dir.path(), "qoperator.onnx", &m), &[], &["QGemm", "QOperator form", "QuantFormat.QDQ"]);
}

#[test]
fn overrides_that_do_not_fit_and_mismatched_labels_are_refused() {
    let model = fixture("user-cnn.onnx");
    refused(&model, &["--layout", "nchw"], &["layout NCHW", "[N,32,32,3]", "nhwc"]);
    refused(&model, &["--size", "64x64"], &["size 64x64", "32x32"]);
    refused(&model, &["--std", "0,1,1"], &["std"]);
    // The flag's own parser: a clear message, clap's exit code 2.
    refused(&model, &["--mean", "a,b"], &["imagenet, one number, or three"]);

    let dir = tempfile::tempdir().unwrap();
    let labels = dir.path().join("labels.npy");
    ndarray_npy::write_npy(&labels, &ndarray::Array1::from_iter((0..100i64).map(|i| i % 43))).unwrap();
    refused(&model, &["--labels", s(&labels)], &["100 labels for 256 images", "one true class per image"]);
    let bad = dir.path().join("bad.npy");
    ndarray_npy::write_npy(&bad, &ndarray::Array1::from_iter((0..256i64).map(|i| i % 50))).unwrap();
    refused(&model, &["--labels", s(&bad)], &["label 43", "not a class of this model"]);
}

/// Labelled images run through the wrong preprocessing: low accuracy, the three best
/// alternatives (the right one first), exit 2 without --force.
#[test]
fn wrong_preprocessing_shows_the_fixes_it_tried() {
    for (flags, fix) in [
        // What a newcomer does: no flags, so pixels in [0, 1] without the model's mean/std.
        (&[][..], "--scale 1/255 --mean imagenet --std imagenet"),
        (
            &["--color-order", "bgr", "--scale", "1"][..],
            "--color-order rgb --scale 1/255 --mean imagenet --std imagenet",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec!["--rows", INIT_ROWS];
        args.extend_from_slice(flags);
        let (code, err) = init(dir.path(), &args);
        assert_eq!(code, 2, "{err}");
        assert!(err.contains("preprocessing is probably wrong"), "{err}");
        assert!(err.contains("--force"), "{err}");
        let first = err.lines().skip_while(|l| !l.contains("most accurate alternatives")).nth(1).unwrap_or_default();
        assert!(first.trim_start().split("  ").nth(1).is_some_and(|f| f.trim() == fix), "{flags:?}: {err}");
    }
}
