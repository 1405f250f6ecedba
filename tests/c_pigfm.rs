//! C-ΠGFM (docs/samplers.md §9) against independent references: the §9.5 coefficient tables, the λ = 0 closed
//! forms, the w = 0 Euler reduction, the exponential-integrator property with frozen network outputs
//! (§14.2 item 8), first-order convergence to the §9.1 ODE on a Gaussian toy (§14.3 item 5, RK4 reference
//! from closed-form velocities), data consistency, and batch independence.

mod common;
use common::numeric;

use std::sync::{Arc, Mutex};

use conjure::model::analytic::{GaussianFlow, GaussianPrior, IdentityBasis};
use conjure::model::{Denoiser, JacobianMode, ModelKind, Network, Parameterization};
use conjure::operators::{Diagonal, Img, OperatorRef};
use conjure::samplers::c_pigfm::{CPigfm, CPigfmParams, FlowNoise, JacobianTerm};
use conjure::samplers::{self, ModelSchedule, Problem, Sampler, SamplerConfig, SamplerName};
use conjure::schedules::TimeInput;
use conjure::{Error, Result};
use ndarray::{Array3, Array4, ArrayView4, Axis};
use numeric::{loglog_slope, max_abs, norm, rk4};

// ---------------------------------------------------------------------------------------------------------
// helpers

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

fn img(v: &[f64]) -> Img {
    Array3::from_shape_vec((1, 1, v.len()), v.to_vec()).unwrap()
}

fn params(steps: usize, w: f64, lambda: f64, st: f64, jac: JacobianTerm) -> CPigfmParams {
    CPigfmParams {
        steps,
        w,
        lambda,
        start_time: st,
        jacobian_term: jac,
        noise: match jac {
            JacobianTerm::Derived => FlowNoise::Exact,
            JacobianTerm::Official => FlowNoise::Ignore,
        },
    }
}

/// A denoiser with frozen outputs: v ≡ v₀ and (∂v/∂x)ᵀ m ≡ g₀ whatever x, t and m are. It records the
/// network times it was called with.
struct Frozen {
    v0: Img,
    g0: Img,
    times: Mutex<Vec<f64>>,
}

impl Frozen {
    fn new(v0: Img, g0: Img) -> Self {
        Frozen {
            v0,
            g0,
            times: Mutex::new(Vec::new()),
        }
    }
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

fn flow_net(d: &dyn Denoiser, param: Parameterization, time: TimeInput) -> Network<'_> {
    Network::new(d, ModelKind::Flow, param, time, JacobianMode::Exact)
}

fn diag(s: &[f64]) -> OperatorRef {
    Arc::new(Diagonal::new(img(s)).unwrap())
}

/// A noiseless problem y = H x_true with a fixed initial noise z.
fn problem(op: &OperatorRef, x_true: &[f64], z: &[f64]) -> Problem {
    let y = op.forward(&img(x_true));
    Problem::new(op.clone(), y, 0.0, 7)
        .unwrap()
        .with_init_noise(img(z))
        .unwrap()
}

fn run(s: &dyn Sampler, net: &Network, problems: Vec<Problem>) -> Vec<Img> {
    let mut problems = problems;
    s.sample(net, &mut problems).unwrap()
}

// ---------------------------------------------------------------------------------------------------------
// coefficients

/// docs/samplers.md §9.5: w = 20, λ = 0.2, st = 0.6, K = 10.
#[test]
fn coefficients_match_table_9_5() {
    let s = CPigfm::new(params(10, 20.0, 0.2, 0.6, JacobianTerm::Derived)).unwrap();
    let ea = [
        1.127497, 1.136553, 1.145682, 1.154884, 1.164160, 1.173511, 1.182937, 1.192438, 1.202016,
        1.211671, 1.221403,
    ];
    let eb = [
        8.671138, 10.468527, 12.525752, 14.815590, 17.279025, 19.819507, 22.301189, 24.553474,
        26.383707, 27.598461, 28.031625,
    ];
    assert_eq!(s.grid().len(), 11);
    for (i, &t) in s.grid().iter().enumerate() {
        assert!((t - (0.6 + 0.04 * i as f64)).abs() < 1e-15, "t_{i} = {t}");
        assert!(rel(s.a(t).exp(), ea[i]) < 1e-6, "e^a({t})");
        assert!(rel(s.b(t).exp(), eb[i]) < 1e-6, "e^b({t})");
    }
    #[rustfmt::skip]
    let table: [[f64; 6]; 10] = [
        [4.52807556e-02, 3.87102648e-01, 8.10531185e-02, 6.91146462e-01, 2.13236375e-01, 1.82164240e+00],
        [4.56444545e-02, 4.78242586e-01, 6.96392461e-02, 7.27564615e-01, 2.04722803e-01, 2.14299093e+00],
        [4.60110747e-02, 5.82257922e-01, 5.79781317e-02, 7.31380727e-01, 1.93114001e-01, 2.44099456e+00],
        [4.63806395e-02, 6.97467607e-01, 4.64222719e-02, 6.95677927e-01, 1.78337146e-01, 2.67815757e+00],
        [4.67531728e-02, 8.20500036e-01, 3.53355604e-02, 6.17790931e-01, 1.60318250e-01, 2.80908458e+00],
        [4.71286983e-02, 9.46040335e-01, 2.50935169e-02, 5.01666237e-01, 1.38982154e-01, 2.78486989e+00],
        [4.75072400e-02, 1.06681204e+00, 1.60835203e-02, 3.59588872e-01, 1.14252505e-01, 2.56048693e+00],
        [4.78888222e-02, 1.17390969e+00, 8.70504487e-03, 2.12393661e-01, 8.60517437e-02, 2.10472569e+00],
        [4.82734693e-02, 1.25756051e+00, 3.36990135e-03, 8.73591822e-02, 5.43010876e-02, 1.41113980e+00],
        [4.86612060e-02, 1.30830939e+00, 5.02480805e-04, 1.34519272e-02, 1.89205147e-02, 5.07348165e-01],
    ];
    assert_eq!(s.coefficients().len(), 10);
    for (k, (c, want)) in s.coefficients().iter().zip(&table).enumerate() {
        let got = [c.d_i1, c.d_i2, c.d_k1, c.d_k2, c.d_y1, c.d_y2];
        for (j, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(rel(*g, *w) < 1e-6, "step {k} coefficient {j}: {g} vs {w}");
        }
    }
}

/// docs/samplers.md §9.3: with λ = 0, I₁ = t, Y₁ = b(t), Y₁ + Y₂ = e^{b(t)} − 1 (cumulative from 0), and K₁
/// has the polynomial antiderivative w (t²/2 − 2t³/3 + t⁴/4).
#[test]
fn lambda_zero_closed_forms() {
    for (w, st, k) in [(20.0, 0.6, 10), (7.5, 0.1, 7), (60.0, 0.35, 3)] {
        let s = CPigfm::new(params(k, w, 0.0, st, JacobianTerm::Derived)).unwrap();
        let b = |t: f64| w * (t * t / 2.0 - t * t * t / 3.0);
        let k1 = |t: f64| w * (t * t / 2.0 - 2.0 * t.powi(3) / 3.0 + t.powi(4) / 4.0);
        for (i, c) in s.coefficients().iter().enumerate() {
            let (t0, t1) = (s.grid()[i], s.grid()[i + 1]);
            assert!((c.d_i1 - (t1 - t0)).abs() <= 1e-10 * (t1 - t0));
            assert!(rel(c.d_y1, b(t1) - b(t0)) < 1e-10, "Y1 w={w} step {i}");
            let y12 = b(t1).exp_m1() - b(t0).exp_m1();
            assert!(rel(c.d_y1 + c.d_y2, y12) < 1e-10, "Y1+Y2 w={w} step {i}");
            assert!(rel(c.d_k1, k1(t1) - k1(t0)) < 1e-10, "K1 w={w} step {i}");
            assert_eq!(s.a(t0), 0.0);
        }
    }
}

#[test]
fn transform_inverts_and_commutes_with_p() {
    let s = CPigfm::new(params(10, 20.0, 0.2, 0.6, JacobianTerm::Derived)).unwrap();
    let op = diag(&[1.0, 0.0, 0.3, 0.0, 2.0]);
    let x = img(&[0.3, -1.2, 2.0, 0.7, -0.4]);
    for &t in s.grid() {
        let xb = s.transform(op.as_ref(), &x, t);
        assert!(max_abs(&s.inverse_transform(op.as_ref(), &xb, t), &x) < 1e-13);
        // A_t = e^{a} on the null space, e^{a + b} on the range.
        let (ea, eab) = (s.a(t).exp(), (s.a(t) + s.b(t)).exp());
        let want = img(&[0.3 * eab, -1.2 * ea, 2.0 * eab, 0.7 * ea, -0.4 * eab]);
        assert!(max_abs(&xb, &want) < 1e-13 * eab);
    }
}

// ---------------------------------------------------------------------------------------------------------
// reductions and the exponential-integrator property

/// §14.2 item 7: w = 0, λ = 0 is exactly Euler x ← x + Δ v, from x₀ = st H†y + (1 − st) z.
#[test]
fn w0_lambda0_is_euler() {
    let op = diag(&[1.0, 0.5, 0.0, 0.0]);
    let prior = GaussianPrior::new(
        Arc::new(IdentityBasis),
        img(&[0.2, -0.1, 0.3, 0.0]),
        img(&[2.0, 1.0, 0.5, 3.0]),
    )
    .unwrap();
    let oracle = GaussianFlow::new(prior, TimeInput::Unit, Parameterization::Velocity).unwrap();
    let net = flow_net(&oracle, Parameterization::Velocity, TimeInput::Unit);
    let (x_true, z) = ([0.9, -0.4, 1.1, 0.2], [0.5, -1.3, 0.8, 2.1]);
    for (k, st) in [(5, 0.6), (13, 0.2)] {
        let s = CPigfm::new(params(k, 0.0, 0.0, st, JacobianTerm::Derived)).unwrap();
        let out = run(&s, &net, vec![problem(&op, &x_true, &z)]);
        let p = problem(&op, &x_true, &z);
        let mut x = op.pinv(&p.y) * st + &(img(&z) * (1.0 - st));
        let delta = (1.0 - st) / k as f64;
        for i in 0..k {
            let t = st + i as f64 * delta;
            let v = &net.velocity(std::slice::from_ref(&x), t).unwrap()[0];
            x = &x + &(v * delta);
        }
        let err = max_abs(&out[0], &x);
        assert!(err < 1e-12 * (1.0 + norm(&x)), "K = {k}: {err}");
    }
}

/// §14.2 item 8: with v ≡ v₀ and g ≡ g₀ frozen and λ = 0, derived-mode C-ΠGFM integrates the §9.1 ODE
/// dx/dt = −wγPx + v₀ − wγ(1−t)Pv₀ + wγH†y + wγ(1−t)g₀ exactly, for any step size and w. The official
/// Jacobian term does not.
#[test]
fn frozen_outputs_match_rk4_of_the_ode() {
    let s_diag = [1.0, 0.0, 0.4, 2.0, 0.0];
    let op = diag(&s_diag);
    let v0 = img(&[0.7, -0.3, 1.5, -0.8, 0.25]);
    let g0 = img(&[-1.1, 0.6, 0.9, 0.35, -0.5]);
    let (x_true, z) = ([0.4, 0.1, -0.9, 0.6, 1.2], [-0.7, 1.4, 0.3, -0.2, 0.9]);
    let frozen = Frozen::new(v0.clone(), g0.clone());
    let net = flow_net(&frozen, Parameterization::Velocity, TimeInput::Unit);
    let p = problem(&op, &x_true, &z);
    let hy: Vec<f64> = op.pinv(&p.y).iter().copied().collect();
    let pm: Vec<f64> = s_diag.iter().map(|&s| f64::from(s != 0.0)).collect();
    let (v, g): (Vec<f64>, Vec<f64>) = (v0.iter().copied().collect(), g0.iter().copied().collect());

    for w in [0.0, 3.0, 20.0, 60.0] {
        let ode = |t: f64, x: &[f64]| -> Vec<f64> {
            let wg = w * t * (1.0 - t);
            (0..x.len())
                .map(|j| {
                    -wg * pm[j] * x[j] + v[j] - wg * (1.0 - t) * pm[j] * v[j]
                        + wg * hy[j]
                        + wg * (1.0 - t) * g[j]
                })
                .collect()
        };
        for (k, st) in [(1, 0.6), (1, 0.2), (1, 0.9), (4, 0.3), (10, 0.6)] {
            let x0: Vec<f64> = (0..5).map(|j| st * hy[j] + (1.0 - st) * z[j]).collect();
            let want = img(&rk4(ode, &x0, st, 1.0, 4000));
            let derived = CPigfm::new(params(k, w, 0.0, st, JacobianTerm::Derived)).unwrap();
            let got = run(&derived, &net, vec![problem(&op, &x_true, &z)]);
            let err = max_abs(&got[0], &want);
            assert!(
                err < 1e-10 * (1.0 + norm(&want)),
                "w {w}, K {k}, st {st}: {err}"
            );
            if w > 0.0 {
                let official = CPigfm::new(params(k, w, 0.0, st, JacobianTerm::Official)).unwrap();
                let got = run(&official, &net, vec![problem(&op, &x_true, &z)]);
                let err = max_abs(&got[0], &want);
                assert!(
                    err > 1e-4 * w,
                    "official mode should differ: w {w}, K {k}: {err}"
                );
            }
        }
    }
}

/// The network is called at t_i = st + iΔ, i < K, mapped to 999 t for an index-time model: never at 0 or 1.
#[test]
fn network_times_and_nfe() {
    let op = diag(&[1.0, 0.0]);
    let frozen = Frozen::new(img(&[0.1, 0.2]), img(&[0.0, 0.0]));
    let time = TimeInput::Index { timesteps: 1000 };
    let net = flow_net(&frozen, Parameterization::Velocity, time);
    let s = CPigfm::new(params(10, 20.0, 0.2, 0.6, JacobianTerm::Derived)).unwrap();
    assert_eq!(s.nfe(), 10);
    assert_eq!(s.name(), "c-pigfm");
    run(&s, &net, vec![problem(&op, &[1.0, 2.0], &[0.0, 0.0])]);
    assert_eq!(net.forwards(), 10);
    assert_eq!(net.vjps(), 10);
    let times = frozen.times.lock().unwrap().clone();
    assert_eq!(times.len(), 20); // one forward and one VJP per step
    for (i, pair) in times.chunks(2).enumerate() {
        let want = 999.0 * (0.6 + 0.04 * i as f64);
        assert!((pair[0] - want).abs() < 1e-9 && (pair[1] - want).abs() < 1e-9);
        assert!(pair[0] > 0.0 && pair[0] < 999.0);
    }

    // identity Jacobian mode: no VJP and no second forward.
    let frozen = Frozen::new(img(&[0.1, 0.2]), img(&[5.0, 5.0]));
    let net = Network::new(
        &frozen,
        ModelKind::Flow,
        Parameterization::Velocity,
        TimeInput::Unit,
        JacobianMode::Identity,
    );
    run(&s, &net, vec![problem(&op, &[1.0, 2.0], &[0.0, 0.0])]);
    assert_eq!((net.forwards(), net.vjps()), (10, 0));
}

// ---------------------------------------------------------------------------------------------------------
// Gaussian toy (§14.3 item 5)

/// Data x₁ ~ N(mean, diag(var)) per coordinate, H = diag(s). Closed forms with S = t² l + (1 − t)²:
/// v = [m(1 − t) + x(t l − 1 + t)]/S (finite at t = 1) and J_v = (t l − 1 + t)/S.
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
            // two measured coordinates (one with large data variance), two in the null space
            s: vec![1.0, 0.5, 0.0, 0.0],
            mean: vec![0.3, -0.2, 0.1, 0.4],
            var: vec![4.0, 1.0, 1.0, 2.0],
            x_true: vec![1.7, -0.6, 0.5, -1.0],
            z: vec![0.8, -1.1, 0.6, -0.3],
        }
    }
    fn op(&self) -> OperatorRef {
        diag(&self.s)
    }
    fn oracle(&self, param: Parameterization) -> GaussianFlow {
        let prior =
            GaussianPrior::new(Arc::new(IdentityBasis), img(&self.mean), img(&self.var)).unwrap();
        GaussianFlow::new(prior, TimeInput::Unit, param).unwrap()
    }
    fn problem(&self) -> Problem {
        problem(&self.op(), &self.x_true, &self.z)
    }
    fn hy(&self) -> Vec<f64> {
        self.s
            .iter()
            .zip(&self.x_true)
            .map(|(&s, &x)| if s != 0.0 { x } else { 0.0 })
            .collect()
    }
    fn v_jv(&self, j: usize, t: f64, x: f64) -> (f64, f64) {
        let (m, l) = (self.mean[j], self.var[j]);
        let s = t * t * l + (1.0 - t).powi(2);
        (
            (m * (1.0 - t) + x * (t * l - 1.0 + t)) / s,
            (t * l - 1.0 + t) / s,
        )
    }
    /// RK4 solution at t = 1 of dx/dt = v + wγ[m + jac·(1 − t) J_vᵀ m], m = H†y − P x̂₁, from
    /// x₀ = st H†y + (1 − st) z.
    fn reference(&self, w: f64, st: f64, with_jv: bool) -> Img {
        let hy = self.hy();
        let f = |t: f64, x: &[f64]| -> Vec<f64> {
            (0..x.len())
                .map(|j| {
                    let (v, jv) = self.v_jv(j, t, x[j]);
                    let p = f64::from(self.s[j] != 0.0);
                    let m = hy[j] - p * (x[j] + (1.0 - t) * v);
                    let jac = if with_jv { (1.0 - t) * jv * m } else { 0.0 };
                    v + w * t * (1.0 - t) * (m + jac)
                })
                .collect()
        };
        let x0: Vec<f64> = (0..hy.len())
            .map(|j| st * hy[j] + (1.0 - st) * self.z[j])
            .collect();
        img(&rk4(f, &x0, st, 1.0, 20_000))
    }
}

/// The oracle's VJP, which the convergence tests rely on, agrees with central differences of its output
/// and with the closed-form J_v above.
#[test]
fn gaussian_flow_oracle_vjp_matches_finite_differences() {
    let toy = Toy::new();
    for param in [Parameterization::Velocity, Parameterization::X0] {
        let oracle = toy.oracle(param);
        let x = img(&[0.4, -0.9, 1.3, 0.2]);
        let cot = img(&[1.0, -0.5, 0.25, 2.0]);
        for t in [0.3, 0.6, 0.95] {
            let one = |x: &Img| x.clone().insert_axis(Axis(0));
            let (_, g) = oracle.vjp(one(&x).view(), &[t], one(&cot).view()).unwrap();
            let h = 1e-6;
            for j in 0..4 {
                let mut e = Img::zeros((1, 1, 4));
                e[[0, 0, j]] = h;
                let fp = oracle.predict(one(&(&x + &e)).view(), &[t]).unwrap();
                let fm = oracle.predict(one(&(&x - &e)).view(), &[t]).unwrap();
                // diagonal Jacobian: (Jᵀ cot)_j = J_jj cot_j
                let jj = (fp[[0, 0, 0, j]] - fm[[0, 0, 0, j]]) / (2.0 * h);
                let want = jj * cot[[0, 0, j]];
                assert!(
                    (g[[0, 0, 0, j]] - want).abs() < 1e-7,
                    "{param:?} t {t} j {j}"
                );
                if param == Parameterization::Velocity {
                    let (_, jv) = toy.v_jv(j, t, x[[0, 0, j]]);
                    assert!((jj - jv).abs() < 1e-7, "closed-form J_v, t {t} j {j}");
                }
            }
        }
    }
}

#[test]
fn gaussian_toy_converges_at_first_order() {
    let toy = Toy::new();
    let oracle = toy.oracle(Parameterization::Velocity);
    let net = flow_net(&oracle, Parameterization::Velocity, TimeInput::Unit);
    let (w, lambda, st) = (20.0, 0.2, 0.6);
    let with_jv = toy.reference(w, st, true);
    let without_jv = toy.reference(w, st, false);
    // The two ODEs end at visibly different points.
    let gap = max_abs(&with_jv, &without_jv);
    eprintln!("gap {gap}");
    assert!(gap > 0.02, "references too close: {gap}");

    let nfes = [5, 10, 20, 50, 100, 200];
    for (mode, target, other) in [
        (JacobianTerm::Derived, &with_jv, &without_jv),
        (JacobianTerm::Official, &without_jv, &with_jv),
    ] {
        let errs: Vec<f64> = nfes
            .iter()
            .map(|&k| {
                let s = CPigfm::new(params(k, w, lambda, st, mode)).unwrap();
                max_abs(&run(&s, &net, vec![toy.problem()])[0], target)
            })
            .collect();
        let slope = loglog_slope(&nfes, &errs);
        eprintln!("{mode:?}: errors {errs:?}, slope {slope:.3}");
        assert!(
            (-1.25..=-0.75).contains(&slope),
            "{mode:?}: slope {slope}, errors {errs:?}"
        );
        assert!(errs.windows(2).all(|e| e[1] < e[0]), "{mode:?}: {errs:?}");
        // At NFE 200 the sampler sits on its own ODE, far from the other one.
        let s = CPigfm::new(params(200, w, lambda, st, mode)).unwrap();
        let out = &run(&s, &net, vec![toy.problem()])[0];
        assert!(errs[5] < 0.05 * gap, "{mode:?}: {} vs gap {gap}", errs[5]);
        assert!(
            max_abs(out, other) > 0.5 * gap,
            "{mode:?} ends on the wrong ODE"
        );
    }
}

/// An x̂₁-parameterized network gives the same samples as the velocity network it is equivalent to.
#[test]
fn x1_parameterization_matches_velocity() {
    let toy = Toy::new();
    let (ov, ox) = (
        toy.oracle(Parameterization::Velocity),
        toy.oracle(Parameterization::X0),
    );
    let nv = flow_net(&ov, Parameterization::Velocity, TimeInput::Unit);
    let nx = flow_net(&ox, Parameterization::X0, TimeInput::Unit);
    for mode in [JacobianTerm::Derived, JacobianTerm::Official] {
        let s = CPigfm::new(params(10, 20.0, 0.2, 0.6, mode)).unwrap();
        let a = &run(&s, &nv, vec![toy.problem()])[0];
        let b = &run(&s, &nx, vec![toy.problem()])[0];
        assert!(max_abs(a, b) < 1e-10 * (1.0 + norm(a)), "{mode:?}");
    }
}

/// Noiseless data consistency: for strong w the output nearly satisfies H x = y.
#[test]
fn strong_guidance_gives_data_consistency() {
    let toy = Toy::new();
    let oracle = toy.oracle(Parameterization::Velocity);
    let net = flow_net(&oracle, Parameterization::Velocity, TimeInput::Unit);
    let op = toy.op();
    let y = op.forward(&img(&toy.x_true));
    let mut residuals = Vec::new();
    for w in [0.0, 20.0, 100.0] {
        let s = CPigfm::new(params(10, w, 0.2, 0.6, JacobianTerm::Derived)).unwrap();
        let x = &run(&s, &net, vec![toy.problem()])[0];
        residuals.push(norm(&(op.forward(x) - &y)) / norm(&y));
    }
    eprintln!("relative residuals for w = 0, 20, 100: {residuals:?}");
    assert!(residuals[0] > 0.05, "w = 0 should not be consistent");
    assert!(
        residuals.windows(2).all(|r| r[1] < 0.5 * r[0]),
        "{residuals:?}"
    );
    assert!(residuals[2] < 1e-2, "{residuals:?}");
}

// ---------------------------------------------------------------------------------------------------------
// batches

/// A batch of three problems (different operators, measurements, noise) equals each run alone.
#[test]
fn batch_of_three_equals_each_alone() {
    let prior = GaussianPrior::new(
        Arc::new(IdentityBasis),
        img(&[0.1, -0.2, 0.3, 0.0]),
        img(&[1.5, 1.0, 0.5, 2.0]),
    )
    .unwrap();
    let oracle = GaussianFlow::new(prior, TimeInput::Unit, Parameterization::Velocity).unwrap();
    let net = flow_net(&oracle, Parameterization::Velocity, TimeInput::Unit);
    let make = |i: usize| -> Problem {
        let ops = [
            [1.0, 0.0, 0.5, 0.0],
            [0.0, 2.0, 0.0, 1.0],
            [1.0, 1.0, 1.0, 0.0],
        ];
        let op = diag(&ops[i]);
        let x = [0.3 * i as f64, -0.5, 1.0, 0.2 + i as f64];
        Problem::new(op.clone(), op.forward(&img(&x)), 0.0, 100 + i as u64).unwrap()
    };
    for mode in [JacobianTerm::Derived, JacobianTerm::Official] {
        let s = CPigfm::new(params(6, 20.0, 0.2, 0.6, mode)).unwrap();
        let batch = run(&s, &net, (0..3).map(make).collect());
        for (i, b) in batch.iter().enumerate() {
            let alone = &run(&s, &net, vec![make(i)])[0];
            assert!(max_abs(b, alone) < 1e-14, "{mode:?} sample {i}");
        }
        assert!(max_abs(&batch[0], &batch[1]) > 1e-3);
    }
}

// ---------------------------------------------------------------------------------------------------------
// configuration

#[test]
fn config_defaults_and_variants() {
    let flow = ModelSchedule::Flow;
    let cfg = SamplerConfig::new(SamplerName::CPigfm);
    let s = CPigfm::from_config(&cfg, &flow).unwrap();
    assert_eq!(
        *s.params(),
        params(5, 20.0, 0.2, 0.6, JacobianTerm::Derived)
    );
    assert_eq!(samplers::build(&cfg, &flow).unwrap().nfe(), 5);

    let mut cfg = SamplerConfig::new(SamplerName::CPigfm);
    cfg.variant = Some("official".parse().unwrap());
    cfg.steps = Some(10);
    cfg.guidance = Some(3.0);
    cfg.lambda = Some(0.0);
    cfg.start_time = Some(0.25);
    let s = CPigfm::from_config(&cfg, &flow).unwrap();
    assert_eq!(
        *s.params(),
        params(10, 3.0, 0.0, 0.25, JacobianTerm::Official)
    );
    assert!((s.delta() - 0.075).abs() < 1e-15);
}

#[test]
fn config_errors_name_the_value() {
    let flow = ModelSchedule::Flow;
    let err = |f: &dyn Fn(&mut SamplerConfig)| -> String {
        let mut cfg = SamplerConfig::new(SamplerName::CPigfm);
        f(&mut cfg);
        CPigfm::from_config(&cfg, &flow).unwrap_err().to_string()
    };
    assert!(err(&|c| c.steps = Some(0)).contains("steps 0"));
    assert!(err(&|c| c.start_time = Some(0.0)).contains("start_time 0"));
    assert!(err(&|c| c.start_time = Some(1.0)).contains("start_time 1"));
    assert!(err(&|c| c.guidance = Some(f64::NAN)).contains("guidance"));
    assert!(err(&|c| c.guidance = Some(-1.0)).contains("guidance -1"));
    assert!(err(&|c| c.variant = Some("discrete".parse().unwrap())).contains("discrete"));
    assert!(err(&|c| c.eta = Some(0.5)).contains("eta 0.5"));
    assert!(err(&|c| c.end_time = Some(0.9)).contains("end_time"));
    let diffusion = ModelSchedule::ddpm_linear_default();
    let e = CPigfm::from_config(&SamplerConfig::new(SamplerName::CPigfm), &diffusion).unwrap_err();
    assert!(matches!(e, Error::Unsupported(_)), "{e}");
}

#[test]
fn diffusion_network_is_rejected() {
    let frozen = Frozen::new(img(&[0.0]), img(&[0.0]));
    let net = Network::new(
        &frozen,
        ModelKind::Diffusion,
        Parameterization::Eps,
        TimeInput::Unit,
        JacobianMode::Exact,
    );
    let s = CPigfm::new(CPigfmParams::default()).unwrap();
    let op = diag(&[1.0]);
    let mut ps = vec![problem(&op, &[1.0], &[0.0])];
    assert!(s.sample(&net, &mut ps).is_err());
}
