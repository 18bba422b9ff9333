//! The `risk` detector: gradient features (log + standardised) and, optionally, forward-only
//! signals of the logits (standardised, no log) fed to a seed ensemble of the paper's MLP,
//! scored by the members' mean logit; and the training targets that decide what it learns
//! to flag ([`Target`]).
//!
//! One MLP's ranking moves visibly when the features move by 1e-3 (its decision surface
//! depends on the initialisation); the mean of K members trained from different seeds on the
//! same data is smoother.

use ndarray::{concatenate, Array2, Axis};

use super::forward::{signals, signals_batch, ForwardSignal};
use super::{DetectorError, LogStandardizer, Mlp, MlpConfig, Standardizer, TrainReport};

/// What a detector is trained to flag (label 1). Evaluation is the same for every target; the
/// choice only changes the training labels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// The paper's: every unfamiliar image (OOD sets and corrupted copies) is 1, every clean
    /// familiar image 0, whatever the classifier makes of it.
    Novelty,
    /// GradTrust-style: 1 when the classifier is wrong or the image is OOD; corrupted images
    /// the classifier still gets right are 0, clean familiar images it gets wrong are 1.
    Harm,
    /// Novelty OR wrong: OOD and corrupted images are 1, and so are the clean familiar images
    /// the classifier gets wrong.
    Union,
}

/// Where a training row comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A clean familiar image.
    Familiar,
    /// A synthetic corruption of a familiar image (its true class is the source's).
    Corrupted,
    /// An out-of-distribution image (no true class among the classifier's).
    Ood,
    /// A change the camera may well see in normal service (a lighting change): unfamiliar
    /// only where the classifier gets it wrong, so the detector learns when it is harmless.
    Benign,
}

impl Target {
    /// Every target, in a fixed order.
    pub const ALL: [Target; 3] = [Target::Novelty, Target::Harm, Target::Union];

    /// The name used in calibration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Target::Novelty => "novelty",
            Target::Harm => "harm",
            Target::Union => "union",
        }
    }

    /// Whether the labels depend on the classifier being right (true classes are needed).
    pub fn needs_labels(self) -> bool {
        self != Target::Novelty
    }

    /// The training label (0 or 1) of a row from `origin`; `wrong` says whether the classifier's
    /// top-1 prediction is wrong (`None`: unknown, treated as right; OOD rows ignore it).
    pub fn label(self, origin: Origin, wrong: Option<bool>) -> u8 {
        let wrong = wrong.unwrap_or(false);
        let y = match (self, origin) {
            (_, Origin::Ood) => true,
            (Target::Novelty, o) => o == Origin::Corrupted,
            (Target::Harm, _) => wrong,
            (Target::Union, o) => o == Origin::Corrupted || wrong,
        };
        u8::from(y)
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| format!("unknown target '{s}' (expected novelty, harm or union)"))
    }
}

/// Rows with their training labels: `[N, P]` gradient features, `[N, C]` logits, the
/// image-quality measures when measured, N labels.
#[derive(Clone, Debug)]
pub struct LabelledRows {
    /// Gradient features.
    pub features: Array2<f32>,
    /// Logits (may have 0 columns when no forward signal is used).
    pub logits: Array2<f32>,
    /// `[N, Q]` image-quality measures ([`crate::quality::measure`] of the image the model
    /// saw), needed when the ensemble uses them.
    pub quality: Option<Array2<f32>>,
    /// 0 or 1 per row.
    pub labels: Vec<u8>,
}

/// The familiar training rows an [`Ensemble`]'s standardisers are fitted on.
#[derive(Clone, Copy, Debug)]
pub struct Reference<'a> {
    /// Gradient features `[N, P]`.
    pub features: &'a Array2<f32>,
    /// Logits `[N, C]`.
    pub logits: &'a Array2<f32>,
    /// Image-quality measures `[N, Q]`, needed when the ensemble uses them.
    pub quality: Option<&'a Array2<f32>>,
}

/// One frame as a detector reads it: its gradient features, logits and (when measured)
/// image-quality measures.
#[derive(Clone, Copy, Debug)]
pub struct FrameInputs<'a> {
    /// Gradient features.
    pub features: &'a [f32],
    /// Logits.
    pub logits: &'a [f32],
    /// Image-quality measures (`None`: not measured; an ensemble that uses them scores NaN).
    pub quality: Option<&'a [f32]>,
}

impl<'a> FrameInputs<'a> {
    /// A frame without image-quality measures.
    pub fn new(features: &'a [f32], logits: &'a [f32]) -> Self {
        FrameInputs { features, logits, quality: None }
    }

    /// The same frame with its image-quality measures.
    pub fn with_quality(self, quality: Option<&'a [f32]>) -> Self {
        FrameInputs { quality, ..self }
    }
}

/// How to train an [`Ensemble`].
#[derive(Clone, Debug, PartialEq)]
pub struct EnsembleConfig {
    /// Recorded in the model (the labels are the caller's).
    pub target: Target,
    /// Forward signals appended to the gradient columns.
    pub forward: Vec<ForwardSignal>,
    /// Number of members (>= 1); member `k` trains with seed `mlp.seed + k`.
    pub members: usize,
    /// MLP hyper-parameters of every member.
    pub mlp: MlpConfig,
    /// Whether the image-quality measures join the inputs (two-sided: `|z|` against the
    /// reference rows, so a frame too sharp or too dark counts like one too blurred or too
    /// bright).
    pub quality: bool,
}

/// Gradient (+ forward) columns -> seed ensemble of MLPs; the score is the mean member logit.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ensemble {
    /// What the members were trained to flag.
    pub target: Target,
    /// Forward signals after the gradient columns, in order (empty: gradients only).
    #[serde(default)]
    pub forward: Vec<ForwardSignal>,
    /// Logits per frame the forward signals were fitted on (0 when `forward` is empty).
    #[serde(default)]
    pub classes: usize,
    /// Log + standardisation of the gradient columns.
    pub normalize: LogStandardizer,
    /// Standardisation of the forward columns (present iff `forward` is not empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_normalize: Option<Standardizer>,
    /// Standardisation of the image-quality measures, whose `|z|` follow the forward columns
    /// (absent: the ensemble does not use them; files from before they existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality_normalize: Option<Standardizer>,
    /// The members; each takes `normalize.dim() + forward.len()` (+ the quality measures)
    /// inputs.
    pub members: Vec<Mlp>,
}

/// Trains `k` MLPs on the same data with seeds `cfg.seed, cfg.seed + 1, ...`.
pub fn train_members(
    xt: &Array2<f32>,
    yt: &[u8],
    xv: &Array2<f32>,
    yv: &[u8],
    cfg: &MlpConfig,
    k: usize,
) -> Result<(Vec<Mlp>, Vec<TrainReport>), DetectorError> {
    if k == 0 {
        return Err(DetectorError::Config("an ensemble needs at least 1 member".into()));
    }
    let mut members = Vec::with_capacity(k);
    let mut reports = Vec::with_capacity(k);
    for i in 0..k {
        let c = MlpConfig { seed: cfg.seed.wrapping_add(i as u64), ..cfg.clone() };
        let (m, r) = Mlp::train(xt, yt, xv, yv, &c)?;
        members.push(m);
        reports.push(r);
    }
    Ok((members, reports))
}

/// Mean of the members' logits for one standardised row (NaN when any member gives NaN or
/// there is no member). With one member it is that member's logit exactly.
pub fn mean_logit(members: &[Mlp], z: &[f32]) -> f32 {
    if members.is_empty() {
        return f32::NAN;
    }
    let sum: f64 = members.iter().map(|m| f64::from(m.logit_row(z))).sum();
    (sum / members.len() as f64) as f32
}

impl Ensemble {
    /// Fits the standardisers on the reference rows (familiar training images), then trains
    /// `cfg.members` MLPs on `train`, each early-stopping on `val`.
    pub fn train(
        reference: Reference<'_>,
        train: &LabelledRows,
        val: &LabelledRows,
        cfg: &EnsembleConfig,
    ) -> Result<(Ensemble, Vec<TrainReport>), DetectorError> {
        let normalize = LogStandardizer::fit(reference.features)?;
        let forward_normalize = if cfg.forward.is_empty() {
            None
        } else {
            Some(Standardizer::fit(&signals_batch(&cfg.forward, reference.logits))?)
        };
        let quality_normalize = match (cfg.quality, reference.quality) {
            (false, _) => None,
            (true, Some(q)) => Some(Standardizer::fit(q)?),
            (true, None) => {
                return Err(DetectorError::Config(
                    "the ensemble uses image-quality measures but the reference rows carry none".into(),
                ))
            }
        };
        let mut e = Ensemble {
            target: cfg.target,
            forward: cfg.forward.clone(),
            classes: if cfg.forward.is_empty() { 0 } else { reference.logits.ncols() },
            normalize,
            forward_normalize,
            quality_normalize,
            members: Vec::new(),
        };
        let xt = e.inputs(&train.features, &train.logits, train.quality.as_ref())?;
        let xv = e.inputs(&val.features, &val.logits, val.quality.as_ref())?;
        let (members, reports) = train_members(&xt, &train.labels, &xv, &val.labels, &cfg.mlp, cfg.members)?;
        e.members = members;
        e.validate()?;
        Ok((e, reports))
    }

    /// Number of gradient features it expects.
    pub fn dim(&self) -> usize {
        self.normalize.dim()
    }

    /// Whether it reads the image-quality measures.
    pub fn uses_quality(&self) -> bool {
        self.quality_normalize.is_some()
    }

    /// Checks a (deserialised) ensemble: valid standardisers and members, consistent widths.
    pub fn validate(&self) -> Result<(), DetectorError> {
        self.normalize.validate()?;
        let mut inputs = self.dim() + self.forward.len();
        if let Some(q) = &self.quality_normalize {
            q.validate()?;
            inputs += q.dim();
        }
        match (&self.forward_normalize, self.forward.is_empty()) {
            (None, true) => {}
            (Some(f), false) => {
                f.validate()?;
                if f.dim() != self.forward.len() {
                    return Err(DetectorError::InvalidModel(format!(
                        "{} forward signals but the forward standardizer has {} columns",
                        self.forward.len(),
                        f.dim()
                    )));
                }
                if self.classes == 0 {
                    return Err(DetectorError::InvalidModel("forward signals need classes >= 1".into()));
                }
            }
            _ => {
                return Err(DetectorError::InvalidModel(
                    "forward_normalize must be present exactly when forward signals are listed".into(),
                ))
            }
        }
        if self.members.is_empty() {
            return Err(DetectorError::InvalidModel("the ensemble has no members".into()));
        }
        for m in &self.members {
            m.validate()?;
            if m.inputs() != inputs {
                return Err(DetectorError::DimensionMismatch {
                    what: "ensemble member",
                    expected: inputs,
                    got: m.inputs(),
                });
            }
        }
        Ok(())
    }

    /// The standardised input row: gradient columns, then forward columns, then the quality
    /// measures' `|z|`. Errors on wrong lengths (features, logits when forward signals are
    /// used, quality when it is), missing quality and NaN.
    pub fn input_row(&self, frame: FrameInputs<'_>) -> Result<Vec<f32>, DetectorError> {
        let mut z = self.normalize.transform_row(frame.features)?;
        if let Some(f) = &self.forward_normalize {
            if frame.logits.len() != self.classes {
                return Err(DetectorError::DimensionMismatch {
                    what: "logits",
                    expected: self.classes,
                    got: frame.logits.len(),
                });
            }
            z.extend(f.transform_row(&signals(&self.forward, frame.logits))?);
        }
        if let Some(q) = &self.quality_normalize {
            let Some(m) = frame.quality else {
                return Err(DetectorError::DimensionMismatch { what: "quality measures", expected: q.dim(), got: 0 });
            };
            z.extend(q.transform_row(m)?.into_iter().map(f32::abs));
        }
        Ok(z)
    }

    /// [`input_row`](Self::input_row) for every row (`features`, `logits` and `quality`
    /// row-aligned).
    pub fn inputs(
        &self,
        features: &Array2<f32>,
        logits: &Array2<f32>,
        quality: Option<&Array2<f32>>,
    ) -> Result<Array2<f32>, DetectorError> {
        let mut parts = vec![self.normalize.transform(features)?];
        if let Some(f) = &self.forward_normalize {
            if logits.nrows() != features.nrows() || logits.ncols() != self.classes {
                return Err(DetectorError::DimensionMismatch {
                    what: "logits",
                    expected: self.classes,
                    got: if logits.nrows() == features.nrows() { logits.ncols() } else { 0 },
                });
            }
            parts.push(f.transform(&signals_batch(&self.forward, logits))?);
        }
        if let Some(q) = &self.quality_normalize {
            let m = quality.filter(|m| m.nrows() == features.nrows()).ok_or(DetectorError::DimensionMismatch {
                what: "quality measures",
                expected: q.dim(),
                got: 0,
            })?;
            parts.push(q.transform(m)?.mapv(f32::abs));
        }
        if parts.len() == 1 {
            return Ok(parts.remove(0));
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        concatenate(Axis(1), &views).map_err(|e| DetectorError::InvalidModel(format!("input columns do not fit: {e}")))
    }

    /// The mean member logit of every row; errors like [`inputs`](Self::inputs).
    pub fn members_logits(
        &self,
        features: &Array2<f32>,
        logits: &Array2<f32>,
        quality: Option<&Array2<f32>>,
    ) -> Result<Vec<f32>, DetectorError> {
        let x = self.inputs(features, logits, quality)?;
        Ok(x.outer_iter().map(|r| mean_logit(&self.members, &r.to_vec())).collect())
    }

    /// The score of one frame: the mean member logit (higher = more likely harmful /
    /// unfamiliar). NaN on any input error.
    pub fn logit_row(&self, frame: FrameInputs<'_>) -> f32 {
        match self.input_row(frame) {
            Ok(z) => mean_logit(&self.members, &z),
            Err(_) => f32::NAN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_labels_follow_the_table() {
        use Origin::*;
        use Target::*;
        let cases = [
            // (origin, wrong) -> novelty, harm, union
            ((Familiar, Some(false)), [0, 0, 0]),
            ((Familiar, Some(true)), [0, 1, 1]),
            ((Corrupted, Some(false)), [1, 0, 1]),
            ((Corrupted, Some(true)), [1, 1, 1]),
            ((Benign, Some(false)), [0, 0, 0]),
            ((Benign, Some(true)), [0, 1, 1]),
            ((Benign, None), [0, 0, 0]),
            ((Ood, None), [1, 1, 1]),
            ((Familiar, None), [0, 0, 0]),
        ];
        for ((o, w), want) in cases {
            for (t, y) in [Novelty, Harm, Union].into_iter().zip(want) {
                assert_eq!(t.label(o, w), y, "{t:?} {o:?} {w:?}");
            }
        }
        assert_eq!("harm".parse::<Target>().unwrap(), Harm);
        assert!("risk".parse::<Target>().is_err());
        assert!(!Novelty.needs_labels() && Harm.needs_labels() && Union.needs_labels());
    }

    fn data(n: usize, shift: f32, seed: u64) -> (Array2<f32>, Array2<f32>) {
        let mut r = crate::rng::SplitMix64::new(seed);
        let f = Array2::from_shape_fn((n, 3), |_| (1.0 + 0.3 * r.normal() as f32 + shift).exp());
        let l = Array2::from_shape_fn((n, 4), |(_, j)| if j == 0 { 4.0 - shift } else { r.normal() as f32 });
        (f, l)
    }

    fn rows(parts: &[(&Array2<f32>, &Array2<f32>, u8)]) -> LabelledRows {
        let cat = |v: Vec<ndarray::ArrayView2<f32>>| concatenate(Axis(0), &v).unwrap();
        LabelledRows {
            features: cat(parts.iter().map(|p| p.0.view()).collect()),
            logits: cat(parts.iter().map(|p| p.1.view()).collect()),
            quality: None,
            labels: parts.iter().flat_map(|p| std::iter::repeat_n(p.2, p.0.nrows())).collect(),
        }
    }

    #[test]
    fn ensemble_trains_scores_and_rejects_garbage() {
        let (ff, fl) = data(60, 0.0, 1);
        let (uf, ul) = data(60, 2.0, 2);
        let (vf, vl) = data(20, 0.0, 3);
        let (wf, wl) = data(20, 2.0, 4);
        let train = rows(&[(&ff, &fl, 0), (&uf, &ul, 1)]);
        let val = rows(&[(&vf, &vl, 0), (&wf, &wl, 1)]);
        let cfg = EnsembleConfig {
            target: Target::Union,
            forward: vec![ForwardSignal::MaxLogit, ForwardSignal::Margin],
            members: 3,
            mlp: MlpConfig { hidden: 8, ..Default::default() },
            quality: false,
        };
        let reference = Reference { features: &ff, logits: &fl, quality: None };
        let (e, reports) = Ensemble::train(reference, &train, &val, &cfg).unwrap();
        assert_eq!((e.members.len(), reports.len(), e.classes), (3, 3, 4));
        assert_ne!(e.members[0], e.members[1], "different seeds");
        e.validate().unwrap();
        let f = ff.row(0).to_vec();
        let l = fl.row(0).to_vec();
        let s = e.logit_row(FrameInputs::new(&f, &l));
        let mean = |f: &Array2<f32>, l: &Array2<f32>| {
            (0..20).map(|i| e.logit_row(FrameInputs::new(&f.row(i).to_vec(), &l.row(i).to_vec()))).sum::<f32>() / 20.0
        };
        assert!(mean(&vf, &vl) < mean(&wf, &wl));
        // The mean of the members' logits.
        let z = e.input_row(FrameInputs::new(&f, &l)).unwrap();
        let mean = e.members.iter().map(|m| m.logit_row(&z)).sum::<f32>() / 3.0;
        assert!((s - mean).abs() < 1e-5);
        // Batch inputs agree with row inputs.
        assert_eq!(e.inputs(&ff, &fl, None).unwrap().row(0).to_vec(), z);
        // Wrong lengths and NaN give NaN, never a panic.
        assert!(e.logit_row(FrameInputs::new(&f[..2], &l)).is_nan());
        assert!(e.logit_row(FrameInputs::new(&f, &l[..3])).is_nan());
        assert!(e.logit_row(FrameInputs::new(&f, &[f32::NAN; 4])).is_nan());
        assert!(e.logit_row(FrameInputs::new(&[f32::NAN, 1.0, 1.0], &l)).is_nan());
        // Serde round trip, and validation of inconsistent models.
        let back: Ensemble = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back.logit_row(FrameInputs::new(&f, &l)), s);
        let mut bad = e.clone();
        bad.forward.pop();
        assert!(bad.validate().is_err());
        let mut bad = e.clone();
        bad.members.clear();
        assert!(bad.validate().is_err() && bad.logit_row(FrameInputs::new(&f, &l)).is_nan());
        let mut bad = e.clone();
        bad.forward_normalize = None;
        assert!(bad.validate().is_err());
        // Gradients only: one member equals that member's logit exactly; logits are ignored.
        let g = EnsembleConfig { forward: vec![], members: 1, ..cfg };
        let (e1, _) = Ensemble::train(reference, &train, &val, &g).unwrap();
        assert!(e1.forward_normalize.is_none() && e1.classes == 0);
        let z1 = e1.input_row(FrameInputs::new(&f, &[])).unwrap();
        assert_eq!(e1.logit_row(FrameInputs::new(&f, &[])), e1.members[0].logit_row(&z1));
        assert!(train_members(&ff, &train.labels[..60], &vf, &val.labels[..20], &g.mlp, 0).is_err());
    }

    #[test]
    fn quality_columns_are_two_sided_and_required() {
        // Quality column 0 separates the sets in both directions (familiar near 0, unfamiliar
        // at -3 or +3): only |z| makes that one side for an MLP's first layer.
        let (ff, fl) = data(80, 0.0, 1);
        let (uf, ul) = data(80, 0.0, 2);
        let (vf, vl) = data(40, 0.0, 3);
        let (wf, wl) = data(40, 0.0, 4);
        let mut r = crate::rng::SplitMix64::new(9);
        let mut q = |n: usize, far: bool| {
            Array2::from_shape_fn((n, 2), |(i, j)| {
                let c = if far && j == 0 {
                    if i % 2 == 0 {
                        3.0
                    } else {
                        -3.0
                    }
                } else {
                    0.0
                };
                c + 0.3 * r.normal() as f32
            })
        };
        let (qf, qu, qv, qw) = (q(80, false), q(80, true), q(40, false), q(40, true));
        let cat = |a: &Array2<f32>, b: &Array2<f32>| concatenate(Axis(0), &[a.view(), b.view()]).unwrap();
        let mut train = rows(&[(&ff, &fl, 0), (&uf, &ul, 1)]);
        train.quality = Some(cat(&qf, &qu));
        let mut val = rows(&[(&vf, &vl, 0), (&wf, &wl, 1)]);
        val.quality = Some(cat(&qv, &qw));
        let cfg = EnsembleConfig {
            target: Target::Novelty,
            forward: vec![],
            members: 2,
            mlp: MlpConfig { hidden: 8, ..Default::default() },
            quality: true,
        };
        let no_q = Reference { features: &ff, logits: &fl, quality: None };
        assert!(Ensemble::train(no_q, &train, &val, &cfg).is_err(), "quality asked for but not given");
        let reference = Reference { quality: Some(&qf), ..no_q };
        let (e, _) = Ensemble::train(reference, &train, &val, &cfg).unwrap();
        assert!(e.uses_quality());
        e.validate().unwrap();
        let s = e.members_logits(&vf, &vl, Some(&qv)).unwrap();
        let u = e.members_logits(&wf, &wl, Some(&qw)).unwrap();
        let auc = crate::detector::roc::auroc(&s, &u);
        assert!(auc > 0.95, "AUROC {auc}");
        // The row path agrees with the batch path; |z| of the last columns.
        let (f, l, qr) = (wf.row(1).to_vec(), wl.row(1).to_vec(), qw.row(1).to_vec());
        let z = e.input_row(FrameInputs::new(&f, &l).with_quality(Some(&qr))).unwrap();
        assert_eq!(z.len(), 5);
        assert!(z[3..].iter().all(|v| *v >= 0.0) && z[3] > 3.0, "{z:?}");
        assert!((e.logit_row(FrameInputs::new(&f, &l).with_quality(Some(&qr))) - u[1]).abs() < 1e-5);
        // Missing or short quality is NaN, never a panic; so is a batch without it.
        assert!(e.logit_row(FrameInputs::new(&f, &l)).is_nan());
        assert!(e.logit_row(FrameInputs::new(&f, &l).with_quality(Some(&qr[..1]))).is_nan());
        assert!(e.members_logits(&wf, &wl, None).is_err());
        // Serde round trip keeps it; a standardiser of the wrong width is refused.
        let back: Ensemble = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        let mut bad = e.clone();
        bad.quality_normalize = None;
        assert!(bad.validate().is_err());
    }
}
