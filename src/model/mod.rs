//! Networks: the [`Denoiser`] trait every backend implements, the sampler-facing [`Network`] adapter
//! (parameterization, time input, Jacobian mode, NFE accounting), and the analytic denoisers used as test
//! oracles and in benchmarks.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use ndarray::{Array4, ArrayView4, Axis};

use crate::error::{Error, Result};
use crate::schedules::TimeInput;
use crate::tensor::Img;

pub mod analytic;
pub mod tiled;
pub mod timed;

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

impl JacobianMode {
    pub const ALL: [JacobianMode; 3] = [
        JacobianMode::Exact,
        JacobianMode::FiniteDifference,
        JacobianMode::Identity,
    ];

    /// The spec name (`exact`, `finite-difference`, `identity`).
    pub fn as_str(&self) -> &'static str {
        match self {
            JacobianMode::Exact => "exact",
            JacobianMode::FiniteDifference => "finite-difference",
            JacobianMode::Identity => "identity",
        }
    }
}

crate::names::spec_names!(JacobianMode, "jacobian");

/// A network (or an analytic stand-in) evaluated on batches. Inputs and outputs are f64 at this boundary;
/// ONNX backends run in f32 internally.
pub trait Denoiser: Send + Sync {
    /// Human-readable engine/provider description for logs and the manifest (e.g. `tract`, `onnxruntime/cpu`).
    fn engine(&self) -> String;
    /// out = f(x, t) for a batch x [B, C, H, W] and network time inputs t [B].
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>>;
    /// `out = f(x, t)` for a caller that will ask for the VJP at exactly this (x, t) next: a denoiser
    /// with split VJP graphs runs its forward-with-residuals graph and keeps the residuals, so that the
    /// following [`vjp`](Self::vjp) runs only the backward graph. Same result as
    /// [`predict`](Self::predict), which is what it defaults to. Wrappers forward it to their inner
    /// denoiser.
    fn predict_for_vjp(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        self.predict(x, t)
    }
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
    /// Set by the first exact VJP: from then on forwards go through [`Denoiser::predict_for_vjp`], since
    /// a sampler that takes VJPs takes them at the x of its forwards (C-ΠGDM's cotangent needs this step's
    /// ε first). A sampler that never asks for a VJP (DDIM, DDRM) keeps running the plain forward graph.
    vjp_asked: AtomicBool,
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
            vjp_asked: AtomicBool::new(false),
        }
    }

    /// Said by a sampler that takes a VJP at the x of each of its forwards (C-ΠGDM, ΠGDM, DPS and their
    /// flow forms) before its first step: forwards keep their residuals from the first one on, instead
    /// of from the second step (the first VJP would otherwise run the forward again).
    pub fn expect_vjps(&self) {
        self.vjp_asked.store(true, Ordering::Relaxed);
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
        let t = vec![t_net; xs.len()];
        let out = if self.jacobian == JacobianMode::Exact && self.vjp_asked.load(Ordering::Relaxed)
        {
            self.denoiser.predict_for_vjp(x.view(), &t)?
        } else {
            self.denoiser.predict(x.view(), &t)?
        };
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
                self.vjp_asked.store(true, Ordering::Relaxed);
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

pub mod builtin;
pub mod card;
#[cfg(feature = "onnxruntime")]
pub mod onnxruntime;
#[cfg(feature = "tract")]
pub mod tract;

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
    /// Whether the providers were asked for (spec `runtime.providers`): then one that fails to register
    /// is a warning; the default list tries its GPU providers silently.
    pub providers_given: bool,
    /// Intra-op threads; 0 = all cores.
    pub threads: usize,
    /// Largest batch (tiles) per network call.
    pub batch_size: usize,
    /// TensorRT engine cache directory.
    pub trt_cache: Option<std::path::PathBuf>,
    /// Bytes of split-VJP residuals kept (`runtime.residual_memory`); `None`: the engine's default
    /// ([`ResidualCache::host_budget`] on the host, [`ResidualCache::DEFAULT_BUDGET`] on a GPU).
    pub residual_budget: Option<usize>,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            engine: EngineChoice::Auto,
            providers: vec![Provider::TensorRt, Provider::Cuda, Provider::Cpu],
            providers_given: false,
            threads: 0,
            batch_size: 16,
            trt_cache: None,
            residual_budget: None,
        }
    }
}

/// A model directory loaded and ready to run.
pub struct LoadedModel {
    pub dir: std::path::PathBuf,
    pub card: card::ModelCard,
    pub denoiser: Box<dyn Denoiser>,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("dir", &self.dir)
            .field("card", &self.card)
            .field("engine", &self.denoiser.engine())
            .finish()
    }
}

/// Load a model directory (card + graphs) with the engine `opts` asks for.
///
/// `engine: auto` takes ONNX Runtime when its library is found (`ORT_DYLIB_PATH`, an importable
/// `onnxruntime` Python package, system paths) and the embedded tract engine otherwise. Errors name the
/// directory or file and the problem; a graph whose inputs/outputs contradict the card is an error here.
pub fn load(dir: &std::path::Path, opts: &RuntimeOptions) -> Result<LoadedModel> {
    if opts.batch_size == 0 {
        return Err(Error::invalid("runtime.batch_size", 0, ">= 1"));
    }
    if !dir.is_dir() {
        return Err(Error::Model {
            path: dir.to_path_buf(),
            message: "not a directory (expected a model directory holding model.yaml)".into(),
        });
    }
    let card = card::ModelCard::load(dir)?;
    let denoiser: Box<dyn Denoiser> = match opts.engine {
        EngineChoice::Tract => load_tract(dir, &card, opts)?,
        EngineChoice::OnnxRuntime => load_ort(dir, &card, opts)?,
        EngineChoice::Auto => match ort_available() {
            Ok(()) => load_ort(dir, &card, opts)?,
            Err(why) => {
                tracing::info!(
                    "onnx runtime not available ({why}); using the embedded tract engine. {}",
                    ORT_HINT
                );
                load_tract(dir, &card, opts)?
            }
        },
    };
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        card,
        denoiser,
    })
}

/// How to get the faster ONNX Runtime engine, said when `engine: auto` falls back to tract.
pub const ORT_HINT: &str =
    "For the faster ONNX Runtime engine, `pip install onnxruntime==1.31.1` (found \
     automatically) or set ORT_DYLIB_PATH to a libonnxruntime shared library";

/// Whether the ONNX Runtime library can be found and loaded (`Err` says why not).
pub fn ort_available() -> std::result::Result<(), String> {
    #[cfg(feature = "onnxruntime")]
    {
        onnxruntime::runtime().map(|_| ())
    }
    #[cfg(not(feature = "onnxruntime"))]
    {
        Err("conjure was built without the onnxruntime feature".into())
    }
}

#[cfg(feature = "onnxruntime")]
fn load_ort(
    dir: &std::path::Path,
    card: &card::ModelCard,
    opts: &RuntimeOptions,
) -> Result<Box<dyn Denoiser>> {
    Ok(Box::new(onnxruntime::OrtDenoiser::load(dir, card, opts)?))
}

#[cfg(not(feature = "onnxruntime"))]
fn load_ort(
    dir: &std::path::Path,
    _: &card::ModelCard,
    _: &RuntimeOptions,
) -> Result<Box<dyn Denoiser>> {
    Err(Error::Model {
        path: dir.to_path_buf(),
        message: "engine onnxruntime asked for, but conjure was built without it".into(),
    })
}

#[cfg(feature = "tract")]
fn load_tract(
    dir: &std::path::Path,
    card: &card::ModelCard,
    opts: &RuntimeOptions,
) -> Result<Box<dyn Denoiser>> {
    Ok(Box::new(tract::TractDenoiser::load(dir, card, opts)?))
}

#[cfg(not(feature = "tract"))]
fn load_tract(
    dir: &std::path::Path,
    _: &card::ModelCard,
    _: &RuntimeOptions,
) -> Result<Box<dyn Denoiser>> {
    Err(Error::Model {
        path: dir.to_path_buf(),
        message: "engine tract asked for, but conjure was built without it".into(),
    })
}

/// One f32 chunk of a batch, as ONNX backends feed it: x [n, C, H, W], t [n] and, for VJP graphs, the
/// cotangent.
#[cfg_attr(not(any(feature = "tract", feature = "onnxruntime")), allow(dead_code))]
pub(crate) struct F32Chunk {
    pub x: ndarray::Array4<f32>,
    pub t: ndarray::Array1<f32>,
    pub cot: Option<ndarray::Array4<f32>>,
}

/// Check a batch against the card's image `[C, H, W]`: x [B, C, H, W], t [B], cotangent like x.
#[cfg_attr(not(any(feature = "tract", feature = "onnxruntime")), allow(dead_code))]
pub(crate) fn check_batch(
    image: [usize; 3],
    x: ArrayView4<f64>,
    t: &[f64],
    cot: Option<ArrayView4<f64>>,
) -> Result<()> {
    let (b, c, h, w) = x.dim();
    if [c, h, w] != image {
        return Err(Error::Shape(format!(
            "input batch of images {c}x{h}x{w} (C x H x W) for a model of {}x{}x{}",
            image[0], image[1], image[2]
        )));
    }
    if t.len() != b {
        return Err(Error::Shape(format!(
            "{} time values for a batch of {b} images",
            t.len()
        )));
    }
    if let Some(cot) = &cot {
        if cot.dim() != x.dim() {
            return Err(Error::Shape(format!(
                "cotangent of shape {:?} for inputs of shape {:?}",
                cot.shape(),
                x.shape()
            )));
        }
    }
    Ok(())
}

/// Shared batching for the ONNX backends: check shapes against the card's image `[C, H, W]`, convert the
/// f64 batch to f32, split it into network calls of at most `max_batch` samples (exactly `fixed_batch`
/// when the graph has a fixed batch dimension; the last call is then padded by repeating its last sample
/// and the padding's outputs are dropped), run `call` on each chunk and reassemble its `n_out` outputs
/// ([n, C, H, W] each) as f64. Each sample's result is computed from that sample alone.
#[cfg_attr(not(any(feature = "tract", feature = "onnxruntime")), allow(dead_code))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_batched(
    image: [usize; 3],
    x: ArrayView4<f64>,
    t: &[f64],
    cot: Option<ArrayView4<f64>>,
    max_batch: usize,
    fixed_batch: Option<usize>,
    n_out: usize,
    mut call: impl FnMut(F32Chunk) -> Result<Vec<ndarray::Array4<f32>>>,
) -> Result<Vec<Array4<f64>>> {
    check_batch(image, x, t, cot)?;
    let (b, c, h, w) = x.dim();
    let mut outs: Vec<Array4<f64>> = (0..n_out).map(|_| Array4::zeros((b, c, h, w))).collect();
    let step = fixed_batch.unwrap_or(max_batch.max(1));
    let mut start = 0;
    while start < b {
        let len = step.min(b - start);
        let n = fixed_batch.unwrap_or(len);
        let src = |i: usize| start + i.min(len - 1);
        let to_f32 = |a: &ArrayView4<f64>| {
            Array4::from_shape_fn((n, c, h, w), |(i, k, y, z)| a[[src(i), k, y, z]] as f32)
        };
        let chunk = F32Chunk {
            x: to_f32(&x),
            t: ndarray::Array1::from_shape_fn(n, |i| t[src(i)] as f32),
            cot: cot.as_ref().map(to_f32),
        };
        let res = call(chunk)?;
        if res.len() != n_out {
            return Err(Error::Shape(format!(
                "the graph returned {} outputs (expected {n_out})",
                res.len()
            )));
        }
        for (o, r) in outs.iter_mut().zip(res) {
            if r.dim() != (n, c, h, w) {
                return Err(Error::Shape(format!(
                    "the graph returned an output of shape {:?} (expected {:?})",
                    r.shape(),
                    [n, c, h, w]
                )));
            }
            o.slice_mut(ndarray::s![start..start + len, .., .., ..])
                .zip_mut_with(&r.slice(ndarray::s![..len, .., .., ..]), |d, s| {
                    *d = *s as f64
                });
        }
        start += len;
    }
    Ok(outs)
}

/// Split-VJP chunks of this process whose VJP found its residuals kept (`.0`) or had to run
/// forward-with-residuals again (`.1`), over every model (for `conjure bench`: a step whose VJP misses
/// costs a forward more).
pub fn residual_reuse() -> (usize, usize) {
    use std::sync::atomic::Ordering::Relaxed;
    (RESIDUAL_HITS.load(Relaxed), RESIDUAL_MISSES.load(Relaxed))
}

static RESIDUAL_HITS: AtomicUsize = AtomicUsize::new(0);
static RESIDUAL_MISSES: AtomicUsize = AtomicUsize::new(0);

/// Residuals of the split VJP kept between [`Denoiser::predict_for_vjp`] and [`Denoiser::vjp`], in the
/// engine's own values (`R`: ONNX Runtime values, tract tensors), keyed by the exact f32 chunk (x, t) the
/// backend ran; a VJP chunk that finds its entry runs only the backward graph and takes the entry out.
/// At most `budget` bytes of residuals are kept: the oldest entries go first (a VJP that then misses runs
/// forward-with-residuals again, so results never depend on the budget). The newest entry is kept
/// whatever its size: its backward needs those residuals anyway, so holding them until then adds nothing
/// to the peak memory, and a chunk of a production-size network (an ADM-256 keeps gigabytes per image)
/// would otherwise never be kept and every VJP would run the forward again.
#[cfg_attr(not(any(feature = "tract", feature = "onnxruntime")), allow(dead_code))]
pub(crate) struct ResidualCache<R> {
    entries: std::sync::Mutex<std::collections::VecDeque<Kept<R>>>,
    budget: usize,
}

#[cfg_attr(not(any(feature = "tract", feature = "onnxruntime")), allow(dead_code))]
struct Kept<R> {
    x: Array4<f32>,
    t: ndarray::Array1<f32>,
    out: Array4<f32>,
    residuals: R,
    bytes: usize,
}

#[cfg_attr(not(any(feature = "tract", feature = "onnxruntime")), allow(dead_code))]
impl<R> ResidualCache<R> {
    /// Residuals kept in a device's memory (a GPU's, whose free memory is not known here): 1 GiB; also
    /// the least kept in host memory.
    pub const DEFAULT_BUDGET: usize = 1 << 30;

    /// Residuals kept in host memory: a quarter of the memory free when the model loads — the machine's
    /// available memory, or its cgroup's (a container's or a Slurm job's limit) when that is less — and
    /// at least [`Self::DEFAULT_BUDGET`]. A C-ΠGDM step over a tiled photo keeps the residuals of every
    /// tile batch until the cotangent (which needs the whole image's ε̂) is known: a 768×768 photo through
    /// the photo prior's 64×64 tiles needs about 5 GiB, and with 1 GiB 65 of its 80 VJP calls ran the
    /// forward again. A quarter leaves the rest to the backward's own memory and to other processes.
    pub fn host_budget() -> usize {
        use sysinfo::{MemoryRefreshKind, RefreshKind, System};
        let sys = System::new_with_specifics(
            RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        let mut free = sys.available_memory();
        if let Some(cg) = sys.cgroup_limits() {
            free = free.min(cg.free_memory);
        }
        let quarter = usize::try_from(free / 4).unwrap_or(usize::MAX);
        quarter.max(Self::DEFAULT_BUDGET)
    }

    pub fn new(budget: usize) -> Self {
        ResidualCache {
            entries: std::sync::Mutex::new(std::collections::VecDeque::new()),
            budget,
        }
    }

    /// Keep the residuals (`bytes` large) and forward output of the chunk (x, t).
    pub fn put(
        &self,
        x: Array4<f32>,
        t: ndarray::Array1<f32>,
        out: Array4<f32>,
        residuals: R,
        bytes: usize,
    ) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut total: usize = e.iter().map(|k| k.bytes).sum::<usize>() + bytes;
        while total > self.budget {
            match e.pop_front() {
                Some(k) => total -= k.bytes,
                None => break,
            }
        }
        e.push_back(Kept {
            x,
            t,
            out,
            residuals,
            bytes,
        });
    }

    /// Take out the forward output and residuals kept for exactly this chunk (x, t), if any.
    pub fn take(&self, x: &Array4<f32>, t: &ndarray::Array1<f32>) -> Option<(Array4<f32>, R)> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let Some(i) = e.iter().position(|k| k.t == *t && k.x == *x) else {
            RESIDUAL_MISSES.fetch_add(1, Relaxed);
            return None;
        };
        RESIDUAL_HITS.fetch_add(1, Relaxed);
        let k = e.remove(i)?;
        Some((k.out, k.residuals))
    }

    /// Number of chunks kept.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// A test network that records which [`Denoiser`] entry point each call used (out = x, vjp = cotangent),
/// for the tests of everything that wraps or drives a network.
#[cfg(test)]
#[derive(Default)]
pub(crate) struct CallLog(std::sync::Mutex<Vec<&'static str>>);

#[cfg(test)]
impl CallLog {
    /// The entry points called so far, in order.
    pub(crate) fn calls(&self) -> Vec<&'static str> {
        self.0.lock().unwrap().clone()
    }
    /// How many calls went to `entry`.
    pub(crate) fn count(&self, entry: &str) -> usize {
        self.calls().iter().filter(|c| **c == entry).count()
    }
    fn log(&self, entry: &'static str) {
        self.0.lock().unwrap().push(entry);
    }
}

#[cfg(test)]
impl Denoiser for CallLog {
    fn engine(&self) -> String {
        "call-log".into()
    }
    fn predict(&self, x: ArrayView4<f64>, _: &[f64]) -> Result<Array4<f64>> {
        self.log("predict");
        Ok(x.to_owned())
    }
    fn predict_for_vjp(&self, x: ArrayView4<f64>, _: &[f64]) -> Result<Array4<f64>> {
        self.log("predict_for_vjp");
        Ok(x.to_owned())
    }
    fn has_vjp(&self) -> bool {
        true
    }
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        _: &[f64],
        cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        self.log("vjp");
        Ok((x.to_owned(), cot.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards_keep_residuals_once_the_sampler_asks_for_vjps_or_says_it_will() {
        let xs = vec![Img::zeros((1, 2, 2)); 2];
        for mode in [
            JacobianMode::Exact,
            JacobianMode::FiniteDifference,
            JacobianMode::Identity,
        ] {
            let d = CallLog::default();
            let net = Network::new(
                &d,
                ModelKind::Diffusion,
                Parameterization::Eps,
                TimeInput::Unit,
                mode,
            );
            // A forward-only sampler: plain forwards only.
            net.raw(&xs, 0.5).unwrap();
            net.raw(&xs, 0.5).unwrap();
            assert_eq!(d.count("predict"), 2);
            // A sampler that takes VJPs at its forwards' x: from then on forwards keep residuals.
            let plain_before = d.count("predict");
            net.raw_jt(&xs, 0.5, &xs).unwrap();
            let plain_jt = d.count("predict") - plain_before;
            net.raw(&xs, 0.5).unwrap();
            let kept = d.count("predict_for_vjp");
            match mode {
                JacobianMode::Exact => assert_eq!((plain_jt, kept), (0, 1)),
                // Finite differences probe with plain forwards; identity runs none.
                JacobianMode::FiniteDifference => assert_eq!((plain_jt, kept), (1, 0)),
                JacobianMode::Identity => assert_eq!((plain_jt, kept), (0, 0)),
            }
            // A sampler that says so before its first step keeps residuals from its first forward.
            let d = CallLog::default();
            let net = Network::new(
                &d,
                ModelKind::Diffusion,
                Parameterization::Eps,
                TimeInput::Unit,
                mode,
            );
            net.expect_vjps();
            net.raw(&xs, 0.5).unwrap();
            let first = if mode == JacobianMode::Exact {
                "predict_for_vjp"
            } else {
                "predict"
            };
            assert_eq!(d.calls(), [first], "{mode:?}");
        }
    }

    #[test]
    fn residual_cache_matches_exact_inputs_within_its_budget() {
        let x = |v: f32| Array4::from_elem((1, 1, 2, 2), v);
        let t = |v: f32| ndarray::Array1::from_elem(1, v);
        let cache = ResidualCache::new(100);
        cache.put(x(1.0), t(0.5), x(10.0), "a", 40);
        cache.put(x(2.0), t(0.5), x(20.0), "b", 40);
        // Another t, another x: no match.
        assert!(cache.take(&x(1.0), &t(0.6)).is_none());
        assert!(cache.take(&x(3.0), &t(0.5)).is_none());
        assert_eq!(cache.take(&x(1.0), &t(0.5)), Some((x(10.0), "a")));
        // Taken out: a second take misses.
        assert!(cache.take(&x(1.0), &t(0.5)).is_none());
        // Over budget: the oldest entries go first.
        cache.put(x(3.0), t(0.5), x(30.0), "c", 40);
        cache.put(x(4.0), t(0.5), x(40.0), "d", 40);
        assert_eq!(cache.len(), 2);
        assert!(cache.take(&x(2.0), &t(0.5)).is_none());
        // An entry larger than the budget is kept, alone: everything older goes.
        cache.put(x(5.0), t(0.5), x(50.0), "e", 101);
        assert_eq!(cache.len(), 1);
        assert!(cache.take(&x(4.0), &t(0.5)).is_none());
        assert_eq!(cache.take(&x(5.0), &t(0.5)), Some((x(50.0), "e")));
        // ...until the next one.
        cache.put(x(6.0), t(0.5), x(60.0), "f", 101);
        cache.put(x(7.0), t(0.5), x(70.0), "g", 10);
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.take(&x(7.0), &t(0.5)), Some((x(70.0), "g")));
    }

    /// The host budget is a quarter of the free memory (at least 1 GiB), and never more than there is.
    #[test]
    fn host_budget_is_a_quarter_of_the_free_memory() {
        use sysinfo::{MemoryRefreshKind, RefreshKind, System};
        let sys = System::new_with_specifics(
            RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        let b = ResidualCache::<()>::host_budget() as u64;
        let total = sys.total_memory();
        assert!(b >= 1 << 30, "{b}");
        if total > 8 << 30 {
            // Memory comes and goes while the tests run beside this one: bounds, not equality.
            assert!(b <= total / 4 + (1 << 30), "budget {b} of {total}");
            assert!(b >= sys.available_memory() / 16, "budget {b}");
        }
    }
}
