//! `conjure model inspect DIR`: the card, the graphs' inputs and outputs, the engine that runs them, and a
//! VJP self-check — ⟨c, J v⟩ by central differences against ⟨Jᵀc, v⟩ from the VJP graph at one random
//! point (they agree to float32 round-off for a correct export).

use std::path::Path;

use ndarray::{Array4, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::{Distribution, StandardNormal};

use conjure::model::card::{CardSchedule, ModelCard};
use conjure::model::{self, ModelKind, Parameterization, RuntimeOptions};
use conjure::schedules::TimeInput;

/// "diffusion model predicting the noise ε", in words.
fn kind_text(kind: ModelKind, param: Parameterization) -> String {
    let what = match param {
        Parameterization::Eps => "the noise (eps)",
        Parameterization::X0 => "the clean image (x0)",
        Parameterization::Velocity => "the velocity (x1 - z)",
    };
    match kind {
        ModelKind::Diffusion => format!("diffusion, predicts {what}"),
        ModelKind::Flow => format!("flow, predicts {what}"),
    }
}

/// The noise schedule, in words.
fn schedule_text(s: &CardSchedule) -> String {
    match s {
        CardSchedule::DdpmLinear {
            beta_start,
            beta_end,
            timesteps,
        } => format!("DDPM linear, beta {beta_start} to {beta_end} over {timesteps} steps"),
        CardSchedule::VpContinuous { beta_min, beta_max } => {
            format!("VP continuous, beta {beta_min} to {beta_max}")
        }
        CardSchedule::AlphasCumprod { file } => {
            format!("cumulative alphas from {}", file.display())
        }
        CardSchedule::RectifiedFlow => {
            "rectified flow (straight paths, t = 0 noise, t = 1 data)".into()
        }
    }
}

/// What the network's time input is, in words.
fn time_text(t: TimeInput) -> String {
    match t {
        TimeInput::Index { timesteps } => {
            format!("step index 0..{} (as a float)", timesteps.saturating_sub(1))
        }
        TimeInput::Unit => "continuous time in [0, 1]".into(),
    }
}

pub fn inspect(dir: &Path) -> anyhow::Result<i32> {
    let card = ModelCard::load(dir)?;
    let img = &card.image;
    println!("model {}", dir.display());
    println!("  name             {}", card.name);
    println!(
        "  kind             {}",
        kind_text(card.model_kind(), card.param())
    );
    println!("  schedule         {}", schedule_text(&card.schedule));
    println!("  time input       {}", time_text(card.time_input()));
    println!(
        "  image            {} x {} x {} in [{}, {}]",
        img.channels, img.height, img.width, img.value_range[0], img.value_range[1]
    );
    let (c, h, w) = (img.channels, img.height, img.width);
    println!(
        "  forward graph    {}: x[B,{c},{h},{w}] f32, t[B] f32 -> out[B,{c},{h},{w}]",
        card.graphs.forward.display()
    );
    match &card.graphs.vjp {
        Some(v) => println!(
            "  vjp graph        {}: x, t, cotangent[B,{c},{h},{w}] -> out, vjp",
            v.display()
        ),
        None if card.graphs.has_vjp() => {}
        None => println!("  vjp graph        none (use jacobian: finite-difference or identity)"),
    }
    if let (Some(r), Some(b)) = (&card.graphs.forward_residuals, &card.graphs.backward) {
        println!(
            "  split vjp        {} (x, t -> out, residuals) + {} (residuals, cotangent -> vjp)",
            r.display(),
            b.display()
        );
    }
    let loaded = model::load(dir, &RuntimeOptions::default())?;
    let net = loaded.denoiser;
    println!("  engine           {}", net.engine());
    let t_net = match card.time_input() {
        TimeInput::Index { timesteps } => (timesteps / 2) as f64,
        TimeInput::Unit => 0.5,
    };
    let mut rng = ChaCha20Rng::seed_from_u64(0);
    let mut draw =
        || Array4::from_shape_simple_fn((1, c, h, w), || StandardNormal.sample(&mut rng));
    let x: Array4<f64> = draw();
    let v: Array4<f64> = draw();
    let cot: Array4<f64> = draw();
    let out = net.predict(x.view(), &[t_net])?;
    println!(
        "  forward          ok (rms of out {:.4})",
        (out.mapv(|a| a * a).mean().unwrap_or(0.0)).sqrt()
    );
    if !net.has_vjp() {
        println!("  vjp self-check   skipped (no vjp graph)");
        return Ok(0);
    }
    let (_, g) = net.vjp(x.view(), &[t_net], cot.view())?;
    let eps = 1e-2;
    let xs = ndarray::concatenate(
        Axis(0),
        &[(&x + &(&v * eps)).view(), (&x - &(&v * eps)).view()],
    )?;
    let f = net.predict(xs.view(), &[t_net, t_net])?;
    let jv = (&f.index_axis(Axis(0), 0) - &f.index_axis(Axis(0), 1)) / (2.0 * eps);
    let lhs: f64 = (&jv * &cot.index_axis(Axis(0), 0)).sum();
    let rhs: f64 = (&g * &v).sum();
    let rel = (lhs - rhs).abs() / lhs.abs().max(rhs.abs()).max(1e-12);
    let ok = rel < 1e-2;
    println!(
        "  vjp self-check   <c, Jv> = {lhs:.6}, <J^T c, v> = {rhs:.6}, relative difference {rel:.2e}: {}",
        if ok { "ok" } else { "MISMATCH" }
    );
    Ok(if ok { 0 } else { 2 })
}
