//! The model card `model.yaml` (docs/model-card.md): what a model directory holds and how to call it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{JacobianMode, ModelKind, Parameterization};
use crate::error::{Error, Result};
use crate::schedules::ModelSchedule;
use crate::schedules::{DdpmDiscrete, TimeInput, VpContinuous};

/// A parsed `model.yaml`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelCard {
    pub name: String,
    pub kind: CardKind,
    pub parameterization: CardParam,
    pub schedule: CardSchedule,
    pub time_input: CardTimeInput,
    pub image: CardImage,
    pub graphs: CardGraphs,
    /// What the model was trained on, in words (e.g. "Fashion-MNIST garments, 32x32 grey"); optional.
    /// `run` names it when the inputs do not fit.
    #[serde(default)]
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CardKind {
    Diffusion,
    Flow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CardParam {
    Eps,
    X0,
    Velocity,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum CardSchedule {
    DdpmLinear {
        beta_start: f64,
        beta_end: f64,
        timesteps: usize,
    },
    VpContinuous {
        beta_min: f64,
        beta_max: f64,
    },
    /// A `.npy` (or text, one value per line) file of ᾱ values, relative to the model directory.
    AlphasCumprod {
        file: PathBuf,
    },
    RectifiedFlow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CardTimeInput {
    Index,
    Unit,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardImage {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub value_range: [f64; 2],
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CardGraphs {
    pub forward: PathBuf,
    #[serde(default)]
    pub vjp: Option<PathBuf>,
    /// The split VJP's first half: (x, t) → (out, r₁ … r_k), the forward that also returns the residuals
    /// its backward reads. Listed together with `backward`.
    #[serde(default)]
    pub forward_residuals: Option<PathBuf>,
    /// The split VJP's second half: (r₁ … r_k, cotangent) → vjp = (∂out/∂x)ᵀ·cotangent.
    #[serde(default)]
    pub backward: Option<PathBuf>,
}

impl CardGraphs {
    /// The split VJP pair (forward_residuals, backward), when the card lists it.
    pub fn split(&self) -> Option<(&PathBuf, &PathBuf)> {
        self.forward_residuals.as_ref().zip(self.backward.as_ref())
    }

    /// Whether the model has a VJP: the single `vjp` graph or the split pair.
    pub fn has_vjp(&self) -> bool {
        self.vjp.is_some() || self.split().is_some()
    }
}

impl ModelCard {
    /// Read and validate `<dir>/model.yaml`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("model.yaml");
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let card: ModelCard = serde_saphyr::from_str(&text).map_err(|e| Error::Model {
            path: path.clone(),
            message: format!("invalid model card: {e}"),
        })?;
        card.validate(dir)?;
        Ok(card)
    }

    /// Check the card's values against each other and the files in `dir`.
    pub fn validate(&self, dir: &Path) -> Result<()> {
        let bad = |message: String| Error::Model {
            path: dir.join("model.yaml"),
            message,
        };
        match (self.kind, self.parameterization) {
            (CardKind::Diffusion, CardParam::Velocity) => {
                return Err(bad(
                    "a diffusion model predicts eps or x0, not velocity".into()
                ))
            }
            (CardKind::Flow, CardParam::Eps) => {
                return Err(bad("a flow model predicts velocity or x0, not eps".into()))
            }
            _ => {}
        }
        match (&self.kind, &self.schedule) {
            (CardKind::Flow, CardSchedule::RectifiedFlow) => {}
            (CardKind::Flow, _) => {
                return Err(bad("a flow model needs schedule type rectified-flow".into()))
            }
            (CardKind::Diffusion, CardSchedule::RectifiedFlow) => return Err(bad(
                "a diffusion model needs a ddpm-linear, vp-continuous or alphas-cumprod schedule"
                    .into(),
            )),
            _ => {}
        }
        match &self.schedule {
            CardSchedule::DdpmLinear {
                beta_start,
                beta_end,
                timesteps,
            } => {
                if !(0.0 < *beta_start && beta_start <= beta_end && *beta_end < 1.0) {
                    return Err(bad(format!(
                        "invalid ddpm-linear betas {beta_start}..{beta_end} \
                         (expected 0 < beta_start <= beta_end < 1)"
                    )));
                }
                if *timesteps < 2 {
                    return Err(bad(format!(
                        "invalid timesteps {timesteps} (expected >= 2)"
                    )));
                }
            }
            CardSchedule::VpContinuous { beta_min, beta_max } => {
                if !(0.0 < *beta_min && beta_min <= beta_max && beta_max.is_finite()) {
                    return Err(bad(format!(
                        "invalid vp-continuous betas {beta_min}..{beta_max} \
                         (expected 0 < beta_min <= beta_max)"
                    )));
                }
            }
            CardSchedule::AlphasCumprod { file } => {
                if !dir.join(file).is_file() {
                    return Err(bad(format!(
                        "alphas-cumprod file {} not found",
                        dir.join(file).display()
                    )));
                }
            }
            CardSchedule::RectifiedFlow => {}
        }
        let img = &self.image;
        if img.channels == 0 || img.height == 0 || img.width == 0 {
            return Err(bad(format!(
                "invalid image size {}x{}x{} (expected positive)",
                img.channels, img.height, img.width
            )));
        }
        let [low, high] = img.value_range;
        if !(low.is_finite() && high.is_finite() && low < high) {
            return Err(bad(format!(
                "invalid value_range {:?} (expected finite [low, high] with low < high)",
                img.value_range
            )));
        }
        let gr = &self.graphs;
        if gr.forward_residuals.is_some() != gr.backward.is_some() {
            return Err(bad(
                "graphs.forward_residuals and graphs.backward come together (the split vjp); \
                 the card lists only one of them"
                    .into(),
            ));
        }
        let listed = std::iter::once(&gr.forward)
            .chain(gr.vjp.iter())
            .chain(gr.forward_residuals.iter())
            .chain(gr.backward.iter());
        for g in listed {
            if !dir.join(g).is_file() {
                return Err(bad(format!(
                    "graph file {} not found",
                    dir.join(g).display()
                )));
            }
        }
        Ok(())
    }

    /// Check that the spec's Jacobian mode can run on this model: `jacobian: exact` needs a `vjp` graph
    /// (or the split pair `forward_residuals` + `backward`). `dir` names the model directory in the error.
    pub fn check_jacobian(&self, dir: &Path, mode: JacobianMode) -> Result<()> {
        if mode == JacobianMode::Exact && !self.graphs.has_vjp() {
            return Err(Error::Model {
                path: dir.join("model.yaml"),
                message:
                    "jacobian: exact needs a vjp graph, and this card lists none under graphs \
                          (add graphs.vjp, or use jacobian: finite-difference or identity)"
                        .into(),
            });
        }
        Ok(())
    }

    /// Check a graph's declared inputs and outputs (as an engine reports them) against the card:
    /// input names `x`, `t` (and `cotangent` for the VJP graph), outputs `out` (and `vjp`), all float32;
    /// `x`, `cotangent`, `out`, `vjp` of shape [B, C, H, W] with C, H, W equal to the card's image where the
    /// graph fixes them, and `t` of shape [B]. A fixed batch dimension must agree across the graph's tensors.
    /// `path` is the graph file, named in every error. Returns the graph's fixed batch size, if it has one.
    pub fn check_graph_io(
        &self,
        path: &Path,
        role: GraphRole,
        io: &GraphIo,
    ) -> Result<Option<usize>> {
        let bad = |message: String| Error::Model {
            path: path.to_path_buf(),
            message,
        };
        let (want_in, want_out): (&[&str], &[&str]) = match role {
            GraphRole::Forward | GraphRole::ForwardResiduals => (&["x", "t"], &["out"]),
            GraphRole::Vjp => (&["x", "t", "cotangent"], &["out", "vjp"]),
            GraphRole::Backward => (&["cotangent"], &["vjp"]),
        };
        let names = |ts: &[TensorDecl]| ts.iter().map(|t| t.name.clone()).collect::<Vec<_>>();
        // The split pair's residuals: the outputs of forward_residuals beyond `out`, the inputs of backward
        // beyond `cotangent` (any names, types and shapes; check_residuals matches the two lists).
        let residual = |t: &TensorDecl| match role {
            GraphRole::ForwardResiduals => io.outputs.contains(t) && t.name != "out",
            GraphRole::Backward => io.inputs.contains(t) && t.name != "cotangent",
            _ => false,
        };
        for (what, decls, want) in [
            ("inputs", &io.inputs, want_in),
            ("outputs", &io.outputs, want_out),
        ] {
            let decls: Vec<TensorDecl> = decls.iter().filter(|t| !residual(t)).cloned().collect();
            let decls = &decls;
            let mut have = names(decls);
            have.sort();
            let mut expect: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            expect.sort();
            if have != expect {
                return Err(bad(format!(
                    "{} graph has {what} {:?} (expected {:?})",
                    role.name(),
                    names(decls),
                    want
                )));
            }
        }
        let img = &self.image;
        let image = [img.channels, img.height, img.width];
        let mut batch: Option<(usize, String)> = None;
        for decl in io.inputs.iter().chain(&io.outputs).filter(|t| !residual(t)) {
            if let Some(ty) = &decl.elem_type {
                if ty != "float32" {
                    return Err(bad(format!(
                        "{} has element type {ty} (expected float32)",
                        decl.name
                    )));
                }
            }
            let Some(dims) = &decl.dims else { continue };
            let want_rank = if decl.name == "t" { 1 } else { 4 };
            if dims.len() != want_rank {
                return Err(bad(format!(
                    "{} has shape {} (expected {})",
                    decl.name,
                    show_dims(dims),
                    if want_rank == 1 {
                        "[B]".to_string()
                    } else {
                        format!(
                            "[B, {}, {}, {}] from the card's image",
                            image[0], image[1], image[2]
                        )
                    }
                )));
            }
            if want_rank == 4 {
                for (k, (d, want)) in dims[1..].iter().zip(image).enumerate() {
                    if let Some(d) = d {
                        if *d != want {
                            return Err(bad(format!(
                                "{} has shape {} but the card's image is {}x{}x{} (C x H x W): \
                                 dimension {} is {d}, expected {want}",
                                decl.name,
                                show_dims(dims),
                                image[0],
                                image[1],
                                image[2],
                                k + 1
                            )));
                        }
                    }
                }
            }
            if let Some(b) = dims[0] {
                match &batch {
                    Some((b0, name0)) if *b0 != b => {
                        return Err(bad(format!(
                            "fixed batch dimensions disagree: {name0} has {b0}, {} has {b}",
                            decl.name
                        )))
                    }
                    Some(_) => {}
                    None => batch = Some((b, decl.name.clone())),
                }
            }
        }
        if let Some((0, name)) = &batch {
            return Err(bad(format!("{name} has batch dimension 0 (expected >= 1)")));
        }
        Ok(batch.map(|(b, _)| b))
    }

    /// The residuals of the split VJP: the outputs of `forward_residuals` other than `out`, in that
    /// graph's order, which must be exactly the inputs of `backward` other than `cotangent`. `dir` names
    /// the model directory in the error.
    pub fn check_residuals(&self, dir: &Path, fwd: &GraphIo, bwd: &GraphIo) -> Result<Vec<String>> {
        let res: Vec<String> = fwd
            .outputs
            .iter()
            .filter(|t| t.name != "out")
            .map(|t| t.name.clone())
            .collect();
        let mut have: Vec<&str> = bwd
            .inputs
            .iter()
            .filter(|t| t.name != "cotangent")
            .map(|t| t.name.as_str())
            .collect();
        let mut want: Vec<&str> = res.iter().map(String::as_str).collect();
        have.sort_unstable();
        want.sort_unstable();
        if have != want {
            let missing: Vec<&&str> = want.iter().filter(|n| !have.contains(n)).collect();
            let extra: Vec<&&str> = have.iter().filter(|n| !want.contains(n)).collect();
            return Err(Error::Model {
                path: dir.join("model.yaml"),
                message: format!(
                    "the split vjp graphs do not fit together: backward lacks the residuals {missing:?} \
                     that forward_residuals returns, and reads {extra:?} that it does not return"
                ),
            });
        }
        Ok(res)
    }

    pub fn model_kind(&self) -> ModelKind {
        match self.kind {
            CardKind::Diffusion => ModelKind::Diffusion,
            CardKind::Flow => ModelKind::Flow,
        }
    }

    pub fn param(&self) -> Parameterization {
        match self.parameterization {
            CardParam::Eps => Parameterization::Eps,
            CardParam::X0 => Parameterization::X0,
            CardParam::Velocity => Parameterization::Velocity,
        }
    }

    /// Number of training steps N of a diffusion schedule (1000 where the card does not say).
    pub fn timesteps(&self) -> usize {
        match &self.schedule {
            CardSchedule::DdpmLinear { timesteps, .. } => *timesteps,
            _ => 1000,
        }
    }

    pub fn time_input(&self) -> TimeInput {
        match self.time_input {
            CardTimeInput::Index => TimeInput::Index {
                timesteps: self.timesteps(),
            },
            CardTimeInput::Unit => TimeInput::Unit,
        }
    }

    /// The schedules samplers use for this model. `dir` resolves an `alphas-cumprod` file.
    pub fn model_schedule(&self, dir: &Path) -> Result<ModelSchedule> {
        const N: usize = 1000;
        Ok(match &self.schedule {
            CardSchedule::RectifiedFlow => ModelSchedule::Flow,
            CardSchedule::DdpmLinear {
                beta_start,
                beta_end,
                timesteps,
            } => ModelSchedule::Diffusion {
                vp: DdpmDiscrete::linear_to_vp(*beta_start, *beta_end, *timesteps),
                ddpm: DdpmDiscrete::linear(*beta_start, *beta_end, *timesteps)?,
            },
            CardSchedule::VpContinuous { beta_min, beta_max } => ModelSchedule::Diffusion {
                vp: VpContinuous {
                    beta_min: *beta_min,
                    beta_max: *beta_max,
                },
                ddpm: DdpmDiscrete::linear(beta_min / N as f64, beta_max / N as f64, N)?,
            },
            CardSchedule::AlphasCumprod { file } => {
                let path = dir.join(file);
                let vals = read_alphas(&path)?;
                let ddpm = DdpmDiscrete::from_alphas_cumprod(vals)?;
                // Continuous samplers need a VP-SDE; fit the linear one whose endpoints match ᾱ's betas.
                let n = ddpm.len();
                let b0 = 1.0 - ddpm.alpha(0);
                let bn = 1.0 - ddpm.alpha(n as i64 - 1) / ddpm.alpha(n as i64 - 2);
                ModelSchedule::Diffusion {
                    vp: DdpmDiscrete::linear_to_vp(b0, bn, n),
                    ddpm,
                }
            }
        })
    }
}

/// Which of a model's graphs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphRole {
    /// `graphs.forward`: (x, t) → out.
    Forward,
    /// `graphs.vjp`: (x, t, cotangent) → (out, vjp).
    Vjp,
    /// `graphs.forward_residuals`: (x, t) → (out, r₁ … r_k).
    ForwardResiduals,
    /// `graphs.backward`: (r₁ … r_k, cotangent) → vjp.
    Backward,
}

impl GraphRole {
    pub fn name(self) -> &'static str {
        match self {
            GraphRole::Forward => "forward",
            GraphRole::Vjp => "vjp",
            GraphRole::ForwardResiduals => "forward_residuals",
            GraphRole::Backward => "backward",
        }
    }
}

/// One declared graph input or output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorDecl {
    pub name: String,
    /// ONNX element type name (`float32`, `float16`, …) where the engine reports it.
    pub elem_type: Option<String>,
    /// Dimensions, `None` for a symbolic/dynamic one; `None` as a whole when the rank is unknown.
    pub dims: Option<Vec<Option<usize>>>,
}

/// A graph's declared inputs and outputs, as an engine reports them (checked by
/// [`ModelCard::check_graph_io`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GraphIo {
    pub inputs: Vec<TensorDecl>,
    pub outputs: Vec<TensorDecl>,
}

impl GraphIo {
    /// Position of the tensor called `name` among the inputs.
    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|t| t.name == name)
    }
    /// Position of the tensor called `name` among the outputs.
    pub fn output_index(&self, name: &str) -> Option<usize> {
        self.outputs.iter().position(|t| t.name == name)
    }
}

fn show_dims(dims: &[Option<usize>]) -> String {
    let parts: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |d| d.to_string()))
        .collect();
    format!("[{}]", parts.join(", "))
}

/// ᾱ values from a `.npy` file (1-D, float64 or float32) or a text file (one number per line).
fn read_alphas(path: &Path) -> Result<Vec<f64>> {
    let bad = |message: String| Error::Model {
        path: path.to_path_buf(),
        message,
    };
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("npy"))
    {
        let f64s: std::result::Result<ndarray::Array1<f64>, _> = ndarray_npy::read_npy(path);
        return match f64s {
            Ok(a) => Ok(a.to_vec()),
            Err(e64) => ndarray_npy::read_npy::<_, ndarray::Array1<f32>>(path)
                .map(|a| a.iter().map(|&v| v as f64).collect())
                .map_err(|_| bad(format!("not a 1-d float64/float32 .npy array: {e64}"))),
        };
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.split_whitespace()
        .map(str::parse)
        .collect::<std::result::Result<Vec<f64>, _>>()
        .map_err(|e| bad(format!("not a list of numbers: {e}")))
}
