//! Deblurring (docs/operators.md §2.5): separable Gaussian (`deblur-gaussian`) or box (`deblur-uniform`)
//! blur with **zero padding** and same-size output, Y_c = B_h X_c B_wᵀ with B[i, j] = k[j − i + r] for
//! |j − i| ≤ r = (size − 1)/2 (taps falling outside the image are dropped, the rest not renormalised).
//! The kernel may be larger than the image. Factorized and thresholded by [`Separable`]; the operator is
//! the thresholded factorization, consistently for every map.
//!
//! Deliberate differences from the official code (§2.5), which implements the correct math instead:
//! * the official Gaussian kernel has 60 taps (d = −30 … 29, the loop drops the last tap of its 61-wide
//!   window); here the kernel is the symmetric d = −(size−1)/2 … (size−1)/2;
//! * the DDRM layout quirk (singular values tiled channel-slowest while Vᵀ interleaves channels, so
//!   coordinate (q, c) gets s_sorted[(3q + c) mod D]) is **not** reproduced: coordinate (i, j) carries
//!   s_i·s_j, so H is the separable convolution of item 3;
//! * the taps are exact f64, not float32.

use ndarray::Array2;

use super::separable::{delegate_to_separable, Separable};
use super::{validate_x_shape, OperatorKind};
use crate::error::{Error, Result};

/// Normalised Gaussian taps exp(−d²/2σ²) for d = −(size−1)/2 … (size−1)/2 (sum 1). For size 61, σ = 3
/// the centre tap is 0.13298076, g(±1) = 0.12579441, g(±2) = 0.10648267. Empty for size 0.
pub fn gaussian_kernel(size: usize, sigma: f64) -> Vec<f64> {
    let half = (size as f64 - 1.0) / 2.0;
    let mut k: Vec<f64> = (0..size)
        .map(|i| {
            let d = i as f64 - half;
            (-d * d / (2.0 * sigma * sigma)).exp()
        })
        .collect();
    let z: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= z);
    k
}

/// Same-size 1-D convolution matrix with zero padding for an odd-length symmetric kernel.
fn conv_matrix(n: usize, kernel: &[f64]) -> Array2<f64> {
    let r = (kernel.len() / 2) as isize;
    Array2::from_shape_fn((n, n), |(i, j)| {
        let d = j as isize - i as isize;
        if d.abs() <= r {
            kernel[(d + r) as usize]
        } else {
            0.0
        }
    })
}

/// Separable blur with zero padding (see the module docs).
#[derive(Debug, Clone)]
pub struct Deblur {
    inner: Separable,
    kernel: Vec<f64>,
}

impl Deblur {
    /// Gaussian blur of odd `size` taps and standard deviation `sigma` (> 0) for images (C, H, W).
    pub fn gaussian(x_shape: [usize; 3], size: usize, sigma: f64, threshold: f64) -> Result<Self> {
        check_size("deblur-gaussian", size)?;
        if !(sigma.is_finite() && sigma > 0.0) {
            return Err(Error::invalid(
                "deblur-gaussian sigma",
                sigma,
                "a finite value > 0",
            ));
        }
        Self::build(
            OperatorKind::DeblurGaussian,
            x_shape,
            gaussian_kernel(size, sigma),
            threshold,
        )
    }

    /// Box blur of odd `size` taps (each 1/size) for images (C, H, W).
    pub fn uniform(x_shape: [usize; 3], size: usize, threshold: f64) -> Result<Self> {
        check_size("deblur-uniform", size)?;
        Self::build(
            OperatorKind::DeblurUniform,
            x_shape,
            vec![1.0 / size as f64; size],
            threshold,
        )
    }

    fn build(
        kind: OperatorKind,
        x_shape: [usize; 3],
        kernel: Vec<f64>,
        threshold: f64,
    ) -> Result<Self> {
        let name = kind.as_str();
        validate_x_shape(name, x_shape)?;
        let [c, h, w] = x_shape;
        let b_h = conv_matrix(h, &kernel);
        let b_w = if w == h {
            b_h.clone()
        } else {
            conv_matrix(w, &kernel)
        };
        let inner = Separable::new(name, c, &b_h, &b_w, threshold)?.with_kind(kind);
        Ok(Deblur { inner, kernel })
    }

    /// The normalised 1-D kernel.
    pub fn kernel(&self) -> &[f64] {
        &self.kernel
    }

    /// The underlying factorized separable operator (1-D singular values, threshold margin, …).
    pub fn separable(&self) -> &Separable {
        &self.inner
    }
}

fn check_size(name: &str, size: usize) -> Result<()> {
    if size == 0 || size.is_multiple_of(2) {
        return Err(Error::invalid(
            format!("{name} kernel size"),
            size,
            "an odd integer >= 1 (a same-size blur needs a centre tap)",
        ));
    }
    Ok(())
}

delegate_to_separable!(Deblur);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_reference_taps() {
        let k = gaussian_kernel(61, 3.0);
        assert_eq!(k.len(), 61);
        assert!((k[30] - 0.13298076).abs() < 5e-9);
        assert!((k[29] - 0.12579441).abs() < 5e-9 && (k[31] - 0.12579441).abs() < 5e-9);
        assert!((k[28] - 0.10648267).abs() < 5e-9 && (k[32] - 0.10648267).abs() < 5e-9);
    }
}
