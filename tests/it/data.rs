//! Dataset I/O: `.npy` stacks and labels (fixtures written to NumPy's format), image files and
//! folders, and bad input that must be an error rather than a panic.

use std::path::{Path, PathBuf};

use gradwatch::data::{
    load_image, load_image_dir, load_images, load_npy_images, load_npy_labels, save_npy_images, save_png, DataError,
};
use gradwatch::frame::RgbImage;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/data").join(name)
}

fn pattern(w: usize, h: usize, k: u8) -> RgbImage {
    let data = (0..w * h * 3).map(|i| (i as u8).wrapping_mul(31).wrapping_add(k)).collect();
    RgbImage::new(w, h, data).unwrap_or_else(|| panic!("bad test image"))
}

#[test]
fn npy_stack_layout_matches_numpy_c_order() {
    let imgs = load_npy_images(&fixture("images_2x3x2.npy")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(imgs.len(), 2);
    for (n, img) in imgs.iter().enumerate() {
        assert_eq!((img.width, img.height), (2, 3));
        for y in 0..3 {
            for x in 0..2 {
                // The fixture holds value (n*18 + y*6 + x*3 + c) * 7 mod 256 at [n, y, x, c].
                let want = [0, 1, 2].map(|c| (((n * 18 + y * 6 + x * 3 + c) * 7) % 256) as u8);
                assert_eq!(img.pixel(x, y), want, "image {n} pixel ({x},{y})");
            }
        }
    }
}

#[test]
fn single_hwc_image_in_fortran_order() {
    let imgs = load_npy_images(&fixture("one_image_fortran.npy")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(imgs.len(), 1);
    let img = &imgs[0];
    assert_eq!((img.width, img.height), (2, 3));
    // a[y, x, c] = y*20 + x*5 + c, stored column-major.
    assert_eq!(img.pixel(1, 2), [45, 46, 47]);
    assert_eq!(img.pixel(0, 1), [20, 21, 22]);
}

#[test]
fn npy_round_trip() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("x.npy");
    let imgs = vec![pattern(5, 3, 0), pattern(5, 3, 7), pattern(5, 3, 200)];
    save_npy_images(&path, &imgs).unwrap_or_else(|e| panic!("{e}"));
    let back = load_npy_images(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(back, imgs);
    let named = load_images(&path).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = named.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["0", "1", "2"]);
    assert_eq!(named[2].1, imgs[2]);
}

#[test]
fn saving_mixed_sizes_or_nothing_is_an_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("x.npy");
    let err = save_npy_images(&path, &[pattern(2, 2, 0), pattern(3, 2, 0)]);
    assert!(matches!(err, Err(DataError::MixedSizes { index: 1, .. })), "{err:?}");
    assert!(matches!(save_npy_images(&path, &[]), Err(DataError::NoImages { .. })));
}

#[test]
fn labels_of_each_integer_width() {
    let l = |n: &str| load_npy_labels(&fixture(n)).unwrap_or_else(|e| panic!("{n}: {e}"));
    assert_eq!(l("labels_u1.npy"), [0, 1, 2, 42]);
    assert_eq!(l("labels_i4.npy"), [-1, 7, 100_000]);
    assert_eq!(l("labels_i8.npy"), [5, 1 << 40]);
    let err = load_npy_labels(&fixture("labels_2d.npy"));
    assert!(matches!(err, Err(DataError::Shape { .. })), "{err:?}");
}

#[test]
fn bad_npy_files_are_errors_that_name_the_file() {
    for name in
        ["truncated.npy", "garbage.npy", "huge_header.npy", "float_images.npy", "gray_images.npy", "missing.npy"]
    {
        let err = match load_npy_images(&fixture(name)) {
            Ok(v) => panic!("{name}: loaded {} images", v.len()),
            Err(e) => e,
        };
        let msg = err.to_string();
        println!("{msg}");
        assert!(msg.contains(name), "{name}: message does not name the file: {msg}");
    }
    // Labels go through the same checks.
    assert!(load_npy_labels(&fixture("truncated.npy")).is_err());
    assert!(load_npy_labels(&fixture("float_images.npy")).is_err());
}

#[test]
fn truncated_file_written_by_us_is_an_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("x.npy");
    save_npy_images(&path, &[pattern(4, 4, 1)]).unwrap_or_else(|e| panic!("{e}"));
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{e}"));
    for cut in [0, 5, 20, bytes.len() - 1] {
        std::fs::write(&path, &bytes[..cut]).unwrap_or_else(|e| panic!("{e}"));
        assert!(load_npy_images(&path).is_err(), "cut at {cut} loaded");
    }
    let mut extra = bytes.clone();
    extra.push(0);
    std::fs::write(&path, &extra).unwrap_or_else(|e| panic!("{e}"));
    assert!(load_npy_images(&path).is_err(), "trailing byte accepted");
}

#[test]
fn image_dir_in_name_order_with_bad_files_as_entries() {
    let entries = load_image_dir(&fixture("dir")).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = entries.iter().map(|(n, _)| n.as_str()).collect();
    // notes.txt is not an image extension and is not listed; the upper-case .PNG is.
    assert_eq!(names, ["a_gray.png", "b_broken.png", "c_rgba.PNG", "d_tiny.ppm"]);
    let get = |i: usize| entries[i].1.as_ref().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(get(0).pixel(1, 0), [200, 200, 200]); // grey expands to RGB
    assert!(matches!(&entries[1].1, Err(DataError::Image { .. })));
    assert_eq!(get(2).pixel(1, 0), [0, 0, 255]); // alpha dropped
    assert_eq!(get(3).pixel(1, 1), [250, 251, 252]);

    // load_images skips the broken file and keeps the order.
    let ok = load_images(&fixture("dir")).unwrap_or_else(|e| panic!("{e}"));
    let names: Vec<&str> = ok.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["a_gray.png", "c_rgba.PNG", "d_tiny.ppm"]);
}

#[test]
fn score_and_the_directory_stream_list_the_same_files() {
    // `gradwatch score DIR` reads load_image_dir; a `kind = "directory"` stream plays list_files.
    let scored: Vec<String> =
        load_image_dir(&fixture("dir")).unwrap_or_else(|e| panic!("{e}")).into_iter().map(|(n, _)| n).collect();
    let played: Vec<String> = gradwatch::source::list_files(&fixture("dir"))
        .unwrap_or_else(|e| panic!("{e}"))
        .iter()
        .map(|p| gradwatch::data::file_name(p))
        .collect();
    assert_eq!(scored, played);
}

#[test]
fn png_and_jpeg_round_trips() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let img = pattern(7, 5, 3);
    let png = dir.path().join("p.png");
    save_png(&png, &img).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(load_image(&png).unwrap_or_else(|e| panic!("{e}")), img);

    // A JPEG named .png still loads: the format comes from the content.
    let flat = RgbImage::new(16, 16, vec![120; 16 * 16 * 3]).unwrap_or_else(|| panic!("bad image"));
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 95)
        .encode(&flat.data, 16, 16, image::ExtendedColorType::Rgb8)
        .unwrap_or_else(|e| panic!("{e}"));
    let jpg = dir.path().join("j.png");
    std::fs::write(&jpg, &bytes).unwrap_or_else(|e| panic!("{e}"));
    let back = load_image(&jpg).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((back.width, back.height), (16, 16));
    assert!(back.data.iter().all(|&v| v.abs_diff(120) <= 2));
}

#[test]
fn load_images_single_file_and_bad_paths() {
    let one = load_images(&fixture("dir/d_tiny.ppm")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].0, "d_tiny.ppm");
    assert!(matches!(load_images(&fixture("dir/notes.txt")), Err(DataError::UnknownFormat { .. })));
    assert!(matches!(load_images(&fixture("nope")), Err(DataError::Io { .. })));
    assert!(matches!(load_image_dir(&fixture("nope")), Err(DataError::Io { .. })));
    assert!(matches!(load_image(&fixture("dir/b_broken.png")), Err(DataError::Image { .. })));
}

#[test]
fn saving_an_inconsistent_image_is_an_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let img = RgbImage { width: 3, height: 3, data: vec![0; 5] };
    let png = save_png(&dir.path().join("bad.png"), &img);
    assert!(matches!(png, Err(DataError::BadImage { len: 5, .. })), "{png:?}");
    assert!(save_npy_images(&dir.path().join("bad.npy"), &[img]).is_err());
}
