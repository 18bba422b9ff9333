//! The compiler's options and result types: presets, losses, Conv norm plans, parameter kinds
//! and selections, [`CompileOptions`] and [`Compiled`].

use crate::onnx::ModelProto;

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
    /// mean square of every residual block's output and of the last Conv activation of each
    /// stage without one (forward-only, nearly free). Chosen by
    /// measurement: `docs/results/presets.md`.
    Fast,
    /// No backward pass through the network: the norms of the classifier head's parameters
    /// (the layers after the spatial axes are gone; for a fully convolutional classifier, its
    /// last layer) and `fast`'s forward-only statistics. For a device where even `fast` costs
    /// more than the budget (`gradwatch init --preset auto` falls back to it).
    Head,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 3] = [Preset::Full, Preset::Fast, Preset::Head];

    /// The command-line / metadata / calibration name.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Full => "full",
            Preset::Fast => "fast",
            Preset::Head => "head",
        }
    }

    /// How many stages, counted from the output, the backward pass of this preset reaches
    /// (`None`: all of them).
    pub fn stages(self) -> Option<usize> {
        match self {
            Preset::Full => None,
            Preset::Fast => Some(FAST_STAGES),
            Preset::Head => Some(0),
        }
    }

    /// Whether this preset adds the forward-only activation statistics.
    pub fn act_stats(self) -> bool {
        matches!(self, Preset::Fast | Preset::Head)
    }
}

/// The number of last stages whose parameters `fast` differentiates (see `docs/results/presets.md`).
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
            "head" => Ok(Preset::Head),
            _ => Err(format!("unknown preset '{s}' (expected full, fast or head)")),
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
    /// The cheapest per layer (by a cost model of multiply-adds and memory traffic); for a
    /// depthwise Conv on a small output map, [`ConvNorm::Depthwise`].
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
    /// For depthwise Convs (one input and one output channel per group): the `C x k x k`
    /// per-sample gradient from the input's strided windows times the output gradient,
    /// channels-last (cost ~ 4 C k^2 HW memory passes, no per-channel overhead). Other Convs
    /// as [`ConvNorm::Auto`].
    Depthwise,
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
    pub(super) fn unmatched(&self, found: &[(String, ParamKind)]) -> Vec<String> {
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

/// Options of [`compile`](super::compile).
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
    /// Which parameter tensors become features. Under [`Preset::Fast`] and [`Preset::Head`] the
    /// preset's stages further restrict it.
    pub params: ParamSelection,
    /// The feature preset; [`Preset::Fast`] keeps only the selected parameters of the last
    /// stage(s) and the head, [`Preset::Head`] those of the head, and both turn on
    /// [`CompileOptions::act_stats`].
    pub preset: Preset,
    /// Append forward-only features: the per-sample mean square of every residual block's
    /// output (an `Add` of two activations, or the activation after it) and, for each
    /// convolutional stage without one, of its last activation of a Conv (or its norm), named
    /// `act:<tensor>`.
    pub act_stats: bool,
    /// Keep only the parameters of the last `stages` spatial resolutions (and the head after
    /// them; 0: the head alone); `None` keeps every stage. Set by the preset when `None`.
    pub stages: Option<usize>,
    /// `(width, height)` to compile a model whose input height and width are symbolic for (a
    /// fully convolutional classifier exported with dynamic spatial axes): the size its frames
    /// are resized to, in the order of [`crate::model::parse_size`] and the preprocessing.
    /// Ignored where the model fixes them.
    pub input_size: Option<(usize, usize)>,
    /// Write the graph for TensorRT, whose ONNX parser takes neither MaxPool's `Indices`
    /// output nor `ScatterElements` with a reduction: MaxPool's backward then reads its
    /// windows' patches instead, which costs ONNX Runtime's CPU kernels more (GoogLeNet's
    /// gradient graph about 1.3x). Set when the providers include TensorRT; the features are
    /// the same either way.
    pub tensorrt: bool,
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
    /// For each Conv weight, the norm formulation chosen (`im2col`, `ghost`, `pixel-gram` or
    /// `depthwise`).
    pub conv_plans: Vec<(String, &'static str)>,
    /// The preset name recorded in the metadata (`full`, `fast` or `custom`).
    pub preset: String,
    /// Forward-only statistics appended to the features (names start with
    /// [`ACT_PREFIX`](super::ACT_PREFIX)); `features` ends with them.
    pub act_stats: Vec<String>,
    /// Whether some activations hold the batch merged with or behind another axis and were
    /// stored batch-first (the forward nodes differ from the model's).
    pub batch_moved: bool,
}
