//! The pseudo-inverse baseline: x̂ = H† y, the minimum-norm least-squares solution of y = H x
//! (the starting point of C-ΠGDM, ΠGDM and DPS; docs/operators.md §2.1, docs/samplers.md §11).
//!
//! H† is the operator's true Moore–Penrose pseudo-inverse of the (thresholded) operator,
//! V(s⁺ ⊙ Uᵀy) with s⁺ = 1/s where s ≠ 0 and 0 elsewhere — not the official code's "pass-through" of
//! zero-singular coordinates (see [`crate::operators`]). No network evaluations, no randomness; works
//! with any model (the schedule is ignored), so it is the cheapest sanity baseline of a pipeline.

use super::{ModelSchedule, Problem, Sampler, SamplerConfig};
use crate::error::Result;
use crate::model::Network;
use crate::tensor::Img;

/// x̂ = H† y per problem. Reads no setting of the config.
#[derive(Debug, Clone, Copy, Default)]
pub struct Pinv;

impl Pinv {
    /// Any config and any model schedule (diffusion or flow) are accepted.
    pub fn from_config(_cfg: &SamplerConfig, _sched: &ModelSchedule) -> Result<Self> {
        Ok(Pinv)
    }
}

impl Sampler for Pinv {
    fn name(&self) -> &'static str {
        "pinv"
    }
    fn nfe(&self) -> usize {
        0
    }
    /// H† y for every problem; the network is not called.
    fn sample(&self, _net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        Ok(problems.iter().map(|p| p.op.pinv(&p.y)).collect())
    }
}
