//! `conjure validate` and the CLI's error paths: exit 2 with `file:line:col`, suggestions for unknown keys,
//! `--set` overrides, usage errors — and every shipped spec validating against its model.

mod common;
use common::cli;

use cli::{conjure, stderr};

use std::path::{Path, PathBuf};

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

/// The shipped DDPM, from a spec written into a temporary folder.
fn shipped_model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("models/fmnist-ddpm")
        .display()
        .to_string()
}

#[test]
fn a_missing_model_folder_is_the_same_error_naming_the_key_and_line_in_validate_and_run() {
    // Issue 16 item 10: validate printed a raw "No such file or directory (os error 2)", run another text.
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("in")).unwrap();
    let spec = write_spec(
        tmp.path(),
        &format!("{GOOD}io:\n  input: in\n  output: out\n"),
    );
    let mut messages = Vec::new();
    for cmd in ["validate", "run"] {
        let out = conjure().arg(cmd).arg(&spec).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let e = stderr(&out);
        assert!(
            e.contains(&format!("{}:1:8: model: the model folder", spec.display())),
            "{cmd}: {e}"
        );
        assert!(e.contains("models/none does not exist"), "{cmd}: {e}");
        assert!(!e.contains("os error"), "{cmd}: {e}");
        messages.push(e);
    }
    assert_eq!(messages[0], messages[1]);
}

#[test]
fn validate_checks_the_input_and_the_output() {
    let tmp = tempfile::tempdir().unwrap();
    let base = GOOD.replace("../models/none", &shipped_model());
    // A missing input.
    let spec = write_spec(tmp.path(), &format!("{base}io:\n  input: nowhere\n"));
    let out = conjure().arg("validate").arg(&spec).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("nowhere: input not found"),
        "{}",
        stderr(&out)
    );
    // An output that is a file: a plain message, in validate and in run.
    std::fs::create_dir(tmp.path().join("in")).unwrap();
    std::fs::write(tmp.path().join("taken"), b"x").unwrap();
    let spec = write_spec(
        tmp.path(),
        &format!("{base}io:\n  input: in\n  output: taken\n"),
    );
    for cmd in ["validate", "run"] {
        let out = conjure().arg(cmd).arg(&spec).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{cmd}");
        let e = stderr(&out);
        assert!(
            e.contains("the output is a file, not a folder"),
            "{cmd}: {e}"
        );
        assert!(!e.contains("os error"), "{cmd}: {e}");
    }
}

/// `dir/in/` with two 32x32 and one 100x60 gray images: the inputs of the estimate tests.
fn gray_inputs(dir: &Path) -> PathBuf {
    let input = dir.join("in");
    std::fs::create_dir(&input).unwrap();
    for (name, (w, h)) in [
        ("a.png", (32u32, 32u32)),
        ("b.png", (32, 32)),
        ("c.png", (100, 60)),
    ] {
        image::GrayImage::new(w, h).save(input.join(name)).unwrap();
    }
    input
}

/// A spec (text naming `../models/none`) on the shipped model, reading `in/` in batches of 4 with tract.
fn estimate_spec(dir: &Path, text: &str) -> PathBuf {
    write_spec(
        dir,
        &format!(
            "{}io:\n  input: in\n  output: out\nruntime:\n  batch_size: 4\n  engine: tract\n",
            text.replace("../models/none", &shipped_model())
        ),
    )
}

#[test]
fn validate_estimates_tiles_evaluations_and_time_per_input_size() {
    // Issue 16 item 7: before a long run, say how long.
    let tmp = tempfile::tempdir().unwrap();
    let input = gray_inputs(tmp.path());
    image::RgbImage::new(40, 40)
        .save(input.join("d.png"))
        .unwrap();
    let spec = estimate_spec(tmp.path(), GOOD);
    let out = conjure().arg("validate").arg(&spec).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    // c-pigdm, 5 steps, exact Jacobian: 5 forwards + 5 VJPs per image, as the manifest counts them.
    assert!(s.contains("NFE 10 per image: 5 forwards + 5 VJPs"), "{s}");
    // 32x32: one tile; 100x60 with 32x32 tiles overlapping by at least 8: 4 x 3 tiles; 40x40: 2 x 2.
    let line = |size: &str| {
        s.lines()
            .find(|l| l.trim_start().starts_with(size))
            .unwrap_or_else(|| panic!("no line for {size}: {s}"))
            .to_string()
    };
    assert!(
        line("32x32 (2 images): 1 tile x NFE 10").contains("about"),
        "{s}"
    );
    assert!(
        line("100x60 (1 image): 12 tiles x NFE 10 = 120").contains("about"),
        "{s}"
    );
    line("40x40 (1 image): 4 tiles");
    // A colour input through the greyscale model is named, with the model's domain.
    assert!(s.contains("warning: 1 of 4 inputs are colour"), "{s}");
    assert!(s.contains("Fashion-MNIST garments"), "{s}");
}

#[test]
fn validate_counts_the_draws_of_sampler_samples_and_the_calls_they_share() {
    // `sampler.samples: 4`: 4 × (5 forwards + 5 VJPs) per image. Two 32x32 images (one tile each) in a
    // batch of 4 are 8 problems, 2 calls per evaluation for the 10 evaluations of a draw: 20 calls for
    // the two, 10 per image (not 4 × 5 = 20 per image, as if each draw had its own calls). 100x60 is
    // 12 tiles: 48 per evaluation, 12 calls × 10 = 120 calls.
    let tmp = tempfile::tempdir().unwrap();
    gray_inputs(tmp.path());
    let spec = estimate_spec(
        tmp.path(),
        &GOOD.replace("name: c-pigdm", "name: c-pigdm\n  samples: 4"),
    );
    let out = conjure().arg("validate").arg(&spec).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("NFE 40 per image: 20 forwards + 20 VJPs, the mean of 4 draws"),
        "{s}"
    );
    assert!(
        s.contains(
            "32x32 (2 images): 1 tile x NFE 40 = 40 tile evaluations/image in 10 network calls"
        ),
        "{s}"
    );
    assert!(
        s.contains(
            "100x60 (1 image): 12 tiles x NFE 40 = 480 tile evaluations/image in 120 network calls"
        ),
        "{s}"
    );
}
