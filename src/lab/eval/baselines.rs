//! The detectors the paper compares against, all scored so that **higher = more unfamiliar**
//! (the convention of [`crate::detector::roc`]).
//!
//! * MSP (Hendrycks & Gimpel 2017): `-max_k softmax(z)_k`.
//! * ODIN (Liang et al. 2018): temperature scaling and input pre-processing,
//!   `x' = x - eps * sign(grad_x [-log softmax(z/T)_yhat])`, score `-max_k softmax(z(x')/T)_k`;
//!   `eps` is in image units ([0, 1] pixels), so in the normalised input space the step is
//!   `eps / std_c` per channel, as in ODIN's code. `T` and `eps` are picked on validation data.
//! * Mahalanobis "vanilla" (Lee et al. 2018): class means and a tied covariance of
//!   penultimate activations; score = min over classes of the squared distance.
//! * Energy (Liu et al. 2020): `E(x) = -T logsumexp(z/T)`; in-distribution inputs get lower
//!   energy, so the energy itself is the unfamiliarity score.
//! * GradNorm (Huang et al. 2021): the L1 norm of the gradient of `KL(u || softmax(z))` with
//!   respect to the last layer's parameters, `u` the uniform distribution over the `C`
//!   classes. With `z = W h + b`:
//!   `KL(u || p) = const - (1/C) sum_i log p_i`, so `dKL/dz_k = p_k - 1/C`, then
//!   `dKL/dW_kj = (p_k - 1/C) h_j` and `dKL/db_k = p_k - 1/C`, so
//!   `||dKL/dW||_1 + ||dKL/db||_1 = (sum_k |p_k - 1/C|) (sum_j |h_j| + 1)`.
//!   Huang et al.'s code uses the weight only (no `+ 1`); with ResNet-18's 512 non-negative
//!   penultimate activations the bias term changes the score by well under 1%. A large
//!   GradNorm means familiar, so the score is its negative.

use ndarray::{Array2, ArrayView2};

use super::EvalError;
use crate::detector::Gaussian;
use crate::frame::RgbImage;
use crate::model::ModelInfo;
use crate::onnx::{self, ModelProto};
use crate::runtime::ModelSession;

/// ODIN's temperature grid (Liang et al. 2018).
pub const ODIN_TEMPERATURES: [f32; 4] = [1.0, 10.0, 100.0, 1000.0];
/// ODIN's perturbation grid, in image units.
pub const ODIN_EPSILONS: [f32; 5] = [0.0, 0.0005, 0.001, 0.002, 0.005];
/// Covariance shrinkage for the Mahalanobis baseline: penultimate features of a few hundred
/// images in 512 dimensions give a singular covariance without it.
pub const MAHALANOBIS_SHRINKAGE: f64 = 1e-3;

/// Softmax of a row at temperature `t`, computed stably.
pub fn softmax(z: &[f32], t: f32) -> Vec<f64> {
    let t = f64::from(t);
    let m = z.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(f64::from(v) / t));
    let e: Vec<f64> = z.iter().map(|&v| (f64::from(v) / t - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.into_iter().map(|v| v / s).collect()
}

/// `log sum_k exp(z_k / t)`, computed stably.
pub fn logsumexp(z: &[f32], t: f32) -> f64 {
    let t = f64::from(t);
    let m = z.iter().fold(f64::NEG_INFINITY, |a, &v| a.max(f64::from(v) / t));
    m + z.iter().map(|&v| (f64::from(v) / t - m).exp()).sum::<f64>().ln()
}

fn rows(x: ArrayView2<f32>) -> Vec<Vec<f32>> {
    x.outer_iter().map(|r| r.to_vec()).collect()
}

/// MSP score of each logits row at temperature `t`: `-max softmax(z / t)`.
pub fn msp_t(logits: ArrayView2<f32>, t: f32) -> Vec<f32> {
    rows(logits).into_iter().map(|z| -(softmax(&z, t).into_iter().fold(0.0, f64::max) as f32)).collect()
}

/// MSP score: `-max softmax(z)`.
pub fn msp(logits: ArrayView2<f32>) -> Vec<f32> {
    msp_t(logits, 1.0)
}

/// Energy score `-t logsumexp(z / t)`.
pub fn energy(logits: ArrayView2<f32>, t: f32) -> Vec<f32> {
    rows(logits).into_iter().map(|z| (-f64::from(t) * logsumexp(&z, t)) as f32).collect()
}

/// GradNorm score `-(sum_k |p_k - 1/C|) (sum_j |h_j| + 1)` (weight and bias of the last
/// layer; see the module docs for the derivation).
pub fn gradnorm(logits: ArrayView2<f32>, penultimate: ArrayView2<f32>) -> Vec<f32> {
    logits
        .outer_iter()
        .zip(penultimate.outer_iter())
        .map(|(z, h)| {
            let z = z.to_vec();
            let c = z.len() as f64;
            let dz: f64 = softmax(&z, 1.0).iter().map(|p| (p - 1.0 / c).abs()).sum();
            let h1: f64 = h.iter().map(|&v| f64::from(v).abs()).sum();
            (-(dz * (h1 + 1.0))) as f32
        })
        .collect()
}

/// The class of each logits row (argmax; first maximum on ties).
pub fn predicted(logits: ArrayView2<f32>) -> Vec<usize> {
    rows(logits).into_iter().map(|z| crate::model::top_class(&z).0).collect()
}

/// Fits the Mahalanobis baseline: class means and tied covariance of `penultimate` rows
/// labelled `labels`. Classes without a sample are left out (the score is a minimum over the
/// classes that are present).
pub fn fit_mahalanobis(penultimate: &Array2<f32>, labels: &[usize]) -> Result<Gaussian, EvalError> {
    let mut present: Vec<usize> = labels.to_vec();
    present.sort_unstable();
    present.dedup();
    let compact: Vec<usize> = labels.iter().map(|l| present.binary_search(l).unwrap_or(0)).collect();
    Ok(Gaussian::fit(penultimate, &compact, present.len().max(1), MAHALANOBIS_SHRINKAGE)?)
}

/// `x - step_c * sign(g)` elementwise, where `step_c = eps / std_c` for the channel of each
/// element (`nhwc`: channels last, else `[N, C, ...]`). `sign(0) = 0`.
pub fn odin_perturb(
    x: &ndarray::ArrayD<f32>,
    g: &ndarray::ArrayD<f32>,
    eps: f32,
    std: [f32; 3],
    nhwc: bool,
) -> Result<ndarray::ArrayD<f32>, EvalError> {
    if x.shape() != g.shape() || x.ndim() < 2 {
        return Err(EvalError::Invalid(format!(
            "input gradient {:?} does not match the input {:?}",
            g.shape(),
            x.shape()
        )));
    }
    let ch = if nhwc { x.ndim() - 1 } else { 1 };
    let mut out = x.clone();
    for ((idx, v), &gr) in out.indexed_iter_mut().zip(g.iter()) {
        let step = eps / std.get(idx[ch]).copied().unwrap_or(1.0);
        let sgn = if gr > 0.0 {
            1.0
        } else if gr < 0.0 {
            -1.0
        } else {
            0.0
        };
        *v -= step * sgn;
    }
    Ok(out)
}

/// Keeps only the nodes (and initializers) that `outputs` depend on, and only those outputs.
/// ONNX Runtime computes every node of a graph, so the ODIN graph drops its parameter-norm
/// branch this way and costs a forward plus a backward pass to the input.
pub fn prune_to_outputs(model: &ModelProto, outputs: &[&str]) -> Result<ModelProto, EvalError> {
    let mut m = model.clone();
    let g = m.graph.as_mut().ok_or_else(|| EvalError::Invalid("the model has no graph".into()))?;
    let mut needed: std::collections::HashSet<String> = outputs.iter().map(|s| s.to_string()).collect();
    let mut keep = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    let nodes = std::mem::take(&mut g.node);
    g.node = nodes.into_iter().zip(keep).filter(|(_, k)| *k).map(|(n, _)| n).collect();
    g.initializer.retain(|t| needed.contains(&t.name));
    g.output.retain(|o| outputs.contains(&o.name.as_str()));
    if g.output.len() != outputs.len() {
        return Err(EvalError::Invalid(format!("the graph lacks some of the outputs {outputs:?}")));
    }
    Ok(m)
}

/// The ODIN graph: `compiled` (from [`crate::grad::Loss::Odin`] with `input_grad`) pruned to
/// `logits` and `input_grad`, in a session, with the name of its image input.
pub struct OdinGraph {
    session: ModelSession,
    input: String,
}

impl OdinGraph {
    /// Prunes and loads the graph.
    pub fn new(compiled: &crate::grad::Compiled, rt: &crate::runtime::RuntimeOptions) -> Result<Self, EvalError> {
        use crate::grad::outputs;
        let m = prune_to_outputs(&compiled.model, &[outputs::LOGITS, outputs::INPUT_GRAD])?;
        Ok(OdinGraph { session: ModelSession::new(&onnx::encode(&m), rt)?, input: compiled.input_name.clone() })
    }

    /// Logits `[N, C]` and the input gradient of `-log softmax(z/t)[argmax z]`.
    pub fn run(&mut self, x: &ndarray::ArrayD<f32>, t: f32) -> Result<(Array2<f32>, ndarray::ArrayD<f32>), EvalError> {
        use crate::grad::outputs;
        let temp = ndarray::arr1(&[t]).into_dyn();
        let mut o = self.session.run(&[(self.input.as_str(), x.view()), (outputs::TEMPERATURE, temp.view())])?;
        let z = o.remove(outputs::LOGITS).ok_or(EvalError::MissingOutput(outputs::LOGITS))?;
        let z = z.into_dimensionality::<ndarray::Ix2>().map_err(|_| EvalError::Invalid("logits are not 2-D".into()))?;
        let g = o.remove(outputs::INPUT_GRAD).ok_or(EvalError::MissingOutput(outputs::INPUT_GRAD))?;
        Ok((z, g))
    }
}

/// ODIN scores of `images` for every `(t, eps)` of the grids: `[N, temps.len() * epsilons.len()]`,
/// column `ti * epsilons.len() + ei`.
///
/// `odin` gives the clean logits and the input gradient (one pass per temperature); the
/// perturbed inputs go through `forward` (the model's plain logits graph,
/// [`crate::model::forward_logits_model`]): the same logits as the gradient graph without its backward pass.
#[allow(clippy::too_many_arguments)]
pub fn odin_scores(
    odin: &mut OdinGraph,
    forward: &mut ModelSession,
    forward_input: &str,
    forward_output: &str,
    info: &ModelInfo,
    images: &[RgbImage],
    temps: &[f32],
    epsilons: &[f32],
    batch: usize,
    progress: bool,
) -> Result<Array2<f32>, EvalError> {
    let n = images.len();
    let ne = epsilons.len();
    let mut out = Array2::zeros((n, temps.len() * ne));
    let pb = crate::runtime::extract::progress_bar(n, "odin", progress);
    let batch = batch.max(1);
    for (b, chunk) in images.chunks(batch).enumerate() {
        let x = info.preprocess(chunk.iter()).into_dyn();
        let start = b * batch;
        // Without a perturbation ODIN is the temperature-scaled softmax of plain logits: one
        // forward pass serves every temperature (no input gradient needed).
        let plain = if epsilons.iter().all(|&e| e == 0.0) {
            let mut o = forward.run(&[(forward_input, x.view())])?;
            let z = o
                .remove(forward_output)
                .ok_or_else(|| EvalError::Invalid(format!("forward graph lacks output '{forward_output}'")))?;
            Some(
                z.into_dimensionality::<ndarray::Ix2>()
                    .map_err(|_| EvalError::Invalid("forward logits are not 2-D".into()))?,
            )
        } else {
            None
        };
        for (ti, &t) in temps.iter().enumerate() {
            if let Some(z) = &plain {
                for (ei, _) in epsilons.iter().enumerate() {
                    for (i, s) in msp_t(z.view(), t).into_iter().enumerate() {
                        out[[start + i, ti * ne + ei]] = s;
                    }
                }
                continue;
            }
            let (logits, g) = odin.run(&x, t)?;
            for (ei, &eps) in epsilons.iter().enumerate() {
                let scores = if eps == 0.0 {
                    msp_t(logits.view(), t)
                } else {
                    let xp = odin_perturb(&x, &g, eps, info.std, info.nhwc)?;
                    let mut o = forward.run(&[(forward_input, xp.view())])?;
                    let z = o
                        .remove(forward_output)
                        .ok_or_else(|| EvalError::Invalid(format!("forward graph lacks output '{forward_output}'")))?;
                    let z = z
                        .into_dimensionality::<ndarray::Ix2>()
                        .map_err(|_| EvalError::Invalid("forward logits are not 2-D".into()))?;
                    msp_t(z.view(), t)
                };
                for (i, s) in scores.into_iter().enumerate() {
                    out[[start + i, ti * ne + ei]] = s;
                }
            }
        }
        pb.inc(chunk.len() as u64);
    }
    pb.finish_and_clear();
    Ok(out)
}
/// Fast scorer for a fitted [`Gaussian`]: factors the precision once (`P = L L^T`) so that each
/// distance is `||L^T x - L^T mu_c||^2`, `O(d^2 + C d)` per sample instead of `O(C d^2)`.
/// Gives the same scores as [`Gaussian::score`] up to rounding.
#[derive(Clone, Debug)]
pub struct MahalanobisScorer {
    /// `L^T`, row-major `d x d` (upper triangular).
    lt: Vec<f64>,
    d: usize,
    /// `L^T mu_c` per class.
    means: Vec<Vec<f64>>,
}

impl MahalanobisScorer {
    /// Factors the precision of `g`; errors when it is not positive definite.
    pub fn new(g: &Gaussian) -> Result<Self, EvalError> {
        let d = g.dim();
        let mut l = vec![0.0f64; d * d];
        for i in 0..d {
            for j in 0..=i {
                let mut s = g.precision[i][j];
                for k in 0..j {
                    s -= l[i * d + k] * l[j * d + k];
                }
                if i == j {
                    if s <= 0.0 || !s.is_finite() {
                        return Err(EvalError::Invalid(format!(
                            "Mahalanobis precision is not positive definite at {i}; raise the shrinkage"
                        )));
                    }
                    l[i * d + i] = s.sqrt();
                } else {
                    l[i * d + j] = s / l[j * d + j];
                }
            }
        }
        let mut lt = vec![0.0f64; d * d];
        for i in 0..d {
            for j in 0..d {
                lt[j * d + i] = l[i * d + j];
            }
        }
        let mut me = MahalanobisScorer { lt, d, means: Vec::new() };
        me.means = g.means.iter().map(|m| me.project(m.iter().copied())).collect();
        Ok(me)
    }

    fn project(&self, x: impl Iterator<Item = f64>) -> Vec<f64> {
        let x: Vec<f64> = x.collect();
        (0..self.d).map(|i| (i..self.d).map(|k| self.lt[i * self.d + k] * x[k]).sum()).collect()
    }

    /// Minimum over classes of the squared Mahalanobis distance of every row.
    pub fn score(&self, x: ArrayView2<f32>) -> Vec<f32> {
        x.outer_iter()
            .map(|r| {
                if r.len() != self.d {
                    return f32::NAN;
                }
                let y = self.project(r.iter().map(|&v| f64::from(v)));
                self.means
                    .iter()
                    .map(|m| m.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f64>())
                    .fold(f64::INFINITY, f64::min) as f32
            })
            .collect()
    }
}
