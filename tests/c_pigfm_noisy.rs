//! The exact noisy C-ΠGFM (default variant when σ_y > 0) against independent references: the closed-form
//! transform exponent against quadrature, the coefficients against the noiseless sampler's at σ_y = 0,
//! first-order convergence to the noisy flow ODE built from dense matrices (RK4 reference), and the
//! σ_y → 0 limit.

mod common;
use common::numeric;

use std::sync::Arc;

use conjure::model::analytic::{GaussianFlow, GaussianPrior, IdentityBasis};
use conjure::model::{Denoiser, JacobianMode, ModelKind, Network, Parameterization};
use conjure::operators::{Degradation, Diagonal, Img, OperatorRef, DEFAULT_SVD_THRESHOLD};
use conjure::samplers::c_pigfm::CPigfm;
use conjure::samplers::c_pigfm_noisy::b_exponent;
use conjure::samplers::{ModelSchedule, Problem, Sampler, SamplerConfig, SamplerName};
use conjure::schedules::TimeInput;
use nalgebra::{DMatrix, DVector};
use ndarray::{Array3, Axis};
use numeric::{dense, loglog_slope, max_abs, noisy_start_dense, norm};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

fn randn(shape: [usize; 3], seed: u64) -> Img {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Array3::from_shape_simple_fn((shape[0], shape[1], shape[2]), || {
        StandardNormal.sample(&mut rng)
    })
}

fn sampler(steps: usize, w: f64, lambda: f64, st: f64, variant: &str) -> CPigfm {
    let mut c = SamplerConfig::new(SamplerName::CPigfm);
    c.steps = Some(steps);
    c.guidance = Some(w);
    c.lambda = Some(lambda);
    c.start_time = Some(st);
    c.variant = Some(variant.parse().unwrap());
    CPigfm::from_config(&c, &ModelSchedule::Flow).unwrap()
}

fn one(x: &Img) -> ndarray::Array4<f64> {
    x.clone().insert_axis(Axis(0))
}

/// dx/dt = v + w t(1 − t) r_t² J_{x̂₁}ᵀ Hᵀ(r_t² HHᵀ + σ_y² I)⁻¹(y − H x̂₁), r_t² = (1−t)²/(t² + (1−t)²),
/// J_{x̂₁}ᵀ u = u + (1 − t) J_vᵀ u, from dense matrices and the oracle's exact VJP.
fn noisy_flow_rhs(
    den: &dyn Denoiser,
    h: &DMatrix<f64>,
    y: &DVector<f64>,
    w: f64,
    sigma_y: f64,
    t: f64,
    x: &Img,
) -> Img {
    // The oracle's v = (x̂₁ − x)/(1 − t) is 0/0 at t = 1 (RK4's last stage): evaluate just before.
    let t = t.min(1.0 - 1e-7);
    let v = den
        .predict(one(x).view(), &[t])
        .unwrap()
        .index_axis_move(Axis(0), 0);
    let x1 = x + &(&v * (1.0 - t));
    let r2 = (1.0 - t).powi(2) / (t * t + (1.0 - t).powi(2));
    let x1v = DVector::from_iterator(x1.len(), x1.iter().copied());
    let cov = h * h.transpose() * r2 + DMatrix::identity(h.nrows(), h.nrows()) * sigma_y.powi(2);
    let u = cov.lu().solve(&(y - h * x1v)).unwrap();
    let hu =
        Img::from_shape_vec(x.raw_dim(), (h.transpose() * u).iter().copied().collect()).unwrap();
    let jv = den
        .vjp(one(x).view(), &[t], one(&hu).view())
        .unwrap()
        .1
        .index_axis_move(Axis(0), 0);
    let guided = &hu + &(&jv * (1.0 - t));
    &v + &(&guided * (w * t * (1.0 - t) * r2))
}

fn rk4(f: &dyn Fn(f64, &Img) -> Img, x0: &Img, t0: f64, t1: f64, n: usize) -> Img {
    let flat = |x: &Img| x.iter().copied().collect::<Vec<f64>>();
    let shape = x0.raw_dim();
    let g = |t: f64, v: &[f64]| flat(&f(t, &Img::from_shape_vec(shape, v.to_vec()).unwrap()));
    Img::from_shape_vec(shape, numeric::rk4(g, &flat(x0), t0, t1, n)).unwrap()
}

fn toys() -> Vec<(OperatorRef, Img, Img)> {
    let dshape = [1, 1, 5];
    let diag: OperatorRef = Arc::new(
        Diagonal::new(Img::from_shape_vec((1, 1, 5), vec![1.0, 0.5, 0.0, 0.1, 2.0]).unwrap())
            .unwrap(),
    );
    let bshape = [1, 8, 8];
    let bic = Degradation::SrBicubic {
        scale: 2,
        threshold: DEFAULT_SVD_THRESHOLD,
    }
    .build(bshape)
    .unwrap();
    vec![
        (
            diag,
            &randn(dshape, 1) * 0.3,
            Img::from_shape_vec((1, 1, 5), vec![4.0, 1.0, 1.0, 2.0, 0.5]).unwrap(),
        ),
        (bic, &randn(bshape, 2) * 0.3, Img::from_elem((1, 8, 8), 0.5)),
    ]
}

fn oracle(mean: &Img, var: &Img) -> GaussianFlow {
    let prior = GaussianPrior::new(Arc::new(IdentityBasis), mean.clone(), var.clone()).unwrap();
    GaussianFlow::new(prior, TimeInput::Unit, Parameterization::Velocity).unwrap()
}

fn problem(op: &OperatorRef, y: &Img, sy: f64, z: &Img) -> Problem {
    Problem::new(op.clone(), y.clone(), sy, 3)
        .unwrap()
        .with_init_noise(z.clone())
        .unwrap()
}

#[test]
fn transform_exponent_matches_quadrature() {
    // B(ρ, t) = ∫₀ᵗ u(1−u) κ_ρ(u) du, κ_ρ = (1−u)²/((1−u)² + ρ(u² + (1−u)²)), by composite Simpson.
    for rho in [0.0, 1e-6, 1e-3, 0.04, 1.0, 25.0, 1e4] {
        let f = |u: f64| {
            let d = (1.0 - u).powi(2);
            u * (1.0 - u)
                * if rho == 0.0 {
                    1.0
                } else {
                    d / (d + rho * (u * u + d))
                }
        };
        for t in [0.2, 0.6, 0.9, 1.0] {
            let n = 20_000;
            let h = t / n as f64;
            let want: f64 = (0..n)
                .map(|i| {
                    let a = i as f64 * h;
                    h / 6.0 * (f(a) + 4.0 * f(a + h / 2.0) + f(a + h))
                })
                .sum();
            let got = b_exponent(rho, t);
            assert!((got - want).abs() < 1e-12, "ρ {rho} t {t}: {got} vs {want}");
        }
    }
    assert_eq!(b_exponent(f64::INFINITY, 0.7), 0.0);
}

#[test]
fn zero_and_infinite_rho_coefficients_are_the_noiseless_ones() {
    for (w, lambda, st) in [(20.0, 0.2, 0.6), (40.0, 0.0, 0.2), (5.0, -0.5, 0.4)] {
        let s = sampler(5, w, lambda, st, "derived");
        let c0 = s.noisy().coefficients(0.0).unwrap();
        let ci = s.noisy().coefficients(f64::INFINITY).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-10 * b.abs().max(1e-3);
        for (i, c) in s.coefficients().iter().enumerate() {
            assert!(close(c0.phi_v[i], c.d_i1 + c.d_i2 - c.d_k1 - c.d_k2), "{i}");
            assert!(close(c0.phi_y[i], c.d_y1 + c.d_y2));
            assert!(close(c0.phi_j[i], c.d_k1 + c.d_k2));
            assert!(close(ci.phi_v[i], c.d_i1));
            assert_eq!(ci.phi_y[i], 0.0);
            assert!(close(ci.phi_j[i], c.d_k1));
        }
        for (i, &t) in s.grid().iter().enumerate() {
            assert!(close(c0.log_a[i], s.a(t) + s.b(t)));
            assert!(close(ci.log_a[i], s.a(t)));
        }
    }
}

#[test]
fn converges_to_its_noisy_ode_at_first_order() {
    let nfes = [5, 10, 20, 50, 100, 200];
    for ((op, mean, var), (w, lambda, st, sy)) in toys()
        .into_iter()
        .zip([(20.0, 0.2, 0.6, 0.1), (40.0, 0.0, 0.4, 0.05)])
    {
        let shape = op.x_shape();
        let den = oracle(&mean, &var);
        let net = Network::new(
            &den,
            ModelKind::Flow,
            Parameterization::Velocity,
            TimeInput::Unit,
            JacobianMode::Exact,
        );
        let x_true = &mean + &(&randn(shape, 5) * &var.mapv(f64::sqrt));
        let y = &op.forward(&x_true) + &(&randn(op.y_shape(), 6) * sy);
        let z = randn(shape, 7);
        let (h, yv) = (
            dense(op.as_ref()),
            DVector::from_iterator(y.len(), y.iter().copied()),
        );
        let x0 = noisy_start_dense(&h, &y, &z, st, 1.0 - st, sy);
        let reference = |ode_sy: f64| {
            let f = |t: f64, x: &Img| noisy_flow_rhs(&den, &h, &yv, w, ode_sy, t, x);
            rk4(&f, &x0, st, 1.0, 20_000)
        };
        let (want, doubled) = (reference(sy), reference(2.0 * sy));
        let errs: Vec<f64> = nfes
            .iter()
            .map(|&k| {
                let out = sampler(k, w, lambda, st, "auto")
                    .sample(&net, &mut [problem(&op, &y, sy, &z)])
                    .unwrap()
                    .remove(0);
                norm(&(&out - &want))
            })
            .collect();
        let slope = loglog_slope(&nfes, &errs);
        let gap = norm(&(&want - &doubled));
        eprintln!(
            "{}: errors {errs:?}, slope {slope:.3}, gap to the 2σ_y ODE {gap:e}",
            op.name()
        );
        assert!((-1.3..=-0.7).contains(&slope), "slope {slope}");
        // The noise is σ_y on the model scale: at 200 NFE the sampler is far closer to the σ_y ODE.
        assert!(errs[5] < 0.1 * gap, "{} vs {gap}", errs[5]);
    }
}

#[test]
fn zero_noise_is_the_noiseless_sampler_and_variants_choose_the_noise_model() {
    for (op, mean, var) in toys() {
        let shape = op.x_shape();
        let den = oracle(&mean, &var);
        let net = Network::new(
            &den,
            ModelKind::Flow,
            Parameterization::Velocity,
            TimeInput::Unit,
            JacobianMode::Exact,
        );
        let y = op.forward(&(&mean + &randn(shape, 8)));
        let z = randn(shape, 9);
        let run = |variant: &str, sy: f64, exact: bool| {
            let s = sampler(5, 20.0, 0.2, 0.6, variant);
            let mut p = [problem(&op, &y, sy, &z)];
            if exact {
                s.noisy().sample(&net, &mut p).unwrap().remove(0)
            } else {
                s.sample(&net, &mut p).unwrap().remove(0)
            }
        };
        let base = run("derived", 0.0, false);
        // The exact noisy integrator at σ_y = 0 is the noiseless one (in spectral coordinates).
        let d0 = max_abs(&run("derived", 0.0, true), &base) / norm(&base);
        assert!(d0 < 1e-9, "{d0:e}");
        let d: Vec<f64> = [1e-2, 1e-3, 1e-4]
            .iter()
            .map(|&sy| max_abs(&run("auto", sy, false), &base) / norm(&base))
            .collect();
        eprintln!("{}: σ_y → 0 differences {d:?}", op.name());
        assert!(
            d[0] > 1e-7 && d[1] < d[0] / 3.0 && d[2] < d[1] / 3.0,
            "{d:?}"
        );
        // derived = auto; noiseless and official ignore σ_y.
        assert_eq!(run("derived", 0.05, false), run("auto", 0.05, false));
        assert_eq!(run("noiseless", 0.05, false), base);
        assert_eq!(run("official", 0.05, false), run("official", 0.0, false));
    }
}
