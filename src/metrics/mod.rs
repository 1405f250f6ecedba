//! Image-quality metrics: PSNR, SSIM and measurement consistency ‖H x̂ − y‖ / ‖y‖, per image and per run.
//!
//! Images are (channels, height, width) arrays in f64 ([`Img`]). The metrics take the data range R
//! explicitly (R = 1 for images scaled to [0, 1], 255 for raw 8-bit values, 2 for the model range
//! [−1, 1]); they never guess it from the data.
//!
//! * [`psnr`]: 10 log₁₀(R² / MSE) over all channels and pixels; +∞ for identical images.
//! * [`ssim`]: Wang, Bovik, Sheikh & Simoncelli (2004), "Image quality assessment: from error visibility to
//!   structural similarity", with the 11×11 Gaussian window of σ = 1.5, K₁ = 0.01, K₂ = 0.03, population
//!   (not sample) covariances, computed per channel and averaged. It reproduces scikit-image's
//!   `structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
//!   data_range=R, channel_axis=0)` (see [`ssim`] for the details and tests/metrics.rs for the check).
//! * [`consistency`]: the relative residual ‖H x̂ − y‖₂ / ‖y‖₂ of a restoration x̂ against its measurement y.
//!
//! [`ImageMetrics`] holds one image's numbers and [`Summary`] their means over a run. The [`eval`]
//! submodule pairs directories of reference and restored files and produces an [`eval::EvalReport`]
//! (the library behind `conjure eval`); [`plot`] draws its comparison grid.

use serde::Serialize;

use crate::error::{Error, Result};
use crate::operators::LinearOperator;
use crate::tensor::Img;

pub mod eval;
pub(crate) mod font;
pub mod plot;
mod ssim;

pub use ssim::{gaussian_window, ssim, ssim_with, SsimOptions};

/// Check that two images have the same shape.
fn same_shape(what: &str, a: &Img, b: &Img) -> Result<()> {
    if a.shape() != b.shape() {
        return Err(Error::Shape(format!(
            "{what}: reference {:?} and restored {:?} differ",
            a.shape(),
            b.shape()
        )));
    }
    if a.is_empty() {
        return Err(Error::Shape(format!("{what}: empty image {:?}", a.shape())));
    }
    Ok(())
}

fn check_range(data_range: f64) -> Result<()> {
    if !(data_range.is_finite() && data_range > 0.0) {
        return Err(Error::invalid(
            "data range",
            data_range,
            "a finite number > 0",
        ));
    }
    Ok(())
}

/// Mean squared error over every channel and pixel.
pub fn mse(reference: &Img, restored: &Img) -> Result<f64> {
    same_shape("mse", reference, restored)?;
    let sum: f64 = reference
        .iter()
        .zip(restored.iter())
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    Ok(sum / reference.len() as f64)
}

/// Peak signal-to-noise ratio 10 log₁₀(R² / MSE) in dB for data range R; +∞ when the images are equal.
pub fn psnr(reference: &Img, restored: &Img, data_range: f64) -> Result<f64> {
    check_range(data_range)?;
    let m = mse(reference, restored)?;
    if m == 0.0 {
        return Ok(f64::INFINITY);
    }
    Ok(10.0 * (data_range * data_range / m).log10())
}

/// Measurement consistency ‖H x̂ − y‖₂ / ‖y‖₂ of a restoration `x_hat` against the measurement `y`.
///
/// Zero exactly when y = H x̂. For an all-zero measurement the ratio is undefined; it is reported as 0 when
/// H x̂ is zero too and +∞ otherwise.
pub fn consistency(op: &dyn LinearOperator, x_hat: &Img, y: &Img) -> Result<f64> {
    if x_hat.shape() != op.x_shape() {
        return Err(Error::Shape(format!(
            "consistency: restored image {:?}, operator {} expects {:?}",
            x_hat.shape(),
            op.name(),
            op.x_shape()
        )));
    }
    if y.shape() != op.y_shape() {
        return Err(Error::Shape(format!(
            "consistency: measurement {:?}, operator {} produces {:?}",
            y.shape(),
            op.name(),
            op.y_shape()
        )));
    }
    let hx = op.forward(x_hat);
    let residual = hx
        .iter()
        .zip(y.iter())
        .map(|(a, b)| (a - b) * (a - b))
        .sum::<f64>()
        .sqrt();
    let norm_y = y.iter().map(|v| v * v).sum::<f64>().sqrt();
    if norm_y == 0.0 {
        return Ok(if residual == 0.0 { 0.0 } else { f64::INFINITY });
    }
    Ok(residual / norm_y)
}

/// One image's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ImageMetrics {
    /// PSNR in dB (+∞, written as `null` in JSON, for identical images).
    pub psnr: f64,
    /// Mean SSIM over channels.
    pub ssim: f64,
    /// ‖H x̂ − y‖ / ‖y‖ when a measurement and an operator were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<f64>,
}

impl ImageMetrics {
    /// PSNR and SSIM of `restored` against `reference` on data range `data_range`; no consistency.
    pub fn compare(reference: &Img, restored: &Img, data_range: f64) -> Result<Self> {
        Ok(ImageMetrics {
            psnr: psnr(reference, restored, data_range)?,
            ssim: ssim(reference, restored, data_range)?,
            consistency: None,
        })
    }
}

/// Means of [`ImageMetrics`] over a run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// Number of images averaged.
    pub count: usize,
    /// Mean of the finite per-image PSNRs (dB): images identical to their reference (PSNR +∞) are left
    /// out, so one exact image does not make the mean +∞; `None` when no image has a finite PSNR.
    pub psnr: Option<f64>,
    /// Number of images identical to their reference (PSNR +∞), left out of [`Summary::psnr`].
    pub identical: usize,
    /// Mean of the per-image SSIMs.
    pub ssim: Option<f64>,
    /// Mean consistency over the images that have one.
    pub consistency: Option<f64>,
    /// Number of images that have a consistency value.
    pub consistency_count: usize,
}

impl Summary {
    /// Average per-image metrics (the mean of per-image PSNRs, as the paper's tables report, over the
    /// images that are not identical to their reference).
    pub fn of<'a>(items: impl IntoIterator<Item = &'a ImageMetrics>) -> Self {
        let (mut n, mut p, mut s, mut nc, mut c) = (0usize, 0.0, 0.0, 0usize, 0.0);
        let mut identical = 0;
        for m in items {
            n += 1;
            if m.psnr.is_finite() {
                p += m.psnr;
            } else {
                identical += 1;
            }
            s += m.ssim;
            if let Some(v) = m.consistency {
                nc += 1;
                c += v;
            }
        }
        let mean = |sum: f64, k: usize| (k > 0).then(|| sum / k as f64);
        Summary {
            count: n,
            psnr: mean(p, n - identical),
            identical,
            ssim: mean(s, n),
            consistency: mean(c, nc),
            consistency_count: nc,
        }
    }
}
