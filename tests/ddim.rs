//! Unconditional DDIM (docs/samplers.md §8.5): the deterministic recursion against its Gaussian closed form,
//! convergence to the exact probability-flow transport, the η > 0 sample moments, and that y is ignored.

mod common;

use std::sync::Arc;

use common::cpigdm::*;
use conjure::model::analytic::{GaussianDiffusion, GaussianPrior, IdentityBasis, NoiseLevel};
use conjure::model::Parameterization;
use conjure::operators::Img;
use conjure::samplers::ddim::{ddim_coefficients, Ddim};
use conjure::samplers::{Problem, Sampler, SamplerConfig, SamplerName};
use conjure::schedules::{DdpmDiscrete, TimeInput};

const SHAPE: [usize; 3] = [1, 2, 3];
const MEAN: [f64; 6] = [0.3, -0.2, 0.5, 0.1, -0.4, 0.2];
const VAR: [f64; 6] = [2.0, 1.0, 0.5, 3.0, 0.25, 0.7];

fn ddpm() -> DdpmDiscrete {
    DdpmDiscrete::linear(1e-4, 0.02, 1000).unwrap()
}

fn oracle() -> GaussianDiffusion {
    let prior =
        GaussianPrior::new(Arc::new(IdentityBasis), img(SHAPE, &MEAN), img(SHAPE, &VAR)).unwrap();
    GaussianDiffusion::new(prior, NoiseLevel::DdpmIndex(ddpm()), Parameterization::Eps).unwrap()
}

fn ddim(steps: usize, eta: f64) -> Ddim {
    let mut c = SamplerConfig::new(SamplerName::Ddim);
    c.steps = Some(steps);
    c.eta = Some(eta);
    Ddim::from_config(&c, &sched()).unwrap()
}

fn run(s: &Ddim, z: &Img, y_scale: f64) -> Img {
    let op = diag(SHAPE, &[1.0; 6]);
    let y = img(SHAPE, &[y_scale; 6]);
    let p = Problem::new(op, y, 0.0, 0)
        .unwrap()
        .with_init_noise(z.clone())
        .unwrap();
    let oracle = oracle();
    let net = eps_net(&oracle, TimeInput::Index { timesteps: 1000 });
    s.sample(&net, &mut [p]).unwrap().remove(0)
}

#[test]
fn defaults() {
    let d = Ddim::from_config(&SamplerConfig::new(SamplerName::Ddim), &sched()).unwrap();
    assert_eq!(d.nfe(), 50);
    assert_eq!(d.grid()[1], 20);
    let (c_noise, c_eps) = ddim_coefficients(0.5, 0.8, 0.0);
    assert_eq!(c_noise, 0.0);
    assert!((c_eps - 0.2f64.sqrt()).abs() < 1e-15);
    // η = 1 is the DDPM posterior std.
    let (c_noise, _) = ddim_coefficients(0.5, 0.8, 1.0);
    assert!((c_noise - ((1.0 - 0.5 / 0.8) * 0.2 / 0.5f64).sqrt()).abs() < 1e-15);
    let mut c = SamplerConfig::new(SamplerName::Ddim);
    c.eta = Some(-0.1);
    assert!(Ddim::from_config(&c, &sched()).is_err());
}

#[test]
fn deterministic_ddim_matches_gaussian_closed_form() {
    // For N(m, λ) data and exact ε, one η = 0 step maps d_t = x_t − μ_t m to
    // d_s = d_t (μ_s μ_t λ + σ_s σ_t)/C_t, C_t = μ_t² λ + σ_t².
    let d = ddpm();
    let z = randn(SHAPE, 3);
    for steps in [1, 7, 50] {
        let out = run(&ddim(steps, 0.0), &z, 0.0);
        // `steps` points i·N/steps (the official ddpm_uniform grid when steps divides N).
        let ts: Vec<i64> = (0..steps).map(|i| (i * 1000 / steps) as i64).collect();
        for i in 0..6 {
            let mut x = z.as_slice().unwrap()[i];
            for j in (0..ts.len()).rev() {
                let (a_t, a_s) = (d.alpha(ts[j]), d.alpha(if j > 0 { ts[j - 1] } else { -1 }));
                let (mu_t, s_t, mu_s, s_s) = (
                    a_t.sqrt(),
                    (1.0 - a_t).sqrt(),
                    a_s.sqrt(),
                    (1.0 - a_s).sqrt(),
                );
                let c = mu_t * mu_t * VAR[i] + s_t * s_t;
                x = mu_s * MEAN[i] + (x - mu_t * MEAN[i]) * (mu_s * mu_t * VAR[i] + s_s * s_t) / c;
            }
            let got = out.as_slice().unwrap()[i];
            assert!(
                (got - x).abs() < 1e-12,
                "steps {steps} coord {i}: {got} vs {x}"
            );
        }
    }
}

#[test]
fn deterministic_ddim_converges_to_the_flow_map() {
    // The probability-flow ODE keeps (x_t − μ_t m)/√C_t fixed for Gaussian data.
    let d = ddpm();
    let z = randn(SHAPE, 4);
    let a_top = d.alpha(999);
    let exact: Vec<f64> = (0..6)
        .map(|i| {
            let c = a_top * VAR[i] + 1.0 - a_top;
            MEAN[i] + VAR[i].sqrt() * (z.as_slice().unwrap()[i] - a_top.sqrt() * MEAN[i]) / c.sqrt()
        })
        .collect();
    let err = |steps| max_abs_diff(&run(&ddim(steps, 0.0), &z, 0.0), &img(SHAPE, &exact));
    let (e10, e1000) = (err(10), err(1000));
    assert!(
        e1000 < 1e-2 && e1000 < e10 / 20.0,
        "errors {e10:e} (10 steps), {e1000:e} (1000)"
    );
}

#[test]
fn stochastic_ddim_samples_the_data_moments() {
    let s = ddim(200, 0.5);
    let oracle = oracle();
    let net = eps_net(&oracle, TimeInput::Index { timesteps: 1000 });
    let n = 3000;
    let op = diag(SHAPE, &[1.0; 6]);
    let mut problems: Vec<Problem> = (0..n)
        .map(|i| Problem::new(op.clone(), Img::zeros(SHAPE), 0.0, i as u64).unwrap())
        .collect();
    let out = s.sample(&net, &mut problems).unwrap();
    for i in 0..6 {
        let v: Vec<f64> = out.iter().map(|x| x.as_slice().unwrap()[i]).collect();
        let mean = v.iter().sum::<f64>() / n as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        let se_mean = (VAR[i] / n as f64).sqrt();
        let se_var = VAR[i] * (2.0 / n as f64).sqrt();
        assert!(
            (mean - MEAN[i]).abs() < 4.0 * se_mean,
            "coord {i}: mean {mean}"
        );
        assert!(
            (var - VAR[i]).abs() < 4.0 * se_var + 0.03 * VAR[i],
            "coord {i}: var {var}"
        );
    }
}

#[test]
fn ignores_the_measurement() {
    let z = randn(SHAPE, 5);
    let s = ddim(20, 0.5);
    assert_eq!(run(&s, &z, 0.0), run(&s, &z, 3.0));
}
