//! `conjure study` (src/study, src/spec/study.rs): the CI smoke study end to end on the shipped models —
//! H†y rows against an independent computation, tuning picks the grid point with the best tuning PSNR and
//! the sweep uses it, every file is written, a rerun restores nothing and writes the same tables — plus
//! spec errors with positions and the IDX reader.

use std::io::Write;
use std::path::{Path, PathBuf};

use conjure::imageio;
use conjure::metrics::psnr;
use conjure::operators::{Degradation, Img, DEFAULT_SVD_THRESHOLD};
use conjure::spec::study::{DataSource, StudySpec};
use conjure::study::{load_images, mean_se, run_study, StudyOptions};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn options(out: &Path) -> StudyOptions {
    StudyOptions {
        out: out.to_path_buf(),
        images: None,
        tune_images: None,
        tasks: None,
        runs: None,
        grid_rows: 4,
        progress: false,
    }
}

/// The first `n` clean test images of the smoke study, in [-1, 1].
fn clean(n: usize) -> Vec<(String, Img)> {
    let dir = root().join("examples/fmnist/clean");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
        .into_iter()
        .take(n)
        .map(|name| {
            let pic = imageio::decode(&dir.join(&name)).unwrap();
            (name, pic.color.mapv(|v| 2.0 * v - 1.0))
        })
        .collect()
}

#[test]
fn smoke_study_end_to_end() {
    let spec = StudySpec::load(&root().join("pipelines/experiments/smoke.yaml")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("smoke");
    let report = run_study(&spec, &options(&out)).unwrap();

    // 2 tasks × (c-pigdm in 3 Jacobian modes + 8 other runs), every one restored without divergence.
    assert_eq!(report.test.len(), 22);
    assert!(report.test.iter().all(|r| r.error.is_none()));
    assert!(report
        .test
        .iter()
        .all(|r| r.images.len() == 4 && r.psnr.iter().all(|p| p.is_some_and(f64::is_finite))));

    // H†y rows: recomputed here from the clean files with the operators alone (noiseless, so y = Hx).
    let images = clean(4);
    for (task, deg) in [
        (
            "sr4-bicubic",
            Degradation::SrBicubic {
                scale: 4,
                threshold: DEFAULT_SVD_THRESHOLD,
            },
        ),
        (
            "inpaint-box",
            Degradation::Inpaint {
                mask: {
                    let mut m = ndarray::Array2::ones((32, 32));
                    m.slice_mut(ndarray::s![8..24, 8..24]).fill(0.0);
                    m
                },
            },
        ),
    ] {
        let row = report
            .test
            .iter()
            .find(|r| r.task == task && r.run == "pinv")
            .unwrap();
        let op = deg.build([1, 32, 32]).unwrap();
        for ((name, x), got) in images.iter().zip(&row.psnr) {
            let xh = op.pinv(&op.forward(x)).mapv(|v| v.clamp(-1.0, 1.0));
            let want = psnr(
                &x.mapv(|v| (v + 1.0) / 2.0),
                &xh.mapv(|v| (v + 1.0) / 2.0),
                1.0,
            )
            .unwrap();
            assert!(
                (got.unwrap() - want).abs() < 1e-9,
                "{task} {name}: study {got:?}, direct {want}"
            );
        }
        // The guided samplers must beat H†y on average here (they use the prior; H†y does not).
        let cpigdm = report
            .test
            .iter()
            .find(|r| r.task == task && r.run == "c-pigdm" && r.jacobian == "exact")
            .unwrap();
        assert!(
            cpigdm.mean_psnr() > row.mean_psnr(),
            "{task}: c-pigdm vs pinv"
        );
        // The mean of two draws costs two draws' network evaluations and is still a restoration.
        let mean2 = report
            .test
            .iter()
            .find(|r| r.task == task && r.run == "c-pigdm-mean2")
            .unwrap();
        assert_eq!(mean2.nfe, 10, "{task}: 2 samples × 5 steps");
        assert!(
            mean2.mean_psnr() > row.mean_psnr(),
            "{task}: c-pigdm-mean2 vs pinv"
        );
    }

    // Tuning: the chosen point is the best on the tuning images, and the sweep runs with it.
    for ((task, run), chosen) in &report.chosen {
        let tuned: Vec<_> = report
            .tuning
            .iter()
            .filter(|r| &r.task == task && &r.run == run)
            .collect();
        if tuned.is_empty() {
            assert!(chosen.is_empty());
            continue;
        }
        assert_eq!(tuned.len(), 2, "{task} {run}: two grid points");
        assert!(tuned.iter().all(|r| r.images.len() == 4));
        // The best mean PSNR among the points whose raw outputs stay within ±1.2, else among all.
        let in_range: Vec<_> = tuned
            .iter()
            .copied()
            .filter(|r| r.error.is_none() && r.overshoot.iter().all(|&o| o <= 0.2))
            .collect();
        assert!(tuned.iter().all(|r| r.overshoot.len() == 4));
        let pool = if in_range.is_empty() {
            &tuned
        } else {
            &in_range
        };
        let best = pool
            .iter()
            .max_by(|a, b| a.mean_psnr().total_cmp(&b.mean_psnr()))
            .unwrap();
        assert_eq!(&best.settings, chosen, "{task} {run}");
        for r in report
            .test
            .iter()
            .filter(|r| &r.task == task && &r.run == run)
        {
            assert_eq!(&r.settings, chosen);
        }
    }
    // Tuning never sees a test image: the two sets share no picture (file names may coincide: both folders
    // name images <label>-<index in their split>).
    let tune = load_images(spec.tune.as_ref().unwrap(), 1, [-1.0, 1.0]).unwrap();
    let test = load_images(&spec.test, 1, [-1.0, 1.0]).unwrap();
    assert!(tune.iter().all(|a| test.iter().all(|b| a.x != b.x)));
    assert!(report
        .tuning
        .iter()
        .all(|r| r.images == tune.iter().map(|s| s.name.clone()).collect::<Vec<_>>()));

    // Files.
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 23); // header + 22 rows
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(md.contains("## sr4-bicubic") && md.contains("## inpaint-box"));
    let svg = std::fs::read_to_string(out.join("psnr-vs-nfe.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("NFE") && svg.contains("c-pigdm"));
    for task in ["sr4-bicubic", "inpaint-box"] {
        let grid = image::open(out.join(format!("grid-{task}.png"))).unwrap();
        assert!(grid.width() > 8 * 128 && grid.height() > 4 * 128);
    }
    let (m, se) = mean_se(&[1.0, 2.0, 3.0]);
    assert!((m - 2.0).abs() < 1e-15 && (se - (1.0f64 / 3.0).sqrt()).abs() < 1e-15);

    // A rerun takes everything from the record and writes the same tables.
    let again = run_study(&spec, &options(&out)).unwrap();
    assert_eq!(again.restored, 0);
    assert_eq!(
        std::fs::read_to_string(out.join("results.csv")).unwrap(),
        csv
    );
    assert_eq!(std::fs::read_to_string(out.join("results.md")).unwrap(), md);
}

fn parse_err(text: &str) -> String {
    let dir = root().join("pipelines/experiments");
    StudySpec::parse(text, &dir.join("t.yaml"), &dir)
        .unwrap_err()
        .to_string()
}

const HEAD: &str = "version: 1
models: {diffusion: ../../models/fmnist-ddpm}
data: {test: {dir: ../../examples/fmnist/clean, count: 2}}
tasks:
  sr: {operator: sr-bicubic, scale: 4}
";

#[test]
fn spec_errors_name_the_place() {
    let e = parse_err(&format!("{HEAD}runz: []\n"));
    assert!(
        e.contains("unknown key `runz`") && e.contains("did you mean `runs`"),
        "{e}"
    );
    let e = parse_err(&format!(
        "{HEAD}runs:\n  - sampler: {{name: c-pigdm, steps: 5}}\n    nfe: [5]\n"
    ));
    assert!(e.contains("t.yaml:7:") && e.contains("`nfe`"), "{e}");
    let e = parse_err(&format!(
        "{HEAD}runs:\n  - sampler: {{name: c-pigdm}}\n    nfe: [5]\n    tune: {{nfe: 5, grid: {{guidance: [5, -1]}}}}\n"
    ));
    assert!(
        e.contains("t.yaml:9:") && e.contains("invalid guidance -1"),
        "{e}"
    );
    let e = parse_err(&format!(
        "{HEAD}runs:\n  - sampler: {{name: c-pigfm}}\n    nfe: [5]\n"
    ));
    assert!(e.contains("needs a flow model"), "{e}");
    let e = parse_err(&format!(
        "{HEAD}runs:\n  - sampler: {{name: ddrm}}\n    nfe: [5]\n    tasks: [sr, nope]\n"
    ));
    assert!(
        e.contains("invalid task \"nope\"") && e.contains("one of sr"),
        "{e}"
    );
    let e = parse_err(&format!("{HEAD}runs:\n  - sampler: {{name: ddrm}}\n"));
    assert!(e.contains("missing key `nfe`"), "{e}");
    let e = parse_err(&format!(
        "{}runs:\n  - sampler: {{name: ddrm}}\n    nfe: [5]\n",
        HEAD.replace("scale: 4", "scale: 1")
    ));
    assert!(
        e.contains("t.yaml:5:") && e.contains("invalid scale 1"),
        "{e}"
    );
    // A good spec parses, with the run's configurations in sweep order.
    let dir = root().join("pipelines/experiments");
    let s = StudySpec::parse(
        &format!(
            "{HEAD}runs:\n  - sampler: {{name: c-pigdm}}\n    nfe: [5, 10, 20]\n    jacobian: [exact, identity]\n    jacobian_nfe: [5]\n"
        ),
        &dir.join("t.yaml"),
        &dir,
    )
    .unwrap();
    use conjure::model::JacobianMode::{Exact, Identity};
    assert_eq!(
        s.runs[0].configs(),
        vec![(5, Exact), (10, Exact), (20, Exact), (5, Identity)]
    );
}

fn idx_bytes(n: u32, rows: u32, cols: u32) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for v in [n, rows, cols] {
        b.extend(v.to_be_bytes());
    }
    b.extend((0..n * rows * cols).map(|i| (i * 17 % 256) as u8));
    b
}

#[test]
fn idx_reader_pads_scales_and_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let raw = tmp.path().join("imgs-idx3-ubyte");
    std::fs::write(&raw, idx_bytes(3, 2, 3)).unwrap();
    let gz = tmp.path().join("imgs-idx3-ubyte.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(&idx_bytes(3, 2, 3)).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    for path in [&raw, &gz] {
        let src = DataSource::Idx {
            path: path.clone(),
            first: 1,
            count: 2,
            pad: 1,
        };
        let imgs = load_images(&src, 1, [-1.0, 1.0]).unwrap();
        assert_eq!(imgs.len(), 2);
        assert_eq!(imgs[0].name, "00001");
        assert_eq!(imgs[1].x.dim(), (1, 4, 5));
        // Image 1, pixel (r, q) is byte 6 + 3r + q; padding is black (−1).
        for r in 0..4 {
            for q in 0..5 {
                let want = if (1..3).contains(&r) && (1..4).contains(&q) {
                    let i = 6 + 3 * (r - 1) + (q - 1);
                    2.0 * ((i * 17 % 256) as f64 / 255.0) - 1.0
                } else {
                    -1.0
                };
                assert!((imgs[0].x[[0, r, q]] - want).abs() < 1e-12);
            }
        }
    }
    let e = load_images(
        &DataSource::Idx {
            path: raw.clone(),
            first: 2,
            count: 2,
            pad: 0,
        },
        1,
        [-1.0, 1.0],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("2..4") && e.contains("3 images"), "{e}");
    let bad = tmp.path().join("cut.idx");
    std::fs::write(&bad, &idx_bytes(3, 2, 3)[..20]).unwrap();
    let e = load_images(
        &DataSource::Idx {
            path: bad.clone(),
            first: 0,
            count: 1,
            pad: 0,
        },
        1,
        [-1.0, 1.0],
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("cut.idx") && e.contains("truncated"), "{e}");
}

/// `data.quantize`: 8 or 16 bits only; y lands on the 2^bits − 1 levels of the value range, clipped, and a
/// quantized measurement differs from the f64 one by at most half a level.
#[test]
fn quantize_option_rounds_y_to_file_levels() {
    use conjure::study::quantize;
    let dir = root().join("pipelines/experiments");
    let with = |q: &str| {
        format!(
            "version: 1\nmodels: {{diffusion: ../../models/fmnist-ddpm}}\ndata: {{test: {{dir: ../../examples/fmnist/clean, count: 2}}, quantize: {q}}}\ntasks:\n  sr: {{operator: sr-bicubic, scale: 4}}\nruns:\n  - sampler: {{name: pinv}}\n    nfe: [1]\n"
        )
    };
    let e = parse_err(&with("12"));
    assert!(e.contains("quantize") && e.contains("8 or 16"), "{e}");
    for bits in [8u32, 16] {
        let s = StudySpec::parse(&with(&bits.to_string()), &dir.join("t.yaml"), &dir).unwrap();
        assert_eq!(s.quantize, Some(bits));
    }
    assert_eq!(
        StudySpec::parse(
            &format!("{HEAD}runs:\n  - sampler: {{name: pinv}}\n    nfe: [1]\n"),
            &dir.join("t.yaml"),
            &dir
        )
        .unwrap()
        .quantize,
        None
    );
    let y = Img::from_shape_vec((1, 1, 5), vec![-1.3, -1.0, 0.1234567, 0.999, 2.0]).unwrap();
    for bits in [8u32, 16] {
        let levels = ((1u64 << bits) - 1) as f64;
        let q = quantize(&y, bits, [-1.0, 1.0]);
        for (&a, &b) in y.iter().zip(&q) {
            let k = (b + 1.0) / 2.0 * levels;
            assert!(
                (k - k.round()).abs() < 1e-9,
                "{b} is not on a {bits}-bit level"
            );
            assert!((-1.0..=1.0).contains(&b));
            if (-1.0..=1.0).contains(&a) {
                assert!((a - b).abs() <= 1.0 / levels + 1e-12, "{a} → {b}");
            }
        }
        assert_eq!(q[[0, 0, 0]], -1.0);
        assert_eq!(q[[0, 0, 4]], 1.0);
    }
}

/// A study's record is keyed by the model's files too: retraining a model in place (new weights in the same
/// folder, whatever the weights file is called) restores again, while editing the folder's README does not.
#[test]
fn a_rerun_after_new_weights_restores_again() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("m");
    std::fs::create_dir(&model).unwrap();
    for e in std::fs::read_dir(root().join("models/fmnist-ddpm")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, model.join(p.file_name().unwrap())).unwrap();
    }
    let text = format!(
        "version: 1\nmodels: {{diffusion: {}}}\ndata: {{test: {{dir: {}, count: 1}}}}\ntasks:\n  sr: {{operator: sr-bicubic, scale: 4}}\nruns:\n  - sampler: {{name: c-pigdm}}\n    nfe: [2]\n",
        model.display(),
        root().join("examples/fmnist/clean").display()
    );
    let spec = StudySpec::parse(&text, &tmp.path().join("s.yaml"), tmp.path()).unwrap();
    let out = tmp.path().join("out");
    let first = run_study(&spec, &options(&out)).unwrap();
    assert_eq!(first.restored, 1);
    std::fs::write(model.join("README.md"), "notes\n").unwrap();
    assert_eq!(run_study(&spec, &options(&out)).unwrap().restored, 0);
    // New weights: the last float of weights.bin (a bias) changes.
    let w = model.join("weights.bin");
    let mut bytes = std::fs::read(&w).unwrap();
    let n = bytes.len();
    let v = f32::from_le_bytes(bytes[n - 4..].try_into().unwrap()) + 0.5;
    bytes[n - 4..].copy_from_slice(&v.to_le_bytes());
    std::fs::write(&w, bytes).unwrap();
    let again = run_study(&spec, &options(&out)).unwrap();
    assert_eq!(again.restored, 1);
    assert_ne!(again.test[0].key, first.test[0].key);
    // External weights may have any name: a changed `*.onnx.data` beside the graphs is a new key as well.
    std::fs::write(model.join("denoiser.onnx.data"), [1u8, 2, 3]).unwrap();
    assert_eq!(run_study(&spec, &options(&out)).unwrap().restored, 1);
    std::fs::write(model.join("denoiser.onnx.data"), [1u8, 2, 4]).unwrap();
    assert_eq!(run_study(&spec, &options(&out)).unwrap().restored, 1);
    assert_eq!(run_study(&spec, &options(&out)).unwrap().restored, 0);
}

/// `tuning.max_overshoot`: defaults to the Fashion-MNIST rule (0.2), takes a non-negative number, and
/// rejects anything else or an unknown key with the spec's line and column.
#[test]
fn tuning_max_overshoot_option_parses() {
    let dir = root().join("pipelines/experiments");
    let runs = "runs:\n  - sampler: {name: pinv}\n    nfe: [1]\n";
    let parse = |tuning: &str| {
        StudySpec::parse(&format!("{HEAD}{tuning}{runs}"), &dir.join("t.yaml"), &dir)
    };
    assert_eq!(
        parse("").unwrap().max_overshoot,
        conjure::spec::study::DEFAULT_MAX_OVERSHOOT
    );
    assert_eq!(
        parse("tuning: {max_overshoot: 0.5}\n")
            .unwrap()
            .max_overshoot,
        0.5
    );
    assert_eq!(parse("tuning: {}\n").unwrap().max_overshoot, 0.2);
    let e = parse("tuning: {max_overshoot: -1}\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_overshoot") && e.contains(">= 0"), "{e}");
    let e = parse("tuning: {max_overshot: 1}\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("max_overshot") && e.contains("max_overshoot"),
        "{e}"
    );
}

/// Tuning's choice: the best mean PSNR among points whose worst raw output stays within 0.2 of the range;
/// the best overall only when none does; a diverged point never wins over a finite one.
#[test]
fn tuning_prefers_points_that_stay_in_range() {
    use conjure::study::{choose, ConfigResult};
    let point = |psnr: f64, overshoot: f64, error: bool| ConfigResult {
        key: String::new(),
        phase: "tune".into(),
        task: "t".into(),
        run: "r".into(),
        sampler: "c-pigdm".into(),
        jacobian: "exact".into(),
        nfe: 5,
        settings: vec![],
        images: vec!["a".into(), "b".into()],
        psnr: vec![Some(psnr), Some(psnr)],
        ssim: vec![0.5, 0.5],
        consistency: vec![0.1, 0.1],
        overshoot: vec![0.0, overshoot],
        seconds: 1.0,
        error: error.then(|| "diverged".into()),
    };
    // 21 dB but one image reaches 3.0 beyond the range: the in-range 19 dB point wins.
    let pts = [
        point(19.0, 0.1, false),
        point(21.0, 3.0, false),
        point(18.0, 0.0, false),
    ];
    let max = conjure::spec::study::DEFAULT_MAX_OVERSHOOT;
    assert_eq!(choose(&pts, max), Some(0));
    // None in range: the best mean.
    let pts = [point(19.0, 0.5, false), point(21.0, 3.0, false)];
    assert_eq!(choose(&pts, max), Some(1));
    // A wider bound (`tuning.max_overshoot`, a photo study's rule) admits the 0.5 overshoot but not 3.0.
    let pts = [
        point(19.0, 0.1, false),
        point(20.0, 0.5, false),
        point(21.0, 3.0, false),
    ];
    assert_eq!(choose(&pts, max), Some(0));
    assert_eq!(choose(&pts, 0.5), Some(1));
    assert_eq!(choose(&pts, 1.0), Some(1));
    assert_eq!(choose(&pts, 3.0), Some(2));
    // A diverged point is not in range and has −∞ mean.
    let pts = [point(30.0, 0.0, true), point(12.0, 0.0, false)];
    assert_eq!(choose(&pts, max), Some(1));
    assert_eq!(choose(&[], max), None);
}
