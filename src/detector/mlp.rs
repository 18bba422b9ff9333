//! The paper's binary detector: two fully-connected layers on (standardised) gradient features.

use ndarray::Array2;

use super::roc;
use super::{check_finite, DetectorError};
use crate::rng::SplitMix64;

/// Training hyper-parameters of [`Mlp::train`]. Every field has a default (serde fills
/// missing fields from [`MlpConfig::default`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MlpConfig {
    /// Hidden units (default 64).
    pub hidden: usize,
    /// Adam learning rate (default 1e-3).
    pub lr: f64,
    /// Decoupled (AdamW) weight decay on the weight matrices, not the biases (default 1e-4).
    pub weight_decay: f64,
    /// Mini-batch size (default 64).
    pub batch: usize,
    /// Maximum number of epochs (default 200).
    pub max_epochs: usize,
    /// Early stopping: stop once this many consecutive epochs have not lowered the validation
    /// loss (default 20; Keras convention, so 0 behaves like 1).
    pub patience: usize,
    /// Seed of initialisation and shuffling (default 0); training is deterministic for it.
    pub seed: u64,
}

impl Default for MlpConfig {
    fn default() -> Self {
        Self { hidden: 64, lr: 1e-3, weight_decay: 1e-4, batch: 64, max_epochs: 200, patience: 20, seed: 0 }
    }
}

impl MlpConfig {
    /// Checks ranges: `hidden, batch, max_epochs >= 1`, `lr > 0`, `weight_decay >= 0`, finite.
    pub fn validate(&self) -> Result<(), DetectorError> {
        let bad = |m: String| Err(DetectorError::Config(m));
        if self.hidden == 0 {
            return bad("mlp hidden must be >= 1".into());
        }
        if self.batch == 0 {
            return bad("mlp batch must be >= 1".into());
        }
        if self.max_epochs == 0 {
            return bad("mlp max_epochs must be >= 1".into());
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("mlp lr must be finite and > 0, got {}", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(format!("mlp weight_decay must be finite and >= 0, got {}", self.weight_decay));
        }
        Ok(())
    }
}

/// The paper's binary detector: `Linear(P, hidden) -> ReLU -> Linear(hidden, 1) -> sigmoid`.
///
/// Label 0 = familiar, 1 = unfamiliar; [`score`](Self::score) is the predicted probability of
/// "unfamiliar". The sigmoid saturates in f32 (it is exactly 1.0 for logits above ~17), which
/// would merge strongly unfamiliar samples into one tie group, so **ranking metrics and
/// thresholds should use the logit** ([`logits`](Self::logits)); the score is a monotone
/// function of the logit and serves humans and probability-style thresholds.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mlp {
    /// First-layer weights, `hidden x P` (one row per hidden unit).
    pub w1: Vec<Vec<f32>>,
    /// First-layer biases, `hidden`.
    pub b1: Vec<f32>,
    /// Second-layer weights, `hidden`.
    pub w2: Vec<f32>,
    /// Second-layer bias.
    pub b2: f32,
}

/// What happened during [`Mlp::train`].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainReport {
    /// Epochs actually run (<= `max_epochs`; fewer when early stopping triggered).
    pub epochs_run: usize,
    /// 1-based epoch whose weights were kept (lowest validation loss).
    pub best_epoch: usize,
    /// Class-balanced validation binary cross-entropy at `best_epoch` (the mean of the two
    /// per-class mean losses; ln 2 = 0.693 is chance).
    pub best_val_loss: f64,
    /// Validation AUROC (logit ranking) at `best_epoch`; NaN if validation has one class.
    pub best_val_auroc: f64,
    /// Validation loss after every epoch, for diagnosing under/over-fitting.
    pub val_loss_history: Vec<f64>,
}

/// Flat parameter layout used while training: `[w1t (p*h) | b1 (h) | w2 (h) | b2 (1)]`, where
/// `w1t` is the first-layer weight matrix **transposed** (`p x h`, row `j` = the weights of
/// input `j` into every hidden unit). Then both the forward pass and the weight gradient are
/// "add a scalar times a contiguous h-vector" loops, which vectorise without reassociating
/// any sum (~4x faster than per-unit dot products here).
struct Flat {
    h: usize,
    p: usize,
    theta: Vec<f32>,
}

impl Flat {
    fn len(h: usize, p: usize) -> usize {
        h * p + 2 * h + 1
    }
    fn w1t(&self) -> &[f32] {
        &self.theta[..self.h * self.p]
    }
    fn b1(&self) -> &[f32] {
        &self.theta[self.h * self.p..self.h * self.p + self.h]
    }
    fn w2(&self) -> &[f32] {
        &self.theta[self.h * self.p + self.h..self.h * self.p + 2 * self.h]
    }
    fn b2(&self) -> f32 {
        self.theta[self.h * self.p + 2 * self.h]
    }

    /// Pre-sigmoid output for one sample; `hid` receives the post-ReLU activations.
    fn forward(&self, x: &[f32], hid: &mut [f32]) -> f32 {
        let h = self.h;
        hid.copy_from_slice(self.b1());
        for (&xj, wj) in x.iter().zip(self.w1t().chunks_exact(h)) {
            for (a, &w) in hid.iter_mut().zip(wj) {
                *a += xj * w;
            }
        }
        let mut z = self.b2();
        for (a, &w) in hid.iter_mut().zip(self.w2()) {
            *a = a.max(0.0);
            z += w * *a;
        }
        z
    }

    fn to_mlp(&self) -> Mlp {
        let (h, p, w1t) = (self.h, self.p, self.w1t());
        Mlp {
            w1: (0..h).map(|k| (0..p).map(|j| w1t[j * h + k]).collect()).collect(),
            b1: self.b1().to_vec(),
            w2: self.w2().to_vec(),
            b2: self.b2(),
        }
    }
}

/// Dot product with 8 independent accumulators so the compiler can vectorise it
/// (a single running sum is a serial dependency chain in IEEE arithmetic).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let mut ca = a.chunks_exact(8);
    let mut cb = b.chunks_exact(8);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    s += (acc[0] + acc[4]) + (acc[1] + acc[5]) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    s
}

/// Numerically stable binary cross-entropy on a logit: `softplus(z) - y z`.
fn bce_logit(z: f32, y: f32) -> f64 {
    let z = f64::from(z);
    let softplus = if z > 0.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() };
    softplus - f64::from(y) * z
}

fn sigmoid(z: f32) -> f32 {
    // Split by sign so exp never overflows.
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Validates a labelled set and returns (row-major copy, per-class counts).
fn check_set(what: &'static str, x: &Array2<f32>, y: &[u8], p: usize) -> Result<(Vec<f32>, [usize; 2]), DetectorError> {
    let (n, px) = x.dim();
    if n == 0 || px == 0 {
        return Err(DetectorError::Empty { what });
    }
    if px != p {
        return Err(DetectorError::DimensionMismatch { what, expected: p, got: px });
    }
    if y.len() != n {
        return Err(DetectorError::LabelCount { what, samples: n, labels: y.len() });
    }
    check_finite(what, x, false)?;
    let mut counts = [0usize; 2];
    for (row, &l) in y.iter().enumerate() {
        match l {
            0 | 1 => counts[l as usize] += 1,
            _ => return Err(DetectorError::BadLabel { what, row, label: l as usize, allowed: 2 }),
        }
    }
    Ok((x.as_standard_layout().iter().copied().collect(), counts))
}

/// Per-class loss weights `n / (k * n_c)` over the `k` classes present, so that each present
/// class contributes equally to the mean loss whatever the imbalance.
fn class_weights(counts: [usize; 2]) -> [f32; 2] {
    let n: usize = counts.iter().sum();
    let k = counts.iter().filter(|&&c| c > 0).count().max(1);
    counts.map(|c| if c == 0 { 0.0 } else { (n as f64 / (k * c) as f64) as f32 })
}

impl Mlp {
    /// Trains on `x_train` / `y_train` (labels 0 = familiar, 1 = unfamiliar; both classes
    /// required), early-stopping on `x_val` / `y_val` (non-empty).
    ///
    /// * loss: binary cross-entropy on the logit, each sample weighted by
    ///   `n / (2 n_class)` so both classes count equally (imbalance of 50:1 either way is
    ///   expected: many corruption types vs. one clean set, or the reverse);
    /// * init: He (`N(0, 2 / fan_in)`) for both weight matrices, zero biases, from `cfg.seed`;
    /// * optimiser: AdamW (beta1 0.9, beta2 0.999, eps 1e-8, bias-corrected), decoupled weight
    ///   decay on weights only;
    /// * mini-batches of `cfg.batch` from a fresh seeded permutation each epoch (the last
    ///   batch may be smaller); the batch loss is the mean of the weighted sample losses;
    /// * after every epoch the class-balanced validation loss is computed; the weights of the
    ///   epoch with the lowest loss are returned; training stops after `cfg.patience` epochs
    ///   without improvement.
    ///
    /// Deterministic for a given input and seed (single-threaded, fixed summation order).
    /// Inputs should already be standardised (see [`super::LogStandardizer`]); non-finite
    /// values are an error.
    pub fn train(
        x_train: &Array2<f32>,
        y_train: &[u8],
        x_val: &Array2<f32>,
        y_val: &[u8],
        cfg: &MlpConfig,
    ) -> Result<(Mlp, TrainReport), DetectorError> {
        cfg.validate()?;
        let p = x_train.ncols();
        let (xt, ct) = check_set("training features", x_train, y_train, p)?;
        let (xv, cv) = check_set("validation features", x_val, y_val, p)?;
        for (class, &c) in ct.iter().enumerate() {
            if c == 0 {
                return Err(DetectorError::MissingClass { what: "training labels", class });
            }
        }
        let wt = class_weights(ct);
        let wv = class_weights(cv);
        let n = y_train.len();
        let h = cfg.hidden;

        let mut rng = SplitMix64::new(cfg.seed);
        let mut net = Flat { h, p, theta: vec![0.0; Flat::len(h, p)] };
        let s1 = (2.0 / p as f64).sqrt();
        for w in &mut net.theta[..h * p] {
            *w = (rng.normal() * s1) as f32;
        }
        let s2 = (2.0 / h as f64).sqrt();
        for w in &mut net.theta[h * p + h..h * p + 2 * h] {
            *w = (rng.normal() * s2) as f32;
        }
        // Weight decay applies to w1 and w2, not to biases.
        let decays = |i: usize| i < h * p || (h * p + h..h * p + 2 * h).contains(&i);

        let np = net.theta.len();
        let mut m = vec![0.0f32; np];
        let mut v = vec![0.0f32; np];
        let mut grad = vec![0.0f32; np];
        let mut hid = vec![0.0f32; h];
        let mut order: Vec<usize> = (0..n).collect();
        let (beta1, beta2, adam_eps) = (0.9f64, 0.999f64, 1e-8f32);
        let lr = cfg.lr as f32;
        let decay_factor = (1.0 - cfg.lr * cfg.weight_decay) as f32;
        let mut step: i32 = 0;

        let mut best = net.theta.clone();
        let mut best_loss = f64::INFINITY;
        let mut best_epoch = 0;
        let mut since_best = 0;
        let mut history = Vec::new();
        let mut epochs_run = 0;

        for epoch in 1..=cfg.max_epochs {
            epochs_run = epoch;
            rng.shuffle(&mut order);
            for batch in order.chunks(cfg.batch) {
                batch_grad(&net, &xt, y_train, batch, wt, &mut grad, &mut hid);
                step += 1;
                let bc1 = (1.0 - beta1.powi(step)) as f32;
                let bc2 = (1.0 - beta2.powi(step)) as f32;
                let step_size = lr / bc1;
                let bc2_sqrt = bc2.sqrt();
                for i in 0..np {
                    if decays(i) {
                        net.theta[i] *= decay_factor;
                    }
                    let g = grad[i];
                    m[i] = beta1 as f32 * m[i] + (1.0 - beta1 as f32) * g;
                    v[i] = beta2 as f32 * v[i] + (1.0 - beta2 as f32) * g * g;
                    net.theta[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + adam_eps);
                }
            }

            let (loss, _) = evaluate_flat(&net, &xv, y_val, wv, &mut hid);
            history.push(loss);
            if loss < best_loss {
                best_loss = loss;
                best_epoch = epoch;
                best.copy_from_slice(&net.theta);
                since_best = 0;
            } else {
                since_best += 1;
                if since_best >= cfg.patience {
                    break;
                }
            }
        }

        net.theta = best;
        let (_, logits) = evaluate_flat(&net, &xv, y_val, wv, &mut hid);
        let mut fam = Vec::new();
        let mut unf = Vec::new();
        for (z, &y) in logits.into_iter().zip(y_val) {
            if y == 0 {
                fam.push(z);
            } else {
                unf.push(z);
            }
        }
        let report = TrainReport {
            epochs_run,
            best_epoch,
            best_val_loss: best_loss,
            best_val_auroc: roc::auroc(&fam, &unf),
            val_loss_history: history,
        };
        Ok((net.to_mlp(), report))
    }

    /// Number of input features (P), 0 for an empty model.
    pub fn inputs(&self) -> usize {
        self.w1.first().map_or(0, Vec::len)
    }

    /// Checks a (deserialised) model: at least one hidden unit, consistent shapes, finite values.
    pub fn validate(&self) -> Result<(), DetectorError> {
        let h = self.w1.len();
        let p = self.inputs();
        let bad = |m: String| Err(DetectorError::InvalidModel(m));
        if h == 0 || p == 0 {
            return bad("mlp has no hidden units or no inputs".into());
        }
        if let Some(k) = self.w1.iter().position(|r| r.len() != p) {
            return bad(format!("mlp w1 row {k} has {} entries, row 0 has {p}", self.w1[k].len()));
        }
        if self.b1.len() != h || self.w2.len() != h {
            return bad(format!(
                "mlp has {h} hidden units in w1 but b1 has {} and w2 has {}",
                self.b1.len(),
                self.w2.len()
            ));
        }
        let all_finite = self.w1.iter().flatten().all(|v| v.is_finite())
            && self.b1.iter().chain(&self.w2).all(|v| v.is_finite())
            && self.b2.is_finite();
        if !all_finite {
            return bad("mlp parameters contain NaN or infinity".into());
        }
        Ok(())
    }

    /// Pre-sigmoid output (log-odds of "unfamiliar") for one sample. Use this for ranking.
    /// NaN if `x.len() != self.inputs()` or the model shapes are inconsistent (see
    /// [`validate`](Self::validate)); NaN inputs propagate to NaN.
    pub fn logit_row(&self, x: &[f32]) -> f32 {
        let h = self.w1.len();
        let p = self.inputs();
        if x.len() != p || self.b1.len() != h || self.w2.len() != h {
            return f32::NAN;
        }
        let mut z = self.b2;
        for ((row, &b), &w) in self.w1.iter().zip(&self.b1).zip(&self.w2) {
            if row.len() != p {
                return f32::NAN;
            }
            z += w * (b + dot(row, x)).max(0.0);
        }
        z
    }

    /// [`logit_row`](Self::logit_row) for every row of `x`.
    pub fn logits(&self, x: &Array2<f32>) -> Vec<f32> {
        let xs = x.as_standard_layout();
        if x.ncols() == 0 {
            return vec![self.logit_row(&[]); x.nrows()];
        }
        match xs.as_slice() {
            Some(s) => s.chunks(x.ncols()).map(|r| self.logit_row(r)).collect(),
            // Unreachable: a standard-layout array is contiguous; stay total anyway.
            None => x.rows().into_iter().map(|r| self.logit_row(&r.to_vec())).collect(),
        }
    }

    /// Probability of "unfamiliar", `sigmoid(logit)`, in `[0, 1]` (NaN for invalid input, see
    /// [`logit_row`](Self::logit_row)). Monotone in the logit but saturating in f32.
    pub fn score_row(&self, x: &[f32]) -> f32 {
        sigmoid(self.logit_row(x))
    }

    /// [`score_row`](Self::score_row) for every row of `x`.
    pub fn score(&self, x: &Array2<f32>) -> Vec<f32> {
        self.logits(x).into_iter().map(sigmoid).collect()
    }
}

/// Gradient of the mean weighted BCE over the samples `idx` into `grad` (overwritten), in
/// the flat layout of [`Flat`].
fn batch_grad(net: &Flat, x: &[f32], y: &[u8], idx: &[usize], w: [f32; 2], grad: &mut [f32], hid: &mut [f32]) {
    let (h, p) = (net.h, net.p);
    grad.iter_mut().for_each(|g| *g = 0.0);
    let inv_b = 1.0 / idx.len() as f32;
    let w2 = net.w2();
    let (gw1t, rest) = grad.split_at_mut(h * p);
    let (gb1, rest) = rest.split_at_mut(h);
    let (gw2, gb2) = rest.split_at_mut(h);
    let mut da = vec![0.0f32; h];
    for &i in idx {
        let xi = &x[i * p..(i + 1) * p];
        let yi = y[i];
        let z = net.forward(xi, hid);
        // d(loss)/dz of the weighted mean BCE: w (sigmoid(z) - y) / B.
        let dz = w[yi as usize] * (sigmoid(z) - f32::from(yi)) * inv_b;
        gb2[0] += dz;
        for k in 0..h {
            let a = hid[k];
            gw2[k] += dz * a;
            // ReLU gate: a > 0 iff the pre-activation was positive.
            da[k] = if a > 0.0 { dz * w2[k] } else { 0.0 };
            gb1[k] += da[k];
        }
        for (&xj, gj) in xi.iter().zip(gw1t.chunks_exact_mut(h)) {
            for (g, &d) in gj.iter_mut().zip(&da) {
                *g += xj * d;
            }
        }
    }
}

/// Class-balanced validation loss and the logits.
fn evaluate_flat(net: &Flat, x: &[f32], y: &[u8], w: [f32; 2], hid: &mut [f32]) -> (f64, Vec<f32>) {
    let p = net.p;
    let mut loss = 0.0f64;
    let mut logits = Vec::with_capacity(y.len());
    for (i, &yi) in y.iter().enumerate() {
        let z = net.forward(&x[i * p..(i + 1) * p], hid);
        loss += f64::from(w[yi as usize]) * bce_logit(z, f32::from(yi));
        logits.push(z);
    }
    (loss / y.len() as f64, logits)
}

#[cfg(test)]
#[path = "mlp_tests.rs"]
mod tests;
