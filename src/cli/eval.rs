//! `conjure eval`: score restored images against clean references (see docs/cli.md).
//!
//! ```text
//! conjure eval --reference CLEAN_DIR --restored DIR [--json FILE] [--plot FILE.png]
//!              [--measurements DIR [--operator OP]] [--plot-rows N] [--npy-range LO:HI] [--quiet]
//! ```
//!
//! Files are paired by relative path ignoring the extension (png / tiff / jpeg / npy); see
//! [`conjure::metrics::eval`] for the rules. Prints a per-image table (PSNR in dB, SSIM, and
//! ‖H x̂ − y‖ / ‖y‖ when `--operator` is given) and the means. A restoration identical to its reference
//! has PSNR `inf`; it is left out of the PSNR mean (which stays finite) and counted on its own line.
//! Exit status: 0 when every reference image
//! was paired and scored, 1 when some were missing or failed (the others are still scored and
//! reported), and an error (exit 2 in `main`) when nothing could be evaluated or an argument is wrong.

use std::path::PathBuf;

use anyhow::{bail, Context};
use conjure::metrics::eval::{evaluate, load, EvalOptions, EvalReport};
use conjure::metrics::plot::plot;
use conjure::operators::Degradation;
use conjure::spec::{MaskSpec, TaskSpec};

/// Arguments of `conjure eval`.
#[derive(Debug, Clone, clap::Args)]
pub struct EvalArgs {
    /// Clean reference images (a directory, searched recursively, or one file).
    #[arg(long, value_name = "CLEAN_DIR")]
    pub reference: PathBuf,
    /// Restored images, paired with the references by relative path (extensions may differ).
    #[arg(long, value_name = "DIR")]
    pub restored: PathBuf,
    /// Also write the per-image metrics and the means as JSON.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// Draw a PNG grid clean | y | restored of the first images, titled with the mean PSNR.
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
    /// Measurements y (the restoration inputs), paired by the same rule; shown in the plot.
    #[arg(long, value_name = "DIR")]
    pub measurements: Option<PathBuf>,
    /// Degradation H for the consistency metric ‖H x̂ − y‖ / ‖y‖: denoise | colorize | sr-average:S |
    /// sr-bicubic:S | deblur-gaussian:SIZE:SIGMA | deblur-uniform:SIZE | inpaint:MASK.png.
    #[arg(long, value_name = "OP", requires = "measurements")]
    pub operator: Option<String>,
    /// Number of images (rows) in the plot.
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub plot_rows: usize,
    /// Value range of .npy files (the model's range), mapped to [0, 1].
    #[arg(
        long,
        value_name = "LO:HI",
        default_value = "-1:1",
        allow_hyphen_values = true
    )]
    pub npy_range: String,
    /// Print only the means (and problems).
    #[arg(long)]
    pub quiet: bool,
}

fn parse_range(text: &str) -> anyhow::Result<[f64; 2]> {
    let (lo, hi) = text
        .split_once(':')
        .with_context(|| format!("invalid npy range {text:?} (expected LO:HI, e.g. -1:1)"))?;
    let lo: f64 = lo
        .trim()
        .parse()
        .with_context(|| format!("invalid npy range {text:?}"))?;
    let hi: f64 = hi
        .trim()
        .parse()
        .with_context(|| format!("invalid npy range {text:?}"))?;
    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
        bail!("invalid npy range {text:?} (expected finite LO < HI)");
    }
    Ok([lo, hi])
}

fn fmt_num(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        Some(v) if v > 0.0 => "inf".into(),
        Some(_) => "nan".into(),
        None => "-".into(),
    }
}

/// Print the per-image table, the problems and the means.
pub fn print_report(report: &EvalReport, quiet: bool) {
    let with_c = report.summary.consistency_count > 0;
    let mean_label = format!("mean ({} images)", report.summary.count);
    let width = report
        .images
        .iter()
        .map(|r| r.name.chars().count())
        .chain([mean_label.chars().count(), 12])
        .max()
        .unwrap_or(12);
    let header = |name: &str| {
        let mut s = format!("{name:<width$}  {:>9}  {:>7}", "PSNR (dB)", "SSIM");
        if with_c {
            s.push_str(&format!("  {:>11}", "‖Hx̂−y‖/‖y‖"));
        }
        s
    };
    if !quiet {
        println!("{}", header("image"));
        for r in &report.images {
            match &r.metrics {
                Some(m) => {
                    let mut line = format!(
                        "{:<width$}  {:>9}  {:>7}",
                        r.name,
                        fmt_num(Some(m.psnr), 2),
                        fmt_num(Some(m.ssim), 4)
                    );
                    if with_c {
                        line.push_str(&format!("  {:>11}", fmt_num(m.consistency, 6)));
                    }
                    println!("{line}");
                }
                None => println!("{:<width$}  failed", r.name),
            }
        }
    }
    for r in &report.images {
        if let Some(e) = &r.error {
            eprintln!("conjure eval: {}: {e}", r.name);
        }
    }
    for m in &report.missing {
        eprintln!("conjure eval: {m}: no restored file");
    }
    if !report.unmatched.is_empty() {
        eprintln!(
            "conjure eval: {} restored file(s) without a reference ignored (first: {})",
            report.unmatched.len(),
            report.unmatched[0]
        );
    }
    let s = &report.summary;
    let mut line = format!(
        "{:<width$}  {:>9}  {:>7}",
        mean_label,
        fmt_num(s.psnr, 2),
        fmt_num(s.ssim, 4)
    );
    if with_c {
        line.push_str(&format!("  {:>11}", fmt_num(s.consistency, 6)));
    }
    println!("{line}");
    if s.identical > 0 {
        println!(
            "{} of {} images are identical to their reference (PSNR inf); the PSNR mean is over the \
             other {}",
            s.identical,
            s.count,
            s.count - s.identical
        );
    }
    if s.count == 0 {
        let failed = report.images.iter().filter(|r| r.error.is_some()).count();
        eprintln!(
            "conjure eval: no image could be scored: {failed} pair(s) failed, {} reference(s) have \
             no restored file (reasons above)",
            report.missing.len()
        );
    }
}

/// `--operator`: the short form parsed into the task a spec's `task` block describes, its mask file (white
/// = known) loaded for `inpaint`.
fn operator(text: &str) -> conjure::Result<Degradation> {
    let task = TaskSpec::parse_short(text)?;
    let mask = match &task.mask {
        Some(MaskSpec::File { path }) => Some(
            load(path, [0.0, 1.0])?
                .mean_axis(ndarray::Axis(0))
                .expect("an image has at least one channel")
                .mapv(|v| if v > 0.5 { 1.0 } else { 0.0 }),
        ),
        _ => None,
    };
    task.degradation(mask)
}

/// Run `conjure eval`; returns the exit status (0 all scored, 1 some missing or failed).
pub fn eval(args: &EvalArgs) -> anyhow::Result<i32> {
    let npy_range = parse_range(&args.npy_range)?;
    if args.plot.is_some() && args.plot_rows == 0 {
        bail!("invalid plot rows 0 (expected >= 1)");
    }
    let operator = args
        .operator
        .as_deref()
        .map(operator)
        .transpose()
        .context("--operator")?;
    let opts = EvalOptions {
        reference: args.reference.clone(),
        restored: args.restored.clone(),
        measurements: args.measurements.clone(),
        operator,
        npy_range,
    };
    let report = evaluate(&opts).context("conjure eval")?;
    if report.images.is_empty() && report.missing.is_empty() {
        bail!(
            "no images found under {} (expected png, tiff, jpeg or npy files)",
            args.reference.display()
        );
    }
    print_report(&report, args.quiet);
    if let Some(path) = &args.json {
        report
            .write_json(path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.plot {
        if report.summary.count == 0 {
            eprintln!(
                "conjure eval: no image was scored; {} not drawn",
                path.display()
            );
            return Ok(1);
        }
        plot(&report, path, args.plot_rows, npy_range)
            .with_context(|| format!("drawing {}", path.display()))?;
    }
    Ok(if report.failures() > 0 { 1 } else { 0 })
}
