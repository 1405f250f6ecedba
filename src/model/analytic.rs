//! Analytic denoisers: exact ε / x̂₀ / velocity predictors for Gaussian data (docs/samplers.md §14.3), with
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
//!
//! Isotropic Gaussian mixtures Σ_k π_k N(m_k, s_k² I) ([`GaussianMixture`], [`MixtureDiffusion`],
//! [`MixtureFlow`]) give nonlinear oracles with exact VJPs, and their exact posterior under a linear
//! measurement ([`GaussianMixture::posterior`]).

use std::sync::Arc;

use ndarray::{Array4, ArrayView4, Axis};

use super::{Denoiser, Parameterization};
use crate::error::{Error, Result};
use crate::operators::OperatorRef;
use crate::schedules::{DdpmDiscrete, TimeInput, VpContinuous};
use crate::tensor::Img;

/// An orthonormal basis V: `to_basis` = Vᵀ, `from_basis` = V.
#[allow(clippy::wrong_self_convention)] // `from_basis` maps coordinates back through the basis `self`.
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
        if var.iter().any(|&v| v.is_nan() || v < 0.0 || !v.is_finite()) {
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
            // x̂₀ = m + μ λ C⁻¹ (x − μ m) ⇒ ∂x̂₀/∂x = μ λ C⁻¹ (the skeleton had μ², fixed).
            _ => self
                .prior
                .apply_diag(cot, |l| mu * l / (mu * mu * l + s * s)),
        }
    }
}

/// The [`Denoiser`] of an exact Gaussian oracle with per-sample `out(x, t)` and `jt(cotangent, t)`.
macro_rules! gaussian_denoiser {
    ($ty:ty, $engine:literal) => {
        impl Denoiser for $ty {
            fn engine(&self) -> String {
                $engine.into()
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
    };
}

gaussian_denoiser!(GaussianDiffusion, "analytic-gaussian");

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
        // x̂₁ = m + t λ S⁻¹ (x − t m) ⇒ ∂x̂₁/∂x = t λ S⁻¹.
        let jx1 = move |l: f64| t * l / (t * t * l + (1.0 - t).powi(2));
        match self.param {
            Parameterization::Velocity => {
                self.prior.apply_diag(cot, |l| (jx1(l) - 1.0) / (1.0 - t))
            }
            _ => self.prior.apply_diag(cot, jx1),
        }
    }
}

gaussian_denoiser!(GaussianFlow, "analytic-gaussian-flow");

// ---------------------------------------------------------------------------------------------------------
// Isotropic Gaussian mixtures (docs/samplers.md §14.3)
// ---------------------------------------------------------------------------------------------------------

/// An isotropic Gaussian mixture Σ_k π_k N(m_k, s_k² I) on images of one shape.
///
/// Noised by x = ν x₀ + ρ z (VP diffusion: (ν, ρ) = (μ_t, σ_t); rectified flow with x₁ the data:
/// (ν, ρ) = (t, 1 − t)), it stays a mixture: x ~ Σ_k π_k N(ν m_k, c_k I) with c_k = ν² s_k² + ρ². Write
///
/// * ℓ_k(x) = ln π_k − (d/2) ln(2π c_k) − ‖x − ν m_k‖² / (2 c_k), the log joint of component k;
/// * γ_k = softmax_k(ℓ_k), the responsibilities (computed by log-sum-exp, so no underflow);
/// * a_k = (x − ν m_k)/c_k, so that ∇ℓ_k = −a_k and the score is ∇ ln p(x) = −ā with ā = Σ_k γ_k a_k.
///
/// Every oracle output is a responsibility-weighted average o = Σ_k γ_k o_k of per-component affine maps
/// o_k = α_k x + β_k m_k. Because ∂γ_k/∂x = −γ_k (a_k − ā),
///
/// J = ∂o/∂x = (Σ_k γ_k α_k) I − Σ_k γ_k (o_k − ō)(a_k − ā)ᵀ,
///
/// and the VJP is Jᵀu = (Σ_k γ_k α_k) u − Σ_k γ_k ⟨o_k − ō, u⟩ (a_k − ā), computed without forming a
/// matrix. (For ε, o_k = ρ a_k and J is visibly symmetric: it is −ρ times the Hessian of ln p.)
#[derive(Debug, Clone)]
pub struct GaussianMixture {
    /// ln π_k, normalized so that Σ_k π_k = 1.
    log_weights: Vec<f64>,
    /// Component means m_k (all the same shape).
    pub means: Vec<Img>,
    /// Component variances s_k² > 0.
    pub vars: Vec<f64>,
}

/// Which per-component output an oracle averages (see [`GaussianMixture`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MixOut {
    /// ε = (x − ν x̂_clean)/ρ: o_k = ρ a_k.
    Noise,
    /// E[x_clean | x]: o_k = m_k + ν s_k² a_k.
    Clean,
    /// Rectified-flow velocity E[x₁ − z | x] with (ν, ρ) = (t, 1 − t):
    /// o_k = ((1 − t) m_k − (1 − t − t s_k²) x)/c_k, finite at t = 1.
    Velocity,
}

/// Per-sample state of the mixture at one noise level: responsibilities and the a_k.
struct MixState {
    gamma: Vec<f64>,
    a: Vec<Img>,
    c: Vec<f64>,
    log_p: f64,
}

impl GaussianMixture {
    /// `weights` π_k > 0 (normalized here), `means` m_k of one shape, `vars` s_k² > 0.
    pub fn new(weights: Vec<f64>, means: Vec<Img>, vars: Vec<f64>) -> Result<Self> {
        let k = weights.len();
        if k == 0 || means.len() != k || vars.len() != k {
            return Err(Error::Shape(format!(
                "mixture with {} weights, {} means, {} variances (expected the same number >= 1)",
                weights.len(),
                means.len(),
                vars.len()
            )));
        }
        if weights.iter().any(|&w| !(w > 0.0 && w.is_finite())) {
            return Err(Error::invalid(
                "mixture weight",
                "entry",
                "finite values > 0",
            ));
        }
        if vars.iter().any(|&v| !(v > 0.0 && v.is_finite())) {
            return Err(Error::invalid(
                "mixture variance",
                "entry",
                "finite values > 0",
            ));
        }
        if means.iter().any(|m| m.shape() != means[0].shape()) {
            return Err(Error::Shape(
                "mixture means must all have the same shape".into(),
            ));
        }
        if means.iter().any(|m| m.iter().any(|v| !v.is_finite())) {
            return Err(Error::invalid("mixture mean", "entry", "finite values"));
        }
        let total: f64 = weights.iter().sum();
        let log_weights = weights.iter().map(|w| (w / total).ln()).collect();
        Ok(GaussianMixture {
            log_weights,
            means,
            vars,
        })
    }

    /// Mixture weights π_k (normalized).
    pub fn weights(&self) -> Vec<f64> {
        self.log_weights.iter().map(|l| l.exp()).collect()
    }

    /// Image shape (C, H, W).
    pub fn shape(&self) -> &[usize] {
        self.means[0].shape()
    }

    fn state(&self, x: &Img, nu: f64, rho: f64) -> MixState {
        let d = x.len() as f64;
        let mut ell = Vec::with_capacity(self.means.len());
        let mut a = Vec::with_capacity(self.means.len());
        let mut c = Vec::with_capacity(self.means.len());
        for ((m, &s2), &lw) in self.means.iter().zip(&self.vars).zip(&self.log_weights) {
            let ck = nu * nu * s2 + rho * rho;
            let r = x - &(m * nu);
            let r2 = r.iter().map(|v| v * v).sum::<f64>();
            ell.push(lw - 0.5 * d * (2.0 * std::f64::consts::PI * ck).ln() - 0.5 * r2 / ck);
            a.push(r / ck);
            c.push(ck);
        }
        let mx = ell.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = ell.iter().map(|l| (l - mx).exp()).sum();
        let log_p = mx + z.ln();
        let gamma = ell.iter().map(|l| (l - log_p).exp()).collect();
        MixState { gamma, a, c, log_p }
    }

    /// ln p(x) of the noised mixture x = ν x₀ + ρ z (z ~ N(0, I)).
    pub fn log_density(&self, x: &Img, nu: f64, rho: f64) -> f64 {
        self.state(x, nu, rho).log_p
    }

    /// ∇ₓ ln p(x) of the noised mixture.
    pub fn score(&self, x: &Img, nu: f64, rho: f64) -> Img {
        let st = self.state(x, nu, rho);
        -weighted(&st.gamma, &st.a)
    }

    /// Responsibilities γ_k(x) of the noised mixture.
    pub fn responsibilities(&self, x: &Img, nu: f64, rho: f64) -> Vec<f64> {
        self.state(x, nu, rho).gamma
    }

    /// (α_k, β_k) of o_k = α_k x + β_k m_k.
    fn coefs(&self, out: MixOut, nu: f64, rho: f64, k: usize, ck: f64) -> (f64, f64) {
        let s2 = self.vars[k];
        match out {
            MixOut::Noise => (rho / ck, -rho * nu / ck),
            MixOut::Clean => (nu * s2 / ck, rho * rho / ck),
            MixOut::Velocity => ((nu * s2 - rho) / ck, rho / ck),
        }
    }

    fn components(&self, st: &MixState, x: &Img, out: MixOut, nu: f64, rho: f64) -> Vec<Img> {
        (0..self.means.len())
            .map(|k| {
                let (al, be) = self.coefs(out, nu, rho, k, st.c[k]);
                x * al + &(&self.means[k] * be)
            })
            .collect()
    }

    fn output(&self, x: &Img, out: MixOut, nu: f64, rho: f64) -> Img {
        let st = self.state(x, nu, rho);
        let ok = self.components(&st, x, out, nu, rho);
        weighted(&st.gamma, &ok)
    }

    fn output_vjp(&self, x: &Img, cot: &Img, out: MixOut, nu: f64, rho: f64) -> (Img, Img) {
        let st = self.state(x, nu, rho);
        let ok = self.components(&st, x, out, nu, rho);
        let o_bar = weighted(&st.gamma, &ok);
        let a_bar = weighted(&st.gamma, &st.a);
        let alpha: f64 = (0..self.means.len())
            .map(|k| st.gamma[k] * self.coefs(out, nu, rho, k, st.c[k]).0)
            .sum();
        let mut g = cot * alpha;
        for ((&gk, okk), ak) in st.gamma.iter().zip(&ok).zip(&st.a) {
            if gk == 0.0 {
                continue;
            }
            let dot: f64 = okk
                .iter()
                .zip(&o_bar)
                .zip(cot)
                .map(|((o, ob), u)| (o - ob) * u)
                .sum();
            let coef = gk * dot;
            ndarray::Zip::from(&mut g)
                .and(ak)
                .and(&a_bar)
                .for_each(|g, &ak, &ab| *g -= coef * (ak - ab));
        }
        (o_bar, g)
    }

    /// The exact posterior p(x₀ | y) for y = H x₀ + σ_y n (docs/samplers.md §14.3), with H given by the
    /// spectral view of `op` (the thresholded operator the samplers use). It is again a mixture; component k
    /// is Gaussian with covariance V diag(v_k) Vᵀ,
    ///
    /// * v_{k,i} = s_k² σ_y² / (σ_y² + s_k² s_i²)  (= (1/s_k² + s_i²/σ_y²)⁻¹),
    /// * mean V[(σ_y² m̂_{k,i} + s_k² s_i ŷ_i) / (σ_y² + s_k² s_i²)]  with m̂_k = Vᵀ m_k, ŷ = Uᵀ y,
    /// * weight ∝ π_k N(y; H m_k, s_k² HHᵀ + σ_y² I).
    ///
    /// The formulas are written so that σ_y = 0 is the noiseless case: measured coordinates are pinned to
    /// (H†y)_i with zero variance, null-space coordinates keep N(m̂_{k,i}, s_k²), and the weight uses
    /// N(y; H m_k, s_k² HHᵀ) restricted to the range of H.
    pub fn posterior(&self, op: &OperatorRef, y: &Img, sigma_y: f64) -> Result<MixturePosterior> {
        if !(sigma_y >= 0.0 && sigma_y.is_finite()) {
            return Err(Error::invalid("sigma_y", sigma_y, "a finite value >= 0"));
        }
        let xs = op.x_shape();
        if self.shape() != &xs[..] {
            return Err(Error::Shape(format!(
                "mixture of shape {:?} vs operator input {:?}",
                self.shape(),
                xs
            )));
        }
        if y.shape() != &op.y_shape()[..] {
            return Err(Error::Shape(format!(
                "measurement {:?} vs operator output {:?}",
                y.shape(),
                op.y_shape()
            )));
        }
        let s = op.singulars();
        let yh = op.ut(y);
        let sy2 = sigma_y * sigma_y;
        let basis: Arc<dyn Basis> = Arc::new(OperatorBasis(op.clone()));
        let mut logw = Vec::with_capacity(self.means.len());
        let mut comps = Vec::with_capacity(self.means.len());
        for ((m, &s2), &lw) in self.means.iter().zip(&self.vars).zip(&self.log_weights) {
            let mh = op.vt(m);
            let mut mean_c = mh.clone();
            let mut var = mh.clone();
            let mut l = lw;
            ndarray::Zip::from(&mut mean_c)
                .and(&mut var)
                .and(&mh)
                .and(s)
                .and(&yh)
                .for_each(|mc, v, &mk, &si, &yi| {
                    if si == 0.0 {
                        // Not measured: the prior's coordinate, whatever σ_y.
                        *mc = mk;
                        *v = s2;
                    } else {
                        let den = sy2 + s2 * si * si;
                        *mc = (sy2 * mk + s2 * si * yi) / den;
                        *v = s2 * sy2 / den;
                        let r = yi - si * mk;
                        l += -0.5 * (2.0 * std::f64::consts::PI * den).ln() - 0.5 * r * r / den;
                    }
                });
            logw.push(l);
            comps.push(GaussianPrior::new(basis.clone(), op.v(&mean_c), var)?);
        }
        let mx = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = logw.iter().map(|l| (l - mx).exp()).sum();
        let weights = logw.iter().map(|l| (l - mx).exp() / z).collect();
        Ok(MixturePosterior {
            weights,
            components: comps,
        })
    }
}

/// Σ_k w_k x_k.
fn weighted(w: &[f64], xs: &[Img]) -> Img {
    let mut acc = Img::zeros(xs[0].raw_dim());
    for (wk, xk) in w.iter().zip(xs) {
        if *wk != 0.0 {
            acc.scaled_add(*wk, xk);
        }
    }
    acc
}

/// The exact posterior of a [`GaussianMixture`] under a linear measurement: a mixture of Gaussians whose
/// covariances are diagonal in the operator's spectral basis.
#[derive(Clone)]
pub struct MixturePosterior {
    /// Posterior component weights (sum to one).
    pub weights: Vec<f64>,
    /// Posterior components N(mean, V diag(var) Vᵀ).
    pub components: Vec<GaussianPrior>,
}

impl MixturePosterior {
    /// E[x₀ | y].
    pub fn mean(&self) -> Img {
        let means: Vec<Img> = self.components.iter().map(|c| c.mean.clone()).collect();
        weighted(&self.weights, &means)
    }
}

fn check_mixture_batch(
    mix: &GaussianMixture,
    x: &ArrayView4<f64>,
    t: &[f64],
    cot: Option<&ArrayView4<f64>>,
) -> Result<()> {
    check_batch(x, t, mix.shape())?;
    if let Some(c) = cot {
        check_batch(c, t, mix.shape())?;
    }
    Ok(())
}

fn mixture_batch(
    x: ArrayView4<f64>,
    t: &[f64],
    cot: ArrayView4<f64>,
    mut f: impl FnMut(&Img, &Img, f64) -> (Img, Img),
) -> (Array4<f64>, Array4<f64>) {
    let (outs, gs): (Vec<Img>, Vec<Img>) = x
        .outer_iter()
        .zip(cot.outer_iter())
        .zip(t)
        .map(|((xi, ci), &ti)| f(&xi.to_owned(), &ci.to_owned(), ti))
        .unzip();
    let ov: Vec<_> = outs.iter().map(|o| o.view()).collect();
    let gv: Vec<_> = gs.iter().map(|o| o.view()).collect();
    (
        ndarray::stack(Axis(0), &ov).expect("same shapes"),
        ndarray::stack(Axis(0), &gv).expect("same shapes"),
    )
}

/// Exact diffusion denoiser for a [`GaussianMixture`] prior on x₀; predicts ε (or x̂₀), with the exact VJP.
/// The noise level is decoded from the network time as in [`GaussianDiffusion`].
#[derive(Debug, Clone)]
pub struct MixtureDiffusion {
    pub mixture: GaussianMixture,
    pub level: NoiseLevel,
    pub param: Parameterization,
}

impl MixtureDiffusion {
    pub fn new(
        mixture: GaussianMixture,
        level: NoiseLevel,
        param: Parameterization,
    ) -> Result<Self> {
        if param == Parameterization::Velocity {
            return Err(Error::Unsupported(
                "a diffusion oracle predicts eps or x0".into(),
            ));
        }
        Ok(MixtureDiffusion {
            mixture,
            level,
            param,
        })
    }

    fn out_kind(&self) -> MixOut {
        match self.param {
            Parameterization::Eps => MixOut::Noise,
            _ => MixOut::Clean,
        }
    }
}

impl Denoiser for MixtureDiffusion {
    fn engine(&self) -> String {
        "analytic-gaussian-mixture".into()
    }
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        check_mixture_batch(&self.mixture, &x, t, None)?;
        Ok(per_sample(x, t, |xi, ti| {
            let (mu, s) = self.level.mu_sigma(ti);
            self.mixture.output(xi, self.out_kind(), mu, s)
        }))
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
        check_mixture_batch(&self.mixture, &x, t, Some(&cot))?;
        Ok(mixture_batch(x, t, cot, |xi, ci, ti| {
            let (mu, s) = self.level.mu_sigma(ti);
            self.mixture.output_vjp(xi, ci, self.out_kind(), mu, s)
        }))
    }
}

/// Exact rectified-flow velocity (or x̂₁) for a [`GaussianMixture`] prior on the data x₁, with the exact
/// VJP. The network time is read as in [`GaussianFlow`]. The velocity is computed per component as
/// v_k = ((1 − t) m_k − (1 − t − t s_k²) x)/c_k, which stays finite at t = 1 (where it equals x).
#[derive(Debug, Clone)]
pub struct MixtureFlow {
    pub mixture: GaussianMixture,
    pub time: TimeInput,
    pub param: Parameterization,
}

impl MixtureFlow {
    pub fn new(mixture: GaussianMixture, time: TimeInput, param: Parameterization) -> Result<Self> {
        if param == Parameterization::Eps {
            return Err(Error::Unsupported(
                "a flow oracle predicts velocity or x0".into(),
            ));
        }
        Ok(MixtureFlow {
            mixture,
            time,
            param,
        })
    }

    fn out_kind(&self) -> MixOut {
        match self.param {
            Parameterization::Velocity => MixOut::Velocity,
            _ => MixOut::Clean,
        }
    }
}

fn flow_time(time: TimeInput, t_net: f64) -> f64 {
    match time {
        TimeInput::Unit => t_net,
        TimeInput::Index { timesteps } => t_net / (timesteps - 1) as f64,
    }
}

impl Denoiser for MixtureFlow {
    fn engine(&self) -> String {
        "analytic-gaussian-mixture-flow".into()
    }
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        check_mixture_batch(&self.mixture, &x, t, None)?;
        Ok(per_sample(x, t, |xi, ti| {
            let t = flow_time(self.time, ti);
            self.mixture.output(xi, self.out_kind(), t, 1.0 - t)
        }))
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
        check_mixture_batch(&self.mixture, &x, t, Some(&cot))?;
        Ok(mixture_batch(x, t, cot, |xi, ci, ti| {
            let t = flow_time(self.time, ti);
            self.mixture.output_vjp(xi, ci, self.out_kind(), t, 1.0 - t)
        }))
    }
}
