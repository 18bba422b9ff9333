//! Training data that generalises (issue #25, item 2): degradations at continuous severities
//! between the levels, compositions of two types from different families, and lighting changes
//! whose harm only the classifier decides.
//!
//! A detector trained on each type alone at five fixed levels learns those 5 x types points;
//! a camera meets mixtures (haze on a dirty lens, a blurred JPEG) at every severity in between.
//! [`mixed_corruptions`] draws them, and records which families each image touches so that a
//! leave-one-family-out evaluation can drop every row that saw the held-out family.

use super::{apply, apply_strength, image_seed, CorruptError, Corruption, Family, MAX_LEVEL};
use crate::frame::RgbImage;
use crate::rng::SplitMix64;

/// One degradation at a continuous level in `[1, MAX_LEVEL]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// The type.
    pub kind: Corruption,
    /// Its level: 3.0 is [`apply`]'s level 3, 3.5 lies halfway to level 4.
    pub level: f32,
}

/// One or more degradations applied one after the other, in the order light meets them
/// ([`pipeline_rank`]): scene, lens, exposure, sensor, processing, coding.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Mix {
    /// The steps, in the order they are applied.
    pub steps: Vec<Step>,
}

impl Mix {
    /// Whether any step belongs to `family` (such rows leave a held-out-family evaluation).
    pub fn touches(&self, family: Family) -> bool {
        self.steps.iter().any(|s| s.kind.family() == family)
    }

    /// Applies every step; step `j` of image seed `seed` uses seed `seed + j`, so two steps of
    /// the same image draw different patterns.
    pub fn apply(&self, img: &RgbImage, seed: u64) -> Result<RgbImage, CorruptError> {
        let mut out = img.clone();
        for (j, s) in self.steps.iter().enumerate() {
            out = apply_level(&out, s.kind, s.level, seed.wrapping_add(j as u64))?;
        }
        Ok(out)
    }

    /// `haze@3.40+noise@2.10`.
    pub fn describe(&self) -> String {
        self.steps.iter().map(|s| format!("{}@{:.2}", s.kind.name(), s.level)).collect::<Vec<_>>().join("+")
    }
}

/// Where a family's degradation happens between the scene and the stored frame; [`Mix::apply`]
/// applies steps in this order (weather before the lens blurs it, noise before the codec).
pub fn pipeline_rank(family: Family) -> u8 {
    match family {
        Family::Geometric => 0,
        Family::Weather => 1,
        Family::Occlusion => 2,
        Family::Optics => 3,
        Family::Illumination => 4,
        Family::Sensor => 5,
        Family::Colour => 6,
        Family::Resampling => 7,
        Family::Compression => 8,
    }
}

/// Applies `kind` at the continuous `level` (`1.0..=5.0`). Integer levels give exactly
/// [`apply`]'s bytes. Between them, types with a strength table ([`Corruption::strengths`])
/// interpolate the strength; the others (whose levels set several parameters at once) blend
/// the two neighbouring levels' images, pixel by pixel, with the same seed, so the random
/// pattern (noise, flakes, dirt) is shared and only its strength moves.
pub fn apply_level(img: &RgbImage, kind: Corruption, level: f32, seed: u64) -> Result<RgbImage, CorruptError> {
    let max = f32::from(MAX_LEVEL);
    if !level.is_finite() || !(1.0..=max).contains(&level) {
        return Err(CorruptError::Invalid(format!("{kind}: level {level} is outside 1..={MAX_LEVEL}")));
    }
    let lo = level.floor();
    let t = level - lo;
    // Exact integer levels: the classic table (bit-identical with `apply`).
    let lo_level = lo as u8;
    if t == 0.0 {
        return apply(img, kind, lo_level, seed);
    }
    if let Some(table) = kind.strengths() {
        let i = usize::from(lo_level - 1);
        let p = table[i] + t * (table[i + 1] - table[i]);
        return apply_strength(img, kind, p, seed);
    }
    let a = apply(img, kind, lo_level, seed)?;
    let b = apply(img, kind, lo_level + 1, seed)?;
    let data =
        a.data.iter().zip(&b.data).map(|(&x, &y)| (x as f32 + t * (y as f32 - x as f32)).round() as u8).collect();
    Ok(RgbImage { width: a.width, height: a.height, data })
}

/// How [`mixed_corruptions`] draws.
#[derive(Clone, Debug)]
pub struct MixPlan {
    /// The types to draw from.
    pub kinds: Vec<Corruption>,
    /// Levels are uniform in `[lowest, highest]`.
    pub lowest: f32,
    /// See `lowest`.
    pub highest: f32,
    /// Share of images that get two types (from two different families) instead of one.
    pub pair_share: f32,
}

impl MixPlan {
    /// Draws one mix from `rng`: a type, its level, and with probability `pair_share` a second
    /// type of another family at its own level (no second one when every type shares a family).
    pub fn draw(&self, rng: &mut SplitMix64) -> Option<Mix> {
        if self.kinds.is_empty() {
            return None;
        }
        let level = |rng: &mut SplitMix64| rng.range(self.lowest, self.highest).clamp(1.0, f32::from(MAX_LEVEL));
        let first = self.kinds[rng.below(self.kinds.len())];
        let mut steps = vec![Step { kind: first, level: level(rng) }];
        if rng.uniform() < self.pair_share {
            let others: Vec<Corruption> = self.kinds.iter().copied().filter(|k| k.family() != first.family()).collect();
            if !others.is_empty() {
                let second = others[rng.below(others.len())];
                steps.push(Step { kind: second, level: level(rng) });
            }
        }
        steps.sort_by_key(|s| pipeline_rank(s.kind.family()));
        Some(Mix { steps })
    }
}

/// Which generalising sets a calibration adds to the round-robin copy (`--augment`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AugmentSets {
    /// A second copy of each image: one or two types of different families at levels in
    /// between ([`generalising_plan`]).
    pub mixed: bool,
    /// Lighting changes at levels 1-5 labelled by the classifier's correctness alone
    /// ([`lighting_plan`]); they replace the lighting types' round-robin copies.
    pub lighting: bool,
}

impl AugmentSets {
    /// Whether any set is added.
    pub fn any(self) -> bool {
        self.mixed || self.lighting
    }

    /// `mixed,lighting`, `mixed`, `lighting` or `none`.
    pub fn name(self) -> &'static str {
        match (self.mixed, self.lighting) {
            (true, true) => "mixed,lighting",
            (true, false) => "mixed",
            (false, true) => "lighting",
            (false, false) => "none",
        }
    }
}

impl std::str::FromStr for AugmentSets {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut out = AugmentSets::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "mixed" => out.mixed = true,
                "lighting" => out.lighting = true,
                "none" => {}
                other => {
                    return Err(format!("augment set '{other}': use mixed, lighting, both (mixed,lighting) or none"))
                }
            }
        }
        Ok(out)
    }
}

/// Salt of the run seed for the generalising sets (calibration and evaluation alike), so
/// their patterns differ from the round-robin copy's.
pub const AUGMENT_SALT: u64 = 0xA06;

/// Salt of the draw's generator, so the mix an image gets does not correlate with the pattern
/// seed its steps use.
const DRAW_SALT: u64 = 0x6D69_7865_645F_7631;

/// One drawn mix per image (see [`MixPlan::draw`]), applied with image `i`'s pattern seed
/// [`image_seed`]`(seed, i)`; returns the images and what each got.
pub fn mixed_corruptions(
    images: &[RgbImage],
    plan: &MixPlan,
    seed: u64,
) -> Result<(Vec<RgbImage>, Vec<Mix>), CorruptError> {
    if !(1.0..=f32::from(MAX_LEVEL)).contains(&plan.lowest) || plan.highest < plan.lowest {
        return Err(CorruptError::Invalid(format!(
            "mixed levels {}..{} must lie within 1..={MAX_LEVEL}, lowest first",
            plan.lowest, plan.highest
        )));
    }
    let mut out = Vec::with_capacity(images.len());
    let mut mixes = Vec::with_capacity(images.len());
    for (i, img) in images.iter().enumerate() {
        let mut rng = SplitMix64::new(image_seed(seed ^ DRAW_SALT, i));
        let mix = plan.draw(&mut rng).ok_or(CorruptError::NoKinds)?;
        out.push(mix.apply(img, image_seed(seed, i))?);
        mixes.push(mix);
    }
    Ok((out, mixes))
}

/// The lighting types among `kinds` (the illumination family: over- and under-exposure),
/// drawn at every level from 1 to 5. A detector should not flag these by themselves: the
/// classifier's own correctness on each image says whether it was harmful.
pub fn lighting_plan(kinds: &[Corruption]) -> MixPlan {
    MixPlan {
        kinds: kinds.iter().copied().filter(|k| k.family() == Family::Illumination).collect(),
        lowest: 1.0,
        highest: f32::from(MAX_LEVEL),
        pair_share: 0.0,
    }
}

/// The generalising plan of a recipe's types and levels: the types other than lighting (which
/// [`lighting_plan`] covers), levels uniform between the lowest and the highest, half the
/// images with two types.
pub fn generalising_plan(kinds: &[Corruption], levels: &[u8]) -> MixPlan {
    let lo = levels.iter().copied().min().unwrap_or(1).max(1);
    let hi = levels.iter().copied().max().unwrap_or(MAX_LEVEL).min(MAX_LEVEL);
    MixPlan {
        kinds: kinds.iter().copied().filter(|k| k.family() != Family::Illumination).collect(),
        lowest: f32::from(lo),
        highest: f32::from(hi),
        pair_share: 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn img() -> RgbImage {
        let data = (0..32 * 32 * 3).map(|i| ((i * 37) % 251) as u8).collect();
        RgbImage { width: 32, height: 32, data }
    }

    #[test]
    fn integer_levels_match_apply() {
        for kind in [Corruption::Noise, Corruption::Haze, Corruption::Rotate, Corruption::JpegRandom] {
            for level in 1..=MAX_LEVEL {
                let a = apply(&img(), kind, level, 7).unwrap();
                let b = apply_level(&img(), kind, f32::from(level), 7).unwrap();
                assert_eq!(a.data, b.data, "{kind} level {level}");
            }
        }
    }

    #[test]
    fn half_levels_lie_between_their_neighbours() {
        // Exposure is a gain and offset: its pixel values move monotonically with the level.
        let (a, m, b) = (
            apply(&img(), Corruption::Exposure, 2, 0).unwrap(),
            apply_level(&img(), Corruption::Exposure, 2.5, 0).unwrap(),
            apply(&img(), Corruption::Exposure, 3, 0).unwrap(),
        );
        for ((&x, &y), &z) in a.data.iter().zip(&m.data).zip(&b.data) {
            assert!(y >= x.min(z) && y <= x.max(z), "{x} {y} {z}");
        }
        assert_ne!(m.data, a.data);
        assert_ne!(m.data, b.data);
        // A strength type: rotation by 19 + 0.5 * (23.5 - 19) degrees.
        let r = apply_level(&img(), Corruption::Rotate, 2.5, 3).unwrap();
        assert_eq!(r.data, apply_strength(&img(), Corruption::Rotate, 21.25, 3).unwrap().data);
    }

    #[test]
    fn augment_sets_parse() {
        let p = |s: &str| s.parse::<AugmentSets>();
        assert_eq!(p("mixed").unwrap(), AugmentSets { mixed: true, lighting: false });
        assert_eq!(p("mixed, lighting").unwrap().name(), "mixed,lighting");
        assert!(!p("none").unwrap().any());
        assert!(p("mixd").unwrap_err().contains("mixed, lighting"));
    }

    #[test]
    fn levels_outside_the_range_are_errors() {
        for level in [0.5, 5.5, f32::NAN] {
            assert!(apply_level(&img(), Corruption::Noise, level, 0).is_err(), "{level}");
        }
    }

    #[test]
    fn pairs_come_from_two_families_in_pipeline_order() {
        let plan = MixPlan { kinds: Corruption::ALL.to_vec(), lowest: 2.0, highest: 5.0, pair_share: 0.5 };
        let mut rng = SplitMix64::new(1);
        let mixes: Vec<Mix> = (0..400).filter_map(|_| plan.draw(&mut rng)).collect();
        let pairs = mixes.iter().filter(|m| m.steps.len() == 2).count();
        assert!((150..250).contains(&pairs), "{pairs} pairs of 400");
        for m in &mixes {
            assert!(m.steps.iter().all(|s| (2.0..=5.0).contains(&s.level)), "{}", m.describe());
            if let [a, b] = m.steps.as_slice() {
                assert_ne!(a.kind.family(), b.kind.family());
                assert!(pipeline_rank(a.kind.family()) <= pipeline_rank(b.kind.family()));
            }
        }
    }

    #[test]
    fn mixed_corruptions_are_reproducible_and_recorded() {
        let images = vec![img(); 6];
        let plan = generalising_plan(&Corruption::ALL, &[2, 3, 4, 5]);
        let (a, ma) = mixed_corruptions(&images, &plan, 9).unwrap();
        let (b, mb) = mixed_corruptions(&images, &plan, 9).unwrap();
        assert_eq!(ma, mb);
        assert!(a.iter().zip(&b).all(|(x, y)| x.data == y.data));
        assert!(ma.iter().all(|m| !m.touches(Family::Illumination)));
        // Each image is its recorded mix applied with its pattern seed.
        assert_eq!(a[3].data, ma[3].apply(&images[3], image_seed(9, 3)).unwrap().data);
        let lighting = lighting_plan(&Corruption::ALL);
        let (_, ml) = mixed_corruptions(&images, &lighting, 9).unwrap();
        assert!(ml.iter().all(|m| m.steps.len() == 1 && m.touches(Family::Illumination)));
        let empty = MixPlan { kinds: vec![], ..lighting };
        assert!(mixed_corruptions(&images, &empty, 0).is_err());
    }
}
