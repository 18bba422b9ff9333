//! The daemon's state files, as a user (or a crash, or a full disk) may leave them: byte 0
//! picks (even) a baseline file -> `alert::Baseline::parse` (which validates), then its
//! p-values, quantiles and adaptation; or (odd) a spool segment -> `sink::mqtt::spool::parse_segment`
//! and the whole `Spool::open` over a scratch directory holding it as a segment, with bytes
//! 1..9 as the `ack` floor, then an append. A state file that a user can write must be an
//! error or be read, never a panic (issue #28: a `clamp` with min > max panicked the alert
//! stage; an `ack` of u64::MAX wrapped the sequence).
#![no_main]

use gradwatch::alert::Baseline;
use gradwatch::rng::SplitMix64;
use gradwatch::sink::mqtt::spool::{parse_segment, Spool};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    if pick % 2 == 0 {
        let Ok(text) = std::str::from_utf8(rest) else { return };
        let Ok(mut b) = Baseline::parse(text) else { return };
        let mut rng = SplitMix64::new(1);
        for x in [f32::NEG_INFINITY, -1.0, 0.0, b.median(), 1e30, f32::NAN] {
            let p = b.p_value(x, 0.0);
            assert!((0.0..=1.0).contains(&p), "p-value {p}");
            b.adapt(x, 1.0, &mut rng);
        }
        let _ = b.quantile(0.9);
        b.validate().expect("adaptation keeps a valid baseline valid");
    } else {
        let (ack, seg) = rest.split_at(rest.len().min(8));
        let read = parse_segment(seg, 0);
        assert!(read.records.windows(2).all(|w| w[0].seq < w[1].seq));
        let dir = std::env::temp_dir().join(format!("gradwatch-fuzz-spool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        std::fs::write(dir.join("00000000000000000000.seg"), seg).expect("segment");
        let mut floor = [0u8; 8];
        floor[..ack.len()].copy_from_slice(ack);
        std::fs::write(dir.join("ack"), u64::from_le_bytes(floor).to_string()).expect("ack");
        if let Ok((mut sp, pending)) = Spool::open(&dir, 1 << 20) {
            assert!(pending.windows(2).all(|w| w[0].seq < w[1].seq));
            let (seq, _) = sp.append("s", b"{}", 0).expect("append after open");
            assert!(pending.last().is_none_or(|r| r.seq < seq));
        }
    }
});
