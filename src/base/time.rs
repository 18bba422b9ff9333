//! Wall-clock helpers: RFC 3339 timestamps (UTC, millisecond precision) without a date-time
//! dependency, and the event id every sink writes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch; times before 1970 clamp to 0 (frame clocks that far off
/// are bugs upstream, and a clamped value keeps ids and JSON well-formed).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)).unwrap_or(0)
}

/// Formats `t` as `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339, UTC, milliseconds, truncated).
pub fn rfc3339_ms(t: SystemTime) -> String {
    let ms = unix_ms(t);
    let secs = ms / 1000;
    let millis = ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}Z", rem / 3600, (rem % 3600) / 60, rem % 60)
}

/// Parses what [`rfc3339_ms`] writes (and the same form with 0-9 fraction digits) back into a
/// `SystemTime`; `None` for anything else. Consumers and tests use it to read events back.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let b = s.as_bytes();
    if b.len() < 20 || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut nanos = 0u64;
    let tail = &s[19..s.len() - 1];
    if !tail.is_empty() {
        let frac = tail.strip_prefix('.')?;
        if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        nanos = frac.parse::<u64>().ok()? * 10u64.pow(9 - frac.len() as u32);
    }
    let days = days_from_civil(y, mo, d)?;
    let secs = days * 86_400 + h * 3600 + mi * 60 + se;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Inverse of [`civil_from_days`]; `None` before 1970.
fn days_from_civil(y: u64, m: u64, d: u64) -> Option<u64> {
    let y = if m <= 2 { y.checked_sub(1)? } else { y };
    let era = y / 400;
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// A new event id: 32 lower-case hex digits in UUID layout (`8-4-4-4-12`), unique per event
/// across processes and restarts of this host, and assigned once per event so every sink and
/// every redelivery of the event carry the same id.
///
/// Made of the wall-clock time in ms (48 bits), a per-process random nonce (48 bits, from the
/// OS-seeded hasher keys of the standard library, so two processes started in the same
/// millisecond with recycled pids still differ) mixed with the pid, and a per-process counter
/// (32 bits). No crate is needed and no syscall per id beyond reading the clock.
pub fn new_event_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static NONCE: OnceLock<u64> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nonce = *NONCE.get_or_init(|| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
        h.finish()
    });
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let hi = ms & 0xFFFF_FFFF_FFFF;
    let mid = nonce & 0xFFFF_FFFF_FFFF;
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:04x}{:08x}",
        hi >> 16,
        hi & 0xFFFF,
        mid >> 32,
        (mid >> 16) & 0xFFFF,
        mid & 0xFFFF,
        n as u32
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339_ms(at(0)), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (leap day, century divisible by 400) 12:34:56.789 = 951827696789 ms,
        // computed by hand: 11016 days * 86400 + 45296 s.
        assert_eq!(rfc3339_ms(at(951_827_696_789)), "2000-02-29T12:34:56.789Z");
        // 2024-12-31T23:59:59.999Z = 1735689599999 ms (last ms of a leap year).
        assert_eq!(rfc3339_ms(at(1_735_689_599_999)), "2024-12-31T23:59:59.999Z");
        assert_eq!(rfc3339_ms(at(1_735_689_600_000)), "2025-01-01T00:00:00.000Z");
        // Sub-millisecond parts truncate.
        let t = at(1_000) + Duration::from_micros(999);
        assert_eq!(rfc3339_ms(t), "1970-01-01T00:00:01.000Z");
        // Before the epoch clamps.
        assert_eq!(rfc3339_ms(UNIX_EPOCH - Duration::from_secs(5)), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn parse_round_trips() {
        for ms in [0, 951_827_696_789, 1_735_689_599_999, 4_102_444_800_123] {
            let s = rfc3339_ms(at(ms));
            assert_eq!(parse_rfc3339(&s), Some(at(ms)), "{s}");
        }
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(at(1000)));
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01.5Z"), Some(at(1500)));
        assert_eq!(parse_rfc3339("1970-01-01 00:00:01Z"), None);
        assert_eq!(parse_rfc3339("1970-13-01T00:00:01Z"), None);
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01+01:00"), None);
        assert_eq!(parse_rfc3339("garbage"), None);
    }

    #[test]
    fn event_ids_are_unique_uuid_shaped() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| new_event_id()).collect();
        assert_eq!(ids.len(), 10_000);
        let id = new_event_id();
        assert_eq!(id.len(), 36);
        assert_eq!(id.matches('-').count(), 4);
    }
}
