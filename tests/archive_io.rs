//! Archive-grade image handling (issue 16, items 2, 3, 4, 8, 10, 11): colour through models with other
//! channel counts, archival metadata kept, damaged files refused, no alarming log noise, plain words in
//! `eval` / `model inspect` / the engine string, built-in models and a self-contained docs folder.
//!
//! Pipeline tests run the real pipeline and operators with the `pinv` sampler (H†y, no network calls) and
//! an injected engine; the rest run the binary.

mod common;
use common::cli;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cli::{conjure, root, spec, stderr};
use conjure::imageio::{self, FileFormat};
use conjure::model::tiled::{TileConfig, TiledDenoiser};
use conjure::model::{Denoiser, ModelKind, Parameterization};
use conjure::operators::{Degradation, OperatorRef};
use conjure::pipeline::{self, Engine, ModelInfo, ProgressMode, RunOptions, RunSummary};
use conjure::samplers::pinv::Pinv;
use conjure::samplers::ModelSchedule;
use conjure::schedules::TimeInput;
use conjure::spec::{Override, PipelineSpec};
use conjure::Result;
use image::ImageDecoder;
use ndarray::{Array4, ArrayView4};

/// out = 0.5 x (never called by `pinv`; the engine needs a denoiser).
struct Half;

impl Denoiser for Half {
    fn engine(&self) -> String {
        "test/half".into()
    }
    fn predict(&self, x: ArrayView4<f64>, _t: &[f64]) -> Result<Array4<f64>> {
        Ok(x.mapv(|v| 0.5 * v))
    }
    fn has_vjp(&self) -> bool {
        false
    }
}

fn build(d: &Degradation, shape: [usize; 3]) -> Result<OperatorRef> {
    d.build(shape)
}

fn parse(text: &str) -> PipelineSpec {
    PipelineSpec::parse(text, "t.yaml", Path::new("."), &[] as &[Override]).unwrap()
}

/// Run `spec_text` (with `sampler.name: pinv`) through the real pipeline on a model of `channels`.
fn run_pinv(spec_text: &str, channels: usize, input: &Path, output: &Path) -> RunSummary {
    let spec = parse(spec_text);
    let engine = Engine {
        model: ModelInfo {
            kind: ModelKind::Diffusion,
            param: Parameterization::Eps,
            time: TimeInput::Unit,
            schedule: ModelSchedule::ddpm_linear_default(),
            channels,
            size: None,
            value_range: [-1.0, 1.0],
        },
        denoiser: &Half,
        sampler: &Pinv,
        build_operator: &build,
    };
    let opts = RunOptions {
        input: Some(input.to_path_buf()),
        output: Some(output.to_path_buf()),
        progress: ProgressMode::Quiet,
        ..Default::default()
    };
    pipeline::run_with(&spec, &opts, &engine).unwrap()
}

const SR4: &str =
    "model: m\ntask:\n  operator: sr-average\n  scale: 4\nsampler:\n  name: pinv\n  jacobian: identity\n";
const DENOISE: &str =
    "model: m\ntask:\n  operator: denoise\nsampler:\n  name: pinv\n  jacobian: identity\n";

fn dirs() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let (i, o) = (tmp.path().join("in"), tmp.path().join("out"));
    std::fs::create_dir_all(&i).unwrap();
    (tmp, i, o)
}

fn rgb8(w: u32, h: u32, mut f: impl FnMut(u32, u32) -> [u8; 3]) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb(f(x, y)))
}

// ---- item 2: colour -------------------------------------------------------------------------------

#[test]
fn rgb_through_a_gray_model_comes_back_rgb_with_its_colour_and_super_resolved() {
    let (_tmp, input, output) = dirs();
    // Left half orange, right half blue: the luma is restored by the model (here H†y), the colour
    // carried back, so away from the edge (within reach of the bicubic chroma filter) the colours return.
    let (left, right) = ([204u8, 51, 26], [26u8, 77, 230]);
    rgb8(8, 8, |x, _| if x < 4 { left } else { right })
        .save(input.join("photo.png"))
        .unwrap();
    let s = run_pinv(SR4, 1, &input, &output);
    assert_eq!((s.restored, s.failed), (1, 0));
    let out = imageio::decode(&output.join("photo.png")).unwrap();
    assert_eq!(out.color.dim(), (3, 32, 32), "RGB in must give RGB out");
    for i in 0..32 {
        for (j, want) in [(0, left), (7, left), (24, right), (31, right)] {
            for (k, w) in want.iter().enumerate() {
                let got = out.color[(k, i, j)] * 255.0;
                assert!(
                    (got - f64::from(*w)).abs() <= 1.0,
                    "pixel ({i}, {j}) channel {k}: {got} vs {w}"
                );
            }
        }
    }
}

#[test]
fn gray_through_an_rgb_model_is_written_gray() {
    let (_tmp, input, output) = dirs();
    image::GrayImage::from_fn(6, 5, |x, y| image::Luma([(x * 40 + y * 3) as u8]))
        .save(input.join("scan.png"))
        .unwrap();
    let s = run_pinv(DENOISE, 3, &input, &output);
    assert_eq!((s.restored, s.failed), (1, 0));
    let src = imageio::decode(&input.join("scan.png")).unwrap();
    let out = imageio::decode(&output.join("scan.png")).unwrap();
    assert_eq!(out.color.dim(), (1, 5, 6), "gray in must give gray out");
    assert_eq!(out.color, src.color);
}

fn write_spec(dir: &Path, body: &str) -> PathBuf {
    let p = dir.join("spec.yaml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn validate_refuses_colorize_with_a_one_channel_model() {
    let tmp = tempfile::tempdir().unwrap();
    let model = root().join("models/fmnist-ddpm");
    let p = write_spec(
        tmp.path(),
        &format!(
            "model: {}\ntask:\n  operator: colorize\nsampler:\n  name: c-pigdm\n",
            model.display()
        ),
    );
    let o = conjure().arg("validate").arg(&p).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("colorize") && e.contains("3-channel"), "{e}");
}

// ---- item 3: metadata -----------------------------------------------------------------------------

fn tiff_tags(path: &Path) -> tiff::decoder::Decoder<Cursor<Vec<u8>>> {
    tiff::decoder::Decoder::new(Cursor::new(std::fs::read(path).unwrap())).unwrap()
}

fn ascii(d: &mut tiff::decoder::Decoder<Cursor<Vec<u8>>>, tag: tiff::tags::Tag) -> String {
    match d.get_tag(tag).unwrap() {
        tiff::decoder::ifd::Value::Ascii(s) => s,
        v => panic!("{tag:?}: {v:?}"),
    }
}

#[test]
fn a_600_dpi_lzw_tiff_keeps_compression_and_physical_size_and_gets_a_note() {
    use tiff::encoder::{colortype::Gray8, Compression, Predictor, Rational, TiffEncoder};
    use tiff::tags::{ResolutionUnit, Tag};
    let (_tmp, input, output) = dirs();
    let (w, h) = (16u32, 12u32);
    let data: Vec<u8> = (0..w * h).map(|i| ((i * 7) % 256) as u8).collect();
    let mut buf = Cursor::new(Vec::new());
    {
        let mut enc = TiffEncoder::new(&mut buf)
            .unwrap()
            .with_compression(Compression::Lzw)
            .with_predictor(Predictor::Horizontal);
        let mut im = enc.new_image::<Gray8>(w, h).unwrap();
        im.resolution(ResolutionUnit::Inch, Rational { n: 600, d: 1 });
        im.encoder()
            .write_tag(Tag::ImageDescription, "box 4, folder 17")
            .unwrap();
        im.write_data(&data).unwrap();
    }
    std::fs::write(input.join("scan.tif"), buf.into_inner()).unwrap();
    let s = run_pinv(SR4, 1, &input, &output);
    assert_eq!((s.restored, s.failed), (1, 0));
    let out = output.join("scan.tif");
    let mut d = tiff_tags(&out);
    assert_eq!(d.dimensions().unwrap(), (64, 48));
    let res = |d: &mut tiff::decoder::Decoder<Cursor<Vec<u8>>>, t: Tag| match d.get_tag(t).unwrap()
    {
        tiff::decoder::ifd::Value::Rational(n, den) => f64::from(n) / f64::from(den),
        v => panic!("{v:?}"),
    };
    assert_eq!(res(&mut d, Tag::XResolution), 2400.0);
    assert_eq!(res(&mut d, Tag::YResolution), 2400.0);
    assert_eq!(d.get_tag_u32(Tag::ResolutionUnit).unwrap(), 2, "inches");
    assert_eq!(d.get_tag_u32(Tag::Compression).unwrap(), 5, "LZW");
    assert_eq!(d.get_tag_u32(Tag::Predictor).unwrap(), 2);
    assert_eq!(
        ascii(&mut d, Tag::ImageDescription).trim_end_matches('\0'),
        "box 4, folder 17"
    );
    let note = ascii(&mut d, Tag::Software);
    let hash = parse(SR4).hash();
    assert!(
        note.contains("conjure")
            && note.contains(env!("CARGO_PKG_VERSION"))
            && note.contains(&hash),
        "{note}"
    );
    // Still pixel-exact 8-bit gray.
    let pic = imageio::decode(&out).unwrap();
    assert_eq!((pic.bit_depth, pic.color.dim().0), (8, 1));
}

#[test]
fn png_keeps_phys_text_and_16_bits_and_gets_a_note() {
    let (_tmp, input, output) = dirs();
    let (w, h) = (8u32, 8u32);
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, w, h);
        enc.set_color(png::ColorType::Grayscale);
        enc.set_depth(png::BitDepth::Sixteen);
        // 300 dpi = 11811 pixels per metre.
        enc.set_pixel_dims(Some(png::PixelDimensions {
            xppu: 11811,
            yppu: 11811,
            unit: png::Unit::Meter,
        }));
        enc.add_text_chunk("Title".into(), "Letter, 1912".into())
            .unwrap();
        enc.add_itxt_chunk("Comment".into(), "Brief, 1912 — gescannt".into())
            .unwrap();
        let mut wr = enc.write_header().unwrap();
        let data: Vec<u8> = (0..w * h)
            .flat_map(|i| ((i * 997) as u16).to_be_bytes())
            .collect();
        wr.write_image_data(&data).unwrap();
    }
    std::fs::write(input.join("letter.png"), bytes).unwrap();
    let s = run_pinv(SR4, 1, &input, &output);
    assert_eq!((s.restored, s.failed), (1, 0));
    let out = std::fs::read(output.join("letter.png")).unwrap();
    let mut r = png::Decoder::new(Cursor::new(&out)).read_info().unwrap();
    let mut buf = vec![0; r.output_buffer_size().unwrap()];
    r.next_frame(&mut buf).unwrap();
    r.finish().unwrap();
    let info = r.info();
    assert_eq!(info.bit_depth, png::BitDepth::Sixteen);
    let d = info.pixel_dims.expect("pHYs kept");
    assert_eq!(d.unit, png::Unit::Meter);
    assert!((i64::from(d.xppu) - 4 * 11811).abs() <= 1, "{d:?}");
    let mut text: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    text.extend(
        info.utf8_text
            .iter()
            .map(|t| (t.keyword.clone(), t.get_text().unwrap())),
    );
    let get = |k: &str| text.iter().find(|(kk, _)| kk == k).map(|(_, v)| v.clone());
    assert_eq!(get("Title").as_deref(), Some("Letter, 1912"));
    assert_eq!(get("Comment").as_deref(), Some("Brief, 1912 — gescannt"));
    let note = get("Software").expect("processing note");
    assert!(
        note.starts_with("conjure ") && note.contains(&parse(SR4).hash()),
        "{note}"
    );
}

/// A minimal little-endian EXIF (TIFF) block with no entries.
const EXIF: &[u8] = b"II*\x00\x08\x00\x00\x00\x00\x00";

fn jpeg_bytes(img: &image::RgbImage, dpi: u16) -> Vec<u8> {
    use image::codecs::jpeg::{JpegEncoder, PixelDensity};
    use image::ImageEncoder;
    let mut b = Vec::new();
    let mut enc = JpegEncoder::new_with_quality(&mut b, 95);
    enc.set_exif_metadata(EXIF.to_vec()).unwrap();
    enc.set_pixel_density(PixelDensity::dpi(dpi));
    enc.write_image(
        img.as_raw(),
        img.width(),
        img.height(),
        image::ExtendedColorType::Rgb8,
    )
    .unwrap();
    b
}

#[test]
fn jpeg_keeps_exif_and_gets_a_comment() {
    let (_tmp, input, output) = dirs();
    let img = rgb8(8, 8, |x, y| [(x * 30) as u8, (y * 30) as u8, 128]);
    std::fs::write(input.join("photo.jpg"), jpeg_bytes(&img, 300)).unwrap();
    let s = run_pinv(SR4, 1, &input, &output);
    assert_eq!((s.restored, s.failed), (1, 0));
    let out = std::fs::read(output.join("photo.jpg")).unwrap();
    let mut dec = image::codecs::jpeg::JpegDecoder::new(Cursor::new(&out)).unwrap();
    assert_eq!(dec.exif_metadata().unwrap().as_deref(), Some(EXIF));
    assert_eq!(dec.dimensions(), (32, 32));
    assert_eq!(dec.color_type(), image::ColorType::Rgb8, "colour kept");
    // A COM segment (FF FE, length) holding the note.
    let note = format!(
        "conjure {} (spec sha256 {})",
        env!("CARGO_PKG_VERSION"),
        parse(SR4).hash()
    );
    let at = out
        .windows(note.len())
        .position(|w| w == note.as_bytes())
        .expect("note in the file");
    assert_eq!(&out[at - 4..at - 2], &[0xFF, 0xFE]);
}

// ---- item 4: damaged files ------------------------------------------------------------------------

fn noise_rgb(w: u32, h: u32) -> image::RgbImage {
    let mut s = 12345u32;
    rgb8(w, h, |_, _| {
        s = s.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let b = s.to_be_bytes();
        [b[0], b[1], b[2]]
    })
}

fn encoded(img: &image::RgbImage, fmt: image::ImageFormat) -> Vec<u8> {
    let mut c = Cursor::new(Vec::new());
    img.write_to(&mut c, fmt).unwrap();
    c.into_inner()
}

#[test]
fn truncated_files_of_every_format_are_refused_naming_the_file() {
    let img = noise_rgb(64, 64);
    for (fmt, ff, name) in [
        (image::ImageFormat::Jpeg, FileFormat::Jpeg, "cut.jpg"),
        (image::ImageFormat::Png, FileFormat::Png, "cut.png"),
        (image::ImageFormat::Tiff, FileFormat::Tiff, "cut.tif"),
    ] {
        let full = encoded(&img, fmt);
        assert!(imageio::decode_bytes(&full, ff, Path::new(name)).is_ok());
        // Cut at a third and at half, as the report's file was: the picture data itself is missing. (A
        // file missing only its last few bytes — a JPEG's end marker, a PNG's IEND checksum — can still
        // hold its whole picture, and decoders accept it.)
        let cuts = [full.len() / 3, full.len() / 2];
        for keep in cuts {
            let e = imageio::decode_bytes(&full[..keep], ff, Path::new(name))
                .expect_err(&format!("{name} cut to {keep} of {} bytes", full.len()));
            assert!(e.to_string().contains(name), "{e}");
        }
    }
}

#[test]
fn a_corrupt_png_is_refused() {
    let mut b = encoded(&noise_rgb(16, 16), image::ImageFormat::Png);
    let mid = b.len() / 2;
    b[mid] ^= 0x55;
    let e = imageio::decode_bytes(&b, FileFormat::Png, Path::new("bad.png")).unwrap_err();
    assert!(e.to_string().contains("bad.png"), "{e}");
}

#[test]
fn a_run_fails_the_truncated_files_and_restores_the_rest() {
    let (_tmp, input, output) = dirs();
    let img = noise_rgb(32, 32);
    std::fs::write(
        input.join("good.png"),
        encoded(&img, image::ImageFormat::Png),
    )
    .unwrap();
    for (fmt, name) in [
        (image::ImageFormat::Jpeg, "a.jpg"),
        (image::ImageFormat::Png, "b.png"),
        (image::ImageFormat::Tiff, "c.tif"),
    ] {
        let full = encoded(&img, fmt);
        std::fs::write(input.join(name), &full[..full.len() / 3]).unwrap();
    }
    let s = run_pinv(DENOISE, 1, &input, &output);
    assert_eq!((s.restored, s.failed), (1, 3), "{:?}", s.failures);
    for name in ["a.jpg", "b.png", "c.tif"] {
        assert!(
            s.failures
                .iter()
                .any(|(p, e)| p.ends_with(name) && e.contains(name)),
            "{name}: {:?}",
            s.failures
        );
        assert!(
            !output.join(name).exists(),
            "no output for a damaged {name}"
        );
    }
}

// ---- item 8: log noise ----------------------------------------------------------------------------

/// One 8x8 gray input for sr4 runs.
fn one_input(dir: &Path) -> PathBuf {
    let p = dir.join("in");
    std::fs::create_dir_all(&p).unwrap();
    image::GrayImage::from_fn(8, 8, |x, y| image::Luma([(x * 20 + y * 9) as u8]))
        .save(p.join("a.png"))
        .unwrap();
    p
}

#[test]
fn tract_does_not_warn_about_the_opset_of_the_shipped_models() {
    let tmp = tempfile::tempdir().unwrap();
    let input = one_input(tmp.path());
    for quiet in [false, true] {
        let mut c = conjure();
        c.args(["run"])
            .arg(spec("sr4-c-pigdm.yaml"))
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(tmp.path().join(format!("out-{quiet}")))
            .args([
                "--set",
                "runtime.engine=tract",
                "--set",
                "sampler.name=pinv",
            ]);
        if quiet {
            c.arg("--quiet");
        }
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let e = stderr(&o);
        assert!(!e.contains("operator set") && !e.contains("WARN"), "{e}");
    }
}

#[test]
fn onnx_runtime_tries_default_gpu_providers_silently_and_warns_for_asked_ones() {
    if conjure::model::ort_available().is_err() {
        eprintln!("skipped: no onnx runtime library");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let input = one_input(tmp.path());
    let run = |out: &str, extra: &[&str]| {
        conjure()
            .args(["run"])
            .arg(spec("sr4-c-pigdm.yaml"))
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(tmp.path().join(out))
            .args([
                "--set",
                "runtime.engine=onnxruntime",
                "--set",
                "sampler.name=pinv",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run("default", &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        !e.contains("WARN") && !e.contains("failed to register"),
        "{e}"
    );
    assert!(e.contains("runs on"), "one line says what runs: {e}");
    let o = run("asked", &["--set", "runtime.providers=[cuda,cpu]"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    // On a machine without CUDA the provider asked for fails, and that is said.
    if !e.contains("runs on cuda") {
        assert!(e.contains("cuda failed to register"), "{e}");
    }
}

#[test]
fn falling_back_to_tract_says_how_to_get_onnx_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let input = one_input(tmp.path());
    let o = conjure()
        .env(
            "ORT_DYLIB_PATH",
            tmp.path().join("no-such-libonnxruntime.so"),
        )
        .args(["run"])
        .arg(spec("sr4-c-pigdm.yaml"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(tmp.path().join("out"))
        .args(["--set", "runtime.engine=auto", "--set", "sampler.name=pinv"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("tract")
            && e.contains("pip install onnxruntime==1.31.1")
            && e.contains("ORT_DYLIB_PATH"),
        "{e}"
    );
}

// ---- item 10: plain words -------------------------------------------------------------------------

fn gray_png(path: &Path, w: u32, h: u32, f: impl Fn(u32, u32) -> u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    image::GrayImage::from_fn(w, h, |x, y| image::Luma([f(x, y)]))
        .save(path)
        .unwrap();
}

#[test]
fn eval_keeps_the_mean_finite_when_an_image_is_identical_and_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, o) = (tmp.path().join("ref"), tmp.path().join("restored"));
    // 16×16: SSIM needs at least its 11×11 window.
    gray_png(&r.join("a.png"), 16, 16, |x, y| (x * 12 + y) as u8);
    gray_png(&o.join("a.png"), 16, 16, |x, y| (x * 12 + y) as u8);
    gray_png(&r.join("b.png"), 16, 16, |x, _| (x * 12) as u8);
    gray_png(&o.join("b.png"), 16, 16, |x, _| (x * 12 + 5) as u8);
    let out = conjure()
        .args(["eval", "--reference"])
        .arg(&r)
        .arg("--restored")
        .arg(&o)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mean = text
        .lines()
        .find(|l| l.starts_with("mean"))
        .expect("mean line");
    assert!(!mean.contains("inf"), "{text}");
    // b alone: 5/255 everywhere, PSNR = 20 log10(255/5) = 34.15 dB.
    assert!(mean.contains("34.15"), "{text}");
    assert!(text.contains("1 of 2 images are identical"), "{text}");
}

#[test]
fn eval_says_why_nothing_was_scored_when_sizes_differ() {
    let tmp = tempfile::tempdir().unwrap();
    let (r, o) = (tmp.path().join("ref"), tmp.path().join("restored"));
    gray_png(&r.join("a.png"), 8, 8, |x, _| x as u8);
    gray_png(&o.join("a.png"), 32, 32, |x, _| x as u8);
    let out = conjure()
        .args(["eval", "--reference"])
        .arg(&r)
        .arg("--restored")
        .arg(&o)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let e = stderr(&out);
    assert!(
        e.contains("sizes differ") && e.contains("8x8") && e.contains("32x32"),
        "{e}"
    );
    assert!(e.contains("no image could be scored"), "{e}");
}

#[test]
fn model_inspect_speaks_plain_text() {
    let o = conjure()
        .args(["model", "inspect"])
        .arg(root().join("models/fmnist-ddpm"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(text.contains("diffusion, predicts the noise"), "{text}");
    assert!(
        text.contains("DDPM linear, beta 0.0001 to 0.02 over 1000 steps"),
        "{text}"
    );
    assert!(text.contains("step index 0..999"), "{text}");
    for debug in ["{", "DdpmLinear", "Index", "Eps)"] {
        assert!(!text.contains(debug), "{debug:?} in {text}");
    }
}

#[test]
fn the_engine_says_tiled_only_when_it_tiled() {
    let tiled = TiledDenoiser::new(Arc::new(Half), TileConfig::new(16, 16)).unwrap();
    assert!(
        !tiled.engine().contains("tiled 16x16"),
        "{}",
        tiled.engine()
    );
    tiled
        .predict(Array4::zeros((1, 1, 16, 16)).view(), &[0.5])
        .unwrap();
    assert!(
        tiled.engine().contains("whole images"),
        "{}",
        tiled.engine()
    );
    assert!(
        !tiled.engine().contains("tiled 16x16"),
        "{}",
        tiled.engine()
    );
    tiled
        .predict(Array4::zeros((1, 1, 16, 40)).view(), &[0.5])
        .unwrap();
    assert!(
        tiled.engine().contains("tiled 16x16, overlap 8"),
        "{}",
        tiled.engine()
    );
}

// ---- item 11: built-in models and self-contained docs ----------------------------------------------

#[test]
fn a_copied_spec_finds_the_builtin_models() {
    let tmp = tempfile::tempdir().unwrap();
    for (model, sampler) in [("fmnist-ddpm", "c-pigdm"), ("fmnist-flow", "c-pigfm")] {
        let p = write_spec(
            tmp.path(),
            &format!(
                "model: builtin:{model}\ntask:\n  operator: sr-average\n  scale: 4\nsampler:\n  name: {sampler}\n"
            ),
        );
        let o = conjure().arg("validate").arg(&p).output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let p = write_spec(
        tmp.path(),
        "task:\n  operator: denoise\nmodel: builtin:fmnist-nope\nsampler:\n  name: pinv\n",
    );
    let o = conjure().arg("validate").arg(&p).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("spec.yaml:3:") && e.contains("fmnist-nope") && e.contains("fmnist-ddpm"),
        "{e}"
    );
}

/// Files a reader of the repository may follow.
fn texts() -> Vec<(PathBuf, String)> {
    let r = root();
    let mut v = Vec::new();
    for top in [
        "src",
        "tests",
        "tools",
        "docs",
        "models",
        "pipelines",
        "examples",
        "benches",
    ] {
        for e in walkdir::WalkDir::new(r.join(top)) {
            let e = e.unwrap();
            let ok = e
                .path()
                .extension()
                .is_some_and(|x| ["rs", "md", "py", "yaml", "toml"].contains(&x.to_str().unwrap()));
            if e.file_type().is_file() && ok {
                let t = std::fs::read_to_string(e.path()).unwrap_or_default();
                v.push((e.path().to_path_buf(), t));
            }
        }
    }
    let readme = r.join("README.md");
    v.push((readme.clone(), std::fs::read_to_string(readme).unwrap()));
    v
}

#[test]
fn every_doc_the_repository_cites_is_in_it() {
    let r = root();
    let mut missing = Vec::new();
    for (path, text) in texts() {
        for (i, _) in text.match_indices("docs/") {
            let rest = &text[i + 5..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_' || *c == '.')
                .collect();
            let name = name.trim_end_matches('.');
            if name.ends_with(".md") && !r.join("docs").join(name).is_file() {
                missing.push(format!("{}: docs/{name}", path.display()));
            }
        }
        // Documents that only exist outside the repository.
        for outside in [
            concat!("algorithms", ".md"),
            concat!("interface", ".md"),
            concat!("shared", "/docs"),
        ] {
            if text.contains(outside) {
                missing.push(format!("{}: {outside}", path.display()));
            }
        }
    }
    assert!(missing.is_empty(), "{missing:#?}");
}

#[test]
fn the_spec_hash_in_every_output_ignores_batch_size_and_threads() {
    // Outputs are identical across batch sizes and thread counts, so the note they carry must be too.
    let base = parse(SR4).hash();
    let other = PipelineSpec::parse(
        SR4,
        "t.yaml",
        Path::new("."),
        &[
            Override::parse("runtime.batch_size=3").unwrap(),
            Override::parse("runtime.threads=2").unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(other.hash(), base);
    let seeded = PipelineSpec::parse(
        SR4,
        "t.yaml",
        Path::new("."),
        &[Override::parse("seed=9").unwrap()],
    )
    .unwrap();
    assert_ne!(seeded.hash(), base);
}
