//! The report's trust section (issue #24): the trust head against the failure-detection
//! baselines, its reliability diagram and ECE, per-level and leave-one-family-out numbers, the
//! cost of the head, the targets, and two figures.

use std::fmt::Write as _;

use super::trust::TrustResults;
use crate::plot::{self, PlotSpec, Series};

fn pct(v: f64) -> String {
    if v.is_finite() {
        format!("{:.2}", 100.0 * v)
    } else {
        "n/a".into()
    }
}

/// The display name of a trust-analysis method key.
pub fn name(key: &str) -> &str {
    match key {
        "trust" => "**trust head (risk)**",
        "trust_ensemble" => "trust head's ensemble alone (no softmax anchor)",
        "msp_t" => "MSP, fitted temperature",
        "msp" => "MSP (T = 1)",
        "max_logit" => "MaxLogit",
        "max_logit_pnorm" => "MaxLogit-pNorm",
        "doctor" => "DOCTOR (alpha, no perturbation)",
        "rel_u" => "Rel-U",
        "energy" => "Energy",
        "gradients_pooled" => "gradients (paper's detector, pooled)",
        "risk_pooled" => "camera-health score (risk detector, union target)",
        k => k,
    }
}

/// The baseline rows: every row but the trust head and its ablation.
fn baselines(t: &TrustResults) -> impl Iterator<Item = &super::trust::TrustRow> {
    t.rows.iter().filter(|r| !r.method.starts_with("trust"))
}

/// The best baseline row by AUROC.
fn best_baseline(t: &TrustResults) -> Option<&super::trust::TrustRow> {
    baselines(t).max_by(|a, b| a.auroc.total_cmp(&b.auroc))
}

/// Appends the trust section to `o`.
pub fn section(o: &mut String, t: &TrustResults) {
    let _ = writeln!(o, "\n## Table 8: per-frame trust: is this classification wrong? (issue #24)\n");
    let _ = writeln!(
        o,
        "Test split of the familiar images and of every corrupted set, pooled ({} frames, {} misclassified). \
         Wrong = positive; every score oriented \"higher = more likely wrong\". The trust head is trained on the \
         training split (familiar, corrupted and CIFAR-10 frames; label 1 = misclassified or OOD), early-stopped \
         and Platt-scaled on the validation split; the baselines' parameters are fitted on the validation split of \
         the familiar and corrupted sets. AUROC ± Hanley-McNeil standard error; AURC ± bootstrap standard error \
         (200 resamples); AUGRC (Traub et al. 2024); FPR at 95 % TPR (share of misclassified frames still accepted \
         when 95 % of the correct ones are, the Hendrycks and Gimpel convention). All in %; AURC, AUGRC and FPR: lower is better.\n",
        t.n, t.n_wrong
    );
    let _ = writeln!(o, "| score | AUROC | AURC | AUGRC | FPR at 95% TPR |");
    let _ = writeln!(o, "|---|---|---|---|---|");
    for r in &t.rows {
        let _ = writeln!(
            o,
            "| {} | {} ± {} | {} ± {} | {} | {} |",
            name(&r.method),
            pct(r.auroc),
            pct(r.auroc_se),
            pct(r.aurc),
            pct(r.aurc_se),
            pct(r.augrc),
            pct(r.fpr95)
        );
    }
    if let Some((m, sd, k)) = t.seeds {
        let _ = writeln!(
            o,
            "\nTrust head over {k} training seeds: misclassification AUROC {} (standard deviation {}).",
            pct(m),
            pct(sd)
        );
    }
    let _ = writeln!(o, "\nFitted on the validation split:\n");
    for (k, v) in &t.fitted {
        let _ = writeln!(o, "- {k}: {v}");
    }

    if let Some(first) = t.rows.first() {
        let _ = writeln!(o, "\n### Per level: misclassification AUROC (%)\n");
        let heads: Vec<String> =
            first.per_level.iter().map(|(n, _, _, f, w)| format!("{n} ({f} frames, {w} wrong)")).collect();
        let _ = writeln!(o, "| score | {} |", heads.join(" | "));
        let _ = writeln!(o, "|---|{}", "---|".repeat(heads.len()));
        for r in &t.rows {
            let cells: Vec<String> =
                r.per_level.iter().map(|(_, a, se, _, _)| format!("{} ± {}", pct(*a), pct(*se))).collect();
            let _ = writeln!(o, "| {} | {} |", name(&r.method), cells.join(" | "));
        }
    }

    let _ = writeln!(o, "\n### Calibration of risk\n");
    let _ = writeln!(
        o,
        "ECE (15 equal-width bins) of `risk` as the probability of a misclassification: **{} ± {}** (bootstrap \
         standard error); `1 - MSP` with the fitted temperature: {}.\n",
        pct(t.ece.0),
        pct(t.ece.1),
        pct(t.msp_ece)
    );
    let _ = writeln!(o, "| risk bin | frames | mean risk | error rate |");
    let _ = writeln!(o, "|---|---|---|---|");
    let w = 1.0 / t.reliability.len().max(1) as f64;
    for b in t.reliability.iter().filter(|b| b.n > 0) {
        let _ = writeln!(o, "| {:.2}-{:.2} | {} | {} | {} |", b.lo, b.lo + w, b.n, pct(b.mean_risk), pct(b.error_rate));
    }

    if !t.lofo.is_empty() {
        let _ = writeln!(o, "\n### Leave one family out\n");
        let _ = writeln!(
            o,
            "The trust head trained without any type of the family (and MSP's temperature fitted without it), \
             tested on the family's corrupted test frames (all its types and levels). *Ensemble alone*: the same \
             head without its softmax anchor (the head before 2026-12-07).\n"
        );
        let _ = writeln!(
            o,
            "| held-out family | frames (wrong) | trust head AUROC | ensemble alone | MSP (fitted T) AUROC | trust - MSP |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|---|");
        for l in &t.lofo {
            let _ = writeln!(
                o,
                "| {} | {} ({}) | {} ± {} | {} | {} ± {} | {:+.2} |",
                l.family,
                l.n,
                l.n_wrong,
                pct(l.trust.0),
                pct(l.trust.1),
                pct(l.ensemble.0),
                pct(l.msp.0),
                pct(l.msp.1),
                100.0 * (l.trust.0 - l.msp.0)
            );
        }
    }

    if let Some(first) = t.lofo.first().filter(|l| !l.val_gain.is_empty()) {
        let _ = writeln!(o, "\n#### Anchor weight, chosen on validation rows\n");
        let _ = writeln!(
            o,
            "The same held-out heads on each family's *validation* rows (never trained on, not the test rows \
             above): AUROC of the ensemble's logit plus the anchor times the weight, minus MSP's (fitted T), in \
             points. Weight 0 is the ensemble alone; the shipped weight is {}.\n",
            crate::detector::trust::ANCHOR_WEIGHT
        );
        let fams: Vec<&str> = t.lofo.iter().map(|l| l.family.as_str()).collect();
        let _ = writeln!(o, "| weight | {} | min | mean |", fams.join(" | "));
        let _ = writeln!(o, "|---|{}---|---|", "---|".repeat(fams.len()));
        for (k, (w, _)) in first.val_gain.iter().enumerate() {
            let g: Vec<f64> = t.lofo.iter().map(|l| 100.0 * l.val_gain.get(k).map_or(f64::NAN, |v| v.1)).collect();
            let min = g.iter().copied().fold(f64::INFINITY, f64::min);
            let mean = g.iter().sum::<f64>() / g.len().max(1) as f64;
            let cells: Vec<String> = g.iter().map(|v| format!("{v:+.2}")).collect();
            let _ = writeln!(o, "| {w} | {} | {min:+.2} | {mean:+.2} |", cells.join(" | "));
        }
    }

    let _ = writeln!(o, "\n### Cost\n");
    let ratio = t.head_secs_per_frame / t.graph_secs_per_frame;
    let _ = writeln!(
        o,
        "The trust head scores a frame in {:.1} µs (the test pool, one thread); the gradient graph took {:.2} ms \
         per frame on 64 familiar images in this run (best of three): the head adds **{:.3} %** to the per-frame \
         time. It reuses the graph's features and logits; nothing else runs.",
        1e6 * t.head_secs_per_frame,
        1e3 * t.graph_secs_per_frame,
        100.0 * ratio
    );
}

/// The trust targets' rows of the Targets table.
pub fn targets(o: &mut String, t: &TrustResults) {
    let yes_no = |ok: bool| if ok { "yes" } else { "**no**" };
    let Some(head) = t.rows.iter().find(|r| r.method == "trust") else { return };
    if let Some(b) = best_baseline(t) {
        let _ = writeln!(
            o,
            "| trust: misclassification AUROC >= 92 % and >= 1.5 above the best baseline | {} ± {}; best baseline \
             {} {} ± {} ({:+.2}) | {} |",
            pct(head.auroc),
            pct(head.auroc_se),
            name(&b.method),
            pct(b.auroc),
            pct(b.auroc_se),
            100.0 * (head.auroc - b.auroc),
            yes_no(head.auroc >= 0.92 && head.auroc - b.auroc >= 0.015)
        );
    }
    let min_aurc = baselines(t).map(|r| r.aurc).fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        o,
        "| trust: AURC below every baseline | {} ± {} (lowest baseline {}) | {} |",
        pct(head.aurc),
        pct(head.aurc_se),
        pct(min_aurc),
        yes_no(head.aurc < min_aurc)
    );
    let _ = writeln!(o, "| trust: ECE <= 2 % | {} ± {} | {} |", pct(t.ece.0), pct(t.ece.1), yes_no(t.ece.0 <= 0.02));
    if !t.lofo.is_empty() {
        let beats = t.lofo.iter().filter(|l| l.trust.0 > l.msp.0).count();
        let _ = writeln!(
            o,
            "| trust, family held out: beats MSP on errors | {} of {} families | {} |",
            beats,
            t.lofo.len(),
            yes_no(beats == t.lofo.len())
        );
    }
    let ratio = t.head_secs_per_frame / t.graph_secs_per_frame;
    let _ = writeln!(
        o,
        "| trust head cost < 2 % of the per-frame time | {:.3} % | {} |",
        100.0 * ratio,
        yes_no(ratio < 0.02)
    );
}

/// Risk-coverage of the trust analysis as the issue asks: accuracy of the kept frames against
/// the share rejected (the riskiest first).
pub fn coverage_svg(t: &TrustResults) -> String {
    let keep = ["trust", "msp_t", "doctor", "max_logit_pnorm", "rel_u", "risk_pooled", "oracle"];
    let series: Vec<Series> = t
        .curves
        .iter()
        .filter(|(k, _)| keep.contains(&k.as_str()))
        .map(|(k, pts)| {
            let step = (pts.len() / 400).max(1);
            let points = pts.iter().step_by(step).map(|&(c, r)| (1.0 - c, 1.0 - r)).collect();
            let label = if k == "oracle" { "oracle".to_string() } else { name(k).replace("**", "") };
            Series { label, points }
        })
        .collect();
    let low = t.curves.iter().flat_map(|(_, p)| p.last().map(|x| 1.0 - x.1)).fold(1.0f64, f64::min);
    plot::line_plot(
        &PlotSpec {
            title: "Selective classification: accuracy of the frames kept".into(),
            x_label: "share of frames rejected (riskiest first)".into(),
            y_label: "accuracy of the kept frames".into(),
            x_range: (0.0, 1.0),
            y_range: Some(((low - 0.02).max(0.0), 1.0)),
            log_y: false,
            diagonal: false,
        },
        &series,
    )
}

/// The reliability diagram of `risk` (the diagonal is perfect calibration).
pub fn reliability_svg(t: &TrustResults) -> String {
    let pts: Vec<(f64, f64)> = t.reliability.iter().filter(|b| b.n > 0).map(|b| (b.mean_risk, b.error_rate)).collect();
    plot::line_plot(
        &PlotSpec {
            title: format!("Reliability of risk (ECE {} %)", pct(t.ece.0)),
            x_label: "mean risk in the bin".into(),
            y_label: "error rate in the bin".into(),
            x_range: (0.0, 1.0),
            y_range: Some((0.0, 1.0)),
            log_y: false,
            diagonal: true,
        },
        &[Series { label: "trust head".into(), points: pts }],
    )
}
