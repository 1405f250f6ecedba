//! Resuming into a folder made with other settings (issue 16): with `io.skip_existing`, outputs that
//! exist are skipped, so a rerun with a changed spec (`--set sampler.steps=10`) would keep every old
//! output and report success. Every manifest record carries the [`settings_hash`] of the run that wrote it;
//! before anything runs, the outputs this run would skip are looked up in the manifests of the output
//! folder (every shard's, `conjure-manifest*.jsonl`, and `--manifest` if given), and the run is refused
//! when one of them was last written with other settings.
//!
//! Records written before the settings hash existed carry none and are not checked.
//!
//! [`settings_hash`]: crate::spec::PipelineSpec::settings_hash

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::manifest::{self, is_manifest_name, Status};
use super::{output_path, InputItem, RunOptions};
use crate::error::{Error, Result};
use crate::spec::PipelineSpec;

/// The last restored record of an output: (finished_at, settings hash, spec hash).
type Last = (u64, String, String);

/// Refuse (a spec error, nothing run) when an output this run would skip was made with other settings.
pub fn check_settings(
    spec: &PipelineSpec,
    opts: &RunOptions,
    output: &Path,
    items: &[InputItem],
) -> Result<()> {
    if !spec.io.skip_existing || opts.overwrite {
        return Ok(());
    }
    let skipped: Vec<PathBuf> = items
        .iter()
        .map(|it| output_path(output, &it.rel, spec.io.format))
        .filter(|p| p.is_file())
        .filter_map(|p| p.canonicalize().ok())
        .collect();
    if skipped.is_empty() {
        return Ok(());
    }
    let last = last_records(&manifests(output, opts.manifest.as_deref()))?;
    let mine = spec.settings_hash();
    // Records written before the canonical settings hash carry the legacy one: same settings.
    let legacy = crate::spec::hash::legacy_settings_hash(spec);
    let stale: Vec<(&PathBuf, &Last)> = skipped
        .iter()
        .filter_map(|p| last.get(p).map(|l| (p, l)))
        .filter(|(_, (_, settings, _))| *settings != mine && *settings != legacy)
        .collect();
    let Some((first, (_, settings, spec_hash))) = stale.first() else {
        return Ok(());
    };
    Err(Error::Config {
        message: format!(
            "{n} existing output{s} in {out} (e.g. {first}) {were} made with other settings: settings hash \
             {settings} (spec hash {spec_hash}), this run's is {mine} (spec hash {this}); skipping {them} \
             would keep {them} as {they} {are}. Rerun with --overwrite to redo them with this spec, or \
             write to a new output folder (--output)",
            n = stale.len(),
            s = if stale.len() == 1 { "" } else { "s" },
            out = output.display(),
            first = first.display(),
            were = if stale.len() == 1 { "was" } else { "were" },
            them = if stale.len() == 1 { "it" } else { "them" },
            they = if stale.len() == 1 { "it" } else { "they" },
            are = if stale.len() == 1 { "is" } else { "are" },
            this = spec.hash(),
        ),
    })
}

/// The manifests of `output` (every shard's) and `extra`.
fn manifests(output: &Path, extra: Option<&Path>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(output)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(is_manifest_name)
        })
        .collect();
    if let Some(m) = extra {
        if m.is_file() && !v.iter().any(|p| p == m) {
            v.push(m.to_path_buf());
        }
    }
    // Oldest first, so that of two records of one second the one in the file written last wins.
    v.sort_by_cached_key(|p| {
        let modified = std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (modified, p.clone())
    });
    v
}

/// Per output (canonical), its last `restored` record that carries a settings hash. Later records win
/// (by `finished_at`, then by file modification time and position), so an `--overwrite` rerun
/// supersedes what it redid.
fn last_records(paths: &[PathBuf]) -> Result<HashMap<PathBuf, Last>> {
    let mut last: HashMap<PathBuf, Last> = HashMap::new();
    for path in paths {
        // A torn or foreign line says nothing about the settings; `manifest merge` reports those.
        for (_, r) in manifest::read(path)? {
            let Ok(r) = r else {
                continue;
            };
            let (Status::Restored, Some(settings)) = (r.status, r.settings_hash) else {
                continue;
            };
            let Ok(out) = Path::new(&r.output).canonicalize() else {
                continue;
            };
            let at = r.finished_at;
            let spec_hash = if r.spec_hash.is_empty() {
                "?".to_owned()
            } else {
                r.spec_hash
            };
            if last.get(&out).is_none_or(|(t, ..)| *t <= at) {
                last.insert(out, (at, settings, spec_hash));
            }
        }
    }
    Ok(last)
}
