//! Numerical helpers shared by the sampler tests: norms, a classical RK4 reference solver and the
//! log-log convergence slope.

#![allow(dead_code)] // each test file uses a subset

use conjure::operators::Img;

/// max |a − b| over all entries.
pub fn max_abs(a: &Img, b: &Img) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Euclidean norm.
pub fn norm(a: &Img) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// Classical RK4 for dx/dt = f(t, x) over [t0, t1] in n steps.
pub fn rk4(
    f: impl Fn(f64, &[f64]) -> Vec<f64>,
    x0: &[f64],
    t0: f64,
    t1: f64,
    n: usize,
) -> Vec<f64> {
    let h = (t1 - t0) / n as f64;
    let axpy = |x: &[f64], k: &[f64], a: f64| -> Vec<f64> {
        x.iter().zip(k).map(|(x, k)| x + a * k).collect()
    };
    let mut x = x0.to_vec();
    for i in 0..n {
        let t = t0 + i as f64 * h;
        let k1 = f(t, &x);
        let k2 = f(t + h / 2.0, &axpy(&x, &k1, h / 2.0));
        let k3 = f(t + h / 2.0, &axpy(&x, &k2, h / 2.0));
        let k4 = f(t + h, &axpy(&x, &k3, h));
        for j in 0..x.len() {
            x[j] += h / 6.0 * (k1[j] + 2.0 * k2[j] + 2.0 * k3[j] + k4[j]);
        }
    }
    x
}

/// Least-squares slope of log(err) against log(nfe).
pub fn loglog_slope(nfe: &[usize], err: &[f64]) -> f64 {
    let xs: Vec<f64> = nfe.iter().map(|&n| (n as f64).ln()).collect();
    let ys: Vec<f64> = err.iter().map(|e| e.ln()).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let sxy: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let sxx: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    sxy / sxx
}

/// H as a dense matrix (columns H e_i), from the operator's forward map only.
pub fn dense(op: &dyn conjure::operators::LinearOperator) -> nalgebra::DMatrix<f64> {
    let [c, h, w] = op.x_shape();
    let n = c * h * w;
    let m: usize = op.y_shape().iter().product();
    let mut mat = nalgebra::DMatrix::zeros(m, n);
    for i in 0..n {
        let mut e = Img::zeros((c, h, w));
        e.as_slice_mut().unwrap()[i] = 1.0;
        for (r, v) in op.forward(&e).iter().enumerate() {
            mat[(r, i)] = *v;
        }
    }
    mat
}

/// The noisy integrators' start from the dense H alone (its thin SVD H = U S Vᵀ, singular values below
/// 1e-10·s_max treated as 0): μ H†y + σ z with the fresh noise on each measured direction v_k shrunk from σ
/// to √max(σ² − μ²σ_y²/s_k², 0), since μH†y already carries noise of variance μ²σ_y²/s_k² there:
/// x = μ H†y + σ z + Σ_k (κ_k − σ) v_k v_kᵀ z.
pub fn noisy_start_dense(
    h: &nalgebra::DMatrix<f64>,
    y: &Img,
    z: &Img,
    mu: f64,
    sigma: f64,
    sigma_y: f64,
) -> Img {
    let svd = h.clone().svd(true, true);
    let (u, vt) = (svd.u.unwrap(), svd.v_t.unwrap());
    let smax = svd.singular_values.max();
    let yv = nalgebra::DVector::from_iterator(y.len(), y.iter().copied());
    let zv = nalgebra::DVector::from_iterator(z.len(), z.iter().copied());
    let mut x = &zv * sigma;
    for (k, &s) in svd.singular_values.iter().enumerate() {
        if s <= 1e-10 * smax {
            continue;
        }
        let vk = vt.row(k).transpose();
        let kappa = (sigma * sigma - mu * mu * sigma_y * sigma_y / (s * s))
            .max(0.0)
            .sqrt();
        x += &vk * (mu * u.column(k).dot(&yv) / s + (kappa - sigma) * vk.dot(&zv));
    }
    Img::from_shape_vec(z.raw_dim(), x.iter().copied().collect()).unwrap()
}
