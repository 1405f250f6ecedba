//! ΠGFM (docs/samplers.md §10) against independent references: the w = 0 Euler reduction, one hand-computed
//! step with frozen network outputs, first-order convergence to its own ODE on a Gaussian toy (RK4
//! reference from closed-form velocities), batch independence, and its configuration.

mod common;
use common::numeric;

use std::sync::{Arc, Mutex};

use conjure::model::analytic::{GaussianFlow, GaussianPrior, IdentityBasis};
use conjure::model::{Denoiser, JacobianMode, ModelKind, Network, Parameterization};
use conjure::operators::{Diagonal, Img, OperatorRef};
use conjure::samplers::pigfm::{Pigfm, PigfmParams};
use conjure::samplers::{self, ModelSchedule, Problem, Sampler, SamplerConfig, SamplerName};
use conjure::schedules::TimeInput;
use conjure::Result;
use ndarray::{Array3, Array4, ArrayView4, Axis};
use numeric::{loglog_slope, max_abs, norm, rk4};

// ---------------------------------------------------------------------------------------------------------
// helpers

fn img(v: &[f64]) -> Img {
    Array3::from_shape_vec((1, 1, v.len()), v.to_vec()).unwrap()
}

fn pigfm(steps: usize, w: f64, st: f64) -> Pigfm {
    Pigfm::new(PigfmParams {
        steps,
        w,
        start_time: st,
    })
    .unwrap()
}

/// Frozen outputs: v ≡ v₀ and (∂v/∂x)ᵀ m ≡ g₀; records the network times.
struct Frozen {
    v0: Img,
    g0: Img,
    times: Mutex<Vec<f64>>,
}

impl Frozen {
    fn batch(&self, a: &Img, n: usize) -> Array4<f64> {
        let views: Vec<_> = (0..n).map(|_| a.view()).collect();
        ndarray::stack(Axis(0), &views).unwrap()
    }
}

impl Denoiser for Frozen {
    fn engine(&self) -> String {
        "frozen".into()
    }
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        self.times.lock().unwrap().extend_from_slice(t);
        Ok(self.batch(&self.v0, x.shape()[0]))
    }
    fn has_vjp(&self) -> bool {
        true
    }
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        _cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        self.times.lock().unwrap().extend_from_slice(t);
        let n = x.shape()[0];
        Ok((self.batch(&self.v0, n), self.batch(&self.g0, n)))
    }
}

fn flow_net(d: &dyn Denoiser, param: Parameterization) -> Network<'_> {
    Network::new(
        d,
        ModelKind::Flow,
        param,
        TimeInput::Unit,
        JacobianMode::Exact,
    )
}

fn diag(s: &[f64]) -> OperatorRef {
    Arc::new(Diagonal::new(img(s)).unwrap())
}

fn problem(op: &OperatorRef, x_true: &[f64], z: &[f64]) -> Problem {
    let y = op.forward(&img(x_true));
    Problem::new(op.clone(), y, 0.0, 11)
        .unwrap()
        .with_init_noise(img(z))
        .unwrap()
}

fn run(s: &dyn Sampler, net: &Network, problems: Vec<Problem>) -> Vec<Img> {
    let mut problems = problems;
    s.sample(net, &mut problems).unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// reductions

#[test]
fn w0_is_euler() {
    let op = diag(&[1.0, 0.0, 0.5]);
    let prior = GaussianPrior::new(
        Arc::new(IdentityBasis),
        img(&[0.1, 0.2, -0.3]),
        img(&[1.0, 2.0, 0.5]),
    )
    .unwrap();
    let oracle = GaussianFlow::new(prior, TimeInput::Unit, Parameterization::Velocity).unwrap();
    let net = flow_net(&oracle, Parameterization::Velocity);
    let (x_true, z) = ([0.5, -0.7, 1.2], [1.1, 0.3, -0.8]);
    let (k, st) = (7, 0.3);
    let out = run(&pigfm(k, 0.0, st), &net, vec![problem(&op, &x_true, &z)]);
    let p = problem(&op, &x_true, &z);
    let mut x = op.pinv(&p.y) * st + &(img(&z) * (1.0 - st));
    let delta = (1.0 - st) / k as f64;
    for i in 0..k {
        let t = st + i as f64 * delta;
        let v = &net.velocity(std::slice::from_ref(&x), t).unwrap()[0];
        x = &x + &(v * delta);
    }
    assert!(max_abs(&out[0], &x) < 1e-12 * (1.0 + norm(&x)));
}

/// One step with frozen v₀, g₀ = J_vᵀ m, by hand from §10:
/// x₁ = x₀ + Δ [v₀ + w (t² + (1 − t)²)/(t(1 − t)) (m + (1 − t) g₀)], m = H†y − P(x₀ + (1 − t) v₀).
#[test]
fn one_frozen_step_by_hand() {
    let s_diag = [2.0, 0.0, 1.0];
    let op = diag(&s_diag);
    let (v0, g0) = ([0.4, -0.2, 0.9], [0.3, 0.8, -0.6]);
    let frozen = Frozen {
        v0: img(&v0),
        g0: img(&g0),
        times: Mutex::new(Vec::new()),
    };
    let net = flow_net(&frozen, Parameterization::Velocity);
    let (x_true, z) = ([0.7, 0.1, -0.5], [-0.3, 1.0, 0.6]);
    for (w, st) in [(1.0, 0.6), (3.5, 0.25)] {
        let out = run(&pigfm(1, w, st), &net, vec![problem(&op, &x_true, &z)]);
        let t = st;
        let delta = 1.0 - st;
        let weight = w * (t * t + (1.0 - t) * (1.0 - t)) / (t * (1.0 - t));
        let want: Vec<f64> = (0..3)
            .map(|j| {
                let measured = s_diag[j] != 0.0;
                let hy = if measured { x_true[j] } else { 0.0 };
                let x0 = st * hy + (1.0 - st) * z[j];
                let px1 = if measured {
                    x0 + (1.0 - t) * v0[j]
                } else {
                    0.0
                };
                let m = hy - px1;
                x0 + delta * (v0[j] + weight * (m + (1.0 - t) * g0[j]))
            })
            .collect();
        assert!(max_abs(&out[0], &img(&want)) < 1e-14, "w {w}, st {st}");
    }
    // The network is called at st only (one step), never at 0 or 1.
    let times = frozen.times.lock().unwrap().clone();
    assert_eq!(times, vec![0.6, 0.6, 0.25, 0.25]);
}

// ---------------------------------------------------------------------------------------------------------
// Gaussian toy: convergence to the §10 ODE

/// Data x₁ ~ N(mean, diag(var)), H = diag(s). With S = t² l + (1 − t)²: v = [m(1 − t) + x(t l − 1 + t)]/S
/// and J_x̂₁ = t l / S.
struct Toy {
    s: Vec<f64>,
    mean: Vec<f64>,
    var: Vec<f64>,
    x_true: Vec<f64>,
    z: Vec<f64>,
}

impl Toy {
    fn new() -> Self {
        Toy {
            s: vec![1.0, 0.5, 0.0, 0.0],
            mean: vec![0.3, -0.2, 0.1, 0.4],
            var: vec![4.0, 1.0, 1.0, 2.0],
            x_true: vec![1.7, -0.6, 0.5, -1.0],
            z: vec![0.8, -1.1, 0.6, -0.3],
        }
    }
    fn oracle(&self) -> GaussianFlow {
        let prior =
            GaussianPrior::new(Arc::new(IdentityBasis), img(&self.mean), img(&self.var)).unwrap();
        GaussianFlow::new(prior, TimeInput::Unit, Parameterization::Velocity).unwrap()
    }
    fn problem(&self) -> Problem {
        problem(&diag(&self.s), &self.x_true, &self.z)
    }
    fn hy(&self) -> Vec<f64> {
        self.s
            .iter()
            .zip(&self.x_true)
            .map(|(&s, &x)| if s != 0.0 { x } else { 0.0 })
            .collect()
    }
    /// RK4 solution at t = 1 of dx/dt = v + w (t² + (1 − t)²)/(t(1 − t)) J_x̂₁ᵀ m. The weight diverges at
    /// t = 1, so integrate in u = −ln(1 − t) (dt = (1 − t) du), up to 1 − t = 1e-10.
    fn reference(&self, w: f64, st: f64) -> Img {
        let hy = self.hy();
        let f = |u: f64, x: &[f64]| -> Vec<f64> {
            let one_minus_t = (-u).exp();
            let t = 1.0 - one_minus_t;
            (0..x.len())
                .map(|j| {
                    let (m, l) = (self.mean[j], self.var[j]);
                    let s = t * t * l + one_minus_t * one_minus_t;
                    let v = (m * one_minus_t + x[j] * (t * l - one_minus_t)) / s;
                    let p = f64::from(self.s[j] != 0.0);
                    let mm = hy[j] - p * (x[j] + one_minus_t * v);
                    let jx1 = t * l / s;
                    // (1 − t) · dx/dt
                    one_minus_t * v + w * (t * t + one_minus_t * one_minus_t) / t * jx1 * mm
                })
                .collect()
        };
        let x0: Vec<f64> = (0..hy.len())
            .map(|j| st * hy[j] + (1.0 - st) * self.z[j])
            .collect();
        let (u0, u1) = (-(1.0 - st).ln(), -(1e-10f64).ln());
        img(&rk4(f, &x0, u0, u1, 40_000))
    }
}

#[test]
fn gaussian_toy_converges_to_its_ode() {
    let toy = Toy::new();
    let oracle = toy.oracle();
    let net = flow_net(&oracle, Parameterization::Velocity);
    for (w, st) in [(1.0, 0.6), (2.0, 0.4)] {
        let reference = toy.reference(w, st);
        let nfes = [5, 10, 20, 50, 100, 200];
        let errs: Vec<f64> = nfes
            .iter()
            .map(|&k| {
                max_abs(
                    &run(&pigfm(k, w, st), &net, vec![toy.problem()])[0],
                    &reference,
                )
            })
            .collect();
        let slope = loglog_slope(&nfes, &errs);
        eprintln!("w {w}, st {st}: errors {errs:?}, slope {slope:.3}");
        assert!(
            (-1.3..=-0.7).contains(&slope),
            "slope {slope}, errors {errs:?}"
        );
        assert!(errs[5] < 5e-3, "{errs:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// batches and configuration

#[test]
fn batch_of_three_equals_each_alone() {
    let toy = Toy::new();
    let oracle = toy.oracle();
    let net = flow_net(&oracle, Parameterization::Velocity);
    let make = |i: usize| -> Problem {
        let ops = [
            [1.0, 0.0, 0.5, 0.0],
            [0.0, 2.0, 0.0, 1.0],
            [1.0, 1.0, 1.0, 0.0],
        ];
        let op = diag(&ops[i]);
        let x = [0.3 * i as f64, -0.5, 1.0, 0.2 + i as f64];
        Problem::new(op.clone(), op.forward(&img(&x)), 0.0, 200 + i as u64).unwrap()
    };
    let s = pigfm(6, 1.0, 0.6);
    let batch = run(&s, &net, (0..3).map(make).collect());
    for (i, b) in batch.iter().enumerate() {
        let alone = &run(&s, &net, vec![make(i)])[0];
        assert!(max_abs(b, alone) < 1e-14, "sample {i}");
    }
    assert!(max_abs(&batch[0], &batch[1]) > 1e-3);
}

#[test]
fn config_defaults_and_errors() {
    let flow = ModelSchedule::Flow;
    let cfg = SamplerConfig::new(SamplerName::Pigfm);
    let s = Pigfm::from_config(&cfg, &flow).unwrap();
    assert_eq!(
        *s.params(),
        PigfmParams {
            steps: 5,
            w: 1.0,
            start_time: 0.6
        }
    );
    assert_eq!(s.grid().len(), 6);
    assert_eq!(s.name(), "pigfm");
    assert_eq!(samplers::build(&cfg, &flow).unwrap().nfe(), 5);
    assert!((s.weight(0.5) - 2.0).abs() < 1e-15);

    let err = |f: &dyn Fn(&mut SamplerConfig)| -> String {
        let mut cfg = SamplerConfig::new(SamplerName::Pigfm);
        f(&mut cfg);
        match Pigfm::from_config(&cfg, &flow) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.to_string(),
        }
    };
    assert!(err(&|c| c.steps = Some(0)).contains("steps 0"));
    assert!(err(&|c| c.start_time = Some(1.5)).contains("start_time 1.5"));
    assert!(err(&|c| c.lambda = Some(0.2)).contains("lambda 0.2"));
    assert!(err(&|c| c.variant = Some("official".parse().unwrap())).contains("official"));
    assert!(err(&|c| c.num_eps = Some(1e-6)).contains("num_eps"));
    let mut cfg = SamplerConfig::new(SamplerName::Pigfm);
    cfg.lambda = Some(0.0);
    assert!(Pigfm::from_config(&cfg, &flow).is_ok());
    assert!(Pigfm::from_config(&cfg, &ModelSchedule::ddpm_linear_default()).is_err());
}
