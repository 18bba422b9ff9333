//! Dataset and image I/O: `.npy` image stacks and labels, image files and folders. The one
//! place that reads them: the CLI (`score`, `calibrate`, `eval`, `corrupt`) and the daemon's
//! `directory` and `replay` streams use the same loaders, so one file reads the same everywhere.
//!
//! Image folders are listed by one rule ([`list_image_files`]): regular files (symlinks
//! followed) whose extension is one of [`IMAGE_EXTENSIONS`] (any case), not starting with `.`,
//! not recursive, sorted by file name byte-wise. Image files are decoded by content, not by
//! extension, and a decoder panic is an error, never a crash.
//!
//! `.npy` files are read whole and their header is checked against the file size before any
//! array is allocated, so a truncated or hostile file is an error, never a huge allocation.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, IxDyn};
use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

use crate::frame::RgbImage;

/// File name extensions (lower case) that [`list_image_files`] treats as images.
pub const IMAGE_EXTENSIONS: [&str; 5] = ["png", "jpg", "jpeg", "ppm", "pnm"];

/// Rows of GTSRB's `test_images.npy` the shipped calibrations are fitted on (`0..6315`, the
/// first half; the test set's order is random). Their familiar images never appear in an
/// evaluation or benchmark of the shipped calibration.
pub const GTSRB_TEST_CALIB_ROWS: &str = "0..6315";
/// The other half of GTSRB test: what evaluations and benchmarks of the shipped calibrations
/// draw from.
pub const GTSRB_TEST_EVAL_ROWS: &str = "6315..";

/// Parses a row range `A..B` or `A..` (to the end) of a set of `total` rows; the range must
/// be non-empty and within the set.
pub fn parse_rows(s: &str, total: usize) -> Result<std::ops::Range<usize>, String> {
    let bad = || format!("rows '{s}': expected A..B or A.. (e.g. 0..6315)");
    let (a, b) = s.trim().split_once("..").ok_or_else(bad)?;
    let a: usize = a.trim().parse().map_err(|_| bad())?;
    let b: usize = if b.trim().is_empty() { total } else { b.trim().parse().map_err(|_| bad())? };
    if a >= b || b > total {
        return Err(format!("rows '{s}': {a}..{b} is empty or beyond the {total} rows of the set"));
    }
    Ok(a..b)
}

/// Why a dataset or image could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// The file or folder could not be opened, read or written.
    #[error("{path}: {source}; check that the path exists and is readable (or writable)")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not a valid `.npy` file (bad magic, bad header, truncated, wrong dtype ...).
    #[error("{path}: not a usable .npy file: {reason}; write it with numpy.save: images as uint8 [N, H, W, 3], labels as integers [N]")]
    Npy {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A `.npy` array of the wrong shape.
    #[error("{path}: array has shape {shape:?}, expected {expected}; reshape it with numpy before saving")]
    Shape {
        /// The file.
        path: PathBuf,
        /// The shape found.
        shape: Vec<usize>,
        /// What was expected, in words.
        expected: &'static str,
    },
    /// An image file that could not be decoded.
    #[error("{path}: cannot decode image: {source}; use a PNG, JPEG or PPM/PNM file")]
    Image {
        /// The file.
        path: PathBuf,
        /// The decoder's error.
        #[source]
        source: image::ImageError,
    },
    /// The image decoder panicked on a file (a decoder bug on hostile input); the file is
    /// treated as undecodable.
    #[error("{path}: the image decoder crashed on this file; it is corrupt or hostile, remove it")]
    DecoderPanicked {
        /// The file.
        path: PathBuf,
    },
    /// Images of different sizes where one array needs them equal.
    #[error(
        "{path}: image {index} is {got_w}x{got_h} but image 0 is {want_w}x{want_h}; resize them to one size first"
    )]
    MixedSizes {
        /// The file being written.
        path: PathBuf,
        /// Index of the first odd image.
        index: usize,
        /// Its width.
        got_w: usize,
        /// Its height.
        got_h: usize,
        /// Width of image 0.
        want_w: usize,
        /// Height of image 0.
        want_h: usize,
    },
    /// Nothing to write.
    #[error("{path}: no images to save; an .npy stack needs at least one image to know its size")]
    NoImages {
        /// The file that was to be written.
        path: PathBuf,
    },
    /// An image to save whose buffer does not match its size, or too large for the format.
    #[error(
        "{path}: image claims {width}x{height} with {len} bytes; it needs width*height*3 bytes and sides below 2^32"
    )]
    BadImage {
        /// The file that was to be written.
        path: PathBuf,
        /// Claimed width.
        width: usize,
        /// Claimed height.
        height: usize,
        /// Buffer length.
        len: usize,
    },
    /// A path that is neither a folder, an `.npy` file nor an image file.
    #[error("{path}: not a folder, .npy file or image file (.png/.jpg/.jpeg/.ppm/.pnm); pass one of those")]
    UnknownFormat {
        /// The path.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io { path: path.to_path_buf(), source }
}

fn npy_err(path: &Path, reason: impl std::fmt::Display) -> DataError {
    DataError::Npy { path: path.to_path_buf(), reason: reason.to_string() }
}

/// Element types this module reads from `.npy`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    U8,
    I32,
    I64,
}

/// Refuses a header length field longer than the file: the `.npy` header parser allocates
/// that many bytes before reading them (up to 4 GiB for format 2 and 3; found by fuzzing).
fn check_header_len(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || !bytes.starts_with(b"\x93NUMPY") {
        return Ok(()); // the parser reports a bad magic string itself
    }
    let (len, start) = match bytes[6] {
        1 if bytes.len() >= 10 => (usize::from(u16::from_le_bytes([bytes[8], bytes[9]])), 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        _ => return Ok(()),
    };
    if len > bytes.len() - start {
        return Err(format!(
            "header length {len} is past the end of the file ({} bytes; truncated or corrupt)",
            bytes.len()
        ));
    }
    Ok(())
}

/// Reads the file, parses its header and checks that the data section is exactly as long as
/// the header says. Returns the bytes, the header and the dtype.
fn read_checked(path: &Path) -> Result<(Vec<u8>, Header, Dtype), DataError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    check_header_len(&bytes).map_err(|reason| npy_err(path, reason))?;
    let mut cur = Cursor::new(&bytes[..]);
    let header = Header::from_reader(&mut cur).map_err(|e| npy_err(path, e))?;
    let desc = header.type_descriptor.to_string();
    let desc = desc.trim_matches(|c| c == '\'' || c == '"');
    let (dtype, size) = match desc {
        "|u1" => (Dtype::U8, 1),
        "<i4" | ">i4" => (Dtype::I32, 4),
        "<i8" | ">i8" => (Dtype::I64, 8),
        other => return Err(npy_err(path, format!("dtype {other} is not uint8, int32 or int64"))),
    };
    let len = header
        .shape
        .iter()
        .try_fold(size, |acc: usize, &d| acc.checked_mul(d))
        .ok_or_else(|| npy_err(path, format!("shape {:?} overflows", header.shape)))?;
    let have = bytes.len() - cur.position() as usize;
    if have != len {
        return Err(npy_err(
            path,
            format!(
                "header says {len} data bytes for shape {:?} but the file holds {have} (truncated or corrupt)",
                header.shape
            ),
        ));
    }
    Ok((bytes, header, dtype))
}

/// Loads uint8 images from a `.npy` array `[N, H, W, 3]` (or `[H, W, 3]`, one image), as NumPy
/// writes them (C or Fortran order).
pub fn load_npy_images(path: &Path) -> Result<Vec<RgbImage>, DataError> {
    let (bytes, header, dtype) = read_checked(path)?;
    if dtype != Dtype::U8 {
        return Err(npy_err(path, "images must be uint8"));
    }
    let shape = header.shape.clone();
    let bad_shape = || DataError::Shape {
        path: path.to_path_buf(),
        shape: shape.clone(),
        expected: "[N, H, W, 3] or [H, W, 3] uint8",
    };
    let arr = ArrayD::<u8>::read_npy(&bytes[..]).map_err(|e| npy_err(path, e))?;
    let arr = match arr.ndim() {
        3 => arr.insert_axis(Axis(0)),
        4 => arr,
        _ => return Err(bad_shape()),
    };
    let sh = arr.shape().to_vec();
    if sh[3] != 3 {
        return Err(bad_shape());
    }
    let (h, w) = (sh[1], sh[2]);
    let images = arr
        .axis_iter(Axis(0))
        .map(|img| RgbImage { width: w, height: h, data: img.iter().copied().collect() })
        .collect();
    Ok(images)
}

/// Loads class labels from a 1-D `.npy` array of uint8, int32 or int64.
pub fn load_npy_labels(path: &Path) -> Result<Vec<i64>, DataError> {
    let (bytes, header, dtype) = read_checked(path)?;
    if header.shape.len() != 1 {
        return Err(DataError::Shape {
            path: path.to_path_buf(),
            shape: header.shape,
            expected: "[N] (one label per image)",
        });
    }
    let labels = match dtype {
        Dtype::U8 => ArrayD::<u8>::read_npy(&bytes[..]).map(|a| a.iter().map(|&v| i64::from(v)).collect()),
        Dtype::I32 => ArrayD::<i32>::read_npy(&bytes[..]).map(|a| a.iter().map(|&v| i64::from(v)).collect()),
        Dtype::I64 => ArrayD::<i64>::read_npy(&bytes[..]).map(|a| a.iter().copied().collect()),
    };
    labels.map_err(|e| npy_err(path, e))
}

/// Saves images as one uint8 `.npy` array `[N, H, W, 3]`; all images must share one size.
pub fn save_npy_images(path: &Path, images: &[RgbImage]) -> Result<(), DataError> {
    let first = images.first().ok_or_else(|| DataError::NoImages { path: path.to_path_buf() })?;
    let (w, h) = (first.width, first.height);
    let mut data = Vec::with_capacity(images.len() * w * h * 3);
    for (index, img) in images.iter().enumerate() {
        if img.width != w || img.height != h {
            return Err(DataError::MixedSizes {
                path: path.to_path_buf(),
                index,
                got_w: img.width,
                got_h: img.height,
                want_w: w,
                want_h: h,
            });
        }
        data.extend_from_slice(&img.data);
    }
    let arr = ArrayD::from_shape_vec(IxDyn(&[images.len(), h, w, 3]), data).map_err(|e| npy_err(path, e))?;
    let file = std::fs::File::create(path).map_err(io_err(path))?;
    let mut writer = std::io::BufWriter::new(file);
    arr.write_npy(&mut writer).map_err(|e| npy_err(path, e))?;
    use std::io::Write;
    writer.flush().map_err(io_err(path))
}

/// Loads a PNG, JPEG or PPM/PNM file (format from its content), any colour type, as RGB8.
pub fn load_image(path: &Path) -> Result<RgbImage, DataError> {
    let decode = || -> Result<RgbImage, DataError> {
        let reader = image::ImageReader::open(path).map_err(io_err(path))?;
        let reader = reader.with_guessed_format().map_err(io_err(path))?;
        let img = reader.decode().map_err(|source| DataError::Image { path: path.to_path_buf(), source })?;
        let rgb = img.into_rgb8();
        let (w, h) = (rgb.width() as usize, rgb.height() as usize);
        Ok(RgbImage { width: w, height: h, data: rgb.into_raw() })
    };
    // A hostile file must not take the daemon down, even through a decoder bug.
    std::panic::catch_unwind(decode).unwrap_or_else(|_| Err(DataError::DecoderPanicked { path: path.to_path_buf() }))
}

/// One entry of [`load_image_dir`]: the file name and the decoded image or why it failed.
pub type DirEntryImage = (String, Result<RgbImage, DataError>);

/// Whether `path` has one of [`IMAGE_EXTENSIONS`] (case-insensitive).
fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// The image files of `dir` in play order, by the module's one listing rule: regular files
/// (symlinks followed) with an image extension, not hidden, not recursive, sorted by file name
/// byte-wise (so number frames with zero padding: `0001.png`).
pub fn list_image_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let path = entry.path();
        // Hidden files are editors' and writers' temporaries (`.0001.png.swp`, `.tmp`).
        let hidden = entry.file_name().to_string_lossy().starts_with('.');
        // `metadata` follows symlinks, so a linked image counts and a linked folder does not.
        if !hidden && has_image_extension(&path) && std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// The file name of `path` as text (empty when it has none).
pub fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The image files of `dir` ([`list_image_files`]), each decoded or its error: one bad file
/// does not fail the folder.
pub fn load_image_dir(dir: &Path) -> Result<Vec<DirEntryImage>, DataError> {
    Ok(list_image_files(dir)?.into_iter().map(|path| (file_name(&path), load_image(&path))).collect())
}

/// Saves an RGB8 image as PNG.
pub fn save_png(path: &Path, img: &RgbImage) -> Result<(), DataError> {
    let bad =
        || DataError::BadImage { path: path.to_path_buf(), width: img.width, height: img.height, len: img.data.len() };
    // The encoder panics on a buffer of the wrong length; the fields are public, so check.
    if img.width.checked_mul(img.height).and_then(|n| n.checked_mul(3)) != Some(img.data.len()) {
        return Err(bad());
    }
    let (Ok(w), Ok(h)) = (u32::try_from(img.width), u32::try_from(img.height)) else {
        return Err(bad());
    };
    image::save_buffer_with_format(path, &img.data, w, h, image::ExtendedColorType::Rgb8, image::ImageFormat::Png)
        .map_err(|source| match source {
            image::ImageError::IoError(source) => DataError::Io { path: path.to_path_buf(), source },
            source => DataError::Image { path: path.to_path_buf(), source },
        })
}

/// Loads named images from a `.npy` stack (names `"0"`, `"1"`, ...), a folder (names = file
/// names; undecodable files are skipped with a warning) or a single image file.
pub fn load_images(path: &Path) -> Result<Vec<(String, RgbImage)>, DataError> {
    let is_npy = path.extension().and_then(|e| e.to_str()).is_some_and(|e| e.eq_ignore_ascii_case("npy"));
    if path.is_dir() {
        let mut out = Vec::new();
        for (name, img) in load_image_dir(path)? {
            match img {
                Ok(img) => out.push((name, img)),
                Err(e) => log::warn!("skipping {name}: {e}"),
            }
        }
        Ok(out)
    } else if is_npy {
        Ok(load_npy_images(path)?.into_iter().enumerate().map(|(i, img)| (i.to_string(), img)).collect())
    } else if has_image_extension(path) {
        Ok(vec![(file_name(path), load_image(path)?)])
    } else if !path.exists() {
        Err(DataError::Io { path: path.to_path_buf(), source: std::io::Error::from(std::io::ErrorKind::NotFound) })
    } else {
        Err(DataError::UnknownFormat { path: path.to_path_buf() })
    }
}

#[cfg(test)]
mod rows_tests {
    use super::parse_rows;

    #[test]
    fn parses_ranges_and_refuses_bad_ones() {
        assert_eq!(parse_rows("0..6315", 12630), Ok(0..6315));
        assert_eq!(parse_rows("6315..", 12630), Ok(6315..12630));
        assert_eq!(parse_rows(" 2 .. 5 ", 10), Ok(2..5));
        for bad in ["", "5", "a..b", "5..5", "6..5", "0..11", "-1..3"] {
            assert!(parse_rows(bad, 10).is_err(), "{bad}");
        }
    }
}
