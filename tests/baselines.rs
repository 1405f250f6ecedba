//! The baseline samplers DDRM, DPS, DDNM and pinv against exact references: the Gaussian-prior oracle
//! (`GaussianDiffusion`, network time = DDPM index) in the operator's basis, dense pseudo-inverses, and
//! central finite differences. Operators: `Diagonal` and a test-only dense operator with a random
//! orthogonal V and U (so the spectral view is nontrivial) and one thresholded zero singular value.

use std::sync::Arc;

use nalgebra::{DMatrix, DVector};
use ndarray::{Array4, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use conjure::model::analytic::{GaussianDiffusion, GaussianPrior, NoiseLevel, OperatorBasis};
use conjure::model::{Denoiser, JacobianMode, ModelKind, Network, Parameterization};
use conjure::operators::{Diagonal, Img, LinearOperator, OperatorRef};
use conjure::samplers::ddnm::Ddnm;
use conjure::samplers::ddrm::Ddrm;
use conjure::samplers::dps::Dps;
use conjure::samplers::pinv::Pinv;
use conjure::samplers::{build, ModelSchedule, Problem, Sampler, SamplerConfig, SamplerName};
use conjure::schedules::DdpmDiscrete;
use conjure::Error;

// ---------------------------------------------------------------- helpers

fn ddpm() -> DdpmDiscrete {
    DdpmDiscrete::linear(1e-4, 0.02, 1000).unwrap()
}

fn sched() -> ModelSchedule {
    ModelSchedule::ddpm_linear_default()
}

fn gauss(rng: &mut ChaCha8Rng) -> f64 {
    StandardNormal.sample(rng)
}

fn random_img(shape: [usize; 3], scale: f64, rng: &mut ChaCha8Rng) -> Img {
    Img::from_shape_simple_fn((shape[0], shape[1], shape[2]), || scale * gauss(rng))
}

fn random_orthogonal(n: usize, rng: &mut ChaCha8Rng) -> DMatrix<f64> {
    let a = DMatrix::from_fn(n, n, |_, _| gauss(rng));
    a.qr().q()
}

fn max_abs(a: &Img) -> f64 {
    a.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn rms(a: &Img) -> f64 {
    (a.iter().map(|v| v * v).sum::<f64>() / a.len() as f64).sqrt()
}

/// H = U diag(s) Vᵀ with dense random orthogonal U, V: spectral coordinate k is flat index k of the
/// x-shaped layout; the first M hold s (one of them may be 0, "thresholded"), the rest are unmeasured.
#[derive(Debug)]
struct DenseOp {
    v: DMatrix<f64>,
    u: DMatrix<f64>,
    sv: Vec<f64>,
    s: Img,
    xs: [usize; 3],
    ys: [usize; 3],
}

impl DenseOp {
    fn new(xs: [usize; 3], ys: [usize; 3], sv: Vec<f64>, seed: u64) -> Self {
        let d = xs.iter().product::<usize>();
        let m = ys.iter().product::<usize>();
        assert_eq!(sv.len(), m);
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let v = random_orthogonal(d, &mut rng);
        let u = random_orthogonal(m, &mut rng);
        let mut s = Img::zeros((xs[0], xs[1], xs[2]));
        for (k, val) in s.iter_mut().take(m).enumerate() {
            *val = sv[k];
        }
        DenseOp {
            v,
            u,
            sv,
            s,
            xs,
            ys,
        }
    }

    /// The dense M×D matrix H.
    fn matrix(&self) -> DMatrix<f64> {
        let m = self.sv.len();
        let vt_m = self.v.transpose().rows(0, m).into_owned();
        &self.u * DMatrix::from_diagonal(&DVector::from_vec(self.sv.clone())) * vt_m
    }
}

fn flat(x: &Img) -> DVector<f64> {
    DVector::from_iterator(x.len(), x.iter().cloned())
}

fn unflat(v: &DVector<f64>, shape: [usize; 3]) -> Img {
    Img::from_shape_vec((shape[0], shape[1], shape[2]), v.as_slice().to_vec()).unwrap()
}

impl LinearOperator for DenseOp {
    fn name(&self) -> &'static str {
        "dense-test"
    }
    fn x_shape(&self) -> [usize; 3] {
        self.xs
    }
    fn y_shape(&self) -> [usize; 3] {
        self.ys
    }
    fn vt(&self, x: &Img) -> Img {
        unflat(&(self.v.transpose() * flat(x)), self.xs)
    }
    fn v(&self, c: &Img) -> Img {
        unflat(&(&self.v * flat(c)), self.xs)
    }
    fn ut(&self, y: &Img) -> Img {
        let c = self.u.transpose() * flat(y);
        let mut out = Img::zeros((self.xs[0], self.xs[1], self.xs[2]));
        for (k, val) in out.iter_mut().take(c.len()).enumerate() {
            *val = c[k];
        }
        out
    }
    fn u(&self, c: &Img) -> Img {
        let m = self.sv.len();
        let head = DVector::from_iterator(m, c.iter().take(m).cloned());
        unflat(&(&self.u * head), self.ys)
    }
    fn singulars(&self) -> &Img {
        &self.s
    }
}

const XS: [usize; 3] = [1, 3, 4];
const YS: [usize; 3] = [1, 2, 4];

/// D = 12, M = 8, singular values spanning 3…0.2 plus one thresholded zero.
fn dense_op(seed: u64) -> Arc<DenseOp> {
    Arc::new(DenseOp::new(
        XS,
        YS,
        vec![3.0, 2.0, 1.5, 1.0, 0.7, 0.4, 0.0, 0.2],
        seed,
    ))
}

/// The exact ε-oracle for N(mean, V diag(var) Vᵀ) in `op`'s basis, network time = DDPM index.
fn oracle(op: OperatorRef, mean: Img, var: Img, param: Parameterization) -> GaussianDiffusion {
    let prior = GaussianPrior::new(Arc::new(OperatorBasis(op)), mean, var).unwrap();
    GaussianDiffusion::new(prior, NoiseLevel::DdpmIndex(ddpm()), param).unwrap()
}

fn network(den: &dyn Denoiser, param: Parameterization, mode: JacobianMode) -> Network<'_> {
    Network::new(
        den,
        ModelKind::Diffusion,
        param,
        NoiseLevel::DdpmIndex(ddpm()).time_input(),
        mode,
    )
}

/// A prior with a nonzero mean and varied variances, as (mean, var) in image space / spectral layout.
fn prior_params(seed: u64) -> (Img, Img) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mean = random_img(XS, 1.0, &mut rng) + 1.0;
    let var = Img::from_shape_fn((XS[0], XS[1], XS[2]), |(_, i, j)| {
        0.5 + 0.25 * ((i * 4 + j) % 5) as f64
    });
    (mean, var)
}

/// Draw x from the prior and measure it: y = H x + σ_y n.
fn measure(op: &OperatorRef, mean: &Img, var: &Img, sigma_y: f64, seed: u64) -> (Img, Img) {
    let (x, y, _) = measure_full(op, mean, var, sigma_y, seed);
    (x, y)
}

/// As [`measure`], also returning the noise's spectral coordinates Uᵀn (x-shaped layout).
fn measure_full(
    op: &OperatorRef,
    mean: &Img,
    var: &Img,
    sigma_y: f64,
    seed: u64,
) -> (Img, Img, Img) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let c = random_img(op.x_shape(), 1.0, &mut rng) * var.mapv(f64::sqrt);
    let x = mean + &op.v(&c);
    let n = random_img(op.y_shape(), 1.0, &mut rng);
    let y = op.forward(&x) + &n * sigma_y;
    (x, y, op.ut(&n))
}

fn config(name: SamplerName) -> SamplerConfig {
    SamplerConfig::new(name)
}

/// Run `sampler` on each problem alone and on all of them in one batch; outputs must agree.
fn assert_batch_independent(
    sampler: &dyn Sampler,
    net: &Network,
    make: &dyn Fn() -> Vec<Problem>,
) -> Vec<Img> {
    let mut all = make();
    let batch = sampler.sample(net, &mut all).unwrap();
    assert_eq!(batch.len(), all.len());
    for (i, b) in batch.iter().enumerate() {
        let mut one: Vec<Problem> = make().into_iter().skip(i).take(1).collect();
        let alone = sampler.sample(net, &mut one).unwrap();
        let diff = max_abs(&(&alone[0] - b));
        assert!(
            diff <= 1e-12 * (1.0 + max_abs(b)),
            "{}: sample {i} differs by {diff} between batch and alone",
            sampler.name()
        );
    }
    batch
}

// ------------------------------------------- exact moments of per-coordinate samplers

/// For a prior diagonal in H's spectral basis, every sampler here acts on each spectral coordinate k
/// separately and affinely: the new state is a linear combination of the old state, the truth x_k and
/// the measurement noise n_k (through ȳ_k = s_k x_k + σ_y n_k), plus fresh Gaussian noise. So the joint
/// law of (x_k, n_k, state) stays Gaussian and its moments can be propagated exactly with scalar
/// arithmetic — an independent reference for the vectorized samplers.
#[derive(Clone, Debug)]
struct Moments {
    /// Means of (x, n, state).
    mean: [f64; 3],
    cov: [[f64; 3]; 3],
}

impl Moments {
    /// x ~ N(m, λ), n ~ N(0, 1) independent, state = 0.
    fn new(m: f64, lam: f64) -> Self {
        Moments {
            mean: [m, 0.0, 0.0],
            cov: [[lam, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]],
        }
    }

    /// state ← l·(x, n, state) + r + d z with a fresh z ~ N(0, 1).
    fn assign(&mut self, l: [f64; 3], r: f64, d: f64) {
        let mean = (0..3).map(|i| l[i] * self.mean[i]).sum::<f64>() + r;
        let c: Vec<f64> = (0..3)
            .map(|j| (0..3).map(|i| l[i] * self.cov[i][j]).sum())
            .collect();
        let var = (0..3).map(|j| l[j] * c[j]).sum::<f64>() + d * d;
        for (j, &cj) in c.iter().enumerate().take(2) {
            self.cov[2][j] = cj;
            self.cov[j][2] = cj;
        }
        self.cov[2][2] = var;
        self.mean[2] = mean;
    }

    /// Mean and variance of l·(x, n, state).
    fn linear(&self, l: [f64; 3]) -> (f64, f64) {
        let mean = (0..3).map(|i| l[i] * self.mean[i]).sum();
        let var = (0..3)
            .map(|i| (0..3).map(|j| l[i] * l[j] * self.cov[i][j]).sum::<f64>())
            .sum();
        (mean, var)
    }
}

/// The oracle per coordinate at ᾱ: x̂₀ = k0 x + k1 and ε̂ = e0 x + e1.
fn oracle_coeffs(m: f64, lam: f64, alpha: f64) -> (f64, f64, f64, f64) {
    let (mu, sig) = (alpha.sqrt(), (1.0 - alpha).sqrt());
    let c = mu * mu * lam + sig * sig;
    (
        mu * lam / c,
        m - mu * mu * lam * m / c,
        sig / c,
        -sig * mu * m / c,
    )
}

/// Exact law of DDRM's output coordinate (state: the variance-exploding c = x/√ᾱ).
#[allow(clippy::too_many_arguments)]
fn ddrm_moments(grid: &[i64], m: f64, lam: f64, sk: f64, sy: f64, eta: f64, eta_b: f64) -> Moments {
    let d = ddpm();
    let ve = |a: f64| ((1.0 - a) / a).sqrt();
    let mut mo = Moments::new(m, lam);
    let sig_big_t = ve(d.alpha(*grid.last().unwrap()));
    if sk > 0.0 && sk * sig_big_t > sy {
        let sd = (sig_big_t.powi(2) - sy * sy / (sk * sk)).sqrt();
        mo.assign([1.0, sy / sk, 0.0], 0.0, sd);
    } else {
        mo.assign([0.0; 3], 0.0, sig_big_t);
    }
    for j in (0..grid.len()).rev() {
        let t = grid[j];
        let s = if j > 0 { grid[j - 1] } else { -1 };
        let at = d.alpha(t);
        let (k0, k1, e0, e1) = oracle_coeffs(m, lam, at);
        // in terms of c: x_t = √ᾱ_t c
        let (k0, e0) = (k0 * at.sqrt(), e0 * at.sqrt());
        if s < 0 {
            mo.assign([0.0, 0.0, k0], k1, 0.0);
            break;
        }
        let sig_s = ve(d.alpha(s));
        let (std, tilde) = (eta * sig_s, sig_s * (1.0 - eta * eta).sqrt());
        if sk > 0.0 && sk * sig_s > sy {
            // c' = η_b (x + σ_y n/s) + (1 − η_b) x̂₀ + √(σ_s² − η_b² σ_y²/s²) z
            let dd = (sig_s * sig_s - eta_b * eta_b * sy * sy / (sk * sk))
                .max(0.0)
                .sqrt();
            let l = [eta_b, eta_b * sy / sk, (1.0 - eta_b) * k0];
            mo.assign(l, (1.0 - eta_b) * k1, dd);
        } else if sk > 0.0 && sk * sig_s < sy {
            // c' = x̂₀ + σ̃ (s x + σ_y n − s x̂₀)/σ_y + std z
            let f = tilde * sk / sy;
            mo.assign([f, tilde, (1.0 - f) * k0], (1.0 - f) * k1, std);
        } else {
            mo.assign([0.0, 0.0, k0 + tilde * e0], k1 + tilde * e1, std);
        }
    }
    mo
}

/// Exact law of DDNM / DDNM⁺'s output coordinate (state: x_t).
fn ddnm_moments(grid: &[i64], m: f64, lam: f64, sk: f64, sy: f64, eta: f64) -> Moments {
    let mut mo = Moments::new(m, lam);
    ddnm_law(grid, m, lam, sk, sy, eta, &mut mo);
    mo
}

/// A sampler coordinate's state as an exact affine function of (x, n, z₀) — the truth, the measurement
/// noise and the initial noise — for samplers with no fresh noise after the init (DDNM with η = 0).
#[derive(Clone, Debug, Default)]
struct Affine {
    /// Coefficients of x, n, z₀ and the constant.
    coef: [f64; 4],
    started: bool,
}

impl Affine {
    fn eval(&self, x: f64, n: f64, z0: f64) -> f64 {
        self.coef[0] * x + self.coef[1] * n + self.coef[2] * z0 + self.coef[3]
    }
}

/// What a per-coordinate sampler law is propagated into.
trait Track {
    /// state ← l·(x, n, state) + r + d z with a fresh z ~ N(0, 1).
    fn assign(&mut self, l: [f64; 3], r: f64, d: f64);
}

impl Track for Moments {
    fn assign(&mut self, l: [f64; 3], r: f64, d: f64) {
        Moments::assign(self, l, r, d)
    }
}

impl Track for Affine {
    fn assign(&mut self, l: [f64; 3], r: f64, d: f64) {
        let c = self.coef;
        if self.started {
            assert_eq!(d, 0.0, "fresh noise after the init");
        }
        // the init's noise is z₀
        let cz = if self.started { l[2] * c[2] } else { d };
        self.coef = [l[0] + l[2] * c[0], l[1] + l[2] * c[1], cz, l[2] * c[3] + r];
        self.started = true;
    }
}

/// Propagate DDNM / DDNM⁺'s law of one coordinate into `mo`.
#[allow(clippy::too_many_arguments)]
fn ddnm_law(grid: &[i64], m: f64, lam: f64, sk: f64, sy: f64, eta: f64, mo: &mut dyn Track) {
    let d = ddpm();
    let eta_c = (1.0 - eta * eta).sqrt();
    mo.assign([0.0; 3], 0.0, 1.0);
    for j in (0..grid.len()).rev() {
        let t = grid[j];
        let s = if j > 0 { grid[j - 1] } else { -1 };
        let (k0, k1, e0, e1) = oracle_coeffs(m, lam, d.alpha(t));
        let als = d.alpha(s);
        let (a, sig) = (als.sqrt(), (1.0 - als).sqrt());
        let (lambda, gamma) = if sk > 0.0 {
            let th = a * sy / sk;
            let l = if sig >= th { 1.0 } else { sig / th };
            (l, (sig * sig - (l * th).powi(2)).max(0.0))
        } else {
            (0.0, sig * sig)
        };
        let g = gamma.sqrt();
        // x' = a((1 − λ) x̂₀ + λ(x + σ_y n/s)) + √γ (η z + η_c ε̂)
        let n_coef = if sk > 0.0 { a * lambda * sy / sk } else { 0.0 };
        mo.assign(
            [a * lambda, n_coef, a * (1.0 - lambda) * k0 + g * eta_c * e0],
            a * (1.0 - lambda) * k1 + g * eta_c * e1,
            g * eta,
        );
    }
}

/// Monte-Carlo mean and variance of `vals` against an exact (mean, var): both within `z` standard errors.
fn assert_moments(what: &str, vals: &[f64], exact: (f64, f64), z: f64) {
    let n = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / n;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    let (em, ev) = exact;
    assert!(
        (mean - em).abs() <= z * (ev / n).sqrt() + 1e-12,
        "{what}: mean {mean} vs exact {em} (var {ev}, n {n})"
    );
    assert!(
        (var - ev).abs() <= z * ev * (2.0 / n).sqrt() + 1e-12,
        "{what}: variance {var} vs exact {ev} (n {n})"
    );
}

/// Per spectral coordinate: the samples' values of l·(x_k, n_k, output_k), given each sample's
/// truth, measurement noise coordinates (Uᵀn) and output.
fn spectral_values(
    op: &OperatorRef,
    k: usize,
    l: [f64; 3],
    truths: &[Img],
    noises: &[Img],
    outs: &[Img],
) -> Vec<f64> {
    truths
        .iter()
        .zip(noises)
        .zip(outs)
        .map(|((x, n), o)| {
            let (xc, oc) = (op.vt(x), op.vt(o));
            l[0] * xc.as_slice().unwrap()[k]
                + l[1] * n.as_slice().unwrap()[k]
                + l[2] * oc.as_slice().unwrap()[k]
        })
        .collect()
}

// ---------------------------------------------------------------- pinv

#[test]
fn pinv_equals_dense_pseudo_inverse_with_no_network_call() {
    let op = dense_op(1);
    let opr: OperatorRef = op.clone();
    let (mean, var) = prior_params(2);
    let den = oracle(opr.clone(), mean, var, Parameterization::Eps);
    let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    // y anywhere in ℝ^M (not only in the range of H): H† must still be the minimum-norm least-squares map.
    let y = random_img(YS, 1.0, &mut rng);
    let reference = op.matrix().pseudo_inverse(1e-9).unwrap() * flat(&y);

    // Works with a flow model's schedule too (the schedule is ignored).
    for sched in [sched(), ModelSchedule::Flow] {
        let pinv = Pinv::from_config(&config(SamplerName::Pinv), &sched).unwrap();
        assert_eq!(pinv.nfe(), 0);
        let mut problems = vec![Problem::new(opr.clone(), y.clone(), 0.0, 0).unwrap()];
        let out = pinv.sample(&net, &mut problems).unwrap();
        let err = (flat(&out[0]) - &reference).amax();
        assert!(err < 1e-12, "pinv vs dense pseudo-inverse: {err}");
    }
    assert_eq!(net.forwards(), 0);
    assert_eq!(net.vjps(), 0);
}

// ---------------------------------------------------------------- DDRM

#[test]
fn ddrm_noiseless_keeps_measured_coordinates_at_y_every_step() {
    let op = dense_op(11);
    let opr: OperatorRef = op.clone();
    let (m1, v1) = prior_params(12);
    // A second, very different prior: the measured coordinates must not notice the network at all.
    let m2 = m1.mapv(|v| -3.0 * v + 0.5);
    let v2 = v1.mapv(|v| 4.0 * v);
    let (_, y) = measure(&opr, &m1, &v1, 0.0, 13);
    let s = op.singulars().clone();
    let target = {
        let mut t = opr.ut(&y);
        t.zip_mut_with(&s, |t, &s| *t = if s > 0.0 { *t / s } else { 0.0 });
        t
    };
    let ddrm = Ddrm::from_config(&config(SamplerName::Ddrm), &sched()).unwrap();
    assert_eq!(ddrm.nfe(), 20);

    // trajectories[prior][record] = (to, alpha, spectral coordinates of x/√ᾱ per sample)
    let mut trajectories: Vec<Vec<(i64, f64, Vec<Img>)>> = Vec::new();
    let mut outputs = Vec::new();
    for (mean, var) in [(&m1, &v1), (&m2, &v2)] {
        let den = oracle(
            opr.clone(),
            mean.clone(),
            var.clone(),
            Parameterization::Eps,
        );
        let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
        let mut problems: Vec<Problem> = (0..4)
            .map(|seed| Problem::new(opr.clone(), y.clone(), 0.0, 100 + seed).unwrap())
            .collect();
        let mut rec = Vec::new();
        let out = ddrm
            .sample_observed(&net, &mut problems, &mut |st| {
                let cs = st.x.iter().map(|x| opr.vt(x) / st.alpha.sqrt()).collect();
                rec.push((st.to, st.alpha, cs));
            })
            .unwrap();
        assert_eq!(rec.len(), 21, "init + 20 steps");
        assert_eq!(net.forwards(), 20 * 4);
        assert_eq!(net.vjps(), 0);
        trajectories.push(rec);
        outputs.push(out);
    }

    let (mut n, mut sum, mut sum2) = (0usize, 0.0, 0.0);
    let mut unmeasured_differ = false;
    for (r1, r2) in trajectories[0].iter().zip(&trajectories[1]) {
        let (to, alpha, cs1) = r1;
        let cs2 = &r2.2;
        let sigma = ((1.0 - alpha) / alpha).sqrt();
        for (c1, c2) in cs1.iter().zip(cs2) {
            for k in 0..s.len() {
                let (sk, a, b) = (
                    s.as_slice().unwrap()[k],
                    c1.as_slice().unwrap()[k],
                    c2.as_slice().unwrap()[k],
                );
                let tk = target.as_slice().unwrap()[k];
                if *to < 0 {
                    // the output x̂₀: checked below
                } else if sk > 0.0 {
                    assert!(
                        (a - b).abs() <= 1e-10 * (1.0 + a.abs()),
                        "step to {to}: measured coordinate {k} depends on the network: {a} vs {b}"
                    );
                    let z = (a - tk) / sigma;
                    assert!(
                        z.abs() < 6.0,
                        "step to {to}: coordinate {k} is {z} sigma from y"
                    );
                    n += 1;
                    sum += z;
                    sum2 += z * z;
                } else if (a - b).abs() > 1e-3 {
                    unmeasured_differ = true;
                }
            }
        }
    }
    assert!(
        unmeasured_differ,
        "the two priors should give different unmeasured coordinates"
    );
    // (c − ȳ/s)/σ_s is the N(0, 1) draw of η_b = 1: check its pooled mean and variance.
    let (mean_z, var_z) = (sum / n as f64, sum2 / n as f64 - (sum / n as f64).powi(2));
    assert!(
        mean_z.abs() < 4.0 / (n as f64).sqrt(),
        "mean {mean_z} over {n}"
    );
    assert!(
        (var_z - 1.0).abs() < 4.0 * (2.0 / n as f64).sqrt(),
        "variance {var_z} over {n}"
    );

    // The output (x̂₀ of the last step) matches y on the measured coordinates up to the t = 0 noise level.
    let sigma0 = ((1.0 - ddpm().alpha(0)) / ddpm().alpha(0)).sqrt();
    for (out, (mean, var)) in outputs.iter().zip([(&m1, &v1), (&m2, &v2)]) {
        let mspec = opr.vt(mean);
        for o in out {
            let c = opr.vt(o);
            for k in 0..s.len() {
                let sk = s.as_slice().unwrap()[k];
                if sk == 0.0 {
                    continue;
                }
                let (ck, tk) = (c.as_slice().unwrap()[k], target.as_slice().unwrap()[k]);
                let lam = var.as_slice().unwrap()[k];
                let tol = 6.0 * sigma0
                    + sigma0 * sigma0 / lam * (tk - mspec.as_slice().unwrap()[k]).abs();
                assert!(
                    (ck - tk).abs() < tol,
                    "output coordinate {k}: {ck} vs {tk} (tol {tol})"
                );
            }
            let hx = opr.forward(o);
            assert!(rms(&(&hx - &y)) < 9.0 * sigma0, "‖Hx̂ − y‖ too large");
        }
    }
}

#[test]
fn ddrm_noisy_output_follows_its_exact_law_and_y_at_the_noise_level() {
    let opr: OperatorRef = dense_op(21);
    let (mean, var) = prior_params(22);
    let den = oracle(
        opr.clone(),
        mean.clone(),
        var.clone(),
        Parameterization::Eps,
    );
    let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
    let sigma_y = 0.05;
    let s = opr.singulars().clone();
    let mspec = opr.vt(&mean);
    let m_count = YS.iter().product::<usize>() as f64;
    for (steps, eta, eta_b) in [(20, 0.85, 1.0), (200, 0.85, 1.0), (20, 0.5, 0.7)] {
        let mut cfg = config(SamplerName::Ddrm);
        cfg.steps = Some(steps);
        cfg.eta = Some(eta);
        cfg.eta_b = Some(eta_b);
        let ddrm = Ddrm::from_config(&cfg, &sched()).unwrap();
        let n = 600;
        let (mut problems, mut truths, mut noises) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n as u64 {
            let (x, y, ns) = measure_full(&opr, &mean, &var, sigma_y, 10_000 + i);
            truths.push(x);
            noises.push(ns);
            problems.push(Problem::new(opr.clone(), y, sigma_y, i).unwrap());
        }
        let outs = ddrm.sample(&net, &mut problems).unwrap();
        assert!(outs.iter().all(|o| o.iter().all(|v| v.is_finite())));
        // Every spectral coordinate of the error x̂ − x follows the exact law of DDRM's recursion.
        let mut exact_res2 = 0.0;
        for k in 0..s.len() {
            let sk = s.as_slice().unwrap()[k];
            let (mk, lk) = (mspec.as_slice().unwrap()[k], var.as_slice().unwrap()[k]);
            let mo = ddrm_moments(ddrm.grid(), mk, lk, sk, sigma_y, eta, eta_b);
            let vals = spectral_values(&opr, k, [-1.0, 0.0, 1.0], &truths, &noises, &outs);
            assert_moments(
                &format!("ddrm {steps} steps, error of coordinate {k}"),
                &vals,
                mo.linear([-1.0, 0.0, 1.0]),
                4.5,
            );
            if k < m_count as usize {
                // (Uᵀ(Hx̂ − y))_k = s_k x̂_k − s_k x_k − σ_y n_k
                let (rm, rv) = mo.linear([-sk, -sigma_y, sk]);
                exact_res2 += rm * rm + rv;
            }
        }
        let exact_res = (exact_res2 / m_count).sqrt();
        let mc_res = (outs
            .iter()
            .zip(&problems)
            .map(|(o, p)| rms(&(&opr.forward(o) - &p.y)).powi(2))
            .sum::<f64>()
            / n as f64)
            .sqrt();
        eprintln!("ddrm {steps} steps: rms(Hx̂ − y) exact {exact_res}, monte carlo {mc_res}, sigma_y {sigma_y}");
        assert!(
            (mc_res / exact_res - 1.0).abs() < 0.1,
            "{mc_res} vs {exact_res}"
        );
        // Consistent with y at its noise level: a posterior sample has rms(Hx̂ − y) ≈ σ_y·√2 at most.
        // DDRM gets there with enough steps; at 20 steps its last jump (σ 0.18 → 0.01) leaves more.
        if steps == 200 && eta_b == 1.0 {
            assert!(exact_res < 1.5 * sigma_y, "rms(Hx̂ − y) = {exact_res}");
        }
        assert!(exact_res < 5.0 * sigma_y, "rms(Hx̂ − y) = {exact_res}");
    }
}

#[test]
fn ddrm_is_batch_independent_and_counts_one_forward_per_step() {
    let opr: OperatorRef = Arc::new(
        Diagonal::new(Img::from_shape_vec((1, 2, 3), vec![1.0, 0.0, 0.5, 2.0, 0.0, 0.1]).unwrap())
            .unwrap(),
    );
    let mean = Img::from_elem((1, 2, 3), 0.3);
    let var = Img::from_shape_vec((1, 2, 3), vec![1.0, 2.0, 0.5, 1.0, 0.7, 1.5]).unwrap();
    let den = oracle(
        opr.clone(),
        mean.clone(),
        var.clone(),
        Parameterization::Eps,
    );
    let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
    let mut cfg = config(SamplerName::Ddrm);
    cfg.steps = Some(10);
    let ddrm = build(&cfg, &sched()).unwrap();
    assert_eq!(ddrm.nfe(), 10);
    let make = || {
        (0..3u64)
            .map(|i| {
                let (_, y) = measure(&opr, &mean, &var, 0.02 * i as f64, 300 + i);
                Problem::new(opr.clone(), y, 0.02 * i as f64, i).unwrap()
            })
            .collect::<Vec<_>>()
    };
    let before = net.forwards();
    let mut all = make();
    ddrm.sample(&net, &mut all).unwrap();
    assert_eq!(net.forwards() - before, 10 * 3);
    assert_batch_independent(ddrm.as_ref(), &net, &make);
}

// ---------------------------------------------------------------- DPS

/// ‖y − H x̂₀(x)‖² straight from the oracle (no sampler code).
fn dps_objective(den: &GaussianDiffusion, op: &OperatorRef, y: &Img, x: &Img, t: i64) -> f64 {
    let a = ddpm().alpha(t);
    let xb: Array4<f64> = x.clone().insert_axis(Axis(0));
    let out = den.predict(xb.view(), &[t as f64]).unwrap();
    let out = out.index_axis(Axis(0), 0).to_owned();
    let x0 = match den.param {
        Parameterization::Eps => (x - &(out * (1.0 - a).sqrt())) / a.sqrt(),
        _ => out,
    };
    let r = y - &op.forward(&x0);
    r.iter().map(|v| v * v).sum()
}

#[test]
fn dps_gradient_matches_central_finite_differences() {
    let opr: OperatorRef = dense_op(31);
    let (mean, var) = prior_params(32);
    let mut rng = ChaCha8Rng::seed_from_u64(33);
    let (_, y) = measure(&opr, &mean, &var, 0.0, 34);
    let problems = vec![Problem::new(opr.clone(), y.clone(), 0.0, 0).unwrap()];
    let dps = Dps::from_config(&config(SamplerName::Dps), &sched()).unwrap();
    for t in [20i64, 300, 800] {
        let a = ddpm().alpha(t);
        let x = &mean * a.sqrt() + random_img(XS, (1.0 - a).sqrt() + 0.3, &mut rng);
        for (param, mode) in [
            (Parameterization::Eps, JacobianMode::Exact),
            (Parameterization::X0, JacobianMode::Exact),
            (Parameterization::Eps, JacobianMode::FiniteDifference),
        ] {
            let den = oracle(opr.clone(), mean.clone(), var.clone(), param);
            let net = network(&den, param, mode);
            let terms = dps
                .terms(&net, t, std::slice::from_ref(&x), &problems)
                .unwrap();
            let g = &terms.grad[0];
            // Central differences of the objective, coordinate by coordinate (it is quadratic in x, so
            // the only error is rounding).
            let h = 1e-4;
            let mut fd = Img::zeros(x.raw_dim());
            for k in 0..x.len() {
                let mut xp = x.clone();
                let mut xm = x.clone();
                xp.as_slice_mut().unwrap()[k] += h;
                xm.as_slice_mut().unwrap()[k] -= h;
                fd.as_slice_mut().unwrap()[k] = (dps_objective(&den, &opr, &y, &xp, t)
                    - dps_objective(&den, &opr, &y, &xm, t))
                    / (2.0 * h);
            }
            let err = max_abs(&(g - &fd));
            assert!(
                err <= 1e-6 * max_abs(&fd) + 1e-9,
                "t {t} {param:?} {mode:?}: |grad − fd| = {err}, |fd| = {}",
                max_abs(&fd)
            );
            let f = dps_objective(&den, &opr, &y, &x, t);
            assert!((terms.residual_norm[0] - f.sqrt()).abs() < 1e-9 * f.sqrt());
        }
        // Identity mode drops J_ε: grad = −2 Hᵀr/μ exactly, which is not the true gradient.
        let den = oracle(
            opr.clone(),
            mean.clone(),
            var.clone(),
            Parameterization::Eps,
        );
        let net = network(&den, Parameterization::Eps, JacobianMode::Identity);
        let terms = dps
            .terms(&net, t, std::slice::from_ref(&x), &problems)
            .unwrap();
        let r = &y - &opr.forward(&terms.x0[0]);
        let expect = opr.adjoint(&r) * (-2.0 / a.sqrt());
        assert!(max_abs(&(&terms.grad[0] - &expect)) < 1e-12 * (1.0 + max_abs(&expect)));
    }
}

#[test]
fn dps_sample_does_not_depend_on_the_rest_of_its_batch() {
    let opr: OperatorRef = dense_op(41);
    let (mean, var) = prior_params(42);
    let den = oracle(
        opr.clone(),
        mean.clone(),
        var.clone(),
        Parameterization::Eps,
    );
    let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
    let mut cfg = config(SamplerName::Dps);
    cfg.steps = Some(50);
    cfg.eta = Some(0.5);
    // DPS's ζ = 1 is tuned for 256² images (‖r‖ huge); a 12-pixel toy needs a much smaller step.
    cfg.guidance = Some(0.05);
    let dps = Dps::from_config(&cfg, &sched()).unwrap();
    // Sample 1's measurement is 1000× off the prior: its residual norm dwarfs the others', so a
    // batch-wide norm (the reference code's bug) would shrink everyone else's step a thousandfold.
    let make = || {
        (0..3u64)
            .map(|i| {
                let (_, y) = measure(&opr, &mean, &var, 0.0, 400 + i);
                let y = if i == 1 { y * 1000.0 } else { y };
                Problem::new(opr.clone(), y, 0.0, i).unwrap()
            })
            .collect::<Vec<_>>()
    };
    let outs = assert_batch_independent(&dps, &net, &make);
    // And the guidance matters: without it (ζ = 0) sample 0 is much less consistent with its y.
    let mut cfg0 = cfg.clone();
    cfg0.guidance = Some(0.0);
    let dps0 = Dps::from_config(&cfg0, &sched()).unwrap();
    let mut p0 = make();
    let free = dps0.sample(&net, &mut p0).unwrap();
    let y0 = &p0[0].y;
    let res_guided = rms(&(&opr.forward(&outs[0]) - y0));
    let res_free = rms(&(&opr.forward(&free[0]) - y0));
    eprintln!("dps residual guided {res_guided} free {res_free}");
    assert!(
        res_guided < 0.5 * res_free,
        "guided {res_guided} vs free {res_free}"
    );
}

#[test]
fn dps_counts_network_evaluations_per_jacobian_mode() {
    let opr: OperatorRef = Arc::new(
        Diagonal::new(Img::from_shape_vec((1, 1, 4), vec![1.0, 0.0, 0.5, 2.0]).unwrap()).unwrap(),
    );
    let mean = Img::from_elem((1, 1, 4), 0.2);
    let var = Img::from_elem((1, 1, 4), 1.0);
    let den = oracle(
        opr.clone(),
        mean.clone(),
        var.clone(),
        Parameterization::Eps,
    );
    let mut cfg = config(SamplerName::Dps);
    cfg.steps = Some(10);
    for (mode, forwards, vjps) in [
        (JacobianMode::Exact, 1, 1),
        (JacobianMode::FiniteDifference, 3, 0),
        (JacobianMode::Identity, 1, 0),
    ] {
        cfg.jacobian = mode;
        let dps = build(&cfg, &sched()).unwrap();
        assert_eq!(dps.nfe(), 10);
        let net = network(&den, Parameterization::Eps, mode);
        let mut problems: Vec<Problem> = (0..2u64)
            .map(|i| {
                let (_, y) = measure(&opr, &mean, &var, 0.0, 500 + i);
                Problem::new(opr.clone(), y, 0.0, i).unwrap()
            })
            .collect();
        let out = dps.sample(&net, &mut problems).unwrap();
        assert!(out.iter().all(|o| o.iter().all(|v| v.is_finite())));
        assert_eq!(net.forwards(), 10 * 2 * forwards, "{mode:?}");
        assert_eq!(net.vjps(), 10 * 2 * vjps, "{mode:?}");
    }
}

// ---------------------------------------------------------------- DDNM

#[test]
fn ddnm_noiseless_output_is_exactly_consistent() {
    let op = dense_op(51);
    let opr: OperatorRef = op.clone();
    let (mean, var) = prior_params(52);
    let den = oracle(
        opr.clone(),
        mean.clone(),
        var.clone(),
        Parameterization::Eps,
    );
    let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
    let ddnm = Ddnm::from_config(&config(SamplerName::Ddnm), &sched()).unwrap();
    assert_eq!(ddnm.nfe(), 100);
    let hm = op.matrix();
    let hpinv = hm.clone().pseudo_inverse(1e-9).unwrap();
    let mut problems: Vec<Problem> = (0..4u64)
        .map(|i| {
            let (_, y) = measure(&opr, &mean, &var, 0.0, 600 + i);
            Problem::new(opr.clone(), y, 0.0, i).unwrap()
        })
        .collect();
    let outs = ddnm.sample(&net, &mut problems).unwrap();
    assert_eq!(net.forwards(), 100 * 4);
    assert_eq!(net.vjps(), 0);
    for (o, p) in outs.iter().zip(&problems) {
        let hx = &hm * flat(o);
        let err = (hx - flat(&p.y)).amax();
        assert!(err < 1e-10, "‖Hx̂ − y‖∞ = {err}");
        let px = &hpinv * (&hm * flat(o));
        let err = (px - &hpinv * flat(&p.y)).amax();
        assert!(err < 1e-12, "‖Px̂ − H†y‖∞ = {err}");
    }
}

#[test]
fn ddnm_null_space_follows_the_prior() {
    let op = dense_op(61);
    let opr: OperatorRef = op.clone();
    let (mean, var) = prior_params(62);
    let den = oracle(
        opr.clone(),
        mean.clone(),
        var.clone(),
        Parameterization::Eps,
    );
    let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
    let ddnm = Ddnm::from_config(&config(SamplerName::Ddnm), &sched()).unwrap();
    let (_, y) = measure(&opr, &mean, &var, 0.0, 63);
    let n = 1500;
    let mut problems: Vec<Problem> = (0..n as u64)
        .map(|i| Problem::new(opr.clone(), y.clone(), 0.0, 1000 + i).unwrap())
        .collect();
    let outs = ddnm.sample(&net, &mut problems).unwrap();
    // For a prior diagonal in H's spectral basis, the exact posterior's null-space coordinates are the
    // prior's: mean (Vᵀm)_k and variance λ_k, whatever y is.
    let s = opr.singulars();
    let mspec = opr.vt(&mean);
    let mut checked = 0;
    for k in 0..s.len() {
        if s.as_slice().unwrap()[k] != 0.0 {
            continue;
        }
        let vals: Vec<f64> = outs
            .iter()
            .map(|o| opr.vt(o).as_slice().unwrap()[k])
            .collect();
        let mu = vals.iter().sum::<f64>() / n as f64;
        let (m_k, lam) = (mspec.as_slice().unwrap()[k], var.as_slice().unwrap()[k]);
        // The sampler's own output law (exact recursion): its mean is the posterior's to ~1e-6 …
        let (em, ev) = ddnm_moments(ddnm.grid(), m_k, lam, 0.0, 0.0, 0.85).linear([0.0, 0.0, 1.0]);
        assert!(
            (em - m_k).abs() < 1e-3 * (1.0 + m_k.abs()),
            "exact mean {em} vs prior {m_k}"
        );
        // … so the sample mean must approach the posterior mean within the sampling error.
        let tol = 4.5 * (ev / n as f64).sqrt();
        assert!(
            (mu - m_k).abs() < tol,
            "null coordinate {k}: mean {mu} vs posterior {m_k} (tol {tol})"
        );
        // Its variance is DDNM's (η = 0.85 re-noises x̂₀ each step and loses some spread), not λ_k.
        assert_moments(&format!("ddnm null coordinate {k}"), &vals, (em, ev), 4.5);
        eprintln!(
            "ddnm null coordinate {k}: variance ratio to the prior {}",
            ev / lam
        );
        assert!(ev > 0.5 * lam && ev <= lam * 1.01, "{ev} vs {lam}");
        checked += 1;
    }
    assert_eq!(checked, 5, "4 unmeasured coordinates + 1 thresholded");
}

#[test]
fn ddnm_plus_follows_its_exact_law_and_does_not_amplify_noise() {
    // s = 0.02 on one coordinate: H†y carries noise σ_y/0.02 = 5 there.
    let sv = Img::from_shape_vec((1, 1, 4), vec![1.0, 0.02, 0.0, 0.5]).unwrap();
    let opr: OperatorRef = Arc::new(Diagonal::new(sv.clone()).unwrap());
    let mean = Img::from_shape_vec((1, 1, 4), vec![0.5, -0.5, 1.0, 0.0]).unwrap();
    let var = Img::from_shape_vec((1, 1, 4), vec![1.0, 1.0, 0.7, 2.0]).unwrap();
    let den = oracle(
        opr.clone(),
        mean.clone(),
        var.clone(),
        Parameterization::Eps,
    );
    let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
    let sigma_y = 0.1;
    let mut cfg = config(SamplerName::Ddnm);
    cfg.steps = Some(50);
    let ddnm = Ddnm::from_config(&cfg, &sched()).unwrap();
    let n = 1500;
    let (mut problems, mut truths, mut noises) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n as u64 {
        let (x, y, ns) = measure_full(&opr, &mean, &var, sigma_y, 700 + i);
        truths.push(x);
        noises.push(ns);
        problems.push(Problem::new(opr.clone(), y, sigma_y, i).unwrap());
    }
    let outs = ddnm.sample(&net, &mut problems).unwrap();
    assert!(outs.iter().all(|o| o.iter().all(|v| v.is_finite())));
    for k in 0..4 {
        let sk = sv[[0, 0, k]];
        let mo = ddnm_moments(
            ddnm.grid(),
            mean[[0, 0, k]],
            var[[0, 0, k]],
            sk,
            sigma_y,
            0.85,
        );
        let vals = spectral_values(&opr, k, [-1.0, 0.0, 1.0], &truths, &noises, &outs);
        let (em, ev) = mo.linear([-1.0, 0.0, 1.0]);
        assert_moments(
            &format!("ddnm+ error of coordinate {k}"),
            &vals,
            (em, ev),
            4.5,
        );
        let mse = em * em + ev;
        eprintln!("ddnm+ coordinate {k} (s {sk}): exact mse {mse}");
        if sk > 0.0 {
            // H†y's error there is σ_y²/s²; DDNM⁺ must not amplify the noise beyond it, and on the weak
            // coordinate (σ_y/s = 5 ≫ prior std 1) must stay far below it.
            let pinv_mse = (sigma_y / sk).powi(2);
            assert!(
                mse < 1.2 * pinv_mse.max(var[[0, 0, k]]),
                "coordinate {k}: {mse} vs {pinv_mse}"
            );
        }
    }
    let (em, ev) =
        ddnm_moments(ddnm.grid(), -0.5, 1.0, 0.02, sigma_y, 0.85).linear([-1.0, 0.0, 1.0]);
    assert!(
        em * em + ev < 0.25 * 25.0,
        "weak coordinate mse {}",
        em * em + ev
    );
}

#[test]
fn ddnm_eta_zero_replays_its_equations_exactly() {
    // With η = 0 DDNM is deterministic after the init, so each output coordinate is an exact affine
    // function of (x, n, z₀); both the noiseless (x-space) and the DDNM⁺ (spectral) paths are checked.
    let sv = Img::from_shape_vec((1, 1, 4), vec![1.0, 0.02, 0.0, 0.5]).unwrap();
    let opr: OperatorRef = Arc::new(Diagonal::new(sv.clone()).unwrap());
    let mean = Img::from_shape_vec((1, 1, 4), vec![0.5, -0.5, 1.0, 0.0]).unwrap();
    let var = Img::from_shape_vec((1, 1, 4), vec![1.0, 1.0, 0.7, 2.0]).unwrap();
    let den = oracle(
        opr.clone(),
        mean.clone(),
        var.clone(),
        Parameterization::Eps,
    );
    let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
    let mut cfg = config(SamplerName::Ddnm);
    cfg.steps = Some(20);
    cfg.eta = Some(0.0);
    let ddnm = Ddnm::from_config(&cfg, &sched()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(90);
    for sigma_y in [0.0, 0.1] {
        let (mut problems, mut truths, mut noises, mut inits) = (vec![], vec![], vec![], vec![]);
        for i in 0..6u64 {
            let (x, y, ns) = measure_full(&opr, &mean, &var, sigma_y, 900 + i);
            let z0 = random_img([1, 1, 4], 1.0, &mut rng);
            let p = Problem::new(opr.clone(), y, sigma_y, i).unwrap();
            problems.push(p.with_init_noise(z0.clone()).unwrap());
            truths.push(x);
            noises.push(ns);
            inits.push(z0);
        }
        let outs = ddnm.sample(&net, &mut problems).unwrap();
        for k in 0..4 {
            let mut aff = Affine::default();
            ddnm_law(
                ddnm.grid(),
                mean[[0, 0, k]],
                var[[0, 0, k]],
                sv[[0, 0, k]],
                sigma_y,
                0.0,
                &mut aff,
            );
            for i in 0..outs.len() {
                let want = aff.eval(
                    truths[i][[0, 0, k]],
                    noises[i][[0, 0, k]],
                    inits[i][[0, 0, k]],
                );
                let got = outs[i][[0, 0, k]];
                assert!(
                    (got - want).abs() < 1e-9 * (1.0 + want.abs()),
                    "sigma_y {sigma_y}, sample {i}, coordinate {k}: {got} vs {want}"
                );
            }
        }
    }
}

#[test]
fn ddnm_is_batch_independent() {
    let opr: OperatorRef = dense_op(71);
    let (mean, var) = prior_params(72);
    let den = oracle(
        opr.clone(),
        mean.clone(),
        var.clone(),
        Parameterization::Eps,
    );
    let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
    let mut cfg = config(SamplerName::Ddnm);
    cfg.steps = Some(25);
    let ddnm = build(&cfg, &sched()).unwrap();
    assert_eq!(ddnm.nfe(), 25);
    let make = || {
        (0..3u64)
            .map(|i| {
                let sy = [0.0, 0.1, 0.01][i as usize];
                let (_, y) = measure(&opr, &mean, &var, sy, 800 + i);
                Problem::new(opr.clone(), y, sy, i).unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_batch_independent(ddnm.as_ref(), &net, &make);
}

// ---------------------------------------------------------------- configs

#[test]
fn configs_are_validated_and_defaults_documented() {
    let s = sched();
    assert_eq!(build(&config(SamplerName::Ddrm), &s).unwrap().nfe(), 20);
    assert_eq!(build(&config(SamplerName::Dps), &s).unwrap().nfe(), 1000);
    assert_eq!(build(&config(SamplerName::Ddnm), &s).unwrap().nfe(), 100);
    assert_eq!(build(&config(SamplerName::Pinv), &s).unwrap().nfe(), 0);
    // steps that do not divide 1000 still give exactly `steps` network evaluations.
    for steps in [3, 7, 999] {
        let mut c = config(SamplerName::Ddrm);
        c.steps = Some(steps);
        assert_eq!(build(&c, &s).unwrap().nfe(), steps);
    }

    for name in [SamplerName::Ddrm, SamplerName::Dps, SamplerName::Ddnm] {
        let flow = build(&config(name), &ModelSchedule::Flow);
        assert!(
            matches!(flow, Err(Error::Unsupported(_))),
            "{name:?} on a flow model"
        );
        let mut c = config(name);
        c.eta = Some(1.5);
        assert!(
            matches!(build(&c, &s), Err(Error::Invalid { .. })),
            "{name:?} eta 1.5"
        );
        let mut c = config(name);
        c.steps = Some(0);
        assert!(
            matches!(build(&c, &s), Err(Error::Invalid { .. })),
            "{name:?} steps 0"
        );
    }
    let mut c = config(SamplerName::Ddrm);
    c.eta_b = Some(-0.1);
    assert!(matches!(build(&c, &s), Err(Error::Invalid { .. })));
    let mut c = config(SamplerName::Dps);
    c.guidance = Some(f64::NAN);
    let err = build(&c, &s).err().expect("NaN guidance is rejected");
    assert!(err.to_string().contains("guidance"), "{err}");
}

/// The oracle without its VJP graph, like a model exported without one.
struct NoVjp(GaussianDiffusion);

impl Denoiser for NoVjp {
    fn engine(&self) -> String {
        "analytic-gaussian without vjp".into()
    }
    fn predict(&self, x: ndarray::ArrayView4<f64>, t: &[f64]) -> conjure::Result<Array4<f64>> {
        self.0.predict(x, t)
    }
    fn has_vjp(&self) -> bool {
        false
    }
}

#[test]
fn only_dps_needs_a_vjp_and_it_says_so_before_any_evaluation() {
    let opr: OperatorRef = Arc::new(
        Diagonal::new(Img::from_shape_vec((1, 1, 3), vec![1.0, 0.0, 0.5]).unwrap()).unwrap(),
    );
    let mean = Img::from_elem((1, 1, 3), 0.1);
    let var = Img::from_elem((1, 1, 3), 1.0);
    let den = NoVjp(oracle(
        opr.clone(),
        mean.clone(),
        var.clone(),
        Parameterization::Eps,
    ));
    let (_, y) = measure(&opr, &mean, &var, 0.0, 77);
    let problems = || vec![Problem::new(opr.clone(), y.clone(), 0.0, 5).unwrap()];
    for name in [SamplerName::Ddrm, SamplerName::Ddnm, SamplerName::Pinv] {
        let mut cfg = config(name);
        cfg.steps = Some(5);
        let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
        let out = build(&cfg, &sched())
            .unwrap()
            .sample(&net, &mut problems())
            .unwrap();
        assert!(out[0].iter().all(|v| v.is_finite()), "{name:?}");
    }
    let mut cfg = config(SamplerName::Dps);
    cfg.steps = Some(5);
    let dps = build(&cfg, &sched()).unwrap();
    let net = network(&den, Parameterization::Eps, JacobianMode::Exact);
    let err = dps.sample(&net, &mut problems()).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{err}");
    assert_eq!(net.forwards(), 0);
    // Finite differences need no VJP graph.
    let net = network(&den, Parameterization::Eps, JacobianMode::FiniteDifference);
    assert!(dps.sample(&net, &mut problems()).is_ok());
}
