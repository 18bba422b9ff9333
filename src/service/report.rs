//! The one-screen summary printed to stderr when every stream has ended by itself (replays,
//! directories without `loop`): counts, frame rate, and for each window of the schedule whether
//! and how fast it raised an alert.

use std::fmt::Write as _;
use std::time::Duration;

use crate::metrics::Metrics;
use crate::pipeline::Summary;

/// Formats the summary. `elapsed` is the real run time (for fps), `threshold` the one in force.
pub fn format_summary(summary: &Summary, metrics: &Metrics, streams: &[String], elapsed: Duration) -> String {
    let mut out = String::new();
    let secs = elapsed.as_secs_f64().max(1e-9);
    let _ = writeln!(out, "gradwatch summary ({:.1} s)", elapsed.as_secs_f64());
    for name in streams {
        let m = metrics.stream(name);
        let st = summary.streams.get(name).cloned().unwrap_or_default();
        // Frame rate over the stream's own span (first capture to last verdict), so start-up
        // (model compile, session creation) does not dilute it; the whole run as a fallback.
        let scored = m.frames_scored.get();
        let fps = st.fps().unwrap_or(scored as f64 / secs);
        let _ = writeln!(
            out,
            "stream {name}: {} captured, {scored} scored, {} dropped, {} bad, {fps:.1} fps; {} alert(s), {} false alarm(s) in clean windows",
            m.frames_captured.get(),
            m.frames_dropped.get(),
            m.frames_bad.get(),
            st.alerts,
            st.false_alarms(),
        );
        let ms = |q: f64| m.latency.quantile(q).map_or(f64::NAN, |d| d.as_secs_f64() * 1e3);
        if m.latency.count() > 0 {
            let _ = writeln!(
                out,
                "  latency capture -> verdict: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                ms(0.5),
                ms(0.99),
                m.latency.max().as_secs_f64() * 1e3
            );
        }
        // Windows per tag kind would hide the schedule; list them in order, compressing
        // directory streams (one window per file name) to a count.
        if st.windows.len() > 24 {
            let over: u64 = st.windows.iter().map(|w| w.over).sum();
            let frames: u64 = st.windows.iter().map(|w| w.frames).sum();
            let _ = writeln!(out, "  {} tags, {over} of {frames} frames over threshold", st.windows.len());
            continue;
        }
        for w in &st.windows {
            let span = w.last_time.duration_since(w.first_time).unwrap_or_default().as_secs_f64();
            let pct = if w.frames > 0 { 100.0 * w.over as f64 / w.frames as f64 } else { 0.0 };
            let verdict = match (w.is_clean(), w.detection_delay()) {
                _ if !w.is_scheduled() => format!("{} alert(s) (no schedule to judge them by)", w.alerts.len()),
                (true, None) => "no alert".to_string(),
                (true, Some(_)) => format!("{} FALSE ALARM(S)", w.alerts.len()),
                (false, Some((frames, d))) => {
                    format!("alert after {frames} frames ({:.2} s)", d.as_secs_f64())
                }
                (false, None) => "MISSED (no alert)".to_string(),
            };
            let _ = writeln!(
                out,
                "  {:<12} frames {:>5}-{:<5} ({:>5.1} s)  {:>5.1}% over  -> {verdict}",
                w.tag, w.first_seq, w.last_seq, span, pct
            );
        }
    }
    out
}
