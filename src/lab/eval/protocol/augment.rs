//! `--augment`: the recipe's generalising training data (issue #25, item 2) in the evaluation.
//!
//! Two training-only sets of the same familiar images: *mixed* (one or two degradation types
//! of different families at continuous levels between the evaluated ones) and *lighting* (over-
//! and under-exposure at every level from 1 to 5, labelled by the classifier's correctness
//! alone). The camera-health detectors that stand for the shipped one (the pooled pair's and
//! the leave-one-family-out ones) train on them; lighting then replaces the illumination
//! types' own sets, whose rows would say "unfamiliar" whether or not the class survived.
//! Rows that touch the held-out family never train its detector.

use super::*;
use crate::corrupt::mix::{self, Mix, MixPlan};

/// The augment sets, stored after the plan's sets in the risk fit's data.
#[derive(Clone)]
pub(super) struct Augment {
    /// Index of the first augment set.
    pub(super) first: usize,
    /// Per augment set: whether its rows are [`Origin::Benign`] (lighting).
    pub(super) benign: Vec<bool>,
    /// Per augment set, per row: what it got. Row `c * n + i` is copy `c` of familiar image
    /// `i` (`n` = [`Self::images`]).
    pub(super) mixes: Vec<Vec<Mix>>,
    /// The familiar images each copy holds.
    pub(super) images: usize,
    /// Per plan set: the family of its degradation (`None`: familiar, CIFAR-10).
    pub(super) plan_family: Vec<Option<Family>>,
    /// Whether the lighting set stands for the illumination types' own sets.
    pub(super) lighting: bool,
}

impl Augment {
    /// The unfamiliar parts of a generalising detector: `parts` without the illumination
    /// types' sets (lighting stands for them), then every augment set's rows among `idx` that
    /// do not touch `held` (in every copy of those images).
    pub(super) fn parts(
        &self,
        parts: &[(usize, Vec<usize>)],
        idx: &[usize],
        held: Option<Family>,
    ) -> Vec<(usize, Vec<usize>)> {
        let mut out: Vec<(usize, Vec<usize>)> = parts
            .iter()
            .filter(|(m, _)| {
                !self.lighting || self.plan_family.get(*m).copied().flatten() != Some(Family::Illumination)
            })
            .cloned()
            .collect();
        for (j, mixes) in self.mixes.iter().enumerate() {
            let copies = mixes.len() / self.images.max(1);
            let keep: Vec<usize> = (0..copies)
                .flat_map(|c| idx.iter().map(move |&i| c * self.images + i))
                .filter(|&r| held.is_none_or(|h| mixes.get(r).is_some_and(|m| !m.touches(h))))
                .collect();
            if !keep.is_empty() {
                out.push((self.first + j, keep));
            }
        }
        out
    }

    /// The origin of set `m`'s rows when it is an augment set.
    pub(super) fn origin(&self, m: usize) -> Option<Origin> {
        let j = m.checked_sub(self.first)?;
        Some(if *self.benign.get(j)? { Origin::Benign } else { Origin::Corrupted })
    }
}

/// The plan's sets followed by the augment sets, and how to use them (`None`: no augment).
pub(super) fn append(
    mut data: Vec<SetData>,
    augment: Option<(Vec<SetData>, Augment)>,
) -> (Vec<SetData>, Option<Augment>) {
    let a = augment.map(|(sets, a)| {
        data.extend(sets);
        a
    });
    (data, a)
}

/// Draws, extracts (or reads from `cache`) and labels the augment sets that `--augment` names
/// (`None` without any); they will sit after the plan's sets.
#[allow(clippy::too_many_arguments)]
pub(super) fn extract(
    cfg: &EvalConfig,
    plan: &[(String, Option<(Corruption, u8)>)],
    cache: &Path,
    session: &mut GradSession,
    info: &crate::model::ModelInfo,
    fam_images: &[RgbImage],
    fam_labels: Option<&[usize]>,
) -> Result<Option<(Vec<SetData>, Augment)>, EvalError> {
    if !cfg.augment.any() {
        return Ok(None);
    }
    let mut sets: Vec<(String, bool, MixPlan, usize)> = Vec::new();
    if cfg.augment.mixed {
        let plan = mix::generalising_plan(&cfg.corruptions, &cfg.levels);
        // At least one copy (and `0` caches as the `1` it runs as).
        let copies = cfg.augment_copies.max(1);
        sets.push((format!("augment-mixed-v1-x{copies}"), false, plan, copies));
    }
    if cfg.augment.lighting {
        sets.push(("augment-lighting-v1".into(), true, mix::lighting_plan(&cfg.corruptions), 1));
    }
    let mut data = Vec::new();
    let mut augment = Augment {
        first: plan.len(),
        benign: Vec::new(),
        mixes: Vec::new(),
        plan_family: plan.iter().map(|(_, s)| s.map(|(k, _)| k.family())).collect(),
        lighting: cfg.augment.lighting,
        images: fam_images.len(),
    };
    for (name, benign, mix_plan, copies) in sets {
        if mix_plan.kinds.is_empty() {
            continue;
        }
        let (mut images, mut mixes) = (Vec::new(), Vec::new());
        for c in 0..copies as u64 {
            let (i, m) =
                mix::mixed_corruptions(fam_images, &mix_plan, (cfg.seed ^ mix::AUGMENT_SALT).wrapping_add(c << 32))?;
            images.extend(i);
            mixes.extend(m);
        }
        let (prefix, name) = (cache_prefix(&name), name.as_str());
        let feats = match FeatureSet::load(cache, &prefix)?.filter(|f| f.len() == images.len()) {
            Some(f) => f,
            None => {
                let t = Instant::now();
                let f = features::extract_labelled(session, info, &images, cfg.batch, cfg.progress, name)?;
                f.save(cache, &prefix)?;
                eprintln!("{name}: features of {} images in {:.1} s", images.len(), t.elapsed().as_secs_f64());
                f
            }
        };
        let quality = if cfg.quality {
            let path = cache.join(format!("{prefix}quality.npy"));
            Some(match cached_quality(&path, images.len())? {
                Some(q) => q,
                None => measure_quality(&path, &images, info)?,
            })
        } else {
            None
        };
        let wrong = fam_labels.map(|l| {
            let p = baselines::predicted(feats.logits.view());
            p.iter().enumerate().map(|(r, p)| Some(p) != l.get(r % l.len().max(1))).collect::<Vec<bool>>()
        });
        let n = feats.len();
        data.push(SetData {
            name: name.to_string(),
            feats,
            scores: BTreeMap::new(),
            odin: Array2::zeros((n, 0)),
            odin_temps: Vec::new(),
            wrong,
            quality,
        });
        augment.benign.push(benign);
        augment.mixes.push(mixes);
    }
    Ok(Some((data, augment)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::corrupt::mix::Step;

    fn mix(kinds: &[Corruption]) -> Mix {
        Mix { steps: kinds.iter().map(|&kind| Step { kind, level: 3.0 }).collect() }
    }

    #[test]
    fn parts_leave_out_the_held_family_and_lighting_replaces_illumination() {
        use Corruption as C;
        let a = Augment {
            first: 5,
            benign: vec![false, true],
            mixes: vec![
                vec![mix(&[C::Haze]), mix(&[C::Noise, C::Snow]), mix(&[C::Rotate])],
                vec![mix(&[C::Exposure]), mix(&[C::Darkening]), mix(&[C::Exposure])],
            ],
            plan_family: vec![None, None, Some(Family::Geometric), Some(Family::Illumination), Some(Family::Weather)],
            lighting: true,
            images: 3,
        };
        let plan_parts: Vec<(usize, Vec<usize>)> = (2..5).map(|m| (m, vec![0, 1])).collect();
        let got = a.parts(&plan_parts, &[0, 1, 2], Some(Family::Weather));
        assert_eq!(got, vec![(2, vec![0, 1]), (4, vec![0, 1]), (5, vec![2]), (6, vec![0, 1, 2])]);
        let got = a.parts(&plan_parts, &[0, 1, 2], None);
        assert_eq!(got[2..], [(5, vec![0, 1, 2]), (6, vec![0, 1, 2])]);
        // Lighting held out: the lighting set leaves too.
        let got = a.parts(&plan_parts, &[0, 1], Some(Family::Illumination));
        assert_eq!(got, vec![(2, vec![0, 1]), (4, vec![0, 1]), (5, vec![0, 1])]);
        assert_eq!(
            (a.origin(2), a.origin(5), a.origin(6), a.origin(7)),
            (None, Some(Origin::Corrupted), Some(Origin::Benign), None)
        );
        // Two copies of 2 images: rows 0, 1 and then 2, 3; image 1 is rows 1 (noise) and 3 (snow).
        let c = Augment {
            mixes: vec![vec![mix(&[C::Haze]), mix(&[C::Noise]), mix(&[C::Noise]), mix(&[C::Snow])]],
            images: 2,
            ..a.clone()
        };
        assert_eq!(c.parts(&[], &[1], Some(Family::Weather)), vec![(5, vec![1])]);
        assert_eq!(c.parts(&[], &[1], None), vec![(5, vec![1, 3])]);
        // Without the lighting set the illumination types' own sets stay.
        let b = Augment { lighting: false, ..a };
        assert_eq!(b.parts(&plan_parts, &[], None), plan_parts);
    }
}
