//! What a run will do, from one walk of the input tree: the inputs of this shard, each with its output
//! path and seed, sorted into the ones to restore ([`Plan::todo`]), the ones whose output exists
//! ([`Plan::skipped`], with `io.skip_existing` and no `--overwrite`) and the ones that fail before any
//! model is needed ([`Plan::failed`]: unreadable parts of the tree, outputs outside the output folder,
//! two inputs with one output). The model is loaded only when `todo` is not empty.

use std::collections::HashMap;
use std::path::PathBuf;

use super::discover::{discover_tree, Discovered, InputItem};
use super::manifest::Status;
use super::output::{check_inside, output_path, resolve_io};
use super::{resume, RunOptions};
use crate::error::{Error, Result};
use crate::spec::{image_seed, PipelineSpec};

/// One input of the run: where it goes and its seed.
#[derive(Debug, Clone)]
pub struct Job {
    pub item: InputItem,
    pub out: PathBuf,
    /// [`image_seed`] of the spec's seed and the relative path.
    pub seed: u64,
}

/// The inputs of a run, sorted by what happens to them (see the module docs).
#[derive(Debug)]
pub struct Plan {
    pub input: PathBuf,
    pub output: PathBuf,
    /// The output folder, canonical: nothing is written outside it.
    pub out_root: PathBuf,
    /// To restore, in input order.
    pub todo: Vec<Job>,
    /// Outputs that exist, in input order.
    pub skipped: Vec<Job>,
    /// Failed before restoring (unreadable parts of the tree first, then inputs in input order), with why.
    pub failed: Vec<(Job, String)>,
    /// Image files of a format conjure does not read (listed by the first shard only).
    pub unsupported: Vec<PathBuf>,
    /// The inputs of this shard (unreadable parts of the tree not counted).
    pub inputs: usize,
}

impl Plan {
    /// Resolve the input and output (options over spec), create the output folder, walk the input once,
    /// keep this shard's share and sort it (see the module docs). Errors mean nothing can run: no input or
    /// output, the output is the input, the input cannot be read, or outputs this run would skip were made
    /// with other settings.
    pub fn new(spec: &PipelineSpec, opts: &RunOptions) -> Result<Plan> {
        let (input, output) = resolve_io(spec, opts)?;
        std::fs::create_dir_all(&output).map_err(|e| Error::io(&output, e))?;
        if input.canonicalize().ok() == output.canonicalize().ok() {
            return Err(Error::Config {
                message: format!(
                    "the output folder {} is the input folder; restored files would replace the inputs",
                    output.display()
                ),
            });
        }
        let Discovered {
            mut items,
            problems,
            unsupported,
        } = discover_tree(&input, Some(&output))?;
        let out_root = output.canonicalize().map_err(|e| Error::io(&output, e))?;
        if items.is_empty() {
            tracing::warn!(
                "no image files (png, tif, tiff, jpg, jpeg) under {}",
                input.display()
            );
        }
        if let Some(sh) = opts.shard {
            items.retain(|it| sh.keeps(it.index));
        }
        resume::check_settings(spec, opts, &output, &items)?;
        let inputs = items.len();
        // Parts of the input tree that could not be read fail on their own, listed by one shard only so
        // that shards sharing a manifest record each once.
        let first_shard = opts.shard.is_none_or(|sh| sh.index == 0);
        let job = |item: InputItem| Job {
            out: output_path(&output, &item.rel, spec.io.format),
            seed: image_seed(spec.seed, &item.rel),
            item,
        };
        let mut failed = Vec::new();
        if first_shard {
            for (path, e) in problems {
                let rel = path.strip_prefix(&input).unwrap_or(&path).to_path_buf();
                let item = InputItem {
                    path,
                    rel,
                    index: usize::MAX,
                };
                failed.push((job(item), e.to_string()));
            }
        }
        let (mut todo, mut skipped) = (Vec::new(), Vec::new());
        let mut seen: HashMap<PathBuf, PathBuf> = HashMap::new();
        for item in items {
            let job = job(item);
            if let Err(e) = check_inside(&out_root, &job.item.rel, &job.out) {
                failed.push((job, e.to_string()));
                continue;
            }
            if let Some(first) = seen.get(&job.out) {
                let msg = format!(
                    "output {} is also the output of {}",
                    job.out.display(),
                    first.display()
                );
                failed.push((job, msg));
                continue;
            }
            seen.insert(job.out.clone(), job.item.path.clone());
            if spec.io.skip_existing && !opts.overwrite && job.out.is_file() {
                skipped.push(job);
            } else {
                todo.push(job);
            }
        }
        Ok(Plan {
            input,
            output,
            out_root,
            todo,
            skipped,
            failed,
            unsupported: if first_shard { unsupported } else { Vec::new() },
            inputs,
        })
    }

    /// Whether anything needs the model.
    pub fn has_work(&self) -> bool {
        !self.todo.is_empty()
    }

    /// The inputs settled without restoring, in the order they are recorded: unreadable parts of the tree
    /// first, then the inputs in input order. Each with its status and error.
    pub fn settled(&self) -> Vec<(&Job, Status, Option<&str>)> {
        let mut v: Vec<(&Job, Status, Option<&str>)> = self
            .failed
            .iter()
            .map(|(j, e)| (j, Status::Failed, Some(e.as_str())))
            .chain(self.skipped.iter().map(|j| (j, Status::Skipped, None)))
            .collect();
        // Stable: tree problems (index usize::MAX) keep their order and come first.
        v.sort_by_key(|(j, ..)| (j.item.index != usize::MAX, j.item.index));
        v
    }

    /// The inputs of this run (all three lists).
    pub fn len(&self) -> usize {
        self.todo.len() + self.skipped.len() + self.failed.len()
    }

    /// No inputs at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::pipeline::Shard;

    fn spec(input: &Path, output: &Path) -> PipelineSpec {
        let text = format!(
            "version: 1\nmodel: m\ntask: {{operator: denoise}}\nsampler: {{name: pinv}}\nio: {{input: {}, output: {}}}\n",
            input.display(),
            output.display()
        );
        PipelineSpec::parse(&text, "t.yaml", Path::new("."), &[]).unwrap()
    }

    fn names(jobs: &[Job]) -> Vec<String> {
        jobs.iter()
            .map(|j| j.item.rel.display().to_string())
            .collect()
    }

    #[test]
    fn one_walk_sorts_inputs_into_todo_skipped_and_failed_in_input_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
        std::fs::create_dir_all(input.join("d")).unwrap();
        std::fs::create_dir_all(&output).unwrap();
        for n in ["a.png", "b.png", "c.png", "d/e.png", "notes.txt"] {
            std::fs::write(input.join(n), b"not decoded by the plan").unwrap();
        }
        std::fs::write(output.join("b.png"), b"done before").unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(input.join("gone.png"), input.join("broken.png")).unwrap();
        let s = spec(&input, &output);

        let plan = Plan::new(&s, &RunOptions::default()).unwrap();
        assert_eq!(names(&plan.todo), ["a.png", "c.png", "d/e.png"]);
        assert_eq!(names(&plan.skipped), ["b.png"]);
        assert_eq!(plan.inputs, 4);
        assert!(plan.has_work());
        assert_eq!(plan.todo[2].out, output.join("d/e.png"));
        assert_eq!(plan.todo[0].seed, image_seed(s.seed, Path::new("a.png")));
        #[cfg(unix)]
        {
            assert_eq!(plan.failed.len(), 1, "{:?}", plan.failed);
            assert!(plan.failed[0].1.contains("broken symbolic link"));
            // The tree's problems are recorded first, then the settled inputs in input order.
            let settled: Vec<_> = plan.settled().iter().map(|(_, st, _)| *st).collect();
            assert_eq!(settled, [Status::Failed, Status::Skipped]);
        }

        // --overwrite: nothing is skipped.
        let over = RunOptions {
            overwrite: true,
            ..Default::default()
        };
        let plan = Plan::new(&s, &over).unwrap();
        assert_eq!(names(&plan.todo), ["a.png", "b.png", "c.png", "d/e.png"]);
        assert!(plan.skipped.is_empty());

        // Shard 1/2 keeps positions 1 and 3 of the sorted list, and leaves the tree's problems to shard 0.
        let shard = RunOptions {
            shard: Some(Shard::parse("1/2").unwrap()),
            ..Default::default()
        };
        let plan = Plan::new(&s, &shard).unwrap();
        assert_eq!(names(&plan.todo), ["d/e.png"]);
        assert_eq!(names(&plan.skipped), ["b.png"]);
        assert!(plan.failed.is_empty());
        assert!(!plan.is_empty());
    }

    #[test]
    fn nothing_left_to_restore_is_a_plan_without_work() {
        let tmp = tempfile::tempdir().unwrap();
        let (input, output) = (tmp.path().join("in"), tmp.path().join("out"));
        std::fs::create_dir_all(&input).unwrap();
        std::fs::create_dir_all(&output).unwrap();
        std::fs::write(input.join("a.png"), b"x").unwrap();
        std::fs::write(output.join("a.png"), b"y").unwrap();
        let plan = Plan::new(&spec(&input, &output), &RunOptions::default()).unwrap();
        assert!(!plan.has_work());
        assert_eq!(plan.len(), 1);
    }

    #[test]
    fn the_output_folder_may_not_be_the_input_folder() {
        let tmp = tempfile::tempdir().unwrap();
        let e = Plan::new(&spec(tmp.path(), tmp.path()), &RunOptions::default()).unwrap_err();
        assert!(matches!(e, Error::Config { .. }), "{e}");
        assert!(e.to_string().contains("is the input folder"), "{e}");
    }
}
