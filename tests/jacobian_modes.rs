//! `Network`'s Jacobian modes on the analytic oracles (whose Jacobians are symmetric, so the central
//! difference J·m equals Jᵀm): exact and finite-difference agree within the FD truncation error, which
//! falls like the step squared; identity drops J_net only; the NFE counters match each mode's cost.

use std::sync::Arc;

use conjure::model::analytic::{
    GaussianDiffusion, GaussianFlow, GaussianMixture, GaussianPrior, IdentityBasis,
    MixtureDiffusion, MixtureFlow, NoiseLevel,
};
use conjure::model::{Denoiser, JacobianMode, ModelKind, Network, Parameterization};
use conjure::operators::Img;
use conjure::schedules::{TimeInput, VpContinuous};
use ndarray::Array3;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const SHAPE: (usize, usize, usize) = (1, 4, 4);

fn randn(rng: &mut ChaCha8Rng, scale: f64) -> Img {
    Array3::from_shape_fn(SHAPE, |_| {
        let z: f64 = StandardNormal.sample(rng);
        scale * z
    })
}

fn norm(x: &Img) -> f64 {
    x.iter().map(|v| v * v).sum::<f64>().sqrt()
}

/// max over images of ‖a − b‖ / ‖b‖.
fn rel_err(a: &[Img], b: &[Img]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| norm(&(x - y)) / norm(y))
        .fold(0.0, f64::max)
}

fn gaussian_prior(rng: &mut ChaCha8Rng) -> GaussianPrior {
    let var = randn(rng, 1.0).mapv(|v| 0.1 + v * v);
    GaussianPrior::new(Arc::new(IdentityBasis), randn(rng, 0.5), var).unwrap()
}

fn mixture(rng: &mut ChaCha8Rng) -> GaussianMixture {
    let means = (0..3).map(|_| randn(rng, 0.5)).collect();
    GaussianMixture::new(vec![0.3, 0.3, 0.4], means, vec![0.3, 0.5, 0.8]).unwrap()
}

/// An oracle, its parameterization, and whether it is nonlinear.
type Oracle = (Box<dyn Denoiser>, Parameterization, bool);

/// One diffusion oracle with its parameterization, and whether it is nonlinear.
fn diffusion_oracles(rng: &mut ChaCha8Rng) -> Vec<Oracle> {
    let level = NoiseLevel::VpUnit(VpContinuous::default());
    let prior = gaussian_prior(rng);
    let mix = mixture(rng);
    let mut out: Vec<Oracle> = Vec::new();
    for p in [Parameterization::Eps, Parameterization::X0] {
        out.push((
            Box::new(GaussianDiffusion::new(prior.clone(), level.clone(), p).unwrap()),
            p,
            false,
        ));
        out.push((
            Box::new(MixtureDiffusion::new(mix.clone(), level.clone(), p).unwrap()),
            p,
            true,
        ));
    }
    out
}

fn flow_oracles(rng: &mut ChaCha8Rng) -> Vec<Oracle> {
    let prior = gaussian_prior(rng);
    let mix = mixture(rng);
    let mut out: Vec<Oracle> = Vec::new();
    for p in [Parameterization::Velocity, Parameterization::X0] {
        out.push((
            Box::new(GaussianFlow::new(prior.clone(), TimeInput::Unit, p).unwrap()),
            p,
            false,
        ));
        out.push((
            Box::new(MixtureFlow::new(mix.clone(), TimeInput::Unit, p).unwrap()),
            p,
            true,
        ));
    }
    out
}

/// States x = ν x₀ + ρ z for a batch of 3 images, and cotangents m of assorted scales.
fn states(rng: &mut ChaCha8Rng, nu: f64, rho: f64) -> (Vec<Img>, Vec<Img>) {
    let xs = (0..3)
        .map(|_| &randn(rng, 0.5) * nu + &(randn(rng, 1.0) * rho))
        .collect();
    let ms = [1.0, 1e-3, 30.0].iter().map(|&s| randn(rng, s)).collect();
    (xs, ms)
}

#[test]
fn exact_and_finite_difference_agree_for_diffusion() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let vp = VpContinuous::default();
    for (den, param, nonlinear) in diffusion_oracles(&mut rng) {
        for t in [0.1, 0.5, 0.9] {
            let (mu, sigma) = (vp.mu(t), vp.sigma(t));
            let (xs, ms) = states(&mut rng, mu, sigma);
            let net = |mode, fd_eps| {
                let mut n = Network::new(
                    den.as_ref(),
                    ModelKind::Diffusion,
                    param,
                    TimeInput::Unit,
                    mode,
                );
                n.fd_eps = fd_eps;
                n
            };
            let exact = net(JacobianMode::Exact, 1e-3);
            let (e_ex, g_ex) = exact.eps_vjp(&xs, t, mu, sigma, &ms).unwrap();
            let (r_ex, rg_ex) = exact.raw_vjp(&xs, t, &ms).unwrap();
            let mut errs = Vec::new();
            for fd_eps in [1e-2, 1e-3] {
                let fd = net(JacobianMode::FiniteDifference, fd_eps);
                let (e_fd, g_fd) = fd.eps_vjp(&xs, t, mu, sigma, &ms).unwrap();
                let (r_fd, rg_fd) = fd.raw_vjp(&xs, t, &ms).unwrap();
                assert!(rel_err(&e_fd, &e_ex) < 1e-14 && rel_err(&r_fd, &r_ex) < 1e-14);
                errs.push((rel_err(&g_fd, &g_ex), rel_err(&rg_fd, &rg_ex)));
            }
            let what = format!("{} {param:?} t={t}", den.engine());
            check_fd_errors(&errs, nonlinear, &what);
        }
    }
}

#[test]
fn exact_and_finite_difference_agree_for_flows() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    for (den, param, nonlinear) in flow_oracles(&mut rng) {
        for t in [0.1, 0.5, 0.9] {
            let (xs, ms) = states(&mut rng, t, 1.0 - t);
            let net = |mode, fd_eps| {
                let mut n =
                    Network::new(den.as_ref(), ModelKind::Flow, param, TimeInput::Unit, mode);
                n.fd_eps = fd_eps;
                n
            };
            let exact = net(JacobianMode::Exact, 1e-3);
            let (v_ex, g_ex) = exact.velocity_vjp(&xs, t, &ms).unwrap();
            let (r_ex, rg_ex) = exact.raw_vjp(&xs, t, &ms).unwrap();
            let mut errs = Vec::new();
            for fd_eps in [1e-2, 1e-3] {
                let fd = net(JacobianMode::FiniteDifference, fd_eps);
                let (v_fd, g_fd) = fd.velocity_vjp(&xs, t, &ms).unwrap();
                let (r_fd, rg_fd) = fd.raw_vjp(&xs, t, &ms).unwrap();
                assert!(rel_err(&v_fd, &v_ex) < 1e-14 && rel_err(&r_fd, &r_ex) < 1e-14);
                errs.push((rel_err(&g_fd, &g_ex), rel_err(&rg_fd, &rg_ex)));
            }
            let what = format!("{} {param:?} t={t}", den.engine());
            check_fd_errors(&errs, nonlinear, &what);
        }
    }
}

/// `errs` = [(error of the sampler-facing VJP, error of raw_vjp)] at fd_eps = 1e-2 and 1e-3.
/// Linear oracles: central differences are exact up to rounding. Nonlinear ones: the error is the O(h²)
/// truncation term, so it is small at the default step and falls ~100× when the step falls 10×.
fn check_fd_errors(errs: &[(f64, f64)], nonlinear: bool, what: &str) {
    let (coarse, fine) = (errs[0], errs[1]);
    if !nonlinear {
        assert!(
            coarse.0 < 1e-9 && coarse.1 < 1e-9 && fine.0 < 1e-9 && fine.1 < 1e-9,
            "{what}: linear oracle, FD errors {errs:?}"
        );
        return;
    }
    for (c, f) in [(coarse.0, fine.0), (coarse.1, fine.1)] {
        assert!(f < 1e-4, "{what}: FD error {f} at the default step");
        // Second order: 10× smaller step, ≈100× smaller error (unless already at rounding level).
        assert!(
            f < 1e-10 || (c / f > 50.0 && c / f < 200.0),
            "{what}: FD errors {c} (fd_eps 1e-2) vs {f} (1e-3) do not scale like h²"
        );
    }
}

#[test]
fn identity_mode_drops_only_the_network_jacobian() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let vp = VpContinuous::default();
    let t = 0.4;
    let (mu, sigma) = (vp.mu(t), vp.sigma(t));
    for (den, param, _) in diffusion_oracles(&mut rng) {
        let (xs, ms) = states(&mut rng, mu, sigma);
        let id = Network::new(
            den.as_ref(),
            ModelKind::Diffusion,
            param,
            TimeInput::Unit,
            JacobianMode::Identity,
        );
        let ex = Network::new(
            den.as_ref(),
            ModelKind::Diffusion,
            param,
            TimeInput::Unit,
            JacobianMode::Exact,
        );
        let (_, raw_g) = id.raw_vjp(&xs, t, &ms).unwrap();
        assert!(raw_g.iter().all(|g| g.iter().all(|&v| v == 0.0)));
        let (e_id, g_id) = id.eps_vjp(&xs, t, mu, sigma, &ms).unwrap();
        let (e_ex, g_ex) = ex.eps_vjp(&xs, t, mu, sigma, &ms).unwrap();
        assert!(rel_err(&e_id, &e_ex) < 1e-14);
        // ε = (x − μ x̂₀)/σ keeps its identity part m/σ; an ε network has none.
        let want: Vec<Img> = ms
            .iter()
            .map(|m| match param {
                Parameterization::X0 => m / sigma,
                _ => Img::zeros(SHAPE),
            })
            .collect();
        for (g, w) in g_id.iter().zip(&want) {
            assert!(norm(&(g - w)) <= 1e-14 * (1.0 + norm(w)));
        }
        // …and that differs from the exact product, so identity really dropped something.
        assert!(rel_err(&g_id, &g_ex) > 1e-3);
    }
    for (den, param, _) in flow_oracles(&mut rng) {
        let (xs, ms) = states(&mut rng, t, 1.0 - t);
        let id = Network::new(
            den.as_ref(),
            ModelKind::Flow,
            param,
            TimeInput::Unit,
            JacobianMode::Identity,
        );
        let (_, g_id) = id.velocity_vjp(&xs, t, &ms).unwrap();
        for (g, m) in g_id.iter().zip(&ms) {
            // v = (x̂₁ − x)/(1 − t) keeps −m/(1 − t); a velocity network has none.
            let w = match param {
                Parameterization::X0 => -m / (1.0 - t),
                _ => Img::zeros(SHAPE),
            };
            assert!(norm(&(g - &w)) <= 1e-14 * (1.0 + norm(&w)));
        }
    }
}

#[test]
fn nfe_counters_match_each_mode() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mix = mixture(&mut rng);
    let den = MixtureDiffusion::new(
        mix,
        NoiseLevel::VpUnit(VpContinuous::default()),
        Parameterization::Eps,
    )
    .unwrap();
    let vp = VpContinuous::default();
    let (mu, sigma) = (vp.mu(0.5), vp.sigma(0.5));
    let (xs, ms) = states(&mut rng, mu, sigma);
    let n = xs.len();
    // (mode, forwards per image, VJPs per image). An exact VJP evaluation runs the forward pass inside the
    // VJP graph and returns its output, so it counts as one VJP and no separate forward.
    for (mode, fwd, vjp) in [
        (JacobianMode::Exact, 0, 1),
        (JacobianMode::FiniteDifference, 3, 0),
        (JacobianMode::Identity, 1, 0),
    ] {
        let net = Network::new(
            &den,
            ModelKind::Diffusion,
            Parameterization::Eps,
            TimeInput::Unit,
            mode,
        );
        net.validate().unwrap();
        net.eps_vjp(&xs, 0.5, mu, sigma, &ms).unwrap();
        assert_eq!((net.forwards(), net.vjps()), (fwd * n, vjp * n), "{mode:?}");
        net.raw_vjp(&xs, 0.5, &ms).unwrap();
        assert_eq!(
            (net.forwards(), net.vjps()),
            (2 * fwd * n, 2 * vjp * n),
            "{mode:?}"
        );
    }
}

#[test]
fn finite_difference_of_a_zero_cotangent_is_zero() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let den = MixtureFlow::new(
        mixture(&mut rng),
        TimeInput::Unit,
        Parameterization::Velocity,
    )
    .unwrap();
    let net = Network::new(
        &den,
        ModelKind::Flow,
        Parameterization::Velocity,
        TimeInput::Unit,
        JacobianMode::FiniteDifference,
    );
    let (xs, _) = states(&mut rng, 0.5, 0.5);
    let zeros = vec![Img::zeros(SHAPE); xs.len()];
    let (_, g) = net.velocity_vjp(&xs, 0.5, &zeros).unwrap();
    assert!(g.iter().all(|g| g.iter().all(|&v| v == 0.0)));
}

/// Whole samplers: on symmetric-Jacobian oracles, `exact` and `finite-difference` restorations agree (same
/// seeds), for every sampler that uses a network Jacobian; `identity` differs (so the comparison can fail).
#[test]
fn samplers_agree_across_exact_and_finite_difference_modes() {
    use conjure::operators::{Diagonal, OperatorRef};
    use conjure::samplers::{build, ModelSchedule, Problem, SamplerConfig, SamplerName};

    let mut rng = ChaCha8Rng::seed_from_u64(41);
    let mix = mixture(&mut rng);
    // Half the pixels measured with gain 1, a quarter with gain 0.5, the rest missing.
    let gains = Array3::from_shape_fn(SHAPE, |(_, i, j)| [1.0, 1.0, 0.5, 0.0][(i * 4 + j) % 4]);
    let op: OperatorRef = Arc::new(Diagonal::new(gains).unwrap());
    let truth = randn(&mut rng, 0.5);
    let y = op.forward(&truth);
    let level = NoiseLevel::VpUnit(VpContinuous::default());
    let ddpm_level =
        NoiseLevel::DdpmIndex(conjure::schedules::DdpmDiscrete::linear(1e-4, 0.02, 1000).unwrap());
    let diffusion = ModelSchedule::ddpm_linear_default();

    let run = |name: SamplerName, mode: JacobianMode| -> Vec<Img> {
        let mut cfg = SamplerConfig::new(name);
        cfg.jacobian = mode;
        cfg.steps = Some(if name == SamplerName::Dps { 20 } else { 5 });
        let (den, kind, param, time, sched): (Box<dyn Denoiser>, _, _, _, _) = if name.needs_flow()
        {
            (
                Box::new(
                    MixtureFlow::new(mix.clone(), TimeInput::Unit, Parameterization::Velocity)
                        .unwrap(),
                ),
                ModelKind::Flow,
                Parameterization::Velocity,
                TimeInput::Unit,
                ModelSchedule::Flow,
            )
        } else if name == SamplerName::Dps {
            let t = ddpm_level.time_input();
            let d = MixtureDiffusion::new(mix.clone(), ddpm_level.clone(), Parameterization::Eps)
                .unwrap();
            (
                Box::new(d),
                ModelKind::Diffusion,
                Parameterization::Eps,
                t,
                diffusion.clone(),
            )
        } else {
            let t = level.time_input();
            let d =
                MixtureDiffusion::new(mix.clone(), level.clone(), Parameterization::Eps).unwrap();
            (
                Box::new(d),
                ModelKind::Diffusion,
                Parameterization::Eps,
                t,
                diffusion.clone(),
            )
        };
        let net = Network::new(den.as_ref(), kind, param, time, mode);
        let sampler = build(&cfg, &sched).unwrap();
        let mut problems = vec![Problem::new(op.clone(), y.clone(), 0.0, 7).unwrap()];
        sampler.sample(&net, &mut problems).unwrap()
    };

    for name in [
        SamplerName::CPigdm,
        SamplerName::Pigdm,
        SamplerName::Dps,
        SamplerName::CPigfm,
        SamplerName::Pigfm,
    ] {
        let exact = run(name, JacobianMode::Exact);
        let fd = run(name, JacobianMode::FiniteDifference);
        let id = run(name, JacobianMode::Identity);
        let e_fd = rel_err(&fd, &exact);
        let e_id = rel_err(&id, &exact);
        eprintln!(
            "{name:?}: finite-difference {e_fd:.2e}, identity {e_id:.2e} (relative to exact)"
        );
        // Central differences are O(h²) per product; DPS compounds 20 of them through ζ/‖r‖ steps.
        assert!(e_fd < 1e-3, "{name:?}: finite-difference vs exact {e_fd}");
        assert!(
            e_id > 100.0 * e_fd.max(1e-9),
            "{name:?}: identity should differ ({e_id} vs {e_fd})"
        );
    }
}
