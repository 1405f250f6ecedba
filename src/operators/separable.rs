//! Shared machinery for separable operators (docs/operators.md §2.4–2.5): Y_c = A_h X_c A_wᵀ for every channel
//! c, with A_h ∈ ℝ^{m_h×n_h} acting on rows (image height) and A_w ∈ ℝ^{m_w×n_w} on columns (width),
//! m ≤ n for both.
//!
//! Each 1-D matrix is factorized by SVD (nalgebra), A = U diag(s) V_{:, :m}ᵀ with U m×m and V **full**
//! n×n (the null space is completed to an orthonormal basis). 1-D singular values below the threshold
//! are set to 0, and the *thresholded* factorization defines the operator for every map, so all the laws
//! (adjoint, projector, pseudo-inverse) hold exactly:
//!
//! * spectral layout: coefficient (i, j) of V_hᵀ X_c V_w sits at pixel (i, j) of channel c, with
//!   singular value s_h[i]·s_w[j] for i < m_h, j < m_w and 0 elsewhere (the 2-D singular values are not
//!   sorted, §2.4 item 6: the official permutation is only a storage order);
//! * closed forms: H = A_h' ⊗ A_w' with A' = U diag(s) V_{:, :m}ᵀ the thresholded matrix, so
//!   H x = A_h' X A_w'ᵀ, Hᵀ y = A_h'ᵀ Y A_w', H† y = A_h'⁺ Y A_w'⁺ᵀ (the pseudo-inverse of a Kronecker
//!   product is the Kronecker product of the pseudo-inverses) and P x = P_h X P_w with P = A'⁺A'.
//!   Those 1-D maps are precomputed, each stored densely or, when the threshold leaves rank r with
//!   r·(out + in) < out·in, as its two rank-r factors; a map costs two (or four thin) matrix products
//!   per channel.
//!
//! Besides the user threshold, a 1-D singular value at or below the numerical-rank tolerance
//! max(m, n)·ε·s_max is treated as 0 (otherwise H† would divide by rounding noise); with threshold 0
//! the operator therefore equals the direct formula up to rounding.
//!
//! §14.1 item 8 (threshold stability): a 1-D singular value within 1e-5 of the threshold makes the rank
//! depend on rounding (f32 and f64 may disagree); a `tracing::warn!` is emitted when that happens.

use ndarray::linalg::general_mat_mul;
use ndarray::{s, Array2, ArrayView2, ArrayView3, Axis};

use super::{check_shape, Img, LinearOperator, OperatorKind};
use crate::error::{Error, Result};

/// Distance to the threshold under which a warning is emitted (§14.1 item 8).
const THRESHOLD_WARN_MARGIN: f64 = 1e-5;

/// One thresholded 1-D factor A = U diag(s) V_{:, :m}ᵀ and the matrices derived from it.
#[derive(Debug, Clone)]
struct Factor {
    /// Left singular vectors, m×m.
    u: Array2<f64>,
    /// Right singular vectors, n×n (full: columns m.. span the null space).
    v: Array2<f64>,
    /// Singular values before thresholding, length m, descending.
    raw_s: Vec<f64>,
    /// Singular values after thresholding (0 where thresholded), length m.
    s: Vec<f64>,
    /// Thresholded matrix A' = U diag(s) V_{:, :m}ᵀ (m×n), kept dense for inspection.
    a: Array2<f64>,
    /// A' as a map.
    fwd: Map1,
    /// A'ᵀ.
    adj: Map1,
    /// A'⁺ = V_{:, :m} diag(s⁺) Uᵀ.
    pinv: Map1,
    /// A'⁺ᵀ.
    pinv_t: Map1,
    /// A'⁺A' (the 1-D projector).
    proj: Map1,
    /// A'⁺ A'⁺ᵀ.
    gram: Map1,
}

impl Factor {
    fn new(what: &str, a: &Array2<f64>, threshold: f64) -> Result<Self> {
        let (m, n) = a.dim();
        if m == 0 || n == 0 {
            return Err(Error::invalid(
                format!("{what} matrix shape"),
                format!("{m}x{n}"),
                "nonzero dimensions",
            ));
        }
        if m > n {
            return Err(Error::invalid(
                format!("{what} matrix shape"),
                format!("{m}x{n}"),
                "no more rows than columns (a separable operator must not upsample)",
            ));
        }
        if a.iter().any(|v| !v.is_finite()) {
            return Err(Error::Numerical(format!(
                "{what} matrix has non-finite entries"
            )));
        }
        let dense = nalgebra::DMatrix::from_fn(m, n, |i, j| a[[i, j]]);
        let svd = nalgebra::SVD::try_new(dense, true, true, f64::EPSILON, 0).ok_or_else(|| {
            Error::Numerical(format!("svd of the {what} matrix did not converge"))
        })?;
        // `try_new` returns singular values sorted in descending order with U, Vᵀ permuted alike.
        let svd_u = svd.u.as_ref().expect("u requested");
        let svd_vt = svd.v_t.as_ref().expect("v_t requested");
        // thin: U m×m, Vᵀ m×n
        let raw_s: Vec<f64> = svd.singular_values.iter().copied().collect();
        let u = Array2::from_shape_fn((m, m), |(i, k)| svd_u[(i, k)]);
        let mut v = Array2::<f64>::zeros((n, n));
        for k in 0..m {
            for j in 0..n {
                v[[j, k]] = svd_vt[(k, j)];
            }
        }
        if m < n {
            // Complete the null space: V₁ = Q R (Householder QR, R invertible since V₁ is orthonormal), and
            // the full n×n Q, formed by applying the m reflectors to the identity (O(n²m)), has columns
            // m.. spanning the orthogonal complement of V₁'s columns.
            let v1 = nalgebra::DMatrix::from_fn(n, m, |j, k| v[[j, k]]);
            let qr = nalgebra::linalg::QR::new(v1);
            let mut qt = nalgebra::DMatrix::<f64>::identity(n, n);
            qr.q_tr_mul(&mut qt);
            for k in m..n {
                for j in 0..n {
                    v[[j, k]] = qt[(k, j)];
                }
            }
        }

        let s_max = raw_s.iter().copied().fold(0.0_f64, f64::max);
        let rank_tol = (m.max(n) as f64) * f64::EPSILON * s_max;
        let s: Vec<f64> = raw_s
            .iter()
            .map(|&s| {
                if s >= threshold && s > rank_tol {
                    s
                } else {
                    0.0
                }
            })
            .collect();
        if threshold > 0.0 {
            if let Some(close) = raw_s
                .iter()
                .copied()
                .find(|s| (s - threshold).abs() < THRESHOLD_WARN_MARGIN)
            {
                tracing::warn!(
                    "{what}: 1-d singular value {close:.9} lies within {THRESHOLD_WARN_MARGIN:e} of the \
                     threshold {threshold}; the rank may differ between f32 and f64 implementations"
                );
            }
        }

        // Kept singular triplets: U_r (m×r), V_r (n×r), s_r.
        let kept: Vec<usize> = (0..m).filter(|&k| s[k] != 0.0).collect();
        let r = kept.len();
        let col = |mat: &Array2<f64>, rows: usize, g: &dyn Fn(f64) -> f64| {
            Array2::from_shape_fn((rows, r), |(i, q)| mat[[i, kept[q]]] * g(s[kept[q]]))
        };
        let one = |_: f64| 1.0;
        let id = |s: f64| s;
        let recip = |s: f64| 1.0 / s;
        let ur = col(&u, m, &one);
        let vr = col(&v, n, &one);
        let ur_s = col(&u, m, &id);
        let vr_inv = col(&v, n, &recip);
        let a_thr = ur_s.dot(&vr.t());
        Ok(Factor {
            u,
            raw_s,
            s,
            a: a_thr,
            fwd: Map1::new(ur_s.clone(), vr.t().to_owned()),
            adj: Map1::new(vr.clone(), ur_s.t().to_owned()),
            pinv: Map1::new(vr_inv.clone(), ur.t().to_owned()),
            pinv_t: Map1::new(ur.clone(), vr_inv.t().to_owned()),
            proj: Map1::new(vr.clone(), vr.t().to_owned()),
            gram: Map1::new(vr_inv.clone(), vr_inv.t().to_owned()),
            v,
        })
    }

    fn m(&self) -> usize {
        self.u.nrows()
    }
    fn n(&self) -> usize {
        self.v.nrows()
    }
}

/// A 1-D map M (out×in), stored densely or, when applying it is cheaper that way, as the product
/// M = L R of its rank-r factors (L out×r, R r×in): r·(out + in) < out·in, e.g. a blur whose threshold
/// keeps 72 of 256 singular values.
#[derive(Debug, Clone)]
enum Map1 {
    Dense(Array2<f64>),
    LowRank(Array2<f64>, Array2<f64>),
}

impl Map1 {
    fn new(l: Array2<f64>, r: Array2<f64>) -> Self {
        let (out, rank) = l.dim();
        let inp = r.ncols();
        if rank * (out + inp) < out * inp {
            Map1::LowRank(l, r)
        } else {
            Map1::Dense(l.dot(&r))
        }
    }

    /// (outer factor, if any; inner factor applied first).
    fn parts(&self) -> (Option<&Array2<f64>>, &Array2<f64>) {
        match self {
            Map1::Dense(m) => (None, m),
            Map1::LowRank(l, r) => (Some(l), r),
        }
    }
}

/// Y_c = M_h X_c M_wᵀ for every channel.
fn apply2(mh: &Map1, x: ArrayView3<f64>, mw: &Map1) -> Img {
    let (lh, rh) = mh.parts();
    let (lw, rw) = mw.parts();
    let inner = sandwich(rh.view(), x, rw.t());
    match (lh, lw) {
        (None, None) => inner,
        (Some(lh), Some(lw)) => sandwich(lh.view(), inner.view(), lw.t()),
        (Some(lh), None) => one_side(
            inner.view(),
            |z, out| general_mat_mul(1.0, lh, &z, 0.0, out),
            lh.nrows(),
            inner.dim().2,
        ),
        (None, Some(lw)) => one_side(
            inner.view(),
            |z, out| general_mat_mul(1.0, &z, &lw.t(), 0.0, out),
            inner.dim().1,
            lw.nrows(),
        ),
    }
}

/// out_c = g(X_c) for every channel, with g writing an (h×w) result.
fn one_side(
    x: ArrayView3<f64>,
    g: impl Fn(ArrayView2<f64>, &mut ndarray::ArrayViewMut2<f64>),
    h: usize,
    w: usize,
) -> Img {
    let mut out = Img::zeros((x.dim().0, h, w));
    for (xc, mut oc) in x.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
        g(xc, &mut oc);
    }
    out
}

/// Y_c = L X_c R for every channel, with one scratch matrix reused across channels.
fn sandwich(left: ArrayView2<f64>, x: ArrayView3<f64>, right: ArrayView2<f64>) -> Img {
    let (ch, _, w) = x.dim();
    let mut out = Img::zeros((ch, left.nrows(), right.ncols()));
    let mut tmp = Array2::<f64>::zeros((left.nrows(), w));
    for c in 0..ch {
        general_mat_mul(1.0, &left, &x.index_axis(Axis(0), c), 0.0, &mut tmp);
        general_mat_mul(1.0, &tmp, &right, 0.0, &mut out.index_axis_mut(Axis(0), c));
    }
    out
}

/// A separable operator Y_c = A_h X_c A_wᵀ, factorized and thresholded (see the module docs).
#[derive(Debug, Clone)]
pub struct Separable {
    name: &'static str,
    kind: Option<OperatorKind>,
    x_shape: [usize; 3],
    rows: Factor,
    cols: Factor,
    singulars: Img,
    threshold: f64,
}

impl Separable {
    /// The same operator, reporting `kind` as its [`LinearOperator::kind`].
    pub fn with_kind(mut self, kind: OperatorKind) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Build from the row matrix `a_h` (m_h×H) and the column matrix `a_w` (m_w×W) for images with
    /// `channels` channels. 1-D singular values below `threshold` (finite, ≥ 0) are set to 0.
    pub fn new(
        name: &'static str,
        channels: usize,
        a_h: &Array2<f64>,
        a_w: &Array2<f64>,
        threshold: f64,
    ) -> Result<Self> {
        if channels == 0 {
            return Err(Error::invalid(
                format!("{name} channel count"),
                channels,
                "at least 1",
            ));
        }
        if !(threshold.is_finite() && threshold >= 0.0) {
            return Err(Error::invalid(
                format!("{name} svd threshold"),
                threshold,
                "a finite value >= 0",
            ));
        }
        let rows = Factor::new(&format!("{name} row"), a_h, threshold)?;
        let cols = if a_h == a_w {
            rows.clone()
        } else {
            Factor::new(&format!("{name} column"), a_w, threshold)?
        };
        let x_shape = [channels, rows.n(), cols.n()];
        let mut singulars = Img::zeros((channels, rows.n(), cols.n()));
        for mut plane in singulars.axis_iter_mut(Axis(0)) {
            for (i, &sh) in rows.s.iter().enumerate() {
                for (j, &sw) in cols.s.iter().enumerate() {
                    plane[[i, j]] = sh * sw;
                }
            }
        }
        Ok(Separable {
            name,
            kind: None,
            x_shape,
            rows,
            cols,
            singulars,
            threshold,
        })
    }

    /// The threshold this operator was built with.
    pub fn threshold(&self) -> f64 {
        self.threshold
    }

    /// 1-D singular values of the row matrix after thresholding (descending, 0 where thresholded).
    pub fn row_singulars(&self) -> &[f64] {
        &self.rows.s
    }

    /// 1-D singular values of the column matrix after thresholding.
    pub fn col_singulars(&self) -> &[f64] {
        &self.cols.s
    }

    /// The smallest |s − threshold| over all 1-D singular values before thresholding (§14.1 item 8);
    /// under 1e-5 the rank is sensitive to rounding.
    pub fn threshold_margin(&self) -> f64 {
        self.rows
            .raw_s
            .iter()
            .chain(self.cols.raw_s.iter())
            .map(|s| (s - self.threshold).abs())
            .fold(f64::INFINITY, f64::min)
    }

    /// Number of nonzero 2-D singular values per channel (the rank of one channel's operator).
    pub fn rank_per_channel(&self) -> usize {
        let rh = self.rows.s.iter().filter(|s| **s != 0.0).count();
        let rw = self.cols.s.iter().filter(|s| **s != 0.0).count();
        rh * rw
    }

    /// The thresholded row matrix A_h' (m_h×H).
    pub fn row_matrix(&self) -> &Array2<f64> {
        &self.rows.a
    }

    /// The thresholded column matrix A_w' (m_w×W).
    pub fn col_matrix(&self) -> &Array2<f64> {
        &self.cols.a
    }
}

impl LinearOperator for Separable {
    fn name(&self) -> &'static str {
        self.name
    }
    fn kind(&self) -> Option<OperatorKind> {
        self.kind
    }
    fn x_shape(&self) -> [usize; 3] {
        self.x_shape
    }
    fn y_shape(&self) -> [usize; 3] {
        [self.x_shape[0], self.rows.m(), self.cols.m()]
    }
    fn vt(&self, x: &Img) -> Img {
        check_shape(self.name, x, self.x_shape);
        sandwich(self.rows.v.t(), x.view(), self.cols.v.view())
    }
    fn v(&self, c: &Img) -> Img {
        check_shape(self.name, c, self.x_shape);
        sandwich(self.rows.v.view(), c.view(), self.cols.v.t())
    }
    fn ut(&self, y: &Img) -> Img {
        check_shape(self.name, y, self.y_shape());
        let small = sandwich(self.rows.u.t(), y.view(), self.cols.u.view());
        let mut c = Img::zeros((self.x_shape[0], self.x_shape[1], self.x_shape[2]));
        c.slice_mut(s![.., ..self.rows.m(), ..self.cols.m()])
            .assign(&small);
        c
    }
    fn u(&self, c: &Img) -> Img {
        check_shape(self.name, c, self.x_shape);
        sandwich(
            self.rows.u.view(),
            c.slice(s![.., ..self.rows.m(), ..self.cols.m()]),
            self.cols.u.t(),
        )
    }
    fn singulars(&self) -> &Img {
        &self.singulars
    }

    fn forward(&self, x: &Img) -> Img {
        check_shape(self.name, x, self.x_shape);
        apply2(&self.rows.fwd, x.view(), &self.cols.fwd)
    }
    fn adjoint(&self, y: &Img) -> Img {
        check_shape(self.name, y, self.y_shape());
        apply2(&self.rows.adj, y.view(), &self.cols.adj)
    }
    fn pinv(&self, y: &Img) -> Img {
        check_shape(self.name, y, self.y_shape());
        apply2(&self.rows.pinv, y.view(), &self.cols.pinv)
    }
    fn pinv_adjoint(&self, x: &Img) -> Img {
        check_shape(self.name, x, self.x_shape);
        apply2(&self.rows.pinv_t, x.view(), &self.cols.pinv_t)
    }
    fn project(&self, x: &Img) -> Img {
        check_shape(self.name, x, self.x_shape);
        apply2(&self.rows.proj, x.view(), &self.cols.proj)
    }
    fn pinv_gram(&self, x: &Img) -> Img {
        check_shape(self.name, x, self.x_shape);
        apply2(&self.rows.gram, x.view(), &self.cols.gram)
    }
}

/// Implement [`LinearOperator`] for a newtype `struct T { inner: Separable, .. }` by delegation.
macro_rules! delegate_to_separable {
    ($t:ty) => {
        impl $crate::operators::LinearOperator for $t {
            fn name(&self) -> &'static str {
                self.inner.name()
            }
            fn kind(&self) -> Option<$crate::operators::OperatorKind> {
                self.inner.kind()
            }
            fn x_shape(&self) -> [usize; 3] {
                self.inner.x_shape()
            }
            fn y_shape(&self) -> [usize; 3] {
                self.inner.y_shape()
            }
            fn vt(&self, x: &$crate::tensor::Img) -> $crate::tensor::Img {
                self.inner.vt(x)
            }
            fn v(&self, c: &$crate::tensor::Img) -> $crate::tensor::Img {
                self.inner.v(c)
            }
            fn ut(&self, y: &$crate::tensor::Img) -> $crate::tensor::Img {
                self.inner.ut(y)
            }
            fn u(&self, c: &$crate::tensor::Img) -> $crate::tensor::Img {
                self.inner.u(c)
            }
            fn singulars(&self) -> &$crate::tensor::Img {
                self.inner.singulars()
            }
            fn forward(&self, x: &$crate::tensor::Img) -> $crate::tensor::Img {
                self.inner.forward(x)
            }
            fn adjoint(&self, y: &$crate::tensor::Img) -> $crate::tensor::Img {
                self.inner.adjoint(y)
            }
            fn pinv(&self, y: &$crate::tensor::Img) -> $crate::tensor::Img {
                self.inner.pinv(y)
            }
            fn pinv_adjoint(&self, x: &$crate::tensor::Img) -> $crate::tensor::Img {
                self.inner.pinv_adjoint(x)
            }
            fn project(&self, x: &$crate::tensor::Img) -> $crate::tensor::Img {
                self.inner.project(x)
            }
            fn pinv_gram(&self, x: &$crate::tensor::Img) -> $crate::tensor::Img {
                self.inner.pinv_gram(x)
            }
        }
    };
}
pub(crate) use delegate_to_separable;
