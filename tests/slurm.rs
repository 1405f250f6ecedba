//! Sharded runs on a live single-node Slurm cluster (issue 5).
//!
//! `live_slurm_array_restores_every_input_once_and_resumes_a_failed_task` installs Slurm from apt when it
//! is absent (`slurmctld slurmd slurm-client munge`), configures a private single-node cluster on
//! localhost in a temporary folder (its own munge key and socket, free ports, `proctrack/linuxproc`,
//! `task/none`, no cgroups, no accounting; docs/design.md §5), starts munged, slurmctld and slurmd, and submits
//! `examples/slurm/restore-array.sbatch` as `sbatch --array=0-3 --wait` over the eight examples/sr4
//! measurements plus one corrupt file. It asserts that the array's exit status is the failed task's (1),
//! that `conjure manifest merge` reports exactly that input failed and nothing missing; then it repairs the
//! file and resubmits only the failed task (`--array=0`), which must resume: its finished images are
//! skipped (manifest, and their files untouched), the repaired one restored. At the end every input was
//! restored exactly once over all manifests, the merged manifest is complete, and the outputs are
//! byte-identical to a one-process run. The cluster is stopped in order: scancel, wait for the queue,
//! `scontrol shutdown`, munge last (also when an assertion fails).
//!
//! It needs root (the daemons) and Slurm or apt-get; without them it prints a notice and passes, unless
//! `CONJURE_REQUIRE_SLURM=1` (CI) makes that a failure.

mod common;
use common::cli;

use cli::{bin, root};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Run a command to completion (None when it cannot be started).
fn try_cmd(prog: &str, args: &[&str], env: &[(&str, &str)]) -> Option<Output> {
    Command::new(prog)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .ok()
}

fn found(prog: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| d.join(prog).is_file())
            || ["/usr/sbin", "/sbin"]
                .iter()
                .any(|d| Path::new(d).join(prog).is_file())
    })
}

const DAEMONS: [&str; 5] = ["munged", "slurmctld", "slurmd", "sbatch", "scontrol"];

/// Make Slurm available; `Err(reason)` when it cannot be.
fn ensure_slurm() -> Result<(), String> {
    if DAEMONS.iter().all(|d| found(d)) {
        let uid = try_cmd("id", &["-u"], &[]).map(|o| text(&o).trim().to_string());
        return if uid.as_deref() == Some("0") {
            Ok(())
        } else {
            Err("the Slurm and munge daemons need root".into())
        };
    }
    let uid = try_cmd("id", &["-u"], &[]).map(|o| text(&o).trim().to_string());
    if uid.as_deref() != Some("0") {
        return Err("Slurm is not installed and installing it needs root".into());
    }
    if !found("apt-get") {
        return Err("Slurm is not installed and there is no apt-get to install it".into());
    }
    eprintln!("slurm test: installing slurmctld slurmd slurm-client munge from apt");
    let install = || {
        try_cmd(
            "apt-get",
            &[
                "install",
                "-y",
                "-q",
                "slurmctld",
                "slurmd",
                "slurm-client",
                "munge",
            ],
            &[("DEBIAN_FRONTEND", "noninteractive")],
        )
    };
    let mut o = install();
    if !o.as_ref().is_some_and(|o| o.status.success()) {
        let _ = try_cmd("apt-get", &["update", "-q"], &[]);
        o = install();
    }
    match o {
        Some(o) if o.status.success() && DAEMONS.iter().all(|d| found(d)) => Ok(()),
        Some(o) => Err(format!("apt-get install failed: {}", text(&o))),
        None => Err("apt-get could not be started".into()),
    }
}

/// A private single-node cluster; stopped in order when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    conf: PathBuf,
    socket: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn start() -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("conjure-slurm-")
            .tempdir()
            .unwrap();
        let d = dir.path().to_path_buf();
        for sub in ["munge", "state", "spool", "log"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let key = d.join("munge/munge.key");
        let mut bytes = vec![0u8; 1024];
        use std::io::Read;
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut bytes)
            .unwrap();
        std::fs::write(&key, bytes).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let socket = d.join("munge/munge.socket");
        let conf = d.join("slurm.conf");
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .max(4);
        let (ctld, slurmd) = (free_port(), free_port());
        let p = |s: &str| d.join(s).display().to_string();
        std::fs::write(
            &conf,
            format!(
                "ClusterName=conjuretest\n\
                 SlurmctldHost=localhost\n\
                 SlurmctldPort={ctld}\n\
                 SlurmdPort={slurmd}\n\
                 SlurmUser=root\n\
                 SlurmdUser=root\n\
                 AuthType=auth/munge\n\
                 CredType=cred/munge\n\
                 AuthInfo=socket={sock}\n\
                 StateSaveLocation={state}\n\
                 SlurmdSpoolDir={spool}\n\
                 SlurmctldPidFile={ctldpid}\n\
                 SlurmdPidFile={dpid}\n\
                 SlurmctldLogFile={ctldlog}\n\
                 SlurmdLogFile={dlog}\n\
                 ProctrackType=proctrack/linuxproc\n\
                 TaskPlugin=task/none\n\
                 JobAcctGatherType=jobacct_gather/none\n\
                 AccountingStorageType=accounting_storage/none\n\
                 SchedulerType=sched/builtin\n\
                 SelectType=select/cons_tres\n\
                 SelectTypeParameters=CR_Core\n\
                 SlurmdParameters=config_overrides\n\
                 ReturnToService=2\n\
                 MpiDefault=none\n\
                 NodeName=localhost NodeHostname=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=2000 State=UNKNOWN\n\
                 PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP\n",
                sock = socket.display(),
                state = p("state"),
                spool = p("spool"),
                ctldpid = p("slurmctld.pid"),
                dpid = p("slurmd.pid"),
                ctldlog = p("log/slurmctld.log"),
                dlog = p("log/slurmd.log"),
            ),
        )
        .unwrap();
        let cluster = Cluster { dir, conf, socket };
        let sock = cluster.socket.display().to_string();
        let must = |prog: &str, args: &[&str]| {
            let o = try_cmd(prog, args, &[]).unwrap_or_else(|| panic!("cannot start {prog}"));
            assert!(o.status.success(), "{prog} {args:?}: {}", text(&o));
        };
        must(
            "munged",
            &[
                "--force",
                "-S",
                &sock,
                &format!("--key-file={}", key.display()),
                &format!("--log-file={}", p("munge/munged.log")),
                &format!("--pid-file={}", p("munge/munged.pid")),
                &format!("--seed-file={}", p("munge/munged.seed")),
            ],
        );
        let conf = cluster.conf.display().to_string();
        must("slurmctld", &["-f", &conf]);
        must("slurmd", &["-f", &conf, "-N", "localhost"]);
        let t0 = Instant::now();
        loop {
            let o = cluster.cmd("sinfo", &["-h", "-n", "localhost", "-o", "%T"]);
            if text(&o).trim() == "idle" {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "the node did not become idle: {}\n{}",
                text(&o),
                cluster.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        cluster
    }

    fn cmd(&self, prog: &str, args: &[&str]) -> Output {
        try_cmd(prog, args, &[("SLURM_CONF", self.conf.to_str().unwrap())])
            .unwrap_or_else(|| panic!("cannot start {prog}"))
    }

    fn logs(&self) -> String {
        ["log/slurmctld.log", "log/slurmd.log"]
            .iter()
            .map(|l| {
                let t = std::fs::read_to_string(self.dir.path().join(l)).unwrap_or_default();
                let tail: Vec<&str> = t.lines().rev().take(20).collect();
                format!(
                    "--- {l}\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn pid(&self, file: &str) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(file))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// Wait (up to `secs`) until `cond` holds.
    fn wait(secs: u64, cond: impl Fn() -> bool) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        cond()
    }
}

impl Drop for Cluster {
    /// scancel, wait for the queue to drain, `scontrol shutdown` (slurmctld and slurmd), munge last.
    fn drop(&mut self) {
        let queue = || {
            text(&self.cmd("squeue", &["-h", "-o", "%i"]))
                .trim()
                .to_string()
        };
        let jobs = queue();
        for j in jobs.split_whitespace() {
            let _ = self.cmd("scancel", &[j]);
        }
        if !Cluster::wait(30, || queue().is_empty()) {
            eprintln!("slurm test: the queue did not drain: {}", queue());
        }
        let _ = self.cmd("scontrol", &["shutdown"]);
        for f in ["slurmctld.pid", "slurmd.pid"] {
            if let Some(pid) = self.pid(f) {
                let gone = Cluster::wait(30, || !Path::new("/proc").join(&pid).exists());
                if !gone {
                    eprintln!("slurm test: {f} {pid} still running; terminating it");
                    let _ = try_cmd("kill", &[&pid], &[]);
                }
            }
        }
        let _ = try_cmd(
            "munged",
            &["-s", "-S", self.socket.to_str().unwrap_or_default()],
            &[],
        );
    }
}

fn jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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

fn mtimes(dir: &Path) -> HashMap<PathBuf, SystemTime> {
    outputs(dir)
        .into_iter()
        .map(|(rel, _)| {
            let t = std::fs::metadata(dir.join(&rel))
                .unwrap()
                .modified()
                .unwrap();
            (rel, t)
        })
        .collect()
}

const RUN_ARGS: &str = "--set runtime.engine=tract --set sampler.steps=2";

/// `conjure manifest merge`: (exit code, audit, merged manifest).
fn merge(
    spec: &Path,
    input: &Path,
    output: &Path,
    work: &Path,
) -> (Option<i32>, Value, Vec<Value>) {
    let (audit, merged) = (work.join("audit.json"), work.join("merged.jsonl"));
    let o = Command::new(bin())
        .arg("manifest")
        .arg("merge")
        .arg(spec)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .arg("--json")
        .arg(&audit)
        .arg("--out")
        .arg(&merged)
        .output()
        .unwrap();
    let a = std::fs::read_to_string(&audit).unwrap_or_else(|e| panic!("{e}: {}", text(&o)));
    (
        o.status.code(),
        serde_json::from_str(&a).unwrap(),
        jsonl(&merged),
    )
}

fn name(v: &Value) -> String {
    Path::new(v.as_str().unwrap())
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn live_slurm_array_restores_every_input_once_and_resumes_a_failed_task() {
    let require = std::env::var("CONJURE_REQUIRE_SLURM").is_ok_and(|v| v == "1");
    if let Err(why) = ensure_slurm() {
        assert!(!require, "CONJURE_REQUIRE_SLURM=1 but: {why}");
        eprintln!(
            "SKIPPED live Slurm test: {why} (set CONJURE_REQUIRE_SLURM=1 to make this a failure)"
        );
        return;
    }
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let spec = root().join("pipelines/sr4-c-pigdm.yaml");
    let sbatch_file = root().join("examples/slurm/restore-array.sbatch");

    // The eight examples/sr4 measurements plus a corrupt one, sorted last: position 8 ≡ 0 (mod 4).
    let input = w.join("in");
    std::fs::create_dir_all(&input).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(root().join("examples/sr4"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".png"))
        .collect();
    names.sort();
    for n in &names {
        std::fs::copy(root().join("examples/sr4").join(n), input.join(n)).unwrap();
    }
    std::fs::write(
        input.join("zz-broken.png"),
        b"\x89PNG\r\n\x1a\nnot an image",
    )
    .unwrap();
    names.push("zz-broken.png".into());
    let output = w.join("restored");

    let submit = |array: &str| -> Output {
        let o = Command::new("sbatch")
            .env("SLURM_CONF", &cluster.conf)
            .env("CONJURE", bin())
            .env("SPEC", &spec)
            .env("INPUT", &input)
            .env("OUTPUT", &output)
            .env("CONJURE_SHARDS", "4")
            .env("CONJURE_ARGS", RUN_ARGS)
            .env_remove("RUST_LOG")
            .arg("--wait")
            .arg(format!("--array={array}"))
            // The example asks for a GPU, 8 CPUs and 16 GB; this node has none of that.
            .args(["--gres=none", "--cpus-per-task=1", "--mem=200M"])
            .arg(format!("--chdir={}", w.display()))
            .arg(format!("--output={}/task-%a.log", w.display()))
            .arg(&sbatch_file)
            .output()
            .unwrap();
        o
    };
    let task_logs = || {
        (0..4)
            .map(|i| std::fs::read_to_string(w.join(format!("task-{i}.log"))).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    };

    // 1. The array: three tasks succeed, task 0 meets the corrupt file; sbatch --wait returns the worst.
    let o = submit("0-3");
    assert_eq!(
        o.status.code(),
        Some(1),
        "sbatch: {}\n{}\n{}",
        text(&o),
        task_logs(),
        cluster.logs()
    );
    for i in 0..4 {
        assert!(
            output
                .join(format!("conjure-manifest.shard-{i}-of-4.jsonl"))
                .is_file(),
            "task {i} wrote no manifest: {}",
            task_logs()
        );
    }
    let (code, audit, _) = merge(&spec, &input, &output, w);
    assert_eq!(code, Some(1), "{audit}");
    assert_eq!(audit["inputs"], names.len());
    assert_eq!(audit["restored"], names.len() - 1);
    assert_eq!(audit["failed"], 1);
    assert_eq!(audit["missing"], 0);
    assert_eq!(name(&audit["failures"][0]["input"]), "zz-broken.png");
    let first = mtimes(&output);
    assert_eq!(first.len(), names.len() - 1);

    // 2. Repair the input and resubmit only the failed task: it resumes.
    std::fs::copy(input.join(&names[0]), input.join("zz-broken.png")).unwrap();
    let o = submit("0");
    assert_eq!(
        o.status.code(),
        Some(0),
        "sbatch: {}\n{}\n{}",
        text(&o),
        task_logs(),
        cluster.logs()
    );
    let shard0 = jsonl(&output.join("conjure-manifest.shard-0-of-4.jsonl"));
    let retry: Vec<(String, &str)> = shard0[3..]
        .iter()
        .map(|r| (name(&r["input"]), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        retry,
        vec![
            (names[0].clone(), "skipped"),
            (names[4].clone(), "skipped"),
            ("zz-broken.png".to_string(), "restored"),
        ]
    );
    let second = mtimes(&output);
    for (rel, t) in &first {
        assert_eq!(second[rel], *t, "{} was rewritten", rel.display());
    }

    // Every input restored exactly once over all manifests of the job.
    let mut restored: HashMap<String, usize> = HashMap::new();
    for i in 0..4 {
        for r in jsonl(&output.join(format!("conjure-manifest.shard-{i}-of-4.jsonl"))) {
            if r["status"] == "restored" {
                *restored.entry(name(&r["input"])).or_default() += 1;
            }
        }
    }
    for n in &names {
        assert_eq!(
            restored.get(n),
            Some(&1),
            "{n} restored {:?} times",
            restored.get(n)
        );
    }
    assert_eq!(restored.len(), names.len());

    let (code, audit, merged) = merge(&spec, &input, &output, w);
    assert_eq!(code, Some(0), "{audit}");
    assert_eq!(audit["complete"], true);
    assert_eq!(audit["restored"], names.len());
    assert_eq!(audit["failed"], 0);
    assert_eq!(audit["missing"], 0);
    assert_eq!(audit["recovered"].as_array().unwrap().len(), 1);
    assert_eq!(audit["restored_more_than_once"], serde_json::json!([]));
    let merged_names: Vec<String> = merged.iter().map(|r| name(&r["input"])).collect();
    assert_eq!(merged_names, names);
    assert!(merged.iter().all(|r| r["status"] == "restored"));

    // Byte-identical to one process over the same (repaired) inputs.
    let full = w.join("full");
    let mut c = Command::new(bin());
    c.arg("run")
        .arg(&spec)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&full)
        .arg("--quiet")
        .args(RUN_ARGS.split(' '));
    for v in [
        "SLURM_ARRAY_TASK_ID",
        "JOB_COMPLETION_INDEX",
        "CONJURE_SHARD_COUNT",
    ] {
        c.env_remove(v);
    }
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(outputs(&full).len(), names.len());
    assert!(outputs(&output) == outputs(&full), "sharded outputs differ");
    drop(cluster);
}

/// The `--array` size and the default CONJURE_SHARDS of the example agree (no cluster needed).
#[test]
fn the_sbatch_example_shard_count_matches_its_array() {
    let text = std::fs::read_to_string(root().join("examples/slurm/restore-array.sbatch")).unwrap();
    let array = text
        .lines()
        .find_map(|l| l.strip_prefix("#SBATCH --array="))
        .expect("an #SBATCH --array line");
    let range = array.split_whitespace().next().unwrap();
    let range = range.split('%').next().unwrap();
    let (lo, hi) = range.split_once('-').expect("MIN-MAX");
    let (lo, hi): (usize, usize) = (lo.parse().unwrap(), hi.parse().unwrap());
    assert_eq!(lo, 0, "shard indices start at 0");
    let shards: usize = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("CONJURE_SHARDS=\"${CONJURE_SHARDS:-"))
        .and_then(|r| r.split('}').next())
        .expect("CONJURE_SHARDS default")
        .parse()
        .unwrap();
    assert_eq!(hi - lo + 1, shards);
    assert!(text.contains("--shard \"$SLURM_ARRAY_TASK_ID/$CONJURE_SHARDS\""));
    assert!(text.lines().any(|l| l.starts_with("#SBATCH --gres=gpu:")));
    assert!(text.starts_with("#!/bin/bash\n"));
}
