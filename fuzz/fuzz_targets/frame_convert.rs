//! Image decoding in the sources: raw V4L2 frames through `source::convert::to_rgb` (YUYV,
//! MJPEG, RGB24, GREY), and image files through `data::load_image` (PNG, JPEG, PPM/PNM by
//! content: the `directory` source, `score`, `corrupt`) and `convert::mjpeg_to_rgb`.
//!
//! Input layout: byte 0 picks the path. 0-3 (mod 5): a V4L2 frame of format yuyv, mjpeg,
//! rgb24, grey, then width, height and stride as little-endian u16 (stride 0 = packed), then
//! the frame bytes; any geometry must be an error or a frame of exactly `width x height`.
//! 4: the rest is an image file (through a scratch file, since `load_image` takes a path).
//!
//! `load_image` turns a decoder panic into `DataError::DecoderPanicked` on purpose; the fuzz
//! harness's panic hook aborts on any panic, caught or not, so such a decoder bug still shows
//! up here as a crash.
#![no_main]

use gradwatch::source::convert::{mjpeg_to_rgb, to_rgb, PixelFormat};
use libfuzzer_sys::fuzz_target;

#[path = "scratch.rs"]
mod scratch;

const FORMATS: [PixelFormat; 4] = [PixelFormat::Yuyv, PixelFormat::Mjpeg, PixelFormat::Rgb24, PixelFormat::Grey];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else { return };
    let Some(&format) = FORMATS.get(usize::from(pick % 5)) else {
        let path = scratch::write("image", "img", rest);
        if let Ok(img) = gradwatch::data::load_image(&path) {
            assert_eq!(img.data.len(), img.width * img.height * 3, "image buffer matches its size");
        }
        if let Ok(img) = mjpeg_to_rgb(rest) {
            assert_eq!(img.data.len(), img.width * img.height * 3, "frame buffer matches its size");
        }
        return;
    };
    if rest.len() < 6 {
        return;
    }
    let u16_at = |i: usize| usize::from(u16::from_le_bytes([rest[i], rest[i + 1]]));
    let (width, height, stride) = (u16_at(0), u16_at(2), u16_at(4));
    if let Ok(img) = to_rgb(format, &rest[6..], width, height, stride) {
        assert_eq!((img.width, img.height), (width, height), "{format}: frame size");
        assert_eq!(img.data.len(), width * height * 3, "{format}: frame buffer");
    }
});
