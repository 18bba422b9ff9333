//! Unit tests of `corrupt`.

use super::*;

fn flat(v: [u8; 3]) -> RgbImage {
    let mut img = RgbImage::zeros(4, 4);
    for y in 0..4 {
        for x in 0..4 {
            img.set_pixel(x, y, v);
        }
    }
    img
}

#[test]
fn names_round_trip_and_errors_list_valid_names() {
    for k in Corruption::ALL {
        assert_eq!(k.name().parse::<Corruption>().ok(), Some(k));
        assert_eq!(k.to_string(), k.name());
    }
    assert_eq!("Lens-Blur".parse::<Corruption>().ok(), Some(Corruption::LensBlur));
    let err = "fog".parse::<Corruption>().err().map(|e| e.to_string()).unwrap_or_default();
    assert!(err.contains("fog") && err.contains("codec_error") && err.contains("lens_blur"), "{err}");
}

#[test]
fn serde_uses_snake_case() {
    let json = serde_json::to_string(&Corruption::CodecError).unwrap_or_default();
    assert_eq!(json, "\"codec_error\"");
    let back: Corruption = serde_json::from_str("\"dirty_lens\"").unwrap_or(Corruption::Noise);
    assert_eq!(back, Corruption::DirtyLens);
}

#[test]
fn point_ops_match_hand_computed_values() {
    let img = flat([100, 40, 200]);
    // exposure level 1: 1.03 x + 6 -> 109, 47.2, 212.
    let e = apply(&img, Corruption::Exposure, 1, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(e.pixel(1, 1), [109, 47, 212]);
    // decolor level 5: luma = 0.299*100 + 0.587*40 + 0.114*200 = 76.18 -> 76 everywhere.
    let d = apply(&img, Corruption::Decolor, 5, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d.pixel(2, 3), [76, 76, 76]);
    // decolor level 1 (25%): 100 + (76.18 - 100) * 0.25 = 94.05 -> 94.
    let d1 = apply(&img, Corruption::Decolor, 1, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(d1.pixel(0, 0)[0], 94);
    // darkening level 1: 255 * 0.93 * (100 / 255)^1.02 = 91.28 -> 91.
    let k = apply(&img, Corruption::Darkening, 1, 0).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(k.pixel(0, 0)[0], 91);
}

#[test]
fn blurs_keep_flat_images_flat() {
    let img = flat([10, 20, 30]);
    for kind in [Corruption::LensBlur, Corruption::GaussianBlur] {
        for level in 1..=5 {
            assert_eq!(apply(&img, kind, level, 0).ok(), Some(img.clone()), "{kind} {level}");
        }
    }
}

#[test]
fn empty_image_passes_through() {
    let img = RgbImage::zeros(0, 5);
    for kind in Corruption::ALL {
        assert_eq!(apply(&img, kind, 3, 1).ok(), Some(img.clone()));
    }
}

#[test]
fn inconsistent_image_is_an_error_not_a_panic() {
    let img = RgbImage { width: 4, height: 4, data: vec![0; 10] };
    for kind in Corruption::ALL {
        assert!(matches!(apply(&img, kind, 2, 0), Err(CorruptError::BadImage { len: 10, .. })));
    }
    assert!(montage(&img, &[Corruption::Noise], 0, 1).is_err());
}

#[test]
fn montage_geometry() {
    let img = flat([255, 0, 0]);
    let m = montage(&img, &[Corruption::Haze, Corruption::Noise], 1, 3).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((m.width, m.height), (6 * 12 + 5 * 2, 2 * 12 + 2));
    assert_eq!(m.pixel(0, 0), [255, 0, 0]); // clean cell
    assert_eq!(m.pixel(12, 0), [MONTAGE_GAP_VALUE; 3]); // gap
    assert!(matches!(montage(&img, &[], 1, 3), Err(CorruptError::NoKinds)));
    assert!(matches!(montage(&img, &[Corruption::Haze], 1, 0), Err(CorruptError::BadScale)));
}
