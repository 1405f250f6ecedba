//! Noisy C-ΠGDM, derived exactly in the operator's spectral basis (`variant: noisy`, and `auto` when
//! σ_y > 0). It replaces the official first-order heuristic (`variant: official`, [`super::c_pigdm`]),
//! whose inverse transform is singular or far outside its range of validity at the published w and τ.
//!
//! **The ODE.** ΠGDM's noisy guidance is J_{x̂₀}ᵀ Hᵀ(r_t² HHᵀ + σ_y² I)⁻¹(y − H x̂₀) with r_t = σ_t. With
//! H = U diag(s) Vᵀ it is J_{x̂₀}ᵀ Γ_t (H†y − x̂₀), where Γ_t = V diag(γ_k(t)) Vᵀ and
//!
//!   γ_k(t) = r_t² s_k² / (r_t² s_k² + σ_y²) = σ_t² / (σ_t² + ρ_k),   ρ_k = σ_y²/s_k²
//!
//! (γ = 1 on the row space and 0 off it when σ_y = 0: Γ = P). With C-ΠGDM's weight w r_t² μ_t² and
//! x̂₀ = (x − σε)/μ, J_{x̂₀} = (I − σJ_ε)/μ, the guided probability-flow ODE is
//!
//!   dx/dt = −½β (I − wΓ_t) x + ½β ε/σ − ½β w σ Γ_t ε − ½β w μ Γ_t H†y + ½β w μ σ J_εᵀ Γ_t (H†y − x̂₀),
//!
//! the noiseless ODE with P replaced by Γ_t everywhere, including inside the Jacobian term and in the
//! ε and H†y terms. The official code keeps the noiseless nonlinear terms (with P) and only adds
//! first-order Q = H†H†ᵀ corrections, and applies Q to J_εᵀ m instead of taking J_εᵀ of Γ(·).
//!
//! **The transform.** The linear part is diagonal in V: −½β(1 − wγ_k). So the exact A_t is the
//! per-coordinate scalar a_k(t) = exp(λt + ½b_t − ½w G(ρ_k, b_t)), with (substituting v = e^{b})
//!
//!   G(ρ, b) := ∫₀ᵗ β γ du = b − ρ/(1+ρ) · ln(((1+ρ)e^{b} − 1)/ρ),   G(0, b) = b,  G(∞, b) = 0,
//!
//! and A_t⁻¹ is 1/a_k: no first-order inverse. At σ_y = 0, a_k = e^{c1+c2} on the row space and e^{c1}
//! off it, the noiseless transform. The official form is the expansion G ≈ b − ρ ln(e^{b} − 1) + const
//! to first order in ρ, exponentiated to first order: on a row-space coordinate its A^noisy is
//! e^{c1+c2} + c3/s², which vanishes (and its inverse blows up) where c3 < 0 reaches −s² e^{c1+c2};
//! here a_k > 0 always.
//!
//! **One step** (network outputs frozen at t_k, each coefficient integrated exactly; λx̄ explicit Euler).
//! In spectral coordinates x̄ = a ⊙ Vᵀx, ŷ = Vᵀ H†y = s⁺ ⊙ Uᵀy, and g = J_εᵀ m with
//! m = Γ_{t_k}(H†y − x̂₀) (the stop-gradient vector, frozen at t_k like ε̂):
//!
//!   x̄ ← (1 − λΔs) x̄ + ΔΦ_s ⊙ Vᵀε̂ + ΔΦ_y ⊙ ŷ + ΔΦ_j ⊙ Vᵀg,   x_{k+1} = V(x̄ / a(t_{k+1})),
//!
//! with ΔΦ = ∫_{t_k}^{t_{k+1}} of (per ρ, ½β = ½β(u), γ = γ(u), a = a_ρ(u))
//!
//! | Φ | integrand | σ_y = 0, row space | σ_y = 0 or any σ_y, off it |
//! |---|---|---|---|
//! | Φ_s | ½β a (1/(σ + ε_n) − wσγ) | Φ_s¹ + Φ_s² | Φ_s¹ |
//! | Φ_y | −½β w μ γ a | Φ_y | 0 |
//! | Φ_j | ½β w μ σ a | Φ_j¹ + Φ_j² | Φ_j¹ |
//!
//! so at σ_y = 0 this is exactly the noiseless integrator (in its range/null-space split). The Φ's are
//! computed by quadrature once per distinct ρ ([`super::spectral`]). Freezing Γ inside g at t_k is
//! first order like freezing ε̂, so the sampler converges at first order to the ODE above.
//!
//! σ_y is the problem's [`Problem::sigma_y`], the true noise std on the model's value scale (no factor 2,
//! unlike the official code's c3).
//!
//! **The start.** x_τ should be distributed as the forward process makes it, N(μ_τ x, σ_τ² I) given x.
//! μ_τ H†y = μ_τ V(Vᵀx + n_k √ρ_k) already carries noise of variance μ_τ²ρ_k on a measured coordinate, so
//! the fresh noise only tops it up: x_τ = V(μ_τ ŷ + √max(σ_τ² − μ_τ²ρ_k, 0) ⊙ Vᵀz) ([`start`]); off the
//! row space it is σ_τ, and at σ_y = 0 it is the noiseless start μ_τ H†y + σ_τ z. Adding σ_τ z on top
//! (the noiseless rule) overshoots the noise level by μ_τ²ρ: negligible at τ ≥ 0.2, but it keeps a start
//! near the time where σ_τ/μ_τ = σ_y/s from working. There, denoising starts from y itself and the steps
//! only remove its noise: on the photo prior's tuning crops (denoising σ_y = 0.1, 5 NFE) the best start
//! moved from τ 0.2 (31.5 dB) to τ 0.03 (34.1 dB, DDRM at 20 NFE 33.4).

use ndarray::Zip;

use super::common::eps_then_vjp;
use super::spectral::{advance, start, step_phis, RhoCache, SpectralMap, StepTable};
use super::Problem;
use crate::error::Result;
use crate::model::Network;
use crate::schedules::VpContinuous;
use crate::tensor::Img;

/// G(ρ, b) = ∫ β γ du from 0 (see the module doc): the noisy exponent per unit −½w.
pub fn g_exponent(rho: f64, b: f64) -> f64 {
    if rho == 0.0 {
        b
    } else if rho.is_infinite() {
        0.0
    } else {
        // ln(((1+ρ)e^b − 1)/ρ) = ln(expm1(b) + ρe^b) − ln ρ, finite for tiny and huge ρ.
        b - rho / (1.0 + rho) * ((b.exp_m1() + rho * b.exp()).ln() - rho.ln())
    }
}

/// The coefficients of one ρ on the sampler's grid.
#[derive(Debug, Clone, PartialEq)]
pub struct RhoCoefficients {
    /// ln a(t_k), k = 0..K.
    pub log_a: Vec<f64>,
    /// γ(t_k), k = 0..K−1 (the Γ of the Jacobian term's m).
    pub gamma: Vec<f64>,
    /// ΔΦ_s, ΔΦ_y, ΔΦ_j of each step.
    pub phi_s: Vec<f64>,
    pub phi_y: Vec<f64>,
    pub phi_j: Vec<f64>,
}

impl StepTable for RhoCoefficients {
    fn phis(&self, k: usize) -> [f64; 3] {
        [self.phi_s[k], self.phi_y[k], self.phi_j[k]]
    }
    fn log_a_next(&self, k: usize) -> f64 {
        self.log_a[k + 1]
    }
}

/// The exact noisy conjugate integrator on a fixed grid.
#[derive(Debug)]
pub struct NoisyCPigdm {
    vp: VpContinuous,
    w: f64,
    lambda: f64,
    eps_n: f64,
    t: Vec<f64>,
    cache: RhoCache<RhoCoefficients>,
}

impl Clone for NoisyCPigdm {
    fn clone(&self) -> Self {
        Self::new(self.vp, self.w, self.lambda, self.eps_n, self.t.clone())
    }
}

impl NoisyCPigdm {
    /// On the diffusion times `t` (decreasing), with C-ΠGDM's w, λ and ε_n.
    pub fn new(vp: VpContinuous, w: f64, lambda: f64, eps_n: f64, t: Vec<f64>) -> Self {
        NoisyCPigdm {
            vp,
            w,
            lambda,
            eps_n,
            t,
            cache: RhoCache::default(),
        }
    }

    /// ln a_ρ(u) = λu + ½b_u − ½w G(ρ, b_u).
    pub fn log_a(&self, rho: f64, u: f64) -> f64 {
        let b = self.vp.b(u);
        self.lambda * u + 0.5 * b - 0.5 * self.w * g_exponent(rho, b)
    }

    /// γ_ρ(u) = σ_u²/(σ_u² + ρ) (0 at ρ = ∞).
    pub fn gamma(&self, rho: f64, u: f64) -> f64 {
        if rho.is_infinite() {
            return 0.0;
        }
        let s2 = self.vp.sigma(u).powi(2);
        s2 / (s2 + rho)
    }

    /// The coefficients of ρ (computed by quadrature; [`Self::sample`] caches them per ρ).
    pub fn coefficients(&self, rho: f64) -> Result<RhoCoefficients> {
        let (vp, w, eps_n) = (self.vp, self.w, self.eps_n);
        let hb = |u: f64| 0.5 * vp.beta(u);
        let a = |u: f64| self.log_a(rho, u).exp();
        let f_s = |u: f64| {
            hb(u) * a(u) * (1.0 / (vp.sigma(u) + eps_n) - w * vp.sigma(u) * self.gamma(rho, u))
        };
        let f_y = |u: f64| -hb(u) * w * vp.mu(u) * self.gamma(rho, u) * a(u);
        let f_j = |u: f64| hb(u) * w * vp.mu(u) * vp.sigma(u) * a(u);
        let steps = self.t.len() - 1;
        let [phi_s, phi_y, phi_j] = step_phis(&self.t, rho, f_s, f_y, f_j)?;
        Ok(RhoCoefficients {
            log_a: self.t.iter().map(|&u| self.log_a(rho, u)).collect(),
            gamma: self.t[..steps]
                .iter()
                .map(|&u| self.gamma(rho, u))
                .collect(),
            phi_s,
            phi_y,
            phi_j,
        })
    }

    /// Number of distinct ρ whose coefficients were computed so far.
    pub fn distinct_rho(&self) -> usize {
        self.cache.len()
    }

    /// Restore a batch (one network call per step for the whole batch).
    pub fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        let vp = &self.vp;
        let tau = self.t[0];
        let (mu0, sigma0) = (vp.mu(tau), vp.sigma(tau));
        struct State {
            map: SpectralMap<RhoCoefficients>,
            /// ŷ = Vᵀ H†y.
            yhat: Img,
            /// x̄ = a ⊙ Vᵀx.
            xbar: Img,
        }
        let mut st = Vec::with_capacity(problems.len());
        let mut xs = Vec::with_capacity(problems.len());
        for p in problems.iter_mut() {
            let op = p.op.clone();
            let map = SpectralMap::new(op.as_ref(), p.sigma_y, &self.cache, |r| {
                self.coefficients(r)
            })?;
            let yhat = op.vt(&op.pinv(&p.y));
            let c0 = start(op.as_ref(), p.sigma_y, &yhat, &p.init_noise(), mu0, sigma0);
            let a0 = map.fill(&op.x_shape(), |c| c.log_a[0].exp());
            st.push(State {
                yhat,
                xbar: &c0 * &a0,
                map,
            });
            xs.push(op.v(&c0));
        }
        for k in 0..self.t.len() - 1 {
            let t = self.t[k];
            let (mu, sigma) = (vp.mu(t), vp.sigma(t));
            let ds = t - self.t[k + 1];
            // m = Γ_{t_k}(H†y − x̂₀) = V(γ ⊙ (ŷ − Vᵀx̂₀)), then g = J_εᵀ m.
            let (eps, _m, g) = eps_then_vjp(
                net,
                &xs,
                net.time.diffusion_continuous(t),
                mu,
                sigma,
                |i, e| {
                    let op = problems[i].op.as_ref();
                    let x0_hat = Zip::from(&xs[i])
                        .and(e)
                        .map_collect(|&x, &e| (x - e * sigma) / mu);
                    let gamma = st[i].map.fill(&op.x_shape(), |c| c.gamma[k]);
                    let mut c = op.vt(&x0_hat);
                    Zip::from(&mut c)
                        .and(&st[i].yhat)
                        .and(&gamma)
                        .for_each(|c, &y, &g| *c = g * (y - *c));
                    op.v(&c)
                },
            )?;
            let decay = 1.0 - self.lambda * ds;
            for (i, (s, (e, g))) in st.iter_mut().zip(eps.iter().zip(&g)).enumerate() {
                let op = problems[i].op.as_ref();
                xs[i] = advance(&s.map, op, k, decay, &mut s.xbar, &s.yhat, e, g);
            }
        }
        Ok(xs)
    }
}
