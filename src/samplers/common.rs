//! Helpers several samplers share: the diffusion samplers' time grid and batch check, the ε-then-VJP step of
//! the guided diffusion samplers, and the flow samplers' grid, option check, batch check and velocity VJP.
//! Kept here so that no sampler file borrows from another.

use crate::error::{Error, Result};
use crate::model::{ModelKind, Network};
use crate::schedules::linspace;
use crate::tensor::Img;

use super::{check_range, Problem, SamplerConfig};

/// Largest number of steps a flow sampler accepts.
pub const MAX_STEPS: usize = 100_000;

/// Default start time τ (t_start = 0.6 in the code's reversed grid, §12).
pub const DEFAULT_START_TIME: f64 = 0.4;
/// Default end time (1 − t_end with t_end = 0.999, §12).
pub const DEFAULT_END_TIME: f64 = 0.001;
/// Default ε_n of the Φ integrands (README / scripts value, §1.2).
pub const DEFAULT_NUM_EPS: f64 = 1e-6;

/// Check 0 < t_end < τ ≤ 1.
pub(crate) fn check_start_end(tau: f64, t_end: f64) -> Result<()> {
    check_range("start_time", tau, f64::MIN_POSITIVE, 1.0)?;
    if !(t_end.is_finite() && t_end > 0.0 && t_end < tau) {
        return Err(Error::invalid(
            "end_time",
            t_end,
            format!("a value in (0, start_time = {tau})"),
        ));
    }
    Ok(())
}

/// The official grid: s_k = linspace(1 − τ, 1 − t_end, K + 1) and t_k = 1 − s_k (§4.4 step 1).
pub fn time_grid(tau: f64, t_end: f64, steps: usize) -> Vec<f64> {
    linspace(1.0 - tau, 1.0 - t_end, steps)
        .into_iter()
        .map(|s| 1.0 - s)
        .collect()
}

/// Check that a batch shares one x shape.
pub(crate) fn check_batch(problems: &[Problem]) -> Result<()> {
    if let Some(first) = problems.first() {
        let shape = first.x_shape();
        for p in problems {
            if p.x_shape() != shape {
                return Err(Error::Shape(format!(
                    "a batch must share one image shape: {:?} vs {:?}",
                    p.x_shape(),
                    shape
                )));
            }
        }
    }
    Ok(())
}

/// One network forward ε̂ = ε_θ(x, t_net), then m_i = `m_of(i, ε̂_i)`, then g = J_εᵀ m in the network's
/// Jacobian mode ([`Network::eps_jt`]: one VJP, two batched finite-difference probes, or none in
/// `identity` mode). Returns (ε̂, m, g).
pub(crate) fn eps_then_vjp(
    net: &Network,
    xs: &[Img],
    t_net: f64,
    mu: f64,
    sigma: f64,
    mut m_of: impl FnMut(usize, &Img) -> Img,
) -> Result<(Vec<Img>, Vec<Img>, Vec<Img>)> {
    let eps = net.eps(xs, t_net, mu, sigma)?;
    let ms: Vec<Img> = eps.iter().enumerate().map(|(i, e)| m_of(i, e)).collect();
    let g = net.eps_jt(xs, t_net, mu, sigma, &ms)?;
    Ok((eps, ms, g))
}

/// Check K and st for a flow grid t_i = st + i (1 − st)/K.
pub(crate) fn validate_flow_grid(steps: usize, start_time: f64) -> Result<()> {
    if steps == 0 || steps > MAX_STEPS {
        return Err(Error::invalid("steps", steps, format!("1..={MAX_STEPS}")));
    }
    if !(start_time > 0.0 && start_time < 1.0) {
        return Err(Error::invalid(
            "start_time",
            start_time,
            "a flow time in (0, 1): the network is never called at t = 0",
        ));
    }
    Ok(())
}

/// The flow grid t_i = st + iΔ, i = 0..K, Δ = (1 − st)/K, in f64, with t_K = 1 exactly.
pub(crate) fn flow_grid(steps: usize, start_time: f64) -> Vec<f64> {
    let delta = (1.0 - start_time) / steps as f64;
    (0..=steps)
        .map(|i| {
            if i == steps {
                1.0
            } else {
                start_time + i as f64 * delta
            }
        })
        .collect()
}

/// Reject a config option the flow samplers have no use for (an unset option takes no effect).
pub(crate) fn reject_unused(sampler: &str, cfg: &SamplerConfig) -> Result<()> {
    let unused = [
        ("end_time", cfg.end_time),
        ("eta", cfg.eta),
        ("eta_b", cfg.eta_b),
        ("num_eps", cfg.num_eps),
    ];
    for (what, v) in unused {
        if let Some(v) = v {
            let expected = if what == "end_time" {
                format!("unset: {sampler} always integrates to flow time 1")
            } else {
                format!("unset: {sampler} has no {what}")
            };
            return Err(Error::invalid(what, v, expected));
        }
    }
    Ok(())
}

/// [`check_flow_batch_shapes`], then a warning when σ_y > 0: the sampler's guidance is noiseless.
pub(crate) fn check_flow_batch(sampler: &str, net: &Network, problems: &[Problem]) -> Result<()> {
    check_flow_batch_shapes(sampler, net, problems)?;
    if problems.iter().any(|p| p.sigma_y > 0.0) {
        tracing::warn!(
            "{sampler} uses the noiseless guidance of the official flow code; noise_sigma is not used"
        );
    }
    Ok(())
}

/// Check the network and the batch before sampling: a flow model, a usable Jacobian mode, one x shape.
pub(crate) fn check_flow_batch_shapes(
    sampler: &str,
    net: &Network,
    problems: &[Problem],
) -> Result<()> {
    if net.kind != ModelKind::Flow {
        return Err(Error::Unsupported(format!(
            "sampler {sampler} needs a flow model, got a diffusion model"
        )));
    }
    net.validate()?;
    if let Some(first) = problems.first() {
        let shape = first.x_shape();
        if let Some(p) = problems.iter().find(|p| p.x_shape() != shape) {
            return Err(Error::Shape(format!(
                "{sampler} batch mixes image shapes {:?} and {:?}",
                shape,
                p.x_shape()
            )));
        }
    }
    Ok(())
}

/// g = J_vᵀ m for a batch at flow time t, per the network's Jacobian mode, without recomputing v
/// (see [`Network::velocity_jt`]: 1 VJP, 2 extra forwards, or none in `identity` mode).
pub(crate) fn velocity_jt(net: &Network, xs: &[Img], t: f64, ms: &[Img]) -> Result<Vec<Img>> {
    net.velocity_jt(xs, t, ms)
}
