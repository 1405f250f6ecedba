//! TiledDenoiser: exactness for local denoisers, interior exactness and partition of unity for non-local
//! ones, an exact VJP, independence of batch size, and no seams on periodic content.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use conjure::model::analytic::{
    GaussianDiffusion, GaussianMixture, GaussianPrior, IdentityBasis, MixtureDiffusion, NoiseLevel,
};
use conjure::model::tiled::{tile_origins, TileConfig, TilePlan, TiledDenoiser};
use conjure::model::{Denoiser, Parameterization};
use conjure::operators::Img;
use conjure::schedules::VpContinuous;
use ndarray::{Array3, Array4, ArrayView4};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn randn4(rng: &mut ChaCha8Rng, shape: (usize, usize, usize, usize)) -> Array4<f64> {
    Array4::from_shape_fn(shape, |_| StandardNormal.sample(rng))
}

fn max_abs(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

fn dot(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// A pixel-wise exact denoiser: Gaussian prior with constant mean and variance in the pixel basis.
fn pixelwise(c: usize, h: usize, w: usize) -> GaussianDiffusion {
    let prior = GaussianPrior::new(
        Arc::new(IdentityBasis),
        Img::from_elem((c, h, w), 0.3),
        Img::from_elem((c, h, w), 0.5),
    )
    .unwrap();
    GaussianDiffusion::new(
        prior,
        NoiseLevel::VpUnit(VpContinuous::default()),
        Parameterization::Eps,
    )
    .unwrap()
}

/// Test-only non-local denoiser: out = (1 + t) · (3×3 box blur of x), per channel, on any image size.
/// `circular` wraps around the image borders, otherwise the blur is zero-padded. Both are self-adjoint,
/// so the VJP applies the same map to the cotangent.
struct Blur3 {
    circular: bool,
    calls: AtomicUsize,
    largest: AtomicUsize,
}

impl Blur3 {
    fn new(circular: bool) -> Self {
        Blur3 {
            circular,
            calls: AtomicUsize::new(0),
            largest: AtomicUsize::new(0),
        }
    }

    fn apply(&self, x: ArrayView4<f64>, t: &[f64]) -> Array4<f64> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.largest.fetch_max(x.shape()[0], Ordering::Relaxed);
        let (b, c, h, w) = x.dim();
        Array4::from_shape_fn((b, c, h, w), |(n, ch, r, q)| {
            let mut acc = 0.0;
            for dr in -1i64..=1 {
                for dq in -1i64..=1 {
                    let (mut rr, mut qq) = (r as i64 + dr, q as i64 + dq);
                    if self.circular {
                        rr = rr.rem_euclid(h as i64);
                        qq = qq.rem_euclid(w as i64);
                    } else if rr < 0 || qq < 0 || rr >= h as i64 || qq >= w as i64 {
                        continue;
                    }
                    acc += x[[n, ch, rr as usize, qq as usize]];
                }
            }
            (1.0 + t[n]) * acc / 9.0
        })
    }
}

impl Denoiser for Blur3 {
    fn engine(&self) -> String {
        "test-blur3".into()
    }
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> conjure::Result<Array4<f64>> {
        Ok(self.apply(x, t))
    }
    fn has_vjp(&self) -> bool {
        true
    }
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> conjure::Result<(Array4<f64>, Array4<f64>)> {
        Ok((self.apply(x, t), self.apply(cot, t)))
    }
}

/// Records every tile batch it sees, then delegates.
struct Recorder {
    inner: Arc<dyn Denoiser>,
    sizes: Mutex<Vec<usize>>,
}

impl Denoiser for Recorder {
    fn engine(&self) -> String {
        self.inner.engine()
    }
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> conjure::Result<Array4<f64>> {
        self.sizes.lock().unwrap().push(x.shape()[0]);
        self.inner.predict(x, t)
    }
    fn has_vjp(&self) -> bool {
        self.inner.has_vjp()
    }
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> conjure::Result<(Array4<f64>, Array4<f64>)> {
        self.sizes.lock().unwrap().push(x.shape()[0]);
        self.inner.vjp(x, t, cot)
    }
}

fn cfg(tile: usize, overlap: usize, batch_size: usize) -> TileConfig {
    TileConfig {
        tile_h: tile,
        tile_w: tile,
        overlap,
        batch_size,
    }
}

#[test]
fn tile_origins_are_deterministic_flush_and_evenly_spaced() {
    assert_eq!(tile_origins(16, 16, 8), vec![0]);
    assert_eq!(tile_origins(40, 16, 8), vec![0, 8, 16, 24]);
    assert_eq!(tile_origins(33, 32, 8), vec![0, 1]);
    for len in 16..200 {
        for overlap in [0, 3, 8, 15] {
            let o = tile_origins(len, 16, overlap);
            assert_eq!(o[0], 0);
            assert_eq!(*o.last().unwrap(), len - 16, "len {len}: {o:?}");
            let steps: Vec<usize> = o.windows(2).map(|w| w[1] - w[0]).collect();
            if let (Some(mn), Some(mx)) = (steps.iter().min(), steps.iter().max()) {
                assert!(mx - mn <= 1, "uneven spacing {o:?}");
                assert!(
                    *mn >= 1 && 16 - mx >= overlap,
                    "overlap below {overlap}: {o:?}"
                );
            }
            // Minimal: one tile fewer could not keep the overlap.
            if o.len() > 2 {
                assert!((len - 16).div_ceil(o.len() - 2) > 16 - overlap);
            }
        }
    }
}

#[test]
fn blend_weights_sum_to_one() {
    for (h, w) in [(16, 16), (40, 53), (17, 100), (5, 30), (3, 2)] {
        for overlap in [0, 4, 8] {
            let plan = TilePlan::new(h, w, &cfg(16, overlap, 4)).unwrap();
            let cov = plan.coverage();
            assert_eq!(cov.dim(), plan.padded);
            assert!(
                cov.iter().all(|v| (v - 1.0).abs() < 1e-12),
                "{h}x{w} overlap {overlap}"
            );
            assert!(plan.weights.iter().flatten().all(|&v| v > 0.0));
        }
    }
}

#[test]
fn pixelwise_denoiser_is_reproduced_exactly() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (h, w) in [(40, 53), (16, 16), (10, 7), (10, 40), (33, 17)] {
        let x = randn4(&mut rng, (2, 3, h, w));
        let t = [0.3, 0.8];
        let tiled = TiledDenoiser::new(Arc::new(pixelwise(3, 16, 16)), cfg(16, 8, 5)).unwrap();
        let reference = pixelwise(3, h, w);
        let got = tiled.predict(x.view(), &t).unwrap();
        let want = reference.predict(x.view(), &t).unwrap();
        let d = max_abs(&got, &want);
        assert!(d < 1e-12, "{h}x{w}: max diff {d}");
        // The two images carry their own time: swapping t changes the output.
        let swapped = tiled.predict(x.view(), &[0.8, 0.3]).unwrap();
        assert!(max_abs(&swapped, &got) > 1e-3);
    }
}

#[test]
fn nonlocal_denoiser_is_exact_away_from_seams() {
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let (h, w, tile) = (37, 50, 16);
    let c = cfg(tile, 6, 3);
    let x = randn4(&mut rng, (1, 2, h, w));
    let tiled = TiledDenoiser::new(Arc::new(Blur3::new(false)), c).unwrap();
    let got = tiled.predict(x.view(), &[0.5]).unwrap();
    let want = Blur3::new(false).predict(x.view(), &[0.5]).unwrap();
    let plan = tiled.plan(h, w).unwrap();
    // A pixel is "interior" when every tile covering it also covers its 3×3 neighbourhood (tile edges on
    // the image border do not count: the untiled blur is zero-padded there too).
    let mut interior = 0;
    let mut seam_diff: f64 = 0.0;
    for r in 0..h {
        for q in 0..w {
            let ok = (0..plan.len()).all(|k| {
                let (y0, x0) = plan.origin(k);
                let inside = r >= y0 && r < y0 + tile && q >= x0 && q < x0 + tile;
                let row_ok = (r > y0 || y0 == 0) && (r + 1 < y0 + tile || y0 + tile == h);
                let col_ok = (q > x0 || x0 == 0) && (q + 1 < x0 + tile || x0 + tile == w);
                !inside || (row_ok && col_ok)
            });
            let d = (0..2)
                .map(|ch| (got[[0, ch, r, q]] - want[[0, ch, r, q]]).abs())
                .fold(0.0, f64::max);
            if ok {
                interior += 1;
                assert!(d < 1e-12, "interior pixel ({r}, {q}) differs by {d}");
            } else {
                seam_diff = seam_diff.max(d);
            }
        }
    }
    assert!(interior > h * w / 2, "only {interior} interior pixels");
    // The test can fail: near seams a tile's zero padding does show.
    assert!(
        seam_diff > 1e-3,
        "seam pixels should differ for a non-local denoiser"
    );
}

#[test]
fn periodic_image_has_no_seams() {
    // Content with period 8 and tiles of 16 at stride 8: every tile sees the same two periods, the circular
    // blur is exact on each, and the blend reproduces the untiled circular blur everywhere.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let cell = randn4(&mut rng, (1, 1, 8, 8));
    let (h, w) = (40, 48);
    let x = Array4::from_shape_fn((1, 1, h, w), |(_, _, r, q)| cell[[0, 0, r % 8, q % 8]]);
    let tiled = TiledDenoiser::new(Arc::new(Blur3::new(true)), cfg(16, 8, 4)).unwrap();
    let got = tiled.predict(x.view(), &[0.2]).unwrap();
    let want = Blur3::new(true).predict(x.view(), &[0.2]).unwrap();
    assert!(max_abs(&got, &want) < 1e-12);
    for r in 0..h {
        for q in 0..w {
            assert!((got[[0, 0, r, q]] - got[[0, 0, r % 8, q % 8]]).abs() < 1e-12);
        }
    }
}

fn mixture_denoiser(tile: usize, rng: &mut ChaCha8Rng) -> MixtureDiffusion {
    let means = (0..3)
        .map(|_| {
            Array3::from_shape_fn((1, tile, tile), |_| {
                let z: f64 = StandardNormal.sample(rng);
                0.3 * z
            })
        })
        .collect();
    let mix = GaussianMixture::new(vec![0.3, 0.3, 0.4], means, vec![0.2, 0.4, 0.6]).unwrap();
    MixtureDiffusion::new(
        mix,
        NoiseLevel::VpUnit(VpContinuous::default()),
        Parameterization::X0,
    )
    .unwrap()
}

#[test]
fn tiled_vjp_matches_finite_differences() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let inner = Arc::new(mixture_denoiser(8, &mut rng));
    let tiled = TiledDenoiser::new(inner, cfg(8, 3, 5)).unwrap();
    // Sizes with tiling in both axes, with reflect padding in one axis, and in both.
    for (h, w) in [(19, 21), (6, 19), (5, 3)] {
        let x = randn4(&mut rng, (2, 1, h, w)) * 0.5;
        let t = [0.4, 0.7];
        for _ in 0..3 {
            let u = randn4(&mut rng, (2, 1, h, w));
            let v = randn4(&mut rng, (2, 1, h, w));
            let (out, g) = tiled.vjp(x.view(), &t, u.view()).unwrap();
            assert_eq!(out, tiled.predict(x.view(), &t).unwrap());
            let hstep = 1e-5;
            let fp = tiled.predict((&x + &(&v * hstep)).view(), &t).unwrap();
            let fm = tiled.predict((&x - &(&v * hstep)).view(), &t).unwrap();
            let jv = (fp - fm) / (2.0 * hstep);
            let (lhs, rhs) = (dot(&g, &v), dot(&u, &jv));
            assert!(
                (lhs - rhs).abs() < 1e-7 * (1.0 + rhs.abs()),
                "{h}x{w}: <J^T u, v> = {lhs} vs FD {rhs}"
            );
        }
    }
}

#[test]
fn results_do_not_depend_on_batch_size() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let inner: Arc<dyn Denoiser> = Arc::new(mixture_denoiser(8, &mut rng));
    let x = randn4(&mut rng, (3, 1, 20, 17)) * 0.5;
    let u = randn4(&mut rng, (3, 1, 20, 17));
    let t = [0.2, 0.5, 0.9];
    let mut results = Vec::new();
    for bs in [1, 7, 64] {
        let rec = Arc::new(Recorder {
            inner: inner.clone(),
            sizes: Mutex::new(Vec::new()),
        });
        let tiled = TiledDenoiser::new(rec.clone(), cfg(8, 3, bs)).unwrap();
        let p = tiled.predict(x.view(), &t).unwrap();
        let (o, g) = tiled.vjp(x.view(), &t, u.view()).unwrap();
        let sizes = rec.sizes.lock().unwrap().clone();
        let ntiles = 3 * tiled.plan(20, 17).unwrap().len();
        assert!(
            sizes.iter().all(|&s| s >= 1 && s <= bs),
            "batch {bs}: {sizes:?}"
        );
        assert_eq!(sizes.iter().sum::<usize>(), 2 * ntiles);
        results.push((p, o, g));
    }
    for r in &results[1..] {
        assert_eq!(r.0, results[0].0);
        assert_eq!(r.1, results[0].1);
        assert_eq!(r.2, results[0].2);
    }
}

#[test]
fn tiles_are_batched_across_images() {
    let blur = Arc::new(Blur3::new(false));
    let tiled = TiledDenoiser::new(blur.clone(), cfg(16, 8, 64)).unwrap();
    let x = Array4::zeros((4, 1, 40, 40));
    tiled.predict(x.view(), &[0.1; 4]).unwrap();
    // 4 images × 16 tiles in one call of 64.
    assert_eq!(blur.calls.load(Ordering::Relaxed), 1);
    assert_eq!(blur.largest.load(Ordering::Relaxed), 64);
}

#[test]
fn bad_configurations_are_rejected() {
    let inner: Arc<dyn Denoiser> = Arc::new(Blur3::new(false));
    assert!(TiledDenoiser::new(inner.clone(), cfg(16, 16, 4)).is_err());
    assert!(TiledDenoiser::new(inner.clone(), cfg(16, 8, 0)).is_err());
    assert!(TiledDenoiser::new(inner.clone(), cfg(0, 0, 4)).is_err());
    let tiled = TiledDenoiser::new(inner, TileConfig::new(16, 16)).unwrap();
    assert_eq!(tiled.config().overlap, 8);
    let x = Array4::zeros((2, 1, 20, 20));
    assert!(tiled.predict(x.view(), &[0.5]).is_err());
}

/// Whole restorations, not just one denoiser call: with a translation-invariant analytic prior (the
/// pixel-wise Gaussian above, whose 16×16 instance tiles exactly) every sampler restores an image that also
/// fits untiled to the same result, to rounding, through 16×16 tiles at stride 8 — for every task the
/// pipelines ship. A tile grid in a restoration can therefore only come from the network, not from tiling.
#[test]
fn tiled_restoration_equals_untiled_for_a_translation_invariant_prior() {
    use conjure::model::{JacobianMode, ModelKind, Network};
    use conjure::operators::{Degradation, DEFAULT_SVD_THRESHOLD};
    use conjure::samplers::{build, ModelSchedule, Problem, SamplerConfig, SamplerName};
    use conjure::schedules::TimeInput;
    use ndarray::Array2;

    let (c, h, w) = (3, 40, 48);
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let x_true = randn4(&mut rng, (1, c, h, w)).index_axis_move(ndarray::Axis(0), 0) * 0.5;
    let mut mask = Array2::from_elem((h, w), 1.0);
    mask.slice_mut(ndarray::s![12..28, 10..30]).fill(0.0);
    let tasks = [
        Degradation::SrBicubic {
            scale: 4,
            threshold: DEFAULT_SVD_THRESHOLD,
        },
        Degradation::SrAverage { scale: 4 },
        Degradation::Inpaint { mask },
        Degradation::DeblurGaussian {
            size: 9,
            sigma: 2.0,
            threshold: DEFAULT_SVD_THRESHOLD,
        },
        Degradation::Denoise,
        Degradation::Colorize,
    ];
    let tiled = TiledDenoiser::new(Arc::new(pixelwise(c, 16, 16)), cfg(16, 8, 7)).unwrap();
    let whole = pixelwise(c, h, w);
    let sched = ModelSchedule::ddpm_linear_default();
    for task in &tasks {
        let op = task.build([c, h, w]).unwrap();
        let sigma_y = if *task == Degradation::Denoise {
            0.1
        } else {
            0.0
        };
        let y = op.forward(&x_true);
        for name in [
            SamplerName::CPigdm,
            SamplerName::Pigdm,
            SamplerName::Ddrm,
            SamplerName::Ddnm,
            SamplerName::Dps,
        ] {
            let mut sc = SamplerConfig::new(name);
            sc.steps = Some(5);
            let sampler = build(&sc, &sched).unwrap();
            let run = |den: &dyn Denoiser| {
                let net = Network::new(
                    den,
                    ModelKind::Diffusion,
                    Parameterization::Eps,
                    TimeInput::Unit,
                    JacobianMode::Exact,
                );
                let mut p = [Problem::new(op.clone(), y.clone(), sigma_y, 11).unwrap()];
                sampler.sample(&net, &mut p).unwrap().remove(0)
            };
            let (a, b) = (run(&tiled), run(&whole));
            let d = a
                .iter()
                .zip(&b)
                .map(|(u, v)| (u - v).abs())
                .fold(0.0, f64::max);
            let scale = b.iter().map(|v| v.abs()).fold(0.0, f64::max);
            assert!(scale > 0.1, "{task:?} {name:?}: degenerate restoration");
            assert!(
                d <= 1e-10 * (1.0 + scale),
                "{task:?} {name:?}: tiled and untiled restorations differ by {d:e}"
            );
        }
    }
}
