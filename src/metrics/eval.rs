//! Directory evaluation, the library behind `conjure eval`: pair reference (clean) and restored files by
//! relative path, compute [`ImageMetrics`] for each pair, and summarize the run.
//!
//! * **Pairing.** Files are matched by their path relative to each root *without the extension*, so
//!   `clean/shirt-0.png` pairs with `restored/shirt-0.tiff` or `restored/shirt-0.npy`. When a restored
//!   directory holds several files with the same stem, the one with the reference's extension wins, then
//!   png, tiff, jpeg, npy in that order. Reference files without a restored partner are reported as
//!   missing; restored files without a reference are listed as unmatched and otherwise ignored.
//! * **Values.** Every image is brought to [0, 1]: 8-bit and 16-bit integers are divided by 255 and
//!   65535, float images are taken as they are, and `.npy` arrays (float32 or float64, shaped (H, W),
//!   (C, H, W) or (1, C, H, W); the pipeline writes them in the model's range) are mapped from
//!   [`EvalOptions::npy_range`] to [0, 1] without clamping. Alpha channels are dropped. Metrics then use
//!   data range 1. Files are found and decoded as `run` finds and decodes its inputs.
//! * **Consistency.** With a measurements directory and a [`Degradation`], each restored x̂ is also scored
//!   by ‖H x̂ − y‖ / ‖y‖, with y the measurement file paired by the same rule, both in [0, 1] pixel values
//!   (for operators that keep constants — averaging, blur, masks, colorize — this equals the ratio in the
//!   model's range up to the scaling of ‖y‖).
//!
//! One bad pair never stops the run: its error is recorded in its [`ImageRecord`] and the others go on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, Axis, Ix3};
use rayon::prelude::*;
use serde::Serialize;

use super::{consistency, ImageMetrics, Summary};
use crate::error::{Error, Result};
use crate::operators::{Degradation, Img};

/// File extensions `conjure eval` reads, in order of preference when several files share a stem.
pub const EXTENSIONS: &[&str] = &["png", "tiff", "tif", "jpg", "jpeg", "npy"];

/// A file found under a root, keyed by its relative path without extension (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path without extension, `/`-separated (`shirts/shirt-0`).
    pub key: String,
    /// The file's full path.
    pub path: PathBuf,
}

fn extension_of(path: &Path) -> Option<String> {
    path.extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .filter(|e| EXTENSIONS.contains(&e.as_str()))
}

fn rank(ext: &str) -> usize {
    EXTENSIONS
        .iter()
        .position(|e| *e == ext)
        .unwrap_or(usize::MAX)
}

/// Every readable image file under `root` (recursive, found as `run` finds its inputs: hidden files and
/// temporaries skipped), grouped by key, sorted by key. A plain file as `root` is a one-entry list keyed
/// by its file stem. The first unreadable part of the tree is an error.
pub fn scan(root: &Path) -> Result<BTreeMap<String, Vec<PathBuf>>> {
    let meta = std::fs::metadata(root).map_err(|e| Error::io(root, e))?;
    let mut map: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    if meta.is_file() {
        let stem = root
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        map.entry(stem).or_default().push(root.to_path_buf());
        return Ok(map);
    }
    let found = crate::pipeline::discover::walk(root, None, &|p| extension_of(p).is_some())?;
    if let Some((_, e)) = found.problems.into_iter().next() {
        return Err(e);
    }
    for item in found.items {
        let key = item
            .rel
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join("/");
        map.entry(key).or_default().push(item.path);
    }
    Ok(map)
}

/// Pick one of several files sharing a stem: the reference's extension first, then [`EXTENSIONS`] order.
fn choose(candidates: &[PathBuf], prefer: Option<&str>) -> PathBuf {
    let mut c = candidates.to_vec();
    c.sort_by_key(|p| {
        let ext = extension_of(p).unwrap_or_default();
        (Some(ext.as_str()) != prefer, rank(&ext), p.clone())
    });
    c[0].clone()
}

/// The result of pairing a reference tree with a restored tree.
#[derive(Debug, Clone, Default)]
pub struct Pairing {
    /// (key, reference file, restored file), sorted by key.
    pub pairs: Vec<(String, PathBuf, PathBuf)>,
    /// Reference keys with no restored file.
    pub missing: Vec<String>,
    /// Restored keys with no reference file.
    pub unmatched: Vec<String>,
}

/// Pair the files under `reference` and `restored` by relative path, ignoring extensions.
pub fn pair(reference: &Path, restored: &Path) -> Result<Pairing> {
    let refs = scan(reference)?;
    let outs = scan(restored)?;
    let mut pairing = Pairing::default();
    for (key, files) in &refs {
        let r = choose(files, None);
        match outs.get(key) {
            Some(cands) => {
                let ext = extension_of(&r);
                let o = choose(cands, ext.as_deref());
                pairing.pairs.push((key.clone(), r, o));
            }
            None => pairing.missing.push(key.clone()),
        }
    }
    pairing.unmatched = outs
        .keys()
        .filter(|k| !refs.contains_key(*k))
        .cloned()
        .collect();
    Ok(pairing)
}

fn image_err(path: &Path, message: impl ToString) -> Error {
    Error::Image {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// Decode an image file (png/tiff/jpeg with [`crate::imageio::decode`], as `run` reads its inputs; `.npy`
/// by extension) to (C, H, W) in [0, 1], C = 1 for gray and 3 for color; alpha is dropped. `npy_range` is the value range of `.npy` arrays.
pub fn load(path: &Path, npy_range: [f64; 2]) -> Result<Img> {
    if extension_of(path).as_deref() == Some("npy") {
        return load_npy(path, npy_range);
    }
    // Integer samples come back as v / 255 or v / 65535 exactly, floats as they are; alpha is apart.
    Ok(crate::imageio::decode(path)?.color)
}

fn load_npy(path: &Path, range: [f64; 2]) -> Result<Img> {
    let [lo, hi] = range;
    if !(lo.is_finite() && hi.is_finite() && hi > lo) {
        return Err(Error::invalid(
            "npy range",
            format!("{lo}:{hi}"),
            "finite LO:HI with LO < HI",
        ));
    }
    let arr: ArrayD<f64> = match ndarray_npy::read_npy::<_, ArrayD<f32>>(path) {
        Ok(a) => a.mapv(|v| v as f64),
        Err(_) => ndarray_npy::read_npy::<_, ArrayD<f64>>(path)
            .map_err(|e| image_err(path, format!("not a float32/float64 .npy array: {e}")))?,
    };
    let arr = match arr.ndim() {
        2 => arr.insert_axis(Axis(0)),
        3 => arr,
        4 if arr.shape()[0] == 1 => arr.index_axis_move(Axis(0), 0),
        _ => {
            return Err(image_err(
                path,
                format!(
                    "array shape {:?} (expected (H, W), (C, H, W) or (1, C, H, W))",
                    arr.shape()
                ),
            ))
        }
    };
    let arr = arr
        .into_dimensionality::<Ix3>()
        .map_err(|e| image_err(path, e))?;
    Ok(arr.mapv(|v| (v - lo) / (hi - lo)))
}

/// What to evaluate.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Clean images (file or directory).
    pub reference: PathBuf,
    /// Restored images (file or directory).
    pub restored: PathBuf,
    /// Measurements y (file or directory), paired by the same rule; used for consistency and plots.
    pub measurements: Option<PathBuf>,
    /// The degradation H for the consistency metric (needs `measurements`).
    pub operator: Option<Degradation>,
    /// Value range of `.npy` files (the model's range), mapped to [0, 1].
    pub npy_range: [f64; 2],
}

impl EvalOptions {
    /// Reference and restored roots with no measurements, `.npy` in [−1, 1].
    pub fn new(reference: impl Into<PathBuf>, restored: impl Into<PathBuf>) -> Self {
        EvalOptions {
            reference: reference.into(),
            restored: restored.into(),
            measurements: None,
            operator: None,
            npy_range: [-1.0, 1.0],
        }
    }
}

/// One reference image and what became of it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageRecord {
    /// Relative path without extension.
    pub name: String,
    /// Reference file.
    pub reference: PathBuf,
    /// Restored file.
    pub restored: PathBuf,
    /// Measurement file, when a measurements root was given and holds one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurement: Option<PathBuf>,
    /// The metrics; absent when the pair could not be evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics: Option<ImageMetrics>,
    /// Why the pair (or its consistency) could not be evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A whole evaluation: per-image records, the files that could not be paired, and the means.
#[derive(Debug, Clone, Serialize)]
pub struct EvalReport {
    /// Reference root.
    pub reference: PathBuf,
    /// Restored root.
    pub restored: PathBuf,
    /// Measurements root, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub measurements: Option<PathBuf>,
    /// Data range the metrics used (values are scaled to [0, 1]).
    pub data_range: f64,
    /// One record per paired reference image, sorted by name.
    pub images: Vec<ImageRecord>,
    /// Reference images with no restored file.
    pub missing: Vec<String>,
    /// Restored files with no reference (ignored).
    pub unmatched: Vec<String>,
    /// Means over the images that were evaluated.
    pub summary: Summary,
}

impl EvalReport {
    /// Number of reference images that are missing or failed.
    pub fn failures(&self) -> usize {
        self.missing.len() + self.images.iter().filter(|r| r.error.is_some()).count()
    }

    /// Write the report as pretty JSON (non-finite numbers, e.g. the PSNR of an exact restoration, are
    /// written as `null`).
    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::Numerical(format!("cannot serialize report: {e}")))?;
        std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
    }
}

fn evaluate_one(
    reference: &Path,
    restored: &Path,
    measurement: Option<&Path>,
    opts: &EvalOptions,
) -> Result<ImageMetrics> {
    let x = load(reference, opts.npy_range)?;
    let x_hat = load(restored, opts.npy_range)?;
    if x.dim() != x_hat.dim() {
        let size = |d: (usize, usize, usize)| {
            format!("{}x{} {}", d.2, d.1, if d.0 == 1 { "gray" } else { "rgb" })
        };
        return Err(Error::Shape(format!(
            "sizes differ: reference {} is {}, restored {} is {} (eval compares images of the same \
             size and colour)",
            reference.display(),
            size(x.dim()),
            restored.display(),
            size(x_hat.dim())
        )));
    }
    let mut m = ImageMetrics::compare(&x, &x_hat, 1.0)?;
    if let (Some(yp), Some(deg)) = (measurement, &opts.operator) {
        let y = load(yp, opts.npy_range)?;
        let d = x_hat.dim();
        let op = deg.build([d.0, d.1, d.2])?;
        m.consistency = Some(consistency(op.as_ref(), &x_hat, &y)?);
    }
    Ok(m)
}

/// Pair, load and score every image (in parallel); see the module docs for the rules.
pub fn evaluate(opts: &EvalOptions) -> Result<EvalReport> {
    if opts.operator.is_some() && opts.measurements.is_none() {
        return Err(Error::invalid(
            "operator",
            "given without measurements",
            "a measurements directory to check consistency against",
        ));
    }
    let pairing = pair(&opts.reference, &opts.restored)?;
    let measurements = match &opts.measurements {
        Some(root) => Some(scan(root)?),
        None => None,
    };
    let images: Vec<ImageRecord> = pairing
        .pairs
        .par_iter()
        .map(|(key, r, o)| {
            let measurement = measurements
                .as_ref()
                .and_then(|m| m.get(key))
                .map(|c| choose(c, None));
            let mut record = ImageRecord {
                name: key.clone(),
                reference: r.clone(),
                restored: o.clone(),
                measurement: measurement.clone(),
                metrics: None,
                error: None,
            };
            if opts.operator.is_some() && measurement.is_none() {
                record.error = Some(format!("no measurement file for {key}"));
                return record;
            }
            match evaluate_one(r, o, measurement.as_deref(), opts) {
                Ok(m) => record.metrics = Some(m),
                Err(e) => record.error = Some(e.to_string()),
            }
            record
        })
        .collect();
    let summary = Summary::of(images.iter().filter_map(|r| r.metrics.as_ref()));
    Ok(EvalReport {
        reference: opts.reference.clone(),
        restored: opts.restored.clone(),
        measurements: opts.measurements.clone(),
        data_range: 1.0,
        images,
        missing: pairing.missing,
        unmatched: pairing.unmatched,
        summary,
    })
}
