//! `conjure degrade` + `conjure run` end to end with the shipped models and specs: every pipeline runs,
//! a corrupt input fails alone (exit 1), a killed run resumes to identical outputs, outputs do not depend
//! on batch size or thread count, 16-bit and ICC are carried.

mod common;
use common::cli;

use cli::{bin, conjure, files, root, spec, stderr};

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use conjure::imageio::{self, EncodeOptions, FileFormat, Picture};
use ndarray::Array3;

/// A Fashion-MNIST-like synthetic item: a bright blob with texture on a dark background, in [0, 1].
fn item(k: usize, h: usize, w: usize) -> Array3<f64> {
    Array3::from_shape_fn((1, h, w), |(_, i, j)| {
        let (ci, cj) = (
            h as f64 / 2.0 + (k % 3) as f64,
            w as f64 / 2.0 - (k % 4) as f64,
        );
        let r = (((i as f64 - ci) / 9.0).powi(2)
            + ((j as f64 - cj) / (6.0 + k as f64 % 5.0)).powi(2))
        .sqrt();
        if r < 1.0 {
            0.6 + 0.3 * ((i * 3 + j * (k + 1)) % 7) as f64 / 7.0
        } else {
            0.0
        }
    })
}

fn write_png(path: &Path, color: Array3<f64>, depth: u8, icc: Option<Vec<u8>>) {
    let pic = Picture {
        color,
        alpha: None,
        bit_depth: depth,
        format: FileFormat::Png,
        icc,
        exif: None,
        meta: Default::default(),
    };
    let bytes = imageio::encode(
        &pic,
        EncodeOptions {
            format: FileFormat::Png,
            bit_depth: depth,
            jpeg_quality: 95,
        },
        path,
    )
    .unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn make_clean(dir: &Path, n: usize) {
    for k in 0..n {
        let sub = if k % 2 == 0 { "" } else { "odd/" };
        write_png(
            &dir.join(format!("{sub}item{k:02}.png")),
            item(k, 32, 32),
            8,
            None,
        );
    }
}

fn degrade(spec: &Path, clean: &Path, y: &Path) {
    let out = conjure()
        .arg("degrade")
        .arg(spec)
        .arg("--input")
        .arg(clean)
        .arg("--output")
        .arg(y)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "degrade {}: {}",
        spec.display(),
        stderr(&out)
    );
}

fn run(spec: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    conjure()
        .arg("run")
        .arg(spec)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--set", "runtime.engine=tract", "--quiet"])
        .args(extra)
        .output()
        .unwrap()
}

fn manifest(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("conjure-manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

// Every shipped spec, split in two tests so that they run in parallel.
#[test]
fn every_shipped_diffusion_pipeline_degrades_and_runs() {
    degrade_and_run_specs(|name| !name.contains("pigfm") && !name.starts_with("photo-"));
}

/// The photo pipelines (RGB 64×64 prior, 128×128 held-out photos, 3×3 tiles): degrade a shipped example
/// photo, restore it with one step, and get an RGB image of the clean size back.
#[test]
fn every_photo_pipeline_degrades_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    std::fs::create_dir_all(&clean).unwrap();
    std::fs::copy(
        root().join("examples/photos/clean/coffee.png"),
        clean.join("coffee.png"),
    )
    .unwrap();
    let mut specs: Vec<_> = std::fs::read_dir(root().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| {
            p.file_stem()
                .unwrap()
                .to_string_lossy()
                .starts_with("photo-")
        })
        .collect();
    specs.sort();
    assert!(specs.len() >= 5);
    for s in specs {
        let name = s.file_stem().unwrap().to_string_lossy().into_owned();
        let y = tmp.path().join(format!("{name}-y"));
        degrade(&s, &clean, &y);
        let out = tmp.path().join(format!("{name}-out"));
        let o = run(&s, &y, &out, &["--set", "sampler.steps=1"]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let r = imageio::decode(&out.join("coffee.png")).unwrap();
        assert_eq!(r.size(), (128, 128), "{name}");
        assert_eq!(r.color.dim().0, 3, "{name}: RGB out");
        let m = manifest(&out);
        assert!(
            m[0]["engine"].as_str().unwrap().contains("tiled 64x64"),
            "{name}"
        );
    }
}

#[test]
fn every_shipped_flow_pipeline_degrades_and_runs() {
    degrade_and_run_specs(|name| name.contains("pigfm"));
}

fn degrade_and_run_specs(select: impl Fn(&str) -> bool) {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    make_clean(&clean, 1);
    let mut specs: Vec<_> = std::fs::read_dir(root().join("pipelines"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .filter(|p| select(&p.file_stem().unwrap().to_string_lossy()))
        .collect();
    specs.sort();
    assert!(specs.len() >= 6);
    for s in specs {
        let name = s.file_stem().unwrap().to_string_lossy().into_owned();
        let y = tmp.path().join(format!("{name}-y"));
        degrade(&s, &clean, &y);
        let side = if name.starts_with("sr4") { 8 } else { 32 };
        let yimg = imageio::decode(&y.join("item00.png")).unwrap();
        assert_eq!(yimg.size(), (side, side), "{name}");
        let out = tmp.path().join(format!("{name}-out"));
        let o = run(&s, &y, &out, &["--set", "sampler.steps=2"]);
        assert_eq!(o.status.code(), Some(0), "{name}: {}", stderr(&o));
        let got = files(&out);
        assert_eq!(got.len(), 1, "{name}");
        for (rel, _) in &got {
            let r = imageio::decode(&out.join(rel)).unwrap();
            assert_eq!(r.size(), (32, 32), "{name} {}", rel.display());
        }
        let m = manifest(&out);
        assert!(
            m.iter()
                .all(|r| r["status"] == "restored" && r["nfe"].as_u64().unwrap() >= 1),
            "{name}"
        );
    }
}

#[test]
fn a_corrupt_input_fails_alone_with_exit_1() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    make_clean(&clean, 3);
    let y = tmp.path().join("y");
    degrade(&spec("sr4-c-pigdm.yaml"), &clean, &y);
    std::fs::write(
        y.join("odd/broken.png"),
        b"\x89PNG\r\n\x1a\nthis is not an image",
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = run(
        &spec("sr4-c-pigdm.yaml"),
        &y,
        &out,
        &["--set", "sampler.steps=2"],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("broken.png"), "{}", stderr(&o));
    assert_eq!(files(&out).len(), 3);
    let m = manifest(&out);
    let failed: Vec<_> = m.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(failed.len(), 1);
    assert!(failed[0]["input"].as_str().unwrap().ends_with("broken.png"));
    assert!(!failed[0]["error"].as_str().unwrap().is_empty());
    assert_eq!(m.iter().filter(|r| r["status"] == "restored").count(), 3);
}

#[test]
fn outputs_do_not_depend_on_batch_size_or_threads() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    make_clean(&clean, 9);
    let y = tmp.path().join("y");
    degrade(&spec("sr4-c-pigdm.yaml"), &clean, &y);
    let mut reference = None;
    for (batch, threads) in [(1, 1), (7, 2), (16, 1), (16, 2)] {
        let out = tmp.path().join(format!("out-{batch}-{threads}"));
        let o = conjure()
            .arg("run")
            .arg(spec("sr4-c-pigdm.yaml"))
            .arg("--input")
            .arg(&y)
            .arg("--output")
            .arg(&out)
            .env("RAYON_NUM_THREADS", threads.to_string())
            .args([
                "--quiet",
                "--set",
                "runtime.engine=tract",
                "--set",
                "sampler.steps=2",
                "--set",
                &format!("runtime.batch_size={batch}"),
                "--set",
                &format!("runtime.threads={threads}"),
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let got = files(&out);
        assert_eq!(got.len(), 9);
        match &reference {
            None => reference = Some(got),
            Some(r) => assert!(
                *r == got,
                "batch {batch}, threads {threads}: outputs differ"
            ),
        }
    }
}

#[test]
fn a_killed_run_resumes_to_complete_identical_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    make_clean(&clean, 8);
    let s = spec("denoise-c-pigdm.yaml");
    let y = tmp.path().join("y");
    degrade(&s, &clean, &y);
    let args = ["--set", "sampler.steps=6", "--set", "runtime.batch_size=1"];
    let full = tmp.path().join("full");
    let o = run(&s, &y, &full, &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let reference = files(&full);
    assert_eq!(reference.len(), 8);

    let out = tmp.path().join("out");
    let mut child = std::process::Command::new(bin())
        .arg("run")
        .arg(&s)
        .arg("--input")
        .arg(&y)
        .arg("--output")
        .arg(&out)
        .args(["--quiet", "--set", "runtime.engine=tract"])
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        // Count complete outputs without reading them (files are being renamed meanwhile).
        let n = walkdir::WalkDir::new(&out)
            .into_iter()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_type().is_file()
                    && !imageio::is_temp_path(e.path())
                    && e.path().extension().is_some_and(|x| x == "png")
            })
            .count();
        if n >= 2 || t0.elapsed() > Duration::from_secs(120) {
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    let partial = files(&out)
        .into_iter()
        .filter(|(p, _)| !imageio::is_temp_path(p))
        .count();
    assert!(partial < 8, "the run finished before it could be killed");
    // Whatever the kill left (complete outputs, maybe a temporary), every complete output is correct.
    for (rel, bytes) in files(&out) {
        if !imageio::is_temp_path(&rel) {
            assert!(
                reference.contains(&(rel.clone(), bytes)),
                "{} is torn",
                rel.display()
            );
        }
    }
    let o = run(&s, &y, &out, &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        files(&out),
        reference,
        "resumed outputs differ, or temporaries remain"
    );
    let m = manifest(&out);
    let skipped = m.iter().filter(|r| r["status"] == "skipped").count();
    assert!(skipped >= partial);
}

#[test]
fn sixteen_bit_and_icc_are_carried_through_run() {
    let tmp = tempfile::tempdir().unwrap();
    let y = tmp.path().join("y");
    let icc = b"an embedded colour profile, carried byte for byte".to_vec();
    let img = item(3, 32, 32).mapv(|v| 0.1 + 0.8 * v + 1.0 / 65535.0);
    write_png(&y.join("deep.png"), img, 16, Some(icc.clone()));
    let out = tmp.path().join("out");
    let o = run(
        &spec("denoise-c-pigdm.yaml"),
        &y,
        &out,
        &["--set", "sampler.steps=2"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r = imageio::decode(&out.join("deep.png")).unwrap();
    assert_eq!(r.bit_depth, 16);
    // A rerun finds nothing to do and does not even load the model.
    let o = run(
        &spec("denoise-c-pigdm.yaml"),
        &y,
        &out,
        &["--set", "sampler.steps=2"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = manifest(&out);
    assert_eq!(m.len(), 2);
    assert_eq!(m[1]["status"], "skipped");
    assert_eq!(m[1]["engine"], "none (nothing to restore)");
    assert_eq!(r.icc, Some(icc));
    let o = run(
        &spec("denoise-c-pigdm.yaml"),
        &y,
        &tmp.path().join("out8"),
        &["--set", "sampler.steps=2", "--set", "io.bit_depth=8"],
    );
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        imageio::decode(&tmp.path().join("out8/deep.png"))
            .unwrap()
            .bit_depth,
        8
    );
}

#[test]
fn images_larger_than_the_model_are_restored_in_tiles() {
    let tmp = tempfile::tempdir().unwrap();
    let y = tmp.path().join("y");
    std::fs::create_dir_all(&y).unwrap();
    std::fs::copy(
        root().join("examples/fmnist/catalogue/page-01.png"),
        y.join("page.png"),
    )
    .unwrap();
    let out = tmp.path().join("out");
    let o = run(
        &spec("denoise-c-pigdm.yaml"),
        &y,
        &out,
        &["--set", "sampler.steps=2"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let src = imageio::decode(&y.join("page.png")).unwrap();
    let r = imageio::decode(&out.join("page.png")).unwrap();
    assert_eq!(r.size(), src.size());
    assert_eq!(src.size(), (96, 128));
    let m = manifest(&out);
    assert!(
        m[0]["engine"].as_str().unwrap().contains("tiled 32x32"),
        "{}",
        m[0]["engine"]
    );
}

#[test]
fn a_rerun_with_a_changed_spec_is_refused_with_exit_2() {
    // Issue 16 item 5: `run … --set sampler.steps=10` on a finished folder printed "restored 0, skipped
    // 12" and exited 0.
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    make_clean(&clean, 2);
    let y = tmp.path().join("y");
    degrade(&spec("sr4-c-pigdm.yaml"), &clean, &y);
    let out = tmp.path().join("out");
    let o = run(
        &spec("sr4-c-pigdm.yaml"),
        &y,
        &out,
        &["--set", "sampler.steps=2"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let before = files(&out);
    let records = std::fs::read(out.join("conjure-manifest.jsonl")).unwrap();
    let o = run(
        &spec("sr4-c-pigdm.yaml"),
        &y,
        &out,
        &["--set", "sampler.steps=3"],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("2 existing outputs"), "{e}");
    assert!(
        e.contains("--overwrite") && e.contains("new output folder"),
        "{e}"
    );
    assert_eq!(e.matches("settings hash ").count(), 1, "{e}");
    assert_eq!(files(&out), before);
    assert_eq!(
        std::fs::read(out.join("conjure-manifest.jsonl")).unwrap(),
        records
    );
    // The same settings skip; --overwrite redoes.
    let o = run(
        &spec("sr4-c-pigdm.yaml"),
        &y,
        &out,
        &["--set", "sampler.steps=2"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(
        &spec("sr4-c-pigdm.yaml"),
        &y,
        &out,
        &["--set", "sampler.steps=3", "--overwrite"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(manifest(&out).len(), 6);
}

/// How strongly `profile` repeats with `period` (from index 0, where the first tile starts): the variance
/// of the profile folded onto one period (the mean over the whole periods at each phase), times the number
/// of periods, over the profile's variance. About 1 for a profile with no structure at that period (the
/// fold averages it away), up to the number of periods for a profile that is one pattern repeated.
fn fold_ratio(profile: &[f64], period: usize) -> f64 {
    let periods = profile.len() / period;
    let p = &profile[..periods * period];
    let mean = p.iter().sum::<f64>() / p.len() as f64;
    let var = p.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / p.len() as f64;
    let folded = (0..period).map(|phase| {
        (0..periods).map(|k| p[phase + k * period]).sum::<f64>() / periods as f64 - mean
    });
    folded.map(|f| f * f).sum::<f64>() / period as f64 * periods as f64 / var
}

/// Column and row profiles of a gray-level image (mean over channels and the other axis) and of its
/// absolute deviation from its mean (texture strength), each as [`fold_ratio`] at `period`.
fn grid_ratios(img: &Array3<f64>, period: usize) -> [f64; 4] {
    let (c, h, w) = img.dim();
    let lum = ndarray::Array2::from_shape_fn((h, w), |(i, j)| {
        (0..c).map(|k| img[[k, i, j]]).sum::<f64>() / c as f64
    });
    let mean = lum.mean().unwrap();
    let dev = lum.mapv(|v| (v - mean).abs());
    let prof = |a: &ndarray::Array2<f64>, axis: usize| -> Vec<f64> {
        a.mean_axis(ndarray::Axis(axis)).unwrap().to_vec()
    };
    [
        fold_ratio(&prof(&lum, 0), period),
        fold_ratio(&prof(&lum, 1), period),
        fold_ratio(&prof(&dev, 0), period),
        fold_ratio(&prof(&dev, 1), period),
    ]
}

/// Issue 15: denoising a clean photo through the Fashion-MNIST prior's 32×32 tiles printed garment-like
/// specks every 24 px. The shipped photo prior on a flat mid-gray 256×256 region (σ_y = 0.1 noise, the
/// shipped `photo-denoise-c-pigdm` pipeline: 64×64 tiles, overlap 16, tiles at x, y = 0, 48, …, 192) must
/// leave no structure that repeats with the tile stride: folded at 48 px, the output's column and row
/// profiles (of its gray level and of its texture strength) look like a profile without that period (fold
/// ratio < 2, where a profile of independent values gives 1 ± 0.2). The check itself is shown to catch a
/// seam pattern of two 8-bit levels in the same output.
#[test]
fn the_photo_prior_prints_no_tile_grid_on_a_flat_region() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    write_png(
        &clean.join("flat.png"),
        Array3::from_elem((3, 256, 256), 128.0 / 255.0),
        8,
        None,
    );
    let s = spec("photo-denoise-c-pigdm.yaml");
    let y = tmp.path().join("y");
    degrade(&s, &clean, &y);
    let out = tmp.path().join("out");
    let o = run(&s, &y, &out, &["--set", "io.bit_depth=16"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let m = manifest(&out);
    assert!(m[0]["engine"].as_str().unwrap().contains("tiled 64x64"));
    let x = imageio::decode(&out.join("flat.png")).unwrap().color;
    let noisy = imageio::decode(&y.join("flat.png")).unwrap().color;
    let std = |a: &Array3<f64>| a.std(0.0);
    // It did denoise (a grid test on an output that is still the noise would prove nothing).
    assert!(
        std(&x) < 0.6 * std(&noisy),
        "output std {} vs input {}",
        std(&x),
        std(&noisy)
    );
    let stride = 48;
    let r = grid_ratios(&x, stride);
    eprintln!(
        "output std {} (input {}), grid ratios {r:?}",
        std(&x),
        std(&noisy)
    );
    assert!(
        r.iter().all(|&v| v < 2.0),
        "structure repeating every {stride} px (column, row, column texture, row texture): {r:?}"
    );
    // The same output with a seam of +2/255 where tiles overlap (x in [48k + 48, 48k + 64)) is caught.
    let mut seamed = x.clone();
    for k in 0..4 {
        seamed
            .slice_mut(ndarray::s![.., .., 48 * k + 48..48 * k + 64])
            .mapv_inplace(|v| v + 2.0 / 255.0);
    }
    let r = grid_ratios(&seamed, stride);
    assert!(r[0] > 2.0, "a two-level seam is not detected: {r:?}");
}
