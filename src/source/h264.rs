//! The H.264 decoder of RTSP streams: OpenH264, from one of two places chosen at build time.
//!
//! - feature `h264-system` (the default): the system's OpenH264 library, loaded when the first
//!   H.264 stream connects (Debian and Ubuntu: `apt install libopenh264-7`, or the soname of
//!   the release; `GRADWATCH_OPENH264=/path/libopenh264.so` names another file). Nothing is
//!   compiled from C++: a build takes minutes less, and the distribution patches the decoder.
//! - feature `h264-source`: OpenH264 compiled into the binary from the crate's bundled C++
//!   (needs `nasm`); the release build for targets without a packaged library (JetPack).
//!   When both features are on, this one is used.
//!
//! A build with neither refuses H.264 streams with a message saying how to get a decoder.

use openh264::decoder::Decoder;

/// Sonames tried in order when `GRADWATCH_OPENH264` is not set: the 2.x ABI the bindings
/// were written for (Debian 12 ships 2.3.1 as `.so.7`; newer releases bump the soname).
#[cfg(all(feature = "h264-system", not(feature = "h264-source")))]
const SONAMES: [&str; 5] =
    ["libopenh264.so.7", "libopenh264.so.8", "libopenh264.so.6", "libopenh264.so.5", "libopenh264.so"];

/// Environment variable naming the OpenH264 library file (`h264-system` builds).
pub const LIBRARY_ENV: &str = "GRADWATCH_OPENH264";

/// A new decoder with the crate's default settings.
pub fn decoder() -> Result<Decoder, String> {
    let api = api()?;
    Decoder::with_api_config(api, openh264::decoder::DecoderConfig::new())
        .map_err(|e| format!("cannot start the H.264 decoder: {e}"))
}

#[cfg(feature = "h264-source")]
fn api() -> Result<openh264::OpenH264API, String> {
    Ok(openh264::OpenH264API::from_source())
}

#[cfg(all(feature = "h264-system", not(feature = "h264-source")))]
fn api() -> Result<openh264::OpenH264API, String> {
    let wanted: Vec<String> = match std::env::var(LIBRARY_ENV) {
        Ok(path) if !path.is_empty() => vec![path],
        _ => SONAMES.iter().map(|s| s.to_string()).collect(),
    };
    let mut last = String::new();
    for name in &wanted {
        // SAFETY: loading a shared library runs its initialisers and trusts its symbols' types.
        // The names are OpenH264's own sonames (or the operator's explicit choice), whose 2.x
        // decoder ABI (WelsCreateDecoder and the ISVCDecoder table) is what the bindings
        // declare; the version is checked below before any decoder is made.
        match unsafe { openh264::OpenH264API::from_blob_path_unchecked(name) } {
            Ok(api) => {
                check_version(&api, name)?;
                return Ok(api);
            }
            Err(e) => last = format!("{name}: {e}"),
        }
    }
    Err(format!(
        "no OpenH264 library could be loaded ({last}): install it (`apt install libopenh264-7` on Debian 12 and \
         Ubuntu), set {LIBRARY_ENV} to its file, or build gradwatch with `--features h264-source`"
    ))
}

/// Refuses a library of another major version (the bindings declare the 2.x ABI).
#[cfg(all(feature = "h264-system", not(feature = "h264-source")))]
fn check_version(api: &openh264::OpenH264API, name: &str) -> Result<(), String> {
    use openh264_sys2::API as _;
    // SAFETY: WelsGetCodecVersion takes no arguments and returns a plain struct in every
    // OpenH264 release.
    let v = unsafe { api.WelsGetCodecVersion() };
    if v.uMajor != 2 {
        return Err(format!(
            "{name} is OpenH264 {}.{}.{}; gradwatch needs 2.x (set {LIBRARY_ENV} to a 2.x library or build with \
             `--features h264-source`)",
            v.uMajor, v.uMinor, v.uRevision
        ));
    }
    Ok(())
}

#[cfg(not(any(feature = "h264-system", feature = "h264-source")))]
fn api() -> Result<openh264::OpenH264API, String> {
    Err("this gradwatch was built without an H.264 decoder: rebuild with `--features h264-system` (the system's \
         libopenh264) or `--features h264-source`, or send MJPEG"
        .into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_decoder_starts_or_names_the_fix() {
        match super::decoder() {
            Ok(_) => {}
            Err(e) => assert!(e.contains("libopenh264") || e.contains("h264-source"), "{e}"),
        }
    }
}
