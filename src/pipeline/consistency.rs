//! The final data-consistency step (issue 16): after the sampler, every restoration is made to agree with
//! its measurement,
//!
//! x̂ ← x̂ + H†(y − H x̂) = (I − P) x̂ + H† y,   P = H†H,
//!
//! i.e. x̂'s component in the row space of H is replaced by the one the measurement determines, and its
//! component in the null space (what the prior filled in) is kept. It is on by default for noiseless
//! measurements (`task.data_consistency`, default `noise_sigma == 0`): a sampler's last step is only
//! approximately consistent, and an archive expects the pixels the scan shows to stay as scanned.
//!
//! What holds afterwards: H x̂ = H H† y, the orthogonal projection of y onto the range of H.
//!
//! * For operators of full row rank — `denoise`, `sr-average`, `colorize`, and `sr-bicubic` / `deblur-*`
//!   when no singular value was thresholded — H H† = I, so **H x̂ = y**.
//! * `inpaint` keeps y's shape (y = m ⊙ x, whatever the input holds in the hole is not a measurement):
//!   H x̂ = m ⊙ y, i.e. the known pixels of x̂ are y's, bit for bit — (I − P) x̂ is exactly 0 there and
//!   H† y is y there — so an 8- or 16-bit output writes the input's values back unchanged.
//! * For `sr-bicubic` / `deblur-*` with singular values below `task.svd_threshold`, H is the thresholded
//!   operator and H H† projects onto the kept spectrum: Uₖᵀ(H x̂ − y) = 0 (x̂ reproduces y along every
//!   kept singular vector), while y's components along dropped singular vectors (the high frequencies the
//!   blur all but erased, where dividing by a tiny singular value would amplify noise) are not reproduced.
//!   When y = H x for some x (a measurement the thresholded operator could have made), H x̂ = y again.
//!
//! With noisy measurements (σ_y > 0) the step would copy the noise into x̂, so it is off unless asked for.

use crate::operators::{Img, LinearOperator};
use crate::samplers::Problem;
use crate::spec::PipelineSpec;

/// (I − P) x + H† y: `x` made consistent with the measurement `y` of `op`.
pub fn make_consistent(op: &dyn LinearOperator, y: &Img, x: &Img) -> Img {
    let mut out = x - &op.project(x);
    out += &op.pinv(y);
    out
}

/// The step every restoration goes through after its sampler (`run`, `bench` and `study` alike): each
/// `xs[i]` made consistent with `problems[i]` when the spec asks for it (`task.data_consistency`).
pub fn finish(spec: &PipelineSpec, problems: &[Problem], xs: &mut [Img]) {
    if !spec.task.data_consistency {
        return;
    }
    for (x, p) in xs.iter_mut().zip(problems) {
        *x = make_consistent(p.op.as_ref(), &p.y, x);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::Degradation;
    use ndarray::Array3;

    fn norm(a: &Img) -> f64 {
        a.iter().map(|v| v * v).sum::<f64>().sqrt()
    }

    fn wiggle(shape: [usize; 3], k: f64) -> Img {
        Array3::from_shape_fn((shape[0], shape[1], shape[2]), |(c, i, j)| {
            ((i as f64 * 1.7 + j as f64 * 0.9 + c as f64 + k).sin() * 0.8).tanh()
        })
    }

    /// Thresholded separable operators: for y = H x₀, H x̂ = y; for any y, x̂ reproduces y on the kept
    /// spectrum (H H†(H x̂ − y) = 0) and keeps x's null-space component.
    #[test]
    fn thresholded_operators_are_consistent_on_their_range() {
        let ops = [
            Degradation::SrBicubic {
                scale: 4,
                threshold: 0.2,
            },
            Degradation::DeblurGaussian {
                size: 9,
                sigma: 3.0,
                threshold: 3e-2,
            },
            Degradation::DeblurGaussian {
                size: 5,
                sigma: 1.5,
                threshold: 0.1,
            },
        ];
        for d in ops {
            let op = d.build([2, 16, 16]).unwrap();
            let x0 = wiggle(op.x_shape(), 0.3);
            let x = wiggle(op.x_shape(), 2.0);
            // Something is thresholded (else this is the full-rank case).
            assert!(op.singulars().iter().any(|s| *s == 0.0), "{d:?}");
            let y = op.forward(&x0);
            let xh = make_consistent(op.as_ref(), &y, &x);
            assert!(norm(&(op.forward(&xh) - &y)) <= 1e-10 * norm(&y), "{d:?}");
            assert!(norm(&(op.forward(&x) - &y)) > 1e-2 * norm(&y), "{d:?}");
            // Null-space component kept: (I − P) x̂ = (I − P) x.
            let null = |v: &Img| v - &op.project(v);
            assert!(norm(&(null(&xh) - null(&x))) <= 1e-10 * norm(&x), "{d:?}");
            // Any y (not in the range): consistent on the kept spectrum only.
            let y = wiggle(op.y_shape(), 5.0);
            let xh = make_consistent(op.as_ref(), &y, &x);
            let r = op.forward(&xh) - &y;
            assert!(norm(&op.forward(&op.pinv(&r))) <= 1e-10 * norm(&y), "{d:?}");
        }
    }
}
