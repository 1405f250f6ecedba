//! Restore one image through the library API, without a spec: 4× bicubic super-resolution of a Fashion-MNIST
//! item with C-ΠGDM (5 steps) on the embedded `models/fmnist-ddpm` prior, then PSNR against the clean image.
//!
//! ```sh
//! cargo run --release --example restore_library
//! ```

use std::path::Path;

use conjure::imageio;
use conjure::metrics::psnr;
use conjure::model::{load, JacobianMode, Network, RuntimeOptions};
use conjure::operators::{Degradation, DEFAULT_SVD_THRESHOLD};
use conjure::samplers::{build, Problem, SamplerConfig, SamplerName};

fn main() -> conjure::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("models/fmnist-ddpm");
    let model = load(&dir, &RuntimeOptions::default())?;
    let card = &model.card;

    // Pixels in [0, 1] → the model's value range [-1, 1].
    let to_model = |x: ndarray::Array3<f64>| x.mapv(|v| 2.0 * v - 1.0);
    let clean = to_model(imageio::decode(&root.join("examples/fmnist/clean/coat-6.png"))?.color);

    // The measurement y = H x: here made from the clean image, as `conjure degrade` would.
    let op = Degradation::SrBicubic {
        scale: 4,
        threshold: DEFAULT_SVD_THRESHOLD,
    }
    .build([1, 32, 32])?;
    let y = op.forward(&clean);

    let mut cfg = SamplerConfig::new(SamplerName::CPigdm); // defaults: 5 steps, w = 15, τ = 0.4
    cfg.jacobian = JacobianMode::Exact;
    let sampler = build(&cfg, &card.model_schedule(&dir)?)?;
    let net = Network::new(
        model.denoiser.as_ref(),
        card.model_kind(),
        card.param(),
        card.time_input(),
        cfg.jacobian,
    );

    let mut problems = vec![Problem::new(op.clone(), y.clone(), 0.0, 0)?];
    let restored = sampler
        .sample(&net, &mut problems)?
        .remove(0)
        .mapv(|v| v.clamp(-1.0, 1.0));

    let upsampled = op.pinv(&y).mapv(|v| v.clamp(-1.0, 1.0));
    println!("engine        {}", model.denoiser.engine());
    println!(
        "network calls {} forwards + {} VJPs",
        net.forwards(),
        net.vjps()
    );
    println!("PSNR H†y      {:.2} dB", psnr(&clean, &upsampled, 2.0)?);
    println!("PSNR C-ΠGDM   {:.2} dB", psnr(&clean, &restored, 2.0)?);
    Ok(())
}
