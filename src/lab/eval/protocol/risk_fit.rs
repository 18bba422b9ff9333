//! The risk detector as a calibration trains it, on the evaluation's cached sets.

use super::*;

/// The default detector of `gradwatch calibrate` (`--detector risk`), trained as the calibration
/// trains it: each row labelled by the detector's target from where it comes from (familiar,
/// corrupted copy, CIFAR-10) and whether the classifier gets it wrong.
pub(super) struct RiskFit<'a> {
    /// The plan's sets, then the augment sets.
    pub(super) data: &'a [SetData],
    pub(super) augment: Option<super::augment::Augment>,
    pub(super) cfg: EnsembleConfig,
}

impl RiskFit<'_> {
    fn origin(&self, m: usize) -> Origin {
        if let Some(o) = self.augment.as_ref().and_then(|a| a.origin(m)) {
            return o;
        }
        match self.data[m].name.as_str() {
            "familiar" => Origin::Familiar,
            "cifar10" => Origin::Ood,
            _ => Origin::Corrupted,
        }
    }

    fn rows(&self, parts: &[(usize, Vec<usize>)]) -> Result<LabelledRows, EvalError> {
        let labels = parts
            .iter()
            .flat_map(|(m, idx)| {
                let origin = self.origin(*m);
                let wrong = self.data[*m].wrong.as_deref();
                idx.iter().map(move |&i| self.cfg.target.label(origin, wrong.and_then(|w| w.get(i).copied())))
            })
            .collect();
        let quality = match self.cfg.quality {
            true => {
                let mut blocks = Vec::with_capacity(parts.len());
                for (m, idx) in parts {
                    let d = &self.data[*m];
                    let q = d
                        .quality
                        .as_ref()
                        .ok_or_else(|| EvalError::Invalid(format!("set '{}' has no image-quality measures", d.name)))?;
                    blocks.push(rows(q, idx));
                }
                let views: Vec<_> = blocks.iter().map(|b| b.view()).collect();
                Some(ndarray::concatenate(Axis(0), &views).map_err(|e| EvalError::Invalid(e.to_string()))?)
            }
            false => None,
        };
        Ok(LabelledRows {
            features: stack_rows(self.data, parts, |d| &d.feats.features)?,
            logits: stack_rows(self.data, parts, |d| &d.feats.logits)?,
            quality,
            labels,
        })
    }

    /// Trains on the familiar rows `fam` (train, val) and the unfamiliar parts.
    pub(super) fn train(
        &self,
        fam: (&[usize], &[usize]),
        unf_train: &[(usize, Vec<usize>)],
        unf_val: &[(usize, Vec<usize>)],
    ) -> Result<Ensemble, EvalError> {
        let with_fam = |f: &[usize], u: &[(usize, Vec<usize>)]| {
            let mut v = vec![(0usize, f.to_vec())];
            v.extend(u.iter().cloned());
            v
        };
        let train = self.rows(&with_fam(fam.0, unf_train))?;
        let val = self.rows(&with_fam(fam.1, unf_val))?;
        let reference = &self.data[0];
        let (f, l) = (rows(&reference.feats.features, fam.0), rows(&reference.feats.logits, fam.0));
        let q = reference.quality.as_ref().map(|q| rows(q, fam.0));
        let (e, _) =
            Ensemble::train(Reference { features: &f, logits: &l, quality: q.as_ref() }, &train, &val, &self.cfg)?;
        Ok(e)
    }

    /// [`Self::train`] for a detector that stands for the shipped one: with `--augment`, on the
    /// generalising data too (none of it touching the `held` family).
    pub(super) fn train_general(
        &self,
        fam: (&[usize], &[usize]),
        unf_train: &[(usize, Vec<usize>)],
        unf_val: &[(usize, Vec<usize>)],
        held: Option<Family>,
    ) -> Result<Ensemble, EvalError> {
        match &self.augment {
            None => self.train(fam, unf_train, unf_val),
            Some(a) => self.train(fam, &a.parts(unf_train, fam.0, held), &a.parts(unf_val, fam.1, held)),
        }
    }

    /// Scores rows `idx` of set `m`.
    pub(super) fn score(&self, e: &Ensemble, m: usize, idx: &[usize]) -> Vec<f32> {
        let d = &self.data[m];
        let q = |i: usize| d.quality.as_ref().map(|q| q.row(i).to_vec());
        idx.iter()
            .map(|&i| {
                let (f, l, q) = (d.feats.features.row(i).to_vec(), d.feats.logits.row(i).to_vec(), q(i));
                e.logit_row(FrameInputs::new(&f, &l).with_quality(q.as_deref()))
            })
            .collect()
    }
}
