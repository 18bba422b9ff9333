//! The detector ablation of `docs/results/detector-ablation.md`: which training target, which inputs
//! (gradient norms, forward-only logit signals, both) and how many seed-ensemble members the
//! calibration's detector should use. Reads the feature cache written by
//! `cargo bench --bench preset_ablation` (familiar = 300 GTSRB test images, CIFAR-10, the
//! paper's corruption types at levels 3-5; `<set>.features.npy` = 62 gradient norms then 8
//! activation statistics, `<set>.logits.npy`), extracts nothing, and prints a markdown table.
//!
//! ```text
//! cargo run --release --example detector_ablation -- [CACHE] [LABELS] [SEEDS] [--loto] [--threads N]
//!     [--columns full|fast|full+act]
//! # e.g. nice -n 10 cargo run --release --example detector_ablation -- \
//! #        /tmp/abl /work/shared/data/gtsrb/test_labels.npy 3 --loto
//! ```
//!
//! Per split seed (40/40/20 by image; the CIFAR-10 rows are split the same way), one detector
//! is trained on the familiar, CIFAR-10 and all corruption rows pooled, and evaluated on the
//! held-out 20%: AUROC familiar vs CIFAR-10, the mean over corruption types of AUROC familiar
//! vs that type's corrupted rows (levels 3-5 pooled), and misclassification AUROC (wrong vs
//! right top-1 over the held-out clean and corrupted rows). With `--loto` each type is also
//! scored by a detector trained without it (leave one type out). `--columns` picks the cached
//! columns the "gradients" inputs use: `full` (the 62 norms, default), `fast` (what the `fast`
//! preset outputs: the 17 norms of `layer4.*` and `linear.*`, columns 45..62, and the 8
//! activation statistics, 62..70) or `full+act` (all 70).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use ndarray::{concatenate, Array2, Axis};

use gradwatch::corrupt::parse_corruptions;
use gradwatch::detector::forward::{argmax, signals_batch, ForwardSignal};
use gradwatch::detector::roc::auroc;
use gradwatch::detector::split::{rows, split_40_40_20, subsample, Split};
use gradwatch::detector::{mean_logit, train_members, LogStandardizer, MlpConfig, Origin, Standardizer, Target};
use gradwatch::runtime::extract::FeatureSet;

/// Gradient-norm columns of the cached features (the rest are activation statistics).
const GRAD_COLS: usize = 62;
const LEVELS: [u8; 3] = [3, 4, 5];
/// Ensemble sizes compared; the members of the smaller are the first of the larger.
const SIZES: [usize; 2] = [1, 5];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Inputs {
    Grad,
    Forward,
    Both,
}

impl Inputs {
    const ALL: [Inputs; 3] = [Inputs::Grad, Inputs::Forward, Inputs::Both];
    fn name(self) -> &'static str {
        match self {
            Inputs::Grad => "gradients",
            Inputs::Forward => "forward (5)",
            Inputs::Both => "both",
        }
    }
}

/// One cached set with its forward signals and per-row error flags.
struct Set {
    grad: Array2<f32>,
    fwd: Array2<f32>,
    origin: Origin,
    /// Corruption type index.
    kind: Option<usize>,
    wrong: Vec<Option<bool>>,
}

/// One training run: a split seed, a target, inputs, and the excluded corruption type.
#[derive(Clone, Copy)]
struct Job {
    seed: u64,
    target: Target,
    inputs: Inputs,
    exclude: Option<usize>,
}

/// Held-out scores per set, per ensemble size.
type Scores = Vec<Vec<Vec<f32>>>;

fn main() -> Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let loto = take_flag(&mut args, "--loto");
    let threads: usize = take_value(&mut args, "--threads")?.unwrap_or(2);
    let columns: Vec<usize> = match take_string(&mut args, "--columns")?.as_deref() {
        None | Some("full") => (0..GRAD_COLS).collect(),
        Some("fast") => (GRAD_COLS - 17..GRAD_COLS + 8).collect(),
        Some("full+act") => (0..GRAD_COLS + 8).collect(),
        Some(other) => bail!("--columns {other}: use full, fast or full+act"),
    };
    let cache = PathBuf::from(args.first().map_or("/tmp/abl", String::as_str));
    let labels_path = PathBuf::from(args.get(1).map_or("/work/shared/data/gtsrb/test_labels.npy", String::as_str));
    let seeds: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3);

    let kinds = parse_corruptions("paper").map_err(anyhow::Error::msg)?;
    let load = |name: &str| -> Result<FeatureSet> {
        FeatureSet::load(&cache, &format!("{name}."))?
            .with_context(|| format!("{}: no {name}.features.npy / {name}.logits.npy", cache.display()))
    };
    let fam = load("familiar")?;
    let n = fam.len();
    // The familiar rows are GTSRB test images subsample(total, n, 0), as in benches/preset_ablation.rs.
    let all_labels = gradwatch::data::load_npy_labels(&labels_path)?;
    let idx = subsample(all_labels.len(), n, 0);
    let labels: Vec<usize> = idx.iter().map(|&i| usize::try_from(all_labels[i]).unwrap_or(usize::MAX)).collect();

    let make = |f: FeatureSet, origin: Origin, kind: Option<usize>| -> Result<Set> {
        let want = columns.iter().max().map_or(0, |m| m + 1);
        if f.len() != n || f.features.ncols() < want {
            bail!("a cached set has {} rows and {} columns (want {n} and >= {want})", f.len(), f.features.ncols());
        }
        let wrong = (0..n)
            .map(|i| (origin != Origin::Ood).then(|| argmax(&f.logits.row(i).to_vec()) != Some(labels[i])))
            .collect();
        Ok(Set {
            grad: f.features.select(Axis(1), &columns),
            fwd: signals_batch(&ForwardSignal::ALL, &f.logits),
            origin,
            kind,
            wrong,
        })
    };
    let mut sets = vec![make(fam, Origin::Familiar, None)?, make(load("cifar10")?, Origin::Ood, None)?];
    for (k, kind) in kinds.iter().enumerate() {
        for l in LEVELS {
            sets.push(make(load(&format!("{}-{l}", kind.name()))?, Origin::Corrupted, Some(k))?);
        }
    }
    let errors = sets[0].wrong.iter().filter(|w| **w == Some(true)).count();
    let corr_err: f64 =
        sets[2..].iter().map(|s| s.wrong.iter().filter(|w| **w == Some(true)).count() as f64).sum::<f64>()
            / (n * (sets.len() - 2)) as f64;
    eprintln!("familiar top-1 errors: {errors} of {n}; corrupted rows wrong: {:.1}%", 100.0 * corr_err);

    let mut jobs = Vec::new();
    for seed in 0..seeds {
        for target in Target::ALL {
            for inputs in Inputs::ALL {
                jobs.push(Job { seed, target, inputs, exclude: None });
                if loto {
                    jobs.extend((0..kinds.len()).map(|k| Job { seed, target, inputs, exclude: Some(k) }));
                }
            }
        }
    }
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Scores>>> = Mutex::new(vec![None; jobs.len()]);
    let failed: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let t0 = std::time::Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..threads.max(1) {
            sc.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(job) = jobs.get(i) else { break };
                match run(&sets, *job) {
                    Ok(r) => {
                        if let Ok(mut g) = results.lock() {
                            g[i] = Some(r);
                        }
                    }
                    Err(e) => {
                        if let Ok(mut g) = failed.lock() {
                            g.get_or_insert(e);
                        }
                        break;
                    }
                }
                if (i + 1).is_multiple_of(10) {
                    eprintln!("{} of {} trainings, {:.0} s", i + 1, jobs.len(), t0.elapsed().as_secs_f64());
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().ok().flatten() {
        return Err(e);
    }
    let results = results.into_inner().map_err(|_| anyhow::anyhow!("a worker panicked"))?;

    println!(
        "{n} familiar images, {seeds} split seeds (40/40/20 by image), mean over seeds; corruption AUROC = mean over \
         the {} paper types (levels 3-5 pooled per type)\n",
        kinds.len()
    );
    let loto_col = if loto { " corruption AUROC, type left out |" } else { "" };
    println!("| target | inputs | members | CIFAR-10 AUROC | corruption AUROC (pooled detector) |{loto_col} misclassification AUROC |");
    println!("|---|---|---:|---:|---:|{}---:|", if loto { "---:|" } else { "" });
    for target in Target::ALL {
        for inputs in Inputs::ALL {
            for (si, size) in SIZES.iter().enumerate() {
                let (mut cifar, mut corr, mut mis, mut left) = (0.0, 0.0, 0.0, 0.0);
                for (job, r) in jobs.iter().zip(&results) {
                    let Some(r) = r else { bail!("a training produced no result") };
                    if job.target != target || job.inputs != inputs {
                        continue;
                    }
                    let f = &r[0][si];
                    match job.exclude {
                        None => {
                            cifar += auroc(f, &r[1][si]);
                            let per: Vec<f64> = (0..kinds.len()).map(|k| auroc(f, &pooled(&sets, r, si, k))).collect();
                            corr += per.iter().sum::<f64>() / per.len() as f64;
                            mis += misclassification(&sets, r, si, job.seed);
                        }
                        Some(k) => left += auroc(f, &pooled(&sets, r, si, k)) / kinds.len() as f64,
                    }
                }
                let k = seeds as f64;
                let loto_v = if loto { format!(" {:.2} |", 100.0 * left / k) } else { String::new() };
                println!(
                    "| {} | {} | {size} | {:.2} | {:.2} |{loto_v} {:.2} |",
                    target.name(),
                    inputs.name(),
                    100.0 * cifar / k,
                    100.0 * corr / k,
                    100.0 * mis / k
                );
            }
        }
    }
    eprintln!("{} trainings in {:.0} s", jobs.len(), t0.elapsed().as_secs_f64());
    Ok(())
}

/// The held-out scores of corruption type `k`'s sets (all levels), ensemble size index `si`.
fn pooled(sets: &[Set], r: &Scores, si: usize, k: usize) -> Vec<f32> {
    sets.iter().zip(r).filter(|(s, _)| s.kind == Some(k)).flat_map(|(_, v)| v[si].iter().copied()).collect()
}

/// Misclassification AUROC over the held-out clean and corrupted rows.
fn misclassification(sets: &[Set], r: &Scores, si: usize, seed: u64) -> f64 {
    let test = split_40_40_20(sets[0].grad.nrows(), seed).test;
    let (mut right, mut wrong) = (Vec::new(), Vec::new());
    for (s, v) in sets.iter().zip(r).filter(|(s, _)| s.origin != Origin::Ood) {
        for (&i, &score) in test.iter().zip(&v[si]) {
            if s.wrong[i] == Some(true) {
                wrong.push(score);
            } else {
                right.push(score);
            }
        }
    }
    auroc(&right, &wrong)
}

/// Trains one job's ensemble and scores every set's held-out rows.
fn run(sets: &[Set], job: Job) -> Result<Scores> {
    let sp: Split = split_40_40_20(sets[0].grad.nrows(), job.seed);
    let grad_std = LogStandardizer::fit(&rows(&sets[0].grad, &sp.train))?;
    let fwd_std = Standardizer::fit(&rows(&sets[0].fwd, &sp.train))?;
    let design = |s: &Set, idx: &[usize]| -> Result<Array2<f32>> {
        let g = || grad_std.transform(&rows(&s.grad, idx));
        let f = || fwd_std.transform(&rows(&s.fwd, idx));
        Ok(match job.inputs {
            Inputs::Grad => g()?,
            Inputs::Forward => f()?,
            Inputs::Both => concatenate(Axis(1), &[g()?.view(), f()?.view()])?,
        })
    };
    let used: Vec<&Set> = sets.iter().filter(|s| s.kind.is_none() || s.kind != job.exclude).collect();
    let stack = |idx: &[usize]| -> Result<(Array2<f32>, Vec<u8>)> {
        let parts = used.iter().map(|s| design(s, idx)).collect::<Result<Vec<_>>>()?;
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        let y = used.iter().flat_map(|s| idx.iter().map(|&i| job.target.label(s.origin, s.wrong[i]))).collect();
        Ok((concatenate(Axis(0), &views)?, y))
    };
    let (xt, yt) = stack(&sp.train)?;
    let (xv, yv) = stack(&sp.val)?;
    let cfg = MlpConfig { seed: job.seed, ..Default::default() };
    let (members, _) = train_members(&xt, &yt, &xv, &yv, &cfg, SIZES[SIZES.len() - 1])?;
    sets.iter()
        .map(|s| {
            let x = design(s, &sp.test)?;
            Ok(SIZES
                .iter()
                .map(|&k| x.rows().into_iter().map(|z| mean_logit(&members[..k], &z.to_vec())).collect())
                .collect())
        })
        .collect()
}

fn take_flag(args: &mut Vec<String>, flag: &str) -> bool {
    let before = args.len();
    args.retain(|a| a != flag);
    args.len() != before
}

fn take_string(args: &mut Vec<String>, flag: &str) -> Result<Option<String>> {
    let Some(i) = args.iter().position(|a| a == flag) else { return Ok(None) };
    let v = args.get(i + 1).with_context(|| format!("{flag} needs a value"))?.clone();
    args.drain(i..=i + 1);
    Ok(Some(v))
}

fn take_value(args: &mut Vec<String>, flag: &str) -> Result<Option<usize>> {
    Ok(take_string(args, flag)?.map(|v| v.parse()).transpose()?)
}
