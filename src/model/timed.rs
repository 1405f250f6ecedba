//! A timing decorator for any [`Denoiser`]: wraps a network and accumulates the wall-clock time, calls
//! and images of its forward and VJP evaluations, so `conjure bench` can split a run into network time
//! and everything else without timers inside the samplers or engines.
//!
//! Place it directly around the engine (inside a [`TiledDenoiser`](super::tiled::TiledDenoiser)) so
//! that only the network itself is counted; tiling, blending and the f64↔f32 conversions of the
//! wrapper layers above it count as overhead. Times are summed over calls: when several threads call
//! the same decorator concurrently the sum can exceed the wall time (the pipeline calls it from one
//! thread).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use ndarray::{Array4, ArrayView4};

use super::Denoiser;
use crate::error::Result;

/// Accumulated network work, as returned by [`TimedDenoiser::times`].
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct NetworkTimes {
    /// Forward (`predict`) calls.
    pub forward_calls: u64,
    /// Images (batch entries, tiles for a tiled model) through forward calls.
    pub forward_images: u64,
    /// Wall-clock seconds inside forward calls.
    pub forward_seconds: f64,
    /// VJP calls.
    pub vjp_calls: u64,
    /// Images through VJP calls.
    pub vjp_images: u64,
    /// Wall-clock seconds inside VJP calls.
    pub vjp_seconds: f64,
}

impl NetworkTimes {
    /// Forward + VJP seconds.
    pub fn seconds(&self) -> f64 {
        self.forward_seconds + self.vjp_seconds
    }
}

#[derive(Debug, Default)]
struct Counters {
    forward_calls: AtomicU64,
    forward_images: AtomicU64,
    forward_nanos: AtomicU64,
    vjp_calls: AtomicU64,
    vjp_images: AtomicU64,
    vjp_nanos: AtomicU64,
}

/// A [`Denoiser`] that times its inner denoiser. Results are passed through unchanged (errors too).
pub struct TimedDenoiser {
    inner: Arc<dyn Denoiser>,
    counters: Counters,
}

impl TimedDenoiser {
    pub fn new(inner: Arc<dyn Denoiser>) -> Self {
        TimedDenoiser {
            inner,
            counters: Counters::default(),
        }
    }

    /// What was measured so far.
    pub fn times(&self) -> NetworkTimes {
        let c = &self.counters;
        let secs = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64 * 1e-9;
        NetworkTimes {
            forward_calls: c.forward_calls.load(Ordering::Relaxed),
            forward_images: c.forward_images.load(Ordering::Relaxed),
            forward_seconds: secs(&c.forward_nanos),
            vjp_calls: c.vjp_calls.load(Ordering::Relaxed),
            vjp_images: c.vjp_images.load(Ordering::Relaxed),
            vjp_seconds: secs(&c.vjp_nanos),
        }
    }

    /// Zero the counters (e.g. after a warm-up).
    pub fn reset(&self) {
        let c = &self.counters;
        for a in [
            &c.forward_calls,
            &c.forward_images,
            &c.forward_nanos,
            &c.vjp_calls,
            &c.vjp_images,
            &c.vjp_nanos,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

fn nanos(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Denoiser for TimedDenoiser {
    fn engine(&self) -> String {
        self.inner.engine()
    }

    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        let t0 = Instant::now();
        let r = self.inner.predict(x, t);
        let c = &self.counters;
        c.forward_nanos.fetch_add(nanos(t0), Ordering::Relaxed);
        c.forward_calls.fetch_add(1, Ordering::Relaxed);
        c.forward_images
            .fetch_add(x.shape()[0] as u64, Ordering::Relaxed);
        r
    }

    /// Timed as a forward (it is one, keeping the split VJP's residuals on the side).
    fn predict_for_vjp(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        let t0 = Instant::now();
        let r = self.inner.predict_for_vjp(x, t);
        let c = &self.counters;
        c.forward_nanos.fetch_add(nanos(t0), Ordering::Relaxed);
        c.forward_calls.fetch_add(1, Ordering::Relaxed);
        c.forward_images
            .fetch_add(x.shape()[0] as u64, Ordering::Relaxed);
        r
    }

    fn has_vjp(&self) -> bool {
        self.inner.has_vjp()
    }

    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        let t0 = Instant::now();
        let r = self.inner.vjp(x, t, cot);
        let c = &self.counters;
        c.vjp_nanos.fetch_add(nanos(t0), Ordering::Relaxed);
        c.vjp_calls.fetch_add(1, Ordering::Relaxed);
        c.vjp_images
            .fetch_add(x.shape()[0] as u64, Ordering::Relaxed);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::analytic::{GaussianDiffusion, GaussianPrior, IdentityBasis, NoiseLevel};
    use crate::model::Parameterization;
    use crate::schedules::VpContinuous;
    use crate::tensor::Img;

    #[test]
    fn passes_results_through_and_counts_calls_and_images() {
        let prior = GaussianPrior::new(
            Arc::new(IdentityBasis),
            Img::zeros((1, 4, 4)),
            Img::from_elem((1, 4, 4), 0.5),
        )
        .unwrap();
        let den = GaussianDiffusion::new(
            prior,
            NoiseLevel::VpUnit(VpContinuous::default()),
            Parameterization::Eps,
        )
        .unwrap();
        let inner: Arc<dyn Denoiser> = Arc::new(den.clone());
        let timed = TimedDenoiser::new(inner);
        let x = Array4::from_shape_fn((3, 1, 4, 4), |(b, _, i, j)| (b + i * 4 + j) as f64 * 0.1);
        let t = [0.3, 0.5, 0.7];
        assert_eq!(
            timed.predict(x.view(), &t).unwrap(),
            den.predict(x.view(), &t).unwrap()
        );
        let (o, g) = timed.vjp(x.view(), &t, x.view()).unwrap();
        let (o2, g2) = den.vjp(x.view(), &t, x.view()).unwrap();
        assert_eq!((o, g), (o2, g2));
        timed
            .predict(x.slice(ndarray::s![..1, .., .., ..]), &t[..1])
            .unwrap();
        let s = timed.times();
        assert_eq!((s.forward_calls, s.forward_images), (2, 4));
        assert_eq!((s.vjp_calls, s.vjp_images), (1, 3));
        assert!(s.forward_seconds >= 0.0 && s.vjp_seconds >= 0.0);
        assert_eq!(timed.engine(), den.engine());
        // Errors pass through and still count.
        assert!(timed.predict(x.view(), &t[..2]).is_err());
        assert_eq!(timed.times().forward_calls, 3);
        timed.reset();
        assert_eq!(timed.times(), NetworkTimes::default());
    }
}
