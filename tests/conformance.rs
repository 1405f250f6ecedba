//! One conformance suite for every ONNX backend behind the `Denoiser` trait, on the two shipped priors
//! (models/fmnist-ddpm, models/fmnist-flow): forward, VJP against central finite differences, batch
//! invariance, the engines' agreement, sampling sanity, and the `Network` plumbing.
//!
//! tract always runs. ONNX Runtime runs when its library is found (ORT_DYLIB_PATH, the `onnxruntime`
//! Python package, system paths); otherwise its checks are skipped with a notice, or fail when
//! `CONJURE_REQUIRE_ORT=1` (as in CI).

use std::path::PathBuf;
use std::sync::OnceLock;

use conjure::model::{
    load, ort_available, Denoiser, EngineChoice, JacobianMode, LoadedModel, ModelKind, Network,
    Parameterization, Provider, RuntimeOptions,
};
use conjure::schedules::TimeInput;
use ndarray::{Array1, Array3, Array4, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn model_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("models")
        .join(name)
}

struct Backend {
    name: &'static str,
    ddpm: LoadedModel,
    flow: LoadedModel,
}

fn opts(engine: EngineChoice) -> RuntimeOptions {
    RuntimeOptions {
        engine,
        providers: vec![Provider::Cpu],
        threads: 1,
        batch_size: 16,
        ..RuntimeOptions::default()
    }
}

fn load_backend(name: &'static str, engine: EngineChoice) -> Backend {
    let o = opts(engine);
    Backend {
        name,
        ddpm: load(&model_dir("fmnist-ddpm"), &o).unwrap_or_else(|e| panic!("{name}: {e}")),
        flow: load(&model_dir("fmnist-flow"), &o).unwrap_or_else(|e| panic!("{name}: {e}")),
    }
}

fn require_ort() -> bool {
    std::env::var("CONJURE_REQUIRE_ORT").is_ok_and(|v| v == "1")
}

/// ONNX Runtime, when its library is available (panics if it is required and missing).
fn ort() -> Option<&'static Backend> {
    static ORT: OnceLock<Option<Backend>> = OnceLock::new();
    ORT.get_or_init(|| match ort_available() {
        Ok(()) => Some(load_backend("onnxruntime", EngineChoice::OnnxRuntime)),
        Err(why) => {
            assert!(
                !require_ort(),
                "CONJURE_REQUIRE_ORT=1 but onnx runtime is not available: {why}"
            );
            eprintln!("NOTICE: onnx runtime checks skipped ({why})");
            None
        }
    })
    .as_ref()
}

fn tract() -> &'static Backend {
    static TRACT: OnceLock<Backend> = OnceLock::new();
    TRACT.get_or_init(|| load_backend("tract", EngineChoice::Tract))
}

/// Every available backend: tract, then ONNX Runtime when found.
fn backends() -> Vec<&'static Backend> {
    let mut v = vec![tract()];
    v.extend(ort());
    v
}

fn normal(rng: &mut ChaCha8Rng, b: usize) -> Array4<f64> {
    Array4::from_shape_simple_fn((b, 1, 32, 32), || StandardNormal.sample(rng))
}

fn dot(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_abs_diff(a: &Array4<f64>, b: &Array4<f64>) -> f64 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// ᾱ_i of the DDPM linear schedule of the ddpm card (computed here, independently of the crate).
fn alpha_bar(i: usize) -> f64 {
    (0..=i)
        .map(|k| 1.0 - (1e-4 + (0.02 - 1e-4) * k as f64 / 999.0))
        .product()
}

/// Noisy inputs at a given level: x_t = √ᾱ x₀ + √(1−ᾱ) z, with x₀ a smooth blob image in [-1, 1].
fn noisy_batch(rng: &mut ChaCha8Rng, b: usize, signal: f64, noise: f64) -> Array4<f64> {
    let x0 = Array4::from_shape_fn((b, 1, 32, 32), |(i, _, h, w)| {
        let (dy, dx) = (h as f64 - 16.0 - i as f64, w as f64 - 15.0);
        if dy * dy / 120.0 + dx * dx / 60.0 < 1.0 {
            0.6
        } else {
            -1.0
        }
    });
    let z = normal(rng, b);
    x0 * signal + z * noise
}

#[test]
fn engines_report_themselves() {
    for be in backends() {
        for m in [&be.ddpm, &be.flow] {
            let e = m.denoiser.engine();
            assert!(e.starts_with(be.name), "{}: engine string {e}", be.name);
            assert!(
                m.denoiser.has_vjp(),
                "{}: shipped models have vjp graphs",
                be.name
            );
        }
    }
    for be in backends() {
        eprintln!("engine: {}", be.ddpm.denoiser.engine());
    }
    if let Some(o) = ort() {
        // e.g. "onnxruntime 1.31.1/cpu": version and the provider that actually ran.
        let e = o.ddpm.denoiser.engine();
        assert!(e.ends_with("/cpu"), "{e}");
        assert!(
            e.split(' ').nth(1).is_some_and(|v| v.starts_with("1.")),
            "{e}"
        );
    }
}

#[test]
fn forward_runs_and_is_deterministic() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x = noisy_batch(
        &mut rng,
        3,
        alpha_bar(400).sqrt(),
        (1.0 - alpha_bar(400)).sqrt(),
    );
    for be in backends() {
        for (m, t) in [
            (&be.ddpm, [400.0, 400.0, 10.0]),
            (&be.flow, [0.5, 0.5, 0.9]),
        ] {
            let a = m.denoiser.predict(x.view(), &t).unwrap();
            let b = m.denoiser.predict(x.view(), &t).unwrap();
            assert_eq!(a.shape(), &[3, 1, 32, 32]);
            assert!(a.iter().all(|v| v.is_finite()), "{}", be.name);
            assert_eq!(a, b, "{}: two identical calls differ", be.name);
            // The output depends on t: samples 0 and 1 differ from 2 only in t... and on x: 0 vs 1 differ.
            assert!(
                max_abs_diff(
                    &a.slice_axis(Axis(0), (0..1).into()).to_owned(),
                    &a.slice_axis(Axis(0), (1..2).into()).to_owned()
                ) > 1e-3
            );
            let rms = (a.iter().map(|v| v * v).sum::<f64>() / a.len() as f64).sqrt();
            assert!(rms > 0.05 && rms < 10.0, "{}: output rms {rms}", be.name);
        }
    }
}

#[test]
fn eps_prediction_recovers_the_noise() {
    // At a moderate noise level the ε-network must explain most of the added noise: the residual
    // ‖ε̂ − z‖² is well below ‖z‖² (a network predicting 0 gives ratio 1).
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let b = 4;
    let i = 300;
    let (mu, sigma) = (alpha_bar(i).sqrt(), (1.0 - alpha_bar(i)).sqrt());
    let x0 = noisy_batch(&mut rng, b, 1.0, 0.0);
    let z = normal(&mut rng, b);
    let x = &x0 * mu + &z * sigma;
    for be in backends() {
        let eps = be
            .ddpm
            .denoiser
            .predict(x.view(), &vec![i as f64; b])
            .unwrap();
        let ratio = (&eps - &z).mapv(|v| v * v).sum() / z.mapv(|v| v * v).sum();
        eprintln!("{}: eps residual ratio {ratio:.3}", be.name);
        assert!(ratio < 0.5, "{}: residual ratio {ratio}", be.name);
    }
}

#[test]
fn vjp_matches_central_finite_differences() {
    // ⟨vjp(c), v⟩ ≈ ⟨c, (f(x + h v) − f(x − h v)) / 2h⟩ for random directions; and the VJP graph's `out`
    // equals the forward graph's.
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let b = 2;
    let x = noisy_batch(
        &mut rng,
        b,
        alpha_bar(500).sqrt(),
        (1.0 - alpha_bar(500)).sqrt(),
    );
    let c = normal(&mut rng, b);
    let v = normal(&mut rng, b);
    let h = 1e-2;
    for be in backends() {
        for (m, t) in [(&be.ddpm, 500.0), (&be.flow, 0.5)] {
            let t = vec![t; b];
            let d = &m.denoiser;
            let (out, g) = d.vjp(x.view(), &t, c.view()).unwrap();
            let f = d.predict(x.view(), &t).unwrap();
            assert!(
                max_abs_diff(&out, &f) < 1e-4,
                "{}: vjp out vs forward",
                be.name
            );
            let fp = d.predict((&x + &(&v * h)).view(), &t).unwrap();
            let fm = d.predict((&x - &(&v * h)).view(), &t).unwrap();
            for s in 0..b {
                let pick = |a: &Array4<f64>| a.slice_axis(Axis(0), (s..s + 1).into()).to_owned();
                let lhs = dot(&pick(&g), &pick(&v));
                let fd = (pick(&fp) - pick(&fm)) / (2.0 * h);
                let rhs = dot(&pick(&c), &fd);
                let rel = (lhs - rhs).abs() / lhs.abs().max(rhs.abs());
                eprintln!(
                    "{} {}: <vjp(c), v> {lhs:.6} vs fd {rhs:.6} (rel {rel:.1e})",
                    be.name, m.card.name
                );
                assert!(
                    rel < 1e-2,
                    "{} sample {s}: <vjp(c), v> = {lhs}, <c, J v> (fd) = {rhs}, rel {rel}",
                    be.name
                );
            }
            // Linearity in the cotangent: vjp(2c) = 2 vjp(c).
            let (_, g2) = d.vjp(x.view(), &t, (&c * 2.0).view()).unwrap();
            assert!(
                max_abs_diff(&g2, &(&g * 2.0))
                    < 1e-4 * (1.0 + g.iter().fold(0.0f64, |m, v| m.max(v.abs())))
            );
        }
    }
}

#[test]
fn batch_of_one_and_of_n_agree_per_sample() {
    // Each sample's output must not depend on the batch it came in, on runtime.batch_size or on the
    // thread count. tract runs sample by sample and so guarantees bit-identical results; ONNX Runtime is
    // held to 1e-5 (it is bit-identical on its CPU provider in practice).
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let n = 5;
    let x = noisy_batch(&mut rng, n, 0.7, 0.7);
    let c = normal(&mut rng, n);
    let t_ddpm: Vec<f64> = (0..n).map(|i| 100.0 + 150.0 * i as f64).collect();
    let t_flow: Vec<f64> = (0..n).map(|i| 0.1 + 0.2 * i as f64).collect();
    // Variants: batch_size 2 (the batch of 5 goes in calls of 2, 2, 1) and several threads.
    let mut variants = vec![];
    {
        let mut o = opts(EngineChoice::Tract);
        o.batch_size = 2;
        o.threads = 3;
        let m = load(&model_dir("fmnist-ddpm"), &o).unwrap();
        variants.push(("tract (batch_size 2, 3 threads)", m, 0.0));
        if ort().is_some() {
            o.engine = EngineChoice::OnnxRuntime;
            let m = load(&model_dir("fmnist-ddpm"), &o).unwrap();
            variants.push(("onnxruntime (batch_size 2, 3 threads)", m, 1e-5));
        }
    }
    let mut cases: Vec<(&str, &dyn Denoiser, &[f64], f64)> = vec![];
    for be in backends() {
        let tol = if be.name == "tract" { 0.0 } else { 1e-5 };
        cases.push((be.name, be.ddpm.denoiser.as_ref(), &t_ddpm, tol));
        cases.push((be.name, be.flow.denoiser.as_ref(), &t_flow, tol));
    }
    for (name, m, tol) in &variants {
        cases.push((name, m.denoiser.as_ref(), &t_ddpm, *tol));
    }
    // The reference: the first backend (tract, one thread), sample by sample.
    let reference = tract().ddpm.denoiser.as_ref();
    for (name, d, t, tol) in cases {
        let all = d.predict(x.view(), t).unwrap();
        let (all_out, all_g) = d.vjp(x.view(), t, c.view()).unwrap();
        for s in 0..n {
            let xs = x.slice_axis(Axis(0), (s..s + 1).into());
            let cs = c.slice_axis(Axis(0), (s..s + 1).into());
            let one = d.predict(xs, &t[s..s + 1]).unwrap();
            let (one_out, one_g) = d.vjp(xs, &t[s..s + 1], cs).unwrap();
            let pick = |a: &Array4<f64>| a.slice_axis(Axis(0), (s..s + 1).into()).to_owned();
            let (df, dout, dg) = (
                max_abs_diff(&pick(&all), &one),
                max_abs_diff(&pick(&all_out), &one_out),
                max_abs_diff(&pick(&all_g), &one_g),
            );
            eprintln!(
                "{name}: sample {s}: batch vs single max |diff| forward {df:.1e}, vjp {dg:.1e}"
            );
            assert!(df <= tol, "{name}: forward sample {s}: {df}");
            assert!(dout <= tol, "{name}: vjp out sample {s}: {dout}");
            assert!(dg <= 10.0 * tol, "{name}: vjp sample {s}: {dg}");
        }
        if name.starts_with("tract") && std::ptr::eq(t, t_ddpm.as_slice()) {
            // Thread count and batch_size change nothing, bit for bit.
            assert_eq!(all, reference.predict(x.view(), t).unwrap(), "{name}");
        }
    }
}

#[test]
fn tract_and_onnxruntime_agree() {
    let Some(o) = ort() else {
        return;
    };
    let tr = tract();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let b = 3;
    let x = noisy_batch(&mut rng, b, 0.5, 0.85);
    let c = normal(&mut rng, b);
    for (a, bm, t) in [
        (&tr.ddpm, &o.ddpm, vec![999.0, 500.0, 0.0]),
        (&tr.flow, &o.flow, vec![0.0, 0.5, 0.99]),
    ] {
        let fa = a.denoiser.predict(x.view(), &t).unwrap();
        let fb = bm.denoiser.predict(x.view(), &t).unwrap();
        let d = max_abs_diff(&fa, &fb);
        eprintln!(
            "{}: tract vs onnxruntime forward max |diff| {d:.2e}",
            a.card.name
        );
        assert!(d < 2e-5, "{}: forward differs by {d}", a.card.name);
        let (oa, ga) = a.denoiser.vjp(x.view(), &t, c.view()).unwrap();
        let (ob, gb) = bm.denoiser.vjp(x.view(), &t, c.view()).unwrap();
        let d = max_abs_diff(&oa, &ob);
        assert!(d < 2e-5, "{}: vjp out differs by {d}", a.card.name);
        let scale = ga.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        let d = max_abs_diff(&ga, &gb);
        eprintln!(
            "{}: tract vs onnxruntime vjp max |diff| {d:.2e} (max |vjp| {scale:.2})",
            a.card.name
        );
        assert!(
            d < 2e-5 * scale,
            "{}: vjp differs by {d} (scale {scale})",
            a.card.name
        );
    }
}

/// Pixel statistics of a batch of generated samples: they look like Fashion-MNIST, i.e. stay in range, are
/// mostly background (-1) and have some bright garment pixels.
fn assert_fmnist_like(name: &str, x: &Array4<f64>) {
    assert!(x.iter().all(|v| v.is_finite()), "{name}: non-finite sample");
    let n = x.len() as f64;
    let in_range = x.iter().filter(|v| v.abs() <= 1.15).count() as f64 / n;
    let background = x.iter().filter(|&&v| v < -0.8).count() as f64 / n;
    let bright = x.iter().filter(|&&v| v > 0.0).count() as f64 / n;
    eprintln!("{name}: in range {in_range:.3}, background {background:.3}, bright {bright:.3}");
    assert!(
        in_range > 0.97,
        "{name}: only {in_range} of pixels in [-1.15, 1.15]"
    );
    // The 32x32 padding border alone is 23% of the image; garments cover 30-70% of the 28x28 centre.
    assert!(
        (0.3..0.9).contains(&background),
        "{name}: background fraction {background}"
    );
    assert!(bright > 0.03, "{name}: bright fraction {bright}");
}

#[test]
fn unconditional_samples_make_sense() {
    // DDIM (η = 0) with 20 steps on the ε-prior and 20 Euler steps on the flow prior, from fixed noise.
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let b = 4;
    let z = normal(&mut rng, b);
    for be in backends() {
        let steps: Vec<usize> = (0..20).map(|k| 999 - k * 999 / 19).collect();
        let mut x = z.clone();
        for (k, &i) in steps.iter().enumerate() {
            let a = alpha_bar(i);
            let eps = be
                .ddpm
                .denoiser
                .predict(x.view(), &vec![i as f64; b])
                .unwrap();
            let x0 = (&x - &(&eps * (1.0 - a).sqrt())) / a.sqrt();
            let x0 = x0.mapv(|v| v.clamp(-1.0, 1.0));
            x = match steps.get(k + 1) {
                Some(&j) => {
                    let an = alpha_bar(j);
                    let eps = (&x - &(&x0 * a.sqrt())) / (1.0 - a).sqrt();
                    &x0 * an.sqrt() + &eps * (1.0 - an).sqrt()
                }
                None => x0,
            };
        }
        assert_fmnist_like(&format!("{} ddpm", be.name), &x);

        let n = 20;
        let mut x = z.clone();
        for k in 0..n {
            let t = k as f64 / n as f64;
            let v = be.flow.denoiser.predict(x.view(), &vec![t; b]).unwrap();
            x = &x + &(v / n as f64);
        }
        assert_fmnist_like(&format!("{} flow", be.name), &x);
    }
}

#[test]
fn network_eps_vjp_end_to_end() {
    // The ddpm prior through `Network`: one eps_vjp on a batch works and matches the raw VJP graph; the
    // finite-difference mode's J·m agrees with the exact Jᵀm in the direction-averaged sense
    // ⟨Jᵀm, m⟩ = ⟨m, J m⟩.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let b = 3;
    let i = 600usize;
    let (mu, sigma) = (alpha_bar(i).sqrt(), (1.0 - alpha_bar(i)).sqrt());
    let xb = noisy_batch(&mut rng, b, mu, sigma);
    let mb = normal(&mut rng, b);
    let xs: Vec<Array3<f64>> = xb.outer_iter().map(|v| v.to_owned()).collect();
    let ms: Vec<Array3<f64>> = mb.outer_iter().map(|v| v.to_owned()).collect();
    for be in backends() {
        let card = &be.ddpm.card;
        assert_eq!(card.model_kind(), ModelKind::Diffusion);
        assert_eq!(card.param(), Parameterization::Eps);
        assert_eq!(card.time_input(), TimeInput::Index { timesteps: 1000 });
        let d = be.ddpm.denoiser.as_ref();
        let net = Network::new(
            d,
            ModelKind::Diffusion,
            card.param(),
            card.time_input(),
            JacobianMode::Exact,
        );
        net.validate().unwrap();
        let (eps, g) = net.eps_vjp(&xs, i as f64, mu, sigma, &ms).unwrap();
        assert_eq!((eps.len(), g.len()), (b, b));
        assert_eq!((net.vjps(), net.forwards()), (b, 0));
        let (out, graw) = d.vjp(xb.view(), &vec![i as f64; b], mb.view()).unwrap();
        for s in 0..b {
            let e = (&eps[s] - &out.index_axis(Axis(0), s))
                .mapv(f64::abs)
                .fold(0.0, |a: f64, &v| a.max(v));
            let gg = (&g[s] - &graw.index_axis(Axis(0), s))
                .mapv(f64::abs)
                .fold(0.0, |a: f64, &v| a.max(v));
            assert!(
                e == 0.0 && gg == 0.0,
                "{}: Network changed the eps-model outputs",
                be.name
            );
        }
        let mut fd = Network::new(
            d,
            ModelKind::Diffusion,
            card.param(),
            card.time_input(),
            JacobianMode::FiniteDifference,
        );
        fd.fd_eps = 1e-2;
        let (_, jm) = fd.eps_vjp(&xs, i as f64, mu, sigma, &ms).unwrap();
        assert_eq!(fd.forwards(), 3 * b);
        for s in 0..b {
            let exact: f64 = g[s].iter().zip(&ms[s]).map(|(a, b)| a * b).sum();
            let approx: f64 = jm[s].iter().zip(&ms[s]).map(|(a, b)| a * b).sum();
            let rel = (exact - approx).abs() / exact.abs().max(approx.abs());
            eprintln!(
                "{} sample {s}: <J^T m, m> {exact:.5} vs fd {approx:.5}",
                be.name
            );
            assert!(
                rel < 2e-3,
                "{} sample {s}: <J^T m, m> {exact} vs fd {approx}",
                be.name
            );
        }
    }
}

#[test]
fn wrong_input_shapes_are_errors() {
    for be in backends() {
        let d = be.ddpm.denoiser.as_ref();
        let x = Array4::<f64>::zeros((2, 1, 16, 16));
        let e = d.predict(x.view(), &[1.0, 1.0]).unwrap_err().to_string();
        assert!(e.contains("16x16"), "{}: {e}", be.name);
        let x = Array4::<f64>::zeros((2, 1, 32, 32));
        let e = d.predict(x.view(), &[1.0]).unwrap_err().to_string();
        assert!(e.contains("1 time values"), "{}: {e}", be.name);
        let c = Array4::<f64>::zeros((1, 1, 32, 32));
        assert!(d.vjp(x.view(), &[1.0, 1.0], c.view()).is_err());
        let _ = Array1::<f64>::zeros(1);
    }
}

#[test]
fn auto_engine_picks_onnxruntime_when_found() {
    let m = load(&model_dir("fmnist-flow"), &opts(EngineChoice::Auto)).unwrap();
    let e = m.denoiser.engine();
    match ort() {
        Some(_) => assert!(e.starts_with("onnxruntime"), "{e}"),
        None => assert_eq!(e, "tract"),
    }
}

#[test]
fn gpu_only_without_a_gpu_provider_fails_loudly() {
    // The CPU wheel has no CUDA/TensorRT provider: asking for GPU only must fail, naming the problem,
    // rather than silently running on the CPU.
    let Some(_) = ort() else {
        return;
    };
    let mut o = opts(EngineChoice::OnnxRuntime);
    o.providers = vec![Provider::Cuda];
    match load(&model_dir("fmnist-ddpm"), &o) {
        Err(e) => {
            let e = e.to_string();
            eprintln!("gpu-only error: {e}");
            assert!(e.contains("cuda") && e.contains("denoiser.onnx"), "{e}");
        }
        Ok(m) => {
            // A GPU build of ONNX Runtime with a working GPU: then it must really run on it.
            let e = m.denoiser.engine();
            assert!(e.ends_with("/cuda"), "{e}");
        }
    }
}

/// A model directory with the shipped graphs of `name` (hard links, or copies) whose card lists only the
/// forward and the single VJP graph: the model as it was before the split VJP.
fn single_vjp_copy(name: &str) -> tempfile::TempDir {
    let src = model_dir(name);
    let dir = tempfile::tempdir().unwrap();
    let card = std::fs::read_to_string(src.join("model.yaml")).unwrap();
    let kept: Vec<&str> = card
        .lines()
        .filter(|l| !l.contains("forward_residuals:") && !l.contains("backward:"))
        .collect();
    std::fs::write(dir.path().join("model.yaml"), kept.join("\n") + "\n").unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        if e.file_name() == "model.yaml" {
            continue;
        }
        let dst = dir.path().join(e.file_name());
        // Real files: engines refuse external weights that resolve outside the model directory.
        if std::fs::hard_link(e.path(), &dst).is_err() {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
    dir
}

/// The shipped models loaded without their split graphs, on `engine`.
fn single_vjp_models(engine: EngineChoice) -> [(LoadedModel, tempfile::TempDir); 2] {
    ["fmnist-ddpm", "fmnist-flow"].map(|name| {
        let dir = single_vjp_copy(name);
        let m = load(dir.path(), &opts(engine)).unwrap();
        (m, dir)
    })
}

fn engine_of(be: &Backend) -> EngineChoice {
    if be.name == "tract" {
        EngineChoice::Tract
    } else {
        EngineChoice::OnnxRuntime
    }
}

#[test]
fn split_vjp_equals_single_vjp_graph() {
    // The shipped cards list forward_residuals + backward: vjp() runs them (with residuals kept by
    // predict_for_vjp, or recomputed on a miss) and must equal the single VJP graph's (out, vjp) to 1e-5;
    // the finite-difference check of the split VJP is `vjp_matches_central_finite_differences`.
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let b = 3;
    let x = noisy_batch(&mut rng, b, 0.7, 0.7);
    let c = normal(&mut rng, b);
    for be in backends() {
        let single = single_vjp_models(engine_of(be));
        for ((m, t), (s, _)) in [
            (&be.ddpm, [50.0, 400.0, 900.0]),
            (&be.flow, [0.1, 0.5, 0.9]),
        ]
        .into_iter()
        .zip(&single)
        {
            if m.card.graphs.split().is_none() {
                eprintln!("{}: {} has no split vjp graphs", be.name, m.card.name);
                continue;
            }
            assert!(s.card.graphs.split().is_none());
            let (d, sd) = (m.denoiser.as_ref(), s.denoiser.as_ref());
            let (o1, g1) = sd.vjp(x.view(), &t, c.view()).unwrap();
            // Miss: no residuals kept, the split pair runs in full.
            let (o2, g2) = d.vjp(x.view(), &t, c.view()).unwrap();
            // Hit: predict_for_vjp keeps the residuals, vjp runs only the backward on them.
            let f = d.predict_for_vjp(x.view(), &t).unwrap();
            let (o3, g3) = d.vjp(x.view(), &t, c.view()).unwrap();
            let scale = g1.iter().fold(0.0f64, |a, v| a.max(v.abs()));
            let name = format!("{} {}", be.name, m.card.name);
            eprintln!(
                "{name}: split vs single vjp max |diff| out {:.1e}, vjp {:.1e} (scale {scale:.2})",
                max_abs_diff(&o1, &o2),
                max_abs_diff(&g1, &g2)
            );
            assert!(max_abs_diff(&o1, &o2) <= 1e-5, "{name}: out");
            assert!(
                max_abs_diff(&g1, &g2) <= 1e-5 * scale.max(1.0),
                "{name}: vjp"
            );
            assert_eq!(f, o3, "{name}: kept out differs from predict_for_vjp's");
            assert_eq!(
                (&o2, &g2),
                (&o3, &g3),
                "{name}: kept residuals give another vjp"
            );
            assert!(
                max_abs_diff(&f, &d.predict(x.view(), &t).unwrap()) <= 1e-5,
                "{name}"
            );
            // Residuals are keyed by the exact input: another x or t misses and is still right.
            let f = d.predict_for_vjp(x.view(), &t).unwrap();
            let t2: Vec<f64> = t.iter().map(|v| v * 0.5).collect();
            let (o4, g4) = d.vjp(x.view(), &t2, c.view()).unwrap();
            let (o5, g5) = sd.vjp(x.view(), &t2, c.view()).unwrap();
            assert!(
                max_abs_diff(&o4, &o5) <= 1e-5 && max_abs_diff(&f, &o4) > 1e-3,
                "{name}"
            );
            assert!(max_abs_diff(&g4, &g5) <= 1e-5 * scale.max(1.0), "{name}");
        }
    }
}

#[test]
fn c_pigdm_with_split_graphs_equals_single_vjp() {
    // End to end: C-ΠGDM (forward, then the VJP at the same x every step) on 4× super-resolution of
    // two images gives the same reconstructions with the split graphs as with the single VJP graph.
    use conjure::operators::{OperatorRef, SrAverage};
    use conjure::samplers::c_pigdm::CPigdm;
    use conjure::samplers::{Problem, Sampler, SamplerConfig, SamplerName};
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let x_true = noisy_batch(&mut rng, 2, 1.0, 0.0);
    let op: OperatorRef = std::sync::Arc::new(SrAverage::new([1, 32, 32], 4).unwrap());
    for be in backends() {
        let single = single_vjp_models(engine_of(be));
        let m = &be.ddpm;
        let sched = m.card.model_schedule(&model_dir("fmnist-ddpm")).unwrap();
        let sampler =
            CPigdm::from_config(&SamplerConfig::new(SamplerName::CPigdm), &sched).unwrap();
        let run = |d: &dyn Denoiser| {
            let net = Network::new(
                d,
                ModelKind::Diffusion,
                m.card.param(),
                m.card.time_input(),
                JacobianMode::Exact,
            );
            let mut problems: Vec<Problem> = x_true
                .outer_iter()
                .enumerate()
                .map(|(i, x)| {
                    Problem::new(op.clone(), op.forward(&x.to_owned()), 0.0, i as u64).unwrap()
                })
                .collect();
            let xs = sampler.sample(&net, &mut problems).unwrap();
            (xs, net.forwards(), net.vjps())
        };
        let (a, fa, va) = run(m.denoiser.as_ref());
        let (b, fb, vb) = run(single[0].0.denoiser.as_ref());
        assert_eq!((fa, va), (fb, vb));
        assert!(va > 0, "C-ΠGDM takes VJPs");
        let diff = a
            .iter()
            .zip(&b)
            .flat_map(|(p, q)| p.iter().zip(q).map(|(u, v)| (u - v).abs()))
            .fold(0.0, f64::max);
        eprintln!(
            "{}: C-ΠGDM split vs single vjp max |diff| {diff:.1e}",
            be.name
        );
        assert!(diff <= 1e-5, "{}: {diff}", be.name);
    }
}
