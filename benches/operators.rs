//! Criterion benches for the degradation operators (issue 6, item 2): every map a sampler uses —
//! `forward`, `adjoint`, `pinv`, `project`, `vt`, `v` — for every operator at 32², 256² and 1024² (3
//! channels; `sr-*` factor 4; `inpaint` with a random half mask; `deblur-*` with 9 taps, σ = 3 for the
//! Gaussian), and the operator construction time.
//!
//! Operators are built once per shape, so construction is benched apart from the maps: with criterion
//! at 32² and 256², and timed once (one build, printed to stderr) at 1024², where a build of a
//! separable operator takes seconds (two dense SVDs and a QR of 1024×1024 matrices).
//!
//! The machine this runs on is often small and shared, so the measurement settings are minimal (10
//! samples, short warm-up) and times are the benchmarking thread's CPU time (`common::CpuTime`;
//! `CONJURE_BENCH_CLOCK=wall` for wall time; the 1024² build times printed to stderr are wall time). Select sizes with `CONJURE_BENCH_SIZES` (default `32,256,1024`) and
//! benchmarks with criterion's filter, e.g.
//!
//! ```text
//! CONJURE_BENCH_SIZES=256 cargo bench --bench operators -- 'ops/sr-bicubic'
//! ```

mod common;

use std::hint::black_box;
use std::time::{Duration, Instant};

use common::CpuTime;
use conjure::operators::{Degradation, Img, OperatorRef, DEFAULT_SVD_THRESHOLD};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ndarray::{Array2, Array3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;

/// Image sizes to bench (`CONJURE_BENCH_SIZES`, comma-separated; default 32, 256, 1024).
fn sizes() -> Vec<usize> {
    std::env::var("CONJURE_BENCH_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .map(|v| v.trim().parse().expect("CONJURE_BENCH_SIZES: integers"))
                .collect()
        })
        .unwrap_or_else(|| vec![32, 256, 1024])
}

fn randn(shape: [usize; 3], seed: u64) -> Img {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Array3::from_shape_simple_fn((shape[0], shape[1], shape[2]), || {
        rng.sample(StandardNormal)
    })
}

/// A random 0/1 mask with about half the pixels observed.
fn random_mask(n: usize, seed: u64) -> Array2<f64> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((n, n), || if rng.random_bool(0.5) { 1.0 } else { 0.0 })
}

/// The benched degradations for an n×n image.
fn degradations(n: usize) -> Vec<(&'static str, Degradation)> {
    vec![
        ("denoise", Degradation::Denoise),
        ("sr-average", Degradation::SrAverage { scale: 4 }),
        (
            "sr-bicubic",
            Degradation::SrBicubic {
                scale: 4,
                threshold: DEFAULT_SVD_THRESHOLD,
            },
        ),
        (
            "inpaint",
            Degradation::Inpaint {
                mask: random_mask(n, 7),
            },
        ),
        (
            "deblur-gaussian",
            Degradation::DeblurGaussian {
                size: 9,
                sigma: 3.0,
                threshold: DEFAULT_SVD_THRESHOLD,
            },
        ),
        (
            "deblur-uniform",
            Degradation::DeblurUniform {
                size: 9,
                threshold: DEFAULT_SVD_THRESHOLD,
            },
        ),
        ("colorize", Degradation::Colorize),
    ]
}

fn bench_build(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("op_build");
    for n in sizes().into_iter().filter(|&n| n <= 256) {
        for (name, d) in degradations(n) {
            let shape = [3, n, n];
            g.bench_with_input(BenchmarkId::new(name, n), &shape, |b, &shape| {
                b.iter(|| d.build(black_box(shape)).expect("build"))
            });
        }
    }
    g.finish();
}

/// Build once (timed to stderr) and bench every map.
fn bench_maps(c: &mut Criterion<CpuTime>) {
    for n in sizes() {
        for (name, d) in degradations(n) {
            let shape = [3, n, n];
            let t0 = Instant::now();
            let op: OperatorRef = d.build(shape).expect("build");
            eprintln!(
                "build {name} 3x{n}x{n}: {:.3} s",
                t0.elapsed().as_secs_f64()
            );
            let x = randn(shape, 1);
            let y = randn(op.y_shape(), 2);
            let mut g = c.benchmark_group(format!("ops/{name}"));
            if n >= 1024 {
                g.warm_up_time(Duration::from_millis(1));
            }
            type Map = fn(&OperatorRef, &Img) -> Img;
            let maps: [(&str, Map, &Img); 6] = [
                ("forward", |op, v| op.forward(v), &x),
                ("adjoint", |op, v| op.adjoint(v), &y),
                ("pinv", |op, v| op.pinv(v), &y),
                ("project", |op, v| op.project(v), &x),
                ("vt", |op, v| op.vt(v), &x),
                ("v", |op, v| op.v(v), &x),
            ];
            for (map, f, arg) in maps {
                g.bench_with_input(BenchmarkId::new(map, n), arg, |b, arg| {
                    b.iter(|| f(&op, black_box(arg)))
                });
            }
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = bench_build, bench_maps
}
criterion_main!(benches);
