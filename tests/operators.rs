//! Linear degradation operators (docs/operators.md, §14.1): algebraic laws on random inputs (proptest),
//! dense cross-checks against independent direct formulas on 8×8 and 16×16 images, dense pseudo-inverse
//! and projector checks, the reference numbers of §2.4–2.6, and error handling.

use std::sync::OnceLock;

use conjure::operators::{
    bicubic_taps, gaussian_kernel, Deblur, Degradation, Img, LinearOperator, OperatorRef,
    SrBicubic, DEFAULT_SVD_THRESHOLD,
};
use nalgebra::DMatrix;
use ndarray::{Array2, Zip};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

// ---------------------------------------------------------------- helpers

fn randn(shape: [usize; 3], rng: &mut ChaCha8Rng) -> Img {
    Img::from_shape_fn((shape[0], shape[1], shape[2]), |_| {
        rng.sample::<f64, _>(StandardNormal)
    })
}

fn dot(a: &Img, b: &Img) -> f64 {
    assert_eq!(a.shape(), b.shape());
    (a * b).sum()
}

fn norm(a: &Img) -> f64 {
    dot(a, a).sqrt()
}

/// ‖a − b‖ ≤ tol · (1 + ‖b‖), with a message naming the check.
fn assert_close(what: &str, a: &Img, b: &Img, tol: f64) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes differ");
    let err = norm(&(a - b));
    assert!(
        err <= tol * (1.0 + norm(b)),
        "{what}: error {err:e}, reference norm {}",
        norm(b)
    );
}

/// Apply g(s) per coordinate of the spectral layout (0 where s = 0 unless g says otherwise).
fn scale_spectral(c: &Img, s: &Img, g: impl Fn(f64) -> f64) -> Img {
    let mut out = c.clone();
    Zip::from(&mut out).and(s).for_each(|o, &s| *o *= g(s));
    out
}

fn inv(s: f64) -> f64 {
    if s != 0.0 {
        1.0 / s
    } else {
        0.0
    }
}

/// A deterministic 0/1 mask with both values present.
fn mask(h: usize, w: usize, seed: u64) -> Array2<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut m = Array2::from_shape_fn(
        (h, w),
        |_| if rng.random::<f64>() < 0.7 { 1.0 } else { 0.0 },
    );
    m[[0, 0]] = 1.0;
    m[[h - 1, w - 1]] = 0.0;
    m
}

/// Every operator at several sizes, factors and channel counts (non-square included).
fn catalogue() -> &'static Vec<(String, OperatorRef)> {
    static CAT: OnceLock<Vec<(String, OperatorRef)>> = OnceLock::new();
    CAT.get_or_init(|| {
        let t = DEFAULT_SVD_THRESHOLD;
        let cases: Vec<(Degradation, [usize; 3])> = vec![
            (Degradation::Denoise, [2, 5, 7]),
            (Degradation::SrAverage { scale: 2 }, [3, 8, 6]),
            (Degradation::SrAverage { scale: 3 }, [1, 9, 12]),
            (Degradation::SrAverage { scale: 4 }, [2, 8, 16]),
            (Degradation::SrAverage { scale: 1 }, [1, 3, 5]),
            (
                Degradation::SrBicubic {
                    scale: 2,
                    threshold: t,
                },
                [3, 8, 6],
            ),
            (
                Degradation::SrBicubic {
                    scale: 3,
                    threshold: t,
                },
                [1, 9, 12],
            ),
            (
                Degradation::SrBicubic {
                    scale: 4,
                    threshold: t,
                },
                [2, 16, 8],
            ),
            (
                Degradation::SrBicubic {
                    scale: 4,
                    threshold: 0.0,
                },
                [1, 8, 12],
            ),
            (
                Degradation::SrBicubic {
                    scale: 4,
                    threshold: 0.3,
                },
                [1, 16, 16],
            ),
            (
                Degradation::SrBicubic {
                    scale: 2,
                    threshold: t,
                },
                [1, 2, 4],
            ),
            (
                Degradation::DeblurGaussian {
                    size: 5,
                    sigma: 1.0,
                    threshold: t,
                },
                [3, 10, 7],
            ),
            (
                Degradation::DeblurGaussian {
                    size: 61,
                    sigma: 3.0,
                    threshold: t,
                },
                [1, 32, 32],
            ),
            (
                Degradation::DeblurGaussian {
                    size: 61,
                    sigma: 3.0,
                    threshold: t,
                },
                [2, 6, 9],
            ),
            (
                Degradation::DeblurGaussian {
                    size: 7,
                    sigma: 2.0,
                    threshold: 0.0,
                },
                [1, 9, 8],
            ),
            (
                Degradation::DeblurUniform {
                    size: 3,
                    threshold: t,
                },
                [2, 9, 8],
            ),
            (
                Degradation::DeblurUniform {
                    size: 5,
                    threshold: 0.0,
                },
                [1, 7, 11],
            ),
            (
                Degradation::DeblurUniform {
                    size: 9,
                    threshold: 0.1,
                },
                [1, 12, 12],
            ),
            // every 1-d singular value thresholded: H = 0
            (
                Degradation::DeblurUniform {
                    size: 3,
                    threshold: 2.0,
                },
                [1, 5, 6],
            ),
            // different ranks on the two axes (low-rank and dense 1-d maps mixed)
            (
                Degradation::SrBicubic {
                    scale: 2,
                    threshold: 0.64,
                },
                [2, 16, 8],
            ),
            (
                Degradation::SrBicubic {
                    scale: 2,
                    threshold: 0.64,
                },
                [1, 8, 16],
            ),
            (
                Degradation::DeblurGaussian {
                    size: 9,
                    sigma: 2.0,
                    threshold: t,
                },
                [1, 24, 10],
            ),
            (
                Degradation::Inpaint {
                    mask: mask(6, 9, 1),
                },
                [3, 6, 9],
            ),
            (
                Degradation::Inpaint {
                    mask: mask(8, 8, 2),
                },
                [1, 8, 8],
            ),
            (Degradation::Colorize, [3, 5, 8]),
            (Degradation::Colorize, [3, 4, 4]),
        ];
        cases
            .into_iter()
            .map(|(d, shape)| {
                let op = d
                    .build(shape)
                    .unwrap_or_else(|e| panic!("building {d:?} for {shape:?}: {e}"));
                (format!("{} {shape:?} {d:?}", op.name()), op)
            })
            .collect()
    })
}

/// All the laws of §14.1 for one operator and one seed.
fn check_laws(label: &str, op: &dyn LinearOperator, seed: u64) {
    let tol = 1e-10;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let xs = op.x_shape();
    let ys = op.y_shape();
    let x = randn(xs, &mut rng);
    let z = randn(xs, &mut rng);
    let y = randn(ys, &mut rng);
    let s = op.singulars();
    assert_eq!(s.shape(), &xs[..], "{label}: singulars shape");
    assert!(
        s.iter().all(|v| v.is_finite() && *v >= 0.0),
        "{label}: singulars"
    );

    let hx = op.forward(&x);
    assert_eq!(hx.shape(), &ys[..], "{label}: forward shape");
    let hty = op.adjoint(&y);
    assert_eq!(hty.shape(), &xs[..], "{label}: adjoint shape");

    // adjoint identity
    let (l, r) = (dot(&hx, &y), dot(&x, &hty));
    assert!(
        (l - r).abs() <= tol * (1.0 + norm(&x) * norm(&y)),
        "{label}: <Hx,y> = {l}, <x,Hᵀy> = {r}"
    );

    // orthogonality of the spectral view
    let c = op.vt(&x);
    assert_close(&format!("{label}: v(vt x) = x"), &op.v(&c), &x, tol);
    assert!(
        (norm(&c) - norm(&x)).abs() <= tol * (1.0 + norm(&x)),
        "{label}: ‖vt x‖ = ‖x‖"
    );
    let cy = op.ut(&y);
    assert_close(&format!("{label}: u(ut y) = y"), &op.u(&cy), &y, tol);
    assert!(
        (norm(&cy) - norm(&y)).abs() <= tol * (1.0 + norm(&y)),
        "{label}: ‖ut y‖ = ‖y‖"
    );
    let vz = op.v(&z);
    assert_close(&format!("{label}: vt(v c) = c"), &op.vt(&vz), &z, tol);

    // projector
    let px = op.project(&x);
    assert_close(&format!("{label}: P² = P"), &op.project(&px), &px, tol);
    let pz = op.project(&z);
    let (l, r) = (dot(&px, &z), dot(&x, &pz));
    assert!(
        (l - r).abs() <= tol * (1.0 + norm(&x) * norm(&z)),
        "{label}: <Px,z> = {l}, <x,Pz> = {r}"
    );
    assert_close(&format!("{label}: H P = H"), &op.forward(&px), &hx, tol);

    // pseudo-inverse on the range: y = H P x = H x
    let y_range = op.forward(&px);
    let rec = op.forward(&op.pinv(&y_range));
    assert_close(&format!("{label}: H H† y = y"), &rec, &y_range, 1e-8);
    let hdy = op.pinv(&y);
    assert_close(
        &format!("{label}: P H† y = H† y"),
        &op.project(&hdy),
        &hdy,
        tol,
    );
    // H† H = P
    assert_close(&format!("{label}: H† H x = P x"), &op.pinv(&hx), &px, 1e-8);

    // closed-form overrides equal the spectral definitions
    let spec = |f: &dyn Fn(f64) -> f64, c: &Img| scale_spectral(c, s, f);
    let ut_y = op.ut(&y);
    assert_close(
        &format!("{label}: forward = u(s ⊙ vt x)"),
        &hx,
        &op.u(&spec(&|s| s, &c)),
        tol,
    );
    assert_close(
        &format!("{label}: adjoint = v(s ⊙ ut y)"),
        &hty,
        &op.v(&spec(&|s| s, &ut_y)),
        tol,
    );
    assert_close(
        &format!("{label}: pinv = v(s⁺ ⊙ ut y)"),
        &hdy,
        &op.v(&spec(&inv, &ut_y)),
        1e-9,
    );
    assert_close(
        &format!("{label}: pinv_adjoint = u(s⁺ ⊙ vt x)"),
        &op.pinv_adjoint(&x),
        &op.u(&spec(&inv, &c)),
        1e-9,
    );
    assert_close(
        &format!("{label}: project = v(1[s≠0] ⊙ vt x)"),
        &px,
        &op.v(&spec(&|s| if s != 0.0 { 1.0 } else { 0.0 }, &c)),
        tol,
    );
    assert_close(
        &format!("{label}: pinv_gram = v(s⁺² ⊙ vt x)"),
        &op.pinv_gram(&x),
        &op.v(&spec(&|s| inv(s) * inv(s), &c)),
        1e-8,
    );
    // (H†)ᵀ is the adjoint of H†
    let (l, r) = (dot(&hdy, &x), dot(&y, &op.pinv_adjoint(&x)));
    assert!(
        (l - r).abs() <= 1e-9 * (1.0 + l.abs()),
        "{label}: <H†y,x> = {l}, <y,(H†)ᵀx> = {r}"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn laws_hold_for_every_operator(seed in any::<u64>()) {
        for (label, op) in catalogue() {
            check_laws(label, op.as_ref(), seed);
        }
    }
}

// ---------------------------------------------------------------- dense cross-checks

/// The operator as a dense M×D matrix, built by applying a map to basis vectors.
fn dense(shape_in: [usize; 3], shape_out: [usize; 3], map: impl Fn(&Img) -> Img) -> DMatrix<f64> {
    let d: usize = shape_in.iter().product();
    let m: usize = shape_out.iter().product();
    let mut out = DMatrix::<f64>::zeros(m, d);
    let mut e = Img::zeros((shape_in[0], shape_in[1], shape_in[2]));
    for k in 0..d {
        e.as_slice_mut().unwrap()[k] = 1.0;
        let col = map(&e);
        assert_eq!(col.shape(), &shape_out[..]);
        for (i, v) in col.iter().enumerate() {
            out[(i, k)] = *v;
        }
        e.as_slice_mut().unwrap()[k] = 0.0;
    }
    out
}

fn max_abs_diff(a: &DMatrix<f64>, b: &DMatrix<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    (a - b).abs().max()
}

/// Dense separable operator from 1-D matrices: H[(c,i,j),(c,p,q)] = A_h[i,p]·A_w[j,q].
fn kron_channels(c: usize, ah: &DMatrix<f64>, aw: &DMatrix<f64>) -> DMatrix<f64> {
    let (mh, nh) = ah.shape();
    let (mw, nw) = aw.shape();
    let mut out = DMatrix::<f64>::zeros(c * mh * mw, c * nh * nw);
    for ch in 0..c {
        for i in 0..mh {
            for j in 0..mw {
                for p in 0..nh {
                    for q in 0..nw {
                        out[(ch * mh * mw + i * mw + j, ch * nh * nw + p * nw + q)] =
                            ah[(i, p)] * aw[(j, q)];
                    }
                }
            }
        }
    }
    out
}

/// Keys cubic (a = −0.5), written out independently of the library.
fn keys_ref(x: f64) -> f64 {
    let x = x.abs();
    if x <= 1.0 {
        1.5 * x.powi(3) - 2.5 * x.powi(2) + 1.0
    } else if x < 2.0 {
        -0.5 * x.powi(3) + 2.5 * x.powi(2) - 4.0 * x + 2.0
    } else {
        0.0
    }
}

/// Direct bicubic 1-D matrix: weights W((j − c)/f) for |j − c| < 2f around c = f r + (f−1)/2,
/// normalised, reflected with a loop and accumulated.
fn bicubic_direct(n: usize, f: usize) -> DMatrix<f64> {
    let mut a = DMatrix::<f64>::zeros(n / f, n);
    for r in 0..n / f {
        let c = (f * r) as f64 + (f as f64 - 1.0) / 2.0;
        let lo = (c - 2.0 * f as f64).floor() as i64;
        let hi = (c + 2.0 * f as f64).ceil() as i64;
        let pts: Vec<(i64, f64)> = (lo..=hi)
            .filter(|&j| ((j as f64 - c) / f as f64).abs() < 2.0)
            .map(|j| (j, keys_ref((j as f64 - c) / f as f64)))
            .collect();
        let z: f64 = pts.iter().map(|p| p.1).sum();
        for (mut j, w) in pts {
            loop {
                if j < 0 {
                    j = -j - 1;
                } else if j >= n as i64 {
                    j = 2 * n as i64 - 1 - j;
                } else {
                    break;
                }
            }
            a[(r, j as usize)] += w / z;
        }
    }
    a
}

/// Direct same-size zero-padded convolution matrix with taps t(d) for |d| ≤ r.
fn conv_direct(n: usize, r: i64, tap: impl Fn(i64) -> f64) -> DMatrix<f64> {
    DMatrix::from_fn(n, n, |i, j| {
        let d = j as i64 - i as i64;
        if d.abs() <= r {
            tap(d)
        } else {
            0.0
        }
    })
}

/// Dense checks for one operator: H against `direct` (if given), H† against the dense pseudo-inverse of
/// the operator's own dense matrix, P against dense H†H, Hᵀ against the transpose.
/// Returns whether the pseudo-inverse part ran.
fn dense_checks(label: &str, op: &dyn LinearOperator, direct: Option<&DMatrix<f64>>) -> bool {
    let xs = op.x_shape();
    let ys = op.y_shape();
    let h = dense(xs, ys, |x| op.forward(x));
    if let Some(d) = direct {
        let e = max_abs_diff(&h, d);
        assert!(e < 1e-12, "{label}: dense H vs direct formula: {e:e}");
    }
    let ht = dense(ys, xs, |y| op.adjoint(y));
    assert!(max_abs_diff(&ht, &h.transpose()) < 1e-12, "{label}: Hᵀ");
    let hp = dense(ys, xs, |y| op.pinv(y));
    // The dense pseudo-inverse cuts singular values below half the operator's smallest nonzero one (the
    // same rank); only meaningful when that one is not itself at rounding level (threshold 0 on an
    // ill-conditioned blur makes H† amplify by 1e16 — its laws are checked elsewhere).
    let s_min = op
        .singulars()
        .iter()
        .copied()
        .filter(|s| *s != 0.0)
        .fold(f64::INFINITY, f64::min);
    if s_min < 1e-4 {
        return false;
    }
    // Reference: H† = Hᵀ (H Hᵀ)⁺, with (H Hᵀ)⁺ from the symmetric eigendecomposition of the dense H Hᵀ
    // (eigenvalues s², cut below s_min²/4). nalgebra's dense SVD is also compared, loosely: on clustered
    // singular values its pseudo-inverse violates the Penrose symmetry (H†H)ᵀ = H†H by up to ~1e-6.
    let eig = nalgebra::SymmetricEigen::new(&h * h.transpose());
    let mut hht_pinv = DMatrix::<f64>::zeros(h.nrows(), h.nrows());
    for (k, lam) in eig.eigenvalues.iter().enumerate() {
        if *lam > 0.25 * s_min * s_min {
            let v = eig.eigenvectors.column(k);
            hht_pinv += v * v.transpose() / *lam;
        }
    }
    let hp_ref = h.transpose() * hht_pinv;
    // The reference inverts eigenvalues s², so its own error grows like ε/s_min².
    let ref_tol = 1e-10 + 1e-13 / (s_min * s_min);
    let e = max_abs_diff(&hp, &hp_ref);
    assert!(e < ref_tol, "{label}: H† vs dense Hᵀ(HHᵀ)⁺: {e:e}");
    let hp_svd = h.clone().pseudo_inverse(0.5 * s_min).expect("dense pinv");
    let e = max_abs_diff(&hp, &hp_svd);
    assert!(
        e < 1e-5 + 100.0 * ref_tol,
        "{label}: H† vs dense svd pseudo-inverse: {e:e}"
    );
    // The four Penrose conditions, which define H† uniquely.
    let hg = &h * &hp;
    let gh = &hp * &h;
    assert!(max_abs_diff(&(&hg * &h), &h) < 1e-12, "{label}: H H† H = H");
    assert!(
        max_abs_diff(&(&gh * &hp), &hp) < 1e-10,
        "{label}: H† H H† = H†"
    );
    assert!(
        max_abs_diff(&hg, &hg.transpose()) < 1e-12,
        "{label}: (H H†)ᵀ = H H†"
    );
    assert!(
        max_abs_diff(&gh, &gh.transpose()) < 1e-12,
        "{label}: (H† H)ᵀ = H† H"
    );
    let p = dense(xs, xs, |x| op.project(x));
    let e = max_abs_diff(&p, &(&hp_ref * &h));
    assert!(e < ref_tol, "{label}: P vs dense H†H: {e:e}");
    let hpt = dense(xs, ys, |x| op.pinv_adjoint(x));
    assert!(max_abs_diff(&hpt, &hp.transpose()) < 1e-9, "{label}: (H†)ᵀ");
    true
}

#[test]
fn sr_average_dense_matches_block_mean() {
    for (c, n, f) in [(1, 8, 2), (2, 8, 4), (1, 16, 4), (3, 16, 2), (1, 12, 3)] {
        let op = Degradation::SrAverage { scale: f }
            .build([c, n, n])
            .unwrap();
        let m = n / f;
        let mut d = DMatrix::<f64>::zeros(c * m * m, c * n * n);
        for ch in 0..c {
            for i in 0..n {
                for j in 0..n {
                    d[(ch * m * m + (i / f) * m + j / f, ch * n * n + i * n + j)] =
                        1.0 / (f * f) as f64;
                }
            }
        }
        assert!(dense_checks(
            &format!("sr-average c{c} n{n} f{f}"),
            op.as_ref(),
            Some(&d)
        ));
        // H† is nearest-neighbour replication, P the replicated block mean.
        let hp = dense(op.y_shape(), op.x_shape(), |y| op.pinv(y));
        assert!(max_abs_diff(&hp, &(d.transpose() * (f * f) as f64)) < 1e-12);
    }
}

#[test]
fn sr_bicubic_dense_matches_direct_formula_at_threshold_zero() {
    for (c, h, w, f) in [
        (1, 8, 8, 2),
        (1, 16, 16, 4),
        (2, 8, 16, 4),
        (1, 9, 12, 3),
        (1, 4, 8, 4),
    ] {
        let op = SrBicubic::new([c, h, w], f, 0.0).unwrap();
        let d = kron_channels(c, &bicubic_direct(h, f), &bicubic_direct(w, f));
        assert!(dense_checks(
            &format!("sr-bicubic c{c} {h}x{w} f{f} t0"),
            &op,
            Some(&d)
        ));
    }
}

#[test]
fn sr_bicubic_thresholded_dense_pinv_and_projector() {
    for (h, w, f, pick) in [
        (16, 16, 4, None),
        (8, 8, 2, Some(2)),
        (16, 8, 2, Some(3)),
        (12, 12, 3, Some(1)),
    ] {
        // A threshold between the 1-D singular values, so that some are dropped.
        let t = match pick {
            None => DEFAULT_SVD_THRESHOLD,
            Some(k) => {
                let s = SrBicubic::new([1, h, w], f, 0.0)
                    .unwrap()
                    .separable()
                    .row_singulars()
                    .to_vec();
                0.5 * (s[s.len() - k] + s[s.len() - k - 1])
            }
        };
        let op = SrBicubic::new([1, h, w], f, t).unwrap();
        let sep = op.separable();
        let dropped = sep
            .row_singulars()
            .iter()
            .chain(sep.col_singulars())
            .filter(|s| **s == 0.0)
            .count();
        if pick.is_some() {
            assert!(
                dropped > 0,
                "threshold {t} should drop some 1-d singular values"
            );
        }
        // The thresholded operator is the direct one minus the dropped SVD components.
        let direct = kron_channels(1, &bicubic_direct(h, f), &bicubic_direct(w, f));
        let label = format!("sr-bicubic {h}x{w} f{f} t{t}");
        assert!(dense_checks(&label, &op, None));
        if dropped == 0 {
            let hd = dense(op.x_shape(), op.y_shape(), |x| op.forward(x));
            assert!(
                max_abs_diff(&hd, &direct) < 1e-12,
                "{label}: no value dropped"
            );
        }
    }
}

#[test]
fn deblur_dense_matches_zero_padded_convolution() {
    for (c, h, w, size, sigma) in [(1, 8, 8, 5, 1.0), (1, 16, 16, 61, 3.0), (2, 8, 12, 3, 0.7)] {
        let op = Deblur::gaussian([c, h, w], size, sigma, 0.0).unwrap();
        let r = (size as i64 - 1) / 2;
        let z: f64 = (-r..=r)
            .map(|d| (-(d * d) as f64 / (2.0 * sigma * sigma)).exp())
            .sum();
        let tap = |d: i64| (-(d * d) as f64 / (2.0 * sigma * sigma)).exp() / z;
        let d = kron_channels(c, &conv_direct(h, r, tap), &conv_direct(w, r, tap));
        let checked = dense_checks(
            &format!("deblur-gaussian c{c} {h}x{w} k{size}"),
            &op,
            Some(&d),
        );
        // σ = 3 at threshold 0 is ill-conditioned (s_min ≈ 1e-23): only H and Hᵀ are compared there.
        assert_eq!(checked, size != 61);
    }
    for (h, w, size) in [(8, 8, 3), (16, 16, 5), (8, 16, 9)] {
        let op = Deblur::uniform([1, h, w], size, 0.0).unwrap();
        let r = (size as i64 - 1) / 2;
        let tap = |_d: i64| 1.0 / size as f64;
        let d = kron_channels(1, &conv_direct(h, r, tap), &conv_direct(w, r, tap));
        assert!(dense_checks(
            &format!("deblur-uniform {h}x{w} k{size}"),
            &op,
            Some(&d)
        ));
    }
    // Thresholded (default): the laws against the dense matrix of the thresholded operator.
    let op = Deblur::gaussian([1, 16, 16], 61, 3.0, DEFAULT_SVD_THRESHOLD).unwrap();
    assert!(op.separable().rank_per_channel() < 256);
    assert!(dense_checks("deblur-gaussian 16x16 thresholded", &op, None));
    let op = Deblur::uniform([1, 8, 8], 5, DEFAULT_SVD_THRESHOLD).unwrap();
    assert!(dense_checks("deblur-uniform 8x8 thresholded", &op, None));
}

#[test]
fn colorize_dense_matches_colour_weights() {
    let (h, w) = (8, 8);
    let op = Degradation::Colorize.build([3, h, w]).unwrap();
    let wts = [0.3333, 0.3334, 0.3333];
    let mut d = DMatrix::<f64>::zeros(h * w, 3 * h * w);
    for p in 0..h * w {
        for (k, wk) in wts.iter().enumerate() {
            d[(p, k * h * w + p)] = *wk;
        }
    }
    assert!(dense_checks("colorize 8x8", op.as_ref(), Some(&d)));
}

#[test]
fn inpaint_and_denoise_dense() {
    for (c, n) in [(1, 8), (2, 16)] {
        let m = mask(n, n, 7 + n as u64);
        let op = Degradation::Inpaint { mask: m.clone() }
            .build([c, n, n])
            .unwrap();
        let mut d = DMatrix::<f64>::zeros(c * n * n, c * n * n);
        for ch in 0..c {
            for i in 0..n {
                for j in 0..n {
                    let k = ch * n * n + i * n + j;
                    d[(k, k)] = m[[i, j]];
                }
            }
        }
        assert!(dense_checks(
            &format!("inpaint c{c} n{n}"),
            op.as_ref(),
            Some(&d)
        ));
    }
    let op = Degradation::Denoise.build([2, 8, 8]).unwrap();
    assert!(dense_checks(
        "denoise",
        op.as_ref(),
        Some(&DMatrix::identity(128, 128))
    ));
}

// ---------------------------------------------------------------- reference numbers

#[test]
fn bicubic_taps_match_table() {
    let want = [
        -0.00170898,
        -0.01098633,
        -0.01831055,
        -0.01196289,
        0.02270508,
        0.09741211,
        0.18188477,
        0.24096680,
    ];
    let t = bicubic_taps(4);
    assert_eq!(t.len(), 16);
    for i in 0..8 {
        assert!((t[i] - want[i]).abs() < 5e-9, "tap {i} = {}", t[i]);
        assert!(
            (t[15 - i] - want[i]).abs() < 5e-9,
            "tap {} = {}",
            15 - i,
            t[15 - i]
        );
    }
    // Raw sum is exactly 4 (§2.4), so the normalised taps are W(x_i)/4.
    for (i, ti) in t.iter().enumerate() {
        let x = (i as f64 - 8.0 + 0.5) / 4.0;
        assert!((ti - keys_ref(x) / 4.0).abs() < 1e-15);
    }
    for f in 1..=6 {
        let t = bicubic_taps(f);
        assert_eq!(
            t.len(),
            if f % 2 == 0 { 4 * f } else { 4 * f - 1 },
            "f = {f}"
        );
        assert!((t.iter().sum::<f64>() - 1.0).abs() < 1e-14);
        // symmetric
        for i in 0..t.len() {
            assert!((t[i] - t[t.len() - 1 - i]).abs() < 1e-15);
        }
    }
    // The 256-wide matrix of §2.4: row r uses j = 4r − 6 … 4r + 9; row 0 reflects −6…−1 onto 5…0.
    let op = SrBicubic::new([1, 256, 256], 4, 0.0).unwrap();
    let a = op.separable().row_matrix();
    assert_eq!(a.dim(), (64, 256));
    for j in 0..10 {
        let want0: f64 = (0..16)
            .filter(|&i| {
                let jj = i as i64 - 6;
                (if jj < 0 { -jj - 1 } else { jj }) == j as i64
            })
            .map(|i| t[i])
            .sum();
        assert!((a[[0, j]] - want0).abs() < 1e-12, "A[0, {j}]");
    }
    for (i, ti) in t.iter().enumerate() {
        assert!((a[[10, 34 + i]] - ti).abs() < 1e-12, "A[10, {}]", 34 + i);
    }
}

#[test]
fn gaussian_taps_match_table() {
    let k = gaussian_kernel(61, 3.0);
    assert_eq!(k.len(), 61);
    assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-14);
    assert!((k[30] - 0.13298076).abs() < 5e-9, "centre {}", k[30]);
    for d in [1usize, 2] {
        let want = [0.12579441, 0.10648267][d - 1];
        assert!((k[30 - d] - want).abs() < 5e-9 && (k[30 + d] - want).abs() < 5e-9);
    }
    // The operator's kernel is this one (the official 60-tap quirk is not reproduced).
    let op = Deblur::gaussian([1, 8, 8], 61, 3.0, DEFAULT_SVD_THRESHOLD).unwrap();
    assert_eq!(op.kernel(), &k[..]);
}

#[test]
fn colorize_reference_numbers() {
    let op = Degradation::Colorize.build([3, 2, 3]).unwrap();
    let s = op.singulars();
    assert!(
        (s[[0, 1, 2]] - 0.57735027).abs() < 5e-9,
        "s = {}",
        s[[0, 1, 2]]
    );
    assert_eq!(s[[1, 0, 0]], 0.0);
    assert_eq!(s[[2, 1, 1]], 0.0);
    let y = Img::ones((1, 2, 3));
    let hp = op.pinv(&y);
    for (k, want) in [0.99990, 1.00020, 0.99990].iter().enumerate() {
        assert!(
            (hp[[k, 1, 1]] - want).abs() < 5e-6,
            "H† weight {k} = {}",
            hp[[k, 1, 1]]
        );
    }
    // First row of the per-pixel V is h/‖h‖: vt of a pure h-direction pixel is (‖h‖, 0, 0)·scale.
    let mut x = Img::zeros((3, 2, 3));
    for (k, hk) in [0.3333, 0.3334, 0.3333].iter().enumerate() {
        x[[k, 0, 0]] = *hk;
    }
    let c = op.vt(&x);
    assert!((c[[0, 0, 0]] - 0.57735027).abs() < 5e-9);
    assert!(c[[1, 0, 0]].abs() < 1e-15 && c[[2, 0, 0]].abs() < 1e-15);
}

// ---------------------------------------------------------------- full size (§14.1: test at full size)

#[test]
fn full_size_operators_keep_their_laws() {
    let t = DEFAULT_SVD_THRESHOLD;
    let ops: Vec<(&str, OperatorRef)> = vec![
        (
            "sr-bicubic 4 at 256²",
            Degradation::SrBicubic {
                scale: 4,
                threshold: t,
            }
            .build([3, 256, 256])
            .unwrap(),
        ),
        (
            "deblur-gaussian 61/3 at 256²",
            Degradation::DeblurGaussian {
                size: 61,
                sigma: 3.0,
                threshold: t,
            }
            .build([3, 256, 256])
            .unwrap(),
        ),
        (
            "sr-average 4 at 256²",
            Degradation::SrAverage { scale: 4 }
                .build([3, 256, 256])
                .unwrap(),
        ),
    ];
    for (label, op) in &ops {
        check_laws(label, op.as_ref(), 11);
    }
}

#[test]
fn threshold_margin_and_rank() {
    let op = Deblur::gaussian([1, 256, 256], 61, 3.0, DEFAULT_SVD_THRESHOLD).unwrap();
    let sep = op.separable();
    let kept = sep.row_singulars().iter().filter(|s| **s != 0.0).count();
    // A frequency-response estimate (§2.5 item 4) suggests about 72 of 256 survive.
    assert!((55..=90).contains(&kept), "kept {kept} of 256");
    assert_eq!(sep.rank_per_channel(), kept * kept);
    let margin = sep.threshold_margin();
    assert!(margin > 0.0 && margin.is_finite());
    let (below, above): (Vec<f64>, Vec<f64>) = sep
        .row_singulars()
        .iter()
        .partition(|s| **s < DEFAULT_SVD_THRESHOLD);
    assert!(below.iter().all(|s| *s == 0.0));
    assert!(above.iter().all(|s| *s >= DEFAULT_SVD_THRESHOLD));
}

// ---------------------------------------------------------------- errors

#[test]
fn invalid_configurations_are_errors() {
    let t = DEFAULT_SVD_THRESHOLD;
    let bad: Vec<(Degradation, [usize; 3])> = vec![
        (Degradation::SrAverage { scale: 3 }, [3, 10, 9]),
        (Degradation::SrAverage { scale: 4 }, [3, 8, 10]),
        (Degradation::SrAverage { scale: 0 }, [3, 8, 8]),
        (
            Degradation::SrBicubic {
                scale: 4,
                threshold: t,
            },
            [3, 8, 6],
        ),
        (
            Degradation::SrBicubic {
                scale: 3,
                threshold: t,
            },
            [3, 10, 9],
        ),
        (
            Degradation::SrBicubic {
                scale: 2,
                threshold: -1.0,
            },
            [3, 8, 8],
        ),
        (
            Degradation::SrBicubic {
                scale: 2,
                threshold: f64::NAN,
            },
            [3, 8, 8],
        ),
        (
            Degradation::DeblurGaussian {
                size: 4,
                sigma: 1.0,
                threshold: t,
            },
            [3, 8, 8],
        ),
        (
            Degradation::DeblurGaussian {
                size: 0,
                sigma: 1.0,
                threshold: t,
            },
            [3, 8, 8],
        ),
        (
            Degradation::DeblurGaussian {
                size: 5,
                sigma: 0.0,
                threshold: t,
            },
            [3, 8, 8],
        ),
        (
            Degradation::DeblurUniform {
                size: 6,
                threshold: t,
            },
            [3, 8, 8],
        ),
        (
            Degradation::Inpaint {
                mask: Array2::from_elem((8, 8), 0.5),
            },
            [3, 8, 8],
        ),
        (
            Degradation::Inpaint {
                mask: Array2::ones((8, 7)),
            },
            [3, 8, 8],
        ),
        (Degradation::Colorize, [1, 8, 8]),
        (Degradation::Denoise, [0, 8, 8]),
    ];
    for (d, shape) in bad {
        let r = std::panic::catch_unwind(|| d.build(shape).map(|_| ()));
        match r {
            Ok(Err(e)) => {
                let msg = e.to_string();
                assert!(
                    !msg.is_empty() && msg == msg.to_lowercase() || msg.contains("NaN"),
                    "{d:?}: message {msg:?}"
                );
            }
            Ok(Ok(())) => panic!("{d:?} on {shape:?} should be an error"),
            Err(_) => panic!("{d:?} on {shape:?} panicked instead of returning an error"),
        }
    }
    let e = Degradation::DeblurUniform {
        size: 4,
        threshold: t,
    }
    .build([1, 8, 8])
    .unwrap_err();
    assert!(e.to_string().contains("odd"), "{e}");
    let e = Degradation::SrAverage { scale: 3 }
        .build([1, 10, 9])
        .unwrap_err();
    assert!(e.to_string().contains("multiple"), "{e}");
}

/// §14.1 item 8: a 1-d singular value within 1e-5 of the threshold is reported (margin and a warning).
#[test]
fn threshold_near_a_singular_value_warns() {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    let s = SrBicubic::new([1, 16, 16], 4, 0.0)
        .unwrap()
        .separable()
        .row_singulars()
        .to_vec();
    let far = 0.5 * (s[1] + s[2]);
    let near = s[2] + 1e-7;
    for (t, expect_warning) in [(far, false), (near, true)] {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let op = tracing::subscriber::with_default(subscriber, || {
            SrBicubic::new([1, 16, 16], 4, t).unwrap()
        });
        let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        assert_eq!(
            log.contains("WARN"),
            expect_warning,
            "threshold {t}: log {log:?}"
        );
        let margin = op.separable().threshold_margin();
        assert_eq!(
            margin < 1e-5,
            expect_warning,
            "threshold {t}: margin {margin:e}"
        );
        // Both thresholds lie above s[2], which is therefore dropped; s[1] is kept.
        assert_eq!(op.separable().row_singulars()[2], 0.0);
        assert_eq!(op.separable().row_singulars()[1], s[1]);
    }
}
