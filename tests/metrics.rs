//! PSNR, SSIM and measurement consistency against closed forms and scikit-image reference values.

use conjure::metrics::{consistency, gaussian_window, mse, psnr, ssim, ImageMetrics, Summary};
use conjure::operators::{Diagonal, Img};
use ndarray::Array3;

/// The 64-bit LCG of the reference script below (Knuth's MMIX constants), uniform in [0, 1).
fn lcg(seed: u64, n: usize) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (s >> 11) as f64 / 2f64.powi(53)
        })
        .collect()
}

/// x = scale · u, y = scale · clip(u + noise (v − ½), 0, 1) with u, v from the LCG (same as `case` below).
fn case(seed: u64, c: usize, h: usize, w: usize, noise: f64, scale: f64) -> (Img, Img) {
    let n = c * h * w;
    let u = Array3::from_shape_vec((c, h, w), lcg(seed, n)).unwrap();
    let v = Array3::from_shape_vec((c, h, w), lcg(seed + 1, n)).unwrap();
    let y = ndarray::Zip::from(&u)
        .and(&v)
        .map_collect(|&a, &b| (a + noise * (b - 0.5)).clamp(0.0, 1.0) * scale);
    (u * scale, y)
}

/// Reference values from scikit-image 0.26.0 (numpy 2.4.6, scipy 1.17.1), produced by this script:
///
/// ```python
/// import numpy as np
/// from skimage.metrics import structural_similarity, peak_signal_noise_ratio
/// M = 2**64
/// def lcg(seed, n):
///     s, out = seed, []
///     for _ in range(n):
///         s = (s * 6364136223846793005 + 1442695040888963407) % M
///         out.append((s >> 11) / 2.0**53)
///     return np.array(out)
/// def case(seed, c, h, w, noise, scale):
///     x = lcg(seed, c*h*w).reshape(c, h, w)
///     n = lcg(seed + 1, c*h*w).reshape(c, h, w)
///     y = np.clip(x + noise * (n - 0.5), 0, 1)
///     return x * scale, y * scale
/// for (seed, c, h, w, noise, scale) in [(1, 1, 16, 20, 0.2, 1.0), (7, 3, 13, 11, 0.5, 1.0),
///                                       (3, 2, 24, 12, 0.05, 255.0)]:
///     x, y = case(seed, c, h, w, noise, scale)
///     s = structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
///                               data_range=scale, channel_axis=0)
///     p = peak_signal_noise_ratio(x, y, data_range=scale)
///     print(f"({seed}, {c}, {h}, {w}, {noise}, {scale}, {float(s)!r}, {float(p)!r}),")
/// ```
#[allow(clippy::type_complexity)]
const SKIMAGE: &[(u64, usize, usize, usize, f64, f64, f64, f64)] = &[
    (
        1,
        1,
        16,
        20,
        0.2,
        1.0,
        0.9786569525046068,
        25.115910784226287,
    ),
    (
        7,
        3,
        13,
        11,
        0.5,
        1.0,
        0.8995432421653776,
        17.287092941593016,
    ),
    (
        3,
        2,
        24,
        12,
        0.05,
        255.0,
        0.9987047538875262,
        36.80317549536425,
    ),
];

#[test]
fn ssim_and_psnr_match_scikit_image() {
    for &(seed, c, h, w, noise, scale, want_ssim, want_psnr) in SKIMAGE {
        let (x, y) = case(seed, c, h, w, noise, scale);
        let s = ssim(&x, &y, scale).unwrap();
        let p = psnr(&x, &y, scale).unwrap();
        assert!(
            (s - want_ssim).abs() < 1e-12,
            "seed {seed}: ssim {s} vs {want_ssim}"
        );
        assert!(
            (p - want_psnr).abs() < 1e-10,
            "seed {seed}: psnr {p} vs {want_psnr}"
        );
    }
}

#[test]
fn psnr_closed_forms() {
    // Constant offset d everywhere: MSE = d², PSNR = 20 log10(R / d).
    let x = Array3::<f64>::zeros((3, 7, 5));
    let y = x.mapv(|_| 0.1);
    assert!((mse(&x, &y).unwrap() - 0.01).abs() < 1e-15);
    assert!((psnr(&x, &y, 1.0).unwrap() - 20.0).abs() < 1e-12);
    let y = x.mapv(|_| 5.0);
    let want = 10.0 * (255.0f64 * 255.0 / 25.0).log10();
    assert!((psnr(&x, &y, 255.0).unwrap() - want).abs() < 1e-12);
    // Half the pixels off by 0.2: MSE = 0.02 → PSNR = 10 log10(50).
    let mut y = x.clone();
    for (k, v) in y.iter_mut().enumerate() {
        if k % 2 == 0 {
            *v = 0.2;
        }
    }
    // 105 entries, 53 of them even-indexed.
    let m: f64 = 53.0 * 0.04 / 105.0;
    assert!((psnr(&x, &y, 1.0).unwrap() - 10.0 * (1.0 / m).log10()).abs() < 1e-12);
    // Identical images: +∞.
    assert_eq!(psnr(&x, &x, 1.0).unwrap(), f64::INFINITY);
}

#[test]
fn metrics_reject_bad_input() {
    let x = Array3::<f64>::zeros((1, 12, 12));
    let y = Array3::<f64>::zeros((1, 12, 13));
    assert!(psnr(&x, &y, 1.0).is_err());
    assert!(ssim(&x, &y, 1.0).is_err());
    assert!(psnr(&x, &x, 0.0).is_err());
    assert!(ssim(&x, &x, f64::NAN).is_err());
    // Smaller than the 11×11 window.
    let small = Array3::<f64>::zeros((1, 10, 20));
    let err = ssim(&small, &small, 1.0).unwrap_err().to_string();
    assert!(err.contains("20x10") && err.contains("11x11"), "{err}");
}

#[test]
fn gaussian_window_is_scipy_kernel() {
    let w = gaussian_window(1.5, 3.5);
    assert_eq!(w.len(), 11);
    assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-15);
    // Ratio of neighbouring taps is exp(−(2k+1)/(2σ²)).
    for k in 0..5 {
        let r = w[5 + k + 1] / w[5 + k];
        let want = (-(2.0 * k as f64 + 1.0) / (2.0 * 2.25)).exp();
        assert!((r - want).abs() < 1e-14);
        assert_eq!(w[5 + k + 1], w[5 - k - 1]);
    }
}

#[test]
fn ssim_identity_symmetry_and_noise() {
    let (x, y) = case(11, 3, 32, 32, 0.3, 1.0);
    assert!((ssim(&x, &x, 1.0).unwrap() - 1.0).abs() < 1e-12);
    let a = ssim(&x, &y, 1.0).unwrap();
    let b = ssim(&y, &x, 1.0).unwrap();
    assert!((a - b).abs() < 1e-14, "{a} vs {b}");
    assert!(a < 0.99 && a > 0.0, "{a}");
    // More noise, lower SSIM.
    let (_, y2) = case(11, 3, 32, 32, 0.6, 1.0);
    assert!(ssim(&x, &y2, 1.0).unwrap() < a);
}

#[test]
fn ssim_of_constant_images_is_closed_form() {
    // Constant images a and b: all variances vanish, so S = (2ab + C1) / (a² + b² + C1) at every pixel.
    let (a, b, r) = (0.3, 0.7, 1.0);
    let x = Array3::from_elem((2, 15, 17), a);
    let y = Array3::from_elem((2, 15, 17), b);
    let c1 = (0.01f64 * r).powi(2);
    let want = (2.0 * a * b + c1) / (a * a + b * b + c1);
    assert!((ssim(&x, &y, r).unwrap() - want).abs() < 1e-12);
}

#[test]
fn consistency_is_zero_for_exact_measurements_and_relative_otherwise() {
    let (x_hat, _) = case(5, 2, 6, 9, 0.0, 1.0);
    let gains = Array3::from_shape_fn((2, 6, 9), |(c, i, j)| ((c + i + j) % 3) as f64 * 0.5);
    let op = Diagonal::new(gains.clone()).unwrap();
    let y = &gains * &x_hat;
    assert_eq!(consistency(&op, &x_hat, &y).unwrap(), 0.0);
    // y = H x̂ + e ⇒ ‖e‖ / ‖y‖.
    let e = Array3::from_shape_fn(
        (2, 6, 9),
        |(c, i, j)| if (c + i * j) % 4 == 0 { 0.01 } else { 0.0 },
    );
    let y_noisy = &y + &e;
    let norm = |a: &Img| a.iter().map(|v| v * v).sum::<f64>().sqrt();
    let want = norm(&e) / norm(&y_noisy);
    let got = consistency(&op, &x_hat, &y_noisy).unwrap();
    assert!(want > 0.0 && (got - want).abs() < 1e-14, "{got} vs {want}");
    // Wrong shapes are errors, not panics.
    let wrong = Array3::<f64>::zeros((1, 6, 9));
    assert!(consistency(&op, &wrong, &y).is_err());
    assert!(consistency(&op, &x_hat, &wrong).is_err());
}

#[test]
fn summary_means_per_image_metrics() {
    let items = [
        ImageMetrics {
            psnr: 20.0,
            ssim: 0.5,
            consistency: Some(0.1),
        },
        ImageMetrics {
            psnr: 30.0,
            ssim: 0.9,
            consistency: None,
        },
    ];
    let s = Summary::of(&items);
    assert_eq!(s.count, 2);
    assert_eq!(s.psnr, Some(25.0));
    assert!((s.ssim.unwrap() - 0.7).abs() < 1e-15);
    assert_eq!(s.consistency, Some(0.1));
    assert_eq!(s.consistency_count, 1);
    assert_eq!(Summary::of(&[]).psnr, None);
}
