//! Cached extraction: every set of the plan once through the full gradient graph (62 norms and
//! the 8 forward-only activation statistics) into the cache folder, and read back.
//!
//! Files: `<set>.features.npy`, `<set>.logits.npy` per set and `plan.json` (the plan the
//! cache was built for: images per set, set names, feature names). A cache of another plan is
//! refused; a set with the wrong shape is extracted again.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::corrupt::{self, image_seed};
use crate::detector::split::subsample;
use crate::frame::RgbImage;
use crate::grad::CompileOptions;
use crate::model::{LoadedModel, DEFAULT_MODEL};
use crate::runtime::extract::{self, FeatureSet};
use crate::runtime::{GradSession, RuntimeOptions};

use super::plan::{self, SetSpec, Source};
use super::Config;

/// The plan file of the cache folder.
const PLAN_FILE: &str = "plan.json";

/// What `plan.json` records.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Key {
    model: String,
    per_set: usize,
    sets: Vec<String>,
    features: Vec<String>,
}

/// One cached set.
#[derive(Clone, Debug)]
pub struct CachedSet {
    /// Its plan entry.
    pub spec: SetSpec,
    /// Features (one row per image, columns as [`Cache::names`]) and logits.
    pub features: FeatureSet,
}

/// The whole cache: every set of the plan in plan order, the feature names and the familiar
/// images' true classes.
#[derive(Clone, Debug)]
pub struct Cache {
    /// Feature names, one per column.
    pub names: Vec<String>,
    /// True class of each familiar image (row order of the sets).
    pub labels: Vec<usize>,
    /// Sets in plan order ([`plan::sets`]).
    pub sets: Vec<CachedSet>,
}

impl Cache {
    /// Images per set.
    pub fn per_set(&self) -> usize {
        self.labels.len()
    }
}

/// The familiar rows (`subsample` of GTSRB test) and their true classes.
fn familiar(data: &Path, per_set: usize) -> Result<(Vec<usize>, Vec<usize>)> {
    let path = data.join("gtsrb/test_labels.npy");
    let all =
        crate::data::load_npy_labels(&path).with_context(|| format!("reading {} (pass --data)", path.display()))?;
    if per_set > all.len() {
        bail!("--per-set {per_set}: GTSRB test has only {} images", all.len());
    }
    let idx = subsample(all.len(), per_set, plan::FAMILIAR_SEED);
    let labels = idx.iter().map(|&i| usize::try_from(all[i]).unwrap_or(usize::MAX)).collect();
    Ok((idx, labels))
}

/// Loads the cache, extracting whatever set is missing first (the expensive part: about
/// 7,800 images through the full graph for 300 per set).
pub fn load_or_extract(cfg: &Config) -> Result<Cache> {
    let specs = plan::sets()?;
    let (_, labels) = familiar(&cfg.data, cfg.per_set)?;
    std::fs::create_dir_all(&cfg.cache).with_context(|| format!("creating {}", cfg.cache.display()))?;
    let key_path = cfg.cache.join(PLAN_FILE);
    let key: Option<Key> = match std::fs::read_to_string(&key_path) {
        Ok(s) => Some(serde_json::from_str(&s).with_context(|| format!("reading {}", key_path.display()))?),
        Err(_) => None,
    };
    let set_names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    if let Some(k) = &key {
        if k.per_set != cfg.per_set || k.sets != set_names || k.model != DEFAULT_MODEL {
            bail!(
                "{}: a cache of {} images per set and {} sets (model {}), this plan wants {} and {} ({DEFAULT_MODEL}); \
                 pass another --cache or delete the folder",
                cfg.cache.display(),
                k.per_set,
                k.sets.len(),
                k.model,
                cfg.per_set,
                set_names.len()
            );
        }
    }
    let mut extractor: Option<Extractor> = None;
    let mut sets = Vec::with_capacity(specs.len());
    for spec in specs {
        let prefix = format!("{}.", spec.name);
        let want = key.as_ref().map(|k| k.features.len());
        let cached = FeatureSet::load(&cfg.cache, &prefix)?
            .filter(|f| f.len() == cfg.per_set && want.is_none_or(|w| f.features.ncols() == w));
        let features = match cached {
            Some(f) => f,
            None => {
                if extractor.is_none() {
                    extractor = Some(Extractor::new(cfg)?);
                }
                let ex = extractor.as_mut().context("extractor")?;
                let f = ex.extract(&spec)?;
                f.save(&cfg.cache, &prefix)?;
                f
            }
        };
        sets.push(CachedSet { spec, features });
    }
    let names = match (&key, &extractor) {
        (_, Some(ex)) => ex.names.clone(),
        (Some(k), None) => k.features.clone(),
        // A cache from before plan.json: the feature names come from the graph.
        (None, None) => Extractor::compile()?.compiled.features.clone(),
    };
    if sets.iter().any(|s| s.features.features.ncols() != names.len()) {
        bail!(
            "{}: a set's columns are not the graph's {} features; delete the folder",
            cfg.cache.display(),
            names.len()
        );
    }
    if key.is_none() {
        let k = Key { model: DEFAULT_MODEL.into(), per_set: cfg.per_set, sets: set_names, features: names.clone() };
        std::fs::write(&key_path, serde_json::to_string_pretty(&k)?)
            .with_context(|| format!("writing {}", key_path.display()))?;
    }
    Ok(Cache { names, labels, sets })
}

/// The images every set of the plan is made of: the familiar GTSRB test images (by row), the
/// CIFAR-10 ones, and the corruptions of the familiar ones.
pub struct Images {
    /// GTSRB test rows of the familiar images.
    idx: Vec<usize>,
    familiar: Vec<RgbImage>,
    cifar: Vec<RgbImage>,
}

impl Images {
    /// Loads the source images of `cfg.per_set` per set from `cfg.data`.
    pub fn load(cfg: &Config) -> Result<Images> {
        let (idx, _) = familiar(&cfg.data, cfg.per_set)?;
        let load = |rel: &str| {
            let p = cfg.data.join(rel);
            crate::data::load_npy_images(&p).with_context(|| format!("reading {} (pass --data)", p.display()))
        };
        let all = load("gtsrb/test_images.npy")?;
        let familiar = idx.iter().map(|&i| all[i].clone()).collect();
        let all = load("cifar10/test_images.npy")?;
        if all.len() < idx.len() {
            bail!("CIFAR-10 has {} images, fewer than --per-set {}", all.len(), idx.len());
        }
        let cifar = subsample(all.len(), idx.len(), plan::CIFAR_SEED).iter().map(|&i| all[i].clone()).collect();
        Ok(Images { idx, familiar, cifar })
    }

    /// The images of one set, in row order.
    pub fn of(&self, spec: &SetSpec) -> Result<Vec<RgbImage>> {
        let kinds = plan::kinds()?;
        Ok(match spec.source {
            Source::Familiar => self.familiar.clone(),
            Source::Cifar10 => self.cifar.clone(),
            Source::Corrupted { kind, level } => self
                .familiar
                .iter()
                .zip(&self.idx)
                .map(|(img, &orig)| corrupt::apply(img, kinds[kind], level, image_seed(0, orig)))
                .collect::<Result<_, _>>()?,
        })
    }
}

/// The model, its session and the source images, loaded on the first set to extract.
struct Extractor {
    model: LoadedModel,
    session: GradSession,
    names: Vec<String>,
    images: Images,
    batch: usize,
}

impl Extractor {
    /// The reference model's full graph with the activation statistics.
    fn compile() -> Result<LoadedModel> {
        let opts = CompileOptions { act_stats: true, ..Default::default() };
        LoadedModel::load(Path::new(DEFAULT_MODEL), &opts).with_context(|| format!("loading {DEFAULT_MODEL}"))
    }

    fn new(cfg: &Config) -> Result<Extractor> {
        let model = Self::compile()?;
        let rt = RuntimeOptions { threads: cfg.threads, ..Default::default() };
        let session = GradSession::new(&model.compiled, &rt)?;
        let names = model.compiled.features.clone();
        Ok(Extractor { model, session, names, images: Images::load(cfg)?, batch: cfg.batch })
    }

    fn extract(&mut self, spec: &SetSpec) -> Result<FeatureSet> {
        let images = self.images.of(spec)?;
        let t = Instant::now();
        let f = extract::extract_labelled(&mut self.session, &self.model.info, &images, self.batch, false, &spec.name)
            .with_context(|| format!("extracting {}", spec.name))?;
        log::info!("{}: {} images in {:.1} s", spec.name, images.len(), t.elapsed().as_secs_f64());
        Ok(f)
    }
}

/// A tiny cache for tests: every set of the plan, `n` rows; familiar rows small and confident
/// (top-1 = the label, 1), every other set large and flat (top-1 = 0: wrong).
#[cfg(test)]
pub(crate) fn fixture(n: usize) -> Cache {
    use ndarray::Array2;
    let names: Vec<String> =
        ["layer3.1.conv1.weight", "layer4.0.conv1.weight", "linear.weight", "act:x"].map(String::from).into();
    let sets = plan::sets()
        .unwrap()
        .into_iter()
        .enumerate()
        .map(|(si, spec)| {
            let familiar = spec.source == Source::Familiar;
            let base = if familiar { 1.0 } else { 50.0 + si as f32 };
            let features =
                Array2::from_shape_fn((n, names.len()), |(i, j)| base * (1.0 + 0.01 * ((i * 7 + j) % 5) as f32));
            let logits = Array2::from_shape_fn((n, 3), |(i, j)| match (familiar, j) {
                (true, 1) => 10.0 + (i % 3) as f32,
                (true, _) => 0.0,
                (false, _) => 1.0,
            });
            CachedSet { spec, features: FeatureSet { features, logits, penultimate: None } }
        })
        .collect();
    Cache { names, labels: vec![1; n], sets }
}
