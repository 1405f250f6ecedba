//! Networks: the [`Denoiser`] trait every backend implements, the sampler-facing [`Network`] adapter
//! (parameterization, time input, Jacobian mode, NFE accounting), and the analytic denoisers used as test
//! oracles and in benchmarks.

use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{Array4, ArrayView4, Axis};

use crate::error::{Error, Result};
use crate::operators::Img;
use crate::schedules::TimeInput;

pub mod analytic;
pub mod tiled;

/// Diffusion (ε / x₀ networks on a VP schedule) or rectified flow (velocity networks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    Diffusion,
    Flow,
}

/// What the network's output means (model card `parameterization`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parameterization {
    /// The noise ε (diffusion).
    Eps,
    /// The clean image: x̂₀ for diffusion, x̂₁ for flows.
    X0,
    /// The velocity x₁ − z (flows).
    Velocity,
}

/// How a sampler gets ∂out/∂x products (spec `sampler.jacobian`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JacobianMode {
    /// The model's VJP graph: one VJP evaluation (returns the forward output too).
    Exact,
    /// Central difference J·v ≈ (f(x + h v) − f(x − h v)) / 2h. Equals Jᵀv when J is symmetric (ideal
    /// denoisers are gradients of a log-density, so their Jacobian is symmetric). Costs 2 extra forwards
    /// per Jacobian product, so a step needs 3 forwards instead of 1 forward + 1 VJP.
    FiniteDifference,
    /// Drop the network Jacobian (J_net = 0); the samplers keep the analytic identity parts of
    /// ∂x̂₀/∂x or ∂x̂₁/∂x. Costs nothing beyond the forward.
    Identity,
}

/// A network (or an analytic stand-in) evaluated on batches. Inputs and outputs are f64 at this boundary;
/// ONNX backends run in f32 internally.
pub trait Denoiser: Send + Sync {
    /// Human-readable engine/provider description for logs and the manifest (e.g. `tract`, `onnxruntime/cpu`).
    fn engine(&self) -> String;
    /// out = f(x, t) for a batch x [B, C, H, W] and network time inputs t [B].
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>>;
    /// Whether [`vjp`](Self::vjp) is available.
    fn has_vjp(&self) -> bool;
    /// (out, (∂out/∂x)ᵀ cot) for a batch.
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        let _ = (x, t, cot);
        Err(Error::Unsupported(format!(
            "{} has no VJP graph; use jacobian: finite-difference or identity",
            self.engine()
        )))
    }
}

/// Network-evaluation counters.
#[derive(Debug, Default)]
pub struct NfeCounter {
    /// Forward evaluations (batch calls count once per image in the batch).
    pub forwards: AtomicUsize,
    /// VJP evaluations.
    pub vjps: AtomicUsize,
}

/// What samplers call: a [`Denoiser`] plus its parameterization, time convention and the chosen Jacobian
/// mode. All samples of a batch are at the same time; per-sample math stays per sample.
pub struct Network<'a> {
    pub denoiser: &'a dyn Denoiser,
    pub kind: ModelKind,
    pub param: Parameterization,
    pub time: TimeInput,
    pub jacobian: JacobianMode,
    /// Relative step of the finite-difference Jacobian (h = fd_eps · (1 + rms(x)) / rms(v)).
    pub fd_eps: f64,
    pub nfe: NfeCounter,
}

impl<'a> Network<'a> {
    pub fn new(
        denoiser: &'a dyn Denoiser,
        kind: ModelKind,
        param: Parameterization,
        time: TimeInput,
        jacobian: JacobianMode,
    ) -> Self {
        Network {
            denoiser,
            kind,
            param,
            time,
            jacobian,
            fd_eps: 1e-3,
            nfe: NfeCounter::default(),
        }
    }

    /// Check that the Jacobian mode can run on this denoiser.
    pub fn validate(&self) -> Result<()> {
        if self.jacobian == JacobianMode::Exact && !self.denoiser.has_vjp() {
            return Err(Error::Unsupported(
                "jacobian: exact needs a model with a vjp graph; use finite-difference or identity"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Raw network output for a batch of same-shape images at one network time.
    pub fn raw(&self, xs: &[Img], t_net: f64) -> Result<Vec<Img>> {
        let x = stack(xs)?;
        self.nfe.forwards.fetch_add(xs.len(), Ordering::Relaxed);
        let out = self.denoiser.predict(x.view(), &vec![t_net; xs.len()])?;
        check_finite(&out)?;
        Ok(unstack(out))
    }

    /// (raw output, J_netᵀ m) with J_net = ∂(raw output)/∂x, per the Jacobian mode.
    pub fn raw_vjp(&self, xs: &[Img], t_net: f64, ms: &[Img]) -> Result<(Vec<Img>, Vec<Img>)> {
        match self.jacobian {
            JacobianMode::Exact => {
                let x = stack(xs)?;
                let m = stack(ms)?;
                self.nfe.vjps.fetch_add(xs.len(), Ordering::Relaxed);
                let (out, g) = self
                    .denoiser
                    .vjp(x.view(), &vec![t_net; xs.len()], m.view())?;
                check_finite(&out)?;
                check_finite(&g)?;
                Ok((unstack(out), unstack(g)))
            }
            JacobianMode::Identity => {
                let out = self.raw(xs, t_net)?;
                let zeros = xs.iter().map(|x| Img::zeros(x.raw_dim())).collect();
                Ok((out, zeros))
            }
            JacobianMode::FiniteDifference => {
                let out = self.raw(xs, t_net)?;
                let g = self.fd_jt(xs, t_net, ms)?;
                Ok((out, g))
            }
        }
    }

    /// J_netᵀ m alone, for samplers that already hold the forward output at the same (x, t) — m usually
    /// depends on it. Costs one VJP (`exact`), two forwards (`finite-difference`) or nothing (`identity`),
    /// so a finite-difference step is 3 forwards in all.
    pub fn raw_jt(&self, xs: &[Img], t_net: f64, ms: &[Img]) -> Result<Vec<Img>> {
        match self.jacobian {
            JacobianMode::Exact => Ok(self.raw_vjp(xs, t_net, ms)?.1),
            JacobianMode::Identity => Ok(xs.iter().map(|x| Img::zeros(x.raw_dim())).collect()),
            JacobianMode::FiniteDifference => self.fd_jt(xs, t_net, ms),
        }
    }

    /// Central difference (f(x + h m) − f(x − h m)) / 2h, both probes in one batched call.
    fn fd_jt(&self, xs: &[Img], t_net: f64, ms: &[Img]) -> Result<Vec<Img>> {
        let hs: Vec<f64> = xs
            .iter()
            .zip(ms)
            .map(|(x, m)| {
                let mr = rms(m);
                if mr > 0.0 {
                    self.fd_eps * (1.0 + rms(x)) / mr
                } else {
                    0.0
                }
            })
            .collect();
        let mut probes: Vec<Img> = xs
            .iter()
            .zip(ms)
            .zip(&hs)
            .map(|((x, m), &h)| x + &(m * h))
            .collect();
        probes.extend(xs.iter().zip(ms).zip(&hs).map(|((x, m), &h)| x - &(m * h)));
        let f = self.raw(&probes, t_net)?;
        let n = xs.len();
        Ok((0..n)
            .map(|i| {
                if hs[i] > 0.0 {
                    (&f[i] - &f[n + i]) / (2.0 * hs[i])
                } else {
                    Img::zeros(ms[i].raw_dim())
                }
            })
            .collect())
    }

    /// J_εᵀ m alone (see [`raw_jt`](Self::raw_jt)), for a diffusion model of any parameterization.
    pub fn eps_jt(
        &self,
        xs: &[Img],
        t_net: f64,
        mu: f64,
        sigma: f64,
        ms: &[Img],
    ) -> Result<Vec<Img>> {
        let g = self.raw_jt(xs, t_net, ms)?;
        match self.param {
            Parameterization::Eps => Ok(g),
            // ε = (x − μ x̂₀)/σ ⇒ J_εᵀ m = (m − μ J_x0ᵀ m)/σ.
            Parameterization::X0 => Ok(ms
                .iter()
                .zip(g)
                .map(|(m, g)| (m - &(g * mu)) / sigma)
                .collect()),
            Parameterization::Velocity => Err(Error::Unsupported(
                "velocity model used as a diffusion model".into(),
            )),
        }
    }

    /// J_vᵀ m alone (see [`raw_jt`](Self::raw_jt)), for a flow model of any parameterization.
    pub fn velocity_jt(&self, xs: &[Img], t: f64, ms: &[Img]) -> Result<Vec<Img>> {
        let g = self.raw_jt(xs, self.time.flow(t), ms)?;
        match self.param {
            Parameterization::Velocity => Ok(g),
            // v = (x̂₁ − x)/(1 − t) ⇒ J_vᵀ m = (J_x1ᵀ m − m)/(1 − t).
            Parameterization::X0 => {
                Ok(ms.iter().zip(g).map(|(m, g)| (g - m) / (1.0 - t)).collect())
            }
            Parameterization::Eps => {
                Err(Error::Unsupported("eps model used as a flow model".into()))
            }
        }
    }

    // ---- diffusion: ε and J_εᵀ m, whatever the parameterization ----

    /// ε̂(x, t) at noise level (μ, σ) with network time `t_net`.
    pub fn eps(&self, xs: &[Img], t_net: f64, mu: f64, sigma: f64) -> Result<Vec<Img>> {
        let out = self.raw(xs, t_net)?;
        Ok(match self.param {
            Parameterization::Eps => out,
            Parameterization::X0 => xs
                .iter()
                .zip(out)
                .map(|(x, x0)| (x - &(x0 * mu)) / sigma)
                .collect(),
            Parameterization::Velocity => {
                return Err(Error::Unsupported(
                    "velocity model used as a diffusion model".into(),
                ))
            }
        })
    }

    /// (ε̂, J_εᵀ m) where J_ε = ∂ε̂/∂x (per the Jacobian mode; zero in `identity` mode).
    pub fn eps_vjp(
        &self,
        xs: &[Img],
        t_net: f64,
        mu: f64,
        sigma: f64,
        ms: &[Img],
    ) -> Result<(Vec<Img>, Vec<Img>)> {
        match self.param {
            Parameterization::Eps => self.raw_vjp(xs, t_net, ms),
            Parameterization::X0 => {
                // ε = (x − μ x̂₀)/σ  ⇒  J_εᵀ m = (m − μ J_x0ᵀ m)/σ; identity mode drops only J_x0.
                let (x0, g) = self.raw_vjp(xs, t_net, ms)?;
                let eps = xs
                    .iter()
                    .zip(&x0)
                    .map(|(x, x0)| (x - &(x0 * mu)) / sigma)
                    .collect();
                let ge = ms
                    .iter()
                    .zip(g)
                    .map(|(m, g)| (m - &(g * mu)) / sigma)
                    .collect();
                Ok((eps, ge))
            }
            Parameterization::Velocity => Err(Error::Unsupported(
                "velocity model used as a diffusion model".into(),
            )),
        }
    }

    // ---- flows: v and J_vᵀ m ----

    /// v̂(x, t) for flow time t (network time from the card's time input).
    pub fn velocity(&self, xs: &[Img], t: f64) -> Result<Vec<Img>> {
        let out = self.raw(xs, self.time.flow(t))?;
        Ok(match self.param {
            Parameterization::Velocity => out,
            Parameterization::X0 => xs
                .iter()
                .zip(out)
                .map(|(x, x1)| (x1 - x) / (1.0 - t))
                .collect(),
            Parameterization::Eps => {
                return Err(Error::Unsupported("eps model used as a flow model".into()))
            }
        })
    }

    /// (v̂, J_vᵀ m) where J_v = ∂v̂/∂x.
    pub fn velocity_vjp(&self, xs: &[Img], t: f64, ms: &[Img]) -> Result<(Vec<Img>, Vec<Img>)> {
        let (out, g) = self.raw_vjp(xs, self.time.flow(t), ms)?;
        match self.param {
            Parameterization::Velocity => Ok((out, g)),
            Parameterization::X0 => {
                // v = (x̂₁ − x)/(1 − t) ⇒ J_vᵀ m = (J_x1ᵀ m − m)/(1 − t).
                let v = xs
                    .iter()
                    .zip(out)
                    .map(|(x, x1)| (x1 - x) / (1.0 - t))
                    .collect();
                let gv = ms.iter().zip(g).map(|(m, g)| (g - m) / (1.0 - t)).collect();
                Ok((v, gv))
            }
            Parameterization::Eps => {
                Err(Error::Unsupported("eps model used as a flow model".into()))
            }
        }
    }

    /// Forward evaluations so far (including finite-difference ones).
    pub fn forwards(&self) -> usize {
        self.nfe.forwards.load(Ordering::Relaxed)
    }
    /// VJP evaluations so far.
    pub fn vjps(&self) -> usize {
        self.nfe.vjps.load(Ordering::Relaxed)
    }
}

/// Root mean square of an image.
pub fn rms(x: &Img) -> f64 {
    (x.iter().map(|v| v * v).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Stack same-shape images into a batch [B, C, H, W].
pub fn stack(xs: &[Img]) -> Result<Array4<f64>> {
    let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
    ndarray::stack(Axis(0), &views).map_err(|e| Error::Shape(format!("cannot batch images: {e}")))
}

/// Split a batch into images.
pub fn unstack(x: Array4<f64>) -> Vec<Img> {
    x.outer_iter().map(|v| v.to_owned()).collect()
}

fn check_finite(x: &Array4<f64>) -> Result<()> {
    if x.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(Error::Numerical("the network returned NaN or Inf".into()))
    }
}

pub mod card;

/// Which engine runs ONNX graphs (spec `runtime.engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// ONNX Runtime when its library is found, else the embedded tract engine.
    #[default]
    Auto,
    OnnxRuntime,
    Tract,
}

/// ONNX Runtime execution providers (spec `runtime.providers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    TensorRt,
    Cuda,
    Cpu,
}

/// How to run a model (spec `runtime`).
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeOptions {
    pub engine: EngineChoice,
    /// Providers in priority order.
    pub providers: Vec<Provider>,
    /// Intra-op threads; 0 = all cores.
    pub threads: usize,
    /// Largest batch (tiles) per network call.
    pub batch_size: usize,
    /// TensorRT engine cache directory.
    pub trt_cache: Option<std::path::PathBuf>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            engine: EngineChoice::Auto,
            providers: vec![Provider::TensorRt, Provider::Cuda, Provider::Cpu],
            threads: 0,
            batch_size: 16,
            trt_cache: None,
        }
    }
}

/// A model directory loaded and ready to run.
pub struct LoadedModel {
    pub dir: std::path::PathBuf,
    pub card: card::ModelCard,
    pub denoiser: Box<dyn Denoiser>,
}

/// Load a model directory (card + graphs) with the engine `opts` asks for.
pub fn load(dir: &std::path::Path, opts: &RuntimeOptions) -> Result<LoadedModel> {
    let _ = opts;
    let card = card::ModelCard::load(dir)?;
    Err(Error::Unsupported(format!(
        "no ONNX engine is built in yet (model {})",
        card.name
    )))
}
