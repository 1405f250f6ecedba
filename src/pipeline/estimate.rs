//! Before a long run, say how long (issue 16): per input size, the tiles per network evaluation, the
//! network evaluations per image, and a time estimate from a short warm-up measurement of the network at
//! the run's batch size. `validate` prints it; `run` logs it before it starts, and warns once when the
//! inputs obviously do not fit the model (colour photos through a greyscale model, an input needing
//! thousands of tiles).
//!
//! **NFE** means the same everywhere in conjure (`validate`, the manifest's `nfe`, progress, this
//! estimate): *network evaluations per image*, forwards + VJPs, each counted once per image whatever the
//! tiling. It is counted, not derived: [`evaluations`] runs the sampler once on a small stand-in problem
//! with a free network and reads the [`Network`] counters, exactly as the manifest's count is made.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ndarray::{Array4, ArrayView4};

use super::{Engine, InputItem, ModelInfo};
use crate::engine::images_per_sampler_call;
use crate::error::Result;
use crate::model::tiled::{TileConfig, TilePlan};
use crate::model::{Denoiser, Network};
use crate::operators::{Degradation, Img};
use crate::samplers::{Problem, Sampler};
use crate::spec::PipelineSpec;

/// Network evaluations per image of one restoration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Evaluations {
    pub forwards: usize,
    pub vjps: usize,
}

impl Evaluations {
    /// NFE: forwards + VJPs per image.
    pub fn nfe(&self) -> usize {
        self.forwards + self.vjps
    }
}

/// A network that costs nothing (zero output, zero cotangent); for counting evaluations.
struct Free;

impl Denoiser for Free {
    fn engine(&self) -> String {
        "free".into()
    }
    fn predict(&self, x: ArrayView4<f64>, _t: &[f64]) -> Result<Array4<f64>> {
        Ok(Array4::zeros(x.raw_dim()))
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
        Ok((Array4::zeros(x.raw_dim()), Array4::zeros(x.raw_dim())))
    }
}

/// Count the network evaluations per image of `sampler` under `spec` (see the module docs): one run on
/// a 16·scale-pixel stand-in image of the task's operator (a denoising stand-in when the task's mask
/// cannot be made at that size, e.g. a per-image mask folder).
pub fn evaluations(
    spec: &PipelineSpec,
    model: &ModelInfo,
    sampler: &dyn Sampler,
) -> Result<Evaluations> {
    let s = 16 * spec.task.scale;
    let shape = [model.channels, s, s];
    let mask = spec
        .task
        .mask
        .as_ref()
        .and_then(|m| m.generate(s, s, 0).ok().flatten());
    let op = match spec.degradation(mask).and_then(|d| d.build(shape)) {
        Ok(op) => op,
        Err(_) => Degradation::Denoise.build(shape)?,
    };
    let y: Img = op.forward(&Img::zeros((shape[0], shape[1], shape[2])));
    let net = Network::new(
        &Free,
        model.kind,
        model.param,
        model.time,
        spec.sampler.config.jacobian,
    );
    let mut problems = vec![Problem::new(op, y, spec.task.noise_sigma, 0)?];
    // The counts are what matters; a stand-in that trips a sampler's numerical checks still counted.
    let _ = sampler.sample(&net, &mut problems);
    // `sampler.samples` = K restores each image K times (and averages them).
    let k = spec.sampler.samples.max(1);
    Ok(Evaluations {
        forwards: k * net.forwards(),
        vjps: k * net.vjps(),
    })
}

/// Seconds of one network call on `batch` tiles of (c, h, w): one untimed warm-up call (engines set up
/// lazily), then one timed forward call, and one timed VJP call when `vjp` (else `None`).
pub fn time_calls(
    denoiser: &dyn Denoiser,
    tile: [usize; 3],
    batch: usize,
    vjp: bool,
) -> Result<(f64, Option<f64>)> {
    let x = Array4::<f64>::zeros((batch, tile[0], tile[1], tile[2]));
    let t = vec![0.5; batch];
    denoiser.predict(x.view(), &t)?;
    let t0 = Instant::now();
    denoiser.predict(x.view(), &t)?;
    let fwd = t0.elapsed().as_secs_f64();
    let vjp = if vjp {
        let t0 = Instant::now();
        denoiser.vjp(x.view(), &t, x.view())?;
        Some(t0.elapsed().as_secs_f64())
    } else {
        None
    };
    Ok((fwd, vjp))
}

/// What the inputs look like: image count per size (height, width) and how many are colour, read from
/// the files' headers (no decoding) for at most `limit` inputs.
#[derive(Debug, Clone, Default)]
pub struct InputSurvey {
    pub sizes: BTreeMap<(usize, usize), usize>,
    /// Inputs with colour channels (RGB, RGBA).
    pub colour: usize,
    /// Inputs whose header was read.
    pub read: usize,
    /// All inputs (read or not).
    pub total: usize,
    /// The first input with colour, for messages.
    pub first_colour: Option<PathBuf>,
}

/// Read the headers of (at most `limit` of) `items`.
pub fn survey(items: &[InputItem], limit: usize) -> InputSurvey {
    let mut s = InputSurvey {
        total: items.len(),
        ..Default::default()
    };
    for it in items.iter().take(limit) {
        let Some(((w, h), colour)) = header(&it.path) else {
            continue;
        };
        // A declared size over the decoding limit is refused when the file is decoded (a bomb or a
        // damaged header); planning tiles for it would allocate what decoding refuses.
        if u64::from(w) * u64::from(h) > crate::imageio::MAX_PIXELS {
            continue;
        }
        s.read += 1;
        *s.sizes.entry((h as usize, w as usize)).or_default() += 1;
        if colour {
            s.colour += 1;
            if s.first_colour.is_none() {
                s.first_colour = Some(it.path.clone());
            }
        }
    }
    s
}

/// (width, height) and whether the image has colour, from its header.
fn header(path: &Path) -> Option<((u32, u32), bool)> {
    use image::ImageDecoder;
    let decoder = image::ImageReader::open(path)
        .ok()?
        .with_guessed_format()
        .ok()?
        .into_decoder()
        .ok()?;
    let colour = decoder.color_type().has_color();
    Some((decoder.dimensions(), colour))
}

/// The estimate for one input size.
#[derive(Debug, Clone, PartialEq)]
pub struct SizeEstimate {
    /// Input size (height, width).
    pub input: (usize, usize),
    /// Restored size (height, width).
    pub output: (usize, usize),
    pub images: usize,
    /// Tiles per network evaluation of one image.
    pub tiles: usize,
    /// NFE: network evaluations per image (forwards + VJPs).
    pub nfe: usize,
    /// Network calls per image (tile batches of `runtime.batch_size`, shared within an image batch).
    pub calls: f64,
    /// Estimated network seconds per image, when a measurement was made.
    pub seconds: Option<f64>,
}

/// Network calls one evaluation of a draw takes for a batch of `images` images, when a sampler call on
/// `p` problems makes `calls(p)` of them: the batch goes through the sampler
/// [`images_per_sampler_call`] images at a time, `sampler.samples` draws each.
pub fn calls_per_evaluation(
    spec: &PipelineSpec,
    images: usize,
    calls: impl Fn(usize) -> usize,
) -> usize {
    let k = spec.sampler.samples.max(1);
    let c = images_per_sampler_call(spec, images);
    (0..images)
        .step_by(c)
        .map(|start| calls(k * c.min(images - start)))
        .sum()
}

/// Per-size estimates for `survey` under the tile configuration `tiles` (`None`: no tiling, the
/// network takes whole images).
pub fn estimate(
    spec: &PipelineSpec,
    survey: &InputSurvey,
    tiles: Option<&TileConfig>,
    evals: Evaluations,
    times: Option<(f64, Option<f64>)>,
) -> Result<Vec<SizeEstimate>> {
    let bs = spec.runtime.batch_size.max(1);
    let k = spec.sampler.samples.max(1);
    let s = spec.task.scale;
    let mut out = Vec::new();
    for (&(h, w), &n) in &survey.sizes {
        let (oh, ow) = (h * s, w * s);
        let nt = match tiles {
            Some(cfg) => TilePlan::new(oh, ow, cfg)?.len(),
            None => 1,
        };
        // Images of one size are sampled together, up to batch_size; their tiles fill the calls. With
        // `sampler.samples` = K the K draws of each image share those calls, and each of the nfe / K
        // evaluations of a draw (`evals` counts all K draws) takes `calls_per_evaluation` calls.
        let b = n.clamp(1, bs);
        let per_eval =
            calls_per_evaluation(spec, b, |p| (p * nt).div_ceil(bs)) as f64 / b as f64 / k as f64;
        let calls = per_eval * evals.nfe() as f64;
        let seconds = times.map(|(fwd, vjp)| {
            per_eval * (evals.forwards as f64 * fwd + evals.vjps as f64 * vjp.unwrap_or(2.0 * fwd))
        });
        out.push(SizeEstimate {
            input: (h, w),
            output: (oh, ow),
            images: n,
            tiles: nt,
            nfe: evals.nfe(),
            calls,
            seconds,
        });
    }
    Ok(out)
}

/// Human-readable seconds: `0.4 s`, `12 s`, `3 min 20 s`, `2 h 05 min`.
pub fn duration(secs: f64) -> String {
    if secs < 10.0 {
        format!("{secs:.1} s")
    } else if secs < 60.0 {
        format!("{secs:.0} s")
    } else if secs < 3600.0 {
        format!("{} min {:02} s", (secs / 60.0) as u64, (secs % 60.0) as u64)
    } else {
        format!(
            "{} h {:02} min",
            (secs / 3600.0) as u64,
            ((secs % 3600.0) / 60.0) as u64
        )
    }
}

/// One line per input size, for `validate` and the start of `run`.
pub fn lines(est: &[SizeEstimate], survey: &InputSurvey) -> Vec<String> {
    let mut v: Vec<String> = est
        .iter()
        .map(|e| {
            let (h, w) = e.input;
            let time = match e.seconds {
                Some(s) => format!(
                    ", about {}/image, {} in all",
                    duration(s),
                    duration(s * e.images as f64)
                ),
                None => String::new(),
            };
            format!(
                "{w}x{h} ({} image{}): {} tile{} x NFE {} = {} tile evaluations/image in {:.0} network calls{time}",
                e.images,
                if e.images == 1 { "" } else { "s" },
                e.tiles,
                if e.tiles == 1 { "" } else { "s" },
                e.nfe,
                e.tiles * e.nfe,
                e.calls.ceil(),
            )
        })
        .collect();
    if survey.read < survey.total {
        v.push(format!(
            "(sizes of the first {} of {} inputs)",
            survey.read, survey.total
        ));
    }
    let total: f64 = est
        .iter()
        .filter_map(|e| e.seconds.map(|s| s * e.images as f64))
        .sum();
    if est.len() > 1 && est.iter().all(|e| e.seconds.is_some()) {
        v.push(format!("about {} of network time in all", duration(total)));
    }
    v
}

/// Warnings when the inputs obviously do not fit the model (issue 16): colour inputs through a
/// greyscale model, or an input needing thousands of tiles per network evaluation.
pub fn domain_warnings(
    model: &ModelInfo,
    domain: Option<&str>,
    survey: &InputSurvey,
    est: &[SizeEstimate],
) -> Vec<String> {
    let what = match (domain, model.size) {
        (Some(d), _) => format!("the model's domain is {d}"),
        (None, Some((h, w))) => format!(
            "the model takes {w}x{h} {} images",
            if model.channels == 1 {
                "grey"
            } else {
                "colour"
            }
        ),
        (None, None) => "the model".into(),
    };
    let mut v = Vec::new();
    if model.channels == 1 && survey.colour > 0 {
        v.push(format!(
            "{} of {} inputs are colour (e.g. {}), but {what}: only their brightness is restored",
            survey.colour,
            survey.read,
            survey
                .first_colour
                .as_deref()
                .unwrap_or(Path::new("?"))
                .display()
        ));
    }
    if let Some(e) = est
        .iter()
        .max_by_key(|e| e.tiles)
        .filter(|e| e.tiles >= 1000)
    {
        v.push(format!(
            "a {}x{} input needs {} tiles per network evaluation ({} tile evaluations per image), and \
             {what}: check that this model suits these images",
            e.input.1,
            e.input.0,
            e.tiles,
            e.tiles * e.nfe
        ));
    }
    v
}

/// For an [`Engine`]: the evaluations its sampler makes per image.
pub fn engine_evaluations(spec: &PipelineSpec, engine: &Engine) -> Result<Evaluations> {
    evaluations(spec, &engine.model, engine.sampler)
}

/// Everything `validate` and the start of `run` say about the inputs.
#[derive(Debug, Clone)]
pub struct Plan {
    pub evaluations: Evaluations,
    pub survey: InputSurvey,
    pub sizes: Vec<SizeEstimate>,
    /// One line per input size (and totals).
    pub lines: Vec<String>,
    /// Domain warnings, each to be shown once.
    pub warnings: Vec<String>,
}

/// Inputs surveyed at most (header reads) for the estimate.
pub const SURVEY_LIMIT: usize = 2000;

/// Survey `items`, count the sampler's evaluations, time the network (`net`, the untiled network, at
/// the run's batch size; `None`: no time estimate) and estimate per input size under `tiles`. `model`
/// holds the card's image size.
pub fn plan(
    spec: &PipelineSpec,
    model: &ModelInfo,
    domain: Option<&str>,
    items: &[InputItem],
    tiles: &TileConfig,
    sampler: &dyn Sampler,
    net: Option<&dyn Denoiser>,
) -> Result<Plan> {
    let evaluations = evaluations(spec, model, sampler)?;
    let survey = survey(items, SURVEY_LIMIT);
    let times = match net {
        Some(net) if !survey.sizes.is_empty() => Some(time_calls(
            net,
            [model.channels, tiles.tile_h, tiles.tile_w],
            spec.runtime.batch_size.max(1),
            evaluations.vjps > 0,
        )?),
        _ => None,
    };
    let sizes = estimate(spec, &survey, Some(tiles), evaluations, times)?;
    let lines = lines(&sizes, &survey);
    let warnings = domain_warnings(model, domain, &survey, &sizes);
    Ok(Plan {
        evaluations,
        survey,
        sizes,
        lines,
        warnings,
    })
}
