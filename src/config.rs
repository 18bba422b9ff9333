//! The daemon's configuration file (`gradwatch run --config FILE`): one TOML document with
//! `[model]`, `[runtime]`, `[pipeline]`, `[alert]`, `[metrics]`, `[[stream]]` and `[[sink]]`.
//!
//! Every table is strict (`deny_unknown_fields`): a misspelt key is an error naming the key and
//! its line, never silently ignored. Relative paths (model, calibration, stream files, sink
//! files, the TensorRT cache) resolve against the config file's directory, so a config works
//! from any working directory. Each component's config struct lives next to its code
//! (`source`, `sink`, `pipeline`, `alert`, `metrics`, `runtime`), validates itself and resolves
//! its own paths; this module only assembles them and checks what spans components. `config/gradwatch.toml` documents every option with its default.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use crate::base::path::resolve_path;

use serde::{Deserialize, Serialize};

pub use crate::alert::AlertConfig;
use crate::metrics::MetricsConfig;
pub use crate::pipeline::PipelineConfig;
use crate::runtime::RuntimeOptions;
use crate::sink::{SinkConfig, StdoutSinkConfig};
use crate::source::StreamConfig;

/// Errors loading or validating a config.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config {path}: {source}; check the path given to --config")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key is unknown, missing or of the wrong type. The message comes
    /// from the TOML parser and names the key and the line.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (line, column, the offending line, what is wrong).
        message: String,
    },
    /// The values are inconsistent; the message names the key and the fix.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// `[model]`: the classifier and its calibration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The ONNX classifier. Default `models/gtsrb-resnet18.onnx`.
    #[serde(default = "default_model_path")]
    pub path: PathBuf,
    /// The calibration file made by `gradwatch calibrate` for this model.
    /// Default `models/gtsrb-resnet18.calib.toml`.
    #[serde(default = "default_calibration_path")]
    pub calibration: PathBuf,
    /// Overrides the calibration's threshold (alarm when score > threshold). Default: unset,
    /// the calibration's threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f32>,
    /// The feature preset the model is compiled with: `full` (the paper's features), `fast`
    /// (the last stage and the head) or `head` (the head alone; `docs/guide/presets.md`). The
    /// calibration must have been fitted for the same preset. Default `full`.
    #[serde(default)]
    pub preset: crate::grad::Preset,
}

fn default_model_path() -> PathBuf {
    PathBuf::from(crate::model::DEFAULT_MODEL)
}

fn default_calibration_path() -> PathBuf {
    PathBuf::from("models/gtsrb-resnet18.calib.toml")
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            path: default_model_path(),
            calibration: default_calibration_path(),
            threshold: None,
            preset: Default::default(),
        }
    }
}

/// The whole config file.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[model]`.
    #[serde(default)]
    pub model: ModelConfig,
    /// `[runtime]`: ONNX Runtime and execution providers.
    #[serde(default)]
    pub runtime: RuntimeOptions,
    /// `[pipeline]`.
    #[serde(default)]
    pub pipeline: PipelineConfig,
    /// `[alert]`.
    #[serde(default)]
    pub alert: AlertConfig,
    /// `[metrics]`.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// `[[stream]]` tables; at least one enabled.
    #[serde(default)]
    pub stream: Vec<StreamConfig>,
    /// `[[sink]]` tables; default one stdout sink.
    #[serde(default)]
    pub sink: Vec<SinkConfig>,
    /// `[snapshots]`: alert snapshots and heat maps.
    #[serde(default)]
    pub snapshots: crate::snapshot::SnapshotConfig,
    /// `[service]`: the unit's fleet identity (`unit_id`, `labels`; see [`crate::fleet`]).
    #[serde(default)]
    pub service: crate::fleet::ServiceConfig,
    /// Where the config was read from (not a key of the file).
    #[serde(skip)]
    pub source_path: PathBuf,
}

impl Config {
    /// Reads, parses, resolves relative paths and validates `path`. Does not open the model,
    /// devices or sinks.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.into(), source })?;
        let mut c = Config::parse(&text, path)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        c.resolve_paths(&base);
        c.validate()?;
        Ok(c)
    }

    /// Parses TOML text (`path` only names the file in errors); no path resolution, no
    /// validation.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut c: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: describe(text, &e) })?;
        c.source_path = path.to_path_buf();
        if c.sink.is_empty() {
            c.sink.push(SinkConfig::Stdout(StdoutSinkConfig::default()));
        }
        // An MQTT sink without a `client_id` is this unit on the broker (fleet identity).
        for s in &mut c.sink {
            if let SinkConfig::Mqtt(m) = s {
                if m.client_id.is_empty() {
                    m.client_id = c.service.unit_id();
                }
            }
        }
        Ok(c)
    }

    /// Makes every relative path absolute against `base` (the config file's directory); each
    /// component resolves its own paths.
    pub fn resolve_paths(&mut self, base: &Path) {
        resolve_path(&mut self.model.path, base);
        resolve_path(&mut self.model.calibration, base);
        if let Some(d) = self.alert.state_dir.as_mut() {
            resolve_path(d, base);
        }
        self.runtime.resolve_paths(base);
        for s in &mut self.stream {
            s.source.resolve_paths(base);
        }
        for s in &mut self.sink {
            s.resolve_paths(base);
        }
        self.snapshots.resolve_paths(base);
    }

    fn invalid(&self, message: String) -> ConfigError {
        ConfigError::Invalid { path: self.source_path.clone(), message }
    }

    /// Checks consistency without opening the model, devices or sinks: at least one enabled
    /// stream, unique stream names, every stream and policy valid, pipeline numbers in range,
    /// model and calibration files present.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.service.validate().map_err(|e| self.invalid(e))?;
        if !self.stream.iter().any(|s| s.enabled) {
            return Err(self.invalid(
                "no enabled `[[stream]]`; add one (see config/gradwatch.toml) or set `enabled = true`".into(),
            ));
        }
        let mut names = HashSet::new();
        for s in &self.stream {
            crate::names::validate(&s.name).map_err(|e| self.invalid(format!("[[stream]] name {:?}: {e}", s.name)))?;
            s.validate().map_err(|e| self.invalid(format!("[[stream]] `{}`: {e}", s.name)))?;
            if !names.insert(s.name.as_str()) {
                return Err(
                    self.invalid(format!("[[stream]] name `{}` is used twice; stream names must be unique", s.name))
                );
            }
        }
        self.alert.validate(&names).map_err(|e| self.invalid(e))?;
        self.pipeline.validate().map_err(|e| self.invalid(format!("[pipeline] {e}")))?;
        self.snapshots.validate().map_err(|e| self.invalid(e))?;
        if let Some(t) = self.model.threshold {
            if !t.is_finite() {
                return Err(self.invalid(format!("[model] threshold = {t} must be a finite number")));
            }
        }
        self.validate_sinks()?;
        let r = &self.runtime;
        // 100000 threads hung ONNX Runtime's session creation (and SIGTERM with it).
        if r.threads > MAX_THREADS {
            return Err(self.invalid(format!(
                "[runtime] threads = {} must be in 0..={MAX_THREADS} (0 = one per core)",
                r.threads
            )));
        }
        if !(0..=64).contains(&r.cuda_device) {
            return Err(self.invalid(format!("[runtime] cuda_device = {} must be in 0..=64", r.cuda_device)));
        }
        if !(1..=1 << 20).contains(&r.tensorrt.workspace_mb) {
            return Err(self.invalid(format!(
                "[runtime.tensorrt] workspace_mb = {} must be in 1..=1048576",
                r.tensorrt.workspace_mb
            )));
        }
        if self.runtime.providers.is_empty() {
            return Err(self.invalid("[runtime] providers is empty; use e.g. [\"cpu\"]".into()));
        }
        for (key, file) in [("path", &self.model.path), ("calibration", &self.model.calibration)] {
            if !file.is_file() {
                let hint =
                    if key == "calibration" { "; make one with `gradwatch calibrate` for this model" } else { "" };
                return Err(self.invalid(format!("[model] {key}: {} does not exist{hint}", file.display())));
            }
        }
        Ok(())
    }

    /// Every sink's own check, and no two file sinks on one file (each line
    /// would be written twice, interleaved).
    fn validate_sinks(&self) -> Result<(), ConfigError> {
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        for s in &self.sink {
            let name = s.name();
            s.validate().map_err(|e| self.invalid(format!("[[sink]] `{name}`: {e}")))?;
            if let SinkConfig::File(f) = s {
                let key = same_file_key(&f.path);
                if let Some((_, other)) = files.iter().find(|(k, _)| *k == key) {
                    return Err(self.invalid(format!(
                        "[[sink]] `{name}` and `{other}` both write {}; give each file sink its own `path`",
                        f.path.display()
                    )));
                }
                files.push((key, name));
            }
        }
        Ok(())
    }

    /// The enabled streams, in file order.
    pub fn enabled_streams(&self) -> impl Iterator<Item = &StreamConfig> {
        self.stream.iter().filter(|s| s.enabled)
    }
}

/// Most ONNX Runtime intra-op threads.
pub const MAX_THREADS: usize = 1024;

/// A path as compared for "the same file": its directory canonicalized where it exists (so
/// `a/../x` and `x`, or a symlinked directory, compare equal), the file name as given.
fn same_file_key(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(d), Some(f)) => d.canonicalize().map_or_else(|_| p.to_path_buf(), |d| d.join(f)),
        _ => p.to_path_buf(),
    }
}

/// One line naming the line, column and problem of a TOML error.
///
/// The parser's span covers the whole table when the error comes from a table deserialized by
/// hand (`[[stream]]`, `[alert]`), so for an unknown key the key itself is looked up inside the
/// span to name its own line.
fn describe(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().replace('\n', "; ");
    let Some(span) = e.span() else { return msg };
    let mut at = span.start.min(text.len());
    if let Some(key) = msg.split("unknown field `").nth(1).and_then(|r| r.split('`').next()) {
        let end = table_end(text, at).max(span.end.min(text.len()));
        if let Some(off) = find_key(&text[at..end], key) {
            at += off;
        }
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let col = before.rfind('\n').map_or(before.len(), |i| before.len() - i - 1) + 1;
    let src = text[at - (col - 1)..].lines().next().unwrap_or("").trim();
    format!("line {line}, column {col}: {msg} (at `{src}`)")
}

/// When `at` starts a table header (`[alert]`, `[[stream]]`), the offset where that table's
/// body ends: the next header that is not one of its sub-tables. Otherwise `at`.
fn table_end(text: &str, at: usize) -> usize {
    let first = text[at..].lines().next().unwrap_or("").trim();
    let name = if let Some(n) = first.strip_prefix("[[") {
        n.trim_end_matches(']').trim()
    } else if let Some(n) = first.strip_prefix('[') {
        n.trim_end_matches(']').trim()
    } else {
        return at;
    };
    let sub = format!("{name}.");
    let mut lines = text[at..].split_inclusive('\n');
    let mut off = at + lines.next().map_or(0, str::len);
    for line in lines {
        let t = line.trim_start();
        let header = t.starts_with('[');
        let inner = t.trim_start_matches('[').trim_end().trim_end_matches(']').trim();
        if header && (t.starts_with("[[") || !inner.starts_with(&sub)) {
            break;
        }
        off += line.len();
    }
    off.min(text.len())
}

/// Byte offset of `key` used as a key (`key =`, at a line start or after `{` / `,`).
fn find_key(s: &str, key: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find(key).map(|i| i + from) {
        let prev = s[..i].trim_end_matches([' ', '\t']).chars().last();
        let next = s[i + key.len()..].trim_start_matches([' ', '\t']).chars().next();
        if matches!(prev, None | Some('\n' | '{' | ',')) && next == Some('=') {
            return Some(i);
        }
        from = i + key.len();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertPolicy;
    use crate::source::SourceConfig;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("test.toml"))
    }

    const STREAM: &str = "[[stream]]\nname = \"a\"\nkind = \"directory\"\npath = \"frames\"\n";

    #[test]
    fn defaults() {
        let c = parse(STREAM).unwrap();
        assert_eq!(c.pipeline, PipelineConfig::default());
        assert_eq!(c.pipeline.max_batch, 8);
        assert_eq!(c.alert.default, AlertPolicy::default());
        assert_eq!(c.sink.len(), 1);
        assert!(matches!(c.sink[0], SinkConfig::Stdout(_)));
        assert_eq!(c.metrics.bind, "127.0.0.1:9464");
    }

    #[test]
    fn runtime_memory_options_parse_and_default() {
        let c = parse(STREAM).unwrap();
        // Defaults (docs/results/memory.md): the arena on, memory pattern planning off.
        assert!(c.runtime.cpu_arena);
        assert!(!c.runtime.memory_pattern);
        let c = parse(&format!("{STREAM}\n[runtime]\ncpu_arena = false\nmemory_pattern = true\n")).unwrap();
        assert!(!c.runtime.cpu_arena);
        assert!(c.runtime.memory_pattern);
        let e = parse(&format!("{STREAM}\n[runtime]\nmemory_pattern = 1\n")).unwrap_err().to_string();
        assert!(e.contains("memory_pattern"), "{e}");
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let e = parse(&format!("{STREAM}\n[pipeline]\nmax_batch = 4\nmax_wiat_ms = 3\n")).unwrap_err().to_string();
        assert!(e.contains("max_wiat_ms"), "{e}");
        assert!(e.contains("line 8"), "{e}");
        assert!(e.contains("test.toml"), "{e}");
    }

    #[test]
    fn alert_overrides_inherit_defaults() {
        let c = parse(&format!("{STREAM}\n[alert]\nwindow = 20\nraise = 12\n[alert.stream.a]\nraise = 15\n")).unwrap();
        assert_eq!(c.alert.default.window, 20);
        let a = c.alert.policy_for("a");
        assert_eq!((a.window, a.raise, a.clear), (20, 15, 2));
        assert_eq!(c.alert.policy_for("other").raise, 12);
        let e = parse(&format!("{STREAM}\n[alert]\nrase = 3\n")).unwrap_err().to_string();
        assert!(e.contains("rase") && e.contains("line 7,"), "{e}");
        let e = parse(&format!("{STREAM}fsp = 3\n")).unwrap_err().to_string();
        assert!(e.contains("fsp") && e.contains("line 5,"), "{e}");
        let e = parse(&format!("{STREAM}queue = {{ size = 2, polcy = \"block\" }}\n")).unwrap_err().to_string();
        assert!(e.contains("polcy") && e.contains("line 5,"), "{e}");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_dir() {
        let mut c = parse(STREAM).unwrap();
        c.resolve_paths(Path::new("/etc/gw"));
        assert_eq!(c.model.path, Path::new("/etc/gw/models/gtsrb-resnet18.onnx"));
        match &c.stream[0].source {
            SourceConfig::Directory(d) => assert_eq!(d.path, Path::new("/etc/gw/frames")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shipped_configs_parse() {
        let c = parse(include_str!("../config/gradwatch.toml")).unwrap();
        assert_eq!(c.stream.len(), 1);
        assert_eq!(c.sink.len(), 2);
        assert_eq!(c.pipeline, PipelineConfig::default());
        // The shipped file uses the cusum policy with the simulated threshold at 1.2 a day
        // (docs/results/alarms.md); every other key is at its default.
        let shipped = AlertPolicy {
            policy: crate::alert::PolicyKind::Cusum,
            false_alarms_per_day: 1.2,
            threshold: crate::alert::ThresholdRule::Simulated,
            ..AlertPolicy::default()
        };
        assert_eq!(c.alert.default, shipped);
        assert!(c.stream[0].baseline.is_some());
        assert_eq!(c.metrics, MetricsConfig::default());
        let d = parse(include_str!("../config/demo.toml")).unwrap();
        match &d.stream[0].source {
            SourceConfig::Replay(r) => assert_eq!(r.window_frames().unwrap(), [120, 90, 90, 90, 90, 90, 90]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn validation_errors() {
        let dup = format!("{STREAM}{STREAM}");
        let e = parse(&dup).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("used twice"), "{e}");
        let none = "[[stream]]\nname = \"a\"\nenabled = false\nkind = \"directory\"\npath = \"x\"\n";
        let e = parse(none).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("no enabled"), "{e}");
        let e = parse(&format!("{STREAM}[pipeline]\nmax_batch = 0\n")).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("max_batch"), "{e}");
        let missing = format!("[model]\npath = \"/nonexistent/model.onnx\"\n{STREAM}");
        let e = parse(&missing).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("[model] path"), "{e}");
        let e = parse(&format!("{STREAM}[alert.stream.b]\nraise = 3\n")).unwrap().validate().unwrap_err().to_string();
        assert!(e.contains("no stream named `b`"), "{e}");
    }
}
