//! Analytic denoisers: exact ε / x̂₀ / velocity predictors for Gaussian data (algorithms.md §14.3), with
//! exact VJPs. They are the project's test oracles and let benchmarks measure pure sampler cost.
//!
//! Gaussian data x₀ = m + V c with c ~ N(0, diag(λ)) in an orthonormal basis V (the identity, or the
//! spectral basis of an operator). For VP diffusion, with C_t = μ_t² λ + σ_t² per basis coordinate,
//!
//! * ε*(x, t) = σ_t V C_t⁻¹ Vᵀ (x − μ_t m),  J_ε = σ_t V C_t⁻¹ Vᵀ (symmetric);
//! * x̂₀ = m + μ_t V λ C_t⁻¹ Vᵀ (x − μ_t m).
//!
//! For rectified flow, x₁ = data, S_t = t² λ + (1 − t)²:
//!
//! * x̂₁ = m + t V λ S_t⁻¹ Vᵀ (x − t m),  v* = (x̂₁ − x)/(1 − t).

use std::sync::Arc;

use ndarray::{Array4, ArrayView4, Axis};

use super::{Denoiser, Parameterization};
use crate::error::{Error, Result};
use crate::operators::{Img, OperatorRef};
use crate::schedules::{DdpmDiscrete, TimeInput, VpContinuous};

/// An orthonormal basis V: `to_basis` = Vᵀ, `from_basis` = V.
pub trait Basis: Send + Sync {
    fn to_basis(&self, x: &Img) -> Img;
    fn from_basis(&self, c: &Img) -> Img;
}

/// V = I.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdentityBasis;

impl Basis for IdentityBasis {
    fn to_basis(&self, x: &Img) -> Img {
        x.clone()
    }
    fn from_basis(&self, c: &Img) -> Img {
        c.clone()
    }
}

/// The spectral basis V of an operator (its right singular vectors), so that the prior's covariance is
/// diagonal in the same coordinates as H.
#[derive(Debug, Clone)]
pub struct OperatorBasis(pub OperatorRef);

impl Basis for OperatorBasis {
    fn to_basis(&self, x: &Img) -> Img {
        self.0.vt(x)
    }
    fn from_basis(&self, c: &Img) -> Img {
        self.0.v(c)
    }
}

/// How a diffusion oracle reads the network time input back into a noise level (μ, σ).
#[derive(Debug, Clone)]
pub enum NoiseLevel {
    /// `t_net` is the continuous VP time t ∈ [0, 1] (time input `unit`).
    VpUnit(VpContinuous),
    /// `t_net` is a DDPM step index (time input `index`): μ² = ᾱ[i].
    DdpmIndex(DdpmDiscrete),
}

impl NoiseLevel {
    /// (μ, σ) at network time `t_net`.
    pub fn mu_sigma(&self, t_net: f64) -> (f64, f64) {
        match self {
            NoiseLevel::VpUnit(vp) => (vp.mu(t_net), vp.sigma(t_net)),
            NoiseLevel::DdpmIndex(d) => {
                let a = d.alpha(t_net.round() as i64);
                (a.sqrt(), (1.0 - a).sqrt())
            }
        }
    }

    /// The time-input convention that matches this decoder.
    pub fn time_input(&self) -> TimeInput {
        match self {
            NoiseLevel::VpUnit(_) => TimeInput::Unit,
            NoiseLevel::DdpmIndex(d) => TimeInput::Index { timesteps: d.len() },
        }
    }
}

/// A Gaussian prior N(mean, V diag(var) Vᵀ).
#[derive(Clone)]
pub struct GaussianPrior {
    pub basis: Arc<dyn Basis>,
    /// Mean, in image space.
    pub mean: Img,
    /// Variances λ_i ≥ 0 per basis coordinate (same shape as the image).
    pub var: Img,
}

impl GaussianPrior {
    pub fn new(basis: Arc<dyn Basis>, mean: Img, var: Img) -> Result<Self> {
        if mean.shape() != var.shape() {
            return Err(Error::Shape(format!(
                "prior mean {:?} vs variance {:?}",
                mean.shape(),
                var.shape()
            )));
        }
        if var.iter().any(|&v| !(v >= 0.0) || !v.is_finite()) {
            return Err(Error::invalid(
                "prior variance",
                "entry",
                "finite values >= 0",
            ));
        }
        Ok(GaussianPrior { basis, mean, var })
    }

    /// x ↦ V (f(λ) ⊙ Vᵀ x) with a per-coordinate scalar function of the variance.
    fn apply_diag(&self, x: &Img, f: impl Fn(f64) -> f64) -> Img {
        let mut c = self.basis.to_basis(x);
        c.zip_mut_with(&self.var, |c, &l| *c *= f(l));
        self.basis.from_basis(&c)
    }
}

fn check_batch(x: &ArrayView4<f64>, t: &[f64], shape: &[usize]) -> Result<()> {
    if x.shape()[0] != t.len() || &x.shape()[1..] != shape {
        return Err(Error::Shape(format!(
            "oracle got x {:?}, t [{}]; expects [B, {:?}], [B]",
            x.shape(),
            t.len(),
            shape
        )));
    }
    Ok(())
}

fn per_sample(x: ArrayView4<f64>, t: &[f64], mut f: impl FnMut(&Img, f64) -> Img) -> Array4<f64> {
    let outs: Vec<Img> = x
        .outer_iter()
        .zip(t)
        .map(|(xi, &ti)| f(&xi.to_owned(), ti))
        .collect();
    let views: Vec<_> = outs.iter().map(|o| o.view()).collect();
    ndarray::stack(Axis(0), &views).expect("same shapes")
}

/// Exact diffusion denoiser for a [`GaussianPrior`]; predicts ε (or x̂₀).
#[derive(Clone)]
pub struct GaussianDiffusion {
    pub prior: GaussianPrior,
    pub level: NoiseLevel,
    pub param: Parameterization,
}

impl GaussianDiffusion {
    pub fn new(prior: GaussianPrior, level: NoiseLevel, param: Parameterization) -> Result<Self> {
        if param == Parameterization::Velocity {
            return Err(Error::Unsupported(
                "a diffusion oracle predicts eps or x0".into(),
            ));
        }
        Ok(GaussianDiffusion {
            prior,
            level,
            param,
        })
    }

    fn out(&self, x: &Img, t_net: f64) -> Img {
        let (mu, s) = self.level.mu_sigma(t_net);
        let d = x - &(&self.prior.mean * mu);
        match self.param {
            Parameterization::Eps => self.prior.apply_diag(&d, |l| s / (mu * mu * l + s * s)),
            _ => {
                &self.prior.mean
                    + &self
                        .prior
                        .apply_diag(&d, |l| mu * l / (mu * mu * l + s * s))
            }
        }
    }

    fn jt(&self, cot: &Img, t_net: f64) -> Img {
        let (mu, s) = self.level.mu_sigma(t_net);
        match self.param {
            Parameterization::Eps => self.prior.apply_diag(cot, |l| s / (mu * mu * l + s * s)),
            _ => self
                .prior
                .apply_diag(cot, |l| mu * l / (mu * mu * l + s * s)),
        }
    }
}

impl Denoiser for GaussianDiffusion {
    fn engine(&self) -> String {
        "analytic-gaussian".into()
    }
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        check_batch(&x, t, self.prior.mean.shape())?;
        Ok(per_sample(x, t, |xi, ti| self.out(xi, ti)))
    }
    fn has_vjp(&self) -> bool {
        true
    }
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        check_batch(&x, t, self.prior.mean.shape())?;
        check_batch(&cot, t, self.prior.mean.shape())?;
        let out = per_sample(x, t, |xi, ti| self.out(xi, ti));
        let g = per_sample(cot, t, |ci, ti| self.jt(ci, ti));
        Ok((out, g))
    }
}

/// Exact rectified-flow velocity (or x̂₁) for a [`GaussianPrior`] on the data x₁.
#[derive(Clone)]
pub struct GaussianFlow {
    pub prior: GaussianPrior,
    pub time: TimeInput,
    pub param: Parameterization,
}

impl GaussianFlow {
    pub fn new(prior: GaussianPrior, time: TimeInput, param: Parameterization) -> Result<Self> {
        if param == Parameterization::Eps {
            return Err(Error::Unsupported(
                "a flow oracle predicts velocity or x0".into(),
            ));
        }
        Ok(GaussianFlow { prior, time, param })
    }

    fn flow_time(&self, t_net: f64) -> f64 {
        match self.time {
            TimeInput::Unit => t_net,
            TimeInput::Index { timesteps } => t_net / (timesteps - 1) as f64,
        }
    }

    fn out(&self, x: &Img, t_net: f64) -> Img {
        let t = self.flow_time(t_net);
        let d = x - &(&self.prior.mean * t);
        let x1 = &self.prior.mean
            + &self
                .prior
                .apply_diag(&d, |l| t * l / (t * t * l + (1.0 - t).powi(2)));
        match self.param {
            Parameterization::Velocity => (x1 - x) / (1.0 - t),
            _ => x1,
        }
    }

    fn jt(&self, cot: &Img, t_net: f64) -> Img {
        let t = self.flow_time(t_net);
        let jx1 = move |l: f64| t * t * l / (t * t * l + (1.0 - t).powi(2));
        match self.param {
            Parameterization::Velocity => {
                self.prior.apply_diag(cot, |l| (jx1(l) - 1.0) / (1.0 - t))
            }
            _ => self.prior.apply_diag(cot, jx1),
        }
    }
}

impl Denoiser for GaussianFlow {
    fn engine(&self) -> String {
        "analytic-gaussian-flow".into()
    }
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        check_batch(&x, t, self.prior.mean.shape())?;
        Ok(per_sample(x, t, |xi, ti| self.out(xi, ti)))
    }
    fn has_vjp(&self) -> bool {
        true
    }
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        check_batch(&x, t, self.prior.mean.shape())?;
        check_batch(&cot, t, self.prior.mean.shape())?;
        let out = per_sample(x, t, |xi, ti| self.out(xi, ti));
        let g = per_sample(cot, t, |ci, ti| self.jt(ci, ti));
        Ok((out, g))
    }
}
