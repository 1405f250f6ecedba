//! The analytic oracles (docs/samplers.md §14.3) against independent references: central finite differences of
//! their forwards, the log density of the noised mixture, the single-Gaussian oracles, and a dense Bayesian
//! posterior computed with nalgebra.

// Component loops index several parallel arrays (weights, means, variances, dense results).
#![allow(clippy::needless_range_loop)]

use std::sync::Arc;

use conjure::model::analytic::{
    GaussianDiffusion, GaussianFlow, GaussianMixture, GaussianPrior, IdentityBasis,
    MixtureDiffusion, MixtureFlow, NoiseLevel,
};
use conjure::model::{Denoiser, Parameterization};
use conjure::operators::{Img, LinearOperator, OperatorRef};
use conjure::schedules::{DdpmDiscrete, TimeInput, VpContinuous};
use nalgebra::{DMatrix, DVector, SymmetricEigen};
use ndarray::{Array3, Array4, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const SHAPE: (usize, usize, usize) = (2, 3, 3);

fn randn(rng: &mut ChaCha8Rng, shape: (usize, usize, usize)) -> Img {
    Array3::from_shape_fn(shape, |_| StandardNormal.sample(rng))
}

fn dot(a: &Img, b: &Img) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn batch(xs: &[&Img]) -> Array4<f64> {
    let v: Vec<_> = xs.iter().map(|x| x.view()).collect();
    ndarray::stack(Axis(0), &v).unwrap()
}

fn max_abs_diff(a: &Img, b: &Img) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// A 3-component mixture whose components overlap, so the responsibilities are far from 0/1.
fn mixture(rng: &mut ChaCha8Rng) -> GaussianMixture {
    let means = (0..3).map(|_| randn(rng, SHAPE) * 0.6).collect();
    GaussianMixture::new(vec![0.2, 0.5, 0.3], means, vec![0.3, 1.0, 2.0]).unwrap()
}

/// A point x = ν x₀ + ρ z in the region where several components matter: on the segment between ν m₀
/// and ν m₁ (plus a little noise), where the largest responsibility is smallest.
fn probe(mix: &GaussianMixture, rng: &mut ChaCha8Rng, nu: f64, rho: f64) -> Img {
    let z = randn(rng, SHAPE) * (0.05 * rho);
    let mut best: Option<(f64, Img)> = None;
    for i in 0..=40 {
        let lam = i as f64 / 40.0;
        let x = (&mix.means[0] * lam + &(&mix.means[1] * (1.0 - lam))) * nu + &z;
        let g = mix.responsibilities(&x, nu, rho);
        let top = g.iter().cloned().fold(0.0, f64::max);
        if best.as_ref().is_none_or(|(b, _)| top < *b) {
            best = Some((top, x));
        }
    }
    let (top, x) = best.unwrap();
    assert!(
        top < 0.9,
        "no probe point with mixed responsibilities (max {top})"
    );
    x
}

/// ⟨Jᵀu, v⟩ against ⟨u, (f(x + h v) − f(x − h v)) / 2h⟩ for several random u, v; also checks that
/// `vjp` returns the same output as `predict`.
fn check_vjp_fd(den: &dyn Denoiser, x: &Img, t: f64, rng: &mut ChaCha8Rng, what: &str) {
    let out = den.predict(batch(&[x]).view(), &[t]).unwrap();
    for _ in 0..4 {
        let u = randn(rng, x.dim());
        let v = randn(rng, x.dim());
        let (o, g) = den
            .vjp(batch(&[x]).view(), &[t], batch(&[&u]).view())
            .unwrap();
        assert!(
            (&o - &out).iter().all(|d| d.abs() < 1e-14),
            "{what}: vjp output differs from predict"
        );
        let g = g.index_axis(Axis(0), 0).to_owned();
        let h = 1e-5;
        let fp = den
            .predict(batch(&[&(x + &(&v * h))]).view(), &[t])
            .unwrap();
        let fm = den
            .predict(batch(&[&(x - &(&v * h))]).view(), &[t])
            .unwrap();
        let jv = ((fp - fm) / (2.0 * h)).index_axis(Axis(0), 0).to_owned();
        let lhs = dot(&g, &v);
        let rhs = dot(&u, &jv);
        let scale = 1.0 + rhs.abs();
        assert!(
            (lhs - rhs).abs() < 1e-7 * scale,
            "{what} at t_net={t}: <J^T u, v> = {lhs} vs FD <u, J v> = {rhs}"
        );
    }
}

#[test]
fn mixture_diffusion_vjps_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mix = mixture(&mut rng);
    let vp = VpContinuous::default();
    let ddpm = DdpmDiscrete::linear(1e-4, 0.02, 1000).unwrap();
    for param in [Parameterization::Eps, Parameterization::X0] {
        for (level, t_net) in [
            (NoiseLevel::VpUnit(vp), 0.2),
            (NoiseLevel::VpUnit(vp), 0.6),
            (NoiseLevel::DdpmIndex(ddpm.clone()), 150.0),
        ] {
            let (mu, sigma) = level.mu_sigma(t_net);
            let x = probe(&mix, &mut rng, mu, sigma);
            let den = MixtureDiffusion::new(mix.clone(), level, param).unwrap();
            check_vjp_fd(&den, &x, t_net, &mut rng, &format!("mixture {param:?}"));
        }
    }
}

#[test]
fn mixture_flow_vjps_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mix = mixture(&mut rng);
    for param in [Parameterization::Velocity, Parameterization::X0] {
        for (time, t_net, t) in [
            (TimeInput::Unit, 0.3, 0.3),
            (TimeInput::Unit, 0.8, 0.8),
            (TimeInput::Index { timesteps: 1000 }, 499.5, 0.5),
        ] {
            let x = probe(&mix, &mut rng, t, 1.0 - t);
            let den = MixtureFlow::new(mix.clone(), time, param).unwrap();
            check_vjp_fd(
                &den,
                &x,
                t_net,
                &mut rng,
                &format!("mixture flow {param:?}"),
            );
        }
    }
}

#[test]
fn gaussian_oracle_vjps_match_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mean = randn(&mut rng, SHAPE);
    let var = randn(&mut rng, SHAPE).mapv(|v| 0.2 + v * v);
    let prior = GaussianPrior::new(Arc::new(IdentityBasis), mean, var).unwrap();
    let vp = VpContinuous::default();
    for param in [Parameterization::Eps, Parameterization::X0] {
        let den = GaussianDiffusion::new(prior.clone(), NoiseLevel::VpUnit(vp), param).unwrap();
        let x = randn(&mut rng, SHAPE);
        check_vjp_fd(&den, &x, 0.4, &mut rng, &format!("gaussian {param:?}"));
    }
    for param in [Parameterization::Velocity, Parameterization::X0] {
        let den = GaussianFlow::new(prior.clone(), TimeInput::Unit, param).unwrap();
        let x = randn(&mut rng, SHAPE);
        check_vjp_fd(&den, &x, 0.4, &mut rng, &format!("gaussian flow {param:?}"));
    }
}

#[test]
fn mixture_eps_jacobian_is_symmetric() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mix = mixture(&mut rng);
    let level = NoiseLevel::VpUnit(VpContinuous::default());
    let (mu, sigma) = level.mu_sigma(0.3);
    let x = probe(&mix, &mut rng, mu, sigma);
    for param in [Parameterization::Eps, Parameterization::X0] {
        let den = MixtureDiffusion::new(mix.clone(), level.clone(), param).unwrap();
        let u = randn(&mut rng, SHAPE);
        let v = randn(&mut rng, SHAPE);
        let jtu = den
            .vjp(batch(&[&x]).view(), &[0.3], batch(&[&u]).view())
            .unwrap()
            .1
            .index_axis(Axis(0), 0)
            .to_owned();
        let jtv = den
            .vjp(batch(&[&x]).view(), &[0.3], batch(&[&v]).view())
            .unwrap()
            .1
            .index_axis(Axis(0), 0)
            .to_owned();
        let (a, b) = (dot(&jtu, &v), dot(&jtv, &u));
        assert!(
            (a - b).abs() < 1e-12 * (1.0 + a.abs()),
            "{param:?}: <J^T u, v> = {a} vs <J^T v, u> = {b}"
        );
    }
}

#[test]
fn eps_and_x0_are_consistent() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mix = mixture(&mut rng);
    let level = NoiseLevel::VpUnit(VpContinuous::default());
    let eps = MixtureDiffusion::new(mix.clone(), level.clone(), Parameterization::Eps).unwrap();
    let x0 = MixtureDiffusion::new(mix.clone(), level.clone(), Parameterization::X0).unwrap();
    let vel = MixtureFlow::new(mix.clone(), TimeInput::Unit, Parameterization::Velocity).unwrap();
    let x1 = MixtureFlow::new(mix.clone(), TimeInput::Unit, Parameterization::X0).unwrap();
    for t in [0.05, 0.4, 0.9] {
        let (mu, sigma) = level.mu_sigma(t);
        let x = probe(&mix, &mut rng, mu, sigma);
        let e = eps.predict(batch(&[&x]).view(), &[t]).unwrap();
        let c = x0.predict(batch(&[&x]).view(), &[t]).unwrap();
        let recon = (&c * mu + &(&e * sigma)).index_axis(Axis(0), 0).to_owned();
        assert!(
            max_abs_diff(&recon, &x) < 1e-12,
            "x = mu x0 + sigma eps at t={t}"
        );

        let xf = probe(&mix, &mut rng, t, 1.0 - t);
        let v = vel.predict(batch(&[&xf]).view(), &[t]).unwrap();
        let c1 = x1.predict(batch(&[&xf]).view(), &[t]).unwrap();
        let v_ref = ((c1 - batch(&[&xf])) / (1.0 - t))
            .index_axis(Axis(0), 0)
            .to_owned();
        let v = v.index_axis(Axis(0), 0).to_owned();
        assert!(
            max_abs_diff(&v, &v_ref) < 1e-11,
            "v = (x1 - x)/(1 - t) at t={t}"
        );
    }
}

#[test]
fn flow_velocity_is_finite_at_t_one() {
    // At t = 1 the state is the data itself: E[x1 - z | x1] = x1.
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mix = mixture(&mut rng);
    let vel = MixtureFlow::new(mix, TimeInput::Unit, Parameterization::Velocity).unwrap();
    let x = randn(&mut rng, SHAPE);
    let v = vel.predict(batch(&[&x]).view(), &[1.0]).unwrap();
    assert!(max_abs_diff(&v.index_axis(Axis(0), 0).to_owned(), &x) < 1e-12);
}

/// (mixture oracle, single-Gaussian oracle, network time).
type OraclePair = (Box<dyn Denoiser>, Box<dyn Denoiser>, f64);

#[test]
fn one_component_mixture_equals_isotropic_gaussian_oracles() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let m = randn(&mut rng, SHAPE);
    let s2 = 0.7;
    let mix = GaussianMixture::new(vec![1.0], vec![m.clone()], vec![s2]).unwrap();
    let prior = GaussianPrior::new(
        Arc::new(IdentityBasis),
        m.clone(),
        Img::from_elem(SHAPE, s2),
    )
    .unwrap();
    let level = NoiseLevel::VpUnit(VpContinuous::default());
    let pairs: Vec<OraclePair> = vec![
        (
            Box::new(
                MixtureDiffusion::new(mix.clone(), level.clone(), Parameterization::Eps).unwrap(),
            ),
            Box::new(
                GaussianDiffusion::new(prior.clone(), level.clone(), Parameterization::Eps)
                    .unwrap(),
            ),
            0.35,
        ),
        (
            Box::new(
                MixtureDiffusion::new(mix.clone(), level.clone(), Parameterization::X0).unwrap(),
            ),
            Box::new(
                GaussianDiffusion::new(prior.clone(), level.clone(), Parameterization::X0).unwrap(),
            ),
            0.7,
        ),
        (
            Box::new(
                MixtureFlow::new(mix.clone(), TimeInput::Unit, Parameterization::Velocity).unwrap(),
            ),
            Box::new(
                GaussianFlow::new(prior.clone(), TimeInput::Unit, Parameterization::Velocity)
                    .unwrap(),
            ),
            0.45,
        ),
        (
            Box::new(MixtureFlow::new(mix.clone(), TimeInput::Unit, Parameterization::X0).unwrap()),
            Box::new(
                GaussianFlow::new(prior.clone(), TimeInput::Unit, Parameterization::X0).unwrap(),
            ),
            0.6,
        ),
    ];
    for (a, b, t) in pairs {
        let x = batch(&[&randn(&mut rng, SHAPE), &randn(&mut rng, SHAPE)]);
        let u = batch(&[&randn(&mut rng, SHAPE), &randn(&mut rng, SHAPE)]);
        let (oa, ga) = a.vjp(x.view(), &[t, t], u.view()).unwrap();
        let (ob, gb) = b.vjp(x.view(), &[t, t], u.view()).unwrap();
        let d = (&oa - &ob)
            .iter()
            .chain((&ga - &gb).iter())
            .fold(0.0f64, |m, v| m.max(v.abs()));
        assert!(
            d < 1e-12,
            "{} vs {} at t={t}: max diff {d}",
            a.engine(),
            b.engine()
        );
    }
}

#[test]
fn mixture_score_is_the_gradient_of_the_noised_log_density() {
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mix = mixture(&mut rng);
    let level = NoiseLevel::VpUnit(VpContinuous::default());
    let eps = MixtureDiffusion::new(mix.clone(), level.clone(), Parameterization::Eps).unwrap();
    for t in [0.1, 0.5] {
        let (mu, sigma) = level.mu_sigma(t);
        let x = probe(&mix, &mut rng, mu, sigma);
        let e = eps
            .predict(batch(&[&x]).view(), &[t])
            .unwrap()
            .index_axis(Axis(0), 0)
            .to_owned();
        let score = -e / sigma;
        let h = 1e-5;
        for (idx, &s) in score.indexed_iter() {
            let mut xp = x.clone();
            let mut xm = x.clone();
            xp[idx] += h;
            xm[idx] -= h;
            let fd =
                (mix.log_density(&xp, mu, sigma) - mix.log_density(&xm, mu, sigma)) / (2.0 * h);
            assert!(
                (fd - s).abs() < 1e-6 * (1.0 + s.abs()),
                "t={t} {idx:?}: -eps/sigma = {s}, FD d log p = {fd}"
            );
        }
    }
}

#[test]
fn mixture_log_density_matches_a_direct_sum() {
    // ln p computed by log-sum-exp equals ln Σ_k π_k N(x; ν m_k, c_k I) evaluated directly.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mix = mixture(&mut rng);
    let (nu, rho) = (0.8, 0.6);
    let x = probe(&mix, &mut rng, nu, rho);
    let d = x.len() as f64;
    let p: f64 = mix
        .weights()
        .iter()
        .zip(&mix.means)
        .zip(&mix.vars)
        .map(|((w, m), s2)| {
            let c = nu * nu * s2 + rho * rho;
            let r = &x - &(m * nu);
            w * (2.0 * std::f64::consts::PI * c).powf(-d / 2.0) * (-dot(&r, &r) / (2.0 * c)).exp()
        })
        .sum();
    assert!((mix.log_density(&x, nu, rho) - p.ln()).abs() < 1e-12);
}

#[test]
fn responsibilities_survive_far_away_points() {
    // 1e4 away from every mean: naive exponentials underflow to 0/0; log-sum-exp does not.
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let mix = mixture(&mut rng);
    let x = Img::from_elem(SHAPE, 1e4);
    let g = mix.responsibilities(&x, 0.9, 0.1);
    assert!(g.iter().all(|v| v.is_finite()));
    assert!((g.iter().sum::<f64>() - 1.0).abs() < 1e-12);
    let eps = MixtureDiffusion::new(
        mix,
        NoiseLevel::VpUnit(VpContinuous::default()),
        Parameterization::Eps,
    )
    .unwrap();
    let out = eps.predict(batch(&[&x]).view(), &[0.5]).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
}

#[test]
fn constructors_reject_bad_inputs() {
    let m = Img::zeros(SHAPE);
    assert!(GaussianMixture::new(vec![], vec![], vec![]).is_err());
    assert!(GaussianMixture::new(vec![1.0], vec![m.clone()], vec![0.0]).is_err());
    assert!(GaussianMixture::new(vec![-1.0], vec![m.clone()], vec![1.0]).is_err());
    assert!(GaussianMixture::new(vec![1.0, 1.0], vec![m.clone()], vec![1.0, 1.0]).is_err());
    let mix = GaussianMixture::new(vec![1.0], vec![m.clone()], vec![1.0]).unwrap();
    let level = NoiseLevel::VpUnit(VpContinuous::default());
    assert!(MixtureDiffusion::new(mix.clone(), level.clone(), Parameterization::Velocity).is_err());
    assert!(MixtureFlow::new(mix.clone(), TimeInput::Unit, Parameterization::Eps).is_err());
    let den = MixtureDiffusion::new(mix, level, Parameterization::Eps).unwrap();
    let wrong = Array4::zeros((1, 1, 3, 3));
    assert!(den.predict(wrong.view(), &[0.5]).is_err());
}

// ---- exact posterior against dense linear algebra ----

/// A dense operator on (1, 2, 3) images measuring 3 values, with its spectral view from the eigenvectors
/// of HᵀH: the first three spectral coordinates are the measured ones.
#[derive(Debug)]
struct DenseOp {
    h: DMatrix<f64>,
    v: DMatrix<f64>,
    u: DMatrix<f64>,
    s: Img,
}

impl DenseOp {
    fn new(h: DMatrix<f64>) -> Self {
        let eig = SymmetricEigen::new(h.transpose() * &h);
        let mut order: Vec<usize> = (0..6).collect();
        order.sort_by(|&a, &b| eig.eigenvalues[b].partial_cmp(&eig.eigenvalues[a]).unwrap());
        let v = DMatrix::from_fn(6, 6, |r, c| eig.eigenvectors[(r, order[c])]);
        let sv: Vec<f64> = order
            .iter()
            .map(|&i| {
                let e = eig.eigenvalues[i];
                if e > 1e-12 {
                    e.sqrt()
                } else {
                    0.0
                }
            })
            .collect();
        assert!(sv[..3].iter().all(|&x| x > 0.0) && sv[3..].iter().all(|&x| x == 0.0));
        let u = DMatrix::from_fn(3, 3, |r, c| (&h * v.column(c))[r] / sv[c]);
        let s = Array3::from_shape_vec((1, 2, 3), sv).unwrap();
        DenseOp { h, v, u, s }
    }
}

fn vec_of(x: &Img) -> DVector<f64> {
    DVector::from_iterator(x.len(), x.iter().cloned())
}

fn img_of(v: &DVector<f64>, shape: (usize, usize, usize)) -> Img {
    Array3::from_shape_vec(shape, v.iter().cloned().collect()).unwrap()
}

impl LinearOperator for DenseOp {
    fn name(&self) -> &'static str {
        "dense-test"
    }
    fn x_shape(&self) -> [usize; 3] {
        [1, 2, 3]
    }
    fn y_shape(&self) -> [usize; 3] {
        [1, 1, 3]
    }
    fn vt(&self, x: &Img) -> Img {
        img_of(&(self.v.transpose() * vec_of(x)), (1, 2, 3))
    }
    fn v(&self, c: &Img) -> Img {
        img_of(&(&self.v * vec_of(c)), (1, 2, 3))
    }
    fn ut(&self, y: &Img) -> Img {
        let c = self.u.transpose() * vec_of(y);
        let mut full = DVector::zeros(6);
        full.rows_mut(0, 3).copy_from(&c);
        img_of(&full, (1, 2, 3))
    }
    fn u(&self, c: &Img) -> Img {
        let cv = vec_of(c);
        img_of(&(&self.u * cv.rows(0, 3)), (1, 1, 3))
    }
    fn singulars(&self) -> &Img {
        &self.s
    }
}

fn log_normal(y: &DVector<f64>, mean: &DVector<f64>, cov: &DMatrix<f64>) -> f64 {
    let chol = cov.clone().cholesky().expect("positive definite");
    let r = y - mean;
    let sol = chol.solve(&r);
    let logdet: f64 = 2.0 * chol.l().diagonal().iter().map(|d| d.ln()).sum::<f64>();
    -0.5 * (r.dot(&sol) + logdet + y.len() as f64 * (2.0 * std::f64::consts::PI).ln())
}

/// Dense covariance V diag(var) Vᵀ of a posterior component, by applying it to unit vectors.
fn dense_cov(prior: &GaussianPrior) -> DMatrix<f64> {
    let mut cov = DMatrix::zeros(6, 6);
    for j in 0..6 {
        let mut e = DVector::zeros(6);
        e[j] = 1.0;
        let mut c = prior.basis.to_basis(&img_of(&e, (1, 2, 3)));
        c *= &prior.var;
        cov.set_column(j, &vec_of(&prior.basis.from_basis(&c)));
    }
    cov
}

fn posterior_setup() -> (GaussianMixture, Arc<DenseOp>, DVector<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let h = DMatrix::from_fn(3, 6, |_, _| StandardNormal.sample(&mut rng));
    let op = Arc::new(DenseOp::new(h));
    let means = (0..3).map(|_| randn(&mut rng, (1, 2, 3))).collect();
    let mix = GaussianMixture::new(vec![0.3, 0.3, 0.4], means, vec![0.5, 1.0, 1.5]).unwrap();
    let y = DVector::from_fn(3, |_, _| StandardNormal.sample(&mut rng));
    (mix, op, y)
}

#[test]
fn noisy_posterior_matches_dense_bayes() {
    let (mix, op, y) = posterior_setup();
    let sigma_y = 0.4;
    let opr: OperatorRef = op.clone();
    let post = mix
        .posterior(&opr, &img_of(&y, (1, 1, 3)), sigma_y)
        .unwrap();
    let h = &op.h;
    let pis = mix.weights();
    let mut logw = Vec::new();
    for k in 0..3 {
        let s2 = mix.vars[k];
        let mk = vec_of(&mix.means[k]);
        let prec = DMatrix::identity(6, 6) / s2 + h.transpose() * h / (sigma_y * sigma_y);
        let cov = prec.try_inverse().unwrap();
        let mean = &cov * (&mk / s2 + h.transpose() * &y / (sigma_y * sigma_y));
        let got_mean = vec_of(&post.components[k].mean);
        assert!((&got_mean - &mean).amax() < 1e-10, "component {k} mean");
        let got_cov = dense_cov(&post.components[k]);
        assert!((&got_cov - &cov).amax() < 1e-10, "component {k} covariance");
        let ycov = h * h.transpose() * s2 + DMatrix::identity(3, 3) * (sigma_y * sigma_y);
        logw.push(pis[k].ln() + log_normal(&y, &(h * &mk), &ycov));
    }
    let mx = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logw.iter().map(|l| (l - mx).exp()).sum();
    for k in 0..3 {
        let w = (logw[k] - mx).exp() / z;
        assert!(
            (post.weights[k] - w).abs() < 1e-10,
            "weight {k}: {} vs {w}",
            post.weights[k]
        );
    }
    // Make sure the weights are informative (not all equal to the prior's).
    assert!(post
        .weights
        .iter()
        .zip(&pis)
        .any(|(a, b)| (a - b).abs() > 1e-3));
}

#[test]
fn noiseless_posterior_pins_the_range_and_keeps_the_null_space() {
    let (mix, op, y) = posterior_setup();
    let opr: OperatorRef = op.clone();
    let post = mix.posterior(&opr, &img_of(&y, (1, 1, 3)), 0.0).unwrap();
    let h = &op.h;
    let hp = h.clone().pseudo_inverse(1e-12).unwrap();
    let p = &hp * h;
    let q = DMatrix::identity(6, 6) - &p;
    let pis = mix.weights();
    let mut logw = Vec::new();
    for k in 0..3 {
        let s2 = mix.vars[k];
        let mk = vec_of(&mix.means[k]);
        // mean = H⁺y + (I − P) m_k, covariance s_k² (I − P).
        let mean = &hp * &y + &q * &mk;
        assert!((vec_of(&post.components[k].mean) - mean).amax() < 1e-10);
        assert!((dense_cov(&post.components[k]) - &q * s2).amax() < 1e-10);
        logw.push(pis[k].ln() + log_normal(&y, &(h * &mk), &(h * h.transpose() * s2)));
    }
    let mx = logw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = logw.iter().map(|l| (l - mx).exp()).sum();
    for k in 0..3 {
        let w = (logw[k] - mx).exp() / z;
        assert!(
            (post.weights[k] - w).abs() < 1e-10,
            "weight {k}: {} vs {w}",
            post.weights[k]
        );
    }
    // The posterior mean reproduces the measurement.
    let hm = h * vec_of(&post.mean());
    assert!((hm - &y).amax() < 1e-10);
}

#[test]
fn denoising_posterior_equals_the_noised_mixture_oracle() {
    // H = I, y = x₀ + σ_y n is the noised mixture with (ν, ρ) = (1, σ_y): its posterior mean is the
    // x̂₀ oracle evaluated at x = μ y with μ = 1/√(1 + σ_y²), σ = μ σ_y (so μ² + σ² = 1, a VP level).
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mix = mixture(&mut rng);
    let sigma_y = 0.5;
    let op: OperatorRef = Arc::new(conjure::operators::Diagonal::new(Img::ones(SHAPE)).unwrap());
    let y = probe(&mix, &mut rng, 1.0, sigma_y);
    let post = mix.posterior(&op, &y, sigma_y).unwrap();
    let gamma = mix.responsibilities(&y, 1.0, sigma_y);
    for (a, b) in post.weights.iter().zip(&gamma) {
        assert!((a - b).abs() < 1e-12);
    }
    // Find the VP time with μ = 1/√(1 + σ_y²) by bisection, then call the x̂₀ oracle.
    let vp = VpContinuous::default();
    let mu_target = 1.0 / (1.0 + sigma_y * sigma_y).sqrt();
    let (mut lo, mut hi) = (0.0, 1.0);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if vp.mu(mid) > mu_target {
            lo = mid
        } else {
            hi = mid
        }
    }
    let t = 0.5 * (lo + hi);
    let x0 = MixtureDiffusion::new(mix, NoiseLevel::VpUnit(vp), Parameterization::X0).unwrap();
    let out = x0
        .predict(batch(&[&(&y * vp.mu(t))]).view(), &[t])
        .unwrap()
        .index_axis(Axis(0), 0)
        .to_owned();
    assert!(max_abs_diff(&out, &post.mean()) < 1e-9);
}
