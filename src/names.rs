//! The one validation of the names that reach MQTT topics, file names and metric labels
//! (stream names, sink names), and the one injective mapping of a name into a topic level or
//! a file name.
//!
//! **Character set** of a name: 1 to [`MAX_NAME_BYTES`] bytes of UTF-8 made of letters and
//! digits of any script (Unicode `Alphabetic` / `Numeric`), the space (not first or last) and
//! ASCII punctuation (`! " # $ % & ' ( ) * + , - . / : ; < = > ? @ [ \ ] ^ _ ` { | } ~`).
//! Everything else is refused at `check-config` with the offending character shown: control
//! characters (a tab in a topic made mosquitto drop the connection on every publish, issue
//! #28), other white space (NBSP, line separators), and invisible or look-alike format
//! characters (zero-width joiners, bidi overrides) that would make two names that look the
//! same differ.
//!
//! **Mapping**: [`encode`] writes `% / + # \\`, control characters and a leading `.` as `%XX`
//! escapes of their UTF-8 bytes (upper-case hex) and keeps every other character. Since `%`
//! itself is escaped, that is injective (decoding gives back the name), so no two names share
//! a topic level or a file name: `a/b` and `a_b`, `cam.1` and `cam 1`, `前门` and `后门` all
//! differ, where replacing characters by `_` merged them. Valid names hold none of the escaped
//! characters, so they map to themselves: topics and file names stay readable.

/// Longest name, in bytes of UTF-8: its encoded form stays below the 255-byte file-name limit
/// with room for a prefix and a SHA-256.
pub const MAX_NAME_BYTES: usize = 48;

/// Checks `name` against the character set; the error names the offending character (its
/// position and code point, so an invisible one is visible too) and the allowed set.
pub fn validate(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!(
            "the name is {} bytes long; at most {MAX_NAME_BYTES} bytes of UTF-8 are allowed",
            name.len()
        ));
    }
    for (i, c) in name.chars().enumerate() {
        if !(c.is_alphanumeric() || c == ' ' || c.is_ascii_punctuation()) {
            return Err(format!(
                "character {} of the name is {:?} (U+{:04X}), which is not allowed: use letters, digits, \
                 spaces and ASCII punctuation",
                i + 1,
                c,
                c as u32
            ));
        }
    }
    if name.starts_with(' ') || name.ends_with(' ') {
        return Err("the name starts or ends with a space".into());
    }
    Ok(())
}

/// Whether `encode` writes `c` (at position `first` or later) as `%XX` escapes.
fn escaped(c: char, first: bool) -> bool {
    matches!(c, '%' | '/' | '+' | '#' | '\\') || c.is_control() || (first && c == '.')
}

/// The injective, topic- and file-name-safe form of `name` (see the module doc); the empty
/// name becomes `%`, which no other name encodes to.
pub fn encode(name: &str) -> String {
    if name.is_empty() {
        return "%".into();
    }
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.chars().enumerate() {
        if escaped(c, i == 0) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The inverse of [`encode`]; `None` for a string `encode` never yields.
pub fn decode(s: &str) -> Option<String> {
    if s == "%" {
        return Some(String::new());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            if hex.chars().any(|c| !c.is_ascii_hexdigit() || c.is_ascii_lowercase()) {
                return None;
            }
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let name = String::from_utf8(out).ok()?;
    // Only the canonical form: what `encode` escapes must have been escaped, and nothing else.
    (encode(&name) == s).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    #[test]
    fn the_character_set() {
        for ok in ["cam0", "front door", "前门", "cam.1", "cam-2_b", "a:b@c", "cam/1", "a+b#%"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        let e = validate("bad\tname").unwrap_err();
        assert!(e.contains("character 4") && e.contains("U+0009"), "{e}");
        for bad in
            ["", " lead", "trail ", "nul\0", "a\u{a0}b", "zero\u{200d}width", "bidi\u{202e}", "line\u{2028}", "☃"]
        {
            assert!(validate(bad).is_err(), "{bad:?}");
        }
        assert!(validate(&"x".repeat(MAX_NAME_BYTES)).is_ok());
        assert!(validate(&"x".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn collisions_of_the_old_mappings_are_gone() {
        assert_ne!(encode("a/b"), encode("a_b"));
        assert_ne!(encode("cam.1"), encode("cam 1"));
        assert_ne!(encode("前门"), encode("后门"));
        for valid in ["cam-0_x", "front door", "前门", "cam.1"] {
            assert_eq!(encode(valid), valid, "valid names keep their form");
        }
        assert_eq!(encode("a/b"), "a%2Fb");
        assert_eq!(encode("bad\tname"), "bad%09name");
        assert_eq!(encode(".."), "%2E.");
        assert_eq!(encode(""), "%");
    }

    /// A random string over a small alphabet that holds every kind of character the mapping
    /// treats apart (kept, escaped, multi-byte, control, `%`), so collisions would show.
    fn random_name(rng: &mut SplitMix64) -> String {
        const ALPHABET: [char; 14] = ['a', 'B', '0', '_', '-', '.', ' ', '/', '%', '#', '\t', '\0', '前', '\u{10FFFF}'];
        let len = (rng.next_u64() % 6) as usize;
        (0..len).map(|_| ALPHABET[(rng.next_u64() % ALPHABET.len() as u64) as usize]).collect()
    }

    /// Property: `encode` is injective (decoding gives the name back, and two names are equal
    /// exactly when their encodings are) and yields only topic- and file-safe bytes.
    #[test]
    fn encode_is_injective_and_safe() {
        let mut rng = SplitMix64::new(28);
        let mut seen = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let a = random_name(&mut rng);
            let e = encode(&a);
            assert_eq!(decode(&e).as_deref(), Some(a.as_str()), "{a:?} -> {e}");
            assert!(!e.is_empty() && !e.starts_with('.'), "{e}");
            assert!(!e.contains(['/', '+', '#', '\0', '\t']), "{e}");
            if let Some(prev) = seen.insert(e.clone(), a.clone()) {
                assert_eq!(prev, a, "{prev:?} and {a:?} both map to {e}");
            }
        }
        assert!(seen.len() > 5_000, "too few distinct names drawn: {}", seen.len());
        for junk in ["%2", "%zz", "%41", "%2f", "a/b", "%FF"] {
            assert_eq!(decode(junk), None, "{junk}");
        }
    }
}
