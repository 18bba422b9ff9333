//! The gradient compiler: any ONNX classifier in, an ONNX graph that also outputs the
//! per-sample squared gradient norm of every parameter tensor out.
//!
//! This is the paper's "gradient generation framework" (Lee & AlRegib, ICIP 2020) done ahead
//! of time on the graph, so that a stock ONNX Runtime computes the gradients as an ordinary
//! inference graph with standard `ai.onnx` operators only (what TensorRT's parser accepts).
//!
//! For logits `z` (C classes) and a confounding label `y` (all ones by default) the loss is
//! `J = -(1/C) sum_i [y_i log s(z_i) + (1-y_i) log(1-s(z_i))]`, so `dJ/dz = (s(z) - y)/C`.
//! The backward pass is emitted op by op; each parameter tensor's per-sample squared norm is
//! computed without materialising per-sample gradients where a cheaper identity exists:
//! Gemm `||dW||^2 = ||delta||^2 ||x||^2`, Conv by im2col (`delta P^T`) or the "ghost norm"
//! `sum((delta^T delta) * (P^T P))` (with `P^T P` from patches or from the Gram matrix of the
//! input pixels), chosen per layer by cost, BatchNormalization scale/shift as spatial
//! reductions.

//! The operators live in a rule table (`rules/`, one file per family: conv, norm, layernorm,
//! activation, arith, pool, shape, linear, attention): each rule names an operator's parameter
//! inputs and their [`ParamKind`], its shape inference and its backward. Adding an operator
//! means adding one rule in one file; see "Adding an operator" in `rules/mod.rs`. Nodes that
//! compute on constants only (the `Shape` subgraphs exporters write) never reach the rules:
//! `fold.rs` evaluates them at compile time, with the batch size symbolic.
//!
//! Which parameter tensors become features is [`CompileOptions::params`]: by default every
//! trainable tensor (weights, biases, BatchNormalization scale and shift, and BatchNormalization
//! folded into per-channel constant `Mul`/`Add` pairs as Keras/TensorFlow exports write it).

mod builder;
mod fold;
mod loss;
mod rules;

use std::collections::{HashMap, HashSet};

use crate::onnx::{self, attr, GraphProto, ModelProto, NodeProto, OnnxError, TensorProto, ValueInfoProto};
use builder::Builder;

/// Operators the compiler differentiates through (the operators of its rule table).
pub const SUPPORTED_OPS: &[&str] = &rules::NAMES;

/// The operators the compiler differentiates through, as a list for messages.
pub fn supported_ops() -> String {
    SUPPORTED_OPS.join(", ")
}

/// Metadata key holding the JSON list of feature (parameter tensor) names.
pub const META_FEATURES: &str = "gradwatch.features";
/// Metadata key holding the loss the features were compiled with.
pub const META_LOSS: &str = "gradwatch.loss";
/// Metadata key holding the confounding label.
pub const META_LABEL: &str = "gradwatch.label";
/// Metadata key holding the feature preset (`full`, `fast`, or `custom` for a hand-made
/// parameter selection).
pub const META_PRESET: &str = "gradwatch.preset";

/// Prefix of the feature names of forward-only activation statistics
/// ([`CompileOptions::act_stats`]): `act:<tensor>` is the mean square of that activation.
pub const ACT_PREFIX: &str = "act:";

/// Which features a compiled graph computes (`gradwatch compile --preset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// The paper's features: the per-sample squared gradient norm of every parameter tensor
    /// (as [`CompileOptions::params`] selects them; `default` unless changed).
    #[default]
    Full,
    /// A backward pass that stops early: the norms of the parameters of the last stage (the
    /// layers at the smallest spatial resolution) and of the classifier head only, plus the
    /// mean square of every residual block's output (forward-only, nearly free). Chosen by
    /// measurement: `docs/presets.md`.
    Fast,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 2] = [Preset::Full, Preset::Fast];

    /// The command-line / metadata / calibration name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Full => "full",
            Preset::Fast => "fast",
        }
    }

    /// How many stages, counted from the output, the backward pass of this preset reaches
    /// (`None`: all of them).
    pub fn stages(self) -> Option<usize> {
        match self {
            Preset::Full => None,
            Preset::Fast => Some(FAST_STAGES),
        }
    }

    /// Whether this preset adds the forward-only activation statistics.
    pub fn act_stats(self) -> bool {
        matches!(self, Preset::Fast)
    }
}

/// The number of last stages whose parameters `fast` differentiates (see `docs/presets.md`).
pub const FAST_STAGES: usize = 1;

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "full" => Ok(Preset::Full),
            "fast" => Ok(Preset::Fast),
            _ => Err(format!("unknown preset '{s}' (expected full or fast)")),
        }
    }
}

/// Output names of a compiled graph.
pub mod outputs {
    /// `[N, C]` logits.
    pub const LOGITS: &str = "logits";
    /// `[N, P]` squared gradient norms, one per parameter tensor.
    pub const FEATURES: &str = "grad_features";
    /// `[N, D]` input of the last Gemm/MatMul.
    pub const PENULTIMATE: &str = "penultimate";
    /// Gradient of the loss with respect to the model input, shaped like the input.
    pub const INPUT_GRAD: &str = "input_grad";
    /// Graph input of a graph compiled with [`super::Loss::Odin`]: the temperature, shape `[1]`.
    pub const TEMPERATURE: &str = "temperature";
}

/// The loss whose gradient the features measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loss {
    /// Binary cross-entropy on the logits against the confounding label (the paper).
    #[default]
    BceLogits,
    /// Binary cross-entropy on the softmax probabilities against the confounding label
    /// (the pytorch-ood variant): `J = -(1/C) sum_i [y_i log p_i + (1-y_i) log(1-p_i)]`, `p = softmax(z)`.
    BceSoftmax,
    /// ODIN's loss, `-log softmax(z/T)[argmax z]`, with the temperature as a graph input
    /// (`temperature`, shape `[1]`); compile with `input_grad` for the input perturbation.
    Odin,
}

impl Loss {
    /// The command-line / metadata name.
    pub fn name(self) -> &'static str {
        match self {
            Loss::BceLogits => "bce-logits",
            Loss::BceSoftmax => "bce-softmax",
            Loss::Odin => "odin",
        }
    }
}

impl std::str::FromStr for Loss {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bce-logits" => Ok(Loss::BceLogits),
            "bce-softmax" => Ok(Loss::BceSoftmax),
            "odin" => Ok(Loss::Odin),
            _ => Err(format!("unknown loss '{s}' (expected bce-logits, bce-softmax or odin)")),
        }
    }
}

/// How a Conv layer's per-sample weight-gradient norm is formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ConvNorm {
    /// The cheaper of the two per layer (by multiply-accumulate count).
    #[default]
    Auto,
    /// `||delta P^T||^2` (cost ~ Cout * Cin k^2 * HW).
    Im2col,
    /// `sum((delta^T delta) * (P^T P))` (cost ~ (HW)^2 (Cout + Cin k^2)).
    Ghost,
    /// The ghost norm with `P^T P` summed from shifted windows of the Gram matrix of the
    /// padded input's pixels, so no patches are formed (cost ~ (H'W')^2 Cin + (HW)^2 Cout);
    /// for small feature maps with many channels. Ungrouped convolutions only (others use
    /// [`ConvNorm::Ghost`]).
    PixelGram,
}

/// What a parameter tensor is, as the rule table finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ParamKind {
    /// A Conv, Gemm or MatMul weight.
    Weight,
    /// A Conv or Gemm bias, or a constant `Add` right after a Conv (per-channel), Gemm or MatMul.
    Bias,
    /// A BatchNormalization scale (gamma).
    BnScale,
    /// A BatchNormalization shift (beta).
    BnShift,
    /// The per-channel constant of a `Mul` followed by a per-channel constant `Add`: a
    /// BatchNormalization's scale folded by the exporter.
    FoldedBnScale,
    /// The per-channel constant of the `Add` after a [`ParamKind::FoldedBnScale`] `Mul`.
    FoldedBnShift,
    /// A folded-BatchNormalization-like per-channel `Mul` on the image before any other
    /// parameter: a preprocessing normalisation, not counted by default.
    InputScale,
    /// The `Add` after an [`ParamKind::InputScale`], not counted by default.
    InputShift,
    /// A LayerNormalization scale (gamma).
    LnScale,
    /// A LayerNormalization shift (beta).
    LnShift,
    /// A learned elementwise scale of an activation that no shift follows (ConvNeXt's layer
    /// scale): a constant `Mul` with more than one value.
    LayerScale,
    /// A learned tensor added to or expanded into the activations that no layer owns: position
    /// embeddings (a constant `Add`), class tokens (an `Expand` of a constant to the batch).
    Embedding,
}

impl ParamKind {
    /// Every kind.
    pub const ALL: [ParamKind; 12] = [
        ParamKind::Weight,
        ParamKind::Bias,
        ParamKind::BnScale,
        ParamKind::BnShift,
        ParamKind::FoldedBnScale,
        ParamKind::FoldedBnShift,
        ParamKind::InputScale,
        ParamKind::InputShift,
        ParamKind::LnScale,
        ParamKind::LnShift,
        ParamKind::LayerScale,
        ParamKind::Embedding,
    ];

    /// The name `gradwatch compile --list` prints and `--params` accepts.
    pub fn name(self) -> &'static str {
        match self {
            ParamKind::Weight => "weight",
            ParamKind::Bias => "bias",
            ParamKind::BnScale => "bn_scale",
            ParamKind::BnShift => "bn_shift",
            ParamKind::FoldedBnScale => "folded_bn_scale",
            ParamKind::FoldedBnShift => "folded_bn_shift",
            ParamKind::InputScale => "input_scale",
            ParamKind::InputShift => "input_shift",
            ParamKind::LnScale => "ln_scale",
            ParamKind::LnShift => "ln_shift",
            ParamKind::LayerScale => "layer_scale",
            ParamKind::Embedding => "embedding",
        }
    }

    /// Whether tensors of this kind are features by default (all but preprocessing).
    pub fn counts_by_default(self) -> bool {
        !matches!(self, ParamKind::InputScale | ParamKind::InputShift)
    }
}

/// Which parameter tensors become features (`gradwatch compile --params`).
///
/// Written as a comma list applied in order: `default` adds the tensors counted by default
/// (every kind but `input_scale`/`input_shift`), `all` adds every parameter tensor found, any
/// other item adds the tensors whose kind or name matches it (a glob: `*` any run of
/// characters, `?` one), and an item starting with `-` removes what it matches. A list whose
/// first item removes starts from `default`. Examples: `default`, `all`, `weight`,
/// `-folded_bn_*` (the default without folded BatchNormalization), `layer4.*,fc.*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSelection {
    /// `(removes, pattern)` in order.
    items: Vec<(bool, String)>,
}

impl Default for ParamSelection {
    fn default() -> Self {
        ParamSelection { items: vec![(false, "default".into())] }
    }
}

impl std::str::FromStr for ParamSelection {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut items = Vec::new();
        for raw in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (removes, pat) = match raw.strip_prefix('-') {
                Some(p) => (true, p.trim()),
                None => (false, raw),
            };
            if pat.is_empty() {
                return Err(format!("'{raw}': a '-' needs a kind or name pattern after it"));
            }
            items.push((removes, pat.to_string()));
        }
        if items.is_empty() {
            return Err("empty parameter selection (try 'default' or 'all')".into());
        }
        Ok(ParamSelection { items })
    }
}

impl std::fmt::Display for ParamSelection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> =
            self.items.iter().map(|(rm, p)| if *rm { format!("-{p}") } else { p.clone() }).collect();
        f.write_str(&parts.join(","))
    }
}

impl ParamSelection {
    /// Every parameter tensor found, preprocessing normalisation included.
    pub fn all() -> Self {
        ParamSelection { items: vec![(false, "all".into())] }
    }

    /// Exactly the tensors named (each name is matched as a glob, so it should hold no `*`/`?`).
    pub fn names(names: &[String]) -> Self {
        ParamSelection { items: names.iter().map(|n| (false, n.clone())).collect() }
    }

    fn matches(pat: &str, name: &str, kind: ParamKind) -> bool {
        match pat {
            "all" => true,
            "default" => kind.counts_by_default(),
            _ => glob(pat.as_bytes(), kind.name().as_bytes()) || glob(pat.as_bytes(), name.as_bytes()),
        }
    }

    /// Whether the tensor `name` of `kind` is selected.
    pub fn selects(&self, name: &str, kind: ParamKind) -> bool {
        let mut on = self.items.first().is_some_and(|(removes, _)| *removes) && kind.counts_by_default();
        for (removes, pat) in &self.items {
            if Self::matches(pat, name, kind) {
                on = !removes;
            }
        }
        on
    }

    /// Items that match neither a kind name nor any of `found`: typos.
    fn unmatched(&self, found: &[(String, ParamKind)]) -> Vec<String> {
        self.items
            .iter()
            .filter(|(_, p)| {
                !matches!(p.as_str(), "all" | "default")
                    && !ParamKind::ALL.iter().any(|k| glob(p.as_bytes(), k.name().as_bytes()))
                    && !found.iter().any(|(n, _)| glob(p.as_bytes(), n.as_bytes()))
            })
            .map(|(_, p)| p.clone())
            .collect()
    }
}

/// Glob match of a whole string: `*` any run of bytes, `?` one byte.
fn glob(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == s[i]) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, i));
            p += 1;
        } else if let Some((sp, si)) = star {
            p = sp + 1;
            i = si + 1;
            star = Some((sp, si + 1));
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|&c| c == b'*')
}

/// Options of [`compile`].
#[derive(Clone, Debug, Default)]
pub struct CompileOptions {
    /// The loss.
    pub loss: Loss,
    /// The confounding label (0/1 per class, not exactly one 1); `None` is all ones.
    pub label: Option<Vec<f32>>,
    /// Also output `penultimate`.
    pub penultimate: bool,
    /// Also output `input_grad`.
    pub input_grad: bool,
    /// Conv norm formulation.
    pub conv_norm: ConvNorm,
    /// Which parameter tensors become features. Under [`Preset::Fast`] the preset's stages
    /// further restrict it.
    pub params: ParamSelection,
    /// The feature preset; [`Preset::Fast`] keeps only the selected parameters of the last
    /// stage(s) and the head, and turns on [`CompileOptions::act_stats`].
    pub preset: Preset,
    /// Append forward-only features: the per-sample mean square of every residual block's
    /// output (an `Add` of two activations, or the activation after it), named `act:<tensor>`.
    pub act_stats: bool,
    /// Keep only the parameters of the last `stages` spatial resolutions (and the head after
    /// them); `None` keeps every stage. Set by the preset when `None`.
    pub stages: Option<usize>,
}

impl CompileOptions {
    /// The options of a preset (every other option default).
    pub fn preset(preset: Preset) -> Self {
        CompileOptions { preset, ..Default::default() }
    }

    /// The name recorded in the compiled graph's metadata: the preset's, or `custom` for a
    /// full graph with a non-default parameter selection or stage cut.
    pub fn preset_name(&self) -> String {
        if self.preset == Preset::Full
            && (self.params != ParamSelection::default() || self.stages.is_some() || self.act_stats)
        {
            "custom".into()
        } else {
            self.preset.name().into()
        }
    }
}

/// A compiled model and what the compiler learnt about it.
#[derive(Clone, Debug)]
pub struct Compiled {
    /// The gradient graph.
    pub model: ModelProto,
    /// Parameter tensor names, in graph order: the columns of `grad_features`.
    pub features: Vec<String>,
    /// The kind of each feature's tensor.
    pub feature_kinds: Vec<ParamKind>,
    /// Every parameter tensor found, selected or not, in graph order.
    pub candidates: Vec<(String, ParamKind)>,
    /// Number of classes (width of `logits`).
    pub num_classes: usize,
    /// Name of the model's image input.
    pub input_name: String,
    /// Per-sample shape of the input (without the batch axis).
    pub input_shape: Vec<usize>,
    /// Width of `penultimate`, when requested and found.
    pub penultimate_dim: Option<usize>,
    /// For each Conv weight, the norm formulation chosen (`im2col`, `ghost` or `pixel-gram`).
    pub conv_plans: Vec<(String, &'static str)>,
    /// The preset name recorded in the metadata (`full`, `fast` or `custom`).
    pub preset: String,
    /// Forward-only statistics appended to the features (names start with [`ACT_PREFIX`]);
    /// `features` ends with them.
    pub act_stats: Vec<String>,
}

/// Why a model could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum GradError {
    /// The model itself is malformed.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// An operator the compiler cannot differentiate.
    #[error("unsupported operator '{op}' (node '{node}'); gradwatch compiles: {}", supported_ops())]
    Unsupported {
        /// Operator type.
        op: String,
        /// Node name.
        node: String,
    },
    /// A supported operator used in a way the compiler cannot handle.
    #[error("node '{node}' ({op}): {why}")]
    Node {
        /// Node name.
        node: String,
        /// Operator type.
        op: String,
        /// What is wrong.
        why: String,
    },
    /// The model as a whole does not fit (inputs, outputs, opset, options).
    #[error("{0}")]
    Model(String),
}

/// The error for a node whose operator has no rule.
pub(crate) fn unsupported(n: &NodeProto) -> GradError {
    GradError::Unsupported { op: n.op_type.clone(), node: n.name.clone() }
}

pub(crate) fn node_err(n: &NodeProto, why: impl Into<String>) -> GradError {
    GradError::Node { node: n.name.clone(), op: n.op_type.clone(), why: why.into() }
}

/// What the analysis knows while compiling.
pub(crate) struct Ctx {
    /// Constant tensors: initializers and Constant-node outputs.
    pub consts: HashMap<String, TensorProto>,
    /// Per-sample shapes of activations (tensors carrying the batch axis first).
    pub shapes: HashMap<String, Vec<usize>>,
    /// Values that depend on a parameter (their gradient is needed).
    pub param_dep: HashSet<String>,
    /// Parameter tensors -> per-sample squared norm tensor `[N]`.
    pub norms: HashMap<String, String>,
    /// Selected parameters (the features) in graph order.
    pub params: Vec<(String, ParamKind)>,
    /// The names in `params`.
    pub param_set: HashSet<String>,
    /// Conv plans chosen.
    pub conv_plans: Vec<(String, &'static str)>,
    /// Forward nodes that read each activation (graph outputs count as a reader too), so a
    /// node's backward can see the chain it sits in (Conv -> BatchNormalization -> Relu).
    pub readers: HashMap<String, Vec<NodeProto>>,
    /// Op type of the forward node that writes each activation.
    pub producer: HashMap<String, String>,
    /// Activations whose gradient was handed on without a per-channel factor it still owes:
    /// a BatchNormalization's gain folded into the Conv before it (one full-size Mul fewer).
    pub gain: HashMap<String, Vec<f32>>,
    /// Folded constants that are a bijective view (Transpose, Reshape...) of an initializer:
    /// the initializer's name, which the feature takes.
    pub origin: HashMap<String, String>,
    /// Batch-dependent integer tensors (see [`fold::Affine`]).
    pub affine: HashMap<String, fold::Affine>,
    /// Outputs of flattens of the whole batch (`Reshape(x, [-1])`) -> their input.
    pub merged: HashMap<String, String>,
    /// Nodes the analysis rewrote, by their first output: the compiled graph holds these.
    pub replaced: HashMap<String, NodeProto>,
    /// Compute gradients for every activation (the input gradient is wanted).
    pub all_grads: bool,
    pub conv_norm: ConvNorm,
    pub b: Builder,
}

impl Ctx {
    pub fn is_act(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }

    pub fn shape(&self, n: &NodeProto, name: &str) -> Result<Vec<usize>, GradError> {
        self.shapes.get(name).cloned().ok_or_else(|| node_err(n, format!("input '{name}' has no known shape")))
    }

    /// The one forward node that reads `name`, when exactly one does and it is no graph output.
    pub fn sole_reader(&self, name: &str) -> Option<&NodeProto> {
        match self.readers.get(name).map(Vec::as_slice) {
            Some([n]) if !n.op_type.is_empty() => Some(n),
            _ => None,
        }
    }

    /// The parameter tensor a constant input is: its own name, or the initializer it is a
    /// folded view of.
    pub fn param_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.origin.get(name).map(String::as_str).unwrap_or(name)
    }

    /// Whether `name` is a selected parameter: its rule must record its norm.
    pub fn is_param(&self, name: &str) -> bool {
        self.param_set.contains(self.param_name(name))
    }

    /// Whether the gradient of activation `name` must be formed.
    pub fn wants_grad(&self, name: &str) -> bool {
        self.is_act(name) && (self.all_grads || self.param_dep.contains(name))
    }

    pub fn const_f32(&self, n: &NodeProto, name: &str) -> Result<ndarray::ArrayD<f32>, GradError> {
        let t = self.consts.get(name).ok_or_else(|| node_err(n, format!("input '{name}' must be a constant")))?;
        Ok(onnx::tensor_f32(t)?)
    }

    pub fn const_i64(&self, n: &NodeProto, name: &str) -> Result<Vec<i64>, GradError> {
        let t = self.consts.get(name).ok_or_else(|| node_err(n, format!("input '{name}' must be a constant")))?;
        Ok(onnx::tensor_i64(t)?.iter().copied().collect())
    }

    pub fn const_dims(&self, n: &NodeProto, name: &str) -> Result<Vec<usize>, GradError> {
        let t = self.consts.get(name).ok_or_else(|| node_err(n, format!("input '{name}' must be a constant")))?;
        Ok(t.dims.iter().map(|&d| d.max(0) as usize).collect())
    }

    /// Records a parameter's per-sample squared norm.
    pub fn add_norm(&mut self, n: &NodeProto, param: &str, norm: String) -> Result<(), GradError> {
        let param = self.param_name(param).to_string();
        if self.norms.insert(param.clone(), norm).is_some() {
            return Err(node_err(
                n,
                format!("parameter '{param}' is used by more than one node; shared weights are not supported"),
            ));
        }
        Ok(())
    }
}

fn constant_node_value(n: &NodeProto) -> Result<TensorProto, GradError> {
    let a = onnx::Attrs::of(n);
    if let Some(t) = a.tensor("value")? {
        let mut t = t.clone();
        t.name = n.output[0].clone();
        return Ok(t);
    }
    for at in &n.attribute {
        let name = n.output[0].as_str();
        match at.name.as_str() {
            "value_float" => return Ok(onnx::make_tensor_f32(name, &[], &[at.f])),
            "value_floats" => return Ok(onnx::make_tensor_f32(name, &[at.floats.len()], &at.floats)),
            "value_int" => return Ok(onnx::make_tensor_i64(name, &[], &[at.i])),
            "value_ints" => return Ok(onnx::make_tensor_i64(name, &[at.ints.len()], &at.ints)),
            _ => {}
        }
    }
    Err(node_err(n, "Constant without a value gradwatch can read"))
}

/// Compiles a classifier into its gradient graph.
///
/// The phases, in order: [`check_model`], [`collect_constants`], [`image_input`],
/// [`find_logits`] and [`needed_nodes`] read the model; [`forward`] folds constant nodes
/// (`fold.rs`), infers shapes and finds the parameters through the rule table; [`confounding_label`] checks the label;
/// [`backward`] seeds the loss gradient and runs the rules in reverse; [`emit_outputs`] adds
/// the output nodes and [`assemble`] writes the new model.
pub fn compile(model: &ModelProto, opts: &CompileOptions) -> Result<Compiled, GradError> {
    let (graph, opset) = check_model(model)?;
    let consts = collect_constants(graph)?;
    let (input, input_shape) = image_input(graph, &consts)?;
    let producers: HashMap<String, &NodeProto> =
        graph.node.iter().flat_map(|n| n.output.iter().map(move |o| (o.clone(), n))).collect();
    let logits = find_logits(graph, &producers)?;
    let needed = needed_nodes(graph, &logits);

    let mut taken: HashSet<String> = consts.keys().cloned().collect();
    taken.extend(graph.node.iter().flat_map(|n| n.output.iter().cloned()));
    taken.extend(graph.input.iter().map(|i| i.name.clone()));
    taken.extend(graph.node.iter().map(|n| n.name.clone()));
    let new_ctx = |consts: HashMap<String, TensorProto>, taken: HashSet<String>| Ctx {
        consts,
        shapes: HashMap::from([(input.name.clone(), input_shape.clone())]),
        param_dep: HashSet::new(),
        norms: HashMap::new(),
        params: Vec::new(),
        param_set: HashSet::new(),
        conv_plans: Vec::new(),
        readers: HashMap::new(),
        producer: HashMap::new(),
        gain: HashMap::new(),
        origin: HashMap::new(),
        affine: HashMap::new(),
        merged: HashMap::new(),
        replaced: HashMap::new(),
        all_grads: opts.input_grad,
        conv_norm: opts.conv_norm,
        b: Builder::new(opset, taken),
    };

    // The stage cut (the `fast` preset): a first forward analysis finds which selected
    // parameters lie in the last stages, and the real pass selects exactly those, so the
    // backward pass is pruned below them.
    let selection = match opts.stages.or(opts.preset.stages()) {
        None => opts.params.clone(),
        Some(k) => {
            let mut pre = new_ctx(consts.clone(), HashSet::new());
            let f = forward(graph, &needed, &producers, &opts.params, &mut pre)?;
            let keep = last_stages(&f, k.max(1));
            let names: Vec<String> =
                pre.params.iter().filter(|(p, _)| keep.contains(p)).map(|(p, _)| p.clone()).collect();
            if names.is_empty() {
                return Err(GradError::Model(format!(
                    "--params {} selects no parameter tensor in the last {k} stage(s) or the head",
                    opts.params
                )));
            }
            ParamSelection::names(&names)
        }
    };
    let act_stats = opts.act_stats || opts.preset.act_stats();
    let mut ctx = new_ctx(consts, taken);

    let fwd = forward(graph, &needed, &producers, &selection, &mut ctx)?;
    let logits_shape =
        ctx.shapes.get(&logits).cloned().ok_or_else(|| {
            GradError::Model(format!("output '{logits}' does not depend on the input '{}'", input.name))
        })?;
    let num_classes = match logits_shape.as_slice() {
        [c] => *c,
        other => return Err(GradError::Model(format!("logits must be [N, C]; '{logits}' is [N, {other:?}]"))),
    };
    let label = confounding_label(opts.label.as_ref(), num_classes)?;
    let mut contrib = backward(&mut ctx, &fwd, &logits, &label, opts.loss)?;

    let input_grad = if opts.input_grad {
        let parts = contrib.remove(&input.name).unwrap_or_default();
        if parts.is_empty() {
            return Err(GradError::Model("no gradient reaches the input".into()));
        }
        Some(parts)
    } else {
        None
    };
    let stats = if act_stats { fwd.block_outputs.clone() } else { Vec::new() };
    let emitted =
        emit_outputs(&mut ctx, opts, &logits, num_classes, fwd.last_linear, input_grad, &input_shape, &stats)?;
    let act_names: Vec<String> = stats.iter().map(|(t, _)| format!("{ACT_PREFIX}{t}")).collect();
    let mut features: Vec<String> = ctx.params.iter().map(|(p, _)| p.clone()).collect();
    features.extend(act_names.iter().cloned());
    let feature_kinds = ctx.params.iter().map(|(_, k)| *k).collect();
    let layout = Layout { input_name: &input.name, input_shape: &input_shape, outputs: emitted.outputs };
    let preset = opts.preset_name();
    let meta = Meta { loss: opts.loss, label: &label, features: &features, preset: &preset };
    let out_model = assemble(model, graph, &needed, &ctx.replaced, &mut ctx.b, layout, meta);

    Ok(Compiled {
        model: out_model,
        features,
        feature_kinds,
        candidates: fwd.candidates,
        num_classes,
        input_name: input.name.clone(),
        input_shape,
        penultimate_dim: emitted.penultimate_dim,
        conv_plans: ctx.conv_plans,
        preset,
        act_stats: act_names,
    })
}

/// The graph and its default-domain opset, once the model is known to be a classifier this
/// compiler can read: not already compiled, opset 13 or newer, standard operators only.
fn check_model(model: &ModelProto) -> Result<(&GraphProto, i64), GradError> {
    let graph = model.graph.as_ref().ok_or(OnnxError::NoGraph)?;
    if model.metadata_props.iter().any(|p| p.key == META_FEATURES) {
        return Err(GradError::Model(
            "this is already a gradwatch-compiled graph (it has gradwatch.features metadata); give the original \
             classifier: gradwatch compiles it in memory"
                .into(),
        ));
    }
    let opset =
        onnx::default_opset(model).ok_or_else(|| GradError::Model("the model imports no ai.onnx opset".into()))?;
    if opset < 13 {
        return Err(GradError::Model(format!(
            "opset {opset} is too old; re-export the model with opset 13 or newer (e.g. torch.onnx.export(..., opset_version=17))"
        )));
    }
    for n in &graph.node {
        if !(n.domain.is_empty() || n.domain == "ai.onnx") {
            return Err(GradError::Unsupported { op: format!("{}:{}", n.domain, n.op_type), node: n.name.clone() });
        }
    }
    Ok((graph, opset))
}

/// Constant tensors: initializers, Constant-node outputs and Identity aliases of either.
fn collect_constants(graph: &GraphProto) -> Result<HashMap<String, TensorProto>, GradError> {
    let mut consts: HashMap<String, TensorProto> =
        graph.initializer.iter().map(|t| (t.name.clone(), t.clone())).collect();
    for n in &graph.node {
        if n.op_type == "Constant" {
            if n.output.len() != 1 {
                return Err(node_err(n, "Constant must have one output"));
            }
            consts.insert(n.output[0].clone(), constant_node_value(n)?);
        } else if n.op_type == "Identity" && n.output.len() == 1 {
            // Exporters alias equal initializers through Identity (PyTorch does for equal BN biases).
            if let Some(t) = n.input.first().and_then(|i| consts.get(i)) {
                let mut t = t.clone();
                t.name = n.output[0].clone();
                consts.insert(n.output[0].clone(), t);
            }
        }
    }
    Ok(consts)
}

/// The one non-constant graph input (the image) and its per-sample shape.
fn image_input<'a>(
    graph: &'a GraphProto,
    consts: &HashMap<String, TensorProto>,
) -> Result<(&'a ValueInfoProto, Vec<usize>), GradError> {
    let inputs: Vec<_> = graph.input.iter().filter(|i| !consts.contains_key(&i.name)).collect();
    let input = match inputs.as_slice() {
        [one] => *one,
        _ => {
            return Err(GradError::Model(format!(
                "expected exactly one (image) input, found {}: {:?}",
                inputs.len(),
                inputs.iter().map(|i| &i.name).collect::<Vec<_>>()
            )))
        }
    };
    let (elem, dims) = onnx::value_info_shape(input)
        .ok_or_else(|| GradError::Model(format!("input '{}' has no tensor shape", input.name)))?;
    if elem != onnx::data_type::FLOAT {
        return Err(GradError::Model(format!("input '{}' must be float32 (found type {elem})", input.name)));
    }
    let input_shape: Vec<usize> =
        dims.iter().skip(1).map(|d| d.map(|v| v as usize)).collect::<Option<_>>().ok_or_else(|| {
            GradError::Model(format!("input '{}' must have static dims after the batch axis: {dims:?}", input.name))
        })?;
    if dims.is_empty() {
        return Err(GradError::Model(format!("input '{}' must have a batch axis", input.name)));
    }
    Ok((input, input_shape))
}

/// The logits: the first output, or the input of a trailing Softmax.
fn find_logits(graph: &GraphProto, producers: &HashMap<String, &NodeProto>) -> Result<String, GradError> {
    let out0 = graph.output.first().ok_or_else(|| GradError::Model("the model has no outputs".into()))?;
    let mut logits = out0.name.clone();
    if let Some(p) = producers.get(&logits) {
        if p.op_type == "Softmax" || p.op_type == "LogSoftmax" {
            logits = p.input[0].clone();
        }
    }
    Ok(logits)
}

/// Which nodes the logits depend on.
fn needed_nodes(graph: &GraphProto, logits: &str) -> Vec<bool> {
    let mut needed_vals: HashSet<String> = HashSet::from([logits.to_string()]);
    let mut needed = vec![false; graph.node.len()];
    for (i, n) in graph.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed_vals.contains(o)) {
            needed[i] = true;
            needed_vals.extend(n.input.iter().filter(|s| !s.is_empty()).cloned());
        }
    }
    needed
}

/// What the forward analysis found.
struct Forward {
    /// The nodes to differentiate, in graph order (as rewritten: see [`as_strided`]).
    nodes: Vec<NodeProto>,
    /// Input of the last Gemm/MatMul and its per-sample size (the penultimate features).
    last_linear: Option<(String, usize)>,
    /// Every parameter tensor found, selected or not.
    candidates: Vec<(String, ParamKind)>,
    /// For each candidate, the per-sample shape of its node's output (which stage it is in).
    candidate_shapes: Vec<Vec<usize>>,
    /// Residual block outputs (for [`CompileOptions::act_stats`]): the tensor and its
    /// per-sample shape.
    block_outputs: Vec<(String, Vec<usize>)>,
}

/// Forward analysis through the rule table: per-sample shapes, parameter candidates and the
/// selected ones (`ctx.params`), and which values depend on a selected parameter.
fn forward(
    graph: &GraphProto,
    needed: &[bool],
    producers: &HashMap<String, &NodeProto>,
    selection: &ParamSelection,
    ctx: &mut Ctx,
) -> Result<Forward, GradError> {
    let mut readers: HashMap<String, Vec<&NodeProto>> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|s| !s.is_empty()) {
            readers.entry(i.clone()).or_default().push(n);
        }
    }
    let graph_output = NodeProto::default();
    for o in &graph.output {
        readers.entry(o.name.clone()).or_default().push(&graph_output);
    }
    let mut after_param: HashSet<String> = HashSet::new();
    let mut fwd = Forward {
        nodes: Vec::new(),
        last_linear: None,
        candidates: Vec::new(),
        candidate_shapes: Vec::new(),
        block_outputs: Vec::new(),
    };
    for (i, n) in graph.node.iter().enumerate() {
        if !needed[i] || n.output.iter().all(|o| ctx.consts.contains_key(o)) {
            continue;
        }
        // Batch-dependent indices (`torch.as_strided`'s export) are followed symbolically.
        if n.input.iter().any(|s| ctx.affine.contains_key(s)) || (n.op_type == "Range" && !ctx.is_act(&n.input[0])) {
            if let Some(a) = fold::fold_affine(n, &ctx.consts, &ctx.affine) {
                ctx.affine.insert(n.output[0].clone(), a);
                continue;
            }
        }
        // A flatten of the whole batch read back by batch-affine indices: rewritten per sample.
        let todo: Vec<NodeProto> = if let Some(rewritten) = as_strided(n, ctx)? {
            rewritten
        } else if is_batch_flatten(n, ctx, &readers) {
            continue;
        } else {
            vec![n.clone()]
        };
        for n in &todo {
            if !n.input.iter().any(|s| ctx.is_act(s)) || n.op_type == "Shape" {
                // Constants only (or a Shape): folded here, unless it is an Expand of a constant to
                // the batch size (a class token), which starts a batch-carrying value.
                if !rules::expands_to_batch(n, ctx) {
                    if !fold::can_fold(n, |s| ctx.consts.contains_key(s), |s| ctx.is_act(s))
                        && rules::find(&n.op_type).is_none()
                    {
                        return Err(unsupported(n));
                    }
                    for t in fold::fold(n, &ctx.consts, |s| ctx.shapes.get(s).cloned())? {
                        ctx.consts.insert(t.name.clone(), t);
                    }
                    // A weight the exporter transposes or reshapes in the graph (the legacy
                    // exporter's MatMul by Transpose(W) without constant folding) keeps its name.
                    if fold::VIEWS.contains(&n.op_type.as_str()) {
                        if let (Some(x), Some(o)) = (n.input.first(), n.output.first()) {
                            let src = ctx.origin.get(x).cloned().unwrap_or_else(|| x.clone());
                            if graph.initializer.iter().any(|t| t.name == src) {
                                ctx.origin.insert(o.clone(), src);
                            }
                        }
                    }
                    continue;
                }
            }
            let rule = rules::find(&n.op_type).ok_or_else(|| unsupported(n))?;
            let shape = (rule.shape)(n, ctx)?;
            let out = n.output.first().ok_or_else(|| node_err(n, "node has no output"))?;
            // Multi-output operators (Split): every output's shape.
            let outs: Vec<(String, Vec<usize>)> = match rules::output_shapes(n, ctx)? {
                Some(v) => v,
                None => vec![(out.clone(), shape)],
            };
            for (o, s) in &outs {
                ctx.shapes.insert(o.clone(), s.clone());
            }
            let scope = rules::Scope { ctx, producers, readers: &readers, after_param: &after_param };
            let found: Vec<(String, ParamKind)> = rule
                .candidates(n, &scope)
                .into_iter()
                .map(|(idx, kind)| (ctx.param_name(&n.input[idx]).to_string(), kind))
                .collect();
            if !found.is_empty() || n.input.iter().any(|s| after_param.contains(s)) {
                after_param.extend(outs.iter().map(|(o, _)| o.clone()));
            }
            let selected: Vec<(String, ParamKind)> =
                found.iter().filter(|(p, k)| selection.selects(p, *k)).cloned().collect();
            if !selected.is_empty() || n.input.iter().any(|s| ctx.param_dep.contains(s)) {
                ctx.param_dep.extend(outs.iter().map(|(o, _)| o.clone()));
            }
            if matches!(n.op_type.as_str(), "Gemm" | "MatMul") {
                let a = &n.input[0];
                if let Some(s) = ctx.shapes.get(a) {
                    fwd.last_linear = Some((a.clone(), s.iter().product()));
                }
            }
            if n.op_type == "Add" && n.input.len() == 2 && n.input.iter().all(|s| ctx.is_act(s)) {
                // A residual join; its statistic is taken after the activation that follows it.
                let after = readers.get(out).and_then(|r| match r.as_slice() {
                    [r] if matches!(r.op_type.as_str(), "Relu" | "LeakyRelu" | "Clip" | "Sigmoid" | "HardSwish") => {
                        r.output.first().cloned()
                    }
                    _ => None,
                });
                let stat = after.unwrap_or_else(|| out.clone());
                if let Some(s) = ctx.shapes.get(out) {
                    fwd.block_outputs.push((stat, s.clone()));
                }
            }
            ctx.param_set.extend(selected.iter().map(|(p, _)| p.clone()));
            ctx.params.extend(selected);
            if let Some(s) = ctx.shapes.get(out) {
                fwd.candidate_shapes.extend(std::iter::repeat_n(s.clone(), found.len()));
            }
            fwd.candidates.extend(found);
            fwd.nodes.push(n.clone());
        }
    }
    let typos = selection.unmatched(&fwd.candidates);
    if !typos.is_empty() {
        let kinds: Vec<&str> = ParamKind::ALL.iter().map(|k| k.name()).collect();
        return Err(GradError::Model(format!(
            "--params {selection}: {} matches no parameter kind ({}) and no parameter tensor of the model",
            typos.join(", "),
            kinds.join(", ")
        )));
    }
    if ctx.params.is_empty() {
        return Err(GradError::Model(if fwd.candidates.is_empty() {
            "the model has no parameters (Conv/Gemm/MatMul/BatchNormalization weights)".into()
        } else {
            format!("--params {selection} selects none of the model's {} parameter tensors", fwd.candidates.len())
        }));
    }
    Ok(fwd)
}

/// Whether `n` flattens a whole batch of activations into one axis (`Reshape(x, [-1])`) that
/// only a Gather reads: recorded in `ctx.merged` for [`as_strided`], not analysed itself.
fn is_batch_flatten(n: &NodeProto, ctx: &mut Ctx, readers: &HashMap<String, Vec<&NodeProto>>) -> bool {
    let (Some(x), Some(t), Some(o)) = (n.input.first(), n.input.get(1), n.output.first()) else { return false };
    let flat = n.op_type == "Reshape"
        && ctx.is_act(x)
        && ctx.consts.get(t).is_some_and(|t| onnx::tensor_i64(t).is_ok_and(|v| v.iter().eq([-1i64].iter())))
        && readers.get(o).is_some_and(|r| r.iter().all(|r| r.op_type == "Gather"));
    if flat {
        ctx.merged.insert(o.clone(), x.clone());
    }
    flat
}

/// `torch.as_strided` as the dynamo exporter writes it: `Gather(Reshape(x, [-1]), b * S + c)`
/// with `S` the per-sample size of `x` and offsets `c` inside one sample. Rewritten per sample
/// as `Gather(Reshape(x, [0, -1]), c, axis=1)` (the compiled graph holds the rewrite).
fn as_strided(n: &NodeProto, ctx: &mut Ctx) -> Result<Option<Vec<NodeProto>>, GradError> {
    let (Some(flat), Some(idx)) = (n.input.first(), n.input.get(1)) else { return Ok(None) };
    let Some(x) = ctx.merged.get(flat).cloned() else { return Ok(None) };
    let aff = ctx.affine.get(idx).cloned().ok_or_else(|| {
        node_err(n, "reads a flatten of the whole batch by indices gradwatch cannot follow; keep the batch axis first")
    })?;
    let size: usize = ctx.shape(n, &x)?.iter().product();
    let inside = aff.c.iter().all(|&v| v >= 0 && (v as usize) < size);
    if n.op_type != "Gather" || onnx::Attrs::of(n).int("axis", 0)? != 0 || aff.k != size as i64 || !inside {
        return Err(node_err(n, "reads a flatten of the whole batch across samples; keep the batch axis first"));
    }
    let shape = ctx.b.const_i64("per_sample_flat", &[0, -1]);
    let offsets = ctx.b.fresh("per_sample_offsets");
    let cv: Vec<i64> = aff.c.iter().copied().collect();
    ctx.b.inits.push(onnx::make_tensor_i64(&offsets, aff.c.shape(), &cv));
    ctx.consts.insert(shape.clone(), onnx::make_tensor_i64(&shape, &[2], &[0, -1]));
    ctx.consts.insert(offsets.clone(), onnx::make_tensor_i64(&offsets, aff.c.shape(), &cv));
    let r = onnx::make_node("Reshape", &format!("{flat}/per_sample"), &[&x, &shape], &[flat], vec![]);
    let g = onnx::make_node(
        "Gather",
        &n.name,
        &[flat, &offsets],
        &n.output.iter().map(String::as_str).collect::<Vec<_>>(),
        vec![attr::int("axis", 1)],
    );
    ctx.replaced.insert(flat.clone(), r.clone());
    ctx.replaced.insert(n.output[0].clone(), g.clone());
    Ok(Some(vec![r, g]))
}

/// The names of the candidates in the last `stages` stages and the head: a stage is a run of
/// layers at one spatial resolution (per-sample shapes `[C, spatial...]`, by the product of the
/// spatial dims); the head is what comes after the spatial axes are gone (`[C]` outputs, e.g.
/// the classifier's Gemm after global pooling).
fn last_stages(fwd: &Forward, stages: usize) -> HashSet<String> {
    let spatial = |s: &[usize]| -> Option<usize> { (s.len() >= 2).then(|| s[1..].iter().product()) };
    let mut order: Vec<usize> = Vec::new();
    for s in &fwd.candidate_shapes {
        if let Some(r) = spatial(s) {
            if order.last() != Some(&r) {
                order.retain(|&o| o != r);
                order.push(r);
            }
        }
    }
    let keep: HashSet<usize> = order.iter().rev().take(stages).copied().collect();
    fwd.candidates
        .iter()
        .zip(&fwd.candidate_shapes)
        .filter(|(_, s)| spatial(s).is_none_or(|r| keep.contains(&r)))
        .map(|((name, _), _)| name.clone())
        .collect()
}

/// The confounding label: all ones by default, else 0/1 per class with not exactly one 1.
fn confounding_label(label: Option<&Vec<f32>>, num_classes: usize) -> Result<Vec<f32>, GradError> {
    let Some(l) = label else { return Ok(vec![1.0f32; num_classes]) };
    if l.len() != num_classes {
        return Err(GradError::Model(format!("label has {} entries, the model has {num_classes} classes", l.len())));
    }
    if l.iter().any(|&v| v != 0.0 && v != 1.0) {
        return Err(GradError::Model("the confounding label must be 0/1 per class".into()));
    }
    if l.iter().filter(|&&v| v == 1.0).count() == 1 {
        return Err(GradError::Model(
            "a label with exactly one 1 is an ordinary class label, not a confounding label".into(),
        ));
    }
    Ok(l.clone())
}

/// The backward pass: records who reads each activation, seeds `dJ/dz` at the logits and runs
/// each node's rule in reverse graph order. Returns the gradient contributions that reached no
/// node (the input's, when it is wanted).
fn backward(
    ctx: &mut Ctx,
    fwd: &Forward,
    logits: &str,
    label: &[f32],
    loss: Loss,
) -> Result<HashMap<String, Vec<String>>, GradError> {
    for n in &fwd.nodes {
        for i in &n.input {
            if ctx.is_act(i) {
                ctx.readers.entry(i.clone()).or_default().push(n.clone());
            }
        }
        for o in &n.output {
            ctx.producer.insert(o.clone(), n.op_type.clone());
        }
    }
    // Values the caller sees are read outside the graph: an empty op type marks that reader.
    let mut seen: Vec<String> = vec![logits.to_string()];
    seen.extend(fwd.last_linear.iter().map(|(name, _)| name.clone()));
    for name in seen {
        ctx.readers.entry(name).or_default().push(NodeProto::default());
    }
    let seed = loss::loss_seed(ctx, logits, label, loss)?;
    let mut contrib: HashMap<String, Vec<String>> = HashMap::from([(logits.to_string(), vec![seed])]);
    for n in fwd.nodes.iter().rev() {
        let dy = if rules::multi_output(n) {
            // The gradients of a Split's outputs, concatenated back (zeros where none came).
            let parts: Vec<Option<Vec<String>>> = n.output.iter().map(|o| contrib.remove(o)).collect();
            if parts.iter().all(Option::is_none) {
                continue;
            }
            let grads: Vec<String> = n
                .output
                .iter()
                .zip(parts)
                .map(|(o, p)| match p {
                    Some(p) => sum_parts(&mut ctx.b, p),
                    None => ctx.b.scale_zero(o),
                })
                .collect();
            rules::join_outputs(n, ctx, &grads)?
        } else {
            let out = &n.output[0];
            let Some(parts) = contrib.remove(out) else { continue };
            sum_parts(&mut ctx.b, parts)
        };
        for (x, dx) in rules::backward(n, &dy, ctx)? {
            contrib.entry(x).or_default().push(dx);
        }
    }
    Ok(contrib)
}

/// The outputs [`emit_outputs`] added.
struct Emitted {
    /// Graph outputs, in order.
    outputs: Vec<ValueInfoProto>,
    /// Width of `penultimate`, when requested.
    penultimate_dim: Option<usize>,
}

/// Adds the output nodes: `logits`, `grad_features` (one column per selected parameter, then
/// one per activation statistic in `stats`: its per-sample mean square), and when asked `penultimate` and `input_grad` (from the gradient `input_grad` parts).
#[allow(clippy::too_many_arguments)]
fn emit_outputs(
    ctx: &mut Ctx,
    opts: &CompileOptions,
    logits: &str,
    num_classes: usize,
    last_linear: Option<(String, usize)>,
    input_grad: Option<Vec<String>>,
    input_shape: &[usize],
    stats: &[(String, Vec<usize>)],
) -> Result<Emitted, GradError> {
    let b = &mut ctx.b;
    let mut outputs = Vec::new();
    let logits_out = if logits == outputs::LOGITS {
        logits.to_string()
    } else {
        if !b.reserve(outputs::LOGITS) {
            return Err(GradError::Model("the model already has a value named 'logits' that is not its output".into()));
        }
        b.op_to("Identity", &[logits], outputs::LOGITS, vec![]);
        outputs::LOGITS.to_string()
    };
    outputs.push(onnx::make_value_info(&logits_out, onnx::data_type::FLOAT, &[None, Some(num_classes as i64)]));

    let mut cols = Vec::new();
    for (p, _) in &ctx.params {
        let norm = ctx.norms.get(p).ok_or_else(|| {
            GradError::Model(format!(
                "parameter '{p}' gets no gradient from the logits (is it on a path to the output?)"
            ))
        })?;
        cols.push(b.reshape_to(norm, &[-1, 1]));
    }
    for (t, shape) in stats {
        let sq = b.sample_sq_norm(t, shape.len() + 1);
        let mean = b.scale(&sq, 1.0 / shape.iter().product::<usize>().max(1) as f32);
        cols.push(b.reshape_to(&mean, &[-1, 1]));
    }
    let col_refs: Vec<&str> = cols.iter().map(String::as_str).collect();
    if !b.reserve(outputs::FEATURES) {
        return Err(GradError::Model(format!("the model already has a value named '{}'", outputs::FEATURES)));
    }
    b.op_to("Concat", &col_refs, outputs::FEATURES, vec![attr::int("axis", 1)]);
    outputs.push(onnx::make_value_info(
        outputs::FEATURES,
        onnx::data_type::FLOAT,
        &[None, Some((ctx.params.len() + stats.len()) as i64)],
    ));

    let mut penultimate_dim = None;
    if opts.penultimate {
        let (name, dim) =
            last_linear.ok_or_else(|| GradError::Model("no Gemm/MatMul found for the penultimate output".into()))?;
        b.reserve(outputs::PENULTIMATE);
        let flat = b.reshape_batch(&name, &[dim]);
        b.op_to("Identity", &[&flat], outputs::PENULTIMATE, vec![]);
        outputs.push(onnx::make_value_info(outputs::PENULTIMATE, onnx::data_type::FLOAT, &[None, Some(dim as i64)]));
        penultimate_dim = Some(dim);
    }
    if let Some(parts) = input_grad {
        let g = sum_parts(b, parts);
        b.reserve(outputs::INPUT_GRAD);
        b.op_to("Identity", &[&g], outputs::INPUT_GRAD, vec![]);
        let mut d = vec![None];
        d.extend(input_shape.iter().map(|&v| Some(v as i64)));
        outputs.push(onnx::make_value_info(outputs::INPUT_GRAD, onnx::data_type::FLOAT, &d));
    }
    Ok(Emitted { outputs, penultimate_dim })
}

/// The inputs and outputs of the compiled graph.
struct Layout<'a> {
    /// Name of the image input.
    input_name: &'a str,
    /// Its per-sample shape.
    input_shape: &'a [usize],
    /// The graph outputs.
    outputs: Vec<ValueInfoProto>,
}

/// What [`assemble`] writes into the metadata.
struct Meta<'a> {
    loss: Loss,
    label: &'a [f32],
    features: &'a [String],
    preset: &'a str,
}

/// The compiled model: the needed forward nodes, then the builder's; the initializers they
/// use; the image input (and `temperature` for ODIN); and the metadata (features, loss, label,
/// preset).
fn assemble(
    model: &ModelProto,
    graph: &GraphProto,
    needed: &[bool],
    replaced: &HashMap<String, NodeProto>,
    b: &mut Builder,
    layout: Layout,
    meta: Meta,
) -> ModelProto {
    let Meta { loss, label, features, preset } = meta;
    let Layout { input_name, input_shape, outputs } = layout;
    let mut new_nodes: Vec<NodeProto> = graph
        .node
        .iter()
        .enumerate()
        .filter(|(i, _)| needed[*i])
        .map(|(_, n)| n.output.first().and_then(|o| replaced.get(o)).unwrap_or(n).clone())
        .collect();
    new_nodes.append(&mut b.nodes);
    let used: HashSet<&str> = new_nodes.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    let mut initializer: Vec<TensorProto> =
        graph.initializer.iter().filter(|t| used.contains(t.name.as_str())).cloned().collect();
    initializer.append(&mut b.inits);

    let mut in_dims = vec![None];
    in_dims.extend(input_shape.iter().map(|&v| Some(v as i64)));
    let mut graph_inputs = vec![onnx::make_value_info(input_name, onnx::data_type::FLOAT, &in_dims)];
    if loss == Loss::Odin {
        graph_inputs.push(onnx::make_value_info(outputs::TEMPERATURE, onnx::data_type::FLOAT, &[Some(1)]));
    }

    let mut out_model = model.clone();
    out_model.graph = Some(GraphProto {
        node: new_nodes,
        name: format!("{}_gradwatch", graph.name),
        initializer,
        doc_string: "gradient features compiled by gradwatch".into(),
        input: graph_inputs,
        output: outputs,
        value_info: vec![],
    });
    out_model.producer_name = "gradwatch".into();
    out_model.producer_version = env!("CARGO_PKG_VERSION").into();
    onnx::set_metadata(&mut out_model, META_FEATURES, &serde_json::to_string(features).unwrap_or_default());
    onnx::set_metadata(&mut out_model, META_LOSS, loss.name());
    onnx::set_metadata(&mut out_model, META_PRESET, preset);
    onnx::set_metadata(
        &mut out_model,
        META_LABEL,
        &label.iter().map(|v| if *v == 1.0 { "1" } else { "0" }).collect::<String>(),
    );
    out_model
}

fn sum_parts(b: &mut Builder, mut parts: Vec<String>) -> String {
    if parts.len() == 1 {
        return parts.remove(0);
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    b.op("Sum", &refs, vec![])
}

/// The preset recorded in a compiled model's metadata (`full` for graphs from before presets).
pub fn preset_name(model: &ModelProto) -> String {
    onnx::metadata(model).get(META_PRESET).cloned().unwrap_or_else(|| Preset::Full.name().to_string())
}

/// Feature names stored in a compiled model's metadata.
pub fn feature_names(model: &ModelProto) -> Option<Vec<String>> {
    onnx::metadata(model).get(META_FEATURES).and_then(|s| serde_json::from_str(s).ok())
}
