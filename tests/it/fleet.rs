//! Fleet identity and the shipped monitoring, against real daemons: two units with the same
//! stream name on one mosquitto are told apart in every event, retained topic and Home
//! Assistant id; every metric series carries the unit; every query of the shipped Grafana
//! dashboard names a metric a running daemon serves (or a recording rule the shipped rules
//! define), and so does every rule.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::daemon::{endless, write, Daemon};
use crate::common::http::get_text;
use crate::mqtt::{Broker, Sub};

/// A unit's config: a looping replay stream `cam0` with a noisy window (alerts), an MQTT sink
/// without `client_id`, the dashboard and discovery topics on.
fn unit(dir: &Path, id: &str, site: &str, port: u16) -> std::path::PathBuf {
    let events = dir.join(format!("{id}.jsonl"));
    let base = endless(&events, true, "").replace("name = \"cam\"", "name = \"cam0\"");
    let cfg = format!(
        "[service]\nunit_id = \"{id}\"\nlabels = {{ site = \"{site}\", road = \"A7\" }}\n\n{base}\n\
         [[sink]]\nkind = \"mqtt\"\nhost = \"127.0.0.1\"\nport = {port}\ndashboard = true\ndiscovery = true\n"
    )
    .replace("[metrics]\nenabled = false", "[metrics]\nbind = \"127.0.0.1:0\"");
    write(dir, &format!("{id}.toml"), &cfg)
}

/// Two units, one broker: events under `gradwatch/<unit>/events/cam0` carrying their unit and
/// labels, retained availability/state per unit, distinct Home Assistant ids; every series
/// of /metrics has the unit and its labels.
#[test]
fn two_units_share_a_broker_and_are_told_apart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(dir.path(), false);
    let sub = Sub::connect(broker.port, "t-fleet", "#", true);
    let mut a = Daemon::start(&["run", "--config", unit(dir.path(), "rsu-1", "km12", broker.port).to_str().unwrap()]);
    let mut b = Daemon::start(&["run", "--config", unit(dir.path(), "rsu-2", "km40", broker.port).to_str().unwrap()]);

    // An alert_start from each unit, each under its own topic and naming itself.
    let mut starts = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(60);
    while starts.len() < 2 {
        let g =
            sub.rx.recv_timeout(end.saturating_duration_since(Instant::now())).expect("alert_start from both units");
        if g.topic.contains("/events/") && g.payload.contains("\"alert_start\"") {
            let v: serde_json::Value = serde_json::from_str(&g.payload).unwrap();
            starts.insert(v["unit_id"].as_str().unwrap().to_string(), (g.topic.clone(), v));
        }
    }
    for (id, site) in [("rsu-1", "km12"), ("rsu-2", "km40")] {
        let (topic, v) = &starts[id];
        assert_eq!(topic, &format!("gradwatch/{id}/events/cam0"));
        assert_eq!(v["labels"], serde_json::json!({"road": "A7", "site": site}), "{v}");
        assert_eq!(v["stream"], "cam0");
    }

    // Retained topics: availability and state per unit, discovery ids per unit.
    let late = Sub::connect(broker.port, "t-fleet-late", "#", true);
    let mut retained = BTreeMap::new();
    let end = Instant::now() + Duration::from_secs(10);
    let want = [
        "gradwatch/rsu-1/availability",
        "gradwatch/rsu-2/availability",
        "gradwatch/rsu-1/cam0/state",
        "gradwatch/rsu-2/cam0/state",
        "homeassistant/binary_sensor/gradwatch_rsu-1/cam0_trust/config",
        "homeassistant/binary_sensor/gradwatch_rsu-2/cam0_trust/config",
    ];
    while !want.iter().all(|t| retained.contains_key(*t)) {
        match late.rx.recv_timeout(end.saturating_duration_since(Instant::now())) {
            Ok(g) if g.retain => {
                retained.insert(g.topic.clone(), g.payload.clone());
            }
            Ok(_) => {}
            Err(_) => panic!("retained topics missing: {:?}", retained.keys().collect::<Vec<_>>()),
        }
    }
    let ids: BTreeSet<String> = retained
        .iter()
        .filter(|(t, _)| t.starts_with("homeassistant/"))
        .map(|(_, p)| serde_json::from_str::<serde_json::Value>(p).unwrap()["unique_id"].as_str().unwrap().to_string())
        .collect();
    let discovery = retained.keys().filter(|t| t.starts_with("homeassistant/")).count();
    assert_eq!(ids.len(), discovery, "a Home Assistant unique_id is shared between units: {ids:?}");
    assert!(ids.contains("gradwatch_rsu-1_cam0_trust") && ids.contains("gradwatch_rsu-2_cam0_trust"), "{ids:?}");

    // Every series carries the unit and its labels.
    let text = get_text(a.metrics_addr(), "/metrics");
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        assert!(line.contains("{unit_id=\"rsu-1\",road=\"A7\",site=\"km12\""), "{line}");
    }
    assert!(
        text.contains("gradwatch_alert_open{unit_id=\"rsu-1\",road=\"A7\",site=\"km12\",stream=\"cam0\"}"),
        "{text}"
    );
    let _ = b.metrics_addr();
    a.signal("TERM");
    b.signal("TERM");
    assert_eq!(a.wait(Duration::from_secs(20)), 0, "{}", a.stderr());
    assert_eq!(b.wait(Duration::from_secs(20)), 0, "{}", b.stderr());
}

/// The metric names in a PromQL expression: `gradwatch_...` and recording rules `gradwatch:...`.
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(off) = expr[i..].find("gradwatch") {
        let s = i + off;
        let before_ok = s == 0 || !(b[s - 1].is_ascii_alphanumeric() || b[s - 1] == b'_' || b[s - 1] == b':');
        let mut e = s;
        while e < b.len() && (b[e].is_ascii_alphanumeric() || b[e] == b'_' || b[e] == b':') {
            e += 1;
        }
        if before_ok && e > s + "gradwatch".len() {
            out.insert(expr[s..e].to_string());
        }
        i = e.max(s + 1);
    }
    out
}

/// The families `/metrics` declares (`# TYPE name kind`), with a histogram's sample names.
fn served(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for l in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut it = l.split_whitespace();
        let (Some(name), Some(kind)) = (it.next(), it.next()) else { continue };
        out.insert(name.to_string());
        if kind == "histogram" {
            for s in ["_bucket", "_sum", "_count"] {
                out.insert(format!("{name}{s}"));
            }
        }
    }
    out
}

/// The `expr`s of deploy/grafana/gradwatch.json (panel targets and template queries).
fn dashboard_exprs() -> Vec<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/gradwatch.json");
    let d: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr" | "definition", serde_json::Value::String(s)) => out.push(s.clone()),
                        _ => walk(x, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&d, &mut out);
    out
}

/// Recording rules defined and names used in deploy/prometheus/gradwatch-rules.yml (read as
/// text: `record:` lines, and every `gradwatch...` name anywhere in an `expr`).
fn rules() -> (BTreeSet<String>, BTreeSet<String>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus/gradwatch-rules.yml");
    let text = std::fs::read_to_string(path).unwrap();
    let mut records = BTreeSet::new();
    let mut used = BTreeSet::new();
    for l in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        if let Some(r) = l.strip_prefix("- record:") {
            records.insert(r.trim().to_string());
        } else if !l.starts_with("summary:") && !l.starts_with("description:") && !l.starts_with("- alert:") {
            used.extend(names_in(l));
        }
    }
    (records, used)
}

/// Every metric the dashboard and the rules query is one a running daemon serves, or a
/// recording rule of the shipped rules file; the dashboard has a panel per need of the issue.
#[test]
fn dashboard_and_rules_query_metrics_a_daemon_serves() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("ev.jsonl");
    let cfg = endless(&events, true, "").replace("[metrics]\nenabled = false", "[metrics]\nbind = \"127.0.0.1:0\"");
    let cfg = write(dir.path(), "m.toml", &format!("[service]\nunit_id = \"u\"\n{cfg}"));
    let mut d = Daemon::start(&["run", "--config", cfg.to_str().unwrap()]);
    let addr = d.metrics_addr();
    d.wait_for("a scored frame", Duration::from_secs(30), |_| {
        get_text(addr, "/metrics").contains("gradwatch_score_count{unit_id=\"u\",stream=\"cam\"}")
    });
    let have = served(&get_text(addr, "/metrics"));
    d.signal("TERM");
    let _ = d.wait(Duration::from_secs(20));
    assert!(have.contains("gradwatch_frames_scored_total"), "{have:?}");

    let (records, rule_names) = rules();
    let exprs = dashboard_exprs();
    assert!(exprs.len() >= 15, "{exprs:?}");
    let mut missing = Vec::new();
    for name in exprs.iter().flat_map(|e| names_in(e)).chain(rule_names.iter().cloned()) {
        let known = if name.contains(':') { records.contains(&name) } else { have.contains(&name) };
        if !known {
            missing.push(name);
        }
    }
    assert!(missing.is_empty(), "queried but not served (or not a recording rule): {missing:?}\nserved: {have:?}");
    // What the issue asks the dashboard to show.
    let all = exprs.join("\n");
    for need in [
        "gradwatch_alert_open",
        "gradwatch_score_threshold",
        "gradwatch_frames_dropped_total",
        "capture_to_verdict",
        "unit_id",
    ] {
        assert!(all.contains(need), "the dashboard shows no {need}");
    }
}

#[test]
fn promql_names_are_found() {
    let n = names_in(
        "sum by (unit_id) (rate(gradwatch_frames_scored_total{a=\"gradwatch_x\"}[5m])) / gradwatch:drop_ratio:rate5m",
    );
    assert_eq!(
        n.into_iter().collect::<Vec<_>>(),
        ["gradwatch:drop_ratio:rate5m", "gradwatch_frames_scored_total", "gradwatch_x"]
    );
}
