//! `conjure manifest merge`: one audit of a whole sharded job.
//!
//! Every shard of a job array writes its own manifest (`<output>/conjure-manifest.shard-I-of-N.jsonl`,
//! see `pipeline::default_manifest`), and a retried shard appends to it. This command reads them all back,
//! enumerates the job's inputs exactly as `run` does (the spec's `io.input`, or `--input`, walked and
//! sorted by `pipeline::discover`, the output folder excluded), and reports for the whole job:
//!
//! * per input, its final status: **restored** if any record restored it, else **skipped** if any run
//!   found its output already there, else **failed** (with the last error), else **missing** (no shard
//!   recorded it — a task that never ran or was killed before reaching it);
//! * the inputs that failed once and were restored on a retry (`recovered`), and those restored more than
//!   once (work done twice — expected only after `--overwrite`);
//! * records for inputs that are not in the input list, and the distinct spec hashes (more than one means
//!   the shards did not all run the same settings).
//!
//! Exit status 0 when every input is restored or skipped, 1 when any failed or is missing, 2 on usage
//! errors. `--out FILE` writes the merged manifest (one record per input, in input order: the record that
//! decided its status); `--json FILE` writes the audit itself.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use clap::Args;
use serde_json::json;

use conjure::pipeline::manifest::{self, is_manifest_name};
use conjure::pipeline::output;
use conjure::pipeline::{self, ManifestRecord, Status};

use super::{load_spec, Failure, EXIT_FAILED_INPUTS, EXIT_OK};

#[derive(Args, Debug)]
pub struct MergeArgs {
    /// The pipeline spec the job ran (its io.input / io.output locate the inputs and manifests).
    spec: PathBuf,
    /// Input file or directory (overrides io.input; give the same one the shards were given).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output directory (overrides io.output).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Override a spec key, as for `run`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Manifest to read (repeatable). Default: every `conjure-manifest*.jsonl` in the output directory.
    #[arg(long = "manifest", value_name = "FILE")]
    manifests: Vec<PathBuf>,
    /// Write the merged manifest here (JSONL, one record per input, in input order).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Write the audit as JSON here.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Print only problems (failures, missing inputs).
    #[arg(long, short)]
    quiet: bool,
}

/// A manifest line with where it came from.
struct Record {
    rec: ManifestRecord,
    /// (manifest number, line number): the order records were written in, within a file.
    order: (usize, usize),
}

/// What happened to one input over all records.
#[derive(Default)]
struct History<'a> {
    records: Vec<&'a Record>,
}

impl History<'_> {
    fn count(&self, status: Status) -> usize {
        self.records
            .iter()
            .filter(|r| r.rec.status == status)
            .count()
    }

    /// The final status and the record that decided it.
    fn decide(&self) -> Option<(Status, &Record)> {
        for status in [Status::Restored, Status::Skipped, Status::Failed] {
            if let Some(r) = self.records.iter().rev().find(|r| r.rec.status == status) {
                return Some((status, r));
            }
        }
        None
    }
}

/// The key inputs are matched by: the canonical path when the file exists, else the path as written.
fn key(p: &Path) -> PathBuf {
    p.canonicalize().unwrap_or_else(|_| p.to_path_buf())
}

/// The manifests in `output`: every `conjure-manifest*.jsonl`, sorted by name, `skip` excluded.
fn find_manifests(output: &Path, skip: Option<&Path>) -> anyhow::Result<Vec<PathBuf>> {
    let skip = skip.map(key);
    let mut v = Vec::new();
    let dir = std::fs::read_dir(output)
        .with_context(|| format!("cannot read the output folder {}", output.display()))?;
    for e in dir {
        let e = e.with_context(|| format!("cannot read the output folder {}", output.display()))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if is_manifest_name(&name)
            && e.file_type().is_ok_and(|t| t.is_file())
            && Some(key(&e.path())) != skip
        {
            v.push(e.path());
        }
    }
    v.sort();
    Ok(v)
}

fn read_manifest(n: usize, path: &Path) -> anyhow::Result<Vec<Record>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read manifest {}", path.display()))?;
    let last = text.lines().count();
    let mut out = Vec::new();
    for (line, rec) in manifest::parse(&text) {
        let rec = match rec {
            Ok(rec) => rec,
            // A run killed mid-write can leave a partial last line; anything else is corruption.
            Err(_) if line == last && !text.ends_with('\n') => {
                eprintln!(
                    "conjure: warning: {}:{line}: ignoring a truncated last line",
                    path.display()
                );
                continue;
            }
            Err(e) => bail!("{}:{line}: not a manifest record: {e}", path.display()),
        };
        out.push(Record {
            rec,
            order: (n, line - 1),
        });
    }
    Ok(out)
}

pub fn merge(args: &MergeArgs) -> Result<i32, Failure> {
    let spec = load_spec(&args.spec, &args.set)?;
    let input = output::given_or_spec(args.input.as_ref(), spec.io.input.as_ref(), "input")?;
    let output = output::given_or_spec(args.output.as_ref(), spec.io.output.as_ref(), "output")?;
    // Unreadable parts of the tree are not inputs; `run` records them as failed lines, which the audit
    // lists among the records for paths outside the input list.
    let (items, _problems) = pipeline::discover_all(&input, Some(&output))?;
    let manifests = if args.manifests.is_empty() {
        find_manifests(&output, args.out.as_deref())?
    } else {
        args.manifests.clone()
    };
    if manifests.is_empty() {
        return Err(anyhow!(
            "no manifests (conjure-manifest*.jsonl) in {}; give --manifest FILE",
            output.display()
        )
        .into());
    }
    let mut records = Vec::new();
    for (n, m) in manifests.iter().enumerate() {
        records.extend(read_manifest(n, m)?);
    }
    // Chronological: by finish time, then by position within a file (one second holds many records).
    records.sort_by_key(|r| (r.rec.finished_at, r.order));

    let index: HashMap<PathBuf, usize> = items
        .iter()
        .enumerate()
        .map(|(i, it)| (key(&it.path), i))
        .collect();
    let mut histories: Vec<History> = (0..items.len()).map(|_| History::default()).collect();
    let mut unknown = BTreeSet::new();
    let mut hashes = BTreeSet::new();
    for r in &records {
        let inp = r.rec.input.as_str();
        if !r.rec.spec_hash.is_empty() {
            hashes.insert(r.rec.spec_hash.clone());
        }
        match index.get(&key(Path::new(inp))) {
            Some(&i) => histories[i].records.push(r),
            None => {
                unknown.insert(inp.to_string());
            }
        }
    }

    let (mut restored, mut skipped, mut failed) = (0, 0, 0);
    let mut failures = Vec::new();
    let mut missing = Vec::new();
    let mut recovered = Vec::new();
    let mut twice = Vec::new();
    let mut merged = String::new();
    for (it, h) in items.iter().zip(&histories) {
        let name = it.path.display().to_string();
        let Some((status, rec)) = h.decide() else {
            missing.push(name);
            continue;
        };
        match status {
            Status::Restored => restored += 1,
            Status::Skipped => skipped += 1,
            Status::Failed => {
                failed += 1;
                failures.push(json!({"input": name, "error": rec.rec.error}));
            }
        }
        if status != Status::Failed && h.count(Status::Failed) > 0 {
            recovered.push(name.clone());
        }
        let times = h.count(Status::Restored);
        if times > 1 {
            twice.push(json!({"input": name, "times": times}));
        }
        merged.push_str(&serde_json::to_string(&rec.rec).expect("record serializes"));
        merged.push('\n');
    }
    let complete = failed == 0 && missing.is_empty();
    let audit = json!({
        "input": input.display().to_string(),
        "output": output.display().to_string(),
        "manifests": manifests.iter().map(|m| m.display().to_string()).collect::<Vec<_>>(),
        "records": records.len(),
        "inputs": items.len(),
        "restored": restored,
        "skipped": skipped,
        "failed": failed,
        "missing": missing.len(),
        "complete": complete,
        "failures": failures,
        "missing_inputs": missing,
        "recovered": recovered,
        "restored_more_than_once": twice,
        "unknown_inputs": unknown.iter().collect::<Vec<_>>(),
        "spec_hashes": hashes.iter().collect::<Vec<_>>(),
    });

    if let Some(p) = &args.out {
        conjure::imageio::write_atomic(p, merged.as_bytes())?;
    }
    if let Some(p) = &args.json {
        let text = serde_json::to_string_pretty(&audit).expect("json value") + "\n";
        conjure::imageio::write_atomic(p, text.as_bytes())?;
    }

    if !args.quiet {
        println!(
            "{} inputs under {}, {} records in {} manifests",
            items.len(),
            input.display(),
            records.len(),
            manifests.len()
        );
        println!(
            "restored {restored}, skipped {skipped}, failed {failed}, missing {}",
            missing.len()
        );
        if !recovered.is_empty() {
            println!("recovered on a retry: {}", recovered.len());
        }
    }
    if !twice.is_empty() {
        eprintln!(
            "conjure: warning: {} inputs were restored more than once (expected only after --overwrite)",
            twice.len()
        );
    }
    if !unknown.is_empty() {
        eprintln!(
            "conjure: warning: {} records name inputs that are not under {} (first: {})",
            unknown.len(),
            input.display(),
            unknown.iter().next().expect("not empty")
        );
    }
    if hashes.len() > 1 {
        eprintln!(
            "conjure: warning: the records carry {} different spec hashes; the shards did not all run the same settings",
            hashes.len()
        );
    }
    for f in &failures {
        eprintln!(
            "  failed {}: {}",
            f["input"].as_str().unwrap_or(""),
            f["error"].as_str().unwrap_or("")
        );
    }
    for m in audit["missing_inputs"].as_array().expect("array") {
        eprintln!("  missing {}", m.as_str().unwrap_or(""));
    }
    Ok(if complete {
        EXIT_OK
    } else {
        EXIT_FAILED_INPUTS
    })
}
