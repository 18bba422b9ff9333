//! `gradwatch init`: sets a user's own classifier up in one command. It inspects the ONNX
//! file (one image input, a class axis, operators the compiler differentiates), applies
//! preprocessing overrides, checks the classifier's accuracy on labelled images (a wrong
//! preprocessing, or training images that would make the threshold optimistic), times each
//! feature preset's gradient graph against the forward pass and settles `--preset` (`auto`:
//! `full` where it costs at most 6x, else `fast`, else `head`; a named preset is kept, with a
//! warning when it is over 6x and another is not), calibrates
//! with the project's recipe (`calibrate`'s code path) on part of the images and measures the
//! rest: `DIR/<model>.calib.toml`, `DIR/gradwatch.toml`, `DIR/report.md` + `DIR/roc.svg`.
//! Bad input exits 2 with the cause and the fix (docs/guide/your-model.md). The steps live in
//! [`crate::setup`]; this file runs them in order and prints.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::common::{run_options, runtime, PreprocessArgs, RecipeArgs};
use super::EXIT_CONFIG;
use crate::detector::Calibration;
use crate::frame::RgbImage;
use crate::grad::{CompileOptions, Loss, Preset};
use crate::runtime::{GradSession, RuntimeOptions};
use crate::setup::check::{Forward, ImageCheck, PreprocessCheck};
use crate::setup::cost::{CostTiming, PresetChoice};
use crate::setup::report::{measure_held_out, Outputs, Report};
use crate::setup::{self, fit_recipe, FitInputs, SetupError};

/// Arguments of `gradwatch init`.
#[derive(Args, Debug)]
pub struct InitArgs {
    /// The classifier (.onnx): one image input, class scores as the first output.
    pub model: PathBuf,
    /// Images like the camera's, which the model never trained on (held-out or test images of
    /// every class): .npy stack (uint8 N x H x W x 3), image folder or one image.
    #[arg(long)]
    pub images: PathBuf,
    /// Their true classes (.npy of integers, one per image): checks the accuracy (a wrong
    /// preprocessing, training images) and lets the detector learn the classifier's errors.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Use only rows A..B (0-based, B exclusive) of the images and labels.
    #[arg(long)]
    pub rows: Option<String>,
    /// Output folder (created): <model>.calib.toml, gradwatch.toml, report.md, roc.svg.
    #[arg(short, long)]
    pub output: PathBuf,
    /// Fraction of the images kept out of the fit to measure the threshold on (clean
    /// over-threshold rate, ROC, accuracy per degradation type).
    #[arg(long, default_value_t = 0.25)]
    pub holdout: f64,
    /// Calibrate even when the accuracy says the preprocessing is probably wrong.
    #[arg(long)]
    pub force: bool,
    /// Images per graph run.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// ONNX Runtime intra-op threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Feature preset to calibrate: full (the paper's features, every layer), fast (the last
    /// stage and the head: docs/guide/presets.md), head (the head alone, no backward through
    /// the network) or auto: init times them on this machine first and auto takes the first of
    /// full, fast, head whose gradient graph costs at most 6x the classifier's forward pass. A
    /// named preset is kept, with a warning when it is over 6x and another is not. The daemon's
    /// `[model] preset` in the written gradwatch.toml is the one calibrated.
    #[arg(long, default_value = "auto")]
    pub preset: PresetChoice,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub preprocess: PreprocessArgs,
}

/// Runs `gradwatch init`.
pub fn run(a: InitArgs) -> Result<i32> {
    match init(&a) {
        Ok(()) => Ok(0),
        Err(e) if e.is_bad_input() => {
            eprintln!("error: {e}");
            Ok(EXIT_CONFIG)
        }
        Err(e) => Err(e.into()),
    }
}

fn init(a: &InitArgs) -> Result<(), SetupError> {
    // 1. What the file is.
    let overrides = a.preprocess.overrides();
    let mut setup = setup::inspect::load(&a.model, &overrides, a.preset.first())?;
    for line in setup.summary(&a.model) {
        eprintln!("{line}");
    }
    let model = &setup.model;

    // 2. The images, and what the classifier makes of them.
    let images =
        setup::images::load_labelled(&a.images, a.labels.as_deref(), a.rows.as_deref(), model.compiled.num_classes)?;
    let labels = images.labels;
    let rt = runtime(a.threads);
    let mut fwd = Forward::new(model, &rt)?;
    let refs: Vec<&RgbImage> = images.images.iter().collect();
    let check = ImageCheck::new(&mut fwd, model, &refs, labels.as_deref(), a.batch)?;
    eprintln!("{}", check.summary());
    let mut report =
        Report { images: check.report_line(&a.images, a.rows.as_deref(), a.labels.as_deref()), ..Report::default() };
    if let (Some(l), Some(acc)) = (&labels, check.accuracy) {
        let pc = PreprocessCheck::run(&mut fwd, model, &refs, l, acc, a.batch)?;
        report.check = pc.table();
        if pc.looks_wrong {
            for line in pc.explain() {
                eprintln!("{line}");
            }
            if !a.force {
                return Err(SetupError::BadInput(
                    "rerun with the flags of the best one (or the preprocessing the model was trained with), or \
                     pass --force to calibrate with this preprocessing anyway"
                        .into(),
                ));
            }
            report.warnings.push(pc.forced_warning());
        }
    }
    drop((fwd, refs));
    for w in check.warnings() {
        eprintln!("warning: {w}");
        report.warnings.push(w);
    }

    // 3. What each preset costs here, before minutes of calibrating the chosen one.
    let preset = choose_preset(a, overrides.size, &mut setup, &rt, &mut report)?;
    let model = &setup.model;

    // 4. Calibrate on part of the images (calibrate's code path), keep the rest to measure.
    let total = images.images.len();
    let split = setup::recipe::split(images.images, labels.as_deref(), a.holdout, a.recipe.seed)?;
    let mut session = GradSession::new(&model.compiled, &rt)?;
    let inputs = FitInputs {
        familiar_name: format!("{} ({} of {total} images; init)", a.images.display(), split.fit_images.len()),
        images: &split.fit_images,
        labels: split.fit_labels.clone(),
        unfamiliar: Vec::new(),
    };
    eprintln!(
        "calibrating on {} images (+ one corrupted copy each: {} levels {}), {} held out",
        split.fit_images.len(),
        a.recipe.corruptions,
        a.recipe.levels,
        split.hold_images.len()
    );
    let plan = a.recipe.recipe().plan(labels.is_some())?;
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let run = run_options(a.batch);
    let calib = fit_recipe(model, &mut session, Loss::BceLogits, inputs, &plan, &run, setup.stored.clone())?;
    let out = Outputs::new(&a.output, &a.model);
    out.save_calibration(&calib)?;

    // 5. Measure on the held-out images, write the report and the daemon config.
    let held = measure_held_out(&mut session, model, &plan, &run, &split.hold_images)?;
    report.fill(&setup, &plan, &calib, held.as_ref(), split.hold_labels.as_deref());
    out.write(&report, &report.markdown(&run.command, &a.model, model, &out.calib_name()), &a.model, preset)?;
    print_written(a, &out.calib_name(), &calib, report.headline.as_deref());
    Ok(())
}

/// Times every preset and settles `--preset` (a failure to time them is a warning, not a failed
/// init: `auto` then keeps `full`); compiles the chosen preset, at `size` (the image size a
/// symbolic-size model is set up for), when it is not the one loaded.
fn choose_preset(
    a: &InitArgs,
    size: Option<(usize, usize)>,
    setup: &mut setup::inspect::SetupModel,
    rt: &RuntimeOptions,
    report: &mut Report,
) -> Result<Preset, SetupError> {
    let loaded = a.preset.first();
    let chosen = match setup::cost::measure(&setup.model, loaded, size, rt, CostTiming::default()) {
        Ok(mut cost) => {
            cost.chosen = a.preset.resolve(Some(&cost));
            eprintln!("{}", cost.summary());
            report.cost = cost.markdown();
            if let Some(note) = cost.auto_note().filter(|_| a.preset == PresetChoice::Auto) {
                eprintln!("{note}");
                report.cost.push_str(&format!("\n{note}.\n"));
            }
            if let Some(w) = cost.advice() {
                eprintln!("warning: {w}");
                report.warnings.push(w);
            }
            cost.chosen
        }
        Err(e) => {
            let w = format!("the presets' cost could not be measured ({e}); `gradwatch bench --model` times them");
            eprintln!("warning: {w}");
            report.warnings.push(w);
            a.preset.resolve(None)
        }
    };
    if chosen != loaded {
        let opts = CompileOptions { input_size: size, ..CompileOptions::preset(chosen) };
        setup.model.recompile(&opts)?;
    }
    Ok(chosen)
}

/// What [`init`] wrote, its headline number, and the next two commands.
fn print_written(a: &InitArgs, calib_name: &str, calib: &Calibration, headline: Option<&str>) {
    eprintln!(
        "wrote {}: threshold {:.4} for {:.1} % false alarms",
        a.output.join(calib_name).display(),
        calib.threshold,
        100.0 * calib.target_false_alarm
    );
    if let Some(line) = headline {
        eprintln!("{line}");
    }
    let out = a.output.display();
    eprintln!(
        "wrote {out}/report.md, {out}/gradwatch.toml. Next: fill in the [[stream]] of {out}/gradwatch.toml, then"
    );
    eprintln!("  gradwatch check-config {out}/gradwatch.toml && gradwatch run --config {out}/gradwatch.toml");
}
