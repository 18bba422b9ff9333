//! Prometheus metrics: a registry of cheap atomic counters, gauges and histograms that the
//! pipeline updates, rendered in the text exposition format 0.0.4, and a small HTTP server
//! ([`MetricsServer`]) serving `/metrics`, `/healthz` and a status page at `/`
//! ([`status_page`]), which shows each stream's [`StreamStatus`].
//!
//! Hand-rolled rather than built on a metrics crate: the set of metrics is fixed and small,
//! and the format is simple enough that the test parses it back.

mod server;
mod sketch;
pub mod status;
pub mod status_page;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

pub use server::{Health, HealthFn, MetricsServer, ServerLimits, ServerStats};
pub use sketch::Quantiles;
pub use status::{AlertInfo, StatusView, StreamState, StreamStatus};

use crate::base::stats::{FramesStats, SinkStats, StatsHandle};

/// Errors of the metrics module.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The HTTP listener could not be bound.
    #[error("cannot listen on {addr}: {reason} (is the port in use? change [metrics] bind)")]
    Bind {
        /// Requested address.
        addr: String,
        /// Cause.
        reason: String,
    },
    /// Could not start the server thread.
    #[error("cannot start the metrics thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// `[metrics]` config section.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` and `/healthz`. Default true.
    pub enabled: bool,
    /// Listen address. Default "127.0.0.1:9464".
    pub bind: String,
    /// The status page's trust rate is the share of frames whose `risk` (the trust head's
    /// probability that the classification is wrong) is over this level. Default 0.5.
    pub risk_level: f64,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true, bind: "127.0.0.1:9464".into(), risk_level: 0.5 }
    }
}

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds 1.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge holding an integer value.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed upper bounds (`le`), lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds: Vec<f64>,
    /// Per-bucket (non-cumulative) counts; the last one is +Inf.
    counts: Vec<AtomicU64>,
    /// Sum of observations, as f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    /// A histogram with the given finite, increasing upper bounds (+Inf is implicit).
    /// Non-finite or out-of-order bounds are dropped.
    pub fn new(bounds: &[f64]) -> Self {
        let mut b: Vec<f64> = Vec::with_capacity(bounds.len());
        for &x in bounds {
            if x.is_finite() && b.last().is_none_or(|&l| x > l) {
                b.push(x);
            }
        }
        let counts = (0..=b.len()).map(|_| AtomicU64::new(0)).collect();
        Histogram { bounds: b, counts, sum: AtomicU64::new(0f64.to_bits()) }
    }

    /// Records one value. NaN is ignored (it would poison the sum).
    pub fn observe(&self, v: f64) {
        if v.is_nan() {
            return;
        }
        let i = self.bounds.iter().position(|&b| v <= b).unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let mut cur = self.sum.load(Ordering::Relaxed);
        loop {
            let new = (f64::from_bits(cur) + v).to_bits();
            match self.sum.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(x) => cur = x,
            }
        }
    }

    /// Total observations.
    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Sum of observations.
    pub fn sum(&self) -> f64 {
        f64::from_bits(self.sum.load(Ordering::Relaxed))
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cum = 0u64;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, c) in self.counts.iter().enumerate() {
            cum += c.load(Ordering::Relaxed);
            let le = match self.bounds.get(i) {
                Some(b) => fmt_f64(*b),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cum}");
        }
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", fmt_f64(self.sum()));
        let _ = writeln!(out, "{name}_count{braces} {cum}");
    }
}

/// Buckets for latencies in seconds (1 ms .. 10 s).
pub const LATENCY_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Buckets for batch sizes.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// Buckets for scores (the detector's score is roughly a standardized distance; alerts
/// fire around the threshold, so resolution is concentrated near 0..5).
pub const SCORE_BUCKETS: &[f64] = &[-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5, 10.0, 20.0];
/// Buckets for `risk` (a probability; most frames of a healthy camera sit near 0).
pub const RISK_BUCKETS: &[f64] = &[0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0];

/// Per-stream metrics. Get one with [`Metrics::stream`] and keep the `Arc`.
#[derive(Debug)]
pub struct StreamMetrics {
    /// Frames read from the source.
    pub frames_captured: Counter,
    /// Frames that went through the model.
    pub frames_scored: Counter,
    /// Frames dropped (queue full, too late).
    pub frames_dropped: Counter,
    /// Frames captured and released unscored by the stream's `score_fps` (not an overload).
    pub frames_skipped: Counter,
    /// Frames rejected as bad (decode error, wrong size, NaN score).
    pub frames_bad: Counter,
    /// Alerts raised.
    pub alerts_raised: Counter,
    /// Distribution of scores.
    pub score: Histogram,
    /// Distribution of the trust head's `risk` (frames without one are not counted).
    pub risk: Histogram,
    /// 1 when the stream delivers frames, 0 when down.
    pub up: Gauge,
    /// Capture-to-verdict latency quantiles (for the summary; Prometheus gets the histogram).
    pub latency: Quantiles,
    /// State, score history, rates and alerts for the status page and dashboard topics.
    pub status: StreamStatus,
    /// cusum: 1 when the stream's own learned baseline is in force, 0 for the calibration's.
    pub baseline_learned: Gauge,
    /// cusum: clean blocks learned so far (while learning) or in the learned baseline.
    pub baseline_blocks: Gauge,
    /// cusum: the baseline's median block score, in thousandths.
    pub baseline_median_milli: Gauge,
    /// cusum: the CUSUM statistic S, in thousandths.
    pub cusum_statistic_milli: Gauge,
    /// cusum with image evidence: 1 once the stream's picture is learned.
    pub image_learned: Gauge,
    /// cusum with image evidence: the image CUSUM's S, in thousandths.
    pub image_statistic_milli: Gauge,
    /// The image-quality measures ([`crate::quality::Measure::ALL`] order) of the whole
    /// captured frame, before the ROI crop, sampled every
    /// [`FRAME_QUALITY_EVERY`](crate::pipeline::FRAME_QUALITY_EVERY): evidence about the camera
    /// that does not depend on the sign in the ROI. `None` before the first frame.
    pub frame_quality: RwLock<Option<[f32; crate::quality::Measure::ALL.len()]>>,
}

impl StreamMetrics {
    /// Records the whole captured frame's latest image-quality measures.
    pub fn set_frame_quality(&self, q: [f32; crate::quality::Measure::ALL.len()]) {
        *write(&self.frame_quality) = Some(q);
    }

    fn new() -> Self {
        StreamMetrics {
            frames_captured: Counter::default(),
            frames_scored: Counter::default(),
            frames_dropped: Counter::default(),
            frames_skipped: Counter::default(),
            frames_bad: Counter::default(),
            alerts_raised: Counter::default(),
            score: Histogram::new(SCORE_BUCKETS),
            risk: Histogram::new(RISK_BUCKETS),
            up: Gauge::default(),
            latency: Quantiles::default(),
            status: StreamStatus::default(),
            baseline_learned: Gauge::default(),
            baseline_blocks: Gauge::default(),
            baseline_median_milli: Gauge::default(),
            cusum_statistic_milli: Gauge::default(),
            image_learned: Gauge::default(),
            image_statistic_milli: Gauge::default(),
            frame_quality: RwLock::new(None),
        }
    }
}

#[derive(Debug)]
struct Inner {
    streams: RwLock<BTreeMap<String, Arc<StreamMetrics>>>,
    batch_size: Histogram,
    inference_latency: Histogram,
    capture_to_verdict: Histogram,
    provider: RwLock<String>,
    build_labels: RwLock<Vec<(String, String)>>,
    sinks: RwLock<Option<StatsHandle>>,
    /// Labels on every series (the fleet identity), rendered `k="v",`.
    const_labels: RwLock<String>,
    /// When this registry (the daemon) started, for `process_start_time_seconds`.
    started: std::time::SystemTime,
    /// When [`Metrics::tick`] last sampled the frame counters.
    last_tick: std::sync::Mutex<Option<std::time::Instant>>,
    /// The trust rate's level, as f64 bits.
    risk_level: AtomicU64,
    /// The `frames` sinks' counters.
    frames_sinks: RwLock<Vec<Arc<FramesStats>>>,
}

/// The metrics registry. Cloning is cheap (shared).
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry; `build_info` carries the crate version, the execution provider is
    /// "cpu" until [`set_execution_provider`](Self::set_execution_provider).
    pub fn new() -> Self {
        Metrics {
            inner: Arc::new(Inner {
                streams: RwLock::new(BTreeMap::new()),
                batch_size: Histogram::new(BATCH_BUCKETS),
                inference_latency: Histogram::new(LATENCY_BUCKETS),
                capture_to_verdict: Histogram::new(LATENCY_BUCKETS),
                provider: RwLock::new("cpu".into()),
                build_labels: RwLock::new(vec![("version".into(), env!("CARGO_PKG_VERSION").into())]),
                sinks: RwLock::new(None),
                const_labels: RwLock::new(String::new()),
                started: std::time::SystemTime::now(),
                last_tick: std::sync::Mutex::new(None),
                risk_level: AtomicU64::new(0.5f64.to_bits()),
                frames_sinks: RwLock::new(Vec::new()),
            }),
        }
    }

    /// The metrics of `stream`, created on first use.
    pub fn stream(&self, stream: &str) -> Arc<StreamMetrics> {
        if let Some(m) = read(&self.inner.streams).get(stream) {
            return m.clone();
        }
        write(&self.inner.streams).entry(stream.to_string()).or_insert_with(|| Arc::new(StreamMetrics::new())).clone()
    }

    /// Every stream's metrics, by name.
    pub fn streams(&self) -> Vec<(String, Arc<StreamMetrics>)> {
        read(&self.inner.streams).iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// Samples the frame counters for the status page's rates, at most once a second (call
    /// it often; the alert stage calls it on every turn of its loop).
    pub fn tick(&self) {
        let now = std::time::Instant::now();
        {
            let mut last = match self.inner.last_tick.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            if last.is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1)) {
                return;
            }
            *last = Some(now);
        }
        for (_, m) in self.streams() {
            m.status.sample(now, m.frames_scored.get(), m.frames_dropped.get());
        }
    }

    /// The value of the `build_info` label `key` (e.g. `model`), if set.
    pub fn build_label(&self, key: &str) -> Option<String> {
        read(&self.inner.build_labels).iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
    }

    /// Histogram of inference batch sizes.
    pub fn batch_size(&self) -> &Histogram {
        &self.inner.batch_size
    }

    /// Histogram of inference latency per batch, seconds.
    pub fn inference_latency(&self) -> &Histogram {
        &self.inner.inference_latency
    }

    /// Histogram of capture-to-verdict latency per frame, seconds.
    pub fn capture_to_verdict(&self) -> &Histogram {
        &self.inner.capture_to_verdict
    }

    /// Sets the ONNX Runtime execution provider reported by `gradwatch_execution_provider`.
    pub fn set_execution_provider(&self, provider: &str) {
        *write(&self.inner.provider) = provider.to_string();
    }

    /// Adds a label to `gradwatch_build_info` (e.g. `model`, `model_sha256`); replaces an
    /// existing one with the same key.
    pub fn set_build_label(&self, key: &str, value: &str) {
        let mut labels = write(&self.inner.build_labels);
        match labels.iter_mut().find(|(k, _)| k == key) {
            Some(kv) => kv.1 = value.to_string(),
            None => labels.push((key.to_string(), value.to_string())),
        }
    }

    /// Labels every series carries (the fleet identity: `unit_id` and `[service] labels`).
    pub fn set_const_labels(&self, labels: Vec<(String, String)>) {
        *write(&self.inner.const_labels) = labels.iter().map(|(k, v)| format!("{k}=\"{}\",", esc(v))).collect();
    }

    /// Sets the level of the status page's trust rate (`[metrics] risk_level`).
    pub fn set_risk_level(&self, level: f64) {
        self.inner.risk_level.store(level.to_bits(), Ordering::Relaxed);
    }

    /// The level of the trust rate.
    pub fn risk_level(&self) -> f64 {
        f64::from_bits(self.inner.risk_level.load(Ordering::Relaxed))
    }

    /// One frame's `risk` on stream `m`: the histogram and the trust rate.
    pub fn observe_risk(&self, m: &StreamMetrics, time: std::time::SystemTime, risk: f32) {
        m.risk.observe(f64::from(risk));
        m.status.risk(time, f64::from(risk) > self.risk_level());
    }

    /// The `frames` sinks' counters, for `/metrics`.
    pub fn set_frames_stats(&self, stats: Vec<Arc<FramesStats>>) {
        *write(&self.inner.frames_sinks) = stats;
    }

    /// Where the per-sink metrics come from.
    pub fn set_sink_stats(&self, stats: StatsHandle) {
        *write(&self.inner.sinks) = Some(stats);
    }

    /// Renders everything in the Prometheus text format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8192);
        let streams: Vec<(String, Arc<StreamMetrics>)> =
            read(&self.inner.streams).iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let per_stream =
            |out: &mut String, name: &str, kind: &str, help: &str, get: &dyn Fn(&StreamMetrics) -> String| {
                header(out, name, kind, help);
                for (s, m) in &streams {
                    let _ = writeln!(out, "gradwatch_{name}{{stream=\"{}\"}} {}", esc(s), get(m));
                }
            };
        per_stream(&mut out, "frames_captured_total", "counter", "Frames read from the source.", &|m| {
            m.frames_captured.get().to_string()
        });
        per_stream(&mut out, "frames_scored_total", "counter", "Frames scored by the model.", &|m| {
            m.frames_scored.get().to_string()
        });
        per_stream(
            &mut out,
            "frames_dropped_total",
            "counter",
            "Frames dropped before scoring (queue full or stale).",
            &|m| m.frames_dropped.get().to_string(),
        );
        per_stream(
            &mut out,
            "frames_skipped_total",
            "counter",
            "Frames captured and not scored because of the stream's score_fps.",
            &|m| m.frames_skipped.get().to_string(),
        );
        per_stream(&mut out, "frames_bad_total", "counter", "Frames rejected as unusable.", &|m| {
            m.frames_bad.get().to_string()
        });
        per_stream(&mut out, "alerts_raised_total", "counter", "Alerts raised.", &|m| {
            m.alerts_raised.get().to_string()
        });
        per_stream(&mut out, "stream_up", "gauge", "1 when the stream delivers frames.", &|m| m.up.get().to_string());
        per_stream(
            &mut out,
            "frames_over_threshold_total",
            "counter",
            "Scored frames whose score was over the threshold (not trusted).",
            &|m| m.status.over_threshold().to_string(),
        );
        per_stream(&mut out, "alert_open", "gauge", "1 while the stream has an open alert.", &|m| {
            u8::from(m.status.view(false).alert.is_some_and(|a| a.is_open())).to_string()
        });
        per_stream(
            &mut out,
            "score_threshold",
            "gauge",
            "The calibration's score threshold (NaN before the first frame).",
            &|m| fmt_f64(m.status.view(false).threshold.unwrap_or(f64::NAN)),
        );
        render_cusum(&mut out, &per_stream);
        render_frame_quality(&mut out, &streams);
        header(&mut out, "score", "histogram", "Uncertainty score per frame.");
        for (s, m) in &streams {
            m.score.render(&mut out, "gradwatch_score", &format!("stream=\"{}\"", esc(s)));
        }
        header(&mut out, "risk", "histogram", "Trust head's probability that the frame's classification is wrong.");
        for (s, m) in &streams {
            m.risk.render(&mut out, "gradwatch_risk", &format!("stream=\"{}\"", esc(s)));
        }
        render_frames_sinks(&mut out, &read(&self.inner.frames_sinks));
        for (name, help, h) in [
            ("batch_size", "Frames per inference batch.", &self.inner.batch_size),
            ("inference_latency_seconds", "Model run time per batch.", &self.inner.inference_latency),
            ("capture_to_verdict_seconds", "Time from frame capture to its score.", &self.inner.capture_to_verdict),
        ] {
            header(&mut out, name, "histogram", help);
            h.render(&mut out, &format!("gradwatch_{name}"), "");
        }

        let sinks = read(&self.inner.sinks).as_ref().map(|h| h.snapshot()).unwrap_or_default();
        for (name, kind, help, get) in [
            (
                "sink_queue_depth",
                "gauge",
                "Events waiting in the sink's queue.",
                (|s| s.queue_depth as u64) as fn(&SinkStats) -> u64,
            ),
            (
                "sink_backlog",
                "gauge",
                "Events accepted by the sink but not yet confirmed (MQTT: awaiting PUBACK).",
                |s| s.backlog as u64,
            ),
            ("sink_sent_total", "counter", "Events accepted by the sink.", |s| s.sent),
            ("sink_failed_total", "counter", "Events the sink failed to write.", |s| s.failed),
        ] {
            header(&mut out, name, kind, help);
            for s in &sinks {
                let _ = writeln!(out, "gradwatch_{name}{{sink=\"{}\"}} {}", esc(&s.name), get(s));
            }
        }
        header(
            &mut out,
            "sink_dropped_total",
            "counter",
            "Events lost by the sink, by reason (docs/guide/reliability.md lists them); sum over reason for the total.",
        );
        for s in &sinks {
            for (reason, n) in &s.dropped_by {
                let _ =
                    writeln!(out, "gradwatch_sink_dropped_total{{sink=\"{}\",reason=\"{reason}\"}} {n}", esc(&s.name));
            }
        }

        header(&mut out, "execution_provider", "gauge", "ONNX Runtime execution provider in use (value 1).");
        let _ = writeln!(out, "gradwatch_execution_provider{{provider=\"{}\"}} 1", esc(&read(&self.inner.provider)));
        header(&mut out, "build_info", "gauge", "Build information (value 1).");
        let labels: Vec<String> =
            read(&self.inner.build_labels).iter().map(|(k, v)| format!("{k}=\"{}\"", esc(v))).collect();
        let _ = writeln!(out, "gradwatch_build_info{{{}}} 1", labels.join(","));
        header(
            &mut out,
            "process_start_time_seconds",
            "gauge",
            "When the daemon started, seconds since the Unix epoch.",
        );
        let start = self.inner.started.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let _ = writeln!(out, "gradwatch_process_start_time_seconds {}", start.as_secs());
        with_const_labels(out, &read(&self.inner.const_labels))
    }
}

/// Puts `labels` (`k="v",` ...) first in every sample line's label set.
fn with_const_labels(text: String, labels: &str) -> String {
    if labels.is_empty() {
        return text;
    }
    let bare = labels.trim_end_matches(',');
    let mut out = String::with_capacity(text.len() + text.lines().count() * labels.len());
    for line in text.lines() {
        match line.find(['{', ' ']) {
            _ if line.starts_with('#') => out.push_str(line),
            // The metric name ends at the first `{` or space (names hold neither).
            Some(i) if line[i..].starts_with("{}") => {
                let _ = write!(out, "{}{{{bare}}}{}", &line[..i], &line[i + 2..]);
            }
            Some(i) if line[i..].starts_with('{') => {
                let _ = write!(out, "{}{{{labels}{}", &line[..i], &line[i + 1..]);
            }
            Some(i) => {
                let _ = write!(out, "{}{{{bare}}}{}", &line[..i], &line[i..]);
            }
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP gradwatch_{name} {help}");
    let _ = writeln!(out, "# TYPE gradwatch_{name} {kind}");
}

/// Escapes a label value (backslash, double quote, newline), per the exposition format.
fn esc(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Formats a sample value: integers without a fraction, others with Rust's shortest
/// round-trip form, infinities as `+Inf`/`-Inf`.
fn fmt_f64(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{v}")
    }
}

/// [`Metrics::render`]'s writer of one per-stream series: name, type, help, value.
type PerStream<'a> = dyn Fn(&mut String, &str, &str, &str, &dyn Fn(&StreamMetrics) -> String) + 'a;

/// The `cusum` policy's per-stream gauges: baseline, statistic, image evidence.
fn render_cusum(out: &mut String, per_stream: &PerStream) {
    let milli = |v: i64| format!("{:.3}", v as f64 / 1000.0);
    per_stream(
        out,
        "baseline_learned",
        "gauge",
        "cusum: 1 when the stream's own learned baseline is in force, 0 for the calibration's.",
        &|m| m.baseline_learned.get().to_string(),
    );
    per_stream(
        out,
        "baseline_blocks",
        "gauge",
        "cusum: clean blocks learned (while learning) or in the baseline.",
        &|m| m.baseline_blocks.get().to_string(),
    );
    per_stream(out, "baseline_median_score", "gauge", "cusum: median block score of the baseline.", &|m| {
        milli(m.baseline_median_milli.get())
    });
    per_stream(out, "cusum_statistic", "gauge", "cusum: the CUSUM statistic S.", &|m| {
        milli(m.cusum_statistic_milli.get())
    });
    per_stream(
        out,
        "image_learned",
        "gauge",
        "cusum with image evidence: 1 once the stream's whole-frame picture is learned.",
        &|m| m.image_learned.get().to_string(),
    );
    per_stream(out, "image_statistic", "gauge", "cusum with image evidence: the image CUSUM's S.", &|m| {
        milli(m.image_statistic_milli.get())
    });
}

/// `gradwatch_frame_quality{stream, measure}`: each stream's latest whole-frame measures.
fn render_frame_quality(out: &mut String, streams: &[(String, Arc<StreamMetrics>)]) {
    header(
        out,
        "frame_quality",
        "gauge",
        "Image-quality measures of the whole captured frame, before the ROI crop, sampled once a second.",
    );
    for (s, m) in streams {
        let Some(q) = *read(&m.frame_quality) else { continue };
        for (measure, v) in crate::quality::Measure::ALL.iter().zip(q) {
            // `quality:sharpness` -> `sharpness`: the metric's name already says quality.
            let (s, name) = (esc(s), measure.name().trim_start_matches("quality:"));
            let _ = writeln!(out, "gradwatch_frame_quality{{stream=\"{s}\",measure=\"{name}\"}} {}", fmt_f64(v.into()));
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    match l.read() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    match l.write() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

#[cfg(test)]
mod tests;

/// The `frames` sinks' counters.
fn render_frames_sinks(out: &mut String, sinks: &[Arc<FramesStats>]) {
    if sinks.is_empty() {
        return;
    }
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    header(out, "frames_sink_sent_total", "counter", "Per-frame lines the frames sink delivered.");
    for f in sinks {
        let _ = writeln!(out, "gradwatch_frames_sink_sent_total{{sink=\"{}\"}} {}", esc(&f.name), get(&f.sent));
    }
    header(out, "frames_sink_rate_limited_total", "counter", "Per-frame lines not sent because of max_rate.");
    for f in sinks {
        let _ = writeln!(
            out,
            "gradwatch_frames_sink_rate_limited_total{{sink=\"{}\"}} {}",
            esc(&f.name),
            get(&f.rate_limited)
        );
    }
    header(
        out,
        "frames_sink_dropped_total",
        "counter",
        "Per-frame lines dropped: queue full, consumer not reading (slow), or no consumer (unavailable).",
    );
    for f in sinks {
        for (reason, v) in
            [("queue", &f.dropped_queue), ("slow", &f.dropped_slow), ("unavailable", &f.dropped_unavailable)]
        {
            let _ = writeln!(
                out,
                "gradwatch_frames_sink_dropped_total{{sink=\"{}\",reason=\"{reason}\"}} {}",
                esc(&f.name),
                get(v)
            );
        }
    }
}
