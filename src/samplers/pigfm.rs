//! ΠGFM: ΠGDM guidance for rectified flows, integrated with explicit Euler — the flow baseline of C-ΠGFM.
//!
//! Papers: J. Song, A. Vahdat, M. Mardani, J. Kautz, *Pseudoinverse-Guided Diffusion Models for Inverse
//! Problems* (ICLR 2023) for the guidance; A. Pokle, M. Muckley, R. Chen, B. Karrer, *Training-free
//! Linear Image Inverses via Flows* (TMLR 2024) for its flow form; as implemented by Pandey, Yang & Mandt
//! (NeurIPS 2024, arXiv 2405.17673), official code `mandt-lab/c-pigdm`, `flow/sampler.py` class `PGDM`,
//! wired in `flow/pgdm_rf.py`. Equations: docs/samplers.md §1.5, §1.6, §10.
//!
//! # The ODE (docs/samplers.md §10)
//!
//! ΠGDM approximates p(x₁ | x_t) by N(x̂₁, r_t² I) with r_t² = (1 − t)²/(t² + (1 − t)²), the exact
//! variance for unit-variance data. Since ∂v/∂x̂₁ = 1/(1 − t), the conditional velocity is
//! v + ((1 − t)/t)(1/r_t²) J_x̂₁ᵀ m, so with a guidance weight w
//!
//! ```text
//! dx/dt = v + w (t² + (1 − t)²)/(t(1 − t)) g,   g = J_x̂₁ᵀ m = m + (1 − t) J_vᵀ m,
//! x̂₁ = x + (1 − t) v,   m = H†y − P x̂₁ (a constant under differentiation).
//! ```
//!
//! # The step
//!
//! Grid t_i = st + iΔ, Δ = (1 − st)/K (f64; the official float32 grid is not reproduced), start
//! x₀ = st H†y + (1 − st) z, and for i = 0..K−1 one explicit Euler step
//!
//! ```text
//! x ← x + Δ [ v + w (t_i² + (1 − t_i)²)/(t_i (1 − t_i)) g ].
//! ```
//!
//! The output is x after K steps (t = 1), unclamped. Cost per step: 1 forward + 1 VJP, 1 P. The network is
//! never called at t = 0 or t = 1.
//!
//! The weight diverges like 1/(1 − t) as t → 1. Its explicit-Euler product with Δ stays bounded on the
//! grid (at t_{K−1} = 1 − Δ it is about w), so the last step moves P x most of the way to H†y.
//!
//! **The weight is not comparable with C-ΠGFM's w** (docs/samplers.md §1.6): C-ΠGFM uses γ(t) = t(1 − t),
//! ΠGFM (t² + (1 − t)²)/(t(1 − t)).
//!
//! # Defaults
//!
//! | setting | default | source |
//! |---|---|---|
//! | steps K | 5 | `--steps` argparse default of `flow/pgdm_rf.py` |
//! | guidance w | 1 | the repository requires it; w = 1 is the unscaled ΠGDM guidance above, exact for unit-variance Gaussian data, and keeps explicit Euler stable on the default grid, where Δ times the weight stays ≤ w at every t_i ≥ 0.6 |
//! | start_time st | 0.6 | the same start as C-ΠGFM (`flow/run.sh` `skip_t`; argparse requires it) |
//!
//! Like C-ΠGFM, the guidance is noiseless: a problem's `sigma_y` is not used (a warning is logged).

use ndarray::Zip;

use super::common::{check_flow_batch, flow_grid, reject_unused, validate_flow_grid, velocity_jt};
use super::{unsupported_variant, ModelSchedule, Problem, Sampler, SamplerConfig, SamplerName};
use crate::error::{Error, Result};
use crate::model::Network;
use crate::tensor::Img;

/// ΠGFM settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PigfmParams {
    /// Number of Euler steps K (= NFE).
    pub steps: usize,
    /// Guidance weight w.
    pub w: f64,
    /// Flow time st ∈ (0, 1) where sampling starts.
    pub start_time: f64,
}

impl Default for PigfmParams {
    /// steps 5 (argparse), w 1 (unscaled ΠGDM guidance), st 0.6 (as C-ΠGFM).
    fn default() -> Self {
        PigfmParams {
            steps: 5,
            w: 1.0,
            start_time: 0.6,
        }
    }
}

/// The ΠGFM sampler (`pigfm`).
#[derive(Debug, Clone)]
pub struct Pigfm {
    params: PigfmParams,
    /// t_0 = st < … < t_K = 1.
    grid: Vec<f64>,
    /// Step size Δ = (1 − st)/K.
    delta: f64,
}

impl Pigfm {
    /// Build from a spec's sampler settings; unset values take the defaults of [`PigfmParams::default`].
    pub fn from_config(cfg: &SamplerConfig, sched: &ModelSchedule) -> Result<Self> {
        sched.flow("pigfm")?;
        reject_unused("pigfm", cfg)?;
        if let Some(l) = cfg.lambda.filter(|&l| l != 0.0) {
            return Err(Error::invalid(
                "lambda",
                l,
                "unset or 0: pigfm has no conjugate transform (use c-pigfm)",
            ));
        }
        if let Some(v) = cfg.variant {
            return Err(unsupported_variant(SamplerName::Pigfm, v));
        }
        let d = PigfmParams::default();
        Pigfm::new(PigfmParams {
            steps: cfg.steps.unwrap_or(d.steps),
            w: cfg.guidance.unwrap_or(d.w),
            start_time: cfg.start_time.unwrap_or(d.start_time),
        })
    }

    /// Build from explicit settings.
    pub fn new(params: PigfmParams) -> Result<Self> {
        validate_flow_grid(params.steps, params.start_time)?;
        super::check_range("guidance", params.w, 0.0, 1000.0)?;
        Ok(Pigfm {
            params,
            grid: flow_grid(params.steps, params.start_time),
            delta: (1.0 - params.start_time) / params.steps as f64,
        })
    }

    /// The settings in use.
    pub fn params(&self) -> &PigfmParams {
        &self.params
    }

    /// The time grid t_0 = st, …, t_K = 1.
    pub fn grid(&self) -> &[f64] {
        &self.grid
    }

    /// The guidance weight w (t² + (1 − t)²)/(t(1 − t)) at flow time t ∈ (0, 1).
    pub fn weight(&self, t: f64) -> f64 {
        self.params.w * (t * t + (1.0 - t) * (1.0 - t)) / (t * (1.0 - t))
    }
}

impl Sampler for Pigfm {
    fn name(&self) -> &'static str {
        "pigfm"
    }

    fn nfe(&self) -> usize {
        self.params.steps
    }

    fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        net.expect_vjps();
        check_flow_batch("pigfm", net, problems)?;
        if problems.is_empty() {
            return Ok(Vec::new());
        }
        let st = self.params.start_time;
        let delta = self.delta;

        // H†y, cached per sample.
        let hy: Vec<Img> = problems.iter().map(|p| p.op.pinv(&p.y)).collect();

        // x₀ = st H†y + (1 − st) z.
        let mut xs: Vec<Img> = problems
            .iter_mut()
            .zip(&hy)
            .map(|(p, hy)| hy * st + &(p.init_noise() * (1.0 - st)))
            .collect();

        for &t in &self.grid[..self.params.steps] {
            // v = v_θ(x, t), x̂₁ = x + (1 − t) v, m = H†y − P x̂₁.
            let vs = net.velocity(&xs, t)?;
            let ms: Vec<Img> = problems
                .iter()
                .zip(xs.iter().zip(&vs))
                .zip(&hy)
                .map(|((p, (x, v)), hy)| {
                    let x1_hat = Zip::from(x).and(v).map_collect(|&x, &v| x + v * (1.0 - t));
                    let mut m = p.op.project(&x1_hat);
                    m.zip_mut_with(hy, |pm, &hy| *pm = hy - *pm);
                    m
                })
                .collect();

            // g = J_x̂₁ᵀ m = m + (1 − t) J_vᵀ m.
            let jvs = velocity_jt(net, &xs, t, &ms)?;
            let weight = self.weight(t);

            // x ← x + Δ [v + w (t² + (1 − t)²)/(t(1 − t)) g].
            for ((x, v), (m, jv)) in xs.iter_mut().zip(&vs).zip(ms.iter().zip(&jvs)) {
                Zip::from(x)
                    .and(v)
                    .and(m)
                    .and(jv)
                    .for_each(|x, &v, &m, &jv| {
                        let g = m + jv * (1.0 - t);
                        *x += (v + g * weight) * delta;
                    });
            }
        }
        Ok(xs)
    }
}
