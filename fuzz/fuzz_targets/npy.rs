//! `.npy` bytes -> `data::load_npy_images` and `data::load_npy_labels` (they take a path, so
//! the input goes through a scratch file). A hostile header must be an error, never a panic
//! or an allocation larger than the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let path = scratch::write("npy", "npy", data);
    if let Ok(images) = gradwatch::data::load_npy_images(&path) {
        for img in &images {
            assert_eq!(img.data.len(), img.width * img.height * 3, "image buffer matches its size");
        }
    }
    let _ = gradwatch::data::load_npy_labels(&path);
});
