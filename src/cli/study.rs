//! `conjure study`: tune, restore and score a sweep of tasks × samplers × NFE × Jacobian modes
//! ([`conjure::study`]), then write `results.md`, `results.csv`, `tuning.csv`, `psnr-vs-nfe.svg` and
//! `grid-<task>.png` under the output folder.
//!
//! ```text
//! conjure study STUDY.yaml [--out DIR] [--images N] [--tune-images N] [--task T]... [--run LABEL]...
//! ```
//!
//! Finished configurations are recorded in `<out>/study-runs.jsonl`; rerunning continues where a stopped
//! study left off (and only redraws the tables when everything is recorded).

use std::path::PathBuf;

use conjure::spec::study::StudySpec;
use conjure::study::{mean_se, run_study, StudyOptions};

/// Arguments of `conjure study`.
#[derive(Debug, Clone, clap::Args)]
pub struct StudyArgs {
    /// The study spec (YAML; see pipelines/experiments/).
    pub spec: PathBuf,
    /// Output folder (default: out/study/<spec name>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Use at most N test images (default: the spec's count).
    #[arg(long, value_name = "N")]
    pub images: Option<usize>,
    /// Use at most N tuning images (default: the spec's count).
    #[arg(long, value_name = "N")]
    pub tune_images: Option<usize>,
    /// Only this task (repeatable).
    #[arg(long = "task", value_name = "NAME")]
    pub tasks: Vec<String>,
    /// Only the runs with this label (repeatable).
    #[arg(long = "run", value_name = "LABEL")]
    pub runs: Vec<String>,
    /// Images (rows) in each task's image grid.
    #[arg(long, value_name = "N", default_value_t = 6)]
    pub grid_rows: usize,
    /// Print only the summary.
    #[arg(long)]
    pub quiet: bool,
}

pub fn study(args: &StudyArgs) -> anyhow::Result<i32> {
    let spec = StudySpec::load(&args.spec)?;
    let out = args.out.clone().unwrap_or_else(|| {
        let stem = args
            .spec
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "study".into());
        PathBuf::from("out/study").join(stem)
    });
    let opts = StudyOptions {
        out: out.clone(),
        images: args.images,
        tune_images: args.tune_images,
        tasks: (!args.tasks.is_empty()).then(|| args.tasks.clone()),
        runs: (!args.runs.is_empty()).then(|| args.runs.clone()),
        grid_rows: args.grid_rows,
        progress: !args.quiet,
    };
    let report = run_study(&spec, &opts)?;
    let diverged = report.test.iter().filter(|r| r.error.is_some()).count();
    println!(
        "study {}: {} test configurations ({} diverged), {} tuning configurations, {} restored now",
        args.spec.display(),
        report.test.len(),
        diverged,
        report.tuning.len(),
        report.restored
    );
    // The best configuration per task at the smallest NFE of the sweep and overall.
    let mut tasks: Vec<&str> = report.test.iter().map(|r| r.task.as_str()).collect();
    tasks.dedup();
    for t in tasks {
        let rows: Vec<_> = report
            .test
            .iter()
            .filter(|r| r.task == t && r.error.is_none())
            .collect();
        if let Some(b) = rows
            .iter()
            .max_by(|a, b| a.mean_psnr().total_cmp(&b.mean_psnr()))
        {
            println!(
                "  {t:18} best {} ({}, NFE {}): PSNR {:.2} dB, SSIM {:.4}",
                b.run,
                b.jacobian,
                b.nfe,
                b.mean_psnr(),
                mean_se(&b.ssim).0
            );
        }
    }
    for f in &report.files {
        println!("  wrote {}", f.display());
    }
    Ok(0)
}
