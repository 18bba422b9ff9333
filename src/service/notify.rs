//! systemd notifications (`Type=notify`): READY, WATCHDOG, STATUS, STOPPING, RELOADING,
//! EXTEND_TIMEOUT_USEC. All of them are no-ops when `NOTIFY_SOCKET` is unset (not under
//! systemd), and a failed notification is logged, never fatal.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify failed: {e}");
    }
}

/// READY=1 with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// STATUS=...
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// WATCHDOG=1.
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// STOPPING=1.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// RELOADING=1 (followed by READY=1 when the reload is done).
pub fn reloading() {
    send(&[NotifyState::Reloading]);
}

/// The period at which to send WATCHDOG=1: half of `WATCHDOG_USEC`, or `None` when systemd
/// did not enable the watchdog for this process.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled().map(|d| d / 2)
}

/// Runs `f` while telling systemd, every 20 s, to extend the start timeout by 60 s: building a
/// TensorRT engine takes minutes on a Jetson, far over the default TimeoutStartSec.
pub fn extend_timeout_while<T>(active: bool, f: impl FnOnce() -> T) -> T {
    if !active {
        return f();
    }
    let done = Arc::new(AtomicBool::new(false));
    let d = done.clone();
    let t = std::thread::Builder::new().name("extend-timeout".into()).spawn(move || {
        let mut waited = Duration::ZERO;
        send(&[NotifyState::ExtendTimeoutUsec(60_000_000), NotifyState::Status("building the TensorRT engine")]);
        while !d.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            waited += Duration::from_millis(100);
            if waited >= Duration::from_secs(20) {
                waited = Duration::ZERO;
                send(&[NotifyState::ExtendTimeoutUsec(60_000_000)]);
            }
        }
    });
    let r = f();
    done.store(true, Ordering::Relaxed);
    if let Ok(t) = t {
        let _ = t.join();
    }
    r
}
