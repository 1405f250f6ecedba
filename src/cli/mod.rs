//! Command-line front end (binary only): clap arguments → library calls; owns exit codes and the
//! human-facing messages. `anyhow` is used here and nowhere in the library.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::anyhow;
use clap::{Parser, Subcommand};

use conjure::engine::{build_operator, ModelDir};
use conjure::pipeline;
use conjure::spec::{Override, PipelineSpec};

mod bench;
mod eval;
mod inspect;
mod manifest;
mod progress;
mod run;
mod study;
mod validate;

/// Exit status: every input restored or skipped.
pub const EXIT_OK: i32 = 0;
/// Exit status: at least one input failed (the others were done).
pub const EXIT_FAILED_INPUTS: i32 = 1;
/// Exit status: usage, spec or model error (nothing ran).
pub const EXIT_USAGE: i32 = 2;
/// Exit status of `run` stopped by SIGINT (128 + 2): finished outputs kept, rerun to resume.
pub const EXIT_SIGINT: i32 = 130;
/// Exit status of `run` stopped by SIGTERM (128 + 15): finished outputs kept, rerun to resume.
pub const EXIT_SIGTERM: i32 = 143;

#[derive(Parser, Debug)]
#[command(
    name = "conjure",
    version,
    about = "Restore images in bulk with diffusion / flow priors (C-ΠGDM, C-ΠGFM and baselines)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Restore every image of the input (file or directory, recursive) into the output directory.
    Run(run::RunArgs),
    /// Check a spec, its model card and its input; say per input size how many tiles and network
    /// evaluations a run takes and about how long (from one timed network call).
    Validate {
        spec: PathBuf,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Make measurements y = H x + noise from clean images (and write the masks used).
    Degrade {
        spec: PathBuf,
        /// Directory (or file) of clean images.
        #[arg(long)]
        input: PathBuf,
        /// Where the measurements go (same relative paths, same format and bit depth).
        #[arg(long)]
        output: PathBuf,
        /// Where inpainting masks go (default: <output>-masks).
        #[arg(long)]
        masks: Option<PathBuf>,
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// Score restored images against clean references (PSNR, SSIM, consistency; --json, --plot).
    Eval(eval::EvalArgs),
    /// Run a spec on N images and report where the time goes (network, sampler, I/O, idle).
    Bench(bench::BenchArgs),
    /// Tune and run a quality study (tasks × samplers × NFE × Jacobian modes); tables and figures.
    Study(study::StudyArgs),
    /// Model directories.
    Model {
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Run manifests.
    Manifest {
        #[command(subcommand)]
        command: ManifestCommand,
    },
}

#[derive(Subcommand, Debug)]
enum ManifestCommand {
    /// One audit of a whole (sharded) job: read every shard's manifest, list failures and the inputs no
    /// shard recorded; exit 0 only when every input was restored or skipped.
    Merge(manifest::MergeArgs),
}

#[derive(Subcommand, Debug)]
enum ModelCommand {
    /// Show the card, graph inputs/outputs and engine, and check the VJP against finite differences.
    Inspect {
        /// A directory holding model.yaml.
        dir: PathBuf,
    },
}

/// An error that maps to an exit status.
struct Failure {
    code: i32,
    error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: EXIT_USAGE,
            error: e.into(),
        }
    }
}

/// Parse the arguments, run, print errors; returns the exit status.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
        }
    };
    let quiet = matches!(
        cli.command,
        Command::Run(run::RunArgs { quiet: true, .. })
            | Command::Eval(eval::EvalArgs { quiet: true, .. })
    );
    init_logging(quiet);
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(f) => {
            eprintln!("conjure: error: {}", chain(&f.error));
            f.code
        }
    }
}

/// The error and its causes, skipping causes whose text the message already contains (library errors
/// embed their source in their own message).
fn chain(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg = format!("{msg}: {c}");
        }
    }
    msg
}

/// Log targets of dependencies held to errors by default.
const QUIET_LOG_TARGETS: &str = "tract_onnx::model=error";

fn init_logging(quiet: bool) {
    let default = if quiet { "warn" } else { "info" };
    // tract warns, through the `log` crate, that a graph's ONNX opset (20 for the shipped models) is
    // newer than the ones it is tested against; conjure's own conformance tests check the shipped
    // graphs, so that warning is noise: only tract's errors are shown (RUST_LOG can ask for more).
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("{default},{}", QUIET_LOG_TARGETS))
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

fn overrides(set: &[String]) -> Result<Vec<Override>, Failure> {
    Ok(set
        .iter()
        .map(|s| Override::parse(s))
        .collect::<conjure::Result<Vec<_>>>()?)
}

fn load_spec(path: &Path, set: &[String]) -> Result<PipelineSpec, Failure> {
    Ok(PipelineSpec::load(path, &overrides(set)?)?)
}

fn dispatch(cmd: Command) -> Result<i32, Failure> {
    match cmd {
        Command::Run(args) => run::run(args),
        Command::Validate { spec: path, set } => validate::validate(&path, &set),
        Command::Degrade {
            spec,
            input,
            output,
            masks,
            set,
        } => {
            let spec = load_spec(&spec, &set)?;
            let model = ModelDir::open(&spec)?;
            let masks = masks.unwrap_or_else(|| {
                let mut s = output.as_os_str().to_owned();
                s.push("-masks");
                PathBuf::from(s)
            });
            let s = pipeline::degrade(
                &spec,
                &model.info,
                &build_operator,
                &input,
                &output,
                Some(&masks),
            )?;
            eprintln!(
                "conjure: wrote {} measurements to {}{}",
                s.written,
                output.display(),
                s.masks
                    .map(|m| format!(" and their masks to {}", m.display()))
                    .unwrap_or_default()
            );
            if s.failures.is_empty() {
                Ok(EXIT_OK)
            } else {
                for (p, e) in &s.failures {
                    eprintln!("  failed {}: {e}", p.display());
                }
                Ok(EXIT_FAILED_INPUTS)
            }
        }
        Command::Eval(args) => eval::eval(&args).map_err(|e| Failure {
            code: EXIT_USAGE,
            error: e,
        }),
        Command::Bench(args) => bench::bench(&args).map_err(|e| Failure {
            code: EXIT_USAGE,
            error: e,
        }),
        Command::Study(args) => study::study(&args).map_err(|e| Failure {
            code: EXIT_USAGE,
            error: e,
        }),
        Command::Manifest {
            command: ManifestCommand::Merge(args),
        } => manifest::merge(&args),
        Command::Model {
            command: ModelCommand::Inspect { dir },
        } => inspect::inspect(&dir).map_err(|e| Failure {
            code: EXIT_USAGE,
            error: anyhow!(e),
        }),
    }
}
