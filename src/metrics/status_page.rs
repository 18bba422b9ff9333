//! The status page at `/` of the metrics server: one card per stream with its state, frame
//! rates, the score over the last 10 minutes (inline SVG, with the threshold line) and the
//! open or last alert with its snapshot and heat map.
//!
//! Plain HTML and CSS, no script and no external resource (fonts, styles and the plot are
//! inline; the pictures come from this server's `/snapshots/` route); `<meta
//! http-equiv="refresh">` reloads it every [`REFRESH_S`] seconds. Every text that comes from
//! configuration or events (stream names, alert ids, tags, reasons, paths) is HTML-escaped,
//! and every one that goes into a URL is percent-encoded.
//!
//! Pictures: `/snapshots/<alert id>/<file name>` serves a file only when it is the snapshot or
//! heat map that an event of a remembered alert named
//! ([`StreamStatus::alert_file`](super::StreamStatus::alert_file)): the request names no path,
//! so nothing outside the files the daemon wrote itself can be reached.

use std::fmt::Write as _;
use std::time::SystemTime;

use super::status::{AlertInfo, StatusView, StreamState, HISTORY_SECONDS};
use super::Metrics;

/// Seconds between the page's reloads.
pub const REFRESH_S: u32 = 5;
/// Largest picture the `/snapshots/` route serves.
pub const MAX_PICTURE_BYTES: u64 = 8 << 20;

/// Escapes `s` for HTML text and attribute values.
pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for one path segment.
pub fn percent_encode(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            o.push(char::from(b));
        } else {
            let _ = write!(o, "%{b:02X}");
        }
    }
    o
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file behind `/snapshots/<alert id>/<file name>` (`rest` is what follows
/// `/snapshots/`, still percent-encoded), or `None` when no remembered alert named it.
pub fn picture_path(metrics: &Metrics, rest: &str) -> Option<String> {
    let (id, name) = rest.split_once('/')?;
    let (id, name) = (percent_decode(id)?, percent_decode(name)?);
    if name.is_empty() || name.contains(['/', '\0']) || name.starts_with('.') {
        return None;
    }
    metrics.streams().iter().find_map(|(_, m)| m.status.alert_file(&id, &name))
}

/// The content type of a picture by its extension; `None` for anything else.
pub fn picture_type(path: &str) -> Option<&'static str> {
    let ext = std::path::Path::new(path).extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "jpg" | "jpeg" => Some("image/jpeg"),
        "png" => Some("image/png"),
        _ => None,
    }
}

const STYLE: &str = r#"
:root{color-scheme:light;--ok:#1a7f37;--deg:#c2410c;--down:#6b7280;--bg:#f3f4f6;--card:#fff;--ink:#111827;--mute:#6b7280}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;background:var(--bg);color:var(--ink)}
header{padding:14px 24px;background:#111827;color:#f9fafb;display:flex;gap:16px;align-items:baseline;flex-wrap:wrap}
header h1{margin:0;font-size:20px}
header p{margin:0;color:#d1d5db}
main{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:16px;padding:16px 24px}
.card{background:var(--card);border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.12);padding:14px 16px;border-top:6px solid var(--down)}
.card.ok{border-top-color:var(--ok)}.card.degraded{border-top-color:var(--deg)}.card.down{border-top-color:var(--down)}
.head{display:flex;justify-content:space-between;align-items:center;gap:8px}
.head h2{margin:0;font-size:18px;overflow-wrap:anywhere}
.badge{padding:3px 10px;border-radius:999px;color:#fff;font-weight:600;font-size:12px;letter-spacing:.04em;text-transform:uppercase;background:var(--down)}
.badge.ok{background:var(--ok)}.badge.degraded{background:var(--deg)}
.why{color:var(--down);margin:4px 0 0}
dl{display:grid;grid-template-columns:repeat(4,1fr);gap:8px;margin:12px 0}
dl div{background:var(--bg);border-radius:6px;padding:6px 8px}
dt{color:var(--mute);font-size:11px;text-transform:uppercase;letter-spacing:.04em}
dd{margin:0;font-size:18px;font-variant-numeric:tabular-nums}
svg{width:100%;height:auto;display:block}
.alert{margin-top:10px;padding:10px;border-radius:6px;background:#fff7ed;border:1px solid #fed7aa}
.alert.ended{background:var(--bg);border-color:#e5e7eb}
.alert h3{margin:0 0 4px;font-size:14px}
.alert p{margin:2px 0;color:#374151;overflow-wrap:anywhere}
.pics{display:flex;gap:8px;margin-top:8px}
.pics figure{margin:0;flex:1}
.pics img{width:100%;image-rendering:pixelated;border-radius:4px;background:#e5e7eb;min-height:60px}
.pics figcaption{color:var(--mute);font-size:11px}
.none{color:var(--mute);margin-top:10px}
footer{padding:0 24px 16px;color:var(--mute)}
footer a{color:inherit}
"#;

/// Renders the page for the streams in `metrics`, at wall-clock time `now`.
pub fn render(metrics: &Metrics, now: SystemTime) -> String {
    let streams = metrics.streams();
    let now_ms = crate::base::time::unix_ms(now);
    let mut o = String::with_capacity(8192 + streams.len() * 8192);
    let _ = write!(
        o,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>gradwatch status</title><style>{STYLE}</style></head><body>\n"
    );
    let model = metrics.build_label("model").map(|m| format!(" · model {}", html_escape(&m))).unwrap_or_default();
    let _ = write!(
        o,
        "<header><h1>gradwatch</h1><p>{} stream{}{model} · gradwatch {} · updated {}</p></header>\n<main>\n",
        streams.len(),
        if streams.len() == 1 { "" } else { "s" },
        env!("CARGO_PKG_VERSION"),
        html_escape(&crate::base::time::rfc3339_ms(now)),
    );
    for (i, (name, m)) in streams.iter().enumerate() {
        card(&mut o, i, name, &m.status.view(true), now_ms, metrics.risk_level());
    }
    if streams.is_empty() {
        o.push_str("<p class=\"none\">No streams yet (the daemon is starting).</p>\n");
    }
    let _ = write!(
        o,
        "</main>\n<footer>Reloads every {REFRESH_S} s · <a href=\"/metrics\">/metrics</a> · \
         <a href=\"/healthz\">/healthz</a></footer>\n</body></html>\n"
    );
    o
}

/// The trust rate under the card's score plot: the share of the last minute's frames whose
/// `risk` (the trust head's probability that the classification is wrong) is over `level`.
/// Nothing when the calibration has no trust head.
fn trust_rate(o: &mut String, v: &StatusView, level: f64) {
    let Some((n, over)) = v.trust else { return };
    let share = if n > 0 { 100.0 * over as f64 / n as f64 } else { 0.0 };
    let _ = writeln!(
        o,
        "<p class=\"trust\">trust: <b>{share:.1} %</b> of the last {} s's {n} frames have risk &gt; {level:.2}          ({over} frames the classification is likely wrong on)</p>",
        super::status::TRUST_WINDOW_S
    );
}

fn num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.digits$}"),
        _ => "–".into(),
    }
}

fn card(o: &mut String, i: usize, name: &str, v: &StatusView, now_ms: u64, risk_level: f64) {
    let (class, label) = match v.state {
        Some(s) => (s.as_str(), s.as_str()),
        None => ("starting", "starting"),
    };
    let _ = write!(
        o,
        "<section class=\"card {class}\" data-stream=\"{n}\">\n<div class=\"head\"><h2>{n}</h2>\
         <span class=\"badge {class}\">{label}</span></div>\n",
        n = html_escape(name),
    );
    if v.state == Some(StreamState::Down) {
        if let Some(r) = &v.down_reason {
            let _ = writeln!(o, "<p class=\"why\">{}</p>", html_escape(r));
        }
    }
    let _ = writeln!(
        o,
        "<dl><div><dt>scored</dt><dd>{} fps</dd></div><div><dt>dropped</dt><dd>{} fps</dd></div>\
         <div><dt>score</dt><dd>{}</dd></div><div><dt>threshold</dt><dd>{}</dd></div></dl>",
        num(v.fps_scored, 1),
        num(v.fps_dropped, 1),
        num(v.score.map(|s| s.0), 2),
        num(v.threshold, 2),
    );
    plot(o, i, v, now_ms);
    trust_rate(o, v, risk_level);
    match &v.alert {
        Some(a) => alert(o, a),
        None => o.push_str("<p class=\"none\">No alert since the daemon started.</p>\n"),
    }
    o.push_str("</section>\n");
}

fn alert(o: &mut String, a: &AlertInfo) {
    let (class, title) = if a.is_open() { ("alert", "Open alert") } else { ("alert ended", "Last alert") };
    let _ = write!(o, "<div class=\"{class}\"><h3>{title}</h3><p><code>{}</code></p>", html_escape(&a.id));
    let _ = write!(
        o,
        "<p>since {} · peak score {} (threshold {})",
        html_escape(&a.first_time),
        num(Some(a.peak_score), 2),
        num(Some(a.threshold), 2),
    );
    if let Some(t) = &a.tag {
        let _ = write!(o, " · tag {}", html_escape(t));
    }
    match a.evidence.as_deref() {
        Some("image") => o.push_str(" · raised by the whole-frame picture"),
        Some("model") => o.push_str(" · raised by the model's scores"),
        _ => {}
    }
    if let Some(r) = &a.end_reason {
        let secs = a.duration_ms as f64 / 1000.0;
        let _ = write!(o, " · ended {} after {secs:.1} s ({})", html_escape(&a.time), html_escape(r));
    }
    o.push_str("</p>");
    let pics: Vec<(&str, &String)> = [("snapshot", a.snapshot.as_ref()), ("heat map", a.heatmap.as_ref())]
        .into_iter()
        .filter_map(|(what, p)| p.map(|p| (what, p)))
        .collect();
    if !pics.is_empty() {
        o.push_str("<div class=\"pics\">");
        for (what, path) in pics {
            let file = std::path::Path::new(path).file_name().and_then(|f| f.to_str()).unwrap_or("");
            let _ = write!(
                o,
                "<figure><img src=\"/snapshots/{}/{}\" alt=\"{what} of {id}\"><figcaption>{what} · {}</figcaption></figure>",
                percent_encode(&a.id),
                percent_encode(file),
                html_escape(file),
                id = html_escape(&a.id),
            );
        }
        o.push_str("</div>");
    }
    o.push_str("</div>\n");
}

/// The score over the last [`HISTORY_SECONDS`] as an SVG line (one point per second, gaps
/// where no frame was scored), red above the threshold, with the threshold as a dashed line.
fn plot(o: &mut String, i: usize, v: &StatusView, now_ms: u64) {
    const W: f64 = 600.0;
    const H: f64 = 160.0;
    const L: f64 = 40.0; // left margin for the y labels
    const B: f64 = 20.0; // bottom margin for the x labels
    const T: f64 = 8.0;
    let span = HISTORY_SECONDS as u64;
    // Frames carry the system time on the real clock; on a replay clock far from it, follow
    // the frames instead.
    let now_s = now_ms / 1000;
    let last = v.history.last().map(|p| p.0);
    let end = match last {
        Some(l) if l > now_s + 60 || l + span < now_s => l,
        _ => now_s,
    };
    let start = end.saturating_sub(span);
    let pts: Vec<(u64, f64)> =
        v.history.iter().filter(|(s, y)| *s >= start && y.is_finite()).map(|&(s, y)| (s, f64::from(y))).collect();
    let thr = v.threshold.filter(|t| t.is_finite());
    let mut lo = pts.iter().map(|p| p.1).fold(0f64, f64::min);
    let mut hi = pts.iter().map(|p| p.1).chain(thr).fold(f64::NEG_INFINITY, f64::max);
    if !hi.is_finite() || hi <= lo {
        hi = lo + 1.0;
    }
    let pad = (hi - lo) * 0.08;
    hi += pad;
    if lo < 0.0 {
        lo -= pad;
    }
    let x = |s: u64| L + (s.saturating_sub(start)) as f64 / span as f64 * (W - L - 4.0);
    let y = |val: f64| T + (hi - val) / (hi - lo) * (H - T - B);
    let _ = write!(
        o,
        "<svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"score over the last 10 minutes\">\
         <rect x=\"{L}\" y=\"{T}\" width=\"{}\" height=\"{}\" fill=\"#f9fafb\" stroke=\"#e5e7eb\"/>",
        W - L - 4.0,
        H - T - B
    );
    // Axes: a few y ticks, and minutes on x.
    for k in [0.0, 1.0] {
        let val = lo + (hi - lo) * k;
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#6b7280\">{:.1}</text>",
            L - 4.0,
            y(val) + 3.0,
            val
        );
    }
    for m in [10u64, 5, 0] {
        let sx = x(end - m * 60);
        let label = if m == 0 { "now".to_string() } else { format!("−{m} min") };
        let anchor = match m {
            10 => "start",
            0 => "end",
            _ => "middle",
        };
        let _ = write!(
            o,
            "<text x=\"{sx:.1}\" y=\"{}\" font-size=\"10\" text-anchor=\"{anchor}\" fill=\"#6b7280\">{label}</text>",
            H - 6.0
        );
    }
    // The line, in runs without gaps longer than 2 s.
    let mut runs: Vec<String> = Vec::new();
    let mut prev: Option<u64> = None;
    for &(s, val) in &pts {
        if prev.is_none_or(|p| s > p + 2) {
            runs.push(String::new());
        }
        if let Some(r) = runs.last_mut() {
            let _ = write!(r, "{:.1},{:.1} ", x(s), y(val));
        }
        prev = Some(s);
    }
    let line = |o: &mut String, color: &str, clip: &str| {
        for r in &runs {
            // A lone point is drawn as a short dash.
            let pts = if r.matches(' ').count() == 1 {
                let (a, b) = r.trim().split_once(',').unwrap_or(("0", "0"));
                let ax: f64 = a.parse().unwrap_or(0.0);
                format!("{:.1},{b} {:.1},{b}", ax - 1.0, ax + 1.0)
            } else {
                r.trim().to_string()
            };
            let _ = write!(
                o,
                "<polyline points=\"{pts}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" \
                 stroke-linejoin=\"round\"{clip}/>"
            );
        }
    };
    line(o, "#2563eb", "");
    if let Some(t) = thr {
        let ty = y(t);
        // Above the threshold the same line again in red, clipped to the area above it.
        let _ =
            write!(o, "<clipPath id=\"over{i}\"><rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{ty:.1}\"/></clipPath>");
        line(o, "#dc2626", &format!(" clip-path=\"url(#over{i})\""));
        // The threshold's value in red on the y axis, where the data never is.
        let _ = write!(
            o,
            "<line class=\"threshold\" x1=\"{L}\" x2=\"{}\" y1=\"{ty:.1}\" y2=\"{ty:.1}\" stroke=\"#dc2626\" \
             stroke-dasharray=\"5 4\" stroke-width=\"1\"/><text x=\"{}\" y=\"{:.1}\" font-size=\"10\" \
             text-anchor=\"end\" fill=\"#dc2626\" font-weight=\"600\">{t:.2}</text>",
            W - 4.0,
            L - 4.0,
            ty + 3.0
        );
    }
    if pts.is_empty() {
        let _ = write!(
            o,
            "<text x=\"{}\" y=\"{}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#6b7280\">no scores yet</text>",
            (W + L) / 2.0,
            H / 2.0
        );
    }
    o.push_str("</svg>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::time::Duration;

    #[test]
    fn escaping_and_encoding() {
        assert_eq!(html_escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(percent_encode("a b/../c%"), "a%20b%2F..%2Fc%25");
        assert_eq!(percent_decode("a%20b%2F..%2Fc%25").as_deref(), Some("a b/../c%"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%4"), None);
    }

    #[test]
    fn one_card_per_stream_with_escaped_names_and_a_plot() {
        let m = Metrics::new();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let evil = m.stream("<script>alert(1)</script>");
        evil.status.event_json(&json!({"event": "stream_up", "stream": "x"}));
        for i in 0..30 {
            evil.status.frame(t0 + Duration::from_millis(i * 500), (i % 7) as f32, 3.0);
        }
        evil.status.event_json(&json!({"event": "alert_start", "id": "<script>-1-2", "stream": "x",
            "first_time": "t", "peak_score": 6.0, "threshold": 3.0, "snapshot": "/s/a b.jpg", "heatmap": "/s/\"h\".png"}));
        let other = m.stream("cam & co");
        other.status.event_json(&json!({"event": "stream_down", "stream": "cam & co", "reason": "<gone>"}));
        let html = render(&m, t0 + Duration::from_secs(15));
        assert_eq!(html.matches("<section class=\"card").count(), 2);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("cam &amp; co") && html.contains("&lt;gone&gt;"));
        assert!(html.contains("<svg") && html.contains("class=\"threshold\"") && html.contains("<polyline"));
        assert!(html.contains("src=\"/snapshots/%3Cscript%3E-1-2/a%20b.jpg\""), "{html}");
        assert!(html.contains("src=\"/snapshots/%3Cscript%3E-1-2/%22h%22.png\""), "{html}");
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(!html.contains("http://") && !html.contains("https://"), "no external resource");
        assert_eq!(picture_path(&m, "%3Cscript%3E-1-2/a%20b.jpg").as_deref(), Some("/s/a b.jpg"));
        assert_eq!(picture_path(&m, "%3Cscript%3E-1-2/..%2Fa%20b.jpg"), None);
        assert_eq!(picture_path(&m, "%3Cscript%3E-1-2/%2Fs%2Fa%20b.jpg"), None);
        assert_eq!(picture_path(&m, "nope/a%20b.jpg"), None);
    }
}
