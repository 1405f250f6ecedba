//! Super-resolution by block averaging (algorithms.md §2.3; diffusion `srN`, DDRM "SuperResolution"),
//! any integer factor f and any image size divisible by f: y is the mean of each non-overlapping f×f
//! block of its channel.
//!
//! Closed forms (O(pixels), no per-pixel allocation): Hᵀ y = replication / f², H† y = nearest-neighbour
//! replication, P x = block mean replicated, (H†)ᵀ x = block sums.
//!
//! Spectral view: each f×f block B is transformed by the orthonormal 2-D DCT-II, C = D B Dᵀ, whose first
//! basis vector is the constant (1/f)·𝟙. Block (bi, bj)'s coefficient (p, q) is laid out at pixel
//! (bi·f + p, bj·f + q), so the block-DC coordinate sits at (bi·f, bj·f); it carries singular value 1/f
//! (C₀₀ = f·mean), every other coordinate 0. U is the identity between y pixel (bi, bj) and that
//! DC coordinate. (The official code orders coordinates differently, §2.3; that is only a storage order.)

use ndarray::{ArrayView3, ArrayViewMut3, Zip};

use super::{check_shape, validate_x_shape, Img, LinearOperator};
use crate::error::{Error, Result};

/// Mean over non-overlapping f×f blocks (see the module docs).
#[derive(Debug, Clone)]
pub struct SrAverage {
    x_shape: [usize; 3],
    f: usize,
    /// Orthonormal DCT-II matrix, row-major f×f: dct[k·f + p] = α_k cos(π(2p + 1)k / 2f).
    dct: Vec<f64>,
    singulars: Img,
}

impl SrAverage {
    /// Operator for images (C, H, W) with H and W divisible by `scale` (≥ 1).
    pub fn new(x_shape: [usize; 3], scale: usize) -> Result<Self> {
        validate_x_shape("sr-average", x_shape)?;
        if scale == 0 {
            return Err(Error::invalid("sr-average scale", scale, "an integer >= 1"));
        }
        let [c, h, w] = x_shape;
        for (what, n) in [("height", h), ("width", w)] {
            if !n.is_multiple_of(scale) {
                return Err(Error::invalid(
                    format!("sr-average image {what}"),
                    n,
                    format!("a multiple of the scale factor {scale}"),
                ));
            }
        }
        let f = scale;
        let ff = f as f64;
        let mut dct = vec![0.0; f * f];
        for k in 0..f {
            let alpha = if k == 0 {
                (1.0 / ff).sqrt()
            } else {
                (2.0 / ff).sqrt()
            };
            for p in 0..f {
                dct[k * f + p] = if k == 0 {
                    alpha
                } else {
                    alpha
                        * (std::f64::consts::PI * (2 * p + 1) as f64 * k as f64 / (2.0 * ff)).cos()
                };
            }
        }
        let mut singulars = Img::zeros((c, h, w));
        for ch in 0..c {
            for bi in 0..h / f {
                for bj in 0..w / f {
                    singulars[[ch, bi * f, bj * f]] = 1.0 / ff;
                }
            }
        }
        Ok(SrAverage {
            x_shape,
            f,
            dct,
            singulars,
        })
    }

    /// The block size f.
    pub fn scale(&self) -> usize {
        self.f
    }

    fn chunk(&self) -> (usize, usize, usize) {
        (1, self.f, self.f)
    }

    /// out = L · blk · R per f×f block, with L[a][b] = dct[a·f+b] or its transpose (`transpose`).
    /// Vᵀ: C = D B Dᵀ (transpose = false); V: B = Dᵀ C D (transpose = true).
    fn block_transform(&self, x: &Img, transpose: bool) -> Img {
        let f = self.f;
        let d = |a: usize, b: usize| {
            if transpose {
                self.dct[b * f + a]
            } else {
                self.dct[a * f + b]
            }
        };
        let mut out = Img::zeros(x.raw_dim());
        let mut tmp = vec![0.0; f * f];
        Zip::from(out.exact_chunks_mut(self.chunk()))
            .and(x.exact_chunks(self.chunk()))
            .for_each(|mut o: ArrayViewMut3<f64>, b: ArrayView3<f64>| {
                // tmp = L · B
                for a in 0..f {
                    for q in 0..f {
                        let mut acc = 0.0;
                        for p in 0..f {
                            acc += d(a, p) * b[[0, p, q]];
                        }
                        tmp[a * f + q] = acc;
                    }
                }
                // o = tmp · Lᵀ
                for a in 0..f {
                    for e in 0..f {
                        let mut acc = 0.0;
                        for q in 0..f {
                            acc += tmp[a * f + q] * d(e, q);
                        }
                        o[[0, a, e]] = acc;
                    }
                }
            });
        out
    }

    /// y = g(block sum) per block.
    fn reduce(&self, x: &Img, g: impl Fn(f64) -> f64) -> Img {
        let [c, h, w] = self.x_shape;
        let mut y = Img::zeros((c, h / self.f, w / self.f));
        Zip::from(&mut y)
            .and(x.exact_chunks(self.chunk()))
            .for_each(|y, b| *y = g(b.sum()));
        y
    }

    /// x = g(y) replicated over each block.
    fn replicate(&self, y: &Img, g: impl Fn(f64) -> f64) -> Img {
        let [c, h, w] = self.x_shape;
        let mut x = Img::zeros((c, h, w));
        let chunk = self.chunk();
        Zip::from(x.exact_chunks_mut(chunk))
            .and(y)
            .for_each(|mut b, &v| b.fill(g(v)));
        x
    }

    fn y_dims(&self) -> [usize; 3] {
        let [c, h, w] = self.x_shape;
        [c, h / self.f, w / self.f]
    }
}

impl LinearOperator for SrAverage {
    fn name(&self) -> &'static str {
        "sr-average"
    }
    fn x_shape(&self) -> [usize; 3] {
        self.x_shape
    }
    fn y_shape(&self) -> [usize; 3] {
        self.y_dims()
    }
    fn vt(&self, x: &Img) -> Img {
        check_shape("sr-average vt", x, self.x_shape);
        self.block_transform(x, false)
    }
    fn v(&self, c: &Img) -> Img {
        check_shape("sr-average v", c, self.x_shape);
        self.block_transform(c, true)
    }
    fn ut(&self, y: &Img) -> Img {
        check_shape("sr-average ut", y, self.y_dims());
        let mut c = Img::zeros(self.singulars.raw_dim());
        Zip::from(c.exact_chunks_mut(self.chunk()))
            .and(y)
            .for_each(|mut b, &v| b[[0, 0, 0]] = v);
        c
    }
    fn u(&self, c: &Img) -> Img {
        check_shape("sr-average u", c, self.x_shape);
        let mut y = Img::zeros(self.y_dims());
        Zip::from(&mut y)
            .and(c.exact_chunks(self.chunk()))
            .for_each(|y, b| *y = b[[0, 0, 0]]);
        y
    }
    fn singulars(&self) -> &Img {
        &self.singulars
    }

    fn forward(&self, x: &Img) -> Img {
        check_shape("sr-average forward", x, self.x_shape);
        let n = (self.f * self.f) as f64;
        self.reduce(x, |s| s / n)
    }
    fn adjoint(&self, y: &Img) -> Img {
        check_shape("sr-average adjoint", y, self.y_dims());
        let n = (self.f * self.f) as f64;
        self.replicate(y, |v| v / n)
    }
    fn pinv(&self, y: &Img) -> Img {
        check_shape("sr-average pinv", y, self.y_dims());
        self.replicate(y, |v| v)
    }
    fn pinv_adjoint(&self, x: &Img) -> Img {
        check_shape("sr-average pinv_adjoint", x, self.x_shape);
        self.reduce(x, |s| s)
    }
    fn project(&self, x: &Img) -> Img {
        check_shape("sr-average project", x, self.x_shape);
        let n = (self.f * self.f) as f64;
        let mut out = Img::zeros(x.raw_dim());
        Zip::from(out.exact_chunks_mut(self.chunk()))
            .and(x.exact_chunks(self.chunk()))
            .for_each(|mut o, b| o.fill(b.sum() / n));
        out
    }
    fn pinv_gram(&self, x: &Img) -> Img {
        check_shape("sr-average pinv_gram", x, self.x_shape);
        let mut out = Img::zeros(x.raw_dim());
        Zip::from(out.exact_chunks_mut(self.chunk()))
            .and(x.exact_chunks(self.chunk()))
            .for_each(|mut o, b| o.fill(b.sum()));
        out
    }
}
