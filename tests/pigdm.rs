//! ΠGDM (docs/samplers.md §6 continuous `pgdm_cont`, §8.1 discrete `pgdm`): coefficients, reductions to
//! λ-DDIM, the inpainting start, first-order convergence to its own ODE, its instability where C-ΠGDM is
//! stable, closed-form discrete steps on a Gaussian toy, and batch independence.

mod common;

use std::sync::{Arc, Mutex};

use common::cpigdm::*;
use conjure::model::analytic::{GaussianDiffusion, GaussianPrior, IdentityBasis, NoiseLevel};
use conjure::model::Parameterization;
use conjure::operators::{Diagonal, Img, LinearOperator, OperatorKind, OperatorRef};
use conjure::samplers::c_pigdm::CPigdm;
use conjure::samplers::ddim::lambda_ddim;
use conjure::samplers::pigdm::Pigdm;
use conjure::samplers::{Problem, Sampler, SamplerConfig, SamplerName};
use conjure::schedules::{DdpmDiscrete, TimeInput};

const SHAPE: [usize; 3] = [1, 2, 3];
const S: [f64; 6] = [1.0, 0.0, 0.5, 1.0, 2.0, 0.0];
const MASK: [f64; 6] = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0];

/// A 0/1 mask operator that calls itself `inpaint` (the real one is written elsewhere).
#[derive(Debug)]
struct TestInpaint(Diagonal);

impl TestInpaint {
    fn op() -> OperatorRef {
        Arc::new(TestInpaint(Diagonal::new(img(SHAPE, &MASK)).unwrap()))
    }
}

impl LinearOperator for TestInpaint {
    fn name(&self) -> &'static str {
        "inpaint"
    }
    fn kind(&self) -> Option<OperatorKind> {
        Some(OperatorKind::Inpaint)
    }
    fn x_shape(&self) -> [usize; 3] {
        self.0.x_shape()
    }
    fn y_shape(&self) -> [usize; 3] {
        self.0.y_shape()
    }
    fn vt(&self, x: &Img) -> Img {
        self.0.vt(x)
    }
    fn v(&self, c: &Img) -> Img {
        self.0.v(c)
    }
    fn ut(&self, y: &Img) -> Img {
        self.0.ut(y)
    }
    fn u(&self, c: &Img) -> Img {
        self.0.u(c)
    }
    fn singulars(&self) -> &Img {
        self.0.singulars()
    }
}

fn continuous(steps: usize, w: f64, lambda: f64, tau: f64, eps_n: f64) -> Pigdm {
    let mut c = config(SamplerName::Pigdm, steps, w, lambda, tau, 0.001, eps_n);
    c.variant = Some("continuous".parse().unwrap());
    Pigdm::from_config(&c, &sched()).unwrap()
}

fn discrete(steps: usize, w: f64, eta: f64) -> Pigdm {
    let mut c = SamplerConfig::new(SamplerName::Pigdm);
    c.variant = Some("discrete".parse().unwrap());
    c.steps = Some(steps);
    c.guidance = Some(w);
    c.eta = Some(eta);
    Pigdm::from_config(&c, &sched()).unwrap()
}

fn toy(range_var: f64) -> (OperatorRef, Img, Img, Img) {
    let op = diag(SHAPE, &S);
    let mean = img(SHAPE, &[0.3, -0.2, 0.5, 0.1, -0.4, 0.2]);
    let var = op
        .singulars()
        .mapv(|s| if s != 0.0 { range_var } else { 1.0 });
    let x_true = &mean + &(&randn(SHAPE, 7) * &var.mapv(f64::sqrt));
    (op, mean, var, x_true)
}

// ---------------------------------------------------------------------------------------------------
// Continuous form (§6)

#[test]
fn defaults_and_variants() {
    let p = Pigdm::from_config(&SamplerConfig::new(SamplerName::Pigdm), &sched()).unwrap();
    assert_eq!(p.nfe(), 20);
    let t = p.times().unwrap();
    assert!((t[0] - 0.4).abs() < 1e-15 && (t[20] - 0.001).abs() < 1e-15);
    let d = discrete(20, 1.0, 1.0);
    assert_eq!(d.nfe(), 20);
    assert!(d.times().is_none() && d.continuous_phis().is_none());
    let mut c = SamplerConfig::new(SamplerName::Pigdm);
    c.variant = Some("noisy".parse().unwrap());
    let e = Pigdm::from_config(&c, &sched()).err().unwrap().to_string();
    assert!(e.contains("noisy") && e.contains("continuous"), "{e}");
    c.variant = Some("discrete".parse().unwrap());
    c.eta = Some(1.5);
    assert!(Pigdm::from_config(&c, &sched()).is_err());
}

#[test]
fn lambda_zero_phi_is_ddim_sigma_over_mu() {
    let vp = vp();
    for (steps, tau) in [(5, 0.4), (20, 0.9), (3, 0.05)] {
        let p = continuous(steps, 3.0, 0.0, tau, 0.0);
        let t = p.times().unwrap();
        for (k, phi) in p.continuous_phis().unwrap().iter().enumerate() {
            let want = vp.sigma(t[k + 1]) / vp.mu(t[k + 1]) - vp.sigma(t[k]) / vp.mu(t[k]);
            assert!((phi - want).abs() <= 1e-10 * want.abs(), "{phi} vs {want}");
        }
    }
}

#[test]
fn w_zero_is_lambda_ddim_with_the_right_start() {
    let (op, mean, var, x_true) = toy(2.0);
    let oracle = vp_oracle(mean, var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let vp = vp();
    let z = randn(SHAPE, 8);
    let inpaint = TestInpaint::op();
    for lambda in [0.0, 0.4] {
        let p = continuous(6, 0.0, lambda, 0.5, 1e-6);
        let t = p.times().unwrap();
        for op in [&op, &inpaint] {
            let out = p
                .sample(&net, &mut [problem(op, &x_true, &z, 0)])
                .unwrap()
                .remove(0);
            // Pure-noise start for inpainting, μ_τ H†y + σ_τ z otherwise.
            let x0 = if op.name() == "inpaint" {
                z.clone()
            } else {
                &op.pinv(&op.forward(&x_true)) * vp.mu(t[0]) + &(&z * vp.sigma(t[0]))
            };
            let want = lambda_ddim(&net, &vp, lambda, 1e-6, t, vec![x0])
                .unwrap()
                .remove(0);
            let err = max_abs_diff(&out, &want);
            assert!(err < 1e-12, "λ {lambda} {}: {err:e}", op.name());
        }
    }
}

fn pigdm_errors(range_var: f64, w: f64, lambda: f64, nfes: &[usize]) -> (Vec<f64>, f64) {
    let (op, mean, var, x_true) = toy(range_var);
    let oracle = vp_oracle(mean, var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let vp = vp();
    let z = randn(SHAPE, 9);
    let tau = 0.4;
    let hy = op.pinv(&op.forward(&x_true));
    let x0 = &hy * vp.mu(tau) + &(&z * vp.sigma(tau));
    // §6: dx/dt = −½β [x − ε/σ + w J_x̂₀ᵀ m] (w_t = w r_t²).
    let weight = move |_t: f64| w;
    let f = |t: f64, x: &Img| guided_rhs(&oracle, op.as_ref(), &hy, &weight, t, x);
    let reference = rk4(&f, &x0, tau, 0.001, 40_000);
    let errs = nfes
        .iter()
        .map(|&n| {
            let s = continuous(n, w, lambda, tau, 0.0);
            let out = s
                .sample(&net, &mut [problem(&op, &x_true, &z, 0)])
                .unwrap()
                .remove(0);
            norm(&(&out - &reference))
        })
        .collect();
    (errs, norm(&reference))
}

#[test]
fn continuous_converges_to_its_ode_at_first_order() {
    let nfes = [5, 10, 20, 50, 100, 200];
    for (range_var, w, lambda) in [(1.0, 1.0, 0.0), (1.0, 2.0, 0.3), (4.0, 0.5, 0.0)] {
        let (errs, scale) = pigdm_errors(range_var, w, lambda, &nfes);
        let slope = loglog_slope(&nfes, &errs);
        eprintln!(
            "var {range_var} w {w} λ {lambda}: errors {errs:?}, slope {slope:.3}, |ref| {scale:.3}"
        );
        assert!((-1.3..=-0.7).contains(&slope), "slope {slope}");
    }
}

#[test]
fn continuous_is_unstable_where_c_pigdm_is_not() {
    // Range variance 100, w = 15 (each against its own ODE at NFE 5): ΠGDM-cont's explicit guidance
    // step blows up, C-ΠGDM's conjugate step does not (§14.3 items 1–2).
    let (errs, scale) = pigdm_errors(100.0, 15.0, 0.0, &[5]);
    eprintln!("ΠGDM-cont NFE 5: error {:.3e}, |ref| {scale:.3}", errs[0]);
    assert!(errs[0] > 10.0 * scale, "{} vs {scale}", errs[0]);
    // C-ΠGDM on the same toy, same start, against its own reference.
    let (op, mean, var, x_true) = toy(100.0);
    let oracle = vp_oracle(mean, var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let vp = vp();
    let z = randn(SHAPE, 9);
    let hy = op.pinv(&op.forward(&x_true));
    let x0 = &hy * vp.mu(0.4) + &(&z * vp.sigma(0.4));
    let weight = move |t: f64| 15.0 * vp.mu(t).powi(2);
    let f = |t: f64, x: &Img| guided_rhs(&oracle, op.as_ref(), &hy, &weight, t, x);
    let reference = rk4(&f, &x0, 0.4, 0.001, 40_000);
    let c = CPigdm::from_config(
        &config(SamplerName::CPigdm, 5, 15.0, 0.0, 0.4, 0.001, 0.0),
        &sched(),
    )
    .unwrap();
    let out = c
        .sample(&net, &mut [problem(&op, &x_true, &z, 0)])
        .unwrap()
        .remove(0);
    let err = norm(&(&out - &reference)) / norm(&reference);
    assert!(err < 0.02, "C-ΠGDM relative error {err}");
}

// ---------------------------------------------------------------------------------------------------
// Discrete form (§8.1)

/// The DDPM-index oracle for N(mean, diag(var)).
fn ddpm_oracle(mean: Img, var: Img) -> GaussianDiffusion {
    let prior = GaussianPrior::new(Arc::new(IdentityBasis), mean, var).unwrap();
    let ddpm = DdpmDiscrete::linear(1e-4, 0.02, 1000).unwrap();
    GaussianDiffusion::new(prior, NoiseLevel::DdpmIndex(ddpm), Parameterization::Eps).unwrap()
}

#[allow(clippy::too_many_arguments)]
/// §8.1 with η = 0, coordinate by coordinate, with the Gaussian closed forms ε* = σ(x − μm)/C,
/// x̂₀ = m + μλ(x − μm)/C, J_x̂₀ = μλ/C (C = μ²λ + σ²).
fn discrete_reference(
    mean: &[f64],
    var: &[f64],
    s: &[f64],
    y: &[f64],
    z: &[f64],
    w: f64,
    steps: usize,
    inpaint: bool,
) -> Vec<f64> {
    let d = DdpmDiscrete::linear(1e-4, 0.02, 1000).unwrap();
    let ts: Vec<i64> = (0..steps).map(|i| (i * 1000 / steps) as i64).collect();
    (0..mean.len())
        .map(|i| {
            let hy = if s[i] != 0.0 { y[i] / s[i] } else { 0.0 };
            let a_top = d.alpha(*ts.last().unwrap());
            let mut x = a_top.sqrt() * hy + (1.0 - a_top).sqrt() * z[i];
            for j in (0..ts.len()).rev() {
                let a_t = d.alpha(ts[j]);
                let a_s = d.alpha(if j > 0 { ts[j - 1] } else { -1 });
                let (mu, sg) = (a_t.sqrt(), (1.0 - a_t).sqrt());
                let c = mu * mu * var[i] + sg * sg;
                let eps = sg * (x - mu * mean[i]) / c;
                let mut x0 = mean[i] + mu * var[i] * (x - mu * mean[i]) / c;
                let m = if s[i] != 0.0 { hy - x0 } else { 0.0 };
                let mut g = mu * var[i] / c * m;
                if inpaint && s[i] != 0.0 {
                    x0 += m;
                    g = 0.0;
                }
                x = a_s.sqrt() * x0 + (1.0 - a_s).sqrt() * eps + a_s.sqrt() * mu * w * g;
            }
            x
        })
        .collect()
}

#[test]
fn discrete_steps_match_closed_form_recursion() {
    let (op, mean, var, x_true) = toy(3.0);
    let oracle = ddpm_oracle(mean.clone(), var.clone());
    let net = eps_net(&oracle, TimeInput::Index { timesteps: 1000 });
    let z = randn(SHAPE, 10);
    let y = op.forward(&x_true);
    let v = |a: &Img| a.iter().copied().collect::<Vec<f64>>();
    for (steps, w) in [(1, 1.0), (2, 0.7), (10, 1.0), (50, 2.0)] {
        let p = discrete(steps, w, 0.0);
        let out = p
            .sample(&net, &mut [problem(&op, &x_true, &z, 0)])
            .unwrap()
            .remove(0);
        let want = discrete_reference(&v(&mean), &v(&var), &S, &v(&y), &v(&z), w, steps, false);
        let err = max_abs_diff(&out, &img(SHAPE, &want));
        assert!(err < 1e-11, "steps {steps} w {w}: {err:e}");
    }
}

#[test]
fn discrete_inpainting_is_data_consistent() {
    let inpaint = TestInpaint::op();
    let plain = diag(SHAPE, &MASK);
    let (_, mean, var, x_true) = toy(3.0);
    let oracle = ddpm_oracle(mean.clone(), var.clone());
    let net = eps_net(&oracle, TimeInput::Index { timesteps: 1000 });
    let z = randn(SHAPE, 12);
    let y = inpaint.forward(&x_true);
    let v = |a: &Img| a.iter().copied().collect::<Vec<f64>>();
    let p = discrete(10, 0.5, 0.0);
    let out_inp = p
        .sample(&net, &mut [problem(&inpaint, &x_true, &z, 0)])
        .unwrap()
        .remove(0);
    let want = discrete_reference(&v(&mean), &v(&var), &MASK, &v(&y), &v(&z), 0.5, 10, true);
    assert!(max_abs_diff(&out_inp, &img(SHAPE, &want)) < 1e-11);
    // Known pixels are restored exactly; without the inpainting rule they are not.
    assert!(max_abs_diff(&inpaint.forward(&out_inp), &y) < 1e-13);
    let out_plain = p
        .sample(&net, &mut [problem(&plain, &x_true, &z, 0)])
        .unwrap()
        .remove(0);
    let off = max_abs_diff(&plain.forward(&out_plain), &y);
    assert!(off > 1e-3, "{off:e}");
}

#[test]
fn discrete_network_times_are_the_uniform_grid() {
    let oracle = ddpm_oracle(Img::zeros(SHAPE), Img::ones(SHAPE));
    let rec = Recording {
        inner: &oracle,
        times: Mutex::new(vec![]),
    };
    let net = eps_net(&rec, TimeInput::Index { timesteps: 1000 });
    let (op, _, _, x_true) = toy(1.0);
    let p = discrete(5, 1.0, 1.0);
    p.sample(&net, &mut [problem(&op, &x_true, &randn(SHAPE, 1), 0)])
        .unwrap();
    let times = rec.times.lock().unwrap().clone();
    assert_eq!(
        times,
        vec![800.0, 800.0, 600.0, 600.0, 400.0, 400.0, 200.0, 200.0, 0.0, 0.0]
    );
}

// ---------------------------------------------------------------------------------------------------
// Batch independence

#[test]
fn batch_equals_each_problem_alone() {
    let oracle_c = vp_oracle(
        img(SHAPE, &[0.1; 6]),
        img(SHAPE, &[1.0, 4.0, 0.5, 2.0, 1.0, 3.0]),
    );
    let oracle_d = ddpm_oracle(
        img(SHAPE, &[0.1; 6]),
        img(SHAPE, &[1.0, 4.0, 0.5, 2.0, 1.0, 3.0]),
    );
    let net_c = eps_net(&oracle_c, TimeInput::Unit);
    let net_d = eps_net(&oracle_d, TimeInput::Index { timesteps: 1000 });
    let ops = [diag(SHAPE, &S), TestInpaint::op(), diag(SHAPE, &[1.0; 6])];
    let make = |i: usize| {
        let x = randn(SHAPE, 60 + i as u64);
        Problem::new(ops[i].clone(), ops[i].forward(&x), 0.0, 80 + i as u64).unwrap()
    };
    for (sampler, net) in [
        (
            Pigdm::from_config(&SamplerConfig::new(SamplerName::Pigdm), &sched()).unwrap(),
            &net_c,
        ),
        (discrete(20, 1.0, 1.0), &net_d),
    ] {
        let mut batch: Vec<Problem> = (0..3).map(make).collect();
        let together = sampler.sample(net, &mut batch).unwrap();
        for (i, t) in together.iter().enumerate() {
            let alone = sampler.sample(net, &mut [make(i)]).unwrap().remove(0);
            assert!(max_abs_diff(&alone, t) <= 1e-12, "problem {i}");
        }
        assert!(max_abs_diff(&together[0], &together[2]) > 1e-3);
    }
}
