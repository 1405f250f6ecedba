//! Colorization (docs/operators.md §2.6, `color`): per pixel y_p = h·(R_p, G_p, B_p) with
//! h = (0.3333, 0.3334, 0.3333); x has 3 channels, y has 1.
//!
//! Spectral view: a per-pixel 3×3 orthogonal V whose first row is v₁ = h/‖h‖ (the other two rows
//! complete an orthonormal basis); spectral coordinate k of pixel p is stored in channel k, with singular
//! value s = ‖h‖ = 0.57735027 on channel 0 and 0 on channels 1 and 2. U = 1 maps y_p to channel 0.
//!
//! Closed forms per pixel: Hᵀ y = h y_p, H† y = (h/s²) y_p = (0.99990, 1.00020, 0.99990)·y_p,
//! P x = h (h·x_p)/s², (H†)ᵀ x = (h·x_p)/s².

use ndarray::{s, Axis, Zip};

use super::{check_shape, validate_x_shape, Img, LinearOperator};
use crate::error::{Error, Result};

/// The colour weights of §2.6.
pub const COLORIZE_WEIGHTS: [f64; 3] = [0.3333, 0.3334, 0.3333];

/// RGB → gray with weights [`COLORIZE_WEIGHTS`] (see the module docs).
#[derive(Debug, Clone)]
pub struct Colorize {
    x_shape: [usize; 3],
    h: [f64; 3],
    /// ‖h‖.
    s: f64,
    /// Rows of the per-pixel orthogonal matrix Vᵀ (row 0 = h/‖h‖).
    vt_rows: [[f64; 3]; 3],
    singulars: Img,
}

fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

fn normalized(a: [f64; 3]) -> [f64; 3] {
    let n = dot(&a, &a).sqrt();
    [a[0] / n, a[1] / n, a[2] / n]
}

impl Colorize {
    /// Operator for RGB images of shape (3, H, W).
    pub fn new(x_shape: [usize; 3]) -> Result<Self> {
        validate_x_shape("colorize", x_shape)?;
        if x_shape[0] != 3 {
            return Err(Error::invalid(
                "colorize channel count",
                x_shape[0],
                "3 (an rgb image)",
            ));
        }
        let h = COLORIZE_WEIGHTS;
        let s = dot(&h, &h).sqrt();
        let v1 = [h[0] / s, h[1] / s, h[2] / s];
        // Gram–Schmidt of (1, −1, 0) against v₁, then v₃ = v₁ × v₂.
        let e = [1.0, -1.0, 0.0];
        let p = dot(&e, &v1);
        let v2 = normalized([e[0] - p * v1[0], e[1] - p * v1[1], e[2] - p * v1[2]]);
        let v3 = normalized([
            v1[1] * v2[2] - v1[2] * v2[1],
            v1[2] * v2[0] - v1[0] * v2[2],
            v1[0] * v2[1] - v1[1] * v2[0],
        ]);
        let mut singulars = Img::zeros((3, x_shape[1], x_shape[2]));
        singulars.index_axis_mut(Axis(0), 0).fill(s);
        Ok(Colorize {
            x_shape,
            h,
            s,
            vt_rows: [v1, v2, v3],
            singulars,
        })
    }

    /// The singular value ‖h‖.
    pub fn singular_value(&self) -> f64 {
        self.s
    }

    fn y_dims(&self) -> [usize; 3] {
        [1, self.x_shape[1], self.x_shape[2]]
    }

    /// out_k = Σ_j m[k][j] x_j per pixel (m = Vᵀ rows, or their transpose).
    fn mix(&self, x: &Img, transpose: bool) -> Img {
        let m = &self.vt_rows;
        let w = |k: usize, j: usize| if transpose { m[j][k] } else { m[k][j] };
        let mut out = Img::zeros(x.raw_dim());
        let (x0, x1, x2) = (
            x.index_axis(Axis(0), 0),
            x.index_axis(Axis(0), 1),
            x.index_axis(Axis(0), 2),
        );
        for k in 0..3 {
            let (a, b, c) = (w(k, 0), w(k, 1), w(k, 2));
            Zip::from(out.index_axis_mut(Axis(0), k))
                .and(&x0)
                .and(&x1)
                .and(&x2)
                .for_each(|o, &r, &g, &bl| *o = a * r + b * g + c * bl);
        }
        out
    }

    /// y_p = g · x_p per pixel, one channel.
    fn weigh(&self, x: &Img, g: [f64; 3]) -> Img {
        let mut y = Img::zeros(self.y_dims());
        Zip::from(y.index_axis_mut(Axis(0), 0))
            .and(x.index_axis(Axis(0), 0))
            .and(x.index_axis(Axis(0), 1))
            .and(x.index_axis(Axis(0), 2))
            .for_each(|y, &r, &gr, &b| *y = g[0] * r + g[1] * gr + g[2] * b);
        y
    }

    /// x_p = g ⊗ y_p per pixel, three channels.
    fn spread(&self, y: &Img, g: [f64; 3]) -> Img {
        let mut x = Img::zeros((3, self.x_shape[1], self.x_shape[2]));
        let y0 = y.index_axis(Axis(0), 0);
        for (k, gk) in g.iter().enumerate() {
            Zip::from(x.index_axis_mut(Axis(0), k))
                .and(&y0)
                .for_each(|x, &v| *x = gk * v);
        }
        x
    }
}

impl LinearOperator for Colorize {
    fn name(&self) -> &'static str {
        "colorize"
    }
    fn kind(&self) -> Option<super::OperatorKind> {
        Some(super::OperatorKind::Colorize)
    }
    fn x_shape(&self) -> [usize; 3] {
        self.x_shape
    }
    fn y_shape(&self) -> [usize; 3] {
        self.y_dims()
    }
    fn vt(&self, x: &Img) -> Img {
        check_shape("colorize vt", x, self.x_shape);
        self.mix(x, false)
    }
    fn v(&self, c: &Img) -> Img {
        check_shape("colorize v", c, self.x_shape);
        self.mix(c, true)
    }
    fn ut(&self, y: &Img) -> Img {
        check_shape("colorize ut", y, self.y_dims());
        let mut c = Img::zeros(self.singulars.raw_dim());
        c.slice_mut(s![0..1, .., ..]).assign(y);
        c
    }
    fn u(&self, c: &Img) -> Img {
        check_shape("colorize u", c, self.x_shape);
        c.slice(s![0..1, .., ..]).to_owned()
    }
    fn singulars(&self) -> &Img {
        &self.singulars
    }

    fn forward(&self, x: &Img) -> Img {
        check_shape("colorize forward", x, self.x_shape);
        self.weigh(x, self.h)
    }
    fn adjoint(&self, y: &Img) -> Img {
        check_shape("colorize adjoint", y, self.y_dims());
        self.spread(y, self.h)
    }
    fn pinv(&self, y: &Img) -> Img {
        check_shape("colorize pinv", y, self.y_dims());
        let s2 = self.s * self.s;
        self.spread(y, self.h.map(|v| v / s2))
    }
    fn pinv_adjoint(&self, x: &Img) -> Img {
        check_shape("colorize pinv_adjoint", x, self.x_shape);
        let s2 = self.s * self.s;
        self.weigh(x, self.h.map(|v| v / s2))
    }
    fn project(&self, x: &Img) -> Img {
        check_shape("colorize project", x, self.x_shape);
        let s2 = self.s * self.s;
        let hx = self.weigh(x, self.h.map(|v| v / s2));
        self.spread(&hx, self.h)
    }
    fn pinv_gram(&self, x: &Img) -> Img {
        check_shape("colorize pinv_gram", x, self.x_shape);
        let s2 = self.s * self.s;
        let hx = self.weigh(x, self.h.map(|v| v / s2));
        self.spread(&hx, self.h.map(|v| v / s2))
    }
}
