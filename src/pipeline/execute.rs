//! Running a [`Plan`]: the decode, sample and write stages (pipelining, issue 6; stopping, issue 8).
//!
//! The three stages run on their own threads, linked by bounded channels of depth 1: [`decode_stage`]
//! prepares window k+1 while [`sample_stage`] (the caller's thread, the network) samples a batch of window
//! k, and [`write_stage`] encodes, writes and records the batch sampled before it. Decoding and writing
//! use the rayon pool (`runtime.threads`); at most one window is decoded ahead, so memory stays flat in
//! the number of images. Every message (a batch, or an input that failed to decode) passes through the
//! same channels in input-window order, so the manifest lists records in the order a sequential run would,
//! and a batch's composition does not depend on the overlap.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rayon::prelude::*;

use super::manifest::{default_manifest, Manifest, Recorder, Status};
use super::plan::{Job, Plan};
use super::progress::{LogProgress, Progress, QuietProgress, Tracker};
use super::{estimate, output, task_mask, ProgressMode, RunOptions, RunSummary, RunTiming};
use crate::engine::{Engine, Observation};
use crate::error::{Error, Result};
use crate::imageio::{self, Picture};
use crate::operators::{Img, OperatorRef};
use crate::spec::{MaskSpec, PipelineSpec};

/// An input ready for the sampler.
struct Prepared {
    job: Job,
    pic: Picture,
    y: Img,
    op: OperatorRef,
    init_noise: Option<Img>,
    seconds: f64,
}

/// An input that could not be prepared: the job, why, and the seconds spent.
type PrepareFailure = (Job, Error, f64);

/// (x̂, NFE, seconds) of an image the network restored.
type SampleResult = Result<(Img, usize, f64)>;

/// What the decode thread hands the network thread, in input-window order.
enum Decoded {
    /// An input that could not be prepared (recorded as failed when its turn comes).
    Failed(Box<PrepareFailure>),
    /// Same-shape inputs for one sampler call.
    Batch(Vec<Prepared>),
}

/// What the network thread hands the write thread, in the same order.
enum Sampled {
    Failed(Box<PrepareFailure>),
    /// The batch and, per image, (x̂, NFE, seconds) or the error.
    Batch(Vec<Prepared>, Vec<SampleResult>),
}

/// Shared state of one run's stages.
struct Stages<'a> {
    spec: &'a PipelineSpec,
    /// The output folder, canonical: nothing is written outside it.
    out_root: &'a Path,
    engine: &'a Engine<'a>,
    /// Operators for masks shared by all images, by x shape.
    op_cache: Mutex<HashMap<[usize; 3], OperatorRef>>,
    init_noise: Option<ndarray::ArrayD<f64>>,
    /// [`RunOptions::stop`]: checked before every network evaluation.
    stop: Option<&'a AtomicBool>,
    pool: Option<&'a rayon::ThreadPool>,
}

fn is_stopped(stop: Option<&AtomicBool>) -> bool {
    stop.is_some_and(|s| s.load(Ordering::SeqCst))
}

/// `f` on `pool` (or the global rayon pool).
fn on_pool<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

/// The display the options ask for.
fn display(opts: &RunOptions) -> Arc<dyn Progress> {
    match (&opts.display, opts.progress) {
        (Some(d), _) => Arc::clone(d),
        (None, ProgressMode::Log) => Arc::new(LogProgress::default()),
        (None, ProgressMode::Quiet) => Arc::new(QuietProgress),
    }
}

/// Record what the plan settled, then restore its `todo` with `engine` (`None` only when there is
/// nothing to restore). Errors mean nothing ran; per-input failures are in the summary and manifest.
pub(crate) fn execute(
    spec: &PipelineSpec,
    opts: &RunOptions,
    plan: Plan,
    engine: Option<&Engine>,
    pool: Option<&rayon::ThreadPool>,
) -> Result<RunSummary> {
    let t0 = Instant::now();
    let manifest_path = opts
        .manifest
        .clone()
        .unwrap_or_else(|| default_manifest(&plan.output, opts.shard));
    let manifest = Manifest::open(&manifest_path)?;
    let init_noise = spec
        .sampler
        .init_noise
        .as_ref()
        .map(|p| imageio::read_npy(p))
        .transpose()?;
    // NFE = network evaluations per image (forwards + VJPs), counted as the manifest counts it.
    let nfe = match engine {
        Some(e) => estimate::engine_evaluations(spec, e)?.nfe(),
        None => 0,
    };
    let tracker = Tracker::new(display(opts), plan.inputs, nfe);
    if let Some(w) = &opts.watch {
        let t = tracker.clone();
        w.listen(Arc::new(move |_| t.tick()));
    }
    let recorder = Recorder {
        manifest,
        tracker: tracker.clone(),
        network: engine.map(|e| e.denoiser),
        spec_hash: spec.hash(),
        settings_hash: spec.settings_hash(),
    };
    let mut summary = RunSummary {
        engine: recorder.engine(),
        manifest: manifest_path,
        output: plan.output.clone(),
        ..Default::default()
    };
    for (job, status, error) in plan.settled() {
        recorder.record(&mut summary, job, status, error.map(str::to_owned), 0, 0.0)?;
    }
    summary.unsupported = plan.unsupported;
    let todo = plan.todo;
    let todo_len = todo.len();
    let (mut summary, done, timing) = match engine {
        Some(engine) if !todo.is_empty() => {
            let stages = Stages {
                spec,
                out_root: &plan.out_root,
                engine,
                op_cache: Mutex::new(HashMap::new()),
                init_noise,
                stop: opts.stop.as_deref(),
                pool,
            };
            // `sampler.samples` = K restores each image K times, the draws sharing network calls: each
            // of the nfe / K evaluations of a draw takes `calls_per_evaluation` watched calls.
            let k = spec.sampler.samples.max(1);
            let calls = |images: usize, x_shape: [usize; 3]| -> usize {
                let tiles = opts.watch.as_ref().and_then(|w| w.tiles());
                let per_sampler_call = |problems: usize| match tiles {
                    Some(cfg) => crate::model::tiled::TilePlan::new(x_shape[1], x_shape[2], cfg)
                        .map(|plan| (problems * plan.len()).div_ceil(cfg.batch_size.max(1)))
                        .unwrap_or(1),
                    None => 1,
                };
                estimate::calls_per_evaluation(spec, images, per_sampler_call) * (nfe / k)
            };
            stages.run(&todo, &recorder, summary, &calls)?
        }
        _ => (summary, 0, RunTiming::default()),
    };
    tracker.finish();
    if let Some(w) = &opts.watch {
        w.clear();
    }
    summary.remaining = todo_len - done;
    summary.interrupted = summary.remaining > 0 && is_stopped(opts.stop.as_deref());
    summary.timing = timing;
    summary.seconds = t0.elapsed().as_secs_f64();
    // Now that images went through it, the engine can say whether it tiled them.
    summary.engine = recorder.engine();
    Ok(summary)
}

impl Stages<'_> {
    /// The three stages over `todo` (see the module docs): (summary, inputs recorded, timing).
    fn run(
        &self,
        todo: &[Job],
        recorder: &Recorder,
        summary: RunSummary,
        calls: &(dyn Fn(usize, [usize; 3]) -> usize + Sync),
    ) -> Result<(RunSummary, usize, RunTiming)> {
        std::thread::scope(|s| -> Result<_> {
            let (decoded_tx, decoded_rx) = sync_channel::<Decoded>(1);
            let (sampled_tx, sampled_rx) = sync_channel::<Sampled>(1);
            let decoder = s.spawn(move || self.decode_stage(todo, decoded_tx));
            let writer = s.spawn(move || self.write_stage(sampled_rx, recorder, summary));
            let mut timing = self.sample_stage(decoded_rx, sampled_tx, &recorder.tracker, calls);
            let t = Instant::now();
            let written = writer
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            timing.output_wait += t.elapsed().as_secs_f64();
            timing.decode_busy = decoder
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            let (summary, done, write_busy) = written?;
            timing.write_busy = write_busy;
            Ok((summary, done, timing))
        })
    }

    /// Decode thread: window by window (at most one window ahead of the network), failures first, then
    /// same-shape batches in shape order, order within a group following the input order. Returns the
    /// seconds it was busy.
    fn decode_stage(&self, todo: &[Job], tx: SyncSender<Decoded>) -> f64 {
        let batch_size = self.spec.runtime.batch_size.max(1);
        let window = (batch_size * 4).max(32);
        let mut busy = 0.0;
        for jobs in todo.chunks(window) {
            if is_stopped(self.stop) {
                break;
            }
            let t = Instant::now();
            let prepared: Vec<Result<Prepared, Box<PrepareFailure>>> = on_pool(self.pool, || {
                jobs.par_iter()
                    .map(|job| self.prepare(job.clone()))
                    .collect()
            });
            let mut messages = Vec::new();
            let mut groups: BTreeMap<[usize; 3], Vec<Prepared>> = BTreeMap::new();
            for p in prepared {
                match p {
                    Ok(p) => groups.entry(p.op.x_shape()).or_default().push(p),
                    Err(failed) => messages.push(Decoded::Failed(failed)),
                }
            }
            for members in groups.into_values() {
                let mut members = members.into_iter().peekable();
                while members.peek().is_some() {
                    messages.push(Decoded::Batch(members.by_ref().take(batch_size).collect()));
                }
            }
            busy += t.elapsed().as_secs_f64();
            for m in messages {
                if tx.send(m).is_err() {
                    return busy; // the network thread stopped
                }
            }
        }
        busy
    }

    /// Network thread (the caller's): sample each batch as it comes; an input that failed to decode
    /// passes through in its place in the order. Once stopped, nothing new is taken and a batch the stop
    /// cut short is dropped unrecorded (a rerun does it). Returns the time it waited on the others.
    fn sample_stage(
        &self,
        rx: Receiver<Decoded>,
        tx: SyncSender<Sampled>,
        tracker: &Tracker,
        calls: &(dyn Fn(usize, [usize; 3]) -> usize + Sync),
    ) -> RunTiming {
        let mut timing = RunTiming::default();
        loop {
            let t = Instant::now();
            let Ok(message) = rx.recv() else {
                break;
            };
            timing.input_wait += t.elapsed().as_secs_f64();
            if is_stopped(self.stop) {
                break;
            }
            let sampled = match message {
                Decoded::Failed(failed) => Sampled::Failed(failed),
                Decoded::Batch(batch) => {
                    let refs: Vec<&Prepared> = batch.iter().collect();
                    let shape = refs[0].op.x_shape();
                    tracker.begin_batch(refs.len(), (shape[1], shape[2]), calls(refs.len(), shape));
                    let results = self.sample(&refs);
                    tracker.end_batch();
                    drop(refs);
                    if is_stopped(self.stop) && results.iter().any(|r| r.is_err()) {
                        break;
                    }
                    Sampled::Batch(batch, results)
                }
            };
            let t = Instant::now();
            if tx.send(sampled).is_err() {
                break; // the write thread stopped on an error, returned by `run`
            }
            timing.output_wait += t.elapsed().as_secs_f64();
        }
        timing
    }

    /// Write thread: encode + write each sampled batch on the pool, then record it in batch order.
    /// Returns (summary, inputs recorded, seconds busy).
    fn write_stage(
        &self,
        rx: Receiver<Sampled>,
        recorder: &Recorder,
        mut summary: RunSummary,
    ) -> Result<(RunSummary, usize, f64)> {
        let (mut done, mut busy) = (0usize, 0.0);
        for message in rx {
            let t = Instant::now();
            match message {
                Sampled::Failed(failed) => {
                    let (job, e, secs) = *failed;
                    let msg = Some(e.to_string());
                    recorder.record(&mut summary, &job, Status::Failed, msg, 0, secs)?;
                    done += 1;
                }
                Sampled::Batch(batch, sampled) => {
                    let written: Vec<Outcome> = on_pool(self.pool, || {
                        batch
                            .par_iter()
                            .zip(sampled.into_par_iter())
                            .map(|(p, r)| self.write(p, r))
                            .collect()
                    });
                    for (p, o) in batch.iter().zip(written) {
                        let job = &p.job;
                        match o {
                            Ok((nfe, secs)) => recorder.record(
                                &mut summary,
                                job,
                                Status::Restored,
                                None,
                                nfe,
                                secs,
                            )?,
                            Err((msg, secs)) => recorder.record(
                                &mut summary,
                                job,
                                Status::Failed,
                                Some(msg),
                                0,
                                secs,
                            )?,
                        }
                        done += 1;
                    }
                }
            }
            busy += t.elapsed().as_secs_f64();
        }
        Ok((summary, done, busy))
    }

    /// The x shape restored from a measurement of (h, w).
    fn x_shape(&self, h: usize, w: usize) -> [usize; 3] {
        let s = self.spec.task.scale;
        [self.engine.model.channels, h * s, w * s]
    }

    fn operator(&self, rel: &Path, seed: u64, x_shape: [usize; 3]) -> Result<OperatorRef> {
        let shared = self.spec.task.mask.as_ref().is_none_or(MaskSpec::is_shared);
        if shared {
            if let Some(op) = self.op_cache.lock().expect("cache").get(&x_shape) {
                return Ok(op.clone());
            }
        }
        let mask = task_mask(self.spec, rel, seed, x_shape[1], x_shape[2])?;
        let op = (self.engine.build_operator)(&self.spec.degradation(mask)?, x_shape)?;
        if shared {
            self.op_cache
                .lock()
                .expect("cache")
                .insert(x_shape, op.clone());
        }
        Ok(op)
    }

    /// Decode an input and build its measurement and operator.
    fn prepare(&self, job: Job) -> Result<Prepared, Box<PrepareFailure>> {
        let t0 = Instant::now();
        let r = (|| -> Result<(Picture, Img, OperatorRef, Option<Img>)> {
            let pic = imageio::decode(&job.item.path)?;
            let (h, w) = pic.size();
            let x_shape = self.x_shape(h, w);
            if let Some((mh, mw)) = self.engine.model.size {
                if (mh, mw) != (x_shape[1], x_shape[2]) {
                    return Err(Error::Unsupported(format!(
                        "image {}x{} restores to {}x{}, but the model takes {mw}x{mh} and tiled \
                         restoration is not available",
                        w, h, x_shape[2], x_shape[1]
                    )));
                }
            }
            let op = self.operator(&job.item.rel, job.seed, x_shape)?;
            let yc = op.y_shape()[0];
            let y = imageio::to_model(
                &imageio::to_channels(&pic.color, yc)?,
                self.engine.model.value_range,
            );
            // Checked here, per file, so a bad input fails alone instead of failing its batch.
            crate::samplers::check_measurement(&op, &y)?;
            let z = match &self.init_noise {
                None => None,
                Some(a) => Some(pick_init_noise(a, job.item.index, x_shape)?),
            };
            Ok((pic, y, op, z))
        })();
        let secs = t0.elapsed().as_secs_f64();
        match r {
            Ok((pic, y, op, init_noise)) => Ok(Prepared {
                job,
                pic,
                y,
                op,
                init_noise,
                seconds: secs,
            }),
            Err(e) => Err(Box::new((job, e, secs))),
        }
    }

    /// Run the sampler on a batch; on a batch error, retry each image alone so one bad input cannot fail
    /// the others. Returns (x̂, NFE per image, seconds per image) or the error, per image.
    fn sample(&self, batch: &[&Prepared]) -> Vec<SampleResult> {
        let t0 = Instant::now();
        let observations: Vec<Observation> = batch
            .iter()
            .map(|p| Observation {
                op: &p.op,
                y: &p.y,
                seed: p.job.seed,
                init_noise: p.init_noise.as_ref(),
            })
            .collect();
        match self.engine.restore(self.spec, &observations, self.stop) {
            Ok(r) => {
                let per = t0.elapsed().as_secs_f64() / batch.len() as f64;
                r.images.into_iter().map(|x| Ok((x, r.nfe, per))).collect()
            }
            Err(e) if batch.len() == 1 => vec![Err(e)],
            // Stopped: the batch is discarded, no retry.
            Err(_) if is_stopped(self.stop) => {
                batch.iter().map(|_| Err(Error::Interrupted)).collect()
            }
            Err(_) => batch
                .iter()
                .flat_map(|p| self.sample(std::slice::from_ref(p)))
                .collect(),
        }
    }

    /// Encode and write one sampled image: (NFE, seconds) or (error, seconds).
    fn write(&self, p: &Prepared, r: SampleResult) -> Outcome {
        let t = Instant::now();
        match r {
            Ok((x, nfe, secs)) => output::write_restored(
                self.spec,
                self.out_root,
                &p.job,
                &p.pic,
                &p.op,
                &x,
                self.engine.model.value_range,
            )
            .map(|_| (nfe, p.seconds + secs + t.elapsed().as_secs_f64()))
            .map_err(|e| (e.to_string(), p.seconds + secs)),
            Err(e) => Err((e.to_string(), p.seconds)),
        }
    }
}

/// (NFE, seconds) of a restored image, or (error, seconds) of a failed one.
type Outcome = std::result::Result<(usize, f64), (String, f64)>;

/// Select image `index` (mod N) of an (N,C,H,W) init-noise array, or the (C,H,W) array itself.
fn pick_init_noise(a: &ndarray::ArrayD<f64>, index: usize, x_shape: [usize; 3]) -> Result<Img> {
    let z = match a.ndim() {
        3 => a.clone(),
        4 if a.shape()[0] > 0 => a
            .index_axis(ndarray::Axis(0), index % a.shape()[0])
            .to_owned(),
        _ => {
            return Err(Error::Shape(format!(
                "init_noise has shape {:?} (expected (N,C,H,W) or (C,H,W))",
                a.shape()
            )))
        }
    };
    let z = z
        .into_dimensionality::<ndarray::Ix3>()
        .map_err(|e| Error::Shape(e.to_string()))?;
    if z.shape() != &x_shape[..] {
        return Err(Error::Shape(format!(
            "init_noise {:?}, image {:?}",
            z.shape(),
            x_shape
        )));
    }
    Ok(z)
}
