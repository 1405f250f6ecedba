//! DPS — Diffusion Posterior Sampling (Chung, Kim, Mccann, Klasky & Ye, ICLR 2023, arXiv 2209.14687),
//! as specified in docs/samplers.md §8.3, on the discrete DDPM schedule of §1.3.
//!
//! **Init** at T = ts\[last\]: x_T = √ᾱ_T H†y + √(1 − ᾱ_T) z.
//!
//! **Each step t → s** (μ_t = √ᾱ_t, σ_t = √(1 − ᾱ_t)):
//! 1. ε̂ = ε_θ(x_t, t), x̂₀ = (x_t − σ_t ε̂)/μ_t;
//! 2. r = y − H x̂₀;
//! 3. grad = ∇_{x_t} ‖r‖² = −2 J_x̂₀ᵀ Hᵀ r, with J_x̂₀ = ∂x̂₀/∂x_t = (I − σ_t J_ε)/μ_t, so
//!    grad = −2 (Hᵀr − σ_t J_εᵀ Hᵀr)/μ_t; the network part J_εᵀ m comes from
//!    [`Network::eps_jt`], so the spec's Jacobian mode applies (without re-running the forward);
//! 4. x_s = √ᾱ_s x̂₀ + c_noise z + c_eps ε̂ − (ζ/‖r‖) grad, with the DDIM coefficients of §8
//!    c_noise = η √((1 − ᾱ_t/ᾱ_s)(1 − ᾱ_s)/(1 − ᾱ_t)) and c_eps = √(1 − ᾱ_s − c_noise²).
//!
//! The step −(ζ/‖r‖) ∇‖r‖² is the DPS paper's Algorithm 1 step size ζ_i = ζ'/‖y − A(x̂₀)‖ (equal to
//! −2ζ ∇‖r‖, the official `original = True` form). **‖r‖ is per sample** and treated as a constant.
//! The reference code takes `torch.linalg.norm` of the whole batch's residual, so one sample's step
//! depends on the other samples of its batch — a known bug that is not reproduced: here a sample's
//! result does not depend on what else is in its batch. A sample with r = 0 takes no guidance step.
//!
//! The output is the final x_s at s = −1 (c_noise = c_eps = 0 there: x̂₀ − (ζ/‖r‖) grad).
//!
//! **Cost per step and image** (the network must be evaluated before the cotangent Hᵀr is known):
//! `jacobian: exact` 1 forward + 1 VJP; `finite-difference` 4 forwards; `identity` 2 forwards
//! (J_ε dropped: grad = −2 Hᵀr/μ_t for an ε-network). The paper's NFE counts the steps.
//!
//! **Defaults**: η = 0 (the repository's config: a deterministic DDIM part, unlike the DPS paper's
//! ancestral sampler), ζ (`guidance`) = 1.0 and **1000 steps** — the setting of the paper's baseline
//! runs (docs/samplers.md §12) and of the DPS paper itself; DPS's gradient steps need many small steps, and
//! its results at 20–100 steps are far from its published quality.

use super::{check_range, ModelSchedule, Problem, Sampler, SamplerConfig};
use crate::error::{Error, Result};
use crate::model::Network;
use crate::schedules::DdpmDiscrete;
use crate::tensor::Img;

/// Default number of steps (the paper's DPS baseline runs and the DPS paper use 1000).
pub const DEFAULT_STEPS: usize = 1000;
/// Default η of the DDIM part (the repository's config).
pub const DEFAULT_ETA: f64 = 0.0;
/// Default guidance scale ζ (the repository's batch script).
pub const DEFAULT_ZETA: f64 = 1.0;

/// The DPS sampler. Reads `steps`, `eta`, `guidance` (ζ) and `jacobian` of the config.
#[derive(Debug, Clone)]
pub struct Dps {
    ddpm: DdpmDiscrete,
    grid: Vec<i64>,
    eta: f64,
    zeta: f64,
}

/// The per-sample quantities of one DPS step at index t (see [`Dps::terms`]).
#[derive(Debug, Clone)]
pub struct DpsTerms {
    /// ε̂ = ε_θ(x_t, t).
    pub eps: Vec<Img>,
    /// x̂₀ = (x_t − σ_t ε̂)/μ_t.
    pub x0: Vec<Img>,
    /// ‖y − H x̂₀‖ per sample.
    pub residual_norm: Vec<f64>,
    /// ∇_{x_t} ‖y − H x̂₀(x_t)‖² per sample.
    pub grad: Vec<Img>,
}

impl Dps {
    /// DPS on the model's discrete schedule with the config's `steps` (default 1000), `eta` (0, in
    /// [0, 1]) and `guidance` ζ (1.0, finite and ≥ 0).
    pub fn from_config(cfg: &SamplerConfig, sched: &ModelSchedule) -> Result<Self> {
        let (_, ddpm) = sched.diffusion("dps")?;
        let grid = ddpm.uniform_grid(cfg.steps.unwrap_or(DEFAULT_STEPS))?;
        let eta = check_range("eta", cfg.eta.unwrap_or(DEFAULT_ETA), 0.0, 1.0)?;
        let zeta = cfg.guidance.unwrap_or(DEFAULT_ZETA);
        if !(zeta.is_finite() && zeta >= 0.0) {
            return Err(Error::invalid("guidance", zeta, "a finite value >= 0"));
        }
        Ok(Dps {
            ddpm: ddpm.clone(),
            grid,
            eta,
            zeta,
        })
    }

    /// The step indices visited (increasing; the sampler walks them from the top down).
    pub fn grid(&self) -> &[i64] {
        &self.grid
    }

    /// Steps 1–3 at index t for the states `xs` (one per problem): ε̂, x̂₀, ‖r‖ and
    /// grad = ∇_x ‖y − H x̂₀(x)‖² = −2 (m − σ_t J_εᵀ m)/μ_t with m = Hᵀ(y − H x̂₀).
    pub fn terms(
        &self,
        net: &Network,
        t: i64,
        xs: &[Img],
        problems: &[Problem],
    ) -> Result<DpsTerms> {
        let alpha_t = self.ddpm.alpha(t);
        let (mu_t, sig_t) = (alpha_t.sqrt(), (1.0 - alpha_t).sqrt());
        let t_net = net.time.diffusion_index(t, self.ddpm.len());
        let eps = net.eps(xs, t_net, mu_t, sig_t)?;
        let x0: Vec<Img> = xs
            .iter()
            .zip(&eps)
            .map(|(x, e)| (x - &(e * sig_t)) / mu_t)
            .collect();
        let mut residual_norm = Vec::with_capacity(xs.len());
        let mut ms = Vec::with_capacity(xs.len());
        for (p, x0) in problems.iter().zip(&x0) {
            let r = &p.y - &p.op.forward(x0);
            residual_norm.push(r.iter().map(|v| v * v).sum::<f64>().sqrt());
            ms.push(p.op.adjoint(&r));
        }
        let jt = net.eps_jt(xs, t_net, mu_t, sig_t, &ms)?;
        let grad = ms
            .iter()
            .zip(&jt)
            .map(|(m, g)| (m - &(g * sig_t)) * (-2.0 / mu_t))
            .collect();
        Ok(DpsTerms {
            eps,
            x0,
            residual_norm,
            grad,
        })
    }
}

impl Sampler for Dps {
    fn name(&self) -> &'static str {
        "dps"
    }
    /// Steps (grid points); see the module docs for the forwards and VJPs each Jacobian mode costs.
    fn nfe(&self) -> usize {
        self.grid.len()
    }
    fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        net.expect_vjps();
        if problems.is_empty() {
            return Ok(Vec::new());
        }
        net.validate()?;
        let big_t = *self.grid.last().expect("grid is never empty");
        let alpha_big_t = self.ddpm.alpha(big_t);
        let mut xs: Vec<Img> = problems
            .iter_mut()
            .map(|p| {
                let z = p.init_noise();
                p.op.pinv(&p.y) * alpha_big_t.sqrt() + z * (1.0 - alpha_big_t).sqrt()
            })
            .collect();

        for j in (0..self.grid.len()).rev() {
            let t = self.grid[j];
            let s = if j > 0 { self.grid[j - 1] } else { -1 };
            let (alpha_t, alpha_s) = (self.ddpm.alpha(t), self.ddpm.alpha(s));
            let c_noise = self.eta
                * ((1.0 - alpha_t / alpha_s) * (1.0 - alpha_s) / (1.0 - alpha_t))
                    .max(0.0)
                    .sqrt();
            let c_eps = (1.0 - alpha_s - c_noise * c_noise).max(0.0).sqrt();

            let terms = self.terms(net, t, &xs, problems)?;
            for (i, (x, p)) in xs.iter_mut().zip(problems.iter_mut()).enumerate() {
                let mut next = &terms.x0[i] * alpha_s.sqrt() + &terms.eps[i] * c_eps;
                if c_noise > 0.0 {
                    next.scaled_add(c_noise, &p.normal());
                }
                let norm = terms.residual_norm[i];
                if norm > 0.0 {
                    next.scaled_add(-self.zeta / norm, &terms.grad[i]);
                }
                *x = next;
            }
        }
        Ok(xs)
    }
}
