//! The model card `model.yaml` (interface.md §3): what a model directory holds and how to call it.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ModelKind, Parameterization};
use crate::error::{Error, Result};
use crate::samplers::ModelSchedule;
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
        let img = &self.image;
        if img.channels == 0 || img.height == 0 || img.width == 0 {
            return Err(bad(format!(
                "invalid image size {}x{}x{} (expected positive)",
                img.channels, img.height, img.width
            )));
        }
        if img.value_range[0].partial_cmp(&img.value_range[1]) != Some(std::cmp::Ordering::Less) {
            return Err(bad(format!(
                "invalid value_range {:?} (expected [low, high] with low < high)",
                img.value_range
            )));
        }
        for g in std::iter::once(&self.graphs.forward).chain(self.graphs.vjp.iter()) {
            if !dir.join(g).is_file() {
                return Err(bad(format!(
                    "graph file {} not found",
                    dir.join(g).display()
                )));
            }
        }
        Ok(())
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
                let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                let vals: std::result::Result<Vec<f64>, _> =
                    text.split_whitespace().map(str::parse).collect();
                let vals = vals.map_err(|e| Error::Model {
                    path: path.clone(),
                    message: format!("not a list of numbers: {e}"),
                })?;
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
