//! The status page at `/` of the metrics server: against the real daemon (one card per stream,
//! names escaped, the score plot with its threshold line, the open alert), and the
//! `/snapshots/` route against a server whose metrics name snapshot files (only those files
//! are served; no path traversal, no links). `scripts/screenshot-status.sh` renders the page in
//! headless Chromium.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::daemon::{assets, head, write, Daemon};
use crate::common::http::{get, Response};
use gradwatch::metrics::{Metrics, MetricsServer};
use serde_json::json;

const EVIL: &str = r#"cam <b>1</b> & "co""#;

/// Two streams, one with a name full of HTML, that one through a noisy window: the page has
/// one card each, the name escaped, a plot with the threshold, and the open alert.
#[test]
fn status_page_of_the_real_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let frames = assets().frames.display().to_string();
    let cfg = format!(
        "{}\n[[stream]]\nname = '{EVIL}'\nkind = \"replay\"\npath = \"{frames}\"\nfps = 40\n\
         schedule = [ {{ frames = 40 }}, {{ frames = 4000, corruption = \"noise\", level = 5 }} ]\n\n\
         [[stream]]\nname = \"plain\"\nkind = \"replay\"\npath = \"{frames}\"\nfps = 20\nrepeat = true\n",
        head("").replace("[metrics]\nenabled = false", "[metrics]\nbind = \"127.0.0.1:0\"")
    );
    let path = write(dir.path(), "page.toml", &cfg);
    let mut d = Daemon::start(&["run", "--config", path.to_str().unwrap()]);
    let addr = d.metrics_addr();

    let t0 = Instant::now();
    let page = loop {
        if let Ok(Response { status: 200, head, body }) = get(addr, "/") {
            let html = String::from_utf8(body).unwrap();
            assert!(head.contains("content-type: text/html; charset=utf-8"), "{head}");
            if html.contains("Open alert") && html.matches("<polyline").count() >= 2 {
                break html;
            }
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "no alert on the page; stderr:\n{}", d.stderr());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(page.matches("<section class=\"card").count(), 2, "{page}");
    assert!(page.contains("cam &lt;b&gt;1&lt;/b&gt; &amp; &quot;co&quot;"), "{page}");
    assert!(!page.contains("<b>1</b>"), "a stream name went into the page unescaped");
    assert!(page.contains("class=\"card degraded\"") && page.contains("class=\"card ok\""), "{page}");
    assert_eq!(page.matches("<svg").count(), 2);
    assert_eq!(page.matches("class=\"threshold\"").count(), 2);
    assert!(page.contains("<meta http-equiv=\"refresh\""));
    assert!(!page.contains("<script") && !page.contains("http://") && !page.contains("https://"));
    assert!(page.contains(" fps</dd>"));

    // The pictures route: nothing but files that events named (none here: no snapshots).
    let id = page.split("<code>").nth(1).and_then(|r| r.split("</code>").next()).unwrap().to_string();
    assert!(id.starts_with("cam &lt;b&gt;1"), "{id}");
    for bad in [
        "/snapshots/../../etc/passwd",
        "/snapshots/x/..%2F..%2F..%2Fetc%2Fpasswd",
        "/snapshots/%2E%2E/%2E%2E%2Fpage.toml",
        "/snapshots/cam/page.toml",
        "/snapshots/",
        "/snapshots/%ZZ/x",
    ] {
        let Response { status: code, .. } = get(addr, bad).unwrap();
        assert_eq!(code, 404, "{bad}");
    }
    // The existing routes are untouched.
    let Response { status: code, body, .. } = get(addr, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert!(String::from_utf8_lossy(&body).contains("gradwatch_frames_scored_total{stream=\"plain\"}"));
    let Response { status: code, .. } = get(addr, "/nope").unwrap();
    assert_eq!(code, 404);
    d.signal("TERM");
    assert_eq!(d.wait(Duration::from_secs(30)), 0, "{}", d.stderr());
}

/// `/snapshots/<alert id>/<file name>` serves the snapshot and heat map an event named, and
/// nothing else: not a neighbour in the same directory, not `..`, not a link put in place of
/// a picture, not a named file that is no picture.
#[test]
fn snapshot_route_serves_only_the_files_events_named() {
    let dir = tempfile::tempdir().unwrap();
    let snaps = dir.path().join("snapshots");
    std::fs::create_dir(&snaps).unwrap();
    let jpg = snaps.join("cam_1-5-1700000000000-start.jpg");
    let png = snaps.join("cam_1-5-1700000000000-start-heatmap.png");
    std::fs::write(&jpg, b"\xFF\xD8jpeg bytes\xFF\xD9").unwrap();
    std::fs::write(&png, b"\x89PNG\r\n\x1a\npng bytes").unwrap();
    std::fs::write(snaps.join("secret.jpg"), b"not named by any event").unwrap();
    std::fs::write(dir.path().join("outside.jpg"), b"outside").unwrap();

    let m = Metrics::new();
    let s = m.stream("cam/1");
    let id = "cam/1-5-1700000000000";
    s.status.event_json(&json!({"event": "alert_start", "id": id, "stream": "cam/1", "first_time": "t",
        "snapshot": jpg.display().to_string(), "heatmap": png.display().to_string()}));
    let other = m.stream("other");
    other.status.event_json(&json!({"event": "alert_start", "id": "other-1-1", "stream": "other",
        "snapshot": "/etc/passwd", "heatmap": dir.path().join("link.png").display().to_string()}));
    std::os::unix::fs::symlink("/etc/hostname", dir.path().join("link.png")).unwrap();

    let server = MetricsServer::start("127.0.0.1:0", m.clone(), Arc::new(|| Ok(()))).unwrap();
    let addr = server.local_addr();
    let Response { status: code, body, .. } = get(addr, "/").unwrap();
    assert_eq!(code, 200);
    let html = String::from_utf8(body).unwrap();
    let src = "/snapshots/cam%2F1-5-1700000000000/cam_1-5-1700000000000-start.jpg";
    assert!(html.contains(&format!("src=\"{src}\"")), "{html}");

    let Response { status: code, head, body } = get(addr, src).unwrap();
    assert_eq!(code, 200);
    assert!(head.contains("content-type: image/jpeg"), "{head}");
    assert_eq!(body, std::fs::read(&jpg).unwrap());
    let Response { status: code, head, body } =
        get(addr, "/snapshots/cam%2F1-5-1700000000000/cam_1-5-1700000000000-start-heatmap.png").unwrap();
    assert_eq!(code, 200);
    assert!(head.contains("content-type: image/png"), "{head}");
    assert_eq!(body, std::fs::read(&png).unwrap());

    for bad in [
        "/snapshots/cam%2F1-5-1700000000000/secret.jpg",
        "/snapshots/cam%2F1-5-1700000000000/..%2Foutside.jpg",
        "/snapshots/cam%2F1-5-1700000000000/..%2F..%2Foutside.jpg",
        "/snapshots/cam%2F1-5-1700000000000/%2Fetc%2Fpasswd",
        "/snapshots/cam/1-5-1700000000000/cam_1-5-1700000000000-start.jpg",
        "/snapshots/../snapshots/cam_1-5-1700000000000-start.jpg",
        "/snapshots/other-1-1/passwd",
        "/snapshots/other-1-1/link.png",
        "/snapshots/nope/cam_1-5-1700000000000-start.jpg",
    ] {
        let Response { status: code, body, .. } = get(addr, bad).unwrap();
        assert_eq!(code, 404, "{bad}: {}", String::from_utf8_lossy(&body));
    }
    server.stop();
}
