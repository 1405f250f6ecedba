//! The run manifest (docs/cli.md): one JSON line per input with its status, seed, NFE, engine, seconds and
//! the spec and settings hashes. [`ManifestRecord`] is the one typed record written by `run` and read back
//! by resuming, `conjure manifest merge` and `conjure bench`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use super::plan::Job;
use super::progress::Tracker;
use super::{RunSummary, Shard};
use crate::error::{Error, Result};

/// What happened to an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Restored,
    Skipped,
    Failed,
}

impl Status {
    /// The name written in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Restored => "restored",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of the manifest (docs/cli.md). Fields after `status` default when a line read back lacks them
/// (records of older versions).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestRecord {
    pub input: String,
    #[serde(default)]
    pub output: String,
    pub status: Status,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub seed: u64,
    /// Network evaluations per image (forwards + VJPs, finite-difference forwards included).
    #[serde(default)]
    pub nfe: usize,
    /// Engine and provider that ran the network.
    #[serde(default)]
    pub engine: String,
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub spec_hash: String,
    /// [`PipelineSpec::settings_hash`]: the settings that decide the output's bytes. A rerun that would
    /// skip this output with other settings is refused. `None` only in records written before it existed.
    ///
    /// [`PipelineSpec::settings_hash`]: crate::spec::PipelineSpec::settings_hash
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_hash: Option<String>,
    /// Unix time (seconds) the record was written.
    #[serde(default)]
    pub finished_at: u64,
}

/// The records of a manifest's text, in order, with their 1-based line numbers; blank lines are skipped
/// and a line that is not a record is returned as its parse error.
pub fn parse(text: &str) -> impl Iterator<Item = (usize, serde_json::Result<ManifestRecord>)> + '_ {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, serde_json::from_str(l)))
}

/// Read a manifest file ([`parse`]).
pub fn read(path: &Path) -> Result<Vec<(usize, serde_json::Result<ManifestRecord>)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    Ok(parse(&text).collect())
}

/// The manifest a run writes when no `--manifest` is given: `<output>/conjure-manifest.jsonl`, or for a
/// shard `<output>/conjure-manifest.shard-I-of-N.jsonl`, so shards sharing an output folder never write
/// one file (`conjure manifest merge` reads them all back as one audit).
pub fn default_manifest(output: &Path, shard: Option<Shard>) -> PathBuf {
    match shard {
        None => output.join("conjure-manifest.jsonl"),
        Some(s) => output.join(format!(
            "conjure-manifest.shard-{}-of-{}.jsonl",
            s.index, s.count
        )),
    }
}

/// Whether `name` is the file name of a manifest `run` writes by default (`conjure-manifest*.jsonl`).
pub fn is_manifest_name(name: &str) -> bool {
    name.starts_with("conjure-manifest") && name.ends_with(".jsonl")
}

/// The append-only JSONL manifest. Each record is one `write` of a whole line to a file opened with
/// `O_APPEND`, under an exclusive advisory lock held for that write only, so even processes that were
/// given one `--manifest` never interleave lines (by default every shard has its own file, see
/// [`default_manifest`]).
pub(crate) struct Manifest {
    file: Mutex<std::fs::File>,
    path: PathBuf,
}

impl Manifest {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        if let Some(d) = path.parent() {
            if !d.as_os_str().is_empty() {
                std::fs::create_dir_all(d).map_err(|e| Error::io(d, e))?;
            }
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Manifest {
            file: Mutex::new(file),
            path: path.to_path_buf(),
        })
    }

    pub(crate) fn append(&self, rec: &ManifestRecord) -> Result<()> {
        let mut line = serde_json::to_string(rec).expect("record serializes");
        line.push('\n');
        let mut f = self.file.lock().expect("manifest lock");
        f.lock().map_err(|e| Error::io(&self.path, e))?;
        let written = f.write_all(line.as_bytes()).and_then(|_| f.flush());
        let unlocked = f.unlock();
        written.and(unlocked).map_err(|e| Error::io(&self.path, e))
    }
}

/// What the manifest says ran the network when nothing was restored (no model was loaded).
const NO_ENGINE: &str = "none (nothing to restore)";

/// Writes the manifest record of an input and counts it in the summary and the progress.
pub(crate) struct Recorder<'a> {
    pub(crate) manifest: Manifest,
    pub(crate) tracker: Tracker,
    /// The network, asked per record (after its image ran, it knows whether it tiled); `None`: no model.
    pub(crate) network: Option<&'a dyn crate::model::Denoiser>,
    pub(crate) spec_hash: String,
    pub(crate) settings_hash: String,
}

impl Recorder<'_> {
    /// The engine named in the records: the network's, or [`NO_ENGINE`].
    pub(crate) fn engine(&self) -> String {
        self.network
            .map(|n| n.engine())
            .unwrap_or_else(|| NO_ENGINE.into())
    }

    /// Append the record of `job` and count it.
    pub(crate) fn record(
        &self,
        summary: &mut RunSummary,
        job: &Job,
        status: Status,
        error: Option<String>,
        nfe: usize,
        seconds: f64,
    ) -> Result<()> {
        let rec = ManifestRecord {
            input: job.item.path.display().to_string(),
            output: job.out.display().to_string(),
            status,
            error: error.clone(),
            seed: job.seed,
            nfe,
            engine: self.engine(),
            seconds,
            spec_hash: self.spec_hash.clone(),
            settings_hash: Some(self.settings_hash.clone()),
            finished_at: now_unix(),
        };
        self.manifest.append(&rec)?;
        self.tracker.record(&rec);
        match status {
            Status::Restored => summary.restored += 1,
            Status::Skipped => summary.skipped += 1,
            Status::Failed => {
                summary.failed += 1;
                summary
                    .failures
                    .push((job.item.path.clone(), error.unwrap_or_default()));
            }
        }
        Ok(())
    }
}

/// Unix time in seconds.
fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Status, settings: Option<&str>) -> ManifestRecord {
        ManifestRecord {
            input: "in/a.png".into(),
            output: "out/a.png".into(),
            status,
            error: None,
            seed: 7,
            nfe: 10,
            engine: "tract/cpu".into(),
            seconds: 0.125,
            spec_hash: "abc".into(),
            settings_hash: settings.map(str::to_owned),
            finished_at: 1_700_000_000,
        }
    }

    #[test]
    fn a_record_is_written_as_the_documented_line_and_read_back() {
        let r = record(Status::Restored, Some("def"));
        let line = serde_json::to_string(&r).unwrap();
        // The field order and spelling of every manifest written so far.
        assert_eq!(
            line,
            r#"{"input":"in/a.png","output":"out/a.png","status":"restored","error":null,"seed":7,"nfe":10,"engine":"tract/cpu","seconds":0.125,"spec_hash":"abc","settings_hash":"def","finished_at":1700000000}"#
        );
        let back: ManifestRecord = serde_json::from_str(&line).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn records_without_a_settings_hash_read_back_and_write_unchanged() {
        let old = r#"{"input":"in/a.png","output":"out/a.png","status":"skipped","error":null,"seed":7,"nfe":10,"engine":"tract/cpu","seconds":0.125,"spec_hash":"abc","finished_at":1700000000}"#;
        let r: ManifestRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r, record(Status::Skipped, None));
        assert_eq!(serde_json::to_string(&r).unwrap(), old);
    }

    #[test]
    fn parse_numbers_lines_skips_blanks_and_reports_bad_lines() {
        let good = serde_json::to_string(&record(Status::Failed, Some("x"))).unwrap();
        let text = format!("{good}\n\n{{\"input\":\"a\"}}\n{good}");
        let lines: Vec<_> = parse(&text).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].0, 1);
        assert!(lines[0].1.is_ok());
        assert_eq!(lines[1].0, 3);
        assert!(
            lines[1].1.is_err(),
            "a record without a status is not a record"
        );
        assert_eq!(lines[2].0, 4);
        assert_eq!(lines[2].1.as_ref().unwrap().status, Status::Failed);
    }
}
