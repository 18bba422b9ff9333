//! The feature-preset ablation (`docs/results/presets.md`): which parameter tensors' gradient norms
//! the `fast` preset keeps. Extracts every feature once (the 62 gradient norms of the full
//! graph plus the forward-only activation statistics) on GTSRB test images, CIFAR-10 and the
//! paper's corruption types at levels 3-5, caches them, then fits the paper's detector on
//! column subsets and reports AUROCs. The speed column comes from `gradwatch bench --graph`.
//!
//! ```text
//! cargo bench --locked --bench preset_ablation -- DATA [PER_SET] [OUT] [SEEDS]
//! # e.g. cargo bench --bench preset_ablation -- /work/shared/data 300 /tmp/ablation 3
//! ```
//!
//! Without a data folder it prints how to run it and exits 0 (so `cargo bench` passes).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use ndarray::{concatenate, Array2, Axis};

use gradwatch::corrupt::{self, image_seed, parse_corruptions};
use gradwatch::detector::roc::auroc;
use gradwatch::detector::split::{rows, split_40_40_20, subsample};
use gradwatch::detector::{GradDetector, MlpConfig};
use gradwatch::frame::RgbImage;
use gradwatch::grad::CompileOptions;
use gradwatch::model::{LoadedModel, DEFAULT_MODEL};
use gradwatch::runtime::extract::{self, FeatureSet};
use gradwatch::runtime::{GradSession, RuntimeOptions};

const LEVELS: [u8; 3] = [3, 4, 5];

/// Candidate feature subsets: label and a predicate on the feature name.
type Pick = fn(&str) -> bool;

fn is_act(n: &str) -> bool {
    n.starts_with("act:")
}
fn head(n: &str) -> bool {
    n.starts_with("linear.")
}
fn l4b1(n: &str) -> bool {
    n.starts_with("layer4.1.")
}
fn l4(n: &str) -> bool {
    n.starts_with("layer4.")
}
fn l3b1(n: &str) -> bool {
    n.starts_with("layer3.1.")
}
fn l3(n: &str) -> bool {
    n.starts_with("layer3.")
}

const CANDIDATES: &[(&str, Pick)] = &[
    ("full (62 norms)", |n| !is_act(n)),
    ("full + act", |_| true),
    ("head (linear.*)", head),
    ("head + act", |n| head(n) || is_act(n)),
    ("layer4.1 + head", |n| l4b1(n) || head(n)),
    ("layer4.1 + head + act", |n| l4b1(n) || head(n) || is_act(n)),
    ("layer4 + head (last stage)", |n| l4(n) || head(n)),
    ("layer4 + head + act (fast)", |n| l4(n) || head(n) || is_act(n)),
    ("layer3.1 + layer4 + head + act", |n| l3b1(n) || l4(n) || head(n) || is_act(n)),
    ("layer3 + layer4 + head (2 stages)", |n| l3(n) || l4(n) || head(n)),
    ("layer3 + layer4 + head + act", |n| l3(n) || l4(n) || head(n) || is_act(n)),
    ("act only", is_act),
];

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let Some(data) = args.first().map(PathBuf::from) else {
        eprintln!("preset_ablation: no data folder given; run: cargo bench --bench preset_ablation -- DATA [PER_SET] [OUT] [SEEDS]");
        return Ok(());
    };
    let n: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(300);
    let out = args.get(2).map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp/gradwatch-ablation"));
    let seeds: u64 = args.get(3).map(|s| s.parse()).transpose()?.unwrap_or(3);
    std::fs::create_dir_all(&out)?;
    let (sets, names, labels) = features(&data, n, &out)?;
    let fam = &sets[0];
    let cifar = &sets[1];
    let kinds = parse_corruptions("paper").map_err(anyhow::Error::msg)?;

    let mut table = String::new();
    table.push_str(&format!(
        "per set {n} images, {seeds} split seeds (40/40/20), paper corruption types levels 3-5\n\n\
         | features | columns | CIFAR-10 AUROC | corruption rows AUROC (mean of {}) | all corruptions pooled | misclassification AUROC |\n|---|---:|---:|---:|---:|---:|\n",
        kinds.len()
    ));
    for (label, pick) in CANDIDATES {
        let cols: Vec<usize> = names.iter().enumerate().filter(|(_, n)| pick(n)).map(|(i, _)| i).collect();
        let (mut a_cifar, mut a_corr, mut a_pool, mut a_mis) = (0.0, 0.0, 0.0, 0.0);
        for seed in 0..seeds {
            let sp = split_40_40_20(n, seed);
            let cfg = MlpConfig { seed, ..Default::default() };
            let take = |f: &FeatureSet, idx: &[usize]| rows(&f.features, idx).select(Axis(1), &cols);
            let pair = |unf: &[&FeatureSet]| -> Result<(Vec<f32>, Vec<f32>, Vec<usize>)> {
                let cat = |idx: &[usize]| -> Result<Array2<f32>> {
                    let parts: Vec<Array2<f32>> = unf.iter().map(|u| take(u, idx)).collect();
                    let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
                    Ok(concatenate(Axis(0), &views)?)
                };
                let det = GradDetector::train(
                    &take(fam, &sp.train),
                    &cat(&sp.train)?,
                    &take(fam, &sp.val),
                    &cat(&sp.val)?,
                    &cfg,
                )?;
                Ok((det.score(&take(fam, &sp.test))?, det.score(&cat(&sp.test)?)?, sp.test.clone()))
            };
            let (f, u, _) = pair(&[cifar])?;
            a_cifar += auroc(&f, &u);
            let mut corr = 0.0;
            for (ki, _) in kinds.iter().enumerate() {
                let group: Vec<&FeatureSet> = (0..LEVELS.len()).map(|l| &sets[2 + ki * LEVELS.len() + l]).collect();
                let (f, u, _) = pair(&group)?;
                corr += auroc(&f, &u);
            }
            a_corr += corr / kinds.len() as f64;
            let all: Vec<&FeatureSet> = sets[2..].iter().collect();
            let (f, u, test) = pair(&all)?;
            a_pool += auroc(&f, &u);
            // Misclassification: over the test images of the familiar and corrupted sets, the
            // pooled detector's score separating wrong top-1 predictions from right ones.
            let (mut right, mut wrong) = (Vec::new(), Vec::new());
            let mut scores = f.iter().copied().chain(u.iter().copied());
            for s in std::iter::once(fam).chain(all.iter().copied()) {
                for &i in &test {
                    let Some(score) = scores.next() else { break };
                    let row = s.logits.row(i);
                    let top = row.iter().enumerate().fold(0, |b, (j, &v)| if v > row[b] { j } else { b });
                    if top == labels[i] {
                        right.push(score);
                    } else {
                        wrong.push(score);
                    }
                }
            }
            a_mis += auroc(&right, &wrong);
        }
        let k = seeds as f64;
        let line = format!(
            "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} |\n",
            cols.len(),
            100.0 * a_cifar / k,
            100.0 * a_corr / k,
            100.0 * a_pool / k,
            100.0 * a_mis / k
        );
        print!("{line}");
        table.push_str(&line);
    }
    std::fs::write(out.join("ablation.md"), &table)?;
    println!("\n{table}");
    Ok(())
}

/// Every set's features (familiar, CIFAR-10, then each paper corruption type x level 3-5),
/// the feature names and the familiar labels; cached in `out`.
fn features(data: &Path, n: usize, out: &Path) -> Result<(Vec<FeatureSet>, Vec<String>, Vec<usize>)> {
    let opts = CompileOptions { act_stats: true, ..Default::default() };
    let model = LoadedModel::load(Path::new(DEFAULT_MODEL), &opts)?;
    let names = model.compiled.features.clone();
    let rt = RuntimeOptions::default();
    let mut session = GradSession::new(&model.compiled, &rt)?;
    let all = gradwatch::data::load_npy_images(&data.join("gtsrb/test_images.npy"))?;
    let idx = subsample(all.len(), n, 0);
    let fam: Vec<RgbImage> = idx.iter().map(|&i| all[i].clone()).collect();
    let all_labels = gradwatch::data::load_npy_labels(&data.join("gtsrb/test_labels.npy"))?;
    let labels: Vec<usize> = idx.iter().map(|&i| all_labels.get(i).map_or(0, |&v| v.max(0) as usize)).collect();
    drop(all);
    let all = gradwatch::data::load_npy_images(&data.join("cifar10/test_images.npy"))?;
    let cifar: Vec<RgbImage> = subsample(all.len(), n, 1).iter().map(|&i| all[i].clone()).collect();
    drop(all);
    let mut plan: Vec<(String, Option<(corrupt::Corruption, u8)>)> =
        vec![("familiar".into(), None), ("cifar10".into(), None)];
    for k in parse_corruptions("paper").map_err(anyhow::Error::msg)? {
        for l in LEVELS {
            plan.push((format!("{}-{l}", k.name()), Some((k, l))));
        }
    }
    let mut sets = Vec::new();
    for (name, spec) in plan {
        let prefix = format!("{name}.");
        if let Some(f) = FeatureSet::load(out, &prefix)?.filter(|f| f.len() == n && f.features.ncols() == names.len()) {
            sets.push(f);
            continue;
        }
        let images: Vec<RgbImage> = match spec {
            None if name == "familiar" => fam.clone(),
            None => cifar.clone(),
            Some((k, l)) => fam
                .iter()
                .zip(&idx)
                .map(|(img, &orig)| corrupt::apply(img, k, l, image_seed(0, orig)))
                .collect::<Result<_, _>>()?,
        };
        let t = std::time::Instant::now();
        let f = extract::extract_labelled(&mut session, &model.info, &images, 16, false, &name)
            .with_context(|| format!("extracting {name}"))?;
        eprintln!("{name}: {} images in {:.1} s", images.len(), t.elapsed().as_secs_f64());
        f.save(out, &prefix)?;
        sets.push(f);
    }
    Ok((sets, names, labels))
}
