//! Minimal hand-written SVG line plots (no plotting dependency): ROC curves and the paper's
//! Fig. 3 gradient profile. Below the product and the lab alike: `gradwatch init`'s report
//! draws its held-out ROC with it, the lab its figures.

use std::fmt::Write as _;

/// Colours of successive series (Okabe-Ito, readable for colour-blind readers).
pub const COLORS: [&str; 8] = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"];

/// One line.
#[derive(Clone, Debug)]
pub struct Series {
    /// Legend label.
    pub label: String,
    /// Points `(x, y)`.
    pub points: Vec<(f64, f64)>,
}

/// Axes and labels of a plot.
#[derive(Clone, Debug)]
pub struct PlotSpec {
    /// Title above the plot.
    pub title: String,
    /// x-axis label.
    pub x_label: String,
    /// y-axis label.
    pub y_label: String,
    /// x range.
    pub x_range: (f64, f64),
    /// y range (of log10 y when `log_y`).
    pub y_range: Option<(f64, f64)>,
    /// Logarithmic y axis (non-positive values are dropped).
    pub log_y: bool,
    /// Draw the diagonal `y = x` (ROC chance line).
    pub diagonal: bool,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// "Nice" tick positions covering `[lo, hi]`.
pub fn ticks(lo: f64, hi: f64, target: usize) -> Vec<f64> {
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) || !lo.is_finite() || !hi.is_finite() {
        return vec![lo];
    }
    let raw = (hi - lo) / target.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let mut v = Vec::new();
    let mut t = (lo / step).ceil() * step;
    while t <= hi + step * 1e-9 {
        v.push(if t.abs() < step * 1e-9 { 0.0 } else { t });
        t += step;
    }
    v
}

/// Renders `series` as an SVG document.
pub fn line_plot(spec: &PlotSpec, series: &[Series]) -> String {
    let (w, h) = (720.0, 460.0);
    let (ml, mr, mt, mb) = (72.0, 190.0, 40.0, 56.0);
    let (pw, ph) = (w - ml - mr, h - mt - mb);
    let ty = |y: f64| {
        if spec.log_y {
            if y > 0.0 {
                y.log10()
            } else {
                f64::NAN
            }
        } else {
            y
        }
    };
    let (y0, y1) = spec.y_range.unwrap_or_else(|| {
        let ys: Vec<f64> =
            series.iter().flat_map(|s| s.points.iter().map(|p| ty(p.1))).filter(|v| v.is_finite()).collect();
        let lo = ys.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = ys.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if !lo.is_finite() {
            (0.0, 1.0)
        } else if spec.log_y {
            (lo.floor(), hi.ceil().max(lo.floor() + 1.0))
        } else if hi > lo {
            (lo, hi)
        } else {
            (lo - 1.0, hi + 1.0)
        }
    });
    let (x0, x1) = spec.x_range;
    let sx = |x: f64| ml + (x - x0) / (x1 - x0).max(f64::MIN_POSITIVE) * pw;
    let sy = |y: f64| mt + ph - (y - y0) / (y1 - y0).max(f64::MIN_POSITIVE) * ph;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="14">{}</text>"#,
        ml + pw / 2.0,
        esc(&spec.title)
    );
    // Grid and ticks.
    for t in ticks(x0, x1, 8) {
        let x = sx(t);
        let _ = writeln!(o, r##"<line x1="{x:.1}" y1="{mt}" x2="{x:.1}" y2="{:.1}" stroke="#e5e5e5"/>"##, mt + ph);
        let _ =
            writeln!(o, r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"#, mt + ph + 16.0, fmt_tick(t));
    }
    let yt =
        if spec.log_y { (y0.ceil() as i64..=y1.floor() as i64).map(|v| v as f64).collect() } else { ticks(y0, y1, 6) };
    for t in yt {
        let y = sy(t);
        let _ = writeln!(o, r##"<line x1="{ml}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#e5e5e5"/>"##, ml + pw);
        let label = if spec.log_y { format!("1e{}", t as i64) } else { fmt_tick(t) };
        let _ = writeln!(o, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#, ml - 6.0, y + 4.0);
    }
    let _ = writeln!(o, r##"<rect x="{ml}" y="{mt}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##);
    let _ = writeln!(
        o,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        ml + pw / 2.0,
        h - 14.0,
        esc(&spec.x_label)
    );
    let _ = writeln!(
        o,
        r#"<text x="18" y="{:.1}" text-anchor="middle" transform="rotate(-90 18 {:.1})">{}</text>"#,
        mt + ph / 2.0,
        mt + ph / 2.0,
        esc(&spec.y_label)
    );
    if spec.diagonal {
        let _ = writeln!(
            o,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#999" stroke-dasharray="4 4"/>"##,
            sx(x0.max(y0)),
            sy(x0.max(y0)),
            sx(x1.min(y1)),
            sy(x1.min(y1))
        );
    }
    for (i, s) in series.iter().enumerate() {
        let c = COLORS[i % COLORS.len()];
        let pts: Vec<String> = s
            .points
            .iter()
            .map(|&(x, y)| (x, ty(y)))
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|(x, y)| format!("{:.2},{:.2}", sx(x), sy(y.clamp(y0, y1))))
            .collect();
        if !pts.is_empty() {
            let _ =
                writeln!(o, r#"<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{}"/>"#, pts.join(" "));
        }
        let ly = mt + 10.0 + 20.0 * i as f64;
        let lx = ml + pw + 14.0;
        let _ =
            writeln!(o, r#"<line x1="{lx}" y1="{ly}" x2="{}" y2="{ly}" stroke="{c}" stroke-width="3"/>"#, lx + 22.0);
        let _ = writeln!(o, r#"<text x="{}" y="{}">{}</text>"#, lx + 28.0, ly + 4.0, esc(&s.label));
    }
    o.push_str("</svg>\n");
    o
}

fn fmt_tick(t: f64) -> String {
    let s = format!("{t:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}
