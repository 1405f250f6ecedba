//! `conjure run`: the CLI side of the batch pipeline — options, the summary line, the exit status, and
//! SIGINT / SIGTERM (issue 8).
//!
//! The first SIGINT or SIGTERM (Ctrl-C; Slurm and Kubernetes send SIGTERM on preemption and cancel) sets
//! the pipeline's stop flag ([`RunOptions::stop`]): no new batch is taken, what is already sampled is
//! written, the batch in the network is discarded, and the run ends with one line saying how many inputs
//! were done and that rerunning resumes, exit status 130 (SIGINT) or 143 (SIGTERM), 128 + the signal
//! number as shells report it. A second signal exits at once with the same status: outputs are written
//! to a temporary file and renamed, so none is torn, and the temporaries such an exit may leave are
//! removed by the next run.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};

use conjure::pipeline::{self, Progress, ProgressMode, RunOptions, Shard};

use super::progress::Bars;
use super::{load_spec, Failure, EXIT_FAILED_INPUTS, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM};

/// The arguments of `conjure run`.
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The pipeline spec (YAML).
    pub spec: PathBuf,
    /// Input file or directory (overrides io.input).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output directory (overrides io.output).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Override a spec key: --set sampler.steps=10 (repeatable; the value is YAML).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Process only inputs whose position in the sorted list is I mod N (0-based). Default: from
    /// SLURM_ARRAY_* or JOB_COMPLETION_INDEX + CONJURE_SHARD_COUNT.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,
    /// Redo outputs that already exist.
    #[arg(long)]
    pub overwrite: bool,
    /// No progress output (warnings and failures only).
    #[arg(long, short)]
    pub quiet: bool,
    /// Manifest file (default <output>/conjure-manifest.jsonl, or
    /// <output>/conjure-manifest.shard-I-of-N.jsonl for a shard).
    #[arg(long)]
    pub manifest: Option<PathBuf>,
}

/// The stop flag and the last signal received (0 = none).
struct Signals {
    stop: Arc<AtomicBool>,
    last: Arc<AtomicUsize>,
}

impl Signals {
    /// Handle SIGINT and SIGTERM: the first sets the stop flag, a second exits at once.
    fn install() -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let last = Arc::new(AtomicUsize::new(0));
        for (signal, code) in [(SIGINT, EXIT_SIGINT), (SIGTERM, EXIT_SIGTERM)] {
            // Registered first, so it sees the flag as the previous signal left it.
            signal_hook::flag::register_conditional_shutdown(signal, code, Arc::clone(&stop))
                .and_then(|_| {
                    signal_hook::flag::register_usize(signal, Arc::clone(&last), signal as usize)
                })
                .and_then(|_| signal_hook::flag::register(signal, Arc::clone(&stop)))
                .context("cannot install the SIGINT / SIGTERM handlers")?;
        }
        Ok(Signals { stop, last })
    }

    /// The exit status and name of the signal that stopped the run.
    fn status(&self) -> (i32, &'static str) {
        match self.last.load(Ordering::SeqCst) as i32 {
            SIGTERM => (EXIT_SIGTERM, "SIGTERM"),
            _ => (EXIT_SIGINT, "SIGINT"),
        }
    }
}

/// Run a spec; returns the exit status.
pub fn run(args: RunArgs) -> Result<i32, Failure> {
    let spec = load_spec(&args.spec, &args.set)?;
    let shard = match args.shard {
        Some(s) => Some(Shard::parse(&s)?),
        None => Shard::from_env(|k| std::env::var(k).ok())?,
    };
    let progress = match args.quiet {
        true => ProgressMode::Quiet,
        false => ProgressMode::Log,
    };
    // A terminal gets a bar in place of the log lines.
    let display = (!args.quiet && std::io::stderr().is_terminal())
        .then(|| Arc::new(Bars::default()) as Arc<dyn Progress>);
    let signals = Signals::install()?;
    let opts = RunOptions {
        input: args.input,
        output: args.output,
        overwrite: args.overwrite,
        shard,
        manifest: args.manifest,
        progress,
        display,
        stop: Some(Arc::clone(&signals.stop)),
        watch: None,
    };
    let s = pipeline::run(&spec, &opts)?;
    let unsupported = match s.unsupported.len() {
        0 => String::new(),
        n => format!(", {n} not read (unsupported format)"),
    };
    let line = format!(
        "restored {}, skipped {}, failed {}{unsupported} in {:.1} s (engine {}) -> {}",
        s.restored,
        s.skipped,
        s.failed,
        s.seconds,
        s.engine,
        s.output.display()
    );
    if !s.unsupported.is_empty() {
        let shown: Vec<String> = s
            .unsupported
            .iter()
            .take(5)
            .map(|p| p.display().to_string())
            .collect();
        eprintln!(
            "conjure: {} image file{} of an unsupported format (BMP, GIF, WebP, ...; conjure reads PNG, TIFF \
             and JPEG) {} not restored: {}{}",
            s.unsupported.len(),
            if s.unsupported.len() == 1 { "" } else { "s" },
            if s.unsupported.len() == 1 { "was" } else { "were" },
            shown.join(", "),
            if s.unsupported.len() > 5 { ", ..." } else { "" }
        );
    }
    let failures = || {
        eprintln!("failed inputs (details in {}):", s.manifest.display());
        for (p, e) in &s.failures {
            eprintln!("  {}: {e}", p.display());
        }
    };
    if s.interrupted {
        let (code, name) = signals.status();
        eprintln!(
            "conjure: interrupted by {name}: {line}; {} input{} not done, rerun the same command to resume",
            s.remaining,
            if s.remaining == 1 { "" } else { "s" }
        );
        if s.failed > 0 {
            failures();
        }
        Ok(code)
    } else if s.failed > 0 {
        eprintln!("conjure: {line}");
        failures();
        Ok(EXIT_FAILED_INPUTS)
    } else {
        if !args.quiet {
            eprintln!("conjure: {line}");
        }
        Ok(EXIT_OK)
    }
}
