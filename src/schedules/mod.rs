//! Noise schedules (docs/samplers.md §1.2, §1.3, §1.5) and the map from sampler time to the network's time input.

use crate::error::{Error, Result};

/// Continuous VP-SDE: β(t) = β_min + t(β_max − β_min) on t ∈ [0, 1] (docs/samplers.md §1.2).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VpContinuous {
    pub beta_min: f64,
    pub beta_max: f64,
}

impl Default for VpContinuous {
    fn default() -> Self {
        VpContinuous {
            beta_min: 0.1,
            beta_max: 20.0,
        }
    }
}

impl VpContinuous {
    /// β(t).
    pub fn beta(&self, t: f64) -> f64 {
        self.beta_min + t * (self.beta_max - self.beta_min)
    }
    /// b_t = ∫₀ᵗ β(s) ds.
    pub fn b(&self, t: f64) -> f64 {
        self.beta_min * t + 0.5 * t * t * (self.beta_max - self.beta_min)
    }
    /// μ_t = exp(−b_t / 2).
    pub fn mu(&self, t: f64) -> f64 {
        (-0.5 * self.b(t)).exp()
    }
    /// σ_t = sqrt(1 − exp(−b_t)), computed without cancellation for small t.
    pub fn sigma(&self, t: f64) -> f64 {
        (-(-self.b(t)).exp_m1()).sqrt()
    }
}

/// Discrete DDPM schedule: `alpha(i)` = ᾱ after step i, i = 0..N−1, with alpha(−1) = 1 (docs/samplers.md §1.3).
#[derive(Debug, Clone, PartialEq)]
pub struct DdpmDiscrete {
    /// ᾱ[i] for i = 0..N−1 (the doc's alpha(i) = ᾱ[i + 1] of the padded cumprod).
    alphas_cumprod: Vec<f64>,
}

impl DdpmDiscrete {
    /// β_i = linspace(beta_start, beta_end, n) in f64, ᾱ = cumprod(1 − β).
    pub fn linear(beta_start: f64, beta_end: f64, n: usize) -> Result<Self> {
        if n < 2 {
            return Err(Error::invalid("timesteps", n, ">= 2"));
        }
        if !(0.0 < beta_start && beta_start <= beta_end && beta_end < 1.0) {
            return Err(Error::invalid(
                "betas",
                format!("{beta_start}..{beta_end}"),
                "0 < beta_start <= beta_end < 1",
            ));
        }
        let mut acc = 1.0;
        let alphas_cumprod = (0..n)
            .map(|i| {
                let beta = beta_start + (beta_end - beta_start) * i as f64 / (n - 1) as f64;
                acc *= 1.0 - beta;
                acc
            })
            .collect();
        Ok(DdpmDiscrete { alphas_cumprod })
    }

    /// From explicit ᾱ values (decreasing, in (0, 1]).
    pub fn from_alphas_cumprod(alphas_cumprod: Vec<f64>) -> Result<Self> {
        if alphas_cumprod.len() < 2 {
            return Err(Error::invalid(
                "alphas_cumprod length",
                alphas_cumprod.len(),
                ">= 2",
            ));
        }
        let ok = alphas_cumprod.iter().all(|&a| a > 0.0 && a <= 1.0)
            && alphas_cumprod.windows(2).all(|w| w[1] <= w[0]);
        if !ok {
            return Err(Error::invalid(
                "alphas_cumprod",
                "values",
                "non-increasing values in (0, 1]",
            ));
        }
        Ok(DdpmDiscrete { alphas_cumprod })
    }

    /// Number of training steps N.
    pub fn len(&self) -> usize {
        self.alphas_cumprod.len()
    }

    /// Always false (a schedule has ≥ 2 steps).
    pub fn is_empty(&self) -> bool {
        self.alphas_cumprod.is_empty()
    }

    /// ᾱ at step index i ∈ [−1, N−1]; alpha(−1) = 1 (clean).
    pub fn alpha(&self, i: i64) -> f64 {
        if i < 0 {
            1.0
        } else {
            self.alphas_cumprod[i as usize]
        }
    }

    /// The `ddpm_uniform` grid with exactly `steps` points: i·N/steps rounded down, i = 0..steps.
    ///
    /// When `steps` divides N this is the official grid (skip = N div steps, [0, skip, 2 skip, …]); the
    /// official code gives *more* points than asked otherwise (N = 1000, steps = 3 → 4 points), which
    /// would break "steps = NFE", so we space `steps` points as evenly as integers allow instead.
    pub fn uniform_grid(&self, steps: usize) -> Result<Vec<i64>> {
        let n = self.len();
        if steps == 0 || steps > n {
            return Err(Error::invalid(
                "steps",
                steps,
                format!("1..={n} for a {n}-step schedule"),
            ));
        }
        Ok((0..steps).map(|i| (i * n / steps) as i64).collect())
    }

    /// The continuous VP schedule matching linear betas (β_min = N·beta_start, β_max = N·beta_end).
    pub fn linear_to_vp(beta_start: f64, beta_end: f64, n: usize) -> VpContinuous {
        VpContinuous {
            beta_min: beta_start * n as f64,
            beta_max: beta_end * n as f64,
        }
    }
}

/// How a network expects its time input (model card `time_input`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum TimeInput {
    /// Diffusion: the DDPM step index 0..N−1 as a float. Continuous samplers call floor((N−1)·t), with
    /// truncation, not rounding (docs/samplers.md §1.2). Flows: (N−1)·t as a real number (NCSN++'s 999 t).
    Index { timesteps: usize },
    /// The continuous time itself: diffusion t ∈ [0, 1], flow t ∈ [0, 1] (0 = noise).
    Unit,
}

impl TimeInput {
    /// Network input for continuous diffusion time t ∈ [0, 1].
    pub fn diffusion_continuous(&self, t: f64) -> f64 {
        match *self {
            TimeInput::Index { timesteps } => (t * (timesteps - 1) as f64).floor(),
            TimeInput::Unit => t,
        }
    }
    /// Network input for discrete step index i ∈ [0, N−1] of an N-step schedule.
    pub fn diffusion_index(&self, i: i64, n: usize) -> f64 {
        match *self {
            TimeInput::Index { .. } => i as f64,
            TimeInput::Unit => (i + 1) as f64 / n as f64,
        }
    }
    /// Network input for flow time t ∈ (0, 1].
    pub fn flow(&self, t: f64) -> f64 {
        match *self {
            TimeInput::Index { timesteps } => t * (timesteps - 1) as f64,
            TimeInput::Unit => t,
        }
    }
}

/// `n + 1` points `linspace(a, b, n + 1)` in f64.
pub fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
    (0..=n)
        .map(|i| {
            if i == n {
                b
            } else {
                a + (b - a) * i as f64 / n as f64
            }
        })
        .collect()
}

/// The schedules a model offers to samplers.
#[derive(Debug, Clone)]
pub enum ModelSchedule {
    /// A diffusion model: its discrete DDPM schedule and the matching continuous VP schedule.
    Diffusion {
        vp: VpContinuous,
        ddpm: DdpmDiscrete,
    },
    /// A rectified-flow model.
    Flow,
}

impl ModelSchedule {
    /// The standard DDPM linear schedule (1e-4…0.02, 1000 steps) and its VP-SDE (0.1, 20).
    pub fn ddpm_linear_default() -> Self {
        ModelSchedule::Diffusion {
            vp: DdpmDiscrete::linear_to_vp(1e-4, 0.02, 1000),
            ddpm: DdpmDiscrete::linear(1e-4, 0.02, 1000).expect("valid"),
        }
    }

    pub(crate) fn diffusion(&self, sampler: &str) -> Result<(&VpContinuous, &DdpmDiscrete)> {
        match self {
            ModelSchedule::Diffusion { vp, ddpm } => Ok((vp, ddpm)),
            ModelSchedule::Flow => Err(Error::Unsupported(format!(
                "sampler {sampler} needs a diffusion model, got a flow model"
            ))),
        }
    }

    pub(crate) fn flow(&self, sampler: &str) -> Result<()> {
        match self {
            ModelSchedule::Flow => Ok(()),
            ModelSchedule::Diffusion { .. } => Err(Error::Unsupported(format!(
                "sampler {sampler} needs a flow model, got a diffusion model"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    #[test]
    fn vp_values_match_the_reference_values() {
        let vp = VpContinuous::default();
        assert!((vp.mu(1.0) - 0.006572).abs() < 5e-7);
        assert!((vp.mu(0.4) - 0.442197).abs() < 5e-7);
        assert!((vp.sigma(0.4) - 0.896918).abs() < 5e-7);
        assert!((vp.mu(0.001) - 0.999945).abs() < 5e-7);
        assert!((vp.sigma(0.001) - 0.010485).abs() < 5e-7);
        for t in [0.001, 0.3, 0.9] {
            assert!((vp.mu(t).powi(2) + vp.sigma(t).powi(2) - 1.0).abs() < 1e-14);
        }
        assert!(rel(vp.mu(0.4).powi(2), 0.195538) < 5e-6);
    }

    #[test]
    fn ddpm_values_match_the_reference_values() {
        let d = DdpmDiscrete::linear(1e-4, 0.02, 1000).unwrap();
        assert_eq!(d.alpha(-1), 1.0);
        assert!((d.alpha(0) - 0.9999).abs() < 1e-15);
        assert!(rel(d.alpha(999), 4.0358e-5) < 1e-4);
        assert!(rel(d.alpha(399), 0.195146) < 5e-6);
        assert!(rel(d.alpha(80), 0.929897) < 5e-6);
        let g = d.uniform_grid(20).unwrap();
        assert_eq!(g.len(), 20);
        assert_eq!(g[1], 50);
        assert_eq!(*g.last().unwrap(), 950);
        assert_eq!(d.uniform_grid(1000).unwrap().len(), 1000);
        assert_eq!(d.uniform_grid(3).unwrap(), vec![0, 333, 666]);
        assert_eq!(d.uniform_grid(7).unwrap().len(), 7);
        assert!(d.uniform_grid(0).is_err());
    }

    #[test]
    fn network_index_truncates() {
        let ti = TimeInput::Index { timesteps: 1000 };
        let s = linspace(0.6, 0.999, 5);
        let idx: Vec<f64> = s.iter().map(|s| ti.diffusion_continuous(1.0 - s)).collect();
        assert_eq!(&idx[..5], &[399.0, 319.0, 240.0, 160.0, 80.0]);
        assert_eq!(ti.flow(0.5), 499.5);
    }
}
