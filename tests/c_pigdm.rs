//! C-ΠGDM (docs/samplers.md §4, §5): coefficient tables, closed forms, reductions, the exponential-integrator
//! property, first-order convergence to its own ODE on Gaussian toys, stability, the noisy transform's
//! inverse, and batch independence.

mod common;

use std::sync::Mutex;

use common::cpigdm::*;
use conjure::operators::{Img, OperatorRef};
use conjure::samplers::c_pigdm::CPigdm;
use conjure::samplers::ddim::lambda_ddim;
use conjure::samplers::{Problem, Sampler, SamplerConfig, SamplerName};
use conjure::schedules::TimeInput;

const SHAPE: [usize; 3] = [1, 2, 3];

fn cpigdm(cfg: &SamplerConfig) -> CPigdm {
    CPigdm::from_config(cfg, &sched()).unwrap()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

// ---------------------------------------------------------------------------------------------------
// Tables and closed forms (§4.5, §4.6, §14.2 items 5–6)

#[test]
fn defaults_match_readme_configuration() {
    let s = cpigdm(&SamplerConfig::new(SamplerName::CPigdm));
    assert_eq!(s.nfe(), 5);
    assert_eq!(s.params(), (15.0, 0.0, 1e-6));
    let t = s.times();
    assert_eq!(t.len(), 6);
    assert!((t[0] - 0.4).abs() < 1e-15 && (t[5] - 0.001).abs() < 1e-15);
}

#[test]
fn grid_schedule_and_phis_match_section_4_6_tables() {
    let s = cpigdm(&SamplerConfig::new(SamplerName::CPigdm));
    let vp = vp();
    // k, t_k, μ, σ, e^{c1}, e^{c2}
    let grid = [
        (0.4000, 0.442197, 0.896918, 2.261436, 4.833209e-06),
        (0.3202, 0.590913, 0.806736, 1.692297, 3.739812e-04),
        (0.2404, 0.741162, 0.671326, 1.349233, 1.118659e-02),
        (0.1606, 0.872540, 0.488543, 1.146080, 1.293537e-01),
        (0.0808, 0.964139, 0.265398, 1.037195, 5.782206e-01),
        (0.0010, 0.999945, 0.010485, 1.000055, 9.991757e-01),
    ];
    for (k, &(t, mu, sigma, ec1, ec2)) in grid.iter().enumerate() {
        let tk = s.times()[k];
        assert!((tk - t).abs() < 1e-12, "t_{k} = {tk}");
        assert!((vp.mu(tk) - mu).abs() <= 5e-7, "μ_{k}");
        assert!((vp.sigma(tk) - sigma).abs() <= 5e-7, "σ_{k}");
        assert!(rel(s.exp_c1(k), ec1) <= 1e-6, "e^c1_{k} = {}", s.exp_c1(k));
        assert!(rel(s.exp_c2(k), ec2) <= 1e-6, "e^c2_{k} = {}", s.exp_c2(k));
    }
    let ti = TimeInput::Index { timesteps: 1000 };
    let idx: Vec<f64> = s.times()[..5]
        .iter()
        .map(|&t| ti.diffusion_continuous(t))
        .collect();
    assert_eq!(idx, vec![399.0, 319.0, 240.0, 160.0, 80.0]);

    let table = [
        [
            3.69148008e-04,
            -6.63085463e-01,
            6.63586233e-01,
            -3.72659020e+00,
            3.72628362e+00,
        ],
        [
            1.08126043e-02,
            -4.59460612e-01,
            4.69082573e-01,
            -2.53568801e+00,
            2.52798042e+00,
        ],
        [
            1.18167102e-01,
            -3.45865442e-01,
            4.08159252e-01,
            -1.44338209e+00,
            1.37777823e+00,
        ],
        [
            4.48866949e-01,
            -2.84638432e-01,
            3.71379136e-01,
            -5.86397790e-01,
            4.22613586e-01,
        ],
        [
            4.20955079e-01,
            -2.64780648e-01,
            1.16094282e-01,
            -9.76231194e-02,
            2.65615611e-02,
        ],
    ];
    for (k, (c, want)) in s.coefficients().iter().zip(&table).enumerate() {
        let got = [c.phi_y, c.phi_s1, c.phi_s2, c.phi_j1, c.phi_j2];
        for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                rel(g, w) <= 1e-6,
                "step {k} coefficient {j}: {g:e} vs {w:e}"
            );
        }
        assert!((c.ds - 0.0798).abs() < 1e-12);
    }
}

#[test]
fn network_sees_indices_399_319_240_160_80() {
    let oracle = vp_oracle(Img::zeros(SHAPE), Img::ones(SHAPE));
    // The oracle reads t as a VP time; only the recorded inputs matter here.
    let rec = Recording {
        inner: &oracle,
        times: Mutex::new(vec![]),
    };
    let net = eps_net(&rec, TimeInput::Index { timesteps: 1000 });
    let op = diag(SHAPE, &[1.0, 0.0, 0.5, 1.0, 2.0, 0.0]);
    let s = cpigdm(&SamplerConfig::new(SamplerName::CPigdm));
    let mut p = [problem(&op, &randn(SHAPE, 1), &randn(SHAPE, 2), 0)];
    s.sample(&net, &mut p).unwrap();
    let times = rec.times.lock().unwrap().clone();
    // One forward and one VJP per step.
    assert_eq!(
        times,
        vec![399.0, 399.0, 319.0, 319.0, 240.0, 240.0, 160.0, 160.0, 80.0, 80.0]
    );
    assert_eq!((net.forwards(), net.vjps()), (5, 5));
}

#[test]
fn lambda_zero_phis_match_closed_forms() {
    let vp = vp();
    for &w in &[0.5, 4.0, 15.0] {
        for &(tau, steps) in &[(0.4, 5), (0.9, 7), (0.15, 3)] {
            let s = cpigdm(&config(SamplerName::CPigdm, steps, w, 0.0, tau, 0.001, 0.0));
            let t = s.times();
            let kappa = |t: f64| (-0.5 * w * vp.b(t)).exp();
            let s_over_m = |t: f64| vp.sigma(t) / vp.mu(t);
            let j1 = |t: f64| {
                let sg = vp.sigma(t);
                0.5 * w * (2.0 * sg.atanh() - 2.0 * sg)
            };
            for (k, c) in s.coefficients().iter().enumerate() {
                let (a, b) = (t[k], t[k + 1]);
                let close = |got: f64, want: f64, what: &str| {
                    assert!(
                        (got - want).abs() <= 1e-10 * want.abs().max(1.0),
                        "w {w} τ {tau} step {k} {what}: {got:e} vs {want:e}"
                    )
                };
                close(c.phi_s1, s_over_m(b) - s_over_m(a), "Φ_s¹");
                close(
                    c.phi_s1 + c.phi_s2,
                    kappa(b) * s_over_m(b) - kappa(a) * s_over_m(a),
                    "Φ_s¹ + Φ_s²",
                );
                close(c.phi_y, kappa(b) - kappa(a), "Φ_y");
                close(c.phi_j1, j1(b) - j1(a), "Φ_j¹");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Reductions (§14.2 item 7)

fn toy() -> (OperatorRef, Img, Img, Img) {
    let op = diag(SHAPE, &[1.0, 0.0, 0.5, 1.0, 2.0, 0.0]);
    let mean = img(SHAPE, &[0.3, -0.2, 0.5, 0.1, -0.4, 0.2]);
    let var = img(SHAPE, &[2.0, 1.0, 0.5, 3.0, 1.5, 0.7]);
    let x_true = &mean + &randn(SHAPE, 11);
    (op, mean, var, x_true)
}

#[test]
fn w_zero_lambda_zero_is_exactly_ddim() {
    let (op, mean, var, x_true) = toy();
    let oracle = vp_oracle(mean, var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let vp = vp();
    let z = randn(SHAPE, 5);
    for steps in [1, 4, 9] {
        let s = cpigdm(&config(
            SamplerName::CPigdm,
            steps,
            0.0,
            0.0,
            0.6,
            0.002,
            0.0,
        ));
        let mut p = [problem(&op, &x_true, &z, 0)];
        let out = s.sample(&net, &mut p).unwrap().remove(0);
        // DDIM: x_{k+1} = μ_{k+1}[x_k/μ_k + (σ_{k+1}/μ_{k+1} − σ_k/μ_k) ε̂].
        let t = s.times();
        let mut x = &op.pinv(&op.forward(&x_true)) * vp.mu(t[0]) + &(&z * vp.sigma(t[0]));
        for k in 0..steps {
            let (a, b) = (t[k], t[k + 1]);
            let eps = net
                .eps(&[x.clone()], a, vp.mu(a), vp.sigma(a))
                .unwrap()
                .remove(0);
            let d = vp.sigma(b) / vp.mu(b) - vp.sigma(a) / vp.mu(a);
            x = (&x / vp.mu(a) + &(&eps * d)) * vp.mu(b);
        }
        let err = max_abs_diff(&out, &x);
        assert!(err < 1e-12, "steps {steps}: {err:e}");
    }
}

#[test]
fn w_zero_with_lambda_is_exactly_lambda_ddim() {
    let (op, mean, var, x_true) = toy();
    let oracle = vp_oracle(mean, var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let vp = vp();
    let z = randn(SHAPE, 6);
    for lambda in [0.3, -0.5] {
        let s = cpigdm(&config(
            SamplerName::CPigdm,
            6,
            0.0,
            lambda,
            0.5,
            0.001,
            1e-6,
        ));
        let mut p = [problem(&op, &x_true, &z, 0)];
        let out = s.sample(&net, &mut p).unwrap().remove(0);
        let t = s.times();
        let x0 = &op.pinv(&op.forward(&x_true)) * vp.mu(t[0]) + &(&z * vp.sigma(t[0]));
        let want = lambda_ddim(&net, &vp, lambda, 1e-6, t, vec![x0])
            .unwrap()
            .remove(0);
        let err = max_abs_diff(&out, &want);
        assert!(err < 1e-12, "λ {lambda}: {err:e}");
        // And λ matters (the comparison would not pass by accident).
        let x0 = &op.pinv(&op.forward(&x_true)) * vp.mu(t[0]) + &(&z * vp.sigma(t[0]));
        let plain = lambda_ddim(&net, &vp, 0.0, 1e-6, t, vec![x0])
            .unwrap()
            .remove(0);
        assert!(max_abs_diff(&plain, &out) > 1e-6);
    }
}

#[test]
fn phi_s1_equals_continuous_pigdm_phi() {
    use conjure::samplers::pigdm::Pigdm;
    for (lambda, eps_n) in [(0.0, 1e-6), (0.3, 1e-6), (-0.4, 0.0)] {
        let c = cpigdm(&config(
            SamplerName::CPigdm,
            7,
            9.0,
            lambda,
            0.7,
            0.001,
            eps_n,
        ));
        let mut cfg = config(SamplerName::Pigdm, 7, 9.0, lambda, 0.7, 0.001, eps_n);
        cfg.variant = Some("continuous".parse().unwrap());
        let p = Pigdm::from_config(&cfg, &sched()).unwrap();
        let phis = p.continuous_phis().unwrap();
        assert_eq!(phis.len(), 7);
        for (a, b) in c.coefficients().iter().zip(phis) {
            assert!(
                (a.phi_s1 - b).abs() <= 1e-14 * b.abs(),
                "{} vs {b}",
                a.phi_s1
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Exponential integrator (§14.2 item 8)

#[test]
fn one_step_with_frozen_outputs_is_exact() {
    let op = diag(SHAPE, &[1.0, 0.0, 0.5, 1.0, 2.0, 0.0]);
    let frozen = Frozen {
        e0: img(SHAPE, &[0.7, -1.1, 0.3, 0.9, -0.2, 1.4]),
        g0: img(SHAPE, &[-0.4, 0.6, 1.2, -0.8, 0.5, 0.25]),
    };
    let net = eps_net(&frozen, TimeInput::Unit);
    let x_true = randn(SHAPE, 21);
    let z = randn(SHAPE, 22);
    let vp = vp();
    let hy = op.pinv(&op.forward(&x_true));
    for &w in &[0.0, 1.0, 6.0, 15.0] {
        for &(ta, tb) in &[(0.4, 0.3202), (0.4, 0.001), (0.7, 0.2), (0.1, 0.01)] {
            let s = cpigdm(&config(SamplerName::CPigdm, 1, w, 0.0, ta, tb, 0.0));
            let mut p = [problem(&op, &x_true, &z, 0)];
            let out = s.sample(&net, &mut p).unwrap().remove(0);
            let x0 = &hy * vp.mu(ta) + &(&z * vp.sigma(ta));
            let weight = move |t: f64| w * vp.mu(t).powi(2);
            let f = |t: f64, x: &Img| guided_rhs(&frozen, op.as_ref(), &hy, &weight, t, x);
            let want = rk4(&f, &x0, ta, tb, 20_000);
            let err = max_abs_diff(&out, &want) / norm(&want);
            assert!(err < 1e-9, "w {w} [{ta} → {tb}]: rel err {err:e}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Gaussian toys (§14.3)

/// Range of P with variance `range_var`, null space with variance 1.
fn stiff_toy(range_var: f64) -> (OperatorRef, Img, Img, Img) {
    let op = diag(SHAPE, &[1.0, 0.0, 0.5, 1.0, 2.0, 0.0]);
    let mean = img(SHAPE, &[0.3, -0.2, 0.5, 0.1, -0.4, 0.2]);
    let s = op.singulars().clone();
    let var = s.mapv(|s| if s != 0.0 { range_var } else { 1.0 });
    let x_true = &mean + &(&randn(SHAPE, 31) * &var.mapv(f64::sqrt));
    (op, mean, var, x_true)
}

fn cpigdm_errors(range_var: f64, w: f64, lambda: f64, nfes: &[usize]) -> (Vec<f64>, Img) {
    let (op, mean, var, x_true) = stiff_toy(range_var);
    let oracle = vp_oracle(mean, var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let vp = vp();
    let z = randn(SHAPE, 32);
    let (tau, t_end) = (0.4, 0.001);
    let hy = op.pinv(&op.forward(&x_true));
    let x0 = &hy * vp.mu(tau) + &(&z * vp.sigma(tau));
    let weight = move |t: f64| w * vp.mu(t).powi(2);
    let f = |t: f64, x: &Img| guided_rhs(&oracle, op.as_ref(), &hy, &weight, t, x);
    let reference = rk4(&f, &x0, tau, t_end, 40_000);
    let errs = nfes
        .iter()
        .map(|&n| {
            let s = cpigdm(&config(SamplerName::CPigdm, n, w, lambda, tau, t_end, 0.0));
            let mut p = [problem(&op, &x_true, &z, 0)];
            let out = s.sample(&net, &mut p).unwrap().remove(0);
            norm(&(&out - &reference))
        })
        .collect();
    (errs, reference)
}

#[test]
fn converges_to_its_ode_at_first_order() {
    let nfes = [5, 10, 20, 50, 100, 200];
    for (range_var, w, lambda) in [(100.0, 15.0, 0.0), (100.0, 15.0, 0.3), (1.0, 4.0, 0.0)] {
        let (errs, reference) = cpigdm_errors(range_var, w, lambda, &nfes);
        let slope = loglog_slope(&nfes, &errs);
        eprintln!(
            "var {range_var} w {w} λ {lambda}: errors {errs:?}, slope {slope:.3}, |ref| {:.3}",
            norm(&reference)
        );
        assert!((-1.3..=-0.7).contains(&slope), "slope {slope}");
        assert!(errs[5] < errs[0]);
    }
}

/// Regression: at τ = 1 and w = 15 the transform scales the range of P by e^{c1+c2} ≈ e^{-70} and the rest
/// by e^{c1} ≈ e^{5}. With an operator whose projector carries rounding (sr-bicubic: P = V Vᵀ from an SVD),
/// applying P to a vector that mixes both parts puts ≈ 1e-16 e^{5} of error on the range, which A⁻¹ then
/// multiplies by e^{75}: the real fmnist prior gave 3.6 dB at τ = 1 with 5, 50 or 400 steps. The sampler
/// keeps the two parts apart; it must now converge to the x-space ODE (RK4 reference) like at τ = 0.4.
#[test]
fn large_tau_and_w_stay_accurate_with_a_rounded_projector() {
    use conjure::operators::{Degradation, DEFAULT_SVD_THRESHOLD};
    let shape = [1, 8, 8];
    let op = Degradation::SrBicubic {
        scale: 2,
        threshold: DEFAULT_SVD_THRESHOLD,
    }
    .build(shape)
    .unwrap();
    let mean = &randn(shape, 41) * 0.3;
    let var = Img::from_elem((1, 8, 8), 0.5);
    let x_true = &mean + &(&randn(shape, 42) * 0.5f64.sqrt());
    let oracle = vp_oracle(mean, var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let vp = vp();
    let z = randn(shape, 43);
    let (tau, t_end, w) = (1.0, 0.001, 15.0);
    let hy = op.pinv(&op.forward(&x_true));
    let x0 = &hy * vp.mu(tau) + &(&z * vp.sigma(tau));
    let weight = move |t: f64| w * vp.mu(t).powi(2);
    let f = |t: f64, x: &Img| guided_rhs(&oracle, op.as_ref(), &hy, &weight, t, x);
    let reference = rk4(&f, &x0, tau, t_end, 40_000);
    let nfes = [5, 20, 100, 400];
    let errs: Vec<f64> = nfes
        .iter()
        .map(|&n| {
            let s = cpigdm(&config(SamplerName::CPigdm, n, w, 0.0, tau, t_end, 0.0));
            let mut p = [problem(&op, &x_true, &z, 0)];
            let out = s.sample(&net, &mut p).unwrap().remove(0);
            norm(&(&out - &reference)) / norm(&reference)
        })
        .collect();
    eprintln!("τ 1, w 15, sr-bicubic: relative errors {errs:?} at NFE {nfes:?}");
    assert!(errs.iter().all(|e| e.is_finite()), "{errs:?}");
    assert!(errs[0] < 0.5, "5 steps: {errs:?}");
    assert!(errs[3] < 0.01, "400 steps must approach the ODE: {errs:?}");
    assert!(errs[3] < errs[1] && errs[1] < errs[0], "{errs:?}");
}

/// The validity measure of the official noisy variant's first-order inverse: |c3| e^{−(c1+c2)} / s_min², computed
/// here from its definition (docs/samplers.md §5) at every grid time, small for mild settings and huge at the
/// published w = 15, τ = 0.4 with σ_y = 0.05, where the quality study saw the noisy variant fail.
#[test]
fn noisy_inverse_ratio_matches_its_definition() {
    let op = diag(SHAPE, &[1.0, 0.0, 0.5, 1.0, 2.0, 0.0]);
    let vp = vp();
    let eps_n = 1e-6;
    for (w, tau, sy) in [(15.0, 0.4, 0.05), (2.0, 0.1, 0.01)] {
        let mut cfg = config(SamplerName::CPigdm, 5, w, 0.0, tau, 0.001, eps_n);
        cfg.variant = Some("official".parse().unwrap());
        let s = cpigdm(&cfg);
        let want = s
            .times()
            .iter()
            .map(|&t| {
                let b = vp.b(t);
                let (c1, c2) = (0.5 * b, -0.5 * w * b);
                let c3 = 0.5 * w * ((c1 + c2).exp() - 1.0) * sy * sy * (b.exp_m1() + eps_n).ln();
                c3.abs() * (-(c1 + c2)).exp() / (0.5 * 0.5)
            })
            .fold(0.0, f64::max);
        let got = s.noisy_inverse_ratio(op.as_ref(), sy);
        assert!(rel(got, want) < 1e-12, "w {w} τ {tau}: {got} vs {want}");
        if w == 15.0 {
            assert!(got > 1e3, "{got}");
        } else {
            assert!(got < 1e-2, "{got}");
        }
    }
}

#[test]
fn stable_where_explicit_euler_diverges() {
    // §14.3 item 2: range variance 100, w = 15, 5 steps of Δs = 0.0798 from τ = 0.4. The guided ODE's rate on
    // the range of P is ≈ 52 at t = 0.4, so explicit Euler multiplies the range error by |1 − 52·0.08| ≈ 3.1
    // there (and by ≈ 2.6, 1.7 on the next steps). Compare both along the grid t_1…t_5 against RK4.
    let (op, mean, var, x_true) = stiff_toy(100.0);
    let oracle = vp_oracle(mean, var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let vp = vp();
    let z = randn(SHAPE, 32);
    let hy = op.pinv(&op.forward(&x_true));
    let tau = 0.4;
    let x0 = &hy * vp.mu(tau) + &(&z * vp.sigma(tau));
    let weight = move |t: f64| 15.0 * vp.mu(t).powi(2);
    let f = |t: f64, x: &Img| guided_rhs(&oracle, op.as_ref(), &hy, &weight, t, x);
    let grid = conjure::samplers::c_pigdm::time_grid(tau, 0.001, 5);
    let (mut worst_c, mut worst_e) = (0.0f64, 0.0f64);
    for k in 1..=5 {
        let reference = rk4(&f, &x0, tau, grid[k], 8_000 * k);
        let s = cpigdm(&config(
            SamplerName::CPigdm,
            k,
            15.0,
            0.0,
            tau,
            grid[k],
            0.0,
        ));
        assert!((s.times()[k] - grid[k]).abs() < 1e-15);
        let out = s
            .sample(&net, &mut [problem(&op, &x_true, &z, 0)])
            .unwrap()
            .remove(0);
        let e_c = norm(&(&out - &reference)) / norm(&reference);
        let e_e = norm(&(&euler(&f, &x0, &grid[..=k]) - &reference)) / norm(&reference);
        eprintln!(
            "t_{k} = {:.4}: relative error C-ΠGDM {e_c:.3e}, explicit Euler {e_e:.3e}",
            grid[k]
        );
        worst_c = worst_c.max(e_c);
        worst_e = worst_e.max(e_e);
    }
    assert!(worst_c < 0.05, "C-ΠGDM strays from its ODE: {worst_c}");
    assert!(
        worst_e > 1.0,
        "explicit Euler should blow up on this stiff toy: {worst_e}"
    );
}

#[test]
fn noiseless_output_is_measurement_consistent() {
    let (op, mean, var, x_true) = stiff_toy(100.0);
    let oracle = vp_oracle(mean, var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let y = op.forward(&x_true);
    let mut res = vec![];
    for w in [0.0, 15.0] {
        let s = cpigdm(&config(SamplerName::CPigdm, 5, w, 0.0, 0.4, 0.001, 1e-6));
        let mut p = [Problem::new(op.clone(), y.clone(), 0.0, 3).unwrap()];
        let out = s.sample(&net, &mut p).unwrap().remove(0);
        res.push(norm(&(&op.forward(&out) - &y)) / norm(&y));
    }
    eprintln!("‖Hx − y‖/‖y‖: w = 0 {:.3e}, w = 15 {:.3e}", res[0], res[1]);
    assert!(res[1] < 0.02, "w = 15: {}", res[1]);
    assert!(res[0] > 5.0 * res[1], "guidance must matter: {res:?}");
}

// ---------------------------------------------------------------------------------------------------
// Official noisy variant (§5, §14.2 items 1 and 4); the exact noisy form is tested in c_pigdm_noisy.rs

#[test]
fn noiseless_transform_inverts_exactly() {
    let op = diag(SHAPE, &[1.0, 0.0, 0.5, 1.0, 2.0, 0.0]);
    let s = cpigdm(&SamplerConfig::new(SamplerName::CPigdm));
    let x = randn(SHAPE, 41);
    for k in 0..=5 {
        let back = s.inverse_transform(op.as_ref(), k, 0.0, &s.transform(op.as_ref(), k, 0.0, &x));
        let err = max_abs_diff(&back, &x) / norm(&x);
        assert!(err < 1e-12, "k {k}: {err:e}");
        let fwd = s.transform(
            op.as_ref(),
            k,
            0.0,
            &s.inverse_transform(op.as_ref(), k, 0.0, &x),
        );
        assert!(max_abs_diff(&fwd, &x) < 1e-12 * norm(&x), "k {k}");
        // A_t H†y = e^{c1+c2} H†y.
        let hy = op.pinv(&x);
        let a_hy = s.transform(op.as_ref(), k, 0.0, &hy);
        assert!(max_abs_diff(&a_hy, &(&hy * (s.exp_c1(k) * s.exp_c2(k)))) < 1e-14);
    }
}

#[test]
fn noisy_inverse_residual_is_quadratic_in_c3() {
    let op = diag(SHAPE, &[1.0, 0.0, 0.5, 1.0, 2.0, 0.0]);
    let s = cpigdm(&SamplerConfig::new(SamplerName::CPigdm));
    let xbar = randn(SHAPE, 42);
    for k in 0..=5 {
        let resid = |sy: f64| {
            let x = s.inverse_transform(op.as_ref(), k, sy, &xbar);
            norm(&(&s.transform(op.as_ref(), k, sy, &x) - &xbar)) / norm(&xbar)
        };
        let r: Vec<f64> = [0.1, 0.05, 0.025, 0.0125]
            .iter()
            .map(|&sy| resid(sy))
            .collect();
        assert!(
            r[0] > 0.0 && s.c3(k, 0.1) != 0.0,
            "k {k}: c3 and the residual must not vanish"
        );
        for i in 0..3 {
            // c3 ∝ σ_y², residual = c3² ‖(Q A⁻¹)² x̄‖ ⇒ ×16 per halving of σ_y.
            let ratio = r[i] / r[i + 1];
            assert!((ratio - 16.0).abs() < 0.01, "k {k}: ratio {ratio} ({r:?})");
        }
    }
}

#[test]
fn official_variant_with_zero_noise_equals_noiseless_and_noisy_differs() {
    let (op, mean, var, x_true) = toy();
    let oracle = vp_oracle(mean, var);
    let net = eps_net(&oracle, TimeInput::Unit);
    let z = randn(SHAPE, 51);
    let run = |variant: &str, sigma_y: f64| {
        let mut cfg = SamplerConfig::new(SamplerName::CPigdm);
        cfg.variant = Some(variant.parse().unwrap());
        let s = cpigdm(&cfg);
        let y = op.forward(&x_true);
        let mut p = [Problem::new(op.clone(), y, sigma_y, 0)
            .unwrap()
            .with_init_noise(z.clone())
            .unwrap()];
        s.sample(&net, &mut p).unwrap().remove(0)
    };
    let base = run("noiseless", 0.0);
    assert!(max_abs_diff(&run("official", 0.0), &base) < 1e-12);
    assert_eq!(run("auto", 0.0), base);
    // σ_y > 0: official runs the heuristic noisy form, auto the exact one, noiseless ignores σ_y.
    assert_eq!(run("noiseless", 0.05), base);
    let official = run("official", 0.05);
    let exact = run("auto", 0.05);
    for noisy in [&official, &exact] {
        let d = max_abs_diff(noisy, &base);
        assert!(
            d > 1e-6 && noisy.iter().all(|v| v.is_finite()),
            "noisy vs noiseless {d:e}"
        );
    }
    assert!(max_abs_diff(&official, &exact) > 1e-6);
}

#[test]
fn bad_settings_are_rejected() {
    let s = sched();
    let mut c = SamplerConfig::new(SamplerName::CPigdm);
    c.steps = Some(0);
    assert!(CPigdm::from_config(&c, &s).is_err());
    let mut c = SamplerConfig::new(SamplerName::CPigdm);
    c.end_time = Some(0.5);
    assert!(CPigdm::from_config(&c, &s).is_err());
    let mut c = SamplerConfig::new(SamplerName::CPigdm);
    c.variant = Some("discrete".parse().unwrap());
    let e = CPigdm::from_config(&c, &s).unwrap_err().to_string();
    assert!(e.contains("discrete") && e.contains("noisy"), "{e}");
    let e = "loud"
        .parse::<conjure::samplers::SamplerVariant>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("loud") && e.contains("noisy"), "{e}");
    assert!(CPigdm::from_config(
        &SamplerConfig::new(SamplerName::CPigdm),
        &conjure::samplers::ModelSchedule::Flow
    )
    .is_err());
}

// ---------------------------------------------------------------------------------------------------
// Batch independence

#[test]
fn batch_equals_each_problem_alone() {
    let oracle = vp_oracle(
        img(SHAPE, &[0.1; 6]),
        img(SHAPE, &[1.0, 4.0, 0.5, 2.0, 1.0, 3.0]),
    );
    let net = eps_net(&oracle, TimeInput::Unit);
    let ops = [
        diag(SHAPE, &[1.0, 0.0, 0.5, 1.0, 2.0, 0.0]),
        diag(SHAPE, &[0.0, 1.0, 1.0, 0.0, 0.3, 1.0]),
        diag(SHAPE, &[1.0; 6]),
    ];
    let sigmas = [0.0, 0.05, 0.0];
    let make = |i: usize| {
        let x = randn(SHAPE, 60 + i as u64);
        let y = &ops[i].forward(&x) + &(&randn(SHAPE, 70 + i as u64) * sigmas[i]);
        Problem::new(ops[i].clone(), y, sigmas[i], 80 + i as u64).unwrap()
    };
    let s = cpigdm(&SamplerConfig::new(SamplerName::CPigdm));
    let mut batch: Vec<Problem> = (0..3).map(make).collect();
    let together = s.sample(&net, &mut batch).unwrap();
    for (i, t) in together.iter().enumerate() {
        let alone = s.sample(&net, &mut [make(i)]).unwrap().remove(0);
        assert!(max_abs_diff(&alone, t) <= 1e-12, "problem {i}");
    }
    assert!(max_abs_diff(&together[0], &together[2]) > 1e-3);
}

// ---------------------------------------------------------------------------------------------------
// Parameterizations and Jacobian modes

/// The oracle's forward with its VJP replaced by zeros.
struct NoJacobian<'a>(&'a dyn conjure::model::Denoiser);

impl conjure::model::Denoiser for NoJacobian<'_> {
    fn engine(&self) -> String {
        "no-jacobian".into()
    }
    fn predict(
        &self,
        x: ndarray::ArrayView4<f64>,
        t: &[f64],
    ) -> conjure::Result<ndarray::Array4<f64>> {
        self.0.predict(x, t)
    }
    fn has_vjp(&self) -> bool {
        true
    }
    fn vjp(
        &self,
        x: ndarray::ArrayView4<f64>,
        t: &[f64],
        cot: ndarray::ArrayView4<f64>,
    ) -> conjure::Result<(ndarray::Array4<f64>, ndarray::Array4<f64>)> {
        Ok((self.0.predict(x, t)?, ndarray::Array4::zeros(cot.raw_dim())))
    }
}

#[test]
fn parameterizations_and_jacobian_modes() {
    use conjure::model::analytic::{GaussianDiffusion, GaussianPrior, IdentityBasis, NoiseLevel};
    use conjure::model::{JacobianMode, ModelKind, Network, Parameterization};
    let (op, mean, var, x_true) = toy();
    let z = randn(SHAPE, 90);
    let mk = |param| {
        let prior = GaussianPrior::new(
            std::sync::Arc::new(IdentityBasis),
            mean.clone(),
            var.clone(),
        )
        .unwrap();
        GaussianDiffusion::new(prior, NoiseLevel::VpUnit(vp()), param).unwrap()
    };
    let (eps_oracle, x0_oracle) = (mk(Parameterization::Eps), mk(Parameterization::X0));
    let s = cpigdm(&SamplerConfig::new(SamplerName::CPigdm));
    let run = |den: &dyn conjure::model::Denoiser, param, mode| {
        let net = Network::new(den, ModelKind::Diffusion, param, TimeInput::Unit, mode);
        let out = s
            .sample(&net, &mut [problem(&op, &x_true, &z, 0)])
            .unwrap()
            .remove(0);
        (out, net.forwards(), net.vjps())
    };
    // An x̂₀-network gives the same sampler as the equivalent ε-network.
    let (a, fa, va) = run(&eps_oracle, Parameterization::Eps, JacobianMode::Exact);
    let (b, _, _) = run(&x0_oracle, Parameterization::X0, JacobianMode::Exact);
    assert_eq!((fa, va), (5, 5));
    assert!(
        max_abs_diff(&a, &b) < 1e-9 * norm(&a),
        "{:e}",
        max_abs_diff(&a, &b)
    );
    // Identity mode (J_net = 0) skips the VJP call and equals a zero network VJP.
    for (den, param) in [
        (
            &eps_oracle as &dyn conjure::model::Denoiser,
            Parameterization::Eps,
        ),
        (&x0_oracle, Parameterization::X0),
    ] {
        let (c, fc, vc) = run(den, param, JacobianMode::Identity);
        let (d, _, _) = run(&NoJacobian(den), param, JacobianMode::Exact);
        assert_eq!((fc, vc), (5, 0));
        assert!(max_abs_diff(&c, &d) < 1e-12, "{param:?}");
        assert!(max_abs_diff(&c, &a) > 1e-6, "the Jacobian term must matter");
    }
    // Finite differences approach the exact VJP (the oracle's Jacobian is symmetric).
    let (e, fe, ve) = run(
        &eps_oracle,
        Parameterization::Eps,
        JacobianMode::FiniteDifference,
    );
    assert_eq!((fe, ve), (15, 0));
    assert!(
        max_abs_diff(&e, &a) < 1e-6 * norm(&a),
        "{:e}",
        max_abs_diff(&e, &a)
    );
}
