//! Linear degradation operators H (docs/operators.md), for images of any size and channel count.
//!
//! Every operator exposes the maps the samplers use — `forward` (H), `adjoint` (Hᵀ), `pinv` (H†),
//! `pinv_adjoint` ((H†)ᵀ), `project` (P = H†H) — and the *spectral view* DDRM needs: a factorization
//! H = U diag(s) Vᵀ with the singular values laid out in x-space (an array of the image's shape holding
//! s at each spectral coordinate and 0 where a coordinate is not measured or its singular value was
//! thresholded). With that layout
//!
//! * H x   = u(s ⊙ vt(x))
//! * Hᵀ y  = v(s ⊙ ut(y))
//! * H† y  = v(s⁺ ⊙ ut(y)), with s⁺ = 1/s where s ≠ 0 and 0 elsewhere (the true pseudo-inverse: the
//!   official code's "pass-through" of zero-singular coordinates, docs/operators.md §2.1, is *not* reproduced)
//! * P x   = v(𝟙[s ≠ 0] ⊙ vt(x)), an exact orthogonal projector.
//!
//! `u(ut(y)) = y` for every measurement y and `v(vt(x)) = x` for every image x. The trait provides all maps
//! from the spectral view by default; operators override them with closed forms where those are cheaper.
//!
//! All arithmetic is f64 (docs/samplers.md §4.7: A⁻¹ amplifies errors in P by up to e^{27}).

use std::sync::Arc;

use ndarray::{Array2, Zip};

use crate::error::{Error, Result};

mod colorize;
mod deblur;
mod denoise;
mod diagonal;
mod inpaint;
mod separable;
mod sr_average;
mod sr_bicubic;

pub use colorize::Colorize;
pub use deblur::{gaussian_kernel, Deblur};
pub use denoise::Denoise;
pub use diagonal::Diagonal;
pub use inpaint::Inpaint;
pub use separable::Separable;
pub use sr_average::SrAverage;
pub use sr_bicubic::{bicubic_taps, keys as keys_cubic, SrBicubic};

/// The image tensor, re-exported where it used to live.
pub use crate::tensor::Img;

/// Default threshold below which a 1-D singular value is treated as zero (official code, §2.4–2.5).
pub const DEFAULT_SVD_THRESHOLD: f64 = 3e-2;

/// The degradations conjure names: a spec's `task.operator`, and what [`LinearOperator::kind`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperatorKind {
    SrAverage,
    SrBicubic,
    Inpaint,
    DeblurGaussian,
    DeblurUniform,
    Colorize,
    Denoise,
}

impl OperatorKind {
    pub const ALL: [OperatorKind; 7] = [
        OperatorKind::SrAverage,
        OperatorKind::SrBicubic,
        OperatorKind::Inpaint,
        OperatorKind::DeblurGaussian,
        OperatorKind::DeblurUniform,
        OperatorKind::Colorize,
        OperatorKind::Denoise,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            OperatorKind::SrAverage => "sr-average",
            OperatorKind::SrBicubic => "sr-bicubic",
            OperatorKind::Inpaint => "inpaint",
            OperatorKind::DeblurGaussian => "deblur-gaussian",
            OperatorKind::DeblurUniform => "deblur-uniform",
            OperatorKind::Colorize => "colorize",
            OperatorKind::Denoise => "denoise",
        }
    }

    /// Whether the operator is a super-resolution (output `scale`× the input).
    pub fn is_sr(&self) -> bool {
        matches!(self, OperatorKind::SrAverage | OperatorKind::SrBicubic)
    }
}

crate::names::spec_names!(OperatorKind, "operator");

/// A linear degradation y = H x (+ noise), built for one image shape.
pub trait LinearOperator: Send + Sync + std::fmt::Debug {
    /// The operator's name as it appears in a spec (`sr-bicubic`, `inpaint`, …).
    fn name(&self) -> &'static str;
    /// Which of conjure's degradations this is; `None` for other operators (samplers that treat one kind
    /// specially, e.g. inpainting, test this instead of the name).
    fn kind(&self) -> Option<OperatorKind> {
        None
    }
    /// Shape (C, H, W) of the images x this operator was built for.
    fn x_shape(&self) -> [usize; 3];
    /// Shape of the measurements y = H x.
    fn y_shape(&self) -> [usize; 3];

    // ---- spectral view: H = U diag(s) Vᵀ, coordinates laid out in x-space ----
    /// Vᵀ x, in the x-shaped spectral layout.
    fn vt(&self, x: &Img) -> Img;
    /// V c, the inverse of [`vt`](Self::vt).
    fn v(&self, c: &Img) -> Img;
    /// Uᵀ y, placed into the x-shaped spectral layout (zero on coordinates that are not measured).
    fn ut(&self, y: &Img) -> Img;
    /// U c for c in the x-shaped spectral layout (coordinates that are not measured are ignored).
    fn u(&self, c: &Img) -> Img;
    /// Singular values in the x-shaped spectral layout (0 where unmeasured or thresholded).
    fn singulars(&self) -> &Img;

    // ---- maps; defaults through the spectral view ----
    /// H x.
    fn forward(&self, x: &Img) -> Img {
        self.u(&(self.vt(x) * self.singulars()))
    }
    /// Hᵀ y.
    fn adjoint(&self, y: &Img) -> Img {
        self.v(&(self.ut(y) * self.singulars()))
    }
    /// H† y (Moore–Penrose pseudo-inverse of the thresholded operator).
    fn pinv(&self, y: &Img) -> Img {
        let mut c = self.ut(y);
        Zip::from(&mut c)
            .and(self.singulars())
            .for_each(|c, &s| *c = if s != 0.0 { *c / s } else { 0.0 });
        self.v(&c)
    }
    /// (H†)ᵀ x, a measurement-space vector.
    fn pinv_adjoint(&self, x: &Img) -> Img {
        let mut c = self.vt(x);
        Zip::from(&mut c)
            .and(self.singulars())
            .for_each(|c, &s| *c = if s != 0.0 { *c / s } else { 0.0 });
        self.u(&c)
    }
    /// P x = H† H x, the orthogonal projector onto the row space of H.
    fn project(&self, x: &Img) -> Img {
        let mut c = self.vt(x);
        Zip::from(&mut c).and(self.singulars()).for_each(|c, &s| {
            if s == 0.0 {
                *c = 0.0
            }
        });
        self.v(&c)
    }
    /// Q x = H† (H†)ᵀ x (noisy C-ΠGDM, docs/samplers.md §5), = V diag(1/s²) Vᵀ on the row space, 0 elsewhere.
    fn pinv_gram(&self, x: &Img) -> Img {
        self.pinv(&self.pinv_adjoint(x))
    }
}

/// A shared, immutable operator.
pub type OperatorRef = Arc<dyn LinearOperator>;

/// What a degradation is, independent of image size; [`Degradation::build`] makes the operator for one
/// image shape.
#[derive(Debug, Clone, PartialEq)]
pub enum Degradation {
    /// H = I.
    Denoise,
    /// Mean over non-overlapping `scale`×`scale` blocks.
    SrAverage { scale: usize },
    /// Separable Keys bicubic (a = −0.5) downsampling by `scale`, reflect padding.
    SrBicubic { scale: usize, threshold: f64 },
    /// Keep the pixels where `mask` (H×W, 1 = known) is 1.
    Inpaint { mask: Array2<f64> },
    /// Separable Gaussian blur, odd `size` taps, zero padding, same-size output.
    DeblurGaussian {
        size: usize,
        sigma: f64,
        threshold: f64,
    },
    /// Separable box blur of `size` taps, zero padding, same-size output.
    DeblurUniform { size: usize, threshold: f64 },
    /// RGB → gray with weights (0.3333, 0.3334, 0.3333).
    Colorize,
}

impl Degradation {
    /// Build the operator for images of shape (C, H, W).
    pub fn build(&self, x_shape: [usize; 3]) -> Result<OperatorRef> {
        Ok(match self {
            Degradation::Denoise => Arc::new(Denoise::new(x_shape)?),
            Degradation::SrAverage { scale } => Arc::new(SrAverage::new(x_shape, *scale)?),
            Degradation::SrBicubic { scale, threshold } => {
                Arc::new(SrBicubic::new(x_shape, *scale, *threshold)?)
            }
            Degradation::Inpaint { mask } => Arc::new(Inpaint::new(x_shape, mask)?),
            Degradation::DeblurGaussian {
                size,
                sigma,
                threshold,
            } => Arc::new(Deblur::gaussian(x_shape, *size, *sigma, *threshold)?),
            Degradation::DeblurUniform { size, threshold } => {
                Arc::new(Deblur::uniform(x_shape, *size, *threshold)?)
            }
            Degradation::Colorize => Arc::new(Colorize::new(x_shape)?),
        })
    }
}

/// Check that an operator's image shape (C, H, W) has no zero dimension.
pub(crate) fn validate_x_shape(op: &str, x_shape: [usize; 3]) -> Result<()> {
    if x_shape.contains(&0) {
        return Err(Error::invalid(
            format!("{op} image shape"),
            format!("{x_shape:?}"),
            "nonzero channels, height and width",
        ));
    }
    Ok(())
}

/// Check that `img` has shape `want`; used by operators on entry.
pub(crate) fn check_shape(what: &str, img: &Img, want: [usize; 3]) {
    assert_eq!(
        img.shape(),
        &want[..],
        "{what}: shape {:?}, operator expects {:?}",
        img.shape(),
        want
    );
}
