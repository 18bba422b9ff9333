//! The paper's evaluation protocol (Lee & AlRegib, ICIP 2020, Sec. 4) on GTSRB: familiar =
//! GTSRB test images; unfamiliar = CIFAR-10 test images and CURE-TSR-style corruptions of the
//! same familiar images at levels 1-5. Per (familiar, unfamiliar) pair, 40/40/20
//! train/validation/test splits; our detector and the baselines are reported on the test split.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array2, Axis};

use super::baselines::{self, MahalanobisScorer};
use super::feature_baselines::{self as fb, Fdbd, Knn, Vim};
use super::results::{FamilyRow, GenRow, MisclassRow, OdinChoice, Results, RiskCell, Row, METHODS, POOLED};
use super::EvalError;
use crate::corrupt::{self, image_seed, Corruption, Family};
use crate::detector::fit::DetectorChoice;
use crate::detector::roc as metrics;
use crate::detector::split::{pick, rows, split_40_40_20, subsample, Split};
use crate::detector::{
    Ensemble, EnsembleConfig, FrameInputs, GradDetector, LabelledRows, MlpConfig, Origin, Reference, Target,
};
use crate::frame::RgbImage;
use crate::grad::{self, CompileOptions, Loss};
use crate::model::LoadedModel;
use crate::runtime::extract::{self as features, FeatureSet};
use crate::runtime::{GradSession, ModelSession, RuntimeOptions};

mod analyses;
mod augment;
mod risk_fit;

use analyses::*;
use risk_fit::RiskFit;

/// Options of [`run`].
#[derive(Clone, Debug)]
pub struct EvalConfig {
    /// Data folder holding `gtsrb/test_images.npy` (and `gtsrb/test_labels.npy`, optional).
    pub data: PathBuf,
    /// Folder holding CIFAR-10's `test_images.npy` (default `DATA/cifar10`).
    pub cifar: Option<PathBuf>,
    /// Images per set (familiar, CIFAR-10, each corruption level).
    pub per_set: usize,
    /// Rows of `test_images.npy` the familiar images are drawn from (`None`: all). The
    /// published results use [`crate::data::GTSRB_TEST_EVAL_ROWS`], the half the shipped
    /// calibrations were not fitted on.
    pub familiar_rows: Option<String>,
    /// Seed of subsamples, splits, corruption patterns and detector training.
    pub seed: u64,
    /// Output folder (`results.md`, `results.csv`, `figures/`).
    pub out: PathBuf,
    /// Feature cache folder (default `OUT/cache`); entries are keyed by model sha256, set size
    /// and seed, so reruns only compute what is missing.
    pub cache: Option<PathBuf>,
    /// Batch size of the graph runs.
    pub batch: usize,
    /// Corruption types.
    pub corruptions: Vec<Corruption>,
    /// Their levels (sorted, within 1..=5; usually all five).
    pub levels: Vec<u8>,
    /// ODIN temperatures for the familiar set and CIFAR-10.
    pub odin_temperatures: Vec<f32>,
    /// ODIN temperatures for the corrupted sets (a subset of `odin_temperatures` keeps the
    /// cost down: each temperature is one more backward pass per image). The pairs with
    /// corruptions choose among these.
    pub odin_corruption_temperatures: Vec<f32>,
    /// ODIN perturbation sizes (image units).
    pub odin_epsilons: Vec<f32>,
    /// Detector training.
    pub mlp: MlpConfig,
    /// KNN's k (0: [`Knn::auto_k`] of the familiar training split).
    pub knn_k: usize,
    /// ViM's principal dimension (0: [`Vim::auto_dim`]).
    pub vim_dim: usize,
    /// The risk detector's target (`None`: the calibration default's).
    pub risk_target: Option<Target>,
    /// Training seeds of the trust head for the spread of its AUROC (1: just the one).
    pub trust_seeds: usize,
    /// Whether the risk detector (the camera-health score) reads the image-quality measures
    /// (`--quality`; the trust head never does).
    pub quality: bool,
    /// Whether the generalising detectors (pooled, leave one family out) also train on the
    /// recipe's mixed and/or lighting sets (`--augment`, `augment`).
    pub augment: crate::corrupt::mix::AugmentSets,
    /// Copies of each familiar image in the mixed set, each with its own draw. The plan's sets
    /// are every type at every level (about 100 sets of the familiar images), so one copy is
    /// 1 % of a detector's training rows (the recipe's is half) and ten are 9 %.
    pub augment_copies: usize,
    /// Whether the detectors that stand for the shipped one (pooled, leave one family out, one
    /// type held out) train on one corrupted copy of each familiar image, its type and level
    /// round-robin as `calibrate` draws them, instead of every type at every level
    /// (`--one-copy`, `corrupted_parts`).
    pub one_copy: bool,
    /// Run the trust analysis only (issue #24's table and leave-one-family-out), skipping the
    /// detection pairs, generalisation and risk analyses: for iterating on the trust head.
    pub trust_only: bool,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
    /// The command line, for the report.
    pub command: String,
}

/// One image set with everything computed on it.
struct SetData {
    name: String,
    feats: FeatureSet,
    /// Per method: scores.
    scores: BTreeMap<&'static str, Vec<f32>>,
    /// `[N, temps * eps]`.
    odin: Array2<f32>,
    /// The temperatures of `odin`'s column blocks.
    odin_temps: Vec<f32>,
    /// Per image: whether the classifier's top class is wrong (`None`: no labels, CIFAR-10).
    wrong: Option<Vec<bool>>,
    /// `[N, 12]` image-quality measures (with `--quality`).
    quality: Option<Array2<f32>>,
}

/// Methods whose scores are fixed functions of one image (no per-pair fitting).
const FIXED: [&str; 7] = ["msp", "mahalanobis", "energy", "gradnorm", "knn", "vim", "fdbd"];

/// Name of the set of `kind` at `level`.
pub fn set_name(kind: Corruption, level: u8) -> String {
    format!("{}/{level}", kind.name())
}

fn cache_prefix(name: &str) -> String {
    format!("{}.", name.replace('/', "-"))
}

/// Runs the protocol and returns every number; `super::report::write` renders them.
pub fn run(model_path: &Path, cfg: &EvalConfig, rt: &RuntimeOptions) -> Result<Results, EvalError> {
    let t_all = Instant::now();
    let mut timings: Vec<(String, f64)> = Vec::new();
    let n = cfg.per_set;
    if n < 10 {
        return Err(EvalError::Invalid(format!("--per-set {n} is too small; use at least 10 (5 test images per set)")));
    }

    // Graphs: features + penultimate + logits; ODIN (input gradient); plain forward.
    let t0 = Instant::now();
    let model = LoadedModel::load(model_path, &CompileOptions { penultimate: true, ..Default::default() })
        .map_err(|e| EvalError::Invalid(format!("{}: {e}", model_path.display())))?;
    let info = model.info.clone();
    let mut session = GradSession::new(&model.compiled, rt)?;
    let odin_compiled =
        grad::compile(&model.model, &CompileOptions { loss: Loss::Odin, input_grad: true, ..Default::default() })
            .map_err(|e| EvalError::Invalid(format!("compiling the ODIN graph: {e}")))?;
    let mut odin_session = baselines::OdinGraph::new(&odin_compiled, rt)?;
    let (fwd_model, fwd_out) = crate::model::forward_logits_model(&model.model)?;
    let mut forward = ModelSession::new(&crate::onnx::encode(&fwd_model), rt)?;
    timings.push(("load and compile".into(), t0.elapsed().as_secs_f64()));

    // Data.
    let Images { fam_images, fam_idx, fam_labels, cifar_images, rows_key } = load_images(cfg, n)?;
    let n = fam_images.len();

    let cache = cfg.cache.clone().unwrap_or_else(|| cfg.out.join("cache")).join(format!(
        "{}-n{n}-s{}{rows_key}",
        &info.sha256[..12.min(info.sha256.len())],
        cfg.seed
    ));
    std::fs::create_dir_all(&cache).map_err(|e| EvalError::file(&cache, e))?;
    let plan = plan_sets(cfg)?;
    let (ex, st) = extract_sets(
        cfg,
        &plan,
        &cache,
        &mut session,
        &mut odin_session,
        &mut forward,
        &model,
        &fwd_out,
        (&fam_images, &fam_idx),
        &cifar_images,
    )?;
    timings.push(("corrupt images".into(), st.corrupt_secs));
    timings.push(("gradient features (uncached sets)".into(), st.extract_secs));
    timings.push(("ODIN grid (uncached sets)".into(), st.odin_secs));
    let features_per_sec = if st.extract_secs > 0.0 { st.extracted as f64 / st.extract_secs } else { f64::NAN };
    let ta = Instant::now();
    let augment_sets = augment::extract(cfg, &plan, &cache, &mut session, &info, &fam_images, fam_labels.as_deref())?;
    if augment_sets.is_some() {
        timings.push(("augment sets".into(), ta.elapsed().as_secs_f64()));
    }

    // Splits: one 40/40/20 split of 0..n shared by the familiar set and its corrupted copies
    // (the clean and the corrupted version of an image always fall in the same part, so no
    // image content leaks from training into testing); CIFAR-10 gets its own.
    let sp = split_40_40_20(n, cfg.seed);
    let sp_cifar = split_40_40_20(n, cfg.seed.wrapping_add(1));

    // Baselines fitted on the familiar training split.
    let tb = Instant::now();
    let scored = score_sets(cfg, &model, &fwd_out, &plan, ex, &fam_labels, &sp)?;
    // The augment sets sit after the plan's: only the risk fit sees them.
    let (all_data, augment) = augment::append(scored.data, augment_sets);
    let data = &all_data[..plan.len()];
    timings.push(("baseline scores".into(), tb.elapsed().as_secs_f64()));
    let accuracy = fam_labels.as_ref().map(|l| top1_accuracy(&data[0].feats.logits, l));

    if cfg.trust_only {
        let tt = Instant::now();
        let graph = (&mut session, &info, fam_images.as_slice());
        let Some(trust) = trust_of(cfg, data, &plan, fam_labels.as_deref(), (&sp, &sp_cifar), &[], graph)? else {
            return Err(EvalError::Invalid("--trust-only needs the familiar images' labels and corruptions".into()));
        };
        timings.push(("trust analysis".into(), tt.elapsed().as_secs_f64()));
        timings.push(("total".into(), t_all.elapsed().as_secs_f64()));
        return Ok(Results { timings, features_per_sec, trust: Some(trust), ..header(&info, cfg, n, accuracy) });
    }

    let tp = Instant::now();
    let fam = &data[0];
    let risk_opts = DetectorChoice::Risk.options();
    let risk = RiskFit {
        data: &all_data,
        augment,
        cfg: EnsembleConfig {
            // Without true classes the calibration falls back to novelty labels too.
            target: if fam.wrong.is_some() { cfg.risk_target.unwrap_or(risk_opts.target) } else { Target::Novelty },
            forward: risk_opts.forward,
            members: risk_opts.members,
            mlp: cfg.mlp.clone(),
            quality: cfg.quality,
        },
    };
    let pairs = run_pairs(cfg, data, &sp, &sp_cifar, &risk)?;
    timings.push(("per-pair detectors and metrics".into(), tp.elapsed().as_secs_f64()));
    let fit = Fitted { cfg, data, sp: &sp, risk: &risk, pairs: &pairs };

    let tg = Instant::now();
    let generalisation = generalisation(&fit)?;
    timings.push(("generalisation detectors".into(), tg.elapsed().as_secs_f64()));

    let tf = Instant::now();
    let (family_out, lofo) = family_out(&fit)?;
    timings.push(("leave-one-family-out detectors".into(), tf.elapsed().as_secs_f64()));

    let tr = Instant::now();
    let risk_cells = risk_cells(&fit, &lofo)?;
    let misclass = misclassification(&fit)?;
    timings.push(("risk analysis".into(), tr.elapsed().as_secs_f64()));
    let trust_extra = misclass.trust_extra;

    // The trust question: the trust head against the softmax-family baselines (issue #24).
    let tt = Instant::now();
    let graph = (&mut session, &info, fam_images.as_slice());
    let trust = trust_of(cfg, data, &plan, fam_labels.as_deref(), (&sp, &sp_cifar), &trust_extra, graph)?;
    timings.push(("trust analysis".into(), tt.elapsed().as_secs_f64()));

    let profile = grad_profile(data);
    timings.push(("total".into(), t_all.elapsed().as_secs_f64()));

    Ok(Results {
        augment: cfg.augment.name().to_string(),
        one_copy: cfg.one_copy,
        mahalanobis_labels: scored.mahalanobis_labels,
        sets: data.iter().map(|d| (d.name.clone(), d.feats.len())).collect(),
        rows: pairs.rows,
        generalisation,
        family_out,
        risk_cells,
        misclassification: misclass.rows,
        risk_curves: misclass.curves,
        knn_k: scored.knn_k,
        vim_dim: scored.vim_dim,
        odin: pairs.odin,
        timings,
        features_per_sec,
        roc: pairs.roc,
        grad_profile: profile,
        feature_names: model.compiled.features.clone(),
        odin_temperatures: cfg.odin_temperatures.clone(),
        odin_corruption_temperatures: cfg.odin_corruption_temperatures.clone(),
        odin_epsilons: cfg.odin_epsilons.clone(),
        trust,
        ..header(&info, cfg, n, accuracy)
    })
}

/// The header fields of [`Results`]: model, command, images per set, seed, accuracy.
fn header(info: &crate::model::ModelInfo, cfg: &EvalConfig, n: usize, accuracy: Option<f64>) -> Results {
    Results {
        model_name: info.name.clone(),
        model_sha256: info.sha256.clone(),
        command: cfg.command.clone(),
        per_set: n,
        seed: cfg.seed,
        familiar_accuracy: accuracy,
        ..Default::default()
    }
}

/// The trust analysis and the graph's time per frame it is compared with; `None` without the
/// familiar images' labels or corruptions.
fn trust_of(
    cfg: &EvalConfig,
    data: &[SetData],
    plan: &[(String, Option<(Corruption, u8)>)],
    labels: Option<&[usize]>,
    splits: (&Split, &Split),
    extra: &[(String, Vec<f32>)],
    (session, info, images): (&mut GradSession, &crate::model::ModelInfo, &[RgbImage]),
) -> Result<Option<super::trust::TrustResults>, EvalError> {
    let Some(labels) = labels.filter(|_| !cfg.corruptions.is_empty()) else { return Ok(None) };
    let mut t = trust_analysis(cfg, data, plan, labels, splits, extra)?;
    t.graph_secs_per_frame = graph_secs_per_frame(session, info, images, cfg.batch)?;
    Ok(Some(t))
}

/// Every set: the familiar images, CIFAR-10, each corruption x level of the familiar images
/// (name, corruption and level); checks the levels and ODIN temperatures first.
#[allow(clippy::type_complexity)]
fn plan_sets(cfg: &EvalConfig) -> Result<Vec<(String, Option<(Corruption, u8)>)>, EvalError> {
    for t in &cfg.odin_corruption_temperatures {
        if !cfg.odin_temperatures.contains(t) {
            return Err(EvalError::Invalid(format!(
                "ODIN corruption temperature {t} must also be one of the temperatures {:?}",
                cfg.odin_temperatures
            )));
        }
    }
    // Every set: the familiar images, CIFAR-10, each corruption x level of the familiar images.
    let mut plan: Vec<(String, Option<(Corruption, u8)>)> = vec![("familiar".into(), None), ("cifar10".into(), None)];
    if cfg.levels.is_empty() || cfg.levels.iter().any(|&l| l == 0 || l > corrupt::MAX_LEVEL) {
        return Err(EvalError::Invalid(format!(
            "levels {:?}: use levels within 1..={}",
            cfg.levels,
            corrupt::MAX_LEVEL
        )));
    }
    for &k in &cfg.corruptions {
        for &level in &cfg.levels {
            plan.push((set_name(k, level), Some((k, level))));
        }
    }
    Ok(plan)
}

/// The images of an evaluation: `n` familiar GTSRB test images (with their labels when known)
/// and `n` CIFAR-10 images, each drawn with the seed.
struct Images {
    fam_images: Vec<RgbImage>,
    fam_idx: Vec<usize>,
    fam_labels: Option<Vec<usize>>,
    cifar_images: Vec<RgbImage>,
    /// The cache key's part for `--familiar-rows`.
    rows_key: String,
}

fn load_images(cfg: &EvalConfig, n: usize) -> Result<Images, EvalError> {
    let gtsrb = cfg.data.join("gtsrb");
    let all_fam = crate::data::load_npy_images(&gtsrb.join("test_images.npy"))?;
    let fam_rows = match &cfg.familiar_rows {
        Some(r) => crate::data::parse_rows(r, all_fam.len()).map_err(EvalError::Invalid)?,
        None => 0..all_fam.len(),
    };
    let rows_key =
        cfg.familiar_rows.as_ref().map_or(String::new(), |_| format!("-r{}-{}", fam_rows.start, fam_rows.end));
    let fam_idx: Vec<usize> = subsample(fam_rows.len(), n, cfg.seed).into_iter().map(|i| fam_rows.start + i).collect();
    let fam_images: Vec<RgbImage> = fam_idx.iter().map(|&i| all_fam[i].clone()).collect();
    drop(all_fam);
    let labels_path = gtsrb.join("test_labels.npy");
    let fam_labels: Option<Vec<usize>> = if labels_path.exists() {
        let l = crate::data::load_npy_labels(&labels_path)?;
        Some(fam_idx.iter().map(|&i| l.get(i).map_or(0, |&v| v.max(0) as usize)).collect())
    } else {
        None
    };
    let cifar_dir = cfg.cifar.clone().unwrap_or_else(|| cfg.data.join("cifar10"));
    let all_cifar = crate::data::load_npy_images(&cifar_dir.join("test_images.npy"))?;
    let cifar_idx = subsample(all_cifar.len(), n, cfg.seed.wrapping_add(1));
    let cifar_images: Vec<RgbImage> = cifar_idx.iter().map(|&i| all_cifar[i].clone()).collect();
    drop(all_cifar);
    Ok(Images { fam_images, fam_idx, fam_labels, cifar_images, rows_key })
}

/// The trust head against the softmax-family baselines, on every set's splits.
fn trust_analysis(
    cfg: &EvalConfig,
    data: &[SetData],
    plan: &[(String, Option<(Corruption, u8)>)],
    labels: &[usize],
    (sp, sp_cifar): (&Split, &Split),
    trust_extra: &[(String, Vec<f32>)],
) -> Result<super::trust::TrustResults, EvalError> {
    let sets: Vec<super::trust::TrustSet> = data
        .iter()
        .zip(plan)
        .map(|(d, (name, spec))| {
            let s = split_for(name, sp, sp_cifar);
            super::trust::TrustSet {
                name: name.clone(),
                family: spec.map(|(k, _)| k.family().name().to_string()),
                level: spec.map(|(_, l)| l),
                features: &d.feats.features,
                logits: &d.feats.logits,
                quality: d.quality.as_ref(),
                labels: (name != "cifar10").then_some(labels),
                split: (s.train.as_slice(), s.val.as_slice(), s.test.as_slice()),
            }
        })
        .collect();
    super::trust::run(&sets, trust_extra, &cfg.mlp, cfg.trust_seeds)
}

/// Seconds spent per extraction stage, and images run through the gradient graph.
struct ExtractStats {
    corrupt_secs: f64,
    extract_secs: f64,
    odin_secs: f64,
    extracted: usize,
}

/// The cached extraction: every set of the plan through the gradient graph and the ODIN grid,
/// read from `cache` when there, computed and written there when not.
#[allow(clippy::too_many_arguments)]
fn extract_sets(
    cfg: &EvalConfig,
    plan: &[(String, Option<(Corruption, u8)>)],
    cache: &Path,
    session: &mut GradSession,
    odin_session: &mut baselines::OdinGraph,
    forward: &mut ModelSession,
    model: &LoadedModel,
    fwd_out: &str,
    (fam_images, fam_idx): (&[RgbImage], &[usize]),
    cifar_images: &[RgbImage],
) -> Result<(Extracted, ExtractStats), EvalError> {
    let (n, info) = (fam_images.len(), &model.info);
    let odin_file = |temps: &[f32]| {
        let key = crate::model::sha256_hex(format!("{temps:?}{:?}", cfg.odin_epsilons).as_bytes());
        format!("odin-{}.npy", &key[..8])
    };

    let mut extract_secs = 0.0;
    let mut extracted = 0usize;
    let mut odin_secs = 0.0;
    let mut corrupt_secs = 0.0;
    let mut sets: Vec<FeatureSet> = Vec::new();
    let mut odins: Vec<Array2<f32>> = Vec::new();
    let mut odin_temps: Vec<Vec<f32>> = Vec::new();
    let mut quality: Vec<Option<Array2<f32>>> = Vec::new();
    for (si, (name, spec)) in plan.iter().enumerate() {
        let prefix = cache_prefix(name);
        let cached = FeatureSet::load(cache, &prefix)?.filter(|f| f.len() == n && f.penultimate.is_some());
        let temps = if spec.is_some() { &cfg.odin_corruption_temperatures } else { &cfg.odin_temperatures };
        odin_temps.push(temps.clone());
        let odin_path = cache.join(format!("{prefix}{}", odin_file(temps)));
        let odin_cached = if odin_path.exists() {
            Some(features::read_npy(&odin_path)?)
                .filter(|o| o.nrows() == n && o.ncols() == temps.len() * cfg.odin_epsilons.len())
        } else {
            None
        };
        // The image-quality measures are cheap (~50 us a 32x32 image) but need the (corrupted)
        // images, so they are cached next to the features.
        let quality_path = cache.join(format!("{prefix}quality.npy"));
        let quality_cached = if cfg.quality { cached_quality(&quality_path, n)? } else { None };
        let (cached, odin_cached) = match (cached, odin_cached) {
            (Some(c), Some(o)) if !cfg.quality || quality_cached.is_some() => {
                quality.push(quality_cached);
                log::info!("[{}/{}] {name}: cached", si + 1, plan.len());
                sets.push(c);
                odins.push(o);
                continue;
            }
            other => other,
        };
        let tc = Instant::now();
        let images: std::borrow::Cow<[RgbImage]> = match (name.as_str(), spec) {
            ("familiar", _) => std::borrow::Cow::Borrowed(fam_images),
            ("cifar10", _) => std::borrow::Cow::Borrowed(cifar_images),
            (_, Some((k, level))) => std::borrow::Cow::Owned(
                fam_images
                    .iter()
                    .zip(fam_idx)
                    .map(|(img, &orig)| corrupt::apply(img, *k, *level, image_seed(cfg.seed, orig)))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            _ => return Err(EvalError::Invalid(format!("set '{name}' has no source"))),
        };
        corrupt_secs += tc.elapsed().as_secs_f64();
        quality.push(match quality_cached {
            Some(q) => Some(q),
            None if cfg.quality => Some(measure_quality(&quality_path, &images, info)?),
            None => None,
        });
        let fs = match cached {
            Some(f) => f,
            None => {
                let te = Instant::now();
                let f = features::extract_labelled(session, info, &images, cfg.batch, cfg.progress, name)?;
                extract_secs += te.elapsed().as_secs_f64();
                extracted += images.len();
                f.save(cache, &prefix)?;
                eprintln!(
                    "[{}/{}] {name}: features of {} images in {:.1} s",
                    si + 1,
                    plan.len(),
                    images.len(),
                    te.elapsed().as_secs_f64()
                );
                f
            }
        };
        let od = match odin_cached {
            Some(o) => o,
            None => {
                let to = Instant::now();
                let o = baselines::odin_scores(
                    odin_session,
                    forward,
                    &model.compiled.input_name,
                    fwd_out,
                    info,
                    &images,
                    temps,
                    &cfg.odin_epsilons,
                    cfg.batch,
                    cfg.progress,
                )?;
                odin_secs += to.elapsed().as_secs_f64();
                features::write_npy(&odin_path, &o)?;
                eprintln!("[{}/{}] {name}: ODIN grid in {:.1} s", si + 1, plan.len(), to.elapsed().as_secs_f64());
                o
            }
        };
        sets.push(fs);
        odins.push(od);
    }
    let stats = ExtractStats { corrupt_secs, extract_secs, odin_secs, extracted };
    Ok((Extracted { sets, odins, odin_temps, quality }, stats))
}

/// The image-quality measures of `n` images cached at `path`, when there.
fn cached_quality(path: &Path, n: usize) -> Result<Option<Array2<f32>>, EvalError> {
    match path.exists() {
        true => Ok(Some(features::read_npy(path)?).filter(|q| q.nrows() == n)),
        false => Ok(None),
    }
}

/// Measures `images` at the model's input size and caches the measures at `path`.
fn measure_quality(path: &Path, images: &[RgbImage], info: &crate::model::ModelInfo) -> Result<Array2<f32>, EvalError> {
    let q = crate::quality::measure_batch(images, info.width, info.height);
    features::write_npy(path, &q)?;
    Ok(q)
}

/// Index into the plan (and the sets) of corruption `ki` at `level`.
fn set_index(cfg: &EvalConfig, ki: usize, level: u8) -> usize {
    2 + ki * cfg.levels.len() + cfg.levels.iter().position(|&l| l == level).unwrap_or(0)
}

/// The split of a set: CIFAR-10 has its own, every other set shares the familiar one.
fn split_for<'a>(name: &str, sp: &'a Split, sp_cifar: &'a Split) -> &'a Split {
    if name == "cifar10" {
        sp_cifar
    } else {
        sp
    }
}

/// Baselines fitted on the familiar training split, and every set's scores.
struct Scored {
    data: Vec<SetData>,
    mahalanobis_labels: String,
    knn_k: usize,
    vim_dim: Option<usize>,
}

/// The extracted sets, in plan order: features, ODIN grids and their temperatures.
struct Extracted {
    sets: Vec<FeatureSet>,
    odins: Vec<Array2<f32>>,
    odin_temps: Vec<Vec<f32>>,
    quality: Vec<Option<Array2<f32>>>,
}

fn score_sets(
    cfg: &EvalConfig,
    model: &LoadedModel,
    fwd_out: &str,
    plan: &[(String, Option<(Corruption, u8)>)],
    ex: Extracted,
    fam_labels: &Option<Vec<usize>>,
    sp: &Split,
) -> Result<Scored, EvalError> {
    let Extracted { sets, odins, odin_temps, quality } = ex;
    let fam = &sets[0];
    let pen = fam.penultimate.as_ref().ok_or(EvalError::MissingOutput(grad::outputs::PENULTIMATE))?;
    let maha_labels: Vec<usize> = match &fam_labels {
        Some(l) => pick_usize(l, &sp.train),
        None => pick_usize(&baselines::predicted(fam.logits.view()), &sp.train),
    };
    let mut maha_label_kind = if fam_labels.is_some() { "true labels" } else { "predicted classes" }.to_string();
    let gaussian = match baselines::fit_mahalanobis(&rows(pen, &sp.train), &maha_labels) {
        // Too few training images per class leave no within-class scatter at all: pool them.
        Err(EvalError::Detector(crate::detector::DetectorError::NotPositiveDefinite(why))) => {
            log::warn!("Mahalanobis with class means failed ({why}); falling back to one pooled class");
            maha_label_kind = format!("one pooled class (class-wise fit failed: {why})");
            baselines::fit_mahalanobis(&rows(pen, &sp.train), &vec![0; sp.train.len()])?
        }
        other => other?,
    };
    let maha = MahalanobisScorer::new(&gaussian)?;
    let pen_train = rows(pen, &sp.train);
    let knn_k = if cfg.knn_k == 0 { Knn::auto_k(sp.train.len()) } else { cfg.knn_k };
    let knn = Knn::fit(pen_train.view(), knn_k)?;
    let vim_dim = if cfg.vim_dim == 0 { Vim::auto_dim(pen.ncols(), sp.train.len()) } else { cfg.vim_dim };
    let vim = fb::last_layer(&model.model, fwd_out)
        .and_then(|(w, b)| Vim::fit(pen_train.view(), rows(&fam.logits, &sp.train).view(), &w, &b, vim_dim));
    let fdbd = fb::last_layer(&model.model, fwd_out).and_then(|(w, b)| Fdbd::fit(pen_train.view(), &w, &b));
    let fdbd = match fdbd {
        Ok(f) => Some(f),
        Err(e) => {
            log::warn!("fDBD left out: {e}");
            None
        }
    };
    let vim = match vim {
        Ok(v) => Some(v),
        Err(e) => {
            log::warn!("ViM left out: {e}");
            None
        }
    };
    let mut data: Vec<SetData> = Vec::new();
    let sets = sets.into_iter().zip(odins).zip(odin_temps).zip(quality);
    for ((name, spec), (((fs, od), ot), quality)) in plan.iter().zip(sets) {
        let pen = fs.penultimate.as_ref().ok_or(EvalError::MissingOutput(grad::outputs::PENULTIMATE))?;
        let mut scores = BTreeMap::new();
        scores.insert("msp", baselines::msp(fs.logits.view()));
        scores.insert("mahalanobis", maha.score(pen.view()));
        scores.insert("energy", baselines::energy(fs.logits.view(), 1.0));
        scores.insert("gradnorm", baselines::gradnorm(fs.logits.view(), pen.view()));
        scores.insert("knn", knn.score(pen.view()));
        if let Some(v) = &vim {
            scores.insert("vim", v.score(pen.view(), fs.logits.view()));
        }
        if let Some(f) = &fdbd {
            scores.insert("fdbd", f.score(pen.view()));
        }
        let wrong = match (&fam_labels, name.as_str(), spec) {
            (Some(l), "familiar", _) | (Some(l), _, Some(_)) => {
                Some(baselines::predicted(fs.logits.view()).iter().zip(l).map(|(p, t)| p != t).collect::<Vec<bool>>())
            }
            _ => None,
        };
        data.push(SetData { name: name.clone(), feats: fs, scores, odin: od, odin_temps: ot, wrong, quality });
    }
    Ok(Scored { data, mahalanobis_labels: maha_label_kind, knn_k: knn.k(), vim_dim: vim.as_ref().map(|_| vim_dim) })
}

/// Seconds per frame of the gradient graph on up to 64 familiar images in batches of `batch`
/// (the best of three runs): the cost the trust head is compared with.
fn graph_secs_per_frame(
    session: &mut GradSession,
    info: &crate::model::ModelInfo,
    images: &[RgbImage],
    batch: usize,
) -> Result<f64, EvalError> {
    let imgs = &images[..images.len().min(64)];
    let mut best = f64::INFINITY;
    for _ in 0..3 {
        let t = Instant::now();
        features::extract_labelled(session, info, imgs, batch, false, "timing")?;
        best = best.min(t.elapsed().as_secs_f64() / imgs.len().max(1) as f64);
    }
    Ok(best)
}

/// Share of rows whose top class is `labels`' class.
fn top1_accuracy(logits: &Array2<f32>, labels: &[usize]) -> f64 {
    let p = baselines::predicted(logits.view());
    p.iter().zip(labels).filter(|(a, b)| a == b).count() as f64 / labels.len().max(1) as f64
}

fn pick_bool(v: &[bool], idx: &[usize]) -> Vec<bool> {
    idx.iter().filter_map(|&i| v.get(i).copied()).collect()
}

fn pick_usize(v: &[usize], idx: &[usize]) -> Vec<usize> {
    idx.iter().map(|&i| v[i]).collect()
}

/// Rows `idx` of the matrix `get` picks from each set `m` of `parts`, stacked in order.
fn stack_rows(
    data: &[SetData],
    parts: &[(usize, Vec<usize>)],
    get: impl Fn(&SetData) -> &Array2<f32>,
) -> Result<Array2<f32>, EvalError> {
    let v: Vec<Array2<f32>> = parts.iter().map(|(m, idx)| rows(get(&data[*m]), idx)).collect();
    let views: Vec<_> = v.iter().map(|a| a.view()).collect();
    ndarray::concatenate(Axis(0), &views).map_err(|e| EvalError::Invalid(e.to_string()))
}

/// The same rows `idx` of every set in `sets`.
fn parts_of(sets: &[usize], idx: &[usize]) -> Vec<(usize, Vec<usize>)> {
    sets.iter().map(|&m| (m, idx.to_vec())).collect()
}

/// The corrupted rows of `sets` (copies of the familiar images) for the familiar rows `idx`:
/// every set's copy of each, or with `one_copy` a single copy of each, familiar row `i` taking
/// set `sets[i % sets.len()]`: with `sets` in plan order (type, then level) that is the type
/// and level `calibrate`'s round-robin gives its image `i`.
fn corrupted_parts(sets: &[usize], idx: &[usize], one_copy: bool) -> Vec<(usize, Vec<usize>)> {
    if !one_copy || sets.is_empty() {
        return parts_of(sets, idx);
    }
    let mut by_set: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for &i in idx {
        by_set.entry(sets[i % sets.len()]).or_default().push(i);
    }
    by_set.into_iter().collect()
}

/// The paper's detector trained on the familiar set (0) against the corrupted sets `sets`,
/// with the shared split's training and validation rows ([`corrupted_parts`]).
fn train_on_sets(data: &[SetData], sp: &Split, sets: &[usize], cfg: &EvalConfig) -> Result<GradDetector, EvalError> {
    let fam = &data[0].feats.features;
    let part = |idx: &[usize]| corrupted_parts(sets, idx, cfg.one_copy);
    Ok(GradDetector::train(
        &rows(fam, &sp.train),
        &stack_rows(data, &part(&sp.train), |d| &d.feats.features)?,
        &rows(fam, &sp.val),
        &stack_rows(data, &part(&sp.val), |d| &d.feats.features)?,
        &cfg.mlp,
    )?)
}

#[cfg(test)]
mod tests {
    use super::corrupted_parts;

    #[test]
    fn one_copy_gives_each_image_one_set_round_robin_by_its_row() {
        let (sets, idx) = ([10, 11, 12], [0, 1, 2, 3, 4, 7]);
        // Every set's copy of every image.
        let every = corrupted_parts(&sets, &idx, false);
        assert_eq!(every.len(), 3);
        assert!(every.iter().all(|(_, rows)| rows == &idx));
        // One copy each: row i takes set i mod 3 (as calibrate's round-robin gives image i
        // combination i mod (types x levels)).
        let one = corrupted_parts(&sets, &idx, true);
        assert_eq!(one, vec![(10, vec![0, 3]), (11, vec![1, 4, 7]), (12, vec![2])]);
        assert_eq!(one.iter().map(|(_, r)| r.len()).sum::<usize>(), idx.len());
        assert!(corrupted_parts(&[], &idx, true).is_empty());
    }
}
