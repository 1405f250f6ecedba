//! DDIM: denoising diffusion implicit models (Song, Meng & Ermon, *Denoising Diffusion Implicit Models*,
//! ICLR 2021), unconditional (docs/samplers.md §8.5). It ignores y and the operator: an unconditional sanity
//! baseline (what the model draws with no measurement).
//!
//! On the discrete DDPM schedule (§1.3) and the `ddpm_uniform` grid, starting from x = z, per pair (t → s)
//! from the top down (ᾱ_{−1} = 1):
//!
//!   x̂₀ = (x_t − √(1 − ᾱ_t) ε̂)/√ᾱ_t,
//!   x_s = √ᾱ_s x̂₀ + c_noise z' + c_eps ε̂,
//!   c_noise = η √((1 − ᾱ_t/ᾱ_s)(1 − ᾱ_s)/(1 − ᾱ_t)),  c_eps = √(1 − ᾱ_s − c_noise²),
//!
//! so the last step (s = −1) returns x̂₀. η defaults to 0.5 (official `ddim.yaml`); the optional SDEdit
//! start of the official code is not offered.
//!
//! Also here: [`lambda_ddim`], the continuous-time λ-DDIM of the C-ΠGDM code base (`vp_conj`, §7), the
//! unconditional conjugate integrator that C-ΠGDM and continuous ΠGDM reduce to at w = 0. Its optional
//! final "denoise" step has a sign error in the official code and is not reproduced.

use super::{check_range, quad, ModelSchedule, Problem, Sampler, SamplerConfig};
use crate::error::{Error, Result};
use crate::model::Network;
use crate::schedules::{DdpmDiscrete, VpContinuous};
use crate::tensor::Img;

/// Default steps (the experiment default of the official configs).
pub const DEFAULT_STEPS: usize = 50;
/// Default η (official `ddim.yaml`).
pub const DEFAULT_ETA: f64 = 0.5;

/// (c_noise, c_eps) of a DDIM step from ᾱ_t to ᾱ_s (docs/samplers.md §8).
pub fn ddim_coefficients(a_t: f64, a_s: f64, eta: f64) -> (f64, f64) {
    let c_noise = eta
        * ((1.0 - a_t / a_s) * (1.0 - a_s) / (1.0 - a_t))
            .max(0.0)
            .sqrt();
    let c_eps = (1.0 - a_s - c_noise * c_noise).max(0.0).sqrt();
    (c_noise, c_eps)
}

/// Unconditional DDIM.
#[derive(Debug, Clone)]
pub struct Ddim {
    ddpm: DdpmDiscrete,
    eta: f64,
    ts: Vec<i64>,
}

impl Ddim {
    /// Build from a spec's sampler settings (`steps`, `eta`).
    pub fn from_config(cfg: &SamplerConfig, sched: &ModelSchedule) -> Result<Self> {
        let (_, ddpm) = sched.diffusion("ddim")?;
        let steps = cfg.steps.unwrap_or(DEFAULT_STEPS);
        if steps == 0 {
            return Err(Error::invalid("steps", steps, ">= 1"));
        }
        let eta = check_range("eta", cfg.eta.unwrap_or(DEFAULT_ETA), 0.0, 1.0)?;
        Ok(Ddim {
            ddpm: ddpm.clone(),
            eta,
            ts: ddpm.uniform_grid(steps)?,
        })
    }

    /// The `ddpm_uniform` grid it visits (top down).
    pub fn grid(&self) -> &[i64] {
        &self.ts
    }
}

impl Sampler for Ddim {
    fn name(&self) -> &'static str {
        "ddim"
    }

    fn nfe(&self) -> usize {
        self.ts.len()
    }

    fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        super::common::check_batch(problems)?;
        if problems.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.ddpm.len();
        let mut xs: Vec<Img> = problems.iter_mut().map(|p| p.init_noise()).collect();
        for j in (0..self.ts.len()).rev() {
            let (t, s) = (self.ts[j], if j > 0 { self.ts[j - 1] } else { -1 });
            let (a_t, a_s) = (self.ddpm.alpha(t), self.ddpm.alpha(s));
            let (mu, sigma) = (a_t.sqrt(), (1.0 - a_t).sqrt());
            let (c_noise, c_eps) = ddim_coefficients(a_t, a_s, self.eta);
            let eps = net.eps(&xs, net.time.diffusion_index(t, n), mu, sigma)?;
            for ((x, e), p) in xs.iter_mut().zip(&eps).zip(problems.iter_mut()) {
                let x0_hat = (&*x - &(e * sigma)) / mu;
                let mut next = x0_hat * a_s.sqrt();
                if c_noise > 0.0 {
                    next.scaled_add(c_noise, &p.normal());
                }
                next.scaled_add(c_eps, e);
                *x = next;
            }
        }
        Ok(xs)
    }
}

/// ΔΦ_k = ∫_{t_k}^{t_{k+1}} ½β(u) e^{λu + ½b_u}/(σ_u + ε_n) du of λ-DDIM (§6, §7), per interval of the
/// decreasing grid `t`. For λ = 0, ε_n = 0 it is Δ(σ/μ) (plain DDIM).
pub fn lambda_ddim_phis(vp: &VpContinuous, lambda: f64, eps_n: f64, t: &[f64]) -> Result<Vec<f64>> {
    let f = |u: f64| 0.5 * vp.beta(u) * (lambda * u + 0.5 * vp.b(u)).exp() / (vp.sigma(u) + eps_n);
    t.windows(2)
        .map(|w| quad::integrate(f, w[0], w[1]))
        .collect()
}

/// Unconditional λ-DDIM (`vp_conj`, §7) from given states `xs` at t[0] down the decreasing grid `t`:
/// with a(t) = e^{λt + ½b_t}, x̄ = a x, x̄ ← x̄ − λΔs x̄ + ΔΦ_k ε̂, x = x̄/a. Returns x at the last time.
pub fn lambda_ddim(
    net: &Network,
    vp: &VpContinuous,
    lambda: f64,
    eps_n: f64,
    t: &[f64],
    mut xs: Vec<Img>,
) -> Result<Vec<Img>> {
    let phi = lambda_ddim_phis(vp, lambda, eps_n, t)?;
    let a = |u: f64| (lambda * u + 0.5 * vp.b(u)).exp();
    let mut xbars: Vec<Img> = xs.iter().map(|x| x * a(t[0])).collect();
    for k in 0..phi.len() {
        let tk = t[k];
        let ds = tk - t[k + 1];
        let eps = net.eps(
            &xs,
            net.time.diffusion_continuous(tk),
            vp.mu(tk),
            vp.sigma(tk),
        )?;
        for ((xbar, x), e) in xbars.iter_mut().zip(xs.iter_mut()).zip(&eps) {
            *xbar *= 1.0 - lambda * ds;
            xbar.scaled_add(phi[k], e);
            *x = &*xbar / a(t[k + 1]);
        }
    }
    Ok(xs)
}
