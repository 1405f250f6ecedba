//! Quality studies (`conjure study`): restore a held-out image set for every task × sampler × NFE ×
//! Jacobian mode of a [`StudySpec`], after choosing each (task, sampler)'s hyper-parameters on a separate
//! tuning set, and write the results as tables (CSV, markdown) and figures (PSNR vs NFE, image grids).
//!
//! Everything happens in memory and in f64, through the same pieces `conjure run` uses: each configuration
//! is a [`PipelineSpec`] built by the spec parser and restored by a [`Restorer`] (the spec's sampler, the
//! task's [`crate::operators::Degradation`], the model directory's engine behind a tiling, loaded once per
//! model and shared by its configurations). Measurements are made as `conjure degrade` makes them: y = H x + σ_y n
//! with the mask and the noise drawn from the image's seed ([`image_seed`] of the study seed and
//! `<split>/<image name>`); with `data.quantize: 8` (or 16) they are then clipped to the model's value range
//! and rounded to 8-bit (16-bit) levels as an image file would store them, else kept in f64. Metrics are those of `conjure eval` on the
//! restoration clipped to the model's value range and mapped to [0, 1]: PSNR and SSIM (data range 1)
//! against the clean image, and the consistency ‖H x̂ − y‖ / ‖y‖.
//!
//! **Tuning.** A run with a `tune` grid restores the tuning images (e.g. the *training* split) at the grid's
//! NFE for every grid point and keeps the point with the highest mean PSNR (the first on ties) among the
//! points whose every raw restoration stays within the study's `tuning.max_overshoot` of the value range
//! (default [`DEFAULT_MAX_OVERSHOOT`](crate::spec::study::DEFAULT_MAX_OVERSHOOT), 0.2; all points when
//! none does; `tuning.csv` lists each point's standard error and worst overshoot); the test sweep then uses
//! it at every NFE and Jacobian mode. A run without `tune` takes the values tuned for a run of the same
//! label on the same task, if there is one, else the spec's values. Tuning never sees a test image.
//!
//! **Resuming.** Each finished configuration is appended to `<out>/study-runs.jsonl`, keyed by the hash of
//! its resolved pipeline spec, its model's files ([`model_fingerprint`]: a retrained model's weights in
//! the same folder are a new key) and its image set; a rerun skips what is recorded, so a long study can be
//! stopped and continued, and tables can be redrawn without restoring anything. The restorations shown in
//! the image grids (each run's first configuration) are kept as `<out>/restored/<task>/<run>/<image>.npy`
//! (values in [0, 1]).

pub mod plot;

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use ndarray::Array3;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::engine::{ModelDir, Observation, Restorer};
use crate::error::{Error, Result};
use crate::imageio;
use crate::metrics;
use crate::model::Denoiser;
use crate::model::JacobianMode;
use crate::operators::{Img, OperatorRef};
use crate::pipeline::{add_measurement_noise, discover, task_mask};
use crate::spec::hash::hex;
use crate::spec::node::Node;
use crate::spec::study::{node_text, DataSource, StudyRun, StudySpec, StudyTask};
use crate::spec::{image_seed, PipelineSpec};

/// What to run of a study and where the results go.
#[derive(Debug, Clone)]
pub struct StudyOptions {
    pub out: PathBuf,
    /// Use at most this many test images.
    pub images: Option<usize>,
    /// Use at most this many tuning images.
    pub tune_images: Option<usize>,
    /// Only these tasks (default: all).
    pub tasks: Option<Vec<String>>,
    /// Only the runs with these labels (default: all).
    pub runs: Option<Vec<String>>,
    /// Rows (images) of the image grids.
    pub grid_rows: usize,
    /// Print one line per configuration.
    pub progress: bool,
}

/// One clean image, in the model's value range.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub x: Img,
}

/// One restored configuration (a line of `study-runs.jsonl`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigResult {
    pub key: String,
    /// `tune` or `test`.
    pub phase: String,
    pub task: String,
    pub run: String,
    pub sampler: String,
    pub jacobian: String,
    /// The run's NFE (`sampler.steps`) times `sampler.samples`: what one restored image cost.
    pub nfe: usize,
    /// The hyper-parameters set over the run's sampler block, as (key, value) text.
    pub settings: Vec<(String, String)>,
    pub images: Vec<String>,
    /// Per image; `None` for +∞ (identical images).
    pub psnr: Vec<Option<f64>>,
    pub ssim: Vec<f64>,
    pub consistency: Vec<f64>,
    /// Per image: how far the raw (unclipped) restoration leaves the model's value range, max over pixels
    /// of max(x − hi, lo − x, 0) (0 for records written before it was measured).
    #[serde(default)]
    pub overshoot: Vec<f64>,
    /// Wall seconds of the restoration, whole set.
    pub seconds: f64,
    /// Why the configuration produced no images (e.g. the sampler diverged).
    pub error: Option<String>,
}

/// Mean and standard error of the mean.
pub fn mean_se(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (m, f64::NAN);
    }
    let var = v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

impl ConfigResult {
    /// Finite PSNRs (an identical image counts as 100 dB, far above anything a restoration reaches).
    pub fn psnrs(&self) -> Vec<f64> {
        self.psnr.iter().map(|p| p.unwrap_or(100.0)).collect()
    }
    pub fn mean_psnr(&self) -> f64 {
        if self.error.is_some() {
            return f64::NEG_INFINITY;
        }
        mean_se(&self.psnrs()).0
    }
    /// The largest overshoot over the images (0 when none was measured).
    pub fn worst_overshoot(&self) -> f64 {
        self.overshoot.iter().copied().fold(0.0, f64::max)
    }
    /// Whether every image stayed within `max_overshoot` of the value range.
    pub fn in_range(&self, max_overshoot: f64) -> bool {
        self.error.is_none() && self.worst_overshoot() <= max_overshoot
    }
}

/// The grid point tuning chooses: the best mean PSNR among the points whose worst image stays within
/// `max_overshoot` of the range ([`ConfigResult::in_range`]), else the best mean PSNR overall. Returns its
/// index.
pub fn choose(points: &[ConfigResult], max_overshoot: f64) -> Option<usize> {
    let best = |ok: &dyn Fn(&ConfigResult) -> bool| {
        points
            .iter()
            .enumerate()
            .filter(|(_, r)| ok(r))
            .fold(None, |b: Option<(usize, f64)>, (i, r)| {
                let m = r.mean_psnr();
                if b.is_none_or(|(_, bm)| m > bm) {
                    Some((i, m))
                } else {
                    b
                }
            })
            .map(|(i, _)| i)
    };
    best(&|r| r.in_range(max_overshoot)).or_else(|| best(&|_| true))
}

/// Everything a study produced.
#[derive(Debug, Clone, Default)]
pub struct StudyReport {
    pub tuning: Vec<ConfigResult>,
    pub test: Vec<ConfigResult>,
    /// (task, run label) → chosen settings.
    pub chosen: BTreeMap<(String, String), Vec<(String, String)>>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Configurations restored now (not taken from an earlier run's record).
    pub restored: usize,
}

/// Read the images of a data source in the model's channels and value range.
pub fn load_images(src: &DataSource, channels: usize, range: [f64; 2]) -> Result<Vec<Sample>> {
    match src {
        DataSource::Idx {
            path,
            first,
            count,
            pad,
        } => {
            let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
            let bad = |m: String| Error::Image {
                path: path.clone(),
                message: m,
            };
            let data = if raw.starts_with(&[0x1f, 0x8b]) {
                let mut out = Vec::new();
                flate2::read::GzDecoder::new(&raw[..])
                    .read_to_end(&mut out)
                    .map_err(|e| bad(format!("gzip: {e}")))?;
                out
            } else {
                raw
            };
            if data.len() < 16 || data[..4] != [0, 0, 8, 3] {
                return Err(bad(
                    "not an IDX image file (expected magic 0x00000803, unsigned bytes, 3 dimensions)"
                        .into(),
                ));
            }
            let be = |i: usize| {
                u32::from_be_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize
            };
            let (n, rows, cols) = (be(4), be(8), be(12));
            let size = rows * cols;
            if data.len() < 16 + n * size {
                return Err(bad(format!(
                    "truncated: header says {n} images of {rows}x{cols}, file has {} bytes",
                    data.len()
                )));
            }
            if first + count > n {
                return Err(Error::invalid(
                    "data images",
                    format!("{first}..{}", first + count),
                    format!("a range inside the {n} images of {}", path.display()),
                ));
            }
            let (h, w) = (rows + 2 * pad, cols + 2 * pad);
            Ok((*first..first + count)
                .map(|k| {
                    let px = &data[16 + k * size..16 + (k + 1) * size];
                    let mut img = Array3::zeros((channels, h, w));
                    for c in 0..channels {
                        for r in 0..rows {
                            for q in 0..cols {
                                img[[c, r + pad, q + pad]] = px[r * cols + q] as f64 / 255.0;
                            }
                        }
                    }
                    Sample {
                        name: format!("{k:05}"),
                        x: imageio::to_model(&img, range),
                    }
                })
                .collect())
        }
        DataSource::Dir { path, count } => {
            let items = discover(path, None)?;
            if items.len() < *count {
                return Err(Error::invalid(
                    "data count",
                    count,
                    format!(
                        "at most the {} images under {}",
                        items.len(),
                        path.display()
                    ),
                ));
            }
            items[..*count]
                .iter()
                .map(|it| {
                    let pic = imageio::decode(&it.path)?;
                    Ok(Sample {
                        name: it.rel.to_string_lossy().into_owned(),
                        x: imageio::to_model(&imageio::to_channels(&pic.color, channels)?, range),
                    })
                })
                .collect()
        }
    }
}

/// One image's inverse problem as the study restores it.
pub struct Measured {
    pub name: String,
    pub op: OperatorRef,
    pub y: Img,
    pub seed: u64,
}

/// y = H x + σ_y n for one clean image, with the mask and noise of the image's seed, then quantized to
/// `quantize` = (bits, value range) when given ([`quantize`]).
pub fn measure(
    spec: &PipelineSpec,
    split: &str,
    s: &Sample,
    quantize: Option<(u32, [f64; 2])>,
) -> Result<Measured> {
    let (c, h, w) = s.x.dim();
    let seed = image_seed(spec.seed, &Path::new(split).join(&s.name));
    let mask = task_mask(spec, Path::new(&s.name), seed, h, w)?;
    let op = spec.degradation(mask)?.build([c, h, w])?;
    let mut y = op.forward(&s.x);
    add_measurement_noise(&mut y, spec.task.noise_sigma, seed);
    if let Some((bits, range)) = quantize {
        y = self::quantize(&y, bits, range);
    }
    Ok(Measured {
        name: s.name.clone(),
        op,
        y,
        seed,
    })
}

/// `y` as a `bits`-bit image file over `range` stores it: clipped to the range and rounded to one of
/// 2^bits evenly spaced levels.
pub fn quantize(y: &Img, bits: u32, range: [f64; 2]) -> Img {
    let levels = ((1u64 << bits) - 1) as f64;
    let (lo, span) = (range[0], range[1] - range[0]);
    y.mapv(|v| lo + (((v - lo) / span).clamp(0.0, 1.0) * levels).round() / levels * span)
}

/// A loaded model folder and its network, shared by every configuration on it.
struct Loaded {
    model: ModelDir,
    network: Arc<dyn Denoiser>,
}

fn load_model(spec: &PipelineSpec) -> Result<Loaded> {
    let loaded = crate::model::load(&spec.model, &spec.runtime_options())?;
    Ok(Loaded {
        model: ModelDir::from_card(loaded.card, &loaded.dir)?,
        network: Arc::from(loaded.denoiser),
    })
}

/// SHA-256 over what a model folder's restorations can depend on: every file in it (names, sizes and
/// contents, in name order) but its documentation (`*.md`, `*.txt`: README.md, DATA.md). Every file, not a
/// list of extensions, because a graph's external weights may have any name (`weights.bin`,
/// `model.onnx.data`, …).
pub fn model_fingerprint(dir: &Path) -> Result<String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && !p.extension().is_some_and(|x| x == "md" || x == "txt"))
        .collect();
    files.sort();
    let mut h = Sha256::new();
    for f in &files {
        let bytes = std::fs::read(f).map_err(|e| Error::io(f, e))?;
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        h.update([0]);
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(&bytes);
    }
    Ok(hex(&h.finalize()))
}

/// Restore `set` with the configuration `spec`, in batches of `runtime.batch_size`.
fn restore(model: &Loaded, spec: &PipelineSpec, set: &[Measured]) -> Result<Vec<Img>> {
    let restorer = Restorer::new(spec, model.model.clone(), model.network.clone(), &|n, _| n)?;
    let mut out = Vec::with_capacity(set.len());
    for chunk in set.chunks(spec.runtime.batch_size.max(1)) {
        let batch: Vec<Observation> = chunk
            .iter()
            .map(|m| Observation {
                op: &m.op,
                y: &m.y,
                seed: m.seed,
                init_noise: None,
            })
            .collect();
        out.extend(restorer.restore(&batch)?.images);
    }
    Ok(out)
}

/// The record of earlier runs, and the file new records are appended to.
struct Record {
    done: BTreeMap<String, ConfigResult>,
    file: std::fs::File,
}

impl Record {
    fn open(path: &Path) -> Result<Self> {
        let mut done = BTreeMap::new();
        if let Ok(f) = std::fs::File::open(path) {
            // A line cut short by a kill does not parse and is simply redone.
            for line in std::io::BufReader::new(f).lines().map_while(|l| l.ok()) {
                if let Ok(r) = serde_json::from_str::<ConfigResult>(&line) {
                    done.insert(r.key.clone(), r);
                }
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Record { done, file })
    }

    fn add(&mut self, r: &ConfigResult, path: &Path) -> Result<()> {
        let mut line =
            serde_json::to_string(r).map_err(|e| Error::io(path, std::io::Error::other(e)))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(path, e))?;
        self.done.insert(r.key.clone(), r.clone());
        Ok(())
    }
}

/// The study's state while it runs.
struct Runner<'a> {
    study: &'a StudySpec,
    opts: &'a StudyOptions,
    models: BTreeMap<PathBuf, Loaded>,
    /// Model folder → [`model_fingerprint`], computed once per study.
    fingerprints: BTreeMap<PathBuf, String>,
    record: Record,
    record_path: PathBuf,
    restored: usize,
    /// (task, run label, image name) → restoration, kept for the grids (first NFE, exact Jacobian).
    kept: BTreeMap<(String, String, String), Img>,
}

impl Runner<'_> {
    fn model(&mut self, spec: &PipelineSpec) -> Result<&Loaded> {
        if !self.models.contains_key(&spec.model) {
            let m = load_model(spec)?;
            self.models.insert(spec.model.clone(), m);
        }
        Ok(&self.models[&spec.model])
    }

    /// Restore and score one configuration, or take its earlier record.
    #[allow(clippy::too_many_arguments)]
    fn config(
        &mut self,
        phase: &str,
        task: &StudyTask,
        run: &StudyRun,
        settings: &[(String, Node)],
        nfe: usize,
        jacobian: JacobianMode,
        clean: &[Sample],
        keep: bool,
    ) -> Result<ConfigResult> {
        let spec = self.study.pipeline(task, run, settings, nfe, jacobian)?;
        // `sampler.samples` = K averages K restorations: the image cost K times the run's NFE.
        let nfe = nfe * spec.sampler.samples.max(1);
        let names: Vec<String> = clean.iter().map(|s| s.name.clone()).collect();
        if !self.fingerprints.contains_key(&spec.model) {
            let fp = model_fingerprint(&spec.model)?;
            self.fingerprints.insert(spec.model.clone(), fp);
        }
        let key = {
            let mut h = Sha256::new();
            h.update(spec.hash().as_bytes());
            h.update(self.fingerprints[&spec.model].as_bytes());
            h.update(phase.as_bytes());
            if let Some(bits) = self.study.quantize {
                h.update(format!("quantize {bits}").as_bytes());
            }
            for n in &names {
                h.update(n.as_bytes());
                h.update([0]);
            }
            hex(&h.finalize())
        };
        let kept_dir = self
            .opts
            .out
            .join("restored")
            .join(&task.name)
            .join(&run.label);
        let kept_path = |name: &str| kept_dir.join(Path::new(name).with_extension("npy"));
        if let Some(mut r) = self.record.done.get(&key).cloned() {
            // The same configuration may have been recorded under another label or as other grid values
            // (the key is the resolved spec): report it as this run's.
            r.task = task.name.clone();
            r.run = run.label.clone();
            r.settings = settings
                .iter()
                .map(|(k, v)| (k.clone(), node_text(v)))
                .collect();
            if !keep || r.error.is_some() {
                return Ok(r);
            }
            // The grids need the restorations: take them from the earlier run's files when all are there.
            let loaded: Option<Vec<Img>> = names
                .iter()
                .map(|n| {
                    imageio::read_npy(&kept_path(n))
                        .ok()
                        .and_then(|a| a.into_dimensionality::<ndarray::Ix3>().ok())
                })
                .collect();
            if let Some(imgs) = loaded {
                for (n, img) in names.iter().zip(imgs) {
                    self.kept
                        .insert((task.name.clone(), run.label.clone(), n.clone()), img);
                }
                return Ok(r);
            }
        }
        let range = self.model(&spec)?.model.info.value_range;
        let split = if phase == "tune" { "tune" } else { "test" };
        let set = clean
            .iter()
            .map(|s| measure(&spec, split, s, self.study.quantize.map(|b| (b, range))))
            .collect::<Result<Vec<_>>>()?;
        let t0 = Instant::now();
        let restored = restore(self.model(&spec)?, &spec, &set);
        let seconds = t0.elapsed().as_secs_f64();
        let mut r = ConfigResult {
            key,
            phase: phase.into(),
            task: task.name.clone(),
            run: run.label.clone(),
            sampler: run.sampler.as_str().into(),
            jacobian: jacobian.as_str().into(),
            nfe,
            settings: settings
                .iter()
                .map(|(k, v)| (k.clone(), node_text(v)))
                .collect(),
            images: names,
            psnr: Vec::new(),
            ssim: Vec::new(),
            consistency: Vec::new(),
            overshoot: Vec::new(),
            seconds,
            error: None,
        };
        match restored {
            Ok(xs) => {
                for ((s, m), x) in clean.iter().zip(&set).zip(xs) {
                    r.overshoot.push(
                        x.iter()
                            .map(|&v| (v - range[1]).max(range[0] - v).max(0.0))
                            .fold(0.0, f64::max),
                    );
                    let x = x.mapv(|v| v.clamp(range[0], range[1]));
                    let a = imageio::from_model(&s.x, range);
                    let b = imageio::from_model(&x, range);
                    let p = metrics::psnr(&a, &b, 1.0)?;
                    r.psnr.push(p.is_finite().then_some(p));
                    r.ssim.push(metrics::ssim(&a, &b, 1.0)?);
                    r.consistency
                        .push(metrics::consistency(m.op.as_ref(), &x, &m.y)?);
                    if keep {
                        let path = kept_path(&s.name);
                        if let Some(dir) = path.parent() {
                            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                        }
                        imageio::write_atomic(&path, &imageio::encode_npy(&b, &path)?)?;
                        self.kept
                            .insert((task.name.clone(), run.label.clone(), s.name.clone()), b);
                    }
                }
            }
            Err(e @ Error::Numerical(_)) => r.error = Some(e.to_string()),
            Err(e) => return Err(e),
        }
        if !self.record.done.contains_key(&r.key) {
            self.record.add(&r, &self.record_path)?;
        }
        self.restored += 1;
        if self.opts.progress {
            let (p, se) = mean_se(&r.psnrs());
            eprintln!(
                "{phase:4} {:16} {:10} {:17} nfe {:4}  {}  [{}]  {:.1} s",
                r.task,
                r.run,
                r.jacobian,
                r.nfe,
                match &r.error {
                    Some(e) => e.clone(),
                    None => format!("PSNR {p:6.2} ± {se:4.2}  SSIM {:.4}", mean_se(&r.ssim).0),
                },
                r.settings
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
                seconds
            );
        }
        Ok(r)
    }
}

/// Run a study: tune, sweep, write `results.csv`, `results.md`, `tuning.csv`, `psnr-vs-nfe.svg` and
/// `grid-<task>.png` under `opts.out`.
pub fn run_study(study: &StudySpec, opts: &StudyOptions) -> Result<StudyReport> {
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    let tasks: Vec<&StudyTask> = study
        .tasks
        .iter()
        .filter(|t| opts.tasks.as_ref().is_none_or(|l| l.contains(&t.name)))
        .collect();
    if tasks.is_empty() {
        return Err(Error::invalid(
            "tasks",
            opts.tasks.clone().unwrap_or_default().join(","),
            "names of the study's tasks",
        ));
    }
    let runs: Vec<&StudyRun> = study
        .runs
        .iter()
        .filter(|r| opts.runs.as_ref().is_none_or(|l| l.contains(&r.label)))
        .collect();
    let record_path = opts.out.join("study-runs.jsonl");
    let mut runner = Runner {
        study,
        opts,
        models: BTreeMap::new(),
        fingerprints: BTreeMap::new(),
        record: Record::open(&record_path)?,
        record_path,
        restored: 0,
        kept: BTreeMap::new(),
    };
    // Images: channels and value range come from the first model's card.
    let first_model = runs
        .first()
        .and_then(|r| study.model_for(r.sampler))
        .ok_or_else(|| Error::invalid("runs", "none", "at least one run"))?;
    let card = crate::model::card::ModelCard::load(first_model)?;
    let (ch, range) = (card.image.channels, card.image.value_range);
    let cap = |src: &DataSource, n: Option<usize>| {
        src.limited(n.map_or(src.count(), |n| n.min(src.count())))
    };
    let test = load_images(&cap(&study.test, opts.images), ch, range)?;
    let tune = match &study.tune {
        Some(t) => load_images(&cap(t, opts.tune_images), ch, range)?,
        None => Vec::new(),
    };
    // Each set is restored in batches, whose images share one size; the two sets may differ (tuning on
    // smaller crops of the training photos than the test images, e.g. pipelines/experiments/photo.yaml).
    for (what, set) in [("test", &test), ("tuning", &tune)] {
        if let Some(odd) = set.iter().find(|s| s.x.dim() != set[0].x.dim()) {
            return Err(Error::Shape(format!(
                "{what} images must share one size: {} is {:?}, {} is {:?}",
                set[0].name,
                set[0].x.dim(),
                odd.name,
                odd.x.dim()
            )));
        }
    }

    let mut report = StudyReport::default();
    let mut chosen_nodes: BTreeMap<(String, String), Vec<(String, Node)>> = BTreeMap::new();
    for task in &tasks {
        for run in runs.iter().filter(|r| r.covers(&task.name)) {
            let k = (task.name.clone(), run.label.clone());
            let Some(tune_spec) = &run.tune else {
                continue;
            };
            if tune.is_empty() {
                return Err(Error::invalid(
                    "data.tune",
                    "missing",
                    format!("a tuning image set (run {} has a tune grid)", run.label),
                ));
            }
            let points = tune_spec.points();
            let mut results = Vec::with_capacity(points.len());
            for point in &points {
                let r = runner.config(
                    "tune",
                    task,
                    run,
                    point,
                    tune_spec.nfe,
                    run.jacobian[0],
                    &tune,
                    false,
                )?;
                results.push(r);
            }
            if let Some(i) = choose(&results, study.max_overshoot) {
                chosen_nodes.insert(k, points[i].clone());
            }
            report.tuning.extend(results);
        }
    }
    for task in &tasks {
        for run in runs.iter().filter(|r| r.covers(&task.name)) {
            let k = (task.name.clone(), run.label.clone());
            let settings = chosen_nodes.get(&k).cloned().unwrap_or_default();
            report.chosen.insert(
                k,
                settings
                    .iter()
                    .map(|(a, b)| (a.clone(), node_text(b)))
                    .collect(),
            );
            let n = run.images.map_or(test.len(), |n| n.min(test.len()));
            let configs = run.configs();
            for (i, (nfe, jac)) in configs.iter().enumerate() {
                let keep = i == 0;
                let r =
                    runner.config("test", task, run, &settings, *nfe, *jac, &test[..n], keep)?;
                report.test.push(r);
            }
        }
    }
    report.restored = runner.restored;
    report.files = write_reports(study, opts, &report, &tasks, &test, &runner.kept)?;
    Ok(report)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn settings_text(s: &[(String, String)]) -> String {
    s.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<PathBuf> {
    imageio::write_atomic(path, bytes)?;
    Ok(path.to_path_buf())
}

/// Write the tables and figures.
fn write_reports(
    study: &StudySpec,
    opts: &StudyOptions,
    report: &StudyReport,
    tasks: &[&StudyTask],
    test: &[Sample],
    kept: &BTreeMap<(String, String, String), Img>,
) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    // results.csv
    let mut csv = String::from(
        "task,run,sampler,jacobian,nfe,images,psnr_mean,psnr_se,ssim_mean,ssim_se,consistency_mean,seconds_per_image,settings,error\n",
    );
    for r in &report.test {
        let (p, pse) = mean_se(&r.psnrs());
        let (s, sse) = mean_se(&r.ssim);
        let (c, _) = mean_se(&r.consistency);
        csv += &format!(
            "{},{},{},{},{},{},{:.4},{:.4},{:.5},{:.5},{:.6},{:.4},{},{}\n",
            csv_field(&r.task),
            csv_field(&r.run),
            r.sampler,
            r.jacobian,
            r.nfe,
            r.images.len(),
            p,
            pse,
            s,
            sse,
            c,
            r.seconds / r.images.len().max(1) as f64,
            csv_field(&settings_text(&r.settings)),
            csv_field(r.error.as_deref().unwrap_or(""))
        );
    }
    files.push(write_file(&opts.out.join("results.csv"), csv.as_bytes())?);
    // tuning.csv
    let mut tcsv =
        String::from("task,run,sampler,nfe,images,settings,psnr_mean,psnr_se,ssim_mean,worst_overshoot,chosen,error\n");
    for r in &report.tuning {
        let chosen = report
            .chosen
            .get(&(r.task.clone(), r.run.clone()))
            .is_some_and(|c| *c == r.settings);
        let (p, pse) = mean_se(&r.psnrs());
        tcsv += &format!(
            "{},{},{},{},{},{},{:.4},{:.4},{:.5},{:.4},{},{}\n",
            csv_field(&r.task),
            csv_field(&r.run),
            r.sampler,
            r.nfe,
            r.images.len(),
            csv_field(&settings_text(&r.settings)),
            p,
            pse,
            mean_se(&r.ssim).0,
            r.worst_overshoot(),
            chosen,
            csv_field(r.error.as_deref().unwrap_or(""))
        );
    }
    files.push(write_file(&opts.out.join("tuning.csv"), tcsv.as_bytes())?);
    files.push(write_file(
        &opts.out.join("results.md"),
        markdown(study, report, tasks, test.len()).as_bytes(),
    )?);
    let svg = opts.out.join("psnr-vs-nfe.svg");
    plot::psnr_vs_nfe(&report.test, tasks, &svg)?;
    files.push(svg);
    for task in tasks {
        let path = opts.out.join(format!("grid-{}.png", task.name));
        if plot::grid(study, report, task, test, kept, opts.grid_rows, &path)? {
            files.push(path);
        }
    }
    Ok(files)
}

/// The markdown tables: chosen settings, then PSNR / SSIM per task (rows: run and Jacobian mode; columns:
/// NFE), with the number of test images and the source of the study.
fn markdown(
    study: &StudySpec,
    report: &StudyReport,
    tasks: &[&StudyTask],
    n_test: usize,
) -> String {
    let mut md = format!(
        "# Study results: {}\n\nTest images: {n_test}{}. Cells: mean PSNR (dB) / mean SSIM over the test images \
         (restorations clipped to the model range; ± is the standard error of the PSNR mean). `–` = not run; \
         `diverged` = the sampler produced NaN/Inf.\n\n",
        study.source.display(),
        match &study.tune {
            Some(t) => format!("; hyper-parameters tuned on {} other images", t.count()),
            None => String::new(),
        }
    );
    if !report.chosen.values().all(|v| v.is_empty()) {
        md += "## Hyper-parameters (chosen on the tuning images by mean PSNR)\n\n| task | run | settings |\n|---|---|---|\n";
        for ((t, r), s) in &report.chosen {
            if !s.is_empty() {
                md += &format!("| {t} | {r} | {} |\n", settings_text(s));
            }
        }
        md.push('\n');
    }
    md += &summary_table(report, tasks);
    for task in tasks {
        let rows: Vec<&ConfigResult> = report.test.iter().filter(|r| r.task == task.name).collect();
        if rows.is_empty() {
            continue;
        }
        let mut nfes: Vec<usize> = rows.iter().map(|r| r.nfe).collect();
        nfes.sort_unstable();
        nfes.dedup();
        let mut lines: Vec<(String, String)> = Vec::new();
        for r in &rows {
            let l = (r.run.clone(), r.jacobian.clone());
            if !lines.contains(&l) {
                lines.push(l);
            }
        }
        md += &format!("## {}\n\n| run | jacobian |", task.name);
        for n in &nfes {
            md += &format!(" NFE {n} |");
        }
        md += "\n|---|---|";
        md += &"---|".repeat(nfes.len());
        md.push('\n');
        let best_psnr = rows
            .iter()
            .map(|r| r.mean_psnr())
            .fold(f64::NEG_INFINITY, f64::max);
        for (run, jac) in &lines {
            md += &format!("| {run} | {jac} |");
            for n in &nfes {
                let cell = rows
                    .iter()
                    .find(|r| &r.run == run && &r.jacobian == jac && r.nfe == *n)
                    .map(|r| match &r.error {
                        Some(_) => "diverged".to_string(),
                        None => {
                            let (p, se) = mean_se(&r.psnrs());
                            let s = format!("{p:.2} ± {se:.2} / {:.3}", mean_se(&r.ssim).0);
                            if (p - best_psnr).abs() < 1e-12 {
                                format!("**{s}**")
                            } else {
                                s
                            }
                        }
                    })
                    .unwrap_or_else(|| "–".into());
                md += &format!(" {cell} |");
            }
            md.push('\n');
        }
        md.push('\n');
    }
    md
}

/// One line per task: each run (exact Jacobian) at its smallest NFE, and its best mean PSNR over the sweep
/// with the NFE where it was reached.
fn summary_table(report: &StudyReport, tasks: &[&StudyTask]) -> String {
    let exact: Vec<&ConfigResult> = report
        .test
        .iter()
        .filter(|r| r.jacobian == "exact")
        .collect();
    let mut runs: Vec<&str> = Vec::new();
    for r in &exact {
        if !runs.contains(&r.run.as_str()) {
            runs.push(&r.run);
        }
    }
    if runs.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "## Summary: mean PSNR (dB) at each run's smallest NFE → its best over the sweep (at NFE)\n\n| task |",
    );
    for r in &runs {
        md += &format!(" {r} |");
    }
    md += "\n|---|";
    md += &"---|".repeat(runs.len());
    md.push('\n');
    for task in tasks {
        md += &format!("| {} |", task.name);
        for run in &runs {
            let mut mine: Vec<&&ConfigResult> = exact
                .iter()
                .filter(|r| r.task == task.name && r.run == *run)
                .collect();
            mine.sort_by_key(|r| r.nfe);
            let cell = match mine.first() {
                None => "–".to_string(),
                Some(first) => {
                    let p0 = match first.error {
                        Some(_) => "diverged".to_string(),
                        None => format!("{:.2} @{}", first.mean_psnr(), first.nfe),
                    };
                    let best = mine
                        .iter()
                        .filter(|r| r.error.is_none())
                        .max_by(|a, b| a.mean_psnr().total_cmp(&b.mean_psnr()));
                    match best {
                        Some(b) if b.nfe != first.nfe => {
                            format!("{p0} → {:.2} @{}", b.mean_psnr(), b.nfe)
                        }
                        _ => p0,
                    }
                }
            };
            md += &format!(" {cell} |");
        }
        md.push('\n');
    }
    md.push('\n');
    md
}
