//! Crash-consistent alert state: every open alert is persisted in the state directory, so an
//! alert open when the daemon died (kill -9, OOM, watchdog abort, power loss) is closed at the
//! next start with an `alert_end` whose `reason` is `restart`, instead of staying open for
//! ever in every consumer.
//!
//! Layout: `<state dir>/open-alerts/<stream>.json` (the stream name through
//! [`crate::names::encode`]), one [`Alert`] as JSON: the latest `alert_start` or
//! `alert_update` of the stream's open alert, written atomically (temporary file, `fsync`,
//! rename) when it is emitted and deleted when its `alert_end` is. A file is at most
//! [`MAX_FILE_BYTES`]; a larger or unreadable one is logged and removed.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::{Alert, EndReason, Event};

/// Largest open-alert file read (an alert is well under 2 KiB of JSON).
pub const MAX_FILE_BYTES: u64 = 64 << 10;

/// The open alerts of one daemon, persisted under `<state dir>/open-alerts/`.
#[derive(Clone)]
pub struct OpenAlerts {
    dir: PathBuf,
    /// Write failures (a full disk fails every event) are logged at most every 30 s.
    fail_log: std::sync::Arc<crate::ratelimit::LogLimiter>,
}

impl OpenAlerts {
    /// The store in `state_dir` (created when first written).
    pub fn new(state_dir: &Path) -> OpenAlerts {
        OpenAlerts {
            dir: state_dir.join("open-alerts"),
            fail_log: std::sync::Arc::new(crate::ratelimit::LogLimiter::new(std::time::Duration::from_secs(30))),
        }
    }

    /// Its directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, stream: &str) -> PathBuf {
        self.dir.join(format!("{}.json", crate::names::encode(stream)))
    }

    /// Follows one event: an open alert's start or update is saved, its end removes it.
    /// Failures are logged (the alert itself goes out regardless).
    pub fn record(&self, ev: &Event) {
        let res = match ev {
            Event::AlertStart { alert } | Event::AlertUpdate { alert } => self.save(alert),
            Event::AlertEnd { alert, .. } => match std::fs::remove_file(self.path(&alert.stream)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
            _ => Ok(()),
        };
        if let Err(e) = res {
            let (stream, dir) = (ev.stream(), self.dir.display());
            self.fail_log.hit(|more| {
                log::warn!(
                    "stream {stream}: cannot record the open alert in {dir}: {e}; if the daemon dies now, \
                     the alert is not closed at the next start ({more} more failures since the last message)"
                )
            });
        }
    }

    fn save(&self, alert: &Alert) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(&alert.stream);
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_vec(alert).map_err(std::io::Error::other)?;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&text)?;
        f.sync_data()?;
        std::fs::rename(&tmp, &path)
    }

    /// The alerts left open by the previous run, each closed at `now` with reason `restart`:
    /// `time` is now and `duration_ms` runs to it; every other field is the alert's last
    /// persisted state. Their files are removed; unreadable ones are logged and removed too.
    pub fn close_left_open(&self, now: std::time::SystemTime) -> Vec<Event> {
        let time = crate::base::time::rfc3339_ms(now);
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        let mut out = Vec::new();
        let mut paths: Vec<PathBuf> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if name.ends_with(".json.tmp") {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let parsed = crate::base::path::read_state_file(&path, MAX_FILE_BYTES).and_then(|t| {
                let t = t.ok_or_else(|| "vanished".to_string())?;
                serde_json::from_str::<Alert>(&t).map_err(|e| format!("{}: {e}", path.display()))
            });
            match parsed {
                Ok(mut alert) => {
                    log::warn!(
                        "stream {}: alert {} was open when the daemon stopped without closing it (a \
                         crash?); closing it now with reason \"restart\"",
                        alert.stream,
                        alert.id
                    );
                    alert.time = time.clone();
                    if let Some(first) = crate::base::time::parse_rfc3339(&alert.first_time) {
                        alert.duration_ms =
                            crate::base::time::unix_ms(now).saturating_sub(crate::base::time::unix_ms(first));
                    }
                    out.push(Event::AlertEnd { alert, reason: EndReason::Restart });
                }
                Err(e) => log::error!("open alert state unreadable, removed: {e}"),
            }
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("cannot remove {}: {e}", path.display());
            }
        }
        out
    }
}
