//! Cached extraction: every distinct frame of the plan once through the gradient graph into
//! the cache folder, and the classifier's accuracy per corruption and level; read back as
//! scored tracks.

use std::collections::BTreeMap;
use std::io::BufRead;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::corrupt::Corruption;
use crate::detector::Calibration;
use crate::frame::RgbImage;
use crate::model::{top_class, LoadedModel};
use crate::rng::SplitMix64;
use crate::runtime::{extract, GradSession};
use crate::source::replay::corrupt_at;

use super::plan::*;
use super::*;

/// Files of the cache folder: the test-image tracks, and the real held-out tracks.
pub(super) const CACHE_INDEX: &str = "frames.csv";
pub(super) const CACHE_PREFIX: &str = "frames.";
pub(super) const REAL_INDEX: &str = "real.csv";
pub(super) const REAL_PREFIX: &str = "real.";
pub(super) const REAL_ONSET_INDEX: &str = "real-onset.csv";
pub(super) const REAL_ONSET_PREFIX: &str = "real-onset.";
/// Real tracks per corruption and onset level (a track is 30 frames: 3 s); as many as the
/// test tracks' onsets draw (with 8, rain 4's happened to be 89 % right where the camera's 133
/// signs are 74 % right).
pub(super) const REAL_ONSET_TRACKS: usize = 24;

/// What an extraction pass of one set of tracks writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Pass {
    /// Features, logits, image-quality measures and (last) the index: the whole set.
    Score,
    /// Only the image-quality measures, for a set scored before they were cached (the frames
    /// are rendered again, deterministically, without the gradient graph).
    Quality,
}

/// The cached image-quality measures of set `prefix` (`[N, 12]`, [`crate::quality::measure`]
/// of each frame as the model sees it, in the index's row order).
pub(super) fn quality_path(dir: &Path, prefix: &str) -> std::path::PathBuf {
    dir.join(format!("{prefix}quality.npy"))
}

/// The test images and labels of `--rows`, and what [`plan`] draws from them.
pub(super) fn load_plan(a: &Config) -> Result<(Vec<RgbImage>, Vec<i64>, Plan)> {
    let images = crate::data::load_npy_images(&a.data.join("test_images.npy"))
        .with_context(|| format!("reading {}/test_images.npy (pass --data)", a.data.display()))?;
    let labels = crate::data::load_npy_labels(&a.data.join("test_labels.npy"))?;
    let rows = crate::data::parse_rows(&a.rows, images.len()).map_err(anyhow::Error::msg)?;
    let plan = plan(rows)?;
    Ok((images, labels, plan))
}

/// Runs every planned frame through the gradient graph and writes the cache folder.
pub(super) fn extract_cache(a: &Config, pass: Pass) -> Result<()> {
    let (images, labels, plan) = load_plan(a)?;
    let frames = |s: &TrackSpec| render(s, images.get(s.image).context("image index")?);
    score_tracks(a, &plan.tracks, frames, |s| labels.get(s.image).copied(), (CACHE_INDEX, CACHE_PREFIX), pass)
}

/// The held-out real tracks (`--heldout`, rows of `train_images.npy`) through the gradient
/// graph, as the cache's `real.*` files.
pub(super) fn extract_real(a: &Config, pass: Pass) -> Result<()> {
    let (images, labels, specs) = load_real(a)?;
    let frames = |s: &TrackSpec| {
        (s.image..s.image + s.len)
            .map(|r| {
                images
                    .get(r)
                    .cloned()
                    .with_context(|| format!("{}: row {r} is not in train_images.npy", a.heldout.display()))
            })
            .collect::<Result<Vec<_>>>()
    };
    score_tracks(a, &specs, frames, |s| labels.get(s.image).copied(), (REAL_INDEX, REAL_PREFIX), pass)
}

/// The held-out real tracks corrupted at every onset level: [`REAL_ONSET_TRACKS`] per type and
/// level (seeded draw), one pattern per track, no zoom or noise added; as `real-onset.*`.
pub(super) fn extract_real_onsets(a: &Config, pass: Pass) -> Result<()> {
    let (images, labels, real) = load_real(a)?;
    let mut specs = Vec::new();
    for (ki, kind) in Corruption::ALL.into_iter().enumerate() {
        for level in ONSET_LEVELS {
            let mut order: Vec<&TrackSpec> = real.iter().collect();
            SplitMix64::new(SEED ^ 0x0A5E7 ^ ((ki * 8 + usize::from(level)) as u64) << 24).shuffle(&mut order);
            for t in order.into_iter().take(REAL_ONSET_TRACKS) {
                let level = f32::from(level);
                specs.push(TrackSpec { group: "real-onset", kind: Some(kind), level, image: t.image, len: t.len });
            }
        }
    }
    let frames = |s: &TrackSpec| {
        let kind = s.kind.context("a real onset track without a corruption")?;
        let lens_seed = SEED ^ (s.image as u64) << 8 ^ kind.name().len() as u64;
        (s.image..s.image + s.len)
            .map(|r| {
                let img = images.get(r).with_context(|| format!("row {r} is not in train_images.npy"))?;
                Ok(corrupt_at(img, kind, s.level, lens_seed)?)
            })
            .collect::<Result<Vec<_>>>()
    };
    score_tracks(a, &specs, frames, |s| labels.get(s.image).copied(), (REAL_ONSET_INDEX, REAL_ONSET_PREFIX), pass)
}

/// The training images and labels, and the held-out tracks of `--heldout` in them.
pub(super) fn load_real(a: &Config) -> Result<(Vec<RgbImage>, Vec<i64>, Vec<TrackSpec>)> {
    let images = crate::data::load_npy_images(&a.data.join("train_images.npy"))
        .with_context(|| format!("reading {}/train_images.npy (pass --data)", a.data.display()))?;
    let labels = crate::data::load_npy_labels(&a.data.join("train_labels.npy"))?;
    Ok((images, labels, heldout_tracks(&a.heldout)?))
}

/// The tracks of `--heldout` (`class,track,first_row,rows`): a track's `image` is its first row.
pub(super) fn heldout_tracks(path: &Path) -> Result<Vec<TrackSpec>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let p: Vec<&str> = line.split(',').collect();
        let parse = |i: usize| p.get(i).and_then(|v| v.parse::<usize>().ok());
        let (Some(image), Some(len)) = (parse(2), parse(3)) else {
            bail!("{}:{}: expected class,track,first_row,rows", path.display(), n + 1);
        };
        out.push(TrackSpec { group: "real", kind: None, level: 0.0, image, len });
    }
    Ok(out)
}

/// Runs the frames of `specs` (from `frames_of`; `label_of` gives a track's class) through the
/// gradient graph, whole tracks at a time, and writes `<prefix>features.npy`,
/// `<prefix>logits.npy`, `<prefix>quality.npy` and the index `index` (last: it marks a complete
/// set) to the cache; [`Pass::Quality`] writes only the quality measures.
pub(super) fn score_tracks(
    a: &Config,
    specs: &[TrackSpec],
    frames_of: impl Fn(&TrackSpec) -> Result<Vec<RgbImage>>,
    label_of: impl Fn(&TrackSpec) -> Option<i64>,
    (index_name, prefix): (&str, &str),
    pass: Pass,
) -> Result<()> {
    use std::fmt::Write as _;
    let calib = Calibration::load(&a.calib)?;
    // The calibration's own graph (a `fast` or `head` calibration reads fewer features).
    let opts = calib.model.compile_options().map_err(|e| anyhow::anyhow!("{}: {e}", a.calib.display()))?;
    let mut model = LoadedModel::load(&a.model, &opts)?;
    calib.check_model(&model.info.sha256, &model.compiled.features)?;
    model.use_preprocessing(calib.model.preprocessing.as_ref())?;
    let mut session = match pass {
        Pass::Score => Some(GradSession::new(
            &model.compiled,
            &crate::runtime::RuntimeOptions { threads: a.threads, ..Default::default() },
        )?),
        Pass::Quality => None,
    };
    let total: usize = specs.iter().map(|s| s.len).sum();
    eprintln!("bench-alarms: {pass:?} pass over {total} distinct frames ({} tracks) of {index_name}", specs.len());
    std::fs::create_dir_all(&a.cache)?;
    let mut index = String::from("group,kind,level,image,frame,correct\n");
    let (mut parts, mut quality) = (Vec::new(), Vec::new());
    let t0 = Instant::now();
    let mut done = 0usize;
    // Batches of whole tracks, about 256 frames at a time.
    let mut i = 0;
    while i < specs.len() {
        let mut frames = Vec::new();
        let mut owners = Vec::new();
        while i < specs.len() && frames.len() < 256 {
            for (j, f) in frames_of(&specs[i])?.into_iter().enumerate() {
                frames.push(f);
                owners.push((i, j));
            }
            i += 1;
        }
        quality.push(crate::quality::measure_batch(&frames, model.info.width, model.info.height));
        if let Some(session) = session.as_mut() {
            let fs = extract::extract(session, &model.info, &frames, a.batch, false)?;
            for ((si, j), z) in owners.iter().zip(fs.logits.outer_iter()) {
                let s = &specs[*si];
                let (cls, _) = top_class(&z.to_vec());
                let correct = label_of(s) == Some(cls as i64);
                let kind = s.kind.map_or("none", Corruption::name);
                let _ = writeln!(index, "{},{kind},{},{},{j},{}", s.group, s.level, s.image, u8::from(correct));
            }
            parts.push(fs);
        }
        done += frames.len();
        let el = t0.elapsed().as_secs_f64();
        eprintln!(
            "bench-alarms: {done}/{total} frames, {:.1} ms/frame, eta {:.0} s",
            1000.0 * el / done as f64,
            el / done as f64 * (total - done) as f64
        );
    }
    let views: Vec<_> = quality.iter().map(|q| q.view()).collect();
    let quality = ndarray::concatenate(ndarray::Axis(0), &views)?;
    extract::write_npy(&quality_path(&a.cache, prefix), &quality)?;
    if pass == Pass::Score {
        let refs: Vec<&extract::FeatureSet> = parts.iter().collect();
        extract::FeatureSet::concat(&refs)?.save(&a.cache, prefix)?;
        std::fs::write(a.cache.join(index_name), index)?;
    }
    Ok(())
}

/// Images of the accuracy table: one frame each (rendered as a track's frame would be) per
/// corruption and onset level. Enough that whether a cell is harmful is not decided by a few
/// signs: the onsets' 8 tracks gave sticker 3 an accuracy of 74 % where 1,000 single images
/// give 85.6 ± 1.1 % (`docs/results/results-risk`). Standard error at 80 %: 1.8 points.
pub(super) const ACCURACY_IMAGES: usize = 500;
/// The accuracy table in the cache folder.
pub(super) const ACCURACY_FILE: &str = "accuracy.csv";

/// The second camera's accuracy table in the cache folder: one frame of each real track.
pub(super) const REAL_ACCURACY_FILE: &str = "real-accuracy.csv";

/// Classifies [`ACCURACY_IMAGES`] frames per (corruption, onset level) with the plain
/// classifier and writes [`ACCURACY_FILE`] to the cache folder.
pub(super) fn extract_accuracy(a: &Config) -> Result<()> {
    let (images, labels, plan) = load_plan(a)?;
    let frame = |kind: Corruption, level: f32, image: usize| {
        let len = len_of(image);
        let spec = TrackSpec { group: "accuracy", kind: Some(kind), level, image, len };
        // A frame anywhere in the track's zoom.
        let j = SplitMix64::new(SEED ^ 0xACC ^ (image as u64) << 12).below(len);
        render_frame(&spec, images.get(image).context("image index")?, j)
    };
    accuracy_table(a, &plan.accuracy, frame, |image| labels.get(image).copied(), ACCURACY_FILE)
}

/// The same table for the real held-out tracks: one frame of each (anywhere in it), corrupted
/// as its onset tracks are, into [`REAL_ACCURACY_FILE`].
pub(super) fn extract_real_accuracy(a: &Config) -> Result<()> {
    let (images, labels, real) = load_real(a)?;
    let rows: Vec<usize> =
        real.iter().map(|t| t.image + SplitMix64::new(SEED ^ 0xACC ^ (t.image as u64) << 12).below(t.len)).collect();
    let first: BTreeMap<usize, usize> =
        real.iter().flat_map(|t| (t.image..t.image + t.len).map(move |r| (r, t.image))).collect();
    let frame = |kind: Corruption, level: f32, row: usize| {
        let img = images.get(row).with_context(|| format!("row {row} is not in train_images.npy"))?;
        // The pattern of the track's onset version (seeded by its first row).
        let lens_seed = SEED ^ (first.get(&row).copied().unwrap_or(row) as u64) << 8 ^ kind.name().len() as u64;
        Ok(corrupt_at(img, kind, level, lens_seed)?)
    };
    accuracy_table(a, &rows, frame, |row| labels.get(row).copied(), REAL_ACCURACY_FILE)
}

/// Classifies `frame(kind, level, image)` for every image of `images` at every (corruption,
/// onset level) with the plain classifier; writes `kind,level,images,correct` to `file`.
pub(super) fn accuracy_table(
    a: &Config,
    images: &[usize],
    frame: impl Fn(Corruption, f32, usize) -> Result<RgbImage>,
    label_of: impl Fn(usize) -> Option<i64>,
    file: &str,
) -> Result<()> {
    use std::fmt::Write as _;
    let model_path = &a.model;
    let mut classifier = crate::lab::eval::accuracy::Classifier::load(
        model_path,
        &crate::runtime::RuntimeOptions { threads: a.threads, ..Default::default() },
    )?;
    let mut out = String::from("kind,level,images,correct\n");
    for kind in Corruption::ALL {
        for level in ONSET_LEVELS {
            let frames =
                images.iter().map(|&image| frame(kind, f32::from(level), image)).collect::<Result<Vec<_>>>()?;
            let predicted = classifier.predict(&frames, a.batch)?;
            let correct = predicted.iter().zip(images).filter(|(&p, &image)| label_of(image) == Some(p as i64)).count();
            writeln!(out, "{},{level},{},{correct}", kind.name(), frames.len())?;
            eprintln!("bench-alarms: {file} {} {level}: {correct}/{}", kind.name(), frames.len());
        }
    }
    std::fs::write(a.cache.join(file), out)?;
    Ok(())
}

/// The classifier's accuracy per (corruption name, level) from an accuracy table of `images`
/// images per cell.
pub(super) fn load_accuracy(dir: &Path, file: &str, images_per_cell: usize) -> Result<BTreeMap<(String, u8), f64>> {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate().skip(1) {
        let bad = || anyhow::anyhow!("{}:{}: expected kind,level,images,correct", path.display(), n + 1);
        let p: Vec<&str> = line.split(',').collect();
        let [kind, level, images, correct] = p.as_slice() else { return Err(bad()) };
        let level: u8 = level.parse().map_err(|_| bad())?;
        let images: usize = images.parse().map_err(|_| bad())?;
        let correct: usize = correct.parse().map_err(|_| bad())?;
        if images != images_per_cell || correct > images {
            bail!(
                "{}:{}: {correct} of {images} images, this benchmark draws {images_per_cell}; delete it to rebuild it",
                path.display(),
                n + 1
            );
        }
        out.insert((kind.to_string(), level), correct as f64 / images as f64);
    }
    Ok(out)
}

/// Reads one set of the cache folder (`index`, `<prefix>*.npy`) and scores it with `calib`,
/// into tracks in file order.
pub(super) fn load_tracks(dir: &Path, index_name: &str, prefix: &str, calib: &Calibration) -> Result<Vec<CachedTrack>> {
    let path = dir.join(index_name);
    let fs = extract::FeatureSet::load(dir, prefix)?
        .with_context(|| format!("{}: no {prefix}features.npy; delete the folder to rebuild it", dir.display()))?;
    if fs.features.ncols() != calib.model.features.len() {
        bail!(
            "{}: the cache has {} features per frame, the calibration {} (another preset?); give another --cache, or delete this one to rebuild it",
            dir.display(),
            fs.features.ncols(),
            calib.model.features.len()
        );
    }
    // Read whenever cached (the image-evidence section uses them), required when the
    // calibration scores with them.
    let quality = match calib.uses_quality() || quality_path(dir, prefix).exists() {
        true => {
            let q = extract::read_npy(&quality_path(dir, prefix))?;
            if q.nrows() != fs.features.nrows() {
                bail!(
                    "{}: {} rows of image-quality measures for {} frames; delete {prefix}quality.npy to measure them again",
                    dir.display(),
                    q.nrows(),
                    fs.features.nrows()
                );
            }
            Some(q)
        }
        false => None,
    };
    let scores = calib.score(&fs.features, &fs.logits, quality.as_ref().filter(|_| calib.uses_quality()));
    let f = std::fs::File::open(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut tracks: Vec<CachedTrack> = Vec::new();
    let mut index: BTreeMap<(String, String, String, usize), usize> = BTreeMap::new();
    for (n, line) in std::io::BufReader::new(f).lines().enumerate().skip(1) {
        let line = line?;
        let p: Vec<&str> = line.split(',').collect();
        if p.len() != 6 {
            bail!("{}:{}: expected 6 fields", path.display(), n + 1);
        }
        let bad = |what: &str| anyhow::anyhow!("{}:{}: bad {what}", path.display(), n + 1);
        let image: usize = p[3].parse().map_err(|_| bad("image"))?;
        let key = (p[0].to_string(), p[1].to_string(), p[2].to_string(), image);
        let t = *index.entry(key).or_insert_with(|| {
            tracks.push(CachedTrack {
                group: p[0].to_string(),
                kind: p[1].to_string(),
                level: p[2].parse().unwrap_or(0.0),
                frames: Vec::new(),
            });
            tracks.len() - 1
        });
        if p[4].parse::<usize>().ok() != Some(tracks[t].frames.len()) {
            return Err(bad("frame (out of order)"));
        }
        let score = *scores.get(n - 1).ok_or_else(|| bad("row (more rows than features)"))?;
        let quality = match &quality {
            Some(q) => {
                Some(q.row(n - 1).iter().copied().collect::<Vec<f32>>().try_into().map_err(|_| bad("quality row"))?)
            }
            None => None,
        };
        tracks[t].frames.push(CachedFrame { score, correct: p[5] == "1", quality });
    }
    Ok(tracks)
}

/// Fails when the cache holds another number of tracks per group than [`plan`] draws (a cache
/// made by another version of the benchmark would be reported as if it were this one).
pub(super) fn check_plan(tracks: &[CachedTrack]) -> Result<()> {
    let kinds = Corruption::ALL.len();
    let expected = [
        ("learn", LEARN_TRACKS),
        ("clean", CLEAN_TRACKS),
        ("onset", kinds * ONSET_LEVELS.len() * ONSET_TRACKS),
        ("ramp", kinds * RAMP_LEVELS.len() * RAMP_TRACKS),
    ];
    for (group, want) in expected {
        let have = tracks.iter().filter(|t| t.group == group).count();
        if have != want {
            bail!("the cache has {have} {group} tracks where this benchmark draws {want} (made by another version)");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::{load_tracks, quality_path};
    use crate::detector::{Calibration, DetectorKind, Standardizer};
    use crate::runtime::extract::{write_npy, FeatureSet};

    /// The shipped calibration with its detector made to read the image-quality measures too
    /// (every member gains a weight on each, standardised with mean 0 and std 1).
    fn quality_calibration() -> Calibration {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/gtsrb-resnet18.calib.toml");
        let mut c = Calibration::load(std::path::Path::new(path)).unwrap();
        let q = crate::quality::Measure::ALL.len();
        let DetectorKind::Ensemble(e) = &mut c.detector else { panic!("the shipped detector is an ensemble") };
        e.quality_normalize = Some(Standardizer { mean: vec![0.0; q], std: vec![1.0; q] });
        for m in &mut e.members {
            m.w1.iter_mut().for_each(|row| row.extend(std::iter::repeat_n(0.5, q)));
        }
        assert!(c.uses_quality());
        c
    }

    #[test]
    fn cached_quality_measures_reach_the_scores_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let calib = quality_calibration();
        // Two frames of one track, alike but for their quality measures.
        let fs = FeatureSet {
            features: Array2::from_elem((2, calib.model.features.len()), 1e-3),
            logits: Array2::zeros((2, 43)),
            penultimate: None,
        };
        fs.save(dir.path(), "frames.").unwrap();
        let index = "group,kind,level,image,frame,correct\nclean,none,0,7,0,1\nclean,none,0,7,1,1\n";
        std::fs::write(dir.path().join("frames.csv"), index).unwrap();
        let load = || load_tracks(dir.path(), "frames.csv", "frames.", &calib);
        let e = format!("{:#}", load().unwrap_err());
        assert!(e.contains("frames.quality.npy"), "{e}");

        let q = ndarray::stack![ndarray::Axis(0), [0.0f32; 12], [3.0f32; 12]];
        write_npy(&quality_path(dir.path(), "frames."), &q).unwrap();
        let tracks = load().unwrap();
        let got: Vec<f32> = tracks[0].frames.iter().map(|f| f.score).collect();
        let want = calib.score(&fs.features, &fs.logits, Some(&q));
        assert_eq!(got, want);
        assert!(want[0].is_finite() && want[0] != want[1], "{want:?}");

        write_npy(&quality_path(dir.path(), "frames."), &q.slice(ndarray::s![..1, ..]).to_owned()).unwrap();
        let e = load().unwrap_err().to_string();
        assert!(e.contains("1 rows of image-quality measures for 2 frames"), "{e}");
    }
}
