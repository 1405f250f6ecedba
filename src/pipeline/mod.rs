//! The batch pipeline behind `conjure run` and `conjure degrade` (docs/cli.md).
//!
//! `run` is three steps, each in its own file:
//!
//! 1. [`plan`]: resolve the input and output, walk the input tree once ([`discover`]), keep this shard's
//!    share ([`shard`]) and sort the inputs into those to restore, those whose output exists (skipped
//!    unless `--overwrite`) and those that fail before any model is needed.
//! 2. Only when something is left to restore: load the model into a [`Restorer`] (network checked
//!    against the spec, tiled, the spec's sampler) and say how long the run will take ([`estimate`]).
//! 3. [`execute`]: record what the plan settled in the [`manifest`], then decode, sample and write on
//!    three threads; every output is written atomically ([`output`]), so a killed run leaves only complete
//!    outputs plus temporaries that the next run removes. One failing input is recorded in the manifest
//!    and the run goes on. Progress is reported through a [`Progress`] display.
//!
//! **Stopping (issue 8).** [`RunOptions::stop`] is a flag a signal handler (or any thread) may set. The
//! run then takes no new batch: batches already sampled are written and recorded, the batch in the
//! network is abandoned at its next network evaluation and discarded, decoded batches are dropped; no
//! output is half-written (write + rename) and no temporary is left, the manifest holds a record for
//! every input finished, and [`RunSummary::interrupted`] says so. A rerun resumes with the inputs left.
//!
//! **Determinism.** Every image's random stream is seeded by [`image_seed`]`(seed, path relative to the
//! input root)`; samplers keep per-sample computations per sample; so outputs do not depend on batch size,
//! batch composition, thread count, shard, order or overlap (as long as the network itself returns the
//! same numbers for a sample whatever the batch, which the analytic and ONNX backends do).
//!
//! [`image_seed`]: crate::spec::image_seed
//! [`Restorer`]: crate::engine::Restorer

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};

use crate::engine::{ModelDir, Restorer};
use crate::error::{Error, Result};
use crate::spec::PipelineSpec;

pub mod consistency;
pub mod degrade;
pub mod discover;
pub mod estimate;
mod execute;
pub mod manifest;
pub mod output;
pub mod plan;
pub mod progress;
mod resume;
pub mod shard;
mod watch;

pub use crate::engine::{
    check_model, tile_config, tiled_denoiser, Engine, ModelInfo, OperatorFactory,
};
pub use degrade::{add_measurement_noise, degrade, task_mask, DegradeSummary};
pub use discover::{
    discover, discover_all, discover_tree, is_unsupported_image, Discovered, InputItem,
    InputProblem,
};
pub use manifest::{default_manifest, ManifestRecord, Status};
pub use output::{check_io, output_path, processing_note};
pub use plan::{Job, Plan};
pub use progress::{LogProgress, Progress, QuietProgress};
pub use shard::Shard;
pub use watch::{Listener, NetWatch};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// One log line per image (cron, CI), and the time estimate before the run.
    Log,
    /// Nothing but warnings and the final summary.
    Quiet,
}

/// Where and how `run` works (the CLI side; the spec says what).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Overrides `io.input`.
    pub input: Option<PathBuf>,
    /// Overrides `io.output`.
    pub output: Option<PathBuf>,
    /// Redo outputs that exist.
    pub overwrite: bool,
    pub shard: Option<Shard>,
    /// Manifest file (default [`default_manifest`]: `<output>/conjure-manifest.jsonl`, one per shard).
    pub manifest: Option<PathBuf>,
    pub progress: ProgressMode,
    /// Draws the progress instead of [`ProgressMode`]'s log lines (the terminal bars of the command line).
    pub display: Option<Arc<dyn Progress>>,
    /// Stop request: once `true` (set by a SIGINT / SIGTERM handler, say), the run takes no new batch,
    /// writes and records what is already sampled, discards the batch in the network and returns with
    /// [`RunSummary::interrupted`] set. `None`: the run cannot be stopped this way.
    pub stop: Option<Arc<AtomicBool>>,
    /// The watch around the network inside its tiling ([`NetWatch`]): when given, the stop flag is
    /// checked before every tile batch and progress moves with every tile batch. `run` makes one (from
    /// `stop`); engines given to [`run_with`] pass theirs.
    pub watch: Option<Arc<NetWatch>>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            input: None,
            output: None,
            overwrite: false,
            shard: None,
            manifest: None,
            progress: ProgressMode::Quiet,
            display: None,
            stop: None,
            watch: None,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub restored: usize,
    pub skipped: usize,
    pub failed: usize,
    /// (input, error) of each failure, in input order.
    pub failures: Vec<(PathBuf, String)>,
    pub seconds: f64,
    /// Engine and provider that ran the network.
    pub engine: String,
    pub manifest: PathBuf,
    pub output: PathBuf,
    /// The run was stopped ([`RunOptions::stop`]) with `remaining` inputs not done.
    pub interrupted: bool,
    /// Inputs of this run that were neither restored, skipped nor failed (nonzero only when interrupted);
    /// a rerun with `io.skip_existing` does them.
    pub remaining: usize,
    /// Where the run loop's wall time went.
    pub timing: RunTiming,
    /// Image files of a format conjure does not read (BMP, GIF, WebP, …), not restored (reported by the
    /// first shard only).
    pub unsupported: Vec<PathBuf>,
}

/// Where the run loop's wall time went, seen from the network thread and from the two I/O threads
/// (seconds). `conjure bench` reports the network thread's waits as the I/O it could not hide.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RunTiming {
    /// The network thread waited for the next decoded batch (the first one included).
    pub input_wait: f64,
    /// The network thread waited to hand a sampled batch to the write thread, and, after the last batch,
    /// for the write thread to finish.
    pub output_wait: f64,
    /// The decode thread was busy: decoding, measurements, operators, grouping (wall seconds, on the
    /// rayon pool, overlapping the network).
    pub decode_busy: f64,
    /// The write thread was busy: encoding, atomic writes, manifest records (wall seconds, on the rayon
    /// pool, overlapping the network).
    pub write_busy: f64,
}

/// Plan the run, load the spec's model only when something is left to restore, and run. The network is
/// wrapped in a [`TiledDenoiser`] (tiles of `runtime.tile.size`, overlap `runtime.tile.overlap`,
/// `runtime.batch_size` tiles per network call), so images of any size can be restored; an image of
/// exactly the tile size is one tile with weight 1, i.e. the plain network.
///
/// [`TiledDenoiser`]: crate::model::tiled::TiledDenoiser
pub fn run(spec: &PipelineSpec, opts: &RunOptions) -> Result<RunSummary> {
    spec.check_model_dir()?;
    let plan = Plan::new(spec, opts)?;
    if !plan.has_work() {
        // Everything is done already (or there are no inputs): record the skips without loading the
        // model, which can take minutes (TensorRT engine builds), after the checks a load would make.
        ModelDir::open(spec)?.check(spec)?;
        return with_pool(spec, |pool| execute::execute(spec, opts, plan, None, pool));
    }
    // The watch sits inside the tiling: it sees every tile batch (stop, progress).
    let made = OnceLock::new();
    let restorer = Restorer::load_around(spec, &|net, tiles| {
        made.get_or_init(|| {
            opts.watch
                .clone()
                .unwrap_or_else(|| NetWatch::new(opts.stop.clone(), Some(*tiles)))
        })
        .wrap(net)
    })?;
    let watch = made.into_inner().expect("set when the restorer was built");
    // Before a long run, say how long, and whether the inputs suit the model.
    // (The warm-up measurement only when the estimate is shown.)
    let quiet = opts.progress == ProgressMode::Quiet;
    let model = restorer.model();
    let items: Vec<InputItem> = plan.todo.iter().map(|j| j.item.clone()).collect();
    let est = estimate::plan(
        spec,
        &model.info,
        model.card.domain.as_deref(),
        &items,
        &model.tiles(spec),
        restorer.sampler(),
        (!quiet).then_some(restorer.network().as_ref()),
    )?;
    if !quiet {
        for line in &est.lines {
            tracing::info!("{line}");
        }
    }
    for w in &est.warnings {
        tracing::warn!("{w}");
    }
    let opts = RunOptions {
        watch: Some(watch),
        ..opts.clone()
    };
    let engine = restorer.engine();
    with_pool(spec, |pool| {
        execute::execute(spec, &opts, plan, Some(&engine), pool)
    })
}

/// Run a spec with a given engine (network, sampler, operator factory). Errors returned here mean nothing
/// ran (usage, spec, model, output folder); per-input failures are in the summary and the manifest.
///
/// The network runs on the calling thread; decoding and writing run on two threads of their own that use
/// a pool of `runtime.threads` rayon threads (0 = the global pool), see [`execute`].
pub fn run_with(spec: &PipelineSpec, opts: &RunOptions, engine: &Engine) -> Result<RunSummary> {
    let plan = Plan::new(spec, opts)?;
    with_pool(spec, |pool| {
        execute::execute(spec, opts, plan, Some(engine), pool)
    })
}

/// `f` with the run's pool of `runtime.threads` rayon threads (`None`: the global pool).
fn with_pool<R>(
    spec: &PipelineSpec,
    f: impl FnOnce(Option<&rayon::ThreadPool>) -> Result<R>,
) -> Result<R> {
    // Not `pool.install(run)`: the caller's thread runs the network and blocks on the I/O threads, which
    // in turn wait on the pool; a pool worker blocked that way could starve a one-thread pool.
    let pool = match spec.runtime.threads {
        0 => None,
        n => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("conjure-io-{i}"))
                .build()
                .map_err(|e| Error::Unsupported(format!("cannot start {n} threads: {e}")))?,
        ),
    };
    f(pool.as_ref())
}
