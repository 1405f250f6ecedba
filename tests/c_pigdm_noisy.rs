//! The exact noisy C-ΠGDM (`variant: noisy`, and `auto` when σ_y > 0) against independent references:
//! its transform against quadrature of the ODE's linear part, its coefficients against the noiseless
//! sampler's at σ_y = 0, first-order convergence to the noisy ΠGDM ODE built from dense matrices
//! (Hᵀ(σ_t² HHᵀ + σ_y² I)⁻¹, RK4 reference), the σ_y → 0 and σ_y → ∞ limits, and batch independence.

mod common;

use common::cpigdm::*;
use common::numeric::{dense, noisy_start_dense};
use conjure::model::Denoiser;
use conjure::operators::{Degradation, Img, OperatorRef, DEFAULT_SVD_THRESHOLD};
use conjure::samplers::c_pigdm::CPigdm;
use conjure::samplers::c_pigdm_noisy::g_exponent;
use conjure::samplers::{Problem, Sampler, SamplerConfig, SamplerName};
use conjure::schedules::TimeInput;
use nalgebra::{DMatrix, DVector};

fn cpigdm(cfg: &SamplerConfig) -> CPigdm {
    CPigdm::from_config(cfg, &sched()).unwrap()
}

fn with_variant(mut c: SamplerConfig, v: &str) -> SamplerConfig {
    c.variant = Some(v.parse().unwrap());
    c
}

fn one(x: &Img) -> ndarray::Array4<f64> {
    x.clone().insert_axis(ndarray::Axis(0))
}

/// The noisy ΠGDM ODE with C-ΠGDM's weight w r_t² μ_t² (r_t = σ_t), from dense matrices:
///   dx/dt = −½β [ x − ε/σ + w μ² σ² J_{x̂₀}ᵀ Hᵀ(σ² HHᵀ + σ_y² I)⁻¹(y − H x̂₀) ],
/// with J_{x̂₀}ᵀ v = (v − σ J_εᵀ v)/μ through the oracle's exact VJP.
fn noisy_rhs(
    den: &dyn Denoiser,
    h: &DMatrix<f64>,
    y: &DVector<f64>,
    w: f64,
    sigma_y: f64,
    t: f64,
    x: &Img,
) -> Img {
    let vp = vp();
    let (mu, sigma, beta) = (vp.mu(t), vp.sigma(t), vp.beta(t));
    let eps = den
        .predict(one(x).view(), &[t])
        .unwrap()
        .index_axis_move(ndarray::Axis(0), 0);
    let x0 = (x - &(&eps * sigma)) / mu;
    let x0v = DVector::from_iterator(x0.len(), x0.iter().copied());
    let cov = h * h.transpose() * (sigma * sigma)
        + DMatrix::identity(h.nrows(), h.nrows()) * (sigma_y * sigma_y);
    let u = cov.lu().solve(&(y - h * x0v)).unwrap();
    let v =
        Img::from_shape_vec(x.raw_dim(), (h.transpose() * u).iter().copied().collect()).unwrap();
    let gv = den
        .vjp(one(x).view(), &[t], one(&v).view())
        .unwrap()
        .1
        .index_axis_move(ndarray::Axis(0), 0);
    let jv = (&v - &(&gv * sigma)) / mu;
    (x - &(&eps / sigma) + &(&jv * (w * mu * mu * sigma * sigma))) * (-0.5 * beta)
}

/// Diagonal toy: singular values 0 (null space), 0.05 (below the noise), 0.5, 1 and 2; prior variance 2 on
/// the measured coordinates, 1 elsewhere.
fn diag_toy() -> (OperatorRef, Img, Img) {
    let shape = [1, 2, 3];
    let op = diag(shape, &[1.0, 0.0, 0.5, 0.05, 2.0, 0.0]);
    let mean = img(shape, &[0.3, -0.2, 0.5, 0.1, -0.4, 0.2]);
    let var = op.singulars().mapv(|s| if s != 0.0 { 2.0 } else { 1.0 });
    (op, mean, var)
}

/// 2× bicubic downsampling of 8×8 images: a separable SVD with several distinct singular values.
fn bicubic_toy() -> (OperatorRef, Img, Img) {
    let shape = [1, 8, 8];
    let op = Degradation::SrBicubic {
        scale: 2,
        threshold: DEFAULT_SVD_THRESHOLD,
    }
    .build(shape)
    .unwrap();
    let mean = &randn(shape, 41) * 0.3;
    let var = Img::from_elem((1, 8, 8), 0.5);
    (op, mean, var)
}

fn noisy_problem(op: &OperatorRef, y: &Img, sigma_y: f64, z: &Img) -> Problem {
    Problem::new(op.clone(), y.clone(), sigma_y, 0)
        .unwrap()
        .with_init_noise(z.clone())
        .unwrap()
}

/// The sampler's outputs at each NFE and the RK4 solution of the ODE with noise `ode_sigma_y`, for
/// measurements with noise `sigma_y`.
#[allow(clippy::too_many_arguments)]
fn run_against_ode(
    toy: (OperatorRef, Img, Img),
    w: f64,
    lambda: f64,
    tau: f64,
    sigma_y: f64,
    ode_sigma_y: f64,
    nfes: &[usize],
    variant: &str,
) -> (Vec<Img>, Img) {
    let (op, mean, var) = toy;
    let shape = op.x_shape();
    let oracle = vp_oracle(mean.clone(), var.clone());
    let net = eps_net(&oracle, TimeInput::Unit);
    let vp = vp();
    let x_true = &mean + &(&randn(shape, 31) * &var.mapv(f64::sqrt));
    let n = randn(op.y_shape(), 33);
    let y = &op.forward(&x_true) + &(&n * sigma_y);
    let z = randn(shape, 32);
    let t_end = 0.001;
    let hmat = dense(op.as_ref());
    let yv = DVector::from_iterator(y.len(), y.iter().copied());
    let x0 = noisy_start_dense(&hmat, &y, &z, vp.mu(tau), vp.sigma(tau), sigma_y);
    let f = |t: f64, x: &Img| noisy_rhs(&oracle, &hmat, &yv, w, ode_sigma_y, t, x);
    let reference = rk4(&f, &x0, tau, t_end, 20_000);
    let outs = nfes
        .iter()
        .map(|&k| {
            let cfg = config(SamplerName::CPigdm, k, w, lambda, tau, t_end, 0.0);
            let s = cpigdm(&with_variant(cfg, variant));
            s.sample(&net, &mut [noisy_problem(&op, &y, sigma_y, &z)])
                .unwrap()
                .remove(0)
        })
        .collect();
    (outs, reference)
}

#[test]
fn transform_exponent_is_the_integral_of_the_linear_part() {
    // ln a_ρ(t) − ln a_ρ(t₀) = ∫_{t₀}^{t} (λ + ½β(u)(1 − w γ_ρ(u))) du, γ_ρ = σ²/(σ² + ρ), by composite
    // Simpson; and G(ρ, b) = b at ρ = 0, 0 at ρ = ∞.
    let vp = vp();
    let (w, lambda) = (15.0, 0.3);
    let s = cpigdm(&config(SamplerName::CPigdm, 5, w, lambda, 1.0, 0.001, 0.0));
    let nz = s.noisy();
    for rho in [0.0, 1e-6, 1e-3, 0.04, 1.0, 25.0, 1e6, f64::INFINITY] {
        let gamma = |u: f64| {
            if rho.is_infinite() {
                0.0
            } else {
                vp.sigma(u).powi(2) / (vp.sigma(u).powi(2) + rho)
            }
        };
        let f = |u: f64| lambda + 0.5 * vp.beta(u) * (1.0 - w * gamma(u));
        for (t0, t1) in [(0.001, 0.4), (0.05, 0.8), (0.3, 1.0)] {
            let n = 20_000;
            let h = (t1 - t0) / n as f64;
            let simpson: f64 = (0..n)
                .map(|i| {
                    let a = t0 + i as f64 * h;
                    h / 6.0 * (f(a) + 4.0 * f(a + h / 2.0) + f(a + h))
                })
                .sum();
            let got = nz.log_a(rho, t1) - nz.log_a(rho, t0);
            assert!(
                (got - simpson).abs() < 1e-9 * (1.0 + simpson.abs()),
                "ρ {rho} [{t0}, {t1}]: {got} vs {simpson}"
            );
        }
    }
    for b in [0.0, 0.01, 1.0, 10.0] {
        assert_eq!(g_exponent(0.0, b), b);
        assert_eq!(g_exponent(f64::INFINITY, b), 0.0);
        assert!((g_exponent(1e-300, b) - b).abs() < 1e-12);
    }
}

#[test]
fn zero_and_infinite_rho_coefficients_are_the_noiseless_ones() {
    // ρ = 0 (row space, σ_y = 0): ΔΦ_s = ΔΦ_s¹ + ΔΦ_s², ΔΦ_y = ΔΦ_y, ΔΦ_j = ΔΦ_j¹ + ΔΦ_j², a = e^{c1+c2};
    // ρ = ∞ (null space): ΔΦ_s¹, 0, ΔΦ_j¹, a = e^{c1}.
    for (w, lambda, tau) in [(15.0, 0.0, 0.4), (30.0, 0.5, 0.6), (4.0, -0.2, 1.0)] {
        let s = cpigdm(&config(SamplerName::CPigdm, 5, w, lambda, tau, 0.001, 1e-6));
        let (c0, ci) = (
            s.noisy().coefficients(0.0).unwrap(),
            s.noisy().coefficients(f64::INFINITY).unwrap(),
        );
        let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1e-300) + 1e-300;
        for (k, c) in s.coefficients().iter().enumerate() {
            assert!(
                close(c0.phi_s[k], c.phi_s_range),
                "{k}: {} {}",
                c0.phi_s[k],
                c.phi_s_range
            );
            assert!(close(c0.phi_y[k], c.phi_y));
            assert!(close(c0.phi_j[k], c.phi_j_range));
            assert!(close(ci.phi_s[k], c.phi_s1));
            assert_eq!(ci.phi_y[k], 0.0);
            assert!(close(ci.phi_j[k], c.phi_j1));
        }
        for k in 0..=5 {
            assert!(close(c0.log_a[k].exp(), s.exp_c1(k) * s.exp_c2(k)));
            assert!(close(ci.log_a[k].exp(), s.exp_c1(k)));
        }
    }
}

#[test]
fn converges_to_its_noisy_ode_at_first_order() {
    let nfes = [5, 10, 20, 50, 100, 200];
    let cases = [
        ("diag", 15.0, 0.0, 0.4, 0.05),
        ("diag", 15.0, 0.3, 0.6, 0.2),
        ("bicubic", 15.0, 0.0, 0.4, 0.05),
        ("bicubic", 30.0, 0.5, 0.6, 0.1),
    ];
    for (toy, w, lambda, tau, sy) in cases {
        let t = if toy == "diag" {
            diag_toy()
        } else {
            bicubic_toy()
        };
        let (outs, reference) = run_against_ode(t, w, lambda, tau, sy, sy, &nfes, "noisy");
        let errs: Vec<f64> = outs.iter().map(|o| norm(&(o - &reference))).collect();
        let slope = loglog_slope(&nfes, &errs);
        eprintln!("{toy} w {w} λ {lambda} τ {tau} σ_y {sy}: errors {errs:?}, slope {slope:.3}");
        assert!((-1.3..=-0.7).contains(&slope), "slope {slope}");
        assert!(errs[5] < 0.02 * norm(&reference), "{errs:?}");
    }
}

#[test]
fn the_start_has_the_forward_process_law_given_the_clean_image() {
    // Denoising: μ_τ y already holds noise of std μ_τσ_y, so x_τ − μ_τx must have std σ_τ (the forward
    // process's), not √(σ_τ² + μ_τ²σ_y²) as adding σ_τz on top would give (+33 % variance at τ = 0.05).
    let shape = [1, 128, 128];
    let op = Degradation::Denoise.build(shape).unwrap();
    let vp = vp();
    let (tau, sy) = (0.05, 0.1);
    let (mu, sigma) = (vp.mu(tau), vp.sigma(tau));
    let x = &randn(shape, 51) * 0.4;
    let y = &x + &(&randn(shape, 52) * sy);
    let z = randn(shape, 53);
    // x_τ = V(spectral start), from y, z, μ_τ and σ_τ.
    let start = |op: &OperatorRef, y: &Img, z: &Img, mu: f64, sigma: f64| {
        let yhat = op.vt(&op.pinv(y));
        op.v(&conjure::samplers::spectral::start(
            op.as_ref(),
            sy,
            &yhat,
            z,
            mu,
            sigma,
        ))
    };
    let x0 = start(&op, &y, &z, mu, sigma);
    let r = &x0 - &(&x * mu);
    let var = r.iter().map(|v| v * v).sum::<f64>() / r.len() as f64;
    eprintln!(
        "start noise variance {var:.5}, σ_τ² {:.5}, μ²σ_y² {:.5}",
        sigma * sigma,
        (mu * sy).powi(2)
    );
    assert!(
        (var / (sigma * sigma) - 1.0).abs() < 0.04,
        "{var} vs {}",
        sigma * sigma
    );
    // Below the noise (τ where σ_τ < μ_τσ_y) no fresh noise is added: the start is μ_τ y.
    let (mu, sigma) = (vp.mu(0.01), vp.sigma(0.01));
    assert!(sigma < mu * sy);
    let x0 = start(&op, &y, &z, mu, sigma);
    assert!(max_abs_diff(&x0, &(&y * mu)) < 1e-12);
    // The dense reference agrees on an operator with a null space and several singular values.
    let (op, _, _) = bicubic_toy();
    let y = op.forward(&randn(op.x_shape(), 54));
    let z = randn(op.x_shape(), 55);
    let (mu, sigma) = (vp.mu(0.3), vp.sigma(0.3));
    let got = start(&op, &y, &z, mu, sigma);
    let want = noisy_start_dense(&dense(op.as_ref()), &y, &z, mu, sigma, sy);
    assert!(
        max_abs_diff(&got, &want) < 1e-9 * norm(&want),
        "{}",
        max_abs_diff(&got, &want)
    );
}

#[test]
fn the_noise_is_sigma_y_on_the_model_scale_not_doubled() {
    // With y = Hx + σ_y n the sampler (given σ_y) approaches the ODE with σ_y, not with 2σ_y.
    let nfes = [400];
    let sy = 0.1;
    let (outs, ref1) = run_against_ode(bicubic_toy(), 15.0, 0.0, 0.4, sy, sy, &nfes, "noisy");
    let (_, ref2) = run_against_ode(bicubic_toy(), 15.0, 0.0, 0.4, sy, 2.0 * sy, &nfes, "noisy");
    let (e1, e2) = (norm(&(&outs[0] - &ref1)), norm(&(&outs[0] - &ref2)));
    eprintln!("error to the σ_y ODE {e1:e}, to the 2σ_y ODE {e2:e}");
    assert!(e1 < 0.05 * e2, "{e1} vs {e2}");
}

#[test]
fn small_noise_limit_is_the_noiseless_sampler() {
    for toy in [diag_toy(), bicubic_toy()] {
        let (op, mean, var) = toy;
        let shape = op.x_shape();
        let oracle = vp_oracle(mean.clone(), var.clone());
        let net = eps_net(&oracle, TimeInput::Unit);
        let x_true = &mean + &(&randn(shape, 31) * &var.mapv(f64::sqrt));
        let y = op.forward(&x_true);
        let z = randn(shape, 32);
        let cfg = config(SamplerName::CPigdm, 5, 15.0, 0.2, 0.6, 0.001, 1e-6);
        let run = |variant: &str, sy: f64| {
            cpigdm(&with_variant(cfg.clone(), variant))
                .sample(&net, &mut [noisy_problem(&op, &y, sy, &z)])
                .unwrap()
                .remove(0)
        };
        let base = run("noiseless", 0.0);
        // σ_y = 0: the same integrator (in spectral coordinates instead of the range/null-space split).
        let d0 = max_abs_diff(&run("noisy", 0.0), &base) / norm(&base);
        assert!(d0 < 1e-9, "σ_y = 0: {d0:e}");
        // σ_y → 0: the difference vanishes (γ = σ²/(σ² + ρ) → 1, ρ = σ_y²/s²).
        let d: Vec<f64> = [1e-2, 1e-3, 1e-4]
            .iter()
            .map(|&sy| max_abs_diff(&run("noisy", sy), &base) / norm(&base))
            .collect();
        eprintln!("σ_y → 0: relative differences {d:?}");
        assert!(
            d[0] > 1e-7 && d[1] < d[0] / 5.0 && d[2] < d[1] / 5.0,
            "{d:?}"
        );
        // auto runs the exact noisy form when σ_y > 0 and the noiseless one at σ_y = 0.
        assert_eq!(run("auto", 1e-2), run("noisy", 1e-2));
        assert_eq!(run("auto", 0.0), base);
    }
}

#[test]
fn infinite_noise_limit_ignores_the_measurement() {
    // σ_y → ∞: γ → 0, the guidance vanishes and the sampler is C-ΠGDM with w = 0 (λ-DDIM) from the same
    // start (which keeps H†y and adds no fresh noise on the measured directions, whose noise already
    // exceeds σ_τ: see the start test).
    let (op, mean, var) = bicubic_toy();
    let shape = op.x_shape();
    let oracle = vp_oracle(mean.clone(), var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let y = op.forward(&mean);
    let z = randn(shape, 32);
    let run = |w: f64, variant: &str, sy: f64| {
        let cfg = config(SamplerName::CPigdm, 5, w, 0.2, 0.4, 0.001, 1e-6);
        cpigdm(&with_variant(cfg, variant))
            .sample(&net, &mut [noisy_problem(&op, &y, sy, &z)])
            .unwrap()
            .remove(0)
    };
    let free = run(0.0, "noisy", 1e7);
    let d = max_abs_diff(&run(15.0, "noisy", 1e7), &free) / norm(&free);
    assert!(d < 1e-9, "{d:e}");
    assert!(max_abs_diff(&run(15.0, "noisy", 0.05), &free) / norm(&free) > 1e-3);
}

#[test]
fn stays_finite_where_the_official_inverse_is_invalid() {
    // The published w = 15, τ = 0.4 with σ_y = 0.05: the official first-order inverse is far outside its
    // range of validity; the exact form stays close to its ODE at 5 NFE.
    let (outs, reference) =
        run_against_ode(bicubic_toy(), 15.0, 0.0, 0.4, 0.05, 0.05, &[5], "noisy");
    let s = cpigdm(&with_variant(
        config(SamplerName::CPigdm, 5, 15.0, 0.0, 0.4, 0.001, 1e-6),
        "official",
    ));
    let ratio = s.noisy_inverse_ratio(bicubic_toy().0.as_ref(), 0.05);
    let rel = norm(&(&outs[0] - &reference)) / norm(&reference);
    eprintln!("official inverse ratio {ratio:e}; exact form at 5 NFE: relative error {rel:e}");
    assert!(ratio > 1e3, "{ratio}");
    assert!(rel < 0.2, "{rel}");
}

#[test]
fn batch_with_mixed_noise_equals_each_problem_alone_and_tables_are_shared() {
    let (op, mean, var) = bicubic_toy();
    let shape = op.x_shape();
    let oracle = vp_oracle(mean.clone(), var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let s = cpigdm(&config(SamplerName::CPigdm, 5, 15.0, 0.0, 0.4, 0.001, 1e-6));
    let sys = [0.05, 0.0, 0.1, 0.05];
    let ys: Vec<Img> = (0..4)
        .map(|i| {
            &op.forward(&(&mean + &randn(shape, 50 + i)))
                + &(&randn(op.y_shape(), 60 + i) * sys[i as usize])
        })
        .collect();
    let zs: Vec<Img> = (0..4).map(|i| randn(shape, 70 + i)).collect();
    let mut batch: Vec<Problem> = (0..4)
        .map(|i| noisy_problem(&op, &ys[i], sys[i], &zs[i]))
        .collect();
    let together = s.sample(&net, &mut batch).unwrap();
    let distinct = |sy: f64| {
        let mut v: Vec<u64> = op
            .singulars()
            .iter()
            .map(|&x| conjure::samplers::spectral::rho(sy, x).to_bits())
            .collect();
        v.sort();
        v.dedup();
        v.len()
    };
    // One table per distinct ρ = σ_y²/s² of the three noise levels, computed once.
    let want = distinct(0.05) + distinct(0.0) + distinct(0.1) - 2; // ρ = ∞ (s = 0) is shared
    assert_eq!(s.noisy().distinct_rho(), want);
    for i in 0..4 {
        let alone = s
            .sample(&net, &mut [noisy_problem(&op, &ys[i], sys[i], &zs[i])])
            .unwrap()
            .remove(0);
        let d = max_abs_diff(&together[i], &alone) / norm(&alone);
        assert!(d < 1e-9, "problem {i}: {d:e}");
    }
    assert_eq!(s.noisy().distinct_rho(), want);
}
