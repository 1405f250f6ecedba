//! Inpainting (docs/operators.md §2.7, the full-size `in2_` form): y = m ⊙ x with a 0/1 mask m (H×W, 1 =
//! observed) shared by all channels; y has x's shape. U = V = I and the singular values are the mask, so
//! H† = Hᵀ = P = m ⊙ ·. (The flow code's `NaiveInpainting` uses H† = I, which is not a pseudo-inverse;
//! that quirk is not reproduced.)

use ndarray::{Array2, Axis};

use super::{check_shape, validate_x_shape, Img, LinearOperator};
use crate::error::{Error, Result};

/// Keep the pixels where the mask is 1 (see the module docs).
#[derive(Debug, Clone)]
pub struct Inpaint {
    x_shape: [usize; 3],
    /// The mask broadcast over channels; also the singular values.
    m: Img,
}

impl Inpaint {
    /// Operator for images (C, H, W) and a mask of shape (H, W) whose entries are exactly 0 or 1.
    pub fn new(x_shape: [usize; 3], mask: &Array2<f64>) -> Result<Self> {
        validate_x_shape("inpaint", x_shape)?;
        let [c, h, w] = x_shape;
        if mask.dim() != (h, w) {
            return Err(Error::Shape(format!(
                "inpaint mask is {}x{}, the image is {h}x{w}",
                mask.nrows(),
                mask.ncols()
            )));
        }
        if let Some(bad) = mask.iter().find(|v| !(**v == 0.0 || **v == 1.0)) {
            return Err(Error::invalid("inpaint mask entry", bad, "0 or 1"));
        }
        let m = mask
            .view()
            .insert_axis(Axis(0))
            .broadcast((c, h, w))
            .expect("mask shape checked")
            .to_owned();
        Ok(Inpaint { x_shape, m })
    }

    /// Fraction of observed pixels.
    pub fn observed_fraction(&self) -> f64 {
        self.m.mean().unwrap_or(0.0)
    }

    fn masked(&self, what: &str, x: &Img) -> Img {
        check_shape(what, x, self.x_shape);
        x * &self.m
    }
}

impl LinearOperator for Inpaint {
    fn name(&self) -> &'static str {
        "inpaint"
    }
    fn kind(&self) -> Option<super::OperatorKind> {
        Some(super::OperatorKind::Inpaint)
    }
    fn x_shape(&self) -> [usize; 3] {
        self.x_shape
    }
    fn y_shape(&self) -> [usize; 3] {
        self.x_shape
    }
    fn vt(&self, x: &Img) -> Img {
        check_shape("inpaint vt", x, self.x_shape);
        x.clone()
    }
    fn v(&self, c: &Img) -> Img {
        check_shape("inpaint v", c, self.x_shape);
        c.clone()
    }
    fn ut(&self, y: &Img) -> Img {
        check_shape("inpaint ut", y, self.x_shape);
        y.clone()
    }
    fn u(&self, c: &Img) -> Img {
        check_shape("inpaint u", c, self.x_shape);
        c.clone()
    }
    fn singulars(&self) -> &Img {
        &self.m
    }
    fn forward(&self, x: &Img) -> Img {
        self.masked("inpaint forward", x)
    }
    fn adjoint(&self, y: &Img) -> Img {
        self.masked("inpaint adjoint", y)
    }
    fn pinv(&self, y: &Img) -> Img {
        self.masked("inpaint pinv", y)
    }
    fn pinv_adjoint(&self, x: &Img) -> Img {
        self.masked("inpaint pinv_adjoint", x)
    }
    fn project(&self, x: &Img) -> Img {
        self.masked("inpaint project", x)
    }
    fn pinv_gram(&self, x: &Img) -> Img {
        self.masked("inpaint pinv_gram", x)
    }
}
