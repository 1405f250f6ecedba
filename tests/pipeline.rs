//! The batch pipeline end to end on real files, with an injected engine: a shape-agnostic linear
//! "network", a small seeded sampler and diagonal operators (denoise / inpaint). Covers determinism across
//! batch sizes and thread counts, failures that do not stop a run, resume after an interrupted run,
//! 16-bit and ICC pass-through, npy output, sharding and the manifest.

use std::path::{Path, PathBuf};

mod common;

use conjure::imageio::{self, EncodeOptions, FileFormat, Picture};
use conjure::model::{Denoiser, ModelKind, Network, Parameterization};
use conjure::operators::{Degradation, Diagonal, Img, OperatorRef};
use conjure::pipeline::{self, Engine, ModelInfo, ProgressMode, RunOptions, Shard};
use conjure::samplers::{ModelSchedule, Problem, Sampler};
use conjure::schedules::TimeInput;
use conjure::spec::{Override, PipelineSpec};
use conjure::Result;
use ndarray::{Array2, Array3, Array4, ArrayView4};

/// out = 0.5 x, per sample, any shape; exact VJP.
struct Half;

impl Denoiser for Half {
    fn engine(&self) -> String {
        "test/half".into()
    }
    fn predict(&self, x: ArrayView4<f64>, _t: &[f64]) -> Result<Array4<f64>> {
        Ok(x.mapv(|v| 0.5 * v))
    }
    fn has_vjp(&self) -> bool {
        true
    }
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        _t: &[f64],
        cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        Ok((x.mapv(|v| 0.5 * v), cot.mapv(|v| 0.5 * v)))
    }
}

/// x = H†y + z − 0.02 ε̂(H†y + z), then made consistent with y (x̂ = x − P x + H†y): one network
/// call per batch, one random draw per image, values partly outside the model range where H has a null
/// space (exercises clamping and raw npy output).
struct Seeded;

impl Sampler for Seeded {
    fn name(&self) -> &'static str {
        "seeded"
    }
    fn nfe(&self) -> usize {
        1
    }
    fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        let xs: Vec<Img> = problems
            .iter_mut()
            .map(|p| p.op.pinv(&p.y) + &p.init_noise())
            .collect();
        let eps = net.eps(&xs, 0.5, 0.8, 0.6)?;
        Ok(xs
            .iter()
            .zip(eps)
            .zip(problems.iter())
            .map(|((x, e), p)| {
                let x = x - &(e * 0.02);
                &x - &p.op.project(&x) + p.op.pinv(&p.y)
            })
            .collect())
    }
}

fn factory(d: &Degradation, shape: [usize; 3]) -> Result<OperatorRef> {
    let [c, h, w] = shape;
    let s = match d {
        Degradation::Denoise => Array3::ones((c, h, w)),
        Degradation::Inpaint { mask } => {
            assert_eq!(mask.dim(), (h, w));
            Array3::from_shape_fn((c, h, w), |(_, i, j)| mask[(i, j)])
        }
        other => panic!("test factory does not build {other:?}"),
    };
    Ok(std::sync::Arc::new(Diagonal::new(s)?))
}

fn info(channels: usize, size: Option<(usize, usize)>) -> ModelInfo {
    ModelInfo {
        kind: ModelKind::Diffusion,
        param: Parameterization::Eps,
        time: TimeInput::Unit,
        schedule: ModelSchedule::ddpm_linear_default(),
        channels,
        size,
        value_range: [-1.0, 1.0],
    }
}

const SPEC: &str = "model: m\ntask:\n  operator: denoise\nsampler:\n  name: c-pigdm\nseed: 3\n";

fn spec(text: &str, sets: &[&str]) -> PipelineSpec {
    let ov: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
    PipelineSpec::parse(text, "t.yaml", Path::new("."), &ov).unwrap()
}

fn run(
    spec: &PipelineSpec,
    model: ModelInfo,
    input: &Path,
    output: &Path,
    shard: Option<Shard>,
) -> pipeline::RunSummary {
    let engine = Engine {
        model,
        denoiser: &Half,
        sampler: &Seeded,
        build_operator: &factory,
    };
    let opts = RunOptions {
        input: Some(input.to_path_buf()),
        output: Some(output.to_path_buf()),
        shard,
        progress: ProgressMode::Quiet,
        ..Default::default()
    };
    pipeline::run_with(spec, &opts, &engine).unwrap()
}

/// A minimal little-endian EXIF (TIFF) block with no entries.
const EXIF: &[u8] = b"II*\x00\x08\x00\x00\x00\x00\x00";

fn write_png(path: &Path, color: Array3<f64>, depth: u8, icc: Option<Vec<u8>>, alpha: bool) {
    let (_, h, w) = color.dim();
    let pic = Picture {
        alpha: alpha
            .then(|| Array2::from_shape_fn((h, w), |(i, j)| ((i * w + j) % 3) as f64 / 2.0)),
        exif: icc.as_ref().map(|_| EXIF.to_vec()),
        color,
        bit_depth: depth,
        format: FileFormat::Png,
        icc,
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

fn pattern(c: usize, h: usize, w: usize, k: usize) -> Array3<f64> {
    Array3::from_shape_fn((c, h, w), |(ch, i, j)| {
        (((i * 7 + j * 3 + k * 11 + ch * 5) % 17) as f64) / 16.0
    })
}

/// 20 gray images in two sizes, in nested folders.
fn make_inputs(dir: &Path) -> Vec<PathBuf> {
    let mut rels = Vec::new();
    for k in 0..20 {
        let (h, w) = if k % 3 == 0 { (12, 10) } else { (8, 8) };
        let rel = PathBuf::from(format!("{}/img{k:02}.png", ["a", "b/c", "."][k % 3]));
        write_png(&dir.join(&rel), pattern(1, h, w, k), 8, None, false);
        rels.push(rel);
    }
    rels
}

/// Every output image under `dir` decoded: relative path → (colour, alpha). For comparing runs of
/// different specs, whose files differ in the processing note (it names the spec hash) but must not in
/// their pixels.
fn pixels(dir: &Path) -> Vec<(PathBuf, Array3<f64>, Option<Array2<f64>>)> {
    files(dir)
        .into_iter()
        .map(|(rel, _)| {
            let pic = imageio::decode(&dir.join(&rel)).unwrap();
            (rel, pic.color, pic.alpha)
        })
        .collect()
}

/// Every file under `dir` (relative path → bytes), manifests (one per shard) excluded.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut v: Vec<_> = walk(dir)
        .into_iter()
        .filter(|p| {
            !p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("conjure-manifest")
        })
        .map(|p| {
            (
                p.strip_prefix(dir).unwrap().to_path_buf(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn manifest(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("conjure-manifest.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn outputs_are_identical_across_batch_sizes_and_thread_counts() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    make_inputs(&input);
    // Random inpainting: one operator (mask) per image, seeded per image.
    let text = SPEC.replace(
        "operator: denoise",
        "operator: inpaint\n  mask: {kind: random, fraction: 0.3}",
    );
    let mut reference: Option<Vec<(PathBuf, Vec<u8>)>> = None;
    for (i, (batch, threads)) in [(1, 1), (7, 2), (16, 1), (16, 2), (7, 1)]
        .iter()
        .enumerate()
    {
        let out = tmp.path().join(format!("out{i}"));
        let s = spec(
            &text,
            &[
                &format!("runtime.batch_size={batch}"),
                &format!("runtime.threads={threads}"),
            ],
        );
        let sum = run(&s, info(1, None), &input, &out, None);
        assert_eq!((sum.restored, sum.failed), (20, 0), "{:?}", sum.failures);
        let got = files(&out);
        assert_eq!(got.len(), 20);
        match &reference {
            None => reference = Some(got),
            Some(r) => assert!(*r == got, "batch {batch} threads {threads} differs"),
        }
    }
    // Different seeds do give different outputs (the comparison above is not vacuous).
    let out = tmp.path().join("other-seed");
    run(&spec(&text, &["seed=4"]), info(1, None), &input, &out, None);
    assert!(files(&out) != reference.unwrap());
}

#[test]
fn a_corrupt_image_fails_alone_and_is_in_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    make_inputs(&input);
    std::fs::write(input.join("a/broken.png"), b"\x89PNG\r\n\x1a\n garbage").unwrap();
    let out = tmp.path().join("out");
    let sum = run(
        &spec(SPEC, &["runtime.batch_size=4"]),
        info(1, None),
        &input,
        &out,
        None,
    );
    assert_eq!((sum.restored, sum.skipped, sum.failed), (20, 0, 1));
    assert!(sum.failures[0].0.ends_with("a/broken.png"));
    let m = manifest(&out);
    assert_eq!(m.len(), 21);
    let bad: Vec<_> = m.iter().filter(|r| r["status"] == "failed").collect();
    assert_eq!(bad.len(), 1);
    assert!(bad[0]["input"].as_str().unwrap().ends_with("broken.png"));
    assert!(bad[0]["error"].as_str().unwrap().contains("broken.png"));
    let good = &m.iter().find(|r| r["status"] == "restored").unwrap();
    assert_eq!(good["nfe"], 1);
    assert_eq!(good["engine"], "test/half");
    assert_eq!(good["spec_hash"].as_str().unwrap().len(), 64);
    assert!(good["seed"].as_u64().is_some());
    assert!(!out.join("a/broken.png").exists());
}

#[test]
fn an_interrupted_run_resumes_to_the_same_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let rels = make_inputs(&input);
    let s = spec(SPEC, &[]);
    let full = tmp.path().join("full");
    run(&s, info(1, None), &input, &full, None);
    let reference = files(&full);

    // The state a killed run leaves: some outputs complete, torn temporaries for others.
    let out = tmp.path().join("out");
    for rel in &rels[..7] {
        let dst = out.join(rel);
        std::fs::create_dir_all(dst.parent().unwrap()).unwrap();
        std::fs::copy(full.join(rel), &dst).unwrap();
    }
    for rel in &rels[7..10] {
        let name = format!(
            ".{}.conjure-tmp-4242",
            rel.file_name().unwrap().to_string_lossy()
        );
        let torn = out.join(rel).with_file_name(name);
        std::fs::create_dir_all(torn.parent().unwrap()).unwrap();
        std::fs::write(&torn, b"\x89PNG torn").unwrap();
    }
    let sum = run(&s, info(1, None), &input, &out, None);
    assert_eq!((sum.restored, sum.skipped, sum.failed), (13, 7, 0));
    assert_eq!(
        files(&out),
        reference,
        "resumed outputs differ or temporaries remain"
    );
    // A second resume redoes nothing.
    let sum = run(&s, info(1, None), &input, &out, None);
    assert_eq!((sum.restored, sum.skipped), (0, 20));
}

#[test]
fn sixteen_bit_icc_exif_and_alpha_are_carried() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    let icc = b"not a real profile, carried byte for byte".to_vec();
    write_png(
        &input.join("deep.png"),
        pattern(3, 8, 8, 1),
        16,
        Some(icc.clone()),
        true,
    );
    write_png(&input.join("flat.png"), pattern(3, 8, 8, 2), 8, None, false);
    let out = tmp.path().join("out");
    let sum = run(&spec(SPEC, &[]), info(3, None), &input, &out, None);
    assert_eq!(sum.restored, 2);
    let deep = imageio::decode(&out.join("deep.png")).unwrap();
    assert_eq!(deep.bit_depth, 16);
    assert_eq!(deep.icc, Some(icc));
    assert_eq!(deep.exif.as_deref(), Some(EXIF));
    let src = imageio::decode(&input.join("deep.png")).unwrap();
    assert_eq!(deep.alpha, src.alpha);
    // Denoise with H = I returns y: the 16-bit levels come back exactly.
    assert_eq!(deep.color, src.color);
    let flat = imageio::decode(&out.join("flat.png")).unwrap();
    assert_eq!(flat.bit_depth, 8);
    assert_eq!(flat.icc, None);
    // bit_depth: 16 forces 16-bit output.
    let out16 = tmp.path().join("out16");
    run(
        &spec(SPEC, &["io.bit_depth=16"]),
        info(3, None),
        &input,
        &out16,
        None,
    );
    assert_eq!(
        imageio::decode(&out16.join("flat.png")).unwrap().bit_depth,
        16
    );
}

#[test]
fn npy_output_holds_raw_floats_before_clamping() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write_png(&input.join("x.png"), pattern(1, 8, 8, 0), 8, None, false);
    let text = SPEC.replace(
        "operator: denoise",
        "operator: inpaint\n  mask: {kind: random, fraction: 0.5}",
    );
    let out = tmp.path().join("out");
    run(
        &spec(&text, &["io.format=npy"]),
        info(1, None),
        &input,
        &out,
        None,
    );
    let png_out = tmp.path().join("png");
    run(&spec(&text, &[]), info(1, None), &input, &png_out, None);
    let a = imageio::read_npy(&out.join("x.npy")).unwrap();
    assert_eq!(a.shape(), &[1, 8, 8]);
    // With unit noise on the missing pixels, some values leave [-1, 1]; npy keeps them.
    assert!(a.iter().any(|v| v.abs() > 1.0));
    // The PNG is the same image clamped and quantized.
    let png = imageio::decode(&png_out.join("x.png")).unwrap();
    for (raw, q) in a.iter().zip(png.color.iter()) {
        let expect = (((raw + 1.0) / 2.0).clamp(0.0, 1.0) * 255.0).round() / 255.0;
        assert!((expect - q).abs() < 1.5 / 255.0, "{raw} -> {q}");
    }
}

#[test]
fn shards_partition_the_inputs() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    make_inputs(&input);
    let s = spec(SPEC, &[]);
    let full = tmp.path().join("full");
    run(&s, info(1, None), &input, &full, None);
    let out = tmp.path().join("sharded");
    let mut n = 0;
    for index in 0..3 {
        let sum = run(
            &s,
            info(1, None),
            &input,
            &out,
            Some(Shard { index, count: 3 }),
        );
        n += sum.restored;
        assert_eq!(sum.skipped, 0, "shards overlap");
    }
    assert_eq!(n, 20);
    assert_eq!(files(&out), files(&full));
    // One manifest per shard, none shared.
    for index in 0..3usize {
        let m = out.join(format!("conjure-manifest.shard-{index}-of-3.jsonl"));
        let lines = std::fs::read_to_string(&m).unwrap().lines().count();
        assert_eq!(lines, (20 - index).div_ceil(3), "{}", m.display());
    }
    assert!(!out.join("conjure-manifest.jsonl").exists());
}

#[test]
fn shard_parsing_and_environment() {
    assert_eq!(Shard::parse("1/4").unwrap(), Shard { index: 1, count: 4 });
    assert!(Shard::parse("4/4").is_err());
    assert!(Shard::parse("x").is_err());
    let env = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let slurm = env(&[
        ("SLURM_ARRAY_TASK_ID", "7"),
        ("SLURM_ARRAY_TASK_MIN", "5"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
    ]);
    assert_eq!(
        Shard::from_env(slurm).unwrap(),
        Some(Shard { index: 2, count: 4 })
    );
    let k8s = env(&[("JOB_COMPLETION_INDEX", "3"), ("CONJURE_SHARD_COUNT", "8")]);
    assert_eq!(
        Shard::from_env(k8s).unwrap(),
        Some(Shard { index: 3, count: 8 })
    );
    assert_eq!(Shard::from_env(env(&[])).unwrap(), None);
    // `--array=4-16:4`: tasks 4, 8, 12, 16 are shards 0..4.
    let stepped = env(&[
        ("SLURM_ARRAY_TASK_ID", "12"),
        ("SLURM_ARRAY_TASK_MIN", "4"),
        ("SLURM_ARRAY_TASK_STEP", "4"),
        ("SLURM_ARRAY_TASK_COUNT", "4"),
    ]);
    assert_eq!(
        Shard::from_env(stepped).unwrap(),
        Some(Shard { index: 2, count: 4 })
    );
    assert!(Shard::parse("0/0").is_err());
    // One variable of a pair without the other is an error naming the missing one.
    for (set, missing) in [
        ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"),
        ("SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_ID"),
        ("JOB_COMPLETION_INDEX", "CONJURE_SHARD_COUNT"),
        ("CONJURE_SHARD_COUNT", "JOB_COMPLETION_INDEX"),
    ] {
        let e = Shard::from_env(|k: &str| (k == set).then(|| "1".to_string())).unwrap_err();
        assert!(e.to_string().contains(missing), "{set}: {e}");
    }
    assert!(Shard::from_env(env(&[
        ("JOB_COMPLETION_INDEX", "0"),
        ("CONJURE_SHARD_COUNT", "0")
    ]))
    .is_err());
    assert!(Shard::from_env(env(&[
        ("JOB_COMPLETION_INDEX", "8"),
        ("CONJURE_SHARD_COUNT", "8")
    ]))
    .is_err());
}

#[test]
fn images_the_model_cannot_take_fail_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write_png(&input.join("ok.png"), pattern(1, 8, 8, 0), 8, None, false);
    write_png(
        &input.join("big.png"),
        pattern(1, 12, 10, 0),
        8,
        None,
        false,
    );
    let out = tmp.path().join("out");
    let sum = run(&spec(SPEC, &[]), info(1, Some((8, 8))), &input, &out, None);
    assert_eq!((sum.restored, sum.failed), (1, 1));
    assert!(sum.failures[0].1.contains("10x12"), "{}", sum.failures[0].1);
}

#[test]
fn degrade_writes_measurements_and_the_masks_run_regenerates() {
    let tmp = tempfile::tempdir().unwrap();
    let clean = tmp.path().join("clean");
    make_inputs(&clean);
    let text = SPEC.replace(
        "operator: denoise",
        "operator: inpaint\n  mask: {kind: random, fraction: 0.5}",
    );
    let s = spec(&text, &[]);
    let y = tmp.path().join("y");
    let masks = tmp.path().join("masks");
    let d = pipeline::degrade(&s, &info(1, None), &factory, &clean, &y, Some(&masks)).unwrap();
    assert_eq!((d.written, d.failures.len()), (20, 0));
    let rel = Path::new("b/c/img01.png");
    let m = imageio::load_mask(&masks.join(rel), 8, 8).unwrap();
    assert_eq!(m.sum(), 32.0);
    let yimg = imageio::decode(&y.join(rel)).unwrap();
    let x = imageio::decode(&clean.join(rel)).unwrap();
    for ((yv, xv), mv) in yimg.color.iter().zip(x.color.iter()).zip(m.iter()) {
        // Known pixels are kept; missing ones are 0 on the model scale (mid-gray).
        let expect = if *mv == 1.0 { *xv } else { 0.5 };
        assert!((yv - expect).abs() <= 0.5 / 255.0 + 1e-12);
    }
    // `run` with the same spec regenerates the same mask: known pixels come back (nearly) unchanged.
    let out = tmp.path().join("out");
    run(&s, info(1, None), &y, &out, None);
    let r = imageio::decode(&out.join(rel)).unwrap();
    for ((rv, yv), mv) in r.color.iter().zip(yimg.color.iter()).zip(m.iter()) {
        if *mv == 1.0 {
            assert!((rv - yv).abs() < 1e-9, "known pixel changed: {yv} -> {rv}");
        }
    }
}

#[test]
fn init_noise_replaces_the_seeded_draw() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    for k in 0..3 {
        write_png(
            &input.join(format!("{k}.png")),
            pattern(1, 8, 8, k),
            8,
            None,
            false,
        );
    }
    // (N, C, H, W) = (2, 1, 8, 8): image i of the sorted list takes entry i mod 2.
    let z = ndarray::Array4::<f32>::from_shape_fn((2, 1, 8, 8), |(n, _, i, j)| {
        ((n * 64 + i * 8 + j) as f32 * 0.37).sin()
    });
    let npy = tmp.path().join("z.npy");
    ndarray_npy::write_npy(&npy, &z).unwrap();
    let text = SPEC.replace(
        "operator: denoise",
        "operator: inpaint\n  mask: {kind: half, side: left}",
    );
    let set = format!("sampler.init_noise={}", npy.display());
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    run(
        &spec(&text, &[&set, "seed=1"]),
        info(1, None),
        &input,
        &a,
        None,
    );
    run(
        &spec(&text, &[&set, "seed=2"]),
        info(1, None),
        &input,
        &b,
        None,
    );
    // With the noise given, the seed no longer matters...
    assert_eq!(pixels(&a), pixels(&b));
    // ...and the raw result is exactly what the given z implies on the missing half.
    let c = tmp.path().join("c");
    run(
        &spec(&text, &[&set, "io.format=npy"]),
        info(1, None),
        &input,
        &c,
        None,
    );
    let x2 = imageio::read_npy(&c.join("2.npy")).unwrap();
    for i in 0..8 {
        for j in 0..4 {
            // Missing pixels: H†y = 0 and P = 0 there, so x̂ = z − 0.02 ε̂(z) with ε̂ = 0.5 z: 0.99 z.
            let expect = 0.99 * z[(0, 0, i, j)] as f64;
            assert!(
                (x2[[0, i, j]] - expect).abs() < 1e-6,
                "{} vs {expect}",
                x2[[0, i, j]]
            );
        }
    }
}

#[test]
fn tiff_and_jpeg_inputs_keep_their_format_unless_told() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    for (name, format, depth) in [
        ("a.tif", FileFormat::Tiff, 16),
        ("b.jpg", FileFormat::Jpeg, 8),
    ] {
        let pic = Picture {
            color: pattern(3, 8, 8, 4),
            alpha: None,
            bit_depth: depth,
            format,
            icc: None,
            exif: None,
            meta: Default::default(),
        };
        let opts = EncodeOptions {
            format,
            bit_depth: depth,
            jpeg_quality: 95,
        };
        let p = input.join(name);
        std::fs::write(&p, imageio::encode(&pic, opts, &p).unwrap()).unwrap();
    }
    let out = tmp.path().join("out");
    let sum = run(&spec(SPEC, &[]), info(3, None), &input, &out, None);
    assert_eq!(sum.restored, 2, "{:?}", sum.failures);
    let a = imageio::decode(&out.join("a.tif")).unwrap();
    assert_eq!((a.format, a.bit_depth), (FileFormat::Tiff, 16));
    // Denoise returns y: the TIFF's 16-bit values come back exactly.
    assert_eq!(
        a.color,
        imageio::decode(&input.join("a.tif")).unwrap().color
    );
    let b = imageio::decode(&out.join("b.jpg")).unwrap();
    assert_eq!((b.format, b.bit_depth), (FileFormat::Jpeg, 8));
    let png = tmp.path().join("png");
    run(
        &spec(SPEC, &["io.format=png"]),
        info(3, None),
        &input,
        &png,
        None,
    );
    assert!(png.join("a.png").is_file() && png.join("b.png").is_file());
    assert_eq!(imageio::decode(&png.join("a.png")).unwrap().bit_depth, 16);
}

#[test]
fn the_output_folder_may_not_be_the_input_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write_png(&input.join("x.png"), pattern(1, 8, 8, 0), 8, None, false);
    let engine = Engine {
        model: info(1, None),
        denoiser: &Half,
        sampler: &Seeded,
        build_operator: &factory,
    };
    let opts = RunOptions {
        input: Some(input.clone()),
        output: Some(input.join(".")),
        ..Default::default()
    };
    let e = pipeline::run_with(&spec(SPEC, &[]), &opts, &engine).unwrap_err();
    assert!(e.to_string().contains("is the input folder"), "{e}");
    let before = std::fs::read(input.join("x.png")).unwrap();
    assert_eq!(std::fs::read(input.join("x.png")).unwrap(), before);
}

/// [`Half`] that sets `stop` during its `at`-th call (1-based), as a signal arriving mid-batch would.
struct StopAt {
    calls: std::sync::atomic::AtomicUsize,
    at: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Denoiser for StopAt {
    fn engine(&self) -> String {
        "test/half".into()
    }
    fn predict(&self, x: ArrayView4<f64>, t: &[f64]) -> Result<Array4<f64>> {
        use std::sync::atomic::Ordering;
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.at {
            self.stop.store(true, Ordering::SeqCst);
        }
        Half.predict(x, t)
    }
    fn has_vjp(&self) -> bool {
        true
    }
    fn vjp(
        &self,
        x: ArrayView4<f64>,
        t: &[f64],
        cot: ArrayView4<f64>,
    ) -> Result<(Array4<f64>, Array4<f64>)> {
        Half.vjp(x, t, cot)
    }
}

/// [`Seeded`], then one more network call whose result is unused: the same outputs with two network
/// calls per batch, so a stop can fall between the calls of one batch.
struct TwoCalls;

impl Sampler for TwoCalls {
    fn name(&self) -> &'static str {
        "two-calls"
    }
    fn nfe(&self) -> usize {
        2
    }
    fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        let xs = Seeded.sample(net, problems)?;
        net.eps(&xs, 0.5, 0.8, 0.6)?;
        Ok(xs)
    }
}

#[test]
fn a_stopped_run_finishes_sampled_batches_discards_the_rest_and_resumes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    make_inputs(&input);
    // Batches of 4 in one window: the 13 images of 8x8 first (4, 4, 4, 1), then the 7 of 12x10 (4, 3).
    let s = spec(SPEC, &["runtime.batch_size=4", "runtime.threads=2"]);
    let full = tmp.path().join("full");
    run(&s, info(1, None), &input, &full, None);
    let reference = files(&full);
    assert_eq!(reference.len(), 20);

    // (sampler, network call that stops the run, images restored before the stop). One call per batch:
    // the stop comes during batch 2's call, which completes, so batches 1 and 2 are written. Two calls
    // per batch: the stop comes during batch 2's first call, its second call is refused, and batch 2 is
    // discarded unrecorded. Stop set before the run: nothing is done.
    let cases: [(&dyn Sampler, usize, usize); 3] =
        [(&Seeded, 2, 8), (&TwoCalls, 3, 4), (&Seeded, 0, 0)];
    for (case, (sampler, at, restored)) in cases.into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(at == 0));
        let net = StopAt {
            calls: AtomicUsize::new(0),
            at,
            stop: stop.clone(),
        };
        let engine = Engine {
            model: info(1, None),
            denoiser: &net,
            sampler,
            build_operator: &factory,
        };
        let out = tmp.path().join(format!("out{case}"));
        let opts = RunOptions {
            input: Some(input.clone()),
            output: Some(out.clone()),
            stop: Some(stop),
            ..Default::default()
        };
        let sum = pipeline::run_with(&s, &opts, &engine).unwrap();
        assert!(sum.interrupted, "case {case}");
        assert_eq!(
            (sum.restored, sum.skipped, sum.failed, sum.remaining),
            (restored, 0, 0, 20 - restored),
            "case {case}: {:?}",
            sum.failures
        );
        // Only complete outputs, each exactly the uninterrupted one; no temporaries.
        let got = files(&out);
        assert_eq!(got.len(), restored, "case {case}");
        for g in &got {
            assert!(
                reference.contains(g),
                "case {case}: {} differs",
                g.0.display()
            );
        }
        // The manifest has one restored record per output written, and nothing else.
        let m = manifest(&out);
        assert_eq!(m.len(), restored, "case {case}");
        for r in &m {
            assert_eq!(r["status"], "restored");
            assert!(Path::new(r["output"].as_str().unwrap()).is_file());
        }
        // A rerun does the rest, to the same bytes.
        let sum = run(&s, info(1, None), &input, &out, None);
        assert!(!sum.interrupted);
        assert_eq!(
            (sum.restored, sum.skipped, sum.remaining),
            (20 - restored, restored, 0)
        );
        assert_eq!(
            files(&out),
            reference,
            "case {case}: resumed outputs differ"
        );
        assert_eq!(manifest(&out).len(), 20 + restored);
    }
}

#[test]
fn the_manifest_order_does_not_depend_on_the_overlap() {
    // Decode failures travel through the pipeline in their place: a window's failures come first, then
    // its batches (shape groups in shape order, input order within a group), window after window.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    make_inputs(&input);
    for k in [0, 5, 33] {
        std::fs::write(input.join(format!("b/zz{k}.png")), b"not a png").unwrap();
    }
    let mut orders = Vec::new();
    for (i, (batch, threads)) in [(1, 1), (4, 2), (8, 1)].into_iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let s = spec(
            SPEC,
            &[
                &format!("runtime.batch_size={batch}"),
                &format!("runtime.threads={threads}"),
            ],
        );
        let sum = run(&s, info(1, None), &input, &out, None);
        assert_eq!((sum.restored, sum.failed), (20, 3));
        let m = manifest(&out);
        // Every window (32 inputs: all 23 here) records its 3 failures first, in input order.
        let statuses: Vec<_> = m.iter().map(|r| r["status"].as_str().unwrap()).collect();
        assert_eq!(statuses[..3], ["failed"; 3], "batch {batch}");
        assert!(m[0]["input"].as_str().unwrap().ends_with("b/zz0.png"));
        assert!(m[2]["input"].as_str().unwrap().ends_with("b/zz5.png"));
        let inputs: Vec<String> = m
            .iter()
            .map(|r| r["input"].as_str().unwrap().to_string())
            .collect();
        orders.push(inputs);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
}

#[test]
fn writer_threads_creating_the_same_folders_never_fail_an_image() {
    // Issue 16 item 12: the output-path safety check raced with another writer thread creating the same
    // sub-folder ("… cannot be resolved (a broken link?)"). Many images share a few deep new folders and
    // are written by 8 threads at once, batch after batch, round after round; every image must be restored.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    for k in 0..96 {
        let rel = format!("d{}/e{}/f{}/g/img{k:03}.png", k % 2, k % 3, k % 4);
        write_png(&input.join(rel), pattern(1, 4, 4, k), 8, None, false);
    }
    let s = spec(SPEC, &["runtime.batch_size=32", "runtime.threads=8"]);
    for round in 0..25 {
        let out = tmp.path().join(format!("out{round}"));
        let sum = run(&s, info(1, None), &input, &out, None);
        assert_eq!(
            (sum.restored, sum.failed),
            (96, 0),
            "round {round}: {:?}",
            sum.failures.first()
        );
    }
}

/// x = H†y + z − 0.02 ε̂(H†y + z), with no consistency step of its own: its output disagrees with y.
struct Inconsistent;

impl Sampler for Inconsistent {
    fn name(&self) -> &'static str {
        "inconsistent"
    }
    fn nfe(&self) -> usize {
        1
    }
    fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
        let xs: Vec<Img> = problems
            .iter_mut()
            .map(|p| p.op.pinv(&p.y) + &p.init_noise())
            .collect();
        let eps = net.eps(&xs, 0.5, 0.8, 0.6)?;
        Ok(xs.iter().zip(eps).map(|(x, e)| x - &(e * 0.02)).collect())
    }
}

fn run_inconsistent(spec: &PipelineSpec, channels: usize, input: &Path, output: &Path) {
    let build = |d: &Degradation, shape: [usize; 3]| d.build(shape);
    let engine = Engine {
        model: info(channels, None),
        denoiser: &Half,
        sampler: &Inconsistent,
        build_operator: &build,
    };
    let opts = RunOptions {
        input: Some(input.to_path_buf()),
        output: Some(output.to_path_buf()),
        ..Default::default()
    };
    let sum = pipeline::run_with(spec, &opts, &engine).unwrap();
    assert_eq!((sum.restored, sum.failed), (1, 0), "{:?}", sum.failures);
}

fn norm(a: &Img) -> f64 {
    a.iter().map(|v| v * v).sum::<f64>().sqrt()
}

#[test]
fn restorations_agree_with_the_measurement_for_every_operator() {
    // Issue 16 item 1: after the sampler, x̂ ← x̂ + H†(y − H x̂) (on by default for σ_y = 0). Checked on
    // the raw npy output (before quantization) against y read from the input: H x̂ = H H† y, the
    // projection of y onto the range of H; that is y itself for every operator of full row rank, which all
    // are here but inpainting (H H† y = m ⊙ y: the known pixels) and the thresholded Gaussian blur (whose
    // 1-D singular values fall below 3e-2).
    let tmp = tempfile::tempdir().unwrap();
    let cases: [(&str, usize, usize, bool); 8] = [
        ("operator: denoise", 1, 16, true),
        (
            "operator: inpaint\n  mask: {kind: box, x: 3, y: 4, width: 6, height: 5}",
            1,
            16,
            false,
        ),
        ("operator: sr-average\n  scale: 2", 1, 8, true),
        ("operator: sr-bicubic\n  scale: 2", 1, 8, true),
        ("operator: sr-bicubic\n  scale: 4", 1, 4, true),
        (
            "operator: deblur-gaussian\n  kernel: {size: 9, sigma: 3.0}",
            1,
            16,
            false,
        ),
        ("operator: deblur-uniform\n  kernel: {size: 3}", 1, 16, true),
        ("operator: colorize", 3, 16, true),
    ];
    for (i, (task, channels, size, full_rank)) in cases.into_iter().enumerate() {
        let input = tmp.path().join(format!("in{i}"));
        write_png(
            &input.join("x.png"),
            pattern(1, size, size, i),
            16,
            None,
            false,
        );
        let text = SPEC.replace("operator: denoise", task);
        let y = imageio::to_model(
            &imageio::decode(&input.join("x.png")).unwrap().color,
            [-1.0, 1.0],
        );
        let mut residuals = Vec::new();
        for (k, on) in ["true", "false"].into_iter().enumerate() {
            let s = spec(
                &text,
                &["io.format=npy", &format!("task.data_consistency={on}")],
            );
            let out = tmp.path().join(format!("out{i}-{k}"));
            run_inconsistent(&s, channels, &input, &out);
            let x: Img = imageio::read_npy(&out.join("x.npy"))
                .unwrap()
                .into_dimensionality()
                .unwrap();
            let (_, h, w) = x.dim();
            let mask = pipeline::task_mask(&s, Path::new("x.png"), 0, h, w).unwrap();
            let op = s
                .degradation(mask)
                .unwrap()
                .build([channels, h, w])
                .unwrap();
            let hx = op.forward(&x);
            let range_y = op.forward(&op.pinv(&y));
            residuals.push((norm(&(&hx - &range_y)), norm(&(&hx - &y))));
        }
        let ((on_range, on_y), (off_range, _)) = (residuals[0], residuals[1]);
        let tol = 1e-5 * norm(&y);
        assert!(on_range <= tol, "{task}: |H x - HH+ y| = {on_range:e}");
        if full_rank {
            assert!(on_y <= tol, "{task}: |H x - y| = {on_y:e}");
        }
        // Without the step the same sampler's output disagrees with y (the test can fail).
        assert!(off_range > 1e3 * tol, "{task}: off {off_range:e}");
    }
}

#[test]
fn inpainting_keeps_the_known_pixels_of_an_8_bit_png_bit_for_bit() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    write_png(&input.join("x.png"), pattern(1, 16, 16, 3), 8, None, false);
    let text = SPEC.replace(
        "operator: denoise",
        "operator: inpaint\n  mask: {kind: box, x: 2, y: 5, width: 7, height: 6}",
    );
    let read = |p: &Path| {
        let pic = imageio::decode(p).unwrap();
        assert_eq!(pic.bit_depth, 8);
        pic.color.mapv(|v| (v * 255.0).round() as u8)
    };
    let before = read(&input.join("x.png"));
    for (on, out) in [(true, "on"), (false, "off")] {
        let s = spec(&text, &[&format!("task.data_consistency={on}")]);
        run_inconsistent(&s, 1, &input, &tmp.path().join(out));
        let after = read(&tmp.path().join(out).join("x.png"));
        let (mut known_moved, mut unknown_moved) = (0, 0);
        for ((_, i, j), &a) in after.indexed_iter() {
            let known = !((5..11).contains(&i) && (2..9).contains(&j));
            match known {
                true => known_moved += usize::from(a != before[(0, i, j)]),
                false => unknown_moved += usize::from(a != before[(0, i, j)]),
            }
        }
        assert!(unknown_moved > 0, "{out}: the hole was restored");
        match on {
            true => assert_eq!(known_moved, 0, "known pixels changed"),
            false => assert!(known_moved > 0, "the sampler alone moves known pixels"),
        }
    }
}

fn try_run(spec: &PipelineSpec, opts: RunOptions) -> Result<pipeline::RunSummary> {
    let engine = Engine {
        model: info(1, None),
        denoiser: &Half,
        sampler: &Seeded,
        build_operator: &factory,
    };
    pipeline::run_with(spec, &opts, &engine)
}

#[test]
fn a_rerun_with_other_settings_is_refused_unless_overwriting() {
    // Issue 16 item 5: `run … --set sampler.steps=10` on a finished folder printed "restored 0, skipped
    // 12". Outputs whose manifest record carries another settings hash are not silently kept.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    make_inputs(&input);
    let out = tmp.path().join("out");
    let opts = |overwrite: bool, shard: Option<Shard>| RunOptions {
        input: Some(input.clone()),
        output: Some(out.clone()),
        overwrite,
        shard,
        ..Default::default()
    };
    // A job in two shards sharing the folder (two manifests).
    let first = spec(SPEC, &[]);
    for i in 0..2 {
        let sh = Shard { index: i, count: 2 };
        assert_eq!(try_run(&first, opts(false, Some(sh))).unwrap().restored, 10);
    }
    let before = files(&out);
    let manifests = |d: &Path| {
        let mut v: Vec<_> = std::fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(".jsonl"))
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        v.sort();
        v
    };
    // Same settings, other batch size / threads / no shard: everything skipped.
    let same = spec(SPEC, &["runtime.batch_size=3", "runtime.threads=1"]);
    assert_eq!(same.settings_hash(), first.settings_hash());
    assert_eq!(try_run(&same, opts(false, None)).unwrap().skipped, 20);

    // Other settings: refused, naming both hashes and the ways out, with nothing run or recorded.
    let other = spec(SPEC, &["sampler.steps=10"]);
    let records = manifests(&out);
    for shard in [None, Some(Shard { index: 1, count: 2 })] {
        let e = try_run(&other, opts(false, shard)).unwrap_err().to_string();
        assert!(e.contains(&first.settings_hash()), "{e}");
        assert!(e.contains(&other.settings_hash()), "{e}");
        assert!(
            e.contains("--overwrite") && e.contains("new output folder"),
            "{e}"
        );
        assert!(
            e.contains(if shard.is_none() {
                "20 existing"
            } else {
                "10 existing"
            }),
            "{e}"
        );
        assert_eq!(files(&out), before);
        assert_eq!(manifests(&out), records);
    }
    // A new folder is fine; --overwrite redoes everything, after which the new settings are the folder's.
    let fresh = RunOptions {
        output: Some(tmp.path().join("fresh")),
        ..opts(false, None)
    };
    assert_eq!(try_run(&other, fresh).unwrap().restored, 20);
    assert_eq!(try_run(&other, opts(true, None)).unwrap().restored, 20);
    assert_eq!(try_run(&other, opts(false, None)).unwrap().skipped, 20);
    let e = try_run(&first, opts(false, None)).unwrap_err().to_string();
    assert!(e.contains(&other.settings_hash()), "{e}");
}

/// The network inside the tiling: counts calls and sets the stop flag during call `at` (0 = never).
struct CountingTiles {
    calls: std::sync::atomic::AtomicUsize,
    at: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Denoiser for CountingTiles {
    fn engine(&self) -> String {
        "test/counting-tiles".into()
    }
    fn predict(&self, x: ArrayView4<f64>, _t: &[f64]) -> Result<Array4<f64>> {
        use std::sync::atomic::Ordering;
        assert_eq!(&x.shape()[1..], &[1, 16, 16], "the tiles, not the image");
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n == self.at {
            self.stop.store(true, Ordering::SeqCst);
        }
        Ok(x.mapv(|v| 0.5 * v))
    }
    fn has_vjp(&self) -> bool {
        false
    }
}

/// 100x100 gray PNGs `names` in `dir` (64 tiles of 16x16 overlapping by 4); returns `dir`.
fn big_inputs(dir: &Path, names: &[&str]) -> PathBuf {
    for name in names {
        write_png(&dir.join(name), pattern(1, 100, 100, 1), 8, None, false);
    }
    dir.to_path_buf()
}

#[test]
fn a_stop_takes_effect_within_one_tile_batch_and_progress_moves_per_tile_batch() {
    // Issue 16 item 6: SIGINT during a big SR took 408 s to act (the stop was checked once per network
    // evaluation of the whole image, i.e. after every tile of it), and progress sat at 0/1 images. A
    // 100x100 image in 16x16 tiles overlapping by 4 is 8 x 8 = 64 tiles, 16 calls of 4 per evaluation.
    use conjure::model::tiled::{TileConfig, TiledDenoiser};
    use conjure::pipeline::NetWatch;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let input = big_inputs(&tmp.path().join("in"), &["big.png"]);
    let s = spec(SPEC, &["runtime.batch_size=4", "sampler.jacobian=identity"]);
    let cfg = TileConfig {
        tile_h: 16,
        tile_w: 16,
        overlap: 4,
        batch_size: 4,
    };
    for (case, at) in [0usize, 5].into_iter().enumerate() {
        let stop = Arc::new(AtomicBool::new(false));
        let net = Arc::new(CountingTiles {
            calls: AtomicUsize::new(0),
            at,
            stop: stop.clone(),
        });
        let watch = NetWatch::new(Some(stop.clone()), Some(cfg));
        let (events, tiles) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (e, t) = (events.clone(), tiles.clone());
        watch.listen(Arc::new(move |n| {
            e.fetch_add(1, Ordering::SeqCst);
            t.fetch_add(n, Ordering::SeqCst);
        }));
        let tiled = TiledDenoiser::new(watch.wrap(net.clone()), cfg).unwrap();
        let engine = Engine {
            model: info(1, None),
            denoiser: &tiled,
            sampler: &Seeded,
            build_operator: &factory,
        };
        let opts = RunOptions {
            input: Some(input.clone()),
            output: Some(tmp.path().join(format!("out{case}"))),
            progress: ProgressMode::Log,
            stop: Some(stop),
            watch: Some(watch),
            ..Default::default()
        };
        let sum = pipeline::run_with(&s, &opts, &engine).unwrap();
        let calls = net.calls.load(Ordering::SeqCst);
        if at == 0 {
            // One evaluation (the Seeded sampler's one network call): 64 tiles in 16 calls, each call
            // reported to the listeners.
            assert_eq!(sum.restored, 1);
            assert_eq!(calls, 16);
            assert_eq!(events.load(Ordering::SeqCst), 16);
            assert_eq!(tiles.load(Ordering::SeqCst), 64);
        } else {
            // Stopped during call 5: no tile batch runs after it, the image is discarded, not written.
            assert!(sum.interrupted);
            assert_eq!((sum.restored, sum.failed, sum.remaining), (0, 0, 1));
            assert_eq!(calls, 5, "network calls after the stop");
            assert_eq!(events.load(Ordering::SeqCst), 5);
        }
    }
}

/// A progress view that keeps the batch as it stood at every network call.
#[derive(Debug, Default)]
struct CallLog(std::sync::Mutex<Vec<conjure::pipeline::progress::Batch>>);

impl conjure::pipeline::Progress for CallLog {
    fn call(
        &self,
        _at: &conjure::pipeline::progress::Position,
        b: &conjure::pipeline::progress::Batch,
    ) {
        self.0.lock().unwrap().push(*b);
    }
}

#[test]
fn progress_counts_the_network_calls_of_averaged_draws() {
    // `sampler.samples` = K puts K problems per image through the network in the same calls: a 100x100
    // image in 16x16 tiles (overlap 4) is 64 tiles, so K = 3 draws make 192 tiles per evaluation, in
    // ceil(192 / 6) = 32 calls of 6 (not 3 × ceil(64 / 6) = 33); untiled, one call per evaluation for all
    // K draws. Two such images with runtime.batch_size 4 and K = 3 go through the sampler one image's
    // draws at a time (4 / 3 = 1 image): in tiles of batch 5, 2 × ceil(192 / 5) = 78 calls (not
    // ceil(384 / 5) = 77). The batch's progress must end at its last call, not short of it or past it.
    use conjure::model::tiled::{TileConfig, TiledDenoiser};
    use conjure::pipeline::NetWatch;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let tmp = tempfile::tempdir().unwrap();
    let input = big_inputs(&tmp.path().join("in"), &["big.png"]);
    let two = big_inputs(&tmp.path().join("two"), &["a.png", "b.png"]);
    let cases = [
        (1, Some(6), &input, 11),
        (3, Some(6), &input, 32),
        (3, None, &input, 1),
        (3, Some(5), &two, 78),
    ];
    for (case, (k, tile_batch, dir, want)) in cases.into_iter().enumerate() {
        let tiled = tile_batch.is_some();
        let cfg = TileConfig {
            tile_h: 16,
            tile_w: 16,
            overlap: 4,
            batch_size: tile_batch.unwrap_or(1),
        };
        let s = spec(
            SPEC,
            &[
                "sampler.jacobian=identity",
                "runtime.batch_size=4",
                &format!("sampler.samples={k}"),
            ],
        );
        let counting = Arc::new(CountingTiles {
            calls: AtomicUsize::new(0),
            at: usize::MAX,
            stop: Arc::new(AtomicBool::new(false)),
        });
        let watch = NetWatch::new(None, tiled.then_some(cfg));
        let net: Arc<dyn Denoiser> = if tiled {
            Arc::new(TiledDenoiser::new(watch.wrap(counting.clone()), cfg).unwrap())
        } else {
            watch.wrap(Arc::new(Half))
        };
        let log = Arc::new(CallLog::default());
        let engine = Engine {
            model: info(1, None),
            denoiser: net.as_ref(),
            sampler: &Seeded,
            build_operator: &factory,
        };
        let opts = RunOptions {
            input: Some(dir.clone()),
            output: Some(tmp.path().join(format!("out{case}"))),
            display: Some(log.clone() as Arc<dyn conjure::pipeline::Progress>),
            watch: Some(watch),
            ..Default::default()
        };
        let sum = pipeline::run_with(&s, &opts, &engine).unwrap();
        assert_eq!(sum.restored, if dir == &two { 2 } else { 1 }, "case {case}");
        if tiled {
            assert_eq!(counting.calls.load(Ordering::SeqCst), want, "case {case}");
        }
        let calls = log.0.lock().unwrap().clone();
        assert_eq!(
            calls.len(),
            want,
            "case {case}: one progress event per call"
        );
        let last = calls.last().unwrap();
        assert_eq!((last.calls, last.need), (want, want), "case {case}");
    }
}

#[test]
fn unsupported_image_formats_are_counted_not_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    make_inputs(&input);
    for name in ["scan.bmp", "b/anim.GIF", "b/c/photo.webp"] {
        std::fs::write(input.join(name), b"whatever").unwrap();
    }
    std::fs::write(input.join("notes.txt"), b"not an image").unwrap();
    let sum = run(
        &spec(SPEC, &[]),
        info(1, None),
        &input,
        &tmp.path().join("out"),
        None,
    );
    assert_eq!((sum.restored, sum.failed), (20, 0));
    let names: Vec<String> = sum
        .unsupported
        .iter()
        .map(|p| p.strip_prefix(&input).unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["b/anim.GIF", "b/c/photo.webp", "scan.bmp"]);
    // Shards count them once (the first shard).
    let sh = |i| Some(Shard { index: i, count: 2 });
    let a = run(
        &spec(SPEC, &[]),
        info(1, None),
        &input,
        &tmp.path().join("s"),
        sh(0),
    );
    let b = run(
        &spec(SPEC, &[]),
        info(1, None),
        &input,
        &tmp.path().join("s"),
        sh(1),
    );
    assert_eq!((a.unsupported.len(), b.unsupported.len()), (3, 0));
}

#[test]
fn a_rerun_into_a_folder_whose_manifest_has_the_legacy_settings_hash_resumes() {
    // Manifests written before the canonical settings hash carry the `Debug`-based one; this is the value
    // that version wrote for SPEC (printed by it), so such folders still resume instead of being refused.
    const LEGACY: &str = "f6caf039869d8b88b16d6c30573a39b421e1a8ddf4cf7c9a374473ccfd4e7f91";
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("in");
    make_inputs(&input);
    let out = tmp.path().join("out");
    let opts = RunOptions {
        input: Some(input.clone()),
        output: Some(out.clone()),
        ..Default::default()
    };
    let first = spec(SPEC, &[]);
    assert_ne!(first.settings_hash(), LEGACY);
    assert_eq!(try_run(&first, opts.clone()).unwrap().restored, 20);
    // Rewrite the manifest as the earlier version wrote it.
    let manifest = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".jsonl"))
        .unwrap();
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains(&first.settings_hash()));
    std::fs::write(&manifest, text.replace(&first.settings_hash(), LEGACY)).unwrap();
    assert_eq!(try_run(&first, opts.clone()).unwrap().skipped, 20);
    // Other settings are still refused, naming the legacy hash the folder carries.
    let other = spec(SPEC, &["sampler.steps=10"]);
    let e = try_run(&other, opts).unwrap_err().to_string();
    assert!(e.contains(LEGACY), "{e}");
}

/// `sampler.samples`: C-ΠGDM on an exact Gaussian prior (pixel-wise, so any image size), colorizing two
/// 3×8×8 images in one batch.
mod averaged_samples {
    use conjure::engine::{build_operator, Observation};
    use conjure::model::analytic::GaussianDiffusion;
    use conjure::pipeline::consistency::make_consistent;
    use conjure::samplers::build;
    use conjure::spec::sample_seed;

    use super::*;
    use crate::common::cpigdm::vp_oracle;
    use crate::common::numeric::norm;

    const SPEC: &str = "model: m\ntask: {operator: colorize}\nsampler: {name: c-pigdm, steps: 5, start_time: 0.6}\nseed: 3\n";

    fn prior() -> GaussianDiffusion {
        vp_oracle(
            Img::from_shape_fn((3, 8, 8), |(c, i, j)| {
                0.1 * c as f64 - 0.02 * (i + j) as f64
            }),
            Img::from_elem((3, 8, 8), 0.3),
        )
    }

    fn restore(
        spec: &PipelineSpec,
        ys: &[Img],
        seeds: &[u64],
        zero_noise: bool,
    ) -> (Vec<Img>, usize) {
        let den = prior();
        let sched = ModelSchedule::ddpm_linear_default();
        let sampler = build(&spec.sampler.config, &sched).unwrap();
        let engine = Engine {
            model: info(3, None),
            denoiser: &den,
            sampler: sampler.as_ref(),
            build_operator: &build_operator,
        };
        let op = build_operator(&Degradation::Colorize, [3, 8, 8]).unwrap();
        let zero = Img::zeros((3, 8, 8));
        let batch: Vec<Observation> = ys
            .iter()
            .zip(seeds)
            .map(|(y, &seed)| Observation {
                op: &op,
                y,
                seed,
                init_noise: zero_noise.then_some(&zero),
            })
            .collect();
        let r = engine.restore(spec, &batch, None).unwrap();
        (r.images, r.nfe)
    }

    fn ys() -> Vec<Img> {
        let op = build_operator(&Degradation::Colorize, [3, 8, 8]).unwrap();
        (0..2)
            .map(|k| op.forward(&(pattern(3, 8, 8, k) - 0.5)))
            .collect()
    }

    fn dist(a: &Img, b: &Img) -> f64 {
        norm(&(a - b))
    }

    /// The sampler it wraps, noting how many problems each call gets.
    struct Sizes<'a>(&'a dyn Sampler, std::sync::Mutex<Vec<usize>>);

    impl Sampler for Sizes<'_> {
        fn name(&self) -> &'static str {
            self.0.name()
        }
        fn nfe(&self) -> usize {
            self.0.nfe()
        }
        fn sample(&self, net: &Network, problems: &mut [Problem]) -> Result<Vec<Img>> {
            self.1.lock().unwrap().push(problems.len());
            self.0.sample(net, problems)
        }
    }

    #[test]
    fn the_draws_stay_within_the_batch_size_and_the_split_changes_no_pixel() {
        // 5 images, K = 2: with runtime.batch_size 4 the sampler gets 2 images' draws at a time (4, 4
        // and 2 problems), never 10 at once; the pixels and the NFE are those of one call with all 10.
        let den = prior();
        let sched = ModelSchedule::ddpm_linear_default();
        let op = build_operator(&Degradation::Colorize, [3, 8, 8]).unwrap();
        let ys: Vec<Img> = (0..5)
            .map(|k| op.forward(&(pattern(3, 8, 8, k) - 0.5)))
            .collect();
        let batch: Vec<Observation> = ys
            .iter()
            .enumerate()
            .map(|(i, y)| Observation {
                op: &op,
                y,
                seed: 100 + i as u64,
                init_noise: None,
            })
            .collect();
        let mut got = Vec::new();
        for bs in [4, 64] {
            let s = spec(
                SPEC,
                &["sampler.samples=2", &format!("runtime.batch_size={bs}")],
            );
            let inner = build(&s.sampler.config, &sched).unwrap();
            let sizes = Sizes(inner.as_ref(), Default::default());
            let engine = Engine {
                model: info(3, None),
                denoiser: &den,
                sampler: &sizes,
                build_operator: &build_operator,
            };
            let r = engine.restore(&s, &batch, None).unwrap();
            got.push((r.images, r.nfe, sizes.1.into_inner().unwrap()));
        }
        assert_eq!(got[0].2, [4, 4, 2]);
        assert_eq!(got[1].2, [10]);
        assert_eq!(got[0].1, got[1].1);
        for (a, b) in got[0].0.iter().zip(&got[1].0) {
            assert!(dist(a, b) < 1e-12, "{}", dist(a, b));
        }
    }

    #[test]
    fn the_average_of_k_restorations_is_the_mean_of_the_draws_from_their_own_seeds() {
        let ys = ys();
        let seeds = [17u64, 923];
        let (avg, nfe) = restore(&spec(SPEC, &["sampler.samples=3"]), &ys, &seeds, false);
        let one = spec(SPEC, &[]);
        let (first, nfe1) = restore(&one, &ys, &seeds, false);
        assert_eq!(
            nfe,
            3 * nfe1,
            "K draws cost K times the network evaluations"
        );
        let op = build_operator(&Degradation::Colorize, [3, 8, 8]).unwrap();
        for (i, y) in ys.iter().enumerate() {
            // The reference: three separate `samples: 1` restorations from the seeds of draws 0, 1, 2.
            let draws: Vec<Img> = (0..3)
                .map(|k| {
                    restore(&one, &ys[i..=i], &[sample_seed(seeds[i], k)], false)
                        .0
                        .remove(0)
                })
                .collect();
            assert_eq!(draws[0], first[i], "draw 0 is the samples: 1 restoration");
            assert!(
                dist(&draws[0], &draws[1]) > 0.1,
                "the draws are independent"
            );
            let mean = (&draws[0] + &draws[1] + &draws[2]) / 3.0;
            let d = dist(&avg[i], &mean);
            assert!(
                d < 1e-10,
                "image {i}: the average is {d:e} from the mean of its draws"
            );
            // Still consistent with the measurement after averaging.
            let c = dist(&make_consistent(op.as_ref(), y, &avg[i]), &avg[i]);
            assert!(c < 1e-10, "image {i}: the average left y by {c:e}");
        }
    }

    #[test]
    fn the_average_converges_to_the_noise_free_restoration_as_one_over_root_k() {
        // On a Gaussian prior C-ΠGDM's output is affine in its initial noise z, so the mean over z is the
        // restoration from z = 0, and the average of K independent draws approaches it as 1/√K.
        let ys = ys();
        let seeds = [5u64, 6];
        let (centre, _) = restore(&spec(SPEC, &[]), &ys, &seeds, true);
        let (one, _) = restore(&spec(SPEC, &[]), &ys, &seeds, false);
        let (avg, _) = restore(&spec(SPEC, &["sampler.samples=16"]), &ys, &seeds, false);
        for i in 0..2 {
            let (d1, d16) = (dist(&one[i], &centre[i]), dist(&avg[i], &centre[i]));
            assert!(
                d1 > 0.1,
                "image {i}: the draw does not depend on its noise ({d1})"
            );
            let ratio = d16 / d1;
            // 192 coordinates: the ratio of the two distances concentrates near 1/4.
            assert!(
                (0.12..0.42).contains(&ratio),
                "image {i}: ‖avg16 − x̄‖ / ‖draw − x̄‖ = {ratio}"
            );
        }
    }
}
