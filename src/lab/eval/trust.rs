//! The trust question (issue #24): does a frame's score say that *this classification* is
//! wrong? The trust head ([`crate::detector::trust`]) against the softmax-family baselines of
//! failure detection, each fitted on the validation split:
//!
//! * MSP with a fitted temperature (Guo et al. 2017: the temperature minimising the
//!   validation NLL), MaxLogit, energy (`-logsumexp`);
//! * MaxLogit-pNorm (Gomes et al., UAI 2024): the top centred logit over the centred logits'
//!   p-norm, p chosen on validation;
//! * DOCTOR (Granese et al., NeurIPS 2021), the alpha discriminator `g = 1 - sum p_k^2` with
//!   its temperature chosen on validation, no input perturbation;
//! * Rel-U (Dadalto et al., NeurIPS 2023): `p^T D p` with `D = relu((1 - l) E_wrong[p p^T] - l
//!   E_right[p p^T])`, zero diagonal, fitted on validation logits of right and wrong frames, `l`
//!   chosen on a held-out half of them;
//! * the caller's extra scores (the gradient detectors, the camera-health score).
//!
//! Metrics (wrong = positive; every score oriented "higher = more likely wrong"): AUROC,
//! AURC, AUGRC (Traub et al. 2024), FPR at 95 % TPR, on the pooled test split and per
//! degradation level; ECE and a reliability diagram of `risk`; leave one family out.

use std::time::Instant;

use ndarray::Array2;

use super::baselines::softmax;
use super::EvalError;
use crate::detector::roc as metrics;
use crate::detector::split::rows;
use crate::detector::trust::{ece, reliability, ReliabilityBin, ANCHOR_WEIGHT};
use crate::detector::{LabelledRows, MlpConfig, Reference, Target, TrustHead};

/// One image set as the trust analysis sees it.
pub struct TrustSet<'a> {
    /// Name (`familiar`, `cifar10`, `haze/4`, ...).
    pub name: String,
    /// Degradation family (`None`: clean familiar images or OOD).
    pub family: Option<String>,
    /// Degradation level (`None`: clean or OOD).
    pub level: Option<u8>,
    /// Gradient features `[N, P]`.
    pub features: &'a Array2<f32>,
    /// Logits `[N, C]`.
    pub logits: &'a Array2<f32>,
    /// Image-quality measures `[N, Q]`, when measured.
    pub quality: Option<&'a Array2<f32>>,
    /// True class per row (`None`: OOD, no class of the classifier's).
    pub labels: Option<&'a [usize]>,
    /// Train, validation and test rows.
    pub split: (&'a [usize], &'a [usize], &'a [usize]),
}

impl TrustSet<'_> {
    fn is_ood(&self) -> bool {
        self.labels.is_none()
    }

    /// Whether the classifier is wrong on row `i` (always for OOD).
    fn wrong(&self, i: usize) -> bool {
        match self.labels {
            Some(l) => crate::detector::forward::argmax(&self.logits.row(i).to_vec()) != l.get(i).copied(),
            None => true,
        }
    }
}

/// One score's metrics on a pool of frames.
#[derive(Clone, Debug)]
pub struct TrustRow {
    /// Method key.
    pub method: String,
    /// Misclassification AUROC.
    pub auroc: f64,
    /// Its Hanley-McNeil standard error.
    pub auroc_se: f64,
    /// AURC.
    pub aurc: f64,
    /// Its bootstrap standard error.
    pub aurc_se: f64,
    /// AUGRC.
    pub augrc: f64,
    /// FPR at 95 % TPR with the correct frames as positives: the share of wrong frames still
    /// accepted when 95 % of the right ones are.
    pub fpr95: f64,
    /// Per pool (`clean`, `level 3`, ...): (AUROC, its standard error, frames, wrong).
    pub per_level: Vec<(String, f64, f64, usize, usize)>,
}

/// A leave-one-family-out line: the trust head trained without the family against MSP (its
/// temperature also fitted without it) on the family's test frames.
#[derive(Clone, Debug)]
pub struct LofoRow {
    /// Held-out family.
    pub family: String,
    /// Frames and wrong ones (the family's corrupted test rows).
    pub n: usize,
    /// Wrong frames.
    pub n_wrong: usize,
    /// Trust head AUROC and its standard error.
    pub trust: (f64, f64),
    /// The same head's ensemble alone (without the softmax anchor): AUROC and standard error.
    pub ensemble: (f64, f64),
    /// On the family's *validation* rows: per anchor weight of [`ANCHOR_WEIGHTS`], the AUROC
    /// of the ensemble's logit plus the weighted anchor minus MSP's (how the shipped weight
    /// was chosen, without the test rows).
    pub val_gain: Vec<(f64, f64)>,
    /// MSP (fitted temperature) AUROC and its standard error.
    pub msp: (f64, f64),
}

/// Everything the report shows about the trust question.
#[derive(Clone, Debug, Default)]
pub struct TrustResults {
    /// Test frames pooled (familiar + corrupted) and the wrong ones among them.
    pub n: usize,
    /// Wrong frames.
    pub n_wrong: usize,
    /// One row per score, the trust head first.
    pub rows: Vec<TrustRow>,
    /// The fitted baselines' parameters, for the report.
    pub fitted: Vec<(String, String)>,
    /// ECE of `risk` (15 bins) and its bootstrap standard error.
    pub ece: (f64, f64),
    /// ECE of `1 - MSP` with the fitted temperature, for comparison.
    pub msp_ece: f64,
    /// Reliability diagram of `risk`.
    pub reliability: Vec<ReliabilityBin>,
    /// Risk-coverage curves (coverage, risk) per method and the oracle.
    pub curves: Vec<(String, Vec<(f64, f64)>)>,
    /// Leave one family out.
    pub lofo: Vec<LofoRow>,
    /// Trust head AUROC over 3 training seeds (mean, standard deviation), when run.
    pub seeds: Option<(f64, f64, usize)>,
    /// Seconds per frame of the trust head (scoring the test pool).
    pub head_secs_per_frame: f64,
    /// Seconds per frame of the gradient graph, measured by the caller (NaN: not measured).
    pub graph_secs_per_frame: f64,
}

/// The anchor weights the leave-one-family-out analysis tries on validation rows.
pub const ANCHOR_WEIGHTS: [f64; 7] = [0.0, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0];

/// Per weight of [`ANCHOR_WEIGHTS`]: AUROC of `ensemble + w * anchor` minus that of `msp` on
/// the rows of `p` (the head's own anchor at weight 1; NaN without one).
fn weight_gains(h: &TrustHead, p: &Pool, msp: &[f32]) -> Vec<(f64, f64)> {
    let e = ensemble_scores(h, p);
    let base = auroc(msp, &p.wrong);
    ANCHOR_WEIGHTS
        .iter()
        .map(|&w| {
            let Some(a) = h.anchor else { return (w, f64::NAN) };
            let unit = crate::detector::trust::Anchor { weight: 1.0, ..a };
            let s: Vec<f32> =
                e.iter().zip(p.logits.outer_iter()).map(|(v, z)| v + w as f32 * unit.term(&z.to_vec())).collect();
            (w, auroc(&s, &p.wrong) - base)
        })
        .collect()
}

/// Bins of the ECE and the reliability diagram.
pub const ECE_BINS: usize = 15;

/// Rows `which` (0 train, 1 val, 2 test) of every set passing `keep`: (features, logits, wrong,
/// labels-or-none, set index).
struct Pool {
    features: Array2<f32>,
    logits: Array2<f32>,
    /// Present when every set of the pool has its measures.
    quality: Option<Array2<f32>>,
    wrong: Vec<bool>,
    /// True class, or `usize::MAX` for OOD rows.
    labels: Vec<usize>,
    set: Vec<usize>,
}

fn pool<'a>(sets: &[TrustSet<'a>], which: usize, keep: impl Fn(&TrustSet<'a>) -> bool) -> Result<Pool, EvalError> {
    let (mut f, mut l, mut q) = (Vec::new(), Vec::new(), Some(Vec::new()));
    let (mut wrong, mut labels, mut set) = (Vec::new(), Vec::new(), Vec::new());
    for (si, s) in sets.iter().enumerate().filter(|(_, s)| keep(s)) {
        let idx = [s.split.0, s.split.1, s.split.2][which];
        f.push(rows(s.features, idx));
        l.push(rows(s.logits, idx));
        q = q.zip(s.quality).map(|(mut v, m)| {
            v.push(rows(m, idx));
            v
        });
        for &i in idx {
            wrong.push(s.wrong(i));
            labels.push(s.labels.and_then(|v| v.get(i).copied()).unwrap_or(usize::MAX));
            set.push(si);
        }
    }
    let cat = |v: &[Array2<f32>]| -> Result<Array2<f32>, EvalError> {
        let views: Vec<_> = v.iter().map(|a| a.view()).collect();
        ndarray::concatenate(ndarray::Axis(0), &views).map_err(|e| EvalError::Invalid(e.to_string()))
    };
    let quality = q.filter(|v| !v.is_empty()).map(|v| cat(&v)).transpose()?;
    Ok(Pool { features: cat(&f)?, logits: cat(&l)?, quality, wrong, labels, set })
}

impl Pool {
    fn labelled(&self) -> LabelledRows {
        LabelledRows {
            features: self.features.clone(),
            logits: self.logits.clone(),
            quality: self.quality.clone(),
            labels: self.wrong.iter().map(|&w| u8::from(w)).collect(),
        }
    }
}

fn row_scores(logits: &Array2<f32>, f: impl Fn(&[f32]) -> f64) -> Vec<f32> {
    logits.outer_iter().map(|r| f(&r.to_vec()) as f32).collect()
}

/// The temperature minimising the NLL of the true classes (`usize::MAX`: an OOD row, skipped):
/// [`crate::detector::trust::fit_temperature`].
pub fn fit_temperature(logits: &Array2<f32>, labels: &[usize]) -> f32 {
    crate::detector::trust::fit_temperature(logits, &classes(labels))
}

fn classes(labels: &[usize]) -> Vec<Option<usize>> {
    labels.iter().map(|&y| (y != usize::MAX).then_some(y)).collect()
}

/// `-max softmax(z / t)`.
pub fn msp_risk(z: &[f32], t: f32) -> f64 {
    -softmax(z, t).into_iter().fold(0.0, f64::max)
}

/// MaxLogit-pNorm risk: `-max(zc) / ||zc||_p`, `zc = z - mean(z)` (0 for constant logits).
pub fn pnorm_risk(z: &[f32], p: f64) -> f64 {
    let m = z.iter().map(|&v| f64::from(v)).sum::<f64>() / z.len().max(1) as f64;
    let norm = z.iter().map(|&v| (f64::from(v) - m).abs().powf(p)).sum::<f64>().powf(1.0 / p);
    let top = z.iter().map(|&v| f64::from(v) - m).fold(f64::NEG_INFINITY, f64::max);
    if norm > 0.0 {
        -top / norm
    } else {
        0.0
    }
}

/// DOCTOR's `g = 1 - sum_k p_k^2` at temperature `t`.
pub fn doctor_risk(z: &[f32], t: f32) -> f64 {
    1.0 - softmax(z, t).iter().map(|p| p * p).sum::<f64>()
}

/// Rel-U's matrix: `relu((1 - l) E_wrong[p p^T] - l E_right[p p^T])`, zero diagonal, scaled to
/// unit Frobenius norm (all zero when nothing is positive).
pub fn relu_fit(logits: &Array2<f32>, wrong: &[bool], l: f64) -> Vec<Vec<f64>> {
    let c = logits.ncols();
    let mut mw = vec![vec![0.0; c]; c];
    let mut mr = vec![vec![0.0; c]; c];
    let (mut nw, mut nr) = (0usize, 0usize);
    for (r, &w) in logits.outer_iter().zip(wrong) {
        let p = softmax(&r.to_vec(), 1.0);
        let m = if w { &mut mw } else { &mut mr };
        if w {
            nw += 1;
        } else {
            nr += 1;
        }
        for i in 0..c {
            for j in 0..c {
                m[i][j] += p[i] * p[j];
            }
        }
    }
    let (nw, nr) = (nw.max(1) as f64, nr.max(1) as f64);
    let mut d = vec![vec![0.0; c]; c];
    let mut fro = 0.0;
    for i in 0..c {
        for j in 0..c {
            if i != j {
                let v = ((1.0 - l) * mw[i][j] / nw - l * mr[i][j] / nr).max(0.0);
                d[i][j] = v;
                fro += v * v;
            }
        }
    }
    if fro > 0.0 {
        let s = fro.sqrt();
        d.iter_mut().flatten().for_each(|v| *v /= s);
    }
    d
}

/// Rel-U risk `p^T D p` of one logits row.
pub fn relu_risk(z: &[f32], d: &[Vec<f64>]) -> f64 {
    let p = softmax(z, 1.0);
    let mut s = 0.0;
    for (i, pi) in p.iter().enumerate() {
        for (j, pj) in p.iter().enumerate() {
            s += pi * d.get(i).and_then(|r| r.get(j)).copied().unwrap_or(0.0) * pj;
        }
    }
    s
}

fn auroc(s: &[f32], wrong: &[bool]) -> f64 {
    metrics::misclassification_auroc(s, wrong)
}

fn auroc_se(a: f64, wrong: &[bool]) -> f64 {
    let w = wrong.iter().filter(|&&w| w).count();
    metrics::auroc_standard_error(a, wrong.len() - w, w)
}

/// The baselines fitted on the validation pool, as functions of a logits row.
struct Baselines {
    t: f32,
    p: f64,
    doctor_t: f32,
    relu_l: f64,
    relu_d: Vec<Vec<f64>>,
}

impl Baselines {
    fn fit(val: &Pool) -> Baselines {
        let t = fit_temperature(&val.logits, &val.labels);
        let best = |cands: &[f64], f: &dyn Fn(f64) -> Vec<f32>, wrong: &[bool]| -> f64 {
            let mut best = (cands[0], f64::NEG_INFINITY);
            for &c in cands {
                let a = auroc(&f(c), wrong);
                if a > best.1 {
                    best = (c, a);
                }
            }
            best.0
        };
        let p = best(
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0],
            &|p| row_scores(&val.logits, |z| pnorm_risk(z, p)),
            &val.wrong,
        );
        let doctor_t = best(
            &[0.5, 1.0, 1.5, 2.0, 5.0, 10.0, 100.0, 1000.0],
            &|t| row_scores(&val.logits, |z| doctor_risk(z, t as f32)),
            &val.wrong,
        ) as f32;
        // Rel-U: D from one half of the validation rows, l chosen on the other, D refitted on all.
        let half: Vec<usize> = (0..val.wrong.len()).filter(|i| i % 2 == 0).collect();
        let other: Vec<usize> = (0..val.wrong.len()).filter(|i| i % 2 == 1).collect();
        let (la, lb) = (rows(&val.logits, &half), rows(&val.logits, &other));
        let (wa, wb): (Vec<bool>, Vec<bool>) =
            (half.iter().map(|&i| val.wrong[i]).collect(), other.iter().map(|&i| val.wrong[i]).collect());
        let relu_l = best(
            &[0.1, 0.3, 0.5, 0.7, 0.9],
            &|l| {
                let d = relu_fit(&la, &wa, l);
                row_scores(&lb, |z| relu_risk(z, &d))
            },
            &wb,
        );
        let relu_d = relu_fit(&val.logits, &val.wrong, relu_l);
        Baselines { t, p, doctor_t, relu_l, relu_d }
    }

    /// (method key, scores) of every baseline on `logits`.
    fn score(&self, logits: &Array2<f32>) -> Vec<(String, Vec<f32>)> {
        vec![
            ("msp_t".into(), row_scores(logits, |z| msp_risk(z, self.t))),
            ("msp".into(), row_scores(logits, |z| msp_risk(z, 1.0))),
            (
                "max_logit".into(),
                row_scores(logits, |z| -z.iter().map(|&v| f64::from(v)).fold(f64::NEG_INFINITY, f64::max)),
            ),
            ("max_logit_pnorm".into(), row_scores(logits, |z| pnorm_risk(z, self.p))),
            ("doctor".into(), row_scores(logits, |z| doctor_risk(z, self.doctor_t))),
            ("rel_u".into(), row_scores(logits, |z| relu_risk(z, &self.relu_d))),
            ("energy".into(), row_scores(logits, |z| -super::baselines::logsumexp(z, 1.0))),
        ]
    }
}

/// The frames of `p` in `sel`.
fn select<T: Copy>(v: &[T], sel: &[usize]) -> Vec<T> {
    sel.iter().map(|&i| v[i]).collect()
}

fn train_head(train: &Pool, val: &Pool, reference: &Pool, mlp: &MlpConfig) -> Result<TrustHead, EvalError> {
    let cfg = TrustHead::config(mlp);
    debug_assert_eq!(cfg.target, Target::Harm);
    let r = Reference { features: &reference.features, logits: &reference.logits, quality: reference.quality.as_ref() };
    Ok(TrustHead::train(r, &train.labelled(), &val.labelled(), &cfg, (ANCHOR_WEIGHT, &classes(&val.labels)))?.0)
}

/// The ensemble's mean logit alone (the trust head without its softmax anchor; the Platt
/// scaling is monotone, so AUROC needs no probability).
fn ensemble_scores(h: &TrustHead, p: &Pool) -> Vec<f32> {
    h.ensemble
        .members_logits(&p.features, &p.logits, p.quality.as_ref())
        .unwrap_or_else(|_| vec![f32::NAN; p.wrong.len()])
}

/// Runs the trust analysis. `sets[0]` must be the familiar set (its training rows are the
/// standardisers' reference); OOD sets (no labels) take part in training only. `extra` are the
/// caller's scores of the test pool (familiar and corrupted sets in order, test rows), each
/// `(method key, scores)`. With `seeds > 1` the pooled head is retrained with that many seeds
/// for the spread of its AUROC.
pub fn run(
    sets: &[TrustSet],
    extra: &[(String, Vec<f32>)],
    mlp: &MlpConfig,
    seeds: usize,
) -> Result<TrustResults, EvalError> {
    let all = |_: &TrustSet| true;
    let gtsrb = |s: &TrustSet| !s.is_ood();
    let (train, val, test) = (pool(sets, 0, all)?, pool(sets, 1, all)?, pool(sets, 2, gtsrb)?);
    let val_gtsrb = pool(sets, 1, gtsrb)?;
    // The familiar training rows: the standardisers' reference.
    let reference = pool(&sets[..1], 0, all)?;
    let head = train_head(&train, &val, &reference, mlp)?;
    let t0 = Instant::now();
    let risk = head.risk(&test.features, &test.logits, test.quality.as_ref());
    let head_secs_per_frame = t0.elapsed().as_secs_f64() / test.wrong.len().max(1) as f64;
    let base = Baselines::fit(&val_gtsrb);

    let mut methods: Vec<(String, Vec<f32>)> =
        vec![("trust".into(), risk.clone()), ("trust_ensemble".into(), ensemble_scores(&head, &test))];
    methods.extend(base.score(&test.logits));
    for (k, s) in extra {
        if s.len() == test.wrong.len() {
            methods.push((k.clone(), s.clone()));
        }
    }
    // Pools per level: clean familiar rows, then each corruption level over every type.
    let mut levels: Vec<(String, Vec<usize>)> = Vec::new();
    let clean: Vec<usize> = (0..test.set.len()).filter(|&i| sets[test.set[i]].level.is_none()).collect();
    levels.push(("clean".into(), clean));
    let mut lv: Vec<u8> = sets.iter().filter_map(|s| s.level).collect();
    lv.sort_unstable();
    lv.dedup();
    for l in lv {
        levels.push((
            format!("level {l}"),
            (0..test.set.len()).filter(|&i| sets[test.set[i]].level == Some(l)).collect(),
        ));
    }
    let mut out_rows = Vec::new();
    let mut curves = Vec::new();
    for (mi, (k, s)) in methods.iter().enumerate() {
        let a = auroc(s, &test.wrong);
        let right: Vec<f32> = s.iter().zip(&test.wrong).filter(|p| !*p.1).map(|p| *p.0).collect();
        let wrong: Vec<f32> = s.iter().zip(&test.wrong).filter(|p| *p.1).map(|p| *p.0).collect();
        let per_level = levels
            .iter()
            .map(|(name, sel)| {
                let (ss, ww) = (select(s, sel), select(&test.wrong, sel));
                let a = auroc(&ss, &ww);
                (name.clone(), a, auroc_se(a, &ww), ww.len(), ww.iter().filter(|&&w| w).count())
            })
            .collect();
        out_rows.push(TrustRow {
            method: k.clone(),
            auroc: a,
            auroc_se: auroc_se(a, &test.wrong),
            aurc: metrics::aurc(s, &test.wrong),
            aurc_se: metrics::aurc_bootstrap_se(s, &test.wrong, 200, 100 + mi as u64),
            augrc: metrics::augrc(s, &test.wrong),
            fpr95: metrics::evaluate(&right, &wrong).fpr_at_95_tpr,
            per_level,
        });
        curves.push((k.clone(), metrics::risk_coverage(s, &test.wrong)));
    }
    let oracle: Vec<f32> = test.wrong.iter().map(|&w| f32::from(u8::from(w))).collect();
    curves.push(("oracle".into(), metrics::risk_coverage(&oracle, &test.wrong)));

    // ECE with a bootstrap standard error.
    let e = ece(&risk, &test.wrong, ECE_BINS);
    let mut rng = crate::rng::SplitMix64::new(4242);
    let n = risk.len();
    let boots: Vec<f64> = (0..200)
        .map(|_| {
            let idx: Vec<usize> = (0..n).map(|_| rng.below(n)).collect();
            ece(&select(&risk, &idx), &select(&test.wrong, &idx), ECE_BINS)
        })
        .collect();
    let bm = boots.iter().sum::<f64>() / boots.len() as f64;
    let ece_se = (boots.iter().map(|v| (v - bm).powi(2)).sum::<f64>() / (boots.len() - 1) as f64).sqrt();
    let msp_prob: Vec<f32> = test.logits.outer_iter().map(|z| (1.0 + msp_risk(&z.to_vec(), base.t)) as f32).collect();

    // Leave one family out.
    let mut families: Vec<String> = sets.iter().filter_map(|s| s.family.clone()).collect();
    families.sort();
    families.dedup();
    let mut lofo = Vec::new();
    if families.len() >= 2 {
        for f in &families {
            let without = |s: &TrustSet| s.family.as_deref() != Some(f.as_str());
            let (tr, va) = (pool(sets, 0, without)?, pool(sets, 1, without)?);
            let h = train_head(&tr, &va, &reference, mlp)?;
            let vg = pool(sets, 1, |s: &TrustSet| without(s) && !s.is_ood())?;
            let t = fit_temperature(&vg.logits, &vg.labels);
            let held = pool(sets, 2, |s: &TrustSet| s.family.as_deref() == Some(f.as_str()))?;
            let r = h.risk(&held.features, &held.logits, held.quality.as_ref());
            let m = row_scores(&held.logits, |z| msp_risk(z, t));
            let (a, b) = (auroc(&r, &held.wrong), auroc(&m, &held.wrong));
            let e = auroc(&ensemble_scores(&h, &held), &held.wrong);
            let hv = pool(sets, 1, |s: &TrustSet| s.family.as_deref() == Some(f.as_str()))?;
            let val_gain = weight_gains(&h, &hv, &row_scores(&hv.logits, |z| msp_risk(z, t)));
            lofo.push(LofoRow {
                family: f.clone(),
                n: held.wrong.len(),
                n_wrong: held.wrong.iter().filter(|&&w| w).count(),
                trust: (a, auroc_se(a, &held.wrong)),
                ensemble: (e, auroc_se(e, &held.wrong)),
                val_gain,
                msp: (b, auroc_se(b, &held.wrong)),
            });
        }
    }
    let seeds = (seeds > 1).then(|| -> Result<(f64, f64, usize), EvalError> {
        let mut v = vec![out_rows[0].auroc];
        for k in 1..seeds {
            let m = MlpConfig { seed: mlp.seed.wrapping_add(7919 * k as u64), ..mlp.clone() };
            let h = train_head(&train, &val, &reference, &m)?;
            v.push(auroc(&h.risk(&test.features, &test.logits, test.quality.as_ref()), &test.wrong));
        }
        let m = v.iter().sum::<f64>() / v.len() as f64;
        let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
        Ok((m, sd, v.len()))
    });
    let seeds = seeds.transpose()?;
    Ok(TrustResults {
        n: test.wrong.len(),
        n_wrong: test.wrong.iter().filter(|&&w| w).count(),
        rows: out_rows,
        fitted: vec![
            ("MSP temperature (validation NLL)".into(), format!("{:.3}", base.t)),
            ("MaxLogit-pNorm p".into(), format!("{}", base.p)),
            ("DOCTOR temperature".into(), format!("{}", base.doctor_t)),
            ("Rel-U lambda".into(), format!("{}", base.relu_l)),
            ("trust head Platt a, b".into(), format!("{:.4}, {:.4}", head.platt.a, head.platt.b)),
        ],
        ece: (e, ece_se),
        msp_ece: ece(&msp_prob, &test.wrong, ECE_BINS),
        reliability: reliability(&risk, &test.wrong, ECE_BINS),
        curves,
        lofo,
        seeds,
        head_secs_per_frame,
        graph_secs_per_frame: f64::NAN,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_scores_hand_computed() {
        // z = [0, ln 3]: p = [1/4, 3/4].
        let z = [0.0, 3f32.ln()];
        assert!((msp_risk(&z, 1.0) + 0.75).abs() < 1e-6);
        assert!((doctor_risk(&z, 1.0) - (1.0 - 1.0 / 16.0 - 9.0 / 16.0)).abs() < 1e-6);
        // Centred: +-ln3/2; 2-norm ln3/sqrt2; risk -(ln3/2)/(ln3/sqrt2) = -1/sqrt2.
        assert!((pnorm_risk(&z, 2.0) + 0.5f64.sqrt()).abs() < 1e-6);
        assert_eq!(pnorm_risk(&[1.0, 1.0], 2.0), 0.0);
        // Rel-U: D = [[0, 1], [1, 0]] / sqrt 2 gives 2 p0 p1 / sqrt 2.
        let d = vec![vec![0.0, 0.5f64.sqrt()], vec![0.5f64.sqrt(), 0.0]];
        assert!((relu_risk(&z, &d) - 2.0 * 0.25 * 0.75 * 0.5f64.sqrt()).abs() < 1e-6);
    }

    #[test]
    fn relu_matrix_is_zero_diagonal_unit_norm_and_flags_spread() {
        // Wrong frames spread their mass, right frames are sharp.
        let l = ndarray::array![[5.0f32, 0.0, 0.0], [0.0, 5.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 1.0]];
        let w = [false, false, true, true];
        let d = relu_fit(&l, &w, 0.5);
        assert!((0..3).all(|i| d[i][i] == 0.0));
        let fro: f64 = d.iter().flatten().map(|v| v * v).sum();
        assert!((fro - 1.0).abs() < 1e-9);
        let s: Vec<f64> = l.outer_iter().map(|r| relu_risk(&r.to_vec(), &d)).collect();
        assert!(s[2] > s[0] && s[3] > s[1]);
    }

    #[test]
    fn temperature_fit_recovers_a_known_temperature() {
        // Labels drawn from softmax(z / 2): the fitted temperature is near 2.
        let mut r = crate::rng::SplitMix64::new(3);
        let n = 4000;
        let logits = Array2::from_shape_fn((n, 4), |_| (r.normal() * 3.0) as f32);
        let labels: Vec<usize> = logits
            .outer_iter()
            .map(|z| {
                let p = softmax(&z.to_vec(), 2.0);
                let u = r.next_f64();
                let mut c = 0.0;
                p.iter()
                    .position(|&pi| {
                        c += pi;
                        u < c
                    })
                    .unwrap_or(3)
            })
            .collect();
        let t = fit_temperature(&logits, &labels);
        assert!((t - 2.0).abs() < 0.2, "{t}");
    }

    /// The whole analysis on synthetic sets: wrong frames have flat logits and large gradient
    /// norms, right ones a sharp top logit; two families, an OOD set.
    #[test]
    fn run_on_synthetic_sets_ranks_errors_and_fills_every_table() {
        let n = 120;
        let mut r = crate::rng::SplitMix64::new(11);
        let labels: Vec<usize> = (0..n).map(|i| i % 3).collect();
        let make = |r: &mut crate::rng::SplitMix64, p_wrong: f64, ood: bool| {
            let mut f = Array2::zeros((n, 2));
            let mut l = Array2::zeros((n, 3));
            for i in 0..n {
                let wrong = ood || r.next_f64() < p_wrong;
                let top = if wrong { (labels[i] + 1) % 3 } else { labels[i] };
                let sharp = if wrong { 0.5 + r.next_f64() } else { 2.0 + 2.0 * r.next_f64() };
                for j in 0..3 {
                    l[[i, j]] = if j == top { sharp as f32 } else { (0.3 * r.normal()) as f32 };
                }
                for j in 0..2 {
                    f[[i, j]] = ((if wrong { 1.0 } else { 0.0 }) + 0.7 * r.normal()).exp() as f32;
                }
            }
            (f, l)
        };
        let sp = crate::detector::split::split_40_40_20(n, 0);
        let data: Vec<(Array2<f32>, Array2<f32>)> = vec![
            make(&mut r, 0.05, false),
            make(&mut r, 0.0, true),
            make(&mut r, 0.4, false),
            make(&mut r, 0.5, false),
        ];
        let meta = [(None, None), (None, None), (Some("weather"), Some(3u8)), (Some("optics"), Some(4u8))];
        let sets: Vec<TrustSet> = data
            .iter()
            .zip(meta)
            .enumerate()
            .map(|(k, ((f, l), (fam, lv)))| TrustSet {
                name: format!("set{k}"),
                family: fam.map(str::to_string),
                level: lv,
                features: f,
                logits: l,
                quality: None,
                labels: (k != 1).then_some(labels.as_slice()),
                split: (sp.train.as_slice(), sp.val.as_slice(), sp.test.as_slice()),
            })
            .collect();
        let mlp = MlpConfig { hidden: 4, max_epochs: 30, ..Default::default() };
        let t = run(&sets, &[("extra".into(), vec![0.0; 3 * sp.test.len()])], &mlp, 2).unwrap();
        assert_eq!(t.n, 3 * sp.test.len());
        let head = &t.rows[0];
        assert_eq!(head.method, "trust");
        assert!(head.auroc > 0.8, "{head:?}");
        // Every baseline and the caller's score, per level: clean, level 3, level 4.
        assert!(t.rows.iter().any(|r| r.method == "rel_u") && t.rows.iter().any(|r| r.method == "extra"));
        let levels: Vec<&str> = head.per_level.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(levels, ["clean", "level 3", "level 4"]);
        // A constant score ranks nothing.
        assert!((t.rows.iter().find(|r| r.method == "extra").unwrap().auroc - 0.5).abs() < 1e-9);
        assert_eq!(t.lofo.len(), 2);
        assert!(t.ece.0.is_finite() && t.seeds.is_some_and(|s| s.2 == 2));
        assert_eq!(t.curves.last().unwrap().0, "oracle");
    }
}
