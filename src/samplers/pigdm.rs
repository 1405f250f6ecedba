//! ΠGDM: pseudoinverse-guided diffusion (Song, Vahdat, Mardani & Kautz, *Pseudoinverse-Guided Diffusion
//! Models for Inverse Problems*, ICLR 2023), in the two forms the C-ΠGDM code base ships (docs/samplers.md §6,
//! §8.1). Both use ΠGDM's likelihood p(y | x_t) ≈ N(H x̂₀, r_t² HHᵀ) with r_t² = σ_t² (§1.6), whose guidance
//! is (1/r_t²) J_{x̂₀}ᵀ (H†y − P x̂₀), and both take one VJP of **x̂₀** per step:
//! g = J_{x̂₀}ᵀ m = (m − σ J_εᵀ m)/μ, with m = H†y − P x̂₀ held constant.
//!
//! **`continuous` (default; official `pgdm_cont`, §6)** — the λ-DDIM form on the VP-SDE. Scalar transform
//! a(t) = e^{λt + ½b_t}, x̄ = a(t) x, and per step t_k → t_{k+1} (Δs = t_k − t_{k+1} > 0)
//!
//!   x̄ ← x̄ − λΔs x̄ + ΔΦ_k ε̂ + ½ w β(t_k) a(t_k) Δs g,   x_{k+1} = x̄ / a(t_{k+1}),
//!
//! ΔΦ_k = ∫_{t_k}^{t_{k+1}} ½β(u) a(u)/(σ_u + ε_n) du (quadrature, once per configuration). It discretizes
//! dx/dt = −½β(t)[x − ε_θ/σ_t + w J_{x̂₀}ᵀ m]: the effective ΠGDM weight is w_t = w r_t², i.e. **w here is
//! not C-ΠGDM's w** (C-ΠGDM uses w r_t² μ_t², §1.6 caution). The guidance is explicit Euler, so the method
//! is unstable once ½β w Δs/μ_t² (roughly) exceeds 2 — the regime C-ΠGDM's transform removes. Starts from
//! μ_τ H†y + σ_τ z, or from pure noise z for inpainting (an operator named `inpaint`), as the official code;
//! outputs x at t_end (no final denoising). With w = 0 it is exactly λ-DDIM ([`super::ddim::lambda_ddim`]).
//!
//! **`discrete` (official `pgdm`, RED-diff code base, §8.1)** — DDIM steps on the discrete DDPM schedule and
//! the `ddpm_uniform` grid, per pair (t → s):
//!
//!   x_s = √ᾱ_s x̂₀ + c_noise z' + c_eps ε̂ + √ᾱ_s √ᾱ_t · w · g,
//!
//! with the DDIM coefficients of [`super::ddim::ddim_coefficients`] (η default 1.0) and w = the official
//! `grad_term_weight` (default 1.0, `awd = True`), again **a different w convention** from both C-ΠGDM and
//! the continuous form. Starts at √ᾱ_T H†y + √(1 − ᾱ_T) z; the last step (s = −1) returns x̂₀ + √ᾱ₀ w g.
//! For inpainting the official code (`in2_*` tasks) replaces x̂₀ by its data-consistent version before the
//! update, x̂₀ ⊙ (1 − mask) + y ⊙ mask, and g by g ⊙ (1 − mask); for a 0/1 mask those are x̂₀ + m and
//! (I − P) g, which is how they are written here (so they hold for any operator named `inpaint`).

use ndarray::Zip;

use super::common::{check_batch, check_start_end, eps_then_vjp, time_grid};
use super::ddim::{ddim_coefficients, lambda_ddim_phis};
use super::{
    check_range, unsupported_variant, ModelSchedule, Problem, Sampler, SamplerConfig, SamplerName,
    SamplerVariant,
};
use crate::error::{Error, Result};
use crate::model::Network;
use crate::operators::OperatorKind;
use crate::schedules::{DdpmDiscrete, VpContinuous};
use crate::tensor::Img;

/// Continuous form defaults (the official baseline script `baseline_cont_pgdm.sh`, docs/samplers.md §12).
pub const DEFAULT_CONTINUOUS_STEPS: usize = 20;
/// Continuous-form w (baseline script; the config file's fallback is 1.0).
pub const DEFAULT_CONTINUOUS_GUIDANCE: f64 = 6.0;
/// Discrete-form steps (the experiment default of the official configs).
pub const DEFAULT_DISCRETE_STEPS: usize = 50;
/// Discrete-form w = `grad_term_weight` (config `pgdm.yaml`).
pub const DEFAULT_DISCRETE_GUIDANCE: f64 = 1.0;
/// Discrete-form η (config `pgdm.yaml`).
pub const DEFAULT_DISCRETE_ETA: f64 = 1.0;

/// The two forms.
#[derive(Debug, Clone)]
enum Form {
    Continuous {
        vp: VpContinuous,
        lambda: f64,
        /// t_0 = τ > … > t_K = t_end.
        t: Vec<f64>,
        /// ΔΦ_k.
        phi: Vec<f64>,
    },
    Discrete {
        ddpm: DdpmDiscrete,
        eta: f64,
        /// The `ddpm_uniform` grid (increasing).
        ts: Vec<i64>,
    },
}

/// The ΠGDM sampler.
#[derive(Debug, Clone)]
pub struct Pigdm {
    w: f64,
    form: Form,
}

impl Pigdm {
    /// Build from a spec's sampler settings (`variant`: `continuous` (default) or `discrete`).
    pub fn from_config(cfg: &SamplerConfig, sched: &ModelSchedule) -> Result<Self> {
        let (vp, ddpm) = sched.diffusion("pigdm")?;
        let discrete = match cfg.variant {
            None | Some(SamplerVariant::Continuous) => false,
            Some(SamplerVariant::Discrete) => true,
            Some(other) => return Err(unsupported_variant(SamplerName::Pigdm, other)),
        };
        let (def_steps, def_w) = if discrete {
            (DEFAULT_DISCRETE_STEPS, DEFAULT_DISCRETE_GUIDANCE)
        } else {
            (DEFAULT_CONTINUOUS_STEPS, DEFAULT_CONTINUOUS_GUIDANCE)
        };
        let steps = cfg.steps.unwrap_or(def_steps);
        if steps == 0 {
            return Err(Error::invalid("steps", steps, ">= 1"));
        }
        let w = check_range("guidance", cfg.guidance.unwrap_or(def_w), 0.0, f64::MAX)?;
        let form = if discrete {
            let eta = check_range("eta", cfg.eta.unwrap_or(DEFAULT_DISCRETE_ETA), 0.0, 1.0)?;
            Form::Discrete {
                ddpm: ddpm.clone(),
                eta,
                ts: ddpm.uniform_grid(steps)?,
            }
        } else {
            let lambda = check_range("lambda", cfg.lambda.unwrap_or(0.0), -f64::MAX, f64::MAX)?;
            let tau = cfg.start_time.unwrap_or(super::common::DEFAULT_START_TIME);
            let t_end = cfg.end_time.unwrap_or(super::common::DEFAULT_END_TIME);
            check_start_end(tau, t_end)?;
            let eps_n = check_range(
                "num_eps",
                cfg.num_eps.unwrap_or(super::common::DEFAULT_NUM_EPS),
                0.0,
                1.0,
            )?;
            let t = time_grid(tau, t_end, steps);
            let phi = lambda_ddim_phis(vp, lambda, eps_n, &t)?;
            Form::Continuous {
                vp: *vp,
                lambda,
                t,
                phi,
            }
        };
        Ok(Pigdm { w, form })
    }

    /// ΔΦ_k of the continuous form (None for the discrete form).
    pub fn continuous_phis(&self) -> Option<&[f64]> {
        match &self.form {
            Form::Continuous { phi, .. } => Some(phi),
            Form::Discrete { .. } => None,
        }
    }

    /// Diffusion times of the continuous form (None for the discrete form).
    pub fn times(&self) -> Option<&[f64]> {
        match &self.form {
            Form::Continuous { t, .. } => Some(t),
            Form::Discrete { .. } => None,
        }
    }

    fn sample_continuous(
        &self,
        net: &Network,
        problems: &mut [Problem],
        vp: &VpContinuous,
        lambda: f64,
        t: &[f64],
        phi: &[f64],
    ) -> Result<Vec<Img>> {
        let w = self.w;
        let a = |u: f64| (lambda * u + 0.5 * vp.b(u)).exp();
        let (mu0, sigma0) = (vp.mu(t[0]), vp.sigma(t[0]));
        let hys: Vec<Img> = problems.iter().map(|p| p.op.pinv(&p.y)).collect();
        // x₀ = μ_τ H†y + σ_τ z, or z for inpainting; x̄ = a(t₀) x₀.
        let mut xs: Vec<Img> = problems
            .iter_mut()
            .zip(&hys)
            .map(|(p, hy)| {
                let z = p.init_noise();
                if p.op.kind() == Some(OperatorKind::Inpaint) {
                    z
                } else {
                    hy * mu0 + &(z * sigma0)
                }
            })
            .collect();
        let mut xbars: Vec<Img> = xs.iter().map(|x| x * a(t[0])).collect();
        for k in 0..phi.len() {
            let (tk, ds) = (t[k], t[k] - t[k + 1]);
            let (mu, sigma) = (vp.mu(tk), vp.sigma(tk));
            let t_net = net.time.diffusion_continuous(tk);
            // ε̂, m = H†y − P x̂₀, J_εᵀ m; then g = J_x̂₀ᵀ m = (m − σ J_εᵀ m)/μ.
            let (eps, ms, ge) = eps_then_vjp(net, &xs, t_net, mu, sigma, |i, e| {
                let x0_hat = Zip::from(&xs[i])
                    .and(e)
                    .map_collect(|&x, &e| (x - e * sigma) / mu);
                let mut m = problems[i].op.project(&x0_hat);
                m.zip_mut_with(&hys[i], |pm, &hy| *pm = hy - *pm);
                m
            })?;
            let guide = 0.5 * w * vp.beta(tk) * a(tk) * ds;
            let a_next = a(t[k + 1]);
            for (i, xbar) in xbars.iter_mut().enumerate() {
                // x̄ ← x̄ − λΔs x̄ + ΔΦ_k ε̂ + ½ w β(t_k) a(t_k) Δs g, g = (m − σ J_εᵀ m)/μ, in place;
                // x = x̄/a(t_{k+1}) written into the old state's buffer.
                let decay = 1.0 - lambda * ds;
                Zip::from(&mut *xbar)
                    .and(&mut xs[i])
                    .and(&eps[i])
                    .and(&ms[i])
                    .and(&ge[i])
                    .for_each(|xb, x, &e, &m, &ge| {
                        let g = (m - ge * sigma) / mu;
                        *xb = (*xb * decay + phi[k] * e) + guide * g;
                        *x = *xb / a_next;
                    });
            }
        }
        Ok(xs)
    }

    fn sample_discrete(
        &self,
        net: &Network,
        problems: &mut [Problem],
        ddpm: &DdpmDiscrete,
        eta: f64,
        ts: &[i64],
    ) -> Result<Vec<Img>> {
        let w = self.w;
        let n = ddpm.len();
        let hys: Vec<Img> = problems.iter().map(|p| p.op.pinv(&p.y)).collect();
        let a_top = ddpm.alpha(*ts.last().expect("non-empty grid"));
        // x = √ᾱ_T H†y + √(1 − ᾱ_T) z.
        let mut xs: Vec<Img> = problems
            .iter_mut()
            .zip(&hys)
            .map(|(p, hy)| hy * a_top.sqrt() + &(p.init_noise() * (1.0 - a_top).sqrt()))
            .collect();
        for j in (0..ts.len()).rev() {
            let (t, s) = (ts[j], if j > 0 { ts[j - 1] } else { -1 });
            let (a_t, a_s) = (ddpm.alpha(t), ddpm.alpha(s));
            let (mu, sigma) = (a_t.sqrt(), (1.0 - a_t).sqrt());
            let (c_noise, c_eps) = ddim_coefficients(a_t, a_s, eta);
            let t_net = net.time.diffusion_index(t, n);
            let (eps, ms, ge) = eps_then_vjp(net, &xs, t_net, mu, sigma, |i, e| {
                let x0_hat = Zip::from(&xs[i])
                    .and(e)
                    .map_collect(|&x, &e| (x - e * sigma) / mu);
                let mut m = problems[i].op.project(&x0_hat);
                m.zip_mut_with(&hys[i], |pm, &hy| *pm = hy - *pm);
                m
            })?;
            for (i, p) in problems.iter_mut().enumerate() {
                let m = &ms[i];
                let mut x0_hat = (&xs[i] - &(&eps[i] * sigma)) / mu;
                let mut g = (m - &(&ge[i] * sigma)) / mu;
                if p.op.kind() == Some(OperatorKind::Inpaint) {
                    // x̂₀ ⊙ (1 − mask) + y ⊙ mask = x̂₀ + m;  g ⊙ (1 − mask) = g − P g.
                    x0_hat += m;
                    g = &g - &p.op.project(&g);
                }
                // x_s = √ᾱ_s x̂₀ + c_noise z' + c_eps ε̂ + √ᾱ_s √ᾱ_t w g
                let mut x = x0_hat * a_s.sqrt();
                if c_noise > 0.0 {
                    x.scaled_add(c_noise, &p.normal());
                }
                x.scaled_add(c_eps, &eps[i]);
                x.scaled_add(a_s.sqrt() * mu * w, &g);
                xs[i] = x;
            }
        }
        Ok(xs)
    }
}

impl Sampler for Pigdm {
    fn name(&self) -> &'static str {
        "pigdm"
    }

    fn nfe(&self) -> usize {
        match &self.form {
            Form::Continuous { phi, .. } => phi.len(),
            Form::Discrete { ts, .. } => ts.len(),
        }
    }

    fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        net.expect_vjps();
        check_batch(problems)?;
        if problems.is_empty() {
            return Ok(Vec::new());
        }
        match &self.form {
            Form::Continuous { vp, lambda, t, phi } => {
                self.sample_continuous(net, problems, vp, *lambda, t, phi)
            }
            Form::Discrete { ddpm, eta, ts } => self.sample_discrete(net, problems, ddpm, *eta, ts),
        }
    }
}
