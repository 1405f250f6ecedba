//! `conjure validate`: parse and check a spec, its model card and its input; say what a run would do and
//! about how long it would take (issue 16), without restoring anything.

use std::path::{Path, PathBuf};

use conjure::engine::{ModelDir, Restorer};
use conjure::pipeline::{self, estimate};

use super::{load_spec, Failure, EXIT_OK};

/// Check a spec; print a summary and, for the spec's input, the per-size estimate.
pub fn validate(path: &Path, set: &[String]) -> Result<i32, Failure> {
    let spec = load_spec(path, set)?;
    let model = ModelDir::open(&spec)?;
    // What `run` refuses before reading an image (e.g. colorize with a 1-channel model).
    model.check(&spec)?;
    let (card, info) = (&model.card, &model.info);
    let sampler = conjure::samplers::build(&spec.sampler_config(), &info.schedule)?;
    let evals = estimate::evaluations(&spec, info, sampler.as_ref())?;
    if let Some(input) = &spec.io.input {
        let output = spec.io.output.clone().unwrap_or_else(PathBuf::new);
        pipeline::check_io(input, &output)?;
    }
    println!("{}: ok", path.display());
    println!(
        "  model    {} ({}, {}x{}x{}){}",
        card.name,
        spec.model.display(),
        card.image.channels,
        card.image.height,
        card.image.width,
        card.domain
            .as_deref()
            .map(|d| format!(": {d}"))
            .unwrap_or_default()
    );
    println!(
        "  task     {}{}",
        spec.task.operator.as_str(),
        if spec.task.operator.is_sr() {
            format!(" x{}", spec.task.scale)
        } else {
            String::new()
        }
    );
    let draws = match spec.sampler.samples {
        1 => String::new(),
        k => format!(", the mean of {k} draws"),
    };
    println!(
        "  sampler  {} (NFE {} per image: {} forwards + {} VJPs{draws})",
        sampler.name(),
        evals.nfe(),
        evals.forwards,
        evals.vjps
    );
    for (what, p) in [("input", &spec.io.input), ("output", &spec.io.output)] {
        if let Some(p) = p {
            println!("  {what:<8} {}", p.display());
        }
    }
    println!("  hash     {}", spec.hash());
    if let Some(input) = &spec.io.input {
        let items = pipeline::discover(input, spec.io.output.as_deref())?;
        if items.is_empty() {
            println!("  no image files under {}", input.display());
        } else {
            // A short warm-up measurement of the network at the run's batch size.
            let restorer = Restorer::load(&spec)?;
            let cfg = model.tiles(&spec);
            let plan = estimate::plan(
                &spec,
                info,
                card.domain.as_deref(),
                &items,
                &cfg,
                restorer.sampler(),
                Some(restorer.network().as_ref()),
            )?;
            println!(
                "  estimate (engine {}, batch {}, tiles {}x{}):",
                restorer.network().engine(),
                spec.runtime.batch_size,
                cfg.tile_w,
                cfg.tile_h
            );
            for line in &plan.lines {
                println!("    {line}");
            }
            for w in &plan.warnings {
                println!("  warning: {w}");
            }
        }
    }
    Ok(EXIT_OK)
}
