//! Unit tests of `metrics`.

use super::*;

#[test]
fn histogram_buckets_are_cumulative() {
    let h = Histogram::new(&[1.0, 2.0, 5.0]);
    for v in [0.5, 1.0, 1.5, 3.0, 7.0, f64::NAN] {
        h.observe(v);
    }
    let mut s = String::new();
    h.render(&mut s, "x", "a=\"b\"");
    // le=1: {0.5, 1.0}; le=2: +1.5; le=5: +3.0; +Inf: +7.0. Sum 13, NaN ignored.
    assert_eq!(
        s,
        "x_bucket{a=\"b\",le=\"1\"} 2\nx_bucket{a=\"b\",le=\"2\"} 3\n\
         x_bucket{a=\"b\",le=\"5\"} 4\nx_bucket{a=\"b\",le=\"+Inf\"} 5\n\
         x_sum{a=\"b\"} 13\nx_count{a=\"b\"} 5\n"
    );
}

#[test]
fn label_values_escaped() {
    assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

#[test]
fn render_has_every_family() {
    let m = Metrics::new();
    m.stream("cam0").frames_captured.add(3);
    let text = m.render();
    for fam in [
        "frames_captured_total",
        "frames_scored_total",
        "frames_dropped_total",
        "frames_bad_total",
        "alerts_raised_total",
        "stream_up",
        "score",
        "batch_size",
        "inference_latency_seconds",
        "capture_to_verdict_seconds",
        "sink_queue_depth",
        "sink_sent_total",
        "sink_failed_total",
        "sink_dropped_total",
        "execution_provider",
        "build_info",
    ] {
        assert!(text.contains(&format!("# TYPE gradwatch_{fam} ")), "missing {fam}");
    }
    assert!(text.contains("gradwatch_frames_captured_total{stream=\"cam0\"} 3\n"));
    assert!(text.contains("gradwatch_execution_provider{provider=\"cpu\"} 1\n"));
    // The whole-frame quality measures: a family always, samples once a frame was measured.
    assert!(text.contains("# TYPE gradwatch_frame_quality gauge\n"));
    assert!(!text.contains("gradwatch_frame_quality{"), "{text}");
    let mut q = [0.25f32; 12];
    q[3] = 0.5;
    m.stream("cam0").set_frame_quality(q);
    let text = m.render();
    assert!(text.contains("gradwatch_frame_quality{stream=\"cam0\",measure=\"sharpness\"} 0.25\n"), "{text}");
    assert!(text.contains("gradwatch_frame_quality{stream=\"cam0\",measure=\"brightness\"} 0.5\n"), "{text}");
    assert_eq!(text.matches("gradwatch_frame_quality{").count(), 12);
}

#[test]
fn const_labels_go_on_every_series() {
    let m = Metrics::new();
    m.stream("cam0").frames_captured.add(3);
    m.set_const_labels(vec![("unit_id".into(), "rsu-1".into()), ("site".into(), "A7 \"km\" 12".into())]);
    let text = m.render();
    let c = "unit_id=\"rsu-1\",site=\"A7 \\\"km\\\" 12\"";
    assert!(text.contains(&format!("gradwatch_frames_captured_total{{{c},stream=\"cam0\"}} 3\n")), "{text}");
    assert!(text.contains(&format!("gradwatch_process_start_time_seconds{{{c}}} ")), "{text}");
    assert!(text.contains(&format!("gradwatch_inference_latency_seconds_count{{{c}}} 0\n")), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.contains("{unit_id=\"rsu-1\","), "{line}");
    }
}
