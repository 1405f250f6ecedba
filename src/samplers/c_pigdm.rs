//! C-ΠGDM: the Conditional Conjugate Integrator for ΠGDM-guided diffusion (Pandey, Yang & Mandt, *Fast
//! Samplers for Inverse Problems in Iterative Refinement Models*, NeurIPS 2024, arXiv 2405.17673; official
//! code `mandt-lab/c-pigdm`, `ConjugatePGDMSampler` / `NoisyConjugatePGDMSampler`). docs/samplers.md §3–§5.
//!
//! **The ODE (§4.1).** In diffusion time t (sampling runs t from τ down to t_end), with the ΠGDM weight
//! w_t = w r_t² μ_t² and m := H†y − P x̂₀ (a constant for the Jacobian),
//!
//!   dx/dt = −½β(t) [ x − ε_θ/σ_t + w μ_t² J_{x̂₀}ᵀ m ]
//!         = −½β (I − wP) x + ½β ε/σ − ½β w μ H†y − ½β w σ Pε + ½β w μ σ J_εᵀ m.
//!
//! **The conjugate transform (§4.2).** c1(t) = λt + ½b_t, c2(t) = −½ w b_t,
//! A_t x = e^{c1}[x + (e^{c2} − 1) P x], A_t⁻¹ x̄ = e^{−c1}[x̄ + (e^{−c2} − 1) P x̄]. It absorbs the stiff
//! linear part −½β(I − wP)x exactly.
//!
//! **One step (§4.4)** from t_k to t_{k+1}, Δs = t_k − t_{k+1} > 0, network outputs frozen at t_k:
//!
//!   x̄ ← x̄ − λΔs x̄ + ΔΦ_y H†y + ΔΦ_s¹ ε̂ + ΔΦ_s² Pε̂ + ΔΦ_j¹ g + ΔΦ_j² Pg,   x_{k+1} = A⁻¹_{t_{k+1}} x̄,
//!
//! with g = J_εᵀ m (one VJP of the ε output, taken by [`Network::eps_vjp`] in the network's Jacobian mode)
//! and ΔΦ = ∫_{t_k}^{t_{k+1}} f(u) du of the integrands of §4.3 (negative for positive f: time decreases).
//! The ΔΦ's depend only on the configuration, so they are computed once, in the constructor, by adaptive
//! double-exponential quadrature in f64 over each interval ([`super::quad::integrate`]).
//!
//! **Noisy measurements.** `variant: noisy` (and `auto`, the default, when σ_y > 0) runs the exact noisy
//! integrator of [`super::c_pigdm_noisy`]: the noisy ΠGDM ODE is diagonal in the operator's spectral basis,
//! so its transform and inverse are exact per-singular-value scalars.
//!
//! **Official noisy heuristic (`variant: official`, §5, `ncpgdm`).** A^noisy_t = A_t + c3(t) Q with Q = H†H†ᵀ
//! ([`LinearOperator::pinv_gram`]) and c3(t) = ½ w (e^{c1+c2} − 1) σ_y² ln(e^{b_t} − 1 + ε_n); its inverse is
//! the first-order (Neumann) one of the official code, (A^noisy)⁻¹x̄ ≈ A⁻¹x̄ − A⁻¹(c3 Q A⁻¹x̄), and the update
//! gains ΔΦ_yc Q H†y + ΔΦ_sc Q ε̂ + ΔΦ_jc Q g. This is the official code's heuristic, reproduced as written
//! (docs/samplers.md §5 lists where it departs from a clean first-order derivation). σ_y is the problem's
//! [`Problem::sigma_y`] taken as given, on the model's value scale: it is **not** doubled (the official
//! `main.py` adds 2σ_y noise but uses the undoubled σ_y in c3, §2.9; here the caller states the true noise
//! std once, so c3 and the noise agree). Q is the true H†H†ᵀ (0 off the row space), not the official
//! pass-through variant (§2.1). The noisy variant starts from pure noise for inpainting (an operator named
//! `inpaint`), as the official code does; the noiseless one always starts from μ_τ H†y + σ_τ z.
//!
//! The c3 integrals are linear in σ_y², so they are precomputed for σ_y² = 1 and scaled per sample.
//!
//! **Output** is x at t_end (default 0.001, residual noise std ≈ 0.0105), with no final denoising step.
//! Everything per sample (x, x̄, H†y, σ_y) stays per sample; the only batch-wide call is the network's.

use ndarray::Zip;

use super::c_pigdm_noisy::NoisyCPigdm;
use super::common::{check_batch, check_start_end, eps_then_vjp};
use super::{
    check_range, quad, unsupported_variant, ModelSchedule, Problem, Sampler, SamplerConfig,
    SamplerName, SamplerVariant,
};
use crate::error::{Error, Result};
use crate::model::Network;
use crate::operators::{LinearOperator, OperatorKind};
use crate::schedules::VpContinuous;
use crate::tensor::Img;

/// Which C-ΠGDM form runs (spec `sampler.variant`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    /// The exact noisy form when a problem's σ_y > 0, else noiseless (decided per batch).
    Auto,
    /// §4: ignores σ_y.
    Noiseless,
    /// The exact noisy form in the operator's spectral basis ([`super::c_pigdm_noisy`]); at σ_y = 0 it
    /// is the noiseless integrator.
    Noisy,
    /// §5: the official first-order heuristic (`ncpgdm`), kept to reproduce the paper's code.
    Official,
}

impl Variant {
    fn from_spec(v: Option<SamplerVariant>) -> Result<Self> {
        match v {
            None | Some(SamplerVariant::Auto) => Ok(Variant::Auto),
            Some(SamplerVariant::Noiseless) => Ok(Variant::Noiseless),
            Some(SamplerVariant::Noisy) => Ok(Variant::Noisy),
            Some(SamplerVariant::Official) => Ok(Variant::Official),
            Some(other) => Err(unsupported_variant(SamplerName::CPigdm, other)),
        }
    }
}

/// Default number of steps (NFE), docs/samplers.md §12 (README configuration).
pub const DEFAULT_STEPS: usize = 5;
/// Default guidance weight w (§12).
pub const DEFAULT_GUIDANCE: f64 = 15.0;
/// Default λ (§12).
pub const DEFAULT_LAMBDA: f64 = 0.0;
pub use super::common::{time_grid, DEFAULT_END_TIME, DEFAULT_NUM_EPS, DEFAULT_START_TIME};

/// The ΔΦ's of one step t_k → t_{k+1} (docs/samplers.md §4.3, §5).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepCoefficients {
    /// Δs = s_{k+1} − s_k = t_k − t_{k+1} > 0.
    pub ds: f64,
    /// ΔΦ_y, multiplies H†y.
    pub phi_y: f64,
    /// ΔΦ_s¹, multiplies ε̂.
    pub phi_s1: f64,
    /// ΔΦ_s², multiplies Pε̂.
    pub phi_s2: f64,
    /// ΔΦ_j¹, multiplies g = J_εᵀ m.
    pub phi_j1: f64,
    /// ΔΦ_j², multiplies Pg.
    pub phi_j2: f64,
    /// ΔΦ_s¹ + ΔΦ_s², integrated as one integrand (½β e^{c1+c2}/(σ + ε_n) − w ½β σ e^{c1+c2}): the
    /// coefficient of Pε̂ on the range of P. The two terms are each of size e^{c1} while their sum is of
    /// size e^{c1+c2}, so adding the separate integrals would cancel every digit once e^{c2} < 1e-16.
    pub phi_s_range: f64,
    /// ΔΦ_j¹ + ΔΦ_j² as one integrand (w ½β σ μ e^{c1+c2}): the coefficient of Pg on the range of P.
    pub phi_j_range: f64,
    /// ΔΦ_yc per unit σ_y², multiplies Q H†y (noisy variant).
    pub phi_yc: f64,
    /// ΔΦ_sc per unit σ_y², multiplies Q ε̂ (noisy variant).
    pub phi_sc: f64,
    /// ΔΦ_jc per unit σ_y², multiplies Q g (noisy variant).
    pub phi_jc: f64,
}

/// The C-ΠGDM sampler with its grid and coefficients precomputed.
#[derive(Debug, Clone)]
pub struct CPigdm {
    vp: VpContinuous,
    w: f64,
    lambda: f64,
    eps_n: f64,
    variant: Variant,
    /// Diffusion times t_k = 1 − s_k, k = 0..K (decreasing).
    t: Vec<f64>,
    /// c1(t_k), c2(t_k).
    c1: Vec<f64>,
    c2: Vec<f64>,
    /// c3(t_k) / σ_y².
    c3_unit: Vec<f64>,
    coef: Vec<StepCoefficients>,
    /// The exact noisy integrator on the same grid.
    noisy: NoisyCPigdm,
}

impl CPigdm {
    /// Build from a spec's sampler settings; defaults from docs/samplers.md §12.
    pub fn from_config(cfg: &SamplerConfig, sched: &ModelSchedule) -> Result<Self> {
        let (vp, _) = sched.diffusion("c-pigdm")?;
        let steps = cfg.steps.unwrap_or(DEFAULT_STEPS);
        if steps == 0 {
            return Err(Error::invalid("steps", steps, ">= 1"));
        }
        let w = check_range(
            "guidance",
            cfg.guidance.unwrap_or(DEFAULT_GUIDANCE),
            0.0,
            f64::MAX,
        )?;
        let lambda = check_range(
            "lambda",
            cfg.lambda.unwrap_or(DEFAULT_LAMBDA),
            -f64::MAX,
            f64::MAX,
        )?;
        let tau = cfg.start_time.unwrap_or(DEFAULT_START_TIME);
        let t_end = cfg.end_time.unwrap_or(DEFAULT_END_TIME);
        check_start_end(tau, t_end)?;
        let eps_n = check_range("num_eps", cfg.num_eps.unwrap_or(DEFAULT_NUM_EPS), 0.0, 1.0)?;
        let variant = Variant::from_spec(cfg.variant)?;
        Self::new(*vp, steps, w, lambda, tau, t_end, eps_n, variant)
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        vp: VpContinuous,
        steps: usize,
        w: f64,
        lambda: f64,
        tau: f64,
        t_end: f64,
        eps_n: f64,
        variant: Variant,
    ) -> Result<Self> {
        let t = time_grid(tau, t_end, steps);
        let c1f = move |u: f64| lambda * u + 0.5 * vp.b(u);
        let c2f = move |u: f64| -0.5 * w * vp.b(u);
        let c3f = move |u: f64| {
            0.5 * w * ((c1f(u) + c2f(u)).exp() - 1.0) * (vp.b(u).exp_m1() + eps_n).ln()
        };
        // The integrands of §4.3 (noiseless) and §5 (noisy, per unit σ_y²).
        let half_beta = move |u: f64| 0.5 * vp.beta(u);
        let f_y = |u: f64| -w * half_beta(u) * vp.mu(u) * (c1f(u) + c2f(u)).exp();
        let f_s1 = |u: f64| half_beta(u) * c1f(u).exp() / (vp.sigma(u) + eps_n);
        let f_s2 = |u: f64| {
            half_beta(u) * c1f(u).exp() * c2f(u).exp_m1() / (vp.sigma(u) + eps_n)
                - w * half_beta(u) * vp.sigma(u) * (c1f(u) + c2f(u)).exp()
        };
        let f_j1 = |u: f64| w * half_beta(u) * vp.sigma(u) * vp.mu(u) * c1f(u).exp();
        let f_j2 =
            |u: f64| w * half_beta(u) * vp.sigma(u) * vp.mu(u) * c1f(u).exp() * c2f(u).exp_m1();
        let f_s_range = |u: f64| {
            half_beta(u) * (c1f(u) + c2f(u)).exp() * (1.0 / (vp.sigma(u) + eps_n) - w * vp.sigma(u))
        };
        let f_j_range =
            |u: f64| w * half_beta(u) * vp.sigma(u) * vp.mu(u) * (c1f(u) + c2f(u)).exp();
        let f_yc = |u: f64| -half_beta(u) * w * vp.mu(u) * c3f(u);
        let f_sc = |u: f64| half_beta(u) * c3f(u) * (1.0 / (vp.sigma(u) + eps_n) - w * vp.sigma(u));
        let f_jc = |u: f64| w * vp.sigma(u) * vp.mu(u) * half_beta(u) * c3f(u);
        let mut coef = Vec::with_capacity(steps);
        for k in 0..steps {
            let (a, b) = (t[k], t[k + 1]);
            coef.push(StepCoefficients {
                ds: a - b,
                phi_y: quad::integrate(f_y, a, b)?,
                phi_s1: quad::integrate(f_s1, a, b)?,
                phi_s2: quad::integrate(f_s2, a, b)?,
                phi_j1: quad::integrate(f_j1, a, b)?,
                phi_j2: quad::integrate(f_j2, a, b)?,
                phi_s_range: quad::integrate(f_s_range, a, b)?,
                phi_j_range: quad::integrate(f_j_range, a, b)?,
                phi_yc: quad::integrate(f_yc, a, b)?,
                phi_sc: quad::integrate(f_sc, a, b)?,
                phi_jc: quad::integrate(f_jc, a, b)?,
            });
        }
        Ok(CPigdm {
            vp,
            w,
            lambda,
            eps_n,
            variant,
            c1: t.iter().map(|&u| c1f(u)).collect(),
            c2: t.iter().map(|&u| c2f(u)).collect(),
            c3_unit: t.iter().map(|&u| c3f(u)).collect(),
            noisy: NoisyCPigdm::new(vp, w, lambda, eps_n, t.clone()),
            t,
            coef,
        })
    }

    /// Diffusion times t_0 = τ > t_1 > … > t_K = t_end.
    pub fn times(&self) -> &[f64] {
        &self.t
    }
    /// The ΔΦ's of each step.
    pub fn coefficients(&self) -> &[StepCoefficients] {
        &self.coef
    }
    /// e^{c1(t_k)}.
    pub fn exp_c1(&self, k: usize) -> f64 {
        self.c1[k].exp()
    }
    /// e^{c2(t_k)}.
    pub fn exp_c2(&self, k: usize) -> f64 {
        self.c2[k].exp()
    }
    /// c3(t_k) for measurement noise std `sigma_y`.
    pub fn c3(&self, k: usize, sigma_y: f64) -> f64 {
        self.c3_unit[k] * sigma_y * sigma_y
    }
    /// (w, λ, ε_n).
    pub fn params(&self) -> (f64, f64, f64) {
        (self.w, self.lambda, self.eps_n)
    }
    /// The variant in use.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// A^noisy_{t_k} x = A_{t_k} x + c3(t_k) Q x of the official variant (just A_{t_k} x when σ_y = 0).
    ///
    /// Evaluated as e^{c1}[(x − Px) + e^{c2} Px], equal to e^{c1}[x + (e^{c2} − 1)Px] but without the
    /// cancellation of x + (e^{c2} − 1)x on the range of P, which the inverse would amplify by e^{−c2}.
    pub fn transform(&self, op: &dyn LinearOperator, k: usize, sigma_y: f64, x: &Img) -> Img {
        let (e1, e2) = (self.c1[k].exp(), self.c2[k].exp());
        let mut out = op.project(x);
        out.zip_mut_with(x, |p, &x| *p = e1 * ((x - *p) + e2 * *p));
        let c3 = self.c3(k, sigma_y);
        if c3 != 0.0 {
            out.scaled_add(c3, &op.pinv_gram(x));
        }
        out
    }

    /// A⁻¹_{t_k} x̄ = e^{−c1}[x̄ + (e^{−c2} − 1) P x̄], evaluated as e^{−c1}[(x̄ − Px̄) + e^{−c2} Px̄].
    fn inverse_noiseless(&self, op: &dyn LinearOperator, k: usize, xbar: &Img) -> Img {
        let (e1, em2) = ((-self.c1[k]).exp(), (-self.c2[k]).exp());
        let mut out = op.project(xbar);
        out.zip_mut_with(xbar, |p, &xb| *p = e1 * ((xb - *p) + em2 * *p));
        out
    }

    /// (A^noisy_{t_k})⁻¹ x̄ ≈ A⁻¹x̄ − A⁻¹(c3 Q A⁻¹x̄) (first order in c3, as the official code; exact A⁻¹
    /// when σ_y = 0).
    pub fn inverse_transform(
        &self,
        op: &dyn LinearOperator,
        k: usize,
        sigma_y: f64,
        xbar: &Img,
    ) -> Img {
        let u = self.inverse_noiseless(op, k, xbar);
        let c3 = self.c3(k, sigma_y);
        if c3 == 0.0 {
            return u;
        }
        let corr = self.inverse_noiseless(op, k, &(op.pinv_gram(&u) * c3));
        u - corr
    }

    /// A^noisy_{t_k} x as its two parts ((I − P) x̄, P x̄) = (e^{c1}(x − Px), e^{c1+c2} Px + c3 Q x).
    fn transform_split(
        &self,
        op: &dyn LinearOperator,
        k: usize,
        sigma_y: f64,
        x: &Img,
    ) -> (Img, Img) {
        let (e1, e12) = (self.c1[k].exp(), (self.c1[k] + self.c2[k]).exp());
        let px = op.project(x);
        let perp = Zip::from(x).and(&px).map_collect(|&x, &p| e1 * (x - p));
        let mut range = &px * e12;
        let c3 = self.c3(k, sigma_y);
        if c3 != 0.0 {
            range.scaled_add(c3, &op.pinv_gram(x));
        }
        (perp, range)
    }

    /// x_k = (A^noisy_{t_k})⁻¹ x̄ from the two parts of x̄ kept in `s`: e^{−c1}(I − P)x̄ + e^{−c1−c2}P x̄,
    /// minus the first-order noisy correction e^{−c1−c2} c3 Q u (Q u = Q P u, as Q = H†H†ᵀ lives on the
    /// range of P). Same value as [`Self::inverse_transform`] of the sum, but P is never applied to a
    /// vector mixing both parts: there the rounding error of the e^{c1}-sized part, ≈ 1e-16 e^{c1}, would
    /// be multiplied by e^{−c2} = e^{½ w b_t} (e^{75} at w = 15, t = 1) and swamp the result.
    fn inverse_split(&self, op: &dyn LinearOperator, k: usize, s: &mut State) -> Img {
        let (em1, em12) = ((-self.c1[k]).exp(), (-self.c1[k] - self.c2[k]).exp());
        let mut u_range = &s.xbar_range * em12;
        let c3 = self.c3(k, s.sy);
        if c3 != 0.0 {
            let corr = op.pinv_gram(&u_range) * (c3 * em12);
            u_range -= &corr;
        }
        Zip::from(&mut u_range)
            .and(&s.xbar_perp)
            .for_each(|u, &xp| *u += em1 * xp);
        u_range
    }

    /// How far the official noisy variant's first-order inverse (A + c3 Q)⁻¹ ≈ A⁻¹ − A⁻¹ c3 Q A⁻¹ is from its
    /// range of validity for operator `op` and noise `sigma_y`: max over the grid of
    /// |c3(t_k)| e^{−(c1+c2)(t_k)} ‖Q‖, with ‖Q‖ = 1 / s_min² (Q = H†H†ᵀ). The expansion needs this ≪ 1;
    /// at the published w and τ it is many orders of magnitude larger on every task of the quality study,
    /// where the noisy variant diverged or gave garbage (README, "Quality study").
    pub fn noisy_inverse_ratio(&self, op: &dyn LinearOperator, sigma_y: f64) -> f64 {
        let s_min = op
            .singulars()
            .iter()
            .copied()
            .filter(|&s| s > 0.0)
            .fold(f64::INFINITY, f64::min);
        if !s_min.is_finite() {
            return 0.0;
        }
        (0..self.t.len())
            .map(|k| {
                self.c3(k, sigma_y).abs() * (-(self.c1[k] + self.c2[k])).exp() / (s_min * s_min)
            })
            .fold(0.0, f64::max)
    }

    /// The exact noisy integrator ([`super::c_pigdm_noisy`]) on this sampler's grid.
    pub fn noisy(&self) -> &NoisyCPigdm {
        &self.noisy
    }

    /// σ_y the official transform uses for a problem: the problem's σ_y in the official variant, else 0.
    fn sigma_y_of(&self, p: &Problem) -> f64 {
        match self.variant {
            Variant::Official => p.sigma_y,
            _ => 0.0,
        }
    }

    fn is_official(&self) -> bool {
        self.variant == Variant::Official
    }

    /// Whether a batch runs the exact noisy form.
    fn runs_exact_noisy(&self, problems: &[Problem]) -> bool {
        match self.variant {
            Variant::Noisy => true,
            Variant::Auto => problems.iter().any(|p| p.sigma_y > 0.0),
            Variant::Noiseless | Variant::Official => false,
        }
    }
}

/// Per-sample state.
struct State {
    /// H†y.
    hy: Img,
    /// Q H†y (noisy variant only).
    qhy: Option<Img>,
    /// σ_y the transform uses.
    sy: f64,
    /// x̄ off the range of P, (I − P) x̄ = e^{c1} (I − P) x.
    xbar_perp: Img,
    /// x̄ on the range of P, P x̄ = e^{c1+c2} P x (+ c3 Q x).
    xbar_range: Img,
}

impl Sampler for CPigdm {
    fn name(&self) -> &'static str {
        "c-pigdm"
    }

    fn nfe(&self) -> usize {
        self.coef.len()
    }

    fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        net.expect_vjps();
        check_batch(problems)?;
        if problems.is_empty() {
            return Ok(Vec::new());
        }
        if self.runs_exact_noisy(problems) {
            return self.noisy.sample(net, problems);
        }
        if let Some(r) = problems
            .iter()
            .filter(|_| self.is_official())
            .map(|p| self.noisy_inverse_ratio(p.op.as_ref(), self.sigma_y_of(p)))
            .reduce(f64::max)
            .filter(|&r| r > 1.0)
        {
            // Once per process: the pipeline retries a failed batch image by image.
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| tracing::warn!(
                "c-pigdm noisy variant: its first-order inverse is far outside its range of validity \
                 (|c3| e^-(c1+c2) |Q| up to {r:.1e}, needs << 1); expect divergence or garbage, \
                 consider sampler.variant: noisy (README, Quality study)"
            ));
        }
        let vp = &self.vp;
        let tau = self.t[0];
        let (mu0, sigma0) = (vp.mu(tau), vp.sigma(tau));
        // Initialization (§4.4 steps 3–4; §5 for the noisy start).
        // The states x_k are kept apart from the rest of the per-sample state so that the network reads
        // them in place (no per-step copy of the batch).
        let (mut st, mut xs): (Vec<State>, Vec<Img>) = problems
            .iter_mut()
            .map(|p| {
                let op = p.op.clone();
                let noisy = self.is_official();
                let sy = self.sigma_y_of(p);
                let hy = op.pinv(&p.y);
                let z = p.init_noise();
                let x0 = if noisy && op.kind() == Some(OperatorKind::Inpaint) {
                    z
                } else {
                    &hy * mu0 + &(z * sigma0)
                };
                let (xbar_perp, xbar_range) = self.transform_split(op.as_ref(), 0, sy, &x0);
                let qhy = noisy.then(|| op.pinv_gram(&hy));
                let mut s = State {
                    hy,
                    qhy,
                    sy,
                    xbar_perp,
                    xbar_range,
                };
                // The noisy code maps x̄ back at the start of every step, step 0 included.
                let x = if noisy {
                    self.inverse_split(op.as_ref(), 0, &mut s)
                } else {
                    x0
                };
                (s, x)
            })
            .unzip();

        for (k, c) in self.coef.iter().enumerate() {
            let t = self.t[k];
            let (mu, sigma) = (vp.mu(t), vp.sigma(t));
            let t_net = net.time.diffusion_continuous(t);
            // ε̂, then m = H†y − P x̂₀ with x̂₀ = (x − σ ε̂)/μ, then g = J_εᵀ m.
            let (eps, _m, g) = eps_then_vjp(net, &xs, t_net, mu, sigma, |i, e| {
                let x0_hat = Zip::from(&xs[i])
                    .and(e)
                    .map_collect(|&x, &e| (x - e * sigma) / mu);
                let mut m = problems[i].op.project(&x0_hat);
                m.zip_mut_with(&st[i].hy, |pm, &hy| *pm = hy - *pm);
                m
            })?;
            for (i, ((s, e), g)) in st.iter_mut().zip(eps).zip(&g).enumerate() {
                let op = problems[i].op.as_ref();
                // x̄ ← x̄ − λΔs x̄ + ΔΦ_y H†y + ΔΦ_s¹ ε̂ + ΔΦ_s² Pε̂ + ΔΦ_j¹ g + ΔΦ_j² Pg, on the two
                // subspaces apart (H†y, Pε̂ and Pg lie in the range of P):
                //   (I − P) x̄ ← (1 − λΔs)(I − P) x̄ + ΔΦ_s¹ (I − P) ε̂ + ΔΦ_j¹ (I − P) g,
                //   P x̄ ← (1 − λΔs) P x̄ + ΔΦ_y H†y + (ΔΦ_s¹ + ΔΦ_s²) Pε̂ + (ΔΦ_j¹ + ΔΦ_j²) Pg.
                let decay = 1.0 - self.lambda * c.ds;
                let (pe, pg) = (op.project(&e), op.project(g));
                let perp = &mut s.xbar_perp;
                *perp *= decay;
                Zip::from(&mut *perp)
                    .and(&e)
                    .and(&pe)
                    .and(g)
                    .and(&pg)
                    .for_each(|xb, &e, &pe, &g, &pg| {
                        *xb += c.phi_s1 * (e - pe) + c.phi_j1 * (g - pg)
                    });
                let range = &mut s.xbar_range;
                *range *= decay;
                range.scaled_add(c.phi_y, &s.hy);
                range.scaled_add(c.phi_s_range, &pe);
                range.scaled_add(c.phi_j_range, &pg);
                // Noisy: + ΔΦ_yc Q H†y + ΔΦ_sc Q ε̂ + ΔΦ_jc Q g (coefficients scale with σ_y²).
                let sy2 = s.sy * s.sy;
                if let (Some(qhy), true) = (&s.qhy, sy2 > 0.0) {
                    range.scaled_add(c.phi_yc * sy2, qhy);
                    let mut q_in = e * (c.phi_sc * sy2);
                    q_in.scaled_add(c.phi_jc * sy2, g);
                    *range += &op.pinv_gram(&q_in);
                }
                xs[i] = self.inverse_split(op, k + 1, s);
            }
        }
        Ok(xs)
    }
}
