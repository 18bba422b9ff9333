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

fn buf(w: usize, h: usize, f: impl Fn(usize, usize) -> f32) -> Buf {
    let mut d = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            d.extend([f(x, y); 3]);
        }
    }
    Buf { w, h, d }
}

#[test]
fn colour_ops_match_hand_computed_values() {
    let img = flat([100, 40, 200]);
    // saturate p = 1: luma 76.18; 76.18 + 2 (100 - 76.18) = 123.82 -> 124;
    // 76.18 + 2 (40 - 76.18) = 3.82 -> 4; 76.18 + 2 (200 - 76.18) = 323.8 -> 255.
    assert_eq!(&extra::saturate(&img.data, 1.0)[..3], &[124, 4, 255]);
    // contrast p = 0.5 on black and 200-grey pixels: mean luma 100 -> 50 and 150.
    let two = [0u8, 0, 0, 200, 200, 200];
    assert_eq!(extra::contrast(&two, 0.5), vec![50, 50, 50, 150, 150, 150]);
    // white balance: green untouched, red and blue pushed apart.
    let wb = extra::white_balance(&img.data, 0.3, 5);
    assert_eq!(wb[1], 40);
    assert!((wb[0] > 100) != (wb[2] > 200) && wb[0] != 100 && wb[2] != 200, "{:?}", &wb[..3]);
    // hue rotation keeps a grey pixel grey.
    assert_eq!(extra::hue_shift(&[90, 90, 90], 60.0, 1), vec![90, 90, 90]);
}

#[test]
fn vignetting_by_hand() {
    // 4x4 of 100, p = 0.5, corner radius^2 = 8: pixel (1,1) at r^2 = 0.5 -> gain 1 - 0.5/16
    // = 0.96875 -> 96.875 -> 97; pixel (0,0) at r^2 = 4.5 -> 1 - 0.5 * 0.5625 = 0.71875 -> 72.
    let mut b = buf(4, 4, |_, _| 100.0);
    extra::vignetting(&mut b, 0.5);
    let u = b.to_u8();
    assert_eq!((u[(4 + 1) * 3], u[0]), (97, 72));
}

#[test]
fn resampling_averages_blocks() {
    // A 0/200 checker: every 2x2 block averages to 100.
    let checker = buf(4, 4, |x, y| if (x + y) % 2 == 0 { 0.0 } else { 200.0 });
    assert!(extra::pixelate(&checker, 2.0, 1.0).d.iter().all(|&v| (v - 100.0).abs() < 1e-4));
    // blocking with 2x2 blocks (8 px at scale 1/4), p = 1: the DC only.
    assert!(extra::blocking(&checker, 1.0, 0.25).d.iter().all(|&v| (v - 100.0).abs() < 1e-4));
    // Half-way: 0 -> 50, 200 -> 150.
    let half = extra::blocking(&checker, 0.5, 0.25);
    assert_eq!((half.d[0], half.d[3]), (50.0, 150.0));
    // downscale by 2 of the checker: flat 100 (bilinear of flat cells).
    assert!(extra::downscale(&checker, 2.0).d.iter().all(|&v| (v - 100.0).abs() < 1e-3));
}

#[test]
fn geometric_ops_are_identities_at_zero_strength() {
    let b = buf(7, 5, |x, y| (x * 31 + y * 17) as f32);
    assert_eq!(extra::zoom(&b, 1.0, 3).d, b.d);
    assert_eq!(extra::shear(&b, 0.0, 3).d, b.d);
    assert_eq!(extra::rotate(&b, 0.0, 3).d, b.d);
    assert_eq!(extra::chromatic_aberration(&b, 0.0).d, b.d);
    assert_eq!(extra::motion_blur(&b, 0.0, 1.0, 3).d.len(), b.d.len());
    // Perspective leaves the centre pixel of an odd-sized image in place.
    let p = extra::perspective(&b, 0.5, 9);
    let c = (2 * 7 + 3) * 3;
    assert!((p.d[c] - b.d[c]).abs() < 1e-3);
}

#[test]
fn sensor_ops_by_hand() {
    let img = flat([100, 40, 200]);
    assert_eq!(extra::impulse(&img.data, 0.0, 1), img.data);
    let all = extra::impulse(&[77u8; 3000], 1.0, 1);
    let zeros = all.iter().filter(|&&v| v == 0).count();
    assert!(all.iter().all(|&v| v == 0 || v == 255) && (1300..1700).contains(&zeros), "{zeros}");
    assert_eq!(extra::speckle(&[0u8; 30], 0.9, 2), vec![0u8; 30], "multiplicative: black stays black");
    for seed in 0..50 {
        let q = extra::random_quality(20.0, seed);
        assert!((12..=28).contains(&q), "{q}");
    }
}

#[test]
fn families_cover_the_issue_and_every_type_has_one() {
    use std::collections::BTreeSet;
    let broad: BTreeSet<Family> =
        Corruption::ALL.iter().filter(|k| k.strengths().is_some()).map(|k| k.family()).collect();
    assert_eq!(broad.len(), 8, "{broad:?}");
    assert!(Corruption::ALL.iter().filter(|k| k.strengths().is_some()).count() >= 8);
    for f in Family::ALL {
        assert!(!f.members().is_empty(), "{f} has no type");
        assert_eq!(f.name().parse::<Family>().ok(), Some(f));
    }
    assert_eq!(Corruption::LEGACY.iter().filter(|k| k.strengths().is_some()).count(), 0);
    assert_eq!(&Corruption::ALL[..10], &Corruption::LEGACY[..], "legacy types keep their index (seeds)");
    for k in Corruption::ALL {
        if let Some(t) = k.strengths() {
            // Strengths grow with the level, except JPEG quality, which falls.
            let up = t.windows(2).all(|w| w[1] > w[0]);
            let down = t.windows(2).all(|w| w[1] < w[0]);
            assert!(up || (down && k == Corruption::JpegRandom), "{k}: {t:?}");
        }
    }
}

#[test]
fn levels_are_the_strength_table() {
    let img = flat([120, 60, 30]);
    for k in Corruption::ALL {
        match k.strengths() {
            Some(t) => {
                for level in 1..=5u8 {
                    assert_eq!(
                        apply(&img, k, level, 3).ok(),
                        apply_strength(&img, k, t[usize::from(level - 1)], 3).ok(),
                        "{k} {level}"
                    );
                }
            }
            None => assert!(apply_strength(&img, k, 1.0, 3).is_err()),
        }
    }
    assert!(apply_strength(&img, Corruption::Zoom, f32::NAN, 0).is_err());
}
