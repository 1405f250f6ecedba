//! Denoising (docs/operators.md §2.2, `deno`): H = I, so U = V = I, s = 1, H† = Hᵀ = P = I.

use super::{check_shape, validate_x_shape, Img, LinearOperator};
use crate::error::Result;

/// The identity operator (see the module docs).
#[derive(Debug, Clone)]
pub struct Denoise {
    x_shape: [usize; 3],
    ones: Img,
}

impl Denoise {
    /// Operator for images of shape (C, H, W).
    pub fn new(x_shape: [usize; 3]) -> Result<Self> {
        validate_x_shape("denoise", x_shape)?;
        Ok(Denoise {
            x_shape,
            ones: Img::ones((x_shape[0], x_shape[1], x_shape[2])),
        })
    }

    fn same(&self, what: &str, x: &Img) -> Img {
        check_shape(what, x, self.x_shape);
        x.clone()
    }
}

impl LinearOperator for Denoise {
    fn name(&self) -> &'static str {
        "denoise"
    }
    fn kind(&self) -> Option<super::OperatorKind> {
        Some(super::OperatorKind::Denoise)
    }
    fn x_shape(&self) -> [usize; 3] {
        self.x_shape
    }
    fn y_shape(&self) -> [usize; 3] {
        self.x_shape
    }
    fn vt(&self, x: &Img) -> Img {
        self.same("denoise vt", x)
    }
    fn v(&self, c: &Img) -> Img {
        self.same("denoise v", c)
    }
    fn ut(&self, y: &Img) -> Img {
        self.same("denoise ut", y)
    }
    fn u(&self, c: &Img) -> Img {
        self.same("denoise u", c)
    }
    fn singulars(&self) -> &Img {
        &self.ones
    }
    fn forward(&self, x: &Img) -> Img {
        self.same("denoise forward", x)
    }
    fn adjoint(&self, y: &Img) -> Img {
        self.same("denoise adjoint", y)
    }
    fn pinv(&self, y: &Img) -> Img {
        self.same("denoise pinv", y)
    }
    fn pinv_adjoint(&self, x: &Img) -> Img {
        self.same("denoise pinv_adjoint", x)
    }
    fn project(&self, x: &Img) -> Img {
        self.same("denoise project", x)
    }
    fn pinv_gram(&self, x: &Img) -> Img {
        self.same("denoise pinv_gram", x)
    }
}
