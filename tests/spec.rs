//! The pipeline spec: every shipped spec parses, errors point at line:col and name the constraint,
//! unknown keys get suggestions, overrides apply before validation, paths resolve against the spec file.

use std::path::{Path, PathBuf};

use conjure::model::{EngineChoice, JacobianMode, Provider};
use conjure::operators::Degradation;
use conjure::samplers::SamplerName;
use conjure::spec::{
    BitDepth, MaskSpec, OperatorKind, OutputFormat, Override, PipelineSpec, TileSize,
};

fn parse(text: &str) -> Result<PipelineSpec, String> {
    PipelineSpec::parse(text, "spec.yaml", Path::new("/specs"), &[]).map_err(|e| e.to_string())
}

fn parse_with(text: &str, sets: &[&str]) -> Result<PipelineSpec, String> {
    let ov: Vec<Override> = sets.iter().map(|s| Override::parse(s).unwrap()).collect();
    PipelineSpec::parse(text, "spec.yaml", Path::new("/specs"), &ov).map_err(|e| e.to_string())
}

const FULL: &str = r#"version: 1
model: ../models/fmnist-ddpm
task:
  operator: sr-bicubic
  scale: 4
  noise_sigma: 0.05
sampler:
  name: c-pigdm
  steps: 5
  guidance: 15.0
  lambda: 0.0
  start_time: 0.4
  jacobian: finite-difference
  init_noise: null
seed: 7
runtime:
  engine: tract
  providers: [cuda, cpu]
  batch_size: 4
  threads: 2
  tile: {size: model, overlap: 4}
io:
  input: ../examples/sr4
  output: /abs/out
  format: tiff
  bit_depth: 16
  skip_existing: false
"#;

#[test]
fn every_shipped_pipeline_parses_and_points_at_the_shipped_models() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("pipelines");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let s = PipelineSpec::load(&p, &[]).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        // `../models/…` relative to the spec file, resolved (and normalized) to the repository's models/.
        assert!(
            s.model.starts_with(root.join("models")),
            "{}",
            s.model.display()
        );
        let model = s.model.file_name().unwrap().to_str().unwrap();
        assert_eq!(
            model == "fmnist-flow",
            s.sampler.config.name.needs_flow(),
            "{}: sampler {} on {model}",
            p.display(),
            s.sampler.config.name.as_str()
        );
        assert!(s
            .io
            .input
            .as_ref()
            .unwrap()
            .starts_with(root.join("examples")));
        assert!(s.io.output.as_ref().unwrap().starts_with(root.join("out")));
        n += 1;
    }
    assert!(n >= 12, "only {n} specs");
    let demo = PipelineSpec::load(&dir.join("sr4-c-pigdm.yaml"), &[]).unwrap();
    assert_eq!(demo.task.operator, OperatorKind::SrBicubic);
    assert_eq!(demo.sampler.config.name, SamplerName::CPigdm);
}

#[test]
fn a_full_spec_is_read_exactly() {
    let s = parse(FULL).unwrap();
    assert_eq!(s.model, PathBuf::from("/models/fmnist-ddpm"));
    assert_eq!(s.task.scale, 4);
    assert_eq!(s.task.noise_sigma, 0.05);
    assert_eq!(s.sampler.config.steps, Some(5));
    assert_eq!(s.sampler.config.jacobian, JacobianMode::FiniteDifference);
    assert_eq!(s.sampler.init_noise, None);
    assert_eq!(s.seed, 7);
    assert_eq!(s.runtime.engine, EngineChoice::Tract);
    assert_eq!(s.runtime.providers, vec![Provider::Cuda, Provider::Cpu]);
    assert_eq!(s.runtime.tile_size, TileSize::Model);
    assert_eq!(s.runtime.tile_overlap, 4);
    assert_eq!(s.io.input, Some(PathBuf::from("/examples/sr4")));
    assert_eq!(s.io.output, Some(PathBuf::from("/abs/out")));
    assert_eq!(s.io.format, OutputFormat::Tiff);
    assert_eq!(s.io.bit_depth, BitDepth::Sixteen);
    assert!(!s.io.skip_existing);
    let cfg = s.sampler_config();
    assert_eq!(cfg.guidance, Some(15.0));
    assert_eq!(cfg.eta, None, "unset keys take the sampler's default");
    let opts = s.runtime_options();
    assert_eq!((opts.batch_size, opts.threads), (4, 2));
    match s.degradation(None).unwrap() {
        Degradation::SrBicubic { scale, threshold } => {
            assert_eq!(scale, 4);
            assert_eq!(threshold, conjure::operators::DEFAULT_SVD_THRESHOLD);
        }
        d => panic!("{d:?}"),
    }
}

#[test]
fn errors_point_at_line_and_column() {
    // A YAML syntax error.
    let e = parse("model: m\ntask: [unclosed\n").unwrap_err();
    assert!(e.starts_with("spec.yaml:"), "{e}");
    let pos: Vec<&str> = e.splitn(4, ':').collect();
    assert!(
        pos[1].parse::<u32>().is_ok() && pos[2].parse::<u32>().is_ok(),
        "{e}"
    );
    // A value out of range: the value's own position.
    let e = parse(&FULL.replace("steps: 5", "steps: 0")).unwrap_err();
    assert_eq!(e, "spec.yaml:9:10: invalid steps 0 (expected 1..=100000)");
    let e = parse(&FULL.replace("batch_size: 4", "batch_size: -3")).unwrap_err();
    assert_eq!(
        e,
        "spec.yaml:19:15: invalid batch_size -3 (expected 1..=4096)"
    );
    let e = parse(&FULL.replace("guidance: 15.0", "guidance: lots")).unwrap_err();
    assert_eq!(
        e,
        "spec.yaml:10:13: invalid guidance \"lots\" (expected a number)"
    );
    let e = parse(&FULL.replace("noise_sigma: 0.05", "noise_sigma: -1")).unwrap_err();
    assert!(
        e.contains("invalid noise_sigma -1 (expected a finite value >= 0)"),
        "{e}"
    );
    let e = parse(&FULL.replace("bit_depth: 16", "bit_depth: 12")).unwrap_err();
    assert!(
        e.starts_with("spec.yaml:26:14: invalid bit_depth 12"),
        "{e}"
    );
}

#[test]
fn unknown_keys_and_names_get_suggestions() {
    let e = parse(&FULL.replace("guidance:", "guidence:")).unwrap_err();
    assert!(
        e.starts_with("spec.yaml:10:3: unknown key `guidence` in `sampler`"),
        "{e}"
    );
    assert!(e.contains("did you mean `guidance`?"), "{e}");
    let e = parse(&FULL.replace("runtime:", "runtiem:")).unwrap_err();
    assert!(e.contains("did you mean `runtime`?"), "{e}");
    let e = parse(&format!("{FULL}batch_size: 3\n")).unwrap_err();
    assert!(e.contains("did you mean `runtime.batch_size`?"), "{e}");
    let e = parse(&FULL.replace("name: c-pigdm", "name: c-pgdm")).unwrap_err();
    assert!(e.contains("invalid sampler \"c-pgdm\""), "{e}");
    assert!(e.contains("did you mean `c-pigdm`?"), "{e}");
    let e = parse(&FULL.replace("operator: sr-bicubic", "operator: sr-bicubc")).unwrap_err();
    assert!(e.contains("did you mean `sr-bicubic`?"), "{e}");
    let e = parse(&FULL.replace(
        "tile: {size: model, overlap: 4}",
        "tile: {size: model, overlpa: 4}",
    ))
    .unwrap_err();
    assert!(e.contains("unknown key `overlpa` in `runtime.tile`"), "{e}");
    assert!(e.contains("did you mean `overlap`?"), "{e}");
}

#[test]
fn task_keys_are_checked_against_the_operator() {
    let e = parse(&FULL.replace("  scale: 4\n", "")).unwrap_err();
    assert!(e.contains("missing key `scale`"), "{e}");
    let e = parse(&FULL.replace("sr-bicubic", "denoise")).unwrap_err();
    assert!(
        e.contains("key `scale` does not apply to operator denoise"),
        "{e}"
    );
    let inpaint = FULL.replace("operator: sr-bicubic\n  scale: 4", "operator: inpaint");
    let e = parse(&inpaint).unwrap_err();
    assert!(e.contains("missing key `mask`"), "{e}");
    let boxed = inpaint.replace(
        "operator: inpaint",
        "operator: inpaint\n  mask: {kind: box, x: 1, y: 2, width: 3, height: 4}",
    );
    let s = parse(&boxed).unwrap();
    assert_eq!(
        s.task.mask,
        Some(MaskSpec::Box {
            x: 1,
            y: 2,
            width: 3,
            height: 4
        })
    );
    let e = parse(&boxed.replace("height: 4", "fraction: 0.5")).unwrap_err();
    assert!(
        e.contains("key `fraction` does not apply to mask kind box"),
        "{e}"
    );
    let file = parse(&inpaint.replace(
        "operator: inpaint",
        "operator: inpaint\n  mask: {kind: file, path: masks/m.png}",
    ))
    .unwrap();
    assert_eq!(
        file.task.mask,
        Some(MaskSpec::File {
            path: PathBuf::from("/specs/masks/m.png")
        })
    );
    let e = parse(&inpaint.replace(
        "operator: inpaint",
        "operator: inpaint\n  mask: {kind: random, fraction: 1.0}",
    ))
    .unwrap_err();
    assert!(
        e.contains("invalid mask fraction 1.0 (expected a value in [0, 1))")
            || e.contains("invalid mask fraction 1 (expected a value in [0, 1))"),
        "{e}"
    );
    let blur = FULL.replace(
        "operator: sr-bicubic\n  scale: 4",
        "operator: deblur-gaussian\n  kernel: {size: 8, sigma: 1.5}",
    );
    let e = parse(&blur).unwrap_err();
    assert!(
        e.contains("invalid kernel size 8 (expected an odd number of taps)"),
        "{e}"
    );
    let s = parse(&blur.replace("size: 8", "size: 9")).unwrap();
    assert!(matches!(
        s.degradation(None).unwrap(),
        Degradation::DeblurGaussian { size: 9, sigma, .. } if sigma == 1.5
    ));
}

#[test]
fn overrides_apply_before_validation_with_yaml_types() {
    let s = parse_with(
        FULL,
        &[
            "sampler.steps=12",
            "sampler.variant=noisy",
            "runtime.providers=[cpu]",
            "io.skip_existing=true",
            "io.output=rel/out",
            "seed=99",
        ],
    )
    .unwrap();
    assert_eq!(s.sampler.config.steps, Some(12));
    assert_eq!(
        s.sampler.config.variant.map(|v| v.to_string()).as_deref(),
        Some("noisy")
    );
    assert_eq!(s.runtime.providers, vec![Provider::Cpu]);
    assert!(s.io.skip_existing);
    // Command-line paths are relative to the working directory, not the spec.
    assert_eq!(s.io.output, Some(PathBuf::from("rel/out")));
    assert_eq!(s.seed, 99);
    // Overrides can create sections and are validated like the file.
    let minimal = "model: m\ntask: {operator: denoise}\nsampler: {name: ddrm}\n";
    let s = parse_with(minimal, &["runtime.tile.overlap=2"]).unwrap();
    assert_eq!(s.runtime.tile_overlap, 2);
    let e = parse_with(FULL, &["sampler.steps=-1"]).unwrap_err();
    assert_eq!(
        e,
        "--set sampler.steps=-1: invalid steps -1 (expected 1..=100000)"
    );
    let e = parse_with(FULL, &["sampler.stepz=3"]).unwrap_err();
    assert!(e.contains("did you mean `steps`?"), "{e}");
    let e = parse_with(FULL, &["seed.x=3"]).unwrap_err();
    assert!(e.contains("`seed` is not a mapping"), "{e}");
    assert!(Override::parse("no-equals-sign").is_err());
}

#[test]
fn spec_hash_follows_the_resolved_settings() {
    let a = parse(FULL).unwrap();
    let b = parse(&FULL.replace("steps: 5", "steps: 5 # same")).unwrap();
    let c = parse_with(FULL, &["sampler.steps=6"]).unwrap();
    assert_eq!(a.hash(), b.hash());
    assert_ne!(a.hash(), c.hash());
    assert_eq!(a.hash().len(), 64);
}
