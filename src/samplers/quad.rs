//! Adaptive quadrature in f64 for the Φ coefficients (docs/samplers.md §3, §4.3): each interval is integrated
//! directly (never from 0, where Φ_s¹'s integrand behaves like u^{-1/2}) with the double-exponential
//! (tanh-sinh) rule of the `quadrature` crate, which converges to ~1e-14 on these smooth integrands.

use crate::error::{Error, Result};

/// Absolute-error target of every Φ integral.
pub const TOLERANCE: f64 = 1e-12;

/// ∫ₐᵇ f(u) du (signed: b < a gives the negative of ∫ᵇₐ).
pub fn integrate(f: impl Fn(f64) -> f64, a: f64, b: f64) -> Result<f64> {
    if a == b {
        return Ok(0.0);
    }
    let (lo, hi, sign) = if a < b { (a, b, 1.0) } else { (b, a, -1.0) };
    let out = quadrature::double_exponential::integrate(&f, lo, hi, TOLERANCE);
    if !out.integral.is_finite() {
        return Err(Error::Numerical(format!(
            "quadrature over [{lo}, {hi}] gave {}",
            out.integral
        )));
    }
    Ok(sign * out.integral)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phi_s1_interval_matches_closed_form() {
        // λ = 0, ε_n = 0: Φ_s¹(t) = σ_t/μ_t (docs/samplers.md §4.5).
        let vp = crate::schedules::VpContinuous::default();
        let f = |u: f64| 0.5 * vp.beta(u) * (0.5 * vp.b(u)).exp() / vp.sigma(u);
        for (a, b) in [(0.001, 0.0808), (0.0808, 0.1606), (1e-6, 0.001)] {
            let exact = vp.sigma(b) / vp.mu(b) - vp.sigma(a) / vp.mu(a);
            assert!((integrate(f, a, b).unwrap() - exact).abs() < 1e-12 * exact);
        }
    }

    #[test]
    fn integrates_polynomials_and_singular_endpoints() {
        assert!((integrate(|u| u * u, 0.0, 2.0).unwrap() - 8.0 / 3.0).abs() < 1e-13);
        assert!((integrate(|u| u * u, 2.0, 0.0).unwrap() + 8.0 / 3.0).abs() < 1e-13);
        let s = integrate(|u| 1.0 / u.sqrt(), 0.0, 1.0).unwrap();
        // An integrable endpoint singularity converges only to ~1e-7 — one reason Φ intervals never start at 0.
        assert!((s - 2.0).abs() < 1e-6, "{s}");
        assert!(
            (integrate(f64::exp, 0.1, 0.3).unwrap() - (0.3f64.exp() - 0.1f64.exp())).abs() < 1e-14
        );
    }
}
