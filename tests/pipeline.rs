//! The batch pipeline end to end on real files, with an injected engine: a shape-agnostic linear
//! "network", a small seeded sampler and diagonal operators (denoise / inpaint). Covers determinism across
//! batch sizes and thread counts, failures that do not stop a run, resume after an interrupted run,
//! 16-bit and ICC pass-through, npy output, sharding and the manifest.

use std::path::{Path, PathBuf};

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
