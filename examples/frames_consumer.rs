//! A consumer of the daemon's `frames` sink that gates a decision on `risk`: it obeys a
//! traffic sign only when the trust head says the classification is probably right and the
//! camera is healthy, and falls back (slow down, hand over, ask another sensor) otherwise.
//!
//! ```sh
//! cargo run --release --example frames_consumer -- /run/planner/frames.sock 0.2
//! # gradwatch.toml:
//! #   [[sink]]
//! #   kind = "frames"
//! #   transport = "unix_datagram"
//! #   path = "/run/planner/frames.sock"
//! ```
//!
//! It binds a Unix datagram socket at the given path (removing a stale one), reads one JSON
//! line per datagram (schema: `docs/guide/alerts.md`, "Per-frame output") and prints one decision
//! per frame. Frames without a `risk` (a calibration without a trust head) are never obeyed.

use std::os::unix::net::UnixDatagram;

/// What the planner does with one frame.
#[derive(Debug, PartialEq)]
enum Decision {
    /// Act on the sign.
    Obey { class: String, risk: f64 },
    /// Do not act on this frame's classification.
    Fallback { why: String },
}

/// The gate: obey when the camera is healthy and `risk` is at most `max_risk`.
fn decide(frame: &serde_json::Value, max_risk: f64) -> Decision {
    let class = frame["class_name"].as_str().map_or_else(|| frame["top_class"].to_string(), str::to_string);
    if frame["alarm"].as_bool().unwrap_or(true) {
        return Decision::Fallback { why: "camera-health alarm open".into() };
    }
    match frame["risk"].as_f64() {
        None => Decision::Fallback { why: "no risk (calibration without a trust head)".into() },
        Some(r) if r > max_risk => Decision::Fallback { why: format!("risk {r:.3} > {max_risk}") },
        Some(r) => Decision::Obey { class, risk: r },
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: frames_consumer SOCKET_PATH [MAX_RISK (default 0.2)]");
        std::process::exit(2);
    };
    let max_risk: f64 = match args.next().map(|s| s.parse()) {
        None => 0.2,
        Some(Ok(v)) => v,
        Some(Err(e)) => {
            eprintln!("MAX_RISK: {e}");
            std::process::exit(2);
        }
    };
    let _ = std::fs::remove_file(&path);
    let sock = match UnixDatagram::bind(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("cannot bind {path}: {e}");
            std::process::exit(1);
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    let (mut obeyed, mut total) = (0u64, 0u64);
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                eprintln!("recv: {e}");
                continue;
            }
        };
        let frame: serde_json::Value = match serde_json::from_slice(&buf[..n]) {
            Ok(v) => v,
            Err(e) => {
                eprintln!("not a frame line ({e}); skipped");
                continue;
            }
        };
        total += 1;
        let d = decide(&frame, max_risk);
        if matches!(d, Decision::Obey { .. }) {
            obeyed += 1;
        }
        println!("{} #{}: {:?} (obeyed {obeyed} of {total})", frame["stream"].as_str().unwrap_or("?"), frame["seq"], d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_obeys_only_trusted_frames_of_a_healthy_camera() {
        let f = |risk: serde_json::Value, alarm: bool| {
            serde_json::json!({"stream": "cam", "seq": 1, "top_class": 14, "class_name": "stop",
                               "risk": risk, "alarm": alarm})
        };
        assert_eq!(decide(&f(0.05.into(), false), 0.2), Decision::Obey { class: "stop".into(), risk: 0.05 });
        assert!(matches!(decide(&f(0.5.into(), false), 0.2), Decision::Fallback { .. }));
        assert!(matches!(decide(&f(0.05.into(), true), 0.2), Decision::Fallback { .. }));
        assert!(matches!(decide(&f(serde_json::Value::Null, false), 0.2), Decision::Fallback { .. }));
    }
}
