//! The analyses after extraction: the per-pair detectors, then generalisation, leave one
//! family out, the risk cells, misclassification detection and the trust head, each a function
//! of the extracted sets ([`SetData`]) and the splits.

use super::*;

/// What the per-pair stage measured, and the pooled pair's detectors the later analyses reuse.
pub(super) struct PairsOut {
    pub(super) rows: Vec<Row>,
    pub(super) odin: Vec<OdinChoice>,
    pub(super) roc: Vec<(String, Vec<(f64, f64)>)>,
    pub(super) detectors: BTreeMap<String, f64>,
    pub(super) pooled: Option<(GradDetector, (usize, usize))>,
    pub(super) pooled_risk: Option<Ensemble>,
}

/// Every pair (CIFAR-10, the pooled corruptions, each type, each type and level): the fixed
/// baselines, ODIN at its best validation setting, the paper's detector and the risk detector.
pub(super) fn run_pairs(
    cfg: &EvalConfig,
    data: &[SetData],
    sp: &Split,
    sp_cifar: &Split,
    risk: &RiskFit,
) -> Result<PairsOut, EvalError> {
    let nl = cfg.levels.len();
    let set_of = |ki: usize, level: u8| set_index(cfg, ki, level);
    let split_of = |name: &str| split_for(name, sp, sp_cifar);
    let mut pairs: Vec<(String, Vec<usize>)> = vec![("cifar10".into(), vec![1])];
    if !cfg.corruptions.is_empty() {
        pairs.push((POOLED.into(), (2..2 + cfg.corruptions.len() * nl).collect()));
    }
    for (ki, &k) in cfg.corruptions.iter().enumerate() {
        let base = 2 + ki * nl;
        pairs.push((k.name().to_string(), (base..base + nl).collect()));
        for &level in &cfg.levels {
            pairs.push((set_name(k, level), vec![set_of(ki, level)]));
        }
    }
    let fam = &data[0];
    let mut pooled_risk: Option<Ensemble> = None;
    let mut results_rows = Vec::new();
    let mut odin_choices = Vec::new();
    let mut roc = Vec::new();
    let mut detectors: BTreeMap<String, f64> = BTreeMap::new();
    // The pooled pair's detector and ODIN column (familiar, corrupted), for the risk analysis.
    let mut pooled: Option<(GradDetector, (usize, usize))> = None;
    let ne = cfg.odin_epsilons.len();
    for (pair, members) in &pairs {
        let gather = |f: &dyn Fn(&SetData, &Split) -> Vec<usize>| -> Vec<(usize, Vec<usize>)> {
            members.iter().map(|&m| (m, f(&data[m], split_of(&data[m].name)))).collect()
        };
        // The pooled pair stands for the shipped detector: with `--one-copy`, one copy per image.
        let (unf_train, unf_val) = match pair == POOLED && cfg.one_copy {
            true => (corrupted_parts(members, &sp.train, true), corrupted_parts(members, &sp.val, true)),
            false => (gather(&|_, s| s.train.clone()), gather(&|_, s| s.val.clone())),
        };
        let unf_test = gather(&|_, s| s.test.clone());
        let cat_scores = |parts: &[(usize, Vec<usize>)], get: &dyn Fn(&SetData) -> Vec<f32>| -> Vec<f32> {
            parts.iter().flat_map(|(m, idx)| pick(&get(&data[*m]), idx)).collect()
        };
        let cat_rows = |parts: &[(usize, Vec<usize>)]| stack_rows(data, parts, |d| &d.feats.features);
        let n_unf_test: usize = unf_test.iter().map(|(_, i)| i.len()).sum();
        let mut push = |method: &str, f: Vec<f32>, u: Vec<f32>, rows_out: &mut Vec<Row>| {
            if pair == "cifar10" {
                roc.push((method.to_string(), metrics::roc_curve(&f, &u)));
            }
            rows_out.push(Row {
                pair: pair.clone(),
                method: method.to_string(),
                metrics: metrics::evaluate(&f, &u),
                n_familiar: f.len(),
                n_unfamiliar: u.len(),
            });
        };
        // Fixed-score baselines.
        for method in FIXED.into_iter().filter(|m| fam.scores.contains_key(m)) {
            let f = pick(&fam.scores[method], &sp.test);
            let u = cat_scores(&unf_test, &|d| d.scores[method].clone());
            push(method, f, u, &mut results_rows);
        }
        // ODIN: (T, eps) with the best validation AUROC.
        // Candidates: the temperatures computed for every member of the pair (and the familiar set).
        let first = &data[members[0]];
        let mut best: Option<((usize, usize), f32, f32, f64)> = None;
        for (tu, &t) in first.odin_temps.iter().enumerate() {
            let Some(tf) = fam.odin_temps.iter().position(|&x| x == t) else { continue };
            for (ei, &eps) in cfg.odin_epsilons.iter().enumerate() {
                let (cf, cu) = (tf * ne + ei, tu * ne + ei);
                let u = cat_scores(&unf_val, &|d: &SetData| d.odin.column(cu).to_vec());
                let a = metrics::auroc(&pick(&fam.odin.column(cf).to_vec(), &sp.val), &u);
                if best.is_none_or(|b| a > b.3) {
                    best = Some(((cf, cu), t, eps, a));
                }
            }
        }
        let Some(((cf, cu), t, eps, val_auroc)) = best else {
            return Err(EvalError::Invalid(format!(
                "pair {pair}: no ODIN temperature in common with the familiar set"
            )));
        };
        odin_choices.push(OdinChoice { pair: pair.clone(), temperature: t, epsilon: eps, val_auroc });
        let col = |d: &SetData| d.odin.column(cu).to_vec();
        let fam_col = fam.odin.column(cf).to_vec();
        push("odin", pick(&fam_col, &sp.test), cat_scores(&unf_test, &col), &mut results_rows);
        // Ours.
        let det = GradDetector::train(
            &rows(&fam.feats.features, &sp.train),
            &cat_rows(&unf_train)?,
            &rows(&fam.feats.features, &sp.val),
            &cat_rows(&unf_val)?,
            &cfg.mlp,
        )?;
        let f = det.score(&rows(&fam.feats.features, &sp.test))?;
        let u = det.score(&cat_rows(&unf_test)?)?;
        detectors.insert(pair.clone(), metrics::auroc(&f, &u));
        debug_assert_eq!(u.len(), n_unf_test);
        push("gradients", f, u, &mut results_rows);
        if pair == POOLED {
            pooled = Some((det, (cf, cu)));
        }
        let e = match pair == POOLED {
            true => risk.train_general((&sp.train, &sp.val), &unf_train, &unf_val, None)?,
            false => risk.train((&sp.train, &sp.val), &unf_train, &unf_val)?,
        };
        let f = risk.score(&e, 0, &sp.test);
        let u: Vec<f32> = unf_test.iter().flat_map(|(m, idx)| risk.score(&e, *m, idx)).collect();
        push("risk", f, u, &mut results_rows);
        if pair == POOLED {
            pooled_risk = Some(e);
        }
        log::info!("pair {pair}: done");
    }
    Ok(PairsOut { rows: results_rows, odin: odin_choices, roc, detectors, pooled, pooled_risk })
}

/// What the analyses after the per-pair detectors share.
pub(super) struct Fitted<'a> {
    pub(super) cfg: &'a EvalConfig,
    pub(super) data: &'a [SetData],
    pub(super) sp: &'a Split,
    pub(super) risk: &'a RiskFit<'a>,
    pub(super) pairs: &'a PairsOut,
}

impl Fitted<'_> {
    pub(super) fn set_of(&self, ki: usize, level: u8) -> usize {
        set_index(self.cfg, ki, level)
    }

    /// The pooled detector's AUROC on set `m` (NaN without a pooled pair).
    pub(super) fn pooled_auroc(&self, m: usize) -> Result<f64, EvalError> {
        let test = |m: usize| rows(&self.data[m].feats.features, &self.sp.test);
        match &self.pairs.pooled {
            Some((det, _)) => Ok(metrics::auroc(&det.score(&test(0))?, &det.score(&test(m))?)),
            None => Ok(f64::NAN),
        }
    }
}

/// Generalisation: train on every other type (levels 1-5), test on the held-out type at 3-5.
pub(super) fn generalisation(fit: &Fitted) -> Result<Vec<GenRow>, EvalError> {
    let (cfg, data, sp, detectors) = (fit.cfg, fit.data, fit.sp, &fit.pairs.detectors);
    let set_of = |ki: usize, level: u8| fit.set_of(ki, level);
    let mut generalisation = Vec::new();
    if cfg.corruptions.len() >= 2 {
        for (hi, &held) in cfg.corruptions.iter().enumerate() {
            let others: Vec<usize> = cfg
                .corruptions
                .iter()
                .enumerate()
                .filter(|(ki, _)| *ki != hi)
                .flat_map(|(ki, _)| cfg.levels.iter().map(move |&l| set_of(ki, l)))
                .collect();
            let det = train_on_sets(data, sp, &others, cfg)?;
            let f = det.score(&rows(&data[0].feats.features, &sp.test))?;
            for &level in cfg.levels.iter().filter(|&&l| l >= 3) {
                let m = set_of(hi, level);
                let u = det.score(&rows(&data[m].feats.features, &sp.test))?;
                let name = set_name(held, level);
                generalisation.push(GenRow {
                    held_out: held.name().to_string(),
                    level,
                    auroc: metrics::auroc(&f, &u),
                    specific_auroc: detectors.get(&name).copied().unwrap_or(f64::NAN),
                });
            }
        }
    }
    Ok(generalisation)
}

/// Per corrupted set: the (gradients, risk) AUROC of the detectors that never saw its family.
pub(super) type Lofo = BTreeMap<usize, (f64, f64)>;

/// Leave one family out: train on every type of the other families (levels 1-5), test on each
/// type of the held-out family at every level.
pub(super) fn family_out(fit: &Fitted) -> Result<(Vec<FamilyRow>, Lofo), EvalError> {
    let (cfg, data, sp, risk, detectors) = (fit.cfg, fit.data, fit.sp, fit.risk, &fit.pairs.detectors);
    let set_of = |ki: usize, level: u8| fit.set_of(ki, level);
    let pooled_auroc = |m: usize| fit.pooled_auroc(m);
    let mut families: Vec<Family> = cfg.corruptions.iter().map(|k| k.family()).collect();
    families.sort_unstable();
    families.dedup();
    let fam_test = |det: &GradDetector| det.score(&rows(&data[0].feats.features, &sp.test));
    let mut family_out = Vec::new();
    // Per corrupted set: (gradients, risk) AUROC of the detectors that never saw its family.
    let mut lofo: BTreeMap<usize, (f64, f64)> = BTreeMap::new();
    if families.len() >= 2 {
        for &held in &families {
            let others: Vec<usize> = cfg
                .corruptions
                .iter()
                .enumerate()
                .filter(|(_, k)| k.family() != held)
                .flat_map(|(ki, _)| cfg.levels.iter().map(move |&l| set_of(ki, l)))
                .collect();
            let det = train_on_sets(data, sp, &others, cfg)?;
            let f = fam_test(&det)?;
            let part = |idx: &[usize]| corrupted_parts(&others, idx, cfg.one_copy);
            let (tr, va) = (part(&sp.train), part(&sp.val));
            let e = risk.train_general((&sp.train, &sp.val), &tr, &va, Some(held))?;
            let fr = risk.score(&e, 0, &sp.test);
            for (ki, &k) in cfg.corruptions.iter().enumerate().filter(|(_, k)| k.family() == held) {
                for &level in &cfg.levels {
                    let m = set_of(ki, level);
                    let u = det.score(&rows(&data[m].feats.features, &sp.test))?;
                    let ur = risk.score(&e, m, &sp.test);
                    let (a, ar) = (metrics::auroc(&f, &u), metrics::auroc(&fr, &ur));
                    lofo.insert(m, (a, ar));
                    family_out.push(FamilyRow {
                        family: held.name().to_string(),
                        kind: k.name().to_string(),
                        level,
                        auroc: a,
                        risk_auroc: ar,
                        specific_auroc: detectors.get(&set_name(k, level)).copied().unwrap_or(f64::NAN),
                        pooled_auroc: pooled_auroc(m)?,
                    });
                }
            }
        }
    }
    Ok((family_out, lofo))
}

/// Risk: the classifier's accuracy per (type, level) next to every detector's AUROC.
pub(super) fn risk_cells(fit: &Fitted, lofo: &Lofo) -> Result<Vec<RiskCell>, EvalError> {
    let (cfg, data, sp, risk) = (fit.cfg, fit.data, fit.sp, fit.risk);
    let (results_rows, pooled_risk) = (&fit.pairs.rows, &fit.pairs.pooled_risk);
    let set_of = |ki: usize, level: u8| fit.set_of(ki, level);
    let pooled_auroc = |m: usize| fit.pooled_auroc(m);
    let mut risk_cells = Vec::new();
    if data[0].wrong.is_some() {
        let find = |pair: &str, m: &str| results_rows.iter().find(|r| r.pair == pair && r.method == m);
        for (ki, &k) in cfg.corruptions.iter().enumerate() {
            for &level in &cfg.levels {
                let m = set_of(ki, level);
                let Some(wrong) = &data[m].wrong else { continue };
                let pair = set_name(k, level);
                let mut auroc = BTreeMap::new();
                for (method, _) in METHODS {
                    if let Some(r) = find(&pair, method) {
                        let a = r.metrics.auroc;
                        auroc.insert(
                            method.to_string(),
                            (a, metrics::auroc_standard_error(a, r.n_familiar, r.n_unfamiliar)),
                        );
                    }
                }
                let se = |a: f64| (a, metrics::auroc_standard_error(a, sp.test.len(), sp.test.len()));
                auroc.insert("gradients_pooled".to_string(), se(pooled_auroc(m)?));
                if let Some(e) = &pooled_risk {
                    let a = metrics::auroc(&risk.score(e, 0, &sp.test), &risk.score(e, m, &sp.test));
                    auroc.insert("risk_pooled".to_string(), se(a));
                }
                if let Some(&(a, ar)) = lofo.get(&m) {
                    auroc.insert("gradients_lofo".to_string(), se(a));
                    auroc.insert("risk_lofo".to_string(), se(ar));
                }
                risk_cells.push(RiskCell {
                    kind: k.name().to_string(),
                    family: k.family().name().to_string(),
                    level,
                    n: wrong.len(),
                    correct: wrong.iter().filter(|&&w| !w).count(),
                    auroc,
                });
            }
        }
    }
    Ok(risk_cells)
}

/// Misclassification detection and selective classification, pooled over the test split.
pub(super) struct Misclass {
    pub(super) rows: Vec<MisclassRow>,
    pub(super) curves: Vec<(String, Vec<(f64, f64)>)>,
    /// The gradient and risk scores, for the trust comparison.
    pub(super) trust_extra: Vec<(String, Vec<f32>)>,
}

pub(super) fn misclassification(fit: &Fitted) -> Result<Misclass, EvalError> {
    let (cfg, data, sp, risk) = (fit.cfg, fit.data, fit.sp, fit.risk);
    let (pooled, pooled_risk) = (&fit.pairs.pooled, &fit.pairs.pooled_risk);
    let fam = &data[0];
    let mut misclassification = Vec::new();
    let mut risk_curves = Vec::new();
    let mut trust_extra: Vec<(String, Vec<f32>)> = Vec::new();
    let members: Vec<usize> =
        (0..data.len()).filter(|&m| m != 1 && data[m].wrong.is_some() && !cfg.corruptions.is_empty()).collect();
    if !members.is_empty() {
        let errors: Vec<bool> =
            members.iter().flat_map(|&m| pick_bool(data[m].wrong.as_deref().unwrap_or(&[]), &sp.test)).collect();
        let mut methods: Vec<(String, Vec<f32>)> = Vec::new();
        for method in FIXED.into_iter().filter(|m| fam.scores.contains_key(m)) {
            methods.push((
                method.to_string(),
                members.iter().flat_map(|&m| pick(&data[m].scores[method], &sp.test)).collect(),
            ));
        }
        if let Some((det, (cf, cu))) = &pooled {
            let odin: Vec<f32> = members
                .iter()
                .flat_map(|&m| {
                    let col = if m == 0 { *cf } else { *cu };
                    pick(&data[m].odin.column(col).to_vec(), &sp.test)
                })
                .collect();
            methods.push(("odin".into(), odin));
            let mut g = Vec::new();
            for &m in &members {
                g.extend(det.score(&rows(&data[m].feats.features, &sp.test))?);
            }
            methods.push(("gradients_pooled".into(), g));
        }
        if let Some(e) = &pooled_risk {
            methods.push(("risk_pooled".into(), members.iter().flat_map(|&m| risk.score(e, m, &sp.test)).collect()));
        }
        let n_wrong = errors.iter().filter(|&&e| e).count();
        let optimal = metrics::aurc_optimal(&errors);
        for (i, (method, scores)) in methods.iter().enumerate() {
            let a = metrics::misclassification_auroc(scores, &errors);
            let aurc = metrics::aurc(scores, &errors);
            misclassification.push(MisclassRow {
                method: method.clone(),
                auroc: a,
                auroc_se: metrics::auroc_standard_error(a, errors.len() - n_wrong, n_wrong),
                aurc,
                aurc_se: metrics::aurc_bootstrap_se(scores, &errors, 200, cfg.seed.wrapping_add(i as u64)),
                excess_aurc: aurc - optimal,
                n: errors.len(),
                n_wrong,
            });
            risk_curves.push((method.clone(), metrics::risk_coverage(scores, &errors)));
        }
        let oracle: Vec<f32> = errors.iter().map(|&e| if e { 1.0 } else { 0.0 }).collect();
        risk_curves.push(("oracle".into(), metrics::risk_coverage(&oracle, &errors)));
        trust_extra =
            methods.into_iter().filter(|(k, _)| k.starts_with("gradients") || k.starts_with("risk")).collect();
    }
    Ok(Misclass { rows: misclassification, curves: risk_curves, trust_extra })
}

/// Fig. 3: mean squared gradient norm per parameter tensor, for a few sets.
pub(super) fn grad_profile(data: &[SetData]) -> Vec<(String, Vec<f64>)> {
    let mut profile = Vec::new();
    let wanted = ["familiar", "cifar10", "noise/5", "gaussian_blur/5", "haze/5", "snow/3", "decolor/5"];
    for w in wanted {
        if let Some(d) = data.iter().find(|d| d.name == w) {
            let m = d.feats.features.mean_axis(Axis(0)).map(|a| a.iter().map(|&v| f64::from(v)).collect());
            profile.push((w.to_string(), m.unwrap_or_default()));
        }
    }
    profile
}
