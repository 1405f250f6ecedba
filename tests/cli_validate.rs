//! `conjure validate` and the CLI's error paths: exit 2 with `file:line:col`, suggestions for unknown keys,
//! `--set` overrides, usage errors — and every shipped spec validating against its model.

#[path = "common/cli.rs"]
mod cli;

use cli::{conjure, stderr};

use std::path::Path;

fn write_spec(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("spec.yaml");
    std::fs::write(&p, body).unwrap();
    p
}

const GOOD: &str =
    "model: ../models/none\ntask:\n  operator: denoise\nsampler:\n  name: c-pigdm\n  steps: 5\n";

#[test]
fn a_bad_value_exits_2_with_line_and_column() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), &GOOD.replace("steps: 5", "steps: 0"));
    for cmd in ["validate", "run"] {
        let out = conjure().arg(cmd).arg(&spec).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let e = stderr(&out);
        assert!(
            e.contains(&format!(
                "{}:6:10: invalid steps 0 (expected 1..=100000)",
                spec.display()
            )),
            "{cmd}: {e}"
        );
    }
}

#[test]
fn yaml_syntax_errors_exit_2_with_a_position() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(
        tmp.path(),
        "model: m\ntask: {operator: denoise\nsampler: x\n",
    );
    let out = conjure().arg("validate").arg(&spec).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    let after = e
        .split(&format!("{}:", spec.display()))
        .nth(1)
        .unwrap_or_else(|| panic!("{e}"));
    let mut it = after.split(':');
    assert!(it.next().unwrap().parse::<u32>().is_ok(), "{e}");
    assert!(it.next().unwrap().parse::<u32>().is_ok(), "{e}");
}

#[test]
fn unknown_keys_suggest_the_intended_one() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), &GOOD.replace("steps: 5", "stpes: 5"));
    let out = conjure().arg("validate").arg(&spec).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains(":6:3: unknown key `stpes` in `sampler`"), "{e}");
    assert!(e.contains("did you mean `steps`?"), "{e}");
}

#[test]
fn set_overrides_are_validated_and_named() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), GOOD);
    let out = conjure()
        .args(["validate"])
        .arg(&spec)
        .args(["--set", "sampler.steps=0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--set sampler.steps=0: invalid steps 0"),
        "{}",
        stderr(&out)
    );
    let out = conjure()
        .args(["validate"])
        .arg(&spec)
        .args(["--set", "sampler.guidnace=2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("did you mean `guidance`?"));
}

#[test]
fn a_missing_model_is_a_model_error() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), GOOD);
    let out = conjure().arg("validate").arg(&spec).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("models/none"), "{}", stderr(&out));
}

#[test]
fn usage_errors_exit_2() {
    let out = conjure().output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = conjure().args(["run"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let tmp = tempfile::tempdir().unwrap();
    let spec = write_spec(tmp.path(), GOOD);
    let out = conjure()
        .arg("run")
        .arg(&spec)
        .args(["--shard", "3/3"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("invalid shard 3/3"),
        "{}",
        stderr(&out)
    );
    let out = conjure().args(["--version"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn every_shipped_pipeline_validates_against_its_model() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines");
    let mut specs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    specs.sort();
    assert!(specs.len() >= 12);
    for spec in specs {
        let out = conjure().arg("validate").arg(&spec).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}: {}",
            spec.display(),
            stderr(&out)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    }
}

#[test]
fn model_inspect_shows_the_card_and_checks_the_vjp() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fmnist-ddpm");
    let out = conjure()
        .args(["model", "inspect"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(s.contains("name             fmnist-ddpm"), "{s}");
    assert!(s.contains("x[B,1,32,32]"), "{s}");
    let check = s.lines().find(|l| l.contains("vjp self-check")).unwrap();
    assert!(check.ends_with(": ok"), "{check}");
    let out = conjure()
        .args(["model", "inspect", "/nonexistent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
