//! The pipeline spec (docs/spec.md): YAML → typed, defaulted, validated [`PipelineSpec`].
//!
//! * Parsing is serde-saphyr into a position-aware tree ([`node`]), so every error names `file:line:col`.
//! * `--set a.b=value` overrides ([`Override`]) are spliced into that tree *before* validation; the value
//!   is parsed as YAML (`--set sampler.steps=10` is an integer, `--set io.format=png` a string). Paths
//!   given by `--set` resolve against the current directory (they come from the command line); paths in the
//!   file resolve against the spec file's directory.
//! * Unknown keys are errors with a "did you mean" for a close name (edit distance ≤ 2, or the same key in
//!   another section); every number is range-checked ("invalid steps 0 (expected >= 1)").
//! * The spec maps to [`SamplerConfig`] (`None` = the sampler's default, docs/samplers.md §12),
//!   [`Degradation`] and [`RuntimeOptions`]. Masks of kind box / random / half are generated here
//!   ([`MaskSpec::generate`]); `file` and `per-image` masks are *loaded* by the pipeline (this module knows
//!   neither ONNX nor image files).

use std::path::{Path, PathBuf};

use ndarray::Array2;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::model::{EngineChoice, JacobianMode, Provider, RuntimeOptions};
pub use crate::operators::OperatorKind;
use crate::operators::{Degradation, DEFAULT_SVD_THRESHOLD};
use crate::samplers::{SamplerConfig, SamplerName, SamplerVariant};

pub mod hash;
pub mod node;
mod short;
pub mod study;

use node::{Node, Origin, Value};

/// Which half of the image a `half` mask hides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
    Top,
    Bottom,
}

/// An inpainting mask (`task.mask`). In generated masks 1 = known, 0 = missing.
#[derive(Debug, Clone, PartialEq)]
pub enum MaskSpec {
    /// A missing rectangle: columns x..x+width, rows y..y+height.
    Box {
        x: usize,
        y: usize,
        width: usize,
        height: usize,
    },
    /// `fraction` of the pixels missing, drawn uniformly without replacement, seeded per image.
    Random { fraction: f64 },
    /// One half of the image missing (`side` names the missing half).
    Half { side: Side },
    /// One PNG for all images: white (≥ 50%) = known.
    File { path: PathBuf },
    /// One PNG per input, at the input's relative path (extension `.png`) under `dir`.
    PerImage { dir: PathBuf },
}

impl MaskSpec {
    /// The mask for an `h`×`w` image (1 = known), for the kinds that are generated; `None` for `file` and
    /// `per-image` (the pipeline loads those). `seed` is the image's seed (random masks only).
    pub fn generate(&self, h: usize, w: usize, seed: u64) -> Result<Option<Array2<f64>>> {
        Ok(Some(match self {
            MaskSpec::Box {
                x,
                y,
                width,
                height,
            } => {
                if x + width > w || y + height > h {
                    return Err(Error::invalid(
                        "mask box",
                        format!("x={x} y={y} width={width} height={height}"),
                        format!("a box inside the {w}x{h} image"),
                    ));
                }
                let mut m = Array2::ones((h, w));
                m.slice_mut(ndarray::s![*y..y + height, *x..x + width])
                    .fill(0.0);
                m
            }
            MaskSpec::Random { fraction } => {
                let n = h * w;
                let missing = (fraction * n as f64).round() as usize;
                let mut idx: Vec<usize> = (0..n).collect();
                // A stream of its own, so that the mask never shares draws with the sampler's noise.
                let mut rng = ChaCha20Rng::seed_from_u64(seed ^ 0x6d61_736b_6d61_736b);
                idx.shuffle(&mut rng);
                let mut m = Array2::ones((h, w));
                for &i in &idx[..missing] {
                    m[(i / w, i % w)] = 0.0;
                }
                m
            }
            MaskSpec::Half { side } => {
                let mut m = Array2::ones((h, w));
                match side {
                    Side::Left => m.slice_mut(ndarray::s![.., ..w / 2]).fill(0.0),
                    Side::Right => m.slice_mut(ndarray::s![.., w / 2..]).fill(0.0),
                    Side::Top => m.slice_mut(ndarray::s![..h / 2, ..]).fill(0.0),
                    Side::Bottom => m.slice_mut(ndarray::s![h / 2.., ..]).fill(0.0),
                }
                m
            }
            MaskSpec::File { .. } | MaskSpec::PerImage { .. } => return Ok(None),
        }))
    }

    /// Whether every image gets the same mask (for a given size), so operators can be shared.
    pub fn is_shared(&self) -> bool {
        matches!(
            self,
            MaskSpec::Box { .. } | MaskSpec::Half { .. } | MaskSpec::File { .. }
        )
    }
}

/// `task.kernel`.
#[derive(Debug, Clone, PartialEq)]
pub struct KernelSpec {
    pub size: usize,
    /// Gaussian std in pixels (deblur-gaussian only).
    pub sigma: Option<f64>,
}

/// `task`.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskSpec {
    pub operator: OperatorKind,
    /// Integer factor of sr-* (1 for other operators).
    pub scale: usize,
    pub mask: Option<MaskSpec>,
    pub kernel: Option<KernelSpec>,
    /// Std of the measurement noise on the model's value scale.
    pub noise_sigma: f64,
    /// Threshold below which 1-D singular values count as zero (sr-bicubic, deblur-*).
    pub svd_threshold: f64,
    /// `task.data_consistency`: after the sampler, x ← x + H†(y − H x), so the restoration agrees with
    /// the measurement (known pixels kept, SR output downsamples to y). Default: on when noise_sigma = 0.
    pub data_consistency: bool,
}

impl TaskSpec {
    /// The degradation, given the image's mask for `inpaint` (1 = known, H×W of the restored image).
    pub fn degradation(&self, mask: Option<Array2<f64>>) -> Result<Degradation> {
        let t = self;
        Ok(match t.operator {
            OperatorKind::Denoise => Degradation::Denoise,
            OperatorKind::SrAverage => Degradation::SrAverage { scale: t.scale },
            OperatorKind::SrBicubic => Degradation::SrBicubic {
                scale: t.scale,
                threshold: t.svd_threshold,
            },
            OperatorKind::Inpaint => Degradation::Inpaint {
                mask: mask.ok_or_else(|| {
                    Error::Unsupported("inpaint needs a mask for every image".into())
                })?,
            },
            OperatorKind::DeblurGaussian => {
                let k = t.kernel.as_ref().expect("validated");
                Degradation::DeblurGaussian {
                    size: k.size,
                    sigma: k.sigma.expect("validated"),
                    threshold: t.svd_threshold,
                }
            }
            OperatorKind::DeblurUniform => Degradation::DeblurUniform {
                size: t.kernel.as_ref().expect("validated").size,
                threshold: t.svd_threshold,
            },
            OperatorKind::Colorize => Degradation::Colorize,
        })
    }
}

/// `sampler`: the sampler settings themselves plus what only a spec names.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplerSpec {
    /// The sampler's settings (`None` = the sampler's own default).
    pub config: SamplerConfig,
    /// `.npy` of the initial noise (N,C,H,W) or (C,H,W).
    pub init_noise: Option<PathBuf>,
    /// `sampler.samples`: restorations averaged per image (default 1). K > 1 runs the sampler K times
    /// with independent noise ([`sample_seed`]) and writes their mean, a Monte-Carlo estimate of the
    /// posterior mean E[x | y] at K× the network cost (see [`Engine::restore`](crate::engine::Engine)).
    pub samples: usize,
}

/// `runtime.tile.size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileSize {
    /// The model's image size.
    Model,
    Pixels(usize),
}

/// `runtime`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuntimeSpec {
    pub engine: EngineChoice,
    pub providers: Vec<Provider>,
    /// Whether `runtime.providers` was given (else the default list, whose GPU providers are tried
    /// silently).
    pub providers_given: bool,
    pub batch_size: usize,
    pub threads: usize,
    pub tile_size: TileSize,
    pub tile_overlap: usize,
    pub trt_cache: Option<PathBuf>,
    /// `runtime.residual_memory`: GiB of split-VJP residuals kept between a forward and its VJP;
    /// `None` (`auto`): a quarter of the free host memory, or 1 GiB on a GPU.
    pub residual_memory: Option<f64>,
}

/// `io.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Same,
    Png,
    Tiff,
    Jpeg,
    Npy,
}

/// `io.bit_depth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BitDepth {
    Same,
    Eight,
    Sixteen,
}

/// `io`.
#[derive(Debug, Clone, PartialEq)]
pub struct IoSpec {
    pub input: Option<PathBuf>,
    pub output: Option<PathBuf>,
    pub format: OutputFormat,
    pub bit_depth: BitDepth,
    pub skip_existing: bool,
    pub jpeg_quality: u8,
}

/// A validated pipeline spec with every default filled in and every path resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct PipelineSpec {
    /// The spec file, if it came from one.
    pub source: Option<PathBuf>,
    pub version: u32,
    pub model: PathBuf,
    /// Where `model` was set (`file:line:col: ` or `--set …: `), for errors about the model folder; not
    /// part of the hashes.
    pub model_location: String,
    pub task: TaskSpec,
    pub sampler: SamplerSpec,
    pub seed: u64,
    pub runtime: RuntimeSpec,
    pub io: IoSpec,
}

/// One `--set KEY=VALUE` override.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    pub path: Vec<String>,
    pub raw: String,
    pub value: Node,
}

impl Override {
    /// Parse `a.b.c=value`; the value is read as YAML (a string if it is not valid YAML).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = |m: &str| Error::Spec {
            location: format!("--set {s}: "),
            message: m.into(),
        };
        let (key, val) = s
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE (e.g. sampler.steps=10)"))?;
        let path: Vec<String> = key.trim().split('.').map(|p| p.trim().to_owned()).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(bad(
                "empty key segment (expected a dotted path like sampler.steps)",
            ));
        }
        let mut value = match node::parse(val) {
            Ok(n) => n,
            Err(_) => Node::new(Value::Str(val.to_owned())),
        };
        value.set_origin(&Origin::Override(s.to_owned()));
        Ok(Override {
            path,
            raw: s.to_owned(),
            value,
        })
    }
}

/// The keys each section accepts.
const ROOT_KEYS: &[&str] = &[
    "version", "model", "task", "sampler", "seed", "runtime", "io",
];
const TASK_KEYS: &[&str] = &[
    "operator",
    "scale",
    "mask",
    "kernel",
    "noise_sigma",
    "svd_threshold",
    "data_consistency",
];
const MASK_KEYS: &[&str] = &[
    "kind", "x", "y", "width", "height", "fraction", "side", "path", "dir",
];
const KERNEL_KEYS: &[&str] = &["size", "sigma"];
const SAMPLER_KEYS: &[&str] = &[
    "name",
    "steps",
    "guidance",
    "lambda",
    "start_time",
    "end_time",
    "jacobian",
    "init_noise",
    "eta",
    "eta_b",
    "num_eps",
    "variant",
    "samples",
];
const RUNTIME_KEYS: &[&str] = &[
    "engine",
    "providers",
    "batch_size",
    "threads",
    "tile",
    "trt_cache",
    "residual_memory",
];
const TILE_KEYS: &[&str] = &["size", "overlap"];
const IO_KEYS: &[&str] = &[
    "input",
    "output",
    "format",
    "bit_depth",
    "skip_existing",
    "jpeg_quality",
];

fn keys_for(path: &[&str]) -> Option<&'static [&'static str]> {
    Some(match path {
        [] => ROOT_KEYS,
        ["task"] => TASK_KEYS,
        ["task", "mask"] => MASK_KEYS,
        ["task", "kernel"] => KERNEL_KEYS,
        ["sampler"] => SAMPLER_KEYS,
        ["runtime"] => RUNTIME_KEYS,
        ["runtime", "tile"] => TILE_KEYS,
        ["io"] => IO_KEYS,
        _ => return None,
    })
}

/// Optimal-string-alignment distance (Levenshtein plus adjacent transpositions; keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, v) in d[0].iter_mut().enumerate() {
        *v = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut v = (d[i - 1][j - 1] + cost)
                .min(d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                v = v.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = v;
        }
    }
    d[a.len()][b.len()]
}

/// The closest of `candidates` to `word`, if close enough to be a likely typo.
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let n = word.chars().count();
    let limit = if n <= 3 { 1 } else { (n / 3).clamp(2, 3) };
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Where a spec's values come from, for error messages and path resolution.
struct Ctx<'a> {
    file: &'a str,
    base_dir: &'a Path,
}

impl Ctx<'_> {
    fn loc(&self, origin: &Origin) -> String {
        match origin {
            Origin::File { line, col } if *line > 0 => {
                format!("{}:{}:{}: ", self.file, line, col)
            }
            Origin::File { .. } => format!("{}: ", self.file),
            Origin::Override(s) => format!("--set {s}: "),
        }
    }

    fn err(&self, origin: &Origin, message: impl Into<String>) -> Error {
        Error::Spec {
            location: self.loc(origin),
            message: message.into(),
        }
    }

    /// "invalid WHAT VALUE (expected …)" at the node's position.
    fn invalid(&self, what: &str, node: &Node, expected: &str) -> Error {
        self.err(
            &node.origin,
            format!(
                "invalid {what} {} (expected {expected})",
                node.value.display()
            ),
        )
    }

    fn path(&self, node: &Node, what: &str) -> Result<PathBuf> {
        let s = self.string(node, what)?;
        if s.is_empty() {
            return Err(self.invalid(what, node, "a non-empty path"));
        }
        let p = PathBuf::from(s);
        Ok(match node.origin {
            Origin::File { .. } if p.is_relative() => normalize(&self.base_dir.join(p)),
            _ => p,
        })
    }

    fn string(&self, node: &Node, what: &str) -> Result<String> {
        match &node.value {
            Value::Str(s) => Ok(s.clone()),
            v => Err(self.err(
                &node.origin,
                format!("{what} must be a string, found {}", v.type_name()),
            )),
        }
    }

    fn int(&self, node: &Node, what: &str, lo: i128, hi: i128) -> Result<i128> {
        match &node.value {
            Value::Int(i) if *i >= lo && *i <= hi => Ok(*i),
            Value::Int(_) => Err(self.invalid(what, node, &range_text(lo, hi))),
            Value::Float(f) if f.fract() == 0.0 && f.is_finite() => {
                let i = *f as i128;
                if i >= lo && i <= hi {
                    Ok(i)
                } else {
                    Err(self.invalid(what, node, &range_text(lo, hi)))
                }
            }
            _ => Err(self.invalid(what, node, &format!("an integer {}", range_text(lo, hi)))),
        }
    }

    fn usize(&self, node: &Node, what: &str, lo: usize, hi: usize) -> Result<usize> {
        self.int(node, what, lo as i128, hi as i128)
            .map(|i| i as usize)
    }

    /// A finite number in [lo, hi] (open ends where `lo_open` / `hi_open`).
    fn float(
        &self,
        node: &Node,
        what: &str,
        (lo, lo_open): (f64, bool),
        (hi, hi_open): (f64, bool),
    ) -> Result<f64> {
        let v = match &node.value {
            Value::Int(i) => *i as f64,
            Value::Float(f) => *f,
            _ => {
                return Err(self.invalid(what, node, "a number"));
            }
        };
        let ok_lo = if lo_open { v > lo } else { v >= lo };
        let ok_hi = if hi_open { v < hi } else { v <= hi };
        if v.is_finite() && ok_lo && ok_hi {
            Ok(v)
        } else {
            let expected = match (lo.is_finite(), hi.is_finite()) {
                (true, true) => format!(
                    "a value in {}{lo}, {hi}{}",
                    if lo_open { "(" } else { "[" },
                    if hi_open { ")" } else { "]" }
                ),
                (true, false) => {
                    format!("a finite value {} {lo}", if lo_open { ">" } else { ">=" })
                }
                (false, true) => {
                    format!("a finite value {} {hi}", if hi_open { "<" } else { "<=" })
                }
                (false, false) => "a finite number".into(),
            };
            Err(self.invalid(what, node, &expected))
        }
    }

    fn bool(&self, node: &Node, what: &str) -> Result<bool> {
        match &node.value {
            Value::Bool(b) => Ok(*b),
            _ => Err(self.invalid(what, node, "true or false")),
        }
    }

    /// One of the names in `choices`.
    fn choice<T: Copy>(&self, node: &Node, what: &str, choices: &[(&str, T)]) -> Result<T> {
        let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
        let s = match &node.value {
            Value::Str(s) => s.as_str(),
            _ => return Err(self.invalid(what, node, &format!("one of {}", names.join(", ")))),
        };
        if let Some((_, v)) = choices.iter().find(|(n, _)| *n == s) {
            return Ok(*v);
        }
        let hint = did_you_mean(s, &names)
            .map(|c| format!("; did you mean `{c}`?"))
            .unwrap_or_default();
        Err(self.err(
            &node.origin,
            format!(
                "invalid {what} {s:?} (expected one of {}){hint}",
                names.join(", ")
            ),
        ))
    }
}

/// Remove `.` and `name/..` pairs lexically (so `pipelines/../out` reads `out` in logs and manifests).
/// Leading `..` components are kept; symbolic links are not resolved.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            _ => out.push(c),
        }
    }
    if out.is_empty() {
        PathBuf::from(".")
    } else {
        out.iter().collect()
    }
}

fn range_text(lo: i128, hi: i128) -> String {
    if hi >= i64::MAX as i128 {
        format!(">= {lo}")
    } else {
        format!("{lo}..={hi}")
    }
}

/// A mapping node's entries, with lookups by key; `null` values count as absent.
struct Section<'a> {
    entries: &'a [(String, Origin, Node)],
    origin: &'a Origin,
}

impl<'a> Section<'a> {
    fn of(ctx: &Ctx, node: &'a Node, what: &str) -> Result<Self> {
        match &node.value {
            Value::Map(entries) => Ok(Section {
                entries,
                origin: &node.origin,
            }),
            v => Err(ctx.err(
                &node.origin,
                format!("{what} must be a mapping, found {}", v.type_name()),
            )),
        }
    }

    fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries
            .iter()
            .find(|(k, _, n)| k == key && n.value != Value::Null)
            .map(|(_, _, n)| n)
    }

    fn require(&self, ctx: &Ctx, key: &str, section: &str) -> Result<&'a Node> {
        self.get(key).ok_or_else(|| {
            ctx.err(
                self.origin,
                format!("missing key `{key}` in {section} (it is required)"),
            )
        })
    }

    /// Error on a key that does not apply (e.g. `fraction` on a box mask).
    fn forbid(&self, ctx: &Ctx, keys: &[&str], why: &str) -> Result<()> {
        for (k, o, _) in self.entries {
            if keys.contains(&k.as_str()) {
                return Err(ctx.err(o, format!("key `{k}` does not apply to {why}")));
            }
        }
        Ok(())
    }
}

/// Check every mapping key against the schema; the first unknown key is an error with a suggestion.
fn check_keys(ctx: &Ctx, node: &Node, path: &mut Vec<String>) -> Result<()> {
    let Value::Map(entries) = &node.value else {
        return Ok(());
    };
    let owned = path.clone();
    let p: Vec<&str> = owned.iter().map(String::as_str).collect();
    let Some(allowed) = keys_for(&p) else {
        return Ok(());
    };
    for (k, o, child) in entries {
        if !allowed.contains(&k.as_str()) {
            let section = if p.is_empty() {
                "the spec".to_owned()
            } else {
                format!("`{}`", p.join("."))
            };
            let mut hint = did_you_mean(k, allowed)
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            if hint.is_empty() {
                // The key may belong to another section (`steps` at the top level).
                for sec in [
                    &["task"][..],
                    &["task", "mask"],
                    &["task", "kernel"],
                    &["sampler"],
                    &["runtime"],
                    &["runtime", "tile"],
                    &["io"],
                ] {
                    let keys = keys_for(sec).unwrap_or(&[]);
                    if keys.contains(&k.as_str()) && sec != p.as_slice() {
                        hint = format!("; did you mean `{}.{k}`?", sec.join("."));
                        break;
                    }
                }
            }
            return Err(ctx.err(
                o,
                format!(
                    "unknown key `{k}` in {section} (expected one of {}){hint}",
                    allowed.join(", ")
                ),
            ));
        }
        path.push(k.clone());
        check_keys(ctx, child, path)?;
        path.pop();
    }
    Ok(())
}

/// Put an override's value at its dotted path, creating mappings on the way.
fn apply_override(ctx: &Ctx, root: &mut Node, ov: &Override) -> Result<()> {
    let origin = Origin::Override(ov.raw.clone());
    let mut cur = root;
    for (i, key) in ov.path.iter().enumerate() {
        if cur.value == Value::Null {
            cur.value = Value::Map(Vec::new());
        }
        let Value::Map(entries) = &mut cur.value else {
            return Err(ctx.err(
                &origin,
                format!(
                    "cannot set `{}`: `{}` is not a mapping",
                    ov.path.join("."),
                    ov.path[..i].join(".")
                ),
            ));
        };
        let pos = match entries.iter().position(|(k, _, _)| k == key) {
            Some(p) => p,
            None => {
                entries.push((key.clone(), origin.clone(), Node::new(Value::Null)));
                entries.len() - 1
            }
        };
        entries[pos].1 = origin.clone();
        cur = &mut entries[pos].2;
    }
    *cur = ov.value.clone();
    Ok(())
}

impl PipelineSpec {
    /// Read, override and validate a spec file.
    pub fn load(path: &Path, overrides: &[Override]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        let mut spec = Self::parse(&text, &path.display().to_string(), base, overrides)?;
        spec.source = Some(path.to_path_buf());
        Ok(spec)
    }

    /// Parse a spec from text. `file` names it in errors; relative paths resolve against `base_dir`.
    pub fn parse(text: &str, file: &str, base_dir: &Path, overrides: &[Override]) -> Result<Self> {
        let ctx = Ctx { file, base_dir };
        let mut root = node::parse(text).map_err(|(loc, msg)| Error::Spec {
            location: match loc {
                Some((l, c)) if l > 0 => format!("{file}:{l}:{c}: "),
                _ => format!("{file}: "),
            },
            message: format!("invalid YAML: {msg}"),
        })?;
        if root.value == Value::Null {
            root.value = Value::Map(Vec::new());
        }
        for ov in overrides {
            apply_override(&ctx, &mut root, ov)?;
        }
        Section::of(&ctx, &root, "the spec")?;
        check_keys(&ctx, &root, &mut Vec::new())?;
        Self::from_tree(&ctx, &root)
    }

    fn from_tree(ctx: &Ctx, root: &Node) -> Result<Self> {
        let top = Section::of(ctx, root, "the spec")?;
        let version = match top.get("version") {
            Some(n) => ctx.usize(n, "version", 1, 1)? as u32,
            None => 1,
        };
        let model_node = top.require(ctx, "model", "the spec")?;
        let model = match &model_node.value {
            // `builtin:<name>`: a model shipped with conjure, found from anywhere (model::builtin).
            Value::Str(s) if s.starts_with(crate::model::builtin::PREFIX) => {
                crate::model::builtin::resolve(s).map_err(|m| ctx.err(&model_node.origin, m))?
            }
            _ => ctx.path(model_node, "model")?,
        };
        let model_location = ctx.loc(&model_node.origin);
        let task = Self::task(ctx, top.require(ctx, "task", "the spec")?)?;
        let sampler = Self::sampler(ctx, top.require(ctx, "sampler", "the spec")?)?;
        let seed = match top.get("seed") {
            Some(n) => ctx.int(n, "seed", 0, u64::MAX as i128)? as u64,
            None => 0,
        };
        let runtime = Self::runtime(ctx, top.get("runtime"))?;
        let io = Self::io(ctx, top.get("io"))?;
        Ok(PipelineSpec {
            source: None,
            version,
            model,
            model_location,
            task,
            sampler,
            seed,
            runtime,
            io,
        })
    }

    fn task(ctx: &Ctx, node: &Node) -> Result<TaskSpec> {
        let s = Section::of(ctx, node, "task")?;
        let op_choices: Vec<(&str, OperatorKind)> =
            OperatorKind::ALL.iter().map(|k| (k.as_str(), *k)).collect();
        let operator = ctx.choice(s.require(ctx, "operator", "task")?, "operator", &op_choices)?;
        let scale = match (operator.is_sr(), s.get("scale")) {
            (true, Some(n)) => ctx.usize(n, "scale", 2, 64)?,
            (true, None) => {
                return Err(ctx.err(
                    &node.origin,
                    format!(
                        "missing key `scale` in task (required by {})",
                        operator.as_str()
                    ),
                ))
            }
            (false, _) => {
                s.forbid(ctx, &["scale"], &format!("operator {}", operator.as_str()))?;
                1
            }
        };
        let mask = match (operator, s.get("mask")) {
            (OperatorKind::Inpaint, Some(n)) => Some(Self::mask(ctx, n)?),
            (OperatorKind::Inpaint, None) => {
                return Err(ctx.err(
                    &node.origin,
                    "missing key `mask` in task (required by inpaint)",
                ))
            }
            _ => {
                s.forbid(ctx, &["mask"], &format!("operator {}", operator.as_str()))?;
                None
            }
        };
        let kernel = match operator {
            OperatorKind::DeblurGaussian | OperatorKind::DeblurUniform => {
                let kn = s.get("kernel").ok_or_else(|| {
                    ctx.err(
                        &node.origin,
                        format!(
                            "missing key `kernel` in task (required by {})",
                            operator.as_str()
                        ),
                    )
                })?;
                let k = Section::of(ctx, kn, "task.kernel")?;
                let size_node = k.require(ctx, "size", "task.kernel")?;
                let size = ctx.usize(size_node, "kernel size", 1, 1025)?;
                let sigma = if operator == OperatorKind::DeblurGaussian {
                    if size % 2 == 0 {
                        return Err(ctx.invalid("kernel size", size_node, "an odd number of taps"));
                    }
                    Some(ctx.float(
                        k.require(ctx, "sigma", "task.kernel")?,
                        "kernel sigma",
                        (0.0, true),
                        (f64::INFINITY, false),
                    )?)
                } else {
                    k.forbid(ctx, &["sigma"], "deblur-uniform")?;
                    None
                };
                Some(KernelSpec { size, sigma })
            }
            _ => {
                s.forbid(ctx, &["kernel"], &format!("operator {}", operator.as_str()))?;
                None
            }
        };
        let noise_sigma = match s.get("noise_sigma") {
            Some(n) => ctx.float(n, "noise_sigma", (0.0, false), (f64::INFINITY, false))?,
            None => 0.0,
        };
        let svd_threshold = match s.get("svd_threshold") {
            Some(n) => ctx.float(n, "svd_threshold", (0.0, false), (1.0, true))?,
            None => DEFAULT_SVD_THRESHOLD,
        };
        let data_consistency = match s.get("data_consistency") {
            Some(n) => ctx.bool(n, "data_consistency")?,
            None => noise_sigma == 0.0,
        };
        Ok(TaskSpec {
            operator,
            scale,
            mask,
            kernel,
            noise_sigma,
            svd_threshold,
            data_consistency,
        })
    }

    fn mask(ctx: &Ctx, node: &Node) -> Result<MaskSpec> {
        let m = Section::of(ctx, node, "task.mask")?;
        #[derive(Clone, Copy)]
        enum K {
            Box,
            Random,
            Half,
            File,
            PerImage,
        }
        let kind = ctx.choice(
            m.require(ctx, "kind", "task.mask")?,
            "mask kind",
            &[
                ("box", K::Box),
                ("random", K::Random),
                ("half", K::Half),
                ("file", K::File),
                ("per-image", K::PerImage),
            ],
        )?;
        let own: &[&str] = match kind {
            K::Box => &["x", "y", "width", "height"],
            K::Random => &["fraction"],
            K::Half => &["side"],
            K::File => &["path"],
            K::PerImage => &["dir"],
        };
        let others: Vec<&str> = MASK_KEYS
            .iter()
            .copied()
            .filter(|k| *k != "kind" && !own.contains(k))
            .collect();
        let kind_name = match kind {
            K::Box => "box",
            K::Random => "random",
            K::Half => "half",
            K::File => "file",
            K::PerImage => "per-image",
        };
        m.forbid(ctx, &others, &format!("mask kind {kind_name}"))?;
        let big = 1 << 20;
        Ok(match kind {
            K::Box => MaskSpec::Box {
                x: ctx.usize(m.require(ctx, "x", "task.mask")?, "mask x", 0, big)?,
                y: ctx.usize(m.require(ctx, "y", "task.mask")?, "mask y", 0, big)?,
                width: ctx.usize(m.require(ctx, "width", "task.mask")?, "mask width", 1, big)?,
                height: ctx.usize(
                    m.require(ctx, "height", "task.mask")?,
                    "mask height",
                    1,
                    big,
                )?,
            },
            K::Random => MaskSpec::Random {
                fraction: ctx.float(
                    m.require(ctx, "fraction", "task.mask")?,
                    "mask fraction",
                    (0.0, false),
                    (1.0, true),
                )?,
            },
            K::Half => MaskSpec::Half {
                side: match m.get("side") {
                    Some(n) => ctx.choice(
                        n,
                        "mask side",
                        &[
                            ("left", Side::Left),
                            ("right", Side::Right),
                            ("top", Side::Top),
                            ("bottom", Side::Bottom),
                        ],
                    )?,
                    None => Side::Right,
                },
            },
            K::File => MaskSpec::File {
                path: ctx.path(m.require(ctx, "path", "task.mask")?, "mask path")?,
            },
            K::PerImage => MaskSpec::PerImage {
                dir: ctx.path(m.require(ctx, "dir", "task.mask")?, "mask dir")?,
            },
        })
    }

    fn sampler(ctx: &Ctx, node: &Node) -> Result<SamplerSpec> {
        let s = Section::of(ctx, node, "sampler")?;
        let names: Vec<(&str, SamplerName)> =
            SamplerName::ALL.iter().map(|n| (n.as_str(), *n)).collect();
        let name = ctx.choice(s.require(ctx, "name", "sampler")?, "sampler", &names)?;
        let f = |key: &str, lo: (f64, bool), hi: (f64, bool)| -> Result<Option<f64>> {
            s.get(key).map(|n| ctx.float(n, key, lo, hi)).transpose()
        };
        let inf = (f64::INFINITY, false);
        let steps = s
            .get("steps")
            .map(|n| ctx.usize(n, "steps", 1, 100_000))
            .transpose()?;
        let guidance = f("guidance", (0.0, false), inf)?;
        let lambda = f("lambda", (-f64::INFINITY, false), inf)?;
        let start_time = f("start_time", (0.0, true), (1.0, false))?;
        let end_time = f("end_time", (0.0, true), (1.0, true))?;
        if let (Some(st), Some(et), Some(n)) = (start_time, end_time, s.get("end_time")) {
            if et >= st {
                return Err(ctx.invalid("end_time", n, &format!("a value below start_time {st}")));
            }
        }
        let eta = f("eta", (0.0, false), (1.0, false))?;
        let eta_b = f("eta_b", (0.0, false), (1.0, false))?;
        let num_eps = f("num_eps", (0.0, false), (1e-2, false))?;
        let variant = match s.get("variant") {
            None => None,
            Some(n) => {
                if name.variants().is_empty() {
                    return Err(ctx.err(
                        &n.origin,
                        format!("sampler {} has no variants", name.as_str()),
                    ));
                }
                let choices: Vec<(&str, SamplerVariant)> =
                    name.variants().iter().map(|v| (v.as_str(), *v)).collect();
                Some(ctx.choice(n, "variant", &choices)?)
            }
        };
        let jacobian = match s.get("jacobian") {
            Some(n) => ctx.choice(n, "jacobian", &JacobianMode::ALL.map(|m| (m.as_str(), m)))?,
            None => JacobianMode::Exact,
        };
        let init_noise = s
            .get("init_noise")
            .map(|n| ctx.path(n, "init_noise"))
            .transpose()?;
        let samples = match s.get("samples") {
            None => 1,
            Some(n) => {
                let k = ctx.usize(n, "samples", 1, 1024)?;
                if k > 1 && init_noise.is_some() {
                    return Err(ctx.err(
                        &n.origin,
                        "sampler.samples > 1 averages restorations from independent noise draws; \
                         it cannot be combined with sampler.init_noise, which fixes the one draw",
                    ));
                }
                k
            }
        };
        Ok(SamplerSpec {
            config: SamplerConfig {
                name,
                steps,
                guidance,
                lambda,
                start_time,
                end_time,
                eta,
                eta_b,
                num_eps,
                variant,
                jacobian,
            },
            init_noise,
            samples,
        })
    }

    fn runtime(ctx: &Ctx, node: Option<&Node>) -> Result<RuntimeSpec> {
        let d = RuntimeOptions::default();
        let mut r = RuntimeSpec {
            engine: d.engine,
            providers: d.providers,
            providers_given: false,
            batch_size: d.batch_size,
            threads: d.threads,
            tile_size: TileSize::Model,
            tile_overlap: 8,
            trt_cache: None,
            residual_memory: None,
        };
        let Some(node) = node else { return Ok(r) };
        let s = Section::of(ctx, node, "runtime")?;
        if let Some(n) = s.get("engine") {
            r.engine = ctx.choice(
                n,
                "engine",
                &[
                    ("auto", EngineChoice::Auto),
                    ("onnxruntime", EngineChoice::OnnxRuntime),
                    ("tract", EngineChoice::Tract),
                ],
            )?;
        }
        if let Some(n) = s.get("providers") {
            let Value::Seq(items) = &n.value else {
                return Err(ctx.invalid("providers", n, "a list such as [cuda, cpu]"));
            };
            if items.is_empty() {
                return Err(ctx.err(&n.origin, "invalid providers [] (expected at least one)"));
            }
            let mut ps = Vec::new();
            for it in items {
                let p = ctx.choice(
                    it,
                    "provider",
                    &[
                        ("tensorrt", Provider::TensorRt),
                        ("cuda", Provider::Cuda),
                        ("cpu", Provider::Cpu),
                    ],
                )?;
                if ps.contains(&p) {
                    return Err(ctx.invalid("provider", it, "each provider at most once"));
                }
                ps.push(p);
            }
            r.providers = ps;
            r.providers_given = true;
        }
        if let Some(n) = s.get("batch_size") {
            r.batch_size = ctx.usize(n, "batch_size", 1, 4096)?;
        }
        if let Some(n) = s.get("threads") {
            r.threads = ctx.usize(n, "threads", 0, 4096)?;
        }
        if let Some(n) = s.get("trt_cache") {
            r.trt_cache = Some(ctx.path(n, "trt_cache")?);
        }
        if let Some(n) = s.get("residual_memory") {
            r.residual_memory = match &n.value {
                Value::Str(s) if s == "auto" => None,
                Value::Int(_) | Value::Float(_) => {
                    Some(ctx.float(n, "residual_memory", (0.0, false), (1048576.0, false))?)
                }
                _ => {
                    return Err(ctx.invalid(
                        "residual_memory",
                        n,
                        "`auto` or a number of GiB in [0, 1048576]",
                    ))
                }
            };
        }
        if let Some(n) = s.get("tile") {
            let t = Section::of(ctx, n, "runtime.tile")?;
            if let Some(sz) = t.get("size") {
                r.tile_size = match &sz.value {
                    Value::Str(s) if s == "model" => TileSize::Model,
                    Value::Int(_) => TileSize::Pixels(ctx.usize(sz, "tile size", 8, 1 << 16)?),
                    _ => return Err(ctx.invalid("tile size", sz, "`model` or an integer >= 8")),
                };
            }
            if let Some(ov) = t.get("overlap") {
                r.tile_overlap = ctx.usize(ov, "tile overlap", 0, 1 << 15)?;
                if let TileSize::Pixels(p) = r.tile_size {
                    if r.tile_overlap >= p {
                        return Err(ctx.invalid(
                            "tile overlap",
                            ov,
                            &format!("a value below the tile size {p}"),
                        ));
                    }
                }
            }
        }
        Ok(r)
    }

    fn io(ctx: &Ctx, node: Option<&Node>) -> Result<IoSpec> {
        let mut io = IoSpec {
            input: None,
            output: None,
            format: OutputFormat::Same,
            bit_depth: BitDepth::Same,
            skip_existing: true,
            jpeg_quality: 95,
        };
        let Some(node) = node else { return Ok(io) };
        let s = Section::of(ctx, node, "io")?;
        io.input = s.get("input").map(|n| ctx.path(n, "input")).transpose()?;
        io.output = s.get("output").map(|n| ctx.path(n, "output")).transpose()?;
        if let Some(n) = s.get("format") {
            io.format = ctx.choice(
                n,
                "format",
                &[
                    ("same", OutputFormat::Same),
                    ("png", OutputFormat::Png),
                    ("tiff", OutputFormat::Tiff),
                    ("jpeg", OutputFormat::Jpeg),
                    ("npy", OutputFormat::Npy),
                ],
            )?;
        }
        if let Some(n) = s.get("bit_depth") {
            io.bit_depth = match &n.value {
                Value::Str(s) if s == "same" => BitDepth::Same,
                Value::Int(8) => BitDepth::Eight,
                Value::Int(16) => BitDepth::Sixteen,
                Value::Str(s) if s == "8" => BitDepth::Eight,
                Value::Str(s) if s == "16" => BitDepth::Sixteen,
                _ => return Err(ctx.invalid("bit_depth", n, "same, 8 or 16")),
            };
        }
        if let Some(n) = s.get("skip_existing") {
            io.skip_existing = ctx.bool(n, "skip_existing")?;
        }
        if let Some(n) = s.get("jpeg_quality") {
            io.jpeg_quality = ctx.usize(n, "jpeg_quality", 1, 100)? as u8;
        }
        Ok(io)
    }

    /// The sampler settings (`None` = the sampler's own default).
    pub fn sampler_config(&self) -> SamplerConfig {
        self.sampler.config.clone()
    }

    /// The degradation, given the image's mask for `inpaint` (1 = known, H×W of the restored image).
    pub fn degradation(&self, mask: Option<Array2<f64>>) -> Result<Degradation> {
        self.task.degradation(mask)
    }

    /// How to run the model.
    pub fn runtime_options(&self) -> RuntimeOptions {
        RuntimeOptions {
            engine: self.runtime.engine,
            providers: self.runtime.providers.clone(),
            providers_given: self.runtime.providers_given,
            threads: self.runtime.threads,
            batch_size: self.runtime.batch_size,
            trt_cache: self.runtime.trt_cache.clone(),
            residual_budget: self
                .runtime
                .residual_memory
                .map(|gib| (gib * (1u64 << 30) as f64) as usize),
        }
    }

    /// The `model` key names a folder holding `model.yaml`; else a spec error at the key's line, the same
    /// for `validate`, `run` and `degrade` (issue 16).
    pub fn check_model_dir(&self) -> Result<()> {
        let dir = &self.model;
        let problem = match std::fs::metadata(dir) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => "does not exist",
            Err(_) => "cannot be read",
            Ok(m) if !m.is_dir() => "is not a folder",
            Ok(_) if !dir.join("model.yaml").is_file() => "has no model.yaml",
            Ok(_) => return Ok(()),
        };
        Err(Error::Spec {
            location: self.model_location.clone(),
            message: format!(
                "model: the model folder {} {problem} (`model` must name a folder holding model.yaml; \
                 relative paths are relative to the spec file)",
                dir.display()
            ),
        })
    }

    /// SHA-256 (hex) of the settings that decide an output's bytes: model, task, sampler, seed, tiling
    /// and the output encoding (`io.format`, `io.bit_depth`, `io.jpeg_quality`), not where files are or
    /// how fast they are made (paths, engine, providers, batch size, threads, shards). A rerun into a folder
    /// whose outputs carry another settings hash would silently keep outputs made otherwise (issue 16).
    /// Computed over the canonical JSON of these settings ([`hash`](mod@hash)), so it changes when one of
    /// them changes, not when code is refactored.
    pub fn settings_hash(&self) -> String {
        hash::digest(&hash::settings(self))
    }

    /// Whether a manifest record's `settings_hash` was made with this spec's settings: today's
    /// [`settings_hash`](Self::settings_hash), or the `Debug`-based hash of earlier versions
    /// ([`hash::legacy_settings_hash`]), so that outputs made before the canonical hash still resume.
    pub fn settings_hash_matches(&self, recorded: &str) -> bool {
        // That version had no `sampler.samples`: nothing it wrote was an average.
        recorded == self.settings_hash()
            || (self.sampler.samples == 1 && recorded == hash::legacy_settings_hash(self))
    }

    /// SHA-256 (hex) of the resolved spec: every key after defaults, overrides and path resolution, in
    /// the canonical JSON form ([`hash`](mod@hash)), without the spec file's own path,
    /// `runtime.batch_size` and `runtime.threads`, which do not change results (outputs are identical
    /// across batch sizes and thread counts, and every output image carries this hash). Two runs with the
    /// same hash used the same settings.
    pub fn hash(&self) -> String {
        hash::digest(&hash::resolved(self))
    }
}

/// The seed of restoration `k` of an image whose seed is `seed` (`sampler.samples`): `seed` itself for
/// k = 0, so that the first of K restorations is the one a run with `samples: 1` makes; for k ≥ 1 the
/// first 8 bytes (little-endian) of SHA-256(seed as 8 little-endian bytes ‖ "sample" ‖ k as 8
/// little-endian bytes).
pub fn sample_seed(seed: u64, k: usize) -> u64 {
    if k == 0 {
        return seed;
    }
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(b"sample");
    h.update((k as u64).to_le_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The per-image seed: the first 8 bytes (little-endian) of SHA-256(seed as 8 little-endian bytes ‖
/// the input's path relative to the input root, components joined by `/`, UTF-8). Independent of batch,
/// order, shard and platform path separators.
pub fn image_seed(seed: u64, rel_path: &Path) -> u64 {
    let rel: Vec<String> = rel_path
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(rel.join("/").as_bytes());
    let d = h.finalize();
    u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<PipelineSpec> {
        PipelineSpec::parse(text, "t.yaml", Path::new("/base"), &[])
    }

    const MIN: &str = "model: m\ntask:\n  operator: denoise\nsampler:\n  name: c-pigdm\n";

    #[test]
    fn data_consistency_defaults_to_noiseless_measurements() {
        assert!(parse(MIN).unwrap().task.data_consistency);
        let noisy = MIN.replace("denoise", "denoise\n  noise_sigma: 0.1");
        assert!(!parse(&noisy).unwrap().task.data_consistency);
        let off = MIN.replace("denoise", "denoise\n  data_consistency: false");
        assert!(!parse(&off).unwrap().task.data_consistency);
        let on = noisy.replace("0.1", "0.1\n  data_consistency: true");
        assert!(parse(&on).unwrap().task.data_consistency);
        let bad = MIN.replace("denoise", "denoise\n  data_consistency: maybe");
        assert!(parse(&bad).is_err());
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = parse(MIN).unwrap();
        assert_eq!(s.model, PathBuf::from("/base/m"));
        assert_eq!(s.seed, 0);
        assert_eq!(s.runtime.batch_size, 16);
        assert!(s.io.skip_existing);
        assert_eq!(s.sampler.config.steps, None);
        assert_eq!(s.sampler.config.jacobian, JacobianMode::Exact);
    }

    #[test]
    fn edit_distance_and_suggestion() {
        assert_eq!(edit_distance("stpes", "steps"), 1);
        assert_eq!(edit_distance("guidence", "guidance"), 1);
        assert_eq!(did_you_mean("stpes", SAMPLER_KEYS), Some("steps"));
        assert_eq!(did_you_mean("zzzzzz", SAMPLER_KEYS), None);
    }

    #[test]
    fn unknown_key_has_position_and_hint() {
        let e =
            parse("model: m\ntask:\n  operator: denoise\nsampler:\n  name: c-pigdm\n  stpes: 3\n")
                .unwrap_err()
                .to_string();
        assert!(e.starts_with("t.yaml:6:3: "), "{e}");
        assert!(e.contains("did you mean `steps`"), "{e}");
        let e = parse(&format!("{MIN}steps: 3\n")).unwrap_err().to_string();
        assert!(e.contains("did you mean `sampler.steps`"), "{e}");
    }

    #[test]
    fn range_errors_name_value_and_constraint() {
        let e = parse(&MIN.replace("c-pigdm\n", "c-pigdm\n  steps: 0\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "t.yaml:6:10: invalid steps 0 (expected 1..=100000)");
        let e = parse(&MIN.replace("c-pigdm\n", "c-pigdm\n  start_time: 1.5\n"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("invalid start_time 1.5 (expected a value in (0, 1])"),
            "{e}"
        );
    }

    #[test]
    fn overrides_apply_before_validation() {
        let ov = [
            Override::parse("sampler.steps=7").unwrap(),
            Override::parse("io.format=png").unwrap(),
            Override::parse("runtime.providers=[cpu]").unwrap(),
        ];
        let s = PipelineSpec::parse(MIN, "t.yaml", Path::new("/base"), &ov).unwrap();
        assert_eq!(s.sampler.config.steps, Some(7));
        assert_eq!(s.io.format, OutputFormat::Png);
        assert_eq!(s.runtime.providers, vec![Provider::Cpu]);
        let bad = [Override::parse("sampler.steps=0").unwrap()];
        let e = PipelineSpec::parse(MIN, "t.yaml", Path::new("/base"), &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("--set sampler.steps=0: invalid steps 0"),
            "{e}"
        );
        let typo = [Override::parse("sampler.guidence=3").unwrap()];
        let e = PipelineSpec::parse(MIN, "t.yaml", Path::new("/base"), &typo)
            .unwrap_err()
            .to_string();
        assert!(e.contains("did you mean `guidance`"), "{e}");
    }

    #[test]
    fn masks_generate() {
        let m = MaskSpec::Box {
            x: 1,
            y: 2,
            width: 3,
            height: 2,
        }
        .generate(6, 8, 0)
        .unwrap()
        .unwrap();
        assert_eq!(m.sum(), 48.0 - 6.0);
        assert_eq!(m[(2, 1)], 0.0);
        assert_eq!(m[(1, 1)], 1.0);
        let r = MaskSpec::Random { fraction: 0.25 };
        let a = r.generate(8, 8, 1).unwrap().unwrap();
        let b = r.generate(8, 8, 1).unwrap().unwrap();
        let c = r.generate(8, 8, 2).unwrap().unwrap();
        assert_eq!(a.sum(), 48.0);
        assert_eq!(a, b);
        assert_ne!(a, c);
        let h = MaskSpec::Half { side: Side::Top }
            .generate(4, 4, 0)
            .unwrap()
            .unwrap();
        assert_eq!(h.row(0).sum(), 0.0);
        assert_eq!(h.row(3).sum(), 4.0);
    }

    /// `runtime.residual_memory`: `auto` (the default) or GiB, as bytes in the engine's options; it
    /// changes no pixel, so neither hash.
    #[test]
    fn residual_memory_parses_to_a_byte_budget() {
        let auto = parse(MIN).unwrap();
        assert_eq!(auto.runtime.residual_memory, None);
        assert_eq!(auto.runtime_options().residual_budget, None);
        let with = |v: &str| parse(&format!("{MIN}runtime:\n  residual_memory: {v}\n"));
        assert_eq!(
            with("auto").unwrap().runtime_options().residual_budget,
            None
        );
        assert_eq!(
            with("0").unwrap().runtime_options().residual_budget,
            Some(0)
        );
        assert_eq!(
            with("0.5").unwrap().runtime_options().residual_budget,
            Some(1 << 29)
        );
        let eight = with("8").unwrap();
        assert_eq!(eight.runtime_options().residual_budget, Some(8 << 30));
        assert_eq!(eight.hash(), auto.hash());
        assert_eq!(eight.settings_hash(), auto.settings_hash());
        for bad in ["-1", "lots", "[1]", "2000000"] {
            let e = with(bad).unwrap_err().to_string();
            assert!(e.contains("residual_memory"), "{bad}: {e}");
        }
    }

    #[test]
    fn image_seed_depends_on_both_parts() {
        let a = image_seed(0, Path::new("a/b.png"));
        assert_eq!(a, image_seed(0, Path::new("a/b.png")));
        assert_ne!(a, image_seed(1, Path::new("a/b.png")));
        assert_ne!(a, image_seed(0, Path::new("a/c.png")));
    }

    #[test]
    fn samples_parse_keep_old_hashes_and_refuse_a_fixed_noise() {
        let one = parse(MIN).unwrap();
        assert_eq!(one.sampler.samples, 1);
        let explicit = parse(&MIN.replace("c-pigdm", "c-pigdm\n  samples: 1")).unwrap();
        assert_eq!(
            explicit.hash(),
            one.hash(),
            "samples: 1 is the default and keeps the hash"
        );
        assert_eq!(explicit.settings_hash(), one.settings_hash());
        let four = parse(&MIN.replace("c-pigdm", "c-pigdm\n  samples: 4")).unwrap();
        assert_eq!(four.sampler.samples, 4);
        assert_ne!(four.settings_hash(), one.settings_hash());
        // A manifest line written with the legacy hash of the one-sample settings is not this run's.
        assert!(!four.settings_hash_matches(&hash::legacy_settings_hash(&one)));
        assert!(one.settings_hash_matches(&hash::legacy_settings_hash(&one)));
        for bad in ["0", "1025", "2.5"] {
            let e =
                parse(&MIN.replace("c-pigdm", &format!("c-pigdm\n  samples: {bad}"))).unwrap_err();
            assert!(e.to_string().contains("samples"), "{e}");
        }
        let fixed = MIN.replace("c-pigdm", "c-pigdm\n  init_noise: z.npy\n  samples: 2");
        let e = parse(&fixed).unwrap_err().to_string();
        assert!(e.contains("init_noise"), "{e}");
        parse(&fixed.replace("samples: 2", "samples: 1")).unwrap();
    }

    #[test]
    fn sample_seeds_start_at_the_image_seed_and_differ() {
        assert_eq!(sample_seed(42, 0), 42);
        let s: std::collections::BTreeSet<u64> = (0..100).map(|k| sample_seed(42, k)).collect();
        assert_eq!(s.len(), 100);
        assert_ne!(sample_seed(42, 1), sample_seed(43, 1));
    }
}
