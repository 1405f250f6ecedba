//! The Kubernetes Indexed Job path without a cluster: the shards run as the pods would (concurrently, the
//! shard taken from `JOB_COMPLETION_INDEX` + `CONJURE_SHARD_COUNT`, one output folder), their outputs are
//! byte-identical to a one-process run and `conjure manifest merge` audits the job; inconsistent shard
//! variables are usage errors; and `examples/kubernetes/indexed-job.yaml` passes a kubectl-free schema
//! check (parsed as YAML, the fields an Indexed Job of conjure shards needs checked against each other).

mod common;
use common::cli;

use cli::{bin, root, stderr};

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const SHARD_VARS: [&str; 7] = [
    "SLURM_ARRAY_TASK_ID",
    "SLURM_ARRAY_TASK_MIN",
    "SLURM_ARRAY_TASK_COUNT",
    "SLURM_ARRAY_TASK_STEP",
    "JOB_COMPLETION_INDEX",
    "CONJURE_SHARD_COUNT",
    "RUST_LOG",
];

/// `conjure <args>` with the embedded engine, two sampler steps, and no shard variables but `env`.
fn conjure<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, String)]) -> Command {
    let mut c = Command::new(bin());
    for v in SHARD_VARS {
        c.env_remove(v);
    }
    c.args(args);
    c.envs(env.iter().map(|(k, v)| (k, v.as_str())));
    c
}

fn spec() -> PathBuf {
    root().join("pipelines/sr4-c-pigdm.yaml")
}

fn run_args(input: &str, output: &str) -> Vec<String> {
    [
        "run",
        spec().to_str().unwrap(),
        "--input",
        input,
        "--output",
        output,
        "--set",
        "runtime.engine=tract",
        "--set",
        "sampler.steps=2",
        "--quiet",
    ]
    .map(String::from)
    .to_vec()
}

/// Relative path → bytes of every file under `dir` but the manifests.
fn outputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v = Vec::new();
    for e in walkdir::WalkDir::new(dir) {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy();
        if e.file_type().is_file() && !name.starts_with("conjure-manifest") {
            v.push((
                e.path().strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(e.path()).unwrap(),
            ));
        }
    }
    v.sort();
    v
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The examples/sr4 measurements copied to `dir` (sorted names: position k is the k-th file).
fn inputs(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples/sr4"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    for n in &names {
        std::fs::copy(root().join("examples/sr4").join(n), dir.join(n)).unwrap();
    }
    names
}

/// `conjure manifest merge` over `output`: (exit code, audit, merged manifest).
fn merge(input: &str, output: &Path) -> (Option<i32>, Value, Vec<Value>) {
    let audit = output.with_extension("audit.json");
    let merged = output.with_extension("merged.jsonl");
    let o = conjure(
        &[
            "manifest",
            "merge",
            spec().to_str().unwrap(),
            "--input",
            input,
            "--output",
            output.to_str().unwrap(),
            "--json",
            audit.to_str().unwrap(),
            "--out",
            merged.to_str().unwrap(),
        ],
        &[],
    )
    .output()
    .unwrap();
    let a: Value = serde_json::from_str(
        &std::fs::read_to_string(&audit).unwrap_or_else(|e| panic!("{e}: {}", stderr(&o))),
    )
    .unwrap();
    (o.status.code(), a, jsonl(&merged))
}

#[test]
fn indexed_job_shards_match_a_one_process_run_and_merge_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let names = inputs(&input);
    let input = input.to_str().unwrap();
    let full = tmp.path().join("full");
    let o = conjure(&run_args(input, full.to_str().unwrap()), &[])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));

    // Three pods at once (8 inputs: shards of 3, 3 and 2), one output folder.
    let n = 3;
    let out = tmp.path().join("job");
    let pods: Vec<_> = (0..n)
        .map(|i| {
            conjure(
                &run_args(input, out.to_str().unwrap()),
                &[
                    ("JOB_COMPLETION_INDEX", i.to_string()),
                    ("CONJURE_SHARD_COUNT", n.to_string()),
                ],
            )
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for p in pods {
        let o = p.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    assert_eq!(outputs(&full).len(), names.len());
    assert!(outputs(&out) == outputs(&full), "shard outputs differ");

    // Each shard wrote its own manifest, holding exactly its share of the sorted list.
    for i in 0..n {
        let m = jsonl(&out.join(format!("conjure-manifest.shard-{i}-of-{n}.jsonl")));
        let mut got: Vec<String> = m
            .iter()
            .map(|r| {
                assert_eq!(r["status"], "restored");
                Path::new(r["input"].as_str().unwrap())
                    .file_name()
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        got.sort();
        let want: Vec<String> = names.iter().skip(i).step_by(n).cloned().collect();
        assert_eq!(got, want, "shard {i}");
    }
    assert!(!out.join("conjure-manifest.jsonl").exists());

    let (code, audit, merged) = merge(input, &out);
    assert_eq!(code, Some(0), "{audit}");
    assert_eq!(audit["inputs"], names.len());
    assert_eq!(audit["restored"], names.len());
    assert_eq!(audit["complete"], true);
    assert_eq!(audit["missing"], 0);
    assert_eq!(audit["restored_more_than_once"], serde_json::json!([]));
    assert_eq!(audit["spec_hashes"].as_array().unwrap().len(), 1);
    let merged_names: Vec<String> = merged
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "restored");
            Path::new(r["input"].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert_eq!(merged_names, names, "one merged record per input, in order");

    // A retried pod (same index) resumes: nothing is redone.
    let o = conjure(
        &run_args(input, out.to_str().unwrap()),
        &[
            ("JOB_COMPLETION_INDEX", "1".into()),
            ("CONJURE_SHARD_COUNT", n.to_string()),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = jsonl(&out.join(format!("conjure-manifest.shard-1-of-{n}.jsonl")));
    assert_eq!(m.len(), 3 + 3);
    assert!(m[3..].iter().all(|r| r["status"] == "skipped"));
    let (code, audit, _) = merge(input, &out);
    assert_eq!(code, Some(0));
    assert_eq!(audit["restored"], names.len());
    assert_eq!(audit["restored_more_than_once"], serde_json::json!([]));
}

#[test]
fn merge_reports_failed_and_missing_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    let names = inputs(&dir);
    // Sorted last (position 8 ≡ 0 mod 2): in shard 0.
    std::fs::write(dir.join("zz-broken.png"), b"\x89PNG\r\n\x1a\nnot an image").unwrap();
    let input = dir.to_str().unwrap();
    let out = tmp.path().join("job");
    let o = conjure(
        &run_args(input, out.to_str().unwrap()),
        &[
            ("JOB_COMPLETION_INDEX", "0".into()),
            ("CONJURE_SHARD_COUNT", "2".into()),
        ],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    // Shard 1 never ran.
    let (code, audit, merged) = merge(input, &out);
    assert_eq!(code, Some(1));
    assert_eq!(audit["complete"], false);
    assert_eq!(audit["inputs"], names.len() + 1);
    assert_eq!(audit["restored"], 4);
    assert_eq!(audit["failed"], 1);
    let failure = &audit["failures"][0];
    assert!(failure["input"]
        .as_str()
        .unwrap()
        .ends_with("zz-broken.png"));
    assert!(!failure["error"].as_str().unwrap().is_empty());
    let missing: Vec<String> = audit["missing_inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            Path::new(m.as_str().unwrap())
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let want: Vec<String> = names.iter().skip(1).step_by(2).cloned().collect();
    assert_eq!(missing, want);
    assert_eq!(merged.len(), 5);

    // The fixed input restored on a retry of shard 0, then shard 1: complete, the fix counted recovered.
    std::fs::copy(
        root().join("examples/sr4").join(&names[0]),
        dir.join("zz-broken.png"),
    )
    .unwrap();
    for i in 0..2 {
        let o = conjure(
            &run_args(input, out.to_str().unwrap()),
            &[
                ("JOB_COMPLETION_INDEX", i.to_string()),
                ("CONJURE_SHARD_COUNT", "2".into()),
            ],
        )
        .output()
        .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let (code, audit, _) = merge(input, &out);
    assert_eq!(code, Some(0), "{audit}");
    assert_eq!(audit["restored"], names.len() + 1);
    assert_eq!(audit["recovered"].as_array().unwrap().len(), 1);
    assert_eq!(audit["restored_more_than_once"], serde_json::json!([]));
}

#[test]
fn inconsistent_shard_variables_are_usage_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let input = root().join("examples/sr4");
    let out = tmp.path().join("out");
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("JOB_COMPLETION_INDEX", "0")], "CONJURE_SHARD_COUNT"),
        (&[("CONJURE_SHARD_COUNT", "4")], "JOB_COMPLETION_INDEX"),
        (
            &[("JOB_COMPLETION_INDEX", "4"), ("CONJURE_SHARD_COUNT", "4")],
            "4/4",
        ),
        (
            &[("JOB_COMPLETION_INDEX", "0"), ("CONJURE_SHARD_COUNT", "0")],
            "0/0",
        ),
        (&[("SLURM_ARRAY_TASK_ID", "2")], "SLURM_ARRAY_TASK_COUNT"),
        (
            &[("CONJURE_SHARD_COUNT", "x"), ("JOB_COMPLETION_INDEX", "1")],
            "CONJURE_SHARD_COUNT",
        ),
    ];
    for (env, needle) in cases {
        let env: Vec<(&str, String)> = env.iter().map(|(k, v)| (*k, v.to_string())).collect();
        let o = conjure(
            &run_args(input.to_str().unwrap(), out.to_str().unwrap()),
            &env,
        )
        .output()
        .unwrap();
        assert_eq!(o.status.code(), Some(2), "{env:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(needle), "{env:?}: {}", stderr(&o));
    }
    let o = conjure(
        &[
            run_args(input.to_str().unwrap(), out.to_str().unwrap()),
            vec!["--shard".into(), "0/0".into()],
        ]
        .concat(),
        &[],
    )
    .output()
    .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("invalid shard 0/0"), "{}", stderr(&o));
    assert!(!out.exists(), "nothing may run on a usage error");
}

/// `path` in a JSON value, e.g. `spec.template.spec`.
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| &v[k])
}

#[test]
fn the_indexed_job_example_is_a_consistent_indexed_job() {
    let text =
        std::fs::read_to_string(root().join("examples/kubernetes/indexed-job.yaml")).unwrap();
    let job: Value = serde_saphyr::from_str(&text).expect("valid yaml");
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    assert!(at(&job, "metadata.name").as_str().is_some_and(|n| {
        !n.is_empty()
            && n.len() <= 63
            && n.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    }));
    let spec = &job["spec"];
    assert_eq!(spec["completionMode"], "Indexed");
    let completions = spec["completions"].as_u64().expect("completions");
    let parallelism = spec["parallelism"].as_u64().expect("parallelism");
    assert!(completions >= 1 && (1..=completions).contains(&parallelism));
    // Retries per index (each shard resumes on its own), not one budget for the whole job.
    assert!(spec["backoffLimitPerIndex"]
        .as_u64()
        .is_some_and(|b| b >= 1));
    let pod = at(&job, "spec.template.spec");
    assert_eq!(pod["restartPolicy"], "Never");
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let command: Vec<&str> = c["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|s| s.as_str().expect("string"))
        .collect();
    assert_eq!(&command[..2], ["conjure", "run"]);
    assert!(
        !command.contains(&"--shard"),
        "the shard must come from JOB_COMPLETION_INDEX"
    );
    let env = c["env"].as_array().expect("env");
    let count = env
        .iter()
        .find(|e| e["name"] == "CONJURE_SHARD_COUNT")
        .and_then(|e| e["value"].as_str())
        .expect("CONJURE_SHARD_COUNT");
    assert_eq!(count.parse::<u64>().unwrap(), completions);
    assert!(!env.iter().any(|e| e["name"] == "JOB_COMPLETION_INDEX"));
    for side in ["limits", "requests"] {
        let gpus = at(c, &format!("resources.{side}"))["nvidia.com/gpu"].as_u64();
        assert_eq!(gpus, Some(1), "one GPU per shard ({side})");
    }
    // Exit 1 (some inputs failed) is not retried, exit 2 (nothing can run) fails the job.
    let rules = at(&job, "spec.podFailurePolicy.rules")
        .as_array()
        .expect("rules");
    let action = |code: u64| {
        rules
            .iter()
            .find(|r| {
                r["onExitCodes"]["values"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|x| x.as_u64() == Some(code)))
            })
            .map(|r| r["action"].as_str().unwrap())
    };
    assert_eq!(action(1), Some("FailIndex"));
    assert_eq!(action(2), Some("FailJob"));
    for r in rules {
        if let Some(name) = r["onExitCodes"]["containerName"].as_str() {
            assert_eq!(name, c["name"].as_str().unwrap());
        }
    }
    // Every mount has a volume.
    let volumes: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for m in c["volumeMounts"].as_array().unwrap() {
        assert!(volumes.contains(&m["name"].as_str().unwrap()), "{m}");
    }
}
