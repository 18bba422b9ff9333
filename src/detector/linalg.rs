//! Dense symmetric positive-definite linear algebra for the Gaussian detector (d up to ~512:
//! O(d^3) = 1.3e8 flops, a fraction of a second, so no blocking or BLAS).

/// Cholesky factor `L` (lower triangular, row-major `d x d`) with `A = L L^T`.
/// Returns `Err(pivot index)` if `A` is not (numerically) positive definite.
pub(crate) fn cholesky(a: &[f64], d: usize) -> Result<Vec<f64>, usize> {
    let mut l = vec![0.0f64; d * d];
    for j in 0..d {
        let (row_j, _) = l.split_at(j * d + j);
        let row_j = &row_j[j * d..];
        let s: f64 = row_j.iter().map(|v| v * v).sum();
        let diag = a[j * d + j] - s;
        // Relative tolerance: pivots this small are rounding noise, not curvature.
        if diag.is_nan() || diag <= a[j * d + j].abs() * 1e-14 || diag <= 0.0 {
            return Err(j);
        }
        let ljj = diag.sqrt();
        l[j * d + j] = ljj;
        for i in (j + 1)..d {
            let mut s = 0.0;
            for k in 0..j {
                s += l[i * d + k] * l[j * d + k];
            }
            l[i * d + j] = (a[i * d + j] - s) / ljj;
        }
    }
    Ok(l)
}

/// Inverse of `A = L L^T` from its Cholesky factor: `A^-1 = L^-T L^-1`, symmetric.
pub(crate) fn inverse_from_cholesky(l: &[f64], d: usize) -> Vec<f64> {
    // M = L^-1 (lower triangular) by forward substitution, column by column of I.
    let mut m = vec![0.0f64; d * d];
    for c in 0..d {
        for i in c..d {
            let mut s = if i == c { 1.0 } else { 0.0 };
            for k in c..i {
                s -= l[i * d + k] * m[k * d + c];
            }
            m[i * d + c] = s / l[i * d + i];
        }
    }
    // A^-1[i][j] = sum_k M[k][i] M[k][j], k >= max(i, j).
    let mut inv = vec![0.0f64; d * d];
    for i in 0..d {
        for j in 0..=i {
            let mut s = 0.0;
            for k in i..d {
                s += m[k * d + i] * m[k * d + j];
            }
            inv[i * d + j] = s;
            inv[j * d + i] = s;
        }
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_of_hand_matrix() {
        // A = [[4, 2], [2, 3]] -> L = [[2, 0], [1, sqrt(2)]]  (4 = 2^2; 2 = 2*1; 3 = 1 + 2).
        let l = cholesky(&[4.0, 2.0, 2.0, 3.0], 2).unwrap();
        assert_eq!(l[0], 2.0);
        assert_eq!(l[1], 0.0);
        assert_eq!(l[2], 1.0);
        assert!((l[3] - 2f64.sqrt()).abs() < 1e-15);
        // A^-1 = 1/(12 - 4) [[3, -2], [-2, 4]] = [[0.375, -0.25], [-0.25, 0.5]].
        let inv = inverse_from_cholesky(&l, 2);
        let want = [0.375, -0.25, -0.25, 0.5];
        for (a, b) in inv.iter().zip(want) {
            assert!((a - b).abs() < 1e-15, "{inv:?}");
        }
    }

    #[test]
    fn singular_is_rejected() {
        // Rank one: [[1, 1], [1, 1]].
        assert_eq!(cholesky(&[1.0, 1.0, 1.0, 1.0], 2), Err(1));
    }

    #[test]
    fn inverse_times_matrix_is_identity() {
        let d = 6;
        // A = B B^T + I with a fixed B.
        let b: Vec<f64> = (0..d * d).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
        let mut a = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                a[i * d + j] =
                    (0..d).map(|k| b[i * d + k] * b[j * d + k]).sum::<f64>() + if i == j { 1.0 } else { 0.0 };
            }
        }
        let inv = inverse_from_cholesky(&cholesky(&a, d).unwrap(), d);
        for i in 0..d {
            for j in 0..d {
                let p: f64 = (0..d).map(|k| a[i * d + k] * inv[k * d + j]).sum();
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((p - want).abs() < 1e-9, "({i},{j}) = {p}");
            }
        }
    }
}
