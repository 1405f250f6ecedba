//! Per-singular-value coefficient tables shared by the noisy conjugate integrators.
//!
//! With measurement noise the guided ODE's linear part is no longer a function of the projector P alone:
//! it is V diag(f(ρ_k)) Vᵀ with ρ_k = σ_y²/s_k² for each spectral coordinate k of the operator
//! (ρ = ∞ where s_k = 0, off the row space). Everything a step needs is then a scalar per coordinate that
//! depends on the coordinate only through ρ_k, and the operators have few distinct singular values (one
//! for denoising, inpainting and block averaging; one per pair of 1-D singular values for separable
//! operators). [`SpectralMap`] groups the coordinates of one problem by ρ and [`RhoCache`] computes each
//! distinct ρ's table once per sampler (so once per run).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ndarray::Zip;

use super::quad;
use crate::error::Result;
use crate::operators::LinearOperator;
use crate::tensor::Img;

/// ρ = σ_y²/s² of one spectral coordinate: ∞ off the row space (s = 0), 0 on it when σ_y = 0.
pub fn rho(sigma_y: f64, s: f64) -> f64 {
    if s == 0.0 {
        f64::INFINITY
    } else {
        sigma_y * sigma_y / (s * s)
    }
}

/// The three ΔΦ's of each step [t_k, t_{k+1}] of `grid` for one ρ, by quadrature of the integrands of the
/// model term (`f_own`: ε̂ or v̂), the measurement term (`f_y`) and the Jacobian term (`f_j`). The
/// measurement term is 0 off the row space (ρ = ∞), where H†y has no component.
pub fn step_phis(
    grid: &[f64],
    rho: f64,
    f_own: impl Fn(f64) -> f64,
    f_y: impl Fn(f64) -> f64,
    f_j: impl Fn(f64) -> f64,
) -> Result<[Vec<f64>; 3]> {
    let steps = grid.len() - 1;
    let mut phis = [
        Vec::with_capacity(steps),
        Vec::with_capacity(steps),
        Vec::with_capacity(steps),
    ];
    for k in 0..steps {
        let (ta, tb) = (grid[k], grid[k + 1]);
        phis[0].push(quad::integrate(&f_own, ta, tb)?);
        phis[1].push(if rho.is_infinite() {
            0.0
        } else {
            quad::integrate(&f_y, ta, tb)?
        });
        phis[2].push(quad::integrate(&f_j, ta, tb)?);
    }
    Ok(phis)
}

/// What a noisy integrator's per-ρ table gives one step k: its three ΔΦ's (model term, measurement term,
/// Jacobian term) and ln a(t_{k+1}).
pub trait StepTable {
    fn phis(&self, k: usize) -> [f64; 3];
    fn log_a_next(&self, k: usize) -> f64;
}

/// The std of the fresh noise a coordinate with ρ = σ_y²/s² gets at the start: μŷ already carries noise of
/// variance μ²ρ, so √max(σ² − μ²ρ, 0) tops it up to σ² (σ off the row space, ρ = ∞).
pub fn start_noise(mu: f64, sigma: f64, rho: f64) -> f64 {
    if rho.is_infinite() {
        sigma
    } else {
        (sigma * sigma - mu * mu * rho).max(0.0).sqrt()
    }
}

/// A noisy integrator's start in spectral coordinates, Vᵀx = μ ŷ + start_noise(μ, σ, ρ_k) ⊙ Vᵀz with
/// ŷ = Vᵀ H†y: x is distributed as the forward process puts it at that time given the clean image (μx,
/// noise σ²) on every coordinate where y's own noise does not exceed σ, instead of adding σz on top of
/// y's noise. The samplers need these coordinates (x̄ = a ⊙ Vᵀx) as well as x = V(·).
pub fn start(
    op: &dyn LinearOperator,
    sigma_y: f64,
    yhat: &Img,
    z: &Img,
    mu: f64,
    sigma: f64,
) -> Img {
    let kappa = op
        .singulars()
        .mapv(|s| start_noise(mu, sigma, rho(sigma_y, s)));
    yhat * mu + &(op.vt(z) * &kappa)
}

/// One step of a noisy integrator in the spectral basis, for one problem: x̄ ← decay·x̄ + ΔΦ_own ⊙ Vᵀown
/// + ΔΦ_y ⊙ ŷ + ΔΦ_j ⊙ Vᵀg, each coordinate with its own ρ's table; returns x = V(x̄ / a(t_{k+1})).
#[allow(clippy::too_many_arguments)]
pub fn advance<T: StepTable>(
    map: &SpectralMap<T>,
    op: &dyn LinearOperator,
    k: usize,
    decay: f64,
    xbar: &mut Img,
    yhat: &Img,
    own: &Img,
    g: &Img,
) -> Img {
    let shape = op.x_shape();
    let coef = |i: usize| map.fill(&shape, |c| c.phis(k)[i]);
    let (phi_own, phi_y, phi_j) = (coef(0), coef(1), coef(2));
    let (vo, vg) = (op.vt(own), op.vt(g));
    Zip::from(&mut *xbar)
        .and(&phi_own)
        .and(&vo)
        .and(&phi_y)
        .and(yhat)
        .for_each(|xb, &po, &o, &py, &y| *xb = decay * *xb + po * o + py * y);
    Zip::from(&mut *xbar)
        .and(&phi_j)
        .and(&vg)
        .for_each(|xb, &pj, &g| *xb += pj * g);
    let inv_a = map.fill(&shape, |c| (-c.log_a_next(k)).exp());
    op.v(&(&*xbar * &inv_a))
}

/// A problem's spectral coordinates grouped by their ρ.
#[derive(Debug, Clone)]
pub struct SpectralMap<T> {
    /// For each coordinate (in the x-shaped spectral layout, row-major), the index of its table.
    pub index: Vec<u32>,
    /// One table per distinct ρ.
    pub tables: Vec<Arc<T>>,
}

impl<T> SpectralMap<T> {
    /// Group `op`'s coordinates by ρ = σ_y²/s², taking each distinct ρ's table from `cache`.
    pub fn new(
        op: &dyn LinearOperator,
        sigma_y: f64,
        cache: &RhoCache<T>,
        make: impl Fn(f64) -> Result<T>,
    ) -> Result<Self> {
        let mut seen: HashMap<u64, u32> = HashMap::new();
        let mut tables = Vec::new();
        let mut index = Vec::with_capacity(op.singulars().len());
        for &s in op.singulars().iter() {
            let r = rho(sigma_y, s);
            let i = match seen.get(&r.to_bits()) {
                Some(&i) => i,
                None => {
                    let i = tables.len() as u32;
                    tables.push(cache.get(r, &make)?);
                    seen.insert(r.to_bits(), i);
                    i
                }
            };
            index.push(i);
        }
        Ok(SpectralMap { index, tables })
    }

    /// An x-shaped array holding `f(table)` at every coordinate.
    pub fn fill(&self, shape: &[usize], f: impl Fn(&T) -> f64) -> Img {
        let vals: Vec<f64> = self.tables.iter().map(|t| f(t.as_ref())).collect();
        let data = self.index.iter().map(|&i| vals[i as usize]).collect();
        Img::from_shape_vec((shape[0], shape[1], shape[2]), data).expect("x-shaped")
    }
}

/// Tables keyed by ρ, computed on first use and shared by every later problem of the run.
#[derive(Debug)]
pub struct RhoCache<T>(Mutex<HashMap<u64, Arc<T>>>);

impl<T> Default for RhoCache<T> {
    fn default() -> Self {
        RhoCache(Mutex::new(HashMap::new()))
    }
}

impl<T> RhoCache<T> {
    fn get(&self, rho: f64, make: impl Fn(f64) -> Result<T>) -> Result<Arc<T>> {
        if let Some(t) = self.0.lock().expect("cache lock").get(&rho.to_bits()) {
            return Ok(t.clone());
        }
        let t = Arc::new(make(rho)?);
        self.0
            .lock()
            .expect("cache lock")
            .insert(rho.to_bits(), t.clone());
        Ok(t)
    }

    /// Number of distinct ρ computed so far.
    pub fn len(&self) -> usize {
        self.0.lock().expect("cache lock").len()
    }

    /// Whether nothing was computed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
