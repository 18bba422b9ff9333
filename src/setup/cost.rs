//! Step 3 of `gradwatch init`, before the calibration: what each feature preset's gradient graph
//! costs on this machine, relative to the classifier's own forward pass at batch [`COST_BATCH`].
//! The project's aim is at most [`COST_BUDGET`] times the forward pass. With `--preset auto`
//! (the default) `init` calibrates the first preset, in [`Preset::ALL`] order, that fits it on
//! this machine ([`PresetChoice::resolve`]): `full` where it fits, `fast` for the depthwise and
//! pooling-heavy edge CNNs whose `full` graph costs more (`docs/results/compiler-zoo.md`), `head`
//! where even `fast` does not (one whose last stage holds most of the network, on a slow
//! machine). A preset named on the command line is kept, with a warning when it is over and
//! another fits.

use std::fmt::Write as _;

use super::SetupError;
use crate::grad::{self, CompileOptions, Preset};
use crate::model::LoadedModel;
use crate::runtime::timing::{alternate, pattern_batch, Rounds};
use crate::runtime::{ModelSession, RuntimeOptions};

/// The batch the costs are measured at (the project's cost target is stated at it).
pub const COST_BATCH: usize = 16;
/// Gradient graph / forward pass the project aims at.
pub const COST_BUDGET: f64 = 6.0;
/// A forward batch slower than this (ms) is timed in one round only.
const ONE_ROUND_MS: f64 = 250.0;

/// What `--preset` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresetChoice {
    /// The first preset, in [`Preset::ALL`] order (most features first), whose gradient graph
    /// costs at most [`COST_BUDGET`] times the forward pass here; the cheapest when none does,
    /// `full` when none could be timed.
    Auto,
    /// This preset, whatever it costs.
    Only(Preset),
}

impl std::str::FromStr for PresetChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(PresetChoice::Auto),
            _ => s
                .parse()
                .map(PresetChoice::Only)
                .map_err(|_| format!("unknown preset '{s}' (expected auto, full, fast or head)")),
        }
    }
}

impl PresetChoice {
    /// The preset to compile before the costs are known (the one `auto` prefers).
    pub fn first(self) -> Preset {
        match self {
            PresetChoice::Auto => Preset::ALL[0],
            PresetChoice::Only(p) => p,
        }
    }

    /// The preset to calibrate, given what each costs (`None` when timing failed).
    pub fn resolve(self, cost: Option<&Cost>) -> Preset {
        let (PresetChoice::Auto, Some(cost)) = (self, cost) else { return self.first() };
        auto_pick(cost.presets.iter().map(|c| (c.preset, c.ratio))).unwrap_or(self.first())
    }
}

/// `auto`'s rule over (preset, gradient graph / forward) pairs in [`Preset::ALL`] order: the
/// first at most [`COST_BUDGET`], else the cheapest; `None` when none was timed (NaN).
pub fn auto_pick(ratios: impl IntoIterator<Item = (Preset, f64)>) -> Option<Preset> {
    let timed: Vec<(Preset, f64)> = ratios.into_iter().filter(|(_, r)| r.is_finite()).collect();
    timed
        .iter()
        .find(|&&(_, r)| r <= COST_BUDGET)
        .or_else(|| timed.iter().min_by(|a, b| a.1.total_cmp(&b.1)))
        .map(|&(p, _)| p)
}

/// How long [`measure`] times each graph.
#[derive(Clone, Copy, Debug)]
pub struct CostTiming {
    /// Seconds of timed runs per graph and round (at least one run each).
    pub seconds: f64,
    /// Alternating rounds (forward, then each preset); the ratio is the median of the rounds'.
    /// One when a forward batch takes over 250 ms.
    pub rounds: usize,
}

impl Default for CostTiming {
    fn default() -> Self {
        CostTiming { seconds: 0.3, rounds: 3 }
    }
}

/// One preset's cost.
#[derive(Clone, Debug)]
pub struct PresetCost {
    /// The preset.
    pub preset: Preset,
    /// Its features (gradient norms and statistics), or why its graph could not be built.
    pub features: Result<usize, String>,
    /// Gradient graph time / forward time per frame, median over rounds (NaN when not built).
    pub ratio: f64,
}

/// What every preset costs, and the one `init` calibrates.
#[derive(Clone, Debug)]
pub struct Cost {
    /// The forward pass, milliseconds per frame at [`COST_BATCH`] (median over rounds).
    pub forward_ms: f64,
    /// Each preset, in [`Preset::ALL`] order.
    pub presets: Vec<PresetCost>,
    /// The preset being calibrated: [`measure`] sets the one it was given compiled, `init`
    /// the one [`PresetChoice::resolve`] picks.
    pub chosen: Preset,
}

/// Times the forward pass and each preset's gradient graph on a fixed batch of
/// [`COST_BATCH`] frames, in alternating rounds. `model.compiled` is the `chosen` preset's graph;
/// the others are compiled here with `input_size` (the size a symbolic-size model is set up for).
pub fn measure(
    model: &LoadedModel,
    chosen: Preset,
    input_size: Option<(usize, usize)>,
    rt: &RuntimeOptions,
    timing: CostTiming,
) -> Result<Cost, SetupError> {
    let forward = grad::forward_model(&model.model).map_err(|e| SetupError::Model(e.into()))?;
    let mut fwd = ModelSession::new(&crate::onnx::encode(&forward), rt)?;
    let mut graphs: Vec<Option<ModelSession>> = Vec::new();
    let mut presets = Vec::new();
    for p in Preset::ALL {
        // (features, the graph encoded)
        let compiled = if p == chosen {
            Ok((model.compiled.features.len(), crate::onnx::encode(&model.compiled.model)))
        } else {
            let o = CompileOptions { input_size, tensorrt: rt.uses_tensorrt(), ..CompileOptions::preset(p) };
            grad::compile(&model.model, &o)
                .map(|c| (c.features.len(), crate::onnx::encode(&c.model)))
                .map_err(|e| e.to_string())
        };
        // A preset ONNX Runtime cannot load is a row that says so, not a failed init.
        let built = compiled.and_then(|(f, bytes)| Ok((f, ModelSession::new(&bytes, rt).map_err(|e| e.to_string())?)));
        let (features, session) = match built {
            Ok((f, s)) => (Ok(f), Some(s)),
            Err(e) => (Err(e), None),
        };
        graphs.push(session);
        presets.push(PresetCost { preset: p, features, ratio: f64::NAN });
    }
    let x = pattern_batch(COST_BATCH, &model.compiled.input_shape);
    let mut sessions: Vec<&mut ModelSession> = graphs.iter_mut().flatten().collect();
    let plan = Rounds { rounds: timing.rounds, seconds: timing.seconds, min_runs: 1, one_round_over_ms: ONE_ROUND_MS };
    let mut timed = alternate(&mut fwd, &mut sessions, &model.compiled.input_name, &x, plan)?;
    // A ratio near the budget decides `auto`'s choice: as many rounds again, so that one busy
    // round moves it less (a slow model timed in one round is left at that).
    if timed.forward.len() > 1 && (0..timed.graphs.len()).any(|i| near_budget(timed.ratio(i))) {
        timed.extend(alternate(&mut fwd, &mut sessions, &model.compiled.input_name, &x, plan)?);
    }
    // The built graphs were timed in order.
    let mut ratios = (0..timed.graphs.len()).map(|i| timed.ratio(i));
    for p in presets.iter_mut().filter(|p| p.features.is_ok()) {
        p.ratio = ratios.next().unwrap_or(f64::NAN);
    }
    Ok(Cost { forward_ms: timed.forward_ms(), presets, chosen })
}

/// Within 15 % of [`COST_BUDGET`] either way: where this machine's run-to-run noise can flip
/// `auto`'s choice.
fn near_budget(ratio: f64) -> bool {
    (COST_BUDGET / 1.15..=COST_BUDGET * 1.15).contains(&ratio)
}

impl Cost {
    /// The preset's cost, when its graph was built and timed.
    pub fn ratio(&self, p: Preset) -> Option<f64> {
        self.presets.iter().find(|c| c.preset == p).map(|c| c.ratio).filter(|r| r.is_finite())
    }

    /// One line for the terminal: every preset's cost.
    pub fn summary(&self) -> String {
        let each: Vec<String> = self
            .presets
            .iter()
            .map(|c| match (&c.features, self.ratio(c.preset)) {
                (Ok(f), Some(r)) => format!("{} {r:.1}x ({f} features)", c.preset.name()),
                (Err(e), _) => format!("{} not built ({e})", c.preset.name()),
                (Ok(_), None) => format!("{} not timed", c.preset.name()),
            })
            .collect();
        format!(
            "gradient graph cost on this machine, times the forward pass ({:.2} ms/frame) at batch {COST_BATCH}: {}",
            self.forward_ms,
            each.join(", ")
        )
    }

    /// Why `auto` did not take the preset it prefers, when it did not (for `--preset auto` only:
    /// a named preset is the user's choice).
    pub fn auto_note(&self) -> Option<String> {
        let first = PresetChoice::Auto.first();
        if self.chosen == first {
            return None;
        }
        // Every preset auto preferred to the one it took, and why it was passed over.
        let passed: Vec<String> = Preset::ALL
            .iter()
            .take_while(|&&p| p != self.chosen)
            .map(|&p| match self.ratio(p) {
                Some(r) => format!("`{}` costs {r:.1}x", p.name()),
                None => format!("`{}` could not be timed", p.name()),
            })
            .collect();
        Some(format!(
            "calibrating the `{}` preset (--preset auto): {} the forward pass here, against the {COST_BUDGET}x \
             gradwatch aims at; `--preset {}` calibrates it anyway (docs/guide/presets.md: what each keeps)",
            self.chosen.name(),
            passed.join(", "),
            first.name()
        ))
    }

    /// A warning when the chosen preset costs more than [`COST_BUDGET`] and another fits it.
    pub fn advice(&self) -> Option<String> {
        let mine = self.ratio(self.chosen)?;
        if mine <= COST_BUDGET {
            return None;
        }
        // The one auto would take: the first that fits, so the most features that do.
        let other = self
            .presets
            .iter()
            .filter(|c| c.preset != self.chosen)
            .filter_map(|c| self.ratio(c.preset).map(|r| (c.preset, r)))
            .find(|&(_, r)| r <= COST_BUDGET);
        let tail = match other {
            Some((p, r)) => format!(
                "`--preset {}` costs {r:.1}x (docs/guide/presets.md: what it keeps); rerun with it for a device \
                 without headroom",
                p.name()
            ),
            None => "no preset fits it on this machine".into(),
        };
        Some(format!(
            "the `{}` gradient graph costs {mine:.1}x the classifier's forward pass here ({:.2} ms a frame), over the \
             {COST_BUDGET}x gradwatch aims at; {tail}",
            self.chosen.name(),
            mine * self.forward_ms
        ))
    }

    /// `report.md`'s cost section.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "Gradient graph time / the classifier's forward time per frame, batch {COST_BATCH}, this machine \
             (forward {:.2} ms/frame; the median of alternating rounds: expect +-30 % on a busy machine). gradwatch \
             aims at {COST_BUDGET}x or less.\n\n| preset | features | cost | |\n|---|---:|---:|---|\n",
            self.forward_ms
        );
        for c in &self.presets {
            let mark = if c.preset == self.chosen { "calibrated" } else { "" };
            let (f, r) = match (&c.features, self.ratio(c.preset)) {
                (Ok(f), Some(r)) => (f.to_string(), format!("{r:.2}x")),
                (Ok(f), None) => (f.to_string(), "-".into()),
                (Err(e), _) => ("-".into(), format!("not built: {}", e.replace('|', "/"))),
            };
            let _ = writeln!(md, "| `{}` | {f} | {r} | {mark} |", c.preset.name());
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cost(full: f64, fast: f64, chosen: Preset) -> Cost {
        Cost {
            forward_ms: 0.5,
            presets: vec![
                PresetCost { preset: Preset::Full, features: Ok(62), ratio: full },
                PresetCost { preset: Preset::Fast, features: Ok(25), ratio: fast },
            ],
            chosen,
        }
    }

    #[test]
    fn advice_only_when_over_budget_and_another_preset_fits() {
        assert!(cost(5.9, 1.5, Preset::Full).advice().is_none());
        let a = cost(11.2, 2.2, Preset::Full).advice().unwrap();
        assert!(
            a.contains("11.2x") && a.contains("(5.60 ms a frame)") && a.contains("`--preset fast` costs 2.2x"),
            "{a}"
        );
        let none = cost(11.2, 7.0, Preset::Full).advice().unwrap();
        assert!(none.contains("no preset fits"), "{none}");
        // Chosen fast and over: full is no help.
        assert!(cost(12.0, 6.5, Preset::Fast).advice().unwrap().contains("no preset fits"));
        // Of two that fit, the one with more features (auto's order), not the cheaper.
        let mut three = cost(12.4, 2.6, Preset::Full);
        three.presets.push(PresetCost { preset: Preset::Head, features: Ok(5), ratio: 1.4 });
        assert!(three.advice().unwrap().contains("`--preset fast` costs 2.6x"), "{:?}", three.advice());
        // A preset that could not be timed gives no advice either way.
        assert!(cost(f64::NAN, 2.0, Preset::Full).advice().is_none());
    }

    #[test]
    fn auto_takes_full_where_it_fits_else_the_first_that_does_else_the_cheapest() {
        let auto = PresetChoice::Auto;
        assert_eq!(auto.resolve(Some(&cost(6.0, 1.5, Preset::Full))), Preset::Full);
        assert_eq!(auto.resolve(Some(&cost(6.1, 1.5, Preset::Full))), Preset::Fast);
        assert_eq!(auto.resolve(Some(&cost(9.0, 7.0, Preset::Full))), Preset::Fast, "none fits: the cheapest");
        let mut three = cost(9.0, 6.3, Preset::Full);
        three.presets.push(PresetCost { preset: Preset::Head, features: Ok(4), ratio: 1.3 });
        assert_eq!(auto.resolve(Some(&three)), Preset::Head, "fast over: head");
        three.presets[1].ratio = 5.9;
        assert_eq!(auto.resolve(Some(&three)), Preset::Fast, "fast fits: fast before head");
        assert_eq!(auto.resolve(Some(&cost(f64::NAN, 2.0, Preset::Full))), Preset::Fast, "full untimed");
        assert_eq!(auto.resolve(Some(&cost(f64::NAN, f64::NAN, Preset::Full))), Preset::Full);
        assert_eq!(auto.resolve(None), Preset::Full, "no timing: the paper's features");
        // A preset named on the command line is kept whatever it costs.
        let full = PresetChoice::Only(Preset::Full);
        assert_eq!(full.resolve(Some(&cost(11.0, 1.5, Preset::Full))), Preset::Full);
        assert_eq!("auto".parse::<PresetChoice>(), Ok(auto));
        assert_eq!("fast".parse::<PresetChoice>(), Ok(PresetChoice::Only(Preset::Fast)));
        assert!("quick".parse::<PresetChoice>().unwrap_err().contains("auto, full, fast or head"));
    }

    #[test]
    fn ratios_near_the_budget_are_timed_again() {
        assert!(near_budget(6.0) && near_budget(5.3) && near_budget(6.8));
        assert!(!near_budget(5.1) && !near_budget(7.0) && !near_budget(f64::NAN));
    }

    #[test]
    fn auto_says_why_it_left_full() {
        assert!(cost(5.0, 1.5, Preset::Full).auto_note().is_none());
        let note = cost(11.25, 1.5, Preset::Fast).auto_note().unwrap();
        assert!(
            note.contains("`fast` preset") && note.contains("`full` costs 11.2x") && note.contains("--preset full"),
            "{note}"
        );
        assert!(cost(f64::NAN, 1.5, Preset::Fast).auto_note().unwrap().contains("`full` could not be timed"));
        let mut c = cost(9.5, 6.4, Preset::Head);
        c.presets.push(PresetCost { preset: Preset::Head, features: Ok(4), ratio: 1.3 });
        let note = c.auto_note().unwrap();
        assert!(note.contains("`head` preset") && note.contains("`full` costs 9.5x, `fast` costs 6.4x"), "{note}");
    }

    #[test]
    fn markdown_marks_the_calibrated_preset_and_unbuilt_ones() {
        let mut c = cost(7.25, 1.5, Preset::Fast);
        c.presets[0].features = Err("no | stage".into());
        c.presets[0].ratio = f64::NAN;
        let md = c.markdown();
        assert!(md.contains("| `full` | - | not built: no / stage |  |"), "{md}");
        assert!(md.contains("| `fast` | 25 | 1.50x | calibrated |"), "{md}");
        assert!(c.summary().contains("full not built (no | stage), fast 1.5x (25 features)"), "{}", c.summary());
    }
}
