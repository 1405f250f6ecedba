//! Robustness of `conjure run` against hostile and broken inputs (issue 8): corrupt, truncated, empty and
//! mislabelled files, decompression bombs, odd sizes and pixel formats, symbolic-link loops, unreadable
//! files and strange file names; hostile and wrong specs and model folders; NaN from the network, an
//! unwritable or full output folder, repeated SIGKILLs with resume, SIGINT / SIGTERM stopping cleanly
//! (exit 130 / 143); and outputs that must stay inside the output folder.
//!
//! Each bad input must fail alone: the run goes on with the others, exits 1, the manifest names the file
//! and the problem, and no output or temporary file is left for it. Cases that need privileges this
//! machine does not give (a tmpfs mount; permission bits, which root ignores) are skipped with a notice
//! on stderr.

mod common;
use common::cli;

use cli::{bin, conjure, files, root, spec, stderr};

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use conjure::imageio::{self, EncodeOptions, FileFormat, Picture};
use conjure::model::{Denoiser, ModelKind, Parameterization};
use conjure::operators::{Degradation, Diagonal, OperatorRef};
use conjure::pipeline::{self, Engine, ModelInfo, ProgressMode, RunOptions};
use conjure::samplers::ModelSchedule;
use conjure::schedules::TimeInput;
use conjure::spec::PipelineSpec;
use ndarray::{Array2, Array3, Array4, ArrayView4};
use rand::{Rng, SeedableRng};

// ---------------------------------------------------------------------------------------------------
// Helpers

/// `conjure run SPEC --input … --output …` on the embedded engine, 2 steps.
fn run(spec: &Path, input: &Path, output: &Path, extra: &[&str]) -> Output {
    conjure()
        .arg("run")
        .arg(spec)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--set", "runtime.engine=tract", "--quiet"])
        .args(["--set", "sampler.steps=2"])
        .args(extra)
        .output()
        .unwrap()
}

/// A textured blob in [0, 1] with `c` channels.
fn item(k: usize, c: usize, h: usize, w: usize) -> Array3<f64> {
    Array3::from_shape_fn((c, h, w), |(ch, i, j)| {
        let r = (((i as f64 - h as f64 / 2.0) / (h as f64 / 3.5)).powi(2)
            + ((j as f64 - w as f64 / 2.0) / (w as f64 / 4.0 + k as f64)).powi(2))
        .sqrt();
        if r < 1.0 {
            0.5 + 0.4 * ((i * 3 + j * (k + 1) + ch) % 7) as f64 / 7.0
        } else {
            0.05
        }
    })
}

fn encode(color: Array3<f64>, alpha: bool, format: FileFormat, depth: u8) -> Vec<u8> {
    let (_, h, w) = color.dim();
    let pic = Picture {
        color,
        alpha: alpha.then(|| Array2::from_shape_fn((h, w), |(i, j)| ((i + j) % 4) as f64 / 3.0)),
        bit_depth: depth,
        format,
        icc: None,
        exif: None,
        meta: Default::default(),
    };
    imageio::encode(
        &pic,
        EncodeOptions {
            format,
            bit_depth: depth,
            jpeg_quality: 95,
        },
        Path::new("x"),
    )
    .unwrap()
}

fn png(k: usize, h: usize, w: usize) -> Vec<u8> {
    encode(item(k, 1, h, w), false, FileFormat::Png, 8)
}

fn put(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

fn temps(dir: &Path) -> Vec<PathBuf> {
    files(dir)
        .into_iter()
        .map(|(p, _)| p)
        .filter(|p| imageio::is_temp_path(p))
        .collect()
}

fn manifest_at(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("torn manifest line {l:?}: {e}"))
        })
        .collect()
}

fn manifest(dir: &Path) -> Vec<serde_json::Value> {
    manifest_at(&dir.join("conjure-manifest.jsonl"))
}

/// The manifest record whose input ends with `name` (exactly one).
fn record<'a>(m: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    let hits: Vec<_> = m
        .iter()
        .filter(|r| r["input"].as_str().unwrap().ends_with(name))
        .collect();
    assert_eq!(hits.len(), 1, "records for {name}: {hits:?}");
    hits[0]
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xffff_ffffu32;
    for &b in bytes {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

/// A valid PNG whose IHDR declares `w`×`h` (CRC fixed up): a decompression bomb.
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut b = png(0, 8, 8);
    assert_eq!(&b[12..16], b"IHDR");
    b[16..20].copy_from_slice(&w.to_be_bytes());
    b[20..24].copy_from_slice(&h.to_be_bytes());
    let crc = crc32(&b[12..29]);
    b[29..33].copy_from_slice(&crc.to_be_bytes());
    b
}

/// A valid little-endian TIFF whose ImageWidth / ImageLength tags say `w`×`h`.
fn tiff_bomb(w: u32, h: u32) -> Vec<u8> {
    let mut b = encode(item(0, 1, 8, 8), false, FileFormat::Tiff, 8);
    assert_eq!(&b[..2], b"II");
    let ifd = u32::from_le_bytes(b[4..8].try_into().unwrap()) as usize;
    let n = u16::from_le_bytes(b[ifd..ifd + 2].try_into().unwrap()) as usize;
    let mut patched = 0;
    for k in 0..n {
        let e = ifd + 2 + 12 * k;
        let tag = u16::from_le_bytes(b[e..e + 2].try_into().unwrap());
        let v = match tag {
            256 => w,
            257 | 278 => h, // ImageLength, RowsPerStrip: one strip, as declared

            _ => continue,
        };
        b[e + 2..e + 4].copy_from_slice(&4u16.to_le_bytes()); // LONG
        b[e + 4..e + 8].copy_from_slice(&1u32.to_le_bytes());
        b[e + 8..e + 12].copy_from_slice(&v.to_le_bytes());
        patched += 1;
    }
    assert_eq!(patched, 3);
    b
}

/// A valid JPEG whose SOF0 header says `w`×`h`.
fn jpeg_bomb(w: u16, h: u16) -> Vec<u8> {
    let mut b = encode(item(0, 1, 8, 8), false, FileFormat::Jpeg, 8);
    let sof = b
        .windows(2)
        .position(|p| p == [0xff, 0xc0])
        .expect("baseline JPEG");
    b[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    b[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    b
}

// ---------------------------------------------------------------------------------------------------
// 1. Inputs

#[test]
fn hostile_inputs_fail_alone_and_name_their_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let y = tmp.path().join("y");
    let non_utf8 = OsStr::from_bytes(b"caf\xe9 \xff.png");

    // Good inputs, each of which must be restored.
    put(&y.join("good.png"), &png(1, 32, 32));
    put(&y.join("with space.png"), &png(2, 32, 32));
    put(&y.join(non_utf8), &png(3, 32, 32));
    put(
        &y.join("rgba16.png"),
        &encode(item(4, 3, 32, 32), true, FileFormat::Png, 16),
    );
    put(
        &y.join("gray16.tif"),
        &encode(item(5, 1, 32, 32), false, FileFormat::Tiff, 16),
    );
    put(
        &y.join("rgb.jpg"),
        &encode(item(6, 3, 32, 32), false, FileFormat::Jpeg, 8),
    );
    put(&y.join("small.png"), &png(7, 12, 12)); // smaller than the model's 32×32 tile
    put(&y.join("odd.png"), &png(8, 37, 45)); // odd sizes: tiled
    put(&y.join("sub/inner.png"), &png(9, 32, 32));

    // Bad inputs: name → a fragment its error must contain.
    let mut bad: Vec<(&str, &str)> = Vec::new();
    let full_png = png(10, 32, 32);
    put(&y.join("truncated.png"), &full_png[..full_png.len() / 2]);
    bad.push(("truncated.png", "truncated.png"));
    let mut flipped = full_png.clone();
    let mid = flipped.len() / 2;
    for b in &mut flipped[mid..mid + 8] {
        *b ^= 0x5a;
    }
    put(&y.join("flipped.png"), &flipped);
    bad.push(("flipped.png", "flipped.png"));
    let full_tif = encode(item(11, 1, 32, 32), false, FileFormat::Tiff, 8);
    put(&y.join("truncated.tif"), &full_tif[..full_tif.len() / 2]);
    bad.push(("truncated.tif", "truncated.tif"));
    let full_jpg = encode(item(12, 1, 32, 32), false, FileFormat::Jpeg, 8);
    put(&y.join("header-only.jpg"), &full_jpg[..20]);
    bad.push(("header-only.jpg", "header-only.jpg"));
    put(&y.join("zero.png"), b"");
    bad.push(("zero.png", "not a png, tiff or jpeg"));
    put(&y.join("zero.tiff"), b"");
    bad.push(("zero.tiff", "not a png, tiff or jpeg"));
    put(
        &y.join("notes.jpg"),
        b"these are meeting notes, not a photo\n",
    );
    bad.push(("notes.jpg", "not a png, tiff or jpeg"));
    put(
        &y.join("report.png"),
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n",
    );
    bad.push(("report.png", "not a png, tiff or jpeg"));
    put(&y.join("bomb.png"), &png_bomb(200_000, 200_000));
    bad.push(("bomb.png", "decoding limit"));
    put(&y.join("bomb.tif"), &tiff_bomb(300_000, 300_000));
    bad.push(("bomb.tif", "decoding limit"));
    put(&y.join("bomb.jpeg"), &jpeg_bomb(65_000, 65_000));
    bad.push(("bomb.jpeg", "decoding limit"));
    // A symbolic-link loop, a dangling image link, and a dangling link that is no image (ignored).
    std::os::unix::fs::symlink("..", y.join("sub/loop")).unwrap();
    bad.push(("sub/loop", "symbolic link loop"));
    std::os::unix::fs::symlink("nowhere.png", y.join("dangling.png")).unwrap();
    bad.push(("dangling.png", "broken symbolic link"));
    std::os::unix::fs::symlink("nowhere.txt", y.join("dangling.txt")).unwrap();
    // An unreadable file (root reads it anyway: then it is a good input).
    let secret = y.join("secret.png");
    put(&secret, &png(13, 32, 32));
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let permissions_enforced = std::fs::File::open(&secret).is_err();
    if permissions_enforced {
        bad.push(("secret.png", "ermission denied"));
    } else {
        eprintln!(
            "notice: running with privileges that bypass file permissions (root?): the unreadable-file \
             case is restored instead of failing, and is not checked"
        );
    }

    let out = tmp.path().join("out");
    let o = run(&spec("denoise-c-pigdm.yaml"), &y, &out, &[]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let m = manifest(&out);
    for (name, fragment) in &bad {
        let r = record(&m, name);
        assert_eq!(r["status"], "failed", "{name}: {r}");
        let e = r["error"].as_str().unwrap();
        assert!(
            e.contains(fragment),
            "{name}: error {e:?} lacks {fragment:?}"
        );
        assert!(err.contains(name), "stderr does not name {name}: {err}");
        let stem = Path::new(name).file_stem().unwrap().to_str().unwrap();
        assert!(
            !files(&out)
                .iter()
                .any(|(p, _)| p.to_string_lossy().contains(stem)),
            "something was written for {name}"
        );
    }
    let restored: Vec<_> = m.iter().filter(|r| r["status"] == "restored").collect();
    let failed = m.iter().filter(|r| r["status"] == "failed").count();
    assert_eq!(failed, bad.len(), "{m:#?}");
    assert_eq!(restored.len() + failed, m.len());
    // Every good input is restored at its size, with its name and (16-bit, alpha) kept.
    let mut good: Vec<PathBuf> = [
        "good.png",
        "with space.png",
        "rgba16.png",
        "gray16.tif",
        "rgb.jpg",
        "small.png",
        "odd.png",
        "sub/inner.png",
    ]
    .iter()
    .map(PathBuf::from)
    .collect();
    good.push(PathBuf::from(non_utf8));
    if !permissions_enforced {
        good.push("secret.png".into());
    }
    assert_eq!(restored.len(), good.len(), "{m:#?}");
    for rel in &good {
        let src = imageio::decode(&y.join(rel)).unwrap();
        let got = imageio::decode(&out.join(rel))
            .unwrap_or_else(|e| panic!("{}: no readable output: {e}", rel.display()));
        assert_eq!(got.size(), src.size(), "{}", rel.display());
        assert_eq!(got.bit_depth, src.bit_depth, "{}", rel.display());
        assert_eq!(
            got.alpha.is_some(),
            src.alpha.is_some(),
            "{}",
            rel.display()
        );
        // The model is gray: colour inputs have their luma restored and their colour carried back, so
        // they come back in colour; alpha carried.
        assert_eq!(got.color.dim().0, src.color.dim().0, "{}", rel.display());
        assert!(got.color.iter().all(|v| v.is_finite()));
    }
    assert_eq!(temps(&out), Vec::<PathBuf>::new());
    assert_eq!(files(&out).len(), good.len());
    // The rerun skips what exists and fails the same bad files again.
    let o = run(&spec("denoise-c-pigdm.yaml"), &y, &out, &[]);
    assert_eq!(o.status.code(), Some(1));
    let m2 = manifest(&out);
    let second = &m2[m.len()..];
    assert_eq!(
        second.iter().filter(|r| r["status"] == "skipped").count(),
        good.len()
    );
    assert_eq!(
        second.iter().filter(|r| r["status"] == "failed").count(),
        bad.len()
    );
}

#[test]
fn super_resolution_of_any_size_and_degrade_of_sizes_not_divisible_by_the_factor() {
    let tmp = tempfile::tempdir().unwrap();
    // run: the input is the low-resolution y, so every size has a defined output: scale × larger.
    let y = tmp.path().join("y");
    put(&y.join("odd.png"), &png(1, 7, 9));
    put(&y.join("one.png"), &png(2, 1, 1));
    let out = tmp.path().join("out");
    let o = run(&spec("sr4-c-pigdm.yaml"), &y, &out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        imageio::decode(&out.join("odd.png")).unwrap().size(),
        (28, 36)
    );
    assert_eq!(
        imageio::decode(&out.join("one.png")).unwrap().size(),
        (4, 4)
    );
    // degrade: a clean image whose size is not a multiple of the factor fails with a clear message;
    // the others are degraded.
    let clean = tmp.path().join("clean");
    put(&clean.join("fits.png"), &png(3, 32, 32));
    put(&clean.join("ragged.png"), &png(4, 33, 30));
    let yo = tmp.path().join("yo");
    let o = conjure()
        .arg("degrade")
        .arg(spec("sr4-c-pigdm.yaml"))
        .arg("--input")
        .arg(&clean)
        .arg("--output")
        .arg(&yo)
        .output()
        .unwrap();
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    assert!(e.contains("ragged.png") && e.contains('4'), "{e}");
    assert_eq!(
        imageio::decode(&yo.join("fits.png")).unwrap().size(),
        (8, 8)
    );
    assert!(!yo.join("ragged.png").exists());
    assert_eq!(temps(&yo), Vec::<PathBuf>::new());
}

#[test]
fn stale_temporaries_of_non_utf8_names_are_removed() {
    let tmp = tempfile::tempdir().unwrap();
    let y = tmp.path().join("y");
    let name = OsStr::from_bytes(b"r\xe9sum\xe9.png");
    put(&y.join(name), &png(1, 32, 32));
    let out = tmp.path().join("out");
    // What a run killed between writing and renaming leaves (process 999999).
    let mut stale = std::ffi::OsString::from(".");
    stale.push(name);
    stale.push(".conjure-tmp-999999");
    put(&out.join(&stale), b"torn");
    assert!(imageio::is_temp_path(&out.join(&stale)));
    let o = run(&spec("denoise-c-pigdm.yaml"), &y, &out, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(imageio::decode(&out.join(name)).is_ok());
    assert_eq!(temps(&out), Vec::<PathBuf>::new());
}

// ---------------------------------------------------------------------------------------------------
// 2. Specs and models

const BASE_TASK: &str = "denoise";

/// A spec with `key: value` set (dotted key), the operator `op`.
fn spec_text(op: &str, key: &str, value: &str) -> String {
    let mut top = vec!["model: m".to_string()];
    let mut task = vec![format!("  operator: {op}")];
    let mut sampler = vec!["  name: c-pigdm".to_string()];
    let mut runtime = Vec::new();
    let mut io = Vec::new();
    match key.split_once('.') {
        None if key == "model" => top[0] = format!("model: {value}"),
        None => top.push(format!("{key}: {value}")),
        Some(("task", k)) => task.push(format!("  {k}: {value}")),
        Some(("sampler", k)) => sampler.push(format!("  {k}: {value}")),
        Some(("runtime", k)) => runtime.push(format!("  {k}: {value}")),
        Some(("io", k)) => io.push(format!("  {k}: {value}")),
        Some(_) => panic!("{key}"),
    }
    let mut s =
        top.join("\n") + "\ntask:\n" + &task.join("\n") + "\nsampler:\n" + &sampler.join("\n");
    if !runtime.is_empty() {
        s += &format!("\nruntime:\n{}", runtime.join("\n"));
    }
    if !io.is_empty() {
        s += &format!("\nio:\n{}", io.join("\n"));
    }
    s + "\n"
}

fn parse(text: &str) -> Result<PipelineSpec, String> {
    PipelineSpec::parse(text, "t.yaml", Path::new("/base"), &[]).map_err(|e| e.to_string())
}

#[test]
fn every_key_rejects_wrong_types_and_ranges() {
    // (operator, key, bad value, fragment the message must contain)
    let cases: &[(&str, &str, &str, &str)] = &[
        (BASE_TASK, "version", "2", "version"),
        (BASE_TASK, "version", "one", "version"),
        (BASE_TASK, "model", "[1, 2]", "model"),
        (BASE_TASK, "model", "{a: 1}", "model"),
        (BASE_TASK, "task.operator", "blur", "blur"),
        (BASE_TASK, "task.operator", "[sr-average]", "operator"),
        ("sr-bicubic", "task.scale", "1", "scale"),
        ("sr-bicubic", "task.scale", "65", "scale"),
        ("sr-bicubic", "task.scale", "2.5", "scale"),
        ("sr-bicubic", "task.scale", "four", "scale"),
        ("sr-average", "task.scale", "-4", "scale"),
        (BASE_TASK, "task.scale", "4", "scale"),
        ("inpaint", "task.mask", "5", "mask"),
        ("inpaint", "task.mask", "{kind: circle}", "circle"),
        (
            "inpaint",
            "task.mask",
            "{kind: random, fraction: 1.0}",
            "fraction",
        ),
        (
            "inpaint",
            "task.mask",
            "{kind: random, fraction: -0.1}",
            "fraction",
        ),
        (
            "inpaint",
            "task.mask",
            "{kind: random, fraction: lots}",
            "fraction",
        ),
        (
            "inpaint",
            "task.mask",
            "{kind: half, side: middle}",
            "middle",
        ),
        (
            "inpaint",
            "task.mask",
            "{kind: box, x: -1, y: 0, width: 4, height: 4}",
            "x",
        ),
        (
            "inpaint",
            "task.mask",
            "{kind: box, x: 0, y: 0, width: 0, height: 4}",
            "width",
        ),
        ("inpaint", "task.mask", "{kind: file}", "path"),
        ("inpaint", "task.mask", "{kind: per-image, dir: [a]}", "dir"),
        (
            "deblur-gaussian",
            "task.kernel",
            "{size: 4, sigma: 1.0}",
            "size",
        ),
        (
            "deblur-gaussian",
            "task.kernel",
            "{size: 5, sigma: 0}",
            "sigma",
        ),
        (
            "deblur-gaussian",
            "task.kernel",
            "{size: 5, sigma: -2}",
            "sigma",
        ),
        ("deblur-gaussian", "task.kernel", "[5, 1.0]", "kernel"),
        ("deblur-uniform", "task.kernel", "{size: 0}", "size"),
        (BASE_TASK, "task.noise_sigma", "-0.1", "noise_sigma"),
        (BASE_TASK, "task.noise_sigma", "loud", "noise_sigma"),
        (BASE_TASK, "task.noise_sigma", ".nan", "noise_sigma"),
        (
            "sr-bicubic",
            "task.svd_threshold",
            "1.0\n  scale: 4",
            "svd_threshold",
        ),
        (
            "sr-bicubic",
            "task.svd_threshold",
            "-0.5\n  scale: 4",
            "svd_threshold",
        ),
        (BASE_TASK, "sampler.name", "magic", "magic"),
        (BASE_TASK, "sampler.steps", "0", "steps"),
        (BASE_TASK, "sampler.steps", "-3", "steps"),
        (BASE_TASK, "sampler.steps", "1.5", "steps"),
        (BASE_TASK, "sampler.steps", "many", "steps"),
        (BASE_TASK, "sampler.steps", "100001", "steps"),
        (BASE_TASK, "sampler.guidance", "-1", "guidance"),
        (BASE_TASK, "sampler.guidance", "strong", "guidance"),
        (BASE_TASK, "sampler.start_time", "0", "start_time"),
        (BASE_TASK, "sampler.start_time", "1.5", "start_time"),
        (BASE_TASK, "sampler.end_time", "1", "end_time"),
        (BASE_TASK, "sampler.end_time", "-0.1", "end_time"),
        (BASE_TASK, "sampler.jacobian", "exactly", "exactly"),
        (BASE_TASK, "sampler.init_noise", "[1]", "init_noise"),
        (BASE_TASK, "seed", "-1", "seed"),
        (BASE_TASK, "seed", "1.5", "seed"),
        (BASE_TASK, "seed", "abc", "seed"),
        (BASE_TASK, "runtime.engine", "gpu", "gpu"),
        (BASE_TASK, "runtime.providers", "[metal]", "metal"),
        (BASE_TASK, "runtime.providers", "{a: 1}", "providers"),
        (BASE_TASK, "runtime.batch_size", "0", "batch_size"),
        (BASE_TASK, "runtime.batch_size", "4097", "batch_size"),
        (BASE_TASK, "runtime.batch_size", "big", "batch_size"),
        (BASE_TASK, "runtime.threads", "-1", "threads"),
        (BASE_TASK, "runtime.tile", "{size: 4}", "size"),
        (BASE_TASK, "runtime.tile", "{size: huge}", "size"),
        (
            BASE_TASK,
            "runtime.tile",
            "{size: 32, overlap: 32}",
            "overlap",
        ),
        (BASE_TASK, "runtime.tile", "7", "tile"),
        (BASE_TASK, "runtime.trt_cache", "[x]", "trt_cache"),
        (
            BASE_TASK,
            "runtime.residual_memory",
            "-1",
            "residual_memory",
        ),
        (
            BASE_TASK,
            "runtime.residual_memory",
            "lots",
            "residual_memory",
        ),
        (BASE_TASK, "io.input", "[a, b]", "input"),
        (BASE_TASK, "io.output", "{a: b}", "output"),
        (BASE_TASK, "io.format", "gif", "gif"),
        (BASE_TASK, "io.bit_depth", "12", "bit_depth"),
        (BASE_TASK, "io.skip_existing", "maybe", "skip_existing"),
        (BASE_TASK, "io.jpeg_quality", "0", "jpeg_quality"),
        (BASE_TASK, "io.jpeg_quality", "101", "jpeg_quality"),
        // Unknown keys, at every level.
        (BASE_TASK, "modle", "m", "modle"),
        (BASE_TASK, "task.sclae", "4", "sclae"),
        (BASE_TASK, "sampler.stpes", "4", "stpes"),
        (BASE_TASK, "runtime.gpu", "true", "gpu"),
        (BASE_TASK, "io.outptu", "x", "outptu"),
    ];
    let mut failures = Vec::new();
    for (op, key, value, fragment) in cases {
        let text = spec_text(op, key, value);
        match parse(&text) {
            Ok(_) => failures.push(format!("{key}: {value} ({op}) was accepted")),
            Err(e) => {
                if !(e.starts_with("t.yaml:") && e.contains(fragment)) {
                    failures.push(format!(
                        "{key}: {value} ({op}): message {e:?} lacks t.yaml:LINE:COL or {fragment:?}"
                    ));
                }
            }
        }
    }
    // Whole sections of the wrong type.
    for text in [
        "model: m\ntask: 5\nsampler: {name: c-pigdm}\n",
        "model: m\ntask: {operator: denoise}\nsampler: [c-pigdm]\n",
        "model: m\ntask: {operator: denoise}\nsampler: {name: c-pigdm}\nruntime: fast\n",
        "model: m\ntask: {operator: denoise}\nsampler: {name: c-pigdm}\nio: 3\n",
        "- model: m\n",
        "just a string\n",
        "",
    ] {
        match parse(text) {
            Ok(_) => failures.push(format!("{text:?} was accepted")),
            Err(e) if !e.starts_with("t.yaml") => failures.push(format!("{text:?}: {e}")),
            Err(_) => {}
        }
    }
    // The base spec itself is fine (so the failures above are the bad values).
    for op in [BASE_TASK, "inpaint", "sr-bicubic"] {
        let extra = match op {
            "inpaint" => ("task.mask", "{kind: half}"),
            "sr-bicubic" => ("task.scale", "4"),
            _ => ("seed", "1"),
        };
        parse(&spec_text(op, extra.0, extra.1)).unwrap();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn hostile_yaml_is_refused_by_the_parser_budgets() {
    let tmp = tempfile::tempdir().unwrap();
    let base = "model: m\ntask: {operator: denoise}\nsampler: {name: c-pigdm}\n";
    // Billion laughs: 9 levels of 10 aliases each would expand to 10⁹ nodes.
    let mut bomb = String::from("a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
    for i in 1..10 {
        let refs = vec![format!("*a{}", i - 1); 10].join(", ");
        bomb += &format!("a{i}: &a{i} [{refs}]\n");
    }
    // Deep nesting, flow and block style.
    let deep_flow = format!(
        "{base}extra: {}{}\n",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut deep_block = base.to_string() + "extra:\n";
    for d in 1..2_000 {
        deep_block += &format!("{}k{d}:\n", "  ".repeat(d));
    }
    // Many documents, and a huge key count.
    let docs = format!("{base}{}", "---\n".repeat(5_000));
    let many_keys = format!(
        "{base}extra:\n{}",
        (0..300_000)
            .map(|i| format!("  k{i}: {i}\n"))
            .collect::<String>()
    );
    for (name, text) in [
        ("alias-bomb.yaml", format!("{base}{bomb}")),
        ("deep-flow.yaml", deep_flow),
        ("deep-block.yaml", deep_block),
        ("documents.yaml", docs),
        ("many-keys.yaml", many_keys),
    ] {
        let p = write(tmp.path(), name, &text);
        let o = conjure().arg("validate").arg(&p).output().unwrap();
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{name}: {e}");
        assert!(e.contains(name), "{name}: {e}");
        eprintln!("{name}: {}", e.lines().next().unwrap_or(""));
        // The library refuses it as well, without running out of stack or memory.
        assert!(parse(&text).is_err(), "{name}");
    }
}

/// A copy of a shipped model folder with its card edited.
fn model_copy(dst: &Path, name: &str, edit: impl Fn(String) -> String) -> PathBuf {
    let src = root().join("models").join(name);
    let d = dst.join(name);
    std::fs::create_dir_all(&d).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
    }
    let card = std::fs::read_to_string(d.join("model.yaml")).unwrap();
    std::fs::write(d.join("model.yaml"), edit(card)).unwrap();
    d
}

#[test]
fn broken_models_exit_2_before_any_work() {
    let tmp = tempfile::tempdir().unwrap();
    let y = tmp.path().join("y");
    put(&y.join("a.png"), &png(1, 32, 32));
    let cases: Vec<(PathBuf, &[&str], &str)> = vec![
        (tmp.path().join("no-such-model"), &[], "no-such-model"),
        (
            model_copy(&tmp.path().join("m1"), "fmnist-ddpm", |c| {
                c.replace("forward: denoiser.onnx", "forward: missing.onnx")
            }),
            &[],
            "missing.onnx",
        ),
        (
            model_copy(&tmp.path().join("m2"), "fmnist-ddpm", |c| {
                c.replace("channels: 1", "channels: 3")
            }),
            &[],
            "expected 3",
        ),
        (
            model_copy(&tmp.path().join("m3"), "fmnist-ddpm", |c| {
                c.replace("height: 32, width: 32", "height: 64, width: 64")
            }),
            &[],
            "expected 64",
        ),
        (
            model_copy(&tmp.path().join("m4"), "fmnist-ddpm", |c| {
                c.replace("  vjp: denoiser_vjp.onnx\n", "")
                    .replace("  forward_residuals: denoiser_residuals.onnx\n", "")
                    .replace("  backward: denoiser_backward.onnx\n", "")
            }),
            &["--set", "sampler.jacobian=exact"],
            "jacobian: exact",
        ),
        (
            model_copy(&tmp.path().join("m5"), "fmnist-ddpm", |c| {
                c.replace("forward: denoiser.onnx", "forward: model.yaml")
            }),
            &[],
            "model.yaml",
        ),
    ];
    for (k, (model, extra, fragment)) in cases.iter().enumerate() {
        let out = tmp.path().join(format!("out{k}"));
        let mut args: Vec<String> = vec!["--set".into(), format!("model={}", model.display())];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = run(&spec("denoise-c-pigdm.yaml"), &y, &out, &args);
        let e = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{}: {e}", model.display());
        assert!(
            e.contains(fragment),
            "{}: {e:?} lacks {fragment:?}",
            model.display()
        );
        assert!(
            !out.exists() || files(&out).is_empty(),
            "{}: outputs written",
            model.display()
        );
    }
    // A zero-byte graph file.
    let m = model_copy(&tmp.path().join("m6"), "fmnist-ddpm", |c| c);
    std::fs::write(m.join("denoiser.onnx"), b"").unwrap();
    let arg = format!("model={}", m.display());
    let o = run(
        &spec("denoise-c-pigdm.yaml"),
        &y,
        &tmp.path().join("o6"),
        &["--set", &arg],
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("denoiser.onnx"), "{}", stderr(&o));
}

// ---------------------------------------------------------------------------------------------------
// 3. Runtime

/// out = 0.5 x, except NaN (or +Inf) for images `poison` pixels wide; exact VJP.
struct Poisoned {
    poison: usize,
    value: f64,
}

impl Denoiser for Poisoned {
    fn engine(&self) -> String {
        "test/poisoned".into()
    }
    fn predict(&self, x: ArrayView4<f64>, _t: &[f64]) -> conjure::Result<Array4<f64>> {
        let v = self.value;
        Ok(if x.shape()[3] == self.poison {
            x.mapv(|_| v)
        } else {
            x.mapv(|a| 0.5 * a)
        })
    }
    fn has_vjp(&self) -> bool {
        true
    }
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> conjure::Result<(Array4<f64>, Array4<f64>)> {
        Ok((self.predict(x, t)?, cot.mapv(|v| 0.5 * v)))
    }
}

fn denoise_factory(d: &Degradation, shape: [usize; 3]) -> conjure::Result<OperatorRef> {
    assert!(matches!(d, Degradation::Denoise));
    let [c, h, w] = shape;
    Ok(std::sync::Arc::new(Diagonal::new(Array3::ones((c, h, w)))?))
}

#[test]
fn nan_or_inf_from_the_network_fails_that_image_and_writes_nothing() {
    let text = "model: m\ntask: {operator: denoise, noise_sigma: 0.1}\nsampler: {name: c-pigdm, steps: 3}\nseed: 5\n";
    for (value, format) in [
        (f64::NAN, "same"),
        (f64::INFINITY, "npy"),
        (f64::NEG_INFINITY, "png"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let y = tmp.path().join("y");
        for k in 0..4 {
            put(&y.join(format!("ok{k}.png")), &png(k, 16, 16));
        }
        put(&y.join("poison.png"), &png(9, 16, 12));
        let sp = PipelineSpec::parse(
            &format!("{text}io: {{format: {format}}}\n"),
            "t.yaml",
            Path::new("."),
            &[],
        )
        .unwrap();
        let schedule = ModelSchedule::ddpm_linear_default();
        let sampler = conjure::samplers::build(&sp.sampler_config(), &schedule).unwrap();
        let net = Poisoned { poison: 12, value };
        let engine = Engine {
            model: ModelInfo {
                kind: ModelKind::Diffusion,
                param: Parameterization::Eps,
                time: TimeInput::Unit,
                schedule,
                channels: 1,
                size: None,
                value_range: [-1.0, 1.0],
            },
            denoiser: &net,
            sampler: sampler.as_ref(),
            build_operator: &denoise_factory,
        };
        let out = tmp.path().join("out");
        let opts = RunOptions {
            input: Some(y.clone()),
            output: Some(out.clone()),
            progress: ProgressMode::Quiet,
            ..Default::default()
        };
        let s = pipeline::run_with(&sp, &opts, &engine).unwrap();
        assert_eq!((s.restored, s.failed), (4, 1), "{value}");
        let m = manifest(&out);
        let r = record(&m, "poison.png");
        assert_eq!(r["status"], "failed");
        let e = r["error"].as_str().unwrap();
        assert!(e.contains("NaN or Inf"), "{e}");
        let written = files(&out);
        assert_eq!(written.len(), 4, "{written:?}");
        assert!(written
            .iter()
            .all(|(p, _)| !p.to_string_lossy().contains("poison")));
        if format == "npy" {
            for (p, _) in &written {
                let a = imageio::read_npy(&out.join(p)).unwrap();
                assert!(a.iter().all(|v| v.is_finite()), "{}", p.display());
            }
        }
    }
}

/// A tmpfs mounted for the lifetime of the guard (unmounted on drop), or `None` where mounting is not
/// permitted.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, options: &str) -> Option<Self> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn an_unwritable_output_folder_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let y = tmp.path().join("y");
    put(&y.join("a.png"), &png(1, 32, 32));
    put(&y.join("sub/b.png"), &png(2, 32, 32));
    // The output is a file: nothing can run (exit 2), the message names it.
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let o = run(&spec("denoise-c-pigdm.yaml"), &y, &file, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("a-file"), "{}", stderr(&o));
    // Said plainly (issue 16), not "File exists (os error 17)".
    assert!(
        stderr(&o).contains("the output is a file, not a folder")
            && !stderr(&o).contains("os error"),
        "{}",
        stderr(&o)
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
    // One output sub-folder cannot be made (a file is in the way): those inputs fail, the rest run.
    let out = tmp.path().join("out");
    put(&out.join("sub"), b"in the way");
    let o = run(&spec("denoise-c-pigdm.yaml"), &y, &out, &[]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let m = manifest(&out);
    assert_eq!(record(&m, "a.png")["status"], "restored");
    let r = record(&m, "b.png");
    assert_eq!(r["status"], "failed");
    assert!(r["error"].as_str().unwrap().contains("sub"), "{r}");
    assert_eq!(std::fs::read(out.join("sub")).unwrap(), b"in the way");
    assert_eq!(temps(&out), Vec::<PathBuf>::new());
    // A read-only output folder: with the manifest elsewhere, every image fails (exit 1) and nothing
    // is written; with the manifest inside, nothing can run (exit 2).
    let ro = tmp.path().join("ro");
    let guard = Tmpfs::mount(&ro, "ro,size=1m");
    let ro_enforced = guard.is_some() || {
        std::fs::create_dir_all(&ro).unwrap();
        std::fs::set_permissions(&ro, std::os::unix::fs::PermissionsExt::from_mode(0o555)).unwrap();
        std::fs::write(ro.join("probe"), b"").is_err()
    };
    if !ro_enforced {
        eprintln!("notice: cannot make a read-only folder here (no tmpfs mount, root ignores modes); skipped");
        return;
    }
    let man = tmp.path().join("elsewhere.jsonl");
    let o = run(
        &spec("denoise-c-pigdm.yaml"),
        &y,
        &ro,
        &["--manifest", man.to_str().unwrap()],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let m = manifest_at(&man);
    assert_eq!(m.len(), 2);
    assert!(m.iter().all(|r| r["status"] == "failed"), "{m:?}");
    assert!(files(&ro).is_empty());
    let o = run(&spec("denoise-c-pigdm.yaml"), &y, &ro, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("conjure-manifest.jsonl"),
        "{}",
        stderr(&o)
    );
    drop(guard);
}

#[test]
fn a_full_disk_fails_the_images_that_do_not_fit_and_leaves_no_partial_file() {
    let tmp = tempfile::tempdir().unwrap();
    let y = tmp.path().join("y");
    for k in 0..8 {
        put(&y.join(format!("img{k}.png")), &png(k, 32, 32));
    }
    let reference = tmp.path().join("ref");
    let o = run(&spec("denoise-c-pigdm.yaml"), &y, &reference, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let want = files(&reference);
    let one = want[0].1.len();
    let out = tmp.path().join("small");
    let Some(_guard) = Tmpfs::mount(&out, "size=64k") else {
        eprintln!("notice: cannot mount a tmpfs here (not root, or no CAP_SYS_ADMIN): disk-full case skipped");
        return;
    };
    // Fill the file system until about three outputs fit.
    let mut filler = std::fs::File::create(out.join("filler")).unwrap();
    let chunk = vec![0u8; 1024];
    while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
    drop(filler);
    // tmpfs allocates whole pages: room for three files.
    let room = 3 * 4096 + one / 2;
    let len = std::fs::metadata(out.join("filler")).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(out.join("filler"))
        .unwrap()
        .set_len(len.saturating_sub(room as u64))
        .unwrap();
    let man = tmp.path().join("manifest.jsonl");
    let o = run(
        &spec("denoise-c-pigdm.yaml"),
        &y,
        &out,
        &[
            "--manifest",
            man.to_str().unwrap(),
            "--set",
            "runtime.batch_size=1",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let m = manifest_at(&man);
    let failed: Vec<_> = m.iter().filter(|r| r["status"] == "failed").collect();
    assert!(!failed.is_empty() && failed.len() < 8, "{m:#?}");
    for r in &failed {
        let e = r["error"].as_str().unwrap();
        assert!(e.contains("No space left"), "{e}");
    }
    // Every output present is complete and exact; no temporaries.
    let got: Vec<_> = files(&out)
        .into_iter()
        .filter(|(p, _)| p != Path::new("filler"))
        .collect();
    assert_eq!(got.len(), 8 - failed.len());
    for g in &got {
        assert!(
            want.contains(g),
            "{} is not the complete output",
            g.0.display()
        );
    }
    assert_eq!(temps(&out), Vec::<PathBuf>::new());
}

/// Complete outputs under `dir` (relative path → bytes): temporaries and the manifest excluded.
fn outputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    files(dir)
        .into_iter()
        .filter(|(p, _)| !imageio::is_temp_path(p))
        .collect()
}

/// `conjure run SPEC` on the embedded engine, quiet, in the background, stderr captured.
fn spawn_run(spec: &Path, input: &Path, output: &Path, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(bin())
        .env_remove("RUST_LOG")
        .arg("run")
        .arg(spec)
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--quiet", "--set", "runtime.engine=tract"])
        .args(extra)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait until `child` has written more than `before` complete outputs to `out`; false if it exited
/// first.
fn wait_for_new_output(child: &mut std::process::Child, out: &Path, before: usize) -> bool {
    loop {
        if out.exists() && outputs(out).len() > before {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Send a signal (`INT`, `TERM`) to a process, with kill(1).
fn send_signal(child: &std::process::Child, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{signal} failed");
}

/// Every complete output under `out` is byte-identical to the reference's, and manifest lines are whole.
fn assert_untorn(out: &Path, reference: &[(PathBuf, Vec<u8>)], what: &str) {
    for o in outputs(out) {
        assert!(reference.contains(&o), "{what}: {} is torn", o.0.display());
    }
    if out.join("conjure-manifest.jsonl").exists() {
        manifest(out);
    }
}

#[test]
fn repeated_sigkill_then_resume_ends_complete_and_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let y = tmp.path().join("y");
    let names: Vec<PathBuf> = vec![
        "a.png".into(),
        "b c.png".into(),
        "deep/d.png".into(),
        "deep/e.png".into(),
        PathBuf::from(OsStr::from_bytes(b"f\xfe.png")),
        "g.png".into(),
    ];
    for (k, n) in names.iter().enumerate() {
        put(&y.join(n), &png(k, 32, 32));
    }
    let s = spec("denoise-c-pigdm.yaml");
    let args = ["--set", "sampler.steps=4", "--set", "runtime.batch_size=1"];
    let full = tmp.path().join("full");
    let t0 = Instant::now();
    let o = run(&s, &y, &full, &args);
    let t_full = t0.elapsed();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let reference = files(&full);
    assert_eq!(reference.len(), names.len());

    // Each round is killed while restoring: once it has written a new output, after a random delay of up
    // to about one image's time (decode, sampling, encode, write, rename and manifest all get hit), so
    // every round makes progress and no kill is wasted on model loading.
    let out = tmp.path().join("out");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(8);
    let max_ms = (t_full.as_millis() as u64 / names.len() as u64).max(5);
    let mut kills = 0;
    for round in 0..names.len() {
        let before = if out.exists() { outputs(&out).len() } else { 0 };
        let mut child = spawn_run(&s, &y, &out, &args);
        if wait_for_new_output(&mut child, &out, before) {
            std::thread::sleep(Duration::from_millis(rng.random_range(0..max_ms)));
            let _ = child.kill(); // SIGKILL
            kills += 1;
        }
        let _ = child.wait();
        // Whatever the kill left, every complete output is exactly the reference, manifest lines whole.
        assert_untorn(&out, &reference, &format!("round {round}"));
        if outputs(&out).len() == names.len() {
            break;
        }
    }
    assert!(kills >= 1);
    let o = run(&s, &y, &out, &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        files(&out),
        reference,
        "resumed outputs differ, or temporaries remain"
    );
}

#[test]
fn sigint_and_sigterm_stop_cleanly_and_a_rerun_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let y = tmp.path().join("y");
    let n = 12;
    for k in 0..n {
        put(
            &y.join(format!("{}/img{k:02}.png", ["a", "b"][k % 2])),
            &png(k, 32, 32),
        );
    }
    let s = spec("denoise-c-pigdm.yaml");
    let args = ["--set", "sampler.steps=3", "--set", "runtime.batch_size=2"];
    let full = tmp.path().join("full");
    let o = run(&s, &y, &full, &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let reference = files(&full);
    assert_eq!(reference.len(), n);

    // SIGINT, then SIGTERM on the resumed run: each lands once the run has written a new output (the
    // batches left take far longer than the few milliseconds between that write and the signal).
    let out = tmp.path().join("out");
    let mut done = 0;
    for (round, (signal, code)) in [("INT", 130), ("TERM", 143)].into_iter().enumerate() {
        let mut child = spawn_run(&s, &y, &out, &args);
        assert!(
            wait_for_new_output(&mut child, &out, done),
            "SIG{signal}: the run ended before it could be interrupted"
        );
        send_signal(&child, signal);
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(code), "SIG{signal}: {err}");
        assert!(
            err.contains(&format!("interrupted by SIG{signal}"))
                && err.contains("not done, rerun the same command to resume"),
            "SIG{signal}: {err}"
        );
        // No temporaries; only complete outputs, each byte-identical to the uninterrupted run's.
        assert_eq!(temps(&out), Vec::<PathBuf>::new(), "SIG{signal}");
        let got = outputs(&out);
        assert!(
            got.len() > done && got.len() < n,
            "SIG{signal}: {} outputs",
            got.len()
        );
        assert_untorn(&out, &reference, &format!("SIG{signal}"));
        // The manifest: this run skipped what the last one did, restored the outputs it added, and
        // recorded nothing else; every restored record's output is there.
        let m = manifest(&out);
        let status = |st: &str| m.iter().filter(|r| r["status"] == st).count();
        assert_eq!(status("restored"), got.len(), "SIG{signal}: {m:?}");
        assert_eq!(status("skipped"), done, "SIG{signal}");
        assert_eq!(m.len(), got.len() + done);
        for r in m.iter().filter(|r| r["status"] == "restored") {
            assert!(Path::new(r["output"].as_str().unwrap()).is_file());
        }
        let summary = format!("restored {}, skipped {done}, failed 0", got.len() - done);
        assert!(err.contains(&summary), "round {round}: {err}");
        assert!(err.contains(&format!("{} input", n - got.len())), "{err}");
        done = got.len();
    }

    // A second SIGINT exits at once (130); whatever it leaves is untorn, and the rerun removes its
    // temporaries and completes the rest to the same bytes.
    let mut child = spawn_run(&s, &y, &out, &args);
    if wait_for_new_output(&mut child, &out, done) {
        send_signal(&child, "INT");
        std::thread::sleep(Duration::from_millis(2));
        send_signal(&child, "INT");
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
        assert_untorn(&out, &reference, "second SIGINT");
    } else {
        let _ = child.wait();
    }
    let o = run(&s, &y, &out, &args);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        files(&out),
        reference,
        "resumed outputs differ, or temporaries remain"
    );
}

// ---------------------------------------------------------------------------------------------------
// 4. Paths

/// Every file under `dir`, as paths.
fn tree(dir: &Path) -> Vec<PathBuf> {
    files(dir).into_iter().map(|(p, _)| p).collect()
}

#[test]
fn outputs_are_never_written_outside_the_output_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let outside = tmp.path().join("outside");
    put(&outside.join("keep.txt"), b"untouched");
    let elsewhere = tmp.path().join("elsewhere");
    put(&elsewhere.join("linked.png"), &png(1, 32, 32));
    let y = tmp.path().join("y");
    put(&y.join("a.png"), &png(2, 32, 32));
    put(&y.join("sub/b.png"), &png(3, 32, 32));
    put(&y.join("x/c.png"), &png(4, 32, 32));
    put(&y.join("a..png"), &png(5, 32, 32));
    put(&y.join("..hidden.png"), &png(6, 32, 32)); // hidden: skipped
                                                   // An input folder that links out of the input tree: read, and restored inside the output.
    std::os::unix::fs::symlink(&elsewhere, y.join("link")).unwrap();
    // The output folder holds links that point out: a sub-folder, and an output file.
    let out = tmp.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::os::unix::fs::symlink(&outside, out.join("sub")).unwrap();
    std::os::unix::fs::symlink(outside.join("c.png"), out.join("x")).unwrap(); // dangling dir link
    let before_outside = files(&outside);
    let before_elsewhere = files(&elsewhere);
    let o = run(&spec("denoise-c-pigdm.yaml"), &y, &out, &["--overwrite"]);
    let e = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{e}");
    let m = manifest(&out);
    for name in ["sub/b.png", "x/c.png"] {
        let r = record(&m, name);
        assert_eq!(r["status"], "failed", "{r}");
        assert!(
            r["error"]
                .as_str()
                .unwrap()
                .contains("outside the output folder"),
            "{r}"
        );
    }
    for name in ["/a.png", "a..png", "link/linked.png"] {
        assert_eq!(record(&m, name)["status"], "restored", "{name}");
    }
    assert!(out.join("link/linked.png").is_file());
    assert!(!out.join("link").is_symlink());
    assert!(!m
        .iter()
        .any(|r| r["input"].as_str().unwrap().contains("hidden")));
    assert_eq!(
        files(&outside),
        before_outside,
        "written outside through a link"
    );
    assert_eq!(files(&elsewhere), before_elsewhere);
    assert!(!outside.join("c.png").exists());
    assert!(!tmp.path().join("b.png").exists());

    // An existing output that is a link to a file outside is replaced by the output, never written
    // through (with --overwrite), and with skip_existing it is left alone.
    let out2 = tmp.path().join("out2");
    std::fs::create_dir_all(&out2).unwrap();
    put(&outside.join("target.png"), b"precious");
    std::os::unix::fs::symlink(outside.join("target.png"), out2.join("a.png")).unwrap();
    let y2 = tmp.path().join("y2");
    put(&y2.join("a.png"), &png(7, 32, 32));
    let o = run(&spec("denoise-c-pigdm.yaml"), &y2, &out2, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(record(&manifest(&out2), "a.png")["status"], "skipped");
    let o = run(&spec("denoise-c-pigdm.yaml"), &y2, &out2, &["--overwrite"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(
        std::fs::read(outside.join("target.png")).unwrap(),
        b"precious"
    );
    assert!(!out2.join("a.png").is_symlink());
    assert!(imageio::decode(&out2.join("a.png")).is_ok());

    // Masks given by absolute paths (a file, a per-image folder) are only read.
    let masks = tmp.path().join("masks");
    let mask = Array3::from_shape_fn((1, 32, 32), |(_, i, _)| if i < 16 { 1.0 } else { 0.0 });
    put(
        &masks.join("one.png"),
        &encode(mask.clone(), false, FileFormat::Png, 8),
    );
    put(
        &masks.join("per/a.png"),
        &encode(mask, false, FileFormat::Png, 8),
    );
    let before_masks = files(&masks);
    let mask_file = format!(
        "task.mask={{kind: file, path: {}}}",
        masks.join("one.png").display()
    );
    let mask_dir = format!(
        "task.mask={{kind: per-image, dir: {}}}",
        masks.join("per").display()
    );
    for (k, set) in [mask_file, mask_dir].iter().enumerate() {
        let o3 = tmp.path().join(format!("out3-{k}"));
        let o = run(&spec("inpaint-box-c-pigdm.yaml"), &y2, &o3, &["--set", set]);
        assert_eq!(o.status.code(), Some(0), "{set}: {}", stderr(&o));
        assert_eq!(tree(&o3), vec![PathBuf::from("a.png")]);
    }
    assert_eq!(files(&masks), before_masks);
}
