//! Unit tests of `detector::mlp`.

use super::*;

#[test]
fn dot_matches_naive() {
    let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
    let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.25).collect();
    let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
    assert!((dot(&a, &b) - naive).abs() < 1e-4);
}

#[test]
fn bce_and_sigmoid_hand_values() {
    // BCE(z=0) = ln 2 for both labels; BCE(z=2, y=1) = ln(1 + e^-2) = 0.126928.
    assert!((bce_logit(0.0, 0.0) - 2f64.ln()).abs() < 1e-12);
    assert!((bce_logit(0.0, 1.0) - 2f64.ln()).abs() < 1e-12);
    assert!((bce_logit(2.0, 1.0) - 0.126_928_011).abs() < 1e-8);
    // Large logits stay finite: BCE(100, 0) = 100 (+ e^-100).
    assert!((bce_logit(100.0, 0.0) - 100.0).abs() < 1e-9);
    assert_eq!(sigmoid(0.0), 0.5);
    assert!(sigmoid(-200.0) >= 0.0 && sigmoid(200.0) <= 1.0);
}

#[test]
fn class_weights_balance() {
    // 2 negatives, 8 positives: 10/(2*2) = 2.5, 10/(2*8) = 0.625; 2*2.5 = 8*0.625 = 5.
    assert_eq!(class_weights([2, 8]), [2.5, 0.625]);
    assert_eq!(class_weights([0, 3]), [0.0, 1.0]);
}

#[test]
fn gradient_matches_finite_differences() {
    // One Adam-free check of the backward pass: compare the analytic gradient that
    // `train` would apply with central differences of the batch loss.
    let (h, p) = (3, 4);
    let mut rng = SplitMix64::new(11);
    let theta: Vec<f32> = (0..Flat::len(h, p)).map(|_| rng.normal() as f32 * 0.7).collect();
    let xs: Vec<f32> = (0..2 * p).map(|_| rng.normal() as f32).collect();
    let ys = [0u8, 1u8];
    let w = [1.5f32, 0.75f32];
    let loss = |th: &[f32]| {
        let net = Flat { h, p, theta: th.to_vec() };
        let mut hid = vec![0.0; h];
        evaluate_flat(&net, &xs, &ys, w, &mut hid).0
    };
    // Analytic gradient from the code `train` uses.
    let net = Flat { h, p, theta: theta.clone() };
    let mut g = vec![0.0f32; theta.len()];
    let mut hid = vec![0.0; h];
    batch_grad(&net, &xs, &ys, &[0, 1], w, &mut g, &mut hid);
    for (i, &gi) in g.iter().enumerate() {
        let mut tp = theta.clone();
        let mut tm = theta.clone();
        tp[i] += 1e-2;
        tm[i] -= 1e-2;
        let fd = (loss(&tp) - loss(&tm)) / 2e-2;
        let gi = f64::from(gi);
        assert!((fd - gi).abs() < 2e-3, "param {i}: fd {fd} analytic {gi}");
    }
}
