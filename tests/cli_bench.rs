//! `conjure bench` end to end: the JSON report has every field and its numbers are consistent with each
//! other (parts sum to at most the total, NFE = steps × images, network calls match the manifest's
//! evaluation count, the overhead formula), the temporary inputs/outputs are removed, and the text report
//! is printed. No timing assertions: only relations that hold whatever the machine's speed.

mod common;
use common::cli;

use cli::{bin, root};

use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;

/// Run `conjure bench` on pipelines/sr4-c-pigdm.yaml with TMPDIR = `tmp`; returns the JSON report.
fn bench(tmp: &Path, args: &[&str]) -> Value {
    bench_spec(tmp, "pipelines/sr4-c-pigdm.yaml", args)
}

fn bench_spec(tmp: &Path, spec: &str, args: &[&str]) -> Value {
    let json = tmp.join("report.json");
    let scratch = tmp.join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let out = Command::new(bin())
        .current_dir(root())
        .env_remove("RUST_LOG")
        .env("TMPDIR", &scratch)
        .arg("bench")
        .arg(spec)
        .args(args)
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The text report still goes to stdout with --json FILE.
    assert!(
        stdout.contains("overhead")
            && stdout.contains("images/s")
            && stdout.contains(" forwards ("),
        "{stdout}"
    );
    // The cycled inputs and the outputs lived in a temporary folder that is gone.
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "bench left files in TMPDIR"
    );
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

fn f(v: &Value, path: &[&str]) -> f64 {
    let mut x = v;
    for k in path {
        x = &x[*k];
    }
    x.as_f64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} is not an integer in {v}"))
}

/// The relations every report satisfies.
fn check_consistent(r: &Value, images: u64, steps: u64) {
    for k in [
        "spec",
        "sampler",
        "engine",
        "provider",
        "seconds",
        "network_calls",
        "io_thread_seconds",
        "images_per_second",
        "overhead_ratio",
        "peak_rss_bytes",
        "threads",
        "batch_size",
    ] {
        assert!(!r[k].is_null(), "missing {k} in {r}");
    }
    assert_eq!(u(r, "images"), images);
    assert_eq!(u(r, "restored"), images, "{r}");
    assert_eq!(u(r, "failed"), 0);
    assert_eq!(u(r, "steps"), steps);
    assert_eq!(r["sampler"], "c-pigdm");
    // NFE as the paper counts it: steps × images.
    assert_eq!(u(r, "nfe"), steps * images);
    // C-ΠGDM with jacobian: exact runs one forward and one VJP per step and image; the manifest's count
    // (forwards + VJPs) and the timing decorator's (32×32 images are one tile each) agree.
    let calls = &r["network_calls"];
    assert_eq!(u(calls, "forward_images"), steps * images);
    assert_eq!(u(calls, "vjp_images"), steps * images);
    assert_eq!(
        u(r, "network_evaluations"),
        u(calls, "forward_images") + u(calls, "vjp_images")
    );
    let batches = images.div_ceil(u(r, "batch_size"));
    assert_eq!(u(calls, "forward_calls"), steps * batches);
    assert_eq!(u(calls, "vjp_calls"), steps * batches);

    let s = |k: &str| f(r, &["seconds", k]);
    let total = s("total");
    for k in [
        "network_forward",
        "network_vjp",
        "network",
        "sampler",
        "io",
        "idle",
        "setup",
    ] {
        assert!(s(k) >= 0.0, "{k} = {}", s(k));
        assert!(s(k).is_finite());
    }
    assert!(total > 0.0);
    let tol = 1e-9 * (1.0 + total);
    assert!((s("network") - s("network_forward") - s("network_vjp")).abs() <= tol);
    assert!(s("network_forward") > 0.0 && s("network_vjp") > 0.0);
    let parts = s("network") + s("sampler") + s("io") + s("idle");
    assert!(parts <= total + tol, "parts {parts} > total {total}");
    assert!(
        (parts - total).abs() <= 1e-6 * (1.0 + total),
        "parts {parts} vs total {total}"
    );
    assert!(s("network") + s("sampler") <= total + tol);
    let ratio = f(r, &["overhead_ratio"]);
    let want = (total - s("network")) / s("network");
    assert!(
        (ratio - want).abs() <= 1e-9 * (1.0 + want.abs()),
        "{ratio} vs {want}"
    );
    let ips = f(r, &["images_per_second"]);
    assert!((ips - images as f64 / total).abs() <= 1e-9 * (1.0 + ips));
    assert!(f(r, &["io_thread_seconds"]) >= 0.0);
    assert!(u(r, "peak_rss_bytes") > 1 << 20, "{r}");
    assert!(u(r, "threads") >= 1);
    check_step_cost(r, images);
}

/// `step_over_forward` and the fields it is made of (README, Performance; bench.rs module doc).
fn check_step_cost(r: &Value, images: u64) {
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs())),
            "{what}: {a} vs {b} in {r}"
        )
    };
    // One step per image: the run's network seconds over the paper's NFE count.
    let step = f(r, &["step_seconds_per_image"]);
    close(
        step * u(r, "nfe") as f64,
        f(r, &["seconds", "network"]),
        "step × nfe = network",
    );
    // One forward per image: the calibration's median call over its batch, the run's batch size.
    let cal = &r["forward_calibration"];
    assert_eq!(u(cal, "batch"), u(r, "batch_size").min(images), "{r}");
    let calls = u(cal, "calls");
    assert!((5..=50).contains(&calls), "{calls} calibration calls");
    let fwd = f(r, &["forward_seconds_per_image"]);
    assert!(fwd > 0.0 && fwd.is_finite());
    close(
        fwd * u(cal, "batch") as f64,
        f(cal, &["median_call_seconds"]),
        "forward × batch = median call",
    );
    close(
        f(r, &["step_over_forward"]),
        step / fwd,
        "step_over_forward",
    );
    // The calibration is not in the run's counters (they still match the manifest above) and its
    // per-kind split is the run's own.
    let calls = &r["network_calls"];
    close(
        f(r, &["run_forward_seconds_per_image"]) * u(calls, "forward_images") as f64,
        f(r, &["seconds", "network_forward"]),
        "run forward per image",
    );
    close(
        f(r, &["run_vjp_seconds_per_image"]) * u(calls, "vjp_images") as f64,
        f(r, &["seconds", "network_vjp"]),
        "run vjp per image",
    );
}

#[test]
fn analytic_bench_cycles_the_inputs_and_reports_consistent_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    // 20 images from the 8 example inputs (2½ cycles), batches of 8 (the last one short).
    let r = bench(
        tmp.path(),
        &[
            "--analytic",
            "--images",
            "20",
            "--set",
            "runtime.batch_size=8",
        ],
    );
    check_consistent(&r, 20, 5);
    assert_eq!(r["analytic"], true);
    assert_eq!(r["engine"], "analytic-gaussian");
    assert_eq!(r["provider"], "cpu");
    assert_eq!(u(&r, "batch_size"), 8);
}

#[test]
fn network_bench_reports_engine_and_consistent_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let r = bench(
        tmp.path(),
        &[
            "--images",
            "3",
            "--set",
            "sampler.steps=2",
            "--set",
            "runtime.batch_size=2",
            "--set",
            "runtime.engine=tract",
        ],
    );
    check_consistent(&r, 3, 2);
    assert_eq!(r["analytic"], false);
    assert!(r["engine"].as_str().unwrap().starts_with("tract"), "{r}");
}

#[test]
fn per_image_masks_follow_the_cycled_inputs() {
    // 10 images from the 8 inpainting examples: the second cycle must find its masks too.
    let tmp = tempfile::tempdir().unwrap();
    let r = bench_spec(
        tmp.path(),
        "pipelines/inpaint-box-c-pigdm.yaml",
        &[
            "--analytic",
            "--images",
            "10",
            "--set",
            "task.mask={kind: per-image, dir: examples/inpaint-box-masks}",
        ],
    );
    check_consistent(&r, 10, 5);
}

#[test]
fn zero_images_is_a_usage_error() {
    let out = Command::new(bin())
        .current_dir(root())
        .args(["bench", "pipelines/sr4-c-pigdm.yaml", "--images", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("images 0"));
}
