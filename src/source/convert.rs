//! Raw camera buffers to RGB8: YUYV (BT.601), GREY, RGB24 and MJPEG.
//!
//! Every function checks the buffer against the geometry first and returns a [`ConvertError`]
//! for a buffer that is too short, a stride narrower than a row, or a truncated/corrupt JPEG;
//! none of them panics on any input (the JPEG decoder is additionally run under
//! `catch_unwind`, because it is third-party code fed bytes from a USB device).
//!
//! `stride` is V4L2's `bytesperline`: the distance in bytes between the starts of two rows,
//! at least a row's worth of pixels. `stride == 0` means "tightly packed". Bytes after the last
//! row are ignored (drivers round buffer sizes up), but a buffer shorter than
//! `stride * (height - 1) + row_bytes` is an error.

use std::io::Cursor;

use crate::frame::RgbImage;

/// Why a raw buffer could not be converted. The frame is skipped (counted as bad), the stream
/// goes on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConvertError {
    /// The buffer holds fewer bytes than the geometry needs.
    #[error(
        "{format} frame {width}x{height} with stride {stride} needs {needed} bytes but the buffer \
         has {got}: the driver delivered a short frame, or width/height/stride do not match the \
         negotiated format"
    )]
    BufferSize {
        /// Pixel format name.
        format: &'static str,
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
        /// Row stride in bytes.
        stride: usize,
        /// Bytes needed.
        needed: usize,
        /// Bytes present.
        got: usize,
    },
    /// The stride is smaller than one row of pixels.
    #[error("{format} stride {stride} is smaller than one row ({row} bytes); fix bytesperline")]
    Stride {
        /// Pixel format name.
        format: &'static str,
        /// Row stride in bytes.
        stride: usize,
        /// Bytes in one row of pixels.
        row: usize,
    },
    /// Zero width or height, or a size whose byte count overflows.
    #[error("frame size {width}x{height} is empty or too large")]
    Size {
        /// Width in pixels.
        width: usize,
        /// Height in pixels.
        height: usize,
    },
    /// YUYV packs two pixels in four bytes, so the width must be even.
    #[error("YUYV width {0} is odd; YUYV needs an even width")]
    OddWidth(usize),
    /// The MJPEG frame is truncated, corrupt or not a JPEG at all.
    #[error("bad MJPEG frame: {0}")]
    Jpeg(String),
    /// The JPEG decoded fine but not at the negotiated size.
    #[error("MJPEG frame is {got_width}x{got_height}, the stream is {width}x{height}")]
    Dimensions {
        /// Expected width.
        width: usize,
        /// Expected height.
        height: usize,
        /// Decoded width.
        got_width: usize,
        /// Decoded height.
        got_height: usize,
    },
}

/// A camera pixel format this crate can convert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PixelFormat {
    /// Packed 4:2:2 Y'CbCr, `Y0 U Y1 V` (V4L2 `YUYV`), BT.601 limited range.
    Yuyv,
    /// Motion JPEG, one JPEG per frame (V4L2 `MJPG`, also accepted as `JPEG`).
    Mjpeg,
    /// Packed 8-bit RGB (V4L2 `RGB3`).
    Rgb24,
    /// 8-bit luma only (V4L2 `GREY`); replicated to R = G = B.
    Grey,
}

impl PixelFormat {
    /// The V4L2 FourCCs that carry this format, preferred first.
    pub fn fourccs(self) -> &'static [[u8; 4]] {
        const YUYV: [[u8; 4]; 1] = [*b"YUYV"];
        const MJPEG: [[u8; 4]; 2] = [*b"MJPG", *b"JPEG"];
        const RGB24: [[u8; 4]; 1] = [*b"RGB3"];
        const GREY: [[u8; 4]; 1] = [*b"GREY"];
        match self {
            PixelFormat::Yuyv => &YUYV,
            PixelFormat::Mjpeg => &MJPEG,
            PixelFormat::Rgb24 => &RGB24,
            PixelFormat::Grey => &GREY,
        }
    }

    /// The format a V4L2 FourCC carries, if any this crate converts.
    pub fn from_fourcc(fourcc: [u8; 4]) -> Option<Self> {
        [PixelFormat::Yuyv, PixelFormat::Mjpeg, PixelFormat::Rgb24, PixelFormat::Grey]
            .into_iter()
            .find(|f| f.fourccs().contains(&fourcc))
    }

    /// The config name (`yuyv`, `mjpeg`, `rgb24`, `grey`).
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Mjpeg => "mjpeg",
            PixelFormat::Rgb24 => "rgb24",
            PixelFormat::Grey => "grey",
        }
    }
}

impl std::fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Converts one raw frame of `format` to RGB; for MJPEG the decoded size must be
/// `width x height` and `stride` is ignored.
pub fn to_rgb(
    format: PixelFormat,
    buf: &[u8],
    width: usize,
    height: usize,
    stride: usize,
) -> Result<RgbImage, ConvertError> {
    match format {
        PixelFormat::Yuyv => yuyv_to_rgb(buf, width, height, stride),
        PixelFormat::Grey => grey_to_rgb(buf, width, height, stride),
        PixelFormat::Rgb24 => rgb24_to_rgb(buf, width, height, stride),
        PixelFormat::Mjpeg => {
            let img = mjpeg_to_rgb(buf)?;
            if img.width != width || img.height != height {
                return Err(ConvertError::Dimensions { width, height, got_width: img.width, got_height: img.height });
            }
            Ok(img)
        }
    }
}

/// Checks geometry; returns the effective stride.
fn check_layout(
    format: &'static str,
    len: usize,
    width: usize,
    height: usize,
    bytes_per_pixel: usize,
    stride: usize,
) -> Result<usize, ConvertError> {
    let size_err = ConvertError::Size { width, height };
    if width == 0 || height == 0 {
        return Err(size_err);
    }
    let row = width.checked_mul(bytes_per_pixel).ok_or(size_err.clone())?;
    let stride = if stride == 0 { row } else { stride };
    if stride < row {
        return Err(ConvertError::Stride { format, stride, row });
    }
    let needed = stride.checked_mul(height - 1).and_then(|n| n.checked_add(row)).ok_or(size_err.clone())?;
    // The output must fit in memory too.
    width.checked_mul(height).and_then(|n| n.checked_mul(3)).ok_or(size_err)?;
    if len < needed {
        return Err(ConvertError::BufferSize { format, width, height, stride, needed, got: len });
    }
    Ok(stride)
}

#[inline]
fn clamp_u8(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// One BT.601 limited-range Y'CbCr sample to RGB, in the usual 8-bit fixed point
/// (`R = 1.164 (Y-16) + 1.596 (V-128)`, `G = 1.164 (Y-16) - 0.391 (U-128) - 0.813 (V-128)`,
/// `B = 1.164 (Y-16) + 2.018 (U-128)`, coefficients scaled by 256 and rounded).
#[inline]
pub fn yuv_to_rgb_bt601(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = 298 * (y as i32 - 16);
    let d = u as i32 - 128;
    let e = v as i32 - 128;
    [
        clamp_u8((c + 409 * e + 128) >> 8),
        clamp_u8((c - 100 * d - 208 * e + 128) >> 8),
        clamp_u8((c + 516 * d + 128) >> 8),
    ]
}

/// YUYV 4:2:2 (`Y0 U Y1 V` per two pixels) to RGB with BT.601 limited-range coefficients
/// (what UVC webcams send). `width` must be even.
pub fn yuyv_to_rgb(buf: &[u8], width: usize, height: usize, stride: usize) -> Result<RgbImage, ConvertError> {
    if width % 2 == 1 {
        return Err(ConvertError::OddWidth(width));
    }
    let stride = check_layout("YUYV", buf.len(), width, height, 2, stride)?;
    let mut out = Vec::with_capacity(width * height * 3);
    for row in buf.chunks(stride).take(height) {
        for q in row[..width * 2].chunks_exact(4) {
            let (y0, u, y1, v) = (q[0], q[1], q[2], q[3]);
            out.extend_from_slice(&yuv_to_rgb_bt601(y0, u, v));
            out.extend_from_slice(&yuv_to_rgb_bt601(y1, u, v));
        }
    }
    Ok(RgbImage { width, height, data: out })
}

/// 8-bit grey to RGB (R = G = B = Y, full range as delivered).
pub fn grey_to_rgb(buf: &[u8], width: usize, height: usize, stride: usize) -> Result<RgbImage, ConvertError> {
    let stride = check_layout("GREY", buf.len(), width, height, 1, stride)?;
    let mut out = Vec::with_capacity(width * height * 3);
    for row in buf.chunks(stride).take(height) {
        for &v in &row[..width] {
            out.extend_from_slice(&[v, v, v]);
        }
    }
    Ok(RgbImage { width, height, data: out })
}

/// Packed RGB24 to RGB, dropping per-row padding.
pub fn rgb24_to_rgb(buf: &[u8], width: usize, height: usize, stride: usize) -> Result<RgbImage, ConvertError> {
    let stride = check_layout("RGB24", buf.len(), width, height, 3, stride)?;
    let mut out = Vec::with_capacity(width * height * 3);
    for row in buf.chunks(stride).take(height) {
        out.extend_from_slice(&row[..width * 3]);
    }
    Ok(RgbImage { width, height, data: out })
}

/// Huffman tables of ITU T.81 Annex K.3 (K.3, K.4, K.5, K.6): the ones the OpenDML MJPEG spec
/// says a DHT-less frame implies. Each entry: (class << 4 | id, 16 code-length counts, values).
const DEFAULT_HUFFMAN: [(u8, [u8; 16], &[u8]); 4] = [
    (0x00, [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    (
        0x10,
        [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
        &[
            0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61, 0x07, 0x22, 0x71,
            0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72,
            0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37,
            0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59,
            0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
            0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3,
            0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
            0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2,
            0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
    ),
    (0x01, [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
    (
        0x11,
        [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
        &[
            0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61, 0x71, 0x13, 0x22,
            0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1,
            0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36,
            0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58,
            0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
            0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a,
            0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
            0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda,
            0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
    ),
];

/// The standard DHT segment (marker, length and the four Annex K tables) that MJPEG frames
/// without Huffman tables imply.
pub fn default_dht_segment() -> Vec<u8> {
    let body: usize = DEFAULT_HUFFMAN.iter().map(|(_, _, vals)| 1 + 16 + vals.len()).sum();
    let len = body + 2; // the length field counts itself
    let mut seg = Vec::with_capacity(len + 2);
    seg.extend_from_slice(&[0xff, 0xc4, (len >> 8) as u8, len as u8]);
    for (class_id, counts, vals) in DEFAULT_HUFFMAN {
        seg.push(class_id);
        seg.extend_from_slice(&counts);
        seg.extend_from_slice(vals);
    }
    seg
}

/// What a scan of the JPEG header found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegHeader {
    /// Whether a DHT (Huffman table) segment precedes the first scan.
    pub has_dht: bool,
    /// Offset of the first SOS marker.
    pub sos_offset: usize,
    /// Width and height from the SOF segment, if one precedes the scan.
    pub size: Option<(usize, usize)>,
}

/// Walks the marker segments from SOI to the first SOS, checking every length against the
/// buffer, and requires an EOI marker at the end (after any zero padding some UVC cameras add).
/// A frame cut short by the USB transfer fails the EOI check.
pub fn scan_jpeg(buf: &[u8]) -> Result<JpegHeader, ConvertError> {
    let bad = |m: &str| ConvertError::Jpeg(m.to_string());
    if buf.len() < 4 || buf[0] != 0xff || buf[1] != 0xd8 {
        return Err(bad("no SOI marker at the start (not a JPEG)"));
    }
    let end = buf.len() - buf.iter().rev().take_while(|&&b| b == 0).count();
    if end < 4 || buf[end - 2] != 0xff || buf[end - 1] != 0xd9 {
        return Err(bad("no EOI marker at the end (truncated frame)"));
    }
    let mut has_dht = false;
    let mut size = None;
    let mut pos = 2;
    loop {
        if pos + 1 >= end {
            return Err(bad("header ends before the first scan (no SOS marker)"));
        }
        if buf[pos] != 0xff {
            return Err(ConvertError::Jpeg(format!("expected a marker at byte {pos}, found 0x{:02x}", buf[pos])));
        }
        let marker = buf[pos + 1];
        match marker {
            // Fill bytes before a marker.
            0xff => {
                pos += 1;
                continue;
            }
            // Standalone markers: no length field.
            0x01 | 0xd0..=0xd7 => {
                pos += 2;
                continue;
            }
            0xd8 | 0xd9 => {
                return Err(ConvertError::Jpeg(format!(
                    "unexpected marker 0xff{marker:02x} at byte {pos} before the first scan"
                )))
            }
            _ => {}
        }
        if pos + 4 > end {
            return Err(bad("segment length runs past the end"));
        }
        let len = u16::from_be_bytes([buf[pos + 2], buf[pos + 3]]) as usize;
        if len < 2 || pos + 2 + len > end {
            return Err(ConvertError::Jpeg(format!("segment 0xff{marker:02x} at byte {pos} has bad length {len}")));
        }
        match marker {
            0xc4 => has_dht = true,
            // SOF0..SOF15 except DHT (c4), JPG (c8) and DAC (cc).
            0xc0..=0xcf if marker != 0xc8 && marker != 0xcc => {
                if len < 8 {
                    return Err(bad("SOF segment too short"));
                }
                let h = u16::from_be_bytes([buf[pos + 5], buf[pos + 6]]) as usize;
                let w = u16::from_be_bytes([buf[pos + 7], buf[pos + 8]]) as usize;
                size = Some((w, h));
            }
            0xda => return Ok(JpegHeader { has_dht, sos_offset: pos, size }),
            _ => {}
        }
        pos += 2 + len;
    }
}

/// Decodes one MJPEG frame to RGB. A frame without Huffman tables (common on UVC cameras) gets
/// the standard tables inserted before its first scan. Truncated, corrupt or non-JPEG data
/// returns an error; grey JPEGs are replicated to RGB.
pub fn mjpeg_to_rgb(buf: &[u8]) -> Result<RgbImage, ConvertError> {
    let header = scan_jpeg(buf)?;
    if let Some((w, h)) = header.size {
        if w == 0 || h == 0 {
            return Err(ConvertError::Jpeg(format!("SOF declares an empty {w}x{h} image")));
        }
    } else {
        return Err(ConvertError::Jpeg("no SOF segment before the first scan".into()));
    }
    let patched;
    let data = if header.has_dht {
        buf
    } else {
        let dht = default_dht_segment();
        let mut v = Vec::with_capacity(buf.len() + dht.len());
        v.extend_from_slice(&buf[..header.sos_offset]);
        v.extend_from_slice(&dht);
        v.extend_from_slice(&buf[header.sos_offset..]);
        patched = v;
        &patched[..]
    };
    let decoded = std::panic::catch_unwind(|| decode_jpeg(data))
        .map_err(|_| ConvertError::Jpeg("the JPEG decoder panicked on this frame".into()))??;
    Ok(decoded)
}

/// The largest RGB frame an MJPEG frame may decode to; the `image` crate's default allocation
/// limit for image files (512 MiB). The decoder allocates the size the SOF declares before
/// reading any scan data, so a 300-byte frame could otherwise ask for gigabytes (found by
/// fuzzing).
const MAX_DECODED_BYTES: u64 = 512 * 1024 * 1024;

fn decode_jpeg(data: &[u8]) -> Result<RgbImage, ConvertError> {
    use image::ImageDecoder;
    let decoder =
        image::codecs::jpeg::JpegDecoder::new(Cursor::new(data)).map_err(|e| ConvertError::Jpeg(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if u64::from(w) * u64::from(h) * 3 > MAX_DECODED_BYTES {
        return Err(ConvertError::Jpeg(format!("the frame declares {w}x{h} pixels, over 512 MiB as RGB")));
    }
    let img = image::DynamicImage::from_decoder(decoder).map_err(|e| ConvertError::Jpeg(e.to_string()))?;
    let rgb = img.into_rgb8();
    let (w, h) = (rgb.width() as usize, rgb.height() as usize);
    RgbImage::new(w, h, rgb.into_raw())
        .ok_or_else(|| ConvertError::Jpeg("decoder returned a buffer of the wrong size".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bt601_reference_colours() {
        // Hand-computed with the fixed-point formula in yuv_to_rgb_bt601.
        assert_eq!(yuv_to_rgb_bt601(16, 128, 128), [0, 0, 0]);
        // 298*219 + 128 = 65390, >> 8 = 255
        assert_eq!(yuv_to_rgb_bt601(235, 128, 128), [255, 255, 255]);
        // 298*112 + 128 = 33504, >> 8 = 130
        assert_eq!(yuv_to_rgb_bt601(128, 128, 128), [130, 130, 130]);
        // BT.601 red (81, 90, 240): R = (19370 + 45808 + 128) >> 8 = 255,
        // G = (19370 + 3800 - 23296 + 128) >> 8 = 0, B = (19370 - 19608 + 128) >> 8 = -1 -> 0
        assert_eq!(yuv_to_rgb_bt601(81, 90, 240), [255, 0, 0]);
    }

    #[test]
    fn default_dht_has_standard_length() {
        // 4 tables: 4 * 17 bytes of header + 12 + 162 + 12 + 162 values + 2 = 418 (0x01a2).
        let seg = default_dht_segment();
        assert_eq!(&seg[..4], &[0xff, 0xc4, 0x01, 0xa2]);
        assert_eq!(seg.len(), 420);
        for (_, counts, vals) in DEFAULT_HUFFMAN {
            assert_eq!(counts.iter().map(|&c| c as usize).sum::<usize>(), vals.len());
        }
    }

    #[test]
    fn layout_checks() {
        assert!(matches!(grey_to_rgb(&[0; 5], 3, 2, 0), Err(ConvertError::BufferSize { needed: 6, got: 5, .. })));
        assert!(matches!(grey_to_rgb(&[0; 8], 3, 2, 2), Err(ConvertError::Stride { .. })));
        assert!(matches!(grey_to_rgb(&[], 0, 2, 0), Err(ConvertError::Size { .. })));
        assert!(matches!(yuyv_to_rgb(&[0; 12], 3, 2, 0), Err(ConvertError::OddWidth(3))));
        assert!(matches!(rgb24_to_rgb(&[0; 8], usize::MAX / 2, 2, 0), Err(ConvertError::Size { .. })));
        // Stride 4, width 3: the last row needs only 3 bytes, so 7 bytes suffice.
        let img = grey_to_rgb(&[1, 2, 3, 99, 4, 5, 6], 3, 2, 4).unwrap();
        assert_eq!(img.data, vec![1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6]);
    }

    #[test]
    fn scan_rejects_garbage_without_panicking() {
        assert!(scan_jpeg(b"").is_err());
        assert!(scan_jpeg(b"\xff\xd8\xff\xd9").is_err());
        assert!(scan_jpeg(b"\xff\xd8\xff\xe0\xff\xff\xff\xd9").is_err());
        assert!(scan_jpeg(b"\xff\xd8\x00\x00\xff\xd9").is_err());
        assert!(mjpeg_to_rgb(b"not a jpeg at all").is_err());
    }
}
