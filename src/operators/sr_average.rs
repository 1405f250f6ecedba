//! Super-resolution by block averaging (docs/operators.md §2.3; diffusion `srN`, DDRM "SuperResolution"),
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

use ndarray::s;

use super::{check_shape, validate_x_shape, Img, LinearOperator};
use crate::error::{Error, Result};

/// Mean over non-overlapping f×f blocks (see the module docs).
#[derive(Debug, Clone)]
pub struct SrAverage {
    x_shape: [usize; 3],
    f: usize,
    /// Orthonormal DCT-II matrix, row-major f×f: dct[k·f + p] = α_k cos(π(2p + 1)k / 2f).
    dct: Vec<f64>,
    /// Its transpose, dct_t[p·f + k] = dct[k·f + p].
    dct_t: Vec<f64>,
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
        let dct_t = (0..f * f).map(|i| dct[(i % f) * f + i / f]).collect();
        Ok(SrAverage {
            x_shape,
            f,
            dct,
            dct_t,
            singulars,
        })
    }

    /// The block size f.
    pub fn scale(&self) -> usize {
        self.f
    }

    /// out = L · blk · Lᵀ per f×f block, with L = D (`transpose` = false: Vᵀ, C = D B Dᵀ) or L = Dᵀ
    /// (`transpose` = true: V, B = Dᵀ C D).
    ///
    /// Works on strips of f consecutive rows (contiguous in the standard layout; H is a multiple of f,
    /// so a strip never crosses a channel): T = L · S over the whole strip as f row-axpys, then each
    /// f×f block of T times Lᵀ. One output allocation and one f×W scratch strip per call.
    fn block_transform(&self, x: &Img, transpose: bool) -> Img {
        let f = self.f;
        let l: &[f64] = if transpose { &self.dct_t } else { &self.dct };
        let [c, h, w] = self.x_shape;
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout");
        let mut out = vec![0.0; c * h * w];
        let mut t = vec![0.0; f * w];
        for (s, o) in xs.chunks_exact(f * w).zip(out.chunks_exact_mut(f * w)) {
            // T = L · S: T[a, :] = Σ_p L[a, p] S[p, :].
            t.fill(0.0);
            for (a, trow) in t.chunks_exact_mut(w).enumerate() {
                for (p, srow) in s.chunks_exact(w).enumerate() {
                    let coef = l[a * f + p];
                    trow.iter_mut()
                        .zip(srow)
                        .for_each(|(tv, &sv)| *tv += coef * sv);
                }
            }
            // O[a, bj·f + e] = Σ_q T[a, bj·f + q] L[e, q].
            for (trow, orow) in t.chunks_exact(w).zip(o.chunks_exact_mut(w)) {
                for (tb, ob) in trow.chunks_exact(f).zip(orow.chunks_exact_mut(f)) {
                    for (e, ov) in ob.iter_mut().enumerate() {
                        let lrow = &l[e * f..(e + 1) * f];
                        let mut acc = 0.0;
                        for (&tv, &lv) in tb.iter().zip(lrow) {
                            acc += tv * lv;
                        }
                        *ov = acc;
                    }
                }
            }
        }
        Img::from_shape_vec((c, h, w), out).expect("shape")
    }

    /// Block sums: y[c, bi, bj] = Σ over block (bi, bj) of channel c, summed row by row over contiguous
    /// strips (no per-block views).
    fn block_sums(&self, x: &Img) -> Img {
        let f = self.f;
        let [c, h, w] = self.x_shape;
        let wy = w / f;
        let x = x.as_standard_layout();
        let xs = x.as_slice().expect("standard layout");
        let mut y = vec![0.0; c * (h / f) * wy];
        for (s, yrow) in xs.chunks_exact(f * w).zip(y.chunks_exact_mut(wy)) {
            for srow in s.chunks_exact(w) {
                for (yv, blk) in yrow.iter_mut().zip(srow.chunks_exact(f)) {
                    *yv += blk.iter().sum::<f64>();
                }
            }
        }
        Img::from_shape_vec((c, h / f, wy), y).expect("shape")
    }

    /// y = g(block sum) per block.
    fn reduce(&self, x: &Img, g: impl Fn(f64) -> f64) -> Img {
        let mut y = self.block_sums(x);
        y.mapv_inplace(g);
        y
    }

    /// x = g(y) replicated over each block (rows of the block written from one expanded row).
    fn replicate(&self, y: &Img, g: impl Fn(f64) -> f64) -> Img {
        let f = self.f;
        let [c, h, w] = self.x_shape;
        let wy = w / f;
        let y = y.as_standard_layout();
        let ys = y.as_slice().expect("standard layout");
        let mut x = vec![0.0; c * h * w];
        for (s, yrow) in x.chunks_exact_mut(f * w).zip(ys.chunks_exact(wy)) {
            let (first, rest) = s.split_at_mut(w);
            for (blk, &v) in first.chunks_exact_mut(f).zip(yrow) {
                blk.fill(g(v));
            }
            for row in rest.chunks_exact_mut(w) {
                row.copy_from_slice(first);
            }
        }
        Img::from_shape_vec((c, h, w), x).expect("shape")
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
    fn kind(&self) -> Option<super::OperatorKind> {
        Some(super::OperatorKind::SrAverage)
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
        let f = self.f as isize;
        let mut c = Img::zeros(self.singulars.raw_dim());
        c.slice_mut(s![.., ..;f, ..;f]).assign(y);
        c
    }
    fn u(&self, c: &Img) -> Img {
        check_shape("sr-average u", c, self.x_shape);
        let f = self.f as isize;
        c.slice(s![.., ..;f, ..;f]).to_owned()
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
        self.replicate(&self.block_sums(x), |s| s / n)
    }
    fn pinv_gram(&self, x: &Img) -> Img {
        check_shape("sr-average pinv_gram", x, self.x_shape);
        self.replicate(&self.block_sums(x), |s| s)
    }
}
