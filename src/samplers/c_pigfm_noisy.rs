//! Noisy C-ΠGFM, derived exactly in the operator's spectral basis (`variant: derived`, the default, when
//! σ_y > 0). The official flow code has no noisy form (its scripts add no noise).
//!
//! **The ODE.** ΠGDM's noisy guidance for a flow is J_{x̂₁}ᵀ Hᵀ(r_t² HHᵀ + σ_y² I)⁻¹(y − H x̂₁) with
//! r_t² = (1 − t)²/(t² + (1 − t)²). C-ΠGFM weights it by w γ(t) r_t², γ(t) = t(1 − t) (the noiseless
//! guidance w γ J_{x̂₁}ᵀ(H†y − P x̂₁) is the σ_y = 0 case), which with H = U diag(s) Vᵀ is
//! w γ J_{x̂₁}ᵀ Γ_t (H†y − x̂₁), Γ_t = V diag(κ_k(t)) Vᵀ,
//!
//!   κ_k(t) = r_t²/(r_t² + ρ_k) = (1 − t)² / ((1 − t)² + ρ_k (t² + (1 − t)²)),   ρ_k = σ_y²/s_k².
//!
//! With x̂₁ = x + (1 − t) v and J_{x̂₁} = I + (1 − t) J_v:
//!
//!   dx/dt = −w γ Γ_t x + v − w γ (1 − t) Γ_t v + w γ Γ_t H†y + w γ (1 − t) J_vᵀ Γ_t (H†y − x̂₁),
//!
//! the noiseless ODE with P replaced by Γ_t. Note κ → 0 as t → 1 when σ_y > 0: the guidance fades where
//! the posterior variance r_t² falls below the noise, instead of forcing H x = y at t = 1.
//!
//! **The transform.** The linear part is diagonal in V, so A_t is the per-coordinate scalar
//! a_k(t) = exp(λt + w B(ρ_k, t)) with B(ρ, t) = ∫₀ᵗ u(1 − u) κ_ρ(u) du in closed form ([`b_exponent`]):
//! with q(u) = (1 + 2ρ)u² − 2(1 + ρ)u + (1 + ρ) = (1 + ρ)(1 − u)² + ρu² (no real root for ρ > 0),
//! u(1 − u)³/q = polynomial + (α + βu)/q, integrated to a cubic, a logarithm and an arctangent.
//! B(0, t) = t²/2 − t³/3 (the noiseless b(t)/w) and B(∞, t) = 0. A_t⁻¹ is 1/a_k.
//!
//! **One step** [t_i → t_{i+1}] (v and g = J_vᵀ Γ_{t_i}(H†y − x̂₁) frozen, λx̄ explicit Euler), in spectral
//! coordinates x̄ = a ⊙ Vᵀx, ŷ = Vᵀ H†y:
//!
//!   x̄ ← (1 + λΔ) x̄ + ΔΦ_v ⊙ Vᵀv + ΔΦ_y ⊙ ŷ + ΔΦ_j ⊙ Vᵀg,   x_{i+1} = V(x̄ / a(t_{i+1})),
//!
//! | Φ | integrand (a = a_ρ(u), κ = κ_ρ(u)) | σ_y = 0, row space | off it |
//! |---|---|---|---|
//! | Φ_v | a (1 − w u(1 − u)² κ) | ΔI₁ + ΔI₂ − ΔK₁ − ΔK₂ | ΔI₁ |
//! | Φ_y | a w u(1 − u) κ | ΔY₁ + ΔY₂ | 0 |
//! | Φ_j | a w u(1 − u)² | ΔK₁ + ΔK₂ | ΔK₁ |
//!
//! so at σ_y = 0 it is the derived noiseless integrator of [`super::c_pigfm`]. Quadrature once per
//! distinct ρ ([`super::spectral`]). σ_y is the problem's, on the model's value scale.
//!
//! **The start** x_τ = V(τŷ + √max((1 − τ)² − τ²ρ_k, 0) ⊙ Vᵀz) ([`super::spectral::start`]): τH†y already
//! carries noise of variance τ²ρ_k on a measured coordinate, so the fresh noise tops it up to the flow's
//! (1 − τ)² instead of adding (1 − τ)z on top; at σ_y = 0 it is the noiseless start τH†y + (1 − τ)z.

use ndarray::Zip;

use super::common::velocity_jt;
use super::spectral::{advance, start, step_phis, RhoCache, SpectralMap, StepTable};
use super::Problem;
use crate::error::Result;
use crate::model::Network;
use crate::tensor::Img;

/// B(ρ, t) = ∫₀ᵗ u(1 − u) κ_ρ(u) du (module doc), in closed form.
pub fn b_exponent(rho: f64, t: f64) -> f64 {
    if rho == 0.0 {
        return t * t / 2.0 - t * t * t / 3.0;
    }
    if rho.is_infinite() {
        return 0.0;
    }
    let a = 1.0 + 2.0 * rho;
    let (bq, c) = (-2.0 * (1.0 + rho), 1.0 + rho);
    let sd = (4.0 * rho * (1.0 + rho)).sqrt();
    let a3 = a * a * a;
    let alpha = rho * (2.0 * rho - 1.0) * (rho + 1.0) / a3;
    let beta = -rho * (4.0 * rho * rho + 4.0 * rho - 1.0) / a3;
    let f = |u: f64| {
        let poly = -(a * a * u.powi(3) / 3.0 - a * (4.0 * rho + 1.0) * u * u / 2.0
            + rho * (2.0 * rho - 1.0) * u)
            / a3;
        poly + beta / (2.0 * a) * (a * u * u + bq * u + c).ln()
            + (alpha - beta * bq / (2.0 * a)) * 2.0 / sd * ((2.0 * a * u + bq) / sd).atan()
    };
    f(t) - f(0.0)
}

/// κ_ρ(u) = r_u²/(r_u² + ρ).
pub fn kappa(rho: f64, u: f64) -> f64 {
    if rho == 0.0 {
        1.0
    } else if rho.is_infinite() {
        0.0
    } else {
        let d = (1.0 - u).powi(2);
        d / (d + rho * (u * u + d))
    }
}

/// The coefficients of one ρ on the grid.
#[derive(Debug, Clone, PartialEq)]
pub struct RhoCoefficients {
    /// ln a(t_i), i = 0..K.
    pub log_a: Vec<f64>,
    /// κ(t_i), i = 0..K−1.
    pub kappa: Vec<f64>,
    /// ΔΦ_v, ΔΦ_y, ΔΦ_j of each step.
    pub phi_v: Vec<f64>,
    pub phi_y: Vec<f64>,
    pub phi_j: Vec<f64>,
}

impl StepTable for RhoCoefficients {
    fn phis(&self, i: usize) -> [f64; 3] {
        [self.phi_v[i], self.phi_y[i], self.phi_j[i]]
    }
    fn log_a_next(&self, i: usize) -> f64 {
        self.log_a[i + 1]
    }
}

/// The exact noisy C-ΠGFM integrator on a fixed grid (derived Jacobian term).
#[derive(Debug)]
pub struct NoisyCPigfm {
    w: f64,
    lambda: f64,
    grid: Vec<f64>,
    cache: RhoCache<RhoCoefficients>,
}

impl Clone for NoisyCPigfm {
    fn clone(&self) -> Self {
        Self::new(self.w, self.lambda, self.grid.clone())
    }
}

impl NoisyCPigfm {
    /// On the flow grid t_0 = st < … < t_K = 1.
    pub fn new(w: f64, lambda: f64, grid: Vec<f64>) -> Self {
        NoisyCPigfm {
            w,
            lambda,
            grid,
            cache: RhoCache::default(),
        }
    }

    /// ln a_ρ(u) = λu + w B(ρ, u).
    pub fn log_a(&self, rho: f64, u: f64) -> f64 {
        self.lambda * u + self.w * b_exponent(rho, u)
    }

    /// The coefficients of ρ, by quadrature ([`Self::sample`] caches them per ρ).
    pub fn coefficients(&self, rho: f64) -> Result<RhoCoefficients> {
        let w = self.w;
        let a = |u: f64| self.log_a(rho, u).exp();
        let f_v = |u: f64| a(u) * (1.0 - w * u * (1.0 - u).powi(2) * kappa(rho, u));
        let f_y = |u: f64| a(u) * w * u * (1.0 - u) * kappa(rho, u);
        let f_j = |u: f64| a(u) * w * u * (1.0 - u).powi(2);
        let steps = self.grid.len() - 1;
        let [phi_v, phi_y, phi_j] = step_phis(&self.grid, rho, f_v, f_y, f_j)?;
        Ok(RhoCoefficients {
            log_a: self.grid.iter().map(|&u| self.log_a(rho, u)).collect(),
            kappa: self.grid[..steps].iter().map(|&u| kappa(rho, u)).collect(),
            phi_v,
            phi_y,
            phi_j,
        })
    }

    /// Number of distinct ρ whose coefficients were computed so far.
    pub fn distinct_rho(&self) -> usize {
        self.cache.len()
    }

    /// Restore a batch (checked by the caller); one network call (and one VJP) per step for the batch.
    pub fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        let st = self.grid[0];
        let delta = (1.0 - st) / (self.grid.len() - 1) as f64;
        struct State {
            map: SpectralMap<RhoCoefficients>,
            yhat: Img,
            xbar: Img,
        }
        let mut states = Vec::with_capacity(problems.len());
        let mut xs = Vec::with_capacity(problems.len());
        for p in problems.iter_mut() {
            let op = p.op.clone();
            let map = SpectralMap::new(op.as_ref(), p.sigma_y, &self.cache, |r| {
                self.coefficients(r)
            })?;
            let yhat = op.vt(&op.pinv(&p.y));
            let c0 = start(op.as_ref(), p.sigma_y, &yhat, &p.init_noise(), st, 1.0 - st);
            let a0 = map.fill(&op.x_shape(), |c| c.log_a[0].exp());
            states.push(State {
                yhat,
                xbar: &c0 * &a0,
                map,
            });
            xs.push(op.v(&c0));
        }
        for i in 0..self.grid.len() - 1 {
            let t = self.grid[i];
            let vs = net.velocity(&xs, t)?;
            // m = Γ_{t_i}(H†y − x̂₁) = V(κ ⊙ (ŷ − Vᵀx̂₁)), x̂₁ = x + (1 − t) v; then g = J_vᵀ m.
            let ms: Vec<Img> = problems
                .iter()
                .enumerate()
                .map(|(k, p)| {
                    let op = p.op.as_ref();
                    let x1_hat = Zip::from(&xs[k])
                        .and(&vs[k])
                        .map_collect(|&x, &v| x + (1.0 - t) * v);
                    let kap = states[k].map.fill(&op.x_shape(), |c| c.kappa[i]);
                    let mut c = op.vt(&x1_hat);
                    Zip::from(&mut c)
                        .and(&states[k].yhat)
                        .and(&kap)
                        .for_each(|c, &y, &kp| *c = kp * (y - *c));
                    op.v(&c)
                })
                .collect();
            let gs = velocity_jt(net, &xs, t, &ms)?;
            let decay = 1.0 + self.lambda * delta;
            for (k, s) in states.iter_mut().enumerate() {
                let op = problems[k].op.as_ref();
                xs[k] = advance(&s.map, op, i, decay, &mut s.xbar, &s.yhat, &vs[k], &gs[k]);
            }
        }
        Ok(xs)
    }
}
