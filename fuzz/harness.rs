//! The checks behind the fuzz targets, shared word for word by the targets (`fuzz/fuzz_targets/*.rs`)
//! and by `tests/fuzz_regressions.rs`, which replays the seed corpus and every saved crash under plain
//! `cargo test` (both include this file with `#[path]`, so it has no crate of its own).
//!
//! Each check feeds bytes to the same library functions that `conjure run` / `conjure validate` use and
//! panics when an invariant breaks; returning an [`Outcome`] with the error is fine (bad input is
//! allowed to be refused, never to crash).
//!
//! * [`spec`]: bytes → [`PipelineSpec::parse`] with `--set` overrides ([`Override::parse`]). An accepted
//!   spec must survive a round trip (written back as YAML + `--set`, parsed again, equal and with the
//!   same hash), and the steps after parsing — the degradation, generated masks, building the sampler —
//!   must not panic.
//! * [`decode`]: bytes → [`imageio::decode_bytes_limited`] (PNG / TIFF / JPEG, chosen by content as the
//!   pipeline does) or [`imageio::read_npy_bytes`] (`.npy`, for `init_noise`). A decoded picture must
//!   have 1 or 3 colour channels, a non-empty size within the pixel limit, an alpha plane of the same
//!   size, finite samples (in [0, 1] for PNG and JPEG), and re-encode to PNG losslessly.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use conjure::imageio::{self, EncodeOptions, FileFormat};
use conjure::model::{EngineChoice, Provider};
use conjure::samplers::{self, ModelSchedule};
use conjure::spec::{
    BitDepth, MaskSpec, OperatorKind, OutputFormat, Override, PipelineSpec, Side, TileSize,
};

/// The name spec errors must carry (as `conjure validate FILE` names the file).
pub const SPEC_FILE: &str = "fuzz-spec.yaml";
/// The directory relative paths in the spec resolve against.
pub const SPEC_BASE: &str = "/fuzz/base";
/// The name image errors must carry.
pub const IMAGE_FILE: &str = "fuzz-input.bin";
/// Pixel limit of the decode target: 2²⁰ (1 Mpx, ~50 MB peak while decoding) instead of
/// [`imageio::MAX_PIXELS`], so that libFuzzer's `-rss_limit_mb=2048` flags any allocation that the
/// declared size does not bound, and a large declared size costs the fuzzer little time. The limit
/// check itself is the same code.
pub const FUZZ_MAX_PIXELS: u64 = 1 << 20;
/// Pictures up to this many pixels are re-encoded (the round trip is about the samples, which small
/// pictures exercise as well; large ones would only slow the fuzzer down).
const MAX_ROUND_TRIP_PIXELS: usize = 1 << 16;
/// At most this many `--set` overrides are taken from one input.
const MAX_OVERRIDES: usize = 8;
/// Samplers are built only up to this many steps (building is linear in the steps and must stay fast
/// enough for the fuzzer; the parser's own limit is 100 000).
const MAX_BUILD_STEPS: usize = 256;

/// What a check did with its input.
#[derive(Debug)]
pub enum Outcome {
    /// The input was accepted and every invariant held.
    Accepted,
    /// The input was refused with this error (a normal outcome for bad input).
    Rejected(conjure::Error),
}

// ---------------------------------------------------------------------------------------------------
// spec

/// Split a fuzz input into the spec text and its `--set` arguments: the text up to the first NUL is the
/// YAML, each further NUL-separated piece is one `KEY=VALUE` (command-line arguments cannot hold a NUL,
/// so it is a natural separator). Invalid UTF-8 is replaced (U+FFFD) so that every input reaches the
/// parser.
pub fn split_spec_input(data: &[u8]) -> (String, Vec<String>) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let yaml = parts.next().unwrap_or_default().to_owned();
    let sets = parts.take(MAX_OVERRIDES).map(str::to_owned).collect();
    (yaml, sets)
}

fn parse_spec(yaml: &str, sets: &[String]) -> conjure::Result<PipelineSpec> {
    let overrides = sets
        .iter()
        .map(|s| Override::parse(s))
        .collect::<conjure::Result<Vec<_>>>()?;
    PipelineSpec::parse(yaml, SPEC_FILE, Path::new(SPEC_BASE), &overrides)
}

/// The `spec` target: parse, then check an accepted spec (see the module docs).
pub fn spec(data: &[u8]) -> Outcome {
    let (yaml, sets) = split_spec_input(data);
    let spec = match parse_spec(&yaml, &sets) {
        Ok(s) => s,
        Err(e) => return Outcome::Rejected(e),
    };

    // Round trip: the resolved spec, written back, parses to itself.
    let (yaml2, sets2) = render(&spec);
    let again = parse_spec(&yaml2, &sets2).unwrap_or_else(|e| {
        panic!(
            "an accepted spec, written back, is refused: {e}\n--- written back:\n{yaml2}{sets2:?}"
        )
    });
    // Where a key sits in the file and whether `providers` was written out are not settings: the
    // written-back spec always names its providers and puts `model` on another line.
    let mut again = again;
    again.model_location.clone_from(&spec.model_location);
    again.runtime.providers_given = spec.runtime.providers_given;
    assert_eq!(
        again, spec,
        "an accepted spec, written back, parses differently\n--- written back:\n{yaml2}{sets2:?}"
    );
    assert_eq!(again.hash(), spec.hash());

    // What `run` / `validate` do next with a spec must not panic.
    for (h, w) in [(1, 1), (7, 9), (32, 32)] {
        if let Some(mask) = &spec.task.mask {
            let _ = mask.generate(h, w, spec.seed);
        }
        let mask =
            (spec.task.operator == OperatorKind::Inpaint).then(|| ndarray::Array2::ones((h, w)));
        spec.degradation(mask)
            .expect("a validated spec has a degradation");
    }
    if spec.sampler.config.steps.unwrap_or(0) <= MAX_BUILD_STEPS {
        for sched in [ModelSchedule::ddpm_linear_default(), ModelSchedule::Flow] {
            if let Err(e) = samplers::build(&spec.sampler_config(), &sched) {
                assert!(!e.to_string().is_empty());
            }
        }
    }
    Outcome::Accepted
}

/// A YAML double-quoted scalar holding exactly `s` (everything but printable ASCII escaped).
fn quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => out.push_str(&format!("\\U{:08X}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// A float as YAML reads it back exactly.
fn float(v: f64) -> String {
    format!("{v:?}")
}

/// Write a resolved spec back as YAML plus `--set` arguments: absolute paths go in the YAML, relative
/// ones (which only `--set` can produce: paths in the file resolve against its directory) as `--set`.
pub fn render(spec: &PipelineSpec) -> (String, Vec<String>) {
    let mut y = String::new();
    let mut sets = Vec::new();
    let mut path = |y: &mut String, indent: &str, key: &str, dotted: &str, p: &Path| {
        let s = p.to_str().expect("spec paths come from UTF-8 text");
        if p.is_absolute() {
            y.push_str(&format!("{indent}{key}: {}\n", quote(s)));
        } else {
            sets.push(format!("{dotted}={}", quote(s)));
        }
    };
    y.push_str(&format!("version: {}\n", spec.version));
    path(&mut y, "", "model", "model", &spec.model);
    y.push_str(&format!("seed: {}\n", spec.seed));

    let t = &spec.task;
    y.push_str("task:\n");
    y.push_str(&format!("  operator: {}\n", t.operator.as_str()));
    if t.operator.is_sr() {
        y.push_str(&format!("  scale: {}\n", t.scale));
    }
    y.push_str(&format!("  noise_sigma: {}\n", float(t.noise_sigma)));
    y.push_str(&format!("  data_consistency: {}\n", t.data_consistency));
    y.push_str(&format!("  svd_threshold: {}\n", float(t.svd_threshold)));
    if let Some(k) = &t.kernel {
        y.push_str(&format!("  kernel:\n    size: {}\n", k.size));
        if let Some(s) = k.sigma {
            y.push_str(&format!("    sigma: {}\n", float(s)));
        }
    }
    if let Some(m) = &t.mask {
        y.push_str("  mask:\n");
        match m {
            MaskSpec::Box {
                x,
                y: top,
                width,
                height,
            } => y.push_str(&format!(
                "    kind: box\n    x: {x}\n    y: {top}\n    width: {width}\n    height: {height}\n"
            )),
            MaskSpec::Random { fraction } => y.push_str(&format!(
                "    kind: random\n    fraction: {}\n",
                float(*fraction)
            )),
            MaskSpec::Half { side } => {
                let side = match side {
                    Side::Left => "left",
                    Side::Right => "right",
                    Side::Top => "top",
                    Side::Bottom => "bottom",
                };
                y.push_str(&format!("    kind: half\n    side: {side}\n"));
            }
            MaskSpec::File { path: p } => {
                y.push_str("    kind: file\n");
                path(&mut y, "    ", "path", "task.mask.path", p);
            }
            MaskSpec::PerImage { dir } => {
                y.push_str("    kind: per-image\n");
                path(&mut y, "    ", "dir", "task.mask.dir", dir);
            }
        }
    }

    let c = &spec.sampler.config;
    y.push_str(&format!("sampler:\n  name: {}\n", c.name.as_str()));
    if let Some(s) = c.steps {
        y.push_str(&format!("  steps: {s}\n"));
    }
    for (key, v) in [
        ("guidance", c.guidance),
        ("lambda", c.lambda),
        ("start_time", c.start_time),
        ("end_time", c.end_time),
        ("eta", c.eta),
        ("eta_b", c.eta_b),
        ("num_eps", c.num_eps),
    ] {
        if let Some(v) = v {
            y.push_str(&format!("  {key}: {}\n", float(v)));
        }
    }
    if let Some(v) = c.variant {
        y.push_str(&format!("  variant: {}\n", quote(v.as_str())));
    }
    y.push_str(&format!("  jacobian: {}\n", c.jacobian));
    if let Some(p) = &spec.sampler.init_noise {
        path(&mut y, "  ", "init_noise", "sampler.init_noise", p);
    }
    y.push_str(&format!("  samples: {}\n", spec.sampler.samples));

    let r = &spec.runtime;
    let engine = match r.engine {
        EngineChoice::Auto => "auto",
        EngineChoice::OnnxRuntime => "onnxruntime",
        EngineChoice::Tract => "tract",
    };
    let providers: Vec<&str> = r
        .providers
        .iter()
        .map(|p| match p {
            Provider::TensorRt => "tensorrt",
            Provider::Cuda => "cuda",
            Provider::Cpu => "cpu",
        })
        .collect();
    y.push_str(&format!(
        "runtime:\n  engine: {engine}\n  providers: [{}]\n  batch_size: {}\n  threads: {}\n",
        providers.join(", "),
        r.batch_size,
        r.threads
    ));
    let tile = match r.tile_size {
        TileSize::Model => "model".to_owned(),
        TileSize::Pixels(p) => p.to_string(),
    };
    y.push_str(&format!(
        "  tile:\n    size: {tile}\n    overlap: {}\n",
        r.tile_overlap
    ));
    if let Some(p) = &r.trt_cache {
        path(&mut y, "  ", "trt_cache", "runtime.trt_cache", p);
    }
    if let Some(g) = r.residual_memory {
        y.push_str(&format!("  residual_memory: {g:?}\n"));
    }

    let io = &spec.io;
    let format = match io.format {
        OutputFormat::Same => "same",
        OutputFormat::Png => "png",
        OutputFormat::Tiff => "tiff",
        OutputFormat::Jpeg => "jpeg",
        OutputFormat::Npy => "npy",
    };
    let depth = match io.bit_depth {
        BitDepth::Same => "same",
        BitDepth::Eight => "8",
        BitDepth::Sixteen => "16",
    };
    y.push_str(&format!(
        "io:\n  format: {format}\n  bit_depth: {depth}\n  skip_existing: {}\n  jpeg_quality: {}\n",
        io.skip_existing, io.jpeg_quality
    ));
    if let Some(p) = &io.input {
        path(&mut y, "  ", "input", "io.input", p);
    }
    if let Some(p) = &io.output {
        path(&mut y, "  ", "output", "io.output", p);
    }
    (y, sets)
}

// ---------------------------------------------------------------------------------------------------
// decode

/// The format a file's first bytes announce (PNG, TIFF, JPEG or npy); anything else goes to the image
/// decoder as PNG, which then refuses it by content.
pub fn sniff(data: &[u8]) -> FileFormat {
    if data.starts_with(b"\x93NUMPY") {
        FileFormat::Npy
    } else if data.starts_with(b"II*\0") || data.starts_with(b"MM\0*") {
        FileFormat::Tiff
    } else if data.starts_with(&[0xff, 0xd8]) {
        FileFormat::Jpeg
    } else {
        FileFormat::Png
    }
}

/// The `decode` target: decode, then check the result (see the module docs).
pub fn decode(data: &[u8]) -> Outcome {
    let path = Path::new(IMAGE_FILE);
    let format = sniff(data);
    if format == FileFormat::Npy {
        return match imageio::read_npy_bytes(data, path) {
            Ok(a) => {
                // Every value read came from the file: at least 4 bytes each (f32), so the array never
                // outgrows the file that declared it.
                assert!(
                    a.len().saturating_mul(4) <= data.len(),
                    "npy of {} bytes gave {} values (shape {:?})",
                    data.len(),
                    a.len(),
                    a.shape()
                );
                Outcome::Accepted
            }
            Err(e) => Outcome::Rejected(e),
        };
    }
    let pic = match imageio::decode_bytes_limited(data, format, path, FUZZ_MAX_PIXELS) {
        Ok(p) => p,
        Err(e) => return Outcome::Rejected(e),
    };
    let (c, h, w) = pic.color.dim();
    assert!(c == 1 || c == 3, "{c} colour channels");
    assert!(h >= 1 && w >= 1, "decoded an empty {w}x{h} image");
    assert!(
        (h as u64) * (w as u64) <= FUZZ_MAX_PIXELS,
        "decoded {w}x{h}, over the limit of {FUZZ_MAX_PIXELS} pixels"
    );
    assert_eq!(pic.color.len(), c * h * w);
    assert_eq!(pic.format, format);
    assert!(
        matches!(pic.bit_depth, 8 | 16),
        "bit depth {}",
        pic.bit_depth
    );
    if let Some(a) = &pic.alpha {
        assert_eq!(a.dim(), (h, w), "alpha plane of another size");
        assert!(a.iter().all(|v| v.is_finite()), "non-finite alpha");
    }
    let integer = matches!(format, FileFormat::Png | FileFormat::Jpeg);
    for v in pic.color.iter() {
        assert!(v.is_finite(), "non-finite sample {v}");
        if integer {
            assert!((0.0..=1.0).contains(v), "sample {v} outside [0, 1]");
        }
    }
    // The output side: the picture re-encodes as PNG at its own depth and decodes back to the same
    // (clamped, quantized) samples.
    if h * w > MAX_ROUND_TRIP_PIXELS {
        return Outcome::Accepted;
    }
    let bytes = imageio::encode(
        &pic,
        EncodeOptions {
            format: FileFormat::Png,
            bit_depth: pic.bit_depth,
            jpeg_quality: 95,
        },
        path,
    )
    .expect("a decoded picture encodes");
    let back = imageio::decode_bytes(&bytes, FileFormat::Png, path).expect("own PNG decodes");
    assert_eq!(back.color.dim(), pic.color.dim());
    let max = if pic.bit_depth == 16 { 65535.0 } else { 255.0 };
    for (a, b) in pic.color.iter().zip(back.color.iter()) {
        let want = (a.clamp(0.0, 1.0) * max).round() / max;
        assert!((want - b).abs() < 1e-9, "round trip {a} -> {b}");
    }
    Outcome::Accepted
}

/// Every regular file under `dir` (sorted; none if `dir` does not exist).
pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
