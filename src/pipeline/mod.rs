//! The batch pipeline behind `conjure run` and `conjure degrade` (docs/cli.md).
//!
//! `run`: discover the inputs (a file or a directory walked recursively, image files only, sorted by
//! relative path), keep this shard's share (by position in the sorted list), skip outputs that already
//! exist (`io.skip_existing`, unless `--overwrite`), then work through the rest in windows: decode and
//! prepare on rayon, group images of the same shape into batches of `runtime.batch_size` (one sampler
//! call, one network call per step, for the whole batch), and encode + write on rayon. Every output is
//! written atomically (temporary file in the output folder, fsync, rename), so a killed run leaves only
//! complete outputs plus temporaries that the next run removes. One failing input is recorded in the
//! manifest and the run goes on.
//!
//! **Pipelining (issue 6).** The three stages run on their own threads, linked by bounded channels of
//! depth 1: a *decode* thread prepares window k+1 while the *network* thread (the caller's) samples a
//! batch of window k, and a *write* thread encodes, writes and records the batch sampled before it. The
//! decode and write stages use the rayon pool (`runtime.threads`); at most one window is decoded ahead,
//! so memory stays flat in the number of images. Every message (a batch, or an input that failed to
//! decode) passes through the same channels in input-window order, so the manifest lists records in the
//! same order as a sequential run would, and a batch's composition does not depend on the overlap. The
//! time the network thread waits on the other two is reported in [`RunTiming`].
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

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;
use serde::Serialize;

use crate::error::{Error, Result};
use crate::imageio::{self, EncodeOptions, FileFormat, Picture};
use crate::model::card::ModelCard;
use crate::model::tiled::{TileConfig, TiledDenoiser};
use crate::model::{Denoiser, JacobianMode, ModelKind, Network, Parameterization};
use crate::operators::{Degradation, Img, OperatorRef};
use crate::samplers::{ModelSchedule, Problem, Sampler};
use crate::schedules::TimeInput;
use crate::spec::{image_seed, BitDepth, MaskSpec, OutputFormat, PipelineSpec, TileSize};

pub mod consistency;
pub mod estimate;
mod resume;
mod watch;

pub use watch::{Listener, NetWatch};

/// What the pipeline needs to know about a model.
#[derive(Debug, Clone)]
pub struct ModelInfo {
    pub kind: ModelKind,
    pub param: Parameterization,
    pub time: TimeInput,
    pub schedule: ModelSchedule,
    pub channels: usize,
    /// The network's fixed image size (height, width); `None` = any size (analytic denoisers).
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
    if name != crate::samplers::SamplerName::Pinv && needs_flow != (kind == ModelKind::Flow) {
        return Err(Error::Spec {
            location: String::new(),
            message: format!(
                "sampler {} needs a {} model, but {} is a {} model",
                name.as_str(),
                if needs_flow { "flow" } else { "diffusion" },
                spec.model.display(),
                if kind == ModelKind::Flow {
                    "flow"
                } else {
                    "diffusion"
                }
            ),
        });
    }
    if spec.sampler.config.jacobian == JacobianMode::Exact && !has_vjp {
        return Err(Error::Spec {
            location: String::new(),
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

/// The model side of a run: network, sampler and how to build operators.
pub struct Engine<'a> {
    pub model: ModelInfo,
    pub denoiser: &'a dyn Denoiser,
    pub sampler: &'a dyn Sampler,
    pub build_operator: &'a OperatorFactory,
}

/// `--shard I/N`: this process handles the inputs whose position in the sorted list ≡ I (mod N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Shard {
    /// Parse `I/N` with 0 ≤ I < N.
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || Error::invalid("shard", s, "I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let index: usize = i.trim().parse().map_err(|_| bad())?;
        let count: usize = n.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }

    /// The shard of a job array: `(SLURM_ARRAY_TASK_ID − SLURM_ARRAY_TASK_MIN) / SLURM_ARRAY_TASK_STEP`
    /// of `SLURM_ARRAY_TASK_COUNT` (the step is 1 unless the array was given as `MIN-MAX:STEP`), else
    /// `JOB_COMPLETION_INDEX` of `CONJURE_SHARD_COUNT` (Kubernetes Indexed Job). `None` when neither is
    /// set; an error when only one variable of a pair is set or the index is not below the count.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>> {
        let num = |k: &str| -> Result<Option<usize>> {
            match var(k) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| Error::invalid(k, v, "a non-negative integer")),
            }
        };
        let make = |index: usize, count: usize, what: &str| {
            if count == 0 || index >= count {
                Err(Error::invalid(
                    what,
                    format!("{index}/{count}"),
                    "an index below the task count (and a count of at least 1)",
                ))
            } else {
                Ok(Some(Shard { index, count }))
            }
        };
        let half = |set: &str, unset: &str| {
            Err(Error::invalid(
                set,
                var(set).unwrap_or_default(),
                format!("to be set together with {unset}, which is not set"),
            ))
        };
        match (num("SLURM_ARRAY_TASK_ID")?, num("SLURM_ARRAY_TASK_COUNT")?) {
            (Some(id), Some(count)) => {
                let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
                let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
                let offset = id.checked_sub(min).ok_or_else(|| {
                    Error::invalid(
                        "SLURM_ARRAY_TASK_ID",
                        id,
                        format!(">= SLURM_ARRAY_TASK_MIN {min}"),
                    )
                })?;
                if offset % step != 0 {
                    return Err(Error::invalid(
                        "SLURM_ARRAY_TASK_ID",
                        id,
                        format!(
                            "SLURM_ARRAY_TASK_MIN {min} plus a multiple of SLURM_ARRAY_TASK_STEP {step} \
                             (use --shard I/N for arrays given as lists)"
                        ),
                    ));
                }
                return make(offset / step, count, "slurm array task");
            }
            (Some(_), None) => return half("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
            (None, Some(_)) => return half("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID"),
            (None, None) => {}
        }
        match (num("JOB_COMPLETION_INDEX")?, num("CONJURE_SHARD_COUNT")?) {
            (Some(index), Some(count)) => make(index, count, "job completion index"),
            (Some(_), None) => half("JOB_COMPLETION_INDEX", "CONJURE_SHARD_COUNT"),
            (None, Some(_)) => half("CONJURE_SHARD_COUNT", "JOB_COMPLETION_INDEX"),
            (None, None) => Ok(None),
        }
    }
}

/// The manifest a run writes when no `--manifest` is given: `<output>/conjure-manifest.jsonl`, or for a
/// shard `<output>/conjure-manifest.shard-I-of-N.jsonl`, so shards sharing an output folder never write
/// one file (`conjure manifest merge` reads them all back as one audit).
pub fn default_manifest(output: &Path, shard: Option<Shard>) -> PathBuf {
    match shard {
        None => output.join("conjure-manifest.jsonl"),
        Some(s) => output.join(format!(
            "conjure-manifest.shard-{}-of-{}.jsonl",
            s.index, s.count
        )),
    }
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// indicatif bars (a terminal).
    Bars,
    /// One log line per image (cron, CI).
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

/// One input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputItem {
    pub path: PathBuf,
    /// Relative to the input root (the directory given, or the file's folder).
    pub rel: PathBuf,
    /// Position in the sorted input list (before sharding).
    pub index: usize,
}

/// The image files under `input` (or `input` itself), sorted by relative path. Hidden files and
/// conjure's temporaries are skipped, and so is `exclude` (the output folder when it lies inside the
/// input). The first problem met in the tree (see [`discover_all`]) is an error.
pub fn discover(input: &Path, exclude: Option<&Path>) -> Result<Vec<InputItem>> {
    let (items, mut problems) = discover_all(input, exclude)?;
    match problems.is_empty() {
        true => Ok(items),
        false => Err(problems.swap_remove(0).1),
    }
}

/// A part of the input tree that could not be read: the path and why.
pub type InputProblem = (PathBuf, Error);

/// Like [`discover`], but problems inside the tree do not stop the walk: symbolic-link loops, folders
/// that cannot be read, and image-named entries that cannot be examined (e.g. a dangling symbolic link
/// `x.png`) are returned beside the items, sorted by path. Dangling links with other names are ignored,
/// as non-image files are. An unreadable `input` itself is still an error.
pub fn discover_all(
    input: &Path,
    exclude: Option<&Path>,
) -> Result<(Vec<InputItem>, Vec<InputProblem>)> {
    let d = discover_tree(input, exclude)?;
    Ok((d.items, d.problems))
}

/// What [`discover_tree`] found under an input.
#[derive(Debug, Default)]
pub struct Discovered {
    pub items: Vec<InputItem>,
    pub problems: Vec<InputProblem>,
    /// Image files of a format conjure does not read (BMP, GIF, WebP, …), sorted; not restored, counted in
    /// the run's summary.
    pub unsupported: Vec<PathBuf>,
}

/// Extensions of image formats that are not read; such files are counted, not silently ignored.
const UNSUPPORTED_IMAGES: &[&str] = &[
    "bmp", "gif", "webp", "avif", "heic", "heif", "jp2", "j2k", "jxl", "ppm", "pgm", "pbm", "pnm",
    "tga", "ico", "dds", "exr", "hdr", "qoi",
];

/// Whether `path` names an image of a format conjure does not read.
pub fn is_unsupported_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| UNSUPPORTED_IMAGES.contains(&e.to_ascii_lowercase().as_str()))
}

/// [`discover_all`], plus the image files of unsupported formats.
pub fn discover_tree(input: &Path, exclude: Option<&Path>) -> Result<Discovered> {
    let meta = std::fs::metadata(input).map_err(|e| Error::io(input, e))?;
    if meta.is_file() {
        let name = input
            .file_name()
            .map(PathBuf::from)
            .ok_or_else(|| Error::invalid("input", input.display(), "a file or directory"))?;
        if !imageio::is_image_path(input) {
            return Err(Error::invalid(
                "input",
                input.display(),
                "an image file (png, tif, tiff, jpg, jpeg) or a directory",
            ));
        }
        return Ok(Discovered {
            items: vec![InputItem {
                path: input.to_path_buf(),
                rel: name,
                index: 0,
            }],
            ..Default::default()
        });
    }
    let exclude = exclude.and_then(|e| e.canonicalize().ok());
    let mut items = Vec::new();
    let mut problems: Vec<InputProblem> = Vec::new();
    let mut unsupported = Vec::new();
    let walker = walkdir::WalkDir::new(input)
        .follow_links(true)
        .sort_by_file_name()
        .into_iter()
        .filter_entry(|e| {
            let hidden =
                e.depth() > 0 && e.file_name().to_str().is_some_and(|n| n.starts_with('.'));
            let excluded = exclude.as_ref().is_some_and(|x| {
                e.file_type().is_dir() && e.path().canonicalize().is_ok_and(|p| &p == x)
            });
            !hidden && !excluded
        });
    for entry in walker {
        let entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let p = e.path().unwrap_or(input).to_path_buf();
                let message = if let Some(a) = e.loop_ancestor() {
                    format!(
                        "symbolic link loop: {} points to its ancestor {}; not followed",
                        p.display(),
                        a.display()
                    )
                } else {
                    let dir = p.is_dir();
                    if !dir && !imageio::is_image_path(&p) {
                        continue;
                    }
                    let what = if dir {
                        "cannot read folder"
                    } else if std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_symlink()) {
                        "broken symbolic link"
                    } else {
                        "cannot read"
                    };
                    let cause = e
                        .io_error()
                        .map(|io| io.to_string())
                        .unwrap_or_else(|| e.to_string());
                    format!("{what}: {cause}")
                };
                let err = Error::io(&p, std::io::Error::other(message));
                problems.push((p, err));
                continue;
            }
        };
        if !entry.file_type().is_file() {
            continue;
        }
        if !imageio::is_image_path(entry.path()) {
            if is_unsupported_image(entry.path()) && !imageio::is_temp_path(entry.path()) {
                unsupported.push(entry.path().to_path_buf());
            }
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(input)
            .expect("walkdir yields paths under the root")
            .to_path_buf();
        items.push(InputItem {
            path: entry.path().to_path_buf(),
            rel,
            index: 0,
        });
    }
    items.sort_by(|a, b| a.rel.components().cmp(b.rel.components()));
    for (i, it) in items.iter_mut().enumerate() {
        it.index = i;
    }
    problems.sort_by(|a, b| a.0.cmp(&b.0));
    unsupported.sort();
    Ok(Discovered {
        items,
        problems,
        unsupported,
    })
}

/// The output path of an input: the same relative path under `output`, with the extension of the output
/// format (`same` keeps the input's extension).
pub fn output_path(output: &Path, rel: &Path, format: OutputFormat) -> PathBuf {
    let p = output.join(rel);
    match format {
        OutputFormat::Same => p,
        OutputFormat::Png => p.with_extension("png"),
        OutputFormat::Tiff => p.with_extension("tif"),
        OutputFormat::Jpeg => p.with_extension("jpg"),
        OutputFormat::Npy => p.with_extension("npy"),
    }
}

/// Refuse an output that could land outside the output folder `root` (canonical): a relative input
/// path with anything but plain names (`..`, a root), or an output whose deepest existing folder resolves
/// (through symbolic links) outside `root`. Folders created below that one are new, so they are inside.
///
/// Race-free against other writers creating the same folders (issue 16): each folder is examined with
/// `symlink_metadata` *before* it is resolved, so a folder that does not exist yet is simply skipped,
/// and one that exists (or was just created by another thread) resolves. Only an entry that exists and
/// is a link that cannot be resolved is called a broken link.
fn check_inside(root: &Path, rel: &Path, out: &Path) -> Result<()> {
    check_plain(root, rel, out)?;
    let mut dir = out.parent();
    while let Some(d) = dir {
        match std::fs::symlink_metadata(d) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => dir = d.parent(),
            Err(e) => return Err(outside(root, out, format!("{}: {e}", d.display()))),
            Ok(_) => return resolves_inside(root, out, d).map(|_| ()),
        }
    }
    Err(outside(
        root,
        out,
        "no folder of the output path exists".into(),
    ))
}

/// Create the folders of `out` one by one below the output folder `root` (canonical), resolving each
/// right after it is created (or found), and refuse as soon as one resolves outside `root` (a symbolic
/// link), before anything is created through it. Creating first and resolving second cannot race with
/// another thread creating the same folder: `create_dir` of an existing folder is not an error.
fn create_inside(root: &Path, rel: &Path, out: &Path) -> Result<()> {
    check_plain(root, rel, out)?;
    let mut dir = root.to_path_buf();
    if let Some(parent) = rel.parent() {
        for c in parent.components() {
            let next = dir.join(c);
            match std::fs::create_dir(&next) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::io(&next, e)),
            }
            dir = resolves_inside(root, out, &next)?;
            if !dir.is_dir() {
                return Err(Error::io(
                    &next,
                    std::io::Error::other("a file is in the way of the output folder"),
                ));
            }
        }
    }
    Ok(())
}

fn outside(root: &Path, out: &Path, why: String) -> Error {
    Error::io(
        out,
        std::io::Error::other(format!(
            "refusing to write outside the output folder {}: {why}",
            root.display()
        )),
    )
}

/// A relative input path of plain names only (no `..`, no root).
fn check_plain(root: &Path, rel: &Path, out: &Path) -> Result<()> {
    match rel
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
    {
        true => Ok(()),
        false => Err(outside(
            root,
            out,
            format!("the relative path {} is not plain", rel.display()),
        )),
    }
}

/// The canonical path of the existing folder `d`, if it lies inside `root`.
fn resolves_inside(root: &Path, out: &Path, d: &Path) -> Result<PathBuf> {
    match d.canonicalize() {
        Ok(real) if real.starts_with(root) => Ok(real),
        Ok(real) => Err(outside(
            root,
            out,
            format!(
                "{} resolves to {} (a symbolic link)",
                d.display(),
                real.display()
            ),
        )),
        Err(e) => Err(outside(
            root,
            out,
            format!("{} cannot be resolved (a broken link?): {e}", d.display()),
        )),
    }
}

/// One line of the manifest (docs/cli.md).
#[derive(Debug, Clone, Serialize)]
pub struct ManifestRecord {
    pub input: String,
    pub output: String,
    /// `restored` | `skipped` | `failed`.
    pub status: &'static str,
    pub error: Option<String>,
    pub seed: u64,
    /// Network evaluations per image (forwards + VJPs, finite-difference forwards included).
    pub nfe: usize,
    /// Engine and provider that ran the network.
    pub engine: String,
    pub seconds: f64,
    pub spec_hash: String,
    /// [`PipelineSpec::settings_hash`]: the settings that decide the output's bytes. A rerun that would
    /// skip this output with other settings is refused.
    pub settings_hash: String,
    /// Unix time (seconds) the record was written.
    pub finished_at: u64,
}

/// The append-only JSONL manifest. Each record is one `write` of a whole line to a file opened with
/// `O_APPEND`, under an exclusive advisory lock held for that write only, so even processes that were
/// given one `--manifest` never interleave lines (by default every shard has its own file, see
/// [`default_manifest`]).
struct Manifest {
    file: Mutex<std::fs::File>,
    path: PathBuf,
}

impl Manifest {
    fn open(path: &Path) -> Result<Self> {
        if let Some(d) = path.parent() {
            if !d.as_os_str().is_empty() {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Manifest {
            file: Mutex::new(file),
            path: path.to_path_buf(),
        })
    }

    fn append(&self, rec: &ManifestRecord) -> Result<()> {
        let mut line = serde_json::to_string(rec).expect("record serializes");
        line.push('\n');
        let mut f = self.file.lock().expect("manifest lock");
        f.lock().map_err(|e| Error::io(&self.path, e))?;
        let written = f.write_all(line.as_bytes()).and_then(|_| f.flush());
        let unlocked = f.unlock();
        written.and(unlocked).map_err(|e| Error::io(&self.path, e))
    }
}

fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An input ready for the sampler.
struct Prepared {
    job: Job,
    pic: Picture,
    y: Img,
    op: OperatorRef,
    init_noise: Option<Img>,
    seconds: f64,
}

#[derive(Debug, Clone)]
struct Job {
    item: InputItem,
    out: PathBuf,
    seed: u64,
}

/// An input that could not be prepared: the job, why, and the seconds spent.
type PrepareFailure = (Job, Error, f64);

/// Shared state of one run.
struct Ctx<'a> {
    spec: &'a PipelineSpec,
    /// The output folder, canonical: nothing is written outside it.
    out_root: PathBuf,
    engine: &'a Engine<'a>,
    /// Operators for masks shared by all images, by x shape.
    op_cache: Mutex<HashMap<[usize; 3], OperatorRef>>,
    init_noise: Option<ndarray::ArrayD<f64>>,
    /// [`RunOptions::stop`]: checked before every network evaluation.
    stop: Option<&'a AtomicBool>,
}

/// The run's network, refusing every evaluation once the run is stopped, so that a stop cuts a batch
/// short at its next network call instead of after its last step (the batch is then discarded).
struct Stoppable<'a> {
    inner: &'a dyn Denoiser,
    stop: &'a AtomicBool,
}

impl Stoppable<'_> {
    fn check(&self) -> Result<()> {
        match self.stop.load(Ordering::SeqCst) {
            true => Err(Error::Unsupported("the run was stopped".into())),
            false => Ok(()),
        }
    }
}

impl Denoiser for Stoppable<'_> {
    fn engine(&self) -> String {
        self.inner.engine()
    }
    fn predict(&self, x: ndarray::ArrayView4<f64>, t: &[f64]) -> Result<ndarray::Array4<f64>> {
        self.check()?;
        self.inner.predict(x, t)
    }
    fn predict_for_vjp(
        &self,
        x: ndarray::ArrayView4<f64>,
        t: &[f64],
    ) -> Result<ndarray::Array4<f64>> {
        self.check()?;
        self.inner.predict_for_vjp(x, t)
    }
    fn has_vjp(&self) -> bool {
        self.inner.has_vjp()
    }
    fn vjp(
        &self,
        x: ndarray::ArrayView4<f64>,
        t: &[f64],
        cot: ndarray::ArrayView4<f64>,
    ) -> Result<(ndarray::Array4<f64>, ndarray::Array4<f64>)> {
        self.check()?;
        self.inner.vjp(x, t, cot)
    }
}

impl Ctx<'_> {
    /// The x shape restored from a measurement of (h, w).
    fn x_shape(&self, h: usize, w: usize) -> [usize; 3] {
        let s = self.spec.task.scale;
        [self.engine.model.channels, h * s, w * s]
    }

    /// The mask (1 = known) of an image with x size (h, w), for inpainting.
    fn mask(
        &self,
        rel: &Path,
        seed: u64,
        h: usize,
        w: usize,
    ) -> Result<Option<ndarray::Array2<f64>>> {
        task_mask(self.spec, rel, seed, h, w)
    }

    fn operator(&self, rel: &Path, seed: u64, x_shape: [usize; 3]) -> Result<OperatorRef> {
        let shared = self.spec.task.mask.as_ref().is_none_or(MaskSpec::is_shared);
        if shared {
            if let Some(op) = self.op_cache.lock().expect("cache").get(&x_shape) {
                return Ok(op.clone());
            }
        }
        let mask = self.mask(rel, seed, x_shape[1], x_shape[2])?;
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
            if y.shape() != &op.y_shape()[..] {
                return Err(Error::Shape(format!(
                    "measurement {:?}, operator {} expects {:?}",
                    y.shape(),
                    op.name(),
                    op.y_shape()
                )));
            }
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
    fn sample(&self, batch: &[&Prepared]) -> Vec<Result<(Img, usize, f64)>> {
        let t0 = Instant::now();
        match self.sample_once(batch) {
            Ok((xs, nfe)) => {
                let per = t0.elapsed().as_secs_f64() / batch.len() as f64;
                xs.into_iter().map(|x| Ok((x, nfe, per))).collect()
            }
            Err(e) if batch.len() == 1 => vec![Err(e)],
            // Stopped: the batch is discarded, no retry.
            Err(_) if is_stopped(self.stop) => batch
                .iter()
                .map(|_| Err(Error::Unsupported("the run was stopped".into())))
                .collect(),
            Err(_) => batch
                .iter()
                .flat_map(|p| self.sample(std::slice::from_ref(p)))
                .collect(),
        }
    }

    fn sample_once(&self, batch: &[&Prepared]) -> Result<(Vec<Img>, usize)> {
        let m = &self.engine.model;
        let stoppable = self.stop.map(|stop| Stoppable {
            inner: self.engine.denoiser,
            stop,
        });
        let denoiser: &dyn Denoiser = match &stoppable {
            Some(s) => s,
            None => self.engine.denoiser,
        };
        let net = Network::new(
            denoiser,
            m.kind,
            m.param,
            m.time,
            self.spec.sampler.config.jacobian,
        );
        net.validate()?;
        let mut problems = batch
            .iter()
            .map(|p| {
                let pr = Problem::new(
                    p.op.clone(),
                    p.y.clone(),
                    self.spec.task.noise_sigma,
                    p.job.seed,
                )?;
                match &p.init_noise {
                    Some(z) => pr.with_init_noise(z.clone()),
                    None => Ok(pr),
                }
            })
            .collect::<Result<Vec<_>>>()?;
        let mut xs = self.engine.sampler.sample(&net, &mut problems)?;
        if xs.len() != batch.len() {
            return Err(Error::Shape(format!(
                "sampler returned {} images for a batch of {}",
                xs.len(),
                batch.len()
            )));
        }
        consistency::finish(self.spec, &problems, &mut xs);
        if xs.iter().any(|x| x.iter().any(|v| !v.is_finite())) {
            return Err(Error::Numerical("the sampler produced NaN or Inf".into()));
        }
        let nfe = (net.forwards() + net.vjps()) / batch.len();
        Ok((xs, nfe))
    }

    /// Encode x̂ and write it atomically.
    fn write(&self, p: &Prepared, x: &Img) -> Result<()> {
        let io = &self.spec.io;
        let out = &p.job.out;
        // Checked again right before writing (a folder may have been replaced by a link meanwhile), folder
        // by folder as they are created.
        create_inside(&self.out_root, &p.job.item.rel, out)?;
        imageio::remove_stale_temps(out)?;
        let bytes = if io.format == OutputFormat::Npy {
            imageio::encode_npy(x, out)?
        } else {
            let (_, h, w) = x.dim();
            let colorize = p.op.y_shape()[0] < p.op.x_shape()[0];
            let restored = imageio::from_model(x, self.engine.model.value_range);
            let color = imageio::color::to_output(&p.pic.color, restored, colorize);
            let alpha = p.pic.alpha.as_ref().map(|a| {
                if a.dim() == (h, w) {
                    a.clone()
                } else {
                    imageio::resize_nearest(a, h, w)
                }
            });
            let format = match io.format {
                OutputFormat::Same => p.pic.format,
                OutputFormat::Png => FileFormat::Png,
                OutputFormat::Tiff => FileFormat::Tiff,
                OutputFormat::Jpeg => FileFormat::Jpeg,
                OutputFormat::Npy => unreachable!(),
            };
            let bit_depth = match io.bit_depth {
                BitDepth::Same => p.pic.bit_depth,
                BitDepth::Eight => 8,
                BitDepth::Sixteen => 16,
            };
            let pic = Picture {
                color,
                alpha,
                bit_depth,
                format,
                icc: p.pic.icc.clone(),
                exif: p.pic.exif.clone(),
                meta: imageio::Metadata {
                    note: Some(processing_note(self.spec)),
                    ..p.pic.meta.scaled(self.spec.task.scale as f64)
                },
            };
            imageio::encode(
                &pic,
                EncodeOptions {
                    format,
                    bit_depth,
                    jpeg_quality: io.jpeg_quality,
                },
                out,
            )?
        };
        imageio::write_atomic(out, &bytes)
    }
}

/// The processing note written into every output image: program, version and spec hash.
pub fn processing_note(spec: &PipelineSpec) -> String {
    format!(
        "conjure {} (spec sha256 {})",
        env!("CARGO_PKG_VERSION"),
        spec.hash()
    )
}

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

/// (NFE, seconds) of a restored image, or (error, seconds) of a failed one.
type Outcome = std::result::Result<(usize, f64), (String, f64)>;

/// Progress reporting: bars, log lines or nothing. Moves within an image batch too (issue 16): each
/// network call (tile batch) seen by the run's [`NetWatch`] advances the batch in flight by its share of
/// the calls the batch needs, so a big image shows movement and an ETA long before it is written.
#[derive(Clone)]
struct Progress {
    inner: Arc<ProgressInner>,
}

struct ProgressInner {
    mode: ProgressMode,
    bar: Option<indicatif::ProgressBar>,
    total: usize,
    start: Instant,
    state: Mutex<ProgressState>,
}

struct ProgressState {
    /// Inputs recorded.
    done: usize,
    /// The batch in the network: images, x size (h, w), network calls made, calls it needs.
    batch: Option<(usize, (usize, usize), usize, usize)>,
    /// Images done, counting the batch in flight by its share of calls (never decreases).
    pos: f64,
    last_log: Instant,
}

/// Seconds between two progress lines within an image batch (log mode).
const LOG_EVERY: f64 = 10.0;

impl Progress {
    fn new(mode: ProgressMode, total: usize, nfe: usize) -> Self {
        let bar = (mode == ProgressMode::Bars).then(|| {
            let b = indicatif::ProgressBar::new(total as u64 * 1000);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {msg}  ETA {eta}",
                )
                .expect("valid template"),
            );
            b.set_message(format!("0/{total} images, NFE {nfe}/image"));
            b
        });
        Progress {
            inner: Arc::new(ProgressInner {
                mode,
                bar,
                total,
                start: Instant::now(),
                state: Mutex::new(ProgressState {
                    done: 0,
                    batch: None,
                    pos: 0.0,
                    last_log: Instant::now(),
                }),
            }),
        }
    }

    /// A batch of `images` of x size `size` enters the network and needs `calls` network calls.
    fn begin_batch(&self, images: usize, size: (usize, usize), calls: usize) {
        let mut st = self.inner.state.lock().expect("progress");
        st.batch = Some((images, size, 0, calls.max(1)));
    }

    /// The batch in the network is done.
    fn end_batch(&self) {
        self.inner.state.lock().expect("progress").batch = None;
    }

    /// One network call (tile batch) of the batch in flight is done.
    fn tick(&self) {
        let p = &self.inner;
        let mut st = p.state.lock().expect("progress");
        let Some((images, (h, w), calls, need)) = st.batch else {
            return;
        };
        let calls = calls + 1;
        st.batch = Some((images, (h, w), calls, need));
        let frac = (calls as f64 / need as f64).min(1.0);
        let pos = (st.done as f64 + frac * images as f64).min(p.total as f64);
        st.pos = st.pos.max(pos);
        match p.mode {
            ProgressMode::Bars => {
                if let Some(b) = &p.bar {
                    b.set_position((st.pos * 1000.0) as u64);
                    b.set_message(format!(
                        "{}/{} images, batch of {images} at {:.0}%",
                        st.done,
                        p.total,
                        frac * 100.0
                    ));
                }
            }
            ProgressMode::Log if st.last_log.elapsed().as_secs_f64() >= LOG_EVERY => {
                st.last_log = Instant::now();
                tracing::info!(
                    "[{}/{}] restoring {images} image{} of {w}x{h}: network call {calls}/{need} ({:.0}%), ETA {}",
                    st.done,
                    p.total,
                    if images == 1 { "" } else { "s" },
                    frac * 100.0,
                    self.eta(st.pos)
                );
            }
            _ => {}
        }
    }

    /// Time left at `pos` images done, from the rate so far.
    fn eta(&self, pos: f64) -> String {
        let p = &self.inner;
        if pos <= 0.0 {
            return "unknown".into();
        }
        let secs = p.start.elapsed().as_secs_f64() / pos * (p.total as f64 - pos).max(0.0);
        estimate::duration(secs)
    }

    fn record(&self, rec: &ManifestRecord) {
        let p = &self.inner;
        let mut st = p.state.lock().expect("progress");
        st.done += 1;
        st.pos = st.pos.max(st.done as f64);
        st.last_log = Instant::now();
        let done = st.done;
        match p.mode {
            ProgressMode::Bars => {
                if let Some(b) = &p.bar {
                    if rec.status == "failed" {
                        b.println(format!(
                            "failed {}: {}",
                            rec.input,
                            rec.error.as_deref().unwrap_or("")
                        ));
                    }
                    b.set_position((st.pos * 1000.0) as u64);
                    b.set_message(format!("{done}/{} images", p.total));
                }
            }
            ProgressMode::Log => match rec.status {
                "failed" => tracing::warn!(
                    "[{}/{}] failed {}: {}",
                    done,
                    p.total,
                    rec.input,
                    rec.error.as_deref().unwrap_or("")
                ),
                s => tracing::info!(
                    "[{}/{}] {} {} -> {} ({:.2} s)",
                    done,
                    p.total,
                    s,
                    rec.input,
                    rec.output,
                    rec.seconds
                ),
            },
            ProgressMode::Quiet => {
                if rec.status == "failed" {
                    tracing::warn!(
                        "failed {}: {}",
                        rec.input,
                        rec.error.as_deref().unwrap_or("")
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.inner.bar {
            b.finish_and_clear();
        }
    }
}

/// Resolve the input and output of a run (CLI over spec).
fn resolve_io(spec: &PipelineSpec, opts: &RunOptions) -> Result<(PathBuf, PathBuf)> {
    let input = opts
        .input
        .clone()
        .or_else(|| spec.io.input.clone())
        .ok_or_else(|| Error::Spec {
            location: String::new(),
            message: "no input: give --input or io.input in the spec".into(),
        })?;
    let output = opts
        .output
        .clone()
        .or_else(|| spec.io.output.clone())
        .ok_or_else(|| Error::Spec {
            location: String::new(),
            message: "no output: give --output or io.output in the spec".into(),
        })?;
    check_io(&input, &output)?;
    Ok((input, output))
}

/// The input exists and the output is not a file (a folder, or nothing yet): the checks `validate` and
/// `run` share, with plain messages.
pub fn check_io(input: &Path, output: &Path) -> Result<()> {
    if !input.exists() {
        return Err(Error::io(
            input,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "input not found (give an image file or a folder: --input or io.input)",
            ),
        ));
    }
    if output.exists() && !output.is_dir() {
        return Err(Error::io(
            output,
            std::io::Error::other(
                "the output is a file, not a folder; give a folder to write the restored images \
                 into (--output or io.output)",
            ),
        ));
    }
    Ok(())
}

/// Load the spec's model with its ONNX engine, build the sampler, and run. The network is wrapped in a
/// [`TiledDenoiser`] (tiles of `runtime.tile.size`, overlap `runtime.tile.overlap`, `runtime.batch_size`
/// tiles per network call), so images of any size can be restored; an image of exactly the tile size is
/// one tile with weight 1, i.e. the plain network.
pub fn run(spec: &PipelineSpec, opts: &RunOptions) -> Result<RunSummary> {
    spec.check_model_dir()?;
    let items = pending(spec, opts)?;
    if items.is_empty() {
        // Everything is done already (or there are no inputs): record the skips without loading the
        // model, which can take minutes (TensorRT engine builds).
        let card = ModelCard::load(&spec.model)?;
        let info = ModelInfo::from_card(&card, &spec.model)?;
        check_model(spec, info.kind, card.graphs.has_vjp())?;
        imageio::color::check_channels(spec, info.channels)?;
        let build = |d: &Degradation, shape: [usize; 3]| d.build(shape);
        let engine = Engine {
            model: info,
            denoiser: &Idle,
            sampler: &Idle,
            build_operator: &build,
        };
        return run_with(spec, opts, &engine);
    }
    let loaded = crate::model::load(&spec.model, &spec.runtime_options())?;
    let mut info = ModelInfo::from_card(&loaded.card, &loaded.dir)?;
    check_model(spec, info.kind, loaded.denoiser.has_vjp())?;
    imageio::color::check_channels(spec, info.channels)?;
    let sampler = crate::samplers::build(&spec.sampler_config(), &info.schedule)?;
    let inner: Arc<dyn Denoiser> = Arc::from(loaded.denoiser);
    let cfg = tile_config(spec, &loaded.card);
    // Before a long run, say how long, and whether the inputs suit the model.
    // (The warm-up measurement only when the estimate is shown.)
    let quiet = opts.progress == ProgressMode::Quiet;
    let plan = estimate::plan(
        spec,
        &info,
        loaded.card.domain.as_deref(),
        &items,
        &cfg,
        sampler.as_ref(),
        (!quiet).then_some(inner.as_ref()),
    )?;
    if !quiet {
        for line in &plan.lines {
            tracing::info!("{line}");
        }
    }
    for w in &plan.warnings {
        tracing::warn!("{w}");
    }
    let watch = opts
        .watch
        .clone()
        .unwrap_or_else(|| NetWatch::new(opts.stop.clone(), Some(cfg)));
    let tiled = TiledDenoiser::new(watch.wrap(inner), cfg)?;
    info.size = None;
    let build = |d: &Degradation, shape: [usize; 3]| d.build(shape);
    let engine = Engine {
        model: info,
        denoiser: &tiled,
        sampler: sampler.as_ref(),
        build_operator: &build,
    };
    let opts = RunOptions {
        watch: Some(watch),
        ..opts.clone()
    };
    run_with(spec, &opts, &engine)
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

/// The inputs of this shard that still need restoring.
fn pending(spec: &PipelineSpec, opts: &RunOptions) -> Result<Vec<InputItem>> {
    let (input, output) = resolve_io(spec, opts)?;
    // Problems in the tree (broken links, unreadable folders) are recorded by `run_with` without a model.
    let (mut items, _problems) = discover_all(&input, Some(&output))?;
    items.retain(|it| opts.shard.is_none_or(|sh| it.index % sh.count == sh.index));
    // Refused before the model is loaded when skipped outputs were made with other settings.
    resume::check_settings(spec, opts, &output, &items)?;
    items.retain(|it| {
        let out = output_path(&output, &it.rel, spec.io.format);
        !(spec.io.skip_existing && !opts.overwrite && out.is_file())
    });
    Ok(items)
}

/// Stands in for the network and the sampler when there is nothing to restore; never called.
struct Idle;

impl Denoiser for Idle {
    fn engine(&self) -> String {
        "none (nothing to restore)".into()
    }
    fn predict(&self, _x: ndarray::ArrayView4<f64>, _t: &[f64]) -> Result<ndarray::Array4<f64>> {
        Err(Error::Unsupported("no model was loaded".into()))
    }
    fn has_vjp(&self) -> bool {
        false
    }
}

impl Sampler for Idle {
    fn name(&self) -> &'static str {
        "none"
    }
    fn nfe(&self) -> usize {
        0
    }
    fn sample(&self, _net: &Network, _problems: &mut [Problem]) -> Result<Vec<Img>> {
        Err(Error::Unsupported("no model was loaded".into()))
    }
}

/// Run a spec with a given engine (network, sampler, operator factory). Errors returned here mean nothing
/// ran (usage, spec, model, output folder); per-input failures are in the summary and the manifest.
///
/// The network runs on the calling thread; decoding and writing run on two threads of their own that use
/// a pool of `runtime.threads` rayon threads (0 = the global pool), see the module documentation.
pub fn run_with(spec: &PipelineSpec, opts: &RunOptions, engine: &Engine) -> Result<RunSummary> {
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
    run_inner(spec, opts, engine, pool.as_ref())
}

/// `f` on `pool` (or the global rayon pool).
fn on_pool<R: Send>(pool: Option<&rayon::ThreadPool>, f: impl FnOnce() -> R + Send) -> R {
    match pool {
        Some(p) => p.install(f),
        None => f(),
    }
}

fn is_stopped(stop: Option<&AtomicBool>) -> bool {
    stop.is_some_and(|s| s.load(Ordering::SeqCst))
}

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
    Batch(Vec<Prepared>, Vec<Result<(Img, usize, f64)>>),
}

fn run_inner(
    spec: &PipelineSpec,
    opts: &RunOptions,
    engine: &Engine,
    pool: Option<&rayon::ThreadPool>,
) -> Result<RunSummary> {
    let t0 = Instant::now();
    let (input, output) = resolve_io(spec, opts)?;
    std::fs::create_dir_all(&output).map_err(|e| Error::io(&output, e))?;
    if input.canonicalize().ok() == output.canonicalize().ok() {
        return Err(Error::Spec {
            location: String::new(),
            message: format!(
                "the output folder {} is the input folder; restored files would replace the inputs",
                output.display()
            ),
        });
    }
    let Discovered {
        mut items,
        problems,
        unsupported,
    } = discover_tree(&input, Some(&output))?;
    let out_root = output.canonicalize().map_err(|e| Error::io(&output, e))?;
    if items.is_empty() {
        tracing::warn!(
            "no image files (png, tif, tiff, jpg, jpeg) under {}",
            input.display()
        );
    }
    if let Some(sh) = opts.shard {
        items.retain(|it| it.index % sh.count == sh.index);
    }
    resume::check_settings(spec, opts, &output, &items)?;
    let manifest_path = opts
        .manifest
        .clone()
        .unwrap_or_else(|| default_manifest(&output, opts.shard));
    let manifest = Manifest::open(&manifest_path)?;
    let init_noise = spec
        .sampler
        .init_noise
        .as_ref()
        .map(|p| imageio::read_npy(p))
        .transpose()?;
    let hash = spec.hash();
    let settings_hash = spec.settings_hash();
    let engine_name = engine.denoiser.engine();
    // NFE = network evaluations per image (forwards + VJPs), counted as the manifest counts it.
    let evals = estimate::engine_evaluations(spec, engine)?;
    let progress = Progress::new(opts.progress, items.len(), evals.nfe());
    if let Some(w) = &opts.watch {
        let p = progress.clone();
        w.listen(Arc::new(move |_| p.tick()));
    }
    let batch_calls = |images: usize, x_shape: [usize; 3]| -> usize {
        let per_eval = match opts.watch.as_ref().and_then(|w| w.tiles()) {
            Some(cfg) => crate::model::tiled::TilePlan::new(x_shape[1], x_shape[2], cfg)
                .map(|plan| (images * plan.len()).div_ceil(cfg.batch_size.max(1)))
                .unwrap_or(1),
            None => 1,
        };
        per_eval * evals.nfe()
    };
    let first_shard = opts.shard.is_none_or(|sh| sh.index == 0);
    let mut summary = RunSummary {
        engine: engine_name.clone(),
        manifest: manifest_path.clone(),
        output: output.clone(),
        unsupported: if first_shard { unsupported } else { Vec::new() },
        ..Default::default()
    };
    let record = |summary: &mut RunSummary,
                  job: &Job,
                  status: &'static str,
                  error: Option<String>,
                  nfe: usize,
                  seconds: f64|
     -> Result<()> {
        let rec = ManifestRecord {
            input: job.item.path.display().to_string(),
            output: job.out.display().to_string(),
            status,
            error: error.clone(),
            seed: job.seed,
            nfe,
            // Asked per record: after its image ran, the engine knows whether it tiled.
            engine: engine.denoiser.engine(),
            seconds,
            spec_hash: hash.clone(),
            settings_hash: settings_hash.clone(),
            finished_at: now_unix(),
        };
        manifest.append(&rec)?;
        progress.record(&rec);
        match status {
            "restored" => summary.restored += 1,
            "skipped" => summary.skipped += 1,
            _ => {
                summary.failed += 1;
                summary
                    .failures
                    .push((job.item.path.clone(), error.unwrap_or_default()));
            }
        }
        Ok(())
    };

    // Parts of the input tree that could not be read fail on their own (recorded by one shard only, so
    // that shards sharing a manifest record each once).
    if first_shard {
        for (path, e) in problems {
            let rel = path.strip_prefix(&input).unwrap_or(&path).to_path_buf();
            let job = Job {
                out: output_path(&output, &rel, spec.io.format),
                seed: image_seed(spec.seed, &rel),
                item: InputItem {
                    path,
                    rel,
                    index: usize::MAX,
                },
            };
            record(&mut summary, &job, "failed", Some(e.to_string()), 0, 0.0)?;
        }
    }

    // Plan: output paths, collisions, skips.
    let mut seen: HashMap<PathBuf, PathBuf> = HashMap::new();
    let mut todo = Vec::new();
    for item in items {
        let out = output_path(&output, &item.rel, spec.io.format);
        let seed = image_seed(spec.seed, &item.rel);
        let job = Job { item, out, seed };
        if let Err(e) = check_inside(&out_root, &job.item.rel, &job.out) {
            record(&mut summary, &job, "failed", Some(e.to_string()), 0, 0.0)?;
            continue;
        }
        if let Some(first) = seen.get(&job.out) {
            let msg = format!(
                "output {} is also the output of {}",
                job.out.display(),
                first.display()
            );
            record(&mut summary, &job, "failed", Some(msg), 0, 0.0)?;
            continue;
        }
        seen.insert(job.out.clone(), job.item.path.clone());
        if spec.io.skip_existing && !opts.overwrite && job.out.is_file() {
            record(&mut summary, &job, "skipped", None, 0, 0.0)?;
            continue;
        }
        todo.push(job);
    }

    let stop = opts.stop.as_deref();
    let ctx = Ctx {
        spec,
        engine,
        out_root,
        op_cache: Mutex::new(HashMap::new()),
        init_noise,
        stop,
    };
    let batch_size = spec.runtime.batch_size.max(1);
    let window = (batch_size * 4).max(32);
    let todo_len = todo.len();
    let ctx = &ctx;
    let record = &record;

    // Decode thread: window by window (at most one window ahead of the network), failures first, then
    // same-shape batches in shape order, order within a group following the input order.
    let decode = move |tx: SyncSender<Decoded>| -> f64 {
        let mut busy = 0.0;
        for jobs in todo.chunks(window) {
            if is_stopped(stop) {
                break;
            }
            let t = Instant::now();
            let prepared: Vec<Result<Prepared, Box<PrepareFailure>>> = on_pool(pool, || {
                jobs.par_iter()
                    .map(|job| ctx.prepare(job.clone()))
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
    };

    // Write thread: encode + write each sampled batch on the pool, then record it in batch order.
    let write =
        move |rx: Receiver<Sampled>, mut summary: RunSummary| -> Result<(RunSummary, usize, f64)> {
            let (mut done, mut busy) = (0usize, 0.0);
            for message in rx {
                let t = Instant::now();
                match message {
                    Sampled::Failed(failed) => {
                        let (job, e, secs) = *failed;
                        record(&mut summary, &job, "failed", Some(e.to_string()), 0, secs)?;
                        done += 1;
                    }
                    Sampled::Batch(batch, sampled) => {
                        let written: Vec<Outcome> = on_pool(pool, || {
                            batch
                                .par_iter()
                                .zip(sampled.into_par_iter())
                                .map(|(p, r)| {
                                    let t = Instant::now();
                                    match r {
                                        Ok((x, nfe, secs)) => ctx
                                            .write(p, &x)
                                            .map(|_| {
                                                (nfe, p.seconds + secs + t.elapsed().as_secs_f64())
                                            })
                                            .map_err(|e| (e.to_string(), p.seconds + secs)),
                                        Err(e) => Err((e.to_string(), p.seconds)),
                                    }
                                })
                                .collect()
                        });
                        for (p, o) in batch.iter().zip(written) {
                            match o {
                                Ok((nfe, secs)) => {
                                    record(&mut summary, &p.job, "restored", None, nfe, secs)?
                                }
                                Err((msg, secs)) => {
                                    record(&mut summary, &p.job, "failed", Some(msg), 0, secs)?
                                }
                            }
                            done += 1;
                        }
                    }
                }
                busy += t.elapsed().as_secs_f64();
            }
            Ok((summary, done, busy))
        };

    // Network thread (this one): sample each batch as it comes; an input that failed to decode passes
    // through in its place in the order. Once stopped, nothing new is taken and a batch the stop cut
    // short is dropped unrecorded (a rerun does it).
    let (mut summary, done, timing) = std::thread::scope(|s| -> Result<_> {
        let (decoded_tx, decoded_rx) = sync_channel::<Decoded>(1);
        let (sampled_tx, sampled_rx) = sync_channel::<Sampled>(1);
        let decoder = s.spawn(move || decode(decoded_tx));
        let writer = s.spawn(move || write(sampled_rx, summary));
        let mut timing = RunTiming::default();
        loop {
            let t = Instant::now();
            let Ok(message) = decoded_rx.recv() else {
                break;
            };
            timing.input_wait += t.elapsed().as_secs_f64();
            if is_stopped(stop) {
                break;
            }
            let sampled = match message {
                Decoded::Failed(failed) => Sampled::Failed(failed),
                Decoded::Batch(batch) => {
                    let refs: Vec<&Prepared> = batch.iter().collect();
                    let shape = refs[0].op.x_shape();
                    progress.begin_batch(
                        refs.len(),
                        (shape[1], shape[2]),
                        batch_calls(refs.len(), shape),
                    );
                    let results = ctx.sample(&refs);
                    progress.end_batch();
                    drop(refs);
                    if is_stopped(stop) && results.iter().any(|r| r.is_err()) {
                        break;
                    }
                    Sampled::Batch(batch, results)
                }
            };
            let t = Instant::now();
            if sampled_tx.send(sampled).is_err() {
                break; // the write thread stopped on an error, returned below
            }
            timing.output_wait += t.elapsed().as_secs_f64();
        }
        drop(decoded_rx);
        drop(sampled_tx);
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
    })?;
    progress.finish();
    if let Some(w) = &opts.watch {
        w.clear();
    }
    summary.remaining = todo_len - done;
    summary.interrupted = summary.remaining > 0 && is_stopped(stop);
    summary.timing = timing;
    summary.seconds = t0.elapsed().as_secs_f64();
    // Now that images went through it, the engine can say whether it tiled them.
    summary.engine = engine.denoiser.engine();
    Ok(summary)
}

/// What `degrade` did.
#[derive(Debug, Clone, Default)]
pub struct DegradeSummary {
    pub written: usize,
    pub failures: Vec<(PathBuf, String)>,
    pub masks: Option<PathBuf>,
}

/// The inpainting mask of the input at `rel` (relative to the input root) for an `h`×`w` image: generated
/// from the image's seed, or loaded from the spec's file / per-image folder; `None` for other operators.
pub fn task_mask(
    spec: &PipelineSpec,
    rel: &Path,
    seed: u64,
    h: usize,
    w: usize,
) -> Result<Option<ndarray::Array2<f64>>> {
    let Some(m) = &spec.task.mask else {
        return Ok(None);
    };
    if let Some(g) = m.generate(h, w, seed)? {
        return Ok(Some(g));
    }
    match m {
        MaskSpec::File { path } => imageio::load_mask(path, h, w).map(Some),
        MaskSpec::PerImage { dir } => {
            imageio::load_mask(&dir.join(rel).with_extension("png"), h, w).map(Some)
        }
        _ => unreachable!("generated above"),
    }
}

/// Add Gaussian measurement noise of std `sigma` to `y` from the image's own stream (seeded by its seed,
/// apart from the sampler's and the mask's streams).
pub fn add_measurement_noise(y: &mut Img, sigma: f64, seed: u64) {
    if sigma > 0.0 {
        let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x6e6f_6973_655f_7921);
        y.mapv_inplace(|v| {
            let n: f64 = StandardNormal.sample(&mut rng);
            v + sigma * n
        });
    }
}

/// Make measurements y = H x + σ_y n from clean images (docs/cli.md, `conjure degrade`).
///
/// Each clean image is converted to the model's channels and value range, degraded with the spec's
/// operator (masks generated or loaded exactly as `run` does, from the same per-image seed), given
/// Gaussian noise of std `task.noise_sigma` from its own seeded stream, and written with the input's
/// format and bit depth (and ICC / EXIF, alpha resampled to y's size) at the same relative path under
/// `output`. For `inpaint`, the mask used for each image is written as a PNG (white = known) at the same
/// relative path under `masks` — ready for `mask: {kind: per-image, dir: …}`.
pub fn degrade(
    spec: &PipelineSpec,
    model: &ModelInfo,
    build_operator: &OperatorFactory,
    input: &Path,
    output: &Path,
    masks: Option<&Path>,
) -> Result<DegradeSummary> {
    let (items, problems) = discover_all(input, Some(output))?;
    std::fs::create_dir_all(output).map_err(|e| Error::io(output, e))?;
    let results: Vec<(PathBuf, Result<()>)> = items
        .par_iter()
        .map(|item| {
            let r = (|| -> Result<()> {
                let pic = imageio::decode(&item.path)?;
                let (h, w) = pic.size();
                let x = imageio::to_model(
                    &imageio::to_channels(&pic.color, model.channels)?,
                    model.value_range,
                );
                let seed = image_seed(spec.seed, &item.rel);
                let mask = task_mask(spec, &item.rel, seed, h, w)?;
                let op = build_operator(&spec.degradation(mask.clone())?, [model.channels, h, w])?;
                let mut y = op.forward(&x);
                add_measurement_noise(&mut y, spec.task.noise_sigma, seed);
                let (_, yh, yw) = y.dim();
                let out_pic = Picture {
                    color: imageio::from_model(&y, model.value_range),
                    alpha: pic.alpha.as_ref().map(|a| {
                        if (yh, yw) == (h, w) {
                            a.clone()
                        } else {
                            imageio::resize_nearest(a, yh, yw)
                        }
                    }),
                    bit_depth: pic.bit_depth,
                    format: pic.format,
                    icc: pic.icc.clone(),
                    exif: pic.exif.clone(),
                    meta: pic.meta.scaled(yw as f64 / w as f64),
                };
                let out = output.join(&item.rel);
                let bytes = imageio::encode(
                    &out_pic,
                    EncodeOptions {
                        format: pic.format,
                        bit_depth: pic.bit_depth,
                        jpeg_quality: spec.io.jpeg_quality,
                    },
                    &out,
                )?;
                imageio::remove_stale_temps(&out)?;
                imageio::write_atomic(&out, &bytes)?;
                if let (Some(m), Some(dir)) = (&mask, masks) {
                    let mp = dir.join(&item.rel).with_extension("png");
                    imageio::write_atomic(&mp, &imageio::encode_mask(m, &mp)?)?;
                }
                Ok(())
            })();
            (item.path.clone(), r)
        })
        .collect();
    let mut s = DegradeSummary {
        masks: spec.task.mask.as_ref().and(masks.map(Path::to_path_buf)),
        ..Default::default()
    };
    for (p, e) in problems {
        s.failures.push((p, e.to_string()));
    }
    for (p, r) in results {
        match r {
            Ok(()) => s.written += 1,
            Err(e) => s.failures.push((p, e.to_string())),
        }
    }
    Ok(s)
}
