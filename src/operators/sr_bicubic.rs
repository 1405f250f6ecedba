//! Super-resolution by separable Keys bicubic downsampling (docs/operators.md §2.4; diffusion `bicubic4`,
//! flow `sr4`, class `SRConv`), for any integer factor f and any image size divisible by f.
//!
//! 1-D matrix A ∈ ℝ^{(n/f)×n}: output r is centred at c = f·r + (f − 1)/2 and takes the input pixels j
//! with |j − c| < 2f, weighted by the Keys cubic W((j − c)/f) (a = −0.5) normalised to sum 1
//! ([`bicubic_taps`]; for f = 4 these are the 16 taps of §2.4). Out-of-range indices are reflected
//! symmetrically (j < 0 → −j − 1, j ≥ n → 2n − 1 − j, repeated for images smaller than the kernel) and
//! weights landing on the same pixel accumulate. The 2-D operator is Y_c = A_h X_c A_wᵀ, factorized and
//! thresholded by [`Separable`]: the operator *is* the thresholded factorization (so every law holds
//! exactly); with threshold 0 it equals the direct bicubic formula.
//!
//! The official code stores the taps in float32; here they are exact in f64.

use ndarray::Array2;

use super::separable::{delegate_to_separable, Separable};
use super::{validate_x_shape, OperatorKind};
use crate::error::{Error, Result};

/// Keys cubic convolution kernel with a = −0.5.
pub fn keys(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x <= 1.0 {
        (A + 2.0) * x * x * x - (A + 3.0) * x * x + 1.0
    } else if x < 2.0 {
        A * x * x * x - 5.0 * A * x * x + 8.0 * A * x - 4.0 * A
    } else {
        0.0
    }
}

/// Taps and the offset of the first tap relative to f·r (the first input pixel of output r's block).
fn taps_with_offset(f: usize) -> (isize, Vec<f64>) {
    let fi = f as isize;
    let centre = (f as f64 - 1.0) / 2.0;
    let mut first = None;
    let mut taps = Vec::with_capacity(4 * f);
    for o in -3 * fi..=3 * fi {
        let x = (o as f64 - centre) / f as f64;
        if x.abs() < 2.0 {
            first.get_or_insert(o);
            taps.push(keys(x));
        }
    }
    let sum: f64 = taps.iter().sum();
    taps.iter_mut().for_each(|t| *t /= sum);
    (first.unwrap_or(0), taps)
}

/// Normalised bicubic taps for factor `scale`: W((j − c)/scale) for the input pixels j with
/// |j − c| < 2·scale around an output centre c, normalised to sum 1. That is 4·scale taps for even scale
/// and 4·scale − 1 for odd scale (the end points, where W = 0, are dropped). Empty for scale 0.
pub fn bicubic_taps(scale: usize) -> Vec<f64> {
    if scale == 0 {
        return Vec::new();
    }
    taps_with_offset(scale).1
}

/// Symmetric reflection of index j into [0, n): j < 0 → −j − 1, j ≥ n → 2n − 1 − j, repeated.
pub(crate) fn reflect(j: isize, n: usize) -> usize {
    let p = 2 * n as isize;
    let k = j.rem_euclid(p);
    if k >= n as isize {
        (p - 1 - k) as usize
    } else {
        k as usize
    }
}

/// The 1-D bicubic downsampling matrix A ∈ ℝ^{(n/f)×n} with reflect padding and accumulation.
fn bicubic_matrix(n: usize, f: usize) -> Array2<f64> {
    let (first, taps) = taps_with_offset(f);
    let m = n / f;
    let mut a = Array2::<f64>::zeros((m, n));
    for r in 0..m {
        let start = (f * r) as isize + first;
        for (t, &w) in taps.iter().enumerate() {
            a[[r, reflect(start + t as isize, n)]] += w;
        }
    }
    a
}

/// Separable bicubic downsampling by an integer factor (see the module docs).
#[derive(Debug, Clone)]
pub struct SrBicubic {
    inner: Separable,
    scale: usize,
}

impl SrBicubic {
    /// Operator for images of shape (C, H, W) with H and W divisible by `scale` (≥ 1); 1-D singular values
    /// below `threshold` (≥ 0; default [`super::DEFAULT_SVD_THRESHOLD`]) are set to 0.
    pub fn new(x_shape: [usize; 3], scale: usize, threshold: f64) -> Result<Self> {
        validate_x_shape("sr-bicubic", x_shape)?;
        if scale == 0 {
            return Err(Error::invalid("sr-bicubic scale", scale, "an integer >= 1"));
        }
        let [c, h, w] = x_shape;
        for (what, n) in [("height", h), ("width", w)] {
            if !n.is_multiple_of(scale) {
                return Err(Error::invalid(
                    format!("sr-bicubic image {what}"),
                    n,
                    format!("a multiple of the scale factor {scale}"),
                ));
            }
        }
        let a_h = bicubic_matrix(h, scale);
        let a_w = if w == h {
            a_h.clone()
        } else {
            bicubic_matrix(w, scale)
        };
        let inner = Separable::new("sr-bicubic", c, &a_h, &a_w, threshold)?
            .with_kind(OperatorKind::SrBicubic);
        Ok(SrBicubic { inner, scale })
    }

    /// The downsampling factor.
    pub fn scale(&self) -> usize {
        self.scale
    }

    /// The underlying factorized separable operator (1-D singular values, threshold margin, …).
    pub fn separable(&self) -> &Separable {
        &self.inner
    }
}

delegate_to_separable!(SrBicubic);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_match_table_for_factor_4() {
        let want = [
            -0.00170898,
            -0.01098633,
            -0.01831055,
            -0.01196289,
            0.02270508,
            0.09741211,
            0.18188477,
            0.24096680,
        ];
        let t = bicubic_taps(4);
        assert_eq!(t.len(), 16);
        for i in 0..8 {
            assert!((t[i] - want[i]).abs() < 5e-9, "tap {i}: {}", t[i]);
            assert!((t[15 - i] - want[i]).abs() < 5e-9, "tap {}", 15 - i);
        }
        let (first, _) = taps_with_offset(4);
        assert_eq!(first, -6); // j = 4r + 2 − 8
    }

    #[test]
    fn reflect_matches_spec() {
        assert_eq!(reflect(-1, 8), 0);
        assert_eq!(reflect(-3, 8), 2);
        assert_eq!(reflect(8, 8), 7);
        assert_eq!(reflect(10, 8), 5);
        assert_eq!(reflect(3, 8), 3);
    }
}
