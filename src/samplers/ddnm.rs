//! DDNM — Zero-Shot Image Restoration Using Denoising Diffusion Null-Space Model (Wang, Yu & Zhang,
//! ICLR 2023, arXiv 2212.00490), on the discrete DDPM schedule of docs/samplers.md §1.3.
//!
//! **Range–null-space decomposition** (the paper's Algorithm 1). Any x splits as x = H†H x + (I − H†H) x
//! = P x + (I − P) x. A consistent solution (H x = y) must have P x = H†y; the null-space part
//! (I − P) x is free and is taken from the diffusion model:
//!
//! * x₀|t = (x_t − √(1 − ᾱ_t) ε_θ(x_t, t))/√ᾱ_t,
//! * x̂₀|t = H†y + (I − P) x₀|t   (noiseless DDNM),
//!
//! so H x̂₀|t = y exactly at every step.
//!
//! **Update** (the paper's DDIM form, as its experiments run; "η" in the DDNM paper's convention):
//!
//! * x_s = √ᾱ_s x̂₀|t + √(1 − ᾱ_s) (η z + √(1 − η²) ε̂),  z ~ N(0, I),
//!
//! i.e. a member of the DDIM family whose fresh-noise std is η √(1 − ᾱ_s). (This η is *not* the DDIM
//! paper's η of docs/samplers.md §8, which scales √((1 − ᾱ_t/ᾱ_s)(1 − ᾱ_s)/(1 − ᾱ_t)); the default 0.85
//! is the DDNM paper's value in its own convention.) The last step (s = −1) outputs x̂₀|t.
//!
//! **DDNM⁺ for noisy y = H x + σ_y n** (the paper's §3.3). H†y then carries noise H†n with std σ_y/s_k
//! in spectral coordinate k, which a plain projection would amplify where s_k is small. In the spectral
//! view H = U diag(s) Vᵀ, with a = √ᾱ_s (the coefficient of x̂₀ in the update) and σ = √(1 − ᾱ_s)
//! (the std the step adds), the paper scales the correction by Σ_t = V diag(λ) Vᵀ and the added noise by
//! Φ_t = V diag(γ) Vᵀ:
//!
//! * x̂₀|t = x₀|t − Σ_t H†(H x₀|t − y), i.e. (Vᵀx̂₀|t)_k = c_k − λ_k (c_k − ȳ_k/s_k), c = Vᵀx₀|t, ȳ = Uᵀy;
//! * λ_k = 1 where σ ≥ a σ_y/s_k, else λ_k = σ s_k/(a σ_y) (unmeasured coordinates: no correction);
//! * γ_k = σ² − (a λ_k σ_y/s_k)² (= σ² where unmeasured), the variance the step may still add after the
//!   noise a λ_k σ_y/s_k the correction brings in, so the total stays σ² and the noise is never amplified;
//! * (Vᵀx_s)_k = a (Vᵀx̂₀|t)_k + √γ_k (η z_k + √(1 − η²) (Vᵀε̂)_k).
//!
//! The paper states Φ_t for its DDPM update, where all of γ is fresh noise; for the DDIM form the
//! remaining std √γ_k is split between fresh noise and ε̂ in the same η proportion as the noiseless
//! update, so that DDNM⁺ reduces *continuously* to DDNM as σ_y → 0. The official code differs here: it
//! drops the ε̂ term wherever λ_k = 1 (√γ_k is all fresh noise) and multiplies λ_k < 1 by √(1 − η²)
//! while keeping η σ of fresh noise. At the last step (σ = 0) λ_k = 0: the output is the network's x₀|t
//! on the measured coordinates, with no noisy correction. σ_y is the problem's measurement-noise std on
//! the model's value scale (no doubling).
//!
//! What to expect: with an exact Gaussian denoiser (tests/baselines.rs) the null-space output has the
//! prior's mean, but η = 0.85 at 100 steps keeps only ≈ 72 % of its variance (DDNM's re-noising of x̂₀
//! each step is not a convergent discretization of the reverse SDE). DDNM⁺ bounds the noise of H†y:
//! where σ_y/s_k is large the output follows the prior, not H†y, though it stays biased toward H†y
//! (the same y noise enters at every step).
//!
//! Not implemented: the paper's optional "time-travel" (RePaint-style back-and-forth) schedule; its
//! default configuration (travel length 1, repeat 1) does not use it either. One forward per step,
//! no VJP.

use super::{check_range, ModelSchedule, Problem, Sampler, SamplerConfig};
use crate::error::Result;
use crate::model::Network;
use crate::schedules::DdpmDiscrete;
use crate::tensor::Img;

/// Default number of steps (the DDNM paper's 100).
pub const DEFAULT_STEPS: usize = 100;
/// Default η (the DDNM paper's 0.85, in its convention; see the module docs).
pub const DEFAULT_ETA: f64 = 0.85;

/// The DDNM / DDNM⁺ sampler (DDNM⁺ whenever a problem's σ_y > 0). Reads `steps` and `eta`.
#[derive(Debug, Clone)]
pub struct Ddnm {
    ddpm: DdpmDiscrete,
    grid: Vec<i64>,
    eta: f64,
}

impl Ddnm {
    /// DDNM on the model's discrete schedule with the config's `steps` (default 100) and `eta`
    /// (0.85, in [0, 1]).
    pub fn from_config(cfg: &SamplerConfig, sched: &ModelSchedule) -> Result<Self> {
        let (_, ddpm) = sched.diffusion("ddnm")?;
        let grid = ddpm.uniform_grid(cfg.steps.unwrap_or(DEFAULT_STEPS))?;
        let eta = check_range("eta", cfg.eta.unwrap_or(DEFAULT_ETA), 0.0, 1.0)?;
        Ok(Ddnm {
            ddpm: ddpm.clone(),
            grid,
            eta,
        })
    }

    /// The step indices visited (increasing; the sampler walks them from the top down).
    pub fn grid(&self) -> &[i64] {
        &self.grid
    }
}

impl Sampler for Ddnm {
    fn name(&self) -> &'static str {
        "ddnm"
    }
    /// One forward per grid point.
    fn nfe(&self) -> usize {
        self.grid.len()
    }
    fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        if problems.is_empty() {
            return Ok(Vec::new());
        }
        let n = self.ddpm.len();
        let eta = self.eta;
        let eta_c = (1.0 - eta * eta).sqrt();
        // Per problem: H†y (noiseless DDNM) and ȳ = Uᵀy (DDNM⁺), both fixed for the run.
        let pinv_y: Vec<Img> = problems.iter().map(|p| p.op.pinv(&p.y)).collect();
        let ybar: Vec<Img> = problems.iter().map(|p| p.op.ut(&p.y)).collect();
        let mut xs: Vec<Img> = problems.iter_mut().map(|p| p.init_noise()).collect();

        for j in (0..self.grid.len()).rev() {
            let t = self.grid[j];
            let s = if j > 0 { self.grid[j - 1] } else { -1 };
            let (alpha_t, alpha_s) = (self.ddpm.alpha(t), self.ddpm.alpha(s));
            let (mu_t, sig_t) = (alpha_t.sqrt(), (1.0 - alpha_t).sqrt());
            let eps = net.eps(&xs, net.time.diffusion_index(t, n), mu_t, sig_t)?;
            let (a, sigma) = (alpha_s.sqrt(), (1.0 - alpha_s).sqrt());

            for (i, (x, p)) in xs.iter_mut().zip(problems.iter_mut()).enumerate() {
                // x₀|t
                let x0 = (&*x - &(&eps[i] * sig_t)) / mu_t;
                if p.sigma_y == 0.0 {
                    // DDNM: x̂₀|t = H†y + (I − P) x₀|t, then the DDIM-η update.
                    let xhat = &pinv_y[i] + &(&x0 - &p.op.project(&x0));
                    let mut next = xhat * a;
                    if sigma > 0.0 {
                        next.scaled_add(sigma * eta_c, &eps[i]);
                        if eta > 0.0 {
                            next.scaled_add(sigma * eta, &p.normal());
                        }
                    }
                    *x = next;
                } else {
                    // DDNM⁺ in spectral coordinates.
                    let sy = p.sigma_y;
                    let mut c = p.op.vt(&x0);
                    let ve = p.op.vt(&eps[i]);
                    let z = if sigma > 0.0 && eta > 0.0 {
                        p.normal()
                    } else {
                        Img::zeros(c.raw_dim())
                    };
                    ndarray::Zip::from(&mut c)
                        .and(p.op.singulars())
                        .and(&ybar[i])
                        .and(&ve)
                        .and(&z)
                        .for_each(|c, &sk, &yb, &ve, &z| {
                            let (chat, gamma) = if sk > 0.0 {
                                // noise std that the correction brings in at λ = 1
                                let th = a * sy / sk;
                                let lambda = if sigma >= th { 1.0 } else { sigma / th };
                                let chat = *c - lambda * (*c - yb / sk);
                                (chat, (sigma * sigma - (lambda * th).powi(2)).max(0.0))
                            } else {
                                (*c, sigma * sigma)
                            };
                            *c = a * chat + gamma.sqrt() * (eta * z + eta_c * ve);
                        });
                    *x = p.op.v(&c);
                }
            }
        }
        Ok(xs)
    }
}
