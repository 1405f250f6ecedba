//! Shared helpers for the C-ΠGDM / ΠGDM / DDIM integration tests: small diagonal toys, exact Gaussian
//! oracles, a frozen denoiser, an RK4 reference integrator for the samplers' x-space ODEs.
#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use conjure::model::analytic::{GaussianDiffusion, GaussianPrior, IdentityBasis, NoiseLevel};
use conjure::model::{Denoiser, JacobianMode, ModelKind, Network, Parameterization};
use conjure::operators::{Diagonal, Img, LinearOperator, OperatorRef};
use conjure::samplers::{ModelSchedule, Problem, SamplerConfig, SamplerName};
use conjure::schedules::{TimeInput, VpContinuous};
use conjure::Result;
use ndarray::{Array3, Array4, ArrayView4};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

pub fn img(shape: [usize; 3], v: &[f64]) -> Img {
    Array3::from_shape_vec((shape[0], shape[1], shape[2]), v.to_vec()).unwrap()
}

pub fn randn(shape: [usize; 3], seed: u64) -> Img {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Array3::from_shape_simple_fn((shape[0], shape[1], shape[2]), || {
        StandardNormal.sample(&mut rng)
    })
}

pub fn diag(shape: [usize; 3], s: &[f64]) -> OperatorRef {
    Arc::new(Diagonal::new(img(shape, s)).unwrap())
}

pub fn norm(x: &Img) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

pub fn max_abs_diff(a: &Img, b: &Img) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// Exact ε-oracle N(mean, diag(var)) that sees the exact VP time (time input `unit`).
pub fn vp_oracle(mean: Img, var: Img) -> GaussianDiffusion {
    let prior = GaussianPrior::new(Arc::new(IdentityBasis), mean, var).unwrap();
    GaussianDiffusion::new(
        prior,
        NoiseLevel::VpUnit(VpContinuous::default()),
        Parameterization::Eps,
    )
    .unwrap()
}

pub fn eps_net(den: &dyn Denoiser, time: TimeInput) -> Network<'_> {
    Network::new(
        den,
        ModelKind::Diffusion,
        Parameterization::Eps,
        time,
        JacobianMode::Exact,
    )
}

pub fn sched() -> ModelSchedule {
    ModelSchedule::ddpm_linear_default()
}

pub fn vp() -> VpContinuous {
    VpContinuous::default()
}

/// A config with the given overrides.
pub fn config(
    name: SamplerName,
    steps: usize,
    w: f64,
    lambda: f64,
    tau: f64,
    t_end: f64,
    eps_n: f64,
) -> SamplerConfig {
    let mut c = SamplerConfig::new(name);
    c.steps = Some(steps);
    c.guidance = Some(w);
    c.lambda = Some(lambda);
    c.start_time = Some(tau);
    c.end_time = Some(t_end);
    c.num_eps = Some(eps_n);
    c
}

/// A noiseless problem y = H x_true with the given initial noise.
pub fn problem(op: &OperatorRef, x_true: &Img, z: &Img, seed: u64) -> Problem {
    let y = op.forward(x_true);
    Problem::new(op.clone(), y, 0.0, seed)
        .unwrap()
        .with_init_noise(z.clone())
        .unwrap()
}

/// A denoiser with frozen outputs: ε̂ ≡ e₀ and VJP ≡ g₀, whatever x, t and the cotangent are.
pub struct Frozen {
    pub e0: Img,
    pub g0: Img,
}

fn repeat(x: &Img, b: usize) -> Array4<f64> {
    let views: Vec<_> = (0..b).map(|_| x.view()).collect();
    ndarray::stack(ndarray::Axis(0), &views).unwrap()
}

impl Denoiser for Frozen {
    fn engine(&self) -> String {
        "frozen".into()
    }
    fn predict(&self, x: ArrayView4<f64>, _t: &[f64]) -> Result<Array4<f64>> {
        Ok(repeat(&self.e0, x.shape()[0]))
    }
    fn has_vjp(&self) -> bool {
        true
    }
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        _t: &[f64],
        _cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        let b = x.shape()[0];
        Ok((repeat(&self.e0, b), repeat(&self.g0, b)))
    }
}

/// Wraps a denoiser and records every network time input it is called with.
pub struct Recording<'a> {
    pub inner: &'a dyn Denoiser,
    pub times: Mutex<Vec<f64>>,
}

impl Denoiser for Recording<'_> {
    fn engine(&self) -> String {
        "recording".into()
    }
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        self.times.lock().unwrap().push(t[0]);
        self.inner.predict(x, t)
    }
    fn has_vjp(&self) -> bool {
        self.inner.has_vjp()
    }
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        self.times.lock().unwrap().push(t[0]);
        self.inner.vjp(x, t, cot)
    }
}

fn one(x: &Img) -> Array4<f64> {
    repeat(x, 1)
}

/// The guided ΠGDM ODE in diffusion time, with the network evaluated at the exact t (time input `unit`):
///   dx/dt = −½β(t) [ x − ε/σ + weight(t) J_{x̂₀}ᵀ m ],  m = H†y − P x̂₀,  J_{x̂₀}ᵀ m = (m − σ J_εᵀ m)/μ.
/// weight(t) = w μ_t² is C-ΠGDM's ODE (docs/samplers.md §4.1), weight(t) = w is continuous ΠGDM's (§6).
pub fn guided_rhs(
    den: &dyn Denoiser,
    op: &dyn LinearOperator,
    hy: &Img,
    weight: &dyn Fn(f64) -> f64,
    t: f64,
    x: &Img,
) -> Img {
    let vp = vp();
    let (mu, sigma, beta) = (vp.mu(t), vp.sigma(t), vp.beta(t));
    let eps = den
        .predict(one(x).view(), &[t])
        .unwrap()
        .index_axis_move(ndarray::Axis(0), 0);
    let x0 = (x - &(&eps * sigma)) / mu;
    let m = hy - &op.project(&x0);
    let ge = den
        .vjp(one(x).view(), &[t], one(&m).view())
        .unwrap()
        .1
        .index_axis_move(ndarray::Axis(0), 0);
    let jx0 = (&m - &(&ge * sigma)) / mu;
    let inner = x - &(&eps / sigma) + &(&jx0 * weight(t));
    inner * (-0.5 * beta)
}

/// Classical RK4 from t0 to t1 in n equal steps.
pub fn rk4(f: &dyn Fn(f64, &Img) -> Img, x0: &Img, t0: f64, t1: f64, n: usize) -> Img {
    let h = (t1 - t0) / n as f64;
    let mut x = x0.clone();
    for i in 0..n {
        let t = t0 + h * i as f64;
        let k1 = f(t, &x);
        let k2 = f(t + 0.5 * h, &(&x + &(&k1 * (0.5 * h))));
        let k3 = f(t + 0.5 * h, &(&x + &(&k2 * (0.5 * h))));
        let k4 = f(t + h, &(&x + &(&k3 * h)));
        x = &x + &((&k1 + &(&k2 * 2.0) + &(&k3 * 2.0) + &k4) * (h / 6.0));
    }
    x
}

/// Explicit Euler on the sampler's own grid.
pub fn euler(f: &dyn Fn(f64, &Img) -> Img, x0: &Img, ts: &[f64]) -> Img {
    let mut x = x0.clone();
    for w in ts.windows(2) {
        x = &x + &(f(w[0], &x) * (w[1] - w[0]));
    }
    x
}

#[allow(unused_imports)] // not every test file that includes this module uses it
pub use super::numeric::loglog_slope;
