//! A per-coordinate gain H = diag(s): y = s ⊙ x, same shape as x. The simplest operator with a nontrivial
//! range and null space (s = 0 coordinates); inpainting is the 0/1 case. Used by tests as a toy with
//! arbitrary singular values, and by pipelines as a pixel-wise attenuation.

use super::{check_shape, Img, LinearOperator};
use crate::error::{Error, Result};

/// H = diag(s) with s ≥ 0 given per pixel and channel.
#[derive(Debug, Clone)]
pub struct Diagonal {
    s: Img,
}

impl Diagonal {
    /// `s` must be finite and ≥ 0.
    pub fn new(s: Img) -> Result<Self> {
        if s.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
            return Err(Error::invalid(
                "diagonal gain",
                "entry",
                "finite values >= 0",
            ));
        }
        Ok(Diagonal { s })
    }

    fn shape(&self) -> [usize; 3] {
        let d = self.s.dim();
        [d.0, d.1, d.2]
    }
}

impl LinearOperator for Diagonal {
    fn name(&self) -> &'static str {
        "diagonal"
    }
    fn x_shape(&self) -> [usize; 3] {
        self.shape()
    }
    fn y_shape(&self) -> [usize; 3] {
        self.shape()
    }
    fn vt(&self, x: &Img) -> Img {
        check_shape("diagonal vt", x, self.shape());
        x.clone()
    }
    fn v(&self, c: &Img) -> Img {
        check_shape("diagonal v", c, self.shape());
        c.clone()
    }
    fn ut(&self, y: &Img) -> Img {
        check_shape("diagonal ut", y, self.shape());
        y.clone()
    }
    fn u(&self, c: &Img) -> Img {
        check_shape("diagonal u", c, self.shape());
        c.clone()
    }
    fn singulars(&self) -> &Img {
        &self.s
    }
}
