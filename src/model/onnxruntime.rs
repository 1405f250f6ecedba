//! The ONNX Runtime backend, through `ort` with `load-dynamic`: the shared library is found and loaded at
//! run time, never downloaded at build time.
//!
//! ## Finding the library
//! 1. `ORT_DYLIB_PATH` (a file);
//! 2. an importable `onnxruntime` Python package (`pip install onnxruntime==1.31.1`, or `onnxruntime-gpu`
//!    for CUDA/TensorRT): `<package>/capi/libonnxruntime.so*`;
//! 3. beside the `conjure` executable, `LD_LIBRARY_PATH`, and the usual system library directories.
//!
//! A library that cannot be found or loaded is an error (`ort::init_from` reports it instead of
//! panicking), which lets `engine: auto` fall back to the embedded tract engine.
//!
//! ## Execution providers
//! `runtime.providers` are registered in priority order (tensorrt, cuda, cpu). Before a GPU provider is
//! registered, pip-installed NVIDIA libraries (`site-packages/nvidia/*/lib`, `site-packages/tensorrt_libs`)
//! are preloaded, so no `LD_LIBRARY_PATH` is needed. A provider that fails to register is reported with a
//! warning; when the list names no `cpu`, GPU-only was asked for: then no GPU provider registering is an
//! error, and so is any compute node (convolution, matrix product) that ONNX Runtime still places on the
//! CPU (small shape computations stay on the CPU by ONNX Runtime's design and are allowed). Which
//! providers actually run the graph is read from ONNX Runtime's own session profile of one warm-up call
//! at load time and reported by [`Denoiser::engine`], most nodes first, e.g. `onnxruntime 1.31.1/cuda+cpu`
//! or `onnxruntime 1.31.1/cpu`.
//!
//! TensorRT builds engines for the fixed shapes it sees; its engine and timing caches go to
//! `runtime.trt_cache` so later runs do not rebuild them. Inference runs in f32; batches larger than
//! `runtime.batch_size` are split into several calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use ndarray::{Array4, ArrayView4};
use ort::ep::{self, ExecutionProviderDispatch};
use ort::memory::{AllocationDevice, AllocatorType, MemoryInfo, MemoryType};
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::session::SessionInputValue;
use ort::value::{DynValue, Tensor, ValueType};

use super::card::{GraphIo, GraphRole, ModelCard, TensorDecl};
use super::{run_batched, Denoiser, F32Chunk, Provider, ResidualCache, RuntimeOptions};
use crate::error::{Error, Result};

/// The loaded ONNX Runtime library and its environment (one per process).
pub struct OrtRuntime {
    env: ort::environment::Environment,
    /// The library file that was loaded.
    pub library: PathBuf,
    /// Its version, e.g. `1.31.1`.
    pub version: String,
}

static RUNTIME: OnceLock<std::result::Result<OrtRuntime, String>> = OnceLock::new();

/// Find and load the ONNX Runtime library once per process; `Err` says where it looked or why loading
/// failed.
pub fn runtime() -> std::result::Result<&'static OrtRuntime, String> {
    RUNTIME
        .get_or_init(|| {
            let library = find_library()?;
            let builder = ort::init_from(&library)
                .map_err(|e| format!("cannot load {}: {e}", library.display()))?;
            let env = builder
                .with_name("conjure")
                .build()
                .map_err(|e| format!("cannot create an environment: {e}"))?;
            let version = library_version(&library).unwrap_or_else(|| "unknown".into());
            tracing::info!("onnx runtime {version} from {}", library.display());
            Ok(OrtRuntime {
                env,
                library,
                version,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn lib_file_name() -> String {
    format!(
        "{}onnxruntime{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Where `runtime()` looks for the library, in order. Public for `conjure model inspect`.
pub fn find_library() -> std::result::Result<PathBuf, String> {
    let mut looked = Vec::new();
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(format!("ORT_DYLIB_PATH={} is not a file", p.display()));
    }
    looked.push("ORT_DYLIB_PATH (unset)".to_string());
    let py = python_site();
    if let Some(pkg) = &py.onnxruntime {
        let capi = pkg.join("capi");
        if let Some(f) = library_in(&capi) {
            return Ok(f);
        }
        looked.push(format!("{} (no {}*)", capi.display(), lib_file_name()));
    } else {
        looked.push("python package onnxruntime (not importable)".into());
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        dirs.push(d);
    }
    if let Some(v) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&v));
    }
    for d in [
        "/usr/local/lib",
        "/usr/local/lib64",
        "/usr/lib",
        "/usr/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/opt/onnxruntime/lib",
    ] {
        dirs.push(PathBuf::from(d));
    }
    for d in &dirs {
        if let Some(f) = library_in(d) {
            return Ok(f);
        }
    }
    looked
        .push("the executable's directory, LD_LIBRARY_PATH and system library directories".into());
    Err(format!(
        "no onnx runtime library found (looked in: {}); install it with \
         `python3 -m pip install onnxruntime==1.31.1` or set ORT_DYLIB_PATH",
        looked.join("; ")
    ))
}

/// `libonnxruntime.so` or its most specific versioned file in `dir`.
fn library_in(dir: &Path) -> Option<PathBuf> {
    let base = lib_file_name();
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.is_file()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n == base || n.starts_with(&format!("{base}.")))
        })
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found.into_iter().next()
}

/// The version from a versioned file name (`libonnxruntime.so.1.31.1`, following symlinks), else from the
/// library's build info (`git-branch=rel-1.31.1`).
fn library_version(lib: &Path) -> Option<String> {
    let from_name = |p: &Path| {
        let name = p.file_name()?.to_str()?;
        let rest = name.strip_prefix(&format!("{}.", lib_file_name()))?;
        (rest.split('.').count() >= 2 && rest.split('.').all(|s| s.parse::<u32>().is_ok()))
            .then(|| rest.to_string())
    };
    if let Some(v) = from_name(lib) {
        return Some(v);
    }
    if let Some(v) = std::fs::canonicalize(lib).ok().and_then(|p| from_name(&p)) {
        return Some(v);
    }
    let info = ort::info();
    let i = info.find("rel-")?;
    let v: String = info[i + 4..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!v.is_empty()).then_some(v)
}

/// What an importable Python knows: the `onnxruntime` package directory and the site-packages dirs.
#[derive(Debug, Default, Clone)]
struct PythonSite {
    onnxruntime: Option<PathBuf>,
    site_packages: Vec<PathBuf>,
}

fn python_site() -> PythonSite {
    static SITE: OnceLock<PythonSite> = OnceLock::new();
    SITE.get_or_init(|| {
        const SCRIPT: &str = "import os, site, sys\n\
            try:\n    import onnxruntime\n    print('ORT', os.path.dirname(onnxruntime.__file__))\n\
            except Exception:\n    pass\n\
            for p in site.getsitepackages() + [site.getusersitepackages()] + sys.path:\n    print('SITE', p)\n";
        for exe in ["python3", "python"] {
            let Ok(out) = Command::new(exe).arg("-c").arg(SCRIPT).output() else {
                continue;
            };
            if !out.status.success() {
                continue;
            }
            let mut site = PythonSite::default();
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(p) = line.strip_prefix("ORT ") {
                    site.onnxruntime = Some(PathBuf::from(p));
                } else if let Some(p) = line.strip_prefix("SITE ") {
                    let p = PathBuf::from(p);
                    if p.is_dir() && !site.site_packages.contains(&p) {
                        site.site_packages.push(p);
                    }
                }
            }
            return site;
        }
        PythonSite::default()
    })
    .clone()
}

/// Preload the CUDA, cuDNN and TensorRT libraries of pip packages (`nvidia-*`, `tensorrt-cu*-libs`) so the
/// GPU providers find them without `LD_LIBRARY_PATH`. Once per process; returns what was loaded.
fn preload_nvidia() -> &'static [PathBuf] {
    static DONE: OnceLock<Vec<PathBuf>> = OnceLock::new();
    DONE.get_or_init(|| {
        let site = python_site();
        let mut roots = site.site_packages.clone();
        if let Some(pkg) = site.onnxruntime.as_ref().and_then(|p| p.parent()) {
            roots.insert(0, pkg.to_path_buf());
        }
        let mut dirs = Vec::new();
        for root in &roots {
            if let Ok(rd) = std::fs::read_dir(root.join("nvidia")) {
                for e in rd.flatten() {
                    for sub in ["lib", "lib64"] {
                        let d = e.path().join(sub);
                        if d.is_dir() {
                            dirs.push(d);
                        }
                    }
                }
            }
            let trt = root.join("tensorrt_libs");
            if trt.is_dir() {
                dirs.push(trt);
            }
        }
        let wanted = |name: &str| {
            ep::cuda::CUDA_DYLIBS.contains(&name)
                || ep::cuda::CUDNN_DYLIBS.contains(&name)
                || name.starts_with("libnvinfer")
                || name.starts_with("libnvonnxparser")
        };
        let mut pending: Vec<PathBuf> = dirs
            .iter()
            .filter_map(|d| std::fs::read_dir(d).ok())
            .flat_map(|rd| rd.flatten().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(wanted))
            .collect();
        pending.sort();
        pending.dedup();
        // Dependencies among these libraries resolve once their dependees are loaded: retry until no
        // progress.
        let mut loaded = Vec::new();
        loop {
            let before = pending.len();
            pending.retain(|p| match ort::util::preload_dylib(p) {
                Ok(()) => {
                    loaded.push(p.clone());
                    false
                }
                Err(_) => true,
            });
            if pending.is_empty() || pending.len() == before {
                break;
            }
        }
        for p in &pending {
            tracing::warn!("could not preload {}", p.display());
        }
        if !loaded.is_empty() {
            tracing::info!(
                "preloaded {} nvidia libraries from pip packages",
                loaded.len()
            );
        }
        loaded
    })
}

fn provider_name(p: Provider) -> &'static str {
    match p {
        Provider::TensorRt => "tensorrt",
        Provider::Cuda => "cuda",
        Provider::Cpu => "cpu",
    }
}

/// Our short provider name for an ONNX Runtime execution-provider identifier.
fn short_provider(ort_name: &str) -> String {
    match ort_name {
        "CPUExecutionProvider" => "cpu".into(),
        "CUDAExecutionProvider" => "cuda".into(),
        "TensorrtExecutionProvider" => "tensorrt".into(),
        other => other
            .strip_suffix("ExecutionProvider")
            .unwrap_or(other)
            .to_lowercase(),
    }
}

/// A model's forward (and optional VJP) graph as ONNX Runtime sessions.
pub struct OrtDenoiser {
    forward: OrtGraph,
    vjp: Option<OrtGraph>,
    /// The split VJP (forward_residuals, backward), preferred over `vjp` when the card lists it.
    split: Option<(OrtGraph, OrtGraph)>,
    /// Residuals of forward_residuals calls, as ONNX Runtime values, until their backward call.
    kept: ResidualCache<Vec<DynValue>>,
    image: [usize; 3],
    batch_size: usize,
    version: String,
}

impl OrtDenoiser {
    /// Create the sessions for the card's graphs in `dir` with the providers `opts` asks for.
    pub fn load(dir: &Path, card: &ModelCard, opts: &RuntimeOptions) -> Result<Self> {
        let rt = runtime().map_err(|message| Error::Model {
            path: dir.to_path_buf(),
            message: format!("engine onnxruntime: {message}"),
        })?;
        let img = &card.image;
        let image = [img.channels, img.height, img.width];
        let forward = OrtGraph::open(
            rt,
            &dir.join(&card.graphs.forward),
            GraphRole::Forward,
            card,
            opts,
        )?;
        let split = match card.graphs.split() {
            Some((f, b)) => {
                let f = dir.join(f);
                let b = dir.join(b);
                let mut fres = OrtGraph::open(rt, &f, GraphRole::ForwardResiduals, card, opts)?;
                let mut bwd = OrtGraph::open(rt, &b, GraphRole::Backward, card, opts)?;
                let res = card.check_residuals(dir, &fres.io, &bwd.io)?;
                fres.res_names = res.clone();
                bwd.res_names = res;
                OrtGraph::detect_split_providers(&mut fres, &mut bwd, card, opts)?;
                Some((fres, bwd))
            }
            None => None,
        };
        // The single VJP graph only when there is no split pair: vjp() would never run it, and it is the
        // largest graph to optimise and warm up.
        let vjp = match (&card.graphs.vjp, &split) {
            (Some(g), None) => Some(OrtGraph::open(
                rt,
                &dir.join(g),
                GraphRole::Vjp,
                card,
                opts,
            )?),
            _ => None,
        };
        // Residuals on a GPU: its memory is not known here; on the host: a share of what is free.
        let budget = match (
            opts.residual_budget,
            split.as_ref().and_then(|(f, _)| f.keep_on.as_ref()),
        ) {
            (Some(b), _) => b,
            (None, Some(_)) => ResidualCache::<Vec<DynValue>>::DEFAULT_BUDGET,
            (None, None) => ResidualCache::<Vec<DynValue>>::host_budget(),
        };
        Ok(OrtDenoiser {
            forward,
            vjp,
            split,
            kept: ResidualCache::new(budget),
            image,
            batch_size: opts.batch_size.max(1),
            version: rt.version.clone(),
        })
    }

    /// The providers that run each graph's nodes (most nodes first), e.g. `["cuda", "cpu"]`.
    pub fn providers(&self) -> (Vec<String>, Option<Vec<String>>) {
        let vjp = match (&self.split, &self.vjp) {
            (Some((_, bwd)), _) => Some(bwd.providers.clone()),
            (None, v) => v.as_ref().map(|v| v.providers.clone()),
        };
        (self.forward.providers.clone(), vjp)
    }
}

impl Denoiser for OrtDenoiser {
    fn engine(&self) -> String {
        let f = self.forward.providers.join("+");
        match self.providers().1 {
            Some(v) if v != self.forward.providers => {
                format!("onnxruntime {}/{f} (vjp: {})", self.version, v.join("+"))
            }
            _ => format!("onnxruntime {}/{f}", self.version),
        }
    }

    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        let g = &self.forward;
        let mut out = run_batched(
            self.image,
            x,
            t,
            None,
            self.batch_size,
            g.fixed_batch,
            1,
            |c| g.run(c),
        )?;
        Ok(out.remove(0))
    }

    fn predict_for_vjp(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        let Some((fres, _)) = &self.split else {
            return self.predict(x, t);
        };
        let mut out = run_batched(
            self.image,
            x,
            t,
            None,
            self.batch_size,
            fres.fixed_batch,
            1,
            |c| {
                let (out, res) = fres.run_residuals(&c)?;
                let bytes = res.iter().map(value_bytes).sum();
                self.kept.put(c.x, c.t, out.clone(), res, bytes);
                Ok(vec![out])
            },
        )?;
        Ok(out.remove(0))
    }

    fn has_vjp(&self) -> bool {
        self.vjp.is_some() || self.split.is_some()
    }

    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        if let Some((fres, bwd)) = &self.split {
            let mut outs = run_batched(
                self.image,
                x,
                t,
                Some(cot),
                self.batch_size,
                fres.fixed_batch,
                2,
                |c| {
                    let (out, res) = match self.kept.take(&c.x, &c.t) {
                        Some(kept) => kept,
                        None => fres.run_residuals(&c)?,
                    };
                    let cot = c.cot.expect("a vjp chunk has a cotangent");
                    Ok(vec![out, bwd.run_backward(&res, cot)?])
                },
            )?;
            let vjp = outs.pop().expect("two outputs");
            let out = outs.pop().expect("two outputs");
            return Ok((out, vjp));
        }
        let Some(g) = &self.vjp else {
            return Err(Error::Unsupported(
                "onnxruntime: the model has no vjp graph; use jacobian: finite-difference or identity"
                    .into(),
            ));
        };
        let mut outs = run_batched(
            self.image,
            x,
            t,
            Some(cot),
            self.batch_size,
            g.fixed_batch,
            2,
            |c| g.run(c),
        )?;
        let vjp = outs.pop().expect("two outputs");
        let out = outs.pop().expect("two outputs");
        Ok((out, vjp))
    }
}

/// One graph's session.
struct OrtGraph {
    path: PathBuf,
    session: Mutex<Session>,
    fixed_batch: Option<usize>,
    /// Output names in the order the denoiser returns them.
    out_names: Vec<&'static str>,
    has_cot: bool,
    /// Providers that run this graph's nodes, most nodes first.
    providers: Vec<String>,
    /// The declared inputs and outputs.
    io: GraphIo,
    /// Split VJP graphs: the residual names (outputs of forward_residuals beyond `out`, inputs of
    /// backward beyond `cotangent`), in forward_residuals' output order.
    res_names: Vec<String>,
    /// forward_residuals: the device memory its residuals are left in, that of the device that runs the
    /// graph ([`residual_memory`]); `None`: the host (a CPU run, or before the providers are known).
    /// Binding the outputs costs a few per cent on the CPU (measured), where it gains nothing.
    keep_on: Option<MemoryInfo<'static>>,
}

/// Bytes held by an ONNX Runtime tensor value (0 for anything else).
fn value_bytes(v: &DynValue) -> usize {
    match v.dtype() {
        ValueType::Tensor { ty, shape, .. } => ty.byte_size(shape.num_elements()).unwrap_or(0),
        _ => 0,
    }
}

impl OrtGraph {
    fn open(
        rt: &OrtRuntime,
        path: &Path,
        role: GraphRole,
        card: &ModelCard,
        opts: &RuntimeOptions,
    ) -> Result<Self> {
        let err = |message: String| Error::Model {
            path: path.to_path_buf(),
            message,
        };
        let ort_err =
            |what: &str, e: &dyn std::fmt::Display| err(format!("onnx runtime cannot {what}: {e}"));
        let img = &card.image;
        let trt_shapes = |n: usize| {
            let im = format!("{n}x{}x{}x{}", img.channels, img.height, img.width);
            match role {
                GraphRole::Forward | GraphRole::ForwardResiduals => Some(format!("x:{im},t:{n}")),
                GraphRole::Vjp => Some(format!("x:{im},t:{n},cotangent:{im}")),
                // The residuals' shapes are the graph's own: TensorRT builds for the shapes it sees.
                GraphRole::Backward => None,
            }
        };
        let mut builder = session_builder(rt, path, opts, &trt_shapes)?;
        // Profile the warm-up call: ONNX Runtime's own record of which provider ran each node.
        let profile_prefix = std::env::temp_dir().join(format!(
            "conjure-ort-profile-{}-{}",
            std::process::id(),
            PROFILE_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        builder = builder
            .with_profiling(&profile_prefix)
            .map_err(|e| ort_err("enable profiling", &e))?;
        let session = builder
            .commit_from_file(path)
            .map_err(|e| ort_err("load the graph", &e))?;
        let io = session_io(&session);
        let fixed_batch = card.check_graph_io(path, role, &io)?;
        let out_names: Vec<&'static str> = match role {
            GraphRole::Forward | GraphRole::ForwardResiduals => vec!["out"],
            GraphRole::Vjp => vec!["out", "vjp"],
            GraphRole::Backward => vec!["vjp"],
        };
        let mut graph = OrtGraph {
            path: path.to_path_buf(),
            session: Mutex::new(session),
            fixed_batch,
            out_names,
            has_cot: role == GraphRole::Vjp,
            providers: Vec::new(),
            io,
            res_names: Vec::new(),
            keep_on: None,
        };
        if matches!(role, GraphRole::Forward | GraphRole::Vjp) {
            let summary = graph.detect_providers(card)?;
            graph.check_providers(summary, opts)?;
        }
        Ok(graph)
    }

    /// Provider detection for the split pair: one warm-up of forward_residuals, whose residuals feed
    /// one warm-up of backward.
    fn detect_split_providers(
        fres: &mut OrtGraph,
        bwd: &mut OrtGraph,
        card: &ModelCard,
        opts: &RuntimeOptions,
    ) -> Result<()> {
        let n = fres.fixed_batch.unwrap_or(1);
        let img = &card.image;
        let zeros = || Array4::<f32>::zeros((n, img.channels, img.height, img.width));
        let (_, res) = fres.run_residuals(&F32Chunk {
            x: zeros(),
            t: ndarray::Array1::zeros(n),
            cot: None,
        })?;
        bwd.run_backward(&res, zeros())?;
        drop(res);
        for g in [&mut *fres, &mut *bwd] {
            let summary = g.end_profile()?;
            g.check_providers(summary, opts)?;
        }
        if let Some(device) = residual_memory(&fres.providers).map_err(|e| fres.engine_error(e))? {
            Self::try_keep_on(fres, bwd, card, device)?;
        }
        Ok(())
    }

    /// Keep forward_residuals' residuals in `device` memory if that works: one step (zeros in, a cotangent
    /// of ones) through the host and one through the device must both run and give the same input
    /// gradient; else the residuals go through the host, with a warning (the run goes on either way).
    fn try_keep_on(
        fres: &mut OrtGraph,
        bwd: &OrtGraph,
        card: &ModelCard,
        device: MemoryInfo<'static>,
    ) -> Result<()> {
        let n = fres.fixed_batch.unwrap_or(1);
        let img = &card.image;
        let shape = (n, img.channels, img.height, img.width);
        let chunk = F32Chunk {
            x: Array4::zeros(shape),
            t: ndarray::Array1::zeros(n),
            cot: None,
        };
        let step = |fres: &OrtGraph| -> Result<Array4<f32>> {
            let (_, res) = fres.run_residuals(&chunk)?;
            bwd.run_backward(&res, Array4::ones(shape))
        };
        fres.keep_on = None;
        let on_host = step(fres)?;
        let name = device.allocation_device().as_str().to_string();
        fres.keep_on = Some(device);
        if let Some(why) = device_trouble(step(fres), &on_host) {
            tracing::warn!(
                "{}: split VJP residuals cannot stay in {name} memory ({why}); they go through the host",
                fres.path.display()
            );
            fres.keep_on = None;
        }
        Ok(())
    }

    /// Record which providers run the graph; refuse cpu compute nodes when cpu was not asked for.
    fn check_providers(&mut self, summary: ProfileSummary, opts: &RuntimeOptions) -> Result<()> {
        let path = self.path.clone();
        let err = |message: String| Error::Model {
            path: path.clone(),
            message,
        };
        let graph = self;
        graph.providers = summary.providers;
        let asked_cpu = opts.providers.contains(&Provider::Cpu);
        if !asked_cpu && !summary.cpu_compute.is_empty() {
            return Err(err(format!(
                "providers {:?} exclude cpu, but onnx runtime runs {} compute nodes on the cpu ({})",
                opts.providers,
                summary.cpu_compute.len(),
                summary.cpu_compute.join(", ")
            )));
        }
        let gpu_asked = opts.providers.iter().any(|p| *p != Provider::Cpu);
        if gpu_asked
            && opts.providers_given
            && graph.providers.first().map(String::as_str) == Some("cpu")
        {
            tracing::warn!(
                "{}: a gpu provider was asked for, but onnx runtime runs most nodes on the cpu ({})",
                path.display(),
                graph.providers.join("+")
            );
        }
        tracing::info!(
            "{}: onnx runtime runs on {}",
            path.display(),
            graph.providers.join("+")
        );
        Ok(())
    }

    /// One warm-up call with ONNX Runtime's profiler on; the profile says which provider ran each node.
    fn detect_providers(&mut self, card: &ModelCard) -> Result<ProfileSummary> {
        let n = self.fixed_batch.unwrap_or(1);
        let img = &card.image;
        let zeros = || Array4::<f32>::zeros((n, img.channels, img.height, img.width));
        self.run(F32Chunk {
            x: zeros(),
            t: ndarray::Array1::zeros(n),
            cot: self.has_cot.then(zeros),
        })?;
        self.end_profile()
    }

    /// End the profiling of the warm-up call and summarise it.
    fn end_profile(&mut self) -> Result<ProfileSummary> {
        let file = self
            .session
            .get_mut()
            .expect("session lock")
            .end_profiling()
            .map_err(|e| Error::Model {
                path: self.path.clone(),
                message: format!("onnx runtime cannot end profiling: {e}"),
            })?;
        let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e));
        let _ = std::fs::remove_file(&file);
        summarize_profile(&text?).map_err(|message| Error::Model {
            path: PathBuf::from(&file),
            message,
        })
    }

    fn run(&self, chunk: F32Chunk) -> Result<Vec<Array4<f32>>> {
        let eng = |e: ort::Error| Error::Engine {
            engine: "onnxruntime".into(),
            message: format!("{}: {e}", self.path.display()),
        };
        let mut inputs = vec![
            ("x", Tensor::from_array(chunk.x).map_err(eng)?.upcast()),
            ("t", Tensor::from_array(chunk.t).map_err(eng)?.upcast()),
        ];
        if let Some(c) = chunk.cot {
            inputs.push(("cotangent", Tensor::from_array(c).map_err(eng)?.upcast()));
        }
        let mut session = self.session.lock().map_err(|_| Error::Engine {
            engine: "onnxruntime".into(),
            message: format!(
                "{}: session poisoned by an earlier panic",
                self.path.display()
            ),
        })?;
        let outputs = session.run(inputs).map_err(eng)?;
        self.out_names
            .iter()
            .map(|name| {
                let v = outputs.get(*name).ok_or_else(|| Error::Engine {
                    engine: "onnxruntime".into(),
                    message: format!("{}: no output {name}", self.path.display()),
                })?;
                let a = v.try_extract_array::<f32>().map_err(eng)?;
                let a = a
                    .into_dimensionality::<ndarray::Ix4>()
                    .map_err(|e| Error::Shape(format!("{}: {name}: {e}", self.path.display())))?;
                Ok(a.to_owned())
            })
            .collect()
    }
}

impl OrtGraph {
    fn engine_error(&self, e: impl std::fmt::Display) -> Error {
        Error::Engine {
            engine: "onnxruntime".into(),
            message: format!("{}: {e}", self.path.display()),
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Session>> {
        self.session.lock().map_err(|_| Error::Engine {
            engine: "onnxruntime".into(),
            message: format!(
                "{}: session poisoned by an earlier panic",
                self.path.display()
            ),
        })
    }

    /// forward_residuals on a chunk: `out` as an array, the residuals as the session's own output values
    /// (no copy), in `res_names` order, left where [`OrtGraph::keep_on`] says.
    fn run_residuals(&self, chunk: &F32Chunk) -> Result<(Array4<f32>, Vec<DynValue>)> {
        let eng = |e: ort::Error| self.engine_error(e);
        let x = Tensor::from_array(chunk.x.clone()).map_err(eng)?;
        let t = Tensor::from_array(chunk.t.clone()).map_err(eng)?;
        let mut session = self.lock()?;
        let take = |mut outputs: ort::session::SessionOutputs<'_>| {
            let out = extract4(&outputs, "out").map_err(|e| self.engine_error(e))?;
            let res = self
                .res_names
                .iter()
                .map(|n| {
                    outputs
                        .remove(n)
                        .ok_or_else(|| self.engine_error(format!("no output {n}")))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok((out, res))
        };
        let Some(device) = &self.keep_on else {
            // The host: a plain run returns every output there.
            let inputs = vec![("x", x.upcast()), ("t", t.upcast())];
            return take(session.run(inputs).map_err(eng)?);
        };
        // A device: bind the residuals to its memory, so they stay there for the backward (a plain run
        // would copy every one to the host and the backward copy it back); only `out` comes to the host.
        // A fresh binding per call: a binding reuses its output buffers on its next run, and residuals
        // must outlive later calls until their backward.
        let mut binding = session.create_binding().map_err(eng)?;
        binding.bind_input("x", &x).map_err(eng)?;
        binding.bind_input("t", &t).map_err(eng)?;
        binding
            .bind_output_to_device("out", &MemoryInfo::default())
            .map_err(eng)?;
        for n in &self.res_names {
            binding
                .bind_output_to_device(n.as_str(), device)
                .map_err(eng)?;
        }
        binding.synchronize_inputs().map_err(eng)?;
        let outputs = session.run_binding(&binding).map_err(eng)?;
        binding.synchronize_outputs().map_err(eng)?;
        take(outputs)
    }

    /// backward on kept residuals (`res_names` order, on the host or the device: ONNX Runtime reads
    /// each where it is) and a cotangent chunk.
    fn run_backward(&self, res: &[DynValue], cot: Array4<f32>) -> Result<Array4<f32>> {
        let eng = |e: ort::Error| self.engine_error(e);
        let mut inputs: Vec<(std::borrow::Cow<'_, str>, SessionInputValue<'_>)> = self
            .res_names
            .iter()
            .zip(res)
            .map(|(n, v)| (n.as_str().into(), v.into()))
            .collect();
        inputs.push((
            "cotangent".into(),
            Tensor::from_array(cot).map_err(eng)?.upcast().into(),
        ));
        let mut session = self.lock()?;
        let outputs = session.run(inputs).map_err(eng)?;
        extract4(&outputs, "vjp").map_err(|e| self.engine_error(e))
    }
}

/// Why a trial step with the residuals on a device cannot be used: it failed, or its input gradient
/// differs from the host path's by more than float32 round-off (1e-4 of its largest value); `None`: it can.
fn device_trouble(on_device: Result<Array4<f32>>, on_host: &Array4<f32>) -> Option<String> {
    let v = match on_device {
        Err(e) => return Some(e.to_string()),
        Ok(v) => v,
    };
    let scale = on_host.iter().fold(0f32, |m, x| m.max(x.abs()));
    let err = (&v - on_host).iter().fold(0f32, |m, d| m.max(d.abs()));
    (err > 1e-4 * scale + 1e-6)
        .then(|| format!("the gradient differs from the host path's by {err:e} (scale {scale:e})"))
}

/// The device memory a split VJP's residuals stay in between forward_residuals and backward: that of
/// the provider that runs most of the graph's nodes (`providers`, most nodes first) — a CUDA device for
/// `cuda` and `tensorrt` (device 0, the one both providers are registered on); `None` for the host.
fn residual_memory(
    providers: &[String],
) -> std::result::Result<Option<MemoryInfo<'static>>, ort::Error> {
    match providers.first().map(String::as_str) {
        Some("cuda" | "tensorrt") => MemoryInfo::new(
            AllocationDevice::CUDA,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .map(Some),
        _ => Ok(None),
    }
}

/// A rank-4 f32 output of a run, copied out.
fn extract4(
    outputs: &ort::session::SessionOutputs<'_>,
    name: &str,
) -> std::result::Result<Array4<f32>, String> {
    let v = outputs
        .get(name)
        .ok_or_else(|| format!("no output {name}"))?;
    let a = v.try_extract_array::<f32>().map_err(|e| e.to_string())?;
    let a = a
        .into_dimensionality::<ndarray::Ix4>()
        .map_err(|e| format!("{name}: {e}"))?;
    Ok(a.to_owned())
}

/// What ONNX Runtime's session profile says about placement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProfileSummary {
    /// Providers that ran nodes, most nodes first (short names: `tensorrt`, `cuda`, `cpu`).
    providers: Vec<String>,
    /// Compute-heavy nodes (convolutions, matrix products) that ran on the cpu provider, `name (Op)`.
    cpu_compute: Vec<String>,
}

/// Summarise a session profile (Chrome trace JSON): one `Node` event per node and phase, whose `args`
/// carry `op_name` and `provider`. Small shape computations that GPU providers leave on the cpu by design
/// are counted but are not compute nodes.
fn summarize_profile(json: &str) -> std::result::Result<ProfileSummary, String> {
    const COMPUTE: &[&str] = &[
        "Conv",
        "ConvTranspose",
        "Gemm",
        "MatMul",
        "FusedConv",
        "FusedGemm",
        "FusedMatMul",
        "Attention",
        "MultiHeadAttention",
        "Einsum",
    ];
    let events: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("unreadable onnx runtime profile: {e}"))?;
    let mut nodes: BTreeMap<String, (String, String)> = BTreeMap::new();
    for ev in events.as_array().into_iter().flatten() {
        if ev.get("cat").and_then(|c| c.as_str()) != Some("Node") {
            continue;
        }
        let (Some(name), Some(provider)) = (
            ev.get("name").and_then(|n| n.as_str()),
            ev.pointer("/args/provider").and_then(|p| p.as_str()),
        ) else {
            continue;
        };
        let node = name
            .trim_end_matches("_kernel_time")
            .trim_end_matches("_fence_before")
            .trim_end_matches("_fence_after")
            .to_string();
        let op = ev
            .pointer("/args/op_name")
            .and_then(|o| o.as_str())
            .unwrap_or("")
            .to_string();
        nodes.insert(node, (short_provider(provider), op));
    }
    if nodes.is_empty() {
        return Err("the onnx runtime profile names no provider".into());
    }
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (p, _) in nodes.values() {
        *counts.entry(p).or_default() += 1;
    }
    let mut by_count: Vec<(&str, usize)> = counts.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    Ok(ProfileSummary {
        providers: by_count.into_iter().map(|(p, _)| p.to_string()).collect(),
        cpu_compute: nodes
            .iter()
            .filter(|(_, (p, op))| p == "cpu" && COMPUTE.contains(&op.as_str()))
            .map(|(n, (_, op))| format!("{n} ({op})"))
            .collect(),
    })
}

static PROFILE_SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A session builder with threads, optimization level and the providers registered in priority order
/// (`trt_shapes(n)` gives TensorRT's input shapes for batch size n).
fn session_builder(
    rt: &OrtRuntime,
    path: &Path,
    opts: &RuntimeOptions,
    trt_shapes: &dyn Fn(usize) -> Option<String>,
) -> Result<SessionBuilder> {
    let err = |message: String| Error::Model {
        path: path.to_path_buf(),
        message,
    };
    let threads = if opts.threads == 0 {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    } else {
        opts.threads
    };
    let mut builder = Session::builder(&rt.env)
        .map_err(|e| err(format!("onnx runtime cannot create a session: {e}")))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| err(format!("onnx runtime optimization level: {e}")))?
        .with_intra_threads(threads)
        .map_err(|e| err(format!("invalid threads {threads}: {e}")))?
        // Each session has its own intra-op pool, and a model has up to four sessions that run one after
        // another: threads that spin-wait after a call take the cores from the next session's threads
        // (and from the sampler). Without spinning, ONNX Runtime in Python on 2 shared cores ran the
        // fmnist-ddpm forward at batch 1 in 70 ms instead of 422 ms, forward + VJP in 231 ms instead of
        // 1473 ms (medians of 15 interleaved runs, 2 threads, on a loaded machine).
        .with_intra_op_spinning(false)
        .map_err(|e| err(format!("onnx runtime intra-op spinning: {e}")))?;
    let asked_cpu = opts.providers.contains(&Provider::Cpu);
    if opts.providers.is_empty() {
        return Err(Error::invalid(
            "runtime.providers",
            "[]",
            "at least one of tensorrt, cuda, cpu",
        ));
    }
    if opts.providers.iter().any(|p| *p != Provider::Cpu) {
        preload_nvidia();
    }
    let mut registered = Vec::new();
    let mut failures = Vec::new();
    for &p in &opts.providers {
        let dispatch: ExecutionProviderDispatch = match p {
            Provider::TensorRt => {
                // One engine for every batch size 1..=batch_size, so TensorRT never rebuilds it.
                let max = opts.batch_size.max(1);
                let mut trt = ep::TensorRT::default();
                if let (Some(min), Some(opt)) = (trt_shapes(1), trt_shapes(max)) {
                    trt = trt
                        .with_profile_min_shapes(min)
                        .with_profile_opt_shapes(&opt)
                        .with_profile_max_shapes(opt);
                }
                if let Some(dir) = &opts.trt_cache {
                    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
                    let d = dir.display().to_string();
                    trt = trt
                        .with_engine_cache(true)
                        .with_engine_cache_path(&d)
                        .with_timing_cache(true)
                        .with_timing_cache_path(&d);
                }
                trt.build()
            }
            // Full f32 on the GPU: TensorFloat-32 convolutions (10-bit mantissa) make finite-difference
            // Jacobians and the VJP self-check meaningless (seen on an H200: 24 % mismatch with TF32 on).
            Provider::Cuda => ep::CUDA::default().with_tf32(false).build(),
            // With ONNX Runtime's memory arena, as its own default: `ort`'s `CPU::default()` turns the
            // arena off, and every intermediate tensor of a call was then mapped from and returned to
            // the kernel (page faults and page clearing were 15 % of a C-ΠGDM run's time on the CPU, the
            // split VJP's forward and backward each ~5 ms per image slower than in Python).
            Provider::Cpu => ep::CPU::default().with_arena_allocator(true).build(),
        };
        match dispatch.register(&mut builder) {
            Ok(()) => registered.push(p),
            // Asked for: a warning. Tried from the default list: expected on a machine without
            // that GPU, so only at debug level (the info line of `OrtGraph::open` says what runs).
            Err(e) if opts.providers_given => {
                tracing::warn!(
                    "{}: execution provider {} failed to register: {e}",
                    path.display(),
                    provider_name(p)
                );
                failures.push(format!("{}: {e}", provider_name(p)));
            }
            Err(e) => {
                tracing::debug!(
                    "{}: execution provider {} failed to register: {e}",
                    path.display(),
                    provider_name(p)
                );
                failures.push(format!("{}: {e}", provider_name(p)));
            }
        }
    }
    if !asked_cpu && registered.is_empty() {
        return Err(err(format!(
            "no execution provider of {:?} could be registered ({}); add cpu to \
             runtime.providers to allow running on the cpu",
            opts.providers,
            failures.join("; ")
        )));
    }
    Ok(builder)
}

/// The session's declared inputs and outputs.
fn session_io(session: &Session) -> GraphIo {
    let decl = |name: &str, ty: &ValueType| match ty {
        ValueType::Tensor { ty, shape, .. } => TensorDecl {
            name: name.to_string(),
            elem_type: Some(match ty.to_string().as_str() {
                "f32" => "float32".to_string(),
                "f16" => "float16".to_string(),
                "f64" => "float64".to_string(),
                "bf16" => "bfloat16".to_string(),
                other => other.to_string(),
            }),
            dims: Some(
                shape
                    .iter()
                    .map(|&d| (d > 0).then_some(d as usize))
                    .collect(),
            ),
        },
        other => TensorDecl {
            name: name.to_string(),
            elem_type: Some(format!("{other:?}")),
            dims: None,
        },
    };
    GraphIo {
        inputs: session
            .inputs()
            .iter()
            .map(|o| decl(o.name(), o.dtype()))
            .collect(),
        outputs: session
            .outputs()
            .iter()
            .map(|o| decl(o.name(), o.dtype()))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiling_stops_after_provider_detection() {
        // Provider detection profiles one warm-up call; later calls must not keep profiling (that would
        // grow memory over a long run and leave files behind).
        if let Err(why) = runtime() {
            assert!(
                std::env::var("CONJURE_REQUIRE_ORT").map_or(true, |v| v != "1"),
                "CONJURE_REQUIRE_ORT=1 but onnx runtime is not available: {why}"
            );
            eprintln!("NOTICE: skipped, onnx runtime not available ({why})");
            return;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fmnist-ddpm");
        let card = ModelCard::load(&dir).unwrap();
        let opts = RuntimeOptions {
            providers: vec![Provider::Cpu],
            threads: 1,
            ..RuntimeOptions::default()
        };
        let mut g = OrtGraph::open(
            runtime().unwrap(),
            &dir.join(&card.graphs.forward),
            GraphRole::Forward,
            &card,
            &opts,
        )
        .unwrap();
        assert_eq!(g.providers, vec!["cpu".to_string()]);
        g.run(F32Chunk {
            x: Array4::zeros((1, 1, 32, 32)),
            t: ndarray::Array1::zeros(1),
            cot: None,
        })
        .unwrap();
        // An error means "not profiling", which is also fine.
        if let Ok(name) = g.session.get_mut().unwrap().end_profiling() {
            assert!(name.is_empty(), "profiling still on: {name}");
        }
    }

    /// The Fashion-MNIST prior (split VJP graphs) on the CPU provider, one thread, batches of 2, with
    /// this residual budget.
    fn fmnist_split_on_cpu(budget: Option<usize>) -> (PathBuf, ModelCard, RuntimeOptions) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fmnist-ddpm");
        let card = ModelCard::load(&dir).unwrap();
        let opts = RuntimeOptions {
            providers: vec![Provider::Cpu],
            threads: 1,
            batch_size: 2,
            residual_budget: budget,
            ..RuntimeOptions::default()
        };
        (dir, card, opts)
    }

    #[test]
    fn split_vjp_keeps_residuals_from_predict_for_vjp_to_vjp() {
        if runtime().is_err() {
            return; // reported by profiling_stops_after_provider_detection
        }
        let (dir, card, opts) = fmnist_split_on_cpu(None);
        let d = OrtDenoiser::load(&dir, &card, &opts).unwrap();
        assert!(d.split.is_some());
        let x = Array4::from_shape_fn((3, 1, 32, 32), |(b, _, h, w)| {
            ((b + h * w) % 7) as f64 * 0.3
        });
        let t = [10.0, 500.0, 900.0];
        let cot = x.mapv(|v| 0.5 - v);
        let out = d.predict_for_vjp(x.view(), &t).unwrap();
        // Two chunks (batch_size 2): both kept, on the host (the CPU provider runs the graph), then both
        // consumed by the vjp.
        assert_eq!(d.kept.len(), 2);
        assert!(d.split.as_ref().unwrap().0.keep_on.is_none());
        let (o, v) = d.vjp(x.view(), &t, cot.view()).unwrap();
        assert_eq!(d.kept.len(), 0);
        assert_eq!(o, out);
        // The first chunk's residuals outlived the second chunk's forward (no call reuses another's
        // output buffers): its VJP equals the one taken right after its own forward, bit for bit.
        for (lo, hi) in [(0, 2), (2, 3)] {
            let s = ndarray::s![lo..hi, .., .., ..];
            d.predict_for_vjp(x.slice(s), &t[lo..hi]).unwrap();
            let (_, alone) = d.vjp(x.slice(s), &t[lo..hi], cot.slice(s)).unwrap();
            assert_eq!(v.slice(s), alone, "images {lo}..{hi}");
        }
        // A plain predict keeps nothing.
        d.predict(x.view(), &t).unwrap();
        assert_eq!(d.kept.len(), 0);
    }

    /// `runtime.residual_memory: 0` keeps only the newest chunk: the earlier ones run the forward again,
    /// with the same results.
    #[test]
    fn a_zero_budget_keeps_only_the_newest_chunk() {
        if runtime().is_err() {
            return; // reported by profiling_stops_after_provider_detection
        }
        let x = Array4::from_shape_fn((5, 1, 32, 32), |(b, _, h, w)| {
            ((b * 5 + h + w) % 9) as f64 * 0.2 - 0.8
        });
        let t = [10.0, 200.0, 500.0, 700.0, 900.0];
        let mut steps = Vec::new();
        for budget in [None, Some(0)] {
            let (dir, card, opts) = fmnist_split_on_cpu(budget);
            let d = OrtDenoiser::load(&dir, &card, &opts).unwrap();
            d.predict_for_vjp(x.view(), &t).unwrap();
            assert_eq!(d.kept.len(), if budget.is_some() { 1 } else { 3 });
            steps.push(d.vjp(x.view(), &t, x.view()).unwrap());
            assert_eq!(d.kept.len(), 0);
        }
        assert_eq!(steps[0], steps[1]);
    }

    /// The residuals stay on the device of the provider that runs the residual graph: a CUDA device for
    /// cuda and tensorrt (no copy through the host between the two graphs), the host for the cpu.
    #[test]
    fn residuals_stay_on_the_device_that_runs_the_graph() {
        if runtime().is_err() {
            return; // reported by profiling_stops_after_provider_detection
        }
        let on = |p: &[&str]| {
            let p: Vec<String> = p.iter().map(|s| s.to_string()).collect();
            residual_memory(&p).unwrap().map(|m| {
                let dev = m.allocation_device().as_str().to_string();
                (dev, m.device_id(), m.is_cpu_accessible())
            })
        };
        assert_eq!(on(&["cuda", "cpu"]), Some(("Cuda".into(), 0, false)));
        assert_eq!(
            on(&["tensorrt", "cuda", "cpu"]),
            Some(("Cuda".into(), 0, false))
        );
        assert_eq!(on(&["cpu"]), None);
        assert_eq!(on(&["cpu", "cuda"]), None);
        assert_eq!(on(&[]), None);
    }

    /// The device path is tried once at load and kept only if it runs and gives the host path's gradient.
    /// Here the session is the CPU's: ONNX Runtime leaves outputs bound to CUDA memory where its nodes
    /// made them (no CUDA allocator), so the trial passes and the residuals are on the host; the decision
    /// itself is checked on a failed and on a differing trial.
    #[test]
    fn the_device_path_is_tried_before_it_is_kept() {
        if runtime().is_err() {
            return; // reported by profiling_stops_after_provider_detection
        }
        let (dir, card, opts) = fmnist_split_on_cpu(None);
        let mut d = OrtDenoiser::load(&dir, &card, &opts).unwrap();
        let (fres, bwd) = d.split.as_mut().unwrap();
        let cuda = MemoryInfo::new(
            AllocationDevice::CUDA,
            0,
            AllocatorType::Device,
            MemoryType::Default,
        )
        .unwrap();
        OrtGraph::try_keep_on(fres, bwd, &card, cuda).unwrap();
        assert!(fres.keep_on.is_some());
        let (_, res) = fres
            .run_residuals(&F32Chunk {
                x: Array4::zeros((1, 1, 32, 32)),
                t: ndarray::Array1::zeros(1),
                cot: None,
            })
            .unwrap();
        for v in &res {
            let tensor = v
                .view()
                .downcast::<ort::value::DynTensorValueType>()
                .unwrap();
            assert_eq!(
                tensor.memory_info().allocation_device(),
                AllocationDevice::CPU
            );
        }
        let x = Array4::from_elem((2, 1, 32, 32), 0.25);
        d.predict_for_vjp(x.view(), &[100.0, 600.0]).unwrap();
        d.vjp(x.view(), &[100.0, 600.0], x.view()).unwrap();
        // The decision: a trial that fails, or that moves the gradient, sends the residuals to the host.
        let host = Array4::from_elem((1, 1, 2, 2), 2.0f32);
        assert_eq!(device_trouble(Ok(host.clone()), &host), None);
        assert_eq!(device_trouble(Ok(host.mapv(|v| v + 1e-5)), &host), None);
        let far = device_trouble(Ok(host.mapv(|v| v + 1e-2)), &host).unwrap();
        assert!(far.contains("differs"), "{far}");
        let failed = device_trouble(Err(Error::Shape("no allocator".into())), &host).unwrap();
        assert!(failed.contains("no allocator"), "{failed}");
    }

    /// The device path (outputs bound to the residuals' memory), taken here with the host's memory as
    /// the "device" since no GPU runs the tests: the residuals come back in that memory and the step
    /// equals the plain run's bit for bit, several chunks kept at once.
    #[test]
    fn bound_residuals_equal_plain_ones() {
        if runtime().is_err() {
            return; // reported by profiling_stops_after_provider_detection
        }
        let (dir, card, opts) = fmnist_split_on_cpu(None);
        let plain = OrtDenoiser::load(&dir, &card, &opts).unwrap();
        let mut bound = OrtDenoiser::load(&dir, &card, &opts).unwrap();
        bound.split.as_mut().unwrap().0.keep_on = Some(MemoryInfo::default());
        let x = Array4::from_shape_fn((5, 1, 32, 32), |(b, _, h, w)| {
            ((b * 3 + h * w) % 11) as f64 * 0.17 - 0.8
        });
        let t = [10.0, 200.0, 500.0, 700.0, 900.0];
        let cot = x.mapv(|v| v * v - 0.3);
        let fres = &bound.split.as_ref().unwrap().0;
        let (_, res) = fres
            .run_residuals(&F32Chunk {
                x: x.slice(ndarray::s![..2, .., .., ..]).mapv(|v| v as f32),
                t: ndarray::Array1::from(vec![10.0f32, 200.0]),
                cot: None,
            })
            .unwrap();
        assert_eq!(res.len(), fres.res_names.len());
        for v in &res {
            let tensor = v
                .view()
                .downcast::<ort::value::DynTensorValueType>()
                .unwrap();
            assert_eq!(
                tensor.memory_info().allocation_device(),
                AllocationDevice::CPU
            );
        }
        let mut steps = Vec::new();
        for d in [&plain, &bound] {
            let out = d.predict_for_vjp(x.view(), &t).unwrap();
            assert_eq!(d.kept.len(), 3);
            let (o, v) = d.vjp(x.view(), &t, cot.view()).unwrap();
            assert_eq!(o, out);
            steps.push((o, v));
        }
        assert_eq!(steps[0], steps[1]);
    }

    #[test]
    fn profiles_are_summarised() {
        let ev = |name: &str, op: &str, p: &str| {
            format!(
                r#"{{"cat":"Node","name":"{name}_kernel_time","ph":"X","args":{{"op_name":"{op}","provider":"{p}"}}}},
                   {{"cat":"Node","name":"{name}_fence_before","ph":"X","args":{{"op_name":"{op}"}}}}"#
            )
        };
        // CUDA runs the network; ONNX Runtime leaves shape arithmetic on the cpu by design.
        let json = format!(
            r#"[{{"cat":"Session","name":"model_run","args":{{}}}}, {}, {}, {}, {}]"#,
            ev("conv1", "Conv", "CUDAExecutionProvider"),
            ev("gemm1", "Gemm", "CUDAExecutionProvider"),
            ev("add1", "Add", "CUDAExecutionProvider"),
            ev("shape1", "Shape", "CPUExecutionProvider"),
        );
        let s = summarize_profile(&json).unwrap();
        assert_eq!(s.providers, vec!["cuda".to_string(), "cpu".to_string()]);
        assert!(s.cpu_compute.is_empty());
        // A convolution on the cpu is a compute node there.
        let json = format!(
            "[{}, {}, {}]",
            ev("conv1", "Conv", "CPUExecutionProvider"),
            ev("conv2", "Conv", "TensorrtExecutionProvider"),
            ev("trt", "TRTKernel_graph_0", "TensorrtExecutionProvider"),
        );
        let s = summarize_profile(&json).unwrap();
        assert_eq!(s.providers, vec!["tensorrt".to_string(), "cpu".to_string()]);
        assert_eq!(s.cpu_compute, vec!["conv1 (Conv)".to_string()]);
        assert!(summarize_profile("[]").is_err());
        assert!(summarize_profile("not json").is_err());
    }

    #[test]
    fn versions_parse_from_file_names() {
        assert_eq!(
            library_version(Path::new("/x/capi/libonnxruntime.so.1.31.1")).as_deref(),
            Some("1.31.1")
        );
        assert_eq!(short_provider("CUDAExecutionProvider"), "cuda");
        assert_eq!(short_provider("TensorrtExecutionProvider"), "tensorrt");
        assert_eq!(short_provider("CPUExecutionProvider"), "cpu");
    }
}
