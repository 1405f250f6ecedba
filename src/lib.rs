//! # conjure
//!
//! Restore images in bulk with pretrained diffusion and flow-matching models exported to ONNX, using the
//! Conditional Conjugate Integrators of Pandey, Yang & Mandt (NeurIPS 2024, arXiv 2405.17673) — C-ΠGDM for
//! diffusion models and C-ΠGFM for flow models — and their baselines (ΠGDM, DDRM, DPS, DDNM, ΠGFM).
//!
//! The data path: a measurement y and a linear degradation H ([`operators`]) define a [`samplers::Problem`];
//! a [`samplers::Sampler`] restores x from it with a network behind the [`model::Denoiser`] trait, seen
//! through the [`model::Network`] adapter (parameterization, time input, Jacobian mode).
//!
//! ## Quick start (analytic prior, no ONNX)
//!
//! ```
//! use std::sync::Arc;
//! use conjure::model::analytic::{GaussianDiffusion, GaussianPrior, IdentityBasis, NoiseLevel};
//! use conjure::model::{JacobianMode, ModelKind, Network, Parameterization};
//! use conjure::schedules::VpContinuous;
//! use ndarray::Array3;
//!
//! let prior = GaussianPrior::new(Arc::new(IdentityBasis), Array3::zeros((1, 4, 4)), Array3::ones((1, 4, 4))).unwrap();
//! let level = NoiseLevel::VpUnit(VpContinuous::default());
//! let time = level.time_input();
//! let oracle = GaussianDiffusion::new(prior, level, Parameterization::Eps).unwrap();
//! let net = Network::new(&oracle, ModelKind::Diffusion, Parameterization::Eps, time, JacobianMode::Exact);
//! let eps = net.eps(&[Array3::zeros((1, 4, 4))], 0.5, 0.8, 0.6).unwrap();
//! assert_eq!(eps[0].shape(), &[1, 4, 4]);
//! ```

pub mod engine;
pub mod error;
pub mod imageio;
pub mod metrics;
pub mod model;
mod names;
pub mod operators;
pub mod pipeline;
pub mod samplers;
pub mod schedules;
pub mod spec;
pub mod study;
pub mod tensor;

pub use error::{Error, Result};
