//! Structural similarity (Wang et al. 2004) with a Gaussian window, as scikit-image computes it.
//!
//! For each channel, with the separable Gaussian filter G (σ = 1.5, truncated at 3.5 σ: radius 5, an
//! 11×11 window, weights normalized to sum 1, borders extended by half-sample symmetric reflection —
//! SciPy's `mode="reflect"`):
//!
//! μx = G x, μy = G y, vx = G(x²) − μx², vy = G(y²) − μy², vxy = G(xy) − μx μy,
//! C₁ = (K₁ R)², C₂ = (K₂ R)²,
//! S = (2 μx μy + C₁)(2 vxy + C₂) / ((μx² + μy² + C₁)(vx + vy + C₂)),
//!
//! and the channel's SSIM is the mean of S over the pixels at least `radius` away from every border
//! (scikit-image crops `(win_size − 1) / 2` pixels before averaging). The image's SSIM is the mean over
//! channels. Covariances are population covariances (`use_sample_covariance=False`), as in the paper.

use super::{check_range, same_shape};
use crate::error::{Error, Result};
use crate::tensor::Img;
use ndarray::{Array2, ArrayView2, Axis};

/// SSIM parameters; [`Default`] is Wang et al. 2004 (σ 1.5, K₁ 0.01, K₂ 0.03, truncate 3.5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsimOptions {
    /// Standard deviation of the Gaussian window, in pixels.
    pub sigma: f64,
    /// The window is truncated at `truncate · sigma` (radius `⌊truncate σ + ½⌋`).
    pub truncate: f64,
    /// K₁ in C₁ = (K₁ R)².
    pub k1: f64,
    /// K₂ in C₂ = (K₂ R)².
    pub k2: f64,
}

impl Default for SsimOptions {
    fn default() -> Self {
        SsimOptions {
            sigma: 1.5,
            truncate: 3.5,
            k1: 0.01,
            k2: 0.03,
        }
    }
}

/// The normalized 1-D Gaussian taps exp(−x²/(2σ²)), x = −r..=r, r = ⌊truncate σ + ½⌋ (SciPy's
/// `gaussian_filter1d` kernel).
pub fn gaussian_window(sigma: f64, truncate: f64) -> Vec<f64> {
    let r = (truncate * sigma + 0.5) as i64;
    let w: Vec<f64> = (-r..=r)
        .map(|x| (-0.5 * (x * x) as f64 / (sigma * sigma)).exp())
        .collect();
    let sum: f64 = w.iter().sum();
    w.into_iter().map(|v| v / sum).collect()
}

/// Index `i` of a length-`n` axis extended by half-sample symmetric reflection (… b a | a b … y z | z y …).
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    let m = i.rem_euclid(2 * n);
    (if m >= n { 2 * n - 1 - m } else { m }) as usize
}

/// Correlate `plane` with `taps` along `axis` (0 = rows, 1 = columns), reflect borders.
fn filter_axis(plane: &Array2<f64>, taps: &[f64], axis: usize) -> Array2<f64> {
    let r = (taps.len() / 2) as i64;
    let (h, w) = plane.dim();
    let n = if axis == 0 { h } else { w };
    // Precompute the reflected source index of every (output index, tap).
    let idx: Vec<usize> = (0..n as i64)
        .flat_map(|i| (-r..=r).map(move |k| reflect(i + k, n)))
        .collect();
    let mut out = Array2::zeros((h, w));
    for ((i, j), o) in out.indexed_iter_mut() {
        let o_idx = if axis == 0 { i } else { j };
        let src = &idx[o_idx * taps.len()..(o_idx + 1) * taps.len()];
        *o = taps
            .iter()
            .zip(src)
            .map(|(t, &s)| {
                t * if axis == 0 {
                    plane[[s, j]]
                } else {
                    plane[[i, s]]
                }
            })
            .sum();
    }
    out
}

fn gaussian_filter(plane: &Array2<f64>, taps: &[f64]) -> Array2<f64> {
    filter_axis(&filter_axis(plane, taps, 0), taps, 1)
}

/// SSIM of one 2-D channel.
fn ssim_plane(x: ArrayView2<f64>, y: ArrayView2<f64>, data_range: f64, opt: &SsimOptions) -> f64 {
    let taps = gaussian_window(opt.sigma, opt.truncate);
    let pad = taps.len() / 2;
    let x = x.to_owned();
    let y = y.to_owned();
    let ux = gaussian_filter(&x, &taps);
    let uy = gaussian_filter(&y, &taps);
    let uxx = gaussian_filter(&(&x * &x), &taps);
    let uyy = gaussian_filter(&(&y * &y), &taps);
    let uxy = gaussian_filter(&(&x * &y), &taps);
    let c1 = (opt.k1 * data_range).powi(2);
    let c2 = (opt.k2 * data_range).powi(2);
    let (h, w) = x.dim();
    let mut sum = 0.0;
    let mut count = 0usize;
    for i in pad..h - pad {
        for j in pad..w - pad {
            let (mx, my) = (ux[[i, j]], uy[[i, j]]);
            let vx = uxx[[i, j]] - mx * mx;
            let vy = uyy[[i, j]] - my * my;
            let vxy = uxy[[i, j]] - mx * my;
            let a = (2.0 * mx * my + c1) * (2.0 * vxy + c2);
            let b = (mx * mx + my * my + c1) * (vx + vy + c2);
            sum += a / b;
            count += 1;
        }
    }
    sum / count as f64
}

/// SSIM of `restored` against `reference` (mean over channels) with the default [`SsimOptions`].
///
/// Symmetric in its arguments; 1 for identical images. Both images must be at least 11×11 pixels.
pub fn ssim(reference: &Img, restored: &Img, data_range: f64) -> Result<f64> {
    ssim_with(reference, restored, data_range, &SsimOptions::default())
}

/// SSIM with explicit options.
pub fn ssim_with(
    reference: &Img,
    restored: &Img,
    data_range: f64,
    opt: &SsimOptions,
) -> Result<f64> {
    same_shape("ssim", reference, restored)?;
    check_range(data_range)?;
    if !(opt.sigma.is_finite()
        && opt.sigma > 0.0
        && opt.truncate.is_finite()
        && opt.truncate >= 0.0)
    {
        return Err(Error::invalid(
            "ssim window",
            format!("sigma {} truncate {}", opt.sigma, opt.truncate),
            "sigma > 0 and truncate >= 0",
        ));
    }
    let win = gaussian_window(opt.sigma, opt.truncate).len();
    let (_, h, w) = reference.dim();
    if h < win || w < win {
        return Err(Error::invalid(
            "image size for ssim",
            format!("{w}x{h}"),
            format!("at least {win}x{win}, the window size"),
        ));
    }
    let c = reference.len_of(Axis(0));
    let total: f64 = (0..c)
        .map(|k| {
            ssim_plane(
                reference.index_axis(Axis(0), k),
                restored.index_axis(Axis(0), k),
                data_range,
                opt,
            )
        })
        .sum();
    Ok(total / c as f64)
}
