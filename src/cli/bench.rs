//! `conjure bench SPEC`: run a spec's pipeline on N images and say where the time goes (issue 6).
//!
//! The bench runs the real `run` pipeline ([`pipeline::run_with`]: decode, batch, sample, encode,
//! atomic write, manifest) on N images made by cycling the spec's inputs (hard links, else copies, in a
//! temporary folder, one sub-folder per cycle so every image keeps its own seed), writes the outputs to
//! that temporary folder and removes it afterwards. Two decorators measure it without timers inside the
//! library: a [`TimedDenoiser`] directly around the network engine (inside the tiling layer) and a
//! timing wrapper around the sampler. The split, in wall-clock seconds of the run:
//!
//! * `network_forward`, `network_vjp` — inside the engine's forward / VJP calls;
//! * `sampler` — inside the sampler minus the network: sampler math, coefficient (Φ) setup, operators,
//!   tiling and the f64↔f32 batch conversion;
//! * `io` — I/O the network waited for: the network thread blocked on the decode thread (the first
//!   batch, and any batch not decoded in time) or on the write thread (a full hand-off queue, and the
//!   last batch's encode + write after sampling ended). Decoding and writing run on their own threads
//!   while the network works, so this is only the I/O that was *not* hidden behind the network;
//! * `idle` — the rest of the network thread's time: input discovery, planning, skip records, starting
//!   the threads, building each batch's problems.
//!
//! `total` = the wall time of the pipeline (model loading and sampler construction are `setup`,
//! reported apart). The four parts sum to `total` by construction. `overhead_ratio` =
//! (total − network) / network. `peak_rss_bytes` is the process high-water mark (`VmHWM`).
//!
//! All the I/O work, hidden or not, is reported beside the split: `io_busy_seconds` = the wall seconds
//! the decode and the write thread were busy (each on the rayon pool), and `io_thread_seconds` = the
//! decode, prepare, encode and write time summed over images (thread-seconds, from the manifest's
//! per-image seconds minus the sampling share).
//!
//! **Cost of one step in forwards.** `step_seconds_per_image` = `seconds.network` / `nfe`: the network
//! wall time of the run per image and per step, where `nfe` counts steps as the paper does (a step that
//! runs a forward and a VJP counts once), so it is everything the network did for one image in one step
//! (for C-ΠGDM with `jacobian: exact`: this step's ε̂ and its VJP). `forward_seconds_per_image` is one
//! plain forward, measured after the run by a calibration on the same engine, session and threads: the
//! forward of a batch of the run's size (`min(batch_size, images)`, the model's image size, pseudo-random
//! x, the network time of t = ½), one untimed warm-up call, then at least
//! [`CALIBRATION_MIN_CALLS`] calls and at least [`CALIBRATION_MIN_SECONDS`] s (at most
//! [`CALIBRATION_MAX_CALLS`] calls); the median call time over the batch size. `step_over_forward` =
//! `step_seconds_per_image` / `forward_seconds_per_image`: how many plain forwards one step costs (1 for
//! a forward-only sampler up to the run's overheads of the first calls, ~2 is the floor for a step with
//! a VJP). The calibration calls bypass the timing decorator, so `seconds` and `network_calls` are the
//! run's alone, and its time is not in `total`. `run_forward_seconds_per_image` and
//! `run_vjp_seconds_per_image` split the run's own network time per image by call kind (a graph that
//! recomputes the forward inside the VJP shows here as a VJP that costs more than a forward). With a
//! tiled model the step is per input image and the forward per tile (the model's image size), so
//! `step_over_forward` is then that many tiles times the per-tile ratio.
//!
//! `--analytic` swaps the network for the exact Gaussian-prior denoiser of the model's kind,
//! parameterization and time input (prior N(0, 0.25 I) at the model's image size): the network time is
//! then the oracle's and the rest is the pure pipeline + sampler cost.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

use conjure::engine::{ModelDir, ModelInfo, Restorer};
use conjure::model::analytic::{
    GaussianDiffusion, GaussianFlow, GaussianPrior, IdentityBasis, NoiseLevel,
};
use conjure::model::timed::TimedDenoiser;
use conjure::model::{Denoiser, ModelKind, Network};
use conjure::operators::Img;
use conjure::pipeline::{self, manifest, output, ProgressMode, RunOptions};
use conjure::samplers::{ModelSchedule, Problem, Sampler};
use conjure::schedules::TimeInput;
use conjure::spec::{MaskSpec, Override, PipelineSpec};

/// Arguments of `conjure bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// The pipeline spec (YAML).
    pub spec: PathBuf,
    /// Number of images to restore, cycling the spec's inputs (default: each input once).
    #[arg(long)]
    pub images: Option<usize>,
    /// Also write the report as JSON to this file (`-` = stdout instead of the text report).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Replace the network by the exact Gaussian-prior denoiser of the same kind (pure sampler cost).
    #[arg(long)]
    pub analytic: bool,
    /// Input file or directory (overrides io.input).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Override a spec key: --set runtime.batch_size=16 (repeatable; the value is YAML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// Wall-clock seconds of a bench run.
#[derive(Debug, Serialize)]
pub struct Seconds {
    pub total: f64,
    pub network_forward: f64,
    pub network_vjp: f64,
    pub network: f64,
    pub sampler: f64,
    /// I/O the network thread waited for (decode not ready, write queue full, last write); the I/O
    /// hidden behind the network is not in it (see `io_busy_seconds`).
    pub io: f64,
    /// The rest of the network thread's time (discovery, planning, thread start, batch set-up).
    pub idle: f64,
    /// Model loading and sampler construction (not part of `total`).
    pub setup: f64,
}

/// Wall seconds the I/O threads were busy.
#[derive(Debug, Serialize)]
pub struct IoBusy {
    /// Decode, measurements and operators, batching.
    pub decode: f64,
    /// Encode, atomic write, manifest record.
    pub write: f64,
}

/// Wall seconds the network thread waited on the I/O threads.
#[derive(Debug, Serialize)]
pub struct IoWait {
    /// For the next decoded batch (the first one included).
    pub input: f64,
    /// To hand a batch to the write thread, and for the last writes after sampling ended.
    pub output: f64,
}

/// Network calls seen by the timing decorator (images = batch entries or tiles).
#[derive(Debug, Serialize)]
pub struct NetworkCalls {
    pub forward_calls: u64,
    pub forward_images: u64,
    pub vjp_calls: u64,
    pub vjp_images: u64,
}

/// The forward calibration behind `forward_seconds_per_image` (see the module doc).
#[derive(Debug, Serialize)]
pub struct ForwardCalibration {
    /// Images per calibration call: the run's batch size, at most the number of images.
    pub batch: usize,
    /// Timed calls (after one untimed warm-up call).
    pub calls: usize,
    /// Median wall seconds of one call.
    pub median_call_seconds: f64,
}

/// The bench report (`--json`).
#[derive(Debug, Serialize)]
pub struct BenchReport {
    pub spec: String,
    pub sampler: String,
    pub steps: Option<usize>,
    /// NFE per image the sampler declares.
    pub nfe_per_image: usize,
    pub images: usize,
    pub restored: usize,
    pub failed: usize,
    pub batch_size: usize,
    /// Worker threads for decode / encode.
    pub threads: usize,
    pub engine: String,
    pub provider: String,
    pub analytic: bool,
    pub seconds: Seconds,
    /// Decode + prepare + encode + write, summed over images (thread-seconds).
    pub io_thread_seconds: f64,
    /// Wall seconds the decode and write threads were busy, overlapping the network (not part of
    /// `total`'s split: `seconds.io` is the part of it the network waited for).
    pub io_busy_seconds: IoBusy,
    /// `seconds.io` split: the network thread waiting for decoded input vs. for the write thread.
    pub io_wait_seconds: IoWait,
    pub images_per_second: f64,
    /// NFE as the paper counts it (a step with a VJP counts once): the sampler's NFE/image × images
    /// restored, e.g. steps × images for C-ΠGDM.
    pub nfe: usize,
    /// Network evaluations actually run, forwards + VJPs (Σ of the manifest's per-image `nfe`); a
    /// C-ΠGDM step with `jacobian: exact` is one forward and one VJP.
    pub network_evaluations: usize,
    pub network_calls: NetworkCalls,
    /// (total − network) / network.
    pub overhead_ratio: f64,
    /// Network seconds per image and step: `seconds.network / nfe` (null when nothing was restored).
    pub step_seconds_per_image: Option<f64>,
    /// One plain forward per image, from the calibration: `median_call_seconds / batch`.
    pub forward_seconds_per_image: f64,
    pub forward_calibration: ForwardCalibration,
    /// `step_seconds_per_image / forward_seconds_per_image`: one step's network cost in forwards.
    pub step_over_forward: Option<f64>,
    /// The run's forward seconds per image (`seconds.network_forward / network_calls.forward_images`).
    pub run_forward_seconds_per_image: Option<f64>,
    /// The run's VJP seconds per image (`seconds.network_vjp / network_calls.vjp_images`).
    pub run_vjp_seconds_per_image: Option<f64>,
    /// Split-VJP network calls whose VJP found the residuals its forward kept (a step costs forward +
    /// backward) and those that ran forward-with-residuals again (a forward more); both 0 for models
    /// without split graphs.
    pub vjp_residuals_reused: usize,
    pub vjp_residuals_recomputed: usize,
    /// Peak resident set size of the process (VmHWM), bytes; null where unavailable.
    pub peak_rss_bytes: Option<u64>,
}

/// At least this many timed calls in the forward calibration.
pub const CALIBRATION_MIN_CALLS: usize = 5;
/// And calls until this many seconds have passed.
pub const CALIBRATION_MIN_SECONDS: f64 = 1.0;
/// But never more calls than this.
pub const CALIBRATION_MAX_CALLS: usize = 50;

/// Time one plain forward of `batch` images of `shape` at network time `t` (module doc): one warm-up
/// call, then calls until both minimums are met; returns the median call time.
fn calibrate_forward(
    denoiser: &dyn Denoiser,
    batch: usize,
    shape: [usize; 3],
    t: f64,
) -> anyhow::Result<ForwardCalibration> {
    let [c, h, w] = shape;
    // A fixed pseudo-random batch in about [-1, 1] (the values do not change a network's cost).
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let x = ndarray::Array4::from_shape_simple_fn((batch, c, h, w), || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
    });
    let ts = vec![t; batch];
    denoiser
        .predict(x.view(), &ts)
        .context("forward calibration")?;
    let (mut calls, start) = (Vec::new(), Instant::now());
    while calls.len() < CALIBRATION_MAX_CALLS
        && (calls.len() < CALIBRATION_MIN_CALLS
            || start.elapsed().as_secs_f64() < CALIBRATION_MIN_SECONDS)
    {
        let t0 = Instant::now();
        denoiser
            .predict(x.view(), &ts)
            .context("forward calibration")?;
        calls.push(t0.elapsed().as_secs_f64());
    }
    Ok(ForwardCalibration {
        batch,
        calls: calls.len(),
        median_call_seconds: median(&mut calls),
    })
}

/// The median (the mean of the two middle values for an even count); 0 for none.
fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// `a / b`, or `None` when `b` is not positive.
fn ratio(a: f64, b: f64) -> Option<f64> {
    (b > 0.0).then(|| a / b)
}

/// A sampler decorator that sums the wall time of `sample` calls.
struct TimedSampler<'a> {
    inner: &'a dyn Sampler,
    nanos: AtomicU64,
}

impl Sampler for TimedSampler<'_> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn nfe(&self) -> usize {
        self.inner.nfe()
    }
    fn sample(&self, net: &Network, problems: &mut [Problem]) -> conjure::Result<Vec<Img>> {
        let t0 = Instant::now();
        let r = self.inner.sample(net, problems);
        let ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(ns, Ordering::Relaxed);
        r
    }
}

/// A temporary folder removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> anyhow::Result<Self> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("conjure-bench-{}-{stamp}", std::process::id()));
        std::fs::create_dir_all(&p).with_context(|| format!("cannot create {}", p.display()))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The process's peak resident set size in bytes (`VmHWM` of /proc/self/status).
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The exact Gaussian-prior denoiser (prior N(0, 0.25 I) of `shape`) of the model's kind,
/// parameterization and time input.
fn analytic_denoiser(info: &ModelInfo, shape: [usize; 3]) -> anyhow::Result<Arc<dyn Denoiser>> {
    let prior = GaussianPrior::new(
        Arc::new(IdentityBasis),
        Img::zeros(shape),
        Img::from_elem(shape, 0.25),
    )?;
    Ok(match info.kind {
        ModelKind::Diffusion => {
            let ModelSchedule::Diffusion { vp, ddpm } = &info.schedule else {
                bail!("a diffusion model without a diffusion schedule");
            };
            let level = match info.time {
                TimeInput::Index { .. } => NoiseLevel::DdpmIndex(ddpm.clone()),
                TimeInput::Unit => NoiseLevel::VpUnit(*vp),
            };
            Arc::new(GaussianDiffusion::new(prior, level, info.param)?)
        }
        ModelKind::Flow => Arc::new(GaussianFlow::new(prior, info.time, info.param)?),
    })
}

/// Hard-link (else copy) `src` to `dst`, creating `dst`'s folder.
fn link(src: &Path, dst: &Path) -> anyhow::Result<()> {
    if let Some(d) = dst.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

/// Fill `dir` with `n` images cycling `items`: cycle k goes to `dir/k/<relative path>`. Per-image masks
/// (`mask: {kind: per-image, dir}`) are mirrored the same way into `masks`, when given.
fn cycle_inputs(
    items: &[pipeline::InputItem],
    n: usize,
    dir: &Path,
    masks: Option<(&Path, &Path)>,
) -> anyhow::Result<()> {
    for i in 0..n {
        let it = &items[i % items.len()];
        let cycle = format!("{:05}", i / items.len());
        link(&it.path, &dir.join(&cycle).join(&it.rel))?;
        if let Some((from, to)) = masks {
            let m = from.join(&it.rel).with_extension("png");
            if m.is_file() {
                link(&m, &to.join(&cycle).join(&it.rel).with_extension("png"))?;
            }
        }
    }
    Ok(())
}

/// Split an engine description `name/provider` (provider `cpu` when none is named).
fn engine_provider(engine: &str) -> (String, String) {
    match engine.rsplit_once('/') {
        Some((e, p)) => (e.to_string(), p.to_string()),
        None => (engine.to_string(), "cpu".to_string()),
    }
}

/// Run the bench and return the report.
pub fn run_bench(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let overrides = args
        .set
        .iter()
        .map(|s| Override::parse(s))
        .collect::<conjure::Result<Vec<_>>>()?;
    let mut spec = PipelineSpec::load(&args.spec, &overrides)?;
    let input = output::given_or_spec(args.input.as_ref(), spec.io.input.as_ref(), "input")?;
    let items = pipeline::discover(&input, None)?;
    if items.is_empty() {
        bail!(
            "no image files (png, tif, tiff, jpg, jpeg) under {}",
            input.display()
        );
    }
    let n = args.images.unwrap_or(items.len());
    if n == 0 {
        bail!("invalid images 0 (expected >= 1)");
    }

    // Setup: model (or oracle), timing decorators, sampler.
    let t_setup = Instant::now();
    let model = ModelDir::open(&spec)?;
    let shape = [
        model.card.image.channels,
        model.card.image.height,
        model.card.image.width,
    ];
    let inner: Arc<dyn Denoiser> = if args.analytic {
        analytic_denoiser(&model.info, shape)?
    } else {
        Arc::from(conjure::model::load(&spec.model, &spec.runtime_options())?.denoiser)
    };
    // The timer sits directly around the network, inside the tiling.
    let timed = Arc::new(TimedDenoiser::new(inner.clone()));
    let around = timed.clone();
    let restorer = Restorer::new(&spec, model, inner.clone(), &move |_, _| {
        around.clone() as Arc<dyn Denoiser>
    })?;
    let sampler = restorer.sampler();
    let timed_sampler = TimedSampler {
        inner: sampler,
        nanos: AtomicU64::new(0),
    };
    let engine = restorer.engine_with(&timed_sampler);
    let setup = t_setup.elapsed().as_secs_f64();

    let tmp = TempDir::new()?;
    let in_dir = tmp.0.join("in");
    let out_dir = tmp.0.join("out");
    let manifest = tmp.0.join("manifest.jsonl");
    let mask_dir = tmp.0.join("masks");
    let per_image = match &spec.task.mask {
        Some(MaskSpec::PerImage { dir }) => Some(dir.clone()),
        _ => None,
    };
    cycle_inputs(
        &items,
        n,
        &in_dir,
        per_image.as_deref().map(|d| (d, mask_dir.as_path())),
    )?;
    if per_image.is_some() {
        spec.task.mask = Some(MaskSpec::PerImage { dir: mask_dir });
    }
    let opts = RunOptions {
        input: Some(in_dir),
        output: Some(out_dir),
        overwrite: true,
        shard: None,
        manifest: Some(manifest.clone()),
        progress: ProgressMode::Quiet,
        display: None,
        stop: None,
        watch: None,
    };
    let threads = if spec.runtime.threads > 0 {
        spec.runtime.threads
    } else {
        rayon::current_num_threads()
    };

    let reuse_before = conjure::model::residual_reuse();
    let t0 = Instant::now();
    let summary = pipeline::run_with(&spec, &opts, &engine)?;
    let total = t0.elapsed().as_secs_f64();
    let reuse = conjure::model::residual_reuse();

    // One plain forward at the run's batch size, on the engine itself (not through the decorator).
    let t_mid = match engine.model.kind {
        ModelKind::Diffusion => engine.model.time.diffusion_continuous(0.5),
        ModelKind::Flow => engine.model.time.flow(0.5),
    };
    let calibration = calibrate_forward(
        inner.as_ref(),
        spec.runtime.batch_size.clamp(1, n),
        shape,
        t_mid,
    )?;
    let forward_per_image = calibration.median_call_seconds / calibration.batch as f64;
    let peak_rss = peak_rss_bytes();

    // Per-image seconds and NFE from the manifest.
    let (mut image_seconds, mut evaluations) = (0.0, 0usize);
    for (line, rec) in manifest::read(&manifest)? {
        let rec = rec.with_context(|| format!("{}:{line}", manifest.display()))?;
        image_seconds += rec.seconds;
        evaluations += rec.nfe;
    }

    let net = timed.times();
    let sampling = timed_sampler.nanos.load(Ordering::Relaxed) as f64 * 1e-9;
    let network = net.seconds();
    let sampler_s = (sampling - network).max(0.0);
    let io_thread = (image_seconds - sampling).max(0.0);
    let timing = summary.timing;
    let io = (timing.input_wait + timing.output_wait).min((total - network - sampler_s).max(0.0));
    let idle = (total - network - sampler_s - io).max(0.0);
    let (engine_name, provider) = engine_provider(&timed.engine());
    let nfe = sampler.nfe() * summary.restored;
    let step = ratio(network, nfe as f64);
    Ok(BenchReport {
        spec: args.spec.display().to_string(),
        sampler: sampler.name().to_string(),
        steps: spec.sampler.config.steps,
        nfe_per_image: sampler.nfe(),
        images: n,
        restored: summary.restored,
        failed: summary.failed,
        batch_size: spec.runtime.batch_size,
        threads,
        engine: engine_name,
        provider,
        analytic: args.analytic,
        seconds: Seconds {
            total,
            network_forward: net.forward_seconds,
            network_vjp: net.vjp_seconds,
            network,
            sampler: sampler_s,
            io,
            idle,
            setup,
        },
        io_thread_seconds: io_thread,
        io_busy_seconds: IoBusy {
            decode: timing.decode_busy,
            write: timing.write_busy,
        },
        io_wait_seconds: IoWait {
            input: timing.input_wait,
            output: timing.output_wait,
        },
        images_per_second: summary.restored as f64 / total.max(1e-12),
        nfe,
        network_evaluations: evaluations,
        network_calls: NetworkCalls {
            forward_calls: net.forward_calls,
            forward_images: net.forward_images,
            vjp_calls: net.vjp_calls,
            vjp_images: net.vjp_images,
        },
        overhead_ratio: if network > 0.0 {
            (total - network) / network
        } else {
            f64::INFINITY
        },
        peak_rss_bytes: peak_rss,
        step_seconds_per_image: step,
        forward_seconds_per_image: forward_per_image,
        forward_calibration: calibration,
        step_over_forward: step.and_then(|s| ratio(s, forward_per_image)),
        run_forward_seconds_per_image: ratio(net.forward_seconds, net.forward_images as f64),
        run_vjp_seconds_per_image: ratio(net.vjp_seconds, net.vjp_images as f64),
        vjp_residuals_reused: reuse.0 - reuse_before.0,
        vjp_residuals_recomputed: reuse.1 - reuse_before.1,
    })
}

fn pct(part: f64, total: f64) -> f64 {
    if total > 0.0 {
        100.0 * part / total
    } else {
        0.0
    }
}

/// The human-readable report.
pub fn render(r: &BenchReport) -> String {
    let s = &r.seconds;
    let mut o = String::new();
    o += &format!(
        "bench {}: {} images ({} restored, {} failed), {} {} NFE/image, batch {}, {} threads\n",
        r.spec, r.images, r.restored, r.failed, r.sampler, r.nfe_per_image, r.batch_size, r.threads
    );
    o += &format!(
        "engine   {} ({}){}\n",
        r.engine,
        r.provider,
        if r.analytic {
            " [analytic Gaussian oracle]"
        } else {
            ""
        }
    );
    for (name, v) in [
        ("network forward", s.network_forward),
        ("network vjp", s.network_vjp),
        ("sampler + operators", s.sampler),
        ("waiting for i/o", s.io),
        ("idle", s.idle),
    ] {
        o += &format!("  {name:<20} {v:>10.4} s  {:>6.2} %\n", pct(v, s.total));
    }
    o += &format!("  {:<20} {:>10.4} s\n", "total", s.total);
    let busy = &r.io_busy_seconds;
    o += &format!(
        "  {:<20} {:>10.4} s (decode {:.4} s, encode + write {:.4} s; overlaps the network, not in total)\n",
        "i/o threads busy",
        busy.decode + busy.write,
        busy.decode,
        busy.write
    );
    o += &format!("  {:<20} {:>10.4} s (not in total)\n", "setup", s.setup);
    o += &format!(
        "images/s {:.2}   NFE {} ({} network evaluations)   overhead {:.2} % of network time\n",
        r.images_per_second,
        r.nfe,
        r.network_evaluations,
        100.0 * r.overhead_ratio
    );
    let ms = |v: Option<f64>| {
        v.map(|s| format!("{:.2} ms", 1e3 * s))
            .unwrap_or_else(|| "n/a".into())
    };
    let cal = &r.forward_calibration;
    o += &format!(
        "step     {}/image of network per step = {} forwards (one forward {}/image: median of {} calls at batch {})\n",
        ms(r.step_seconds_per_image),
        r.step_over_forward
            .map(|v| format!("{v:.2}"))
            .unwrap_or_else(|| "n/a".into()),
        ms(Some(r.forward_seconds_per_image)),
        cal.calls,
        cal.batch
    );
    o += &format!(
        "         in the run: forward {}/image, vjp {}/image\n",
        ms(r.run_forward_seconds_per_image),
        ms(r.run_vjp_seconds_per_image)
    );
    if r.vjp_residuals_reused + r.vjp_residuals_recomputed > 0 {
        o += &format!(
            "         split vjp: {} calls reused the kept residuals, {} ran the forward again\n",
            r.vjp_residuals_reused, r.vjp_residuals_recomputed
        );
    }
    o += &format!(
        "peak RSS {}\n",
        r.peak_rss_bytes
            .map(|b| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "unavailable".into())
    );
    o
}

/// `conjure bench`: exit status 0, or 1 when some image failed.
pub fn bench(args: &BenchArgs) -> anyhow::Result<i32> {
    let r = run_bench(args)?;
    let json = serde_json::to_string_pretty(&r)?;
    match args.json.as_deref() {
        Some(p) if p == Path::new("-") => println!("{json}"),
        Some(p) => {
            std::fs::write(p, json + "\n")
                .with_context(|| format!("cannot write {}", p.display()))?;
            print!("{}", render(&r));
        }
        None => print!("{}", render(&r)),
    }
    Ok(if r.failed > 0 {
        super::EXIT_FAILED_INPUTS
    } else {
        super::EXIT_OK
    })
}
