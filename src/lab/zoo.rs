//! The architecture zoo's report (`gradwatch bench --zoo DIR`, `docs/results/compiler-zoo.md`):
//! per fixture of `scripts/make-zoo.py`, the features' errors against the float64 PyTorch
//! goldens and, per feature preset, the gradient graph's cost relative to the forward pass.
//! `tests/it/zoo.rs` runs the same check without the timings.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use ndarray::{ArrayD, IxDyn};

use crate::grad::{self, CompileOptions, Preset};
use crate::onnx;
use crate::runtime::timing::{alternate, median, pattern_batch, Rounds};
use crate::runtime::{ModelSession, RuntimeOptions};
use crate::setup::cost::{auto_pick, COST_BUDGET};

/// The export forms of the zoo (`scripts/make-zoo.py`): every architecture has the first two;
/// a subset also has the fixed-batch (`static`), opset-11 and plain `torch.onnx.export(model,
/// (x,), path)` (`default_static`: dynamo, batch fixed at 1) exports.
pub const ZOO_FORMS: [&str; 5] = ["bn", "default", "static", "opset11", "default_static"];

/// One zoo fixture compiled and run against its float64 goldens.
#[derive(Clone, Debug)]
pub struct ZooCheck {
    /// The compiled graph.
    pub compiled: grad::Compiled,
    /// The fixture as read (the report times its forward pass and other presets).
    pub model: onnx::ModelProto,
    /// Golden feature names (ONNX initializers) that the compiler did not produce.
    pub missing: Vec<String>,
    /// Compiled features with no golden.
    pub extra: Vec<String>,
    /// Relative error of every (sample, feature) pair, `|got - want| / |want|`.
    pub rel_errors: Vec<f64>,
    /// The worst relative error, its feature and sample.
    pub worst: (f64, String, usize),
    /// Largest logit error relative to `max(1, max |logit|)`.
    pub logit_err: f64,
}

impl ZooCheck {
    /// The median relative feature error.
    pub fn median(&self) -> f64 {
        if self.rel_errors.is_empty() {
            return f64::NAN;
        }
        median(self.rel_errors.clone())
    }
}

/// The architectures in a zoo directory (sub-directories with a `bn.onnx` or `default.onnx`).
pub fn zoo_archs(dir: &Path) -> Result<Vec<String>> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok())
        .filter(|e| ZOO_FORMS.iter().any(|f| e.path().join(format!("{f}.onnx")).exists()))
        .filter_map(|e| e.file_name().to_str().map(String::from))
        .collect();
    v.sort();
    Ok(v)
}

/// The zoo's shared input batch (NCHW), transposed to NHWC for a model whose per-sample input
/// is `[H, W, 3]`.
fn zoo_input(dir: &Path, input_shape: &[usize]) -> Result<ArrayD<f32>> {
    let x: ArrayD<f32> = ndarray_npy::read_npy(dir.join("input.npy")).context("reading the zoo's input.npy")?;
    let nhwc = input_shape.len() == 3 && input_shape[2] == 3 && input_shape[0] != 3;
    Ok(if nhwc { x.permuted_axes(IxDyn(&[0, 2, 3, 1])).as_standard_layout().to_owned() } else { x })
}

/// Compiles the fixture `dir/arch/form.onnx`, runs it through ONNX Runtime on the zoo's input
/// and compares features (by name) and logits with the goldens of `scripts/make-zoo.py`.
pub fn check_zoo_fixture(dir: &Path, arch: &str, form: &str, opts: &RuntimeOptions) -> Result<ZooCheck> {
    let base = dir.join(arch);
    let model = onnx::load(&base.join(format!("{form}.onnx")))?;
    let o = CompileOptions { tensorrt: opts.uses_tensorrt(), ..Default::default() };
    let compiled = grad::compile(&model, &o).with_context(|| format!("compiling {arch}/{form}"))?;
    let names: Vec<String> = serde_json::from_str(&std::fs::read_to_string(base.join(format!("{form}.names.json")))?)?;
    let want: ndarray::Array2<f64> = ndarray_npy::read_npy(base.join(format!("{form}.features.npy")))?;
    let want_logits: ndarray::Array2<f64> = ndarray_npy::read_npy(base.join(format!("{form}.logits.npy")))?;
    let x = zoo_input(dir, &compiled.input_shape)?;
    let got = crate::runtime::GradSession::new(&compiled, opts)?.run(x.view())?;
    let missing: Vec<String> = names.iter().filter(|n| !compiled.features.contains(n)).cloned().collect();
    let extra: Vec<String> = compiled.features.iter().filter(|n| !names.contains(n)).cloned().collect();
    let mut rel_errors = Vec::new();
    let mut worst = (0.0, String::new(), 0);
    for (j, name) in compiled.features.iter().enumerate() {
        let Some(i) = names.iter().position(|n| n == name) else { continue };
        for k in 0..want.nrows() {
            let (g, w) = (got.features[[k, j]] as f64, want[[k, i]]);
            let rel = (g - w).abs() / w.abs().max(1e-30);
            if rel > worst.0 || rel.is_nan() {
                worst = (rel, name.clone(), k);
            }
            rel_errors.push(rel);
        }
    }
    let scale = want_logits.iter().fold(1.0f64, |a, v| a.max(v.abs()));
    let logit_err =
        got.logits.iter().zip(want_logits.iter()).map(|(&a, &b)| (a as f64 - b).abs()).fold(0.0, f64::max) / scale;
    Ok(ZooCheck { compiled, model, missing, extra, rel_errors, worst, logit_err })
}

/// How [`report`] times each fixture.
#[derive(Clone, Debug)]
pub struct Timing {
    /// Batch size of the timed runs.
    pub batch: usize,
    /// Seconds of timed runs per measurement.
    pub seconds: f64,
    /// Alternating rounds (forward, then each preset); each ratio is the median of its rounds.
    pub rounds: usize,
    /// The presets timed, one ratio column each.
    pub presets: Vec<Preset>,
}

/// Writes the report table to `out`, one row per architecture and export form, then how many
/// fixtures each preset (and `init --preset auto`'s pick, when both are timed) keeps at or
/// under [`COST_BUDGET`]; returns 1 when a fixture is refused (its row says why), else 0.
pub fn report(dir: &Path, t: &Timing, opts: &RuntimeOptions, out: &mut dyn Write) -> Result<i32> {
    let batch = t.batch;
    let auto = Preset::ALL.iter().all(|p| t.presets.contains(p));
    let mut cols: String =
        t.presets.iter().map(|p| format!(" grad/forward at batch {batch}, `{}` |", p.name())).collect();
    if auto {
        cols.push_str(" `init --preset auto` |");
    }
    let ncols = t.presets.len() + usize::from(auto);
    writeln!(
        out,
        "| architecture | export | features | max rel. error | median rel. error | logits rel. error |{cols}"
    )?;
    writeln!(out, "|---|---|---|---|---|---|{}", "---|".repeat(ncols))?;
    let mut failed = 0;
    // Per column: fixtures timed, and those at or under the budget.
    let mut within = vec![(0usize, 0usize); ncols];
    for arch in zoo_archs(dir)? {
        for form in ZOO_FORMS {
            let path = dir.join(&arch).join(format!("{form}.onnx"));
            if !path.exists() {
                continue;
            }
            let check = match check_zoo_fixture(dir, &arch, form, opts) {
                Ok(c) => c,
                Err(e) => {
                    failed += 1;
                    let blank = " |".repeat(ncols);
                    writeln!(
                        out,
                        "| {arch} | {form} | refused: {} | | | |{blank}",
                        format!("{e:#}").replace('|', "/")
                    )?;
                    continue;
                }
            };
            let ratios = time_fixture(&check, t, opts)?;
            let ratio = |i: usize| *ratios[i].as_ref().unwrap_or(&f64::NAN);
            let mut cells = String::new();
            let mut count = |col: usize, r: f64| {
                within[col].0 += 1;
                within[col].1 += usize::from(r <= COST_BUDGET);
            };
            for (i, r) in ratios.iter().enumerate() {
                match r {
                    Ok(r) => {
                        count(i, *r);
                        cells.push_str(&format!(" {r:.2}x |"));
                    }
                    Err(e) => cells.push_str(&format!(" {e} |")),
                }
            }
            if auto {
                // In auto's order, whatever the order of --preset.
                let column = |p: Preset| t.presets.iter().position(|&q| q == p);
                let timed = Preset::ALL.iter().filter_map(|&p| column(p).map(|i| (p, ratio(i))));
                match auto_pick(timed).and_then(column) {
                    Some(i) => {
                        count(ncols - 1, ratio(i));
                        cells.push_str(&format!(" `{}` {:.2}x |", t.presets[i].name(), ratio(i)));
                    }
                    None => cells.push_str(" none timed |"),
                }
            }
            let note = if check.missing.is_empty() && check.extra.is_empty() {
                String::new()
            } else {
                format!(" (missing {:?}, extra {:?})", check.missing, check.extra)
            };
            writeln!(
                out,
                "| {arch} | {form} | {}{note} | {:.1e} | {:.1e} | {:.1e} |{cells}",
                check.compiled.features.len(),
                check.worst.0,
                check.median(),
                check.logit_err,
            )?;
        }
    }
    let names = t.presets.iter().map(|p| format!("`{}`", p.name())).chain(auto.then(|| "`auto`".to_string()));
    let counts: Vec<String> = names.zip(&within).map(|(n, (all, ok))| format!("{n} {ok} of {all}")).collect();
    writeln!(out, "\nAt or under {COST_BUDGET}x the forward pass: {}.", counts.join(", "))?;
    Ok(if failed > 0 { 1 } else { 0 })
}

/// One ratio per preset: the median over rounds of the graph's time per frame over the forward
/// pass's in the same round (`full` is the graph [`check_zoo_fixture`] compiled), or why that
/// preset's graph could not be built.
fn time_fixture(check: &ZooCheck, t: &Timing, opts: &RuntimeOptions) -> Result<Vec<Result<f64, String>>> {
    let mut fwd = ModelSession::new(&onnx::encode(&grad::forward_model(&check.model)?), opts)?;
    let mut graphs: Vec<Option<ModelSession>> = Vec::new();
    let mut cells: Vec<Option<String>> = Vec::new();
    for &p in &t.presets {
        let encoded = if p == Preset::Full {
            Ok(onnx::encode(&check.compiled.model))
        } else {
            let o = CompileOptions { tensorrt: opts.uses_tensorrt(), ..CompileOptions::preset(p) };
            grad::compile(&check.model, &o).map(|c| onnx::encode(&c.model))
        };
        match encoded {
            Ok(bytes) => {
                graphs.push(Some(ModelSession::new(&bytes, opts)?));
                cells.push(None);
            }
            Err(e) => {
                graphs.push(None);
                cells.push(Some(format!("refused: {}", format!("{e}").replace('|', "/"))));
            }
        }
    }
    let x = pattern_batch(t.batch, &check.compiled.input_shape);
    let mut sessions: Vec<&mut ModelSession> = graphs.iter_mut().flatten().collect();
    let plan = Rounds { rounds: t.rounds, seconds: t.seconds, min_runs: 3, one_round_over_ms: f64::INFINITY };
    let timed = alternate(&mut fwd, &mut sessions, &check.compiled.input_name, &x, plan)?;
    let mut ratios = (0..timed.graphs.len()).map(|i| timed.ratio(i));
    // The built graphs were timed in order; an unbuilt one keeps its reason.
    Ok(cells.into_iter().map(|c| c.map_or_else(|| Ok(ratios.next().unwrap_or(f64::NAN)), Err)).collect())
}
