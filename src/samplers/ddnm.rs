//! Placeholder: being written.

use super::{ModelSchedule, Problem, Sampler, SamplerConfig};
use crate::error::{Error, Result};
use crate::model::Network;
use crate::operators::Img;

/// Not yet implemented.
pub struct Ddnm;

impl Ddnm {
    pub fn from_config(_cfg: &SamplerConfig, _sched: &ModelSchedule) -> Result<Self> {
        Err(Error::Unsupported("sampler not implemented yet".into()))
    }
}

impl Sampler for Ddnm {
    fn name(&self) -> &'static str {
        "ddnm"
    }
    fn nfe(&self) -> usize {
        0
    }
    fn sample(&self, _net: &Network, _problems: &mut [Problem]) -> Result<Vec<Img>> {
        Err(Error::Unsupported("sampler not implemented yet".into()))
    }
}
