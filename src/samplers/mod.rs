//! Samplers for linear inverse problems, one file each, each reading like its equations
//! (docs/samplers.md §4–§10). All run a batch of problems in lock-step (one network call per step for the
//! whole batch) while every per-sample quantity stays per sample.
//!
//! | name | file | paper |
//! |---|---|---|
//! | `c-pigdm` | [`c_pigdm`] | Pandey, Yang & Mandt 2024 (noiseless and noisy variants) |
//! | `pigdm` | [`pigdm`] | Song et al. 2023, ΠGDM (continuous λ-DDIM form and discrete form) |
//! | `ddrm` | [`ddrm`] | Kawar et al. 2022 |
//! | `dps` | [`dps`] | Chung et al. 2023 |
//! | `ddnm` | [`ddnm`] | Wang et al. 2023 |
//! | `ddim` | [`ddim`] | Song et al. 2021 (unconditional) |
//! | `c-pigfm` | [`c_pigfm`] | Pandey, Yang & Mandt 2024 |
//! | `pigfm` | [`pigfm`] | Pokle et al. 2024 style ΠGDM for flows |
//! | `pinv` | [`pinv`] | H† y |
//! | `bicubic` | [`bicubic`] | bicubic interpolation of y (super-resolution baseline) |

use ndarray::Array3;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::model::{JacobianMode, Network};
use crate::operators::OperatorRef;
use crate::tensor::Img;
// The model schedule lives in `schedules` (the model card builds it); re-exported here, where samplers take it.
pub use crate::schedules::ModelSchedule;

pub mod bicubic;
pub mod c_pigdm;
pub mod c_pigdm_noisy;
pub mod c_pigfm;
pub mod c_pigfm_noisy;
pub mod common;
pub mod ddim;
pub mod ddnm;
pub mod ddrm;
pub mod dps;
pub mod pigdm;
pub mod pigfm;
pub mod pinv;
pub mod quad;
pub mod spectral;

/// A restoration sampler.
pub trait Sampler: Send + Sync {
    /// Spec name (`c-pigdm`, …).
    fn name(&self) -> &'static str;
    /// Network evaluations per image the paper would count (forwards; a VJP step counts once).
    fn nfe(&self) -> usize;
    /// Restore every problem of the batch. All problems must share one x shape.
    fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>>;
}

/// `y` has the shape the operator measures (an error naming both shapes otherwise).
pub fn check_measurement(op: &OperatorRef, y: &Img) -> Result<()> {
    if y.shape() != &op.y_shape()[..] {
        return Err(Error::Shape(format!(
            "measurement {:?}, operator {} expects {:?}",
            y.shape(),
            op.name(),
            op.y_shape()
        )));
    }
    Ok(())
}

/// One image's inverse problem: y = H x + σ_y n, plus its own random stream.
pub struct Problem {
    pub op: OperatorRef,
    pub y: Img,
    /// Std of the measurement noise on the model's value scale (no doubling; cf. docs/operators.md §2.9).
    pub sigma_y: f64,
    rng: ChaCha20Rng,
    init_noise: Option<Img>,
}

impl Problem {
    /// A problem whose random draws come from `seed`.
    pub fn new(op: OperatorRef, y: Img, sigma_y: f64, seed: u64) -> Result<Self> {
        check_measurement(&op, &y)?;
        if !(sigma_y >= 0.0 && sigma_y.is_finite()) {
            return Err(Error::invalid(
                "noise_sigma",
                sigma_y,
                "a finite value >= 0",
            ));
        }
        Ok(Problem {
            op,
            y,
            sigma_y,
            rng: ChaCha20Rng::seed_from_u64(seed),
            init_noise: None,
        })
    }

    /// Use `z` as the initial noise instead of a draw (cross-implementation checks).
    pub fn with_init_noise(mut self, z: Img) -> Result<Self> {
        if z.shape() != &self.op.x_shape()[..] {
            return Err(Error::Shape(format!(
                "init_noise {:?}, image {:?}",
                z.shape(),
                self.op.x_shape()
            )));
        }
        self.init_noise = Some(z);
        Ok(self)
    }

    /// The x shape.
    pub fn x_shape(&self) -> [usize; 3] {
        self.op.x_shape()
    }

    /// The initial noise z: the given `init_noise` once, else a fresh N(0, I) draw.
    pub fn init_noise(&mut self) -> Img {
        self.init_noise.take().unwrap_or_else(|| self.normal())
    }

    /// A fresh N(0, I) draw of the x shape.
    pub fn normal(&mut self) -> Img {
        let [c, h, w] = self.x_shape();
        Array3::from_shape_simple_fn((c, h, w), || StandardNormal.sample(&mut self.rng))
    }

    /// A fresh N(0, I) draw of the y shape.
    pub fn normal_y(&mut self) -> Img {
        let [c, h, w] = self.op.y_shape();
        Array3::from_shape_simple_fn((c, h, w), || StandardNormal.sample(&mut self.rng))
    }
}

/// Sampler names accepted in a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerName {
    CPigdm,
    Pigdm,
    Ddrm,
    Dps,
    Ddnm,
    Ddim,
    CPigfm,
    Pigfm,
    Pinv,
    Bicubic,
}

impl SamplerName {
    pub const ALL: [SamplerName; 10] = [
        SamplerName::CPigdm,
        SamplerName::Pigdm,
        SamplerName::Ddrm,
        SamplerName::Dps,
        SamplerName::Ddnm,
        SamplerName::Ddim,
        SamplerName::CPigfm,
        SamplerName::Pigfm,
        SamplerName::Pinv,
        SamplerName::Bicubic,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            SamplerName::CPigdm => "c-pigdm",
            SamplerName::Pigdm => "pigdm",
            SamplerName::Ddrm => "ddrm",
            SamplerName::Dps => "dps",
            SamplerName::Ddnm => "ddnm",
            SamplerName::Ddim => "ddim",
            SamplerName::CPigfm => "c-pigfm",
            SamplerName::Pigfm => "pigfm",
            SamplerName::Pinv => "pinv",
            SamplerName::Bicubic => "bicubic",
        }
    }

    pub fn parse(s: &str) -> Result<Self> {
        s.parse()
    }

    /// Whether the sampler needs a flow model (else a diffusion model, unless it uses no network).
    pub fn needs_flow(&self) -> bool {
        matches!(self, SamplerName::CPigfm | SamplerName::Pigfm)
    }

    /// Whether the sampler calls the network at all (`pinv` and `bicubic` do not: any model will do).
    pub fn uses_network(&self) -> bool {
        !matches!(self, SamplerName::Pinv | SamplerName::Bicubic)
    }

    /// The `sampler.variant`s this sampler accepts (none for most).
    pub fn variants(&self) -> &'static [SamplerVariant] {
        use SamplerVariant::*;
        match self {
            SamplerName::Pigdm => &[Continuous, Discrete],
            SamplerName::CPigdm => &[Auto, Noiseless, Noisy, Official],
            SamplerName::CPigfm => &[Derived, Auto, Noiseless, Official],
            _ => &[],
        }
    }
}

crate::names::spec_names!(SamplerName, "sampler");

/// `sampler.variant`: which form of a sampler runs. Each sampler accepts its own few
/// ([`SamplerName::variants`]): `pigdm` → `continuous` | `discrete`; `c-pigdm` → `auto` | `noiseless` |
/// `noisy` | `official`; `c-pigfm` → `derived` (= `auto`) | `noiseless` | `official`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SamplerVariant {
    Auto,
    Noiseless,
    Noisy,
    Official,
    Derived,
    Continuous,
    Discrete,
}

impl SamplerVariant {
    pub const ALL: [SamplerVariant; 7] = [
        SamplerVariant::Auto,
        SamplerVariant::Noiseless,
        SamplerVariant::Noisy,
        SamplerVariant::Official,
        SamplerVariant::Derived,
        SamplerVariant::Continuous,
        SamplerVariant::Discrete,
    ];

    pub fn as_str(&self) -> &'static str {
        match self {
            SamplerVariant::Auto => "auto",
            SamplerVariant::Noiseless => "noiseless",
            SamplerVariant::Noisy => "noisy",
            SamplerVariant::Official => "official",
            SamplerVariant::Derived => "derived",
            SamplerVariant::Continuous => "continuous",
            SamplerVariant::Discrete => "discrete",
        }
    }
}

crate::names::spec_names!(SamplerVariant, "variant");

/// `variant` rejected by a sampler that does not offer it.
pub(crate) fn unsupported_variant(sampler: SamplerName, v: SamplerVariant) -> Error {
    let allowed: Vec<&str> = sampler.variants().iter().map(|v| v.as_str()).collect();
    Error::invalid(
        format!("{sampler} variant"),
        v,
        if allowed.is_empty() {
            format!("unset: {sampler} has no variants")
        } else {
            format!("one of {}", allowed.join(", "))
        },
    )
}

/// Sampler settings as a spec gives them; `None` takes the sampler's default (docs/samplers.md §12).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerConfig {
    pub name: SamplerName,
    /// Network evaluations (steps).
    pub steps: Option<usize>,
    /// Guidance weight w (ζ for DPS).
    pub guidance: Option<f64>,
    /// λ of the conjugate transform.
    pub lambda: Option<f64>,
    /// τ: diffusion time where sampling starts (flows: the flow time st where sampling starts).
    pub start_time: Option<f64>,
    /// Diffusion time where continuous samplers stop (default 0.001 = 1 − t_end of the official code).
    pub end_time: Option<f64>,
    /// η of DDIM-style steps (DDRM, DDIM, DPS, discrete ΠGDM).
    pub eta: Option<f64>,
    /// η_b of DDRM.
    pub eta_b: Option<f64>,
    /// ε_n added to σ in Φ integrands (default 1e-6, as the official scripts).
    pub num_eps: Option<f64>,
    /// Sampler variant ([`SamplerVariant`]; for `c-pigfm` it picks the Jacobian term, docs/samplers.md §9.4).
    pub variant: Option<SamplerVariant>,
    pub jacobian: JacobianMode,
}

impl SamplerConfig {
    /// All defaults for `name`.
    pub fn new(name: SamplerName) -> Self {
        SamplerConfig {
            name,
            steps: None,
            guidance: None,
            lambda: None,
            start_time: None,
            end_time: None,
            eta: None,
            eta_b: None,
            num_eps: None,
            variant: None,
            jacobian: JacobianMode::Exact,
        }
    }
}

/// Build the sampler a config names.
pub fn build(cfg: &SamplerConfig, sched: &ModelSchedule) -> Result<Box<dyn Sampler>> {
    fn boxed<S: Sampler + 'static>(s: S) -> Box<dyn Sampler> {
        Box::new(s)
    }
    match cfg.name {
        SamplerName::CPigdm => c_pigdm::CPigdm::from_config(cfg, sched).map(boxed),
        SamplerName::Pigdm => pigdm::Pigdm::from_config(cfg, sched).map(boxed),
        SamplerName::Ddrm => ddrm::Ddrm::from_config(cfg, sched).map(boxed),
        SamplerName::Dps => dps::Dps::from_config(cfg, sched).map(boxed),
        SamplerName::Ddnm => ddnm::Ddnm::from_config(cfg, sched).map(boxed),
        SamplerName::Ddim => ddim::Ddim::from_config(cfg, sched).map(boxed),
        SamplerName::CPigfm => c_pigfm::CPigfm::from_config(cfg, sched).map(boxed),
        SamplerName::Pigfm => pigfm::Pigfm::from_config(cfg, sched).map(boxed),
        SamplerName::Pinv => pinv::Pinv::from_config(cfg, sched).map(boxed),
        SamplerName::Bicubic => bicubic::Bicubic::from_config(cfg, sched).map(boxed),
    }
}

/// Check a value is finite and in [lo, hi].
pub(crate) fn check_range(what: &str, v: f64, lo: f64, hi: f64) -> Result<f64> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(v)
    } else {
        Err(Error::invalid(what, v, format!("a value in [{lo}, {hi}]")))
    }
}
