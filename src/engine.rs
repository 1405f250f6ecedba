//! The assembled restorer: one place where a model folder, its checked network, the spec's sampler, the
//! operator factory and the tiling come together, and one `restore` of a batch of measurements.
//!
//! * [`ModelDir`]: the card and folder of the spec's model, and what the pipeline knows of it
//!   ([`ModelInfo`]), checked against the spec ([`check_model`], colour channels) without loading anything.
//! * [`Restorer`]: a [`ModelDir`] with its network loaded (or given: bench's timed and analytic networks,
//!   the study's shared network), wrapped in a [`TiledDenoiser`] of the spec's tile size, and the spec's
//!   sampler. [`Restorer::restore`] runs the sampler on a batch and the final data-consistency step.
//! * [`Engine`]: the borrowed view the batch pipeline runs ([`crate::pipeline::run_with`]); tests and
//!   bench assemble one from parts of their own.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use ndarray::{Array4, ArrayView4};

use crate::error::{Error, Result};
use crate::model::card::ModelCard;
use crate::model::tiled::{TileConfig, TiledDenoiser};
use crate::model::{Denoiser, JacobianMode, ModelKind, Network, Parameterization};
use crate::operators::{Degradation, Img, OperatorRef};
use crate::pipeline::consistency;
use crate::samplers::{ModelSchedule, Problem, Sampler};
use crate::schedules::TimeInput;
use crate::spec::{sample_seed, PipelineSpec, TileSize};

/// What the pipeline needs to know about a model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub kind: ModelKind,
    pub param: Parameterization,
    pub time: TimeInput,
    pub schedule: ModelSchedule,
    pub channels: usize,
    /// The network's fixed image size (height, width); `None` = any size (analytic denoisers, tiling).
    pub size: Option<(usize, usize)>,
    pub value_range: [f64; 2],
}

impl ModelInfo {
    /// From a model card in `dir`.
    pub fn from_card(card: &ModelCard, dir: &Path) -> Result<Self> {
        Ok(ModelInfo {
            kind: card.model_kind(),
            param: card.param(),
            time: card.time_input(),
            schedule: card.model_schedule(dir)?,
            channels: card.image.channels,
            size: Some((card.image.height, card.image.width)),
            value_range: card.image.value_range,
        })
    }
}

/// Check that a spec can run on a model of this kind (sampler family, Jacobian mode).
pub fn check_model(spec: &PipelineSpec, kind: ModelKind, has_vjp: bool) -> Result<()> {
    let name = spec.sampler.config.name;
    let needs_flow = name.needs_flow();
    let family = |flow: bool| if flow { "flow" } else { "diffusion" };
    if name.uses_network() && needs_flow != (kind == ModelKind::Flow) {
        return Err(Error::Config {
            message: format!(
                "sampler {} needs a {} model, but {} is a {} model",
                name.as_str(),
                family(needs_flow),
                spec.model.display(),
                family(kind == ModelKind::Flow)
            ),
        });
    }
    if name == crate::samplers::SamplerName::Bicubic && !spec.task.operator.is_sr() {
        return Err(Error::Config {
            message: format!(
                "sampler bicubic interpolates super-resolution measurements; task.operator is {}",
                spec.task.operator.as_str()
            ),
        });
    }
    if name.uses_network() && spec.sampler.config.jacobian == JacobianMode::Exact && !has_vjp {
        return Err(Error::Config {
            message: format!(
                "jacobian: exact needs a vjp graph, and {} has none; use jacobian: finite-difference or identity",
                spec.model.display()
            ),
        });
    }
    Ok(())
}

/// Builds the operator of a degradation for one image shape (normally [`Degradation::build`]).
pub type OperatorFactory = dyn Fn(&Degradation, [usize; 3]) -> Result<OperatorRef> + Sync;

/// [`Degradation::build`], the operator factory of every restorer.
pub fn build_operator(d: &Degradation, shape: [usize; 3]) -> Result<OperatorRef> {
    d.build(shape)
}

/// The tiling of the spec's network (`model` = the card's image size).
pub fn tile_config(spec: &PipelineSpec, card: &ModelCard) -> TileConfig {
    let (tile_h, tile_w) = match spec.runtime.tile_size {
        TileSize::Model => (card.image.height, card.image.width),
        TileSize::Pixels(n) => (n, n),
    };
    TileConfig {
        tile_h,
        tile_w,
        overlap: spec.runtime.tile_overlap,
        batch_size: spec.runtime.batch_size,
    }
}

/// The network as the sampler sees it: `inner` behind a [`TiledDenoiser`] with the spec's tile size
/// (`model` = the card's image size), overlap and batch size.
pub fn tiled_denoiser(
    spec: &PipelineSpec,
    card: &ModelCard,
    inner: Arc<dyn Denoiser>,
) -> Result<TiledDenoiser> {
    TiledDenoiser::new(inner, tile_config(spec, card))
}

/// The spec's model folder: card, folder and what the pipeline knows of the model; nothing loaded.
#[derive(Debug, Clone)]
pub struct ModelDir {
    pub card: ModelCard,
    pub dir: PathBuf,
    pub info: ModelInfo,
}

impl ModelDir {
    /// Open the spec's `model` folder (a clear error when it is missing or has no card).
    pub fn open(spec: &PipelineSpec) -> Result<Self> {
        spec.check_model_dir()?;
        let card = ModelCard::load(&spec.model)?;
        Self::from_card(card, &spec.model)
    }

    /// From a card read from `dir`.
    pub fn from_card(card: ModelCard, dir: &Path) -> Result<Self> {
        let info = ModelInfo::from_card(&card, dir)?;
        Ok(ModelDir {
            card,
            dir: dir.to_path_buf(),
            info,
        })
    }

    /// Refuse a spec this model cannot run (sampler family, Jacobian mode, colour channels), with the
    /// network's VJP as the card declares it.
    pub fn check(&self, spec: &PipelineSpec) -> Result<()> {
        check_model(spec, self.info.kind, self.card.graphs.has_vjp())?;
        crate::imageio::color::check_channels(spec, self.info.channels)
    }

    /// The spec's tiling of this model's network.
    pub fn tiles(&self, spec: &PipelineSpec) -> TileConfig {
        tile_config(spec, &self.card)
    }
}

/// Wraps the network inside the tiling (the run's stop-and-progress watch, bench's timer), given the
/// tiling.
pub type Around<'a> = &'a dyn Fn(Arc<dyn Denoiser>, &TileConfig) -> Arc<dyn Denoiser>;

/// A batch input of [`Engine::restore`]: the operator, the measurement, the image's seed and, when the
/// spec gives one, its initial noise.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub op: &'a OperatorRef,
    pub y: &'a Img,
    pub seed: u64,
    pub init_noise: Option<&'a Img>,
}

/// What [`Engine::restore`] returns: x̂ per image and the network evaluations per image.
#[derive(Debug, Clone)]
pub struct Restored {
    pub images: Vec<Img>,
    /// Network evaluations per image (forwards + VJPs).
    pub nfe: usize,
}

/// The model side of a run: network, sampler and how to build operators (borrowed).
pub struct Engine<'a> {
    pub model: ModelInfo,
    pub denoiser: &'a dyn Denoiser,
    pub sampler: &'a dyn Sampler,
    pub build_operator: &'a OperatorFactory,
}

impl Engine<'_> {
    /// Restore one batch under `spec`: the sampler on the network (refusing every evaluation once `stop`
    /// is set, so that a stop cuts the batch short with [`Error::Interrupted`]), then the final
    /// data-consistency step. Errors when the sampler returns NaN or Inf.
    ///
    /// With `sampler.samples` = K > 1, each image is restored K times, from the seeds
    /// [`sample_seed`]`(seed, 0..K)`, and x̂ is their mean (1/K) Σₖ x̂ₖ before the data-consistency step
    /// (which is affine, so it commutes with the mean). Each x̂ₖ is a draw of the sampler's approximate
    /// posterior p(x | y); their mean estimates the posterior mean E[x | y], the estimate of least
    /// expected squared error — lower error than one draw on average, smoother where the posterior is
    /// uncertain — with the draws' spread shrinking as 1/√K. The first draw is the `samples: 1`
    /// restoration. The K draws of [`images_per_sampler_call`] images go through the sampler together,
    /// so that no more restorations are in memory at once than `runtime.batch_size` (or K) allows.
    pub fn restore(
        &self,
        spec: &PipelineSpec,
        batch: &[Observation],
        stop: Option<&AtomicBool>,
    ) -> Result<Restored> {
        let m = &self.model;
        let stoppable = stop.map(|stop| Stoppable {
            inner: self.denoiser,
            stop,
        });
        let denoiser: &dyn Denoiser = match &stoppable {
            Some(s) => s,
            None => self.denoiser,
        };
        let net = Network::new(
            denoiser,
            m.kind,
            m.param,
            m.time,
            spec.sampler.config.jacobian,
        );
        net.validate()?;
        let k = spec.sampler.samples.max(1);
        let mut xs = Vec::with_capacity(batch.len());
        for chunk in batch.chunks(images_per_sampler_call(spec, batch.len())) {
            let mut problems = chunk
                .iter()
                .flat_map(|o| (0..k).map(move |i| (o, sample_seed(o.seed, i))))
                .map(|(o, seed)| {
                    let pr = Problem::new(o.op.clone(), o.y.clone(), spec.task.noise_sigma, seed)?;
                    match o.init_noise {
                        Some(z) => pr.with_init_noise(z.clone()),
                        None => Ok(pr),
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let draws = self.sampler.sample(&net, &mut problems)?;
            if draws.len() != problems.len() {
                return Err(Error::Shape(format!(
                    "sampler returned {} images for a batch of {}",
                    draws.len(),
                    problems.len()
                )));
            }
            let mut means = mean_of_groups(draws, k);
            let firsts: Vec<Problem> = problems.into_iter().step_by(k).collect();
            consistency::finish(spec, &firsts, &mut means);
            xs.extend(means);
        }
        if xs.iter().any(|x| x.iter().any(|v| !v.is_finite())) {
            return Err(Error::Numerical(
                "the sampler produced NaN or Inf (it diverged)".into(),
            ));
        }
        let nfe = (net.forwards() + net.vjps()) / batch.len().max(1);
        Ok(Restored { images: xs, nfe })
    }
}

/// Images whose draws go through one sampler call when [`Engine::restore`] gets a batch of `batch`
/// images: all of them for `sampler.samples` = 1; for K > 1, ⌊`runtime.batch_size` / K⌋ (at least 1), so
/// that K draws each stay within the batch size the spec gives (or K, when K exceeds it) — the memory
/// of a batch does not grow with K.
pub fn images_per_sampler_call(spec: &PipelineSpec, batch: usize) -> usize {
    match spec.sampler.samples.max(1) {
        1 => batch.max(1),
        k => (spec.runtime.batch_size.max(1) / k).max(1),
    }
}

/// The mean of each run of `k` consecutive images (`sampler.samples`); `k = 1` returns `draws` as they are.
fn mean_of_groups(draws: Vec<Img>, k: usize) -> Vec<Img> {
    if k == 1 {
        return draws;
    }
    draws
        .chunks(k)
        .map(|group| {
            let mut sum = group[0].clone();
            for x in &group[1..] {
                sum += x;
            }
            sum / k as f64
        })
        .collect()
}

/// The network refusing every evaluation once `stop` is set.
struct Stoppable<'a> {
    inner: &'a dyn Denoiser,
    stop: &'a AtomicBool,
}

impl Stoppable<'_> {
    fn check(&self) -> Result<()> {
        match self.stop.load(Ordering::SeqCst) {
            true => Err(Error::Interrupted),
            false => Ok(()),
        }
    }
}

impl Denoiser for Stoppable<'_> {
    fn engine(&self) -> String {
        self.inner.engine()
    }
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        self.check()?;
        self.inner.predict(x, t)
    }
    fn predict_for_vjp(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        self.check()?;
        self.inner.predict_for_vjp(x, t)
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
        self.check()?;
        self.inner.vjp(x, t, cot)
    }
}

/// A model folder with its network, tiling and the spec's sampler (see the module docs).
pub struct Restorer {
    spec: PipelineSpec,
    model: ModelDir,
    /// The checked network, untiled.
    network: Arc<dyn Denoiser>,
    /// What the sampler sees: the network (behind any [`Around`] wrapper) cut into tiles.
    tiled: TiledDenoiser,
    sampler: Box<dyn Sampler>,
}

impl std::fmt::Debug for Restorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restorer")
            .field("model", &self.model.dir)
            .field("engine", &self.network.engine())
            .field("sampler", &self.sampler.name())
            .finish_non_exhaustive()
    }
}

impl Restorer {
    /// Open the spec's model folder, load its network with the spec's engine, check and assemble.
    pub fn load(spec: &PipelineSpec) -> Result<Self> {
        Self::load_around(spec, &|net, _| net)
    }

    /// [`Restorer::load`], with `around` wrapped around the network inside the tiling.
    pub fn load_around(spec: &PipelineSpec, around: Around) -> Result<Self> {
        spec.check_model_dir()?;
        let loaded = crate::model::load(&spec.model, &spec.runtime_options())?;
        let model = ModelDir::from_card(loaded.card, &loaded.dir)?;
        Self::new(spec, model, Arc::from(loaded.denoiser), around)
    }

    /// Assemble from a given network for `model` (bench's timed and analytic networks, a network shared
    /// by the configurations of a study): check the spec against the model and the network's VJP, build
    /// the sampler, and tile `around(network)` with the spec's tiling.
    pub fn new(
        spec: &PipelineSpec,
        model: ModelDir,
        network: Arc<dyn Denoiser>,
        around: Around,
    ) -> Result<Self> {
        check_model(spec, model.info.kind, network.has_vjp())?;
        crate::imageio::color::check_channels(spec, model.info.channels)?;
        let sampler = crate::samplers::build(&spec.sampler_config(), &model.info.schedule)?;
        let tiles = model.tiles(spec);
        let tiled = TiledDenoiser::new(around(network.clone(), &tiles), tiles)?;
        Ok(Restorer {
            spec: spec.clone(),
            model,
            network,
            tiled,
            sampler,
        })
    }

    /// The model folder.
    pub fn model(&self) -> &ModelDir {
        &self.model
    }

    /// The network, untiled and unwrapped.
    pub fn network(&self) -> &Arc<dyn Denoiser> {
        &self.network
    }

    /// The network as the sampler sees it (tiled).
    pub fn tiled(&self) -> &TiledDenoiser {
        &self.tiled
    }

    /// The sampler.
    pub fn sampler(&self) -> &dyn Sampler {
        self.sampler.as_ref()
    }

    /// The engine the pipeline runs: the tiled network (which takes any image size) and the sampler.
    pub fn engine(&self) -> Engine<'_> {
        self.engine_with(self.sampler.as_ref())
    }

    /// [`Restorer::engine`] with another sampler (bench's timing decorator around [`Self::sampler`]).
    pub fn engine_with<'a>(&'a self, sampler: &'a dyn Sampler) -> Engine<'a> {
        Engine {
            model: ModelInfo {
                size: None,
                ..self.model.info.clone()
            },
            denoiser: &self.tiled,
            sampler,
            build_operator: &build_operator,
        }
    }

    /// Restore one batch ([`Engine::restore`]).
    pub fn restore(&self, batch: &[Observation]) -> Result<Restored> {
        self.engine().restore(&self.spec, batch, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A network that is never asked (H†y needs none) but says it has a VJP.
    struct Unused;

    impl Denoiser for Unused {
        fn engine(&self) -> String {
            "unused".into()
        }
        fn predict(&self, _x: ArrayView4<f64>, _t: &[f64]) -> Result<Array4<f64>> {
            Err(Error::Unsupported("not called".into()))
        }
        fn has_vjp(&self) -> bool {
            true
        }
    }

    fn spec(sampler: &str, operator: &str) -> PipelineSpec {
        let text = format!(
            "version: 1\nmodel: ../models/fmnist-ddpm\ntask: {{operator: {operator}}}\nsampler: {{name: {sampler}}}\n"
        );
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
        PipelineSpec::parse(&text, "t.yaml", &base, &[]).unwrap()
    }

    #[test]
    fn a_model_folder_is_checked_against_the_spec_without_loading_it() {
        let s = spec("c-pigfm", "denoise");
        let e = ModelDir::open(&s).unwrap().check(&s).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");
        assert!(e.to_string().contains("needs a flow model"), "{e}");
        let s = spec("pinv", "colorize");
        let e = ModelDir::open(&s).unwrap().check(&s).unwrap_err();
        assert!(e.to_string().contains("needs a 3-channel model"), "{e}");
        let s = spec("pinv", "denoise");
        ModelDir::open(&s).unwrap().check(&s).unwrap();
        let s = spec("bicubic", "denoise");
        let e = ModelDir::open(&s).unwrap().check(&s).unwrap_err();
        assert!(
            e.to_string()
                .contains("sampler bicubic interpolates super-resolution"),
            "{e}"
        );
        let s = spec("bicubic", "sr-average, scale: 4");
        ModelDir::open(&s).unwrap().check(&s).unwrap();
    }

    #[test]
    fn restore_returns_each_image_of_a_batch_in_order_through_the_tiling() {
        // H†y for denoising is y itself, whatever the image size (64x40 is cut into 32x32 tiles, which
        // H†y never asks for): the batch comes back image by image, in order, with no network call.
        let s = spec("pinv", "denoise");
        let r =
            Restorer::new(&s, ModelDir::open(&s).unwrap(), Arc::new(Unused), &|n, _| n).unwrap();
        let op = build_operator(&Degradation::Denoise, [1, 64, 40]).unwrap();
        let ys: Vec<Img> = (0..3)
            .map(|k| {
                Img::from_shape_fn((1, 64, 40), |(_, i, j)| {
                    (k * 7 + i * 40 + j) as f64 / 3000.0
                })
            })
            .collect();
        let batch: Vec<Observation> = ys
            .iter()
            .enumerate()
            .map(|(k, y)| Observation {
                op: &op,
                y,
                seed: k as u64,
                init_noise: None,
            })
            .collect();
        let out = r.restore(&batch).unwrap();
        assert_eq!(out.nfe, 0);
        assert_eq!(out.images, ys);
        assert_eq!(
            r.engine().model.size,
            None,
            "the tiled engine takes any size"
        );
    }
}
