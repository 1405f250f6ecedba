//! The classical super-resolution baseline: bicubic interpolation of y, x̂_c = B_h Y_c B_wᵀ, with B the
//! 1-D Keys cubic (a = −0.5) interpolation matrix for factor f. Output pixel i samples y at
//! u = (i + ½)/f − ½ (pixel centres aligned), from the four pixels ⌊u⌋ − 1 … ⌊u⌋ + 2 weighted by
//! W(u − j); taps outside the image are dropped and the row's weights renormalised to sum 1 — exactly
//! Pillow's `Image.resize(..., BICUBIC)` when upscaling (the unit test holds its numbers).
//!
//! Unlike H†y it does not use the operator's kernel, only its factor, so it is the same "bicubic
//! upscale" for `sr-bicubic` and `sr-average`. No network evaluations, no randomness; only for the
//! super-resolution operators.

use ndarray::{Array2, Axis};

use super::{ModelSchedule, Problem, Sampler, SamplerConfig};
use crate::error::{Error, Result};
use crate::model::Network;
use crate::operators::keys_cubic;
use crate::tensor::Img;

/// x̂ = bicubic upscale of y per problem. Reads no setting of the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Bicubic;

impl Bicubic {
    /// Any config and any model schedule are accepted.
    pub fn from_config(_cfg: &SamplerConfig, _sched: &ModelSchedule) -> Result<Self> {
        Ok(Bicubic)
    }
}

/// B ∈ ℝ^{(m·f)×m}: bicubic interpolation of a length-m signal to length m·f.
pub fn upsample_matrix(m: usize, f: usize) -> Array2<f64> {
    let mut b = Array2::zeros((m * f, m));
    for i in 0..m * f {
        let u = (i as f64 + 0.5) / f as f64 - 0.5;
        let j0 = u.floor() as isize;
        let taps = (j0 - 1..=j0 + 2).filter(|&j| j >= 0 && j < m as isize);
        let sum: f64 = taps.clone().map(|j| keys_cubic(u - j as f64)).sum();
        for j in taps {
            b[[i, j as usize]] = keys_cubic(u - j as f64) / sum;
        }
    }
    b
}

impl Sampler for Bicubic {
    fn name(&self) -> &'static str {
        "bicubic"
    }
    fn nfe(&self) -> usize {
        0
    }
    /// The bicubic upscale of every problem's y; the network is not called.
    fn sample(&self, _net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        problems
            .iter()
            .map(|p| {
                let [c, h, w] = p.op.x_shape();
                let [_, yh, yw] = p.op.y_shape();
                let sr = p.op.kind().is_some_and(|k| k.is_sr());
                if !sr || yh == 0 || yw == 0 || h % yh != 0 || w != yw * (h / yh) {
                    return Err(Error::Unsupported(format!(
                        "sampler bicubic interpolates super-resolution measurements only, not {}",
                        p.op.name()
                    )));
                }
                let f = h / yh;
                let (bh, bw) = (upsample_matrix(yh, f), upsample_matrix(yw, f));
                let mut x = Img::zeros((c, h, w));
                for (mut xc, yc) in x.axis_iter_mut(Axis(0)).zip(p.y.axis_iter(Axis(0))) {
                    xc.assign(&bh.dot(&yc).dot(&bw.t()));
                }
                Ok(x)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_sum_to_one_and_interpolate_polynomials_up_to_quadratic_inside() {
        let (m, f) = (12, 4);
        let b = upsample_matrix(m, f);
        for r in b.rows() {
            assert!((r.sum() - 1.0).abs() < 1e-12);
        }
        // Keys' a = −0.5 cubic reproduces quadratics exactly away from the clamped borders.
        let q = |u: f64| 0.3 * u * u - 1.2 * u + 0.7;
        let y = ndarray::Array1::from_shape_fn(m, |j| q(j as f64));
        let x = b.dot(&y);
        for i in 2 * f..(m - 2) * f {
            let u = (i as f64 + 0.5) / f as f64 - 0.5;
            assert!(
                (x[i] - q(u)).abs() < 1e-12,
                "pixel {i}: {} vs {}",
                x[i],
                q(u)
            );
        }
    }

    /// Pillow 11's `Image.fromarray(y, "F").resize((12, 12), Image.BICUBIC)` (float32) on this y.
    #[test]
    fn matches_pillow_bicubic_upscaling() {
        let y = ndarray::Array2::from_shape_fn((4, 4), |(r, c)| ((r * 7 + c * 3) % 5) as f64 / 4.0);
        let b = upsample_matrix(4, 3);
        let x = b.dot(&y).dot(&b.t());
        let pillow: [(usize, [f64; 12]); 3] = [
            (
                0,
                [
                    -0.1454294, -0.0526316, 0.2123412, 0.5906955, 0.8289474, 0.6744639, 0.3518519,
                    0.1973684, 0.4356203, 0.8139746, 1.0789474, 1.1717452,
                ],
            ),
            (
                5,
                [
                    0.7802144, 0.712963, 0.5204342, 0.2457011, 0.0740741, 0.1731824, 0.3957476,
                    0.5462963, 0.5234788, 0.4351852, 0.3703704, 0.3518519,
                ],
            ),
            (
                11,
                [
                    0.0782548, 0.1710526, 0.4314882, 0.8049812, 1.0526316, 0.9931774, 0.7802144,
                    0.5526316, 0.3139098, 0.0780399, -0.0789474, -0.1454294,
                ],
            ),
        ];
        for (r, row) in pillow {
            for (c, want) in row.into_iter().enumerate() {
                assert!(
                    (x[[r, c]] - want).abs() < 1e-6,
                    "({r}, {c}): {} vs {want}",
                    x[[r, c]]
                );
            }
        }
    }

    #[test]
    fn factor_one_is_the_identity() {
        let b = upsample_matrix(5, 1);
        assert_eq!(b, Array2::<f64>::eye(5));
    }
}
