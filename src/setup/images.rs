//! Step 2 of `gradwatch init`, and the familiar labels of `gradwatch calibrate`: images and
//! their true classes, cut to the rows asked for and checked against each other.

use std::path::Path;

use super::{bad, with_causes, SetupError};
use crate::frame::RgbImage;

/// Fewer images than this cannot calibrate anything.
pub const MIN_IMAGES: usize = 20;

/// Rows `range` (`A..B`, see [`crate::data::parse_rows`]) of `v` (all of it without a range),
/// then the first `limit` of those; [`SetupError::BadInput`] naming `what` when the range
/// runs past the end.
pub fn take_rows<T>(
    mut v: Vec<T>,
    range: Option<&str>,
    limit: Option<usize>,
    what: &str,
) -> Result<Vec<T>, SetupError> {
    if let Some(r) = range {
        let r = crate::data::parse_rows(r, v.len()).map_err(|e| bad(format!("{what}: {e}")))?;
        v.truncate(r.end);
        v.drain(..r.start);
    }
    if let Some(l) = limit {
        v.truncate(l);
    }
    Ok(v)
}

/// Images with their true classes, when known.
pub struct Labelled {
    /// The images.
    pub images: Vec<RgbImage>,
    /// One class index per image.
    pub labels: Option<Vec<usize>>,
}

/// `init`'s images (`.npy` stack, folder or image; rows `rows`) and labels (`.npy` of class
/// indices below `classes`, the same rows), checked against each other: at least
/// [`MIN_IMAGES`], one label per image. Every refusal is [`SetupError::BadInput`].
pub fn load_labelled(
    images: &Path,
    labels: Option<&Path>,
    rows: Option<&str>,
    classes: usize,
) -> Result<Labelled, SetupError> {
    let all = crate::data::load_images(images)
        .map_err(|e| bad(format!("reading {}: {}", images.display(), with_causes(&e))))?;
    if all.is_empty() {
        return Err(bad(format!(
            "{}: no images found (expected a .npy stack, an image folder or an image file)",
            images.display()
        )));
    }
    let imgs = take_rows(all.into_iter().map(|(_, i)| i).collect(), rows, None, "--rows: --images")?;
    let labels = match labels {
        None => None,
        Some(p) => {
            let raw = crate::data::load_npy_labels(p).map_err(|e| bad(format!("reading {}: {e}", p.display())))?;
            let raw = take_rows(raw, rows, None, "--rows: --labels")?;
            if raw.len() != imgs.len() {
                return Err(bad(format!(
                    "{}: {} labels for {} images{}; give one true class per image, in the same order",
                    p.display(),
                    raw.len(),
                    imgs.len(),
                    rows.map(|r| format!(" (rows {r})")).unwrap_or_default()
                )));
            }
            let mut out = Vec::with_capacity(raw.len());
            for (i, &v) in raw.iter().enumerate() {
                match usize::try_from(v) {
                    Ok(c) if c < classes => out.push(c),
                    _ => {
                        return Err(bad(format!(
                            "{}: label {v} at row {i} is not a class of this model (0..{}); labels are class indices \
                             in the order of the model's outputs",
                            p.display(),
                            classes - 1
                        )))
                    }
                }
            }
            Some(out)
        }
    };
    if imgs.len() < MIN_IMAGES {
        return Err(bad(format!(
            "{}: {} images are too few to calibrate; give a few hundred at least",
            images.display(),
            imgs.len()
        )));
    }
    Ok(Labelled { images: imgs, labels })
}

/// `calibrate`'s familiar labels: the `.npy` at `path`, rows `rows` then the first `limit`
/// (as the familiar images were cut), one non-negative class per each of `images`.
pub fn familiar_labels(
    path: &Path,
    rows: Option<&str>,
    limit: Option<usize>,
    images: usize,
) -> Result<Vec<usize>, SetupError> {
    let raw = crate::data::load_npy_labels(path)
        .map_err(|e| bad(format!("reading {}: {}", path.display(), with_causes(&e))))?;
    let raw = take_rows(raw, rows, limit, "--familiar-rows: --familiar-labels")?;
    if raw.len() != images {
        return Err(bad(format!(
            "{}: {} labels for {images} familiar images; give one true class per image",
            path.display(),
            raw.len(),
        )));
    }
    raw.iter()
        .enumerate()
        .map(|(i, &v)| {
            usize::try_from(v).map_err(|_| bad(format!("{}: label {v} at row {i} is negative", path.display())))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_ranges_parse_and_cut() {
        let v: Vec<u32> = (0..10).collect();
        let r = Some("2..8");
        assert_eq!(take_rows(v.clone(), r, None, "x").unwrap(), vec![2, 3, 4, 5, 6, 7]);
        assert_eq!(take_rows(v.clone(), r, Some(2), "x").unwrap(), vec![2, 3]);
        assert_eq!(take_rows(v.clone(), None, Some(3), "x").unwrap(), vec![0, 1, 2]);
        let e = take_rows(v, Some("0..11"), None, "x").unwrap_err();
        assert!(e.is_bad_input() && e.to_string().contains("beyond the 10 rows"), "{e}");
    }
}
