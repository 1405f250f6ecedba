//! Criterion benches for the samplers' own math (issue 6, item 2): each sampler on an exact Gaussian
//! oracle (N(0, I) prior, identity basis: a network call costs a few passes over the batch), so the time
//! is the sampler's overhead — operator applications, coefficient arithmetic, allocation — not a
//! network's. Also the Φ coefficient setup of the conjugate samplers (their constructors).
//!
//! Each sampler runs with K = 1 and K = 3 steps; K = 1 is the initialization (H†y, the initial noise,
//! the first transform) plus one step, and (T(K=3) − T(K=1))/2 is the cost of one step. Two operators:
//! `inpaint` (O(pixels), so the time is the sampler's vector arithmetic) and `sr-bicubic` ×4 (separable,
//! dense 1-D factors: the projector P dominates). Two shapes: 3×32² with a batch of 16 and 3×256² with
//! a batch of 1.
//!
//! Times are the benchmarking thread's CPU time (`common::CpuTime`; `CONJURE_BENCH_CLOCK=wall` for wall
//! time), with minimal measurement settings for small shared machines. Filter with criterion's regex, e.g.
//! `cargo bench --bench samplers -- 'step/inpaint/.*/c-pigdm/'`.

mod common;

use std::hint::black_box;
use std::sync::Arc;

use common::CpuTime;
use conjure::model::analytic::{
    GaussianDiffusion, GaussianFlow, GaussianPrior, IdentityBasis, NoiseLevel,
};
use conjure::model::{Denoiser, JacobianMode, ModelKind, Network, Parameterization};
use conjure::operators::{Degradation, Img, OperatorRef, DEFAULT_SVD_THRESHOLD};
use conjure::samplers::{build, ModelSchedule, Problem, Sampler, SamplerConfig, SamplerName};
use conjure::schedules::{TimeInput, VpContinuous};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use ndarray::{Array2, Array3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;

fn randn(shape: [usize; 3], seed: u64) -> Img {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Array3::from_shape_simple_fn((shape[0], shape[1], shape[2]), || {
        rng.sample(StandardNormal)
    })
}

fn random_mask(n: usize, seed: u64) -> Array2<f64> {
    let mut rng = ChaCha20Rng::seed_from_u64(seed);
    Array2::from_shape_simple_fn((n, n), || if rng.random_bool(0.5) { 1.0 } else { 0.0 })
}

/// (sampler label, config, σ_y of the problems).
fn samplers(steps: usize) -> Vec<(&'static str, SamplerConfig, f64)> {
    let cfg = |name: SamplerName, variant: Option<&str>| {
        let mut c = SamplerConfig::new(name);
        c.steps = Some(steps);
        c.variant = variant.map(|v| v.parse().unwrap());
        c
    };
    vec![
        ("c-pigdm", cfg(SamplerName::CPigdm, None), 0.0),
        (
            "c-pigdm-noisy",
            cfg(SamplerName::CPigdm, Some("noisy")),
            0.05,
        ),
        ("pigdm", cfg(SamplerName::Pigdm, Some("continuous")), 0.0),
        (
            "pigdm-discrete",
            cfg(SamplerName::Pigdm, Some("discrete")),
            0.0,
        ),
        ("ddrm", cfg(SamplerName::Ddrm, None), 0.0),
        ("dps", cfg(SamplerName::Dps, None), 0.0),
        ("ddnm", cfg(SamplerName::Ddnm, None), 0.0),
        ("ddim", cfg(SamplerName::Ddim, None), 0.0),
        ("c-pigfm", cfg(SamplerName::CPigfm, None), 0.0),
        ("pigfm", cfg(SamplerName::Pigfm, None), 0.0),
        ("pinv", cfg(SamplerName::Pinv, None), 0.0),
    ]
}

fn prior(shape: [usize; 3]) -> GaussianPrior {
    GaussianPrior::new(
        Arc::new(IdentityBasis),
        Img::zeros((shape[0], shape[1], shape[2])),
        Img::ones((shape[0], shape[1], shape[2])),
    )
    .expect("prior")
}

fn step_benches(c: &mut Criterion<CpuTime>) {
    for (n, batch) in [(32usize, 16usize), (256, 1)] {
        let shape = [3, n, n];
        let eps_oracle = GaussianDiffusion::new(
            prior(shape),
            NoiseLevel::VpUnit(VpContinuous::default()),
            Parameterization::Eps,
        )
        .expect("oracle");
        let flow_oracle =
            GaussianFlow::new(prior(shape), TimeInput::Unit, Parameterization::Velocity)
                .expect("oracle");
        let ops: [(&str, Degradation); 2] = [
            (
                "inpaint",
                Degradation::Inpaint {
                    mask: random_mask(n, 3),
                },
            ),
            (
                "sr-bicubic",
                Degradation::SrBicubic {
                    scale: 4,
                    threshold: DEFAULT_SVD_THRESHOLD,
                },
            ),
        ];
        for (op_name, d) in ops {
            let op: OperatorRef = d.build(shape).expect("operator");
            let x_true = randn(shape, 5);
            let y = op.forward(&x_true);
            let mut g = c.benchmark_group(format!("step/{op_name}/{n}x{n}x{batch}"));
            if op_name == "inpaint" {
                // The oracle alone, one step's worth of calls (forward + J-only product), to subtract.
                let xs: Vec<Img> = (0..batch).map(|i| randn(shape, 20 + i as u64)).collect();
                let ms: Vec<Img> = (0..batch).map(|i| randn(shape, 40 + i as u64)).collect();
                let eps_net = Network::new(
                    &eps_oracle,
                    ModelKind::Diffusion,
                    Parameterization::Eps,
                    TimeInput::Unit,
                    JacobianMode::Exact,
                );
                g.bench_function("oracle/eps+eps_jt", |b| {
                    b.iter(|| {
                        let e = eps_net.eps(&xs, 0.3, 0.6, 0.8).expect("eps");
                        let j = eps_net.eps_jt(&xs, 0.3, 0.6, 0.8, &ms).expect("jt");
                        black_box((e, j))
                    })
                });
                let flow_net = Network::new(
                    &flow_oracle,
                    ModelKind::Flow,
                    Parameterization::Velocity,
                    TimeInput::Unit,
                    JacobianMode::Exact,
                );
                g.bench_function("oracle/velocity+velocity_jt", |b| {
                    b.iter(|| {
                        let v = flow_net.velocity(&xs, 0.7).expect("velocity");
                        let j = flow_net.velocity_jt(&xs, 0.7, &ms).expect("jt");
                        black_box((v, j))
                    })
                });
            }
            for steps in [1usize, 3] {
                for (label, cfg, sigma_y) in samplers(steps) {
                    let sched = if cfg.name.needs_flow() {
                        ModelSchedule::Flow
                    } else {
                        ModelSchedule::ddpm_linear_default()
                    };
                    let sampler: Box<dyn Sampler> = build(&cfg, &sched).expect("sampler");
                    let (den, kind, param): (&dyn Denoiser, _, _) = if cfg.name.needs_flow() {
                        (&flow_oracle, ModelKind::Flow, Parameterization::Velocity)
                    } else {
                        (&eps_oracle, ModelKind::Diffusion, Parameterization::Eps)
                    };
                    let net = Network::new(den, kind, param, TimeInput::Unit, JacobianMode::Exact);
                    let y_obs = if sigma_y > 0.0 {
                        &y + &(randn(op.y_shape(), 9) * sigma_y)
                    } else {
                        y.clone()
                    };
                    g.bench_function(BenchmarkId::new(label, format!("K{steps}")), |b| {
                        b.iter_batched(
                            || {
                                (0..batch)
                                    .map(|i| {
                                        Problem::new(op.clone(), y_obs.clone(), sigma_y, i as u64)
                                            .expect("problem")
                                    })
                                    .collect::<Vec<_>>()
                            },
                            |mut problems| {
                                black_box(sampler.sample(&net, &mut problems).expect("sample"))
                            },
                            BatchSize::SmallInput,
                        )
                    });
                }
            }
            g.finish();
        }
    }
}

/// Φ coefficient setup: the conjugate samplers' constructors (all ΔΦ by adaptive quadrature), and the
/// continuous ΠGDM one (one Φ per step).
fn setup_benches(c: &mut Criterion<CpuTime>) {
    let mut g = c.benchmark_group("phi_setup");
    let diffusion = ModelSchedule::ddpm_linear_default();
    let cases: [(&str, SamplerName, Option<&str>, usize, &ModelSchedule); 6] = [
        ("c-pigdm", SamplerName::CPigdm, None, 5, &diffusion),
        ("c-pigdm", SamplerName::CPigdm, None, 20, &diffusion),
        (
            "c-pigfm",
            SamplerName::CPigfm,
            None,
            10,
            &ModelSchedule::Flow,
        ),
        (
            "c-pigfm",
            SamplerName::CPigfm,
            None,
            50,
            &ModelSchedule::Flow,
        ),
        (
            "pigdm-continuous",
            SamplerName::Pigdm,
            Some("continuous"),
            20,
            &diffusion,
        ),
        (
            "pigdm-continuous",
            SamplerName::Pigdm,
            Some("continuous"),
            100,
            &diffusion,
        ),
    ];
    for (label, name, variant, steps, sched) in cases {
        let mut cfg = SamplerConfig::new(name);
        cfg.steps = Some(steps);
        cfg.variant = variant.map(|v| v.parse().unwrap());
        g.bench_function(BenchmarkId::new(label, format!("K{steps}")), |b| {
            b.iter(|| build(black_box(&cfg), sched).expect("sampler"))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion();
    targets = setup_benches, step_benches
}
criterion_main!(benches);
