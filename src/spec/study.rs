//! Study specs (`conjure study`): a sweep of restorations over tasks × samplers × NFE × Jacobian modes,
//! with hyper-parameters tuned per (task, sampler) on a separate image set. The blocks of a study are the
//! blocks of a pipeline spec: every `tasks.<name>` is a pipeline `task:` block, every `runs[i].sampler` a
//! pipeline `sampler:` block and `runtime` a pipeline `runtime:` block, so each configuration the study
//! restores is an ordinary [`PipelineSpec`] built by the same parser (same defaults, same checks, errors at
//! the study file's `line:col`).
//!
//! ```yaml
//! version: 1
//! models: {diffusion: ../../models/fmnist-ddpm, flow: ../../models/fmnist-flow}
//! data:
//!   test: {idx: /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz, count: 8, pad: 2}
//!   tune: {idx: /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz, count: 4, pad: 2}
//! tuning: {max_overshoot: 0.2}   # optional: how far a tuning output may leave the value range
//! seed: 0
//! runtime: {batch_size: 16}
//! tasks:
//!   sr4-bicubic: {operator: sr-bicubic, scale: 4}
//! runs:
//!   - sampler: {name: c-pigdm}
//!     nfe: [5, 10, 20]
//!     jacobian: [exact, identity]
//!     tune: {nfe: 5, grid: {guidance: [5, 15], start_time: [0.2, 0.4]}}
//! ```

use std::path::{Path, PathBuf};

use super::node::{self, Node, Origin, Value};
use super::{check_keys, did_you_mean, Ctx, PipelineSpec, Section};
use crate::error::{Error, Result};
use crate::model::JacobianMode;
use crate::samplers::SamplerName;

/// Where a study's images come from.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// An IDX image file (MNIST / Fashion-MNIST format, optionally gzip-compressed): images
    /// `first .. first + count`, each zero-padded by `pad` pixels on every side.
    Idx {
        path: PathBuf,
        first: usize,
        count: usize,
        pad: usize,
    },
    /// The first `count` images (sorted by relative path) of a directory, read like `conjure run` inputs.
    Dir { path: PathBuf, count: usize },
}

impl DataSource {
    /// Number of images asked for.
    pub fn count(&self) -> usize {
        match self {
            DataSource::Idx { count, .. } | DataSource::Dir { count, .. } => *count,
        }
    }

    /// The same source limited to `n` images.
    pub fn limited(&self, n: usize) -> Self {
        let mut s = self.clone();
        match &mut s {
            DataSource::Idx { count, .. } | DataSource::Dir { count, .. } => *count = n,
        }
        s
    }
}

/// A hyper-parameter grid: every combination of the listed sampler-key values, restored at `nfe`.
#[derive(Debug, Clone, PartialEq)]
pub struct TuneSpec {
    pub nfe: usize,
    /// (sampler key, candidate values) in file order.
    pub grid: Vec<(String, Vec<Node>)>,
}

impl TuneSpec {
    /// Every grid point as (key, value) settings, the first key varying slowest.
    pub fn points(&self) -> Vec<Vec<(String, Node)>> {
        let mut points: Vec<Vec<(String, Node)>> = vec![Vec::new()];
        for (key, values) in &self.grid {
            points = points
                .into_iter()
                .flat_map(|p| {
                    values.iter().map(move |v| {
                        let mut q = p.clone();
                        q.push((key.clone(), v.clone()));
                        q
                    })
                })
                .collect();
        }
        points
    }
}

/// One sampler of the sweep.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyRun {
    /// A label for tables (`c-pigdm`, or the `label` key).
    pub label: String,
    pub sampler: SamplerName,
    /// The pipeline `sampler:` block (without `steps` and `jacobian`, which the sweep sets).
    node: Node,
    pub nfe: Vec<usize>,
    pub jacobian: Vec<JacobianMode>,
    /// NFE values at which the non-exact Jacobian modes run (default: all of `nfe`).
    pub jacobian_nfe: Option<Vec<usize>>,
    /// Tasks this run restores (default: all).
    pub tasks: Option<Vec<String>>,
    /// At most this many test images (e.g. for DPS at 1000 NFE).
    pub images: Option<usize>,
    pub tune: Option<TuneSpec>,
}

impl StudyRun {
    /// Whether the run restores `task`.
    pub fn covers(&self, task: &str) -> bool {
        self.tasks
            .as_ref()
            .is_none_or(|t| t.iter().any(|x| x == task))
    }

    /// The (NFE, Jacobian mode) pairs this run restores, in sweep order.
    pub fn configs(&self) -> Vec<(usize, JacobianMode)> {
        let mut out = Vec::new();
        for &j in &self.jacobian {
            for &n in &self.nfe {
                let at = j == JacobianMode::Exact
                    || self.jacobian_nfe.as_ref().is_none_or(|l| l.contains(&n));
                if at {
                    out.push((n, j));
                }
            }
        }
        out
    }
}

/// One task of the sweep: a name and a pipeline `task:` block.
#[derive(Debug, Clone, PartialEq)]
pub struct StudyTask {
    pub name: String,
    node: Node,
}

/// A parsed study spec.
#[derive(Debug, Clone, PartialEq)]
pub struct StudySpec {
    pub source: PathBuf,
    text_base: PathBuf,
    pub diffusion_model: Option<PathBuf>,
    pub flow_model: Option<PathBuf>,
    pub test: DataSource,
    pub tune: Option<DataSource>,
    /// Quantize every measurement y to this many bits over the model's value range (`data.quantize`, 8 or
    /// 16), as an image file stores it; `None` keeps y in f64.
    pub quantize: Option<u32>,
    /// `tuning.max_overshoot`: tuning prefers grid points whose every raw restoration of the tuning images
    /// stays within this distance of the model's value range (default [`DEFAULT_MAX_OVERSHOOT`]).
    pub max_overshoot: f64,
    pub seed: u64,
    runtime: Option<Node>,
    pub tasks: Vec<StudyTask>,
    pub runs: Vec<StudyRun>,
}

const STUDY_KEYS: &[&str] = &[
    "version", "models", "data", "tuning", "seed", "runtime", "tasks", "runs",
];

/// The default of `tuning.max_overshoot`: 0.2 beyond the value range (±1.2 on [-1, 1]), the Fashion-MNIST
/// studies' rule. Photographs hold saturated pixels at the ends of the range, where a restoration's
/// ordinary pixel error already leaves it by a few tenths; a photo study sets a wider bound.
pub const DEFAULT_MAX_OVERSHOOT: f64 = 0.2;

const RUN_KEYS: &[&str] = &[
    "label",
    "sampler",
    "nfe",
    "jacobian",
    "jacobian_nfe",
    "tasks",
    "images",
    "tune",
];

fn unknown_keys(ctx: &Ctx, s: &Section, allowed: &[&str], section: &str) -> Result<()> {
    for (k, o, _) in s.entries {
        if !allowed.contains(&k.as_str()) {
            let hint = did_you_mean(k, allowed)
                .map(|c| format!("; did you mean `{c}`?"))
                .unwrap_or_default();
            return Err(ctx.err(
                o,
                format!(
                    "unknown key `{k}` in {section} (expected one of {}){hint}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn list<'a>(ctx: &Ctx, node: &'a Node, what: &str) -> Result<&'a [Node]> {
    match &node.value {
        Value::Seq(items) if !items.is_empty() => Ok(items),
        _ => Err(ctx.invalid(what, node, "a non-empty list")),
    }
}

/// Where the values the sweep itself puts into a pipeline spec come from (they are never re-resolved
/// against the study's folder, unlike values read from the file).
fn sweep_origin() -> Origin {
    Origin::Override("the study's sweep".into())
}

fn map_node(entries: Vec<(&str, Node)>) -> Node {
    let origin = sweep_origin();
    Node {
        origin: origin.clone(),
        value: Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (k.to_owned(), origin.clone(), v))
                .collect(),
        ),
    }
}

fn str_node(s: &str) -> Node {
    Node {
        origin: sweep_origin(),
        value: Value::Str(s.to_owned()),
    }
}

fn int_node(i: usize) -> Node {
    Node {
        origin: sweep_origin(),
        value: Value::Int(i as i128),
    }
}

impl StudySpec {
    /// Read and check a study file; every (task, run, grid point) pipeline spec is built once to check it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Self::parse(&text, path, &base)
    }

    /// Parse a study from text; `file` names it in errors, relative paths resolve against `base_dir`.
    pub fn parse(text: &str, file: &Path, base_dir: &Path) -> Result<Self> {
        let file_s = file.display().to_string();
        let ctx = Ctx {
            file: &file_s,
            base_dir,
        };
        let root = node::parse(text).map_err(|(loc, msg)| Error::Spec {
            location: match loc {
                Some((l, c)) if l > 0 => format!("{file_s}:{l}:{c}: "),
                _ => format!("{file_s}: "),
            },
            message: format!("invalid YAML: {msg}"),
        })?;
        let top = Section::of(&ctx, &root, "the study")?;
        unknown_keys(&ctx, &top, STUDY_KEYS, "the study")?;
        if let Some(n) = top.get("version") {
            ctx.usize(n, "version", 1, 1)?;
        }
        let models = Section::of(&ctx, top.require(&ctx, "models", "the study")?, "models")?;
        unknown_keys(&ctx, &models, &["diffusion", "flow"], "models")?;
        let diffusion_model = models
            .get("diffusion")
            .map(|n| ctx.path(n, "models.diffusion"))
            .transpose()?;
        let flow_model = models
            .get("flow")
            .map(|n| ctx.path(n, "models.flow"))
            .transpose()?;
        let data = Section::of(&ctx, top.require(&ctx, "data", "the study")?, "data")?;
        unknown_keys(&ctx, &data, &["test", "tune", "quantize"], "data")?;
        let test = Self::data(&ctx, data.require(&ctx, "test", "data")?)?;
        let tune = data.get("tune").map(|n| Self::data(&ctx, n)).transpose()?;
        let quantize = data
            .get("quantize")
            .map(|n| match ctx.int(n, "quantize", 0, 64)? {
                8 => Ok(8),
                16 => Ok(16),
                _ => Err(ctx.invalid("quantize", n, "8 or 16 (bits)")),
            })
            .transpose()?;
        let max_overshoot = match top.get("tuning") {
            Some(n) => {
                let tuning = Section::of(&ctx, n, "tuning")?;
                unknown_keys(&ctx, &tuning, &["max_overshoot"], "tuning")?;
                match tuning.get("max_overshoot") {
                    Some(m) => {
                        ctx.float(m, "max_overshoot", (0.0, false), (f64::INFINITY, true))?
                    }
                    None => DEFAULT_MAX_OVERSHOOT,
                }
            }
            None => DEFAULT_MAX_OVERSHOOT,
        };
        let seed = match top.get("seed") {
            Some(n) => ctx.int(n, "seed", 0, u64::MAX as i128)? as u64,
            None => 0,
        };
        let tasks_node = top.require(&ctx, "tasks", "the study")?;
        let tasks = Section::of(&ctx, tasks_node, "tasks")?
            .entries
            .iter()
            .map(|(k, _, n)| StudyTask {
                name: k.clone(),
                node: n.clone(),
            })
            .collect::<Vec<_>>();
        if tasks.is_empty() {
            return Err(ctx.invalid("tasks", tasks_node, "at least one task"));
        }
        let runs = list(&ctx, top.require(&ctx, "runs", "the study")?, "runs")?
            .iter()
            .map(|n| Self::run(&ctx, n, &tasks))
            .collect::<Result<Vec<_>>>()?;
        let spec = StudySpec {
            source: file.to_path_buf(),
            text_base: base_dir.to_path_buf(),
            diffusion_model,
            flow_model,
            test,
            tune,
            quantize,
            max_overshoot,
            seed,
            runtime: top.get("runtime").cloned(),
            tasks,
            runs,
        };
        // Build every configuration once, so that a bad value fails now and not an hour into the sweep.
        for run in &spec.runs {
            if spec.model_for(run.sampler).is_none() {
                return Err(ctx.err(
                    &run.node.origin,
                    format!(
                        "run {} needs a {} model, and `models` names none",
                        run.label,
                        if run.sampler.needs_flow() {
                            "flow"
                        } else {
                            "diffusion"
                        }
                    ),
                ));
            }
            for task in spec.tasks.iter().filter(|t| run.covers(&t.name)) {
                let points = run.tune.as_ref().map(|t| t.points()).unwrap_or_default();
                for (nfe, jac) in run.configs() {
                    spec.pipeline(task, run, &[], nfe, jac)?;
                }
                for p in points {
                    spec.pipeline(
                        task,
                        run,
                        &p,
                        run.tune.as_ref().map_or(1, |t| t.nfe),
                        run.jacobian[0],
                    )?;
                }
            }
        }
        Ok(spec)
    }

    fn data(ctx: &Ctx, node: &Node) -> Result<DataSource> {
        let s = Section::of(ctx, node, "data source")?;
        unknown_keys(
            ctx,
            &s,
            &["idx", "dir", "first", "count", "pad"],
            "a data source",
        )?;
        let count = ctx.usize(
            s.require(ctx, "count", "a data source")?,
            "count",
            1,
            1 << 24,
        )?;
        match (s.get("idx"), s.get("dir")) {
            (Some(p), None) => Ok(DataSource::Idx {
                path: ctx.path(p, "idx")?,
                first: s
                    .get("first")
                    .map(|n| ctx.usize(n, "first", 0, 1 << 30))
                    .transpose()?
                    .unwrap_or(0),
                count,
                pad: s
                    .get("pad")
                    .map(|n| ctx.usize(n, "pad", 0, 4096))
                    .transpose()?
                    .unwrap_or(0),
            }),
            (None, Some(p)) => {
                s.forbid(ctx, &["first", "pad"], "a `dir` data source")?;
                Ok(DataSource::Dir {
                    path: ctx.path(p, "dir")?,
                    count,
                })
            }
            _ => Err(ctx.err(
                &node.origin,
                "a data source needs exactly one of `idx` (an IDX image file) or `dir` (a folder)",
            )),
        }
    }

    fn run(ctx: &Ctx, node: &Node, tasks: &[StudyTask]) -> Result<StudyRun> {
        let s = Section::of(ctx, node, "a run")?;
        unknown_keys(ctx, &s, RUN_KEYS, "a run")?;
        let sampler_node = s.require(ctx, "sampler", "a run")?.clone();
        let sec = Section::of(ctx, &sampler_node, "sampler")?;
        for key in ["steps", "jacobian"] {
            if let Some((_, o, _)) = sec.entries.iter().find(|(k, _, _)| k == key) {
                return Err(ctx.err(
                    o,
                    format!("`sampler.{key}` is set by the sweep: list the values in the run's `{}` key", if key == "steps" { "nfe" } else { "jacobian" }),
                ));
            }
        }
        let name_node = sec.require(ctx, "name", "sampler")?;
        let names: Vec<(&str, SamplerName)> =
            SamplerName::ALL.iter().map(|n| (n.as_str(), *n)).collect();
        let sampler = ctx.choice(name_node, "sampler", &names)?;
        let label = match s.get("label") {
            Some(n) => ctx.string(n, "label")?,
            None => sampler.as_str().to_owned(),
        };
        let usizes = |key: &str, lo: usize, hi: usize| -> Result<Option<Vec<usize>>> {
            s.get(key)
                .map(|n| {
                    list(ctx, n, key)?
                        .iter()
                        .map(|v| ctx.usize(v, key, lo, hi))
                        .collect()
                })
                .transpose()
        };
        let nfe = usizes("nfe", 1, 100_000)?
            .ok_or_else(|| ctx.err(&node.origin, "missing key `nfe` in a run (it is required)"))?;
        let jacobian = match s.get("jacobian") {
            None => vec![JacobianMode::Exact],
            Some(n) => list(ctx, n, "jacobian")?
                .iter()
                .map(|v| ctx.choice(v, "jacobian", &JacobianMode::ALL.map(|m| (m.as_str(), m))))
                .collect::<Result<Vec<_>>>()?,
        };
        let run_tasks = match s.get("tasks") {
            None => None,
            Some(n) => Some(
                list(ctx, n, "tasks")?
                    .iter()
                    .map(|v| {
                        let t = ctx.string(v, "task")?;
                        if tasks.iter().any(|x| x.name == t) {
                            Ok(t)
                        } else {
                            let names: Vec<&str> = tasks.iter().map(|x| x.name.as_str()).collect();
                            Err(ctx.invalid("task", v, &format!("one of {}", names.join(", "))))
                        }
                    })
                    .collect::<Result<Vec<_>>>()?,
            ),
        };
        let images = s
            .get("images")
            .map(|n| ctx.usize(n, "images", 1, 1 << 24))
            .transpose()?;
        let tune = match s.get("tune") {
            None => None,
            Some(n) => {
                let t = Section::of(ctx, n, "tune")?;
                unknown_keys(ctx, &t, &["nfe", "grid"], "tune")?;
                let tnfe = ctx.usize(t.require(ctx, "nfe", "tune")?, "tune nfe", 1, 100_000)?;
                let g = Section::of(ctx, t.require(ctx, "grid", "tune")?, "tune.grid")?;
                let grid = g
                    .entries
                    .iter()
                    .map(|(k, o, v)| {
                        if k == "name" || k == "steps" || k == "jacobian" {
                            return Err(ctx.err(o, format!("`{k}` cannot be tuned")));
                        }
                        Ok((k.clone(), list(ctx, v, k)?.to_vec()))
                    })
                    .collect::<Result<Vec<_>>>()?;
                Some(TuneSpec { nfe: tnfe, grid })
            }
        };
        Ok(StudyRun {
            label,
            sampler,
            node: sampler_node,
            nfe,
            jacobian,
            jacobian_nfe: usizes("jacobian_nfe", 1, 100_000)?,
            tasks: run_tasks,
            images,
            tune,
        })
    }

    /// The model directory a sampler runs on (`pinv` uses the diffusion model's card for the value range).
    pub fn model_for(&self, sampler: SamplerName) -> Option<&PathBuf> {
        if sampler.needs_flow() {
            self.flow_model.as_ref()
        } else {
            self.diffusion_model.as_ref().or(self.flow_model.as_ref())
        }
    }

    /// The pipeline spec of one configuration: `task`'s block, `run`'s sampler block with `settings`
    /// (tuned or grid values) put over it, `steps: nfe`, `jacobian`, the study's seed and runtime.
    pub fn pipeline(
        &self,
        task: &StudyTask,
        run: &StudyRun,
        settings: &[(String, Node)],
        nfe: usize,
        jacobian: JacobianMode,
    ) -> Result<PipelineSpec> {
        let file = self.source.display().to_string();
        let ctx = Ctx {
            file: &file,
            base_dir: &self.text_base,
        };
        let mut sampler = run.node.clone();
        if let Value::Map(entries) = &mut sampler.value {
            let mut put = |k: &str, v: Node| match entries.iter_mut().find(|(key, _, _)| key == k) {
                Some(e) => e.2 = v,
                None => entries.push((k.to_owned(), v.origin.clone(), v)),
            };
            for (k, v) in settings {
                put(k, v.clone());
            }
            put("steps", int_node(nfe));
            put("jacobian", str_node(jacobian.as_str()));
        }
        let model = self.model_for(run.sampler).cloned().unwrap_or_default();
        let mut root = vec![
            ("version", int_node(1)),
            ("model", str_node(&model.to_string_lossy())),
            ("task", task.node.clone()),
            ("sampler", sampler),
            (
                "seed",
                Node {
                    origin: sweep_origin(),
                    value: Value::Int(self.seed as i128),
                },
            ),
        ];
        if let Some(rt) = &self.runtime {
            root.push(("runtime", rt.clone()));
        }
        let root = map_node(root);
        check_keys(&ctx, &root, &mut Vec::new())?;
        let mut spec = PipelineSpec::from_tree(&ctx, &root)?;
        spec.source = Some(self.source.clone());
        Ok(spec)
    }
}

/// A setting's value as text for tables (`15`, `0.4`).
pub fn node_text(n: &Node) -> String {
    match &n.value {
        Value::Str(s) => s.clone(),
        v => v.display(),
    }
}
